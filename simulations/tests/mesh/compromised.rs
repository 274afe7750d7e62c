//! Root on one of the mesh's own servers (docs/security.md, "The
//! ransomware case"): n3's API token, then, n3 stopped, its identity key
//! and the swarm key in the rogue's hands. Nothing of n1's is read,
//! changed, stopped or lost; n3's own history is not flushed; every
//! refusal shows in `status` and the logs.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use backmesh_api::cli::RunOutcome;
use backmesh_api::{Backups, Jobs, RunResult};
use backmesh_simulations::{binary, tree_differences, wait_until, Mesh};

const T: Duration = Duration::from_secs(30);

/// Runs the job now; its archive. (A registration runs the job at once
/// too: the run asked for finds it done, `unchanged`, when that one won.)
fn run(mesh: &Mesh, i: usize, node: &str, path: &str) -> RunOutcome {
    let out: RunOutcome = mesh.cli_json(i, &["run", node, path]).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(out.result, RunResult::Finished | RunResult::Unchanged), "{out:#?}");
    assert!(out.archive.is_some(), "{out:#?}");
    out
}

#[test]
fn root_on_one_server_costs_that_server_alone() {
    let mut mesh = Mesh::new();
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        let token = format!("token-of-{name}");
        let n = mesh.start(name, i.checked_sub(1), &["--token".into(), token.clone(), "--keep".into(), "2".into()]);
        mesh.nodes[n].cli_args = vec!["--token".into(), token];
        assert!(mesh.wait_ready(n, T), "{}", mesh.nodes[n].log_text());
    }
    assert!(wait_until(T, || mesh.up_names(0).len() == 3));
    let tree = |name: &str, text: &str| {
        let d = mesh.root.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("data.txt"), text).unwrap();
        (d.clone(), d.to_string_lossy().into_owned())
    };
    let (src1, s1) = tree("n1-app", "n1's data\n");
    let (_, s3) = tree("n3-app", "n3's good data\n");
    assert!(mesh.cli(0, &["register", "n1", &s1, "--every", "600"]).status.success());
    assert!(mesh.cli(0, &["register", "n3", &s3, "--every", "600"]).status.success());
    let n1_archive = run(&mesh, 0, "n1", &s1).archive.unwrap();
    let n3_good = run(&mesh, 0, "n3", &s3).archive.unwrap();
    let on_all = |mesh: &Mesh, node: &str, s: &str, id: &str| {
        mesh.cli_json::<Backups>(0, &["backups", node, s])
            .is_ok_and(|b| b.archives.iter().any(|a| a.id == id && a.holders.len() == 3))
    };
    assert!(wait_until(T, || on_all(&mesh, "n1", &s1, &n1_archive) && on_all(&mesh, "n3", &s3, &n3_good)));

    // 1. n3's API token: nothing of n1's.
    let elsewhere = mesh.root.path().join("stolen.tgz");
    let n1_store = mesh.nodes[0].dir.join("segments");
    for args in [
        vec!["register", "n1", "/etc", "--every", "1"],
        vec!["pause", "n1"],
        vec!["unregister", "n1", &s1],
        vec!["run", "n1", &s1],
        vec!["fetch", "n1", &s1, "-o", elsewhere.to_str().unwrap()],
        vec!["restore", "n1", &s1, "--on", "n1", "--to", n1_store.to_str().unwrap(), "--overwrite"],
    ] {
        let out = mesh.cli_as_node(2, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&out.stdout));
    }
    assert!(!elsewhere.exists());
    // 2. Its own history flushed with junk backups: pushed out of
    // `backups`, not off the holders; and no faster than its schedule.
    for junk in 0..8 {
        std::fs::write(mesh.root.path().join("n3-app/data.txt"), format!("encrypted junk {junk}\n")).unwrap();
        let out: RunOutcome = mesh.cli_answer(2, &["run", "n3", &s3]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.result, RunResult::Finished, "{out:#?}");
    }
    let hidden_on_holders = |mesh: &Mesh| {
        mesh.cli_json::<Backups>(0, &["backups", "n3", &s3, "--hidden"]).is_ok_and(|b| {
            b.hidden.iter().any(|a| {
                a.id == n3_good
                    && a.holders
                        .iter()
                        .cloned()
                        .collect::<BTreeSet<_>>()
                        .is_superset(&["n1".into(), "n2".into()].into())
            })
        })
    };
    assert!(
        wait_until(T, || hidden_on_holders(&mesh)),
        "{:#?}",
        mesh.cli_json::<Backups>(0, &["backups", "n3", &s3, "--hidden"])
    );

    // Past --burst (6) new archives at once, the holders take no more of
    // the series for now (one per --every period), and say so.
    let limited = |mesh: &Mesh, i: usize| {
        mesh.status(i).is_some_and(|s| {
            s.problems.iter().any(|p| p.starts_with("n3 (") && p.contains("than its schedule allows here"))
        })
    };
    assert!(
        wait_until(T, || limited(&mesh, 0) && limited(&mesh, 1)),
        "{:#?}",
        (mesh.status(0).map(|s| s.problems), mesh.status(1).map(|s| s.problems))
    );

    // 3. n3 stopped; its identity key and the swarm key in the rogue's hands.
    mesh.stop(2);
    let out = Command::new(binary("backmesh-rogue"))
        .args(["--swarm-key", mesh.swarm_key.to_str().unwrap()])
        .args(["--bootstrap", &format!("127.0.0.1:{}", mesh.nodes[0].listen)])
        .args(["--identity-of", mesh.nodes[2].dir.to_str().unwrap(), "--name", "n3"])
        .args(["--victim", "n1", "--holder", "n1", "--path", &s1, "--archives", &n1_archive])
        .args(["--hook-path", &s1, "--marker", mesh.root.path().join("pwned").to_str().unwrap()])
        .args(["--restore-to", mesh.nodes[0].dir.to_str().unwrap()])
        .args(["--attacks", "hook-registration,stranger-order,no-order,restore-overwrite,forged-revocation"])
        .output()
        .expect("run backmesh-rogue");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("root on n3 said:\n{said}");
    assert!(!said.lines().any(|l| l.contains("Recorded") || l.contains("Accepted")), "{said}");
    assert!(!mesh.root.path().join("pwned").exists());

    // Nothing of n1's changed, stopped or lost; its archive restores.
    for i in 0..2 {
        let jobs: Jobs = mesh.cli_json(i, &["jobs"]).unwrap_or_else(|e| panic!("{e}"));
        let job = jobs.jobs.iter().find(|j| j.node == "n1").expect("n1's job");
        assert_eq!((job.path.as_str(), job.every, job.paused), (s1.as_str(), 600, false), "node {i}: {job:#?}");
        assert!(!jobs.jobs.iter().any(|j| j.node == "n1" && j.path != s1), "node {i}: {jobs:#?}");
        let st = mesh.status(i).unwrap();
        assert!(st.nodes.iter().any(|n| n.name == "n1" && n.up), "node {i}");
        assert!(st.nodes.iter().any(|n| n.name == "n3" && n.refused > 0), "node {i} counts n3: {st:#?}");
    }
    let back = mesh.root.path().join("n1-back");
    let out = mesh.cli(1, &["restore", "n1", &s1, "--on", "n2", "--to", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(tree_differences(&src1, &back).is_empty(), "{:?}", tree_differences(&src1, &back));
    // n3's good archive, hidden, still restores (the operator, onto n2).
    let back3 = mesh.root.path().join("n3-back");
    let to = back3.to_str().unwrap();
    let out = mesh.cli(1, &["restore", "n3", &s3, "--archive", &n3_good, "--on", "n2", "--to", to]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(back3.join("data.txt")).unwrap(), b"n3's good data\n");
    // And the refusals are in the logs.
    assert!(mesh.nodes[0].log_text().contains("refused"), "{}", mesh.nodes[0].log_text());
}
