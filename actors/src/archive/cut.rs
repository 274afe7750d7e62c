//! Where the tar stream is cut into gzip members.
//!
//! Two rules, both chosen so that a change to one file dirties as few
//! members as possible (docs/archive-format.md has the measurements):
//!
//! - [`GroupCutter`]: small entries are grouped. Whether a new group starts
//!   before an entry depends on a hash of that entry's *path* and its size,
//!   never on the bytes of other files: cutting happens with probability
//!   `len / target` per entry, which spaces cuts about `target` raw bytes
//!   apart, and a changed file moves no boundary but possibly its own.
//! - [`Chunker`]: a file too large to group is split inside at
//!   content-defined points (a gear rolling hash, FastCDC's normalised
//!   masks), so an edit in the middle of a large file changes one or two
//!   members and the rest resynchronise.

use crate::hash::Digest;

/// The default group target in raw (uncompressed) bytes; `scripts/bench`
/// prints the curve this was chosen from.
pub const DEFAULT_TARGET: usize = 64 * 1024;

/// Decides group boundaries for small entries.
#[derive(Clone, Copy, Debug)]
pub struct GroupCutter {
    pub target: usize,
}

impl GroupCutter {
    pub fn new(target: usize) -> Self {
        GroupCutter { target: target.max(4 * 1024) }
    }

    /// Groups below this size are never cut: tiny members compress badly.
    pub fn min_group(&self) -> usize {
        self.target / 4
    }

    /// Groups never grow past this size.
    pub fn max_group(&self) -> usize {
        self.target * 4
    }

    /// Entries whose content is at least this long are split by [`Chunker`]
    /// instead of being grouped.
    pub fn large_file(&self) -> u64 {
        (self.target * 2) as u64
    }

    /// Should a new group start before the entry at `path` of `entry_len`
    /// raw bytes, given the current group holds `group_len` bytes?
    pub fn cut_before(&self, group_len: usize, path: &[u8], entry_len: usize) -> bool {
        if group_len == 0 {
            return false;
        }
        if group_len + entry_len > self.max_group() {
            return true;
        }
        if group_len < self.min_group() {
            return false;
        }
        let h = Digest::of(path).prefix_u64();
        // P(cut) = entry_len / target: a cut every ~target bytes on average.
        let p = (entry_len as f64 / self.target as f64).min(1.0);
        (h as f64) < p * (u64::MAX as f64)
    }
}

/// A 256-entry table of pseudo-random words for the gear hash, fixed by
/// a constant seed so that every node cuts the same data the same way.
const GEAR: [u64; 256] = gear_table();

const fn gear_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut state: u64 = 0x6261_636b_6d65_7368; // "backmesh"
    let mut i = 0;
    while i < 256 {
        // SplitMix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
}

/// Content-defined chunking of one byte stream (FastCDC with normalised
/// chunking): cut points depend only on the last 64 bytes seen.
#[derive(Clone, Debug)]
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    mask_small: u64,
    mask_large: u64,
    hash: u64,
    len: usize,
}

impl Chunker {
    pub fn new(avg: usize) -> Self {
        let avg = avg.next_power_of_two().max(4096);
        let bits = avg.trailing_zeros();
        Chunker {
            min: avg / 4,
            avg,
            max: avg * 4,
            mask_small: !0u64 << (64 - (bits + 1)),
            mask_large: !0u64 << (64 - (bits - 1)),
            hash: 0,
            len: 0,
        }
    }

    /// Feeds `data`; returns the offset just past the next cut inside it,
    /// if there is one. Call again with the rest of `data` after a cut.
    pub fn next_cut(&mut self, data: &[u8]) -> Option<usize> {
        for (i, &b) in data.iter().enumerate() {
            self.len += 1;
            self.hash = (self.hash << 1).wrapping_add(GEAR[b as usize]);
            if self.len < self.min {
                continue;
            }
            let mask = if self.len < self.avg { self.mask_small } else { self.mask_large };
            if self.hash & mask == 0 || self.len >= self.max {
                self.reset();
                return Some(i + 1);
            }
        }
        None
    }

    /// Forgets the current chunk (after a forced cut at an entry's end).
    pub fn reset(&mut self) {
        self.hash = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    fn chunks(data: &[u8], avg: usize) -> Vec<usize> {
        let mut c = Chunker::new(avg);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            match c.next_cut(&data[pos..]) {
                Some(n) => {
                    pos += n;
                    out.push(pos);
                }
                None => {
                    out.push(data.len());
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn chunk_sizes_respect_bounds_and_average() {
        let data = noise(8 << 20, 7);
        let cuts = chunks(&data, 64 * 1024);
        let mut prev = 0;
        for (i, &c) in cuts.iter().enumerate() {
            let len = c - prev;
            assert!(len <= 256 * 1024);
            if i + 1 < cuts.len() {
                assert!(len >= 16 * 1024, "chunk {i} of {len} bytes");
            }
            prev = c;
        }
        let avg = data.len() / cuts.len();
        assert!((32 * 1024..=128 * 1024).contains(&avg), "average {avg}");
    }

    #[test]
    fn an_edit_in_the_middle_changes_few_chunks() {
        let data = noise(4 << 20, 11);
        let mut edited = data.clone();
        edited[2 << 20] ^= 0xff;
        edited.splice(3 << 20..3 << 20, [1, 2, 3]);
        let a = chunks(&data, 64 * 1024);
        let b = chunks(&edited, 64 * 1024);
        let bounds = |cuts: &[usize], d: &[u8]| -> std::collections::HashSet<Digest> {
            let mut prev = 0;
            cuts.iter()
                .map(|&c| {
                    let h = Digest::of(&d[prev..c]);
                    prev = c;
                    h
                })
                .collect()
        };
        let (sa, sb) = (bounds(&a, &data), bounds(&b, &edited));
        let new = sb.difference(&sa).count();
        assert!(new <= 4, "{new} new chunks of {}", sb.len());
    }

    #[test]
    fn group_cuts_depend_on_the_path_not_on_neighbours() {
        let g = GroupCutter::new(128 * 1024);
        // Same path and size: same decision whatever the group's content.
        for path in ["a/b.rs", "src/main.rs", "x"] {
            let d1 = g.cut_before(50_000, path.as_bytes(), 8000);
            let d2 = g.cut_before(60_000, path.as_bytes(), 8000);
            assert_eq!(d1, d2);
        }
        assert!(!g.cut_before(0, b"a", 1_000_000), "never an empty group");
        assert!(g.cut_before(500_000, b"a", 100_000), "max group enforced");
        assert!(!g.cut_before(1000, b"a", 1000), "min group enforced");
    }

    #[test]
    fn groups_average_near_the_target() {
        let g = GroupCutter::new(128 * 1024);
        let mut groups = 0usize;
        let mut len = 0usize;
        let total = 20_000usize;
        for i in 0..total {
            let path = format!("dir{}/file{i}.txt", i % 37);
            let entry = 4096;
            if g.cut_before(len, path.as_bytes(), entry) {
                groups += 1;
                len = 0;
            }
            len += entry;
        }
        let avg = total * 4096 / (groups + 1);
        assert!((96 * 1024..=256 * 1024).contains(&avg), "average group {avg}");
    }
}
