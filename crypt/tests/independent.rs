//! The sealed object format against an independent implementation of the
//! documented construction (crypt/tests/golden.py: Python's
//! `cryptography`, installed with the S3 test server the suite needs), and
//! wrapped keys against the age tool.

use backmesh_crypt::{seal_object, DataKey, Kind};

#[test]
fn python_s_cryptography_seals_the_same_bytes() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden.py");
    let out = std::process::Command::new("python3").arg(&script).output().expect("python3");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed (is python3's `cryptography` installed? .ci/run installs it with moto): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = said.lines();
    let (id, object) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
    let key = DataKey::from_secret([0x42; 32]);
    assert_eq!(key.id(), id);
    assert_eq!(hex::encode(seal_object(&key, Kind::Member, b"ctx", b"backmesh")), object);
}

/// A wrapped data key is a standard age file: the age tool (Debian's
/// `age`, which scripts/test installs) opens ours with the recovery
/// identity, and ours opens what the age tool wraps.
#[test]
fn the_age_tool_opens_our_bundles_and_we_open_its_files() {
    use backmesh_crypt::wrap::{unwrap, wrap, Bundle, Identity};
    let dir = tempfile::tempdir().unwrap();
    let recovery = Identity::of_operator(&[5; 32]);
    let node = Identity::of_node(&[6; 32]);
    let ids = dir.path().join("recovery.txt");
    std::fs::write(&ids, format!("{}\n", recovery.secret_text())).unwrap();
    let key = DataKey::from_secret([0x42; 32]);
    let bundle = Bundle { node: "n1".into(), peer: "12D3KooWn1".into(), created_ms: 7, key };
    let wrapped = dir.path().join("n1.age");
    std::fs::write(&wrapped, wrap(&bundle, &[node.recipient(), recovery.recipient()]).unwrap()).unwrap();
    let out = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&ids)
        .arg(&wrapped)
        .output()
        .expect("the age tool (Debian package `age`; scripts/test installs it)");
    assert!(out.status.success(), "age -d: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("backmesh data key bundle v1\nnode: n1\n"), "{text}");
    assert!(text.contains(&format!("id: {}\n", DataKey::from_secret([0x42; 32]).id())), "{text}");

    // The other way: the age tool wraps a payload to the node's recipient.
    let plain = dir.path().join("payload");
    std::fs::write(&plain, &text).unwrap();
    let theirs = dir.path().join("theirs.age");
    let status = std::process::Command::new("age")
        .args(["-r", &node.recipient(), "-o"])
        .arg(&theirs)
        .arg(&plain)
        .status()
        .unwrap();
    assert!(status.success());
    let opened = unwrap(&std::fs::read(&theirs).unwrap(), &node).unwrap();
    assert_eq!((opened.node.as_str(), opened.key.id()), ("n1", DataKey::from_secret([0x42; 32]).id()));
    assert!(unwrap(&std::fs::read(&theirs).unwrap(), &recovery).is_err(), "not wrapped to the operator");
}
