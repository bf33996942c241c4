//! `/`: the status page. One server-rendered HTML page, no JavaScript: the
//! node, its listeners, clients and message rates over the last minutes
//! (inline SVG sparklines from `history.rs`), tenants against their
//! limits, and storage health, with a one-line verdict at the top. It
//! refreshes itself every 5 seconds (`<meta http-equiv="refresh">`).

use std::fmt::Write;

use axum::extract::State;
use axum::response::Html;

use super::api::{node_info, NodeInfo};
use super::AdminState;
use crate::tenant::quota::total;

/// Text safe inside HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An inline SVG line of `values`, scaled to its own maximum.
fn sparkline(id: &str, values: &[f64]) -> String {
    let (w, h) = (240.0, 40.0);
    if values.len() < 2 {
        return format!(
            "<svg id=\"{id}\" class=\"spark\" width=\"240\" height=\"40\" role=\"img\" aria-label=\"collecting\"><text x=\"4\" y=\"24\">collecting…</text></svg>"
        );
    }
    let max = values.iter().copied().fold(0.0_f64, f64::max).max(1.0);
    let step = w / (values.len() - 1) as f64;
    let mut points = String::new();
    for (i, v) in values.iter().enumerate() {
        let _ = write!(
            points,
            "{:.1},{:.1} ",
            i as f64 * step,
            h - 2.0 - (v / max) * (h - 4.0)
        );
    }
    format!(
        "<svg id=\"{id}\" class=\"spark\" width=\"240\" height=\"40\" viewBox=\"0 0 240 40\" role=\"img\" aria-label=\"last {} samples, peak {max:.0}\"><polyline fill=\"none\" stroke=\"#2a7\" stroke-width=\"1.5\" points=\"{}\"/></svg>",
        values.len(),
        points.trim_end()
    )
}

/// What the verdict line says: healthy, or each problem.
fn verdict(n: &NodeInfo) -> (bool, String) {
    let mut problems = Vec::new();
    if !n.ready {
        problems.push("not ready (starting or shutting down)".to_owned());
    }
    match n.storage.state {
        "ok" => {}
        "full" => problems.push("storage full: durable writes refused".to_owned()),
        _ => problems.push("storage failing: durable writes refused".to_owned()),
    }
    if problems.is_empty() {
        (
            true,
            "Healthy: ready, every listener accepting, storage writable".into(),
        )
    } else {
        (false, format!("Attention: {}", problems.join("; ")))
    }
}

pub async fn page(State(s): State<AdminState>) -> Html<String> {
    Html(render(&s))
}

pub fn render(s: &AdminState) -> String {
    let n = node_info(s);
    let series = s.history.series();
    let (ok, verdict) = verdict(&n);
    let mut o = String::with_capacity(16 * 1024);
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
<title>Porchlight {version}: node status</title><style>\
body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}}h1{{font-size:1.4em}}\
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{padding:.2em .8em;text-align:left;border-bottom:1px solid #ddd}}\
.ok{{background:#e6f6ec;color:#155d2b}}.bad{{background:#fdecea;color:#8a1c12}}#verdict{{padding:.6em 1em;border-radius:4px;font-weight:600}}\
.spark{{vertical-align:middle}}</style></head><body>\
<h1>Porchlight <span id=\"version\">{version}</span> <small>({commit})</small></h1>\
<p id=\"verdict\" class=\"{class}\">{verdict}</p>",
        version = esc(n.version),
        commit = esc(n.commit),
        class = if ok { "ok" } else { "bad" },
        verdict = esc(&verdict),
    );
    // The node and its listeners.
    let _ = write!(o, "<h2>Node</h2><table id=\"node\">");
    let up = n.uptime_seconds;
    let rows: Vec<(&str, &str, String)> = vec![
        (
            "uptime",
            "Uptime",
            format!("{}h {}m {}s", up / 3600, up / 60 % 60, up % 60),
        ),
        (
            "ready",
            "Ready",
            if n.ready { "yes".into() } else { "no".into() },
        ),
        ("auth", "Authentication", n.auth.to_owned()),
        ("data-dir", "Data directory", n.data_dir.clone()),
    ];
    for (id, k, v) in rows {
        let _ = write!(o, "<tr><th>{k}</th><td id=\"{id}\">{}</td></tr>", esc(&v));
    }
    for l in &n.listeners {
        let _ = write!(
            o,
            "<tr><th>Listener</th><td class=\"listener\">{} {}</td></tr>",
            esc(l.kind),
            esc(&l.addr)
        );
    }
    o.push_str("</table>");
    // Traffic, with the last minutes.
    let last = |v: &[f64]| v.last().copied().unwrap_or(0.0);
    let _ = write!(
        o,
        "<h2>Traffic</h2><table id=\"traffic\">\
<tr><th>Clients connected</th><td id=\"clients-connected\">{}</td><td>{}</td></tr>\
<tr><th>Messages in / s</th><td id=\"messages-in-rate\">{:.0}</td><td>{}</td></tr>\
<tr><th>Messages out / s</th><td id=\"messages-out-rate\">{:.0}</td><td>{}</td></tr>\
<tr><th>Sessions</th><td id=\"sessions\">{}</td><td></td></tr>\
<tr><th>Retained messages</th><td id=\"retained\">{}</td><td></td></tr></table>",
        n.clients_connected,
        sparkline("spark-clients", &series.clients),
        last(&series.received_per_sec),
        sparkline("spark-in", &series.received_per_sec),
        last(&series.sent_per_sec),
        sparkline("spark-out", &series.sent_per_sec),
        n.sessions,
        n.retained_messages,
    );
    // Tenants against their limits.
    o.push_str("<h2>Tenants</h2><table id=\"tenants\"><tr><th>Tenant</th><th>Connections</th><th>Persistent sessions</th><th>Subscriptions</th><th>Retained</th><th>Queued bytes</th><th>Messages in</th></tr>");
    let directory = s.broker.auth.directory();
    for (id, u) in s.broker.tenants.snapshot() {
        let limits = directory
            .tenant(&id)
            .map(|d| d.limits.clone())
            .unwrap_or_default();
        let of = |now: u64, max: Option<u64>| match max {
            Some(m) => format!("{now} / {m}"),
            None => now.to_string(),
        };
        let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let _ = write!(
            o,
            "<tr class=\"tenant\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(id.as_str()),
            of(g(&u.connections), limits.max_connections),
            of(g(&u.persistent_sessions), limits.max_persistent_sessions),
            of(g(&u.subscriptions), limits.max_subscriptions),
            of(g(&u.retained_messages), limits.max_retained_messages),
            of(g(&u.queued_bytes), limits.max_queued_bytes),
            total(&u.messages_in),
        );
    }
    o.push_str("</table>");
    // Storage.
    let fsync = s.broker.metrics.fsync_seconds.snapshot();
    let mean_ms = if fsync.count > 0 {
        format!(
            "{:.2} ms over {}",
            fsync.sum / fsync.count as f64 * 1000.0,
            fsync.count
        )
    } else {
        "-".into()
    };
    let _ = write!(
        o,
        "<h2>Storage</h2><table id=\"storage\">\
<tr><th>State</th><td id=\"storage-state\">{}</td></tr>\
<tr><th>Size</th><td id=\"storage-size\">{} bytes{}</td></tr>\
<tr><th>Mean fsync</th><td>{}</td></tr>\
<tr><th>Refused writes</th><td id=\"storage-refused\">{}</td></tr></table>",
        n.storage.state,
        n.storage.size_bytes,
        n.storage
            .limit_bytes
            .map(|l| format!(" of {l}"))
            .unwrap_or_default(),
        mean_ms,
        s.broker.persist.store().refused_writes(),
    );
    o.push_str("<p><a href=\"/metrics\">/metrics</a> · <a href=\"/readyz\">/readyz</a> · <a href=\"/api/v1/node\">/api/v1/node</a></p></body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_is_escaped_and_a_sparkline_scales_to_its_peak() {
        assert_eq!(
            super::esc("<a href='x'>&</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
        );
        let svg = super::sparkline("s", &[0.0, 5.0, 10.0]);
        assert!(
            svg.contains("points=\"0.0,38.0 120.0,20.0 240.0,2.0\""),
            "{svg}"
        );
        assert!(super::sparkline("s", &[1.0]).contains("collecting"));
    }
}
