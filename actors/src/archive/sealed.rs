//! Encrypted archives (docs/encryption.md): how the origin seals what it
//! makes, and how a reader with the key opens it.
//!
//! - A changed member is sealed as a delta against its *keyframe* (the
//!   full member an earlier archive of the series has for the same group)
//!   when the delta is at most half the member; otherwise it is sealed
//!   whole. A delta is never made against a delta, so reading a member
//!   takes at most two objects. The origin applies its own delta before
//!   it keeps it: no holder can, without the key.
//! - The file table is cut into groups at keyed points (a holder cannot
//!   tell the cuts from the paths), each sealed on its own: an unchanged
//!   group is the same object, stored and sent once.
//! - The head holds what the public manifest leaves out: statistics,
//!   warnings, excludes, lengths.
//!
//! A delta's plaintext: `backmesh_crypt::member`.

use std::io::{self, Read, Write};
use std::sync::Arc;

use backmesh_crypt::{open_object, seal_object, DataKey, Kind};
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};

use super::error::Warning;
use super::manifest::{ArchiveStats, FileRecord, Manifest, MemberRef, ObjRef, MAX_MEMBER_BYTES};
use super::sink::gzip_member;
use crate::hash::Digest;

/// What a node seals its archives with: its data key, and that key
/// wrapped to the node itself and the operator's recovery recipients
/// (every public manifest carries the wrapped keys).
#[derive(Clone)]
pub struct Sealing {
    pub key: DataKey,
    pub keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Sealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealing({:?}, {} wrapped)", self.key, self.keys.len())
    }
}

/// Reads a stored object (checked against its name by the caller).
pub type ReadObject<'a> = dyn Fn(&ObjRef) -> io::Result<Vec<u8>> + Sync + 'a;

/// Why a sealed member does not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("object {digest} cannot be read: {source}")]
    Missing {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error("object {expected} is damaged (its bytes hash to {actual})")]
    Damaged { expected: Digest, actual: Digest },
    #[error("object {digest} does not open: {reason}")]
    Sealed { digest: Digest, reason: String },
    #[error("object {digest} holds a malformed member or delta: {reason}")]
    Malformed { digest: Digest, reason: String },
}

/// Members and file-table groups past this are refused when opened.
const MAX_GROUP_BYTES: u64 = 64 << 20;

/// Records in a file-table group at most, and on average (a cut falls
/// after a record when its keyed hash is a multiple of this).
const GROUP_MOST: usize = 4096;
const GROUP_MEAN: u64 = 512;

/// Reads object `o`, checked against its name.
fn read_checked(read: &ReadObject<'_>, o: &ObjRef) -> Result<Vec<u8>, OpenError> {
    let bytes = read(o).map_err(|source| OpenError::Missing { digest: o.cid, source })?;
    let actual = Digest::of(&bytes);
    if actual != o.cid {
        return Err(OpenError::Damaged { expected: o.cid, actual });
    }
    Ok(bytes)
}

fn obj(m: &MemberRef) -> ObjRef {
    ObjRef { cid: m.sha256, len: m.compressed_len }
}

/// Opens object `cid` as `kind` under `key` with `context`.
fn open_as(key: &DataKey, cid: &Digest, bytes: &[u8], kind: Kind, context: &[u8]) -> Result<Vec<u8>, OpenError> {
    let (found, plain) =
        open_object(key, context, bytes).map_err(|e| OpenError::Sealed { digest: *cid, reason: e.to_string() })?;
    if found != kind {
        return Err(OpenError::Sealed { digest: *cid, reason: format!("a {found:?} object where a {kind:?} belongs") });
    }
    Ok(plain)
}

/// The raw bytes of a gzip member, at most `MAX_MEMBER_BYTES` (its CRC
/// and length are checked by the decoder).
fn inflate(gz: &[u8], cid: &Digest) -> Result<Vec<u8>, OpenError> {
    backmesh_crypt::member::inflate(gz, MAX_MEMBER_BYTES)
        .map_err(|e| OpenError::Malformed { digest: *cid, reason: e.to_string() })
}

/// The keyframe a new member of the same group as `base` would be a
/// delta against: `base` itself when it is whole, else its keyframe.
pub fn keyframe_of(base: &MemberRef) -> ObjRef {
    base.key.unwrap_or(obj(base))
}

/// Seals the member made of `raw`: a delta against `base`'s keyframe
/// when that is at most half the whole member (and the keyframe opens
/// under this key), else whole. Answers the object and, for a delta, its
/// keyframe.
pub fn seal_member(
    s: &Sealing,
    raw: &[u8],
    level: u32,
    base: Option<&MemberRef>,
    read: &ReadObject<'_>,
) -> (Vec<u8>, Option<ObjRef>) {
    let gz = gzip_member(raw, level);
    if let Some(k) = base.map(keyframe_of) {
        let old = read_checked(read, &k)
            .and_then(|bytes| open_as(&s.key, &k.cid, &bytes, Kind::Member, b""))
            .and_then(|gz| inflate(&gz, &k.cid));
        // The same bytes as the keyframe: the keyframe itself (sealing is
        // deterministic), whatever run makes it.
        if let Some(old) = old.as_ref().ok().filter(|old| old.as_slice() != raw) {
            let (ops, literals) = backmesh_crypt::delta::make(old, raw);
            let body = backmesh_crypt::member::encode_delta(level, raw, gz.len() as u64, &ops, &literals);
            // Applied here before it is kept: only this node can check it.
            let rebuilt = backmesh_crypt::delta::apply(old, &ops, &literals, raw.len() as u64, MAX_MEMBER_BYTES);
            if body.len() <= gz.len() / 2 && rebuilt.as_deref() == Ok(raw) {
                return (seal_object(&s.key, Kind::Delta, &k.cid.0, &body), Some(k));
            }
        }
    }
    (seal_object(&s.key, Kind::Member, b"", &gz), None)
}

/// The raw bytes of member `m` of an encrypted archive, opened with `key`
/// (its keyframe read too, for a delta), with the level of its gzip form
/// when it is a delta.
pub fn open_member(key: &DataKey, m: &MemberRef, read: &ReadObject<'_>) -> Result<(Vec<u8>, Option<u32>), OpenError> {
    let bytes = read_checked(read, &obj(m))?;
    let Some(k) = m.key else {
        let gz = open_as(key, &m.sha256, &bytes, Kind::Member, b"")?;
        return Ok((inflate(&gz, &m.sha256)?, None));
    };
    let body = open_as(key, &m.sha256, &bytes, Kind::Delta, &k.cid.0)?;
    let bad = |reason: &str| OpenError::Malformed { digest: m.sha256, reason: reason.to_string() };
    let d = backmesh_crypt::member::decode_delta(&body).ok_or_else(|| bad("a delta too short for its header"))?;
    let kf = read_checked(read, &k)?;
    let old = inflate(&open_as(key, &k.cid, &kf, Kind::Member, b"")?, &k.cid)?;
    let raw = backmesh_crypt::delta::apply(&old, d.ops, d.literals, d.raw_len, MAX_MEMBER_BYTES)
        .map_err(|e| bad(&e.to_string()))?;
    if backmesh_crypt::member::crc32(&raw) != d.crc {
        return Err(bad("what the delta rebuilds is not what was sealed (CRC-32)"));
    }
    Ok((raw, Some(d.level)))
}

/// Member `m` as the gzip member a full run makes of it: a whole member
/// as it was sealed, a delta's raw bytes compressed at its level.
pub fn gzip_of(key: &DataKey, m: &MemberRef, read: &ReadObject<'_>) -> Result<Vec<u8>, OpenError> {
    if m.key.is_none() {
        let bytes = read_checked(read, &obj(m))?;
        return open_as(key, &m.sha256, &bytes, Kind::Member, b"");
    }
    let (raw, level) = open_member(key, m, read)?;
    Ok(gzip_member(&raw, level.unwrap_or(6)))
}

/// What an archive's head holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub stats: ArchiveStats,
    pub warnings: Vec<Warning>,
    pub excludes: Vec<String>,
    /// The tar stream's length.
    pub raw_len: u64,
    /// The bytes its members take, sealed.
    pub tgz_len: u64,
    /// The digest of its member list (`backmesh_crypt::member::members_digest`):
    /// whoever opens the head knows the list is the one this node made.
    pub members: serde_bytes::ByteBuf,
    /// Each member's tar bytes, in order: with the file table, where
    /// every entry lies (`backmesh_table::Layout`), so that one file is
    /// read from the members that hold it. Empty in heads made before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lens: Vec<u64>,
    /// The digest of the file table's group list (as `members`): whoever
    /// opens the head knows the table is this archive's. Empty in heads
    /// made before it.
    #[serde(default, skip_serializing_if = "no_bytes")]
    pub table: serde_bytes::ByteBuf,
    /// Where each group of the file table starts: its first path, the
    /// index of its first record, where that record's entry starts in the
    /// tar stream. A reader of one file opens the group that holds it
    /// alone. Empty in heads made before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupAt>,
}

/// Where one group of the file table starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAt {
    pub first: serde_bytes::ByteBuf,
    pub entry: u64,
    pub offset: u64,
}

fn no_bytes(b: &serde_bytes::ByteBuf) -> bool {
    b.is_empty()
}

fn deflated<T: Serialize>(value: &T) -> Vec<u8> {
    let mut cbor = Vec::new();
    // Writing CBOR into a Vec cannot fail.
    #[allow(clippy::expect_used)]
    ciborium::into_writer(value, &mut cbor).expect("CBOR into a Vec");
    let mut enc = DeflateEncoder::new(Vec::with_capacity(cbor.len() / 3 + 64), Compression::new(6));
    let _ = enc.write_all(&cbor);
    enc.finish().unwrap_or_default()
}

fn inflated<T: serde::de::DeserializeOwned>(data: &[u8], cid: &Digest) -> Result<T, OpenError> {
    let mut cbor = Vec::new();
    DeflateDecoder::new(data)
        .take(MAX_GROUP_BYTES + 1)
        .read_to_end(&mut cbor)
        .map_err(|e| OpenError::Malformed { digest: *cid, reason: e.to_string() })?;
    if cbor.len() as u64 > MAX_GROUP_BYTES {
        return Err(OpenError::Malformed { digest: *cid, reason: "larger than any group".into() });
    }
    ciborium::from_reader(&cbor[..]).map_err(|e| OpenError::Malformed { digest: *cid, reason: e.to_string() })
}

/// A sealed object with what a manifest lists of it.
pub type SealedObject = (MemberRef, Vec<u8>);

fn listed(object: Vec<u8>) -> SealedObject {
    let m = MemberRef { sha256: Digest::of(&object), raw_len: 0, compressed_len: object.len() as u64, key: None };
    (m, object)
}

/// The file table cut into sealed groups at keyed points, and the head.
pub fn seal_table(s: &Sealing, files: &[FileRecord], head: &Head) -> (Vec<SealedObject>, SealedObject) {
    let mut groups = Vec::new();
    let mut group: Vec<&FileRecord> = Vec::new();
    let mut starts: Vec<GroupAt> = Vec::new();
    let mut offset = Some(0u64);
    for (i, f) in files.iter().enumerate() {
        if group.is_empty() {
            starts.push(GroupAt { first: f.path.clone(), entry: i as u64, offset: offset.unwrap_or(0) });
        }
        offset = offset.and_then(|o| o.checked_add(f.entry_len()?));
        group.push(f);
        if group.len() >= GROUP_MOST || s.key.cut_mark(&f.path).is_multiple_of(GROUP_MEAN) {
            groups.push(listed(seal_object(&s.key, Kind::Index, b"", &deflated(&group))));
            group.clear();
        }
    }
    if !group.is_empty() {
        groups.push(listed(seal_object(&s.key, Kind::Index, b"", &deflated(&group))));
    }
    let refs: Vec<MemberRef> = groups.iter().map(|(m, _)| m.clone()).collect();
    // (A record no encoder writes leaves the groups' places unsaid.)
    let groups_at = if offset.is_some() { starts } else { Vec::new() };
    let head =
        Head { table: serde_bytes::ByteBuf::from(members_digest(&refs).to_vec()), groups: groups_at, ..head.clone() };
    (groups, listed(seal_object(&s.key, Kind::Head, b"", &deflated(&head))))
}

/// `m` (an encrypted archive's public manifest) with what its sealed
/// objects hold: the file table, statistics, warnings, excludes, lengths.
pub fn unseal(m: &Manifest, key: &DataKey, read: &ReadObject<'_>) -> Result<Manifest, OpenError> {
    let Some(crypt) = &m.crypt else { return Ok(m.clone()) };
    let mut out = m.clone();
    let head = open_head(m, key, read)?;
    out.stats = head.stats;
    out.warnings = head.warnings;
    out.excludes = head.excludes;
    out.raw_len = head.raw_len;
    out.tgz_len = head.tgz_len;
    if head.lens.len() == out.members.len() {
        for (m, len) in out.members.iter_mut().zip(&head.lens) {
            m.raw_len = *len;
        }
    }
    out.files.clear();
    for g in &crypt.index {
        let bytes = read_checked(read, &obj(g))?;
        let records: Vec<FileRecord> = inflated(&open_as(key, &g.sha256, &bytes, Kind::Index, b"")?, &g.sha256)?;
        out.files.extend(records);
    }
    Ok(out)
}

/// Entry `path` of encrypted archive `m`, read from its head and the one
/// group of its file table that holds it: that group's records, the
/// entry's index among them, and where the group starts in the tar
/// stream. `Ok(None)` when the head does not say where groups start (an
/// archive made before it) or no such path is there; `m`'s members get
/// their raw lengths from the head.
pub fn open_one(
    m: &mut Manifest,
    key: &DataKey,
    read: &ReadObject<'_>,
    path: &[u8],
) -> Result<Option<(Vec<FileRecord>, usize, u64)>, OpenError> {
    let Some(crypt) = m.crypt.clone() else { return Ok(None) };
    let head = open_head(m, key, read)?;
    if head.groups.len() != crypt.index.len() || head.lens.len() != m.members.len() || head.groups.is_empty() {
        return Ok(None);
    }
    for (member, len) in m.members.iter_mut().zip(&head.lens) {
        member.raw_len = *len;
    }
    // The last group whose first path is not after `path`, in walk order.
    let g = head.groups.partition_point(|g| backmesh_table::walk_cmp(&g.first, path) != std::cmp::Ordering::Greater);
    let Some(g) = g.checked_sub(1) else { return Ok(None) };
    let object = &crypt.index[g];
    let bytes = read_checked(read, &obj(object))?;
    let records: Vec<FileRecord> = inflated(&open_as(key, &object.sha256, &bytes, Kind::Index, b"")?, &object.sha256)?;
    Ok(records.iter().position(|f| f.path.as_slice() == path).map(|i| (records, i, head.groups[g].offset)))
}

/// The head of encrypted archive `m`, opened with `key` and checked
/// against the lists it binds (one object read: the statistics without
/// the file table).
pub fn open_head(m: &Manifest, key: &DataKey, read: &ReadObject<'_>) -> Result<Head, OpenError> {
    let Some(crypt) = &m.crypt else { return Ok(Head::default()) };
    let bytes = read_checked(read, &crypt.head)?;
    let head: Head = inflated(&open_as(key, &crypt.head.cid, &bytes, Kind::Head, b"")?, &crypt.head.cid)?;
    if head.members.as_slice() != members_digest(&m.members) {
        let reason = "its member list is not the one its node sealed in its head".to_string();
        return Err(OpenError::Malformed { digest: crypt.head.cid, reason });
    }
    if !head.table.is_empty() && head.table.as_slice() != members_digest(&crypt.index) {
        let reason = "its file table is not the one its node sealed in its head".to_string();
        return Err(OpenError::Malformed { digest: crypt.head.cid, reason });
    }
    Ok(head)
}

/// The sealing of a node whose data key is `key`, wrapped as `keys`.
pub fn sealing(key: DataKey, keys: Vec<Vec<u8>>) -> Arc<Sealing> {
    Arc::new(Sealing { key, keys })
}

/// The digest of `members` a sealed head carries.
pub fn members_digest(members: &[MemberRef]) -> [u8; 32] {
    backmesh_crypt::member::members_digest(
        members.iter().map(|m| (m.sha256.0, m.compressed_len, m.key.map(|k| (k.cid.0, k.len)))),
    )
}
