//! The gossiped execution log: every registration, run, replication and
//! restore in the mesh, as immutable entries that every node holds.
//!
//! - [`hlc`]: hybrid logical clock, a time order all nodes agree on.
//! - [`entry`]: [`entry::Entry`] and the [`entry::Event`] kinds.
//! - [`state`]: [`state::Log`], the mergeable set with version vectors and
//!   batch pulls, and the views folded from it ([`state::jobs`]).
//! - [`store`]: persistence in the node's embedded store.

pub mod actor;
pub mod entry;
pub mod hlc;
pub mod state;
pub mod store;
