//! CBOR (ciborium) for every wire message and disk record: one library,
//! one place that bounds what is read.
//!
//! - [`encode`] / [`decode`]: a value to bytes and back, refusing input
//!   over a stated size.
//! - [`Lenient`]: a sequence in which elements of forms this version does
//!   not know (written by a newer node) are counted and left out.

use std::io;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Encodes `v` as CBOR.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec fails only for a value serde cannot represent,
    // which none of ours is (the golden tests would show it).
    let _ = ciborium::into_writer(v, &mut out);
    out
}

/// Decodes CBOR, refusing more than `max` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> io::Result<T> {
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {} bytes exceeds the {max}-byte limit", bytes.len()),
        ));
    }
    ciborium::from_reader(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("malformed message: {e}")))
}

/// A sequence whose elements a newer node may have written in forms this
/// version does not know: those are counted and left out, the others
/// kept, rather than the whole message refused. On the wire, a plain
/// sequence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lenient<T> {
    pub known: Vec<T>,
    /// Elements that did not decode.
    pub unknown: usize,
}

impl<T> From<Vec<T>> for Lenient<T> {
    fn from(known: Vec<T>) -> Self {
        Lenient { known, unknown: 0 }
    }
}

impl<T: Serialize> Serialize for Lenient<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.known.serialize(s)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let all = Vec::<ciborium::Value>::deserialize(d)?;
        let mut out = Lenient { known: Vec::with_capacity(all.len()), unknown: 0 };
        for v in all {
            match v.deserialized::<T>() {
                Ok(t) => out.known.push(t),
                Err(_) => out.unknown += 1,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_truncated_and_oversize_are_invalid_data() {
        let ok = encode(&("n1", 7u32, vec![1u8, 2, 3]));
        assert_eq!(decode::<(String, u32, Vec<u8>)>(&ok, 64).unwrap(), ("n1".into(), 7, vec![1, 2, 3]));
        let e = decode::<(String, u32)>(b"\xff\x00garbage", 64).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(decode::<(String, u32, Vec<u8>)>(&ok[..ok.len() / 2], 64).is_err());
        let e = decode::<(String, u32, Vec<u8>)>(&ok, ok.len() - 1).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
    }

    #[test]
    fn a_lenient_sequence_keeps_what_it_knows_and_counts_the_rest() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        enum Old {
            A(u32),
        }
        #[derive(Serialize)]
        enum New {
            A(u32),
            B(String),
        }
        let bytes = encode(&vec![New::A(1), New::B("x".into()), New::A(2)]);
        let back: Lenient<Old> = decode(&bytes, 1024).unwrap();
        assert_eq!(back.known, vec![Old::A(1), Old::A(2)]);
        assert_eq!(back.unknown, 1);
    }
}
