//! The libp2p side: the behaviour, the transport, and the one event loop
//! that owns the `Swarm` (rust-libp2p's file-sharing shape).
//!
//! Others talk to the loop through a cloneable [`NetClient`] (commands over
//! a channel); the loop reports what it hears to the membership actor as
//! [`NetEvent`] messages.
//!
//! Transport: TCP → private-network handshake (when a swarm key is set) →
//! Noise → Yamux. Behaviours: identify, ping (liveness), Kademlia
//! (discovery from bootstrap peers), mDNS (optional, LAN), and the
//! `/backmesh/hello/1` exchange (name, site, free space, known peers).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::Message;
use either::Either;
use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::ResponseChannel;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, connection_limits, gossipsub, identify, identity, kad, mdns, noise, ping, tcp, yamux, Multiaddr,
    PeerId, StreamProtocol, Swarm, Transport,
};
use tokio::sync::{mpsc, oneshot};

use super::membership::NodeInfo;
use super::wire::{
    CborCodec, CtlRequest, CtlResponse, Hello, KnownPeer, StateBatch, StatePull, XferRequest, XferResponse, CTL, HELLO,
    LOG_TOPIC, MAX_CTL, MAX_CTL_REQUEST, MAX_HELLO, MAX_LOG, MAX_XFER, STATE, XFER,
};

/// Commands to the network loop. Sender: any holder of a [`NetClient`].
// Each command is moved once through a bounded channel: its size costs
// nothing worth a box per message.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Replace what this node says about itself in hellos.
    SetInfo(NodeInfo),
    /// Reply with the addresses the swarm listens on.
    ListenAddrs(oneshot::Sender<Vec<String>>),
    /// Close every connection and stop the loop.
    Shutdown(oneshot::Sender<()>),
    /// Push a message to every peer (gossipsub: a new log entry, encoded).
    Publish(Vec<u8>),
    /// What the node made of gossiped message `id` that `from` relayed:
    /// only an accepted one is relayed on.
    Validated { id: Vec<u8>, from: String, verdict: Verdict },
    /// Ask `from` (or a random connected peer) for the state records it has otherwise.
    PullState { from: Option<String>, pull: StatePull },
    /// Answer a peer's pull.
    AnswerPull(ResponseChannel<StateBatch>, StateBatch),
    /// Answer a peer's control request.
    AnswerCtl(ResponseChannel<CtlResponse>, CtlResponse),
    /// Dial an address; reply with the peer id that answered.
    Dial { addr: Multiaddr, reply: oneshot::Sender<Result<String, RequestError>> },
    /// Send a control request to `peer`; the reply comes back on `reply`.
    Ctl { peer: PeerId, request: CtlRequest, reply: oneshot::Sender<Result<CtlResponse, RequestError>> },
    /// Send a transfer request to `peer`; the reply comes back on `reply`.
    Xfer { peer: PeerId, request: Box<XferRequest>, reply: oneshot::Sender<Result<XferResponse, RequestError>> },
    /// Answer a peer's transfer request.
    AnswerXfer(ResponseChannel<XferResponse>, Box<XferResponse>),
}

/// A control request from another node, with the channel for its answer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServeCtl {
    pub request: CtlRequest,
    pub channel: ResponseChannel<CtlResponse>,
}

/// A transfer request from another node (its peer id), with the channel
/// for its answer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServeXfer {
    pub peer: String,
    pub request: XferRequest,
    pub channel: ResponseChannel<XferResponse>,
}

/// What the network hears from peers, for the node to route: the loop
/// itself knows nothing of the actors that answer.
pub enum Inbound {
    /// A peer answered a ping or sent something.
    Seen { peer: String },
    /// A peer said who it is.
    Hello { peer: String, info: NodeInfo },
    /// A gossiped message (a log entry, encoded) as `from` relayed it. It
    /// carries no publisher: the entry is signed by its origin, and a node
    /// relays it on only once it says so ([`NetClient::report_gossip`]).
    Gossip { from: String, id: Vec<u8>, data: Vec<u8> },
    /// A peer's state pull; its answer goes back on `channel`.
    StatePull { pull: StatePull, channel: ResponseChannel<StateBatch> },
    /// The answer to this node's state pull.
    StateAnswer { from: String, batch: StateBatch },
    /// A control request; its answer goes back on `channel`.
    Ctl(ServeCtl),
    /// A transfer request; its answer goes back on `channel`.
    Xfer(ServeXfer),
    /// A peer went past one of this node's bounds (connections, requests
    /// in flight) and was refused the excess.
    Limited { peer: String, what: String },
    /// A peer speaks another mesh protocol: none of what it sends is taken
    /// until one of the two is upgraded (`None` once it speaks this one).
    Incompatible { peer: String, what: Option<String> },
}

/// What a node made of a gossiped message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Good: taken in, and relayed on to the node's other peers.
    Accept,
    /// Forged or out of its writer's authority: dropped, not relayed.
    Reject,
    /// Not for this node (an older version's, unreadable): dropped, not relayed.
    Ignore,
}

/// Inbound events the node has not taken yet, before the loop says so.
const INBOUND_QUEUE: usize = 1024;

/// Connections one peer may hold to a node at once (the default of
/// [`NetConfig::connections_per_peer`]). Two nodes that dial each other
/// at the same moment hold two; more is a peer that opens connections to
/// spend this node's memory.
pub const CONNECTIONS_PER_PEER: u32 = 4;

/// Requests one peer may have in flight at this node at once (state
/// pulls, control and transfer requests that are not answered yet). An
/// honest node pushes a few archives at a time, each two batches deep;
/// past this bound a request is refused at once, not queued.
pub const INFLIGHT_PER_PEER: usize = 64;

/// Requests this node has in flight to one peer at once (state pulls,
/// control and transfer requests): the rest wait in order, so that however
/// many restores, backfills and pushes run here, no honest node goes past
/// the [`INFLIGHT_PER_PEER`] the other side takes.
pub const OUTBOUND_PER_PEER: usize = 32;

/// Requests that may wait for [`OUTBOUND_PER_PEER`] to one peer; past it a
/// request fails at once.
const OUTBOUND_WAITING: usize = 4096;

/// Streams one connection carries at once per request protocol (in and
/// out): what a peer can make this node read at the same time.
const STREAMS_PER_CONNECTION: usize = 48;

/// A request to a peer, sent now or when one of the requests in flight to
/// that peer is answered.
#[allow(clippy::large_enum_variant)] // Queued per peer only while its lane is full.
enum Outgoing {
    Pull(StatePull),
    Ctl(CtlRequest, oneshot::Sender<Result<CtlResponse, RequestError>>),
    Xfer(Box<XferRequest>, oneshot::Sender<Result<XferResponse, RequestError>>),
}

/// Peers of another protocol remembered at once.
const MAX_INCOMPATIBLE: usize = 1024;

/// The request protocols whose requests count against a peer's bound:
/// request ids are numbered per protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lane {
    State,
    Ctl,
    Xfer,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot set up the network: {reason}")]
    Setup { reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("the network loop has stopped")]
    Stopped,
}

/// Why a request to a peer (or a dial) got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("`{0}` is not a peer id")]
    BadPeer(String),
    #[error("the node is shutting down")]
    Stopped,
    /// So many requests to that peer wait already that this one was not queued.
    #[error("{waiting} requests to {peer} are waiting already")]
    Backlog { peer: String, waiting: usize },
    /// Sent, and no answer came back (the peer went away, timed out, or refused the stream).
    #[error("the node did not answer: {0}")]
    NoAnswer(String),
    /// No connection could be made (the words say what to check).
    #[error("{0}")]
    Unreachable(String),
}

impl crate::error::Transient for RequestError {
    fn retry(&self) -> crate::error::Retry {
        match self {
            RequestError::BadPeer(_) => crate::error::Retry::Never,
            _ => crate::error::Retry::Later,
        }
    }
}

/// Why a peer's request is refused before it is served (the words go back
/// to the peer, which may retry later).
#[derive(Debug)]
struct NotAdmitted(String);

impl std::fmt::Display for NotAdmitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A handle on the network loop; cheap to clone.
#[derive(Clone)]
pub struct NetClient {
    tx: mpsc::Sender<Command>,
}

impl NetClient {
    pub async fn set_info(&self, info: NodeInfo) -> Result<(), NetError> {
        self.tx.send(Command::SetInfo(info)).await.map_err(|_| NetError::Stopped)
    }

    pub async fn listen_addrs(&self) -> Result<Vec<String>, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::ListenAddrs(tx)).await.map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Gossips `data` to every peer.
    pub async fn publish(&self, data: Vec<u8>) -> Result<(), NetError> {
        self.tx.send(Command::Publish(data)).await.map_err(|_| NetError::Stopped)
    }

    /// A client of a network that has stopped: every request fails with
    /// [`NetError::Stopped`] (a node's parts before, or without, a network).
    pub fn stopped() -> Self {
        let (tx, _) = mpsc::channel(1);
        NetClient { tx }
    }

    /// Says what the node made of gossiped message `id` that `from` relayed
    /// (a full queue drops the verdict: the message is then not relayed,
    /// and anti-entropy brings it to the peers that miss it).
    pub fn report_gossip(&self, id: Vec<u8>, from: String, verdict: Verdict) {
        let _ = self.tx.try_send(Command::Validated { id, from, verdict });
    }

    /// Whether the network has stopped (or never ran: [`NetClient::stopped`]).
    pub fn is_stopped(&self) -> bool {
        self.tx.is_closed()
    }

    pub async fn pull_state(&self, from: Option<String>, pull: StatePull) -> Result<(), NetError> {
        self.tx.send(Command::PullState { from, pull }).await.map_err(|_| NetError::Stopped)
    }

    pub async fn answer_pull(&self, channel: ResponseChannel<StateBatch>, batch: StateBatch) -> Result<(), NetError> {
        self.tx.send(Command::AnswerPull(channel, batch)).await.map_err(|_| NetError::Stopped)
    }

    pub async fn answer_ctl(
        &self,
        channel: ResponseChannel<CtlResponse>,
        response: CtlResponse,
    ) -> Result<(), NetError> {
        self.tx.send(Command::AnswerCtl(channel, response)).await.map_err(|_| NetError::Stopped)
    }

    /// Dials `addr` and answers the peer id of the node there, or why not.
    pub async fn dial(&self, addr: SocketAddr) -> Result<String, RequestError> {
        let (reply, rx) = oneshot::channel();
        let addr = multiaddr_of(addr);
        self.tx.send(Command::Dial { addr, reply }).await.map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)?
    }

    /// Sends a control request to the node `peer` and waits for its answer.
    pub async fn ctl(&self, peer: &str, request: CtlRequest) -> Result<CtlResponse, RequestError> {
        let peer: PeerId = peer.parse().map_err(|_| RequestError::BadPeer(peer.to_string()))?;
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Ctl { peer, request, reply }).await.map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)?
    }

    /// Sends a transfer request to the node `peer` and waits for its answer.
    pub async fn xfer(&self, peer: &str, request: XferRequest) -> Result<XferResponse, RequestError> {
        let peer: PeerId = peer.parse().map_err(|_| RequestError::BadPeer(peer.to_string()))?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Xfer { peer, request: Box::new(request), reply })
            .await
            .map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)?
    }

    /// [`NetClient::xfer`] for a blocking thread (never the runtime's own).
    pub fn xfer_blocking(&self, peer: &str, request: XferRequest) -> Result<XferResponse, RequestError> {
        let peer: PeerId = peer.parse().map_err(|_| RequestError::BadPeer(peer.to_string()))?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Command::Xfer { peer, request: Box::new(request), reply })
            .map_err(|_| RequestError::Stopped)?;
        rx.blocking_recv().map_err(|_| RequestError::Stopped)?
    }

    pub async fn answer_xfer(&self, channel: ResponseChannel<XferResponse>, response: XferResponse) {
        let _ = self.tx.send(Command::AnswerXfer(channel, Box::new(response))).await;
    }

    /// Closes connections (peers see this node leave) and ends the loop.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    limits: connection_limits::Behaviour,
    /// Peers cut off by the test-only partition gate ([`NetConfig::partition`]).
    gate: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    hello: request_response::Behaviour<CborCodec<Hello, Hello>>,
    log: request_response::Behaviour<CborCodec<StatePull, StateBatch>>,
    ctl: request_response::Behaviour<CborCodec<CtlRequest, CtlResponse>>,
    xfer: request_response::Behaviour<CborCodec<XferRequest, XferResponse>>,
    gossip: gossipsub::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// How to build and run the network.
pub struct NetConfig {
    pub keypair: identity::Keypair,
    pub listen: SocketAddr,
    pub bootstrap: Vec<SocketAddr>,
    pub swarm_key: Option<PreSharedKey>,
    pub mdns: bool,
    /// How often peers are pinged (liveness).
    pub ping_every: Duration,
    /// How often hellos are repeated and lost peers redialled.
    pub hello_every: Duration,
    pub info: NodeInfo,
    /// Connections one peer may hold to this node, and this node to one
    /// peer ([`CONNECTIONS_PER_PEER`]; only the rogue-node suite's own
    /// rogue goes past it).
    pub connections_per_peer: u32,
    /// Requests this node keeps in flight to one peer ([`OUTBOUND_PER_PEER`];
    /// only the rogue-node suite's rogue goes past it).
    pub outbound_per_peer: usize,
    /// The mesh protocol this node speaks ([`MESH_PROTOCOL`]; only the
    /// rogue-node suite's rogue claims another, to be refused).
    pub protocol: u32,
    /// A test-only partition gate: a file of peer ids (one per line) this
    /// node neither connects to nor hears, read again every half second;
    /// no file, no one cut off. The fault-schedule runner cuts the mesh in
    /// two with it (`BACKMESH_TEST_PARTITION`; docs/reliability.md).
    pub partition: Option<std::path::PathBuf>,
}

pub fn multiaddr_of(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => Protocol::Ip4(v4),
        std::net::IpAddr::V6(v6) => Protocol::Ip6(v6),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(addr.port()))
}

fn setup_err(e: impl std::fmt::Display) -> NetError {
    NetError::Setup { reason: e.to_string() }
}

/// Builds the swarm and starts listening. Must run inside a tokio runtime.
/// Returns the client to send with, the events heard from peers, and the
/// loop, which the caller spawns ([`EventLoop::run`]).
pub fn new(cfg: NetConfig) -> Result<(NetClient, mpsc::Receiver<Inbound>, EventLoop), NetError> {
    let psk = cfg.swarm_key;
    let ping_every = cfg.ping_every;
    let mdns_on = cfg.mdns;
    let connections_per_peer = cfg.connections_per_peer;
    let protocol = cfg.protocol;
    let outbound_per_peer = cfg.outbound_per_peer;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair)
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
            let base = match psk {
                Some(psk) => Either::Left(tcp.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))),
                None => Either::Right(tcp),
            };
            Ok(base
                .upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default())
                .timeout(Duration::from_secs(20))
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))))
        })
        .map_err(setup_err)?
        .with_behaviour(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let peer = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(
                peer,
                kad::store::MemoryStore::new(peer),
                kad::Config::new(StreamProtocol::new("/backmesh/kad/1")),
            );
            kad.set_mode(Some(kad::Mode::Server));
            let mdns = if mdns_on { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?) } else { None };
            // Messages are not signed by gossipsub: each is a log entry that
            // its origin signed, checked by the log (a second signature per
            // message cost a fifth of an idle node's CPU). A message is
            // known by its content's hash, and relayed on only once the
            // log accepted it, so a forgery stops at the first honest node.
            let gossip_config = gossipsub::ConfigBuilder::default()
                .max_transmit_size(MAX_LOG)
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                .validate_messages()
                .message_id_fn(|m: &gossipsub::Message| {
                    use sha2::Digest as _;
                    gossipsub::MessageId::from(sha2::Sha256::digest(&m.data)[..20].to_vec())
                })
                .heartbeat_interval(Duration::from_secs(1))
                .build()?;
            let gossip = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)?;
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_established_per_peer(Some(connections_per_peer));
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                gate: allow_block_list::Behaviour::default(),
                identify: identify::Behaviour::new(
                    identify::Config::new("/backmesh/1".into(), key.public())
                        .with_agent_version(format!("backmesh/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(ping_every).with_timeout(ping_every * 2 + Duration::from_secs(1)),
                ),
                kad,
                hello: request_response::Behaviour::with_codec(
                    CborCodec::new(MAX_HELLO),
                    [(HELLO, ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
                ),
                log: request_response::Behaviour::with_codec(
                    CborCodec::with_limits(MAX_CTL_REQUEST, MAX_LOG),
                    [(STATE, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(30))
                        .with_max_concurrent_streams(STREAMS_PER_CONNECTION),
                ),
                ctl: request_response::Behaviour::with_codec(
                    CborCodec::with_limits(MAX_CTL_REQUEST, MAX_CTL),
                    [(CTL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(10))
                        .with_max_concurrent_streams(STREAMS_PER_CONNECTION),
                ),
                xfer: request_response::Behaviour::with_codec(
                    CborCodec::new(MAX_XFER),
                    [(XFER, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(120))
                        .with_max_concurrent_streams(STREAMS_PER_CONNECTION),
                ),
                gossip,
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(setup_err)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    // libp2p sets SO_REUSEPORT, which would let two nodes share a port
    // silently: a plain bind first tells the operator.
    if let Err(e) = std::net::TcpListener::bind(cfg.listen) {
        let reason = match e.kind() {
            std::io::ErrorKind::AddrInUse => "the port is already in use (another backmesh-node?)".to_string(),
            _ => e.to_string(),
        };
        return Err(NetError::Listen { addr: cfg.listen, reason });
    }
    swarm.behaviour_mut().gossip.subscribe(&gossipsub::IdentTopic::new(LOG_TOPIC)).map_err(setup_err)?;
    swarm
        .listen_on(multiaddr_of(cfg.listen))
        .map_err(|e| NetError::Listen { addr: cfg.listen, reason: listen_reason(e) })?;
    for addr in &cfg.bootstrap {
        if let Err(e) = swarm.dial(multiaddr_of(*addr)) {
            tracing::warn!("cannot dial bootstrap peer {addr}: {e}");
        }
    }
    let (tx, rx) = mpsc::channel(64);
    let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let bootstrap: Vec<Multiaddr> = cfg.bootstrap.iter().map(|a| multiaddr_of(*a)).collect();
    let event_loop = EventLoop {
        swarm,
        rx,
        inbound,
        hello_every: cfg.hello_every,
        info: cfg.info,
        connections_per_peer,
        outbound_per_peer,
        protocol,
        partition: cfg.partition,
        cut_off: HashSet::new(),
        known: HashMap::new(),
        bootstrap,
        redial: Backoff::new(),
        bootstrap_answered: HashSet::new(),
        warned: HashMap::new(),
        pending_ctl: HashMap::new(),
        pending_xfer: HashMap::new(),
        pending_dials: HashMap::new(),
        inflight: HashMap::new(),
        inflight_ids: HashMap::new(),
        incompatible: HashSet::new(),
        outbound: HashMap::new(),
        outbound_ids: HashMap::new(),
        waiting: HashMap::new(),
    };
    Ok((NetClient { tx }, inbound_rx, event_loop))
}

fn listen_reason(e: libp2p::TransportError<std::io::Error>) -> String {
    match e {
        libp2p::TransportError::Other(io) if io.kind() == std::io::ErrorKind::AddrInUse => {
            "the port is already in use (another backmesh-node?)".into()
        }
        libp2p::TransportError::Other(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// The loop that owns the swarm: commands in, [`Inbound`] events out.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    rx: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<Inbound>,
    hello_every: Duration,
    info: NodeInfo,
    connections_per_peer: u32,
    outbound_per_peer: usize,
    protocol: u32,
    /// The test-only partition gate's file, and the peers it cuts off now.
    partition: Option<std::path::PathBuf>,
    cut_off: HashSet<PeerId>,
    /// Listen addresses of peers, from identify: for redials and hellos.
    known: HashMap<PeerId, Vec<Multiaddr>>,
    bootstrap: Vec<Multiaddr>,
    /// Bootstrap addresses that have answered once: from then on their
    /// peer is redialled like any known peer.
    bootstrap_answered: HashSet<Multiaddr>,
    /// Redials of bootstrap addresses that never answered (or of all of
    /// them while nothing is connected).
    redial: Backoff,
    /// When each remote was last warned about, so a misconfigured peer
    /// that keeps knocking does not flood the log.
    warned: HashMap<String, Instant>,
    /// Control requests in flight → where their answer goes.
    pending_ctl: HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<CtlResponse, RequestError>>>,
    pending_xfer: HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<XferResponse, RequestError>>>,
    /// Dials asked for by the API → where the answering peer id goes.
    pending_dials: HashMap<libp2p::swarm::ConnectionId, oneshot::Sender<Result<String, RequestError>>>,
    /// Requests each peer has in flight here, up to [`INFLIGHT_PER_PEER`].
    inflight: HashMap<PeerId, usize>,
    /// Which peer each request in flight came from.
    inflight_ids: HashMap<(Lane, request_response::InboundRequestId), PeerId>,
    /// Peers whose hello named another mesh protocol: what they send is
    /// refused until they say hello in this one.
    incompatible: HashSet<PeerId>,
    /// Requests in flight to each peer, up to [`OUTBOUND_PER_PEER`].
    outbound: HashMap<PeerId, usize>,
    /// Which peer each request in flight went to.
    outbound_ids: HashMap<(Lane, request_response::OutboundRequestId), PeerId>,
    /// Requests waiting for room in flight, per peer, in order.
    waiting: HashMap<PeerId, std::collections::VecDeque<Outgoing>>,
}

/// Exponential backoff: 1 s doubling to 60 s, reset on success.
struct Backoff {
    next: Instant,
    delay: Duration,
}

impl Backoff {
    fn new() -> Self {
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
        // Before any connection is up: a node restarted behind the gate
        // never talks across it.
        self.read_gate();
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    None => break,
                    Some(Command::SetInfo(info)) => self.info = info,
                    Some(Command::ListenAddrs(reply)) => {
                        let _ = reply.send(self.swarm.listeners().map(|a| a.to_string()).collect());
                    }
                    Some(Command::Publish(data)) => {
                        let topic = gossipsub::IdentTopic::new(LOG_TOPIC);
                        if let Err(e) = self.swarm.behaviour_mut().gossip.publish(topic, data) {
                            // No peer yet: anti-entropy pulls deliver it later.
                            tracing::debug!("gossip not sent now: {e}");
                        }
                    }
                    Some(Command::Validated { id, from, verdict }) => {
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
                    Some(Command::PullState { from, pull }) => self.pull_state(from, pull),
                    Some(Command::AnswerPull(channel, batch)) => {
                        let _ = self.swarm.behaviour_mut().log.send_response(channel, batch);
                    }
                    Some(Command::AnswerCtl(channel, response)) => {
                        let _ = self.swarm.behaviour_mut().ctl.send_response(channel, response);
                    }
                    Some(Command::Dial { addr, reply }) => {
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
                    Some(Command::Ctl { peer, request, reply }) => self.send_out(peer, Outgoing::Ctl(request, reply)),
                    Some(Command::Xfer { peer, request, reply }) => self.send_out(peer, Outgoing::Xfer(request, reply)),
                    Some(Command::AnswerXfer(channel, response)) => {
                        let _ = self.swarm.behaviour_mut().xfer.send_response(channel, *response);
                    }
                    Some(Command::Shutdown(done)) => {
                        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                        for p in peers {
                            let _ = self.swarm.disconnect_peer_id(p);
                        }
                        let _ = done.send(());
                        break;
                    }
                },
                _ = tick.tick() => self.on_tick(),
                _ = gate.tick(), if self.partition.is_some() => self.read_gate(),
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
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
        Hello { info: self.info.clone(), peers, protocol: self.protocol }
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
    fn admit(&mut self, lane: Lane, peer: PeerId, id: request_response::InboundRequestId) -> Result<(), NotAdmitted> {
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
        self.inflight_ids.insert((lane, id), peer);
        Ok(())
    }

    /// A request counted by [`EventLoop::admit`] was answered or failed.
    fn settled(&mut self, lane: Lane, id: request_response::InboundRequestId) {
        if let Some(peer) = self.inflight_ids.remove(&(lane, id)) {
            if let Some(n) = self.inflight.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    self.inflight.remove(&peer);
                }
            }
        }
    }

    fn on_tick(&mut self) {
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

    fn pull_state(&mut self, from: Option<String>, pull: StatePull) {
        // Never from a peer of another protocol.
        let connected: Vec<PeerId> =
            self.swarm.connected_peers().filter(|p| !self.incompatible.contains(*p)).copied().collect();
        let peer = from.and_then(|p| p.parse::<PeerId>().ok()).filter(|p| connected.contains(p)).or_else(|| {
            // A different peer each time, without a random-number dependency.
            let n = connected.len();
            (n > 0).then(|| connected[(crate::net::actor::now_ms() as usize / 7) % n])
        });
        if let Some(peer) = peer {
            self.send_out(peer, Outgoing::Pull(pull));
        }
    }

    /// Sends `out` to `peer` now, or once fewer than [`OUTBOUND_PER_PEER`]
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
        let why = RequestError::Backlog { peer: peer.to_string(), waiting: OUTBOUND_WAITING };
        match out {
            Outgoing::Pull(_) => tracing::debug!("state pull not sent: {why}"),
            Outgoing::Ctl(_, reply) => drop(reply.send(Err(why))),
            Outgoing::Xfer(_, reply) => drop(reply.send(Err(why))),
        }
    }

    fn dispatch(&mut self, peer: PeerId, out: Outgoing) {
        let b = self.swarm.behaviour_mut();
        let (lane, id) = match out {
            Outgoing::Pull(pull) => (Lane::State, b.log.send_request(&peer, pull)),
            Outgoing::Ctl(request, reply) => {
                let id = b.ctl.send_request(&peer, request);
                self.pending_ctl.insert(id, reply);
                (Lane::Ctl, id)
            }
            Outgoing::Xfer(request, reply) => {
                let id = b.xfer.send_request(&peer, *request);
                self.pending_xfer.insert(id, reply);
                (Lane::Xfer, id)
            }
        };
        *self.outbound.entry(peer).or_default() += 1;
        self.outbound_ids.insert((lane, id), peer);
    }

    /// A request to a peer was answered or failed: the next waiting one goes.
    fn out_done(&mut self, lane: Lane, id: request_response::OutboundRequestId) {
        let Some(peer) = self.outbound_ids.remove(&(lane, id)) else { return };
        if let Some(n) = self.outbound.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.outbound.remove(&peer);
            }
        }
        let next = self.waiting.get_mut(&peer).and_then(|q| q.pop_front());
        if self.waiting.get(&peer).is_some_and(|q| q.is_empty()) {
            self.waiting.remove(&peer);
        }
        if let Some(next) = next {
            self.dispatch(peer, next);
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
                    let bare: Multiaddr = address.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect();
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
                    if self.check_protocol(&peer, &request) {
                        self.emit(Inbound::Hello { peer: peer.to_string(), info: request.info });
                        self.learn(request.peers);
                    }
                }
                request_response::Message::Response { response, .. } => {
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
            SwarmEvent::Behaviour(BehaviourEvent::Log(request_response::Event::Message { peer, message, .. })) => {
                if !self.incompatible.contains(&peer) {
                    self.seen(&peer);
                }
                match message {
                    request_response::Message::Request { request, channel, request_id } => {
                        match self.admit(Lane::State, peer, request_id) {
                            Ok(()) => self.emit(Inbound::StatePull { pull: request, channel }),
                            // Unanswered: the peer's pull fails and it asks again later.
                            Err(why) => tracing::debug!("state pull not served: {why}"),
                        }
                    }
                    request_response::Message::Response { response, request_id } => {
                        self.out_done(Lane::State, request_id);
                        if !self.incompatible.contains(&peer) {
                            self.emit(Inbound::StateAnswer { from: peer.to_string(), batch: response });
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Log(request_response::Event::InboundFailure {
                peer,
                error,
                request_id,
                ..
            })) => {
                self.settled(Lane::State, request_id);
                tracing::debug!("state pull from {peer} failed: {error}");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Log(request_response::Event::ResponseSent {
                request_id, ..
            })) => self.settled(Lane::State, request_id),
            SwarmEvent::Behaviour(BehaviourEvent::Log(request_response::Event::OutboundFailure {
                peer,
                error,
                request_id,
                ..
            })) => {
                self.out_done(Lane::State, request_id);
                tracing::debug!("state pull to {peer} failed: {error}");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ctl(request_response::Event::Message { peer, message, .. })) => {
                match message {
                    request_response::Message::Request { request, channel, request_id } => {
                        match self.admit(Lane::Ctl, peer, request_id) {
                            Ok(()) => self.emit(Inbound::Ctl(ServeCtl { request, channel })),
                            Err(reason) => {
                                let _ = self
                                    .swarm
                                    .behaviour_mut()
                                    .ctl
                                    .send_response(channel, CtlResponse::Failed { reason: reason.0 });
                            }
                        }
                    }
                    request_response::Message::Response { request_id, response } => {
                        self.out_done(Lane::Ctl, request_id);
                        if let Some(reply) = self.pending_ctl.remove(&request_id) {
                            let _ = reply.send(Ok(response));
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ctl(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            })) => {
                self.out_done(Lane::Ctl, request_id);
                if let Some(reply) = self.pending_ctl.remove(&request_id) {
                    let _ = reply.send(Err(RequestError::NoAnswer(error.to_string())));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ctl(request_response::Event::InboundFailure {
                request_id, ..
            })) => self.settled(Lane::Ctl, request_id),
            SwarmEvent::Behaviour(BehaviourEvent::Ctl(request_response::Event::ResponseSent {
                request_id, ..
            })) => self.settled(Lane::Ctl, request_id),
            SwarmEvent::Behaviour(BehaviourEvent::Xfer(request_response::Event::Message { peer, message, .. })) => {
                if !self.incompatible.contains(&peer) {
                    self.seen(&peer);
                }
                match message {
                    request_response::Message::Request { request, channel, request_id } => {
                        match self.admit(Lane::Xfer, peer, request_id) {
                            Ok(()) => self.emit(Inbound::Xfer(ServeXfer { peer: peer.to_string(), request, channel })),
                            Err(reason) => {
                                let refused = XferResponse::Refused { reason: reason.0 };
                                let _ = self.swarm.behaviour_mut().xfer.send_response(channel, refused);
                            }
                        }
                    }
                    request_response::Message::Response { request_id, response } => {
                        self.out_done(Lane::Xfer, request_id);
                        if let Some(reply) = self.pending_xfer.remove(&request_id) {
                            let _ = reply.send(Ok(response));
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Xfer(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            })) => {
                self.out_done(Lane::Xfer, request_id);
                if let Some(reply) = self.pending_xfer.remove(&request_id) {
                    let _ = reply.send(Err(RequestError::NoAnswer(error.to_string())));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Xfer(request_response::Event::InboundFailure {
                peer,
                error,
                request_id,
                ..
            })) => {
                self.settled(Lane::Xfer, request_id);
                tracing::debug!("transfer request from {peer} failed: {error}");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Xfer(request_response::Event::ResponseSent {
                request_id, ..
            })) => self.settled(Lane::Xfer, request_id),
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
            } if cause.downcast_ref::<connection_limits::Exceeded>().is_some() => {
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
