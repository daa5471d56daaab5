//! Tenants' SigV4 access keys for the QuickSight-compatible listener (drop-in mode).
//!
//! SigV4 needs the secret to verify a signature, so the secret cannot be stored as a hash the way
//! API keys are. It is not stored at all: each tenant secret is derived with HKDF-SHA256 from the
//! server's master key (from `EMBEDGATE_MASTER_KEY` or `master_key_file`, never the TOML), the
//! tenant id and the access key id. The config lists only key ids, which are not secret; several
//! per tenant allow rotation. Binding the tenant id into the derivation means a key id moved to
//! another tenant's list stops working instead of granting that tenant's access.

use std::collections::HashMap;

use base64::Engine;
use hkdf::Hkdf;
use rand::Rng;
use sha2::Sha256;

use crate::config::{Secret, TenantSettings};
use crate::tenant::TenantId;

/// Derivation salt: changing it changes every tenant secret.
const SALT: &[u8] = b"embedgate/tenant-access-key/v1";
/// Letters of generated key ids (RFC 4648 base32: upper case and digits, as AWS's own ids).
const KEY_ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A new random access key id: `EG` and 18 base32 letters (90 bits).
pub fn new_access_key_id() -> String {
    let mut rng = rand::rng();
    let mut id = String::from("EG");
    for _ in 0..18 {
        id.push(KEY_ID_ALPHABET[rng.random_range(0..KEY_ID_ALPHABET.len())] as char);
    }
    id
}

/// The secret access key of `key_id` for `tenant`: 40 base64 characters, like AWS's.
pub fn derive_secret(master: &Secret, tenant: &str, key_id: &str) -> Secret {
    let hk = Hkdf::<Sha256>::new(Some(SALT), master.expose().as_bytes());
    let mut info = Vec::with_capacity(tenant.len() + key_id.len() + 1);
    info.extend_from_slice(tenant.as_bytes());
    info.push(0);
    info.extend_from_slice(key_id.as_bytes());
    let mut okm = [0u8; 30];
    hk.expand(&info, &mut okm)
        .expect("30 bytes is a valid HKDF-SHA256 output length");
    Secret::new(base64::engine::general_purpose::STANDARD.encode(okm))
}

/// Every tenant access key the compatible listener accepts, with its derived secret, built at
/// start-up and on each reload (no derivation per request).
#[derive(Debug, Default)]
pub struct AccessKeys {
    by_id: HashMap<String, (TenantId, Secret)>,
}

impl AccessKeys {
    /// Derives the secret of every configured key id (none without a master key); `slots` holds
    /// each tenant's index, in the same order.
    pub fn new(tenants: &[TenantSettings], slots: &[TenantId], master: Option<&Secret>) -> Self {
        let Some(master) = master else {
            return AccessKeys::default();
        };
        let by_id = tenants
            .iter()
            .zip(slots)
            .flat_map(|(t, &index)| {
                t.access_key_ids
                    .iter()
                    .map(move |id| (id.clone(), (index, derive_secret(master, &t.id, id))))
            })
            .collect();
        AccessKeys { by_id }
    }

    /// The tenant and secret of an access key id.
    pub fn get(&self, key_id: &str) -> Option<(TenantId, &Secret)> {
        self.by_id.get(key_id).map(|(t, s)| (*t, s))
    }

    /// The key ids of tenant `tenant`, sorted.
    pub fn ids_of(&self, tenant: TenantId) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .by_id
            .iter()
            .filter(|(_, (t, _))| *t == tenant)
            .map(|(id, _)| id.as_str())
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{check_access_key_id, check_master_key};

    fn master(s: &str) -> Secret {
        Secret::new(s.repeat(40))
    }

    #[test]
    fn a_secret_depends_on_the_master_key_the_tenant_and_the_key_id() {
        let m = master("a");
        let s = derive_secret(&m, "acme", "EGAAAAAAAAAAAAAAAAAA");
        assert_eq!(s.expose().len(), 40);
        assert_eq!(
            s.expose(),
            derive_secret(&m, "acme", "EGAAAAAAAAAAAAAAAAAA").expose(),
            "stable"
        );
        for other in [
            derive_secret(&master("b"), "acme", "EGAAAAAAAAAAAAAAAAAA"),
            derive_secret(&m, "globex", "EGAAAAAAAAAAAAAAAAAA"),
            derive_secret(&m, "acme", "EGAAAAAAAAAAAAAAAAAB"),
            // The separator keeps ("ab", "C…") and ("a", "bC…") apart.
            derive_secret(&m, "acm", "eEGAAAAAAAAAAAAAAAAAA"),
        ] {
            assert_ne!(s.expose(), other.expose());
        }
    }

    #[test]
    fn generated_key_ids_are_valid_and_distinct() {
        let a = new_access_key_id();
        assert!(check_access_key_id(&a).is_ok(), "{a}");
        assert_ne!(a, new_access_key_id());
        assert!(check_access_key_id("short").is_err());
        assert!(check_access_key_id("EGlowercaseletters00").is_err());
        assert!(check_master_key(&Secret::new("x".repeat(31))).is_err());
        assert!(check_master_key(&Secret::new("x".repeat(32))).is_ok());
    }
}
