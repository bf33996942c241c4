//! `/metrics`: every counter of the node in the Prometheus text format, or
//! OpenMetrics when the scraper asks for it (`Accept:
//! application/openmetrics-text`), encoded by `prometheus-client`.
//!
//! The hot paths keep their own atomics (`metrics/`, `tenant/quota.rs`,
//! the store's); [`NodeCollector`] reads them at each scrape, so a
//! scrape costs the node nothing between scrapes. Names and labels are
//! listed in `docs/metrics.md`; labels are bounded (tenant, listener,
//! reason, QoS, kind), never a client id.

use std::collections::HashMap;
use std::fmt::{Error, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::AdminState;
use crate::broker::Broker;
use crate::ids::TenantId;
use crate::metrics::histogram::Snapshot;
use crate::metrics::{BadPacket, DropReason, Ended, Metrics, TlsFailure, LISTENERS};
use crate::tenant::quota::{QuotaKind, Usage};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry `/metrics` encodes: the node's collector only.
pub fn registry(broker: Arc<Broker>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(NodeCollector { broker }));
    r
}

pub async fn scrape(State(s): State<AdminState>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let body = render(&s.registry, openmetrics);
    let kind = if openmetrics { OPENMETRICS } else { TEXT };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(kind))],
        body,
    )
}

/// The whole exposition, OpenMetrics or the Prometheus text format.
pub fn render(registry: &Registry, openmetrics: bool) -> String {
    let mut out = String::with_capacity(64 * 1024);
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    if openmetrics {
        out
    } else {
        to_text_format(&out)
    }
}

/// The node's metrics as Prometheus text, for tests and `$SYS`-less
/// checks without the HTTP listener.
pub fn render_node(broker: &Arc<Broker>) -> String {
    render(&registry(broker.clone()), false)
}

/// OpenMetrics to the Prometheus text format 0.0.4: a counter's family is
/// named with its `_total` suffix there, an info metric is a gauge named
/// with `_info`, and there are no `# UNIT` lines or `# EOF`. (`# HELP`
/// comes before `# TYPE`, so it is renamed with the line after it.)
fn to_text_format(om: &str) -> String {
    let lines: Vec<&str> = om
        .lines()
        .filter(|l| !l.starts_with("# EOF") && !l.starts_with("# UNIT "))
        .collect();
    let typed = |line: &str| -> Option<(String, &'static str)> {
        let rest = line.strip_prefix("# TYPE ")?;
        let (name, kind) = rest.split_once(' ')?;
        Some(match kind {
            "counter" => (format!("{name}_total"), "counter"),
            "info" => (format!("{name}_info"), "gauge"),
            "gauge" => (name.to_owned(), "gauge"),
            "histogram" => (name.to_owned(), "histogram"),
            _ => (name.to_owned(), "untyped"),
        })
    };
    let mut out = String::with_capacity(om.len() + 2048);
    for (i, line) in lines.iter().enumerate() {
        if let Some((name, kind)) = typed(line) {
            let _ = writeln!(out, "# TYPE {name} {kind}");
        } else if let Some(help) = line.strip_prefix("# HELP ") {
            let doc = help.split_once(' ').map_or("", |(_, d)| d);
            match lines.get(i + 1).and_then(|next| typed(next)) {
                Some((name, _)) => {
                    let _ = writeln!(out, "# HELP {name} {doc}");
                }
                None => {
                    let _ = writeln!(out, "{line}");
                }
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Reads every counter of the node at each scrape.
#[derive(Debug)]
pub struct NodeCollector {
    broker: Arc<Broker>,
}

/// A descriptor and its samples, with less ceremony.
struct Out<'a, 'b> {
    e: &'a mut DescriptorEncoder<'b>,
}

impl Out<'_, '_> {
    /// A metric without labels.
    fn one(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        metric: impl EncodeMetric,
    ) -> Result<(), Error> {
        let m = self
            .e
            .encode_descriptor(name, help, unit, metric.metric_type())?;
        metric.encode(m)
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) -> Result<(), Error> {
        self.one(name, help, None, ConstCounter::new(v))
    }

    fn gauge(&mut self, name: &str, help: &str, unit: Option<&Unit>, v: i64) -> Result<(), Error> {
        self.one(name, help, unit, ConstGauge::new(v))
    }

    /// A metric with one series per label set.
    fn family<'l, L: EncodeLabelSet + 'l, M: EncodeMetric>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        kind: MetricType,
        rows: impl IntoIterator<Item = (&'l L, M)>,
    ) -> Result<(), Error> {
        let mut m = self.e.encode_descriptor(name, help, unit, kind)?;
        for (labels, metric) in rows {
            metric.encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        rows: &[(L, u64)],
    ) -> Result<(), Error> {
        let rows = rows.iter().map(|(l, v)| (l, ConstCounter::new(*v)));
        self.family(name, help, None, MetricType::Counter, rows)
    }

    fn gauges<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        rows: &[(L, i64)],
    ) -> Result<(), Error> {
        let rows = rows.iter().map(|(l, v)| (l, ConstGauge::new(*v)));
        self.family(name, help, unit, MetricType::Gauge, rows)
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        h: &Snapshot,
    ) -> Result<(), Error> {
        let mut m: MetricEncoder =
            self.e
                .encode_descriptor(name, help, unit, MetricType::Histogram)?;
        // The encoder wants each bucket's own count (it accumulates) and
        // `f64::MAX` for `+Inf`.
        let mut previous = 0;
        let buckets: Vec<(f64, u64)> = h
            .buckets
            .iter()
            .map(|(bound, cumulative)| {
                let own = cumulative - previous;
                previous = *cumulative;
                let bound = if bound.is_infinite() {
                    f64::MAX
                } else {
                    *bound
                };
                (bound, own)
            })
            .collect();
        m.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
    }
}

type Labels1 = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];

fn l1(k: &'static str, v: impl Into<String>) -> Labels1 {
    [(k, v.into())]
}

fn l2(k1: &'static str, v1: impl Into<String>, k2: &'static str, v2: impl Into<String>) -> Labels2 {
    [(k1, v1.into()), (k2, v2.into())]
}

const QOS: [&str; 3] = ["0", "1", "2"];

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), Error> {
        let mut o = Out { e: &mut e };
        let b = &self.broker;
        node(&mut o, b)?;
        connections(&mut o, &b.metrics)?;
        tls(&mut o, &b.metrics)?;
        let tenants = b.tenants.snapshot();
        tenant_traffic(&mut o, &tenants)?;
        state(&mut o, b, &tenants)?;
        storage(&mut o, b)?;
        process(&mut o)
    }
}

/// Build, uptime, reloads, flow control, accept failures.
fn node(o: &mut Out, b: &Broker) -> Result<(), Error> {
    let m = &b.metrics;
    let g = Metrics::get;
    {
        let labels = l2(
            "version",
            env!("CARGO_PKG_VERSION"),
            "commit",
            env!("PORCHLIGHT_GIT_COMMIT"),
        );
        let mut info = o.e.encode_descriptor(
            "porchlight_build",
            "Version and git commit of this build",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&labels)?;
    }
    o.one(
        "porchlight_uptime",
        "Time since the node started",
        Some(&Unit::Seconds),
        ConstGauge::new(b.started_at.elapsed().as_secs_f64()),
    )?;
    o.counters(
        "porchlight_reloads",
        "Changed files taken into use (tls: certificate, key, CA, CRL; auth: --auth-file and --tenants)",
        &[
            (l1("file", "tls"), g(&m.tls_reloads)),
            (l1("file", "auth"), g(&m.auth_reloads)),
        ],
    )?;
    o.counters(
        "porchlight_reload_failures",
        "Changed files refused (the previous version stays in use)",
        &[
            (l1("file", "tls"), g(&m.tls_reload_failures)),
            (l1("file", "auth"), g(&m.auth_reload_failures)),
        ],
    )?;
    o.counter(
        "porchlight_publish_backpressure_waits",
        "Publishers paused because a subscriber queue was full (--publish-backpressure-ms)",
        g(&m.backpressure_waits),
    )?;
    o.counter(
        "porchlight_publish_backpressure_timeouts",
        "Pauses that ran out: the subscriber was treated as stuck and dropped for",
        g(&m.backpressure_timeouts),
    )?;
    o.histogram(
        "porchlight_publish_to_write",
        "From a PUBLISH decoded to each delivery of it written to a subscriber's socket (connected subscribers only)",
        Some(&Unit::Seconds),
        &m.publish_to_write_seconds.snapshot(),
    )
}

/// Sockets, clients, refusals, disconnects, bad input, auth.
fn connections(o: &mut Out, m: &Metrics) -> Result<(), Error> {
    let g = Metrics::get;
    let by_listener = |cells: &[std::sync::atomic::AtomicU64; 4]| -> Vec<(Labels1, u64)> {
        LISTENERS
            .iter()
            .zip(cells)
            .map(|(l, c)| (l1("listener", *l), c.load(Ordering::Relaxed)))
            .collect()
    };
    let open: Vec<(Labels1, i64)> = by_listener(&m.listener_connections)
        .into_iter()
        .map(|(l, v)| (l, v as i64))
        .collect();
    o.gauges(
        "porchlight_connections",
        "Open sockets, including those still in the TLS, WebSocket or CONNECT handshake",
        None,
        &open,
    )?;
    o.counters(
        "porchlight_connections_accepted",
        "Sockets accepted",
        &by_listener(&m.listener_connections_total),
    )?;
    o.gauge(
        "porchlight_clients_connected",
        "Clients past CONNACK",
        None,
        g(&m.clients_connected) as i64,
    )?;
    // Summed by label: codes without a name of their own share `other`.
    let mut by_reason: std::collections::BTreeMap<&str, u64> = Default::default();
    for (code, n) in m.refused_counts() {
        *by_reason
            .entry(crate::codec::reason::name(code))
            .or_default() += n;
    }
    let refused: Vec<(Labels1, u64)> = by_reason
        .into_iter()
        .map(|(reason, n)| (l1("reason", reason), n))
        .collect();
    o.counters(
        "porchlight_connections_refused",
        "CONNECTs refused, by CONNACK reason",
        &refused,
    )?;
    let ended: Vec<(Labels1, u64)> = Ended::ALL
        .iter()
        .map(|w| (l1("reason", w.label()), m.disconnect_count(*w)))
        .collect();
    o.counters(
        "porchlight_disconnects",
        "Connections past CONNACK that ended, by why",
        &ended,
    )?;
    let bad: Vec<(Labels1, u64)> = BadPacket::ALL
        .iter()
        .map(|k| (l1("kind", k.label()), m.bad_packet_count(*k)))
        .collect();
    o.counters(
        "porchlight_bad_packets",
        "Connections closed for bad input, by kind",
        &bad,
    )?;
    o.counter(
        "porchlight_auth_failures",
        "CONNECTs refused for bad credentials or refused anonymous access",
        g(&m.auth_failures),
    )?;
    o.counters(
        "porchlight_acl_denied",
        "PUBLISH and SUBSCRIBE refused by the ACL",
        &[
            (l1("action", "publish"), g(&m.acl_denied_publish)),
            (l1("action", "subscribe"), g(&m.acl_denied_subscribe)),
        ],
    )?;
    o.counter(
        "porchlight_proxy_header_errors",
        "PROXY protocol headers malformed or missing",
        g(&m.proxy_header_errors),
    )?;
    o.counter(
        "porchlight_ws_handshake_failures",
        "WebSocket upgrades refused or timed out",
        g(&m.ws_handshake_failures),
    )?;
    o.counter(
        "porchlight_accept_failures",
        "Failed accept calls (out of file descriptors, mostly)",
        g(&m.accept_failures),
    )?;
    o.counter(
        "porchlight_messages_received",
        "PUBLISH packets received",
        g(&m.messages_received),
    )?;
    o.counter(
        "porchlight_messages_sent",
        "PUBLISH packets sent",
        g(&m.messages_sent),
    )?;
    o.one(
        "porchlight_network_received",
        "Bytes read from client sockets (after TLS and WebSocket)",
        Some(&Unit::Bytes),
        ConstCounter::new(g(&m.bytes_received) as f64),
    )?;
    o.one(
        "porchlight_network_sent",
        "Bytes written to client sockets (before TLS and WebSocket)",
        Some(&Unit::Bytes),
        ConstCounter::new(g(&m.bytes_sent) as f64),
    )?;
    let drops: Vec<(Labels1, u64)> = DropReason::ALL
        .iter()
        .map(|r| (l1("reason", r.label()), m.dropped_count(*r)))
        .collect();
    o.counters(
        "porchlight_messages_dropped",
        "Deliveries not made, by reason",
        &drops,
    )
}

fn tls(o: &mut Out, m: &Metrics) -> Result<(), Error> {
    let g = Metrics::get;
    o.counters(
        "porchlight_tls_handshakes",
        "Completed TLS handshakes, full and resumed (session ticket or id)",
        &[
            (l1("kind", "full"), g(&m.tls_handshakes_full)),
            (l1("kind", "resumed"), g(&m.tls_handshakes_resumed)),
        ],
    )?;
    let failed: Vec<(Labels1, u64)> = TlsFailure::ALL
        .iter()
        .map(|f| (l1("reason", f.label()), m.tls_failure_count(*f)))
        .collect();
    o.counters(
        "porchlight_tls_handshake_failures",
        "TLS handshakes that failed, by reason",
        &failed,
    )?;
    o.histogram(
        "porchlight_tls_handshake_duration",
        "Successful TLS handshakes, from accept to finished",
        Some(&Unit::Seconds),
        &m.tls_handshake_seconds.snapshot(),
    )?;
    let expiry = m.tls_certificate_expiry.load(Ordering::Relaxed);
    if expiry > 0 {
        o.gauge(
            "porchlight_tls_certificate_expiry_timestamp",
            "When the server certificate in use expires (notAfter, Unix time)",
            Some(&Unit::Seconds),
            expiry,
        )?;
    }
    Ok(())
}

/// Traffic, connections and quota counters per tenant.
fn tenant_traffic(o: &mut Out, tenants: &[(TenantId, Arc<Usage>)]) -> Result<(), Error> {
    let per_qos = |f: fn(&Usage) -> &[AtomicU64; 3]| by_label(tenants, "qos", &QOS, f);
    o.counters(
        "porchlight_tenant_messages_received",
        "PUBLISH packets received into the tenant, by QoS",
        &per_qos(|u| &u.messages_in),
    )?;
    let bytes: Vec<(Labels2, f64)> = per_qos(|u| &u.bytes_in)
        .into_iter()
        .map(|(l, v)| (l, v as f64))
        .collect();
    o.family(
        "porchlight_tenant_received",
        "Payload bytes received into the tenant, by QoS",
        Some(&Unit::Bytes),
        MetricType::Counter,
        bytes.iter().map(|(l, v)| (l, ConstCounter::new(*v))),
    )?;
    o.counters(
        "porchlight_tenant_messages_sent",
        "PUBLISH packets sent to the tenant's connections, by QoS",
        &per_qos(|u| &u.messages_out),
    )?;
    let bytes: Vec<(Labels2, f64)> = per_qos(|u| &u.bytes_out)
        .into_iter()
        .map(|(l, v)| (l, v as f64))
        .collect();
    o.family(
        "porchlight_tenant_sent",
        "Payload bytes sent to the tenant's connections, by QoS",
        Some(&Unit::Bytes),
        MetricType::Counter,
        bytes.iter().map(|(l, v)| (l, ConstCounter::new(*v))),
    )?;
    let per_listener =
        |f: fn(&Usage) -> &[AtomicU64; 4]| by_label(tenants, "listener", &LISTENERS, f);
    let connected: Vec<(Labels2, i64)> = per_listener(|u| &u.listener_connections)
        .into_iter()
        .map(|(l, v)| (l, v as i64))
        .collect();
    o.gauges(
        "porchlight_tenant_connections",
        "The tenant's connected clients, by listener",
        None,
        &connected,
    )?;
    o.counters(
        "porchlight_tenant_connects",
        "Connections the tenant's clients made (past CONNACK), by listener",
        &per_listener(|u| &u.listener_connections_total),
    )?;
    let rejections: Vec<(Labels2, u64)> = tenants
        .iter()
        .flat_map(|(t, u)| {
            QuotaKind::ALL.iter().map(move |k| {
                (
                    l2("tenant", t.as_str(), "kind", k.label()),
                    u.rejections(*k),
                )
            })
        })
        .collect();
    o.counters(
        "porchlight_tenant_quota_rejections",
        "Requests refused by a tenant quota, by quota",
        &rejections,
    )?;
    let drops: Vec<(Labels2, u64)> = tenants
        .iter()
        .flat_map(|(t, u)| {
            DropReason::ALL
                .iter()
                .map(move |r| (l2("tenant", t.as_str(), "reason", r.label()), u.drops(*r)))
        })
        .collect();
    o.counters(
        "porchlight_tenant_messages_dropped",
        "Deliveries to the tenant's sessions not made, by reason",
        &drops,
    )?;
    Ok(())
}

/// One series per tenant and value of `key`, read from the tenant's
/// by-QoS or by-listener cells.
fn by_label<const N: usize>(
    tenants: &[(TenantId, Arc<Usage>)],
    key: &'static str,
    values: &[&str; N],
    cells: fn(&Usage) -> &[AtomicU64; N],
) -> Vec<(Labels2, u64)> {
    tenants
        .iter()
        .flat_map(|(t, u)| {
            values
                .iter()
                .zip(cells(u))
                .map(move |(v, c)| (l2("tenant", t.as_str(), key, *v), c.load(Ordering::Relaxed)))
        })
        .collect()
}

/// Sessions, subscriptions, retained messages, queues and in-flight
/// windows: node-wide and per tenant.
fn state(o: &mut Out, b: &Broker, tenants: &[(TenantId, Arc<Usage>)]) -> Result<(), Error> {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as i64;
    let mut sessions = Vec::new();
    for (t, u) in tenants {
        let persistent = load(&u.persistent_sessions);
        let all = load(&u.sessions);
        sessions.push((l2("tenant", t.as_str(), "kind", "persistent"), persistent));
        sessions.push((
            l2("tenant", t.as_str(), "kind", "clean"),
            (all - persistent).max(0),
        ));
    }
    o.gauges(
        "porchlight_tenant_sessions",
        "Sessions on the node, clean (end with their connection) and persistent",
        None,
        &sessions,
    )?;
    let each = |f: fn(&Usage) -> &std::sync::atomic::AtomicU64| -> Vec<(Labels1, i64)> {
        tenants
            .iter()
            .map(|(t, u)| (l1("tenant", t.as_str()), load(f(u))))
            .collect()
    };
    o.gauges(
        "porchlight_tenant_subscriptions",
        "Subscriptions of the tenant's sessions",
        None,
        &each(|u| &u.subscriptions),
    )?;
    o.gauges(
        "porchlight_tenant_retained_messages",
        "Retained messages in the tenant",
        None,
        &each(|u| &u.retained_messages),
    )?;
    o.gauges(
        "porchlight_tenant_retained",
        "Bytes of the tenant's retained messages (topic and payload)",
        Some(&Unit::Bytes),
        &each(|u| &u.retained_bytes),
    )?;
    o.gauges(
        "porchlight_tenant_queued",
        "Bytes queued for the tenant's sessions",
        Some(&Unit::Bytes),
        &each(|u| &u.queued_bytes),
    )?;
    // Queue lengths and in-flight windows live in each session: summed
    // here, one short lock per session.
    let mut queued: HashMap<TenantId, (i64, i64)> = HashMap::new();
    for s in b.state.all_sessions() {
        let st = s.lock();
        let e = queued.entry(s.key.tenant.clone()).or_default();
        e.0 += st.queued_len() as i64;
        e.1 += st.inflight.len() as i64;
    }
    let mut rows: Vec<(TenantId, (i64, i64))> = queued.into_iter().collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let queued_rows: Vec<(Labels1, i64)> = rows
        .iter()
        .map(|(t, v)| (l1("tenant", t.as_str()), v.0))
        .collect();
    o.gauges(
        "porchlight_tenant_queued_messages",
        "Messages queued for the tenant's sessions (in memory and on disk)",
        None,
        &queued_rows,
    )?;
    let inflight_rows: Vec<(Labels1, i64)> = rows
        .iter()
        .map(|(t, v)| (l1("tenant", t.as_str()), v.1))
        .collect();
    o.gauges(
        "porchlight_tenant_inflight_messages",
        "QoS 1 and 2 messages sent to the tenant's sessions and not yet acknowledged",
        None,
        &inflight_rows,
    )?;
    let m = &b.metrics;
    o.gauge(
        "porchlight_sessions",
        "Sessions on the node",
        None,
        b.state.session_count() as i64,
    )?;
    o.gauge(
        "porchlight_retained_messages",
        "Retained messages on the node (not counting $SYS)",
        None,
        Metrics::get(&m.retained) as i64,
    )?;
    let memory = b.state.queue_memory();
    o.gauge(
        "porchlight_queued_memory",
        "Memory held by queued messages, as --max-queued-memory counts it",
        Some(&Unit::Bytes),
        memory.used() as i64,
    )?;
    o.gauge(
        "porchlight_queued_memory_limit",
        "--max-queued-memory (0: no bound)",
        Some(&Unit::Bytes),
        memory.limit() as i64,
    )?;
    o.gauge(
        "porchlight_queued_spilled_messages",
        "Queued messages kept on disk only (past three quarters of --max-queued-memory)",
        None,
        memory.spilled() as i64,
    )?;
    o.counter(
        "porchlight_queued_memory_refusals",
        "Publishes refused and deliveries dropped at --max-queued-memory",
        memory.refused(),
    )
}

fn storage(o: &mut Out, b: &Broker) -> Result<(), Error> {
    let m = &b.metrics;
    let store = b.persist.store();
    o.gauge(
        "porchlight_storage_size",
        "Bytes the store uses on disk",
        Some(&Unit::Bytes),
        store.disk_used() as i64,
    )?;
    if let Some(limit) = store.disk_limit() {
        o.gauge(
            "porchlight_storage_limit",
            "--max-disk-bytes",
            Some(&Unit::Bytes),
            limit as i64,
        )?;
    }
    let health = b.persist.health();
    o.gauges(
        "porchlight_storage_healthy",
        "1 when the store accepts writes; 0 when it is full (--max-disk-bytes) or failing",
        None,
        &[(
            l1("state", health.name()),
            i64::from(health == porchlight_storage::Health::Ok),
        )],
    )?;
    o.counter(
        "porchlight_storage_refused_writes",
        "Writes the store refused (full, failing, or an injected fault)",
        store.refused_writes(),
    )?;
    o.histogram(
        "porchlight_storage_fsync_duration",
        "Group-commit fsyncs of the store",
        Some(&Unit::Seconds),
        &m.fsync_seconds.snapshot(),
    )?;
    o.histogram(
        "porchlight_storage_group_commit_writes",
        "Writes made durable by one fsync",
        None,
        &m.group_commit_writes.snapshot(),
    )
}

fn process(o: &mut Out) -> Result<(), Error> {
    let p = super::process::read();
    if let Some(v) = p.cpu_seconds {
        o.one(
            "process_cpu",
            "User and system CPU time",
            Some(&Unit::Seconds),
            ConstCounter::new(v),
        )?;
    }
    if let Some(v) = p.resident_bytes {
        o.gauge(
            "process_resident_memory",
            "Resident memory",
            Some(&Unit::Bytes),
            v as i64,
        )?;
    }
    if let Some(v) = p.open_fds {
        o.gauge("process_open_fds", "Open file descriptors", None, v as i64)?;
    }
    if let Some(v) = p.max_fds {
        o.gauge(
            "process_max_fds",
            "The open file descriptor limit",
            None,
            v as i64,
        )?;
    }
    if let Some(v) = p.start_time_seconds {
        o.one(
            "process_start_time",
            "When the process started (Unix time)",
            Some(&Unit::Seconds),
            ConstGauge::new(v),
        )?;
    }
    Ok(())
}
