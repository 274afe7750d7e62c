//! Job sources, hooks and notifications with real plugins (scripts/plugins)
//! on real nodes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use backmesh_api::cli::RunOutcome;
use backmesh_api::{Event, JobState, LogEntry, LogPage, Notice, Notification, PluginReport, RunResult};
use backmesh_simulations::{wait_until, write_slow_tree, Mesh};

const LONG: Duration = Duration::from_secs(60);

fn plugin(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/plugins").join(name).to_string_lossy().into_owned()
}

fn run(mesh: &Mesh, node: &str, path: &str) -> RunOutcome {
    mesh.cli_answer(0, &["run", node, path]).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether a run succeeded (`finished` or `unchanged`).
fn done(r: &RunOutcome) -> bool {
    matches!(r.result, RunResult::Finished | RunResult::Unchanged)
}

fn register(mesh: &Mesh, args: &[&str]) {
    let mut all = vec!["register"];
    all.extend_from_slice(args);
    let out = mesh.cli(0, &all);
    assert!(out.status.success(), "register {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn last_entry(mesh: &Mesh, path: &str, kind: &str) -> Option<LogEntry> {
    let page: LogPage = mesh.cli_json(0, &["log", "--path", path, "--limit", "1000"]).unwrap_or_else(|e| panic!("{e}"));
    page.entries.into_iter().rev().find(|e| e.event.kind() == kind)
}

/// What the last `kind` entry of `path`'s runs says its plugin reported.
fn reported(mesh: &Mesh, path: &str, kind: &str) -> PluginReport {
    let e = last_entry(mesh, path, kind).unwrap_or_else(|| panic!("no {kind} entry of {path}"));
    e.event.plugin().cloned().unwrap_or_else(|| panic!("no plugin report: {e:#?}"))
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().expect("sqlite3 (Debian package sqlite3)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sources_plugins_and_hooks_back_up_restore_and_fail_clearly() {
    let mesh = Mesh::chain_with(&["n1", "n2"], &["--allow-programs"]);
    let root = mesh.root.path().to_path_buf();
    let db = root.join("app.db");
    sqlite(&db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 5000) INSERT INTO t(v) SELECT hex(randomblob(40)) FROM c;");

    // `command`: a pg_dump-style dump on stdout becomes a file; restore gives it byte for byte.
    let dump_job = "/backups/app-dump.sql";
    register(
        &mesh,
        &[
            "n2",
            dump_job,
            "--every",
            "600",
            "--source",
            "command",
            "--arg",
            "sqlite3",
            "--arg",
            &db.to_string_lossy(),
            "--arg",
            ".dump",
        ],
    );
    let r = run(&mesh, "n2", dump_job);
    assert!(done(&r), "{r:?}");
    assert_eq!(run(&mesh, "n2", dump_job).result, RunResult::Unchanged, "the same dump is recognised as unchanged");
    let to = root.join("restored-dump");
    let out = mesh.cli(0, &["restore", "n2", dump_job, "--on", "n1", "--to", &to.to_string_lossy()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(to.join("app-dump.sql")).unwrap(), sqlite(&db, ".dump"));

    // The SQLite plugin: an online copy that opens and holds every row.
    let copy_job = "/backups/app.db";
    register(&mesh, &["n2", copy_job, "--every", "600", "--source", &plugin("sqlite"), "--arg", &db.to_string_lossy()]);
    let r = run(&mesh, "n2", copy_job);
    assert!(done(&r), "{r:?}");
    let to = root.join("restored-db");
    assert!(mesh.cli(0, &["restore", "n2", copy_job, "--to", &to.to_string_lossy()]).status.success());
    assert_eq!(sqlite(&to.join("app.db"), "PRAGMA integrity_check;").trim(), "ok");
    assert_eq!(sqlite(&to.join("app.db"), "SELECT count(*) FROM t;").trim(), "5000");
    let kind = if r.result == RunResult::Finished { "finished" } else { "unchanged" };
    let summary = reported(&mesh, copy_job, kind).summary.unwrap_or_default();
    assert!(summary.contains("integrity ok"), "{summary}");

    // rsync mirror, installed in DATA_DIR/plugins: mirrors, records rsync's statistics, keeps no archive.
    let plugins = mesh.nodes[1].dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(plugin("rsync-mirror"), plugins.join("rsync-mirror")).unwrap();
    let src = root.join("www");
    std::fs::create_dir_all(src.join("img")).unwrap();
    std::fs::write(src.join("index.html"), b"<h1>hi</h1>").unwrap();
    std::fs::write(src.join("img/logo.svg"), b"<svg/>").unwrap();
    let mirror = root.join("mirror");
    let s = src.to_string_lossy().into_owned();
    register(&mesh, &["n2", &s, "--every", "600", "--source", "rsync-mirror", "--arg", &mirror.to_string_lossy()]);
    assert_eq!(run(&mesh, "n2", &s).result, RunResult::Finished);
    assert_eq!(std::fs::read(mirror.join("img/logo.svg")).unwrap(), b"<svg/>");
    let e = last_entry(&mesh, &s, "finished").unwrap();
    let stats = &e.event.plugin().unwrap().stats;
    assert_eq!(stats.get("transferred"), Some(&serde_json::json!(2)), "{e:#?}");
    assert_eq!(e.event.archive(), Some(""), "a mirror keeps no archive: {e:#?}");
    std::fs::remove_file(src.join("index.html")).unwrap();
    run(&mesh, "n2", &s);
    assert!(!mirror.join("index.html").exists(), "the mirror follows deletions");
    assert_eq!(reported(&mesh, &s, "finished").stats.get("deleted"), Some(&serde_json::json!(1)));

    // A failing pre hook fails the run with its message; the post hook learns the result.
    let app = root.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("a"), b"a").unwrap();
    let gate = root.join("locked");
    let told = root.join("post.txt");
    let a = app.to_string_lossy().into_owned();
    let pre = format!("if [ -e {} ]; then echo 'database is locked' >&2; exit 4; fi", gate.display());
    let post = format!("echo \"$BACKMESH_RESULT $BACKMESH_ARCHIVE\" > {}", told.display());
    register(&mesh, &["n2", &a, "--every", "600", "--pre", &pre, "--post", &post]);
    std::fs::write(&gate, b"").unwrap();
    let r = run(&mesh, "n2", &a);
    assert_eq!(r.result, RunResult::Failed);
    let err = r.error.unwrap();
    assert!(err.contains("pre hook") && err.contains("exit 4") && err.contains("database is locked"), "{err}");
    assert!(std::fs::read_to_string(&told).unwrap().starts_with("failed"));
    std::fs::remove_file(&gate).unwrap();
    let r = run(&mesh, "n2", &a);
    assert_eq!(r.result, RunResult::Finished);
    assert_eq!(std::fs::read_to_string(&told).unwrap().trim(), format!("finished {}", r.archive.unwrap()));

    // A hanging plugin is killed after its timeout; garbage and a non-zero exit are named.
    let script = |name: &str, body: &str| {
        let p = root.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.to_string_lossy().into_owned()
    };
    for (name, body, timeout, words) in [
        ("hang", "sleep 600", "2", vec!["did not finish within 2 s", "killed"]),
        (
            "garbage",
            "echo 'hello, this is not json'",
            "60",
            vec!["`hello, this is not json`", "not a protocol 1 message"],
        ),
        ("broken", "echo 'cannot reach the API' >&2; exit 7", "60", vec!["exit 7", "cannot reach the API"]),
    ] {
        let job = format!("/jobs/{name}");
        register(&mesh, &["n2", &job, "--every", "600", "--source", &script(name, body), "--timeout", timeout]);
        let t = std::time::Instant::now();
        let r = run(&mesh, "n2", &job);
        assert_eq!(r.result, RunResult::Failed, "{name}: {r:?}");
        let err = r.error.unwrap();
        for w in words {
            assert!(err.contains(w), "{name}: `{w}` not in: {err}");
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{name} took {:?}", t.elapsed());
    }

    // A missing plugin or a bad source is refused at registration, by the node that would run it.
    let out = mesh.cli(0, &["register", "n2", "/x", "--every", "5", "--source", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no plugin `nosuch`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mesh.cli(0, &["register", "n2", "/x", "--every", "5", "--source", "command"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--arg"));
}

struct Receiver(Child);

/// scripts/plugins/webhook-receiver.py on a port of its choosing, writing
/// what it hears to `out` (failing the first `fail` requests): the
/// receiver and the webhook URL.
fn receiver(root: &Path, out: &Path, fail: u32) -> (Receiver, String) {
    let port_file = root.join("receiver.port");
    let rx = Receiver(
        Command::new("python3")
            .arg(plugin("webhook-receiver.py"))
            .args(["--port", "0", "--port-file", &port_file.to_string_lossy()])
            .args(["--out", &out.to_string_lossy(), "--fail", &fail.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    assert!(wait_until(LONG, || port_file.exists()), "the webhook receiver never listened");
    let port = std::fs::read_to_string(&port_file).unwrap().trim().to_string();
    (rx, format!("http://127.0.0.1:{port}/backmesh"))
}
impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_webhook_hears_failure_and_recovery_with_the_documented_fields() {
    let mesh = Mesh::chain_with(&["n1", "n2"], &["--allow-programs"]);
    let root = mesh.root.path().to_path_buf();
    let received = root.join("received.jsonl");
    // It answers 500 once: the first notification gets through on a retry.
    let (_rx, url) = receiver(&root, &received, 1);
    let app = root.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("a"), b"a").unwrap();
    let a = app.to_string_lossy().into_owned();
    let gate = root.join("broken");
    let pre = format!("if [ -e {} ]; then echo 'disk not mounted' >&2; exit 1; fi", gate.display());
    register(&mesh, &["n2", &a, "--every", "600", "--pre", &pre, "--notify", &url]);
    assert!(wait_until(LONG, || last_entry(&mesh, &a, "finished").is_some()));
    let lines = || -> Vec<Notification> {
        std::fs::read_to_string(&received)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    // (Nodes also wait 10 s after start before telling anything; the end of this test checks a
    // healthy job stays quiet once they tell.)
    std::thread::sleep(Duration::from_secs(3));
    assert!(lines().is_empty(), "nothing to tell while it is healthy: {:?}", lines());
    std::fs::write(&gate, b"").unwrap();
    assert_eq!(run(&mesh, "n2", &a).result, RunResult::Failed);
    assert!(wait_until(LONG, || lines().len() == 1), "{:?}", lines());
    let f = &lines()[0];
    assert_eq!((f.event, f.state), (Notice::Failure, JobState::Failing), "{f:?}");
    assert_eq!((f.node.as_str(), f.path.as_str()), ("n2", a.as_str()));
    assert!(f.error.as_deref().unwrap_or("").contains("disk not mounted"), "{f:?}");
    assert!(f.last_success.is_some() && f.every_min == 600 && f.notified_by == "n2" && !f.time.is_empty(), "{f:?}");
    // A second failure is not told again; the recovery is.
    assert_eq!(run(&mesh, "n2", &a).result, RunResult::Failed);
    std::fs::remove_file(&gate).unwrap();
    assert!(done(&run(&mesh, "n2", &a)));
    assert!(wait_until(LONG, || lines().len() == 2), "{:?}", lines());
    let r = &lines()[1];
    assert_eq!((r.event, r.state), (Notice::Recovery, JobState::Ok), "{r:?}");
    assert!(r.error.is_none());
    let told = last_entry(&mesh, &a, "notified").unwrap();
    assert!(matches!(told.event, Event::Notified { delivered: true, .. }), "{told:#?}");
    // Healthy again, past the notifiers' settling time (they have told twice): nothing more.
    assert!(done(&run(&mesh, "n2", &a)));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(lines().len(), 2);
}

#[test]
fn a_dead_nodes_job_is_told_stale_by_another_node_and_its_recovery_by_itself() {
    let mut mesh = Mesh::new();
    // Job "minutes" of one second: stale after two seconds without success.
    mesh.env.push(("BACKMESH_MINUTE_SECS".into(), "1".into()));
    for (i, name) in ["n1", "n2"].iter().enumerate() {
        let n = mesh.start(name, i.checked_sub(1), &["--allow-programs".into()]);
        assert!(mesh.wait_ready(n, LONG));
    }
    assert!(wait_until(LONG, || mesh.up_names(0).len() == 2));
    let root = mesh.root.path().to_path_buf();
    let app = root.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("a"), b"a").unwrap();
    let a = app.to_string_lossy().into_owned();
    let told = root.join("told.jsonl");
    let cmd = format!("printf '%s\\n' \"$BACKMESH_NOTIFICATION\" >> {}", told.display());
    register(&mesh, &["n2", &a, "--every", "1", "--notify-cmd", &cmd]);
    assert!(wait_until(LONG, || last_entry(&mesh, &a, "finished").is_some()));
    let lines = || -> Vec<Notification> {
        std::fs::read_to_string(&told)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    mesh.kill9(1);
    assert!(wait_until(LONG, || !lines().is_empty()), "no notification");
    let s = &lines()[0];
    assert_eq!(s.event, Notice::Stale, "{s:?}");
    assert_eq!(s.notified_by, "n1", "the live node tells of the dead one: {s:?}");
    mesh.restart(1);
    assert!(wait_until(LONG, || lines().len() >= 2), "{:?}", lines());
    let r = &lines()[1];
    assert_eq!(r.event, Notice::Recovery, "{r:?}");
    assert_eq!(lines().len(), 2, "each change told once: {:?}", lines());
}

#[test]
fn a_node_runs_no_program_its_operator_did_not_allow() {
    // n1 allows programs, n2 does not: a job of n2 with a hook, registered through n1, is refused by n2.
    let mut mesh = Mesh::new();
    let n1 = mesh.start("n1", None, &["--allow-programs".into()]);
    assert!(mesh.wait_ready(n1, LONG));
    let n2 = mesh.start("n2", Some(0), &[]);
    assert!(mesh.wait_ready(n2, LONG));
    assert!(wait_until(LONG, || mesh.up_names(0).len() == 2));
    let root = mesh.root.path().to_path_buf();
    let app = root.join("app");
    std::fs::create_dir_all(&app).unwrap();
    let marker = root.join("pwned");
    let hook = format!("touch {}", marker.display());
    let out = mesh.cli(0, &["register", "n2", &app.to_string_lossy(), "--every", "60", "--pre", &hook]);
    assert!(!out.status.success(), "registered: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-programs") && err.contains("pre hook"), "{err}");
    // A plain directory job of n2 is fine, and a command job of n1, which allows it, too.
    let out = mesh.cli(0, &["register", "n2", &app.to_string_lossy(), "--every", "60"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = mesh.cli(1, &["register", "n1", "/dump/x.txt", "--every", "60", "--source", "command", "--arg", "true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!marker.exists());
}

#[test]
fn a_series_that_suddenly_triples_is_told_as_an_anomaly_by_another_node() {
    let mesh = Mesh::chain(&["n1", "n2", "n3"]);
    let root = mesh.root.path().to_path_buf();
    let received = root.join("received.jsonl");
    let (_rx, url) = receiver(&root, &received, 0);
    let lines = || -> Vec<Notification> {
        let text = std::fs::read_to_string(&received).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    };
    // Three backups of about 1 MiB of data that does not compress.
    let app = root.join("app");
    std::fs::create_dir_all(&app).unwrap();
    write_slow_tree(&app, 4, 3);
    let a = app.to_string_lossy().into_owned();
    register(&mesh, &["n1", &a, "--every", "600", "--notify", &url]);
    assert!(wait_until(LONG, || last_entry(&mesh, &a, "finished").is_some()));
    for round in 0..2 {
        std::fs::write(app.join("round"), format!("{round}")).unwrap();
        assert!(done(&run(&mesh, "n1", &a)));
    }
    // Past the notifiers' settling time: a steady series is not told.
    std::thread::sleep(Duration::from_secs(12));
    assert!(lines().is_empty(), "{:?}", lines());
    // Then it triples, as data encrypted in place would.
    let more = app.join("more");
    std::fs::create_dir_all(&more).unwrap();
    write_slow_tree(&more, 8, 4);
    assert!(done(&run(&mesh, "n1", &a)));
    assert!(wait_until(LONG, || !lines().is_empty()), "nothing told");
    let n = &lines()[0];
    assert_eq!((n.event, n.node.as_str(), n.path.as_str()), (Notice::Anomaly, "n1", a.as_str()), "{n:?}");
    assert_ne!(n.notified_by, "n1", "told by another node than the series' own: {n:?}");
    assert!(n.detail.as_deref().unwrap_or("").contains("the median of the 3 before it"), "{n:?}");
    // Once per archive.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(lines().len(), 1, "{:?}", lines());
}
