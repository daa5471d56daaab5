//! The one test harness: every integration test starts its servers here, in-process on port 0
//! (a simulator, and one gateway or a fleet of replicas through [`start_replicas`]), and talks
//! to them with the clients built here: [`http`] and [`Sdk`]. Waits go through [`eventually`].

mod endpoint;
mod fleet;
mod ports;

use std::future::Future;
use std::time::Duration;

pub use endpoint::Endpoint;
pub use fleet::*;
pub use ports::{free_port, HeldPort};

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

/// An SDK client for the simulator: the default test credentials and one attempt per call
/// unless changed, so a test sees every answer.
pub struct Sdk<'a> {
    pub access_key: &'a str,
    pub secret: &'a str,
    /// The region the client signs for.
    pub region: &'a str,
    pub retry: RetryConfig,
    /// The whole operation's timeout (none by default).
    pub timeout: Option<Duration>,
}

impl Default for Sdk<'_> {
    fn default() -> Self {
        Sdk {
            access_key: sim::DEFAULT_ACCESS_KEY_ID,
            secret: sim::DEFAULT_SECRET_ACCESS_KEY,
            region: sim::DEFAULT_REGION,
            retry: RetryConfig::standard().with_max_attempts(1),
            timeout: None,
        }
    }
}

impl Sdk<'_> {
    pub fn client(self, endpoint: &str) -> aws_sdk_quicksight::Client {
        self.client_with(endpoint, None)
    }

    /// [`Sdk::client`] through `http` (an HTTPS client that trusts a test CA, say) instead of
    /// the SDK's default HTTP client.
    pub fn client_with(
        self,
        endpoint: &str,
        http: Option<aws_smithy_runtime_api::client::http::SharedHttpClient>,
    ) -> aws_sdk_quicksight::Client {
        let mut timeouts = TimeoutConfig::builder();
        if let Some(t) = self.timeout {
            timeouts = timeouts.operation_timeout(t);
        }
        let conf = aws_sdk_quicksight::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.to_string()))
            .credentials_provider(Credentials::new(
                self.access_key,
                self.secret,
                None,
                None,
                "tests",
            ))
            .endpoint_url(endpoint)
            .retry_config(self.retry)
            .timeout_config(timeouts.build());
        let conf = match http {
            Some(h) => conf.http_client(h),
            None => conf,
        }
        .build();
        aws_sdk_quicksight::Client::from_conf(conf)
    }
}

/// An SDK call for an anonymous view of `dashboard` of `account` (us-east-1), in the default
/// namespace, the dashboard its only authorized resource.
pub fn sdk_anonymous(
    client: &aws_sdk_quicksight::Client,
    account: &str,
    dashboard: &str,
) -> aws_sdk_quicksight::operation::generate_embed_url_for_anonymous_user::builders::GenerateEmbedUrlForAnonymousUserFluentBuilder{
    use aws_sdk_quicksight::types::{
        AnonymousUserDashboardEmbeddingConfiguration, AnonymousUserEmbeddingExperienceConfiguration,
    };
    client
        .generate_embed_url_for_anonymous_user()
        .aws_account_id(account)
        .namespace("default")
        .authorized_resource_arns(format!(
            "arn:aws:quicksight:us-east-1:{account}:dashboard/{dashboard}"
        ))
        .experience_configuration(
            AnonymousUserEmbeddingExperienceConfiguration::builder()
                .dashboard(
                    AnonymousUserDashboardEmbeddingConfiguration::builder()
                        .initial_dashboard_id(dashboard)
                        .build()
                        .unwrap(),
                )
                .build(),
        )
}

/// `Sdk::default().client(endpoint)`.
pub fn sdk_client(endpoint: &str) -> aws_sdk_quicksight::Client {
    Sdk::default().client(endpoint)
}

/// The HTTP client of every test: room for many concurrent connections per host, no redirects
/// followed (a test sees the redemption page's own answer), a timeout no healthy server reaches,
/// and idle connections dropped after 2 s: before actix-web's 5 s keep-alive closes them on the
/// server side, so a request never races a close on a reused connection (which a client cannot
/// safely resend for a POST).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .pool_idle_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The body of a GET of `url`, as text.
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// Polls `cond` every 50 ms until it holds or `within` has passed; whether it held.
pub async fn eventually<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond().await
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
    /// The QuickSight-compatible listener (`http://…`), when `compat_listen` is set.
    pub compat: Option<String>,
    /// tenant id → API key
    pub keys: HashMap<String, String>,
    pub http: reqwest::Client,
}

/// A tenant that may embed any dashboard of the demo account for users of `default`.
pub fn tenant(id: &str, key: &str) -> TenantSettings {
    TenantSettings {
        id: id.into(),
        api_key_sha256: vec![hex::encode(embedgate::tenant::hash_key(key))],
        access_key_ids: vec![],
        client_certificate_names: vec![],
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
    spawn_app_on(sim_settings(), clock, customize).await
}

/// [`spawn_app_with`] in front of a simulator with these settings.
pub async fn spawn_app_on(
    sim: SimSettings,
    clock: Clock,
    customize: impl FnOnce(&mut Settings),
) -> TestApp {
    let sim = SimServer::start(sim).expect("simulator starts");
    let mut tenants = vec![];
    let mut customize = Some(customize);
    let customize = |s: &mut Settings| {
        if let Some(c) = customize.take() {
            c(s);
        }
        tenants = s.tenants.iter().map(|t| t.id.clone()).collect();
    };
    let app = start_replicas(&sim, vec![clock], customize)
        .await
        .pop()
        .expect("one gateway");
    TestApp {
        base: format!("http://{}", app.addr),
        admin: format!("http://{}", app.admin_addr),
        compat: app.compat_addr.map(|a| format!("http://{a}")),
        sim,
        app,
        keys: tenants
            .into_iter()
            .map(|id| (id.clone(), format!("{id}-key")))
            .collect(),
        http: http(),
    }
}

/// Starts one gateway per clock in front of `sim`, each with the test settings adjusted by
/// `customize`: the single start path of every test's gateways.
pub async fn start_replicas(
    sim: &SimServer,
    clocks: Vec<Clock>,
    mut customize: impl FnMut(&mut Settings),
) -> Vec<Application> {
    // Warnings and errors go to the test's captured output: a failing test shows why a call
    // failed (an upstream error, Redis trouble), which its assertion alone cannot say.
    embedgate::telemetry::init_with_writer(
        embedgate::telemetry::LogFormat::Pretty,
        "warn",
        tracing_subscriber::fmt::TestWriter::new,
    );
    let mut replicas = vec![];
    for clock in clocks {
        let mut s = gateway_settings(&sim.endpoint);
        customize(&mut s);
        replicas.push(Application::start(s, clock).await.expect("gateway starts"));
    }
    replicas
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
        get_text(&self.http, &format!("{}/metrics", self.admin)).await
    }

    /// `GET /state` on the admin listener, listing up to `keys` of the planner's keys.
    pub async fn state(&self, keys: usize) -> serde_json::Value {
        self.http
            .get(format!("{}/state?keys={keys}", self.admin))
            .send()
            .await
            .expect("admin answers")
            .json()
            .await
            .expect("JSON")
    }

    /// `key`'s entry among the planner's keys in `GET /state` (probability, target, stock,
    /// reason); panics, showing the state, when the key is not listed.
    pub async fn planned(&self, key: &embedgate::pool::PoolKey) -> serde_json::Value {
        let state = self.state(1000).await;
        state["demand"]["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["key"] == key.as_str()))
            .cloned()
            .unwrap_or_else(|| panic!("{key:?} is listed in /state: {state}"))
    }

    /// [`eventually`] for a condition that needs no waiting to check, within `secs` seconds.
    pub async fn eventually(&self, secs: u64, mut cond: impl FnMut() -> bool) -> bool {
        eventually(Duration::from_secs(secs), || std::future::ready(cond())).await
    }

    /// The pool key the gateway uses for `body` (a GetDashboardEmbedUrl body) of tenant `index`.
    pub fn key_of(&self, index: usize, body: &serde_json::Value) -> embedgate::pool::PoolKey {
        key_of(&self.app, index, body)
    }

    pub async fn stop(self) {
        self.app.stop().await;
        self.sim.stop().await;
    }
}

/// The pool key `app` files a GetDashboardEmbedUrl `body` of its `index`th tenant under.
pub fn key_of(
    app: &Application,
    index: usize,
    body: &serde_json::Value,
) -> embedgate::pool::PoolKey {
    let gw = &app.gateway;
    let tenant = gw.tenants().get(index);
    let op = embedgate::model::Operation::GetDashboardEmbedUrl;
    let parsed =
        embedgate::model::parse_request(op, body.to_string().as_bytes()).expect("a valid body");
    let req = gw.admit(tenant, parsed).expect("an admitted request");
    gw.key_for(tenant, &req)
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

/// The sum of a metric's samples that carry `label` (`reason="expired"`; `""`: all of them), 0
/// when none.
pub fn metric_total(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once("} ")?;
            (label.is_empty() || labels.split(',').any(|l| l == label)).then_some(value)
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
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

/// Sends `request` (a head declaring a longer body than follows it) on a new connection to `addr`
/// and then nothing: everything the server sends until it closes the connection, and how long
/// that took. Panics if the connection is still open 10 s later.
pub async fn send_and_stall(addr: &str, request: &str) -> (String, std::time::Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("an answer and a closed connection within 10 s of a stalled body")
    .unwrap();
    (
        String::from_utf8_lossy(&answer).to_string(),
        started.elapsed(),
    )
}

/// A gateway without refills whose simulator holds every call, and whose calls and misses wait
/// for it far beyond the moments a busy machine takes to see a call in flight and reset its
/// connection (`give_up_while_quicksight_answers`).
pub async fn app_whose_quicksight_holds_every_call(
    customize: impl FnOnce(&mut Settings),
) -> TestApp {
    let app = spawn_app(|s| {
        s.refill.enabled = false;
        s.upstream.timeout_ms = 60_000;
        s.api.miss_timeout_ms = 90_000;
        customize(s);
    })
    .await;
    app.sim
        .sim
        .update_knobs(&serde_json::json!({"hang_rate": 1.0}))
        .unwrap();
    app
}

/// [`give_up_while_quicksight_answers`] for a native dashboard request of tenant `alpha`: sends
/// `body`, gives up as `how` says while its QuickSight call is in flight, and waits until the
/// request is counted as `cancelled`.
pub async fn give_up_native_request_while_quicksight_answers(
    app: &TestApp,
    body: &serde_json::Value,
    how: GiveUp,
) -> String {
    let request = native_request(&app.keys["alpha"], &body.to_string());
    let cancelled =
        "embedgate_requests_total{outcome=\"cancelled\",protocol=\"native\",tenant=\"alpha\"}";
    let addr = app.base.trim_start_matches("http://");
    give_up_while_quicksight_answers(app, addr, &request, cancelled, how).await
}

/// A native GetDashboardEmbedUrl request for a raw connection: `body` with `api_key`, the
/// connection closed by the gateway after its answer (so a client can read to the end).
pub fn native_request(api_key: &str, body: &str) -> String {
    format!(
        "POST /v1/embed-url/dashboard HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n\
         {body}",
        body.len()
    )
}

/// How a client gives up on a request: by resetting the connection (`SO_LINGER` 0), or by
/// closing it normally (a FIN), as most HTTP clients do at their timeout.
#[derive(Debug, Clone, Copy)]
pub enum GiveUp {
    Reset,
    Close,
}

/// Sends `request` to the gateway at `addr` (`host:port`), waits until the QuickSight call it
/// causes is in flight, then gives up as `how` says, as a client at its timeout does, and waits
/// until `counted` (a request counter's sample) reaches 1. Returns the metrics scraped then.
pub async fn give_up_while_quicksight_answers(
    app: &TestApp,
    addr: &str,
    request: &str,
    counted: &str,
    how: GiveUp,
) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let waiting = eventually(Duration::from_secs(10), || async {
        metric(&app.metrics().await, "embedgate_upstream_in_flight") >= 1.0
    })
    .await;
    assert!(waiting, "the request waits on the held QuickSight call");
    if let GiveUp::Reset = how {
        stream.set_zero_linger().unwrap();
    }
    drop(stream);
    let reached = eventually(Duration::from_secs(10), || async {
        metric(&app.metrics().await, counted) == 1.0
    })
    .await;
    let m = app.metrics().await;
    assert!(reached, "{counted}: {}", metric(&m, counted));
    m
}

/// 24 clients, each sending 25 GetDashboardEmbedUrl requests of tenant alpha (`api_key`), their
/// bodies picked at random from `bodies`, to the gateways at `addrs` (`host:port`) in turn, one
/// connection a request. Half the requests are given up after up to 150 ms, as a portal's
/// backend gives up at its timeout: by closing the connection, or by resetting it. Seeded: the
/// same choices every run. Returns the URLs received and how many requests were given up.
pub async fn clients_that_give_up_at_random(
    addrs: &[String],
    api_key: &str,
    bodies: &[serde_json::Value],
) -> (Vec<String>, u32) {
    use rand::{Rng, SeedableRng};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let clients = (0..24u64).map(|c| {
        let (addrs, api_key, bodies) = (addrs.to_vec(), api_key.to_string(), bodies.to_vec());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c);
            let (mut received, mut given_up) = (vec![], 0u32);
            for i in 0..25 {
                let body = bodies[rng.random_range(0..bodies.len())].to_string();
                let request = native_request(&api_key, &body);
                let addr = &addrs[(c as usize + i) % addrs.len()];
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.write_all(request.as_bytes()).await.unwrap();
                let patience = if rng.random_bool(0.5) {
                    Duration::from_millis(rng.random_range(0..150))
                } else {
                    Duration::from_secs(30)
                };
                let mut answer = Vec::new();
                match tokio::time::timeout(patience, stream.read_to_end(&mut answer)).await {
                    Ok(read) => {
                        read.unwrap();
                        let text = String::from_utf8_lossy(&answer);
                        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
                        let parsed: serde_json::Value =
                            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
                        if let Some(url) = parsed["EmbedUrl"].as_str() {
                            received.push(url.to_string());
                        }
                    }
                    Err(_) => {
                        given_up += 1;
                        if rng.random_bool(0.5) {
                            stream.set_zero_linger().unwrap();
                        }
                    }
                }
            }
            (received, given_up)
        })
    });
    let (mut received, mut given_up) = (vec![], 0);
    for client in futures::future::join_all(clients).await {
        let (urls, gave_up) = client.unwrap();
        received.extend(urls);
        given_up += gave_up;
    }
    (received, given_up)
}

/// What became of the URLs QuickSight minted, as the gateways count them.
pub struct Balance {
    pub minted: f64,
    /// Requests answered with a URL (`hit` and `miss`).
    pub handed_out: f64,
    pub wasted: f64,
    pub pooled: f64,
    /// QuickSight calls still in flight.
    pub in_flight: f64,
}

impl Balance {
    /// The counts of one gateway's metrics `text` (its local pool) and the simulator's ledger.
    pub fn of(text: &str, minted: u64) -> Balance {
        Balance {
            minted: minted as f64,
            handed_out: metric_total(text, "embedgate_requests_total", "outcome=\"hit\"")
                + metric_total(text, "embedgate_requests_total", "outcome=\"miss\""),
            wasted: metric_total(text, "embedgate_urls_wasted_total", ""),
            pooled: metric(text, "embedgate_pool_urls"),
            in_flight: metric(text, "embedgate_upstream_in_flight"),
        }
    }
}

/// Once no call is in flight (and every landing is done, within 20 s), every URL minted is
/// handed out, wasted or pooled, and none of them twice: `read` gives the counts. `received`:
/// the URLs clients got, which must be distinct.
pub async fn assert_every_url_ends_in_one_place<F, Fut>(
    mut read: F,
    received: &[String],
    given_up: u32,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Balance>,
{
    let settled = eventually(Duration::from_secs(20), || {
        let b = read();
        async move {
            let b = b.await;
            b.in_flight == 0.0 && b.minted == b.handed_out + b.wasted + b.pooled
        }
    })
    .await;
    let b = read().await;
    assert!(
        settled,
        "minted {} = handed out {} + wasted {} + pooled {} ({} calls in flight; {given_up} \
         requests given up)",
        b.minted, b.handed_out, b.wasted, b.pooled, b.in_flight
    );
    eprintln!(
        "{} URLs minted: {} handed out ({} received), {} wasted, {} pooled; {given_up} requests \
         given up",
        b.minted,
        b.handed_out,
        received.len(),
        b.wasted,
        b.pooled
    );
    let distinct: std::collections::HashSet<&String> = received.iter().collect();
    assert_eq!(
        distinct.len(),
        received.len(),
        "every URL received is distinct"
    );
}

/// The lines a child process writes, read on threads of their own as they come.
pub struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    /// Reads `streams` (a child's stdout, stderr) into one sequence of lines.
    pub fn of(streams: Vec<Box<dyn std::io::Read + Send>>) -> Lines {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for stream in streams {
            let tx = tx.clone();
            std::thread::spawn(move || {
                std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                    .for_each(|l| drop(tx.send(l)))
            });
        }
        Lines(rx)
    }

    /// The next line containing `needle`, waited for at most `within`; the lines passed over
    /// are added to `seen`. Blocks its thread.
    pub fn wait_for(
        &self,
        needle: &str,
        within: Duration,
        seen: &mut Vec<String>,
    ) -> Option<String> {
        let deadline = std::time::Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.0.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        None
    }
}

/// A gateway process, `embedgate serve --config <config>` logging at `info`, its log read as it
/// comes; killed when dropped.
pub struct Served {
    child: std::process::Child,
    lines: Lines,
}

impl Served {
    pub fn start(config: &std::path::Path) -> Served {
        let mut child = serve_command(config.to_str().unwrap())
            .env("EMBEDGATE_LOG", "info")
            .spawn()
            .unwrap();
        let lines = Lines::of(vec![Box::new(child.stderr.take().unwrap())]);
        Served { child, lines }
    }

    /// The next log line containing `needle`, waited for at most 30 s (panics after). Blocks
    /// its thread: call it from a multi-threaded runtime.
    pub fn wait_for(&self, needle: &str) -> String {
        tokio::task::block_in_place(|| {
            self.lines
                .wait_for(needle, Duration::from_secs(30), &mut Vec::new())
                .unwrap_or_else(|| panic!("no line with {needle:?}"))
        })
    }

    /// Sends it `SIGHUP`.
    pub fn hup(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of a JSON log line (`fields.<name>`).
pub fn log_field(line: &str, name: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"))
        ["fields"][name]
        .clone()
}

/// A config file for [`Served`]: the native API on `listen`, the admin listener on port 0,
/// `tables` (tables of settings such as `[tls]`), the simulator `sim` as the upstream, and one
/// tenant, `acme`, with `api_key`, allowed every dashboard in the default namespace.
pub fn served_config(sim: &SimServer, listen: &str, tables: &str, api_key: &str) -> String {
    format!(
        r#"
listen = "{listen}"
admin_listen = "127.0.0.1:0"
{tables}
[upstream]
region = "us-east-1"
endpoint_url = "{endpoint}"
access_key_id = "{access}"
secret_access_key = "{secret}"
[[tenants]]
id = "acme"
api_key_sha256 = ["{hash}"]
default_account = "{ACCOUNT}"
policy = {{ dashboards = ["*"], namespaces = ["default"] }}
"#,
        endpoint = sim.endpoint,
        access = sim::DEFAULT_ACCESS_KEY_ID,
        secret = sim::DEFAULT_SECRET_ACCESS_KEY,
        hash = hex::encode(embedgate::tenant::hash_key(api_key)),
    )
}

/// The session tag `tenant` = `value`, as the SDK sends it.
pub fn tenant_tag(value: &str) -> aws_sdk_quicksight::types::SessionTag {
    aws_sdk_quicksight::types::SessionTag::builder()
        .key("tenant")
        .value(value)
        .build()
        .unwrap()
}

/// Replaces `path`'s contents whole, as the kubelet updates a mounted file (never half written).
pub fn replace_file(path: &std::path::Path, contents: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// `embedgate serve --config <config>` (relative to the crate's root), never asking EC2 for
/// credentials, its stdout dropped and its stderr (the log) piped.
pub fn serve_command(config: &str) -> std::process::Command {
    use std::process::Stdio;
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_embedgate"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["serve", "--config", config])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Signs a GetDashboardEmbedUrl request for `base` (`http://` or `https://` and the address) as
/// the SDKs do, with any key, service, region and time: its URL and headers.
pub fn signed(
    base: &str,
    key_id: &str,
    secret: &str,
    service: &str,
    region: &str,
    at: std::time::SystemTime,
) -> (String, Vec<(String, String)>) {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    let path = format!("/accounts/{ACCOUNT}/dashboards/sales-2024/embed-url?creds-type=ANONYMOUS");
    let url = format!("{base}{path}");
    let host = base
        .split_once("://")
        .map_or(base, |(_, host)| host)
        .to_string();
    let identity = aws_credential_types::Credentials::new(key_id, secret, None, None, "t").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let req = SignableRequest::new(
        "GET",
        url.as_str(),
        [("host", host.as_str())].into_iter(),
        SignableBody::Bytes(b""),
    )
    .unwrap();
    let (instructions, _) = sign(req, &params).unwrap().into_parts();
    let headers = instructions
        .headers()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (url, headers)
}
