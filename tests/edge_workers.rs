//! `postern edge --workers N` (docs/design.md §2.9): the origin's tunnel connections are
//! spread over the edge's event loops, and each ssh session is served by the loop of the
//! tunnel connection it was routed to; what the operator sees and does covers every loop.
//! Real sshd with its default settings, real ssh with `postern access ssh` as ProxyCommand, a
//! real origin with its default four connections, one dev edge with three loops.
//!
//! - each of the four tunnel connections is served by a loop, and loops 1 and 2 both serve one;
//! - eight ssh sessions open at once, each through one of them, and all answer;
//! - `postern edge sessions list` shows all eight with their bytes, `sessions kill` ends one
//!   (ssh says why), and the others go on and finish with their own output;
//! - `/ready` counts the four connections; SIGTERM to the edge reaches every connection
//!   (the origin logs "edge is going away" on each) and the edge exits 0.

use crate::support;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{
    origin_cert, postern, proxy_command, run_ok, service_token, shell_quote, temp_dir, wait_until,
    Child, Edge, Sshd, Tunnel,
};

const HOST: &str = "loops.localhost";
const SESSIONS: usize = 8;

#[test]
fn with_three_loops_sessions_spread_over_them_and_the_operator_sees_and_ends_them_all() {
    support::require_all();
    let dir = temp_dir("edge-workers");
    let sshd = Sshd::start_default(dir.path());
    let edge = Edge::start_args(dir.path(), &["--workers", "3"]);
    let token = service_token(&edge.state, "loops");
    let cert = dir.join("cert.pem");
    origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    let tunnel = Tunnel::start(dir.path(), HOST, &sshd.url(), &cert, &edge);
    edge.wait_registered(4, Duration::from_secs(30));

    // Which loop serves each connection: one line per connection that left loop 0.
    let log = edge.stderr_text();
    assert!(log.contains("3 event loops"), "{log}");
    for lp in [1, 2] {
        assert!(
            log.contains(&format!("is served by loop {lp}")),
            "a tunnel connection on loop {lp}:\n{log}"
        );
    }

    // Eight sessions held open together: each marks itself, then waits for the release.
    let ready = dir.join("ready");
    let release = dir.join("release");
    fs::create_dir_all(&ready).unwrap();
    let (ready_q, release_q) = (
        shell_quote(&ready.display().to_string()),
        shell_quote(&release.display().to_string()),
    );
    let proxy = proxy_command(&edge.addr, &edge.ca(), &token);
    let sessions: Vec<Child> = (0..SESSIONS)
        .map(|n| {
            let mut cmd: Command = sshd.ssh_command(HOST, &proxy);
            cmd.env("HOME", dir.join("home"));
            cmd.arg(format!(
                "head -c 10000 /dev/zero | tr '\\0' x; echo; touch {ready_q}/{n}; i=0; \
                 while [ ! -e {release_q} ]; do \
                   i=$((i + 1)); [ $i -gt 1200 ] && {{ echo release-timeout; exit 9; }}; \
                   sleep 0.05; \
                 done; echo session-{n}"
            ));
            Child::spawn(&format!("ssh-{n}"), cmd, dir.path())
        })
        .collect();
    wait_until(Duration::from_secs(60), "eight sessions open", || {
        fs::read_dir(&ready).map_or(0, |d| d.count()) == SESSIONS
            || sessions.iter().any(|s| s.try_wait().is_some())
    });
    for s in &sessions {
        assert!(s.try_wait().is_none(), "{}: {}", s.name(), s.stderr_text());
    }

    let admin = |args: &[&str]| {
        run_ok(
            postern(&dir.join("home"))
                .args(["edge", "sessions"])
                .args(args)
                .arg("--origincert")
                .arg(&cert)
                .args(["--edge", &edge.edge_arg(), "--ca"])
                .arg(edge.ca())
                .stdin(Stdio::null()),
            &format!("postern edge sessions {}", args.join(" ")),
        )
    };
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&admin(&["list", "--output", "json"])).expect("sessions JSON");
    assert_eq!(list.len(), SESSIONS, "{list:#?}");
    for s in &list {
        assert_eq!(s["hostname"], HOST);
        assert!(s["bytes_down"].as_u64().unwrap() >= 10_000, "{s}");
        assert!(s["bytes_up"].as_u64().unwrap() > 0, "{s}");
    }
    // The gauge (set once a second) counts every loop's streams.
    wait_until(Duration::from_secs(5), "eight streams in /metrics", || {
        metric(&edge, "postern_edge_streams_active") == SESSIONS as u64
    });
    // Per loop: each counts what it serves itself (a carrier on its tunnel's loop), so the
    // loops add up to the edge's totals, and the workers hold tunnels and have worked.
    let per_loop = |kind: &str| -> Vec<u64> {
        (0..3)
            .map(|lp| {
                metric(
                    &edge,
                    &format!("postern_edge_loop_connections{{loop=\"{lp}\",kind=\"{kind}\"}}"),
                )
            })
            .collect()
    };
    wait_until(Duration::from_secs(5), "the loops' carriers add up", || {
        per_loop("carrier").iter().sum::<u64>() == SESSIONS as u64
    });
    let tunnels = per_loop("tunnel");
    assert_eq!(
        tunnels.iter().sum::<u64>(),
        4,
        "per-loop tunnels {tunnels:?}"
    );
    assert!(
        tunnels[1] >= 1 && tunnels[2] >= 1,
        "per-loop tunnels {tunnels:?}"
    );
    for lp in 0..3 {
        let name = format!("postern_edge_loop_busy_seconds_total{{loop=\"{lp}\"}}");
        let busy = sample(&edge, &name).unwrap_or_else(|| panic!("no {name}"));
        assert!(busy > 0.0, "loop {lp} never worked: {busy}");
    }

    // Kill one: which ssh it was is found by its exit.
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let out = admin(&["kill", &id]);
    assert!(out.contains(&id), "{out}");
    wait_until(Duration::from_secs(10), "the killed session ends", || {
        sessions.iter().any(|s| s.try_wait().is_some())
    });
    let killed: Vec<&Child> = sessions.iter().filter(|s| s.try_wait().is_some()).collect();
    assert_eq!(killed.len(), 1, "one session ended");
    assert!(
        killed[0]
            .stderr_text()
            .contains("session ended by an administrator"),
        "ssh says why: {}",
        killed[0].stderr_text()
    );

    // The others go on, and finish with their own output.
    fs::write(&release, b"").unwrap();
    for (n, s) in sessions.iter().enumerate() {
        if std::ptr::eq(s, killed[0]) {
            continue;
        }
        let status = s
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("session {n}: {e}"));
        assert!(status.success(), "session {n}: {}", s.stderr_text());
        assert!(
            s.stdout_text().ends_with(&format!("session-{n}\n")),
            "session {n}: {:?}",
            s.stdout_text()
        );
    }
    wait_until(Duration::from_secs(10), "no session left", || {
        metric(&edge, "postern_edge_streams_active") == 0
    });

    // SIGTERM: every loop's tunnel connections hear that the edge goes away.
    let status = edge.child().stop().expect("edge exit status");
    assert!(
        status.success(),
        "edge exit: {status}\n{}",
        edge.stderr_text()
    );
    wait_until(Duration::from_secs(10), "four GOAWAYs", || {
        tunnel
            .child()
            .stderr_text()
            .matches("edge is going away")
            .count()
            >= 4
    });
}

/// A gauge from the edge's `/metrics` (0 if it is not there).
fn metric(edge: &Edge, name: &str) -> u64 {
    sample(edge, name).map_or(0, |v| v as u64)
}

/// The value of the series `name` (with its labels) in the edge's `/metrics`.
fn sample(edge: &Edge, name: &str) -> Option<f64> {
    let (_, text) = support::http_get(&edge.metrics, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}
