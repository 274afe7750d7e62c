//! Encrypted series on real meshes (docs/encryption.md): what holders keep
//! is ciphertext only, which they verify and repair with no key; the
//! series' own node restores it exactly.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use backmesh_api::cli::{RunOutcome, VerifyOutcome};
use backmesh_api::{Archive, Backups, RunResult};
use backmesh_simulations::{binary, tree_differences, wait_until, Mesh};

const LONG: Duration = Duration::from_secs(60);

/// `backmesh fetch` on node `i` (signed with the operator key, or with the
/// node's token alone), extracted by GNU tar: the tree, or what was said.
fn fetched(
    mesh: &Mesh,
    i: usize,
    operator: bool,
    node: &str,
    path: &str,
    name: &str,
) -> Result<std::path::PathBuf, String> {
    let tgz = mesh.root.path().join(format!("{name}.tgz"));
    let args = ["fetch", node, path, "-o", &tgz.to_string_lossy()];
    let out = if operator { mesh.cli(i, &args) } else { mesh.cli_as_node(i, &args) };
    if !out.status.success() {
        return Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    }
    let dir = mesh.root.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let tar = Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(&dir).status().unwrap();
    assert!(tar.success(), "GNU tar reads {}", tgz.display());
    Ok(dir)
}
const MARKER: &str = "MARKER-c0ffee-only-n1-reads-this";

fn archives(mesh: &Mesh, i: usize, node: &str, path: &str) -> Vec<Archive> {
    mesh.cli_json::<Backups>(i, &["backups", node, path]).map(|b| b.archives).unwrap_or_default()
}

/// Every file under `dir` that holds `needle`, as stored or inflated.
fn holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(bytes) = std::fs::read(&p) else { continue };
            let mut inflated = Vec::new();
            let _ = std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&bytes[..]), &mut inflated);
            if [&bytes, &inflated].iter().any(|h| h.windows(needle.len()).any(|w| w == needle)) {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

#[test]
fn holders_of_an_encrypted_series_keep_ciphertext_only_and_verify_and_repair_it_without_a_key() {
    let mut mesh = Mesh::chain_with(&["n1", "n2", "n3"], &["--replicas", "2", "--encrypt", "on"]);
    let src = mesh.root.path().join("src");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    for i in 0..40 {
        let text = format!("{MARKER} line {i}\n").repeat(200 + i);
        std::fs::write(src.join("docs").join(format!("{MARKER}-{i}.txt")), text).unwrap();
    }
    let s = src.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n1", &s, "--every", "600"]).status.success());
    let three = |mesh: &Mesh, n: usize| {
        wait_until(LONG, || {
            let a = archives(mesh, 0, "n1", &s);
            a.len() == n && a.iter().all(|a| a.holders.len() == 3)
        })
    };
    assert!(three(&mesh, 1), "{:?}\n{}", archives(&mesh, 0, "n1", &s), mesh.nodes[0].log_text());

    // The holders' disks hold neither the content nor a file name.
    for i in [1, 2] {
        let found = holding(&mesh.nodes[i].dir, MARKER.as_bytes());
        assert!(found.is_empty(), "{} keeps plaintext: {found:?}", mesh.nodes[i].name);
    }
    // The origin restores it exactly (its own data key).
    let to = mesh.root.path().join("back1");
    let out = mesh.cli(0, &["restore", "n1", &s, "--to", &to.to_string_lossy()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree_differences(&src, &to), Vec::<String>::new());

    // A byte flipped in every object n3 keeps: verify, with no key
    // anywhere but on n1, finds and repairs them from n2.
    let mut flipped = 0;
    for d in std::fs::read_dir(mesh.nodes[2].dir.join("segments")).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            let mut data = std::fs::read(f.path()).unwrap();
            let i = data.len() / 2;
            data[i] ^= 0x01;
            std::fs::write(f.path(), data).unwrap();
            flipped += 1;
        }
    }
    assert!(flipped > 2);
    let out = mesh.cli(2, &["verify", "n1", &s]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("repaired from another holder"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let v: VerifyOutcome = mesh.cli_json(2, &["verify", "n1", &s]).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.ok && v.verified.len() == 3, "{v:#?}");

    // A changed file: a new archive, ciphertext again on the holders, and
    // the origin restores the new tree exactly.
    std::fs::write(src.join("docs").join(format!("{MARKER}-7.txt")), format!("{MARKER} changed\n").repeat(300))
        .unwrap();
    let run: RunOutcome = mesh.cli_json(0, &["run", "n1", &s]).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(run.result, RunResult::Finished), "{run:#?}");
    assert!(three(&mesh, 2), "{:?}", archives(&mesh, 0, "n1", &s));
    for i in [1, 2] {
        assert!(holding(&mesh.nodes[i].dir, MARKER.as_bytes()).is_empty());
    }
    let to = mesh.root.path().join("back2");
    let out = mesh.cli(0, &["restore", "n1", &s, "--to", &to.to_string_lossy()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree_differences(&src, &to), Vec::<String>::new());

    // Fetched through the origin with its own token: opened there, a plain
    // `.tgz`. Through a holder: the holder sends ciphertext, and only the
    // operator's CLI opens it.
    let own = fetched(&mesh, 0, false, "n1", &s, "own").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tree_differences(&src, &own), Vec::<String>::new());
    let through = fetched(&mesh, 2, true, "n1", &s, "through-n3").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tree_differences(&src, &through), Vec::<String>::new());

    // n1 is lost: the operator restores its series onto n2, whose CLI
    // unwraps the data key with the operator's recovery key and wraps it
    // to n2 for this restore alone.
    mesh.kill9(0);
    // Asked through n3, the command would have n3 say which key is n2's:
    // refused, naming the node to ask.
    let relayed =
        mesh.cli(2, &["restore", "n1", &s, "--on", "n2", "--to", &mesh.root.path().join("x").to_string_lossy()]);
    let said = String::from_utf8_lossy(&relayed.stderr).into_owned();
    assert!(!relayed.status.success() && said.contains("ask node n2 itself"), "{said}");
    let to = mesh.root.path().join("back3");
    let out = mesh.cli(1, &["restore", "n1", &s, "--on", "n2", "--to", &to.to_string_lossy()]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), mesh.nodes[1].log_text());
    assert_eq!(tree_differences(&src, &to), Vec::<String>::new());
    assert!(holding(&mesh.nodes[1].dir, MARKER.as_bytes()).is_empty(), "n2 kept nothing of it but ciphertext");

    // Root on n2, its node stopped, cannot export n1's series: no key.
    mesh.stop(1);
    let out = Command::new(binary("backmesh-node"))
        .arg("--data-dir")
        .arg(&mesh.nodes[1].dir)
        .args(["--name", "n2", "export", "--from-node", "n1", &s, "-o"])
        .arg(mesh.root.path().join("stolen.tgz"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && said.contains("is encrypted"), "{said}");
    assert!(!mesh.root.path().join("stolen.tgz").exists());
}

#[test]
fn a_brand_new_node_given_only_the_operator_key_restores_an_encrypted_series_from_the_bucket() {
    use super::offsite::{offsite_args, offsite_state, three_with_offsite};
    use backmesh_core::offsite::testing::S3Server;
    let s3 = S3Server::start().unwrap_or_else(|e| panic!("{e}"));
    let bucket = s3.bucket("offsite", "cluster-a");
    let mut extra = offsite_args(&s3);
    extra.extend(["--encrypt".to_string(), "on".to_string()]);
    let mut mesh = three_with_offsite(&extra);
    let src = mesh.root.path().join("src");
    std::fs::create_dir_all(src.join("conf")).unwrap();
    backmesh_simulations::write_slow_tree(&src, 20, 7);
    std::fs::write(src.join("conf").join(format!("{MARKER}.toml")), format!("secret = \"{MARKER}\"\n")).unwrap();
    let s = src.to_string_lossy().into_owned();
    assert!(mesh.cli(0, &["register", "n1", &s, "--every", "600"]).status.success());
    let run: RunOutcome = mesh.cli_json(0, &["run", "n1", &s]).unwrap_or_else(|e| panic!("{e}"));
    assert!(run.archive.is_some(), "{run:#?}");
    let current = || offsite_state(&mesh, 0, "n1", &s).as_deref() == Some("current");
    assert!(wait_until(LONG * 2, current), "{:?}\n{}", offsite_state(&mesh, 0, "n1", &s), mesh.nodes[0].log_text());
    // The bucket holds no plaintext: no object holds the content or a file name.
    let (objects, _) = bucket.list("").unwrap();
    assert!(objects.len() > 3, "{objects:?}");
    for o in &objects {
        let bytes = bucket.get(&o.key).unwrap().unwrap_or_default();
        let mut inflated = Vec::new();
        let _ = std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&bytes[..]), &mut inflated);
        for hay in [&bytes, &inflated] {
            assert!(!hay.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()), "{} holds plaintext", o.key);
        }
    }

    // Every node is gone, data directories and all.
    for i in 0..3 {
        mesh.kill9(i);
        std::fs::remove_dir_all(&mesh.nodes[i].dir).unwrap();
    }
    // A brand-new node with the swarm key and the bucket; the operator has
    // only the operator key file.
    let fresh = mesh.start("n9", None, &extra);
    assert!(mesh.wait_ready(fresh, Duration::from_secs(30)), "{}", mesh.nodes[fresh].log_text());
    let to = mesh.root.path().join("restored");
    let out = mesh.cli(fresh, &["restore", "n1", &s, "--on", "n9", "--to", &to.to_string_lossy()]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}\n{}", mesh.nodes[fresh].log_text());
    assert_eq!(tree_differences(&src, &to), Vec::<String>::new());
    // And `fetch` gives a `.tgz` that GNU tar extracts the same.
    let got = fetched(&mesh, fresh, true, "n1", &s, "fetched").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tree_differences(&src, &got), Vec::<String>::new());
    // The node that restored kept no key: its disk has the ciphertext it
    // read from the bucket, nothing that opens it.
    assert!(holding(&mesh.nodes[fresh].dir, MARKER.as_bytes()).is_empty());
    // Without the operator key (the node's token alone): refused.
    let again = mesh.root.path().join("again");
    let out = mesh.cli_as_node(fresh, &["restore", "n1", &s, "--on", "n9", "--to", &again.to_string_lossy()]);
    assert!(!out.status.success());
    assert!(!again.exists());
}
