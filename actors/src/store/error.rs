//! What the store fails with.

use std::io;
use std::path::{Path, PathBuf};

use crate::archive::manifest::ManifestError;
use crate::hash::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the data directory {path} is in use by another backmesh process")]
    Locked { path: PathBuf },
    #[error("index database error: {reason}")]
    Index { reason: String },
    #[error("no archive `{id}` of {path} on node {node}")]
    NoSuchArchive { node: String, path: String, id: String },
    #[error("member {digest} is missing from the store")]
    MissingMember { digest: Digest },
    #[error("member {digest} is damaged (its content hashes to {actual})")]
    DamagedMember { digest: Digest, actual: Digest },
    #[error("archive {id}: reassembled .tgz has sha256 {actual}, manifest says {expected}")]
    TgzMismatch { id: String, expected: Digest, actual: Digest },
    #[error("manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error("archive {id} of {path} on node {node} is refused: {reason}")]
    Unsealed { node: String, path: String, id: String, reason: String },
    /// Sealed by a key this node does not know by that name yet: no one
    /// is to blame (the name is bound once a hello or an entry says who
    /// it is), and the origin offers again.
    #[error("archive {id} of {path} on node {node} is refused for now: it is sealed by {signer}, which this node does not know as node {node} yet")]
    OriginNotKnownYet { node: String, path: String, id: String, signer: String },
    #[error("{path}: {reason}")]
    Identity { path: PathBuf, reason: String },
    /// An encrypted archive asked for in plain form without its key.
    #[error(
        "archive {id} of {path} on node {node} is encrypted: only its node's data key or the operator's recovery \
         key reads it (`backmesh fetch` with the operator key)"
    )]
    Encrypted { node: String, path: String, id: String },
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StoreError::Io { path: path.to_path_buf(), source }
    }
}

impl crate::error::Transient for StoreError {
    fn retry(&self) -> crate::error::Retry {
        match self {
            // A disk that is full or failing may recover; another process
            // may let go of the directory; a peer's key may become known.
            StoreError::Io { .. } | StoreError::Locked { .. } | StoreError::Index { .. } => crate::error::Retry::Later,
            StoreError::OriginNotKnownYet { .. } => crate::error::Retry::Later,
            // What is missing or damaged stays so until it is repaired.
            StoreError::NoSuchArchive { .. }
            | StoreError::MissingMember { .. }
            | StoreError::DamagedMember { .. }
            | StoreError::TgzMismatch { .. }
            | StoreError::Manifest { .. }
            | StoreError::Unsealed { .. }
            | StoreError::Encrypted { .. }
            | StoreError::Identity { .. } => crate::error::Retry::Never,
        }
    }
}
