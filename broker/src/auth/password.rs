//! Password hashes as PHC strings (argon2id).
//!
//! `porchlight hash-password` turns a password into the string stored in
//! `--auth-file`; authentication verifies a CONNECT password against it.
//! Parameters are argon2's defaults (argon2id v19, 19 MiB, 2 passes, 1
//! lane: the OWASP recommendation); a stored string carries its own, so
//! they can be raised later without invalidating existing hashes.

use argon2::Argon2;
use password_hash::rand_core::OsRng;
use password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// The PHC string for `password`, with a fresh random salt.
pub fn hash(password: &[u8]) -> Result<String, password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password, &salt)?
        .to_string())
}

/// Whether `password` matches the PHC string `phc`. A malformed string
/// never matches.
pub fn verify(phc: &str, password: &[u8]) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok())
}

/// The password from what `hash-password` read: the first line, without
/// its line ending. `None` if it is empty.
pub fn from_stdin_text(text: &str) -> Option<&str> {
    let line = text.split('\n').next().unwrap_or_default();
    let line = line.strip_suffix('\r').unwrap_or(line);
    (!line.is_empty()).then_some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_password() {
        let phc = hash(b"s3cret").expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        assert!(verify(&phc, b"s3cret"));
        assert!(!verify(&phc, b"s3cret "));
        assert!(!verify("not a phc string", b"s3cret"));
        assert_ne!(phc, hash(b"s3cret").expect("hash"), "salted");
    }

    #[test]
    fn the_first_line_is_the_password() {
        assert_eq!(from_stdin_text("pw\n"), Some("pw"));
        assert_eq!(from_stdin_text("pw\r\nignored"), Some("pw"));
        assert_eq!(from_stdin_text("with space"), Some("with space"));
        assert_eq!(from_stdin_text("\n"), None);
        assert_eq!(from_stdin_text(""), None);
    }
}
