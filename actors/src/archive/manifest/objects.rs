//! Manifest format 6: the public, signed part of an encrypted archive
//! (docs/encryption.md §2.6, docs/archive-format.md).
//!
//! Holders and the bucket read this part and nothing else: which objects
//! the archive is made of, each named by the SHA-256 of its (sealed)
//! bytes and given with its stored length, the data key's id, and the
//! data key wrapped to the node and the operator's recovery recipients.
//! File names, sizes, times, statistics and warnings live in sealed
//! objects the manifest lists (`index`, `head`): without the key, a
//! holder checks, repairs and keeps every object, and learns nothing of
//! what they hold.
//!
//! The body is CBOR, written by serde and checked on decode to be exactly
//! what this version writes (unknown fields are refused, not half
//! trusted); the seal signs `"backmesh manifest seal v6\0"` and the
//! body's SHA-256. The tree digest is taken over every object in order
//! (`objects_tree_digest`) and is checked on decode. This module is the
//! body's form; the manifest module reads it into a [`super::Manifest`].

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::hash::Digest;

/// The format byte of an encrypted archive's manifest.
pub const OBJECTS_VERSION: u8 = 6;

/// The only suite so far: objects sealed with XChaCha20-Poly1305 and
/// synthetic nonces (`backmesh_crypt::seal_object`).
pub const SUITE_XCHACHA_SIV: u8 = 1;

/// Wrapped keys a manifest carries at most, and the length of each.
pub const MAX_KEYS: usize = 16;
pub const MAX_KEY_LEN: usize = backmesh_crypt::wrap::MAX_BUNDLE_LEN;

/// What a format-6 seal signs: a domain tag and the SHA-256 of the body.
pub fn seal_message(body: &[u8]) -> Vec<u8> {
    let mut msg = b"backmesh manifest seal v6\0".to_vec();
    msg.extend_from_slice(&Digest::of(body).0);
    msg
}

/// An object as the body lists it: `c` its name, `n` its length, and for
/// a delta `k`/`kn`, the keyframe it applies to.
#[derive(Serialize, Deserialize)]
pub(super) struct Entry {
    pub(super) c: Digest,
    pub(super) n: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) k: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) kn: Option<u64>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Head {
    pub(super) c: Digest,
    pub(super) n: u64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Suite {
    pub(super) suite: u8,
    pub(super) kid: ByteBuf,
}

/// The body of a format-6 manifest, in the order it is written.
#[derive(Serialize, Deserialize)]
pub(super) struct Body {
    pub(super) id: String,
    pub(super) node: String,
    pub(super) path: String,
    pub(super) created_ms: i64,
    pub(super) order_ms: i64,
    pub(super) crypt: Suite,
    pub(super) keys: Vec<ByteBuf>,
    pub(super) members: Vec<Entry>,
    pub(super) index: Vec<Entry>,
    pub(super) head: Head,
    pub(super) tree_digest: Digest,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::objects_tree_digest;
    use crate::archive::manifest::{ArchiveStats, Crypt, Manifest, MemberRef, ObjRef, TreeRule, MAX_OBJECT_BYTES};

    fn obj(tag: &[u8], len: u64) -> ObjRef {
        ObjRef { cid: Digest::of(tag), len }
    }

    fn full(tag: &[u8], len: u64) -> MemberRef {
        MemberRef { sha256: Digest::of(tag), raw_len: 0, compressed_len: len, key: None }
    }

    /// An encrypted archive's public manifest: a full member, a delta
    /// against it, a repeated member, two file-table groups (one a
    /// delta), a head.
    pub(crate) fn sample() -> Manifest {
        let a = full(b"a", 300);
        let delta = MemberRef { key: Some(obj(b"a", 300)), ..full(b"d", 40) };
        let members = vec![a.clone(), delta, a];
        let index = vec![full(b"i1", 200), MemberRef { key: Some(obj(b"i0", 180)), ..full(b"i2", 30) }];
        let head = obj(b"h", 90);
        Manifest {
            id: "20261122T030000.000Z-deadbeef".into(),
            node: "n1".into(),
            path: "/srv/app".into(),
            created_ms: 1_795_000_000_000,
            order_ms: 1_795_000_000_001,
            tree_digest: objects_tree_digest(&members, &index, &head),
            tgz_len: members.iter().map(|m| m.compressed_len).sum(),
            members,
            files: Vec::new(),
            tgz_sha256: Digest::default(),
            raw_len: 0,
            stats: ArchiveStats::default(),
            warnings: Vec::new(),
            excludes: Vec::new(),
            seal: None,
            tree_rule: TreeRule::Objects,
            crypt: Some(Crypt { suite: SUITE_XCHACHA_SIV, kid: [7; 8], keys: vec![b"wrapped".to_vec()], index, head }),
        }
    }

    fn key() -> libp2p::identity::Keypair {
        libp2p::identity::Keypair::ed25519_from_bytes([3u8; 32]).unwrap()
    }

    #[test]
    fn a_sealed_public_manifest_round_trips_as_format_6() {
        let mut m = sample();
        let bytes = m.seal_encoded(&key()).unwrap();
        assert_eq!(bytes[4], OBJECTS_VERSION);
        assert_eq!(bytes, m.encode(), "one encoding");
        let back = Manifest::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert!(back.encrypted() && back.seal.as_ref().is_some_and(|s| s.over_digest));
        assert_eq!(back.signer(), Some(key().public().to_peer_id().to_string().as_str()));
        // What a holder keeps: each member after its keyframe, then the
        // file table's groups likewise, then the head.
        let names: Vec<Digest> = back.digests().collect();
        let want: Vec<Digest> =
            [&b"a"[..], b"a", b"d", b"a", b"i1", b"i0", b"i2", b"h"].iter().map(|t| Digest::of(t)).collect();
        assert_eq!(names, want);
        // Nothing of the content is in it: no file table, no counts.
        assert!(back.files.is_empty() && back.stats == ArchiveStats::default() && back.raw_len == 0);
    }

    #[test]
    fn an_unsealed_altered_or_resealed_public_manifest_is_refused() {
        let mut m = sample();
        let bytes = m.seal_encoded(&key()).unwrap();
        // Unsealed: never read.
        let err = Manifest::decode(&sample().encode()).unwrap_err();
        assert!(err.to_string().contains("must be sealed"), "{err}");
        // Any byte of the body changed.
        let body_at = bytes.len() / 2;
        let mut altered = bytes.clone();
        altered[body_at] ^= 1;
        assert!(Manifest::decode(&altered).is_err());
        // A format-5 seal over the same body does not pass as format 6.
        let mut five = bytes.clone();
        five[4] = super::super::DIGEST_SEALED_VERSION;
        assert!(Manifest::decode(&five).is_err());
        // Signed as it is, but a tree digest that is not its objects'.
        let mut wrong = sample();
        wrong.tree_digest = Digest::of(b"other");
        let err = Manifest::decode(&wrong.seal_encoded(&key()).unwrap()).unwrap_err();
        assert!(err.to_string().contains("tree digest is not that of its objects"), "{err}");
        // The digest covers keyframes and the file table, not only members.
        let mut moved = sample();
        if let Some(c) = moved.crypt.as_mut() {
            c.index[1].key = Some(obj(b"elsewhere", 180));
        }
        assert!(Manifest::decode(&moved.seal_encoded(&key()).unwrap()).is_err());
    }

    #[test]
    fn absurd_or_unknown_contents_are_refused() {
        let sealed = |f: &dyn Fn(&mut Manifest)| {
            let mut m = sample();
            f(&mut m);
            if let Some(c) = m.crypt.clone() {
                m.tree_digest = objects_tree_digest(&m.members, &c.index, &c.head);
            }
            Manifest::decode(&m.seal_encoded(&key()).unwrap()).map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(sealed(&|_| ()).is_ok());
        let too_big = |m: &mut Manifest| m.members[0].compressed_len = MAX_OBJECT_BYTES + 1;
        assert!(sealed(&too_big).unwrap_err().contains("bound"));
        let itself = |m: &mut Manifest| m.members[0].key = Some(obj(b"a", 300));
        assert!(sealed(&itself).unwrap_err().contains("against itself"));
        let suite = |m: &mut Manifest| m.crypt.as_mut().unwrap().suite = 9;
        assert!(sealed(&suite).unwrap_err().contains("suite 9"));
        let keys = |m: &mut Manifest| m.crypt.as_mut().unwrap().keys = vec![vec![0; 10]; MAX_KEYS + 1];
        assert!(sealed(&keys).unwrap_err().contains("wrapped keys"));
        let long = |m: &mut Manifest| m.crypt.as_mut().unwrap().keys = vec![vec![0; MAX_KEY_LEN + 1]];
        assert!(sealed(&long).unwrap_err().contains("wrapped keys"));
    }

    #[test]
    fn a_body_with_a_field_this_version_does_not_write_is_refused() {
        // The body with one more key in its top map, signed by its node.
        let m = sample();
        let body = m.body();
        let mut value: ciborium::Value = ciborium::from_reader(&body[..]).unwrap();
        if let ciborium::Value::Map(entries) = &mut value {
            entries.push((ciborium::Value::Text("later".into()), ciborium::Value::Integer(1.into())));
        }
        let mut extra = Vec::new();
        ciborium::into_writer(&value, &mut extra).unwrap();
        let sig = key().sign(&seal_message(&extra)).unwrap();
        let env = super::super::Envelope {
            body: ByteBuf::from(extra),
            seal: super::super::Seal {
                signer: key().public().to_peer_id().to_string(),
                sig: ByteBuf::from(sig),
                over_digest: true,
            },
        };
        let mut bytes = super::super::MAGIC.to_vec();
        bytes.push(OBJECTS_VERSION);
        ciborium::into_writer(&env, &mut bytes).unwrap();
        let err = Manifest::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("does not know"), "{err}");
    }
}
