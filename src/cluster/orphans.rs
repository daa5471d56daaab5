//! What a take or hit popped for nobody becomes.
//!
//! A pool script that pops a URL can run without its caller: the caller stopped waiting (the
//! command timed out, or its request was dropped because the client went away) and the call
//! ran anyway, or ran later (a Redis that paused its clients' writes runs it when the pause
//! ends). Its reply, read late (`Watched`) or from the answer a Redis Cluster keeps for the call
//! (`kept`), names the URL it popped. Only this replica has that URL: the pop removed it from
//! Redis in one script. So it lands in this replica's own pool for its key, which every take
//! here reads before the shared pool, and the next request for the key on this replica is
//! handed it, as on a single node the URL of a request whose client left goes to the next
//! request for its key. It is dated earlier by twice `redis.max_clock_offset_ms`, the margin a
//! shared URL is handed out with (it was dated by the clock of the replica that fetched it), so
//! this replica's pool hands it out only while at least `min_remaining` is truly left. A URL the
//! pool cannot keep (too little left, the pool full) is counted there as waste; the stale URLs
//! the call purged are counted as expired.

use std::sync::{Arc, OnceLock};

use redis::FromRedisValue;

use super::pool::{count_stale, decode_member, Pops};
use crate::metrics::{Fetch, Metrics, Waste};
use crate::pool::{PoolKey, PooledUrl};
use crate::tenant::TenantId;

/// Whose URL a popping call takes: the key a URL it popped for nobody lands under.
#[derive(Debug, Clone)]
pub(super) struct Whose {
    pub(super) tenant: TenantId,
    pub(super) key: PoolKey,
}

/// Pools a URL for a tenant's key in this replica's own pool (see `shared::PoolStore`); a URL
/// it cannot keep it counts as waste itself.
pub type Land = Box<dyn Fn(TenantId, &PoolKey, PooledUrl) + Send + Sync>;

/// Lands the URLs popped for nobody (see the module's documentation).
pub(super) struct Orphans {
    metrics: Arc<Metrics>,
    /// This replica's own pool, once the gateway has given it; until then a URL popped for
    /// nobody is counted as `cancelled` waste.
    land: OnceLock<Land>,
    /// How much earlier than its stamp a shared URL is dated here: twice the clock offset bound.
    margin_ms: u64,
}

impl Orphans {
    pub(super) fn new(metrics: Arc<Metrics>, margin_ms: u64) -> Arc<Orphans> {
        Arc::new(Orphans {
            metrics,
            land: OnceLock::new(),
            margin_ms,
        })
    }

    /// Where the URLs popped for nobody land from now on; the first given stays.
    pub(super) fn land_in(&self, land: Land) {
        let _ = self.land.set(land);
    }

    /// A pool script's `reply` that nobody waited for any more. A reply that names a new epoch
    /// ran nothing.
    pub(super) fn abandoned(&self, pops: Pops, whose: Option<&Whose>, reply: redis::Value) {
        let Ok(Ok([_, result, _])) =
            Vec::<redis::Value>::from_redis_value(reply).map(<[redis::Value; 3]>::try_from)
        else {
            return;
        };
        let Ok(result) = Vec::<redis::Value>::from_redis_value(result) else {
            return;
        };
        let text = |i: usize| String::from_redis_value_ref(result.get(i)?).ok();
        let issued = result
            .get(pops.issued)
            .and_then(|v| u64::from_redis_value_ref(v).ok());
        self.popped(
            whose,
            &text(pops.stale).unwrap_or_default(),
            &text(pops.member).unwrap_or_default(),
            issued.unwrap_or_default(),
        );
    }

    /// The answer a Redis Cluster kept for a call given up on (`scripts::TAKE`'s
    /// `stale,issued:member`, `scripts::HIT`'s `allowed,remaining,stale,issued:member`).
    pub(super) fn kept(&self, whose: Option<&Whose>, answer: &str) {
        if let Some((head, member)) = answer.split_once(':') {
            let mut fields = head.rsplit(',');
            let issued = fields.next().and_then(|i| i.parse().ok());
            let stale = fields.next().unwrap_or_default();
            self.popped(whose, stale, member, issued.unwrap_or_default());
        }
    }

    /// Counts the stale URLs a call purged, and lands the URL it popped (an empty member: it
    /// popped nothing).
    fn popped(&self, whose: Option<&Whose>, stale: &str, member: &str, issued_ms: u64) {
        count_stale(&self.metrics, stale);
        if member.is_empty() {
            return;
        }
        let dated = issued_ms.saturating_sub(self.margin_ms);
        // Members carry a reason only this release writes (`scripts::POOL_LIB`); one written
        // by an older release is not handed out here either (see `Fleet::handed_out`).
        let Some(url) = decode_member(member.to_string(), dated) else {
            self.metrics.wasted(Waste::Cancelled, Fetch::Prefetch, 1);
            return;
        };
        match (whose, self.land.get()) {
            (Some(whose), Some(land)) => land(whose.tenant, &whose.key, url),
            _ => self.metrics.wasted(Waste::Cancelled, url.fetched_for, 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::pool::DIGEST_LEN;
    use super::*;
    use parking_lot::Mutex;

    type Landed = Arc<Mutex<Vec<(TenantId, String, PooledUrl)>>>;

    /// Orphans whose URLs land in a list, with a margin of 2 s.
    fn landing() -> (Arc<Orphans>, Landed) {
        let orphans = Orphans::new(Arc::new(Metrics::new()), 2_000);
        let landed = Landed::default();
        let into = landed.clone();
        orphans.land_in(Box::new(move |tenant, key, url| {
            into.lock().push((tenant, key.as_str().to_string(), url));
        }));
        (orphans, landed)
    }

    fn wasted(o: &Orphans, why: Waste, f: Fetch) -> u64 {
        o.metrics
            .wasted
            .with_label_values(&[why.as_str(), f.as_str()])
            .get()
    }

    fn counted(o: &Orphans) -> u64 {
        Waste::ALL
            .into_iter()
            .flat_map(|w| Fetch::ALL.map(|f| wasted(o, w, f)))
            .sum()
    }

    fn whose(key: &str) -> Whose {
        Whose {
            tenant: 3,
            key: PoolKey(key.into()),
        }
    }

    /// A reply nobody waited for any more: the URL a take or hit popped lands for its key,
    /// with its reason and dated earlier by the margin, the stale URLs it purged are counted as
    /// expired; a refused hit, an empty key and a reply naming a new epoch land nothing.
    #[test]
    fn a_reply_nobody_waited_for_lands_the_url_it_popped() {
        use redis::Value;
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let member =
            |f: Fetch, url: &str| text(&format!("{}{}{url}", "0".repeat(DIGEST_LEN), f.code()));
        let fenced =
            |result: Vec<Value>| Value::Array(vec![text(""), Value::Array(result), Value::Int(9)]);
        let (o, landed) = landing();
        let hit = vec![
            Value::Int(1),
            Value::Int(3),
            text("pw"),
            member(Fetch::Follower, "https://u/1"),
            Value::Int(1_700_000_005_000),
        ];
        o.abandoned(Pops::HIT, Some(&whose("k1")), fenced(hit));
        let take = vec![
            text(""),
            member(
                Fetch::Hint,
                "https://u/2 arn:aws:quicksight:us-east-1:1:user/a",
            ),
            Value::Int(1_700_000_009_000),
        ];
        o.abandoned(Pops::TAKE, Some(&whose("k2")), fenced(take));
        let refused = vec![
            Value::Int(0),
            Value::Int(250),
            text(""),
            text(""),
            Value::Int(0),
        ];
        o.abandoned(Pops::HIT, Some(&whose("k3")), fenced(refused));
        let empty = vec![text(""), text(""), Value::Int(0)];
        o.abandoned(Pops::TAKE, Some(&whose("k4")), fenced(empty));
        o.abandoned(
            Pops::TAKE,
            Some(&whose("k5")),
            Value::Array(vec![text("run:epoch")]),
        );

        let landed = landed.lock();
        let got: Vec<_> = landed
            .iter()
            .map(|(t, k, u)| {
                (
                    *t,
                    k.as_str(),
                    u.url.as_str(),
                    u.issued_at_ms,
                    u.fetched_for,
                    u.anonymous_user_arn.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    3,
                    "k1",
                    "https://u/1",
                    1_700_000_003_000,
                    Fetch::Follower,
                    None
                ),
                (
                    3,
                    "k2",
                    "https://u/2",
                    1_700_000_007_000,
                    Fetch::Hint,
                    Some("arn:aws:quicksight:us-east-1:1:user/a")
                ),
            ]
        );
        assert_eq!(wasted(&o, Waste::Expired, Fetch::Prefetch), 1);
        assert_eq!(wasted(&o, Waste::Expired, Fetch::Warm), 1);
        assert_eq!(counted(&o), 2, "only the stale URLs are waste");
    }

    /// The answer a Redis Cluster keeps for a call given up on, as `scripts::TAKE` and
    /// `scripts::HIT` write it: the URL the call popped lands for its key (the URL's own colons
    /// notwithstanding), the stale URLs it purged are counted as expired under their reasons; a
    /// refused hit and an empty key land nothing.
    #[test]
    fn a_kept_answer_lands_the_url_its_call_popped() {
        let (o, landed) = landing();
        let member = |f: Fetch| format!("{}{}https://u:443/x", "0".repeat(DIGEST_LEN), f.code());
        o.kept(
            Some(&whose("a")),
            &format!(",1700000000000:{}", member(Fetch::Hint)),
        );
        o.kept(
            Some(&whose("b")),
            &format!("1,4,pw,1700000001000:{}", member(Fetch::Miss)),
        );
        o.kept(Some(&whose("c")), "0,250,,0:");
        o.kept(Some(&whose("d")), "1,4,,0:");
        // A take that found only stale URLs.
        o.kept(Some(&whose("e")), "h,0:");
        let landed = landed.lock();
        let got: Vec<_> = landed
            .iter()
            .map(|(_, k, u)| (k.as_str(), u.url.as_str(), u.issued_at_ms, u.fetched_for))
            .collect();
        assert_eq!(
            got,
            [
                ("a", "https://u:443/x", 1_699_999_998_000, Fetch::Hint),
                ("b", "https://u:443/x", 1_699_999_999_000, Fetch::Miss),
            ]
        );
        assert_eq!(wasted(&o, Waste::Expired, Fetch::Prefetch), 1);
        assert_eq!(wasted(&o, Waste::Expired, Fetch::Warm), 1);
        assert_eq!(wasted(&o, Waste::Expired, Fetch::Hint), 1);
        assert_eq!(counted(&o), 3, "only the stale URLs are waste");
    }

    /// With nowhere to land (no pool given yet, no key known, a member an older release wrote),
    /// a URL popped for nobody is counted as `cancelled` waste, never lost uncounted.
    #[test]
    fn a_url_with_nowhere_to_land_is_counted_as_waste() {
        let o = Orphans::new(Arc::new(Metrics::new()), 0);
        let member = format!(
            "{}{}https://u",
            "0".repeat(DIGEST_LEN),
            Fetch::Returning.code()
        );
        o.kept(Some(&whose("a")), &format!(",1:{member}"));
        let (o2, landed) = landing();
        o2.kept(None, &format!(",1:{member}"));
        o2.kept(
            Some(&whose("a")),
            &format!(",1:{}", "0".repeat(DIGEST_LEN + 9)),
        );
        assert!(landed.lock().is_empty());
        assert_eq!(wasted(&o, Waste::Cancelled, Fetch::Returning), 1);
        assert_eq!(wasted(&o2, Waste::Cancelled, Fetch::Returning), 1);
        assert_eq!(wasted(&o2, Waste::Cancelled, Fetch::Prefetch), 1);
    }
}
