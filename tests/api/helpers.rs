//! Shared test helpers: start servers in-process on port 0 and build real clients for them.

use std::time::Duration;

use aws_sdk_quicksight::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use embedgate::sim::{self, SimServer, SimSettings};

pub const ACCOUNT: &str = sim::DEFAULT_ACCOUNT_ID;

/// Simulator settings for tests: port 0, two workers.
pub fn sim_settings() -> SimSettings {
    SimSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: Some(2),
        ..SimSettings::default()
    }
}

pub fn spawn_sim() -> SimServer {
    SimServer::start(sim_settings()).expect("simulator starts")
}

/// An SDK client for the simulator with the default test credentials and one attempt per call.
pub fn sdk_client(endpoint: &str) -> aws_sdk_quicksight::Client {
    sdk_client_with(
        endpoint,
        sim::DEFAULT_SECRET_ACCESS_KEY,
        RetryConfig::standard().with_max_attempts(1),
    )
}

pub fn sdk_client_with(
    endpoint: &str,
    secret: &str,
    retry: RetryConfig,
) -> aws_sdk_quicksight::Client {
    sdk_client_full(endpoint, sim::DEFAULT_ACCESS_KEY_ID, secret, retry, None)
}

pub fn sdk_client_full(
    endpoint: &str,
    access_key: &str,
    secret: &str,
    retry: RetryConfig,
    timeout: Option<Duration>,
) -> aws_sdk_quicksight::Client {
    let mut timeouts = TimeoutConfig::builder();
    if let Some(t) = timeout {
        timeouts = timeouts.operation_timeout(t);
    }
    let conf = aws_sdk_quicksight::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(sim::DEFAULT_REGION))
        .credentials_provider(Credentials::new(access_key, secret, None, None, "tests"))
        .endpoint_url(endpoint)
        .retry_config(retry)
        .timeout_config(timeouts.build())
        .build();
    aws_sdk_quicksight::Client::from_conf(conf)
}

/// A plain HTTP client (no redirects, short timeout) for redemption pages and control endpoints.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn user_arn(user: &str) -> String {
    format!("arn:aws:quicksight:us-east-1:{ACCOUNT}:user/default/{user}")
}

pub fn dashboard_arn(id: &str) -> String {
    format!("arn:aws:quicksight:us-east-1:{ACCOUNT}:dashboard/{id}")
}
