//! What a run does, whatever asked for it: the `conn`, `pub` and `sub`
//! subcommands (`cli.rs`) and `scenario FILE` all become one [`Plan`] —
//! groups of clients (idle, subscribers, publishers) plus the connection
//! settings they share. `run.rs` executes it. Also owns topic templates
//! (`%i`, `%c`) and MQTT topic matching, used to work out which
//! receivers should get which publisher's messages.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::LoadError;

/// MQTT protocol level of every client in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.0.
    V5,
}

/// TLS settings for every connection.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// PEM CA bundle the server certificate must chain to.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (mutual TLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Accept any server certificate (signatures are still checked).
    pub insecure: bool,
    /// Name sent in SNI and checked against the certificate.
    pub server_name: String,
    /// Keep TLS sessions so reconnects resume.
    pub resume: bool,
    /// Offer the hybrid post-quantum key exchange X25519MLKEM768 first
    /// (rustls's default); otherwise X25519, P-256 and P-384, as most
    /// device TLS stacks and OpenSSL 3.0 do.
    pub post_quantum: bool,
}

/// Connection settings shared by every client.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Broker addresses; client `n` uses `hosts[n % hosts.len()]`.
    pub hosts: Vec<String>,
    pub version: Version,
    pub keepalive: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Start every client with a clean session (3.1.1) / clean start (5).
    pub clean: bool,
    /// MQTT 5 session expiry interval, seconds.
    pub session_expiry: u32,
    /// Local addresses to connect from, in turn (`--src-ips`).
    pub src_ips: Vec<IpAddr>,
    pub tls: Option<Tls>,
    /// New connections per second over the whole run (0: unlimited).
    pub connect_rate: f64,
    pub connect_timeout: Duration,
    /// Reconnect a connection the broker closed, after this delay.
    pub reconnect: Option<Duration>,
    /// Reconnect storm: every client connects once (a warm-up, not
    /// measured), then all of them disconnect and reconnect `cycles - 1`
    /// times as fast as they can. 1: connect once.
    pub cycles: u32,
    /// Client id prefix; ids are `PREFIX-GROUP-INDEX`.
    pub client_prefix: String,
}

/// What the clients of a group do once connected.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Connect and hold the connection.
    Idle,
    Subscriber {
        /// Topic filter template.
        topic: String,
        qos: u8,
        /// Shared-subscription group: the filter becomes `$share/G/filter`.
        shared: Option<String>,
    },
    Publisher(Publish),
}

/// What each client of a publisher group sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// Topic template in a plan; the expanded topic in a client's task.
    pub topic: String,
    pub qos: u8,
    /// Payload bytes (raised to the 16-byte header).
    pub size: usize,
    /// Messages per second per client; 0: as fast as possible.
    pub rate: f64,
    /// Messages per client at most.
    pub limit: Option<u64>,
    /// QoS 1 messages awaiting PUBACK at most, per client.
    pub inflight: u16,
    pub retain: bool,
}

/// Clients that do the same thing.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub count: usize,
    pub role: Role,
}

/// A whole run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub connection: Connection,
    pub groups: Vec<Group>,
    /// How long publishers publish (or connections are held).
    pub duration: Duration,
    /// After publishing stops, how long to wait for messages in flight.
    pub drain: Duration,
    /// Stop connecting after this long even if not everyone got in.
    pub connect_deadline: Duration,
}

impl Plan {
    /// A plan with the default connect deadline (10 minutes), validated.
    pub fn checked(
        name: String,
        connection: Connection,
        groups: Vec<Group>,
        duration: Duration,
        drain: Duration,
    ) -> Result<Plan, LoadError> {
        let plan = Plan {
            name,
            connection,
            groups,
            duration,
            drain,
            connect_deadline: Duration::from_secs(600),
        };
        plan.validate()?;
        Ok(plan)
    }

    pub fn clients(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }

    /// Checks what the flags or the scenario file cannot express; the
    /// error names the setting.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |what: &str, why: String| Err(LoadError::Invalid(format!("{what}: {why}")));
        if self.connection.hosts.is_empty() {
            return bad("--host", "at least one broker address".into());
        }
        if self.groups.iter().all(|g| g.count == 0) {
            return bad("count", "no clients to run".into());
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(24 * 3600) {
            return bad("duration", "between 1 s and 24 h".into());
        }
        for g in &self.groups {
            match &g.role {
                Role::Idle => {}
                Role::Subscriber { topic, qos, shared } => {
                    if *qos > 2 {
                        return bad(&format!("{}: qos", g.name), format!("{qos} (0, 1 or 2)"));
                    }
                    check_template(&g.name, topic, true)?;
                    if let Some(s) = shared {
                        if s.is_empty() || s.contains(['/', '+', '#']) {
                            return bad(
                                &format!("{}: shared", g.name),
                                format!("{s:?} is not a group name"),
                            );
                        }
                    }
                }
                Role::Publisher(Publish {
                    topic,
                    qos,
                    size,
                    rate,
                    inflight,
                    ..
                }) => {
                    if *qos > 1 {
                        return bad(
                            &format!("{}: qos", g.name),
                            format!("{qos}: publishers send QoS 0 or 1"),
                        );
                    }
                    check_template(&g.name, topic, false)?;
                    if *size > 256 * 1024 * 1024 {
                        return bad(
                            &format!("{}: size", g.name),
                            format!("{size} bytes (at most 256 MiB)"),
                        );
                    }
                    if !rate.is_finite() || *rate < 0.0 {
                        return bad(&format!("{}: rate", g.name), format!("{rate}"));
                    }
                    if *inflight == 0 {
                        return bad(&format!("{}: inflight", g.name), "at least 1".into());
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_template(group: &str, topic: &str, filter: bool) -> Result<(), LoadError> {
    let sample = expand(topic, 0, "c");
    let wildcard = sample.contains(['+', '#']);
    if topic.is_empty() || (wildcard && !filter) || sample.starts_with("$share/") {
        return Err(LoadError::Invalid(format!(
            "{group}: topic {topic:?} is not a valid {}",
            if filter { "topic filter" } else { "topic name" }
        )));
    }
    if filter {
        let levels: Vec<&str> = sample.split('/').collect();
        for (i, l) in levels.iter().enumerate() {
            let bad_hash = l.contains('#') && (*l != "#" || i + 1 != levels.len());
            let bad_plus = l.contains('+') && *l != "+";
            if bad_hash || bad_plus {
                return Err(LoadError::Invalid(format!(
                    "{group}: topic filter {topic:?}: wildcards must fill a whole level, `#` only the last"
                )));
            }
        }
    }
    Ok(())
}

/// A topic template with `%i` (the client's index in its group) and `%c`
/// (its client id) filled in.
pub fn expand(template: &str, index: usize, client_id: &str) -> String {
    let mut out = String::with_capacity(template.len() + 8);
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.peek() {
                Some('i') => {
                    chars.next();
                    out.push_str(&index.to_string());
                    continue;
                }
                Some('c') => {
                    chars.next();
                    out.push_str(client_id);
                    continue;
                }
                Some('%') => {
                    chars.next();
                }
                _ => {}
            }
        }
        out.push(c);
    }
    out
}

/// Whether topic name `topic` matches filter `filter` (MQTT 4.7; a filter
/// starting with a wildcard does not match `$` topics). Written apart from
/// the broker's matcher on purpose: the generator judges the broker's
/// routing, so it must not share its code.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// `scenario FILE`: the TOML form of a plan's groups and timings; the
/// connection settings come from the command line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub name: Option<String>,
    /// Seconds of publishing (or holding).
    pub duration: f64,
    /// Seconds to wait for messages in flight after publishing stops.
    #[serde(default = "default_drain")]
    pub drain: f64,
    #[serde(default)]
    pub idle: Vec<IdleGroup>,
    #[serde(default, rename = "sub")]
    pub subs: Vec<SubGroup>,
    #[serde(default, rename = "pub")]
    pub pubs: Vec<PubGroup>,
}

fn default_drain() -> f64 {
    5.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdleGroup {
    pub name: Option<String>,
    pub count: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubGroup {
    pub name: Option<String>,
    pub count: usize,
    pub topic: String,
    #[serde(default)]
    pub qos: u8,
    pub shared: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubGroup {
    pub name: Option<String>,
    pub count: usize,
    pub topic: String,
    #[serde(default)]
    pub qos: u8,
    #[serde(default = "default_size")]
    pub size: usize,
    /// Messages per second per client (0: as fast as possible).
    #[serde(default)]
    pub rate: f64,
    pub limit: Option<u64>,
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    #[serde(default)]
    pub retain: bool,
}

fn default_size() -> usize {
    16
}

pub fn default_inflight() -> u16 {
    100
}

/// `s` seconds as a duration; the error names `what`.
pub fn seconds(what: &str, s: f64) -> Result<Duration, LoadError> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| LoadError::Invalid(format!("{what}: {s} is not a number of seconds")))
}

impl ScenarioFile {
    pub fn parse(path: &std::path::Path) -> Result<ScenarioFile, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LoadError::Invalid(format!("scenario {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| LoadError::Invalid(format!("scenario {}: {e}", path.display())))
    }

    /// The plan this file describes, with `connection` for every client.
    pub fn plan(self, connection: Connection, fallback_name: &str) -> Result<Plan, LoadError> {
        let mut groups = Vec::new();
        for (i, g) in self.idle.into_iter().enumerate() {
            groups.push(Group {
                name: g.name.unwrap_or_else(|| format!("idle{i}")),
                count: g.count,
                role: Role::Idle,
            });
        }
        for (i, g) in self.subs.into_iter().enumerate() {
            groups.push(Group {
                name: g.name.unwrap_or_else(|| format!("sub{i}")),
                count: g.count,
                role: Role::Subscriber {
                    topic: g.topic,
                    qos: g.qos,
                    shared: g.shared,
                },
            });
        }
        for (i, g) in self.pubs.into_iter().enumerate() {
            groups.push(Group {
                name: g.name.unwrap_or_else(|| format!("pub{i}")),
                count: g.count,
                role: Role::Publisher(Publish {
                    topic: g.topic,
                    qos: g.qos,
                    size: g.size,
                    rate: g.rate,
                    limit: g.limit,
                    inflight: g.inflight,
                    retain: g.retain,
                }),
            });
        }
        let mut names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(LoadError::Invalid(format!(
                "scenario: group name {:?} used twice",
                w[0]
            )));
        }
        Plan::checked(
            self.name.unwrap_or_else(|| fallback_name.to_owned()),
            connection,
            groups,
            seconds("duration", self.duration)?,
            seconds("drain", self.drain)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_index_and_client_id() {
        assert_eq!(expand("bench/%i/%c", 7, "lt-pub-7"), "bench/7/lt-pub-7");
        assert_eq!(expand("100%%/x%", 1, "c"), "100%/x%");
        assert_eq!(expand("a/%z", 1, "c"), "a/%z");
    }

    #[test]
    fn topic_matching_follows_mqtt() {
        assert!(matches("bench/#", "bench/1"));
        assert!(matches("bench/#", "bench"));
        assert!(matches("+/1", "bench/1"));
        assert!(matches("bench/+/x", "bench/2/x"));
        assert!(!matches("bench/+", "bench/2/x"));
        assert!(!matches("bench/1", "bench/10"));
        assert!(!matches("#", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn scenario_files_parse_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            r#"
name = "fan-in"
duration = 2.5
[[sub]]
count = 1
topic = "bench/#"
qos = 1
[[pub]]
count = 10
topic = "bench/%i"
qos = 1
rate = 100
"#,
        )
        .expect("write");
        let plan = ScenarioFile::parse(&path)
            .expect("parses")
            .plan(test_connection(), "x")
            .expect("valid");
        assert_eq!(plan.name, "fan-in");
        assert_eq!(plan.clients(), 11);
        assert_eq!(plan.duration, Duration::from_millis(2500));
        assert_eq!(plan.drain, Duration::from_secs(5));
        assert!(matches!(
            plan.groups[1].role,
            Role::Publisher(Publish {
                size: 16,
                inflight: 100,
                ..
            })
        ));

        for (text, needle) in [
            ("duration = 1\n[[pub]]\ncount = 1\ntopic = \"a/#\"", "not a valid topic name"),
            ("duration = 1\n[[sub]]\ncount = 1\ntopic = \"a/b#\"", "whole level"),
            ("duration = 1\n[[sub]]\ncount = 1\ntopic = \"a\"\nqos = 3", "qos"),
            ("duration = 1\n[[pub]]\ncount = 1\ntopic = \"a\"\nqos = 2", "QoS 0 or 1"),
            ("duration = 1\n[[pub]]\ncount = 1\ntopic = \"a\"\nspeed = 2", "unknown field"),
            ("duration = -1\n[[idle]]\ncount = 1", "duration"),
            ("duration = 1\n[[idle]]\nname = \"a\"\ncount = 1\n[[idle]]\nname = \"a\"\ncount = 1", "twice"),
            ("duration = 1", "no clients"),
        ] {
            std::fs::write(&path, text).expect("write");
            let err = ScenarioFile::parse(&path)
                .and_then(|s| s.plan(test_connection(), "x"))
                .expect_err(text)
                .to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_shipped_scenarios_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("scenarios/") {
            let path = entry.expect("entry").path();
            ScenarioFile::parse(&path)
                .and_then(|s| s.plan(test_connection(), "x"))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
        assert!(n >= 5);
    }

    fn test_connection() -> Connection {
        Connection {
            hosts: vec!["127.0.0.1:1883".into()],
            version: Version::V4,
            keepalive: 60,
            username: None,
            password: None,
            clean: true,
            session_expiry: 0,
            src_ips: vec![],
            tls: None,
            connect_rate: 0.0,
            connect_timeout: Duration::from_secs(5),
            reconnect: None,
            cycles: 1,
            client_prefix: "t".into(),
        }
    }
}
