//! Executes a [`Plan`]: resolves the brokers, builds every client
//! (`client.rs`), opens connections at the plan's rate, starts the
//! publishers once everyone is in, stops them after the duration, waits
//! for messages in flight, disconnects everyone, and turns the counters,
//! trackers and histograms into a [`Summary`] for `report.rs`. A sampler
//! records the time series once a second and drives the progress line.
//! Every phase is bounded in time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Client, Receiver, Shared, Task};
use crate::error::LoadError;
use crate::mqtt::Wire;
use crate::pacer::Pacer;
use crate::plan::{expand, matches, Plan, Publish, Role};
use crate::procstat::{Proc, Usage};
use crate::seq::Counts;
use crate::stats::{Counters, Percentiles, Stats};

/// How the run shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A live line on a terminal (indicatif), plain lines every 10 s
    /// otherwise.
    Auto,
    Quiet,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The broker's process, for its CPU and memory.
    pub broker_pid: Option<u32>,
    pub progress: Progress,
    /// The command line, for the report.
    pub command: String,
}

/// One second of the run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    pub connected: u64,
    /// Per second over the last interval.
    pub sent_rate: f64,
    pub received_rate: f64,
    pub broker_cpu_percent: Option<f64>,
    pub broker_rss_kib: Option<u64>,
    pub generator_cpu_percent: f64,
    pub generator_rss_kib: u64,
}

/// CPU and memory of one process over the run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProcSummary {
    pub cpu_seconds: f64,
    /// CPU time while the counted connects were made (in a reconnect
    /// storm, the storm's; otherwise from the start to everyone in).
    pub cpu_seconds_connecting: f64,
    /// CPU time over wall time while publishing (or holding), in percent
    /// of one core; when deliveries came late (see
    /// `Summary::delivery_seconds`), from the start of publishing to the
    /// end of the drain instead.
    pub cpu_percent: f64,
    pub rss_kib_start: u64,
    pub rss_kib_connected: u64,
    pub rss_kib_max: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub name: String,
    pub command: String,
    pub version: String,
    pub protocol: String,
    pub clients: u64,
    pub publishers: u64,
    pub subscribers: u64,
    // Connections.
    pub connects: u64,
    pub connect_failures: u64,
    /// Failed connects by reason.
    pub connect_errors: std::collections::BTreeMap<String, u64>,
    pub dropped: u64,
    pub reconnects: u64,
    /// From the first connect to the last CONNACK (or SUBACK); in a
    /// reconnect storm, from the storm's start.
    pub connect_seconds: f64,
    pub connect_rate: f64,
    pub connect_latency_us: Percentiles,
    /// Connects per client (`--cycles`); the first of several is a
    /// warm-up and not counted.
    pub cycles: u32,
    /// Counted connects over TLS, and how many resumed a session.
    pub tls_handshakes: u64,
    pub tls_resumed: u64,
    /// Of those, how many used the hybrid post-quantum key exchange.
    pub tls_post_quantum: u64,
    pub subscribe_failures: u64,
    // Messages.
    pub publish_seconds: f64,
    /// From the start of publishing to the last delivery when it came
    /// late, otherwise `publish_seconds`: `received_per_second` is over
    /// this span (CPU then runs to the end of the drain, see
    /// `ProcSummary::cpu_percent`).
    pub delivery_seconds: f64,
    pub sent: u64,
    pub acked: u64,
    pub publish_failures: u64,
    pub overrun: u64,
    /// Deliveries the publishers' messages should have produced, given
    /// the subscriptions (`None` without publishers in this process).
    pub expected: Option<u64>,
    /// PUBLISH packets received, duplicates included.
    pub received: u64,
    /// Distinct messages received from expected streams.
    pub unique: u64,
    /// Expected and never received (with publishers elsewhere: the gaps
    /// in the sequence numbers seen, a lower bound).
    pub lost: u64,
    /// Of those, QoS 1/2 messages to QoS 1/2 subscriptions: the broker had
    /// acknowledged them to their publisher and must deliver them (`None`
    /// without publishers in this process).
    pub lost_acknowledged: Option<u64>,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Received from a stream that no subscription should have delivered.
    pub unexpected: u64,
    /// Received without a load-generator header.
    pub foreign: u64,
    pub sent_per_second: f64,
    pub received_per_second: f64,
    pub latency_us: Percentiles,
    pub broker: Option<ProcSummary>,
    pub generator: ProcSummary,
    /// Broker RSS growth per connection from start to all connected.
    pub broker_bytes_per_connection: Option<f64>,
    /// Generator RSS growth per connection, the same way.
    pub generator_bytes_per_connection: f64,
    pub series: Vec<Sample>,
}

/// Resolves `--host` values once.
async fn resolve(hosts: &[String]) -> Result<Vec<SocketAddr>, LoadError> {
    let mut out = Vec::new();
    for h in hosts {
        let with_port = if h.contains(':') && !h.ends_with(']') {
            h.clone()
        } else {
            format!("{h}:1883")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| LoadError::Invalid(format!("--host {h}: {e}")))?
            .next()
            .ok_or_else(|| LoadError::Invalid(format!("--host {h}: no address")))?;
        out.push(addr);
    }
    Ok(out)
}

/// A publisher stream: its topic and QoS, indexed by stream id.
type Stream = (String, u8);

/// The clients of a plan, the receivers to read at the end, and the
/// publisher streams.
fn build(
    plan: &Plan,
    brokers: &[SocketAddr],
) -> (Vec<Client>, Vec<Arc<Mutex<Receiver>>>, Vec<Stream>) {
    let c = &plan.connection;
    let mut clients = Vec::with_capacity(plan.clients());
    let mut receivers = Vec::new();
    let mut topics = Vec::new();
    for g in &plan.groups {
        let group_receiver = match &g.role {
            Role::Subscriber {
                topic,
                shared: Some(_),
                qos,
            } => {
                let r = Arc::new(Mutex::new(Receiver {
                    filter: expand(topic, 0, ""),
                    shared: true,
                    qos: *qos,
                    ..Receiver::default()
                }));
                receivers.push(r.clone());
                Some(r)
            }
            _ => None,
        };
        for i in 0..g.count {
            let index = clients.len();
            let client_id = format!("{}-{}-{i}", c.client_prefix, g.name);
            let task = match &g.role {
                Role::Idle => Task::Idle,
                Role::Subscriber { topic, qos, shared } => {
                    let filter = expand(topic, i, &client_id);
                    let receiver = match &group_receiver {
                        Some(r) => r.clone(),
                        None => {
                            let r = Arc::new(Mutex::new(Receiver {
                                filter: filter.clone(),
                                qos: *qos,
                                ..Receiver::default()
                            }));
                            receivers.push(r.clone());
                            r
                        }
                    };
                    let filter = match shared {
                        Some(s) => format!("$share/{s}/{filter}"),
                        None => filter,
                    };
                    Task::Subscribe {
                        filter,
                        qos: *qos,
                        receiver,
                    }
                }
                Role::Publisher(p) => {
                    let name = expand(&p.topic, i, &client_id);
                    let stream = topics.len() as u32;
                    topics.push((name.clone(), p.qos));
                    Task::Publish {
                        spec: Publish {
                            topic: name,
                            ..p.clone()
                        },
                        stream,
                        phase: i as f64 / g.count as f64,
                    }
                }
            };
            clients.push(Client {
                index,
                client_id,
                broker: brokers[index % brokers.len()],
                source: (!c.src_ips.is_empty()).then(|| c.src_ips[index % c.src_ips.len()]),
                task,
            });
        }
    }
    (clients, receivers, topics)
}

/// Watches the counters once a second: the time series, the progress
/// line, and the processes' CPU and memory.
struct Sampler {
    started: Instant,
    broker: Option<Proc>,
    me: Proc,
    last: Reading,
    series: Vec<Sample>,
    bar: Option<ProgressBar>,
    quiet: bool,
    last_line: Instant,
}

/// What the previous sample saw, for the rates of the next.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    sent: u64,
    received: u64,
    broker: Option<Usage>,
    me: Option<Usage>,
}

impl Sampler {
    fn new(options: &Options, started: Instant) -> Sampler {
        let broker = options.broker_pid.map(Proc::pid);
        let me = Proc::current();
        let b = broker.as_ref().and_then(Proc::usage);
        let m = me.usage();
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = (options.progress == Progress::Auto && tty).then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            bar
        });
        Sampler {
            started,
            broker,
            me,
            last: Reading {
                at: started,
                sent: 0,
                received: 0,
                broker: b,
                me: m,
            },
            series: Vec::new(),
            bar,
            quiet: options.progress == Progress::Quiet,
            last_line: started,
        }
    }

    fn sample(&mut self, stats: &Stats, phase: &str) {
        let now = Instant::now();
        let c = &stats.counters;
        let (sent, received) = (Counters::get(&c.sent), Counters::get(&c.received));
        let last = self.last;
        let dt = now.duration_since(last.at).as_secs_f64().max(1e-6);
        let b = self.broker.as_ref().and_then(Proc::usage);
        let m = self.me.usage();
        let pct = |a: Option<Usage>, b: Option<Usage>| match (a, b) {
            (Some(a), Some(b)) => Some((b.cpu_seconds - a.cpu_seconds) / dt * 100.0),
            _ => None,
        };
        let s = Sample {
            t: now.duration_since(self.started).as_secs_f64(),
            connected: Counters::get(&c.connected),
            sent_rate: (sent - last.sent) as f64 / dt,
            received_rate: (received - last.received) as f64 / dt,
            broker_cpu_percent: pct(last.broker, b),
            broker_rss_kib: b.map(|u| u.rss_kib),
            generator_cpu_percent: pct(last.me, m).unwrap_or(0.0),
            generator_rss_kib: m.map_or(0, |u| u.rss_kib),
        };
        let line = format!(
            "{:>5.0}s {phase:<10} conn {} (failed {}) sent {:.0}/s recv {:.0}/s{} gen cpu {:.0}%",
            s.t,
            s.connected,
            Counters::get(&c.connect_failures),
            s.sent_rate,
            s.received_rate,
            match (s.broker_cpu_percent, s.broker_rss_kib) {
                (Some(cpu), Some(rss)) => format!(" broker cpu {cpu:.0}% rss {} MiB", rss / 1024),
                _ => String::new(),
            },
            s.generator_cpu_percent,
        );
        match &self.bar {
            Some(bar) => bar.set_message(line),
            None if !self.quiet
                && now.duration_since(self.last_line) >= Duration::from_secs(10) =>
            {
                eprintln!("{line}");
                self.last_line = now;
            }
            None => {}
        }
        self.last = Reading {
            at: now,
            sent,
            received,
            broker: b,
            me: m,
        };
        self.series.push(s);
    }

    /// The broker's and the generator's usage now.
    fn readings(&self) -> (Option<Usage>, Usage) {
        (
            self.broker.as_ref().and_then(Proc::usage),
            self.me.usage().unwrap_or_default(),
        )
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The delivery time when the last delivery came late, after publishing
/// stopped and more than what was in flight then needs (10 ms or 1 % of
/// the publishing time, whichever is longer): from `go` to that delivery.
/// `None` when it came in time.
fn late_delivery_seconds(go: Instant, publish_seconds: f64, last: Option<Instant>) -> Option<f64> {
    let secs = last?.checked_duration_since(go)?.as_secs_f64();
    let grace = (publish_seconds * 0.01).max(0.010);
    (secs > publish_seconds + grace).then_some(secs)
}

/// Waits until `done()` or `deadline`, sampling once a second.
async fn wait_until(
    sampler: &mut Sampler,
    stats: &Stats,
    phase: &str,
    deadline: Instant,
    mut done: impl FnMut() -> bool,
) {
    let mut next_sample = sampler.last.at + Duration::from_secs(1);
    while !done() && Instant::now() < deadline {
        let wake = (Instant::now() + Duration::from_millis(20)).min(deadline);
        tokio::time::sleep_until(wake).await;
        if Instant::now() >= next_sample {
            sampler.sample(stats, phase);
            next_sample += Duration::from_secs(1);
        }
    }
}

/// Runs the plan to the end and summarises it.
pub async fn run(plan: Plan, options: Options) -> Result<Summary, LoadError> {
    plan.validate()?;
    let brokers = resolve(&plan.connection.hosts).await?;
    let tls = match &plan.connection.tls {
        Some(t) => Some(crate::tls::connector(t)?),
        None => None,
    };
    let (clients, receivers, topics) = build(&plan, &brokers);
    let total = clients.len() as u64;
    let publishers = clients
        .iter()
        .filter(|c| matches!(c.task, Task::Publish { .. }))
        .count() as u64;
    let subscribers = clients
        .iter()
        .filter(|c| matches!(c.task, Task::Subscribe { .. }))
        .count() as u64;
    let stats = Arc::new(Stats::new()?);
    let shared = Arc::new(Shared {
        stats: stats.clone(),
        connection: Arc::new(plan.connection.clone()),
        wire: Wire {
            version: plan.connection.version,
        },
        tls,
        go: CancellationToken::new(),
        stop_publishing: CancellationToken::new(),
        stop: CancellationToken::new(),
        storm: CancellationToken::new(),
        sent: Arc::new(topics.iter().map(|_| AtomicU64::new(0)).collect()),
        acked: Arc::new(topics.iter().map(|_| AtomicU64::new(0)).collect()),
    });
    let started = Instant::now();
    let mut sampler = Sampler::new(&options, started);
    let at_start = sampler.readings();
    let c = &stats.counters;

    // Connect, at the plan's rate, within the connect deadline.
    let deadline = started + plan.connect_deadline;
    let mut pacer = Pacer::new(started, plan.connection.connect_rate, 1024);
    let mut tasks = tokio::task::JoinSet::new();
    let mut pending = clients.into_iter();
    let mut next_sample = started + Duration::from_secs(1);
    loop {
        let now = Instant::now();
        let n = pacer.due(now);
        let mut spawned = 0;
        for client in pending.by_ref().take(n as usize) {
            tasks.spawn(client::run(client, shared.clone()));
            spawned += 1;
        }
        pacer.take(spawned);
        if spawned < n || now >= deadline {
            break;
        }
        if now >= next_sample {
            sampler.sample(&stats, "connecting");
            next_sample += Duration::from_secs(1);
        }
        match pacer.next_due() {
            Some(at) => tokio::time::sleep_until(at.min(now + Duration::from_millis(100))).await,
            None => tokio::task::yield_now().await,
        }
    }
    // A reconnect storm starts once every client has connected once (or
    // failed to); its connects are the ones counted.
    let mut connects_from = started;
    let mut at_from = at_start;
    if plan.connection.cycles > 1 {
        wait_until(&mut sampler, &stats, "warming up", deadline, || {
            Counters::get(&c.warm) + Counters::get(&c.connect_failures) >= total
        })
        .await;
        connects_from = Instant::now();
        at_from = sampler.readings();
        shared.storm.cancel();
    }
    // Everyone connected (and subscribed), or the deadline passed, or no
    // client can still get in (all failed without --reconnect).
    let reconnecting = plan.connection.reconnect.is_some();
    wait_until(&mut sampler, &stats, "connecting", deadline, || {
        let ready = Counters::get(&c.ready);
        ready >= total
            || (!reconnecting
                && ready + Counters::get(&c.connect_failures) + Counters::get(&c.dropped) >= total)
    })
    .await;
    let connected_at = Instant::now();
    let connect_seconds = connected_at.duration_since(connects_from).as_secs_f64();
    let at_go = sampler.readings();

    // Publish (or hold) for the duration.
    shared.go.cancel();
    let go = Instant::now();
    let phase = if publishers > 0 {
        "publishing"
    } else {
        "holding"
    };
    wait_until(&mut sampler, &stats, phase, go + plan.duration, || false).await;
    shared.stop_publishing.cancel();
    let publish_seconds = go.elapsed().as_secs_f64();
    let at_stop = sampler.readings();

    // Drain: until nothing has arrived and no acknowledgement has come
    // for half a second, within the drain time.
    let drain_end = Instant::now() + plan.drain;
    let mut quiet_since = (
        Instant::now(),
        Counters::get(&c.received),
        Counters::get(&c.acked),
    );
    wait_until(&mut sampler, &stats, "draining", drain_end, || {
        let now = Instant::now();
        let (r, a) = (Counters::get(&c.received), Counters::get(&c.acked));
        if (r, a) != (quiet_since.1, quiet_since.2) {
            quiet_since = (now, r, a);
        }
        now.duration_since(quiet_since.0) >= Duration::from_millis(500)
    })
    .await;
    // Deliveries that arrived late (a broker that buffers and delivers
    // after publishing stopped) extend the delivery time received/s is
    // over, so a late burst is not counted as throughput. CPU is then read
    // here, after the drain's quiet half second, and divided by the time
    // up to here.
    let (delivery_seconds, at_delivered, cpu_seconds_span) =
        match late_delivery_seconds(go, publish_seconds, stats.last_receipt()) {
            Some(secs) => (secs, sampler.readings(), go.elapsed().as_secs_f64()),
            None => (publish_seconds, at_stop, publish_seconds),
        };
    shared.stop.cancel();
    let stop_deadline = Instant::now() + Duration::from_secs(10);
    while !tasks.is_empty() {
        match tokio::time::timeout_at(stop_deadline, tasks.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                tasks.abort_all();
                break;
            }
        }
    }
    sampler.sample(&stats, "done");
    sampler.finish();

    // Deliveries: what each receiver should have got, and did.
    let sent: Vec<u64> = shared
        .sent
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .collect();
    let acked: Vec<u64> = shared
        .acked
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .collect();
    let mut by_topic: HashMap<&str, Vec<u32>> = HashMap::new();
    for (i, (t, _)) in topics.iter().enumerate() {
        by_topic.entry(t.as_str()).or_default().push(i as u32);
    }
    let (mut expected, mut unique, mut unexpected, mut foreign) = (0u64, 0u64, 0u64, 0u64);
    let mut lost_acknowledged = 0u64;
    let mut all = Counts::default();
    for r in &receivers {
        let r = r.lock();
        foreign += r.foreign;
        // Ascending stream ids either way (`by_topic` is filled in order).
        let matched: Vec<u32> = if r.filter.contains(['+', '#']) {
            (0..topics.len() as u32)
                .filter(|&s| matches(&r.filter, &topics[s as usize].0))
                .collect()
        } else {
            by_topic.get(r.filter.as_str()).cloned().unwrap_or_default()
        };
        expected += matched.iter().map(|&s| sent[s as usize]).sum::<u64>();
        // Messages a broker must deliver: QoS 1/2 publishes it
        // acknowledged, to a QoS 1/2 subscription.
        if r.qos > 0 {
            for &s in matched.iter().filter(|&&s| topics[s as usize].1 > 0) {
                let got = r.streams.get(&s).map_or(0, |t| t.counts().unique);
                lost_acknowledged += acked[s as usize].saturating_sub(got);
            }
        }
        for (stream, t) in &r.streams {
            let mut counts = t.counts().clone();
            if r.shared {
                counts.out_of_order = 0;
            }
            all.add(&counts);
            if matched.binary_search(stream).is_ok() || topics.is_empty() {
                unique += t.counts().unique;
            } else {
                unexpected += t.counts().unique;
            }
        }
    }
    let have_publishers = !topics.is_empty();
    let lost = if have_publishers {
        expected.saturating_sub(unique)
    } else {
        all.gaps()
    };

    let now = sampler.readings();
    // The highest RSS any sample saw (the last one was taken after stop).
    let series = &sampler.series;
    let broker_max_rss = series
        .iter()
        .filter_map(|x| x.broker_rss_kib)
        .max()
        .unwrap_or(0);
    let my_max_rss = series
        .iter()
        .map(|x| x.generator_rss_kib)
        .max()
        .unwrap_or(0);
    let proc_summary =
        |start: Usage, from: Usage, go: Usage, stop: Usage, end: Usage, max_rss: u64| ProcSummary {
            cpu_seconds: end.cpu_seconds,
            cpu_seconds_connecting: go.cpu_seconds - from.cpu_seconds,
            cpu_percent: (stop.cpu_seconds - go.cpu_seconds) / cpu_seconds_span.max(1e-6) * 100.0,
            rss_kib_start: start.rss_kib,
            rss_kib_connected: go.rss_kib,
            rss_kib_max: max_rss,
        };
    let broker = match (at_start.0, at_from.0, at_go.0, at_delivered.0, now.0) {
        (Some(a), Some(f), Some(b), Some(c), Some(d)) => {
            Some(proc_summary(a, f, b, c, d, broker_max_rss))
        }
        _ => None,
    };
    let generator = proc_summary(
        at_start.1,
        at_from.1,
        at_go.1,
        at_delivered.1,
        now.1,
        my_max_rss,
    );
    let connects = Counters::get(&c.connects);
    let connect_errors = stats.connect_errors.lock().clone();
    let per_conn = |start: u64, connected: u64| {
        (connected.saturating_sub(start) as f64 * 1024.0) / connects.max(1) as f64
    };
    Ok(Summary {
        name: plan.name.clone(),
        command: options.command.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: match plan.connection.version {
            crate::plan::Version::V4 => "MQTT 3.1.1".into(),
            crate::plan::Version::V5 => "MQTT 5.0".into(),
        },
        clients: total,
        publishers,
        subscribers,
        connects,
        connect_failures: Counters::get(&c.connect_failures),
        connect_errors,
        dropped: Counters::get(&c.dropped),
        reconnects: Counters::get(&c.reconnects),
        connect_seconds,
        connect_rate: connects as f64 / connect_seconds.max(1e-6),
        connect_latency_us: Percentiles::of(&stats.connect_latency.merged()),
        cycles: plan.connection.cycles,
        tls_handshakes: Counters::get(&c.tls_handshakes),
        tls_resumed: Counters::get(&c.tls_resumed),
        tls_post_quantum: Counters::get(&c.tls_post_quantum),
        subscribe_failures: Counters::get(&c.subscribe_failures),
        publish_seconds,
        sent: Counters::get(&c.sent),
        acked: Counters::get(&c.acked),
        publish_failures: Counters::get(&c.publish_failures),
        overrun: Counters::get(&c.overrun),
        expected: have_publishers.then_some(expected),
        received: Counters::get(&c.received),
        unique,
        lost,
        lost_acknowledged: (have_publishers && !receivers.is_empty()).then_some(lost_acknowledged),
        duplicates: all.duplicates,
        out_of_order: all.out_of_order,
        unexpected,
        foreign,
        sent_per_second: Counters::get(&c.sent) as f64 / publish_seconds.max(1e-6),
        delivery_seconds,
        received_per_second: Counters::get(&c.received) as f64 / delivery_seconds.max(1e-6),
        latency_us: Percentiles::of(&stats.latency.merged()),
        broker_bytes_per_connection: broker
            .as_ref()
            .map(|b| per_conn(b.rss_kib_start, b.rss_kib_connected)),
        generator_bytes_per_connection: per_conn(
            generator.rss_kib_start,
            generator.rss_kib_connected,
        ),
        broker,
        generator,
        series: sampler.series.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::late_delivery_seconds;
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn deliveries_after_publishing_extend_the_delivery_time() {
        let go = Instant::now();
        let at = |ms| Some(go + Duration::from_millis(ms));
        // Nothing arrived, the last delivery came while publishing, or
        // within the grace for what was in flight (1 % of 5 s).
        assert_eq!(late_delivery_seconds(go, 5.0, None), None);
        assert_eq!(late_delivery_seconds(go, 5.0, at(4_900)), None);
        assert_eq!(late_delivery_seconds(go, 5.0, at(5_040)), None);
        // A broker that buffered and delivered 3 s late is charged for it.
        let late = late_delivery_seconds(go, 5.0, at(8_000)).expect("late");
        assert!((late - 8.0).abs() < 1e-6, "{late}");
    }
}
