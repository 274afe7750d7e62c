//! What a node's background work is doing, for people: every loop that
//! runs on its own (copies to holders, the offsite bucket, anti-entropy,
//! history backfill, the backup queue, the index probe) reports here as a
//! named [`Worker`], in the manner of Garage's workers: busy, throttled,
//! idle or failing, with its progress in words and its last error.
//! `backmesh status --workers` shows them.
//!
//! A report costs a lock and a map update; nothing waits on a reader.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a worker is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Nothing to do until something changes.
    Idle,
    /// At work: what it is doing, in words.
    Busy(String),
    /// Holding back on purpose (a backoff, a peer's bound): why.
    Throttled(String),
    /// Its last try failed; it tries again (the error is in `last_error`).
    Failing,
}

impl WorkerState {
    /// The state's name: `idle`, `busy`, `throttled`, `failing`.
    pub fn name(&self) -> &'static str {
        match self {
            WorkerState::Idle => "idle",
            WorkerState::Busy(_) => "busy",
            WorkerState::Throttled(_) => "throttled",
            WorkerState::Failing => "failing",
        }
    }
}

/// One worker as last reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerStatus {
    pub name: String,
    /// What it does, in a few words.
    pub what: String,
    pub state: WorkerState,
    /// When it last finished a piece of work without error (ms).
    pub last_ok_ms: Option<i64>,
    /// Its last error and when (ms): kept after it recovers, for people
    /// who come to look later.
    pub last_error: Option<(i64, String)>,
    /// Errors since the node started.
    pub errors: u64,
}

/// Every worker of a node; cheap to clone.
#[derive(Clone, Default)]
pub struct Workers(Arc<Mutex<BTreeMap<String, WorkerStatus>>>);

impl Workers {
    /// A worker named `name` that does `what`, idle until it says otherwise.
    pub fn register(&self, name: &str, what: &str) -> Worker {
        let status = WorkerStatus {
            name: name.into(),
            what: what.into(),
            state: WorkerState::Idle,
            last_ok_ms: None,
            last_error: None,
            errors: 0,
        };
        self.lock().insert(name.into(), status);
        Worker { name: name.into(), all: self.clone() }
    }

    /// Every worker, by name.
    pub fn snapshot(&self) -> Vec<WorkerStatus> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, WorkerStatus>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One worker's handle for its reports; cheap to clone. A worker made by
/// [`Worker::detached`] reports nowhere (a node's parts run without one).
#[derive(Clone)]
pub struct Worker {
    name: String,
    all: Workers,
}

impl Worker {
    /// A worker no one reads.
    pub fn detached(name: &str) -> Self {
        Workers::default().register(name, "")
    }

    fn update(&self, f: impl FnOnce(&mut WorkerStatus)) {
        if let Some(s) = self.all.lock().get_mut(&self.name) {
            f(s);
        }
    }

    /// At work on `what`.
    pub fn busy(&self, what: impl Into<String>) {
        let what = what.into();
        self.update(|s| s.state = WorkerState::Busy(what));
    }

    /// Holding back, for `why`.
    pub fn throttled(&self, why: impl Into<String>) {
        let why = why.into();
        self.update(|s| s.state = WorkerState::Throttled(why));
    }

    /// A piece of work done without error at `now_ms`; nothing more to do.
    pub fn idle(&self, now_ms: i64) {
        self.update(|s| {
            s.state = WorkerState::Idle;
            s.last_ok_ms = Some(now_ms);
        });
    }

    /// A piece of work done without error at `now_ms`, more to come.
    pub fn done_one(&self, now_ms: i64) {
        self.update(|s| {
            s.last_ok_ms = Some(now_ms);
            if s.state == WorkerState::Failing {
                s.state = WorkerState::Idle;
            }
        });
    }

    /// A try failed at `now_ms` with `error`; the worker tries again.
    pub fn failed(&self, error: impl Into<String>, now_ms: i64) {
        let error = error.into();
        self.update(|s| {
            s.state = WorkerState::Failing;
            s.last_error = Some((now_ms, error));
            s.errors += 1;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_says_what_it_does_and_keeps_its_last_error() {
        let all = Workers::default();
        let copies = all.register("copies", "pushes archives to their holders");
        let index = all.register("index", "probes the index database");
        copies.busy("3 copies in flight");
        copies.failed("n2: disk full", 10);
        index.idle(11);
        copies.done_one(12);
        copies.throttled("2 holders backed off");
        let s = all.snapshot();
        assert_eq!(s.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), ["copies", "index"]);
        assert_eq!(s[0].state, WorkerState::Throttled("2 holders backed off".into()));
        assert_eq!(
            (s[0].last_error.clone(), s[0].errors, s[0].last_ok_ms),
            (Some((10, "n2: disk full".into())), 1, Some(12))
        );
        assert_eq!((s[1].state.name(), s[1].last_ok_ms), ("idle", Some(11)));
        Worker::detached("nobody").failed("unseen", 1);
    }
}
