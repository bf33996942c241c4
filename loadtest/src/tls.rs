//! The client side of TLS for `--tls`: a rustls configuration from the
//! CA, client certificate and key files, with session resumption on by
//! default: each client keeps its own tickets, as a device does, so its
//! reconnects resume. `run.rs` builds the configuration once; each
//! client task takes its connector from it ([`Tls::for_client`]).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::client::Tls;
use crate::error::LoadError;

/// With `--insecure` (and in `examples/tls_bench.rs`): any server
/// certificate, but the handshake's signatures are still verified with
/// the provider's algorithms.
#[derive(Debug)]
pub struct AnyCertificate(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Builds the connector; errors name the flag and the file.
pub fn connector(t: &crate::plan::Tls) -> Result<Tls, LoadError> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !t.post_quantum {
        use rustls::crypto::aws_lc_rs::kx_group;
        provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    }
    let provider = Arc::new(provider);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| LoadError::Tls(e.to_string()))?;
    let builder = if t.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    } else {
        let Some(ca) = &t.ca else {
            return Err(LoadError::Invalid(
                "--tls needs --ca FILE (or --insecure)".into(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| LoadError::Invalid(format!("--ca {}: {e}", ca.display())))?;
        for cert in certs {
            let cert =
                cert.map_err(|e| LoadError::Invalid(format!("--ca {}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| LoadError::Invalid(format!("--ca {}: {e}", ca.display())))?;
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| LoadError::Invalid(format!("--cert {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| LoadError::Invalid(format!("--key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| LoadError::Invalid(format!("--key does not fit --cert: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(LoadError::Invalid("--cert and --key go together".into())),
    };
    config.resumption = rustls::client::Resumption::disabled();
    let name = ServerName::try_from(t.server_name.clone())
        .map_err(|e| LoadError::Invalid(format!("--server-name {}: {e}", t.server_name)))?;
    Ok(Tls {
        config: Arc::new(config),
        resume: t.resume,
        name,
    })
}

impl Tls {
    /// A connector for one client: with resumption, its own small ticket
    /// store (a shared store keeps only a few tickets per server name, so
    /// thousands of clients would mostly miss).
    pub fn for_client(&self) -> tokio_rustls::TlsConnector {
        if !self.resume {
            return tokio_rustls::TlsConnector::from(self.config.clone());
        }
        let mut config = (*self.config).clone();
        config.resumption = rustls::client::Resumption::store(Arc::new(
            rustls::client::ClientSessionMemoryCache::new(1),
        ));
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}
