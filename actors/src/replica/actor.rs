//! The replica actor: keeps every backup series at its copies.
//!
//! Messages and senders:
//! - [`ServeXfer`] (the router, through [`serve_xfer`]): a peer offers,
//!   sends or asks for archives over [`XFER`]; store work runs in the
//!   blocking pool.
//! - [`ServeReplica`] (the router, through [`serve_replica`]): `Restore`
//!   and `Verify` asked through another node, the operator's grant
//!   checked; [`RestoreHere`], [`VerifyHere`] (this node's HTTP API).
//! - [`ArchiveStored`] (the jobs actor): copies go now.
//!
//! Every `sync_every` it compares what it keeps with where copies belong
//! (see [`super::placement`]; the decisions are [`super::plan`]'s, pure
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::StreamExt;

use super::plan::{Handoff, Planner, Push, PushError};
use super::proto::{
    xfer, ArchiveId, ManifestBase, ReplicaAnswer, ReplicaRequest, WireDelta, WireMember, XferRequest, XferResponse,
    DELTA_RAW_BATCH, MAX_XFER, REPLICA, XFER,
};
use super::quota::{Quota, Usage};
use super::source::{self, batches, locate, read_members, Place, RemoteSource};
use crate::archive::restore::{MemberSource, RestoreError};
use crate::archive::{restore_archive, Manifest, RestoreOptions};
use crate::disk::free_bytes;
use crate::hash::Digest;
use crate::jobs::actor::ArchiveStored;
use crate::log::actor::{GetCatalog, LogActor, Record};
use crate::log::entry::Event;
use crate::net::actor::{GetPeers, MembershipActor};
use crate::net::client::{NetClient, RequestError};
use crate::net::membership::PeerView;
use crate::net::rpc::{InboundRequest, Reply};
use crate::store::{Retention, Store};

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

/// A restore or verify asked by another node, its grant checked. Sender:
/// the router, through [`serve_replica`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServeReplica {
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
/// (`me` is its name, `token` its API token) needs the operator's grant.
pub fn serve_replica(replica: Addr<ReplicaActor>, me: String, token: Option<String>) -> impl Fn(InboundRequest) {
    move |req| {
        let reply = req.reply.typed::<ReplicaAnswer>();
        let request: ReplicaRequest = match crate::codec::decode(&req.body, REPLICA.max_request) {
            Ok(r) => r,
            Err(e) => return reply.send(&ReplicaAnswer::Failed { reason: format!("an unreadable request: {e}") }),
        };
        if let Err(e) = crate::grant::check(&request, token.as_deref(), &me) {
            tracing::warn!("refused a request from the mesh ({}): {e}", req.peer);
            return reply.send(&ReplicaAnswer::Failed { reason: e.to_string() });
        }
        replica.do_send(ServeReplica { request, reply });
    }
}

/// Restore an archive of (node, path) onto this node. Answers at once
/// whether the restore could start; its result goes to the log as a
/// `restored` entry carrying `request`.
#[derive(Message)]
#[rtype(result = "Result<(), BadTarget>")]
pub struct RestoreHere {
    pub node: String,
    pub path: String,
    pub archive: Option<String>,
    pub to: String,
    pub overwrite: bool,
    pub request: String,
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

/// Members this node asked each peer for (its answers to offers and
/// commits): a `Put` is accepted only for these, so a peer cannot fill
/// this node's disk with members of no archive it offered.
#[derive(Debug, Default)]
pub struct Wanted {
    /// peer → digest → until when it may come (ms).
    by_peer: HashMap<String, HashMap<Digest, i64>>,
}

/// How long an asked-for member may take to come.
const WANTED_FOR_MS: i64 = 30 * 60_000;
/// Members asked of one peer at once, at most (a whole large archive).
const WANTED_MAX: usize = 1 << 20;

impl Wanted {
    /// `peer` was told to send `digests`.
    pub fn asked(&mut self, peer: &str, digests: &[Digest], now_ms: i64) {
        let w = self.by_peer.entry(peer.to_string()).or_default();
        w.retain(|_, until| *until > now_ms);
        for d in digests.iter().take(WANTED_MAX.saturating_sub(w.len())) {
            w.insert(*d, now_ms + WANTED_FOR_MS);
        }
    }

    /// Takes `digests` from what `peer` was asked for: all of them, or
    /// none and the first that was not asked for.
    pub fn take(&mut self, peer: &str, digests: &[Digest], now_ms: i64) -> Result<(), Digest> {
        let w = self.by_peer.get_mut(peer);
        let asked = |d: &Digest| w.as_ref().is_some_and(|w| w.get(d).is_some_and(|until| *until > now_ms));
        if let Some(d) = digests.iter().find(|d| !asked(d)) {
            return Err(*d);
        }
        if let Some(w) = self.by_peer.get_mut(peer) {
            for d in digests {
                w.remove(d);
            }
            if w.is_empty() {
                self.by_peer.remove(peer);
            }
        }
        Ok(())
    }
}

/// Member batches (of up to 4 MiB) sent to one holder at once.
const PUTS_IN_FLIGHT: usize = 2;

/// Outcome of one push of a series to one holder.
#[derive(Message)]
#[rtype(result = "()")]
struct Pushed {
    push: Push,
    confirmed: Vec<String>,
    error: Option<PushFailed>,
}

/// Why a push stopped.
#[derive(Debug)]
struct PushFailed {
    reason: String,
    /// The holder refused because the series' node is at its quota there:
    /// that series waits, not every push to that holder.
    over_quota: bool,
}

impl From<String> for PushFailed {
    fn from(reason: String) -> Self {
        PushFailed { reason, over_quota: false }
    }
}

impl From<backmesh_api::names::BadName> for PushFailed {
    fn from(e: backmesh_api::names::BadName) -> Self {
        e.to_string().into()
    }
}

impl From<RequestError> for PushFailed {
    fn from(e: RequestError) -> Self {
        e.to_string().into()
    }
}

/// Why a restore into a directory cannot start: the operator must pick
/// another target (or pass `--overwrite`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadTarget {
    #[error("`{0}` is not an absolute path; give the full path of the target directory")]
    NotAbsolute(String),
    #[error("{0} is not empty; restore into a new or empty directory, or pass --overwrite")]
    NotEmpty(String),
    #[error("{0} exists and is not a directory")]
    NotADirectory(String),
    #[error("{to}: {why}")]
    Unusable { to: String, why: String },
}

impl crate::error::Transient for BadTarget {
    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Never
    }
}

/// Why a restore this node started did not complete (said in its
/// `restored` entry).
#[derive(Debug, thiserror::Error)]
pub enum RestoreFailed {
    #[error("the node is stopping: {0}")]
    Stopping(String),
    #[error(transparent)]
    Read(#[from] crate::replica::source::ReadError),
    /// The archive was found but could not be restored (a damaged member
    /// with no good copy, the target, the disk).
    #[error("{0}")]
    Restore(String),
    #[error("the restore crashed: {0}")]
    Crashed(String),
    /// Neither a live node nor the offsite bucket has it.
    #[error("{0}")]
    Offsite(String),
}

impl crate::error::Transient for RestoreFailed {
    fn retry(&self) -> crate::error::Retry {
        match self {
            RestoreFailed::Read(e) => e.retry(),
            _ => crate::error::Retry::Later,
        }
    }
}

/// Why this holder refuses what a peer sent: the words go back to it.
#[derive(Debug)]
struct Refusal(String);

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
}

/// How long a restore waits for a holder of what it reads to be seen up
/// (a node just started is still connecting to its peers).
const HOLDER_WAIT_MS: u64 = 10_000;

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
        }
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
            Some((peers, held))
        };
        ctx.spawn(work.into_actor(self).map(move |found, act, ctx| {
            act.syncing = false;
            let Some(((me, peers), (held, claims))) = found else { return };
            act.claimants = Arc::new(claims);
            let plan = act.planner.plan(&me, &peers, &held, crate::clock::now_ms());
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
        }));
    }
}

/// Whether every elected holder keeps every archive of the handoff. A
/// holder must not only list them: for each, it must send back a member
/// picked here at random (saying costs nothing; a holder that only says
/// it keeps copies would make this node drop the last good ones).
async fn all_confirm(net: &NetClient, store: Arc<Store>, h: &Handoff) -> bool {
    let (st, node, path, ids) = (store, h.node.clone(), h.path.clone(), h.ids.clone());
    let picks = tokio::task::spawn_blocking(move || {
        use std::hash::BuildHasher as _;
        let random = std::collections::hash_map::RandomState::new();
        ids.into_iter()
            .filter_map(|id| {
                let m = st.manifest(&node, &path, Some(&id)).ok()?;
                let i = random.hash_one(&id) as usize % m.members.len().max(1);
                Some((id, m.members.get(i)?.sha256))
            })
            .collect::<HashMap<String, Digest>>()
    })
    .await
    .unwrap_or_default();
    let Ok(list) = XferRequest::list(&h.node, &h.path) else { return false };
    for t in &h.targets {
        let kept: Vec<String> = match xfer(net, t, list.clone()).await {
            Ok(XferResponse::Archives { ids }) => ids.into_iter().map(String::from).collect(),
            _ => return false,
        };
        // An archive older than all the holder keeps was pruned there, not lost.
        let oldest = kept.iter().min();
        if !h.ids.iter().all(|id| kept.contains(id) || oldest.is_some_and(|o| id < o)) {
            return false;
        }
        for id in h.ids.iter().filter(|id| kept.contains(id)) {
            let Some(digest) = picks.get(id).copied() else { return false };
            let proof = xfer(net, t, XferRequest::Get { digests: vec![digest] }).await;
            let shown = match &proof {
                Ok(XferResponse::Members { members }) => {
                    members.iter().any(|m| m.digest == digest && Digest::of(&m.data) == digest)
                }
                _ => false,
            };
            if !shown {
                tracing::warn!(
                    "{t} says it keeps archive {id} of {} on {} but did not send a member of it: this node keeps its copy",
                    h.path,
                    h.node
                );
                return false;
            }
        }
    }
    true
}

#[derive(Message)]
#[rtype(result = "()")]
struct HandedOff {
    handoff: Handoff,
    confirmed: bool,
}

/// Sends the archives `push.ids` to its holder: the ids it confirmed, and
/// the first error if one stopped the push.
async fn run_push(net: &NetClient, store: &Arc<Store>, push: &Push) -> (Vec<String>, Option<PushFailed>) {
    let list = match XferRequest::list(&push.node, &push.path) {
        Ok(list) => list,
        Err(e) => return (Vec::new(), Some(e.into())),
    };
    let kept: HashSet<String> = match xfer(net, &push.peer, list).await {
        Ok(XferResponse::Archives { ids }) => ids.into_iter().map(String::from).collect(),
        Ok(XferResponse::Refused { reason }) => return (Vec::new(), Some(reason.into())),
        Ok(other) => return (Vec::new(), Some(format!("unexpected answer {other:?}").into())),
        Err(e) => return (Vec::new(), Some(e.into())),
    };
    let mut confirmed: Vec<String> = push.ids.iter().filter(|id| kept.contains(*id)).cloned().collect();
    // Oldest first: a holder that stops half-way keeps a contiguous history.
    for id in push.ids.iter().rev().filter(|id| !kept.contains(*id)) {
        match send_archive(net, store, push, id).await {
            Ok(()) => confirmed.push(id.clone()),
            Err(e) => return (confirmed, Some(e)),
        }
    }
    (confirmed, None)
}

async fn send_archive(net: &NetClient, store: &Arc<Store>, push: &Push, id: &str) -> Result<(), PushFailed> {
    let manifest = {
        let (s, n, p, i) = (store.clone(), push.node.clone(), push.path.clone(), id.to_string());
        tokio::task::spawn_blocking(move || {
            let mut m = s.manifest(&n, &p, Some(&i))?;
            // An archive this node made before seals existed: sealed now,
            // by the node it is bound to here (this one), or holders refuse it.
            if m.seal.is_none() && s.origin_of(&n)? == Some(s.peer_id()) {
                m.seal_with(s.identity()).map_err(|source| crate::store::StoreError::Manifest {
                    path: s.root().join("identity.key"),
                    source,
                })?;
            }
            Ok::<_, crate::store::StoreError>(m)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
    };
    let encoded = serde_bytes::ByteBuf::from(manifest.encode());
    // The manifest goes as a delta against the series' archive before it
    // where the holder keeps that one (it says when it does not).
    let mut delta = {
        let (s, e, m) = (store.clone(), encoded.clone(), manifest.clone());
        tokio::task::spawn_blocking(move || manifest_delta(&s, &m, &e)).await.ok().flatten()
    };
    let mut sent = 0u64;
    let offer = |delta: &Option<(serde_bytes::ByteBuf, ManifestBase)>| match delta {
        Some((literals, base)) => XferRequest::Offer { manifest: literals.clone(), against: Some(base.clone()) },
        None => XferRequest::Offer { manifest: encoded.clone(), against: None },
    };
    let mut answer = xfer(net, &push.peer, offer(&delta)).await?;
    if matches!(answer, XferResponse::WholeManifest) {
        sent += wire_len(&delta, &encoded);
        delta = None;
        answer = xfer(net, &push.peer, offer(&delta)).await?;
    }
    sent += wire_len(&delta, &encoded);
    let mut missing = match answer {
        XferResponse::Want { complete: true, .. } => return Ok(()),
        XferResponse::Want { missing, .. } => missing,
        XferResponse::Refused { reason } => return Err(reason.into()),
        XferResponse::OverQuota { reason } => return Err(PushFailed { reason, over_quota: true }),
        other => return Err(format!("unexpected answer {other:?}").into()),
    };
    // A member the holder collected meanwhile is asked for again: a few rounds at most.
    for round in 0..3 {
        let want: HashSet<Digest> = missing.iter().copied().collect();
        let refs = manifest.members.iter().filter(|m| want.contains(&m.sha256));
        // A few batches in flight: reading, sending and the holder's writing overlap.
        let mut puts = futures::stream::iter(batches(refs))
            .map(|batch| async move {
                // Unchecked here: the holder checks every member before it keeps it
                // (and refuses a damaged one), so hashing twice would only cost CPU.
                // The first round sends deltas where this node knows a base;
                // what did not rebuild on the holder comes back whole.
                // Deltas past what one Put may rebuild go in another Put.
                let s = store.clone();
                let puts = tokio::task::spawn_blocking(move || {
                    let mut puts = vec![(Vec::new(), Vec::new(), 0u64)];
                    for d in batch {
                        let data = s.read_member_unchecked(&d).map_err(|e| PushFailed::from(e.to_string()))?;
                        let delta = (round == 0).then(|| delta_of(&s, &d, data.len())).flatten();
                        let Some((members, deltas, raw)) = puts.last_mut() else { unreachable!() };
                        // What the holder inflates and rebuilds: the base and the member.
                        match delta {
                            Some((delta, base_len)) if *raw + delta.raw_len + base_len <= DELTA_RAW_BATCH => {
                                *raw += delta.raw_len + base_len;
                                deltas.push(delta);
                            }
                            Some((delta, base_len)) => {
                                let raw = delta.raw_len + base_len;
                                puts.push((Vec::new(), vec![delta], raw));
                            }
                            None => members.push(WireMember { digest: d, data: data.into() }),
                        }
                    }
                    Ok::<_, PushFailed>(puts)
                })
                .await
                .map_err(|e| PushFailed::from(e.to_string()))??;
                let mut n = 0u64;
                for (members, deltas, _) in puts {
                    n += members.iter().map(|m| m.data.len() as u64).sum::<u64>()
                        + deltas.iter().map(|d| (d.ops.len() + d.literals.len()) as u64).sum::<u64>();
                    match xfer(net, &push.peer, XferRequest::Put { members, deltas }).await? {
                        XferResponse::Stored => {}
                        XferResponse::Refused { reason } => return Err(PushFailed::from(reason)),
                        other => return Err(PushFailed::from(format!("unexpected answer {other:?}"))),
                    }
                }
                Ok(n)
            })
            .buffer_unordered(PUTS_IN_FLIGHT);
        while let Some(done) = puts.next().await {
            sent += done?;
        }
        let commit = |delta: &Option<(serde_bytes::ByteBuf, ManifestBase)>, sent: u64| match delta {
            Some((literals, base)) => XferRequest::Commit {
                manifest: literals.clone(),
                against: Some(base.clone()),
                sent,
                repair: push.repair,
            },
            None => XferRequest::Commit { manifest: encoded.clone(), against: None, sent, repair: push.repair },
        };
        sent += wire_len(&delta, &encoded);
        let mut answer = xfer(net, &push.peer, commit(&delta, sent)).await?;
        if matches!(answer, XferResponse::WholeManifest) {
            delta = None;
            sent += wire_len(&delta, &encoded);
            answer = xfer(net, &push.peer, commit(&delta, sent)).await?;
        }
        match answer {
            XferResponse::Committed => return Ok(()),
            XferResponse::Want { missing: m, .. } => missing = m,
            XferResponse::Refused { reason } => return Err(reason.into()),
            XferResponse::OverQuota { reason } => return Err(PushFailed { reason, over_quota: true }),
            other => return Err(format!("unexpected answer {other:?}").into()),
        }
    }
    Err(format!("{} still lacks {} member(s) of archive {id} after three rounds", push.name, missing.len()).into())
}

/// Bytes a manifest takes on the wire, whole or as a delta.
fn wire_len(delta: &Option<(serde_bytes::ByteBuf, ManifestBase)>, whole: &[u8]) -> u64 {
    match delta {
        Some((literals, base)) => (literals.len() + base.ops.len()) as u64,
        None => whole.len() as u64,
    }
}

/// `encoded` (the manifest `m`) as a delta against the manifest of the
/// series' archive before it, if this node keeps that one and the delta
/// is well under half the manifest: (the literals, what they are against).
fn manifest_delta(store: &Store, m: &Manifest, encoded: &[u8]) -> Option<(serde_bytes::ByteBuf, ManifestBase)> {
    let list = store.list(&m.node, &m.path).ok()?;
    let before = list.iter().find(|s| s.id != m.id && s.order() < m.order())?;
    let old = store.manifest_bytes(&m.node, &m.path, &before.id).ok()?;
    let (ops, literals) = crate::archive::delta::make(&old, encoded);
    if (ops.len() + literals.len()) * 2 > encoded.len() {
        return None;
    }
    let base = ManifestBase {
        node: super::proto::name(&m.node).ok()?,
        path: super::proto::series(&m.path).ok()?,
        archive: super::proto::archive(&before.id).ok()?,
        raw_len: encoded.len() as u64,
        sha256: Digest::of(encoded),
        ops: ops.into(),
    };
    Some((literals.into(), base))
}

/// The manifest an `Offer` or `Commit` carries: as sent, or rebuilt from
/// the manifest it is a delta against; `None` if this node does not keep
/// that one or the delta does not rebuild the bytes it names.
fn manifest_sent<'a>(
    store: &Store,
    manifest: &'a [u8],
    against: Option<&ManifestBase>,
) -> Option<std::borrow::Cow<'a, [u8]>> {
    let Some(b) = against else {
        return Some(std::borrow::Cow::Borrowed(manifest));
    };
    let old = store.manifest_bytes(&b.node, &b.path, &b.archive).ok()?;
    let raw = crate::archive::delta::apply(&old, &b.ops, manifest, b.raw_len, MAX_XFER as u64).ok()?;
    (Digest::of(&raw) == b.sha256).then_some(std::borrow::Cow::Owned(raw))
}

/// Member `d` (of `len` compressed bytes) as a delta against the member
/// this node made it from much as, and the base's raw length, when that
/// is a good deal smaller and one `Put` may rebuild it; `None`: send it
/// whole.
fn delta_of(store: &Store, d: &Digest, len: usize) -> Option<(WireDelta, u64)> {
    let (base, level) = store.base_of(d)?;
    let new = store.raw_member(d, DELTA_RAW_BATCH).ok()?;
    let old = store.raw_member(&base, DELTA_RAW_BATCH - new.len() as u64).ok()?;
    let (ops, literals) = crate::archive::delta::make(&old, &new);
    if (ops.len() + literals.len()) * 10 > len * 9 {
        return None;
    }
    let delta =
        WireDelta { digest: *d, base, level, raw_len: new.len() as u64, ops: ops.into(), literals: literals.into() };
    Some((delta, old.len() as u64))
}

/// Rebuilds the members sent as deltas whose base this node holds; those
/// that do not come out as their digest are dropped (the commit asks for
/// them again, whole).
///
/// The bases inflated for one `Put` count against [`DELTA_RAW_BATCH`] too:
/// a few bytes of delta naming a large base must not make this node
/// inflate without bound.
fn rebuild(store: &Store, deltas: &[WireDelta]) -> Vec<(Digest, Vec<u8>)> {
    let mut budget = DELTA_RAW_BATCH;
    deltas
        .iter()
        .filter_map(|d| {
            let old = store.raw_member(&d.base, budget).ok()?;
            budget -= old.len() as u64;
            let raw = crate::archive::delta::apply(&old, &d.ops, &d.literals, d.raw_len, DELTA_RAW_BATCH).ok()?;
            let data = crate::archive::create::gzip_member(&raw, d.level);
            (Digest::of(&data) == d.digest).then_some((d.digest, data))
        })
        .collect()
}

/// Serves one transfer request from the store; the events to record after.
/// What serving a transfer request came to: the answer, the events to
/// record, and what the peer did wrong if it sent a forged or unsealed
/// manifest.
type Served = (XferResponse, Vec<Event>, Option<Blame>);

/// What a peer's refused request says of it.
enum Blame {
    /// It sent something forged or out of its authority.
    Misdeed(String),
    /// A node went past one of this node's bounds: the origin whose
    /// archive would pass its quota here (its peer id, from the seal),
    /// whoever sent it.
    Limited { origin: Option<String>, what: String },
}

/// What serving transfer requests needs besides the request.
struct Holder<'a> {
    store: &'a Store,
    me: &'a str,
    keep: Retention,
    quota: Quota,
    usage: &'a Mutex<Usage>,
    claimants: &'a HashMap<String, String>,
}

fn serve(h: &Holder, request: XferRequest) -> Served {
    let misdeed = std::cell::RefCell::new(None);
    let (response, events) = answer(h, request, &misdeed);
    (response, events, misdeed.into_inner())
}

/// Whether this holder has room for the members `missing` of archive `m`:
/// free space (less a margin) and its origin's quota. If it has, they are
/// reserved against the quota until they come.
fn room_for(
    h: &Holder,
    m: &Manifest,
    missing: &[Digest],
    misdeed: &std::cell::RefCell<Option<Blame>>,
) -> Result<(), XferResponse> {
    let (store, me, quota) = (h.store, h.me, h.quota);
    let refused = |reason: String| XferResponse::Refused { reason };
    let want: HashSet<&Digest> = missing.iter().collect();
    let need: u64 = m.members.iter().filter(|r| want.contains(&r.sha256)).map(|r| r.compressed_len).sum();
    let free = free_bytes(store.root());
    // Keep a margin so that a holder never fills its disk to the last byte.
    let margin = 64 << 20;
    if need + margin > free {
        return Err(refused(format!(
            "{me} has {} free and the archive needs {} more (plus a {} margin)",
            backmesh_api::human_bytes(free),
            backmesh_api::human_bytes(need),
            backmesh_api::human_bytes(margin)
        )));
    }
    let mut usage = h.usage.lock().unwrap_or_else(|p| p.into_inner());
    let held = match usage.held(store, &m.node, &m.id) {
        Ok(n) => n,
        Err(e) => return Err(refused(format!("{me} cannot count what node {}'s archives take: {e}", m.node))),
    };
    let limit = quota.limit(held, free);
    if held.saturating_add(need) > limit {
        let what = format!(
            "is at its quota: its archives take {} here, archive {} of {} needs {} more, and the quota \
             (--quota) is {quota} = {}",
            backmesh_api::human_bytes(held),
            m.id,
            m.path,
            backmesh_api::human_bytes(need),
            backmesh_api::human_bytes(limit)
        );
        let reason = format!("{me}: node {} {what}", m.node);
        *misdeed.borrow_mut() = Some(Blame::Limited { origin: m.signer().map(String::from), what });
        return Err(XferResponse::OverQuota { reason });
    }
    usage.reserve(&m.node, &m.id, need);
    Ok(())
}

fn answer(h: &Holder, request: XferRequest, misdeed: &std::cell::RefCell<Option<Blame>>) -> (XferResponse, Vec<Event>) {
    let Holder { store, me, keep, usage, claimants, .. } = *h;
    let refused = |reason: String| (XferResponse::Refused { reason }, Vec::new());
    // A holder keeps only what the series' own node sealed: no peer can
    // replace, evict or impersonate another node's archives.
    let sealed = |manifest: &[u8]| -> Result<Manifest, Refusal> {
        let m = Manifest::decode_from_peer(manifest).map_err(|e| {
            if matches!(e, crate::archive::manifest::ManifestError::BadSeal { .. }) {
                *misdeed.borrow_mut() = Some(Blame::Misdeed(format!("a manifest with a forged seal: {e}")));
            }
            Refusal(format!("bad manifest: {e}"))
        })?;
        store.check_origin(&m, claimants.get(&m.node).map(String::as_str)).map_err(|e| {
            if !matches!(e, crate::store::StoreError::OriginNotKnownYet { .. }) {
                *misdeed.borrow_mut() = Some(Blame::Misdeed(e.to_string()));
            }
            Refusal(format!("{me}: {e}"))
        })?;
        Ok(m)
    };
    match request {
        XferRequest::Offer { manifest, against } => {
            let Some(manifest) = manifest_sent(store, &manifest, against.as_ref()) else {
                return (XferResponse::WholeManifest, Vec::new());
            };
            let m = match sealed(&manifest) {
                Ok(m) => m,
                Err(Refusal(e)) => return refused(e),
            };
            if store.has_archive(&m.node, &m.path, &m.id) {
                return (XferResponse::Want { missing: Vec::new(), complete: true }, Vec::new());
            }
            let missing = store.missing_members(&m);
            match room_for(h, &m, &missing, misdeed) {
                Ok(()) => (XferResponse::Want { missing, complete: false }, Vec::new()),
                Err(refusal) => (refusal, Vec::new()),
            }
        }
        XferRequest::Put { members, deltas } => {
            let raw: u64 = deltas.iter().map(|d| d.raw_len).fold(0, u64::saturating_add);
            if raw > DELTA_RAW_BATCH {
                return refused(format!(
                    "{me}: deltas that rebuild {raw} bytes, over the {DELTA_RAW_BATCH}-byte bound"
                ));
            }
            let rebuilt = rebuild(store, &deltas);
            let mut list: Vec<(Digest, &[u8])> = members.iter().map(|m| (m.digest, &m.data[..])).collect();
            list.extend(rebuilt.iter().map(|(d, data)| (*d, &data[..])));
            match store.put_members(&list) {
                Ok(_) => (XferResponse::Stored, Vec::new()),
                Err(e) => refused(format!("{me} cannot store the members: {e}")),
            }
        }
        XferRequest::Commit { manifest, against, sent, repair } => {
            let Some(manifest) = manifest_sent(store, &manifest, against.as_ref()) else {
                return (XferResponse::WholeManifest, Vec::new());
            };
            let m = match sealed(&manifest) {
                Ok(m) => m,
                Err(Refusal(e)) => return refused(e),
            };
            let had = store.has_archive(&m.node, &m.path, &m.id);
            match store.adopt(&m) {
                // Members still to come: held to the same room as an offer
                // (a commit is no way around the quota).
                Ok(missing) if !missing.is_empty() => match room_for(h, &m, &missing, misdeed) {
                    Ok(()) => (XferResponse::Want { missing, complete: false }, Vec::new()),
                    Err(refusal) => (refusal, Vec::new()),
                },
                Ok(_) => {
                    usage.lock().unwrap_or_else(|p| p.into_inner()).committed(&m.node, &m.id);
                    let mut events = Vec::new();
                    if !had {
                        let (node, path, archive, holder) = (m.node.clone(), m.path.clone(), m.id.clone(), me.into());
                        events.push(if repair {
                            Event::Repaired { node, path, archive, holder }
                        } else {
                            Event::Replicated { node, path, archive, holder, bytes: sent }
                        });
                    }
                    match store.retain(&m.node, &m.path, keep) {
                        Ok(r) => events.extend(r.removed.into_iter().map(|archive| Event::Pruned {
                            node: m.node.clone(),
                            path: m.path.clone(),
                            archive,
                            holder: me.into(),
                        })),
                        Err(e) => tracing::warn!("retention of {} on {}: {e}", m.path, m.node),
                    }
                    (XferResponse::Committed, events)
                }
                Err(e) => refused(format!("{me} cannot keep archive {}: {e}", m.id)),
            }
        }
        XferRequest::List { node, path } => match store.list(&node, &path) {
            // Ids in the index were checked when their archives came in.
            Ok(list) => {
                let ids = list.into_iter().filter_map(|s| ArchiveId::parse(s.id).ok()).collect();
                (XferResponse::Archives { ids }, Vec::new())
            }
            Err(e) => refused(e.to_string()),
        },
        XferRequest::GetManifest { node, path, archive } => match store.manifest(&node, &path, archive.as_deref()) {
            Ok(m) => (XferResponse::Manifest { manifest: m.encode().into() }, Vec::new()),
            Err(e) => refused(format!("{me}: {e}")),
        },
        XferRequest::Get { digests } => {
            let mut members = Vec::with_capacity(digests.len());
            let mut total = 0usize;
            for d in digests {
                match store.read_member_checked(&d) {
                    Ok(data) => {
                        total += data.len();
                        if total > MAX_XFER - 1024 {
                            return refused("too many members asked for at once".into());
                        }
                        members.push(WireMember { digest: d, data: data.into() });
                    }
                    Err(e) => return refused(format!("{me}: {e}")),
                }
            }
            (XferResponse::Members { members }, Vec::new())
        }
    }
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
        let (log, store, keep) = (self.log.clone(), self.store.clone(), self.cfg.keep.keep);
        let work = async move {
            let catalogs = log.send(crate::log::actor::GetCatalogs).await.ok()?;
            let on_disk = tokio::task::spawn_blocking(move || {
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
                    act.log.do_send(Record(Event::Replicated { node, path, archive, holder, bytes: 0 }));
                } else {
                    tracing::info!("the catalog said that this node keeps archive {archive} of {path} on {node}: it does not (said again)");
                    act.log.do_send(Record(Event::Pruned { node, path, archive, holder }));
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
                act.log.do_send(Record(Event::Pruned {
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
        let (claimants, usage) = (self.claimants.clone(), self.usage.clone());
        let work = tokio::task::spawn_blocking(move || {
            let holder = Holder { store: &store, me: &me, keep, quota, usage: &usage, claimants: &claimants };
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
                        act.log.do_send(Record(e));
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
            ReplicaRequest::Restore { node, path, archive, to, overwrite, request, .. } => {
                let (node, path, archive) = (node.into(), path.into(), archive.map(String::from));
                match self.handle(RestoreHere { node, path, archive, to, overwrite, request }, ctx) {
                    Ok(()) => ReplicaAnswer::Accepted,
                    Err(reason) => ReplicaAnswer::Failed { reason: reason.to_string() },
                }
            }
            ReplicaRequest::Verify { node, path, request, .. } => {
                let (node, path) = (node.map(String::from), path.map(String::from));
                let MessageResult(series) = self.handle(VerifyHere { node, path, request }, ctx);
                ReplicaAnswer::Verifying { series }
            }
        };
        msg.reply.send(&answer);
    }
}

/// Why a restore into `to` cannot start, if it cannot.
fn check_target(to: &str, overwrite: bool) -> Result<(), BadTarget> {
    let p = std::path::Path::new(to);
    if !p.is_absolute() {
        return Err(BadTarget::NotAbsolute(to.into()));
    }
    match std::fs::read_dir(p).map(|mut entries| entries.next().is_some()) {
        Ok(true) if !overwrite => Err(BadTarget::NotEmpty(to.into())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(BadTarget::NotADirectory(to.into())),
        Err(e) => Err(BadTarget::Unusable { to: to.into(), why: e.to_string() }),
    }
}

impl Handler<RestoreHere> for ReplicaActor {
    type Result = Result<(), BadTarget>;
    fn handle(&mut self, msg: RestoreHere, _: &mut Context<Self>) -> Self::Result {
        check_target(&msg.to, msg.overwrite)?;
        let net = self.net.clone();
        let (store, log, membership, me) =
            (self.store.clone(), self.log.clone(), self.membership.clone(), self.me.clone());
        let offsite = self.offsite.as_ref().map(|(_, o)| o.clone());
        actix::spawn(async move {
            let started = Instant::now();
            let result = restore(&store, &net, &log, &membership, offsite, &msg).await;
            let duration_ms = started.elapsed().as_millis() as u64;
            let (archive, files, bytes, error) = match result {
                Ok((archive, report)) => (archive, report.entries, report.bytes, None),
                Err((archive, e)) => (archive, 0, 0, Some(e.to_string())),
            };
            match &error {
                None => tracing::info!("restored {} of {} into {}", msg.path, msg.node, msg.to),
                Some(e) => tracing::warn!("restore of {} of {} into {} failed: {e}", msg.path, msg.node, msg.to),
            }
            log.do_send(Record(Event::Restored {
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

/// Finds the archive and restores it: `(archive id, report)`, or the id
/// (if known) and why not.
async fn restore(
    store: &Arc<Store>,
    net: &NetClient,
    log: &Addr<LogActor>,
    membership: &Addr<MembershipActor>,
    offsite: Option<Arc<crate::offsite::sync::Offsite>>,
    msg: &RestoreHere,
) -> Result<(String, crate::archive::RestoreReport), (String, RestoreFailed)> {
    let catalog = log
        .send(GetCatalog { node: msg.node.clone(), path: msg.path.clone() })
        .await
        .map_err(|e| (String::new(), RestoreFailed::Stopping(e.to_string())))?;
    let mut peers =
        membership.send(GetPeers).await.map_err(|e| (String::new(), RestoreFailed::Stopping(e.to_string())))?.1;
    // A node that has just started (or lost its peers a moment ago) may
    // not see a holder up yet: wait a little for one before saying none is.
    let mut waited = 0;
    let kept_here = |id: &str| store.has_archive(&msg.node, &msg.path, id);
    let wanted = match msg.archive.as_deref() {
        Some(id) => catalog.iter().find(|a| a.id == id),
        None => catalog.first(),
    };
    if let Some(a) = wanted.filter(|a| !kept_here(&a.id)) {
        while waited < HOLDER_WAIT_MS && !peers.iter().any(|p| p.up && a.holders.contains(&p.name)) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            waited += 500;
            peers =
                membership.send(GetPeers).await.map_err(|e| (String::new(), RestoreFailed::Stopping(e.to_string())))?.1;
        }
    }
    let found = locate(store, net, &catalog, &peers, &msg.node, &msg.path, msg.archive.as_deref()).await;
    let (m, place) = match (found, offsite) {
        (Ok(found), _) => found,
        // No live node has it: the bucket may.
        (Err(e), Some(offsite)) => {
            let (st, node, path, id) = (store.clone(), msg.node.clone(), msg.path.clone(), msg.archive.clone());
            let claimant = source::claimant(&peers, &msg.node).map(str::to_string);
            tracing::info!("no live node has {} of {} ({e}); reading it from the offsite bucket", msg.path, msg.node);
            let imported = tokio::task::spawn_blocking(move || {
                offsite.import(&st, &node, &path, id.as_deref(), claimant.as_deref())
            })
            .await;
            match imported {
                Ok(Ok(m)) => (m, Place::Local),
                Ok(Err(oe)) => {
                    let why = format!("{e}; and from the offsite bucket: {oe}");
                    return Err((msg.archive.clone().unwrap_or_default(), RestoreFailed::Offsite(why)));
                }
                Err(join) => return Err((String::new(), RestoreFailed::Crashed(join.to_string()))),
            }
        }
        (Err(e), None) => return Err((msg.archive.clone().unwrap_or_default(), RestoreFailed::Read(e))),
    };
    let id = m.id.clone();
    let (store, net, to) = (store.clone(), net.clone(), PathBuf::from(&msg.to));
    let opts = RestoreOptions { overwrite: msg.overwrite, ..RestoreOptions::default() };
    // Should a member kept here be damaged or missing, the live peers
    // (holders first) can send it: the restore is made again from them.
    let holders: Vec<&str> = catalog.iter().flat_map(|a| a.holders.iter().map(String::as_str)).collect();
    let mut others: Vec<&PeerView> = peers.iter().filter(|p| p.up).collect();
    others.sort_by_key(|p| !holders.contains(&p.name.as_str()));
    let others: Vec<String> = others.into_iter().map(|p| p.peer_id.clone()).collect();
    let done = tokio::task::spawn_blocking(move || match place {
        Place::Local => match restore_archive(&m, &*store, &to, &opts) {
            Err(e @ (RestoreError::DamagedMember { .. } | RestoreError::MissingMember { .. }))
                if !others.is_empty() =>
            {
                tracing::warn!("restore of archive {} here: {e}; reading its members from peers instead", m.id);
                let remote = RemoteSource::new(net, others, &m.members);
                let report = restore_archive(&m, &remote, &to, &opts)?;
                // What came from peers mends this node's copy.
                let mut mended = 0;
                for r in &m.members {
                    if store.read_member_checked(&r.sha256).is_err() {
                        if let Ok(data) = MemberSource::read_member(&remote, r) {
                            mended += usize::from(store.repair_member(&r.sha256, &data).is_ok());
                        }
                    }
                }
                if mended > 0 {
                    tracing::warn!("mended {mended} damaged or missing member(s) of archive {} from peers", m.id);
                }
                Ok(report)
            }
            other => other,
        },
        Place::Remote(peers) => restore_archive(&m, &RemoteSource::new(net, peers, &m.members), &to, &opts),
    })
    .await;
    match done {
        Ok(Ok(report)) => Ok((id, report)),
        Ok(Err(e)) => Err((id, RestoreFailed::Restore(e.to_string()))),
        Err(e) => Err((id, RestoreFailed::Crashed(e.to_string()))),
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
                    log.do_send(Record(e));
                }
            }
        });
        MessageResult(series)
    }
}

/// Re-hashes every member of this node's copies of (node, path) and
/// replaces damaged or missing ones from another holder.
#[allow(clippy::too_many_arguments)]
async fn verify_series(
    store: &Arc<Store>,
    net: &NetClient,
    log: &Addr<LogActor>,
    membership: &Addr<MembershipActor>,
    me: &str,
    node: &str,
    path: &str,
    ids: &[String],
    request: &str,
) -> Vec<Event> {
    let (s, n, p, list) = (store.clone(), node.to_string(), path.to_string(), ids.to_vec());
    let failed = |error: String| Event::VerifyFailed {
        node: node.into(),
        path: path.into(),
        holder: me.into(),
        error,
        request: Some(request.into()),
    };
    // (archive id, members, bad digests) for each archive whose manifest
    // reads, and why each other one does not.
    let checked = tokio::task::spawn_blocking(move || {
        let mut unreadable = Vec::new();
        let checked = list
            .iter()
            .filter_map(|id| match s.manifest(&n, &p, Some(id)) {
                Ok(m) => {
                    let r = s.verify(&m);
                    let bad: Vec<Digest> = r.damaged.iter().chain(&r.missing).copied().collect();
                    Some((id.clone(), r.members as u64, bad))
                }
                Err(e) => {
                    tracing::warn!("verify: cannot read the manifest of {id}: {e}");
                    unreadable.push(format!("cannot read the manifest of archive {id}: {e}"));
                    None
                }
            })
            .collect::<Vec<_>>();
        (checked, unreadable)
    })
    .await;
    // A check that crashed checked nothing: it is a failure, never an empty success.
    let (checked, unreadable) = match checked {
        Ok(c) => c,
        Err(e) => return vec![failed(format!("the check of this holder's copies crashed: {e}"))],
    };
    let members: u64 = checked.iter().map(|(_, n, _)| n).sum();
    let bad: HashSet<Digest> = checked.iter().flat_map(|(_, _, b)| b.iter().copied()).collect();
    let mut repaired: HashSet<Digest> = HashSet::new();
    let mut events = Vec::new();
    if !bad.is_empty() {
        let catalog = log.send(GetCatalog { node: node.into(), path: path.into() }).await.unwrap_or_default();
        let peers = membership.send(GetPeers).await.map(|(_, p)| p).unwrap_or_default();
        // Other live nodes that keep this series, holders first.
        let holders: HashSet<&String> = catalog.iter().flat_map(|a| a.holders.iter()).collect();
        let mut sources: Vec<&PeerView> = peers.iter().filter(|p| p.up && p.name != me).collect();
        sources.sort_by_key(|p| !holders.contains(&p.name));
        let place = Place::Remote(sources.iter().map(|p| p.peer_id.clone()).collect());
        for d in &bad {
            match read_members(store, net, &place, vec![*d]).await {
                Ok(mut got) => {
                    let (s, data) = (store.clone(), got.remove(0).1);
                    let d2 = *d;
                    match tokio::task::spawn_blocking(move || s.repair_member(&d2, &data)).await {
                        Ok(Ok(())) => {
                            repaired.insert(*d);
                        }
                        Ok(Err(e)) => tracing::warn!("verify: cannot replace member {d}: {e}"),
                        Err(e) => tracing::warn!("verify: {e}"),
                    }
                }
                Err(e) => tracing::warn!("verify: member {d} of {path} on {node} cannot be repaired: {e}"),
            }
        }
        for (id, _, b) in &checked {
            if !b.is_empty() && b.iter().all(|d| repaired.contains(d)) {
                events.push(Event::Repaired {
                    node: node.into(),
                    path: path.into(),
                    archive: id.clone(),
                    holder: me.into(),
                });
            }
        }
    }
    if !unreadable.is_empty() {
        events.insert(0, failed(unreadable.join("; ")));
        return events;
    }
    events.insert(
        0,
        Event::Verified {
            node: node.into(),
            path: path.into(),
            holder: me.into(),
            archives: ids.len() as u64,
            members,
            damaged: bad.len() as u64,
            repaired: repaired.len() as u64,
            ok: bad.len() == repaired.len(),
            request: Some(request.into()),
        },
    );
    events
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
        assert_eq!(w.take("P", &[b], WANTED_FOR_MS + 1), Err(b), "asked too long ago");
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
        assert!(check_target("relative/dir", false).unwrap_err().to_string().contains("absolute"));
        let t = dir.path().join("new");
        assert!(check_target(t.to_str().unwrap(), false).is_ok());
        std::fs::create_dir(&t).unwrap();
        assert!(check_target(t.to_str().unwrap(), false).is_ok());
        std::fs::write(t.join("f"), b"x").unwrap();
        assert!(check_target(t.to_str().unwrap(), false).unwrap_err().to_string().contains("--overwrite"));
        assert!(check_target(t.to_str().unwrap(), true).is_ok());
        assert!(check_target(t.join("f").to_str().unwrap(), false)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }
}
