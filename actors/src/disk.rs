//! The disk as every area reads and writes it: free space, crash-safe
//! writes of small files.

/// Free bytes for unprivileged writers on the filesystem of `dir` (0 when
/// it cannot be read: a decision then errs on the side of no room).
pub fn free_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return 0 };
    // SAFETY: `c` is a valid C string; `st` is written by statvfs before use.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return 0;
        }
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

/// Writes `data` to `path` crash-safely: a temp file (0600) beside it,
/// fsync, rename, fsync of the directory.
pub fn write_atomic(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    std::io::Write::write_all(&mut tmp, data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_real_directory_has_room_and_a_missing_one_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(super::free_bytes(dir.path()) > 0);
        assert_eq!(super::free_bytes(&dir.path().join("absent")), 0);
    }
}
