//! What a run tells its reader: the summary table on standard output,
//! `--json FILE` (the whole [`Summary`], time series included), and
//! `--report DIR` — a Markdown report with SVG plots (plotters):
//! throughput over time, connections over time, and latency by
//! percentile. Reads only the `Summary` that `run.rs` produced.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::error::LoadError;
use crate::run::Summary;

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// The summary table printed at the end of a run.
pub fn table(s: &Summary) -> String {
    let mut t = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(t, "  {k:<28} {v}");
    };
    row("scenario", format!("{} ({})", s.name, s.protocol));
    row(
        "clients",
        format!(
            "{} ({} publishers, {} subscribers)",
            s.clients, s.publishers, s.subscribers
        ),
    );
    row(
        "connects",
        format!(
            "{} in {:.2} s = {:.0}/s; failed {}, dropped {}, reconnects {}",
            s.connects,
            s.connect_seconds,
            s.connect_rate,
            s.connect_failures,
            s.dropped,
            s.reconnects
        ),
    );
    if !s.connect_errors.is_empty() {
        let reasons: Vec<String> = s
            .connect_errors
            .iter()
            .map(|(reason, n)| format!("{reason} × {n}"))
            .collect();
        row("connect failures", reasons.join("; "));
    }
    if s.cycles > 1 {
        row(
            "reconnect storm",
            format!(
                "{} cycles per client; the first (warm-up) not counted",
                s.cycles
            ),
        );
    }
    if s.tls_handshakes > 0 {
        row(
            "TLS handshakes",
            format!(
                "{}, resumed {}, post-quantum {}",
                s.tls_handshakes, s.tls_resumed, s.tls_post_quantum
            ),
        );
    }
    let cl = &s.connect_latency_us;
    row(
        "connect latency ms",
        format!("p50 {} p99 {} max {}", ms(cl.p50), ms(cl.p99), ms(cl.max)),
    );
    if s.subscribe_failures > 0 {
        row("subscribe failures", s.subscribe_failures.to_string());
    }
    if s.publishers > 0 || s.subscribers > 0 {
        row(
            "sent",
            format!(
                "{} in {:.2} s = {:.0}/s; acked {}, refused {}, behind schedule {}",
                s.sent,
                s.publish_seconds,
                s.sent_per_second,
                s.acked,
                s.publish_failures,
                s.overrun
            ),
        );
        row(
            "received",
            if s.delivery_seconds > s.publish_seconds {
                format!(
                    "{} in {:.2} s = {:.0}/s (the last {:.2} s after publishing stopped)",
                    s.received,
                    s.delivery_seconds,
                    s.received_per_second,
                    s.delivery_seconds - s.publish_seconds
                )
            } else {
                format!("{} = {:.0}/s", s.received, s.received_per_second)
            },
        );
        row(
            "deliveries",
            match s.expected {
                Some(e) => format!(
                    "expected {e} = unique {} + lost {}; duplicates {}, out of order {}, unexpected {}",
                    s.unique, s.lost, s.duplicates, s.out_of_order, s.unexpected
                ),
                None => format!(
                    "unique {}, lost (gaps) {}, duplicates {}, out of order {}",
                    s.unique, s.lost, s.duplicates, s.out_of_order
                ),
            },
        );
        if let Some(n) = s.lost_acknowledged {
            row(
                "acknowledged lost",
                format!(
                    "{n} (QoS 1 messages PUBACKed to their publisher, never delivered at QoS 1)"
                ),
            );
        }
        let l = &s.latency_us;
        row(
            "latency ms",
            format!(
                "p50 {} p90 {} p99 {} p99.9 {} max {} (n = {})",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                l.count
            ),
        );
    }
    if let Some(b) = &s.broker {
        row(
            "broker",
            format!(
                "cpu {:.0}% while running; rss {} → {} MiB connected, max {} MiB",
                b.cpu_percent,
                b.rss_kib_start / 1024,
                b.rss_kib_connected / 1024,
                b.rss_kib_max / 1024
            ),
        );
    }
    if let Some(b) = s.broker_bytes_per_connection {
        row("broker bytes/connection", format!("{b:.0}"));
    }
    row(
        "generator",
        format!(
            "cpu {:.0}% while running; {:.0} bytes/connection",
            s.generator.cpu_percent, s.generator_bytes_per_connection
        ),
    );
    t
}

pub fn write_json(s: &Summary, path: &Path) -> Result<(), LoadError> {
    let text = serde_json::to_string_pretty(s).map_err(|e| LoadError::Report(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| LoadError::io(format!("--json {}", path.display()), e))
}

fn plot_err(e: impl std::fmt::Display) -> LoadError {
    LoadError::Report(e.to_string())
}

/// A line chart of `series` (name, points) over time.
fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<(), LoadError> {
    let root = SVGBackend::new(path, (800, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let x_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(1.0f64, f64::max);
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_label)
        .draw()
        .map_err(plot_err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// Latency by percentile: x is the percentile on a "nines" scale
/// (0 = p0, 1 = p90, 2 = p99, 3 = p99.9).
fn latency_chart(path: &Path, s: &Summary) -> Result<(), LoadError> {
    let l = &s.latency_us;
    let points = [
        (0.0, l.min),
        (0.301, l.p50),
        (1.0, l.p90),
        (2.0, l.p99),
        (3.0, l.p999),
        (3.5, l.max),
    ];
    let points: Vec<(f64, f64)> = points
        .iter()
        .map(|(x, us)| (*x, *us as f64 / 1000.0))
        .collect();
    let root = SVGBackend::new(path, (800, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let y_max = points.iter().map(|p| p.1).fold(0.001f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("end-to-end latency by percentile", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..3.5f64, 0f64..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .x_label_formatter(&|x| match (*x * 10.0).round() as i64 {
            0 => "p0".into(),
            3 => "p50".into(),
            10 => "p90".into(),
            20 => "p99".into(),
            30 => "p99.9".into(),
            35 => "max".into(),
            _ => String::new(),
        })
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// `--report DIR`: `report.md` plus its plots.
pub fn write_report(s: &Summary, dir: &Path) -> Result<(), LoadError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LoadError::io(format!("--report {}", dir.display()), e))?;
    let xy = |f: &dyn Fn(&crate::run::Sample) -> f64| -> Vec<(f64, f64)> {
        s.series.iter().map(|p| (p.t, f(p))).collect()
    };
    line_chart(
        &dir.join("throughput.svg"),
        "throughput",
        "messages / s",
        &[
            ("sent", xy(&|p| p.sent_rate)),
            ("received", xy(&|p| p.received_rate)),
        ],
    )?;
    line_chart(
        &dir.join("connections.svg"),
        "connections",
        "connected",
        &[("connected", xy(&|p| p.connected as f64))],
    )?;
    let mut cpu = vec![("generator CPU %", xy(&|p| p.generator_cpu_percent))];
    if s.broker.is_some() {
        cpu.push(("broker CPU %", xy(&|p| p.broker_cpu_percent.unwrap_or(0.0))));
    }
    line_chart(&dir.join("cpu.svg"), "CPU", "% of one core", &cpu)?;
    latency_chart(&dir.join("latency.svg"), s)?;
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", s.name);
    let _ = writeln!(md, "```sh\n{}\n```\n", s.command);
    let _ = writeln!(md, "```\n{}```\n", table(s));
    let _ = writeln!(md, "![throughput](throughput.svg)\n");
    let _ = writeln!(md, "![latency](latency.svg)\n");
    let _ = writeln!(md, "![connections](connections.svg)\n");
    let _ = writeln!(md, "![cpu](cpu.svg)");
    std::fs::write(dir.join("report.md"), md)
        .map_err(|e| LoadError::io(format!("--report {}", dir.display()), e))
}
