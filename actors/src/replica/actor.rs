//! The replica actor: keeps every backup series at its copies.
//!
//! Messages and senders:
//! - [`ServeXfer`] (the router, through [`serve_xfer`]): a peer offers,
//!   sends or asks for archives over [`XFER`]; store work runs in the
//!   blocking pool.
//! - [`ServeReplica`] (the router, through [`serve_replica`]): `Restore`
//!   and `Verify` asked through another node, the operator's order
//!   checked; [`RestoreHere`], [`VerifyHere`] (this node's HTTP API).
//! - [`ArchiveStored`] (the jobs actor): copies go now.
//!
//! Every `sync_every` it compares what it keeps with where copies belong
//! (see [`crate::placement`]; the decisions are [`super::plan`]'s, pure
//! and table-tested) and pushes what a holder lacks:
//! - the origin pushes its retained archives to the holders of each of its
//!   series;
//! - when the origin has been gone longer than `repair_after`, every node
//!   that keeps a copy pushes to the holders elected among the live nodes,
//!   so each retained archive returns to R copies (`repaired` entries).
//!
//! A holder counts as present until it has been silent for `repair_after`:
//! a restart does not move keys, and a push to a holder that is down waits
//! until it is seen again (then with backoff if it keeps failing). Nothing
//! is queued that the store cannot reproduce: after a restart the next
//! round finds the same work again, so delivery is at-least-once, and the
//! holder's answers (`Want` lists only what it lacks; `Commit` of a kept
//! archive is a no-op) make it idempotent.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::holder::{serve, Blame, Holder, Wanted};
use super::plan::{Handoff, Planner, Push, PushError};
use super::proto::{ReplicaAnswer, ReplicaRequest, XferRequest, XferResponse, REPLICA, XFER};
use super::push::{all_confirm, run_push, PushFailed};
use super::quota::{Quota, Usage};
pub use super::restore::RestoreHere;
use super::restore::{check_target, restore, BadTarget};
use super::verify::verify_series;
use crate::authority::Authority;
use crate::disk::free_bytes;
use crate::hash::Digest;
use crate::jobs::actor::ArchiveStored;
use crate::log::actor::{Append, LogActor};
use crate::log::entry::Event;
use crate::net::actor::{GetPeers, MembershipActor, Misbehaved};
use crate::net::client::NetClient;
use crate::net::membership::PeerView;
use crate::net::rpc::{InboundRequest, Reply};
use crate::store::{Retention, Store};
use crate::workers::Worker;

/// How replication behaves.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// Copies of each series besides the origin's own.
    pub replicas: usize,
    /// Archives kept per (node, path) on every holder.
    pub keep: Retention,
    /// How long a silent holder keeps its place before others take over.
    pub repair_after: Duration,
    /// How often copies are checked.
    pub sync_every: Duration,
    /// The most one other node's archives may take here.
    pub quota: Quota,
    /// What no restore may write into, over or above.
    pub protected: super::restore::Protected,
    /// New archives of one series taken at once from its node before its
    /// schedule holds them ([`super::arrivals`]).
    pub burst: u32,
}

/// A transfer request from another node (its peer id). Sender: the
/// router, through [`serve_xfer`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServeXfer {
    pub peer: String,
    pub request: XferRequest,
    pub reply: Reply<XferResponse>,
}

/// A restore or verify asked by another node, its order checked. Sender:
/// the router, through [`serve_replica`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServeReplica {
    /// The peer that asks.
    pub peer: String,
    pub request: ReplicaRequest,
    pub reply: Reply<ReplicaAnswer>,
}

/// The router's handler of [`XFER`] requests.
pub fn serve_xfer(replica: Addr<ReplicaActor>) -> impl Fn(InboundRequest) {
    move |req| {
        let reply = req.reply.typed::<XferResponse>();
        match crate::codec::decode::<XferRequest>(&req.body, XFER.max_request) {
            Ok(request) => replica.do_send(ServeXfer { peer: req.peer, request, reply }),
            Err(e) => {
                tracing::debug!("an unreadable transfer request from {}: {e}", req.peer);
                reply.send(&XferResponse::Refused { reason: format!("an unreadable request: {e}") })
            }
        }
    }
}

/// The router's handler of [`REPLICA`] requests: what makes this node act
/// (`me` is its name) needs the operator's order; a request without a good
/// one is refused, logged and counted against the asking peer.
pub fn serve_replica(
    replica: Addr<ReplicaActor>,
    me: String,
    authority: Arc<Authority>,
    misdeeds: Recipient<Misbehaved>,
) -> impl Fn(InboundRequest) {
    move |req| {
        let reply = req.reply.typed::<ReplicaAnswer>();
        let request = match crate::codec::decode::<ReplicaRequest>(&req.body, REPLICA.max_request) {
            Ok(r) => r,
            Err(e) => return reply.send(&ReplicaAnswer::Failed { reason: format!("an unreadable request: {e}") }),
        };
        let Some((act, order)) = request.act(&me) else {
            return replica.do_send(ServeReplica { peer: req.peer.clone(), request, reply });
        };
        let refused = match order {
            None => crate::authority::needs_order(&me, act.name()),
            Some(o) => match authority.admit(o, &act, &me, crate::clock::now_ms()) {
                Ok(_) => return replica.do_send(ServeReplica { peer: req.peer.clone(), request, reply }),
                Err(e) => e.to_string(),
            },
        };
        tracing::warn!("refused a request from the mesh ({}): {refused}", req.peer);
        misdeeds.do_send(Misbehaved { peer: req.peer.clone(), what: format!("an order refused: {refused}") });
        reply.send(&ReplicaAnswer::Failed { reason: refused });
    }
}

/// Verify this node's copies (of (node, path), or all). Answers the series
/// that will be verified; one `verified` entry each follows, with `request`.
#[derive(Message)]
#[rtype(result = "Vec<(String, String)>")]
pub struct VerifyHere {
    pub node: Option<String>,
    pub path: Option<String>,
    pub request: String,
}

/// Outcome of one push of a series to one holder.
#[derive(Message)]
#[rtype(result = "()")]
struct Pushed {
    push: Push,
    confirmed: Vec<String>,
    error: Option<PushFailed>,
}

pub struct ReplicaActor {
    me: String,
    store: Arc<Store>,
    log: Addr<LogActor>,
    membership: Addr<MembershipActor>,
    net: NetClient,
    cfg: ReplicaConfig,
    planner: Planner,
    syncing: bool,
    wanted: Wanted,
    /// Name → the one peer id the mesh knows by it (hellos and the log),
    /// as of the last round: who may bind a name to its seal.
    claimants: Arc<HashMap<String, String>>,
    /// What each other node's archives take here, against `cfg.quota`.
    usage: Arc<Mutex<Usage>>,
    /// Series whose copy here a holder found damaged → when it was last
    /// verified for that.
    mending: HashMap<(String, String), i64>,
    /// When what this node keeps was last compared with what the catalog
    /// says it keeps; and what it has said since start, each once.
    holdings_at: Option<Instant>,
    announced: HashSet<(String, bool)>,
    /// The offsite bucket, with `--offsite`: told of every round, and read
    /// when no live node has an archive asked for.
    offsite: Option<(Addr<crate::offsite::actor::OffsiteActor>, Arc<crate::offsite::sync::Offsite>)>,
    /// Where it says how the copies fare (`status --workers`).
    worker: Worker,
    /// The operator keys this node trusts: an order to restore or fetch
    /// lets its node read the series here.
    authority: Arc<Authority>,
    /// The restores under way here, by request: how far each has come.
    restores: Arc<Mutex<Running>>,
    /// The live nodes placement elected among in the last round: who may
    /// read a series here as its elected holder.
    candidates: Arc<Vec<crate::placement::Candidate>>,
    /// The members of archives read lately (a `Get` names its archive).
    members: Arc<super::reads::MemberSets>,
    /// Nodes the operator retired, and when: their series are collected
    /// here once the grace period has passed since.
    retired: BTreeMap<String, i64>,
    /// Each job's schedule as of the last round, (node, path) → minutes.
    schedules: Arc<HashMap<(String, String), u64>>,
    /// New archives each series' node sent here lately (the flood bound).
    arrivals: Arc<Mutex<super::arrivals::Arrivals>>,
}

/// How often the catalog's word on what this node keeps is checked against
/// its disk (the first time once the log writes: [`crate::log::actor::SEQ_WAIT_MS`]).
const HOLDINGS_EVERY: Duration = Duration::from_secs(60);

/// Name → peer id for names that one peer alone claims, in hellos
/// (`peers`) or in its entries (`origins`: peer id, name).
fn unique_claims(peers: &[PeerView], origins: &[(String, String)]) -> HashMap<String, String> {
    let mut by_name: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (peer, name) in peers.iter().map(|p| (&p.peer_id, &p.name)).chain(origins.iter().map(|(p, n)| (p, n))) {
        by_name.entry(name).or_default().insert(peer);
    }
    by_name
        .into_iter()
        .filter(|(_, peers)| peers.len() == 1)
        .filter_map(|(name, peers)| Some((name.to_string(), (*peers.iter().next()?).to_string())))
        .collect()
}

impl ReplicaActor {
    pub fn new(
        me: String,
        store: Arc<Store>,
        log: Addr<LogActor>,
        membership: Addr<MembershipActor>,
        net: NetClient,
        cfg: ReplicaConfig,
    ) -> Self {
        let planner = Planner::new(me.clone(), cfg.replicas, cfg.repair_after.as_millis() as i64);
        let arrivals = Arc::new(Mutex::new(super::arrivals::Arrivals::new(cfg.burst)));
        ReplicaActor {
            me,
            store,
            log,
            membership,
            net,
            cfg,
            planner,
            syncing: false,
            wanted: Wanted::default(),
            claimants: Arc::default(),
            usage: Arc::default(),
            mending: HashMap::new(),
            holdings_at: None,
            announced: HashSet::new(),
            offsite: None,
            worker: Worker::detached("copies"),
            authority: Arc::default(),
            restores: Arc::default(),
            candidates: Arc::default(),
            schedules: Arc::default(),
            arrivals,
            members: Arc::default(),
            retired: BTreeMap::new(),
        }
    }

    /// Deletes the archives of retired nodes whose grace period (counted
    /// from the retirement) has passed; `pruned` entries say so.
    fn collect_retired(&mut self, ctx: &mut Context<Self>) {
        let grace = self.cfg.keep.grace.map_or(0, |g| g.as_millis() as i64);
        let now = crate::clock::now_ms();
        let due: Vec<String> =
            self.retired.iter().filter(|(_, at)| **at + grace <= now).map(|(n, _)| n.clone()).collect();
        if due.is_empty() {
            return;
        }
        let store = self.store.clone();
        let work = tokio::task::spawn_blocking(move || {
            let mut gone = Vec::new();
            for a in store.list_all().unwrap_or_default().into_iter().filter(|a| due.contains(&a.node)) {
                match store.remove_archive(&a.node, &a.path, &a.id) {
                    Ok(true) => gone.push((a.node, a.path, a.id, a.hidden)),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("cannot collect archive {} of retired node {}: {e}", a.id, a.node),
                }
            }
            if !gone.is_empty() {
                if let Err(e) = store.gc() {
                    tracing::warn!("collection after the archives of retired nodes: {e}");
                }
            }
            gone
        });
        ctx.spawn(work.into_actor(self).map(|gone, act, _| {
            let gone = gone.unwrap_or_default();
            if !gone.is_empty() {
                tracing::info!("collected {} archives of retired nodes, their grace period over", gone.len());
            }
            for (node, path, archive, hidden) in gone {
                if !hidden {
                    act.log.do_send(Append(Event::Pruned { node, path, archive, holder: act.me.clone() }));
                }
            }
        }));
    }

    /// Readers under an order of these operators are entitled (without
    /// one, only the series' node and its holders read here).
    pub fn with_authority(mut self, authority: Arc<Authority>) -> Self {
        self.authority = authority;
        self
    }

    /// Reports how the copies fare to `worker`.
    pub fn with_worker(mut self, worker: Worker) -> Self {
        self.worker = worker;
        self
    }

    /// Copies kept in `offsite` too, by `actor`.
    pub fn with_offsite(
        mut self,
        actor: Addr<crate::offsite::actor::OffsiteActor>,
        offsite: Arc<crate::offsite::sync::Offsite>,
    ) -> Self {
        self.offsite = Some((actor, offsite));
        self
    }

    fn sync(&mut self, ctx: &mut Context<Self>) {
        let net = self.net.clone();
        if self.syncing {
            return;
        }
        self.syncing = true;
        let (membership, store, keep) = (self.membership.clone(), self.store.clone(), self.cfg.keep);
        let (log, seen) = (self.log.clone(), self.claimants.clone());
        let work = async move {
            let peers = membership.send(GetPeers).await.ok()?;
            let origins = log.send(crate::log::actor::GetOrigins).await.ok()?;
            let jobs = log.send(crate::log::actor::GetJobs).await.ok()?;
            let schedules: HashMap<(String, String), u64> =
                jobs.iter().map(|j| ((j.node.clone(), j.path.clone()), j.every_min)).collect();
            let claims = unique_claims(&peers.1, &origins);
            let held = tokio::task::spawn_blocking(move || {
                // Every name the mesh agrees on is bound here on first
                // sight: later seals of that node must be by the same key.
                // Claims seen last round were bound then: a round costs a
                // store read per new claim, not one per peer.
                for (name, peer) in claims.iter().filter(|(n, p)| seen.get(*n) != Some(*p)) {
                    if let Err(e) = store.bind_origin(name, peer) {
                        tracing::warn!("cannot record that node {name} is {peer}: {e}");
                    }
                }
                (store.held_series(keep, crate::clock::now_ms()), claims)
            })
            .await
            .ok()?;
            Some((peers, held, schedules))
        };
        ctx.spawn(work.into_actor(self).map(move |found, act, ctx| {
            act.syncing = false;
            let Some(((me, peers), (held, claims), schedules)) = found else { return };
            act.claimants = Arc::new(claims);
            act.schedules = Arc::new(schedules);
            let now = crate::clock::now_ms();
            let plan = act.planner.plan(&me, &peers, &held, now);
            act.candidates = Arc::new(plan.candidates.clone());
            if let Some((offsite, _)) = &act.offsite {
                offsite.do_send(crate::offsite::actor::Round {
                    candidates: plan.candidates.clone(),
                    replicas: act.cfg.replicas,
                    me: me.peer_id.clone(),
                });
            }
            act.log
                .do_send(crate::log::actor::SetPlacement { candidates: plan.candidates, replicas: act.cfg.replicas });
            for (path, n) in plan.short {
                tracing::warn!(
                    "{path}: {n} holder(s) instead of {} — the mesh has too few other nodes",
                    act.cfg.replicas
                );
            }
            for h in plan.handoffs {
                let (net, addr) = (net.clone(), ctx.address());
                let store = act.store.clone();
                actix::spawn(async move {
                    let confirmed = all_confirm(&net, store, &h).await;
                    addr.do_send(HandedOff { handoff: h, confirmed });
                });
            }
            for push in plan.pushes {
                let (net, store, addr) = (net.clone(), act.store.clone(), ctx.address());
                actix::spawn(async move {
                    let (confirmed, error) = run_push(&net, &store, &push).await;
                    addr.do_send(Pushed { push, confirmed, error });
                });
            }
            act.report(now);
        }));
    }
}

impl ReplicaActor {
    /// Says how the copies fare: pushes in flight, holders backed off, or nothing to do.
    fn report(&self, now: i64) {
        let (busy, backed_off) = self.planner.load(now);
        if busy > 0 {
            self.worker.busy(format!("{busy} copies in flight"));
        } else if backed_off > 0 {
            self.worker.throttled(format!("{backed_off} holder(s) backed off after failures"));
        } else {
            self.worker.idle(now);
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct HandedOff {
    handoff: Handoff,
    confirmed: bool,
}

impl Actor for ReplicaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.cfg.sync_every, |act, ctx| act.sync(ctx));
        let first = Duration::from_millis(crate::log::actor::SEQ_WAIT_MS as u64 + 2_000);
        ctx.run_later(first, |act, ctx| {
            act.check_holdings(ctx);
            ctx.run_interval(HOLDINGS_EVERY, |act, ctx| act.check_holdings(ctx));
        });
    }
}

impl ReplicaActor {
    /// Makes the catalog say what this node's disk keeps. A crash between
    /// an archive written (or dropped) here and its `finished`,
    /// `replicated` or `pruned` entry being durable leaves the two apart
    /// (a node restarted writes nothing until a peer told it its seq, and
    /// may be killed in between): this node then says once what it keeps
    /// (`replicated`, itself the holder) or no longer keeps (`pruned`).
    /// The catalog is read before the disk, so an archive written or
    /// dropped in between is said as the disk has it.
    fn check_holdings(&mut self, ctx: &mut Context<Self>) {
        if self.holdings_at.is_some_and(|t| t.elapsed() < HOLDINGS_EVERY / 2) {
            return;
        }
        self.holdings_at = Some(Instant::now());
        self.collect_retired(ctx);
        let (log, store, retention) = (self.log.clone(), self.store.clone(), self.cfg.keep);
        let keep = retention.keep;
        let work = async move {
            let catalogs = log.send(crate::log::actor::GetCatalogs).await.ok()?;
            let on_disk = tokio::task::spawn_blocking(move || {
                // Hidden archives past their grace period go (their `pruned`
                // was said when they were hidden).
                match store.expire_hidden(retention) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("deleted {n} hidden archives whose grace period is over"),
                    Err(e) => tracing::warn!("cannot delete the hidden archives past their grace period: {e}"),
                }
                store.held_series(Retention::keep(usize::MAX), crate::clock::now_ms())
            })
            .await
            .ok()?;
            Some((catalogs, on_disk))
        };
        ctx.spawn(work.into_actor(self).map(move |found, act, _| {
            let Some((catalogs, on_disk)) = found else { return };
            let drift = holdings_drift(&act.me, &catalogs, &on_disk, keep);
            if act.announced.len() > 10_000 {
                // Bounded: said again at worst, once more each.
                act.announced.clear();
            }
            for ((node, path, archive), keeps) in drift {
                if !act.announced.insert((archive.clone(), keeps)) {
                    continue;
                }
                let holder = act.me.clone();
                if keeps {
                    tracing::info!("the catalog did not say that this node keeps archive {archive} of {path} on {node}: it does (said again)");
                    act.log.do_send(Append(Event::Replicated { node, path, archive, holder, bytes: 0 }));
                } else {
                    tracing::info!("the catalog said that this node keeps archive {archive} of {path} on {node}: it does not (said again)");
                    act.log.do_send(Append(Event::Pruned { node, path, archive, holder }));
                }
            }
        }));
    }
}

/// Where the catalog and this node's disk disagree on what `me` keeps:
/// (node, path, archive) → whether it keeps it. Of the archives on disk
/// (by series, newest first) only the newest `keep` count: older ones may
/// be past what the catalog remembers, and are not what a restore needs.
fn holdings_drift(
    me: &str,
    catalogs: &BTreeMap<(String, String), Arc<Vec<crate::log::views::CatalogArchive>>>,
    on_disk: &BTreeMap<(String, String), Vec<String>>,
    keep: usize,
) -> Vec<((String, String, String), bool)> {
    let mut out = Vec::new();
    let listed = |series: &(String, String), id: &str| {
        catalogs.get(series).is_some_and(|c| c.iter().any(|a| a.id == id && a.holders.contains(me)))
    };
    for (series, ids) in on_disk {
        for id in ids.iter().take(keep.clamp(1, crate::log::records::ARCHIVES_KEPT)) {
            if !listed(series, id) {
                out.push(((series.0.clone(), series.1.clone(), id.clone()), true));
            }
        }
    }
    for (series, cat) in catalogs {
        let here = on_disk.get(series);
        for a in cat.iter().filter(|a| a.holders.contains(me)) {
            if !here.is_some_and(|ids| ids.contains(&a.id)) {
                out.push(((series.0.clone(), series.1.clone(), a.id.clone()), false));
            }
        }
    }
    out
}

impl Handler<ArchiveStored> for ReplicaActor {
    type Result = ();
    fn handle(&mut self, _: ArchiveStored, ctx: &mut Context<Self>) {
        self.sync(ctx);
    }
}

impl Handler<Pushed> for ReplicaActor {
    type Result = ();
    fn handle(&mut self, msg: Pushed, ctx: &mut Context<Self>) {
        let now = crate::clock::now_ms();
        // The holder found a member this node sent damaged (members are
        // sent unchecked: the holder hashes each): this node's copy is
        // verified and mended from the other nodes, at most once a minute.
        let damaged = msg.error.as_ref().is_some_and(|e| e.reason.contains("is damaged"));
        let key = (msg.push.node.clone(), msg.push.path.clone());
        if damaged && self.mending.get(&key).is_none_or(|at| now - at > 60_000) {
            self.mending.insert(key.clone(), now);
            tracing::warn!(
                "{} found a damaged member in this node's copy of {} on {}: verifying it",
                msg.push.name,
                key.1,
                key.0
            );
            let verify = VerifyHere { node: Some(key.0), path: Some(key.1), request: format!("mend-{now}") };
            self.handle(verify, ctx);
        }
        let failed = msg.error.as_ref().map(|e| if e.over_quota { PushError::Series } else { PushError::Peer });
        match &msg.error {
            Some(e) => self
                .worker
                .failed(format!("{} of {} to {}: {}", msg.push.path, msg.push.node, msg.push.name, e.reason), now),
            None => self.worker.done_one(now),
        }
        if let Some(wait) = self.planner.pushed(&msg.push, &msg.confirmed, failed, now) {
            let p = &msg.push;
            tracing::warn!(
                "copy of {} on {} to {} failed (retrying in {} s): {}",
                p.path,
                p.node,
                p.name,
                wait / 1000,
                msg.error.as_ref().map(|e| e.reason.as_str()).unwrap_or_default()
            );
        }
    }
}

impl Handler<crate::net::router::Retired> for ReplicaActor {
    type Result = ();
    fn handle(&mut self, msg: crate::net::router::Retired, ctx: &mut Context<Self>) {
        self.retired.insert(msg.node, msg.at_ms);
        self.collect_retired(ctx);
    }
}

impl Handler<crate::net::router::Rebound> for ReplicaActor {
    type Result = ();
    fn handle(&mut self, msg: crate::net::router::Rebound, _: &mut Context<Self>) {
        let crate::net::router::Rebound { node, peer, former, at_ms } = msg;
        match self.store.rebind_origin(&node, &peer, &former, at_ms) {
            Ok(()) => {
                tracing::info!("node {node} is {peer} from now on (archives {former} sealed before stay its own)")
            }
            Err(e) => tracing::error!("cannot bind node {node} to {peer}: {e}"),
        }
    }
}

impl Handler<HandedOff> for ReplicaActor {
    type Result = ();
    fn handle(&mut self, msg: HandedOff, ctx: &mut Context<Self>) {
        let h = msg.handoff;
        if !msg.confirmed {
            self.planner.handed_off(&h);
            return;
        }
        let (store, me) = (self.store.clone(), self.me.clone());
        let (node, path, ids) = (h.node.clone(), h.path.clone(), h.ids.clone());
        let work = tokio::task::spawn_blocking(move || {
            let mut removed = Vec::new();
            for id in ids {
                match store.remove_archive(&node, &path, &id) {
                    Ok(true) => removed.push(id),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("cannot drop the surplus copy {id} of {path} on {node}: {e}"),
                }
            }
            if let Err(e) = store.gc() {
                tracing::warn!("collection after dropping surplus copies: {e}");
            }
            removed
        });
        ctx.spawn(work.into_actor(self).map(move |removed, act, _| {
            act.planner.handed_off(&h);
            let removed = removed.unwrap_or_default();
            if !removed.is_empty() {
                tracing::info!(
                    "dropped {} surplus copies of {} on {}: the elected holders keep them",
                    removed.len(),
                    h.path,
                    h.node
                );
            }
            for archive in removed {
                act.log.do_send(Append(Event::Pruned {
                    node: h.node.clone(),
                    path: h.path.clone(),
                    archive,
                    holder: me.clone(),
                }));
            }
        }));
    }
}

impl Handler<ServeXfer> for ReplicaActor {
    type Result = ();
    fn handle(&mut self, msg: ServeXfer, ctx: &mut Context<Self>) {
        // A read is served only to a peer entitled to the series: asked
        // of the catalog first (who keeps it), then answered.
        if let Some((node, path, _)) = msg.request.read_of() {
            let get = crate::log::actor::GetCatalog { node: node.to_string(), path: path.to_string() };
            let catalog = self.log.send(get);
            ctx.spawn(catalog.into_actor(self).map(move |catalog, act, ctx| {
                let keepers = catalog.map(|c| c.iter().flat_map(|a| a.holders.iter().cloned()).collect());
                match act.may_read(&msg.peer, &msg.request, &keepers.unwrap_or_default()) {
                    Ok(()) => act.serve_xfer(msg, ctx),
                    Err(reason) => {
                        tracing::warn!("refused a read from {}: {reason}", msg.peer);
                        act.membership
                            .do_send(Misbehaved { peer: msg.peer.clone(), what: format!("a read: {reason}") });
                        msg.reply.send(&XferResponse::Refused { reason });
                    }
                }
            }));
            return;
        }
        self.serve_xfer(msg, ctx)
    }
}

impl ReplicaActor {
    /// Whether `peer` may read what `request` names here ([`super::reads`]).
    fn may_read(&self, peer: &str, request: &XferRequest, keepers: &BTreeSet<String>) -> Result<(), String> {
        let Some((node, path, order)) = request.read_of() else { return Ok(()) };
        let kv = self.store.kv();
        let bound = |name: &str| crate::store::origin_bound(kv.as_ref(), name).ok().flatten();
        let check = super::reads::ReadCheck {
            authority: &self.authority,
            candidates: &self.candidates,
            replicas: self.cfg.replicas,
            claimants: &self.claimants,
            bound: &bound,
        };
        check.entitled(peer, node, path, keepers, order, crate::clock::now_ms())
    }

    /// Answers a transfer request (a read: once found entitled).
    fn serve_xfer(&mut self, msg: ServeXfer, ctx: &mut Context<Self>) {
        let (peer, reply) = (msg.peer, msg.reply);
        if let XferRequest::Put { members, deltas } = &msg.request {
            let digests: Vec<Digest> =
                members.iter().map(|m| m.digest).chain(deltas.iter().map(|d| d.digest)).collect();
            if let Err(d) = self.wanted.take(&peer, &digests, crate::clock::now_ms()) {
                let reason = format!("{} did not ask for member {d}: offer its archive first", self.me);
                tracing::warn!("refused members from {peer}: {reason}");
                return reply.send(&XferResponse::Refused { reason });
            }
        }
        let (store, me, keep, quota) = (self.store.clone(), self.me.clone(), self.cfg.keep, self.cfg.quota);
        let (claimants, usage, members) = (self.claimants.clone(), self.usage.clone(), self.members.clone());
        let (schedules, arrivals, from) = (self.schedules.clone(), self.arrivals.clone(), peer.clone());
        let work = tokio::task::spawn_blocking(move || {
            let free = free_bytes(store.root());
            let holder = Holder {
                free,
                store: &store,
                me: &me,
                keep,
                quota,
                usage: &usage,
                claimants: &claimants,
                members: &members,
                from: &from,
                schedules: &schedules,
                arrivals: &arrivals,
            };
            serve(&holder, msg.request)
        });
        ctx.spawn(work.into_actor(self).map(move |done, act, _| {
            if let Ok((XferResponse::Want { missing, .. }, _, _)) = &done {
                act.wanted.asked(&peer, missing, crate::clock::now_ms());
            }
            let response = match done {
                Ok((response, events, blame)) => {
                    match blame {
                        Some(Blame::Misdeed(what)) => {
                            act.membership.do_send(crate::net::actor::Misbehaved { peer: peer.clone(), what })
                        }
                        Some(Blame::Limited { origin, what }) => {
                            let peer = origin.unwrap_or_else(|| peer.clone());
                            act.membership.do_send(crate::net::actor::Limited { peer, what })
                        }
                        None => {}
                    }
                    for e in events {
                        act.log.do_send(Append(e));
                    }
                    response
                }
                Err(e) => XferResponse::Refused { reason: format!("the request crashed: {e}") },
            };
            reply.send(&response);
        }));
    }
}

impl Handler<ServeReplica> for ReplicaActor {
    type Result = ();
    fn handle(&mut self, msg: ServeReplica, ctx: &mut Context<Self>) {
        let answer = match msg.request {
            ReplicaRequest::Restore { node, path, archive, to, overwrite, request, order, key, include } => {
                let (node, path, archive) = (node.into(), path.into(), archive.map(String::from));
                let asker = Some(msg.peer.clone());
                let here = RestoreHere { node, path, archive, to, overwrite, request, order, key, include, asker };
                match self.handle(here, ctx) {
                    Ok(()) => ReplicaAnswer::Accepted,
                    Err(reason) => ReplicaAnswer::Failed { reason: reason.to_string() },
                }
            }
            ReplicaRequest::Verify { node, path, request, .. } => {
                let (node, path) = (node.map(String::from), path.map(String::from));
                let MessageResult(series) = self.handle(VerifyHere { node, path, request }, ctx);
                ReplicaAnswer::Verifying { series }
            }
            ReplicaRequest::Progress { request } => {
                match self.handle(RestoreProgress { request, asker: Some(msg.peer) }, ctx) {
                    Some(p) => p,
                    None => ReplicaAnswer::Failed { reason: "no restore of that request runs here".into() },
                }
            }
        };
        msg.reply.send(&answer);
    }
}

/// The restores under way on a node: request → its counters, and when it began.
type Running = HashMap<String, (Arc<crate::archive::create::Progress>, Instant, Option<String>)>;

/// How far the restore carrying `request` has come on this node
/// (`ReplicaAnswer::Progress`), if it runs here.
#[derive(Message)]
#[rtype(result = "Option<ReplicaAnswer>")]
pub struct RestoreProgress {
    pub request: String,
    /// The peer that asks (`None`: this node's own API). Only the one that
    /// asked for the restore is told.
    pub asker: Option<String>,
}

impl Handler<RestoreProgress> for ReplicaActor {
    type Result = Option<ReplicaAnswer>;
    fn handle(&mut self, msg: RestoreProgress, _: &mut Context<Self>) -> Self::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let running = self.restores.lock().unwrap_or_else(|p| p.into_inner());
        let (p, started, asker) = running.get(&msg.request)?;
        if *asker != msg.asker {
            return None;
        }
        Some(ReplicaAnswer::Progress {
            entries: p.entries.load(Relaxed),
            bytes: p.bytes_out.load(Relaxed),
            total: p.total.load(Relaxed),
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }
}

impl Handler<RestoreHere> for ReplicaActor {
    type Result = Result<(), BadTarget>;
    fn handle(&mut self, msg: RestoreHere, _: &mut Context<Self>) -> Self::Result {
        check_target(&msg.to, msg.overwrite, &self.cfg.protected)?;
        let net = self.net.clone();
        let (store, log, membership, me) =
            (self.store.clone(), self.log.clone(), self.membership.clone(), self.me.clone());
        let offsite = self.offsite.as_ref().map(|(_, o)| o.clone());
        let progress = Arc::new(crate::archive::create::Progress::default());
        let running = self.restores.clone();
        running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(msg.request.clone(), (progress.clone(), Instant::now(), msg.asker.clone()));
        actix::spawn(async move {
            let started = Instant::now();
            let result = restore(&store, &net, &log, &membership, offsite, &msg, progress).await;
            running.lock().unwrap_or_else(|p| p.into_inner()).remove(&msg.request);
            let duration_ms = started.elapsed().as_millis() as u64;
            let (archive, files, bytes, error) = match result {
                Ok((archive, report)) => (archive, report.entries, report.bytes, None),
                Err((archive, e)) => (archive, 0, 0, Some(e.to_string())),
            };
            match &error {
                None => tracing::info!("restored {} of {} into {}", msg.path, msg.node, msg.to),
                Some(e) => tracing::warn!("restore of {} of {} into {} failed: {e}", msg.path, msg.node, msg.to),
            }
            log.do_send(Append(Event::Restored {
                node: msg.node,
                path: msg.path,
                archive,
                on: me,
                to: msg.to,
                files,
                bytes,
                duration_ms,
                error,
                request: Some(msg.request),
            }));
        });
        Ok(())
    }
}

impl Handler<VerifyHere> for ReplicaActor {
    type Result = MessageResult<VerifyHere>;
    fn handle(&mut self, msg: VerifyHere, _: &mut Context<Self>) -> Self::Result {
        let net = self.net.clone();
        let held = self.store.held_series(Retention::keep(usize::MAX), crate::clock::now_ms());
        let series: Vec<(String, String)> = held
            .keys()
            .filter(|(n, p)| msg.node.as_ref().is_none_or(|x| x == n) && msg.path.as_ref().is_none_or(|x| x == p))
            .cloned()
            .collect();
        let (store, log, membership, me) =
            (self.store.clone(), self.log.clone(), self.membership.clone(), self.me.clone());
        let todo = series.clone();
        actix::spawn(async move {
            for (node, path) in todo {
                let ids = held.get(&(node.clone(), path.clone())).cloned().unwrap_or_default();
                let events =
                    verify_series(&store, &net, &log, &membership, &me, &node, &path, &ids, &msg.request).await;
                for e in events {
                    log.do_send(Append(e));
                }
            }
        });
        MessageResult(series)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn members_are_taken_only_when_asked_for_by_that_peer_and_in_time() {
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        let mut w = Wanted::default();
        assert_eq!(w.take("P", &[a], 0), Err(a), "nothing offered: nothing taken");
        w.asked("P", &[a, b], 0);
        assert_eq!(w.take("Q", &[a], 1), Err(a), "asked of P, not of Q");
        assert_eq!(w.take("P", &[a, c], 1), Err(c), "one not asked for refuses the batch");
        assert_eq!(w.take("P", &[a], 2), Ok(()));
        assert_eq!(w.take("P", &[a], 3), Err(a), "taken once");
        assert_eq!(w.take("P", &[b], super::super::holder::WANTED_FOR_MS + 1), Err(b), "asked too long ago");
    }
    use super::*;

    #[test]
    fn the_catalog_is_told_what_this_disk_keeps_and_no_longer_keeps() {
        use crate::log::views::CatalogArchive;
        let series = ("n2".to_string(), "/t".to_string());
        let arch = |id: &str, holders: &[&str]| CatalogArchive {
            id: id.into(),
            holders: holders.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        };
        // n2 made c (its `finished` lost in a crash; the holders said theirs),
        // keeps b, and dropped a (its `pruned` lost).
        let cat = vec![arch("c", &["n1", "n3"]), arch("b", &["n1", "n2", "n3"]), arch("a", &["n2"])];
        let catalogs = BTreeMap::from([(series.clone(), Arc::new(cat))]);
        let disk = BTreeMap::from([(series.clone(), vec!["c".to_string(), "b".to_string()])]);
        let drift = holdings_drift("n2", &catalogs, &disk, 10);
        let key = |id: &str| ("n2".to_string(), "/t".to_string(), id.to_string());
        assert_eq!(drift, vec![(key("c"), true), (key("a"), false)]);
        assert!(holdings_drift("n1", &catalogs, &BTreeMap::from([(series.clone(), vec!["c".into(), "b".into()])]), 10)
            .is_empty());
        // Only the newest `keep` on disk are said (older ones may be past
        // what the catalog remembers).
        let disk = BTreeMap::from([(series, vec!["d".to_string(), "c".into(), "b".into()])]);
        assert_eq!(holdings_drift("n2", &catalogs, &disk, 1), vec![(key("d"), true), (key("a"), false)]);
    }

    #[test]
    fn restore_targets_are_checked_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let none = super::super::restore::Protected::default();
        assert!(check_target("relative/dir", false, &none).unwrap_err().to_string().contains("absolute"));
        let t = dir.path().join("new");
        assert!(check_target(t.to_str().unwrap(), false, &none).is_ok());
        std::fs::create_dir(&t).unwrap();
        assert!(check_target(t.to_str().unwrap(), false, &none).is_ok());
        std::fs::write(t.join("f"), b"x").unwrap();
        assert!(check_target(t.to_str().unwrap(), false, &none).unwrap_err().to_string().contains("--overwrite"));
        // The node's data directory and config: not into, not over, not
        // above, not through `..` or a symbolic link; beside them is fine.
        let data = dir.path().join("srv/data");
        std::fs::create_dir_all(data.join("segments")).unwrap();
        let config = dir.path().join("etc/node.toml");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, b"name = 'n1'").unwrap();
        std::os::unix::fs::symlink(&data, dir.path().join("link")).unwrap();
        let guard = super::super::restore::Protected(vec![
            ("data directory".into(), data.clone()),
            ("config".into(), config.clone()),
        ]);
        let p = |rel: &str| dir.path().join(rel).to_string_lossy().into_owned();
        for bad in ["srv/data", "srv/data/segments", "srv/data/new", "srv", "etc", "etc/node.toml", "link/x"] {
            let e = check_target(&p(bad), true, &guard).unwrap_err().to_string();
            assert!(e.contains("never writes"), "{bad}: {e}");
        }
        assert!(check_target(&format!("{}/srv/other/../data", dir.path().display()), true, &guard).is_err());
        assert!(check_target(&p("srv/other"), true, &guard).is_ok());
        assert!(check_target(&p("etc2"), true, &guard).is_ok());
        assert!(check_target(t.to_str().unwrap(), true, &guard).is_ok());
        assert!(check_target(t.join("f").to_str().unwrap(), false, &guard)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }
}
