//! An edge pool: two `postern edge --dev` sharing one etcd (`--state etcd://…`) and one key
//! directory copied to each (`--keys DIR`), with real sshd, ssh and tunnels.
//!
//! ```text
//!            ┌── edge A (keys a/) ◀══ tunnel ──┐
//! ssh ──▶ ───┤          │                      ├── sshd
//!            └── edge B (keys b/) ◀══ tunnel ──┘
//!                       │
//!                 etcd (tokens, hostnames, revocations)
//! ```
//!
//! Most tests give each edge its own tunnel process (same origin certificate, same hostname);
//! the origin-on-every-edge tests run ONE tunnel with `--edge A --edge B` (or a config's
//! `edge` list). The propagation times measured are printed (`--nocapture`).

use crate::support;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::etcd::Etcd;
use support::{
    origin_cert, postern, proxy_command, run_ok, run_with_deadline, temp_dir, wait_until, Child,
    Edge, ServiceToken, Sshd, TempDir, Tunnel, SSH_DEADLINE,
};

/// What the pool promises for a new token, a route or a revocation, plus a second for the
/// processes (ssh, the tunnel) to show it on a loaded machine.
const SEEN_WITHIN: Duration = Duration::from_secs(3);

/// Two dev edges on one etcd, the second with a copy of the first's key directory.
struct Pool {
    a: Edge,
    b: Edge,
    url: String,
    etcd: Etcd,
    dir: TempDir,
}

impl Pool {
    fn start(name: &str) -> Pool {
        support::require_all();
        let dir = temp_dir(name);
        let etcd = Etcd::start(dir.path());
        let url = etcd.url("pool");
        let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
        fs::create_dir_all(&a_dir).unwrap();
        fs::create_dir_all(&b_dir).unwrap();
        // Edge::start_args's own `--state DIR` comes first: ours win. Each edge's key dir is
        // its `edge-state`, where the harness looks for its CA.
        let a = pooled_edge(&a_dir, &url);
        copy_keys(&a.state, &b_dir.join("edge-state"));
        let b = pooled_edge(&b_dir, &url);
        Pool {
            a,
            b,
            url,
            etcd,
            dir,
        }
    }

    /// `postern edge service-token create NAME --state etcd://…`.
    fn token(&self, name: &str) -> ServiceToken {
        let out = run_ok(
            postern(&self.dir.join("home"))
                .args(["edge", "service-token", "create", name, "--state"])
                .arg(&self.url),
            "service-token create --state etcd://…",
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        ServiceToken {
            id: v["client_id"].as_str().unwrap().to_owned(),
            secret: v["client_secret"].as_str().unwrap().to_owned(),
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        run_ok(
            postern(&self.dir.join("home"))
                .args(["edge"])
                .args(args)
                .arg("--state")
                .arg(&self.url),
            &format!("postern edge {}", args.join(" ")),
        )
    }
}

fn pooled_edge(dir: &Path, url: &str) -> Edge {
    let keys = dir.join("edge-state");
    Edge::start_args(dir, &["--state", url, "--keys", keys.to_str().unwrap()])
}

/// Copies the key directory (CAs, signing keys) as an operator would; not the audit log.
fn copy_keys(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "audit.log" || !entry.file_type().unwrap().is_file() {
            continue;
        }
        fs::copy(entry.path(), to.join(&name)).unwrap();
    }
}

/// An ssh running `echo MARKER; sleep` through `edge` with `token`; returns once it is open.
fn open_session(
    dir: &Path,
    sshd: &Sshd,
    host: &str,
    edge: &Edge,
    token: &ServiceToken,
    marker: &str,
) -> Child {
    let proxy = proxy_command(&edge.addr, &edge.ca(), token);
    let mut cmd: Command = sshd.ssh_command(host, &proxy);
    cmd.env("HOME", dir.join("home"));
    cmd.arg(format!("echo {marker}; exec sleep 120"));
    let child = Child::spawn(marker, cmd, dir);
    wait_until(SSH_DEADLINE, &format!("ssh session {marker} open"), || {
        child.stdout_text().contains(marker) || child.try_wait().is_some()
    });
    assert!(
        child.try_wait().is_none(),
        "ssh {marker} ended early: {}",
        child.stderr_text()
    );
    child
}

/// Whether one `ssh HOST echo ok` through `edge` with `token` succeeds.
fn ssh_works(dir: &Path, sshd: &Sshd, host: &str, edge: &Edge, token: &ServiceToken) -> bool {
    let proxy = proxy_command(&edge.addr, &edge.ca(), token);
    let mut cmd = sshd.ssh_command(host, &proxy);
    cmd.env("HOME", dir.join("home"))
        .arg("echo pool-ok")
        .stdin(Stdio::null());
    let out = run_with_deadline(&mut cmd, SSH_DEADLINE, "ssh through the pool");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("pool-ok")
}

#[test]
fn a_token_created_for_the_pool_works_at_every_edge_and_its_revocation_closes_sessions_everywhere()
{
    let pool = Pool::start("pool-token");
    let dir = pool.dir.path();
    let host = "pool.localhost";
    let sshd = Sshd::start(dir);
    let cert = dir.join("cert.pem");
    origin_cert(&pool.a.state, "localhost", &cert, &pool.a.addr);
    let _ta = Tunnel::start(dir, host, &sshd.url(), &cert, &pool.a);
    // The same certificate registers the same hostname at the second edge: it owns it.
    let _tb = Tunnel::start(dir, host, &sshd.url(), &cert, &pool.b);

    // Created through the CLI against etcd, not through either edge.
    let token = pool.token("pooled");
    let created = Instant::now();
    for (name, edge) in [("A", &pool.a), ("B", &pool.b)] {
        let mut works = false;
        wait_until(
            SEEN_WITHIN,
            &format!("the new token to work at edge {name}"),
            || {
                works = ssh_works(dir, &sshd, host, edge, &token);
                works
            },
        );
        eprintln!(
            "new service token works at edge {name} {:?} after its creation",
            created.elapsed()
        );
    }

    let other = pool.token("other");
    let at_a = open_session(dir, &sshd, host, &pool.a, &token, "session-at-a");
    let at_b = open_session(dir, &sshd, host, &pool.b, &token, "session-at-b");
    let other_at_b = open_session(dir, &sshd, host, &pool.b, &other, "other-at-b");

    let out = pool.cli(&["service-token", "revoke", "pooled"]);
    let revoked = Instant::now();
    assert!(out.contains("Revoked service token pooled"), "{out}");
    for (name, session) in [("A", &at_a), ("B", &at_b)] {
        let status = session
            .wait_exit(SEEN_WITHIN.saturating_sub(revoked.elapsed()))
            .unwrap_or_else(|e| panic!("the revoked token's session at edge {name} goes on: {e}"));
        assert!(!status.success());
        let stderr = session.stderr_text();
        assert!(stderr.contains("service token revoked"), "{stderr}");
        eprintln!(
            "revoked token's session at edge {name} closed {:?} after the revoke",
            revoked.elapsed()
        );
    }
    assert!(
        other_at_b.try_wait().is_none(),
        "another token's session is untouched: {}",
        other_at_b.stderr_text()
    );
    for edge in [&pool.a, &pool.b] {
        assert!(!ssh_works(dir, &sshd, host, edge, &token));
        assert!(
            edge.stderr_text()
                .contains(&format!("service token {} revoked", token.id)),
            "{}",
            support::tail(&edge.stderr_text(), 3000)
        );
    }
    let again = pool.cli(&["service-token", "revoke", "pooled"]);
    assert!(again.contains("already revoked"), "{again}");
    other_at_b.kill();
}

#[test]
fn two_origins_racing_for_one_hostname_through_different_edges_one_wins_everywhere() {
    let pool = Pool::start("pool-race");
    let dir = pool.dir.path();
    let host = "contested.localhost";
    let sshd = Sshd::start(dir);
    let (cert1, cert2) = (dir.join("cert1.pem"), dir.join("cert2.pem"));
    origin_cert(&pool.a.state, "localhost", &cert1, &pool.a.addr);
    origin_cert(&pool.b.state, "localhost", &cert2, &pool.b.addr);
    let t1 = Tunnel::spawn(dir, "tunnel-1", host, &sshd.url(), &cert1, &pool.a);
    let t2 = Tunnel::spawn(dir, "tunnel-2", host, &sshd.url(), &cert2, &pool.b);
    wait_until(Duration::from_secs(30), "one tunnel refused", || {
        t1.child().try_wait().is_some() || t2.child().try_wait().is_some()
    });
    let (winner, loser, winner_edge, loser_edge) = if t1.child().try_wait().is_some() {
        (&t2, &t1, &pool.b, &pool.a)
    } else {
        (&t1, &t2, &pool.a, &pool.b)
    };
    winner.wait_registered(1, Duration::from_secs(20));
    assert!(
        winner.child().try_wait().is_none(),
        "both lost: {}",
        winner.child().stderr_text()
    );
    let refusal = loser.child().stderr_text();
    assert!(
        refusal.contains("already registered by another origin certificate"),
        "{refusal}"
    );
    eprintln!(
        "{} won {host}; the other was refused",
        winner.child().name()
    );

    // Everywhere: the loser is refused at the winner's edge too, and the winner's certificate
    // registers at the other edge.
    let loser_cert = if std::ptr::eq(loser, &t1) {
        &cert1
    } else {
        &cert2
    };
    let winner_cert = if std::ptr::eq(winner, &t1) {
        &cert1
    } else {
        &cert2
    };
    let again = Tunnel::spawn(
        dir,
        "loser-again",
        host,
        &sshd.url(),
        loser_cert,
        winner_edge,
    );
    again
        .child()
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the loser registered at the other edge: {e}"));
    assert!(again
        .child()
        .stderr_text()
        .contains("already registered by another origin certificate"));
    let _also = Tunnel::start(dir, host, &sshd.url(), winner_cert, loser_edge);
}

/// `postern tunnel ARGS --origincert CERT --edge EDGE --ca CA`, the admin commands.
fn tunnel_admin(pool: &Pool, cert: &Path, edge: &Edge, args: &[&str]) -> String {
    run_ok(
        postern(&pool.dir.join("home"))
            .arg("tunnel")
            .args(args)
            .arg("--origincert")
            .arg(cert)
            .args(["--edge", &edge.edge_arg(), "--ca"])
            .arg(edge.ca())
            .stdin(Stdio::null()),
        &format!("postern tunnel {}", args.join(" ")),
    )
}

#[test]
fn a_tunnel_created_and_routed_through_one_edge_runs_at_another_and_its_delete_closes_it_there() {
    let pool = Pool::start("pool-named");
    let dir = pool.dir.path();
    let sshd = Sshd::start(dir);
    let home = dir.join("home");
    let postern_dir = home.join(".postern");
    fs::create_dir_all(&postern_dir).unwrap();
    let cert = postern_dir.join("cert.pem");
    origin_cert(&pool.a.state, "localhost", &cert, &pool.a.addr);
    let token = pool.token("named");

    // Created and routed through edge A.
    let out = tunnel_admin(&pool, &cert, &pool.a, &["create", "web"]);
    let id = out
        .split("Created tunnel web with id ")
        .nth(1)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no id in: {out}"));
    tunnel_admin(
        &pool,
        &cert,
        &pool.a,
        &["route", "dns", "web", "web.localhost"],
    );
    let routed = Instant::now();
    // Edge B knows the tunnel and its route by its poll.
    wait_until(
        SEEN_WITHIN,
        "edge B to know the tunnel and its route",
        || {
            let mut info = postern(&home);
            info.args(["tunnel", "info", "web", "--origincert"])
                .arg(&cert)
                .args(["--edge", &pool.b.edge_arg(), "--ca"])
                .arg(pool.b.ca())
                .stdin(Stdio::null());
            let out = run_with_deadline(&mut info, SSH_DEADLINE, "tunnel info at B");
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("web.localhost")
        },
    );
    eprintln!(
        "tunnel and route made through edge A known at edge B {:?} after",
        routed.elapsed()
    );

    // Run at edge B; ssh through B reaches sshd.
    let creds = postern_dir.join(format!("{id}.json"));
    let mut run = postern(&home);
    let metrics = support::ready::metrics_listen();
    run.env("POSTERN_METRICS", metrics.to_string())
        .args(["tunnel", "run", "--credentials-file"])
        .arg(&creds)
        .args(["--url", &sshd.url(), "--edge", &pool.b.edge_arg(), "--ca"])
        .arg(pool.b.ca())
        .arg("web");
    let origin = Child::spawn("named-at-b", run, dir);
    support::ready::wait_registered_connections(&origin, &metrics, 1, Duration::from_secs(20))
        .expect("the named tunnel registers at edge B");
    assert!(ssh_works(dir, &sshd, "web.localhost", &pool.b, &token));

    // Deleted through edge A: edge B closes its connection.
    let out = tunnel_admin(&pool, &cert, &pool.a, &["delete", "-f", "web"]);
    let deleted = Instant::now();
    assert!(out.contains("1 route(s) removed"), "{out}");
    let status = origin
        .wait_exit(SEEN_WITHIN)
        .unwrap_or_else(|e| panic!("the deleted tunnel runs on at edge B: {e}"));
    assert!(!status.success());
    assert!(
        origin.stderr_text().contains("was deleted"),
        "{}",
        origin.stderr_text()
    );
    eprintln!(
        "tunnel deleted through edge A closed at edge B {:?} after",
        deleted.elapsed()
    );
    assert!(!ssh_works(dir, &sshd, "web.localhost", &pool.b, &token));
}

#[test]
fn an_edge_started_from_a_config_file_with_state_in_etcd_serves_the_pool() {
    let pool = Pool::start("pool-config");
    let dir = pool.dir.path();
    let c_dir = dir.join("c");
    let keys = c_dir.join("keys");
    copy_keys(&pool.a.state, &keys);
    let config = c_dir.join("edge.json");
    support::write_edge_config(
        &config,
        &format!("127.0.0.1:{}", support::free_port()),
        &keys,
        serde_json::json!([{ "any_valid_service_token": true }]),
        serde_json::json!({ "state": pool.url }),
    );
    let c = Edge::start_config(&c_dir, &config, &keys, &[]);
    let host = "config.localhost";
    let sshd = Sshd::start(dir);
    let cert = dir.join("cert.pem");
    origin_cert(&pool.a.state, "localhost", &cert, &pool.a.addr);
    let _tc = Tunnel::start(dir, host, &sshd.url(), &cert, &c);

    let token = pool.token("for-c");
    assert!(ssh_works(dir, &sshd, host, &c, &token));
    pool.cli(&["service-token", "revoke", "for-c"]);
    let revoked = Instant::now();
    wait_until(SEEN_WITHIN, "edge C to refuse the revoked token", || {
        !ssh_works(dir, &sshd, host, &c, &token)
    });
    eprintln!(
        "edge C refused the revoked token {:?} after",
        revoked.elapsed()
    );
    assert!(
        c.stderr_text().contains("state: shared records in etcd://"),
        "{}",
        support::tail(&c.stderr_text(), 2000)
    );
}

#[test]
fn with_etcd_stopped_known_tokens_and_open_sessions_go_on_and_the_pool_recovers_when_it_returns() {
    let mut pool = Pool::start("pool-etcd-down");
    let dir = pool.dir.path().to_path_buf();
    let host = "down.localhost";
    let sshd = Sshd::start(&dir);
    let cert = dir.join("cert.pem");
    origin_cert(&pool.a.state, "localhost", &cert, &pool.a.addr);
    let _ta = Tunnel::start(&dir, host, &sshd.url(), &cert, &pool.a);
    let _tb = Tunnel::start(&dir, host, &sshd.url(), &cert, &pool.b);
    let token = pool.token("known");
    assert!(ssh_works(&dir, &sshd, host, &pool.a, &token));
    assert!(ssh_works(&dir, &sshd, host, &pool.b, &token));
    let open = open_session(&dir, &sshd, host, &pool.b, &token, "open-through-outage");

    pool.etcd.stop();
    // The edges know the token: new sessions with it work at both; the open one goes on.
    assert!(ssh_works(&dir, &sshd, host, &pool.a, &token));
    assert!(ssh_works(&dir, &sshd, host, &pool.b, &token));
    assert!(open.try_wait().is_none(), "{}", open.stderr_text());
    // What needs etcd fails, saying so.
    let out = postern(&dir.join("home"))
        .args(["edge", "service-token", "create", "during", "--state"])
        .arg(&pool.url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!("etcd at {} unreachable", pool.etcd.addr)),
        "{text}"
    );
    pool.b
        .child()
        .wait_for_stderr("unreachable", SEEN_WITHIN)
        .expect("edge B's poll warns that etcd is unreachable");

    // Back: without restarting the edges, a new token works and a revocation closes the open
    // session.
    pool.etcd.restart();
    let after = pool.token("after");
    let back = Instant::now();
    wait_until(
        SEEN_WITHIN,
        "a token made after the outage to work at B",
        || ssh_works(&dir, &sshd, host, &pool.b, &after),
    );
    pool.cli(&["service-token", "revoke", "known"]);
    open.wait_exit(SEEN_WITHIN)
        .unwrap_or_else(|e| panic!("a revocation after the outage did not reach edge B: {e}"));
    eprintln!(
        "the pool worked again {:?} after etcd returned",
        back.elapsed()
    );
}

/// `/ready`'s `edges` entry for `edge` on an origin's metrics address: its registered
/// connections (0 while unreachable or not listed).
fn ready_at(metrics: &SocketAddr, edge: &Edge) -> u64 {
    let Some((_, v)) = support::ready::try_ready(metrics) else {
        return 0;
    };
    let edges = v["edges"].as_array().cloned().unwrap_or_default();
    edges
        .iter()
        .find(|e| e["edge"] == edge.edge_arg())
        .and_then(|e| e["readyConnections"].as_u64())
        .unwrap_or(0)
}

#[test]
fn one_origin_on_every_edge_survives_an_edge_crash_and_reconnects_to_it_by_itself() {
    let mut pool = Pool::start("pool-origin");
    let dir = pool.dir.path().to_path_buf();
    let host = "everywhere.localhost";
    let sshd = Sshd::start(&dir);
    let cert = dir.join("cert.pem");
    origin_cert(&pool.a.state, "localhost", &cert, &pool.a.addr);

    // ONE origin, both edges: its four connections go A, B, A, B.
    let metrics = support::ready::metrics_listen();
    let mut cmd = postern(&dir.join("home"));
    cmd.env("POSTERN_METRICS", metrics.to_string())
        .args(["tunnel", "--hostname", host, "--url", &sshd.url()])
        .arg("--origincert")
        .arg(&cert)
        .args(["--edge", &pool.a.edge_arg(), "--edge", &pool.b.edge_arg()])
        .args(["--ha-connections", "4", "--ca"])
        .arg(pool.a.ca());
    let origin = Child::spawn("origin-on-both", cmd, &dir);
    wait_until(
        Duration::from_secs(30),
        "two connections at each edge",
        || ready_at(&metrics, &pool.a) == 2 && ready_at(&metrics, &pool.b) == 2,
    );
    pool.a.wait_registered(2, Duration::from_secs(10));
    pool.b.wait_registered(2, Duration::from_secs(10));
    let log = origin.stderr_text();
    for edge in [&pool.a, &pool.b] {
        assert!(
            log.contains(&format!("to edge {} registered {host}", edge.edge_arg())),
            "the log names each connection's edge: {}",
            support::tail(&log, 3000)
        );
    }

    let token = pool.token("everywhere");
    wait_until(SEEN_WITHIN, "ssh through edge A", || {
        ssh_works(&dir, &sshd, host, &pool.a, &token)
    });
    assert!(ssh_works(&dir, &sshd, host, &pool.b, &token));
    let through_b = open_session(&dir, &sshd, host, &pool.b, &token, "through-b");

    // Edge A crashes: the session through B goes on, new ones through B work.
    pool.a.child().kill();
    wait_until(
        Duration::from_secs(15),
        "the origin to see edge A gone",
        || ready_at(&metrics, &pool.a) == 0,
    );
    assert_eq!(
        ready_at(&metrics, &pool.b),
        2,
        "B's connections are untouched"
    );
    assert!(
        through_b.try_wait().is_none(),
        "the session through B ended with A: {}",
        through_b.stderr_text()
    );
    assert!(ssh_works(&dir, &sshd, host, &pool.b, &token));
    assert!(
        through_b.try_wait().is_none(),
        "{}",
        through_b.stderr_text()
    );

    // Edge A back on its address with its key dir: the origin reconnects without being told.
    let back = Instant::now();
    pool.a.restart();
    wait_until(
        Duration::from_secs(40),
        "the origin to reconnect to edge A",
        || ready_at(&metrics, &pool.a) == 2,
    );
    eprintln!(
        "the origin registered again at the restarted edge A {:?} after its restart",
        back.elapsed()
    );
    assert!(ssh_works(&dir, &sshd, host, &pool.a, &token));
    assert!(
        through_b.try_wait().is_none(),
        "{}",
        through_b.stderr_text()
    );
    assert!(origin.try_wait().is_none(), "{}", origin.stderr_text());
    through_b.kill();
}

#[test]
fn a_named_tunnel_whose_config_lists_both_edges_registers_at_each_and_serves_through_each() {
    let pool = Pool::start("pool-named-list");
    let dir = pool.dir.path();
    let sshd = Sshd::start(dir);
    let home = dir.join("home");
    let postern_dir = home.join(".postern");
    fs::create_dir_all(&postern_dir).unwrap();
    let cert = postern_dir.join("cert.pem");
    origin_cert(&pool.a.state, "localhost", &cert, &pool.a.addr);
    let token = pool.token("listed");
    let out = tunnel_admin(&pool, &cert, &pool.a, &["create", "app"]);
    let id = out
        .split("Created tunnel app with id ")
        .nth(1)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no id in: {out}"));
    tunnel_admin(
        &pool,
        &cert,
        &pool.a,
        &["route", "dns", "app", "app.localhost"],
    );

    // The config's edge is a list (cloudflared's form); two connections, one per edge. Edge B
    // may not know the tunnel yet (its poll, within 2 s) and refuse it: while A accepts it,
    // the origin asks B again instead of stopping.
    let config = dir.join("tunnel.json");
    let cfg = serde_json::json!({
        "tunnel": "app",
        "credentials-file": postern_dir.join(format!("{id}.json")),
        "edge": [pool.a.edge_arg(), pool.b.edge_arg()],
        "ca": pool.a.ca(),
        "ha-connections": 1,
        "ingress": [ { "service": sshd.url() } ]
    });
    fs::write(&config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let metrics = support::ready::metrics_listen();
    let mut run = postern(&home);
    run.env("POSTERN_METRICS", metrics.to_string())
        .args(["tunnel", "--config"])
        .arg(&config)
        .arg("run");
    let origin = Child::spawn("named-on-both", run, dir);
    wait_until(
        Duration::from_secs(30),
        "one connection at each edge",
        || ready_at(&metrics, &pool.a) == 1 && ready_at(&metrics, &pool.b) == 1,
    );
    assert!(
        origin
            .stderr_text()
            .contains("2 edges and --ha-connections 1: 2 connections"),
        "the raised count is logged: {}",
        support::tail(&origin.stderr_text(), 3000)
    );
    for edge in [&pool.a, &pool.b] {
        wait_until(SEEN_WITHIN, "ssh through each edge", || {
            ssh_works(dir, &sshd, "app.localhost", edge, &token)
        });
    }
}
