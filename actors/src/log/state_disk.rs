//! The mesh state on disk: one entry per record in the `state` tree of
//! the node's store, each with every seal of its registers; a series'
//! archives each in their own entry of the `state-archives` tree.
//!
//! A node keeps the signatures of its state here only. In memory a
//! register keeps whether it is sealed ([`Seal::Stored`]); its signature
//! (64 bytes, most of a sealed state's size) is read back from the record
//! as last written when the record is sent to a peer. A record is written
//! with every signature it has (those in memory, new since the last write,
//! and those on disk), and only then are the ones in memory dropped: a
//! crash at any point leaves on disk whole records, each the last one
//! written.
//!
//! A series' archives (up to 32, with a register per holder each) are
//! most of its record: each is written apart, and only when it changed
//! (some register of it carries its signature in memory), so a run writes
//! the series' head and the one archive it touched, not all 32.
//!
//! [`Seal::Stored`]: crate::seal::Seal::Stored

use std::collections::BTreeMap;

use super::mesh::MeshState;
use super::records::{ArchiveRec, Record, RecordKey, Series};
use super::signing::{archive_seals, fill_seals, seals_mut};
use crate::store::kv::KvStore;
use crate::store::StoreError;

/// Format of a stored state record (its first byte). 2: a series' archives
/// are in [`ARCHIVE_TREE`] (format 1 kept them in the series' record; read
/// still, and written again in format 2 at start).
pub const STATE_VERSION: u8 = 2;
const WHOLE_SERIES: u8 = 1;
pub const STATE_TREE: &str = "state";
/// (series key, archive id) → the archive's registers.
pub const ARCHIVE_TREE: &str = "state-archives";

/// A record key as stored. Its CBOR is self-delimiting: no key is the
/// beginning of another, so a series' key is the prefix of its archives'.
pub fn key_bytes(k: &RecordKey) -> Vec<u8> {
    let mut out = Vec::new();
    // Keys are strings: they always encode.
    let _ = ciborium::into_writer(k, &mut out);
    out
}

fn archive_key(series: &[u8], id: &str) -> Vec<u8> {
    [series, id.as_bytes()].concat()
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Index { reason: format!("a stored state {what} is corrupt: {e}") }
}

/// A stored value: its format and body (`None` for an empty value).
fn body(v: &[u8]) -> Result<Option<(u8, &[u8])>, StoreError> {
    match v.split_first() {
        Some((&f, body)) if f == STATE_VERSION || f == WHOLE_SERIES => Ok(Some((f, body))),
        Some((other, _)) => Err(StoreError::Index {
            reason: format!("state record format {other} is newer than this backmesh understands; upgrade backmesh"),
        }),
        None => Ok(None),
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![STATE_VERSION];
    ciborium::into_writer(v, &mut out)
        .map_err(|e| StoreError::Index { reason: format!("encoding a state record: {e}") })?;
    Ok(out)
}

/// The archives of series `series` (its key as stored) on disk, by id.
fn archives_on_disk(kv: &dyn KvStore, series: &[u8]) -> Result<BTreeMap<String, ArchiveRec>, StoreError> {
    let mut out = BTreeMap::new();
    for (k, v) in kv.scan_prefix(ARCHIVE_TREE, series)? {
        let id = String::from_utf8(k[series.len()..].to_vec()).map_err(|e| corrupt("archive key", e))?;
        if let Some((_, b)) = body(&v)? {
            out.insert(id, ciborium::from_reader(b).map_err(|e| corrupt("archive", e))?);
        }
    }
    Ok(out)
}

/// The record under `key` as last written (a series with its archives).
pub fn read(kv: &dyn KvStore, key: &RecordKey) -> Result<Option<Record>, StoreError> {
    let k = key_bytes(key);
    let head = match kv.get(STATE_TREE, &k)? {
        Some(v) => match body(&v)? {
            Some((_, b)) => Some(ciborium::from_reader::<Record, _>(b).map_err(|e| corrupt("record", e))?),
            None => None,
        },
        None => None,
    };
    if !matches!(key, RecordKey::Series(..)) {
        return Ok(head);
    }
    let archives = archives_on_disk(kv, &k)?;
    if head.is_none() && archives.is_empty() {
        return Ok(None);
    }
    let mut series = match head {
        Some(Record::Series(s)) => s,
        _ => Box::default(),
    };
    // Only a series half moved from format 1 has archives in both places.
    for (id, a) in archives {
        series.archives.entry(id).or_insert(a);
    }
    Ok(Some(Record::Series(series)))
}

/// Merges every stored record into `state`, keeping in memory only that
/// their registers are sealed; how many records. Records of format 1 are
/// marked changed, to be written again in format 2.
pub fn load(kv: &dyn KvStore, state: &mut MeshState) -> Result<usize, StoreError> {
    let mut n = 0;
    let mut old = Vec::new();
    let mut loaded = Vec::new();
    for (k, v) in kv.scan_prefix(STATE_TREE, &[])? {
        let key: RecordKey = ciborium::from_reader(&k[..]).map_err(|e| corrupt("key", e))?;
        let Some((format, b)) = body(&v)? else { continue };
        let record: Record = ciborium::from_reader(b).map_err(|e| corrupt("record", e))?;
        state.merge_record(&key, &record);
        if format == WHOLE_SERIES && matches!(key, RecordKey::Series(..)) {
            old.push(key);
        } else {
            loaded.push(key);
        }
        n += 1;
    }
    for (k, v) in kv.scan_prefix(ARCHIVE_TREE, &[])? {
        let mut rest = &k[..];
        let key: RecordKey = ciborium::from_reader(&mut rest).map_err(|e| corrupt("archive key", e))?;
        let id = String::from_utf8(rest.to_vec()).map_err(|e| corrupt("archive key", e))?;
        let Some((_, b)) = body(&v)? else { continue };
        let archive: ArchiveRec = ciborium::from_reader(b).map_err(|e| corrupt("archive", e))?;
        let part = Series { archives: BTreeMap::from([(id, archive)]), ..Series::default() };
        state.merge_record(&key, &Record::Series(Box::new(part)));
        loaded.push(key);
    }
    state.take_changed();
    for key in &loaded {
        if !old.contains(key) {
            state.store_seals(key);
        }
    }
    state.still_changed(old);
    Ok(n)
}

/// Puts back into `record` (under `key`) the signatures kept on disk only,
/// before it leaves the node; how many were not found.
pub fn with_seals(kv: &dyn KvStore, key: &RecordKey, record: &mut Record) -> Result<usize, StoreError> {
    if !seals_mut(record).iter().any(|s| s.is_stored()) {
        return Ok(0);
    }
    Ok(fill_seals(key, record, read(kv, key)?))
}

/// What one [`persist`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Entries put (records, series heads, archives).
    pub entries: u64,
    pub bytes: u64,
    /// Signatures that were on disk neither in memory (see [`fill_seals`]).
    pub missing: usize,
}

impl Written {
    fn put(&mut self, kv: &dyn KvStore, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        kv.put(tree, key, value)?;
        self.entries += 1;
        self.bytes += (key.len() + value.len()) as u64;
        Ok(())
    }
}

/// Writes the records of `state` changed since the last write, each with
/// every seal; those a failed write left are tried again next time.
pub fn persist(state: &mut MeshState, kv: &dyn KvStore) -> Result<Written, StoreError> {
    let mut w = Written::default();
    let mut keys = state.take_changed().into_iter();
    while let Some(key) = keys.next() {
        match write(state, kv, &key, &mut w) {
            Ok(()) => {}
            Err(e) => {
                state.still_changed(std::iter::once(key).chain(keys));
                return Err(e);
            }
        }
    }
    Ok(w)
}

fn write(state: &mut MeshState, kv: &dyn KvStore, key: &RecordKey, w: &mut Written) -> Result<(), StoreError> {
    let k = key_bytes(key);
    let Some(mut r) = state.record(key) else {
        kv.delete(STATE_TREE, &k)?;
        return Ok(());
    };
    let Record::Series(s) = &mut r else {
        w.missing += with_seals(kv, key, &mut r)?;
        w.put(kv, STATE_TREE, &k, &encode(&r)?)?;
        state.store_seals(key);
        return Ok(());
    };
    // What changed since written: the head, and the archives with a
    // register whose signature is still in memory (or that has none).
    // Only those are written, each with the signatures it had on disk.
    // In id order (a map's keys): the first is the oldest kept.
    let kept: Vec<String> = s.archives.keys().cloned().collect();
    s.archives.retain(|_, a| !archive_seals(a).iter().all(|s| s.is_stored()));
    let mut on_disk = match kv.get(STATE_TREE, &k)? {
        Some(v) => match body(&v)? {
            Some((_, b)) => match ciborium::from_reader::<Record, _>(b).map_err(|e| corrupt("record", e))? {
                Record::Series(d) => d,
                _ => Box::default(),
            },
            None => Box::default(),
        },
        None => Box::default(),
    };
    for id in s.archives.keys() {
        if let Some(v) = kv.get(ARCHIVE_TREE, &archive_key(&k, id))? {
            if let Some((_, b)) = body(&v)? {
                on_disk.archives.insert(id.clone(), ciborium::from_reader(b).map_err(|e| corrupt("archive", e))?);
            }
        }
    }
    w.missing += fill_seals(key, &mut r, Some(Record::Series(on_disk)));
    let Record::Series(s) = &mut r else { unreachable!("a series stays a series") };
    for (id, a) in std::mem::take(&mut s.archives) {
        w.put(kv, ARCHIVE_TREE, &archive_key(&k, &id), &encode(&a)?)?;
    }
    // Archives no longer among the newest the mesh remembers. A series
    // forgets an archive only when it is older than every one it keeps
    // (`Series::archive_mut`), so only the entries below the oldest kept
    // are read, not every archive of the series at each write.
    let below = kept.first().map(|oldest| archive_key(&k, oldest));
    loop {
        let gone = kv.scan_prefix_rev(ARCHIVE_TREE, &k, below.as_deref(), 64)?;
        for (key_on_disk, _) in &gone {
            kv.delete(ARCHIVE_TREE, key_on_disk)?;
        }
        if gone.len() < 64 {
            break;
        }
    }
    // The head last: a series of format 1 keeps its archives in it until
    // each is in its own entry.
    w.put(kv, STATE_TREE, &k, &encode(&r)?)?;
    state.store_seals(key);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::entry::{Entry, Event};
    use crate::log::hlc::Hlc;
    use crate::log::signing::seal_entry;
    use crate::store::kv::MemKv;

    fn finished(key: &libp2p::identity::Keypair, seq: u64, archive: &str) -> Entry {
        let origin = key.public().to_peer_id().to_string();
        let time = Hlc { wall_ms: 1_000 * seq as i64, logical: 0, node: origin.clone() };
        let mut e = Entry::new(
            origin,
            "a".into(),
            seq,
            time,
            Event::Finished {
                recent: Default::default(),
                node: "a".into(),
                path: "/p".into(),
                archive: archive.into(),
                size: 1,
                files: 1,
                duration_ms: 1,
                warnings: vec![],
                request: None,
                plugin: None,
            },
        );
        seal_entry(&mut e, key);
        e
    }

    fn series() -> RecordKey {
        RecordKey::Series("a".into(), "/p".into())
    }

    #[test]
    fn seals_leave_memory_once_written_and_come_back_whole_to_be_sent() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let kv = MemKv::default();
        let mut state = MeshState::new();
        state.apply(&finished(&key, 1, "0001-a"));
        let in_memory = state.record(&series()).unwrap();
        let digest = state.digest_cold();

        assert_eq!(persist(&mut state, &kv).unwrap().missing, 0);
        let mut after = state.record(&series()).unwrap();
        let seals = seals_mut(&mut after);
        assert!(!seals.is_empty() && seals.iter().all(|s| s.is_stored()), "no signature stays in memory");
        assert_eq!(state.digest_cold(), digest, "where a signature is kept does not change the digest");

        // A later entry changes the record: written with the new seals
        // from memory and the old ones from disk.
        state.apply(&finished(&key, 2, "0002-b"));
        assert_eq!(persist(&mut state, &kv).unwrap().missing, 0);
        let mut sent = state.record(&series()).unwrap();
        assert_eq!(with_seals(&kv, &series(), &mut sent).unwrap(), 0);
        assert!(seals_mut(&mut sent).iter().all(|s| s.sig().is_some()), "every signature is back");
        let mut whole = MeshState::new();
        whole.apply(&finished(&key, 1, "0001-a"));
        whole.apply(&finished(&key, 2, "0002-b"));
        let expected = whole.record(&series()).unwrap();
        assert_eq!(crate::log::crdt::cbor(&sent), crate::log::crdt::cbor(&expected), "byte for byte, seals and all");
        assert_ne!(crate::log::crdt::cbor(&sent), crate::log::crdt::cbor(&in_memory));

        // And a node that starts again reads them back the same way.
        let mut again = MeshState::new();
        assert_eq!(load(&kv, &mut again).unwrap(), 2);
        assert_eq!(again, whole);
        let mut reloaded = again.record(&series()).unwrap();
        assert!(seals_mut(&mut reloaded).iter().all(|s| s.is_stored()));
        assert_eq!(with_seals(&kv, &series(), &mut reloaded).unwrap(), 0);
        assert_eq!(crate::log::crdt::cbor(&reloaded), crate::log::crdt::cbor(&expected));
    }

    #[test]
    fn a_signature_lost_from_disk_is_sent_unsealed_not_wrong() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let kv = MemKv::default();
        let mut state = MeshState::new();
        state.apply(&finished(&key, 1, "0001-a"));
        persist(&mut state, &kv).unwrap();
        kv.delete(STATE_TREE, &key_bytes(&series())).unwrap();
        for (k, _) in kv.scan_prefix(ARCHIVE_TREE, &[]).unwrap() {
            kv.delete(ARCHIVE_TREE, &k).unwrap();
        }
        let mut r = state.record(&series()).unwrap();
        let n = seals_mut(&mut r).len();
        assert_eq!(with_seals(&kv, &series(), &mut r).unwrap(), n);
        assert!(seals_mut(&mut r).iter().all(|s| !s.is_sealed()), "left unsealed: a peer takes them from another");
    }

    #[test]
    fn each_archive_is_written_apart_and_one_forgotten_leaves_the_disk() {
        use crate::log::records::ARCHIVES_KEPT;
        let key = libp2p::identity::Keypair::generate_ed25519();
        let kv = MemKv::default();
        let mut state = MeshState::new();
        let mut whole = MeshState::new();
        let n = ARCHIVES_KEPT as u64 + 3;
        for seq in 1..=n {
            let e = finished(&key, seq, &format!("{seq:04}-x"));
            state.apply(&e);
            whole.apply(&e);
            persist(&mut state, &kv).unwrap();
        }
        let kb = key_bytes(&series());
        let ids: Vec<String> = kv
            .scan_prefix(ARCHIVE_TREE, &kb)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k[kb.len()..].to_vec()).unwrap())
            .collect();
        assert_eq!(ids.len(), ARCHIVES_KEPT, "the oldest ones are gone from disk too");
        assert_eq!(ids[0], "0004-x");
        let head = kv.get(STATE_TREE, &kb).unwrap().unwrap();
        let Some(Record::Series(h)) = ciborium::from_reader(&head[1..]).unwrap() else { panic!("a series") };
        assert!(h.archives.is_empty(), "the head holds no archive");
        assert_eq!(
            crate::log::crdt::cbor(&read(&kv, &series()).unwrap().unwrap()),
            crate::log::crdt::cbor(&whole.record(&series()).unwrap())
        );
    }

    #[test]
    fn a_series_stored_whole_by_an_older_version_is_read_and_written_again_apart() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let kv = MemKv::default();
        let mut whole = MeshState::new();
        for seq in 1..=3 {
            whole.apply(&finished(&key, seq, &format!("{seq:04}-x")));
        }
        // Format 1: the whole series, archives and seals, in one entry.
        for (k, r) in whole.records() {
            let mut v = vec![WHOLE_SERIES];
            ciborium::into_writer(&r, &mut v).unwrap();
            kv.put(STATE_TREE, &key_bytes(&k), &v).unwrap();
        }
        let mut state = MeshState::new();
        load(&kv, &mut state).unwrap();
        assert_eq!(state, whole);
        persist(&mut state, &kv).unwrap();
        assert_eq!(kv.scan_prefix(ARCHIVE_TREE, &[]).unwrap().len(), 3, "each archive in its own entry now");
        let mut again = MeshState::new();
        load(&kv, &mut again).unwrap();
        assert_eq!(again, whole);
        let mut sent = again.record(&series()).unwrap();
        assert_eq!(with_seals(&kv, &series(), &mut sent).unwrap(), 0);
        assert_eq!(crate::log::crdt::cbor(&sent), crate::log::crdt::cbor(&whole.record(&series()).unwrap()));
    }
}
