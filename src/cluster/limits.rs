//! Fleet-wide limits: each tenant's inbound GCRA and each account's upstream budget, shared
//! between tenants by weight.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Down, Fleet};
use crate::limiter::Inbound;
use crate::tenant::Tenant;

impl Fleet {
    /// Counts one request of `tenant` against its fleet-wide limit. A tenant known to be over
    /// its limit is refused locally, without a round trip.
    ///
    /// # Errors
    /// Redis is not usable.
    pub async fn inbound(&self, tenant: &Tenant, now_ms: u64) -> Result<Inbound, Down> {
        if let Some(refused) = self.known_over(tenant, now_ms) {
            return Ok(refused);
        }
        let key = self.limit_key(tenant);
        let limit = tenant.limit();
        let verdict = self
            .gcra(
                "inbound",
                key,
                now_ms,
                1000.0 / limit.rate_per_sec,
                limit.burst,
                0.0,
            )
            .await?;
        self.note_verdict(tenant, now_ms, verdict);
        Ok(verdict)
    }

    /// The refusal of a tenant known to be over its limit: the local fast path, no round trip.
    pub fn known_over(&self, tenant: &Tenant, now_ms: u64) -> Option<Inbound> {
        let over = self.over_until.at(tenant.index).load(Ordering::Relaxed);
        (over > now_ms).then(|| Inbound::Limited {
            retry_after: Duration::from_millis(over - now_ms),
        })
    }

    /// Forgets that `tenant` is over its limit (a reload changed the limit, so a refusal
    /// remembered under the old one says nothing of the new).
    pub fn forget_over(&self, tenant: &Tenant) {
        self.over_until.at(tenant.index).store(0, Ordering::Relaxed);
    }

    /// Remembers a refusal until its `Retry-After`, for [`Fleet::known_over`].
    pub(super) fn note_verdict(&self, tenant: &Tenant, now_ms: u64, verdict: Inbound) {
        if let Inbound::Limited { retry_after } = verdict {
            self.over_until
                .at(tenant.index)
                .store(now_ms + retry_after.as_millis() as u64, Ordering::Relaxed);
        }
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
            .arg(format!("{:.6}", (f64::from(burst) * weight).max(1.0)))
            .arg(self.max_late_ms());
        let (allowed, retry_ms): (u8, u64) = self.script("budget", inv).await?;
        Ok(if allowed == 1 {
            Ok(())
        } else {
            Err(Duration::from_millis(retry_ms.max(1)))
        })
    }

    pub(super) async fn gcra(
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
            .arg(format!("{reserve:.6}"))
            .arg(self.max_late_ms());
        let (allowed, retry_ms, remaining): (u8, u64, u32) = self.script(op, inv).await?;
        Ok(if allowed == 1 {
            Inbound::Allowed { remaining }
        } else {
            Inbound::Limited {
                retry_after: Duration::from_millis(retry_ms.max(1)),
            }
        })
    }
}
