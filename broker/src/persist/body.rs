//! Queue entry and body record formats: a message stored once for every
//! durable queue entry naming it. The first entry of a message carries it
//! and its body id (`V3`); the second defers the body record (`BODIES`),
//! and it and every later entry (`V2`) hold only the id and the
//! per-session fields; `V1` entries, from before the body table, carry
//! their message and no id. Written through `Persist::push_queue`
//! (`mod.rs`), read back at start-up by `load.rs` and for spilled entries
//! by [`Persist::read_queued`].

use super::*;

/// A `BODIES` record: the message and its tenant.
pub(super) fn encode_body(m: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + m.tenant.as_str().len() + m.size());
    out.push(V1);
    put_str(&mut out, m.tenant.as_str());
    encode_message(&mut out, m);
    out
}

pub(super) fn decode_body(r: &mut Reader<'_>) -> Result<Message, Bad> {
    r.version()?;
    let tenant = TenantId::new(r.str()?);
    decode_message(r, &tenant)
}

/// A `V2` queue entry: the body's id, then what differs per session.
pub(super) fn encode_queue_entry(out: &mut Vec<u8>, body: u64, d: &Delivery) {
    out.push(V2);
    out.extend_from_slice(&body.to_be_bytes());
    encode_delivery_fields(out, d);
}

/// What a delivery adds to its message: QoS, retain flag, subscription
/// identifiers, shared subscription.
pub(super) fn encode_delivery_fields(out: &mut Vec<u8>, d: &Delivery) {
    out.push(d.qos as u8);
    out.push(u8::from(d.retain));
    out.extend_from_slice(&(d.subscription_ids.len() as u16).to_be_bytes());
    for id in &d.subscription_ids {
        out.extend_from_slice(&id.to_be_bytes());
    }
    match &d.share {
        Some(s) => {
            out.push(1);
            put_str(out, &s.group);
            put_str(out, &s.filter);
        }
        None => out.push(0),
    }
}

/// The per-session fields of a queue entry (`encode_delivery_fields`).
pub(super) struct DeliveryFields {
    qos: QoS,
    retain: bool,
    subscription_ids: Box<[u32]>,
    share: Option<Arc<ShareRef>>,
}

impl DeliveryFields {
    pub(super) fn decode(r: &mut Reader<'_>) -> Result<DeliveryFields, Bad> {
        let qos = r.qos()?;
        let retain = r.u8()? != 0;
        let n = r.u16()?;
        let mut subscription_ids = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            subscription_ids.push(r.u32()?);
        }
        let share = match r.u8()? {
            0 => None,
            _ => Some(Arc::new(ShareRef {
                group: Arc::from(r.str()?),
                filter: Arc::from(r.str()?),
            })),
        };
        Ok(DeliveryFields {
            qos,
            retain,
            subscription_ids: subscription_ids.into(),
            share,
        })
    }

    pub(super) fn with(self, msg: Arc<Message>, seq: u64) -> Delivery {
        Delivery {
            msg,
            qos: self.qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids,
            share: self.share,
            seq,
        }
    }
}

/// Messages of `V1` queue entries read back at start-up, by their stored
/// bytes and tenant: such entries carry a copy of the message each, and
/// one queued to many sessions comes back as one shared `Message`.
pub(crate) type Interner = std::collections::HashMap<Vec<u8>, Arc<Message>>;

/// A `V1` queue entry (after its version byte): the message, the
/// per-session fields, then the message's tenant when it is not the
/// session's (a gateway's; older entries lack it).
pub(super) fn decode_v1_parts(
    r: &mut Reader<'_>,
    tenant: &TenantId,
) -> Result<(Message, DeliveryFields), Bad> {
    let msg = decode_message(r, tenant)?;
    v1_rest(r, msg, tenant)
}

/// What follows the message in a `V1` entry.
pub(super) fn v1_rest(
    r: &mut Reader<'_>,
    mut msg: Message,
    tenant: &TenantId,
) -> Result<(Message, DeliveryFields), Bad> {
    let fields = DeliveryFields::decode(r)?;
    if !r.buf.is_empty() {
        let t = r.str()?;
        if t != tenant.as_str() {
            msg.tenant = TenantId::new(t);
        }
    }
    Ok((msg, fields))
}

/// [`decode_v1_parts`], sharing one `Message` per stored message.
pub(super) fn decode_v1_entry(
    r: &mut Reader<'_>,
    tenant: &TenantId,
    interner: &mut Interner,
) -> Result<(Arc<Message>, DeliveryFields, bool), Bad> {
    let start = r.buf;
    let msg = decode_message(r, tenant)?;
    let raw = &start[..start.len() - r.buf.len()];
    let (msg, fields) = v1_rest(r, msg, tenant)?;
    let mut key = Vec::with_capacity(2 + msg.tenant.as_str().len() + raw.len());
    put_str(&mut key, msg.tenant.as_str());
    key.extend_from_slice(raw);
    let mut new = false;
    let msg = interner
        .entry(key)
        .or_insert_with(|| {
            new = true;
            Arc::new(msg)
        })
        .clone();
    Ok((msg, fields, new))
}

/// The body id a queue entry names or carries (`V2`, `V3`).
pub(super) fn entry_id(entry: &[u8]) -> Option<u64> {
    match entry {
        [V2 | V3, id @ ..] => body_id(id.get(..8)?),
        _ => None,
    }
}

impl Persist {
    /// The queue entry of a delivery to a durable session. The message's
    /// first one carries the message and a body id (`V3`); a later
    /// one names the body (`V2`), which the first of them defers, under
    /// the lock the caller's entry is deferred under: the body is in the
    /// same commit as the entry, or an earlier one.
    pub(super) fn queue_entry(&self, d: &Delivery) -> (Vec<u8>, Option<(u64, Vec<u8>)>) {
        let mut created = false;
        let stored = d.msg.stored.get_or_init(|| {
            created = true;
            let id = self.next_body.fetch_add(1, Ordering::Relaxed);
            Arc::new(StoredBody::new(id, &d.msg, Arc::downgrade(&self.released)))
        });
        let mut v = Vec::with_capacity(24 + 4 * d.subscription_ids.len());
        if created {
            v.reserve(32 + d.msg.size());
            v.push(V3);
            v.extend_from_slice(&stored.id.to_be_bytes());
            encode_message(&mut v, &d.msg);
            encode_delivery_fields(&mut v, d);
            put_str(&mut v, d.msg.tenant.as_str());
            return (v, None);
        }
        encode_queue_entry(&mut v, stored.id, d);
        let body = stored
            .needs_writing()
            .then(|| (stored.id, encode_body(&d.msg)));
        (v, body)
    }

    /// Defers a body `queue_entry` found unwritten, unless another entry
    /// deferred it meanwhile.
    pub(super) fn keep_body(pending: &mut Pending, msg: &Message, (id, body): (u64, Vec<u8>)) {
        if let Some(stored) = msg.stored.get() {
            if stored.mark_pending() {
                pending.messages.insert(id, (Arc::downgrade(stored), body));
            }
        }
    }

    /// Gives a message read from a `V1` entry (its body inside) a body id
    /// that is not on disk yet, so its entries can be kept on disk only,
    /// and a later entry naming it writes the body.
    pub(super) fn adopt_inlined(&self, msg: &Message) {
        let id = self.next_body.fetch_add(1, Ordering::Relaxed);
        let _ = msg.stored.set(Arc::new(StoredBody::new(
            id,
            msg,
            Arc::downgrade(&self.released),
        )));
    }

    /// Reads back a queue entry kept on disk only (`session/mod.rs`'s spill),
    /// with its message, from the deferred writes or the store. `None`:
    /// the entry is not there (a bug or a damaged store; logged).
    pub fn read_queued(
        &self,
        key: &SessionKey,
        seq: u64,
        body: &Arc<StoredBody>,
    ) -> Result<Option<Delivery>, StorageError> {
        // Entry and body from the deferred writes, under one lock; what is
        // not there any more was committed, and is read from the store.
        let (record, pending_body) = {
            let p = self.pending.lock();
            let record = p.bodies.get(&(session_key_bytes(key), seq)).cloned();
            (record, p.messages.get(&body.id).map(|(_, v)| v.clone()))
        };
        let record = match record {
            Some(v) => Some(v),
            None => self.store.get(QUEUE, &Self::seq_key(key, seq))?,
        };
        let Some(record) = record else {
            return Ok(None);
        };
        let corrupt = |why: &str| StorageError::Corrupt {
            path: self.store.path().to_owned(),
            detail: format!("queue entry {seq} of {}: {why}", key.client),
        };
        let mut r = Reader::new(&record);
        let mut loaded = body.loaded.lock();
        let (fields, msg) = match r.version_of(&[V1, V2, V3]).map_err(corrupt)? {
            v @ (V1 | V3) => {
                if v == V3 && r.u64().map_err(corrupt)? != body.id {
                    return Err(corrupt("names another body"));
                }
                let (msg, fields) = decode_v1_parts(&mut r, &key.tenant).map_err(corrupt)?;
                let msg = match loaded.upgrade() {
                    Some(m) => m,
                    None => body.adopt(msg, &mut loaded),
                };
                (fields, msg)
            }
            _ => {
                let named = r.u64().map_err(corrupt)?;
                if named != body.id {
                    return Err(corrupt("names another body"));
                }
                let fields = DeliveryFields::decode(&mut r).map_err(corrupt)?;
                let msg = match loaded.upgrade() {
                    Some(m) => m,
                    None => {
                        let raw = match pending_body {
                            Some(v) => Some(v),
                            None => self.store.get(BODIES, &body.id.to_be_bytes())?,
                        };
                        let Some(raw) = raw else {
                            return Ok(None);
                        };
                        let m = decode_body(&mut Reader::new(&raw)).map_err(corrupt)?;
                        body.adopt(m, &mut loaded)
                    }
                };
                (fields, msg)
            }
        };
        Ok(Some(fields.with(msg, seq)))
    }
}
