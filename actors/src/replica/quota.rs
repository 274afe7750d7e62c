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

/// Free space a holder keeps on its disk whatever it is offered.
pub const MARGIN: u64 = 64 << 20;

/// Whether a holder takes `need` more bytes of one origin's archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Take,
    /// Its disk would go below [`MARGIN`].
    NoRoom {
        free: u64,
        need: u64,
    },
    /// The origin would pass its quota here.
    OverQuota {
        held: u64,
        need: u64,
        limit: u64,
    },
}

/// The admission decision, a pure function of what is asked, what the
/// disk has free, what the origin holds here and the quota.
pub fn admit(need: u64, free: u64, held: u64, quota: Quota) -> Admission {
    if need.saturating_add(MARGIN) > free {
        return Admission::NoRoom { free, need };
    }
    let limit = quota.limit(held, free);
    if held.saturating_add(need) > limit {
        return Admission::OverQuota { held, need, limit };
    }
    Admission::Take
}

/// `200G`, `1.5T`, `512MiB`, `4096` (bytes) or `40%`.
pub fn parse_quota(text: &str) -> Result<Quota, crate::error::BadSetting> {
    let t = text.trim();
    let bad = || {
        crate::error::BadSetting(format!(
            "bad quota `{text}`: use a size (500M, 200G, 2T) or a share of the disk (40%)"
        ))
    };
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

/// What each origin's archives take on this holder: counted from the
/// manifests at most every [`USAGE_FRESH`], plus the members of every
/// archive it was told to send and has not committed yet (for as long as
/// it may send them), so neither a burst of offers nor offers spaced out
/// over many counts can pass the quota.
#[derive(Debug, Default)]
pub struct Usage {
    counted: HashMap<String, (Instant, u64)>,
    /// origin → archive id → (bytes asked for, until when).
    reserved: HashMap<String, HashMap<String, (u64, Instant)>>,
}

/// How long a count of an origin's usage stands before it is made again.
const USAGE_FRESH: Duration = Duration::from_secs(30);

/// How long an archive's asked-for members count before they come (as
/// long as the holder takes them: `WANTED_FOR_MS`).
const RESERVED_FOR: Duration = Duration::from_secs(30 * 60);

/// Origins whose reservations are kept at once: a flood of fresh ids
/// cannot grow the book past it.
const RESERVING_MAX: usize = 4096;

impl Usage {
    /// Bytes `origin`'s archives take here, or will once sent: each
    /// distinct member of its stored archives once, plus what each archive
    /// other than `besides` still being sent was asked for.
    pub fn held(&mut self, store: &Store, origin: &str, besides: &str) -> Result<u64, StoreError> {
        let counted = match self.counted.get(origin) {
            Some((at, n)) if at.elapsed() < USAGE_FRESH => *n,
            _ => {
                let n = count(store, origin)?;
                self.counted.insert(origin.to_string(), (Instant::now(), n));
                n
            }
        };
        let now = Instant::now();
        let pending = match self.reserved.get_mut(origin) {
            Some(r) => {
                r.retain(|_, (_, until)| *until > now);
                r.iter().filter(|(id, _)| id.as_str() != besides).map(|(_, (n, _))| *n).sum()
            }
            None => 0,
        };
        Ok(counted.saturating_add(pending))
    }

    /// `origin`'s archive `id` was told to send `bytes` more: they count
    /// until it is committed or the time to send them is over.
    pub fn reserve(&mut self, origin: &str, id: &str, bytes: u64) {
        if !self.reserved.contains_key(origin) && self.reserved.len() >= RESERVING_MAX {
            self.reserved.retain(|_, r| !r.is_empty());
        }
        let r = self.reserved.entry(origin.to_string()).or_default();
        r.insert(id.to_string(), (bytes, Instant::now() + RESERVED_FOR));
    }

    /// `origin`'s archive `id` is stored: what it was asked for is now
    /// counted among its archives.
    pub fn committed(&mut self, origin: &str, id: &str) {
        let Some(r) = self.reserved.get_mut(origin) else { return };
        if let Some((bytes, _)) = r.remove(id) {
            if let Some((_, n)) = self.counted.get_mut(origin) {
                *n = n.saturating_add(bytes);
            }
        }
        if r.is_empty() {
            self.reserved.remove(origin);
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
            // Unreadable: counted at its archive's size, so one damaged
            // manifest does not stop every offer of its origin (verify and
            // repair deal with it).
            Err(e) => {
                tracing::warn!("counting node {origin}'s archives: {e}");
                total = total.saturating_add(s.tgz_len);
                continue;
            }
        };
        for o in m.objects() {
            if seen.insert(o.cid) {
                total = total.saturating_add(o.len);
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_table() {
        const G: u64 = 1 << 30;
        let half = Quota::Percent(50);
        let cases = [
            // need, free, held, quota → decision
            (G, 10 * G, 0, half, Admission::Take),
            (G, G, 0, half, Admission::NoRoom { free: G, need: G }),
            (G, G + MARGIN, 0, Quota::Percent(100), Admission::Take),
            (0, MARGIN - 1, 0, half, Admission::NoRoom { free: MARGIN - 1, need: 0 }),
            // 50% of (held 4 + free 4) = 4: holding 4, one more is over.
            (G, 4 * G, 4 * G, half, Admission::OverQuota { held: 4 * G, need: G, limit: 4 * G }),
            // 50% of (held 2 + free 4) = 3: holding 2, one more fits exactly.
            (G, 4 * G, 2 * G, half, Admission::Take),
            (G, 100 * G, 2 * G, Quota::Bytes(2 * G), Admission::OverQuota { held: 2 * G, need: G, limit: 2 * G }),
            (G, 100 * G, G, Quota::Bytes(2 * G), Admission::Take),
            // No overflow at the edges: refused all the same.
            (u64::MAX, u64::MAX, 0, half, Admission::OverQuota { held: 0, need: u64::MAX, limit: u64::MAX / 2 }),
            (u64::MAX, 1, 0, half, Admission::NoRoom { free: 1, need: u64::MAX }),
        ];
        for (need, free, held, quota, want) in cases {
            assert_eq!(admit(need, free, held, quota), want, "need {need} free {free} held {held} {quota}");
        }
    }

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
            assert!(e.to_string().contains("bad quota"), "{bad}: {e}");
        }
    }

    #[test]
    fn members_asked_for_count_until_committed_or_expired_and_each_archive_once() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let mut u = Usage::default();
        assert_eq!(u.held(&store, "x", "").unwrap(), 0);
        u.reserve("x", "a1", 100);
        u.reserve("x", "a2", 50);
        assert_eq!(u.held(&store, "x", "").unwrap(), 150, "offers not yet committed count");
        assert_eq!(u.held(&store, "x", "a1").unwrap(), 50, "an archive asked again is not counted twice");
        u.reserve("x", "a1", 70);
        assert_eq!(u.held(&store, "x", "").unwrap(), 120, "asked again: the new amount");
        u.committed("x", "a1");
        assert_eq!(u.held(&store, "x", "").unwrap(), 120, "committed: counted among its archives");
        assert_eq!(u.held(&store, "y", "").unwrap(), 0, "per origin");
        u.reserved.get_mut("x").unwrap().values_mut().for_each(|(_, until)| *until = Instant::now());
        assert_eq!(u.held(&store, "x", "").unwrap(), 70, "expired: a2 no longer counts");
    }

    #[test]
    fn a_share_counts_what_the_origin_holds_and_what_is_free() {
        assert_eq!(Quota::Percent(50).limit(0, 1000), 500);
        assert_eq!(Quota::Percent(50).limit(600, 400), 500, "already past: no more");
        assert_eq!(Quota::Bytes(7).limit(600, 400), 7);
        assert_eq!(Quota::Percent(100).limit(u64::MAX, u64::MAX), u64::MAX);
    }
}
