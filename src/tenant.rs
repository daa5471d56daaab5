//! Tenants: authentication by API key and the policy every request is checked against before the
//! pool or QuickSight is touched (the gateway must not become a confused deputy).
//!
//! API keys are stored only as SHA-256 hashes. A presented key is hashed, looked up by hash (which
//! reveals nothing useful about any key), and the stored hash is compared again in constant time.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use wildmatch::WildMatch;

use crate::config::{PolicySettings, TenantSettings};
use crate::model::{EmbedRequest, Experience, IdentityType};

/// A string that never prints (secret access keys in settings).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// SHA-256 of an API key, as stored in config.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
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
    pub rate_per_sec: f64,
    pub burst: u32,
    policy: Policy,
}

#[derive(Debug)]
struct Policy {
    accounts: Vec<String>,
    dashboards: Vec<WildMatch>,
    namespaces: Vec<String>,
    identity_types: Vec<IdentityType>,
    user_arns: Vec<WildMatch>,
    session_tags: Vec<(String, Vec<WildMatch>)>,
    required_session_tags: Vec<String>,
    experiences: Vec<String>,
}

/// Why a request is outside its tenant's policy: which member, and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub field: String,
    pub rule: String,
}

fn denied(field: impl Into<String>, rule: impl Into<String>) -> Result<(), Denied> {
    Err(Denied {
        field: field.into(),
        rule: rule.into(),
    })
}

impl Policy {
    fn new(p: &PolicySettings, default_account: Option<&String>) -> Self {
        let mut accounts = p.accounts.clone();
        if accounts.is_empty() {
            accounts.extend(default_account.cloned());
        }
        Policy {
            accounts,
            dashboards: p.dashboards.iter().map(|d| WildMatch::new(d)).collect(),
            namespaces: p.namespaces.clone(),
            identity_types: p.identity_types.clone(),
            user_arns: p.user_arns.iter().map(|d| WildMatch::new(d)).collect(),
            session_tags: p
                .session_tags
                .iter()
                .map(|(k, vs)| (k.clone(), vs.iter().map(|v| WildMatch::new(v)).collect()))
                .collect(),
            required_session_tags: p.required_session_tags.clone(),
            experiences: p.experiences.clone(),
        }
    }
}

impl Tenant {
    /// The AWS accounts this tenant may use.
    pub fn accounts(&self) -> &[String] {
        &self.policy.accounts
    }

    /// Checks a (validated) request against the tenant's policy.
    ///
    /// # Errors
    /// The first member the policy does not allow.
    pub fn authorize(&self, req: &EmbedRequest) -> Result<(), Denied> {
        let p = &self.policy;
        if !p.accounts.iter().any(|a| a == req.aws_account_id()) {
            return denied("AwsAccountId", "is not an account this tenant may use");
        }
        let identity = req.identity_type();
        if !p.identity_types.contains(&identity) {
            let field = match req {
                EmbedRequest::Dashboard(_) => "IdentityType",
                EmbedRequest::Anonymous(_) | EmbedRequest::Registered(_) => "Operation",
            };
            return denied(
                field,
                format!(
                    "identity type {} is not allowed for this tenant",
                    identity.as_str()
                ),
            );
        }
        let experience = match req.experience() {
            Experience::Dashboard(_) => "Dashboard",
            Experience::Visual { .. } => "DashboardVisual",
            Experience::Console(_) => "QuickSightConsole",
            Experience::QSearch => "QSearchBar",
            Experience::GenerativeQnA => "GenerativeQnA",
        };
        if !matches!(req, EmbedRequest::Dashboard(_))
            && !p.experiences.iter().any(|e| e == experience)
        {
            return denied(
                format!("ExperienceConfiguration.{experience}"),
                "is not an experience this tenant may embed",
            );
        }
        for id in req.dashboard_ids() {
            if !p.dashboards.iter().any(|m| m.matches(id)) {
                return denied(
                    "DashboardId",
                    format!("dashboard {id:?} is not allowed for this tenant"),
                );
            }
        }
        if let Some(ns) = req.namespace() {
            if !p.namespaces.iter().any(|n| n == ns) {
                return denied(
                    "Namespace",
                    format!("namespace {ns:?} is not allowed for this tenant"),
                );
            }
        }
        if let Some(arn) = req.user_arn() {
            if !p.user_arns.iter().any(|m| m.matches(arn)) {
                return denied("UserArn", "is not a user this tenant may embed as");
            }
        }
        let tags = req.session_tags();
        for (i, tag) in tags.iter().enumerate() {
            let allowed = p
                .session_tags
                .iter()
                .find(|(k, _)| *k == tag.key)
                .is_some_and(|(_, values)| values.iter().any(|m| m.matches(&tag.value)));
            if !allowed {
                return denied(
                    format!("SessionTags[{i}]"),
                    format!(
                        "tag {:?} with this value is not allowed for this tenant",
                        tag.key
                    ),
                );
            }
        }
        if identity == IdentityType::Anonymous {
            for key in &p.required_session_tags {
                if !tags.iter().any(|t| &t.key == key) {
                    return denied("SessionTags", format!("must include the tag {key:?}"));
                }
            }
        }
        Ok(())
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
    use crate::model::DashboardEmbedRequest;

    fn tenant(policy: PolicySettings) -> Tenants {
        Tenants::new(&[TenantSettings {
            id: "acme".into(),
            api_key_sha256: vec![hex::encode(hash_key("k1"))],
            default_account: Some("111122223333".into()),
            rate_per_sec: 10.0,
            burst: 10,
            upstream_weight: 1.0,
            max_pooled_urls: 10,
            max_hints: 10,
            policy,
            warm: vec![],
        }])
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

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
