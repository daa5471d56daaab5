//! The QuickSight simulator: a stand-in for the three embed-URL operations that speaks the real wire
//! protocol (restJson1, SigV4), so unmodified AWS SDKs work against it through an endpoint override.
//!
//! It owns: parameter validation with QuickSight's error codes (rules from [`crate::model`]), a
//! registry of known accounts/namespaces/users/dashboards, single-use embed URLs that point back at
//! itself ([`urls`]), a ledger proving what happened to each URL, fault knobs (latency,
//! throttling, errors, hangs, clock offset), several regions, and a minimal STS for assumed roles
//! ([`sts`]). It does not own anything of the gateway.

pub mod http;
pub mod knobs;
pub mod ledger;
pub mod registry;
pub mod sts;
pub mod tls;
mod urls;

pub use urls::Page;
use urls::UrlBook;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::model::Operation;
use crate::sigv4;
pub use knobs::Knobs;
pub use ledger::{LedgerSnapshot, Redemption};
pub use registry::{AccountSettings, Edition, NamespaceSettings};
pub use sts::RoleSettings;

/// Access key id the simulator accepts by default (printed at start, documented in the README).
pub const DEFAULT_ACCESS_KEY_ID: &str = "AKIDEMBEDGATESIM0001";
/// Secret access key for [`DEFAULT_ACCESS_KEY_ID`]. A test credential, not a secret.
pub const DEFAULT_SECRET_ACCESS_KEY: &str = "embedgate-simulator-test-secret";
pub const DEFAULT_REGION: &str = "us-east-1";
pub const DEFAULT_ACCOUNT_ID: &str = "111122223333";

/// A test credential pair the simulator accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCredential {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Accounts this key may call; empty means all. Calls for other accounts get
    /// AccessDeniedException (HTTP 401), as an IAM policy denial does.
    #[serde(default)]
    pub accounts: Vec<String>,
}

/// The simulator's settings (`embedgate sim --config FILE`, or `[sim]` in the gateway's dev mode).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimSettings {
    pub listen: SocketAddr,
    /// Base of the embed URLs it issues. Default: `http://<the bound address>`, or
    /// `https://<embed_tls_listen's bound address>` when that is set.
    pub public_url: Option<String>,
    /// Also serve embed pages over HTTPS here, with a self-signed certificate made at start-up,
    /// and issue `https://` URLs pointing there (the QuickSight embedding SDK embeds only
    /// `https://` URLs). Unset: plain HTTP only.
    pub embed_tls_listen: Option<SocketAddr>,
    /// The region signatures are scoped to (and the first of the regions served).
    pub region: String,
    /// Further regions served: a call signed for any of them is answered as that region's
    /// QuickSight (its URLs carry the region).
    pub regions: Vec<String>,
    pub credentials: Vec<TestCredential>,
    /// IAM roles the test credentials may assume through STS `AssumeRole` (same endpoint).
    pub roles: Vec<RoleSettings>,
    /// Refuse requests whose SigV4 signature does not verify (as AWS does). On by default.
    pub verify_signatures: bool,
    pub max_clock_skew_secs: u64,
    /// Refuse a second redemption of a URL (AWS documents single use). On by default.
    pub single_use: bool,
    /// GenerateEmbedUrlForRegisteredUser answers 404 for an unknown dashboard. QuickSight's own
    /// behaviour is unconfirmed (its docs say the error shows at render time); on by default so
    /// that tests see a not-found error.
    pub strict_registered_dashboards: bool,
    /// IAM callers (IdentityType=IAM) count as registered QuickSight users unless listed in
    /// `unregistered_iam_access_keys`.
    pub unregistered_iam_access_keys: Vec<String>,
    /// How many issued URLs the simulator remembers for redemption (oldest forgotten first).
    pub max_tracked_urls: usize,
    /// HTTP worker threads (default: one per core).
    pub workers: Option<usize>,
    pub accounts: Vec<AccountSettings>,
    pub knobs: Knobs,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 4599)),
            public_url: None,
            embed_tls_listen: None,
            region: DEFAULT_REGION.into(),
            regions: vec![],
            credentials: vec![TestCredential {
                access_key_id: DEFAULT_ACCESS_KEY_ID.into(),
                secret_access_key: DEFAULT_SECRET_ACCESS_KEY.into(),
                accounts: vec![],
            }],
            roles: vec![RoleSettings {
                arn: format!("arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/embedgate"),
                external_id: None,
                trusted_keys: vec![],
            }],
            verify_signatures: true,
            max_clock_skew_secs: 900,
            single_use: true,
            strict_registered_dashboards: true,
            unregistered_iam_access_keys: vec![],
            max_tracked_urls: 1_000_000,
            workers: None,
            accounts: registry::default_accounts(),
            knobs: Knobs::default(),
        }
    }
}

impl SimSettings {
    /// # Errors
    /// The first setting that cannot work, named by its key.
    pub fn validate(&self) -> Result<(), String> {
        if self.credentials.is_empty() {
            return Err("credentials: at least one test credential is required".into());
        }
        if self.region.is_empty() || self.regions.iter().any(String::is_empty) {
            return Err("region, regions: must not be empty".into());
        }
        for (i, r) in self.roles.iter().enumerate() {
            if sts::role_account(&r.arn).is_none() {
                return Err(format!(
                    "roles[{i}].arn: must be arn:aws:iam::<12-digit account>:role/<name>"
                ));
            }
        }
        if self.max_tracked_urls == 0 {
            return Err("max_tracked_urls: must be at least 1".into());
        }
        crate::config::check_workers(self.workers)?;
        for (i, a) in self.accounts.iter().enumerate() {
            if a.id.len() != 12 || !a.id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("accounts[{i}].id: must be exactly 12 digits"));
            }
        }
        self.knobs.validate().map_err(|e| format!("knobs.{e}"))
    }
}

/// Throttle state: one GCRA bucket per account, rebuilt when the knob changes.
type AccountLimiter = governor::DefaultKeyedRateLimiter<String>;

/// The simulator's shared state. Cheap to share (`Arc`); every method takes `&self`.
pub struct Simulator {
    settings: SimSettings,
    /// Every region served: `region` first, then `regions`.
    served_regions: Vec<String>,
    keys: HashMap<String, String>,
    /// Temporary credentials issued by AssumeRole, by access key id.
    sessions: RwLock<HashMap<String, sts::Session>>,
    /// access key id → accounts it may call (absent: all)
    key_accounts: RwLock<HashMap<String, Vec<String>>>,
    registry: registry::Registry,
    ledger: ledger::Ledger,
    knobs: RwLock<Knobs>,
    limiter: RwLock<Option<Arc<AccountLimiter>>>,
    urls: Mutex<UrlBook>,
    base_url: RwLock<String>,
    /// The last input each operation parsed, as QuickSight's JSON (`GET /_sim/inputs`).
    last_inputs: Mutex<std::collections::BTreeMap<Operation, serde_json::Value>>,
}

/// What a successful issue returns.
#[derive(Debug, Clone)]
pub struct Issued {
    pub url: String,
}

impl Simulator {
    pub fn new(settings: SimSettings) -> Self {
        let keys = settings
            .credentials
            .iter()
            .map(|c| (c.access_key_id.clone(), c.secret_access_key.clone()))
            .collect();
        let key_accounts = settings
            .credentials
            .iter()
            .filter(|c| !c.accounts.is_empty())
            .map(|c| (c.access_key_id.clone(), c.accounts.clone()))
            .collect();
        let registry = registry::Registry::new(&settings.accounts);
        let base_url = settings
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", settings.listen));
        let mut served_regions = vec![settings.region.clone()];
        served_regions.extend(settings.regions.iter().cloned());
        let sim = Simulator {
            served_regions,
            sessions: RwLock::new(HashMap::new()),
            keys,
            key_accounts: RwLock::new(key_accounts),
            registry,
            ledger: ledger::Ledger::default(),
            knobs: RwLock::new(Knobs::default()),
            limiter: RwLock::new(None),
            urls: Mutex::new(UrlBook::default()),
            base_url: RwLock::new(base_url.trim_end_matches('/').to_string()),
            last_inputs: Mutex::new(Default::default()),
            settings,
        };
        sim.set_knobs(sim.settings.knobs.clone());
        sim
    }

    pub fn settings(&self) -> &SimSettings {
        &self.settings
    }

    pub fn registry(&self) -> &registry::Registry {
        &self.registry
    }

    /// The simulator's clock: real time shifted by the `clock_offset_secs` knob.
    pub fn now(&self) -> SystemTime {
        let offset = self.knobs.read().clock_offset_secs;
        let shift = Duration::from_secs_f64(offset.abs());
        if offset >= 0.0 {
            SystemTime::now() + shift
        } else {
            SystemTime::now() - shift
        }
    }

    /// Lets `access_key_id` call only `accounts` from now on (as the credential's `accounts`
    /// setting does at start): other accounts answer AccessDeniedException.
    pub fn restrict_key(&self, access_key_id: &str, accounts: &[&str]) {
        self.key_accounts.write().insert(
            access_key_id.to_string(),
            accounts.iter().map(|a| a.to_string()).collect(),
        );
    }

    /// Drops the account restrictions of keys that no longer exist (expired sessions).
    pub(crate) fn forget_keys(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let mut restricted = self.key_accounts.write();
        for k in keys {
            restricted.remove(k);
        }
    }

    /// Records what an operation parsed (before validation), so tests can check that every
    /// member arrived intact.
    pub(crate) fn record_input(&self, req: &crate::model::EmbedRequest) {
        self.last_inputs
            .lock()
            .insert(req.operation(), req.to_json());
    }

    /// The last input each operation parsed, as QuickSight's JSON members.
    pub fn last_inputs(&self) -> std::collections::BTreeMap<Operation, serde_json::Value> {
        self.last_inputs.lock().clone()
    }

    pub fn ledger(&self) -> LedgerSnapshot {
        self.ledger.snapshot()
    }

    pub(crate) fn ledger_mut(&self) -> &ledger::Ledger {
        &self.ledger
    }

    pub fn knobs(&self) -> Knobs {
        self.knobs.read().clone()
    }

    /// Replaces every knob. Invalid values are the caller's problem: see [`Knobs::validate`].
    pub fn set_knobs(&self, knobs: Knobs) {
        let limiter = knobs.throttle_rps.and_then(|rps| {
            let rps = std::num::NonZeroU32::new(rps)?;
            let burst = knobs
                .throttle_burst
                .and_then(std::num::NonZeroU32::new)
                .unwrap_or(rps);
            let quota = governor::Quota::per_second(rps).allow_burst(burst);
            Some(Arc::new(governor::RateLimiter::keyed(quota)))
        });
        *self.limiter.write() = limiter;
        *self.knobs.write() = knobs;
    }

    /// Applies a partial update (JSON object), as `POST /_sim/knobs` does.
    ///
    /// # Errors
    /// The member that is unknown, mistyped or out of range; nothing changes then.
    pub fn update_knobs(&self, patch: &serde_json::Value) -> Result<Knobs, String> {
        let knobs = self.knobs.read().merged(patch)?;
        self.set_knobs(knobs.clone());
        Ok(knobs)
    }

    /// Decides whether this call is throttled: `throttle_next` first, then the per-account rate.
    pub(crate) fn throttle(&self, account: &str) -> bool {
        if self.knobs.read().throttle_next > 0 {
            let mut k = self.knobs.write();
            if k.throttle_next > 0 {
                k.throttle_next -= 1;
                return true;
            }
        }
        let limiter = self.limiter.read().clone();
        let applies = self.knobs.read().faults_apply_to(account);
        applies && limiter.is_some_and(|l| l.check_key(&account.to_string()).is_err())
    }

    /// Decides whether this call meets a timed-out connection (`idle_timeout_next`).
    pub(crate) fn idle_timeout(&self) -> bool {
        if self.knobs.read().idle_timeout_next == 0 {
            return false;
        }
        let mut k = self.knobs.write();
        let hit = k.idle_timeout_next > 0;
        k.idle_timeout_next = k.idle_timeout_next.saturating_sub(1);
        hit
    }

    /// Decides whether this call (for `account`) fails with an injected 500: `fail_next` first,
    /// then `error_rate`.
    pub(crate) fn inject_failure(&self, account: &str) -> bool {
        let error_rate = {
            let k = self.knobs.read();
            let rate = if k.faults_apply_to(account) {
                k.error_rate
            } else {
                0.0
            };
            if k.fail_next == 0 {
                return rate > 0.0 && rand::random::<f64>() < rate;
            }
            rate
        };
        let mut k = self.knobs.write();
        if k.fail_next > 0 {
            k.fail_next -= 1;
            return true;
        }
        error_rate > 0.0 && rand::random::<f64>() < error_rate
    }

    /// Whether `access_key` may call `account` (keys without an account list may call any).
    pub(crate) fn key_may_call(&self, access_key: &str, account: &str) -> bool {
        self.key_accounts
            .read()
            .get(access_key)
            .is_none_or(|accounts| accounts.iter().any(|a| a == account))
    }

    /// What the simulator knows of `access_key`: a configured test key, or temporary
    /// credentials from AssumeRole.
    pub(crate) fn key(&self, access_key: &str) -> Option<sigv4::KeyInfo> {
        if let Some(secret) = self.keys.get(access_key) {
            return Some(sigv4::KeyInfo {
                secret: secret.clone(),
                session: None,
            });
        }
        self.sessions
            .read()
            .get(access_key)
            .map(|s| sigv4::KeyInfo {
                secret: s.secret.clone(),
                session: Some((s.token.clone(), s.expires)),
            })
    }

    /// Every region this simulator answers for.
    pub fn regions(&self) -> &[String] {
        &self.served_regions
    }

    /// Verifies a request signed for `service` (`quicksight`, `sts`) in a served region.
    pub(crate) fn verify(
        &self,
        service: &str,
        incoming: &sigv4::Incoming<'_>,
    ) -> Result<sigv4::Verified, sigv4::AuthError> {
        let lookup = |k: &str| self.key(k);
        sigv4::Verifier {
            lookup: &lookup,
            regions: &self.served_regions,
            service,
            max_skew: Duration::from_secs(self.settings.max_clock_skew_secs),
        }
        .verify(incoming, self.now())
    }
}

/// A running simulator, started in-process.
pub struct SimServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`: the endpoint override for the SDKs.
    pub endpoint: String,
    /// Where issued embed URLs point when `public_url` is unset: the endpoint, or
    /// `https://127.0.0.1:PORT` with `embed_tls_listen`.
    pub embed_base: String,
    /// The self-signed certificate of the HTTPS embed listener (PEM), to trust in clients.
    pub tls_cert_pem: Option<String>,
    pub sim: Arc<Simulator>,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl SimServer {
    /// Binds `settings.listen` (port 0 allowed: the real port is read back) and starts serving on
    /// the current Tokio runtime.
    ///
    /// # Errors
    /// Invalid settings, or the address cannot be bound.
    pub fn start(settings: SimSettings) -> anyhow::Result<SimServer> {
        settings
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid simulator settings: {e}"))?;
        let listener = TcpListener::bind(settings.listen)
            .map_err(|e| anyhow::anyhow!("cannot bind simulator to {}: {e}", settings.listen))?;
        let addr = listener.local_addr()?;
        let tls = match settings.embed_tls_listen {
            Some(a) => {
                let l = TcpListener::bind(a).map_err(|e| {
                    anyhow::anyhow!("cannot bind simulator embed_tls_listen to {a}: {e}")
                })?;
                let tls_addr = l.local_addr()?;
                Some((l, tls_addr, tls::self_signed(tls_addr)?))
            }
            None => None,
        };
        let explicit_base = settings.public_url.is_some();
        let workers = settings.workers;
        let sim = Arc::new(Simulator::new(settings));
        let endpoint = format!("http://{addr}");
        let embed_base = match &tls {
            Some((_, a, _)) => format!("https://{a}"),
            None => endpoint.clone(),
        };
        if !explicit_base {
            sim.set_base_url(embed_base.clone());
        }
        let tls_cert_pem = tls.as_ref().map(|(_, _, s)| s.cert_pem.clone());
        let server = http::server(
            sim.clone(),
            listener,
            tls.map(|(l, _, s)| (l, s.config)),
            workers,
        )?;
        let handle = server.handle();
        let task = tokio::spawn(server);
        Ok(SimServer {
            addr,
            endpoint,
            embed_base,
            tls_cert_pem,
            sim,
            handle,
            task,
        })
    }

    /// Stops accepting, lets in-flight requests finish (bounded), and waits for the server to end.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }

    /// Waits until the server ends (e.g. on a signal handled by the caller via [`Self::handle`]).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.unwrap_or(Ok(()))
    }

    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.handle.clone()
    }
}
