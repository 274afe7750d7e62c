//! [`Digest`]: a SHA-256 value, the address of every stored byte in backmesh.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest. Serialised as a 32-byte CBOR byte string, shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest(Sha256::digest(data).into())
    }

    /// The digest a running hasher has reached.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Digest(hasher.finalize().into())
    }

    pub fn to_hex(&self) -> String {
        let mut out = [0u8; 64];
        // Hex digits are ASCII.
        String::from_utf8_lossy(self.hex_into(&mut out)).into_owned()
    }

    /// The 64 lowercase hex digits, written into `out` (no allocation).
    pub fn hex_into<'a>(&self, out: &'a mut [u8; 64]) -> &'a [u8] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
        }
        out
    }

    /// Parses 64 hex digits; `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Digest(out))
    }

    /// The first 8 bytes as an integer: a uniform hash for placement and cut decisions.
    pub fn prefix_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..16])
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a 32-byte SHA-256 digest")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Digest, E> {
                let arr: [u8; 32] = v.try_into().map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Digest(arr))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Digest, E> {
                self.visit_bytes(&v)
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let d = Digest::of(b"backmesh");
        assert_eq!(d.to_hex(), hex::encode(d.0));
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex("zz"), None);
    }

    #[test]
    fn cbor_round_trip_is_a_byte_string() {
        let d = Digest::of(b"x");
        let mut buf = Vec::new();
        ciborium::into_writer(&d, &mut buf).unwrap();
        assert_eq!(buf.len(), 2 + 32, "major type 2 with a one-byte length");
        let back: Digest = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(back, d);
    }
}
