//! HTTPS for embed pages: the QuickSight embedding SDK only embeds `https://` URLs, so the
//! simulator can serve its embed pages on a second listener with a self-signed certificate made
//! at start-up (for `localhost` and the listener's address). Browsers and clients must be told
//! to trust it: tests add [`SelfSigned::cert_pem`] as a root, Chromium runs with
//! `--ignore-certificate-errors`, a person accepts it once (the demo page says how).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A TLS configuration with a fresh self-signed certificate.
pub struct SelfSigned {
    pub config: rustls::ServerConfig,
    /// The certificate, PEM-encoded, for clients that should trust it.
    pub cert_pem: String,
}

/// Makes a certificate for `localhost` and `addr`'s IP address, and a server configuration with
/// it (ring as the crypto provider, chosen explicitly: the dependency tree enables two).
///
/// # Errors
/// The certificate or the configuration cannot be built.
pub fn self_signed(addr: SocketAddr) -> anyhow::Result<SelfSigned> {
    let names = vec!["localhost".to_string(), addr.ip().to_string()];
    let certified = rcgen::generate_simple_self_signed(names)?;
    let cert_pem = certified.cert.pem();
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)?;
    Ok(SelfSigned { config, cert_pem })
}
