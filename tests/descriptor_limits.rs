//! Descriptor exhaustion: the edge raises its open-file soft limit to the hard limit, caps
//! `limits.max_connections` to what the descriptors allow (saying so), and when `accept` still
//! runs out of descriptors it neither spins nor floods the log, and accepts again by itself
//! once descriptors are free.
//!
//! Limits are set with util-linux's `prlimit`: on the command line it sets its own limits and
//! execs the edge (same pid); `prlimit --pid` changes a running edge's limits.

use crate::support;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::ready::{metrics_listen, wait_edge_listening};
use support::{postern_via, raw, temp_dir, wait_until, Child, STARTUP};

/// `(soft, hard)` "Max open files" of a process, from /proc.
fn open_file_limits(pid: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().expect("soft"), numbers.next().expect("hard"))
}

/// The descriptor numbers the process has open now.
fn fds(pid: u32) -> Vec<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fd dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn open_fds(pid: u32) -> usize {
    fds(pid).len()
}

/// The descriptor the process's next `accept` would get: the lowest free number. A soft
/// limit at or below it makes that `accept` fail with EMFILE.
fn lowest_free_fd(pid: u32) -> usize {
    let open = fds(pid);
    (0..).find(|n| !open.contains(n)).unwrap()
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which is in parentheses): state is field 3; utime and
    // stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn set_limits(pid: u32, soft: usize, hard: usize) {
    support::run_ok(
        Command::new(support::require("prlimit"))
            .arg("--pid")
            .arg(pid.to_string())
            .arg(format!("--nofile={soft}:{hard}")),
        "prlimit --pid",
    );
}

/// `prlimit --nofile=SOFT:HARD -- postern edge --dev` on a random port.
fn start_edge(dir: &Path, soft: u64, hard: u64) -> (Child, std::net::SocketAddr) {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let nofile = format!("--nofile={soft}:{hard}");
    let mut cmd = postern_via(&home, &["prlimit", &nofile, "--"]);
    // The metrics listener and its connection are within the edge's FD_RESERVE.
    let metrics = metrics_listen();
    cmd.args(["edge", "--dev", "--listen", "127.0.0.1:0", "--state"])
        .arg(dir.join("edge-state"))
        .arg("--metrics")
        .arg(metrics.to_string());
    let edge = Child::spawn("edge", cmd, dir);
    let addr = wait_edge_listening(&edge, &metrics, STARTUP)
        .unwrap_or_else(|e| panic!("edge did not start: {e}"));
    (edge, addr)
}

#[test]
fn edge_raises_its_open_file_soft_limit_to_the_hard_limit() {
    let dir = temp_dir("fd-raise");
    let (_, ours) = open_file_limits("self");
    let hard = ours.min(4096);
    assert!(
        hard > 64,
        "this test needs a hard open-file limit above 64 (have {ours})"
    );
    let (edge, _) = start_edge(dir.path(), 64, hard);
    assert_eq!(
        open_file_limits(&edge.id().to_string()),
        (hard, hard),
        "the edge started with soft limit 64 must raise it to the hard limit {hard}"
    );
}

#[test]
fn edge_with_few_descriptors_caps_connections_and_survives_emfile() {
    let dir = temp_dir("fd-emfile");
    let (edge, addr) = start_edge(dir.path(), 64, 64);
    let pid = edge.id();
    let ca = dir.path().join("edge-state/ca.pem");

    // 1. The default max_connections (50000) cannot fit in 64 descriptors: capped, and said.
    let text = edge.stderr_text();
    let needle = "is more than the open-file limit allows: capped at ";
    let at = text.find(needle).unwrap_or_else(|| {
        panic!("the edge must warn that limits.max_connections is capped; stderr:\n{text}")
    }) + needle.len();
    assert!(
        text[..at].contains("limits.max_connections (50000)"),
        "{text}"
    );
    let cap: usize = text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("the cap");
    assert!(cap > 0 && cap < 64, "cap {cap}");

    // 2. Connections beyond the cap are closed at accept (the limit, logged once), not left to
    //    fail in accept: the edge keeps descriptors for itself.
    let mut held: Vec<TcpStream> = (0..cap + 8)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    for (i, s) in held.iter_mut().enumerate().skip(cap) {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        raw::wait_closed(s, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connection {} beyond the cap: {e}", i + 1));
    }
    edge.wait_for_stderr(
        &format!("{cap} connections open (limits.max_connections)"),
        Duration::from_secs(5),
    )
    .expect("the cap refuses like limits.max_connections");
    assert!(
        !edge.stderr_text().contains("accept:"),
        "within the cap, accept must not run out of descriptors:\n{}",
        edge.stderr_text()
    );
    held.truncate(cap);

    // 3. Take the rest away (as if something else used them): accept now fails with EMFILE.
    let in_use = open_fds(pid);
    set_limits(pid, lowest_free_fd(pid), 64);
    let before = cpu_ticks(pid);
    let waiting: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(addr).expect("connect (kernel backlog)"))
        .collect();
    edge.wait_for_stderr("accept: ", Duration::from_secs(5))
        .expect("the edge logs that accept fails");
    // Some retries happen meanwhile; a busy loop would burn the whole window.
    let window = Duration::from_secs(2);
    let start = std::time::Instant::now();
    wait_until(
        window + Duration::from_secs(1),
        "the measuring window",
        || start.elapsed() >= window,
    );
    let used = cpu_ticks(pid) - before;
    assert!(
        used < 50,
        "the edge used {used} ticks of CPU in 2 s while out of descriptors (a busy loop?)"
    );
    let text = edge.stderr_text();
    assert_eq!(
        text.matches("accept: ").count(),
        1,
        "20 failed accepts and their retries are one line per interval; stderr:\n{text}"
    );
    assert!(text.contains("Too many open files"), "{text}");

    // 4. Descriptors back: the 20 connections already waiting are accepted with no new
    //    connection to wake the listener, and a new client is served.
    //    The held connections go first, and the edge has closed them before its descriptors
    //    come back: the other order raced, when a retry of accept fell between the two, the
    //    edge was still at the cap and closed the waiting connections as it took them.
    drop(held);
    wait_until(
        Duration::from_secs(5),
        "the edge to close the held connections",
        || open_fds(pid) <= in_use - cap,
    );
    set_limits(pid, 64, 64);
    wait_until(
        Duration::from_secs(5),
        "the waiting connections to be accepted",
        || open_fds(pid) >= in_use - cap + 20,
    );
    drop(waiting);
    // The edge sees the dropped connections' ends on its next passes; until then a new client
    // may still meet the cap (closed at accept), so it tries again for a while, as one would.
    let mut tls = None;
    wait_until(Duration::from_secs(5), "a new client to be served", || {
        tls = raw::try_carrier(addr, &ca, "ssh.localhost").ok();
        tls.is_some()
    });
    let mut tls = tls.expect("served");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: ssh.localhost\r\n\r\n")
        .expect("send request");
    let (head, _) = raw::read_head(&mut tls);
    assert!(head.starts_with("HTTP/1.1 400"), "served again: {head}");
    assert!(edge.try_wait().is_none(), "the edge exited");
}
