//! The local-store subcommands.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use backmesh_core::archive::{self, CreateOptions, Progress, RestoreOptions};
use backmesh_core::hash::Digest;
use backmesh_core::jobs::{run_backup, RunOutcome, UnchangedBy};
use backmesh_core::store::{ArchiveSummary, Retention, Store, DEFAULT_KEEP};
use clap::Args;
use serde::Serialize;

use backmesh_api::local as out;

/// A backup's file warnings as `--json` shows them.
fn warnings(w: &[backmesh_core::archive::Warning]) -> Vec<out::FileWarning> {
    use backmesh_core::archive::WarningKind;
    w.iter()
        .map(|w| out::FileWarning {
            path: w.path.clone(),
            kind: match w.kind {
                WarningKind::ChangedWhileRead => out::Trouble::ChangedWhileRead,
                WarningKind::Vanished => out::Trouble::Vanished,
                WarningKind::Unreadable => out::Trouble::Unreadable,
                WarningKind::Skipped => out::Trouble::Skipped,
            },
            message: w.message.clone(),
        })
        .collect()
}

fn print_json(v: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(v).context("cannot write the answer as JSON")?);
    Ok(())
}

pub struct Ctx {
    pub data_dir: PathBuf,
    pub name: String,
    pub json: bool,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn open_store(ctx: &Ctx) -> Result<Store> {
    Store::open(&ctx.data_dir).with_context(|| format!("cannot open the store in {}", ctx.data_dir.display()))
}

/// The absolute form of a directory argument, as archives are keyed.
fn source_path(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) };
    // Normalise `.` and `..` without following symlinks of the last part.
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

fn key_of(p: &Path) -> Result<String> {
    let abs = source_path(p)?;
    abs.to_str().map(str::to_string).ok_or_else(|| anyhow!("path {} is not valid UTF-8", abs.display()))
}

use backmesh_api::human_bytes as mib;
use backmesh_core::clock::rfc3339;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The directory to back up.
    path: PathBuf,
    /// Leave out matching paths (`*.log`, `cache/**`); repeatable.
    #[arg(long = "exclude", value_name = "GLOB")]
    excludes: Vec<String>,
    /// Archives to keep for this directory.
    #[arg(long, default_value_t = DEFAULT_KEEP)]
    keep: usize,
    /// Also keep every archive stored less than this long ago (36h, 14d, 2w, 6m).
    #[arg(long, value_name = "DURATION", value_parser = backmesh_core::store::parse_within)]
    keep_within: Option<std::time::Duration>,
    /// Group target in KiB (how much raw tar goes into one gzip member).
    #[arg(long, value_name = "KIB", default_value_t = (archive::cut::DEFAULT_TARGET / 1024) as u64)]
    target_kib: u64,
    /// gzip level 1-9.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=9))]
    level: u32,
    /// Compression threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seal the archive under this data directory's data key (made, 0600,
    /// if it has none), as a node with `encrypt = on` does.
    #[arg(long)]
    encrypt: bool,
    /// With --encrypt: the operator recovery recipient (age1…) the data key
    /// is wrapped to besides this node. Repeatable; at least one.
    #[arg(long = "operator-recovery", value_name = "age1…", requires = "encrypt")]
    operator_recovery: Vec<String>,
}

/// The sealing of a local backup: this data directory's data key, wrapped
/// to its own identity and `recovery`.
fn local_sealing(
    store: &backmesh_core::store::Store,
    name: &str,
    recovery: &[String],
) -> Result<Arc<backmesh_core::archive::sealed::Sealing>> {
    if recovery.is_empty() {
        bail!(
            "--encrypt needs an --operator-recovery recipient: an archive only this data directory could open is \
             not made (`backmesh operator show --recovery` prints the operator's)"
        );
    }
    let authority = backmesh_core::authority::Authority::new(&[])
        .and_then(|a| a.with_recovery(recovery))
        .map_err(|e| anyhow!("--operator-recovery: {e}"))?;
    let key = store.make_data_key()?.clone();
    let own = backmesh_core::store::node_unwrapper(store.identity())
        .ok_or_else(|| anyhow!("this data directory's identity key cannot unwrap a data key"))?;
    let seals =
        backmesh_core::jobs::seals::Seals::new(key, name.into(), store.peer_id(), own.recipient(), Arc::new(authority));
    seals.current().map_err(|e| anyhow!("{e}"))
}

pub fn backup(ctx: &Ctx, a: BackupArgs) -> Result<ExitCode> {
    let path = source_path(&a.path)?;
    let meta = std::fs::metadata(&path).with_context(|| format!("cannot back up {}", path.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory; backmesh backs up directories", path.display());
    }
    let store = open_store(ctx)?;
    let seal = if a.encrypt { Some(local_sealing(&store, &ctx.name, &a.operator_recovery)?) } else { None };
    let progress = Arc::new(Progress::default());
    let opts = CreateOptions {
        seal,
        target: (a.target_kib as usize) * 1024,
        level: a.level,
        threads: a.threads,
        excludes: a.excludes,
        progress: Some(progress.clone()),
        ..CreateOptions::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = (std::io::stderr().is_terminal() && !ctx.json).then(|| spawn_progress(progress, stop.clone(), false));
    let report =
        run_backup(&store, &ctx.name, &path, &opts, Retention { keep: a.keep, within: a.keep_within, grace: None });
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = ticker {
        let _ = t.join();
    }
    let report = report.with_context(|| format!("backup of {} failed", path.display()))?;
    let secs = report.duration_ms as f64 / 1000.0;
    match &report.outcome {
        RunOutcome::Unchanged { archive_id, by, warnings } => {
            let how = match by {
                UnchangedBy::StatCache => "metadata unchanged, nothing read",
                UnchangedBy::TreeDigest => "content identical",
            };
            if ctx.json {
                print_json(&out::Backup {
                    result: out::BackupResult::Unchanged,
                    archive: archive_id.clone(),
                    size: None,
                    files: None,
                    new_bytes: None,
                    members: None,
                    warnings: self::warnings(warnings),
                    pruned: Vec::new(),
                    error: None,
                    duration_ms: report.duration_ms,
                })?;
            } else {
                println!("unchanged: {} ({how}; latest archive {archive_id}) in {secs:.2}s", path.display());
            }
        }
        // A plain directory backup never asks for no archive.
        RunOutcome::NoArchive => println!("finished: {} (nothing to archive)", path.display()),
        RunOutcome::Stored { manifest: m, new_bytes, retention, reused } => {
            if ctx.json {
                print_json(&out::Backup {
                    result: out::BackupResult::Finished,
                    archive: m.id.clone(),
                    size: Some(m.tgz_len),
                    files: Some(m.stats.files),
                    new_bytes: Some(*new_bytes),
                    members: Some(m.members.len()),
                    warnings: warnings(&m.warnings),
                    pruned: retention.removed.clone(),
                    error: None,
                    duration_ms: report.duration_ms,
                })?;
            } else {
                println!(
                    "finished: {} → archive {}\n  {} files, {} dirs, {} of content → {} .tgz in {} members ({} new; {} unchanged taken unread) in {secs:.2}s",
                    path.display(),
                    m.id,
                    m.stats.files,
                    m.stats.dirs,
                    mib(m.stats.content_bytes),
                    mib(m.tgz_len),
                    m.members.len(),
                    mib(*new_bytes),
                    reused.0,
                );
                for w in &m.warnings {
                    println!("  warning: {}: {}", w.path, w.message);
                }
                if !retention.removed.is_empty() {
                    println!(
                        "  retention: pruned {} archive(s), freed {}",
                        retention.removed.len(),
                        mib(retention.freed_bytes)
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress line on stderr, every 200 ms, until `stop`.
fn spawn_progress(p: Arc<Progress>, stop: Arc<AtomicBool>, restoring: bool) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let secs = start.elapsed().as_secs_f64().max(0.001);
            let (entries, read, out) = (
                p.entries.load(Ordering::Relaxed),
                p.bytes_read.load(Ordering::Relaxed),
                p.bytes_out.load(Ordering::Relaxed),
            );
            if restoring {
                let rate = out as f64 / secs / (1024.0 * 1024.0);
                eprint!("\r  {entries} entries, {} written, {rate:.0} MiB/s   ", mib(out));
            } else {
                let rate = read as f64 / secs / (1024.0 * 1024.0);
                eprint!("\r  {entries} entries, {} read, {} compressed, {rate:.0} MiB/s   ", mib(read), mib(out));
            }
        }
        eprint!("\r{:76}\r", "");
    })
}

#[derive(Args, Debug)]
pub struct ArchivesArgs {
    /// Only archives of this directory.
    path: Option<PathBuf>,
}

fn summary_json(s: &ArchiveSummary) -> out::StoredArchive {
    out::StoredArchive {
        id: s.id.clone(),
        node: s.node.clone(),
        path: s.path.clone(),
        created: rfc3339(s.created_ms),
        size: s.tgz_len,
        files: s.files,
        sha256: (s.tgz_sha256 != Digest::default()).then(|| s.tgz_sha256.to_hex()),
        warnings: s.warnings,
    }
}

pub fn archives(ctx: &Ctx, a: ArchivesArgs) -> Result<ExitCode> {
    let store = open_store(ctx)?;
    let mut list = match &a.path {
        Some(p) => store.list(&ctx.name, &key_of(p)?)?,
        None => store.list_all()?,
    };
    if a.path.is_none() {
        list.sort_by(|x, y| {
            (&x.node, &x.path, std::cmp::Reverse(x.order())).cmp(&(&y.node, &y.path, std::cmp::Reverse(y.order())))
        });
    }
    if ctx.json {
        print_json(&out::Archives { archives: list.iter().map(summary_json).collect() })?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("no archives in {}", ctx.data_dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<32} {:<21} {:>10} {:>8}  NODE:PATH", "ID", "CREATED", "SIZE", "FILES");
    for s in &list {
        println!(
            "{:<32} {:<21} {:>10} {:>8}  {}:{}",
            s.id,
            rfc3339(s.created_ms),
            mib(s.tgz_len),
            s.files,
            s.node,
            s.path
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The directory that was backed up.
    path: PathBuf,
    /// Where to restore (created if missing; must be empty unless --overwrite).
    #[arg(long)]
    to: PathBuf,
    /// Archive id (default: the newest).
    #[arg(long)]
    archive: Option<String>,
    /// Replace a non-empty target; the old tree is removed only after the new one is complete.
    #[arg(long)]
    overwrite: bool,
    /// Archives made by another node name (default: this node).
    #[arg(long)]
    from_node: Option<String>,
    /// Only the files matching GLOB (repeatable), with the directories above them, read from
    /// the members that hold them (patterns as for excludes); into a new or empty directory.
    #[arg(long = "include", value_name = "GLOB")]
    include: Vec<String>,
}

pub fn restore(ctx: &Ctx, a: RestoreArgs) -> Result<ExitCode> {
    let store = open_store(ctx)?;
    let node = a.from_node.as_deref().unwrap_or(&ctx.name);
    let key = key_of(&a.path)?;
    let m = store.manifest(node, &key, a.archive.as_deref())?;
    let started = Instant::now();
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ticker =
        (std::io::stderr().is_terminal() && !ctx.json).then(|| spawn_progress(progress.clone(), stop.clone(), true));
    let key = store.key_for_archive(&m).cloned();
    let opts = RestoreOptions {
        overwrite: a.overwrite,
        progress: Some(progress),
        key,
        include: a.include,
        ..Default::default()
    };
    let report = archive::restore_archive(&m, &store, &a.to, &opts);
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = ticker {
        let _ = t.join();
    }
    let report = report.with_context(|| format!("restore of archive {} into {} failed", m.id, a.to.display()))?;
    if ctx.json {
        print_json(&out::Restored {
            result: "restored".into(),
            archive: m.id.clone(),
            to: a.to.clone(),
            entries: report.entries,
            bytes: report.bytes,
            warnings: report.warnings.clone(),
        })?;
    } else {
        println!(
            "restored archive {} into {}: {} entries, {} in {:.2}s",
            m.id,
            a.to.display(),
            report.entries,
            mib(report.bytes),
            started.elapsed().as_secs_f64()
        );
        for w in &report.warnings {
            println!("  warning: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The directory that was backed up.
    path: PathBuf,
    /// Output file (`-` for stdout).
    #[arg(short = 'o', long)]
    output: PathBuf,
    #[arg(long)]
    archive: Option<String>,
    #[arg(long)]
    from_node: Option<String>,
}

pub fn export(ctx: &Ctx, a: ExportArgs) -> Result<ExitCode> {
    let store = open_store(ctx)?;
    let node = a.from_node.as_deref().unwrap_or(&ctx.name);
    let m = store.manifest(node, &key_of(&a.path)?, a.archive.as_deref())?;
    if a.output.as_os_str() == "-" {
        if std::io::stdout().is_terminal() {
            bail!("refusing to write a binary archive to the terminal: redirect stdout or use -o FILE");
        }
        let mut out = std::io::stdout().lock();
        store.export_tgz_with(&m, store.key_for_archive(&m), &mut out)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let dir = a.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".backmesh-export-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let (len, sha) = {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        let written = store.export_tgz_with(&m, store.key_for_archive(&m), &mut w)?;
        w.flush()?;
        written
    };
    {
        use std::os::unix::fs::PermissionsExt;
        // tempfile creates 0600; an exported archive is an ordinary file.
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(&a.output).map_err(|e| e.error).with_context(|| format!("cannot write {}", a.output.display()))?;
    if ctx.json {
        print_json(&out::Exported { archive: m.id.clone(), file: a.output.clone(), size: len, sha256: sha.to_hex() })?;
    } else {
        println!("wrote {} ({}, sha256 {sha})", a.output.display(), mib(len));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Only archives of this directory.
    path: Option<PathBuf>,
}

pub fn verify(ctx: &Ctx, a: VerifyArgs) -> Result<ExitCode> {
    let store = open_store(ctx)?;
    let list = match &a.path {
        Some(p) => store.list(&ctx.name, &key_of(p)?)?,
        None => store.list_all()?,
    };
    let mut bad = 0;
    let mut results = Vec::new();
    for s in &list {
        let m = store.manifest(&s.node, &s.path, Some(&s.id))?;
        let r = store.verify(&m);
        if !r.is_ok() {
            bad += 1;
        }
        if !ctx.json {
            if r.is_ok() {
                println!("ok       {} {}:{} ({} members)", s.id, s.node, s.path, r.members);
            } else {
                println!(
                    "DAMAGED  {} {}:{}: {} missing, {} damaged members",
                    s.id,
                    s.node,
                    s.path,
                    r.missing.len(),
                    r.damaged.len()
                );
            }
        }
        results.push(out::Checked {
            id: s.id.clone(),
            node: s.node.clone(),
            path: s.path.clone(),
            ok: r.is_ok(),
            missing: r.missing.iter().map(|d| d.to_hex()).collect(),
            damaged: r.damaged.iter().map(|d| d.to_hex()).collect(),
        });
    }
    if ctx.json {
        print_json(&out::Verified { archives: results, damaged: bad })?;
    }
    if bad > 0 {
        eprintln!("backmesh-node: {bad} archive(s) damaged");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
