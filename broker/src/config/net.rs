//! The network flags: listeners, TLS, WebSocket, PROXY protocol.

use std::net::SocketAddr;
use std::time::Duration;

use super::{invalid, Cli};
use crate::error::BrokerError;

impl Cli {
    /// The plain TCP listeners: `--listen`, or the default address
    /// ([`Cli::default_listen`]); none with `--no-tcp-listen`.
    pub(super) fn tcp_listen(&self) -> Vec<SocketAddr> {
        if self.no_tcp_listen {
            Vec::new()
        } else if self.listen.is_empty() {
            vec![self.default_listen()]
        } else {
            self.listen.clone()
        }
    }

    /// Whether clients from beyond loopback may be let in: authentication
    /// is configured (users, tenants, or required client certificates), or
    /// `--allow-anonymous` says anonymous access is meant.
    pub(super) fn network_open(&self) -> bool {
        self.allow_anonymous
            || self.auth_file.is_some()
            || self.tenants.is_some()
            || self.tls_client_auth == Some(crate::net::tls::ClientAuth::Required)
    }

    /// The TCP listener when `--listen` is not given: every interface once
    /// the network may come in, loopback only before (as Mosquitto 2
    /// does), so a fresh install is not an open broker.
    pub(super) fn default_listen(&self) -> SocketAddr {
        let ip = if self.network_open() {
            std::net::Ipv4Addr::UNSPECIFIED
        } else {
            std::net::Ipv4Addr::LOCALHOST
        };
        SocketAddr::from((ip, 1883))
    }

    /// At least one listener; none beyond loopback that would let
    /// anonymous clients in without `--allow-anonymous`.
    pub(super) fn check_listeners(&self) -> Result<(), BrokerError> {
        if self.no_tcp_listen
            && self.tls_listen.is_empty()
            && self.ws_listen.is_empty()
            && self.wss_listen.is_empty()
        {
            return Err(invalid(
                "--no-tcp-listen",
                "leaves no listener: give --tls-listen, --ws-listen or --wss-listen",
            ));
        }
        if self.network_open() {
            return Ok(());
        }
        // Behind a PROXY-protocol load balancer the clients are remote,
        // whatever address the listener has.
        if !self.proxy_protocol.is_empty() {
            return Err(invalid(
                "--proxy-protocol",
                "clients behind the proxy come from the network: configure authentication \
                 (--auth-file, --tenants or --tls-client-auth required) or pass --allow-anonymous",
            ));
        }
        for (flag, addrs) in [
            ("--listen", &self.listen),
            ("--tls-listen", &self.tls_listen),
            ("--ws-listen", &self.ws_listen),
            ("--wss-listen", &self.wss_listen),
        ] {
            if let Some(addr) = addrs.iter().find(|a| !a.ip().is_loopback()) {
                return Err(invalid(
                    flag,
                    format!(
                        "{addr} would let anonymous clients in from the network: configure \
                         authentication (--auth-file, --tenants or --tls-client-auth required) \
                         or pass --allow-anonymous"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The TLS material `--tls-listen` and `--wss-listen` need, with the
    /// client-certificate flags checked against each other.
    pub(super) fn tls_files(&self) -> Result<Option<crate::net::tls::TlsFiles>, BrokerError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            _ if self.tls_listen.is_empty() && self.wss_listen.is_empty() => None,
            (Some(cert), Some(key)) => {
                use crate::net::tls::ClientAuth;
                let client_auth = match (self.tls_client_auth, &self.tls_client_ca) {
                    (Some(ClientAuth::Optional | ClientAuth::Required), None) => {
                        return Err(invalid(
                            "--tls-client-ca",
                            "is required by --tls-client-auth optional|required",
                        ))
                    }
                    (Some(mode), _) => mode,
                    (None, Some(_)) => ClientAuth::Required,
                    (None, None) => ClientAuth::None,
                };
                if self.tls_crl.is_some() && client_auth == ClientAuth::None {
                    return Err(invalid(
                        "--tls-crl",
                        "needs --tls-client-ca (and --tls-client-auth optional|required)",
                    ));
                }
                Some(crate::net::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    min_version: self.tls_min_version,
                    client_ca: self.tls_client_ca.clone(),
                    crl: self.tls_crl.clone(),
                    client_auth,
                    identity: self.tls_identity_field,
                    reload_interval: (self.tls_reload_interval > 0)
                        .then(|| Duration::from_secs(self.tls_reload_interval)),
                })
            }
            (None, _) => {
                return Err(invalid(
                    "--tls-cert",
                    "is required by --tls-listen and --wss-listen",
                ))
            }
            (_, None) => {
                return Err(invalid(
                    "--tls-key",
                    "is required by --tls-listen and --wss-listen",
                ))
            }
        };
        if tls.is_none() && (self.tls_cert.is_some() || self.tls_key.is_some()) {
            return Err(invalid(
                "--tls-listen",
                "(or --wss-listen) is required when --tls-cert or --tls-key is given",
            ));
        }
        Ok(tls)
    }

    /// The WebSocket flags: origins only with a WebSocket listener, an
    /// absolute upgrade path; the origins normalized.
    pub(super) fn websocket(&self) -> Result<Vec<String>, BrokerError> {
        if !self.ws_allowed_origins.is_empty()
            && self.ws_listen.is_empty()
            && self.wss_listen.is_empty()
        {
            return Err(invalid(
                "--ws-allowed-origins",
                "needs --ws-listen or --wss-listen",
            ));
        }
        if !self.ws_path.starts_with('/') || self.ws_path.contains(['?', '#', ' ']) {
            return Err(invalid(
                "--ws-path",
                "must be an absolute path such as /mqtt",
            ));
        }
        self.ws_allowed_origins
            .iter()
            .map(|o| {
                crate::net::ws::normalize_origin(o).ok_or_else(|| {
                    invalid(
                        "--ws-allowed-origins",
                        format!("{o:?} is not an origin such as https://app.example or http://localhost:8080"),
                    )
                })
            })
            .collect()
    }
}

impl Cli {
    /// `--proxy-protocol`: kinds and addresses, each naming a listener
    /// that is configured.
    pub(super) fn proxy_listeners(&self) -> Result<crate::net::ProxyListeners, BrokerError> {
        use crate::net::ListenerKind;
        let mut out = crate::net::ProxyListeners::default();
        for v in &self.proxy_protocol {
            let v = v.trim();
            let kind = match v {
                "tcp" => Some(ListenerKind::Tcp),
                "tls" => Some(ListenerKind::Tls),
                "ws" => Some(ListenerKind::Ws),
                "wss" => Some(ListenerKind::Wss),
                _ => None,
            };
            if let Some(k) = kind {
                out.kinds.push(k);
                continue;
            }
            let addr: SocketAddr = v.parse().map_err(|_| {
                invalid(
                    "--proxy-protocol",
                    format!("{v:?} is neither tcp, tls, ws, wss nor a listener address"),
                )
            })?;
            let tcp = self.tcp_listen();
            let known = [&tcp, &self.tls_listen, &self.ws_listen, &self.wss_listen]
                .iter()
                .any(|l| l.contains(&addr));
            if !known {
                return Err(invalid(
                    "--proxy-protocol",
                    format!("{addr} is not the address of any listener"),
                ));
            }
            out.addrs.push(addr);
        }
        Ok(out)
    }
}
