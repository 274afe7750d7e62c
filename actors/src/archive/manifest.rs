//! The manifest: everything needed to reassemble, verify and restore one
//! archive. Stored as a small envelope (magic, format version) followed by
//! CBOR, so that a later format can be recognised and migrated.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

pub mod objects;
pub use objects::OBJECTS_VERSION;

use super::error::Warning;
use crate::hash::Digest;
use backmesh_table::tarfmt::Kind;

/// Magic bytes that open every manifest file.
pub const MAGIC: &[u8; 4] = b"BMMF";
/// The manifest format of an unsealed manifest (as written before seals).
pub const FORMAT_VERSION: u8 = 1;
/// The format of a sealed manifest: the version-1 body, signed by the
/// node that made the archive ([`Seal`]).
pub const SEALED_VERSION: u8 = 2;
/// Formats 1 and 2 whose tree digest is taken over the members' digests
/// ([`TreeRule::Members`]): an unsealed one (3) and a sealed one (4). The
/// body is the same; the version byte says how to check the tree, so a
/// reader that does not know the rule refuses the manifest rather than
/// finding every restore of it "damaged".
pub const MEMBER_TREE_VERSION: u8 = 3;
pub const SEALED_MEMBER_TREE_VERSION: u8 = 4;
/// Format 4 with the seal over the body's SHA-256 ([`seal_message`]), not
/// over the body itself: an ed25519 signature hashes its message twice
/// with SHA-512, and a large tree's manifest is tens of megabytes.
pub const DIGEST_SEALED_VERSION: u8 = 5;
/// The newest format this version reads: 6, an encrypted archive's
/// public manifest ([`objects`]).
pub const NEWEST_VERSION: u8 = OBJECTS_VERSION;

/// What a format-5 seal signs: a domain tag and the SHA-256 of the body.
pub fn seal_message(body: &[u8]) -> Vec<u8> {
    let mut msg = b"backmesh manifest seal v5\0".to_vec();
    msg.extend_from_slice(&Digest::of(body).0);
    msg
}

/// How an archive's tree digest is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TreeRule {
    /// SHA-256 of the whole uncompressed tar stream (formats 1 and 2):
    /// checking it means inflating every member.
    #[default]
    RawStream,
    /// SHA-256 over the members' digests and raw lengths, in order
    /// (formats 3 and 4): a member kept from an earlier archive counts
    /// without being read again. As exact as the raw rule: members are
    /// addressed by the SHA-256 of their bytes, and inflating one checks
    /// its CRC-32 and length, so equal member digests are equal trees.
    Members,
    /// SHA-256 over the sealed objects (format 6,
    /// [`objects_tree_digest`]): the same objects in the same
    /// places, which a holder checks without any key.
    Objects,
}

/// The tree digest of [`TreeRule::Members`].
pub fn members_tree_digest(members: &[MemberRef]) -> Digest {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"backmesh tree of members v1");
    h.update((members.len() as u64).to_le_bytes());
    for m in members {
        h.update(m.sha256.0);
        h.update(m.raw_len.to_le_bytes());
    }
    Digest::from_hasher(h)
}
/// The tree digest of [`TreeRule::Objects`]: SHA-256 over a domain tag,
/// the number of members, then for each member its object and length and
/// its keyframe's (or zeros), then the same for the index groups, then
/// the head. Equal digests: the same objects in the same places.
pub fn objects_tree_digest(members: &[MemberRef], index: &[MemberRef], head: &ObjRef) -> Digest {
    let listed = |m: &MemberRef| (m.sha256.0, m.compressed_len, m.key.map(|k| (k.cid.0, k.len)));
    Digest(backmesh_crypt::member::objects_digest(
        members.iter().map(listed),
        index.iter().map(listed),
        (head.cid.0, head.len),
    ))
}

/// Manifests larger than this are refused when decoded (a peer could send one).
pub const MAX_MANIFEST_BYTES: usize = 512 * 1024 * 1024;

/// One gzip member of the archive, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRef {
    /// SHA-256 of the compressed member: its address in every store. In an
    /// encrypted archive, of the sealed object (a member or a delta).
    pub sha256: Digest,
    /// Length of the tar bytes it holds (0 in an encrypted archive's
    /// public manifest: it is inside the sealed object).
    pub raw_len: u64,
    /// Length of the gzip member, or of the sealed object.
    pub compressed_len: u64,
    /// In an encrypted archive, when the object is a delta: the keyframe
    /// (an earlier full member of the series) it applies to. Never in the
    /// bodies of formats 1–5 (a body that has it is refused: it would not
    /// be written the same way); in a series' reuse records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<ObjRef>,
}

/// One stored object: named by the SHA-256 of its bytes, with its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjRef {
    pub cid: Digest,
    pub len: u64,
}

/// What an encrypted archive's public manifest says of its encryption,
/// and the objects that hold what it does not say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crypt {
    /// [`objects::SUITE_XCHACHA_SIV`].
    pub suite: u8,
    /// The id of the data key its objects are sealed under.
    pub kid: [u8; 8],
    /// That key, wrapped to the node and to the operator's recovery
    /// recipients (`backmesh_crypt::wrap`).
    pub keys: Vec<Vec<u8>>,
    /// The sealed groups of the file table, in walk order.
    pub index: Vec<MemberRef>,
    /// The sealed statistics, warnings and excludes.
    pub head: ObjRef,
}

/// One entry of the file table.
pub use backmesh_table::FileRecord;

/// Counts a person wants to see about an archive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Sum of regular files' content lengths.
    pub content_bytes: u64,
}

/// The description of one archive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Archive id: `YYYYmmddTHHMMSS.mmmZ-<first 8 hex of tgz sha256>`.
    pub id: String,
    /// Origin node name.
    pub node: String,
    /// Absolute path of the backed-up directory on the origin node.
    pub path: String,
    /// Creation time, milliseconds since the Unix epoch (UTC).
    pub created_ms: i64,
    /// Its place in its series, in ms: its creation time, or just after
    /// the series' newest archive when the clock says earlier (a clock
    /// that ran ahead and was set right). Retention and "latest" follow
    /// it, never the clock alone. 0 in manifests from before it was kept:
    /// read as the creation time ([`Manifest::order`]).
    #[serde(default)]
    pub order_ms: i64,
    pub members: Vec<MemberRef>,
    pub files: Vec<FileRecord>,
    /// Equal digests, equal trees: over the uncompressed tar stream, or
    /// over the members ([`TreeRule`]).
    pub tree_digest: Digest,
    /// SHA-256 of the whole `.tgz` (the members concatenated) under the
    /// raw-stream rule; zero under the members rule, where it is not
    /// known without reading every member: use [`Manifest::tgz_digest`].
    pub tgz_sha256: Digest,
    pub tgz_len: u64,
    pub raw_len: u64,
    pub stats: ArchiveStats,
    pub warnings: Vec<Warning>,
    /// Exclude patterns in force when it was made.
    pub excludes: Vec<String>,
    /// The signature of the node that made it, checked when decoded; not
    /// part of the signed body.
    #[serde(skip)]
    pub seal: Option<Seal>,
    /// How `tree_digest` is made: said by the format version, not by the body.
    #[serde(skip)]
    pub tree_rule: TreeRule,
    /// Set for an encrypted archive (format 6): then `files`, `stats`,
    /// `warnings`, `excludes` and `raw_len` are empty until the sealed
    /// objects are opened with the key.
    #[serde(skip)]
    pub crypt: Option<Crypt>,
}

/// The signature of the node that made an archive over its manifest's
/// body: a holder adopts, a reader trusts, only a manifest sealed by the
/// identity key of the series' own node (see `Store::check_origin`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The signer's peer id (its ed25519 public key, in the id itself).
    pub signer: String,
    pub sig: ByteBuf,
    /// Whether `sig` is over [`seal_message`] (format 5) rather than the
    /// body (formats 2 and 4): said by the format version, not stored.
    #[serde(skip)]
    pub over_digest: bool,
}

/// A sealed manifest as stored and sent: the body's bytes and the seal.
#[derive(Serialize, Deserialize)]
struct Envelope {
    body: ByteBuf,
    seal: Seal,
}

/// The few CBOR forms [`Manifest::write_body`] writes by hand, each the
/// shortest encoding, as ciborium writes them (RFC 8949, section 3).
mod cbor {
    pub const UINT: u8 = 0;
    pub const NINT: u8 = 1;
    pub const BYTES: u8 = 2;
    pub const TEXT: u8 = 3;
    pub const ARRAY: u8 = 4;
    pub const MAP: u8 = 5;

    /// A head: major type and argument.
    pub fn head(out: &mut Vec<u8>, major: u8, n: u64) {
        let m = major << 5;
        if n < 24 {
            out.push(m | n as u8);
        } else if n <= u64::from(u8::MAX) {
            out.extend_from_slice(&[m | 24, n as u8]);
        } else if n <= u64::from(u16::MAX) {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n <= u64::from(u32::MAX) {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }

    pub fn int(out: &mut Vec<u8>, v: i64) {
        if v < 0 {
            head(out, NINT, !(v as u64));
        } else {
            head(out, UINT, v as u64);
        }
    }

    pub fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        head(out, BYTES, b.len() as u64);
        out.extend_from_slice(b);
    }

    pub fn text(out: &mut Vec<u8>, t: &str) {
        head(out, TEXT, t.len() as u64);
        out.extend_from_slice(t.as_bytes());
    }
}

/// Largest member a manifest may describe, raw or compressed. backmesh
/// cuts members of tens to hundreds of KiB; the bound is far above any it
/// makes, and keeps a manifest from a peer from asking a reader to
/// allocate or inflate without limit.
pub const MAX_MEMBER_BYTES: u64 = 256 << 20;

/// Whether `id` can name an archive: 1 to 64 ASCII letters, digits, `.`,
/// `_` or `-`, starting with a letter or digit. Archive ids are file names
/// in the store, and they come from peers: `..`, `/` and the like must
/// never reach a path.
pub fn valid_id(id: &str) -> bool {
    backmesh_api::names::check_archive_id(id).is_ok()
}

/// Why a manifest could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not a backmesh manifest (bad magic bytes)")]
    BadMagic,
    #[error(
        "manifest format {found} is newer than this backmesh understands (up to {NEWEST_VERSION}); upgrade backmesh"
    )]
    UnknownVersion { found: u8 },
    #[error("manifest of {len} bytes exceeds the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("manifest is corrupt: {reason}")]
    Corrupt { reason: String },
    #[error("manifest's seal is not {signer}'s signature of it: it was altered, or forged")]
    BadSeal { signer: String },
}

impl Manifest {
    /// The SHA-256 of the whole `.tgz`, where the manifest records it
    /// (formats 1 and 2). Archives of formats 3 and 4 are checked member
    /// by member, each against the digest the (sealed) manifest gives.
    pub fn tgz_digest(&self) -> Option<Digest> {
        (self.tree_rule == TreeRule::RawStream).then_some(self.tgz_sha256)
    }

    /// The signed part: the manifest in CBOR, seal left out (for an
    /// encrypted archive, its public part only).
    fn body(&self) -> Vec<u8> {
        if let Some(crypt) = &self.crypt {
            return objects_body(self, crypt);
        }
        let mut out = Vec::with_capacity(self.body_len_bound());
        self.write_body(&mut out);
        out
    }

    /// At least the length of [`Manifest::body`]: its buffer is allocated
    /// once (a large tree's manifest is tens of megabytes).
    fn body_len_bound(&self) -> usize {
        let files: usize =
            self.files.iter().map(|f| 96 + f.path.len() + f.link.as_ref().map_or(0, |l| 16 + l.len())).sum();
        4096 + self.members.len() * 64 + files
    }

    /// Writes [`Manifest::body`]: exactly the CBOR serde and ciborium make
    /// of the manifest (a test holds it to that), with the file table and
    /// the member list, nearly all of a large tree's manifest, written
    /// directly rather than field by field through serde.
    fn write_body(&self, out: &mut Vec<u8>) {
        // Writing CBOR into a Vec cannot fail: serde types here have no fallible parts.
        #[allow(clippy::expect_used)]
        fn value<T: Serialize + ?Sized>(out: &mut Vec<u8>, key: &str, v: &T) {
            cbor::text(out, key);
            ciborium::into_writer(v, &mut *out).expect("CBOR into a Vec");
        }
        cbor::head(out, cbor::MAP, 14);
        value(out, "id", &self.id);
        value(out, "node", &self.node);
        value(out, "path", &self.path);
        value(out, "created_ms", &self.created_ms);
        value(out, "order_ms", &self.order_ms);
        cbor::text(out, "members");
        cbor::head(out, cbor::ARRAY, self.members.len() as u64);
        for m in &self.members {
            cbor::head(out, cbor::MAP, 3);
            cbor::text(out, "sha256");
            cbor::bytes(out, &m.sha256.0);
            cbor::text(out, "raw_len");
            cbor::head(out, cbor::UINT, m.raw_len);
            cbor::text(out, "compressed_len");
            cbor::head(out, cbor::UINT, m.compressed_len);
        }
        cbor::text(out, "files");
        cbor::head(out, cbor::ARRAY, self.files.len() as u64);
        for f in &self.files {
            cbor::head(out, cbor::MAP, if f.link.is_some() { 9 } else { 8 });
            cbor::text(out, "path");
            cbor::bytes(out, &f.path);
            cbor::text(out, "kind");
            cbor::text(
                out,
                match f.kind {
                    Kind::File => "File",
                    Kind::Dir => "Dir",
                    Kind::Symlink => "Symlink",
                    Kind::HardLink => "HardLink",
                },
            );
            cbor::text(out, "size");
            cbor::head(out, cbor::UINT, f.size);
            cbor::text(out, "mode");
            cbor::head(out, cbor::UINT, u64::from(f.mode));
            cbor::text(out, "mtime");
            cbor::int(out, f.mtime);
            cbor::text(out, "mtime_nsec");
            cbor::head(out, cbor::UINT, u64::from(f.mtime_nsec));
            cbor::text(out, "uid");
            cbor::head(out, cbor::UINT, f.uid);
            cbor::text(out, "gid");
            cbor::head(out, cbor::UINT, f.gid);
            if let Some(link) = &f.link {
                cbor::text(out, "link");
                cbor::bytes(out, link);
            }
        }
        value(out, "tree_digest", &self.tree_digest);
        value(out, "tgz_sha256", &self.tgz_sha256);
        value(out, "tgz_len", &self.tgz_len);
        value(out, "raw_len", &self.raw_len);
        value(out, "stats", &self.stats);
        value(out, "warnings", &self.warnings);
        value(out, "excludes", &self.excludes);
    }

    pub fn encode(&self) -> Vec<u8> {
        self.encode_body(self.body())
    }

    /// The stored form, around `body` (this manifest's [`Manifest::body`]).
    fn encode_body(&self, body: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 128);
        out.extend_from_slice(MAGIC);
        out.push(self.version());
        match &self.seal {
            None => out.extend_from_slice(&body),
            Some(seal) => {
                let env = Envelope { body: ByteBuf::from(body), seal: seal.clone() };
                #[allow(clippy::expect_used)]
                ciborium::into_writer(&env, &mut out).expect("CBOR into a Vec");
            }
        }
        out
    }

    /// The format version byte of its stored form.
    fn version(&self) -> u8 {
        if self.crypt.is_some() {
            return OBJECTS_VERSION;
        }
        let members = self.tree_rule == TreeRule::Members;
        match &self.seal {
            None if members => MEMBER_TREE_VERSION,
            None => FORMAT_VERSION,
            Some(seal) => match (members, seal.over_digest) {
                (true, true) => DIGEST_SEALED_VERSION,
                (true, false) => SEALED_MEMBER_TREE_VERSION,
                (false, _) => SEALED_VERSION,
            },
        }
    }

    /// Signs the manifest with `key`, the identity key of the node that
    /// made it.
    pub fn seal_with(&mut self, key: &libp2p::identity::Keypair) -> Result<(), ManifestError> {
        self.seal_body(key, &self.body())
    }

    /// Seals `body` (this manifest's): over its digest (format 5) under
    /// the members rule; over the body itself (format 2) under the
    /// raw-stream rule, whose readers predate format 5.
    fn seal_body(&mut self, key: &libp2p::identity::Keypair, body: &[u8]) -> Result<(), ManifestError> {
        let over_digest = self.tree_rule != TreeRule::RawStream;
        let message = match self.tree_rule {
            TreeRule::Objects => std::borrow::Cow::Owned(objects::seal_message(body)),
            TreeRule::Members => std::borrow::Cow::Owned(seal_message(body)),
            TreeRule::RawStream => std::borrow::Cow::Borrowed(body),
        };
        let sig = key.sign(&message).map_err(|e| ManifestError::Corrupt { reason: format!("cannot sign: {e}") })?;
        self.seal = Some(Seal { signer: key.public().to_peer_id().to_string(), sig: ByteBuf::from(sig), over_digest });
        Ok(())
    }

    /// Seals the manifest with `key` ([`Manifest::seal_with`]) and returns
    /// it encoded, from the same body: a large tree's manifest is
    /// megabytes, encoded once, not twice.
    pub fn seal_encoded(&mut self, key: &libp2p::identity::Keypair) -> Result<Vec<u8>, ManifestError> {
        if self.crypt.is_some() {
            // The public part is small (no file table): the plain way.
            let body = self.body();
            self.seal_body(key, &body)?;
            return Ok(self.encode_body(body));
        }
        // The body is written where it sits in the stored form, after room
        // for what opens it (magic, version, the envelope's map and the
        // body's byte-string head, at most 16 bytes below 4 GiB): one
        // buffer, never copied.
        const ROOM: usize = 16;
        let mut out = Vec::with_capacity(ROOM + self.body_len_bound() + 256);
        out.resize(ROOM, 0);
        self.write_body(&mut out);
        self.seal_body(key, &out[ROOM..])?;
        let Some(seal) = &self.seal else {
            return Err(ManifestError::Corrupt { reason: "sealing left no seal".into() });
        };
        let mut open = Vec::with_capacity(ROOM);
        open.extend_from_slice(MAGIC);
        open.push(self.version());
        cbor::head(&mut open, cbor::MAP, 2);
        cbor::text(&mut open, "body");
        cbor::head(&mut open, cbor::BYTES, (out.len() - ROOM) as u64);
        let start = ROOM.checked_sub(open.len()).ok_or(ManifestError::TooLarge { len: out.len() })?;
        out[start..ROOM].copy_from_slice(&open);
        cbor::text(&mut out, "seal");
        // Writing CBOR into a Vec cannot fail.
        #[allow(clippy::expect_used)]
        ciborium::into_writer(seal, &mut out).expect("CBOR into a Vec");
        // Only a body under 64 KiB has a shorter head: a small move.
        out.drain(..start);
        Ok(out)
    }

    /// The peer id that sealed it (its seal was checked when decoded).
    pub fn signer(&self) -> Option<&str> {
        self.seal.as_ref().map(|s| s.signer.as_str())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { len: bytes.len() });
        }
        if bytes.len() < 5 || &bytes[..4] != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let corrupt = |e: &dyn std::fmt::Display| ManifestError::Corrupt { reason: e.to_string() };
        let rule = match bytes[4] {
            MEMBER_TREE_VERSION | SEALED_MEMBER_TREE_VERSION | DIGEST_SEALED_VERSION => TreeRule::Members,
            _ => TreeRule::RawStream,
        };
        match bytes[4] {
            FORMAT_VERSION | MEMBER_TREE_VERSION => {
                let mut m: Manifest = ciborium::from_reader(&bytes[5..]).map_err(|e| corrupt(&e))?;
                m.tree_rule = rule;
                m.checked()
            }
            SEALED_VERSION | SEALED_MEMBER_TREE_VERSION | DIGEST_SEALED_VERSION => {
                let mut env: Envelope = ciborium::from_reader(&bytes[5..]).map_err(|e| corrupt(&e))?;
                env.seal.over_digest = bytes[4] == DIGEST_SEALED_VERSION;
                let sealed = if env.seal.over_digest {
                    crate::seal::holds(&env.seal.signer, &seal_message(&env.body), &env.seal.sig)
                } else {
                    crate::seal::holds(&env.seal.signer, &env.body, &env.seal.sig)
                };
                if !sealed {
                    return Err(ManifestError::BadSeal { signer: env.seal.signer });
                }
                let mut m: Manifest = ciborium::from_reader(&env.body[..]).map_err(|e| corrupt(&e))?;
                // Signed bytes this version would not write the same way
                // (fields it does not know) are refused, not half-trusted.
                if m.body() != env.body.as_slice() {
                    return Err(corrupt(&"its body has fields this version does not know; upgrade backmesh"));
                }
                m.seal = Some(env.seal);
                m.tree_rule = rule;
                m.checked()
            }
            OBJECTS_VERSION => {
                let env: Envelope = ciborium::from_reader(&bytes[5..])
                    .map_err(|e| corrupt(&format!("an encrypted archive's manifest must be sealed: {e}")))?;
                if !crate::seal::holds(&env.seal.signer, &objects::seal_message(&env.body), &env.seal.sig) {
                    return Err(ManifestError::BadSeal { signer: env.seal.signer });
                }
                let mut m = decode_objects_body(&env.body)?;
                m.seal = Some(Seal { over_digest: true, ..env.seal });
                m.checked()
            }
            found => Err(ManifestError::UnknownVersion { found }),
        }
    }

    /// A manifest a peer sent: decoded ([`Manifest::decode`]), and its node
    /// name and path checked as the wire checks them. (A manifest read from
    /// this node's own store is not held to names checked after it was
    /// stored: an old one still restores.)
    pub fn decode_from_peer(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m = Manifest::decode(bytes)?;
        let names = backmesh_api::names::check_node_name(&m.node)
            .and_then(|()| backmesh_api::names::check_series_path(&m.path));
        if let Err(e) = names {
            return Err(ManifestError::Corrupt { reason: e.to_string() });
        }
        Ok(m)
    }

    /// Checks what decoding alone cannot: an id that is safe as a file name.
    fn checked(self) -> Result<Self, ManifestError> {
        if !valid_id(&self.id) {
            return Err(ManifestError::Corrupt {
                reason: format!("archive id {:?} is not a valid archive id", self.id),
            });
        }
        if let Some((i, m)) = self
            .members
            .iter()
            .enumerate()
            .find(|(_, m)| m.raw_len > MAX_MEMBER_BYTES || m.compressed_len > MAX_MEMBER_BYTES)
        {
            return Err(ManifestError::Corrupt {
                reason: format!(
                    "member {i} claims {} raw and {} compressed bytes, over the {MAX_MEMBER_BYTES}-byte bound",
                    m.raw_len, m.compressed_len
                ),
            });
        }
        match &self.crypt {
            Some(crypt) => check_objects(&self, crypt)?,
            None if self.members.iter().any(|m| m.key.is_some()) => {
                return Err(ManifestError::Corrupt { reason: "a plain archive's member names a keyframe".into() })
            }
            None => {}
        }
        // Under the members rule the tree digest follows from the member
        // list: one that does not is caught before anything is read.
        if self.tree_rule == TreeRule::Members && self.tree_digest != members_tree_digest(&self.members) {
            return Err(ManifestError::Corrupt { reason: "its tree digest is not that of its members".into() });
        }
        Ok(self)
    }

    /// Its place in its series ([`Manifest::order_ms`]).
    pub fn order(&self) -> i64 {
        if self.order_ms == 0 {
            self.created_ms
        } else {
            self.order_ms
        }
    }

    /// Every object a store keeps for this archive, in the order a
    /// restore reads them: for each member its keyframe (if it is a
    /// delta) then itself; then, in an encrypted archive, the file
    /// table's groups (likewise) and the head. An object may come more
    /// than once (a member repeated, a keyframe shared).
    pub fn objects(&self) -> impl Iterator<Item = ObjRef> + '_ {
        let listed =
            |r: &MemberRef| r.key.into_iter().chain(std::iter::once(ObjRef { cid: r.sha256, len: r.compressed_len }));
        let sealed = self.crypt.iter().flat_map(move |c| c.index.iter().flat_map(listed).chain([c.head]));
        self.members.iter().flat_map(listed).chain(sealed)
    }

    /// The names of [`Manifest::objects`], in order (what a holder must have).
    pub fn digests(&self) -> impl Iterator<Item = Digest> + '_ {
        self.objects().map(|o| o.cid)
    }

    /// Whether this is an encrypted archive's public manifest.
    pub fn encrypted(&self) -> bool {
        self.crypt.is_some()
    }
}

// Format 6: an encrypted archive's public body (`objects`), read into a
// `Manifest` and written from one.

/// The longest object a format-6 manifest may list: the longest member, sealed.
pub const MAX_OBJECT_BYTES: u64 = MAX_MEMBER_BYTES + backmesh_crypt::OVERHEAD as u64;

fn listed_entry(m: &MemberRef) -> objects::Entry {
    objects::Entry { c: m.sha256, n: m.compressed_len, k: m.key.map(|k| k.cid), kn: m.key.map(|k| k.len) }
}

fn listed_member(e: objects::Entry) -> Result<MemberRef, ManifestError> {
    let key = match (e.k, e.kn) {
        (Some(cid), Some(len)) => Some(ObjRef { cid, len }),
        (None, None) => None,
        _ => return Err(corrupt("an object names a keyframe without its length, or a length without it")),
    };
    Ok(MemberRef { sha256: e.c, raw_len: 0, compressed_len: e.n, key })
}

fn corrupt(reason: &str) -> ManifestError {
    ManifestError::Corrupt { reason: reason.to_string() }
}

/// The public body of `m` (which has `crypt`).
fn objects_body(m: &Manifest, crypt: &Crypt) -> Vec<u8> {
    let body = objects::Body {
        id: m.id.clone(),
        node: m.node.clone(),
        path: m.path.clone(),
        created_ms: m.created_ms,
        order_ms: m.order_ms,
        crypt: objects::Suite { suite: crypt.suite, kid: ByteBuf::from(crypt.kid.to_vec()) },
        keys: crypt.keys.iter().map(|k| ByteBuf::from(k.clone())).collect(),
        members: m.members.iter().map(listed_entry).collect(),
        index: crypt.index.iter().map(listed_entry).collect(),
        head: objects::Head { c: crypt.head.cid, n: crypt.head.len },
        tree_digest: m.tree_digest,
    };
    let mut out = Vec::with_capacity(1024 + 96 * (m.members.len() + crypt.index.len()));
    // Writing CBOR into a Vec cannot fail.
    #[allow(clippy::expect_used)]
    ciborium::into_writer(&body, &mut out).expect("CBOR into a Vec");
    out
}

/// The manifest whose public body is `bytes` (its seal is the caller's),
/// refused unless this version would write exactly those bytes.
fn decode_objects_body(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let b: objects::Body = ciborium::from_reader(bytes).map_err(|e| corrupt(&e.to_string()))?;
    if b.crypt.suite != objects::SUITE_XCHACHA_SIV {
        return Err(corrupt(&format!("encryption suite {} is unknown here; upgrade backmesh", b.crypt.suite)));
    }
    let kid: [u8; 8] = b.crypt.kid.as_slice().try_into().map_err(|_| corrupt("the key id is not 8 bytes"))?;
    if b.keys.len() > objects::MAX_KEYS || b.keys.iter().any(|k| k.len() > objects::MAX_KEY_LEN) {
        return Err(corrupt(&format!(
            "more than {} wrapped keys, or one over {} bytes",
            objects::MAX_KEYS,
            objects::MAX_KEY_LEN
        )));
    }
    let members = b.members.into_iter().map(listed_member).collect::<Result<Vec<_>, _>>()?;
    let index = b.index.into_iter().map(listed_member).collect::<Result<Vec<_>, _>>()?;
    let head = ObjRef { cid: b.head.c, len: b.head.n };
    let m = Manifest {
        id: b.id,
        node: b.node,
        path: b.path,
        created_ms: b.created_ms,
        order_ms: b.order_ms,
        tgz_len: members.iter().map(|m| m.compressed_len).sum(),
        members,
        files: Vec::new(),
        tree_digest: b.tree_digest,
        tgz_sha256: Digest::default(),
        raw_len: 0,
        stats: ArchiveStats::default(),
        warnings: Vec::new(),
        excludes: Vec::new(),
        seal: None,
        tree_rule: TreeRule::Objects,
        crypt: Some(Crypt {
            suite: b.crypt.suite,
            kid,
            keys: b.keys.into_iter().map(ByteBuf::into_vec).collect(),
            index,
            head,
        }),
    };
    if objects_body(&m, m.crypt.as_ref().ok_or_else(|| corrupt("no encryption"))?) != bytes {
        return Err(corrupt(
            "its body has fields this version does not know, or is not written as it writes it; upgrade backmesh",
        ));
    }
    Ok(m)
}

/// What decoding checks beyond the CBOR: lengths within bounds, no
/// object its own keyframe, and the tree digest that of the objects.
fn check_objects(m: &Manifest, crypt: &Crypt) -> Result<(), ManifestError> {
    if crypt.head.len > MAX_OBJECT_BYTES {
        return Err(corrupt(&format!("its head claims more than the {MAX_OBJECT_BYTES}-byte bound")));
    }
    for (i, r) in m.members.iter().chain(&crypt.index).enumerate() {
        if r.compressed_len > MAX_OBJECT_BYTES || r.key.is_some_and(|k| k.len > MAX_OBJECT_BYTES) {
            return Err(corrupt(&format!("object {i} claims more than the {MAX_OBJECT_BYTES}-byte bound")));
        }
        if r.key.is_some_and(|k| k.cid == r.sha256) {
            return Err(corrupt(&format!("object {i} is a delta against itself")));
        }
    }
    if m.tree_digest != objects_tree_digest(&m.members, &crypt.index, &crypt.head) {
        return Err(corrupt("its tree digest is not that of its objects"));
    }
    Ok(())
}

impl crate::error::Transient for ManifestError {
    fn retry(&self) -> crate::error::Retry {
        // The same bytes read the same way (an upgrade reads a newer format).
        crate::error::Retry::Never
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            id: "20261122T030000.000Z-deadbeef".into(),
            node: "n1".into(),
            path: "/srv/app".into(),
            created_ms: 1_795_000_000_000,
            order_ms: 1_795_000_000_000,
            members: vec![MemberRef { sha256: Digest::of(b"m"), raw_len: 10240, compressed_len: 300, key: None }],
            files: vec![FileRecord {
                path: ByteBuf::from(b"a/\xffb".to_vec()),
                kind: Kind::Symlink,
                size: 0,
                mode: 0o777,
                mtime: -5,
                mtime_nsec: 1,
                uid: 0,
                gid: 0,
                link: Some(ByteBuf::from(b"../x".to_vec())),
            }],
            tree_digest: Digest::of(b"t"),
            tgz_sha256: Digest::of(b"z"),
            tgz_len: 300,
            raw_len: 10240,
            stats: ArchiveStats { files: 1, ..Default::default() },
            warnings: vec![],
            excludes: vec!["*.log".into()],
            seal: None,
            tree_rule: TreeRule::RawStream,
            crypt: None,
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    /// The hand-written body is byte for byte what serde and ciborium
    /// make, at every width of every number and with every kind of entry.
    #[test]
    fn the_body_is_the_cbor_serde_makes() {
        let widths =
            [0u64, 1, 23, 24, 255, 256, 65_535, 65_536, u64::from(u32::MAX), u64::from(u32::MAX) + 1, u64::MAX];
        let kinds = [Kind::File, Kind::Dir, Kind::Symlink, Kind::HardLink];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut m = sample();
        m.files.clear();
        m.members.clear();
        for i in 0..600 {
            let w = |r: u64| widths[(r % widths.len() as u64) as usize];
            let path_len = (next() % 300) as usize;
            m.files.push(FileRecord {
                path: ByteBuf::from(vec![b'a' + (i % 26) as u8; path_len]),
                kind: kinds[i % 4],
                size: w(next()),
                mode: w(next()) as u32,
                mtime: if next() % 2 == 0 { w(next()) as i64 } else { -(w(next()) as i64) },
                mtime_nsec: w(next()) as u32,
                uid: w(next()),
                gid: w(next()),
                link: (next() % 3 == 0).then(|| ByteBuf::from(vec![b'/'; (next() % 70) as usize])),
            });
            m.members.push(MemberRef {
                sha256: Digest::of(&i.to_le_bytes()),
                raw_len: w(next()),
                compressed_len: w(next()),
                key: None,
            });
        }
        m.files.push(FileRecord { mtime: i64::MIN, ..m.files[0].clone() });
        m.warnings.push(Warning {
            path: "x".into(),
            kind: crate::archive::error::WarningKind::Vanished,
            message: "gone".into(),
        });
        for m in [sample(), of_members(), m] {
            let mut want = Vec::new();
            ciborium::into_writer(&m, &mut want).unwrap();
            assert_eq!(m.body(), want);
            assert!(m.body_len_bound() >= want.len());
            // Sealed in place, it is the envelope `encode` makes.
            let key = libp2p::identity::Keypair::generate_ed25519();
            let mut sealed = m.clone();
            let bytes = sealed.seal_encoded(&key).unwrap();
            assert_eq!(bytes, sealed.encode(), "a body of {} bytes", want.len());
        }
    }

    /// `sample()` under the members rule.
    fn of_members() -> Manifest {
        let mut m = sample();
        m.tree_rule = TreeRule::Members;
        m.tree_digest = members_tree_digest(&m.members);
        m
    }

    #[test]
    fn the_members_rule_is_said_by_the_version_byte_sealed_or_not() {
        let m = of_members();
        let bytes = m.encode();
        assert_eq!(bytes[4], MEMBER_TREE_VERSION);
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        let key = libp2p::identity::Keypair::generate_ed25519();
        let mut sealed = of_members();
        sealed.seal_with(&key).unwrap();
        let bytes = sealed.encode();
        assert_eq!(bytes[4], DIGEST_SEALED_VERSION);
        assert_eq!(Manifest::decode(&bytes).unwrap(), sealed);
        assert_eq!(sealed.clone().seal_encoded(&key).unwrap(), bytes, "one encoding, sealed either way");
        // The same body under the raw rule is another manifest: formats 1 and 2.
        assert_eq!(sample().encode()[4], FORMAT_VERSION);
    }

    #[test]
    fn under_the_members_rule_a_tree_digest_that_is_not_its_members_is_refused() {
        let mut m = of_members();
        m.members.push(MemberRef { sha256: Digest::of(b"another"), raw_len: 512, compressed_len: 40, key: None });
        let err = Manifest::decode(&m.encode()).unwrap_err();
        assert!(err.to_string().contains("tree digest is not that of its members"), "{err}");
        // The digest covers order and lengths, not only the set of members.
        let (a, b) = (
            MemberRef { sha256: Digest::of(b"a"), raw_len: 512, compressed_len: 40, key: None },
            MemberRef { sha256: Digest::of(b"b"), raw_len: 512, compressed_len: 40, key: None },
        );
        assert_ne!(members_tree_digest(&[a.clone(), b.clone()]), members_tree_digest(&[b.clone(), a.clone()]));
        let longer = MemberRef { raw_len: 1024, ..a.clone() };
        assert_ne!(members_tree_digest(&[a]), members_tree_digest(&[longer]));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let mut b = sample().encode();
        b[4] = 9;
        assert!(matches!(Manifest::decode(&b), Err(ManifestError::UnknownVersion { found: 9 })));
        assert!(ManifestError::UnknownVersion { found: 9 }.to_string().contains("up to 6"));
        assert!(matches!(Manifest::decode(b"nope"), Err(ManifestError::BadMagic)));
        let mut b = sample().encode();
        b.truncate(b.len() - 3);
        assert!(matches!(Manifest::decode(&b), Err(ManifestError::Corrupt { .. })));
    }

    #[test]
    fn an_id_that_is_no_safe_file_name_is_refused() {
        for bad in ["../x", "..", ".hidden", "a/b", "", "a\0b", "a b", &"x".repeat(65), "é"] {
            assert!(!valid_id(bad), "{bad:?}");
            let mut m = sample();
            m.id = bad.to_string();
            let err = Manifest::decode(&m.encode()).unwrap_err();
            assert!(err.to_string().contains("not a valid archive id"), "{err}");
        }
        for good in ["20261122T030000.000Z-deadbeef", "a", "A-1_2.3", &"x".repeat(64)] {
            assert!(valid_id(good), "{good:?}");
        }
    }

    #[test]
    fn a_member_claiming_an_absurd_size_is_refused_before_anything_is_allocated() {
        for (raw, compressed) in [(u64::MAX, 10), (10, 1 << 40), (MAX_MEMBER_BYTES + 1, 10)] {
            let mut m = sample();
            m.members[0].raw_len = raw;
            m.members[0].compressed_len = compressed;
            let err = Manifest::decode(&m.encode()).unwrap_err();
            assert!(err.to_string().contains("bound"), "{err}");
        }
    }

    #[test]
    fn a_sealed_manifest_round_trips_and_names_its_signer() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let mut m = sample();
        m.seal_with(&key).unwrap();
        let back = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.signer(), Some(key.public().to_peer_id().to_string().as_str()));
        assert_eq!(sample().signer(), None);
    }

    #[test]
    fn a_sealed_manifest_altered_or_resigned_in_another_s_name_is_refused() {
        let (key, thief) =
            (libp2p::identity::Keypair::generate_ed25519(), libp2p::identity::Keypair::generate_ed25519());
        let mut m = sample();
        m.seal_with(&key).unwrap();
        // Any change to the body after sealing breaks the seal.
        let mut altered = m.clone();
        altered.created_ms += 1;
        let err = Manifest::decode(&altered.encode()).unwrap_err();
        assert!(matches!(err, ManifestError::BadSeal { .. }), "{err}");
        // A thief's signature under the owner's name.
        let mut forged = sample();
        forged.seal_with(&thief).unwrap();
        if let Some(seal) = forged.seal.as_mut() {
            seal.signer = key.public().to_peer_id().to_string();
        }
        assert!(matches!(Manifest::decode(&forged.encode()), Err(ManifestError::BadSeal { .. })));
        // A signer that is no ed25519 peer id.
        if let Some(seal) = forged.seal.as_mut() {
            seal.signer = "not-a-peer".into();
        }
        assert!(matches!(Manifest::decode(&forged.encode()), Err(ManifestError::BadSeal { .. })));
    }

    /// Format 5 signs the body's digest: altering the body, or passing a
    /// seal off as the other scheme (version byte 4 ↔ 5), breaks it.
    #[test]
    fn a_digest_seal_is_refused_when_altered_or_read_as_the_other_scheme() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let mut m = of_members();
        let bytes = m.seal_encoded(&key).unwrap();
        assert_eq!(bytes[4], DIGEST_SEALED_VERSION);
        let back = Manifest::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert!(back.seal.as_ref().is_some_and(|s| s.over_digest));
        let mut altered = m.clone();
        altered.created_ms += 1;
        assert!(matches!(Manifest::decode(&altered.encode()), Err(ManifestError::BadSeal { .. })));
        let mut as_four = bytes.clone();
        as_four[4] = SEALED_MEMBER_TREE_VERSION;
        assert!(matches!(Manifest::decode(&as_four), Err(ManifestError::BadSeal { .. })));
        // A format-4 seal (over the body) read as format 5.
        let mut old = of_members();
        old.seal = Some(Seal {
            signer: key.public().to_peer_id().to_string(),
            sig: ByteBuf::from(key.sign(&old.body()).unwrap()),
            over_digest: false,
        });
        let four = old.encode();
        assert_eq!(four[4], SEALED_MEMBER_TREE_VERSION);
        assert_eq!(Manifest::decode(&four).unwrap(), old, "format 4 still reads");
        let mut as_five = four;
        as_five[4] = DIGEST_SEALED_VERSION;
        assert!(matches!(Manifest::decode(&as_five), Err(ManifestError::BadSeal { .. })));
    }
}
