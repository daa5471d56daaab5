//! The tenant table's settings: each tenant's keys, quotas, warm keys and policy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::IdentityType;

/// One tenant: who it is, how it authenticates, what it may ask for and how much.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// Short stable id (letters, digits, `-`, `_`); used in metrics labels and logs.
    pub id: String,
    /// SHA-256 (hex) of each API key the tenant may use. `embedgate hash-key` prints one.
    pub api_key_sha256: Vec<String>,
    /// SigV4 access key ids for the QuickSight-compatible listener (several: rotation). Their
    /// secrets are derived from the master key; `embedgate tenant-credentials` makes one.
    #[serde(default)]
    pub access_key_ids: Vec<String>,
    /// With `tls.client_ca_file`: the client certificates the tenant's keys are accepted with.
    /// Set, a request with one of its API keys or access key ids is accepted only over a
    /// connection whose client certificate names one of these (a DNS or URI subject
    /// alternative name, or the subject's common name), so a key alone, leaked or stolen, is
    /// not enough. Empty: any client certificate the authorities issued. (Left out of the
    /// serialised table when empty, so the table's digest is what it was before this setting.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_certificate_names: Vec<String>,
    /// Account used when a request omits `AwsAccountId`.
    #[serde(default)]
    pub default_account: Option<String>,
    /// Inbound requests per second, sustained.
    #[serde(default = "default_rate")]
    pub rate_per_sec: f64,
    /// Inbound burst.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Share of a contended upstream budget, relative to other tenants' weights.
    #[serde(default = "one")]
    pub upstream_weight: f64,
    /// Most URLs pooled for this tenant.
    #[serde(default = "default_tenant_urls")]
    pub max_pooled_urls: usize,
    /// Most keys this tenant may keep hinted at once.
    #[serde(default = "default_hints")]
    pub max_hints: usize,
    /// Most keys whose demand is tracked for this tenant (per replica); requests for further new
    /// keys are served but not tracked or pre-fetched. Warm keys do not count.
    #[serde(default = "default_tracked")]
    pub max_tracked_keys: usize,
    #[serde(default)]
    pub policy: PolicySettings,
    /// Requests to keep warm always: each a native API body plus its `Operation` and `Depth`.
    #[serde(default)]
    pub warm: Vec<serde_json::Value>,
}

fn default_rate() -> f64 {
    50.0
}
fn default_burst() -> u32 {
    100
}
fn one() -> f64 {
    1.0
}
fn default_tenant_urls() -> usize {
    100_000
}
fn default_hints() -> usize {
    1_000
}
fn default_tracked() -> usize {
    10_000
}

/// What a tenant may ask for. Deny by default: an empty list allows nothing (except where noted);
/// patterns take `*` wildcards. The policy is checked on the request as QuickSight will read it
/// (defaults resolved), on every operation; see the README's policy reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// AWS accounts. Empty: only `default_account`.
    pub accounts: Vec<String>,
    /// Dashboard id patterns (`["*"]` for all): every dashboard a URL opens or authorizes.
    pub dashboards: Vec<String>,
    /// Q topic id patterns: initial topics and topic ARNs. Empty: none.
    pub topics: Vec<String>,
    /// Theme id patterns for theme ARNs in `AuthorizedResourceArns`. Empty: none.
    pub themes: Vec<String>,
    /// Namespaces: the `Namespace` member (omitted: `default`) and every user ARN's namespace.
    pub namespaces: Vec<String>,
    /// Identity types. Default QUICKSIGHT and ANONYMOUS: IAM embeds as the gateway's own role, so
    /// a tenant gets it only when named here.
    pub identity_types: Vec<IdentityType>,
    /// User ARN patterns (registered users), matched against the whole ARN.
    pub user_arns: Vec<String>,
    /// Session tag key → allowed value patterns. A tag whose key is not listed is refused.
    pub session_tags: BTreeMap<String, Vec<String>>,
    /// Session tag key → how the datasets' tag rule reads its value (QuickSight's
    /// `TagMultiValueDelimiter` and `MatchAllValue`). Required for a key whose patterns have a
    /// wildcard other than a bare `*`: without it such a pattern cannot bound what a value grants.
    pub session_tag_rules: BTreeMap<String, TagRule>,
    /// Session tag keys (each one of `session_tags`) every anonymous request must carry
    /// (row-level security); set, an anonymous GetDashboardEmbedUrl, which carries no tags, is
    /// refused.
    pub required_session_tags: Vec<String>,
    /// Experiences: `Dashboard` (also GetDashboardEmbedUrl), `DashboardVisual`,
    /// `QuickSightConsole`, `QSearchBar`, `GenerativeQnA`, `QuickChat`. Default: dashboards and
    /// visuals.
    pub experiences: Vec<String>,
    /// Features a request may not enable: `SharedView`, `StatePersistence`, `Bookmarks`,
    /// `Schedules`, `RecentSnapshots`, `ThresholdAlerts`, `DashboardCustomizationSummary`,
    /// `ExecutiveSummary`, `DataQnA`, `GenerativeAuthoring`, `DataStories`.
    pub denied_features: Vec<String>,
    /// Origin patterns (`https://app.example.com`, `https://*.example.com`, `http://localhost`).
    /// `AllowedDomains` replaces the account's static allow list, so empty: a request may not
    /// send it. Set: every request must send it, each entry within a pattern (so
    /// GetDashboardEmbedUrl, which cannot restrict domains, is refused).
    pub allowed_domains: Vec<String>,
    /// Upstream ids (`[[upstreams]]`) the tenant may use. Empty: every upstream serving one of
    /// its accounts.
    pub upstreams: Vec<String>,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            accounts: vec![],
            dashboards: vec![],
            topics: vec![],
            themes: vec![],
            namespaces: vec![],
            identity_types: vec![IdentityType::Quicksight, IdentityType::Anonymous],
            user_arns: vec![],
            session_tags: BTreeMap::new(),
            session_tag_rules: BTreeMap::new(),
            required_session_tags: vec![],
            experiences: vec!["Dashboard".into(), "DashboardVisual".into()],
            denied_features: vec![],
            allowed_domains: vec![],
            upstreams: vec![],
        }
    }
}

/// How QuickSight reads one session tag's value: the tag rule (`RowLevelPermissionTagRule`) of
/// the datasets the tag filters, which the gateway cannot read and the operator declares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TagRule {
    /// The rule's `TagMultiValueDelimiter`: a value is split on it, and each part is a value the
    /// session may see, so each must be allowed. Empty: the rule has none.
    pub multi_value_delimiter: String,
    /// The rule's `MatchAllValue`: a value (or part) equal to it lets the session see every value,
    /// so it is allowed only by a bare `*` pattern or one equal to it. Empty: the rule has none.
    pub match_all_value: String,
}

/// The digest of a tenant table: the first 16 hex digits of the SHA-256 of its tenants as JSON,
/// every list sorted (the tenants, and each list in them). Two tables that say the same of every tenant
/// have the same digest, in whatever order their files list the tenants, a tenant's keys, its
/// policy's patterns or its warm keys (none of which the gateway reads in order: each list is
/// a set); a change to any setting of any tenant changes it. It shows which table a replica runs
/// (`/state`, `embedgate_tenant_table_info`), so that replicas on different tables (a reload
/// one of them refused, or has not made yet) can be told. It reveals nothing of the keys: the
/// table holds only their hashes.
pub fn table_digest(tenants: &[TenantSettings]) -> String {
    use sha2::{Digest, Sha256};
    let mut table = serde_json::to_value(tenants).expect("tenant settings serialise");
    sort_lists(&mut table);
    let json = serde_json::to_vec(&table).expect("JSON serialises");
    hex::encode(&Sha256::digest(&json)[..8])
}

/// Sorts every list in `v`, inside out, by its members' JSON (a table's keys are already in
/// order: `serde_json`'s maps are sorted).
fn sort_lists(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Array(list) => {
            list.iter_mut().for_each(sort_lists);
            list.sort_by_cached_key(|m| m.to_string());
        }
        serde_json::Value::Object(map) => map.values_mut().for_each(sort_lists),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Vec<TenantSettings> {
        #[derive(Deserialize)]
        struct File {
            tenants: Vec<TenantSettings>,
        }
        toml::from_str::<File>(text).expect("a valid table").tenants
    }

    const TWO: &str = r#"
[[tenants]]
id = "acme"
api_key_sha256 = ["aa"]
rate_per_sec = 5.0

[[tenants]]
id = "globex"
api_key_sha256 = ["bb"]
"#;

    /// The same tenants in another order have the same digest; any setting changed, a tenant
    /// added or one removed changes it.
    #[test]
    fn a_tables_digest_follows_what_it_says_not_the_order_it_says_it_in() {
        let two = table(TWO);
        let digest = table_digest(&two);
        assert_eq!(digest.len(), 16);
        let mut swapped = two.clone();
        swapped.reverse();
        assert_eq!(table_digest(&swapped), digest);
        // Nor does the order of a tenant's keys, patterns or warm keys (each list a set).
        let listed = |keys: &str, dashboards: &str, warm: &str| {
            table_digest(&table(&format!(
                "[[tenants]]\nid = \"acme\"\napi_key_sha256 = [{keys}]\npolicy = {{ dashboards = [{dashboards}] }}\nwarm = [{warm}]\n"
            )))
        };
        let (a, b) = (
            r#"{ DashboardId = "a", Depth = 1 }"#,
            r#"{ DashboardId = "b", Depth = 2 }"#,
        );
        let once = listed(r#""aa", "bb""#, r#""x-*", "y""#, &format!("{a}, {b}"));
        assert_eq!(
            listed(r#""bb", "aa""#, r#""y", "x-*""#, &format!("{b}, {a}")),
            once
        );
        assert_ne!(
            listed(r#""bb", "cc""#, r#""y", "x-*""#, &format!("{b}, {a}")),
            once
        );
        let mut faster = two.clone();
        faster[0].rate_per_sec = 6.0;
        let mut rekeyed = two.clone();
        rekeyed[1].api_key_sha256.push("cc".into());
        let others = [
            table_digest(&faster),
            table_digest(&rekeyed),
            table_digest(&two[..1]),
            table_digest(&[]),
        ];
        for other in &others {
            assert_ne!(other, &digest);
        }
        assert_eq!(
            others
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            4
        );
    }
}
