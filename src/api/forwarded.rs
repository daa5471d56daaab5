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
//! the names. And the header is read only from a peer whose address is in
//! `api.client_cert_proxies`: from anywhere else it could be forged, so a request from another
//! peer presents no names at all.

use std::borrow::Cow;
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

/// The `URI` and `DNS` values of the last element of an `x-forwarded-client-cert` value.
fn last_element_names(value: &str) -> Vec<String> {
    let element = split_unquoted(value, ',').pop().unwrap_or_default();
    split_unquoted(element, ';')
        .into_iter()
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| {
            let key = key.trim();
            key.eq_ignore_ascii_case("URI") || key.eq_ignore_ascii_case("DNS")
        })
        .map(|(_, v)| unquote(v.trim()).into_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// `text` split at each `sep` outside double quotes (a `\` within quotes escapes the next
/// character).
fn split_unquoted(text: &str, sep: char) -> Vec<&str> {
    let mut parts = vec![];
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A value without its double quotes and with `\"` and `\\` read as the character escaped; a
/// value without quotes as it is.
fn unquote(value: &str) -> Cow<'_, str> {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) if inner.contains('\\') => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' {
                    chars.next().unwrap_or('\\')
                } else {
                    c
                });
            }
            Cow::Owned(out)
        }
        Some(inner) => Cow::Borrowed(inner),
        None => Cow::Borrowed(value),
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
        // Keys in any case, spaces around pairs.
        assert_eq!(
            last_element_names(" uri=spiffe://acme/portal ; dns=portal.acme.example "),
            ["spiffe://acme/portal", "portal.acme.example"]
        );
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
