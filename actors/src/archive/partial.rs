//! Reading part of an archive: the entries patterns choose (or one file),
//! cut out of the members that hold them and nothing else
//! (`backmesh_table`), for `restore --include`, `fetch --include` and
//! `dump`. Every member read is checked as a whole restore checks it (its
//! digest, or its seal); every entry's headers against its record.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Mutex;

use backmesh_table::{Layout, Part, Patterns, Picker};

use super::manifest::{Manifest, MemberRef, ObjRef};
use super::restore::{
    extract, in_order, into_target, restore_whole, take_failure, MemberSource, Ordered, RestoreError, RestoreOptions,
    RestoreReport,
};

/// What a partial read read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Picked {
    /// Entries handed out.
    pub entries: usize,
    /// Members read, of how many the archive has.
    pub members: usize,
    pub of_members: usize,
    /// The stored (compressed or sealed) bytes of those members.
    pub stored_bytes: u64,
}

/// `manifest` with its file table open: an encrypted archive's sealed
/// table and head read from `source` and opened with `key`.
pub fn open_table(
    manifest: &Manifest,
    source: &dyn MemberSource,
    key: Option<&backmesh_crypt::DataKey>,
) -> Result<Manifest, RestoreError> {
    if manifest.crypt.is_none() || !manifest.files.is_empty() {
        return Ok(manifest.clone());
    }
    let key = key.ok_or_else(|| RestoreError::Encrypted { id: manifest.id.clone() })?;
    let read =
        |o: &ObjRef| source.read_member(&MemberRef { sha256: o.cid, raw_len: 0, compressed_len: o.len, key: None });
    super::sealed::unseal(manifest, key, &read)
        .map_err(|e| RestoreError::Format { source: io::Error::other(e.to_string()) })
}

impl Picked {
    /// What `picker` will read of `manifest`.
    pub fn of(manifest: &Manifest, picker: &Picker<'_>) -> Picked {
        let order = picker.members();
        Picked {
            entries: picker.wanted().len(),
            members: order.len(),
            of_members: manifest.members.len(),
            stored_bytes: order.iter().map(|&k| manifest.members[k].compressed_len).sum(),
        }
    }
}

/// Where every entry of `manifest` (its file table open) lies.
pub fn layout(manifest: &Manifest) -> Result<Layout, RestoreError> {
    let lens: Vec<u64> = manifest.members.iter().map(|m| m.raw_len).collect();
    Layout::new(&manifest.files, &lens).ok_or_else(|| RestoreError::Unplaced { id: manifest.id.clone() })
}

/// The entries of `manifest` that `include` selects, with the directories
/// above them (and a hard link's file); refused when none matches.
pub fn choose(manifest: &Manifest, include: &[String]) -> Result<Vec<usize>, RestoreError> {
    let patterns = Patterns::new(include).map_err(|e| RestoreError::Pattern(e.to_string()))?;
    let wanted = backmesh_table::tree::select(&manifest.files, &patterns);
    if wanted.is_empty() {
        let patterns = include.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ");
        return Err(RestoreError::NoMatch { id: manifest.id.clone(), patterns });
    }
    Ok(wanted)
}

/// Hands every piece of entries `wanted` of `manifest` to `out`, reading
/// only the members that hold them, `threads` at a time (0: one per core).
pub fn pick(
    manifest: &Manifest,
    wanted: Vec<usize>,
    source: &dyn MemberSource,
    key: Option<&backmesh_crypt::DataKey>,
    threads: usize,
    out: &mut dyn FnMut(usize, Part<'_>) -> io::Result<()>,
) -> Result<Picked, RestoreError> {
    pick_in(manifest, &layout(manifest)?, wanted, source, key, threads, out)
}

/// [`pick`] of `manifest.files`, which `layout` places (one group of an
/// encrypted archive's table, say).
pub fn pick_in(
    manifest: &Manifest,
    layout: &Layout,
    wanted: Vec<usize>,
    source: &dyn MemberSource,
    key: Option<&backmesh_crypt::DataKey>,
    threads: usize,
    out: &mut dyn FnMut(usize, Part<'_>) -> io::Result<()>,
) -> Result<Picked, RestoreError> {
    let mut picker = Picker::new(&manifest.files, layout, wanted);
    let order = picker.members().to_vec();
    source.expect(&order.iter().map(|&k| manifest.members[k].clone()).collect::<Vec<_>>());
    let picked = Picked::of(manifest, &picker);
    let failed = Mutex::new(None);
    in_order(manifest, &order, source, key, threads, &failed, |reader| {
        for &k in &order {
            let raw = next(reader, &failed)?;
            picker.feed(k, &raw, out).map_err(|source| take_failure(&failed, source))?;
        }
        picker.finish().map_err(|source| RestoreError::Format { source })
    })?;
    Ok(picked)
}

fn next(reader: &mut Ordered<'_>, failed: &Mutex<Option<RestoreError>>) -> Result<Vec<u8>, RestoreError> {
    match reader.next_member() {
        Ok(Some(raw)) => Ok(raw),
        Ok(None) => Err(RestoreError::Format { source: io::Error::other("a member was not read") }),
        Err(source) => Err(take_failure(failed, source)),
    }
}

/// The tar stream of entries `wanted` (with a trailer), gzipped into
/// `out` as a `.tgz` GNU tar extracts.
pub fn part_tgz(
    manifest: &Manifest,
    wanted: Vec<usize>,
    source: &dyn MemberSource,
    key: Option<&backmesh_crypt::DataKey>,
    out: &mut dyn Write,
) -> Result<Picked, RestoreError> {
    let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::new(6));
    let failed_write = |source: io::Error| RestoreError::Write { path: "the download".into(), source };
    let picked = pick(manifest, wanted, source, key, 0, &mut |_, part| match part {
        Part::Header(b) | Part::Content(b) | Part::Padding(b) => gz.write_all(b),
        Part::End => Ok(()),
    })?;
    gz.write_all(&[0u8; 1024]).map_err(failed_write)?;
    gz.finish().map_err(failed_write)?;
    Ok(picked)
}

/// Restores the archive `manifest` describes into `target`, reading
/// members from `source`: the whole of it, or the entries `opts.include`
/// selects (into a new or empty `target`).
pub fn restore_archive(
    manifest: &Manifest,
    source: &dyn MemberSource,
    target: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    if opts.include.is_empty() {
        return restore_whole(manifest, source, target, opts);
    }
    let key = match (manifest.encrypted(), &opts.key) {
        (false, _) => None,
        (true, Some(k)) => Some(k),
        (true, None) => return Err(RestoreError::Encrypted { id: manifest.id.clone() }),
    };
    if opts.overwrite {
        return Err(RestoreError::PartOverwrite);
    }
    let opened = open_table(manifest, source, key)?;
    let manifest = &opened;
    let wanted = choose(manifest, &opts.include)?;
    let layout = layout(manifest)?;
    if let Some(p) = &opts.progress {
        let total = wanted.iter().fold(0u64, |t, &i| t.saturating_add(manifest.files[i].meta().size));
        p.total.store(total, std::sync::atomic::Ordering::Relaxed);
    }
    into_target(target, opts, |staging| {
        let failed = Mutex::new(None);
        let picker = Picker::new(&manifest.files, &layout, wanted);
        let order = picker.members().to_vec();
        source.expect(&order.iter().map(|&k| manifest.members[k].clone()).collect::<Vec<_>>());
        in_order(manifest, &order, source, key, opts.threads, &failed, |reader| {
            let tar = PickedTar { reader, picker: Some(picker), order: order.clone(), at: 0, buf: Vec::new(), pos: 0 };
            extract(tar, staging, opts, &failed)
        })
    })
}

/// The tar stream of the chosen entries, as one `Read`: each member read
/// in turn goes through the picker, then the trailer.
struct PickedTar<'r, 'o, 't> {
    reader: &'r mut Ordered<'o>,
    picker: Option<Picker<'t>>,
    order: Vec<usize>,
    at: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for PickedTar<'_, '_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            let Some(picker) = self.picker.as_mut() else { return Ok(0) };
            match self.order.get(self.at) {
                Some(&k) => {
                    self.at += 1;
                    let raw = self.reader.next_member()?.ok_or_else(|| io::Error::other("a member was not read"))?;
                    let buf = &mut self.buf;
                    picker.feed(k, &raw, &mut |_, part| {
                        match part {
                            Part::Header(b) | Part::Content(b) | Part::Padding(b) => buf.extend_from_slice(b),
                            Part::End => {}
                        }
                        Ok(())
                    })?;
                }
                None => {
                    if let Some(p) = self.picker.take() {
                        p.finish()?;
                    }
                    self.buf.resize(1024, 0);
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
