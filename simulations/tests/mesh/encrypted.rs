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

    // n1 is lost: the operator restores its series onto n2, whose CLI
    // unwraps the data key with the operator's recovery key and wraps it
    // to n2 for this restore alone.
    mesh.kill9(0);
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
