//! What the simulated QuickSight account knows: accounts, their edition and pricing plan,
//! namespaces, users and dashboards. Unknown names produce QuickSight's real not-found errors.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::model::IdentityType;

/// QuickSight edition of an account; Standard lacks embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Edition {
    Enterprise,
    Standard,
}

/// One account as configured (`[[accounts]]` in the simulator's TOML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSettings {
    pub id: String,
    #[serde(default = "enterprise")]
    pub edition: Edition,
    /// Session-capacity pricing, which anonymous embedding requires.
    #[serde(default = "yes")]
    pub capacity_pricing: bool,
    /// Dashboard ids, in addition to `generated_dashboards`.
    #[serde(default)]
    pub dashboards: Vec<String>,
    /// Also know dashboards `d-0000` … `d-<n-1>` (for load tests that need many keys).
    #[serde(default)]
    pub generated_dashboards: usize,
    #[serde(default)]
    pub namespaces: Vec<NamespaceSettings>,
    /// Identity types this account cannot embed as (IdentityTypeNotSupportedException).
    #[serde(default)]
    pub unsupported_identity_types: Vec<IdentityType>,
}

/// A namespace and its registered users (user names, not ARNs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSettings {
    pub name: String,
    #[serde(default)]
    pub users: Vec<String>,
    /// Also know users `user-0000` … `user-<n-1>`.
    #[serde(default)]
    pub generated_users: usize,
}

fn enterprise() -> Edition {
    Edition::Enterprise
}
fn yes() -> bool {
    true
}

/// The default registry: the demo account the README and `embedgate dev` use, plus one Standard
/// edition account and one account without capacity pricing or IAM embedding, to exercise those
/// errors.
pub fn default_accounts() -> Vec<AccountSettings> {
    vec![
        AccountSettings {
            id: "111122223333".into(),
            edition: Edition::Enterprise,
            capacity_pricing: true,
            dashboards: ["sales-2024", "ops-overview", "finance", "demo"]
                .map(String::from)
                .to_vec(),
            generated_dashboards: 1000,
            namespaces: vec![
                NamespaceSettings {
                    name: "default".into(),
                    users: ["alice", "bob", "carol", "EmbedRole/portal"]
                        .map(String::from)
                        .to_vec(),
                    generated_users: 1000,
                },
                NamespaceSettings {
                    name: "acme".into(),
                    users: ["dave", "erin"].map(String::from).to_vec(),
                    generated_users: 0,
                },
            ],
            unsupported_identity_types: vec![],
        },
        AccountSettings {
            id: "444455556666".into(),
            edition: Edition::Standard,
            capacity_pricing: false,
            dashboards: vec!["sales-2024".into()],
            generated_dashboards: 0,
            namespaces: vec![NamespaceSettings {
                name: "default".into(),
                users: vec!["alice".into()],
                generated_users: 0,
            }],
            unsupported_identity_types: vec![],
        },
        AccountSettings {
            id: "777788889999".into(),
            edition: Edition::Enterprise,
            capacity_pricing: false,
            dashboards: vec!["sales-2024".into()],
            generated_dashboards: 0,
            namespaces: vec![NamespaceSettings {
                name: "default".into(),
                users: vec!["alice".into()],
                generated_users: 0,
            }],
            unsupported_identity_types: vec![IdentityType::Iam],
        },
    ]
}

#[derive(Debug)]
pub struct Account {
    pub edition: Edition,
    pub unsupported_identity_types: Vec<IdentityType>,
    pub capacity_pricing: bool,
    dashboards: HashSet<String>,
    /// namespace → user names
    namespaces: HashMap<String, HashSet<String>>,
}

impl Account {
    pub fn has_dashboard(&self, id: &str) -> bool {
        self.dashboards.contains(id)
    }
    pub fn has_namespace(&self, ns: &str) -> bool {
        self.namespaces.contains_key(ns)
    }
    pub fn has_user(&self, ns: &str, user: &str) -> bool {
        self.namespaces.get(ns).is_some_and(|u| u.contains(user))
    }
}

/// The accounts the simulator answers for, built once from settings.
#[derive(Debug, Default)]
pub struct Registry {
    accounts: HashMap<String, Account>,
}

impl Registry {
    pub fn new(settings: &[AccountSettings]) -> Self {
        let accounts = settings
            .iter()
            .map(|a| {
                let mut dashboards: HashSet<String> = a.dashboards.iter().cloned().collect();
                dashboards.extend((0..a.generated_dashboards).map(|i| format!("d-{i:04}")));
                let namespaces = a
                    .namespaces
                    .iter()
                    .map(|n| {
                        let mut users: HashSet<String> = n.users.iter().cloned().collect();
                        users.extend((0..n.generated_users).map(|i| format!("user-{i:04}")));
                        (n.name.clone(), users)
                    })
                    .collect();
                let account = Account {
                    edition: a.edition,
                    unsupported_identity_types: a.unsupported_identity_types.clone(),
                    capacity_pricing: a.capacity_pricing,
                    dashboards,
                    namespaces,
                };
                (a.id.clone(), account)
            })
            .collect();
        Registry { accounts }
    }

    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.get(id)
    }
}
