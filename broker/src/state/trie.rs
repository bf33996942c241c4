//! The subscription trie: topic filter levels to subscribers, per tenant.
//!
//! Matching a topic walks only the branches its levels (plus `+` and `#`)
//! select, so its cost does not grow with non-matching subscriptions. There
//! is no global lock: each node has its own `RwLock`, matching holds read
//! locks along the path it walks (taken top-down, so it borrows instead of
//! cloning a node per level), and subscribe/unsubscribe write-lock only the
//! nodes they change, never a child while waiting for its parent. A pruned node is marked dead so a concurrent
//! subscribe that reached it retries from the root instead of writing into
//! a detached branch.
//!
//! Shared subscriptions live on the node of their filter, keyed by group;
//! `matches` picks one member per group (round robin, preferring connected
//! members). The results go to `route/router.rs`, which merges overlapping
//! subscriptions per session.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use foldhash::HashMap;
use parking_lot::RwLock;

use crate::codec::SubscriptionOptions;
use crate::ids::{SessionId, TenantId};
use crate::message::ShareRef;
use crate::session::Session;

/// One subscriber of one filter.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub session: Arc<Session>,
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

#[derive(Debug)]
struct SharedGroup {
    /// The group and filter, handed out with each chosen member (shared,
    /// so each delivery through the group carries a pointer, not a copy).
    share: Arc<ShareRef>,
    /// Members in subscription order.
    members: Vec<Subscriber>,
    /// Round-robin cursor.
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct NodeInner {
    children: HashMap<Box<str>, Arc<Node>>,
    subscribers: HashMap<SessionId, Subscriber>,
    shared: HashMap<Box<str>, SharedGroup>,
    /// Set when the node has been unlinked from its parent.
    dead: bool,
}

impl NodeInner {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.shared.is_empty()
    }
}

#[derive(Debug, Default)]
struct Node {
    inner: RwLock<NodeInner>,
}

/// A match for one publish: plain subscribers (possibly several per
/// session, merged later) and one chosen member per shared group.
#[derive(Debug, Default)]
pub struct Matches {
    pub direct: Vec<Subscriber>,
    pub shared: Vec<(Subscriber, Arc<ShareRef>)>,
}

impl Matches {
    /// Whether a delivery of this match would go to an offline session.
    pub fn any_offline(&self) -> bool {
        let offline = |s: &Subscriber| !s.session.is_online();
        self.direct.iter().any(offline) || self.shared.iter().any(|(s, _)| offline(s))
    }
}

#[derive(Debug, Default)]
pub struct SubscriptionTrie {
    roots: DashMap<TenantId, Arc<Node>>,
}

impl SubscriptionTrie {
    fn root(&self, tenant: &TenantId) -> Arc<Node> {
        if let Some(r) = self.roots.get(tenant) {
            return r.clone();
        }
        self.roots.entry(tenant.clone()).or_default().clone()
    }

    /// Adds or replaces `sub` on `filter` (for `group`, if shared).
    /// Returns true if the session already had this subscription.
    pub fn subscribe(
        &self,
        tenant: &TenantId,
        filter: &str,
        group: Option<&str>,
        sub: Subscriber,
    ) -> bool {
        'retry: loop {
            let mut node = self.root(tenant);
            for level in filter.split('/') {
                let next = {
                    let r = node.inner.read();
                    r.children.get(level).cloned()
                };
                node = match next {
                    Some(n) => n,
                    None => {
                        let mut w = node.inner.write();
                        if w.dead {
                            continue 'retry;
                        }
                        w.children.entry(level.into()).or_default().clone()
                    }
                };
            }
            let mut w = node.inner.write();
            if w.dead {
                continue 'retry;
            }
            let sid = sub.session.id;
            return match group {
                None => w.subscribers.insert(sid, sub).is_some(),
                Some(g) => {
                    let grp = w.shared.entry(g.into()).or_insert_with(|| SharedGroup {
                        share: Arc::new(ShareRef {
                            group: Arc::from(g),
                            filter: Arc::from(filter),
                        }),
                        members: Vec::new(),
                        next: AtomicUsize::new(0),
                    });
                    match grp.members.iter_mut().find(|m| m.session.id == sid) {
                        Some(m) => {
                            *m = sub;
                            true
                        }
                        None => {
                            grp.members.push(sub);
                            false
                        }
                    }
                }
            };
        }
    }

    /// Removes the session's subscription on `filter`; true if it existed.
    pub fn unsubscribe(
        &self,
        tenant: &TenantId,
        filter: &str,
        group: Option<&str>,
        session: SessionId,
    ) -> bool {
        let root = self.root(tenant);
        let mut path: Vec<(Arc<Node>, Box<str>)> = Vec::new();
        let mut node = root;
        for level in filter.split('/') {
            let next = node.inner.read().children.get(level).cloned();
            match next {
                Some(n) => {
                    path.push((node, level.into()));
                    node = n;
                }
                None => return false,
            }
        }
        let removed = {
            let mut w = node.inner.write();
            match group {
                None => w.subscribers.remove(&session).is_some(),
                Some(g) => {
                    let mut removed = false;
                    if let Some(grp) = w.shared.get_mut(g) {
                        let before = grp.members.len();
                        grp.members.retain(|m| m.session.id != session);
                        removed = grp.members.len() != before;
                        if grp.members.is_empty() {
                            w.shared.remove(g);
                        }
                    }
                    removed
                }
            }
        };
        // Prune empty nodes bottom-up: parent write lock, then child.
        for (parent, key) in path.into_iter().rev() {
            let mut pw = parent.inner.write();
            let Some(child) = pw.children.get(&key).cloned() else {
                break;
            };
            let mut cw = child.inner.write();
            if !cw.is_empty() {
                break;
            }
            cw.dead = true;
            drop(cw);
            pw.children.remove(&key);
        }
        removed
    }

    /// Every subscription matching `topic` in `tenant`.
    pub fn matches(&self, tenant: &TenantId, topic: &str) -> Matches {
        let mut out = Matches::default();
        let Some(root) = self.roots.get(tenant).map(|r| r.clone()) else {
            return out;
        };
        let mut rest = topic.split('/');
        let first = rest.next();
        let dollar = topic.starts_with('$');
        collect(&root, first, rest, true, dollar, &mut out);
        out
    }
}

fn add_node_subs(inner: &NodeInner, out: &mut Matches) {
    out.direct.extend(inner.subscribers.values().cloned());
    for grp in inner.shared.values() {
        if grp.members.is_empty() {
            continue;
        }
        let n = grp.members.len();
        let start = grp.next.fetch_add(1, Ordering::Relaxed);
        let chosen = (0..n)
            .map(|i| &grp.members[(start + i) % n])
            .find(|m| m.session.is_online())
            .unwrap_or(&grp.members[start % n]);
        out.shared.push((chosen.clone(), grp.share.clone()));
    }
}

/// Matches `level` (then `rest`) below `node`; `level` is `None` past the
/// topic's last level. Borrows all the way down: each node's read guard is
/// held while its children are visited (read locks taken top-down only;
/// writers never hold a child while waiting for its parent, see
/// `unsubscribe`), so a publish allocates nothing per visited node.
fn collect<'t>(
    node: &Node,
    level: Option<&'t str>,
    rest: std::str::Split<'t, char>,
    first: bool,
    dollar: bool,
    out: &mut Matches,
) {
    // No leading wildcard matches a `$` topic (MQTT 4.7.2).
    let wildcard_ok = !(first && dollar);
    let r = node.inner.read();
    if level.is_none() {
        add_node_subs(&r, out);
    }
    // `a/#` matches `a` as well as everything below it.
    if wildcard_ok {
        if let Some(h) = r.children.get("#") {
            add_node_subs(&h.inner.read(), out);
        }
    }
    let Some(level) = level else {
        return;
    };
    let mut after = rest;
    let next = after.next();
    if wildcard_ok {
        if let Some(p) = r.children.get("+") {
            collect(p, next, after.clone(), false, dollar, out);
        }
    }
    if let Some(e) = r.children.get(level) {
        collect(e, next, after, false, dollar, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::ids::{ClientId, SessionKey};

    fn sub(name: &str) -> Subscriber {
        // Each subscriber its own instance, as the control state makes them.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Subscriber {
            session: Arc::new(Session::new(
                SessionKey {
                    tenant: TenantId::default_tenant(),
                    client: ClientId::new(name),
                },
                SessionId(id),
                None,
                None,
            )),
            options: SubscriptionOptions::new(QoS::AtMostOnce),
            id: None,
        }
    }

    fn names(m: &Matches) -> Vec<String> {
        let mut v: Vec<String> = m
            .direct
            .iter()
            .map(|s| s.session.key.client.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let t = SubscriptionTrie::default();
        let tenant = TenantId::default_tenant();
        t.subscribe(&tenant, "a/+/c", None, sub("plus"));
        t.subscribe(&tenant, "a/#", None, sub("hash"));
        t.subscribe(&tenant, "#", None, sub("all"));
        t.subscribe(&tenant, "$SYS/#", None, sub("sys"));
        t.subscribe(&tenant, "x/y", None, sub("other"));
        assert_eq!(names(&t.matches(&tenant, "a/b/c")), ["all", "hash", "plus"]);
        assert_eq!(names(&t.matches(&tenant, "a")), ["all", "hash"]);
        assert_eq!(names(&t.matches(&tenant, "$SYS/uptime")), ["sys"]);
        assert!(t
            .matches(&TenantId::new("other"), "a/b/c")
            .direct
            .is_empty());
    }

    #[test]
    fn unsubscribe_prunes_and_resubscribe_works() {
        let t = SubscriptionTrie::default();
        let tenant = TenantId::default_tenant();
        let s = sub("s");
        let id = s.session.id;
        t.subscribe(&tenant, "a/b/c", None, s.clone());
        assert!(t.unsubscribe(&tenant, "a/b/c", None, id));
        assert!(!t.unsubscribe(&tenant, "a/b/c", None, id));
        assert!(t.root(&tenant).inner.read().children.is_empty());
        t.subscribe(&tenant, "a/b/c", None, s);
        assert_eq!(names(&t.matches(&tenant, "a/b/c")), ["s"]);
    }

    #[test]
    fn shared_groups_round_robin() {
        let t = SubscriptionTrie::default();
        let tenant = TenantId::default_tenant();
        t.subscribe(&tenant, "a/+", Some("g"), sub("m1"));
        t.subscribe(&tenant, "a/+", Some("g"), sub("m2"));
        let mut seen = Vec::new();
        for _ in 0..4 {
            let m = t.matches(&tenant, "a/b");
            assert_eq!(m.shared.len(), 1);
            assert_eq!(&*m.shared[0].1.group, "g");
            assert_eq!(&*m.shared[0].1.filter, "a/+");
            seen.push(m.shared[0].0.session.key.client.to_string());
        }
        assert_eq!(seen, ["m1", "m2", "m1", "m2"]);
    }
}
