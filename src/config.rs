//! The gateway's settings tree: process settings (listeners, upstream, pool, refill) and the tenant
//! table (keys, policies, quotas). Loaded once from TOML plus `EMBEDGATE_…` environment overrides
//! (see [`crate::settings::load`]) and validated before anything starts.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::model::domain::Origin;
use crate::model::names::{ExperienceKind, Feature};
use crate::model::IdentityType;

/// A string that never prints (secret access keys in settings).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Everything `embedgate serve` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The native API listener.
    pub listen: SocketAddr,
    /// The admin listener (`/metrics`, pool and limiter state). Keep it private.
    pub admin_listen: SocketAddr,
    /// HTTP worker threads per listener (default: one per core).
    pub workers: Option<usize>,
    /// `json` (default for `serve`) or `pretty`.
    pub log_format: Option<String>,
    /// Log filter, e.g. `info` or `info,embedgate=debug` (`EMBEDGATE_LOG`/`RUST_LOG` win).
    pub log_level: Option<String>,
    pub api: ApiSettings,
    pub upstream: UpstreamSettings,
    pub pool: PoolSettings,
    pub refill: RefillSettings,
    /// Cluster mode: share pool, limits and upstream budget with other replicas through Redis.
    pub redis: RedisSettings,
    /// Settings that make the process misbehave on purpose, for tests; `serve` refuses them
    /// without `--unsafe-test`.
    pub debug: DebugSettings,
    pub tenants: Vec<TenantSettings>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugSettings {
    /// Seconds added to this replica's clock (negative: behind), to run replicas whose clocks
    /// differ.
    pub clock_offset_secs: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            workers: None,
            log_format: None,
            log_level: None,
            api: ApiSettings::default(),
            upstream: UpstreamSettings::default(),
            pool: PoolSettings::default(),
            refill: RefillSettings::default(),
            redis: RedisSettings::default(),
            debug: DebugSettings::default(),
            tenants: vec![],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest a pool miss may wait (for a prefetch in flight, the upstream budget and the
    /// upstream call together) before it is answered 503/504.
    pub miss_timeout_ms: u64,
    /// Most requests one `POST /v1/hints` may carry.
    pub max_hints_per_call: usize,
    /// Requests per second, across all clients, that may arrive without a valid API key before
    /// they are answered 429 instead of 401.
    pub unauthenticated_rate_per_sec: f64,
    /// Burst above that rate.
    pub unauthenticated_burst: u32,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_body_bytes: 64 * 1024,
            miss_timeout_ms: 5_000,
            max_hints_per_call: 50,
            unauthenticated_rate_per_sec: 20.0,
            unauthenticated_burst: 100,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Endpoint override (the simulator's URL). Unset: QuickSight's regional endpoint.
    pub endpoint_url: Option<String>,
    /// Region of the QuickSight endpoint and of the accounts' dashboards.
    pub region: String,
    /// Static credentials (simulator and tests only). Unset: the standard AWS credential chain.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// Timeout of one upstream call.
    pub timeout_ms: u64,
    /// Most upstream calls in flight at once, across all accounts.
    pub max_concurrency: usize,
    /// Calls per second the fleet may make per AWS account and region (QuickSight's throttle is
    /// per account; about 10/s is the only public signal).
    pub rate_per_sec: f64,
    /// Burst above the rate.
    pub burst: u32,
    /// The budget never adapts below this rate.
    pub min_rate_per_sec: f64,
    /// After a ThrottlingException the rate is multiplied by this factor…
    pub throttle_backoff: f64,
    /// …and recovers by this many calls/s every second without throttling.
    pub recovery_per_sec: f64,
    /// Fraction of the burst kept for callers waiting on a miss; prefetch cannot use it.
    pub miss_reserve: f64,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            endpoint_url: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            timeout_ms: 3_000,
            max_concurrency: 64,
            rate_per_sec: 10.0,
            burst: 10,
            min_rate_per_sec: 1.0,
            throttle_backoff: 0.5,
            recovery_per_sec: 0.5,
            miss_reserve: 0.3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSettings {
    /// A URL is handed out only while at least this much of its 300 s validity is left.
    pub min_remaining_secs: u64,
    /// Most pool keys (tenant × parameter set) held at once; the least used are evicted.
    pub max_keys: u64,
    /// Most URLs held at once, across all keys.
    pub max_urls: usize,
    /// Most URLs held for one key.
    pub max_urls_per_key: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            min_remaining_secs: 60,
            max_keys: 100_000,
            max_urls: 1_000_000,
            max_urls_per_key: 256,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefillSettings {
    /// Pre-fetch at all (off: every request is a miss).
    pub enabled: bool,
    /// How often the planner looks at demand.
    pub tick_ms: u64,
    /// Most prefetches in flight at once.
    pub concurrency: usize,
    /// Extra seconds of demand to hold beyond the measured refill lead time.
    pub safety_secs: f64,
    /// While the upstream budget has room to spare, stock up to this many seconds of each key's
    /// demand (never beyond what a URL's usable life can absorb), so a burst above the budget is
    /// served from the pool. 0 turns it off.
    pub surplus_secs: f64,
    /// Pre-fetch a key only if a request is at least this likely to arrive within a URL's usable
    /// life (0–1). Hinted and warm keys are pre-fetched regardless.
    pub min_probability: f64,
    /// Half-life of the demand estimate.
    pub demand_half_life_secs: f64,
    /// Keys with no request for this long are forgotten.
    pub idle_forget_secs: u64,
    /// Most keys whose demand is tracked.
    pub max_tracked_keys: u64,
    /// How long a hint keeps its key warm.
    pub hint_ttl_secs: u64,
}

impl Default for RefillSettings {
    fn default() -> Self {
        RefillSettings {
            enabled: true,
            tick_ms: 100,
            concurrency: 64,
            safety_secs: 1.0,
            surplus_secs: 10.0,
            min_probability: 0.9,
            demand_half_life_secs: 30.0,
            idle_forget_secs: 600,
            max_tracked_keys: 100_000,
            hint_ttl_secs: 300,
        }
    }
}

/// Cluster mode. With neither `url` nor `cluster_urls` set the gateway runs on its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// A standalone Redis (or a primary behind a failover endpoint): `redis://[user:pass@]host:port[/db]`,
    /// or `rediss://…` for TLS.
    pub url: Option<String>,
    /// Seed nodes of a Redis Cluster (same URL forms); the rest of the cluster is discovered.
    pub cluster_urls: Vec<String>,
    /// Prefix of every key the gateway writes, so several fleets can share one Redis.
    pub prefix: String,
    /// Longest any Redis command may take before this replica stops using Redis and serves from
    /// its local pool and limits (degraded mode).
    pub timeout_ms: u64,
    /// How often a replica announces itself and, while degraded, tries Redis again.
    pub heartbeat_ms: u64,
    /// Largest difference between a replica's clock and Redis's at which the replica still
    /// shares the pool. Shared URLs are handed out only with twice this much validity left on top
    /// of `pool.min_remaining_secs`.
    pub max_clock_offset_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: None,
            cluster_urls: vec![],
            prefix: "embedgate:".into(),
            timeout_ms: 50,
            heartbeat_ms: 500,
            max_clock_offset_ms: 1_000,
        }
    }
}

impl RedisSettings {
    pub fn enabled(&self) -> bool {
        self.url.is_some() || !self.cluster_urls.is_empty()
    }
}

/// One tenant: who it is, how it authenticates, what it may ask for and how much.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// Short stable id (letters, digits, `-`, `_`); used in metrics labels and logs.
    pub id: String,
    /// SHA-256 (hex) of each API key the tenant may use. `embedgate hash-key` prints one.
    pub api_key_sha256: Vec<String>,
    /// Account used when a request omits `AwsAccountId`.
    #[serde(default)]
    pub default_account: Option<String>,
    /// Inbound requests per second, sustained.
    #[serde(default = "default_rate")]
    pub rate_per_sec: f64,
    /// Inbound burst.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Share of a contended upstream budget, relative to other tenants' weights.
    #[serde(default = "one")]
    pub upstream_weight: f64,
    /// Most URLs pooled for this tenant.
    #[serde(default = "default_tenant_urls")]
    pub max_pooled_urls: usize,
    /// Most keys this tenant may keep hinted at once.
    #[serde(default = "default_hints")]
    pub max_hints: usize,
    /// Most keys whose demand is tracked for this tenant (per replica); requests for further new
    /// keys are served but not tracked or pre-fetched. Warm keys do not count.
    #[serde(default = "default_tracked")]
    pub max_tracked_keys: usize,
    #[serde(default)]
    pub policy: PolicySettings,
    /// Requests to keep warm always: each a native API body plus its `Operation` and `Depth`.
    #[serde(default)]
    pub warm: Vec<serde_json::Value>,
}

fn default_rate() -> f64 {
    50.0
}
fn default_burst() -> u32 {
    100
}
fn one() -> f64 {
    1.0
}
fn default_tenant_urls() -> usize {
    100_000
}
fn default_hints() -> usize {
    1_000
}
fn default_tracked() -> usize {
    10_000
}

/// What a tenant may ask for. Deny by default: an empty list allows nothing (except where noted);
/// patterns take `*` wildcards. The policy is checked on the request as QuickSight will read it
/// (defaults resolved), on every operation; see the README's policy reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// AWS accounts. Empty: only `default_account`.
    pub accounts: Vec<String>,
    /// Dashboard id patterns (`["*"]` for all): every dashboard a URL opens or authorizes.
    pub dashboards: Vec<String>,
    /// Q topic id patterns: initial topics and topic ARNs. Empty: none.
    pub topics: Vec<String>,
    /// Theme id patterns for theme ARNs in `AuthorizedResourceArns`. Empty: none.
    pub themes: Vec<String>,
    /// Namespaces: the `Namespace` member (omitted: `default`) and every user ARN's namespace.
    pub namespaces: Vec<String>,
    /// Identity types. Default QUICKSIGHT and ANONYMOUS: IAM embeds as the gateway's own role, so
    /// a tenant gets it only when named here.
    pub identity_types: Vec<IdentityType>,
    /// User ARN patterns (registered users), matched against the whole ARN.
    pub user_arns: Vec<String>,
    /// Session tag key → allowed value patterns. A tag whose key is not listed is refused.
    pub session_tags: BTreeMap<String, Vec<String>>,
    /// Session tag keys every anonymous request must carry (row-level security).
    pub required_session_tags: Vec<String>,
    /// Experiences: `Dashboard` (also GetDashboardEmbedUrl), `DashboardVisual`,
    /// `QuickSightConsole`, `QSearchBar`, `GenerativeQnA`, `QuickChat`. Default: dashboards and
    /// visuals.
    pub experiences: Vec<String>,
    /// Features a request may not enable: `SharedView`, `StatePersistence`, `Bookmarks`,
    /// `Schedules`, `RecentSnapshots`, `ThresholdAlerts`, `DashboardCustomizationSummary`,
    /// `ExecutiveSummary`, `DataQnA`, `GenerativeAuthoring`, `DataStories`.
    pub denied_features: Vec<String>,
    /// Origin patterns (`https://app.example.com`, `https://*.example.com`, `http://localhost`).
    /// Set: every request must send `AllowedDomains`, each entry within a pattern (so
    /// GetDashboardEmbedUrl, which cannot restrict domains, is refused). Empty: no restriction.
    pub allowed_domains: Vec<String>,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            accounts: vec![],
            dashboards: vec![],
            topics: vec![],
            themes: vec![],
            namespaces: vec![],
            identity_types: vec![IdentityType::Quicksight, IdentityType::Anonymous],
            user_arns: vec![],
            session_tags: BTreeMap::new(),
            required_session_tags: vec![],
            experiences: vec!["Dashboard".into(), "DashboardVisual".into()],
            denied_features: vec![],
            allowed_domains: vec![],
        }
    }
}

impl Settings {
    /// Checks what serde cannot: ranges, cross-field rules, unique tenant ids.
    ///
    /// # Errors
    /// The first offending key and what is wrong with it.
    pub fn validate(&self) -> Result<(), String> {
        let u = &self.upstream;
        let positive = |key: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(format!("{key}: must be a positive number"))
            }
        };
        positive("upstream.rate_per_sec", u.rate_per_sec)?;
        positive("upstream.min_rate_per_sec", u.min_rate_per_sec)?;
        if u.min_rate_per_sec > u.rate_per_sec {
            return Err("upstream.min_rate_per_sec: must not exceed upstream.rate_per_sec".into());
        }
        if !(0.0 < u.throttle_backoff && u.throttle_backoff < 1.0) {
            return Err("upstream.throttle_backoff: must be between 0 and 1 (exclusive)".into());
        }
        if !(0.0..1.0).contains(&u.miss_reserve) {
            return Err("upstream.miss_reserve: must be in [0, 1)".into());
        }
        if u.burst == 0 || u.max_concurrency == 0 || u.timeout_ms == 0 {
            return Err("upstream.burst, upstream.max_concurrency and upstream.timeout_ms: must be at least 1".into());
        }
        if u.access_key_id.is_some() != u.secret_access_key.is_some() {
            return Err(
                "upstream.access_key_id and upstream.secret_access_key: set both or neither".into(),
            );
        }
        if self.pool.min_remaining_secs >= crate::model::URL_VALIDITY_SECS {
            return Err("pool.min_remaining_secs: must be below 300 (a URL's validity)".into());
        }
        // A URL handed out on a miss or from a joined prefetch was fetched at most this long
        // ago; neither wait may eat the validity `min_remaining_secs` promises.
        let usable_ms = (crate::model::URL_VALIDITY_SECS - self.pool.min_remaining_secs) * 1000;
        for (key, ms) in [
            ("upstream.timeout_ms", u.timeout_ms),
            ("api.miss_timeout_ms", self.api.miss_timeout_ms),
        ] {
            if ms >= usable_ms {
                return Err(format!(
                    "{key}: must be below {usable_ms} (300 s minus pool.min_remaining_secs): a URL that took longer would be handed out with less than min_remaining_secs left"
                ));
            }
        }
        if self.redis.enabled() && 2 * self.redis.max_clock_offset_ms >= usable_ms {
            return Err(format!(
                "redis.max_clock_offset_ms: twice it must be below {usable_ms} (300 s minus pool.min_remaining_secs), or no shared URL could ever be handed out"
            ));
        }
        if self.pool.max_keys == 0 || self.pool.max_urls == 0 || self.pool.max_urls_per_key == 0 {
            return Err(
                "pool.max_keys, pool.max_urls and pool.max_urls_per_key: must be at least 1".into(),
            );
        }
        let r = &self.refill;
        if !(0.0..=1.0).contains(&r.min_probability) {
            return Err("refill.min_probability: must be between 0 and 1".into());
        }
        positive("refill.demand_half_life_secs", r.demand_half_life_secs)?;
        if !(r.surplus_secs >= 0.0 && r.surplus_secs.is_finite()) {
            return Err("refill.surplus_secs: must be a number of seconds, 0 or more".into());
        }
        if r.tick_ms == 0 || r.concurrency == 0 {
            return Err("refill.tick_ms and refill.concurrency: must be at least 1".into());
        }
        let redis = &self.redis;
        if redis.url.is_some() && !redis.cluster_urls.is_empty() {
            return Err("redis.url and redis.cluster_urls: set one or the other, not both".into());
        }
        for (key, u) in redis
            .url
            .iter()
            .map(|u| ("redis.url".to_string(), u))
            .chain(
                redis
                    .cluster_urls
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (format!("redis.cluster_urls[{i}]"), u)),
            )
        {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err(format!(
                    "{key}: must start with redis:// or rediss:// (TLS)"
                ));
            }
        }
        if redis.timeout_ms == 0 || redis.heartbeat_ms == 0 {
            return Err("redis.timeout_ms and redis.heartbeat_ms: must be at least 1".into());
        }
        if redis.prefix.contains(['{', '}']) {
            return Err(
                "redis.prefix: must not contain '{' or '}' (Redis Cluster hash tags)".into(),
            );
        }
        if !self.debug.clock_offset_secs.is_finite() {
            return Err("debug.clock_offset_secs: must be a number of seconds".into());
        }
        if let Some(f) = &self.log_format {
            if f != "json" && f != "pretty" {
                return Err(format!("log_format: {f:?} is not \"json\" or \"pretty\""));
            }
        }
        positive(
            "api.unauthenticated_rate_per_sec",
            self.api.unauthenticated_rate_per_sec,
        )?;
        if self.api.unauthenticated_burst == 0 {
            return Err("api.unauthenticated_burst: must be at least 1".into());
        }
        if self.api.miss_timeout_ms == 0 || self.api.max_body_bytes == 0 {
            return Err("api.miss_timeout_ms and api.max_body_bytes: must be at least 1".into());
        }
        let mut seen = std::collections::HashSet::new();
        let mut key_owner = std::collections::HashMap::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let k = |f: &str| format!("tenants[{i}].{f}");
            if t.id.is_empty()
                || t.id.len() > 64
                || !t
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "{}: must be 1-64 letters, digits, '-' or '_'",
                    k("id")
                ));
            }
            if !seen.insert(&t.id) {
                return Err(format!("{}: duplicate tenant id {:?}", k("id"), t.id));
            }
            if t.api_key_sha256.is_empty() {
                return Err(format!(
                    "{}: at least one key hash is required",
                    k("api_key_sha256")
                ));
            }
            for h in &t.api_key_sha256 {
                if h.len() != 64 || hex::decode(h).is_err() {
                    return Err(format!(
                        "{}: {h:?} is not a hex SHA-256 (64 hex digits)",
                        k("api_key_sha256")
                    ));
                }
            }
            positive(&k("rate_per_sec"), t.rate_per_sec)?;
            positive(&k("upstream_weight"), t.upstream_weight)?;
            if t.burst == 0 {
                return Err(format!("{}: must be at least 1", k("burst")));
            }
            for a in t.policy.accounts.iter().chain(t.default_account.iter()) {
                if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!(
                        "{}: {a:?} is not a 12-digit AWS account id",
                        k("policy.accounts")
                    ));
                }
            }
            let p = &t.policy;
            for e in &p.experiences {
                if ExperienceKind::parse(e).is_none() {
                    let all: Vec<_> = ExperienceKind::ALL.iter().map(|e| e.as_str()).collect();
                    return Err(format!(
                        "{}: {e:?} is not one of {}",
                        k("policy.experiences"),
                        all.join(", ")
                    ));
                }
            }
            for f in &p.denied_features {
                if Feature::parse(f).is_none() {
                    let all: Vec<_> = Feature::ALL.iter().map(|f| f.as_str()).collect();
                    return Err(format!(
                        "{}: {f:?} is not one of {}",
                        k("policy.denied_features"),
                        all.join(", ")
                    ));
                }
            }
            for d in &p.allowed_domains {
                if let Err(rule) = Origin::parse(d) {
                    return Err(format!("{}: {d:?} {rule}", k("policy.allowed_domains")));
                }
            }
            for h in &t.api_key_sha256 {
                let owner = key_owner.entry(h.to_ascii_lowercase()).or_insert(&t.id);
                if let Some(other) = Some(*owner).filter(|o| *o != &t.id) {
                    return Err(format!(
                        "{}: the same API key hash is configured for tenants {other:?} and {:?}; each key must identify one tenant",
                        k("api_key_sha256"),
                        t.id
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
