//! Open-loop load generator for `scripts/bench-scenario.sh`. Requests are sent at their scheduled instants
//! whatever the previous ones are doing, and latency is measured from the scheduled instant, so a
//! stalled server shows up in the percentiles instead of slowing the generator down.
//!
//! ```text
//! load scenario gateway <gateway-url> <scenario.json>
//! load scenario direct <simulator-url> <scenario.json>
//!     the pool-efficiency scenario through the gateway, or straight to QuickSight (the simulator)
//!     with the AWS SDK and its default retries, as a portal without embedgate would
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

/// The pool-efficiency scenario (see scripts/bench.sh for the defaults).
#[derive(Debug, Clone, Deserialize)]
struct Scenario {
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

/// One arrival: when (from the start), which key.
struct Arrival {
    at: Duration,
    key: usize,
    phase: usize,
}

fn schedule(s: &Scenario) -> Vec<Arrival> {
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
            out.push(Arrival {
                at: Duration::from_secs_f64(t),
                key: zipf.sample(&mut rng) as usize - 1,
                phase,
            });
        }
        start += secs;
    }
    out
}

fn body(key: usize) -> serde_json::Value {
    json!({
        "DashboardId": format!("d-{key:04}"),
        "IdentityType": "QUICKSIGHT",
        "UserArn": format!("arn:aws:quicksight:us-east-1:{ACCOUNT}:user/default/user-{key:04}"),
    })
}

/// What one request ended as.
struct Done {
    latency: Duration,
    /// `ok`, or an error class.
    outcome: String,
    phase: usize,
    pooled: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn summarize(done: &[Done], elapsed: Duration, burst_phase: Option<usize>) -> serde_json::Value {
    let mut lat: Vec<f64> = done
        .iter()
        .filter(|d| d.outcome == "ok")
        .map(|d| d.latency.as_secs_f64() * 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
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
            let of: Vec<&Done> = done.iter().filter(|d| d.phase == p).collect();
            json!({
                "requests": of.len(),
                "ok": of.iter().filter(|d| d.outcome == "ok").count(),
                "from_pool": of.iter().filter(|d| d.pooled).count(),
            })
        })
        .collect();
    json!({
        "phases": by_phase,
        "requests": done.len(),
        "ok": lat.len(),
        "from_pool": done.iter().filter(|d| d.pooled).count(),
        "errors": errors,
        "burst_errors": burst_errors,
        "achieved_rps": done.len() as f64 / elapsed.as_secs_f64(),
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

async fn gateway_call(
    http: &reqwest::Client,
    url: &str,
    api_key: &str,
    body: &serde_json::Value,
) -> (String, bool) {
    let r = match http.post(url).bearer_auth(api_key).json(body).send().await {
        Ok(r) => r,
        Err(e) => return (format!("transport: {e}"), false),
    };
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    if status.is_success() {
        ("ok".into(), v["Source"] == "pool")
    } else {
        (v["code"].as_str().unwrap_or("unknown").to_string(), false)
    }
}

/// Runs `arrivals` open-loop; `call(i)` performs arrival `i`.
async fn run_open_loop<F, Fut>(arrivals: &[(Duration, usize)], call: F) -> (Vec<Done>, Duration)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (String, bool)> + Send + 'static,
{
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(arrivals.len());
    for &(at, phase) in arrivals {
        let due = start + at;
        tokio::time::sleep_until(due).await;
        let fut = call(tasks.len());
        tasks.push(tokio::spawn(async move {
            let (outcome, pooled) = fut.await;
            Done {
                latency: due.elapsed(),
                outcome,
                phase,
                pooled,
            }
        }));
    }
    let mut done = Vec::with_capacity(tasks.len());
    for t in tasks {
        done.push(t.await.expect("request task"));
    }
    (done, start.elapsed())
}

async fn scenario(args: &[String]) -> serde_json::Value {
    let [mode, url, file] = args else {
        panic!("scenario gateway|direct <url> <scenario.json>");
    };
    let s: Scenario = serde_json::from_str(&std::fs::read_to_string(file).expect("scenario file"))
        .expect("scenario JSON");
    let plan = schedule(&s);
    let arrivals: Vec<(Duration, usize)> = plan.iter().map(|a| (a.at, a.phase)).collect();
    let keys: Arc<Vec<usize>> = Arc::new(plan.iter().map(|a| a.key).collect());
    let (done, elapsed) = match mode.as_str() {
        "gateway" => {
            let http = http_client();
            let url = Arc::new(format!("{url}/v1/embed-url/dashboard"));
            let tenants = s.tenants;
            run_open_loop(&arrivals, |i| {
                let (http, url, keys) = (http.clone(), url.clone(), keys.clone());
                async move {
                    let key = keys[i];
                    let api_key = format!("tenant-{}-key", key % tenants);
                    gateway_call(&http, &url, &api_key, &body(key)).await
                }
            })
            .await
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
            run_open_loop(&arrivals, |i| {
                let (client, keys) = (client.clone(), keys.clone());
                async move {
                    let key = keys[i];
                    let r = client
                        .get_dashboard_embed_url()
                        .aws_account_id(ACCOUNT)
                        .dashboard_id(format!("d-{key:04}"))
                        .identity_type(EmbeddingIdentityType::Quicksight)
                        .user_arn(format!(
                            "arn:aws:quicksight:us-east-1:{ACCOUNT}:user/default/user-{key:04}"
                        ))
                        .send()
                        .await;
                    match r {
                        Ok(_) => ("ok".to_string(), false),
                        Err(e) => {
                            use aws_sdk_quicksight::error::ProvideErrorMetadata;
                            let code = e.code().unwrap_or("transport").to_string();
                            (code, false)
                        }
                    }
                }
            })
            .await
        }
        other => panic!("unknown scenario mode {other}"),
    };
    let mut v = summarize(&done, elapsed, Some(s.burst_phase));
    v["mode"] = json!(mode);
    // Each key's first request cannot be a pool hit: the floor of the miss count.
    v["distinct_keys"] = json!(plan
        .iter()
        .map(|a| a.key)
        .collect::<std::collections::HashSet<_>>()
        .len());
    v
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
