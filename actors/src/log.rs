//! The gossiped execution log: every registration, run, replication and
//! restore in the mesh, as immutable entries that reach every node.
//!
//! What a node keeps of them is split in two:
//! - [`mesh`]: [`mesh::MeshState`], what every node must know (jobs, pause
//!   flags, one summary per series with its archives and holders), folded
//!   from the entries as they arrive; a set of CRDTs whose size depends on
//!   jobs, series and nodes, never on time;
//! - [`history`]: the entries themselves, kept durably by the nodes that
//!   keep their series and in a bounded recent window by everyone.
//!
//! - [`hlc`]: hybrid logical clock, a time order all nodes agree on.
//! - [`entry`]: [`entry::Entry`] and the [`entry::Event`] kinds.
//! - [`seal`]: the signatures of entries and state registers by their writer.
//! - [`state_disk`]: the state's records on disk, where their signatures live.
//! - [`actor`]: the actor that owns state, history and clock.

pub mod actor;
pub mod entry;
pub mod history;
pub mod hlc;
pub mod mesh;
pub mod runs;
pub mod seal;
pub mod state_disk;
