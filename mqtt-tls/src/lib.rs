//! TLS of `mqtts://` connections (the edge agent's uplink and `[[mqtt]]` sources, ingest's
//! broker): the client configuration built from a configuration section's PEM files.
//!
//! # Layout
//! - [`TlsFiles`]: a section's `ca_file`, `client_cert_file` and `client_key_file`, and their
//!   checks ([`TlsFiles::problems`], [`TlsFiles::validate`]).
//! - [`client_config`]: the rustls client configuration; [`TlsError`] names the key to fix.
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

use model::settings::Report;

/// A section's TLS files: `section` names it in errors (`uplink`, `mqtt[0]`).
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    pub section: &'a str,
    pub ca_file: Option<&'a Path>,
    pub client_cert_file: Option<&'a Path>,
    pub client_key_file: Option<&'a Path>,
}

impl TlsFiles<'_> {
    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.section)
    }

    /// Checks the files of a section whose broker is `tls` (`mqtts://`) or not, into
    /// `report`; see [`TlsFiles::problems`].
    pub fn validate(&self, tls: bool, report: &mut Report) {
        for (key, message) in self.problems(tls) {
            report.error(key, message);
        }
    }

    /// The problems of the files of a section whose broker is `tls` (`mqtts://`) or not, as
    /// (key, message): files only with TLS, certificate and key together, and each readable
    /// as what it should hold.
    pub fn problems(&self, tls: bool) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let files = [
            ("ca_file", self.ca_file.is_some()),
            ("client_cert_file", self.client_cert_file.is_some()),
            ("client_key_file", self.client_key_file.is_some()),
        ];
        if !tls {
            for (name, set) in files {
                if set {
                    out.push((
                        self.key(name),
                        format!(
                            "applies only to a TLS broker: write {} as mqtts://host:port",
                            self.key("broker")
                        ),
                    ));
                }
            }
            return out;
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            let missing = if self.client_cert_file.is_some() {
                "client_key_file"
            } else {
                "client_cert_file"
            };
            out.push((
                self.key(missing),
                "a client certificate needs both client_cert_file and client_key_file".to_owned(),
            ));
            return out;
        }
        if let Err(e) = client_config(self) {
            out.push((e.key().to_owned(), e.to_string()));
        }
        out
    }
}

/// Why a TLS configuration cannot be built; [`TlsError::key`] names the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {reason}")]
    Certificates {
        key: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { key: String, path: PathBuf },
    #[error("cannot read a PEM private key from {path}: {reason}")]
    Key {
        key: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{reason}")]
    Roots { key: String, reason: String },
    #[error("the certificate and key do not make a client identity: {reason}")]
    Identity { key: String, reason: String },
    #[error("no trusted roots: give {key}, or install the platform's CA certificates")]
    NoRoots { key: String },
}

impl TlsError {
    /// The configuration key the error is about.
    pub fn key(&self) -> &str {
        match self {
            TlsError::Certificates { key, .. }
            | TlsError::NoCertificate { key, .. }
            | TlsError::Key { key, .. }
            | TlsError::Roots { key, .. }
            | TlsError::Identity { key, .. }
            | TlsError::NoRoots { key } => key,
        }
    }
}

fn certificates(key: String, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = match CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
    {
        Ok(certs) => certs,
        Err(e) => {
            return Err(TlsError::Certificates {
                key,
                path: path.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The rustls client configuration of a section's TLS files.
pub fn client_config(files: &TlsFiles<'_>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match files.ca_file {
        Some(path) => {
            for cert in certificates(files.key("ca_file"), path)? {
                roots.add(cert).map_err(|e| TlsError::Roots {
                    key: files.key("ca_file"),
                    reason: format!("{}: {e}", path.display()),
                })?;
            }
        }
        None => {
            // Certificates the platform holds but rustls cannot parse are skipped, as
            // browsers do; none at all is an error.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::NoRoots {
                    key: files.key("ca_file"),
                });
            }
        }
    }
    let identity = |reason: String| TlsError::Identity {
        key: files.key("client_cert_file"),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| identity(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (files.client_cert_file, files.client_key_file) {
        (Some(cert), Some(key_file)) => {
            let chain = certificates(files.key("client_cert_file"), cert)?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::Key {
                key: files.key("client_key_file"),
                path: key_file.to_owned(),
                reason: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| identity(e.to_string()))?
        }
        // Validation asks for both or neither.
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
