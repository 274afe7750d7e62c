//! Small disks for the full-disk faults: tmpfs mounts in a private mount
//! namespace, and filling them.

use std::path::Path;

/// Whether this process makes mounts of its own, unseen outside: in a
/// mount namespace of its own (as root), or in user and mount namespaces
/// (as anyone, where the kernel allows them). Once per process, before
/// any thread (a user namespace needs a single thread: `backmesh-soak`
/// calls it first); later calls say what the first found.
pub fn private_mounts() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        // SAFETY: plain system calls on this process; no memory is shared.
        unsafe {
            let (uid, gid) = (libc::getuid(), libc::getgid());
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                    return false;
                }
                let _ = std::fs::write("/proc/self/setgroups", "deny");
                let mapped = std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).is_ok()
                    && std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).is_ok();
                if !mapped {
                    return false;
                }
            }
            let root = std::ffi::CString::new("/").unwrap_or_default();
            let flags = libc::MS_REC | libc::MS_PRIVATE;
            libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), flags, std::ptr::null()) == 0
        }
    })
}

/// Mounts a tmpfs of [`DISK`] bytes on `dir` (made if missing).
pub(crate) fn mount_disk(dir: &Path) -> bool {
    let _ = std::fs::create_dir_all(dir);
    let (Ok(target), Ok(fs), Ok(opts)) = (
        std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()),
        std::ffi::CString::new("tmpfs"),
        std::ffi::CString::new(format!("size={DISK},mode=0700")),
    ) else {
        return false;
    };
    // SAFETY: every pointer is a live C string.
    unsafe { libc::mount(fs.as_ptr(), target.as_ptr(), fs.as_ptr(), 0, opts.as_ptr().cast()) == 0 }
}

pub(crate) fn unmount(dir: &Path) {
    if let Ok(target) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) {
        // SAFETY: a live C string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Writes `file` until its disk is full.
pub(crate) fn fill(file: &Path) {
    use std::io::Write;
    let Ok(mut f) = std::fs::File::create(file) else { return };
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..(DISK >> 20) + 8 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // What is left below a MiB.
    let small = [0xa5u8; 4096];
    for _ in 0..256 {
        if f.write_all(&small).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
}

/// The size of each node's disk when it has one of its own.
pub(crate) const DISK: u64 = 96 << 20;
