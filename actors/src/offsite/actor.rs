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
use std::time::{Duration, Instant};

use actix::prelude::*;
use backmesh_api::{OffsiteStatus, SeriesOffsite};

use super::sync::{Offsite, OffsiteError};
use crate::replica::placement::{rank, uploaders, Candidate};
use crate::store::{Retention, Store};

/// Rounds start no closer than this.
const ROUND_EVERY: Duration = Duration::from_secs(3);
/// A series found current is listed again after this long (someone may
/// have emptied the bucket).
const RECHECK: Duration = Duration::from_secs(3600);
/// Collections run this often, on the one node elected for them.
const COLLECT_EVERY_MS: i64 = 24 * 3_600_000;
const MAX_WAIT: Duration = Duration::from_secs(600);
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

#[derive(Clone, Debug, Default)]
struct SeriesState {
    /// Ids in the bucket as of `checked`.
    in_bucket: Vec<String>,
    /// The ids kept here at the last successful round (unchanged since,
    /// and checked within the hour: nothing to do).
    synced: Vec<String>,
    checked: Option<Instant>,
    /// Not current since (ms).
    since_ms: Option<i64>,
    error: Option<String>,
    /// Not before this (after failures), and the last wait.
    retry_at: Option<(Instant, Duration)>,
    sent_bytes: u64,
    /// Elected here at the last round.
    mine: bool,
    behind: bool,
}

#[derive(Default)]
struct Shared {
    series: HashMap<(String, String), SeriesState>,
    error: Option<String>,
    collected_ms: Option<i64>,
    /// No collection before this (one found an upload under way).
    collect_after: Option<Instant>,
}

pub struct OffsiteActor {
    offsite: Arc<Offsite>,
    store: Arc<Store>,
    keep: Retention,
    /// How long the elected uploader may lag before the next in line
    /// uploads what it has not (`--repair-after`).
    fallback_after: Duration,
    busy: bool,
    last: Option<Instant>,
    shared: Arc<Mutex<Shared>>,
}

impl OffsiteActor {
    pub fn new(offsite: Arc<Offsite>, store: Arc<Store>, keep: Retention, fallback_after: Duration) -> Self {
        OffsiteActor { offsite, store, keep, fallback_after, busy: false, last: None, shared: Arc::default() }
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
        if self.busy || self.last.is_some_and(|l| l.elapsed() < ROUND_EVERY) {
            return;
        }
        self.busy = true;
        self.last = Some(Instant::now());
        let (offsite, store, keep, shared) = (self.offsite.clone(), self.store.clone(), self.keep, self.shared.clone());
        let fallback_after = self.fallback_after;
        let work = tokio::task::spawn_blocking(move || round(&offsite, &store, keep, fallback_after, &shared, &msg));
        ctx.spawn(work.into_actor(self).map(|_, act, _| act.busy = false));
    }
}

fn round(
    offsite: &Offsite,
    store: &Store,
    keep: Retention,
    fallback_after: Duration,
    shared: &Mutex<Shared>,
    msg: &Round,
) {
    let lock = || shared.lock().unwrap_or_else(|p| p.into_inner());
    let now = crate::clock::now_ms();
    let held = store.held_series(keep, crate::clock::now_ms());
    let mut bucket_error = None;
    for ((node, path), ids) in &held {
        if offsite.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let order = uploaders(node, path, &msg.candidates, msg.replicas);
        let elected = order.first().is_some_and(|c| c.peer_id == msg.me);
        let stand_in = order.get(1).is_some_and(|c| c.peer_id == msg.me);
        let key = (node.clone(), path.clone());
        if stand_in {
            stand_in_for(offsite, store, keep, fallback_after, shared, node, path, ids, order[0].name.as_str());
            continue;
        }
        let st = {
            let mut all = lock();
            let st = all.series.entry(key.clone()).or_default();
            st.mine = elected;
            st.clone()
        };
        if !elected {
            continue;
        }
        let current = st.synced == *ids;
        if current && st.checked.is_some_and(|c| c.elapsed() < RECHECK) {
            continue;
        }
        if !current && st.since_ms.is_none() {
            let mut all = lock();
            if let Some(s) = all.series.get_mut(&key) {
                s.since_ms = Some(now);
                s.behind = true;
            }
        }
        if st.retry_at.is_some_and(|(at, _)| Instant::now() < at) {
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
        let result = offsite.sync_series(store, node, path, ids, keep, &progress);
        let mut all = lock();
        let Some(s) = all.series.get_mut(&key) else { continue };
        match result {
            Ok(done) => {
                for id in &done.pruned {
                    tracing::info!("offsite: archive {id} of {path} of {node} pruned from the bucket");
                }
                // Everything retention keeps of this series is there now.
                s.in_bucket = done.in_bucket;
                s.synced = ids.clone();
                s.checked = Some(Instant::now());
                s.behind = false;
                s.since_ms = None;
                s.error = None;
                s.retry_at = None;
            }
            Err(e @ OffsiteError::Busy { .. }) => {
                // A collection is under way: not a failure; soon again.
                tracing::debug!("offsite: {path} of {node}: {e}");
                s.retry_at = Some((Instant::now() + Duration::from_secs(30), Duration::from_secs(15)));
            }
            Err(e) => {
                let wait = s.retry_at.map(|(_, w)| (w * 2).min(MAX_WAIT)).unwrap_or(Duration::from_secs(15));
                s.retry_at = Some((Instant::now() + wait, wait));
                s.since_ms.get_or_insert(now);
                if s.error.as_deref() != Some(&e.to_string()) {
                    tracing::warn!("offsite: {path} of {node}: {e} (next try in {}s)", wait.as_secs());
                }
                s.error = Some(e.to_string());
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
    if now - last < COLLECT_EVERY_MS && now >= last {
        lock().collected_ms = Some(last);
        return;
    }
    if lock().collect_after.is_some_and(|at| Instant::now() < at) {
        return;
    }
    match offsite.collect(store) {
        Ok(c) => {
            tracing::info!(
                "offsite: collected {}: {} unused member(s) deleted ({} bytes) of {}, {} manifest(s)",
                offsite.bucket.target().shown(),
                c.deleted,
                c.freed_bytes,
                c.members,
                c.manifests
            );
            let _ = kv.put("meta", COLLECTED_KEY, &now.to_le_bytes());
            lock().collected_ms = Some(now);
        }
        Err(e @ OffsiteError::Busy { .. }) => {
            tracing::debug!("offsite: collection put off: {e}");
            lock().collect_after = Some(Instant::now() + Duration::from_secs(600));
        }
        Err(e) => {
            tracing::warn!("offsite: collection of {}: {e} (tried again in an hour)", offsite.bucket.target().shown());
            lock().collect_after = Some(Instant::now() + Duration::from_secs(3600));
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
    shared: &Mutex<Shared>,
    node: &str,
    path: &str,
    ids: &[String],
    elected: &str,
) {
    let key = (node.to_string(), path.to_string());
    let lock = || shared.lock().unwrap_or_else(|p| p.into_inner());
    let looked = lock().series.get(&key).and_then(|s| s.checked);
    if looked.is_some_and(|at| at.elapsed() < fallback_after) {
        return;
    }
    let now = crate::clock::now_ms();
    let due = fallback_after.as_millis() as i64;
    let old: Vec<String> = store
        .list(node, path)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| ids.contains(&a.id) && now - a.stored_ms >= due)
        .map(|a| a.id)
        .collect();
    let st = {
        let mut all = lock();
        let st = all.series.entry(key.clone()).or_default();
        st.mine = false;
        st.checked = Some(Instant::now());
        st.clone()
    };
    if old.is_empty() || old.iter().all(|id| st.in_bucket.contains(id)) && looked.is_some() {
        return;
    }
    let progress = |id: &str, up: &super::sync::Uploaded| {
        tracing::warn!(
            "offsite: {elected} had not put archive {id} of {path} of {node} in {} for {}s;              it is there now, from this node ({} of {} member(s) sent)",
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
                } else if s.behind || s.checked.is_none() || missing {
                    ("behind", s.since_ms.or_else(|| missing.then(crate::clock::now_ms)))
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
