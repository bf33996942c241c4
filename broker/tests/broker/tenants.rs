//! Tenants end to end: each identity method over real sockets (username
//! suffix, TLS SNI, client-certificate O, OU and SAN URI, the TCP, WS and
//! WSS listener defaults),
//! isolation (a property test over random tenants, filters and topics),
//! every quota at its limit with another tenant unaffected, `%t` in ACLs,
//! removing a tenant by editing the file and by SIGHUP to the real binary,
//! and shared gateways (`$tenant/<id>/` with grants, across a restart).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use porchlight_broker::codec::{reason, Packet, Protocol};
use porchlight_broker::ids::TenantId;
use porchlight_broker::tenant::quota::QuotaKind;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;
use tracing::info;

fn publish_bytes(
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
async fn tenant_broker(
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
fn cheap_phc(pw: &str) -> String {
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
fn tenants(names: &[&str], extra: &str) -> String {
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

fn as_user(p: Protocol, id: &str, user: &str) -> porchlight_broker::codec::Connect {
    let mut c = connect_packet(p, id, true, 60);
    c.username = Some(user.to_owned());
    c.password = Some(Bytes::from_static(b"pw"));
    c
}

async fn join(addr: std::net::SocketAddr, p: Protocol, id: &str, user: &str) -> RawClient {
    let (c, ack) = RawClient::connect_with(addr, as_user(p, id, user)).await;
    assert_eq!(ack.reason, 0, "{user} as {id}");
    c
}

fn usage(b: &TestBroker, t: &str) -> Arc<porchlight_broker::tenant::quota::Usage> {
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
    use porchlight_broker::tls::{ClientAuth, TlsVersion};
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
async fn connection_quotas_refuse_with_the_right_codes_and_spare_other_tenants() {
    let text = format!(
        "{}{}{}",
        tenants(
            &["small"],
            "[tenant.limits]\nmax_connections = 2\nprotocol_versions = [\"5\"]"
        ),
        tenants(&["slow"], "[tenant.limits]\nmax_connect_rate = 2"),
        tenants(&["other"], "")
    );
    let (b, _dir) = tenant_broker(&text, |c| c.auth.allow_anonymous = true).await;
    info!("--- max_connections");
    let _a = join(b.addr, Protocol::V5, "a", "u@small").await;
    let _b = join(b.addr, Protocol::V5, "b", "u@small").await;
    let refused = RawClient::connect_with(b.addr, as_user(Protocol::V5, "c", "u@small")).await;
    assert_eq!(refused.1.reason, reason::QUOTA_EXCEEDED);
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(join(b.addr, Protocol::V5, &format!("o{i}"), "u@other").await);
    }
    assert_eq!(usage(&b, "small").rejections(QuotaKind::Connections), 1);
    info!("--- a seat is given back when a connection ends");
    drop(_a);
    wait_until("seat released", || {
        usage(&b, "small")
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            < 2
    })
    .await;
    let _c = join(b.addr, Protocol::V5, "c", "u@small").await;
    info!("--- protocol_versions");
    let v3 = RawClient::connect_with(b.addr, as_user(Protocol::V311, "d", "u@small")).await;
    assert_eq!(v3.1.reason, 1, "3.1.1: unacceptable protocol version");
    info!("--- max_connect_rate: a burst of one second's worth, then 0x9F");
    let mut codes = Vec::new();
    for i in 0..4 {
        let c = RawClient::connect_with(b.addr, as_user(Protocol::V5, &format!("r{i}"), "u@slow"))
            .await;
        codes.push(c.1.reason);
    }
    assert_eq!(
        codes,
        vec![
            0,
            0,
            reason::CONNECTION_RATE_EXCEEDED,
            reason::CONNECTION_RATE_EXCEEDED
        ]
    );
    let _ = join(b.addr, Protocol::V5, "o-late", "u@other").await;
    b.stop().await;
}

#[tokio::test]
async fn message_rates_refuse_v5_throttle_v311_and_spare_other_tenants() {
    let text = format!(
        "{}{}",
        tenants(
            &["metered"],
            "[tenant.limits]\nmax_messages_in_per_second = 5"
        ),
        tenants(&["other"], "")
    );
    let (b, _dir) = tenant_broker(&text, |c| c.auth.allow_anonymous = true).await;
    info!("--- MQTT 5: past the burst, PUBACK 0x96");
    let mut v5 = join(b.addr, Protocol::V5, "m5", "u@metered").await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(v5.puback("m/t").await);
    }
    assert!(codes[..5].iter().all(|c| *c < 0x80), "{codes:?}");
    assert!(
        codes[5..]
            .iter()
            .all(|c| *c == reason::MESSAGE_RATE_TOO_HIGH),
        "{codes:?}"
    );
    // A QoS 0 publish over the rate is dropped and counted.
    v5.publish("m/t", q(0), 0, b"x").await;
    wait_until("QoS 0 counted as rate-limited", || {
        b.broker
            .metrics
            .dropped_count(porchlight_broker::metrics::DropReason::RateLimited)
            == 1
    })
    .await;
    info!("--- another tenant publishes freely meanwhile");
    let mut o = join(b.addr, Protocol::V5, "o", "u@other").await;
    for _ in 0..50 {
        assert!(o.puback("o/t").await < 0x80);
    }
    info!("--- MQTT 3.1.1: everything is taken, at the rate");
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the bucket refill
    let mut v3 = join(b.addr, Protocol::V311, "m3", "u@metered").await;
    let started = std::time::Instant::now();
    for _ in 0..10 {
        assert_eq!(v3.puback("m/t").await, 0);
    }
    // 5 in the burst, then 5 more at 5/s: at least ~0.8 s.
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert!(usage(&b, "metered").rejections(QuotaKind::MessagesIn) >= 3);
    b.stop().await;
}

#[tokio::test]
async fn subscription_qos_and_packet_size_limits() {
    let text = format!(
        "{}{}",
        tenants(
            &["tight"],
            "[tenant.limits]\nmax_subscriptions = 2\nmax_qos = 1\nmax_packet_size = 256"
        ),
        tenants(&["other"], "")
    );
    let (b, _dir) = tenant_broker(&text, |c| c.auth.allow_anonymous = true).await;
    let (mut c, ack) = RawClient::connect_with(b.addr, as_user(Protocol::V5, "s", "u@tight")).await;
    assert_eq!(ack.properties.maximum_qos, Some(1));
    assert_eq!(ack.properties.maximum_packet_size, Some(256));
    info!("--- max_subscriptions over the tenant, max_qos granted lower");
    let granted = c.subscribe_codes(&[("a", 2), ("b", 0), ("c", 0)]).await;
    assert_eq!(granted, vec![1, 0, reason::QUOTA_EXCEEDED]);
    // Replacing an existing subscription is not a new one.
    assert_eq!(c.subscribe_codes(&[("a", 0)]).await, vec![0]);
    let mut d = join(b.addr, Protocol::V311, "s2", "u@tight").await;
    assert_eq!(d.subscribe_codes(&[("d", 0)]).await, vec![0x80]);
    let mut o = join(b.addr, Protocol::V5, "o", "u@other").await;
    assert_eq!(
        o.subscribe_codes(&[("a", 2), ("b", 2), ("c", 2)]).await,
        vec![2, 2, 2]
    );
    info!("--- an unsubscribe frees a place");
    c.send(&Packet::Unsubscribe(
        porchlight_broker::codec::Unsubscribe {
            packet_id: 9,
            filters: vec!["b".into()],
            properties: Default::default(),
        },
    ))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::UnsubAck(_))));
    assert_eq!(d.subscribe_codes(&[("d", 0)]).await, vec![0]);
    info!("--- a QoS 2 publish is above the tenant's maximum");
    c.send(&Packet::Publish(publish_bytes(
        "a",
        q(2),
        5,
        Bytes::from_static(b"x"),
    )))
    .await;
    c.expect_disconnect(Some(reason::QOS_NOT_SUPPORTED)).await;
    info!("--- a packet above max_packet_size");
    let mut big = join(b.addr, Protocol::V5, "big", "u@tight").await;
    big.send(&Packet::Publish(publish_bytes(
        "a",
        q(0),
        0,
        Bytes::from(vec![0u8; 400]),
    )))
    .await;
    big.expect_disconnect(Some(reason::PACKET_TOO_LARGE)).await;
    let mut fine = join(b.addr, Protocol::V5, "big", "u@other").await;
    fine.send(&Packet::Publish(publish_bytes(
        "a",
        q(0),
        0,
        Bytes::from(vec![0u8; 400]),
    )))
    .await;
    fine.expect_silence(Duration::from_millis(200)).await;
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
    porchlight_broker::sys::publish_stats(&b.broker);
    a.subscribe("$SYS/broker/clients/connected", q(0)).await;
    g.subscribe("$SYS/broker/clients/connected", q(0)).await;
    assert_eq!(&a.expect_publish().await.payload[..], b"2");
    assert_eq!(&g.expect_publish().await.payload[..], b"1");
    b.stop().await;
}

/// Reads packets until a PUBLISH, skipping acknowledgements of our own.
async fn next_publish(c: &mut RawClient) -> porchlight_broker::codec::Publish {
    loop {
        match c.recv().await {
            Some(Packet::PubAck(_)) => {}
            Some(Packet::Publish(m)) => return m,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn gateway_grants_allow_exactly_what_they_say() {
    let phc = cheap_phc("pw");
    let grants = |ids: &str| {
        format!(
            "{}[[tenant]]\nid = \"acme\"\n[tenant.limits]\nmax_qos = 1\n\
             [[tenant.acl.rules]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"dev/#\"\n\
             [[tenant.users]]\nusername = \"u\"\npassword_hash = \"{phc}\"\n\
             [[tenant]]\nid = \"gw\"\n\
             [[tenant.users]]\nusername = \"hub\"\npassword_hash = \"{phc}\"\ntenants = [{ids}]\n\
             [[tenant.users]]\nusername = \"plain\"\npassword_hash = \"{phc}\"\n",
            tenants(&["globex", "initech"], "")
        )
    };
    let (b, dir) = tenant_broker(&grants("\"acme\", \"globex\""), |_| {}).await;
    let mut hub = join(b.addr, Protocol::V5, "hub", "hub@gw").await;
    let mut dev = join(b.addr, Protocol::V5, "dev", "u@acme").await;
    let mut glob = join(b.addr, Protocol::V5, "g", "u@globex").await;
    let mut ini = join(b.addr, Protocol::V5, "i", "u@initech").await;
    dev.subscribe("dev/#", q(1)).await;

    info!("--- subscriptions: granted tenants under their ACLs and quotas, others refused");
    let codes = hub
        .subscribe_codes(&[
            ("$tenant/acme/dev/#", 1),
            ("$tenant/globex/#", 1),
            ("$tenant/initech/#", 1),
            ("$tenant/acme/other/#", 1),
            ("$tenant/acme/dev/q2", 2),
            ("$tenant/gw/#", 1),
            ("$tenant/acme", 1),
        ])
        .await;
    assert_eq!(
        codes,
        [
            1,
            1,
            reason::NOT_AUTHORIZED,
            reason::NOT_AUTHORIZED,
            1, // acme's max_qos
            reason::NOT_AUTHORIZED,
            reason::TOPIC_FILTER_INVALID
        ]
    );
    assert_eq!(
        usage(&b, "acme")
            .subscriptions
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );

    info!("--- deliveries carry the prefix; an ungranted tenant's never arrive");
    ini.puback("x").await;
    dev.puback("dev/1").await;
    let m = next_publish(&mut hub).await;
    assert_eq!(m.topic, "$tenant/acme/dev/1");
    let _own = next_publish(&mut dev).await;
    glob.puback("g/1").await;
    assert_eq!(next_publish(&mut hub).await.topic, "$tenant/globex/g/1");
    hub.expect_silence(Duration::from_millis(200)).await;

    info!("--- publishes: into a granted tenant, unprefixed to its devices");
    let before = usage(&b, "acme")
        .messages_in
        .load(std::sync::atomic::Ordering::Relaxed);
    hub.publish("$tenant/acme/dev/2", q(1), 5, b"cmd").await;
    let mut got_ack = false;
    let mut got_echo = false;
    while !(got_ack && got_echo) {
        match hub.recv().await {
            Some(Packet::PubAck(a)) => {
                assert_eq!(a.reason, reason::SUCCESS);
                got_ack = true;
            }
            // Its own subscription to acme's dev/# sees it too.
            Some(Packet::Publish(m)) => {
                assert_eq!(m.topic, "$tenant/acme/dev/2");
                got_echo = true;
            }
            other => panic!("{other:?}"),
        }
    }
    let m = next_publish(&mut dev).await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("dev/2", &b"cmd"[..]));
    assert_eq!(
        usage(&b, "acme")
            .messages_in
            .load(std::sync::atomic::Ordering::Relaxed),
        before + 1,
        "counted in the target tenant"
    );
    assert_eq!(
        hub.puback("$tenant/initech/x").await,
        reason::NOT_AUTHORIZED
    );
    assert_eq!(
        hub.puback("$tenant/acme/other").await,
        reason::NOT_AUTHORIZED,
        "acme's ACL"
    );
    hub.send(&Packet::Publish(publish(
        "$tenant/acme/dev/q",
        q(2),
        6,
        b"x",
    )))
    .await;
    // Above acme's max_qos (CONNACK told the gateway its own tenant's):
    // this message is refused, the connection stays.
    match hub.recv().await {
        Some(Packet::PubRec(a)) => assert_eq!(a.reason, reason::QUOTA_EXCEEDED),
        other => panic!("expected PUBREC 0x97, got {other:?}"),
    }
    assert_eq!(
        hub.puback("$tenant/globex/still-here").await,
        reason::SUCCESS
    );
    drop(hub);
    let mut hub = join(b.addr, Protocol::V5, "hub2", "hub@gw").await;
    // Unprefixed: its own tenant, which acme's devices never see.
    assert_eq!(hub.puback("dev/3").await, reason::NO_MATCHING_SUBSCRIBERS);
    dev.expect_silence(Duration::from_millis(200)).await;

    info!("--- retained messages and shared groups of the target tenant");
    let mut r = publish("dev/r", q(0), 0, b"kept");
    r.retain = true;
    dev.send(&Packet::Publish(r)).await;
    let _ = next_publish(&mut dev).await; // its own delivery
    let codes = hub
        .subscribe_codes(&[
            ("$tenant/acme/dev/r", 1),
            ("$tenant/globex/$share/grp/s/#", 1),
        ])
        .await;
    assert_eq!(codes, [1, 1]);
    let m = next_publish(&mut hub).await;
    assert_eq!((m.topic.as_str(), m.retain), ("$tenant/acme/dev/r", true));
    glob.puback("s/1").await;
    assert_eq!(next_publish(&mut hub).await.topic, "$tenant/globex/s/1");

    info!("--- no-local is the publishing session's, not a same-named client's of the tenant");
    let mut same_id = join(b.addr, Protocol::V5, "hub2", "u@globex").await;
    let mut nl = porchlight_broker::codec::SubscriptionOptions::new(q(0));
    nl.no_local = true;
    same_id
        .subscribe_opts("nl", nl, porchlight_broker::codec::Properties::default())
        .await;
    hub.subscribe_opts(
        "$tenant/globex/nl",
        nl,
        porchlight_broker::codec::Properties::default(),
    )
    .await;
    hub.publish("$tenant/globex/nl", q(0), 0, b"n").await;
    assert_eq!(same_id.expect_publish().await.topic, "nl");
    hub.expect_silence(Duration::from_millis(200)).await;

    info!("--- without a grant the prefix is refused (v5 0x87, 3.1.1 0x80)");
    let mut plain = join(b.addr, Protocol::V5, "p", "plain@gw").await;
    assert_eq!(
        plain.subscribe_codes(&[("$tenant/acme/dev/#", 1)]).await,
        [reason::NOT_AUTHORIZED]
    );
    assert_eq!(
        plain.puback("$tenant/acme/dev/x").await,
        reason::NOT_AUTHORIZED
    );
    let mut plain3 = join(b.addr, Protocol::V311, "p3", "plain@gw").await;
    assert_eq!(
        plain3.subscribe_codes(&[("$tenant/acme/dev/#", 1)]).await,
        [0x80]
    );
    // A device of acme cannot use it either.
    assert_eq!(
        dev.subscribe_codes(&[("$tenant/globex/#", 1)]).await,
        [reason::NOT_AUTHORIZED]
    );
    dev.expect_silence(Duration::from_millis(100)).await;

    info!("--- a reload that withdraws a grant removes its subscriptions at once");
    let m = b.broker.metrics.clone();
    std::fs::write(dir.path().join("tenants.toml"), grants("\"globex\"")).expect("write");
    wait_until("reloaded", || {
        porchlight_broker::metrics::Metrics::get(&m.auth_reloads) == 1
    })
    .await;
    wait_until("acme subscriptions of the hub gone", || {
        b.session_in("gw", "hub2").is_some_and(|s| {
            !s.lock()
                .subscriptions
                .keys()
                .any(|f| f.as_str().starts_with("$tenant/acme/"))
        })
    })
    .await;
    assert_eq!(
        usage(&b, "acme")
            .subscriptions
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    dev.puback("dev/5").await;
    let _ = next_publish(&mut dev).await;
    hub.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(
        hub.puback("$tenant/acme/dev/6").await,
        reason::NOT_AUTHORIZED
    );
    // Its globex subscriptions stay.
    glob.puback("s/2").await;
    assert_eq!(next_publish(&mut hub).await.topic, "$tenant/globex/s/2");
    b.stop().await;
}

#[tokio::test]
async fn a_durable_gateway_session_keeps_its_tenants_messages_across_a_restart() {
    let phc = cheap_phc("pw");
    let text = format!(
        "{}[[tenant]]\nid = \"gw\"\n\
         [[tenant.users]]\nusername = \"hub\"\npassword_hash = \"{phc}\"\ntenants = [\"acme\"]\n",
        tenants(&["acme"], "")
    );
    let (b, dir) = tenant_broker(&text, |_| {}).await;
    let mut c = as_user(Protocol::V5, "hub", "hub@gw");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let (mut hub, ack) = RawClient::connect_with(b.addr, c.clone()).await;
    assert_eq!(ack.reason, 0);
    hub.subscribe("$tenant/acme/t/#", q(1)).await;
    drop(hub);
    b.wait_offline_in("gw", "hub").await;
    let mut dev = join(b.addr, Protocol::V5, "dev", "u@acme").await;
    assert_eq!(dev.puback("t/queued").await, reason::SUCCESS);
    let b = b.restart().await;
    let (mut hub, ack) = RawClient::connect_with(b.addr, c.clone()).await;
    assert!(ack.session_present);
    let m = hub.expect_publish().await;
    assert_eq!(m.topic, "$tenant/acme/t/queued");
    // And the subscription came back in acme's namespace.
    let mut dev = join(b.addr, Protocol::V5, "dev", "u@acme").await;
    dev.puback("t/live").await;
    let m = next_publish(&mut hub).await;
    assert_eq!(m.topic, "$tenant/acme/t/live");
    info!("--- a grant withdrawn while the gateway is offline: its subscription and queue go");
    hub.send(&Packet::PubAck(porchlight_broker::codec::Ack::new(
        m.packet_id,
        0,
    )))
    .await;
    drop(hub);
    b.wait_offline_in("gw", "hub").await;
    assert_eq!(dev.puback("t/waiting").await, reason::SUCCESS);
    let session = b.session_in("gw", "hub").expect("session");
    assert_eq!(session.lock().queue.len(), 1);
    let m = b.broker.metrics.clone();
    std::fs::write(
        dir.path().join("tenants.toml"),
        text.replace("tenants = [\"acme\"]", ""),
    )
    .expect("write");
    wait_until("reloaded", || {
        porchlight_broker::metrics::Metrics::get(&m.auth_reloads) == 1
    })
    .await;
    // (t/queued is still unacknowledged: in flight, it goes too.)
    wait_until("queue, in-flight and subscription gone", || {
        let st = session.lock();
        st.queue.is_empty() && st.inflight.is_empty() && st.subscriptions.is_empty()
    })
    .await;
    assert_eq!(load(&usage(&b, "acme").subscriptions), 0);
    assert_eq!(load(&usage(&b, "gw").queued_bytes), 0);
    assert_eq!(dev.puback("t/after").await, reason::NO_MATCHING_SUBSCRIBERS);
    let (mut hub, ack) = RawClient::connect_with(b.addr, c).await;
    assert!(ack.session_present);
    hub.expect_silence(Duration::from_millis(200)).await;
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

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn retained_persistent_session_and_queued_byte_limits() {
    let limited = |persistent: u32| {
        format!(
            "{}{}",
            tenants(
                &["acme"],
                &format!(
                    "[tenant.limits]\nmax_retained_messages = 2\nmax_retained_bytes = 1000\n\
                     max_persistent_sessions = {persistent}\nmax_queued_bytes = 300\n"
                ),
            ),
            tenants(&["globex"], "")
        )
    };
    let (b, dir) = tenant_broker(&limited(1), |_| {}).await;
    let retain = |topic: &str, payload: Bytes| {
        let mut m = publish_bytes(topic, q(1), 3, payload);
        m.retain = true;
        Packet::Publish(m)
    };
    async fn ack(c: &mut RawClient) -> u8 {
        match c.recv().await {
            Some(Packet::PubAck(a)) => a.reason,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    info!("--- retained messages: count and bytes, replacing and deleting stay allowed");
    let mut a = join(b.addr, Protocol::V5, "a", "u@acme").await;
    let small = || Bytes::from_static(b"v");
    for (topic, payload, want) in [
        ("r/1", small(), reason::NO_MATCHING_SUBSCRIBERS),
        ("r/2", small(), reason::NO_MATCHING_SUBSCRIBERS),
        ("r/3", small(), reason::QUOTA_EXCEEDED),
        (
            "r/1",
            Bytes::from_static(b"v2"),
            reason::NO_MATCHING_SUBSCRIBERS,
        ),
        ("r/2", Bytes::new(), reason::NO_MATCHING_SUBSCRIBERS),
        ("r/3", small(), reason::NO_MATCHING_SUBSCRIBERS),
        ("r/1", Bytes::from(vec![b'x'; 2000]), reason::QUOTA_EXCEEDED),
    ] {
        a.send(&retain(topic, payload)).await;
        assert_eq!(ack(&mut a).await, want, "{topic}");
    }
    let u = usage(&b, "acme");
    assert_eq!(load(&u.retained_messages), 2);
    // The broker's own retained $SYS topics do not count.
    porchlight_broker::sys::publish_stats(&b.broker);
    assert_eq!(load(&u.retained_messages), 2);
    assert_eq!(u.rejections(QuotaKind::RetainedMessages), 1);
    assert_eq!(u.rejections(QuotaKind::RetainedBytes), 1);
    // 3.1.1 cannot be told: its retained message over the limit is dropped.
    let mut a3 = join(b.addr, Protocol::V311, "a3", "s@acme").await;
    a3.send(&retain("r/4", small())).await;
    assert_eq!(ack(&mut a3).await, 0);
    let mut check = join(b.addr, Protocol::V5, "check", "p@acme").await;
    check.subscribe("r/#", q(0)).await;
    let mut seen = BTreeMap::new();
    for _ in 0..2 {
        let m = check.expect_publish().await;
        seen.insert(m.topic.clone(), m.payload.clone());
    }
    check.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["r/1", "r/3"]
    );
    assert_eq!(&seen["r/1"][..], b"v2");
    let mut g = join(b.addr, Protocol::V5, "g", "u@globex").await;
    for i in 0..5 {
        g.send(&retain(&format!("r/{i}"), small())).await;
        assert!(ack(&mut g).await < 0x80, "globex is unaffected");
    }

    info!("--- persistent sessions: a new durable session over the limit is refused");
    let durable = |p: Protocol, id: &str, user: &str| {
        let mut c = as_user(p, id, user);
        c.clean_start = false;
        if p == Protocol::V5 {
            c.properties.session_expiry_interval = Some(600);
        }
        c
    };
    let (p1, ack1) = RawClient::connect_with(b.addr, durable(Protocol::V5, "p1", "u@acme")).await;
    assert_eq!(ack1.reason, 0);
    let (_, ack2) = RawClient::connect_with(b.addr, durable(Protocol::V5, "p2", "u@acme")).await;
    assert_eq!(ack2.reason, reason::QUOTA_EXCEEDED);
    let (_, ack3) = RawClient::connect_with(b.addr, durable(Protocol::V311, "p3", "u@acme")).await;
    assert_eq!(ack3.reason, 3, "3.1.1: server unavailable");
    let (mut gp, ackg) =
        RawClient::connect_with(b.addr, durable(Protocol::V5, "p2", "u@globex")).await;
    assert_eq!(ackg.reason, 0, "globex is unaffected");
    gp.subscribe("q/#", q(1)).await;
    drop(gp);
    b.wait_offline_in("globex", "p2").await;
    assert_eq!(load(&usage(&b, "acme").persistent_sessions), 1);
    assert_eq!(
        usage(&b, "acme").rejections(QuotaKind::PersistentSessions),
        2
    );

    info!("--- queued bytes: an offline session's queue stops at the tenant's bytes");
    let mut p1 = p1;
    p1.subscribe("q/#", q(1)).await;
    drop(p1);
    b.wait_offline_in("acme", "p1").await;
    for i in 0..4u16 {
        a.send(&Packet::Publish(publish_bytes(
            "q/x",
            q(1),
            10 + i,
            Bytes::from(vec![b'q'; 100]),
        )))
        .await;
        assert!(ack(&mut a).await < 0x80);
    }
    for i in 0..4u16 {
        g.send(&Packet::Publish(publish_bytes(
            "q/x",
            q(1),
            20 + i,
            Bytes::from(vec![b'q'; 100]),
        )))
        .await;
        assert!(ack(&mut g).await < 0x80);
    }
    assert!(
        load(&usage(&b, "globex").queued_bytes) >= 400,
        "globex queues all four"
    );
    let u = usage(&b, "acme");
    assert!(load(&u.queued_bytes) <= 300, "{}", load(&u.queued_bytes));
    assert_eq!(u.rejections(QuotaKind::QueuedBytes), 2);
    // Two here, and the 3.1.1 retained publish above (the v5 ones were
    // refused with 0x97, not dropped).
    assert_eq!(
        u.drops(porchlight_broker::metrics::DropReason::TenantQuota),
        3
    );
    let (mut p1, ack1) =
        RawClient::connect_with(b.addr, durable(Protocol::V5, "p1", "u@acme")).await;
    assert!(ack1.session_present);
    for _ in 0..2 {
        let m = p1.expect_publish().await;
        p1.send(&Packet::PubAck(porchlight_broker::codec::Ack::new(
            m.packet_id,
            0,
        )))
        .await;
    }
    wait_until("queue drained", || load(&u.queued_bytes) == 0).await;

    info!("--- the metrics carry all of it");
    let mut text = String::new();
    b.broker.tenants.render(&mut text);
    for line in [
        "porchlight_tenant_retained_messages{tenant=\"acme\"} 2",
        "porchlight_tenant_persistent_sessions{tenant=\"acme\"} 1",
        "porchlight_tenant_quota_rejections_total{tenant=\"acme\",kind=\"queued_bytes\"} 2",
        "porchlight_tenant_messages_dropped_total{tenant=\"acme\",reason=\"tenant_quota\"} 3",
        "porchlight_tenant_retained_messages{tenant=\"globex\"} 5",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(load(&u.messages_out) >= 4 && load(&u.bytes_out) >= 200);

    info!("--- a reload raises the limit for new sessions");
    let m = b.broker.metrics.clone();
    std::fs::write(dir.path().join("tenants.toml"), limited(2)).expect("write");
    wait_until("reloaded", || {
        porchlight_broker::metrics::Metrics::get(&m.auth_reloads) == 1
    })
    .await;
    let (_, ack2) = RawClient::connect_with(b.addr, durable(Protocol::V5, "p2", "u@acme")).await;
    assert_eq!(ack2.reason, 0);
    b.stop().await;
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
    use porchlight_broker::tls::TlsVersion;
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
