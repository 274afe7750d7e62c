//! The sealed object format against an independent implementation of the
//! documented construction (crypt/tests/golden.py: Python's
//! `cryptography`, installed with the S3 test server the suite needs).

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
