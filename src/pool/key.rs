//! Pool keys: tenant + region + the canonical form of every parameter that changes the URL.
//!
//! Canonical means order-insensitive lists sorted and de-duplicated, so equal requests map to one
//! key. The key is a SHA-256 over a versioned, deterministic serialisation, so it is stable across
//! processes and releases (it is a Redis key in cluster mode) and carries no readable parameter
//! (session tag values are sensitive).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::model::EmbedRequest;

/// A pool key: 32 hex digits (128 bits of a SHA-256).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey(pub(crate) Arc<str>);

impl PoolKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolKey({})", self.0)
    }
}

impl fmt::Display for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn sort_dedup<T: Ord>(v: &mut Option<Vec<T>>) {
    if let Some(v) = v {
        v.sort();
        v.dedup();
    }
}

/// Whether an optional list is already sorted and free of duplicates.
fn canonical_list<T: Ord>(v: &Option<Vec<T>>) -> bool {
    v.as_deref().is_none_or(strictly_increasing)
}

fn strictly_increasing<T: Ord>(v: &[T]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

/// Whether every order-insensitive list of `req` is already sorted and de-duplicated (the common
/// case: one entry or none), so that its canonical form is itself.
fn is_canonical(req: &EmbedRequest) -> bool {
    match req {
        EmbedRequest::Dashboard(d) => canonical_list(&d.additional_dashboard_ids),
        EmbedRequest::Anonymous(a) => {
            canonical_list(&a.session_tags)
                && strictly_increasing(&a.authorized_resource_arns)
                && canonical_list(&a.allowed_domains)
                && a.experience_configuration
                    .dashboard
                    .as_ref()
                    .is_none_or(|d| {
                        canonical_list(&d.enabled_features) && canonical_list(&d.disabled_features)
                    })
        }
        EmbedRequest::Registered(g) => canonical_list(&g.allowed_domains),
    }
}

/// The request with every order-insensitive list sorted and de-duplicated (borrowed when it
/// already is).
pub fn canonical(req: &EmbedRequest) -> Cow<'_, EmbedRequest> {
    if is_canonical(req) {
        return Cow::Borrowed(req);
    }
    let mut r = req.clone();
    match &mut r {
        EmbedRequest::Dashboard(d) => sort_dedup(&mut d.additional_dashboard_ids),
        EmbedRequest::Anonymous(a) => {
            sort_dedup(&mut a.session_tags);
            a.authorized_resource_arns.sort();
            a.authorized_resource_arns.dedup();
            sort_dedup(&mut a.allowed_domains);
            if let Some(d) = &mut a.experience_configuration.dashboard {
                sort_dedup(&mut d.enabled_features);
                sort_dedup(&mut d.disabled_features);
            }
        }
        EmbedRequest::Registered(g) => sort_dedup(&mut g.allowed_domains),
    }
    Cow::Owned(r)
}

/// Feeds what is written straight into the hash (no intermediate buffer).
struct Hashing<'a>(&'a mut Sha256);

impl std::io::Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The key for `tenant` asking `req` in `region`.
pub fn pool_key(tenant: &str, region: &str, req: &EmbedRequest) -> PoolKey {
    let canon = canonical(req);
    let mut h = Sha256::new();
    // v1: bump if the serialisation ever changes, so old Redis keys are not reused.
    h.update(b"embedgate-pool-key-v1\0");
    h.update(tenant.as_bytes());
    h.update(b"\0");
    h.update(region.as_bytes());
    h.update(b"\0");
    h.update(canon.operation().as_str().as_bytes());
    h.update(b"\0");
    // The request's JSON, streamed into the hash: the same bytes `serde_json::to_vec` makes.
    let w = Hashing(&mut h);
    let written = match &*canon {
        EmbedRequest::Dashboard(d) => serde_json::to_writer(w, d),
        EmbedRequest::Anonymous(a) => serde_json::to_writer(w, a),
        EmbedRequest::Registered(g) => serde_json::to_writer(w, g),
    };
    // Serialising these plain structs cannot fail (string keys, no maps of other keys).
    debug_assert!(written.is_ok());
    let digest = h.finalize();
    PoolKey(hex::encode(&digest[..16]).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AnonymousEmbedRequest;
    use proptest::prelude::*;

    fn anon(tags: Vec<(String, String)>, arns: Vec<String>) -> EmbedRequest {
        let body = serde_json::json!({
            "AwsAccountId": "111122223333",
            "Namespace": "default",
            "SessionTags": tags.iter().map(|(k, v)| serde_json::json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
            "AuthorizedResourceArns": arns,
            "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": "d"}}
        });
        EmbedRequest::Anonymous(serde_json::from_value::<AnonymousEmbedRequest>(body).unwrap())
    }

    /// Pool keys are Redis keys in cluster mode: a release that computed another key for the same
    /// request would strand every shared URL. The expected value is the documented layout (SHA-256
    /// over the version tag, tenant, region, operation and the canonical JSON, NUL-separated, the
    /// first 16 bytes in hex), computed outside Rust.
    #[test]
    fn the_key_of_a_request_is_the_same_in_every_release() {
        let mut d = crate::model::DashboardEmbedRequest::new(
            "111122223333",
            "sales-2024",
            crate::model::IdentityType::Quicksight,
        );
        d.session_lifetime_in_minutes = Some(600);
        d.user_arn = Some("arn:aws:quicksight:us-east-1:111122223333:user/default/alice".into());
        d.namespace = Some("default".into());
        d.additional_dashboard_ids = Some(vec!["b".into(), "a".into(), "b".into()]);
        d.region = Some("us-east-1".into());
        let req = EmbedRequest::Dashboard(d);
        assert_eq!(
            pool_key("acme", "us-east-1", &req).as_str(),
            "f6181c385d0a69db67c170fa965f1a5c"
        );
    }

    proptest! {
        #[test]
        fn list_order_and_duplicates_do_not_change_the_key(
            tags in proptest::collection::vec(("[a-c]{1,2}", "[x-z]{1,2}"), 1..6),
            arns in proptest::collection::vec("arn:aws:quicksight:us-east-1:111122223333:dashboard/[a-d]", 1..5),
            seed in any::<u64>(),
        ) {
            let a = anon(tags.clone(), arns.clone());
            let mut tags2 = tags.clone();
            let mut arns2 = arns.clone();
            tags2.push(tags[0].clone());
            arns2.push(arns[0].clone());
            let n = tags2.len();
            tags2.rotate_left((seed as usize) % n);
            arns2.reverse();
            let b = anon(tags2, arns2);
            prop_assert_eq!(pool_key("t", "us-east-1", &a), pool_key("t", "us-east-1", &b));
        }
    }

    #[test]
    fn tenant_region_and_parameters_all_change_the_key() {
        let a = anon(
            vec![("tenant".into(), "acme".into())],
            vec!["arn:aws:quicksight:us-east-1:111122223333:dashboard/d".into()],
        );
        let b = anon(
            vec![("tenant".into(), "other".into())],
            vec!["arn:aws:quicksight:us-east-1:111122223333:dashboard/d".into()],
        );
        let k = pool_key("t1", "us-east-1", &a);
        assert_ne!(k, pool_key("t2", "us-east-1", &a));
        assert_ne!(k, pool_key("t1", "eu-west-1", &a));
        assert_ne!(k, pool_key("t1", "us-east-1", &b));
        assert_eq!(k.as_str().len(), 32);
        assert!(!k.as_str().contains("acme"));
    }

    /// Every leaf of `v` changed in place (bools flipped, numbers and strings altered) and every
    /// object member removed, each as its own copy, with the path it changed.
    fn variants(v: &serde_json::Value, path: String, out: &mut Vec<(String, serde_json::Value)>) {
        use serde_json::Value;
        let mut push = |p: String, changed: Value| out.push((p, changed));
        match v {
            Value::Bool(b) => push(path, Value::Bool(!b)),
            Value::Number(n) => push(path, serde_json::json!(n.as_i64().unwrap_or(0) + 1)),
            Value::String(s) => push(path, Value::String(format!("{s}x"))),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let mut inner = vec![];
                    variants(item, format!("{path}[{i}]"), &mut inner);
                    for (p, changed) in inner {
                        let mut copy = items.clone();
                        copy[i] = changed;
                        out.push((p, Value::Array(copy)));
                    }
                }
            }
            Value::Object(members) => {
                for (k, item) in members {
                    let mut inner = vec![];
                    variants(item, format!("{path}.{k}"), &mut inner);
                    for (p, changed) in inner {
                        let mut copy = members.clone();
                        copy.insert(k.clone(), changed);
                        out.push((p, Value::Object(copy)));
                    }
                    let mut without = members.clone();
                    without.remove(k);
                    out.push((format!("{path}.{k} removed"), Value::Object(without)));
                }
            }
            Value::Null => {}
        }
    }

    #[test]
    fn every_member_of_every_operation_changes_the_key() {
        let cases: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("../../tests/fixtures/kitchen-sink.json")).unwrap();
        let mut checked = 0;
        for case in cases {
            let op: crate::model::Operation =
                serde_json::from_value(case["Operation"].clone()).unwrap();
            let parse = |v: &serde_json::Value| crate::model::parse_value(op, v.clone()).ok();
            let base = pool_key("t", "us-east-1", &parse(&case["Body"]).unwrap());
            let mut all = vec![];
            variants(&case["Body"], String::new(), &mut all);
            for (path, changed) in all {
                // A change that leaves a required member out, or one the parser refuses, is
                // not a request at all.
                let Some(req) = parse(&changed) else { continue };
                assert_ne!(
                    pool_key("t", "us-east-1", &req),
                    base,
                    "{}: changing {path} must change the key",
                    case["Name"]
                );
                checked += 1;
            }
        }
        assert!(checked >= 180, "only {checked} variants checked");
    }
}
