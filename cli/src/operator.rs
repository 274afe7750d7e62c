//! The operator key on the operator's machine: where it is, making one,
//! and signing a command with it (`backmesh_api::order`).

use std::path::{Path, PathBuf};

use backmesh_api::order::OperatorKey;

/// The default key file: `$XDG_CONFIG_HOME/backmesh/operator.key`, or
/// `~/.config/backmesh/operator.key`.
pub(crate) fn default_path() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("backmesh").join("operator.key"))
}

/// The key file to sign with: the one given, else the default one if it exists.
pub(crate) fn key_file(given: Option<&Path>) -> Option<PathBuf> {
    match given {
        Some(p) => Some(p.to_path_buf()),
        None => default_path().filter(|p| p.exists()),
    }
}

/// The key in `file`, refused if others may read it (as ssh does).
pub(crate) fn load(file: &Path) -> Result<OperatorKey, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read the operator key {}: {e}", file.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "the operator key {} may be read by others (mode {:o}): `chmod 600 {}` first",
            file.display(),
            meta.permissions().mode() & 0o777,
            file.display()
        ));
    }
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("cannot read the operator key {}: {e}", file.display()))?;
    if crate::sealed::is_sealed(&text) {
        let passphrase = crate::sealed::passphrase(&format!("passphrase of {}: ", file.display()), false)?;
        return crate::sealed::open(&text, &passphrase).map_err(|e| format!("{}: {e}", file.display()));
    }
    OperatorKey::from_file_text(&text).map_err(|e| format!("{}: {e}", file.display()))
}

/// `backmesh operator init`: a new key written to `out` (0600, in a
/// directory made 0700 if new); never over an existing file. Answers the
/// file and the key.
pub(crate) fn init(out: &Path, under_passphrase: bool) -> Result<(PathBuf, OperatorKey), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", out.display());
    if out.exists() {
        return Err(format!(
            "{} exists already: an operator key is never replaced (nodes trust its public half). Use \
             `backmesh operator show` to print it, or give another --out",
            out.display()
        ));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail("create the directory of", e))?;
    }
    let key = OperatorKey::generate()?;
    let text = if under_passphrase {
        let passphrase = crate::sealed::passphrase("passphrase for the new operator key: ", true)?;
        format!(
            "backmesh operator secret key v1\n# Keep this file on the operator's machine only, never on a node.\n\
             # Give nodes the public half: operator-key = \"{}\"\n{}",
            key.public(),
            crate::sealed::seal(&key, &passphrase)?
        )
    } else {
        key.file_text()
    };
    // Written whole to a staging file, synced, then linked in place, so a
    // crash leaves either no key or the whole key, never half of one.
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = dir.join(format!(".operator-key-{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&staging)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        // hard_link refuses to replace a file that appeared meanwhile.
        std::fs::hard_link(&staging, out)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    let _ = std::fs::remove_file(&staging);
    written.map_err(|e| fail("write the operator key", e))?;
    Ok((out.to_path_buf(), key))
}
