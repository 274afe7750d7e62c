//! Offsite copies on a real S3-compatible server (moto's), with real nodes.

use std::time::Duration;

use backmesh_actors::offsite::sync::Offsite;
use backmesh_actors::offsite::testing::S3Server;
use backmesh_api::cli::RunOutcome;
use backmesh_api::Status;
use backmesh_simulations::{tree_differences, wait_until, write_slow_tree, Mesh};

const LONG: Duration = Duration::from_secs(90);

fn offsite_args(s3: &S3Server) -> Vec<String> {
    ["--offsite", "s3://offsite/cluster-a", "--offsite-endpoint", &s3.endpoint, "--replicas", "2"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The series' offsite state as node `i` tells it, if it uploads it.
fn offsite_state(mesh: &Mesh, i: usize, node: &str, path: &str) -> Option<String> {
    let s: Status = mesh.cli_json(i, &["status"]).ok()?;
    s.offsite?.series.into_iter().find(|x| x.node == node && x.path == path).map(|x| x.state)
}

#[test]
fn a_brand_new_node_restores_from_the_bucket_after_the_whole_mesh_is_gone() {
    let s3 = S3Server::start().unwrap_or_else(|e| panic!("{e}"));
    let bucket = s3.bucket("offsite", "cluster-a");
    let mut mesh = Mesh::new();
    mesh.env = vec![("AWS_ACCESS_KEY_ID".into(), "testing".into()), ("AWS_SECRET_ACCESS_KEY".into(), "testing".into())];
    let extra = offsite_args(&s3);
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        let n = mesh.start(name, i.checked_sub(1), &extra);
        assert!(mesh.wait_ready(n, Duration::from_secs(30)), "{}", mesh.nodes[n].log_text());
    }
    assert!(wait_until(LONG, || (0..3).all(|i| mesh.up_names(i).len() == 3)));
    let src = mesh.root.path().join("src");
    std::fs::create_dir_all(src.join("conf")).unwrap();
    write_slow_tree(&src, 40, 7);
    std::fs::write(src.join("conf/app.toml"), b"port = 80\n").unwrap();
    std::os::unix::fs::symlink("conf/app.toml", src.join("current")).unwrap();
    let s = src.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n1", &s, "--every", "600"]).status.success());
    let mut ids = Vec::new();
    for round in 0..2 {
        std::fs::write(src.join("round"), format!("{round}")).unwrap();
        let o: RunOutcome = mesh.cli_json(0, &["run", "n1", &s]).unwrap_or_else(|e| panic!("{e}"));
        ids.push(o.archive.clone().unwrap_or_else(|| panic!("no archive: {o:?}")));
    }
    // The origin uploads its series; `status` says when it is current.
    let watcher = Offsite::new(bucket, "test".into());
    assert!(
        wait_until(LONG, || offsite_state(&mesh, 0, "n1", &s).as_deref() == Some("current")),
        "{:?}\n{}",
        offsite_state(&mesh, 0, "n1", &s),
        mesh.nodes[0].log_text()
    );
    let listed: Vec<String> = watcher.archives("n1", &s).unwrap().0.into_iter().map(|l| l.id).collect();
    let mut want = ids.clone();
    want.reverse();
    assert_eq!(listed, want, "both archives, newest first");
    // Only the origin uploaded: the holders see it present and leave it.
    for i in 1..3 {
        assert_eq!(offsite_state(&mesh, i, "n1", &s), None, "node {i} uploads nothing of n1");
    }

    // Every node is gone, data directories and all.
    for i in 0..3 {
        mesh.kill9(i);
        std::fs::remove_dir_all(&mesh.nodes[i].dir).unwrap();
    }
    // A brand-new node with the same swarm key and bucket restores the tree.
    let fresh = mesh.start("n9", None, &extra);
    assert!(mesh.wait_ready(fresh, Duration::from_secs(30)), "{}", mesh.nodes[fresh].log_text());
    let to = mesh.root.path().join("restored");
    let t = to.to_string_lossy().into_owned();
    let out = mesh.cli(fresh, &["restore", "n1", &s, "--on", "n9", "--to", &t]);
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        mesh.nodes[fresh].log_text()
    );
    assert_eq!(tree_differences(&src, &to), Vec::<String>::new());
}
