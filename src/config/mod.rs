//! The gateway's settings tree: process settings (listeners, upstream, pool, refill) and the tenant
//! table (keys, policies, quotas). Loaded once from TOML plus `EMBEDGATE_…` environment overrides
//! (see [`loader::load`]) and validated before anything starts.
//!
//! - [`loader`]: defaults, then TOML, then environment variables.
//! - [`tenants`]: the tenant table (keys, quotas, warm keys, policy).
//! - [`validate`]: ranges and cross-field rules.
//! - [`secret`]: strings that never print.

pub mod loader;
mod secret;
mod tenants;
mod validate;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use secret::Secret;
pub use tenants::{table_digest, PolicySettings, TagRule, TenantSettings};
pub use validate::{check_access_key_id, check_master_key, MIN_MASTER_KEY_BYTES};

/// Everything `embedgate serve` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The native API listener.
    pub listen: SocketAddr,
    /// The admin listener (`/metrics`, pool and limiter state). Keep it private.
    pub admin_listen: SocketAddr,
    /// The QuickSight-compatible listener (drop-in mode: QuickSight's paths and wire format,
    /// tenants sign with SigV4 access keys). Unset: off.
    pub compat_listen: Option<SocketAddr>,
    /// File holding the master key tenants' SigV4 secrets are derived from (or set
    /// `EMBEDGATE_MASTER_KEY`). The key itself is never read from this file's TOML.
    pub master_key_file: Option<std::path::PathBuf>,
    /// The master key, read at start-up from `EMBEDGATE_MASTER_KEY` or `master_key_file` (see
    /// [`loader::load_master_key`]); never serialized.
    #[serde(skip)]
    pub master_key: Option<Secret>,
    /// HTTP worker threads per listener (default: one per core).
    pub workers: Option<usize>,
    /// `json` (default for `serve`) or `pretty`.
    pub log_format: Option<String>,
    /// Log filter, e.g. `info` or `info,embedgate=debug` (`EMBEDGATE_LOG`/`RUST_LOG` win).
    pub log_level: Option<String>,
    /// How long a log line below `warn` may wait in its thread's batch, in ms (default 100; 0
    /// writes each line as it is logged). `warn` and `error` lines are written at once.
    pub log_flush_ms: Option<u64>,
    /// HTTPS on the native API and compatible listeners (unset: plain HTTP).
    pub tls: TlsSettings,
    pub api: ApiSettings,
    /// The single upstream (one region, every account): kept for configs written before
    /// `[[upstreams]]`. Set one or the other.
    pub upstream: UpstreamSettings,
    /// Several upstreams: accounts and regions, each with its own credentials and budget.
    pub upstreams: Vec<UpstreamSettings>,
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
            compat_listen: None,
            master_key_file: None,
            master_key: None,
            workers: None,
            log_format: None,
            log_level: None,
            log_flush_ms: None,
            tls: TlsSettings::default(),
            api: ApiSettings::default(),
            upstream: UpstreamSettings::default(),
            upstreams: vec![],
            pool: PoolSettings::default(),
            refill: RefillSettings::default(),
            redis: RedisSettings::default(),
            debug: DebugSettings::default(),
            tenants: vec![],
        }
    }
}

/// HTTPS on the native API listener (`listen`) and the compatible listener (`compat_listen`);
/// the admin listener stays plain HTTP (keep it private). Both files or neither: with neither
/// the listeners speak plain HTTP. Read at start and again whenever their contents change (see
/// `tls::ListenerTls`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file of the server's certificate, then the intermediate certificates of its chain.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM file of the certificate's private key (PKCS #8, PKCS #1 or SEC1).
    pub key_file: Option<std::path::PathBuf>,
    /// PEM file of the certificate authorities whose client certificates the listeners accept.
    /// Set, every connection must present a client certificate one of them issued (mutual
    /// TLS); unset, none is asked for.
    pub client_ca_file: Option<std::path::PathBuf>,
    /// PEM file of certificate revocation lists from those authorities: a client certificate
    /// one of them revokes is refused. Needs `client_ca_file`.
    pub client_crl_file: Option<std::path::PathBuf>,
}

impl TlsSettings {
    /// Checks what can be checked without reading the files: both or neither. (The files are
    /// read at start and by `check-config` (`tls::load`), not by a reload of the tenant
    /// table, which a renewal caught half copied must not hold up.)
    ///
    /// # Errors
    /// The key that is missing.
    pub fn check(&self) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err(
                "tls.key_file: required with tls.cert_file (the certificate's private key)".into(),
            ),
            (None, Some(_)) => Err(
                "tls.cert_file: required with tls.key_file (the certificate the key belongs to)"
                    .into(),
            ),
            (None, None) if self.client_ca_file.is_some() => Err(
                "tls.client_ca_file: needs tls.cert_file and tls.key_file (client certificates are asked for over HTTPS only)"
                    .into(),
            ),
            _ if self.client_crl_file.is_some() && self.client_ca_file.is_none() => Err(
                "tls.client_crl_file: needs tls.client_ca_file (the authorities whose revocations it lists)"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest a request's body may take to arrive, from when the gateway starts reading it; a
    /// body still incomplete then is not waited for (408, and the connection closes).
    pub body_timeout_ms: u64,
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
    /// How long an idle client connection is kept open (every listener). Above the idle timeout
    /// of whatever keeps connections to the gateway (an AWS ALB's is 60 s, Google Cloud's load
    /// balancers' 600 s), so the client closes first and never sends a request on a connection
    /// the gateway is closing.
    pub keep_alive_secs: u64,
    /// The request header in which a proxy in front of the gateway, which verified the client's
    /// certificate itself, forwards the certificate's names (Envoy's `x-forwarded-client-cert`
    /// format): what `client_certificate_names` are checked against when the gateway does not
    /// verify client certificates itself. Read only from [`ApiSettings::client_cert_proxies`].
    pub client_cert_header: Option<String>,
    /// The addresses (`10.0.0.7`, `::1`) or networks (`10.0.0.0/8`) of the proxies trusted to
    /// set [`ApiSettings::client_cert_header`]; from any other peer it is ignored.
    pub client_cert_proxies: Vec<String>,
}

impl ApiSettings {
    /// The networks of [`ApiSettings::client_cert_proxies`], each checked by `validate`.
    pub fn client_cert_proxy_nets(&self) -> impl Iterator<Item = ipnet::IpNet> + '_ {
        self.client_cert_proxies.iter().filter_map(|p| proxy_net(p))
    }
}

/// An address (a network of one) or a network, as `api.client_cert_proxies` lists them.
pub fn proxy_net(text: &str) -> Option<ipnet::IpNet> {
    text.parse().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_body_bytes: 64 * 1024,
            body_timeout_ms: 10_000,
            miss_timeout_ms: 5_000,
            max_hints_per_call: 50,
            unauthenticated_rate_per_sec: 20.0,
            unauthenticated_burst: 100,
            keep_alive_secs: 75,
            client_cert_header: None,
            client_cert_proxies: vec![],
        }
    }
}

/// The most HTTP worker threads a listener may have (actix-web's own limit; it panics above).
pub const MAX_WORKERS: usize = 512;

/// A listener's `workers` setting is unset or from 1 to [`MAX_WORKERS`] (the gateway's and the
/// simulator's).
///
/// # Errors
/// Names `workers` and the range.
pub fn check_workers(workers: Option<usize>) -> Result<(), String> {
    if workers.is_some_and(|w| !(1..=MAX_WORKERS).contains(&w)) {
        return Err(format!("workers: must be from 1 to {MAX_WORKERS}"));
    }
    Ok(())
}

/// One QuickSight upstream: an account (or, for the single `[upstream]` table, every account the
/// tenants name) in one region, with its credentials, client bounds and call budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Its name in metrics (`upstream` label), `/state`, logs and errors.
    pub id: String,
    /// The AWS account it serves. Unset: every account (the single `[upstream]` table).
    pub account: Option<String>,
    /// Endpoint override (the simulator's URL). Unset: QuickSight's regional endpoint.
    pub endpoint_url: Option<String>,
    /// Region of the QuickSight endpoint and of the accounts' dashboards.
    pub region: String,
    /// Static credentials (simulator and tests only). Unset: the standard AWS credential chain.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// Assume this IAM role through STS (aws-config's assume-role provider, refreshed before
    /// expiry), with the static keys or the standard chain as the source identity.
    pub role_arn: Option<String>,
    /// `ExternalId` the role's trust policy requires.
    pub external_id: Option<String>,
    /// `RoleSessionName` (default `embedgate`).
    pub session_name: Option<String>,
    /// How long each set of assumed credentials lasts (STS: 900 to 43,200 s; default 3,600).
    pub duration_secs: Option<u64>,
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
            id: "default".into(),
            account: None,
            endpoint_url: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            role_arn: None,
            external_id: None,
            session_name: None,
            duration_secs: None,
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
    /// Most prefetches in flight at once, per upstream.
    pub concurrency: usize,
    /// Extra seconds of demand to hold beyond the measured refill lead time.
    pub safety_secs: f64,
    /// While the upstream budget has room to spare, stock up to this many seconds of each key's
    /// demand (never beyond what a URL's usable life can absorb), so a burst above the budget is
    /// served from the pool. 0 turns it off.
    pub surplus_secs: f64,
    /// Stock a key for its own request rate only if a request is at least this likely to arrive
    /// within a URL's usable life (0–1), judged by how many requests the key has shown over how
    /// long (see `refill::Shown`). Hinted and warm keys are pre-fetched regardless; a key asked
    /// for once is judged by its kind against `predict_min_probability`.
    pub min_probability: f64,
    /// Half-life of the demand estimate (the key's longer memory, for judging slow keys, has a
    /// fixed 600 s half-life).
    pub demand_half_life_secs: f64,
    /// Keys with no request for this long are forgotten.
    pub idle_forget_secs: u64,
    /// Most keys whose demand is tracked.
    pub max_tracked_keys: u64,
    /// How long a hint keeps its key warm.
    pub hint_ttl_secs: u64,
    /// Learn registered users' sessions (what follows what, who comes back) and stock the keys
    /// they predict with idle budget.
    pub sessions: bool,
    /// Stock a prediction (a session's, or a key asked for once, judged by how often its
    /// tenant's keys of its kind are asked again) only if it is at least this likely to be asked
    /// for within a URL's usable life (0–1): below one half a URL would more likely expire unused.
    pub predict_min_probability: f64,
    /// Most users whose sessions are remembered, per tenant.
    pub max_session_users: usize,
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
            sessions: true,
            predict_min_probability: 0.5,
            max_session_users: 10_000,
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
    /// Redis Sentinels (same URL forms, each with the Sentinel's own `user:pass@` if it takes
    /// AUTH), asked which server is the primary of `sentinel_master`: at start, and whenever
    /// the primary fails a heartbeat.
    pub sentinel_urls: Vec<String>,
    /// With `sentinel_urls`: the name the Sentinels monitor the primary under (`mymaster`), or a
    /// URL whose host is that name and which says how to reach the primary they name: its
    /// `user:pass@`, database, and `rediss://` for TLS (`rediss://embedgate:pw@mymaster/0`).
    pub sentinel_master: Option<String>,
    /// For `rediss://`: a PEM file of the certificate authorities to trust for the Redis
    /// server's certificate, instead of the system's roots (a self-hosted Redis with a private
    /// CA). Unset: the system's roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured), which
    /// trust ElastiCache's and MemoryDB's certificates.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Prefix of every key the gateway writes, so several fleets can share one Redis.
    pub prefix: String,
    /// Longest any Redis command may take before this replica stops using Redis and serves from
    /// its local pool and limits (degraded mode).
    pub timeout_ms: u64,
    /// How often a replica announces itself, pings its threads' idle connections (keep it below a
    /// Redis `timeout` that closes idle clients) and, while degraded, tries Redis again.
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
            sentinel_urls: vec![],
            sentinel_master: None,
            tls_ca_file: None,
            prefix: "embedgate:".into(),
            timeout_ms: 50,
            heartbeat_ms: 500,
            max_clock_offset_ms: 1_000,
        }
    }
}

/// The primary a Redis Sentinel set-up names, from `redis.sentinel_master`.
#[derive(Debug, Clone)]
pub struct SentinelPrimary {
    /// The name the Sentinels monitor it under.
    pub name: String,
    /// Reached over TLS (`rediss://`).
    pub tls: bool,
    /// User, password and database.
    pub login: redis::RedisConnectionInfo,
}

impl Settings {
    /// The upstreams in effect: `[[upstreams]]`, or the single `[upstream]` table.
    pub fn upstreams(&self) -> Vec<&UpstreamSettings> {
        if self.upstreams.is_empty() {
            vec![&self.upstream]
        } else {
            self.upstreams.iter().collect()
        }
    }
}

impl RedisSettings {
    pub fn enabled(&self) -> bool {
        self.url.is_some() || !self.cluster_urls.is_empty() || !self.sentinel_urls.is_empty()
    }

    /// The URLs in effect, each with the key it is set under.
    pub fn urls(&self) -> impl Iterator<Item = (String, &str)> {
        let single = self
            .url
            .iter()
            .map(|u| ("redis.url".to_string(), u.as_str()));
        let cluster = self
            .cluster_urls
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("redis.cluster_urls[{i}]"), u.as_str()));
        let sentinels = self
            .sentinel_urls
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("redis.sentinel_urls[{i}]"), u.as_str()));
        let master = self
            .sentinel_master
            .iter()
            .filter(|m| m.contains("://"))
            .map(|u| ("redis.sentinel_master".to_string(), u.as_str()));
        single.chain(cluster).chain(sentinels).chain(master)
    }

    /// The primary `sentinel_master` names: the name the Sentinels know it by, and how to reach
    /// the server they name (login, database; TLS for `rediss://`). A bare name: plain TCP, no
    /// login, database 0.
    ///
    /// # Errors
    /// Names `redis.sentinel_master` and what is wrong with it.
    pub fn sentinel_primary(&self) -> Result<Option<SentinelPrimary>, String> {
        let Some(master) = &self.sentinel_master else {
            return Ok(None);
        };
        if !master.contains("://") {
            let bad = |c: char| c.is_whitespace() || c.is_control() || "/@:#?".contains(c);
            if master.is_empty() || master.contains(bad) {
                return Err(String::from(
                    "redis.sentinel_master: not a name a Sentinel monitors (no spaces, '/', '@', ':', '#' or '?'; for a login, give a URL: redis://user:pass@mymaster/0)"
                ));
            }
            return Ok(Some(SentinelPrimary {
                name: master.clone(),
                tls: false,
                login: redis::RedisConnectionInfo::default(),
            }));
        }
        let info = redis::IntoConnectionInfo::into_connection_info(master.as_str())
            .map_err(|e| format!("redis.sentinel_master: {e}"))?;
        let (name, tls) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, _) => (host.clone(), false),
            redis::ConnectionAddr::TcpTls { host, .. } => (host.clone(), true),
            _ => {
                return Err(
                    "redis.sentinel_master: must start with redis:// or rediss:// (TLS)".into(),
                )
            }
        };
        if url::Url::parse(master).is_ok_and(|u| u.port().is_some()) {
            return Err(format!(
                "redis.sentinel_master: the Sentinels give the primary's address; name it without a port (rediss://user:pass@{name}/0)"
            ));
        }
        Ok(Some(SentinelPrimary {
            name,
            tls,
            login: info.redis_settings().clone(),
        }))
    }

    /// The certificate authorities of `tls_ca_file` (PEM), checked: every certificate in it
    /// parses and is a usable trust anchor, and there is at least one.
    ///
    /// # Errors
    /// Names `redis.tls_ca_file` and what is wrong with it.
    pub fn trusted_roots(&self) -> Result<Option<Vec<u8>>, String> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let Some(path) = &self.tls_ca_file else {
            return Ok(None);
        };
        let at = |e: &dyn std::fmt::Display| format!("redis.tls_ca_file: {}: {e}", path.display());
        let pem = std::fs::read(path).map_err(|e| at(&e))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| at(&format_args!("not a PEM certificate ({e})")))?;
            roots
                .add(cert)
                .map_err(|e| at(&format_args!("not a usable CA certificate ({e})")))?;
        }
        if roots.is_empty() {
            return Err(at(
                &"holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ));
        }
        Ok(Some(pem))
    }
}
