//! `embedgate dev`: the simulator in-process, a gateway pointed at it and a demo tenant, with zero
//! configuration. What a new user runs first.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rand::RngCore;

use crate::config::Secret;
use crate::config::{PolicySettings, Settings, TenantSettings};
use crate::demo::PortalSettings;
use crate::model::IdentityType;
use crate::sim::{self, SimSettings};
use crate::tenant::hash_key;

/// The demo tenant's id.
pub const DEMO_TENANT: &str = "demo";

/// A fresh random API key (`eg_` + 32 hex digits).
pub fn new_api_key() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    format!("eg_{}", hex::encode(b))
}

/// Settings for a gateway in front of the simulator at `sim_endpoint`, with one demo tenant whose
/// key is `api_key`. The demo tenant may embed every dashboard of the simulator's demo account
/// for the `default` namespace's users and anonymously (not as IAM).
pub fn settings(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    sim_endpoint: &str,
    api_key: &str,
) -> Settings {
    let mut s = Settings {
        listen,
        admin_listen,
        ..Settings::default()
    };
    s.upstream.endpoint_url = Some(sim_endpoint.to_string());
    s.upstream.region = sim::DEFAULT_REGION.into();
    s.upstream.access_key_id = Some(sim::DEFAULT_ACCESS_KEY_ID.into());
    s.upstream.secret_access_key = Some(Secret::new(sim::DEFAULT_SECRET_ACCESS_KEY));
    s.tenants = vec![TenantSettings {
        id: DEMO_TENANT.into(),
        api_key_sha256: vec![hex::encode(hash_key(api_key))],
        access_key_ids: vec![],
        client_certificate_names: vec![],
        default_account: Some(sim::DEFAULT_ACCOUNT_ID.into()),
        rate_per_sec: 50.0,
        burst: 100,
        upstream_weight: 1.0,
        max_pooled_urls: 10_000,
        max_hints: 1_000,
        max_tracked_keys: 10_000,
        policy: PolicySettings {
            accounts: vec![],
            dashboards: vec!["*".into()],
            namespaces: vec!["default".into()],
            identity_types: vec![IdentityType::Quicksight, IdentityType::Anonymous],
            user_arns: vec![format!(
                "arn:aws:quicksight:*:{}:user/default/*",
                sim::DEFAULT_ACCOUNT_ID
            )],
            session_tags: BTreeMap::from([("tenant".to_string(), vec!["demo".to_string()])]),
            required_session_tags: vec![],
            experiences: vec!["Dashboard".into(), "DashboardVisual".into()],
            ..PolicySettings::default()
        },
        warm: vec![],
    }];
    s
}

/// The master key of dev mode's compatible listener: fixed, so the demo credentials are the same
/// on every start. Never use it anywhere else.
pub const DEV_MASTER_KEY: &str = "embedgate-dev-master-key-for-local-use-only";
/// The demo tenant's access key id in dev mode.
pub const DEV_ACCESS_KEY_ID: &str = "EGDEMO0ACCESS0KEY001";

/// Turns on the QuickSight-compatible listener at `listen` with dev mode's master key, and gives
/// the demo tenant its access key ([`DEV_ACCESS_KEY_ID`], secret [`dev_secret`]).
pub fn enable_compat(s: &mut Settings, listen: SocketAddr) {
    s.compat_listen = Some(listen);
    s.master_key = Some(Secret::new(DEV_MASTER_KEY));
    if let Some(t) = s.tenants.iter_mut().find(|t| t.id == DEMO_TENANT) {
        t.access_key_ids = vec![DEV_ACCESS_KEY_ID.into()];
    }
}

/// The demo tenant's secret access key in dev mode.
pub fn dev_secret() -> Secret {
    crate::credentials::derive_secret(&Secret::new(DEV_MASTER_KEY), DEMO_TENANT, DEV_ACCESS_KEY_ID)
}

/// Simulator settings for dev mode: embed pages also over HTTPS at `tls_listen` when given.
pub fn sim_settings(listen: SocketAddr, tls_listen: Option<SocketAddr>) -> SimSettings {
    SimSettings {
        listen,
        embed_tls_listen: tls_listen,
        workers: Some(2),
        ..SimSettings::default()
    }
}

/// The demo portal in front of the gateway at `gateway` (its native API), as the demo tenant.
pub fn portal_settings(listen: SocketAddr, gateway: &str, api_key: &str) -> PortalSettings {
    PortalSettings {
        listen,
        gateway: gateway.to_string(),
        api_key: api_key.to_string(),
        account: sim::DEFAULT_ACCOUNT_ID.into(),
        region: sim::DEFAULT_REGION.into(),
        tenant_tag: DEMO_TENANT.into(),
        dashboards: ["sales-2024", "ops-overview", "finance"]
            .map(String::from)
            .to_vec(),
        viewers: ["alice", "bob", "carol"].map(String::from).to_vec(),
    }
}
