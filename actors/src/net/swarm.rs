//! The libp2p side: the behaviour, the transport, and [`new`], which
//! builds the swarm and the loop that owns it ([`super::event_loop`]).
//!
//! Transport: TCP → private-network handshake (when a swarm key is set) →
//! Noise → Yamux. Behaviours: identify, ping (liveness), Kademlia
//! (discovery from bootstrap peers), mDNS (optional, LAN), the
//! `/backmesh/hello/1` exchange (name, site, free space, known peers),
//! the request protocols the areas declare (on [`super::rpc::RPC`] and
//! [`super::rpc::BULK`]),
//! and gossipsub on the topics they declare.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use either::Either;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::upgrade::Version;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    allow_block_list, connection_limits, gossipsub, identify, identity, kad, mdns, noise, ping, tcp, yamux, Multiaddr,
    StreamProtocol, Transport,
};
use tokio::sync::mpsc;

use super::behaviour::{Behaviour, INBOUND_QUEUE, STREAMS_PER_CONNECTION};
pub use super::behaviour::{CONNECTIONS_PER_PEER, INFLIGHT_PER_PEER, OUTBOUND_PER_PEER};
use super::client::{multiaddr_of, Inbound, NetClient, NetError};
use super::event_loop::{Backoff, EventLoop};
use super::hello::{CborCodec, HELLO, MAX_HELLO};
use super::membership::NodeInfo;
use super::rpc::{Lane, Protocol, Protocols, RpcCodec, BULK, RPC};

/// How to build and run the network.
pub struct NetConfig {
    pub keypair: identity::Keypair,
    pub listen: SocketAddr,
    pub bootstrap: Vec<SocketAddr>,
    /// The private-network keys (`None`: no swarm key), read again every
    /// tick ([`super::swarm_key::SwarmKeys`]).
    pub swarm_key: Option<std::sync::Arc<super::swarm_key::SwarmKeys>>,
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
    /// The mesh protocol this node speaks (`crate::protocols::MESH_PROTOCOL`;
    /// only the rogue-node suite's rogue claims another, to be refused).
    pub protocol: u32,
    /// The request protocols this node speaks, as the areas declare them.
    pub protocols: Vec<Protocol>,
    /// The gossip topics this node hears and publishes on.
    pub topics: Vec<&'static str>,
    /// Largest gossiped message, in bytes.
    pub max_gossip: usize,
    /// A test-only partition gate: a file of peer ids (one per line) this
    /// node neither connects to nor hears, read again every half second;
    /// no file, no one cut off. The fault-schedule runner cuts the mesh in
    /// two with it (`BACKMESH_TEST_PARTITION`; docs/reliability.md).
    pub partition: Option<std::path::PathBuf>,
    /// The operator keys this node trusts (for revocations), and the file
    /// the revocations it holds are kept in.
    pub authority: std::sync::Arc<crate::authority::Authority>,
    pub revocations: Option<std::path::PathBuf>,
}

fn setup_err(e: impl std::fmt::Display) -> NetError {
    NetError::Setup { reason: e.to_string() }
}

/// Builds the swarm and starts listening. Must run inside a tokio runtime.
/// Returns the client to send with, the events heard from peers, and the
/// loop, which the caller spawns ([`EventLoop::run`]).
pub fn new(cfg: NetConfig) -> Result<(NetClient, mpsc::Receiver<Inbound>, EventLoop), NetError> {
    let psk = cfg.swarm_key.clone();
    let ping_every = cfg.ping_every;
    let mdns_on = cfg.mdns;
    let connections_per_peer = cfg.connections_per_peer;
    let protocol = cfg.protocol;
    let outbound_per_peer = cfg.outbound_per_peer;
    let protocols = Protocols::new(cfg.protocols.iter().copied());
    let (small, large) = (protocols.on(Lane::Small), protocols.on(Lane::Bulk));
    // Each lane's streams are bounded by its longest timeout; each request
    // is held to its own protocol's by the network loop.
    let rpc_timeout = small.longest_timeout() + Duration::from_secs(5);
    let bulk_timeout = large.longest_timeout() + Duration::from_secs(5);
    let max_gossip = cfg.max_gossip;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair)
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
            let base = match psk {
                Some(keys) => Either::Left(tcp.and_then(move |socket, endpoint| {
                    let dialed = match endpoint {
                        libp2p::core::ConnectedPoint::Dialer { address, .. } => Some(address),
                        libp2p::core::ConnectedPoint::Listener { .. } => None,
                    };
                    keys.handshake(socket, dialed)
                })),
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
                .max_transmit_size(max_gossip)
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
                rpc: request_response::Behaviour::with_codec(
                    RpcCodec::new(small),
                    [(RPC, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(rpc_timeout)
                        .with_max_concurrent_streams(STREAMS_PER_CONNECTION),
                ),
                bulk: request_response::Behaviour::with_codec(
                    RpcCodec::new(large),
                    [(BULK, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(bulk_timeout)
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
    for topic in &cfg.topics {
        swarm.behaviour_mut().gossip.subscribe(&gossipsub::IdentTopic::new(*topic)).map_err(setup_err)?;
    }
    swarm
        .listen_on(multiaddr_of(cfg.listen))
        .map_err(|e| NetError::Listen { addr: cfg.listen, reason: listen_reason(e) })?;
    for addr in &cfg.bootstrap {
        if let Err(e) = swarm.dial(multiaddr_of(*addr)) {
            tracing::warn!("cannot dial bootstrap peer {addr}: {e}");
        }
    }
    let (tx, rx) = mpsc::channel(64);
    let (answers, answers_rx) = mpsc::unbounded_channel();
    let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let bootstrap: Vec<Multiaddr> = cfg.bootstrap.iter().map(|a| multiaddr_of(*a)).collect();
    let event_loop = EventLoop {
        swarm,
        rx,
        answers,
        answers_rx,
        inbound,
        protocols,
        hello_every: cfg.hello_every,
        info: cfg.info,
        connections_per_peer,
        outbound_per_peer,
        protocol,
        partition: cfg.partition,
        swarm_keys: cfg.swarm_key,
        cut_off: HashSet::new(),
        revocations: super::revocations::Revocations::load(cfg.authority, cfg.revocations),
        known: HashMap::new(),
        bootstrap,
        redial: Backoff::new(),
        bootstrap_answered: HashSet::new(),
        warned: HashMap::new(),
        pending: HashMap::new(),
        pending_dials: HashMap::new(),
        inflight: HashMap::new(),
        inflight_ids: HashMap::new(),
        incompatible: HashSet::new(),
        outbound: HashMap::new(),
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
