use std::net::SocketAddr;
use std::time::Duration;

use async_tungstenite::tungstenite::client::IntoClientRequest;
use porchlight_broker::codec::{reason, Packet, Protocol};
use porchlight_broker::metrics::Metrics;
use porchlight_broker::net::tls::TlsVersion;
use porchlight_broker::net::ListenerKind;
use rumqttc::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

type WsClient =
    ws_stream_tungstenite::WsStream<async_tungstenite::tokio::TokioAdapter<Box<dyn Io>>>;

/// A WebSocket client stream to `path`, offering `subprotocol`.
async fn ws_connect(
    stream: Box<dyn Io>,
    addr: SocketAddr,
    path: &str,
    subprotocol: Option<&str>,
) -> Result<WsClient, async_tungstenite::tungstenite::Error> {
    ws_connect_from(stream, addr, path, subprotocol, None).await
}

/// `ws_connect`, sending `origin` as a browser would.
async fn ws_connect_from(
    stream: Box<dyn Io>,
    addr: SocketAddr,
    path: &str,
    subprotocol: Option<&str>,
    origin: Option<&str>,
) -> Result<WsClient, async_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", o.parse().expect("header"));
    }
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
    }
    let (ws, resp) = async_tungstenite::tokio::client_async(req, stream).await?;
    if subprotocol.is_some() {
        assert_eq!(
            resp.headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.as_bytes()),
            subprotocol.map(str::as_bytes),
            "the offered subprotocol is selected"
        );
    }
    Ok(ws_stream_tungstenite::WsStream::new(ws))
}

async fn tcp(addr: SocketAddr) -> Box<dyn Io> {
    Box::new(TcpStream::connect(addr).await.expect("connect"))
}

#[tokio::test]
async fn rumqttc_publishes_and_subscribes_over_ws_and_wss() {
    let pki = TestPki::new();
    let b = TestBroker::with(|c| {
        pki.configure(c, TlsVersion::V1_2);
        c.tls_listen.clear();
        c.ws_listen = vec!["127.0.0.1:0".parse().expect("addr")];
        c.wss_listen = vec!["127.0.0.1:0".parse().expect("addr")];
    })
    .await;
    let ws = b.ws_addr.expect("ws");
    let wss = b.wss_addr.expect("wss");

    let mut opts = v5::MqttOptions::new(
        "ws-sub",
        format!("ws://127.0.0.1:{}/mqtt", ws.port()),
        ws.port(),
    );
    opts.set_transport(rumqttc::Transport::Ws);
    opts.set_max_packet_size(Some(1 << 20));
    let mut sub = V5::connect_opts(opts).await;
    sub.client
        .subscribe("web/t", v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;

    let mut opts = rumqttc::MqttOptions::new(
        "wss-pub",
        format!("wss://localhost:{}/mqtt", wss.port()),
        wss.port(),
    );
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_transport(rumqttc::Transport::wss_with_config(
        rumqttc::TlsConfiguration::Rustls(pki.client(&[&rustls::version::TLS13], &[])),
    ));
    let publisher = V4::connect_opts(opts).await;
    for i in 0..3u8 {
        publisher
            .client
            .publish("web/t", rumqttc::QoS::AtLeastOnce, false, vec![i; 100_000])
            .await
            .expect("publish");
    }
    for i in 0..3u8 {
        let p = sub.next_publish().await;
        assert_eq!(&p.payload[..], &vec![i; 100_000][..], "in order, intact");
    }
    b.stop().await;
}

#[tokio::test]
async fn websocket_upgrades_need_the_path_and_the_mqtt_subprotocol() {
    let b = TestBroker::with(|c| {
        c.ws_listen = vec!["127.0.0.1:0".parse().expect("addr")];
        c.ws_path = "/devices".into();
    })
    .await;
    let ws = b.ws_addr.expect("ws");
    let err = |r: Result<WsClient, _>| match r {
        Err(async_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, got an upgrade"),
    };
    assert_eq!(
        err(ws_connect(tcp(ws).await, ws, "/mqtt", Some("mqtt")).await),
        404
    );
    assert_eq!(
        err(ws_connect(tcp(ws).await, ws, "/devices", None).await),
        400
    );
    assert_eq!(
        err(ws_connect(tcp(ws).await, ws, "/devices", Some("wamp")).await),
        400
    );
    // Plain MQTT bytes at a WebSocket listener: refused, counted.
    let mut raw = TcpStream::connect(ws).await.expect("connect");
    raw.write_all(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 0])
        .await
        .expect("write");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, raw.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "no MQTT answer at a WebSocket listener");
    let m = b.broker.metrics.clone();
    wait_until("four refused upgrades", || {
        Metrics::get(&m.ws_handshake_failures) == 4
    })
    .await;
    // The old spelling some clients use is accepted, and raw MQTT flows in
    // binary frames.
    let stream = ws_connect(tcp(ws).await, ws, "/devices", Some("mqttv3.1"))
        .await
        .expect("upgrade");
    let (mut c, ack) = RawClient::over(stream, Protocol::V5)
        .handshake(connect_packet(Protocol::V5, "raw-ws", true, 30))
        .await;
    assert_eq!(ack.reason, 0);
    c.subscribe("ws/raw", q(0)).await;
    c.publish("ws/raw", q(0), 0, b"loop").await;
    assert_eq!(&c.expect_publish().await.payload[..], b"loop");
    b.stop().await;
}

/// Issue 18: a plain HTTP request at a WebSocket listener got an empty
/// reply; it gets an HTTP answer now (426 on the path, 404 off it).
#[tokio::test]
async fn a_plain_http_request_gets_an_http_answer() {
    let b = TestBroker::with(|c| {
        c.ws_listen = vec!["127.0.0.1:0".parse().expect("addr")];
        c.ws_path = "/devices".into();
    })
    .await;
    let ws = b.ws_addr.expect("ws");
    for (target, status) in [("/devices", "426"), ("/devices?a=1", "426"), ("/", "404")] {
        let mut raw = TcpStream::connect(ws).await.expect("connect");
        raw.write_all(format!("GET {target} HTTP/1.1\r\nHost: broker\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, raw.read_to_end(&mut answer))
            .await
            .expect("answered and closed in time")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{target}: {answer}"
        );
    }
    b.stop().await;
}

#[tokio::test]
async fn websocket_origins_can_be_restricted_to_a_list() {
    let b = TestBroker::with(|c| {
        c.ws_listen = vec!["127.0.0.1:0".parse().expect("addr")];
        c.ws_allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let ws = b.ws_addr.expect("ws");
    let upgrade = |origin: Option<&'static str>| async move {
        ws_connect_from(tcp(ws).await, ws, "/mqtt", Some("mqtt"), origin).await
    };
    // A page on another site: 403, counted.
    match upgrade(Some("https://evil.example")).await {
        Err(async_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403)
        }
        Err(e) => panic!("expected 403, got {e}"),
        Ok(_) => panic!("expected 403, got an upgrade"),
    }
    let m = b.broker.metrics.clone();
    wait_until("the refused upgrade counted", || {
        Metrics::get(&m.ws_handshake_failures) == 1
    })
    .await;
    // The listed origin (any case) and a device that sends none get in and
    // speak MQTT.
    for (origin, id) in [(Some("https://App.Example"), "browser"), (None, "device")] {
        let stream = upgrade(origin).await.expect("upgrade");
        let (mut c, ack) = RawClient::over(stream, Protocol::V5)
            .handshake(connect_packet(Protocol::V5, id, true, 30))
            .await;
        assert_eq!(ack.reason, 0);
        c.subscribe("ws/origin", q(0)).await;
        c.publish("ws/origin", q(0), 0, id.as_bytes()).await;
        assert_eq!(&c.expect_publish().await.payload[..], id.as_bytes());
    }
    b.stop().await;
}

#[tokio::test]
async fn a_text_frame_closes_the_connection() {
    let b = TestBroker::with(|c| c.ws_listen = vec!["127.0.0.1:0".parse().expect("addr")]).await;
    let ws = b.ws_addr.expect("ws");
    let mut req = format!("ws://{ws}/mqtt")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let (mut socket, _) = async_tungstenite::tokio::client_async(req, tcp(ws).await)
        .await
        .expect("upgrade");
    socket
        .send(async_tungstenite::tungstenite::Message::text(
            "CONNECT please",
        ))
        .await
        .expect("send");
    // Read what comes back as bytes: nothing, then the end.
    let mut stream = ws_stream_tungstenite::WsStream::new(socket);
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "the broker closed the connection");
    b.stop().await;
}

// --- PROXY protocol ---

fn v2_header(source: &str, local: bool) -> Vec<u8> {
    let command = if local {
        ppp::v2::Command::Local
    } else {
        ppp::v2::Command::Proxy
    };
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | command,
        ppp::v2::Protocol::Stream,
        (
            source.parse::<SocketAddr>().expect("addr"),
            "10.0.0.1:1883".parse::<SocketAddr>().expect("addr"),
        ),
    )
    .build()
    .expect("header")
}

fn connect_bytes(id: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    porchlight_broker::codec::encode(
        &Packet::Connect(Box::new(connect_packet(Protocol::V5, id, true, 30))),
        Protocol::V5,
        &mut out,
    );
    out.to_vec()
}

/// Sends `prefix` and CONNECT in one write (as a load balancer coalesces
/// them), then reads the CONNACK through a raw client.
async fn via_proxy(stream: Box<dyn Io>, prefix: &[u8], id: &str) -> Option<RawClient> {
    let mut c = RawClient::over(stream, Protocol::V5);
    let mut bytes = prefix.to_vec();
    bytes.extend(connect_bytes(id));
    c.send_bytes(&bytes).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) if a.reason == 0 => Some(c),
        Some(p) => panic!("unexpected {p:?}"),
        None => None,
    }
}

const LAN_ONLY: &str = r#"
[acl]
default = "deny"
[[acl.rules]]
permission = "allow"
action = "publish"
topic = "lan/#"
address = "192.0.2.0/24"
"#;

#[tokio::test]
async fn proxy_headers_v1_and_v2_give_the_real_address_to_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, LAN_ONLY).expect("write");
    let b = TestBroker::with(|c| {
        c.proxy_protocol.kinds = vec![ListenerKind::Tcp];
        c.auth.file = Some(auth.clone());
        c.auth.allow_anonymous = true;
    })
    .await;
    let a = b.addr;
    let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\r\n";
    let mut lan = via_proxy(tcp(a).await, v1, "lan-v1")
        .await
        .expect("v1 accepted");
    assert_eq!(lan.puback("lan/x").await, reason::NO_MATCHING_SUBSCRIBERS);
    let mut lan6 = via_proxy(tcp(a).await, &v2_header("192.0.2.9:4000", false), "lan-v2")
        .await
        .expect("v2 accepted");
    assert_eq!(lan6.puback("lan/x").await, reason::NO_MATCHING_SUBSCRIBERS);
    let mut wan = via_proxy(tcp(a).await, &v2_header("[2001:db8::7]:4000", false), "wan")
        .await
        .expect("v2 accepted");
    assert_eq!(
        wan.puback("lan/x").await,
        reason::NOT_AUTHORIZED,
        "not from 192.0.2.0/24"
    );
    // An IPv4-mapped IPv6 source is the IPv4 address to rules.
    let mapped = b"PROXY TCP6 ::ffff:192.0.2.8 ::1 51000 1883\r\n";
    let mut m = via_proxy(tcp(a).await, mapped, "mapped")
        .await
        .expect("v1 TCP6");
    assert_eq!(m.puback("lan/x").await, reason::NO_MATCHING_SUBSCRIBERS);
    // LOCAL (a load balancer's health check) keeps the socket's address.
    let mut local = via_proxy(tcp(a).await, &v2_header("192.0.2.1:1", true), "local")
        .await
        .expect("LOCAL accepted");
    assert_eq!(
        local.puback("lan/x").await,
        reason::NOT_AUTHORIZED,
        "127.0.0.1"
    );
    b.stop().await;
}

#[tokio::test]
async fn missing_or_malformed_proxy_headers_close_the_connection() {
    let b = TestBroker::with(|c| {
        c.proxy_protocol.kinds = vec![ListenerKind::Tcp];
        c.connect_timeout = Duration::from_secs(1);
    })
    .await;
    let a = b.addr;
    for (what, prefix) in [
        ("no header", Vec::new()),
        ("HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            "bad v1",
            b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n".to_vec(),
        ),
        ("v2 with a bad family", {
            let mut h = v2_header("192.0.2.7:1", false);
            h[13] = 0x91;
            h
        }),
    ] {
        assert!(
            via_proxy(tcp(a).await, &prefix, what).await.is_none(),
            "{what}"
        );
    }
    let m = b.broker.metrics.clone();
    wait_until("four refused headers", || {
        Metrics::get(&m.proxy_header_errors) == 4
    })
    .await;
    assert_eq!(Metrics::get(&m.clients_connected), 0);
    b.stop().await;
}

#[tokio::test]
async fn proxy_headers_on_tls_and_websocket_listeners() {
    let pki = TestPki::new();
    let b = TestBroker::with(|c| {
        pki.configure(c, TlsVersion::V1_2);
        c.ws_listen = vec!["127.0.0.1:0".parse().expect("addr")];
        c.proxy_protocol.kinds = vec![ListenerKind::Tls, ListenerKind::Ws];
    })
    .await;
    let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 8883\r\n";
    // TLS: the header, then the ClientHello on the same connection.
    let tls_addr = b.tls_addr.expect("tls");
    let mut raw = TcpStream::connect(tls_addr).await.expect("connect");
    raw.write_all(v1).await.expect("header");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let s = tokio_rustls::TlsConnector::from(pki.client(&[&rustls::version::TLS13], &[]))
        .connect(name, raw)
        .await
        .expect("handshake after the header");
    assert!(via_proxy(Box::new(s), b"", "tls-proxied").await.is_some());
    // WebSocket: the header, then the HTTP upgrade.
    let ws = b.ws_addr.expect("ws");
    let mut raw = TcpStream::connect(ws).await.expect("connect");
    raw.write_all(v1).await.expect("header");
    let stream = ws_connect(Box::new(raw), ws, "/mqtt", Some("mqtt"))
        .await
        .expect("upgrade after the header");
    assert!(via_proxy(Box::new(stream), b"", "ws-proxied")
        .await
        .is_some());
    // The plain TCP listener was not named: no header expected there.
    let _plain = RawClient::connect(b.addr, Protocol::V5, "plain").await;
    b.stop().await;
}

#[test]
fn listener_flags_are_checked() {
    use clap::Parser;
    for (args, flag) in [
        (
            vec!["--allow-anonymous", "--proxy-protocol", "udp"],
            "--proxy-protocol",
        ),
        (
            vec!["--allow-anonymous", "--proxy-protocol", "127.0.0.1:9"],
            "--proxy-protocol",
        ),
        (vec!["--ws-path", "mqtt"], "--ws-path"),
        (vec!["--wss-listen", "127.0.0.1:0"], "--tls-cert"),
        (
            vec![
                "--ws-listen",
                "127.0.0.1:0",
                "--ws-allowed-origins",
                "app.example",
            ],
            "--ws-allowed-origins",
        ),
        (
            vec!["--ws-allowed-origins", "https://app.example"],
            "--ws-allowed-origins",
        ),
    ] {
        let mut argv = vec!["porchlight"];
        argv.extend(&args);
        let err = porchlight_broker::Cli::parse_from(argv)
            .validate()
            .expect_err("invalid");
        assert!(err.to_string().contains(flag), "{args:?}: {err}");
    }
    let ok = porchlight_broker::Cli::parse_from([
        "porchlight",
        "--allow-anonymous",
        "--listen",
        "127.0.0.1:1883",
        "--proxy-protocol",
        "127.0.0.1:1883,ws",
    ])
    .validate()
    .expect("valid");
    assert!(ok
        .proxy_protocol
        .applies(ListenerKind::Tcp, "127.0.0.1:1883".parse().expect("addr")));
    assert!(ok
        .proxy_protocol
        .applies(ListenerKind::Ws, "127.0.0.1:80".parse().expect("addr")));
    assert!(!ok
        .proxy_protocol
        .applies(ListenerKind::Tls, "127.0.0.1:8883".parse().expect("addr")));
}
