//! One browser login per application at a time, shared by parallel ProxyCommands (git,
//! ansible, ssh ControlMaster all start several `postern access ssh` at once).
//!
//! ```text
//!  create <H>.lock (atomic, holds "PID NONCE") ──ok──▶ Lock(guard): log in, cache, drop
//!        │ exists
//!        ▼
//!  holder dead (no /proc/PID) or lock older than STALE_AFTER ──▶ remove it, try again
//!        │ alive
//!        ▼
//!  wait (poll) ──▶ a usable token appeared in the cache ──▶ Token(t)
//!              ──▶ the lock vanished without a token   ──▶ try again (we log in)
//!              ──▶ DEADLINE passed                      ──▶ error naming the holder's pid
//! ```
//!
//! The lock only saves browser windows; it is not what keeps tokens correct (the edge
//! checks every token, and the cache is replaced atomically). So the rare race where two
//! waiters break the same stale lock at once costs at most a second login, never a wrong
//! token.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::token_cache::{CacheError, TokenCache};
use crate::proto::token_transfer::TRANSFER_TTL;
use crate::secret::Secret;

/// Timing of [`acquire`]; [`LockTiming::default`] is what the CLI uses.
#[derive(Clone, Copy, Debug)]
pub struct LockTiming {
    /// How often a waiter looks at the lock and the cache.
    pub poll: Duration,
    /// How long a waiter waits in total before giving up.
    pub deadline: Duration,
    /// A lock file older than this is stale whatever its pid says (the login it guards
    /// cannot last longer than a transfer).
    pub stale_after: Duration,
}

impl Default for LockTiming {
    fn default() -> Self {
        LockTiming {
            poll: Duration::from_millis(250),
            deadline: TRANSFER_TTL + Duration::from_secs(30),
            stale_after: TRANSFER_TTL + Duration::from_secs(60),
        }
    }
}

/// Why no lock was taken.
#[derive(Debug)]
#[non_exhaustive]
pub enum LockError {
    /// Another process held the lock past the deadline.
    Timeout {
        hostname: String,
        pid: Option<u32>,
        path: PathBuf,
    },
    /// The lock file could not be created or read (a read-only home, a bad hostname).
    Cache(CacheError),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Timeout {
                hostname,
                pid,
                path,
            } => {
                let who = pid.map_or_else(|| "another process".to_owned(), |p| format!("pid {p}"));
                write!(
                    f,
                    "gave up waiting for the login to {hostname} that {who} started; \
                     if no login is running, remove {}",
                    path.display()
                )
            }
            LockError::Cache(e) => write!(f, "login lock: {e}"),
        }
    }
}

impl std::error::Error for LockError {}

impl From<CacheError> for LockError {
    fn from(e: CacheError) -> Self {
        LockError::Cache(e)
    }
}

/// What [`acquire`] got.
pub enum Acquired {
    /// The lock is ours: log in, cache the token, then drop the guard.
    Lock(LockGuard),
    /// Another process logged in meanwhile and cached this token.
    Token(Secret),
}

/// Holds `<H>.lock`; dropping it removes the file if it still holds what we wrote.
pub struct LockGuard {
    path: PathBuf,
    content: String,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // A waiter may have judged us stale and replaced the file: leave theirs alone.
        if fs::read_to_string(&self.path).is_ok_and(|c| c == self.content) {
            if let Err(e) = fs::remove_file(&self.path) {
                warn!("could not remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Takes the login lock for `hostname`, or waits for the process holding it and returns the
/// token it cached. A cached token equal to `ignore` (the one the edge just refused, or the
/// one an explicit `access login` replaces) does not count as a new one.
pub fn acquire(
    cache: &TokenCache,
    hostname: &str,
    timing: &LockTiming,
    ignore: Option<&Secret>,
) -> Result<Acquired, LockError> {
    let path = cache.path(hostname, ".lock")?;
    cache.ensure_dir()?;
    let start = Instant::now();
    let mut announced = false;
    let mut waited = false;
    loop {
        if waited {
            let usable = cache
                .load(hostname)
                .filter(|t| ignore.is_none_or(|i| i.expose() != t.expose()));
            if let Some(token) = usable {
                return Ok(Acquired::Token(token));
            }
        }
        if let Some(guard) = try_create(cache, hostname, &path)? {
            return Ok(Acquired::Lock(guard));
        }
        // Someone holds it (or held it a moment ago).
        let holder = read_holder(&path);
        if let Some(h) = &holder {
            if h.stale(timing.stale_after) {
                debug!(
                    "breaking the stale login lock {} (pid {:?})",
                    path.display(),
                    h.pid
                );
                // Remove only what we judged stale; a new holder's file differs.
                if fs::read_to_string(&path).is_ok_and(|c| c == h.content) {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            if !announced {
                announced = true;
                eprintln!(
                    "Another postern (pid {}) is logging in to {hostname}; waiting for it to finish.",
                    h.pid.map_or_else(|| "?".to_owned(), |p| p.to_string())
                );
            }
        }
        if start.elapsed() >= timing.deadline {
            return Err(LockError::Timeout {
                hostname: hostname.to_owned(),
                pid: holder.and_then(|h| h.pid),
                path,
            });
        }
        std::thread::sleep(timing.poll);
        waited = true;
    }
}

/// Creates the lock file with our pid in it, atomically: the content is written to a temp
/// file first and hard-linked into place, so nobody ever sees an empty lock. `None` when the
/// lock exists.
fn try_create(
    cache: &TokenCache,
    hostname: &str,
    path: &Path,
) -> Result<Option<LockGuard>, LockError> {
    let nonce = crate::proto::base64::encode_url(&crate::io::random_bytes::<9>());
    let content = format!("{} {nonce}\n", std::process::id());
    let tmp = cache.dir().join(format!(".{hostname}.lock.{nonce}.tmp"));
    let io_err = |error| {
        LockError::Cache(CacheError::Io {
            path: path.to_owned(),
            error,
        })
    };
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(content.as_bytes()));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(Some(LockGuard {
            path: path.to_owned(),
            content,
        })),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(io_err(e)),
    }
}

/// Who holds a lock file, as far as the file tells.
struct Holder {
    content: String,
    pid: Option<u32>,
    age: Duration,
}

impl Holder {
    fn stale(&self, stale_after: Duration) -> bool {
        self.age >= stale_after || self.pid.is_some_and(|p| !process_alive(p))
    }
}

/// `None` when the lock file is gone.
fn read_holder(path: &Path) -> Option<Holder> {
    let content = fs::read_to_string(path).ok()?;
    let age = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default();
    let pid = content
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok());
    Some(Holder { content, pid, age })
}

/// Whether process `pid` exists. Without `/proc` (macOS) every holder counts as alive and
/// only the age rule breaks a lock.
fn process_alive(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::token_cache::tests::{jwt, TempDir};
    use crate::io::unix_now;

    fn fast() -> LockTiming {
        LockTiming {
            poll: Duration::from_millis(10),
            deadline: Duration::from_secs(10),
            stale_after: Duration::from_secs(600),
        }
    }

    fn lock_path(cache: &TokenCache) -> PathBuf {
        cache.dir().join("ssh.localhost.lock")
    }

    fn token() -> Secret {
        Secret::from(jwt(&format!(r#"{{"exp":{}}}"#, unix_now() + 3600)))
    }

    #[test]
    fn the_guard_holds_our_pid_and_releases_on_drop() {
        let tmp = TempDir::new("lock-guard");
        let cache = TokenCache::new(tmp.0.join("tokens"));
        let Acquired::Lock(guard) = acquire(&cache, "ssh.localhost", &fast(), None).unwrap() else {
            panic!("an empty cache must hand out the lock");
        };
        let text = fs::read_to_string(lock_path(&cache)).unwrap();
        assert_eq!(
            text.split_whitespace().next(),
            Some(std::process::id().to_string().as_str())
        );
        drop(guard);
        assert!(!lock_path(&cache).exists());
        // No temp files left behind.
        assert_eq!(fs::read_dir(cache.dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_stale_lock_with_a_dead_pid_is_broken() {
        let tmp = TempDir::new("lock-stale");
        let cache = TokenCache::new(tmp.0.join("tokens"));
        cache.ensure_dir().unwrap();
        // Beyond any pid_max (2^22 on Linux): no such process.
        fs::write(lock_path(&cache), "999999999 deadbeef\n").unwrap();
        let got = acquire(&cache, "ssh.localhost", &fast(), None).unwrap();
        assert!(matches!(got, Acquired::Lock(_)));
    }

    #[test]
    fn an_old_lock_is_broken_whatever_its_pid() {
        let tmp = TempDir::new("lock-old");
        let cache = TokenCache::new(tmp.0.join("tokens"));
        cache.ensure_dir().unwrap();
        fs::write(lock_path(&cache), format!("{} x\n", std::process::id())).unwrap();
        let timing = LockTiming {
            stale_after: Duration::ZERO,
            ..fast()
        };
        let got = acquire(&cache, "ssh.localhost", &timing, None).unwrap();
        assert!(matches!(got, Acquired::Lock(_)));
    }

    #[test]
    fn a_live_lock_blocks_until_released_then_the_cached_token_is_used() {
        let tmp = TempDir::new("lock-live");
        let cache = TokenCache::new(tmp.0.join("tokens"));
        let Acquired::Lock(holder) = acquire(&cache, "ssh.localhost", &fast(), None).unwrap()
        else {
            panic!("first caller gets the lock");
        };
        let fresh = token();
        let fresh_text = fresh.expose().to_owned();
        let dir = cache.dir().to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let cache = TokenCache::new(dir);
            tx.send(()).unwrap();
            acquire(&cache, "ssh.localhost", &fast(), None)
        });
        rx.recv().unwrap();
        // The waiter is still waiting while we hold the lock.
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished());
        cache.store("ssh.localhost", &fresh).unwrap();
        drop(holder);
        match waiter.join().unwrap().unwrap() {
            Acquired::Token(t) => assert_eq!(t.expose(), fresh_text),
            Acquired::Lock(_) => panic!("the waiter must take the token the holder cached"),
        }
    }

    #[test]
    fn a_released_lock_without_a_token_is_taken_by_the_waiter() {
        let tmp = TempDir::new("lock-notoken");
        let cache = TokenCache::new(tmp.0.join("tokens"));
        let refused = token();
        cache.store("ssh.localhost", &refused).unwrap();
        let Acquired::Lock(holder) = acquire(&cache, "ssh.localhost", &fast(), None).unwrap()
        else {
            panic!("first caller gets the lock");
        };
        let dir = cache.dir().to_owned();
        let refused_text = refused.expose().to_owned();
        let waiter = std::thread::spawn(move || {
            let cache = TokenCache::new(dir);
            // The cached token is the one the edge refused: it must not count.
            let ignore = Secret::from(refused_text);
            acquire(&cache, "ssh.localhost", &fast(), Some(&ignore))
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished());
        drop(holder);
        let got = waiter.join().unwrap().unwrap();
        assert!(matches!(got, Acquired::Lock(_)));
    }

    #[test]
    fn waiting_on_a_live_lock_gives_up_at_the_deadline_naming_the_pid() {
        let tmp = TempDir::new("lock-deadline");
        let cache = TokenCache::new(tmp.0.join("tokens"));
        let Acquired::Lock(_holder) = acquire(&cache, "ssh.localhost", &fast(), None).unwrap()
        else {
            panic!("first caller gets the lock");
        };
        let timing = LockTiming {
            deadline: Duration::from_millis(50),
            ..fast()
        };
        let e = acquire(&cache, "ssh.localhost", &timing, None)
            .err()
            .expect("must time out");
        let text = e.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("ssh.localhost.lock"), "{text}");
    }

    #[test]
    fn a_guard_leaves_a_lock_that_is_no_longer_its_own() {
        let tmp = TempDir::new("lock-foreign");
        let cache = TokenCache::new(tmp.0.join("tokens"));
        let Acquired::Lock(guard) = acquire(&cache, "ssh.localhost", &fast(), None).unwrap() else {
            panic!("first caller gets the lock");
        };
        fs::write(lock_path(&cache), "1 someone-else\n").unwrap();
        drop(guard);
        assert!(lock_path(&cache).exists());
    }
}
