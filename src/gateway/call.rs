//! A miss's own QuickSight call, which outlives the request that made it.
//!
//! The call runs as a task of its own and hands its answer to the request through a oneshot. A
//! request that stops waiting (its client reset the connection, and actix-web dropped the
//! handler; or the miss deadline passed) leaves the call running to the upstream's own timeout,
//! and its URL goes where a prefetch's goes: to a request waiting on the key, else into the pool.
//! Dropping the call with its request instead threw away a URL QuickSight had been asked for and
//! the budget spent on it, and the client's retry, typically at once, asked again.
//!
//! # Guarantees
//! The answer ends in exactly one place: the request that waits for it, or, once the request
//! has closed the channel, the landing (`Landing::land`), run by whichever side
//! holds the answer then (the task, whose send fails on a closed channel, or the request, which
//! takes back what was sent before it closed). A URL that reached no client is pooled at most
//! once and never handed to two requests.

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
        let tracked = self.tracked.as_deref();
        let end = || {
            if let Some(t) = tracked {
                t.in_flight.end();
                t.release_unserved_waiters();
            }
        };
        match answer {
            Ok(f) if gw.fresh(&f) => match tracked {
                // As a prefetch lands: to a waiting request, else into the pool.
                Some(t) => {
                    let now = gw.clock.now_ms();
                    t.land(f, now, |f| gw.store(self.tenant, &self.key, f, true))
                        .await;
                }
                None => drop(gw.store(self.tenant, &self.key, f, false).await),
            },
            Ok(f) => {
                gw.metrics.wasted(Waste::Expired, f.fetched_for, 1);
                end();
            }
            Err(_) => end(),
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
