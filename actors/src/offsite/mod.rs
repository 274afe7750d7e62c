//! Offsite copies in an S3-compatible bucket.
//!
//! ```text
//! PREFIX/members/<sha256 hex>                              a gzip member, as stored on nodes
//! PREFIX/manifests/<node hex>/<series hex>/<order>-<id>.bmm  an archive's sealed manifest
//! PREFIX/locks/<upload|gc>-<peer id>-<nonce>               who is writing or collecting now
//! ```
//!
//! Members are named by their digest, so they are stored once for every
//! archive and every node that has them. `<node hex>` is the node name's
//! bytes in hex (names may hold `/`), `<series hex>` is
//! [`crate::store::series_key`], `<order>` the archive's place in its
//! series as 16 hex digits that sort as the order does.
//!
//! **Writes.** An archive goes up members first, its manifest last: an
//! archive whose manifest is in the bucket is whole, and an upload cut
//! short is taken up again by the next round, which sends only the
//! members still missing. Every write is of a whole object named by its
//! content (or, for manifests, by an id that never names other content),
//! so writing twice is writing once.
//!
//! **Collection.** Members no manifest names are deleted by one node at a
//! time (see `sync::collect`). An upload relies on members it finds in the
//! bucket; a collection running meanwhile could delete one the upload's
//! manifest is about to name. Both therefore write a lock first and look
//! for the other's after: of two that start together, at least one sees
//! the other, and a collection that sees an upload's lock stops (an upload
//! that sees a collection's waits for the next round). Locks older than
//! [`LOCK_STALE_MS`] by the storage's own clock are those of processes that
//! died; live holders write theirs again well before.
//!
//! **Object Lock.** In a bucket with Object Lock on, what is written is
//! locked past the grace period, and a restore reads past delete markers
//! and replaced objects ([`locked`]).
//!
//! **Trust.** What comes back from the bucket is checked as what comes
//! from a peer: every member against its digest, every manifest against
//! its node's seal (see [`crate::store::Store::check_origin`]).

pub mod actor;
pub mod bucket;
pub mod locked;
pub mod plan;
pub mod sync;
#[doc(hidden)]
pub mod testing;

pub use bucket::{Bucket, BucketError, OffsiteTarget, Secret};

use crate::hash::Digest;
use crate::store::series_key;

/// A lock not written again for this long (storage clock) is a dead one's.
pub const LOCK_STALE_MS: i64 = 60 * 60_000;
/// A live lock holder writes its lock again this often.
pub const LOCK_REFRESH_MS: i64 = 10 * 60_000;
/// Members no manifest names are kept this long (storage clock) before a
/// collection deletes them, so an upload cut short resumes cheaply.
pub const UNUSED_GRACE_MS: i64 = 6 * 3_600_000;

pub fn member_key(d: &Digest) -> String {
    format!("members/{}", d.to_hex())
}

pub fn node_dir(node: &str) -> String {
    format!("manifests/{}/", hex::encode(node.as_bytes()))
}

pub fn series_dir(node: &str, path: &str) -> String {
    format!("{}{}/", node_dir(node), hex::encode(series_key(node, path)))
}

/// The order as 16 hex digits that sort as the orders do (negatives first).
fn order_hex(order_ms: i64) -> String {
    format!("{:016x}", (order_ms as u64) ^ (1 << 63))
}

pub fn manifest_key(node: &str, path: &str, order_ms: i64, id: &str) -> String {
    format!("{}{}-{id}.bmm", series_dir(node, path), order_hex(order_ms))
}

/// An archive's manifest as listed: (order, id), from its key's last part.
pub fn parse_manifest_name(key: &str) -> Option<(i64, String)> {
    let name = key.rsplit('/').next()?.strip_suffix(".bmm")?;
    let (order, id) = name.split_once('-')?;
    if order.len() != 16 || !crate::archive::manifest::valid_id(id) {
        return None;
    }
    let o = u64::from_str_radix(order, 16).ok()? ^ (1 << 63);
    Some((o as i64, id.to_string()))
}

/// The node name a `manifests/<node hex>/` key is under.
pub fn node_of_key(key: &str) -> Option<String> {
    let hexname = key.strip_prefix("manifests/")?.split('/').next()?;
    String::from_utf8(hex::decode(hexname).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_keys_sort_by_order_and_read_back() {
        let keys: Vec<String> =
            [-5i64, 0, 7, 1_700_000_000_000].iter().map(|o| manifest_key("web/1", "/srv", *o, "a-1")).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for (k, o) in keys.iter().zip([-5i64, 0, 7, 1_700_000_000_000]) {
            assert_eq!(parse_manifest_name(k), Some((o, "a-1".to_string())));
            assert_eq!(node_of_key(k).as_deref(), Some("web/1"));
        }
        assert_eq!(parse_manifest_name("manifests/x/y/zz-a.bmm"), None);
        assert_eq!(parse_manifest_name("manifests/x/y/0000000000000000-../a.bmm"), None);
    }
}
