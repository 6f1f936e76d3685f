//! SIGTERM on the origin drains: a session that is open when the signal arrives finishes its
//! work, new streams are refused, and the tunnel then exits 0 by itself.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::Chain;

#[test]
fn sigterm_lets_open_sessions_finish_then_exits_zero() {
    let chain = Chain::start("sigterm-drain", "drain.localhost");
    let mut ssh = chain
        .ssh()
        .arg("echo started; sleep 2; echo finished-after-sigterm")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh");
    let mut lines = BufReader::new(ssh.stdout.take().expect("stdout"));
    let mut first = String::new();
    lines.read_line(&mut first).expect("read");
    assert_eq!(
        first.trim(),
        "started",
        "the session must be open before SIGTERM"
    );

    let pid = chain.tunnel.child().id();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    chain
        .tunnel
        .child()
        .wait_for_stderr("draining", Duration::from_secs(5))
        .expect("the tunnel must announce the drain");

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut lines, &mut rest).expect("read rest");
    let st = ssh.wait().expect("ssh wait");
    assert!(st.success(), "the open session must finish cleanly: {st}");
    assert_eq!(rest.trim(), "finished-after-sigterm");

    let start = Instant::now();
    let exit = chain
        .tunnel
        .child()
        .wait_exit(Duration::from_secs(10))
        .expect("the tunnel must exit after draining");
    assert_eq!(exit.code(), Some(0), "drained tunnel exits 0");
    assert!(start.elapsed() < Duration::from_secs(10));
}
