//! What the catalog knows of each archive without reading its manifest,
//! and what retention and verify report.

use serde::{Deserialize, Serialize};

use crate::archive::manifest::Manifest;
use crate::archive::StatSnapshot;
use crate::hash::Digest;

/// What the catalog knows of one archive without reading its manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveSummary {
    pub id: String,
    pub node: String,
    pub path: String,
    pub created_ms: i64,
    /// Its place in its series ([`Manifest::order`]).
    #[serde(default)]
    pub order_ms: i64,
    pub tgz_len: u64,
    pub files: u64,
    pub tree_digest: Digest,
    pub tgz_sha256: Digest,
    pub warnings: u64,
    /// When this node stored it, by its own clock (0 in an index written
    /// before this was kept: long ago).
    #[serde(default)]
    pub stored_ms: i64,
    /// Out of retention, kept for the grace period (`--grace`): not
    /// pushed, not in the mesh's catalog, listed by `backups --hidden`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
}

impl ArchiveSummary {
    /// Its place in its series; the creation time in an index written
    /// before orders were kept.
    pub fn order(&self) -> i64 {
        if self.order_ms == 0 {
            self.created_ms
        } else {
            self.order_ms
        }
    }

    pub fn of(m: &Manifest) -> Self {
        ArchiveSummary {
            id: m.id.clone(),
            node: m.node.clone(),
            path: m.path.clone(),
            created_ms: m.created_ms,
            order_ms: m.order(),
            tgz_len: m.tgz_len,
            files: m.stats.files + m.stats.hardlinks,
            tree_digest: m.tree_digest,
            tgz_sha256: m.tgz_sha256,
            warnings: m.warnings.len() as u64,
            stored_ms: 0,
            hidden: false,
        }
    }

    /// The summary of `m`, stored here at `now_ms`.
    pub(crate) fn stored_at(m: &Manifest, now_ms: i64) -> Self {
        ArchiveSummary { stored_ms: now_ms, ..ArchiveSummary::of(m) }
    }
}

/// The stat snapshot recorded after a backup: if a later scan matches it,
/// the tree is unchanged and nothing needs reading.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatCacheEntry {
    pub snapshot: StatSnapshot,
    pub excludes: Vec<String>,
    /// The archive whose tree the snapshot describes.
    pub archive_id: String,
    pub tree_digest: Digest,
    /// The id of the data key that archive is sealed under (`None`: a
    /// plain archive): a tree backed up plain is not "unchanged" for a
    /// run that seals, nor the other way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// What retention removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Archives that left the visible ones now: hidden for the grace
    /// period, or deleted (without having been hidden first).
    pub removed: Vec<String>,
    /// Archives deleted now, hidden before or not.
    pub deleted: Vec<String>,
    pub freed_members: u64,
    pub freed_bytes: u64,
}

/// Result of re-hashing an archive's members.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub members: usize,
    pub missing: Vec<Digest>,
    pub damaged: Vec<Digest>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.damaged.is_empty()
    }
}
