//! Portal sessions: what a registered user opens next, and which users are about to come back.
//!
//! A portal's requests are not independent per key. A user who logs in opens a few dashboards
//! within minutes, mostly along the same paths as the tenant's other users, and the same users
//! come back, mostly to the dashboard they started on last time. Per tenant this learns, from the
//! requests it sees (in a fleet, every replica's: [`Sessions::learn_shared`]; never from anything
//! else):
//!
//! - **followers**: for each thing a URL opens (an *object*: the operation and the experience,
//!   e.g. one dashboard), how often each other object was opened by the same user within a URL's
//!   usable life after it. When a user opens (or is hinted for) object A, every object B with
//!   P(B follows A) ≥ `predict_min_probability`, seen following A at least twice, is predicted
//!   for that user once A has two settled views (see `Object::settled`): B's last request
//!   from any user of the tenant, re-addressed to this user (`EmbedRequest::for_user`) and
//!   admitted through the tenant's policy like any request.
//! - **returning users**: the tenant's rate of session starts by users it already knows, spread
//!   over its known users who are not in a session now, times how often a returning user starts
//!   where they started last time. When that probability, over a URL's usable life, reaches
//!   `predict_min_probability`, each such user's last starting request is predicted.
//!
//! A session starts with a user's first request after a URL's usable life of silence. Only
//! requests that embed as a registered user (a user ARN) take part: anonymous URLs are shared by
//! every viewer of a key, whose own rate already describes them.
//!
//! # Bounds
//! Per tenant at most `max_session_users` users (the least recently seen are forgotten first),
//! at most [`MAX_OBJECTS`] objects with at most [`MAX_FOLLOWERS`] followers each, and at most
//! [`MAX_RECENT`] recent views per user. Requests reach the learner through one bounded queue
//! ([`MAX_EVENTS`]; when full, new events are dropped and counted), drained once per planner
//! tick, so the request path pays one short lock and no learning.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Pending, Reason, Tracked};
use crate::model::{EmbedRequest, Operation, URL_VALIDITY_SECS};
use crate::tenant::{PerTenant, TenantId};

/// Most events waiting for the planner's next tick.
pub const MAX_EVENTS: usize = 65_536;
/// Most objects learned per tenant.
pub const MAX_OBJECTS: usize = 2_000;
/// Most followers remembered per object.
pub const MAX_FOLLOWERS: usize = 16;
/// Most recent views remembered per user.
pub const MAX_RECENT: usize = 8;
/// Fewest settled views of an object (see `Object::settled`) before its followers are trusted.
const MIN_EVIDENCE: f64 = 2.0;
/// Fewest times a follower must have followed before it is predicted: one sighting may be a
/// user's random pick, two of the same pick rarely are. (At the default bar of one half, two
/// settled views already need two; at a lower `predict_min_probability` this keeps a single
/// sighting from being stocked.)
const MIN_FOLLOWS: f64 = 2.0;
/// Counts are halved beyond this, so old habits fade as new ones are seen.
const MAX_COUNT: f64 = 10_000.0;
/// How often returning users are re-evaluated, milliseconds.
const RETURN_EVERY_MS: u64 = 1_000;

/// What happened to a key a user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A request: learned from, and its followers predicted.
    View,
    /// A hint: its followers are predicted, nothing is learned.
    Hint,
}

/// One prediction for the planner: `template`'s request, re-addressed to `user` when it is
/// another user's, is likely (`probability`) to be asked for within a URL's usable life.
pub struct Predicted {
    pub tenant: TenantId,
    pub template: Arc<Tracked>,
    /// `None` when `template` is already this user's own request.
    pub user: Option<Arc<str>>,
    pub probability: f64,
    pub reason: Reason,
    /// The prediction holds until then (the planner stops stocking the key after it).
    pub until_ms: u64,
}

struct Recent {
    object: Arc<str>,
    at_ms: u64,
    /// Followers already counted for this view (each counts once per view).
    credited: Vec<Arc<str>>,
}

struct User {
    last_ms: u64,
    recent: VecDeque<Recent>,
    /// The first request of the user's last session.
    landing: Option<Arc<Tracked>>,
    /// When that session started.
    started_ms: u64,
    /// The object the session before it landed on, if the user had one.
    landed_before: Option<Arc<str>>,
}

struct Object {
    views: f64,
    /// The views whose followers may still come (time constant: the mean follow delay).
    pending: Pending,
    next: Vec<(Arc<str>, f64)>,
    /// The latest request that opened it (any user of the tenant).
    template: Arc<Tracked>,
    last_ms: u64,
}

/// A decaying count of events, read as a rate (the same estimator as a key's demand).
#[derive(Default)]
struct Rate {
    /// The events, decayed (in any order they are added: see [`Pending::add`]).
    events: Pending,
    first_ms: Option<u64>,
}

impl Rate {
    /// Adds an event at `at_ms` (one older than the last, a view another replica saw and learned
    /// a tick later, counts as if added in its place).
    fn add(&mut self, at_ms: u64, tau_secs: f64) {
        self.events.add(at_ms, tau_secs);
        self.first_ms = Some(self.first_ms.map_or(at_ms, |f| f.min(at_ms)));
    }

    /// Events per second, not counting the first one ever seen: one event is no rate (read with
    /// it, a single return would read as one a second and stock every idle user's landing).
    fn per_sec(&self, now_ms: u64, tau_secs: f64) -> f64 {
        let Some(first) = self.first_ms else {
            return 0.0;
        };
        let age_secs = now_ms.saturating_sub(first) as f64 / 1000.0;
        let decayed = self.events.at(now_ms, tau_secs);
        let first_weight = (-age_secs / tau_secs).exp();
        let age = age_secs.max(1.0);
        (decayed - first_weight).max(0.0) / (tau_secs * (1.0 - (-age / tau_secs).exp()))
    }
}

#[derive(Default)]
struct Book {
    /// The tenant was removed by a reload: nothing more is learned of it, and nothing
    /// predicted, until a reload lists it again ([`Sessions::forget_tenant`]).
    removed: bool,
    users: HashMap<Arc<str>, User>,
    objects: HashMap<Arc<str>, Object>,
    /// Session starts by users already known when they started.
    known_starts: Rate,
    /// (returning starts, of which on the user's previous landing object)
    returns: (f64, f64),
    /// (seconds from a view to its followers' views, summed; followers counted)
    follow_delays: (f64, f64),
    next_return_eval_ms: u64,
}

impl Book {
    /// The mean time from a view to a follower's view, seconds. Follow delays are taken as
    /// exponential with that mean: memoryless think times, the usual model of a user's pauses.
    /// (Before any follower is seen nothing is predicted, so the value then does not matter.)
    fn follow_secs(&self) -> f64 {
        let (secs, n) = self.follow_delays;
        if n > 0.0 {
            (secs / n).max(0.001)
        } else {
            1.0
        }
    }
}

/// The per-tenant session learner (see the module docs).
pub struct Sessions {
    books: PerTenant<Mutex<Book>>,
    events: Mutex<VecDeque<(Arc<Tracked>, u64, Seen)>>,
    dropped: std::sync::atomic::AtomicU64,
    /// A URL's usable life: the follower window, the session gap and the prediction horizon.
    life_ms: u64,
    min_probability: f64,
    max_users: usize,
    tau_secs: f64,
}

/// The object a request opens: its operation and experience.
pub(super) fn object_of(request: &EmbedRequest) -> Arc<str> {
    let op = match request.operation() {
        Operation::GetDashboardEmbedUrl => "dashboard",
        Operation::GenerateEmbedUrlForAnonymousUser => "anonymous",
        Operation::GenerateEmbedUrlForRegisteredUser => "registered",
    };
    format!("{op} {:?}", request.experience()).into()
}

impl Object {
    /// The views whose followers have had their chance: every view, less the share of each
    /// view's followers that has not had time to come yet. A follower's probability is its
    /// count over this, not over every view: counted over every view, a burst of views whose
    /// followers are still seconds away (a login storm; a tenant's first minutes) reads as
    /// evidence that nothing follows, and the followers stop being stocked exactly when many
    /// users are about to ask for them.
    fn settled(&self, now_ms: u64, follow_secs: f64) -> f64 {
        (self.views - self.pending.at(now_ms, follow_secs)).max(0.0)
    }

    /// Halves the counts when they grow large, so old habits fade as new ones are seen.
    fn halve_if_large(&mut self) {
        if self.views > MAX_COUNT {
            self.views /= 2.0;
            self.pending.halve();
            for (_, n) in &mut self.next {
                *n /= 2.0;
            }
        }
    }
}

impl Sessions {
    /// `tenants` learners; `min_remaining_secs` sets a URL's usable life.
    pub fn new(
        tenants: usize,
        min_remaining_secs: u64,
        min_probability: f64,
        max_users: usize,
        demand_half_life_secs: f64,
    ) -> Self {
        Sessions {
            books: PerTenant::new((0..tenants).map(|_| Mutex::new(Book::default()))),
            events: Mutex::new(VecDeque::new()),
            dropped: Default::default(),
            life_ms: URL_VALIDITY_SECS.saturating_sub(min_remaining_secs) * 1000,
            min_probability,
            max_users,
            tau_secs: demand_half_life_secs / std::f64::consts::LN_2,
        }
    }

    /// Queues a request (or hint) for `t` for the next tick; requests without a user are
    /// ignored. Cheap: the request path calls it.
    pub fn observe(&self, t: &Arc<Tracked>, now_ms: u64, seen: Seen) {
        if t.request.user_arn().is_none() {
            return;
        }
        let mut q = self.events.lock();
        if q.len() >= MAX_EVENTS {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        q.push_back((t.clone(), now_ms, seen));
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A URL's usable life, milliseconds: the window within which views pair as followers.
    pub fn life_ms(&self) -> u64 {
        self.life_ms
    }

    /// Users known for `tenant` now.
    pub fn users(&self, tenant: TenantId) -> usize {
        self.books.at(tenant).lock().users.len()
    }

    /// Forgets everything learned of `tenant`'s users and paths (a reload removed it), and
    /// learns nothing more of it until [`Sessions::serve_tenant`]: no user of a tenant the
    /// gateway no longer serves is kept, also from the events queued before the reload (drained
    /// at the next tick), requests admitted before it and still running, or views of replicas
    /// that have not reloaded yet.
    pub fn forget_tenant(&self, tenant: TenantId) {
        *self.books.at(tenant).lock() = Book {
            removed: true,
            ..Book::default()
        };
    }

    /// Learns of `tenant` again (a reload listed it again after removing it).
    pub fn serve_tenant(&self, tenant: TenantId) {
        self.books.at(tenant).lock().removed = false;
    }

    /// Learns from the queued events and returns what they and the returning users predict.
    pub fn drain(&self, now_ms: u64) -> Vec<Predicted> {
        self.drain_sharing(now_ms, None)
    }

    /// [`Sessions::drain`], also handing the views it learned from to `views` (a fleet replica
    /// passes them on to the other replicas, which learn from them with
    /// [`Sessions::learn_shared`]).
    pub fn drain_sharing(
        &self,
        now_ms: u64,
        mut views: Option<&mut Vec<(Arc<Tracked>, u64)>>,
    ) -> Vec<Predicted> {
        let events: Vec<_> = std::mem::take(&mut *self.events.lock()).into();
        let mut out = vec![];
        for (t, at_ms, seen) in events {
            let mut book = self.books.at(t.tenant).lock();
            if book.removed {
                continue;
            }
            if seen == Seen::View {
                self.learn(&mut book, &t, at_ms);
                if let Some(views) = views.as_deref_mut() {
                    views.push((t.clone(), at_ms));
                }
            }
            self.followers(&book, &t, at_ms, &mut out);
        }
        for (tenant, book) in self.books.iter().enumerate() {
            let mut book = book.lock();
            if book.next_return_eval_ms <= now_ms {
                book.next_return_eval_ms = now_ms + RETURN_EVERY_MS;
                self.returning(&book, tenant, now_ms, &mut out);
            }
        }
        out
    }

    /// Learns from views other replicas of the fleet saw (each `(request, when)`), as from this
    /// replica's own, and predicts nothing for them: the replica that saw a view predicts its
    /// followers. Behind a load balancer a user's views land on any replica, so without them a
    /// replica would see a follower only when two views of a session happen to reach it.
    pub fn learn_shared(&self, mut views: Vec<(Arc<Tracked>, u64)>) {
        views.sort_by_key(|(_, at_ms)| *at_ms);
        for (t, at_ms) in views {
            if t.request.user_arn().is_some() {
                self.learn(&mut self.books.at(t.tenant).lock(), &t, at_ms);
            }
        }
    }

    fn learn(&self, book: &mut Book, t: &Arc<Tracked>, at_ms: u64) {
        let Some(user) = t.request.user_arn().filter(|_| !book.removed) else {
            return;
        };
        let object = t.object.clone();
        let life = self.life_ms;
        let follow_secs = book.follow_secs();
        // The object's own count and template.
        let o = book
            .objects
            .entry(object.clone())
            .or_insert_with(|| Object {
                views: 0.0,
                pending: Pending::default(),
                next: vec![],
                template: t.clone(),
                last_ms: at_ms,
            });
        o.views += 1.0;
        o.pending.add(at_ms, follow_secs);
        o.template = t.clone();
        o.last_ms = o.last_ms.max(at_ms);
        o.halve_if_large();
        // The user: a session start after a usable life of silence.
        // Looked up by `&str` first: a known user (the common case) costs no allocation.
        let known = book.users.contains_key(user);
        if !known {
            let fresh = User {
                last_ms: at_ms,
                recent: VecDeque::new(),
                landing: None,
                started_ms: at_ms,
                landed_before: None,
            };
            book.users.insert(user.into(), fresh);
        }
        let Some(u) = book.users.get_mut(user) else {
            return;
        };
        let starts = !known || at_ms.saturating_sub(u.last_ms) > life || u.recent.is_empty();
        // (earlier object, its follower) pairs this view makes.
        let mut credit: Vec<(Arc<str>, Arc<str>)> = vec![];
        let mut mine: Vec<Arc<str>> = vec![];
        if starts {
            let previous = u.landing.replace(t.clone());
            u.started_ms = at_ms;
            u.landed_before = previous.as_ref().map(|p| p.object.clone());
            u.recent.clear();
            if let Some(previous) = previous {
                book.returns.0 += 1.0;
                if previous.object == object {
                    book.returns.1 += 1.0;
                }
                if book.returns.0 > MAX_COUNT {
                    book.returns = (book.returns.0 / 2.0, book.returns.1 / 2.0);
                }
            }
        } else if at_ms < u.started_ms && u.started_ms - at_ms <= life {
            // A view of this session earlier than the one it was taken to start with (another
            // replica saw it, and it is learned late): the session landed here, and a return to
            // the previous landing is judged by this object.
            let taken = u.landing.replace(t.clone());
            u.started_ms = at_ms;
            if let Some(before) = &u.landed_before {
                let was = taken.is_some_and(|l| l.object == *before);
                let is = object == *before;
                book.returns.1 =
                    (book.returns.1 + f64::from(is) - f64::from(was)).clamp(0.0, book.returns.0);
            }
        }
        if !starts {
            // Each pair of the user's views within the window counts once per earlier view:
            // this object follows each earlier recent view, and each later one (a view another
            // replica saw may be learned a tick after later ones) follows this one.
            for r in u.recent.iter_mut() {
                if r.object == object || r.at_ms.abs_diff(at_ms) > life {
                    continue;
                }
                let (earlier, credited, follower) = if r.at_ms <= at_ms {
                    (&r.object, &mut r.credited, &object)
                } else {
                    (&object, &mut mine, &r.object)
                };
                if !credited.contains(follower) && credited.len() < MAX_FOLLOWERS {
                    credited.push(follower.clone());
                    credit.push((earlier.clone(), follower.clone()));
                    book.follow_delays.0 += r.at_ms.abs_diff(at_ms) as f64 / 1000.0;
                    book.follow_delays.1 += 1.0;
                }
            }
        }
        u.last_ms = u.last_ms.max(at_ms);
        u.recent.push_back(Recent {
            object: object.clone(),
            at_ms,
            credited: mine,
        });
        while u.recent.len() > MAX_RECENT {
            u.recent.pop_front();
        }
        if book.follow_delays.1 > MAX_COUNT {
            book.follow_delays = (book.follow_delays.0 / 2.0, book.follow_delays.1 / 2.0);
        }
        if starts && known {
            book.known_starts.add(at_ms, self.tau_secs);
        }
        for (from, object) in credit {
            if let Some(o) = book.objects.get_mut(&from) {
                match o.next.iter().position(|(b, _)| *b == object) {
                    Some(i) => o.next[i].1 += 1.0,
                    None if o.next.len() < MAX_FOLLOWERS => o.next.push((object, 1.0)),
                    None => {
                        // Replace the weakest follower if it is weaker than a first sighting.
                        if let Some(w) = o.next.iter_mut().min_by(|a, b| a.1.total_cmp(&b.1)) {
                            if w.1 <= 1.0 {
                                *w = (object, 1.0);
                            }
                        }
                    }
                }
            }
        }
        self.bound(book);
    }

    /// Keeps the book within its bounds: the least recently seen users and objects go first
    /// (a tenth at a time, so the cost is amortised).
    fn bound(&self, book: &mut Book) {
        fn trim<V>(map: &mut HashMap<Arc<str>, V>, max: usize, last: impl Fn(&V) -> u64) {
            if map.len() <= max {
                return;
            }
            let mut ages: Vec<u64> = map.values().map(&last).collect();
            let cut = (map.len() - max + max / 10).min(ages.len() - 1);
            let (_, nth, _) = ages.select_nth_unstable(cut);
            let nth = *nth;
            map.retain(|_, v| last(v) > nth);
        }
        trim(&mut book.users, self.max_users, |u| u.last_ms);
        trim(&mut book.objects, MAX_OBJECTS, |o| o.last_ms);
    }

    /// Predicts the followers of `t`'s object for `t`'s user.
    fn followers(&self, book: &Book, t: &Arc<Tracked>, at_ms: u64, out: &mut Vec<Predicted>) {
        let Some(user) = t.request.user_arn() else {
            return;
        };
        let Some(o) = book.objects.get(&t.object) else {
            return;
        };
        let settled = o.settled(at_ms, book.follow_secs());
        if settled < MIN_EVIDENCE {
            return;
        }
        for (next, n) in &o.next {
            let p = (n / settled).min(1.0);
            if *n < MIN_FOLLOWS || p < self.min_probability {
                continue;
            }
            let Some(b) = book.objects.get(next) else {
                continue;
            };
            let own = b.template.request.user_arn() == Some(user);
            out.push(Predicted {
                tenant: t.tenant,
                template: b.template.clone(),
                user: (!own).then(|| user.into()),
                probability: p,
                reason: Reason::Follower,
                until_ms: at_ms + self.life_ms,
            });
        }
    }

    /// The probability that one known user not in a session starts one on the same object as
    /// last time within a URL's usable life.
    fn return_probability(&self, book: &Book, idle: usize, now_ms: u64) -> f64 {
        if idle == 0 {
            return 0.0;
        }
        let per_user = book.known_starts.per_sec(now_ms, self.tau_secs) / idle as f64;
        let starts = 1.0 - (-per_user * self.life_ms as f64 / 1000.0).exp();
        // Laplace's rule: no evidence reads as one half.
        let same = (book.returns.1 + 1.0) / (book.returns.0 + 2.0);
        starts * same
    }

    fn returning(&self, book: &Book, tenant: TenantId, now_ms: u64, out: &mut Vec<Predicted>) {
        let idle: Vec<&User> = book
            .users
            .values()
            .filter(|u| u.landing.is_some() && now_ms.saturating_sub(u.last_ms) > self.life_ms)
            .collect();
        let p = self.return_probability(book, idle.len(), now_ms);
        if p < self.min_probability {
            return;
        }
        for u in idle {
            let Some(landing) = &u.landing else { continue };
            out.push(Predicted {
                tenant,
                template: landing.clone(),
                user: None,
                probability: p,
                reason: Reason::Returning,
                // Until the next evaluation, with a tick to spare.
                until_ms: now_ms + 2 * RETURN_EVERY_MS,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DashboardEmbedRequest, IdentityType};

    const ACCOUNT: &str = "111122223333";

    fn view(user: &str, dashboard: &str) -> Arc<Tracked> {
        let mut r = DashboardEmbedRequest::new(ACCOUNT, dashboard, IdentityType::Quicksight);
        r.user_arn = Some(format!(
            "arn:aws:quicksight:us-east-1:{ACCOUNT}:user/default/{user}"
        ));
        r.namespace = Some("default".into());
        let req = EmbedRequest::Dashboard(r);
        let key = crate::pool::pool_key("t", "us-east-1", &req);
        Arc::new(Tracked::new(key, 0, req, 0))
    }

    fn sessions(min_probability: f64, max_users: usize) -> Sessions {
        Sessions::new(1, 60, min_probability, max_users, 30.0)
    }

    fn dashboards(p: &[Predicted]) -> Vec<(String, Option<String>, Reason)> {
        p.iter()
            .map(|p| {
                let EmbedRequest::Dashboard(d) = &p.template.request else {
                    unreachable!()
                };
                (
                    d.dashboard_id.clone(),
                    p.user.as_deref().map(String::from),
                    p.reason,
                )
            })
            .collect()
    }

    proptest::proptest! {
        /// A tenant's login rate reads the same whichever order its session starts are learned
        /// in (other replicas' views arrive a tick after later ones of this replica's).
        #[test]
        fn a_rate_does_not_depend_on_the_order_events_arrive_in(
            at in proptest::collection::vec(1_000u64..60_000, 1..40),
            tau in 1.0f64..60.0,
        ) {
            let (a, b) = crate::refill::tests::as_they_came_and_in_order(
                at,
                |r: &mut Rate, t| r.add(t, tau),
                |r, now| r.per_sec(now, tau),
            );
            proptest::prop_assert!((a - b).abs() <= 1e-9 * b.max(1.0), "{} against {}", a, b);
        }
    }

    /// A tenant a reload removed leaves nothing of its users behind, and none comes back until
    /// it is listed again; the others keep theirs.
    #[test]
    fn a_removed_tenants_users_are_forgotten() {
        let s = Sessions::new(2, 60, 0.5, 100, 30.0);
        let of_tenant = |tenant: TenantId, user: &str| {
            let v = view(user, "home");
            Arc::new(Tracked::new(v.key.clone(), tenant, v.request.clone(), 0))
        };
        s.observe(&of_tenant(0, "alice"), 1_000, Seen::View);
        s.observe(&of_tenant(1, "bob"), 1_000, Seen::View);
        s.drain(2_000);
        assert_eq!((s.users(0), s.users(1)), (1, 1));
        s.observe(&of_tenant(1, "carol"), 2_500, Seen::View);
        s.forget_tenant(1);
        assert_eq!((s.users(0), s.users(1)), (1, 0));
        // Queued before the reload, seen by a replica that has not reloaded yet, or sent by a
        // request admitted before it: none comes back.
        s.learn_shared(vec![(of_tenant(1, "dave"), 2_600)]);
        s.observe(&of_tenant(1, "erin"), 2_700, Seen::View);
        s.drain(3_000);
        assert_eq!((s.users(0), s.users(1)), (1, 0));
        s.serve_tenant(1);
        s.observe(&of_tenant(1, "bob"), 4_000, Seen::View);
        s.drain(5_000);
        assert_eq!(s.users(1), 1, "listed again, its users are learned again");
    }

    /// Views another replica saw teach the paths as this replica's own do; they predict
    /// nothing by themselves (the replica that saw a view predicts its followers), and they
    /// are learned in the order they happened, whichever order they arrive in.
    #[test]
    fn views_other_replicas_saw_teach_followers_in_the_order_they_happened() {
        let s = sessions(0.5, 100);
        // Ten users open "home" here; "sales" 20 s later on other replicas, whose batch lists
        // each user's two views latest first.
        let mut shared = vec![];
        for i in 0..10u64 {
            let at = 1_000_000 + i * 1_000;
            s.observe(&view(&format!("u{i}"), "home"), at, Seen::View);
            shared.push((view(&format!("u{i}"), "sales"), at + 20_000));
        }
        let mut ours = vec![];
        assert!(s.drain_sharing(1_010_000, Some(&mut ours)).is_empty());
        assert_eq!(ours.len(), 10, "this replica's own views, to pass on");
        s.learn_shared(shared);
        s.observe(&view("newcomer", "home"), 1_200_000, Seen::View);
        let d = dashboards(&s.drain(1_200_000));
        let arn = format!("arn:aws:quicksight:us-east-1:{ACCOUNT}:user/default/newcomer");
        assert_eq!(d, vec![("sales".to_string(), Some(arn), Reason::Follower)]);

        // Out of order across batches: "ops" is learned first, "reports" (20 s earlier) a tick
        // later. ops follows reports, not the other way round.
        let s = sessions(0.5, 100);
        for i in 0..10u64 {
            let at = 1_000_000 + i * 1_000;
            s.learn_shared(vec![(view(&format!("u{i}"), "ops"), at + 20_000)]);
            s.learn_shared(vec![(view(&format!("u{i}"), "reports"), at)]);
        }
        s.observe(&view("newcomer", "ops"), 1_200_000, Seen::View);
        assert!(dashboards(&s.drain(1_200_000)).is_empty());
        s.observe(&view("newcomer", "reports"), 1_210_000, Seen::View);
        let d = dashboards(&s.drain(1_210_000));
        assert_eq!(d.len(), 1, "ops follows reports: {d:?}");
        assert_eq!(d[0].0, "ops");
    }

    #[test]
    fn a_learned_follower_is_predicted_for_the_next_user_who_opens_the_first() {
        let s = sessions(0.5, 100);
        // Ten users open "home" then "sales" 20 s later; 3 of them also open "ops".
        for i in 0..10u64 {
            let at = 1_000_000 + i * 1_000;
            s.observe(&view(&format!("u{i}"), "home"), at, Seen::View);
            s.observe(&view(&format!("u{i}"), "sales"), at + 20_000, Seen::View);
            if i < 3 {
                s.observe(&view(&format!("u{i}"), "ops"), at + 40_000, Seen::View);
            }
        }
        s.drain(1_100_000);
        s.observe(&view("newcomer", "home"), 1_200_000, Seen::View);
        let p = s.drain(1_200_000);
        let d = dashboards(&p);
        let arn = format!("arn:aws:quicksight:us-east-1:{ACCOUNT}:user/default/newcomer");
        assert_eq!(
            d,
            vec![("sales".to_string(), Some(arn), Reason::Follower)],
            "ops follows home 3 times in 10: below one half"
        );
        // All 10 settled views of home were followed by sales; the newcomer's own view, a
        // moment old, has not had its chance yet and is not evidence that nothing follows.
        assert!(
            (p[0].probability - 1.0).abs() < 1e-9,
            "{}",
            p[0].probability
        );
        assert_eq!(p[0].until_ms, 1_200_000 + 240_000);
    }

    #[test]
    fn a_follower_seen_twice_is_trusted_from_an_objects_first_views_and_once_is_not() {
        // A tenant that stocks predictions down to one in three.
        let s = sessions(0.3, 100);
        // A new tenant's first minute: three users open home, then sales 10 s later; one of them
        // then picks ops.
        for (i, user) in ["u0", "u1", "u2"].iter().enumerate() {
            let at = 1_000_000 + i as u64 * 1_000;
            s.observe(&view(user, "home"), at, Seen::View);
            s.observe(&view(user, "sales"), at + 10_000, Seen::View);
        }
        s.observe(&view("u0", "ops"), 1_020_000, Seen::View);
        s.drain(1_060_000);
        s.observe(&view("newcomer", "home"), 1_060_000, Seen::View);
        let home = dashboards(&s.drain(1_060_000));
        assert_eq!(
            home.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(),
            ["sales"],
            "sales followed every view of home; ops followed one in three, a single sighting"
        );
        s.observe(&view("other", "sales"), 1_060_000, Seen::View);
        assert!(
            s.drain(1_060_000).is_empty(),
            "ops followed sales once in three views: a single sighting"
        );
    }

    #[test]
    fn a_burst_of_views_whose_followers_are_still_to_come_does_not_hide_the_follower() {
        let s = sessions(0.5, 1_000);
        // Habit: 15 of 20 users open sales 20 s after home.
        for i in 0..20u64 {
            let at = 1_000_000 + i * 1_000;
            s.observe(&view(&format!("u{i}"), "home"), at, Seen::View);
            if i < 15 {
                s.observe(&view(&format!("u{i}"), "sales"), at + 20_000, Seen::View);
            }
        }
        s.drain(1_100_000);
        // A storm: 40 users open home within 4 s. Each of them should have sales stocked,
        // though none has had the time to open it yet.
        let mut predicted = vec![];
        for i in 0..40u64 {
            let at = 2_000_000 + i * 100;
            s.observe(&view(&format!("w{i}"), "home"), at, Seen::View);
            let p = s.drain(at);
            assert_eq!(dashboards(&p).len(), 1, "user w{i}: sales is predicted");
            predicted.push(p[0].probability);
        }
        let last = predicted[39];
        assert!((0.5..=0.8).contains(&last), "P(sales follows home) {last}");
        // None of them opened sales: once their chance is over the evidence says so.
        s.observe(&view("late", "home"), 2_500_000, Seen::View);
        let p = s.drain(2_500_000);
        assert!(p.is_empty(), "15 of 60 settled views: {:?}", dashboards(&p));
    }

    #[test]
    fn a_follower_counts_only_within_a_urls_usable_life_and_once_per_view() {
        let s = sessions(0.5, 100);
        for i in 0..10u64 {
            let at = 1_000_000 + i * 1_000_000;
            s.observe(&view("u", "home"), at, Seen::View);
            // Opened twice, but 5 minutes later: past the 240 s usable life, a new session.
            s.observe(&view("u", "sales"), at + 300_000, Seen::View);
            s.observe(&view("u", "sales"), at + 301_000, Seen::View);
        }
        s.drain(20_000_000);
        s.observe(&view("v", "home"), 30_000_000, Seen::Hint);
        assert!(s.drain(30_000_000).is_empty());
    }

    #[test]
    fn hints_predict_followers_but_teach_nothing() {
        let s = sessions(0.5, 100);
        for i in 0..20u64 {
            s.observe(&view(&format!("u{i}"), "home"), 1_000 + i, Seen::Hint);
        }
        s.drain(10_000);
        assert_eq!(s.users(0), 0);
    }

    #[test]
    fn returning_users_are_predicted_when_the_tenants_logins_surge() {
        let s = sessions(0.5, 1_000);
        // Day one: 100 users each open their landing dashboard once.
        for i in 0..100u64 {
            s.observe(
                &view(&format!("u{i}"), "home"),
                1_000_000 + i * 100,
                Seen::View,
            );
        }
        let quiet = 2_000_000;
        assert!(
            s.drain(quiet).is_empty(),
            "nobody has come back yet: no evidence of returns"
        );
        // Day two: the first returning user is one event, no rate.
        let mut now = quiet;
        s.observe(&view("u99", "home"), now, Seen::View);
        assert!(s
            .drain(now + 1)
            .iter()
            .all(|p| p.reason != Reason::Returning));
        // A trickle: one returning user every 20 s is far too few to stock everyone.
        for i in 0..5u64 {
            now += 20_000;
            s.observe(&view(&format!("u{i}"), "home"), now, Seen::View);
        }
        assert!(s.drain(now).iter().all(|p| p.reason != Reason::Returning));
        // The storm: 30 returning users in 10 s. The other idle users' landings are predicted.
        for i in 5..35u64 {
            now += 333;
            s.observe(&view(&format!("u{i}"), "home"), now, Seen::View);
        }
        now += RETURN_EVERY_MS;
        let p = s.drain(now);
        let returning: Vec<_> = p.iter().filter(|p| p.reason == Reason::Returning).collect();
        assert_eq!(returning.len(), 64, "the 64 users not seen today");
        assert!(returning.iter().all(|p| p.user.is_none()));
        assert!(
            returning[0].probability >= 0.5,
            "{}",
            returning[0].probability
        );
    }

    /// Behind a load balancer a session's landing may reach another replica and be learned here
    /// after the user's next view, which this replica saw itself: the session still landed on
    /// the earlier view, and that is the landing a returning user is predicted to open again.
    #[test]
    fn a_landing_learned_after_the_view_that_followed_it_is_still_the_landing() {
        let s = sessions(0.5, 1_000);
        // Day one: each user lands on "home" (seen by another replica) and opens "sales" 15 s
        // later here; this replica learns "sales" first.
        let mut landings = vec![];
        for i in 0..100u64 {
            let at = 1_000_000 + i * 100;
            s.observe(&view(&format!("u{i}"), "sales"), at + 15_000, Seen::View);
            landings.push((view(&format!("u{i}"), "home"), at));
        }
        s.drain(1_030_000);
        s.learn_shared(landings);
        // Day two: 35 of them come back to "home" in a storm.
        let mut now = 2_000_000;
        for i in 0..35u64 {
            now += 333;
            s.observe(&view(&format!("u{i}"), "home"), now, Seen::View);
        }
        now += RETURN_EVERY_MS;
        let returning: Vec<_> = dashboards(&s.drain(now))
            .into_iter()
            .filter(|p| p.2 == Reason::Returning)
            .collect();
        assert_eq!(returning.len(), 65, "the users not seen today");
        assert!(returning.iter().all(|p| p.0 == "home"), "{returning:?}");
    }

    #[test]
    fn the_book_stays_within_its_bound_of_users() {
        let s = sessions(0.5, 50);
        for i in 0..1_000u64 {
            s.observe(&view(&format!("u{i}"), "home"), 1_000 + i, Seen::View);
        }
        s.drain(2_000);
        assert!(s.users(0) <= 50, "{}", s.users(0));
        assert!(s.users(0) >= 40);
    }

    #[test]
    fn anonymous_requests_are_not_learned() {
        let s = sessions(0.5, 50);
        let req = EmbedRequest::Dashboard(DashboardEmbedRequest::new(
            ACCOUNT,
            "d",
            IdentityType::Anonymous,
        ));
        let key = crate::pool::pool_key("t", "us-east-1", &req);
        s.observe(&Arc::new(Tracked::new(key, 0, req, 0)), 1, Seen::View);
        s.drain(2);
        assert_eq!(s.users(0), 0);
    }
}
