//! JWT authentication: a signed token in the CONNECT password.
//!
//! The `[jwt]` table of the auth file (`file.rs`) names the algorithm
//! (HS256 with a shared secret, RS256 or ES256 with a PEM public key), the
//! claim that carries the username and the claim that carries ACL rules.
//! [`JwtVerifier::verify`] checks the signature, `exp` (required), `nbf`,
//! and `iss`/`aud` when configured, and turns the claims into a
//! [`Principal`] for `auth/mod.rs`.
//!
//! ACL claim format (the one EMQX uses): `{"pub": [...], "sub": [...],
//! "all": [...]}`, lists of topic patterns granted (`allow`), checked
//! before the file's rules.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::acl::{Action, Permission, Rule};
use super::Principal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    algorithm: JwtAlgorithm,
    /// HS256: the shared secret, inline or in a file.
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    /// RS256/ES256: PEM public key (or certificate's key) file.
    public_key_file: Option<PathBuf>,
    #[serde(default = "default_username_claim")]
    username_claim: String,
    #[serde(default = "default_acl_claim")]
    acl_claim: String,
    issuer: Option<String>,
    audience: Option<String>,
    /// Allowed clock skew for `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    leeway_seconds: u64,
    /// Close the connection when the token expires (v5: DISCONNECT 0x87).
    #[serde(default = "default_true")]
    disconnect_on_expiry: bool,
}

fn default_username_claim() -> String {
    "sub".into()
}
fn default_acl_claim() -> String {
    "acl".into()
}
fn default_leeway() -> u64 {
    30
}
fn default_true() -> bool {
    true
}

pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    username_claim: String,
    acl_claim: String,
    disconnect_on_expiry: bool,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("username_claim", &self.username_claim)
            .finish_non_exhaustive()
    }
}

/// The JWT key files the auth or tenants file at `path` names now (its
/// `[jwt]` table and each `[[tenant]]`'s), resolved against its directory,
/// whether or not they exist or the file would load: the watcher
/// (`auth/mod.rs`) polls them, so a key named before it is written is
/// picked up when it appears. Empty for a file that does not parse.
pub fn named_key_files(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(doc) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tenants = doc
        .get("tenant")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(toml::Value::as_table);
    std::iter::once(&doc)
        .chain(tenants)
        .filter_map(|t| t.get("jwt")?.as_table())
        .flat_map(|jwt| {
            ["secret_file", "public_key_file"]
                .into_iter()
                .filter_map(|k| jwt.get(k)?.as_str())
        })
        .map(|f| dir.join(f))
        .collect()
}

fn read(dir: &Path, file: &Path) -> Result<Vec<u8>, String> {
    let path = dir.join(file);
    std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
}

impl JwtVerifier {
    pub fn new(c: JwtConfig, dir: &Path) -> Result<JwtVerifier, String> {
        let key = match c.algorithm {
            JwtAlgorithm::HS256 => {
                let secret = match (&c.secret, &c.secret_file) {
                    (Some(s), None) => s.as_bytes().to_vec(),
                    (None, Some(f)) => {
                        let mut s = read(dir, f)?;
                        while s.last().is_some_and(|b| b.is_ascii_whitespace()) {
                            s.pop();
                        }
                        s
                    }
                    _ => return Err("HS256 needs exactly one of secret, secret_file".into()),
                };
                if secret.len() < 32 {
                    return Err("the HS256 secret must be at least 32 bytes".into());
                }
                DecodingKey::from_secret(&secret)
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                let Some(f) = &c.public_key_file else {
                    return Err(format!("{:?} needs public_key_file", c.algorithm));
                };
                let pem = read(dir, f)?;
                let key = if c.algorithm == JwtAlgorithm::RS256 {
                    DecodingKey::from_rsa_pem(&pem)
                } else {
                    DecodingKey::from_ec_pem(&pem)
                };
                key.map_err(|e| format!("{}: {e}", f.display()))?
            }
        };
        let alg = match c.algorithm {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
        };
        let mut validation = Validation::new(alg);
        validation.leeway = c.leeway_seconds;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present in the token,
        // not only match when it happens to be there.
        let mut required = vec!["exp"];
        if let Some(iss) = &c.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &c.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(JwtVerifier {
            key,
            validation,
            username_claim: c.username_claim,
            acl_claim: c.acl_claim,
            disconnect_on_expiry: c.disconnect_on_expiry,
        })
    }

    /// Whether `password` has the shape of a JWT (three base64url parts).
    pub fn looks_like_token(password: &[u8]) -> bool {
        password.split(|b| *b == b'.').count() == 3
            && password
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    /// The principal a valid token names, or why it is refused.
    pub fn verify(&self, token: &[u8]) -> Result<Principal, String> {
        let token = std::str::from_utf8(token).map_err(|_| "token is not UTF-8".to_owned())?;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &self.validation)
            .map_err(|e| e.to_string())?;
        let claims = data.claims;
        let username = claims
            .get(&self.username_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("no string claim {:?}", self.username_claim))?
            .to_owned();
        let expires = claims
            .get("exp")
            .and_then(|v| v.as_u64())
            .filter(|_| self.disconnect_on_expiry)
            .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)));
        let mut rules = Vec::new();
        if let Some(acl) = claims.get(&self.acl_claim) {
            let obj = acl
                .as_object()
                .ok_or_else(|| format!("claim {:?} is not an object", self.acl_claim))?;
            for (key, action) in [
                ("pub", Action::Publish),
                ("sub", Action::Subscribe),
                ("all", Action::All),
            ] {
                let Some(list) = obj.get(key) else { continue };
                let topics = list
                    .as_array()
                    .and_then(|l| {
                        l.iter()
                            .map(|t| t.as_str().map(str::to_owned))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(|| {
                        format!("claim {:?}.{key} is not a list of strings", self.acl_claim)
                    })?;
                if let Some(bad) = topics.iter().find(|t| !super::file::valid_pattern(t)) {
                    return Err(format!("ACL claim topic {bad:?} is not a valid filter"));
                }
                rules.push(Rule {
                    permission: Permission::Allow,
                    action,
                    topics,
                    user: None,
                    client: None,
                    address: None,
                });
            }
        }
        Ok(Principal {
            username: Some(username),
            claims: rules,
            expires,
            method: "jwt",
        })
    }
}
