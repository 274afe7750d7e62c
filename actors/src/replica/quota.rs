//! How much of a holder one other node's archives may take.
//!
//! A node with the swarm key may push as many archives of its own series
//! as it likes; without a bound it could fill every holder's disk and
//! leave no room for the others' backups. Each holder therefore keeps
//! what one origin's archives take here (their distinct members, in
//! bytes) within a quota, and refuses the offer of an archive that would
//! take that origin past it. The refusal names the quota on both sides,
//! and the holder's status counts it against the origin.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::store::{Store, StoreError};

/// The bound on one origin's archives on this holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    /// At most this many bytes.
    Bytes(u64),
    /// At most this share (1–100) of the room this holder has for that
    /// origin: its free space plus what the origin's archives already
    /// take. At 50 an origin never holds more here than stays free for
    /// every other.
    Percent(u8),
}

impl Default for Quota {
    fn default() -> Self {
        Quota::Percent(50)
    }
}

impl Quota {
    /// The most `origin`'s archives may take here, holding `held` of it
    /// with `free` bytes left on the disk.
    pub fn limit(&self, held: u64, free: u64) -> u64 {
        match *self {
            Quota::Bytes(n) => n,
            Quota::Percent(p) => ((held as u128 + free as u128) * p as u128 / 100).min(u64::MAX as u128) as u64,
        }
    }
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quota::Bytes(n) => write!(f, "{}", backmesh_api::human_bytes(*n)),
            Quota::Percent(p) => write!(f, "{p}% of the room here"),
        }
    }
}

/// `200G`, `1.5T`, `512MiB`, `4096` (bytes) or `40%`.
pub fn parse_quota(text: &str) -> Result<Quota, String> {
    let t = text.trim();
    let bad = || format!("bad quota `{text}`: use a size (500M, 200G, 2T) or a share of the disk (40%)");
    if let Some(p) = t.strip_suffix('%') {
        return match p.trim().parse::<u8>() {
            Ok(p @ 1..=100) => Ok(Quota::Percent(p)),
            _ => Err(bad()),
        };
    }
    let lower = t.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let scale: u64 = match unit {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let n: f64 = digits.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n <= 0.0 || n * scale as f64 >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Quota::Bytes((n * scale as f64) as u64))
}

/// What each origin's archives take on this holder: computed from the
/// manifests at most every [`USAGE_FRESH`], and grown by each offer
/// accepted meanwhile, so a burst of offers cannot pass the quota
/// between two counts.
#[derive(Debug, Default)]
pub struct Usage {
    by_origin: HashMap<String, (Instant, u64)>,
}

/// How long a count of an origin's usage stands before it is made again.
const USAGE_FRESH: Duration = Duration::from_secs(30);

impl Usage {
    /// Bytes `origin`'s archives take here: each distinct member once.
    pub fn of(&mut self, store: &Store, origin: &str) -> Result<u64, StoreError> {
        if let Some((at, n)) = self.by_origin.get(origin) {
            if at.elapsed() < USAGE_FRESH {
                return Ok(*n);
            }
        }
        let n = count(store, origin)?;
        self.by_origin.insert(origin.to_string(), (Instant::now(), n));
        Ok(n)
    }

    /// An offer of `origin`'s that will add `bytes` here was accepted.
    pub fn grew(&mut self, origin: &str, bytes: u64) {
        if let Some((_, n)) = self.by_origin.get_mut(origin) {
            *n = n.saturating_add(bytes);
        }
    }
}

/// Bytes of the distinct members of `origin`'s archives in `store`.
fn count(store: &Store, origin: &str) -> Result<u64, StoreError> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    for s in store.list_all()?.into_iter().filter(|s| s.node == origin) {
        let m = match store.manifest(&s.node, &s.path, Some(&s.id)) {
            Ok(m) => m,
            // Being removed meanwhile: it takes nothing.
            Err(StoreError::NoSuchArchive { .. }) => continue,
            Err(e) => return Err(e),
        };
        for r in &m.members {
            if seen.insert(r.sha256) {
                total = total.saturating_add(r.compressed_len);
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_reads_sizes_and_shares_and_refuses_the_rest() {
        assert_eq!(parse_quota("40%"), Ok(Quota::Percent(40)));
        assert_eq!(parse_quota("100%"), Ok(Quota::Percent(100)));
        assert_eq!(parse_quota("4096"), Ok(Quota::Bytes(4096)));
        assert_eq!(parse_quota("512M"), Ok(Quota::Bytes(512 << 20)));
        assert_eq!(parse_quota("200GiB"), Ok(Quota::Bytes(200 << 30)));
        assert_eq!(parse_quota("1.5t"), Ok(Quota::Bytes(3 << 39)));
        for bad in ["", "0", "0%", "101%", "-5G", "5X", "G", "lots", "1e30T"] {
            let e = parse_quota(bad).unwrap_err();
            assert!(e.contains("bad quota"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_share_counts_what_the_origin_holds_and_what_is_free() {
        assert_eq!(Quota::Percent(50).limit(0, 1000), 500);
        assert_eq!(Quota::Percent(50).limit(600, 400), 500, "already past: no more");
        assert_eq!(Quota::Bytes(7).limit(600, 400), 7);
        assert_eq!(Quota::Percent(100).limit(u64::MAX, u64::MAX), u64::MAX);
    }
}
