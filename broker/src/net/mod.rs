//! The network layer: sockets and what sits below MQTT on them. It knows
//! no MQTT.
//!
//! - `net/proxy.rs`: PROXY protocol v1/v2 headers (`--proxy-protocol`);
//! - `net/tls.rs`: TLS material for `--tls-listen`/`--wss-listen`, reloaded on
//!   change, client certificates, handshake failure backoff;
//! - `net/ws.rs`: the WebSocket upgrade and framing;
//! - `net/transport.rs`: read/write buffers and batched socket I/O;
//! - `backoff.rs`: slowing repeated failures from one address.
//!
//! Next: `ops/server.rs` accepts and runs these layers in order, then
//! hands the byte stream to `connection/`.

use std::net::SocketAddr;

pub mod backoff;
pub mod proxy;
pub mod tls;
pub mod transport;
pub mod ws;

pub use backoff::Backoff;

/// What a listener speaks below MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl ListenerKind {
    /// The metric label and API name: `tcp`, `tls`, `ws`, `wss`.
    pub fn name(self) -> &'static str {
        crate::metrics::LISTENERS[self as usize]
    }

    pub fn label(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "TCP",
            ListenerKind::Tls => "TLS",
            ListenerKind::Ws => "WebSocket",
            ListenerKind::Wss => "WebSocket over TLS",
        }
    }
}

/// The listeners `--proxy-protocol` names: whole kinds, or single
/// listeners by their configured address.
#[derive(Debug, Clone, Default)]
pub struct ProxyListeners {
    pub kinds: Vec<ListenerKind>,
    pub addrs: Vec<SocketAddr>,
}

impl ProxyListeners {
    pub fn applies(&self, kind: ListenerKind, configured: SocketAddr) -> bool {
        self.kinds.contains(&kind) || self.addrs.contains(&configured)
    }
}
