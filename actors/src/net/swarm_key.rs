//! The private-network key (`--swarm-key FILE`): libp2p's pre-shared key
//! file format (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits), the
//! same as go-libp2p and IPFS use. A node without the same key cannot
//! complete a connection handshake.

use std::io::Read;
use std::path::{Path, PathBuf};

pub use libp2p::pnet::PreSharedKey;

#[derive(Debug, thiserror::Error)]
pub enum SwarmKeyError {
    #[error("cannot read the swarm key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the swarm key {path} is malformed ({reason}); make one with `backmesh-node keygen`")]
    Malformed { path: PathBuf, reason: String },
    #[error("cannot write the swarm key {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn load(path: &Path) -> Result<PreSharedKey, SwarmKeyError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| SwarmKeyError::Read { path: path.to_path_buf(), source: e })?;
    text.parse::<PreSharedKey>()
        .map_err(|e| SwarmKeyError::Malformed { path: path.to_path_buf(), reason: format!("{e:?}") })
}

/// A new random key, in the file format.
pub fn generate() -> Result<PreSharedKey, std::io::Error> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(PreSharedKey::new(bytes))
}

/// Writes a new key to `path` (mode 0600), refusing to replace one.
pub fn create(path: &Path) -> Result<PreSharedKey, SwarmKeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let w = |e| SwarmKeyError::Write { path: path.to_path_buf(), source: e };
    let key = generate().map_err(w)?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(w)?;
    f.write_all(key.to_string().as_bytes()).map_err(w)?;
    f.sync_all().map_err(w)?;
    Ok(key)
}

impl crate::error::Transient for SwarmKeyError {
    fn retry(&self) -> crate::error::Retry {
        // A key file that cannot be read or is malformed stays so until the
        // operator mends it.
        crate::error::Retry::Never
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_and_refuse_garbage() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("swarm.key");
        let k = create(&p).unwrap();
        assert_eq!(load(&p).unwrap().fingerprint().to_string(), k.fingerprint().to_string());
        assert!(create(&p).is_err(), "never overwrites a key");
        std::fs::write(&p, "/key/swarm/psk/1.0.0/\n/base16/\nnot-hex\n").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("malformed"));
        assert!(load(&t.path().join("missing")).unwrap_err().to_string().contains("cannot read"));
    }
}
