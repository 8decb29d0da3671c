//! How the PostgreSQL store and lease reach the server: in the clear, or over TLS through rustls,
//! as the URL's `sslmode` says, with libpq's names and meanings:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (the default) | when the server offers it | not checked, unless `sslrootcert` is given (then as `verify-ca`) |
//! | `require` | always | not checked, unless `sslrootcert` is given (then as `verify-ca`) |
//! | `verify-ca` | always | must chain to `sslrootcert` (else the web's public roots) |
//! | `verify-full` | always | as `verify-ca`, and must name the host connected to |
//!
//! `sslrootcert=FILE` (PEM) names the CA certificates to trust. Both parameters are taken out of
//! the URL before the client library reads it (it knows neither `verify-*` nor `sslrootcert`).

use std::path::PathBuf;
use std::sync::Arc;

use postgres::config::SslMode;
use postgres::{Client, NoTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// What the URL's `sslmode` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In the clear.
    Disable,
    /// TLS when the server offers it; its certificate is not checked.
    Prefer,
    /// TLS always; the certificate is not checked.
    Require,
    /// TLS; the certificate must chain to a trusted root.
    VerifyCa,
    /// TLS; the certificate must chain to a trusted root and name the host.
    VerifyFull,
}

/// A PostgreSQL URL split into what the client library takes and the TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL without `sslmode` and `sslrootcert`.
    pub url: String,
    /// The TLS mode.
    pub mode: Mode,
    /// CA certificates to trust (PEM file).
    pub root: Option<PathBuf>,
}

/// Splits `sslmode` and `sslrootcert` off a `postgres://` URL.
pub fn parse(url: &str) -> Result<Target, StoreError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut mode = Mode::Prefer;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => {
                mode = match value {
                    "disable" => Mode::Disable,
                    "prefer" | "allow" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(StoreError::Other(format!(
                            "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
                        )))
                    }
                }
            }
            "sslrootcert" => root = Some(PathBuf::from(percent_decoded(value))),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(Target { url, mode, root })
}

/// `text` with `%XX` escapes decoded (a file path in a URL).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The client library's settings for the URL, and the TLS connector its `sslmode` asks for
/// (`None`: in the clear).
fn prepare(url: &str) -> Result<(tokio_postgres::Config, Option<MakeRustlsConnect>), StoreError> {
    let target = parse(url)?;
    let mut config: tokio_postgres::Config = target
        .url
        .parse()
        .map_err(|e| StoreError::Other(format!("invalid postgres url: {e}")))?;
    let tls = match target.mode {
        Mode::Disable => None,
        mode => {
            config.ssl_mode(if mode == Mode::Prefer {
                SslMode::Prefer
            } else {
                SslMode::Require
            });
            Some(MakeRustlsConnect::new(client_config(
                mode,
                target.root.as_ref(),
            )?))
        }
    };
    Ok((config, tls))
}

/// Connects as the URL says, over TLS or not.
pub fn connect(url: &str) -> Result<Client, StoreError> {
    let (config, tls) = prepare(url)?;
    let config = postgres::Config::from(config);
    match tls {
        None => config.connect(NoTls),
        Some(tls) => config.connect(tls),
    }
    .map_err(StoreError::from)
}

/// The task that drives an asynchronous client's connection.
pub type Connection =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

/// Connects an asynchronous client as the URL says; the caller drives the connection.
pub async fn connect_async(url: &str) -> Result<(tokio_postgres::Client, Connection), StoreError> {
    let (config, tls) = prepare(url)?;
    Ok(match tls {
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            (client, Box::pin(connection) as Connection)
        }
        Some(tls) => {
            let (client, connection) = config.connect(tls).await?;
            (client, Box::pin(connection) as Connection)
        }
    })
}

/// The rustls configuration for `mode`, trusting `root` (else the web's public roots).
fn client_config(mode: Mode, root: Option<&PathBuf>) -> Result<ClientConfig, StoreError> {
    let provider = muster_worker::tls::provider();
    let mut roots = RootCertStore::empty();
    match root {
        Some(path) => {
            for cert in muster_worker::tls::read_certs(path).map_err(StoreError::Other)? {
                roots.add(cert).map_err(|e| {
                    StoreError::Other(format!(
                        "{} is not a usable CA certificate: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| StoreError::Other(format!("cannot set up TLS: {e}")))?;
    let check = match (mode, root) {
        (Mode::VerifyFull, _) => Check::Full,
        (Mode::VerifyCa, _) | (Mode::Prefer | Mode::Require, Some(_)) => Check::Chain,
        _ => Check::Nothing,
    };
    let verifier = Arc::new(Verifier {
        webpki,
        check,
        provider: provider.clone(),
    });
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Other(format!("cannot set up TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    Full,
}

/// rustls's own verifier, with libpq's weaker modes: `verify-ca` accepts a certificate for
/// another name, `prefer` and `require` any certificate. Handshake signatures are always
/// checked.
#[derive(Debug)]
struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    check: Check,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.check == Check::Nothing {
            return Ok(ServerCertVerified::assertion());
        }
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.check == Check::Chain => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        let t = parse("postgres://u@h:5432/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=m")
            .unwrap();
        assert_eq!(t.url, "postgres://u@h:5432/db?application_name=m");
        assert_eq!(t.mode, Mode::VerifyFull);
        assert_eq!(t.root, Some(PathBuf::from("/tmp/ca.pem")));
        let plain = parse("postgres://u@h/db").unwrap();
        assert_eq!(
            (plain.url.as_str(), plain.mode),
            ("postgres://u@h/db", Mode::Prefer)
        );
        assert!(parse("postgres://u@h/db?sslmode=maybe").is_err());
    }
}
