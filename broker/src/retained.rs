//! Retained messages: the last retained message per topic, per tenant.
//!
//! A trie of topic levels under one `RwLock` per tenant. Writes come from
//! retained publishes (replace, or delete with an empty payload); reads
//! come from SUBSCRIBE, walking only the branches a filter selects. The
//! publish path touches this only for messages with the RETAIN flag.
//! Each tenant's retained count and bytes (its `Usage`) change only under
//! its lock, where `max_retained_messages`/`max_retained_bytes` are
//! checked (`$SYS` topics excepted).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use parking_lot::RwLock;

use std::sync::atomic::Ordering;

use crate::ids::TenantId;
use crate::message::Message;
use crate::tenant::quota::{release, QuotaKind, StateLimits, Usage};
use crate::tenant::Tenants;

#[derive(Debug, Default)]
struct Node {
    message: Option<Arc<Message>>,
    children: HashMap<Box<str>, Node>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.message.is_none() && self.children.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct RetainedStore {
    tenants: DashMap<TenantId, Arc<Tree>>,
    /// Each tenant's usage: its retained count and bytes, and the limits
    /// on them. `None` in unit tests.
    usage: Option<Arc<Tenants>>,
}

/// One tenant's retained messages. The tenant's retained counters in its
/// `Usage` change only under `root`'s write lock, so checking a limit and
/// storing are one step: the limits are exact.
#[derive(Debug, Default)]
struct Tree {
    root: RwLock<Node>,
    usage: Option<Arc<Usage>>,
}

/// Whether a retained topic counts for its tenant: the broker's own
/// `$SYS` messages (which clients cannot publish) do not.
fn counts(topic: &str) -> bool {
    !topic.starts_with("$SYS")
}

impl Tree {
    /// The usage a retained message on `topic` counts in.
    fn usage_for(&self, topic: &str) -> Option<&Arc<Usage>> {
        self.usage.as_ref().filter(|_| counts(topic))
    }

    /// Counts a retained message on `topic` gone (deleted, expired).
    fn gone(&self, topic: &str, size: usize) {
        if let Some(u) = self.usage_for(topic) {
            release(&u.retained_messages, 1);
            release(&u.retained_bytes, size as u64);
        }
    }
}

/// What a retained publish did to the count of retained messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainChange {
    Added,
    Replaced,
    Removed,
    Unchanged,
    /// Over the tenant's `max_retained_messages` or `max_retained_bytes`:
    /// nothing changed.
    Refused(QuotaKind),
}

impl RetainedStore {
    /// A store that keeps each tenant's retained count in `tenants` and
    /// enforces its limits.
    pub fn new(tenants: Arc<Tenants>) -> RetainedStore {
        RetainedStore {
            tenants: DashMap::new(),
            usage: Some(tenants),
        }
    }

    fn tenant(&self, tenant: &TenantId) -> Arc<Tree> {
        if let Some(t) = self.tenants.get(tenant) {
            return t.clone();
        }
        self.tenants
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(Tree {
                    root: RwLock::default(),
                    usage: self.usage.as_ref().map(|t| t.usage(tenant)),
                })
            })
            .clone()
    }

    /// Stores `msg` as the retained message of its topic, or deletes the
    /// retained message when the payload is empty.
    pub fn set(&self, msg: Arc<Message>) -> RetainChange {
        self.set_with(msg, false, |_| {})
    }

    /// Like `set`, calling `durable` under the tenant's lock first, so the
    /// store on disk changes in the same order as memory. With `enforce`,
    /// a message that would take the tenant past its retained limits is
    /// refused (a deletion, or a replacement no larger, never is).
    pub fn set_with(
        &self,
        msg: Arc<Message>,
        enforce: bool,
        durable: impl FnOnce(&Message),
    ) -> RetainChange {
        let tree = self.tenant(&msg.tenant);
        let mut root = tree.root.write();
        let levels: Vec<&str> = msg.topic.split('/').collect();
        if msg.payload.is_empty() {
            durable(&msg);
            return match remove(&mut root, &levels) {
                Some(size) => {
                    tree.gone(&msg.topic, size);
                    RetainChange::Removed
                }
                None => RetainChange::Unchanged,
            };
        }
        let old = find(&root, &levels).map(|m| m.size());
        let size = msg.size();
        if let Some(u) = tree.usage_for(&msg.topic) {
            let limits = &u.state_limits;
            let (count, bytes) = (
                u.retained_messages.load(Ordering::Acquire),
                u.retained_bytes.load(Ordering::Acquire),
            );
            let bytes_after = (bytes + size as u64).saturating_sub(old.unwrap_or(0) as u64);
            if enforce {
                if old.is_none()
                    && StateLimits::get(&limits.retained_messages).is_some_and(|max| count >= max)
                {
                    u.reject(QuotaKind::RetainedMessages);
                    return RetainChange::Refused(QuotaKind::RetainedMessages);
                }
                if bytes_after > bytes
                    && StateLimits::get(&limits.retained_bytes).is_some_and(|max| bytes_after > max)
                {
                    u.reject(QuotaKind::RetainedBytes);
                    return RetainChange::Refused(QuotaKind::RetainedBytes);
                }
            }
            if old.is_none() {
                u.retained_messages.fetch_add(1, Ordering::AcqRel);
            }
            u.retained_bytes.store(bytes_after, Ordering::Release);
        }
        durable(&msg);
        let mut node = &mut *root;
        for l in &levels {
            node = node.children.entry((*l).into()).or_default();
        }
        match node.message.replace(msg) {
            Some(_) => RetainChange::Replaced,
            None => RetainChange::Added,
        }
    }

    /// Retained messages matching `filter`. Expired ones found on the way
    /// are removed and returned second.
    pub fn matching(
        &self,
        tenant: &TenantId,
        filter: &str,
        now: Instant,
    ) -> (Vec<Arc<Message>>, Vec<Arc<Message>>) {
        self.matching_with(tenant, filter, now, |_| {})
    }

    /// Like `matching`, calling `purged` under the tenant's write lock for
    /// each expired message removed, so the disk never loses a newer one.
    pub fn matching_with(
        &self,
        tenant: &TenantId,
        filter: &str,
        now: Instant,
        mut purged: impl FnMut(&Message),
    ) -> (Vec<Arc<Message>>, Vec<Arc<Message>>) {
        let Some(tree) = self.tenants.get(tenant).map(|t| t.clone()) else {
            return (Vec::new(), Vec::new());
        };
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        walk(&tree.root.read(), &levels, true, &mut out);
        let (live, expired): (Vec<_>, Vec<_>) = out.into_iter().partition(|m| !m.is_expired(now));
        let mut removed = Vec::new();
        if !expired.is_empty() {
            let mut w = tree.root.write();
            for m in expired {
                let levels: Vec<&str> = m.topic.split('/').collect();
                // Only if it was not replaced meanwhile.
                if remove_if_same(&mut w, &levels, &m) {
                    tree.gone(&m.topic, m.size());
                    purged(&m);
                    removed.push(m);
                }
            }
        }
        (live, removed)
    }
}

/// The retained message of exactly `levels`.
fn find<'a>(node: &'a Node, levels: &[&str]) -> Option<&'a Arc<Message>> {
    match levels.split_first() {
        None => node.message.as_ref(),
        Some((first, rest)) => find(node.children.get(*first)?, rest),
    }
}

/// Removes the retained message of `levels`; returns its size.
fn remove(node: &mut Node, levels: &[&str]) -> Option<usize> {
    match levels.split_first() {
        None => node.message.take().map(|m| m.size()),
        Some((first, rest)) => {
            let child = node.children.get_mut(*first)?;
            let removed = remove(child, rest);
            if child.is_empty() {
                node.children.remove(*first);
            }
            removed
        }
    }
}

fn remove_if_same(node: &mut Node, levels: &[&str], msg: &Arc<Message>) -> bool {
    match levels.split_first() {
        None => {
            if node.message.as_ref().is_some_and(|m| Arc::ptr_eq(m, msg)) {
                node.message = None;
                true
            } else {
                false
            }
        }
        Some((first, rest)) => {
            let Some(child) = node.children.get_mut(*first) else {
                return false;
            };
            let removed = remove_if_same(child, rest, msg);
            if child.is_empty() {
                node.children.remove(*first);
            }
            removed
        }
    }
}

fn collect_all(node: &Node, top: bool, out: &mut Vec<Arc<Message>>) {
    if let Some(m) = &node.message {
        out.push(m.clone());
    }
    for (k, child) in &node.children {
        if top && k.starts_with('$') {
            continue;
        }
        collect_all(child, false, out);
    }
}

fn walk(node: &Node, levels: &[&str], top: bool, out: &mut Vec<Arc<Message>>) {
    let Some((first, rest)) = levels.split_first() else {
        if let Some(m) = &node.message {
            out.push(m.clone());
        }
        return;
    };
    match *first {
        "#" => collect_all(node, top, out),
        "+" => {
            for (k, child) in &node.children {
                if top && k.starts_with('$') {
                    continue;
                }
                walk(child, rest, false, out);
            }
        }
        level => {
            if let Some(child) = node.children.get(level) {
                walk(child, rest, false, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Properties, QoS};
    use crate::topic::TopicName;
    use bytes::Bytes;

    fn msg(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message::new(
            TenantId::default_tenant(),
            TopicName::trusted(topic.into()),
            Bytes::from_static(payload),
            QoS::AtMostOnce,
            true,
            &Properties::default(),
            None,
        ))
    }

    fn topics(v: Vec<Arc<Message>>) -> Vec<String> {
        let mut t: Vec<String> = v.iter().map(|m| m.topic.to_string()).collect();
        t.sort();
        t
    }

    #[test]
    fn set_replace_delete_match() {
        let s = RetainedStore::default();
        let t = TenantId::default_tenant();
        let now = Instant::now();
        assert_eq!(s.set(msg("a/b", b"1")), RetainChange::Added);
        assert_eq!(s.set(msg("a/b", b"2")), RetainChange::Replaced);
        s.set(msg("a", b"x"));
        s.set(msg("$SYS/up", b"x"));
        assert_eq!(topics(s.matching(&t, "#", now).0), ["a", "a/b"]);
        assert_eq!(topics(s.matching(&t, "a/#", now).0), ["a", "a/b"]);
        assert_eq!(topics(s.matching(&t, "+/b", now).0), ["a/b"]);
        assert_eq!(topics(s.matching(&t, "$SYS/#", now).0), ["$SYS/up"]);
        assert_eq!(&s.matching(&t, "a/b", now).0[0].payload[..], b"2");
        assert_eq!(s.set(msg("a/b", b"")), RetainChange::Removed);
        assert_eq!(s.set(msg("a/b", b"")), RetainChange::Unchanged);
        assert_eq!(topics(s.matching(&t, "#", now).0), ["a"]);
    }
}
