//! Every metric embedgate exports, registered once in its own registry. Labels are bounded:
//! tenant ids come from config (unauthenticated requests use `-`), operations and outcomes are
//! closed sets, accounts come from the tenants' policies, and the tenant table's digest is shown
//! for the table in force only. No URL, code or key ever becomes a label.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::per_tenant::PerTenant;

/// Buckets from 100 µs (a pool hit) to 10 s (a slow upstream call).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Remaining validity at hand-out, 0–300 s.
const VALIDITY_BUCKETS: &[f64] = &[
    30.0, 60.0, 90.0, 120.0, 150.0, 180.0, 210.0, 240.0, 270.0, 285.0, 300.0,
];

/// Redis round trips, 50 µs – 0.5 s.
const REDIS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
];

/// The `op` label values of `embedgate_redis_duration_seconds` and
/// `embedgate_redis_errors_total`.
pub const REDIS_OPERATIONS: [&str; 9] = [
    "hit",
    "take",
    "put",
    "sync",
    "claim",
    "inbound",
    "budget",
    "heartbeat",
    "views",
];

/// Why a fetched URL was never handed out (`embedgate_urls_wasted_total{reason}`; its
/// `fetched_for` label is the URL's [`Fetch`] reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waste {
    /// Its usable life ran out in a pool.
    Expired,
    /// Its key was evicted from the local pool.
    Evicted,
    /// A pool bound (per key, per tenant, in total) had no room for it.
    Overflow,
    /// A shared put whose outcome is unknown: dropped, since it may be in Redis already.
    Unconfirmed,
    /// Delivered to a request that was dropped before it could answer (its client reset the
    /// connection while it waited on a prefetch), with nobody else waiting for it.
    Cancelled,
}

impl Waste {
    pub const ALL: [Waste; 5] = [
        Waste::Expired,
        Waste::Evicted,
        Waste::Overflow,
        Waste::Unconfirmed,
        Waste::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Waste::Expired => "expired",
            Waste::Evicted => "evicted",
            Waste::Overflow => "overflow",
            Waste::Unconfirmed => "unconfirmed",
            Waste::Cancelled => "cancelled",
        }
    }
}

/// Why a URL was fetched (`embedgate_urls_fetched_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// For a caller that missed the pool.
    Miss,
    /// Ahead of measured demand.
    Prefetch,
    /// For a key asked for once, whose kind's keys are usually asked again.
    First,
    /// For a hinted key.
    Hint,
    /// For a warm key.
    Warm,
    /// Predicted: it usually follows what its user just opened.
    Follower,
    /// Predicted: its user is likely to come back and start there.
    Returning,
}

impl Fetch {
    pub const ALL: [Fetch; 7] = [
        Fetch::Miss,
        Fetch::Prefetch,
        Fetch::First,
        Fetch::Hint,
        Fetch::Warm,
        Fetch::Follower,
        Fetch::Returning,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fetch::Miss => "miss",
            Fetch::Prefetch => "prefetch",
            Fetch::First => "first",
            Fetch::Hint => "hint",
            Fetch::Warm => "warm",
            Fetch::Follower => "follower",
            Fetch::Returning => "returning",
        }
    }

    /// The reason as one character, as a URL of the shared pool carries it.
    pub fn code(self) -> char {
        match self {
            Fetch::Miss => 'm',
            Fetch::Prefetch => 'p',
            Fetch::First => 'i',
            Fetch::Hint => 'h',
            Fetch::Warm => 'w',
            Fetch::Follower => 'f',
            Fetch::Returning => 'r',
        }
    }

    /// The inverse of [`Fetch::code`].
    pub fn from_code(c: char) -> Option<Fetch> {
        Fetch::ALL.into_iter().find(|f| f.code() == c)
    }
}

/// URLs counted by the reason they were fetched for: a pool's stale URLs of one purge.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally([u64; Fetch::ALL.len()]);

impl Tally {
    pub fn add(&mut self, fetched_for: Fetch, n: u64) {
        self.0[fetched_for as usize] += n;
    }

    /// How many in all.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Each reason with its count, where it is not 0.
    pub fn counts(&self) -> impl Iterator<Item = (Fetch, u64)> + '_ {
        Fetch::ALL
            .into_iter()
            .map(|f| (f, self.0[f as usize]))
            .filter(|(_, n)| *n > 0)
    }
}

impl FromIterator<Fetch> for Tally {
    fn from_iter<I: IntoIterator<Item = Fetch>>(reasons: I) -> Tally {
        let mut tally = Tally::default();
        for f in reasons {
            tally.add(f, 1);
        }
        tally
    }
}

impl std::ops::AddAssign<&Tally> for Tally {
    fn add_assign(&mut self, other: &Tally) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }
}

/// Which front door a request came through (`protocol` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The native API (`/v1/…`, API keys).
    Native,
    /// The QuickSight-compatible listener (QuickSight's paths, SigV4).
    Quicksight,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Native, Protocol::Quicksight];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Quicksight => "quicksight",
        }
    }
}

/// How an embed-URL request ended (`embedgate_requests_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Throttled,
    Denied,
    Invalid,
    Unauthenticated,
    Error,
    /// Dropped before it had its answer: its client reset the connection (actix-web then drops
    /// the handler), or the gateway stopped before it finished.
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Throttled,
        Outcome::Denied,
        Outcome::Invalid,
        Outcome::Unauthenticated,
        Outcome::Error,
        Outcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Throttled => "throttled",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub pool_urls: IntGauge,
    pub pool_keys: IntGauge,
    pub fetched: IntCounterVec,
    pub wasted: IntCounterVec,
    pub remaining_validity: Histogram,
    pub upstream_calls: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub budget_rate: GaugeVec,
    pub throttle_events: IntCounter,
    pub inbound_rejections: IntCounterVec,
    pub tracked_keys: IntGauge,
    pub upstream_in_flight: Gauge,
    pub redis_degraded: IntGauge,
    pub redis_errors: IntCounterVec,
    pub redis_duration: HistogramVec,
    pub fleet_replicas: IntGauge,
    pub redis_fences: IntCounter,
    pub redis_clock_offset: Gauge,
    /// `embedgate_admission_memo_total{result="hit"}` and `{result="miss"}`.
    pub memo_hits: IntCounter,
    pub memo_misses: IntCounter,
    /// `embedgate_config_reloads_total{result="applied"}` and `{result="refused"}`.
    pub reloads_applied: IntCounter,
    pub reloads_refused: IntCounter,
    /// `embedgate_config_last_reload_successful`: 0 after a refused reload until one is applied.
    pub reload_successful: IntGauge,
    /// `embedgate_tenant_table_info{digest}`: 1 for the digest of the tenant table in force.
    tenant_table: IntGaugeVec,
    /// `embedgate_tls_certificate_expiry_timestamp_seconds`: the served certificate's
    /// `notAfter` (0 without TLS).
    pub tls_not_after: IntGauge,
    /// `embedgate_tls_reloads_total{result="applied"}` and `{result="refused"}`.
    pub tls_reloads_applied: IntCounter,
    pub tls_reloads_refused: IntCounter,
    /// `embedgate_tls_client_certificates_refused_total{reason}`: client certificates the
    /// listeners refused in the handshake (`tls.client_ca_file`).
    pub tls_clients_refused: IntCounterVec,
    /// `embedgate_client_certificate_mismatches_total{tenant}`: a tenant's valid key presented
    /// over a connection whose client certificate the tenant does not list.
    client_mismatches: IntCounterVec,
    /// Tenants a reload removed: their series are left out of the exposition (see
    /// [`Metrics::tenant_removed`]).
    removed_tenants: parking_lot::RwLock<std::collections::HashSet<String>>,
    /// The per-request series, resolved once by `init_labels` (see [`Metrics::request`]).
    series: std::sync::OnceLock<RequestSeries>,
}

/// `embedgate_requests_total` and `embedgate_request_duration_seconds` resolved for every label
/// set up front, so counting a request is an index and two atomic adds instead of hashing three
/// labels under a lock.
struct RequestSeries {
    /// By protocol and outcome (`protocol × Outcome::ALL.len() + outcome`).
    durations: Vec<Histogram>,
    /// By tenant slot (0 is `-`, 1 + the tenant's index), then as `durations`; a slot is added
    /// for each tenant a reload adds ([`Metrics::add_tenant`]).
    counts: PerTenant<Box<[IntCounter]>>,
    /// `embedgate_inbound_rejections_total` by tenant slot.
    rejections: PerTenant<IntCounter>,
}

impl RequestSeries {
    /// Every protocol and outcome, in the order of [`RequestSeries::index`].
    fn label_sets() -> impl Iterator<Item = (Protocol, Outcome)> {
        Protocol::ALL
            .into_iter()
            .flat_map(|protocol| Outcome::ALL.into_iter().map(move |o| (protocol, o)))
    }

    /// Tenant `id`'s counters (`-` for requests without a valid key), as `counts` holds them.
    fn counts_of(m: &Metrics, id: &str) -> Box<[IntCounter]> {
        Self::label_sets()
            .map(|(protocol, outcome)| {
                m.requests
                    .with_label_values(&[id, outcome.as_str(), protocol.as_str()])
            })
            .collect()
    }

    fn index(protocol: Protocol, outcome: Outcome) -> usize {
        protocol as usize * Outcome::ALL.len() + outcome as usize
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are fixed and unique, so registration cannot fail.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let memo = counter_vec(
            "embedgate_admission_memo_total",
            "Native API requests admitted from memory (result=hit: the same bytes from the same tenant for the same operation were admitted recently) or worked out and remembered (result=miss).",
            &["result"],
        );
        let reloads = counter_vec(
            "embedgate_config_reloads_total",
            "Reloads of the tenant table (SIGHUP): result=applied (tenants added and removed, keys, rules, limits, quotas and warm keys in force from the next request) or refused (invalid, or changing what needs a restart; nothing changed, the log says why).",
            &["result"],
        );
        let tls_reloads = counter_vec(
            "embedgate_tls_reloads_total",
            "Certificates read again because their files changed (tls.cert_file, tls.key_file, tls.client_ca_file, tls.client_crl_file) or on SIGHUP: result=applied (served to, and checking, new connections) or refused (not loadable; the ones in force stay, the log says why).",
            &["result"],
        );
        Metrics {
            requests: counter_vec(
                "embedgate_requests_total",
                "Embed-URL requests by tenant, outcome (hit, miss, throttled, denied, invalid, unauthenticated, error, cancelled: the client went away before the answer) and protocol (native, quicksight).",
                &["tenant", "outcome", "protocol"],
            ),
            request_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("embedgate_request_duration_seconds", "Embed-URL request latency by outcome and protocol.")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                    &["outcome", "protocol"],
                )
                .expect("valid metric"),
            ),
            pool_urls: reg(&r, IntGauge::new("embedgate_pool_urls", "URLs in the pool.").expect("valid metric")),
            pool_keys: reg(&r, IntGauge::new("embedgate_pool_keys", "Keys in the pool.").expect("valid metric")),
            fetched: counter_vec(
                "embedgate_urls_fetched_total",
                "URLs fetched from QuickSight, by reason (miss; prefetch: its own rate; first: a key asked for once, by its kind; hint; warm; follower and returning: session predictions).",
                &["reason"],
            ),
            wasted: counter_vec(
                "embedgate_urls_wasted_total",
                "URLs fetched but never handed out, by reason (expired, evicted, overflow, unconfirmed: a Redis write whose outcome is unknown, dropped so it can never be handed out twice; cancelled: delivered to a request whose client went away) and by why each was fetched (fetched_for: the reasons of embedgate_urls_fetched_total).",
                &["reason", "fetched_for"],
            ),
            remaining_validity: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "embedgate_handout_remaining_validity_seconds",
                        "Validity left on a URL when it is handed out.",
                    )
                    .buckets(VALIDITY_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            upstream_calls: counter_vec(
                "embedgate_upstream_calls_total",
                "QuickSight calls by operation, upstream and result (ok, throttled, rejected, error, timeout, cancelled: dropped by its caller before it ended).",
                &["operation", "upstream", "result"],
            ),
            upstream_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("embedgate_upstream_duration_seconds", "QuickSight call latency by operation and upstream.")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                    &["operation", "upstream"],
                )
                .expect("valid metric"),
            ),
            budget_rate: reg(
                &r,
                GaugeVec::new(
                    Opts::new("embedgate_upstream_budget_rate", "Current upstream budget, calls per second, per AWS account and region."),
                    &["account", "region"],
                )
                .expect("valid metric"),
            ),
            throttle_events: reg(
                &r,
                IntCounter::new("embedgate_upstream_throttle_events_total", "ThrottlingExceptions received from QuickSight.")
                    .expect("valid metric"),
            ),
            inbound_rejections: counter_vec(
                "embedgate_inbound_rejections_total",
                "Requests refused by a tenant's inbound rate limit.",
                &["tenant"],
            ),
            tracked_keys: reg(
                &r,
                IntGauge::new("embedgate_demand_tracked_keys", "Keys whose demand the refiller tracks.").expect("valid metric"),
            ),
            upstream_in_flight: reg(
                &r,
                Gauge::new("embedgate_upstream_in_flight", "QuickSight calls in flight.").expect("valid metric"),
            ),
            redis_degraded: reg(
                &r,
                IntGauge::new(
                    "embedgate_redis_degraded",
                    "1 while this replica runs on its local pool and limits because Redis is unreachable (cluster mode); 0 otherwise.",
                )
                .expect("valid metric"),
            ),
            redis_errors: counter_vec(
                "embedgate_redis_errors_total",
                "Redis commands that failed or exceeded redis.timeout_ms, by operation (cluster mode).",
                &["op"],
            ),
            redis_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "embedgate_redis_duration_seconds",
                        "Redis round trips by operation, failed ones included (cluster mode). A pool hit is one `hit`.",
                    )
                    .buckets(REDIS_BUCKETS.to_vec()),
                    &["op"],
                )
                .expect("valid metric"),
            ),
            fleet_replicas: reg(
                &r,
                IntGauge::new(
                    "embedgate_fleet_replicas",
                    "Replicas that announced themselves to Redis recently, this one included (cluster mode; 1 on its own).",
                )
                .expect("valid metric"),
            ),
            redis_fences: reg(
                &r,
                IntCounter::new(
                    "embedgate_redis_fences_total",
                    "Times this replica found that a tenant's shared pool came back as another data set (Redis restarted, failed over, was restored or flushed, or loaded the pool scripts' library anew) and moved to a new fencing epoch, discarding what was pooled before.",
                )
                .expect("valid metric"),
            ),
            redis_clock_offset: reg(
                &r,
                Gauge::new(
                    "embedgate_redis_clock_offset_seconds",
                    "Redis's clock minus this replica's, measured at the last heartbeat (cluster mode). Past redis.max_clock_offset_ms the replica stops sharing.",
                )
                .expect("valid metric"),
            ),
            memo_hits: memo.with_label_values(&["hit"]),
            memo_misses: memo.with_label_values(&["miss"]),
            reload_successful: {
                let g = reg(
                    &r,
                    IntGauge::new(
                        "embedgate_config_last_reload_successful",
                        "1 while the tenant table's last reload was applied (or none was tried since start), 0 after a refused one: the gateway runs on the tenants' previous keys, rules, limits, quotas and warm keys.",
                    )
                    .expect("valid metric"),
                );
                g.set(1);
                g
            },
            reloads_applied: reloads.with_label_values(&["applied"]),
            reloads_refused: reloads.with_label_values(&["refused"]),
            tenant_table: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "embedgate_tenant_table_info",
                        "1, labelled with the digest of the tenant table in force (set at start and by each applied reload): replicas that show different digests run different tenant tables.",
                    ),
                    &["digest"],
                )
                .expect("valid metric"),
            ),
            tls_not_after: reg(
                &r,
                IntGauge::new(
                    "embedgate_tls_certificate_expiry_timestamp_seconds",
                    "When the certificate the API and compatible listeners serve expires (its notAfter, Unix seconds); 0 without TLS.",
                )
                .expect("valid metric"),
            ),
            tls_reloads_applied: tls_reloads.with_label_values(&["applied"]),
            tls_reloads_refused: tls_reloads.with_label_values(&["refused"]),
            tls_clients_refused: counter_vec(
                "embedgate_tls_client_certificates_refused_total",
                "Client certificates refused in the TLS handshake (tls.client_ca_file), or on a connection already open when a reload or the certificate's expiry refused it (once per connection, then closed), by reason: unknown_issuer (no authority of tls.client_ca_file issued it), expired, not_yet_valid, revoked (tls.client_crl_file), wrong_purpose (not for client authentication), invalid (anything else). A client that sends none is refused without being counted.",
                &["reason"],
            ),
            client_mismatches: counter_vec(
                "embedgate_client_certificate_mismatches_total",
                "Requests with a tenant's valid API key or access key from a client whose certificate (the connection's, or one a trusted proxy forwarded in api.client_cert_header) the tenant does not list in client_certificate_names (refused: 403 client_certificate_not_allowed or AccessDeniedException). Anything but 0 means a tenant's key is used from somewhere it was not given to (0 for every tenant from the start).",
                &["tenant"],
            ),
            registry: r,
            removed_tenants: parking_lot::RwLock::default(),
            series: std::sync::OnceLock::new(),
        }
    }

    /// Shows `digest` as the tenant table in force, in place of the one before.
    pub fn tenant_table_in_force(&self, digest: &str) {
        self.tenant_table.reset();
        self.tenant_table.with_label_values(&[digest]).set(1);
    }

    /// Counts `n` URLs fetched for `fetched_for` that will never be handed out.
    pub fn wasted(&self, why: Waste, fetched_for: Fetch, n: u64) {
        if n > 0 {
            self.wasted
                .with_label_values(&[why.as_str(), fetched_for.as_str()])
                .inc_by(n);
        }
    }

    /// Counts the URLs of a [`Tally`] that will never be handed out.
    pub fn wasted_tally(&self, why: Waste, tally: &Tally) {
        for (fetched_for, n) in tally.counts() {
            self.wasted(why, fetched_for, n);
        }
    }

    /// Counts one URL fetched from QuickSight.
    pub fn fetched(&self, why: Fetch) {
        self.fetched.with_label_values(&[why.as_str()]).inc();
    }

    /// Counts one embed-URL request and its latency: `tenant` is the tenant's index and id, or
    /// `None` for a request without a valid key (`tenant="-"`).
    pub fn request(
        &self,
        protocol: Protocol,
        tenant: Option<(usize, &str)>,
        outcome: Outcome,
        seconds: f64,
    ) {
        let at = RequestSeries::index(protocol, outcome);
        let slot = tenant.map_or(0, |(index, _)| index + 1);
        match self
            .series
            .get()
            .and_then(|s| Some((s.counts.get(slot)?, s)))
        {
            Some((counts, s)) => {
                counts[at].inc();
                s.durations[at].observe(seconds);
            }
            // Before `init_labels`, or a tenant it was not told of: by label.
            _ => {
                let id = tenant.map_or("-", |(_, id)| id);
                self.requests
                    .with_label_values(&[id, outcome.as_str(), protocol.as_str()])
                    .inc();
                self.request_duration
                    .with_label_values(&[outcome.as_str(), protocol.as_str()])
                    .observe(seconds);
            }
        }
    }

    /// Counts one request refused by an inbound limit (`tenant` as in [`Metrics::request`]).
    pub fn inbound_rejected(&self, tenant: Option<(usize, &str)>) {
        let slot = tenant.map_or(0, |(index, _)| index + 1);
        match self.series.get().and_then(|s| s.rejections.get(slot)) {
            Some(c) => c.inc(),
            None => self
                .inbound_rejections
                .with_label_values(&[tenant.map_or("-", |(_, id)| id)])
                .inc(),
        }
    }

    /// Counts one request with `tenant`'s key refused for its connection's client certificate.
    pub fn client_certificate_mismatch(&self, tenant: &str) {
        self.client_mismatches.with_label_values(&[tenant]).inc();
    }

    /// Creates every label combination that is known up front (tenants, upstream ids), so a
    /// series exists at 0 before its first event.
    /// `tenants` in the order of their indexes.
    pub fn init_labels(&self, tenants: &[&str], upstreams: &[&str]) {
        let slots: Vec<&str> = std::iter::once("-")
            .chain(tenants.iter().copied())
            .collect();
        let durations = RequestSeries::label_sets()
            .map(|(protocol, outcome)| {
                self.request_duration
                    .with_label_values(&[outcome.as_str(), protocol.as_str()])
            })
            .collect();
        let _ = self.series.set(RequestSeries {
            durations,
            counts: PerTenant::new(slots.iter().map(|t| RequestSeries::counts_of(self, t))),
            rejections: PerTenant::new(
                slots
                    .iter()
                    .map(|t| self.inbound_rejections.with_label_values(&[t])),
            ),
        });
        for reason in Fetch::ALL {
            self.fetched.with_label_values(&[reason.as_str()]);
        }
        // From 0, so that a tenant's first mismatch is an increase an alert sees.
        for t in tenants {
            self.client_mismatches.with_label_values(&[t]);
        }
        for reason in Waste::ALL {
            for fetched_for in Fetch::ALL {
                self.wasted
                    .with_label_values(&[reason.as_str(), fetched_for.as_str()]);
            }
        }
        self.fleet_replicas.set(1);
        for op in REDIS_OPERATIONS {
            self.redis_errors.with_label_values(&[op]);
            self.redis_duration.with_label_values(&[op]);
        }
        for op in crate::model::Operation::ALL {
            for upstream in upstreams {
                self.upstream_duration
                    .with_label_values(&[op.as_str(), upstream]);
                for result in [
                    "ok",
                    "throttled",
                    "rejected",
                    "error",
                    "timeout",
                    "cancelled",
                ] {
                    self.upstream_calls
                        .with_label_values(&[op.as_str(), upstream, result]);
                }
            }
        }
    }

    /// Resolves the series of tenant `id`, at `index`, that a reload added (after
    /// [`Metrics::init_labels`], which resolved those of the tenants at start), so they exist at
    /// 0 before its first request and count it as they count the others'.
    pub fn add_tenant(&self, index: usize, id: &str) {
        let slot = index + 1;
        // Added in index order; a slot out of order counts by label, as before init_labels.
        if let Some(s) = self.series.get().filter(|s| s.counts.len() == slot) {
            s.counts
                .grow_to(slot, |_| RequestSeries::counts_of(self, id));
            s.rejections
                .grow_to(slot, |_| self.inbound_rejections.with_label_values(&[id]));
        }
        self.client_mismatches.with_label_values(&[id]);
    }

    /// Leaves tenant `id`'s series (those labelled `tenant`) out of the exposition from now on:
    /// a reload removed it. Its counters go on existing, so that the labels a scrape sees are
    /// the tenants in force however many came and went, and the tenant's series come back with
    /// their counts carried on if a reload lists it again ([`Metrics::tenant_listed`]).
    pub fn tenant_removed(&self, id: &str) {
        self.removed_tenants.write().insert(id.to_string());
    }

    /// Exports tenant `id`'s series again (a reload listed it).
    pub fn tenant_listed(&self, id: &str) {
        self.removed_tenants.write().remove(id);
    }

    /// The Prometheus text exposition of every metric (but the series of removed tenants).
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        let removed = self.removed_tenants.read();
        if !removed.is_empty() {
            for family in &mut families {
                family.mut_metric().retain(|m| {
                    !m.get_label()
                        .iter()
                        .any(|l| l.name() == "tenant" && removed.contains(l.value()))
                });
            }
            families.retain(|f| !f.get_metric().is_empty());
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_resolved_request_series_count_under_the_right_labels() {
        let m = Metrics::new();
        m.init_labels(&["acme", "globex"], &[]);
        m.request(
            Protocol::Quicksight,
            Some((1, "globex")),
            Outcome::Hit,
            0.001,
        );
        m.request(Protocol::Native, None, Outcome::Unauthenticated, 0.001);
        m.inbound_rejected(Some((0, "acme")));
        // A tenant `init_labels` was not told of still counts, by label.
        m.request(Protocol::Native, Some((7, "late")), Outcome::Miss, 0.2);
        // One a reload added counts in series of its own from its first request.
        m.add_tenant(2, "added");
        assert!(
            m.render().contains(r#"tenant="added""#),
            "its series exist at 0 before its first request"
        );
        let added = || {
            m.requests
                .with_label_values(&["added", "throttled", "native"])
                .get()
        };
        assert_eq!(added(), 0);
        m.request(
            Protocol::Native,
            Some((2, "added")),
            Outcome::Throttled,
            0.001,
        );
        m.inbound_rejected(Some((2, "added")));
        assert_eq!(added(), 1);
        assert_eq!(m.inbound_rejections.with_label_values(&["added"]).get(), 1);
        let count = |labels: &[&str]| m.requests.with_label_values(labels).get();
        assert_eq!(count(&["globex", "hit", "quicksight"]), 1);
        assert_eq!(count(&["globex", "hit", "native"]), 0);
        assert_eq!(count(&["acme", "hit", "quicksight"]), 0);
        assert_eq!(count(&["-", "unauthenticated", "native"]), 1);
        assert_eq!(count(&["late", "miss", "native"]), 1);
        assert_eq!(m.inbound_rejections.with_label_values(&["acme"]).get(), 1);
        assert_eq!(m.inbound_rejections.with_label_values(&["-"]).get(), 0);
        let observed = |o: &str, p: &str| {
            m.request_duration
                .with_label_values(&[o, p])
                .get_sample_count()
        };
        assert_eq!(observed("hit", "quicksight"), 1);
        assert_eq!(observed("miss", "native"), 1);
        assert_eq!(observed("hit", "native"), 0);
        assert_eq!(observed("throttled", "native"), 1);
    }
}
