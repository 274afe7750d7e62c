//! A node's data key on disk (`DATA_DIR/data.key`): made once, mode
//! 0600, never replaced; read back only if no other user can read it.
//!
//! ```text
//! backmesh data key v1
//! id: 16 HEX DIGITS
//! secret: 64 HEX DIGITS
//! ```

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::DataKey;

const FIRST_LINE: &str = "backmesh data key v1";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the data key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the data key {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the data key {path} is readable by other users (mode {mode:o}): `chmod 600 {path}`")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("the data key {path} is malformed ({reason})")]
    Malformed { path: PathBuf, reason: String },
}

/// The file's text for `key`.
fn text_of(key: &DataKey) -> String {
    format!("{FIRST_LINE}\nid: {}\nsecret: {}\n", key.id(), hex::encode(key.secret()))
}

/// Makes a new key in `path`, refusing to replace a file that is there:
/// written whole to a staging file (0600) and synced, then linked into
/// place (which fails if `path` exists), so a crash leaves either no key
/// or a whole one, never a partial one.
pub fn create(path: &Path) -> Result<DataKey, KeyFileError> {
    let w = |e| KeyFileError::Write { path: path.to_path_buf(), source: e };
    if path.exists() {
        return Err(w(std::io::ErrorKind::AlreadyExists.into()));
    }
    let key = DataKey::generate().map_err(|e| w(std::io::Error::other(e.to_string())))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = dir.join(format!(".data.key.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&staging)?;
        f.write_all(text_of(&key).as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&staging, path)
    })();
    let _ = std::fs::remove_file(&staging);
    written.map_err(w)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(w)?;
    Ok(key)
}

/// Reads the key in `path`: refused if other users may read it, or if
/// its id is not its secret's.
pub fn load(path: &Path) -> Result<DataKey, KeyFileError> {
    let r = |e| KeyFileError::Read { path: path.to_path_buf(), source: e };
    let mode = std::fs::metadata(path).map_err(r)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Exposed { path: path.to_path_buf(), mode });
    }
    let text = std::fs::read_to_string(path).map_err(r)?;
    let bad = |reason: &str| KeyFileError::Malformed { path: path.to_path_buf(), reason: reason.into() };
    let mut lines = text.lines();
    if lines.next() != Some(FIRST_LINE) {
        return Err(bad("its first line is not `backmesh data key v1`"));
    }
    let (mut id, mut secret) = (None, None);
    for line in lines.filter(|l| !l.trim().is_empty()) {
        match line.split_once(": ") {
            Some(("id", v)) => id = Some(v.trim().to_string()),
            Some(("secret", v)) => {
                let mut s = [0u8; 32];
                hex::decode_to_slice(v.trim(), &mut s).map_err(|_| bad("the secret is not 64 hex digits"))?;
                secret = Some(s);
            }
            _ => return Err(bad("a line that is neither `id:` nor `secret:`")),
        }
    }
    let key = DataKey::from_secret(secret.ok_or_else(|| bad("no secret"))?);
    if id.as_deref() != Some(key.id().as_str()) {
        return Err(bad("its id is not its secret's (a line was changed)"));
    }
    Ok(key)
}

/// The key in `path`, made there first if there is none.
pub fn load_or_create(path: &Path) -> Result<DataKey, KeyFileError> {
    match create(path) {
        Ok(key) => Ok(key),
        Err(KeyFileError::Write { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => load(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_read_back_and_refused_when_exposed_or_changed() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("data.key");
        let made = load_or_create(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create(&p).unwrap().id(), made.id(), "never replaced");
        assert!(create(&p).is_err());
        // What it seals, the key read back opens.
        let o = crate::seal_object(&made, crate::Kind::Head, b"", b"x");
        assert_eq!(crate::open_object(&load(&p).unwrap(), b"", &o).unwrap().1, b"x");
        // Readable by others: refused, saying how to mend it.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A changed secret no longer matches its id.
        let text = std::fs::read_to_string(&p).unwrap();
        let last = text.trim_end().chars().last().unwrap();
        let flipped = if last == '0' { '1' } else { '0' };
        std::fs::write(&p, format!("{}{flipped}\n", &text.trim_end()[..text.trim_end().len() - 1])).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("not its secret's"));
        std::fs::write(&p, "something else\n").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("first line"));
    }
}
