//! The list of an archive's members kept beside its manifest, so that
//! collection reads a few bytes per archive rather than its manifest.

use std::collections::HashSet;

use crate::hash::Digest;

/// Digests are uniform: a fast hash will do.
pub(crate) type DigestSet = HashSet<Digest, foldhash::fast::RandomState>;

/// The extension of an archive's member list, beside its manifest.
pub(crate) const MEMBER_LIST_EXT: &str = "members";

pub(crate) const MEMBER_LIST_MAGIC: &[u8; 5] = b"BMML1";

/// A member list: magic, count (u64 LE), the digests, then the SHA-256
/// of all that. A list with a wrong digest or length is not used: a list
/// that says too little would let a collection free members in use.
pub(crate) fn encode_member_list<'a>(digests: impl ExactSizeIterator<Item = &'a Digest>) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + digests.len() * 32 + 32);
    out.extend_from_slice(MEMBER_LIST_MAGIC);
    out.extend_from_slice(&(digests.len() as u64).to_le_bytes());
    for d in digests {
        out.extend_from_slice(&d.0);
    }
    let sum = Digest::of(&out);
    out.extend_from_slice(&sum.0);
    out
}

pub(crate) fn decode_member_list(bytes: &[u8]) -> Option<Vec<Digest>> {
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    let rest = body.strip_prefix(MEMBER_LIST_MAGIC)?;
    let (count, digests) = rest.split_at_checked(8)?;
    let count = u64::from_le_bytes(count.try_into().ok()?);
    if digests.len() as u64 != count.checked_mul(32)? || Digest::of(body).0 != sum {
        return None;
    }
    Some(digests.chunks_exact(32).map(|c| Digest(c.try_into().unwrap_or([0; 32]))).collect())
}
