//! The fleet harness: replicas in front of one simulator, started like a single gateway
//! ([`super::start_replicas`]), with clients that spread requests over them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use embedgate::clock::Clock;
use embedgate::config::Settings;
use embedgate::sim::SimServer;
use embedgate::startup::Application;

use super::*;

/// Replicas in front of one simulator, all with the same settings.
pub struct TestFleet {
    pub sim: SimServer,
    pub replicas: Vec<Application>,
    http: reqwest::Client,
    /// When the replicas started: no URL handed out since is older than this.
    pub started: Instant,
}

/// One request's outcome as a client saw it.
#[derive(Clone)]
pub struct Outcome {
    pub status: u16,
    pub body: Value,
    pub elapsed: Duration,
    /// The replica that answered.
    pub replica: usize,
}

pub async fn spawn_fleet(n: usize, customize: impl Fn(&mut Settings)) -> TestFleet {
    spawn_fleet_with_clocks(vec![Clock::System; n], customize).await
}

/// One replica per clock (a replica whose clock is off gets a skewed one).
pub async fn spawn_fleet_with_clocks(
    clocks: Vec<Clock>,
    customize: impl Fn(&mut Settings),
) -> TestFleet {
    let sim = spawn_sim();
    let replicas = start_replicas(&sim, clocks, customize).await;
    TestFleet {
        sim,
        replicas,
        http: http(),
        started: Instant::now(),
    }
}

pub fn on_redis(url: String) -> impl Fn(&mut Settings) {
    move |s: &mut Settings| s.redis.url = Some(url.clone())
}

/// Settings for the primary the Sentinels at `urls` name as `master` (`redis.sentinel_master`).
pub fn on_sentinels(urls: Vec<String>, master: &str) -> impl Fn(&mut Settings) {
    let master = master.to_string();
    move |s: &mut Settings| {
        s.redis.sentinel_urls = urls.clone();
        s.redis.sentinel_master = Some(master.clone());
    }
}

impl TestFleet {
    fn base(&self, i: usize) -> String {
        format!("http://{}", self.replicas[i % self.replicas.len()].addr)
    }

    fn admin(&self, i: usize) -> String {
        format!("http://{}", self.replicas[i].admin_addr)
    }

    /// One GetDashboardEmbedUrl request as `tenant` to replica `i` (mod the fleet size).
    pub async fn embed(&self, i: usize, tenant: &str, body: &Value) -> Outcome {
        self.embed_within(i, tenant, body, None)
            .await
            .expect("replica answers")
    }

    /// [`TestFleet::embed`], given up (its connection closed, as a client at its timeout does)
    /// when `patience` passes first: `None` then.
    pub async fn embed_within(
        &self,
        i: usize,
        tenant: &str,
        body: &Value,
        patience: Option<Duration>,
    ) -> Option<Outcome> {
        let started = Instant::now();
        let mut request = self
            .http
            .post(format!("{}/v1/embed-url/dashboard", self.base(i)))
            .bearer_auth(format!("{tenant}-key"))
            .json(body);
        if let Some(p) = patience {
            request = request.timeout(p);
        }
        let answer = async {
            let r = request.send().await?;
            let status = r.status().as_u16();
            Ok::<_, reqwest::Error>((status, r.json::<Value>().await?))
        };
        let (status, body) = match answer.await {
            Ok(answer) => answer,
            Err(e) if patience.is_some() && e.is_timeout() => return None,
            Err(e) => panic!("replica answers: {e}"),
        };
        Some(Outcome {
            status,
            body,
            elapsed: started.elapsed(),
            replica: i % self.replicas.len(),
        })
    }

    /// `total` requests over `keys`, `clients` at a time, spread round-robin over the replicas.
    pub async fn drive(
        self: &Arc<Self>,
        total: usize,
        clients: usize,
        keys: &[Value],
    ) -> Vec<Outcome> {
        self.drive_with(total, clients, keys, |_| None)
            .await
            .into_iter()
            .map(|o| o.expect("a patient request is answered"))
            .collect()
    }

    /// [`TestFleet::drive`], with every `every`th request given up after 0–49 ms (`None` in its
    /// place), as a portal's backend gives up at its timeout: while the request waits for its
    /// Redis call, for a prefetch or QuickSight, or as its answer is written.
    pub async fn drive_giving_up(
        self: &Arc<Self>,
        total: usize,
        clients: usize,
        keys: &[Value],
        every: usize,
    ) -> Vec<Option<Outcome>> {
        self.drive_with(total, clients, keys, |i| {
            (i % every == 0).then(|| Duration::from_millis((i / every % 50) as u64))
        })
        .await
    }

    /// [`TestFleet::drive`], the `i`th request given up when `patience(i)` passes (`None`: never;
    /// `None` in its place when it was given up).
    async fn drive_with(
        self: &Arc<Self>,
        total: usize,
        clients: usize,
        keys: &[Value],
        patience: impl Fn(usize) -> Option<Duration>,
    ) -> Vec<Option<Outcome>> {
        futures::stream::iter(0..total)
            .map(|i| {
                let fleet = self.clone();
                let body = keys[i % keys.len()].clone();
                let patience = patience(i);
                async move { fleet.embed_within(i, "alpha", &body, patience).await }
            })
            .buffer_unordered(clients)
            .collect()
            .await
    }

    /// Requests as `alpha` for `run`, `clients` at a time, spread round-robin over the
    /// replicas, the `i`th with `body(i)`.
    pub async fn drive_for(
        self: &Arc<Self>,
        run: Duration,
        clients: usize,
        body: impl Fn(usize) -> Value,
    ) -> Vec<Outcome> {
        let started = Instant::now();
        futures::stream::iter(0..)
            .take_while(|_| futures::future::ready(started.elapsed() < run))
            .map(|i| {
                let fleet = self.clone();
                let body = body(i);
                async move { fleet.embed(i, "alpha", &body).await }
            })
            .buffer_unordered(clients)
            .collect()
            .await
    }

    async fn get_json(&self, url: String) -> Value {
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until every replica reports `ready` (rejoined the fleet), for at most `within`.
    pub async fn all_ready(&self, within: Duration) {
        let ready = eventually(within, || async {
            for i in 0..self.replicas.len() {
                if self.readiness(i).await != "ready" {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(ready, "the replicas rejoined without a restart");
    }

    pub async fn readiness_json(&self, i: usize) -> Value {
        self.get_json(format!("{}/readyz", self.base(i))).await
    }

    pub async fn readiness(&self, i: usize) -> String {
        let v = self.get_json(format!("{}/readyz", self.base(i))).await;
        v["status"].as_str().unwrap_or_default().to_string()
    }

    pub async fn metric_sum(&self, sample: &str) -> f64 {
        let mut sum = 0.0;
        for i in 0..self.replicas.len() {
            sum += self.metric(i, sample).await;
        }
        sum
    }

    /// The sum over the replicas of `name`'s samples carrying `label` (see [`metric_total`]).
    pub async fn metric_total(&self, name: &str, label: &str) -> f64 {
        let mut sum = 0.0;
        for i in 0..self.replicas.len() {
            let text = get_text(&self.http, &format!("{}/metrics", self.admin(i))).await;
            sum += metric_total(&text, name, label);
        }
        sum
    }

    /// One replica's value of `sample`.
    pub async fn metric(&self, i: usize, sample: &str) -> f64 {
        let text = get_text(&self.http, &format!("{}/metrics", self.admin(i))).await;
        metric(&text, sample)
    }

    /// Whether replica `i`'s `sample` reaches `at_least` within 20 s.
    pub async fn metric_reaches(&self, i: usize, sample: &str, at_least: f64) -> bool {
        eventually(Duration::from_secs(20), || async {
            self.metric(i, sample).await >= at_least
        })
        .await
    }

    /// Opens every URL at the simulator once; returns the statuses.
    pub async fn redeem(&self, urls: &[String]) -> Vec<u16> {
        futures::stream::iter(urls.to_vec())
            .map(|u| {
                let http = self.http.clone();
                async move { http.get(&u).send().await.unwrap().status().as_u16() }
            })
            .buffer_unordered(64)
            .collect()
            .await
    }

    pub async fn stop(self) {
        for r in self.replicas {
            r.stop().await;
        }
        self.sim.stop().await;
    }
}

pub fn keys() -> Vec<Value> {
    vec![
        dash("sales-2024", "alice"),
        dash("sales-2024", "bob"),
        dash("finance", "alice"),
        dash("ops-overview", "carol"),
    ]
}

/// Settings that let the exactly-once runs go fast: a generous budget and prefetch concurrency,
/// and a Redis timeout no busy test machine reaches (these tests are not about degraded mode).
pub fn roomy(s: &mut Settings) {
    s.redis.timeout_ms = 2_000;
    s.upstream.rate_per_sec = 5000.0;
    s.upstream.burst = 500;
    s.upstream.max_concurrency = 128;
    s.refill.concurrency = 64;
}

/// Every answer is a 200 with a distinct URL, and each URL opens exactly once at the simulator.
pub async fn assert_exactly_once(fleet: &TestFleet, outcomes: &[Outcome]) -> Vec<String> {
    let mut urls = vec![];
    for o in outcomes {
        assert_eq!(o.status, 200, "{}", o.body);
        urls.push(o.body["EmbedUrl"].as_str().unwrap().to_string());
    }
    let distinct: HashSet<&String> = urls.iter().collect();
    assert_eq!(distinct.len(), urls.len(), "every returned URL is distinct");
    let statuses = fleet.redeem(&urls).await;
    assert!(statuses.iter().all(|s| *s == 200), "every URL opens once");
    let ledger = fleet.sim.sim.ledger();
    assert_eq!(ledger.redeemed, urls.len() as u64);
    assert_eq!(
        (ledger.double_redemptions, ledger.late_redemptions),
        (0, 0),
        "no URL opened twice or late"
    );
    // Each URL had min_remaining_secs left when it was handed out, at most this long ago.
    let promised = fleet.replicas[0].gateway.settings().pool.min_remaining_secs * 1000;
    let since = fleet.started.elapsed().as_millis() as u64;
    let least = ledger.min_validity_left_ms.unwrap_or(u64::MAX);
    assert!(
        least.saturating_add(since) >= promised,
        "a URL was handed out with less than min_remaining_secs left: {least} ms left at opening, {since} ms into the run"
    );
    urls
}
