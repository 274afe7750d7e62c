//! Where each entry of an archive lies in its tar stream, and which
//! members hold it: from the file table and the members' raw lengths alone.

use std::ops::Range;

use crate::record::FileRecord;

/// The tar stream's end marker: two zero blocks.
pub const TRAILER: u64 = 2 * crate::tarfmt::BLOCK as u64;

/// Entry and member offsets in an archive's tar stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Where each entry starts, and where the trailer does.
    entries: Vec<u64>,
    /// Where each member starts, and the stream's length.
    members: Vec<u64>,
}

impl Layout {
    /// The layout of a stream of `files` cut into members of `member_lens`
    /// raw bytes; `None` when the entries and the trailer do not make up
    /// the stream exactly (a table this reading cannot place: an archive
    /// made by another encoder, or a table that lies). Then the reader
    /// goes through the stream from its start instead.
    pub fn new(files: &[FileRecord], member_lens: &[u64]) -> Option<Layout> {
        let layout = Layout::place(0, files, member_lens)?;
        (layout.end().checked_add(TRAILER)? == layout.stream_len()).then_some(layout)
    }

    /// The layout of a run of `files` that starts at `start` in a stream
    /// cut into members of `member_lens` (one group of a file table, its
    /// place known from the archive's head); `None` when it does not fit
    /// before the trailer. Each entry read from it is still checked
    /// against its headers.
    pub fn at(start: u64, files: &[FileRecord], member_lens: &[u64]) -> Option<Layout> {
        let layout = Layout::place(start, files, member_lens)?;
        (layout.end().checked_add(TRAILER)? <= layout.stream_len()).then_some(layout)
    }

    /// `files` one after the other from `start`, and the members' offsets;
    /// `None` when a record is none an encoder writes, or a sum overflows.
    fn place(start: u64, files: &[FileRecord], member_lens: &[u64]) -> Option<Layout> {
        let offsets = |first: u64, lens: &mut dyn Iterator<Item = Option<u64>>| -> Option<Vec<u64>> {
            let mut out = vec![first];
            let mut at = first;
            for len in lens {
                at = at.checked_add(len?)?;
                out.push(at);
            }
            Some(out)
        };
        let entries = offsets(start, &mut files.iter().map(FileRecord::entry_len))?;
        let members = offsets(0, &mut member_lens.iter().map(|&l| Some(l)))?;
        Some(Layout { entries, members })
    }

    /// Where the last entry ends.
    fn end(&self) -> u64 {
        self.entries[self.entries.len() - 1]
    }

    /// The stream's length: where the last member ends.
    fn stream_len(&self) -> u64 {
        self.members[self.members.len() - 1]
    }

    /// The bytes entry `i` takes in the stream.
    pub fn entry(&self, i: usize) -> Range<u64> {
        self.entries[i]..self.entries[i + 1]
    }

    /// How many entries there are.
    pub fn entries(&self) -> usize {
        self.entries.len() - 1
    }

    /// The bytes member `k` holds in the stream.
    pub fn member(&self, k: usize) -> Range<u64> {
        self.members[k]..self.members[k + 1]
    }

    /// How many members there are.
    pub fn members(&self) -> usize {
        self.members.len() - 1
    }

    /// The members that hold any byte of `span` (empty for an empty span).
    pub fn members_of(&self, span: Range<u64>) -> Range<usize> {
        if span.is_empty() {
            return 0..0;
        }
        // The first member that ends after the span starts, up to the
        // first that starts at or after its end.
        let first = self.members[1..].partition_point(|&end| end <= span.start);
        let last = self.members[..self.members.len() - 1].partition_point(|&start| start < span.end);
        first..last.max(first)
    }

    /// The members that hold any byte of entries `wanted`, ascending, once each.
    pub fn members_for(&self, wanted: &[usize]) -> Vec<usize> {
        let mut wanted = wanted.to_vec();
        wanted.sort_unstable();
        let mut out: Vec<usize> = Vec::new();
        for i in wanted {
            for k in self.members_of(self.entry(i)) {
                // Entries in stream order: their members come in order too.
                if out.last().is_none_or(|&l| l < k) {
                    out.push(k);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    use crate::rec;

    #[test]
    fn entries_are_placed_by_their_records_and_members_found_by_offset() {
        let files = vec![rec("a", Kind::Dir, 0), rec("a/x", Kind::File, 700), rec("a/y", Kind::File, 0)];
        // 512 (dir) + 512+1024 (x: header, 700 bytes padded) + 512 (y) + 1024 trailer = 3584.
        assert_eq!(Layout::new(&files, &[1000, 2584]).map(|l| l.entry(1)), Some(512..2048));
        let l = Layout::new(&files, &[1000, 2000, 584]).unwrap();
        assert_eq!(l.members_of(l.entry(0)), 0..1);
        assert_eq!(l.members_of(l.entry(1)), 0..2, "x straddles the first cut");
        assert_eq!(l.members_of(l.entry(2)), 1..2);
        assert_eq!(l.members_for(&[0, 2]), vec![0, 1]);
        assert_eq!(l.members_of(3000..3001), 2..3);
        // A table that does not make up the stream is not placed, nor
        // one with a record no encoder writes.
        assert_eq!(Layout::new(&files, &[3583]), None);
        let mut huge = files.clone();
        huge[1].size = u64::MAX - 100;
        assert_eq!(Layout::new(&huge, &[3584]), None);
        let mut odd = files.clone();
        odd[1].mtime_nsec = 1_000_000_000;
        assert_eq!(Layout::new(&odd, &[3584]), None);
        // A run placed on its own: where the whole table places it.
        let whole = Layout::new(&files, &[1000, 2000, 584]).unwrap();
        let part = Layout::at(512, &files[1..], &[1000, 2000, 584]).unwrap();
        assert_eq!((part.entry(0), part.entry(1)), (whole.entry(1), whole.entry(2)));
        assert_eq!(Layout::at(3000, &files[1..], &[1000, 2000, 584]), None, "past the trailer");
        // Many entries in one member: each member once, in order.
        let many: Vec<FileRecord> = (0..1000).map(|i| rec(&format!("f{i:04}"), Kind::File, 10)).collect();
        let l = Layout::new(&many, &[512 * 1000, 512 * 1000 + 1024]).unwrap();
        assert_eq!(l.members_for(&(0..1000).collect::<Vec<_>>()), vec![0, 1]);
        assert_eq!(Layout::new(&[], &[1024]).map(|l| l.entries()), Some(0));
    }
}
