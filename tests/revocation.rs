//! Revocation end to end: `postern edge service-token revoke NAME` and `postern edge
//! origin-cert revoke FILE` against a running edge, with real sshd, ssh and tunnels.
//!
//! The CLI writes `revocations.json` in the edge's state directory; the edge's store worker
//! looks at the file every second (a `stat`) and the edge ends what uses the revoked
//! credential: an open ssh session's carrier gets a WebSocket Close "service token revoked",
//! a tunnel connection gets ERROR "origin certificate revoked". The edge acts within 2 s of
//! the command; the deadlines below add a second for the processes (ssh, the tunnel, the
//! edge's once-a-second `/ready` recount) to show it on a loaded machine.

use crate::support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::ready::wait_ready;
use support::{
    postern, proxy_command, run_ok, service_token, wait_until, Chain, Child, ServiceToken, Tunnel,
};

/// The bound the edge promises, plus a second for the processes to show it.
const REVOKED_WITHIN: Duration = Duration::from_secs(3);

fn revoke(chain: &Chain, what: &[&str]) -> String {
    let mut cmd = postern(&chain.dir.join("home"));
    cmd.args(["edge"])
        .args(what)
        .arg("--state")
        .arg(&chain.edge.state);
    run_ok(&mut cmd, &format!("postern edge {}", what.join(" ")))
}

/// An ssh session through the chain with `token`, running a command that prints `marker`
/// and then waits; returns once `marker` is on its stdout (the session is open).
fn open_session(chain: &Chain, token: &ServiceToken, marker: &str) -> Child {
    let proxy = proxy_command(&chain.edge.addr, &chain.edge.ca(), token);
    let mut cmd: Command = chain.sshd.ssh_command(&chain.hostname, &proxy);
    cmd.env("HOME", chain.dir.join("home"));
    cmd.arg(format!("echo {marker}; exec sleep 120"));
    let child = Child::spawn(marker, cmd, chain.dir.path());
    wait_until(
        Duration::from_secs(30),
        &format!("ssh session {marker} open"),
        || child.stdout_text().contains(marker) || child.try_wait().is_some(),
    );
    assert!(
        child.try_wait().is_none(),
        "ssh {marker} ended early: {}",
        child.stderr_text()
    );
    child
}

#[test]
fn a_revoked_service_token_ends_its_open_session_and_is_refused_after() {
    let chain = Chain::start("revoke-token", "revoke-token.localhost");
    let other = service_token(&chain.edge.state, "other");
    let revoked_session = open_session(&chain, &chain.token, "revoked-session");
    let other_session = open_session(&chain, &other, "other-session");

    let out = revoke(&chain, &["service-token", "revoke", "e2e"]);
    let start = Instant::now();
    assert!(
        out.contains("Revoked service token e2e") && out.contains(&chain.token.id),
        "{out}"
    );
    let status = revoked_session
        .wait_exit(REVOKED_WITHIN)
        .unwrap_or_else(|e| panic!("the revoked token's session goes on: {e}"));
    assert!(!status.success(), "ssh {status}");
    let stderr = revoked_session.stderr_text();
    assert!(
        stderr.contains("service token revoked"),
        "ssh's stderr names the reason:\n{stderr}"
    );
    eprintln!("session ended {:?} after the revoke", start.elapsed());
    assert!(
        other_session.try_wait().is_none(),
        "another token's session is untouched: {}",
        other_session.stderr_text()
    );

    // A new session with the revoked token is refused, saying why.
    let (status, stderr) = chain.access_ssh_direct(
        &chain.hostname,
        &chain.edge.ca(),
        &chain.token.id,
        &chain.token.secret,
    );
    assert!(!status.success());
    assert!(stderr.contains("revoked"), "{stderr}");
    let edge = chain.edge.stderr_text();
    assert!(
        edge.contains(&format!("service token {} revoked", chain.token.id)),
        "the edge logs the close:\n{}",
        support::tail(&edge, 3000)
    );

    // The audit log has the close and the refusal, each with its reason.
    support::audit_when(
        &chain.edge.state.join("audit.log"),
        Duration::from_secs(10),
        "the revocation's close and refusal in the audit log",
        |text| {
            text.lines().any(|l| {
                l.contains("\"decision\":\"close\"") && l.contains("service token revoked")
            }) && text
                .lines()
                .any(|l| l.contains("\"decision\":\"deny\"") && l.contains("service token revoked"))
        },
    );

    // Revoking again is no error, and says so; an unknown name is an error.
    let again = revoke(&chain, &["service-token", "revoke", "e2e"]);
    assert!(again.contains("already revoked"), "{again}");
    let unknown = postern(&chain.dir.join("home"))
        .args(["edge", "service-token", "revoke", "nobody", "--state"])
        .arg(&chain.edge.state)
        .output()
        .expect("postern runs");
    assert!(!unknown.status.success());
    let text = String::from_utf8_lossy(&unknown.stderr);
    assert!(text.contains("no service token named \"nobody\""), "{text}");

    assert!(other_session.try_wait().is_none());
    other_session.kill();
}

#[test]
fn a_revoked_origin_certificate_ends_its_tunnel_and_its_reconnects_are_refused() {
    let chain = Chain::start("revoke-cert", "revoke-cert.localhost");
    let edge = &chain.edge;
    wait_ready(
        edge.child(),
        &edge.metrics,
        Duration::from_secs(20),
        "the tunnel registered",
        |v| v["readyConnections"].as_u64().is_some_and(|n| n >= 1),
    )
    .unwrap();

    let cert = chain.origin_cert.to_str().unwrap();
    let out = revoke(&chain, &["origin-cert", "revoke", cert]);
    assert!(out.contains("Revoked origin certificate"), "{out}");
    wait_ready(
        edge.child(),
        &edge.metrics,
        REVOKED_WITHIN,
        "no tunnel connection left",
        |v| v["readyConnections"].as_u64() == Some(0),
    )
    .unwrap_or_else(|e| panic!("the revoked certificate's tunnel goes on: {e}"));

    // The tunnel was told why, and stops: the refusal is final.
    let tunnel = chain.tunnel.child();
    tunnel
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the tunnel kept reconnecting: {e}"));
    assert!(
        tunnel.stderr_text().contains("origin certificate revoked"),
        "{}",
        tunnel.stderr_text()
    );

    // Started again with the same certificate: refused as soon as it connects.
    let again = Tunnel::spawn(
        chain.dir.path(),
        "tunnel-again",
        &chain.hostname,
        &chain.sshd.url(),
        &chain.origin_cert,
        edge,
    );
    let status = again
        .child()
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("a revoked certificate registered again: {e}"));
    assert!(!status.success());
    assert!(
        again
            .child()
            .stderr_text()
            .contains("origin certificate revoked"),
        "{}",
        again.child().stderr_text()
    );
    let log = edge.stderr_text();
    assert!(
        log.contains("origin certificate revoked"),
        "{}",
        support::tail(&log, 3000)
    );
    support::audit_when(
        &edge.state.join("audit.log"),
        Duration::from_secs(10),
        "the tunnel's close and its reconnect's refusal in the audit log",
        |text| {
            text.lines().any(|l| {
                l.contains("\"decision\":\"close\"") && l.contains("origin certificate revoked")
            }) && text.lines().any(|l| {
                l.contains("\"decision\":\"deny\"") && l.contains("origin certificate revoked")
            })
        },
    );
    let again = revoke(&chain, &["origin-cert", "revoke", cert]);
    assert!(again.contains("already revoked"), "{again}");
}
