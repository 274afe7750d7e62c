//! The rogue-node suite: a peer holding the swarm key (`backmesh-rogue`)
//! tries each attack on a real mesh; nothing of another node's may be
//! lost, replaced, hidden or run, every refusal must show in `status`,
//! and the honest mesh must keep working (docs/security.md).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use backmesh_api::cli::RunOutcome;
use backmesh_api::{Backups, Event, JobState, Jobs, LogEntry, LogPage, NodeStatus, RunResult};
use backmesh_core::placement::{self, Candidate};
use backmesh_simulations::faults::faketime_env;
use backmesh_simulations::{binary, manifests_on_disk, tree_differences, wait_until, Mesh};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// `backmesh --json ARGS` on node `i`, read as its answer whatever its
/// exit code; panics with what the client said otherwise.
fn json<T: serde::de::DeserializeOwned>(mesh: &Mesh, i: usize, args: &[&str]) -> T {
    mesh.cli_answer(i, args).unwrap_or_else(|e| panic!("{e}"))
}

fn archives(mesh: &Mesh, i: usize, node: &str, path: &str) -> Vec<(String, BTreeSet<String>)> {
    let backups = mesh.cli_json::<Backups>(i, &["backups", node, path]).unwrap_or_default();
    backups.archives.into_iter().map(|a| (a.id, a.holders.into_iter().collect())).collect()
}

/// Node `i`'s log, newest `limit` entries (none while it cannot answer).
fn log_of(mesh: &Mesh, i: usize, limit: usize) -> Vec<LogEntry> {
    let limit = limit.to_string();
    mesh.cli_json::<LogPage>(i, &["log", "--limit", &limit]).map(|p| p.entries).unwrap_or_default()
}

/// Node `i`'s count `field` (`refused`, `limited`) for the peer named `name`.
fn count_for(mesh: &Mesh, i: usize, name: &str, field: fn(&NodeStatus) -> u64) -> u64 {
    mesh.status(i).unwrap_or_default().nodes.iter().filter(|n| n.name == name).map(field).sum()
}

/// How many times node `i` refused something from the peer named `name`.
fn refused_from(mesh: &Mesh, i: usize, name: &str) -> u64 {
    count_for(mesh, i, name, |n| n.refused)
}

#[test]
fn a_rogue_peer_with_the_swarm_key_harms_no_one_else_and_is_named() {
    // Two honest nodes, each with its own token, trusting the operator's
    // key; n1's backups are kept on n2, which lets jobs run programs.
    let mut mesh = Mesh::new();
    for (i, name) in ["n1", "n2"].iter().enumerate() {
        let token = format!("token-of-{name}");
        let mut flags = vec!["--token".to_string(), token.clone()];
        if i == 1 {
            flags.push("--allow-programs".into());
        }
        let n = mesh.start(name, i.checked_sub(1), &flags);
        mesh.nodes[n].cli_args = vec!["--token".into(), token];
        assert!(mesh.wait_ready(n, T), "{}", mesh.nodes[n].log_text());
    }
    assert!(wait_until(T, || mesh.up_names(0).len() == 2));
    let src = mesh.root.path().join("app");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.txt"), b"the real data, version 1\n").unwrap();
    let s = src.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n1", &s, "--every", "600"]).status.success());
    let kept_on_both = |mesh: &Mesh| {
        let a = archives(mesh, 1, "n1", &s);
        a.len() == 1 && a[0].1 == BTreeSet::from(["n1".to_string(), "n2".to_string()])
    };
    assert!(wait_until(T, || kept_on_both(&mesh)), "{:?}", archives(&mesh, 1, "n1", &s));
    let real = archives(&mesh, 1, "n1", &s);
    let real_id = real[0].0.clone();
    // A directory of n2's that a restore asked by the rogue would overwrite.
    let victim_dir = mesh.root.path().join("n2-precious");
    std::fs::create_dir_all(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("keep.txt"), b"n2's own file\n").unwrap();

    // A job of n2's with a hook, registered by the rogue.
    let hooked = mesh.root.path().join("n2-app");
    std::fs::create_dir_all(&hooked).unwrap();
    let marker = mesh.root.path().join("pwned");
    let out = Command::new(binary("backmesh-rogue"))
        .args(["--swarm-key", mesh.swarm_key.to_str().unwrap()])
        .args(["--bootstrap", &format!("127.0.0.1:{}", mesh.nodes[0].listen)])
        .args(["--victim", "n1", "--holder", "n2", "--path", &s, "--archives", &real_id])
        .args(["--restore-to", victim_dir.to_str().unwrap()])
        .args(["--hook-path", hooked.to_str().unwrap(), "--marker", marker.to_str().unwrap()])
        .args(["--operator-key", mesh.operator_key.to_str().unwrap()])
        .args([
            "--attacks",
            "forged-entry,out-of-authority,future-clock,fake-archive,restore-overwrite,hook-registration,\
             stranger-order,no-order,replayed-order,steal-archive,forged-revocation",
        ])
        .output()
        .expect("run backmesh-rogue");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("rogue said:\n{said}");
    let answers: Vec<Value> = said.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let answer = |attack: &str| {
        answers.iter().find(|a| a["attack"] == attack).map(|a| a["answer"].as_str().unwrap_or_default().to_string())
    };
    let all_answers = |attack: &str| -> Vec<String> {
        answers
            .iter()
            .filter(|a| a["attack"] == attack)
            .map(|a| a["answer"].as_str().unwrap_or_default().to_string())
            .collect()
    };

    // A fake archive of n1's series, sealed by the rogue: refused by n2.
    let fake = answer("fake-archive").expect("tried");
    assert!(fake.contains("Refused"), "{fake}");
    // A restore over n2's directory without the operator's order: refused.
    let restore = answer("restore-overwrite").expect("tried");
    assert!(restore.contains("Failed") && restore.contains("operator's order"), "{restore}");
    // A change of n2's jobs under an order of a key n2 does not trust, or
    // under none, and a run without one: refused, each saying why.
    let stranger = all_answers("stranger-order");
    assert!(stranger.len() == 1 && stranger[0].contains("does not trust"), "{stranger:?}");
    let none = all_answers("no-order");
    assert!(none.len() == 2 && none.iter().all(|a| a.contains("Failed")), "{none:?}");
    assert!(none[1].contains("operator's order"), "{none:?}");
    // The operator's order, seen passing: refused by a node it is not for,
    // carried out once by the one it is for, then refused as a replay.
    let replay = all_answers("replayed-order");
    assert_eq!(replay.len(), 3, "{replay:?}");
    assert!(replay[0].starts_with("victim: Failed"), "{replay:?}");
    assert_eq!(replay[1], "holder: Recorded", "{replay:?}");
    assert!(replay[2].contains("carried out already"), "{replay:?}");
    // n1's archive, kept on n2: the rogue may read its manifest only if
    // placement elects it a holder of the series (then n1 pushes it the
    // archive anyway; issue 37 makes what it gets ciphertext), never
    // under an order for another node; and never a member of another
    // archive than the one it names.
    let steal = all_answers("steal-archive");
    assert_eq!(steal.len(), 4, "{steal:?}");
    let seen = mesh.status(1).expect("n2 answers");
    let candidates: Vec<Candidate> = seen
        .nodes
        .iter()
        .filter(|n| n.up)
        .map(|n| Candidate { peer_id: n.peer_id.clone(), name: n.name.clone(), free_bytes: n.free_bytes })
        .collect();
    let elected = placement::holders("n1", &s, &candidates, 3).iter().any(|c| c.name == "rogue");
    for i in [0, 2] {
        if elected {
            assert!(steal[i].contains("Manifest {"), "{steal:?}");
        } else {
            assert!(steal[i].contains("Refused") && !steal[i].contains("Manifest {"), "{steal:?}");
        }
    }
    if !elected {
        assert!(steal[0].contains("neither") && steal[2].contains("not rogue"), "{steal:?}");
    }
    assert!(steal[1].contains("is not one of archive") && steal[3].contains("is not one of archive"), "{steal:?}");
    // A revocation of n1 under a key no node trusts: n1 stays, on both.
    assert!(answer("forged-revocation").is_some_and(|a| a.starts_with("Ok")), "{:?}", answer("forged-revocation"));
    for i in 0..2 {
        let st = mesh.status(i).expect("answers");
        assert!(st.nodes.iter().any(|n| n.name == "n1" && n.up), "node {i}: {st:#?}");
        assert!(!st.problems.iter().any(|p| p.contains("revoked")), "node {i}: {:?}", st.problems);
    }
    assert_eq!(std::fs::read(victim_dir.join("keep.txt")).unwrap(), b"n2's own file\n");
    assert_eq!(std::fs::read_dir(&victim_dir).unwrap().count(), 1, "nothing was written there");

    // The forgeries are refused and the rogue is named on both nodes: the
    // one it sent them to, and the one they would have been relayed to.
    for i in 0..2 {
        assert!(
            wait_until(T, || refused_from(&mesh, i, "rogue") >= 3),
            "node {i}: {:#?}",
            mesh.status(i).unwrap_or_default()
        );
    }
    // Nothing of n1's is lost, replaced or hidden: the same archive, on
    // the same holders, with no other beside it, on disk and in the log.
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..2 {
        assert_eq!(archives(&mesh, i, "n1", &s), real, "node {i}");
        let jobs: Jobs = json(&mesh, i, &["jobs"]);
        let job = jobs.jobs.into_iter().find(|j| j.path == s).expect("the job is listed");
        assert_ne!(job.state, JobState::Failing, "node {i}: a forged failure shows: {job:#?}");
    }
    for node in &mesh.nodes {
        assert_eq!(manifests_on_disk(node), vec![real_id.clone()], "{}", node.name);
    }
    // The restore from n2 gives back n1's data exactly.
    let back = mesh.root.path().join("back");
    let out = mesh.cli(1, &["--json", "restore", "n1", &s, "--on", "n2", "--to", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_until(T, || back.join("data.txt").exists()));
    assert!(tree_differences(&src, &back).is_empty(), "{:?}", tree_differences(&src, &back));

    // No registration of the rogue's took: only n2 writes n2's jobs, and
    // only under its own token or the operator's order.
    let h = hooked.to_string_lossy().into_owned();
    for i in 0..2 {
        let jobs = json::<Jobs>(&mesh, i, &["jobs"]).jobs;
        assert!(!jobs.iter().any(|j| j.path == h), "node {i}: {jobs:#?}");
    }
    assert!(!marker.exists(), "the rogue's hook ran on n2");
    // Registered through n1 under the operator's order: it runs.
    let legit = mesh.root.path().join("legit");
    let pre = format!("touch {}", legit.display());
    assert!(mesh.cli(0, &["register", "n2", &h, "--every", "600", "--pre", &pre]).status.success());
    let has_pre = |e: &LogEntry| matches!(&e.event, Event::Registered { spec, .. } if spec.pre.as_ref() == Some(&pre));
    assert!(wait_until(T, || log_of(&mesh, 1, 50).iter().any(has_pre)));
    let hook_run: RunOutcome = json(&mesh, 0, &["run", "n2", &h]);
    assert_eq!(hook_run.result, RunResult::Finished, "{hook_run:#?}");
    assert!(legit.exists(), "the operator's hook did not run");
    assert!(!marker.exists(), "the rogue's hook ran on n2");

    // The honest mesh works on, its clock its own: a new backup of n1
    // reaches n2, dated now, not a year ahead.
    std::fs::write(src.join("data.txt"), b"the real data, version 2\n").unwrap();
    let run: RunOutcome = json(&mesh, 1, &["run", "n1", &s]);
    assert_eq!(run.result, RunResult::Finished, "{run:#?}");
    assert!(wait_until(T, || archives(&mesh, 1, "n1", &s).len() == 2 && kept_on_both_newest(&mesh, &s)));
    let newest = log_of(&mesh, 0, 5).into_iter().next().map(|e| e.time).unwrap_or_default();
    let year = chrono_year(&newest);
    let this_year =
        chrono_year(&String::from_utf8_lossy(&Command::new("date").arg("-u").arg("+%Y-").output().unwrap().stdout));
    assert_eq!(year, this_year, "the newest entry is dated by the honest clocks: {newest:#}");
}

fn kept_on_both_newest(mesh: &Mesh, s: &str) -> bool {
    archives(mesh, 1, "n1", s).first().is_some_and(|a| a.1.len() == 2)
}

/// The year of an RFC 3339 time (`2026-…`).
fn chrono_year(t: &str) -> String {
    t.trim().split('-').next().unwrap_or_default().to_string()
}

#[test]
fn a_node_whose_clock_ran_a_year_ahead_costs_nothing_once_set_right() {
    let mut mesh = Mesh::new();
    let env = faketime_env("+365d");
    assert!(env.iter().any(|(k, _)| k == "LD_PRELOAD"), "{env:?}");
    mesh.env = env;
    let n1 = mesh.start("n1", None, &[]);
    mesh.env.clear();
    assert!(mesh.wait_ready(n1, T), "{}", mesh.nodes[n1].log_text());
    let n2 = mesh.start("n2", Some(n1), &[]);
    assert!(mesh.wait_ready(n2, T), "{}", mesh.nodes[n2].log_text());
    assert!(wait_until(T, || mesh.up_names(1).len() == 2));
    let src = mesh.root.path().join("app");
    std::fs::create_dir_all(&src).unwrap();
    let s = src.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n1", &s, "--every", "600"]).status.success());
    let mut made = Vec::new();
    let mut backup = |mesh: &Mesh, v: usize| {
        std::fs::write(src.join("version.txt"), format!("v{v}\n")).unwrap();
        let run: RunOutcome = json(mesh, 0, &["run", "n1", &s]);
        assert_eq!(run.result, RunResult::Finished, "{run:#?}");
        made.push(run.archive.unwrap());
    };
    // Two backups a year ahead, then the clock is set right and the node
    // restarted; two more.
    backup(&mesh, 1);
    backup(&mesh, 2);
    mesh.nodes[n1].env.clear();
    mesh.restart(n1);
    assert!(mesh.wait_ready(n1, T), "{}", mesh.nodes[n1].log_text());
    assert!(wait_until(T, || mesh.up_names(0).len() == 2));
    backup(&mesh, 3);
    backup(&mesh, 4);

    // n1 keeps all four, the newest by its order first, and restores the last.
    let on_n1: Vec<String> = archives(&mesh, 0, "n1", &s).into_iter().map(|a| a.0).collect();
    let newest_first: Vec<String> = made.iter().rev().cloned().collect();
    assert_eq!(on_n1, newest_first);
    let back = mesh.root.path().join("back");
    let out = mesh.cli(0, &["--json", "restore", "n1", &s, "--to", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_until(T, || std::fs::read(back.join("version.txt")).is_ok_and(|b| b == b"v4\n")));

    // n2 keeps copies of the two new ones, and sees them in the log: the
    // mesh's time was not dragged a year ahead by n1's old entries.
    let kept_on_n2 = |mesh: &Mesh| {
        let a = archives(mesh, 1, "n1", &s);
        made[2..].iter().all(|id| a.iter().any(|(x, h)| x == id && h.contains("n2")))
    };
    assert!(wait_until(T, || kept_on_n2(&mesh)), "{:?}", archives(&mesh, 1, "n1", &s));
    let this_year =
        chrono_year(&String::from_utf8_lossy(&Command::new("date").arg("-u").arg("+%Y-").output().unwrap().stdout));
    // What was written after the clock was set right is dated by it, on
    // both nodes: the runs of n1 and the copies n2 made. (The entries n1
    // dated a year ahead stay as they were written.)
    for i in 0..2 {
        let entries = log_of(&mesh, i, 1000);
        let after: Vec<&LogEntry> =
            entries.iter().filter(|e| made[2..].iter().any(|id| e.event.archive() == Some(id.as_str()))).collect();
        let kinds: BTreeSet<&str> = after.iter().map(|e| e.event.kind()).collect();
        assert!(kinds.contains("finished") && kinds.contains("replicated"), "node {i}: {after:#?}");
        for e in after {
            assert_eq!(chrono_year(&e.time), this_year, "node {i}: {e:#?}");
        }
    }
}

#[test]
fn a_holder_that_only_says_it_keeps_copies_makes_no_one_drop_theirs() {
    // One copy per series: n2 keeps n1's six series, until a rogue that
    // claims boundless space joins and placement elects it for most.
    let mut mesh = Mesh::new();
    for (i, name) in ["n1", "n2"].iter().enumerate() {
        let n = mesh.start(name, i.checked_sub(1), &["--replicas".into(), "1".into()]);
        assert!(mesh.wait_ready(n, T), "{}", mesh.nodes[n].log_text());
    }
    assert!(wait_until(T, || mesh.up_names(0).len() == 2));
    let mut paths = Vec::new();
    for k in 0..6 {
        let src = mesh.root.path().join(format!("app{k}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("data.txt"), format!("series {k}\n")).unwrap();
        let s = src.to_string_lossy().into_owned();
        assert!(mesh.cli(0, &["register", "n1", &s, "--every", "600"]).status.success());
        paths.push(s);
    }
    let on_n2 =
        |mesh: &Mesh| paths.iter().all(|s| archives(mesh, 0, "n1", s).first().is_some_and(|a| a.1.contains("n2")));
    assert!(wait_until(T, || on_n2(&mesh)), "{}\n{}", mesh.nodes[0].log_text(), mesh.nodes[1].log_text());
    let copies = manifests_on_disk(&mesh.nodes[1]);
    assert_eq!(copies.len(), 6, "{copies:?}");

    let mut rogue = Command::new(binary("backmesh-rogue"))
        .args(["--swarm-key", mesh.swarm_key.to_str().unwrap()])
        .args(["--bootstrap", &format!("127.0.0.1:{}", mesh.nodes[0].listen)])
        .args(["--victim", "n1", "--holder", "n2", "--path", &paths[0]])
        .args(["--attacks", "lie-holder", "--serve-secs", "120"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run backmesh-rogue");
    assert!(wait_until(T, || mesh.up_names(1).contains(&"rogue".to_string())));
    // n2 is no longer elected for the series the rogue outranks it on, and
    // asks the rogue to prove it keeps them: it cannot, and n2 keeps its own.
    let refused = |mesh: &Mesh| mesh.nodes[1].log_text().contains("did not send a member of it");
    let dropped = |mesh: &Mesh| mesh.nodes[1].log_text().contains("surplus copies");
    let over = wait_until(T, || refused(&mesh) || dropped(&mesh));
    let _ = rogue.kill();
    let _ = rogue.wait();
    assert!(over, "nothing happened:\n{}", mesh.nodes[1].log_text());
    assert_eq!(manifests_on_disk(&mesh.nodes[1]), copies, "n2 dropped copies on the rogue's word");
    assert!(!dropped(&mesh), "{}", mesh.nodes[1].log_text());
    assert!(refused(&mesh), "{}", mesh.nodes[1].log_text());
}

/// How many times node `i` refused the peer named `name` what went past
/// its bounds.
fn limited_from(mesh: &Mesh, i: usize, name: &str) -> u64 {
    count_for(mesh, i, name, |n| n.limited)
}

/// Every file or directory under `dir` whose name contains `part`.
fn named_like(dir: &std::path::Path, part: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().contains(part) {
                out.push(p.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            }
        }
    }
    out
}

#[test]
fn a_rogue_that_floods_a_holder_is_bounded_and_named() {
    // n2 keeps every archive it stored within a day (so retention frees
    // nothing) and gives no other node more than 3 MiB.
    let mut mesh = Mesh::new();
    let n1 = mesh.start("n1", None, &[]);
    assert!(mesh.wait_ready(n1, T), "{}", mesh.nodes[n1].log_text());
    let limits: Vec<String> = ["--quota", "3M", "--keep-within", "1d"].iter().map(|s| s.to_string()).collect();
    let n2 = mesh.start("n2", Some(n1), &limits);
    assert!(mesh.wait_ready(n2, T), "{}", mesh.nodes[n2].log_text());
    assert!(wait_until(T, || mesh.up_names(0).len() == 2));
    let src = mesh.root.path().join("app");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.txt"), b"n1's data, version 1\n").unwrap();
    let s = src.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n1", &s, "--every", "600"]).status.success());
    assert!(wait_until(T, || archives(&mesh, 1, "n1", &s).first().is_some_and(|a| a.1.len() == 2)));

    let out = Command::new(binary("backmesh-rogue"))
        .args(["--swarm-key", mesh.swarm_key.to_str().unwrap()])
        .args(["--bootstrap", &format!("127.0.0.1:{}", mesh.nodes[0].listen)])
        .args(["--victim", "n1", "--holder", "n2", "--path", &s, "--flood", "8"])
        .args(["--attacks", "path-escape,over-quota,commit-first,many-connections,request-flood"])
        .output()
        .expect("run backmesh-rogue");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("rogue said:\n{said}");
    let answers: Vec<Value> = said.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let answer = |attack: &str| {
        let a = answers.iter().find(|a| a["attack"] == attack);
        a.map(|a| a["answer"].as_str().unwrap_or_default().to_string()).expect(attack)
    };

    // An id that climbs out of the store is refused, and nothing of that
    // name exists anywhere.
    let escape = answer("path-escape");
    assert!(escape.contains("Refused") && escape.contains("not a valid archive id"), "{escape}");
    assert!(named_like(mesh.root.path(), "escape").is_empty(), "{:?}", named_like(mesh.root.path(), "escape"));

    // The flood stops at the quota, and the refusal says so.
    let flood = answer("over-quota");
    let stored: usize = flood.strip_prefix("stored ").and_then(|r| r.split(',').next()?.parse().ok()).expect(&flood);
    assert!((1..=3).contains(&stored), "{flood}");
    assert!(flood.contains("refused") && flood.contains("--quota"), "{flood}");
    // A commit without an offer is held to the same quota.
    let first = answer("commit-first");
    assert!(first.contains("OverQuota") && first.contains("--quota"), "{first}");
    // n2 names the rogue: in its status (counted), its problems and its log.
    assert!(wait_until(T, || limited_from(&mesh, 1, "rogue") >= 2), "{:#?}", mesh.status(1).unwrap_or_default());
    let status = mesh.status(1).unwrap_or_default();
    let problems = status.problems.join("\n");
    assert!(problems.contains("rogue") && problems.contains("went past this node's limits"), "{status:#?}");
    let log = mesh.nodes[1].log_text();
    assert!(log.contains("at its quota"), "{log}");
    assert!(log.contains("opened more than 4 connections"), "{log}");
    // 400 requests at once: those past the bound are refused at once.
    let flood = answer("request-flood");
    let refused: usize = flood.split_whitespace().next().and_then(|n| n.parse().ok()).expect(&flood);
    assert!(refused > 0, "{flood}");
    assert!(log.contains("requests in flight here and sent more"), "{log}");

    // The honest mesh works on: a new backup of n1's reaches n2, whose
    // quota the rogue's archives do not share.
    std::fs::write(src.join("data.txt"), b"n1's data, version 2\n").unwrap();
    let run: RunOutcome = json(&mesh, 0, &["run", "n1", &s]);
    assert_eq!(run.result, RunResult::Finished, "{run:#?}");
    assert!(wait_until(T, || {
        let a = archives(&mesh, 1, "n1", &s);
        a.len() == 2 && a[0].1.len() == 2
    }));
    let back = mesh.root.path().join("back");
    let out = mesh.cli(1, &["--json", "restore", "n1", &s, "--on", "n2", "--to", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_until(T, || back.join("data.txt").exists()));
    assert!(tree_differences(&src, &back).is_empty(), "{:?}", tree_differences(&src, &back));

    // A node of another mesh protocol is refused whole: not up, its
    // requests refused, its entries not taken, and named in status.
    let out = Command::new(binary("backmesh-rogue"))
        .args(["--swarm-key", mesh.swarm_key.to_str().unwrap()])
        .args(["--bootstrap", &format!("127.0.0.1:{}", mesh.nodes[0].listen)])
        .args(["--victim", "n1", "--holder", "n2", "--path", &s, "--protocol", "5", "--attacks", "old-protocol"])
        .output()
        .expect("run backmesh-rogue");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("Refused") && said.contains("another mesh protocol"), "{said}");
    let status = mesh.status(1).unwrap_or_default();
    let problems = status.problems.join("\n");
    assert!(problems.contains("is refused") && problems.contains("mesh protocol 5"), "{status:#?}");
    assert!(!mesh.up_names(1).contains(&"rogue".to_string()), "{status:#?}");
    std::thread::sleep(Duration::from_secs(2));
    let entries = log_of(&mesh, 1, 1000);
    let paused = entries.iter().filter(|e| e.event.kind() == "paused").count();
    assert_eq!(paused, 0, "{entries:#?}");
}
