//! TLS for the admin endpoint (`--admin-tls`, or `--admin-tls-cert` and
//! `--admin-tls-key`): a server configuration of its own (HTTP/1.1 by
//! ALPN, no client certificates), rebuilt when the files change.
//! `serve.rs` runs the handshakes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::BrokerError;

#[derive(Debug, Clone)]
pub struct AdminTls {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<RwLock<Arc<ServerConfig>>>,
    loaded: Arc<crate::reload::Snapshot>,
    /// `--tls-reload-interval`; `None`: never.
    every: Option<Duration>,
}

fn bad(flag: &'static str, path: &std::path::Path, detail: impl ToString) -> BrokerError {
    BrokerError::Tls {
        flag,
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

fn build(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<ServerConfig>, BrokerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("--admin-tls-cert", cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("--admin-tls-cert", cert, e))?;
    if certs.is_empty() {
        return Err(bad(
            "--admin-tls-cert",
            cert,
            "no PEM CERTIFICATE block found",
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("--admin-tls-key", key, e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("--admin-tls-cert", cert, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            bad(
                "--admin-tls-key",
                key,
                format!("does not fit the certificate: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl AdminTls {
    pub fn load(
        cert: PathBuf,
        key: PathBuf,
        every: Option<Duration>,
    ) -> Result<AdminTls, BrokerError> {
        let loaded = Arc::new(crate::reload::snapshot(&[cert.clone(), key.clone()]));
        let config = build(&cert, &key)?;
        Ok(AdminTls {
            cert,
            key,
            current: Arc::new(RwLock::new(config)),
            loaded,
            every,
        })
    }

    /// Rebuilds the configuration when the files change, until `stop`.
    pub async fn watch(self, stop: CancellationToken) {
        let Some(every) = self.every else {
            return;
        };
        let paths = vec![self.cert.clone(), self.key.clone()];
        let this = self.clone();
        crate::reload::watch_files(
            move || paths.clone(),
            self.loaded.to_vec(),
            every,
            stop,
            move || match build(&this.cert, &this.key) {
                Ok(config) => {
                    *this.current.write() = config;
                    info!("Admin TLS material changed: new connections use it");
                }
                Err(e) => warn!(error = %e, "Admin TLS material changed but is unusable; keeping the previous one"),
            },
        )
        .await;
    }

    /// The acceptor with the configuration in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().clone())
    }
}
