//! Bodies admitted recently, remembered with what admitting them produced.
//!
//! A portal asks for the same user and dashboard with the same bytes again and again (that is
//! what makes a pool worth having), and parsing, resolving defaults, validating, authorizing and
//! hashing the request into its pool key were the larger part of a pool hit's own work. Admission
//! depends only on the tenant, the operation, the body and the tenant's rules, so the same bytes
//! admitted again under the same rules give the same request and key. Each entry names the
//! generation of the rules it was admitted under (`tenant::Rules`), and is found only under that
//! generation: once a reload puts other rules in force, every body is admitted afresh.
//!
//! A body is recognised only by an exact match of tenant, operation and every byte. Only
//! admitted bodies are remembered (a refused one takes the full path each time, so its problem
//! names the member), and only bodies up to [`MAX_BODY`] bytes. Bounded: [`SLOTS`] entries, so
//! at most `SLOTS` × ([`MAX_BODY`] + one request) bytes, about 8 MiB. Each body may sit in one of
//! two slots picked by its hash; a new body takes an empty one, else the one filled longer ago.
//! (With one slot per body, a few hundred busy keys would already share slots and push each
//! other out on every request.)

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::Admitted;
use crate::model::Operation;
use crate::tenant::TenantId;

/// Entries in the table.
pub(super) const SLOTS: usize = 4096;
/// Bodies larger than this are not remembered (a request with many session tags or domains).
pub(super) const MAX_BODY: usize = 1024;

struct Entry {
    tenant: TenantId,
    /// The generation of the rules it was admitted under.
    rules: u64,
    op: Operation,
    body: Box<[u8]>,
    admitted: Arc<Admitted>,
    /// When it was put, in puts: the older of two candidates is replaced.
    put: u64,
}

pub(super) struct Recent {
    slots: Box<[Mutex<Option<Entry>>]>,
    hasher: RandomState,
    puts: AtomicU64,
}

impl Recent {
    pub(super) fn new() -> Recent {
        Recent {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
            hasher: RandomState::new(),
            puts: AtomicU64::new(0),
        }
    }

    /// The two slots `body` may sit in.
    fn candidates(&self, tenant: TenantId, op: Operation, body: &[u8]) -> [usize; 2] {
        let mut h = self.hasher.build_hasher();
        tenant.hash(&mut h);
        op.hash(&mut h);
        body.hash(&mut h);
        let h = h.finish();
        let first = (h as usize) % SLOTS;
        // A different slot from the hash's high half.
        let second = (first + 1 + ((h >> 32) as usize) % (SLOTS - 1)) % SLOTS;
        [first, second]
    }

    /// What admitting exactly `body` as `op` for `tenant` under the rules of generation `rules`
    /// produced, if it was remembered.
    pub(super) fn get(
        &self,
        tenant: TenantId,
        rules: u64,
        op: Operation,
        body: &[u8],
    ) -> Option<Arc<Admitted>> {
        self.candidates(tenant, op, body).into_iter().find_map(|i| {
            self.slots[i]
                .lock()
                .as_ref()
                .filter(|e| {
                    e.tenant == tenant && e.rules == rules && e.op == op && *e.body == *body
                })
                .map(|e| e.admitted.clone())
        })
    }

    /// Remembers that `body` as `op` for `tenant` was admitted as `admitted` under the rules of
    /// generation `rules`.
    pub(super) fn put(
        &self,
        tenant: TenantId,
        rules: u64,
        op: Operation,
        body: &[u8],
        admitted: Arc<Admitted>,
    ) {
        if body.len() > MAX_BODY {
            return;
        }
        let put = self.puts.fetch_add(1, Ordering::Relaxed);
        let [a, b] = self.candidates(tenant, op, body);
        let age = |i: usize| self.slots[i].lock().as_ref().map(|e| e.put);
        // An empty slot first (`None` orders first), else the one filled longer ago.
        let at = if age(b) < age(a) { b } else { a };
        *self.slots[at].lock() = Some(Entry {
            tenant,
            rules,
            op,
            body: body.into(),
            admitted,
            put,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DashboardEmbedRequest, EmbedRequest, IdentityType};
    use crate::pool::PoolKey;

    fn admitted(dashboard: &str) -> Arc<Admitted> {
        let request = EmbedRequest::Dashboard(DashboardEmbedRequest::new(
            "111122223333",
            dashboard,
            IdentityType::Quicksight,
        ));
        Arc::new(Admitted {
            request,
            key: PoolKey(dashboard.into()),
        })
    }

    #[test]
    fn only_the_same_tenant_rules_operation_and_bytes_find_what_was_admitted() {
        let recent = Recent::new();
        let op = Operation::GetDashboardEmbedUrl;
        let body = br#"{"DashboardId":"d","IdentityType":"QUICKSIGHT"}"#;
        recent.put(0, 1, op, body, admitted("d"));
        let found = recent.get(0, 1, op, body).expect("remembered");
        assert_eq!(found.key.as_str(), "d");
        assert!(recent.get(1, 1, op, body).is_none(), "another tenant");
        assert!(
            recent.get(0, 2, op, body).is_none(),
            "rules of another generation"
        );
        assert!(
            recent
                .get(0, 1, Operation::GenerateEmbedUrlForRegisteredUser, body)
                .is_none(),
            "another operation"
        );
        let mut other = body.to_vec();
        other[16] = b'e';
        assert!(recent.get(0, 1, op, &other).is_none(), "one byte differs");
        assert!(
            recent.get(0, 1, op, &body[..body.len() - 1]).is_none(),
            "a prefix"
        );
    }

    #[test]
    fn a_large_body_is_not_remembered_and_the_table_never_grows() {
        let recent = Recent::new();
        let op = Operation::GetDashboardEmbedUrl;
        let large = vec![b' '; MAX_BODY + 1];
        recent.put(0, 1, op, &large, admitted("d"));
        assert!(recent.get(0, 1, op, &large).is_none());
        for i in 0..SLOTS * 4 {
            recent.put(0, 1, op, format!("{i}").as_bytes(), admitted("d"));
        }
        assert_eq!(recent.slots.len(), SLOTS);
        let kept = (0..SLOTS * 4)
            .filter(|i| recent.get(0, 1, op, format!("{i}").as_bytes()).is_some())
            .count();
        assert!(kept <= SLOTS, "{kept} remembered");
    }

    #[test]
    fn a_few_hundred_busy_bodies_all_stay_remembered() {
        // What the slot choice is for: with one slot per body, 600 bodies in 4,096 slots would
        // leave about one in eight sharing a slot and pushing each other out.
        let recent = Recent::new();
        let op = Operation::GetDashboardEmbedUrl;
        let bodies: Vec<String> = (0..600)
            .map(|i| format!("{{\"DashboardId\":\"d-{i}\"}}"))
            .collect();
        for _ in 0..3 {
            for b in &bodies {
                if recent.get(0, 1, op, b.as_bytes()).is_none() {
                    recent.put(0, 1, op, b.as_bytes(), admitted("d"));
                }
            }
        }
        let kept = bodies
            .iter()
            .filter(|b| recent.get(0, 1, op, b.as_bytes()).is_some())
            .count();
        assert!(kept >= 597, "{kept} of 600 remembered");
    }
}
