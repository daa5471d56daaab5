//! Client certificate names a proxy in front of the gateway forwards (`api.client_cert_header`):
//! a service mesh sidecar or an ingress that terminates mutual TLS itself, verifies the client's
//! certificate and passes what it found on in a header, in Envoy's `x-forwarded-client-cert`
//! format (Istio's and Envoy's own; other proxies can be set to write it).
//!
//! The header is a list of elements, one per proxy the request passed, separated by commas;
//! each is `Key=Value` pairs separated by semicolons, a value in double quotes when it holds a
//! comma, semicolon or quote (`\"` within). Only the **last** element is read: the one the
//! proxy next to the gateway added, about the client it verified (earlier elements came from
//! further away, and a client may have written them). Its `URI` and `DNS` pairs (the
//! certificate's URI and DNS subject alternative names; a certificate may have several) are
//! the names. The whole header must be well formed, or it presents no names: a proxy that
//! appends its element to one a client sent (Envoy's `APPEND_FORWARD`) appends it after text
//! the client chose, and a client that left a quote open there would otherwise have the
//! proxy's comma read as part of its own value, and its own pairs as the last element's.
//! And the header is read only from a peer whose address is in `api.client_cert_proxies`: from
//! anywhere else it could be forged, so a request from another peer presents no names at all.

use std::net::IpAddr;

use actix_web::HttpRequest;

use crate::config::ApiSettings;

/// The names the proxy next to the gateway forwards for the client of `req`, if `req` came from
/// a proxy `api` trusts and carries its header; `None` otherwise.
pub(super) fn names(api: &ApiSettings, req: &HttpRequest) -> Option<Vec<String>> {
    let header = api.client_cert_header.as_deref()?;
    let peer = req.peer_addr()?.ip();
    if !trusted(api, peer) {
        return None;
    }
    // Several header lines are one list, in order (RFC 9110 §5.3).
    let mut last = None;
    for line in req.headers().get_all(header) {
        last = Some(line.to_str().ok()?);
    }
    Some(last_element_names(last?))
}

/// Whether `peer` is one of `api.client_cert_proxies` (an IPv4 peer on an IPv6 socket, as
/// `::ffff:10.0.0.7`, counts as its IPv4 address).
fn trusted(api: &ApiSettings, peer: IpAddr) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    api.client_cert_proxy_nets().any(|net| net.contains(&peer))
}

/// The `URI` and `DNS` values of the last element of an `x-forwarded-client-cert` value; none
/// when the value is not well formed.
fn last_element_names(value: &str) -> Vec<String> {
    let Some(elements) = parse(value) else {
        return vec![];
    };
    let last = elements.last().map(Vec::as_slice).unwrap_or_default();
    last.iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case("URI") || key.eq_ignore_ascii_case("DNS"))
        .map(|(_, value)| value.clone())
        .filter(|v| !v.is_empty())
        .collect()
}

/// One element: its `Key=Value` pairs, values unquoted.
type Element<'a> = Vec<(&'a str, String)>;

/// The elements of `value`, or `None` unless every element is `Key=Value` pairs separated by
/// semicolons, keys of letters, a value either bare (no comma, semicolon or quote) or quoted
/// (a `\` escaping the next character) and followed by a separator or the end; elements
/// separated by commas, with optional spaces around them.
fn parse(value: &str) -> Option<Vec<Element<'_>>> {
    let mut elements = vec![vec![]];
    let mut rest = value.trim_start_matches([' ', '\t']);
    loop {
        let (key, after) = rest.split_once('=')?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) {
            return None;
        }
        let (pair_value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut unquoted = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next()? {
                        (_, '\\') => unquoted.push(chars.next()?.1),
                        (i, '"') => break i,
                        (_, c) => unquoted.push(c),
                    }
                };
                (unquoted, &quoted[end + 1..])
            }
            None => {
                let end = after.find([',', ';', '"']).unwrap_or(after.len());
                if after[end..].starts_with('"') {
                    return None;
                }
                (
                    after[..end].trim_end_matches([' ', '\t']).to_string(),
                    &after[end..],
                )
            }
        };
        elements.last_mut()?.push((key, pair_value));
        let after = after.trim_start_matches([' ', '\t']);
        rest = match after.chars().next() {
            None => return Some(elements),
            Some(';') => &after[1..],
            Some(',') => {
                elements.push(vec![]);
                after[1..].trim_start_matches([' ', '\t'])
            }
            Some(_) => return None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_are_the_uri_and_dns_pairs_of_the_last_element() {
        // Envoy's documented shape: one element, the subject quoted.
        assert_eq!(
            last_element_names(
                "By=spiffe://cluster.local/ns/embedgate/sa/embedgate;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject=\"CN=portal,O=Acme; Inc\";URI=spiffe://cluster.local/ns/acme/sa/portal;DNS=portal.acme.example;DNS=portal.internal"
            ),
            [
                "spiffe://cluster.local/ns/acme/sa/portal",
                "portal.acme.example",
                "portal.internal"
            ]
        );
        // Two proxies: only the nearer one's element counts, whatever the first claims.
        assert_eq!(
            last_element_names(
                "URI=spiffe://acme/portal;DNS=portal.acme.example,By=spiffe://mesh/gateway;URI=spiffe://beta/portal"
            ),
            ["spiffe://beta/portal"]
        );
        // Commas and semicolons within quotes do not split; escapes are read.
        assert_eq!(
            last_element_names(
                "Subject=\"CN=a,O=b\";URI=\"spiffe://acme/portal\";DNS=\"odd\\\"name;x\""
            ),
            ["spiffe://acme/portal", "odd\"name;x"]
        );
        // Keys in any case, spaces around elements (a list joined from several lines).
        assert_eq!(
            last_element_names(
                "URI=spiffe://beta/portal, uri=spiffe://acme/portal;dns=portal.acme.example "
            ),
            ["spiffe://acme/portal", "portal.acme.example"]
        );
    }

    /// A client's own header, forwarded with the proxy's element appended after it: however
    /// it is written, the names are the proxy's element's or none, never the client's.
    #[test]
    fn a_client_written_prefix_cannot_become_the_last_element() {
        let proxy = "By=spiffe://mesh/gateway;Subject=\"CN=a \\\"b\\\"\";URI=spiffe://real/client";
        for prefix in [
            "URI=spiffe://victim;X=\"",
            "URI=spiffe://victim;X=\"\\",
            "URI=\"spiffe://victim",
            "URI=spiffe://victim;X=\"a\"b",
            "URI=spiffe://victim,X",
        ] {
            let names = last_element_names(&format!("{prefix},{proxy}"));
            assert!(
                names.is_empty() || names == ["spiffe://real/client"],
                "{prefix}: {names:?}"
            );
        }
        for bare_proxy in [
            "By=a;URI=spiffe://real/client",
            "By=a;Subject=\"\";URI=spiffe://real/client",
        ] {
            let names = last_element_names(&format!("URI=spiffe://victim;X=\",{bare_proxy}"));
            assert!(names.is_empty(), "{bare_proxy}: {names:?}");
        }
        assert_eq!(
            last_element_names(&format!("URI=spiffe://victim,{proxy}")),
            ["spiffe://real/client"]
        );
    }

    proptest::proptest! {
        /// Whatever a client writes before the proxy's element (pieces of names, separators,
        /// quotes and escapes in any order), the names read are that element's, or none.
        #[test]
        fn any_prefix_yields_the_proxys_names_or_none(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "URI=spiffe://victim", "DNS=victim", "X=", "Subject=", "a", " ", ";", ",",
                    "\"", "\\", "=",
                ]),
                0..12,
            ),
            subject in "[A-Za-z=,; \"\\\\]{0,12}",
        ) {
            let escaped = subject.replace('\\', "\\\\").replace('"', "\\\"");
            let proxy = format!("By=spiffe://mesh/gateway;Subject=\"{escaped}\";URI=spiffe://real/client;DNS=real.example");
            let names = last_element_names(&format!("{},{proxy}", pieces.concat()));
            proptest::prop_assert!(
                names.is_empty() || names == ["spiffe://real/client", "real.example"],
                "{:?}", names
            );
        }
    }

    #[test]
    fn an_element_without_names_presents_none() {
        for value in [
            "",
            "By=spiffe://mesh/gateway;Hash=abc",
            "URI=;DNS=",
            "URI=spiffe://acme/portal,",
            "Subject=\"CN=portal.acme.example\"",
            "URI",
            // Not well formed: nothing is read.
            "URI=spiffe://acme/portal;Subject=\"CN=x",
            "URI=spiffe://acme/portal;Subject=\"CN=x\"y",
            "URI=spiffe://acme/po\"rtal",
            "=spiffe://acme/portal",
            "U-RI=spiffe://acme/portal",
        ] {
            assert!(last_element_names(value).is_empty(), "{value:?}");
        }
    }

    #[test]
    fn only_listed_proxies_are_trusted_also_as_mapped_ipv6() {
        let api = ApiSettings {
            client_cert_header: Some("x-forwarded-client-cert".into()),
            client_cert_proxies: vec!["10.0.0.0/8".into(), "::1".into(), "192.0.2.7".into()],
            ..ApiSettings::default()
        };
        for (peer, expected) in [
            ("10.1.2.3", true),
            ("::ffff:10.1.2.3", true),
            ("::1", true),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("11.0.0.1", false),
            ("127.0.0.1", false),
            ("::2", false),
        ] {
            assert_eq!(trusted(&api, peer.parse().unwrap()), expected, "{peer}");
        }
    }
}
