//! The loop that owns the `Swarm` (rust-libp2p's file-sharing shape):
//! commands in from [`NetClient`](super::client::NetClient)s, events out
//! to the node as [`Inbound`]. It keeps, once for every request protocol,
//! the bounds a mesh needs: requests each peer may have in flight here,
//! requests this node has in flight to each peer (the rest wait in
//! order), each protocol's answer timeout, and peers of another mesh
//! protocol refused whole.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::multiaddr::Protocol as AddrPart;
use libp2p::request_response::{self, InboundRequestId, OutboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, mdns, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};

use super::behaviour::{
    Behaviour, BehaviourEvent, INBOUND_QUEUE, INFLIGHT_PER_PEER, MAX_INCOMPATIBLE, OUTBOUND_WAITING,
};
use super::client::{Command, Inbound, Pending, RequestError, Target, Verdict};
use super::hello::{Hello, KnownPeer};
use super::membership::NodeInfo;
use super::revocations::Taken;
use super::rpc::{Answer, Answered, InboundRequest, Lane, Protocol, Protocols, Request, Responder};

/// Why a peer's request is refused before it is served (the words go back
/// to the peer, which may retry later).
#[derive(Debug)]
struct NotAdmitted(String);

/// A request to a peer waiting for one of the requests in flight to that
/// peer to be answered.
pub(super) struct Outgoing {
    protocol: Protocol,
    body: Vec<u8>,
    reply: Pending,
}

/// A request in flight to a peer.
pub(super) struct Sent {
    peer: PeerId,
    /// Whether it still holds one of the peer's places in flight: given
    /// back when its protocol's time runs out, not only when the stream ends.
    in_lane: bool,
    /// Taken when the answer came, or when its protocol's time ran out
    /// (the stream itself ends later, and frees its place then).
    reply: Option<Pending>,
    deadline: Instant,
    timeout: Duration,
}

/// The loop that owns the swarm: commands in, [`Inbound`] events out.
pub struct EventLoop {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) rx: mpsc::Receiver<Command>,
    /// Handlers' answers, on their way to the peers that asked; drained at
    /// once. Not bounded by admission alone: a request whose stream failed
    /// frees its place while its handler may still answer (the answer is
    /// then dropped by libp2p).
    pub(super) answers: mpsc::UnboundedSender<Answered>,
    pub(super) answers_rx: mpsc::UnboundedReceiver<Answered>,
    pub(super) inbound: mpsc::Sender<Inbound>,
    pub(super) protocols: Protocols,
    pub(super) hello_every: Duration,
    pub(super) info: NodeInfo,
    pub(super) connections_per_peer: u32,
    pub(super) outbound_per_peer: usize,
    pub(super) protocol: u32,
    /// The test-only partition gate's file, and the peers it cuts off now.
    pub(super) partition: Option<std::path::PathBuf>,
    /// The swarm keys, whose file is read again every tick (rotation).
    pub(super) swarm_keys: Option<std::sync::Arc<super::swarm_key::SwarmKeys>>,
    pub(super) cut_off: HashSet<PeerId>,
    /// The operator's revocations: those peers are cut off for good.
    pub(super) revocations: super::revocations::Revocations,
    /// Listen addresses of peers, from identify: for redials and hellos.
    pub(super) known: HashMap<PeerId, Vec<Multiaddr>>,
    pub(super) bootstrap: Vec<Multiaddr>,
    /// Bootstrap addresses that have answered once: from then on their
    /// peer is redialled like any known peer.
    pub(super) bootstrap_answered: HashSet<Multiaddr>,
    /// Redials of bootstrap addresses that never answered (or of all of
    /// them while nothing is connected).
    pub(super) redial: Backoff,
    /// When each remote was last warned about, so a misconfigured peer
    /// that keeps knocking does not flood the log.
    pub(super) warned: HashMap<String, Instant>,
    /// Requests in flight to peers → where their answer goes.
    pub(super) pending: HashMap<(Lane, OutboundRequestId), Sent>,
    /// Dials asked for by the API → where the answering peer id goes.
    pub(super) pending_dials: HashMap<libp2p::swarm::ConnectionId, oneshot::Sender<Result<String, RequestError>>>,
    /// Requests each peer has in flight here, up to [`INFLIGHT_PER_PEER`].
    pub(super) inflight: HashMap<PeerId, usize>,
    /// Which peer each request in flight came from.
    pub(super) inflight_ids: HashMap<(Lane, InboundRequestId), PeerId>,
    /// Peers whose hello named another mesh protocol: what they send is
    /// refused until they say hello in this one.
    pub(super) incompatible: HashSet<PeerId>,
    /// Requests in flight to each peer, up to `outbound_per_peer`.
    pub(super) outbound: HashMap<PeerId, usize>,
    /// Requests waiting for room in flight, per peer, in order.
    pub(super) waiting: HashMap<PeerId, VecDeque<Outgoing>>,
}

/// Exponential backoff: 1 s doubling to 60 s, reset on success.
pub(super) struct Backoff {
    next: Instant,
    delay: Duration,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Backoff { next: Instant::now(), delay: Duration::from_secs(1) }
    }
    fn ready(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.delay;
        self.delay = (self.delay * 2).min(Duration::from_secs(60));
        true
    }
    fn reset(&mut self) {
        *self = Backoff::new();
    }
}

/// A libp2p connection error in words an operator can act on.
fn explain(error: &str) -> String {
    if error.contains("Connection refused") {
        format!("{error} (is a node listening there yet?)")
    } else if error.contains("Handshake failed") || error.contains("reset by peer") {
        format!("{error} (the handshake failed: does the other node use the same --swarm-key?)")
    } else if error.contains("negotiate") && error.contains("Timeout") {
        // With another key the private-network layer garbles the stream
        // instead of closing it: the handshake just never completes.
        format!("{error} (no handshake in time: is it a backmesh node with the same --swarm-key?)")
    } else {
        error.to_string()
    }
}

impl EventLoop {
    /// Warns about `remote` at most once a minute; debug-logs the rest.
    fn warn_once(&mut self, remote: String, msg: String) {
        let now = Instant::now();
        let quiet = self.warned.get(&remote).is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60));
        if quiet {
            tracing::debug!("{msg}");
        } else {
            self.warned.insert(remote, now);
            tracing::warn!("{msg}");
        }
    }

    /// Hands an event to the node. A node too busy to take it (its queue
    /// full) loses it: a request then fails at the peer, which retries;
    /// gossip is repaired by anti-entropy.
    fn emit(&mut self, event: Inbound) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.inbound.try_send(event) {
            self.warn_once(
                "inbound".into(),
                format!("the node is behind on {INBOUND_QUEUE} network events; dropping some"),
            );
        }
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.hello_every);
        let mut gate = tokio::time::interval(Duration::from_millis(500));
        let mut sweep = tokio::time::interval(Duration::from_millis(500));
        // Before any connection is up: a node restarted behind the gate
        // never talks across it.
        self.read_gate();
        // The revocations kept from before: cut off before anyone connects.
        let kept: Vec<(String, String, Option<i64>)> =
            self.revocations.revoked().map(|(p, n, r)| (n.clone(), p.clone(), r)).collect();
        for (node, peer, retired_ms) in kept {
            self.cut_off_revoked(&node, &peer, retired_ms);
        }
        let rebound: Vec<(String, String, String, i64)> =
            self.revocations.rebinds().map(|(n, p, f, at)| (n.clone(), p.clone(), f.clone(), at)).collect();
        for (node, peer, former, at_ms) in rebound {
            self.cut_off_revoked(&node, &former, None);
            self.emit(Inbound::Rebound { node, peer, former, at_ms });
        }
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    None => break,
                    Some(Command::Shutdown(done)) => {
                        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                        for p in peers {
                            let _ = self.swarm.disconnect_peer_id(p);
                        }
                        let _ = done.send(());
                        break;
                    }
                    Some(cmd) => self.on_command(cmd),
                },
                Some(Answered { lane, channel, answer }) = self.answers_rx.recv() => self.respond(lane, channel, answer),
                _ = tick.tick() => self.on_tick(),
                _ = gate.tick(), if self.partition.is_some() => self.read_gate(),
                _ = sweep.tick() => self.sweep(Instant::now()),
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::SetInfo(info) => self.info = info,
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.swarm.listeners().map(|a| a.to_string()).collect());
            }
            Command::Publish { topic, data } => {
                let topic = gossipsub::IdentTopic::new(topic);
                if let Err(e) = self.swarm.behaviour_mut().gossip.publish(topic, data) {
                    // No peer yet: anti-entropy pulls deliver it later.
                    tracing::debug!("gossip not sent now: {e}");
                }
            }
            Command::Validated { id, from, verdict } => {
                if let Ok(from) = from.parse::<PeerId>() {
                    let acceptance = match verdict {
                        Verdict::Accept => gossipsub::MessageAcceptance::Accept,
                        Verdict::Reject => gossipsub::MessageAcceptance::Reject,
                        Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                    };
                    let id = gossipsub::MessageId::from(id);
                    self.swarm.behaviour_mut().gossip.report_message_validation_result(&id, &from, acceptance);
                }
            }
            Command::Dial { addr, reply } => {
                let opts = DialOpts::unknown_peer_id().address(addr).build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dials.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RequestError::Unreachable(explain(&e.to_string()))));
                    }
                }
            }
            Command::Request { to, protocol, body, reply } => {
                let peer = match to {
                    Target::Peer(peer) => Some(peer),
                    Target::Any { prefer } => self.any_peer(prefer),
                };
                match peer {
                    Some(peer) => self.send_out(peer, Outgoing { protocol, body, reply }),
                    None => drop(reply.send(Err(RequestError::NoPeer))),
                }
            }
            Command::Shutdown(done) => drop(done.send(())),
            Command::Trust { order, reply } => {
                let taken = self.revocations.take_change(&order);
                if let Ok(t) = &taken {
                    self.changed_trust(t);
                    if *t != Taken::Known {
                        // Said to every peer now, not at the next hello.
                        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                        for p in connected {
                            let h = self.hello();
                            self.swarm.behaviour_mut().hello.send_request(&p, h);
                        }
                    }
                }
                let _ = reply.send(taken);
            }
        }
    }

    /// `prefer` if it is connected, else a connected peer of this node's
    /// protocol, a different one each time.
    fn any_peer(&self, prefer: Option<PeerId>) -> Option<PeerId> {
        let connected: Vec<PeerId> =
            self.swarm.connected_peers().filter(|p| !self.incompatible.contains(*p)).copied().collect();
        prefer.filter(|p| connected.contains(p)).or_else(|| {
            // A different peer each time, without a random-number dependency.
            let n = connected.len();
            (n > 0).then(|| connected[(crate::clock::now_ms() as usize / 7) % n])
        })
    }

    /// Fails the requests whose protocol's time ran out, and gives their
    /// places in flight to the requests waiting for the same peers.
    fn sweep(&mut self, now: Instant) {
        let mut freed = Vec::new();
        for sent in self.pending.values_mut() {
            if now >= sent.deadline {
                if let Some(reply) = sent.reply.take() {
                    let _ = reply.send(Err(RequestError::Timeout { after: sent.timeout }));
                }
                if std::mem::take(&mut sent.in_lane) {
                    freed.push(sent.peer);
                }
            }
        }
        for peer in freed {
            self.lane_free(peer);
        }
    }

    /// Sends `answer` back on the stream `channel` came from.
    fn respond(&mut self, lane: Lane, channel: request_response::ResponseChannel<Answer>, answer: Answer) {
        let b = self.swarm.behaviour_mut();
        let _ = match lane {
            Lane::Small => b.rpc.send_response(channel, answer),
            Lane::Bulk => b.bulk.send_response(channel, answer),
        };
    }

    /// Cuts off the peers the partition gate's file names, lets the others
    /// through again.
    fn read_gate(&mut self) {
        let Some(file) = &self.partition else { return };
        let now: HashSet<PeerId> =
            std::fs::read_to_string(file).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect();
        for p in now.difference(&self.cut_off) {
            tracing::info!("partition gate (test only): cut off from {p}");
            self.swarm.behaviour_mut().gate.block_peer(*p);
        }
        for p in self.cut_off.difference(&now) {
            tracing::info!("partition gate (test only): {p} let through again");
            self.swarm.behaviour_mut().gate.unblock_peer(*p);
        }
        self.cut_off = now;
    }

    /// Cuts off `peer` (node `node`), which the operator revoked, and tells the node.
    fn cut_off_revoked(&mut self, node: &str, peer: &str, retired_ms: Option<i64>) {
        tracing::warn!(
            "the operator {} node {node} ({peer}): its connections are refused from now on",
            if retired_ms.is_some() { "retired" } else { "revoked" }
        );
        if let Ok(p) = peer.parse::<PeerId>() {
            self.swarm.behaviour_mut().gate.block_peer(p);
            self.known.remove(&p);
        }
        self.emit(Inbound::Revoked { peer: peer.to_string(), node: node.to_string(), retired_ms });
    }

    /// Acts on a change of trust just taken in.
    fn changed_trust(&mut self, taken: &Taken) {
        match taken {
            Taken::Known => {}
            Taken::Revoked { node, peer, retired_ms } => {
                let (node, peer, retired_ms) = (node.clone(), peer.clone(), *retired_ms);
                self.cut_off_revoked(&node, &peer, retired_ms)
            }
            Taken::Rebound { node, peer, former, at_ms } => {
                let (node, peer, former, at_ms) = (node.clone(), peer.clone(), former.clone(), *at_ms);
                tracing::warn!(
                    "the operator bound node {node} to {peer} (it was {former}, which is refused from now on)"
                );
                self.cut_off_revoked(&node, &former, None);
                self.emit(Inbound::Rebound { node, peer, former, at_ms });
            }
            Taken::Operator { operator, trusted: true } => {
                tracing::warn!("the operator trusts operator key {operator} from now on")
            }
            Taken::Operator { operator, trusted: false } => {
                tracing::warn!("the operator no longer trusts operator key {operator}")
            }
            Taken::Recipient { recipient, wrapped: true } => {
                tracing::warn!("the operator has data keys wrapped to recovery recipient {recipient} from now on")
            }
            Taken::Recipient { recipient, wrapped: false } => {
                tracing::warn!("the operator has data keys wrapped to recovery recipient {recipient} no longer")
            }
        }
    }

    /// Takes in the changes of trust a peer's hello carries.
    fn take_revocations(&mut self, from: &PeerId, orders: &[crate::authority::SignedOrder]) {
        let most = super::revocations::MAX_REVOCATIONS
            + super::revocations::MAX_OPERATOR_CHANGES
            + super::revocations::MAX_RECIPIENT_CHANGES
            + super::revocations::MAX_REBINDS;
        for order in orders.iter().take(most) {
            match self.revocations.take_heard(order) {
                Ok(taken) => self.changed_trust(&taken),
                Err(e) => tracing::debug!("{from} passed on a change of trust that does not hold here: {e}"),
            }
        }
    }

    fn hello(&self) -> Hello {
        let connected: HashSet<&PeerId> = self.swarm.connected_peers().collect();
        let peers = self
            .known
            .iter()
            .filter(|(p, _)| connected.contains(p))
            .map(|(p, addrs)| KnownPeer {
                peer_id: p.to_string(),
                addrs: addrs.iter().map(|a| a.to_string()).collect(),
            })
            .collect();
        Hello { info: self.info.clone(), peers, protocol: self.protocol, trust: self.revocations.orders() }
    }

    /// Whether `peer` speaks this node's mesh protocol. One that does not
    /// is refused whole (not up, no requests served, its gossip dropped),
    /// and the node says so once a minute and in its status.
    fn check_protocol(&mut self, peer: &PeerId, hello: &Hello) -> bool {
        if hello.protocol == self.protocol {
            if self.incompatible.remove(peer) {
                self.emit(Inbound::Incompatible { peer: peer.to_string(), what: None });
            }
            return true;
        }
        let msg = format!(
            "runs backmesh {} with mesh protocol {}, this node {} with protocol {}: \
             nothing passes between them until the older one is upgraded",
            hello.info.version,
            hello.protocol,
            env!("CARGO_PKG_VERSION"),
            self.protocol
        );
        self.warn_once(format!("protocol {peer}"), format!("{} ({peer}) {msg}", hello.info.name));
        if self.incompatible.len() >= MAX_INCOMPATIBLE {
            // A flood of fresh ids: forget the oldest known at random, not grow.
            let any = self.incompatible.iter().next().copied();
            any.map(|p| self.incompatible.remove(&p));
        }
        if self.incompatible.insert(*peer) {
            self.emit(Inbound::Incompatible {
                peer: peer.to_string(),
                what: Some(format!("{} {msg}", hello.info.name)),
            });
        }
        false
    }

    /// Counts a request of `peer`'s as in flight, or says why it is
    /// refused: a peer of another protocol, or one past its bound.
    fn admit(&mut self, peer: PeerId, id: (Lane, InboundRequestId)) -> Result<(), NotAdmitted> {
        if self.incompatible.contains(&peer) {
            return Err(NotAdmitted(format!("{peer} speaks another mesh protocol than this node ({})", self.protocol)));
        }
        let n = self.inflight.entry(peer).or_default();
        if *n >= INFLIGHT_PER_PEER {
            let what = format!("had {INFLIGHT_PER_PEER} requests in flight here and sent more");
            self.warn_once(format!("inflight {peer}"), format!("refused a request from {peer}: it {what}"));
            self.emit(Inbound::Limited { peer: peer.to_string(), what: what.clone() });
            return Err(NotAdmitted(format!("{peer} {what}: retry when they are answered")));
        }
        *n += 1;
        self.inflight_ids.insert(id, peer);
        Ok(())
    }

    /// A request counted by [`EventLoop::admit`] was answered or failed.
    fn settled(&mut self, id: (Lane, InboundRequestId)) {
        if let Some(peer) = self.inflight_ids.remove(&id) {
            if let Some(n) = self.inflight.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    self.inflight.remove(&peer);
                }
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(said) = self.swarm_keys.as_ref().and_then(|k| k.reload(crate::clock::now_ms())) {
            tracing::warn!("{said}");
        }
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in &connected {
            let h = self.hello();
            self.swarm.behaviour_mut().hello.send_request(p, h);
        }
        // Peers we knew and lost: try again (a restarted node comes back).
        let lost: Vec<(PeerId, Vec<Multiaddr>)> =
            self.known.iter().filter(|(p, _)| !connected.contains(p)).map(|(p, a)| (*p, a.clone())).collect();
        for (peer, addrs) in lost {
            self.dial(peer, addrs);
        }
        // Nodes often start together: a bootstrap peer that was not up yet
        // is tried again (with backoff) even when others are connected.
        let unanswered: Vec<Multiaddr> = if connected.is_empty() {
            self.bootstrap.clone()
        } else {
            self.bootstrap.iter().filter(|a| !self.bootstrap_answered.contains(*a)).cloned().collect()
        };
        if !unanswered.is_empty() && self.redial.ready(Instant::now()) {
            for addr in unanswered {
                let _ = self.swarm.dial(addr);
            }
        }
        if !connected.is_empty() {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    /// Sends `out` to `peer` now, or once fewer than `outbound_per_peer`
    /// of this node's requests are in flight to it.
    fn send_out(&mut self, peer: PeerId, out: Outgoing) {
        if self.outbound.get(&peer).copied().unwrap_or(0) < self.outbound_per_peer {
            return self.dispatch(peer, out);
        }
        let queue = self.waiting.entry(peer).or_default();
        if queue.len() < OUTBOUND_WAITING {
            queue.push_back(out);
            return;
        }
        let _ = out.reply.send(Err(RequestError::Backlog { peer: peer.to_string(), waiting: OUTBOUND_WAITING }));
    }

    fn dispatch(&mut self, peer: PeerId, out: Outgoing) {
        if out.reply.is_closed() {
            // Whoever asked has gone (an abandoned API call): no place in
            // flight is spent on it.
            return;
        }
        let lane = out.protocol.lane();
        let request = Request { protocol: out.protocol.name.to_string(), body: out.body, known: true };
        let b = self.swarm.behaviour_mut();
        let id = match lane {
            Lane::Small => b.rpc.send_request(&peer, request),
            Lane::Bulk => b.bulk.send_request(&peer, request),
        };
        let timeout = out.protocol.timeout;
        let sent = Sent { peer, in_lane: true, reply: Some(out.reply), deadline: Instant::now() + timeout, timeout };
        self.pending.insert((lane, id), sent);
        *self.outbound.entry(peer).or_default() += 1;
    }

    /// A request to a peer was answered or failed: its answer goes where
    /// it was asked for (unless its time ran out), and the next waiting
    /// request to that peer goes.
    fn out_done(&mut self, id: (Lane, OutboundRequestId), result: Result<Answer, RequestError>) {
        let Some(sent) = self.pending.remove(&id) else { return };
        let peer = sent.peer;
        if let Some(reply) = sent.reply {
            let _ = reply.send(match result {
                // An answer from a peer found to speak another mesh
                // protocol since is not taken.
                Ok(_) if self.incompatible.contains(&peer) => Err(RequestError::Refused(format!(
                    "{peer} speaks another mesh protocol than this node ({})",
                    self.protocol
                ))),
                Ok(Answer::Body(body)) => Ok((peer.to_string(), body)),
                Ok(Answer::Refused(reason)) => Err(RequestError::Refused(reason)),
                Err(e) => Err(e),
            });
        }
        if sent.in_lane {
            self.lane_free(peer);
        }
    }

    /// One of this node's places in flight to `peer` is free: the next
    /// waiting request goes.
    fn lane_free(&mut self, peer: PeerId) {
        if let Some(n) = self.outbound.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.outbound.remove(&peer);
            }
        }
        self.next_waiting(peer);
    }

    /// Sends the requests waiting for `peer` while places in flight are free.
    fn next_waiting(&mut self, peer: PeerId) {
        while self.outbound.get(&peer).copied().unwrap_or(0) < self.outbound_per_peer {
            let Some(next) = self.waiting.get_mut(&peer).and_then(|q| q.pop_front()) else { break };
            self.dispatch(peer, next);
        }
        if self.waiting.get(&peer).is_some_and(|q| q.is_empty()) {
            self.waiting.remove(&peer);
        }
    }

    /// What the request protocols of `lane` heard.
    fn on_rpc(&mut self, lane: Lane, event: request_response::Event<Request, Answer>) {
        match event {
            request_response::Event::Message { peer, message, .. } => {
                self.seen(&peer);
                match message {
                    request_response::Message::Request { request, channel, request_id } => {
                        self.serve(peer, request, channel, (lane, request_id))
                    }
                    request_response::Message::Response { request_id, response } => {
                        self.out_done((lane, request_id), Ok(response))
                    }
                }
            }
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                tracing::debug!("a request to {peer} failed: {error}");
                self.out_done((lane, request_id), Err(RequestError::NoAnswer(error.to_string())));
            }
            request_response::Event::InboundFailure { peer, request_id, error, .. } => {
                tracing::debug!("a request from {peer} failed: {error}");
                self.settled((lane, request_id));
            }
            request_response::Event::ResponseSent { request_id, .. } => self.settled((lane, request_id)),
        }
    }

    /// Hands a peer's request to the node, or refuses it in words.
    fn serve(
        &mut self,
        peer: PeerId,
        request: Request,
        channel: request_response::ResponseChannel<Answer>,
        id: (Lane, InboundRequestId),
    ) {
        let lane = id.0;
        let spec = self.protocols.get(&request.protocol).filter(|_| request.known).map(|p| p.name);
        let Some(protocol) = spec else {
            let reason = format!(
                "this node (backmesh {}, mesh protocol {}) does not speak {}",
                env!("CARGO_PKG_VERSION"),
                self.protocol,
                request.protocol
            );
            return self.respond(lane, channel, Answer::Refused(reason));
        };
        match self.admit(peer, id) {
            Ok(()) => {
                let reply = Responder { lane, channel, tx: self.answers.clone() };
                let request = InboundRequest { protocol, peer: peer.to_string(), body: request.body, reply };
                self.emit(Inbound::Request(request));
            }
            Err(why) => {
                tracing::debug!("{} from {peer} not served: {}", request.protocol, why.0);
                self.respond(lane, channel, Answer::Refused(why.0));
            }
        }
    }

    fn dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == *self.swarm.local_peer_id() || addrs.is_empty() {
            return;
        }
        let opts = DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::DisconnectedAndNotDialing).build();
        let _ = self.swarm.dial(opts);
    }

    fn learn(&mut self, peers: Vec<KnownPeer>) {
        for kp in peers {
            let Ok(peer) = kp.peer_id.parse::<PeerId>() else { continue };
            if peer == *self.swarm.local_peer_id() || self.swarm.is_connected(&peer) {
                continue;
            }
            let addrs: Vec<Multiaddr> = kp.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            for a in &addrs {
                self.swarm.behaviour_mut().kad.add_address(&peer, a.clone());
            }
            self.dial(peer, addrs);
        }
    }

    /// A sign of life from `peer` (none counts from a peer of another protocol).
    fn seen(&mut self, peer: &PeerId) {
        if !self.incompatible.contains(peer) {
            self.emit(Inbound::Seen { peer: peer.to_string() });
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, num_established, endpoint, connection_id, .. } => {
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id.to_string()));
                }
                if let libp2p::core::ConnectedPoint::Dialer { address, .. } = &endpoint {
                    let bare: Multiaddr = address.iter().filter(|p| !matches!(p, AddrPart::P2p(_))).collect();
                    if self.bootstrap.contains(&bare) {
                        // Known from now on, before identify says more: a
                        // peer that closes at once (it refused this node,
                        // or crashed) is redialled like any peer lost, not
                        // forgotten with the address that answered.
                        self.known.entry(peer_id).or_insert_with(|| vec![bare.clone()]);
                        self.bootstrap_answered.insert(bare);
                    }
                }
                if self.bootstrap.iter().all(|a| self.bootstrap_answered.contains(a)) {
                    self.redial.reset();
                }
                self.seen(&peer_id);
                if num_established.get() == 1 {
                    let h = self.hello();
                    self.swarm.behaviour_mut().hello.send_request(&peer_id, h);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(_), .. })) => self.seen(&peer),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                for a in &info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, a.clone());
                }
                self.known.insert(peer_id, info.listen_addrs);
                self.seen(&peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Hello(request_response::Event::Message {
                peer, message, ..
            })) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    // Answered either way: the other side learns this
                    // node's protocol, and says so to its operator too.
                    let reply = self.hello();
                    let _ = self.swarm.behaviour_mut().hello.send_response(channel, reply);
                    self.take_revocations(&peer, &request.trust);
                    if self.check_protocol(&peer, &request) {
                        self.emit(Inbound::Hello { peer: peer.to_string(), info: request.info });
                        self.learn(request.peers);
                    }
                }
                request_response::Message::Response { response, .. } => {
                    self.take_revocations(&peer, &response.trust);
                    if self.check_protocol(&peer, &response) {
                        self.emit(Inbound::Hello { peer: peer.to_string(), info: response.info });
                        self.learn(response.peers);
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Hello(request_response::Event::InboundFailure {
                peer,
                error,
                ..
            })) => {
                tracing::debug!("hello from {peer} failed: {error}");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Hello(request_response::Event::OutboundFailure {
                peer,
                error,
                ..
            })) => {
                tracing::debug!("hello to {peer} failed: {error}");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(event)) => self.on_rpc(Lane::Small, event),
            SwarmEvent::Behaviour(BehaviourEvent::Bulk(event)) => self.on_rpc(Lane::Bulk, event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                if self.incompatible.contains(&propagation_source) {
                    let ignore = gossipsub::MessageAcceptance::Ignore;
                    let gossip = &mut self.swarm.behaviour_mut().gossip;
                    gossip.report_message_validation_result(&message_id, &propagation_source, ignore);
                } else {
                    self.emit(Inbound::Gossip {
                        topic: message.topic.into_string(),
                        from: propagation_source.to_string(),
                        id: message_id.0,
                        data: message.data,
                    })
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, addresses, .. }))
                if !self.swarm.is_connected(&peer) =>
            {
                self.dial(peer, addresses.into_vec());
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    self.dial(peer, vec![addr]);
                }
            }
            SwarmEvent::IncomingConnectionError {
                peer_id: Some(peer),
                error: libp2p::swarm::ListenError::Denied { cause },
                ..
            } if cause.downcast_ref::<libp2p::connection_limits::Exceeded>().is_some() => {
                let what = format!("opened more than {} connections at once", self.connections_per_peer);
                self.warn_once(format!("limit {peer}"), format!("refused a connection from {peer}: it {what}"));
                self.emit(Inbound::Limited { peer: peer.to_string(), what });
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                let ip = send_back_addr.iter().next().map(|p| p.to_string()).unwrap_or_default();
                let why = explain(&error.to_string());
                // Limited per address *and* kind of failure: an unrelated
                // error must not hide a key mismatch from the same host.
                let kind = if why.contains("--swarm-key") { "key" } else { "other" };
                self.warn_once(format!("{ip} {kind}"), format!("refused a connection from {send_back_addr}: {why}"));
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, connection_id, .. } => {
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Err(RequestError::Unreachable(explain(&error.to_string()))));
                }
                let who = peer_id.map(|p| p.to_string()).unwrap_or_else(|| "a bootstrap peer".into());
                let why = explain(&error.to_string());
                let kind = if why.contains("--swarm-key") { "key" } else { "other" };
                let msg = format!("cannot connect to {who}: {why}");
                if self.swarm.connected_peers().next().is_none() {
                    self.warn_once(format!("{who} {kind}"), msg);
                } else {
                    tracing::debug!("{msg}");
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => tracing::debug!("listening on {address}"),
            _ => {}
        }
    }
}
