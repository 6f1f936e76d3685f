//! The only place that touches the OS: sockets, TLS glue, stdio, signals, the clock.

pub mod files;
pub mod local;
pub mod metrics_server;
pub mod reexec;
pub mod sys;
pub mod tls;
pub mod workers;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mio::net::UnixStream;

/// The wall clock in Unix seconds (0 before 1970): the one place the roles read it, for
/// token lifetimes and records; drivers pass it on to the cores that need it.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Called by a loop before it polls again: after a turn (since `turn`, when its last poll
/// returned) longer than [`crate::limits::YIELD_AFTER_TURN`], and when `shared()` says the
/// loop carries more than one stream, gives the core to the machine's other runnable threads
/// (`sched_yield`). A loop that moves bulk keeps its core for a whole scheduler slice
/// (milliseconds) unless it blocks; a keystroke's next hop, another process of the chain
/// woken on that core, waited for all of it (docs/design.md §2.8, "Yield after a long
/// turn"). A lone stream has no one in its chain to yield to and keeps its slice.
pub fn yield_after_long_turn(turn: std::time::Instant, shared: impl FnOnce() -> bool) {
    if yield_due(turn.elapsed(), shared) {
        std::thread::yield_now();
    }
}

fn yield_due(turn: std::time::Duration, shared: impl FnOnce() -> bool) -> bool {
    turn > crate::limits::YIELD_AFTER_TURN && shared()
}

/// A pollable source that becomes readable when SIGTERM or SIGINT arrives, and with
/// [`Signals::with_reload`] also SIGHUP. The handlers only set a flag and write a wake-up
/// byte (async-signal-safe); the loop then asks which signal it was.
pub struct Signals {
    pub rx: UnixStream,
    terminate: Arc<AtomicBool>,
    /// Set by SIGHUP; `None` when SIGHUP keeps its default action.
    reload: Option<Arc<AtomicBool>>,
}

impl Signals {
    /// SIGTERM and SIGINT.
    pub fn new() -> io::Result<Signals> {
        Self::register(false)
    }

    /// SIGTERM and SIGINT, and SIGHUP (reload).
    pub fn with_reload() -> io::Result<Signals> {
        Self::register(true)
    }

    fn register(reload: bool) -> io::Result<Signals> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let (rx, tx) = std::os::unix::net::UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        let terminate = Arc::new(AtomicBool::new(false));
        // The flag first: actions run in registration order, so the loop that wakes on the
        // byte always finds the flag set.
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register(sig, terminate.clone())?;
            signal_hook::low_level::pipe::register(sig, tx.try_clone()?)?;
        }
        let reload = if reload {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(SIGHUP, flag.clone())?;
            signal_hook::low_level::pipe::register(SIGHUP, tx)?;
            Some(flag)
        } else {
            None
        };
        Ok(Signals {
            rx: UnixStream::from_std(rx),
            terminate,
            reload,
        })
    }

    /// Drains the wake-up bytes; true if SIGTERM or SIGINT arrived since the last call.
    pub fn take(&mut self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match io::Read::read(&mut self.rx, &mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.terminate.swap(false, Ordering::SeqCst)
    }

    /// True if SIGHUP arrived since the last call (several SIGHUPs are one reload).
    pub fn take_reload(&mut self) -> bool {
        self.reload
            .as_ref()
            .is_some_and(|r| r.swap(false, Ordering::SeqCst))
    }
}

/// A uniformly random u64 from the OS.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("bug: the OS random source failed");
    u64::from_le_bytes(b)
}

/// Random bytes from the OS.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("bug: the OS random source failed");
    b
}

/// `$HOME/.postern`. Without a usable `HOME` (unset, empty or relative) an error that names
/// HOME and `instead`, the flag or variable that gives the path without it: postern never
/// falls back to a `.postern` relative to wherever it was started, where keys and tokens would
/// land in a directory nobody chose.
pub fn postern_dir(instead: &str) -> Result<std::path::PathBuf, String> {
    match std::env::var_os("HOME") {
        Some(h) if std::path::Path::new(&h).is_absolute() => {
            Ok(std::path::PathBuf::from(h).join(".postern"))
        }
        Some(h) if !h.is_empty() => Err(format!(
            "HOME ({}) is not an absolute path, so there is no ~/.postern: {instead}",
            std::path::Path::new(&h).display()
        )),
        _ => Err(format!(
            "HOME is not set, so there is no ~/.postern: {instead}"
        )),
    }
}

pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// Only a long turn of a loop that carries more than one stream yields; whether it
    /// carries more is asked only after a long turn (a count the loop may have to make).
    #[test]
    fn a_loop_yields_only_after_a_long_turn_with_more_than_one_stream() {
        let long = crate::limits::YIELD_AFTER_TURN + Duration::from_micros(1);
        assert!(super::yield_due(long, || true));
        assert!(
            !super::yield_due(long, || false),
            "a lone stream keeps its slice"
        );
        assert!(
            !super::yield_due(crate::limits::YIELD_AFTER_TURN, || panic!("asked")),
            "a short turn neither yields nor counts"
        );
    }

    /// `unsafe` is allowed in `io/sys.rs` only (lib.rs denies it everywhere else, and an
    /// `allow` elsewhere would be a new exception that vendor-policy.md must justify first).
    #[test]
    fn unsafe_code_lives_only_in_sys() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![root];
        let mut offenders = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path.ends_with("io/sys.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                // Spelt in pieces so that this file does not match itself.
                for needle in [
                    concat!("unsafe", " {"),
                    concat!("unsafe", " fn"),
                    concat!("unsafe", " impl"),
                    concat!("unsafe", " extern"),
                    concat!("allow(", "unsafe_code"),
                    concat!("#[", "unsafe("),
                ] {
                    if text.contains(needle) {
                        offenders.push(format!("{}: {needle}", path.display()));
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "unsafe outside io/sys.rs: {offenders:?}"
        );
    }
}
