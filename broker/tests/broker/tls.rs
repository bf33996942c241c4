use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use porchlight_broker::metrics::Metrics;
use porchlight_broker::net::tls::TlsVersion;
use rumqttc::v5;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

async fn tls_broker(pki: &TestPki, min: TlsVersion) -> TestBroker {
    TestBroker::with(|c| {
        pki.configure(c, min);
        c.connect_timeout = Duration::from_secs(1);
    })
    .await
}

async fn handshake(
    pki: &TestPki,
    addr: std::net::SocketAddr,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = TlsConnector::from(pki.client(versions, alpn));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake finishes")
}

#[tokio::test]
async fn v311_and_v5_clients_publish_and_subscribe_over_tls() {
    let pki = TestPki::new();
    let b = tls_broker(&pki, TlsVersion::V1_2).await;
    let addr = b.tls_addr.expect("tls addr");
    let tls = |v: &[&'static rustls::SupportedProtocolVersion]| {
        rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(pki.client(v, &[])))
    };

    let mut opts = v5::MqttOptions::new("tls-sub", "127.0.0.1", addr.port());
    opts.set_transport(tls(&[&rustls::version::TLS13]));
    let mut sub = V5::connect_opts(opts).await;
    sub.client
        .subscribe("tls/t", v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;

    let mut opts = rumqttc::MqttOptions::new("tls-pub", "127.0.0.1", addr.port());
    opts.set_transport(tls(&[&rustls::version::TLS12]));
    let publisher = V4::connect_opts(opts).await;
    publisher
        .client
        .publish("tls/t", rumqttc::QoS::AtLeastOnce, false, "over tls")
        .await
        .expect("publish");
    let p = sub.next_publish().await;
    assert_eq!(&p.payload[..], b"over tls");
    // Plain TCP keeps working next to TLS.
    let mut plain =
        RawClient::connect(b.addr, porchlight_broker::codec::Protocol::V5, "plain").await;
    plain.subscribe("tls/t", q(0)).await;
    b.stop().await;
}

#[tokio::test]
async fn alpn_mqtt_is_offered_and_tls13_can_be_required() {
    let pki = TestPki::new();
    let b = tls_broker(&pki, TlsVersion::V1_3).await;
    let addr = b.tls_addr.expect("tls addr");
    let s = handshake(&pki, addr, &[&rustls::version::TLS13], &[b"mqtt"])
        .await
        .expect("TLS 1.3 accepted");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"mqtt"[..]));
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // A TLS 1.2-only client is refused at the handshake, and counted.
    let m = b.broker.metrics.clone();
    assert!(handshake(&pki, addr, &[&rustls::version::TLS12], &[])
        .await
        .is_err());
    wait_until("failure counted", || m.tls_failures_total() == 1).await;
    // A client offering ALPN without `mqtt` is refused too.
    assert!(handshake(&pki, addr, &[&rustls::version::TLS13], &[b"h2"])
        .await
        .is_err());
    wait_until("second failure counted", || m.tls_failures_total() == 2).await;
    b.stop().await;

    // With the default minimum, TLS 1.2 works.
    let b = tls_broker(&pki, TlsVersion::V1_2).await;
    let s = handshake(
        &pki,
        b.tls_addr.expect("addr"),
        &[&rustls::version::TLS12],
        &[],
    )
    .await
    .expect("TLS 1.2 accepted");
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    b.stop().await;
}

#[tokio::test]
async fn a_silent_or_plaintext_client_never_blocks_the_tls_listener() {
    let pki = TestPki::new();
    let b = tls_broker(&pki, TlsVersion::V1_2).await;
    let addr = b.tls_addr.expect("tls addr");
    let m = b.broker.metrics.clone();
    // Connects and says nothing.
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    // Meanwhile another client completes its handshake at once.
    handshake(&pki, addr, &[&rustls::version::TLS13], &[])
        .await
        .expect("second client served while the first is silent");
    // The silent one is closed after --connect-timeout (1 s), and counted.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("closed within the timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // Plain MQTT sent to the TLS port: closed, counted.
    let mut raw = TcpStream::connect(addr).await.expect("connect");
    let bytes = connect_bytes(porchlight_broker::codec::Protocol::V311);
    tokio::io::AsyncWriteExt::write_all(&mut raw, &bytes)
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(WAIT, raw.read(&mut buf))
        .await
        .expect("answered or closed");
    wait_until("both failures counted", || m.tls_failures_total() == 2).await;
    // By reason: the silent one timed out, the plaintext one broke the
    // protocol.
    use porchlight_broker::metrics::TlsFailure;
    assert_eq!(m.tls_failure_count(TlsFailure::Timeout), 1);
    assert_eq!(m.tls_failure_count(TlsFailure::Protocol), 1);
    assert_eq!(Metrics::get(&m.tls_handshakes_full), 1);
    wait_until("no connection left", || {
        Metrics::get(&m.connections_current) == 0
    })
    .await;
    b.stop().await;
}

#[test]
fn tls_flags_are_checked_and_bad_files_named() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_porchlight"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run")
    };
    let out = run(&["--tls-listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-cert"));
    let out = run(&["--tls-cert", "x.pem", "--tls-key", "y.pem"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-listen"));
    let out = run(&["--tls-min-version", "1.1"]);
    assert_eq!(out.status.code(), Some(64));

    let pki = TestPki::new();
    let data = pki.dir.path().join("data");
    let missing = pki.dir.path().join("missing.pem");
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not pem").expect("write");
    let key = pki.key.to_str().expect("utf8");
    let cert = pki.cert.to_str().expect("utf8");
    for (args, flag, path) in [
        (
            [
                "--tls-cert",
                missing.to_str().expect("utf8"),
                "--tls-key",
                key,
            ],
            "--tls-cert",
            &missing,
        ),
        (
            [
                "--tls-cert",
                garbage.to_str().expect("utf8"),
                "--tls-key",
                key,
            ],
            "--tls-cert",
            &garbage,
        ),
        (
            [
                "--tls-cert",
                cert,
                "--tls-key",
                garbage.to_str().expect("utf8"),
            ],
            "--tls-key",
            &garbage,
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_porchlight"))
            .args(["--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(flag), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
}

#[tokio::test]
async fn interop_with_mosquitto_clients_over_tls() {
    if !mosquitto_available() {
        return;
    }
    let pki = TestPki::new();
    let b = tls_broker(&pki, TlsVersion::V1_2).await;
    let port = b.tls_addr.expect("tls addr").port().to_string();
    let ca = pki.ca_file.to_str().expect("utf8");
    for (version, tls) in [("mqttv311", "tlsv1.2"), ("mqttv5", "tlsv1.3")] {
        let id = format!("mosq-tls-{version}");
        let topic = format!("interop/tls/{version}");
        let common = [
            "-h",
            "localhost",
            "-p",
            &port,
            "-V",
            version,
            "--cafile",
            ca,
            "--tls-version",
            tls,
        ];
        let sub = tokio::process::Command::new("mosquitto_sub")
            .args(common)
            .args(["-i", &id, "-q", "1", "-t", &topic, "-C", "1", "-W", "10"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("mosquitto_sub");
        wait_until("mosquitto_sub subscribed over TLS", || {
            b.subscribed(&id, topic.as_str())
        })
        .await;
        let out = tokio::process::Command::new("mosquitto_pub")
            .args(common)
            .args(["-q", "1", "-t", &topic, "-m", "tls hello"])
            .output()
            .await
            .expect("mosquitto_pub");
        assert!(out.status.success(), "mosquitto_pub {version}: {out:?}");
        let out = tokio::time::timeout(Duration::from_secs(10), sub.wait_with_output())
            .await
            .expect("mosquitto_sub exits")
            .expect("output");
        assert!(out.status.success(), "mosquitto_sub {version}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tls hello");
    }
    b.stop().await;
}

#[tokio::test]
async fn a_tls_only_node_opens_no_plain_tcp_listener() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (
        pki.cert.to_str().expect("utf-8"),
        pki.key.to_str().expect("utf-8"),
    );
    let (mut child, tls_addr, log) = spawn_binary_bare_logged(
        &dir.path().join("data"),
        &[
            "--no-tcp-listen",
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ],
    );
    // MQTT over TLS works.
    let client = pki.client(&[&rustls::version::TLS13], &[]);
    assert!(mqtt_connect(tls_addr, client).await.is_some());
    // Every listener the node opened is a TLS one.
    let listening: Vec<String> = log
        .lock()
        .expect("log")
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["fields"]["message"].as_str().map(str::to_owned))
        .filter(|m| m.starts_with("Listening"))
        .collect();
    assert_eq!(listening, ["Listening for MQTT over TLS"]);
    kill9(&mut child);

    // Nothing left to listen on, or both flags: a configuration error
    // naming the flag.
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_porchlight"))
            .args(args)
            .output()
            .expect("run")
    };
    let out = run(&["--no-tcp-listen"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--no-tcp-listen"),
        "{out:?}"
    );
    let out = run(&["--no-tcp-listen", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--no-tcp-listen"),
        "{out:?}"
    );
}

/// Points `..data` (as Kubernetes does for a mounted Secret) at a new
/// directory holding `cert` and `key`, atomically.
fn swap_secret(root: &std::path::Path, version: &str, cert: &[u8], key: &[u8]) {
    let dir = root.join(version);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("tls.crt"), cert).expect("write");
    std::fs::write(dir.join("tls.key"), key).expect("write");
    let tmp = root.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).expect("symlink");
    std::fs::rename(&tmp, root.join("..data")).expect("swap");
}

#[tokio::test]
async fn renewed_certificates_are_used_without_a_restart_and_bad_ones_ignored() {
    let old_pki = TestPki::new();
    let new_pki = TestPki::new();
    let secret = tempfile::tempdir().expect("tempdir");
    let read = |p: &std::path::Path| std::fs::read(p).expect("read");
    swap_secret(
        secret.path(),
        "v1",
        &read(&old_pki.cert),
        &read(&old_pki.key),
    );
    for f in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), secret.path().join(f)).expect("link");
    }
    let b = TestBroker::with(|c| {
        old_pki.configure(c, TlsVersion::V1_2);
        if let Some(t) = c.tls.as_mut() {
            t.cert = secret.path().join("tls.crt");
            t.key = secret.path().join("tls.key");
        }
    })
    .await;
    let addr = b.tls_addr.expect("addr");
    let m = b.broker.metrics.clone();
    let tls13 = [&rustls::version::TLS13];

    // A connection made with the old certificate.
    let mut opts = v5::MqttOptions::new("before-renewal", "127.0.0.1", addr.port());
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(old_pki.client(&tls13, &[])),
    ));
    let mut old_conn = V5::connect_opts(opts).await;
    old_conn
        .client
        .subscribe("renewal/t", v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    old_conn.suback().await;

    // The Secret is renewed with a certificate from another CA.
    swap_secret(
        secret.path(),
        "v2",
        &read(&new_pki.cert),
        &read(&new_pki.key),
    );
    wait_until("renewal taken into use", || {
        Metrics::get(&m.tls_reloads) == 1
    })
    .await;
    assert!(handshake(&old_pki, addr, &tls13, &[]).await.is_err());
    let mut opts = rumqttc::MqttOptions::new("after-renewal", "127.0.0.1", addr.port());
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(new_pki.client(&tls13, &[])),
    ));
    let new_conn = V4::connect_opts(opts).await;
    new_conn
        .client
        .publish("renewal/t", rumqttc::QoS::AtLeastOnce, false, "still here")
        .await
        .expect("publish");
    // The old connection stayed up through the renewal.
    assert_eq!(&old_conn.next_publish().await.payload[..], b"still here");

    // A broken renewal is refused and the current material stays.
    swap_secret(
        secret.path(),
        "v3",
        b"not a certificate",
        &read(&new_pki.key),
    );
    wait_until("bad renewal refused", || {
        Metrics::get(&m.tls_reload_failures) == 1
    })
    .await;
    handshake(&new_pki, addr, &tls13, &[])
        .await
        .expect("previous material still served");
    assert_eq!(Metrics::get(&m.tls_reloads), 1);
    b.stop().await;
}

#[tokio::test]
async fn reconnects_resume_the_tls_session_in_1_2_and_1_3() {
    let pki = TestPki::new();
    let b = TestBroker::with(|c| {
        pki.configure(c, TlsVersion::V1_2);
        with_admin(c);
    })
    .await;
    let addr = b.tls_addr.expect("addr");
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // One client configuration = one client-side session cache.
        let client = pki.client(&[version], &[]);
        assert_eq!(
            mqtt_connect(addr, client.clone()).await,
            Some(rustls::HandshakeKind::Full),
            "{version:?}"
        );
        assert_eq!(
            mqtt_connect(addr, client).await,
            Some(rustls::HandshakeKind::Resumed),
            "{version:?}"
        );
    }
    // As the metrics have it: two of each kind, each timed, and when the
    // certificate in use expires.
    let s = parse_metrics(&admin_get(&b, "/metrics").await.body, false);
    for kind in ["full", "resumed"] {
        assert_eq!(
            sample(&s, "porchlight_tls_handshakes_total", &[("kind", kind)]),
            2.0,
            "{kind}"
        );
    }
    assert_eq!(
        sample(&s, "porchlight_tls_handshake_duration_seconds_count", &[]),
        4.0
    );
    let expiry = sample(
        &s,
        "porchlight_tls_certificate_expiry_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        expiry > now,
        "the test certificate is valid: {expiry} vs {now}"
    );
    b.stop().await;
}

/// Clients listing `suites` first (then the provider's others), over TLS
/// `version`: the suite the broker picks.
async fn negotiated_suite(
    pki: &TestPki,
    addr: std::net::SocketAddr,
    version: &'static rustls::SupportedProtocolVersion,
    first: &[rustls::CipherSuite],
) -> rustls::CipherSuite {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).expect("root");
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| !first.contains(&s.suite()));
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let s = tokio::time::timeout(
        WAIT,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("in time")
    .expect("handshake");
    s.get_ref()
        .1
        .negotiated_cipher_suite()
        .expect("suite")
        .suite()
}

#[tokio::test]
async fn aes_128_is_preferred_unless_the_client_puts_chacha20_first() {
    use rustls::CipherSuite as C;
    let pki = TestPki::new();
    let b = tls_broker(&pki, TlsVersion::V1_2).await;
    let addr = b.tls_addr.expect("addr");
    let cases: [(&'static rustls::SupportedProtocolVersion, &[C], C); 6] = [
        // rustls and OpenSSL clients list AES-256 first.
        (
            &rustls::version::TLS13,
            &[C::TLS13_AES_256_GCM_SHA384],
            C::TLS13_AES_128_GCM_SHA256,
        ),
        (&rustls::version::TLS13, &[], C::TLS13_AES_128_GCM_SHA256),
        (
            &rustls::version::TLS13,
            &[C::TLS13_CHACHA20_POLY1305_SHA256],
            C::TLS13_CHACHA20_POLY1305_SHA256,
        ),
        (
            &rustls::version::TLS12,
            &[C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384],
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            &rustls::version::TLS12,
            &[C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256],
            C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        // ChaCha20 second is still the server's choice.
        (
            &rustls::version::TLS13,
            &[
                C::TLS13_AES_256_GCM_SHA384,
                C::TLS13_CHACHA20_POLY1305_SHA256,
            ],
            C::TLS13_AES_128_GCM_SHA256,
        ),
    ];
    for (version, first, want) in cases {
        assert_eq!(
            negotiated_suite(&pki, addr, version, first).await,
            want,
            "{version:?} client first {first:?}"
        );
    }
    b.stop().await;
}

/// Issue 18: rustls warns for every client that sends an IP address as
/// SNI (many devices dial the broker by address); that line is not
/// printed, unless `--log-level` names rustls. The client is OpenSSL's,
/// which sends the address it is given.
#[tokio::test]
async fn an_ip_address_as_sni_is_not_a_warning_per_client() {
    let pki = TestPki::new();
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    let (cert, key, ca) = (path(&pki.cert), path(&pki.key), path(&pki.ca_file));
    for (filter, expect_warning) in [("info", false), ("info,rustls=warn", true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, _, log) = spawn_binary_bare_logged(
            &dir.path().join("data"),
            &[
                "--no-tcp-listen",
                "--tls-listen",
                "127.0.0.1:0",
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--log-level",
                filter,
            ],
        );
        let tls_addr = log
            .lock()
            .expect("log")
            .iter()
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v["fields"]["addr"]
                    .as_str()?
                    .parse::<std::net::SocketAddr>()
                    .ok()
            })
            .expect("TLS address");
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &tls_addr.to_string()])
            .args(["-servername", "127.0.0.1", "-CAfile", &ca])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client (apt-get install openssl)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Verify return code: 0"), "{text}");
        let warned = || {
            log.lock()
                .expect("log")
                .iter()
                .any(|l| l.contains("Illegal SNI extension"))
        };
        // Every line of the handshake is out once the node has stopped.
        let stopped = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(stopped.success());
        wait_until("the node stopped", || {
            log.lock()
                .expect("log")
                .iter()
                .any(|l| l.contains("Shutdown complete"))
        })
        .await;
        assert_eq!(warned(), expect_warning, "with --log-level {filter}");
        drop(child);
    }
}
