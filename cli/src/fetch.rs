//! `backmesh fetch`: an archive as one plain `.tgz` on this machine,
//! written to a staging file, synced, then renamed into place. An
//! encrypted archive comes sealed and is opened here (`keys`).

use backmesh_api::cli::Fetched;
use backmesh_api::human_bytes as human;

use crate::args::Cli;
use crate::client::{enc, Client, Failure};
use crate::keys;
use crate::{clear_line, is_tty, print_json};

#[allow(clippy::too_many_arguments)]
pub(crate) fn fetch(
    cli: &Cli,
    json: bool,
    node: &str,
    path: &str,
    archive: Option<&str>,
    output: &std::path::Path,
    force: bool,
    include: &[String],
) -> Result<(), Failure> {
    use sha2::Digest as _;
    use std::io::{Read, Write};
    if output.exists() && !force {
        return Err(Failure::Refused(format!("{} exists; pass --force to replace it", output.display())));
    }
    // No overall time limit: an archive may take long to download.
    let client = Client::new(cli)?;
    client.sign_read(node, path, archive)?;
    let mut url = format!("/fetch?node={}&path={}", enc(node), enc(path));
    if let Some(a) = archive {
        url.push_str(&format!("&archive={}", enc(a)));
    }
    for glob in include {
        url.push_str(&format!("&include={}", enc(glob)));
    }
    // An encrypted archive comes sealed, and is opened here; a part of one
    // the node cannot open, from the members it sends.
    let mut resp = match client.stream(&url, &format!("application/gzip, {}", keys::SEALED_TYPE)) {
        Err(e) if !include.is_empty() && crate::opened::sealed_refusal(&e) && client.operator_key.is_some() => None,
        other => Some(other?),
    };
    let header = |name: &str| resp.as_ref()?.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    // Absent for archives of format 3 and later: the node checked every
    // member against the sealed manifest, and a member it could not read
    // intact ends the stream short.
    let expected_sha = header("x-backmesh-sha256");
    let id = header("x-backmesh-archive").unwrap_or_default();
    // Absent when the node opens an encrypted archive of its own as it sends it.
    let expected_len: Option<u64> = header("content-length").and_then(|l| l.parse().ok());
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let fail = |what: String| Failure::Refused(format!("{what}; nothing was written to {}", output.display()));
    let mut part = tempfile::Builder::new()
        .prefix(".backmesh-fetch-")
        .tempfile_in(dir)
        .map_err(|e| fail(format!("cannot write in {}: {e}", dir.display())))?;
    let sealed = header("content-type").is_some_and(|t| t.starts_with(keys::SEALED_TYPE));
    let mut hasher = sha2::Sha256::new();
    let mut got = 0u64;
    let tty = is_tty(json);
    let mut meter = crate::progress::Meter::new(format!("fetching {path} of {node}"), expected_len, json);
    let mut write = |data: &[u8]| -> Result<(), Failure> {
        hasher.update(data);
        part.write_all(data).map_err(|e| fail(format!("cannot write {}: {e}", output.display())))?;
        got += data.len() as u64;
        meter.add(data.len() as u64);
        Ok(())
    };
    let refused = |e: Failure| match e {
        Failure::Refused(m) => fail(m),
        other => other,
    };
    let Some(resp) = resp.as_mut() else {
        // A part of an encrypted archive this node cannot open: opened here.
        let id = crate::opened::part_tgz(&client, (node, path, archive), include, &mut write).map_err(refused)?;
        meter.finish();
        return finish(json, (node, path, &id), output, part, hasher, got, tty);
    };
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let id = if sealed {
        keys::sealed_to_tgz(&client, &mut reader, &mut write).map_err(refused)?
    } else {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(|e| fail(format!("the download broke off: {e}")))?;
            if n == 0 {
                break;
            }
            write(&buf[..n])?;
        }
        id
    };
    meter.finish();
    let sha: String = hasher.clone().finalize().iter().map(|b| format!("{b:02x}")).collect();
    if let Some(expected_len) = expected_len.filter(|l| *l != got) {
        return Err(fail(format!("the download is damaged: {got} bytes, the archive has {expected_len} bytes")));
    }
    if let Some(expected) = expected_sha.filter(|e| *e != sha) {
        return Err(fail(format!("the download is damaged: sha256 {sha}, the archive has sha256 {expected}")));
    }
    finish(json, (node, path, &id), output, part, hasher, got, tty)
}

/// Syncs the downloaded file and renames it into place, then says so.
#[allow(clippy::too_many_arguments)]
fn finish(
    json: bool,
    (node, path, id): (&str, &str, &str),
    output: &std::path::Path,
    part: tempfile::NamedTempFile,
    hasher: sha2::Sha256,
    got: u64,
    tty: bool,
) -> Result<(), Failure> {
    use sha2::Digest as _;
    clear_line(tty);
    let sha: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let fail = |what: String| Failure::Refused(format!("{what}; nothing was written to {}", output.display()));
    part.as_file().sync_all().map_err(|e| fail(format!("cannot sync {}: {e}", output.display())))?;
    part.persist(output).map_err(|e| fail(format!("cannot create {}: {}", output.display(), e.error)))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    if json {
        print_json(&Fetched { archive: id.to_string(), file: output.to_path_buf(), size: got, sha256: sha });
    } else {
        out!("fetched: archive {id} of {path} on {node} → {} ({}, sha256 {sha})", output.display(), human(got));
    }
    Ok(())
}
