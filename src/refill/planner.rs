//! The planner's arithmetic, pure over what it is given: how many prefetches one key needs now,
//! single node or as this replica's share of the fleet's deficit.

use rand::Rng;

use super::{Demand, Reason, Shown, Tracked};

/// What this replica reports for one key at a sync.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// Its demand estimate, requests per second.
    pub rate: f64,
    /// Its prefetches in flight.
    pub in_flight: usize,
    /// Its prefetches that ended by sending their URL to the shared pool, so far (wrapping): the
    /// shared pool counts the ones it received, so it can tell which of `in_flight` are there
    /// already (see `InFlight::report`).
    pub landed: u32,
}

/// The fleet's view of one key after a sync.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyView {
    /// URLs in the shared pool for the key.
    pub pooled: usize,
    /// Sum of every live replica's demand estimate, requests per second.
    pub fleet_rate: f64,
    /// Replicas that reported demand for the key.
    pub replicas: usize,
    /// Prefetches in flight for the key over the fleet, as each replica last reported.
    pub in_flight: usize,
}

/// What the planner starts for one key this tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Want {
    /// Prefetches up to the needed depth (Little's law, hints, warm).
    pub needed: usize,
    /// Prefetches beyond it, up to the surplus stock, with idle budget only.
    pub extra: usize,
    pub reason: Reason,
    /// In a fleet: the stock the shared pool plus all prefetches in flight may reach.
    pub fleet_limit: Option<usize>,
    /// Probability that the key is asked for within a URL's usable life: from its rate, and
    /// from a session prediction when it has one (the surplus is spent in this order).
    pub probability: f64,
    /// The depth it needs and the stock it may reach, before what it holds is subtracted.
    pub target: usize,
    pub stock: usize,
}

/// What one planner pass knows besides the key: the demand estimates, the time, the measured
/// lead time and the pool's bounds.
pub struct Planner<'a> {
    pub demand: &'a Demand,
    pub now_ms: u64,
    /// Upstream latency plus one planner tick, seconds.
    pub lead_secs: f64,
    pub min_remaining_secs: u64,
    pub max_urls_per_key: usize,
}

impl Planner<'_> {
    /// How many URLs `t` should hold now, and why, for `lambda` requests per second, judged on
    /// what its requests `shown` (see `Demand::target`).
    pub fn target(&self, t: &Tracked, lambda: f64, shown: &Shown) -> (usize, Reason) {
        self.demand.target(
            t,
            lambda,
            shown,
            self.now_ms,
            self.lead_secs,
            self.min_remaining_secs,
            self.max_urls_per_key,
        )
    }

    /// The surplus depth for `needed`, by what a key's requests `shown` (see `Demand::surplus`).
    pub fn surplus(&self, shown: &Shown, needed: usize) -> usize {
        self.demand.surplus(
            shown,
            needed,
            self.lead_secs,
            self.min_remaining_secs,
            self.max_urls_per_key,
        )
    }

    /// The target and surplus depth for `t` at `lambda` (what its requests showed: `shown`),
    /// with its session prediction: a predicted key may be stocked one deep with idle budget.
    fn depths(&self, t: &Tracked, lambda: f64, shown: &Shown) -> (usize, usize, Reason, f64) {
        let (target, mut reason) = self.target(t, lambda, shown);
        let mut stock = self.surplus(shown, target);
        let mut probability = self.demand.likelihood(
            t,
            shown,
            self.now_ms,
            self.lead_secs,
            self.min_remaining_secs,
        );
        if let Some((p, why)) = t.predicted(self.now_ms) {
            stock = stock.max(1).min(self.max_urls_per_key);
            if target == 0 {
                reason = why;
            }
            probability = 1.0 - (1.0 - probability) * (1.0 - p);
        }
        (target, stock, reason, probability)
    }

    /// What this replica should start for `t` now. Single node (`fleet` is `None`): the target
    /// and surplus depth against `local_pooled`, the URLs in this replica's pool. Fleet: this
    /// replica's part of the fleet's deficits, i.e. the targets for the summed demand minus the
    /// shared pool, every replica's prefetches in flight and this replica's own pool (what it
    /// kept while degraded, or a URL a take popped for nobody: its requests take those first),
    /// times this replica's fraction of the demand, rounded at random (`rng`), so that over the
    /// fleet the expected number of fetches is the deficit itself: no N-fold over-fetching, and
    /// no key starved by rounding down on every replica. Prefetches in flight count against the
    /// needed part first.
    /// `own` is this replica's rate estimate, `shown` what the key's requests showed it (whose
    /// rate alone sizes the surplus stock); in a fleet, `fleet` is the rate this replica
    /// published and the fleet's view of the key.
    pub fn want(
        &self,
        t: &Tracked,
        own: f64,
        shown: &Shown,
        local_pooled: usize,
        fleet: Option<(f64, KeyView)>,
        rng: &mut impl Rng,
    ) -> Want {
        let in_flight = t.in_flight.get();
        match fleet {
            None => {
                let (target, stock, reason, probability) = self.depths(t, own, shown);
                let have = local_pooled + in_flight;
                Want {
                    needed: target.saturating_sub(have),
                    extra: stock.saturating_sub(have.max(target)),
                    reason,
                    fleet_limit: None,
                    probability,
                    target,
                    stock,
                }
            }
            Some((published, view)) => {
                let fleet_rate = view.fleet_rate.max(published);
                // What the fleet's requests show, assuming the other replicas saw the same as
                // this one in proportion to their rates.
                let fleet_shown = if published > 0.0 {
                    shown.scaled(fleet_rate / published)
                } else {
                    Shown::default()
                };
                let (target, stock, reason, probability) = self.depths(t, fleet_rate, &fleet_shown);
                let share = if fleet_rate > 0.0 {
                    published / fleet_rate
                } else {
                    1.0 / view.replicas.max(1) as f64
                };
                let mut part = |deficit: usize| {
                    let exact = deficit as f64 * share;
                    let n = exact.floor();
                    (n + f64::from(u8::from(rng.random::<f64>() < exact - n))) as usize
                };
                // This replica's own prefetches are in the fleet's count as of the sync; its own
                // pool is not (no other replica can take from it).
                let have = view.pooled + view.in_flight + local_pooled;
                Want {
                    needed: part(target.saturating_sub(have)),
                    extra: part(stock.saturating_sub(have.max(target))),
                    reason,
                    fleet_limit: Some(stock),
                    probability,
                    target,
                    stock,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::config::RefillSettings;
    use crate::model::{DashboardEmbedRequest, EmbedRequest, IdentityType};

    /// An anonymous dashboard's key and request.
    fn anonymous() -> (crate::pool::PoolKey, EmbedRequest) {
        let req = EmbedRequest::Dashboard(DashboardEmbedRequest::new(
            "111122223333",
            "d",
            IdentityType::Anonymous,
        ));
        (crate::pool::pool_key("t", "us-east-1", &req), req)
    }

    /// A demand table with one warm key pinned at `depth` (so its target is `depth` whatever the
    /// rate), and that key.
    fn pinned(depth: usize) -> (Demand, std::sync::Arc<Tracked>) {
        let d = Demand::new(&RefillSettings::default(), vec![(10, 100)]);
        let (key, req) = anonymous();
        d.set_warm(0, &[(key, &req, depth)], 1_000);
        let t = d.sweep(1_000).into_iter().next().expect("the warm key");
        (d, t)
    }

    fn planner(d: &Demand) -> Planner<'_> {
        Planner {
            demand: d,
            now_ms: 1_000,
            lead_secs: 0.1,
            min_remaining_secs: 60,
            max_urls_per_key: 1000,
        }
    }

    /// `t`'s want for a rate `own` with no stream shown, holding `local_pooled` here (single
    /// node) or with the fleet's view `fleet`.
    fn want(
        p: &Planner,
        t: &Tracked,
        own: f64,
        local_pooled: usize,
        fleet: Option<(f64, KeyView)>,
        rng: &mut StdRng,
    ) -> Want {
        p.want(t, own, &Shown::default(), local_pooled, fleet, rng)
    }

    fn view(pooled: usize, fleet_rate: f64, replicas: usize, in_flight: usize) -> KeyView {
        KeyView {
            pooled,
            fleet_rate,
            replicas,
            in_flight,
        }
    }

    #[test]
    fn a_single_node_fetches_its_target_less_what_it_holds_and_has_in_flight() {
        let (d, t) = pinned(30);
        for _ in 0..5 {
            t.in_flight.start();
        }
        let w = want(
            &planner(&d),
            &t,
            0.0,
            10,
            None,
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!((w.needed, w.extra, w.reason), (15, 0, Reason::Warm));
        assert_eq!(w.fleet_limit, None);
        let full = want(
            &planner(&d),
            &t,
            0.0,
            25,
            None,
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(full.needed, 0, "held plus in flight reach the target");
    }

    #[test]
    fn replicas_split_the_fleets_deficit_by_their_share_of_the_demand() {
        let (d, t) = pinned(30);
        let p = planner(&d);
        let mut rng = StdRng::seed_from_u64(7);
        // 6 pooled and 3 in flight fleet-wide: a deficit of 21, split 1:2:4 by published rate.
        let parts: Vec<usize> = [1.0, 2.0, 4.0]
            .iter()
            .map(|&rate| {
                let w = want(&p, &t, rate, 0, Some((rate, view(6, 7.0, 3, 3))), &mut rng);
                assert_eq!(w.fleet_limit, Some(30));
                w.needed
            })
            .collect();
        assert_eq!(parts, vec![3, 6, 12]);
        // At the target, nobody fetches.
        let w = want(&p, &t, 1.0, 0, Some((1.0, view(25, 3.0, 3, 5))), &mut rng);
        assert_eq!(w.needed + w.extra, 0);
    }

    /// A replica's own pool (kept while degraded, or a URL a take popped for nobody) serves its
    /// next requests before the shared pool: it counts against the fleet's deficit as this
    /// replica sees it, so a replica back from a degraded spell does not stock the shared pool
    /// as deep again on top of what it holds.
    #[test]
    fn a_replicas_own_pool_counts_against_the_fleets_deficit() {
        let (d, t) = pinned(30);
        let p = planner(&d);
        let mut rng = StdRng::seed_from_u64(7);
        // 6 pooled and 3 in flight fleet-wide, all the demand this replica's; `own` pooled here.
        let mut holding =
            |own: usize| want(&p, &t, 7.0, own, Some((7.0, view(6, 7.0, 1, 3))), &mut rng);
        assert_eq!(holding(0).needed, 21);
        assert_eq!(holding(10).needed, 11);
        let full = holding(21);
        assert_eq!(full.needed + full.extra, 0);
    }

    #[test]
    fn random_rounding_makes_the_fleets_expected_fetches_equal_the_deficit() {
        let (d, t) = pinned(10);
        let p = planner(&d);
        let mut rng = StdRng::seed_from_u64(42);
        let rounds = 30_000;
        let mut total = 0;
        for _ in 0..rounds {
            // Three replicas with equal demand: 10/3 each, never all rounded down or all up.
            for _ in 0..3 {
                let w = want(&p, &t, 1.0, 0, Some((1.0, view(0, 3.0, 3, 0))), &mut rng);
                assert!((3..=4).contains(&w.needed), "{}", w.needed);
                total += w.needed;
            }
        }
        let mean = total as f64 / rounds as f64;
        assert!((mean - 10.0).abs() < 0.05, "mean fetches per tick {mean}");
    }

    /// Behind a load balancer each replica sees a share of a key's requests: one that saw a
    /// second request a minute after the first has no stream to show by itself (see
    /// `Evidence::probability`), but when the fleet's rate says the others saw as much, the
    /// fleet has.
    #[test]
    fn a_fleet_judges_a_key_by_the_requests_every_replica_saw() {
        let d = Demand::new(&RefillSettings::default(), vec![(10, 100)]);
        let (key, req) = anonymous();
        d.record(&key, 0, &req, 1_000_000);
        let t = d.record(&key, 0, &req, 1_060_000).expect("tracked");
        let p = Planner {
            now_ms: 1_060_500,
            ..planner(&d)
        };
        let (own, shown) = (d.rate(&t, p.now_ms), d.shown(&t, p.now_ms));
        let mut rng = StdRng::seed_from_u64(5);
        let alone = p.want(&t, own, &shown, 0, None, &mut rng);
        assert_eq!((alone.target, alone.needed), (0, 0), "one gap is no stream");
        let fleet = p.want(
            &t,
            own,
            &shown,
            0,
            Some((own, view(0, 3.0 * own, 3, 0))),
            &mut rng,
        );
        assert_eq!(fleet.target, 1, "three replicas that saw as much show one");
        assert!(fleet.probability > 0.99, "{}", fleet.probability);
    }

    #[test]
    fn a_pinned_key_nobody_asks_for_is_split_evenly_between_the_replicas_holding_it() {
        let (d, t) = pinned(8);
        let p = planner(&d);
        let mut rng = StdRng::seed_from_u64(3);
        let w = want(&p, &t, 0.0, 0, Some((0.0, view(0, 0.0, 4, 0))), &mut rng);
        assert_eq!(w.needed, 2, "a quarter of the 8 the warm key needs");
    }
}
