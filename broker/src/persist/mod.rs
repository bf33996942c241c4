//! Durable records of the broker's state, on `porchlight-storage`.
//!
//! Owns the record formats (each value starts with a format-version byte)
//! and the tables they live in; knows nothing of connections. Written to by
//! `state/mod.rs` (sessions, subscriptions, retained: the control state),
//! `session/mod.rs`/`connection/outbound.rs`/`connection/inbound.rs` (queues, in-flight and incoming
//! QoS 2 ids: the data plane) and `route/registry.rs` (wills, disconnect times).
//! Only durable sessions are written: clean sessions never touch the disk.
//! Read back once, at start-up, by `Persist::load` (`load.rs`).
//!
//! Keys: a session key is `[u16 tenant len][tenant][u16 client len][client]`,
//! so every record of a session shares that prefix; integers are big-endian
//! so queue entries sort in order.
//!
//! A message queued for many durable sessions is stored once: its body
//! (topic, payload, properties, expiry, publisher) is a record of the
//! `BODIES` table, written in the same atomic batch as the first queue
//! entries naming it, and deleted in a group commit after the last queue
//! entry naming it is gone (see [`StoredBody`]). The first durable entry
//! of a message carries the message itself and the body's id (`V3`): one
//! record, not two, for the common case of one durable subscriber. The
//! second one writes the body, and it and every later one (`V2`) hold only
//! the body's id and what differs per session. `V1` entries, from before
//! the body table, carry their message and no id.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use porchlight_storage::{Batch, Health, StorageError, Store, StoreOptions, Table, Ticket};

use crate::codec::{QoS, RetainHandling, SubscriptionOptions};
use crate::ids::{ClientId, SessionKey, TenantId};
use crate::message::{Delivery, Message, ReleasedBodies, ShareRef, StoredBody};
use crate::records::{self, PendingWill, Retained, SessionMeta, StoredSubscription};
use crate::topic::{TopicFilter, TopicName};

mod body;
mod load;
mod write;

use body::*;

pub use load::{Restored, RestoredInflight, RestoredSession};
pub use write::Write;

pub const SESSIONS: Table = Table::broker(1);
pub const SUBSCRIPTIONS: Table = Table::broker(2);
pub const QUEUE: Table = Table::broker(3);
pub const INFLIGHT: Table = Table::broker(4);
pub const INCOMING: Table = Table::broker(5);
pub const RETAINED: Table = Table::broker(6);
pub const WILLS: Table = Table::broker(7);
/// Message bodies shared by durable queue entries, by body id.
pub const BODIES: Table = Table::broker(8);
/// The session record comes first: it is deleted first.
const ALL_SESSION_TABLES: [Table; 6] = [SESSIONS, SUBSCRIPTIONS, QUEUE, INFLIGHT, INCOMING, WILLS];

/// Version byte at the front of every value written by this build (a
/// queue entry that names a stored body is `V2`).
const V1: u8 = 1;
/// A queue entry that names its message's record in `BODIES` instead of
/// carrying the message (entries written before it are `V1`, still read).
const V2: u8 = 2;
/// A queue entry that carries its message and names the body id that
/// later entries of the message use (`V1`'s layout after the id).
const V3: u8 = 3;

pub use crate::clock::{instant_from_unix_ms, unix_ms};

/// A `BODIES` key's id.
fn body_id(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

pub fn session_key_bytes(key: &SessionKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.tenant.as_str().len() + key.client.as_str().len());
    put_str(&mut out, key.tenant.as_str());
    put_str(&mut out, key.client.as_str());
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Tenants, client ids and topics are bounded far below u16::MAX.
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// Reads records; every failure names what was being read.
struct Reader<'a> {
    buf: &'a [u8],
}

type Bad = &'static str;

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        if self.buf.len() < n {
            return Err("truncated record");
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, Bad> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Bad> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Bad> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Bad> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn str(&mut self) -> Result<&'a str, Bad> {
        let n = usize::from(self.u16()?);
        std::str::from_utf8(self.take(n)?).map_err(|_| "invalid UTF-8")
    }

    fn bytes(&mut self) -> Result<&'a [u8], Bad> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn version(&mut self) -> Result<(), Bad> {
        match self.u8()? {
            V1 => Ok(()),
            _ => Err("unknown record version"),
        }
    }

    /// The version byte of a record that has several (queue entries).
    fn version_of(&mut self, known: &[u8]) -> Result<u8, Bad> {
        let v = self.u8()?;
        known
            .contains(&v)
            .then_some(v)
            .ok_or("unknown record version")
    }

    fn qos(&mut self) -> Result<QoS, Bad> {
        QoS::from_u8(self.u8()?).ok_or("invalid QoS")
    }
}

fn parse_session_key(b: &[u8]) -> Result<(SessionKey, usize), Bad> {
    let mut r = Reader::new(b);
    let tenant = r.str()?;
    let client = r.str()?;
    let used = b.len() - r.buf.len();
    Ok((
        SessionKey {
            tenant: TenantId::new(tenant),
            client: ClientId::new(client),
        },
        used,
    ))
}

fn encode_message(out: &mut Vec<u8>, m: &Message) {
    put_str(out, &m.topic);
    put_bytes(out, &m.payload);
    out.push(m.qos as u8);
    out.push(u8::from(m.retain));
    put_bytes(out, &m.forwarded_properties);
    out.extend_from_slice(&m.expires_at.map_or(0, unix_ms).to_be_bytes());
    match &m.publisher {
        Some(p) => {
            out.push(1);
            put_str(out, p.client.as_str());
        }
        None => out.push(0),
    }
}

fn decode_message(r: &mut Reader<'_>, tenant: &TenantId) -> Result<Message, Bad> {
    let topic = TopicName::trusted(r.str()?.to_owned());
    let payload = Bytes::copy_from_slice(r.bytes()?);
    let qos = r.qos()?;
    let retain = r.u8()? != 0;
    let forwarded_properties = Bytes::copy_from_slice(r.bytes()?);
    let expires = r.u64()?;
    // Only no-local routing reads the publisher, and a stored message was
    // routed already: its tenant is taken to be the session's (the caller's
    // `tenant`), which a gateway's message may not share; nothing reads it.
    let publisher = match r.u8()? {
        0 => None,
        _ => Some(SessionKey {
            tenant: tenant.clone(),
            client: ClientId::new(r.str()?),
        }),
    };
    Ok(Message {
        tenant: tenant.clone(),
        topic,
        payload,
        qos,
        retain,
        forwarded_properties,
        expires_at: (expires != 0).then(|| instant_from_unix_ms(expires)),
        received_at: None,
        publisher,
        stored: std::sync::OnceLock::new(),
    })
}

#[cfg(test)]
fn options_byte(o: SubscriptionOptions) -> u8 {
    (o.qos as u8)
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

fn options_from(b: u8) -> Result<SubscriptionOptions, Bad> {
    Ok(SubscriptionOptions {
        qos: QoS::from_u8(b & 3).ok_or("invalid QoS")?,
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: match (b >> 4) & 3 {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err("invalid retain handling"),
        },
    })
}

fn with_suffix(prefix: &[u8], suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + suffix.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(suffix);
    k
}

/// Writes held back until just before the next group-commit fsync (see
/// `Persist::write_pending`), keyed by session key bytes.
#[derive(Debug, Default)]
struct Pending {
    /// Queue bodies: (session, queue position) → encoded record.
    bodies: std::collections::HashMap<(Vec<u8>, u64), Vec<u8>>,
    /// QoS 1 in-flight records: (session, packet id) → (order, position).
    refs: std::collections::HashMap<(Vec<u8>, u16), (u64, u64)>,
    /// Incoming QoS 2 packet ids to record.
    incoming: std::collections::HashSet<(Vec<u8>, u16)>,
    /// Message bodies to store: body id → its handle (to mark it written)
    /// and encoded record.
    messages: std::collections::HashMap<u64, (std::sync::Weak<StoredBody>, Vec<u8>)>,
    /// Bodies no queue entry names any more, taken from `released`: kept
    /// here until the batch deleting them is in.
    released: Vec<u64>,
}

/// The broker's handle on the store.
///
/// Per-message records (queue bodies, QoS 1 in-flight records, incoming
/// QoS 2 ids) are *deferred*: they only need to be on disk by the fsync
/// that the acknowledgement waiting on them waits for. `Store::defer` gives
/// each deferred write a ticket, and the group committer calls
/// `write_pending` just before every fsync, under the barrier, to apply
/// them all as **one atomic batch**. So a message acknowledged before that
/// fsync never touches sled, and a QoS 2 publish's queue entries and its
/// packet id reach the disk together or not at all.
#[derive(Debug)]
pub struct Persist {
    store: Store,
    pending: parking_lot::Mutex<Pending>,
    /// Where a message's [`StoredBody`] puts its id when the message is
    /// gone; taken by the next `write_pending`.
    released: Arc<ReleasedBodies>,
    /// The next body id (one past the largest stored).
    next_body: AtomicU64,
    /// Set by [`Persist::close`]: from then on nothing is deleted, as the
    /// messages still in memory are dropped with the process, not consumed.
    closed: AtomicBool,
}

impl Persist {
    /// Opens the store and registers `write_pending` with its committer.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Arc<Persist>, StorageError> {
        let store = Store::open(path, opts)?;
        let next_body = match store.last_key(BODIES)? {
            Some(k) => body_id(&k).map_or(1, |id| id + 1),
            None => 1,
        };
        let persist = Arc::new(Persist {
            store,
            pending: parking_lot::Mutex::new(Pending::default()),
            released: Arc::default(),
            next_body: AtomicU64::new(next_body),
            closed: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&persist);
        persist.store.add_pre_flush(move || match weak.upgrade() {
            Some(p) => p.write_pending().map_err(|e| e.to_string()),
            None => Ok(()),
        });
        Ok(persist)
    }

    /// Applies every deferred write as one atomic batch. Called by the
    /// committer under the barrier; `flush_pending` for everyone else.
    fn write_pending(&self) -> Result<(), StorageError> {
        // Nobody else touches `pending` meanwhile (the barrier's write side
        // is held): it is cleared only once the batch is in, so a failed
        // batch keeps everything for the next attempt.
        let mut pending = self.pending.lock();
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let released = std::mem::take(&mut *self.released.lock());
        pending.released.extend(released);
        let mut b = Batch::default();
        // A body deferred and released between two commits is never
        // written.
        let gone: std::collections::HashSet<u64> = pending.released.iter().copied().collect();
        for (id, (_, value)) in &pending.messages {
            if !gone.contains(id) {
                b.put(BODIES, &id.to_be_bytes(), value);
            }
        }
        for id in &pending.released {
            if !pending.messages.contains_key(id) {
                b.delete(BODIES, &id.to_be_bytes());
            }
        }
        for ((skey, seq), value) in &pending.bodies {
            b.put(QUEUE, &with_suffix(skey, &seq.to_be_bytes()), value);
        }
        for ((skey, packet_id), (order, queue_seq)) in &pending.refs {
            b.put(
                INFLIGHT,
                &with_suffix(skey, &packet_id.to_be_bytes()),
                &Self::inflight_value(*order, *queue_seq, 1),
            );
        }
        for (skey, packet_id) in &pending.incoming {
            b.put(
                INCOMING,
                &with_suffix(skey, &packet_id.to_be_bytes()),
                &[V1],
            );
        }
        self.store.write_atomic(b)?;
        let done = std::mem::take(&mut *pending);
        drop(pending);
        // Outside the lock: a handle upgraded here may be the last one, and
        // its drop takes `released`'s lock.
        for (handle, _) in done.messages.into_values() {
            if let Some(body) = handle.upgrade() {
                body.set_written();
            }
        }
        Ok(())
    }

    /// Writes the deferred records now (`--fsync never`), keeping deferred
    /// writers out meanwhile.
    pub fn flush_pending(&self) {
        if let Err(e) = self.store.exclusive(|| self.write_pending()) {
            tracing::warn!(error = %e, "Cannot write deferred records");
        }
    }

    /// Shutdown: writes the deferred records, then closes the store. The
    /// messages still queued in memory are dropped after this without
    /// releasing their bodies: their queue entries stay for the restart.
    pub fn close(&self) -> Result<(), StorageError> {
        self.flush_pending();
        self.closed.store(true, Ordering::Release);
        self.store.close()
    }

    /// Records a QoS 1 send, to be written with the next fsync.
    pub fn send_deferred(&self, key: &SessionKey, packet_id: u16, order: u64, queue_seq: u64) {
        let skey = session_key_bytes(key);
        self.store.defer(|| {
            self.pending
                .lock()
                .refs
                .insert((skey, packet_id), (order, queue_seq));
        });
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn health(&self) -> Health {
        self.store.health()
    }

    /// A durable session's own record (`records::SessionMeta`).
    pub fn put_session(
        &self,
        key: &SessionKey,
        meta: &SessionMeta,
    ) -> Result<Ticket, StorageError> {
        let mut b = Batch::default();
        b.put(SESSIONS, &session_key_bytes(key), &records::encode(meta));
        self.store.write(b)
    }

    /// Deletes every record of a session, in every table, the session
    /// record first: what a crash leaves behind is orphans, which `load`
    /// ignores and purges.
    pub fn delete_session(&self, key: &SessionKey) -> Result<Ticket, StorageError> {
        let prefix = session_key_bytes(key);
        let (r, _) = self.store.defer(|| {
            let mut p = self.pending.lock();
            p.bodies.retain(|(skey, _), _| *skey != prefix);
            p.refs.retain(|(skey, _), _| *skey != prefix);
            p.incoming.retain(|(skey, _)| *skey != prefix);
        });
        let () = r;
        let mut b = Batch::default();
        for table in ALL_SESSION_TABLES {
            for k in self.store.keys_with_prefix(table, &prefix)? {
                b.delete(table, &k);
            }
        }
        self.store.write(b)
    }

    pub fn put_subscription(
        &self,
        key: &SessionKey,
        filter: &TopicFilter,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Result<Ticket, StorageError> {
        let mut b = Batch::default();
        b.put(
            SUBSCRIPTIONS,
            &with_suffix(&session_key_bytes(key), filter.as_str().as_bytes()),
            &records::encode(&StoredSubscription { options, id }),
        );
        self.store.write(b)
    }

    pub fn delete_subscription(
        &self,
        key: &SessionKey,
        filter: &TopicFilter,
    ) -> Result<Ticket, StorageError> {
        let mut b = Batch::default();
        b.delete(
            SUBSCRIPTIONS,
            &with_suffix(&session_key_bytes(key), filter.as_str().as_bytes()),
        );
        self.store.write(b)
    }

    fn retained_key(tenant: &TenantId, topic: &str) -> Vec<u8> {
        let mut k = Vec::new();
        put_str(&mut k, tenant.as_str());
        k.extend_from_slice(topic.as_bytes());
        k
    }

    /// Stores a retained message, or deletes it for an empty payload.
    pub fn put_retained(&self, r: &Retained) -> Result<Ticket, StorageError> {
        let m = &r.message;
        let key = Self::retained_key(&m.tenant, &m.topic);
        let mut b = Batch::default();
        if m.payload.is_empty() {
            b.delete(RETAINED, &key);
        } else {
            b.put(RETAINED, &key, &records::encode(r));
        }
        self.store.write(b)
    }

    /// Stores a retained message's record already encoded
    /// (`records::encode` of a non-empty `Retained`).
    pub fn put_retained_record(
        &self,
        tenant: &TenantId,
        topic: &str,
        record: &[u8],
    ) -> Result<Ticket, StorageError> {
        let mut b = Batch::default();
        b.put(RETAINED, &Self::retained_key(tenant, topic), record);
        self.store.write(b)
    }

    /// Deletes a retained message found expired (only if not replaced).
    pub fn delete_retained(&self, tenant: &TenantId, topic: &str) -> Result<Ticket, StorageError> {
        let mut b = Batch::default();
        b.delete(RETAINED, &Self::retained_key(tenant, topic));
        self.store.write(b)
    }

    fn seq_key(key: &SessionKey, seq: u64) -> Vec<u8> {
        with_suffix(&session_key_bytes(key), &seq.to_be_bytes())
    }

    fn pkid_key(key: &SessionKey, pkid: u16) -> Vec<u8> {
        with_suffix(&session_key_bytes(key), &pkid.to_be_bytes())
    }

    /// A delivery joins a durable session's queue (deferred); `dropped`
    /// are queued ones the overflow policy removed to make room.
    pub fn push_queue(
        &self,
        key: &SessionKey,
        d: &Delivery,
        dropped: &[u64],
    ) -> Result<Ticket, StorageError> {
        self.store.check_writable(true)?;
        let skey = session_key_bytes(key);
        let (r, t) = self.store.defer(|| {
            let mut b = Batch::default();
            let (v, body) = self.queue_entry(d);
            {
                let mut p = self.pending.lock();
                if let Some(body) = body {
                    Self::keep_body(&mut p, &d.msg, body);
                }
                p.bodies.insert((skey.clone(), d.seq), v);
                for seq in dropped {
                    if p.bodies.remove(&(skey.clone(), *seq)).is_none() {
                        b.delete(QUEUE, &Self::seq_key(key, *seq));
                    }
                }
            }
            let written = self.store.write(b).map(|_| ());
            if written.is_err() {
                // Refused: the caller drops the delivery, so must the disk.
                self.pending.lock().bodies.remove(&(skey, d.seq));
            }
            written
        });
        r.map(|()| t)
    }

    /// A queued body is gone (expired, dropped, sent at QoS 0).
    pub fn remove_queued(&self, key: &SessionKey, seq: u64) -> Result<Ticket, StorageError> {
        let skey = session_key_bytes(key);
        let (r, t) = self.store.defer(|| {
            if self.pending.lock().bodies.remove(&(skey, seq)).is_some() {
                return Ok(());
            }
            let mut b = Batch::default();
            b.delete(QUEUE, &Self::seq_key(key, seq));
            self.store.write(b).map(|_| ())
        });
        r.map(|()| t)
    }

    /// A QoS 2 send. Its in-flight record is deferred like a QoS 1 one, so
    /// it lands in the same atomic batch as the body (if that is still
    /// deferred) and as the publisher's incoming packet id. The PUBLISH
    /// waits for the returned ticket.
    pub fn send(&self, key: &SessionKey, packet_id: u16, order: u64, queue_seq: u64) -> Ticket {
        let skey = session_key_bytes(key);
        let ((), t) = self.store.defer(|| {
            self.pending
                .lock()
                .refs
                .insert((skey, packet_id), (order, queue_seq));
        });
        t
    }

    fn inflight_value(order: u64, queue_seq: u64, state: u8) -> Vec<u8> {
        let mut v = vec![V1];
        v.extend_from_slice(&order.to_be_bytes());
        v.extend_from_slice(&queue_seq.to_be_bytes());
        v.push(state);
        v
    }

    /// PUBREC received: only the packet id is left to release; the body
    /// goes (after the record saying so, so QoS 2 is never resent).
    pub fn released(
        &self,
        key: &SessionKey,
        packet_id: u16,
        order: u64,
        queue_seq: u64,
    ) -> Result<Ticket, StorageError> {
        let skey = session_key_bytes(key);
        let (r, t) = self.store.defer(|| {
            let body_pending = {
                let mut p = self.pending.lock();
                p.refs.remove(&(skey.clone(), packet_id));
                p.bodies.remove(&(skey, queue_seq)).is_some()
            };
            let mut b = Batch::default();
            b.put(
                INFLIGHT,
                &Self::pkid_key(key, packet_id),
                &Self::inflight_value(order, queue_seq, 2),
            );
            if queue_seq != 0 && !body_pending {
                b.delete(QUEUE, &Self::seq_key(key, queue_seq));
            }
            self.store.write(b).map(|_| ())
        });
        r.map(|()| t)
    }

    /// The client acknowledged (or refused) a message: body first, then the
    /// in-flight record (what was never written is simply forgotten). A
    /// crash in between leaves a record pointing at nothing, which `load`
    /// drops (the client had the message).
    pub fn acknowledged(
        &self,
        key: &SessionKey,
        packet_id: u16,
        queue_seq: u64,
    ) -> Result<Ticket, StorageError> {
        let skey = session_key_bytes(key);
        let (r, t) = self.store.defer(|| {
            let (ref_pending, body_pending) = {
                let mut p = self.pending.lock();
                (
                    p.refs.remove(&(skey.clone(), packet_id)).is_some(),
                    p.bodies.remove(&(skey, queue_seq)).is_some(),
                )
            };
            let mut b = Batch::default();
            if queue_seq != 0 && !body_pending {
                b.delete(QUEUE, &Self::seq_key(key, queue_seq));
            }
            if !ref_pending {
                b.delete(INFLIGHT, &Self::pkid_key(key, packet_id));
            }
            self.store.write(b).map(|_| ())
        });
        r.map(|()| t)
    }

    /// An incoming QoS 2 packet id awaiting PUBREL (exactly once across a
    /// restart): recorded deferred, or forgotten.
    pub fn incoming(
        &self,
        key: &SessionKey,
        packet_id: u16,
        present: bool,
    ) -> Result<Ticket, StorageError> {
        if present {
            self.store.check_writable(true)?;
        }
        let skey = session_key_bytes(key);
        let (r, t) = self.store.defer(|| {
            if present {
                self.pending.lock().incoming.insert((skey, packet_id));
                return Ok(());
            }
            if self.pending.lock().incoming.remove(&(skey, packet_id)) {
                return Ok(());
            }
            let mut b = Batch::default();
            b.delete(INCOMING, &Self::pkid_key(key, packet_id));
            self.store.write(b).map(|_| ())
        });
        r.map(|()| t)
    }

    /// A will waiting for its delay or the session's end.
    pub fn put_will(&self, key: &SessionKey, will: &PendingWill) -> Result<Ticket, StorageError> {
        let mut b = Batch::default();
        b.put(WILLS, &session_key_bytes(key), &records::encode(will));
        self.store.write(b)
    }

    pub fn delete_will(&self, key: &SessionKey) -> Result<Ticket, StorageError> {
        let mut b = Batch::default();
        b.delete(WILLS, &session_key_bytes(key));
        self.store.write(b)
    }
}

#[cfg(test)]
mod tests;
