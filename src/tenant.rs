//! Tenants: authentication by API key, quotas, and the policy (see `policy`) every request is
//! checked against before the pool or QuickSight is touched.
//!
//! API keys are stored only as SHA-256 hashes. A presented key is hashed, looked up by hash (which
//! reveals nothing useful about any key), and the stored hash is compared again in constant time.
//!
//! While the gateway runs a reload may add and remove tenants and replace a tenant's API keys,
//! rules (policy and default account), inbound limit and quotas ([`Tenants::put_in_force`]); a
//! tenant's index and id stay for the life of the process, and every per-tenant table grows
//! with the tenants ([`PerTenant`]). Each set of rules carries a generation, so what was
//! admitted under earlier rules can tell (see `gateway::recent`).

use arc_swap::{ArcSwap, Guard};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use subtle::ConstantTimeEq;

use crate::config::TenantSettings;
use crate::model::EmbedRequest;
pub use crate::per_tenant::PerTenant;
pub use crate::policy::Denied;
use crate::policy::Policy;

/// SHA-256 of an API key, as stored in config.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Whether `key` can be presented as an API key: not empty (no key authenticates) and without
/// surrounding whitespace (a presented key is trimmed, so such a key could never match).
///
/// # Errors
/// Why it cannot.
pub fn check_api_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        Err("an API key must not be empty")
    } else if key.trim() != key {
        Err("an API key must not start or end with whitespace (a presented key is trimmed)")
    } else {
        Ok(())
    }
}

/// Index of a tenant in the table; stable for the life of the process.
pub type TenantId = usize;

/// A tenant as the hot path needs it.
#[derive(Debug)]
pub struct Tenant {
    pub index: TenantId,
    pub id: String,
    /// Whether the table last loaded lists the tenant (see [`Tenants`]).
    present: AtomicBool,
    quotas: ArcSwap<Quotas>,
    limit: ArcSwap<Limit>,
    rules: ArcSwap<Rules>,
    /// The client certificate names its keys are accepted with (empty: any).
    client_names: ArcSwap<Vec<String>>,
    /// Whether `client_names` lists any: what every request reads first, so that a tenant
    /// that lists none pays one relaxed load for the check.
    binds_clients: AtomicBool,
}

/// A tenant's inbound limit: requests per second, and the burst above that rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub rate_per_sec: f64,
    pub burst: u32,
}

impl Limit {
    fn of(t: &TenantSettings) -> Limit {
        Limit {
            rate_per_sec: t.rate_per_sec,
            burst: t.burst,
        }
    }

    /// The seconds a full burst takes to come back (at least one): `RateLimit-Policy`'s window.
    pub fn window_secs(&self) -> u64 {
        (f64::from(self.burst) / self.rate_per_sec).ceil().max(1.0) as u64
    }
}

/// How much of the gateway a tenant may hold: its share of a contended upstream budget and
/// its bounds on pooled URLs, hints and tracked keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quotas {
    pub upstream_weight: f64,
    pub max_pooled_urls: usize,
    pub max_hints: usize,
    pub max_tracked_keys: usize,
}

impl Quotas {
    fn of(t: &TenantSettings) -> Quotas {
        Quotas {
            upstream_weight: t.upstream_weight,
            max_pooled_urls: t.max_pooled_urls,
            max_hints: t.max_hints,
            max_tracked_keys: t.max_tracked_keys,
        }
    }
}

/// What a tenant may ask for: its policy and the account an omitted `AwsAccountId` means. One
/// request is admitted under one set of rules, read once (see [`Tenant::rules`]).
#[derive(Debug)]
pub struct Rules {
    /// Account used when a request omits `AwsAccountId`.
    pub default_account: Option<String>,
    policy: Policy,
    /// The policy's settings, to tell whether a reload changed them.
    source: serde_json::Value,
    /// Which set of rules this is: every set the table builds has a generation of its own.
    pub generation: u64,
}

impl Rules {
    /// The AWS accounts these rules allow.
    pub fn accounts(&self) -> &[String] {
        self.policy.accounts()
    }

    /// Checks a resolved, validated request against the policy.
    ///
    /// # Errors
    /// The first member the policy does not allow.
    pub fn authorize(&self, req: &EmbedRequest) -> Result<(), Denied> {
        self.policy.authorize(req)
    }

    /// Whether the upstream named `id` may be used.
    pub fn may_use_upstream(&self, id: &str) -> bool {
        self.policy.allows_upstream(id)
    }
}

impl Tenant {
    /// Whether the tenant is in force: listed by the table last loaded. A tenant a reload
    /// removed is not (no key reaches it, its rules allow nothing).
    pub fn present(&self) -> bool {
        self.present.load(Ordering::Relaxed)
    }

    /// The tenant's inbound limit now.
    pub fn limit(&self) -> Limit {
        **self.limit.load()
    }

    /// The tenant's quotas now.
    pub fn quotas(&self) -> Quotas {
        **self.quotas.load()
    }

    /// The tenant's rules now. A request is admitted under the set it read once: a reload
    /// between two reads would otherwise mix two policies in one decision.
    pub fn rules(&self) -> Guard<Arc<Rules>> {
        self.rules.load()
    }

    /// [`Tenant::rules`], to keep.
    pub fn rules_full(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// The client certificate names its keys are accepted with now (empty: any).
    pub fn client_certificate_names(&self) -> Guard<Arc<Vec<String>>> {
        self.client_names.load()
    }

    /// Whether the tenant's keys are accepted from a client whose certificate names
    /// `presented` (read only when needed; `None`: no client certificate): always when the
    /// tenant lists no `client_certificate_names`, else when the certificate names one.
    pub fn accepts_client<'a>(
        &self,
        presented: impl FnOnce() -> Option<Cow<'a, [String]>>,
    ) -> bool {
        if !self.binds_clients.load(Ordering::Acquire) {
            return true;
        }
        let wanted = self.client_names.load();
        wanted.is_empty()
            || presented().is_some_and(|names| names.iter().any(|n| wanted.contains(n)))
    }

    /// Checks a resolved, validated request against the tenant's policy now.
    ///
    /// # Errors
    /// The first member the policy does not allow.
    pub fn authorize(&self, req: &EmbedRequest) -> Result<(), Denied> {
        self.rules().authorize(req)
    }
}

/// What a reload changed (see [`Tenants::put_in_force`]), each list in index order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// The tenants whose rules, keys, inbound limit or quotas changed (a tenant added or
    /// removed is among those its addition or removal changed).
    pub rules: Vec<TenantId>,
    pub keys: Vec<TenantId>,
    pub limits: Vec<TenantId>,
    pub quotas: Vec<TenantId>,
    /// The tenants the new table lists that the old did not, and the reverse.
    pub added: Vec<TenantId>,
    pub removed: Vec<TenantId>,
}

/// The tenant table: every tenant the gateway has run with, by index. A tenant removed by a
/// reload keeps its index (no key reaches it, its rules allow nothing), so that every
/// per-tenant table stays valid and a tenant added again with the same id is the same tenant.
#[derive(Debug)]
pub struct Tenants {
    tenants: PerTenant<Tenant>,
    by_key_hash: ArcSwap<HashMap<[u8; 32], TenantId>>,
    /// The last generation given to a set of rules.
    generations: AtomicU64,
}

/// Every API key hash of `settings`, with its tenant's index (`slots`, in the same order).
fn key_hashes(settings: &[TenantSettings], slots: &[TenantId]) -> HashMap<[u8; 32], TenantId> {
    let mut by_key_hash = HashMap::new();
    for (&index, t) in slots.iter().zip(settings) {
        for h in &t.api_key_sha256 {
            if let Ok(bytes) = hex::decode(h) {
                if let Ok(hash) = <[u8; 32]>::try_from(bytes.as_slice()) {
                    by_key_hash.insert(hash, index);
                }
            }
        }
    }
    by_key_hash
}

impl Tenants {
    /// Builds the table from validated settings (see [`crate::config::Settings::validate`]).
    pub fn new(settings: &[TenantSettings]) -> Self {
        let generations = AtomicU64::new(0);
        let tenants = PerTenant::new(settings.iter().enumerate().map(|(index, t)| Tenant {
            index,
            id: t.id.clone(),
            present: AtomicBool::new(true),
            quotas: ArcSwap::from_pointee(Quotas::of(t)),
            limit: ArcSwap::from_pointee(Limit::of(t)),
            rules: ArcSwap::from_pointee(Self::rules_of(t, &generations)),
            client_names: ArcSwap::from_pointee(t.client_certificate_names.clone()),
            binds_clients: AtomicBool::new(!t.client_certificate_names.is_empty()),
        }));
        let slots: Vec<TenantId> = (0..settings.len()).collect();
        Tenants {
            tenants,
            by_key_hash: ArcSwap::from_pointee(key_hashes(settings, &slots)),
            generations,
        }
    }

    fn rules_of(t: &TenantSettings, generations: &AtomicU64) -> Rules {
        Rules {
            default_account: t.default_account.clone(),
            policy: Policy::new(&t.policy, t.default_account.as_ref()),
            source: serde_json::to_value(&t.policy).unwrap_or_default(),
            generation: generations.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// Rules that allow nothing: a removed tenant's, and an added one's until it is in force.
    fn none_allowed(&self) -> Arc<Rules> {
        Arc::new(Rules {
            default_account: None,
            policy: Policy::new(&crate::config::PolicySettings::default(), None),
            source: serde_json::Value::Null,
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
        })
    }

    /// The rules `settings` give each tenant, in `settings`' order, not yet in force (see
    /// [`Tenants::put_in_force`]).
    pub fn rules_for(&self, settings: &[TenantSettings]) -> Vec<Arc<Rules>> {
        settings
            .iter()
            .map(|t| Arc::new(Self::rules_of(t, &self.generations)))
            .collect()
    }

    /// The index of each of `settings`' tenants: its own for an id the table has, the next
    /// ones, in order, for ids it has not (which [`Tenants::add`] adds at them).
    pub fn slots_for(&self, settings: &[TenantSettings]) -> Vec<TenantId> {
        let mut next = self.len();
        settings
            .iter()
            .map(|t| {
                self.all().find(|known| known.id == t.id).map_or_else(
                    || {
                        next += 1;
                        next - 1
                    },
                    |known| known.index,
                )
            })
            .collect()
    }

    /// Adds `settings`' tenant at `index` (the next, from [`Tenants::slots_for`]), not yet
    /// present: no key reaches it and its rules allow nothing until [`Tenants::put_in_force`]
    /// puts it in force.
    pub fn add(&self, index: TenantId, settings: &TenantSettings) {
        debug_assert_eq!(index, self.len(), "added at the next index");
        self.tenants.grow_to(index, |index| Tenant {
            index,
            id: settings.id.clone(),
            present: AtomicBool::new(false),
            quotas: ArcSwap::from_pointee(Quotas::of(settings)),
            limit: ArcSwap::from_pointee(Limit::of(settings)),
            rules: ArcSwap::new(self.none_allowed()),
            client_names: ArcSwap::from_pointee(settings.client_certificate_names.clone()),
            binds_clients: AtomicBool::new(!settings.client_certificate_names.is_empty()),
        });
    }

    /// Puts `settings`' tenants in force at their indexes `slots` (from
    /// [`Tenants::slots_for`], each added): their API keys, inbound limits, quotas and `rules`
    /// (from [`Tenants::rules_for`] on the same settings) and client certificate names (a
    /// change of which is a change of its keys). A tenant whose rules did not change
    /// keeps its generation, so what was admitted for it stays admitted. A present tenant
    /// `settings` does not list is removed: its keys go, its rules allow nothing. Returns what
    /// changed.
    pub fn put_in_force(
        &self,
        settings: &[TenantSettings],
        slots: &[TenantId],
        rules: Vec<Arc<Rules>>,
    ) -> Changed {
        let mut changed = Changed::default();
        let mut names_changed = vec![];
        for ((&index, new), t) in slots.iter().zip(rules).zip(settings) {
            let tenant = &self.tenants[index];
            let was_present = tenant.present.swap(true, Ordering::SeqCst);
            if !was_present {
                changed.added.push(index);
            }
            let old = tenant.rules();
            if old.default_account != new.default_account || old.source != new.source {
                tenant.rules.store(new);
                changed.rules.push(index);
            }
            let limit = Limit::of(t);
            if tenant.limit() != limit || !was_present {
                tenant.limit.store(Arc::new(limit));
                changed.limits.push(index);
            }
            let quotas = Quotas::of(t);
            if tenant.quotas() != quotas || !was_present {
                tenant.quotas.store(Arc::new(quotas));
                changed.quotas.push(index);
            }
            if **tenant.client_names.load() != t.client_certificate_names {
                // The names before the flag that says to read them, and the flag down before
                // the names go.
                let binds = !t.client_certificate_names.is_empty();
                if !binds {
                    tenant.binds_clients.store(false, Ordering::Release);
                }
                tenant
                    .client_names
                    .store(Arc::new(t.client_certificate_names.clone()));
                if binds {
                    tenant.binds_clients.store(true, Ordering::Release);
                }
                names_changed.push(index);
            }
        }
        for tenant in self.all().filter(|t| !slots.contains(&t.index)) {
            if tenant.present.swap(false, Ordering::SeqCst) {
                tenant.rules.store(self.none_allowed());
                changed.rules.push(tenant.index);
                changed.removed.push(tenant.index);
            }
        }
        let new = key_hashes(settings, slots);
        let old = self.by_key_hash.swap(Arc::new(new.clone()));
        let keys_of = |map: &HashMap<[u8; 32], TenantId>, index: TenantId| {
            let mut keys: Vec<[u8; 32]> = map
                .iter()
                .filter(|(_, i)| **i == index)
                .map(|(k, _)| *k)
                .collect();
            keys.sort_unstable();
            keys
        };
        changed.keys = self
            .all()
            .filter(|t| {
                keys_of(&old, t.index) != keys_of(&new, t.index) || names_changed.contains(&t.index)
            })
            .map(|t| t.index)
            .collect();
        for list in [
            &mut changed.rules,
            &mut changed.limits,
            &mut changed.quotas,
            &mut changed.added,
        ] {
            list.sort_unstable();
        }
        changed
    }

    /// The tenant an API key belongs to, if any.
    pub fn authenticate(&self, api_key: &str) -> Option<&Tenant> {
        // No key is a key: a header without one (`Bearer`, `Basic …`) reads as "".
        if api_key.is_empty() {
            return None;
        }
        let presented = hash_key(api_key);
        let by_key_hash = self.by_key_hash.load();
        let (stored, index) = by_key_hash.get_key_value(&presented)?;
        bool::from(stored.ct_eq(&presented)).then(|| &self.tenants[*index])
    }

    pub fn get(&self, id: TenantId) -> &Tenant {
        &self.tenants[id]
    }

    /// Every tenant the gateway has run with, removed ones too (see [`Tenant::present`]), in
    /// index order.
    pub fn all(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.iter()
    }

    /// The tenants in force: those the last table loaded lists.
    pub fn present(&self) -> impl Iterator<Item = &Tenant> {
        self.all().filter(|t| t.present())
    }

    /// How many tenants the gateway has run with (the next index).
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicySettings;
    use crate::model::{DashboardEmbedRequest, IdentityType};

    fn tenant(policy: PolicySettings) -> Tenants {
        Tenants::new(&[acme(policy)])
    }

    fn acme(policy: PolicySettings) -> TenantSettings {
        TenantSettings {
            id: "acme".into(),
            api_key_sha256: vec![hex::encode(hash_key("k1"))],
            access_key_ids: vec![],
            client_certificate_names: vec![],
            default_account: Some("111122223333".into()),
            rate_per_sec: 10.0,
            burst: 10,
            upstream_weight: 1.0,
            max_pooled_urls: 10,
            max_hints: 10,
            max_tracked_keys: 100,
            policy,
            warm: vec![],
        }
    }

    fn req(identity: IdentityType, user: Option<&str>) -> EmbedRequest {
        EmbedRequest::Dashboard(DashboardEmbedRequest {
            user_arn: user.map(String::from),
            namespace: Some("default".into()),
            ..DashboardEmbedRequest::new("111122223333", "sales-2024", identity)
        })
    }

    #[test]
    fn keys_authenticate_by_hash_only() {
        let t = tenant(PolicySettings::default());
        assert_eq!(t.authenticate("k1").map(|t| t.id.as_str()), Some("acme"));
        assert!(t.authenticate("k2").is_none());
        assert!(t.authenticate("").is_none());
    }

    #[test]
    fn no_key_authenticates_even_where_the_empty_keys_hash_is_listed() {
        let mut settings = acme(PolicySettings::default());
        settings.api_key_sha256 = vec![hex::encode(hash_key(""))];
        assert!(Tenants::new(&[settings]).authenticate("").is_none());
        assert!(check_api_key("").is_err());
        assert!(check_api_key(" k ").is_err());
        assert!(check_api_key("k").is_ok());
    }

    /// A reload gives new rules a new generation only where they changed, so what was
    /// admitted for the other tenants stays admitted; keys are swapped whole.
    #[test]
    fn a_reload_renews_the_generation_of_changed_rules_only_and_swaps_changed_limits_and_quotas() {
        let mut beta = acme(PolicySettings::default());
        beta.id = "beta".into();
        beta.api_key_sha256 = vec![hex::encode(hash_key("b1"))];
        let mut settings = vec![acme(PolicySettings::default()), beta];
        let t = Tenants::new(&settings);
        let before = [t.get(0).rules().generation, t.get(1).rules().generation];
        settings[0].policy.dashboards = vec!["sales-*".into()];
        settings[1].api_key_sha256 = vec![hex::encode(hash_key("b2"))];
        settings[1].burst = 3;
        settings[0].max_hints = 4;
        let rules = t.rules_for(&settings);
        assert_eq!(t.get(0).rules().generation, before[0], "not yet in force");
        assert_eq!(
            t.put_in_force(&settings, &[0, 1], rules),
            Changed {
                rules: vec![0],
                keys: vec![1],
                limits: vec![1],
                quotas: vec![0],
                ..Changed::default()
            }
        );
        assert_eq!(t.get(0).limit().burst, 10);
        assert_eq!(t.get(0).quotas().max_hints, 4);
        assert_eq!(t.get(1).quotas().max_hints, 10);
        assert_eq!(
            t.get(1).limit(),
            Limit {
                rate_per_sec: 10.0,
                burst: 3
            }
        );
        assert!(t.get(0).rules().generation > before[1]);
        assert_eq!(t.get(1).rules().generation, before[1]);
        assert!(t.authenticate("b1").is_none());
        assert_eq!(t.authenticate("b2").map(|t| t.index), Some(1));
        assert_eq!(t.authenticate("k1").map(|t| t.index), Some(0));
    }

    /// A tenant's keys are accepted only with a client certificate that names one of its
    /// `client_certificate_names`, when it lists any; a reload that changes the names puts them
    /// in force and reports the change as one of its keys'.
    #[test]
    fn a_tenants_keys_are_accepted_only_with_the_client_certificates_it_names() {
        let mut acme = acme(PolicySettings::default());
        let t = Tenants::new(std::slice::from_ref(&acme));
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let portal = names(&["portal.acme.example", "acme portal"]);
        let other = names(&["portal.beta.example"]);
        let tenant = t.get(0);
        assert!(
            tenant.accepts_client(|| None),
            "no names listed: any client"
        );
        acme.client_certificate_names = names(&["portal.acme.example"]);
        let changed = t.put_in_force(
            std::slice::from_ref(&acme),
            &[0],
            t.rules_for(std::slice::from_ref(&acme)),
        );
        assert_eq!(changed.keys, vec![0], "the names are part of its keys");
        assert!(changed.rules.is_empty(), "{changed:?}");
        assert!(tenant.accepts_client(|| Some(Cow::Borrowed(&portal[..]))));
        assert!(!tenant.accepts_client(|| Some(Cow::Borrowed(&other[..]))));
        assert!(!tenant.accepts_client(|| None), "no client certificate");
        assert!(!tenant.accepts_client(|| Some(Cow::Borrowed(&[][..]))));
        acme.client_certificate_names.clear();
        let changed = t.put_in_force(
            std::slice::from_ref(&acme),
            &[0],
            t.rules_for(std::slice::from_ref(&acme)),
        );
        assert_eq!(changed.keys, vec![0]);
        assert!(
            tenant.accepts_client(|| Some(Cow::Borrowed(&other[..]))),
            "names removed: any"
        );
    }

    /// A tenant is known by its id: a reload that lists a new id adds it at the next index, one
    /// that no longer lists an id removes it (its keys stop, its rules allow nothing) and keeps
    /// its index, and the same id listed again is the same tenant, whatever the order.
    #[test]
    fn a_reload_adds_and_removes_tenants_by_id_and_indexes_never_move() {
        let anonymous = req(IdentityType::Anonymous, None);
        let with_key = |id: &str, key: &str| TenantSettings {
            id: id.into(),
            api_key_sha256: vec![hex::encode(hash_key(key))],
            ..acme(PolicySettings {
                dashboards: vec!["*".into()],
                namespaces: vec!["default".into()],
                identity_types: vec![IdentityType::Anonymous],
                ..PolicySettings::default()
            })
        };
        let t = Tenants::new(&[with_key("acme", "k1"), with_key("beta", "b1")]);
        assert!(t.get(1).authorize(&anonymous).is_ok());
        let reload = |settings: &[TenantSettings]| {
            let slots = t.slots_for(settings);
            for (&index, s) in slots.iter().zip(settings) {
                if index >= t.len() {
                    t.add(index, s);
                }
            }
            (
                slots.clone(),
                t.put_in_force(settings, &slots, t.rules_for(settings)),
            )
        };
        let added_gamma = [with_key("gamma", "g1"), with_key("acme", "k1")];
        let (slots, changed) = reload(&added_gamma);
        assert_eq!(slots, [2, 0]);
        assert_eq!(
            (changed.added, changed.removed, changed.keys),
            (vec![2], vec![1], vec![1, 2])
        );
        assert_eq!(changed.limits, vec![2], "an added tenant's limit is new");
        assert_eq!(
            t.authenticate("g1").map(|t| (t.index, t.id.as_str())),
            Some((2, "gamma"))
        );
        assert!(t.authenticate("b1").is_none(), "beta's key stopped");
        assert!(!t.get(1).present());
        assert!(
            t.get(1).authorize(&anonymous).is_err(),
            "its rules allow nothing"
        );
        assert!(t.get(0).authorize(&anonymous).is_ok());
        assert_eq!(
            t.present().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["acme", "gamma"]
        );
        let (slots, changed) = reload(&[with_key("beta", "b2"), with_key("acme", "k1")]);
        assert_eq!(slots, [1, 0], "beta comes back as itself");
        assert_eq!((changed.added, changed.removed), (vec![1], vec![2]));
        assert_eq!(t.authenticate("b2").map(|t| t.index), Some(1));
        assert!(t.get(1).authorize(&anonymous).is_ok(), "its rules again");
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn iam_embedding_needs_an_explicit_policy_entry() {
        let policy = PolicySettings {
            dashboards: vec!["*".into()],
            namespaces: vec!["default".into()],
            ..PolicySettings::default()
        };
        let t = tenant(policy.clone());
        let err = t
            .get(0)
            .authorize(&req(IdentityType::Iam, None))
            .unwrap_err();
        assert_eq!(err.field, "IdentityType");
        let t = tenant(PolicySettings {
            identity_types: vec![IdentityType::Iam],
            ..policy
        });
        assert!(t.get(0).authorize(&req(IdentityType::Iam, None)).is_ok());
    }

    #[test]
    fn users_dashboards_and_namespaces_outside_the_policy_are_denied() {
        let t = tenant(PolicySettings {
            dashboards: vec!["sales-*".into()],
            namespaces: vec!["default".into()],
            user_arns: vec!["arn:aws:quicksight:*:111122223333:user/default/a*".into()],
            ..PolicySettings::default()
        });
        let alice = "arn:aws:quicksight:us-east-1:111122223333:user/default/alice";
        let bob = "arn:aws:quicksight:us-east-1:111122223333:user/default/bob";
        assert!(t
            .get(0)
            .authorize(&req(IdentityType::Quicksight, Some(alice)))
            .is_ok());
        assert_eq!(
            t.get(0)
                .authorize(&req(IdentityType::Quicksight, Some(bob)))
                .unwrap_err()
                .field,
            "UserArn"
        );
        let mut other = req(IdentityType::Quicksight, Some(alice));
        if let EmbedRequest::Dashboard(d) = &mut other {
            d.dashboard_id = "finance".into();
        }
        assert_eq!(t.get(0).authorize(&other).unwrap_err().field, "DashboardId");
        if let EmbedRequest::Dashboard(d) = &mut other {
            d.dashboard_id = "sales-1".into();
            d.namespace = Some("acme".into());
        }
        assert_eq!(t.get(0).authorize(&other).unwrap_err().field, "Namespace");
        if let EmbedRequest::Dashboard(d) = &mut other {
            d.namespace = None;
            d.aws_account_id = "999999999999".into();
        }
        assert_eq!(
            t.get(0).authorize(&other).unwrap_err().field,
            "AwsAccountId"
        );
    }
}
