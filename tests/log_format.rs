//! `--log-format json` (and env `POSTERN_LOG_FORMAT=json`): every line a process writes to
//! stderr is one JSON object with `time` (RFC 3339, UTC), `level`, `target` and `message`,
//! through start-up, registration, a session, a refusal and shutdown.

use crate::support;

use std::time::Duration;

use support::{
    access_until_exit, free_port, origin_cert, postern, proxy_command, run_with_deadline,
    service_token, temp_dir, write_edge_config, Edge, Sshd, Tunnel, SSH_DEADLINE,
};

/// Asserts that every line of `log` is a JSON log object; returns the messages.
fn json_lines(who: &str, log: &str) -> Vec<String> {
    let mut messages = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{who}: a stderr line is not JSON ({e}): {line:?}"));
        let obj = v.as_object().unwrap_or_else(|| panic!("{who}: {line:?}"));
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["level", "message", "target", "time"],
            "{who}: {line}"
        );
        let time = obj["time"].as_str().expect("time string");
        // 2026-11-24T22:01:49.423Z
        let b = time.as_bytes();
        assert!(
            time.len() >= 20
                && time.ends_with('Z')
                && b[4] == b'-'
                && b[7] == b'-'
                && b[10] == b'T'
                && b[13] == b':'
                && b[16] == b':',
            "{who}: time is not RFC 3339 UTC: {time}"
        );
        let level = obj["level"].as_str().expect("level string");
        assert!(
            ["error", "warn", "info", "debug", "trace"].contains(&level),
            "{who}: level {level}"
        );
        assert!(obj["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("postern")));
        messages.push(obj["message"].as_str().expect("message string").to_string());
    }
    messages
}

#[test]
fn every_stderr_line_is_a_json_object() {
    support::require_all();
    let dir = temp_dir("log-format");
    let sshd = Sshd::start(dir.path());
    let state = dir.join("edge-state");
    let config = dir.join("edge.json");
    write_edge_config(
        &config,
        &format!("127.0.0.1:{}", free_port()),
        &state,
        serde_json::json!([{ "any_valid_service_token": true }]),
        serde_json::json!({}),
    );
    let edge = Edge::start_config(dir.path(), &config, &state, &["--log-format", "json"]);
    let token = service_token(&state, "logs");
    let cert = dir.join("cert.pem");
    origin_cert(&state, "localhost", &cert, &edge.addr);
    let tunnel = Tunnel::spawn_env(
        dir.path(),
        "tunnel",
        "logs.localhost",
        &sshd.url(),
        &cert,
        &edge,
        &[("POSTERN_LOG_FORMAT", "json")],
    );
    tunnel.wait_registered(1, support::STARTUP);

    let proxy = proxy_command(&edge.addr, &edge.ca(), &token);
    let mut ssh = sshd.ssh_command("logs.localhost", &proxy);
    ssh.env("HOME", dir.join("home"));
    let out = run_with_deadline(
        ssh.arg("echo logged").stdin(std::process::Stdio::null()),
        SSH_DEADLINE,
        "ssh through postern",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A refusal, from a client that takes the flag before its command.
    let mut access = postern(&dir.join("home"));
    access
        .args(["--log-format", "json", "access", "ssh", "--hostname"])
        .arg("logs.localhost")
        .arg("--edge")
        .arg(edge.addr.to_string())
        .arg("--ca")
        .arg(edge.ca())
        .env("POSTERN_SERVICE_TOKEN_ID", &token.id)
        .env("POSTERN_SERVICE_TOKEN_SECRET", "wrong-secret-value");
    let (status, client_log) = access_until_exit(access, Duration::from_secs(20));
    assert!(!status.success());
    edge.child()
        .wait_for_stderr("denied", Duration::from_secs(10))
        .expect("the edge logs the refusal");

    edge.child().stop();
    tunnel.child().stop();
    let edge_log = edge.stderr_text();
    let messages = json_lines("edge", &edge_log);
    assert!(messages.iter().any(|m| m.contains("listening on")));
    assert!(messages.iter().any(|m| m.contains("tunnel registered")));
    assert!(messages
        .iter()
        .any(|m| m.starts_with("denied logs.localhost")));
    assert!(messages.iter().any(|m| m.contains("shutting down")));
    assert!(
        !edge_log.contains("wrong-secret-value"),
        "the presented secret was logged"
    );
    let tunnel_messages = json_lines("tunnel", &tunnel.child().stderr_text());
    assert!(tunnel_messages
        .iter()
        .any(|m| m.contains("registered logs.localhost")));
    // The client prints its refusal as a plain `postern: …` line after the logger's lines;
    // every logger line is JSON.
    for line in client_log.lines().filter(|l| l.starts_with('{')) {
        json_lines("access", line);
    }
}
