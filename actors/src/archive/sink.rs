//! Where an archive's members go ([`MemberSink`], [`FileSink`] for a
//! plain `.tgz`), and how one member is compressed.

use std::fs::File;
use std::io::{self, Write};

use super::manifest::MemberRef;
use crate::hash::Digest;
use backmesh_table::tarfmt::BLOCK;

/// Receives the compressed members of an archive, in order.
pub trait MemberSink: Send {
    /// The next member. The same digest may come more than once.
    fn member(&mut self, digest: &Digest, data: &[u8]) -> io::Result<()>;
    /// Remember this point: a later [`MemberSink::rewind`] returns to it.
    fn mark(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Forget every member received since the last mark.
    fn rewind(&mut self) -> io::Result<()>;
    /// A member taken unread from an earlier archive (see [`Reuse`]): the
    /// sink must already hold it.
    fn reused(&mut self, member: &MemberRef) -> io::Result<()> {
        Err(io::Error::other(format!("this archive writer cannot take member {} unread", member.sha256)))
    }
    /// Whether [`MemberSink::rewind`] works; without it a file that changes
    /// while read is kept as first read (with a warning).
    fn can_rewind(&self) -> bool;
}

/// Writes the `.tgz` to a file, truncating on rewind.
pub struct FileSink {
    file: File,
    written: u64,
    mark: u64,
}

impl FileSink {
    pub fn new(file: File) -> Self {
        FileSink { file, written: 0, mark: 0 }
    }
    pub fn into_inner(self) -> File {
        self.file
    }
}

impl MemberSink for FileSink {
    fn member(&mut self, _: &Digest, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }
    fn mark(&mut self) -> io::Result<()> {
        self.mark = self.written;
        Ok(())
    }
    fn rewind(&mut self) -> io::Result<()> {
        use std::io::Seek;
        self.file.set_len(self.mark)?;
        self.file.seek(io::SeekFrom::Start(self.mark))?;
        self.written = self.mark;
        Ok(())
    }
    fn can_rewind(&self) -> bool {
        true
    }
}

/// The end-of-archive marker: two zero blocks, its own member.
pub(crate) fn trailer() -> Vec<u8> {
    vec![0u8; 2 * BLOCK]
}

pub use backmesh_crypt::gzip::gzip_member;
#[cfg(test)]
pub(crate) use backmesh_crypt::gzip::looks_incompressible;
