//! Seeded fault schedules on a real mesh (`backmesh_simulations::faults`):
//! CI plays a few seeds on every change; `scripts/soak --seeds N` plays many.
//! A seed that once broke an invariant is played here under its own name
//! (docs/reliability.md, "Found and fixed").

use backmesh_api::cli::RunOutcome;
use backmesh_api::{Backups, LogPage, Queued};
use backmesh_simulations::binary;

/// Plays `seed` through `backmesh-soak` (a process of its own: it makes
/// each node's disk a tmpfs of its own, which needs a single thread).
/// Returns what it printed (its table, then its log).
fn play(seed: u64, steps: usize) -> String {
    let out = std::process::Command::new(binary("backmesh-soak"))
        .args(["--seed", &seed.to_string(), "--steps", &steps.to_string()])
        .output()
        .expect("run backmesh-soak (cargo build --workspace --bins)");
    let (table, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{table}");
    assert!(out.status.success(), "seed {seed} (replay: backmesh-soak --seed {seed} --steps {steps}):\n{table}\n{log}");
    let row = table.lines().find(|l| l.starts_with(&format!("| {seed} |"))).unwrap_or_default();
    let checks: usize = row.split('|').nth(4).and_then(|c| c.trim().parse().ok()).unwrap_or(0);
    assert!(checks > 10, "too few invariant checks: {row}");
    format!("{table}\n{log}")
}

/// Found by seed 1 (of the first schedules): a node restarted while no
/// peer could tell it its seq keeps its entries in memory for a few
/// seconds; killed then, right after a backup, it kept the archive (and so
/// did its holders) but its `finished` entry was lost, and the catalog
/// never listed it as keeping its own archive. Nodes now tell the catalog
/// what their disk keeps.
#[test]
fn seed_1_a_backup_whose_finished_entry_died_with_its_node_is_listed_and_its_run_ends() {
    use backmesh_simulations::{manifests_on_disk, wait_until, Mesh};
    use std::time::Duration;
    let mut mesh = Mesh::new();
    mesh.down_after = 3;
    let extra: Vec<String> = ["--replicas", "1"].iter().map(|s| s.to_string()).collect();
    let a = mesh.start("a", None, &extra);
    assert!(mesh.wait_ready(a, Duration::from_secs(60)));
    let b = mesh.start("b", Some(a), &extra);
    assert!(mesh.wait_ready(b, Duration::from_secs(60)));
    let dir = mesh.root.path().join("tree");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f"), b"first").unwrap();
    let path = dir.to_string_lossy().into_owned();
    assert!(mesh.cli(a, &["register", "a", &path, "--every", "100000"]).status.success());
    // b down; a restarted alone: it waits for a peer to tell it its seq.
    mesh.kill9(b);
    mesh.restart(a);
    assert!(mesh.wait_ready(a, Duration::from_secs(60)));
    let out = mesh.cli(a, &["--json", "run", "a", &path, "--no-wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let request = serde_json::from_slice::<Queued>(&out.stdout).unwrap().request;
    assert!(!request.is_empty());
    let made = wait_until(Duration::from_secs(20), || !manifests_on_disk(&mesh.nodes[a]).is_empty());
    assert!(made, "the backup did not finish:\n{}", mesh.nodes[a].log_text());
    let archive = manifests_on_disk(&mesh.nodes[a]).remove(0);
    mesh.kill9(a); // before its `finished` entry is written
    mesh.restart(a);
    mesh.restart(b);
    assert!(mesh.wait_ready(a, Duration::from_secs(60)) && mesh.wait_ready(b, Duration::from_secs(60)));
    let listed = |i: usize| {
        let b = mesh.cli_json::<Backups>(i, &["backups", "a", &path]).unwrap_or_default();
        b.archives.iter().any(|x| x.id == archive && x.holders.iter().any(|n| n == "a"))
    };
    assert!(
        wait_until(Duration::from_secs(90), || listed(a) && listed(b)),
        "archive {archive} is kept on a but not listed there:\n{}",
        mesh.nodes[a].log_text()
    );
    // The run was not forgotten with the entry (seed 1 too: the queue
    // forgets a run only once its outcome is on disk): it ran again after
    // the restart, and its request has an outcome.
    let ended = wait_until(Duration::from_secs(30), || {
        let page = mesh.cli_json::<LogPage>(a, &["log", "--limit", "200"]).unwrap_or_default();
        page.entries
            .iter()
            .any(|e| e.event.request() == Some(request.as_str()) && matches!(e.event.kind(), "finished" | "unchanged"))
    });
    assert!(ended, "run request {request} never ended:\n{}", mesh.nodes[a].log_text());
}

/// The seeds CI plays on every change (their schedules as drawn today).
#[test]
fn seed_1_keeps_every_invariant() {
    play(1, 16);
}

#[test]
fn seed_2_keeps_every_invariant() {
    play(2, 16);
}

#[test]
fn seed_3_keeps_every_invariant() {
    play(3, 16);
}

/// Found by seed 3 (of the 100-seed soak): nodes restarted while one was
/// cut off. The cut-off node (the first, which bootstraps from no one)
/// refused a bootstrap dial once the connection was up; the dialler had
/// marked that address answered and never tried it again, yet did not know
/// the peer behind it (identify had not run), so nobody dialled it again
/// and the mesh stayed split after the cut was mended. A bootstrap peer that answers is
/// now known at once, and redialled like any peer lost.
#[test]
fn seed_3_nodes_restarted_during_a_partition_find_each_other_once_it_heals() {
    use backmesh_simulations::{wait_until, Mesh};
    use std::time::Duration;
    const T: Duration = Duration::from_secs(60);
    let mut mesh = Mesh::new();
    mesh.down_after = 3;
    let names = ["n1", "n2", "n3"];
    let gate = |mesh: &Mesh, n: &str| mesh.root.path().join(format!("gate-{n}"));
    for (i, n) in names.iter().enumerate() {
        mesh.env = vec![("BACKMESH_TEST_PARTITION".into(), gate(&mesh, n).to_string_lossy().into_owned())];
        let k = mesh.start(n, i.checked_sub(1), &[]);
        assert!(mesh.wait_ready(k, T), "{}", mesh.nodes[k].log_text());
    }
    let all: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let whole = |mesh: &Mesh| (0..3).all(|i| mesh.up_names(i) == all);
    assert!(wait_until(T, || whole(&mesh)), "the mesh never came together");
    let peers: Vec<String> = (0..3).map(|i| mesh.peer_id(i).unwrap_or_default()).collect();
    // n1 refuses n2 and n3 (a cut seen from one side, as while a cut is
    // mended one side after the other), and every node is restarted.
    std::fs::write(gate(&mesh, "n1"), format!("{}\n{}", peers[1], peers[2])).unwrap();
    for i in 0..3 {
        mesh.restart(i);
        assert!(mesh.wait_ready(i, T), "{}", mesh.nodes[i].log_text());
    }
    std::thread::sleep(Duration::from_secs(2));
    for n in names {
        std::fs::write(gate(&mesh, n), "").unwrap();
    }
    assert!(
        wait_until(2 * T, || whole(&mesh)),
        "still split after the cut was mended: {:?}\n{}",
        (0..3).map(|i| mesh.up_names(i)).collect::<Vec<_>>(),
        mesh.nodes[1].log_text()
    );
}

/// Found by seed 16 (of the 100-seed soak): a restore asked of a node the
/// moment it had started, before it had connected to its peers, failed
/// with "kept by no node that is up" though every holder was up. A
/// restore now waits up to 10 s for a holder to be seen.
#[test]
fn seed_16_a_restore_on_a_node_that_just_started_waits_for_a_holder() {
    use backmesh_simulations::{tree_differences, wait_until, write_slow_tree, Mesh};
    use std::time::Duration;
    const T: Duration = Duration::from_secs(60);
    let mut mesh = Mesh::chain_with(&["n1", "n2", "n3"], &["--replicas", "1"]);
    let src = mesh.root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_slow_tree(&src, 3, 16);
    let s = src.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n1", &s, "--every", "600"]).status.success());
    // Wait for the copy: n1 and one holder keep it.
    let holders = |mesh: &Mesh| -> Vec<String> {
        let b = mesh.cli_json::<Backups>(0, &["backups", "n1", &s]).unwrap_or_default();
        b.archives.into_iter().next().map(|a| a.holders).unwrap_or_default()
    };
    assert!(wait_until(T, || holders(&mesh).len() == 2), "{:?}", holders(&mesh));
    // The node that keeps no copy, restarted unable to reach the holders
    // for its first 2 s (the test-only partition gate), and asked at once.
    let h = holders(&mesh);
    let other = ["n2", "n3"].iter().position(|n| !h.contains(&n.to_string())).unwrap() + 1;
    let gate = mesh.root.path().join("gate");
    let holder_ids: Vec<String> =
        (0..3).filter(|i| h.contains(&mesh.nodes[*i].name)).filter_map(|i| mesh.peer_id(i)).collect();
    assert_eq!(holder_ids.len(), 2);
    std::fs::write(&gate, holder_ids.join("\n")).unwrap();
    mesh.nodes[other].env = vec![("BACKMESH_TEST_PARTITION".into(), gate.to_string_lossy().into_owned())];
    mesh.restart(other);
    assert!(mesh.wait_ready(other, T));
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            std::fs::write(&gate, "").unwrap();
        })
    };
    let to = mesh.root.path().join("back");
    let name = mesh.nodes[other].name.clone();
    let out = mesh.cli(other, &["restore", "n1", &s, "--on", &name, "--to", &to.to_string_lossy()]);
    opener.join().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert_eq!(tree_differences(&src, &to), Vec::<String>::new());
}

/// Found by seed 30 (of the 100-seed soak): a restore asked of a node just
/// restarted, naming an archive made while it was down, was answered "no
/// archive … is kept in the mesh" before the node had caught up with its
/// peers. A restore now waits (10 s at most) for the node to catch up
/// before saying an archive is unknown.
#[test]
fn seed_30_a_restore_on_a_node_just_restarted_waits_until_it_has_caught_up() {
    use backmesh_simulations::{tree_differences, wait_until, write_slow_tree, Mesh};
    use std::time::Duration;
    const T: Duration = Duration::from_secs(60);
    let mut mesh = Mesh::chain_with(&["n1", "n2"], &["--replicas", "1"]);
    let src = mesh.root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_slow_tree(&src, 3, 30);
    let s = src.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n1", &s, "--every", "600"]).status.success());
    let first = wait_until(T, || !backmesh_simulations::manifests_on_disk(&mesh.nodes[1]).is_empty());
    assert!(first, "the first archive never reached n2");
    // n2 down; a new archive made meanwhile; n2 back and asked for it at once.
    mesh.kill9(1);
    write_slow_tree(&src, 4, 31);
    let v: RunOutcome = mesh.cli_json(0, &["run", "n1", &s, "--timeout", "60"]).unwrap_or_else(|e| panic!("{e}"));
    let id = v.archive.clone().unwrap_or_default();
    assert!(!id.is_empty(), "{v:?}");
    mesh.restart(1);
    assert!(mesh.wait_ready(1, T));
    let to = mesh.root.path().join("back");
    let args = ["restore", "n1", &s, "--archive", &id, "--on", "n2", "--to", &to.to_string_lossy()];
    let out = mesh.cli(1, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree_differences(&src, &to), Vec::<String>::new());
}

/// Found by seed 32 (and 38) of the 100-seed soak: once sled, the index
/// database, met a full disk it kept that error for every later write, so
/// a node whose disk filled and was freed again ran on unable to write its
/// index or mesh state, refused every copy, and the mesh never settled.
/// The node now probes its index, and exits (code 74) when writes keep
/// failing while its disk has room; the runner starts it again as a
/// service manager would, and only that end of a node is let pass.
#[test]
fn seed_32_a_node_whose_disk_filled_and_was_freed_is_started_again_and_the_mesh_settles() {
    let table = play(32, 24);
    if table.contains("disk-full faults are left out") {
        eprintln!("NOT RUN: this machine gives no mount namespaces, so no disk can fill here");
        return;
    }
    let row = table.lines().find(|l| l.starts_with("| 32 |")).unwrap_or_default();
    assert!(row.contains("disk-full×2"), "seed 32 no longer fills and frees a disk: {row}");
    // Whether sled meets the full disk depends on timing (it may not write
    // while the disk is full): say what happened, the seed passing is the test.
    let revived = table.contains("ended by themselves after a full disk");
    eprintln!("seed 32: a node ended itself after its disk was freed and was started again: {revived}");
}

/// Found by seed 60 of the 100-seed soak: a run asked of a node whose disk
/// was full was accepted (`run --no-wait` got its request id) though its
/// queue entry could not be written; the node was killed before the run
/// ended, and the run was lost: accepted and never ended. A node now
/// refuses an on-demand run it cannot queue durably (503, "nothing was
/// queued"), and the asker knows to try again.
#[test]
fn seed_60_a_run_a_node_cannot_queue_durably_is_refused_not_lost() {
    play(60, 24);
}
