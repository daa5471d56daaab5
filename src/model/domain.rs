//! `AllowedDomains` entries, by AWS's rules for allow listing domains at runtime: an origin
//! `https://<domain>[:port]`, where the domain may start with one `*.` label for all its
//! subdomains, or `http://localhost[:port]` for testing. The domain must be a registrable name
//! (not a bare public suffix such as `co.uk`, not an IP address); internationalised names are
//! valid and compared in their ASCII (punycode) form.
//!
//! AWS's examples: valid `https://example-1.com`, `http://localhost`, `https://www.アマゾンドメイン.jp`,
//! `https://*.sapp.amazon.com`; invalid `https://example.com.*.example-1.co.uk`, `https://co.uk`,
//! `https://111.222.33.44.55:1234`, `https://111.222.33.44.55`.

/// A valid `AllowedDomains` entry in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `https`, or `http` for localhost only.
    pub scheme: &'static str,
    /// Lowercase ASCII host, without a leading `*.`.
    pub host: String,
    /// The entry covers every subdomain of `host` (`https://*.host`).
    pub wildcard: bool,
    pub port: Option<u16>,
}

impl Origin {
    /// Parses one entry; `Err` says which rule it breaks.
    pub fn parse(entry: &str) -> Result<Origin, &'static str> {
        let (scheme, rest) = if let Some(rest) = entry.strip_prefix("https://") {
            ("https", rest)
        } else if let Some(rest) = entry.strip_prefix("http://") {
            ("http", rest)
        } else {
            return Err("must start with https:// (or be http://localhost)");
        };
        let (wildcard, rest) = match rest.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        if rest.contains('*') {
            return Err("may use * only as the first label (https://*.example.com)");
        }
        if rest.contains(['/', '?', '#', '@', '\\']) {
            return Err("must be an origin: no user, path, query or fragment");
        }
        // The URL parser applies IDNA (Unicode names become punycode) and rejects malformed hosts
        // and numeric hosts that are not IPv4 addresses (such as 111.222.33.44.55).
        let url = url::Url::parse(&format!("{scheme}://{rest}"))
            .map_err(|_| "must be a valid domain name with an optional port")?;
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => {
                return Err("must name a domain, not an IP address")
            }
            None => return Err("must be a valid domain name with an optional port"),
        };
        let port = url.port();
        if scheme == "http" {
            if host != "localhost" || wildcard {
                return Err("may use http:// only for localhost");
            }
            return Ok(Origin {
                scheme,
                host,
                wildcard,
                port,
            });
        }
        if host != "localhost" && psl::domain_str(&host).is_none() {
            return Err("must be a registrable domain, not a public suffix such as co.uk");
        }
        Ok(Origin {
            scheme,
            host,
            wildcard,
            port,
        })
    }

    /// Whether this entry, used as a policy pattern, allows `requested`: the same scheme and
    /// port, and the same host, or (for a `*.` pattern) a host below it. A requested wildcard is
    /// allowed only by a wildcard at or above it.
    pub fn allows(&self, requested: &Origin) -> bool {
        if self.scheme != requested.scheme || self.port != requested.port {
            return false;
        }
        if !self.wildcard {
            return !requested.wildcard && requested.host == self.host;
        }
        requested.host == self.host && requested.wildcard
            || requested
                .host
                .strip_suffix(&self.host)
                .is_some_and(|prefix| prefix.ends_with('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awss_documented_examples_are_judged_as_aws_judges_them() {
        for ok in [
            "https://example-1.com",
            "http://localhost",
            "https://www.アマゾンドメイン.jp",
            "https://*.sapp.amazon.com",
            "http://localhost:3000",
            "https://app.example.co.uk:8443",
        ] {
            assert!(Origin::parse(ok).is_ok(), "{ok}: {:?}", Origin::parse(ok));
        }
        for bad in [
            "https://example.com.*.example-1.co.uk",
            "https://co.uk",
            "https://111.222.33.44.55:1234",
            "https://111.222.33.44.55",
            "http://localhost.evil.example",
            "http://app.example.com",
            "https://*.co.uk",
            "https://10.0.0.1",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "app.example.com",
            "https://",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unicode_names_compare_in_punycode() {
        let a = Origin::parse("https://www.アマゾンドメイン.jp").unwrap();
        assert!(a.host.starts_with("www.xn--"), "{}", a.host);
        let b = Origin::parse(&format!("https://{}", a.host)).unwrap();
        assert!(a.allows(&b));
    }

    #[test]
    fn patterns_allow_exact_hosts_and_subdomains_of_wildcards_only() {
        let p = |s: &str| Origin::parse(s).unwrap();
        let wild = p("https://*.example.com");
        assert!(wild.allows(&p("https://app.example.com")));
        assert!(wild.allows(&p("https://a.b.example.com")));
        assert!(wild.allows(&p("https://*.example.com")));
        assert!(wild.allows(&p("https://*.app.example.com")));
        assert!(!wild.allows(&p("https://example.com")));
        assert!(!wild.allows(&p("https://badexample.com")));
        assert!(!wild.allows(&p("https://app.example.com:8443")));
        let exact = p("https://app.example.com");
        assert!(exact.allows(&p("https://APP.example.com")));
        assert!(!exact.allows(&p("https://*.example.com")));
        assert!(!exact.allows(&p("https://x.app.example.com")));
        assert!(!p("http://localhost").allows(&p("http://localhost:3000")));
    }
}
