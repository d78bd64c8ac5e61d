//! The broker's TLS material (`--tls-cert`, `--tls-key`, `--tls-client-ca`),
//! read once at start and checked by rustls there, so a bad file stops the
//! broker with its path instead of failing every handshake later.
//!
//! Both ports get the same certificate and the same client-certificate rule:
//! with mTLS on, the HTTP port would otherwise be a way in without a
//! certificate.

use crate::config::ServeConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Longest a TLS handshake may take before the connection is dropped, so
/// idle half-open connections cannot pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} holds no PEM {expected}: {detail}")]
    Pem { what: &'static str, path: PathBuf, expected: &'static str, detail: String },
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// TLS for both ports.
pub struct ServerTls {
    /// For tonic's server (the gRPC port).
    pub grpc: tonic::transport::ServerTlsConfig,
    /// For the HTTP port's listener.
    pub http: Arc<rustls::ServerConfig>,
    /// Client certificates are required (mTLS).
    pub mutual: bool,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

fn certs(what: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |detail: String| TlsError::Pem { what, path: path.to_path_buf(), expected: "certificate", detail };
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no `BEGIN CERTIFICATE` block".into()));
    }
    Ok(certs)
}

/// The rustls crypto of the whole process: ring. Installed as the default
/// too, for the code (tonic's server) that asks rustls for its default.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let ring = rustls::crypto::ring::default_provider();
    // Fails only when a default is already installed, which is fine.
    let _ = ring.clone().install_default();
    Arc::new(ring)
}

/// The TLS settings of `config`; `None` when TLS is off.
pub fn load(config: &ServeConfig) -> Result<Option<ServerTls>, TlsError> {
    let (cert_path, key_path) = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) if config.tls_client_ca.is_none() => return Ok(None),
        _ => {
            return Err(TlsError::Rustls(
                "--tls-cert and --tls-key go together (and --tls-client-ca needs them)".into(),
            ))
        }
    };
    let cert_pem = read("--tls-cert", cert_path)?;
    let key_pem = read("--tls-key", key_path)?;
    let chain = certs("--tls-cert", cert_path, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        what: "--tls-key",
        path: key_path.clone(),
        expected: "private key",
        detail: e.to_string(),
    })?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut grpc = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    let builder = match &config.tls_client_ca {
        Some(ca_path) => {
            let ca_pem = read("--tls-client-ca", ca_path)?;
            let mut roots = rustls::RootCertStore::empty();
            for ca in certs("--tls-client-ca", ca_path, &ca_pem)? {
                roots.add(ca).map_err(|e| TlsError::Rustls(format!("--tls-client-ca {}: {e}", ca_path.display())))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Rustls(format!("--tls-client-ca {}: {e}", ca_path.display())))?;
            grpc = grpc.client_ca_root(tonic::transport::Certificate::from_pem(&ca_pem));
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut http = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::Rustls(format!(
            "--tls-cert {} and --tls-key {} do not make a usable identity: {e}",
            cert_path.display(),
            key_path.display()
        ))
    })?;
    // The HTTP port speaks HTTP/1.1 only.
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(ServerTls { grpc, http: Arc::new(http), mutual: config.tls_client_ca.is_some() }))
}
