//! The key layout. A tenant's keys share its hash tag, so one script can touch them all on
//! Redis Cluster.
//!
//! # Layout (prefix `P`, default `embedgate:`)
//! - `P{t:<tenant>}:f2`: the tenant's fence, `<data set>:<epoch>`, the data set being the
//!   server's `run_id` and replication id (see `scripts::FENCE_LIB`). (`:f` held
//!   `<run_id>:<epoch>`: each release keeps its own fence and so its own epochs, instead of the
//!   two starting a new epoch over each other's at every call while a fleet is upgraded.)
//! - `P{t:<tenant>}:serial`: how many calls have popped the tenant's URLs, an integer that only
//!   grows while the data set is the same; one that went back is an older copy of it (see
//!   `scripts::FENCE_LIB`).
//! - `P{t:<tenant>}:p3:<epoch>:<key>`: sorted set of pooled URLs, each a 16-hex-digit digest of
//!   the URL, a character naming why it was fetched, then the URL, scored by the ms their
//!   request was sent. (`p:` held bare URLs, `p2:` the digest and the URL; each new name keeps
//!   a replica of either release from misreading the other's members while a fleet is
//!   upgraded: until the last replica is replaced, the releases pool apart.)
//! - `P{t:<tenant>}:n3:<epoch>`: the tenant's pooled URLs (its fleet-wide bound), as a sorted
//!   set of each member's digest and reason scored like the pool, so expiry and retries cannot
//!   make it drift. (`n:` held the digests alone.)
//! - `P{t:<tenant>}:s3:<epoch>`: every URL pooled in the epoch that could still be handed out,
//!   by the same member as the count and scored like it, so a put the connection sends again
//!   after its URL was taken cannot pool it a second time.
//! - `P{t:<tenant>}:tk:<id>`: on a Redis Cluster, the answer to one take (or hit: limit verdict
//!   and take), kept for the re-send window so a re-sent call repeats it.
//! - `P{t:<tenant>}:d2:<key>`: each replica's demand for the key: `ms,rate,in_flight,landed`
//!   (when it last reported, its demand estimate, its prefetches in flight, and its landings so
//!   far; see `scripts::SYNC`). (`d:` held `ms,rate,in_flight`: releases that read either
//!   layout do not count each other's demand while a fleet is upgraded.)
//! - `P{t:<tenant>}:rl`: the tenant's inbound GCRA state (theoretical arrival time and
//!   latest clock seen, ms; see `scripts::LIMIT_LIB`).
//! - `P{a:<account>:<region>}:budget`: the account's upstream GCRA state.
//! - `P{a:<account>:<region>}:share:<tenant>`: the tenant's share of it (GCRA at its weight).
//! - `P{replicas}`: replica ids scored by their last heartbeat.
//! - `P{views}`: the fleet's stream of session views (`views`), one entry per replica and tick:
//!   `r` the replica, `v` its batch (JSON).

use super::Fleet;
use crate::pool::PoolKey;
use crate::tenant::Tenant;

/// The infixes of a key's pool and of a tenant's count key (see the layout above).
const POOL: &str = ":p3:";
const COUNT: &str = ":n3:";
/// The infix of a key's demand hash (see the layout above).
const DEMAND: &str = ":d2:";
/// The infix of a tenant's record of the URLs it pooled (see the layout above).
const POOLED: &str = ":s3:";

impl Fleet {
    pub(super) fn key(&self, tag: &str, rest: &str) -> String {
        format!("{}{{{tag}}}{rest}", self.settings.prefix)
    }

    // A tenant's keys share its hash tag, so one script can touch them all on Redis Cluster.
    // They are built on every hit, so without `format!`: one allocation each.

    /// `P{t:<tenant>}` followed by `parts`.
    pub(super) fn tenant_key(&self, tenant: &Tenant, parts: &[&str]) -> String {
        tenant_key(&self.settings.prefix, &tenant.id, parts)
    }

    /// The tenant's fence: `<data set>:<epoch>`.
    pub(super) fn fence_key(&self, tenant: &Tenant) -> String {
        self.tenant_key(tenant, &[":f2"])
    }

    /// The tenant's serial: how many calls have popped its URLs.
    pub(super) fn serial_key(&self, tenant: &Tenant) -> String {
        self.tenant_key(tenant, &[":serial"])
    }

    /// The sorted set of `key`'s pooled URLs in `epoch`.
    pub(super) fn pool_key(&self, tenant: &Tenant, epoch: &str, key: &PoolKey) -> String {
        self.tenant_key(tenant, &[POOL, epoch, ":", key.as_str()])
    }

    /// The tenant's count of pooled URLs in `epoch`.
    pub(super) fn count_key(&self, tenant: &Tenant, epoch: &str) -> String {
        self.tenant_key(tenant, &[COUNT, epoch])
    }

    /// The tenant's record of the URLs pooled in `epoch`.
    pub(super) fn pooled_key(&self, tenant: &Tenant, epoch: &str) -> String {
        self.tenant_key(tenant, &[POOLED, epoch])
    }

    /// The replicas' demand reports and prefetches in flight for `key`.
    pub(super) fn demand_key(&self, tenant: &Tenant, key: &PoolKey) -> String {
        self.tenant_key(tenant, &[DEMAND, key.as_str()])
    }

    /// Where the answer to the take or hit with this `id` is remembered.
    pub(super) fn call_key(&self, tenant: &Tenant, id: &str) -> String {
        self.tenant_key(tenant, &[":tk:", id])
    }

    /// The tenant's inbound GCRA state.
    pub(super) fn limit_key(&self, tenant: &Tenant) -> String {
        self.tenant_key(tenant, &[":rl"])
    }
}

/// `<prefix>{t:<tenant>}<parts...>` in one allocation.
fn tenant_key(prefix: &str, tenant: &str, parts: &[&str]) -> String {
    let len = prefix.len() + tenant.len() + 4 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut key = String::with_capacity(len);
    key.push_str(prefix);
    key.push_str("{t:");
    key.push_str(tenant);
    key.push('}');
    for part in parts {
        key.push_str(part);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::tenant_key;

    /// Keys are shared with replicas of other releases: the layout above, byte for byte.
    #[test]
    fn a_tenant_key_is_the_prefix_the_tenants_hash_tag_and_the_parts() {
        assert_eq!(
            tenant_key("embedgate:", "acme", &[":p3:", "5f3a", ":", "0123abcd"]),
            "embedgate:{t:acme}:p3:5f3a:0123abcd"
        );
        assert_eq!(tenant_key("fleet-b:", "t1", &[":rl"]), "fleet-b:{t:t1}:rl");
        assert_eq!(tenant_key("", "t1", &[]), "{t:t1}");
    }

    /// The benchmarks read the shared pool through its key names; when the keys were renamed
    /// they read nothing (the Redis fill counted no URL and waited forever, the storm through a
    /// fleet reported nothing left pooled, the member length came from no member).
    #[test]
    fn the_benchmarks_read_the_shared_pool_by_the_current_key_names() {
        let redis = include_str!("../../scripts/bench-redis.sh");
        let scenario = include_str!("../../scripts/bench-scenario.sh");
        for (script, text, infix) in [
            ("bench-redis.sh", redis, super::COUNT),
            ("bench-redis.sh", redis, super::POOL),
            ("bench-scenario.sh", scenario, super::COUNT),
        ] {
            let pattern = format!("}}{infix}*");
            assert!(text.contains(&pattern), "{script} scans for {pattern}");
        }
    }
}
