//! Upgrading a mesh in place (docs/operations.md, "Upgrading"): the data
//! directories two nodes of mesh protocol 10 left behind
//! (`scripts/make-upgrade-fixture`), started by this version.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use backmesh_api::{Backups, Jobs};
use backmesh_simulations::{tree_differences, wait_until, Mesh};

const T: Duration = Duration::from_secs(30);

#[test]
fn a_mesh_of_protocol_10_upgraded_in_place_keeps_restoring_and_its_nodes_take_their_jobs_back() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/protocol-10.tar.gz");
    let mut mesh = Mesh::new();
    let old = mesh.root.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    let out = Command::new("tar").arg("-xzf").arg(&fixture).arg("-C").arg(&old).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job = std::fs::read_to_string(old.join("job-path")).unwrap().trim().to_string();
    let key = old.join("swarm.key").to_string_lossy().into_owned();
    // As an operator upgrades: the same data directories and swarm key,
    // a token of each node's own, and the operator's key.
    let flags = |token: &str| vec!["--swarm-key".to_string(), key.clone(), "--token".into(), token.into()];
    for (i, name) in ["n1", "n2"].iter().enumerate() {
        let token = format!("token-of-{name}");
        let n = mesh.start_in(name, old.join(name), i.checked_sub(1), &flags(&token));
        mesh.nodes[n].cli_args = vec!["--token".into(), token];
        assert!(mesh.wait_ready(n, T), "{}", mesh.nodes[n].log_text());
    }
    assert!(wait_until(T, || mesh.up_names(0).len() == 2), "{:?}", mesh.up_names(0));
    // The archive made by protocol 10 is listed, on both, and restores exactly.
    let b: Backups = mesh.cli_json(0, &["backups", "n2", &job]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.archives.len(), 1, "{b:#?}");
    let back = mesh.root.path().join("back");
    let out = mesh.cli(0, &["restore", "n2", &job, "--on", "n1", "--to", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let src = old.join("src/app");
    assert!(tree_differences(&src, &back).is_empty(), "{:?}", tree_differences(&src, &back));
    // n2 wrote its job again as its own (n1 had written it): a node that
    // joins now takes it in, and the operator changes it through n1.
    assert!(
        mesh.nodes[1].log_text().contains("writing again as this node's own 1 job"),
        "{}",
        mesh.nodes[1].log_text()
    );
    let n3 = mesh.start_in("n3", mesh.next_dir("n3"), Some(0), &flags("token-of-n3"));
    mesh.nodes[n3].cli_args = vec!["--token".into(), "token-of-n3".into()];
    assert!(mesh.wait_ready(n3, T));
    let listed = |mesh: &Mesh| {
        mesh.cli_json::<Jobs>(n3, &["jobs"]).is_ok_and(|j| j.jobs.iter().any(|j| j.node == "n2" && j.path == job))
    };
    assert!(wait_until(T, || listed(&mesh)), "{:?}", mesh.cli_json::<Jobs>(n3, &["jobs"]));
    for act in ["pause", "resume"] {
        let out = mesh.cli(0, &[act, "n2"]);
        assert!(out.status.success(), "{act}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
