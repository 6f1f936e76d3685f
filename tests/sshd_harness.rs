//! The harness itself works: a direct ssh (no postern) to the test's private sshd runs a command,
//! authenticates with the generated user key and pins the generated host key.

use crate::support;

use std::process::Stdio;
use std::time::Duration;

use support::{require_all, run_with_deadline, temp_dir, Sshd};

#[test]
fn direct_ssh_to_private_sshd_runs_a_command() {
    require_all();
    let dir = temp_dir("sshd-harness");
    let sshd = Sshd::start(dir.path());
    let out = run_with_deadline(
        sshd.direct_ssh_command()
            .arg("echo harness-ok; id -un; exit 7")
            .stdin(Stdio::null()),
        Duration::from_secs(30),
        "direct ssh",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "remote exit status must come back; stderr:\n{}\nsshd:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.stderr_text()
    );
    assert_eq!(stdout, format!("harness-ok\n{}\n", sshd.user));
}

#[test]
fn direct_ssh_rejects_a_wrong_host_key() {
    require_all();
    let dir = temp_dir("sshd-harness-hostkey");
    let sshd = Sshd::start(dir.path());
    // Pin a different key: StrictHostKeyChecking=yes must refuse, proving the pin is real.
    let other = temp_dir("sshd-harness-other");
    let impostor = Sshd::start(other.path());
    std::fs::write(
        &sshd.known_hosts,
        format!("* {}\n", impostor.host_public_key),
    )
    .expect("rewrite known_hosts");
    let out = run_with_deadline(
        sshd.direct_ssh_command().arg("true").stdin(Stdio::null()),
        Duration::from_secs(30),
        "direct ssh with wrong host key",
    );
    assert!(
        !out.status.success(),
        "ssh must refuse a host key that is not pinned"
    );
}
