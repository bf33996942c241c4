//! The admin REST API and `porchlight ctl`: reads and paging, the token
//! rules, kicking a client and deleting a retained message, the CLI
//! against a live node.

use std::time::Duration;

use porchlight_broker::codec::{self, reason, Packet, Properties, Protocol};
use serde_json::Value;
use tracing::info;

use crate::support::*;

fn token_file(dir: &std::path::Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("admin-token");
    std::fs::write(&path, format!("{token}\n")).expect("write token");
    path
}

async fn api(
    b: &TestBroker,
    method: &'static str,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let addr = b.admin_addr.expect("admin");
    let headers = token
        .map(|t| vec![("authorization", format!("Bearer {t}"))])
        .unwrap_or_default();
    let r = http(method, format!("http://{addr}{path}"), headers).await;
    let v = serde_json::from_str(&r.body).unwrap_or(Value::String(r.body.clone()));
    (r.status, v)
}

#[tokio::test]
async fn reads_page_through_clients_subscriptions_retained_and_tenants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path(), "s3cret");
    let b = TestBroker::with(|c| {
        with_admin(c);
        c.admin_token_file = Some(token.clone());
    })
    .await;
    let t = Some("s3cret");
    let (status, body) = api(&b, "GET", "/api/v1/node", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");

    let mut sub = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "dev-sub"))
        .await
        .0;
    sub.subscribe("a/#", q(1)).await;
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(RawClient::connect(b.addr, Protocol::V311, &format!("p{i}")).await);
    }
    sub.publish("a/temp", q(1), 1, b"21.5").await;
    let mut m = codec::Publish {
        retain: true,
        ..publish("a/kept", q(1), 2, b"on")
    };
    m.properties = Properties::default();
    sub.send(&Packet::Publish(m)).await;
    wait_until("retained", || {
        b.broker.state.read(|c| {
            c.retained(
                &porchlight_broker::ids::TenantId::default_tenant(),
                "a/kept",
            )
            .is_some()
        })
    })
    .await;

    let (status, node) = api(&b, "GET", "/api/v1/node", t).await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(node["clients_connected"], 6);
    assert_eq!(node["ready"], true);
    assert_eq!(node["listeners"][0]["addr"], b.addr.to_string());

    info!("--- clients, two to a page, in order");
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!(
                "/api/v1/clients?prefix=p&limit=2&after={}",
                a.replace('/', "%2F")
            ),
            None => "/api/v1/clients?prefix=p&limit=2".into(),
        };
        let (status, page) = api(&b, "GET", &path, t).await;
        assert_eq!(status, 200, "{page}");
        for c in page["items"].as_array().expect("items") {
            assert_eq!(c["connected"], true);
            assert_eq!(c["connection"]["protocol_level"], 4);
            assert!(c["connection"]["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")));
            seen.push(c["client_id"].as_str().expect("id").to_owned());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4"]);
    let (_, page) = api(&b, "GET", "/api/v1/clients?state=disconnected", t).await;
    assert_eq!(page["items"].as_array().expect("items").len(), 0);
    let (status, bad) = api(&b, "GET", "/api/v1/clients?state=sleepy", t).await;
    assert_eq!(status, 400, "{bad}");

    info!("--- one client, with its subscriptions");
    let (status, c) = api(&b, "GET", "/api/v1/clients/dev-sub", t).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["persistent"], true);
    assert_eq!(c["expiry_interval"], 3600);
    assert_eq!(c["subscription_list"][0]["filter"], "a/#");
    assert_eq!(c["subscription_list"][0]["qos"], 1);
    let (status, _) = api(&b, "GET", "/api/v1/clients/nobody", t).await;
    assert_eq!(status, 404);
    let (status, s) = api(&b, "GET", "/api/v1/sessions/dev-sub?tenant=default", t).await;
    assert_eq!((status, &s["client_id"]), (200, &Value::from("dev-sub")));

    let (_, subs) = api(&b, "GET", "/api/v1/subscriptions", t).await;
    assert_eq!(subs["items"].as_array().expect("items").len(), 1);
    assert_eq!(subs["items"][0]["client_id"], "dev-sub");

    info!("--- retained, without $SYS unless asked");
    let (_, ret) = api(&b, "GET", "/api/v1/retained", t).await;
    let topics: Vec<&str> = ret["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|r| r["topic"].as_str())
        .collect();
    assert_eq!(topics, ["a/kept"]);
    assert_eq!(ret["items"][0]["payload_bytes"], 2);

    info!("--- tenants, usage against limits");
    let (_, tenants) = api(&b, "GET", "/api/v1/tenants", t).await;
    let d = &tenants["items"][0];
    assert_eq!(d["id"], "default");
    assert_eq!(d["usage"]["connections"], 6);
    assert_eq!(d["usage"]["persistent_sessions"], 1);
    assert_eq!(d["usage"]["retained_messages"], 1);
    let (status, _) = api(&b, "GET", "/api/v1/tenants/acme", t).await;
    assert_eq!(status, 404);
    drop(others);
    b.stop().await;
}

#[tokio::test]
async fn without_a_token_file_the_api_reads_on_loopback_only_and_never_writes() {
    let b = TestBroker::with(with_admin).await;
    let (status, _) = api(&b, "GET", "/api/v1/node", None).await;
    assert_eq!(status, 200);
    // A page that rebound a name of its own to 127.0.0.1 sends that name.
    let addr = b.admin_addr.expect("admin");
    let rebound = http(
        "GET",
        format!("http://{addr}/api/v1/node"),
        vec![("host", "evil.example:9883".into())],
    )
    .await;
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    let (status, body) = api(&b, "POST", "/api/v1/clients/x/kick", None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["detail"]
        .as_str()
        .is_some_and(|d| d.contains("--admin-token-file")));
    b.stop().await;

    // On every interface (reached here through 127.0.0.1): no API at all.
    let b = TestBroker::with(|c| c.admin_listen = Some("0.0.0.0:0".parse().expect("addr"))).await;
    let port = b.admin_addr.expect("admin").port();
    let r = http(
        "GET",
        format!("http://127.0.0.1:{port}/api/v1/node"),
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("not a loopback address"), "{}", r.body);
    // Probes and metrics stay open.
    let r = http("GET", format!("http://127.0.0.1:{port}/readyz"), Vec::new()).await;
    assert_eq!(r.status, 200);
    b.stop().await;
}

#[tokio::test]
async fn kick_closes_with_0x98_sends_the_will_and_can_discard_the_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path(), "k");
    let b = TestBroker::with(|c| {
        with_admin(c);
        c.admin_token_file = Some(token.clone());
    })
    .await;
    let t = Some("k");
    let mut watcher = RawClient::connect(b.addr, Protocol::V5, "watcher").await;
    watcher.subscribe("wills/#", q(0)).await;
    let mut c = durable_client(Protocol::V5, "victim");
    c.will = Some(codec::Will {
        topic: "wills/victim".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: q(0),
        retain: false,
        properties: Properties::default(),
    });
    let (mut victim, _) = RawClient::connect_with(b.addr, c).await;
    victim.subscribe("cmd/#", q(1)).await;

    let (status, kicked) = api(&b, "POST", "/api/v1/clients/victim/kick", t).await;
    assert_eq!(status, 200, "{kicked}");
    assert_eq!(
        (kicked["connected"].as_bool(), kicked["ended"].as_bool()),
        (Some(true), Some(false))
    );
    victim
        .expect_disconnect(Some(reason::ADMINISTRATIVE_ACTION))
        .await;
    assert_eq!(watcher.expect_publish().await.topic, "wills/victim");
    // The session stays: a persistent one outlives its connection.
    assert!(b.subscribed("victim", "cmd/#"));
    let m = b.broker.metrics.clone();
    assert_eq!(
        m.disconnect_count(porchlight_broker::metrics::Ended::Kicked),
        1
    );

    info!("--- offline now: discarding ends the session");
    let (status, kicked) = api(
        &b,
        "POST",
        "/api/v1/clients/victim/kick?discard_session=true",
        t,
    )
    .await;
    assert_eq!(status, 200, "{kicked}");
    assert_eq!(
        (kicked["connected"].as_bool(), kicked["ended"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(b.session("victim").is_none());
    let (_, ack) = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "victim")).await;
    assert!(!ack.session_present);
    let (status, _) = api(&b, "POST", "/api/v1/clients/nobody/kick", t).await;
    assert_eq!(status, 404);
    b.stop().await;
}

#[tokio::test]
async fn deleting_a_retained_message_reaches_no_subscriber_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path(), "r");
    let b = TestBroker::with(|c| {
        with_admin(c);
        c.admin_token_file = Some(token.clone());
    })
    .await;
    let t = Some("r");
    let mut p = RawClient::connect(b.addr, Protocol::V5, "pub").await;
    p.send(&Packet::Publish(codec::Publish {
        retain: true,
        ..publish("lamp/state", q(1), 1, b"on")
    }))
    .await;
    let mut s = RawClient::connect(b.addr, Protocol::V5, "s").await;
    s.subscribe("lamp/#", q(1)).await;
    assert_eq!(s.expect_publish().await.payload.as_ref(), b"on");
    let (status, body) = api(&b, "DELETE", "/api/v1/retained?topic=lamp%2Fstate", t).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], true);
    s.expect_silence(Duration::from_millis(300)).await;
    let (status, _) = api(&b, "DELETE", "/api/v1/retained?topic=lamp%2Fstate", t).await;
    assert_eq!(status, 404);
    let b = b.restart().await;
    let mut s = RawClient::connect(b.addr, Protocol::V5, "s2").await;
    s.subscribe("lamp/#", q(1)).await;
    s.expect_silence(Duration::from_millis(300)).await;
    b.stop().await;
}

/// `porchlight ctl` with `args`, against `url`; (exit code, stdout, stderr).
fn ctl(url: &str, token: Option<&std::path::Path>, args: &[&str]) -> (i32, String, String) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_porchlight"));
    c.arg("ctl").env("PORCHLIGHT_ADMIN_URL", url);
    c.env_remove("PORCHLIGHT_ADMIN_TOKEN_FILE");
    if let Some(t) = token {
        c.env("PORCHLIGHT_ADMIN_TOKEN_FILE", t);
    }
    let out = c.args(args).output().expect("run porchlight ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn ctl_against_a_live_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path(), "ctl-token");
    let b = TestBroker::with(|c| {
        with_admin(c);
        c.admin_token_file = Some(token.clone());
    })
    .await;
    let url = format!("http://{}", b.admin_addr.expect("admin"));
    let mut dev = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "thermostat-1"))
        .await
        .0;
    dev.subscribe("home/+/set", q(1)).await;
    dev.send(&Packet::Publish(codec::Publish {
        retain: true,
        ..publish("home/kitchen/temp", q(1), 1, b"21.5")
    }))
    .await;
    assert_eq!(
        dev.recv().await.map(|p| matches!(p, Packet::PubAck(_))),
        Some(true)
    );

    let (url2, tok) = (url.clone(), token.clone());
    let run = move |args: &'static [&'static str]| {
        let (url, tok) = (url2.clone(), tok.clone());
        tokio::task::spawn_blocking(move || ctl(&url, Some(&tok), args))
    };
    let (code, out, err) = run(&["status"]).await.expect("ctl");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ready      yes"), "{out}");
    assert!(out.contains(&format!("tcp {}", b.addr)), "{out}");
    let (code, out, _) = run(&["clients", "list"]).await.expect("ctl");
    assert_eq!(code, 0);
    assert!(
        out.lines().next().is_some_and(|h| h.starts_with("TENANT")),
        "{out}"
    );
    assert!(
        out.contains("thermostat-1") && out.contains("connected"),
        "{out}"
    );
    let (_, out, _) = run(&["clients", "show", "thermostat-1"])
        .await
        .expect("ctl");
    assert!(
        out.contains("home/+/set") && out.contains("persistent"),
        "{out}"
    );
    let (_, out, _) = run(&["sessions", "show", "thermostat-1"])
        .await
        .expect("ctl");
    assert!(out.contains("expiry 3600 s"), "{out}");
    let (_, out, _) = run(&["subscriptions", "list", "--json"])
        .await
        .expect("ctl");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["items"][0]["filter"], "home/+/set");
    let (_, out, _) = run(&["retained", "list"]).await.expect("ctl");
    assert!(out.contains("home/kitchen/temp"), "{out}");
    let (_, out, _) = run(&["tenants", "list"]).await.expect("ctl");
    assert!(out.contains("default"), "{out}");
    let (_, out, _) = run(&["tenants", "show", "default"]).await.expect("ctl");
    assert!(out.contains("persistent_sessions"), "{out}");
    let (_, out, _) = run(&["metrics"]).await.expect("ctl");
    assert!(out.contains("clients connected  1"), "{out}");
    let (code, out, _) = run(&["retained", "delete", "home/kitchen/temp"])
        .await
        .expect("ctl");
    assert_eq!(code, 0);
    assert!(out.contains("deleted"), "{out}");
    let (code, _, err) = run(&["clients", "show", "nobody"]).await.expect("ctl");
    assert_eq!(code, 1);
    assert!(err.contains(&url) && err.contains("not found"), "{err}");
    let (code, out, _) = run(&["clients", "kick", "thermostat-1"])
        .await
        .expect("ctl");
    assert_eq!(code, 0);
    assert!(out.contains("disconnected (0x98)"), "{out}");
    dev.expect_disconnect(Some(reason::ADMINISTRATIVE_ACTION))
        .await;

    info!("--- errors name the node and the cause");
    let u = url.clone();
    let (code, _, err) = tokio::task::spawn_blocking(move || ctl(&u, None, &["status"]))
        .await
        .expect("ctl");
    assert_eq!(code, 1);
    assert!(err.contains(&url) && err.contains("unauthorized"), "{err}");
    b.stop().await;
    let u = url.clone();
    let (code, _, err) = tokio::task::spawn_blocking(move || ctl(&u, None, &["status"]))
        .await
        .expect("ctl");
    assert_eq!(code, 1);
    assert!(err.contains("connection refused"), "{err}");
}

#[tokio::test]
async fn the_admin_endpoint_over_tls() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // Its own copy of the files, so a renewal can replace them.
    let files = (dir.path().join("admin.crt"), dir.path().join("admin.key"));
    std::fs::copy(&pki.cert, &files.0).expect("copy cert");
    std::fs::copy(&pki.key, &files.1).expect("copy key");
    let token = token_file(dir.path(), "tls-token");
    let b = TestBroker::with(|c| {
        with_admin(c);
        c.admin_token_file = Some(token.clone());
        c.admin_tls = Some((files.0.clone(), files.1.clone()));
        c.admin_tls_reload = Some(Duration::from_millis(100));
    })
    .await;
    let port = b.admin_addr.expect("admin").port();
    let https = format!("https://127.0.0.1:{port}");
    let (ca, tok) = (pki.ca_file.clone(), token.clone());
    let (code, out, err) = tokio::task::spawn_blocking({
        let https = https.clone();
        move || {
            ctl(
                &https,
                Some(&tok),
                &["--ca-file", ca.to_str().expect("utf-8"), "status"],
            )
        }
    })
    .await
    .expect("ctl");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ready      yes"), "{out}");
    // Without trusting the CA: refused, and said so.
    let (code, _, err) = tokio::task::spawn_blocking({
        let tok = token.clone();
        move || ctl(&https, Some(&tok), &["status"])
    })
    .await
    .expect("ctl");
    assert_eq!(code, 1);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // Plain HTTP to the TLS port gets no answer.
    let plain = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(WAIT))
            .build()
            .into();
        agent
            .get(&format!("http://127.0.0.1:{port}/livez"))
            .call()
            .is_ok()
    })
    .await
    .expect("plain");
    assert!(!plain, "plain HTTP must not be served on the TLS port");

    // A renewal from another CA: taken into use without a restart.
    let renewed = TestPki::new();
    std::fs::copy(&renewed.cert, &files.0).expect("copy cert");
    std::fs::copy(&renewed.key, &files.1).expect("copy key");
    let ca = renewed.ca_file.to_str().expect("utf-8").to_owned();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (https, tok, ca) = (
            format!("https://127.0.0.1:{port}"),
            token.clone(),
            ca.clone(),
        );
        let (code, _, err) = tokio::task::spawn_blocking(move || {
            ctl(&https, Some(&tok), &["--ca-file", &ca, "status"])
        })
        .await
        .expect("ctl");
        if code == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewal was not taken: {err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.stop().await;
}

/// The checked-in OpenAPI description names every route the router
/// serves, with its method, and nothing it does not.
#[test]
fn the_openapi_description_matches_the_routes() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .expect("docs/openapi.json");
    let spec: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(spec["openapi"], "3.1.0");
    let src = include_str!("../../src/ops/admin/api.rs");
    let mut routed = Vec::new();
    for line in src
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(".route(\""))
    {
        let path = line.split('"').nth(1).expect("path");
        for method in ["get", "post", "delete"] {
            if line.contains(&format!("{method}(")) {
                routed.push(format!("{method} {path}"));
            }
        }
    }
    let mut described = Vec::new();
    for (path, ops) in spec["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            described.push(format!("{method} {path}"));
        }
    }
    routed.sort();
    described.sort();
    assert_eq!(routed, described);
}
