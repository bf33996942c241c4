//! A test PKI made with rcgen: a CA, a server certificate for `localhost`
//! and 127.0.0.1, client certificates (expired, not yet valid, with
//! subject fields, revoked by a CRL), as PEM files and rustls configs.

use std::sync::Arc;
use std::time::Duration;

use porchlight_broker::Config;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{connect_packet, WAIT};

/// When a test client certificate is valid.
pub enum Validity {
    Current,
    Expired,
    NotYetValid,
}

/// A client certificate and its key.
pub struct ClientCert {
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
}

/// A test PKI made with rcgen: a CA and a server certificate for
/// `localhost` and 127.0.0.1, written as PEM files in a temp dir.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    pub ca: rustls::pki_types::CertificateDer<'static>,
    /// The CA alone, for clients (`mosquitto_sub --cafile`).
    pub ca_file: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TestPki {
    pub fn new() -> TestPki {
        Self::with_names(&["localhost", "127.0.0.1"])
    }

    /// A PKI whose server certificate is for `names` (DNS names, IPs,
    /// wildcards).
    pub fn with_names(names: &[&str]) -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Porchlight test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let leaf = params.signed_by(&key, &ca, &ca_key).expect("leaf");
        let cert = dir.path().join("tls.crt");
        let key_path = dir.path().join("tls.key");
        std::fs::write(&cert, format!("{}{}", leaf.pem(), ca.pem())).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, ca.pem()).expect("write ca");
        TestPki {
            ca: ca.der().clone(),
            ca_cert: ca,
            ca_key,
            ca_file,
            cert,
            key: key_path,
            dir,
        }
    }

    /// Configures a `--tls-listen` on 127.0.0.1 port 0 with this PKI.
    pub fn configure(&self, c: &mut Config, min_version: porchlight_broker::net::tls::TlsVersion) {
        c.tls_listen = vec!["127.0.0.1:0".parse().expect("addr")];
        c.tls = Some(porchlight_broker::net::tls::TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            min_version,
            client_ca: None,
            crl: None,
            client_auth: porchlight_broker::net::tls::ClientAuth::None,
            identity: porchlight_broker::net::tls::IdentityField::Cn,
            reload_interval: Some(Duration::from_millis(100)),
        });
    }

    /// A client certificate with this Common Name signed by this CA, or
    /// (`expired`) one whose validity ended in 2001.
    pub fn client_cert(&self, cn: &str, expired: bool) -> ClientCert {
        let validity = if expired {
            Validity::Expired
        } else {
            Validity::Current
        };
        self.client_cert_with(cn, validity, 0)
    }

    /// A client certificate with the given validity and serial number
    /// (0: rcgen picks one).
    pub fn client_cert_with(&self, cn: &str, validity: Validity, serial: u64) -> ClientCert {
        let (cert, key) = self.issue(cn, validity, serial, None);
        ClientCert {
            chain: vec![cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// A current client certificate for `cn` with Organization `org`.
    pub fn client_cert_in_org(&self, cn: &str, org: &str) -> ClientCert {
        let (cert, key) = self.issue(cn, Validity::Current, 0, Some(org));
        ClientCert {
            chain: vec![cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// A client certificate with an Organizational Unit and/or a SAN URI
    /// (the tenant fields a `--tenants` file may read).
    pub fn client_cert_with_fields(
        &self,
        cn: &str,
        ou: Option<&str>,
        san_uri: Option<&str>,
    ) -> ClientCert {
        let (cert, key) = self.issue_with(cn, Validity::Current, 0, |params| {
            if let Some(ou) = ou {
                params
                    .distinguished_name
                    .push(rcgen::DnType::OrganizationalUnitName, ou);
            }
            if let Some(uri) = san_uri {
                params.subject_alt_names.push(rcgen::SanType::URI(
                    rcgen::Ia5String::try_from(uri).expect("ia5"),
                ));
            }
        });
        ClientCert {
            chain: vec![cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// A CRL from this CA revoking `serials`, written as a PEM file.
    pub fn crl(&self, name: &str, serials: &[u64]) -> std::path::PathBuf {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2120, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca_cert, &self.ca_key).expect("crl");
        let path = self.dir.path().join(name);
        std::fs::write(&path, crl.pem().expect("pem")).expect("write crl");
        path
    }

    fn issue(
        &self,
        cn: &str,
        validity: Validity,
        serial: u64,
        org: Option<&str>,
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        self.issue_with(cn, validity, serial, |params| {
            if let Some(org) = org {
                params
                    .distinguished_name
                    .push(rcgen::DnType::OrganizationName, org);
            }
        })
    }

    /// Issues a client certificate for `cn`; `extra` adds subject fields.
    fn issue_with(
        &self,
        cn: &str,
        validity: Validity,
        serial: u64,
        extra: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec![format!("{cn}.devices.example")]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        extra(&mut params);
        if serial != 0 {
            params.serial_number = Some(rcgen::SerialNumber::from(serial));
        }
        match validity {
            Validity::Current => {}
            Validity::Expired => {
                params.not_before = rcgen::date_time_ymd(2000, 1, 1);
                params.not_after = rcgen::date_time_ymd(2001, 1, 1);
            }
            Validity::NotYetValid => {
                params.not_before = rcgen::date_time_ymd(2100, 1, 1);
                params.not_after = rcgen::date_time_ymd(2101, 1, 1);
            }
        }
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("client cert");
        (cert, key)
    }

    /// A client certificate and key for `cn`, as PEM files (for
    /// `mosquitto_pub --cert/--key`).
    pub fn client_cert_files(&self, cn: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let (c, k) = self.issue(cn, Validity::Current, 0, None);
        let cert = self.dir.path().join(format!("{cn}.crt"));
        let key = self.dir.path().join(format!("{cn}.key"));
        std::fs::write(&cert, c.pem()).expect("write");
        std::fs::write(&key, k.serialize_pem()).expect("write");
        (cert, key)
    }

    /// Like `client`, presenting `cert`.
    pub fn client_with_cert(&self, cert: ClientCert) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(cert.chain, cert.key)
            .expect("client cert");
        Arc::new(c)
    }

    /// A client configuration trusting this CA, for the given versions.
    pub fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

/// A v5 (or other) CONNECT as bytes, client id `over-tls`.
pub fn connect_bytes(protocol: porchlight_broker::codec::Protocol) -> bytes::BytesMut {
    let c = connect_packet(protocol, "over-tls", true, 30);
    let mut bytes = bytes::BytesMut::new();
    porchlight_broker::codec::encode(
        &porchlight_broker::codec::Packet::Connect(Box::new(c)),
        protocol,
        &mut bytes,
    );
    bytes
}

/// Handshakes with `config`, does a v5 CONNECT/CONNACK and closes;
/// returns how the handshake went, or `None` if no CONNACK came back (a
/// refused client certificate surfaces either in the handshake or, under
/// TLS 1.3, as an alert on the first read). Reading the CONNACK also
/// takes in TLS 1.3 tickets, which arrive after the handshake.
pub async fn mqtt_connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Option<rustls::HandshakeKind> {
    use tokio::io::AsyncWriteExt;
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let connect = TlsConnector::from(config).connect(name, tcp);
    let mut s = tokio::time::timeout(WAIT, connect).await.ok()?.ok()?;
    let bytes = connect_bytes(porchlight_broker::codec::Protocol::V5);
    s.write_all(&bytes).await.ok()?;
    s.flush().await.ok()?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    if n == 0 || buf[0] != 0x20 {
        return None;
    }
    let kind = s.get_ref().1.handshake_kind();
    s.shutdown().await.ok()?;
    kind
}
