//! Micro-benchmarks of the hot path's parts. Each reports against a baseline measured in the same
//! run where one exists (the pool against a naive `Mutex<HashMap<_, VecDeque<_>>>`).
//!
//! `cargo bench --bench micro` (criterion; HTML report under target/criterion).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use embedgate::clock::Clock;
use embedgate::config::{PolicySettings, PoolSettings, TenantSettings};
use embedgate::limiter::InboundLimiter;
use embedgate::metrics::{Fetch, Metrics};
use embedgate::model::{parse_request, AnonymousEmbedRequest, EmbedRequest, Operation};
use embedgate::pool::{pool_key, Pool, PoolKey, PooledUrl};
use embedgate::tenant::{hash_key, Tenants};
use parking_lot::Mutex;

const KEYS: usize = 8;

fn keys() -> Vec<PoolKey> {
    (0..KEYS)
        .map(|i| {
            let req = anonymous(&format!("d-{i:04}"));
            pool_key("bench", "us-east-1", &req)
        })
        .collect()
}

fn anonymous(dashboard: &str) -> EmbedRequest {
    let body = serde_json::json!({
        "AwsAccountId": "111122223333",
        "Namespace": "default",
        "SessionTags": [{"Key": "tenant", "Value": "acme"}, {"Key": "region", "Value": "emea"}, {"Key": "team", "Value": "sales"}],
        "AuthorizedResourceArns": [format!("arn:aws:quicksight:us-east-1:111122223333:dashboard/{dashboard}")],
        "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": dashboard}},
        "AllowedDomains": ["https://b.example.com", "https://a.example.com"],
    });
    EmbedRequest::Anonymous(serde_json::from_value::<AnonymousEmbedRequest>(body).unwrap())
}

/// A URL of realistic size (~500 bytes).
fn url(i: usize) -> String {
    format!("http://127.0.0.1:4599/embed/{i:032x}/dashboards/sales-2024?code=AYABe{}&identityprovider=quicksight&isauthcode=true", "x".repeat(400))
}

/// The naive baseline: one global lock around a map of queues.
#[derive(Default)]
struct Naive(Mutex<HashMap<PoolKey, VecDeque<String>>>);

impl Naive {
    fn put(&self, k: &PoolKey, u: String) {
        self.0.lock().entry(k.clone()).or_default().push_back(u);
    }
    fn take(&self, k: &PoolKey) -> Option<String> {
        self.0.lock().get_mut(k).and_then(VecDeque::pop_front)
    }
}

/// Runs `iters` put+take pairs split over `threads` threads; returns the wall time.
fn contended(
    threads: usize,
    iters: u64,
    op: impl Fn(usize, u64) + Send + Sync + 'static,
) -> Duration {
    let op = Arc::new(op);
    let per = iters.div_ceil(threads as u64);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let op = op.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    op(t, i);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

fn pool_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool put+take");
    g.throughput(Throughput::Elements(1));
    for threads in [1usize, 2, 8, 64] {
        g.bench_with_input(
            BenchmarkId::new("embedgate", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    let settings = PoolSettings {
                        max_urls_per_key: usize::MAX,
                        max_urls: usize::MAX,
                        ..PoolSettings::default()
                    };
                    let pool = Arc::new(Pool::new(
                        &settings,
                        vec![usize::MAX],
                        Clock::System,
                        Arc::new(Metrics::new()),
                    ));
                    let keys = Arc::new(keys());
                    let now = Clock::System.now_ms();
                    contended(threads, iters, move |t, i| {
                        let k = &keys[(t + i as usize) % KEYS];
                        let _ = pool.put(
                            k,
                            0,
                            PooledUrl {
                                url: url(i as usize),
                                issued_at_ms: now,
                                anonymous_user_arn: None,
                                fetched_for: Fetch::Prefetch,
                            },
                        );
                        std::hint::black_box(pool.take(k));
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("naive Mutex<HashMap>", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    let pool = Arc::new(Naive::default());
                    let keys = Arc::new(keys());
                    contended(threads, iters, move |t, i| {
                        let k = &keys[(t + i as usize) % KEYS];
                        pool.put(k, url(i as usize));
                        std::hint::black_box(pool.take(k));
                    })
                })
            },
        );
    }
    g.finish();
}

fn tenants(n: usize) -> Tenants {
    let settings: Vec<TenantSettings> = (0..n)
        .map(|i| TenantSettings {
            id: format!("t{i}"),
            api_key_sha256: vec![hex::encode(hash_key(&format!("key-{i}")))],
            access_key_ids: vec![],
            client_certificate_names: vec![],
            default_account: Some("111122223333".into()),
            rate_per_sec: 1e9,
            burst: 1_000_000,
            upstream_weight: 1.0,
            max_pooled_urls: 100,
            max_hints: 10,
            max_tracked_keys: 10,
            policy: PolicySettings::default(),
            warm: vec![],
        })
        .collect();
    Tenants::new(&settings)
}

fn limiter_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("inbound limiter check");
    for n in [10usize, 1_000, 100_000] {
        let limiter =
            InboundLimiter::new(&tenants(n), (20.0, 100), &embedgate::clock::Clock::System);
        let mut i = 0usize;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                std::hint::black_box(limiter.check(i))
            })
        });
    }
    g.finish();
}

fn key_and_auth_bench(c: &mut Criterion) {
    let req = anonymous("sales-2024");
    c.bench_function("pool key canonicalisation (anonymous, 3 tags)", |b| {
        b.iter(|| std::hint::black_box(pool_key("acme", "us-east-1", &req)))
    });
    // A body is parsed once and its admission remembered (`gateway::recent`); this is the cost
    // of a new body, against serde_json's bare typed parse of the same bytes.
    let body = serde_json::to_vec(&req.to_json()).unwrap();
    c.bench_function("request parse, bare serde_json (anonymous, 3 tags)", |b| {
        b.iter(|| {
            std::hint::black_box(serde_json::from_slice::<AnonymousEmbedRequest>(&body).unwrap())
        })
    });
    c.bench_function("request parse, strict (anonymous, 3 tags)", |b| {
        b.iter(|| {
            std::hint::black_box(
                parse_request(Operation::GenerateEmbedUrlForAnonymousUser, &body).unwrap(),
            )
        })
    });
    let table = tenants(1_000);
    c.bench_function("API key verification (1,000 tenants)", |b| {
        b.iter(|| std::hint::black_box(table.authenticate("key-500").is_some()))
    });
}

criterion_group!(benches, pool_bench, limiter_bench, key_and_auth_bench);
criterion_main!(benches);
