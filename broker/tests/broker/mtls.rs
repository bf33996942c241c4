//! Mutual TLS: client certificates required or optional, refused
//! (missing, foreign, expired, revoked), their logging, CRLs and the
//! flags that configure them, with rustls and Mosquitto clients.

use std::process::Command;
use std::time::Duration;

use porchlight_broker::metrics::Metrics;
use porchlight_broker::net::tls::{ClientAuth, TlsVersion};

use crate::support::*;

async fn mtls_broker(pki: &TestPki, auth: Option<ClientAuth>) -> TestBroker {
    TestBroker::with(|c| {
        pki.configure(c, TlsVersion::V1_2);
        if let Some(tls) = c.tls.as_mut() {
            tls.client_ca = Some(pki.ca_file.clone());
            tls.client_auth = auth.unwrap_or(ClientAuth::Required);
        }
        // As `validate` sets it: client certificates are authentication,
        // and in optional mode clients without one come in anonymously.
        c.auth.client_certificates = true;
        c.auth.allow_anonymous = auth == Some(ClientAuth::Optional);
    })
    .await
}

#[tokio::test]
async fn mutual_tls_required_refuses_missing_foreign_and_expired_certificates() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let b = mtls_broker(&pki, Some(ClientAuth::Required)).await;
    let addr = b.tls_addr.expect("addr");
    let m = b.broker.metrics.clone();
    assert!(
        mqtt_connect(addr, pki.client_with_cert(pki.client_cert("dev-1", false)))
            .await
            .is_some()
    );
    // No certificate.
    assert!(
        mqtt_connect(addr, pki.client(&[&rustls::version::TLS13], &[]))
            .await
            .is_none()
    );
    // Signed by another CA (the client still trusts our server).
    let foreign = other.client_cert("intruder", false);
    assert!(mqtt_connect(addr, pki.client_with_cert(foreign))
        .await
        .is_none());
    // Expired.
    assert!(
        mqtt_connect(addr, pki.client_with_cert(pki.client_cert("old", true)))
            .await
            .is_none()
    );
    // Not yet valid.
    let future = pki.client_cert_with("early", Validity::NotYetValid, 0);
    assert!(mqtt_connect(addr, pki.client_with_cert(future))
        .await
        .is_none());
    wait_until("four refusals counted", || m.tls_failures_total() == 4).await;
    b.stop().await;
}

#[tokio::test]
async fn refused_certificates_are_logged_at_powers_of_two_per_address() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    let (cert, key, ca) = (path(&pki.cert), path(&pki.key), path(&pki.ca_file));
    let (mut child, _, log) = spawn_binary_logged(
        &dir.path().join("data"),
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
            "--log-level",
            "info",
        ],
    );
    let entries = |message: &str| log_entries(&log, message);
    wait_until("the TLS listener is up", || {
        !entries("Listening for MQTT over TLS").is_empty()
    })
    .await;
    let tls_addr: std::net::SocketAddr = entries("Listening for MQTT over TLS")[0]["fields"]
        ["addr"]
        .as_str()
        .expect("addr")
        .parse()
        .expect("socket address");
    // A device retrying five times with an expired certificate.
    let expired = pki.client_with_cert(pki.client_cert("old", true));
    for _ in 0..5 {
        assert!(mqtt_connect(tls_addr, expired.clone()).await.is_none());
    }
    // One with a good certificate gets in, and is not logged as refused.
    let good = pki.client_with_cert(pki.client_cert("dev-1", false));
    assert!(mqtt_connect(tls_addr, good).await.is_some());
    let refused = "TLS client certificate refused";
    wait_until("the fourth refusal logged", || entries(refused).len() >= 3).await;
    let lines = entries(refused);
    let counts: Vec<u64> = lines
        .iter()
        .map(|v| v["fields"]["refusals"].as_u64().expect("refusals"))
        .collect();
    // The 1st, 2nd and 4th; the 3rd and 5th are counted, not logged.
    assert_eq!(counts, [1, 2, 4], "{lines:?}");
    for v in &lines {
        assert!(
            v["fields"]["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{v}"
        );
        assert!(
            v["fields"]["reason"]
                .as_str()
                .is_some_and(|r| r == "the certificate has expired (Expired)"),
            "{v}"
        );
    }
    kill9(&mut child);
}

#[tokio::test]
async fn revoked_client_certificates_are_refused_and_crl_updates_apply() {
    let pki = TestPki::new();
    let crl = pki.crl("clients.crl", &[1001]);
    let b = TestBroker::with(|c| {
        pki.configure(c, TlsVersion::V1_2);
        if let Some(tls) = c.tls.as_mut() {
            tls.client_ca = Some(pki.ca_file.clone());
            tls.client_auth = ClientAuth::Required;
            tls.crl = Some(crl.clone());
        }
        c.auth.client_certificates = true;
    })
    .await;
    let addr = b.tls_addr.expect("addr");
    let cert =
        |serial| pki.client_with_cert(pki.client_cert_with("dev", Validity::Current, serial));
    assert!(mqtt_connect(addr, cert(1001)).await.is_none(), "revoked");
    // This client keeps its session ticket: after the revocation it tries
    // to resume, and resumption must not skip the CRL.
    let resuming = cert(1002);
    assert_eq!(
        mqtt_connect(addr, resuming.clone()).await,
        Some(rustls::HandshakeKind::Full),
        "not revoked"
    );
    assert_eq!(
        mqtt_connect(addr, resuming.clone()).await,
        Some(rustls::HandshakeKind::Resumed),
        "resumes while valid"
    );
    // A new CRL (written elsewhere, then renamed into place) revokes 1002
    // for new connections.
    let next = pki.crl("next.crl", &[1001, 1002]);
    std::fs::rename(&next, &crl).expect("replace crl");
    let m = b.broker.metrics.clone();
    wait_until("the new CRL is in use", || {
        Metrics::get(&m.tls_reloads) == 1
    })
    .await;
    assert!(
        mqtt_connect(addr, cert(1002)).await.is_none(),
        "revoked now"
    );
    assert!(
        mqtt_connect(addr, resuming).await.is_none(),
        "a resumed handshake is refused too"
    );
    assert!(mqtt_connect(addr, cert(1003)).await.is_some());
    b.stop().await;
}

#[test]
fn a_crl_needs_client_certificates_and_a_bad_one_is_named() {
    use clap::Parser;
    let pki = TestPki::new();
    let cert = pki.cert.to_str().expect("utf8");
    let key = pki.key.to_str().expect("utf8");
    let base = [
        "porchlight",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ];
    let err = porchlight_broker::Cli::parse_from(base.iter().chain(&["--tls-crl", cert]))
        .validate()
        .expect_err("no client CA");
    assert!(err.to_string().contains("--tls-crl"), "{err}");
    // A file without a CRL in it.
    let ca = pki.ca_file.to_str().expect("utf8");
    let config = porchlight_broker::Cli::parse_from(base.iter().chain(&[
        "--tls-client-ca",
        ca,
        "--tls-crl",
        cert,
    ]))
    .validate()
    .expect("flags are valid");
    let err = porchlight_broker::net::tls::TlsMaterial::load(config.tls.as_ref().expect("tls"))
        .map(|_| ())
        .expect_err("no CRL in the file");
    assert!(err.to_string().contains("--tls-crl"), "{err}");
    assert!(err.to_string().contains(cert), "{err}");
}

#[tokio::test]
async fn mutual_tls_optional_accepts_no_certificate_but_not_a_bad_one() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let b = mtls_broker(&pki, Some(ClientAuth::Optional)).await;
    let addr = b.tls_addr.expect("addr");
    assert!(
        mqtt_connect(addr, pki.client(&[&rustls::version::TLS13], &[]))
            .await
            .is_some()
    );
    assert!(
        mqtt_connect(addr, pki.client_with_cert(pki.client_cert("dev-2", false)))
            .await
            .is_some()
    );
    assert!(
        mqtt_connect(addr, pki.client_with_cert(other.client_cert("x", false)))
            .await
            .is_none()
    );
    b.stop().await;
}

#[test]
fn client_auth_flags_need_a_ca() {
    let out = Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .args([
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
        ])
        .args(["--tls-client-auth", "required"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-client-ca"));
}

#[tokio::test]
async fn interop_with_mosquitto_clients_over_mutual_tls() {
    if !mosquitto_available() {
        return;
    }
    let pki = TestPki::new();
    let b = mtls_broker(&pki, Some(ClientAuth::Required)).await;
    let port = b.tls_addr.expect("tls addr").port().to_string();
    let ca = pki.ca_file.to_str().expect("utf8");
    let (cert, key) = pki.client_cert_files("mosq-device");
    let base = ["-h", "localhost", "-p", &port, "--cafile", ca, "-q", "1"];
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(base)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args([
            "-i",
            "mosq-mtls-sub",
            "-t",
            "interop/mtls",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    wait_until("mosquitto_sub subscribed over mTLS", || {
        b.subscribed("mosq-mtls-sub", "interop/mtls")
    })
    .await;
    // Without a certificate: refused.
    let out = tokio::process::Command::new("mosquitto_pub")
        .args(base)
        .args(["-t", "interop/mtls", "-m", "anonymous"])
        .output()
        .await
        .expect("mosquitto_pub");
    assert!(!out.status.success(), "{out:?}");
    let out = tokio::process::Command::new("mosquitto_pub")
        .args(base)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["-t", "interop/mtls", "-m", "mtls hello"])
        .output()
        .await
        .expect("mosquitto_pub");
    assert!(out.status.success(), "{out:?}");
    let out = tokio::time::timeout(Duration::from_secs(10), sub.wait_with_output())
        .await
        .expect("mosquitto_sub exits")
        .expect("output");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "mtls hello");
    b.stop().await;
}
