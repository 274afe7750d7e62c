//! The disk's free space, as every area reads it.

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

#[cfg(test)]
mod tests {
    #[test]
    fn a_real_directory_has_room_and_a_missing_one_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(super::free_bytes(dir.path()) > 0);
        assert_eq!(super::free_bytes(&dir.path().join("absent")), 0);
    }
}
