//! The control state: a deterministic state machine over [`Command`]s.
//!
//! Owns the replicated records: every session (instance, claim, expiry,
//! user, disconnect time, pending will, subscriptions) and every retained
//! message, in ordered maps, plus per-tenant counts derived from them for
//! the limits commands carry. `apply` is the only writer. It reads no
//! clock, no flag and no counter of its own, and does no I/O: given the
//! same log position and command, every replica makes the same change and
//! returns the same [`Output`]. What that change means for one node (its
//! trie, its retained index, its disk, timers, metrics, connections) is
//! returned as [`Effect`]s for `state/mod.rs` to act on.
//!
//! Snapshots are the records in [`encode`](super::command::encode)'s
//! format; the counts are rebuilt from them on restore.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::command::{
    Applied, Command, DelayedWill, Effect, Limit, Output, RetainChange, RetainLimits, Retained,
    StoredSubscription, SubscribeLimits,
};
use crate::ids::{Claim, SessionId, SessionKey, TenantId};
pub use crate::records::PendingWill;
use crate::records::SessionMeta;
use crate::topic::{TopicFilter, TopicName};

/// One session as every replica knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The instance: log position of the CONNECT that created it.
    pub session: SessionId,
    /// The latest claim (log position of the latest CONNECT).
    pub claim: Claim,
    /// Whether the connection of `claim` is still attached.
    pub connected: bool,
    /// Seconds the session outlives its connection (`u32::MAX`: never).
    pub expiry_interval: u32,
    /// Durable: counted in the tenant's persistent sessions, on disk.
    pub persistent: bool,
    /// The authenticated user of the latest claim. (Boxed here and below:
    /// every connected client has a record, most without either.)
    pub user: Option<Box<str>>,
    /// When the latest claim's connection ended (0 while connected).
    pub disconnected_at_ms: u64,
    /// A will waiting for its delay or the session's end.
    pub will: Option<Box<PendingWill>>,
    /// Keyed by the filter exactly as subscribed (`$share/g/`,
    /// `$tenant/id/` included).
    pub subscriptions: BTreeMap<TopicFilter, StoredSubscription>,
}

impl SessionRecord {
    /// Whether its latest claim was another authenticated user's: such a
    /// session is not handed to `user` (a CONNECT replaces it).
    pub fn foreign(&self, user: Option<&str>) -> bool {
        self.user.is_some() && self.user.as_deref() != user
    }

    /// Whether it has been disconnected since `claim` ended and its
    /// expiry has passed at `at_ms`.
    pub fn expired(&self, claim: Claim, at_ms: u64) -> bool {
        let due = self
            .disconnected_at_ms
            .saturating_add(u64::from(self.expiry_interval) * 1000);
        self.claim == claim && !self.connected && self.expiry_interval != u32::MAX && at_ms >= due
    }
}

/// What the limits count, per tenant: derived from the records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantCounts {
    pub persistent_sessions: u64,
    /// Subscriptions whose filter addresses this tenant (a gateway's
    /// `$tenant/<id>/` filters count in `<id>`).
    pub subscriptions: u64,
    /// Retained messages and their bytes, `$SYS` topics excepted.
    pub retained_messages: u64,
    pub retained_bytes: u64,
}

/// The replicated records, as a snapshot carries them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlState {
    sessions: BTreeMap<SessionKey, SessionRecord>,
    /// Hashed, not ordered: the publish path's RETAIN applies here. A
    /// snapshot writes it sorted (`sorted`), so its bytes do not depend
    /// on hashing.
    #[serde(with = "sorted")]
    retained: HashMap<(TenantId, TopicName), Retained, foldhash::fast::RandomState>,
    #[serde(skip)]
    counts: BTreeMap<TenantId, TenantCounts>,
}

/// A hashed map written as a sorted sequence of pairs, and read back.
mod sorted {
    use std::collections::HashMap;
    use std::hash::{BuildHasher, Hash};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K, V, H, S>(map: &HashMap<K, V, H>, s: S) -> Result<S::Ok, S::Error>
    where
        K: Serialize + Ord,
        V: Serialize,
        S: Serializer,
    {
        let mut pairs: Vec<(&K, &V)> = map.iter().collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        pairs.serialize(s)
    }

    pub fn deserialize<'de, K, V, H, D>(d: D) -> Result<HashMap<K, V, H>, D::Error>
    where
        K: Deserialize<'de> + Eq + Hash,
        V: Deserialize<'de>,
        H: BuildHasher + Default,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// Whether a retained topic counts against its tenant's limits: the
/// broker's own `$SYS` messages do not.
fn retained_counts(topic: &str) -> bool {
    !crate::topic::is_sys(topic)
}

/// The tenant whose trie holds a subscription of a session in `home`, and
/// whose count it is: `home`, or the one a gateway's `$tenant/<id>/` filter
/// names.
pub fn namespace(home: &TenantId, filter: &TopicFilter) -> TenantId {
    match filter.tenant() {
        Some(id) => TenantId::new(id),
        None => home.clone(),
    }
}

impl ControlState {
    /// Applies one command at log position `index`: the only way the
    /// control state changes. `index` names what the command creates (a
    /// session instance, a claim); it grows with every command applied.
    pub fn apply(&mut self, index: u64, cmd: Command) -> Output {
        match cmd {
            Command::Connect {
                key,
                clean_start,
                expiry_interval,
                user,
                max_persistent,
            } => self.connect(
                index,
                key,
                clean_start,
                expiry_interval,
                user,
                max_persistent,
            ),
            Command::Disconnect {
                key,
                claim,
                at_ms,
                will,
            } => self.disconnect(key, claim, at_ms, will),
            Command::SetExpiry {
                key,
                claim,
                expiry_interval,
            } => {
                let Some(rec) = self.sessions.get_mut(&key) else {
                    return Output::only(Applied::NoSession);
                };
                if rec.claim != claim || !rec.connected {
                    return Output::only(Applied::Stale);
                }
                rec.expiry_interval = expiry_interval;
                let mut out = Output::only(Applied::ExpirySet);
                if rec.persistent {
                    out.effects.push(Effect::SessionRecord {
                        key,
                        meta: SessionMeta::new(
                            expiry_interval,
                            0,
                            rec.user.as_deref().map(str::to_owned),
                        ),
                    });
                }
                out
            }
            Command::Expire { key, claim, at_ms } => {
                let Some(rec) = self.sessions.get(&key) else {
                    return Output::only(Applied::NoSession);
                };
                if !rec.expired(claim, at_ms) {
                    return Output::only(Applied::Stale);
                }
                let mut out = Output::only(Applied::Ended);
                self.end(&key, &mut out.effects);
                out
            }
            Command::Discard { key, claim } => {
                let Some(rec) = self.sessions.get(&key) else {
                    return Output::only(Applied::NoSession);
                };
                if rec.claim != claim || rec.connected {
                    return Output::only(Applied::Stale);
                }
                let mut out = Output::only(Applied::Ended);
                self.end(&key, &mut out.effects);
                out
            }
            Command::WillDue { key, claim, at_ms } => {
                let Some(rec) = self.sessions.get_mut(&key) else {
                    return Output::only(Applied::NoSession);
                };
                let due = rec.will.as_ref().is_some_and(|w| w.due_ms <= at_ms);
                if rec.claim != claim || rec.connected || !due {
                    return Output::only(Applied::Stale);
                }
                let mut out = Output::only(Applied::WillReleased);
                if let Some(w) = rec.will.take() {
                    out.effects.push(Effect::WillCleared { key: key.clone() });
                    out.effects.push(Effect::PublishWill { key, will: w.will });
                }
                out
            }
            Command::Subscribe {
                key,
                filter,
                options,
                id,
                limits,
            } => self.subscribe(key, filter, StoredSubscription { options, id }, limits),
            Command::Unsubscribe { key, filter } => {
                let Some(rec) = self.sessions.get_mut(&key) else {
                    return Output::only(Applied::NoSession);
                };
                let existed = rec.subscriptions.remove(&filter).is_some();
                let mut out = Output::only(Applied::Existed(existed));
                if existed {
                    let session = rec.session;
                    let ns = namespace(&key.tenant, &filter);
                    self.count(&ns).subscriptions -= 1;
                    self.tidy(&ns);
                    out.effects.push(Effect::Unsubscribed {
                        key,
                        session,
                        filter,
                    });
                }
                out
            }
            Command::Retain { message, limits } => self.retain(message, limits),
            Command::ExpireRetained {
                tenant,
                topic,
                at_ms,
            } => {
                let k = (tenant, topic);
                let expired = self
                    .retained
                    .get(&k)
                    .and_then(|r| r.expires_at_ms)
                    .is_some_and(|t| t <= at_ms);
                if !expired {
                    return Output::only(Applied::Retained(RetainChange::Unchanged));
                }
                let mut out = Output::only(Applied::Retained(RetainChange::Removed));
                self.remove_retained(k, &mut out.effects);
                out
            }
        }
    }

    fn connect(
        &mut self,
        index: u64,
        key: SessionKey,
        clean_start: bool,
        expiry_interval: u32,
        user: Option<String>,
        max_persistent: Option<u64>,
    ) -> Output {
        let claim = Claim(index);
        let mut effects = Vec::new();
        // A session last claimed by another authenticated user is not
        // handed over: the client gets a fresh one, as with clean start.
        let resume = self
            .sessions
            .get(&key)
            .is_some_and(|r| !clean_start && !r.foreign(user.as_deref()));
        if resume {
            let upgrade = self
                .sessions
                .get(&key)
                .is_some_and(|r| expiry_interval > 0 && !r.persistent);
            if upgrade && !self.room_for_persistent(&key.tenant, max_persistent) {
                return Output::only(Applied::OverLimit(Limit::PersistentSessions));
            }
            if upgrade {
                self.count(&key.tenant).persistent_sessions += 1;
            }
            let Some(rec) = self.sessions.get_mut(&key) else {
                return Output::only(Applied::NoSession);
            };
            rec.claim = claim;
            rec.connected = true;
            rec.disconnected_at_ms = 0;
            rec.expiry_interval = expiry_interval;
            rec.user = user.map(Into::into);
            if upgrade {
                rec.persistent = true;
                effects.push(Effect::BecamePersistent {
                    key: key.clone(),
                    subscriptions: rec
                        .subscriptions
                        .iter()
                        .map(|(f, s)| (f.clone(), *s))
                        .collect(),
                });
            }
            effects.push(Effect::Claimed {
                key: key.clone(),
                session: rec.session,
                claim,
            });
            // Resumed in time: no delayed will.
            if rec.will.take().is_some() {
                effects.push(Effect::WillCleared { key: key.clone() });
            }
            if rec.persistent {
                effects.push(Effect::SessionRecord {
                    key: key.clone(),
                    meta: SessionMeta::new(
                        expiry_interval,
                        0,
                        rec.user.as_deref().map(str::to_owned),
                    ),
                });
            }
            return Output {
                applied: Applied::Connected {
                    session: rec.session,
                    claim,
                    resumed: true,
                },
                effects,
            };
        }
        let persistent = expiry_interval > 0;
        // The limit first, so a refused CONNECT leaves the previous
        // instance as it was; that instance's seat is free for the new one.
        let frees = self.sessions.get(&key).is_some_and(|r| r.persistent);
        let used = self
            .counts
            .get(&key.tenant)
            .map_or(0, |c| c.persistent_sessions);
        let room = max_persistent.is_none_or(|m| used - u64::from(frees) < m);
        if persistent && !room {
            return Output::only(Applied::OverLimit(Limit::PersistentSessions));
        }
        if self.sessions.contains_key(&key) {
            // Its pending will is due now: the session ended.
            if let Some(w) = self.sessions.get_mut(&key).and_then(|r| r.will.take()) {
                effects.push(Effect::PublishWill {
                    key: key.clone(),
                    will: w.will,
                });
            }
            self.end(&key, &mut effects);
        }
        if persistent {
            self.count(&key.tenant).persistent_sessions += 1;
        }
        let session = SessionId(index);
        let meta = persistent.then(|| SessionMeta::new(expiry_interval, 0, user.clone()));
        self.sessions.insert(
            key.clone(),
            SessionRecord {
                session,
                claim,
                connected: true,
                expiry_interval,
                persistent,
                user: user.map(Into::into),
                disconnected_at_ms: 0,
                will: None,
                subscriptions: BTreeMap::new(),
            },
        );
        effects.push(Effect::SessionCreated {
            key: key.clone(),
            session,
            persistent,
        });
        effects.push(Effect::Claimed {
            key: key.clone(),
            session,
            claim,
        });
        if let Some(meta) = meta {
            effects.push(Effect::SessionRecord { key, meta });
        }
        Output {
            applied: Applied::Connected {
                session,
                claim,
                resumed: false,
            },
            effects,
        }
    }

    fn room_for_persistent(&self, tenant: &TenantId, max: Option<u64>) -> bool {
        let used = self.counts.get(tenant).map_or(0, |c| c.persistent_sessions);
        max.is_none_or(|m| used < m)
    }

    fn disconnect(
        &mut self,
        key: SessionKey,
        claim: Claim,
        at_ms: u64,
        will: Option<DelayedWill>,
    ) -> Output {
        let Some(rec) = self.sessions.get_mut(&key) else {
            return Output::only(Applied::NoSession);
        };
        if rec.claim != claim || !rec.connected {
            return Output::only(Applied::Stale);
        }
        rec.connected = false;
        rec.disconnected_at_ms = at_ms;
        let mut effects = Vec::new();
        let expiry = rec.expiry_interval;
        if let Some(w) = will {
            let delay = w.delay.min(expiry);
            if delay == 0 {
                effects.push(Effect::PublishWill {
                    key: key.clone(),
                    will: w.will,
                });
            } else {
                let due_ms = at_ms.saturating_add(u64::from(delay) * 1000);
                effects.push(Effect::WillPending {
                    key: key.clone(),
                    claim,
                    will: w.will.clone(),
                    due_ms,
                });
                rec.will = Some(Box::new(PendingWill {
                    will: w.will,
                    due_ms,
                }));
            }
        }
        if expiry == 0 {
            self.end(&key, &mut effects);
            return Output {
                applied: Applied::Disconnected { ended: true },
                effects,
            };
        }
        if rec.persistent {
            effects.push(Effect::SessionRecord {
                key: key.clone(),
                meta: SessionMeta::new(expiry, at_ms, rec.user.as_deref().map(str::to_owned)),
            });
        }
        if expiry != u32::MAX {
            effects.push(Effect::ExpiryDue {
                key,
                claim,
                due_ms: at_ms.saturating_add(u64::from(expiry) * 1000),
            });
        }
        Output {
            applied: Applied::Disconnected { ended: false },
            effects,
        }
    }

    /// Removes a session and its subscriptions; a pending will is
    /// published (the session ended).
    fn end(&mut self, key: &SessionKey, effects: &mut Vec<Effect>) {
        let Some(rec) = self.sessions.remove(key) else {
            return;
        };
        // Its stored will goes with its other records (`SessionEnded`).
        if let Some(w) = rec.will {
            effects.push(Effect::PublishWill {
                key: key.clone(),
                will: w.will,
            });
        }
        if rec.persistent {
            self.count(&key.tenant).persistent_sessions -= 1;
            self.tidy(&key.tenant);
        }
        let mut filters = Vec::with_capacity(rec.subscriptions.len());
        for filter in rec.subscriptions.into_keys() {
            let ns = namespace(&key.tenant, &filter);
            self.count(&ns).subscriptions -= 1;
            self.tidy(&ns);
            filters.push(filter);
        }
        effects.push(Effect::SessionEnded {
            key: key.clone(),
            session: rec.session,
            persistent: rec.persistent,
            subscriptions: filters,
        });
    }

    fn subscribe(
        &mut self,
        key: SessionKey,
        filter: TopicFilter,
        sub: StoredSubscription,
        limits: SubscribeLimits,
    ) -> Output {
        let ns = namespace(&key.tenant, &filter);
        let tenant_used = self.counts.get(&ns).map_or(0, |c| c.subscriptions);
        let Some(rec) = self.sessions.get_mut(&key) else {
            return Output::only(Applied::NoSession);
        };
        let existed = rec.subscriptions.contains_key(&filter);
        if !existed {
            if limits
                .per_session
                .is_some_and(|m| rec.subscriptions.len() as u64 >= m)
            {
                return Output::only(Applied::OverLimit(Limit::SessionSubscriptions));
            }
            if limits.tenant.is_some_and(|m| tenant_used >= m) {
                return Output::only(Applied::OverLimit(Limit::Subscriptions));
            }
        }
        rec.subscriptions.insert(filter.clone(), sub);
        let session = rec.session;
        if !existed {
            self.count(&ns).subscriptions += 1;
        }
        Output {
            applied: Applied::Existed(existed),
            effects: vec![Effect::Subscribed {
                key,
                session,
                filter,
                options: sub.options,
                id: sub.id,
                existed,
            }],
        }
    }

    fn retain(&mut self, message: Retained, limits: RetainLimits) -> Output {
        let k = (
            message.message.tenant.clone(),
            message.message.topic.clone(),
        );
        if message.message.payload.is_empty() {
            if !self.retained.contains_key(&k) {
                return Output::only(Applied::Retained(RetainChange::Unchanged));
            }
            let mut out = Output::only(Applied::Retained(RetainChange::Removed));
            self.remove_retained(k, &mut out.effects);
            return out;
        }
        let size = message.size();
        let counted = retained_counts(&k.1);
        let tenant = k.0.clone();
        let c = self.counts.get(&tenant).copied().unwrap_or_default();
        // One lookup: the publish path's RETAIN comes through here.
        let old = match self.retained.entry(k) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let old = e.get().size();
                let after = (c.retained_bytes + size).saturating_sub(old);
                if counted && after > c.retained_bytes && limits.bytes.is_some_and(|m| after > m) {
                    return Output::only(Applied::OverLimit(Limit::RetainedBytes));
                }
                e.insert(message.clone());
                Some(old)
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                if counted {
                    if limits.messages.is_some_and(|m| c.retained_messages >= m) {
                        return Output::only(Applied::OverLimit(Limit::RetainedMessages));
                    }
                    if limits.bytes.is_some_and(|m| c.retained_bytes + size > m) {
                        return Output::only(Applied::OverLimit(Limit::RetainedBytes));
                    }
                }
                v.insert(message.clone());
                None
            }
        };
        if counted {
            let after = (c.retained_bytes + size).saturating_sub(old.unwrap_or(0));
            let c = self.count(&tenant);
            c.retained_messages += u64::from(old.is_none());
            c.retained_bytes = after;
        }
        let change = match old {
            Some(_) => RetainChange::Replaced,
            None => RetainChange::Added,
        };
        Output {
            applied: Applied::Retained(change),
            effects: vec![Effect::RetainedSet {
                message,
                replaced: old,
            }],
        }
    }

    fn remove_retained(&mut self, k: (TenantId, TopicName), effects: &mut Vec<Effect>) {
        let Some(old) = self.retained.remove(&k) else {
            return;
        };
        let size = old.size();
        if retained_counts(&k.1) {
            let c = self.count(&k.0);
            c.retained_messages -= 1;
            c.retained_bytes -= size;
            self.tidy(&k.0);
        }
        effects.push(Effect::RetainedRemoved {
            tenant: k.0,
            topic: k.1,
            size,
        });
    }

    fn count(&mut self, tenant: &TenantId) -> &mut TenantCounts {
        self.counts.entry(tenant.clone()).or_default()
    }

    /// Drops a tenant's counts once all are zero, so the counts never
    /// depend on history.
    fn tidy(&mut self, tenant: &TenantId) {
        if self
            .counts
            .get(tenant)
            .is_some_and(|c| *c == TenantCounts::default())
        {
            self.counts.remove(tenant);
        }
    }

    // Reads.

    pub fn session(&self, key: &SessionKey) -> Option<&SessionRecord> {
        self.sessions.get(key)
    }

    pub fn retained(&self, tenant: &TenantId, topic: &str) -> Option<&Retained> {
        self.retained
            .get(&(tenant.clone(), TopicName::trusted(topic.to_owned())))
    }

    /// Every retained message, in no order (the admin API sorts a page).
    pub fn retained_all(&self) -> impl Iterator<Item = (&TenantId, &TopicName, &Retained)> {
        self.retained.iter().map(|((t, topic), r)| (t, topic, r))
    }

    pub fn counts(&self, tenant: &TenantId) -> TenantCounts {
        self.counts.get(tenant).copied().unwrap_or_default()
    }

    // Restore: records read back from a snapshot (or, on a single node,
    // from the durable store), without commands.

    /// Puts a session record back as a snapshot holds it.
    pub fn restore_session(&mut self, key: SessionKey, rec: SessionRecord) {
        if rec.persistent {
            self.count(&key.tenant).persistent_sessions += 1;
        }
        for filter in rec.subscriptions.keys() {
            self.count(&namespace(&key.tenant, filter)).subscriptions += 1;
        }
        self.sessions.insert(key, rec);
    }

    /// Puts a retained message back, whatever the limits (it was retained
    /// before they changed).
    pub fn restore_retained(&mut self, message: Retained) {
        let k = (
            message.message.tenant.clone(),
            message.message.topic.clone(),
        );
        if retained_counts(&k.1) {
            let size = message.size();
            let c = self.count(&k.0);
            c.retained_messages += 1;
            c.retained_bytes += size;
        }
        if let Some(old) = self.retained.insert(k.clone(), message) {
            if retained_counts(&k.1) {
                let c = self.count(&k.0);
                c.retained_messages -= 1;
                c.retained_bytes -= old.size();
            }
        }
    }

    /// The snapshot: the records, encoded (`command::encode`).
    pub fn snapshot(&self) -> Vec<u8> {
        super::command::encode(self)
    }

    /// The state a snapshot holds, with its counts rebuilt.
    pub fn from_snapshot(bytes: &[u8]) -> Result<ControlState, super::command::DecodeError> {
        let records: ControlState = super::command::decode(bytes)?;
        let mut state = ControlState::default();
        for (key, rec) in records.sessions {
            state.restore_session(key, rec);
        }
        for (_, r) in records.retained {
            state.restore_retained(r);
        }
        Ok(state)
    }

    /// Every tenant's counts, rebuilt from the records (tests compare them
    /// with the ones kept as commands apply).
    #[cfg(test)]
    pub fn recount(&self) -> BTreeMap<TenantId, TenantCounts> {
        let mut fresh = ControlState::default();
        for (key, rec) in &self.sessions {
            fresh.restore_session(key.clone(), rec.clone());
        }
        for r in self.retained.values() {
            fresh.restore_retained(r.clone());
        }
        fresh.counts
    }

    #[cfg(test)]
    pub fn all_counts(&self) -> &BTreeMap<TenantId, TenantCounts> {
        &self.counts
    }
}

#[cfg(test)]
mod tests;
