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

use embedgate::clock::Clock;
use embedgate::config::{PolicySettings, Settings, TenantSettings};
use embedgate::startup::Application;
use std::collections::HashMap;

/// A gateway and its simulator, both in-process on port 0.
pub struct TestApp {
    pub sim: SimServer,
    pub app: Application,
    pub base: String,
    pub admin: String,
    /// tenant id → API key
    pub keys: HashMap<String, String>,
    pub http: reqwest::Client,
}

/// A tenant that may embed any dashboard of the demo account for users of `default`.
pub fn tenant(id: &str, key: &str) -> TenantSettings {
    TenantSettings {
        id: id.into(),
        api_key_sha256: vec![hex::encode(embedgate::tenant::hash_key(key))],
        default_account: Some(ACCOUNT.into()),
        rate_per_sec: 100_000.0,
        burst: 100_000,
        upstream_weight: 1.0,
        max_pooled_urls: 100_000,
        max_hints: 100,
        max_tracked_keys: 10_000,
        policy: PolicySettings {
            dashboards: vec!["*".into()],
            namespaces: vec!["default".into()],
            user_arns: vec![format!("arn:aws:quicksight:*:{ACCOUNT}:user/default/*")],
            session_tags: [("tenant".to_string(), vec![id.to_string()])].into(),
            ..PolicySettings::default()
        },
        warm: vec![],
    }
}

/// Starts a simulator and a gateway in front of it with tenants `alpha` and `beta` (keys
/// `alpha-key`, `beta-key`); `customize` adjusts the settings first.
pub async fn spawn_app_with(clock: Clock, customize: impl FnOnce(&mut Settings)) -> TestApp {
    let sim = spawn_sim();
    let mut s = gateway_settings(&sim.endpoint);
    customize(&mut s);
    let keys = s
        .tenants
        .iter()
        .map(|t| (t.id.clone(), format!("{}-key", t.id)))
        .collect();
    let app = Application::start(s, clock).await.expect("gateway starts");
    TestApp {
        base: format!("http://{}", app.addr),
        admin: format!("http://{}", app.admin_addr),
        sim,
        app,
        keys,
        http: test_http(),
    }
}

/// Gateway settings for tests: both listeners on port 0, two workers, the simulator at
/// `endpoint`, tenants `alpha` and `beta` (keys `alpha-key`, `beta-key`).
pub fn gateway_settings(endpoint: &str) -> Settings {
    let mut s = embedgate::dev::settings(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        endpoint,
        "unused",
    );
    s.workers = Some(2);
    s.upstream.rate_per_sec = 1000.0;
    s.upstream.burst = 100;
    s.tenants = vec![tenant("alpha", "alpha-key"), tenant("beta", "beta-key")];
    s
}

/// An HTTP client with room for many concurrent connections per host.
pub fn test_http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

pub async fn spawn_app(customize: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with(Clock::System, customize).await
}

impl TestApp {
    /// POSTs `body` to `/v1/embed-url/<kind>` as `tenant`.
    pub async fn embed(
        &self,
        tenant: &str,
        kind: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/embed-url/{kind}", self.base))
            .bearer_auth(&self.keys[tenant])
            .json(body)
            .send()
            .await
            .expect("gateway answers")
    }

    /// POSTs `body` as `tenant` and returns the parsed JSON answer (success or problem).
    pub async fn embed_json(
        &self,
        tenant: &str,
        kind: &str,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        self.embed(tenant, kind, body)
            .await
            .json()
            .await
            .expect("a JSON answer")
    }

    /// POSTs one GetDashboardEmbedUrl hint as `tenant`.
    pub async fn hint(&self, tenant: &str, body: &serde_json::Value) -> reqwest::Response {
        let mut hint = body.clone();
        hint["Operation"] = serde_json::json!("GetDashboardEmbedUrl");
        self.http
            .post(format!("{}/v1/hints", self.base))
            .bearer_auth(&self.keys[tenant])
            .json(&serde_json::json!({"Requests": [hint]}))
            .send()
            .await
            .expect("gateway answers")
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Polls `cond` every 10 ms for up to `secs` seconds; false if it never held.
    pub async fn eventually(&self, secs: u64, mut cond: impl FnMut() -> bool) -> bool {
        let until = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < until {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cond()
    }

    /// The pool key the gateway uses for `body` (a GetDashboardEmbedUrl body) of tenant `index`.
    pub fn key_of(&self, index: usize, body: &serde_json::Value) -> embedgate::pool::PoolKey {
        let gw = &self.app.gateway;
        let tenant = gw.tenants().get(index);
        let op = embedgate::model::Operation::GetDashboardEmbedUrl;
        let parsed =
            embedgate::model::parse_request(op, body.to_string().as_bytes()).expect("a valid body");
        let req = gw.admit(tenant, parsed).expect("an admitted request");
        gw.key_for(tenant, &req)
    }

    pub async fn stop(self) {
        self.app.stop().await;
        self.sim.stop().await;
    }
}

/// A GetDashboardEmbedUrl body for a registered user.
pub fn dash(dashboard: &str, user: &str) -> serde_json::Value {
    serde_json::json!({"DashboardId": dashboard, "IdentityType": "QUICKSIGHT", "UserArn": user_arn(user)})
}

/// A warm-key entry for a tenant's `warm` list: a GetDashboardEmbedUrl body kept `depth` deep.
pub fn warm(mut body: serde_json::Value, depth: u32) -> serde_json::Value {
    body["Operation"] = serde_json::json!("GetDashboardEmbedUrl");
    body["Depth"] = serde_json::json!(depth);
    body
}

/// The value of a metric sample line (`name{labels} value`), 0 when absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}
