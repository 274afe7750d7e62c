//! The log in the node's embedded store (tree `log`), one record per
//! entry: a format byte, then CBOR. The log can always be pulled again from
//! peers, so a lost index loses nothing for good.

use super::entry::Entry;
use super::state::Log;
use crate::store::{KvStore, StoreError};

const TREE: &str = "log";
/// Format of a stored entry record.
const RECORD_VERSION: u8 = 1;

fn key(origin: &str, seq: u64) -> Vec<u8> {
    let mut k = origin.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Stores one entry (idempotent: the same id is the same entry).
pub fn append(kv: &dyn KvStore, e: &Entry) -> Result<(), StoreError> {
    let mut v = vec![RECORD_VERSION];
    ciborium::into_writer(e, &mut v)
        .map_err(|err| StoreError::Index { reason: format!("encoding a log entry: {err}") })?;
    kv.put(TREE, &key(&e.origin, e.seq), &v)
}

/// Reads the whole log back.
pub fn load(kv: &dyn KvStore) -> Result<Log, StoreError> {
    let mut log = Log::new();
    for (k, v) in kv.scan_prefix(TREE, &[])? {
        let entry: Entry = match v.split_first() {
            Some((&RECORD_VERSION, body)) => ciborium::from_reader(body).map_err(|err| StoreError::Index {
                reason: format!("log record {} is corrupt: {err}", String::from_utf8_lossy(&k)),
            })?,
            Some((other, _)) => {
                return Err(StoreError::Index {
                    reason: format!(
                        "log record format {other} is newer than this backmesh understands; upgrade backmesh"
                    ),
                })
            }
            None => continue,
        };
        log.insert(entry);
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::super::entry::Event;
    use super::super::hlc::Clock;
    use super::*;
    use crate::store::{MemKv, SledKv};

    fn entries() -> Vec<Entry> {
        let mut c = Clock::new("P");
        (1..=20)
            .map(|seq| Entry {
                origin: "P".into(),
                origin_name: "n1".into(),
                seq,
                time: c.tick(seq as i64),
                event: Event::Started { node: "n1".into(), path: format!("/p{seq}"), request: None },
            })
            .collect()
    }

    #[test]
    fn survives_a_reopen() {
        let t = tempfile::tempdir().unwrap();
        {
            let kv = SledKv::open(&t.path().join("db")).unwrap();
            for e in entries() {
                append(&kv, &e).unwrap();
                append(&kv, &e).unwrap();
            }
            kv.flush().unwrap();
        }
        let kv = SledKv::open(&t.path().join("db")).unwrap();
        let log = load(&kv).unwrap();
        assert_eq!(log.len(), 20);
        assert_eq!(log.version_vector().get("P"), Some(&20));
    }

    #[test]
    fn an_unknown_record_format_is_refused_by_name() {
        let kv = MemKv::default();
        kv.put(TREE, &key("P", 1), &[9, 1, 2]).unwrap();
        let err = load(&kv).unwrap_err();
        assert!(err.to_string().contains("upgrade"), "{err}");
    }
}
