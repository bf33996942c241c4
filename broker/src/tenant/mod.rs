//! Tenants: which tenant a connection belongs to, and each tenant's
//! definition (realm, limits) and live usage.
//!
//! A [`Directory`] is the configured set of tenants: from `--tenants`
//! (`file.rs`), or, without it, the single `default` tenant whose realm is
//! the `--auth-file`. `auth/mod.rs` holds the directory in force and swaps
//! in a new one when its file changes. At CONNECT, `connection/connect.rs` asks
//! [`Directory::resolve`] with what the connection showed ([`Hello`]: the
//! listener, the TLS SNI name, the client certificate, the username); the
//! tenant is then fixed for the connection's life and is the first part
//! of its [`crate::ids::SessionKey`], so sessions, subscriptions, retained
//! messages and shared groups (`state/mod.rs`, `state/trie.rs`, `state/retained.rs`) are
//! separate per tenant by construction.
//!
//! [`Tenants`] holds each tenant's [`quota::Usage`] on this node (created
//! on first use, never under a global lock); `connection/connect.rs` and `connection/inbound.rs`
//! enforce [`quota::Limits`] against it, and `metrics.rs` renders it with a
//! `tenant` label.

pub mod file;
pub mod quota;

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use crate::auth::file::Realm;
use crate::codec::reason;
use crate::ids::TenantId;
use crate::net::ListenerKind;
use quota::{Limits, Usage};

/// A way to find a connection's tenant (`[tenancy] resolve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The TLS SNI host name: a tenant's `sni` list, then `sni_pattern`.
    Sni,
    /// A field of the verified client certificate (`certificate_field`).
    Certificate,
    /// The username's suffix: `name@tenant`.
    Username,
    /// The listener's default tenant (`[tenancy.listeners]`).
    Listener,
}

/// The client-certificate field that names the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertField {
    /// Subject Organization.
    O,
    /// Subject Organizational Unit.
    Ou,
    /// A Subject Alternative Name URI.
    SanUri,
}

/// A string with one `{tenant}` placeholder, e.g. `{tenant}.mqtt.example.com`.
#[derive(Debug, Clone)]
pub struct Pattern {
    prefix: String,
    suffix: String,
}

impl Pattern {
    pub fn parse(p: &str) -> Result<Pattern, String> {
        match p.split_once("{tenant}") {
            Some((prefix, suffix)) if !suffix.contains("{tenant}") => Ok(Pattern {
                prefix: prefix.to_owned(),
                suffix: suffix.to_owned(),
            }),
            _ => Err(format!("{p:?} must hold {{tenant}} exactly once")),
        }
    }

    /// The `{tenant}` part of `s`, if `s` has this shape.
    pub fn capture<'a>(&self, s: &'a str) -> Option<&'a str> {
        let t = s.strip_prefix(&self.prefix)?.strip_suffix(&self.suffix)?;
        file::valid_id(t).then_some(t)
    }
}

/// One tenant's definition.
#[derive(Debug)]
pub struct TenantDef {
    pub id: TenantId,
    /// Shared: every connection of the tenant holds it (an `Arc`, not a
    /// copy, keeps idle connections small).
    pub limits: Arc<Limits>,
    /// Its users, JWT settings and ACL rules.
    pub realm: Arc<Realm>,
    /// Gateway grants: a principal of this tenant (by username) may
    /// address these tenants through `$tenant/<id>/`.
    pub grants: HashMap<String, Vec<TenantId>>,
}

/// The configured tenants and how connections find theirs.
#[derive(Debug)]
pub struct Directory {
    tenants: HashMap<TenantId, Arc<TenantDef>>,
    /// Exact SNI names (lowercase) to tenants.
    sni: HashMap<String, TenantId>,
    order: Vec<Method>,
    sni_pattern: Option<Pattern>,
    certificate_field: CertField,
    certificate_pattern: Pattern,
    separator: char,
    listeners: HashMap<ListenerKind, TenantId>,
    /// From `--tenants`: usernames are split and unknown tenants refused.
    /// Without it every connection is the `default` tenant's.
    configured: bool,
}

/// What a connection showed that can name its tenant.
#[derive(Debug, Clone, Copy)]
pub struct Hello<'a> {
    pub listener: ListenerKind,
    pub sni: Option<&'a str>,
    pub cert: Option<&'a CertificateDer<'static>>,
    pub username: Option<&'a str>,
}

/// A connection's tenant, and its username within the tenant.
#[derive(Debug)]
pub struct Resolved {
    pub tenant: Arc<TenantDef>,
    /// The username without its `@tenant` suffix.
    pub username: Option<String>,
}

/// Why no tenant: the CONNACK reason and a log phrase.
#[derive(Debug, PartialEq, Eq)]
pub struct NoTenant {
    pub code: u8,
    pub why: &'static str,
}

impl Directory {
    /// The directory without `--tenants`: one `default` tenant, no limits.
    pub fn single(realm: Realm) -> Directory {
        let id = TenantId::default_tenant();
        let def = TenantDef {
            id: id.clone(),
            limits: Arc::default(),
            realm: Arc::new(realm),
            grants: HashMap::new(),
        };
        Directory {
            tenants: HashMap::from([(id, Arc::new(def))]),
            sni: HashMap::new(),
            order: vec![Method::Listener],
            sni_pattern: None,
            certificate_field: CertField::O,
            certificate_pattern: Pattern {
                prefix: String::new(),
                suffix: String::new(),
            },
            separator: '@',
            listeners: HashMap::new(),
            configured: false,
        }
    }

    pub fn tenant(&self, id: &TenantId) -> Option<&Arc<TenantDef>> {
        self.tenants.get(id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &TenantId> {
        self.tenants.keys()
    }

    /// Whether some principal of tenant `home` is granted `target` (what
    /// a session whose principal is unknown, offline or restored, may
    /// keep of `target`).
    pub fn grants_any(&self, home: &TenantId, target: &str) -> bool {
        self.tenants.get(home).is_some_and(|def| {
            def.grants
                .values()
                .any(|ids| ids.iter().any(|t| t.as_str() == target))
        })
    }

    /// The tenants whose connected sessions must look at `new` at once,
    /// not at their next packet: those `new` removes (their connections
    /// close) and those whose gateway grants changed (their subscriptions
    /// and queued messages in a withdrawn tenant go; a file granting a
    /// tenant it does not define does not load). A reload that only adds
    /// users, tenants or rules wakes no one.
    pub fn affected_by(&self, new: &Directory) -> std::collections::HashSet<TenantId> {
        self.tenants
            .iter()
            .filter(|(id, old)| {
                new.tenants
                    .get(*id)
                    .is_none_or(|def| def.grants != old.grants)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether tenants come from `--tenants`.
    pub fn configured(&self) -> bool {
        self.configured
    }

    /// Finds the connection's tenant: the first method in `[tenancy]
    /// resolve` that names one decides. A name that is not a configured
    /// tenant refuses the connection, as does finding none: 0x86 (v3: 4)
    /// when the username named it, 0x85 (v3: 2) otherwise. The username
    /// loses its `@tenant` suffix when that suffix names the tenant found.
    pub fn resolve(&self, h: &Hello<'_>) -> Result<Resolved, NoTenant> {
        if !self.configured {
            let tenant = self
                .tenant(&TenantId::default_tenant())
                .cloned()
                .ok_or(NoTenant {
                    code: reason::SERVER_UNAVAILABLE,
                    why: "no tenant configured",
                })?;
            return Ok(Resolved {
                tenant,
                username: h.username.map(str::to_owned),
            });
        }
        let mut found: Option<(String, Method)> = None;
        for m in &self.order {
            let name = match m {
                Method::Sni => h.sni.and_then(|s| self.by_sni(s)),
                Method::Certificate => h.cert.and_then(|c| self.by_certificate(c)),
                Method::Username => h
                    .username
                    .and_then(|u| u.rsplit_once(self.separator))
                    .map(|(_, t)| t.to_owned()),
                Method::Listener => self.listeners.get(&h.listener).map(|t| t.to_string()),
            };
            if let Some(name) = name {
                found = Some((name, *m));
                break;
            }
        }
        let Some((name, method)) = found else {
            return Err(NoTenant {
                code: reason::CLIENT_IDENTIFIER_NOT_VALID,
                why: "no tenant for this connection",
            });
        };
        let Some(tenant) = self.tenants.get(&TenantId::new(name.as_str())).cloned() else {
            return Err(if method == Method::Username {
                NoTenant {
                    code: reason::BAD_USER_NAME_OR_PASSWORD,
                    why: "bad user name or password",
                }
            } else {
                NoTenant {
                    code: reason::CLIENT_IDENTIFIER_NOT_VALID,
                    why: "unknown tenant",
                }
            });
        };
        let username = h.username.map(|u| {
            match u.rsplit_once(self.separator) {
                Some((name, t)) if t == tenant.id.as_str() => name,
                _ => u,
            }
            .to_owned()
        });
        Ok(Resolved { tenant, username })
    }

    fn by_sni(&self, host: &str) -> Option<String> {
        let host = host.to_ascii_lowercase();
        if let Some(t) = self.sni.get(&host) {
            return Some(t.to_string());
        }
        let p = self.sni_pattern.as_ref()?;
        p.capture(&host).map(str::to_owned)
    }

    fn by_certificate(&self, cert: &CertificateDer<'_>) -> Option<String> {
        use x509_parser::extensions::GeneralName;
        let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let p = &self.certificate_pattern;
        match self.certificate_field {
            CertField::O => x509.subject().iter_organization().find_map(|a| {
                a.as_str()
                    .ok()
                    .and_then(|v| p.capture(v))
                    .map(str::to_owned)
            }),
            CertField::Ou => x509.subject().iter_organizational_unit().find_map(|a| {
                a.as_str()
                    .ok()
                    .and_then(|v| p.capture(v))
                    .map(str::to_owned)
            }),
            CertField::SanUri => crate::net::tls::subject_alt_names(&x509)
                .iter()
                .find_map(|n| match n {
                    GeneralName::URI(u) => p.capture(u).map(str::to_owned),
                    _ => None,
                }),
        }
    }
}

/// Every tenant's live usage on this node.
#[derive(Debug, Default)]
pub struct Tenants {
    usage: DashMap<TenantId, Arc<Usage>, foldhash::fast::RandomState>,
}

impl Tenants {
    /// The tenant's usage, created on first use.
    pub fn usage(&self, id: &TenantId) -> Arc<Usage> {
        if let Some(u) = self.usage.get(id) {
            return u.clone();
        }
        self.usage.entry(id.clone()).or_default().clone()
    }

    /// Puts the directory's state-enforced limits (retained, persistent
    /// sessions, queued bytes) into each tenant's usage; tenants no
    /// longer in it lose theirs.
    pub fn apply(&self, directory: &Directory) {
        for e in self.usage.iter() {
            if !directory.tenants.contains_key(e.key()) {
                e.value().state_limits.set(&Limits::default());
            }
        }
        for (id, def) in &directory.tenants {
            self.usage(id).state_limits.set(&def.limits);
        }
    }

    /// A snapshot for the metrics endpoint, sorted by tenant.
    pub fn snapshot(&self) -> Vec<(TenantId, Arc<Usage>)> {
        let mut v: Vec<_> = self
            .usage
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn dir(text: &str) -> Directory {
        file::parse(text, Path::new(".")).expect("parses")
    }

    fn hello<'a>(sni: Option<&'a str>, username: Option<&'a str>) -> Hello<'a> {
        Hello {
            listener: ListenerKind::Tcp,
            sni,
            cert: None,
            username,
        }
    }

    #[test]
    fn a_reload_affects_removed_tenants_and_changed_grants_only() {
        let grant = |tenants: &str| {
            format!("[[tenant]]\nid = \"gw\"\n[[tenant.grants]]\nusername = \"hub\"\ntenants = [{tenants}]\n")
        };
        let acme = "[[tenant]]\nid = \"acme\"\n";
        let globex = "[[tenant]]\nid = \"globex\"\n";
        let old = dir(&format!("{}{acme}{globex}", grant("\"acme\"")));
        let ids = |set: std::collections::HashSet<TenantId>| {
            let mut v: Vec<String> = set.iter().map(|t| t.as_str().to_owned()).collect();
            v.sort();
            v
        };
        // Unchanged, or only a user added: nobody.
        assert!(old.affected_by(&old).is_empty());
        let more = dir(&format!(
            "{}{acme}[[tenant.users]]\nusername = \"u\"\npassword = \"{}\"\n{globex}",
            grant("\"acme\""),
            crate::auth::password::hash(b"pw").expect("hash")
        ));
        assert!(old.affected_by(&more).is_empty());
        // globex removed: globex.
        let fewer = dir(&format!("{}{acme}", grant("\"acme\"")));
        assert_eq!(ids(old.affected_by(&fewer)), ["globex"]);
        // The gateway's grants changed: gw.
        let regrant = dir(&format!("{}{acme}{globex}", grant("\"globex\"")));
        assert_eq!(ids(old.affected_by(&regrant)), ["gw"]);
        // acme removed with gw's grant of it: both.
        let both = dir(&format!("{}{globex}", grant("")));
        assert_eq!(ids(old.affected_by(&both)), ["acme", "gw"]);
    }

    const TWO: &str = "[tenancy]\nsni_pattern = \"{tenant}.mqtt.example.com\"\n[tenancy.listeners]\ntcp = \"acme\"\n[[tenant]]\nid = \"acme\"\nsni = [\"mqtt.acme.com\"]\n[[tenant]]\nid = \"globex\"\n";

    fn resolved(d: &Directory, h: Hello<'_>) -> (String, Option<String>) {
        let r = d.resolve(&h).expect("resolves");
        (r.tenant.id.to_string(), r.username)
    }

    #[test]
    fn the_first_method_that_names_a_tenant_decides() {
        let d = dir(TWO);
        let t = |s: &str, u: Option<&str>| (s.to_owned(), u.map(str::to_owned));
        // SNI by exact name, then by pattern.
        assert_eq!(
            resolved(&d, hello(Some("MQTT.acme.com"), None)),
            t("acme", None)
        );
        assert_eq!(
            resolved(
                &d,
                hello(Some("globex.mqtt.example.com"), Some("dev@globex"))
            ),
            t("globex", Some("dev"))
        );
        // SNI chose the tenant: a suffix naming another stays part of the name.
        assert_eq!(
            resolved(&d, hello(Some("globex.mqtt.example.com"), Some("a@acme"))),
            t("globex", Some("a@acme"))
        );
        // Username suffix, then the listener's default.
        assert_eq!(
            resolved(&d, hello(None, Some("dev-1@globex"))),
            t("globex", Some("dev-1"))
        );
        assert_eq!(
            resolved(&d, hello(None, Some("dev-1"))),
            t("acme", Some("dev-1"))
        );
        assert_eq!(resolved(&d, hello(None, None)), t("acme", None));
    }

    #[test]
    fn unknown_or_missing_tenants_are_refused_with_the_documented_codes() {
        let d = dir(TWO);
        let e = d
            .resolve(&hello(None, Some("x@initech")))
            .expect_err("unknown");
        assert_eq!(e.code, reason::BAD_USER_NAME_OR_PASSWORD);
        let e = d
            .resolve(&hello(Some("initech.mqtt.example.com"), None))
            .expect_err("unknown");
        assert_eq!(e.code, reason::CLIENT_IDENTIFIER_NOT_VALID);
        let none = dir("[[tenant]]\nid = \"acme\"\n");
        let e = none.resolve(&hello(None, Some("plain"))).expect_err("none");
        assert_eq!(e.code, reason::CLIENT_IDENTIFIER_NOT_VALID);
    }

    #[test]
    fn without_tenants_everyone_is_the_default_tenant_and_usernames_are_kept() {
        let d = Directory::single(Realm::open());
        assert_eq!(
            resolved(&d, hello(Some("x.example"), Some("a@b"))),
            ("default".to_owned(), Some("a@b".to_owned()))
        );
    }

    #[test]
    fn certificate_fields_name_the_tenant() {
        let mut params = rcgen::CertificateParams::new(vec!["dev".to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "globex");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "acme");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "urn:tenant:globex".try_into().expect("uri"),
        ));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let der = CertificateDer::from(cert.der().to_vec());
        for (field, pattern, want) in [
            ("o", "{tenant}", "globex"),
            ("ou", "{tenant}", "acme"),
            ("san-uri", "urn:tenant:{tenant}", "globex"),
        ] {
            let d = dir(&format!(
                "[tenancy]\ncertificate_field = \"{field}\"\ncertificate_pattern = \"{pattern}\"\n[[tenant]]\nid = \"acme\"\n[[tenant]]\nid = \"globex\"\n"
            ));
            let h = Hello {
                listener: ListenerKind::Tls,
                sni: None,
                cert: Some(&der),
                username: None,
            };
            assert_eq!(resolved(&d, h).0, want, "{field}");
        }
    }
}
