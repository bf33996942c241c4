//! TLS termination for `--tls-listen` (rustls through tokio-rustls).
//!
//! Owns loading the PEM certificate chain and private key (`--tls-cert`,
//! `--tls-key`) into a rustls `ServerConfig`: TLS 1.2 and 1.3 with the
//! provider's modern suites only, or 1.3 alone (`--tls-min-version 1.3`),
//! and ALPN `mqtt` offered. `server.rs` builds the acceptor at bind time;
//! each accepted socket's own task runs the handshake under
//! `--connect-timeout` and hands the encrypted stream to `connection.rs`,
//! so the accept loop never waits on a client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::error::BrokerError;

/// The lowest TLS version accepted (`--tls-min-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsVersion {
    #[value(name = "1.2")]
    V1_2,
    #[value(name = "1.3")]
    V1_3,
}

/// Where the server's TLS material lives, from the flags.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub min_version: TlsVersion,
}

fn bad(flag: &'static str, path: &Path, detail: impl ToString) -> BrokerError {
    BrokerError::Tls {
        flag,
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

/// Reads the files and builds the server configuration; every failure
/// names the flag and the file.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, BrokerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("--tls-cert", &files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("--tls-cert", &files.cert, e))?;
    if certs.is_empty() {
        return Err(bad(
            "--tls-cert",
            &files.cert,
            "no PEM CERTIFICATE block found",
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad("--tls-key", &files.key, e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match files.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| bad("--tls-min-version", &files.cert, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad(
                "--tls-key",
                &files.key,
                format!("does not fit the certificate: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    Ok(Arc::new(config))
}
