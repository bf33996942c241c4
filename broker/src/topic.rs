//! Topic names and topic filters: validation against the spec and the
//! configured limits, shared-subscription parsing, and single-filter
//! matching.
//!
//! Callers: `inbound.rs` validates every PUBLISH topic and SUBSCRIBE filter
//! here; `trie.rs` and `retained.rs` store the split levels.

use crate::codec::reason;

/// Limits that apply to every topic and filter (`--max-topic-length`,
/// `--max-topic-levels`).
#[derive(Debug, Clone, Copy)]
pub struct TopicLimits {
    pub max_length: usize,
    pub max_levels: usize,
}

/// Why a topic or filter was refused, as an MQTT 5 reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicError(pub u8);

/// Validates a PUBLISH topic name: non-empty, no wildcards, within limits.
pub fn validate_name(topic: &str, limits: TopicLimits) -> Result<(), TopicError> {
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

/// Topics clients may not publish to (directly or as a will): the broker's
/// own `$SYS` tree and the `$share` prefix, which names no topic.
pub fn is_reserved(topic: &str) -> bool {
    topic.starts_with("$SYS") || topic.starts_with("$share/")
}

/// A parsed SUBSCRIBE filter: either a plain filter or a shared one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    /// The filter that is matched against topics (without `$share/g/`).
    pub filter: &'a str,
    /// The share group name, for `$share/{group}/{filter}`.
    pub group: Option<&'a str>,
}

/// Validates a topic filter and splits off a `$share/{group}/` prefix.
pub fn parse_filter(raw: &str, limits: TopicLimits) -> Result<ParsedFilter<'_>, TopicError> {
    let invalid = TopicError(reason::TOPIC_FILTER_INVALID);
    if raw.is_empty() || raw.len() > limits.max_length {
        return Err(invalid);
    }
    let (filter, group) = match raw.strip_prefix("$share/") {
        Some(rest) => {
            let (group, filter) = rest.split_once('/').ok_or(invalid)?;
            if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
                return Err(invalid);
            }
            (filter, Some(group))
        }
        None => (raw, None),
    };
    let levels: Vec<&str> = filter.split('/').collect();
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
    Ok(ParsedFilter { filter, group })
}

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
        assert!(validate_name("a/b", L).is_ok());
        assert!(validate_name("/", L).is_ok());
        for bad in ["", "a/+", "a/#", "a/b/c/d/e", &"x".repeat(65)] {
            assert!(validate_name(bad, L).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "+/+/#", "/+", "$SYS/#"] {
            assert!(parse_filter(ok, L).is_ok(), "{ok}");
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
            assert!(parse_filter(bad, L).is_err(), "{bad}");
        }
        let p = parse_filter("$share/grp/a/+", L).expect("shared");
        assert_eq!(p.group, Some("grp"));
        assert_eq!(p.filter, "a/+");
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
