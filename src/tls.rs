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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

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
/// no PEM certificate (or key), or a key that is not the certificate's.
pub fn load(settings: &TlsSettings) -> Result<Option<Certificate>, String> {
    settings.check()?;
    match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => load_files(cert, key).map(Some),
        _ => Ok(None),
    }
}

fn load_files(cert_file: &Path, key_file: &Path) -> Result<Certificate, String> {
    let at = |key: &str, path: &Path, e: &dyn std::fmt::Display| {
        format!("{key}: {}: {e}", path.display())
    };
    let cert_at = |e: &dyn std::fmt::Display| at("tls.cert_file", cert_file, e);
    let key_at = |e: &dyn std::fmt::Display| at("tls.key_file", key_file, e);
    let pem = std::fs::read(cert_file).map_err(|e| cert_at(&e))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_at(&format_args!("not a PEM certificate ({e})")))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_at(
            &"holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    };
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

/// The certificate the HTTPS listeners serve, replaced when its files change.
pub struct ListenerTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<Certificate>,
    /// A digest of the files' contents as last read (loaded or refused), so an unchanged or
    /// already refused pair is not loaded (or logged) again on every look.
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

impl ListenerTls {
    /// The listeners' TLS as `settings` configures it: `None` when TLS is off.
    ///
    /// # Errors
    /// As [`load`].
    pub fn new(settings: &TlsSettings, metrics: Arc<Metrics>) -> Result<Option<Arc<Self>>, String> {
        settings.check()?;
        let (Some(cert_file), Some(key_file)) = (&settings.cert_file, &settings.key_file) else {
            return Ok(None);
        };
        let seen = crate::config::loader::contents(&[cert_file, key_file]);
        let cert = load_files(cert_file, key_file)?;
        in_force(&cert, &metrics, "TLS certificate loaded");
        Ok(Some(Arc::new(ListenerTls {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            current: ArcSwap::from_pointee(cert),
            seen: Mutex::new(seen),
            metrics,
        })))
    }

    /// A server configuration that serves the certificate in force, whichever it is when a
    /// connection is set up.
    ///
    /// # Errors
    /// The provider refuses the protocol versions (it does not: ring has both).
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<rustls::ServerConfig> {
        Ok(rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone()))
    }

    /// The certificate in force.
    pub fn current(&self) -> Arc<Certificate> {
        self.current.load_full()
    }

    /// Reads the files again and, if their contents changed since they were last read (or
    /// `always`, on `SIGHUP`), puts the certificate they hold in force: `None` when nothing
    /// was read anew, else whether it was put in force (or why not: the certificate in force
    /// stays). Logs and counts what it did.
    pub fn reload(&self, always: bool) -> Option<Result<(), String>> {
        let now = crate::config::loader::contents(&[&self.cert_file, &self.key_file]);
        {
            let mut seen = self.seen.lock();
            if !always && *seen == now {
                return None;
            }
            *seen = now;
        }
        let result = load_files(&self.cert_file, &self.key_file);
        Some(match result {
            Ok(cert) => {
                in_force(&cert, &self.metrics, "TLS certificate reloaded");
                self.current.store(Arc::new(cert));
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
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("subject", &self.current.load().subject)
            .finish_non_exhaustive()
    }
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
        let only = |cert: Option<&Path>, key: Option<&Path>| TlsSettings {
            cert_file: cert.map(Into::into),
            key_file: key.map(Into::into),
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
}
