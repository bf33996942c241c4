//! TLS termination for `--tls-listen` (rustls through tokio-rustls).
//!
//! Owns loading the PEM certificate chain and private key (`--tls-cert`,
//! `--tls-key`) into a rustls `ServerConfig`: TLS 1.2 and 1.3 with the
//! provider's modern suites only, or 1.3 alone (`--tls-min-version 1.3`),
//! and ALPN `mqtt` offered; the server picks AES-128-GCM first unless the
//! client lists ChaCha20 first (two configurations, chosen after reading
//! the ClientHello; `docs/decisions/0005-tls-handshake-rate.md`). With `--tls-client-ca`, client certificates
//! are verified against that CA (`--tls-client-auth optional|required`),
//! including validity dates; [`identity`] turns a verified certificate
//! into the name given by `--tls-identity-field`. [`TlsMaterial`] holds
//! the configuration in use and [`TlsMaterial::watch`] replaces it when
//! the files change (polled every `--tls-reload-interval`, which follows
//! Kubernetes' symlink swaps); a bad new file is logged and the old
//! material stays. `ops/server.rs` builds the acceptor at bind time;
//! each accepted socket's own task runs the handshake under
//! `--connect-timeout` and hands the encrypted stream to `connection/mod.rs`,
//! so the accept loop never waits on a client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::error::BrokerError;
use crate::metrics::TlsFailure;

/// The lowest TLS version accepted (`--tls-min-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsVersion {
    #[value(name = "1.2")]
    V1_2,
    #[value(name = "1.3")]
    V1_3,
}

/// Whether clients must present a certificate (`--tls-client-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    /// No certificate is asked for.
    None,
    /// Asked for; a client without one is accepted, a bad one refused.
    Optional,
    /// Required: a client without a valid certificate is refused.
    Required,
}

/// What a finished TLS handshake tells about the client: its identity,
/// the server name it asked for (SNI), and its verified certificate (the
/// tenant may be in it: `tenant/mod.rs`).
#[derive(Debug, Clone)]
pub struct TlsPeer {
    pub identity: Option<String>,
    pub sni: Option<String>,
    pub cert: Option<rustls::pki_types::CertificateDer<'static>>,
}

/// Which part of a client certificate names the client
/// (`--tls-identity-field`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IdentityField {
    /// The subject's Common Name.
    Cn,
    /// The first Subject Alternative Name (DNS name, email or URI).
    San,
    /// The whole subject, RFC 4514 style (`CN=dev-1,O=Acme`).
    Subject,
}

/// Where the server's TLS material lives, from the flags.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub min_version: TlsVersion,
    /// Set unless `client_auth` is `None`.
    pub client_ca: Option<PathBuf>,
    /// Revocation lists for client certificates (`--tls-crl`).
    pub crl: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub identity: IdentityField,
    /// How often the files are checked for changes; `None`: never.
    pub reload_interval: Option<std::time::Duration>,
}

/// The TLS configuration new connections get; existing connections keep
/// the one they started with.
#[derive(Clone)]
pub struct TlsMaterial {
    files: TlsFiles,
    resumption: Resumption,
    current: Arc<parking_lot::RwLock<Built>>,
    /// The files' contents as they were loaded (`reload.rs`).
    loaded: Arc<crate::reload::Snapshot>,
    /// Client certificates refused per address, so a device retrying with
    /// a bad certificate is logged at powers of two, not every attempt.
    refusals: Arc<crate::net::Backoff>,
}

/// A server configuration and the client-certificate verifier inside it
/// (rustls does not hand it back): a resumed handshake carries the
/// certificate of the original one, which is checked again (CA, expiry,
/// CRL) with the verifier of the material in use.
#[derive(Clone)]
pub struct Built {
    /// Server cipher-suite order: AES-128-GCM first.
    pub config: Arc<ServerConfig>,
    /// The same, honouring the client's order: for clients that put
    /// ChaCha20 first (devices without AES hardware).
    pub client_order: Arc<ServerConfig>,
    pub verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// The server certificate's notAfter, seconds since the epoch.
    pub not_after: i64,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Every file the configuration is built from.
fn watched(files: &TlsFiles) -> Vec<std::path::PathBuf> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
        files.crl.as_ref(),
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect()
}

impl TlsMaterial {
    pub fn load(files: &TlsFiles) -> Result<TlsMaterial, BrokerError> {
        let resumption = Resumption::new()?;
        let loaded = Arc::new(crate::reload::snapshot(&watched(files)));
        let built = server_config(files, &resumption)?;
        Ok(TlsMaterial {
            loaded,
            current: Arc::new(parking_lot::RwLock::new(built)),
            files: files.clone(),
            resumption,
            refusals: Arc::default(),
        })
    }

    /// The server certificate in use: its notAfter, seconds since the epoch.
    pub fn certificate_expiry(&self) -> i64 {
        self.current.read().not_after
    }

    /// The configuration a new connection gets now (the server's
    /// cipher-suite order), for benchmarks and tests.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().config.clone()
    }

    /// Runs the handshake of one accepted stream with the material in use
    /// now, until `deadline`; returns the encrypted stream and the client
    /// certificate's identity. A failure or timeout is counted, logged
    /// (certificate problems at info, with the reason, at powers of two per
    /// address; other failures at debug), and `None`.
    pub async fn handshake<S>(
        &self,
        stream: S,
        peer: std::net::SocketAddr,
        deadline: tokio::time::Instant,
        metrics: &crate::metrics::Metrics,
    ) -> Option<(tokio_rustls::server::TlsStream<S>, TlsPeer)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let built = self.current.read().clone();
        let started = std::time::Instant::now();
        let accept = async {
            let acceptor = rustls::server::Acceptor::default();
            let start = tokio_rustls::LazyConfigAcceptor::new(acceptor, stream).await?;
            let config = if prefers_chacha(start.client_hello().cipher_suites()) {
                built.client_order.clone()
            } else {
                built.config.clone()
            };
            start.into_stream(config).await
        };
        let e = match tokio::time::timeout_at(deadline, accept).await {
            Ok(Ok(tls)) => {
                let conn = tls.get_ref().1;
                let certs = conn.peer_certificates().unwrap_or_default();
                if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    if let Some((end, rest)) = certs.split_first() {
                        let now = rustls::pki_types::UnixTime::now();
                        if let Err(e) = built.verifier.verify_client_cert(end, rest, now) {
                            let reason = refusal_reason(&e).unwrap_or_else(|| e.to_string());
                            self.refused(peer, &reason, true);
                            metrics.tls_failed(TlsFailure::Certificate);
                            return None;
                        }
                    }
                }
                match conn.handshake_kind() {
                    Some(rustls::HandshakeKind::Resumed) => {
                        metrics.inc(&metrics.tls_handshakes_resumed)
                    }
                    _ => metrics.inc(&metrics.tls_handshakes_full),
                }
                metrics
                    .tls_handshake_seconds
                    .observe_duration(started.elapsed());
                let cert = certs.first();
                let peer = TlsPeer {
                    identity: cert.and_then(|c| identity(c, self.files.identity)),
                    sni: conn.server_name().map(str::to_owned),
                    cert: cert.map(|c| c.clone().into_owned()),
                };
                return Some((tls, peer));
            }
            Ok(Err(e)) => e,
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake not finished within the connect timeout");
                metrics.tls_failed(TlsFailure::Timeout);
                return None;
            }
        };
        let why = match certificate_problem(&e) {
            Some(reason) => {
                self.refused(peer, &reason, false);
                TlsFailure::Certificate
            }
            None => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                let rustls_error = e.get_ref().is_some_and(|i| i.is::<rustls::Error>());
                if rustls_error {
                    TlsFailure::Protocol
                } else {
                    TlsFailure::Io
                }
            }
        };
        metrics.tls_failed(why);
        None
    }

    /// Logs a refused client certificate at the 1st, 2nd, 4th, 8th… refusal
    /// from the peer's address, with the count: a device retrying with an
    /// expired certificate stays visible without flooding the log.
    fn refused(&self, peer: std::net::SocketAddr, reason: &str, resumed: bool) {
        let refusals = self.refusals.fail(peer.ip());
        if refusals.is_power_of_two() {
            tracing::info!(%peer, %reason, resumed, refusals, "TLS client certificate refused");
        }
    }

    /// Polls the files until `shutdown` (`reload.rs`); when their contents
    /// change, builds a new configuration and swaps it in, or logs why not
    /// and keeps the old one.
    pub async fn watch(
        self,
        metrics: Arc<crate::metrics::Metrics>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let Some(every) = self.files.reload_interval else {
            return;
        };
        let (paths, loaded) = (watched(&self.files), self.loaded.to_vec());
        crate::reload::watch_files(move || paths.clone(), loaded, every, shutdown, move || {
            match server_config(&self.files, &self.resumption) {
                Ok(built) => {
                    let expiry = built.not_after;
                    *self.current.write() = built;
                    metrics.inc(&metrics.tls_reloads);
                    metrics
                        .tls_certificate_expiry
                        .store(expiry, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!("TLS material changed: new connections use it");
                }
                Err(e) => {
                    metrics.inc(&metrics.tls_reload_failures);
                    tracing::warn!(error = %e, "TLS material changed but is unusable; keeping the previous one");
                }
            }
        })
        .await;
    }
}

fn bad(flag: &'static str, path: &Path, detail: impl ToString) -> BrokerError {
    BrokerError::Tls {
        flag,
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

/// Sessions remembered for TLS 1.2 session-id resumption (and TLS 1.3
/// clients that do not take tickets).
pub const SESSION_CACHE_ENTRIES: usize = 65_536;

/// State that lets a reconnecting client skip the full handshake, shared
/// by every configuration a node builds (so it survives certificate
/// reloads): stateless tickets for TLS 1.3 and 1.2, encrypted with keys
/// that rotate every 6 hours (the previous key still decrypts), and a
/// bounded session-id cache.
#[derive(Clone)]
pub struct Resumption {
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    cache: Arc<dyn rustls::server::StoresServerSessions>,
}

impl Resumption {
    fn new() -> Result<Resumption, BrokerError> {
        let ticketer =
            rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| BrokerError::Tls {
                flag: "--tls-listen",
                path: PathBuf::new(),
                detail: format!("cannot create session ticket keys: {e}"),
            })?;
        Ok(Resumption {
            ticketer,
            cache: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
        })
    }
}

/// Reads the files and builds the server configuration; every failure
/// names the flag and the file.
pub fn server_config(files: &TlsFiles, resumption: &Resumption) -> Result<Built, BrokerError> {
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
    let not_after = x509_parser::parse_x509_certificate(&certs[0])
        .map(|(_, c)| c.validity().not_after.timestamp())
        .map_err(|e| bad("--tls-cert", &files.cert, e))?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad("--tls-key", &files.key, e))?;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| suite_rank(s.suite()));
    let provider = Arc::new(provider);
    let versions: &[&rustls::SupportedProtocolVersion] = match files.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let verifier = client_verifier(files, provider.clone())?;
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| bad("--tls-min-version", &files.cert, e))?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad(
                "--tls-key",
                &files.key,
                format!("does not fit the certificate: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    config.ticketer = resumption.ticketer.clone();
    // One TLS 1.3 ticket per connection: an MQTT client holds one
    // connection and resumes once per reconnect (rustls sends 2 by
    // default, each costing a key derivation and an encryption).
    config.send_tls13_tickets = 1;
    config.session_storage = resumption.cache.clone();
    let client_order = Arc::new(config.clone());
    config.ignore_client_order = true;
    Ok(Built {
        not_after,
        config: Arc::new(config),
        client_order,
        verifier,
    })
}

/// The server's cipher-suite preference: AES-128-GCM, then AES-256-GCM,
/// then ChaCha20-Poly1305. AES-128's key schedule runs on SHA-256, which
/// CPUs accelerate; AES-256's runs on SHA-384, which AWS-LC computes in
/// software on x86 (`docs/decisions/0005-tls-handshake-rate.md`).
fn suite_rank(suite: rustls::CipherSuite) -> u8 {
    use rustls::CipherSuite as C;
    match suite {
        C::TLS13_AES_128_GCM_SHA256
        | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        C::TLS13_AES_256_GCM_SHA384
        | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
        _ => 2,
    }
}

/// Whether the client's first cipher suite we know is ChaCha20: such a
/// client has said it lacks AES hardware, so its order is honoured.
fn prefers_chacha(offered: &[rustls::CipherSuite]) -> bool {
    use rustls::CipherSuite as C;
    offered
        .iter()
        .find(|s| !matches!(s, C::Unknown(_)))
        .is_some_and(|s| {
            matches!(
                s,
                C::TLS13_CHACHA20_POLY1305_SHA256
                    | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        })
}

fn client_verifier(
    files: &TlsFiles,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, BrokerError> {
    let Some(ca) = files
        .client_ca
        .as_ref()
        .filter(|_| files.client_auth != ClientAuth::None)
    else {
        return Ok(rustls::server::WebPkiClientVerifier::no_client_auth());
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad("--tls-client-ca", ca, e))? {
        let cert = cert.map_err(|e| bad("--tls-client-ca", ca, e))?;
        roots.add(cert).map_err(|e| bad("--tls-client-ca", ca, e))?;
    }
    if roots.is_empty() {
        return Err(bad("--tls-client-ca", ca, "no PEM CERTIFICATE block found"));
    }
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let mut builder = match files.client_auth {
        ClientAuth::Optional => builder.allow_unauthenticated(),
        _ => builder,
    };
    if let Some(crl) = &files.crl {
        use rustls::pki_types::CertificateRevocationListDer;
        let crls = CertificateRevocationListDer::pem_file_iter(crl)
            .map_err(|e| bad("--tls-crl", crl, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("--tls-crl", crl, e))?;
        if crls.is_empty() {
            return Err(bad("--tls-crl", crl, "no PEM X509 CRL block found"));
        }
        // Certificates from a CA the file has no CRL for are not
        // revocation-checked (rather than all refused).
        builder = builder.with_crls(crls).allow_unknown_revocation_status();
    }
    builder.build().map_err(|e| {
        let flag = if files.crl.is_some()
            && matches!(e, rustls::server::VerifierBuilderError::InvalidCrl(_))
        {
            "--tls-crl"
        } else {
            "--tls-client-ca"
        };
        bad(
            flag,
            files
                .crl
                .as_deref()
                .filter(|_| flag == "--tls-crl")
                .unwrap_or(ca),
            e,
        )
    })
}

/// The subject alternative names of a parsed certificate (none when it
/// has no readable extension).
pub(crate) fn subject_alt_names<'b, 'a>(
    x509: &'b x509_parser::certificate::X509Certificate<'a>,
) -> &'b [x509_parser::extensions::GeneralName<'a>] {
    match x509.subject_alternative_name() {
        Ok(Some(ext)) => {
            let san: &'b x509_parser::extensions::SubjectAlternativeName<'a> = ext.value;
            san.general_names.as_slice()
        }
        _ => &[],
    }
}

/// The client's name from its (already verified) certificate, per
/// `--tls-identity-field`; `None` when that field is absent or the
/// certificate cannot be parsed.
pub fn identity(cert: &CertificateDer<'_>, field: IdentityField) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    match field {
        IdentityField::Cn => x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        IdentityField::San => subject_alt_names(&x509).iter().find_map(|n| match n {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                Some((*s).to_owned())
            }
            _ => None,
        }),
        IdentityField::Subject => x509_parser::x509::X509Name::to_string_with_registry(
            x509.subject(),
            x509_parser::objects::oid_registry(),
        )
        .ok(),
    }
}

/// A log-friendly reason for a failed handshake: certificate problems
/// (expired, unknown CA, revoked...) are named, everything else is
/// "handshake failed".
pub fn certificate_problem(e: &std::io::Error) -> Option<String> {
    refusal_reason(e.get_ref()?.downcast_ref::<rustls::Error>()?)
}

/// The reason a client certificate was refused, if that is what `e` is.
fn refusal_reason(e: &rustls::Error) -> Option<String> {
    match e {
        rustls::Error::InvalidCertificate(c) => Some(certificate_error_text(c)),
        rustls::Error::NoCertificatesPresented => Some("no client certificate".into()),
        _ => None,
    }
}

/// A sentence for a refused certificate, naming rustls's or webpki's own
/// term in brackets so it can be searched for.
fn certificate_error_text(c: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    let (term, sentence) = match c {
        E::Expired | E::ExpiredContext { .. } => ("Expired", "the certificate has expired"),
        E::NotValidYet | E::NotValidYetContext { .. } => {
            ("NotValidYet", "the certificate is not valid yet")
        }
        E::Revoked => ("Revoked", "the certificate is revoked by the CRL"),
        E::UnknownIssuer => (
            "UnknownIssuer",
            "the certificate is not signed by a CA in --tls-client-ca",
        ),
        E::BadSignature => ("BadSignature", "the certificate's signature is invalid"),
        E::BadEncoding => ("BadEncoding", "the certificate cannot be parsed"),
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => (
            "InvalidPurpose",
            "the certificate is not for client authentication (extended key usage)",
        ),
        E::UnknownRevocationStatus => (
            "UnknownRevocationStatus",
            "the CRL does not cover the certificate's issuer",
        ),
        E::ExpiredRevocationList | E::ExpiredRevocationListContext { .. } => {
            ("ExpiredRevocationList", "the CRL has expired")
        }
        E::Other(o) => {
            let term = o.to_string();
            let sentence = match term.as_str() {
                "CaUsedAsEndEntity" => "a CA certificate was presented as the client certificate",
                "EndEntityUsedAsCa" => "a client certificate was used as an issuing CA",
                "UnsupportedSignatureAlgorithm" | "UnsupportedSignatureAlgorithmForPublicKey" => {
                    "the certificate's signature algorithm is not supported"
                }
                "PathLenConstraintViolated" => "the chain is longer than a CA allows",
                "UnknownIssuer" => "the certificate is not signed by a CA in --tls-client-ca",
                "MaximumPathDepthExceeded" | "MaximumPathBuildCallsExceeded" => {
                    "the certificate chain is too long"
                }
                _ => "the certificate was refused",
            };
            return format!("{sentence} ({term})");
        }
        other => return format!("the certificate was refused ({other:?})"),
    };
    format!("{sentence} ({term})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_certificates_read_as_sentences() {
        use rustls::CertificateError as E;
        assert_eq!(
            certificate_error_text(&E::UnknownIssuer),
            "the certificate is not signed by a CA in --tls-client-ca (UnknownIssuer)"
        );
        // webpki's errors arrive wrapped, named only by their Debug form.
        #[derive(Debug)]
        struct Webpki;
        impl std::fmt::Display for Webpki {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("CaUsedAsEndEntity")
            }
        }
        impl std::error::Error for Webpki {}
        let other = E::Other(rustls::OtherError(Arc::new(Webpki)));
        assert_eq!(
            certificate_error_text(&other),
            "a CA certificate was presented as the client certificate (CaUsedAsEndEntity)"
        );
    }

    #[test]
    fn identity_reads_cn_san_and_subject() {
        let mut params =
            rcgen::CertificateParams::new(vec!["dev-1.example".to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "thermostat-42");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let der = cert.der();
        assert_eq!(
            identity(der, IdentityField::Cn).as_deref(),
            Some("thermostat-42")
        );
        assert_eq!(
            identity(der, IdentityField::San).as_deref(),
            Some("dev-1.example")
        );
        let subject = identity(der, IdentityField::Subject).expect("subject");
        assert!(subject.contains("CN=thermostat-42"), "{subject}");
        assert!(subject.contains("O=Acme"), "{subject}");
        assert_eq!(
            identity(&CertificateDer::from(vec![1, 2, 3]), IdentityField::Cn),
            None
        );
    }
}
