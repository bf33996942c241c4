//! Helpers for the admin listener's tests: its address in a test
//! configuration, a real HTTP client (ureq), and the Prometheus project's
//! parser for what `/metrics` serves.

use super::{TestBroker, WAIT};
use porchlight_broker::Config;

/// The admin listener on 127.0.0.1 port 0.
pub fn with_admin(c: &mut Config) {
    c.admin_listen = Some("127.0.0.1:0".parse().expect("addr"));
}

/// An HTTP response as the tests read it.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// A request with a real HTTP client (ureq) on a blocking thread;
/// `headers` are added as given.
pub async fn http(
    method: &'static str,
    url: String,
    headers: Vec<(&'static str, String)>,
) -> HttpReply {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(WAIT))
            .build()
            .into();
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in &headers {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(()).expect("request");
        let mut resp = agent.run(req).expect("admin endpoint answers");
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        HttpReply {
            status: resp.status().as_u16(),
            content_type,
            body: resp.body_mut().read_to_string().expect("body"),
        }
    })
    .await
    .expect("http thread")
}

/// GET `path` from the admin listener.
pub async fn admin_get(b: &TestBroker, path: &str) -> HttpReply {
    let addr = b.admin_addr.expect("the test asked for --admin-listen");
    http("GET", format!("http://{addr}{path}"), Vec::new()).await
}

/// One sample of a scrape: name, labels, value.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses an exposition with the Prometheus project's own Python parser
/// (`prometheus_client`; the text format, or OpenMetrics), so what the
/// broker serves is what Prometheus reads. Fails when the parser refuses
/// it or is not installed.
pub fn parse_metrics(text: &str, openmetrics: bool) -> Vec<Sample> {
    use std::io::Write;
    let parser = if openmetrics {
        "from prometheus_client.openmetrics.parser import text_string_to_metric_families"
    } else {
        "from prometheus_client.parser import text_string_to_metric_families"
    };
    let script = format!(
        "import sys, json\n{parser}\nout = []\nfor f in text_string_to_metric_families(sys.stdin.read()):\n    for s in f.samples:\n        out.append({{'name': s.name, 'labels': s.labels, 'value': s.value}})\nprint(json.dumps(out))\n"
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition (install it with `pip install prometheus_client`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The value of the sample `name` with exactly these labels (a missing
/// sample is 0, as Prometheus treats an absent counter).
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map_or(0.0, |s| s.value)
}
