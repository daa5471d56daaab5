//! Tenants: authentication by API key, quotas, and the policy (see `policy`) every request is
//! checked against before the pool or QuickSight is touched.
//!
//! API keys are stored only as SHA-256 hashes. A presented key is hashed, looked up by hash (which
//! reveals nothing useful about any key), and the stored hash is compared again in constant time.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use subtle::ConstantTimeEq;

use crate::config::TenantSettings;
use crate::model::EmbedRequest;
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
    pub default_account: Option<String>,
    pub upstream_weight: f64,
    pub max_pooled_urls: usize,
    pub max_hints: usize,
    pub max_tracked_keys: usize,
    pub rate_per_sec: f64,
    pub burst: u32,
    policy: Policy,
}

impl Tenant {
    /// The AWS accounts this tenant may use.
    pub fn accounts(&self) -> &[String] {
        self.policy.accounts()
    }

    /// Checks a resolved, validated request against the tenant's policy.
    ///
    /// # Errors
    /// The first member the policy does not allow.
    pub fn authorize(&self, req: &EmbedRequest) -> Result<(), Denied> {
        self.policy.authorize(req)
    }

    /// Whether the tenant may use the upstream named `id`.
    pub fn may_use_upstream(&self, id: &str) -> bool {
        self.policy.allows_upstream(id)
    }
}

/// The tenant table.
#[derive(Debug, Default)]
pub struct Tenants {
    tenants: Vec<Tenant>,
    by_key_hash: HashMap<[u8; 32], TenantId>,
}

impl Tenants {
    /// Builds the table from validated settings (see [`crate::config::Settings::validate`]).
    pub fn new(settings: &[TenantSettings]) -> Self {
        let mut by_key_hash = HashMap::new();
        let tenants = settings
            .iter()
            .enumerate()
            .map(|(index, t)| {
                for h in &t.api_key_sha256 {
                    if let Ok(bytes) = hex::decode(h) {
                        if let Ok(hash) = <[u8; 32]>::try_from(bytes.as_slice()) {
                            by_key_hash.insert(hash, index);
                        }
                    }
                }
                Tenant {
                    index,
                    id: t.id.clone(),
                    default_account: t.default_account.clone(),
                    upstream_weight: t.upstream_weight,
                    max_pooled_urls: t.max_pooled_urls,
                    max_hints: t.max_hints,
                    max_tracked_keys: t.max_tracked_keys,
                    rate_per_sec: t.rate_per_sec,
                    burst: t.burst,
                    policy: Policy::new(&t.policy, t.default_account.as_ref()),
                }
            })
            .collect();
        Tenants {
            tenants,
            by_key_hash,
        }
    }

    /// The tenant an API key belongs to, if any.
    pub fn authenticate(&self, api_key: &str) -> Option<&Tenant> {
        // No key is a key: a header without one (`Bearer`, `Basic …`) reads as "".
        if api_key.is_empty() {
            return None;
        }
        let presented = hash_key(api_key);
        let (stored, index) = self.by_key_hash.get_key_value(&presented)?;
        bool::from(stored.ct_eq(&presented)).then(|| &self.tenants[*index])
    }

    pub fn get(&self, id: TenantId) -> &Tenant {
        &self.tenants[id]
    }

    pub fn all(&self) -> &[Tenant] {
        &self.tenants
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
