//! Logs over a full run: at `trace` level, after hits, misses, prefetches, hints, upstream errors
//! and redemptions, no log line contains an embed URL or auth code, and each request's log lines
//! carry the request id the response returned; and a flood of throttled requests is one line in
//! full and a count at `info`.

#[allow(dead_code, unused_imports)]
#[path = "api/helpers/mod.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "api/redis_server.rs"]
mod redis_server;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use embedgate::clock::Clock;
use embedgate::telemetry::{self, LogFormat};
use helpers::*;
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Every line of this binary's tests, at `trace`, as JSON (the subscriber is the process's, so
/// the tests share it; each asserts on its own requests' lines).
fn capture() -> Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Capture::default();
            telemetry::init_with_writer(LogFormat::Json, "trace", capture.clone());
            capture
        })
        .clone()
}

impl Capture {
    /// The lines so far, parsed.
    fn lines(&self) -> Vec<Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_ever_contains_an_embed_url_and_every_request_line_has_its_request_id() {
    let capture = capture();

    let app = spawn_app(|s| {
        s.tenants[0].warm = vec![warm(dash("sales-2024", "alice"), 3)];
    })
    .await;
    let key = app.key_of(0, &dash("sales-2024", "alice"));
    let gw = app.app.gateway.clone();
    assert!(app.eventually(10, || gw.pool().len(&key) >= 3).await);

    let mut urls = vec![];
    let mut ids = vec![];
    for body in [
        dash("sales-2024", "alice"),
        dash("finance", "bob"),
        dash("sales-2024", "alice"),
    ] {
        let r: Value = app.embed_json("alpha", "dashboard", &body).await;
        urls.push(r["EmbedUrl"].as_str().unwrap().to_string());
        ids.push(r["RequestId"].as_str().unwrap().to_string());
    }
    let anon = json!({
        "Namespace": "default",
        "AuthorizedResourceArns": [dashboard_arn("demo")],
        "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": "demo"}},
        "SessionTags": [{"Key": "tenant", "Value": "alpha"}],
    });
    let r: Value = app.embed_json("alpha", "anonymous-user", &anon).await;
    urls.push(r["EmbedUrl"].as_str().unwrap().to_string());
    app.hint("alpha", &dash("ops-overview", "carol")).await;
    app.sim.sim.update_knobs(&json!({"fail_next": 1})).unwrap();
    app.embed("alpha", "dashboard", &dash("finance", "carol"))
        .await;
    let refused: Value = app
        .embed_json("alpha", "dashboard", &dash("no-such", "carol"))
        .await;
    let refused_id = refused["requestId"].as_str().unwrap().to_string();
    for u in &urls {
        http().get(u).send().await.unwrap();
        http().get(u).send().await.unwrap(); // a double redemption, refused
    }
    app.stop().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.lines().count() > 50,
        "the run was logged at trace level"
    );
    for u in &urls {
        let code = u.split("code=").nth(1).unwrap().split('&').next().unwrap();
        assert!(!logs.contains(code), "an auth code was logged");
        let path = url::Url::parse(u).unwrap().path().to_string();
        assert!(!logs.contains(&path), "an embed URL path was logged");
    }
    assert!(
        !logs.contains("AYABe"),
        "no auth code of any URL was logged"
    );
    // QuickSight's message is withheld from the tenant, so the operator finds it in the log, at
    // warn, under the request's id.
    let line = logs
        .lines()
        .find(|l| l.contains("QuickSight refused the call") && l.contains(refused_id.as_str()))
        .unwrap_or_else(|| panic!("QuickSight's refusal is logged under request id {refused_id}"));
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["fields"]["upstream_code"], "ResourceNotFoundException");
    assert!(
        v["fields"]["upstream_message"]
            .as_str()
            .is_some_and(|m| m.contains("no-such")),
        "{line}"
    );
    for id in &ids {
        let line = logs
            .lines()
            .find(|l| l.contains("embed-url request") && l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("the request's outcome line carries request id {id}"));
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["span"]["request_id"], id.as_str());
    }
}

/// A tenant over its rate, and clients without a valid key over theirs, decide how many requests
/// they send. At `info` each burst of refusals is its first request's line, then one
/// `embed-url requests throttled` line per interval counting the rest; each refusal's own line is
/// still written at `debug`, under its request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_throttled_requests_is_one_line_and_a_count_at_info() {
    let capture = capture();
    // A manual clock: the limiters never refill, and the report interval passes when the test
    // says so.
    let clock = Clock::manual();
    let app = spawn_app_with(clock.clone(), |s| {
        s.tenants[1].rate_per_sec = 0.001;
        s.tenants[1].burst = 2;
        s.api.unauthenticated_rate_per_sec = 0.001;
        s.api.unauthenticated_burst = 2;
    })
    .await;
    let app = Arc::new(app);
    // Eight clients each for `beta` and without a valid key, 40 requests each, at once.
    let senders: Vec<_> = (0..16)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut throttled = vec![];
                for _ in 0..40 {
                    let mut req = app
                        .http
                        .post(format!("{}/v1/embed-url/dashboard", app.base))
                        .json(&dash("sales-2024", "bob"));
                    req = if i % 2 == 0 {
                        req.bearer_auth("beta-key")
                    } else {
                        req.bearer_auth("no-such-key")
                    };
                    let r = req.send().await.unwrap();
                    if r.status() == 429 {
                        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
                        throttled.push((i % 2 == 0, id));
                    }
                }
                throttled
            })
        })
        .collect();
    let mut ids = [BTreeSet::new(), BTreeSet::new()];
    for s in senders {
        for (beta, id) in s.await.unwrap() {
            ids[usize::from(!beta)].insert(id);
        }
    }
    assert!(
        ids.iter().all(|i| i.len() >= 300),
        "over 300 of each 320 were throttled: {} and {}",
        ids[0].len(),
        ids[1].len()
    );
    let reported = |lines: &[Value], tenant: &str| -> u64 {
        lines
            .iter()
            .filter(|l| {
                l["fields"]["message"] == "embed-url requests throttled"
                    && l["fields"]["tenant"] == tenant
            })
            .map(|l| {
                assert_eq!(l["level"], "INFO", "{l}");
                assert!(l.get("span").is_none(), "a report is no request's: {l}");
                l["fields"]["count"].as_u64().unwrap()
            })
            .sum()
    };
    // Nothing is reported before an interval has passed since the first line.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(reported(&capture.lines(), "beta"), 0);
    clock.advance(10_000);
    let mut waited = 0;
    while reported(&capture.lines(), "beta") == 0 || reported(&capture.lines(), "-") == 0 {
        assert!(waited < 100, "a report within 10 s of the interval's end");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    Arc::into_inner(app).unwrap().stop().await;

    let lines = capture.lines();
    for (tenant, ids) in [("beta", &ids[0]), ("-", &ids[1])] {
        let throttled: Vec<&Value> = lines
            .iter()
            .filter(|l| {
                l["fields"]["message"] == "embed-url request"
                    && l["fields"]["outcome"] == "throttled"
                    && l["fields"]["tenant"] == tenant
            })
            .collect();
        let logged: BTreeSet<String> = throttled
            .iter()
            .map(|l| l["span"]["request_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            &logged, ids,
            "{tenant}: each refusal has its line, under its id"
        );
        let at_info = throttled.iter().filter(|l| l["level"] == "INFO").count();
        assert_eq!(at_info, 1, "{tenant}: one refusal in full at info");
        assert_eq!(
            reported(&lines, tenant),
            ids.len() as u64 - 1,
            "{tenant}: the report counts every other refusal"
        );
    }
}

/// A Redis whose ACL refuses a command the pool's scripts need (`+@all -@dangerous`, a common
/// hardening, refuses `INFO`, with which the fence reads Redis's `run_id`) can never share the
/// pool: the replica serves on its own and says once, naming the command, why. It did not
/// notice before its first pool call, so it announced "rejoined the fleet" at every heartbeat
/// and failed again at once: two lines a heartbeat, forever, none naming what to grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_refuses_a_command_the_fence_needs_is_one_warning_naming_it() {
    let capture = capture();
    let redis = redis_server::RedisServer::start();
    let acl = [
        "ACL",
        "SETUSER",
        "app",
        "on",
        ">app-pw",
        "~*",
        "&*",
        "+@all",
        "-@dangerous",
    ];
    assert_eq!(redis.cli(&acl).as_deref(), Some("OK"));
    let url = format!("redis://app:app-pw@127.0.0.1:{}", redis.port);
    let fleet = spawn_fleet(1, |s| {
        s.redis.url = Some(url.clone());
        s.redis.heartbeat_ms = 100;
        s.redis.timeout_ms = 2_000;
    })
    .await;
    for i in 0..20 {
        let r = fleet.embed(i, "alpha", &dash("finance", "alice")).await;
        assert_eq!(r.status, 200, "served on its own: {}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fleet.readiness(0).await, "degraded");
    fleet.stop().await;

    let lines: Vec<String> = capture
        .lines()
        .into_iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .unwrap_or_default()
                .starts_with("embedgate::cluster")
                && ["WARN", "INFO", "ERROR"].contains(&l["level"].as_str().unwrap_or_default())
        })
        .map(|l| l.to_string())
        .collect();
    assert!(
        !lines.iter().any(|l| l.contains("rejoined")),
        "never joined, so never rejoined: {lines:#?}"
    );
    assert!(
        lines.len() <= 2,
        "a warning, not one per heartbeat: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("INFO") && l.contains("ACL")),
        "the warning names the command and the ACL: {lines:#?}"
    );
}
