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
//!   as waste (`unconfirmed`), never kept locally: it may be in Redis already. A take or hit
//!   whose caller stops waiting (a timeout, a request dropped with its client) is never sent
//!   again; its reply is still read, and the URL it popped, which only this replica has, lands
//!   in this replica's own pool for its key (`orphans`). A Redis Cluster's client gives the
//!   reply up at the timeout; there the answer Redis keeps under the call's id (for the
//!   client's own re-send) is read instead, once the call has run.
//! - **Exactly once when Redis comes back older.** A restart from a snapshot, a failover to a
//!   replica that lagged, or a restored backup brings back URLs that were popped (and handed out)
//!   after the data set was copied. Persistence settings cannot rule that out, so every pooled
//!   URL lives under a *fencing epoch*: each tenant's fence key holds `<data set>:<epoch>`, where
//!   the data set is the Redis server process that started the epoch (`run_id`) and the history
//!   of its data (`master_replid`, which a promotion renews and a full copy from a primary
//!   replaces). Every script that reads or writes the pool first compares the fence with the
//!   server's own (`INFO server` and `INFO replication`, in the same script, so atomically with
//!   the pop) and with the epoch the replica expects. A data set loaded or promoted by another
//!   process, or copied in full from another server, is another data set: the script starts a
//!   new epoch, and the pool keys of the old one (their names carry the epoch) are never read
//!   again and expire. A replica whose epoch is out of date is told the current one and retries
//!   once. No extra round trip on the hit path. As the library's functions (Redis 7) the
//!   scripts read the data set once per loaded library and keep it in the library's state,
//!   which cannot outlive the process and is loaded afresh with a full copy (a fence naming
//!   another data set is judged against it read again); as scripts (Redis 6, or `FUNCTION`
//!   denied), on every call. An older copy written back into the *same* running process (an
//!   old dump loaded with `DEBUG RELOAD`, an old backup's keys replayed with `RESTORE`) keeps
//!   the process and its history; the tenant's *serial* tells it: every call that pops URLs
//!   counts it up, each replica sends the highest it has seen in its epoch, and a serial found
//!   behind it starts a new epoch (`scripts::FENCE_LIB`). A fence that names an epoch the
//!   replica left is sent the serial the replica remembers for it, so a copy from before a flush
//!   is caught the same way. As functions, the loaded library remembers the serials too, so a
//!   replica that has seen none is judged by it; a library loaded anew (`DEBUG RELOAD` loads
//!   it from the dump) trusts no fence it has not seen, and starts a new epoch.
//! - **Clocks that cannot make a URL look fresher.** URLs in the shared pool are dated by the
//!   replica that fetched them and judged by the one that takes them. Every heartbeat measures
//!   this replica's clock against Redis's `TIME` (compensating half the round trip); a replica off
//!   by more than `redis.max_clock_offset_ms` stops using the shared state (degraded, reason
//!   `clock`) until it is back within the bound. So any two sharing replicas disagree by at most
//!   twice the bound, and a shared URL is handed out only with `min_remaining` plus that much left
//!   by the taker's clock: its true validity left is at least `min_remaining`. Between
//!   heartbeats, every call that would use Redis first compares the replica's clock with its
//!   elapsed time since the last one: a step past the bound stops sharing at once.
//! - **Bounded degradation.** Every command is bounded by `redis.timeout_ms`. The first failure
//!   puts the replica in degraded mode: it stops calling Redis and serves from its local pool and
//!   limits. The heartbeat keeps probing and rejoins when Redis answers again.
//! - **Managed-Redis friendly.** Plain commands and Lua only; scripts never read `TIME` (the
//!   replica passes its clock in); every key of one script shares a hash tag (the tenant, or the
//!   account and region), so scripts run on Redis Cluster.
//!
//! Files: [`keys`] (the key layout), [`scripts`] (the Lua), [`pool`] (take, put, sync, claim),
//! [`limits`] (inbound limit, upstream budget), [`health`] (heartbeat, clock offset, rejoin),
//! [`connections`] (a standalone Redis's shared and per-thread connections), [`sentinel`] (which
//! server a Sentinel set-up's primary is), [`kept`] (the answers a Redis Cluster keeps for calls
//! given up on), [`orphans`] (where a URL popped for nobody lands); this one holds the
//! connections and the degraded state.

mod connections;
mod health;
mod kept;
mod keys;
mod limits;
mod orphans;
mod pool;
mod scripts;
mod sentinel;
pub mod views;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus::Histogram;
use redis::aio::{ConnectionLike, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, ScriptInvocation, ToRedisArgs};

use crate::config::RedisSettings;
use crate::metrics::{Metrics, REDIS_OPERATIONS};
use crate::per_tenant::PerTenant;
use connections::Connections;
use kept::KeptAnswers;
pub use orphans::Land;
use orphans::{Orphans, Whose};
use pool::Pops;
use scripts::{Fenced, Scripts};

/// Which connection a standalone Redis's command goes on (a Cluster has one).
#[derive(Debug, Clone, Copy)]
pub(super) enum Route {
    /// The calling thread's own, or the shared one while it opens.
    ThisThread,
    /// The shared one: the heartbeat's, proving the connection the others fall back to.
    Shared,
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

/// Whether this Redis runs the pool scripts as the library's functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Functions {
    /// Not tried yet (Redis has not answered since start-up): scripts meanwhile.
    Unknown = 0,
    /// Loaded: `FCALL`, the server's `run_id` read once per Redis process.
    Loaded = 1,
    /// Refused (Redis 6, or an ACL without `FUNCTION`): scripts, `run_id` read on every call.
    Refused = 2,
}

/// A command for Redis: a script (`EVALSHA`, loaded when Redis lacks it), or a plain command
/// (`FCALL` of the library's function, `EVALSHA` of a pool script, `FUNCTION LOAD`).
pub(super) enum Request<'a> {
    Script(ScriptInvocation<'a>),
    Command(Cmd),
    /// A pool script that pops URLs (take, hit). When its caller stops waiting for the reply
    /// (the command timed out, or the request was dropped because its client went away), the
    /// wait goes on in a task of its own, which lands the URL the reply popped in this
    /// replica's own pool and counts the stale URLs it purged (`orphans`): a popped URL nobody
    /// was handed is not lost. Where Redis keeps the call's answer (a Redis Cluster's, whose
    /// client gives a reply up at the timeout: `kept`), the answer of a call whose reply never
    /// comes is looked for there instead.
    Pop(Cmd, Popping<'a>),
}

/// What becomes of a popping call's reply when nobody waits for it (see [`Request::Pop`]).
pub(super) struct Popping<'a> {
    pops: Pops,
    /// The key its URLs are taken for (set by `Call::popping_for`), copied only when nobody
    /// waits for the reply.
    whose: Option<&'a Whose>,
    orphans: &'a Arc<Orphans>,
    kept: Option<Kept>,
}

/// Where Redis keeps a take's or hit's answer for a re-send of the call (a Redis Cluster's; see
/// `Fleet::remember_ms`), and who looks for it when the reply never came.
pub(super) struct Kept {
    key: Vec<u8>,
    answers: Arc<KeptAnswers>,
}

impl Kept {
    /// Has the answer looked for if the call failed only for want of a reply (a timeout, a
    /// broken connection), not because Redis refused it.
    fn after(self, e: &redis::RedisError, whose: Option<Whose>) {
        if e.code().is_none() {
            self.answers.look_for(self.key, whose);
        }
    }
}

/// A pool script's keys and arguments, gathered before its form is chosen
/// (a script, or an `FCALL` of the library's function).
#[derive(Default)]
pub(super) struct Call {
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
    whose: Option<Whose>,
}

impl Call {
    pub(super) fn key(&mut self, key: impl ToRedisArgs) -> &mut Call {
        self.keys.extend(key.to_redis_args());
        self
    }

    pub(super) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Call {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// A take or hit for `tenant`'s `key`: where a URL it pops for nobody lands (`orphans`).
    pub(super) fn popping_for(
        &mut self,
        tenant: crate::tenant::TenantId,
        key: &crate::pool::PoolKey,
    ) -> &mut Call {
        self.whose = Some(Whose {
            tenant,
            key: key.clone(),
        });
        self
    }

    /// The call as the library's function (`FCALL`) or as the script (`EVALSHA`). `orphans`:
    /// where a URL it pops for nobody lands; `kept`: who looks for a popping call's answer where
    /// Redis keeps it (a Redis Cluster).
    fn request<'a>(
        &'a self,
        fenced: &Fenced,
        functions: Functions,
        orphans: &'a Arc<Orphans>,
        kept: Option<&'a Arc<KeptAnswers>>,
    ) -> Request<'a> {
        let mut cmd = if functions == Functions::Loaded {
            let mut cmd = redis::cmd("FCALL");
            cmd.arg(&fenced.function);
            cmd
        } else {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&fenced.sha);
            cmd
        };
        cmd.arg(self.keys.len());
        for part in self.keys.iter().chain(&self.args) {
            cmd.arg(part.as_slice());
        }
        match fenced.pops {
            Some(pops) => {
                let kept = kept.and_then(|answers| {
                    let key = self.keys.get(Pops::CALL_KEY)?.clone();
                    let answers = answers.clone();
                    Some(Kept { key, answers })
                });
                Request::Pop(
                    cmd,
                    Popping {
                        pops,
                        whose: self.whose.as_ref(),
                        orphans,
                        kept,
                    },
                )
            }
            None => Request::Command(cmd),
        }
    }
}

/// Why Redis answered a pool script's call without running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotRun {
    /// The function does not exist: Redis lost the library.
    Missing,
    /// `FCALL` does not exist (a Redis 6 promoted under the fleet) or the ACL denies it now.
    Refused,
    /// The script form: Redis does not have the script (`NOSCRIPT`: restarted, or flushed its
    /// scripts).
    NoScript,
}

fn not_run(e: &redis::RedisError, functions: Functions) -> Option<NotRun> {
    if functions != Functions::Loaded {
        (e.code() == Some("NOSCRIPT")).then_some(NotRun::NoScript)
    } else if e
        .detail()
        .unwrap_or_default()
        .contains("Function not found")
    {
        Some(NotRun::Missing)
    } else if refuses_command(e) {
        Some(NotRun::Refused)
    } else {
        None
    }
}

/// A write refused because the server is a replica: `READONLY`, or a Redis 6 script's error
/// quoting it.
fn answered_by_a_replica(e: &redis::RedisError) -> bool {
    e.code() == Some("READONLY") || e.detail().unwrap_or_default().contains("READONLY")
}

/// A Redis Cluster's answer that the slot's primary is elsewhere or not there right now: the
/// client's map of slots, or the cluster, is mid-failover.
fn cluster_in_flux(e: &redis::RedisError) -> bool {
    matches!(
        e.code(),
        Some("MOVED" | "ASK" | "CLUSTERDOWN" | "TRYAGAIN" | "MASTERDOWN")
    )
}

/// Redis answered that it does not run the command (its ACL, or a command it does not have).
fn refuses_command(e: &redis::RedisError) -> bool {
    e.code() == Some("NOPERM") || e.detail().unwrap_or_default().contains("unknown command")
}

/// This replica's handle on the shared state.
pub struct Fleet {
    settings: RedisSettings,
    /// The CAs of `redis.tls_ca_file` (PEM), read once at start.
    tls_roots: Option<Vec<u8>>,
    /// Identifies this replica in demand estimates and heartbeats.
    replica: String,
    /// A standalone Redis's connections (shared, and one per calling thread); with Sentinel, to
    /// the primary it last named.
    single: Option<Connections>,
    /// The Sentinels to ask for the primary (Sentinel mode).
    sentinels: Option<sentinel::Sentinels>,
    /// A Redis Cluster's one connection, which routes by slot, and when it was made.
    cluster: RwLock<Option<(ClusterConnection, std::time::Instant)>>,
    /// On a Redis Cluster: the takes and hits given up on, whose answers are looked for.
    kept: Option<Arc<KeptAnswers>>,
    /// Where the URLs that takes and hits popped for nobody land.
    orphans: Arc<Orphans>,
    /// Redis failed or timed out; the heartbeat clears it.
    degraded: AtomicBool,
    /// This replica's clock is off Redis's by more than the bound, or has stepped by more than
    /// it since the heartbeat measured it; the heartbeat re-measures.
    clock_off: AtomicBool,
    clock: crate::clock::Clock,
    /// The replica's clock minus [`Fleet::started`]'s elapsed time (ms) when the last heartbeat
    /// measured it against Redis's; `i64::MIN` before the first, and for a manual clock.
    clock_at_beat: AtomicI64,
    started: std::time::Instant,
    live_replicas: AtomicUsize,
    /// Per tenant: the instant (ms) before which the tenant is known to be over its limit, so
    /// rejections need no Redis round trip (the local fast path).
    over_until: PerTenant<AtomicU64>,
    /// Per tenant: the fencing epoch this replica last saw, and how far its serial had come.
    epochs: PerTenant<RwLock<pool::Known>>,
    /// Where the last read of the fleet's session views ended (`views`).
    views_read: tokio::sync::Mutex<views::ViewsRead>,
    scripts: Scripts,
    /// Whether the pool scripts run as the library's functions (a [`Functions`]).
    functions: AtomicU8,
    /// Times the library was loaded again after Redis lost it; with `reload`, a burst of calls
    /// that all found it missing loads it once.
    reloads: AtomicU64,
    reload: tokio::sync::Mutex<()>,
    /// `embedgate_redis_duration_seconds` per operation, in `REDIS_OPERATIONS` order.
    durations: Vec<Histogram>,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

/// Trust exactly the CAs of `pem` for the Redis server's certificate (no client certificate).
fn certificates(pem: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

/// How each connection to Redis sets its socket: `TCP_NODELAY`, so a command goes out at once.
/// The client's default leaves Nagle's algorithm on, which holds a small write back while data
/// written before it on the connection is unacknowledged: the connections are pipelined, so in
/// every busy moment a command waits for the answer (or ACK) to the one before it, up to a round
/// trip. Redis sets the option on its side of each connection, as most Redis clients do on theirs.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// How long a TCP connect to Redis may take: the command timeout, but at least 200 ms (a
/// connect is a round trip more than a command, and a 50 ms command timeout is common).
fn connect_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_millis(200))
}

/// How long opening a connection (connect and handshake) may take before it is given up and
/// tried again later: the command timeout, but at least 500 ms.
fn open_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_millis(500))
}

/// How long making a Redis Cluster connection may take before it is given up and tried again
/// at the next heartbeat: it connects to every seed at once and waits for the slowest (a silent
/// node takes a connect and a check timeout), reads the map of slots, then connects to the
/// primaries: three rounds of a connect and a command. Bounded by one command timeout, a seed
/// that had gone silent made every attempt fail, and the replica never rejoined the cluster
/// while that node stayed silent.
fn cluster_open_timeout(timeout: Duration) -> Duration {
    3 * (connect_timeout(timeout) + timeout)
}

impl Fleet {
    /// Connects (lazily for a standalone Redis; a Cluster, or the Sentinels, are tried once now
    /// and again on every heartbeat). A replica that cannot reach Redis starts degraded and
    /// rejoins later.
    ///
    /// # Errors
    /// A URL that cannot be parsed.
    pub async fn connect(
        settings: &RedisSettings,
        tenants: usize,
        clock: crate::clock::Clock,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Fleet>> {
        // rustls picks its crypto provider from its crate features unless one is installed for
        // the process, and this dependency tree enables two (ring, and aws-lc through the AWS
        // SDK), so the Redis client's TLS configuration would panic at `rediss://`. Ring, as the
        // simulator's TLS listener uses; a provider already installed is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let roots = settings.trusted_roots().map_err(anyhow::Error::msg)?;
        let timeout = Duration::from_millis(settings.timeout_ms);
        let mut fleet = Fleet {
            replica: uuid::Uuid::new_v4().simple().to_string(),
            single: None,
            sentinels: None,
            cluster: RwLock::new(None),
            kept: None,
            orphans: Orphans::new(metrics.clone(), 2 * settings.max_clock_offset_ms),
            degraded: AtomicBool::new(false),
            clock_off: AtomicBool::new(false),
            clock,
            clock_at_beat: AtomicI64::new(i64::MIN),
            started: std::time::Instant::now(),
            live_replicas: AtomicUsize::new(1),
            over_until: PerTenant::new((0..tenants).map(|_| AtomicU64::new(0))),
            epochs: PerTenant::new((0..tenants).map(|_| RwLock::default())),
            views_read: tokio::sync::Mutex::new(Default::default()),
            scripts: Scripts::new(),
            functions: AtomicU8::new(Functions::Unknown as u8),
            reloads: AtomicU64::new(0),
            reload: tokio::sync::Mutex::new(()),
            durations: REDIS_OPERATIONS
                .iter()
                .map(|op| metrics.redis_duration.with_label_values(&[op]))
                .collect(),
            metrics,
            timeout,
            settings: settings.clone(),
            tls_roots: roots,
        };
        let certs = fleet.tls_roots.as_deref().map(certificates);
        fleet.sentinels = sentinel::Sentinels::new(settings, certs.as_ref(), &tcp_settings())
            .map_err(anyhow::Error::msg)?;
        let client = match &settings.url {
            Some(url) => {
                let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?
                    .set_tcp_settings(tcp_settings());
                let client = match certs {
                    Some(certs) => redis::Client::build_with_tls(info, certs),
                    None => redis::Client::open(info),
                }
                .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
                Some(client)
            }
            // Sentinel names the primary at the first heartbeat.
            None => None,
        };
        if client.is_some() || fleet.sentinels.is_some() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout(timeout)))
                // Each call is bounded by `timeout` here (`invoke`); the connection's own bound
                // only ends the wait of a take or hit given up on (`Watched`), which goes on
                // reading the reply to count what it popped.
                .set_response_timeout(Some(ABANDONED_WAIT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(settings.heartbeat_ms));
            let conns = Connections::new(client, config, open_timeout(timeout))
                .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
            fleet.single = Some(conns);
        }
        fleet.kept = fleet
            .kept_every()
            .map(|every| KeptAnswers::new(every, fleet.orphans.clone()));
        let fleet = Arc::new(fleet);
        if fleet.single.is_none() {
            // Validate the seed URLs now, so a typo fails start-up rather than degrading.
            fleet.cluster_client()?;
            fleet.connect_cluster().await;
        }
        if fleet.heartbeat().await.is_err() {
            tracing::warn!("Redis cannot be used at start-up: serving from the local pool and limits until it can");
        }
        Ok(fleet)
    }

    fn cluster_client(&self) -> anyhow::Result<redis::cluster::ClusterClient> {
        let mut builder =
            redis::cluster::ClusterClientBuilder::new(self.settings.cluster_urls.clone())
                .connection_timeout(connect_timeout(self.timeout))
                .response_timeout(self.timeout)
                .retries(1)
                .tcp_settings(tcp_settings());
        if let Some(pem) = &self.tls_roots {
            builder = builder.certs(certificates(pem));
        }
        builder
            .build()
            .map_err(|e| anyhow::anyhow!("redis.cluster_urls: {e}"))
    }

    /// Drops the Cluster connection unless it was made less than a Cluster open timeout ago; the
    /// heartbeat makes a new one.
    fn drop_cluster(&self) {
        let mut cluster = self.cluster.write();
        let bound = cluster_open_timeout(self.timeout);
        if cluster
            .as_ref()
            .is_some_and(|(_, made)| made.elapsed() >= bound)
        {
            *cluster = None;
        }
    }

    pub(super) async fn connect_cluster(&self) {
        let Ok(client) = self.cluster_client() else {
            return;
        };
        let bound = cluster_open_timeout(self.timeout);
        match tokio::time::timeout(bound, client.get_async_connection()).await {
            Ok(Ok(c)) => {
                if let Some(kept) = &self.kept {
                    kept.connected(c.clone());
                }
                *self.cluster.write() = Some((c, std::time::Instant::now()));
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot connect to the Redis Cluster"),
            Err(_) => tracing::debug!("connecting to the Redis Cluster timed out"),
        }
    }

    /// Whether this replica currently uses Redis.
    pub fn healthy(&self) -> bool {
        !self.degraded.load(Ordering::Relaxed)
            && !self.clock_off.load(Ordering::Relaxed)
            && !self.clock_stepped()
    }

    /// The replica's clock minus the time elapsed since it started (ms): constant while the
    /// clock runs at the pace of elapsed time, moved by a step.
    pub(super) fn clock_against_elapsed(&self) -> i64 {
        self.clock.now_ms() as i64 - self.started.elapsed().as_millis() as i64
    }

    /// Whether this replica's clock has stepped by more than `redis.max_clock_offset_ms` since
    /// the last heartbeat measured it against Redis's (its wall clock was found ahead, or its
    /// machine slept): the heartbeat's measurement no longer holds, so it stops sharing at once
    /// (`clock_off`), before any call carries the stepped clock to Redis, until the next
    /// heartbeat measures it again. Calls judged by a clock minutes ahead would purge the shared
    /// pool's URLs as expired.
    fn clock_stepped(&self) -> bool {
        let at_beat = self.clock_at_beat.load(Ordering::Relaxed);
        if at_beat == i64::MIN {
            return false;
        }
        let step_ms = self.clock_against_elapsed() - at_beat;
        if step_ms.unsigned_abs() <= self.settings.max_clock_offset_ms {
            return false;
        }
        if !self.clock_off.swap(true, Ordering::SeqCst) {
            self.metrics.redis_degraded.set(1);
            tracing::warn!(
                step_ms,
                bound_ms = self.settings.max_clock_offset_ms,
                "this replica's clock stepped by more than redis.max_clock_offset_ms since the heartbeat measured it: serving from the local pool and limits until the next heartbeat finds it within the bound of Redis's"
            );
        }
        true
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
    pub(super) fn shared_min_remaining(&self, min_remaining_ms: u64) -> u64 {
        min_remaining_ms + 2 * self.settings.max_clock_offset_ms
    }

    /// Where a URL that a take or hit popped for nobody lands from now on: this replica's own
    /// pool (see `orphans`). Until it is given, such a URL is counted as waste.
    pub fn land_orphans_in(&self, land: Land) {
        self.orphans.land_in(land);
    }

    /// Live replicas at the last heartbeat (this one included).
    pub fn replicas(&self) -> usize {
        self.live_replicas.load(Ordering::Relaxed)
    }

    /// Runs a script with the timeout, tripping degraded mode on failure.
    pub(super) async fn script<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: ScriptInvocation<'_>,
    ) -> Result<T, Down> {
        if !self.healthy() {
            return Err(Down::NotSent);
        }
        self.send(Route::ThisThread, op, Request::Script(invocation))
            .await
    }

    /// Runs a pool script with the timeout, as the library's function when Redis has it loaded,
    /// tripping degraded mode on failure. A call Redis answered without running it ([`NotRun`])
    /// is sent again: after the library is loaded again if Redis lost it, as a script if Redis
    /// refuses functions now, after the script is loaded if Redis does not have it.
    async fn fenced<T: FromRedisValue>(
        &self,
        op: &'static str,
        fenced: &Fenced,
        call: &Call,
    ) -> Result<T, Down> {
        if !self.healthy() {
            return Err(Down::NotSent);
        }
        // At most three sends: a function Redis refuses now is sent as a script, which a
        // Redis that never ran it answers `NOSCRIPT` to before it is loaded.
        let mut sends = 0;
        let result = loop {
            let reloads = self.reloads.load(Ordering::Acquire);
            let functions = self.functions();
            let request = call.request(fenced, functions, &self.orphans, self.kept.as_ref());
            let result = self.send_raw(Route::ThisThread, op, request).await;
            sends += 1;
            let why = match &result {
                Err(Some(e)) if sends < 3 => not_run(e, functions),
                _ => None,
            };
            match why {
                None => break result,
                Some(NotRun::Missing) => {
                    tracing::info!(op, "Redis lost the pool scripts' library: loading it again");
                    self.reload_library(reloads).await;
                }
                Some(NotRun::Refused) => {
                    let error = result.err().flatten().map(|e| e.to_string());
                    tracing::info!(op, error, "Redis refused the pool script's function: running the pool scripts as scripts");
                    self.functions
                        .store(Functions::Refused as u8, Ordering::Relaxed);
                }
                Some(NotRun::NoScript) => {
                    let mut load = redis::cmd("SCRIPT");
                    load.arg("LOAD").arg(&fenced.code);
                    // A failure here shows in the call sent next.
                    let _: Result<String, _> = self
                        .send_raw(Route::ThisThread, "load", Request::Command(load))
                        .await;
                }
            }
        };
        self.settle(op, result)
    }

    /// Loads the library again unless another call did since `seen` reloads.
    async fn reload_library(&self, seen: u64) {
        let _one = self.reload.lock().await;
        if self.reloads.load(Ordering::Acquire) == seen {
            self.load_library(Route::ThisThread).await;
            self.reloads.fetch_add(1, Ordering::Release);
        }
    }

    /// Forgets whether Redis takes the library, so the next heartbeat asks again.
    pub(super) fn reset_functions(&self) {
        self.functions
            .store(Functions::Unknown as u8, Ordering::Relaxed);
    }

    /// The library's state.
    pub(super) fn functions(&self) -> Functions {
        match self.functions.load(Ordering::Relaxed) {
            1 => Functions::Loaded,
            2 => Functions::Refused,
            _ => Functions::Unknown,
        }
    }

    /// Loads the pool scripts' library (`FUNCTION LOAD`; on a Cluster, on every primary) unless
    /// Redis has it. Never `REPLACE`: the loaded library's memory of each tenant's serial is what
    /// judges a fence for a replica that has seen none (`scripts::FENCE_LIB`), and a replica
    /// starting must not wipe it. The name is the code's digest, so a library of that name is
    /// this code. Redis refusing it (6.x has no functions; an ACL may deny `FUNCTION`) leaves the
    /// scripts in use; a failure to reach Redis changes nothing.
    pub(super) async fn load_library(&self, route: Route) {
        let mut load = redis::cmd("FUNCTION");
        load.arg("LOAD").arg(&self.scripts.library);
        let state = match self
            .send_raw::<String>(route, "load", Request::Command(load))
            .await
        {
            Ok(_) => Functions::Loaded,
            Err(Some(e)) if e.detail().is_some_and(|d| d.contains("already exists")) => {
                Functions::Loaded
            }
            Err(Some(e)) if e.code().is_some() => {
                if self.functions() != Functions::Refused {
                    tracing::info!(error = %e, "Redis does not take the pool scripts as functions: running them as scripts (each reads INFO server)");
                }
                Functions::Refused
            }
            Err(_) => return,
        };
        self.functions.store(state as u8, Ordering::Relaxed);
    }

    /// Runs a script with the timeout whatever the replica's state, tripping degraded mode on
    /// failure.
    pub(super) async fn send<T: FromRedisValue>(
        &self,
        route: Route,
        op: &'static str,
        request: Request<'_>,
    ) -> Result<T, Down> {
        let result = self.send_raw(route, op, request).await;
        self.settle(op, result)
    }

    /// Sends a request with the timeout and times it; `Err(None)`: it timed out or there was no
    /// connection.
    async fn send_raw<T: FromRedisValue>(
        &self,
        route: Route,
        op: &'static str,
        request: Request<'_>,
    ) -> Result<T, Option<redis::RedisError>> {
        let started = std::time::Instant::now();
        let result = if let Some(conns) = &self.single {
            let c = match route {
                Route::ThisThread => conns.for_this_thread(),
                Route::Shared => conns.shared(),
            };
            match c {
                Some(c) => invoke(request, c, self.timeout).await,
                None => Err(None),
            }
        } else {
            let cluster = self.cluster.read().as_ref().map(|(c, _)| c.clone());
            match cluster {
                Some(c) => invoke(request, c, self.timeout).await,
                None => Err(None),
            }
        };
        if let Some(h) = REDIS_OPERATIONS
            .iter()
            .position(|o| *o == op)
            .and_then(|i| self.durations.get(i))
        {
            h.observe(started.elapsed().as_secs_f64());
        }
        result
    }

    /// A request's result: a failure trips degraded mode.
    fn settle<T>(
        &self,
        op: &'static str,
        result: Result<T, Option<redis::RedisError>>,
    ) -> Result<T, Down> {
        result.map_err(|e| {
            self.metrics.redis_errors.with_label_values(&[op]).inc();
            self.replace_connections_after(op, e.as_ref());
            if !self.degraded.swap(true, Ordering::SeqCst) {
                self.metrics.redis_degraded.set(1);
                match e {
                    Some(e) if refuses_command(&e) => tracing::warn!(op, error = %e, "Redis refuses a command embedgate needs (its ACL, or a Redis without it): serving from the local pool and limits until it is granted"),
                    Some(e) => tracing::warn!(op, error = %e, "Redis failed: serving from the local pool and limits until it answers"),
                    None => tracing::warn!(op, timeout_ms = self.timeout.as_millis() as u64, "Redis did not answer in time: serving from the local pool and limits until it answers"),
                }
            }
            Down::Unknown
        })
    }

    /// Replaces the connections a failed call suggests lead to the wrong server.
    ///
    /// The name behind `redis.url` may have moved (a failover) while these connections stay with
    /// the old server until replaced: one that answers as a replica, or one that does not answer
    /// the heartbeat at all (a host gone without a reset leaves its connections open and silent
    /// until the kernel gives up, about 15 minutes later). A heartbeat is the only call a
    /// degraded replica makes, so a slow Redis costs at most a new connection per open timeout.
    ///
    /// A Redis Cluster's connection follows a failover by refreshing its map of slots, but one
    /// whose refresh met the failed primary before its replica took over can be left with every
    /// command timing out after the cluster has recovered (seen in `rollback::a_cluster_failover_…`),
    /// for every slot or only for the failed primary's, while the heartbeat's node answers: any
    /// call that fails without a refusal of Redis's own (a timeout, an I/O error, the cluster
    /// mid-failover, a replica's answer) drops it, and the next heartbeat makes a new one from
    /// the seed URLs, which reads the cluster's map afresh. The call has sent the replica to its
    /// local pool already, so until then nothing else is sent.
    fn replace_connections_after(&self, op: &str, e: Option<&redis::RedisError>) {
        let heartbeat = op == "heartbeat";
        match &self.single {
            Some(conns) => {
                let moved = e.map_or(heartbeat, |e| {
                    answered_by_a_replica(e) || (heartbeat && e.is_timeout())
                });
                if moved {
                    conns.reconnect();
                }
            }
            None => {
                let lost = e.is_none_or(|e| {
                    e.code().is_none() || cluster_in_flux(e) || answered_by_a_replica(e)
                });
                if lost {
                    self.drop_cluster();
                }
            }
        }
    }
}

async fn invoke<T: FromRedisValue, C: ConnectionLike + Send + 'static>(
    request: Request<'_>,
    mut conn: C,
    timeout: Duration,
) -> Result<T, Option<redis::RedisError>> {
    let sent = async {
        match request {
            Request::Script(invocation) => invocation.invoke_async(&mut conn).await,
            Request::Command(cmd) => cmd.query_async(&mut conn).await,
            Request::Pop(cmd, popping) => {
                let reply: Reply =
                    Box::pin(async move { cmd.query_async::<redis::Value>(&mut conn).await });
                let reply = Watched {
                    reply: Some(reply),
                    popping,
                }
                .await?;
                T::from_redis_value(reply).map_err(redis::RedisError::from)
            }
        }
    };
    match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

/// How long a reply nobody waits for any more is still awaited, to land what it popped.
const ABANDONED_WAIT: Duration = Duration::from_secs(60);

type Reply = std::pin::Pin<Box<dyn Future<Output = redis::RedisResult<redis::Value>> + Send>>;

/// The reply of a call that pops URLs (see [`Request::Pop`]). Dropped before the reply came, it
/// leaves the wait to a task of its own, which lands what the reply popped (`orphans`) if it
/// comes within [`ABANDONED_WAIT`]. A reply the connection gave up on (a Redis Cluster's, at
/// its timeout) is looked for where Redis keeps the call's answer, when it does (`kept`).
struct Watched<'a> {
    reply: Option<Reply>,
    popping: Popping<'a>,
}

impl Future for Watched<'_> {
    type Output = redis::RedisResult<redis::Value>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let reply = self.reply.as_mut().expect("polled after it was answered");
        let answered = std::task::ready!(reply.as_mut().poll(cx));
        self.reply = None;
        if let (Err(e), Some(kept)) = (&answered, self.popping.kept.take()) {
            kept.after(e, self.popping.whose.cloned());
        }
        std::task::Poll::Ready(answered)
    }
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pops = self.popping.pops;
        let whose = self.popping.whose.cloned();
        let orphans = self.popping.orphans.clone();
        let kept = self.popping.kept.take();
        runtime.spawn(async move {
            match tokio::time::timeout(ABANDONED_WAIT, reply).await {
                Ok(Ok(reply)) => orphans.abandoned(pops, whose.as_ref(), reply),
                Ok(Err(e)) => {
                    if let Some(kept) = kept {
                        kept.after(&e, whose);
                    }
                }
                Err(_) => {}
            }
        });
    }
}
