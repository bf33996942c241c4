//! `/livez` and `/readyz`, the probes Kubernetes (or any supervisor)
//! asks.
//!
//! Liveness checks only that the runtime answers: never a peer or the
//! disk, so a full disk does not get a healthy broker restarted.
//! Readiness is what a load balancer should follow: 200 once every
//! listener accepts, 503 from the moment shutdown begins (so the node is
//! taken out of rotation while it drains); the body names each check.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::StatusCode;

use super::AdminState;

/// The node's readiness, as `ops/server.rs` sets it.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Every listener is bound and its accept loop runs.
    accepting: AtomicBool,
    /// A stop was asked for: not ready from now on, though the node keeps
    /// serving for `--drain-delay` before it closes its listeners.
    draining: AtomicBool,
}

impl Readiness {
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_accepting(&self) {
        self.accepting.store(true, Ordering::Relaxed);
    }

    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }
}

pub async fn livez() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    let accepting = s.ready.accepting();
    let draining = s.ready.draining() || s.broker.shutdown.is_cancelled();
    let storage = s.broker.persist.health();
    let mut body = String::new();
    let line = |body: &mut String, ok: bool, what: &str| {
        body.push_str(if ok { "[+] " } else { "[-] " });
        body.push_str(what);
        body.push('\n');
    };
    line(&mut body, accepting, "listeners accepting");
    line(&mut body, !draining, "not shutting down");
    // A full or failing store is reported, not made a reason to leave the
    // load balancer: the node still serves QoS 0 and refuses what it
    // cannot store with the right reason codes.
    body.push_str(match storage {
        porchlight_storage::Health::Ok => "[+] storage writable\n",
        porchlight_storage::Health::Full => {
            "[!] storage full (--max-disk-bytes): durable writes refused\n"
        }
        porchlight_storage::Health::Failed => {
            "[!] storage failing: durable writes refused (see the log)\n"
        }
    });
    let ready = accepting && !draining;
    body.push_str(if ready { "ready\n" } else { "not ready\n" });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}
