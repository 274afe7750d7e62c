//! Cutting chosen entries out of an archive's members: fed the raw bytes
//! of the members that hold them, in order, a [`Picker`] hands out each
//! entry's headers (checked byte for byte against the headers its record
//! makes), content and padding. Nothing else of the stream is read.

use std::io;

use crate::layout::Layout;
use crate::record::FileRecord;

/// A piece of a chosen entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Part<'a> {
    /// All its header blocks (a PAX header first, when it has one), checked.
    Header(&'a [u8]),
    /// Some of its content, in order.
    Content(&'a [u8]),
    /// Zeros from the end of its content to the end of its last block.
    Padding(&'a [u8]),
    /// It is complete.
    End,
}

/// Why entries could not be cut out.
#[derive(Debug, PartialEq, Eq)]
pub enum PickError {
    /// Member `got` was given where member `expected` was due.
    OutOfTurn { expected: Option<usize>, got: usize },
    /// Member `member` holds `got` raw bytes where the archive says `expected`.
    Length { member: usize, expected: u64, got: u64 },
    /// The bytes where entry `path` belongs are not its header.
    NotItsHeader { path: String },
    /// Entry `path` was not complete when the members ended.
    Unfinished { path: String },
}

impl std::fmt::Display for PickError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PickError::OutOfTurn { expected: Some(e), got } => write!(f, "member {got} came where member {e} was due"),
            PickError::OutOfTurn { expected: None, got } => write!(f, "member {got} came after the last one needed"),
            PickError::Length { member, expected, got } => {
                write!(f, "member {member} holds {got} bytes, its archive says {expected}")
            }
            PickError::NotItsHeader { path } => {
                write!(f, "the archive does not hold `{path}` where its file table places it")
            }
            PickError::Unfinished { path } => write!(f, "`{path}` was cut short"),
        }
    }
}

impl std::error::Error for PickError {}

impl From<PickError> for io::Error {
    fn from(e: PickError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Cuts entries `wanted` out of the members that hold them.
pub struct Picker<'t> {
    files: &'t [FileRecord],
    layout: &'t Layout,
    wanted: Vec<usize>,
    members: Vec<usize>,
    /// The next member due, in `members`.
    due: usize,
    /// The first entry of `wanted` not complete yet.
    next: usize,
    /// Its header bytes gathered so far.
    header: Vec<u8>,
}

impl<'t> Picker<'t> {
    /// Entries `wanted` (indices into `files`) of an archive laid out as `layout`.
    pub fn new(files: &'t [FileRecord], layout: &'t Layout, mut wanted: Vec<usize>) -> Picker<'t> {
        wanted.sort_unstable();
        wanted.dedup();
        wanted.retain(|&i| i < files.len().min(layout.entries()));
        let members = layout.members_for(&wanted);
        Picker { files, layout, wanted, members, due: 0, next: 0, header: Vec::new() }
    }

    /// The members to feed, in this order.
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    /// The entries it cuts out, in stream order.
    pub fn wanted(&self) -> &[usize] {
        &self.wanted
    }

    /// Takes the raw bytes of member `k` (the next of [`Picker::members`])
    /// and hands each piece of a wanted entry it holds to `out`, with the
    /// entry's index.
    pub fn feed(
        &mut self,
        k: usize,
        raw: &[u8],
        out: &mut dyn FnMut(usize, Part<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        let due = self.members.get(self.due).copied();
        if due != Some(k) {
            return Err(PickError::OutOfTurn { expected: due, got: k }.into());
        }
        let span = self.layout.member(k);
        if raw.len() as u64 != span.end - span.start {
            return Err(PickError::Length { member: k, expected: span.end - span.start, got: raw.len() as u64 }.into());
        }
        self.due += 1;
        while let Some(&i) = self.wanted.get(self.next) {
            let e = self.layout.entry(i);
            if e.start >= span.end {
                break;
            }
            let meta = self.files[i].meta();
            let content_start = e.start + crate::tarfmt::header_len(&meta) as u64;
            let content_end = content_start + meta.size;
            let cut = |from: u64, to: u64| -> &[u8] {
                let (s, t) = (from.max(span.start), to.min(span.end));
                if s >= t {
                    return &[];
                }
                &raw[(s - span.start) as usize..(t - span.start) as usize]
            };
            let header = cut(e.start, content_start);
            if !header.is_empty() {
                self.header.extend_from_slice(header);
                if content_start <= span.end {
                    let mut expected = Vec::with_capacity(self.header.len());
                    crate::tarfmt::write_header(&meta, &mut expected);
                    if expected != self.header {
                        return Err(PickError::NotItsHeader { path: self.files[i].path_text() }.into());
                    }
                    out(i, Part::Header(&self.header))?;
                    self.header.clear();
                }
            }
            let content = cut(content_start, content_end);
            if !content.is_empty() {
                out(i, Part::Content(content))?;
            }
            let padding = cut(content_end, e.end);
            if !padding.is_empty() {
                out(i, Part::Padding(padding))?;
            }
            if e.end > span.end {
                break;
            }
            out(i, Part::End)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Ends the cut: every wanted entry must be complete.
    pub fn finish(self) -> io::Result<()> {
        match self.wanted.get(self.next) {
            Some(&i) => Err(PickError::Unfinished { path: self.files[i].path_text() }.into()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tarfmt::{padding, write_header};
    use crate::Kind;

    /// A record whose time needs a PAX header, mode 0640.
    fn rec(path: &str, kind: Kind, size: u64) -> FileRecord {
        FileRecord { mode: 0o640, mtime_nsec: 5, uid: 1000, gid: 1000, ..crate::rec(path, kind, size) }
    }

    /// The tar stream of `files`, whose content is its path repeated.
    fn stream(files: &[FileRecord]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in files {
            write_header(&f.meta(), &mut out);
            if f.kind == Kind::File {
                let body: Vec<u8> = f.path.iter().copied().cycle().take(f.size as usize).collect();
                out.extend_from_slice(&body);
                out.resize(out.len() + padding(f.size), 0);
            }
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    #[test]
    fn entries_come_out_whole_across_any_cut_and_make_a_tar_stream_tar_reads() {
        let files = vec![
            rec("d", Kind::Dir, 0),
            rec("d/a", Kind::File, 3000),
            rec("d/b", Kind::File, 10),
            rec(&format!("d/{}", "n".repeat(150)), Kind::File, 600),
            rec("e", Kind::File, 0),
        ];
        let all = stream(&files);
        // Cut every 700 bytes: headers and contents straddle members.
        let lens: Vec<u64> = all.chunks(700).map(|c| c.len() as u64).collect();
        let layout = Layout::new(&files, &lens).unwrap();
        let mut picker = Picker::new(&files, &layout, vec![3, 1]);
        let mut tar_out = Vec::new();
        let mut content: Vec<(usize, Vec<u8>)> = Vec::new();
        for k in picker.members().to_vec() {
            let r = layout.member(k);
            picker
                .feed(k, &all[r.start as usize..r.end as usize], &mut |i, part| {
                    match part {
                        Part::Header(h) | Part::Padding(h) => tar_out.extend_from_slice(h),
                        Part::Content(c) => {
                            tar_out.extend_from_slice(c);
                            match content.last_mut() {
                                Some((j, v)) if *j == i => v.extend_from_slice(c),
                                _ => content.push((i, c.to_vec())),
                            }
                        }
                        Part::End => {}
                    }
                    Ok(())
                })
                .unwrap();
        }
        picker.finish().unwrap();
        assert_eq!(content.iter().map(|(i, v)| (*i, v.len())).collect::<Vec<_>>(), vec![(1, 3000), (3, 600)]);
        assert!(content[0].1.starts_with(b"d/ad/a"));
        tar_out.resize(tar_out.len() + 1024, 0);
        let mut ar = tar::Archive::new(&tar_out[..]);
        let names: Vec<String> =
            ar.entries().unwrap().map(|e| String::from_utf8(e.unwrap().path_bytes().to_vec()).unwrap()).collect();
        assert_eq!(names, vec!["d/a".to_string(), format!("d/{}", "n".repeat(150))]);
    }

    #[test]
    fn a_stream_that_is_not_what_the_table_says_is_refused() {
        let files = vec![rec("a", Kind::File, 10), rec("b", Kind::File, 10)];
        let mut all = stream(&files);
        let layout = Layout::new(&files, &[all.len() as u64]).unwrap();
        all[layout.entry(1).start as usize + 5] ^= 1; // in b's headers
        let mut picker = Picker::new(&files, &layout, vec![1]);
        let err = picker.feed(0, &all, &mut |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("does not hold `b`"), "{err}");
        let mut picker = Picker::new(&files, &layout, vec![0]);
        assert!(picker.feed(1, &all, &mut |_, _| Ok(())).is_err(), "out of turn");
        assert!(picker.feed(0, &all[1..], &mut |_, _| Ok(())).is_err(), "short");
        let picker = Picker::new(&files, &layout, vec![0]);
        assert!(picker.finish().unwrap_err().to_string().contains("cut short"));
    }
}
