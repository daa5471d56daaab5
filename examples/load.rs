//! Open-loop load generator for `scripts/bench-scenario.sh`. Requests are sent at their scheduled instants
//! whatever the previous ones are doing, and latency is measured from the scheduled instant, so a
//! stalled server shows up in the percentiles instead of slowing the generator down.
//!
//! ```text
//! load scenario gateway <gateway-url>[,<gateway-url>...] <scenario.json> [<admin-url>[,...]]
//! load scenario direct <simulator-url> <scenario.json>
//!     the pool-efficiency scenario through the gateway, or straight to QuickSight (the simulator)
//!     with the AWS SDK and its default retries, as a portal without embedgate would. Given
//!     several gateway URLs (replicas of one fleet), the calls go to them in turn, as a load
//!     balancer without affinity spreads a portal's requests: a user's views land on any replica.
//!     Given the gateways' admin URLs, their metrics are read as each phase starts and at the
//!     end, so each phase reports the upstream calls, URLs fetched and URLs expired within it.
//!     With `CLIENT_TIMEOUT_MS` set, a portal with a short timeout: each view's call to the
//!     gateway is given up after that long and sent again, at most `CLIENT_RETRIES` (1) times
//! ```
//! Prints one JSON object on stdout.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_quicksight::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_quicksight::types::EmbeddingIdentityType;
use rand::SeedableRng;
use rand_distr::Distribution;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

const ACCOUNT: &str = "111122223333";

/// A scenario file: its `shape` picks the generator.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "shape", rename_all = "lowercase")]
enum Scenario {
    Zipf(Zipf),
    Sessions(Sessions),
}

/// Independent keys with Zipf popularity (see scripts/bench-scenario.sh for the defaults).
#[derive(Debug, Clone, Deserialize)]
struct Zipf {
    seed: u64,
    tenants: usize,
    keys: usize,
    /// Zipf exponent of key popularity.
    zipf_s: f64,
    /// Phases of Poisson arrivals: (requests per second, seconds).
    phases: Vec<(f64, f64)>,
    /// The phase index that is the burst (errors are counted separately for it).
    burst_phase: usize,
}

/// A portal's day and the morning after: every user logs in once "yesterday"; after a quiet
/// night most of them come back "today", most of those in a login storm, with new users among
/// them. A session opens the user's usual landing dashboard, then a few more with think times,
/// mostly along the tenant's usual paths. Public dashboards are viewed anonymously throughout,
/// with Zipf popularity. Some tenants hint each login's landing dashboard shortly before it.
#[derive(Debug, Clone, Deserialize)]
struct Sessions {
    seed: u64,
    tenants: usize,
    users_per_tenant: usize,
    dashboards_per_tenant: usize,
    yesterday_secs: f64,
    night_secs: f64,
    today_secs: f64,
    /// The storm's start, seconds into today, and its length.
    storm_at_secs: f64,
    storm_secs: f64,
    /// Share of yesterday's users who come back today, and of those who log in in the storm.
    return_fraction: f64,
    storm_share: f64,
    /// New users today, as a share of each tenant's users.
    new_user_fraction: f64,
    /// Mean dashboards opened per session (geometric), mean think time between them.
    views_mean: f64,
    think_secs: f64,
    /// Probability that the next dashboard is the tenant's usual next one, and that a session
    /// starts on the user's usual landing dashboard.
    follow: f64,
    same_landing: f64,
    /// Anonymous views per second over `public_dashboards` per tenant, Zipf(`zipf_s`).
    anonymous_rate: f64,
    public_dashboards: usize,
    zipf_s: f64,
    /// Share of tenants that hint a login's landing dashboard `hint_lead_secs` before it.
    hint_tenants: f64,
    hint_lead_secs: f64,
}

/// What an arrival asks.
#[derive(Debug, Clone, Copy)]
enum Call {
    /// GetDashboardEmbedUrl for a registered user.
    Registered {
        tenant: usize,
        user: usize,
        dashboard: usize,
    },
    /// GetDashboardEmbedUrl with IdentityType ANONYMOUS.
    Anonymous { tenant: usize, dashboard: usize },
    /// A hint for a registered user's dashboard (not a view).
    Hint {
        tenant: usize,
        user: usize,
        dashboard: usize,
    },
}

/// How an arrival came to be asked, which says whether any planner could have foreseen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A session's first view on the user's usual landing, for a user seen on an earlier day.
    ReturningLanding,
    /// A session's first view of a user with no earlier session (every user "yesterday", new
    /// users "today"), or on a landing picked at random.
    UnknownLanding,
    /// A landing announced by a hint.
    HintedLanding,
    /// The next view along the tenant's usual path.
    UsualNext,
    /// A next view picked at random.
    OtherNext,
    /// An anonymous view of a public dashboard.
    Anonymous,
    /// A view of an independent key with Zipf popularity.
    Zipf,
    /// A hint (not a view).
    Hint,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::ReturningLanding => "returning user's usual landing",
            Kind::UnknownLanding => "landing of a new user, or picked at random",
            Kind::HintedLanding => "hinted landing",
            Kind::UsualNext => "next along the usual path",
            Kind::OtherNext => "next picked at random",
            Kind::Anonymous => "anonymous public view",
            Kind::Zipf => "zipf",
            Kind::Hint => "hint",
        }
    }

    /// Whether the evidence before the view could name it: the user's own history, the tenant's
    /// usual paths, a hint, or a stream of requests. The rest (a user never seen, a dashboard
    /// picked at random) no planner can stock without stocking every dashboard for every user.
    fn foreseeable(self) -> bool {
        !matches!(self, Kind::UnknownLanding | Kind::OtherNext | Kind::Hint)
    }
}

/// One arrival: when (from the start), what, the phase it counts in, and how it came to be.
struct Arrival {
    at: Duration,
    call: Call,
    phase: usize,
    kind: Kind,
}

fn zipf_schedule(s: &Zipf) -> Vec<Arrival> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed);
    let zipf = rand_distr::Zipf::new(s.keys as f64, s.zipf_s).expect("valid zipf");
    let mut out = vec![];
    let mut start = 0.0;
    for (phase, &(rate, secs)) in s.phases.iter().enumerate() {
        let exp = rand_distr::Exp::new(rate).expect("positive rate");
        let mut t = start;
        loop {
            t += exp.sample(&mut rng);
            if t >= start + secs {
                break;
            }
            let key = zipf.sample(&mut rng) as usize - 1;
            // The simulator knows users and dashboards 0..1000: key q*1000 + r is user r on
            // dashboard (r + q) mod 1000 (key r < 1000: user r on dashboard r).
            out.push(Arrival {
                at: Duration::from_secs_f64(t),
                call: Call::Registered {
                    tenant: key % s.tenants,
                    user: key % 1000,
                    dashboard: (key % 1000 + key / 1000) % 1000,
                },
                phase,
                kind: Kind::Zipf,
            });
        }
        start += secs;
    }
    out
}

impl Sessions {
    /// Phase of an instant: 0 yesterday and the night, 1 today before the storm, 2 the storm,
    /// 3 after it.
    fn phase(&self, t: f64) -> usize {
        let today = self.yesterday_secs + self.night_secs;
        if t < today {
            0
        } else if t < today + self.storm_at_secs {
            1
        } else if t < today + self.storm_at_secs + self.storm_secs {
            2
        } else {
            3
        }
    }

    fn schedule(&self) -> Vec<Arrival> {
        use rand::Rng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        let d = self.dashboards_per_tenant;
        let new_users = (self.users_per_tenant as f64 * self.new_user_fraction).round() as usize;
        let per_tenant = self.users_per_tenant + new_users;
        let popular = rand_distr::Zipf::new(d as f64, 1.0).expect("valid zipf");
        // Each user's usual landing dashboard; each dashboard's usual next one.
        let landing: Vec<usize> = (0..self.tenants * per_tenant)
            .map(|_| popular.sample(&mut rng) as usize - 1)
            .collect();
        let next = |j: usize| (j * 7 + 3) % d;
        let think = rand_distr::Exp::new(1.0 / self.think_secs).expect("positive think time");
        let mut out = vec![];
        let session = |rng: &mut rand::rngs::StdRng,
                       out: &mut Vec<Arrival>,
                       t0: f64,
                       tenant: usize,
                       u: usize,
                       returning: bool| {
            let user = tenant * per_tenant + u;
            let mut j = if rng.random::<f64>() < self.same_landing {
                landing[user]
            } else {
                rng.random_range(0..d)
            };
            let hinted = tenant < (self.hint_tenants * self.tenants as f64).round() as usize;
            let mut kind = if hinted {
                Kind::HintedLanding
            } else if returning && j == landing[user] {
                Kind::ReturningLanding
            } else {
                Kind::UnknownLanding
            };
            if hinted {
                let at = (t0 - self.hint_lead_secs).max(0.0);
                out.push(Arrival {
                    at: Duration::from_secs_f64(at),
                    call: Call::Hint {
                        tenant,
                        user,
                        dashboard: tenant * d + j,
                    },
                    phase: self.phase(at),
                    kind: Kind::Hint,
                });
            }
            let mut t = t0;
            loop {
                out.push(Arrival {
                    at: Duration::from_secs_f64(t),
                    call: Call::Registered {
                        tenant,
                        user,
                        dashboard: tenant * d + j,
                    },
                    phase: self.phase(t),
                    kind,
                });
                if rng.random::<f64>() < 1.0 / self.views_mean {
                    break;
                }
                t += think.sample(rng);
                let usual = next(j);
                j = if rng.random::<f64>() < self.follow {
                    usual
                } else {
                    rng.random_range(0..d)
                };
                kind = if j == usual {
                    Kind::UsualNext
                } else {
                    Kind::OtherNext
                };
            }
        };
        let today = self.yesterday_secs + self.night_secs;
        for tenant in 0..self.tenants {
            for u in 0..per_tenant {
                if u < self.users_per_tenant {
                    let t0 = rng.random::<f64>() * self.yesterday_secs;
                    session(&mut rng, &mut out, t0, tenant, u, false);
                    if rng.random::<f64>() >= self.return_fraction {
                        continue;
                    }
                }
                let t0 = if rng.random::<f64>() < self.storm_share {
                    today + self.storm_at_secs + rng.random::<f64>() * self.storm_secs
                } else {
                    today + rng.random::<f64>() * self.today_secs
                };
                session(&mut rng, &mut out, t0, tenant, u, u < self.users_per_tenant);
            }
        }
        // Public dashboards, viewed anonymously all along.
        let public = self.tenants * self.public_dashboards;
        let zipf = rand_distr::Zipf::new(public as f64, self.zipf_s).expect("valid zipf");
        let exp = rand_distr::Exp::new(self.anonymous_rate).expect("positive rate");
        let end = today + self.today_secs;
        let mut t = 0.0;
        loop {
            t += exp.sample(&mut rng);
            if t >= end {
                break;
            }
            if (self.yesterday_secs..today).contains(&t) {
                continue; // the night is quiet
            }
            let p = zipf.sample(&mut rng) as usize - 1;
            let tenant = p % self.tenants;
            out.push(Arrival {
                at: Duration::from_secs_f64(t),
                call: Call::Anonymous {
                    tenant,
                    dashboard: tenant * d + p / self.tenants,
                },
                phase: self.phase(t),
                kind: Kind::Anonymous,
            });
        }
        out.sort_by_key(|a| a.at);
        out
    }
}

fn body(call: Call) -> serde_json::Value {
    match call {
        Call::Registered {
            user, dashboard, ..
        }
        | Call::Hint {
            user, dashboard, ..
        } => json!({
            "DashboardId": format!("d-{dashboard:04}"),
            "IdentityType": "QUICKSIGHT",
            "UserArn": format!("arn:aws:quicksight:us-east-1:{ACCOUNT}:user/default/user-{user:04}"),
        }),
        Call::Anonymous { dashboard, .. } => json!({
            "DashboardId": format!("d-{dashboard:04}"),
            "IdentityType": "ANONYMOUS",
        }),
    }
}

fn tenant_of(call: Call) -> usize {
    match call {
        Call::Registered { tenant, .. }
        | Call::Anonymous { tenant, .. }
        | Call::Hint { tenant, .. } => tenant,
    }
}

/// What one request ended as.
struct Done {
    latency: Duration,
    /// `ok`, or an error class.
    outcome: String,
    phase: usize,
    pooled: bool,
    /// The key asked for (a hash of the call), for counting distinct keys.
    key: u64,
    kind: Kind,
}

/// The outcome of a hint (not a view), and of a hint the gateway did not take.
const HINT: &str = "hint";
const HINT_FAILED: &str = "hint-failed";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

/// Latencies of the successful requests among `done`, milliseconds, sorted.
fn latencies<'a>(done: impl Iterator<Item = &'a Done>) -> Vec<f64> {
    let mut lat: Vec<f64> = done
        .filter(|d| d.outcome == "ok")
        .map(|d| d.latency.as_secs_f64() * 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    lat
}

/// Views and how many came from the pool, by how each view came to be. A planner that stocked
/// exactly the foreseeable views, each in time, would serve all of those and none of the rest.
fn by_kind<'a>(done: impl Iterator<Item = &'a Done>) -> serde_json::Value {
    let mut kinds = std::collections::BTreeMap::<Kind, (u64, u64)>::new();
    for d in done {
        let e = kinds.entry(d.kind).or_default();
        e.0 += 1;
        e.1 += u64::from(d.pooled);
    }
    kinds
        .into_iter()
        .map(|(k, (requests, from_pool))| {
            let v = json!({"requests": requests, "from_pool": from_pool, "foreseeable": k.foreseeable()});
            (k.name().to_string(), v)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn summarize(all: &[Done], elapsed: Duration, burst_phase: Option<usize>) -> serde_json::Value {
    // Hints are not views: they are sent, and left out of every figure.
    let done: Vec<&Done> = all.iter().filter(|d| d.outcome != HINT).collect();
    let hints_failed = all.iter().filter(|d| d.outcome == HINT_FAILED).count();
    let done: Vec<&Done> = done
        .into_iter()
        .filter(|d| d.outcome != HINT_FAILED)
        .collect();
    let lat = latencies(done.iter().copied());
    let mut errors = std::collections::BTreeMap::<String, u64>::new();
    let mut burst_errors = std::collections::BTreeMap::<String, u64>::new();
    for d in done.iter().filter(|d| d.outcome != "ok") {
        *errors.entry(d.outcome.clone()).or_default() += 1;
        if Some(d.phase) == burst_phase {
            *burst_errors.entry(d.outcome.clone()).or_default() += 1;
        }
    }
    let phases = done.iter().map(|d| d.phase).max().map_or(0, |p| p + 1);
    let by_phase: Vec<serde_json::Value> = (0..phases)
        .map(|p| {
            let of: Vec<&Done> = done.iter().copied().filter(|d| d.phase == p).collect();
            let lat = latencies(of.iter().copied());
            let mut errors = std::collections::BTreeMap::<String, u64>::new();
            for d in of.iter().filter(|d| d.outcome != "ok") {
                *errors.entry(d.outcome.clone()).or_default() += 1;
            }
            json!({
                "requests": of.len(),
                "ok": of.iter().filter(|d| d.outcome == "ok").count(),
                "from_pool": of.iter().filter(|d| d.pooled).count(),
                "by_kind": by_kind(of.iter().copied()),
                "foreseeable": of.iter().filter(|d| d.kind.foreseeable()).count(),
                "errors": errors,
                "p50_ms": percentile(&lat, 50.0),
                "p99_ms": percentile(&lat, 99.0),
            })
        })
        .collect();
    json!({
        "phases": by_phase,
        "by_kind": by_kind(done.iter().copied()),
        "foreseeable": done.iter().filter(|d| d.kind.foreseeable()).count(),
        "hints_sent": all.len() - done.len(),
        "hints_failed": hints_failed,
        "requests": done.len(),
        "ok": lat.len(),
        "from_pool": done.iter().filter(|d| d.pooled).count(),
        "errors": errors,
        "burst_errors": burst_errors,
        "achieved_rps": done.len() as f64 / elapsed.as_secs_f64(),
        "distinct_keys": done.iter().map(|d| d.key).collect::<std::collections::HashSet<_>>().len(),
        "p50_ms": percentile(&lat, 50.0),
        "p99_ms": percentile(&lat, 99.0),
        "p999_ms": percentile(&lat, 99.9),
    })
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// An impatient portal (`CLIENT_TIMEOUT_MS`, unset: none): a view's call to the gateway is given
/// up after that long and sent again, at most `CLIENT_RETRIES` (1) times, as a portal's backend
/// with a short timeout and a retry does; the view's latency runs from its first send.
struct Impatience {
    timeout: Option<Duration>,
    retries: u32,
    /// Calls given up and sent again, over the run.
    resent: std::sync::atomic::AtomicU64,
}

static IMPATIENCE: std::sync::LazyLock<Impatience> = std::sync::LazyLock::new(|| {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Impatience {
        timeout: var("CLIENT_TIMEOUT_MS")
            .map(|v| Duration::from_millis(v.parse().expect("CLIENT_TIMEOUT_MS: milliseconds"))),
        retries: var("CLIENT_RETRIES").map_or(1, |v| v.parse().expect("CLIENT_RETRIES: a count")),
        resent: std::sync::atomic::AtomicU64::new(0),
    }
});

/// One call to the gateway: a view (`/v1/embed-url/dashboard`) or a hint (`/v1/hints`).
async fn gateway_call(http: &reqwest::Client, base: &str, call: Call) -> (String, bool) {
    let api_key = format!("tenant-{}-key", tenant_of(call));
    let (url, body) = match call {
        Call::Hint { .. } => {
            let mut hint = body(call);
            hint["Operation"] = json!("GetDashboardEmbedUrl");
            (format!("{base}/v1/hints"), json!({"Requests": [hint]}))
        }
        _ => (format!("{base}/v1/embed-url/dashboard"), body(call)),
    };
    let impatience = &*IMPATIENCE;
    let mut tries = 0;
    let r = loop {
        let mut send = http.post(&url).bearer_auth(&api_key).json(&body);
        if let (Some(t), false) = (impatience.timeout, matches!(call, Call::Hint { .. })) {
            send = send.timeout(t);
        }
        match send.send().await {
            Ok(r) => break r,
            Err(e) if e.is_timeout() && tries < impatience.retries => {
                tries += 1;
                impatience
                    .resent
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) if e.is_timeout() => return ("client_timeout".into(), false),
            Err(e) => return (format!("transport: {e}"), false),
        }
    };
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    match call {
        Call::Hint { .. } if status.is_success() && v["Accepted"] == 1 => (HINT.into(), false),
        Call::Hint { .. } => (HINT_FAILED.into(), false),
        _ if status.is_success() => ("ok".into(), v["Source"] == "pool"),
        _ => (v["code"].as_str().unwrap_or("unknown").to_string(), false),
    }
}

/// One call straight to QuickSight (the simulator) through the AWS SDK, as a portal without
/// embedgate would make it; hints have no counterpart.
async fn direct_call(client: &aws_sdk_quicksight::Client, call: Call) -> (String, bool) {
    let (dashboard, user) = match call {
        Call::Hint { .. } => return (HINT.into(), false),
        Call::Registered {
            dashboard, user, ..
        } => (dashboard, Some(user)),
        Call::Anonymous { dashboard, .. } => (dashboard, None),
    };
    let mut r = client
        .get_dashboard_embed_url()
        .aws_account_id(ACCOUNT)
        .dashboard_id(format!("d-{dashboard:04}"));
    r = match user {
        Some(user) => r
            .identity_type(EmbeddingIdentityType::Quicksight)
            .user_arn(format!(
                "arn:aws:quicksight:us-east-1:{ACCOUNT}:user/default/user-{user:04}"
            )),
        None => r.identity_type(EmbeddingIdentityType::Anonymous),
    };
    match r.send().await {
        Ok(_) => ("ok".to_string(), false),
        Err(e) => {
            use aws_sdk_quicksight::error::ProvideErrorMetadata;
            (e.code().unwrap_or("transport").to_string(), false)
        }
    }
}

/// A key's identity for counting distinct keys.
fn key_of(call: Call) -> u64 {
    match call {
        Call::Registered {
            user, dashboard, ..
        }
        | Call::Hint {
            user, dashboard, ..
        } => ((user as u64) << 32) | dashboard as u64,
        Call::Anonymous { dashboard, .. } => (1 << 63) | dashboard as u64,
    }
}

/// Runs `arrivals` open-loop; `call(c)` performs one.
async fn run_open_loop<F, Fut>(
    arrivals: &[Arrival],
    start: Instant,
    call: F,
) -> (Vec<Done>, Duration)
where
    F: Fn(Call) -> Fut,
    Fut: std::future::Future<Output = (String, bool)> + Send + 'static,
{
    let mut tasks = Vec::with_capacity(arrivals.len());
    for a in arrivals {
        let due = start + a.at;
        tokio::time::sleep_until(due).await;
        let fut = call(a.call);
        let (phase, key, kind) = (a.phase, key_of(a.call), a.kind);
        tasks.push(tokio::spawn(async move {
            let (outcome, pooled) = fut.await;
            Done {
                latency: due.elapsed(),
                outcome,
                phase,
                pooled,
                key,
                kind,
            }
        }));
    }
    let mut done = Vec::with_capacity(tasks.len());
    for t in tasks {
        done.push(t.await.expect("request task"));
    }
    (done, start.elapsed())
}

/// The fleet's counters a phase is judged by, summed over the replicas' `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    upstream_calls: f64,
    urls_fetched: f64,
    urls_expired: f64,
}

/// The sum of the samples of counter `name` in Prometheus text, over the samples whose labels
/// include `label` (`k="v"`) when given.
fn counter(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let wanted = label.is_none_or(|l| labels.split(',').any(|kv| kv == l));
            wanted.then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Reads every replica's metrics now.
async fn scrape(http: &reqwest::Client, admins: &[String]) -> Counters {
    let mut c = Counters::default();
    for a in admins {
        let read = async { http.get(format!("{a}/metrics")).send().await?.text().await };
        let text = read
            .await
            .unwrap_or_else(|e| panic!("cannot read {a}/metrics: {e}"));
        c.upstream_calls += counter(&text, "embedgate_upstream_calls_total", None);
        c.urls_fetched += counter(&text, "embedgate_urls_fetched_total", None);
        c.urls_expired += counter(
            &text,
            "embedgate_urls_wasted_total",
            Some(r#"reason="expired""#),
        );
    }
    c
}

/// Reads the fleet's counters as each phase after the first starts (`starts`, from `start`);
/// the caller adds the readings at the start and the end.
async fn scrape_at_phase_starts(
    http: reqwest::Client,
    admins: Vec<String>,
    starts: Vec<Duration>,
    start: Instant,
) -> Vec<Counters> {
    let mut out = vec![];
    for at in starts {
        tokio::time::sleep_until(start + at).await;
        out.push(scrape(&http, &admins).await);
    }
    out
}

async fn scenario(args: &[String]) -> serde_json::Value {
    let (mode, url, file, admins) = match args {
        [mode, url, file] => (mode, url, file, vec![]),
        [mode, url, file, admins] if mode == "gateway" => (
            mode,
            url,
            file,
            admins.split(',').map(String::from).collect::<Vec<_>>(),
        ),
        _ => panic!("scenario gateway|direct <url>[,<url>...] <scenario.json> [<admin-url>[,...]]"),
    };
    let s: Scenario = serde_json::from_str(&std::fs::read_to_string(file).expect("scenario file"))
        .expect("scenario JSON");
    let (plan, burst_phase) = match &s {
        Scenario::Zipf(z) => (zipf_schedule(z), z.burst_phase),
        Scenario::Sessions(x) => (x.schedule(), 2),
    };
    let starts = phase_starts(&plan);
    // The fleet's counters at each phase's start and at the end, when its metrics are read.
    let mut counters: Vec<Counters> = vec![];
    let (done, elapsed) = match mode.as_str() {
        "gateway" => {
            let http = http_client();
            let bases: Vec<Arc<str>> = url.split(',').map(Into::into).collect();
            let turn = std::sync::atomic::AtomicUsize::new(0);
            let first = if admins.is_empty() {
                None
            } else {
                Some(scrape(&http, &admins).await)
            };
            let start = Instant::now();
            let scraper = first.map(|_| {
                tokio::spawn(scrape_at_phase_starts(
                    http.clone(),
                    admins.clone(),
                    starts.clone(),
                    start,
                ))
            });
            let run = run_open_loop(&plan, start, |c| {
                let i = turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (http, base) = (http.clone(), bases[i % bases.len()].clone());
                async move { gateway_call(&http, &base, c).await }
            })
            .await;
            if let (Some(first), Some(scraper)) = (first, scraper) {
                let mut readings = vec![first];
                readings.extend(scraper.await.expect("metrics reader"));
                readings.push(scrape(&http, &admins).await);
                counters = readings;
            }
            run
        }
        "direct" => {
            // A portal calling QuickSight itself: the SDK with its default (standard) retries.
            let conf = aws_sdk_quicksight::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new(
                    embedgate::sim::DEFAULT_ACCESS_KEY_ID,
                    embedgate::sim::DEFAULT_SECRET_ACCESS_KEY,
                    None,
                    None,
                    "bench",
                ))
                .endpoint_url(url)
                .build();
            let client = aws_sdk_quicksight::Client::from_conf(conf);
            run_open_loop(&plan, Instant::now(), |c| {
                let client = client.clone();
                async move { direct_call(&client, c).await }
            })
            .await
        }
        other => panic!("unknown scenario mode {other}"),
    };
    let mut v = summarize(&done, elapsed, Some(burst_phase));
    v["mode"] = json!(mode);
    if let Some(t) = IMPATIENCE.timeout.filter(|_| mode == "gateway") {
        v["client_timeout_ms"] = json!(t.as_millis() as u64);
        v["client_resent"] = json!(IMPATIENCE.resent.load(std::sync::atomic::Ordering::Relaxed));
    }
    // Each phase's length: from its start to the next one's, the last to the end of the run
    // (when the fleet's counters were last read), so its calls read as a rate against the budget.
    let mut bounds = vec![Duration::ZERO];
    bounds.extend(starts);
    bounds.push(elapsed.max(bounds.last().copied().unwrap_or_default()));
    if let Some(phases) = v["phases"].as_array_mut() {
        for (i, (p, (from, to))) in phases
            .iter_mut()
            .zip(counters.iter().zip(counters.iter().skip(1)))
            .enumerate()
        {
            if let (Some(a), Some(b)) = (bounds.get(i), bounds.get(i + 1)) {
                p["secs"] = json!(b.saturating_sub(*a).as_secs_f64());
            }
            p["upstream_calls"] = json!(to.upstream_calls - from.upstream_calls);
            p["urls_fetched"] = json!(to.urls_fetched - from.urls_fetched);
            p["urls_expired"] = json!(to.urls_expired - from.urls_expired);
        }
    }
    v
}

/// When each phase after the first starts: its earliest arrival (phases follow one another; one
/// without arrivals starts and ends with the one before it).
fn phase_starts(plan: &[Arrival]) -> Vec<Duration> {
    let phases = plan.iter().map(|a| a.phase).max().map_or(0, |p| p + 1);
    let mut starts: Vec<Duration> = vec![];
    for p in 1..phases {
        let earliest = plan.iter().filter(|a| a.phase == p).map(|a| a.at).min();
        let before = starts.last().copied().unwrap_or_default();
        starts.push(earliest.unwrap_or(before));
    }
    starts
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let out = runtime.block_on(async {
        match args.first().map(String::as_str) {
            Some("scenario") => scenario(&args[1..]).await,
            _ => panic!("usage: load scenario gateway|direct <url> <scenario.json>"),
        }
    });
    println!("{out}");
}
