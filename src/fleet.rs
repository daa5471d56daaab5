//! Cluster mode: the pool, the inbound limits, the upstream budgets and the demand estimates that
//! replicas share through Redis (standalone or Cluster).
//!
//! Owns: the Redis connection, the Lua scripts, the key layout, and the degraded/rejoin state.
//! Does not own: what to do with a URL or a verdict (see `gateway`).
//!
//! # Guarantees
//! - **Exactly once across replicas.** A URL enters Redis by one `ZADD` and leaves by one
//!   `ZPOPMIN` (or a purge), each inside a Lua script, so two replicas can never pop the same
//!   member. A put whose outcome is unknown (timeout, broken connection) is *dropped* and counted
//!   as waste (`unconfirmed`), never kept locally: it may be in Redis already.
//! - **Exactly once when Redis comes back older.** A restart from a snapshot, a failover to a
//!   replica that lagged, or a restored backup brings back URLs that were popped (and handed out)
//!   after the data set was copied. Persistence settings cannot rule that out, so every pooled
//!   URL lives under a *fencing epoch*: each tenant's fence key holds `<run_id>:<epoch>`, where
//!   `run_id` is the Redis server process that started the epoch. Every script that reads or
//!   writes the pool first compares the fence with the server's own `run_id` (`INFO server`, in
//!   the same script, so atomically with the pop) and with the epoch the replica expects. A data
//!   set loaded or promoted by another process carries a foreign `run_id`: the script starts a
//!   new epoch, and the pool keys of the old one (their names carry the epoch) are never read
//!   again and expire. A replica whose epoch is out of date is told the current one and retries
//!   once. No extra round trip on the hit path; the cost is one `INFO server` inside Redis
//!   (about 2.5 µs). Not covered: an operator loading an older dump into the *same* running
//!   process (`DEBUG RELOAD` of an old file), which no restart, failover or managed restore does.
//! - **Clocks that cannot make a URL look fresher.** URLs in the shared pool are dated by the
//!   replica that fetched them and judged by the one that takes them. Every heartbeat measures
//!   this replica's clock against Redis's `TIME` (compensating half the round trip); a replica off
//!   by more than `redis.max_clock_offset_ms` stops using the shared state (degraded, reason
//!   `clock`) until it is back within the bound. So any two sharing replicas disagree by at most
//!   twice the bound, and a shared URL is handed out only with `min_remaining` plus that much left
//!   by the taker's clock: its true validity left is at least `min_remaining`.
//! - **Bounded degradation.** Every command is bounded by `redis.timeout_ms`. The first failure
//!   puts the replica in degraded mode: it stops calling Redis and serves from its local pool and
//!   limits. The heartbeat keeps probing and rejoins when Redis answers again.
//! - **Managed-Redis friendly.** Plain commands and Lua only; scripts never read `TIME` (the
//!   replica passes its clock in); every key of one script shares a hash tag (the tenant, or the
//!   account and region), so scripts run on Redis Cluster.
//!
//! # Layout (prefix `P`, default `embedgate:`)
//! - `P{t:<tenant>}:f`: the tenant's fence, `<run_id>:<epoch>` (see above).
//! - `P{t:<tenant>}:p:<epoch>:<key>`: sorted set of pooled URLs, scored by the ms their request
//!   was sent.
//! - `P{t:<tenant>}:n:<epoch>`: the tenant's pooled URLs (its fleet-wide bound), as a sorted set
//!   of URL digests scored like the pool, so expiry and retries cannot make it drift.
//! - `P{t:<tenant>}:tk:<id>`: the answer to one take, kept a second so a re-sent take repeats it.
//! - `P{t:<tenant>}:d:<key>`: each replica's demand estimate for the key (`ms,rate`).
//! - `P{t:<tenant>}:rl`: the tenant's inbound GCRA state (theoretical arrival time, ms).
//! - `P{a:<account>:<region>}:budget`: the account's upstream GCRA state.
//! - `P{a:<account>:<region>}:share:<tenant>`: the tenant's share of it (GCRA at its weight).
//! - `P{replicas}`: replica ids scored by their last heartbeat.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, Script, ScriptInvocation};

use crate::config::RedisSettings;
use crate::limiter::Inbound;
use crate::metrics::{Metrics, Waste};
use crate::pool::{issued_cutoff, PoolKey, PooledUrl};
use crate::refill::{KeyView, Report};
use crate::tenant::Tenant;

/// The fence every pool script runs first. KEYS[1]: the tenant's fence; ARGV[1]: the epoch the
/// replica expects; ARGV[2]: a fresh epoch to start if the data set is not this server's. When the
/// caller's epoch is not current, the script returns `{current_epoch}` and does nothing else;
/// otherwise the body's result comes back as `{'', result}`. The body sees its own keys from
/// KEYS[2] and its own arguments from ARGV[3].
const FENCE: &str = r"
redis.replicate_commands()
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local fence = redis.call('GET', KEYS[1])
local epoch
if fence then
  local r, e = string.match(fence, '^(%x+):(.+)$')
  if r == run then epoch = e end
end
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[1], run .. ':' .. epoch)
end
if epoch ~= ARGV[1] then return {epoch} end
";

/// Lua helpers shared by the pool scripts. The tenant's count is a sorted set of 16-hex-digit
/// URL digests scored like the pool, so it is trimmed by time like the URLs themselves (a key that
/// expires with URLs inside leaves no drift behind) and adding the same URL twice counts once (a
/// retried put cannot double-count).
const POOL_LIB: &str = r"
local function digest(url) return string.sub(redis.sha1hex(url), 1, 16) end
-- Removes a key's URLs issued before the cutoff from it and from the tenant's count.
local function purge(pool, count, cutoff)
  local stale = redis.call('ZRANGEBYSCORE', pool, '-inf', '(' .. cutoff)
  if #stale > 0 then
    for _, url in ipairs(stale) do redis.call('ZREM', count, digest(url)) end
    redis.call('ZREMRANGEBYSCORE', pool, '-inf', '(' .. cutoff)
  end
  return #stale
end
";

/// Removes the stale URLs of a key, pops the one with the least remaining validity, and keeps
/// the tenant's count in step. Idempotent per take: the answer is remembered under the take's id
/// for `remember_ms`, so the same call sent again (a client retry after a lost reply) returns the
/// same URL instead of popping, and losing, another. KEYS: pool, count, take id. ARGV: cutoff_ms,
/// remember_ms. Returns `{stale, url, issued_ms}` (url `""` when empty).
const TAKE: &str = r"
local prior = redis.call('GET', KEYS[3])
if prior then
  local issued, url = string.match(prior, '^(%d+):(.*)$')
  return {0, url, tonumber(issued)}
end
local stale = purge(KEYS[1], KEYS[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
local got = redis.call('ZPOPMIN', KEYS[1])
if #got > 0 then
  redis.call('ZREM', KEYS[2], digest(got[1]))
  local issued = string.format('%.0f', tonumber(got[2]))
  redis.call('SET', KEYS[3], issued .. ':' .. got[1], 'PX', ARGV[2])
  return {stale, got[1], tonumber(issued)}
end
return {stale, '', 0}
";

/// Adds one URL unless the key or the tenant is full, and counts one prefetch of this replica
/// as landed. KEYS: pool, count, demand. ARGV: issued_ms, url, cutoff_ms, max_per_key,
/// tenant_cap, ttl_ms, replica. Returns `{stale, stored}`.
const PUT: &str = r"
local entry = redis.call('HGET', KEYS[3], ARGV[7])
if entry then
  local at, rate, n = string.match(entry, '^([^,]+),([^,]+),(.+)$')
  if at and tonumber(n) > 0 then
    redis.call('HSET', KEYS[3], ARGV[7], at .. ',' .. rate .. ',' .. (tonumber(n) - 1))
  end
end
local stale = purge(KEYS[1], KEYS[2], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4])
    or redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  return {stale, 0}
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], digest(ARGV[2]))
local ttl = tonumber(ARGV[6])
for i = 1, 2 do
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return {stale, 1}
";

/// For each of a tenant's keys: records this replica's demand and prefetches in flight, purges
/// stale URLs, and reads the fleet's view. One call per tenant (and per chunk of keys) each tick,
/// not one per key. KEYS: count, then pool and demand per key. ARGV: cutoff_ms, replica, now_ms,
/// keep_ms (how long a replica's entry counts without being refreshed), then rate and in_flight
/// per key. Returns `{stale, {{pooled, total_rate (string), replicas, total_in_flight}, ...}}`.
const SYNC: &str = r"
local cutoff, replica = ARGV[1], ARGV[2]
local now, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
local stale_total, out = 0, {}
for k = 1, (#KEYS - 1) / 2 do
  local pool, demand = KEYS[2 * k], KEYS[2 * k + 1]
  stale_total = stale_total + purge(pool, KEYS[1], cutoff)
  redis.call('HSET', demand, replica, ARGV[3] .. ',' .. ARGV[3 + 2 * k] .. ',' .. ARGV[4 + 2 * k])
  local total, replicas, flying = 0, 0, 0
  local all = redis.call('HGETALL', demand)
  for i = 1, #all, 2 do
    local at, rate, n = string.match(all[i + 1], '^([^,]+),([^,]+),(.+)$')
    if at and tonumber(at) >= now - keep then
      total = total + tonumber(rate)
      flying = flying + tonumber(n)
      replicas = replicas + 1
    else
      redis.call('HDEL', demand, all[i])
    end
  end
  redis.call('PEXPIRE', demand, keep)
  out[k] = {redis.call('ZCARD', pool), tostring(total), replicas, flying}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. cutoff)
return {stale_total, out}
";

/// Claims up to `want` prefetches for this replica so that the shared pool plus every
/// replica's prefetches in flight stays within `limit`; records the claim as this replica's in
/// flight and returns how many were granted. KEYS: pool, demand. ARGV: replica, now_ms, keep_ms,
/// want, limit.
const CLAIM: &str = r"
local now, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
local want, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local have = redis.call('ZCARD', KEYS[1])
local mine
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local at, rate, n = string.match(all[i + 1], '^([^,]+),([^,]+),(.+)$')
  if at and tonumber(at) >= now - keep then
    have = have + tonumber(n)
    if all[i] == ARGV[1] then mine = {at, rate, tonumber(n)} end
  end
end
local grant = math.max(0, math.min(want, limit - have))
if grant > 0 and mine then
  redis.call('HSET', KEYS[2], ARGV[1], mine[1] .. ',' .. mine[2] .. ',' .. (mine[3] + grant))
end
return grant
";

/// GCRA. ARGV: now_ms, interval_ms, burst, reserve (tokens that must stay for others).
/// Returns `{allowed, retry_after_ms, remaining}`.
const GCRA: &str = r"
local now, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local burst, reserve = tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then tat = now end
local new_tat = tat + interval
local limit = interval * (burst - reserve)
if new_tat - now > limit then
  return {0, math.ceil(new_tat - now - limit), 0}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return {1, 0, math.floor((interval * burst - (new_tat - now)) / interval)}
";

/// The fleet-wide upstream budget of an account, shared between tenants by weight as each
/// replica's own budget shares it: every tenant has a share bucket filling at its weight of the
/// rate. Within its share a call may take the account's budget down to the priority's reserve;
/// beyond it, only while the budget is uncontended (more than half the burst left), and then
/// without touching the share. KEYS: account GCRA, tenant share GCRA. ARGV: now_ms, interval_ms,
/// burst, reserve, share_interval_ms, share_burst. Returns `{allowed, retry_after_ms}`.
const BUDGET: &str = r"
local now, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local burst, reserve = tonumber(ARGV[3]), tonumber(ARGV[4])
local sint, sburst = tonumber(ARGV[5]), tonumber(ARGV[6])
local stat = tonumber(redis.call('GET', KEYS[2]) or ARGV[1])
if stat < now then stat = now end
local within = stat + sint - now <= sint * sburst
if not within then reserve = math.max(reserve, 0.5 * burst) end
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then tat = now end
local new_tat = tat + interval
local limit = interval * (burst - reserve)
if new_tat - now > limit then
  local wait = new_tat - now - limit
  if not within then wait = math.min(wait, stat + sint - now - sint * sburst) end
  return {0, math.max(1, math.ceil(wait))}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
if within then
  redis.call('SET', KEYS[2], string.format('%.3f', stat + sint), 'PX', math.ceil(stat + sint - now) + 1000)
end
return {1, 0}
";

/// Announces a replica and counts the live ones; returns `{live, redis_secs, redis_micros}` (the
/// server's clock, to measure this replica's offset). ARGV: replica, now_ms, dead_after_ms.
const HEARTBEAT: &str = r"
redis.replicate_commands()
local now, dead = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - dead))
redis.call('PEXPIRE', KEYS[1], dead * 2)
local t = redis.call('TIME')
return {redis.call('ZCARD', KEYS[1]), tonumber(t[1]), tonumber(t[2])}
";

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Redis could not be used for this operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// Degraded already: nothing was sent.
    NotSent,
    /// The command failed or timed out: it may or may not have run.
    Unknown,
}

/// The outcome of a put into the shared pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Yes,
    /// The key or the tenant is at its bound; the URL is waste.
    Full,
}

/// A pool script: [`FENCE`] first, then `body` with its keys and arguments shifted past the
/// fence's, its result wrapped as `{'', result}`.
fn fenced(body: &str) -> Script {
    Script::new(&format!(
        "{FENCE}\n{POOL_LIB}\nlocal KEYS, ARGV = {{unpack(KEYS, 2)}}, {{unpack(ARGV, 3)}}\nreturn {{'', (function()\n{body}\nend)()}}\n"
    ))
}

struct Scripts {
    take: Script,
    put: Script,
    claim: Script,
    sync: Script,
    gcra: Script,
    budget: Script,
    heartbeat: Script,
}

/// This replica's handle on the shared state.
pub struct Fleet {
    settings: RedisSettings,
    /// Identifies this replica in demand estimates and heartbeats.
    replica: String,
    conn: RwLock<Option<Conn>>,
    /// Redis failed or timed out; the heartbeat clears it.
    degraded: AtomicBool,
    /// This replica's clock is off Redis's by more than the bound; the heartbeat re-measures.
    clock_off: AtomicBool,
    clock: crate::clock::Clock,
    live_replicas: AtomicUsize,
    /// Per tenant: the instant (ms) before which the tenant is known to be over its limit, so
    /// rejections need no Redis round trip (the local fast path).
    over_until: Vec<AtomicU64>,
    /// Per tenant: the fencing epoch this replica last saw (empty: none yet).
    epochs: Vec<RwLock<String>>,
    scripts: Scripts,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

impl Fleet {
    /// Connects (lazily for a standalone Redis; a Cluster is tried once now and again on every
    /// heartbeat). A replica that cannot reach Redis starts degraded and rejoins later.
    ///
    /// # Errors
    /// A URL that cannot be parsed.
    pub async fn connect(
        settings: &RedisSettings,
        tenants: usize,
        clock: crate::clock::Clock,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Fleet>> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        let fleet = Arc::new(Fleet {
            replica: uuid::Uuid::new_v4().simple().to_string(),
            conn: RwLock::new(None),
            degraded: AtomicBool::new(false),
            clock_off: AtomicBool::new(false),
            clock,
            live_replicas: AtomicUsize::new(1),
            over_until: (0..tenants).map(|_| AtomicU64::new(0)).collect(),
            epochs: (0..tenants).map(|_| RwLock::new(String::new())).collect(),
            scripts: Scripts {
                take: fenced(TAKE),
                put: fenced(PUT),
                claim: fenced(CLAIM),
                sync: fenced(SYNC),
                gcra: Script::new(GCRA),
                budget: Script::new(BUDGET),
                heartbeat: Script::new(HEARTBEAT),
            },
            metrics,
            timeout,
            settings: settings.clone(),
        });
        if let Some(url) = &settings.url {
            let client =
                redis::Client::open(url.as_str()).map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(settings.heartbeat_ms));
            let manager = ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
            *fleet.conn.write() = Some(Conn::Single(manager));
        } else {
            // Validate the seed URLs now, so a typo fails start-up rather than degrading.
            fleet.cluster_client()?;
            fleet.connect_cluster().await;
        }
        if fleet.heartbeat().await.is_err() {
            tracing::warn!("Redis is unreachable at start-up: serving from the local pool and limits until it answers");
        }
        Ok(fleet)
    }

    fn cluster_client(&self) -> anyhow::Result<redis::cluster::ClusterClient> {
        redis::cluster::ClusterClientBuilder::new(self.settings.cluster_urls.clone())
            .connection_timeout(self.timeout.max(Duration::from_millis(200)))
            .response_timeout(self.timeout)
            .retries(1)
            .build()
            .map_err(|e| anyhow::anyhow!("redis.cluster_urls: {e}"))
    }

    async fn connect_cluster(&self) {
        let Ok(client) = self.cluster_client() else {
            return;
        };
        let bound = self.timeout.max(Duration::from_millis(500));
        match tokio::time::timeout(bound, client.get_async_connection()).await {
            Ok(Ok(c)) => *self.conn.write() = Some(Conn::Cluster(c)),
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot connect to the Redis Cluster"),
            Err(_) => tracing::debug!("connecting to the Redis Cluster timed out"),
        }
    }

    /// Whether this replica currently uses Redis.
    pub fn healthy(&self) -> bool {
        !self.degraded.load(Ordering::Relaxed) && !self.clock_off.load(Ordering::Relaxed)
    }

    /// Why this replica is not using Redis: `redis` (unreachable, failing or slow) or `clock`
    /// (its clock is off Redis's by more than `redis.max_clock_offset_ms`).
    pub fn degraded_reason(&self) -> Option<&'static str> {
        if self.degraded.load(Ordering::Relaxed) {
            Some("redis")
        } else if self.clock_off.load(Ordering::Relaxed) {
            Some("clock")
        } else {
            None
        }
    }

    /// What a shared URL must have left, by this replica's clock, for `min_remaining_ms` to be
    /// left by any clock: two sharing replicas disagree by at most twice the offset bound.
    fn shared_min_remaining(&self, min_remaining_ms: u64) -> u64 {
        min_remaining_ms + 2 * self.settings.max_clock_offset_ms
    }

    /// Live replicas at the last heartbeat (this one included).
    pub fn replicas(&self) -> usize {
        self.live_replicas.load(Ordering::Relaxed)
    }

    fn key(&self, tag: &str, rest: &str) -> String {
        format!("{}{{{tag}}}{rest}", self.settings.prefix)
    }

    // A tenant's keys share its hash tag, so one script can touch them all on Redis Cluster.

    /// The tenant's fence: `<run_id>:<epoch>`.
    fn fence_key(&self, tenant: &Tenant) -> String {
        self.key(&tenant_tag(tenant), ":f")
    }

    /// The sorted set of `key`'s pooled URLs in `epoch`.
    fn pool_key(&self, tenant: &Tenant, epoch: &str, key: &PoolKey) -> String {
        self.key(&tenant_tag(tenant), &format!(":p:{epoch}:{key}"))
    }

    /// The tenant's count of pooled URLs in `epoch`.
    fn count_key(&self, tenant: &Tenant, epoch: &str) -> String {
        self.key(&tenant_tag(tenant), &format!(":n:{epoch}"))
    }

    /// Runs a pool script behind the tenant's fence: with the epoch this replica knows, and once
    /// more with the current one if Redis says it has changed (a new data set, or another
    /// replica started the epoch first). `build` adds the body's keys and arguments for an epoch.
    async fn pool_script<T: FromRedisValue>(
        &self,
        op: &'static str,
        tenant: &Tenant,
        script: &Script,
        build: impl Fn(&mut ScriptInvocation<'_>, &str),
    ) -> Result<T, Down> {
        for _ in 0..2 {
            let epoch = self.epochs[tenant.index].read().clone();
            let mut inv = script.prepare_invoke();
            inv.key(self.fence_key(tenant))
                .arg(&epoch)
                .arg(format!("{:016x}", rand::random::<u64>()));
            build(&mut inv, &epoch);
            let reply: Vec<redis::Value> = self.script(op, inv).await?;
            match <[redis::Value; 2]>::try_from(reply) {
                Ok([_, result]) => return T::from_redis_value(result).map_err(|_| Down::Unknown),
                Err(reply) => {
                    let current = reply
                        .into_iter()
                        .next()
                        .and_then(|v| String::from_redis_value(v).ok())
                        .ok_or(Down::Unknown)?;
                    self.new_epoch(tenant, &epoch, current);
                }
            }
        }
        // The epoch changed again between two calls: Redis is being switched right now.
        Err(Down::Unknown)
    }

    /// Records the tenant's current epoch. A change from a known one means Redis came back with
    /// another data set (restart, failover, restore, flush or eviction of the fence): everything
    /// pooled before stays in the old epoch's keys, never read again.
    fn new_epoch(&self, tenant: &Tenant, seen: &str, current: String) {
        let mut known = self.epochs[tenant.index].write();
        if *known == current {
            return;
        }
        if !seen.is_empty() && *known == seen {
            self.metrics.redis_fences.inc();
            tracing::warn!(
                tenant = %tenant.id,
                "the shared pool's data set changed (Redis restarted, failed over, was restored or flushed): URLs pooled before are discarded"
            );
        }
        *known = current;
    }

    /// The replicas' demand reports and prefetches in flight for `key`.
    fn demand_key(&self, tenant: &Tenant, key: &PoolKey) -> String {
        self.key(&tenant_tag(tenant), &format!(":d:{key}"))
    }

    /// Runs a script with the timeout, tripping degraded mode on failure.
    async fn script<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: ScriptInvocation<'_>,
    ) -> Result<T, Down> {
        if !self.healthy() {
            return Err(Down::NotSent);
        }
        self.script_anyway(op, invocation).await
    }

    async fn script_anyway<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: ScriptInvocation<'_>,
    ) -> Result<T, Down> {
        let conn = self.conn.read().clone();
        let result = match conn {
            None => Err(None),
            Some(Conn::Single(mut c)) => invoke(&invocation, &mut c, self.timeout).await,
            Some(Conn::Cluster(mut c)) => invoke(&invocation, &mut c, self.timeout).await,
        };
        result.map_err(|e| {
            self.metrics.redis_errors.with_label_values(&[op]).inc();
            if !self.degraded.swap(true, Ordering::SeqCst) {
                self.metrics.redis_degraded.set(1);
                match e {
                    Some(e) => tracing::warn!(op, error = %e, "Redis failed: serving from the local pool and limits until it answers"),
                    None => tracing::warn!(op, timeout_ms = self.timeout.as_millis() as u64, "Redis did not answer in time: serving from the local pool and limits until it answers"),
                }
            }
            Down::Unknown
        })
    }

    /// Pops the URL for `key` with the least remaining validity that still has `min_remaining_ms`
    /// (plus the clock margin) left; stale ones met on the way are purged and counted as waste.
    ///
    /// # Errors
    /// Redis is not usable; a URL popped by a command whose reply never came is lost (never
    /// handed out twice).
    pub async fn take(
        &self,
        tenant: &Tenant,
        key: &PoolKey,
        now_ms: u64,
        min_remaining_ms: u64,
    ) -> Result<Option<PooledUrl>, Down> {
        let id = format!("{:016x}", rand::random::<u64>());
        self.take_once(tenant, key, now_ms, min_remaining_ms, &id)
            .await
    }

    /// [`Fleet::take`] with the take's id given: the same id within a second gets the same
    /// answer, however often the call is sent.
    ///
    /// # Errors
    /// See [`Fleet::take`].
    pub async fn take_once(
        &self,
        tenant: &Tenant,
        key: &PoolKey,
        now_ms: u64,
        min_remaining_ms: u64,
        id: &str,
    ) -> Result<Option<PooledUrl>, Down> {
        let cutoff = issued_cutoff(now_ms, self.shared_min_remaining(min_remaining_ms));
        let remember_ms = (2 * self.timeout.as_millis() as u64).max(1_000);
        let (stale, url, issued): (u64, String, u64) = self
            .pool_script("take", tenant, &self.scripts.take, |inv, epoch| {
                inv.key(self.pool_key(tenant, epoch, key))
                    .key(self.count_key(tenant, epoch))
                    .key(self.key(&tenant_tag(tenant), &format!(":tk:{id}")))
                    .arg(cutoff)
                    .arg(remember_ms);
            })
            .await?;
        self.count_stale(stale);
        if url.is_empty() {
            return Ok(None);
        }
        let u = PooledUrl {
            url,
            issued_at_ms: issued,
        };
        self.metrics
            .remaining_validity
            .observe(u.expires_at_ms().saturating_sub(now_ms) as f64 / 1000.0);
        Ok(Some(u))
    }

    /// Adds a URL to the shared pool within the per-key and per-tenant bounds.
    ///
    /// # Errors
    /// `Down::Unknown`: the URL may be in Redis already, so the caller must drop it.
    pub async fn put(
        &self,
        tenant: &Tenant,
        key: &PoolKey,
        url: &PooledUrl,
        now_ms: u64,
        min_remaining_ms: u64,
        max_per_key: usize,
    ) -> Result<Stored, Down> {
        let ttl = (url.expires_at_ms() + 1000).saturating_sub(now_ms).max(1);
        let cutoff = issued_cutoff(now_ms, min_remaining_ms);
        let (stale, stored): (u64, u8) = self
            .pool_script("put", tenant, &self.scripts.put, |inv, epoch| {
                inv.key(self.pool_key(tenant, epoch, key))
                    .key(self.count_key(tenant, epoch))
                    .key(self.demand_key(tenant, key))
                    .arg(url.issued_at_ms)
                    .arg(&url.url)
                    .arg(cutoff)
                    .arg(max_per_key)
                    .arg(tenant.max_pooled_urls)
                    .arg(ttl)
                    .arg(&self.replica);
            })
            .await?;
        self.count_stale(stale);
        Ok(if stored == 1 {
            Stored::Yes
        } else {
            Stored::Full
        })
    }

    /// Publishes this replica's demand estimate and prefetches in flight for some of a tenant's
    /// keys and reads the fleet's view of each, in one call.
    ///
    /// # Errors
    /// Redis is not usable.
    pub async fn sync(
        &self,
        tenant: &Tenant,
        keys: &[(&PoolKey, Report)],
        now_ms: u64,
        min_remaining_ms: u64,
        keep_ms: u64,
    ) -> Result<Vec<KeyView>, Down> {
        let cutoff = issued_cutoff(now_ms, min_remaining_ms);
        let (stale, views): (u64, Vec<(usize, String, usize, usize)>) = self
            .pool_script("sync", tenant, &self.scripts.sync, |inv, epoch| {
                inv.key(self.count_key(tenant, epoch));
                for (key, _) in keys {
                    inv.key(self.pool_key(tenant, epoch, key))
                        .key(self.demand_key(tenant, key));
                }
                inv.arg(cutoff).arg(&self.replica).arg(now_ms).arg(keep_ms);
                for (_, own) in keys {
                    inv.arg(format!("{:.6}", own.rate)).arg(own.in_flight);
                }
            })
            .await?;
        self.count_stale(stale);
        Ok(views
            .into_iter()
            .map(|(pooled, total, replicas, in_flight)| KeyView {
                pooled,
                fleet_rate: total.parse().unwrap_or(0.0),
                replicas,
                in_flight,
            })
            .collect())
    }

    /// Claims up to `want` prefetches for `key` such that the shared pool plus the fleet's
    /// prefetches in flight stays within `limit`; returns how many this replica may start.
    ///
    /// # Errors
    /// Redis is not usable.
    pub async fn claim(
        &self,
        tenant: &Tenant,
        key: &PoolKey,
        want: usize,
        limit: usize,
        now_ms: u64,
        keep_ms: u64,
    ) -> Result<usize, Down> {
        self.pool_script("claim", tenant, &self.scripts.claim, |inv, epoch| {
            inv.key(self.pool_key(tenant, epoch, key))
                .key(self.demand_key(tenant, key))
                .arg(&self.replica)
                .arg(now_ms)
                .arg(keep_ms)
                .arg(want)
                .arg(limit);
        })
        .await
    }

    /// Counts one request of `tenant` against its fleet-wide limit. A tenant known to be over
    /// its limit is refused locally, without a round trip.
    ///
    /// # Errors
    /// Redis is not usable.
    pub async fn inbound(&self, tenant: &Tenant, now_ms: u64) -> Result<Inbound, Down> {
        let over = self.over_until[tenant.index].load(Ordering::Relaxed);
        if over > now_ms {
            return Ok(Inbound::Limited {
                retry_after: Duration::from_millis(over - now_ms),
            });
        }
        let key = self.key(&tenant_tag(tenant), ":rl");
        let verdict = self
            .gcra(
                "inbound",
                key,
                now_ms,
                1000.0 / tenant.rate_per_sec,
                tenant.burst,
                0.0,
            )
            .await?;
        if let Inbound::Limited { retry_after } = verdict {
            self.over_until[tenant.index]
                .store(now_ms + retry_after.as_millis() as u64, Ordering::Relaxed);
        }
        Ok(verdict)
    }

    /// Takes one call for `tenant` from the account's fleet-wide upstream budget at `rate` per
    /// second: leaving `reserve` calls of the burst for callers waiting on a miss, and sharing
    /// contended capacity by `weight` (the tenant's normalised weight) as each replica's own
    /// budget does.
    ///
    /// # Errors
    /// Redis is not usable.
    #[allow(clippy::too_many_arguments)]
    pub async fn budget(
        &self,
        account: &str,
        region: &str,
        tenant: &Tenant,
        weight: f64,
        rate: f64,
        burst: u32,
        reserve: f64,
        now_ms: u64,
    ) -> Result<Result<(), Duration>, Down> {
        let tag = format!("a:{account}:{region}");
        let interval = 1000.0 / rate;
        let weight = weight.max(1e-6);
        let mut inv = self.scripts.budget.prepare_invoke();
        inv.key(self.key(&tag, ":budget"))
            .key(self.key(&tag, &format!(":share:{}", tenant.id)))
            .arg(now_ms)
            .arg(format!("{interval:.6}"))
            .arg(burst)
            .arg(format!("{reserve:.6}"))
            .arg(format!("{:.6}", interval / weight))
            .arg(format!("{:.6}", (f64::from(burst) * weight).max(1.0)));
        let (allowed, retry_ms): (u8, u64) = self.script("budget", inv).await?;
        Ok(if allowed == 1 {
            Ok(())
        } else {
            Err(Duration::from_millis(retry_ms.max(1)))
        })
    }

    async fn gcra(
        &self,
        op: &'static str,
        key: String,
        now_ms: u64,
        interval_ms: f64,
        burst: u32,
        reserve: f64,
    ) -> Result<Inbound, Down> {
        let mut inv = self.scripts.gcra.prepare_invoke();
        inv.key(key)
            .arg(now_ms)
            .arg(format!("{interval_ms:.6}"))
            .arg(burst)
            .arg(format!("{reserve:.6}"));
        let (allowed, retry_ms, remaining): (u8, u64, u32) = self.script(op, inv).await?;
        Ok(if allowed == 1 {
            Inbound::Allowed { remaining }
        } else {
            Inbound::Limited {
                retry_after: Duration::from_millis(retry_ms.max(1)),
            }
        })
    }

    /// Announces this replica and counts the live ones; rejoins after a degraded spell when
    /// Redis answers.
    ///
    /// # Errors
    /// Redis is not usable.
    pub async fn heartbeat(&self) -> Result<usize, Down> {
        if self.conn.read().is_none() {
            self.connect_cluster().await;
        }
        let sent = std::time::Instant::now();
        let now_ms = self.clock.now_ms();
        let dead_after = 3 * self.settings.heartbeat_ms.max(1000);
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.key(self.key("replicas", ""))
            .arg(&self.replica)
            .arg(now_ms)
            .arg(dead_after);
        let (live, secs, micros): (usize, i64, i64) = self.script_anyway("heartbeat", inv).await?;
        // Redis read its clock about half-way through the round trip.
        let midway = now_ms as i64 + (sent.elapsed().as_millis() / 2) as i64;
        let offset = secs * 1000 + micros / 1000 - midway;
        self.check_clock(offset);
        self.live_replicas.store(live.max(1), Ordering::Relaxed);
        self.metrics.fleet_replicas.set(live.max(1) as i64);
        if self.degraded.swap(false, Ordering::SeqCst) {
            for t in &self.over_until {
                t.store(0, Ordering::Relaxed);
            }
            tracing::info!(replicas = live, "Redis answers again: rejoined the fleet");
        }
        self.metrics.redis_degraded.set(i64::from(!self.healthy()));
        Ok(live)
    }

    /// Records Redis's clock minus this replica's, and stops (or resumes) sharing when it crosses
    /// the bound.
    fn check_clock(&self, offset_ms: i64) {
        self.metrics
            .redis_clock_offset
            .set(offset_ms as f64 / 1000.0);
        let off = offset_ms.unsigned_abs() > self.settings.max_clock_offset_ms;
        if self.clock_off.swap(off, Ordering::SeqCst) != off {
            if off {
                tracing::warn!(
                    offset_ms,
                    bound_ms = self.settings.max_clock_offset_ms,
                    "this replica's clock is off Redis's by more than redis.max_clock_offset_ms: serving from the local pool and limits until it is back within the bound"
                );
            } else {
                tracing::info!(
                    offset_ms,
                    "this replica's clock agrees with Redis's again: rejoined the fleet"
                );
            }
        }
    }

    /// Heartbeats every `redis.heartbeat_ms` until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.settings.heartbeat_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => { let _ = self.heartbeat().await; }
            }
        }
    }

    fn count_stale(&self, stale: u64) {
        self.metrics.wasted(Waste::Expired, stale);
    }
}

fn tenant_tag(tenant: &Tenant) -> String {
    format!("t:{}", tenant.id)
}

async fn invoke<T: FromRedisValue, C: ConnectionLike + Send>(
    invocation: &ScriptInvocation<'_>,
    conn: &mut C,
    timeout: Duration,
) -> Result<T, Option<redis::RedisError>> {
    match tokio::time::timeout(timeout, invocation.invoke_async(conn)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}
