//! HTTPS on the native API and compatible listeners (`[tls]`).
//!
//! The certificate chain and its private key are read from PEM files at start (a file that does
//! not load refuses the start, naming its key) and read again by the watch that reloads the
//! tenant table (every few seconds, and on `SIGHUP`): when their contents have changed, new
//! connections get the new certificate, so one renewed in place (cert-manager writing a
//! Kubernetes Secret, certbot, an operator's copy) is served without a restart. Connections
//! already open keep the certificate they were set up with. A renewal that does not load (an
//! unreadable file, no PEM certificate, a key that is not the certificate's own: files caught
//! between two copies) is refused: the certificate in force stays, the log says why, and the
//! next change is tried again. Each certificate's expiry is a metric, and one that has expired
//! or expires within [`EXPIRY_WARNING`] is logged as a warning when it is loaded.
//!
//! With `tls.client_ca_file` the listeners ask every client for a certificate and accept only
//! one that an authority of that file issued, for client authentication, valid now and not
//! revoked by a list of `tls.client_crl_file` (mutual TLS): a connection without one never
//! reaches the request path. The authorities and lists are read and reloaded with the
//! certificate, as one set: a set any file of which does not load is refused whole, and a set
//! put in force forgets every TLS session clients could resume (resuming skips the client
//! certificate's check, so a revoked certificate would get past it). A connection already open
//! keeps its client certificate ([`ClientCertificate`]): at its first request, and at its next
//! request after each set put in force, the certificate is verified again against the set in
//! force, and from the moment it (or an intermediate it was presented with) expires it is
//! refused; a refused connection is answered 403 and closed. So a revocation, or an authority
//! removed, reaches the connections already open, not only new ones. The
//! authorities' names are not sent to clients as hints (clients present the certificate they
//! were given; the names would tell anyone who connects which authorities the gateway trusts).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{
    pem::PemObject, CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::config::TlsSettings;
use crate::metrics::Metrics;

/// A certificate this close to its expiry, or past it, is logged as a warning when loaded.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// A certificate chain with its key, ready to serve.
#[derive(Debug)]
pub struct Certificate {
    key: Arc<CertifiedKey>,
    /// The end-entity certificate's `notAfter`, in seconds since the Unix epoch.
    pub not_after: i64,
    /// The end-entity certificate's subject, as RFC 4514 text.
    pub subject: String,
}

/// The crypto provider of every listener's TLS (ring, chosen explicitly: the dependency tree
/// enables two).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads the files `settings` names: `None` when TLS is off.
///
/// # Errors
/// Which key is wrong and why: one file without the other, a file that cannot be read, holds
/// no PEM certificate (or key, or revocation list), a key that is not the certificate's, or
/// client authorities or lists that do not make a verifier.
pub fn load(settings: &TlsSettings) -> Result<Option<Certificate>, String> {
    Ok(load_all(settings)?.map(|(cert, _)| cert))
}

/// What [`read_pem`] reads: its name and its PEM label.
type Pem = (&'static str, &'static str);
const CERTIFICATE: Pem = ("certificate", "CERTIFICATE");

/// Every PEM `what` in `path`, at least one; or why not, naming the setting `key`.
fn read_pem<T: PemObject>(key: &str, path: &Path, (what, label): Pem) -> Result<Vec<T>, String> {
    let at = |e: &dyn std::fmt::Display| format!("{key}: {}: {e}", path.display());
    let pem = std::fs::read(path).map_err(|e| at(&e))?;
    let all = T::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| at(&format_args!("not a PEM {what} ({e})")))?;
    if all.is_empty() {
        return Err(at(&format_args!(
            "holds no PEM {what} (-----BEGIN {label}-----)"
        )));
    }
    Ok(all)
}

/// A verifier of client certificates against the authorities in `ca_file` and the revocation
/// lists in `crl_file`.
fn load_clients(
    ca_file: &Path,
    crl_file: Option<&Path>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let ca_at =
        |e: &dyn std::fmt::Display| format!("tls.client_ca_file: {}: {e}", ca_file.display());
    let cas: Vec<CertificateDer> = read_pem("tls.client_ca_file", ca_file, CERTIFICATE)?;
    let mut roots = rustls::RootCertStore::empty();
    for (i, ca) in cas.into_iter().enumerate() {
        roots.add(ca).map_err(|e| {
            ca_at(&format_args!(
                "certificate {} is not a usable certificate authority ({e})",
                i + 1
            ))
        })?;
    }
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        // Lists cover the authorities they come from; a certificate from another is not refused
        // for want of one.
        .allow_unknown_revocation_status()
        .clear_root_hint_subjects();
    if let Some(crl_file) = crl_file {
        let crls: Vec<CertificateRevocationListDer> = read_pem(
            "tls.client_crl_file",
            crl_file,
            ("revocation list", "X509 CRL"),
        )?;
        verifier = verifier.with_crls(crls);
    }
    verifier.build().map_err(|e| match (e, crl_file) {
        (rustls::server::VerifierBuilderError::InvalidCrl(e), Some(crl_file)) => format!(
            "tls.client_crl_file: {}: not a usable revocation list ({e:?})",
            crl_file.display()
        ),
        (e, _) => ca_at(&format_args!("cannot verify client certificates ({e})")),
    })
}

fn load_files(cert_file: &Path, key_file: &Path) -> Result<Certificate, String> {
    let at = |key: &str, path: &Path, e: &dyn std::fmt::Display| {
        format!("{key}: {}: {e}", path.display())
    };
    let cert_at = |e: &dyn std::fmt::Display| at("tls.cert_file", cert_file, e);
    let key_at = |e: &dyn std::fmt::Display| at("tls.key_file", key_file, e);
    let chain: Vec<CertificateDer> = read_pem("tls.cert_file", cert_file, CERTIFICATE)?;
    let leaf = &chain[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| cert_at(&format_args!("not an X.509 certificate ({e})")))?;
    let not_after = parsed.validity().not_after.timestamp();
    let subject = parsed.subject().to_string();
    let pem = std::fs::read(key_file).map_err(|e| key_at(&e))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        key_at(&format_args!(
            "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY; an ENCRYPTED PRIVATE KEY is not read: the gateway has no passphrase): {e}"
        ))
    })?;
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_at(&format_args!("not a usable private key ({e})")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        key_at(&format_args!(
            "not the private key of the certificate in tls.cert_file, whose first certificate must be the server's own, its intermediates after it ({e})"
        ))
    })?;
    Ok(Certificate {
        key: Arc::new(certified),
        not_after,
        subject,
    })
}

/// The certificate the HTTPS listeners serve, and the authorities of the client certificates
/// they accept, replaced when their files change.
pub struct ListenerTls {
    settings: TlsSettings,
    current: ArcSwap<Certificate>,
    /// With `tls.client_ca_file`: the client certificates accepted.
    clients: Option<Arc<Clients>>,
    /// The TLS sessions clients may resume, forgotten whenever a reload is put in force.
    sessions: Arc<Sessions>,
    /// A digest of the files' contents as last read (loaded or refused), so an unchanged or
    /// already refused set is not loaded (or logged) again on every look.
    seen: Mutex<u64>,
    metrics: Arc<Metrics>,
}

/// Logs a certificate put in force (a warning when it is near or past its expiry) and shows
/// its expiry in the metrics.
fn in_force(cert: &Certificate, metrics: &Metrics, what: &str) {
    metrics.tls_not_after.set(cert.not_after);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let left = cert.not_after - now;
    let not_after = time::OffsetDateTime::from_unix_timestamp(cert.not_after)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    if left <= 0 {
        tracing::warn!(subject = %cert.subject, not_after, "{what}: the certificate has expired: clients will refuse it");
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        tracing::warn!(subject = %cert.subject, not_after, days_left = left / 86_400, "{what}: the certificate expires soon");
    } else {
        tracing::info!(subject = %cert.subject, not_after, "{what}");
    }
}

/// The files `settings` names, in a fixed order (their contents' digest tells a change).
fn files(settings: &TlsSettings) -> Vec<&Path> {
    [
        &settings.cert_file,
        &settings.key_file,
        &settings.client_ca_file,
        &settings.client_crl_file,
    ]
    .into_iter()
    .flatten()
    .map(PathBuf::as_path)
    .collect()
}

/// What one read of the files holds: the certificate, and the client verifier when asked for.
type Loaded = (Certificate, Option<Arc<dyn ClientCertVerifier>>);

/// Reads every file `settings` names: `None` when TLS is off.
fn load_all(settings: &TlsSettings) -> Result<Option<Loaded>, String> {
    settings.check()?;
    let (Some(cert_file), Some(key_file)) = (&settings.cert_file, &settings.key_file) else {
        return Ok(None);
    };
    let cert = load_files(cert_file, key_file)?;
    let clients = match &settings.client_ca_file {
        Some(cas) => Some(load_clients(cas, settings.client_crl_file.as_deref())?),
        None => None,
    };
    Ok(Some((cert, clients)))
}

impl ListenerTls {
    /// The listeners' TLS as `settings` configures it: `None` when TLS is off.
    ///
    /// # Errors
    /// As [`load`].
    pub fn new(settings: &TlsSettings, metrics: Arc<Metrics>) -> Result<Option<Arc<Self>>, String> {
        let seen = crate::config::loader::contents(&files(settings));
        let Some((cert, clients)) = load_all(settings)? else {
            return Ok(None);
        };
        in_force(&cert, &metrics, "TLS certificate loaded");
        let clients = clients.map(|verifier| {
            tracing::info!(client_ca_file = %settings.client_ca_file.as_deref().unwrap_or(Path::new("")).display(), "client certificates required");
            Arc::new(Clients {
                current: ArcSwap::from_pointee(verifier),
                generation: AtomicU64::new(0),
                metrics: metrics.clone(),
            })
        });
        Ok(Some(Arc::new(ListenerTls {
            settings: settings.clone(),
            current: ArcSwap::from_pointee(cert),
            clients,
            sessions: Arc::new(Sessions::new()),
            seen: Mutex::new(seen),
            metrics,
        })))
    }

    /// A server configuration that serves the certificate in force, whichever it is when a
    /// connection is set up, and asks for a client certificate when `tls.client_ca_file` is set.
    ///
    /// # Errors
    /// The provider refuses the protocol versions (it does not: ring has both).
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.clients {
            Some(clients) => builder.with_client_cert_verifier(clients.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(self.clone());
        config.session_storage = self.sessions.clone();
        Ok(config)
    }

    /// Whether connections must present a client certificate (`tls.client_ca_file`).
    pub fn requires_client_certificates(&self) -> bool {
        self.clients.is_some()
    }

    /// The certificate in force.
    pub fn current(&self) -> Arc<Certificate> {
        self.current.load_full()
    }

    /// Reads the files again and, if their contents changed since they were last read (or
    /// `always`, on `SIGHUP`), puts the certificate and client authorities they hold in force:
    /// `None` when nothing was read anew, else whether they were put in force (or why not: the
    /// ones in force stay). Logs and counts what it did.
    pub fn reload(&self, always: bool) -> Option<Result<(), String>> {
        let now = crate::config::loader::contents(&files(&self.settings));
        {
            let mut seen = self.seen.lock();
            if !always && *seen == now {
                return None;
            }
            *seen = now;
        }
        // Built only with TLS on, so the files always make a set (`Some`).
        let loaded = load_all(&self.settings).transpose()?;
        Some(match loaded {
            Ok((cert, clients)) => {
                in_force(&cert, &self.metrics, "TLS certificate reloaded");
                self.current.store(Arc::new(cert));
                if let (Some(slot), Some(verifier)) = (&self.clients, clients) {
                    slot.current.store(Arc::new(verifier));
                    // After the store: a connection that reads the new generation verifies
                    // against this verifier (or a later one).
                    slot.generation.fetch_add(1, Ordering::Release);
                    tracing::info!("TLS client authorities and revocation lists reloaded");
                }
                // A resumed session skips the client certificate's verification: one set up
                // before a revocation would get past it.
                self.sessions.forget();
                self.metrics.tls_reloads_applied.inc();
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate not reloaded: the one in force stays");
                self.metrics.tls_reloads_refused.inc();
                Err(e)
            }
        })
    }
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("settings", &self.settings)
            .field("subject", &self.current.load().subject)
            .finish_non_exhaustive()
    }
}

/// The sessions clients may resume (rustls' own cache, of its default size), forgotten by
/// [`Sessions::forget`]. Resuming a session skips the client certificate's verification (the
/// certificate comes from the session), so a session set up under the authorities and
/// revocation lists before a reload must not be resumed after it.
#[derive(Debug)]
struct Sessions(ArcSwap<Arc<rustls::server::ServerSessionMemoryCache>>);

impl Sessions {
    const SIZE: usize = 256;

    fn new() -> Sessions {
        Sessions(ArcSwap::from_pointee(
            rustls::server::ServerSessionMemoryCache::new(Self::SIZE),
        ))
    }

    fn forget(&self) {
        self.0
            .store(Arc::new(rustls::server::ServerSessionMemoryCache::new(
                Self::SIZE,
            )));
    }
}

impl rustls::server::StoresServerSessions for Sessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.load().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().take(key)
    }

    fn can_cache(&self) -> bool {
        self.0.load().can_cache()
    }
}

/// The client certificate verifier in force, replaced by a reload.
struct Clients {
    current: ArcSwap<Arc<dyn ClientCertVerifier>>,
    /// How many verifiers were put in force after the first: what a connection's certificate
    /// was last verified under ([`ClientCertificate::checked`]).
    generation: AtomicU64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("current", &self.current.load())
            .finish_non_exhaustive()
    }
}

/// The metric's label for why a client certificate was refused.
fn refusal(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "wrong_purpose"
            }
            _ => "invalid",
        },
        _ => "invalid",
    }
}

impl ClientCertVerifier for Clients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints (see the module's documentation).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .current
            .load()
            .verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &verified {
            self.metrics
                .tls_clients_refused
                .with_label_values(&[refusal(e)])
                .inc();
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().supported_verify_schemes()
    }
}

/// A connection's client certificate, verified in its handshake and kept with the connection
/// (see [`ListenerTls::on_connect`]): its names, for each request's tenant to check
/// (`client_certificate_names`), and its chain, verified again by [`ClientCertificate::check`]
/// whenever the authorities and revocation lists in force have changed since it last was.
pub struct ClientCertificate {
    names: Box<[String]>,
    /// The certificate, then the intermediates the client presented with it.
    chain: Box<[CertificateDer<'static>]>,
    /// The earliest `notAfter` of the chain, in seconds since the Unix epoch.
    not_after: i64,
    clients: Arc<Clients>,
    /// The generation of [`Clients`] the chain was last verified under; none at first (the
    /// handshake's verification may have run under the verifier before a reload that
    /// completed before this connection was handed over).
    checked: AtomicU64,
    /// Why the certificate was refused, once it is: a connection is not accepted again.
    refused: OnceLock<&'static str>,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("refused", &self.refused.get())
            .finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// Never a generation of [`Clients`].
    const UNCHECKED: u64 = u64::MAX;

    /// A connection's client certificate `chain` (the certificate first), to be checked under
    /// `clients` from the connection's first request on.
    fn new(chain: &[CertificateDer<'_>], clients: Arc<Clients>) -> ClientCertificate {
        // Each certificate parsed once: the names from the first, the expiry from all.
        let parsed: Vec<_> = chain
            .iter()
            .map(|c| x509_parser::parse_x509_certificate(c).ok().map(|(_, p)| p))
            .collect();
        let not_after = parsed
            .iter()
            .flatten()
            .map(|p| p.validity().not_after.timestamp())
            .min()
            .unwrap_or(i64::MIN);
        let names = parsed.first().and_then(Option::as_ref).map(names_of);
        ClientCertificate {
            names: names.unwrap_or_default().into(),
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
            not_after,
            clients,
            checked: AtomicU64::new(Self::UNCHECKED),
            refused: OnceLock::new(),
        }
    }

    /// Its DNS and URI subject alternative names and its subject's common names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether the connection's certificate is still accepted: not expired, and, when the
    /// authorities or revocation lists have changed since it was last verified, verified again
    /// under those in force. `Err` names why not (a label of
    /// `embedgate_tls_client_certificates_refused_total`, counted the first time); a certificate
    /// refused stays refused for the life of its connection.
    pub fn check(&self) -> Result<(), &'static str> {
        if let Some(reason) = self.refused.get() {
            return Err(reason);
        }
        let now = UnixTime::now();
        if i64::try_from(now.as_secs()).unwrap_or(i64::MAX) > self.not_after {
            return Err(self.refuse("expired"));
        }
        let generation = self.clients.generation.load(Ordering::Acquire);
        if self.checked.load(Ordering::Relaxed) == generation {
            return Ok(());
        }
        let (leaf, intermediates) = self
            .chain
            .split_first()
            .expect("a connection's client certificate chain is never empty");
        match self
            .clients
            .current
            .load()
            .verify_client_cert(leaf, intermediates, now)
        {
            Ok(_) => {
                self.checked.store(generation, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(self.refuse(refusal(&e))),
        }
    }

    /// Whether [`ClientCertificate::check`] has refused it.
    pub fn refused(&self) -> bool {
        self.refused.get().is_some()
    }

    fn refuse(&self, reason: &'static str) -> &'static str {
        if self.refused.set(reason).is_ok() {
            self.clients
                .metrics
                .tls_clients_refused
                .with_label_values(&[reason])
                .inc();
            // Once per connection, and only for one open when its certificate stopped being
            // accepted (a new one is refused in its handshake): who was cut off, for the
            // operator who revoked it.
            tracing::warn!(
                reason,
                names = ?self.names,
                "client certificate of an open connection refused: the connection is closed"
            );
        }
        self.refused.get().copied().unwrap_or(reason)
    }
}

impl ListenerTls {
    /// For `HttpServer::on_connect` on the HTTPS listeners: keeps the connection's client
    /// certificate, if it presented one (`tls.client_ca_file`), with the connection.
    pub fn on_connect(&self, conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
        type Stream = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
        let (Some(clients), Some(stream)) = (&self.clients, conn.downcast_ref::<Stream>()) else {
            return;
        };
        let (_, session) = stream.get_ref();
        let Some(chain) = session.peer_certificates().filter(|c| !c.is_empty()) else {
            return;
        };
        ext.insert(ClientCertificate::new(chain, clients.clone()));
    }
}

/// A certificate's DNS and URI subject alternative names and its subject's common names.
#[cfg(test)]
fn names(cert: &[u8]) -> Vec<String> {
    x509_parser::parse_x509_certificate(cert)
        .map(|(_, parsed)| names_of(&parsed))
        .unwrap_or_default()
}

/// [`names`] of a parsed certificate.
fn names_of(parsed: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut names: Vec<String> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .into_iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::DNSName(n) | GeneralName::URI(n) => Some(n.to_string()),
            _ => None,
        })
        .collect();
    names.extend(
        parsed
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_string),
    );
    names
}

impl ResolvesServerCert for ListenerTls {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own for each test.
    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("embedgate-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A self-signed certificate for `name` valid until `not_after` (Unix seconds): its PEM and
    /// its key's PEM.
    fn certificate(name: &str, not_after: i64) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn settings(cert: &Path, key: &Path) -> TlsSettings {
        TlsSettings {
            cert_file: Some(cert.into()),
            key_file: Some(key.into()),
            ..TlsSettings::default()
        }
    }

    /// Writes as a Secret volume updates a mounted file: the new contents whole.
    fn write(path: &Path, text: &str) {
        let next = path.with_extension("next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, path).unwrap();
    }

    const YEAR_2030: i64 = 1_893_456_000;

    #[test]
    fn a_certificate_and_its_key_load_with_the_expiry_and_subject_read() {
        let d = dir("load");
        let (cert, key) = certificate("gateway.internal", YEAR_2030);
        let (cert_file, key_file) = (d.join("tls.crt"), d.join("tls.key"));
        write(&cert_file, &cert);
        write(&key_file, &key);
        let loaded = load(&settings(&cert_file, &key_file)).unwrap().unwrap();
        assert_eq!(loaded.not_after, YEAR_2030);
        assert!(loaded.subject.contains("rcgen"), "{}", loaded.subject);
        assert!(load(&TlsSettings::default()).unwrap().is_none(), "TLS off");
    }

    /// Files that do not make a certificate and its key, or client authorities and revocation
    /// lists, are refused naming the key; so are a list without authorities, and authorities
    /// without HTTPS (by the settings' own check).
    #[test]
    fn files_that_do_not_make_a_certificate_and_its_key_are_refused_naming_the_key() {
        let d = dir("refused");
        let (cert, key) = certificate("gateway.internal", YEAR_2030);
        let (other_cert, other_key) = certificate("gateway.internal", YEAR_2030);
        let file = |name: &str, text: &str| {
            let p = d.join(name);
            write(&p, text);
            p
        };
        let cert_file = file("tls.crt", &cert);
        let key_file = file("tls.key", &key);
        let other_key = file("other.key", &other_key);
        let notes = file("notes.txt", "trust me\n");
        let broken = file(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let missing = d.join("missing.pem");
        let encrypted = file(
            "encrypted.key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let reversed = file("reversed.crt", &format!("{other_cert}{cert}"));
        let (ca, _) = certificate("portal authority", YEAR_2030);
        let ca_file = file("ca.pem", &ca);
        let broken_crl = file(
            "broken.crl",
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        );
        // Client authorities (mutual TLS) and their revocation lists.
        let with = |ca: Option<&Path>, crl: Option<&Path>| TlsSettings {
            client_ca_file: ca.map(Into::into),
            client_crl_file: crl.map(Into::into),
            ..settings(&cert_file, &key_file)
        };
        assert!(load(&with(Some(&ca_file), None)).is_ok());
        let only = |cert: Option<&Path>, key: Option<&Path>| TlsSettings {
            cert_file: cert.map(Into::into),
            key_file: key.map(Into::into),
            ..TlsSettings::default()
        };
        for (s, starts, says) in [
            (
                only(Some(&cert_file), None),
                "tls.key_file: required with tls.cert_file",
                "",
            ),
            (
                only(None, Some(&key_file)),
                "tls.cert_file: required with tls.key_file",
                "",
            ),
            (
                settings(&missing, &key_file),
                "tls.cert_file: ",
                "No such file",
            ),
            (
                settings(&notes, &key_file),
                "tls.cert_file: ",
                "holds no PEM certificate",
            ),
            (
                settings(&broken, &key_file),
                "tls.cert_file: ",
                "not an X.509 certificate",
            ),
            (
                settings(&cert_file, &missing),
                "tls.key_file: ",
                "No such file",
            ),
            (
                settings(&cert_file, &cert_file),
                "tls.key_file: ",
                "holds no PEM private key",
            ),
            (
                settings(&cert_file, &other_key),
                "tls.key_file: ",
                "not the private key of the certificate in tls.cert_file",
            ),
            (
                settings(&cert_file, &encrypted),
                "tls.key_file: ",
                "an ENCRYPTED PRIVATE KEY is not read",
            ),
            (
                settings(&reversed, &key_file),
                "tls.key_file: ",
                "first certificate must be the server's own",
            ),
            (
                with(Some(&missing), None),
                "tls.client_ca_file: ",
                "No such file",
            ),
            (
                with(Some(&notes), None),
                "tls.client_ca_file: ",
                "holds no PEM certificate",
            ),
            (
                with(Some(&ca_file), Some(&notes)),
                "tls.client_crl_file: ",
                "holds no PEM revocation list",
            ),
            (
                with(Some(&ca_file), Some(&broken_crl)),
                "tls.client_crl_file: ",
                "not a usable revocation list",
            ),
            (
                with(None, Some(&broken_crl)),
                "tls.client_crl_file: needs tls.client_ca_file",
                "",
            ),
            (
                TlsSettings {
                    client_ca_file: Some(ca_file.clone()),
                    ..TlsSettings::default()
                },
                "tls.client_ca_file: needs tls.cert_file and tls.key_file",
                "",
            ),
        ] {
            let e = load(&s).unwrap_err();
            assert!(e.starts_with(starts) && e.contains(says), "{s:?}: {e}");
        }
        // The settings' own check refuses one file without the other, and leaves the files'
        // contents to the start (a reload of the tenant table does not read them).
        let mut all = crate::config::Settings {
            tls: only(Some(&cert_file), None),
            ..Default::default()
        };
        let e = all.validate().unwrap_err();
        assert!(e.starts_with("tls.key_file: required"), "{e}");
        all.tls = settings(&cert_file, &other_key);
        all.validate().unwrap();
    }

    #[test]
    fn a_renewed_certificate_is_put_in_force_and_a_broken_renewal_leaves_the_old_one() {
        let d = dir("renew");
        let (cert_file, key_file) = (d.join("tls.crt"), d.join("tls.key"));
        let (cert, key) = certificate("gateway.internal", YEAR_2030);
        write(&cert_file, &cert);
        write(&key_file, &key);
        let metrics = Arc::new(Metrics::new());
        let tls = ListenerTls::new(&settings(&cert_file, &key_file), metrics.clone())
            .unwrap()
            .unwrap();
        assert_eq!(metrics.tls_not_after.get(), YEAR_2030);
        assert!(
            tls.reload(false).is_none(),
            "unchanged files are not loaded again"
        );

        // Caught between two copies: the new certificate beside the old key.
        let (renewed, renewed_key) = certificate("gateway.internal", YEAR_2030 + 86_400);
        write(&cert_file, &renewed);
        let e = tls.reload(false).unwrap().unwrap_err();
        assert!(e.starts_with("tls.key_file: "), "{e}");
        assert_eq!(tls.current().not_after, YEAR_2030, "the one in force stays");
        assert!(
            tls.reload(false).is_none(),
            "a refused pair is not tried again until it changes"
        );
        assert!(tls.reload(true).unwrap().is_err(), "SIGHUP tries it again");

        write(&key_file, &renewed_key);
        assert_eq!(tls.reload(false), Some(Ok(())));
        assert_eq!(tls.current().not_after, YEAR_2030 + 86_400);
        assert_eq!(metrics.tls_not_after.get(), YEAR_2030 + 86_400);
        assert_eq!(
            (
                metrics.tls_reloads_applied.get(),
                metrics.tls_reloads_refused.get()
            ),
            (1, 2)
        );
    }

    /// A connection's certificate is checked under the authorities and lists in force at its
    /// requests, not only in its handshake: one revoked by a reload after the connection was
    /// set up is refused at its next request, as is one whose handshake ran under the list
    /// before a reload that completed before the connection was handed over; one that has
    /// expired is refused without a reload. Each is counted once, and stays refused.
    #[test]
    fn a_connections_certificate_is_refused_once_revoked_or_expired_under_the_lists_in_force() {
        let d = dir("open-connections");
        let (cert, key) = certificate("gateway.internal", YEAR_2030);
        let (cert_file, key_file) = (d.join("tls.crt"), d.join("tls.key"));
        let (ca_file, crl_file) = (d.join("clients.pem"), d.join("clients.crl"));
        write(&cert_file, &cert);
        write(&key_file, &key);
        let mut ca = rcgen::CertificateParams::new(vec![]).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        let issue = |serial: u64, not_after: i64| {
            let mut p = rcgen::CertificateParams::new(vec!["portal.example".into()]).unwrap();
            p.serial_number = Some(serial.into());
            p.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
            p.distinguished_name = rcgen::DistinguishedName::new();
            let key = rcgen::KeyPair::generate().unwrap();
            p.signed_by(&key, &ca, &ca_key).unwrap().der().clone()
        };
        let revoking = |serials: &[u64]| {
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
                        reason_code: None,
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(&ca, &ca_key)
            .unwrap()
            .pem()
            .unwrap()
        };
        write(&ca_file, &ca.pem());
        write(&crl_file, &revoking(&[]));
        let metrics = Arc::new(Metrics::new());
        let tls = ListenerTls::new(
            &TlsSettings {
                client_ca_file: Some(ca_file),
                client_crl_file: Some(crl_file.clone()),
                ..settings(&cert_file, &key_file)
            },
            metrics.clone(),
        )
        .unwrap()
        .unwrap();
        let clients = tls.clients.clone().unwrap();
        let refused = |reason: &str| {
            metrics
                .tls_clients_refused
                .with_label_values(&[reason])
                .get()
        };
        let (portal, other) = (issue(1, YEAR_2030), issue(2, YEAR_2030));
        let open = ClientCertificate::new(std::slice::from_ref(&portal), clients.clone());
        let kept = ClientCertificate::new(&[other], clients.clone());
        assert_eq!(
            (open.check(), open.check(), kept.check()),
            (Ok(()), Ok(()), Ok(()))
        );
        assert_eq!(open.names(), ["portal.example"]);

        write(&crl_file, &revoking(&[1]));
        assert_eq!(tls.reload(false), Some(Ok(())));
        // Handed over after the reload, its handshake verified before it.
        let late = ClientCertificate::new(&[portal], clients.clone());
        assert_eq!(
            (open.check(), late.check()),
            (Err("revoked"), Err("revoked"))
        );
        assert_eq!(kept.check(), Ok(()), "another certificate of the authority");
        assert_eq!(open.check(), Err("revoked"), "stays refused");
        assert!(open.refused() && !kept.refused());
        assert_eq!(refused("revoked"), 2, "once per connection");

        let expired = ClientCertificate::new(&[issue(3, 1_700_000_000)], clients);
        assert_eq!(
            (expired.check(), expired.check()),
            (Err("expired"), Err("expired"))
        );
        assert_eq!(refused("expired"), 1);
    }

    /// A client certificate's names are its DNS and URI alternative names and its common name:
    /// what `client_certificate_names` are matched against.
    #[test]
    fn a_client_certificates_names_are_its_alternative_names_and_common_name() {
        let mut params = rcgen::CertificateParams::new(vec!["portal.acme.example".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://acme.example/portal".try_into().unwrap(),
        ));
        params.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "ops@acme.example".try_into().unwrap(),
        ));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "acme portal");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme");
        let cert = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        assert_eq!(
            names(cert.der()),
            [
                "portal.acme.example",
                "spiffe://acme.example/portal",
                "acme portal"
            ]
        );
        assert!(names(b"not a certificate").is_empty());
    }
}
