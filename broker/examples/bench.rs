//! First-figures benchmark client (until `porchlight-loadtest` lands):
//! idle memory per connection, fan-in throughput, and end-to-end latency
//! against any MQTT broker on 127.0.0.1. Every loop is bounded in count
//! and time. Usage is printed by `cargo run --release --example bench`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use porchlight_broker::codec::{
    self, Connect, Packet, Properties, Protocol, Publish, QoS, Subscribe, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USAGE: &str = "usage:
  bench idle    ADDR PID CONNS          idle connections; RSS of PID per connection
  bench fanin   ADDR PUBS SECONDS QOS [persistent]
                                        PUBS publishers -> 1 subscriber, msg/s received
                                        (persistent: the subscriber's session is durable)
  bench latency ADDR RATE SECONDS QOS   1 publisher at RATE msg/s -> 1 subscriber, percentiles
  bench trie                            in-process: match cost vs. non-matching subscriptions";

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            return Ok(v.trim().trim_end_matches(" kB").trim().parse()?);
        }
    }
    bail!("no VmRSS for {pid}")
}

fn encode(p: &Packet) -> BytesMut {
    let mut b = BytesMut::new();
    codec::encode(p, Protocol::V311, &mut b);
    b
}

async fn connect(addr: &str, id: &str) -> Result<(TcpStream, BytesMut)> {
    connect_session(addr, id, true).await
}

async fn connect_session(addr: &str, id: &str, clean: bool) -> Result<(TcpStream, BytesMut)> {
    let mut s = TcpStream::connect(addr).await.context("connect")?;
    s.set_nodelay(true)?;
    let c = Connect {
        protocol: Protocol::V311,
        clean_start: clean,
        keep_alive: 600,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    s.write_all(&encode(&Packet::Connect(Box::new(c)))).await?;
    let mut buf = BytesMut::new();
    match next(&mut s, &mut buf).await? {
        Packet::ConnAck(a) if a.reason == 0 => Ok((s, buf)),
        p => bail!("CONNACK refused: {p:?}"),
    }
}

async fn next(s: &mut TcpStream, buf: &mut BytesMut) -> Result<Packet> {
    loop {
        if let Some(p) = codec::decode(buf, Some(Protocol::V311), usize::MAX)? {
            return Ok(p);
        }
        if s.read_buf(buf).await? == 0 {
            bail!("closed");
        }
    }
}

async fn subscribe(s: &mut TcpStream, buf: &mut BytesMut, filter: &str, qos: QoS) -> Result<()> {
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(filter.into(), SubscriptionOptions::new(qos))],
        properties: Properties::default(),
    });
    s.write_all(&encode(&sub)).await?;
    match next(s, buf).await? {
        Packet::SubAck(_) => Ok(()),
        p => bail!("expected SUBACK, got {p:?}"),
    }
}

fn publish(topic: &str, qos: QoS, id: u16, payload: Bytes) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
        properties: Properties::default(),
        payload,
    })
}

async fn idle(addr: &str, pid: u32, conns: usize) -> Result<()> {
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(conns);
    let start = Instant::now();
    for i in 0..conns {
        held.push(connect(addr, &format!("idle-{i}")).await?.0);
    }
    let took = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / conns as f64;
    println!(
        "idle: {conns} connections in {:.2}s ({:.0}/s); broker RSS {before} KiB -> {after} KiB; {:.0} bytes per connection",
        took.as_secs_f64(),
        conns as f64 / took.as_secs_f64(),
        per
    );
    Ok(())
}

/// Subscriber that counts messages and records latency from the payload's
/// first 8 bytes (nanoseconds since `epoch`).
async fn subscriber(
    addr: String,
    qos: QoS,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    persistent: bool,
) -> Result<hdrhistogram::Histogram<u64>> {
    let id = if persistent {
        "bench-sub-durable"
    } else {
        "bench-sub"
    };
    let (mut s, mut buf) = connect_session(&addr, id, !persistent).await?;
    subscribe(&mut s, &mut buf, "bench/#", qos).await?;
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut acks = BytesMut::new();
    while !stop.load(Ordering::Relaxed) {
        while let Some(p) = codec::decode(&mut buf, Some(Protocol::V311), usize::MAX)? {
            if let Packet::Publish(p) = p {
                received.fetch_add(1, Ordering::Relaxed);
                if p.payload.len() >= 8 {
                    let sent = u64::from_be_bytes(p.payload[..8].try_into()?);
                    let now = epoch.elapsed().as_nanos() as u64;
                    hist.record(now.saturating_sub(sent).max(1))?;
                }
                if p.qos == QoS::AtLeastOnce {
                    codec::encode(
                        &Packet::PubAck(codec::Ack::new(p.packet_id, 0)),
                        Protocol::V311,
                        &mut acks,
                    );
                }
            }
        }
        if !acks.is_empty() {
            s.write_all(&acks).await?;
            acks.clear();
        }
        match tokio::time::timeout(Duration::from_millis(100), s.read_buf(&mut buf)).await {
            Ok(Ok(0)) => bail!("subscriber closed"),
            Ok(r) => {
                r?;
            }
            Err(_) => {}
        }
    }
    Ok(hist)
}

/// A publisher that sends as fast as it can (QoS 0) or with up to 64 QoS 1
/// messages unacknowledged, until `deadline`.
async fn flood(
    addr: String,
    id: usize,
    qos: QoS,
    epoch: Instant,
    deadline: Instant,
) -> Result<u64> {
    let (mut s, mut buf) = connect(&addr, &format!("bench-pub-{id}")).await?;
    let topic = format!("bench/{id}");
    let mut sent = 0u64;
    let mut inflight = 0usize;
    let mut pkid: u16 = 0;
    let mut out = BytesMut::new();
    while Instant::now() < deadline {
        let batch = if qos == QoS::AtMostOnce {
            64
        } else {
            64 - inflight
        };
        for _ in 0..batch {
            pkid = pkid.checked_add(1).unwrap_or(1);
            let mut payload = vec![0u8; 64];
            payload[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
            codec::encode(
                &publish(&topic, qos, pkid, payload.into()),
                Protocol::V311,
                &mut out,
            );
        }
        s.write_all(&out).await?;
        out.clear();
        sent += batch as u64;
        if qos == QoS::AtLeastOnce {
            inflight += batch;
            // Wait for at least one ack before refilling.
            loop {
                while let Some(p) = codec::decode(&mut buf, Some(Protocol::V311), usize::MAX)? {
                    if matches!(p, Packet::PubAck(_)) {
                        inflight -= 1;
                    }
                }
                if inflight < 64 {
                    break;
                }
                if s.read_buf(&mut buf).await? == 0 {
                    bail!("publisher closed");
                }
            }
        }
    }
    Ok(sent)
}

/// The subscriber of a run, started and given time to subscribe.
struct Measuring {
    epoch: Instant,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    sub: tokio::task::JoinHandle<Result<hdrhistogram::Histogram<u64>>>,
}

async fn measuring(addr: &str, qos: QoS, persistent: bool) -> Measuring {
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let sub = tokio::spawn(subscriber(
        addr.into(),
        qos,
        epoch,
        stop.clone(),
        received.clone(),
        persistent,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    Measuring {
        epoch,
        stop,
        received,
        sub,
    }
}

async fn fanin(addr: &str, pubs: usize, secs: u64, qos: QoS, persistent: bool) -> Result<()> {
    let Measuring {
        epoch,
        stop,
        received,
        sub,
    } = measuring(addr, qos, persistent).await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..pubs {
        tasks.push(tokio::spawn(flood(addr.into(), i, qos, epoch, deadline)));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let got_at_end = received.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let hist = sub.await??;
    let got = received.load(Ordering::Relaxed);
    println!(
        "fanin qos{}{}: {pubs} publishers, {secs}s: sent {sent} ({:.0}/s), received {got} ({:.0}/s during the run), p99 latency {:.2} ms",
        qos as u8,
        if persistent { " persistent" } else { "" },
        sent as f64 / elapsed,
        got_at_end as f64 / elapsed,
        hist.value_at_quantile(0.99) as f64 / 1e6
    );
    Ok(())
}

async fn latency(addr: &str, rate: u64, secs: u64, qos: QoS) -> Result<()> {
    let Measuring {
        epoch,
        stop,
        received: _,
        sub,
    } = measuring(addr, qos, false).await;
    let (s, _) = connect(addr, "bench-lat-pub").await?;
    let (mut rd, mut wr) = s.into_split();
    let total = rate * secs;
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Drain PUBACKs so the socket never backs up.
    let acker = tokio::spawn(async move {
        let mut tmp = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(secs + 5), rd.read(&mut tmp)).await
        {
            if n == 0 {
                return;
            }
        }
    });
    for i in 0..total {
        tick.tick().await;
        let mut payload = vec![0u8; 64];
        payload[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
        let id = (i % 65535 + 1) as u16;
        wr.write_all(&encode(&publish("bench/lat", qos, id, payload.into())))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    acker.abort();
    let h = sub.await??;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
    println!(
        "latency qos{}: {rate} msg/s for {secs}s: received {}/{total}; p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        qos as u8,
        h.len(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1e6
    );
    Ok(())
}

/// Time to match one topic against a trie holding 10 matching
/// subscriptions plus 0, 10k, 100k and 1M non-matching ones.
fn trie() {
    use porchlight_broker::codec::SubscriptionOptions;
    use porchlight_broker::ids::{ClientId, SessionKey, TenantId};
    use porchlight_broker::session::Session;
    use porchlight_broker::trie::{Subscriber, SubscriptionTrie};
    let tenant = TenantId::default_tenant();
    let sub = |i: usize| Subscriber {
        session: Arc::new(Session::new(
            SessionKey {
                tenant: tenant.clone(),
                client: ClientId::new(format!("c{i}")),
            },
            0,
            None,
        )),
        options: SubscriptionOptions::new(QoS::AtMostOnce),
        id: None,
    };
    let trie = SubscriptionTrie::default();
    for (i, f) in [
        "site/1/dev/7/temp",
        "site/1/dev/+/temp",
        "site/1/#",
        "site/+/dev/7/#",
        "#",
    ]
    .iter()
    .enumerate()
    {
        trie.subscribe(&tenant, f, None, sub(i));
        trie.subscribe(&tenant, f, None, sub(i + 100));
    }
    let mut added = 0usize;
    for target in [0usize, 10_000, 100_000, 1_000_000] {
        while added < target {
            // Other sites and devices, with wildcards, none matching.
            let f = match added % 3 {
                0 => format!("site/{}/dev/{}/temp", 2 + added % 5000, added),
                1 => format!("site/{}/dev/+/humidity", 2 + added),
                _ => format!("site/1/dev/{}/temp", 1000 + added),
            };
            trie.subscribe(&tenant, &f, None, sub(1000 + added));
            added += 1;
        }
        let n = 200_000;
        let start = Instant::now();
        let mut total = 0;
        for _ in 0..n {
            total += trie.matches(&tenant, "site/1/dev/7/temp").direct.len();
        }
        let per = start.elapsed().as_nanos() as f64 / n as f64;
        assert_eq!(total, 10 * n);
        println!(
            "trie: {target:>9} non-matching subscriptions: {per:.0} ns per match (10 matches each)"
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).context(USAGE);
    let qos = |s: &str| -> Result<QoS> { QoS::from_u8(s.parse()?).context("qos 0, 1 or 2") };
    match arg(0)? {
        "idle" => idle(arg(1)?, arg(2)?.parse()?, arg(3)?.parse()?).await,
        "fanin" => {
            let persistent = args.get(5).is_some_and(|a| a == "persistent");
            fanin(
                arg(1)?,
                arg(2)?.parse()?,
                arg(3)?.parse()?,
                qos(arg(4)?)?,
                persistent,
            )
            .await
        }
        "latency" => latency(arg(1)?, arg(2)?.parse()?, arg(3)?.parse()?, qos(arg(4)?)?).await,
        "trie" => {
            trie();
            Ok(())
        }
        _ => bail!(USAGE),
    }
}
