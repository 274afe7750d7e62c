//! Rotating the swarm key of a live mesh: each node's key file replaced
//! in turn while backups run; nothing splits, nothing is lost, and once
//! the overlap is over only the new key gets in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backmesh_api::cli::RunOutcome;
use backmesh_api::{Backups, RunResult};
use backmesh_simulations::{tree_differences, wait_until, write_slow_tree, Mesh};

const T: Duration = Duration::from_secs(30);

/// Replaces `to` with `from` as an operator's tooling would: a copy beside
/// it, renamed over it.
fn install_key(from: &Path, to: &Path) {
    let staging = to.with_extension("new");
    std::fs::copy(from, &staging).unwrap();
    std::fs::rename(&staging, to).unwrap();
}

fn problems(mesh: &Mesh, i: usize) -> Vec<String> {
    mesh.status(i).map(|s| s.problems).unwrap_or_default()
}

#[test]
fn a_swarm_key_is_rotated_on_a_live_mesh_with_backups_running_and_nothing_lost() {
    let mut mesh = Mesh::new();
    let names = ["n1", "n2", "n3"];
    // Each server its own copy of the key, as on separate machines.
    let keys: Vec<PathBuf> = names.iter().map(|n| mesh.root.path().join(format!("{n}.key"))).collect();
    for (i, name) in names.iter().enumerate() {
        std::fs::copy(&mesh.swarm_key, &keys[i]).unwrap();
        let extra = ["--swarm-key", keys[i].to_str().unwrap(), "--swarm-key-overlap", "75s", "--replicas", "2"];
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let n = mesh.start(name, i.checked_sub(1), &extra);
        assert!(mesh.wait_ready(n, T), "{}", mesh.nodes[n].log_text());
    }
    let all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let whole = |mesh: &Mesh| (0..3).all(|i| mesh.up_names(i) == all);
    assert!(wait_until(T, || whole(&mesh)), "the mesh never formed");
    // A job backs up on its schedule all along, and the test runs it at
    // each step with a changed tree, keeping a copy of every version.
    let src = mesh.root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_slow_tree(&src, 20, 1);
    let s = src.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n1", &s, "--every", "1"]).status.success());
    let mut versions: Vec<(String, PathBuf)> = Vec::new();
    let mut backup = |mesh: &Mesh, step: u64| {
        std::fs::write(src.join("step"), format!("step {step}\n")).unwrap();
        let run: RunOutcome = mesh.cli_json(0, &["run", "n1", &s]).unwrap_or_else(|e| panic!("{e}"));
        // (`unchanged` when the job's own schedule backed this step up first.)
        assert!(matches!(run.result, RunResult::Finished | RunResult::Unchanged), "step {step}: {run:#?}");
        let id = run.archive.clone().expect("an archive id");
        let copy = mesh.root.path().join(format!("version-{step}"));
        let out = std::process::Command::new("cp").arg("-a").arg(&src).arg(&copy).output().unwrap();
        assert!(out.status.success());
        // Two other nodes take it, whichever key each has now.
        let held = || {
            mesh.cli_json::<Backups>(0, &["backups", "n1", &s]).is_ok_and(|b| {
                b.archives.iter().any(|a| a.id == id && a.holders.iter().filter(|h| *h != "n1").count() >= 2)
            })
        };
        assert!(wait_until(Duration::from_secs(60), held), "step {step}: {:#?}", mesh.cli(0, &["backups", "n1", &s]));
        versions.push((id, copy));
    };
    backup(&mesh, 0);
    let new_key = mesh.other_key();
    for (i, key) in keys.iter().enumerate() {
        install_key(&new_key, key);
        let installed = std::time::Instant::now();
        assert!(
            wait_until(T, || mesh.nodes[i].log_text().contains("the swarm key changed")),
            "{}",
            mesh.nodes[i].log_text()
        );
        eprintln!("{}: new key taken {:?} after the file was replaced", names[i], installed.elapsed());
        if i == 0 {
            // The others see n1 dial with another key: the rotation shows.
            let shown =
                |mesh: &Mesh| problems(mesh, 1).iter().any(|p| p.contains("rotation under way") && p.contains("n1"));
            assert!(wait_until(T, || shown(&mesh)), "{:#?}", problems(&mesh, 1));
        }
        // Nodes with and without the new key still talk both ways: new
        // connections too (a restarted node redials everyone).
        mesh.restart(i);
        assert!(mesh.wait_ready(i, T), "{}", mesh.nodes[i].log_text());
        let restarted = std::time::Instant::now();
        assert!(wait_until(T, || whole(&mesh)), "the mesh split at step {i}: {:#?}", mesh.status(i));
        eprintln!("{}: whole again {:?} after its restart", names[i], restarted.elapsed());
        backup(&mesh, i as u64 + 1);
    }
    // Every node has the new key: none sees another key, each says until
    // when the previous one is accepted.
    let settled = |mesh: &Mesh| {
        (0..3).all(|i| {
            let p = problems(mesh, i);
            !p.iter().any(|p| p.contains("rotation under way")) && p.iter().any(|p| p.contains("still accepted until"))
        })
    };
    assert!(wait_until(T, || settled(&mesh)), "{:#?}", (0..3).map(|i| problems(&mesh, i)).collect::<Vec<_>>());
    // The overlap ends: the previous key is refused from then on.
    let over = |mesh: &Mesh| (0..3).all(|i| !problems(mesh, i).iter().any(|p| p.contains("swarm key")));
    // (75 s of overlap: the three steps take about 15 s alone, and must all
    // end before the first node's overlap does, also under the full suite.)
    assert!(wait_until(Duration::from_secs(120), || over(&mesh)), "{:#?}", problems(&mesh, 0));
    assert!(mesh.nodes[0].log_text().contains("is refused from now on"), "{}", mesh.nodes[0].log_text());
    let old = mesh.root.path().join("old.key");
    std::fs::copy(&mesh.swarm_key, &old).unwrap();
    let late = mesh.start("late", Some(0), &["--swarm-key".into(), old.to_string_lossy().into_owned()]);
    assert!(mesh.wait_ready(late, T));
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(mesh.up_names(late), vec!["late".to_string()], "the old key got in after the overlap");
    for i in 0..3 {
        assert!(!mesh.up_names(i).contains(&"late".to_string()));
    }
    let fresh = mesh.start("fresh", Some(0), &["--swarm-key".into(), new_key.to_string_lossy().into_owned()]);
    assert!(mesh.wait_ready(fresh, T));
    let with_fresh: Vec<String> = ["fresh", "n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
    assert!(
        wait_until(T, || [0, 1, 2, fresh].iter().all(|i| mesh.up_names(*i) == with_fresh)),
        "{:#?}",
        mesh.status(fresh)
    );
    // Nothing lost: every version made during the rotation restores
    // exactly, from a holder (holders move to the newcomer meanwhile).
    backup(&mesh, 9);
    for (n, (id, copy)) in versions.iter().enumerate() {
        let to = mesh.root.path().join(format!("restored-{n}"));
        let args = ["restore", "n1", &s, "--archive", id, "--on", "n3", "--to", to.to_str().unwrap()];
        let out = mesh.cli(2, &args);
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(tree_differences(copy, &to), Vec::<String>::new(), "version {n}");
    }
}
