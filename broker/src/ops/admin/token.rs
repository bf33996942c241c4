//! The admin API's bearer token (`--admin-token-file`), and who may call
//! what.
//!
//! The file is read again when its size or modification time changes, so
//! a rotated secret (a Kubernetes Secret update) takes effect without a
//! restart. Without a token file the API answers reads only, and only on
//! a loopback admin listener; with one, every API request needs
//! `Authorization: Bearer <token>`.

use std::path::PathBuf;
use std::time::SystemTime;

use parking_lot::Mutex;

#[derive(Debug)]
pub struct Token {
    path: Option<PathBuf>,
    /// The token as last read, with the file's size and time then.
    cached: Mutex<Option<(u64, Option<SystemTime>, String)>>,
}

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
    /// (every request is then refused, and the log says why).
    fn current(&self) -> Option<String> {
        let path = self.path.as_ref()?;
        let meta = std::fs::metadata(path).ok()?;
        let stamp = (meta.len(), meta.modified().ok());
        let mut cached = self.cached.lock();
        if let Some((len, time, token)) = cached.as_ref() {
            if (*len, *time) == stamp {
                return Some(token.clone());
            }
        }
        let token = match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "--admin-token-file is empty: the admin API refuses every request");
                return None;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "--admin-token-file unreadable: the admin API refuses every request");
                return None;
            }
        };
        *cached = Some((stamp.0, stamp.1, token.clone()));
        Some(token)
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
        let given = authorization.and_then(|h| h.strip_prefix("Bearer "));
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

#[cfg(test)]
mod tests {
    use super::*;

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
