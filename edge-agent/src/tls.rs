//! TLS of the `mqtts://` uplink: the client configuration built from the uplink's PEM files.
//!
//! The broker's certificate is checked against `ca_file` when it is given, else against the
//! platform's trusted roots. A client certificate (`client_cert_file` with `client_key_file`)
//! authenticates the gateway to brokers that ask for one. rustls on ring, TLS 1.2 and 1.3.
//! Reading the files is all the I/O: `edge-agent check` builds the configuration too, so a
//! wrong path or a file of the wrong kind is found before the agent starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::UplinkConfig;

/// Why the uplink's TLS configuration cannot be built; [`TlsError::key`] names the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {reason}")]
    Certificates {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("cannot read a PEM private key from {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{0}")]
    Roots(String),
    #[error("the certificate and key do not make a client identity: {0}")]
    Identity(String),
    #[error(
        "uplink: no trusted roots: give uplink.ca_file, or install the platform's CA certificates"
    )]
    NoRoots,
}

impl TlsError {
    /// The configuration key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Certificates { key, .. } | TlsError::NoCertificate { key, .. } => key,
            TlsError::Key { .. } => "uplink.client_key_file",
            TlsError::Roots(_) => "uplink.ca_file",
            TlsError::Identity(_) => "uplink.client_cert_file",
            TlsError::NoRoots => "uplink.ca_file",
        }
    }
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates {
            key,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The rustls client configuration of the uplink.
pub fn client_config(uplink: &UplinkConfig) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match &uplink.ca_file {
        Some(path) => {
            for cert in certificates("uplink.ca_file", path)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Roots(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            // Certificates the platform holds but rustls cannot parse are skipped, as
            // browsers do; none at all is an error.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::NoRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Identity(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&uplink.client_cert_file, &uplink.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates("uplink.client_cert_file", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
                path: key.clone(),
                reason: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Identity(e.to_string()))?
        }
        // Validation asks for both or neither.
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
