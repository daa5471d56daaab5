//! The refiller: the task that keeps the pool ahead of demand. Each tick it sweeps the demand
//! table, asks the planner (`refill::Planner`) what each key needs (in a fleet, after syncing
//! with the other replicas), and starts prefetches within the prefetch concurrency and the
//! upstream budgets. It lives beside the request path because it shares its fetch path: the
//! budget, the measured lead time, and the hand-over of a prefetch to a caller waiting on it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Gateway;
use crate::limiter::{Budget, Priority, Tentative};
use crate::refill::{Planned, Planner, Predicted, Reason, Tracked, Want};
use crate::upstream::{Fetched, UpstreamError};

impl Gateway {
    /// Measured refill lead time: upstream latency plus one planner tick.
    pub fn lead_secs(&self) -> f64 {
        f64::from_bits(self.lead_secs.load(Ordering::Relaxed))
            + self.settings.refill.tick_ms as f64 / 1000.0
    }

    /// The planner's arithmetic at `now`.
    fn planner(&self, now_ms: u64) -> Planner<'_> {
        Planner {
            demand: &self.demand,
            now_ms,
            lead_secs: self.lead_secs(),
            min_remaining_secs: self.settings.pool.min_remaining_secs,
            max_urls_per_key: self.settings.pool.max_urls_per_key,
        }
    }

    /// One planner pass: purge, then start prefetches for every key below its target depth, as
    /// far as the prefetch concurrency and the upstream budgets allow, then stock surplus with
    /// idle budget. In cluster mode the targets and the pool level are the fleet's, and this
    /// replica fetches its share.
    pub async fn plan(self: &Arc<Self>) {
        let now = self.clock.now_ms();
        self.pool.purge();
        if self.sessions_on() {
            // In a fleet the views this replica learned from go to the others, and theirs come
            // back: every replica learns from the fleet's traffic, and predicts for its own.
            let fleet = self.coordination.is_fleet();
            let mut views = vec![];
            for p in self
                .sessions
                .drain_sharing(now, fleet.then_some(&mut views))
            {
                self.take_prediction(p, now);
            }
            if fleet {
                self.learn_shared_views(views, now).await;
            }
        }
        let tracked = self.forget_refused(self.demand.sweep(now));
        self.metrics.tracked_keys.set(tracked.len() as i64);
        let own: Vec<f64> = tracked.iter().map(|t| self.demand.rate(t, now)).collect();
        let shown: Vec<_> = tracked.iter().map(|t| self.demand.shown(t, now)).collect();
        let views = match self.coordination.shared() {
            false => None,
            true => {
                // A pinned (hinted or warm) key with no traffic still needs someone to fill it:
                // a token rate makes every pinning replica take a share.
                let published: Vec<f64> = tracked
                    .iter()
                    .zip(&own)
                    .map(|(t, r)| r + if t.pinned(now) { 1e-3 } else { 0.0 })
                    .collect();
                self.coordination
                    .sync(
                        &self.tenants,
                        &tracked,
                        &published,
                        now,
                        self.min_remaining_ms(),
                        self.fleet_keep_ms(),
                    )
                    .await
                    .map(|v| (published, v))
            }
        };
        if let Some((_, views)) = &views {
            for (t, v) in tracked.iter().zip(views) {
                if let Some(v) = v {
                    self.demand.settle_pin(t, v.pooled + v.in_flight, now);
                }
            }
        }
        let mut wants: Vec<(Arc<Tracked>, Want)> = {
            // Not held across an await: the thread-local generator is not Send.
            let planner = self.planner(now);
            let mut rng = rand::rng();
            tracked
                .into_iter()
                .enumerate()
                .filter(|(_, t)| !t.backing_off(now))
                .map(|(i, t)| {
                    let fleet = views.as_ref().and_then(|(p, v)| Some((p[i], v[i]?)));
                    let w = planner.want(
                        &t,
                        own[i],
                        &shown[i],
                        self.pool.len(&t.key),
                        fleet,
                        &mut rng,
                    );
                    t.note(Planned {
                        probability: w.probability,
                        target: w.target,
                        stock: w.stock,
                        reason: w.reason,
                        at_ms: now,
                    });
                    (t, w)
                })
                .filter(|(_, w)| w.needed + w.extra > 0)
                .collect()
        };
        if views.is_some() {
            self.claim_fleet(&mut wants, now).await;
        }
        let mut surplus = vec![];
        for (t, w) in wants {
            let fleet = w.fleet_limit.map(|limit| TopUp {
                limit,
                until_ms: now + self.settings.refill.tick_ms,
            });
            self.start_prefetches(&t, w.needed, Priority::Prefetch, w.reason, fleet);
            if w.extra > 0 {
                surplus.push((t, w.extra, w.reason, w.probability, fleet));
            }
        }
        // Surplus only after every key's needed depth had its chance at the budget, the keys
        // most likely to be asked for first (idle budget goes to the highest expected value).
        surplus.sort_by(|a, b| b.3.total_cmp(&a.3));
        for (t, extra, reason, _, fleet) in surplus {
            self.start_prefetches(&t, extra, Priority::Surplus, reason, fleet);
        }
    }

    /// Shares this replica's session views with the fleet and learns from the other replicas',
    /// each admitted for its tenant first, exactly like a request: a view this replica's policy
    /// refuses teaches it nothing. Views that cannot go now (Redis unusable, or more than a
    /// batch) wait for a later tick, oldest first, as long as the learner can still pair them
    /// (a URL's usable life) and up to `MAX_UNSENT_VIEWS`; a batch Redis may have appended
    /// before it failed is not sent again (the others would count its views twice).
    async fn learn_shared_views(&self, drained: Vec<(Arc<Tracked>, u64)>, now: u64) {
        use crate::shared::{Down, MAX_BATCH_VIEWS, MAX_UNSENT_VIEWS};
        let batch: Vec<_> = {
            let mut unsent = self.views_unsent.lock();
            unsent.extend(drained);
            let life_ms = self.sessions.life_ms();
            unsent.retain(|(_, at_ms)| now.saturating_sub(*at_ms) <= life_ms);
            let over = unsent.len().saturating_sub(MAX_UNSENT_VIEWS);
            unsent.drain(..over);
            if !self.coordination.shared() {
                return;
            }
            let n = unsent.len().min(MAX_BATCH_VIEWS);
            unsent.drain(..n).collect()
        };
        let seen = match self.coordination.share_views(&self.tenants, &batch).await {
            Ok(seen) => seen,
            Err(Down::NotSent) => {
                let mut unsent = self.views_unsent.lock();
                for view in batch.into_iter().rev() {
                    unsent.push_front(view);
                }
                return;
            }
            Err(Down::Unknown) => return,
        };
        let learned = seen
            .into_iter()
            .filter_map(|(tenant, at_ms, request)| {
                let t = self.tenants.get(tenant);
                let request = self.admit(t, request).ok()?;
                let key = self.key_for(t, &request);
                Some((self.demand.template(&key, tenant, request, now), at_ms))
            })
            .collect();
        self.sessions.learn_shared(learned);
    }

    /// Records one session prediction on its key, after admitting the predicted request for its
    /// tenant exactly like a request (validation, routing, policy): a prediction re-addressed to
    /// another user must not reach anything the tenant could not ask for itself.
    fn take_prediction(&self, p: Predicted, now: u64) {
        let tenant = self.tenants.get(p.tenant);
        let request = match &p.user {
            None => p.template.request.clone(),
            Some(user) => match p.template.request.for_user(user) {
                Some(r) => r,
                None => return,
            },
        };
        let Ok(request) = self.admit(tenant, request) else {
            return;
        };
        let key = self.key_for(tenant, &request);
        self.demand.predict(
            &key,
            p.tenant,
            &request,
            p.probability,
            p.reason,
            p.until_ms,
            now,
        );
    }

    /// Turns each replica's share into a claim the fleet agrees to (see
    /// `Coordination::claim`); a key whose claim fails starts nothing this tick. A claim counts
    /// as in flight fleet-wide until the next sync, so each key asks only for what can start:
    /// its upstream's free prefetch slots and the calls its budget would grant (`Budget::plan`:
    /// above the floor its tenant meets at that priority, higher once the tenant is over its
    /// share, as the tick's earlier claims leave the bucket), handed out in the order the
    /// prefetches start (needed depth key by key, then surplus, most
    /// likely first). Claims beyond that would hold the fleet's limit against the prefetches that
    /// do run, and against their top-ups, and against the other replicas' needed prefetches for
    /// the key, which find its limit taken until this replica's next sync.
    async fn claim_fleet(&self, wants: &mut [(Arc<Tracked>, Want)], now: u64) {
        let mut free: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        // Each budget as this tick's claims leave it (a few budgets: one per account and
        // region).
        let mut plans: Vec<(Arc<Budget>, Tentative)> = Vec::new();
        let mut startable = |t: &Tracked, n: usize, priority: Priority| {
            let upstream = self.upstreams.of(&t.request);
            let slots = free
                .entry(upstream.id())
                .or_insert_with(|| upstream.free_prefetch_slots());
            let budget = self.budget_for(&t.request);
            let at = plans
                .iter()
                .position(|(b, _)| Arc::ptr_eq(b, &budget))
                .unwrap_or_else(|| {
                    plans.push((budget.clone(), budget.tentative()));
                    plans.len() - 1
                });
            let n = budget.plan(&mut plans[at].1, t.tenant, priority, n.min(*slots));
            *slots -= n;
            n
        };
        for (t, w) in wants.iter_mut() {
            w.needed = startable(t, w.needed, Priority::Prefetch);
        }
        let mut by_probability: Vec<usize> = (0..wants.len()).collect();
        by_probability.sort_by(|&a, &b| wants[b].1.probability.total_cmp(&wants[a].1.probability));
        for i in by_probability {
            let (t, w) = &mut wants[i];
            w.extra = startable(t, w.extra, Priority::Surplus);
        }
        // Keys left without a slot ask nothing (and cost no round trip).
        let asking: Vec<usize> = (0..wants.len())
            .filter(|&i| wants[i].1.needed + wants[i].1.extra > 0)
            .collect();
        let asks: Vec<(&Tracked, usize, usize)> = asking
            .iter()
            .map(|&i| {
                let (t, w) = &wants[i];
                (&**t, w.needed + w.extra, w.fleet_limit.unwrap_or(0))
            })
            .collect();
        let granted = self
            .coordination
            .claim(&self.tenants, &asks, now, self.fleet_keep_ms())
            .await;
        let mut got = vec![0; wants.len()];
        for (&i, g) in asking.iter().zip(granted) {
            got[i] = g;
        }
        for ((_, w), g) in wants.iter_mut().zip(got) {
            let needed = w.needed.min(g);
            w.extra = g - needed;
            w.needed = needed;
        }
    }

    /// How long a replica's demand entry counts without being refreshed.
    fn fleet_keep_ms(&self) -> u64 {
        (5 * self.settings.refill.tick_ms).max(2_000)
    }

    /// Starts up to `n` prefetches for `t`, as far as the local budget and its upstream's
    /// prefetch slots allow (a full upstream skips its keys; the others go on).
    fn start_prefetches(
        self: &Arc<Self>,
        t: &Arc<Tracked>,
        n: usize,
        priority: Priority,
        reason: Reason,
        fleet: Option<TopUp>,
    ) {
        let budget = self.budget_for(&t.request);
        let upstream = self.upstreams.of(&t.request);
        for _ in 0..n {
            let Some(permit) = upstream.prefetch_slot() else {
                return;
            };
            if budget.try_acquire(t.tenant, priority).is_err() {
                break;
            }
            t.in_flight.start();
            let gw = self.clone();
            let t = t.clone();
            let budget = budget.clone();
            self.health().spawn_short("prefetch", async move {
                gw.prefetch(&t, &budget, priority, reason, fleet).await;
                drop(permit);
            });
        }
    }

    /// One prefetch started by the planner (its call already taken from the local budget). It
    /// keeps topping the key up, so prefetch throughput is bounded by upstream latency and the
    /// budget, not by the planner's tick: on a single node while the key is below its target
    /// (and then its surplus stock); in a fleet within the tick it was planned in, each further
    /// call claimed against that tick's fleet limit (`fleet`) as the planner's own claims are.
    async fn prefetch(
        &self,
        t: &Tracked,
        budget: &Budget,
        mut priority: Priority,
        mut reason: Reason,
        fleet: Option<TopUp>,
    ) {
        loop {
            if self.fleet_budget(budget, t.tenant, priority).await.is_err() {
                t.ended_without_url();
                return;
            }
            // The upstream's own bound on calls in flight, shared with misses: a slow upstream
            // fills its own slots, not the others'.
            let upstream = self.upstreams.of(&t.request);
            let wait = Duration::from_millis(upstream.settings().timeout_ms);
            let Some(slot) = upstream.slot(tokio::time::Instant::now() + wait).await else {
                t.ended_without_url();
                budget.refund(t.tenant);
                return;
            };
            self.metrics.fetched(reason.fetch());
            let fetched_for = reason.fetch();
            let result = self
                .fetch(&t.request)
                .await
                .map(|f| Fetched { fetched_for, ..f });
            drop(slot);
            match result {
                Ok(f) => {
                    t.prefetch_succeeded();
                    let now = self.clock.now_ms();
                    t.land(f, now, |f| self.store(t.tenant, &t.key, f, true))
                        .await;
                }
                Err(UpstreamError::Throttled) => {
                    t.ended_without_url();
                    budget.on_throttle();
                    return;
                }
                Err(e) => {
                    t.ended_without_url();
                    t.prefetch_failed(self.clock.now_ms());
                    tracing::warn!(key = %t.key, tenant = %self.tenants.get(t.tenant).id, error = %e, "prefetch failed; backing off");
                    return;
                }
            }
            if self.coordination.shared() {
                // Until the next tick re-plans with the fleet's fresh view: one more, if the
                // fleet's pool plus its prefetches in flight are still below the limit.
                let now = self.clock.now_ms();
                let Some(top) = fleet.filter(|f| now < f.until_ms) else {
                    return;
                };
                if budget.try_acquire(t.tenant, priority).is_err() {
                    return;
                }
                let granted = self
                    .coordination
                    .claim(
                        &self.tenants,
                        &[(t, 1, top.limit)],
                        now,
                        self.fleet_keep_ms(),
                    )
                    .await;
                if granted.first() != Some(&1) {
                    budget.refund(t.tenant);
                    return;
                }
                t.in_flight.start();
                continue;
            }
            // Below the needed depth: top up at Prefetch priority. Between it and the surplus
            // stock: keep stocking at Surplus priority, taking idle budget as it accrues rather
            // than once per tick (a small bucket would otherwise cap stocking at a few calls a
            // tick).
            let now = self.clock.now_ms();
            let planner = self.planner(now);
            let shown = self.demand.shown(t, now);
            let (target, next) = planner.target(t, self.demand.rate(t, now), &shown);
            let have = self.pool.len(&t.key) + t.in_flight.get();
            let (limit, next_priority) = if have < target {
                (target, Priority::Prefetch)
            } else {
                (planner.surplus(&shown, target), Priority::Surplus)
            };
            if have >= limit || budget.try_acquire(t.tenant, next_priority).is_err() {
                return;
            }
            t.in_flight.start();
            priority = next_priority;
            reason = next;
        }
    }

    /// Runs the planner every `refill.tick_ms` until `shutdown` resolves.
    pub async fn run_refiller(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.settings.refill.tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {
                    if self.settings.refill.enabled {
                        self.plan().await;
                    } else {
                        // Nothing is prefetched, but expired hints still give their slots back.
                        self.pool.purge();
                        self.demand.sweep(self.clock.now_ms());
                    }
                }
            }
        }
    }
}

/// A fleet prefetch's licence to keep topping its key up: the fleet limit its tick planned
/// (shared pool plus the fleet's prefetches in flight), until the next tick.
#[derive(Debug, Clone, Copy)]
struct TopUp {
    limit: usize,
    until_ms: u64,
}
