//! The admin API's bearer token (`--admin-token-file`), and who may call
//! what.
//!
//! The file is read again when its size or modification time changes, so
//! a rotated secret (a Kubernetes Secret update) takes effect without a
//! restart. Without a token file the API answers reads only, and only on
//! a loopback admin listener, and only to requests whose `Host` is a
//! loopback name (so a web page cannot reach it through DNS rebinding);
//! with one, every API request needs `Authorization: Bearer <token>`.

use std::path::PathBuf;
use std::time::SystemTime;

use parking_lot::Mutex;

#[derive(Debug)]
pub struct Token {
    path: Option<PathBuf>,
    /// The token as last read (`None`: empty or unreadable, logged once),
    /// with the file's size and time then.
    cached: Mutex<Option<(Stamp, Option<String>)>>,
}

/// A file's size and modification time, or `None` when it cannot be
/// looked at.
type Stamp = Option<(u64, Option<SystemTime>)>;

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads and writes.
    Full,
    /// Reads only (no token file, loopback listener).
    ReadOnly,
    /// A token is needed and was missing or wrong.
    Unauthorized,
    /// No token file and a listener beyond loopback: the API is off.
    Off,
}

impl Token {
    pub fn new(path: Option<PathBuf>) -> Token {
        Token {
            path,
            cached: Mutex::new(None),
        }
    }

    /// The token now; `None` when the file cannot be read or is empty
    /// (every request is then refused; the log says why once per change
    /// of the file, not per request).
    fn current(&self) -> Option<String> {
        let path = self.path.as_ref()?;
        let stamp: Stamp = std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().ok()));
        let mut cached = self.cached.lock();
        if let Some((seen, token)) = cached.as_ref() {
            if *seen == stamp {
                return token.clone();
            }
        }
        let token = match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "--admin-token-file is empty: the admin API refuses every request");
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "--admin-token-file unreadable: the admin API refuses every request");
                None
            }
        };
        *cached = Some((stamp, token.clone()));
        token
    }

    /// What a request with this `Authorization` header may do, on a
    /// listener that is (or is not) loopback.
    pub fn access(&self, authorization: Option<&str>, loopback: bool) -> Access {
        if self.path.is_none() {
            return if loopback {
                Access::ReadOnly
            } else {
                Access::Off
            };
        }
        // The scheme is case-insensitive (RFC 7235).
        let given = authorization.and_then(|h| {
            let (scheme, token) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        });
        match (self.current(), given) {
            (Some(token), Some(given)) if same(token.as_bytes(), given.trim().as_bytes()) => {
                Access::Full
            }
            _ => Access::Unauthorized,
        }
    }
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an HTTP `Host` names this machine's loopback (`localhost`,
/// `127.x.y.z`, `[::1]`, with or without a port): what a browser sends to
/// a loopback listener, unlike a rebound DNS name.
pub fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:9883",
            "127.0.0.1:9883",
            "127.0.0.2",
            "[::1]:9883",
            "[::1]",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:9883",
            "10.0.0.1:9883",
            "[fe80::1]:80",
            "",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }

    #[test]
    fn the_rules_and_a_rotated_token() {
        let none = Token::new(None);
        assert_eq!(none.access(None, true), Access::ReadOnly);
        assert_eq!(none.access(Some("Bearer x"), false), Access::Off);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").expect("write");
        let t = Token::new(Some(path.clone()));
        assert_eq!(t.access(None, true), Access::Unauthorized);
        assert_eq!(t.access(Some("Bearer nope"), true), Access::Unauthorized);
        assert_eq!(t.access(Some("s3cret"), true), Access::Unauthorized);
        assert_eq!(t.access(Some("Bearer s3cret"), false), Access::Full);
        assert_eq!(t.access(Some("bearer s3cret"), false), Access::Full);
        // Rotated: a different length, so a new stamp even within the
        // file system's time resolution.
        std::fs::write(&path, "rotated-secret\n").expect("write");
        assert_eq!(t.access(Some("Bearer s3cret"), true), Access::Unauthorized);
        assert_eq!(t.access(Some("Bearer rotated-secret"), true), Access::Full);
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(
            t.access(Some("Bearer rotated-secret"), true),
            Access::Unauthorized
        );
    }
}
