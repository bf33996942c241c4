//! The flags, as clap parses them (each also `PORCHLIGHT_<FLAG>`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use super::QueueOverflow;

/// `--fsync` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FsyncFlag {
    Always,
    Group,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Tools run instead of the broker.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Subcommand {
    /// Read a password from standard input (one line) and print its PHC
    /// string (argon2id), for the users of --auth-file.
    HashPassword,
    /// Talk to a running node's admin API: status, clients, sessions,
    /// subscriptions, retained messages, tenants, metrics.
    Ctl(super::ctl::CtlArgs),
}

/// Porchlight: an MQTT 3.1.1 and 5.0 broker for IoT ingress.
#[derive(Debug, Clone, Parser)]
#[command(name = "porchlight", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Subcommand>,

    /// Address to accept MQTT over TCP on; repeat for several. Default:
    /// 0.0.0.0:1883 once authentication is configured or
    /// --allow-anonymous is given; 127.0.0.1:1883 (loopback only)
    /// otherwise. A listener beyond loopback without either is refused.
    #[arg(
        long = "listen",
        value_name = "ADDR",
        env = "PORCHLIGHT_LISTEN",
        value_delimiter = ','
    )]
    pub listen: Vec<SocketAddr>,

    /// Accept no plain MQTT over TCP: a node that serves only TLS or
    /// WebSocket listeners. Conflicts with --listen; needs at least one of
    /// --tls-listen, --ws-listen and --wss-listen.
    #[arg(
        long = "no-tcp-listen",
        env = "PORCHLIGHT_NO_TCP_LISTEN",
        conflicts_with = "listen"
    )]
    pub no_tcp_listen: bool,

    /// Address to accept MQTT over TLS on; repeat for several. Needs
    /// --tls-cert and --tls-key.
    #[arg(
        long = "tls-listen",
        value_name = "ADDR",
        env = "PORCHLIGHT_TLS_LISTEN",
        value_delimiter = ','
    )]
    pub tls_listen: Vec<SocketAddr>,

    /// Address to accept MQTT over WebSocket on (HTTP upgrade at
    /// --ws-path, subprotocol `mqtt`); repeat for several.
    #[arg(
        long = "ws-listen",
        value_name = "ADDR",
        env = "PORCHLIGHT_WS_LISTEN",
        value_delimiter = ','
    )]
    pub ws_listen: Vec<SocketAddr>,

    /// Address to accept MQTT over WebSocket over TLS on; uses --tls-cert
    /// and --tls-key (and the client-certificate flags).
    #[arg(
        long = "wss-listen",
        value_name = "ADDR",
        env = "PORCHLIGHT_WSS_LISTEN",
        value_delimiter = ','
    )]
    pub wss_listen: Vec<SocketAddr>,

    /// HTTP path WebSocket clients connect to.
    #[arg(
        long,
        value_name = "PATH",
        env = "PORCHLIGHT_WS_PATH",
        default_value = "/mqtt"
    )]
    pub ws_path: String,

    /// Browser origins allowed to open a WebSocket (`https://app.example`,
    /// `http://localhost:8080`); repeat or separate with commas. A request
    /// whose Origin header is not listed is refused with 403; one without
    /// the header (most devices) is accepted. Some libraries send one
    /// (Paho for Python: `http(s)://<broker host>[:port]`). Default: any.
    #[arg(
        long = "ws-allowed-origins",
        value_name = "ORIGIN",
        env = "PORCHLIGHT_WS_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub ws_allowed_origins: Vec<String>,

    /// Listeners that expect a PROXY protocol (v1 or v2) header before
    /// anything else: a kind (tcp, tls, ws, wss) for all listeners of that
    /// kind, or one listener's address; repeat or separate with commas.
    #[arg(
        long = "proxy-protocol",
        value_name = "LISTENER",
        env = "PORCHLIGHT_PROXY_PROTOCOL",
        value_delimiter = ','
    )]
    pub proxy_protocol: Vec<String>,

    /// PEM file with the server certificate chain (leaf first).
    #[arg(long, value_name = "FILE", env = "PORCHLIGHT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", env = "PORCHLIGHT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Lowest TLS version accepted: 1.2 or 1.3.
    #[arg(
        long,
        value_name = "VERSION",
        env = "PORCHLIGHT_TLS_MIN_VERSION",
        default_value = "1.2"
    )]
    pub tls_min_version: crate::net::tls::TlsVersion,

    /// PEM file with the CA(s) client certificates must chain to (mutual
    /// TLS). Alone, it makes client certificates required.
    #[arg(long, value_name = "FILE", env = "PORCHLIGHT_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// PEM file with certificate revocation lists (CRLs) from the client
    /// CAs; a revoked client certificate is refused at the handshake.
    /// Reloaded like the certificate files. Needs --tls-client-ca.
    #[arg(long, value_name = "FILE", env = "PORCHLIGHT_TLS_CRL")]
    pub tls_crl: Option<PathBuf>,

    /// Whether TLS clients must present a certificate: none, optional or
    /// required (default: required with --tls-client-ca, else none).
    #[arg(long, value_name = "MODE", env = "PORCHLIGHT_TLS_CLIENT_AUTH")]
    pub tls_client_auth: Option<crate::net::tls::ClientAuth>,

    /// Which field of a client certificate names the client: cn, san or
    /// subject.
    #[arg(
        long,
        value_name = "FIELD",
        env = "PORCHLIGHT_TLS_IDENTITY_FIELD",
        default_value = "cn"
    )]
    pub tls_identity_field: crate::net::tls::IdentityField,

    /// Seconds between checks of the TLS files for changes (renewed
    /// certificates are taken into use without a restart); 0: never.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "PORCHLIGHT_TLS_RELOAD_INTERVAL",
        default_value_t = 10
    )]
    pub tls_reload_interval: u64,

    /// Directory for durable state (created if missing).
    #[arg(
        long,
        value_name = "DIR",
        env = "PORCHLIGHT_DATA_DIR",
        default_value = "./data"
    )]
    pub data_dir: PathBuf,

    /// Client connects and disconnects logged at info per second; past
    /// it they are counted, and the count is logged with the next line.
    /// 0 logs none.
    #[arg(
        long,
        value_name = "LINES",
        env = "PORCHLIGHT_LOG_CLIENT_EVENTS_PER_SECOND",
        default_value_t = 50
    )]
    pub log_client_events_per_second: u64,

    /// Log output format.
    #[arg(
        long,
        value_enum,
        env = "PORCHLIGHT_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Log filter: a level (error, warn, info, debug, trace) or a
    /// tracing directive such as `porchlight_broker=debug`.
    #[arg(
        long,
        value_name = "FILTER",
        env = "PORCHLIGHT_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// Most simultaneous client connections; further ones get CONNACK
    /// 0x97 (v5) or 3 (v3).
    #[arg(
        long,
        value_name = "N",
        env = "PORCHLIGHT_MAX_CONNECTIONS",
        default_value_t = 100_000
    )]
    pub max_connections: usize,

    /// Pending TCP connections each listener queues before the kernel
    /// drops SYNs (clients then retry after 1 s, 3 s, ...); reconnect
    /// storms need it deep. Capped by the kernel at
    /// `net.core.somaxconn`.
    #[arg(
        long,
        value_name = "N",
        env = "PORCHLIGHT_LISTEN_BACKLOG",
        default_value_t = 4096
    )]
    pub listen_backlog: u32,

    /// Largest MQTT packet accepted from or sent to a client, in bytes
    /// (default 4 MiB; advertised to v5 clients as Maximum Packet Size).
    #[arg(long, value_name = "BYTES", env = "PORCHLIGHT_MAX_PACKET_SIZE", default_value_t = 4 * 1024 * 1024)]
    pub max_packet_size: usize,

    /// Receive Maximum: QoS 1/2 publishes a v5 client may have
    /// unacknowledged towards us; a client exceeding it is disconnected
    /// with 0x93.
    #[arg(
        long,
        value_name = "N",
        env = "PORCHLIGHT_RECEIVE_MAXIMUM",
        default_value_t = 128
    )]
    pub receive_maximum: u16,

    /// Most QoS 1/2 messages in flight to one client at once (also capped
    /// by the client's own Receive Maximum).
    #[arg(
        long,
        value_name = "N",
        env = "PORCHLIGHT_MAX_INFLIGHT",
        default_value_t = 32
    )]
    pub max_inflight: u16,

    /// Most messages queued per session beyond those in flight.
    #[arg(
        long,
        value_name = "N",
        env = "PORCHLIGHT_MAX_QUEUED_MESSAGES",
        default_value_t = 1000
    )]
    pub max_queued_messages: usize,

    /// What to drop when a session queue is full; drops are counted in
    /// `porchlight_messages_dropped_total{reason="queue_full"}`.
    #[arg(
        long,
        value_enum,
        env = "PORCHLIGHT_QUEUE_OVERFLOW",
        default_value = "drop-oldest"
    )]
    pub queue_overflow: QueueOverflow,

    /// Flow control for QoS 1/2: a publisher whose message fills a
    /// connected subscriber's queue is not read again until that queue
    /// has drained to half, in waits of this long; a subscriber that took
    /// less than a quarter of --max-queued-messages during one wait is
    /// treated as stuck (its queue drops per --queue-overflow until it
    /// drains). 0: no flow control, drop at once.
    #[arg(
        long,
        value_name = "MS",
        env = "PORCHLIGHT_PUBLISH_BACKPRESSURE_MS",
        default_value_t = 500
    )]
    pub publish_backpressure_ms: u64,

    /// Most bytes (payloads and topics) queued per session; beyond it the
    /// `--queue-overflow` policy applies, as for the message count.
    #[arg(long, value_name = "BYTES", env = "PORCHLIGHT_MAX_QUEUED_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_queued_bytes: usize,

    /// Most memory for queued messages on the whole node: their bytes plus
    /// 64 per queue entry. At the bound, QoS 1/2 publishes that would be
    /// queued for an offline session are refused (v5 0x97; 3.1.1:
    /// connection closed) and QoS 0 ones skip offline sessions (counted).
    /// Default: a quarter of the memory this process may use (its cgroup
    /// limit, else the machine's). 0: no bound.
    #[arg(long, value_name = "BYTES", env = "PORCHLIGHT_MAX_QUEUED_MEMORY")]
    pub max_queued_memory: Option<u64>,

    /// When acknowledgements of durable messages wait for the disk:
    /// `always` (fsync before every acknowledgement), `group` (one fsync per
    /// group-commit window covers all writes in it), `never` (acknowledge at
    /// once; the store flushes every 500 ms).
    #[arg(long, value_enum, env = "PORCHLIGHT_FSYNC", default_value = "group")]
    pub fsync: FsyncFlag,

    /// Group-commit window in milliseconds (`--fsync group`): the longest
    /// writes are gathered before one fsync; it ends early once no write
    /// came for an eighth of it (at least 50 µs).
    #[arg(
        long,
        value_name = "MILLISECONDS",
        env = "PORCHLIGHT_FSYNC_GROUP_WINDOW",
        default_value_t = 1
    )]
    pub fsync_group_window: u64,

    /// Stop accepting durable writes once the store uses this many bytes on
    /// disk (0: no limit but the disk's own); publishes that need
    /// durability are then refused with 0x97 (v3: connection closed).
    #[arg(
        long,
        value_name = "BYTES",
        env = "PORCHLIGHT_MAX_DISK_BYTES",
        default_value_t = 0
    )]
    pub max_disk_bytes: u64,

    /// Memory for the store's page cache (sled's), in bytes, at least
    /// 1 MiB. sled counts its pages by their size on disk, which for small
    /// records (a queue entry is ~20 bytes) is a fraction of what they take
    /// in memory: 16 MiB held 2.25M offline queue entries in ~350 MB of RSS
    /// where 64 MiB took ~620 MB (docs/benchmarks.md).
    #[arg(
        long,
        value_name = "BYTES",
        env = "PORCHLIGHT_STORE_CACHE_BYTES",
        default_value_t = porchlight_storage::DEFAULT_CACHE_BYTES
    )]
    pub store_cache_bytes: u64,

    /// Longest topic name or filter, in bytes.
    #[arg(
        long,
        value_name = "BYTES",
        env = "PORCHLIGHT_MAX_TOPIC_LENGTH",
        default_value_t = 4096
    )]
    pub max_topic_length: usize,

    /// Most levels (`/`-separated parts) in a topic name or filter.
    #[arg(
        long,
        value_name = "N",
        env = "PORCHLIGHT_MAX_TOPIC_LEVELS",
        default_value_t = 128
    )]
    pub max_topic_levels: usize,

    /// Most subscriptions one session may hold; more get SUBACK 0x97 (v5)
    /// or 0x80 (v3).
    #[arg(
        long,
        value_name = "N",
        env = "PORCHLIGHT_MAX_SUBSCRIPTIONS_PER_CLIENT",
        default_value_t = 1000
    )]
    pub max_subscriptions_per_client: usize,

    /// Largest keepalive granted, in seconds; a v5 client asking more (or 0)
    /// is told this value as Server Keep Alive.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "PORCHLIGHT_MAX_KEEPALIVE",
        default_value_t = 3600
    )]
    pub max_keepalive: u16,

    /// Longest a disconnected session is kept, in seconds (caps the v5
    /// Session Expiry Interval; applies to v3 clean-session-0 sessions).
    #[arg(long, value_name = "SECONDS", env = "PORCHLIGHT_MAX_SESSION_EXPIRY", default_value_t = 7 * 24 * 3600)]
    pub max_session_expiry: u32,

    /// Seconds a new connection has to send CONNECT.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "PORCHLIGHT_CONNECT_TIMEOUT",
        default_value_t = 10
    )]
    pub connect_timeout: u64,

    /// Topic Alias Maximum offered to v5 clients (0 disables aliases).
    #[arg(
        long,
        value_name = "N",
        env = "PORCHLIGHT_TOPIC_ALIAS_MAXIMUM",
        default_value_t = 64
    )]
    pub topic_alias_maximum: u16,

    /// Longest client identifier accepted, in bytes.
    #[arg(
        long,
        value_name = "BYTES",
        env = "PORCHLIGHT_MAX_CLIENT_ID_LENGTH",
        default_value_t = 256
    )]
    pub max_client_id_length: usize,

    /// TOML file with users (argon2id PHC hashes), JWT settings and ACL
    /// rules (see docs/auth-file.md). Once given, anonymous clients are
    /// refused unless --allow-anonymous.
    #[arg(long, value_name = "FILE", env = "PORCHLIGHT_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// TOML file of tenants: how connections find theirs (SNI, client
    /// certificate, `name@tenant` usernames, listener defaults), and each
    /// tenant's limits, users and ACL rules (see docs/tenants.md). Re-read
    /// on change and on SIGHUP. Replaces --auth-file (give one or the
    /// other); anonymous clients need --allow-anonymous.
    #[arg(long, value_name = "FILE", env = "PORCHLIGHT_TENANTS")]
    pub tenants: Option<PathBuf>,

    /// Let clients without a username or certificate in: from the network
    /// when no authentication is configured (the default --listen then
    /// opens on every interface), and even though authentication is
    /// configured (--auth-file, --tenants or --tls-client-auth).
    #[arg(long, env = "PORCHLIGHT_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Seconds between checks of --auth-file or --tenants for changes (0:
    /// never; --tenants is still re-read on SIGHUP).
    #[arg(
        long,
        value_name = "SECONDS",
        env = "PORCHLIGHT_AUTH_RELOAD_INTERVAL",
        default_value_t = 10
    )]
    pub auth_reload_interval: u64,

    /// Seconds between `$SYS/broker/...` updates.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "PORCHLIGHT_SYS_INTERVAL",
        default_value_t = 10
    )]
    pub sys_interval: u64,

    /// Do not publish `$SYS/broker/...` topics at all.
    #[arg(long, env = "PORCHLIGHT_NO_SYS_TOPICS")]
    pub no_sys_topics: bool,

    /// Address of the admin HTTP listener: /livez, /readyz, /metrics
    /// (Prometheus), the admin API and the status page. Loopback by
    /// default; open it on the pod IP for Kubernetes probes and scrapes.
    #[arg(
        long = "admin-listen",
        value_name = "ADDR",
        env = "PORCHLIGHT_ADMIN_LISTEN",
        default_value = "127.0.0.1:9883"
    )]
    pub admin_listen: SocketAddr,

    /// Serve the admin endpoint over TLS with --tls-cert and --tls-key
    /// (no client certificates asked; renewed files are picked up).
    #[arg(long = "admin-tls", env = "PORCHLIGHT_ADMIN_TLS")]
    pub admin_tls: bool,

    /// The admin endpoint's own TLS certificate chain (PEM), instead of
    /// --tls-cert; implies TLS. Needs --admin-tls-key.
    #[arg(
        long = "admin-tls-cert",
        value_name = "FILE",
        env = "PORCHLIGHT_ADMIN_TLS_CERT"
    )]
    pub admin_tls_cert: Option<PathBuf>,

    /// The private key of --admin-tls-cert (PEM).
    #[arg(
        long = "admin-tls-key",
        value_name = "FILE",
        env = "PORCHLIGHT_ADMIN_TLS_KEY"
    )]
    pub admin_tls_key: Option<PathBuf>,

    /// File holding the admin API's bearer token (one line; re-read when
    /// it changes). Without it the API's write endpoints are off, and the
    /// API answers only on a loopback --admin-listen.
    #[arg(
        long = "admin-token-file",
        value_name = "FILE",
        env = "PORCHLIGHT_ADMIN_TOKEN_FILE"
    )]
    pub admin_token_file: Option<PathBuf>,

    /// Open no admin listener (no probes, metrics or admin API).
    #[arg(
        long = "no-admin-listen",
        env = "PORCHLIGHT_NO_ADMIN_LISTEN",
        conflicts_with = "admin_listen"
    )]
    pub no_admin_listen: bool,

    /// Seconds between SIGTERM/SIGINT and closing the listeners: /readyz
    /// answers 503 at once, so load balancers and Kubernetes stop sending
    /// new clients before the node closes (set it to the endpoint
    /// propagation time, a few seconds). 0 closes at once.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "PORCHLIGHT_DRAIN_DELAY",
        default_value_t = 0
    )]
    pub drain_delay: u64,

    /// Seconds to wait for connections to close on SIGTERM/SIGINT.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "PORCHLIGHT_SHUTDOWN_GRACE",
        default_value_t = 10
    )]
    pub shutdown_grace: u64,
}
