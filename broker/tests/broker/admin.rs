//! The admin listener: probes, `/metrics` read by the Prometheus parser
//! after real traffic, readiness through a drain.

use std::time::Duration;

use porchlight_broker::codec::{reason, Packet, Protocol};
use tracing::info;

use crate::support::*;

#[tokio::test]
async fn probes_answer_and_name_what_they_checked() {
    let b = TestBroker::with(with_admin).await;
    let live = admin_get(&b, "/livez").await;
    assert_eq!((live.status, live.body.as_str()), (200, "ok\n"));
    let ready = admin_get(&b, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    for check in [
        "[+] listeners accepting",
        "[+] not shutting down",
        "[+] storage writable",
    ] {
        assert!(ready.body.contains(check), "{check} in {}", ready.body);
    }
    let missing = admin_get(&b, "/nope").await;
    assert_eq!(missing.status, 404);
    b.stop().await;
}

#[tokio::test]
async fn metrics_after_traffic_parse_and_count_it() {
    let b = TestBroker::with(with_admin).await;
    let mut sub = V4::connect(b.addr, "m-sub", true).await;
    sub.client
        .subscribe("m/#", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;
    let publisher = V4::connect(b.addr, "m-pub", true).await;
    for i in 0..5u8 {
        publisher
            .client
            .publish("m/t", rumqttc::QoS::AtLeastOnce, false, vec![i; 10])
            .await
            .expect("publish");
    }
    for _ in 0..5 {
        sub.next_publish().await;
    }
    publisher
        .client
        .publish("m/t", rumqttc::QoS::AtMostOnce, false, vec![0; 4])
        .await
        .expect("publish");
    sub.next_publish().await;
    // A refusal: MQTT 5 enhanced authentication is not configured.
    let mut c = connect_packet(Protocol::V5, "m-auth", true, 30);
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let (_raw, ack) = RawClient::connect_with(b.addr, c).await;
    assert_eq!(ack.reason, reason::BAD_AUTHENTICATION_METHOD);
    // A clean end and a dropped socket.
    let mut gone = RawClient::connect(b.addr, Protocol::V5, "m-bye").await;
    gone.send(&Packet::Disconnect(porchlight_broker::codec::Disconnect {
        reason: 0,
        properties: Default::default(),
    }))
    .await;
    drop(RawClient::connect(b.addr, Protocol::V311, "m-drop").await);
    let m = b.broker.metrics.clone();
    wait_until("both ends counted", || {
        use porchlight_broker::metrics::Ended;
        m.disconnect_count(Ended::ClientDisconnect) == 1
            && m.disconnect_count(Ended::PeerClosed) == 1
    })
    .await;

    let scraped = admin_get(&b, "/metrics").await;
    assert_eq!(scraped.status, 200);
    assert!(
        scraped
            .content_type
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        scraped.content_type
    );
    let s = parse_metrics(&scraped.body, false);
    let t = [("tenant", "default")];
    let with = |extra: (&'static str, &'static str)| [t[0], extra];
    let qos1_received = |s: &[Sample]| {
        sample(
            s,
            "porchlight_tenant_messages_received_total",
            &with(("qos", "1")),
        )
    };
    assert_eq!(qos1_received(&s), 5.0);
    assert_eq!(
        sample(
            &s,
            "porchlight_tenant_messages_received_total",
            &with(("qos", "0"))
        ),
        1.0
    );
    assert_eq!(
        sample(
            &s,
            "porchlight_tenant_received_bytes_total",
            &with(("qos", "1"))
        ),
        50.0
    );
    assert_eq!(
        sample(
            &s,
            "porchlight_tenant_messages_sent_total",
            &with(("qos", "1"))
        ),
        5.0
    );
    assert_eq!(sample(&s, "porchlight_messages_received_total", &[]), 6.0);
    assert_eq!(sample(&s, "porchlight_clients_connected", &[]), 2.0);
    assert_eq!(
        sample(
            &s,
            "porchlight_tenant_connections",
            &with(("listener", "tcp"))
        ),
        2.0
    );
    assert!(
        sample(
            &s,
            "porchlight_connections_accepted_total",
            &[("listener", "tcp")]
        ) >= 5.0
    );
    assert_eq!(
        sample(
            &s,
            "porchlight_connections_refused_total",
            &[("reason", "bad_authentication_method")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &s,
            "porchlight_disconnects_total",
            &[("reason", "client_disconnect")]
        ),
        1.0
    );
    assert_eq!(sample(&s, "porchlight_tenant_subscriptions", &t), 1.0);
    assert_eq!(
        sample(&s, "porchlight_tenant_sessions", &with(("kind", "clean"))),
        2.0
    );
    // One delivery in eight to the connected subscriber is timed: of
    // the six, the first.
    assert_eq!(
        sample(&s, "porchlight_publish_to_write_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        sample(
            &s,
            "porchlight_publish_to_write_seconds_bucket",
            &[("le", "+Inf")]
        ),
        1.0
    );
    let build = s
        .iter()
        .find(|x| x.name == "porchlight_build_info")
        .expect("build info");
    assert_eq!(build.labels["version"], env!("CARGO_PKG_VERSION"));
    assert!(!build.labels["commit"].is_empty());
    assert!(sample(&s, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(sample(&s, "process_max_fds", &[]) >= sample(&s, "process_open_fds", &[]));
    // Client ids never become labels.
    assert!(
        !scraped.body.contains("m-sub"),
        "a client id leaked into a label"
    );

    info!("--- the same, as OpenMetrics");
    let addr = b.admin_addr.expect("admin");
    let om = http(
        "GET",
        format!("http://{addr}/metrics"),
        vec![(
            "accept",
            "application/openmetrics-text; version=1.0.0".into(),
        )],
    )
    .await;
    assert!(
        om.content_type.starts_with("application/openmetrics-text"),
        "{}",
        om.content_type
    );
    assert!(om.body.ends_with("# EOF\n"));
    let s = parse_metrics(&om.body, true);
    assert_eq!(qos1_received(&s), 5.0);
    b.stop().await;
}

#[tokio::test]
async fn the_store_reports_its_fsyncs() {
    let b = TestBroker::with(with_admin).await;
    // A persistent session's subscription is a durable write.
    let mut c = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "fs"))
        .await
        .0;
    c.subscribe("fs/#", q(1)).await;
    let m = b.broker.metrics.clone();
    wait_until("an fsync observed", || m.fsync_seconds.snapshot().count > 0).await;
    let s = parse_metrics(&admin_get(&b, "/metrics").await.body, false);
    assert!(sample(&s, "porchlight_storage_fsync_duration_seconds_count", &[]) >= 1.0);
    assert!(sample(&s, "porchlight_storage_group_commit_writes_count", &[]) >= 1.0);
    assert!(sample(&s, "porchlight_storage_group_commit_writes_sum", &[]) >= 1.0);
    assert!(sample(&s, "porchlight_storage_size_bytes", &[]) > 0.0);
    assert_eq!(
        sample(&s, "porchlight_storage_healthy", &[("state", "ok")]),
        1.0
    );
    assert_eq!(
        sample(
            &s,
            "porchlight_tenant_sessions",
            &[("tenant", "default"), ("kind", "persistent")]
        ),
        1.0
    );
    b.stop().await;
}

#[tokio::test]
async fn readiness_fails_from_the_stop_while_the_node_still_serves_the_drain_delay() {
    let b = TestBroker::with(with_admin).await;
    assert_eq!(admin_get(&b, "/readyz").await.status, 200);
    let stop = tokio::spawn(porchlight_broker::ops::server::stop_after_drain_delay(
        b.ready.clone(),
        Duration::from_secs(3),
        b.shutdown.clone(),
    ));
    let ready = admin_get(&b, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("[-] not shutting down"),
        "{}",
        ready.body
    );
    assert!(ready.body.ends_with("not ready\n"));
    // Still serving MQTT within the delay: a client that resolved the
    // address before the endpoints changed gets in.
    let (_c, ack) =
        RawClient::connect_with(b.addr, connect_packet(Protocol::V311, "late", true, 30)).await;
    assert_eq!(ack.reason, reason::SUCCESS);
    assert!(!b.shutdown.is_cancelled());
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("the delay ends")
        .expect("stop task");
    assert!(b.shutdown.is_cancelled());
    b.stop().await;
}

/// The headless browser: Chromium from Debian's packages (`.ci/run`
/// installs it). Missing, the test fails: it never passes unchecked.
fn chromium() -> &'static str {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("a headless Chromium (apt-get install chromium)")
}

/// The page as the browser built it (`--dump-dom`: parsed, laid out,
/// serialised back).
fn browser_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = std::process::Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 DOM")
}

/// The text of the element with `id` in a serialised DOM.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("#{id} in the page"));
    let rest = &dom[start..];
    let open = rest.find('>').expect("tag end") + 1;
    let close = rest[open..].find('<').expect("text end");
    &rest[open..open + close]
}

#[tokio::test]
async fn the_status_page_shows_a_healthy_node_in_a_real_browser() {
    let b = TestBroker::with(with_admin).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(RawClient::connect(b.addr, Protocol::V5, &format!("c{i}")).await);
    }
    // Two samples make a line (one every 5 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !admin_get(&b, "/")
        .await
        .body
        .contains("id=\"spark-clients\" class=\"spark\" width=\"240\" height=\"40\" viewBox")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sparkline after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let url = format!("http://{}/", b.admin_addr.expect("admin"));
    let dom = tokio::task::spawn_blocking(move || browser_dom(&url))
        .await
        .expect("browser");
    // The browser parsed it as HTML (it adds the tbody the source leaves out).
    assert!(dom.contains("<tbody>"), "{dom}");
    assert_eq!(
        text_of(&dom, "verdict"),
        "Healthy: ready, every listener accepting, storage writable"
    );
    assert_eq!(text_of(&dom, "version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(text_of(&dom, "clients-connected"), "3");
    assert_eq!(text_of(&dom, "ready"), "yes");
    assert_eq!(text_of(&dom, "storage-state"), "ok");
    assert!(
        dom.contains(&format!("tcp {}", b.addr)),
        "the listener is shown"
    );
    assert!(
        dom.contains("<tr class=\"tenant\"><td>default</td><td>3</td>"),
        "{dom}"
    );
    assert!(dom.contains("<polyline"), "a sparkline is drawn");

    info!("--- shutting down: the verdict says so");
    b.ready.set_draining();
    let r = admin_get(&b, "/").await;
    assert!(
        r.body.contains("class=\"bad\">Attention: not ready"),
        "{}",
        r.body
    );
    drop(clients);
    b.stop().await;
}

/// Scrapes taken while publishers run: each parses, and the counters only
/// grow from one to the next. (What scraping costs the throughput is a
/// benchmark: `BROKERS="porchlight scraped" scripts/bench-compare.sh`.)
#[tokio::test]
async fn scrapes_under_load_parse_and_only_grow() {
    let b = TestBroker::with(with_admin).await;
    let mut sub = RawClient::connect(b.addr, Protocol::V5, "load-sub").await;
    sub.subscribe("load/#", q(0)).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut publishers = Vec::new();
    for i in 0..4 {
        let (addr, stop) = (b.addr, stop.clone());
        publishers.push(tokio::spawn(async move {
            let mut p = RawClient::connect(addr, Protocol::V311, &format!("load-{i}")).await;
            // Bounded: at most 20,000 each, and only until the scrapes end.
            for n in 0..20_000u32 {
                if stop.is_cancelled() {
                    break;
                }
                p.publish("load/t", q(0), 0, b"0123456789").await;
                if n % 256 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let drain = tokio::spawn(async move { while sub.recv().await.is_some() {} });
    let mut last = 0.0;
    for _ in 0..8 {
        let r = admin_get(&b, "/metrics").await;
        assert_eq!(r.status, 200);
        let s = parse_metrics(&r.body, false);
        let received = sample(&s, "porchlight_messages_received_total", &[]);
        assert!(received >= last, "{received} after {last}");
        last = received;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last > 0.0, "the publishers were running");
    stop.cancel();
    for p in publishers {
        p.await.expect("publisher");
    }
    drain.abort();
    b.stop().await;
}

/// `docs/metrics.md` lists exactly the families `/metrics` serves (with a
/// TLS listener and a disk limit, so every conditional one is there).
#[tokio::test]
async fn every_metric_served_is_documented_and_every_documented_one_served() {
    let pki = TestPki::new();
    let b = TestBroker::with(|c| {
        with_admin(c);
        pki.configure(c, porchlight_broker::net::tls::TlsVersion::V1_2);
        c.store.max_disk_bytes = Some(1 << 30);
    })
    .await;
    let body = admin_get(&b, "/metrics").await.body;
    let served: std::collections::BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
        .expect("docs/metrics.md");
    // The first cell of each table row that names a metric.
    let documented: std::collections::BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("porchlight_") || n.starts_with("process_"))
        .map(str::to_owned)
        .collect();
    assert!(
        served.len() > 50 && documented.len() > 50,
        "{served:?} {documented:?}"
    );
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served, not in docs/metrics.md: {undocumented:?}"
    );
    assert!(
        missing.is_empty(),
        "in docs/metrics.md, not served: {missing:?}"
    );
    b.stop().await;
}
