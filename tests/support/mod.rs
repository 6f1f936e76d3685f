//! End-to-end harness: real `sshd`, `ssh`, `git` and the real `postern` binary.
//!
//! Declared once in `tests/e2e.rs`; each test file there says `use crate::support;`. Every process a test starts is held by a
//! [`Child`] guard that stops it on drop, every file lives in a [`TempDir`] removed on drop, every
//! port comes from [`free_port`] (below the kernel's ephemeral range), and every wait is a
//! condition polled against a deadline (never a bare sleep used as synchronisation). Edges and
//! origins are waited on through their state (`/ready`, see [`ready`]), not their log lines;
//! log text is for assertions.
//!
//! These tests never skip: a missing `sshd`, `ssh`, `git` or `ssh-keygen` is a failure with a
//! message saying what to install (`scripts/test` installs them).
//!
//! The chain under test, as `Chain::start` assembles it:
//!
//! ```text
//! ssh ──ProxyCommand── postern access ssh ══TLS+WS══▶ postern edge --dev ◀══TLS══ postern tunnel ── sshd
//! ```
//!
//! Service-token secrets reach `postern access ssh` through the environment
//! (`POSTERN_SERVICE_TOKEN_ID` / `POSTERN_SERVICE_TOKEN_SECRET`, set on the `ssh` command and
//! inherited by its ProxyCommand), never through argv.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub mod delay;
pub mod etcd;
pub mod netns;
pub mod oidc;
pub mod raw;
pub mod ready;
pub mod sso;

use ready::{lost_metrics_port, metrics_listen, wait_edge_listening, wait_registered_connections};

/// How long a started process gets to report that it is ready.
pub const STARTUP: Duration = Duration::from_secs(20);
/// How long one ordinary ssh round trip through the chain may take.
pub const SSH_DEADLINE: Duration = Duration::from_secs(30);
/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Polling period of every wait loop.
const POLL: Duration = Duration::from_millis(10);

/// The `postern` binary under test: `$POSTERN_BIN` if set, else the one cargo built for this
/// profile (`cargo test --release` tests `target/release/postern`).
pub fn postern_bin() -> PathBuf {
    match std::env::var_os("POSTERN_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_postern")),
    }
}

/// Panics with an install hint if `binary` is not on PATH (or, for `sshd`, in /usr/sbin).
/// These tests never skip, in CI or locally.
pub fn require(binary: &str) -> PathBuf {
    if let Some(p) = find_binary(binary) {
        return p;
    }
    let package = match binary {
        "sshd" => "openssh-server",
        "ssh" | "ssh-keygen" => "openssh-client",
        "git" => "git",
        "prlimit" | "setpriv" => "util-linux",
        "ip" => "iproute2",
        "nft" => "nftables",
        "etcd" => "etcd-server",
        "setcap" => "libcap2-bin",
        other => other,
    };
    panic!(
        "required binary `{binary}` not found on PATH or in /usr/sbin: install it \
         (`apt-get install -y {package}`, or run scripts/test which installs it); \
         end-to-end tests do not skip"
    );
}

fn find_binary(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
}

/// Checks every external binary the end-to-end tests use.
pub fn require_all() {
    for b in ["sshd", "ssh", "ssh-keygen", "git", "sha256sum"] {
        require(b);
    }
}

/// A port that was free a moment ago on 127.0.0.1, for a process the harness starts to bind.
///
/// It comes from below the kernel's ephemeral range (`ip_local_port_range`), never from a
/// `bind(:0)`: the kernel hands ephemeral ports to every `--listen 127.0.0.1:0` and outgoing
/// connection of the tests running beside this one, and once handed out such a port was taken
/// by a TLS listener of another test before the edge meant to have it could bind it (CI saw
/// `/ready` answered by a TLS alert). Ports below that range are only ever bound by name, and
/// the harness never names the same one twice in a process: a per-process counter from a
/// pid-derived start walks the band.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let Some((lo, hi)) = harness_port_band() else {
        // No room beside the ephemeral range: a port the kernel picks, as before.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        return l.local_addr().expect("local_addr").port();
    };
    let span = u64::from(hi - lo);
    let start = u64::from(std::process::id()).wrapping_mul(7919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = lo + ((start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {lo}..{hi} on 127.0.0.1");
}

/// The ports [`free_port`] picks from, `lo..hi`: from 10000 up to the kernel's ephemeral range
/// (`ip_local_port_range`; below 10000 live the well-known services a developer's machine
/// runs), or above that range where it starts too low; `None` when neither leaves 1000 ports.
fn harness_port_band() -> Option<(u16, u16)> {
    const FLOOR: u16 = 10000;
    const ENOUGH: u16 = 1000;
    let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = range
        .split_whitespace()
        .filter_map(|w| w.parse::<u16>().ok());
    let (lo, hi) = (it.next().unwrap_or(32768), it.next().unwrap_or(60999));
    if lo.saturating_sub(FLOOR) >= ENOUGH {
        Some((FLOOR, lo))
    } else if u16::MAX - hi.max(FLOOR) > ENOUGH {
        Some((hi.max(FLOOR) + 1, u16::MAX))
    } else {
        None
    }
}

/// Polls `f` every few milliseconds until it returns true; panics naming `what` after `deadline`.
pub fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if f() {
            return;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        thread::sleep(POLL);
    }
}

/// The text of the audit log at `path` once `f` holds for it (the edge writes its audit log
/// from a thread, shortly after the decision); panics naming `what` after `deadline`.
pub fn audit_when(path: &Path, deadline: Duration, what: &str, f: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    wait_until(deadline, what, || {
        text = fs::read_to_string(path).unwrap_or_default();
        f(&text)
    });
    text
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:@%=+,".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The current user name (`id -un`).
pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    assert!(out.status.success(), "id -un failed");
    String::from_utf8(out.stdout)
        .expect("utf-8 user name")
        .trim()
        .to_string()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

/// A directory under `std::env::temp_dir()`, removed (recursively) on drop.
/// Set `POSTERN_KEEP_TEMP=1` to keep it for a post-mortem.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("POSTERN_KEEP_TEMP").is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Makes a fresh, empty directory named after `name`, the process id and a counter.
pub fn temp_dir(name: &str) -> TempDir {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = std::env::temp_dir().join(format!(
        "postern-e2e-{name}-{}-{n}-{nanos:x}",
        std::process::id()
    ));
    fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    TempDir { path }
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A running process whose stdout and stderr go to files; stopped (SIGTERM, then SIGKILL after a
/// grace period) and reaped on drop.
pub struct Child {
    name: String,
    child: Mutex<std::process::Child>,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
}

impl Child {
    /// Spawns `cmd` with stdin null and stdout/stderr captured to `DIR/NAME.stdout|stderr`
    /// (appending, so a restarted process keeps one log per generation side by side).
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Child {
        static GENERATION: AtomicU64 = AtomicU64::new(0);
        let g = GENERATION.fetch_add(1, Ordering::Relaxed);
        let stderr_path = dir.join(format!("{name}.{g}.stderr"));
        let stdout_path = dir.join(format!("{name}.{g}.stdout"));
        let err = File::create(&stderr_path).expect("create stderr log");
        let out = File::create(&stdout_path).expect("create stdout log");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        Child {
            name: name.to_string(),
            child: Mutex::new(child),
            stderr_path,
            stdout_path,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// The name its logs and messages carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stderr_text(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        fs::read(&self.stdout_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().expect("try_wait")
    }

    /// Waits for the process to exit by itself; `Err` with its stderr on timeout.
    pub fn wait_exit(&self, deadline: Duration) -> Result<ExitStatus, String> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                return Ok(s);
            }
            if start.elapsed() > deadline {
                return Err(format!(
                    "{} still running after {deadline:?}; stderr:\n{}",
                    self.name,
                    self.stderr_text()
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Polls the stderr log until it contains `needle`. `Ok(stderr)` when found; `Err` with an
    /// explanation and the log if the deadline passes or the process exits first.
    pub fn wait_for_stderr(&self, needle: &str, deadline: Duration) -> Result<String, String> {
        self.wait_for_stderr_count(needle, 1, deadline)
    }

    /// Like [`Child::wait_for_stderr`], until `needle` occurs at least `count` times.
    pub fn wait_for_stderr_count(
        &self,
        needle: &str,
        count: usize,
        deadline: Duration,
    ) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let text = self.stderr_text();
            if text.matches(needle).count() >= count {
                return Ok(text);
            }
            if let Some(status) = self.try_wait() {
                // One last read: the line may have landed just before the exit.
                let text = self.stderr_text();
                if text.matches(needle).count() >= count {
                    return Ok(text);
                }
                return Err(format!(
                    "{} exited ({status}) before printing {needle:?} x{count}; stderr:\n{text}",
                    self.name
                ));
            }
            if start.elapsed() > deadline {
                return Err(format!(
                    "{} did not print {needle:?} x{count} within {deadline:?}; stderr:\n{text}",
                    self.name
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Sends SIGTERM, waits up to the grace period, then SIGKILLs; reaps the process.
    pub fn stop(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        signal(child.id(), "TERM");
        let start = Instant::now();
        while start.elapsed() < STOP_GRACE {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            thread::sleep(POLL);
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGKILLs and reaps the process at once (a crash, not a drain).
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "---- {} stderr ({}) ----\n{}",
                self.name,
                self.stderr_path.display(),
                tail(&self.stderr_text(), 4000)
            );
        }
    }
}

pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Sends a signal to a whole process group with kill(1).
fn signal_group(pgid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Sends a signal with kill(1) (no libc, no unsafe).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Collects a child's pipe on a thread; [`Capture::finish`] gives up waiting after a bound,
/// because a grandchild (ssh's ProxyCommand) may hold the pipe open after the child is gone.
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    done: Arc<AtomicBool>,
}

impl Capture {
    fn start(mut pipe: impl io::Read + Send + 'static) -> Capture {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (b, d) = (buf.clone(), done.clone());
        thread::spawn(move || {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => b.lock().unwrap().extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            d.store(true, Ordering::Release);
        });
        Capture { buf, done }
    }

    fn finish(self, deadline: Duration) -> Vec<u8> {
        let start = Instant::now();
        while !self.done.load(Ordering::Acquire) && start.elapsed() < deadline {
            thread::sleep(POLL);
        }
        std::mem::take(&mut *self.buf.lock().unwrap())
    }
}

/// How long to keep reading a pipe after the process exited (its ProxyCommand may linger).
const PIPE_LINGER: Duration = Duration::from_secs(5);

/// Spawns `cmd` in its own process group, so that on a timeout the whole tree (ssh and its
/// ProxyCommand, git and its ssh) is killed, not just the top process.
fn spawn_group(cmd: &mut Command, what: &str) -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: spawn {cmd:?}: {e}"))
}

/// Waits for `child` until `deadline`; on timeout kills its process group and panics naming
/// `what`, with whatever stderr it printed.
fn wait_group(
    child: &mut std::process::Child,
    deadline: Duration,
    what: &str,
    stderr: Option<Capture>,
) -> (ExitStatus, Option<Capture>) {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return (s, stderr);
        }
        if start.elapsed() > deadline {
            signal_group(child.id(), "KILL");
            let _ = child.kill();
            let _ = child.wait();
            let text = stderr
                .map(|c| c.finish(Duration::from_secs(1)))
                .unwrap_or_default();
            panic!(
                "{what}: still running after {deadline:?}, killed; stderr:\n{}",
                String::from_utf8_lossy(&text)
            );
        }
        thread::sleep(POLL);
    }
}

/// Runs `cmd` to completion (stdin as set by the caller, else inherited: set it), capturing
/// stdout and stderr; kills its process group and panics naming `what` after `deadline`.
pub fn run_with_deadline(cmd: &mut Command, deadline: Duration, what: &str) -> Output {
    let mut child = spawn_group(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()), what);
    let out = Capture::start(child.stdout.take().expect("stdout piped"));
    let err = Capture::start(child.stderr.take().expect("stderr piped"));
    let (status, err) = wait_group(&mut child, deadline, what, Some(err));
    Output {
        status,
        stdout: out.finish(PIPE_LINGER),
        stderr: err.expect("stderr capture").finish(PIPE_LINGER),
    }
}

/// Like [`run_with_deadline`], but a command still running at `deadline` is an `Err` (its
/// process group killed, its stderr in the message) instead of a panic, so a test can collect
/// every hang of a batch before failing.
pub fn try_run_with_deadline(
    cmd: &mut Command,
    deadline: Duration,
    what: &str,
) -> Result<Output, String> {
    let mut child = spawn_group(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()), what);
    let out = Capture::start(child.stdout.take().expect("stdout piped"));
    let err = Capture::start(child.stderr.take().expect("stderr piped"));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Ok(Output {
                status,
                stdout: out.finish(PIPE_LINGER),
                stderr: err.finish(PIPE_LINGER),
            });
        }
        if start.elapsed() > deadline {
            signal_group(child.id(), "KILL");
            let _ = child.kill();
            let _ = child.wait();
            let text = err.finish(Duration::from_secs(1));
            return Err(format!(
                "{what}: still running after {deadline:?}, killed; stderr: {:?}",
                String::from_utf8_lossy(&text)
            ));
        }
        thread::sleep(POLL);
    }
}

/// Like [`run_with_deadline`] for a command whose stdout the caller redirected (to a file);
/// returns the exit status and stderr.
pub fn run_status_with_deadline(
    cmd: &mut Command,
    deadline: Duration,
    what: &str,
) -> (ExitStatus, String) {
    let mut child = spawn_group(cmd.stderr(Stdio::piped()), what);
    let err = Capture::start(child.stderr.take().expect("stderr piped"));
    let (status, err) = wait_group(&mut child, deadline, what, Some(err));
    let text = err.expect("stderr capture").finish(PIPE_LINGER);
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// Runs a short command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = run_with_deadline(cmd.stdin(Stdio::null()), Duration::from_secs(60), what);
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// sshd
// ---------------------------------------------------------------------------------------------

/// A private sshd on a random loopback port, with its own host key, a fresh user key authorized
/// for the current user, and a known_hosts file that pins its host key for every host name.
pub struct Sshd {
    pub port: u16,
    pub user: String,
    pub user_key: PathBuf,
    pub known_hosts: PathBuf,
    pub host_public_key: String,
    pub dir: PathBuf,
    child: Child,
}

/// How many simultaneous unauthenticated connections an [`Sshd`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Startups {
    /// `MaxStartups 200`: many sessions at once, none dropped (most tests).
    Raised,
    /// sshd's own default (`MaxStartups 10:30:100`): beyond 10 connections in the key
    /// exchange it drops new ones at random, as a real server does under a burst.
    Default,
    /// `MaxStartups 1`: while one connection is in the key exchange, sshd drops every other
    /// right after accepting it (it writes "Exceeded MaxStartups" and closes).
    Single,
}

impl Sshd {
    /// Generates keys and config under `dir` and starts `sshd -D -e -f CONFIG`; returns once the
    /// port accepts TCP connections.
    pub fn start(dir: &Path) -> Sshd {
        Self::start_with(dir, Startups::Raised)
    }

    /// Like [`Sshd::start`] with sshd's default `MaxStartups` (no such line in the config).
    pub fn start_default(dir: &Path) -> Sshd {
        Self::start_with(dir, Startups::Default)
    }

    /// Like [`Sshd::start`] with the given `MaxStartups` (see [`Startups`]).
    pub fn start_with(dir: &Path, startups: Startups) -> Sshd {
        Self::start_via(
            dir,
            startups,
            "127.0.0.1",
            free_port(),
            &|cmd| cmd,
            &|addr| TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok(),
        )
    }

    /// Like [`Sshd::start`] with `auth` (sshd_config lines) in place of the
    /// `AuthorizedKeysFile` line: e.g. `TrustedUserCAKeys FILE` and `AuthorizedKeysFile none`
    /// for a server that trusts a certificate authority only.
    pub fn start_with_auth(dir: &Path, auth: &str) -> Sshd {
        Self::start_via_auth(
            dir,
            Startups::Raised,
            "127.0.0.1",
            free_port(),
            &|cmd| cmd,
            &|addr| TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok(),
            Some(auth),
        )
    }

    /// Like [`Sshd::start_with`] on `listen:port`, its command passed through `wrap` (e.g. to
    /// run it in a network namespace), waiting until `accepting(127.0.0.1:port)` holds.
    fn start_via(
        dir: &Path,
        startups: Startups,
        listen: &str,
        port: u16,
        wrap: &dyn Fn(Command) -> Command,
        accepting: &dyn Fn(&SocketAddr) -> bool,
    ) -> Sshd {
        Self::start_via_auth(dir, startups, listen, port, wrap, accepting, None)
    }

    fn start_via_auth(
        dir: &Path,
        startups: Startups,
        listen: &str,
        port: u16,
        wrap: &dyn Fn(Command) -> Command,
        accepting: &dyn Fn(&SocketAddr) -> bool,
        auth: Option<&str>,
    ) -> Sshd {
        let sshd_bin = require("sshd");
        require("ssh-keygen");
        let dir = dir.join("sshd");
        fs::create_dir_all(&dir).expect("mkdir sshd dir");

        let host_key = dir.join("ssh_host_ed25519_key");
        let user_key = dir.join("id_ed25519");
        for (key, comment) in [
            (&host_key, "postern-test-host"),
            (&user_key, "postern-test-user"),
        ] {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                    .arg(key),
                "ssh-keygen",
            );
        }
        let user_pub = fs::read_to_string(dir.join("id_ed25519.pub")).expect("read user pub key");
        let authorized_keys = dir.join("authorized_keys");
        fs::write(&authorized_keys, &user_pub).expect("write authorized_keys");

        let host_pub =
            fs::read_to_string(dir.join("ssh_host_ed25519_key.pub")).expect("read host pub key");
        // "ssh-ed25519 AAAA... comment" -> "ssh-ed25519 AAAA..."
        let host_public_key = host_pub
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        // `*` matches every host name (an alias reached by ProxyCommand, or [127.0.0.1]:PORT),
        // and StrictHostKeyChecking=yes still proves the peer holds *this* host key.
        let known_hosts = dir.join("known_hosts");
        fs::write(&known_hosts, format!("* {host_public_key}\n")).expect("write known_hosts");

        if is_root() {
            // sshd's privilege-separation directory.
            fs::create_dir_all("/run/sshd").expect("mkdir -p /run/sshd");
        }

        let config = dir.join("sshd_config");
        let pid_file = dir.join("sshd.pid");
        let auth = match auth {
            Some(lines) => format!("{}\n", lines.trim_end()),
            None => format!("AuthorizedKeysFile {}\n", authorized_keys.display()),
        };
        let base = format!(
            "Port {port}\n\
             ListenAddress {listen}\n\
             HostKey {host_key}\n\
             {auth}\
             PidFile {pid_file}\n\
             UsePAM no\n\
             StrictModes no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             PermitRootLogin yes\n\
             Subsystem sftp internal-sftp\n\
             LogLevel VERBOSE\n\
             AcceptEnv LANG LC_* GIT_PROTOCOL POSTERN_TEST_*\n\
             UseDNS no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             X11Forwarding no\n\
             MaxSessions 64\n",
            host_key = host_key.display(),
            pid_file = pid_file.display(),
        );
        let base = match startups {
            Startups::Raised => format!("{base}MaxStartups 200\n"),
            Startups::Default => base,
            Startups::Single => format!("{base}MaxStartups 1\n"),
        };
        // OpenSSH >= 9.8 penalises sources that fail auth (the refusal tests cause some); older
        // versions reject the keyword, so keep it only if `sshd -t` accepts it.
        fs::write(&config, format!("{base}PerSourcePenalties no\n")).expect("write sshd_config");
        let check = Command::new(&sshd_bin)
            .arg("-t")
            .arg("-f")
            .arg(&config)
            .output()
            .expect("run sshd -t");
        if !check.status.success() {
            fs::write(&config, &base).expect("write sshd_config");
            let check = Command::new(&sshd_bin)
                .arg("-t")
                .arg("-f")
                .arg(&config)
                .output()
                .expect("run sshd -t");
            assert!(
                check.status.success(),
                "sshd -t rejected the test config: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }

        let mut cmd = Command::new(&sshd_bin);
        cmd.arg("-D").arg("-e").arg("-f").arg(&config);
        let child = Child::spawn("sshd", wrap(cmd), &dir);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let start = Instant::now();
        loop {
            if accepting(&addr) {
                break;
            }
            if let Some(status) = child.try_wait() {
                panic!(
                    "sshd exited ({status}) before listening on {addr}; stderr:\n{}",
                    child.stderr_text()
                );
            }
            if start.elapsed() > STARTUP {
                panic!(
                    "sshd not listening on {addr} after {STARTUP:?}; stderr:\n{}",
                    child.stderr_text()
                );
            }
            thread::sleep(POLL);
        }
        Sshd {
            port,
            user: current_user(),
            user_key,
            known_hosts,
            host_public_key,
            dir,
            child,
        }
    }

    /// The `ssh://127.0.0.1:PORT` URL a tunnel forwards to.
    pub fn url(&self) -> String {
        format!("ssh://127.0.0.1:{}", self.port)
    }

    pub fn stderr_text(&self) -> String {
        self.child.stderr_text()
    }

    /// Stops sshd (SIGTERM): its port then refuses connections (the origin's service is down).
    pub fn stop(&self) {
        self.child.stop();
    }

    /// How many connections sshd serves now: its child processes (one per connection).
    pub fn connections(&self) -> usize {
        let me = self.child.id().to_string();
        fs::read_dir("/proc")
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
                    // `pid (comm) state ppid …`: the fields after the last ')'.
                    .filter(|stat| {
                        stat.rsplit_once(')')
                            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                            == Some(me.as_str())
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// The ssh options shared by direct and proxied connections (without ProxyCommand).
    pub fn ssh_options(&self) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            self.user_key.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "IdentityAgent=none".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "UpdateHostKeys=no".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            "ConnectTimeout=20".into(),
        ]
    }

    /// `ssh ... user@host_alias` through `proxy` (the token travels in the environment).
    /// Append the remote command with `.arg(...)`.
    pub fn ssh_command(&self, host_alias: &str, proxy: &Proxy) -> Command {
        require("ssh");
        let mut cmd = Command::new("ssh");
        cmd.args(self.ssh_options())
            .arg("-o")
            .arg(format!("ProxyCommand={}", proxy.command))
            .arg(format!("{}@{host_alias}", self.user));
        proxy.apply_env(&mut cmd);
        cmd
    }

    /// A direct `ssh -p PORT user@127.0.0.1` (no postern): proves the harness itself.
    pub fn direct_ssh_command(&self) -> Command {
        require("ssh");
        let mut cmd = Command::new("ssh");
        cmd.args(self.ssh_options())
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{}@127.0.0.1", self.user));
        cmd
    }

    /// A `GIT_SSH_COMMAND` value equivalent to [`Sshd::ssh_command`] (without the destination).
    pub fn git_ssh_command(&self, proxy: &Proxy) -> String {
        let mut s = String::from("ssh");
        for opt in self.ssh_options() {
            let _ = write!(s, " {}", shell_quote(&opt));
        }
        let _ = write!(
            s,
            " -o {}",
            shell_quote(&format!("ProxyCommand={}", proxy.command))
        );
        s
    }
}

// ---------------------------------------------------------------------------------------------
// postern processes
// ---------------------------------------------------------------------------------------------

/// A `postern` command with a quiet, predictable environment: `RUST_LOG=info`, no colours, and
/// `HOME` inside the test directory so nothing touches the real `~/.postern`.
pub fn postern(home: &Path) -> Command {
    let mut cmd = Command::new(postern_bin());
    quiet_env(&mut cmd, home);
    cmd
}

/// [`postern`], from a copy of the binary at `bin` (one given a file capability, say), started
/// through `wrapper` as [`postern_via`] does (none when empty).
pub fn postern_at(bin: &Path, home: &Path, wrapper: &[&str]) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(require(program));
            cmd.args(args).arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    quiet_env(&mut cmd, home);
    cmd
}

/// [`postern`] started through `wrapper`, a command that execs what follows it (e.g.
/// `["prlimit", "--nofile=64:64", "--"]`), so the process keeps the wrapper's pid.
pub fn postern_via(home: &Path, wrapper: &[&str]) -> Command {
    let (program, args) = wrapper.split_first().expect("a wrapper command");
    let mut cmd = Command::new(require(program));
    cmd.args(args).arg(postern_bin());
    quiet_env(&mut cmd, home);
    cmd
}

fn quiet_env(cmd: &mut Command, home: &Path) {
    cmd.env("RUST_LOG", "info")
        .env("RUST_LOG_STYLE", "never")
        .env("HOME", home)
        .env_remove("POSTERN_SERVICE_TOKEN_ID")
        .env_remove("POSTERN_SERVICE_TOKEN_SECRET")
        .env_remove("POSTERN_EDGE")
        .env_remove("POSTERN_CA")
        .env_remove("POSTERN_TUNNEL_CONFIG")
        .env_remove("POSTERN_METRICS")
        .env_remove("POSTERN_LOG_FORMAT")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy");
    // cloudflared's variables stand for flags (src/cloudflared.rs): none leak in from outside.
    for (var, _) in std::env::vars() {
        if var.starts_with("TUNNEL_") || var == "NO_AUTOUPDATE" {
            cmd.env_remove(var);
        }
    }
}

fn home_of(dir: &Path) -> PathBuf {
    let home = dir.join("home");
    fs::create_dir_all(&home).expect("mkdir home");
    home
}

/// `postern edge --dev --listen 127.0.0.1:0 --state DIR --metrics ADDR`; knows its real address
/// from its `/ready` (see [`ready`]).
pub struct Edge {
    pub addr: SocketAddr,
    /// Where it serves `/metrics` and `/ready` (kept across [`Edge::restart`]).
    pub metrics: SocketAddr,
    pub state: PathBuf,
    dir: PathBuf,
    /// The config file of an edge started with [`Edge::start_with_limits`].
    config: Option<PathBuf>,
    /// Extra arguments after `postern edge ...` (kept across [`Edge::restart`]).
    extra: Vec<String>,
    child: Option<Child>,
}

impl Edge {
    pub fn start(dir: &Path) -> Edge {
        Self::start_args(dir, &[])
    }

    /// `postern edge --dev ... EXTRA` (e.g. `--metrics 127.0.0.1:0`).
    pub fn start_args(dir: &Path, extra: &[&str]) -> Edge {
        let state = dir.join("edge-state");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, addr, metrics) = Self::launch(dir, &state, "127.0.0.1:0", None, &extra);
        Edge {
            addr,
            metrics,
            state,
            dir: dir.to_path_buf(),
            config: None,
            extra,
            child: Some(child),
        }
    }

    /// `postern edge --config FILE EXTRA` for a config the test wrote itself.
    pub fn start_config(dir: &Path, config: &Path, state: &Path, extra: &[&str]) -> Edge {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, addr, metrics) = Self::launch(dir, state, "", Some(config), &extra);
        Edge {
            addr,
            metrics,
            state: state.to_path_buf(),
            dir: dir.to_path_buf(),
            config: Some(config.to_path_buf()),
            extra,
            child: Some(child),
        }
    }

    /// `postern edge --config DIR/edge.json`: what `--dev` serves (zone `localhost` on the
    /// edge's own CA, application `*.localhost` for any service token of this edge), without
    /// the dev sign-in, and with `limits` as the config's `"limits"` object.
    pub fn start_with_limits(dir: &Path, limits: serde_json::Value) -> Edge {
        let state = dir.join("edge-state");
        let config = dir.join("edge.json");
        let listen = format!("127.0.0.1:{}", free_port());
        let cfg = serde_json::json!({
            "listen": listen,
            "state_dir": state,
            "zones": [ { "name": "localhost", "local_ca": true } ],
            "applications": [ { "hostname": "*.localhost", "policies": [
                { "decision": "allow", "include": [ { "any_valid_service_token": true } ] }
            ] } ],
            "limits": limits,
        });
        fs::write(
            &config,
            serde_json::to_vec_pretty(&cfg).expect("config JSON"),
        )
        .expect("write edge.json");
        let (child, addr, metrics) = Self::launch(dir, &state, &listen, Some(&config), &[]);
        Edge {
            addr,
            metrics,
            state,
            dir: dir.to_path_buf(),
            config: Some(config),
            extra: Vec::new(),
            child: Some(child),
        }
    }

    /// Spawns the edge on a fresh `--metrics` port (another one if that port was taken
    /// meanwhile) and waits until it listens: (process, listen address, metrics address).
    fn launch(
        dir: &Path,
        state: &Path,
        listen: &str,
        config: Option<&Path>,
        extra: &[String],
    ) -> (Child, SocketAddr, SocketAddr) {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let metrics = metrics_listen();
            let child = Self::spawn(dir, state, listen, config, extra, &metrics);
            match wait_edge_listening(&child, &metrics, STARTUP) {
                Ok(addr) => return (child, addr, metrics),
                Err(e) if attempts < 3 && lost_metrics_port(&child) => {
                    eprintln!("edge lost its metrics port, starting it again: {e}");
                }
                Err(e) => panic!("edge did not start: {e}"),
            }
        }
    }

    /// `postern edge ... EXTRA --metrics METRICS` (the harness's `--metrics` comes last: it wins).
    fn spawn(
        dir: &Path,
        state: &Path,
        listen: &str,
        config: Option<&Path>,
        extra: &[String],
        metrics: &SocketAddr,
    ) -> Child {
        let mut cmd = postern(&home_of(dir));
        match config {
            // The config names the listen address and state directory itself.
            Some(config) => cmd.args(["edge", "--config"]).arg(config),
            None => cmd
                .args(["edge", "--dev", "--listen", listen, "--state"])
                .arg(state),
        };
        cmd.args(extra).arg("--metrics").arg(metrics.to_string());
        Child::spawn("edge", cmd, dir)
    }

    /// Waits until at least `n` tunnel connections are registered with this edge (its
    /// `/ready`; e.g. after [`Edge::restart`], when every registration is a new one).
    pub fn wait_registered(&self, n: u64, deadline: Duration) {
        if let Err(e) = wait_registered_connections(self.child(), &self.metrics, n, deadline) {
            panic!("no tunnel registered with the edge: {e}");
        }
    }

    /// The TLS CA users pass as `--ca`.
    pub fn ca(&self) -> PathBuf {
        self.state.join("ca.pem")
    }

    /// `HOST:PORT` for `--edge`.
    pub fn edge_arg(&self) -> String {
        self.addr.to_string()
    }

    pub fn child(&self) -> &Child {
        self.child.as_ref().expect("edge running")
    }

    pub fn stderr_text(&self) -> String {
        self.child
            .as_ref()
            .map(Child::stderr_text)
            .unwrap_or_default()
    }

    /// Kills the edge (SIGKILL: a crash, no goodbye to the tunnels) and starts it again on the
    /// same port with the same state directory.
    pub fn restart(&mut self) {
        if let Some(old) = self.child.take() {
            old.kill();
        }
        let listen = self.addr.to_string();
        // The port was ours a moment ago; retry briefly in case the kernel still holds it.
        let start = Instant::now();
        loop {
            let child = Self::spawn(
                &self.dir,
                &self.state,
                &listen,
                self.config.as_deref(),
                &self.extra,
                &self.metrics,
            );
            match wait_edge_listening(&child, &self.metrics, STARTUP) {
                Ok(addr) => {
                    assert_eq!(addr, self.addr, "restarted edge must keep its address");
                    self.child = Some(child);
                    return;
                }
                Err(e) if start.elapsed() < Duration::from_secs(10) => {
                    eprintln!("edge restart attempt failed, retrying: {e}");
                    drop(child);
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("edge did not restart on {listen}: {e}"),
            }
        }
    }
}

/// Finds `needle` in `text` and parses the socket address that follows it.
pub fn parse_listen_addr(text: &str, needle: &str) -> Option<SocketAddr> {
    let at = text.find(needle)? + needle.len();
    let token: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    token.parse().ok()
}

/// A service token minted by `postern edge service-token create`.
pub struct ServiceToken {
    pub id: String,
    pub secret: String,
}

/// Runs `postern edge service-token create NAME --state DIR` and parses its JSON.
pub fn service_token(state: &Path, name: &str) -> ServiceToken {
    let home = state
        .parent()
        .map(home_of)
        .unwrap_or_else(std::env::temp_dir);
    let stdout = run_ok(
        postern(&home)
            .args(["edge", "service-token", "create", name, "--state"])
            .arg(state),
        "postern edge service-token create",
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("service-token create printed non-JSON ({e}): {stdout:?}"));
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_else(|| panic!("service-token create JSON lacks string {k:?}: {stdout}"))
            .to_string()
    };
    ServiceToken {
        id: field("client_id"),
        secret: field("client_secret"),
    }
}

/// Runs `postern edge origin-cert create --zone ZONE --out OUT --state DIR --edge ADDR`.
pub fn origin_cert(state: &Path, zone: &str, out: &Path, edge: &SocketAddr) {
    origin_cert_naming(state, zone, out, &edge.to_string());
}

/// [`origin_cert`] whose credential names `edges` as given (`--edge`: one or a list).
pub fn origin_cert_naming(state: &Path, zone: &str, out: &Path, edges: &str) {
    let home = state
        .parent()
        .map(home_of)
        .unwrap_or_else(std::env::temp_dir);
    run_ok(
        postern(&home)
            .args(["edge", "origin-cert", "create", "--zone", zone, "--out"])
            .arg(out)
            .arg("--state")
            .arg(state)
            .arg("--edge")
            .arg(edges),
        "postern edge origin-cert create",
    );
    assert!(
        out.is_file(),
        "origin-cert create did not write {}",
        out.display()
    );
}

/// `postern tunnel --hostname H --url URL --origincert F --edge ADDR --ca CA` with the test env
/// and `POSTERN_METRICS=METRICS` (an environment variable, so a test can still name its own).
fn tunnel_command(
    dir: &Path,
    hostname: &str,
    url: &str,
    cert: &Path,
    edge: &str,
    ca: &Path,
    metrics: &SocketAddr,
) -> Command {
    let mut cmd = postern(&home_of(dir));
    cmd.env("POSTERN_METRICS", metrics.to_string());
    cmd.args([
        "tunnel",
        "--hostname",
        hostname,
        "--url",
        url,
        "--origincert",
    ])
    .arg(cert)
    .args(["--edge", edge, "--ca"])
    .arg(ca);
    cmd
}

/// Where an edge listens and the CA of its certificates (for edges started by a test itself).
pub struct EdgeRef {
    pub addr: SocketAddr,
    pub ca: PathBuf,
}

/// `postern tunnel --hostname H --url URL --origincert F --edge ADDR --ca CA`, serving
/// `/ready` on `metrics`.
pub struct Tunnel {
    pub hostname: String,
    /// Where it serves `/metrics` and `/ready`.
    pub metrics: SocketAddr,
    child: Child,
}

impl Tunnel {
    /// Spawns the tunnel without waiting for anything (for refusal tests).
    pub fn spawn(
        dir: &Path,
        name: &str,
        hostname: &str,
        url: &str,
        cert: &Path,
        edge: &Edge,
    ) -> Tunnel {
        let metrics = metrics_listen();
        let cmd = tunnel_command(
            dir,
            hostname,
            url,
            cert,
            &edge.edge_arg(),
            &edge.ca(),
            &metrics,
        );
        Tunnel {
            hostname: hostname.to_string(),
            metrics,
            child: Child::spawn(name, cmd, dir),
        }
    }

    /// Spawns a tunnel toward an edge not started by [`Edge`] and waits for registration.
    pub fn start_with(
        dir: &Path,
        name: &str,
        hostname: &str,
        url: &str,
        cert: &Path,
        edge: &EdgeRef,
    ) -> Tunnel {
        let metrics = metrics_listen();
        let cmd = tunnel_command(
            dir,
            hostname,
            url,
            cert,
            &edge.addr.to_string(),
            &edge.ca,
            &metrics,
        );
        let t = Tunnel {
            hostname: hostname.to_string(),
            metrics,
            child: Child::spawn(name, cmd, dir),
        };
        t.wait_registered(1, STARTUP);
        t
    }

    /// Like [`Tunnel::start`] (named `name`) with `extra` arguments after the usual ones
    /// (e.g. `--bastion-allow 127.0.0.0/8:*`).
    pub fn start_extra(
        dir: &Path,
        name: &str,
        (hostname, url): (&str, &str),
        cert: &Path,
        edge: &Edge,
        extra: &[&str],
    ) -> Tunnel {
        let metrics = metrics_listen();
        let mut cmd = tunnel_command(
            dir,
            hostname,
            url,
            cert,
            &edge.edge_arg(),
            &edge.ca(),
            &metrics,
        );
        cmd.args(extra);
        let t = Tunnel {
            hostname: hostname.to_string(),
            metrics,
            child: Child::spawn(name, cmd, dir),
        };
        t.wait_registered(1, STARTUP);
        t
    }

    /// Spawns the tunnel and waits until its `/ready` counts a registered connection.
    pub fn start(dir: &Path, hostname: &str, url: &str, cert: &Path, edge: &Edge) -> Tunnel {
        let t = Tunnel::spawn(dir, "tunnel", hostname, url, cert, edge);
        t.wait_registered(1, STARTUP);
        t
    }

    /// How many `registered HOSTNAME` lines the tunnel has logged so far: every registration
    /// since it started, for assertions that none was lost and made again (to *wait* for
    /// registration, use [`Tunnel::wait_registered`]).
    pub fn registered_count(&self) -> usize {
        self.child
            .stderr_text()
            .matches(&format!("registered {}", self.hostname))
            .count()
    }

    /// Waits until at least `count` of its connections are registered (its `/ready`).
    pub fn wait_registered(&self, count: u64, deadline: Duration) {
        if let Err(e) = wait_registered_connections(&self.child, &self.metrics, count, deadline) {
            panic!("tunnel {} did not register: {e}", self.hostname);
        }
    }

    pub fn child(&self) -> &Child {
        &self.child
    }
}

/// How `ssh` reaches the edge: the ProxyCommand line (no secrets) and the environment that
/// carries the service token.
#[derive(Clone)]
pub struct Proxy {
    /// `'/abs/postern' access ssh --hostname %h --edge ADDR --ca CA`
    pub command: String,
    pub env: Vec<(String, String)>,
}

impl Proxy {
    /// Sets the token variables on `cmd`; ssh passes its environment to the ProxyCommand.
    pub fn apply_env(&self, cmd: &mut Command) {
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.env("RUST_LOG", "info").env("RUST_LOG_STYLE", "never");
    }
}

/// The ProxyCommand for `ssh`, with the service token in `POSTERN_SERVICE_TOKEN_ID/SECRET`.
pub fn proxy_command(edge: &SocketAddr, ca: &Path, token: &ServiceToken) -> Proxy {
    let bin = postern_bin();
    Proxy {
        command: format!(
            "{} access ssh --hostname %h --edge {} --ca {}",
            shell_quote(&bin.display().to_string()),
            edge,
            shell_quote(&ca.display().to_string())
        ),
        env: vec![
            ("POSTERN_SERVICE_TOKEN_ID".into(), token.id.clone()),
            ("POSTERN_SERVICE_TOKEN_SECRET".into(), token.secret.clone()),
        ],
    }
}

/// The whole chain for one hostname: sshd, edge, service token, origin cert for zone
/// `localhost`, and a registered tunnel. Fields drop in declaration order: tunnel first, then
/// edge and sshd, the temp dir last.
pub struct Chain {
    pub hostname: String,
    pub tunnel: Tunnel,
    pub edge: Edge,
    pub sshd: Sshd,
    pub token: ServiceToken,
    pub proxy: Proxy,
    pub origin_cert: PathBuf,
    pub dir: TempDir,
}

impl Chain {
    /// Starts everything for `hostname` (which must be under `localhost`, the dev edge's zone).
    pub fn start(name: &str, hostname: &str) -> Chain {
        Self::start_edge(name, hostname, None, Startups::Raised)
    }

    /// Like [`Chain::start`] with an sshd that takes `startups` connections in the key
    /// exchange at once (see [`Startups`]).
    pub fn start_with_startups(name: &str, hostname: &str, startups: Startups) -> Chain {
        Self::start_edge(name, hostname, None, startups)
    }

    /// Like [`Chain::start`] with an edge from a config file whose `"limits"` is `limits`
    /// (see [`Edge::start_with_limits`]).
    pub fn start_with_limits(name: &str, hostname: &str, limits: serde_json::Value) -> Chain {
        Self::start_edge(name, hostname, Some(limits), Startups::Raised)
    }

    fn start_edge(
        name: &str,
        hostname: &str,
        limits: Option<serde_json::Value>,
        startups: Startups,
    ) -> Chain {
        require_all();
        let dir = temp_dir(name);
        let sshd = Sshd::start_with(dir.path(), startups);
        let edge = match limits {
            Some(limits) => Edge::start_with_limits(dir.path(), limits),
            None => Edge::start(dir.path()),
        };
        let token = service_token(&edge.state, "e2e");
        let cert = dir.join("cert.pem");
        origin_cert(&edge.state, "localhost", &cert, &edge.addr);
        let tunnel = Tunnel::start(dir.path(), hostname, &sshd.url(), &cert, &edge);
        let proxy = proxy_command(&edge.addr, &edge.ca(), &token);
        Chain {
            hostname: hostname.to_string(),
            tunnel,
            edge,
            sshd,
            token,
            proxy,
            origin_cert: cert,
            dir,
        }
    }

    /// `postern access tcp` for the chain's hostname on a free local port, reaching the edge at
    /// `edge` (`host:port`; the chain's own edge, or a front for it): started and listening.
    pub fn access_tcp(&self, edge: &str) -> (Child, u16) {
        let port = free_port();
        let mut cmd = postern(&self.dir.join("home"));
        cmd.args(["access", "tcp", "--hostname", &self.hostname, "--url"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--edge")
            .arg(edge)
            .arg("--ca")
            .arg(self.edge.ca());
        self.proxy.apply_env(&mut cmd);
        let listener = Child::spawn("access-tcp", cmd, self.dir.path());
        listener
            .wait_for_stderr("listening on", Duration::from_secs(10))
            .expect("access tcp did not start listening");
        (listener, port)
    }

    /// Plain `ssh -p PORT user@127.0.0.1` (through an [`Chain::access_tcp`] listener); append
    /// the remote command.
    pub fn ssh_port(&self, port: u16) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.sshd.ssh_options())
            .arg("-p")
            .arg(port.to_string())
            .arg(format!("{}@127.0.0.1", self.sshd.user));
        c
    }

    /// `ssh ... user@HOSTNAME` through the chain; append the remote command.
    pub fn ssh(&self) -> Command {
        let mut cmd = self.sshd.ssh_command(&self.hostname, &self.proxy);
        cmd.env("HOME", home_of(self.dir.path()));
        cmd
    }

    /// Runs `remote` over ssh through the chain with stdin null and [`SSH_DEADLINE`].
    pub fn ssh_run(&self, remote: &str) -> Output {
        run_with_deadline(
            self.ssh().arg(remote).stdin(Stdio::null()),
            SSH_DEADLINE,
            &format!("ssh {} {remote:?}", self.hostname),
        )
    }

    /// Asserts that `echo MARKER` through the chain prints MARKER and exits 0.
    pub fn assert_ssh_works(&self, marker: &str) {
        let out = self.ssh_run(&format!("echo {marker}"));
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == marker,
            "ssh through the chain failed ({}): stdout {:?}\nstderr:\n{}\nedge:\n{}\ntunnel:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.edge.stderr_text(), 3000),
            tail(&self.tunnel.child().stderr_text(), 3000),
        );
    }

    /// `postern access ssh --hostname HOSTNAME` to this chain's edge with its service token,
    /// as ssh would run it (without ssh).
    pub fn access_ssh(&self) -> Command {
        let mut cmd = postern(&home_of(self.dir.path()));
        cmd.args(["access", "ssh", "--hostname", &self.hostname, "--edge"])
            .arg(self.edge.edge_arg())
            .arg("--ca")
            .arg(self.edge.ca())
            .env("POSTERN_SERVICE_TOKEN_ID", &self.token.id)
            .env("POSTERN_SERVICE_TOKEN_SECRET", &self.token.secret);
        cmd
    }

    /// Runs `postern access ssh` directly (as ssh would), with stdin held open, the given token
    /// in the environment, and returns (exit status, stderr) once it exits by itself.
    pub fn access_ssh_direct(
        &self,
        hostname: &str,
        ca: &Path,
        id: &str,
        secret: &str,
    ) -> (ExitStatus, String) {
        let mut cmd = postern(&home_of(self.dir.path()));
        cmd.args(["access", "ssh", "--hostname", hostname, "--edge"])
            .arg(self.edge.edge_arg())
            .arg("--ca")
            .arg(ca)
            .env("POSTERN_SERVICE_TOKEN_ID", id)
            .env("POSTERN_SERVICE_TOKEN_SECRET", secret);
        access_until_exit(cmd, Duration::from_secs(20))
    }
}

/// Spawns `cmd` with stdin an open pipe that is never written nor closed (as ssh holds a
/// ProxyCommand's stdin while it waits for the server's banner); waits for it to exit by
/// itself within `deadline` (else kills it and panics). Returns the exit status, all it wrote
/// to stdout (read until EOF) and its stderr.
pub fn run_holding_stdin(
    mut cmd: Command,
    deadline: Duration,
    what: &str,
) -> (ExitStatus, Vec<u8>, String) {
    let mut child = spawn_group(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        what,
    );
    let stdin = child.stdin.take();
    let out = Capture::start(child.stdout.take().expect("stdout piped"));
    let err = Capture::start(child.stderr.take().expect("stderr piped"));
    let (status, err) = wait_group(&mut child, deadline, what, Some(err));
    let stdout = out.finish(PIPE_LINGER);
    drop(stdin);
    let text = err.expect("stderr capture").finish(PIPE_LINGER);
    (status, stdout, String::from_utf8_lossy(&text).into_owned())
}

/// Spawns `cmd` with stdin an open pipe that is never written (a refusal must end the process
/// without waiting for stdin EOF), stdout discarded; waits for exit with a deadline.
pub fn access_until_exit(mut cmd: Command, deadline: Duration) -> (ExitStatus, String) {
    let what = "postern access ssh (a refusal was expected to end it)";
    let mut child = spawn_group(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
        what,
    );
    let stdin = child.stdin.take();
    let err = Capture::start(child.stderr.take().expect("stderr piped"));
    let (status, err) = wait_group(&mut child, deadline, what, Some(err));
    drop(stdin);
    let text = err.expect("stderr capture").finish(PIPE_LINGER);
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// `sha256sum FILE` -> hex digest (coreutils; no hashing crate).
pub fn sha256_file(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path), "sha256sum");
    out.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sha256sum printed nothing for {}", path.display()))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// HTTP proxy (tinyproxy)
// ---------------------------------------------------------------------------------------------

/// A private tinyproxy (Debian's `tinyproxy` 1.11) in the foreground (`-d`) with its own config
/// on a random loopback port: clients from 127.0.0.1 only, CONNECT to `connect_port` only
/// (tinyproxy refuses other ports with 403 once a `ConnectPort` is listed), optional basic
/// auth, and an Info-level log file in which every request appears as
/// `Request (file descriptor N): CONNECT host:port HTTP/1.1`.
pub struct Tinyproxy {
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
}

impl Tinyproxy {
    pub fn start(dir: &Path, connect_port: u16, basic_auth: Option<(&str, &str)>) -> Tinyproxy {
        let bin = require("tinyproxy");
        let dir = dir.join("tinyproxy");
        fs::create_dir_all(&dir).expect("mkdir tinyproxy dir");
        let port = free_port();
        let log = dir.join("tinyproxy.log");
        let mut config = format!(
            "Port {port}\n\
             Listen 127.0.0.1\n\
             Allow 127.0.0.1\n\
             ConnectPort {connect_port}\n\
             LogLevel Info\n\
             LogFile \"{log}\"\n\
             PidFile \"{pid}\"\n\
             MaxClients 100\n\
             Timeout 600\n",
            log = log.display(),
            pid = dir.join("tinyproxy.pid").display(),
        );
        if let Some((user, password)) = basic_auth {
            let _ = writeln!(config, "BasicAuth {user} {password}");
        }
        let conf = dir.join("tinyproxy.conf");
        fs::write(&conf, config).expect("write tinyproxy.conf");
        let mut cmd = Command::new(bin);
        cmd.arg("-d").arg("-c").arg(&conf);
        let child = Child::spawn("tinyproxy", cmd, &dir);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_until(STARTUP, "tinyproxy to listen", || {
            if let Some(status) = child.try_wait() {
                panic!(
                    "tinyproxy exited ({status}) before listening on {addr}; stderr:\n{}\nlog:\n{}",
                    child.stderr_text(),
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        Tinyproxy { addr, log, child }
    }

    /// `http://[USER:PASSWORD@]127.0.0.1:PORT`, for `HTTPS_PROXY`.
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((user, password)) => format!("http://{user}:{password}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many `CONNECT target` requests the proxy has logged.
    pub fn connects_to(&self, target: &str) -> usize {
        self.log_text()
            .matches(&format!(": CONNECT {target} HTTP/1.1"))
            .count()
    }

    pub fn child(&self) -> &Child {
        &self.child
    }
}

impl Tunnel {
    /// Like [`Tunnel::spawn`] with extra environment variables (set after [`postern`] cleared
    /// the proxy variables), e.g. `HTTPS_PROXY`; does not wait.
    pub fn spawn_env(
        dir: &Path,
        name: &str,
        hostname: &str,
        url: &str,
        cert: &Path,
        edge: &Edge,
        env: &[(&str, &str)],
    ) -> Tunnel {
        // A test that names its own `POSTERN_METRICS` (a fixed port) is the one served.
        let metrics = match env.iter().find(|(k, _)| *k == "POSTERN_METRICS") {
            Some((_, v)) => v
                .parse()
                .unwrap_or_else(|e| panic!("POSTERN_METRICS {v:?} must be IP:PORT: {e}")),
            None => metrics_listen(),
        };
        let mut cmd = tunnel_command(
            dir,
            hostname,
            url,
            cert,
            &edge.edge_arg(),
            &edge.ca(),
            &metrics,
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        Tunnel {
            hostname: hostname.to_string(),
            metrics,
            child: Child::spawn(name, cmd, dir),
        }
    }

    /// Like [`Tunnel::start`] with extra environment variables; waits for one registration.
    pub fn start_env(
        dir: &Path,
        hostname: &str,
        url: &str,
        cert: &Path,
        edge: &Edge,
        env: &[(&str, &str)],
    ) -> Tunnel {
        let t = Tunnel::spawn_env(dir, "tunnel", hostname, url, cert, edge, env);
        t.wait_registered(1, STARTUP);
        t
    }
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP (metrics and readiness)
// ---------------------------------------------------------------------------------------------

/// `GET path` over plain HTTP/1.1 with a deadline; returns (status, body). The server closes
/// the connection after its answer.
pub fn http_get(addr: &SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// Like [`http_get`]; `Err` when nothing answers on `addr` (a server still starting) or what
/// answers is not HTTP (`InvalidData`: another process holds the port; the caller that waits on
/// a child then sees the child exit for want of it).
pub fn try_http_get(addr: &SocketAddr, path: &str) -> io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let not_http = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| not_http(&format!("no head in answer: {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| not_http(&format!("no status in {head:?}")))?;
    Ok((status, body.to_string()))
}

/// Writes an edge config like the one [`Edge::start_with_limits`] writes (zone `localhost` on
/// the edge's own CA, one application `*.localhost`) whose single allow policy includes
/// `include` (e.g. `[{"service_token": "a"}]`), plus `extra` top-level fields.
pub fn write_edge_config(
    path: &Path,
    listen: &str,
    state: &Path,
    include: serde_json::Value,
    extra: serde_json::Value,
) {
    let mut cfg = serde_json::json!({
        "listen": listen,
        "state_dir": state,
        "zones": [ { "name": "localhost", "local_ca": true } ],
        "applications": [ { "hostname": "*.localhost", "policies": [
            { "decision": "allow", "include": include }
        ] } ],
    });
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    // Written to a temporary name and renamed, as an operator's editor or config tool would:
    // a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(&cfg).expect("config JSON")).expect("write config");
    fs::rename(&tmp, path).expect("rename config");
}
