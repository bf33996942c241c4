//! `porchlight ctl`: a client of a node's admin API (`ops/admin/api.rs`),
//! for operators and `kubectl exec … porchlight ctl status`.
//!
//! Each verb is one or two HTTP requests (ureq, blocking: a CLI needs no
//! runtime); the JSON answer is printed as is (`--json`) or as a table
//! (`table.rs`). Every failure names the node and the cause: refused,
//! unauthorized, not found, or the API's own `detail`.

mod table;

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::config::ctl::{
    ClientsCommand, CtlArgs, CtlCommand, ListArgs, ListOnly, RetainedCommand, SessionsCommand,
    TenantsCommand,
};

/// Why a verb failed, as printed.
#[derive(Debug)]
pub struct CtlError(pub String);

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs one verb, writing to `out`.
pub fn run(args: &CtlArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let api = Api::new(args)?;
    let json = args.json;
    let value = match &args.command {
        CtlCommand::Status => {
            let node = api.get("/api/v1/node", &[])?;
            if !json {
                let ready = api.probe("/readyz")?;
                table::status(out, &node, &ready);
                return Ok(());
            }
            node
        }
        CtlCommand::Clients(ClientsCommand::List { list, state }) => {
            let mut q = list_query(list);
            if let Some(s) = state {
                q.push(("state", s.clone()));
            }
            let page = api.get("/api/v1/clients", &q)?;
            if !json {
                table::clients(out, &page);
                return Ok(());
            }
            page
        }
        CtlCommand::Clients(ClientsCommand::Show(c))
        | CtlCommand::Sessions(SessionsCommand::Show(c)) => {
            let q = tenant_query(&c.tenant);
            let path = format!("/api/v1/clients/{}", encode(&c.client_id));
            let client = api.get(&path, &q)?;
            if !json {
                table::client(out, &client);
                return Ok(());
            }
            client
        }
        CtlCommand::Clients(ClientsCommand::Kick {
            client,
            discard_session,
        }) => {
            let mut q = tenant_query(&client.tenant);
            if *discard_session {
                q.push(("discard_session", "true".into()));
            }
            let path = format!("/api/v1/clients/{}/kick", encode(&client.client_id));
            let done = api.send("POST", &path, &q)?;
            if !json {
                let ended = done["ended"].as_bool().unwrap_or(false);
                let connected = done["connected"].as_bool().unwrap_or(false);
                let _ = writeln!(
                    out,
                    "{}: {}{}",
                    client.client_id,
                    if connected {
                        "disconnected (0x98)"
                    } else {
                        "was not connected"
                    },
                    if ended {
                        "; session ended"
                    } else {
                        "; session kept"
                    }
                );
                return Ok(());
            }
            done
        }
        CtlCommand::Subscriptions(ListOnly::List(list)) => {
            let page = api.get("/api/v1/subscriptions", &list_query(list))?;
            if !json {
                table::subscriptions(out, &page);
                return Ok(());
            }
            page
        }
        CtlCommand::Retained(RetainedCommand::List(list)) => {
            let page = api.get("/api/v1/retained", &list_query(list))?;
            if !json {
                table::retained(out, &page);
                return Ok(());
            }
            page
        }
        CtlCommand::Retained(RetainedCommand::Delete { topic, tenant }) => {
            let mut q = tenant_query(tenant);
            q.push(("topic", topic.clone()));
            let done = api.send("DELETE", "/api/v1/retained", &q)?;
            if !json {
                let _ = writeln!(out, "{topic}: retained message deleted");
                return Ok(());
            }
            done
        }
        CtlCommand::Tenants(TenantsCommand::List) => {
            let page = api.get("/api/v1/tenants", &[])?;
            if !json {
                table::tenants(out, &page);
                return Ok(());
            }
            page
        }
        CtlCommand::Tenants(TenantsCommand::Show { tenant }) => {
            let t = api.get(&format!("/api/v1/tenants/{}", encode(tenant)), &[])?;
            if !json {
                table::tenant(out, &t);
                return Ok(());
            }
            t
        }
        CtlCommand::Metrics => {
            let text = api.text("/metrics")?;
            if json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&table::metric_totals(&text)).unwrap_or_default()
                );
            } else {
                table::metrics(out, &text);
            }
            return Ok(());
        }
    };
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
    Ok(())
}

/// For an https:// URL: rustls on AWS-LC, trusting `--ca-file` or the
/// public web roots.
fn tls_config(args: &CtlArgs) -> Result<ureq::tls::TlsConfig, CtlError> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    let roots = match &args.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| CtlError(format!("cannot read --ca-file {}: {e}", path.display())))?;
            let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(CtlError(format!(
                    "--ca-file {}: no PEM certificate in it",
                    path.display()
                )));
            }
            RootCerts::Specific(std::sync::Arc::new(certs))
        }
        None => RootCerts::WebPki,
    };
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .root_certs(roots)
        .build())
}

/// Whether an http:// URL names a loopback host.
fn loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or("");
    crate::ops::admin::token::loopback_host(host)
}

fn list_query(l: &ListArgs) -> Vec<(&'static str, String)> {
    let mut q = vec![("limit", l.limit.to_string())];
    for (k, v) in [
        ("tenant", &l.tenant),
        ("prefix", &l.prefix),
        ("after", &l.after),
    ] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    q
}

fn tenant_query(tenant: &Option<String>) -> Vec<(&'static str, String)> {
    tenant
        .as_ref()
        .map(|t| vec![("tenant", t.clone())])
        .unwrap_or_default()
}

/// A path segment, percent-encoded (client ids may hold `/`, `?`, spaces).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        // `.` too: a proxy may resolve `.` and `..` segments.
        if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The node's API, with its token.
struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Api {
    fn new(args: &CtlArgs) -> Result<Api, CtlError> {
        let token = match &args.token_file {
            Some(path) => {
                let t = std::fs::read_to_string(path).map_err(|e| {
                    CtlError(format!("cannot read --token-file {}: {e}", path.display()))
                })?;
                Some(t.trim().to_owned())
            }
            None => None,
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .tls_config(tls_config(args)?)
            .build()
            .into();
        let base = args.url.trim_end_matches('/').to_owned();
        if token.is_some() && base.starts_with("http://") && !loopback_url(&base) {
            eprintln!("porchlight ctl: warning: sending the admin token unencrypted to {base}; use https:// (--admin-tls on the node)");
        }
        Ok(Api { base, token, agent })
    }

    fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, CtlError> {
        self.send("GET", path, query)
    }

    /// A request and its JSON answer; a non-2xx answer becomes an error
    /// naming the node and the API's reason.
    fn send(&self, method: &str, path: &str, query: &[(&str, String)]) -> Result<Value, CtlError> {
        let (status, body) = self.request(method, path, query)?;
        let value: Value = serde_json::from_str(&body).unwrap_or(Value::String(body.clone()));
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let detail = value["detail"].as_str().unwrap_or(body.trim()).to_owned();
        let what = match status {
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not found",
            _ => "error",
        };
        Err(CtlError(format!(
            "{}: {what} ({status}): {detail}",
            self.base
        )))
    }

    /// A plain-text endpoint (`/metrics`).
    fn text(&self, path: &str) -> Result<String, CtlError> {
        let (status, body) = self.request("GET", path, &[])?;
        if status != 200 {
            return Err(CtlError(format!("{}{path}: HTTP {status}", self.base)));
        }
        Ok(body)
    }

    /// A probe's status and body, whatever the status.
    fn probe(&self, path: &str) -> Result<(u16, String), CtlError> {
        self.request("GET", path, &[])
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<(u16, String), CtlError> {
        let mut url = format!("{}{path}", self.base);
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            url.push('=');
            url.push_str(&encode(v));
        }
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(())
            .map_err(|e| CtlError(format!("{url}: bad request: {e}")))?;
        let mut resp = self.agent.run(req).map_err(|e| {
            let cause = match &e {
                ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                    "connection refused (is the node running, with --admin-listen at this address?)"
                        .to_owned()
                }
                other => other.to_string(),
            };
            CtlError(format!("{}: {cause}", self.base))
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| CtlError(format!("{}: cannot read the answer: {e}", self.base)))?;
        Ok((status, body))
    }
}
