//! HTTPS for the REST API and the worker endpoint, when a certificate and key are configured.

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::ServerConfig;

use crate::config::TlsFiles;

/// The server configuration for `files`; an error names the file at fault.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<ServerConfig> {
    let chain = muster_worker::tls::read_certs(&files.cert).map_err(anyhow::Error::msg)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        anyhow::anyhow!(
            "cannot read a private key from {}: {e}",
            files.key.display()
        )
    })?;
    ServerConfig::builder_with_provider(muster_worker::tls::provider())
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| {
            format!(
                "{} and {} are not a certificate and its key",
                files.cert.display(),
                files.key.display()
            )
        })
}
