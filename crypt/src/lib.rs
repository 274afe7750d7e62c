//! What backmesh encrypts, and how (issue 37, step 1 of its plan): a
//! node's data key ([`DataKey`]) and the sealed objects made under it
//! ([`seal_object`], [`open_object`]), which holders and the bucket keep
//! and check without any key (they are named by the SHA-256 of their
//! bytes, as members are today).
//!
//! Nothing here is wired into backups yet: later steps make members,
//! deltas and the manifest's file table sealed objects (docs/encryption.md).
//!
//! Only RustCrypto primitives: HKDF-SHA256 derives the keys,
//! XChaCha20-Poly1305 seals, HMAC-SHA256 makes the nonce. The nonce is a
//! PRF of everything the AEAD authenticates (the SIV construction): the
//! same plaintext under the same node key and context gives the same
//! object, so equal content is stored once within a node's series, and
//! anything else gets an unrelated 192-bit nonce; no nonce state is kept.

pub mod delta;
pub mod gzip;
pub mod keyfile;
pub mod member;
pub mod wrap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::Mac;
use sha2::Sha256;

/// The bytes every sealed object starts with (never `1f 8b`: a sealed
/// object is not mistaken for a gzip member).
pub const MAGIC: &[u8; 4] = b"BMO1";
/// Magic, kind, key id, nonce.
pub const HEADER_LEN: usize = 4 + 1 + 8 + 24;
/// Poly1305's tag.
pub const TAG_LEN: usize = 16;
/// What sealing adds to a plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// What a sealed object holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A gzip member, as archives are made of.
    Member,
    /// A delta from an earlier member (its context names that member).
    Delta,
    /// A group of the file table.
    Index,
    /// An archive's statistics, warnings and excludes.
    Head,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Member => 1,
            Kind::Delta => 2,
            Kind::Index => 3,
            Kind::Head => 4,
        }
    }

    fn of(b: u8) -> Option<Kind> {
        [Kind::Member, Kind::Delta, Kind::Index, Kind::Head].into_iter().find(|k| k.byte() == b)
    }
}

/// Why a sealed object does not open.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a sealed object (too short, or no `BMO1` header)")]
    NotSealed,
    #[error("a sealed object of an unknown kind ({0})")]
    UnknownKind(u8),
    #[error("sealed under key {found}, not this node's {expected}")]
    OtherKey { found: String, expected: String },
    #[error("the object does not open: changed, damaged, or sealed for another context")]
    Damaged,
}

/// A node's data key: 32 secret bytes from which the keys that seal its
/// objects are derived. Never leaves the node but wrapped (later steps).
#[derive(Clone)]
pub struct DataKey {
    secret: [u8; 32],
    aead: [u8; 32],
    nonce: [u8; 32],
    cut: [u8; 32],
    id: [u8; 8],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "DataKey({})", self.id())
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        // Best effort: the derived keys go with the secret.
        self.secret = [0; 32];
        self.aead = [0; 32];
        self.nonce = [0; 32];
        self.cut = [0; 32];
    }
}

/// HKDF-SHA256 of `secret` under backmesh's salt, for `info`.
fn derive<const N: usize>(secret: &[u8; 32], info: &str) -> [u8; N] {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(b"backmesh data key v1"), secret);
    let mut out = [0u8; N];
    hk.expand(info.as_bytes(), &mut out).expect("HKDF-SHA256 gives up to 8160 bytes");
    out
}

impl DataKey {
    /// The key whose secret is `secret`.
    pub fn from_secret(secret: [u8; 32]) -> DataKey {
        DataKey {
            aead: derive(&secret, "object aead"),
            nonce: derive(&secret, "object nonce"),
            cut: derive(&secret, "cut points"),
            id: derive(&secret, "key id"),
            secret,
        }
    }

    /// A new random key.
    pub fn generate() -> Result<DataKey, getrandom::Error> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)?;
        Ok(DataKey::from_secret(secret))
    }

    /// The key's id (16 hex digits): names it in objects and key files,
    /// and tells a key unwrapped later from another.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// The 8-byte key id.
    pub fn id_bytes(&self) -> [u8; 8] {
        self.id
    }

    /// A keyed hash of `data` (HMAC-SHA256 under the key's own "cut
    /// points" key), as a number: where the file table is cut into
    /// groups, so that a holder cannot tell the cuts from the paths.
    pub fn cut_mark(&self, data: &[u8]) -> u64 {
        let mut mac =
            <hmac::Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.cut).expect("HMAC takes any key length");
        mac.update(data);
        let tag = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag[..8]);
        u64::from_le_bytes(first)
    }

    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    fn aad(&self, kind: Kind, context: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(13 + context.len());
        aad.extend_from_slice(MAGIC);
        aad.push(kind.byte());
        aad.extend_from_slice(&self.id);
        aad.extend_from_slice(context);
        aad
    }

    /// The synthetic nonce: HMAC-SHA256 over the associated data (its
    /// length first, so no two splits of aad and plaintext collide) and
    /// the plaintext.
    fn nonce_of(&self, aad: &[u8], plaintext: &[u8]) -> [u8; 24] {
        let mut mac =
            <hmac::Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.nonce).expect("HMAC takes any key length");
        mac.update(&(aad.len() as u64).to_le_bytes());
        mac.update(aad);
        mac.update(plaintext);
        let tag = mac.finalize().into_bytes();
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&tag[..24]);
        nonce
    }
}

/// Seals `plaintext` of kind `kind` under `key`, bound to `context`
/// (empty, or what the object depends on: a delta's base). The same
/// inputs give the same bytes.
pub fn seal_object(key: &DataKey, kind: Kind, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let aad = key.aad(kind, context);
    let nonce = key.nonce_of(&aad, plaintext);
    let aead = XChaCha20Poly1305::new((&key.aead).into());
    let sealed = aead
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
        .expect("XChaCha20-Poly1305 seals any length backmesh makes");
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.extend_from_slice(&aad[..13]);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// The kind and id of the key of a sealed object, read without any key
/// (what a holder may learn of it).
pub fn header(object: &[u8]) -> Result<(Kind, String), OpenError> {
    if object.len() < OVERHEAD || &object[..4] != MAGIC {
        return Err(OpenError::NotSealed);
    }
    let kind = Kind::of(object[4]).ok_or(OpenError::UnknownKind(object[4]))?;
    Ok((kind, hex::encode(&object[5..13])))
}

/// Opens a sealed object made under `key` for `context`: its kind and
/// plaintext. Any changed byte, another key or another context is refused.
pub fn open_object(key: &DataKey, context: &[u8], object: &[u8]) -> Result<(Kind, Vec<u8>), OpenError> {
    let (kind, id) = header(object)?;
    if id != key.id() {
        return Err(OpenError::OtherKey { found: id, expected: key.id() });
    }
    let aad = key.aad(kind, context);
    let nonce = &object[13..HEADER_LEN];
    let aead = XChaCha20Poly1305::new((&key.aead).into());
    let plaintext = aead
        .decrypt(XNonce::from_slice(nonce), Payload { msg: &object[HEADER_LEN..], aad: &aad })
        .map_err(|_| OpenError::Damaged)?;
    Ok((kind, plaintext))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> DataKey {
        DataKey::from_secret([byte; 32])
    }

    #[test]
    fn the_same_content_seals_to_the_same_bytes_and_opens_back() {
        let k = key(7);
        let a = seal_object(&k, Kind::Member, b"", b"some gzip member");
        assert_eq!(a, seal_object(&k, Kind::Member, b"", b"some gzip member"), "deterministic: dedup holds");
        assert_eq!(a.len(), b"some gzip member".len() + OVERHEAD);
        assert_eq!(open_object(&k, b"", &a).unwrap(), (Kind::Member, b"some gzip member".to_vec()));
        assert_eq!(header(&a).unwrap(), (Kind::Member, k.id()));
        // Other content, kind, context or key: other bytes, another nonce.
        let nonce = |o: &[u8]| o[13..HEADER_LEN].to_vec();
        for other in [
            seal_object(&k, Kind::Member, b"", b"some gzip membes"),
            seal_object(&k, Kind::Index, b"", b"some gzip member"),
            seal_object(&k, Kind::Member, b"base", b"some gzip member"),
            seal_object(&key(8), Kind::Member, b"", b"some gzip member"),
        ] {
            assert_ne!(nonce(&other), nonce(&a));
        }
        // The plaintext is nowhere in the object.
        assert!(!a.windows(4).any(|w| w == b"gzip"));
    }

    #[test]
    fn a_changed_byte_another_key_or_another_context_is_refused() {
        let k = key(1);
        let o = seal_object(&k, Kind::Delta, b"base member", b"delta bytes");
        for i in 0..o.len() {
            let mut bad = o.clone();
            bad[i] ^= 0x01;
            assert!(open_object(&k, b"base member", &bad).is_err(), "byte {i} flipped and still opened");
        }
        assert_eq!(open_object(&k, b"other base", &o), Err(OpenError::Damaged));
        let err = open_object(&key(2), b"base member", &o).unwrap_err();
        assert!(matches!(err, OpenError::OtherKey { .. }), "{err}");
        assert_eq!(open_object(&k, b"", b"\x1f\x8b\x08\x00"), Err(OpenError::NotSealed));
        assert_eq!(open_object(&k, b"", &o[..OVERHEAD - 1]), Err(OpenError::NotSealed));
    }

    /// Golden bytes: the format may not change without a new magic, and
    /// it is the construction docs/encryption.md describes.
    #[test]
    fn golden_object() {
        let k = key(0x42);
        assert_eq!(k.id(), GOLDEN_ID);
        let o = seal_object(&k, Kind::Member, b"ctx", b"backmesh");
        assert_eq!(hex::encode(&o), GOLDEN_OBJECT);
        assert_eq!(open_object(&k, b"ctx", &hex::decode(GOLDEN_OBJECT).unwrap()).unwrap().1, b"backmesh");
    }

    // From crypt/tests/golden.py, which computes them independently
    // (Python's `cryptography`, and HChaCha20 checked against its RFC
    // draft's test vector).
    const GOLDEN_ID: &str = "54d1382a532982b9";
    const GOLDEN_OBJECT: &str = "424d4f310154d1382a532982b947e11a57a161bfd1e612491b55ab996a0030634fca28bc6760f52fb2540390175e1ab4456e1fbeb310b7ce67d38064b9";
}
