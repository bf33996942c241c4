//! Tenants end to end: each identity method over real sockets (username
//! suffix, TLS SNI, client-certificate O, OU and SAN URI, the TCP, WS and
//! WSS listener defaults),
//! isolation (a property test over random tenants, filters and topics),
//! `%t` in ACLs, removing a tenant by editing the file and by SIGHUP to the
//! real binary. Quotas are in `tenant_quotas.rs` and shared gateways in
//! `gateways.rs`; both use the helpers here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use porchlight_broker::codec::{reason, Packet, Protocol};
use porchlight_broker::ids::TenantId;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;
use tracing::info;

pub(crate) fn publish_bytes(
    topic: &str,
    qos: porchlight_broker::codec::QoS,
    packet_id: u16,
    payload: Bytes,
) -> porchlight_broker::codec::Publish {
    let mut m = publish(topic, qos, packet_id, b"");
    m.payload = payload;
    m
}

/// A broker with `--tenants` holding `text`, re-read every 100 ms.
pub(crate) async fn tenant_broker(
    text: &str,
    f: impl FnOnce(&mut porchlight_broker::Config),
) -> (TestBroker, Arc<tempfile::TempDir>) {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let path = dir.path().join("tenants.toml");
    std::fs::write(&path, text).expect("write tenants file");
    let b = TestBroker::with(|c| {
        c.auth.tenants = Some(path);
        c.auth.reload_interval = Some(Duration::from_millis(100));
        f(c);
    })
    .await;
    (b, dir)
}

/// An argon2id PHC of `pw` at the minimum cost (8 KiB, one pass): the
/// default costs hundreds of ms per check in a debug build.
pub(crate) fn cheap_phc(pw: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8, 1, 1, None).expect("params");
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"porchlight-tests").expect("salt");
    a.hash_password(pw.as_bytes(), &salt)
        .expect("hash")
        .to_string()
}

/// Tenants `names`, each with users `u`, `s`, `p` (password `pw`) and
/// `extra` appended to its table.
pub(crate) fn tenants(names: &[&str], extra: &str) -> String {
    let phc = cheap_phc("pw");
    names
        .iter()
        .map(|n| {
            let users: String = ["u", "s", "p"]
                .iter()
                .map(|u| {
                    format!("[[tenant.users]]\nusername = \"{u}\"\npassword_hash = \"{phc}\"\n")
                })
                .collect();
            format!("[[tenant]]\nid = \"{n}\"\n{extra}\n{users}")
        })
        .collect()
}

pub(crate) fn as_user(p: Protocol, id: &str, user: &str) -> porchlight_broker::codec::Connect {
    let mut c = connect_packet(p, id, true, 60);
    c.username = Some(user.to_owned());
    c.password = Some(Bytes::from_static(b"pw"));
    c
}

pub(crate) async fn join(
    addr: std::net::SocketAddr,
    p: Protocol,
    id: &str,
    user: &str,
) -> RawClient {
    let (c, ack) = RawClient::connect_with(addr, as_user(p, id, user)).await;
    assert_eq!(ack.reason, 0, "{user} as {id}");
    c
}

pub(crate) fn usage(b: &TestBroker, t: &str) -> Arc<porchlight_broker::tenant::quota::Usage> {
    b.broker.tenants.usage(&TenantId::new(t))
}

#[tokio::test]
async fn usernames_name_the_tenant_and_tenants_never_see_each_other() {
    let (b, _dir) = tenant_broker(&tenants(&["acme", "globex"], ""), |c| {
        c.auth.allow_anonymous = true;
    })
    .await;
    info!("--- the same client id in two tenants is two sessions");
    let mut a = join(b.addr, Protocol::V5, "dev", "u@acme").await;
    let mut g = join(b.addr, Protocol::V311, "dev", "u@globex").await;
    a.subscribe("#", q(1)).await;
    g.subscribe("#", q(1)).await;
    a.publish("t/1", q(1), 1, b"from acme").await;
    let got = loop {
        match a.recv().await {
            Some(Packet::PubAck(_)) => {}
            Some(Packet::Publish(m)) => break m,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    };
    assert_eq!(&got.payload[..], b"from acme");
    g.expect_silence(Duration::from_millis(300)).await;
    info!("--- retained messages stay in their tenant");
    let mut m = publish_bytes("r/x", q(1), 2, Bytes::from_static(b"kept"));
    m.retain = true;
    g.send(&Packet::Publish(m)).await;
    let _ = g.recv().await; // its own delivery or PUBACK
    let mut a2 = join(b.addr, Protocol::V5, "dev2", "s@acme").await;
    a2.subscribe("r/#", q(0)).await;
    a2.expect_silence(Duration::from_millis(300)).await;
    let mut g2 = join(b.addr, Protocol::V5, "dev2", "s@globex").await;
    g2.subscribe("r/#", q(0)).await;
    assert_eq!(&g2.expect_publish().await.payload[..], b"kept");
    assert!(b.session_in("acme", "dev").is_some() && b.session_in("globex", "dev").is_some());
    info!("--- unknown or missing tenants are refused with the documented codes");
    for (p, user, code) in [
        (
            Protocol::V5,
            Some("u@initech"),
            reason::BAD_USER_NAME_OR_PASSWORD,
        ),
        (Protocol::V311, Some("u@initech"), 4),
        (
            Protocol::V5,
            Some("plain"),
            reason::CLIENT_IDENTIFIER_NOT_VALID,
        ),
        (Protocol::V311, None, 2),
    ] {
        let mut c = connect_packet(p, "x", true, 60);
        c.username = user.map(str::to_owned);
        assert_eq!(
            RawClient::connect_with(b.addr, c).await.1.reason,
            code,
            "{user:?} {p:?}"
        );
    }
    b.stop().await;
}

#[tokio::test]
async fn passwords_and_acls_are_per_tenant_and_percent_t_is_the_tenant() {
    let hash = cheap_phc("pw");
    let text = format!(
        "[[tenant]]\nid = \"acme\"\n[[tenant.users]]\nusername = \"u\"\npassword_hash = \"{hash}\"\n\
         [[tenant.acl.rules]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"%t/%u/#\"\n\
         [[tenant]]\nid = \"globex\"\n"
    );
    let (b, _dir) = tenant_broker(&text, |_| {}).await;
    let c = as_user(Protocol::V5, "c1", "u@acme");
    let (mut ok, ack) = RawClient::connect_with(b.addr, c.clone()).await;
    let mut c = c;
    assert_eq!(ack.reason, 0);
    assert_eq!(
        ok.puback("acme/u/temp").await,
        reason::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(ok.puback("globex/u/temp").await, reason::NOT_AUTHORIZED);
    // The same user and password do not exist in globex.
    c.username = Some("u@globex".into());
    assert_eq!(
        RawClient::connect_with(b.addr, c).await.1.reason,
        reason::BAD_USER_NAME_OR_PASSWORD
    );
    b.stop().await;
}

/// A tiny deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
}

/// MQTT filter matching, written apart from the broker's trie on purpose:
/// the test judges the broker's routing, so it must not share its code.
fn matches(filter: &str, topic: &str) -> bool {
    let (f, t): (Vec<&str>, Vec<&str>) = (filter.split('/').collect(), topic.split('/').collect());
    for (i, level) in f.iter().enumerate() {
        match *level {
            "#" => return true,
            "+" if i < t.len() => {}
            l if i < t.len() && l == t[i] => {}
            _ => return false,
        }
    }
    f.len() == t.len()
}

#[tokio::test]
async fn isolation_holds_for_random_tenants_filters_and_topics() {
    let names = ["t0", "t1", "t2"];
    let (b, _dir) = tenant_broker(&tenants(&names, ""), |c| c.auth.allow_anonymous = true).await;
    let levels = ["a", "b", "c"];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..3 {
        info!("--- round {round}");
        // Six subscribers spread over the tenants, each with 1-3 filters.
        let mut subs = Vec::new();
        for i in 0..6 {
            let tenant = rng.pick(&names);
            let mut c = join(
                b.addr,
                Protocol::V5,
                &format!("s{round}-{i}"),
                &format!("s@{tenant}"),
            )
            .await;
            let mut filters = BTreeSet::new();
            for _ in 0..=(rng.next() % 3) {
                let depth = 1 + rng.next() % 3;
                let f: Vec<&str> = (0..depth)
                    .map(|d| match rng.next() % 5 {
                        0 if d + 1 == depth => "#",
                        1 => "+",
                        _ => rng.pick(&levels),
                    })
                    .collect();
                filters.insert(f.join("/"));
            }
            for f in &filters {
                c.subscribe(f, q(1)).await;
            }
            subs.push((tenant, filters, c));
        }
        // Twenty publishes from random tenants to random topics.
        let mut sent = Vec::new();
        let mut pubs: BTreeMap<&str, RawClient> = BTreeMap::new();
        for t in names {
            pubs.insert(
                t,
                join(
                    b.addr,
                    Protocol::V5,
                    &format!("p{round}"),
                    &format!("p@{t}"),
                )
                .await,
            );
        }
        for n in 0..20u16 {
            let tenant = rng.pick(&names);
            let depth = 1 + rng.next() % 3;
            let topic: Vec<&str> = (0..depth).map(|_| rng.pick(&levels)).collect();
            let topic = topic.join("/");
            let payload = format!("{round}:{n}:{tenant}");
            let p = pubs.get_mut(tenant).expect("publisher");
            let mut m = publish_bytes(&topic, q(1), n + 1, Bytes::from(payload.clone()));
            m.retain = false;
            p.send(&Packet::Publish(m)).await;
            match p.recv().await {
                Some(Packet::PubAck(_)) => {}
                other => panic!("expected PUBACK, got {other:?}"),
            }
            sent.push((tenant, topic, payload));
        }
        for (tenant, filters, c) in subs.iter_mut() {
            let want: BTreeSet<String> = sent
                .iter()
                .filter(|(t, topic, _)| t == tenant && filters.iter().any(|f| matches(f, topic)))
                .map(|(_, _, p)| p.clone())
                .collect();
            let mut got = BTreeSet::new();
            while got.len() < want.len() {
                let m = c.expect_publish().await;
                let payload = String::from_utf8(m.payload.to_vec()).expect("utf8");
                assert!(
                    payload.ends_with(&format!(":{tenant}")),
                    "{tenant} {filters:?} received {payload} from another tenant"
                );
                c.send(&Packet::PubAck(porchlight_broker::codec::Ack::new(
                    m.packet_id,
                    0,
                )))
                .await;
                got.insert(payload);
            }
            assert_eq!(got, want, "{tenant} {filters:?}");
            c.expect_silence(Duration::from_millis(100)).await;
        }
    }
    b.stop().await;
}

/// TLS with optional client certificates from `pki`, anonymous allowed.
fn optional_client_certs(pki: &TestPki, c: &mut porchlight_broker::Config) {
    use porchlight_broker::net::tls::{ClientAuth, TlsVersion};
    pki.configure(c, TlsVersion::V1_2);
    if let Some(tls) = c.tls.as_mut() {
        tls.client_ca = Some(pki.ca_file.clone());
        tls.client_auth = ClientAuth::Optional;
    }
    c.auth.client_certificates = true;
    c.auth.allow_anonymous = true;
}

#[tokio::test]
async fn sni_and_certificate_organization_name_the_tenant_over_tls() {
    let pki = TestPki::with_names(&["localhost", "*.mqtt.example.com"]);
    let text = format!(
        "[tenancy]\nresolve = [\"sni\", \"certificate\", \"username\"]\nsni_pattern = \"{{tenant}}.mqtt.example.com\"\n{}",
        tenants(&["acme", "globex"], "")
    );
    let (b, _dir) = tenant_broker(&text, |c| optional_client_certs(&pki, c)).await;
    let tls_addr = b.tls_addr.expect("tls listener");
    let over_tls = |config: Arc<rustls::ClientConfig>, name: &'static str| async move {
        let tcp = TcpStream::connect(tls_addr).await.expect("tcp");
        let name = rustls::pki_types::ServerName::try_from(name).expect("name");
        let s = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("handshake");
        RawClient::over(s, Protocol::V5)
    };
    info!("--- SNI acme.mqtt.example.com, anonymous: tenant acme");
    let c = over_tls(
        pki.client(&[&rustls::version::TLS13], &[]),
        "acme.mqtt.example.com",
    )
    .await;
    let (mut sni_client, ack) = c
        .handshake(connect_packet(Protocol::V5, "by-sni", true, 60))
        .await;
    assert_eq!(ack.reason, 0);
    sni_client.subscribe("x", q(0)).await;
    assert!(b.session_in("acme", "by-sni").is_some());
    info!("--- certificate O=globex, SNI localhost (no pattern match): tenant globex");
    let cert = pki.client_with_cert(pki.client_cert_in_org("dev-1", "globex"));
    let c = over_tls(cert, "localhost").await;
    let (_cert_client, ack) = c
        .handshake(connect_packet(Protocol::V5, "by-cert", true, 60))
        .await;
    assert_eq!(ack.reason, 0);
    assert!(b.session_in("globex", "by-cert").is_some());
    info!("--- SNI for an unknown tenant: 0x85");
    let c = over_tls(
        pki.client(&[&rustls::version::TLS13], &[]),
        "initech.mqtt.example.com",
    )
    .await;
    let (_, ack) = c
        .handshake(connect_packet(Protocol::V5, "nobody", true, 60))
        .await;
    assert_eq!(ack.reason, reason::CLIENT_IDENTIFIER_NOT_VALID);
    info!("--- the acme subscriber hears acme's publish made by username");
    let mut p = join(b.addr, Protocol::V311, "pub", "p@acme").await;
    p.publish("x", q(0), 0, b"hi").await;
    assert_eq!(&sni_client.expect_publish().await.payload[..], b"hi");
    b.stop().await;
}

#[tokio::test]
async fn a_removed_tenant_is_closed_and_a_bad_edit_is_ignored() {
    let (b, dir) = tenant_broker(&tenants(&["acme", "globex"], ""), |c| {
        c.auth.allow_anonymous = true;
    })
    .await;
    let mut a = join(b.addr, Protocol::V5, "a", "u@acme").await;
    let mut g = join(b.addr, Protocol::V5, "g", "u@globex").await;
    let path = dir.path().join("tenants.toml");
    let m = b.broker.metrics.clone();
    let reloads = |m: &porchlight_broker::metrics::Metrics| {
        porchlight_broker::metrics::Metrics::get(&m.auth_reloads)
    };
    info!("--- a broken file is ignored");
    std::fs::write(&path, "[[tenant]]\nid = \"bad/id\"\n").expect("write");
    wait_until("bad file seen", || {
        porchlight_broker::metrics::Metrics::get(&m.auth_reload_failures) == 1
    })
    .await;
    assert_eq!(a.puback("t").await, reason::NO_MATCHING_SUBSCRIBERS);
    info!("--- acme removed: its idle connection is closed at the reload");
    std::fs::write(&path, tenants(&["globex"], "")).expect("write");
    wait_until("reloaded", || reloads(&m) == 1).await;
    a.expect_disconnect(Some(reason::NOT_AUTHORIZED)).await;
    assert_eq!(g.puback("t").await, reason::NO_MATCHING_SUBSCRIBERS);
    let refused = RawClient::connect_with(b.addr, as_user(Protocol::V5, "a", "u@acme")).await;
    assert_eq!(refused.1.reason, reason::BAD_USER_NAME_OR_PASSWORD);
    b.stop().await;
}

#[tokio::test]
async fn each_tenant_sees_only_its_own_sys_counters() {
    let (b, _dir) = tenant_broker(&tenants(&["acme", "globex"], ""), |_| {}).await;
    let mut a = join(b.addr, Protocol::V5, "a", "u@acme").await;
    let _a2 = join(b.addr, Protocol::V5, "a2", "s@acme").await;
    let mut g = join(b.addr, Protocol::V5, "g", "u@globex").await;
    porchlight_broker::ops::sys::publish_stats(&b.broker);
    a.subscribe("$SYS/broker/clients/connected", q(0)).await;
    g.subscribe("$SYS/broker/clients/connected", q(0)).await;
    assert_eq!(&a.expect_publish().await.payload[..], b"2");
    assert_eq!(&g.expect_publish().await.payload[..], b"1");
    b.stop().await;
}

/// Issue 18: under `--tenants` the node-wide `$SYS` is the operators',
/// read through `$tenant/$node/`, with no tenant called `default`; a
/// tenant's `clients/total` counts its clients (sessions), not its
/// connections ever made.
#[tokio::test]
async fn operators_read_the_node_wide_sys_and_tenants_their_own() {
    let phc = cheap_phc("pw");
    let file = format!(
        "{}[[tenant.users]]\nusername = \"ops\"\npassword_hash = \"{phc}\"\noperator = true\n",
        tenants(&["acme", "globex"], "")
    );
    let (b, _dir) = tenant_broker(&file, |_| {}).await;
    let _g1 = join(b.addr, Protocol::V5, "g1", "u@globex").await;
    let _g2 = join(b.addr, Protocol::V311, "g2", "s@globex").await;
    // Three connections made by one client: one session.
    for _ in 0..3 {
        drop(join(b.addr, Protocol::V5, "a1", "u@acme").await);
    }
    let mut a = join(b.addr, Protocol::V5, "a1", "u@acme").await;
    let mut ops = join(b.addr, Protocol::V5, "ops-1", "ops@globex").await;
    porchlight_broker::ops::sys::publish_stats(&b.broker);

    info!("--- the operator reads the node's figures");
    ops.subscribe("$tenant/$node/$SYS/broker/clients/connected", q(0))
        .await;
    let m = ops.expect_publish().await;
    assert_eq!(m.topic, "$tenant/$node/$SYS/broker/clients/connected");
    assert_eq!(&m.payload[..], b"4", "g1, g2, a1 and ops");
    // Read only, and only $SYS.
    let codes = ops.subscribe_codes(&[("$tenant/$node/x/#", 0)]).await;
    assert_eq!(codes, [reason::NOT_AUTHORIZED]);
    assert_eq!(
        ops.puback("$tenant/$node/$SYS/broker/fake").await,
        reason::NOT_AUTHORIZED
    );

    info!("--- anyone else is refused the prefix; their own $SYS is theirs");
    let codes = a.subscribe_codes(&[("$tenant/$node/$SYS/#", 0)]).await;
    assert_eq!(codes, [reason::NOT_AUTHORIZED]);
    a.subscribe("$SYS/broker/clients/total", q(0)).await;
    assert_eq!(&a.expect_publish().await.payload[..], b"1");
    a.subscribe("$SYS/broker/connections/total", q(0)).await;
    assert_eq!(&a.expect_publish().await.payload[..], b"4");
    b.stop().await;
}

#[tokio::test]
async fn sighup_rereads_the_tenants_file_and_closes_a_removed_tenants_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tenants.toml");
    std::fs::write(&path, tenants(&["acme", "globex"], "")).expect("write");
    let data = dir.path().join("data");
    let (mut child, addr) = spawn_binary_in(
        &data,
        &[
            "--tenants",
            path.to_str().expect("utf-8 path"),
            // Polling off: only the signal can make it re-read.
            "--auth-reload-interval",
            "0",
        ],
    );
    let mut a = join(addr, Protocol::V5, "a", "u@acme").await;
    let mut g = join(addr, Protocol::V311, "g", "u@globex").await;
    std::fs::write(&path, tenants(&["globex", "initech"], "")).expect("write");
    let refused = RawClient::connect_with(addr, as_user(Protocol::V5, "i", "u@initech")).await;
    assert_eq!(
        refused.1.reason,
        reason::BAD_USER_NAME_OR_PASSWORD,
        "not yet re-read"
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    a.expect_disconnect(Some(reason::NOT_AUTHORIZED)).await;
    let _i = join(addr, Protocol::V5, "i", "u@initech").await;
    g.subscribe("t", q(0)).await;
    let refused = RawClient::connect_with(addr, as_user(Protocol::V5, "a", "u@acme")).await;
    assert_eq!(refused.1.reason, reason::BAD_USER_NAME_OR_PASSWORD);
    kill9(&mut child);
}

pub(crate) fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn certificate_ou_and_san_uri_name_the_tenant_over_tls() {
    let pki = TestPki::new();
    for (field, pattern, cert) in [
        (
            "ou",
            "{tenant}",
            pki.client_cert_with_fields("dev-ou", Some("globex"), None),
        ),
        (
            "san-uri",
            "urn:tenant:{tenant}",
            pki.client_cert_with_fields("dev-uri", None, Some("urn:tenant:globex")),
        ),
    ] {
        info!("--- certificate_field = {field}");
        let text = format!(
            "[tenancy]\nresolve = [\"certificate\"]\ncertificate_field = \"{field}\"\n\
             certificate_pattern = \"{pattern}\"\n{}",
            tenants(&["acme", "globex"], "")
        );
        let (b, _dir) = tenant_broker(&text, |c| optional_client_certs(&pki, c)).await;
        let tls_addr = b.tls_addr.expect("tls listener");
        let connect = |config: Arc<rustls::ClientConfig>| async move {
            let tcp = TcpStream::connect(tls_addr).await.expect("tcp");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let s = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .expect("handshake");
            RawClient::over(s, Protocol::V5)
        };
        let c = connect(pki.client_with_cert(cert)).await;
        let (_c, ack) = c
            .handshake(connect_packet(Protocol::V5, "by-cert", true, 60))
            .await;
        assert_eq!(ack.reason, 0, "{field}");
        assert!(b.session_in("globex", "by-cert").is_some(), "{field}");
        // A certificate without the field names no tenant: 0x85.
        let other = pki.client_with_cert(pki.client_cert_in_org("dev-o", "acme"));
        let (_, ack) = connect(other)
            .await
            .handshake(connect_packet(Protocol::V5, "none", true, 60))
            .await;
        assert_eq!(ack.reason, reason::CLIENT_IDENTIFIER_NOT_VALID, "{field}");
        b.stop().await;
    }
}

#[tokio::test]
async fn ws_and_wss_listeners_have_their_default_tenants() {
    use porchlight_broker::net::tls::TlsVersion;
    let pki = TestPki::new();
    let text = format!(
        "[tenancy.listeners]\nws = \"acme\"\nwss = \"globex\"\n{}",
        tenants(&["acme", "globex"], "")
    );
    let (b, _dir) = tenant_broker(&text, |c| {
        pki.configure(c, TlsVersion::V1_2);
        c.tls_listen.clear();
        c.ws_listen = vec!["127.0.0.1:0".parse().expect("addr")];
        c.wss_listen = vec!["127.0.0.1:0".parse().expect("addr")];
        c.auth.allow_anonymous = true;
    })
    .await;
    let (ws, wss) = (b.ws_addr.expect("ws"), b.wss_addr.expect("wss"));
    let mut opts = rumqttc::MqttOptions::new(
        "over-ws",
        format!("ws://127.0.0.1:{}/mqtt", ws.port()),
        ws.port(),
    );
    opts.set_transport(rumqttc::Transport::Ws);
    let _ws_client = V4::connect_opts(opts).await;
    let mut opts = rumqttc::MqttOptions::new(
        "over-wss",
        format!("wss://localhost:{}/mqtt", wss.port()),
        wss.port(),
    );
    opts.set_transport(rumqttc::Transport::wss_with_config(
        rumqttc::TlsConfiguration::Rustls(pki.client(&[&rustls::version::TLS13], &[])),
    ));
    let _wss_client = V4::connect_opts(opts).await;
    wait_until("both sessions in their tenants", || {
        b.session_in("acme", "over-ws").is_some() && b.session_in("globex", "over-wss").is_some()
    })
    .await;
    assert!(b.session_in("globex", "over-ws").is_none());
    // The plain TCP listener has no default: an anonymous client there
    // names no tenant.
    let (_, ack) =
        RawClient::connect_with(b.addr, connect_packet(Protocol::V5, "tcp", true, 60)).await;
    assert_eq!(ack.reason, reason::CLIENT_IDENTIFIER_NOT_VALID);
    b.stop().await;
}
