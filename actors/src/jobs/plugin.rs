//! Job sources other than a directory, and hooks (protocol 1; the contract
//! for plugin authors is docs/plugins.md).
//!
//! - `dir` (the default): the job's path is a directory, backed up as is.
//! - `command`: the job's `args` are a command line (program, then its
//!   arguments, no shell); its stdout is streamed to a file named after the
//!   last component of the job's path, and that file is the archive.
//! - any other name: an executable `DATA_DIR/plugins/NAME`, or an absolute
//!   path. It runs with the job's `args`, in an empty output directory
//!   (`BACKMESH_OUTPUT_DIR`, also its working directory); what it leaves
//!   there is the archive. Its stdout carries protocol messages, one JSON
//!   object per line; its stderr is kept for the failure message.
//!
//! Every entry of a plugin's output gets the modification time 0 before it
//! is archived, so that identical output is recognised as unchanged.
//! `pre` and `post` hooks are shell commands (`sh -c`) run with the job's
//! details in the environment. Everything a job starts runs in its own
//! process group, killed whole when it outlives the job's timeout.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;

pub use crate::log::job_spec::{JobSpec, PluginReport, Source, DEFAULT_TIMEOUT_S};

/// The protocol version plugins are run with (`BACKMESH_PLUGIN_PROTOCOL`).
pub const PROTOCOL: u32 = 1;
/// Longest protocol line accepted from a plugin.
const MAX_LINE: usize = 64 * 1024;
/// How much of a process's stderr is kept for messages.
const STDERR_TAIL: usize = 4096;

/// Why a job cannot run here, or why its run failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// As registered, the job cannot run on this node: its path, its
    /// source, or programs this node's operator did not allow. Nothing
    /// changes by itself.
    #[error("{0}")]
    Refused(String),
    /// A program of the job (its source command, its plugin, a hook)
    /// failed, took too long, or broke the plugin protocol: the next run
    /// may do better.
    #[error("{0}")]
    Program(String),
    /// Reading the data or writing it failed (a disk, the store).
    #[error("{0}")]
    Io(String),
}

impl crate::error::Transient for JobError {
    fn retry(&self) -> crate::error::Retry {
        match self {
            JobError::Refused(_) => crate::error::Retry::Never,
            JobError::Program(_) | JobError::Io(_) => crate::error::Retry::Later,
        }
    }
}

/// The executable a source name stands for (`None` for `dir` and `command`).
pub fn resolve(data_dir: &Path, source: &str) -> Result<Option<PathBuf>, JobError> {
    if source == "dir" || source == "command" {
        return Ok(None);
    }
    let path = if source.contains('/') {
        if !source.starts_with('/') {
            return Err(JobError::Refused(format!("plugin `{source}`: give a plugin name or an absolute path")));
        }
        PathBuf::from(source)
    } else {
        data_dir.join("plugins").join(source)
    };
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(Some(path)),
        Ok(_) => Err(JobError::Refused(format!("plugin {} is not an executable file", path.display()))),
        Err(_) if source.contains('/') => Err(JobError::Refused(format!("plugin {source} does not exist"))),
        Err(_) => Err(JobError::Refused(format!("no plugin `{source}`: put an executable at {}", path.display()))),
    }
}

/// May this node run the programs `spec` names? Only when its own
/// operator allowed it (`allowed`: `--allow-programs`); `Err` says so and
/// names the flag.
pub fn check_programs(spec: &JobSpec, allowed: bool) -> Result<(), JobError> {
    let programs = spec.programs();
    if allowed || programs.is_empty() {
        return Ok(());
    }
    Err(JobError::Refused(format!(
        "this node does not run programs for jobs ({}): its operator must start it with --allow-programs \
         (or allow_programs = true in its config)",
        programs.join(", ")
    )))
}

/// What programs this node runs for jobs, as its operator decided: none
/// without `--allow-programs`. Whoever registered the job had this node's
/// token or the operator's order (`super::change`).
#[derive(Clone, Debug, Default)]
pub struct Programs {
    pub allowed: bool,
}

impl Programs {
    /// Whether a job may run the programs of `spec` here.
    pub fn check(&self, spec: &JobSpec) -> Result<(), JobError> {
        check_programs(spec, self.allowed)
    }
}

/// Can this node run a job of `path` with `spec`? `Err` says why not.
pub fn check_source(data_dir: &Path, path: &str, spec: &JobSpec) -> Result<(), JobError> {
    match spec.source() {
        Source::Dir => check_path(path),
        Source::Command if spec.args.is_empty() => {
            Err(JobError::Refused("a `command` source needs the command line: --arg PROGRAM --arg ARG…".into()))
        }
        source => {
            if !path.starts_with('/') {
                return Err(JobError::Refused(format!(
                    "`{path}` is not an absolute path (it names the job and the restored file)"
                )));
            }
            match source {
                Source::Plugin(plugin) => resolve(data_dir, plugin).map(|_| ()),
                _ => Ok(()),
            }
        }
    }
}

/// The end of a stream, as text, for messages.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

/// How a process ended.
pub struct Finished<T> {
    pub status: ExitStatus,
    pub output: T,
    pub stderr: String,
}

impl<T> Finished<T> {
    /// "WHAT failed (exit N): <stderr>", for a process that did not succeed.
    fn failure(&self, what: &str) -> JobError {
        let why = if self.stderr.is_empty() { String::new() } else { format!(": {}", self.stderr) };
        JobError::Program(format!("{what} failed ({}){why}", exit_text(&self.status)))
    }
}

/// Runs `cmd` in its own process group with piped stdout (given to
/// `on_stdout` in a thread) and stderr (kept); kills the group after
/// `timeout` or as soon as `on_stdout` fails. `what` names it in errors.
pub fn run_with<T: Send + 'static>(
    mut cmd: Command,
    what: &str,
    timeout: Duration,
    on_stdout: impl FnOnce(std::process::ChildStdout) -> Result<T, JobError> + Send + 'static,
) -> Result<Finished<T>, JobError> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        let words = format!("cannot start {what}: {e}");
        match e.kind() {
            // Not there or not runnable: the same next time, until someone installs it.
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => JobError::Refused(words),
            _ => JobError::Program(words),
        }
    })?;
    let pgid = child.id() as i32;
    let kill = move || {
        // SAFETY: kill(2) on the process group this function created.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    };
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill();
        return Err(JobError::Io(format!("{what}: no pipes")));
    };
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 4 * STDERR_TAIL {
                buf.drain(..buf.len() - STDERR_TAIL);
            }
        }
        buf
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(on_stdout(stdout));
    });
    let deadline = Instant::now() + timeout;
    let mut output = None;
    let status = loop {
        if output.is_none() {
            match rx.try_recv() {
                Ok(Ok(v)) => output = Some(v),
                Ok(Err(e)) => {
                    kill();
                    let _ = child.wait();
                    return Err(e);
                }
                Err(_) => {}
            }
        }
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                kill();
                let _ = child.wait();
                return Err(JobError::Program(format!(
                    "{what} did not finish within {} s and was killed (raise the job's --timeout if it needs longer)",
                    timeout.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(JobError::Io(format!("{what}: {e}"))),
        }
    };
    // The process is gone; its children may still hold the pipes: give the
    // readers a moment, then end the group.
    let output = match output {
        Some(v) => v,
        None => match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => r?,
            Err(_) => {
                kill();
                return Err(JobError::Program(format!(
                    "{what} exited but its output never ended (a child process kept it open)"
                )));
            }
        },
    };
    kill();
    let stderr = tail(&err_thread.join().unwrap_or_default());
    Ok(Finished { status, output, stderr })
}

fn exit_text(st: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "an unknown status".into(),
    }
}

/// Job details every hook and plugin gets in its environment.
fn job_env(cmd: &mut Command, node: &str, path: &str) {
    cmd.env("BACKMESH_PLUGIN_PROTOCOL", PROTOCOL.to_string()).env("BACKMESH_NODE", node).env("BACKMESH_PATH", path);
}

/// Runs a hook (`sh -c`); `Err` is the failure in words.
pub fn run_hook(
    kind: &str,
    cmdline: &str,
    node: &str,
    path: &str,
    extra: &[(&str, String)],
    timeout: Duration,
) -> Result<(), JobError> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(cmdline);
    job_env(&mut cmd, node, path);
    cmd.env("BACKMESH_HOOK", kind);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let what = format!("{kind} hook `{cmdline}`");
    let done = run_with(cmd, &what, timeout, |mut out| {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
        Ok(())
    })?;
    if done.status.success() {
        Ok(())
    } else {
        Err(done.failure(&what))
    }
}

/// Streams `args` (a command line)'s stdout to `file`.
pub fn run_command_source(
    args: &[String],
    node: &str,
    path: &str,
    file: &Path,
    timeout: Duration,
) -> Result<u64, JobError> {
    let Some((program, rest)) = args.split_first() else {
        return Err(JobError::Refused("a `command` source needs the command line".into()));
    };
    let mut cmd = Command::new(program);
    cmd.args(rest);
    job_env(&mut cmd, node, path);
    let what = format!("command `{}`", args.join(" "));
    let mut out =
        std::fs::File::create(file).map_err(|e| JobError::Io(format!("cannot write {}: {e}", file.display())))?;
    let target = file.display().to_string();
    let done = run_with(cmd, &what, timeout, move |mut stdout| {
        let n =
            std::io::copy(&mut stdout, &mut out).map_err(|e| JobError::Io(format!("cannot write {target}: {e}")))?;
        out.flush().map_err(|e| JobError::Io(format!("cannot write {target}: {e}")))?;
        Ok(n)
    })?;
    if !done.status.success() {
        return Err(done.failure(&what));
    }
    Ok(done.output)
}

/// One protocol line from a plugin.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    log: Option<String>,
    warning: Option<String>,
    summary: Option<String>,
    stats: Option<BTreeMap<String, serde_json::Value>>,
    archive: Option<bool>,
}

/// Folds a plugin's stdout (protocol lines) into a report.
fn read_protocol(name: &str, stdout: impl Read) -> Result<PluginReport, JobError> {
    let mut report = PluginReport { archive: true, ..Default::default() };
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| JobError::Io(format!("plugin {name}: {e}")))?;
        if n == 0 {
            break;
        }
        if line.len() > MAX_LINE {
            return Err(JobError::Program(format!("plugin {name} printed a line longer than {MAX_LINE} bytes; protocol {PROTOCOL} wants one JSON object per line")));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let m: Message = serde_json::from_str(text).map_err(|e| {
            let shown: String = text.chars().take(80).collect();
            JobError::Program(format!("plugin {name} printed `{shown}`, which is not a protocol {PROTOCOL} message ({e}); stdout is for JSON lines such as {{\"log\": \"…\"}}, data goes in $BACKMESH_OUTPUT_DIR"))
        })?;
        if let Some(l) = m.log {
            report.log.push(l);
        }
        if let Some(w) = m.warning {
            report.log.push(format!("warning: {w}"));
        }
        if m.summary.is_some() {
            report.summary = m.summary;
        }
        if let Some(s) = m.stats {
            report.stats.extend(s);
        }
        if let Some(a) = m.archive {
            report.archive = a;
        }
        if report.log.len() > 20 {
            report.log.remove(0);
        }
    }
    Ok(report)
}

/// Runs plugin `exe` with `args` into `out_dir`; its report.
pub fn run_plugin(
    exe: &Path,
    args: &[String],
    node: &str,
    path: &str,
    out_dir: &Path,
    timeout: Duration,
) -> Result<PluginReport, JobError> {
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut cmd = Command::new(exe);
    cmd.args(args).current_dir(out_dir).env("BACKMESH_OUTPUT_DIR", out_dir);
    job_env(&mut cmd, node, path);
    let what = format!("plugin {name}");
    let n2 = name.clone();
    let done = run_with(cmd, &what, timeout, move |stdout| read_protocol(&n2, stdout))?;
    if !done.status.success() {
        return Err(done.failure(&what));
    }
    Ok(done.output)
}

/// Gives every entry under `dir` (and `dir`) modification time 0.
pub fn zero_mtimes(dir: &Path) -> std::io::Result<()> {
    let zero = filetime::FileTime::from_unix_time(0, 0);
    fn walk(p: &Path, zero: filetime::FileTime) -> std::io::Result<()> {
        for e in std::fs::read_dir(p)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                walk(&e.path(), zero)?;
            }
            if !ft.is_symlink() {
                filetime::set_file_mtime(e.path(), zero)?;
            }
        }
        Ok(())
    }
    walk(dir, zero)?;
    filetime::set_file_mtime(dir, zero)
}

/// Can `path` be backed up on this node? `Err` says why not, in words.
pub fn check_path(path: &str) -> Result<(), JobError> {
    let p = std::path::Path::new(path);
    if !p.is_absolute() {
        return Err(JobError::Refused(format!("`{path}` is not an absolute path")));
    }
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(JobError::Refused(format!("{path} is not a directory"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(JobError::Refused(format!("{path} does not exist"))),
        Err(e) => Err(JobError::Io(format!("{path} cannot be read: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lines_fold_into_a_report_and_garbage_is_named() {
        let out =
            b"{\"log\": \"dumping\"}\n\n{\"stats\": {\"rows\": 12}}\n{\"summary\": \"12 rows\", \"archive\": false}\n";
        let r = read_protocol("p", &out[..]).unwrap();
        assert_eq!(r.log, vec!["dumping"]);
        assert_eq!(r.summary.as_deref(), Some("12 rows"));
        assert_eq!(r.stats["rows"], serde_json::json!(12));
        assert!(!r.archive);
        let e = read_protocol("p", &b"{\"log\": \"ok\"}\nhello world\n"[..]).unwrap_err();
        assert!(matches!(e, JobError::Program(_)), "a plugin that breaks the protocol may do better next run");
        let e = e.to_string();
        assert!(e.contains("`hello world`") && e.contains("not a protocol 1 message"), "{e}");
        let e = read_protocol("p", &b"{\"bogus\": 1}\n"[..]).unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn a_hanging_process_is_killed_with_its_children_after_the_timeout() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("sleep 30 & sleep 30");
        let t = Instant::now();
        let e = run_with(cmd, "test", Duration::from_millis(300), |mut o| {
            let mut v = Vec::new();
            let _ = o.read_to_end(&mut v);
            Ok(())
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("did not finish within"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn hooks_report_their_exit_and_stderr() {
        let t = Duration::from_secs(10);
        assert!(run_hook("pre", "test \"$BACKMESH_PATH\" = /x", "n1", "/x", &[], t).is_ok());
        let e = run_hook("pre", "echo 'db is locked' >&2; exit 3", "n1", "/x", &[], t).unwrap_err().to_string();
        assert!(e.contains("exit 3") && e.contains("db is locked"), "{e}");
    }

    #[test]
    fn a_command_source_streams_stdout_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("dump.sql");
        let args: Vec<String> =
            ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\\\0' x"].iter().map(|s| s.to_string()).collect();
        let n = run_command_source(&args, "n1", "/db/dump.sql", &f, Duration::from_secs(20)).unwrap();
        assert_eq!(n, 3_000_000);
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 3_000_000);
        let bad: Vec<String> = ["sh", "-c", "echo nope >&2; exit 2"].iter().map(|s| s.to_string()).collect();
        let e = run_command_source(&bad, "n1", "/db/x", &f, Duration::from_secs(20)).unwrap_err().to_string();
        assert!(e.contains("exit 2") && e.contains("nope"), "{e}");
    }

    #[test]
    fn sources_are_checked_before_a_job_is_registered() {
        let dir = tempfile::tempdir().unwrap();
        let spec = |s: &str, args: &[&str]| JobSpec {
            source: Some(s.into()),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        let refused = check_source(dir.path(), "/db/x.sql", &spec("command", &[])).unwrap_err();
        assert_eq!(crate::error::Transient::retry(&refused), crate::error::Retry::Never, "{refused}");
        assert!(refused.to_string().contains("--arg"));
        assert!(check_source(dir.path(), "/db/x.sql", &spec("command", &["pg_dump"])).is_ok());
        assert!(check_source(dir.path(), "/db", &spec("sqlite", &[]))
            .unwrap_err()
            .to_string()
            .contains("plugins/sqlite"));
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        let p = dir.path().join("plugins/sqlite");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        assert!(check_source(dir.path(), "/db", &spec("sqlite", &[]))
            .unwrap_err()
            .to_string()
            .contains("not an executable"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_source(dir.path(), "/db", &spec("sqlite", &[])).is_ok());
        assert!(check_source(dir.path(), "relative", &spec("sqlite", &[])).is_err());
    }

    #[test]
    fn programs_run_only_where_the_node_s_operator_allowed_them() {
        let spec = |s: &str, args: &[&str]| JobSpec {
            source: Some(s.into()),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        let dir_job = JobSpec::default();
        assert!(check_programs(&dir_job, false).is_ok(), "a directory job runs no program");
        let hooked = JobSpec { pre: Some("touch /tmp/pwned".into()), ..JobSpec::default() };
        let cases = [
            (spec("command", &["pg_dump"]), "a command source"),
            (spec("sqlite", &[]), "a plugin"),
            (hooked, "a pre hook"),
            (JobSpec { post: Some("x".into()), ..JobSpec::default() }, "a post hook"),
            (JobSpec { notify_cmd: Some("x".into()), ..JobSpec::default() }, "a notification command"),
        ];
        for (s, what) in cases {
            let err = check_programs(&s, false).unwrap_err().to_string();
            assert!(err.contains(what) && err.contains("--allow-programs"), "{err}");
            assert!(check_programs(&s, true).is_ok());
        }
    }
}
