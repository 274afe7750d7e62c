//! A sealed archive's members as the node and the light client open them:
//! a delta's plaintext, a gzip member inflated within a bound, and the
//! digest of the member list a sealed head vouches for.
//!
//! A delta's plaintext: `level` (1 byte), the member's raw length (u64
//! LE), the CRC-32 of its raw bytes (u32 LE), the length of the gzip
//! member a full run makes of them (u64 LE), the length of the operations
//! (u64 LE), the operations, then the literals ([`crate::delta`]).

use std::io::Read;

use sha2::{Digest as _, Sha256};

/// A delta's plaintext, read.
pub struct DeltaBody<'a> {
    pub level: u32,
    pub raw_len: u64,
    pub crc: u32,
    pub gz_len: u64,
    pub ops: &'a [u8],
    pub literals: &'a [u8],
}

/// The plaintext of a delta that turns a keyframe's raw bytes into `raw`.
pub fn encode_delta(level: u32, raw: &[u8], gz_len: u64, ops: &[u8], literals: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(29 + ops.len() + literals.len());
    out.push(level.min(9) as u8);
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(raw).to_le_bytes());
    out.extend_from_slice(&gz_len.to_le_bytes());
    out.extend_from_slice(&(ops.len() as u64).to_le_bytes());
    out.extend_from_slice(ops);
    out.extend_from_slice(literals);
    out
}

/// A delta's plaintext read back; `None` if it is too short for what it says.
pub fn decode_delta(body: &[u8]) -> Option<DeltaBody<'_>> {
    let u64_at = |at: usize| body.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let level = u32::from(*body.first()?);
    let raw_len = u64_at(1)?;
    let crc = u32::from_le_bytes(body.get(9..13)?.try_into().ok()?);
    let gz_len = u64_at(13)?;
    let ops_len = usize::try_from(u64_at(21)?).ok()?;
    let rest = body.get(29..)?;
    (ops_len <= rest.len()).then(|| DeltaBody {
        level,
        raw_len,
        crc,
        gz_len,
        ops: &rest[..ops_len],
        literals: &rest[ops_len..],
    })
}

/// The CRC-32 a gzip trailer carries.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

/// The raw bytes of gzip member `gz`, at most `limit` (its CRC-32 and
/// length are checked by the decoder).
pub fn inflate(gz: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(gz).take(limit + 1).read_to_end(&mut raw)?;
    if raw.len() as u64 > limit {
        return Err(std::io::Error::other("a member larger than any backmesh makes"));
    }
    Ok(raw)
}

/// One member as a sealed archive lists it: its object's name and length,
/// and for a delta its keyframe's.
pub type Listed = ([u8; 32], u64, Option<([u8; 32], u64)>);

/// The digest of a member list, which an archive's sealed head carries:
/// SHA-256 of `backmesh members v1`, the count (u64 LE), then each
/// member's name, length, and its keyframe's (zeros for a whole member).
/// A reader that opens the head with the data key knows the list it was
/// given is the one the series' node made.
pub fn members_digest(members: impl ExactSizeIterator<Item = Listed>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"backmesh members v1");
    h.update((members.len() as u64).to_le_bytes());
    for (c, n, k) in members {
        h.update(c);
        h.update(n.to_le_bytes());
        let (kc, kn) = k.unwrap_or(([0; 32], 0));
        h.update(kc);
        h.update(kn.to_le_bytes());
    }
    h.finalize().into()
}

/// The tree digest of an encrypted archive (manifest format 6): SHA-256 of
/// `backmesh objects v1`, then for the members and then the file-table
/// groups, the count (u64 LE) and each one's name, length, keyframe name
/// and keyframe length (zeros for none), then the head's name and length.
/// An archive's id ends with its first 8 hex digits: a reader that computes
/// it knows the objects it was given are that archive's.
pub fn objects_digest(
    members: impl ExactSizeIterator<Item = Listed>,
    index: impl ExactSizeIterator<Item = Listed>,
    head: ([u8; 32], u64),
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"backmesh objects v1");
    let mut list = |items: &mut dyn ExactSizeIterator<Item = Listed>| {
        h.update((items.len() as u64).to_le_bytes());
        for (c, n, k) in items {
            h.update(c);
            h.update(n.to_le_bytes());
            let (kc, kn) = k.unwrap_or(([0; 32], 0));
            h.update(kc);
            h.update(kn.to_le_bytes());
        }
    };
    list(&mut { members });
    list(&mut { index });
    h.update(head.0);
    h.update(head.1.to_le_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_body_reads_back_and_a_short_one_is_refused() {
        let body = encode_delta(6, b"raw bytes", 40, b"ops", b"literals");
        let d = decode_delta(&body).unwrap();
        assert_eq!((d.level, d.raw_len, d.crc, d.gz_len), (6, 9, crc32(b"raw bytes"), 40));
        assert_eq!((d.ops, d.literals), (&b"ops"[..], &b"literals"[..]));
        for n in 0..29 {
            assert!(decode_delta(&body[..n]).is_none());
        }
        let mut lying = body.clone();
        lying[21] = 200;
        assert!(decode_delta(&lying).is_none(), "more operations than bytes");
    }
}
