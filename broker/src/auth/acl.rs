//! Authorization: ACL rules and the per-connection decisions made from them.
//!
//! The auth file's rules (`file.rs`) and a JWT's claim rules (`jwt.rs`)
//! are [`Rule`]s. At CONNECT they are narrowed to the client
//! ([`ClientAcl::build`]): rules whose `user`/`client`/`address` selectors
//! do not fit are dropped and `%u`/`%c`/`%t` are substituted, so each PUBLISH
//! and SUBSCRIBE only walks the rules that can apply. Decisions are cached
//! per connection. `connection/inbound.rs` asks; `auth/mod.rs` rebuilds a connection's
//! ACL when the auth file is reloaded.
//!
//! Precedence: the client's claim rules (JWT), then the file's rules, each
//! in the order written; the first rule that matches decides; when none
//! does, the realm's default decides. A publish matches a rule whose
//! pattern matches the topic. A subscribe matches an `allow` rule when the
//! pattern covers every topic the filter can match, and a `deny` rule when
//! the two share any topic — so `#` is not granted past a deny.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;

/// What a rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Allow,
    Deny,
}

/// What a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Publish,
    Subscribe,
    /// Both publish and subscribe.
    All,
}

/// The two things a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Publish = 0,
    Subscribe = 1,
}

impl Access {
    pub fn label(self) -> &'static str {
        match self {
            Access::Publish => "publish",
            Access::Subscribe => "subscribe",
        }
    }
}

/// One ACL rule as written (in the auth file or a JWT claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub permission: Permission,
    pub action: Action,
    /// Topic patterns: MQTT filters that may use `%u` (username), `%t`
    /// (tenant) and `%c`
    /// (client id).
    pub topics: Vec<String>,
    /// Only for this username.
    pub user: Option<String>,
    /// Only for this client id.
    pub client: Option<String>,
    /// Only for clients connecting from this network (the PROXY-protocol
    /// address when the listener uses it).
    pub address: Option<ipnet::IpNet>,
}

/// Who is asking: what rules are narrowed by.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub username: Option<&'a str>,
    pub client: &'a str,
    /// `%t`: the tenant the connection belongs to.
    pub tenant: &'a str,
    pub address: IpAddr,
}

/// A rule narrowed to one client: selectors checked, `%u`/`%c`/`%t` replaced.
#[derive(Debug, Clone)]
struct ClientRule {
    permission: Permission,
    publish: bool,
    subscribe: bool,
    pattern: String,
}

/// Most cached decisions per connection; the cache is emptied when full.
const CACHE_ENTRIES: usize = 256;

/// One connection's ACL: its applicable rules and a decision cache.
#[derive(Debug)]
pub struct ClientAcl {
    rules: Vec<ClientRule>,
    default: Permission,
    /// Cached decisions by topic, one map per access kind, so a hit is a
    /// lookup by `&str` with no allocation (the publish path).
    cache: [HashMap<Box<str>, bool>; 2],
}

/// Characters that would let a username or client id change the shape of
/// a pattern: wildcards, the level separator, NUL, and a leading `$`.
fn unsafe_in_pattern(s: &str) -> bool {
    s.contains(['+', '#', '/', '\0']) || s.starts_with('$')
}

impl ClientAcl {
    /// Narrows `claims` then `rules` to `subject`. A `%u` rule for a client
    /// without a username, or whose username or client id holds `+`, `#`
    /// or `/`, cannot match safely: an allow rule is dropped, a deny rule
    /// denies everything it covers by action.
    pub fn build(
        claims: &[Rule],
        rules: &[Rule],
        default: Permission,
        subject: &Subject<'_>,
    ) -> ClientAcl {
        let mut out = Vec::new();
        for rule in claims.iter().chain(rules) {
            if rule
                .user
                .as_deref()
                .is_some_and(|u| Some(u) != subject.username)
                || rule.client.as_deref().is_some_and(|c| c != subject.client)
                || rule.address.is_some_and(|n| !n.contains(&subject.address))
            {
                continue;
            }
            let (publish, subscribe) = match rule.action {
                Action::Publish => (true, false),
                Action::Subscribe => (false, true),
                Action::All => (true, true),
            };
            for topic in &rule.topics {
                let pattern = match substitute(topic, subject) {
                    Some(p) => p,
                    None if rule.permission == Permission::Deny => "#".to_owned(),
                    None => continue,
                };
                out.push(ClientRule {
                    permission: rule.permission,
                    publish,
                    subscribe,
                    pattern,
                });
            }
        }
        ClientAcl {
            rules: out,
            default,
            cache: Default::default(),
        }
    }

    /// Whether `access` to `topic` (a topic name for publish, a filter
    /// without any `$share/group/` prefix for subscribe) is allowed.
    pub fn allows(&mut self, access: Access, topic: &str) -> bool {
        let i = access as usize;
        if let Some(&d) = self.cache[i].get(topic) {
            return d;
        }
        let decision = self.decide(access, topic);
        let cache = &mut self.cache[i];
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(topic.into(), decision);
        decision
    }

    fn decide(&self, access: Access, topic: &str) -> bool {
        for r in &self.rules {
            let applies = match access {
                Access::Publish => r.publish && crate::topic::matches(&r.pattern, topic),
                Access::Subscribe => {
                    r.subscribe
                        && match r.permission {
                            Permission::Allow => covers(&r.pattern, topic),
                            Permission::Deny => overlaps(&r.pattern, topic),
                        }
                }
            };
            if applies {
                return r.permission == Permission::Allow;
            }
        }
        self.default == Permission::Allow
    }
}

/// `pattern` with `%u`, `%c` and `%t` replaced; `None` when the needed value is
/// missing or unsafe.
fn substitute(pattern: &str, subject: &Subject<'_>) -> Option<String> {
    let safe = |s: &str| !s.is_empty() && !unsafe_in_pattern(s);
    // One pass, so a username containing "%c" is not substituted again.
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(r) = tail.strip_prefix("%u") {
            out.push_str(subject.username.filter(|u| safe(u))?);
            rest = r;
        } else if let Some(r) = tail.strip_prefix("%c") {
            out.push_str(Some(subject.client).filter(|c| safe(c))?);
            rest = r;
        } else if let Some(r) = tail.strip_prefix("%t") {
            out.push_str(Some(subject.tenant).filter(|t| safe(t))?);
            rest = r;
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Some(out)
}

/// MQTT 4.7.2: a filter starting with a wildcard matches no topic that
/// starts with `$`.
fn dollar_mismatch(a: &str, b: &str) -> bool {
    let wild = |s: &str| s.starts_with(['+', '#']);
    (a.starts_with('$') && wild(b)) || (b.starts_with('$') && wild(a))
}

/// Whether every topic `filter` matches is also matched by `pattern`.
pub fn covers(pattern: &str, filter: &str) -> bool {
    if dollar_mismatch(pattern, filter) {
        return false;
    }
    let mut p = pattern.split('/');
    let mut f = filter.split('/');
    loop {
        match (p.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(s)) if s != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && a != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic is matched by both `a` and `b`.
pub fn overlaps(a: &str, b: &str) -> bool {
    if dollar_mismatch(a, b) {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(s), Some(t)) if s == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(permission: Permission, action: Action, topic: &str) -> Rule {
        Rule {
            permission,
            action,
            topics: vec![topic.to_owned()],
            user: None,
            client: None,
            address: None,
        }
    }

    fn subject<'a>(user: Option<&'a str>, client: &'a str) -> Subject<'a> {
        Subject {
            username: user,
            client,
            tenant: "acme",
            address: IpAddr::from([127, 0, 0, 1]),
        }
    }

    #[test]
    fn covering_and_overlapping_filters() {
        assert!(covers("a/#", "a/b/+"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/+", "a/+"));
        assert!(covers("#", "#"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/+", "a/b/c"));
        assert!(!covers("a/b/#", "a/#"));
        assert!(overlaps("secret/#", "#"));
        assert!(overlaps("a/+/c", "a/b/+"));
        assert!(overlaps("a/#", "a"));
        assert!(!overlaps("a/b", "a/c"));
        assert!(!overlaps("a/b", "a/b/c"));
        // MQTT 4.7.2: `#` reaches no `$` topic.
        assert!(!covers("#", "$SYS/#"));
        assert!(covers("$SYS/#", "$SYS/broker/+"));
        assert!(!overlaps("$SYS/#", "#"));
        assert!(!overlaps("+/x", "$SYS/x"));
    }

    #[test]
    fn first_match_wins_and_subscribe_denies_overlap() {
        let rules = vec![
            rule(Permission::Deny, Action::All, "secret/#"),
            rule(Permission::Allow, Action::All, "#"),
        ];
        let mut acl = ClientAcl::build(&[], &rules, Permission::Deny, &subject(None, "c"));
        assert!(acl.allows(Access::Publish, "a/b"));
        assert!(!acl.allows(Access::Publish, "secret/x"));
        assert!(
            !acl.allows(Access::Subscribe, "#"),
            "would receive secret/x"
        );
        assert!(!acl.allows(Access::Subscribe, "+/x"));
        assert!(acl.allows(Access::Subscribe, "public/#"));
        // Cached answers are the same answers.
        assert!(!acl.allows(Access::Subscribe, "#"));
        assert!(acl.allows(Access::Subscribe, "public/#"));
    }

    #[test]
    fn placeholders_are_substituted_and_unsafe_names_refused() {
        let rules = vec![
            rule(Permission::Deny, Action::Publish, "devices/%u/locked"),
            rule(Permission::Allow, Action::All, "devices/%u/#"),
            rule(Permission::Allow, Action::Subscribe, "clients/%c/+"),
            rule(Permission::Allow, Action::Publish, "tenants/%t/%u"),
        ];
        let mut acl = ClientAcl::build(
            &[],
            &rules,
            Permission::Deny,
            &subject(Some("t17"), "hub-1"),
        );
        assert!(acl.allows(Access::Publish, "devices/t17/temp"));
        assert!(!acl.allows(Access::Publish, "devices/t17/locked"));
        assert!(!acl.allows(Access::Publish, "devices/t18/temp"));
        assert!(acl.allows(Access::Subscribe, "clients/hub-1/cmd"));
        assert!(!acl.allows(Access::Publish, "clients/hub-1/cmd"));
        assert!(acl.allows(Access::Publish, "tenants/acme/t17"));
        assert!(!acl.allows(Access::Publish, "tenants/other/t17"));
        for evil in ["+", "#", "a/b", "$SYS"] {
            let mut acl =
                ClientAcl::build(&[], &rules, Permission::Allow, &subject(Some(evil), "c"));
            assert!(
                !acl.allows(Access::Publish, "anything"),
                "{evil}: the %u deny rule must deny everything"
            );
        }
        // A username holding "%c" is not substituted twice.
        let mut tricky = ClientAcl::build(
            &[],
            &rules,
            Permission::Deny,
            &subject(Some("x%c"), "hub-1"),
        );
        assert!(tricky.allows(Access::Publish, "devices/x%c/t"));
        assert!(!tricky.allows(Access::Publish, "devices/xhub-1/t"));
        let mut anon = ClientAcl::build(&[], &rules, Permission::Deny, &subject(None, "c"));
        assert!(!anon.allows(Access::Subscribe, "devices/+/temp"));
    }

    #[test]
    fn selectors_narrow_rules_and_claims_come_first() {
        let mut only_ops = rule(Permission::Allow, Action::Subscribe, "#");
        only_ops.user = Some("ops".into());
        let mut lan = rule(Permission::Allow, Action::Publish, "lan/#");
        lan.address = Some("10.0.0.0/8".parse().expect("net"));
        let rules = vec![only_ops, lan, rule(Permission::Deny, Action::All, "#")];
        let mut ops = ClientAcl::build(&[], &rules, Permission::Deny, &subject(Some("ops"), "x"));
        assert!(ops.allows(Access::Subscribe, "#"));
        assert!(!ops.allows(Access::Publish, "lan/x"), "not from 10/8");
        let mut other =
            ClientAcl::build(&[], &rules, Permission::Allow, &subject(Some("dev"), "x"));
        assert!(!other.allows(Access::Subscribe, "a"));
        let claims = vec![rule(Permission::Allow, Action::Publish, "jwt/only")];
        let mut jwt = ClientAcl::build(&claims, &rules, Permission::Deny, &subject(None, "x"));
        assert!(jwt.allows(Access::Publish, "jwt/only"));
        assert!(!jwt.allows(Access::Publish, "jwt/other"));
    }
}
