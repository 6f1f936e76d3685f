//! `--metrics ADDR` on the edge and the origin: `/ready` is 503 until a tunnel connection is
//! registered and 200 after; `/metrics` is Prometheus text whose counters follow real traffic
//! (an ssh session, a refused service token).

use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::ready::{metrics_listen, wait_ready};
use support::{
    access_until_exit, http_get, origin_cert, postern, proxy_command, run_with_deadline,
    service_token, temp_dir, wait_until, Edge, Sshd, Tunnel, SSH_DEADLINE, STARTUP,
};

/// Parses Prometheus text: every line is a comment or `name{labels} value`; returns the
/// samples keyed by `name{labels}`.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            assert!(
                rest.starts_with(" HELP postern_") || rest.starts_with(" TYPE postern_"),
                "comment is not HELP or TYPE: {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "bad labels in {line:?}"
            );
            for pair in labels[1..labels.len() - 1].split(',') {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                assert!(!k.is_empty() && v.starts_with('"') && v.ends_with('"'));
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("value of {line:?}: {e}"));
        samples.insert(series.to_string(), v);
    }
    samples
}

fn scrape(addr: &SocketAddr) -> HashMap<String, f64> {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse_prometheus(&body)
}

fn ready(addr: &SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = http_get(addr, "/ready");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/ready body {body:?}: {e}"));
    assert_eq!(v["status"], status, "status field matches: {body}");
    let id = v["connectorId"].as_str().expect("connectorId string");
    assert_eq!(id.len(), 36, "connectorId is a UUID: {id}");
    assert_eq!(id.matches('-').count(), 4, "connectorId is a UUID: {id}");
    (status, v)
}

fn get(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series}; have {:?}", samples.keys()))
}

#[test]
fn ready_follows_registration_and_metrics_follow_traffic() {
    support::require_all();
    let dir = temp_dir("metrics-ready");
    let sshd = Sshd::start(dir.path());
    // The harness serves the edge's metrics with `--metrics IP:PORT` (and waits on `/ready`).
    let mut edge = Edge::start(dir.path());
    let edge_metrics = edge.metrics;
    let (status, v) = ready(&edge_metrics);
    assert_eq!(status, 503, "no tunnel yet: {v}");
    assert_eq!(v["readyConnections"], 0);
    assert_eq!(
        v["listening"],
        edge.addr.to_string(),
        "the edge says where it listens"
    );
    let token = service_token(&edge.state, "metrics");
    let cert = dir.join("cert.pem");
    origin_cert(&edge.state, "localhost", &cert, &edge.addr);

    // The origin starts while the edge is down: not ready.
    edge.child().stop();
    let origin_metrics = metrics_listen();
    let tunnel = Tunnel::spawn_env(
        dir.path(),
        "tunnel",
        "metrics.localhost",
        &sshd.url(),
        &cert,
        &edge,
        &[("POSTERN_METRICS", &origin_metrics.to_string())],
    );
    assert_eq!(tunnel.metrics, origin_metrics);
    wait_ready(
        tunnel.child(),
        &origin_metrics,
        STARTUP,
        "origin /ready answers",
        |_| true,
    )
    .unwrap_or_else(|e| panic!("POSTERN_METRICS serves nothing: {e}"));
    let (status, v) = ready(&origin_metrics);
    assert_eq!(status, 503, "edge is down: {v}");
    assert_eq!(v["readyConnections"], 0);
    let connector = v["connectorId"].clone();

    // The edge comes back: the origin registers and both say ready.
    edge.restart();
    tunnel.wait_registered(1, STARTUP);
    wait_until(STARTUP, "origin /ready 200", || {
        ready(&origin_metrics).0 == 200
    });
    let (_, v) = ready(&origin_metrics);
    assert!(v["readyConnections"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["connectorId"], connector, "the connector id is stable");
    wait_until(STARTUP, "edge /ready 200", || ready(&edge_metrics).0 == 200);
    let (_, v) = ready(&edge_metrics);
    assert!(v["readyConnections"].as_u64().unwrap() >= 1, "{v}");

    let before = scrape(&edge_metrics);
    assert_eq!(
        get(
            &before,
            "postern_edge_auth_decisions_total{decision=\"allow\",reason=\"service_token\"}"
        ),
        0.0
    );

    // One ssh command through postern.
    let proxy = proxy_command(&edge.addr, &edge.ca(), &token);
    let mut ssh = sshd.ssh_command("metrics.localhost", &proxy);
    ssh.env("HOME", dir.join("home"));
    let out = run_with_deadline(
        ssh.arg("echo metrics-marker")
            .stdin(std::process::Stdio::null()),
        SSH_DEADLINE,
        "ssh through postern",
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "metrics-marker",
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let e = scrape(&edge_metrics);
    let o = scrape(&origin_metrics);
    assert!(get(&e, "postern_edge_streams_total") >= 1.0);
    assert!(get(&o, "postern_tunnel_streams_total") >= 1.0);
    for dir in ["client_to_origin", "origin_to_client"] {
        let series = format!("postern_edge_bytes_total{{direction=\"{dir}\"}}");
        assert!(get(&e, &series) > 0.0, "{series}");
        let series = format!("postern_tunnel_bytes_total{{direction=\"{dir}\"}}");
        assert!(get(&o, &series) > 0.0, "{series}");
    }
    assert_eq!(
        get(
            &e,
            "postern_edge_auth_decisions_total{decision=\"allow\",reason=\"service_token\"}"
        ),
        1.0
    );
    assert_eq!(get(&e, "postern_edge_build_info{version=\"0.1.0\"}"), 1.0);
    assert!(get(&e, "postern_edge_tls_handshake_seconds_count") >= 2.0);
    assert!(get(&o, "postern_tunnel_tls_handshake_seconds_count") >= 1.0);
    // ssh's handshake is small messages both ways: each process timed some of them through
    // its queues (its banner, KEXINIT, the key exchange), in well under a second each.
    for (m, p) in [(&e, "postern_edge"), (&o, "postern_tunnel")] {
        let n = get(m, &format!("{p}_interactive_hold_seconds_count"));
        let sum = get(m, &format!("{p}_interactive_hold_seconds_sum"));
        assert!(n >= 4.0 && sum < n, "{p}: {n} holds, {sum} s in all");
    }
    assert!(get(&o, "postern_tunnel_reconnects_total") >= 1.0);
    assert!(get(&e, "postern_edge_connections{kind=\"tunnel\"}") >= 1.0);
    // The origin measured its connection's round trip (the probe PING on the edge's first
    // frame): on loopback, well under a second and more than nothing.
    let rtt: Vec<f64> = o
        .iter()
        .filter(|(k, _)| k.starts_with("postern_tunnel_edge_rtt_seconds{edge="))
        .map(|(_, v)| *v)
        .collect();
    assert!(
        rtt.len() == 1 && rtt[0] > 0.0 && rtt[0] < 1.0,
        "one edge's round trip: {rtt:?}"
    );

    // A refused service token is a deny with its reason.
    let deny = "postern_edge_auth_decisions_total{decision=\"deny\",reason=\"bad_service_token\"}";
    assert_eq!(get(&e, deny), 0.0);
    let mut access = postern(&dir.join("home"));
    access
        .args(["access", "ssh", "--hostname", "metrics.localhost", "--edge"])
        .arg(edge.addr.to_string())
        .arg("--ca")
        .arg(edge.ca())
        .env("POSTERN_SERVICE_TOKEN_ID", &token.id)
        .env("POSTERN_SERVICE_TOKEN_SECRET", "wrong-secret");
    let (status, stderr) = access_until_exit(access, Duration::from_secs(20));
    assert!(
        !status.success(),
        "a wrong secret must be refused: {stderr}"
    );
    let e = scrape(&edge_metrics);
    assert_eq!(get(&e, deny), 1.0);
    let body = http_get(&edge_metrics, "/metrics").1;
    assert!(!body.contains(&token.secret) && !body.contains("metrics.localhost"));

    // Only the two paths exist.
    assert_eq!(http_get(&edge_metrics, "/").0, 404);
    assert_eq!(http_get(&origin_metrics, "/metrics/x").0, 404);
}
