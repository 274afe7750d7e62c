//! The mesh: membership (pure), the wire codec, the swarm key, the libp2p
//! event loop and the membership actor.
//!
//! - [`membership`]: who is up, with what name, site and free space (pure).
//! - [`wire`]: CBOR messages with size limits; `/backmesh/hello/1`.
//! - [`swarm_key`]: the private-network key file.
//! - [`swarm`]: transport, behaviour, the loop that owns the `Swarm`, and
//!   [`swarm::NetClient`] to talk to it.
//! - [`actor`]: [`actor::MembershipActor`], fed by the loop, asked by the API.

pub mod actor;
pub mod membership;
pub mod swarm;
pub mod swarm_key;
pub mod wire;
