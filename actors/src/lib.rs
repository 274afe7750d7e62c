//! backmesh's core.
//!
//! # Layout
//! - [`archive`]: directory → deterministic multi-member `.tgz` (+ manifest)
//!   and back; pure, no runtime.
//! - [`store`]: a node's local store: content-addressed members, manifest
//!   files, a rebuildable catalog index (sled), retention.
//! - [`hash`]: [`hash::Digest`], the SHA-256 newtype used everywhere.
//!
//! Later areas (log, placement, jobs, replication, net) follow the same
//! shape: a pure state machine per area, an actor that does its IO.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod archive;
pub mod hash;
pub mod jobs;
pub mod net;
pub mod store;
