//! Wall-clock steps mid-run, end to end: `embedgate serve` runs under libfaketime with only its
//! wall clock faked, while it stocks a warm key.
//!
//! - A step back (60 s ahead, then the true time, as an NTP correction does): the simulator (not
//!   faked) measures how much validity each URL had left when the client opened it, right after
//!   receiving it. A gateway that read the wall clock for ages would take the stocked URLs for
//!   60 s younger than they are and hand them out far too old.
//! - A step forward (as the wall clock of a machine that slept, or one that was slow when the
//!   gateway started and that NTP set right, shows it): the gateway must take its stocked URLs
//!   for that much older. A gateway that counted only elapsed time would not.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
const MIN_REMAINING_SECS: u64 = 285;
/// How long the client may take to open a URL after receiving it.
const OPENING_MS: u64 = 2_000;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `embedgate serve` under libfaketime, its wall clock offset by what `set_offset` last wrote.
struct Faked {
    _gateway: Killed,
    /// Its listeners' ports, held from other tests' servers.
    _ports: [HeldPort; 2],
    base: String,
    admin: String,
    dir: std::path::PathBuf,
    /// The gateway's stderr.
    log: std::path::PathBuf,
}

impl Faked {
    /// Starts the gateway on `s` (listeners chosen here) with its wall clock `offset` ahead
    /// (libfaketime's syntax: `+60s`, `-60s`).
    fn start(mut s: embedgate::config::Settings, offset: &str) -> Faked {
        assert!(
            std::path::Path::new(LIBFAKETIME).exists(),
            "libfaketime is installed (scripts/setup.sh installs Debian's faketime)"
        );
        let ports = [free_port(false), free_port(false)];
        let (port, admin_port) = (ports[0].port, ports[1].port);
        s.listen = format!("127.0.0.1:{port}").parse().unwrap();
        s.admin_listen = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let dir =
            std::env::temp_dir().join(format!("embedgate-step-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("embedgate.toml");
        std::fs::write(&config, toml::to_string(&s).unwrap()).unwrap();
        let log = dir.join("stderr");
        let faked = Faked {
            _gateway: Killed(
                Command::new(env!("CARGO_BIN_EXE_embedgate"))
                    .args(["serve", "--config", config.to_str().unwrap()])
                    .env("LD_PRELOAD", LIBFAKETIME)
                    .env("FAKETIME_TIMESTAMP_FILE", dir.join("faketime"))
                    .env("FAKETIME_NO_CACHE", "1")
                    // Only the wall clock: the monotonic clock is not what NTP steps.
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                    .env("EMBEDGATE_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap())
                    .spawn()
                    .expect("embedgate serve starts"),
            ),
            _ports: ports,
            base: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            dir,
            log,
        };
        faked.set_offset(offset);
        faked
    }

    /// Steps the gateway's wall clock to `offset` from the true time.
    fn set_offset(&self, offset: &str) {
        let mut f = std::fs::File::create(self.dir.join("faketime")).unwrap();
        writeln!(f, "{offset}").unwrap();
    }

    /// One GetDashboardEmbedUrl request for alice's sales dashboard, as tenant alpha.
    async fn embed(&self, http: &reqwest::Client) -> reqwest::Response {
        http.post(format!("{}/v1/embed-url/dashboard", self.base))
            .bearer_auth("alpha-key")
            .json(&dash("sales-2024", "alice"))
            .send()
            .await
            .unwrap()
    }

    /// Waits until the pool holds at least `urls` URLs; false after 30 s.
    async fn stocked(&self, http: &reqwest::Client, urls: u64) -> bool {
        eventually(Duration::from_secs(30), || async {
            let pooled = async {
                let state: serde_json::Value = http
                    .get(format!("{}/state", self.admin))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                state["pool"]["urls"].as_u64()
            }
            .await;
            pooled.unwrap_or(0) >= urls
        })
        .await
    }
}

impl Drop for Faked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_back_cannot_make_a_pooled_url_look_fresher() {
    let sim = spawn_sim();
    let mut s = gateway_settings(&sim.endpoint);
    s.pool.min_remaining_secs = MIN_REMAINING_SECS;
    s.tenants[0].warm = vec![warm(dash("sales-2024", "alice"), 4)];
    let gateway = Faked::start(s, "+60s");
    let http = http();
    // Stocked while the wall clock runs 60 s ahead.
    assert!(gateway.stocked(&http, 4).await, "the warm key was stocked");
    // The step back. The stocked URLs now carry dates 60 s in the wall clock's future; nobody
    // asks for them until they are past their 15 s of usable life (by the true clock), so a
    // gateway that believed the wall clock would still take them for fresh.
    gateway.set_offset("+0s");
    tokio::time::sleep(Duration::from_secs(25)).await;
    let started = Instant::now();
    let mut served = 0;
    for i in 0..12u32 {
        tokio::time::sleep_until((started + Duration::from_millis(250) * i).into()).await;
        let r = gateway.embed(&http).await;
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
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_found_ahead_ages_the_pooled_urls_by_as_much() {
    let sim = spawn_sim();
    let mut s = gateway_settings(&sim.endpoint);
    s.tenants[0].warm = vec![warm(dash("sales-2024", "alice"), 4)];
    let usable_secs = 300 - s.pool.min_remaining_secs;
    let gateway = Faked::start(s, "+0s");
    let http = http();
    assert!(gateway.stocked(&http, 4).await, "the warm key was stocked");
    let expired = || async {
        let text = get_text(&http, &format!("{}/metrics", gateway.admin)).await;
        metric_total(&text, "embedgate_urls_wasted_total", "reason=\"expired\"")
    };
    assert_eq!(expired().await, 0.0);
    // The wall clock jumps a usable life and ten seconds ahead, as a machine's that slept that
    // long shows it: every stocked URL is now past its usable life, and the gateway's purge
    // must count them expired instead of handing them out.
    gateway.set_offset(&format!("+{}s", usable_secs + 10));
    let aged = eventually(Duration::from_secs(10), || async { expired().await >= 4.0 }).await;
    assert!(
        aged,
        "the stocked URLs were taken for expired after the wall clock jumped ahead: {} counted",
        expired().await
    );
    // It goes on serving, from URLs fetched after the jump.
    assert_eq!(gateway.embed(&http).await.status(), 200);
    let log = std::fs::read_to_string(&gateway.log).unwrap();
    assert!(
        log.contains("the wall clock was found ahead of the gateway's clock"),
        "the catch-up is logged: {log}"
    );
    sim.stop().await;
}
