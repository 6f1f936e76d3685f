//! The system calls std lacks, through libc: the open-file limit (`RLIMIT_NOFILE`: read it,
//! raise the soft limit to the hard one), the effective user id, glibc's heap trim
//! threshold ([`keep_freed_heap`]), ignoring SIGPIPE again after a failed `execve`
//! ([`ignore_sigpipe`]), and glibc's version ([`glibc_version`]).
//!
//! Why the limit: systemd and most shells start a process with a soft limit of 1024
//! descriptors, far below what the edge needs (one per connection) and below the hard limit the
//! process may raise it to. An edge stuck at 1024 can be filled by a few addresses' idle
//! connections (SECURITY.md, "Internet → edge"). Why the user id: the edge refuses a state
//! directory that another user owns (`store::StateDir::open`).
//!
//! This is the only module of postern with `unsafe` code (vendor-policy.md, "`unsafe`"). The
//! calls here are the whole of it: `getrlimit` and `setrlimit` each get a pointer to a live,
//! initialised, properly aligned `libc::rlimit` on our own stack, which the kernel reads or
//! writes once before the call returns (no pointer is kept); `geteuid` takes nothing and cannot
//! fail; `mallopt` takes two integers; `signal` sets SIGPIPE's disposition to `SIG_IGN`;
//! `gnu_get_libc_version` takes nothing and returns glibc's own static string.
//! `src/io/mod.rs`'s test `unsafe_code_lives_only_in_sys` fails if `unsafe` appears in any
//! other source file.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::io;

/// The soft and hard limits on open files of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// What is enforced now: `open`, `socket` and `accept` fail with EMFILE at this many.
    pub soft: u64,
    /// How far the process may raise `soft` without privileges.
    pub hard: u64,
}

/// The current open-file limits.
pub fn open_files() -> io::Result<OpenFiles> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a live, initialised `rlimit` owned by this frame; getrlimit writes one
    // `rlimit` through the pointer and keeps no reference to it.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // `rlim_t` is u64 on 64-bit targets and narrower on some 32-bit ones.
    #[allow(clippy::useless_conversion)]
    Ok(OpenFiles {
        soft: u64::from(r.rlim_cur),
        hard: u64::from(r.rlim_max),
    })
}

/// Raises the soft open-file limit to the hard limit (never lowers anything) and returns the
/// limits in force afterwards. The hard limit stays: only root could raise it.
pub fn raise_open_files() -> io::Result<OpenFiles> {
    let now = open_files()?;
    if now.soft >= now.hard {
        return Ok(now);
    }
    let r = libc::rlimit {
        rlim_cur: now.hard as libc::rlim_t,
        rlim_max: now.hard as libc::rlim_t,
    };
    // SAFETY: `r` is a live, initialised `rlimit` owned by this frame; setrlimit reads it once
    // and keeps no reference to it.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    open_files()
}

/// [`raise_open_files`] for a long-running role (`edge`, `tunnel`): logs what it did and
/// returns the soft limit in force, if it could be read.
pub fn raise_open_files_logged(role: &str) -> Option<u64> {
    let before = open_files().ok();
    match raise_open_files() {
        Ok(now) => {
            if let Some(b) = before.filter(|b| b.soft < now.soft) {
                log::debug!(
                    "{role}: open-file limit raised from {} to {} (the hard limit)",
                    b.soft,
                    now.soft
                );
            }
            Some(now.soft)
        }
        Err(e) => {
            log::warn!(
                "{role}: cannot raise the open-file limit to the hard limit ({e}); \
                 staying at {}",
                before.map_or("an unknown value".to_owned(), |b| b.soft.to_string())
            );
            before.map(|b| b.soft)
        }
    }
}

/// The effective user id of this process (whose files it creates, whose it may read).
pub fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}

/// Ignores SIGPIPE, as Rust's runtime does before `main`, so that a write to a closed pipe or
/// socket is an `EPIPE` error and not the end of the process. std's `Command::exec` sets
/// SIGPIPE back to its default just before the `execve` and leaves it so when the `execve`
/// fails; [`super::reexec::tune_memcpy`] calls this then.
pub fn ignore_sigpipe() {
    // SAFETY: signal takes two integers (SIG_IGN is a constant, not a handler of ours) and
    // changes one disposition of this process; it reads and writes no memory of ours.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// The version of the glibc this process runs on (`(2, 36)`), or `None` under another C library
/// or when glibc's answer does not parse. Read by [`super::reexec::tune_memcpy`]: glibc 2.40
/// no longer copies with `rep movsb` on AMD by itself.
pub fn glibc_version() -> Option<(u32, u32)> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: gnu_get_libc_version takes nothing and returns a pointer to a NUL-terminated
        // string in glibc's read-only data, valid for the life of the process; it is only read,
        // here, once.
        let text = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
        parse_glibc_version(&text.to_string_lossy())
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// `"2.36"` or `"2.39.9000"` → `(2, 36)`, `(2, 39)`.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn parse_glibc_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// How much freed memory at the top of glibc's heap it keeps instead of giving back
/// ([`keep_freed_heap`]).
pub const HEAP_TRIM_THRESHOLD: usize = 4 << 20;

/// Tells glibc's allocator to keep up to [`HEAP_TRIM_THRESHOLD`] of freed memory at the top
/// of its heap. rustls allocates each TLS record it encrypts and frees it once written; a
/// 128 KiB batch of records freed at the top of the heap is more than glibc's default trim
/// threshold (128 KiB), so every batch cost a `brk` to give the pages back and page faults to
/// take them again: 3 600 `brk` calls per 512 MiB through the edge, with the faults on top.
/// Setting it ends glibc's own raising of the mmap threshold (128 KiB), which would leave
/// every stream and connection buffer of 128 KiB or more to an `mmap` and `munmap` of its
/// own: the threshold is set too, to [`HEAP_MMAP_THRESHOLD`].
/// Call it first thing in `main`, before any thread starts. Other C libraries (musl) keep
/// their own policy: nothing is done there.
pub fn keep_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and changes a parameter of the allocator; it reads
    // and writes no memory of ours. Called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD as libc::c_int);
    }
}

/// Allocations from this size on get their own mapping ([`keep_freed_heap`]).
pub const HEAP_MMAP_THRESHOLD: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn glibc_s_version_parses_and_is_the_running_one() {
        assert_eq!(parse_glibc_version("2.36"), Some((2, 36)));
        assert_eq!(parse_glibc_version("2.39.9000"), Some((2, 39)));
        assert_eq!(parse_glibc_version("2"), None);
        assert_eq!(parse_glibc_version("two.36"), None);
        assert_eq!(parse_glibc_version(""), None);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            // What `ldd --version` says of the same library: "ldd (Debian GLIBC 2.36-9) 2.36".
            let ldd = std::process::Command::new("ldd").arg("--version").output();
            if let Ok(out) = ldd {
                let first = String::from_utf8_lossy(&out.stdout);
                let first = first.lines().next().unwrap_or("");
                let last = first.rsplit(' ').next().unwrap_or("");
                assert_eq!(glibc_version(), parse_glibc_version(last), "{first}");
            }
            assert!(glibc_version().is_some_and(|v| v >= (2, 17)));
        }
    }

    #[test]
    fn limits_read_and_raising_is_idempotent() {
        let before = open_files().unwrap();
        assert!(before.soft <= before.hard);
        let after = raise_open_files().unwrap();
        assert_eq!(after.soft, before.hard);
        assert_eq!(after.hard, before.hard);
        assert_eq!(raise_open_files().unwrap(), after);
    }

    #[test]
    fn euid_owns_what_we_create() {
        let dir = std::env::temp_dir().join(format!("postern-euid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let owner = std::fs::metadata(&dir).unwrap().uid();
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(euid(), owner);
    }
}
