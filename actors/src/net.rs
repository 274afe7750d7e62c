//! The transport: carries bytes for named protocols between nodes, and
//! keeps track of who is up. It knows no application message: each area
//! declares its protocols ([`rpc::Protocol`]) and gossip topics, and
//! registers a handler for them with the [`router::Router`] at start-up.
//!
//! - [`membership`]: who is up, with what name, site and free space (pure).
//! - [`hello`]: `/backmesh/hello/1`, the transport's own exchange.
//! - [`rpc`]: request protocols as bytes: frames, bounds, [`rpc::Responder`].
//! - [`client`]: [`client::NetClient`], how the node talks to the loop, and
//!   [`client::Inbound`], what the loop hears.
//! - [`behaviour`]: the libp2p behaviour and the bounds it keeps.
//! - [`swarm`]: the transport, and [`swarm::new`] to build them.
//! - [`event_loop`]: the loop that owns the `Swarm`.
//! - [`router`]: protocol → handler, topic → handler.
//! - [`swarm_key`]: the private-network key file.
//! - [`actor`]: [`actor::MembershipActor`], fed by the router, asked by the API.

pub mod actor;
pub mod behaviour;
pub mod client;
pub mod event_loop;
pub mod hello;
pub mod membership;
pub mod revocations;
pub mod router;
pub mod rpc;
pub mod swarm;
pub mod swarm_key;
