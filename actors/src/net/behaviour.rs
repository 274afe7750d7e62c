//! The libp2p behaviour every node runs, and the bounds it keeps.

use libp2p::request_response;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{allow_block_list, connection_limits, gossipsub, identify, kad, mdns, ping};

use super::hello::{CborCodec, Hello};
use super::rpc::RpcCodec;

/// Inbound events the node has not taken yet, before the loop says so.
pub(super) const INBOUND_QUEUE: usize = 1024;

/// Connections one peer may hold to a node at once (the default of
/// [`NetConfig::connections_per_peer`]). Two nodes that dial each other
/// at the same moment hold two; more is a peer that opens connections to
/// spend this node's memory.
pub const CONNECTIONS_PER_PEER: u32 = 4;

/// Requests one peer may have in flight at this node at once, of every
/// protocol. An honest node pushes a few archives at a time, each two
/// batches deep; past this bound a request is refused at once, not queued.
pub const INFLIGHT_PER_PEER: usize = 64;

/// Requests this node has in flight to one peer at once: the rest wait in
/// order, so that however many restores, backfills and pushes run here, no
/// honest node goes past the [`INFLIGHT_PER_PEER`] the other side takes.
pub const OUTBOUND_PER_PEER: usize = 32;

/// Requests that may wait for [`OUTBOUND_PER_PEER`] to one peer; past it a
/// request fails at once.
pub(super) const OUTBOUND_WAITING: usize = 4096;

/// Streams one connection carries at once, in and out, of each lane
/// (small and bulk): what a peer can make this node read at the same time.
pub(super) const STREAMS_PER_CONNECTION: usize = 48;

/// Peers of another protocol remembered at once.
pub(super) const MAX_INCOMPATIBLE: usize = 1024;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub(super) limits: connection_limits::Behaviour,
    /// Peers cut off by the test-only partition gate ([`NetConfig::partition`]).
    pub(super) gate: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(super) hello: request_response::Behaviour<CborCodec<Hello, Hello>>,
    /// The small request protocols of the areas ([`super::rpc::RPC`]).
    pub(super) rpc: request_response::Behaviour<RpcCodec>,
    /// The bulk ones ([`super::rpc::BULK`]): archive transfer.
    pub(super) bulk: request_response::Behaviour<RpcCodec>,
    pub(super) gossip: gossipsub::Behaviour,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
}
