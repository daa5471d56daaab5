//! A miss's own QuickSight call, which outlives the request that made it.
//!
//! The call runs as a task of its own and hands its answer to the request through a oneshot. A
//! request that stops waiting (its client closed or reset the connection, and actix-web dropped
//! the handler; or the miss deadline passed) leaves the call running to the upstream's own
//! timeout, and its URL goes where a prefetch's goes: to a request waiting on the key, else into
//! the pool.
//! Dropping the call with its request instead threw away a URL QuickSight had been asked for and
//! the budget spent on it, and the client's retry, typically at once, asked again.
//!
//! # Guarantees
//! The answer ends in exactly one place: the request that waits for it, or, once the request
//! has closed the channel, the landing (`Landing::land`), run by whichever side
//! holds the answer then (the task, whose send fails on a closed channel, or the request, which
//! takes back what was sent before it closed). A URL that reached no client is pooled at most
//! once and never handed to two requests.
//!
//! A prefetch's URL delivered to a request that is dropped before it runs again lands the same
//! way ([`Gateway::abandoned`]), unless another request waits on the prefetch and takes it.

use std::sync::Arc;

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::Gateway;
use crate::metrics::{Fetch, Waste};
use crate::model::EmbedRequest;
use crate::pool::PoolKey;
use crate::refill::Tracked;
use crate::tenant::TenantId;
use crate::upstream::{Fetched, UpstreamError};

type Answer = Result<Fetched, UpstreamError>;

/// Where an abandoned call's URL goes: the key it was asked for.
struct Landing {
    gateway: Arc<Gateway>,
    tenant: TenantId,
    key: PoolKey,
    request: EmbedRequest,
    /// The key's demand record, when the refiller tracks it: the abandoned call then counts as
    /// a fetch in flight for it, so a request arriving meanwhile (the client's retry) waits for
    /// its URL instead of asking QuickSight again, and the planner does not stock it twice.
    tracked: Option<Arc<Tracked>>,
}

/// A request's hold on its miss call ([`Gateway::call`]). Dropped, or given up, before the
/// answer came, it leaves the call to land its URL for the key.
pub(super) struct MissCall {
    rx: Option<oneshot::Receiver<Answer>>,
    landing: Arc<Landing>,
}

impl Gateway {
    /// Starts the miss call for `request` on a slot of its upstream, as a task of its own.
    pub(super) fn call(
        self: &Arc<Self>,
        tenant: TenantId,
        key: &PoolKey,
        request: &EmbedRequest,
        tracked: Option<&Arc<Tracked>>,
        slot: OwnedSemaphorePermit,
    ) -> MissCall {
        let (tx, rx) = oneshot::channel();
        let landing = Arc::new(Landing {
            gateway: self.clone(),
            tenant,
            key: key.clone(),
            request: request.clone(),
            tracked: tracked.cloned(),
        });
        let task = landing.clone();
        self.health.spawn_short("miss", async move {
            let gw = &task.gateway;
            let answer = gw.fetch(&task.request).await;
            drop(slot);
            // What the call tells the gateway is recorded here, whoever takes the answer.
            match &answer {
                Ok(_) => gw.metrics.fetched(Fetch::Miss),
                Err(UpstreamError::Throttled) => gw.budget_for(&task.request).on_throttle(),
                Err(_) => {}
            }
            // A closed channel: the request stopped waiting first, and left the answer here.
            if let Err(answer) = tx.send(answer) {
                task.land(answer).await;
            }
        });
        MissCall {
            rx: Some(rx),
            landing,
        }
    }
}

impl Landing {
    /// Lands the answer of a call its request stopped waiting for (see the module's doc).
    async fn land(&self, answer: Answer) {
        let gw = &self.gateway;
        match (answer, self.tracked.as_deref()) {
            (Ok(f), Some(t)) => gw.land_for(t, f).await,
            (Ok(f), None) if gw.fresh(&f) => {
                gw.store(self.tenant, &self.key, f, false).await;
            }
            (Ok(f), None) => gw.metrics.wasted(Waste::Expired, f.fetched_for, 1),
            (Err(_), Some(t)) => t.ended_without_url(),
            (Err(_), None) => {}
        }
    }
}

impl Gateway {
    /// A URL for `t`'s key that the request it was fetched for, or delivered to, will not hand
    /// out (that request was dropped): it counts as a fetch in flight for the key from now on, so
    /// a request arriving meanwhile (typically the client's retry) waits for it, and a task of
    /// its own lands it as a prefetch's lands. Outside a runtime (the process is ending) there is
    /// nowhere to land it, and it is counted as waste.
    pub(super) fn abandoned(self: &Arc<Self>, t: Arc<Tracked>, f: Fetched) {
        if tokio::runtime::Handle::try_current().is_err() {
            self.metrics.wasted(Waste::Cancelled, f.fetched_for, 1);
            return;
        }
        t.in_flight.start();
        let gw = self.clone();
        self.health
            .spawn_short("url landing", async move { gw.land_for(&t, f).await });
    }

    /// Lands a URL fetched for `t`'s key that no request has taken, and that counts as a fetch
    /// in flight for the key until it is landed: to a request waiting on the key, else into the
    /// pool (`Tracked::land`); counted as waste if it is no longer fresh.
    async fn land_for(&self, t: &Tracked, f: Fetched) {
        if self.fresh(&f) {
            let now = self.clock.now_ms();
            t.land(f, now, |f| self.store(t.tenant, &t.key, f, true))
                .await;
        } else {
            self.metrics.wasted(Waste::Expired, f.fetched_for, 1);
            t.ended_without_url();
        }
    }
}

impl MissCall {
    /// The call's answer, or `None` when `until` passed first (the call then goes on, and its
    /// URL lands for the key once this is dropped) or the call's task ended without one.
    pub(super) async fn wait_until(&mut self, until: tokio::time::Instant) -> Option<Answer> {
        let rx = self.rx.as_mut()?;
        match tokio::time::timeout_at(until, rx).await {
            Ok(answer) => {
                self.rx = None;
                answer.ok()
            }
            Err(_) => None,
        }
    }
}

impl Drop for MissCall {
    /// Stops waiting: the call counts as a fetch in flight for its key from now on, and its
    /// answer lands there, whichever side holds it.
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        if let Some(t) = &self.landing.tracked {
            t.in_flight.start();
        }
        rx.close();
        // Outside a runtime (the process is ending) there is nowhere to land it.
        if let (Ok(answer), Ok(_)) = (rx.try_recv(), tokio::runtime::Handle::try_current()) {
            let landing = self.landing.clone();
            self.landing
                .gateway
                .health
                .spawn_short("miss landing", async move { landing.land(answer).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::Clock;
    use crate::gateway::Gate;
    use crate::metrics::Metrics;
    use crate::model::{DashboardEmbedRequest, IdentityType};
    use crate::shared::Sharing;

    /// A gateway in front of an address nothing listens on: it makes no call in these tests.
    async fn gateway() -> Arc<Gateway> {
        let any = "127.0.0.1:0".parse().unwrap();
        let settings = crate::dev::settings(any, any, "http://127.0.0.1:9", "key");
        let metrics = Arc::new(Metrics::new());
        let upstreams = crate::upstream::Upstreams::new(&settings, metrics.clone()).await;
        Arc::new(Gateway::new(
            settings,
            upstreams,
            Clock::System,
            metrics,
            Sharing::local(),
        ))
    }

    /// A request waiting on a prefetch is dropped (its client closed the connection) in the
    /// instant after the prefetch delivered its URL to it and before it ran again: the URL is
    /// pooled for the key, where the next request takes it, instead of being thrown away.
    #[tokio::test]
    async fn a_url_delivered_to_a_request_dropped_before_it_ran_is_pooled_for_the_key() {
        let gw = gateway().await;
        let tenant = gw.tenants().get(0);
        let request = EmbedRequest::Dashboard(DashboardEmbedRequest::new(
            crate::sim::DEFAULT_ACCOUNT_ID,
            "sales-2024",
            IdentityType::Anonymous,
        ));
        let admitted = gw.keyed(tenant, gw.admit(tenant, request).expect("admitted"));
        let now = gw.clock.now_ms();
        let t = gw
            .demand
            .record(&admitted.key, tenant.index, &admitted.request, now)
            .expect("tracked");
        t.in_flight.start(); // a prefetch for the key is in flight

        let mut serve = Box::pin(gw.serve(tenant, &admitted, Gate::Counted { remaining: 9 }));
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut serve).await;
        assert!(waited.is_err(), "the request waits on the prefetch");
        let url = Fetched {
            url: "https://embed.example/once".into(),
            sent_at_ms: now,
            anonymous_user_arn: None,
            fetched_for: Fetch::Prefetch,
        };
        let pooled = t
            .land(url, now, |_| async {
                panic!("the waiting request takes the URL")
            })
            .await;
        assert!(!pooled, "delivered to the waiting request");
        drop(serve); // before it ran again to take the URL

        let mut taken = None;
        for _ in 0..100 {
            taken = gw.take(tenant, &admitted.key).await;
            if taken.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let taken = taken.expect("the URL pooled for the key");
        assert_eq!(taken.url, "https://embed.example/once");
        assert_eq!(t.in_flight.get(), 0, "the landing ended");
        let wasted = gw
            .metrics
            .wasted
            .with_label_values(&[Waste::Cancelled.as_str(), Fetch::Prefetch.as_str()])
            .get();
        assert_eq!(wasted, 0, "nothing counted as thrown away");
        assert!(
            gw.take(tenant, &admitted.key).await.is_none(),
            "pooled once"
        );
    }
}
