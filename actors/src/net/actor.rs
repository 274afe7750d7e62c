//! The membership actor: owns the [`Membership`] view.
//!
//! Messages: [`NetEvent`] (from the node's router: a peer was seen or said
//! hello), [`GetStatus`] (from the HTTP API: answers the view). Every
//! `tick` it marks silent peers down and refreshes this node's free space,
//! which it hands to the network loop for the next hellos.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Handler, Message, MessageResult};
use backmesh_api::Status;

use super::client::NetClient;
use super::membership::{Change, Membership, NodeInfo, PeerView};
use super::swarm_key::SwarmKeys;
use crate::clock::{now_ms, rfc3339};
use crate::disk::free_bytes;

/// Asks for the mesh as this node sees it. Sender: the HTTP API.
#[derive(Message)]
#[rtype(result = "Status")]
pub struct GetStatus;

/// This node and every known peer. Sender: the replica actor.
#[derive(Message)]
#[rtype(result = "(PeerView, Vec<PeerView>)")]
pub struct GetPeers;

/// What the network heard of a peer. Sender: the node's router.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub enum NetEvent {
    /// A peer answered a ping or sent something.
    Seen { peer: String },
    /// A peer said who it is.
    Hello { peer: String, info: NodeInfo },
}

/// A peer sent something this node refused. Senders: the log and replica
/// actors. Logged the first time, then counted; `status` shows it.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub struct Misbehaved {
    pub peer: String,
    pub what: String,
}

/// A peer went past one of this node's bounds and was refused the excess.
/// Senders: the network loop (connections, requests in flight) and the
/// replica actor (storage quota). Logged the first time, then counted.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub struct Limited {
    pub peer: String,
    pub what: String,
}

/// A peer speaks another mesh protocol (`what`), or (`None`) this one
/// again. Sender: the network loop.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub struct Incompatible {
    pub peer: String,
    pub what: Option<String>,
}

/// The operator revoked `peer` (node `node`). Sender: the network loop.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub struct Revoked {
    pub peer: String,
    pub node: String,
}

pub struct MembershipActor {
    state: Membership,
    data_dir: PathBuf,
    tick: Duration,
    net: NetClient,
    swarm_keys: Option<Arc<SwarmKeys>>,
}

impl MembershipActor {
    pub fn new(state: Membership, data_dir: PathBuf, tick: Duration, net: NetClient) -> Self {
        MembershipActor { state, data_dir, tick, net, swarm_keys: None }
    }

    /// Announces the swarm key's fingerprint in hellos and shows a
    /// rotation under way in `status`.
    pub fn with_swarm_keys(mut self, keys: Option<Arc<SwarmKeys>>) -> Self {
        self.state.set_swarm_key(keys.as_ref().map(|k| k.current()));
        self.swarm_keys = keys;
        self
    }

    fn report(&self, changes: Vec<Change>) {
        for c in changes {
            match c {
                Change::Up { peer, name } => tracing::info!("node {name} ({peer}) is up"),
                Change::Down { peer, name } => tracing::warn!("node {name} ({peer}) is down"),
                Change::NameConflict { name, peers } => {
                    tracing::error!(
                        "name conflict: {} peers claim the name `{name}`: {}",
                        peers.len(),
                        peers.join(", ")
                    )
                }
            }
        }
    }
}

impl Actor for MembershipActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.tick, |act, _| {
            let changes = act.state.tick(now_ms());
            act.report(changes);
            act.state.set_free_bytes(free_bytes(&act.data_dir));
            if let Some(keys) = &act.swarm_keys {
                act.state.set_swarm_key(Some(keys.current()));
            }
            let (net, info) = (act.net.clone(), act.state.me().clone());
            actix::spawn(async move {
                let _ = net.set_info(info).await;
            });
        });
    }
}

impl Handler<NetEvent> for MembershipActor {
    type Result = ();
    fn handle(&mut self, msg: NetEvent, _: &mut Context<Self>) {
        let now = now_ms();
        let changes = match msg {
            NetEvent::Seen { peer } => self.state.seen(&peer, now),
            NetEvent::Hello { peer, info } => self.state.hello(&peer, info, now),
        };
        self.report(changes);
    }
}

impl Handler<GetStatus> for MembershipActor {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let mut problems = self.state.problems();
        if let Some(r) = self.swarm_keys.as_ref().and_then(|k| k.rotation()) {
            let lagging = problems.iter().any(|p| p.starts_with("swarm key rotation under way"));
            let then = if lagging {
                "give every node the new key before then"
            } else {
                "every node up here dials with the new key: one that is down now needs it before then"
            };
            problems.push(format!(
                "swarm key rotated: the previous key (fingerprint {}) is still accepted until {}; {then}",
                r.previous,
                rfc3339(r.until_ms)
            ));
        }
        MessageResult(Status {
            nodes: self.state.view(rfc3339),
            jobs: Vec::new(),
            problems,
            state: Default::default(),
            offsite: None,
            workers: Vec::new(),
            recovery: Vec::new(),
        })
    }
}

impl Handler<Misbehaved> for MembershipActor {
    type Result = ();
    fn handle(&mut self, msg: Misbehaved, _: &mut Context<Self>) {
        if self.state.misbehaved(&msg.peer, &msg.what) {
            tracing::error!(
                "peer {} sent what this node refused: {} (counted in status from now on)",
                msg.peer,
                msg.what
            );
        }
    }
}

impl Handler<Limited> for MembershipActor {
    type Result = ();
    fn handle(&mut self, msg: Limited, _: &mut Context<Self>) {
        if self.state.limited(&msg.peer, &msg.what) {
            tracing::warn!(
                "peer {} went past this node's limits: it {} (refused the excess; counted in status from now on)",
                msg.peer,
                msg.what
            );
        }
    }
}

impl Handler<Incompatible> for MembershipActor {
    type Result = ();
    fn handle(&mut self, msg: Incompatible, _: &mut Context<Self>) {
        let changes = self.state.incompatible(&msg.peer, msg.what);
        self.report(changes);
    }
}

impl Handler<Revoked> for MembershipActor {
    type Result = ();
    fn handle(&mut self, msg: Revoked, _: &mut Context<Self>) {
        let changes = self.state.revoke(&msg.peer, &msg.node);
        self.report(changes);
    }
}

impl Handler<GetPeers> for MembershipActor {
    type Result = MessageResult<GetPeers>;
    fn handle(&mut self, _: GetPeers, _: &mut Context<Self>) -> Self::Result {
        let me = self.state.me();
        let me = PeerView {
            peer_id: self.state.me_peer().to_string(),
            name: me.name.clone(),
            free_bytes: me.free_bytes,
            up: true,
            last_seen_ms: now_ms(),
        };
        MessageResult((me, self.state.peers()))
    }
}
