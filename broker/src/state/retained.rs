//! The node's index of retained messages: the last retained message per
//! topic, per tenant, as a trie of topic levels.
//!
//! The control state (`control.rs`) decides what is retained, counts it
//! against the tenant's limits and records it; this index mirrors it for
//! SUBSCRIBE, which walks only the branches a filter selects. One
//! `RwLock` per tenant: reads share it, the control state's effects write
//! (under the control lock, in log order). Expired messages are skipped
//! here and removed by command (`ExpireRetained`), so a read never writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use parking_lot::RwLock;

use crate::ids::TenantId;
use crate::message::Message;

/// One tenant's retained messages (a level of the tree).
#[derive(Debug, Default)]
pub struct Node {
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
    tenants: DashMap<TenantId, Arc<RwLock<Node>>>,
}

impl RetainedStore {
    /// One tenant's tree: `State` takes its write lock before the control
    /// lock is released, so a tenant's retained changes reach the index
    /// and the disk in log order (`state/mod.rs`).
    pub fn tenant(&self, tenant: &TenantId) -> Arc<RwLock<Node>> {
        if let Some(t) = self.tenants.get(tenant) {
            return t.clone();
        }
        self.tenants.entry(tenant.clone()).or_default().clone()
    }

    /// Makes `msg` the retained message of its topic.
    pub fn set(&self, msg: Arc<Message>) {
        let tree = self.tenant(&msg.tenant);
        let mut root = tree.write();
        Self::set_in(&mut root, msg);
    }

    /// `set` in a tenant's tree already locked.
    pub fn set_in(root: &mut Node, msg: Arc<Message>) {
        let mut node = root;
        for l in msg.topic.split('/') {
            // Levels already there cost no allocation.
            if !node.children.contains_key(l) {
                node.children.insert(l.into(), Node::default());
            }
            let Some(next) = node.children.get_mut(l) else {
                return;
            };
            node = next;
        }
        node.message = Some(msg);
    }

    /// Removes the retained message of `topic`.
    pub fn remove(&self, tenant: &TenantId, topic: &str) {
        let Some(tree) = self.tenants.get(tenant).map(|t| t.clone()) else {
            return;
        };
        let mut root = tree.write();
        Self::remove_in(&mut root, topic);
    }

    /// `remove` in a tenant's tree already locked.
    pub fn remove_in(root: &mut Node, topic: &str) {
        let levels: Vec<&str> = topic.split('/').collect();
        remove(root, &levels);
    }

    /// Retained messages matching `filter`, without those expired at `now`.
    pub fn matching(&self, tenant: &TenantId, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let Some(tree) = self.tenants.get(tenant).map(|t| t.clone()) else {
            return Vec::new();
        };
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        walk(&tree.read(), &levels, true, &mut out);
        out.retain(|m| !m.is_expired(now));
        out
    }
}

/// Removes the retained message of `levels`, pruning empty branches.
fn remove(node: &mut Node, levels: &[&str]) -> bool {
    match levels.split_first() {
        None => node.message.take().is_some(),
        Some((first, rest)) => {
            let Some(child) = node.children.get_mut(*first) else {
                return false;
            };
            let removed = remove(child, rest);
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
    fn set_replace_remove_match() {
        let s = RetainedStore::default();
        let t = TenantId::default_tenant();
        let now = Instant::now();
        s.set(msg("a/b", b"1"));
        s.set(msg("a/b", b"2"));
        s.set(msg("a", b"x"));
        s.set(msg("$SYS/up", b"x"));
        assert_eq!(topics(s.matching(&t, "#", now)), ["a", "a/b"]);
        assert_eq!(topics(s.matching(&t, "a/#", now)), ["a", "a/b"]);
        assert_eq!(topics(s.matching(&t, "+/b", now)), ["a/b"]);
        assert_eq!(topics(s.matching(&t, "$SYS/#", now)), ["$SYS/up"]);
        assert_eq!(&s.matching(&t, "a/b", now)[0].payload[..], b"2");
        s.remove(&t, "a/b");
        s.remove(&t, "a/b");
        assert_eq!(topics(s.matching(&t, "#", now)), ["a"]);
        s.remove(&t, "a");
        s.remove(&t, "$SYS/up");
        assert!(s.tenant(&t).read().is_empty(), "branches are pruned");
    }

    #[test]
    fn expired_messages_are_skipped_not_removed() {
        let s = RetainedStore::default();
        let t = TenantId::default_tenant();
        let props = Properties {
            message_expiry_interval: Some(1),
            ..Properties::default()
        };
        s.set(Arc::new(Message::new(
            t.clone(),
            TopicName::trusted("e".into()),
            Bytes::from_static(b"x"),
            QoS::AtMostOnce,
            true,
            &props,
            None,
        )));
        let later = Instant::now() + std::time::Duration::from_secs(2);
        assert!(s.matching(&t, "e", later).is_empty());
        assert_eq!(s.matching(&t, "e", Instant::now()).len(), 1);
    }
}
