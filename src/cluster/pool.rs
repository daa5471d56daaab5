//! The shared pool: take, put, and the per-tick demand sync and prefetch claims, each one
//! fenced script.

use std::collections::VecDeque;
use std::time::Duration;

use redis::FromRedisValue;

use super::scripts::{Fenced, OnNewEpoch};
use super::{Call, Down, Fleet, Stored};
use crate::limiter::Inbound;
use crate::metrics::{Fetch, Metrics, Tally, Waste};
use crate::pool::{issued_cutoff, PoolKey, PooledUrl};
use crate::refill::{KeyView, Report};
use crate::tenant::Tenant;

impl Fleet {
    /// Runs a pool script behind the tenant's fence, with the epoch this replica knows and the
    /// highest serial it has seen in it; when Redis says the epoch has changed, learns the
    /// current one and, as the script's [`OnNewEpoch`] says, sends the call once more in it.
    /// `build` adds the body's keys and arguments for an epoch.
    pub(super) async fn pool_script<T: FromRedisValue>(
        &self,
        op: &'static str,
        tenant: &Tenant,
        script: &Fenced,
        build: impl Fn(&mut Call, &str),
    ) -> Result<T, Down> {
        // A third send: the second may meet a fence gone back to an epoch this replica left,
        // whose serial it remembers (see `Known::learn`), and start a new one there.
        for _ in 0..3 {
            let (epoch, seen) = {
                let known = self.epochs.at(tenant.index).read();
                (known.epoch.clone(), known.serial)
            };
            let mut call = Call::default();
            call.key(self.fence_key(tenant))
                .key(self.serial_key(tenant))
                .arg(&epoch)
                .arg(call_id())
                .arg(seen);
            build(&mut call, &epoch);
            let reply: Vec<redis::Value> = self.fenced(op, script, &call).await?;
            match <[redis::Value; 3]>::try_from(reply) {
                Ok([_, result, serial]) => {
                    let serial = u64::from_redis_value(serial).map_err(|_| Down::Unknown)?;
                    self.epochs.at(tenant.index).write().saw(&epoch, serial);
                    return T::from_redis_value(result).map_err(|_| Down::Unknown);
                }
                Err(reply) => {
                    let current = reply
                        .into_iter()
                        .next()
                        .and_then(|v| String::from_redis_value(v).ok())
                        .ok_or(Down::Unknown)?;
                    self.new_epoch(tenant, &epoch, current);
                    // A call sent in no epoch (this replica knew none yet) ran nowhere.
                    if script.on_new_epoch == OnNewEpoch::GiveUp && !epoch.is_empty() {
                        return Err(Down::Unknown);
                    }
                }
            }
        }
        // The epoch changed again between two calls: Redis is being switched right now.
        Err(Down::Unknown)
    }

    /// Records the tenant's current epoch. A change from a known one means Redis came back with
    /// another data set (restart, failover, restore, flush or eviction of the fence, an older
    /// copy written back): everything pooled before stays in the old epoch's keys, never read
    /// again.
    pub(super) fn new_epoch(&self, tenant: &Tenant, seen: &str, current: String) {
        let mut known = self.epochs.at(tenant.index).write();
        if known.epoch == current {
            return;
        }
        if !seen.is_empty() && known.epoch == seen {
            self.metrics.redis_fences.inc();
            tracing::warn!(
                tenant = %tenant.id,
                "the shared pool's data set changed (Redis restarted, failed over, was restored or flushed, or loaded the pool scripts' library anew): URLs pooled before are discarded"
            );
        }
        known.learn(current);
    }

    /// Pops the URL for `key` with the least remaining validity that still has `min_remaining_ms`
    /// (plus the clock margin) left; stale ones met on the way are purged and counted as waste.
    ///
    /// # Errors
    /// Redis is not usable. A URL popped by a command given up on is never handed out by this
    /// call: it lands in this replica's own pool when the reply comes, or from the answer a
    /// Redis Cluster keeps for the call (see `Request::Pop` and `orphans`); lost uncounted if
    /// neither is read.
    pub async fn take(
        &self,
        tenant: &Tenant,
        key: &PoolKey,
        now_ms: u64,
        min_remaining_ms: u64,
    ) -> Result<Option<PooledUrl>, Down> {
        let id = call_id();
        self.take_once(tenant, key, now_ms, min_remaining_ms, &id)
            .await
    }

    /// [`Fleet::take`] with the take's id given: on a Redis Cluster, whose connection sends a
    /// command again after a broken connection, the same id within the re-send window gets the
    /// same answer, however often the call is sent (see `Fleet::remember_ms`).
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
        let (stale, member, issued): (String, String, u64) = self
            .pool_script("take", tenant, &self.scripts.take, |call, epoch| {
                self.popping(call, tenant, epoch, key, id)
                    .arg(cutoff)
                    .arg(self.remember_ms());
            })
            .await?;
        self.count_stale(&stale);
        if member.is_empty() {
            return Ok(None);
        }
        self.handed_out(member, issued, now_ms).map(Some)
    }

    /// The hit path in one round trip: counts one request of `tenant` against its fleet-wide
    /// limit and, only if it is admitted, takes a URL for `key` as [`Fleet::take`] does. A tenant
    /// known to be over its limit is refused locally, without a round trip.
    ///
    /// # Errors
    /// Redis is not usable. The request may have been counted; a URL popped by a command given
    /// up on is handled as [`Fleet::take`]'s.
    pub async fn inbound_take(
        &self,
        tenant: &Tenant,
        key: &PoolKey,
        now_ms: u64,
        min_remaining_ms: u64,
    ) -> Result<(Inbound, Option<PooledUrl>), Down> {
        if let Some(refused) = self.known_over(tenant, now_ms) {
            return Ok((refused, None));
        }
        let id = call_id();
        self.inbound_take_once(tenant, key, now_ms, min_remaining_ms, &id)
            .await
    }

    /// [`Fleet::inbound_take`] with the call's id given, and without the local refusal: on a
    /// Redis Cluster the same id within the re-send window gets the same answer, however often
    /// the call is sent, so a re-sent call neither counts the request twice nor pops a second URL
    /// (see `Fleet::remember_ms`).
    ///
    /// # Errors
    /// See [`Fleet::inbound_take`].
    pub async fn inbound_take_once(
        &self,
        tenant: &Tenant,
        key: &PoolKey,
        now_ms: u64,
        min_remaining_ms: u64,
        id: &str,
    ) -> Result<(Inbound, Option<PooledUrl>), Down> {
        let cutoff = issued_cutoff(now_ms, self.shared_min_remaining(min_remaining_ms));
        let limit = tenant.limit();
        let (allowed, n, stale, member, issued): (u8, u32, String, String, u64) = self
            .pool_script("hit", tenant, &self.scripts.hit, |call, epoch| {
                self.popping(call, tenant, epoch, key, id)
                    .key(self.limit_key(tenant))
                    .arg(cutoff)
                    .arg(self.remember_ms())
                    .arg(now_ms)
                    .arg(format!("{:.6}", 1000.0 / limit.rate_per_sec))
                    .arg(limit.burst)
                    .arg(self.max_late_ms());
            })
            .await?;
        self.count_stale(&stale);
        if allowed == 0 {
            let refused = Inbound::Limited {
                retry_after: Duration::from_millis(u64::from(n.max(1))),
            };
            self.note_verdict(tenant, now_ms, refused);
            return Ok((refused, None));
        }
        let admitted = Inbound::Allowed { remaining: n };
        if member.is_empty() {
            return Ok((admitted, None));
        }
        Ok((admitted, Some(self.handed_out(member, issued, now_ms)?)))
    }

    /// The keys a take or hit starts with after the fence's (its pool, the tenant's count, the
    /// call's id: [`Pops::CALL_KEY`] counts on this order), and whose URL it takes.
    fn popping<'c>(
        &self,
        call: &'c mut Call,
        tenant: &Tenant,
        epoch: &str,
        key: &PoolKey,
        id: &str,
    ) -> &'c mut Call {
        call.key(self.pool_key(tenant, epoch, key))
            .key(self.count_key(tenant, epoch))
            .key(self.call_key(tenant, id))
            .popping_for(tenant.index, key)
    }

    /// A URL popped from the shared pool, its remaining validity observed.
    fn handed_out(&self, member: String, issued_ms: u64, now_ms: u64) -> Result<PooledUrl, Down> {
        let u = decode_member(member, issued_ms).ok_or(Down::Unknown)?;
        self.metrics
            .remaining_validity
            .observe(u.expires_at_ms().saturating_sub(now_ms) as f64 / 1000.0);
        Ok(u)
    }

    /// How long a re-send of a call can come after the call: twice the command timeout, and
    /// at least a second.
    fn resend_window_ms(&self) -> u64 {
        (2 * self.timeout.as_millis() as u64).max(1_000)
    }

    /// How long a take's or hit's answer is kept under its id. A Redis Cluster connection sends
    /// a command again after a broken connection, so there the answer is kept for any re-send
    /// of it. A standalone connection never sends a command twice (one on a broken connection
    /// fails, and the replica turns degraded), so there nothing is kept (0): keeping it would
    /// cost Redis two commands and a key per hit for nothing.
    fn remember_ms(&self) -> u64 {
        if self.single.is_some() {
            0
        } else {
            self.resend_window_ms()
        }
    }

    /// Where a take's or hit's answer is kept (a Redis Cluster), how often the answers of calls
    /// given up on are read (`kept`): half the time one is kept.
    pub(super) fn kept_every(&self) -> Option<Duration> {
        match self.remember_ms() {
            0 => None,
            ms => Some(Duration::from_millis(ms / 2)),
        }
    }

    /// How late a limiter call may reach Redis and still be judged at the latest clock seen
    /// (`scripts::LIMIT_LIB`): a re-send within its window, between clocks up to the offset
    /// bound apart.
    pub(super) fn max_late_ms(&self) -> u64 {
        self.resend_window_ms() + 2 * self.settings.max_clock_offset_ms
    }

    /// Adds a URL to the shared pool within the per-key and per-tenant bounds. A `landing` (a
    /// prefetch's own URL) is counted as one of this replica's prefetches landed, whether the
    /// URL is stored or not (see `scripts::SYNC`).
    ///
    /// A put sent in a known epoch that meets a new one is not sent again in it: its outcome is
    /// unknown. A Redis Cluster connection sends a command again when the first send got no
    /// answer, so the answer naming the new epoch may be the second send's, from the server
    /// that took the tenant's slot over, while the first send ran on the old server and pooled
    /// the URL in the old epoch. Put in the new epoch too, the URL would be in two pools, and a
    /// server that comes back with its data and its `run_id` (a primary that went silent and
    /// resumes before it learns it was replaced, a partition that heals) hands out the old
    /// epoch's URLs to replicas it still answers. A standalone connection never sends a command
    /// twice, so there the answer is certain; the rule is the same for both, at the cost of the
    /// URLs of the puts in flight when an epoch changes (`unconfirmed` waste).
    ///
    /// # Errors
    /// `Down::Unknown`: the URL may be in Redis already, so the caller must drop it.
    #[allow(clippy::too_many_arguments)]
    pub async fn put(
        &self,
        tenant: &Tenant,
        key: &PoolKey,
        url: &PooledUrl,
        now_ms: u64,
        min_remaining_ms: u64,
        max_per_key: usize,
        landing: bool,
    ) -> Result<Stored, Down> {
        let ttl = (url.expires_at_ms() + 1000).saturating_sub(now_ms).max(1);
        let cutoff = issued_cutoff(now_ms, min_remaining_ms);
        let (stale, stored): (String, u8) = self
            .pool_script("put", tenant, &self.scripts.put, |call, epoch| {
                call.key(self.pool_key(tenant, epoch, key))
                    .key(self.count_key(tenant, epoch))
                    .key(self.demand_key(tenant, key))
                    .key(self.pooled_key(tenant, epoch))
                    .arg(url.issued_at_ms)
                    .arg(url.encode())
                    .arg(cutoff)
                    .arg(max_per_key)
                    .arg(tenant.quotas().max_pooled_urls)
                    .arg(ttl)
                    .arg(&self.replica)
                    .arg(url.fetched_for.code().to_string())
                    .arg(u8::from(landing));
            })
            .await?;
        self.count_stale(&stale);
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
        let (stale, views): (String, Vec<(usize, String, usize, usize)>) = self
            .pool_script("sync", tenant, &self.scripts.sync, |call, epoch| {
                call.key(self.count_key(tenant, epoch));
                for (key, _) in keys {
                    call.key(self.pool_key(tenant, epoch, key))
                        .key(self.demand_key(tenant, key));
                }
                call.arg(cutoff).arg(&self.replica).arg(now_ms).arg(keep_ms);
                for (_, own) in keys {
                    call.arg(format!("{:.6}", own.rate))
                        .arg(own.in_flight)
                        .arg(own.landed);
                }
            })
            .await?;
        self.count_stale(&stale);
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
        self.pool_script("claim", tenant, &self.scripts.claim, |call, epoch| {
            call.key(self.pool_key(tenant, epoch, key))
                .key(self.demand_key(tenant, key))
                .arg(&self.replica)
                .arg(now_ms)
                .arg(keep_ms)
                .arg(want)
                .arg(limit);
        })
        .await
    }

    /// Counts the stale URLs a script removed, given as their reasons' characters.
    pub(super) fn count_stale(&self, stale: &str) {
        count_stale(&self.metrics, stale);
    }
}

/// Counts the stale URLs a pool script purged: `stale` holds the reason each was fetched for,
/// one character each.
pub(super) fn count_stale(metrics: &Metrics, stale: &str) {
    // Members carry a reason only this release writes (`scripts::POOL_LIB`).
    let tally: Tally = stale
        .chars()
        .map(|c| Fetch::from_code(c).unwrap_or(Fetch::Prefetch))
        .collect();
    metrics.wasted_tally(Waste::Expired, &tally);
}

/// Where the result of a pool script that pops URLs holds the stale URLs it purged, the URL it
/// popped and when that URL's request was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pops {
    pub(super) stale: usize,
    pub(super) member: usize,
    pub(super) issued: usize,
}

impl Pops {
    /// `scripts::TAKE`: `{stale, member, issued_ms}`.
    pub(super) const TAKE: Pops = Pops {
        stale: 0,
        member: 1,
        issued: 2,
    };
    /// `scripts::HIT`: `{allowed, remaining, stale, member, issued_ms}`.
    pub(super) const HIT: Pops = Pops {
        stale: 2,
        member: 3,
        issued: 4,
    };

    /// The index of the call's id among a fenced call's keys (the fence, the serial, then the
    /// script's: pool, count, call id), where a Redis Cluster keeps its answer.
    pub(super) const CALL_KEY: usize = 4;
}

/// The URL a pooled member holds (the digest, the reason it was fetched for, then the URL),
/// dated `issued_ms`. `None` for a member this release did not write (it has no reason).
pub(super) fn decode_member(mut member: String, issued_ms: u64) -> Option<PooledUrl> {
    let fetched_for = fetched_for(&member)?;
    member.drain(..=DIGEST_LEN);
    Some(PooledUrl::decode(member, issued_ms, fetched_for))
}

/// The reason a pooled member's URL was fetched for: the character after its digest. `None`
/// for a member this release did not write.
fn fetched_for(member: &str) -> Option<Fetch> {
    member
        .get(DIGEST_LEN..)
        .and_then(|rest| rest.chars().next())
        .and_then(Fetch::from_code)
}

/// The length of the digest that starts every pooled member (`scripts::POOL_LIB`); the
/// character after it names the reason the URL was fetched for.
pub(super) const DIGEST_LEN: usize = 16;

/// 16 random hex digits: the id of one take or hit (the key its answer is remembered under),
/// or a fresh epoch. Built on every hit, so without `format!`.
fn call_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u64>();
    (0..16)
        .rev()
        .map(|i| char::from(HEX[((n >> (i * 4)) & 0xf) as usize]))
        .collect()
}

/// What a replica knows of a tenant's fence (see `scripts::FENCE_LIB`).
#[derive(Debug, Default)]
pub(super) struct Known {
    /// The epoch it last saw (empty: none yet).
    epoch: String,
    /// The highest serial it has seen in that epoch: a serial behind it went back in time.
    serial: u64,
    /// The last epochs it left, each with the serial it had seen there. Redis never goes back to
    /// an epoch except with an older copy of its data set, so a fence that names one again is
    /// sent the serial remembered for it, and starts a new epoch if the serial is behind that.
    left: VecDeque<(String, u64)>,
}

/// How many left epochs a replica remembers per tenant.
pub(super) const LEFT_EPOCHS: usize = 8;

impl Known {
    /// A call in `epoch` found the tenant's serial at `serial`.
    fn saw(&mut self, epoch: &str, serial: u64) {
        if self.epoch == epoch {
            self.serial = self.serial.max(serial);
        }
    }

    /// Moves to the `current` epoch, remembering the one left.
    fn learn(&mut self, current: String) {
        let back = self.left.iter().position(|(e, _)| *e == current);
        let serial = back
            .and_then(|i| self.left.remove(i))
            .map_or(0, |(_, serial)| serial);
        let left = std::mem::replace(&mut self.epoch, current);
        let left_at = std::mem::replace(&mut self.serial, serial);
        if !left.is_empty() {
            if self.left.len() == LEFT_EPOCHS {
                self.left.pop_front();
            }
            self.left.push_back((left, left_at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_answer_from_an_epoch_left_does_not_raise_the_current_one() {
        let mut k = Known::default();
        k.learn("e".into());
        k.saw("e", 5);
        k.learn("f".into());
        // A call sent in `e` answered after the move: `f`'s serial is another count.
        k.saw("e", 500);
        assert_eq!((k.epoch.as_str(), k.serial), ("f", 0));
        k.saw("f", 3);
        k.saw("f", 2);
        assert_eq!(
            k.serial, 3,
            "the highest seen, whatever order the answers come in"
        );
    }

    #[test]
    fn an_epoch_named_again_is_sent_the_serial_seen_there() {
        let mut k = Known::default();
        k.learn("e".into());
        k.saw("e", 7);
        k.learn("f".into());
        k.saw("f", 2);
        k.learn("e".into());
        assert_eq!((k.epoch.as_str(), k.serial), ("e", 7));
        k.learn("f".into());
        assert_eq!(k.serial, 2);
    }

    #[test]
    fn the_epochs_left_are_bounded() {
        let mut k = Known::default();
        for i in 0..3 * LEFT_EPOCHS {
            k.learn(i.to_string());
            k.saw(&i.to_string(), 1);
        }
        assert_eq!(k.left.len(), LEFT_EPOCHS);
        // The oldest are forgotten: named again, they are sent nothing to be behind.
        k.learn("0".into());
        assert_eq!(k.serial, 0);
    }
}
