//! The command line (clap): subcommands `conn`, `pub`, `sub` and
//! `scenario FILE`, the connection options they share (named after
//! emqtt-bench's where they mean the same), and the outputs. Turns the
//! arguments into a [`Plan`] and [`Options`] for `run.rs`; every bad value
//! comes back as an error naming its flag.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::LoadError;
use crate::plan::{self, seconds, Connection, Group, Plan, Role, ScenarioFile, Version};
use crate::run::{Options, Progress};

#[derive(Debug, Parser)]
#[command(
    name = "porchlight-loadtest",
    version,
    about = "MQTT load generator: connections, publishers and subscribers against any broker"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open connections at a rate and hold them.
    Conn {
        #[command(flatten)]
        common: Common,
    },
    /// Publishers: messages with sequence numbers and timestamps.
    Pub {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        publish: PublishArgs,
    },
    /// Subscribers: count, order-check and time what arrives.
    Sub {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        subscribe: SubscribeArgs,
    },
    /// Publishers and subscribers of a TOML scenario in one process, so
    /// losses and latencies are exact.
    Scenario {
        /// The scenario file (see docs/loadtest.md).
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Args)]
pub struct Common {
    /// Broker address HOST:PORT; repeat or separate with commas to spread
    /// clients over several nodes.
    #[arg(
        short = 'H',
        long = "host",
        value_delimiter = ',',
        default_value = "127.0.0.1:1883"
    )]
    pub hosts: Vec<String>,
    /// MQTT version: 4 (3.1.1) or 5.
    #[arg(short = 'V', long = "mqtt-version", default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    pub mqtt_version: u8,
    /// Clients (for `scenario`, set in the file).
    #[arg(short = 'c', long, default_value_t = 1)]
    pub count: usize,
    /// New connections per second (0: as fast as possible).
    #[arg(short = 'R', long = "connect-rate", default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Seconds to publish (or hold connections) once everyone is in.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait for messages in flight after publishing stops.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Keepalive in seconds.
    #[arg(short = 'k', long, default_value_t = 300)]
    pub keepalive: u16,
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    #[arg(short = 'P', long)]
    pub password: Option<String>,
    /// Persistent sessions: connect with clean session / clean start off.
    #[arg(long)]
    pub persistent: bool,
    /// MQTT 5 session expiry interval in seconds (with --persistent).
    #[arg(short = 'x', long = "session-expiry", default_value_t = 0)]
    pub session_expiry: u32,
    /// Client id prefix; ids are PREFIX-GROUP-INDEX.
    #[arg(long = "client-prefix")]
    pub client_prefix: Option<String>,
    /// Local source addresses, in turn: a range `127.0.0.2-127.0.0.40` or
    /// a comma-separated list; each address gives another ~28k ports.
    #[arg(long = "src-ips")]
    pub src_ips: Option<String>,
    /// Seconds to wait for a CONNACK.
    #[arg(long = "connect-timeout", default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Reconnect a connection the broker closed, after this many ms.
    #[arg(long = "reconnect-ms")]
    pub reconnect_ms: Option<u64>,
    /// Reconnect storm: each client connects once (warm-up, not measured;
    /// it gets its TLS session ticket), then all disconnect and reconnect
    /// CYCLES-1 times as fast as they can; connect rate and latency are
    /// those of the reconnects.
    #[arg(long, default_value_t = 1)]
    pub cycles: u32,
    /// Connect with TLS.
    #[arg(long)]
    pub tls: bool,
    /// PEM CA file for the broker's certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (mutual TLS), with --key.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Accept any server certificate (signatures are still checked).
    #[arg(long)]
    pub insecure: bool,
    /// TLS server name (SNI) to ask for.
    #[arg(long = "server-name", default_value = "localhost")]
    pub server_name: String,
    /// Full TLS handshake on every connect (no session resumption).
    #[arg(long = "no-tls-resume")]
    pub no_tls_resume: bool,
    /// Offer the hybrid post-quantum key exchange X25519MLKEM768 first;
    /// without it: X25519, P-256, P-384, as most device TLS stacks do.
    #[arg(long = "tls-pq")]
    pub tls_pq: bool,
    /// The broker's process id: its CPU and memory are reported.
    #[arg(long = "broker-pid")]
    pub broker_pid: Option<u32>,
    /// Write the whole summary, time series included, as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a Markdown report with SVG plots into this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// No progress output.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Topic; `%i` is the client's index, `%c` its client id.
    #[arg(short = 't', long, default_value = "bench/%i")]
    pub topic: String,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Payload bytes (at least the 16-byte header).
    #[arg(short = 's', long, default_value_t = 16)]
    pub size: usize,
    /// Messages per second per publisher (0: as fast as possible).
    #[arg(short = 'r', long, default_value_t = 1.0)]
    pub rate: f64,
    /// Messages per publisher at most.
    #[arg(short = 'L', long)]
    pub limit: Option<u64>,
    /// QoS 1 messages awaiting PUBACK per publisher at most.
    #[arg(short = 'F', long, default_value_t = plan::default_inflight())]
    pub inflight: u16,
    #[arg(long)]
    pub retain: bool,
}

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// Topic filter; `%i` is the client's index, `%c` its client id.
    #[arg(short = 't', long, default_value = "bench/#")]
    pub topic: String,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Join a shared-subscription group ($share/GROUP/filter).
    #[arg(long)]
    pub shared: Option<String>,
}

/// `127.0.0.2-127.0.0.40` or `a,b,c`.
pub fn parse_src_ips(s: &str) -> Result<Vec<IpAddr>, LoadError> {
    let bad = |why: String| LoadError::Invalid(format!("--src-ips {s}: {why}"));
    if let Some((a, b)) = s.split_once('-') {
        let (a, b): (IpAddr, IpAddr) = (
            a.trim().parse().map_err(|e| bad(format!("{e}")))?,
            b.trim().parse().map_err(|e| bad(format!("{e}")))?,
        );
        let (IpAddr::V4(a), IpAddr::V4(b)) = (a, b) else {
            return Err(bad("ranges are IPv4; list IPv6 addresses".into()));
        };
        let (a, b) = (u32::from(a), u32::from(b));
        if a > b || b - a >= 65_536 {
            return Err(bad("the range must go up, at most 65,536 addresses".into()));
        }
        return Ok((a..=b).map(|n| IpAddr::V4(n.into())).collect());
    }
    s.split(',')
        .map(|p| p.trim().parse().map_err(|e| bad(format!("{p}: {e}"))))
        .collect()
}

impl Common {
    fn connection(&self) -> Result<Connection, LoadError> {
        if !self.connect_rate.is_finite() || self.connect_rate < 0.0 {
            return Err(LoadError::Invalid(format!(
                "--connect-rate: {}",
                self.connect_rate
            )));
        }
        let tls_files = self.ca.is_some()
            || self.cert.is_some()
            || self.key.is_some()
            || self.insecure
            || self.tls_pq;
        if tls_files && !self.tls {
            return Err(LoadError::Invalid(
                "--ca, --cert, --key, --insecure and --tls-pq need --tls".into(),
            ));
        }
        if self.cycles == 0 {
            return Err(LoadError::Invalid("--cycles: at least 1".into()));
        }
        if self.session_expiry > 0 && self.mqtt_version != 5 {
            return Err(LoadError::Invalid(
                "--session-expiry needs --mqtt-version 5".into(),
            ));
        }
        Ok(Connection {
            hosts: self.hosts.clone(),
            version: if self.mqtt_version == 5 {
                Version::V5
            } else {
                Version::V4
            },
            keepalive: self.keepalive,
            username: self.username.clone(),
            password: self.password.clone(),
            clean: !self.persistent,
            session_expiry: self.session_expiry,
            src_ips: match &self.src_ips {
                Some(s) => parse_src_ips(s)?,
                None => Vec::new(),
            },
            tls: self.tls.then(|| plan::Tls {
                ca: self.ca.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
                insecure: self.insecure,
                server_name: self.server_name.clone(),
                resume: !self.no_tls_resume,
                post_quantum: self.tls_pq,
            }),
            connect_rate: self.connect_rate,
            connect_timeout: seconds("--connect-timeout", self.connect_timeout)?,
            reconnect: self.reconnect_ms.map(Duration::from_millis),
            cycles: self.cycles,
            client_prefix: self
                .client_prefix
                .clone()
                .unwrap_or_else(|| format!("lt{}", std::process::id())),
        })
    }

    fn options(&self) -> Options {
        Options {
            broker_pid: self.broker_pid,
            progress: if self.quiet {
                Progress::Quiet
            } else {
                Progress::Auto
            },
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }
}

/// Where the outputs go.
pub struct Outputs {
    pub json: Option<PathBuf>,
    pub report: Option<PathBuf>,
}

impl Cli {
    /// The plan, run options and outputs the command line asks for.
    pub fn plan(&self) -> Result<(Plan, Options, Outputs), LoadError> {
        let (common, plan) = match &self.command {
            Command::Scenario { file, common } => {
                let name = file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "scenario".into());
                (
                    common,
                    ScenarioFile::parse(file)?.plan(common.connection()?, &name)?,
                )
            }
            Command::Conn { common } => (common, simple(common, "conn", Role::Idle)?),
            Command::Pub { common, publish: p } => (
                common,
                simple(
                    common,
                    "pub",
                    Role::Publisher(plan::Publish {
                        topic: p.topic.clone(),
                        qos: p.qos,
                        size: p.size,
                        rate: p.rate,
                        limit: p.limit,
                        inflight: p.inflight,
                        retain: p.retain,
                    }),
                )?,
            ),
            Command::Sub {
                common,
                subscribe: s,
            } => (
                common,
                simple(
                    common,
                    "sub",
                    Role::Subscriber {
                        topic: s.topic.clone(),
                        qos: s.qos,
                        shared: s.shared.clone(),
                    },
                )?,
            ),
        };
        let outputs = Outputs {
            json: common.json.clone(),
            report: common.report.clone(),
        };
        Ok((plan, common.options(), outputs))
    }
}

fn simple(common: &Common, name: &str, role: Role) -> Result<Plan, LoadError> {
    Plan::checked(
        name.to_owned(),
        common.connection()?,
        vec![Group {
            name: name.to_owned(),
            count: common.count,
            role,
        }],
        seconds("--duration", common.duration)?,
        seconds("--drain", common.drain)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_address_ranges_and_lists() {
        let r = parse_src_ips("127.0.0.2-127.0.0.4").expect("range");
        assert_eq!(r.len(), 3);
        assert_eq!(r[2], "127.0.0.4".parse::<IpAddr>().expect("ip"));
        assert_eq!(parse_src_ips("127.0.0.1,::1").expect("list").len(), 2);
        for bad in ["127.0.0.9-127.0.0.2", "x-y", "127.0.0.1,nope", "::1-::2"] {
            let e = parse_src_ips(bad).expect_err(bad).to_string();
            assert!(e.starts_with("--src-ips"), "{e}");
        }
    }

    #[test]
    fn flags_become_a_plan_and_bad_ones_are_named() {
        let cli = Cli::try_parse_from([
            "porchlight-loadtest",
            "pub",
            "-c",
            "3",
            "--qos",
            "1",
            "-r",
            "50",
            "-t",
            "t/%i",
            "-V",
            "5",
        ])
        .expect("parses");
        let (plan, _, _) = cli.plan().expect("plan");
        assert_eq!(plan.clients(), 3);
        assert_eq!(plan.connection.version, Version::V5);
        assert!(matches!(
            plan.groups[0].role,
            Role::Publisher(plan::Publish { qos: 1, .. })
        ));

        assert!(Cli::try_parse_from(["porchlight-loadtest", "pub", "--qos", "2"]).is_err());
        assert!(Cli::try_parse_from(["porchlight-loadtest", "conn", "-V", "3"]).is_err());
        for (args, needle) in [
            (&["conn", "--ca", "x.pem"][..], "need --tls"),
            (&["conn", "--session-expiry", "60"][..], "--mqtt-version 5"),
            (&["conn", "-d", "0"][..], "duration"),
            (&["sub", "-t", "a/#/b"][..], "whole level"),
            (&["conn", "--connect-rate=-1"][..], "--connect-rate"),
        ] {
            let cli = Cli::try_parse_from(
                std::iter::once("porchlight-loadtest").chain(args.iter().copied()),
            )
            .expect("parses");
            let e = cli.plan().err().expect("refused").to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
