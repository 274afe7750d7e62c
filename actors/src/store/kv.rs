//! [`KvStore`]: the small embedded key-value interface the store's index
//! needs, with a sled implementation and an in-memory one for tests.
//!
//! Nothing kept here is the only copy of anything: the catalog can be
//! rebuilt from the manifest files, the stat cache merely saves a read.
//! That is why sled 0.34 (not proof against power loss, its issue #1077)
//! is acceptable here.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use super::error::StoreError;

/// Key-value pairs as a scan returns them.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

pub trait KvStore: Send + Sync {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    fn delete(&self, tree: &str, key: &[u8]) -> Result<(), StoreError>;
    /// Every (key, value) whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Pairs, StoreError>;
    /// At most `limit` pairs whose key starts with `prefix` and is below
    /// `before` (when given), the greatest keys first: one page of history.
    fn scan_prefix_rev(
        &self,
        tree: &str,
        prefix: &[u8],
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Pairs, StoreError>;
    /// Removes a whole tree (a format migrated away).
    fn drop_tree(&self, tree: &str) -> Result<(), StoreError>;
    fn flush(&self) -> Result<(), StoreError>;
}

/// Bytes of pages sled keeps in memory.
const SLED_CACHE: u64 = 16 << 20;

/// sled, one tree per name.
pub struct SledKv {
    db: sled::Db,
}

fn db_err(e: sled::Error) -> StoreError {
    StoreError::Index { reason: e.to_string() }
}

/// How long an open waits for a lock that is being let go: sled's
/// background flusher keeps the lock for a moment after its `Db` is dropped
/// (sled issue #1289), so a store closed and opened again in one process
/// (a restart in place, a test) would otherwise see its own lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn is_lock_error(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.raw_os_error() == Some(libc::EWOULDBLOCK)
                || io.to_string().contains("could not acquire lock")
        }
        _ => false,
    }
}

impl SledKv {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // sled caches up to 1 GiB of pages by default: a node's memory would
        // grow with its index and history. Everything here is small or read
        // in pages, so a small cache serves it.
        let config = sled::Config::new().path(dir).mode(sled::Mode::LowSpace).cache_capacity(SLED_CACHE);
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match config.open() {
                Ok(db) => return Ok(SledKv { db }),
                Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) if is_lock_error(&e) => {
                    return Err(StoreError::Locked { path: dir.parent().unwrap_or(dir).to_path_buf() })
                }
                Err(e) => return Err(db_err(e)),
            }
        }
    }
}

impl KvStore for SledKv {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.open_tree(tree).map_err(db_err)?.get(key).map_err(db_err)?.map(|v| v.to_vec()))
    }
    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db.open_tree(tree).map_err(db_err)?.insert(key, value).map_err(db_err)?;
        Ok(())
    }
    fn delete(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        self.db.open_tree(tree).map_err(db_err)?.remove(key).map_err(db_err)?;
        Ok(())
    }
    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Pairs, StoreError> {
        self.db
            .open_tree(tree)
            .map_err(db_err)?
            .scan_prefix(prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(db_err))
            .collect()
    }
    fn scan_prefix_rev(
        &self,
        tree: &str,
        prefix: &[u8],
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Pairs, StoreError> {
        let t = self.db.open_tree(tree).map_err(db_err)?;
        let iter = match before {
            Some(b) => t.range(prefix.to_vec()..b.to_vec()),
            None => t.scan_prefix(prefix),
        };
        iter.rev()
            .filter(|r| r.as_ref().map(|(k, _)| k.starts_with(prefix)).unwrap_or(true))
            .take(limit)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(db_err))
            .collect()
    }
    fn drop_tree(&self, tree: &str) -> Result<(), StoreError> {
        self.db.drop_tree(tree).map_err(db_err)?;
        Ok(())
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(db_err)?;
        Ok(())
    }
}

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

/// In memory, for tests and the simulator.
#[derive(Default)]
pub struct MemKv {
    trees: Mutex<BTreeMap<String, Tree>>,
}

impl MemKv {
    /// Every pair of every tree, in order: (tree, key, value).
    pub fn dump(&self) -> Vec<(String, Vec<u8>, Vec<u8>)> {
        let t = self.trees.lock().unwrap_or_else(|e| e.into_inner());
        t.iter().flat_map(|(tree, pairs)| pairs.iter().map(|(k, v)| (tree.clone(), k.clone(), v.clone()))).collect()
    }
}

impl KvStore for MemKv {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.trees.lock().unwrap_or_else(|e| e.into_inner());
        Ok(t.get(tree).and_then(|t| t.get(key).cloned()))
    }
    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut t = self.trees.lock().unwrap_or_else(|e| e.into_inner());
        t.entry(tree.to_string()).or_default().insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    fn delete(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        let mut t = self.trees.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = t.get_mut(tree) {
            t.remove(key);
        }
        Ok(())
    }
    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Pairs, StoreError> {
        let t = self.trees.lock().unwrap_or_else(|e| e.into_inner());
        Ok(t.get(tree)
            .map(|t| {
                t.range(prefix.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }
    fn scan_prefix_rev(
        &self,
        tree: &str,
        prefix: &[u8],
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Pairs, StoreError> {
        let t = self.trees.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = t.get(tree) else { return Ok(Vec::new()) };
        let upper = before.map(<[u8]>::to_vec);
        Ok(t.range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| upper.as_ref().is_none_or(|u| *k < u))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn drop_tree(&self, tree: &str) -> Result<(), StoreError> {
        self.trees.lock().unwrap_or_else(|e| e.into_inner()).remove(tree);
        Ok(())
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
