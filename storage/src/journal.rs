//! The journal of a large atomic batch (`Store::write_atomic`): its
//! encoding, its chunks in sled's meta tree, and its replay at open.
//!
//! A batch too large for one sled `apply_batch` (decision 0006) is written
//! here first, then applied operation by operation, then removed; sled
//! recovers a prefix of its log, so a journal found at open is applied
//! again whole. Used by `store.rs` only.

/// In the meta tree while a large atomic batch is being applied (see
/// `Store::write_atomic`): the number of journal chunks, written after
/// them.
pub(crate) const JOURNAL_KEY: &[u8] = b"journal";
/// Prefix of the journal's chunks, each followed by its u32 index.
pub(crate) const JOURNAL_CHUNK_PREFIX: &[u8] = b"journal-chunk/";
/// Largest journal chunk. sled writes a value over about 128 KiB to a blob
/// file of its own, which its flush does not fsync: a journal in one large
/// value could be lost to a power cut while the operations after it
/// survive. Chunks this small stay inside the fsynced log.
pub(crate) const JOURNAL_CHUNK: usize = 64 * 1024;
/// Version byte of a journal record.
pub(crate) const JOURNAL_V1: u8 = 1;

pub(crate) type Ops = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A journal record: a version byte, then per operation the key and, for
/// a put, the value, each with a u32 length; a delete has no value.
pub(crate) fn encode_journal(ops: &Ops) -> Vec<u8> {
    let size: usize = ops
        .iter()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(1 + size);
    out.push(JOURNAL_V1);
    for (k, v) in ops {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        match v {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
    out
}

pub(crate) fn decode_journal(mut b: &[u8]) -> Result<Ops, String> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err("truncated journal record".into());
        }
        let (a, rest) = b.split_at(n);
        *b = rest;
        Ok(a)
    }
    fn len(b: &mut &[u8]) -> Result<usize, String> {
        let l = take(b, 4)?;
        Ok(u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
    }
    if take(&mut b, 1)? != [JOURNAL_V1] {
        return Err("unknown journal record version".into());
    }
    let mut ops = Vec::new();
    while !b.is_empty() {
        let n = len(&mut b)?;
        let key = take(&mut b, n)?.to_vec();
        let value = match take(&mut b, 1)?[0] {
            0 => None,
            1 => {
                let n = len(&mut b)?;
                Some(take(&mut b, n)?.to_vec())
            }
            _ => return Err("bad journal operation".into()),
        };
        ops.push((key, value));
    }
    Ok(ops)
}

pub(crate) fn chunk_key(i: u32) -> Vec<u8> {
    let mut k = JOURNAL_CHUNK_PREFIX.to_vec();
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// Writes an encoded journal as chunks, then the record naming how many:
/// sled recovers a prefix of its log, so a record on disk means every
/// chunk is.
pub(crate) fn write_journal(meta: &sled::Tree, encoded: &[u8]) -> Result<(), sled::Error> {
    let mut n = 0u32;
    for chunk in encoded.chunks(JOURNAL_CHUNK) {
        meta.insert(chunk_key(n), chunk)?;
        n += 1;
    }
    meta.insert(JOURNAL_KEY, &n.to_be_bytes())?;
    Ok(())
}

/// The encoded journal, if its record is there; an error names what is
/// missing or damaged.
pub(crate) fn read_journal(meta: &sled::Tree) -> Result<Option<Vec<u8>>, String> {
    let Some(record) = meta.get(JOURNAL_KEY).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let n: [u8; 4] = record
        .as_ref()
        .try_into()
        .map_err(|_| "journal record of the wrong size".to_string())?;
    let mut out = Vec::new();
    for i in 0..u32::from_be_bytes(n) {
        let chunk = meta
            .get(chunk_key(i))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("journal chunk {i} missing"))?;
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}

/// Removes the journal: its record first (a crash between leaves chunks
/// that nothing reads and the next journal overwrites), then its chunks.
pub(crate) fn clear_journal(meta: &sled::Tree) -> Result<(), sled::Error> {
    meta.remove(JOURNAL_KEY)?;
    for k in meta.scan_prefix(JOURNAL_CHUNK_PREFIX).keys() {
        meta.remove(k?)?;
    }
    Ok(())
}

/// Inserts and removes one by one, in order.
pub(crate) fn apply_ops(tree: &sled::Tree, ops: Ops) -> Result<(), sled::Error> {
    for (key, value) in ops {
        match value {
            Some(v) => tree.insert(key, v).map(|_| ())?,
            None => tree.remove(key).map(|_| ())?,
        }
    }
    Ok(())
}

/// Applies the journal of a large atomic batch a crash interrupted, whole,
/// and removes it (`Store::write_atomic`).
pub(crate) fn replay_journal(
    db: &sled::Db,
    meta: &sled::Tree,
    data: &sled::Tree,
) -> Result<(), String> {
    let Some(encoded) = read_journal(meta)? else {
        return Ok(());
    };
    let ops = decode_journal(&encoded)?;
    let n = ops.len();
    apply_ops(data, ops).map_err(|e| e.to_string())?;
    clear_journal(meta).map_err(|e| e.to_string())?;
    db.flush().map_err(|e| e.to_string())?;
    tracing::info!(writes = n, "Replayed an atomic batch a crash interrupted");
    Ok(())
}
