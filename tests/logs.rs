//! Logs over a full run: at `trace` level, after hits, misses, prefetches, hints, upstream errors
//! and redemptions, no log line contains an embed URL or auth code, and each request's log lines
//! carry the request id the response returned.

#[allow(dead_code, unused_imports)]
#[path = "api/helpers/mod.rs"]
mod helpers;

use std::io::Write;
use std::sync::{Arc, Mutex};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_ever_contains_an_embed_url_and_every_request_line_has_its_request_id() {
    let capture = Capture::default();
    telemetry::init_with_writer(LogFormat::Json, "trace", capture.clone());

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
