//! The log actor: owns this node's [`MeshState`], its [`History`] and its
//! clock.
//!
//! Messages and their senders:
//! - [`Record`] (API handlers, the job runner, the replica actor): a new
//!   local event → a new entry, stored durably, folded into the state, then
//!   pushed to peers by gossip.
//! - [`Gossiped`] (the router: gossip on [`LOG_TOPIC`]): entries from
//!   peers, folded into the state; kept durably when this node keeps their
//!   series.
//! - [`ServeStatePull`] (the router: a peer's anti-entropy pull on
//!   [`STATE`]): answered with the records of the buckets where the
//!   digests differ.
//! - [`StateReceived`] (itself: the answer to this node's pull): records
//!   merged; a cut answer triggers the next pull at once.
//! - [`ServeHistory`] (the router: a peer reading history on [`HISTORY`]).
//!
//! [`serve_state`], [`serve_history`] and [`hear`] are the handlers the
//! node registers with its router for these.
//! - [`Query`] (HTTP API): a page of the history kept here.
//! - [`GetJobs`], [`GetJobsOf`], [`GetCatalog`], [`GetCatalogs`],
//!   [`GetNotified`], [`ForRequest`], [`GetKeepers`], [`GetStats`] (HTTP
//!   API, scheduler, notifier, replica actor): views read from the state.
//!
//! Every few seconds it pulls state from a random peer (eagerly, for every
//! difference, just after start; otherwise only for buckets quiet for
//! [`QUIET_MS`], since gossip carries what changed a moment ago); every
//! second it writes the records that changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Handler};

use super::anti_entropy::Settled;
use super::entry::{Entry, Event};
use super::history::History;
use super::hlc::{too_far_ahead, Clock, MAX_AHEAD_MS};
use super::mesh::MeshState;
use super::proto::LOG_TOPIC;
use super::records::SeriesKey;
use super::signing::seal_entry;
use super::state_disk;
use crate::clock::now_ms;
use crate::net::actor::Misbehaved;
use crate::net::client::NetClient;
use crate::store::{KvStore, StoreError};
use crate::workers::Worker;

mod gossip;
pub mod messages;
mod reads;
pub mod serve;
mod sync;

pub use messages::{
    Append, ForRequest, GetCatalog, GetCatalogs, GetJobs, GetJobsOf, GetKeepers, GetNotified, GetOrigins, GetStats,
    Gossiped, IsCaughtUp, Query, ServeHistory, ServeStatePull, SetPlacement, StateReceived, StateStats, TakeEntry,
};

/// Entries re-folded from the durable history at start-up: the state on
/// disk is written once a second, so the newest own entries may be missing.
const REFOLD: usize = 1_000;
/// Entries held back for a clock running ahead, at most: beyond, they are
/// dropped (state pulls and history backfill bring what they said later).
pub const HELD_MAX: usize = 10_000;
/// How long a node that has just started waits for a peer to tell it how
/// far it had written before it writes anyway (a lone node, or a mesh
/// whose peers are all down).
pub const SEQ_WAIT_MS: i64 = 3_000;
/// The most this node's next seq moves at once on a peer's word.
pub const SEQ_JUMP_MAX: u64 = 1 << 32;
/// A bucket that changed less than this long ago is left to gossip in a
/// pull that is not eager.
pub const QUIET_MS: i64 = 5_000;
/// The log of backmesh 0.1 before the state/history split (one tree with
/// every entry of the mesh), migrated at start-up.
const OLD_LOG_TREE: &str = "log";

pub struct LogActor {
    /// This actor's own address, once started: where the answers of its
    /// state pulls come back.
    this: Option<actix::Addr<LogActor>>,
    /// Where refusals of what a peer sent are reported (membership).
    misdeeds: Option<actix::Recipient<Misbehaved>>,
    state: MeshState,
    /// When each bucket of the state last changed (for anti-entropy answers).
    settled: Settled,
    /// A first eager pull has been answered in full since start: until
    /// then, one is tried every second (peers may not be connected yet).
    caught_up: bool,
    /// This node writes entries: it has learnt from a peer how far it
    /// had written (or none answered within [`SEQ_WAIT`]). Until then its
    /// events wait in `waiting`, so that a node that lost its database,
    /// or runs on an old copy of it, never writes a seq twice.
    writing: bool,
    waiting: Vec<(Event, tokio::sync::oneshot::Sender<Result<Entry, StoreError>>)>,
    started_ms: i64,
    /// The pull waiting for its answer: when it was sent, and whether it
    /// was eager. One at a time; a lost answer is given up after a while.
    in_flight: Option<(i64, bool, u16)>,
    /// Peers already named for sending records this version does not know.
    told_unknown: BTreeSet<String>,
    /// Peers already named for claiming this node wrote more than it did.
    told_seq: BTreeSet<String>,
    /// Entries dated too far ahead of this node's clock, by (origin, seq):
    /// taken in once the clock catches up (at most [`HELD_MAX`]).
    held: BTreeMap<(String, u64), Entry>,
    /// Origins and peers already named for clocks running ahead.
    told_ahead: BTreeSet<String>,
    history: History,
    clock: Clock,
    /// This node's identity key: it signs every entry and register it writes.
    identity: libp2p::identity::Keypair,
    me: String,
    my_name: String,
    next_seq: u64,
    kv: Arc<dyn KvStore>,
    net: NetClient,
    pull_every: Duration,
    /// The last placement heard of, and the series it elects this node for.
    placement: Option<(Vec<crate::placement::Candidate>, usize)>,
    elected: BTreeSet<SeriesKey>,
    /// Job records when `elected` was computed (a new job may be elected).
    elected_jobs: usize,
    /// Elected series whose earlier history is not fetched yet (tried
    /// again every placement round until a keeper answers), and those
    /// being fetched now.
    to_backfill: BTreeSet<SeriesKey>,
    backfilling: BTreeSet<SeriesKey>,
    /// Nodes the operator retired: their jobs leave the views.
    retired: BTreeSet<String>,
    /// Where it says how anti-entropy and backfill fare (`status --workers`).
    workers: (Worker, Worker),
    /// This node's entries written but not yet synced, with whoever waits
    /// for each: one sync makes a whole burst of them durable.
    unsynced: Vec<(Entry, tokio::sync::oneshot::Sender<Result<Entry, StoreError>>)>,
}

impl LogActor {
    /// Reports how anti-entropy and history backfill fare to these workers.
    pub fn with_workers(mut self, anti_entropy: Worker, backfill: Worker) -> Self {
        self.workers = (anti_entropy, backfill);
        self
    }

    /// Reports refusals of what peers send to `to` (the membership actor).
    pub fn reporting_to(mut self, to: actix::Recipient<Misbehaved>) -> Self {
        self.misdeeds = Some(to);
        self
    }

    /// Loads this node's state and history (`identity` is its key),
    /// migrating a data directory of the old whole-log format.
    pub fn load(
        identity: libp2p::identity::Keypair,
        my_name: String,
        kv: Arc<dyn KvStore>,
        history_dir: &Path,
        pull_every: Duration,
        net: NetClient,
    ) -> Result<Self, StoreError> {
        let me = identity.public().to_peer_id().to_string();
        let mut state = MeshState::new();
        state_disk::load(kv.as_ref(), &mut state)?;
        let mut actor = LogActor {
            this: None,
            misdeeds: None,
            state,
            settled: Settled::default(),
            caught_up: false,
            writing: false,
            waiting: Vec::new(),
            started_ms: now_ms(),
            in_flight: None,
            told_unknown: BTreeSet::new(),
            told_seq: BTreeSet::new(),
            held: BTreeMap::new(),
            told_ahead: BTreeSet::new(),
            history: History::open(history_dir)?,
            clock: Clock::new(me.clone()),
            identity,
            me,
            my_name,
            next_seq: 1,
            kv,
            net,
            pull_every,
            placement: None,
            elected: BTreeSet::new(),
            elected_jobs: 0,
            to_backfill: BTreeSet::new(),
            unsynced: Vec::new(),
            backfilling: BTreeSet::new(),
            retired: BTreeSet::new(),
            workers: (Worker::detached("anti-entropy"), Worker::detached("backfill")),
        };
        actor.migrate()?;
        let moved = actor.history.migrate_from(actor.kv.as_ref())?;
        if moved > 0 {
            tracing::info!("moved {moved} history entries from the embedded store to {}", history_dir.display());
        }
        for e in actor.history.newest(REFOLD)? {
            actor.state.apply(&e);
            actor.history.remember(&e);
        }
        // What this node wrote before it sealed its registers (an older
        // version), sealed now: peers take in only sealed registers.
        let resealed = actor.state.reseal(&actor.me, &actor.my_name, &actor.identity);
        if resealed > 0 {
            tracing::info!("sealed {resealed} registers of the mesh state this node wrote before it signed them");
        }
        // Its own jobs written by another node (before protocol 11): written
        // again by this node, once it knows its seq, so that peers take them.
        let adopt = actor.state.adoptions(&actor.me, &actor.my_name);
        if !adopt.is_empty() {
            tracing::info!(
                "writing again as this node's own {} job and pause records that another node wrote for it \
                 (before mesh protocol 11, docs/operations.md, \"Upgrading\")",
                adopt.len()
            );
            for event in adopt {
                let (tx, _) = tokio::sync::oneshot::channel();
                actor.waiting.push((event, tx));
            }
        }
        actor.persist()?;
        if let Some(t) = actor.state.max_time() {
            actor.clock.observe(&t, now_ms());
        }
        actor.next_seq = actor.history.max_seq(&actor.me).max(actor.state.max_seq(&actor.me)).saturating_add(1);
        Ok(actor)
    }

    /// Moves the entries of the old whole-log tree into state and history,
    /// keeping durably only what this node keeps; then drops the old tree.
    /// Safe to run again after a crash: both steps are idempotent.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let old = self.kv.scan_prefix(OLD_LOG_TREE, &[])?;
        if old.is_empty() {
            return Ok(());
        }
        let entries: Vec<Entry> = old.iter().map(|(_, v)| super::history::decode(v)).collect::<Result<_, _>>()?;
        for e in &entries {
            self.state.apply(e);
        }
        let mut kept = 0;
        for e in &entries {
            if self.keeps(e) {
                kept += usize::from(self.history.store(e)?);
            }
            self.history.remember(e);
        }
        self.history.sync()?;
        self.persist()?;
        self.kv.flush()?;
        self.kv.drop_tree(OLD_LOG_TREE)?;
        self.kv.flush()?;
        tracing::info!(
            "migrated the log: {} entries folded into {} state records; {kept} kept as this node's history",
            entries.len(),
            self.state.len()
        );
        Ok(())
    }

    /// Whether this node keeps `e` durably: it wrote it, it concerns this
    /// node, or this node holds archives of its series.
    fn keeps(&mut self, e: &Entry) -> bool {
        if e.origin == self.me || e.event.node() == self.my_name {
            return true;
        }
        match e.event.path() {
            Some(path) => {
                self.elected.contains(&(e.event.node().to_string(), path.to_string()))
                    || self.state.holders_of(e.event.node(), path).contains(&self.my_name)
            }
            None => false,
        }
    }

    /// The series this node is elected to hold under `placement`.
    fn elect(&self) -> BTreeSet<SeriesKey> {
        let Some((candidates, replicas)) = &self.placement else { return BTreeSet::new() };
        self.state
            .job_keys()
            .filter(|(node, _)| *node != self.my_name)
            .filter(|(node, path)| {
                crate::placement::holders(node, path, candidates, *replicas).iter().any(|c| c.name == self.my_name)
            })
            .cloned()
            .collect()
    }

    /// Writes the state records that changed; those a failed write left
    /// are tried again next time.
    fn persist(&mut self) -> Result<(), StoreError> {
        let missing = state_disk::persist(&mut self.state, self.kv.as_ref())?.missing;
        if missing > 0 {
            tracing::warn!(
                "{missing} signatures of the mesh state were not on disk: those registers go to peers unsealed \
                 (they take them from another node)"
            );
        }
        Ok(())
    }

    /// Says once per origin (or peer) that its clock runs ahead of this one.
    fn tell_ahead(&mut self, who: &str, wall_ms: i64, now: i64) {
        if self.told_ahead.insert(who.to_string()) {
            tracing::warn!(
                "{who} sends what is dated {} s ahead of this node's clock: held back until this clock gets there \
                 (is one of the two clocks wrong? a clock may run at most {} s ahead)",
                (wall_ms - now) / 1000,
                MAX_AHEAD_MS / 1000
            );
        }
    }

    /// Takes in the held-back entries that this node's clock has caught up with.
    fn release_held(&mut self) {
        let now = now_ms();
        let ready: Vec<(String, u64)> =
            self.held.iter().filter(|(_, e)| !too_far_ahead(e.time.wall_ms, now)).map(|(k, _)| k.clone()).collect();
        for k in ready {
            if let Some(e) = self.held.remove(&k) {
                if let Err(err) = self.take_in(&e) {
                    tracing::error!("cannot store a log entry from {}: {err}", e.origin_name);
                }
            }
        }
    }

    /// Folds an entry in and keeps it where it belongs; one dated too far
    /// ahead of this node's clock waits in `held`.
    fn take_in(&mut self, e: &Entry) -> Result<(), StoreError> {
        let now = now_ms();
        if too_far_ahead(e.time.wall_ms, now) {
            self.tell_ahead(&e.origin_name, e.time.wall_ms, now);
            if self.held.len() < HELD_MAX {
                self.held.insert((e.origin.clone(), e.seq), e.clone());
            }
            return Ok(());
        }
        self.clock.observe(&e.time, now);
        self.state.apply(e);
        self.history.remember(e);
        if self.keeps(e) {
            self.history.store(e)?;
        }
        Ok(())
    }
}

impl Actor for LogActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // With no network (a node's local commands, tests), no peer can
        // say more than this node's own history.
        if self.net.is_stopped() {
            self.writing = true;
        }
        self.this = Some(ctx.address());
        // Catch up at once rather than at the first interval.
        ctx.run_later(Duration::from_millis(500), |act, _| act.pull(None, 0, true));
        ctx.run_interval(self.pull_every, |act, _| act.pull(None, 0, false));
        ctx.run_interval(Duration::from_secs(1), |act, ctx| {
            act.settled.observe(&act.state, now_ms());
            if !act.caught_up {
                act.pull(None, 0, true);
            }
            if !act.writing && now_ms() - act.started_ms >= SEQ_WAIT_MS {
                if !act.caught_up {
                    tracing::info!(
                        "no peer told this node within {} s how far it had written: it writes on from seq {} \
                         (its own history)",
                        SEQ_WAIT_MS / 1000,
                        act.next_seq
                    );
                }
                act.start_writing(ctx);
            }
            if let Err(e) = act.persist() {
                tracing::error!("cannot write the mesh state: {e}");
            }
            if let Err(e) = act.history.sync() {
                tracing::error!("cannot write the history: {e}");
            }
            if !act.held.is_empty() {
                act.release_held();
            }
        });
    }
}

impl Handler<Append> for LogActor {
    type Result = actix::ResponseFuture<Result<Entry, StoreError>>;
    fn handle(&mut self, msg: Append, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.writing {
            self.write(msg.0, tx, ctx);
        } else {
            self.waiting.push((msg.0, tx));
        }
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(StoreError::Index { reason: "the log stopped before the entry was written".into() })
            })
        })
    }
}

impl LogActor {
    /// Writes the events that waited for this node to learn its seq, and
    /// every later one at once.
    fn start_writing(&mut self, ctx: &mut Context<Self>) {
        self.writing = true;
        for (event, tx) in std::mem::take(&mut self.waiting) {
            self.write(event, tx, ctx);
        }
    }

    /// Writes a local event as this node's next entry; `tx` gets it once
    /// it is durable.
    fn write(
        &mut self,
        event: Event,
        tx: tokio::sync::oneshot::Sender<Result<Entry, StoreError>>,
        ctx: &mut Context<Self>,
    ) {
        let now = now_ms();
        if self.clock.jumped_back(now) {
            tracing::warn!(
                "this node's clock was set back by more than {} s (it had run ahead): \
                 new entries are dated by the clock again",
                MAX_AHEAD_MS / 1000
            );
        }
        let mut entry = Entry::new(self.me.clone(), self.my_name.clone(), self.next_seq, self.clock.tick(now), event);
        self.carry_recent(&mut entry);
        seal_entry(&mut entry, &self.identity);
        // A seq is used once, even by an entry whose write fails half-way.
        self.next_seq = self.next_seq.saturating_add(1);
        if let Err(e) = self.history.store(&entry) {
            let _ = tx.send(Err(e));
            return;
        }
        // Stored, then synced with every entry recorded meanwhile (a burst
        // of runs costs one sync, not one each), then visible and sent:
        // a crash never loses an entry anyone saw.
        if self.unsynced.is_empty() {
            ctx.run_later(Duration::ZERO, |act, _| act.sync_recorded());
        }
        self.unsynced.push((entry, tx));
    }
}

impl LogActor {
    /// Puts in a run's entry the runs of its series before it: the newest
    /// this node wrote (waiting for its sync, or in the state) and the list
    /// that one carried.
    fn carry_recent(&self, entry: &mut Entry) {
        let (node, Some(path)) = (entry.event.node(), entry.event.path()) else { return };
        if entry.event.run().is_none() || node != self.my_name {
            return;
        }
        let same = |e: &Entry| e.event.run().is_some() && e.event.node() == node && e.event.path() == Some(path);
        let before = match self.unsynced.iter().rev().map(|(e, _)| e).find(|e| same(e)) {
            Some(e) => e.event.run().map(|(result, list)| (e.time.wall_ms, result, list.clone())),
            None => self.state.last_run(node, path),
        };
        let Some((at_ms, result, list)) = before else { return };
        let gap_s = (entry.time.wall_ms.saturating_sub(at_ms).max(0) as u64).saturating_add(500) / 1000;
        let list = list.then(result, gap_s);
        if let Some(r) = entry.event.recent_mut() {
            *r = list;
        }
    }

    /// Syncs this node's entries recorded since the last call, then makes
    /// them visible, sends them and answers whoever recorded them.
    fn sync_recorded(&mut self) {
        let done = std::mem::take(&mut self.unsynced);
        if let Err(e) = self.history.sync() {
            tracing::error!("cannot write this node's log entries: {e}");
            for (_, tx) in done {
                let _ = tx.send(Err(StoreError::Index { reason: format!("cannot write the entry: {e}") }));
            }
            return;
        }
        for (entry, tx) in done {
            self.state.apply(&entry);
            self.history.remember(&entry);
            let (net, data) = (self.net.clone(), crate::codec::encode(&entry));
            actix::spawn(async move {
                let _ = net.publish(LOG_TOPIC, data).await;
            });
            let _ = tx.send(Ok(entry));
        }
    }
}

impl LogActor {
    /// What is wrong with `e` if its origin wrote what only another node
    /// may: a run of another node's series, a copy another holder keeps.
    /// The writer must go by the name the event names, and that name must
    /// be bound to it here (or bound to no one yet).
    fn out_of_authority(&self, e: &Entry) -> Option<String> {
        let author = e.event.author()?;
        if author != e.origin_name {
            return Some(format!(
                "a `{}` entry that only node {author} may write, as node {} (seq {})",
                e.event.kind(),
                e.origin_name,
                e.seq
            ));
        }
        match crate::store::origin_bound(self.kv.as_ref(), author) {
            Ok(Some(bound)) if bound != e.origin => Some(format!(
                "a `{}` entry in the name of node {author}, which is {bound} here (seq {})",
                e.event.kind(),
                e.seq
            )),
            Ok(_) => None,
            Err(err) => {
                tracing::warn!("cannot read who node {author} is: {err}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::hlc::Clock;
    use crate::log::records::{Record as StateRecord, RecordKey};
    use crate::net::client::Verdict;
    use crate::seal::Seal;
    use crate::store::MemKv;
    use libp2p::identity::Keypair;

    /// A node with an identity of its own.
    struct Peer {
        key: Keypair,
        id: String,
        name: String,
    }

    fn peer(name: &str) -> Peer {
        let key = Keypair::generate_ed25519();
        Peer { id: key.public().to_peer_id().to_string(), key, name: name.into() }
    }

    impl Peer {
        /// Its entry `seq`, dated `wall_ms`, signed and sealed by it.
        fn entry(&self, seq: u64, wall_ms: i64, event: Event) -> Entry {
            let mut e = self.unsigned(seq, wall_ms, event);
            seal_entry(&mut e, &self.key);
            e
        }

        /// The same, as a node before signatures wrote it (or a forger without its key).
        fn unsigned(&self, seq: u64, wall_ms: i64, event: Event) -> Entry {
            let time = crate::log::hlc::Hlc { wall_ms, logical: 0, node: self.id.clone() };
            Entry::new(self.id.clone(), self.name.clone(), seq, time, event)
        }

        /// Gossip of `e` published by this peer.
        fn publishes(&self, e: &Entry) -> Gossiped {
            Gossiped { from: self.id.clone(), id: Vec::new(), data: crate::codec::encode(e) }
        }

        /// Its log actor on `kv`, its history in `dir`.
        fn load(&self, kv: Arc<MemKv>, dir: &std::path::Path) -> LogActor {
            LogActor::load(self.key.clone(), self.name.clone(), kv, dir, Duration::from_secs(10), NetClient::stopped())
                .unwrap()
        }
    }

    fn registered(node: &str, path: &str) -> Event {
        Event::Registered {
            node: node.into(),
            path: path.into(),
            every_min: 5,
            excludes: vec![],
            spec: Default::default(),
        }
    }

    /// Entries of two origins as the whole-log format stored them (tree
    /// `log`: origin ‖ 0 ‖ seq → format byte 1 ‖ CBOR).
    fn old_log(kv: &MemKv, peers: [&Peer; 2]) -> Vec<Entry> {
        let mut out = Vec::new();
        for p in peers {
            let (origin, name) = (p.id.as_str(), p.name.as_str());
            let mut c = Clock::new(origin);
            for seq in 1..=5u64 {
                let event = if seq == 1 {
                    Event::Registered {
                        node: name.into(),
                        path: "/srv".into(),
                        every_min: 60,
                        excludes: vec![],
                        spec: Default::default(),
                    }
                } else {
                    Event::Started { node: name.into(), path: "/srv".into(), request: None }
                };
                let e = Entry {
                    origin: origin.into(),
                    origin_name: name.into(),
                    seq,
                    time: c.tick(seq as i64),
                    sig: Seal::None,
                    seals: Vec::new(),
                    event,
                };
                let mut k = origin.as_bytes().to_vec();
                k.push(0);
                k.extend_from_slice(&seq.to_be_bytes());
                let mut v = vec![1u8];
                ciborium::into_writer(&e, &mut v).unwrap();
                kv.put(OLD_LOG_TREE, &k, &v).unwrap();
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn an_old_whole_log_is_migrated_into_state_and_history_once() {
        let kv = Arc::new(MemKv::default());
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (peer("a"), peer("b"));
        let entries = old_log(&kv, [&a, &b]);
        let actor = a.load(kv.clone(), t.path());
        assert_eq!(actor.state.jobs().len(), 2, "both jobs are known");
        assert_eq!(actor.next_seq, 6, "a never reuses a seq");
        assert!(actor.history.holds(&entries[2]).unwrap(), "its own entries are kept");
        assert!(!actor.history.holds(&entries[7]).unwrap(), "b's entries about b are not a's to keep");
        assert!(kv.scan_prefix(OLD_LOG_TREE, &[]).unwrap().is_empty(), "the old tree is gone");
        drop(actor);
        // Loaded again: the state comes from its own tree.
        let mut again = a.load(kv, t.path());
        assert_eq!(again.state.jobs().len(), 2);
        assert_eq!(again.next_seq, 6);
        // What a wrote before seals is sealed by a now; b's stays as it was.
        let job_of = |actor: &mut LogActor, n: &str| actor.state.record(&RecordKey::Job(n.into(), "/srv".into()));
        assert!(matches!(job_of(&mut again, "a"), Some(StateRecord::Job(r)) if r.seal.is_sealed()));
        assert!(matches!(job_of(&mut again, "b"), Some(StateRecord::Job(r)) if !r.seal.is_sealed()));
    }

    #[test]
    fn a_gossiped_entry_is_taken_in_only_under_its_origin_s_signature() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        let mut actor = a.load(Arc::new(MemKv::default()), t.path());
        let entry = b.entry(1, now_ms(), registered("b", "/p"));
        // Written by C in B's name (signed with C's key): forged, and C,
        // which relayed it, named.
        let forged = Entry { sig: c.entry(1, now_ms(), registered("b", "/p")).sig, ..entry.clone() };
        let (verdict, misdeed) = actor.take_gossip(c.publishes(&forged));
        assert_eq!(verdict, Verdict::Reject, "not relayed on");
        let misdeed = misdeed.expect("named");
        assert_eq!(misdeed.peer, c.id);
        assert!(misdeed.what.contains("in the name of b"), "{}", misdeed.what);
        // Unsigned (an older backmesh): dropped, no one blamed.
        let unsigned = Entry { sig: Seal::None, ..entry.clone() };
        let (verdict, misdeed) = actor.take_gossip(c.publishes(&unsigned));
        assert_eq!((verdict, misdeed.is_none()), (Verdict::Ignore, true));
        // Altered on the way (or written by a thief without B's key): its
        // signature does not hold; the relay is named.
        let mut altered = entry.clone();
        altered.event = registered("b", "/etc");
        let (verdict, misdeed) = actor.take_gossip(c.publishes(&altered));
        assert_eq!(verdict, Verdict::Reject);
        let misdeed = misdeed.expect("refused");
        assert_eq!(misdeed.peer, c.id);
        assert!(misdeed.what.contains("did not sign"), "{}", misdeed.what);
        // Signed, but a register sealed with another key.
        let mut reseated = entry.clone();
        reseated.seals[0] = c.entry(1, now_ms(), registered("b", "/p")).seals[0];
        let (verdict, misdeed) = actor.take_gossip(b.publishes(&reseated));
        assert_eq!(verdict, Verdict::Reject);
        assert!(misdeed.expect("refused").what.contains("seals do not hold"));
        assert!(actor.state.jobs().is_empty(), "nothing was taken in");
        assert_eq!(actor.state.max_seq(&b.id), 0);
        // Written by B, relayed by C: taken in and relayed on.
        let (verdict, misdeed) = actor.take_gossip(c.publishes(&entry));
        assert_eq!((verdict, misdeed.is_none()), (Verdict::Accept, true));
        assert_eq!(actor.state.jobs().len(), 1);
    }

    #[test]
    fn only_a_series_node_writes_its_runs_and_only_a_holder_what_it_keeps() {
        let t = tempfile::tempdir().unwrap();
        let kv = Arc::new(MemKv::default());
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        // This node knows node b by its key (its first seal, or the mesh's hellos).
        kv.put(crate::store::ORIGINS, b"b", b.id.as_bytes()).unwrap();
        let mut actor = a.load(kv, t.path());
        let run_of_b = || Event::Started { node: "b".into(), path: "/srv".into(), request: None };
        // C signs, as itself, a run of b's series.
        let m = actor.take_gossip(c.publishes(&c.entry(1, now_ms(), run_of_b()))).1.expect("refused");
        assert_eq!(m.peer, c.id);
        assert!(m.what.contains("only node b may write"), "{}", m.what);
        // C signs, calling itself b.
        let posing = Peer { name: "b".into(), ..peer("c") };
        let m = actor.take_gossip(posing.publishes(&posing.entry(2, now_ms(), run_of_b()))).1.expect("refused");
        assert!(m.what.contains(&format!("which is {} here", b.id)), "{}", m.what);
        // C claims to keep a copy as holder b.
        let copy = Event::Replicated {
            node: "a".into(),
            path: "/srv".into(),
            archive: "x".into(),
            holder: "b".into(),
            bytes: 0,
        };
        assert!(actor.take_gossip(c.publishes(&c.entry(3, now_ms(), copy))).1.is_some());
        assert_eq!(actor.state.max_seq(&c.id), 0, "nothing of C's was taken in");
        // C registers, pauses or resumes b's jobs, signed as itself: a
        // node's jobs are its own to write (an operator asks it by an order).
        for (seq, event) in [
            (4, registered("b", "/srv")),
            (5, Event::Unregistered { node: "b".into(), path: "/srv".into() }),
            (6, Event::Paused { node: "b".into() }),
            (7, Event::Resumed { node: "b".into() }),
        ] {
            let m = actor.take_gossip(c.publishes(&c.entry(seq, now_ms(), event))).1.expect("refused");
            assert!(m.what.contains("only node b may write"), "{}", m.what);
        }
        assert!(actor.state.jobs().is_empty());
        // b's own run and registration are taken in.
        assert!(actor.take_gossip(b.publishes(&b.entry(1, now_ms(), run_of_b()))).1.is_none());
        assert_eq!(actor.state.max_seq(&b.id), 1);
        assert!(actor.take_gossip(b.publishes(&b.entry(2, now_ms(), registered("b", "/srv")))).1.is_none());
        assert_eq!(actor.state.jobs().len(), 1);
    }

    #[test]
    fn a_job_record_sealed_by_another_node_than_its_own_is_named_a_forgery() {
        use crate::log::signing::{slots, Checked};
        let t = tempfile::tempdir().unwrap();
        let kv = Arc::new(MemKv::default());
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        kv.put(crate::store::ORIGINS, b"b", b.id.as_bytes()).unwrap();
        let actor = a.load(kv.clone(), t.path());
        // C writes b's job into its own state and seals it with its key.
        let e = c.entry(1, now_ms(), registered("b", "/srv"));
        let mut state = MeshState::new();
        state.apply(&e);
        let key = RecordKey::Job("b".into(), "/srv".into());
        let mut record = state.record(&key).expect("the job");
        for s in slots(&key, &mut record) {
            *s.sig = Seal::of(crate::seal::Signer::sign(&c.key, &s.msg));
        }
        let mut found = Checked::default();
        let keys = super::gossip::BoundKeys::new(kv.as_ref(), &actor.state);
        assert!(!MeshState::new().check(&key, &mut record, &keys, &mut found));
        assert_eq!(found.forged.len(), 1, "{found:?}");
    }

    #[test]
    fn an_entry_naming_an_invalid_node_path_or_archive_is_refused_and_its_origin_named() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (peer("a"), peer("b"));
        let mut actor = a.load(Arc::new(MemKv::default()), t.path());
        let finished = |node: &str, path: &str, archive: &str| Event::Finished {
            recent: Default::default(),
            node: node.into(),
            path: path.into(),
            archive: archive.into(),
            size: 1,
            files: 1,
            duration_ms: 1,
            warnings: vec![],
            request: None,
            plugin: None,
        };
        let posing = |name: &str| Peer { key: b.key.clone(), id: b.id.clone(), name: name.into() };
        let bad = [
            (posing("b"), finished("b", "/srv", "../../x")),
            (posing("b"), registered("b", "/srv\n/etc")),
            (posing("a b"), finished("a b", "/srv", "20261122T040113.000Z-0a1b2c3d")),
        ];
        for (seq, (who, event)) in bad.into_iter().enumerate() {
            let (verdict, misdeed) = actor.take_gossip(who.publishes(&who.entry(seq as u64 + 1, now_ms(), event)));
            assert_eq!(verdict, Verdict::Reject);
            let m = misdeed.expect("named");
            assert_eq!(m.peer, b.id, "its origin signed it");
            assert!(m.what.contains("names what no node may"), "{}", m.what);
        }
        assert_eq!(actor.state.max_seq(&b.id), 0, "nothing taken in");
        assert!(actor.state.jobs().is_empty());
    }

    #[test]
    fn a_node_learns_its_seq_from_peers_but_no_peer_can_use_it_all_up() {
        let t = tempfile::tempdir().unwrap();
        let (a, x) = (peer("a"), peer("x"));
        let mut actor = a.load(Arc::new(MemKv::default()), t.path());
        let claim = |by: &Peer, seq| {
            let mut theirs = MeshState::new();
            theirs.apply(&by.entry(
                seq,
                now_ms(),
                Event::Started { node: "a".into(), path: "/srv".into(), request: None },
            ));
            StateReceived { records: theirs.records(), unknown: 0, from: x.id.clone(), next_bucket: None }
        };
        assert_eq!(actor.next_seq, 1, "a node that lost its data");
        // X cannot say how far a wrote: only a's own seal counts.
        let forged = Peer { id: a.id.clone(), name: "a".into(), ..peer("x") };
        actor.state_received(claim(&forged, 900));
        assert_eq!(actor.next_seq, 1, "a claim not sealed by a moves nothing");
        actor.state_received(claim(&a, 500));
        assert_eq!(actor.next_seq, 501, "learns how far it had written");
        // A thief with a's key (or a copy of a's data dir) can still claim
        // a huge seq: the step is bounded.
        actor.state_received(claim(&a, u64::MAX - 1));
        assert_eq!(actor.next_seq, 501 + SEQ_JUMP_MAX + 1, "a claim moves it a bounded step");
        assert!(actor.next_seq < u64::MAX / 2, "seqs remain to write");
    }

    #[test]
    fn a_run_s_entry_carries_the_runs_before_it_and_the_state_shows_them_in_order() {
        use crate::log::records::RunResult;
        let t = tempfile::tempdir().unwrap();
        let a = peer("a");
        let mut actor = a.load(Arc::new(MemKv::default()), t.path());
        let t0 = 1_800_000_000_000i64;
        let path = || "/srv".to_string();
        let failed = || Event::Failed {
            recent: Default::default(),
            node: "a".into(),
            path: path(),
            error: "disk full".into(),
            duration_ms: 1,
            request: None,
            plugin: None,
        };
        let unchanged = || Event::Unchanged {
            recent: Default::default(),
            node: "a".into(),
            path: path(),
            archive: "20261122T030000.000Z-deadbeef".into(),
            duration_ms: 1,
            request: None,
            plugin: None,
        };
        actor.state.apply(&a.entry(1, t0, registered("a", "/srv")));
        // The first run carries nothing: there was none before it.
        let mut first = a.unsigned(2, t0 + 1_000, failed());
        actor.carry_recent(&mut first);
        assert!(first.event.run().unwrap().1.is_empty());
        seal_entry(&mut first, &a.key);
        actor.state.apply(&first);
        // The next, an hour later, carries the first, read from the state.
        let mut second = a.unsigned(3, t0 + 3_601_400, unchanged());
        actor.carry_recent(&mut second);
        let runs = second.event.run().unwrap().1.runs();
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].gap_s, runs[0].result), (3_600, Some(RunResult::Failed)));
        // Written but not synced yet: the third takes the second from there.
        seal_entry(&mut second, &a.key);
        let (tx, _rx) = tokio::sync::oneshot::channel();
        actor.unsynced.push((second.clone(), tx));
        let mut third = a.unsigned(4, t0 + 7_201_400, failed());
        actor.carry_recent(&mut third);
        let runs = third.event.run().unwrap().1.runs();
        assert_eq!(
            runs.iter().map(|r| r.result).collect::<Vec<_>>(),
            [RunResult::Unchanged, RunResult::Failed].map(Some)
        );
        seal_entry(&mut third, &a.key);
        actor.unsynced.clear();
        actor.state.apply(&second);
        actor.state.apply(&third);
        // Every node's view: the runs with their times, oldest first.
        let job = actor.state.jobs().into_iter().next().unwrap();
        assert_eq!(
            job.runs,
            vec![
                (t0 + 1_400, RunResult::Failed),
                (t0 + 3_601_400, RunResult::Unchanged),
                (t0 + 7_201_400, RunResult::Failed)
            ]
        );
        // Another node's series is not this node's to write.
        let mut theirs = a.unsigned(
            5,
            t0 + 9_000_000,
            Event::Failed {
                recent: Default::default(),
                node: "b".into(),
                path: path(),
                error: "x".into(),
                duration_ms: 1,
                request: None,
                plugin: None,
            },
        );
        actor.carry_recent(&mut theirs);
        assert!(theirs.event.run().unwrap().1.is_empty());
    }

    #[test]
    fn a_newer_state_format_is_refused_by_name() {
        let kv = Arc::new(MemKv::default());
        kv.put(state_disk::STATE_TREE, &state_disk::key_bytes(&RecordKey::Paused("a".into())), &[9, 0]).unwrap();
        let t = tempfile::tempdir().unwrap();
        let key = Keypair::generate_ed25519();
        let err =
            LogActor::load(key, "a".into(), kv, t.path(), Duration::from_secs(10), NetClient::stopped()).err().unwrap();
        assert!(err.to_string().contains("upgrade backmesh"), "{err}");
    }

    #[test]
    fn an_entry_dated_far_ahead_is_held_back_and_moves_no_clock() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (peer("a"), peer("b"));
        let mut actor = a.load(Arc::new(MemKv::default()), t.path());
        let now = now_ms();
        let registered = |seq, wall_ms| b.entry(seq, wall_ms, registered("b", &format!("/p{seq}")));
        let year = 365 * 24 * 3_600_000;
        actor.take_in(&registered(1, now + year)).unwrap();
        assert!(actor.state.jobs().is_empty(), "not merged");
        assert_eq!(actor.held.len(), 1, "held back");
        assert!(actor.clock.tick(now_ms()).wall_ms < now + MAX_AHEAD_MS, "this node's clock did not move");
        actor.take_in(&registered(2, now + MAX_AHEAD_MS / 2)).unwrap();
        assert_eq!(actor.state.jobs().len(), 1, "a clock a little ahead is taken in");
        actor.release_held();
        assert_eq!(actor.held.len(), 1, "still a year early");
        // The same through a state answer: the far record is left out.
        let mut far = MeshState::new();
        far.apply(&registered(3, now + year));
        let records: Vec<_> = far.records().into_iter().filter(|(k, _)| matches!(k, RecordKey::Job(..))).collect();
        assert_eq!(records.len(), 1);
        actor.state_received(StateReceived { records, unknown: 0, from: b.id.clone(), next_bucket: None });
        assert_eq!(actor.state.jobs().len(), 1, "left out");
    }
}
