//! The simulator's ledger: what it issued and what happened to each URL. Tests read it to prove
//! the gateway's guarantees end to end (no URL redeemed twice, none redeemed late).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::model::Operation;

#[derive(Debug, Default)]
pub struct Ledger {
    calls: AtomicU64,
    issued: [AtomicU64; 3],
    redeemed: AtomicU64,
    double_redemptions: AtomicU64,
    late_redemptions: AtomicU64,
    unknown_redemptions: AtomicU64,
    throttled: AtomicU64,
    failed: AtomicU64,
    hung: AtomicU64,
    rejected: AtomicU64,
    unauthenticated: AtomicU64,
    /// Least validity left at a timely redemption, in ms, plus one (0: none yet).
    min_left_ms_plus_one: AtomicU64,
    /// Timely redemptions by validity left, in the buckets of [`VALIDITY_BUCKETS`].
    left: [AtomicU64; 6],
    /// URLs issued per `<account>/<region>`.
    by_scope: parking_lot::Mutex<std::collections::BTreeMap<String, u64>>,
    /// AssumeRole calls answered with credentials, and refused.
    assumed: AtomicU64,
    assume_refused: AtomicU64,
}

/// Upper bounds (seconds) of the validity-left buckets, and their names in the snapshot.
pub const VALIDITY_BUCKETS: [(u64, &str); 6] = [
    (30, "0-30s"),
    (60, "30-60s"),
    (120, "60-120s"),
    (180, "120-180s"),
    (240, "180-240s"),
    (300, "240-300s"),
];

/// A point-in-time copy of the ledger, as `GET /_sim/ledger` returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSnapshot {
    /// API calls that passed authentication (every operation, every outcome).
    pub calls: u64,
    /// URLs issued, per operation name.
    pub issued: std::collections::BTreeMap<String, u64>,
    pub issued_total: u64,
    /// First, timely redemptions.
    pub redeemed: u64,
    /// Attempts to open a URL that had already been opened.
    pub double_redemptions: u64,
    /// Attempts to open a URL more than 300 s after it was issued.
    pub late_redemptions: u64,
    /// Attempts with a code the simulator never issued (or no longer remembers).
    pub unknown_redemptions: u64,
    /// Calls answered with ThrottlingException.
    pub throttled: u64,
    /// Calls answered with an injected InternalFailureException.
    pub failed: u64,
    /// Calls held by the hang knob.
    pub hung: u64,
    /// Calls refused for their content: invalid parameters, unknown resources, edition/pricing.
    pub rejected: u64,
    /// Calls refused by signature verification.
    pub unauthenticated: u64,
    /// The least validity a URL had left, by the simulator's clock, when it was first opened
    /// (ms; none before the first redemption). A gateway that keeps its promise never lets this
    /// fall below its `min_remaining` minus the time the client took to open the URL.
    pub min_validity_left_ms: Option<u64>,
    /// First redemptions by validity left (`0-30s` … `240-300s`).
    pub validity_left: std::collections::BTreeMap<String, u64>,
    /// URLs issued per `<account>/<region>` (the account in the call, the region it was signed
    /// for).
    #[serde(default)]
    pub issued_by_scope: std::collections::BTreeMap<String, u64>,
    /// STS AssumeRole calls answered with temporary credentials.
    #[serde(default)]
    pub roles_assumed: u64,
    /// STS AssumeRole calls refused (unknown role, untrusted caller, wrong external id).
    #[serde(default)]
    pub assume_role_refused: u64,
}

fn op_index(op: Operation) -> usize {
    match op {
        Operation::GetDashboardEmbedUrl => 0,
        Operation::GenerateEmbedUrlForAnonymousUser => 1,
        Operation::GenerateEmbedUrlForRegisteredUser => 2,
    }
}

/// What a redemption attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redemption {
    Ok,
    Double,
    Late,
    Unknown,
}

impl Ledger {
    pub fn call(&self) {
        self.calls.fetch_add(1, Relaxed);
    }
    pub fn issued(&self, op: Operation, account: &str, region: &str) {
        self.issued[op_index(op)].fetch_add(1, Relaxed);
        *self
            .by_scope
            .lock()
            .entry(format!("{account}/{region}"))
            .or_default() += 1;
    }
    pub fn assumed(&self, ok: bool) {
        if ok {
            &self.assumed
        } else {
            &self.assume_refused
        }
        .fetch_add(1, Relaxed);
    }
    pub fn redemption(&self, r: Redemption) {
        let c = match r {
            Redemption::Ok => &self.redeemed,
            Redemption::Double => &self.double_redemptions,
            Redemption::Late => &self.late_redemptions,
            Redemption::Unknown => &self.unknown_redemptions,
        };
        c.fetch_add(1, Relaxed);
    }
    /// A first, timely redemption with `left_ms` of the URL's validity left.
    pub fn validity_left(&self, left_ms: u64) {
        let _ = self
            .min_left_ms_plus_one
            .fetch_update(Relaxed, Relaxed, |m| {
                (m == 0 || left_ms + 1 < m).then_some(left_ms + 1)
            });
        let i = VALIDITY_BUCKETS
            .iter()
            .position(|(bound, _)| left_ms < bound * 1000)
            .unwrap_or(VALIDITY_BUCKETS.len() - 1);
        self.left[i].fetch_add(1, Relaxed);
    }

    pub fn throttled(&self) {
        self.throttled.fetch_add(1, Relaxed);
    }
    pub fn failed(&self) {
        self.failed.fetch_add(1, Relaxed);
    }
    pub fn hung(&self) {
        self.hung.fetch_add(1, Relaxed);
    }
    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Relaxed);
    }
    pub fn unauthenticated(&self) {
        self.unauthenticated.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> LedgerSnapshot {
        let issued: std::collections::BTreeMap<String, u64> = Operation::ALL
            .iter()
            .map(|op| {
                (
                    op.as_str().to_string(),
                    self.issued[op_index(*op)].load(Relaxed),
                )
            })
            .collect();
        LedgerSnapshot {
            calls: self.calls.load(Relaxed),
            issued_total: issued.values().sum(),
            issued,
            redeemed: self.redeemed.load(Relaxed),
            double_redemptions: self.double_redemptions.load(Relaxed),
            late_redemptions: self.late_redemptions.load(Relaxed),
            unknown_redemptions: self.unknown_redemptions.load(Relaxed),
            throttled: self.throttled.load(Relaxed),
            failed: self.failed.load(Relaxed),
            hung: self.hung.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            unauthenticated: self.unauthenticated.load(Relaxed),
            min_validity_left_ms: match self.min_left_ms_plus_one.load(Relaxed) {
                0 => None,
                m => Some(m - 1),
            },
            validity_left: VALIDITY_BUCKETS
                .iter()
                .zip(&self.left)
                .map(|((_, name), n)| (name.to_string(), n.load(Relaxed)))
                .collect(),
            issued_by_scope: self.by_scope.lock().clone(),
            roles_assumed: self.assumed.load(Relaxed),
            assume_role_refused: self.assume_refused.load(Relaxed),
        }
    }
}
