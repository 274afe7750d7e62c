//! The archive engine: a directory in, a standard multi-member `.tgz` out,
//! and back again exactly. Pure library code: no actor runtime needed.
//!
//! # Layout
//! - [`error`]: [`ArchiveError`] and the [`Warning`]s a backup carries.
//! - [`walk`]: sorted depth-first walk with exclude globs.
//! - [`tarfmt`]: the deterministic tar encoder (ustar + PAX).
//! - [`cut`]: where the stream is cut into gzip members.
//! - [`delta`]: a member as a delta against an earlier one, for the wire.
//! - [`create`]: the parallel pipeline, [`create::MemberSink`], the stat snapshot.
//! - [`manifest`]: the versioned CBOR description of an archive.
//! - [`reuse`]: what a changed backup takes unread from the previous one.
//! - [`sealed`]: encrypted archives: members, deltas, the file table sealed.
//! - [`restore`]: safe, exact extraction through a staging directory.

pub mod create;
pub mod cut;
pub use backmesh_crypt::delta;
pub mod error;
pub mod manifest;
pub mod partial;
pub mod pipeline;
pub mod producer;
pub mod restore;
pub mod reuse;
pub mod sealed;
pub mod sink;
pub mod snapshot;
pub use backmesh_table::tarfmt;
pub mod walk;

pub use create::{
    create, create_reusing, scan, CreateOptions, Created, FileSink, MemberSink, Progress, Reuse, StatSnapshot,
};
pub use manifest::{Manifest, MemberRef};
pub use partial::restore_archive;
pub use restore::{restore_tgz, MemberSource, RestoreError, RestoreOptions, RestoreReport};

/// Why an archive could not be made at all. Trouble with single files is
/// never an error: it becomes a [`Warning`].
pub use error::{ArchiveError, Warning, WarningKind};
