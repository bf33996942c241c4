//! Authentication and authorisation: passwords and anonymous access with
//! their CONNACK codes, ACLs, the auth file and its reload, failure
//! backoff (also behind a PROXY header), certificates as usernames (JWT is
//! in `jwt.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use porchlight_broker::codec::{
    reason, Packet, Properties, Protocol, Subscribe, SubscriptionOptions, Will,
};
use porchlight_broker::metrics::Metrics;
use tokio::net::TcpStream;

use crate::support::*;

/// A broker with `--auth-file` holding `text`, re-read every 100 ms.
async fn auth_broker(
    text: &str,
    f: impl FnOnce(&mut porchlight_broker::Config),
) -> (TestBroker, Arc<tempfile::TempDir>) {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, text).expect("write auth file");
    let b = TestBroker::with(|c| {
        c.auth.file = Some(path);
        c.auth.reload_interval = Some(Duration::from_millis(100));
        f(c);
    })
    .await;
    (b, dir)
}

fn phc(password: &str) -> String {
    porchlight_broker::auth::password::hash(password.as_bytes()).expect("hash")
}

pub(crate) fn login(
    p: Protocol,
    id: &str,
    user: Option<&str>,
    password: Option<&[u8]>,
) -> porchlight_broker::codec::Connect {
    let mut c = connect_packet(p, id, true, 30);
    c.username = user.map(str::to_owned);
    c.password = password.map(Bytes::copy_from_slice);
    c
}

pub(crate) async fn connack(
    addr: std::net::SocketAddr,
    c: porchlight_broker::codec::Connect,
) -> u8 {
    RawClient::connect_with(addr, c).await.1.reason
}

async fn logged_in(
    addr: std::net::SocketAddr,
    p: Protocol,
    id: &str,
    user: &str,
    password: &[u8],
) -> RawClient {
    let (c, ack) = RawClient::connect_with(addr, login(p, id, Some(user), Some(password))).await;
    assert_eq!(ack.reason, reason::SUCCESS, "{user} logs in");
    c
}

#[tokio::test]
async fn passwords_and_anonymous_get_the_connack_codes_of_each_version() {
    let text = format!(
        "[[users]]\nusername = \"alice\"\npassword = \"{}\"\n",
        phc("correct horse")
    );
    let (b, _dir) = auth_broker(&text, |_| {}).await;
    let a = b.addr;
    let good = Some(b"correct horse".as_slice());
    let bad = Some(b"wrong".as_slice());
    // Codes as each version spells them: v5 0x86/0x87, 3.1.1 4/5.
    for (p, bad_credentials, not_authorized) in [
        (
            Protocol::V5,
            reason::BAD_USER_NAME_OR_PASSWORD,
            reason::NOT_AUTHORIZED,
        ),
        (Protocol::V311, 4, 5),
    ] {
        assert_eq!(connack(a, login(p, "c1", Some("alice"), good)).await, 0);
        assert_eq!(
            connack(a, login(p, "c2", Some("alice"), bad)).await,
            bad_credentials
        );
        assert_eq!(
            connack(a, login(p, "c3", Some("mallory"), good)).await,
            bad_credentials
        );
        assert_eq!(connack(a, login(p, "c4", None, None)).await, not_authorized);
    }
    assert_eq!(Metrics::get(&b.broker.metrics.auth_failures), 6);
    // A real v3.1.1 client with credentials.
    let mut opts = rumqttc::MqttOptions::new("rumq", "127.0.0.1", a.port());
    opts.set_credentials("alice", "correct horse");
    let c = V4::connect_opts(opts).await;
    drop(c);
    b.stop().await;
}

#[tokio::test]
async fn anonymous_needs_the_flag_once_auth_is_configured_and_is_free_without_it() {
    let text = format!("[[users]]\nusername = \"u\"\npassword = \"{}\"\n", phc("p"));
    let (b, _dir) = auth_broker(&text, |c| c.auth.allow_anonymous = true).await;
    assert_eq!(
        connack(b.addr, login(Protocol::V5, "anon", None, None)).await,
        0
    );
    assert_eq!(
        connack(b.addr, login(Protocol::V5, "bad", Some("u"), Some(b"no"))).await,
        reason::BAD_USER_NAME_OR_PASSWORD,
        "--allow-anonymous does not excuse wrong credentials"
    );
    b.stop().await;
    // The embedded default: no auth configured, anything goes.
    let open = TestBroker::start().await;
    assert_eq!(
        connack(open.addr, login(Protocol::V5, "a", None, None)).await,
        0
    );
    assert_eq!(
        connack(
            open.addr,
            login(Protocol::V5, "b", Some("any"), Some(b"thing"))
        )
        .await,
        0
    );
    open.stop().await;
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_slowed() {
    let text = format!("[[users]]\nusername = \"u\"\npassword = \"{}\"\n", phc("p"));
    let (b, _dir) = auth_broker(&text, |_| {}).await;
    // Three free failures, then 100 ms, then 200 ms before the answer.
    for i in 0..4 {
        let c = login(Protocol::V5, &format!("f{i}"), Some("u"), Some(b"guess"));
        assert_eq!(connack(b.addr, c).await, reason::BAD_USER_NAME_OR_PASSWORD);
    }
    let started = Instant::now();
    let c = login(Protocol::V5, "f5", Some("u"), Some(b"guess"));
    assert_eq!(connack(b.addr, c).await, reason::BAD_USER_NAME_OR_PASSWORD);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the fifth failure waited {:?}",
        started.elapsed()
    );
    // Slowed, not locked out: the right password still gets in.
    assert_eq!(
        connack(b.addr, login(Protocol::V5, "ok", Some("u"), Some(b"p"))).await,
        0
    );
    assert_eq!(Metrics::get(&b.broker.metrics.auth_failures), 5);
    b.stop().await;
}

const ACL: &str = r#"
[acl]
default = "deny"

[[acl.rules]]
permission = "deny"
action = "publish"
topic = "devices/%u/locked"

[[acl.rules]]
permission = "allow"
action = "all"
topic = "devices/%u/#"

[[acl.rules]]
permission = "deny"
action = "subscribe"
topic = "broadcast/secret"

[[acl.rules]]
permission = "allow"
action = "subscribe"
topic = "broadcast/#"

[[acl.rules]]
permission = "allow"
action = "publish"
topic = "broadcast/#"
user = "ops"

[[acl.rules]]
permission = "allow"
action = "subscribe"
topic = "inbox/%c"
"#;

async fn acl_broker() -> (TestBroker, Arc<tempfile::TempDir>) {
    let hash = phc("pw");
    let mut text = String::new();
    for u in ["alice", "ops"] {
        text.push_str(&format!(
            "[[users]]\nusername = \"{u}\"\npassword = \"{hash}\"\n"
        ));
    }
    text.push_str(ACL);
    auth_broker(&text, |_| {}).await
}

pub(crate) async fn suback(c: &mut RawClient, filter: &str) -> u8 {
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: 7,
        filters: vec![(filter.into(), SubscriptionOptions::new(q(1)))],
        properties: Properties::default(),
    }))
    .await;
    match c.recv().await {
        Some(Packet::SubAck(s)) => s.reasons[0],
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn the_acl_matrix_for_v5_clients() {
    let (b, _dir) = acl_broker().await;
    const ALICE: usize = 0;
    const OPS: usize = 1;
    let mut c = [
        logged_in(b.addr, Protocol::V5, "hub-1", "alice", b"pw").await,
        logged_in(b.addr, Protocol::V5, "ops-1", "ops", b"pw").await,
    ];
    let denied = reason::NOT_AUTHORIZED;
    let ok_pub = reason::NO_MATCHING_SUBSCRIBERS;
    for (who, topic, want) in [
        (ALICE, "devices/alice/temp", ok_pub),
        (ALICE, "devices/alice/locked", denied),
        (ALICE, "devices/ops/temp", denied),
        (ALICE, "broadcast/news", denied),
        (ALICE, "elsewhere", denied),
        (OPS, "broadcast/news", ok_pub),
        (OPS, "devices/ops/locked", denied),
    ] {
        assert_eq!(c[who].puback(topic).await, want, "publish {who} {topic}");
    }
    for (filter, want) in [
        ("devices/alice/#", 1),
        ("devices/+/temp", denied),
        ("broadcast/#", denied),
        ("broadcast/news", 1),
        ("broadcast/secret", denied),
        ("inbox/hub-1", 1),
        ("inbox/ops-1", denied),
        ("$share/g/devices/alice/x", 1),
        ("$share/g/devices/ops/x", denied),
        ("#", denied),
    ] {
        assert_eq!(
            suback(&mut c[ALICE], filter).await,
            want,
            "subscribe {filter}"
        );
    }
    // Allowed traffic flows: ops broadcasts, alice (subscribed to
    // broadcast/news above) receives.
    c[OPS].publish("broadcast/news", q(0), 0, b"hello").await;
    assert_eq!(&c[ALICE].expect_publish().await.payload[..], b"hello");
    let m = &b.broker.metrics;
    assert_eq!(Metrics::get(&m.acl_denied_publish), 5);
    assert_eq!(Metrics::get(&m.acl_denied_subscribe), 6);
    b.stop().await;
}

#[tokio::test]
async fn v311_denied_publishes_are_dropped_and_subscribes_get_0x80() {
    let (b, _dir) = acl_broker().await;
    let mut watcher = logged_in(b.addr, Protocol::V5, "w", "alice", b"pw").await;
    watcher.subscribe("devices/alice/#", q(1)).await;
    let mut v3 = logged_in(b.addr, Protocol::V311, "v3", "alice", b"pw").await;
    assert_eq!(suback(&mut v3, "broadcast/secret").await, 0x80);
    assert_eq!(suback(&mut v3, "devices/alice/#").await, 1);
    // Denied: acknowledged (3.1.1 cannot say no), dropped, counted.
    v3.publish("devices/alice/locked", q(1), 3, b"dropped")
        .await;
    assert!(matches!(v3.recv().await, Some(Packet::PubAck(_))));
    v3.publish("devices/alice/open", q(1), 4, b"delivered")
        .await;
    let p = watcher.expect_publish().await;
    assert_eq!(
        &p.payload[..],
        b"delivered",
        "the denied message never arrives"
    );
    assert_eq!(Metrics::get(&b.broker.metrics.acl_denied_publish), 1);
    b.stop().await;
}

#[tokio::test]
async fn another_user_does_not_inherit_a_session_by_its_client_id() {
    let (b, _dir) = acl_broker().await;
    let durable = |user: &str| {
        let mut c = login(Protocol::V5, "shared-id", Some(user), Some(b"pw"));
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(600);
        c
    };
    let (mut alice, ack) = RawClient::connect_with(b.addr, durable("alice")).await;
    assert_eq!(ack.reason, 0);
    alice.subscribe("devices/alice/#", q(1)).await;
    drop(alice);
    b.wait_offline("shared-id").await;
    // ops takes the client id: it gets a fresh session, not alice's.
    let (mut ops, ack) = RawClient::connect_with(b.addr, durable("ops")).await;
    assert_eq!(ack.reason, 0);
    assert!(!ack.session_present, "alice's session is not handed over");
    let mut feed = logged_in(b.addr, Protocol::V5, "feed", "alice", b"pw").await;
    feed.publish("devices/alice/door", q(0), 0, b"open").await;
    ops.expect_silence(Duration::from_millis(300)).await;
    drop(ops);
    b.wait_offline("shared-id").await;
    // The same user resumes its own session as usual.
    let (ops, ack) = RawClient::connect_with(b.addr, durable("ops")).await;
    assert!(ack.session_present);
    drop(ops);
    b.wait_offline("shared-id").await;
    // The session record keeps its user across a restart (before issue
    // 17 a restored session had none, and anyone inherited it).
    let b = b.restart().await;
    let (alice, ack) = RawClient::connect_with(b.addr, durable("alice")).await;
    assert_eq!(ack.reason, 0);
    assert!(!ack.session_present, "ops's session is not handed to alice");
    drop(alice);
    b.wait_offline("shared-id").await;
    let b = b.restart().await;
    let (_alice, ack) = RawClient::connect_with(b.addr, durable("alice")).await;
    assert!(ack.session_present, "alice resumes her own after a restart");
    b.stop().await;
}

#[tokio::test]
async fn a_will_on_a_denied_topic_refuses_the_connect() {
    let (b, _dir) = acl_broker().await;
    let mut c = login(Protocol::V5, "w", Some("alice"), Some(b"pw"));
    c.will = Some(Will {
        topic: "devices/ops/status".into(),
        payload: Bytes::from_static(b"gone"),
        qos: q(0),
        retain: false,
        properties: Properties::default(),
    });
    assert_eq!(connack(b.addr, c).await, reason::NOT_AUTHORIZED);
    b.stop().await;
}

#[tokio::test]
async fn auth_file_changes_apply_to_new_and_existing_connections() {
    let hash = phc("pw");
    let v1 = format!(
        "[[users]]\nusername = \"alice\"\npassword = \"{hash}\"\n\n[[acl.rules]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"a/#\"\n"
    );
    let (b, dir) = auth_broker(&v1, |_| {}).await;
    let path = dir.path().join("auth.toml");
    let mut alice = logged_in(b.addr, Protocol::V5, "a1", "alice", b"pw").await;
    assert_eq!(alice.puback("a/1").await, reason::NO_MATCHING_SUBSCRIBERS);
    assert_eq!(
        connack(b.addr, login(Protocol::V5, "c", Some("carol"), Some(b"pw"))).await,
        reason::BAD_USER_NAME_OR_PASSWORD
    );
    let v2 = format!(
        "[[users]]\nusername = \"alice\"\npassword = \"{hash}\"\n[[users]]\nusername = \"carol\"\npassword = \"{hash}\"\n\n[[acl.rules]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"b/#\"\n"
    );
    std::fs::write(&path, v2).expect("rewrite");
    let m = b.broker.metrics.clone();
    wait_until("the new file is in force", || {
        Metrics::get(&m.auth_reloads) == 1
    })
    .await;
    assert_eq!(
        connack(b.addr, login(Protocol::V5, "c", Some("carol"), Some(b"pw"))).await,
        0
    );
    // The connected client's ACL follows the file.
    assert_eq!(alice.puback("a/1").await, reason::NOT_AUTHORIZED);
    assert_eq!(alice.puback("b/1").await, reason::NO_MATCHING_SUBSCRIBERS);
    // A broken file is refused and the last good one stays.
    std::fs::write(&path, "[[users]]\nusername = \"x\"\npassword = \"plain\"\n").expect("rewrite");
    wait_until("the broken file is refused", || {
        Metrics::get(&m.auth_reload_failures) == 1
    })
    .await;
    assert_eq!(
        connack(
            b.addr,
            login(Protocol::V5, "c2", Some("carol"), Some(b"pw"))
        )
        .await,
        0
    );
    b.stop().await;
}

#[tokio::test]
async fn a_bad_auth_file_stops_start_up_naming_the_flag_and_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, "[[users]]\nusername = \"a\"\npasword = \"typo\"\n").expect("write");
    let mut config = porchlight_broker::Config::for_tests(dir.path().join("data"));
    config.auth.file = Some(path.clone());
    let err = porchlight_broker::Server::bind(config, tokio_util::sync::CancellationToken::new())
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(text.contains("--auth-file"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("line 3"), "{text}");
    assert!(
        !dir.path().join("data").join("state").exists(),
        "store never opened"
    );
}

#[tokio::test]
async fn failures_are_logged_with_address_and_client_but_not_which_part_was_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("auth.toml");
    std::fs::write(
        &path,
        format!(
            "[[users]]\nusername = \"alice\"\npassword = \"{}\"\n",
            phc("right")
        ),
    )
    .expect("write");
    let (mut child, addr, log) = spawn_binary_logged(
        &dir.path().join("data"),
        &[
            "--auth-file",
            path.to_str().expect("utf-8"),
            "--log-level",
            "info",
        ],
    );
    // A wrong password, then an unknown user: the log may not tell them
    // apart (the backoff starts after three; the fourth is slowed).
    for (id, user, pw) in [
        ("c-1", "alice", "wrong"),
        ("c-2", "mallory", "right"),
        ("c-3", "alice", "wrong"),
        ("c-4", "nobody", "x"),
    ] {
        let code = connack(
            addr,
            login(Protocol::V5, id, Some(user), Some(pw.as_bytes())),
        )
        .await;
        assert_eq!(code, reason::BAD_USER_NAME_OR_PASSWORD);
    }
    let failed = |log: &[String]| -> Vec<serde_json::Value> {
        log.iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "Authentication failed")
            .collect()
    };
    wait_until("the fourth failure logged", || {
        failed(&log.lock().expect("log")).len() >= 3
    })
    .await;
    let lines = log.lock().expect("log").clone();
    let entries = failed(&lines);
    // Logged at the 1st, 2nd and 4th failure (powers of two).
    let counts: Vec<u64> = entries
        .iter()
        .map(|v| v["fields"]["failures"].as_u64().expect("failures"))
        .collect();
    assert_eq!(counts, [1, 2, 4], "{entries:?}");
    for (v, client) in entries.iter().zip(["c-1", "c-2", "c-4"]) {
        assert_eq!(v["fields"]["address"], "127.0.0.1", "{v}");
        assert_eq!(v["fields"]["client"], client, "{v}");
    }
    for l in &lines {
        for telltale in ["wrong password", "unknown user", "mallory", "nobody"] {
            assert!(!l.contains(telltale), "the log says {telltale:?}: {l}");
        }
    }
    kill9(&mut child);
}

#[tokio::test]
async fn a_client_certificate_is_the_username_for_acl_rules() {
    use porchlight_broker::net::tls::{ClientAuth, TlsVersion};
    let pki = TestPki::new();
    let text =
        "[[acl.rules]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"devices/%u/#\"\n";
    let (b, _dir) = auth_broker(text, |c| {
        pki.configure(c, TlsVersion::V1_2);
        if let Some(tls) = c.tls.as_mut() {
            tls.client_ca = Some(pki.ca_file.clone());
            tls.client_auth = ClientAuth::Optional;
        }
        c.auth.client_certificates = true;
    })
    .await;
    let addr = b.tls_addr.expect("tls addr");
    let tls = |config: Arc<rustls::ClientConfig>| async move {
        let tcp = TcpStream::connect(addr).await.expect("tcp");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("handshake")
    };
    let stream = tls(pki.client_with_cert(pki.client_cert("dev-7", false))).await;
    // The CONNECT username is ignored: the certificate says who this is.
    let (mut c, ack) = RawClient::over(stream, Protocol::V5)
        .handshake(login(Protocol::V5, "cert", Some("dev-8"), None))
        .await;
    assert_eq!(ack.reason, 0);
    assert_eq!(
        c.puback("devices/dev-7/t").await,
        reason::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(c.puback("devices/dev-8/t").await, reason::NOT_AUTHORIZED);
    // Without a certificate (optional mode) and without credentials:
    // anonymous, which configured client certificates refuse.
    let stream = tls(pki.client(&[&rustls::version::TLS13], &[])).await;
    let (_c, ack) = RawClient::over(stream, Protocol::V5)
        .handshake(login(Protocol::V5, "anon", None, None))
        .await;
    assert_eq!(ack.reason, reason::NOT_AUTHORIZED);
    b.stop().await;
}

/// A failed login behind a PROXY v1 header naming `source`: the CONNACK
/// reason and how long the answer took.
async fn failed_via_proxy(addr: std::net::SocketAddr, source: &str, id: &str) -> (u8, Duration) {
    let mut bytes = format!("PROXY TCP4 {source} 10.0.0.1 51000 1883\r\n").into_bytes();
    let mut connect = bytes::BytesMut::new();
    let c = login(Protocol::V5, id, Some("u"), Some(b"guess"));
    porchlight_broker::codec::encode(&Packet::Connect(Box::new(c)), Protocol::V5, &mut connect);
    bytes.extend_from_slice(&connect);
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let mut raw = RawClient::over(Box::new(stream), Protocol::V5);
    raw.send_bytes(&bytes).await;
    match raw.recv().await {
        Some(Packet::ConnAck(a)) => (a.reason, started.elapsed()),
        other => panic!("expected a CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn behind_a_proxy_the_backoff_follows_the_real_address() {
    // Argon2id at its minimum cost (8 KiB, 1 pass): the default costs
    // hundreds of ms per check in a debug build, which drowned the 200 ms
    // backoff this test times.
    let cheap = "$argon2id$v=19$m=8,t=1,p=1$G8jc9KHbA0ohzZEunLO1YQ$/Uo3T3c3ci+YyOGguOpMGPqLgyZ/9OXd09wU7bX8Fi4";
    let text = format!("[[users]]\nusername = \"u\"\npassword = \"{cheap}\"\n");
    let (b, _dir) = auth_broker(&text, |c| {
        c.proxy_protocol.kinds = vec![porchlight_broker::net::ListenerKind::Tcp];
    })
    .await;
    // Every connection comes from 127.0.0.1; the headers name two devices.
    for i in 0..4 {
        let (code, _) = failed_via_proxy(b.addr, "192.0.2.10", &format!("a{i}")).await;
        assert_eq!(code, reason::BAD_USER_NAME_OR_PASSWORD);
    }
    let (_, slowed) = failed_via_proxy(b.addr, "192.0.2.10", "a5").await;
    assert!(
        slowed >= Duration::from_millis(200),
        "the fifth failure waited {slowed:?}"
    );
    // Keyed by the socket address, this would be the sixth failure (400 ms).
    let (code, other) = failed_via_proxy(b.addr, "192.0.2.11", "b1").await;
    assert_eq!(code, reason::BAD_USER_NAME_OR_PASSWORD);
    assert!(
        other + Duration::from_millis(100) < slowed,
        "another device behind the same proxy waited {other:?} (the slowed one {slowed:?})"
    );
    assert_eq!(Metrics::get(&b.broker.metrics.auth_failures), 6);
    b.stop().await;
}
