//! `porchlight ctl`'s tables: the API's JSON as aligned columns.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::Value;

/// Prints `rows` under `headers`, each column as wide as its widest cell.
fn print(out: &mut dyn Write, headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(out, headers.to_vec());
    for r in rows {
        line(out, r.iter().map(String::as_str).collect());
    }
}

/// A JSON value as a cell: strings bare, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn items(page: &Value) -> &[Value] {
    page["items"].as_array().map_or(&[], Vec::as_slice)
}

/// The page's `next`, so the operator can ask for more.
fn next(out: &mut dyn Write, page: &Value) {
    if let Some(n) = page["next"].as_str() {
        let _ = writeln!(out, "(more: --after '{n}')");
    }
}

/// Milliseconds since the epoch, as UTC.
fn when(ms: &Value) -> String {
    let Some(ms) = ms.as_u64().filter(|m| *m > 0) else {
        return "-".into();
    };
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a date (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn status(out: &mut dyn Write, node: &Value, ready: &(u16, String)) {
    let uptime = node["uptime_seconds"].as_u64().unwrap_or(0);
    let rows: Vec<(&str, String)> = vec![
        (
            "node",
            format!(
                "porchlight {} ({})",
                cell(&node["version"]),
                cell(&node["commit"])
            ),
        ),
        (
            "ready",
            if ready.0 == 200 {
                "yes".into()
            } else {
                format!(
                    "NO ({})",
                    ready
                        .1
                        .lines()
                        .filter(|l| l.starts_with("[-]"))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            },
        ),
        (
            "uptime",
            format!(
                "{}h {}m {}s",
                uptime / 3600,
                uptime % 3600 / 60,
                uptime % 60
            ),
        ),
        (
            "listeners",
            node["listeners"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .map(|x| format!("{} {}", cell(&x["kind"]), cell(&x["addr"])))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
        ),
        ("auth", cell(&node["auth"])),
        ("tenants", cell(&node["tenants"])),
        ("clients", cell(&node["clients_connected"])),
        ("sessions", cell(&node["sessions"])),
        ("retained", cell(&node["retained_messages"])),
        (
            "storage",
            format!(
                "{}, {} bytes{} in {}",
                cell(&node["storage"]["state"]),
                cell(&node["storage"]["size_bytes"]),
                node["storage"]["limit_bytes"]
                    .as_u64()
                    .map(|l| format!(" of {l}"))
                    .unwrap_or_default(),
                cell(&node["data_dir"])
            ),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<10} {v}");
    }
}

pub fn clients(out: &mut dyn Write, page: &Value) {
    let rows: Vec<Vec<String>> = items(page)
        .iter()
        .map(|c| {
            let conn = &c["connection"];
            vec![
                cell(&c["tenant"]),
                cell(&c["client_id"]),
                if c["connected"].as_bool() == Some(true) {
                    "connected".into()
                } else {
                    "disconnected".into()
                },
                cell(&conn["peer"]),
                cell(&conn["protocol_level"]),
                cell(&c["subscriptions"]),
                cell(&c["queued_messages"]),
                cell(&c["inflight_messages"]),
            ]
        })
        .collect();
    print(
        out,
        &[
            "TENANT", "CLIENT", "STATE", "PEER", "PROTO", "SUBS", "QUEUED", "INFLIGHT",
        ],
        &rows,
    );
    next(out, page);
}

pub fn client(out: &mut dyn Write, c: &Value) {
    let conn = &c["connection"];
    let pairs: Vec<(&str, String)> = vec![
        ("client", cell(&c["client_id"])),
        ("tenant", cell(&c["tenant"])),
        (
            "state",
            if c["connected"].as_bool() == Some(true) {
                format!(
                    "connected from {} over {} since {} (MQTT level {}, keepalive {} s, user {})",
                    cell(&conn["peer"]),
                    cell(&conn["listener"]),
                    when(&conn["connected_at_ms"]),
                    cell(&conn["protocol_level"]),
                    cell(&conn["keep_alive"]),
                    cell(&conn["username"])
                )
            } else {
                format!("disconnected since {}", when(&c["disconnected_at_ms"]))
            },
        ),
        (
            "session",
            format!(
                "{}, expiry {} s{}",
                if c["persistent"].as_bool() == Some(true) {
                    "persistent"
                } else {
                    "clean"
                },
                cell(&c["expiry_interval"]),
                if c["will"].as_bool() == Some(true) {
                    ", will pending"
                } else {
                    ""
                }
            ),
        ),
        (
            "queued",
            format!(
                "{} messages, {} bytes",
                cell(&c["queued_messages"]),
                cell(&c["queued_bytes"])
            ),
        ),
        ("inflight", cell(&c["inflight_messages"])),
    ];
    for (k, v) in pairs {
        let _ = writeln!(out, "{k:<10} {v}");
    }
    let subs: Vec<Vec<String>> = c["subscription_list"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|s| {
            vec![
                cell(&s["filter"]),
                cell(&s["qos"]),
                cell(&s["subscription_id"]),
            ]
        })
        .collect();
    let _ = writeln!(out);
    print(out, &["FILTER", "QOS", "ID"], &subs);
}

pub fn subscriptions(out: &mut dyn Write, page: &Value) {
    let rows: Vec<Vec<String>> = items(page)
        .iter()
        .map(|s| {
            vec![
                cell(&s["tenant"]),
                cell(&s["client_id"]),
                cell(&s["filter"]),
                cell(&s["qos"]),
            ]
        })
        .collect();
    print(out, &["TENANT", "CLIENT", "FILTER", "QOS"], &rows);
    next(out, page);
}

pub fn retained(out: &mut dyn Write, page: &Value) {
    let rows: Vec<Vec<String>> = items(page)
        .iter()
        .map(|r| {
            vec![
                cell(&r["tenant"]),
                cell(&r["topic"]),
                cell(&r["qos"]),
                cell(&r["payload_bytes"]),
                when(&r["expires_at_ms"]),
            ]
        })
        .collect();
    print(out, &["TENANT", "TOPIC", "QOS", "BYTES", "EXPIRES"], &rows);
    next(out, page);
}

/// A usage figure against its limit: `12 / 100`, or `12` without one.
fn against(usage: &Value, limit: &Value) -> String {
    match limit.as_u64() {
        Some(l) => format!("{} / {l}", cell(usage)),
        None => cell(usage),
    }
}

pub fn tenants(out: &mut dyn Write, page: &Value) {
    let rows: Vec<Vec<String>> = items(page)
        .iter()
        .map(|t| {
            let (u, l) = (&t["usage"], &t["limits"]);
            vec![
                cell(&t["id"]),
                against(&u["connections"], &l["max_connections"]),
                against(&u["persistent_sessions"], &l["max_persistent_sessions"]),
                against(&u["subscriptions"], &l["max_subscriptions"]),
                against(&u["retained_messages"], &l["max_retained_messages"]),
                against(&u["queued_bytes"], &l["max_queued_bytes"]),
            ]
        })
        .collect();
    print(
        out,
        &[
            "TENANT",
            "CONNECTIONS",
            "PERSISTENT",
            "SUBSCRIPTIONS",
            "RETAINED",
            "QUEUED BYTES",
        ],
        &rows,
    );
}

pub fn tenant(out: &mut dyn Write, t: &Value) {
    let _ = writeln!(
        out,
        "tenant {}{}",
        cell(&t["id"]),
        if t["configured"].as_bool() == Some(true) {
            ""
        } else {
            " (not in --tenants)"
        }
    );
    let limits = &t["limits"];
    let rows: Vec<Vec<String>> = t["usage"]
        .as_object()
        .map(|u| {
            u.iter()
                .map(|(k, v)| {
                    let limit = limits[format!("max_{k}")].clone();
                    vec![k.clone(), cell(v), cell(&limit)]
                })
                .collect()
        })
        .unwrap_or_default();
    print(out, &["USAGE", "NOW", "LIMIT"], &rows);
}

/// Each family of a Prometheus text exposition summed over its labels.
pub fn metric_totals(text: &str) -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if let Ok(v) = value.parse::<f64>() {
            *totals.entry(name.to_owned()).or_insert(0.0) += v;
        }
    }
    totals
}

pub fn metrics(out: &mut dyn Write, text: &str) {
    let t = metric_totals(text);
    let g = |k: &str| t.get(k).copied().unwrap_or(0.0);
    let rows: Vec<(&str, String)> = vec![
        (
            "clients connected",
            format!("{}", g("porchlight_clients_connected")),
        ),
        ("sessions", format!("{}", g("porchlight_sessions"))),
        (
            "messages in / out",
            format!(
                "{} / {}",
                g("porchlight_messages_received_total"),
                g("porchlight_messages_sent_total")
            ),
        ),
        (
            "messages dropped",
            format!("{}", g("porchlight_messages_dropped_total")),
        ),
        (
            "connects refused",
            format!("{}", g("porchlight_connections_refused_total")),
        ),
        (
            "bad packets",
            format!("{}", g("porchlight_bad_packets_total")),
        ),
        (
            "auth failures",
            format!("{}", g("porchlight_auth_failures_total")),
        ),
        (
            "retained messages",
            format!("{}", g("porchlight_retained_messages")),
        ),
        (
            "queued memory",
            format!("{} bytes", g("porchlight_queued_memory_bytes")),
        ),
        (
            "storage",
            format!(
                "{} bytes, {} refused writes",
                g("porchlight_storage_size_bytes"),
                g("porchlight_storage_refused_writes_total")
            ),
        ),
        (
            "publish→write",
            mean(&t, "porchlight_publish_to_write_seconds"),
        ),
        (
            "fsync",
            mean(&t, "porchlight_storage_fsync_duration_seconds"),
        ),
        (
            "memory (RSS)",
            format!("{:.1} MiB", g("process_resident_memory_bytes") / 1048576.0),
        ),
        (
            "open files",
            format!("{} of {}", g("process_open_fds"), g("process_max_fds")),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<18} {v}");
    }
}

/// A histogram's mean, in milliseconds, and its count.
fn mean(t: &BTreeMap<String, f64>, name: &str) -> String {
    let sum = t.get(&format!("{name}_sum")).copied().unwrap_or(0.0);
    let count = t.get(&format!("{name}_count")).copied().unwrap_or(0.0);
    if count == 0.0 {
        return "-".into();
    }
    format!("mean {:.3} ms over {count}", sum / count * 1000.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_and_totals() {
        assert_eq!(super::when(&serde_json::json!(0)), "-");
        assert_eq!(
            super::when(&serde_json::json!(1_796_650_544_000u64)),
            "2026-12-07 13:35:44Z"
        );
        let t = super::metric_totals("# HELP a x\na{q=\"0\"} 1\na{q=\"1\"} 2.5\nb 3\n");
        assert_eq!(t["a"], 3.5);
        assert_eq!(t["b"], 3.0);
    }
}
