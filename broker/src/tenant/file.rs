//! The `--tenants` file: tenants with their match rules, limits, users and
//! ACLs, in TOML.
//!
//! [`parse`] reads and checks the whole file into a [`Directory`]
//! (`tenant/mod.rs`); `auth/mod.rs` serves connections from it and swaps
//! in a new one when the file changes. Every mistake is refused with a
//! sentence naming the tenant and the key (the caller adds the path).
//! Each `[[tenant]]` carries the same `users`/`jwt`/`acl` tables as the
//! single-realm `--auth-file` (`auth/file.rs`). `docs/tenants.md` is the
//! documented example, and the test suite parses it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::quota::Limits;
use super::{CertField, Directory, Method, Pattern, TenantDef};
use crate::auth::file::{AclSection, UserEntry};
use crate::auth::jwt::JwtConfig;
use crate::ids::TenantId;
use crate::net::ListenerKind;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenancy: Tenancy,
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    tenant: Vec<TenantEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tenancy {
    /// Methods in the order they are tried; the first that names a tenant
    /// decides.
    resolve: Option<Vec<Method>>,
    /// `{tenant}.mqtt.example.com`: SNI names of this shape select the
    /// tenant the `{tenant}` part names.
    sni_pattern: Option<String>,
    certificate_field: Option<CertField>,
    /// `{tenant}` by default; e.g. `urn:tenant:{tenant}` for a SAN URI.
    certificate_pattern: Option<String>,
    /// Between the name and the tenant in `name@tenant` usernames.
    username_separator: Option<char>,
    /// The tenant of connections no other method placed, per listener.
    #[serde(default)]
    listeners: Listeners,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Listeners {
    tcp: Option<String>,
    tls: Option<String>,
    ws: Option<String>,
    wss: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    #[serde(default)]
    limits: Limits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantEntry {
    id: String,
    #[serde(default)]
    sni: Vec<String>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    users: Vec<UserEntry>,
    jwt: Option<JwtConfig>,
    #[serde(default)]
    acl: AclSection,
    /// Gateway grants for principals that are not `[[tenant.users]]`
    /// (certificate or JWT identities).
    #[serde(default)]
    grants: Vec<GrantEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantEntry {
    username: String,
    #[serde(default)]
    tenants: Vec<String>,
    /// May read the node-wide `$SYS` (`$tenant/$node/$SYS/#`).
    #[serde(default)]
    operator: bool,
}

/// Whether `id` may name a tenant: 1–64 of `A-Z a-z 0-9 - _ .`. It shows
/// in logs, metric labels, `%t` and the `$tenant/<id>/` prefix, so it may
/// hold no topic or label syntax.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Reads and checks the tenants file.
pub fn load(path: &Path) -> Result<Directory, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    parse(&text, path.parent().unwrap_or(Path::new(".")))
}

/// Parses the file's text; relative paths inside it (JWT keys) are
/// relative to `dir`.
pub fn parse(text: &str, dir: &Path) -> Result<Directory, String> {
    let file: TenantsFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let defaults = file.defaults.limits;
    defaults
        .check()
        .map_err(|e| format!("[defaults.limits]: {e}"))?;
    let mut tenants = HashMap::with_capacity(file.tenant.len());
    let mut sni = HashMap::new();
    for t in file.tenant {
        if !valid_id(&t.id) {
            return Err(format!(
                "tenant id {:?} must be 1-64 letters, digits, '-', '_' or '.'",
                t.id
            ));
        }
        let id = TenantId::new(t.id.as_str());
        let ctx = |e: String| format!("tenant {:?}: {e}", t.id);
        t.limits.check().map_err(ctx)?;
        let mut users = t.users;
        let mut grants: HashMap<String, Vec<TenantId>> = HashMap::new();
        let given = users
            .iter_mut()
            .map(|u| {
                (
                    u.username.clone(),
                    std::mem::take(&mut u.tenants),
                    u.operator,
                )
            })
            .chain(
                t.grants
                    .into_iter()
                    .map(|g| (g.username, g.tenants, g.operator)),
            );
        for (username, ids, operator) in given {
            if ids.is_empty() && !operator {
                continue;
            }
            let entry = grants.entry(username).or_default();
            entry.extend(ids.iter().map(|i| TenantId::new(i.as_str())));
            // An operator addresses the node's `$SYS` as a gateway would.
            if operator {
                entry.push(TenantId::node());
            }
            entry.sort();
            entry.dedup();
        }
        let realm = crate::auth::file::build(
            crate::auth::file::RealmTables {
                users,
                jwt: t.jwt,
                acl: t.acl,
            },
            dir,
        )
        .map_err(ctx)?;
        for name in &t.sni {
            let name = name.to_ascii_lowercase();
            if let Some(other) = sni.insert(name.clone(), id.clone()) {
                return Err(ctx(format!("SNI name {name:?} is also tenant {other}'s")));
            }
        }
        let def = TenantDef {
            id: id.clone(),
            limits: Arc::new(t.limits.or(&defaults)),
            realm: Arc::new(realm),
            grants,
        };
        if tenants.insert(id, Arc::new(def)).is_some() {
            return Err(format!("tenant {:?} is listed twice", t.id));
        }
    }
    // Grants name tenants defined anywhere in the file.
    for def in tenants.values() {
        for (user, ids) in &def.grants {
            if ids.contains(&def.id) {
                return Err(format!(
                    "tenant {:?}: user {user:?} is granted its own tenant (it addresses that one without a prefix)",
                    def.id.as_str()
                ));
            }
            if let Some(bad) = ids
                .iter()
                .find(|i| !i.is_node() && !tenants.contains_key(*i))
            {
                return Err(format!(
                    "tenant {:?}: user {user:?} is granted tenant {:?}, which is not defined",
                    def.id.as_str(),
                    bad.as_str()
                ));
            }
        }
    }
    let tenancy = file.tenancy;
    let order = tenancy.resolve.unwrap_or_else(|| {
        vec![
            Method::Sni,
            Method::Certificate,
            Method::Username,
            Method::Listener,
        ]
    });
    if order.is_empty() {
        return Err("[tenancy] resolve names no method".into());
    }
    let sni_pattern = tenancy
        .sni_pattern
        .map(|p| {
            Pattern::parse(&p.to_ascii_lowercase())
                .map_err(|e| format!("[tenancy] sni_pattern: {e}"))
        })
        .transpose()?;
    let certificate_pattern =
        Pattern::parse(tenancy.certificate_pattern.as_deref().unwrap_or("{tenant}"))
            .map_err(|e| format!("[tenancy] certificate_pattern: {e}"))?;
    let mut listeners = HashMap::new();
    let l = tenancy.listeners;
    for (kind, name) in [
        (ListenerKind::Tcp, l.tcp),
        (ListenerKind::Tls, l.tls),
        (ListenerKind::Ws, l.ws),
        (ListenerKind::Wss, l.wss),
    ] {
        if let Some(name) = name {
            let id = TenantId::new(name.as_str());
            if !tenants.contains_key(&id) {
                return Err(format!(
                    "[tenancy.listeners] names tenant {name:?}, which is not defined"
                ));
            }
            listeners.insert(kind, id);
        }
    }
    let separator = tenancy.username_separator.unwrap_or('@');
    Ok(Directory {
        tenants,
        sni,
        order,
        sni_pattern,
        certificate_field: tenancy.certificate_field.unwrap_or(CertField::O),
        certificate_pattern,
        separator,
        listeners,
        configured: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$8v4pVbG9Gg3h0b3n2hTu8U3x6a7t5T3qW4cXb2r1sYk";

    #[test]
    fn the_shape_from_the_issue_parses_as_written() {
        let text = format!(
            r#"
[[tenant]]
id = "acme"
sni = ["acme.mqtt.example.com"]        # optional: SNI names that select this tenant
[tenant.limits]
max_connections = 1000                  # every quota above has a key here
[[tenant.users]]
username = "thermostat-7"               # connects as "thermostat-7@acme" unless SNI/cert already chose the tenant
password_hash = "{PHC}"         # from `porchlight hash-password`
"#
        );
        let d = parse(&text, Path::new(".")).expect("parses");
        let acme = d.tenant(&TenantId::new("acme")).expect("acme");
        assert_eq!(acme.limits.max_connections, Some(1000));
        assert_eq!(acme.realm.users.0.len(), 1);
        assert_eq!(d.sni.get("acme.mqtt.example.com"), Some(&acme.id));
    }

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("../../../docs/tenants.md");
        let toml = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("docs/tenants.md has a toml block");
        let d = parse(toml, Path::new(".")).expect("docs/tenants.md example");
        assert!(d.tenants.len() >= 2);
    }

    #[test]
    fn mistakes_are_named() {
        for (text, needle) in [
            ("[[tenant]]\nid = \"a/b\"\n", "must be 1-64"),
            ("[[tenant]]\nid = \"a\"\n[[tenant]]\nid = \"a\"\n", "twice"),
            (
                "[[tenant]]\nid = \"a\"\nsni = [\"x\"]\n[[tenant]]\nid = \"b\"\nsni = [\"X\"]\n",
                "also tenant a's",
            ),
            ("[tenancy.listeners]\ntcp = \"nobody\"\n", "not defined"),
            ("[tenancy]\nsni_pattern = \"mqtt.example.com\"\n", "{tenant}"),
            ("[tenancy]\nresolve = [\"dns\"]\n", "unknown variant"),
            ("[[tenant]]\nid = \"a\"\n[tenant.limits]\nmax_qos = 3\n", "max_qos"),
            ("[[tenant]]\nid = \"a\"\n[tenant.limits]\nbogus = 3\n", "unknown field"),
            (
                "[[tenant]]\nid = \"a\"\n[[tenant.users]]\nusername = \"u\"\npassword_hash = \"x\"\n",
                "tenant \"a\": user \"u\": password is not a PHC string",
            ),
            (
                "[[tenant]]\nid = \"a\"\n[[tenant.grants]]\nusername = \"gw\"\ntenants = [\"zz\"]\n",
                "tenant \"a\": user \"gw\" is granted tenant \"zz\", which is not defined",
            ),
            (
                "[[tenant]]\nid = \"a\"\n[[tenant.grants]]\nusername = \"gw\"\ntenants = [\"a\"]\n",
                "granted its own tenant",
            ),
        ] {
            let e = parse(text, Path::new(".")).expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn grants_come_from_users_and_grant_tables() {
        let text = format!(
            "[[tenant]]\nid = \"a\"\n[[tenant]]\nid = \"b\"\n[[tenant]]\nid = \"gw\"\n\
             [[tenant.users]]\nusername = \"hub\"\npassword_hash = \"{PHC}\"\ntenants = [\"a\"]\n\
             [[tenant.grants]]\nusername = \"hub\"\ntenants = [\"b\", \"a\"]\n\
             [[tenant.grants]]\nusername = \"cert-gw\"\ntenants = [\"b\"]\n"
        );
        let d = parse(&text, Path::new(".")).expect("parses");
        let gw = d.tenant(&TenantId::new("gw")).expect("gw");
        let ids = |u: &str| -> Vec<&str> { gw.grants[u].iter().map(|t| t.as_str()).collect() };
        assert_eq!(ids("hub"), ["a", "b"]);
        assert_eq!(ids("cert-gw"), ["b"]);
        assert!(d.tenant(&TenantId::new("a")).expect("a").grants.is_empty());
    }

    #[test]
    fn tenant_limits_fall_back_to_the_defaults_key_by_key() {
        let d = parse(
            "[defaults.limits]\nmax_connections = 5\nmax_qos = 1\n[[tenant]]\nid = \"a\"\n[tenant.limits]\nmax_qos = 2\n",
            Path::new("."),
        )
        .expect("parses");
        let a = d.tenant(&TenantId::new("a")).expect("a");
        assert_eq!(a.limits.max_connections, Some(5));
        assert_eq!(a.limits.max_qos, Some(2));
    }
}
