//! The log actor: owns this node's copy of the [`Log`] and its clock.
//!
//! Messages and their senders:
//! - [`Record`] (API handlers, the job runner): a new local event → a new
//!   entry, stored, then pushed to peers by gossip.
//! - [`Received`] (network loop: gossip messages and pull answers): entries
//!   from peers, merged and stored; a pull answer with `more` triggers the
//!   next pull at once.
//! - [`ServePull`] (network loop: a peer's pull): answered with a batch.
//! - [`Query`], [`GetJobs`] (HTTP API): read views.
//!
//! Every few seconds it asks the network loop to pull from a random peer.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Handler, Message, MessageResult};
use libp2p::request_response::ResponseChannel;

use super::entry::{Entry, Event};
use super::hlc::Clock;
use super::state::{catalog, catalogs, jobs, CatalogArchive, JobView, Log};
use crate::net::actor::now_ms;
use crate::net::swarm::NetClient;
use crate::net::wire::{LogBatch, LogPull, PULL_BATCH};
use crate::store::{KvStore, StoreError};

/// Appends a local event. Answers the new entry.
#[derive(Message)]
#[rtype(result = "Result<Entry, StoreError>")]
pub struct Record(pub Event);

/// Entries from a peer. `from` and `more` are set for a pull answer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Received {
    pub entries: Vec<Entry>,
    pub from: Option<String>,
    pub more: bool,
}

/// A peer's pull, with the channel its answer goes back on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServePull {
    pub pull: LogPull,
    pub channel: ResponseChannel<LogBatch>,
}

/// Entries by hybrid time, newest last, optionally filtered.
#[derive(Message)]
#[rtype(result = "Vec<Entry>")]
pub struct Query {
    pub node: Option<String>,
    pub path: Option<String>,
    pub limit: usize,
}

#[derive(Message)]
#[rtype(result = "Vec<JobView>")]
pub struct GetJobs;

/// The archives of (node, path) the log knows, newest first, with holders.
#[derive(Message)]
#[rtype(result = "Vec<CatalogArchive>")]
pub struct GetCatalog {
    pub node: String,
    pub path: String,
}

/// The last notification of each job (see [`super::state::notified`]).
#[derive(Message)]
#[rtype(result = "std::collections::BTreeMap<(String, String), String>")]
pub struct GetNotified;

/// Every series' catalog, by (node, path).
#[derive(Message)]
#[rtype(result = "std::collections::BTreeMap<(String, String), Vec<CatalogArchive>>")]
pub struct GetCatalogs;

/// The entries that answer the on-demand request `request`, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<Entry>")]
pub struct ForRequest {
    pub request: String,
}

/// Hands the actor the network client once the swarm runs.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachNet(pub NetClient);

pub struct LogActor {
    log: Log,
    clock: Clock,
    me: String,
    my_name: String,
    kv: Arc<dyn KvStore>,
    net: Option<NetClient>,
    pull_every: Duration,
}

impl LogActor {
    /// Loads the stored log of this node (`me` is its peer id).
    pub fn load(me: String, my_name: String, kv: Arc<dyn KvStore>, pull_every: Duration) -> Result<Self, StoreError> {
        let log = super::store::load(kv.as_ref())?;
        let mut clock = Clock::new(me.clone());
        let now = now_ms();
        for e in log.by_time() {
            clock.observe(&e.time, now);
        }
        Ok(LogActor { log, clock, me, my_name, kv, net: None, pull_every })
    }

    fn pull(&self, from: Option<String>) {
        if let Some(net) = self.net.clone() {
            let pull = LogPull { have: self.log.version_vector(), limit: PULL_BATCH as u32 };
            actix::spawn(async move {
                let _ = net.pull_log(from, pull).await;
            });
        }
    }
}

impl Actor for LogActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.pull_every, |act, _| act.pull(None));
    }
}

impl Handler<Record> for LogActor {
    type Result = Result<Entry, StoreError>;
    fn handle(&mut self, msg: Record, _: &mut Context<Self>) -> Self::Result {
        let entry = Entry {
            origin: self.me.clone(),
            origin_name: self.my_name.clone(),
            seq: self.log.next_seq(&self.me),
            time: self.clock.tick(now_ms()),
            event: msg.0,
        };
        // Stored before it is visible or sent: a crash never loses an entry peers saw.
        super::store::append(self.kv.as_ref(), &entry)?;
        self.kv.flush()?;
        self.log.insert(entry.clone());
        if let Some(net) = self.net.clone() {
            let e = entry.clone();
            actix::spawn(async move {
                let _ = net.publish_entry(e).await;
            });
        }
        Ok(entry)
    }
}

impl Handler<Received> for LogActor {
    type Result = ();
    fn handle(&mut self, msg: Received, _: &mut Context<Self>) {
        let now = now_ms();
        let mut stored = 0;
        for e in msg.entries {
            self.clock.observe(&e.time, now);
            if self.log.get(&e.origin, e.seq).is_none() {
                if let Err(err) = super::store::append(self.kv.as_ref(), &e) {
                    tracing::error!("cannot store a log entry from {}: {err}", e.origin_name);
                    return;
                }
                self.log.insert(e);
                stored += 1;
            }
        }
        if stored > 0 {
            let _ = self.kv.flush();
            tracing::debug!("merged {stored} log entries");
        }
        if msg.more {
            self.pull(msg.from);
        }
    }
}

impl Handler<ServePull> for LogActor {
    type Result = ();
    fn handle(&mut self, msg: ServePull, _: &mut Context<Self>) {
        let limit = (msg.pull.limit as usize).clamp(1, PULL_BATCH);
        let (entries, more) = self.log.missing_for(&msg.pull.have, limit);
        if let Some(net) = self.net.clone() {
            actix::spawn(async move {
                let _ = net.answer_pull(msg.channel, LogBatch { entries, more }).await;
            });
        }
    }
}

impl Handler<Query> for LogActor {
    type Result = MessageResult<Query>;
    fn handle(&mut self, q: Query, _: &mut Context<Self>) -> Self::Result {
        let mut v: Vec<Entry> = self
            .log
            .by_time()
            .into_iter()
            .filter(|e| q.node.as_deref().is_none_or(|n| e.event.node() == n || e.origin_name == n))
            .filter(|e| q.path.as_deref().is_none_or(|p| e.event.path() == Some(p)))
            .cloned()
            .collect();
        if v.len() > q.limit {
            v.drain(..v.len() - q.limit);
        }
        MessageResult(v)
    }
}

impl Handler<GetJobs> for LogActor {
    type Result = MessageResult<GetJobs>;
    fn handle(&mut self, _: GetJobs, _: &mut Context<Self>) -> Self::Result {
        MessageResult(jobs(&self.log))
    }
}

impl Handler<GetCatalog> for LogActor {
    type Result = MessageResult<GetCatalog>;
    fn handle(&mut self, q: GetCatalog, _: &mut Context<Self>) -> Self::Result {
        MessageResult(catalog(&self.log, &q.node, &q.path))
    }
}

impl Handler<GetCatalogs> for LogActor {
    type Result = MessageResult<GetCatalogs>;
    fn handle(&mut self, _: GetCatalogs, _: &mut Context<Self>) -> Self::Result {
        MessageResult(catalogs(&self.log))
    }
}

impl Handler<GetNotified> for LogActor {
    type Result = MessageResult<GetNotified>;
    fn handle(&mut self, _: GetNotified, _: &mut Context<Self>) -> Self::Result {
        MessageResult(super::state::notified(&self.log))
    }
}

impl Handler<ForRequest> for LogActor {
    type Result = MessageResult<ForRequest>;
    fn handle(&mut self, q: ForRequest, _: &mut Context<Self>) -> Self::Result {
        let v = self.log.by_time().into_iter().filter(|e| e.event.request() == Some(&q.request)).cloned().collect();
        MessageResult(v)
    }
}

impl Handler<AttachNet> for LogActor {
    type Result = ();
    fn handle(&mut self, msg: AttachNet, ctx: &mut Context<Self>) {
        self.net = Some(msg.0);
        // Catch up at once rather than at the first interval.
        ctx.run_later(Duration::from_millis(500), |act, _| act.pull(None));
    }
}
