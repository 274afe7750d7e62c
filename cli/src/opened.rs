//! Encrypted archives looked into on the operator's machine: when the node
//! asked does not hold the series' key (it is not the series' own node,
//! or that node is gone), it sends the sealed objects (`GET /objects`) and
//! this client opens them with the operator's recovery key: the file table
//! for a listing, a search or a comparison, the members that hold a file
//! for its content. No node sees the plaintext (docs/encryption.md).

use std::io;

use backmesh_api::files::{Compared, Found, Listing};
use backmesh_table::{answers, tree, FileRecord, Layout, Part, Patterns, Picker};

use crate::client::{enc, Client, Failure};
use crate::keys::{Listed, Opened, SealedStream, SEALED_TYPE};

/// Whether the node refused because it cannot open an encrypted archive.
pub(crate) fn sealed_refusal(e: &Failure) -> bool {
    matches!(e, Failure::Refused(m) if m.starts_with("the node refused (409)") && m.contains("encrypted"))
}

/// An encrypted archive's file table, opened here.
pub(crate) struct Table {
    pub(crate) id: String,
    pub(crate) created_ms: i64,
    pub(crate) files: Vec<FileRecord>,
    lens: Vec<u64>,
    members: Vec<Listed>,
    /// When `files` is one group of the table: where it starts in the stream.
    start: Option<u64>,
    /// What the stream that read it proved (its members are read with it).
    opened: Opened,
}

fn series(node: &str, path: &str, archive: Option<&str>) -> String {
    let mut q = format!("node={}&path={}", enc(node), enc(path));
    if let Some(a) = archive {
        q.push_str(&format!("&archive={}", enc(a)));
    }
    q
}

/// Reads a sealed stream from the node (under a fresh order) and hands it
/// to `read`; of an archive an earlier stream opened (`known`), without
/// its lists and head again.
fn sealed<T>(
    client: &Client,
    (node, path, archive): (&str, &str, Option<&str>),
    part: &str,
    known: Option<&Opened>,
    read: impl FnOnce(&mut SealedStream<'_>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    client.sign_read(node, path, archive)?;
    let lists = if known.is_some() { "&lists=false" } else { "" };
    let mut resp = client.stream(&format!("/objects?{}&{part}{lists}", series(node, path, archive)), SEALED_TYPE)?;
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut s = match known {
        Some(k) => SealedStream::resume(k, &mut reader)?,
        None => SealedStream::open(client, &mut reader)?,
    };
    read(&mut s)
}

/// The file table of archive `archive` (the newest: `None`) of (node, path).
pub(crate) fn table(client: &Client, node: &str, path: &str, archive: Option<&str>) -> Result<Table, Failure> {
    sealed(client, (node, path, archive), "part=table", None, |s| {
        let files = s.table()?;
        Ok(Table {
            id: s.h.archive.clone(),
            created_ms: s.h.created_ms,
            files,
            lens: s.lens.clone(),
            members: s.h.members.clone(),
            start: None,
            opened: s.opened(),
        })
    })
}

/// Of an archive whose head says where its table's groups start: the one
/// group that holds `want` (and a file it names, when it is in that group
/// too); `None` for older archives, or a hard link to another group.
fn one_group(
    client: &Client,
    (node, path, archive): (&str, &str, Option<&str>),
    want: &[u8],
) -> Result<Option<Table>, Failure> {
    let (id, created_ms, members, lens, groups, opened) =
        sealed(client, (node, path, archive), "part=head", None, |s| {
            Ok((s.h.archive.clone(), s.h.created_ms, s.h.members.clone(), s.lens.clone(), s.groups.clone(), s.opened()))
        })?;
    if groups.is_empty() || lens.len() != members.len() {
        return Ok(None);
    }
    let g = groups.partition_point(|g| backmesh_table::walk_cmp(&g.first, want) != std::cmp::Ordering::Greater);
    let Some(g) = g.checked_sub(1) else { return Ok(None) };
    let files = sealed(client, (node, path, Some(&id)), &format!("groups={g}"), Some(&opened), |s| s.group(g))?;
    let Some(i) = files.iter().position(|f| f.path.as_slice() == want) else { return Ok(None) };
    if tree::content_of(&files, i).is_none() && files[i].kind == backmesh_table::Kind::HardLink {
        return Ok(None);
    }
    Ok(Some(Table { id, created_ms, files, lens, members, start: Some(groups[g].offset), opened }))
}

/// Hands the pieces of entries `wanted` of `t` to `out`, reading the
/// members that hold them alone; answers how many members were read, and
/// their stored bytes (keyframes included).
pub(crate) fn pick(
    client: &Client,
    (node, path): (&str, &str),
    t: &Table,
    wanted: Vec<usize>,
    out: &mut dyn FnMut(usize, Part<'_>) -> io::Result<()>,
) -> Result<(u64, u64), Failure> {
    let layout = match t.start {
        None => Layout::new(&t.files, &t.lens),
        Some(at) => Layout::at(at, &t.files, &t.lens),
    };
    let Some(layout) = layout else {
        return Err(Failure::Refused(format!(
            "archive {} cannot be read in part: its head does not say where its entries lie (an archive made by an \
             older version); fetch it whole",
            t.id
        )));
    };
    let mut picker = Picker::new(&t.files, &layout, wanted);
    let members = picker.members().to_vec();
    let damaged = |e: io::Error| Failure::Refused(format!("the download is damaged: {e}"));
    // At most a thousand members a request: each is a request of its own.
    for chunk in members.chunks(1000) {
        let list: Vec<String> = chunk.iter().map(|k| k.to_string()).collect();
        sealed(client, (node, path, Some(&t.id)), &format!("members={}", list.join(",")), Some(&t.opened), |s| {
            for &k in chunk {
                let raw = s.member_raw(&t.members[k])?;
                picker.feed(k, &raw, out).map_err(damaged)?;
            }
            Ok(())
        })?;
    }
    picker.finish().map_err(damaged)?;
    let bytes = members.iter().map(|&k| t.members[k].stored()).sum();
    Ok((members.len() as u64, bytes))
}

pub(crate) fn listing(
    client: &Client,
    (node, path, archive): (&str, &str, Option<&str>),
    under: &str,
    recursive: bool,
) -> Result<Listing, Failure> {
    let t = table(client, node, path, archive)?;
    answers::listing((node, path, &t.id), &t.files, under, recursive)
        .ok_or_else(|| Failure::Refused(format!("archive {} of {path} holds no `{under}`", t.id)))
}

pub(crate) fn find(client: &Client, node: &str, path: &str, pattern: &str) -> Result<Found, Failure> {
    let patterns = Patterns::new(&[pattern.to_string()]).map_err(|e| Failure::Refused(e.to_string()))?;
    let b: backmesh_api::Backups =
        client.get(&format!("/backups?node={}&path={}&hidden=true", enc(node), enc(path)))?;
    let ids = b.archives.iter().map(|a| (a.id.clone(), false)).chain(b.hidden.iter().map(|a| (a.id.clone(), true)));
    let mut ids: Vec<(String, bool)> = ids.collect();
    ids.sort_by(|a, b| b.0.cmp(&a.0));
    ids.dedup_by(|a, b| a.0 == b.0);
    let mut found = Found {
        node: node.into(),
        path: path.into(),
        pattern: pattern.into(),
        archives: Vec::new(),
        searched: 0,
        unread: Vec::new(),
    };
    for (id, hidden) in ids {
        found.searched += 1;
        match table(client, node, path, Some(&id)) {
            Ok(t) => found.archives.extend(answers::found_in(&id, t.created_ms, hidden, &t.files, &patterns)),
            Err(Failure::Refused(e) | Failure::Unreachable(e)) => found.unread.push(format!("{id}: {e}")),
            Err(Failure::Failed) => found.unread.push(id),
        }
    }
    Ok(found)
}

/// The SHA-256 of the content of each entry `wanted` of `t`.
fn digests(
    client: &Client,
    series: (&str, &str),
    t: &Table,
    wanted: Vec<usize>,
) -> Result<std::collections::HashMap<usize, [u8; 32]>, Failure> {
    use sha2::Digest as _;
    let mut hashers: std::collections::HashMap<usize, sha2::Sha256> = Default::default();
    if !wanted.is_empty() {
        pick(client, series, t, wanted, &mut |i, part| {
            match part {
                Part::Content(c) => hashers.entry(i).or_default().update(c),
                // An empty file has a digest too.
                Part::End => drop(hashers.entry(i).or_default()),
                _ => {}
            }
            Ok(())
        })?;
    }
    Ok(hashers.into_iter().map(|(i, h)| (i, h.finalize().into())).collect())
}

/// Writes file `file` of archive `archive` of (node, path) to `to`;
/// answers what was written and read.
pub(crate) fn dump(
    client: &Client,
    (node, path, archive): (&str, &str, Option<&str>),
    file: &str,
    to: &mut dyn io::Write,
) -> Result<backmesh_api::cli::Dumped, Failure> {
    let want = tree::normalise(file);
    let t = match one_group(client, (node, path, archive), &want)? {
        Some(t) => t,
        None => table(client, node, path, archive)?,
    };
    let i = t.files.iter().position(|f| f.path.as_slice() == want.as_slice());
    let Some(i) = i else { return Err(Failure::Refused(format!("archive {} of {path} holds no `{file}`", t.id))) };
    // A hard link's content is its file's.
    let Some(i) = tree::content_of(&t.files, i) else {
        return Err(Failure::Refused(format!("`{file}` in archive {} is not a file", t.id)));
    };
    let mut got = 0u64;
    let read = pick(client, (node, path), &t, vec![i], &mut |_, part| {
        if let Part::Content(c) = part {
            to.write_all(c)?;
            got += c.len() as u64;
        }
        Ok(())
    })?;
    Ok(backmesh_api::cli::Dumped {
        archive: t.id.clone(),
        file: file.into(),
        output: Default::default(),
        size: got,
        members_read: read.0,
        members: t.members.len() as u64,
        bytes_read: read.1,
        opened: "here".into(),
    })
}

/// Writes the `.tgz` of the entries `include` selects (with the
/// directories above them) of archive `archive` of (node, path) to `out`;
/// answers the archive's id.
pub(crate) fn part_tgz(
    client: &Client,
    (node, path, archive): (&str, &str, Option<&str>),
    include: &[String],
    out: &mut dyn FnMut(&[u8]) -> Result<(), Failure>,
) -> Result<String, Failure> {
    use io::Write as _;
    let t = table(client, node, path, archive)?;
    let patterns = Patterns::new(include).map_err(|e| Failure::Refused(e.to_string()))?;
    let wanted = tree::select(&t.files, &patterns);
    if wanted.is_empty() {
        return Err(Failure::Refused(format!("no entry of archive {} matches {}", t.id, include.join(", "))));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    let mut failed = None;
    let mut write = |gz: &mut flate2::write::GzEncoder<Vec<u8>>, b: &[u8]| -> io::Result<()> {
        gz.write_all(b)?;
        if gz.get_ref().len() >= 1 << 20 {
            let chunk = std::mem::take(gz.get_mut());
            if let Err(e) = out(&chunk) {
                failed = Some(e);
                return Err(io::Error::other("not written"));
            }
        }
        Ok(())
    };
    let picked = pick(client, (node, path), &t, wanted, &mut |_, part| match part {
        Part::Header(b) | Part::Content(b) | Part::Padding(b) => write(&mut gz, b),
        Part::End => Ok(()),
    });
    if let Some(e) = failed {
        return Err(e);
    }
    picked?;
    gz.write_all(&[0u8; 1024]).map_err(|e| Failure::Refused(e.to_string()))?;
    out(&gz.finish().map_err(|e| Failure::Refused(e.to_string()))?)?;
    Ok(t.id)
}

pub(crate) fn diff(client: &Client, node: &str, path: &str, from: &str, to: &str) -> Result<Compared, Failure> {
    let (a, b) = (table(client, node, path, Some(from))?, table(client, node, path, Some(to))?);
    let unplaced =
        |t: &Table| Failure::Refused(format!("archive {} does not say where its entries lie; fetch it", t.id));
    let la = Layout::new(&a.files, &a.lens).ok_or_else(|| unplaced(&a))?;
    let lb = Layout::new(&b.files, &b.lens).ok_or_else(|| unplaced(&b))?;
    let names = |t: &Table| t.members.iter().map(Listed::name).collect::<Vec<String>>();
    let tree::ToCompare { same, read_a, read_b } =
        tree::to_compare((&a.files, &la, &names(&a)), (&b.files, &lb, &names(&b)));
    let (ha, hb) = (digests(client, (node, path), &a, read_a)?, digests(client, (node, path), &b, read_b)?);
    let d = tree::diff(&a.files, &b.files, &mut |i, j| {
        Ok(same.contains(&(i, j)) || (ha.contains_key(&i) && ha.get(&i) == hb.get(&j)))
    })
    .map_err(|e| Failure::Refused(e.to_string()))?;
    Ok(answers::compared((node, path), (&a.id, &a.files), (&b.id, &b.files), &d))
}
