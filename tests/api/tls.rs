//! HTTPS on the native API and compatible listeners (`[tls]`): clients that trust only the
//! issuing CA get URLs through both (the chain's intermediate served with the certificate), a
//! plain-HTTP request is not answered, and a certificate renewed in place reaches new
//! connections without a restart while a half-written renewal is refused. With client
//! authorities (`tls.client_ca_file`) only clients holding a certificate one of them issued are
//! served, and a tenant's keys only with the certificates it names.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use embedgate::config::{Secret, TlsSettings};
use embedgate::credentials::derive_secret;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use serde_json::json;

use crate::helpers::*;

/// A root CA, an intermediate it signed, and a certificate for 127.0.0.1 the intermediate
/// signed: what a client trusts, and what the gateway's two files hold.
struct Issued {
    root_pem: String,
    /// The certificate, then the intermediate.
    chain_pem: String,
    key_pem: String,
    not_after: i64,
}

fn ca(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p
}

fn issue(not_after: i64) -> Issued {
    let root_key = KeyPair::generate().unwrap();
    let root = ca("test root").self_signed(&root_key).unwrap();
    let mid_key = KeyPair::generate().unwrap();
    let mid = ca("test intermediate")
        .signed_by(&mid_key, &root, &root_key)
        .unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &mid, &mid_key).unwrap();
    Issued {
        root_pem: root.pem(),
        chain_pem: format!("{}{}", cert.pem(), mid.pem()),
        key_pem: key.serialize_pem(),
        not_after,
    }
}

/// 2031-01-01 and a day later.
const NOT_AFTER: i64 = 1_924_992_000;

/// A directory of its own with `issued`'s two files in it: (cert_file, key_file).
fn files(name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("embedgate-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    replace_file(&cert, &issued.chain_pem);
    replace_file(&key, &issued.key_pem);
    (cert, key)
}

/// A client certificate authority (`tls.client_ca_file`), as an operator runs one for its
/// portals.
struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let cert = ca(name).self_signed(&key).unwrap();
        Authority { cert, key }
    }

    /// A client certificate for `name` (its DNS name), with its key: one PEM, as a client
    /// presents it.
    fn issue(&self, name: &str, serial: u64) -> String {
        self.issue_for(name, serial, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// [`Authority::issue`] for another use.
    fn issue_for(&self, name: &str, serial: u64, usage: rcgen::ExtendedKeyUsagePurpose) -> String {
        self.issue_with(name, serial, |p| p.extended_key_usages = vec![usage])
    }

    /// [`Authority::issue`], valid until `not_after`.
    fn issue_until(&self, name: &str, serial: u64, not_after: time::OffsetDateTime) -> String {
        self.issue_with(name, serial, |p| p.not_after = not_after)
    }

    fn issue_with(
        &self,
        name: &str,
        serial: u64,
        change: impl FnOnce(&mut CertificateParams),
    ) -> String {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.serial_number = Some(serial.into());
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        change(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        format!("{}{}", cert.pem(), key.serialize_pem())
    }

    /// A revocation list of the certificates with these serial numbers.
    fn revoking(&self, serials: &[u64]) -> String {
        let now = time::OffsetDateTime::now_utc();
        rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(7),
            crl_number: (serials.len() as u64 + 1).into(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&s| rcgen::RevokedCertParams {
                    serial_number: s.into(),
                    revocation_time: now - time::Duration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)
        .unwrap()
        .pem()
        .unwrap()
    }
}

/// A server certificate, and a portal authority (`tls.client_ca_file`) with a revocation list
/// that revokes nothing yet and two portals' certificates, serials 1 and 2.
struct Mutual {
    issued: Issued,
    tls: TlsSettings,
    crl_file: PathBuf,
    portals: Authority,
    portal_a: String,
    portal_b: String,
}

fn mutual(name: &str) -> Mutual {
    let issued = issue(NOT_AFTER);
    let (cert_file, key_file) = files(name, &issued);
    let (ca_file, crl_file) = (
        cert_file.with_file_name("clients.pem"),
        cert_file.with_file_name("clients.crl"),
    );
    let portals = Authority::new("portal authority");
    replace_file(&ca_file, &portals.cert.pem());
    replace_file(&crl_file, &portals.revoking(&[]));
    Mutual {
        issued,
        tls: TlsSettings {
            cert_file: Some(cert_file),
            key_file: Some(key_file),
            client_ca_file: Some(ca_file),
            client_crl_file: Some(crl_file.clone()),
        },
        crl_file,
        portal_a: portals.issue("portal-a.example", 1),
        portal_b: portals.issue("portal-b.example", 2),
        portals,
    }
}

/// Mutual TLS as `tls` sets it, and the compatible listener, where alpha signs with
/// [`ALPHA_KEY`].
fn serve_mutual(s: &mut embedgate::config::Settings, tls: TlsSettings) {
    s.tls = tls;
    s.compat_listen = Some("127.0.0.1:0".parse().unwrap());
    s.master_key = Some(Secret::new(MASTER));
    s.tenants[0].access_key_ids = vec![ALPHA_KEY.into()];
}

/// A client that trusts `root_pem` and nothing else, presenting `identity` (a client
/// certificate and its key) when given one.
fn presenting(root_pem: &str, identity: Option<&str>) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(30));
    match identity {
        Some(pem) => builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap()),
        None => builder,
    }
    .build()
    .unwrap()
}

/// A client that trusts `root_pem` and nothing else. A new client has no connection and no TLS
/// session to resume, so its first request sees the certificate served at that moment.
fn trusting(root_pem: &str) -> reqwest::Client {
    presenting(root_pem, None)
}

async fn embed(http: &reqwest::Client, base: &str, key: &str) -> reqwest::Result<u16> {
    let r = http
        .post(format!("{base}/v1/embed-url/dashboard"))
        .bearer_auth(key)
        .json(&json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"}))
        .send()
        .await?;
    Ok(r.status().as_u16())
}

/// A GetDashboardEmbedUrl signed with alpha's access key, sent to the compatible listener at
/// `compat`: its status, `x-amzn-ErrorType` and `Connection` header.
async fn drop_in(
    client: &reqwest::Client,
    compat: &str,
) -> reqwest::Result<(u16, Option<String>, Option<String>)> {
    let secret = derive_secret(&Secret::new(MASTER), "alpha", ALPHA_KEY);
    let (url, headers) = signed(
        compat,
        ALPHA_KEY,
        secret.expose(),
        "quicksight",
        "us-east-1",
        std::time::SystemTime::now(),
    );
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let r = req.send().await?;
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    Ok((
        r.status().as_u16(),
        header("x-amzn-ErrorType"),
        header("connection"),
    ))
}

/// `embedgate_tls_client_certificates_refused_total` for `reason` in a scrape.
fn refusals(metrics: &str, reason: &str) -> f64 {
    metric(
        metrics,
        &format!("embedgate_tls_client_certificates_refused_total{{reason=\"{reason}\"}}"),
    )
}

const MASTER: &str = "tls-tests-master-key-0123456789abcdef0";
const ALPHA_KEY: &str = "EGALPHATLS0000000001";

#[tokio::test]
async fn the_api_and_the_drop_in_listener_serve_https_to_clients_that_trust_the_issuer() {
    let issued = issue(NOT_AFTER);
    let (cert_file, key_file) = files("serve", &issued);
    let app = spawn_app(|s| {
        s.tls = TlsSettings {
            cert_file: Some(cert_file),
            key_file: Some(key_file),
            ..TlsSettings::default()
        };
        s.compat_listen = Some("127.0.0.1:0".parse().unwrap());
        s.master_key = Some(Secret::new(MASTER));
        s.tenants[0].access_key_ids = vec![ALPHA_KEY.into()];
    })
    .await;
    let https = format!("https://{}", app.app.addr);
    let http = trusting(&issued.root_pem);

    // The native API: a client that trusts only the root gets a URL (the intermediate came
    // with the certificate).
    let r = http
        .post(format!("{https}/v1/embed-url/dashboard"))
        .bearer_auth("alpha-key")
        .json(&json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"}))
        .send()
        .await
        .expect("an HTTPS answer");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["EmbedUrl"].as_str().is_some(), "{body}");

    // Plain HTTP on the same port gets no answer: no URL or key ever crosses it in clear.
    let plain = app
        .http
        .post(format!("http://{}/v1/embed-url/dashboard", app.app.addr))
        .bearer_auth("alpha-key")
        .json(&json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"}))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // Nor does a client that does not trust the issuer.
    let stranger = trusting(&issue(NOT_AFTER).root_pem);
    assert!(embed(&stranger, &https, "alpha-key").await.is_err());

    // Drop-in mode: the official Rust SDK over HTTPS, trusting only the root.
    let compat = format!("https://{}", app.app.compat_addr.unwrap());
    let tls = aws_smithy_http_client::tls::TlsContext::builder()
        .with_trust_store(
            aws_smithy_http_client::tls::TrustStore::empty()
                .with_pem_certificate(issued.root_pem.as_bytes()),
        )
        .build()
        .unwrap();
    let client = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(tls)
        .build_https();
    let secret = derive_secret(&Secret::new(MASTER), "alpha", ALPHA_KEY);
    let qs = Sdk {
        access_key: ALPHA_KEY,
        secret: secret.expose(),
        ..Sdk::default()
    }
    .client_with(&compat, Some(client));
    let out = sdk_anonymous(&qs, ACCOUNT, "sales-2024")
        .session_tags(tenant_tag("alpha"))
        .send()
        .await
        .expect("a URL through the compatible listener over HTTPS");
    assert!(out.embed_url().starts_with("http"), "{out:?}");

    // The admin listener stays plain HTTP, and shows when the certificate expires.
    let metrics = get_text(&app.http, &format!("{}/metrics", app.admin)).await;
    assert_eq!(
        metric(
            &metrics,
            "embedgate_tls_certificate_expiry_timestamp_seconds"
        ),
        issued.not_after as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_reaches_new_connections_without_a_restart() {
    let sim = spawn_sim();
    let first = issue(NOT_AFTER);
    let renewed = issue(NOT_AFTER + 86_400);
    let (cert_file, key_file) = files("renew", &first);
    let config = cert_file.with_file_name("gateway.toml");
    std::fs::write(
        &config,
        served_config(
            &sim,
            "127.0.0.1:0",
            &format!(
                "[tls]\ncert_file = {:?}\nkey_file = {:?}",
                cert_file.display().to_string(),
                key_file.display().to_string()
            ),
            "acme-key",
        ),
    )
    .unwrap();
    let gateway = Served::start(&config);
    let serving = gateway.wait_for("embedgate serving");
    assert_eq!(log_field(&serving, "https"), json!(true), "{serving}");
    let https = format!(
        "https://{}",
        log_field(&serving, "listen").as_str().unwrap()
    );
    // A client of its own for each request: one that resumed its TLS session would not be
    // shown a certificate at all.
    let old = || trusting(&first.root_pem);
    let new = || trusting(&renewed.root_pem);
    assert_eq!(embed(&old(), &https, "acme-key").await.unwrap(), 200);
    assert!(embed(&new(), &https, "acme-key").await.is_err());

    // Caught between two copies: the renewed chain beside the old key. Refused; the
    // certificate in force stays.
    replace_file(&cert_file, &renewed.chain_pem);
    gateway.hup();
    let refused = gateway.wait_for("TLS certificate not reloaded");
    assert!(refused.contains("tls.key_file"), "{refused}");
    // What `check-config` says of the files as they are (a restart now would not start).
    let checked = Command::new(env!("CARGO_BIN_EXE_embedgate"))
        .args(["check-config", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&checked.stderr);
    assert!(
        !checked.status.success()
            && said.contains("tls.key_file")
            && said.contains("not the private key of the certificate in tls.cert_file"),
        "{said}"
    );
    assert_eq!(embed(&old(), &https, "acme-key").await.unwrap(), 200);

    // The key follows; no signal this time: the files are watched.
    replace_file(&key_file, &renewed.key_pem);
    let reloaded = gateway.wait_for("TLS certificate reloaded");
    assert!(reloaded.contains("2031-01-02"), "{reloaded}");
    assert_eq!(embed(&new(), &https, "acme-key").await.unwrap(), 200);
    assert!(
        embed(&old(), &https, "acme-key").await.is_err(),
        "a new connection still got the old certificate"
    );
}

/// Mutual TLS: with `tls.client_ca_file` a client without a certificate, or with one another
/// authority issued or its authority revoked, is refused in the handshake (counted by reason);
/// a tenant that lists `client_certificate_names` is served only over connections whose
/// certificate names one of them, on both listeners, so its key alone is not enough; a tenant
/// that lists none is served with any certificate the authority issued. A revocation list
/// renewed in place reaches new connections without a restart.
#[tokio::test]
async fn only_clients_the_authority_certified_are_served_and_a_tenants_keys_only_with_its_names() {
    let Mutual {
        issued,
        tls,
        crl_file,
        portals,
        portal_a,
        portal_b,
    } = mutual("clients");
    let stranger = Authority::new("another authority").issue("portal-a.example", 1);
    let server_only = portals.issue_for(
        "portal-a.example",
        3,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let app = spawn_app(|s| {
        serve_mutual(s, tls);
        s.tenants[0].client_certificate_names = vec!["portal-a.example".into()];
    })
    .await;
    let https = format!("https://{}", app.app.addr);
    let with = |identity: Option<&str>| presenting(&issued.root_pem, identity);

    let state = app.state(0).await;
    assert_eq!(
        (
            &state["tenants"][0]["client_certificate_names"],
            &state["tenants"][1]["client_certificate_names"]
        ),
        (&json!(["portal-a.example"]), &json!([]))
    );

    // The admin listener answers the probes a kubelet sends, which presents no certificate.
    for path in ["/healthz", "/readyz"] {
        let r = app
            .http
            .get(format!("{}{path}", app.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    // No client certificate, one another authority issued, or one the authority issued for
    // servers only: no answer at all.
    assert!(embed(&with(None), &https, "alpha-key").await.is_err());
    assert!(embed(&with(None), &https, "beta-key").await.is_err());
    assert!(embed(&with(Some(&stranger)), &https, "alpha-key")
        .await
        .is_err());
    assert!(embed(&with(Some(&server_only)), &https, "alpha-key")
        .await
        .is_err());

    // The certificate alpha names: served. Another of the authority's: alpha's key is refused,
    // beta's (no names listed) served.
    assert_eq!(
        embed(&with(Some(&portal_a)), &https, "alpha-key")
            .await
            .unwrap(),
        200
    );
    let b = with(Some(&portal_b));
    assert_eq!(embed(&b, &https, "beta-key").await.unwrap(), 200);
    let r = b
        .post(format!("{https}/v1/embed-url/dashboard"))
        .bearer_auth("alpha-key")
        .json(&json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["code"], "client_certificate_not_allowed", "{p}");

    // The compatible listener: alpha's access key signs as well from either portal, and is
    // served only from the one alpha names.
    let compat = format!("https://{}", app.app.compat_addr.unwrap());
    let status_and_error = |(status, error, _): (u16, Option<String>, _)| (status, error);
    assert_eq!(
        drop_in(&with(Some(&portal_a)), &compat)
            .await
            .map(status_and_error)
            .unwrap(),
        (200, None)
    );
    assert_eq!(
        drop_in(&b, &compat).await.map(status_and_error).unwrap(),
        (403, Some("AccessDeniedException".to_string()))
    );

    // portal-a's certificate revoked: the renewed list reaches new connections, also those of
    // a client that would resume a TLS session it set up before (each of its requests on a
    // new connection), whose certificate would otherwise not be checked again.
    let resuming = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(issued.root_pem.as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(portal_a.as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for _ in 0..2 {
        assert_eq!(embed(&resuming, &https, "alpha-key").await.unwrap(), 200);
    }
    replace_file(&crl_file, &portals.revoking(&[1]));
    let tls = app.app.tls.as_ref().unwrap();
    assert_eq!(tls.reload(false), Some(Ok(())));
    assert!(embed(&with(Some(&portal_a)), &https, "alpha-key")
        .await
        .is_err());
    let resumed = embed(&resuming, &https, "alpha-key").await;
    assert!(
        resumed.is_err(),
        "a resumed session was served: {resumed:?}"
    );
    assert_eq!(embed(&b, &https, "beta-key").await.unwrap(), 200);

    let metrics = get_text(&app.http, &format!("{}/metrics", app.admin)).await;
    let refused = |reason| refusals(&metrics, reason);
    assert_eq!(
        (
            refused("unknown_issuer"),
            refused("wrong_purpose"),
            refused("revoked")
        ),
        (1.0, 1.0, 2.0),
        "the revoked certificate refused twice: a new session and one that would have resumed"
    );
    let unauthenticated = |protocol: &str| {
        metric(
            &metrics,
            &format!("embedgate_requests_total{{outcome=\"unauthenticated\",protocol=\"{protocol}\",tenant=\"-\"}}"),
        )
    };
    assert_eq!(
        (unauthenticated("native"), unauthenticated("quicksight")),
        (1.0, 1.0),
        "a key refused for its client certificate counts as unauthenticated"
    );
    assert_eq!(
        metric(
            &metrics,
            "embedgate_client_certificate_mismatches_total{tenant=\"alpha\"}"
        ),
        2.0,
        "and as a mismatch of the tenant whose key it was, on either listener"
    );
}

/// A connection set up before its client certificate was revoked, or before it expired, is not
/// served past either: a portal (or whoever holds its key and certificate) that keeps its
/// connection open is refused at its next request (403 `client_certificate_refused` on the
/// native API, `AccessDeniedException` on the compatible listener) and the connection is
/// closed, while connections whose certificates are still good carry on across the reload.
#[tokio::test]
async fn a_connection_open_when_its_certificate_is_revoked_or_expires_is_refused_and_closed() {
    let Mutual {
        issued,
        tls,
        crl_file,
        portals,
        portal_a,
        portal_b,
    } = mutual("open-connections");
    // x509 times are whole seconds: expires between 2 and 3 seconds from now.
    let expires_at = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap()
        + time::Duration::seconds(3);
    let short_lived = portals.issue_until("portal-c.example", 3, expires_at);
    let app = spawn_app(|s| serve_mutual(s, tls)).await;
    let https = format!("https://{}", app.app.addr);
    let compat = format!("https://{}", app.app.compat_addr.unwrap());
    // Each client keeps its one connection open between requests (reqwest's pool).
    let with = |identity: &str| presenting(&issued.root_pem, Some(identity));
    let (a, b, c, a_compat) = (
        with(&portal_a),
        with(&portal_b),
        with(&short_lived),
        with(&portal_a),
    );
    /// The status, problem code and `Connection` header of a native request.
    async fn native(
        http: &reqwest::Client,
        base: &str,
    ) -> reqwest::Result<(u16, String, Option<String>)> {
        let r = http
            .post(format!("{base}/v1/embed-url/dashboard"))
            .bearer_auth("alpha-key")
            .json(&json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"}))
            .send()
            .await?;
        let status = r.status().as_u16();
        let connection = r
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap().to_string());
        let body: serde_json::Value = r.json().await?;
        Ok((
            status,
            body["code"].as_str().unwrap_or_default().to_string(),
            connection,
        ))
    }

    for client in [&a, &b, &c] {
        assert_eq!(native(client, &https).await.unwrap().0, 200);
    }
    assert_eq!(drop_in(&a_compat, &compat).await.unwrap().0, 200);

    // portal-a revoked and the list reloaded: its open connections are refused at their next
    // request and closed; portal-b's carries on.
    replace_file(&crl_file, &portals.revoking(&[1]));
    assert_eq!(app.app.tls.as_ref().unwrap().reload(false), Some(Ok(())));
    assert_eq!(
        native(&a, &https).await.unwrap(),
        (
            403,
            "client_certificate_refused".to_string(),
            Some("close".to_string())
        )
    );
    assert_eq!(
        drop_in(&a_compat, &compat).await.unwrap(),
        (
            403,
            Some("AccessDeniedException".to_string()),
            Some("close".to_string())
        )
    );
    assert_eq!(native(&b, &https).await.unwrap().0, 200);
    // Closed: the client's next request needs a new connection, refused in its handshake.
    assert!(native(&a, &https).await.is_err());

    // portal-c's certificate expires while its connection is open.
    let wait = (expires_at - time::OffsetDateTime::now_utc()) + time::Duration::milliseconds(1_100);
    tokio::time::sleep(wait.try_into().unwrap_or_default()).await;
    assert_eq!(
        native(&c, &https).await.unwrap(),
        (
            403,
            "client_certificate_refused".to_string(),
            Some("close".to_string())
        )
    );
    assert_eq!(native(&b, &https).await.unwrap().0, 200);

    let metrics = get_text(&app.http, &format!("{}/metrics", app.admin)).await;
    let refused = |reason| refusals(&metrics, reason);
    assert_eq!(
        (refused("revoked"), refused("expired")),
        (3.0, 1.0),
        "each connection refused once: portal-a's two open ones and its new one; portal-c's"
    );
}

/// Behind a proxy that terminates mutual TLS itself (a service mesh sidecar, an ingress), a
/// tenant's keys are bound to the names the proxy forwards in `api.client_cert_header`
/// (Envoy's `x-forwarded-client-cert`): only the element the proxy next to the gateway added
/// counts, on both listeners, and the header is ignored from a peer not listed in
/// `api.client_cert_proxies`, where anyone could have written it.
#[tokio::test]
async fn behind_a_trusted_proxy_a_tenants_keys_are_served_only_with_the_names_it_forwards() {
    const XFCC: &str = "x-forwarded-client-cert";
    let forwarding = |proxies: &[&str]| {
        let proxies: Vec<String> = proxies.iter().map(|p| p.to_string()).collect();
        move |s: &mut embedgate::config::Settings| {
            s.api.client_cert_header = Some(XFCC.into());
            s.api.client_cert_proxies = proxies;
            s.compat_listen = Some("127.0.0.1:0".parse().unwrap());
            s.master_key = Some(Secret::new(MASTER));
            s.tenants[0].access_key_ids = vec![ALPHA_KEY.into()];
            s.tenants[0].client_certificate_names = vec!["spiffe://acme.example/portal".into()];
        }
    };
    let app = spawn_app(forwarding(&["127.0.0.1", "::1"])).await;
    let native = |app: &TestApp, key: &'static str, xfcc: Option<&'static str>| {
        let mut req = app
            .http
            .post(format!("http://{}/v1/embed-url/dashboard", app.app.addr))
            .bearer_auth(key)
            .json(&json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"}));
        if let Some(v) = xfcc {
            req = req.header(XFCC, v);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            (
                status,
                body["code"].as_str().unwrap_or_default().to_string(),
            )
        }
    };
    let served = (200, String::new());
    let refused = (403, "client_certificate_not_allowed".to_string());
    let portal = "By=spiffe://cluster.local/ns/embedgate/sa/embedgate;Hash=0a1b;Subject=\"CN=portal,O=Acme\";URI=spiffe://acme.example/portal";
    assert_eq!(native(&app, "alpha-key", Some(portal)).await, served);
    for other in [
        "URI=spiffe://beta.example/portal",
        // The nearer proxy's element is the last: an earlier one claiming alpha's portal is
        // what a client wrote, or what a proxy further away saw.
        "URI=spiffe://acme.example/portal,URI=spiffe://beta.example/portal",
        "Subject=\"CN=spiffe://acme.example/portal\"",
    ] {
        assert_eq!(
            native(&app, "alpha-key", Some(other)).await,
            refused,
            "{other}"
        );
    }
    assert_eq!(native(&app, "alpha-key", None).await, refused);
    assert_eq!(
        native(&app, "beta-key", None).await,
        served,
        "beta lists no names"
    );

    // The compatible listener reads the same header.
    let compat = format!("http://{}", app.app.compat_addr.unwrap());
    let secret = derive_secret(&Secret::new(MASTER), "alpha", ALPHA_KEY);
    for (xfcc, expected) in [(portal, 200), ("URI=spiffe://beta.example/portal", 403)] {
        let (url, headers) = signed(
            &compat,
            ALPHA_KEY,
            secret.expose(),
            "quicksight",
            "us-east-1",
            std::time::SystemTime::now(),
        );
        let mut req = app.http.get(url).header(XFCC, xfcc);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), expected, "{xfcc}");
    }
    let metrics = get_text(&app.http, &format!("{}/metrics", app.admin)).await;
    assert_eq!(
        metric(
            &metrics,
            "embedgate_client_certificate_mismatches_total{tenant=\"alpha\"}"
        ),
        5.0,
        "four refusals on the native API, one on the compatible listener"
    );

    // From a peer that is not a listed proxy, the header is anyone's word: no names.
    let elsewhere = spawn_app(forwarding(&["192.0.2.0/24"])).await;
    assert_eq!(native(&elsewhere, "alpha-key", Some(portal)).await, refused);
    assert_eq!(native(&elsewhere, "beta-key", Some(portal)).await, served);
}
