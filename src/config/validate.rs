//! Checks on loaded settings that serde cannot make: ranges, cross-field rules, unique ids.

use super::{PolicySettings, Settings};
use crate::model::domain::Origin;
use crate::model::names::{ExperienceKind, Feature};

impl Settings {
    /// Checks what serde cannot: ranges, cross-field rules, unique tenant ids.
    ///
    /// # Errors
    /// The first offending key and what is wrong with it.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |key: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(format!("{key}: must be a positive number"))
            }
        };
        if !self.upstreams.is_empty() && self.upstream != super::UpstreamSettings::default() {
            return Err(
                "upstream: set either [upstream] (one upstream) or [[upstreams]], not both".into(),
            );
        }
        let many = !self.upstreams.is_empty();
        let mut seen = std::collections::BTreeSet::new();
        for (i, u) in self.upstreams().into_iter().enumerate() {
            let at = if many {
                format!("upstreams[{i}]")
            } else {
                "upstream".to_string()
            };
            check_upstream(&at, u)?;
            if !seen.insert(u.id.as_str()) {
                return Err(format!("{at}.id: {:?} is used twice", u.id));
            }
            if many && u.account.is_none() {
                return Err(format!(
                    "{at}.account: required in [[upstreams]] (the AWS account it serves)"
                ));
            }
        }
        let mut scopes = std::collections::BTreeSet::new();
        for (i, u) in self.upstreams().into_iter().enumerate() {
            if !scopes.insert((u.account.as_deref(), u.region.as_str())) {
                return Err(format!(
                    "upstreams[{i}]: a second upstream for account {} in {}",
                    u.account.as_deref().unwrap_or("*"),
                    u.region
                ));
            }
        }
        if self.pool.min_remaining_secs >= crate::model::URL_VALIDITY_SECS {
            return Err("pool.min_remaining_secs: must be below 300 (a URL's validity)".into());
        }
        // A URL handed out on a miss or from a joined prefetch was fetched at most this long
        // ago; neither wait may eat the validity `min_remaining_secs` promises.
        let usable_ms = (crate::model::URL_VALIDITY_SECS - self.pool.min_remaining_secs) * 1000;
        let slowest = self.upstreams().iter().map(|u| u.timeout_ms).max();
        for (key, ms) in [
            ("upstream.timeout_ms", slowest.unwrap_or_default()),
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
        if !(r.predict_min_probability > 0.0 && r.predict_min_probability <= 1.0) {
            return Err("refill.predict_min_probability: must be above 0 and at most 1".into());
        }
        positive("refill.demand_half_life_secs", r.demand_half_life_secs)?;
        for (key, secs) in [
            ("refill.surplus_secs", r.surplus_secs),
            ("refill.safety_secs", r.safety_secs),
        ] {
            if !(secs >= 0.0 && secs.is_finite()) {
                return Err(format!("{key}: must be a number of seconds, 0 or more"));
            }
        }
        // Upper bounds a sane deployment never nears: past them, timers and sums of these
        // overflow (a tick of 2^63 ms, a heartbeat tripled) or a library refuses them at start
        // (tokio's semaphores, moka's idle time of at most 1,000 years).
        within("refill.tick_ms", r.tick_ms, 1, MINUTE_MS)?;
        within(
            "refill.concurrency",
            r.concurrency as u64,
            1,
            MAX_CONCURRENCY,
        )?;
        within("refill.idle_forget_secs", r.idle_forget_secs, 1, MONTH_SECS)?;
        within("refill.hint_ttl_secs", r.hint_ttl_secs, 0, DAY_SECS)?;
        let redis = &self.redis;
        let modes = [
            ("redis.url", redis.url.is_some()),
            ("redis.cluster_urls", !redis.cluster_urls.is_empty()),
            ("redis.sentinel_urls", !redis.sentinel_urls.is_empty()),
        ];
        let set: Vec<&str> = modes.iter().filter(|m| m.1).map(|m| m.0).collect();
        if let [first, second, ..] = set[..] {
            return Err(format!("{first} and {second}: set one of them, not both"));
        }
        match (redis.sentinel_urls.is_empty(), &redis.sentinel_master) {
            (false, None) => {
                return Err(
                    "redis.sentinel_master: required with redis.sentinel_urls: the name the Sentinels monitor the primary under".into(),
                )
            }
            (true, Some(_)) => {
                return Err(
                    "redis.sentinel_master: set only with redis.sentinel_urls (the Sentinels to ask)".into(),
                )
            }
            _ => {}
        }
        let primary = redis.sentinel_primary()?;
        for (key, u) in redis.urls() {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err(format!(
                    "{key}: must start with redis:// or rediss:// (TLS)"
                ));
            }
            // What the client will make of it, so a URL `serve` would refuse is refused here
            // (the client's words name no part of the URL, so no password is echoed).
            if u.contains('#') {
                return Err(format!(
                    "{key}: a URL fragment (#insecure) is not supported: the server's certificate is always verified; trust its CA with redis.tls_ca_file"
                ));
            }
            let info = redis::IntoConnectionInfo::into_connection_info(u)
                .map_err(|e| format!("{key}: {e}"))?;
            let sentinel = key.starts_with("redis.sentinel_urls");
            let db = info.redis_settings().db();
            if sentinel && db != 0 {
                return Err(format!(
                    "{key}: a Sentinel has no databases; drop the /{db} (the primary's database goes in redis.sentinel_master: redis://mymaster/{db})"
                ));
            }
            if !redis.cluster_urls.is_empty() && db != 0 {
                return Err(format!(
                    "{key}: a Redis Cluster has only database 0; drop the /{db} from the URL"
                ));
            }
            // The CAs are for the servers that hold the data; Sentinels may be reached over
            // TLS or not.
            if redis.tls_ca_file.is_some() && !sentinel && !u.starts_with("rediss://") {
                return Err(format!(
                    "{key}: redis.tls_ca_file is set, so the URL must be rediss:// (TLS)"
                ));
            }
        }
        if redis.tls_ca_file.is_some() && primary.as_ref().is_some_and(|p| !p.tls) {
            return Err(
                "redis.sentinel_master: redis.tls_ca_file is set, so give the primary as rediss://<name> (TLS)".into(),
            );
        }
        if !redis.cluster_urls.is_empty() {
            // The seeds together, as the client takes them (one TLS mode, user and password for
            // all); it reads them without connecting.
            redis::cluster::ClusterClientBuilder::new(redis.cluster_urls.clone())
                .build()
                .map_err(|e| {
                    // Its words ("Cannot use different password among initial nodes. -
                    // InvalidClientConfig") name no value, so no password is echoed.
                    let e = e.to_string();
                    format!(
                        "redis.cluster_urls: {}",
                        e.split(" - ").next().unwrap_or(&e)
                    )
                })?;
        }
        redis.trusted_roots()?;
        self.tls.check()?;
        within("redis.timeout_ms", redis.timeout_ms, 1, MINUTE_MS)?;
        within("redis.heartbeat_ms", redis.heartbeat_ms, 1, MINUTE_MS)?;
        if redis.prefix.contains(['{', '}']) {
            return Err(
                "redis.prefix: must not contain '{' or '}' (Redis Cluster hash tags)".into(),
            );
        }
        if !self.debug.clock_offset_secs.is_finite() {
            return Err("debug.clock_offset_secs: must be a number of seconds".into());
        }
        super::check_workers(self.workers)?;
        let listeners = [
            Some(("listen", self.listen)),
            Some(("admin_listen", self.admin_listen)),
            self.compat_listen.map(|a| ("compat_listen", a)),
        ];
        let listeners: Vec<_> = listeners.into_iter().flatten().collect();
        for (i, (key, addr)) in listeners.iter().enumerate() {
            if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| overlap(*a, *addr)) {
                return Err(format!(
                    "{key}: {addr} is also {other}'s port (one of them would not bind)"
                ));
            }
        }
        if let Some(level) = &self.log_level {
            crate::telemetry::check_level(level).map_err(|e| format!("log_level: {e}"))?;
        }
        if let Some(f) = &self.log_format {
            if f != "json" && f != "pretty" {
                return Err(format!("log_format: {f:?} is not \"json\" or \"pretty\""));
            }
        }
        if self.log_flush_ms.is_some_and(|ms| ms > MAX_LOG_FLUSH_MS) {
            return Err(format!(
                "log_flush_ms: must be at most {MAX_LOG_FLUSH_MS} (a crash loses up to this long of log lines)"
            ));
        }
        rate(
            "api.unauthenticated_rate_per_sec",
            self.api.unauthenticated_rate_per_sec,
        )?;
        if self.api.max_hints_per_call == 0 {
            return Err("api.max_hints_per_call: must be at least 1".into());
        }
        if self.api.unauthenticated_burst == 0 {
            return Err("api.unauthenticated_burst: must be at least 1".into());
        }
        refill_time(
            "api.unauthenticated_burst",
            self.api.unauthenticated_burst,
            self.api.unauthenticated_rate_per_sec,
        )?;
        if self.api.miss_timeout_ms == 0 || self.api.max_body_bytes == 0 {
            return Err("api.miss_timeout_ms and api.max_body_bytes: must be at least 1".into());
        }
        // 0 closes a connection after each answer; an hour is past any load balancer's idle
        // timeout (Google Cloud's, the longest, is 600 s).
        within("api.keep_alive_secs", self.api.keep_alive_secs, 0, 3_600)?;
        if !(1..=600_000).contains(&self.api.body_timeout_ms) {
            return Err("api.body_timeout_ms: must be from 1 to 600000 (10 minutes)".into());
        }
        self.check_forwarded_certificates()?;
        let mut seen = std::collections::HashSet::new();
        let mut key_owner = std::collections::HashMap::new();
        let mut access_key_owner = std::collections::HashMap::new();
        if let Some(key) = &self.master_key {
            check_master_key(key).map_err(|rule| {
                format!(
                    "master key ({} or master_key_file): {rule}",
                    super::loader::MASTER_KEY_ENV
                )
            })?;
        } else if self.compat_listen.is_some() {
            return Err(format!(
                "compat_listen: the QuickSight-compatible listener needs the master key tenants' secrets are derived from: set {} or master_key_file",
                super::loader::MASTER_KEY_ENV
            ));
        }
        let empty_key = empty_key_sha256();
        let upstreams = self.upstreams();
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
            if t.api_key_sha256.is_empty() && t.access_key_ids.is_empty() {
                return Err(format!(
                    "{}: at least one key hash is required (or access_key_ids, for a tenant that only uses the QuickSight-compatible listener)",
                    k("api_key_sha256")
                ));
            }
            for id in &t.access_key_ids {
                check_access_key_id(id)
                    .map_err(|rule| format!("{}: {rule}", k("access_key_ids")))?;
                if let Some(other) = access_key_owner.insert(id.as_str(), &t.id) {
                    return Err(format!(
                        "{}: {id:?} is also listed for tenant {other:?}; each key id must identify one tenant",
                        k("access_key_ids")
                    ));
                }
            }
            if !t.client_certificate_names.is_empty()
                && self.tls.client_ca_file.is_none()
                && self.api.client_cert_header.is_none()
            {
                return Err(format!(
                    "{}: needs tls.client_ca_file (the names are read from the client certificates it verifies) or api.client_cert_header (read from a proxy that verifies them)",
                    k("client_certificate_names")
                ));
            }
            for name in &t.client_certificate_names {
                if name.is_empty() || name.trim() != name {
                    return Err(format!(
                        "{}: {name:?} must not be empty or start or end with whitespace",
                        k("client_certificate_names")
                    ));
                }
            }
            for h in &t.api_key_sha256 {
                if h.eq_ignore_ascii_case(&empty_key) {
                    return Err(format!(
                        "{}: {h:?} is the hash of an empty key, which never authenticates",
                        k("api_key_sha256")
                    ));
                }
                if h.len() != 64 || hex::decode(h).is_err() {
                    return Err(format!(
                        "{}: {h:?} is not a hex SHA-256 (64 hex digits)",
                        k("api_key_sha256")
                    ));
                }
            }
            rate(&k("rate_per_sec"), t.rate_per_sec)?;
            positive(&k("upstream_weight"), t.upstream_weight)?;
            if t.burst == 0 {
                return Err(format!("{}: must be at least 1", k("burst")));
            }
            refill_time(&k("burst"), t.burst, t.rate_per_sec)?;
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
            check_session_tags(p).map_err(|(at, rule)| format!("{}: {rule}", k(&at)))?;
            check_reach(t, &upstreams).map_err(|(at, rule)| format!("{}: {rule}", k(at)))?;
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

/// The checks of one upstream table, its keys prefixed with `at`.
/// The slowest and fastest rates (per second) a limit may be set to: one call in about eleven
/// days, a billion a second (a period of one nanosecond, the limiters' resolution). Outside them
/// a limit's period is not a duration the limiters can hold: 1e-300 stopped the gateway at
/// start, and above a billion a second the period rounded to zero and the tenant was silently
/// held to one request a second.
const RATES: (f64, f64) = (1e-6, 1e9);

const MINUTE_MS: u64 = 60_000;
const DAY_SECS: u64 = 86_400;
const MONTH_SECS: u64 = 30 * DAY_SECS;
/// Most calls or prefetches in flight at once.
const MAX_CONCURRENCY: u64 = 100_000;

/// The hash of the empty key (SHA-256, as `tenant::hash_key` makes it; `config` cannot import
/// `tenant`, which reads it): listed as a key's hash, it would let any request without a key in
/// (a missing `Bearer` token reads as ""), so it is refused.
fn empty_key_sha256() -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b""))
}

/// Whether two listeners would claim the same socket: the same port (not 0, which asks for any
/// free one) on the same address, or on any address where one of them is the wildcard.
fn overlap(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `v` is from `lo` to `hi`.
fn within(key: &str, v: u64, lo: u64, hi: u64) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{key}: must be from {lo} to {hi}"))
    }
}

/// The longest a full burst may take to refill at its rate, in seconds (ten years): the
/// limiters count in nanoseconds, and a period times a burst past 2^64 ns overflowed at start
/// (rate_per_sec = 0.000001 with burst = 4294967295).
const MAX_REFILL_SECS: f64 = 315_360_000.0;

/// A `burst` at `rate` per second refills within [`MAX_REFILL_SECS`].
fn refill_time(key: &str, burst: u32, rate: f64) -> Result<(), String> {
    if f64::from(burst) / rate <= MAX_REFILL_SECS {
        Ok(())
    } else {
        Err(format!(
            "{key}: a full burst refills in burst / rate_per_sec seconds, which must be at most {MAX_REFILL_SECS} (ten years)"
        ))
    }
}

/// `v` is a rate within [`RATES`].
fn rate(key: &str, v: f64) -> Result<(), String> {
    if (RATES.0..=RATES.1).contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "{key}: must be a rate per second from {} to {}",
            RATES.0, RATES.1
        ))
    }
}

fn check_upstream(at: &str, u: &super::UpstreamSettings) -> Result<(), String> {
    if u.id.is_empty()
        || !u
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{at}.id: must be letters, digits, '-' or '_' (it is a metrics label)"
        ));
    }
    if let Some(a) = &u.account {
        if !crate::model::validate::is_account_id(a) {
            return Err(format!("{at}.account: must be a 12-digit AWS account id"));
        }
    }
    if !is_region(&u.region) {
        return Err(format!(
            "{at}.region: must be an AWS region code such as us-east-1 (lower-case words and a number, joined by '-')"
        ));
    }
    if let Some(endpoint) = &u.endpoint_url {
        // The SDK takes any string and fails each call as a connection failure, which read as
        // "QuickSight is unavailable" on every request.
        let ok = url::Url::parse(endpoint).is_ok_and(|e| {
            matches!(e.scheme(), "http" | "https")
                && e.host().is_some()
                && e.username().is_empty()
                && e.password().is_none()
                && e.query().is_none()
                && e.fragment().is_none()
        });
        if !ok {
            return Err(format!(
                "{at}.endpoint_url: must be an http:// or https:// URL with a host and no credentials, query or fragment"
            ));
        }
    }
    rate(&format!("{at}.rate_per_sec"), u.rate_per_sec)?;
    rate(&format!("{at}.min_rate_per_sec"), u.min_rate_per_sec)?;
    rate(&format!("{at}.recovery_per_sec"), u.recovery_per_sec)?;
    if u.min_rate_per_sec > u.rate_per_sec {
        return Err(format!(
            "{at}.min_rate_per_sec: must not exceed {at}.rate_per_sec"
        ));
    }
    if !(0.0 < u.throttle_backoff && u.throttle_backoff < 1.0) {
        return Err(format!(
            "{at}.throttle_backoff: must be between 0 and 1 (exclusive)"
        ));
    }
    if !(0.0..1.0).contains(&u.miss_reserve) {
        return Err(format!("{at}.miss_reserve: must be in [0, 1)"));
    }
    if u.burst == 0 || u.max_concurrency == 0 || u.timeout_ms == 0 {
        return Err(format!(
            "{at}.burst, {at}.max_concurrency and {at}.timeout_ms: must be at least 1"
        ));
    }
    within(
        &format!("{at}.max_concurrency"),
        u.max_concurrency as u64,
        1,
        MAX_CONCURRENCY,
    )?;
    if u.access_key_id.is_some() != u.secret_access_key.is_some() {
        return Err(format!(
            "{at}.access_key_id and {at}.secret_access_key: set both or neither"
        ));
    }
    let role_only = [
        ("external_id", u.external_id.is_some()),
        ("session_name", u.session_name.is_some()),
        ("duration_secs", u.duration_secs.is_some()),
    ];
    if u.role_arn.is_none() {
        if let Some((key, _)) = role_only.iter().find(|(_, set)| *set) {
            return Err(format!("{at}.{key}: only with {at}.role_arn"));
        }
    }
    if let Some(arn) = &u.role_arn {
        let ok = arn
            .strip_prefix("arn:")
            .and_then(|r| r.split_once(":iam::"))
            .and_then(|(_, r)| r.split_once(":role/"))
            .is_some_and(|(acct, name)| {
                crate::model::validate::is_account_id(acct) && !name.is_empty()
            });
        if !ok {
            return Err(format!(
                "{at}.role_arn: must be arn:<partition>:iam::<account>:role/<name>"
            ));
        }
    }
    if let Some(d) = u.duration_secs {
        if !(900..=43_200).contains(&d) && u.endpoint_url.is_none() {
            return Err(format!(
                "{at}.duration_secs: STS allows 900 to 43200 seconds"
            ));
        }
    }
    Ok(())
}

/// An AWS region code: two or more lower-case words, then a number, joined by `-` (`us-east-1`,
/// `us-gov-west-1`, `ap-southeast-3`, `us-isob-east-1`).
fn is_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let Some((number, words)) = parts.split_last() else {
        return false;
    };
    words.len() >= 2
        && words
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        && !number.is_empty()
        && number.len() <= 2
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// Shortest master key accepted, in bytes.
pub const MIN_MASTER_KEY_BYTES: usize = 32;

/// The longest `log_flush_ms`: the log lines a process killed outright loses.
pub const MAX_LOG_FLUSH_MS: u64 = 10_000;

/// Why a master key is not usable.
pub fn check_master_key(key: &super::Secret) -> Result<(), String> {
    if key.expose().len() < MIN_MASTER_KEY_BYTES {
        return Err(format!(
            "the master key must be at least {MIN_MASTER_KEY_BYTES} bytes (e.g. `openssl rand -base64 48`)"
        ));
    }
    Ok(())
}

/// Why an access key id is not usable: 16 to 128 upper-case letters and digits, as AWS's.
pub fn check_access_key_id(id: &str) -> Result<(), String> {
    if !(16..=128).contains(&id.len())
        || !id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(format!(
            "{id:?} must be 16 to 128 upper-case letters and digits (`embedgate tenant-credentials` makes one)"
        ));
    }
    Ok(())
}

/// What a tenant's settings name outside its own table: each namespace is one QuickSight could
/// read, each upstream is configured and serves one of the tenant's accounts, and each of those
/// accounts (the default one included) is served by an upstream the tenant may use. A slip in any
/// of them only narrows what the tenant may do, so nothing else would say so: every request it
/// touches would be refused at run time, with nothing at start saying why.
fn check_reach(
    t: &super::TenantSettings,
    upstreams: &[&super::UpstreamSettings],
) -> Result<(), (&'static str, String)> {
    use crate::model::validate::{is_namespace, NAMESPACE_RULE};
    let p = &t.policy;
    if let Some(ns) = p.namespaces.iter().find(|ns| !is_namespace(ns)) {
        return Err(("policy.namespaces", format!("{ns:?} {NAMESPACE_RULE}")));
    }
    // The accounts the tenant may use, and the setting that names them.
    let (accounts, named_by): (Vec<&String>, _) = if p.accounts.is_empty() {
        (t.default_account.iter().collect(), "default_account")
    } else {
        (p.accounts.iter().collect(), "policy.accounts")
    };
    if let Some(a) = t.default_account.as_ref().filter(|a| !accounts.contains(a)) {
        return Err((
            "default_account",
            format!(
                "{a:?} is not one of policy.accounts, so every request that omits AwsAccountId would be refused"
            ),
        ));
    }
    for id in &p.upstreams {
        let Some(u) = upstreams.iter().find(|u| &u.id == id) else {
            let ids: Vec<&str> = upstreams.iter().map(|u| u.id.as_str()).collect();
            return Err((
                "policy.upstreams",
                format!(
                    "{id:?} is not the id of an upstream (configured: {})",
                    ids.join(", ")
                ),
            ));
        };
        if let Some(a) = u.account.as_ref().filter(|a| !accounts.contains(a)) {
            return Err((
                "policy.upstreams",
                format!("{id:?} serves account {a}, which the tenant may not use"),
            ));
        }
    }
    for a in accounts {
        let reaches = |u: &&super::UpstreamSettings| {
            u.account.as_ref().is_none_or(|x| x == a)
                && (p.upstreams.is_empty() || p.upstreams.contains(&u.id))
        };
        if !upstreams.iter().any(reaches) {
            return Err((
                named_by,
                format!("{a:?} is served by no upstream the tenant may use"),
            ));
        }
    }
    Ok(())
}

/// A policy's session tag settings: a required tag must be one the policy allows, and a pattern
/// with a wildcard other than a bare `*` needs its key's rule, since QuickSight may read one value
/// as several or as every value. Returns the setting at fault and the rule it breaks.
fn check_session_tags(p: &PolicySettings) -> Result<(), (String, String)> {
    if let Some(key) = p
        .required_session_tags
        .iter()
        .find(|k| !p.session_tags.contains_key(*k))
    {
        return Err((
            "policy.required_session_tags".into(),
            format!("{key:?} is not a key of policy.session_tags, so no request could carry it"),
        ));
    }
    for (key, patterns) in &p.session_tags {
        if patterns.iter().any(|v| v == "*") || p.session_tag_rules.contains_key(key) {
            continue;
        }
        if let Some(v) = patterns.iter().find(|v| v.contains(['*', '?'])) {
            return Err((
                format!("policy.session_tags.{key}"),
                format!(
                    "{v:?} has a wildcard, and QuickSight may read one value as several (the \
                     datasets' TagMultiValueDelimiter) or as every value (their MatchAllValue), \
                     which the pattern would not bound: declare the datasets' tag rule as \
                     policy.session_tag_rules.{key} = {{ multi_value_delimiter = \"...\", \
                     match_all_value = \"...\" }} (empty where the rule has none)"
                ),
            ));
        }
    }
    for (key, rule) in &p.session_tag_rules {
        let at = format!("policy.session_tag_rules.{key}");
        if !p.session_tags.contains_key(key) {
            return Err((at, "names a tag policy.session_tags does not allow".into()));
        }
        if rule.multi_value_delimiter.chars().count() > 10 {
            return Err((
                format!("{at}.multi_value_delimiter"),
                "must be at most 10 characters (QuickSight's TagMultiValueDelimiter)".into(),
            ));
        }
        if rule.match_all_value.chars().count() > 256 {
            return Err((
                format!("{at}.match_all_value"),
                "must be at most 256 characters (a session tag value's limit)".into(),
            ));
        }
    }
    Ok(())
}

impl Settings {
    /// `api.client_cert_header` and `api.client_cert_proxies` go together, name a header and
    /// addresses, and are not set beside the gateway's own client certificates.
    fn check_forwarded_certificates(&self) -> Result<(), String> {
        let api = &self.api;
        for proxy in &api.client_cert_proxies {
            if super::proxy_net(proxy).is_none() {
                return Err(format!(
                    "api.client_cert_proxies: {proxy:?} is not an address or a network (10.0.0.7, 10.0.0.0/8, ::1)"
                ));
            }
        }
        match &api.client_cert_header {
            None if !api.client_cert_proxies.is_empty() => Err(
                "api.client_cert_proxies: needs api.client_cert_header (the header those proxies set)".into(),
            ),
            None => Ok(()),
            Some(h) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => Err(format!(
                "api.client_cert_header: {h:?} is not an HTTP header name"
            )),
            Some(_) if api.client_cert_proxies.is_empty() => Err(
                "api.client_cert_header: needs api.client_cert_proxies (the addresses of the proxies trusted to set it; from any other peer it could be forged)".into(),
            ),
            Some(_) if self.tls.client_ca_file.is_some() => Err(
                "api.client_cert_header: not with tls.client_ca_file: the gateway verifies client certificates itself, or a proxy in front of it does, not both".into(),
            ),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TenantSettings;

    fn with_tenant() -> Settings {
        let mut s = Settings::default();
        let tenant: TenantSettings =
            toml::from_str("id = \"a\"\napi_key_sha256 = []\naccess_key_ids = []\n").unwrap();
        s.tenants.push(TenantSettings {
            api_key_sha256: vec!["0".repeat(64)],
            ..tenant
        });
        s
    }

    /// Why a valid table changed by `change` is refused.
    fn refusal(change: impl FnOnce(&mut Settings)) -> String {
        let mut s = with_tenant();
        change(&mut s);
        s.validate().unwrap_err()
    }

    /// A tenant bound to client certificate names needs the authorities that verify them, and
    /// names a certificate can carry.
    #[test]
    fn client_certificate_names_need_client_authorities_and_real_names() {
        let e = refusal(|s| s.tenants[0].client_certificate_names = vec!["portal".into()]);
        assert!(
            e.starts_with("tenants[0].client_certificate_names: needs tls.client_ca_file"),
            "{e}"
        );
        let with_cas = |s: &mut Settings| {
            s.tls.cert_file = Some("tls.crt".into());
            s.tls.key_file = Some("tls.key".into());
            s.tls.client_ca_file = Some("clients.pem".into());
        };
        for bad in ["", " portal"] {
            let e = refusal(|s| {
                with_cas(s);
                s.tenants[0].client_certificate_names = vec![bad.into()];
            });
            assert!(
                e.starts_with("tenants[0].client_certificate_names: ")
                    && e.contains("must not be empty"),
                "{e}"
            );
        }
        let mut s = with_tenant();
        with_cas(&mut s);
        s.tenants[0].client_certificate_names = vec!["portal.acme.example".into()];
        s.validate().unwrap();
    }

    /// A proxy's forwarded names need the header and the proxies trusted to set it, real
    /// addresses, and no client authorities of the gateway's own beside them; with them a
    /// tenant may list names without `tls.client_ca_file`.
    #[test]
    fn forwarded_client_certificates_need_a_header_and_the_proxies_that_set_it() {
        let forwarding = |s: &mut Settings| {
            s.api.client_cert_header = Some("x-forwarded-client-cert".into());
            s.api.client_cert_proxies = vec!["10.0.0.0/8".into(), "::1".into()];
        };
        type Change = fn(&mut Settings);
        let cases: [(Change, &str); 5] = [
            (
                |s| s.api.client_cert_proxies = vec!["10.0.0.1".into()],
                "api.client_cert_proxies: needs api.client_cert_header",
            ),
            (
                |s| s.api.client_cert_header = Some("x-forwarded-client-cert".into()),
                "api.client_cert_header: needs api.client_cert_proxies",
            ),
            (
                |s| {
                    s.api.client_cert_header = Some("x forwarded".into());
                    s.api.client_cert_proxies = vec!["10.0.0.1".into()];
                },
                "api.client_cert_header: \"x forwarded\" is not an HTTP header name",
            ),
            (
                |s| {
                    s.api.client_cert_header = Some("x-forwarded-client-cert".into());
                    s.api.client_cert_proxies = vec!["10.0.0.0/33".into()];
                },
                "api.client_cert_proxies: \"10.0.0.0/33\" is not an address or a network",
            ),
            (
                |s| {
                    s.api.client_cert_header = Some("x-forwarded-client-cert".into());
                    s.api.client_cert_proxies = vec!["10.0.0.1".into()];
                    s.tls.cert_file = Some("tls.crt".into());
                    s.tls.key_file = Some("tls.key".into());
                    s.tls.client_ca_file = Some("clients.pem".into());
                },
                "api.client_cert_header: not with tls.client_ca_file",
            ),
        ];
        for (change, expected) in cases {
            let e = refusal(change);
            assert!(e.starts_with(expected), "{e}");
        }
        let mut s = with_tenant();
        forwarding(&mut s);
        s.tenants[0].client_certificate_names = vec!["spiffe://acme.example/portal".into()];
        s.validate().unwrap();
    }

    /// Session tag settings that no request could meet, or that cannot bound what a value
    /// grants, are refused at start naming the setting (before, a required tag the policy did
    /// not allow made every anonymous request a 403).
    #[test]
    fn session_tag_settings_no_request_could_meet_are_refused_naming_the_key() {
        use crate::config::TagRule;
        let tags = |s: &mut Settings| {
            let p = &mut s.tenants[0].policy;
            p.session_tags = [("tenant".to_string(), vec!["a-*".to_string()])].into();
            p.session_tag_rules = [("tenant".to_string(), TagRule::default())].into();
            p.required_session_tags = vec!["tenant".into()];
        };
        let mut s = with_tenant();
        tags(&mut s);
        assert_eq!(s.validate(), Ok(()));
        type Change = fn(&mut PolicySettings);
        let cases: &[(Change, &str)] = &[
            (
                |p| p.required_session_tags = vec!["tenant".into(), "tenent".into()],
                "tenants[0].policy.required_session_tags: \"tenent\"",
            ),
            (
                |p| p.session_tag_rules.clear(),
                "tenants[0].policy.session_tags.tenant: \"a-*\" has a wildcard",
            ),
            (
                |p| {
                    p.session_tag_rules
                        .insert("region".into(), TagRule::default());
                },
                "tenants[0].policy.session_tag_rules.region: ",
            ),
            (
                |p| {
                    p.session_tag_rules
                        .get_mut("tenant")
                        .unwrap()
                        .multi_value_delimiter = "-".repeat(11)
                },
                "tenants[0].policy.session_tag_rules.tenant.multi_value_delimiter: ",
            ),
        ];
        for (change, starts) in cases {
            let e = refusal(|s| {
                tags(s);
                change(&mut s.tenants[0].policy);
            });
            assert!(e.starts_with(starts), "{e}");
        }
    }

    /// A namespace, upstream or account a tenant names but cannot reach is refused at start
    /// naming the setting. Each passed before, and every request it touched was refused at run
    /// time (a 403 or a 400) with nothing at start saying why.
    #[test]
    fn a_policy_naming_what_the_tenant_cannot_reach_is_refused_naming_the_key() {
        use crate::config::UpstreamSettings;
        const US: &str = "111122223333";
        const EU: &str = "222233334444";
        let two = |s: &mut Settings| {
            let up = |id: &str, account: &str, region: &str| UpstreamSettings {
                id: id.into(),
                account: Some(account.into()),
                region: region.into(),
                ..UpstreamSettings::default()
            };
            s.upstreams = vec![up("us", US, "us-east-1"), up("eu", EU, "eu-west-1")];
            let t = &mut s.tenants[0];
            t.default_account = Some(US.into());
            t.policy.accounts = vec![US.into(), EU.into()];
            t.policy.upstreams = vec!["us".into(), "eu".into()];
            t.policy.namespaces = vec!["default".into(), "acme.eu_1-x".into()];
        };
        let mut s = with_tenant();
        two(&mut s);
        assert_eq!(s.validate(), Ok(()));
        type Change = fn(&mut TenantSettings);
        let cases: &[(Change, &str)] = &[
            (
                |t| t.policy.namespaces.push("acme eu".into()),
                "tenants[0].policy.namespaces: \"acme eu\" must be 1-64 characters",
            ),
            (
                |t| t.policy.namespaces.push(String::new()),
                "tenants[0].policy.namespaces: \"\" must be",
            ),
            (
                |t| t.policy.namespaces.push("n".repeat(65)),
                "tenants[0].policy.namespaces: ",
            ),
            (
                |t| t.policy.upstreams = vec!["us".into(), "eu-prod".into()],
                "tenants[0].policy.upstreams: \"eu-prod\" is not the id of an upstream (configured: us, eu)",
            ),
            (
                |t| t.policy.accounts = vec![US.into()],
                "tenants[0].policy.upstreams: \"eu\" serves account 222233334444, which the tenant may not use",
            ),
            (
                |t| t.policy.upstreams = vec!["us".into()],
                "tenants[0].policy.accounts: \"222233334444\" is served by no upstream the tenant may use",
            ),
            (
                |t| t.policy.accounts.push("999988887777".into()),
                "tenants[0].policy.accounts: \"999988887777\" is served by no upstream",
            ),
            (
                |t| t.default_account = Some("999988887777".into()),
                "tenants[0].default_account: \"999988887777\" is not one of policy.accounts",
            ),
            (
                |t| {
                    t.policy.accounts.clear();
                    t.policy.upstreams = vec!["us".into()];
                    t.default_account = Some(EU.into());
                },
                "tenants[0].policy.upstreams: \"us\" serves account 111122223333",
            ),
            (
                |t| {
                    t.policy.accounts.clear();
                    t.policy.upstreams.clear();
                    t.default_account = Some("999988887777".into());
                },
                "tenants[0].default_account: \"999988887777\" is served by no upstream",
            ),
        ];
        for (change, starts) in cases {
            let e = refusal(|s| {
                two(s);
                change(&mut s.tenants[0]);
            });
            assert!(e.starts_with(starts), "{e}");
        }
        // The single [upstream] table serves every account; without policy.accounts the
        // default account is the tenant's one.
        let mut s = with_tenant();
        s.tenants[0].default_account = Some(EU.into());
        s.tenants[0].policy.upstreams = vec!["default".into()];
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn an_upstream_region_or_endpoint_the_sdk_cannot_use_is_refused_naming_the_key() {
        // Each passed check-config, and serve then answered every miss 503 "QuickSight is
        // unavailable" (a connection failure to a string that is no endpoint).
        for (region, endpoint, starts) in [
            ("us east 1", None, "upstream.region: "),
            ("US-EAST-1", None, "upstream.region: "),
            ("us-east", None, "upstream.region: "),
            ("", None, "upstream.region: "),
            ("us-east-1", Some("not a url"), "upstream.endpoint_url: "),
            ("us-east-1", Some("ftp://x"), "upstream.endpoint_url: "),
            ("us-east-1", Some("http://"), "upstream.endpoint_url: "),
            (
                "us-east-1",
                Some("https://user:pw@quicksight.example"),
                "upstream.endpoint_url: ",
            ),
        ] {
            let e = refusal(|s| {
                s.upstream.region = region.into();
                s.upstream.endpoint_url = endpoint.map(String::from);
            });
            assert!(e.starts_with(starts), "{region} {endpoint:?}: {e}");
            assert!(!e.contains("pw"), "a password is never echoed: {e}");
        }
        for (region, endpoint) in [
            ("us-east-1", None),
            ("us-gov-west-1", None),
            ("ap-southeast-3", None),
            ("us-isob-east-1", None),
            ("eu-west-1", Some("http://127.0.0.1:4599")),
            (
                "us-east-1",
                Some("https://quicksight.us-east-1.amazonaws.com/"),
            ),
        ] {
            let mut s = with_tenant();
            s.upstream.region = region.into();
            s.upstream.endpoint_url = endpoint.map(String::from);
            assert_eq!(s.validate(), Ok(()), "{region} {endpoint:?}");
        }
    }

    #[test]
    fn limits_and_durations_a_limiter_cannot_hold_are_refused_naming_the_key() {
        assert_eq!(with_tenant().validate(), Ok(()));
        type Set = fn(&mut Settings, f64);
        let cases: &[(&str, Set, &[f64])] = &[
            (
                "tenants[0].rate_per_sec",
                |s, v| s.tenants[0].rate_per_sec = v,
                &[1e-300, 1e10, f64::NAN, f64::INFINITY],
            ),
            (
                "api.unauthenticated_rate_per_sec",
                |s, v| s.api.unauthenticated_rate_per_sec = v,
                &[1e-300, 1e12],
            ),
            (
                "upstream.rate_per_sec",
                |s, v| s.upstream.rate_per_sec = v,
                &[1e12],
            ),
            (
                "upstream.recovery_per_sec",
                |s, v| s.upstream.recovery_per_sec = v,
                &[-1.0, 0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY],
            ),
            (
                "refill.safety_secs",
                |s, v| s.refill.safety_secs = v,
                &[-1.0, f64::NAN, f64::INFINITY],
            ),
        ];
        for (key, set, values) in cases {
            for v in *values {
                let e = refusal(|s| set(s, *v));
                assert!(e.starts_with(&format!("{key}: ")), "{key} = {v}: {e}");
            }
        }
        // The ends of the range hold: one request in a thousand seconds (what the benchmarks
        // give a tenant that must stay refused) and a billion a second (their unlimited one).
        for v in [0.001, 1e9] {
            let mut s = with_tenant();
            s.tenants[0].rate_per_sec = v;
            assert_eq!(s.validate(), Ok(()), "{v}");
        }
        type SetInt = fn(&mut Settings, u64);
        let ints: &[(&str, SetInt, &[u64])] = &[
            ("refill.tick_ms", |s, v| s.refill.tick_ms = v, &[0, 1 << 63]),
            (
                "refill.concurrency",
                |s, v| s.refill.concurrency = v as usize,
                &[0, 1 << 62],
            ),
            (
                "upstream.max_concurrency",
                |s, v| s.upstream.max_concurrency = v as usize,
                &[1 << 62],
            ),
            (
                "refill.idle_forget_secs",
                |s, v| s.refill.idle_forget_secs = v,
                &[0, 1 << 62],
            ),
            (
                "refill.hint_ttl_secs",
                |s, v| s.refill.hint_ttl_secs = v,
                &[1 << 60],
            ),
            (
                "redis.timeout_ms",
                |s, v| s.redis.timeout_ms = v,
                &[0, 1 << 62],
            ),
            (
                "redis.heartbeat_ms",
                |s, v| s.redis.heartbeat_ms = v,
                &[0, 1 << 63],
            ),
        ];
        for (key, set, values) in ints {
            for v in *values {
                let e = refusal(|s| set(s, *v));
                assert!(
                    e.starts_with(&format!("{key}: must be from ")),
                    "{key} = {v}: {e}"
                );
            }
        }
        let e = refusal(|s| (s.tenants[0].rate_per_sec, s.tenants[0].burst) = (1e-6, u32::MAX));
        assert!(
            e.starts_with("tenants[0].burst: a full burst refills"),
            "{e}"
        );
        let e = refusal(|s| {
            let api = &mut s.api;
            (api.unauthenticated_rate_per_sec, api.unauthenticated_burst) = (0.001, 1_000_000);
        });
        assert!(e.starts_with("api.unauthenticated_burst: "), "{e}");
        for bad in ["infp", "", "debug,embedgate=loud", "info,[=debug"] {
            let e = refusal(|s| s.log_level = Some(bad.into()));
            assert!(e.starts_with("log_level: "), "{bad:?}: {e}");
        }
        for good in [
            "info",
            "WARN",
            "debug,hyper=info",
            "embedgate::api=trace,warn",
        ] {
            let mut s = with_tenant();
            s.log_level = Some(good.into());
            assert_eq!(s.validate(), Ok(()), "{good:?}");
        }
        for (listen, admin) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
        ] {
            let e = refusal(|s| {
                (s.listen, s.admin_listen) = (listen.parse().unwrap(), admin.parse().unwrap())
            });
            assert!(
                e.starts_with("admin_listen: 127.0.0.1:8080 is also listen's port"),
                "{e}"
            );
        }
        let e = refusal(|s| s.compat_listen = Some(s.admin_listen));
        assert!(
            e.starts_with("compat_listen: 127.0.0.1:9464 is also admin_listen's port"),
            "{e}"
        );
        for (listen, admin) in [
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("127.0.0.1:8080", "127.0.0.2:8080"),
        ] {
            let mut s = with_tenant();
            (s.listen, s.admin_listen) = (listen.parse().unwrap(), admin.parse().unwrap());
            assert_eq!(s.validate(), Ok(()), "{listen} {admin}");
        }
        let e = refusal(|s| s.tenants[0].api_key_sha256 = vec![empty_key_sha256().to_uppercase()]);
        assert!(e.starts_with("tenants[0].api_key_sha256: "), "{e}");
        for workers in [0, 513] {
            let e = refusal(|s| s.workers = Some(workers));
            assert!(e.starts_with("workers: must be from 1 to 512"), "{e}");
        }
        let e = refusal(|s| s.api.keep_alive_secs = 3_601);
        assert!(
            e.starts_with("api.keep_alive_secs: must be from 0 to 3600"),
            "{e}"
        );
        let e = refusal(|s| s.api.max_hints_per_call = 0);
        assert!(e.starts_with("api.max_hints_per_call: "), "{e}");
    }

    #[test]
    fn a_redis_url_or_ca_file_serve_would_refuse_is_refused_naming_the_key() {
        let dir = std::env::temp_dir().join(format!("embedgate-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca = write(
            "ca.pem",
            &rcgen::generate_simple_self_signed(vec!["redis.internal".into()])
                .unwrap()
                .cert
                .pem(),
        );
        let not_pem = write("notes.txt", "trust me\n");
        let broken = write(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let missing = dir.join("missing.pem");
        // (redis.url, or the cluster's seeds when it has a comma; redis.tls_ca_file; the refusal)
        let cases: [(&str, Option<&std::path::PathBuf>, &str); 11] = [
            (
                "redis://a:1,rediss://b:2",
                None,
                "redis.cluster_urls: Cannot use different TLS modes",
            ),
            (
                "redis://:pw@a:1,redis://b:2",
                None,
                "redis.cluster_urls: Cannot use different password",
            ),
            (
                "redis://a:1/3,redis://b:2/3",
                None,
                "redis.cluster_urls[0]: a Redis Cluster has only database 0",
            ),
            ("redis://:pw@127.0.0.1:99999/0", None, "redis.url: "),
            ("redis://127.0.0.1:6379/zz", None, "redis.url: "),
            (
                "rediss://127.0.0.1:6379/#insecure",
                None,
                "redis.url: a URL fragment (#insecure) is not supported",
            ),
            ("redis://a:1,redis://", None, "redis.cluster_urls[1]: "),
            (
                "redis://127.0.0.1:6379",
                Some(&ca),
                "redis.url: redis.tls_ca_file is set, so the URL must be rediss://",
            ),
            (
                "rediss://127.0.0.1:6379",
                Some(&missing),
                "redis.tls_ca_file: ",
            ),
            (
                "rediss://127.0.0.1:6379",
                Some(&not_pem),
                "redis.tls_ca_file: ",
            ),
            (
                "rediss://127.0.0.1:6379",
                Some(&broken),
                "redis.tls_ca_file: ",
            ),
        ];
        for (urls, ca, starts) in cases {
            let e = refusal(|s| {
                if urls.contains(',') {
                    s.redis.cluster_urls = urls.split(',').map(String::from).collect();
                } else {
                    s.redis.url = Some(urls.into());
                }
                s.redis.tls_ca_file = ca.cloned();
            });
            assert!(e.starts_with(starts), "{urls}: {e}");
            assert!(!e.contains("pw"), "a password is never echoed: {e}");
        }
        let mut s = with_tenant();
        s.redis.url = Some("rediss://:pw@127.0.0.1:6379/1".into());
        s.redis.tls_ca_file = Some(ca.clone());
        assert_eq!(s.validate(), Ok(()));
        // Sentinel: (redis.sentinel_urls, redis.sentinel_master, redis.tls_ca_file, the refusal)
        let sentinel_cases: [(&str, Option<&str>, Option<&std::path::PathBuf>, &str); 10] = [
            (
                "redis://s1:26379/2",
                Some("mymaster"),
                None,
                "redis.sentinel_urls[0]: a Sentinel has no databases; drop the /2",
            ),
            (
                "redis://s1:26379",
                None,
                None,
                "redis.sentinel_master: required",
            ),
            (
                "",
                Some("mymaster"),
                None,
                "redis.sentinel_master: set only with",
            ),
            (
                "redis://s1:26379",
                Some("redis//:pw@mymaster"),
                None,
                "redis.sentinel_master: not a name",
            ),
            (
                "redis://s1:26379",
                Some("redis://:pw@mymaster:6380/0"),
                None,
                "redis.sentinel_master: the Sentinels give the primary's address",
            ),
            (
                "redis://s1:26379",
                Some("redis://:pw@mymaster/zz"),
                None,
                "redis.sentinel_master: ",
            ),
            (
                "redis://s1:26379",
                Some("redis://mymaster"),
                Some(&ca),
                "redis.sentinel_master: redis.tls_ca_file is set, so the URL must be rediss://",
            ),
            (
                "rediss://s1:26379",
                Some("mymaster"),
                Some(&ca),
                "redis.sentinel_master: redis.tls_ca_file is set, so give the primary as rediss://",
            ),
            (
                "redis://:pw@s1:26379,redis://s2:99999",
                Some("mymaster"),
                None,
                "redis.sentinel_urls[1]: ",
            ),
            (
                "rediss://s1:26379#insecure",
                Some("mymaster"),
                None,
                "redis.sentinel_urls[0]: a URL fragment",
            ),
        ];
        for (urls, master, ca, starts) in sentinel_cases {
            let e = refusal(|s| {
                s.redis.sentinel_urls = urls
                    .split(',')
                    .filter(|u| !u.is_empty())
                    .map(String::from)
                    .collect();
                s.redis.sentinel_master = master.map(String::from);
                s.redis.tls_ca_file = ca.cloned();
            });
            assert!(e.starts_with(starts), "{urls} {master:?}: {e}");
            assert!(!e.contains("pw"), "a password is never echoed: {e}");
        }
        let e = refusal(|s| {
            s.redis.url = Some("redis://a:1".into());
            s.redis.sentinel_urls = vec!["redis://s1:26379".into()];
            s.redis.sentinel_master = Some("mymaster".into());
        });
        assert_eq!(
            e,
            "redis.url and redis.sentinel_urls: set one of them, not both"
        );
        let mut s = with_tenant();
        s.redis.sentinel_urls = vec!["rediss://:pw@s1:26379".into(), "redis://s2:26379".into()];
        s.redis.sentinel_master = Some("rediss://embedgate:pw@mymaster/2".into());
        s.redis.tls_ca_file = Some(ca);
        assert_eq!(s.validate(), Ok(()));
        let primary = s.redis.sentinel_primary().unwrap().unwrap();
        assert_eq!(
            (primary.name.as_str(), primary.tls, primary.login.db()),
            ("mymaster", true, 2)
        );
        assert_eq!(primary.login.username(), Some("embedgate"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
