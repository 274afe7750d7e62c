//! The work queue of a node: runs waiting to start, kept in the embedded
//! store so that a restart resumes them. Pure ordering rules:
//! - on-demand runs go before scheduled ones, each in arrival order;
//! - two runs of the same path never overlap (a run waits while its path runs);
//! - a scheduled run is not queued twice for one path;
//! - past `bound` waiting runs, new on-demand requests are refused (the API
//!   answers 429), never dropped silently.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::store::{KvStore, StoreError};

const TREE: &str = "queue";
const RECORD_VERSION: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRun {
    pub path: String,
    pub on_demand: bool,
    pub queued_ms: i64,
    /// The on-demand request it answers (its log entries carry it).
    #[serde(default)]
    pub request: Option<String>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{waiting} runs are already waiting on this node (the limit); try again later")]
pub struct Full {
    pub waiting: usize,
}

/// Why an on-demand run was not queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotQueued {
    #[error(transparent)]
    Full(#[from] Full),
    /// Its queue entry could not be written: accepted, it could be lost
    /// with a crash before it ran (a full disk, a failing index).
    #[error("the run could not be queued durably on this node ({0}); nothing was queued: try again once it can write")]
    NotDurable(String),
}

#[derive(Clone, Debug, Default)]
pub struct Queue {
    items: BTreeMap<u64, QueuedRun>,
    next_id: u64,
    bound: usize,
}

impl Queue {
    pub fn new(bound: usize) -> Self {
        Queue { items: BTreeMap::new(), next_id: 1, bound }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Queues a run; returns its id, or `None` for a scheduled run of a path
    /// that already waits.
    pub fn push(&mut self, item: QueuedRun) -> Result<Option<u64>, Full> {
        if !item.on_demand && self.items.values().any(|i| i.path == item.path && !i.on_demand) {
            return Ok(None);
        }
        if item.on_demand && self.items.len() >= self.bound {
            return Err(Full { waiting: self.items.len() });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.items.insert(id, item);
        Ok(Some(id))
    }

    /// The next run that may start, given the paths running now.
    pub fn next(&self, running: &BTreeSet<String>) -> Option<(u64, &QueuedRun)> {
        let free = |i: &&QueuedRun| !running.contains(&i.path);
        let first_on_demand = self.items.iter().find(|(_, i)| i.on_demand && free(i));
        first_on_demand.or_else(|| self.items.iter().find(|(_, i)| free(i))).map(|(id, i)| (*id, i))
    }

    pub fn remove(&mut self, id: u64) -> Option<QueuedRun> {
        self.items.remove(&id)
    }

    pub fn is_waiting(&self, path: &str) -> bool {
        self.items.values().any(|i| i.path == path)
    }

    // Persistence: one record per waiting run.

    pub fn load(kv: &dyn KvStore, bound: usize) -> Result<Self, StoreError> {
        let mut q = Queue::new(bound);
        for (k, v) in kv.scan_prefix(TREE, &[])? {
            let (Ok(key), Some((&RECORD_VERSION, body))) = (<[u8; 8]>::try_from(k.as_slice()), v.split_first()) else {
                return Err(StoreError::Index {
                    reason: "a queue record is corrupt or newer than this backmesh".into(),
                });
            };
            let id = u64::from_be_bytes(key);
            let item: QueuedRun = ciborium::from_reader(body)
                .map_err(|e| StoreError::Index { reason: format!("queue record {id} is corrupt: {e}") })?;
            q.items.insert(id, item);
            q.next_id = q.next_id.max(id + 1);
        }
        Ok(q)
    }

    pub fn persist(kv: &dyn KvStore, id: u64, item: &QueuedRun) -> Result<(), StoreError> {
        let mut v = vec![RECORD_VERSION];
        let _ = ciborium::into_writer(item, &mut v);
        kv.put(TREE, &id.to_be_bytes(), &v)?;
        kv.flush()
    }

    pub fn forget(kv: &dyn KvStore, id: u64) -> Result<(), StoreError> {
        kv.delete(TREE, &id.to_be_bytes())?;
        kv.flush()
    }
}

impl crate::error::Transient for Full {
    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Later
    }
}

impl crate::error::Transient for NotQueued {
    fn retry(&self) -> crate::error::Retry {
        // A queue drains; a disk that could not take the entry may again.
        crate::error::Retry::Later
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemKv;

    fn item(path: &str, on_demand: bool) -> QueuedRun {
        QueuedRun { path: path.into(), on_demand, queued_ms: 0, request: None }
    }

    #[test]
    fn on_demand_first_then_arrival_order_and_no_overlap() {
        let mut q = Queue::new(10);
        let s1 = q.push(item("/a", false)).unwrap().unwrap();
        let d1 = q.push(item("/b", true)).unwrap().unwrap();
        let d2 = q.push(item("/a", true)).unwrap().unwrap();
        let none = BTreeSet::new();
        assert_eq!(q.next(&none).unwrap().0, d1, "on demand before scheduled");
        let running: BTreeSet<String> = ["/b".to_string()].into();
        assert_eq!(q.next(&running).unwrap().0, d2, "skip a path that runs");
        let running: BTreeSet<String> = ["/a".to_string(), "/b".to_string()].into();
        assert!(q.next(&running).is_none(), "nothing may start");
        q.remove(d1);
        q.remove(d2);
        assert_eq!(q.next(&none).unwrap().0, s1);
    }

    #[test]
    fn scheduled_runs_are_not_doubled_and_on_demand_ones_are_bounded() {
        let mut q = Queue::new(3);
        assert!(q.push(item("/a", false)).unwrap().is_some());
        assert_eq!(q.push(item("/a", false)).unwrap(), None);
        assert!(q.push(item("/a", true)).unwrap().is_some());
        assert!(q.push(item("/a", true)).unwrap().is_some());
        assert_eq!(q.push(item("/a", true)), Err(Full { waiting: 3 }));
        assert!(q.push(item("/b", false)).unwrap().is_some(), "scheduled runs are not refused");
    }

    #[test]
    fn survives_a_restart() {
        let kv = MemKv::default();
        let mut q = Queue::new(10);
        for (p, d) in [("/a", true), ("/b", false), ("/c", true)] {
            let i = item(p, d);
            let id = q.push(i.clone()).unwrap().unwrap();
            Queue::persist(&kv, id, &i).unwrap();
        }
        Queue::forget(&kv, 2).unwrap();
        let back = Queue::load(&kv, 10).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back.next(&BTreeSet::new()).unwrap().1.path, "/a");
        let mut back = back;
        assert_eq!(back.push(item("/d", true)).unwrap(), Some(4), "ids continue after the highest");
    }
}
