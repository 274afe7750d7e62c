//! Signatures of what a node writes into the log: its entries, and every
//! register of the mesh state that its entries write (see `super::mesh`).
//!
//! A signature is ed25519, by the writer's identity key (the key of its
//! libp2p peer id, `DATA_DIR/identity.key`). A peer id of an ed25519 key
//! holds the public key itself, so anyone can check a signature knowing
//! only the writer's peer id.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ed25519 signature (64 bytes). Ordered by its bytes: two signatures
/// over one thing come only from a writer that lies, and then every node
/// keeps the same one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sig(pub [u8; 64]);

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

impl Serialize for Sig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        let arr: [u8; 64] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::custom(format!("a signature of {} bytes, not 64", bytes.len())))?;
        Ok(Sig(arr))
    }
}

/// What signs: a node's identity key.
pub trait Signer {
    fn sign(&self, msg: &[u8]) -> Sig;
}

impl Signer for libp2p::identity::Keypair {
    fn sign(&self, msg: &[u8]) -> Sig {
        // Signing with an ed25519 key cannot fail; an identity of another
        // kind (never made by backmesh) signs nothing that verifies.
        let sig = libp2p::identity::Keypair::sign(self, msg).unwrap_or_default();
        Sig(sig.try_into().unwrap_or([0; 64]))
    }
}

/// The public key in an ed25519 peer id, if it is one.
pub fn key_of_peer(peer: &str) -> Option<libp2p::identity::PublicKey> {
    let peer = peer.parse::<libp2p::PeerId>().ok()?;
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // Ed25519 ids hold the public key itself (the identity hash).
    if mh.code() != 0 {
        return None;
    }
    libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()
}

/// Whether `sig` is the signature of the key of peer id `signer` over `msg`.
pub fn holds(signer: &str, msg: &[u8], sig: &[u8]) -> bool {
    key_of_peer(signer).is_some_and(|k| k.verify(msg, sig))
}

/// A register's seal as a node holds it. A node keeps in memory only
/// whether a register is sealed: the signatures (64 bytes each, most of a
/// sealed state's size) live in the state's records on disk, and are read
/// back only when records are sent to a peer (`super::state_disk`).
///
/// Two seals compare by whether they are sealed alone: a register's
/// version is its time, then sealed over unsealed; which bytes seal it
/// (checked before anything is merged) does not order it.
#[derive(Clone, Default)]
pub enum Seal {
    /// Not sealed (a state from before seals, or a forged seal dropped).
    #[default]
    None,
    /// Sealed; the signature is in the record as last written to disk.
    Stored,
    /// Sealed; the signature itself: a register that travels, or that was
    /// not written to disk yet.
    Sig(Box<Sig>),
}

impl Seal {
    pub fn of(sig: Sig) -> Self {
        Seal::Sig(Box::new(sig))
    }

    pub fn is_sealed(&self) -> bool {
        !matches!(self, Seal::None)
    }

    /// The signature, when this seal carries it.
    pub fn sig(&self) -> Option<&Sig> {
        match self {
            Seal::Sig(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this seal's signature is on disk only.
    pub fn is_stored(&self) -> bool {
        matches!(self, Seal::Stored)
    }

    /// Nothing to encode: unsealed, or its signature is on disk only.
    pub fn carries_nothing(&self) -> bool {
        !matches!(self, Seal::Sig(_))
    }

    /// Keeps only that it is sealed (its signature is written).
    pub fn store(&mut self) {
        if let Seal::Sig(_) = self {
            *self = Seal::Stored;
        }
    }
}

impl fmt::Debug for Seal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seal::None => f.write_str("None"),
            Seal::Stored => f.write_str("Stored"),
            Seal::Sig(s) => write!(f, "{s:?}"),
        }
    }
}

impl PartialEq for Seal {
    fn eq(&self, other: &Self) -> bool {
        self.is_sealed() == other.is_sealed()
    }
}

impl Eq for Seal {}

impl PartialOrd for Seal {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Seal {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.is_sealed().cmp(&other.is_sealed())
    }
}

impl std::hash::Hash for Seal {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.is_sealed().hash(h)
    }
}

/// Encoded as the signature's bytes, or as nothing (fields of this type
/// are skipped with [`Seal::carries_nothing`]): a seal whose signature is
/// on disk must be filled in before its record leaves the node.
impl Serialize for Seal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Seal::Sig(sig) => s.serialize_some(&**sig),
            _ => s.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for Seal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Option::<Sig>::deserialize(d)?.map_or(Seal::None, Seal::of))
    }
}
