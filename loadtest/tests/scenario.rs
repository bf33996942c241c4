//! porchlight-loadtest against a real Porchlight broker in this process
//! (127.0.0.1, port 0): the numbers of a mixed scenario must add up, and
//! the report files must be written.

use std::time::Duration;

use porchlight_broker::ops::server::Server;
use porchlight_loadtest::plan::{Connection, Group, Plan, Publish, Role, Version};
use porchlight_loadtest::run::{self, Options, Progress};
use tokio_util::sync::CancellationToken;

struct Broker {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn broker() -> Broker {
    broker_with(|_| {}).await
}

async fn broker_with(configure: impl FnOnce(&mut porchlight_broker::Config)) -> Broker {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = porchlight_broker::Config::for_tests(dir.path().join("data"));
    config.sys_interval = None;
    configure(&mut config);
    let shutdown = CancellationToken::new();
    let server = Server::bind(config, shutdown.clone()).await.expect("bind");
    let addr = match server.tls_local_addrs().first() {
        Some(tls) => *tls,
        None => server.local_addrs()[0],
    };
    let handle = tokio::spawn(server.run());
    Broker {
        addr,
        shutdown,
        handle,
        _dir: dir,
    }
}

impl Broker {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
    }
}

fn connection(addr: std::net::SocketAddr, version: Version) -> Connection {
    Connection {
        hosts: vec![addr.to_string()],
        version,
        keepalive: 30,
        username: None,
        password: None,
        clean: true,
        session_expiry: 0,
        src_ips: vec![],
        tls: None,
        connect_rate: 0.0,
        connect_timeout: Duration::from_secs(5),
        reconnect: None,
        cycles: 1,
        client_prefix: format!("it{}", std::process::id()),
    }
}

fn options() -> Options {
    Options {
        broker_pid: Some(std::process::id()),
        progress: Progress::Quiet,
        command: "test".into(),
    }
}

fn sub(name: &str, count: usize, topic: &str, qos: u8, shared: Option<&str>) -> Group {
    Group {
        name: name.into(),
        count,
        role: Role::Subscriber {
            topic: topic.into(),
            qos,
            shared: shared.map(str::to_owned),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_scenario_adds_up_in_both_versions() {
    for version in [Version::V4, Version::V5] {
        let b = broker().await;
        let plan = Plan {
            name: "mixed".into(),
            connection: connection(b.addr, version),
            groups: vec![
                Group {
                    name: "idle".into(),
                    count: 20,
                    role: Role::Idle,
                },
                // Every message twice, once more through the shared
                // group, and each publisher's own once more: 4 × sent.
                sub("all", 2, "bench/#", 1, None),
                sub("shared", 3, "bench/#", 1, Some("g")),
                sub("p2p", 5, "bench/%i", 0, None),
                // Matches nothing the publishers send.
                sub("other", 1, "elsewhere/+", 1, None),
                Group {
                    name: "pub".into(),
                    count: 5,
                    role: Role::Publisher(Publish {
                        topic: "bench/%i".into(),
                        qos: 1,
                        size: 100,
                        rate: 200.0,
                        limit: None,
                        inflight: 50,
                        retain: false,
                    }),
                },
            ],
            duration: Duration::from_secs(1),
            drain: Duration::from_secs(5),
            connect_deadline: Duration::from_secs(30),
        };
        let s = run::run(plan, options()).await.expect("runs");
        assert_eq!(s.clients, 36);
        assert_eq!(s.connects, 36, "{version:?}");
        assert_eq!(
            (s.connect_failures, s.dropped, s.subscribe_failures),
            (0, 0, 0)
        );
        // 5 publishers at 200/s for a second: about 1,000 messages.
        assert!((800..=1_300).contains(&s.sent), "sent {}", s.sent);
        assert_eq!(s.acked, s.sent, "every QoS 1 publish acknowledged");
        let expected = s.expected.expect("publishers ran here");
        assert_eq!(expected, 4 * s.sent);
        assert_eq!(s.unique + s.lost, expected);
        assert_eq!(s.lost, 0, "{version:?}: nothing lost at this rate");
        assert_eq!(s.received, s.unique + s.duplicates);
        assert_eq!(
            (s.duplicates, s.out_of_order, s.unexpected, s.foreign),
            (0, 0, 0, 0)
        );
        assert_eq!(s.latency_us.count, s.received);
        // The rate is over the delivery time, which covers the publishing
        // time and any delivery after it.
        assert!(s.delivery_seconds >= s.publish_seconds);
        let rate = s.received as f64 / s.delivery_seconds;
        assert!((s.received_per_second - rate).abs() < 1e-6 * rate.max(1.0));
        assert!(s.latency_us.p50 > 0 && s.latency_us.p50 <= s.latency_us.p99);
        assert!(s.latency_us.p99 <= s.latency_us.max);
        assert_eq!(s.connect_latency_us.count, 36);
        assert!(s.broker.is_some() && s.broker_bytes_per_connection.is_some());
        assert!(!s.series.is_empty());
        b.stop().await;
    }
}

fn publisher(name: &str, count: usize, qos: u8, limit: u64) -> Group {
    Group {
        name: name.into(),
        count,
        role: Role::Publisher(Publish {
            topic: format!("mix/{name}/%i"),
            qos,
            size: 64,
            rate: 0.0,
            limit: Some(limit),
            inflight: 100,
            retain: false,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_qos_at_full_speed_loses_no_acknowledged_message() {
    // Issue 16 item 1, as loadtest/scenarios/mixed-qos.toml runs it: QoS 0
    // and QoS 1 publishers at full speed into one QoS 1 subscriber's
    // queue (small here, so it fills at once). QoS 0 may be dropped;
    // every PUBACKed QoS 1 message must arrive.
    let b = broker_with(|c| c.max_queued_messages = 50).await;
    let plan = Plan {
        name: "mixed-qos".into(),
        connection: connection(b.addr, Version::V4),
        groups: vec![
            sub("sub", 1, "mix/#", 1, None),
            publisher("q0", 2, 0, 20_000),
            publisher("q1", 2, 1, 5_000),
        ],
        duration: Duration::from_secs(3),
        drain: Duration::from_secs(5),
        connect_deadline: Duration::from_secs(30),
    };
    let s = run::run(plan, options()).await.expect("runs");
    assert_eq!((s.connect_failures, s.dropped), (0, 0));
    assert!(s.acked > 1_000, "QoS 1 publishers got going: {}", s.acked);
    assert_eq!(s.lost_acknowledged, Some(0), "{} lost in all", s.lost);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_reports_and_a_missing_broker() {
    let b = broker().await;
    let plan = Plan {
        name: "limited".into(),
        connection: connection(b.addr, Version::V4),
        groups: vec![
            sub("s", 1, "t/#", 0, None),
            Group {
                name: "p".into(),
                count: 2,
                role: Role::Publisher(Publish {
                    topic: "t/%c".into(),
                    qos: 0,
                    size: 10,
                    rate: 0.0,
                    limit: Some(500),
                    inflight: 1,
                    retain: false,
                }),
            },
        ],
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(5),
        connect_deadline: Duration::from_secs(30),
    };
    let s = run::run(plan, options()).await.expect("runs");
    assert_eq!(s.sent, 1_000, "2 publishers × limit 500");
    assert_eq!(s.expected, Some(1_000));
    assert_eq!(s.unique + s.lost, 1_000);
    assert_eq!(s.overrun, 0, "unlimited rate is never behind");
    let dir = tempfile::tempdir().expect("tempdir");
    porchlight_loadtest::report::write_json(&s, &dir.path().join("s.json")).expect("json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("s.json")).expect("read"))
            .expect("parses");
    assert_eq!(json["sent"], 1_000);
    porchlight_loadtest::report::write_report(&s, &dir.path().join("r")).expect("report");
    for f in [
        "report.md",
        "throughput.svg",
        "latency.svg",
        "connections.svg",
        "cpu.svg",
    ] {
        let text = std::fs::read_to_string(dir.path().join("r").join(f)).expect(f);
        assert!(!text.is_empty(), "{f}");
    }
    let table = porchlight_loadtest::report::table(&s);
    assert!(table.contains("expected 1000"), "{table}");
    let gone = b.addr;
    b.stop().await;

    // Nobody listening: every connect fails, the run still ends.
    let plan = Plan {
        name: "nobody".into(),
        connection: Connection {
            connect_timeout: Duration::from_secs(2),
            ..connection(gone, Version::V4)
        },
        groups: vec![Group {
            name: "c".into(),
            count: 3,
            role: Role::Idle,
        }],
        duration: Duration::from_millis(200),
        drain: Duration::from_millis(200),
        connect_deadline: Duration::from_secs(10),
    };
    let s = tokio::time::timeout(Duration::from_secs(30), run::run(plan, options()))
        .await
        .expect("ends")
        .expect("runs");
    assert_eq!((s.connects, s.connect_failures), (0, 3));
    let reasons: Vec<_> = s.connect_errors.into_iter().collect();
    assert_eq!(reasons, vec![("tcp: connection refused".to_owned(), 3)]);
}

/// A CA and a `localhost` server certificate (rcgen), as PEM files.
fn pki(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = pki_with_client(dir);
    (p.ca, p.cert, p.key)
}

struct Pki {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

/// As `pki`, plus a client certificate `device-1` from the same CA.
fn pki_with_client(dir: &std::path::Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let p = Pki {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    };
    std::fs::write(&p.ca, ca.pem()).expect("write ca");
    for (name, cert, key) in [
        ("localhost", &p.cert, &p.key),
        ("device-1", &p.client_cert, &p.client_key),
    ] {
        let k = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .signed_by(&k, &ca, &ca_key)
            .expect("leaf");
        std::fs::write(cert, leaf.pem()).expect("write cert");
        std::fs::write(key, k.serialize_pem()).expect("write key");
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_the_post_quantum_key_exchange() {
    let files = tempfile::tempdir().expect("tempdir");
    let p = pki_with_client(files.path());
    let b = broker_with(|c| {
        c.tls_listen = vec!["127.0.0.1:0".parse().expect("addr")];
        c.tls = Some(porchlight_broker::net::tls::TlsFiles {
            cert: p.cert.clone(),
            key: p.key.clone(),
            min_version: porchlight_broker::net::tls::TlsVersion::V1_3,
            client_ca: Some(p.ca.clone()),
            crl: None,
            client_auth: porchlight_broker::net::tls::ClientAuth::Required,
            identity: porchlight_broker::net::tls::IdentityField::Cn,
            reload_interval: None,
        });
    })
    .await;
    let run = |client_cert: bool, post_quantum: bool| {
        let plan = Plan {
            name: "mtls".into(),
            connection: Connection {
                tls: Some(porchlight_loadtest::plan::Tls {
                    ca: Some(p.ca.clone()),
                    cert: client_cert.then(|| p.client_cert.clone()),
                    key: client_cert.then(|| p.client_key.clone()),
                    insecure: false,
                    server_name: "localhost".into(),
                    resume: false,
                    post_quantum,
                }),
                connect_rate: 0.0,
                ..connection(b.addr, Version::V5)
            },
            groups: vec![Group {
                name: "idle".into(),
                count: 5,
                role: Role::Idle,
            }],
            duration: Duration::from_millis(100),
            drain: Duration::from_millis(100),
            connect_deadline: Duration::from_secs(30),
        };
        run::run(plan, options())
    };
    for pq in [true, false] {
        let s = run(true, pq).await.expect("runs");
        assert_eq!((s.connects, s.connect_failures), (5, 0), "pq {pq}");
        assert_eq!(s.tls_handshakes, 5);
        // The broker's rustls offers X25519MLKEM768: asked for, it is used.
        assert_eq!(s.tls_post_quantum, if pq { 5 } else { 0 }, "pq {pq}");
    }
    // Without a client certificate the broker refuses every handshake.
    let s = run(false, false).await.expect("runs");
    assert_eq!((s.connects, s.connect_failures), (0, 5));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_reconnect_storm_resumes_unless_told_not_to() {
    let files = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = pki(files.path());
    let b = broker_with(|c| {
        c.tls_listen = vec!["127.0.0.1:0".parse().expect("addr")];
        c.tls = Some(porchlight_broker::net::tls::TlsFiles {
            cert,
            key,
            min_version: porchlight_broker::net::tls::TlsVersion::V1_2,
            client_ca: None,
            crl: None,
            client_auth: porchlight_broker::net::tls::ClientAuth::None,
            identity: porchlight_broker::net::tls::IdentityField::Cn,
            reload_interval: None,
        });
    })
    .await;
    for resume in [true, false] {
        let plan = Plan {
            name: "storm".into(),
            connection: Connection {
                tls: Some(porchlight_loadtest::plan::Tls {
                    ca: Some(ca.clone()),
                    cert: None,
                    key: None,
                    insecure: false,
                    server_name: "localhost".into(),
                    resume,
                    post_quantum: false,
                }),
                cycles: 4,
                connect_rate: 0.0,
                ..connection(b.addr, Version::V5)
            },
            groups: vec![Group {
                name: "idle".into(),
                count: 20,
                role: Role::Idle,
            }],
            duration: Duration::from_millis(200),
            drain: Duration::from_millis(200),
            connect_deadline: Duration::from_secs(30),
        };
        let s = run::run(plan, options()).await.expect("runs");
        // The warm-up connect is not counted: 3 of the 4 cycles are.
        assert_eq!((s.connects, s.connect_failures), (60, 0), "resume {resume}");
        assert_eq!(s.connect_latency_us.count, 60);
        assert_eq!(s.tls_handshakes, 60);
        let want = if resume { 60 } else { 0 };
        assert_eq!(s.tls_resumed, want, "resume {resume}");
        assert!(porchlight_loadtest::report::table(&s).contains("resumed"));
    }
    // A CA that did not sign the server's certificate: every connect
    // fails, and the reason says TLS.
    let other = tempfile::tempdir().expect("tempdir");
    let (wrong_ca, _, _) = pki(other.path());
    let plan = Plan {
        name: "wrong-ca".into(),
        connection: Connection {
            tls: Some(porchlight_loadtest::plan::Tls {
                ca: Some(wrong_ca),
                cert: None,
                key: None,
                insecure: false,
                server_name: "localhost".into(),
                resume: true,
                post_quantum: false,
            }),
            ..connection(b.addr, Version::V4)
        },
        groups: vec![Group {
            name: "idle".into(),
            count: 2,
            role: Role::Idle,
        }],
        duration: Duration::from_millis(100),
        drain: Duration::from_millis(100),
        connect_deadline: Duration::from_secs(30),
    };
    let s = run::run(plan, options()).await.expect("runs");
    assert_eq!((s.connects, s.connect_failures), (0, 2));
    assert!(
        s.connect_errors.keys().all(|r| r.starts_with("tls: ")),
        "{:?}",
        s.connect_errors
    );
    b.stop().await;
}
