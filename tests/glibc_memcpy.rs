//! On an AMD CPU with ERMS under glibc, postern starts itself again (`execve`, same pid) with
//! glibc's `rep movsb` threshold out of reach (src/io/reexec.rs, design §2.8): the process keeps
//! its pid, its name, its arguments and the user's other tunables; a threshold the user set is
//! left alone; and when the second `execve` fails the process goes on as it was, SIGPIPE still
//! ignored. On other CPUs (or C libraries) nothing changes, which the same tests assert there.

use crate::support;

use std::path::Path;

use postern::io::reexec::{glibc_needs_tuning, secure, Cpu, TUNABLE};
use postern::io::sys::glibc_version;
use support::{postern_at, require, temp_dir, Child, STARTUP};

/// Whether this machine is one where postern starts itself again.
fn tunes() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
    let cpu = Cpu::parse(&cpuinfo);
    let tunes = cfg!(all(
        target_os = "linux",
        target_env = "gnu",
        target_arch = "x86_64"
    )) && cpu.amd
        && cpu.erms
        && glibc_needs_tuning(glibc_version());
    if !tunes {
        eprintln!(
            "not an AMD CPU with ERMS under a glibc before 2.40: only the branch without execve is checked"
        );
    }
    tunes
}

/// `postern edge --dev` on a random port with `GLIBC_TUNABLES=tunables`, once it listens.
fn edge_with(dir: &Path, tunables: &str, log: &str) -> (Child, Vec<String>) {
    edge_of(&support::postern_bin(), &[], dir, tunables, log)
}

/// [`edge_with`], run from the binary at `bin` through `wrapper` (see `support::postern_at`).
fn edge_of(
    bin: &Path,
    wrapper: &[&str],
    dir: &Path,
    tunables: &str,
    log: &str,
) -> (Child, Vec<String>) {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let state = dir.join("state");
    let args: Vec<String> = ["edge", "--dev", "--listen", "127.0.0.1:0", "--state"]
        .iter()
        .map(|a| a.to_string())
        .chain([state.to_str().unwrap().to_owned()])
        .collect();
    let mut cmd = postern_at(bin, &home, wrapper);
    cmd.args(&args)
        .env("GLIBC_TUNABLES", tunables)
        .env("RUST_LOG", log);
    let edge = Child::spawn("edge", cmd, dir);
    edge.wait_for_stderr("listening on", STARTUP)
        .unwrap_or_else(|e| panic!("edge did not start: {e}"));
    (edge, args)
}

/// The value of one variable in a process's environment, from /proc. glibc (2.36 seen) ends
/// each tunable it knows with a NUL in that copy of the environment, so a `GLIBC_TUNABLES` read
/// there stops after the first known one: the tests put a name glibc does not know first.
fn environ_of(pid: u32, name: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    raw.split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=').map(str::to_owned))
}

/// Whether SIGPIPE (signal 13, bit 12) is ignored in the process, from /proc.
fn sigpipe_ignored(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .expect("SigIgn");
    u64::from_str_radix(mask.trim(), 16).expect("hex mask") & (1 << 12) != 0
}

#[test]
fn on_an_amd_with_erms_the_process_starts_again_with_the_threshold_and_keeps_the_rest() {
    let dir = temp_dir("memcpy-tune");
    let theirs = "glibc.postern.unknown=7";
    let (edge, args) = edge_with(dir.path(), theirs, "info");
    let pid = edge.id();
    let expected = if tunes() {
        format!("{theirs}:{TUNABLE}")
    } else {
        theirs.to_owned()
    };
    assert_eq!(
        environ_of(pid, "GLIBC_TUNABLES").as_deref(),
        Some(&*expected)
    );
    // Its own name, not "exe", in ps, top and the journal; the same arguments, argv[0] too.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim_end(), "postern");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(argv[0], support::postern_bin().to_str().unwrap());
    assert_eq!(argv[1..], args[..]);
    assert!(sigpipe_ignored(pid));
}

#[test]
fn a_threshold_the_user_set_is_left_alone() {
    let dir = temp_dir("memcpy-theirs");
    let theirs = "glibc.postern.unknown=7:glibc.cpu.x86_rep_movsb_threshold=8192";
    let (edge, _) = edge_with(dir.path(), theirs, "debug");
    assert_eq!(
        environ_of(edge.id(), "GLIBC_TUNABLES").as_deref(),
        Some(theirs)
    );
    assert!(!edge.stderr_text().contains("default memcpy"));
}

#[test]
fn when_the_second_start_fails_the_process_goes_on_with_sigpipe_still_ignored() {
    let dir = temp_dir("memcpy-e2big");
    // One environment string may hold 128 KiB with its NUL (MAX_ARG_STRLEN): this one fits,
    // with the threshold appended it does not, so the second execve fails with E2BIG.
    let name_len = "GLIBC_TUNABLES=".len();
    let room = 128 * 1024 - 1 - name_len;
    let pad = "glibc.postern.pad=";
    let theirs = format!("{pad}{}", "x".repeat(room - pad.len() - 10));
    assert!(name_len + theirs.len() + 1 + TUNABLE.len() + 1 > 128 * 1024);
    let (edge, _) = edge_with(dir.path(), &theirs, "debug");
    let pid = edge.id();
    assert_eq!(
        environ_of(pid, "GLIBC_TUNABLES").map(|v| v.len()),
        Some(theirs.len())
    );
    let said = edge
        .stderr_text()
        .contains("going on with glibc's default memcpy");
    assert_eq!(said, tunes(), "{}", edge.stderr_text());
    // std set SIGPIPE to its default for the execve; postern ignores it again.
    assert!(sigpipe_ignored(pid));
}

/// A copy of postern with a file capability, run by another user than root, runs in
/// secure-execution mode, where glibc erases the tunable from its environment: postern must
/// not start again there, or the second start, not seeing the tunable, would start again
/// forever and never listen. (Root gains nothing from a file capability: no secure mode.)
#[test]
fn a_process_with_a_file_capability_does_not_start_again() {
    const NOBODY: u32 = 65534;
    let dir = temp_dir("memcpy-setcap");
    let bin = dir.path().join("postern");
    std::fs::copy(support::postern_bin(), &bin).expect("copy postern");
    let setcap = std::process::Command::new(require("setcap"))
        .arg("cap_net_bind_service=+ep")
        .arg(&bin)
        .output()
        .expect("run setcap");
    assert!(
        setcap.status.success(),
        "setcap (the tests run as root): {}",
        String::from_utf8_lossy(&setcap.stderr)
    );
    for sub in ["", "home"] {
        let path = dir.path().join(sub);
        std::fs::create_dir_all(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
    }
    let wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ];
    let (edge, _) = edge_of(
        &bin,
        &wrapper,
        dir.path(),
        "glibc.postern.unknown=7",
        "debug",
    );
    let auxv = std::fs::read(format!("/proc/{}/auxv", edge.id())).expect("auxv");
    assert!(
        secure(&auxv),
        "the copy did not run in secure-execution mode"
    );
    assert!(!edge.stderr_text().contains("default memcpy"));
}
