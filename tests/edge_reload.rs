//! SIGHUP re-reads the edge's config file: new policies apply to new connections at once, open
//! sessions the new policies still allow keep running (the ones they no longer allow end:
//! tests/live_sessions.rs), restart-only fields keep their value with a warning, and a broken
//! file is refused by name while the running config stays in effect.

use crate::support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{
    access_until_exit, free_port, http_get, origin_cert, postern, proxy_command, run_with_deadline,
    service_token, temp_dir, write_edge_config, Edge, ServiceToken, Sshd, Tunnel, SSH_DEADLINE,
    STARTUP,
};

fn hup(edge: &Edge) {
    let status = Command::new("kill")
        .args(["-HUP", &edge.child().id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}

/// Runs `postern access ssh` with `token`, asserts that the edge refuses it, and returns its
/// stderr.
fn refused(dir: &std::path::Path, edge: &Edge, token: &ServiceToken) -> String {
    let mut cmd = postern(&dir.join("home"));
    cmd.args(["access", "ssh", "--hostname", "reload.localhost", "--edge"])
        .arg(edge.addr.to_string())
        .arg("--ca")
        .arg(edge.ca())
        .env("POSTERN_SERVICE_TOKEN_ID", &token.id)
        .env("POSTERN_SERVICE_TOKEN_SECRET", &token.secret);
    let (status, stderr) = access_until_exit(cmd, Duration::from_secs(20));
    assert!(
        !status.success(),
        "the token must be refused; stderr:\n{stderr}"
    );
    stderr
}

#[test]
fn sighup_swaps_policies_and_keeps_the_sessions_they_still_allow() {
    support::require_all();
    let dir = temp_dir("edge-reload");
    let sshd = Sshd::start(dir.path());
    let state = dir.join("edge-state");
    let config = dir.join("edge.json");
    let listen = format!("127.0.0.1:{}", free_port());
    let token_a = service_token(&state, "token-a");
    let token_b = service_token(&state, "token-b");
    write_edge_config(
        &config,
        &listen,
        &state,
        serde_json::json!([{ "service_token": "token-a" }]),
        serde_json::json!({}),
    );
    let edge = Edge::start_config(dir.path(), &config, &state, &[]);
    let metrics = edge.metrics;
    let cert = dir.join("cert.pem");
    origin_cert(&state, "localhost", &cert, &edge.addr);
    let _tunnel = Tunnel::start(dir.path(), "reload.localhost", &sshd.url(), &cert, &edge);
    let ssh = |token: &ServiceToken| {
        let mut cmd = sshd.ssh_command(
            "reload.localhost",
            &proxy_command(&edge.addr, &edge.ca(), token),
        );
        cmd.env("HOME", dir.join("home"));
        cmd
    };
    let ssh_echo = |token: &ServiceToken, marker: &str| {
        let out = run_with_deadline(
            ssh(token)
                .arg(format!("echo {marker}"))
                .stdin(Stdio::null()),
            SSH_DEADLINE,
            "ssh through postern",
        );
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == marker
    };
    assert!(
        ssh_echo(&token_a, "a-before"),
        "token A is admitted at start"
    );
    assert!(refused(dir.path(), &edge, &token_b).contains("refused"));

    // A session with token A that outlives the reload.
    let mut session = ssh(&token_a)
        .arg("echo ready; read x; echo got $x")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ssh");
    let mut lines = BufReader::new(session.stdout.take().expect("stdout"));
    let mut line = String::new();
    lines.read_line(&mut line).expect("read");
    assert_eq!(
        line.trim(),
        "ready",
        "the session is open before the reload"
    );

    // Token B too now (A's session is still allowed), and a restart-only field changed.
    write_edge_config(
        &config,
        &listen,
        &state,
        serde_json::json!([{ "service_token": "token-b" }, { "service_token": "token-a" }]),
        serde_json::json!({ "public_url": "https://login.localhost:9" }),
    );
    hup(&edge);
    let log = edge
        .child()
        .wait_for_stderr("config reloaded from", STARTUP)
        .expect("the edge reloads on SIGHUP");
    assert!(log.contains(&config.display().to_string()), "{log}");
    assert!(
        log.contains("`public_url` changed"),
        "a restart-only field is named: {log}"
    );
    assert!(
        ssh_echo(&token_b, "b-after"),
        "token B is admitted after the reload"
    );

    // The old session still works both ways and ends cleanly.
    let mut stdin = session.stdin.take().expect("stdin");
    writeln!(stdin, "still-here").expect("write to the session");
    drop(stdin);
    line.clear();
    lines.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "got still-here");
    assert!(session.wait().expect("wait ssh").success());

    // A broken file is refused by name; the running config (tokens B and A) stays.
    let good = std::fs::read_to_string(&config).unwrap();
    let broken = good.replacen('{', "{\n  \"bogus_field\": 1,", 1);
    std::fs::write(&config, broken).unwrap();
    hup(&edge);
    let log = edge
        .child()
        .wait_for_stderr("bogus_field", STARTUP)
        .expect("the refusal names the field");
    let refusal = log
        .lines()
        .find(|l| l.contains("bogus_field"))
        .expect("line");
    assert!(refusal.contains("refused"), "{refusal}");
    assert!(
        refusal.contains(&config.display().to_string()),
        "names the file: {refusal}"
    );
    assert_eq!(log.matches("config reloaded from").count(), 1);
    assert!(
        ssh_echo(&token_b, "b-after-broken"),
        "the running config stays"
    );

    let (_, body) = http_get(&metrics, "/metrics");
    assert!(
        body.contains("postern_edge_config_reloads_total{result=\"ok\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("postern_edge_config_reloads_total{result=\"error\"} 1"),
        "{body}"
    );
}

#[test]
fn sighup_on_a_dev_edge_has_nothing_to_reload() {
    let dir = temp_dir("edge-reload-dev");
    let edge = Edge::start(dir.path());
    hup(&edge);
    edge.child()
        .wait_for_stderr("nothing to reload", STARTUP)
        .expect("a dev edge says there is nothing to reload");
    assert!(
        edge.child().try_wait().is_none(),
        "SIGHUP does not stop the edge"
    );
}
