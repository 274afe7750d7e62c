//! backmesh's core.
//!
//! # Layout
//! - [`archive`]: directory → deterministic multi-member `.tgz` (+ manifest)
//!   and back; pure, no runtime.
//! - [`store`]: a node's local store: content-addressed members, manifest
//!   files, a rebuildable catalog index (sled), retention.
//! - [`hash`]: [`hash::Digest`], the SHA-256 newtype used everywhere.
//! - [`jobs`]: one backup run (`run_backup`).
//! - [`log`]: the execution log: hybrid clock, entries, the mergeable log
//!   and the views folded from it, persistence.
//! - [`notify`]: webhooks and commands told of failure, staleness, recovery.
//! - [`seal`]: ed25519 signatures of entries, registers and manifests by their writer.
//! - [`placement`]: who holds a series (weighted rendezvous hashing), for replication, history and offsite.
//! - [`replica`]: holders by rendezvous hashing, archive transfer,
//!   retention and repair on holders, restore and verify from the mesh.
//! - [`workers`]: what each background loop is doing, for `status --workers`.
//! - [`net`]: the mesh: membership, wire codec, swarm key, the libp2p loop
//!   and the membership actor.
//!
//! Each area is a pure state machine first (tested without a runtime) and
//! an actor or task that does its IO.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod archive;
pub mod authority;
pub mod clock;
pub mod codec;
pub mod disk;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod hash;
pub mod jobs;
pub mod log;
pub mod net;
pub mod notify;
pub mod offsite;
pub mod placement;
pub mod protocols;
pub mod replica;
pub mod seal;
pub mod store;
pub mod workers;
