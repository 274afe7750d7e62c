//! Helpers for end-to-end tests that run real backmesh processes.
//!
//! Today: locating the built binaries. The multi-node harness (start N
//! nodes on loopback, kill, restart) arrives with the mesh.

use std::path::PathBuf;

/// Path of a binary of this workspace, built by `cargo build` beside the tests.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).map(PathBuf::from).unwrap_or_default();
    dir.join(name)
}
