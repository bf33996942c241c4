//! The `--auth-file`: users, JWT settings and ACL rules, in TOML.
//!
//! [`load`] reads and checks the whole file, turning it into a [`Realm`]
//! (`auth/mod.rs` serves connections from it and swaps in a new one when
//! the file changes). Every mistake is refused with the file's path and,
//! for TOML errors, the line. The top-level tables (`users`, `jwt`, `acl`)
//! describe one realm; the tenants issue nests the same tables per tenant,
//! so nothing here assumes there is only one. `docs/auth-file.md` is the
//! documented example.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::acl::{Action, Permission, Rule};
use super::jwt::{JwtConfig, JwtVerifier};

/// The tables that describe one realm: the whole auth file, or one
/// `[[tenant]]` of the tenants file (`tenant/file.rs`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealmTables {
    #[serde(default)]
    pub users: Vec<UserEntry>,
    pub jwt: Option<JwtConfig>,
    #[serde(default)]
    pub acl: AclSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub(crate) username: String,
    /// A PHC string from `porchlight hash-password` (`password_hash` in
    /// the tenants file).
    #[serde(alias = "password_hash")]
    password: String,
    /// Tenants file only: the tenants this user may address as a gateway
    /// (`$tenant/<id>/`). `tenant/file.rs` takes them out before `build`.
    #[serde(default)]
    pub(crate) tenants: Vec<String>,
    /// Tenants file only: an operator, who may read the node-wide `$SYS`
    /// (`$tenant/$node/$SYS/#`).
    #[serde(default)]
    pub(crate) operator: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclSection {
    /// When no rule matches: `deny` by default once any rule is written,
    /// `allow` when there are none.
    default: Option<Permission>,
    #[serde(default)]
    rules: Vec<RuleEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    permission: Permission,
    action: Action,
    topic: Option<String>,
    #[serde(default)]
    topics: Vec<String>,
    user: Option<String>,
    client: Option<String>,
    address: Option<ipnet::IpNet>,
}

/// Users, JWT verifier and rules of one realm, checked.
#[derive(Debug)]
pub struct Realm {
    pub users: super::PasswordUsers,
    pub jwt: Option<JwtVerifier>,
    pub rules: Vec<Rule>,
    pub default: Permission,
}

impl Realm {
    /// The realm when no `--auth-file` is given: nobody to check, every
    /// topic allowed.
    pub fn open() -> Realm {
        Realm {
            users: super::PasswordUsers::default(),
            jwt: None,
            rules: Vec::new(),
            default: Permission::Allow,
        }
    }
}

/// Whether `pattern` is a valid topic filter once its placeholders are
/// filled in.
pub(super) fn valid_pattern(pattern: &str) -> bool {
    let filled = pattern
        .replace("%u", "u")
        .replace("%c", "c")
        .replace("%t", "t");
    let limits = crate::topic::TopicLimits {
        max_length: 65_535,
        max_levels: usize::MAX,
    };
    crate::topic::TopicFilter::parse(&filled, limits).is_ok_and(|f| f.group().is_none())
}

/// Reads and checks the auth file. The error is a sentence naming what is
/// wrong (the caller adds the path).
pub fn load(path: &Path) -> Result<Realm, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    parse(&text, path.parent().unwrap_or(Path::new(".")))
}

/// Parses the file's text; relative paths inside it (JWT keys) are
/// relative to `dir`.
pub fn parse(text: &str, dir: &Path) -> Result<Realm, String> {
    let file: RealmTables = toml::from_str(text).map_err(|e| e.to_string())?;
    build(file, dir)
}

/// Checks one realm's tables and builds it; relative paths (JWT keys) are
/// relative to `dir`.
pub fn build(file: RealmTables, dir: &Path) -> Result<Realm, String> {
    let mut users = HashMap::with_capacity(file.users.len());
    for u in file.users {
        if u.username.is_empty() {
            return Err("a [[users]] entry has an empty username".into());
        }
        if !u.tenants.is_empty() {
            return Err(format!(
                "user {:?}: `tenants` (gateway grants) needs --tenants; the auth file has one tenant",
                u.username
            ));
        }
        if password_hash::PasswordHash::new(&u.password).is_err() {
            return Err(format!(
                "user {:?}: password is not a PHC string (make one with `porchlight hash-password`)",
                u.username
            ));
        }
        if users.insert(u.username.clone(), u.password).is_some() {
            return Err(format!("user {:?} is listed twice", u.username));
        }
    }
    let mut rules = Vec::with_capacity(file.acl.rules.len());
    for (i, r) in file.acl.rules.into_iter().enumerate() {
        let n = i + 1;
        let mut topics = r.topics;
        topics.extend(r.topic);
        if topics.is_empty() {
            return Err(format!("ACL rule {n} has no topic or topics"));
        }
        if let Some(bad) = topics.iter().find(|t| !valid_pattern(t)) {
            return Err(format!("ACL rule {n}: {bad:?} is not a valid topic filter"));
        }
        rules.push(Rule {
            permission: r.permission,
            action: r.action,
            topics,
            user: r.user,
            client: r.client,
            address: r.address,
        });
    }
    let default = file.acl.default.unwrap_or(if rules.is_empty() {
        Permission::Allow
    } else {
        Permission::Deny
    });
    let jwt = match file.jwt {
        Some(c) => Some(JwtVerifier::new(c, dir).map_err(|e| format!("[jwt]: {e}"))?),
        None => None,
    };
    Ok(Realm {
        users: super::PasswordUsers(users),
        jwt,
        rules,
        default,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$8v4pVbG9Gg3h0b3n2hTu8U3x6a7t5T3qW4cXb2r1sYk";

    #[test]
    fn a_full_file_parses() {
        let text = format!(
            r#"
[[users]]
username = "t17"
password = "{PHC}"

[acl]
default = "deny"

[[acl.rules]]
permission = "allow"
action = "all"
topic = "devices/%u/#"

[[acl.rules]]
permission = "deny"
action = "subscribe"
topics = ["secret/#", "admin/+"]
user = "t17"
address = "10.0.0.0/8"
"#
        );
        let realm = parse(&text, Path::new(".")).expect("parses");
        assert_eq!(realm.users.0.len(), 1);
        assert_eq!(realm.rules.len(), 2);
        assert_eq!(realm.rules[1].topics.len(), 2);
        assert_eq!(realm.default, Permission::Deny);
    }

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../../../docs/auth-file.example.toml");
        let realm = parse(text, Path::new(".")).expect("docs/auth-file.example.toml");
        assert_eq!(realm.users.0.len(), 2);
        assert!(realm.jwt.is_some());
        assert_eq!(realm.rules.len(), 4);
        assert!(crate::auth::password::verify(
            &realm.users.0["ops"],
            b"change-me"
        ));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, needle) in [
            ("[[users]]\nusername = \"a\"\npassword = \"plain\"\n", "PHC"),
            (
                "[[users]]\nusername = \"\"\npassword = \"x\"\n",
                "empty username",
            ),
            ("bogus = 1\n", "unknown field"),
            (
                "[[acl.rules]]\npermission = \"allow\"\naction = \"publish\"\n",
                "no topic",
            ),
            (
                "[[acl.rules]]\npermission = \"allow\"\naction = \"publish\"\ntopic = \"a/#/b\"\n",
                "not a valid topic filter",
            ),
            (
                "[[acl.rules]]\npermission = \"maybe\"\naction = \"publish\"\ntopic = \"a\"\n",
                "unknown variant",
            ),
        ] {
            let e = parse(text, Path::new(".")).expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
        let twice = format!(
            "[[users]]\nusername = \"a\"\npassword = \"{PHC}\"\n[[users]]\nusername = \"a\"\npassword = \"{PHC}\"\n"
        );
        assert!(parse(&twice, Path::new("."))
            .expect_err("dup")
            .contains("twice"));
        let open = parse("", Path::new(".")).expect("empty file");
        assert_eq!(open.default, Permission::Allow);
    }
}
