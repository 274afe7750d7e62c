//! Looking inside archives: `ls`, `find`, `diff` and `dump` (restic's
//! names). The node reads the archive's file table and, for content, only
//! the members that hold what is asked (docs/api.md).

use std::io::{Read, Write};
use std::path::Path;

use backmesh_api::cli::Dumped;
use backmesh_api::files::{Compared, FileEntry, Found, Listing};
use backmesh_api::human_bytes as human;

use crate::client::{enc, Client, Failure};
use crate::{opened, print_json};

/// An entry as `tar -tv` shows it (`--numeric-owner`, times in UTC).
fn long_line(e: &FileEntry) -> String {
    let link = match (e.kind.as_str(), &e.link) {
        ("symlink", Some(l)) => format!(" -> {l}"),
        ("hardlink", Some(l)) => format!(" link to {l}"),
        _ => String::new(),
    };
    format!("{} {}/{} {:>10} {} {}{link}", e.mode_text(), e.uid, e.gid, e.size, e.time_text(), shown(e))
}

/// Its path, with a `/` after a directory's.
fn shown(e: &FileEntry) -> String {
    if e.kind == "dir" {
        format!("{}/", e.path)
    } else {
        e.path.clone()
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn ls(
    client: &Client,
    json: bool,
    node: &str,
    path: &str,
    subpath: Option<&str>,
    archive: Option<&str>,
    long: bool,
    recursive: bool,
) -> Result<(), Failure> {
    client.sign_read(node, path, archive)?;
    let mut url = format!("/files?node={}&path={}", enc(node), enc(path));
    if let Some(a) = archive {
        url.push_str(&format!("&archive={}", enc(a)));
    }
    if let Some(s) = subpath {
        url.push_str(&format!("&under={}", enc(s)));
    }
    if recursive {
        url.push_str("&recursive=true");
    }
    let listing: Listing = match client.get(&url) {
        Err(e) if opened::sealed_refusal(&e) && client.operator_key.is_some() => {
            opened::listing(client, (node, path, archive), subpath.unwrap_or(""), recursive)?
        }
        other => other?,
    };
    if json {
        print_json(&listing);
        return Ok(());
    }
    for e in &listing.entries {
        if long {
            out!("{}", long_line(e));
        } else {
            out!("{}", shown(e));
        }
    }
    Ok(())
}

pub(crate) fn find(client: &Client, json: bool, node: &str, path: &str, pattern: &str) -> Result<(), Failure> {
    client.sign_read(node, path, None)?;
    let url = format!("/find?node={}&path={}&pattern={}", enc(node), enc(path), enc(pattern));
    let found: Found = match client.get(&url) {
        Err(e) if opened::sealed_refusal(&e) && client.operator_key.is_some() => {
            opened::find(client, node, path, pattern)?
        }
        other => other?,
    };
    if json {
        print_json(&found);
        return Ok(());
    }
    let mut matches = 0;
    for a in &found.archives {
        let hidden = if a.hidden { " (hidden: out of retention, kept for the grace period)" } else { "" };
        out!("archive {} of {}{hidden}", a.archive, a.created);
        for e in &a.entries {
            out!("  {}", long_line(e));
        }
        matches += a.entries.len();
    }
    out!(
        "{matches} match{} of `{pattern}` in {} of {} archives of {path} on {node}",
        if matches == 1 { "" } else { "es" },
        found.archives.len(),
        found.searched
    );
    for u in &found.unread {
        eprintln!("backmesh: could not search archive {u}");
    }
    Ok(())
}

pub(crate) fn diff(client: &Client, json: bool, node: &str, path: &str, from: &str, to: &str) -> Result<(), Failure> {
    client.sign_read(node, path, None)?;
    let url = format!("/diff?node={}&path={}&from={}&to={}", enc(node), enc(path), enc(from), enc(to));
    let d: Compared = match client.get(&url) {
        Err(e) if opened::sealed_refusal(&e) && client.operator_key.is_some() => {
            opened::diff(client, node, path, from, to)?
        }
        other => other?,
    };
    if json {
        print_json(&d);
        return Ok(());
    }
    let mut lines: Vec<(String, char)> = Vec::new();
    lines.extend(d.added.iter().map(|e| (shown(e), '+')));
    lines.extend(d.removed.iter().map(|e| (shown(e), '-')));
    lines.extend(d.changed.iter().map(|c| (shown(&c.after), 'M')));
    lines.extend(d.metadata.iter().map(|c| (shown(&c.after), 'U')));
    lines.sort();
    for (p, mark) in &lines {
        out!("{mark}    {p}");
    }
    out!(
        "{} → {}: {} added, {} removed, {} changed, {} with other metadata only",
        d.from,
        d.to,
        d.added.len(),
        d.removed.len(),
        d.changed.len(),
        d.metadata.len()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn dump(
    client: &Client,
    json: bool,
    node: &str,
    path: &str,
    file: &str,
    archive: Option<&str>,
    output: Option<&Path>,
    force: bool,
) -> Result<(), Failure> {
    if let Some(o) = output.filter(|o| o.exists() && !force) {
        return Err(Failure::Refused(format!("{} exists; pass --force to replace it", o.display())));
    }
    client.sign_read(node, path, archive)?;
    let mut url = format!("/dump?node={}&path={}&file={}", enc(node), enc(path), enc(file));
    if let Some(a) = archive {
        url.push_str(&format!("&archive={}", enc(a)));
    }
    // Through the node; an encrypted archive it cannot open, here.
    let fill = |to: &mut dyn Write| -> Result<Dumped, Failure> {
        let mut resp = match client.stream(&url, "application/octet-stream") {
            Err(e) if opened::sealed_refusal(&e) && client.operator_key.is_some() => {
                return opened::dump(client, (node, path, archive), file, to);
            }
            other => other?,
        };
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let id = header("x-backmesh-archive").unwrap_or_default();
        let read = header("x-backmesh-members-read").unwrap_or_default();
        let (members_read, members) = read.split_once('/').unwrap_or(("0", "0"));
        let bytes_read: u64 = header("x-backmesh-bytes-read").and_then(|b| b.parse().ok()).unwrap_or(0);
        let expected: Option<u64> = header("content-length").and_then(|l| l.parse().ok());
        let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
        let got = copy(&mut reader, to).map_err(|e| Failure::Refused(format!("the download broke off: {e}")))?;
        short(got, expected)?;
        Ok(Dumped {
            archive: id,
            file: file.into(),
            output: Default::default(),
            size: got,
            members_read: members_read.parse().unwrap_or(0),
            members: members.parse().unwrap_or(0),
            bytes_read,
            opened: "node".into(),
        })
    };
    let Some(output) = output else {
        let mut stdout = std::io::stdout().lock();
        fill(&mut stdout)?;
        return stdout.flush().map_err(|e| Failure::Refused(format!("cannot write to stdout: {e}")));
    };
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let fail = |what: String| Failure::Refused(format!("{what}; nothing was written to {}", output.display()));
    let mut part = tempfile::Builder::new()
        .prefix(".backmesh-dump-")
        .tempfile_in(dir)
        .map_err(|e| fail(format!("cannot write in {}: {e}", dir.display())))?;
    let mut dumped = fill(part.as_file_mut()).map_err(|e| match e {
        Failure::Refused(m) => fail(m),
        other => other,
    })?;
    part.as_file().sync_all().map_err(|e| fail(format!("cannot sync {}: {e}", output.display())))?;
    part.persist(output).map_err(|e| fail(format!("cannot create {}: {}", output.display(), e.error)))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    dumped.output = output.to_path_buf();
    if json {
        print_json(&dumped);
    } else {
        out!(
            "dumped: {file} of archive {} of {path} on {node} → {} ({}; read {} of {} members, {}{})",
            dumped.archive,
            output.display(),
            human(dumped.size),
            dumped.members_read,
            dumped.members,
            human(dumped.bytes_read),
            if dumped.opened == "here" { ", opened here" } else { "" }
        );
    }
    Ok(())
}

fn copy(from: &mut dyn Read, to: &mut dyn Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(got);
        }
        to.write_all(&buf[..n])?;
        got += n as u64;
    }
}

/// A download shorter or longer than the node said is damaged.
fn short(got: u64, expected: Option<u64>) -> Result<(), Failure> {
    match expected {
        Some(e) if e != got => Err(Failure::Refused(format!("the download is damaged: {got} bytes of {e}"))),
        _ => Ok(()),
    }
}
