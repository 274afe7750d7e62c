//! Real multi-process meshes on 127.0.0.1.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use backmesh_api::cli::RunOutcome;
use backmesh_api::{Backups, JobState, JobStatus, Jobs, LogEntry, LogPage, RunResult, Status};
use backmesh_simulations::{manifests_on_disk, test_ca_and_cert, tree_differences, wait_until, write_slow_tree, Mesh};

mod browse;
mod compromised;
mod dashboard;
mod encrypted;
mod faults;
mod offsite;
mod plugins;
mod replication;
mod rogue;
mod rotation;
mod upgrade;

const T: Duration = Duration::from_secs(30);

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn five_nodes_in_a_chain_all_see_all() {
    let mut mesh = Mesh::new();
    for i in 0..5 {
        let boot = if i == 0 { None } else { Some(i - 1) };
        let n = mesh.start(&format!("n{}", i + 1), boot, &[]);
        assert!(mesh.wait_ready(n, T), "n{} never answered:\n{}", i + 1, mesh.nodes[n].log_text());
    }
    let all = names(&["n1", "n2", "n3", "n4", "n5"]);
    for i in 0..5 {
        assert!(
            wait_until(T, || mesh.up_names(i) == all),
            "n{} sees {:?}\n{}",
            i + 1,
            mesh.up_names(i),
            mesh.nodes[i].log_text()
        );
    }
    // The table a person reads names every node.
    let table = String::from_utf8_lossy(&mesh.cli(0, &["status"]).stdout).into_owned();
    assert!(table.contains("5 of 5 nodes up"), "{table}");
}

#[test]
fn a_killed_node_is_seen_down_and_back_up_with_the_same_peer_id() {
    let mut mesh = Mesh::chain(&["n1", "n2", "n3"]);
    let all = names(&["n1", "n2", "n3"]);
    let id = mesh.peer_id(2).unwrap();
    mesh.kill9(2);
    // down_after is 2 s: every other node must say so well within 15 s.
    for i in 0..2 {
        assert!(
            wait_until(Duration::from_secs(15), || mesh.up_names(i) == names(&["n1", "n2"])),
            "n{} still sees n3 up",
            i + 1
        );
    }
    let shown_down = mesh.status(0).unwrap().nodes.iter().any(|n| n.name == "n3" && !n.up);
    assert!(shown_down, "n3 is listed as down, not forgotten");
    mesh.restart(2);
    assert!(mesh.wait_ready(2, T));
    assert_eq!(mesh.peer_id(2).unwrap(), id, "same identity after restart");
    for i in 0..3usize {
        assert!(wait_until(T, || mesh.up_names(i) == all), "n{} sees {:?}", i + 1, mesh.up_names(i));
    }
}

#[test]
fn a_node_with_another_swarm_key_is_never_admitted() {
    let mut mesh = Mesh::new();
    for i in 0..3usize {
        let n = mesh.start(&format!("n{}", i + 1), i.checked_sub(1), &[]);
        assert!(mesh.wait_ready(n, T));
    }
    let all = names(&["n1", "n2", "n3"]);
    assert!(wait_until(T, || mesh.up_names(0) == all));
    let other = mesh.other_key();
    let intruder = mesh.start("intruder", Some(0), &["--swarm-key".into(), other.to_string_lossy().into_owned()]);
    assert!(mesh.wait_ready(intruder, T));
    // Give it time to try, several times.
    std::thread::sleep(Duration::from_secs(6));
    for i in 0..3usize {
        // Under load a member may blink down for a moment; the intruder must never appear.
        assert!(!mesh.up_names(i).contains(&"intruder".to_string()), "n{} admitted the intruder", i + 1);
        let listed = mesh.status(i).unwrap().nodes.iter().any(|n| n.name == "intruder");
        assert!(!listed, "the intruder is not even listed");
    }
    assert_eq!(mesh.up_names(intruder), names(&["intruder"]));
    // A garbled handshake may only fail at the 20 s upgrade timeout: wait for the words.
    assert!(
        wait_until(T, || mesh.nodes[0].log_text().contains("refused a connection")),
        "{}",
        mesh.nodes[0].log_text()
    );
    assert!(
        wait_until(T, || mesh.nodes[intruder].log_text().contains("same --swarm-key")),
        "{}",
        mesh.nodes[intruder].log_text()
    );
    // A node with no swarm key at all is refused as well.
    let plain = mesh.start("plain", Some(0), &["--no-swarm-key".into()]);
    assert!(mesh.wait_ready(plain, T));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(mesh.up_names(plain), names(&["plain"]));
    for i in 0..3 {
        assert!(!mesh.up_names(i).contains(&"plain".to_string()), "n{} admitted a node without the key", i + 1);
    }
    assert!(wait_until(T, || mesh.up_names(0) == all));
}

#[test]
fn malformed_bytes_on_the_mesh_port_do_not_hurt_the_node() {
    let mut mesh = Mesh::new();
    let a = mesh.start("a", None, &[]);
    let b = mesh.start("b", Some(0), &[]);
    assert!(mesh.wait_ready(a, T) && mesh.wait_ready(b, T));
    for payload in [
        vec![0u8; 10_000],
        b"\x13/multistream/1.0.0\n".repeat(500),
        (0..=255u8).cycle().take(100_000).collect::<Vec<u8>>(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ] {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", mesh.nodes[a].listen)) {
            let _ = s.write_all(&payload);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(mesh.nodes[a].is_running(), "node a crashed:\n{}", mesh.nodes[a].log_text());
    assert!(wait_until(T, || mesh.up_names(a) == names(&["a", "b"]) && mesh.up_names(b) == names(&["a", "b"])));
}

#[test]
fn the_api_token_is_required_and_checked() {
    let mut mesh = Mesh::new();
    let n = mesh.start("guarded", None, &["--token".into(), "s3cret".into()]);
    assert!(wait_until(T, || {
        let out = mesh.cli(n, &["status"]);
        out.status.code() == Some(1)
    }));
    let none = mesh.cli(n, &["status"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("needs an API token"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    let wrong = mesh.cli(n, &["--token", "nope", "status"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
    let right = mesh.cli(n, &["--token", "s3cret", "--json", "status"]);
    assert!(right.status.success(), "{}", String::from_utf8_lossy(&right.stderr));
    let v: Status = serde_json::from_slice(&right.stdout).unwrap();
    let me = &v.nodes[0];
    assert!(me.this_node && me.up && !me.peer_id.is_empty() && !me.address.is_empty(), "{v:#?}");
    // Health needs no token.
    let mut s = TcpStream::connect(("127.0.0.1", mesh.nodes[n].api)).unwrap();
    s.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[test]
fn an_unreachable_node_exits_3() {
    let mut mesh = Mesh::new();
    let n = mesh.start("gone", None, &[]);
    assert!(mesh.wait_ready(n, T));
    mesh.kill9(n);
    let out = mesh.cli(n, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_client_whose_output_pipe_closed_exits_0_quietly() {
    let mut mesh = Mesh::new();
    let n = mesh.start("piped", None, &[]);
    assert!(mesh.wait_ready(n, T));
    for args in [&["jobs"][..], &["status"], &["--json", "status"], &["log"]] {
        // The reader is gone before the client writes a byte (`backmesh jobs | head -0`).
        let mut child = std::process::Command::new(backmesh_simulations::binary("backmesh"))
            .arg("--node")
            .arg(mesh.nodes[n].url())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} printed: {err}");
    }
}

#[test]
fn the_api_over_tls_with_a_trusted_ca() {
    let mut mesh = Mesh::new();
    let (ca, cert, key) = test_ca_and_cert(mesh.root.path()).expect("openssl makes a CA and a certificate");
    let n = mesh.start(
        "tls",
        None,
        &[
            "--tls-cert".into(),
            cert.to_string_lossy().into_owned(),
            "--tls-key".into(),
            key.to_string_lossy().into_owned(),
        ],
    );
    // Without trusting the CA the client cannot verify the node.
    assert!(wait_until(T, || {
        let out = mesh.cli(n, &["status"]);
        out.status.code() == Some(3) && String::from_utf8_lossy(&out.stderr).contains("certificate")
    }));
    let untrusted = mesh.cli(n, &["status"]);
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("--ca"),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
    mesh.nodes[n].cli_args = vec!["--ca".into(), ca.to_string_lossy().into_owned()];
    assert!(
        wait_until(T, || mesh.status(n).is_some()),
        "{}",
        String::from_utf8_lossy(&mesh.cli(n, &["status"]).stderr)
    );
}

#[test]
fn sigterm_stops_cleanly_and_peers_notice() {
    let mut mesh = Mesh::new();
    let a = mesh.start("a", None, &[]);
    let b = mesh.start("b", Some(0), &[]);
    assert!(mesh.wait_ready(a, T) && mesh.wait_ready(b, T));
    assert!(wait_until(T, || mesh.up_names(a) == names(&["a", "b"])));
    assert_eq!(mesh.stop(b), Some(0), "{}", mesh.nodes[b].log_text());
    assert!(mesh.nodes[b].log_text().contains("stopped cleanly"));
    assert!(wait_until(Duration::from_secs(15), || mesh.up_names(a) == names(&["a"])));
}

#[test]
fn two_nodes_with_one_name_are_both_reported() {
    let mut mesh = Mesh::new();
    let a = mesh.start("twin", None, &[]);
    let b = mesh.start("twin", Some(0), &[]);
    assert!(mesh.wait_ready(a, T) && mesh.wait_ready(b, T));
    let problem = |i: usize| mesh.status(i).is_some_and(|s| s.problems.iter().any(|x| x.contains("claim the name")));
    for i in [a, b] {
        assert!(wait_until(T, || problem(i)), "{:?}", mesh.status(i));
        let s = mesh.status(i).unwrap();
        let twins: Vec<_> = s.nodes.iter().filter(|n| n.name == "twin").collect();
        assert_eq!(twins.len(), 2, "both listed, not merged");
        assert!(twins.iter().all(|n| n.conflict.is_some()));
    }
    let table = String::from_utf8_lossy(&mesh.cli(a, &["status"]).stdout).into_owned();
    assert!(table.contains("problem: 2 nodes claim the name `twin`"), "{table}");
}

fn start_error(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(backmesh_simulations::binary("backmesh-node"))
        .args(args)
        .output()
        .expect("run backmesh-node");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn start_up_problems_are_named() {
    let mut mesh = Mesh::new();
    let a = mesh.start("a", None, &[]);
    assert!(mesh.wait_ready(a, T));
    let root = mesh.root.path().to_path_buf();
    let dir = |n: &str| root.join(n).to_string_lossy().into_owned();
    let listen_a = format!("127.0.0.1:{}", mesh.nodes[a].listen);
    let api_a = format!("127.0.0.1:{}", mesh.nodes[a].api);
    let free = || "127.0.0.1:0".to_string();
    let data_a = mesh.nodes[a].dir.to_string_lossy().into_owned();
    let garbage = root.join("garbage.key");
    std::fs::write(&garbage, "not a key").unwrap();
    let file = root.join("a-file");
    std::fs::write(&file, "").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--data-dir".into(), dir("x1"), "--listen".into(), listen_a.clone(), "--api".into(), free()],
            "already in use",
        ),
        (vec!["--data-dir".into(), dir("x2"), "--listen".into(), free(), "--api".into(), api_a], "already in use"),
        (
            vec!["--data-dir".into(), data_a, "--listen".into(), free(), "--api".into(), free()],
            "in use by another backmesh process",
        ),
        (
            vec![
                "--data-dir".into(),
                dir("x3"),
                "--listen".into(),
                free(),
                "--api".into(),
                free(),
                "--swarm-key".into(),
                garbage.to_string_lossy().into_owned(),
            ],
            "malformed",
        ),
        (
            vec![
                "--data-dir".into(),
                dir("x4"),
                "--listen".into(),
                free(),
                "--api".into(),
                free(),
                "--swarm-key".into(),
                dir("missing.key"),
            ],
            "cannot read the swarm key",
        ),
        (
            vec![
                "--data-dir".into(),
                dir("x5"),
                "--listen".into(),
                free(),
                "--api".into(),
                free(),
                "--bootstrap".into(),
                "no-port".into(),
            ],
            "bad bootstrap address",
        ),
        (
            vec![
                "--data-dir".into(),
                file.join("sub").to_string_lossy().into_owned(),
                "--listen".into(),
                free(),
                "--api".into(),
                free(),
            ],
            "data directory",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["--name".to_string(), "probe".into()];
        full.extend(args.iter().cloned());
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let (code, err) = start_error(&refs);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: expected `{expected}` in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(mesh.nodes[a].is_running(), "the running node is unaffected");
}

/// (origin, seq) of every entry in node `i`'s log, in its order.
fn log_ids(mesh: &Mesh, i: usize) -> Vec<(String, u64)> {
    log(mesh, i, &["--limit", "1000"]).into_iter().map(|e| (e.origin, e.seq)).collect()
}

/// Node `i`'s `log --json` with `args` (none while it cannot answer).
fn log(mesh: &Mesh, i: usize, args: &[&str]) -> Vec<LogEntry> {
    mesh.cli_json::<LogPage>(i, &[&["log"][..], args].concat()).map(|p| p.entries).unwrap_or_default()
}

/// Node `i`'s jobs; panics with what the client said when it cannot answer.
fn jobs(mesh: &Mesh, i: usize) -> Vec<JobStatus> {
    mesh.cli_json::<Jobs>(i, &["jobs"]).unwrap_or_else(|e| panic!("{e}")).jobs
}

#[test]
fn the_log_reaches_every_node_and_a_node_that_was_down_catches_up() {
    let mut mesh = Mesh::chain(&["n1", "n2", "n3"]);
    let dir = mesh.root.path().join("app");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.to_string_lossy().into_owned();

    // Registered through n1 for n3: the path is checked by n3.
    let out = mesh.cli(0, &["register", "n3", &d, "--every", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_until(T, || (0..3).all(|i| !log_ids(&mesh, i).is_empty() && log_ids(&mesh, i) == log_ids(&mesh, 0))));
    let listed = jobs(&mesh, 2);
    assert_eq!((listed[0].node.as_str(), listed[0].every), ("n3", 5), "{listed:?}");

    // n3 is away while three more things happen.
    mesh.kill9(2);
    for args in [vec!["pause", "n2"], vec!["resume", "n2"], vec!["register", "n2", &d, "--every", "60"]] {
        let out = mesh.cli(0, &args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(wait_until(T, || ["paused", "resumed"].iter().all(|k| kinds(&mesh, 1).contains(&k.to_string()))));
    mesh.restart(2);
    assert!(mesh.wait_ready(2, T));
    // n3 catches up on what it missed, and n2's runs settle: the logs agree.
    assert!(
        wait_until(T, || {
            let (a, b, c) = (log_ids(&mesh, 0), log_ids(&mesh, 1), log_ids(&mesh, 2));
            a == b && b == c
        }),
        "n3 has {:?}",
        log_ids(&mesh, 2)
    );
    for k in ["registered", "paused", "resumed"] {
        assert!(kinds(&mesh, 2).contains(&k.to_string()), "n3 learnt `{k}` entries written while it was down");
    }
    assert_eq!(kinds(&mesh, 2).iter().filter(|k| *k == "registered").count(), 2);
    // Every entry and state register that travelled held its writer's
    // signature: an honest mesh blames no one.
    for i in 0..3 {
        for n in mesh.status(i).unwrap().nodes {
            let log = mesh.nodes[i].log_text();
            let why: Vec<&str> = log.lines().filter(|l| l.contains("refus") || l.contains("hold")).collect();
            assert_eq!(n.refused, 0, "n{} counts refusals: {n:?}\n{}", i + 1, why.join("\n"));
        }
    }
}

#[test]
fn a_node_that_lost_its_database_learns_its_seq_before_it_writes_again() {
    let mut mesh = Mesh::chain(&["n1", "n2"]);
    for args in [["pause", "n2"], ["resume", "n2"]] {
        let out = mesh.cli(1, &args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let n2 = mesh.peer_id(1).expect("n2's peer id");
    let written =
        |mesh: &Mesh| -> Vec<u64> { log_ids(mesh, 0).into_iter().filter(|(o, _)| *o == n2).map(|(_, s)| s).collect() };
    assert!(wait_until(T, || written(&mesh).len() >= 2), "n1 has n2's entries: {:?}", written(&mesh));
    let before = written(&mesh).into_iter().max().unwrap();
    // n2's disk loses its database and its history; its identity stays.
    mesh.kill9(1);
    for lost in ["db", "history"] {
        std::fs::remove_dir_all(mesh.nodes[1].dir.join(lost)).unwrap();
    }
    mesh.restart(1);
    assert!(mesh.wait_ready(1, T));
    // At once: the entry waits until n2 has heard from n1 how far it wrote.
    let out = mesh.cli(1, &["pause", "n2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        wait_until(T, || written(&mesh).iter().any(|s| *s > before)),
        "n2's new entry reached n1 under a new seq: {:?} (before: up to {before})",
        written(&mesh)
    );
    let seqs = written(&mesh);
    let mut unique = seqs.clone();
    unique.dedup();
    assert_eq!(seqs.len(), unique.len(), "no seq of n2 written twice: {seqs:?}");
}

fn kinds(mesh: &Mesh, i: usize) -> Vec<String> {
    log(mesh, i, &["--limit", "1000"]).iter().map(|e| e.event.kind().to_string()).collect()
}

#[test]
fn bad_registrations_are_refused_by_name() {
    let mut mesh = Mesh::new();
    let a = mesh.start("a", None, &[]);
    let b = mesh.start("b", Some(0), &[]);
    assert!(mesh.wait_ready(a, T) && mesh.wait_ready(b, T));
    assert!(wait_until(T, || mesh.up_names(a) == names(&["a", "b"])));
    let file = mesh.root.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let f = file.to_string_lossy().into_owned();
    let missing = mesh.root.path().join("missing").to_string_lossy().into_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["register", "nobody", "/tmp", "--every", "5"], "unknown node `nobody`"),
        (vec!["register", "b", "relative/dir", "--every", "5"], "not an absolute path"),
        (vec!["register", "b", &missing, "--every", "5"], "does not exist"),
        (vec!["register", "b", &f, "--every", "5"], "is not a directory"),
        (vec!["register", "b", "/tmp", "--every", "0"], "at least 1 minute"),
        (vec!["unregister", "b", "/never/registered"], "no job backs up"),
        (vec!["pause", "nobody"], "unknown node"),
    ];
    for (args, expected) in cases {
        let out = mesh.cli(a, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: expected `{expected}` in {err}");
    }
    assert!(log_ids(&mesh, a).is_empty(), "nothing refused was recorded");
    let usage = mesh.cli(a, &["register", "b", "/tmp"]);
    assert_eq!(usage.status.code(), Some(2), "a missing --every is a usage error");
}

fn results(mesh: &Mesh, i: usize, node: &str) -> Vec<LogEntry> {
    let all = log(mesh, i, &["--node", node, "--limit", "100000"]);
    all.into_iter().filter(|e| ["finished", "unchanged", "failed"].contains(&e.event.kind())).collect()
}

fn three_nodes() -> Mesh {
    Mesh::chain(&["n1", "n2", "n3"])
}

#[test]
fn a_job_registered_through_one_node_runs_on_another() {
    let mesh = three_nodes();
    let dir = mesh.root.path().join("app");
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    std::fs::write(dir.join("conf/app.toml"), b"port = 80\n").unwrap();
    let d = dir.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n3", &d, "--every", "60"]).status.success());
    // The first run comes soon after registering, on n3, and every node learns it.
    assert!(wait_until(T, || (0..3).all(|i| results(&mesh, i, "n3").len() == 1)), "{:?}", results(&mesh, 0, "n3"));
    let first = results(&mesh, 1, "n3").remove(0);
    assert_eq!((first.event.kind(), first.origin_name.as_str()), ("finished", "n3"), "{first:#?}");
    // `run` through n2 waits for the result and prints it.
    std::fs::write(dir.join("new.txt"), b"new").unwrap();
    let v: RunOutcome = mesh.cli_json(1, &["run", "n3", &d]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((v.result, v.files, v.error.as_deref()), (RunResult::Finished, Some(2), None), "{v:?}");
    let again: RunOutcome = mesh.cli_json(0, &["run", "n3", &d]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.result, RunResult::Unchanged);
    // Any node lists the archives n3 keeps: two (the unchanged run stored nothing).
    let b: Backups = mesh.cli_json(0, &["backups", "n3", &d, "--all"]).unwrap_or_else(|e| panic!("{e}"));
    let archives = &b.archives;
    assert_eq!(archives.len(), 2, "{b:#?}");
    assert_eq!(Some(&archives[0].id), v.archive.as_ref(), "newest first");
    assert!(archives[0].holders.contains(&"n3".to_string()), "{b:#?}");
    assert!(archives[0].created.is_some() && archives[0].size == v.size.unwrap() && archives[0].files == 2, "{b:#?}");
    let kinds: Vec<&str> = b.executions.iter().map(|e| e.event.kind()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "finished").count(), 2, "{kinds:?}");
    assert!(kinds.contains(&"unchanged") && kinds.contains(&"registered"));
    let table = String::from_utf8_lossy(&mesh.cli(1, &["backups", "n3", &d]).stdout).into_owned();
    assert!(table.contains(v.archive.as_deref().unwrap()), "{table}");
    // The archive is in n3's store.
    assert_eq!(jobs(&mesh, 0)[0].state, JobState::Ok);
    // A run of a job that does not exist is refused.
    let out = mesh.cli(0, &["run", "n2", &d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("register it first"));
    // n3's background work, by name: its backups done without error, its
    // copies pushed to the other two.
    let status = mesh.status(2).unwrap();
    let names: Vec<&str> = status.workers.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["anti-entropy", "backfill", "backups", "copies", "index"], "{status:#?}");
    let backups = status.workers.iter().find(|w| w.name == "backups").unwrap();
    assert!(backups.last_ok.is_some() && backups.errors == 0, "{backups:#?}");
    assert!(
        wait_until(T, || mesh.status(2).unwrap().workers.iter().any(|w| w.name == "copies" && w.last_ok.is_some())),
        "{:#?}",
        mesh.status(2).unwrap().workers
    );
    let table = String::from_utf8_lossy(&mesh.cli(2, &["status", "--workers"]).stdout).into_owned();
    assert!(table.contains("WORKER") && table.contains("copies") && table.contains("index"), "{table}");
}

#[test]
fn a_burst_of_runs_is_queued_and_none_is_lost() {
    let mesh = three_nodes();
    let dir = mesh.root.path().join("burst");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f"), b"x").unwrap();
    let d = dir.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n2", &d, "--every", "600"]).status.success());
    assert!(wait_until(T, || results(&mesh, 0, "n2").len() == 1));
    for i in 0..50 {
        let out = mesh.cli(i % 3, &["run", "--no-wait", "n2", &d]);
        assert!(out.status.success(), "request {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(
        wait_until(Duration::from_secs(90), || results(&mesh, 0, "n2").len() == 51),
        "{} results",
        results(&mesh, 0, "n2").len()
    );
    // One job never runs twice at once: every start is followed by its result.
    let entries = log(&mesh, 1, &["--node", "n2", "--limit", "100000"]);
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e.event.kind())
        .filter(|k| ["started", "finished", "unchanged", "failed"].contains(k))
        .collect();
    for pair in kinds.chunks(2) {
        assert_eq!(pair[0], "started", "{kinds:?}");
        assert!(["finished", "unchanged"].contains(&pair[1]), "{kinds:?}");
    }
}

#[test]
fn queued_work_survives_kill_9() {
    let mut mesh = three_nodes();
    let dir = mesh.root.path().join("big");
    std::fs::create_dir(&dir).unwrap();
    // Each run takes a while, so the kill lands mid-queue.
    write_slow_tree(&dir, 200, 0x9E37_79B9_7F4A_7C15);
    let d = dir.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n3", &d, "--every", "600"]).status.success());
    assert!(wait_until(T, || results(&mesh, 0, "n3").len() == 1));
    for _ in 0..10 {
        assert!(mesh.cli(2, &["run", "--no-wait", "n3", &d]).status.success());
    }
    mesh.kill9(2);
    let before = results(&mesh, 0, "n3").len();
    assert!(before < 11, "the kill came before the queue drained ({before} results)");
    mesh.restart(2);
    assert!(mesh.wait_ready(2, T));
    // At least once: every queued run gets a result after the restart.
    assert!(
        wait_until(Duration::from_secs(60), || results(&mesh, 0, "n3").len() >= 11),
        "{}",
        results(&mesh, 0, "n3").len()
    );
}

#[test]
fn pause_stops_scheduled_runs_and_resume_restarts_them() {
    let mesh = three_nodes();
    let dir = mesh.root.path().join("p");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["pause", "n2"]).status.success());
    assert!(mesh.cli(0, &["register", "n2", &d, "--every", "1"]).status.success());
    std::thread::sleep(Duration::from_secs(4));
    assert!(results(&mesh, 0, "n2").is_empty(), "a paused node runs no scheduled backup");
    assert_eq!(jobs(&mesh, 1)[0].state, JobState::Paused);
    assert!(mesh.cli(2, &["resume", "n2"]).status.success());
    assert!(wait_until(T, || results(&mesh, 0, "n2").len() == 1));
    // Unregistered: no more runs, even on demand.
    assert!(mesh.cli(0, &["unregister", "n2", &d]).status.success());
    std::thread::sleep(Duration::from_secs(2));
    let out = mesh.cli(0, &["run", "n2", &d]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn past_the_queue_limit_runs_are_refused_with_429_and_nothing_is_lost() {
    let mut mesh = Mesh::new();
    let a = mesh.start("a", None, &["--queue-limit".into(), "2".into()]);
    assert!(mesh.wait_ready(a, T));
    let dir = mesh.root.path().join("slow");
    std::fs::create_dir(&dir).unwrap();
    write_slow_tree(&dir, 120, 0x2545_F491_4F6C_DD1D);
    let d = dir.to_string_lossy().into_owned();
    assert!(mesh.cli(a, &["register", "a", &d, "--every", "600"]).status.success());
    let mut accepted = 0;
    let mut refused = Vec::new();
    for _ in 0..8 {
        let out = mesh.cli(a, &["run", "--no-wait", "a", &d]);
        match out.status.code() {
            Some(0) => accepted += 1,
            _ => refused.push(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }
    assert!(!refused.is_empty(), "a limit of 2 waiting runs refuses some of 8 quick requests");
    assert!(refused.iter().all(|e| e.contains("429") && e.contains("already waiting")), "{refused:?}");
    // Every accepted run completes (waiting on-demand runs stand in for the
    // first scheduled one, so there may or may not be one more).
    assert!(
        wait_until(Duration::from_secs(90), || results(&mesh, a, "a").len() >= accepted),
        "{} results for {accepted} accepted",
        results(&mesh, a, "a").len()
    );
}

#[test]
fn registering_host_port_brings_a_new_node_into_the_mesh() {
    let mut mesh = Mesh::new();
    let a = mesh.start("a", None, &[]);
    let lone = mesh.start("lone", None, &[]);
    assert!(mesh.wait_ready(a, T) && mesh.wait_ready(lone, T));
    assert_eq!(mesh.up_names(a), names(&["a"]), "not in the mesh yet");
    let dir = mesh.root.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.to_string_lossy().into_owned();
    let addr = format!("127.0.0.1:{}", mesh.nodes[lone].listen);
    let out = mesh.cli(a, &["register", &addr, &d, "--every", "60"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("on lone"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(mesh.up_names(a), names(&["a", "lone"]));
    assert_eq!(jobs(&mesh, a)[0].node, "lone", "registered under its name");
    assert!(wait_until(T, || results(&mesh, a, "lone").len() == 1), "it runs there");
    // A node on another key cannot be brought in this way.
    let other = mesh.other_key();
    let stranger = mesh.start("stranger", None, &["--swarm-key".into(), other.to_string_lossy().into_owned()]);
    assert!(mesh.wait_ready(stranger, T));
    let addr = format!("127.0.0.1:{}", mesh.nodes[stranger].listen);
    let out = mesh.cli(a, &["register", &addr, &d, "--every", "60"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("swarm-key"), "{err}");
}

/// One raw HTTP/1.1 exchange with `127.0.0.1:port`: (status, body).
fn raw_http(port: u16, request: &str) -> (u16, String) {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

#[test]
fn an_api_without_a_token_serves_only_loopback_names_and_changes_only_by_json() {
    let mut mesh = Mesh::new();
    let n = mesh.start("n1", None, &[]);
    assert!(mesh.wait_ready(n, T), "{}", mesh.nodes[n].log_text());
    let port = mesh.nodes[n].api;
    let get = |host: &str| {
        raw_http(port, &format!("GET /api/v1/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"))
    };
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "[::1]:80".to_string()] {
        assert_eq!(get(&host).0, 200, "{host}");
    }
    // A page of another site whose name was pointed at 127.0.0.1 (DNS rebinding).
    let (code, body) = get("evil.example");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("no API token"), "{body}");
    // A change sent as a form or a plain cross-site fetch could send it: refused, nothing paused.
    let post = |ct: &str| {
        raw_http(
            port,
            &format!(
                "POST /api/v1/nodes/n1/pause HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{ct}Content-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    for ct in ["Content-Type: text/plain\r\n", "Content-Type: application/x-www-form-urlencoded\r\n", ""] {
        let (code, body) = post(ct);
        assert_eq!(code, 415, "{ct}: {body}");
    }
    let paused = || log(&mesh, n, &[]).iter().any(|e| e.event.kind() == "paused");
    assert!(!paused(), "nothing was paused");
    let (code, body) = post("Content-Type: application/json\r\n");
    assert!((200..300).contains(&code), "the CLI's and the dashboard's way is served: {body}");
    assert!(wait_until(T, paused), "and it paused");
    // Reachable from other machines without a token: refused at start, with the reason.
    let t = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(backmesh_simulations::binary("backmesh-node"))
        .args(["--name", "open", "--listen", "127.0.0.1:0", "--api", "0.0.0.0:0", "--swarm-key"])
        .arg(mesh.other_key())
        .arg("--data-dir")
        .arg(t.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without a token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_operator_acts_through_any_node_and_a_node_s_token_on_that_node_alone() {
    // Three nodes as `backmesh-node init` sets them up: each its own
    // token, all trusting the operator's key (which no node holds).
    let mut mesh = Mesh::new();
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        let token = format!("token-of-{name}");
        let n = mesh.start(name, i.checked_sub(1), &["--token".into(), token.clone()]);
        mesh.nodes[n].cli_args = vec!["--token".into(), token];
        assert!(mesh.wait_ready(n, T), "{}", mesh.nodes[n].log_text());
    }
    assert!(wait_until(T, || mesh.up_names(0).len() == 3));
    let app = mesh.root.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("a.txt"), b"a").unwrap();
    let s = app.to_string_lossy().into_owned();
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    };
    // The operator, through n3, on n1's backups: everything works.
    ok(mesh.cli(2, &["register", "n1", &s, "--every", "600"]));
    let run: RunOutcome = mesh.cli_json(2, &["run", "n1", &s]).unwrap_or_else(|e| panic!("{e}"));
    // (Or `unchanged`: the registration's own first run may have won.)
    assert!(matches!(run.result, RunResult::Finished | RunResult::Unchanged) && run.archive.is_some(), "{run:#?}");
    ok(mesh.cli(2, &["pause", "n1"]));
    ok(mesh.cli(2, &["resume", "n1"]));
    let tgz = mesh.root.path().join("n1-app.tgz");
    ok(mesh.cli(2, &["fetch", "n1", &s, "-o", tgz.to_str().unwrap()]));
    assert!(std::fs::metadata(&tgz).unwrap().len() > 0);
    let back = mesh.root.path().join("back");
    // A sealed archive's restore is asked of the node that restores.
    ok(mesh.cli(1, &["restore", "n1", &s, "--on", "n2", "--to", back.to_str().unwrap()]));
    assert!(tree_differences(&app, &back).is_empty(), "{:?}", tree_differences(&app, &back));
    ok(mesh.cli(2, &["verify", "n1", &s]));
    // Root on n3, with n3's token and no operator key: nothing of n1's.
    let n1_store = mesh.nodes[0].dir.join("segments");
    let elsewhere = mesh.root.path().join("elsewhere");
    let other = mesh.root.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let tries: Vec<Vec<&str>> = vec![
        vec!["register", "n1", other.to_str().unwrap(), "--every", "1"],
        vec!["register", "n1", &s, "--every", "1", "--exclude", "*"],
        vec!["unregister", "n1", &s],
        vec!["pause", "n1"],
        vec!["run", "n1", &s],
        vec!["fetch", "n1", &s, "-o", elsewhere.to_str().unwrap()],
        vec!["restore", "n1", &s, "--on", "n1", "--to", n1_store.to_str().unwrap(), "--overwrite"],
        vec!["restore", "n1", &s, "--on", "n3", "--to", elsewhere.to_str().unwrap()],
        vec!["verify"],
    ];
    for args in &tries {
        let out = mesh.cli_as_node(2, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} was carried out: {err}");
        assert!(err.contains("operator's order") && err.contains("operator init"), "{args:?}: {err}");
    }
    assert!(!elsewhere.exists(), "something of n1's was written on n3");
    let job = jobs(&mesh, 0).into_iter().find(|j| j.node == "n1").expect("n1's job");
    assert_eq!((job.path.as_str(), job.every, job.paused), (s.as_str(), 600, false), "{job:#?}");
    // Its own token does what it did on its own node.
    let mine = mesh.root.path().join("n3-app");
    std::fs::create_dir_all(&mine).unwrap();
    let m = mine.to_string_lossy().into_owned();
    ok(mesh.cli_as_node(2, &["register", "n3", &m, "--every", "600"]));
    let run: RunOutcome = mesh.cli_json(2, &["run", "n3", &m]).unwrap_or_else(|e| panic!("{e}"));
    // (Or `unchanged`: the registration's own first run may have won.)
    assert!(matches!(run.result, RunResult::Finished | RunResult::Unchanged) && run.archive.is_some(), "{run:#?}");
    // Not even the operator's key restores over a node's store.
    let out = mesh.cli(2, &["restore", "n1", &s, "--on", "n1", "--to", n1_store.to_str().unwrap(), "--overwrite"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("never writes"), "{err}");
    assert!(n1_store.is_dir() && std::fs::read_dir(&n1_store).unwrap().count() > 0, "n1's store is intact");
}

#[test]
fn a_node_that_neither_made_nor_holds_a_series_reads_it_only_under_the_operator_s_order() {
    // One copy of each series: of four nodes, two neither make nor hold n1's.
    let mesh = Mesh::chain_with(&["n1", "n2", "n3", "n4"], &["--replicas", "1"]);
    let app = mesh.root.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("a.txt"), b"only for the entitled").unwrap();
    let s = app.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n1", &s, "--every", "600"]).status.success());
    let holder = |mesh: &Mesh| {
        let b: Backups = mesh.cli_json(0, &["backups", "n1", &s]).unwrap_or_else(|e| panic!("{e}"));
        b.archives.first().and_then(|a| a.holders.iter().find(|h| *h != "n1").cloned())
    };
    assert!(wait_until(T, || holder(&mesh).is_some()), "no copy of n1's archive was made");
    let held_by = holder(&mesh).unwrap();
    let i = (1..4).find(|i| mesh.nodes[*i].name != held_by).unwrap();
    let name = mesh.nodes[i].name.clone();
    assert!(manifests_on_disk(&mesh.nodes[i]).is_empty(), "{name} keeps nothing of n1's");
    // Stop n1: the archive is then read from its holder, by a node that
    // is neither: under the operator's order (to fetch it through that
    // node, to restore it there), the holder serves it.
    let mut mesh = mesh;
    mesh.stop(0);
    let tgz = mesh.root.path().join("through-a-stranger.tgz");
    let out = mesh.cli(i, &["fetch", "n1", &s, "-o", tgz.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let back = mesh.root.path().join("back");
    let out = mesh.cli(i, &["restore", "n1", &s, "--on", &name, "--to", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(tree_differences(&app, &back).is_empty(), "{:?}", tree_differences(&app, &back));
}

#[test]
fn a_revoked_node_is_refused_mesh_wide_within_a_minute_and_by_nodes_that_join_later() {
    let mut mesh = Mesh::chain(&["n1", "n2", "n3", "n4"]);
    let n4 = mesh.peer_id(3).expect("n4's peer id");
    // Root on a node, without the operator key, revokes no one.
    let out = mesh.cli_as_node(0, &["revoke", "n4"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("operator"), "{}", String::from_utf8_lossy(&out.stderr));
    // The operator, through n1.
    let started = std::time::Instant::now();
    let out = mesh.cli(0, &["revoke", "n4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let refused_by = |mesh: &Mesh, i: usize| {
        mesh.status(i).is_some_and(|s| {
            !s.nodes.iter().any(|n| n.peer_id == n4)
                && s.problems.iter().any(|p| p.contains("revoked") && p.contains(&n4))
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), || (0..3).all(|i| refused_by(&mesh, i))),
        "{:#?}",
        (0..3).map(|i| mesh.status(i)).collect::<Vec<_>>()
    );
    eprintln!("revoked mesh-wide in {:?}", started.elapsed());
    // Nothing of n4's reaches anyone: a backup it makes (its own token)
    // is neither copied nor heard of.
    let dir = mesh.root.path().join("n4-app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f"), b"after the revocation").unwrap();
    let d = dir.to_string_lossy().into_owned();
    assert!(mesh.cli_as_node(3, &["register", "n4", &d, "--every", "600"]).status.success());
    let run: RunOutcome = mesh.cli_json(3, &["run", "n4", &d]).unwrap_or_else(|e| panic!("{e}"));
    // (Or `unchanged`: the registration's own first run may have won.)
    assert!(matches!(run.result, RunResult::Finished | RunResult::Unchanged) && run.archive.is_some(), "{run:#?}");
    std::thread::sleep(Duration::from_secs(5));
    for i in 0..3 {
        let heard = log(&mesh, i, &["--node", "n4"]);
        let of_the_job = |e: &LogEntry| matches!(e.event.kind(), "registered" | "started" | "finished");
        assert!(!heard.iter().any(of_the_job), "node {i} heard of n4's backup: {heard:#?}");
    }
    let b: Backups = mesh.cli_json(3, &["backups", "n4", &d]).unwrap_or_else(|e| panic!("{e}"));
    assert!(b.archives.iter().all(|a| a.holders == vec!["n4".to_string()]), "{b:#?}");
    // A node that joins later learns it from its first hellos; one that
    // restarts keeps it.
    let n5 = mesh.start("n5", Some(1), &[]);
    assert!(mesh.wait_ready(n5, T));
    assert!(wait_until(T, || refused_by(&mesh, n5)), "{:#?}", mesh.status(n5));
    mesh.restart(2);
    assert!(mesh.wait_ready(2, T));
    assert!(wait_until(T, || refused_by(&mesh, 2)), "{:#?}", mesh.status(2));
    assert!(!mesh.up_names(n5).contains(&"n4".to_string()));
}

#[test]
fn operators_are_trusted_and_no_longer_by_an_operator_s_signed_change_mesh_wide() {
    let mut mesh = Mesh::chain(&["n1", "n2"]);
    let b_key = mesh.root.path().join("operator-b.key");
    let b = backmesh_simulations::operator_init(&b_key);
    let b_file = b_key.to_str().unwrap().to_string();
    let as_b = |mesh: &Mesh, i: usize, args: &[&str]| {
        mesh.cli_as_node(i, &[&["--operator-key", b_file.as_str()][..], args].concat())
    };
    // B's orders mean nothing until an operator trusted now trusts B.
    assert_eq!(as_b(&mesh, 0, &["pause", "n2"]).status.code(), Some(1));
    let out = mesh.cli(0, &["operator", "trust", &b]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let paused = |mesh: &Mesh, i: usize| as_b(mesh, i, &["pause", "n2"]).status.success();
    assert!(wait_until(T, || paused(&mesh, 0)), "n2 took B's order");
    // B takes the first operator's trust away: its orders are refused on both.
    let out = as_b(&mesh, 1, &["operator", "distrust", &mesh.operator_public]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let refused = |mesh: &Mesh, i: usize| {
        let out = mesh.cli(i, &["resume", if i == 0 { "n2" } else { "n1" }]);
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("does not trust")
    };
    assert!(wait_until(T, || refused(&mesh, 0) && refused(&mesh, 1)));
    // A node that joins later, configured with the first key only, ends the same.
    let n3 = mesh.start("n3", Some(0), &[]);
    assert!(mesh.wait_ready(n3, T));
    assert!(wait_until(T, || as_b(&mesh, 0, &["resume", "n3"]).status.success()), "n3 trusts B");
    assert!(wait_until(T, || {
        let out = mesh.cli(0, &["pause", "n3"]);
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("does not trust")
    }));
}

#[test]
fn recovery_recipients_change_mesh_wide_only_by_a_trusted_operator_s_signed_change() {
    let mut mesh = Mesh::chain(&["n1", "n2"]);
    let recovery = |mesh: &Mesh, i: usize| mesh.status(i).map(|s| s.recovery).unwrap_or_default();
    // From config: every node wraps to the operator's recovery recipient,
    // and announces its own recipient (each its own).
    assert_eq!(recovery(&mesh, 0), vec![mesh.operator_recovery.clone()]);
    let s = mesh.status(1).unwrap();
    let recipients: Vec<&str> = s.nodes.iter().filter_map(|n| n.recipient.as_deref()).collect();
    assert_eq!(recipients.len(), 2, "{:#?}", s.nodes);
    assert!(recipients[0] != recipients[1] && recipients.iter().all(|r| r.starts_with("age1")));
    // An offline recovery key added on n1 reaches n2, and a node that joins later.
    let offline = backmesh_crypt::wrap::Identity::of_operator(&[7; 32]).recipient();
    let out = mesh.cli(0, &["operator", "recovery", "add", &offline]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut both = vec![mesh.operator_recovery.clone(), offline.clone()];
    both.sort();
    assert!(wait_until(T, || recovery(&mesh, 1) == both), "{:?}", recovery(&mesh, 1));
    let n3 = mesh.start("n3", Some(1), &[]);
    assert!(mesh.wait_ready(n3, T));
    assert!(wait_until(T, || recovery(&mesh, n3) == both), "{:?}", recovery(&mesh, n3));
    // Without the operator's key (the node's own token only), or with a
    // key no node trusts, nothing changes.
    let thief = backmesh_crypt::wrap::Identity::of_operator(&[9; 32]).recipient();
    let out = mesh.cli_as_node(1, &["operator", "recovery", "add", &thief]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let stranger_key = mesh.root.path().join("stranger.key");
    backmesh_simulations::operator_init(&stranger_key);
    let stranger = stranger_key.to_str().unwrap();
    let out = mesh.cli_as_node(1, &["--operator-key", stranger, "operator", "recovery", "add", &thief]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not trust"), "{out:?}");
    // Removing the configured one holds over a restart from the same config.
    let out = mesh.cli(2, &["operator", "recovery", "remove", &mesh.operator_recovery]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_until(T, || recovery(&mesh, 0) == vec![offline.clone()]));
    mesh.restart(0);
    assert!(mesh.wait_ready(0, T));
    assert_eq!(recovery(&mesh, 0), vec![offline.clone()]);
    assert!((0..3).all(|i| !recovery(&mesh, i).contains(&thief)));
}

#[test]
fn a_retired_node_leaves_the_views_and_its_series_are_collected_after_the_grace_period() {
    // A grace period of none (by choice): collected at once.
    let mesh = Mesh::chain_with(&["n1", "n2", "n3"], &["--grace", "0"]);
    let dir = mesh.root.path().join("n3-app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f"), b"n3's data").unwrap();
    let d = dir.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n3", &d, "--every", "600"]).status.success());
    let run: RunOutcome = mesh.cli_json(0, &["run", "n3", &d]).unwrap_or_else(|e| panic!("{e}"));
    // (Or `unchanged`: the registration's own first run may have won.)
    assert!(matches!(run.result, RunResult::Finished | RunResult::Unchanged) && run.archive.is_some(), "{run:#?}");
    let id = run.archive.unwrap();
    assert!(wait_until(T, || (0..2).all(|i| manifests_on_disk(&mesh.nodes[i]) == vec![id.clone()])));
    let out = mesh.cli(0, &["retire", "n3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gone = |mesh: &Mesh, i: usize| {
        jobs(mesh, i).iter().all(|j| j.node != "n3") && manifests_on_disk(&mesh.nodes[i]).is_empty()
    };
    assert!(
        wait_until(T, || gone(&mesh, 0) && gone(&mesh, 1)),
        "{:?}",
        (0..2).map(|i| manifests_on_disk(&mesh.nodes[i])).collect::<Vec<_>>()
    );
    assert!(mesh.status(1).unwrap().problems.iter().any(|p| p.contains("n3") && p.contains("revoked")));
}

#[test]
fn a_rebuilt_server_takes_its_name_back_under_the_operator_s_rebind_and_its_old_archives_restore() {
    let mut mesh = Mesh::chain(&["n1", "n2", "n3"]);
    let root = mesh.root.path().to_path_buf();
    let tree = |name: &str| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("data.txt"), format!("{name}\n")).unwrap();
        (d.clone(), d.to_string_lossy().into_owned())
    };
    let (old_src, old) = tree("n3-before");
    assert!(mesh.cli(0, &["register", "n3", &old, "--every", "600"]).status.success());
    let run: RunOutcome = mesh.cli_json(0, &["run", "n3", &old]).unwrap_or_else(|e| panic!("{e}"));
    let old_id = run.archive.unwrap();
    let held_by = |mesh: &Mesh, s: &str, id: Option<&str>| {
        mesh.cli_json::<Backups>(0, &["backups", "n3", s]).is_ok_and(|b| {
            b.archives.iter().any(|a| {
                id.is_none_or(|id| a.id == id) && ["n1", "n2"].iter().all(|h| a.holders.iter().any(|x| x == h))
            })
        })
    };
    assert!(wait_until(T, || held_by(&mesh, &old, Some(&old_id))));
    let former = mesh.peer_id(2).unwrap();
    // The server is lost, disk and key; it is rebuilt under its name.
    mesh.kill9(2);
    std::fs::remove_dir_all(&mesh.nodes[2].dir).unwrap();
    let rebuilt = mesh.start("n3", Some(0), &[]);
    assert!(mesh.wait_ready(rebuilt, T), "{}", mesh.nodes[rebuilt].log_text());
    let peer = mesh.peer_id(rebuilt).unwrap();
    assert_ne!(peer, former);
    let (_, new) = tree("n3-after");
    let out = mesh.cli(0, &["register", "n3", &new, "--every", "600"]);
    eprintln!("through n1: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let out = mesh.cli(rebuilt, &["register", "n3", &new, "--every", "600"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run: RunOutcome = mesh.cli_json(rebuilt, &["run", "n3", &new]).unwrap_or_else(|e| panic!("{e}"));
    // (Or `unchanged`: the registration's own first run may have won.)
    assert!(matches!(run.result, RunResult::Finished | RunResult::Unchanged) && run.archive.is_some(), "{run:#?}");
    // Until the operator says so, no holder takes the new key's archives
    // as n3's, and each says why in its status.
    let impostor = format!("sealed by {peer}, but node n3's archives are sealed by {former}");
    let said = |mesh: &Mesh, i: usize| mesh.status(i).is_some_and(|s| s.problems.iter().any(|p| p.contains(&impostor)));
    assert!(wait_until(T, || said(&mesh, 0) && said(&mesh, 1)), "{:#?}", mesh.status(0));
    assert!(!held_by(&mesh, &new, None), "{}", String::from_utf8_lossy(&mesh.cli(0, &["backups", "n3", &new]).stdout));
    // Root on a node cannot rebind; the operator can, from any node.
    let out = mesh.cli_as_node(0, &["rebind", "n3", &peer]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let out = mesh.cli(1, &["rebind", "n3", &peer]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&former), "{}", String::from_utf8_lossy(&out.stdout));
    // Its archives go to the holders now…
    assert!(
        wait_until(Duration::from_secs(90), || held_by(&mesh, &new, None)),
        "{}\n{}",
        String::from_utf8_lossy(&mesh.cli(0, &["backups", "n3", &new]).stdout),
        mesh.nodes[rebuilt].log_text()
    );
    // …the old identity is refused everywhere…
    for i in [0, 1, rebuilt] {
        let refused = |mesh: &Mesh| {
            mesh.status(i).is_some_and(|s| s.problems.iter().any(|p| p.contains("revoked") && p.contains(&former)))
        };
        assert!(wait_until(T, || refused(&mesh)), "{:#?}", mesh.status(i));
    }
    // …and what it sealed before restores on the rebuilt server.
    let to = mesh.root.path().join("restored");
    let args = ["restore", "n3", &old, "--archive", &old_id, "--on", "n3", "--to", to.to_str().unwrap()];
    // Asked of n3 itself: a sealed archive's key is wrapped to the key it announces.
    let out = mesh.cli(rebuilt, &args);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree_differences(&old_src, &to), Vec::<String>::new());
    // No node blames n1 or n2 for passing on what the old key sealed.
    for i in [0, 1, rebuilt] {
        let s = mesh.status(i).unwrap();
        let blamed = s.nodes.iter().filter(|n| n.name != "n3").any(|n| n.refused > 0);
        assert!(!blamed, "node {i}: {:#?}\n{:#?}", s.nodes, s.problems);
    }
}
