//! `embedgate dev` from the binary: it starts, and the curl it prints returns a URL that redeems.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::http;

/// Kills the child when the test ends, pass or fail.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn embedgate_dev_prints_a_curl_that_returns_a_redeemable_url() {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_embedgate"))
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--sim-listen",
                "127.0.0.1:0",
                "--compat-listen",
                "127.0.0.1:0",
                "--demo-listen",
                "127.0.0.1:0",
                "--sim-tls-listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("embedgate dev starts"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = vec![];
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.starts_with("Open the EmbedUrl");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let lines = tokio::time::timeout(Duration::from_secs(60), lines)
        .await
        .expect("dev prints its banner")
        .unwrap();
    // The printed command, continuation lines joined, parsed as a shell would.
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with("curl "))
        .expect("a curl line");
    let command: String = lines[start..start + 3]
        .iter()
        .map(|l| l.trim().trim_end_matches('\\'))
        .collect::<Vec<_>>()
        .join(" ");
    let words = shlex::split(&command).expect("shell words");
    let url = words.iter().find(|w| w.starts_with("http://")).unwrap();
    let mut req = http().post(url);
    for pair in words.windows(2) {
        match pair[0].as_str() {
            "-H" => {
                let (k, v) = pair[1].split_once(": ").unwrap();
                req = req.header(k, v);
            }
            "-d" => req = req.body(pair[1].clone()),
            _ => {}
        }
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let embed = body["EmbedUrl"].as_str().unwrap();
    assert!(
        embed.starts_with("https://"),
        "dev issues https URLs for the embedding SDK: {embed}"
    );
    // The simulator's certificate is self-signed, made at start-up.
    let browser = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let page = browser.get(embed).send().await.unwrap();
    assert_eq!(page.status(), 200, "the URL redeems at the simulator");
    assert!(page.text().await.unwrap().contains("dashboard sales-2024"));

    // Drop-in mode: the endpoint and demo access key it prints work with the Rust SDK.
    let banner = lines
        .iter()
        .find(|l| l.starts_with("Drop-in mode:"))
        .expect("a drop-in line");
    let endpoint = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let creds: Vec<&str> = lines
        .iter()
        .find(|l| l.trim_start().starts_with("access key id"))
        .unwrap()
        .split_whitespace()
        .collect();
    let (key_id, secret) = (creds[3], creds[7]);
    let qs = crate::helpers::Sdk {
        access_key: key_id,
        secret,
        ..crate::helpers::Sdk::default()
    }
    .client(endpoint);
    let out = qs
        .get_dashboard_embed_url()
        .aws_account_id(embedgate::sim::DEFAULT_ACCOUNT_ID)
        .dashboard_id("sales-2024")
        .identity_type(aws_sdk_quicksight::types::EmbeddingIdentityType::Anonymous)
        .send()
        .await
        .expect("the printed drop-in credentials work");
    let page = browser.get(out.embed_url.unwrap()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    drop(child);
}

#[tokio::test]
async fn the_demo_portals_backend_answers_bad_input_in_json_naming_the_member() {
    // No gateway behind it: a pick the portal refuses never reaches one.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway = format!("http://{}", gone.local_addr().unwrap());
    drop(gone);
    let settings = embedgate::dev::portal_settings(
        "127.0.0.1:0".parse().unwrap(),
        &gateway,
        "k".repeat(32).as_str(),
    );
    let portal = embedgate::demo::DemoPortal::start(settings).unwrap();
    let url = format!("http://{}/api/embed-url", portal.addr);
    let client = http();
    for (body, status, names) in [
        (r#"{"dashboard": "sales-2024"}"#, 400, "viewer"),
        (r#"{"dashboard": 5, "viewer": ""}"#, 400, "dashboard"),
        (
            r#"{"dashboard": "sales-2024", "viewer": "", "x": 1}"#,
            400,
            "x",
        ),
        (r#"[]"#, 400, "object"),
        (r#"{"dashboard": "nope", "viewer": ""}"#, 400, "dashboard"),
        (
            r#"{"dashboard": "sales-2024", "viewer": "mallory"}"#,
            400,
            "viewer",
        ),
        (
            r#"{"dashboard": "sales-2024", "viewer": "alice"}"#,
            502,
            "gateway",
        ),
    ] {
        let r = client
            .post(&url)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{body}");
        let answer: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{body}: not JSON: {e}"));
        let detail = answer["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(names), "{body}: {answer}");
    }
    portal.stop().await;
}
