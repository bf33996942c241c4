//! Topic names and topic filters: validation against the spec and the
//! configured limits, shared-subscription parsing, and single-filter
//! matching.
//!
//! Callers: `connection/inbound.rs` validates every PUBLISH topic and SUBSCRIBE filter
//! here; `state/trie.rs` and `state/retained.rs` store the split levels.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use crate::codec::reason;

/// Limits that apply to every topic and filter (`--max-topic-length`,
/// `--max-topic-levels`).
#[derive(Debug, Clone, Copy)]
pub struct TopicLimits {
    pub max_length: usize,
    pub max_levels: usize,
}

impl TopicLimits {
    /// What MQTT itself allows: for reading back what was accepted once.
    pub const WIDEST: TopicLimits = TopicLimits {
        max_length: u16::MAX as usize,
        max_levels: usize::MAX,
    };
}

/// Why a topic or filter was refused, as an MQTT 5 reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicError(pub u8);

/// A validated topic name: non-empty, no wildcards, within the limits.
/// Cheap to clone (shared), compared and hashed as its text.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    pub fn new(topic: &str, limits: TopicLimits) -> Result<TopicName, TopicError> {
        validate_name(topic, limits)?;
        Ok(TopicName(Arc::from(topic)))
    }

    /// For topics validated earlier (a will, at CONNECT) or built by the
    /// broker itself (`$SYS/...`).
    pub fn trusted(topic: String) -> TopicName {
        TopicName(Arc::from(topic))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Topics clients may not publish to, directly or as a will.
    pub fn is_reserved(&self) -> bool {
        is_reserved(&self.0)
    }
}

impl Deref for TopicName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn validate_name(topic: &str, limits: TopicLimits) -> Result<(), TopicError> {
    if topic.is_empty() || topic.len() > limits.max_length {
        return Err(TopicError(reason::TOPIC_NAME_INVALID));
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError(reason::TOPIC_NAME_INVALID));
    }
    if topic.split('/').count() > limits.max_levels {
        return Err(TopicError(reason::TOPIC_NAME_INVALID));
    }
    Ok(())
}

/// Whether a topic is the broker's own statistics (`$SYS`): not counted
/// against a tenant's limits, and not written to disk (republished every
/// `--sys-interval`).
pub fn is_sys(topic: &str) -> bool {
    topic.starts_with("$SYS")
}

/// Topics clients may not publish to (directly or as a will): the broker's
/// own `$SYS` tree, the `$share` prefix, which names no topic, and the
/// gateway prefix `$tenant/` (a granted gateway's publish has it split off
/// by [`split_tenant`] before this check).
pub fn is_reserved(topic: &str) -> bool {
    is_sys(topic) || topic.starts_with("$share/") || topic.starts_with(TENANT_PREFIX)
}

/// The prefix through which a gateway addresses another tenant:
/// `$tenant/<id>/<topic or filter>`.
pub const TENANT_PREFIX: &str = "$tenant/";

/// Splits `$tenant/<id>/<rest>` into the tenant id and the rest. `None`
/// when `s` does not start with the prefix; `Err` when it does but is not
/// of that shape (no id, a wildcard in it, or nothing after it).
pub fn split_tenant(s: &str) -> Option<Result<(&str, &str), TopicError>> {
    let rest = s.strip_prefix(TENANT_PREFIX)?;
    Some(match rest.split_once('/') {
        Some((id, rest)) if !id.is_empty() && !id.contains(['+', '#']) && !rest.is_empty() => {
            Ok((id, rest))
        }
        _ => Err(TopicError(reason::TOPIC_NAME_INVALID)),
    })
}

/// A validated topic filter exactly as the client wrote it, with a
/// gateway's `$tenant/{id}/` prefix and a `$share/{group}/` prefix split
/// off (in that order: `$tenant/acme/$share/g/x`). Compared and hashed as
/// the text the client wrote, so `$share/a/x` and `x` are different
/// subscriptions, and so are `$tenant/acme/x` and `x`.
#[derive(Clone, Debug)]
pub struct TopicFilter {
    raw: Arc<str>,
    /// Byte range of the tenant id in `raw`, for `$tenant/{id}/`.
    tenant: Option<(usize, usize)>,
    /// Byte range of the group name in `raw`, for shared subscriptions.
    group: Option<(usize, usize)>,
    /// Where the matched filter starts in `raw`.
    filter_start: usize,
}

impl TopicFilter {
    pub fn parse(raw: &str, limits: TopicLimits) -> Result<TopicFilter, TopicError> {
        let invalid = TopicError(reason::TOPIC_FILTER_INVALID);
        if raw.is_empty() || raw.len() > limits.max_length {
            return Err(invalid);
        }
        let (start, tenant) = match split_tenant(raw) {
            Some(Ok((id, _))) => {
                let t = TENANT_PREFIX.len();
                (t + id.len() + 1, Some((t, t + id.len())))
            }
            Some(Err(_)) => return Err(invalid),
            None => (0, None),
        };
        let (filter_start, group) = match raw[start..].strip_prefix(SHARE_PREFIX) {
            Some(rest) => {
                let (group, filter) = rest.split_once('/').ok_or(invalid)?;
                if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
                    return Err(invalid);
                }
                let g = start + SHARE_PREFIX.len();
                (g + group.len() + 1, Some((g, g + group.len())))
            }
            None => (start, None),
        };
        let levels: Vec<&str> = raw[filter_start..].split('/').collect();
        if levels.len() > limits.max_levels {
            return Err(invalid);
        }
        for (i, level) in levels.iter().enumerate() {
            match *level {
                "#" if i + 1 == levels.len() => {}
                "+" => {}
                l if l.contains(['+', '#']) => return Err(invalid),
                _ => {}
            }
        }
        Ok(TopicFilter {
            raw: Arc::from(raw),
            tenant,
            group,
            filter_start,
        })
    }

    /// The tenant a gateway's `$tenant/{id}/` filter addresses.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.map(|(a, b)| &self.raw[a..b])
    }

    /// The filter as the client wrote it (with any `$share/` prefix).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The part matched against topic names.
    pub fn filter(&self) -> &str {
        &self.raw[self.filter_start..]
    }

    /// The share group, for `$share/{group}/{filter}`.
    pub fn group(&self) -> Option<&str> {
        self.group.map(|(a, b)| &self.raw[a..b])
    }
}

impl PartialEq for TopicFilter {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for TopicFilter {}

impl Hash for TopicFilter {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must agree with `str`'s hash for `Borrow<str>` lookups.
        self.raw.hash(state);
    }
}

impl Borrow<str> for TopicFilter {
    fn borrow(&self) -> &str {
        &self.raw
    }
}

/// Ordered as its text, like `str` (`Borrow<str>` lookups in ordered maps).
impl Ord for TopicFilter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.raw.cmp(&other.raw)
    }
}

impl PartialOrd for TopicFilter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// As its text; read back with the widest limits (what was accepted once
/// stays valid when `--max-topic-*` is lowered later).
impl serde::Serialize for TopicFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> serde::Deserialize<'de> for TopicFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        TopicFilter::parse(&raw, TopicLimits::WIDEST)
            .map_err(|_| serde::de::Error::custom("invalid topic filter"))
    }
}

impl serde::Serialize for TopicName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TopicName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        TopicName::new(&raw, TopicLimits::WIDEST)
            .map_err(|_| serde::de::Error::custom("invalid topic name"))
    }
}

const SHARE_PREFIX: &str = "$share/";

/// Whether `filter` (already validated, no `$share/` prefix) matches
/// `topic`. Topics starting with `$` are not matched by a filter whose
/// first level is a wildcard (MQTT 4.7.2).
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

#[cfg(test)]
mod tests {
    use super::*;

    const L: TopicLimits = TopicLimits {
        max_length: 64,
        max_levels: 4,
    };

    #[test]
    fn names() {
        assert!(TopicName::new("a/b", L).is_ok());
        assert!(TopicName::new("/", L).is_ok());
        for bad in ["", "a/+", "a/#", "a/b/c/d/e", &"x".repeat(65)] {
            assert!(TopicName::new(bad, L).is_err(), "{bad}");
        }
        assert!(TopicName::new("$SYS/x", L).expect("valid").is_reserved());
        assert!(is_reserved("$tenant/acme/x"));
        assert_eq!(split_tenant("$tenant/acme/a/b"), Some(Ok(("acme", "a/b"))));
        assert_eq!(split_tenant("a/b"), None);
        for bad in [
            "$tenant/acme",
            "$tenant//x",
            "$tenant/a#/x",
            "$tenant/acme/",
        ] {
            assert!(matches!(split_tenant(bad), Some(Err(_))), "{bad}");
        }
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "+/+/#", "/+", "$SYS/#"] {
            assert!(TopicFilter::parse(ok, L).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a#",
            "a/#/b",
            "a+/b",
            "$share/g",
            "$share//a",
            "$share/g+/a",
        ] {
            assert!(TopicFilter::parse(bad, L).is_err(), "{bad}");
        }
        let p = TopicFilter::parse("$share/grp/a/+", L).expect("shared");
        assert_eq!(p.group(), Some("grp"));
        assert_eq!(p.filter(), "a/+");
        assert_eq!(p.as_str(), "$share/grp/a/+");
        let plain = TopicFilter::parse("a/+", L).expect("plain");
        assert_eq!((plain.group(), plain.filter()), (None, "a/+"));
        assert_eq!(plain.tenant(), None);
        let gw = TopicFilter::parse("$tenant/acme/$share/g/a/#", L).expect("gateway");
        assert_eq!(
            (gw.tenant(), gw.group(), gw.filter()),
            (Some("acme"), Some("g"), "a/#")
        );
        let gw = TopicFilter::parse("$tenant/acme/#", L).expect("gateway");
        assert_eq!(
            (gw.tenant(), gw.group(), gw.filter()),
            (Some("acme"), None, "#")
        );
        for bad in ["$tenant/acme", "$tenant//x", "$tenant/+/x", "$tenant/acme/"] {
            assert!(TopicFilter::parse(bad, L).is_err(), "{bad}");
        }
        let mut set = std::collections::HashSet::new();
        set.insert(p);
        assert!(
            set.contains("$share/grp/a/+"),
            "Borrow<str> agrees with Hash"
        );
    }

    #[test]
    fn matching() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/+", "/x"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/b", "a"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
    }
}
