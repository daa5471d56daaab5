//! The key layout. A tenant's keys share its hash tag, so one script can touch them all on
//! Redis Cluster.
//!
//! # Layout (prefix `P`, default `embedgate:`)
//! - `P{t:<tenant>}:f`: the tenant's fence, `<run_id>:<epoch>` (see above).
//! - `P{t:<tenant>}:p:<epoch>:<key>`: sorted set of pooled URLs, scored by the ms their request
//!   was sent.
//! - `P{t:<tenant>}:n:<epoch>`: the tenant's pooled URLs (its fleet-wide bound), as a sorted set
//!   of URL digests scored like the pool, so expiry and retries cannot make it drift.
//! - `P{t:<tenant>}:tk:<id>`: the answer to one take (or hit: limit verdict and take), kept a
//!   second so a re-sent call repeats it.
//! - `P{t:<tenant>}:d:<key>`: each replica's demand estimate for the key (`ms,rate`).
//! - `P{t:<tenant>}:rl`: the tenant's inbound GCRA state (theoretical arrival time, ms).
//! - `P{a:<account>:<region>}:budget`: the account's upstream GCRA state.
//! - `P{a:<account>:<region>}:share:<tenant>`: the tenant's share of it (GCRA at its weight).
//! - `P{replicas}`: replica ids scored by their last heartbeat.

use super::Fleet;
use crate::pool::PoolKey;
use crate::tenant::Tenant;

impl Fleet {
    pub(super) fn key(&self, tag: &str, rest: &str) -> String {
        format!("{}{{{tag}}}{rest}", self.settings.prefix)
    }

    // A tenant's keys share its hash tag, so one script can touch them all on Redis Cluster.

    /// The tenant's fence: `<run_id>:<epoch>`.
    pub(super) fn fence_key(&self, tenant: &Tenant) -> String {
        self.key(&tenant_tag(tenant), ":f")
    }

    /// The sorted set of `key`'s pooled URLs in `epoch`.
    pub(super) fn pool_key(&self, tenant: &Tenant, epoch: &str, key: &PoolKey) -> String {
        self.key(&tenant_tag(tenant), &format!(":p:{epoch}:{key}"))
    }

    /// The tenant's count of pooled URLs in `epoch`.
    pub(super) fn count_key(&self, tenant: &Tenant, epoch: &str) -> String {
        self.key(&tenant_tag(tenant), &format!(":n:{epoch}"))
    }

    /// The replicas' demand reports and prefetches in flight for `key`.
    pub(super) fn demand_key(&self, tenant: &Tenant, key: &PoolKey) -> String {
        self.key(&tenant_tag(tenant), &format!(":d:{key}"))
    }
}

pub(super) fn tenant_tag(tenant: &Tenant) -> String {
    format!("t:{}", tenant.id)
}
