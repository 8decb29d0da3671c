//! TLS for connections to a coordinator (the worker's, and the `muster` client commands'): which
//! certificates to trust. A coordinator served over `https://` is trusted when its certificate
//! chains to the CA certificates of `--ca-cert` (PEM), or, without that flag, to the web's public
//! roots (Mozilla's list, built in).

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The cryptography every TLS connection of Muster's uses (*ring*).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file, in order; an error names the file when it holds none.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// A client configuration trusting the CA certificates in `ca_cert`, or the web's public roots
/// without it. HTTP/1.1 only: a worker's WebSocket needs it, and a client's calls are one at a
/// time.
pub fn client_config(ca_cert: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| {
                    format!("{} is not a usable CA certificate: {e}", path.display())
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
