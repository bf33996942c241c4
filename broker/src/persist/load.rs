//! Reading the store back at start-up: every record of every table, into
//! [`Restored`] sessions and retained messages for `route/registry.rs` to rebuild.
//!
//! A record that cannot be read stops start-up with its table and key
//! named (except a subscription to a `$tenant/` filter written before that
//! prefix was reserved, which is dropped with a warning); orphans of
//! interrupted deletes are skipped and purged; crash
//! remnants described in decision 0004 are resolved here (bodies of
//! in-flight and released messages, dangling in-flight records).

use std::collections::BTreeMap;

use bytes::Bytes;
use porchlight_storage::{Batch, StorageError, Table};

use super::*;
use crate::codec::{Properties, SubscriptionOptions, Will};
use crate::ids::SessionKey;
use crate::message::{Delivery, Message};
use crate::records::{self, PendingWill, Retained, SessionMeta, StoredSubscription};
use crate::topic::{TopicFilter, TopicLimits};

/// An in-flight record as stored.
#[derive(Debug)]
pub struct RestoredInflight {
    pub packet_id: u16,
    pub seq: u64,
    /// The queue position it was sent from (0 once released).
    pub queue_seq: u64,
    /// Sent, awaiting PUBACK/PUBREC (else: PUBREL sent, awaiting PUBCOMP).
    pub awaiting_ack: bool,
    /// `None`: PUBREL sent, waiting for PUBCOMP.
    pub delivery: Option<Delivery>,
}

/// One durable session as found on disk.
#[derive(Debug)]
pub struct RestoredSession {
    pub key: SessionKey,
    pub expiry_interval: u32,
    /// When it lost its connection (Unix ms); 0 if it had one at the crash.
    pub disconnected_at_ms: u64,
    /// The authenticated user of its latest claim (none in records
    /// written before issue 17).
    pub user: Option<String>,
    pub subscriptions: Vec<(TopicFilter, SubscriptionOptions, Option<u32>)>,
    pub queue: Vec<Delivery>,
    pub inflight: Vec<RestoredInflight>,
    pub incoming: Vec<u16>,
    pub will: Option<(Box<Will>, u64)>,
}

#[derive(Debug, Default)]
pub struct Restored {
    pub sessions: Vec<RestoredSession>,
    pub retained: Vec<Retained>,
}

/// One record of a per-session table, as `Loading::scan_owned` hands it
/// to its reader.
struct Owned<'r> {
    /// The session's key prefix.
    session: &'r [u8],
    /// What follows it in the record's key (a filter, a position, a
    /// packet id).
    suffix: &'r [u8],
    key: &'r [u8],
    value: &'r [u8],
}

/// What `load` has read so far: the sessions, and the records to purge.
struct Loading<'p> {
    persist: &'p Persist,
    sessions: BTreeMap<Vec<u8>, RestoredSession>,
    /// Records of sessions whose session record is missing (orphans of an
    /// interrupted delete), and others found dead: purged at the end.
    orphans: Vec<(Table, Vec<u8>)>,
}

impl Loading<'_> {
    fn corrupt(&self, table: Table, key: &[u8], why: &str) -> StorageError {
        StorageError::Corrupt {
            path: self.persist.store.path().to_owned(),
            detail: format!("table {} key {:02x?}: {why}", table.id(), key),
        }
    }

    fn sessions(&mut self) -> Result<(), StorageError> {
        for r in self.persist.store.scan(SESSIONS) {
            let (k, v) = r?;
            let (key, _) = parse_session_key(&k).map_err(|e| self.corrupt(SESSIONS, &k, e))?;
            let meta = read_session(&v).map_err(|e| self.corrupt(SESSIONS, &k, &e))?;
            self.sessions.insert(
                k.clone(),
                RestoredSession {
                    key,
                    expiry_interval: meta.expiry_interval,
                    disconnected_at_ms: meta.disconnected_at_ms,
                    user: meta.user,
                    subscriptions: Vec::new(),
                    queue: Vec::new(),
                    inflight: Vec::new(),
                    incoming: Vec::new(),
                    will: None,
                },
            );
        }
        Ok(())
    }

    /// The one scan of a per-session table: `read` takes each record into
    /// its session, or returns false to drop it (purged). A record whose
    /// session record is missing is an orphan; one `read` cannot parse
    /// stops start-up with its table and key named.
    fn scan_owned(
        &mut self,
        table: Table,
        mut read: impl FnMut(&mut RestoredSession, Owned<'_>) -> Result<bool, Bad>,
    ) -> Result<(), StorageError> {
        for r in self.persist.store.scan(table) {
            let (k, v) = r?;
            let (_, used) = parse_session_key(&k).map_err(|e| self.corrupt(table, &k, e))?;
            let Some(s) = self.sessions.get_mut(&k[..used]) else {
                self.orphans.push((table, k));
                continue;
            };
            let record = Owned {
                session: &k[..used],
                suffix: &k[used..],
                key: &k,
                value: &v,
            };
            match read(s, record) {
                Ok(true) => {}
                Ok(false) => self.orphans.push((table, k)),
                Err(e) => return Err(self.corrupt(table, &k, e)),
            }
        }
        Ok(())
    }
}

impl Persist {
    /// Reads everything back. A record that cannot be read stops start-up
    /// with the table and key named: nothing is skipped silently.
    pub fn load(&self, limits: TopicLimits) -> Result<Restored, StorageError> {
        let mut l = Loading {
            persist: self,
            sessions: BTreeMap::new(),
            orphans: Vec::new(),
        };
        l.sessions()?;
        l.scan_owned(SUBSCRIPTIONS, |s, r| read_subscription(s, &r, limits))?;
        self.load_queues(&mut l)?;
        l.scan_owned(INFLIGHT, |s, r| {
            s.inflight.push(read_inflight(&r)?);
            Ok(true)
        })?;
        l.scan_owned(INCOMING, |s, r| {
            s.incoming.push(Reader::new(r.suffix).u16()?);
            Ok(true)
        })?;
        l.scan_owned(WILLS, |s, r| {
            s.will = Some(read_will(r.value)?);
            Ok(true)
        })?;
        let retained = self.load_retained(&l)?;
        for s in l.sessions.values_mut() {
            Self::settle_inflight(s, &mut l.orphans);
        }
        // Records of sessions whose session record is gone (a delete a
        // crash interrupted), and other dead records, are purged.
        if !l.orphans.is_empty() {
            let mut b = Batch::default();
            for (table, k) in &l.orphans {
                b.delete(*table, k);
            }
            self.store.write(b)?;
        }
        Ok(Restored {
            sessions: l.sessions.into_values().collect(),
            retained,
        })
    }

    /// The queues: entries in order, each message decoded once however
    /// many entries name its body; then the bodies no entry names are
    /// added to the purge.
    fn load_queues(&self, l: &mut Loading<'_>) -> Result<(), StorageError> {
        let mut interner = Interner::default();
        let mut bodies = self.load_bodies()?;
        // Messages of `V1` entries: given body ids once every id in use is
        // known.
        let mut legacy = Vec::new();
        // `V2` entries whose body is not a record: a `V3` entry read later
        // may carry it.
        let mut unresolved = Vec::new();
        l.scan_owned(QUEUE, |s, r| {
            let seq = Reader::new(r.suffix).u64()?;
            let mut rd = Reader::new(r.value);
            let entry = match rd.version_of(&[V1, V2, V3])? {
                V1 => {
                    let (msg, fields, new) =
                        decode_v1_entry(&mut rd, &s.key.tenant, &mut interner)?;
                    if new {
                        legacy.push(msg.clone());
                    }
                    Ok(fields.with(msg, 0))
                }
                V3 => {
                    let id = rd.u64()?;
                    let (msg, fields) = decode_v1_parts(&mut rd, &s.key.tenant)?;
                    Ok(fields.with(bodies.carried(id, msg, &self.released), 0))
                }
                _ => {
                    let id = rd.u64()?;
                    let fields = DeliveryFields::decode(&mut rd)?;
                    match bodies.message(id, &self.released)? {
                        Some(m) => Ok(fields.with(m, 0)),
                        None => Err((id, fields)),
                    }
                }
            };
            if let Some(id) = entry_id(r.value) {
                self.next_body.fetch_max(id + 1, Ordering::Relaxed);
            }
            match entry {
                Ok(mut d) => {
                    d.seq = seq;
                    s.queue.push(d);
                }
                Err((id, fields)) => {
                    unresolved.push((r.session.to_vec(), r.key.to_vec(), seq, id, fields))
                }
            }
            Ok(true)
        })?;
        for (sk, k, seq, id, fields) in unresolved {
            let Some(s) = l.sessions.get_mut(&sk) else {
                continue;
            };
            match bodies.decoded(id) {
                Some(m) => {
                    let at = s.queue.partition_point(|d| d.seq < seq);
                    s.queue.insert(at, fields.with(m, seq));
                }
                None => {
                    // Its body was released: every queue entry naming it
                    // had been deleted in memory, and a crash (or a teardown
                    // without `close`) kept this one on disk.
                    tracing::warn!(client_id = %s.key.client, seq, "Dropping a queue entry whose message body is gone");
                    l.orphans.push((QUEUE, k));
                }
            }
        }
        for msg in legacy {
            self.adopt_inlined(&msg);
        }
        // A `V2` entry whose body record is gone but whose message a `V3`
        // entry carries: the body is written again, so the entry can be
        // read back from disk alone (spilled).
        for m in bodies.named_unwritten() {
            if let Some(stored) = m.stored.get() {
                Self::keep_body(&mut self.pending.lock(), &m, (stored.id, encode_body(&m)));
            }
        }
        // Bodies no queue entry names (released, or named only by purged
        // entries) are purged too.
        l.orphans.extend(
            bodies
                .unused()
                .map(|id| (BODIES, id.to_be_bytes().to_vec())),
        );
        Ok(())
    }

    fn load_retained(&self, l: &Loading<'_>) -> Result<Vec<Retained>, StorageError> {
        let mut retained = Vec::new();
        for r in self.store.scan(RETAINED) {
            let (k, v) = r?;
            let mut kr = Reader::new(&k);
            let tenant = TenantId::new(kr.str().map_err(|e| l.corrupt(RETAINED, &k, e))?);
            let m = if v.first() == Some(&records::FORMAT) {
                let r: Retained =
                    records::decode(&v).map_err(|e| l.corrupt(RETAINED, &k, &e.to_string()))?;
                if r.message.tenant != tenant {
                    return Err(l.corrupt(RETAINED, &k, "record of another tenant"));
                }
                r
            } else {
                let mut rd = Reader::new(&v);
                let m = (|| {
                    rd.version()?;
                    decode_message(&mut rd, &tenant)
                })()
                .map_err(|e| l.corrupt(RETAINED, &k, e))?;
                Retained::new(Arc::new(m))
            };
            retained.push(m);
        }
        Ok(retained)
    }

    /// In-flight messages awaiting an acknowledgement take their body
    /// from the queue entry they were sent from; one whose body is gone
    /// was acknowledged just before a crash, and is dropped. A body still
    /// there for a released (PUBREC'd) message is never queued again: a
    /// crash came between the two writes of `released`.
    fn settle_inflight(s: &mut RestoredSession, orphans: &mut Vec<(Table, Vec<u8>)>) {
        let mut bodies: std::collections::HashMap<u64, Delivery> = std::collections::HashMap::new();
        let sent: std::collections::HashSet<u64> = s
            .inflight
            .iter()
            .map(|f| f.queue_seq)
            .filter(|q| *q != 0)
            .collect();
        if !sent.is_empty() {
            let queue = std::mem::take(&mut s.queue);
            for d in queue {
                if sent.contains(&d.seq) {
                    bodies.insert(d.seq, d);
                } else {
                    s.queue.push(d);
                }
            }
        }
        let key = s.key.clone();
        s.inflight.retain_mut(|f| {
            if !f.awaiting_ack {
                if bodies.remove(&f.queue_seq).is_some() {
                    orphans.push((QUEUE, Self::seq_key(&key, f.queue_seq)));
                }
                f.queue_seq = 0;
                return true;
            }
            match bodies.remove(&f.queue_seq) {
                Some(d) => {
                    f.delivery = Some(d);
                    true
                }
                None => {
                    orphans.push((INFLIGHT, Self::pkid_key(&key, f.packet_id)));
                    false
                }
            }
        });
    }
}

/// A subscription record into its session; a `$tenant/` filter written
/// before that prefix was reserved is dropped.
fn read_subscription(
    s: &mut RestoredSession,
    r: &Owned<'_>,
    limits: TopicLimits,
) -> Result<bool, Bad> {
    let raw = std::str::from_utf8(r.suffix).map_err(|_| "filter not UTF-8")?;
    let filter = match TopicFilter::parse(raw, limits) {
        Ok(f) => f,
        // Written before `$tenant/` became the gateway prefix (`$tenant/#`
        // was an ordinary filter then): dropped, not a reason to refuse the
        // whole store.
        Err(_) if raw.starts_with(crate::topic::TENANT_PREFIX) => {
            tracing::warn!(
                filter = raw,
                "Dropping a stored $tenant/ subscription that is no longer a valid filter"
            );
            return Ok(false);
        }
        Err(_) => return Err("invalid filter"),
    };
    let sub = if r.value.first() == Some(&records::FORMAT) {
        records::decode::<StoredSubscription>(r.value).map_err(|_| "invalid subscription record")?
    } else {
        let mut rd = Reader::new(r.value);
        rd.version()?;
        let options = options_from(rd.u8()?)?;
        let id = rd.u32()?;
        StoredSubscription {
            options,
            id: (id != 0).then_some(id),
        }
    };
    s.subscriptions.push((filter, sub.options, sub.id));
    Ok(true)
}

fn read_inflight(r: &Owned<'_>) -> Result<RestoredInflight, Bad> {
    let packet_id = Reader::new(r.suffix).u16()?;
    let mut rd = Reader::new(r.value);
    rd.version()?;
    let seq = rd.u64()?;
    let queue_seq = rd.u64()?;
    let awaiting_ack = match rd.u8()? {
        1 => true,
        2 => false,
        _ => return Err("invalid in-flight state"),
    };
    Ok(RestoredInflight {
        packet_id,
        seq,
        queue_seq,
        awaiting_ack,
        delivery: None,
    })
}

/// A session record: the one encoding, or the layout before it.
fn read_session(v: &[u8]) -> Result<SessionMeta, String> {
    if v.first() == Some(&records::FORMAT) {
        return records::decode(v).map_err(|e| e.to_string());
    }
    let mut rd = Reader::new(v);
    rd.version()?;
    Ok(SessionMeta::new(rd.u32()?, rd.u64()?, None))
}

fn read_will(v: &[u8]) -> Result<(Box<Will>, u64), Bad> {
    if v.first() == Some(&records::FORMAT) {
        let w: PendingWill = records::decode(v).map_err(|_| "invalid will record")?;
        return Ok((w.will, w.due_ms));
    }
    let mut rd = Reader::new(v);
    rd.version()?;
    let due = rd.u64()?;
    let qos = rd.qos()?;
    let retain = rd.u8()? != 0;
    let topic = rd.str()?.to_owned();
    let payload = Bytes::copy_from_slice(rd.bytes()?);
    let mut props = Bytes::copy_from_slice(rd.bytes()?);
    let properties = Properties::read(&mut props, crate::codec::PropertyContext::Will)
        .map_err(|_| "invalid will properties")?;
    Ok((
        Box::new(Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        }),
        due,
    ))
}

/// The `BODIES` table as read at start-up: raw records, each decoded
/// into one shared `Message` when a queue entry first names it.
struct Bodies {
    raw: std::collections::HashMap<u64, Vec<u8>>,
    decoded: std::collections::HashMap<u64, Arc<Message>>,
    /// Ids that `V2` entries name.
    named: std::collections::HashSet<u64>,
}

impl Persist {
    fn load_bodies(&self) -> Result<Bodies, StorageError> {
        let mut raw = std::collections::HashMap::new();
        for r in self.store.scan(BODIES) {
            let (k, v) = r?;
            let id = body_id(&k).ok_or_else(|| StorageError::Corrupt {
                path: self.store.path().to_owned(),
                detail: format!("table {} key {:02x?}: invalid body id", BODIES.id(), k),
            })?;
            raw.insert(id, v);
        }
        Ok(Bodies {
            raw,
            decoded: std::collections::HashMap::new(),
            named: std::collections::HashSet::new(),
        })
    }
}

impl Bodies {
    /// The message stored as body `id`, or `None` if there is none. Its
    /// [`StoredBody`] releases the record once no delivery holds it.
    fn message(
        &mut self,
        id: u64,
        released: &Arc<ReleasedBodies>,
    ) -> Result<Option<Arc<Message>>, Bad> {
        self.named.insert(id);
        if let Some(m) = self.decoded.get(&id) {
            return Ok(Some(m.clone()));
        }
        let Some(raw) = self.raw.remove(&id) else {
            return Ok(None);
        };
        let m = decode_body(&mut Reader::new(&raw))?;
        let body = StoredBody::new(id, &m, Arc::downgrade(released)).written();
        let _ = m.stored.set(Arc::new(body));
        let m = Arc::new(m);
        self.decoded.insert(id, m.clone());
        Ok(Some(m))
    }

    /// The message a `V3` entry carries as body `id`: the one already read
    /// for that id if any (entries of many sessions share it), else this
    /// one, whose body record, if there is one, is in use.
    fn carried(&mut self, id: u64, msg: Message, released: &Arc<ReleasedBodies>) -> Arc<Message> {
        if let Some(m) = self.decoded.get(&id) {
            return m.clone();
        }
        let mut body = StoredBody::new(id, &msg, Arc::downgrade(released));
        if self.raw.remove(&id).is_some() {
            body = body.written();
        }
        let _ = msg.stored.set(Arc::new(body));
        let m = Arc::new(msg);
        self.decoded.insert(id, m.clone());
        m
    }

    /// Messages that `V2` entries name and whose body is not a record.
    fn named_unwritten(&self) -> Vec<Arc<Message>> {
        self.named
            .iter()
            .filter_map(|id| self.decoded.get(id))
            .filter(|m| m.stored.get().is_some_and(|s| s.needs_writing()))
            .cloned()
            .collect()
    }

    /// The message read for body `id` so far, if any.
    fn decoded(&self, id: u64) -> Option<Arc<Message>> {
        self.decoded.get(&id).cloned()
    }

    /// Ids of the bodies no entry named.
    fn unused(&self) -> impl Iterator<Item = u64> + '_ {
        self.raw.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::ids::{ClientId, TenantId};

    #[test]
    fn a_stored_tenant_filter_that_no_longer_parses_is_dropped_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = TopicLimits {
            max_length: 1024,
            max_levels: 32,
        };
        let key = SessionKey {
            tenant: TenantId::default_tenant(),
            client: ClientId::new("old"),
        };
        let raw_subscription = |p: &Persist, filter: &str| {
            let mut v = vec![V1, options_byte(SubscriptionOptions::new(QoS::AtLeastOnce))];
            v.extend_from_slice(&0u32.to_be_bytes());
            let mut b = Batch::default();
            b.put(
                SUBSCRIPTIONS,
                &with_suffix(&session_key_bytes(&key), filter.as_bytes()),
                &v,
            );
            p.store.write(b).expect("write");
        };
        {
            let p = Persist::open(dir.path(), StoreOptions::default()).expect("open");
            p.put_session(&key, &SessionMeta::new(600, 0, None))
                .expect("session");
            let good = TopicFilter::parse("a/#", limits).expect("filter");
            p.put_subscription(
                &key,
                &good,
                SubscriptionOptions::new(QoS::AtLeastOnce),
                None,
            )
            .expect("subscription");
            // Legal before `$tenant/` was reserved; no longer a filter.
            raw_subscription(&p, "$tenant/#");
            let r = p.load(limits).expect("loads despite the old record");
            let subs: Vec<&str> = r.sessions[0]
                .subscriptions
                .iter()
                .map(|(f, _, _)| f.as_str())
                .collect();
            assert_eq!(subs, ["a/#"]);
            p.store.flush().expect("flush");
        }
        let p = Persist::open(dir.path(), StoreOptions::default()).expect("reopen");
        assert_eq!(
            p.store.scan(SUBSCRIPTIONS).count(),
            1,
            "the old record was purged"
        );
        // Any other invalid filter is still corruption that stops start-up.
        raw_subscription(&p, "a/#/b");
        assert!(p.load(limits).is_err());
    }
}
