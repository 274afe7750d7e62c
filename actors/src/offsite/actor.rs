//! The offsite actor: after each replication round, brings the series
//! this node is elected for up to date in the bucket, and now and then
//! collects the bucket's unused members.
//!
//! Messages and senders:
//! - [`Round`] (the replica actor, every round): who the candidates are.
//!   A round still running makes it wait for the next.
//! - [`GetOffsiteStatus`] (the HTTP API): where each series stands.
//!
//! The bucket's work runs in the blocking pool. A bucket that cannot be
//! reached is tried again at later rounds (after a doubling wait, 10 min
//! at most); nothing else waits for it: replication, backups and restores
//! from peers go on as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use backmesh_api::{OffsiteStatus, SeriesOffsite};

use super::plan::{collection_due, overdue, role, Role, SeriesState, COLLECT_BUSY_WAIT_MS, COLLECT_FAILED_WAIT_MS};
use super::sync::{Offsite, OffsiteError};
use crate::clock::Clock;
use crate::placement::{rank, Candidate};
use crate::store::{Retention, Store};
use crate::workers::Worker;

/// Rounds start no closer than this.
const ROUND_EVERY_MS: i64 = 3_000;
/// kv tree "meta": when this node last collected the bucket (ms, LE).
const COLLECTED_KEY: &[u8] = b"offsite-collected";

/// One replication round's view: who may hold copies now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Round {
    pub candidates: Vec<Candidate>,
    pub replicas: usize,
    /// This node's peer id.
    pub me: String,
}

#[derive(Message)]
#[rtype(result = "OffsiteStatus")]
pub struct GetOffsiteStatus;

#[derive(Default)]
struct Shared {
    series: HashMap<(String, String), SeriesState>,
    error: Option<String>,
    collected_ms: Option<i64>,
    /// No collection before this (one found an upload under way).
    collect_after_ms: Option<i64>,
}

pub struct OffsiteActor {
    offsite: Arc<Offsite>,
    store: Arc<Store>,
    keep: Retention,
    /// How long the elected uploader may lag before the next in line
    /// uploads what it has not (`--repair-after`).
    fallback_after: Duration,
    clock: Arc<dyn Clock>,
    /// Where it says how the bucket fares (`status --workers`).
    worker: Worker,
    busy: bool,
    last_ms: Option<i64>,
    shared: Arc<Mutex<Shared>>,
}

impl OffsiteActor {
    pub fn new(
        offsite: Arc<Offsite>,
        store: Arc<Store>,
        keep: Retention,
        fallback_after: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let worker = Worker::detached("offsite");
        OffsiteActor {
            offsite,
            store,
            keep,
            fallback_after,
            clock,
            worker,
            busy: false,
            last_ms: None,
            shared: Arc::default(),
        }
    }

    /// Reports how the bucket fares to `worker`.
    pub fn with_worker(mut self, worker: Worker) -> Self {
        self.worker = worker;
        self
    }
}

impl Actor for OffsiteActor {
    type Context = Context<Self>;

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        self.offsite.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        Running::Stop
    }
}

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

impl Handler<Round> for OffsiteActor {
    type Result = ();
    fn handle(&mut self, msg: Round, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        if self.busy || self.last_ms.is_some_and(|l| (0..ROUND_EVERY_MS).contains(&(now - l))) {
            return;
        }
        self.busy = true;
        self.last_ms = Some(now);
        let (offsite, store, keep, shared) = (self.offsite.clone(), self.store.clone(), self.keep, self.shared.clone());
        let (fallback_after, clock, worker) = (self.fallback_after, self.clock.clone(), self.worker.clone());
        let work = tokio::task::spawn_blocking(move || {
            round(&offsite, &store, keep, fallback_after, clock.as_ref(), &worker, &shared, &msg)
        });
        ctx.spawn(work.into_actor(self).map(|_, act, _| act.busy = false));
    }
}

/// One round: the series this node uploads or stands in for, then (on the
/// elected collector) the daily collection. The decisions are
/// [`super::plan`]'s; this does the bucket's IO.
#[allow(clippy::too_many_arguments)]
fn round(
    offsite: &Offsite,
    store: &Store,
    keep: Retention,
    fallback_after: Duration,
    clock: &dyn Clock,
    worker: &Worker,
    shared: &Mutex<Shared>,
    msg: &Round,
) {
    let lock = || shared.lock().unwrap_or_else(|p| p.into_inner());
    let held = store.held_series(keep, clock.now_ms());
    let mut bucket_error = None;
    let mut failed = false;
    for ((node, path), ids) in &held {
        if offsite.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let key = (node.clone(), path.clone());
        let role = role(node, path, &msg.candidates, msg.replicas, &msg.me);
        if let Role::StandIn { elected } = &role {
            stand_in_for(offsite, store, keep, fallback_after, clock, shared, node, path, ids, elected);
            continue;
        }
        let due = {
            let mut all = lock();
            let st = all.series.entry(key.clone()).or_default();
            st.mine = role == Role::Elected;
            st.mine && st.due(ids, clock.now_ms())
        };
        if !due {
            continue;
        }
        let progress = |id: &str, up: &super::sync::Uploaded| {
            tracing::info!(
                "offsite: archive {id} of {path} of {node} is in {}: {} of {} member(s) sent ({} bytes in {:.2} s)",
                offsite.bucket.target().shown(),
                up.sent,
                up.members,
                up.bytes,
                up.ms as f64 / 1000.0
            );
            let mut all = lock();
            if let Some(s) = all.series.get_mut(&key) {
                s.sent_bytes += up.bytes;
            }
        };
        worker.busy(format!("uploading {path} of {node}"));
        let result = offsite.sync_series(store, node, path, ids, keep, &progress);
        let now = clock.now_ms();
        let mut all = lock();
        let Some(s) = all.series.get_mut(&key) else { continue };
        match result {
            Ok(done) => {
                for id in &done.pruned {
                    tracing::info!("offsite: archive {id} of {path} of {node} pruned from the bucket");
                }
                s.uploaded(ids, done.in_bucket, now);
                worker.done_one(now);
            }
            Err(e @ OffsiteError::Busy { .. }) => {
                tracing::debug!("offsite: {path} of {node}: {e}");
                s.busy(now);
                worker.throttled("a collection holds the bucket");
            }
            Err(e) => {
                failed = true;
                worker.failed(format!("{path} of {node}: {e}"), now);
                let (wait, new) = s.failed(e.to_string(), now);
                if new {
                    tracing::warn!("offsite: {path} of {node}: {e} (next try in {}s)", wait / 1000);
                }
                if matches!(e, OffsiteError::Bucket(_)) {
                    // The bucket itself: the other series would fail the same way.
                    bucket_error = Some(e.to_string());
                    break;
                }
            }
        }
    }
    {
        let mut all = lock();
        all.error = bucket_error.clone();
        // What this node stands in for is kept too: when it last looked.
        all.series.retain(|k, _| held.contains_key(k));
    }
    if bucket_error.is_some() {
        return;
    }
    if !failed {
        worker.idle(clock.now_ms());
    }
    // One node collects: the first of a ranking no series shares.
    let collector = rank("", "offsite-collect", &msg.candidates).first().map(|c| c.peer_id.clone());
    if collector.as_deref() != Some(msg.me.as_str()) {
        return;
    }
    let kv = store.kv();
    let last = kv
        .get("meta", COLLECTED_KEY)
        .ok()
        .flatten()
        .and_then(|v| v.try_into().ok())
        .map(i64::from_le_bytes)
        .unwrap_or(0);
    let now = clock.now_ms();
    if !collection_due(last, lock().collect_after_ms, now) {
        lock().collected_ms = Some(last).filter(|l| *l > 0);
        return;
    }
    worker.busy("collecting the bucket's unused members");
    match offsite.collect(store) {
        Ok(c) => {
            worker.idle(now);
            tracing::info!(
                "offsite: collected {}: {} unused member(s) deleted ({} bytes) of {}, {} manifest(s)",
                offsite.bucket.target().shown(),
                c.deleted,
                c.freed_bytes,
                c.members,
                c.manifests
            );
            let _ = kv.put("meta", COLLECTED_KEY, &now.to_le_bytes());
            let mut all = lock();
            all.collected_ms = Some(now);
            all.collect_after_ms = None;
        }
        Err(e @ OffsiteError::Busy { .. }) => {
            tracing::debug!("offsite: collection put off: {e}");
            worker.throttled("an upload holds the bucket: collection put off");
            lock().collect_after_ms = Some(clock.now_ms() + COLLECT_BUSY_WAIT_MS);
        }
        Err(e) => {
            tracing::warn!("offsite: collection of {}: {e} (tried again in an hour)", offsite.bucket.target().shown());
            worker.failed(format!("collection: {e}"), now);
            lock().collect_after_ms = Some(clock.now_ms() + COLLECT_FAILED_WAIT_MS);
        }
    }
}

/// What the next in line does for a series: uploads the archives it keeps
/// that the elected uploader (`elected`) has left out of the bucket for
/// longer than `fallback_after`; looks no more often than that.
#[allow(clippy::too_many_arguments)]
fn stand_in_for(
    offsite: &Offsite,
    store: &Store,
    keep: Retention,
    fallback_after: Duration,
    clock: &dyn Clock,
    shared: &Mutex<Shared>,
    node: &str,
    path: &str,
    ids: &[String],
    elected: &str,
) {
    let key = (node.to_string(), path.to_string());
    let lock = || shared.lock().unwrap_or_else(|p| p.into_inner());
    let fallback_ms = i64::try_from(fallback_after.as_millis()).unwrap_or(i64::MAX);
    let now = clock.now_ms();
    let (due, looked) = {
        let all = lock();
        let st = all.series.get(&key);
        (st.is_none_or(|s| s.stand_in_due(fallback_ms, now)), st.and_then(|s| s.checked_ms).is_some())
    };
    if !due {
        return;
    }
    let kept: Vec<(String, i64)> =
        store.list(node, path).unwrap_or_default().into_iter().map(|a| (a.id, a.stored_ms)).collect();
    let old = overdue(&kept, ids, fallback_ms, now);
    let st = {
        let mut all = lock();
        let st = all.series.entry(key.clone()).or_default();
        st.mine = false;
        st.checked_ms = Some(now);
        st.clone()
    };
    if old.is_empty() || old.iter().all(|id| st.in_bucket.contains(id)) && looked {
        return;
    }
    let progress = |id: &str, up: &super::sync::Uploaded| {
        tracing::warn!(
            "offsite: {elected} had not put archive {id} of {path} of {node} in {} for {}s; \
             it is there now, from this node ({} of {} member(s) sent)",
            offsite.bucket.target().shown(),
            fallback_after.as_secs(),
            up.sent,
            up.members
        );
    };
    match offsite.sync_series(store, node, path, &old, keep, &progress) {
        Ok(done) => {
            if let Some(s) = lock().series.get_mut(&key) {
                s.in_bucket = done.in_bucket;
            }
        }
        Err(e) => tracing::warn!("offsite: standing in for {elected} on {path} of {node}: {e}"),
    }
}

impl Handler<GetOffsiteStatus> for OffsiteActor {
    type Result = MessageResult<GetOffsiteStatus>;
    fn handle(&mut self, _: GetOffsiteStatus, _: &mut Context<Self>) -> Self::Result {
        let all = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let mut series: Vec<SeriesOffsite> = all
            .series
            .iter()
            .filter(|(_, s)| s.mine)
            .map(|((node, path), s)| {
                // An archive stored since the last round is not there yet.
                let newest_here = self.store.latest(node, path).ok().flatten().map(|a| a.id);
                let missing = newest_here.as_ref().is_some_and(|id| !s.in_bucket.contains(id));
                let (state, since) = if s.error.is_some() {
                    ("failing", s.since_ms)
                } else if s.behind || s.checked_ms.is_none() || missing {
                    ("behind", s.since_ms.or_else(|| missing.then(|| self.clock.now_ms())))
                } else {
                    ("current", None)
                };
                (node, path, s, state, since)
            })
            .map(|(node, path, s, state, since)| SeriesOffsite {
                node: node.clone(),
                path: path.clone(),
                state: state.into(),
                newest: s.in_bucket.first().cloned(),
                since: since.and_then(rfc3339),
                error: s.error.clone(),
                sent_bytes: s.sent_bytes,
            })
            .collect();
        series.sort_by(|a, b| (&a.node, &a.path).cmp(&(&b.node, &b.path)));
        MessageResult(OffsiteStatus {
            bucket: self.offsite.bucket.target().shown(),
            series,
            collected: all.collected_ms.and_then(rfc3339),
            error: all.error.clone(),
        })
    }
}
