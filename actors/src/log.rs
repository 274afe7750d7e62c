//! The gossiped execution log: every registration, run, replication and
//! restore in the mesh, as immutable entries that reach every node.
//!
//! What a node keeps of them is split in two:
//! - [`mesh`]: [`mesh::MeshState`], what every node must know (jobs, pause
//!   flags, one summary per series with its archives and holders), folded
//!   from the entries as they arrive; a set of CRDTs whose size depends on
//!   jobs, series and nodes, never on time. Its parts: [`crdt`] (registers
//!   and their joins), [`records`] (the records and what an entry writes),
//!   [`signing`] (who seals each register), [`views`] (what is read of it),
//!   [`anti_entropy`] (which records a peer lacks);
//! - [`history`]: the entries themselves, kept durably by the nodes that
//!   keep their series and in a bounded recent window by everyone.
//!
//! - [`recent`]: the runs before a run, as its entry carries them.
//! - [`hlc`]: hybrid logical clock, a time order all nodes agree on.
//! - [`entry`]: [`entry::Entry`] and the [`entry::Event`] kinds.
//! - signatures of entries and registers: [`crate::seal`].
//! - [`state_disk`]: the state's records on disk, where their signatures live.
//! - [`proto`]: the log's protocols: gossip, state pulls, history pages.
//! - [`actor`]: the actor that owns state, history and clock.

pub mod actor;
pub mod anti_entropy;
pub mod crdt;
pub mod entry;
pub mod history;
pub mod history_files;
pub mod hlc;
pub mod job_spec;
pub mod mesh;
pub mod proto;
pub mod recent;
pub mod records;

pub mod signing;
pub mod state_disk;
pub mod views;
