//! A wall-clock step mid-run, end to end: `embedgate serve` runs under libfaketime with only its
//! wall clock faked (60 s ahead) while it stocks a warm key, then that wall clock steps back to
//! the true time, as an NTP correction does. The simulator (not faked) measures how much
//! validity each URL had left when the client opened it, right after receiving it. A gateway that
//! read the wall clock for ages would take the stocked URLs for 60 s younger than they are and
//! hand them out far too old.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
const MIN_REMAINING_SECS: u64 = 285;
/// How long the client may take to open a URL after receiving it.
const OPENING_MS: u64 = 2_000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_back_cannot_make_a_pooled_url_look_fresher() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "libfaketime is installed (scripts/setup.sh installs Debian's faketime)"
    );
    let sim = spawn_sim();
    let (port, admin_port) = (free_port(), free_port());
    let mut s = gateway_settings(&sim.endpoint);
    s.listen = format!("127.0.0.1:{port}").parse().unwrap();
    s.admin_listen = format!("127.0.0.1:{admin_port}").parse().unwrap();
    s.pool.min_remaining_secs = MIN_REMAINING_SECS;
    s.tenants[0].warm = vec![warm(dash("sales-2024", "alice"), 4)];
    let dir = std::env::temp_dir().join(format!("embedgate-step-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("embedgate.toml");
    std::fs::write(&config, toml::to_string(&s).unwrap()).unwrap();
    let offset = dir.join("faketime");
    let set_offset = |o: &str| {
        let mut f = std::fs::File::create(&offset).unwrap();
        writeln!(f, "{o}").unwrap();
    };
    set_offset("+60s");

    let _gateway = Killed(
        Command::new(env!("CARGO_BIN_EXE_embedgate"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME_TIMESTAMP_FILE", &offset)
            .env("FAKETIME_NO_CACHE", "1")
            // Only the wall clock: the monotonic clock is not what NTP steps.
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("EMBEDGATE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("embedgate serve starts"),
    );
    let http = http();
    let base = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    // Stocked while the wall clock runs 60 s ahead.
    let stocked = eventually(Duration::from_secs(30), || async {
        let pooled = async {
            let state: serde_json::Value = http
                .get(format!("{admin}/state"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            state["pool"]["urls"].as_u64()
        }
        .await;
        pooled.unwrap_or(0) >= 4
    })
    .await;
    assert!(stocked, "the warm key was stocked");
    // The step back. The stocked URLs now carry dates 60 s in the wall clock's future; nobody
    // asks for them until they are past their 15 s of usable life (by the true clock), so a
    // gateway that believed the wall clock would still take them for fresh.
    set_offset("+0s");
    tokio::time::sleep(Duration::from_secs(25)).await;
    let started = Instant::now();
    let mut served = 0;
    for i in 0..12u32 {
        tokio::time::sleep_until((started + Duration::from_millis(250) * i).into()).await;
        let r = http
            .post(format!("{base}/v1/embed-url/dashboard"))
            .bearer_auth("alpha-key")
            .json(&dash("sales-2024", "alice"))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = r.json().await.unwrap();
        if let Some(u) = body["EmbedUrl"].as_str() {
            assert_eq!(http.get(u).send().await.unwrap().status(), 200, "{u}");
            served += 1;
        }
    }
    assert_eq!(served, 12, "every request got a URL");
    let ledger = sim.sim.ledger();
    let least = ledger.min_validity_left_ms.unwrap();
    eprintln!(
        "after a 60 s step back: least validity left at opening {least} ms; {:?}",
        ledger.validity_left
    );
    assert!(
        least + OPENING_MS >= MIN_REMAINING_SECS * 1000,
        "a URL was handed out with less than min_remaining_secs left: {least} ms at opening"
    );
    let _ = std::fs::remove_dir_all(&dir);
    sim.stop().await;
}
