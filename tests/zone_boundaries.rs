//! A zone configured inside another (`team.localhost` beside `localhost`) is its own: the
//! parent zone's origin certificate covers `x.team.localhost` by its SANs (`*.localhost`,
//! `localhost`), but may neither register it (`tunnel --hostname`) nor route it (`tunnel route
//! dns`); the hostname's zone is the longest configured zone it ends in.

use crate::support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{origin_cert, postern, run_with_deadline, temp_dir, Edge, Tunnel, STARTUP};

const HOST: &str = "x.team.localhost";

/// An edge serving the zones `localhost` and `team.localhost` (both on its own CA).
fn two_zone_edge(dir: &Path) -> Edge {
    let state = dir.join("edge-state");
    let config = dir.join("edge.json");
    let allow = serde_json::json!([
        { "decision": "allow", "include": [ { "any_valid_service_token": true } ] }
    ]);
    let cfg = serde_json::json!({
        "listen": format!("127.0.0.1:{}", support::free_port()),
        "state_dir": state,
        "zones": [
            { "name": "localhost", "local_ca": true },
            { "name": "team.localhost", "local_ca": true }
        ],
        "applications": [
            { "hostname": "*.team.localhost", "policies": allow },
            { "hostname": "*.localhost", "policies": allow }
        ],
    });
    std::fs::write(&config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    Edge::start_config(dir, &config, &state, &[])
}

fn certs(dir: &Path, edge: &Edge) -> (std::path::PathBuf, std::path::PathBuf) {
    let parent = dir.join("localhost-cert.pem");
    let team = dir.join("team-cert.pem");
    origin_cert(&edge.state, "localhost", &parent, &edge.addr);
    origin_cert(&edge.state, "team.localhost", &team, &edge.addr);
    (parent, team)
}

#[test]
fn parent_zone_certificate_cannot_register_a_name_of_a_nested_zone() {
    let dir = temp_dir("zone-register");
    let edge = two_zone_edge(dir.path());
    let (parent, team) = certs(dir.path(), &edge);

    let intruder = Tunnel::spawn(
        dir.path(),
        "tunnel-parent",
        HOST,
        "ssh://127.0.0.1:1",
        &parent,
        &edge,
    );
    intruder
        .child()
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("a refused tunnel must exit: {e}"));
    let stderr = intruder.child().stderr_text();
    assert!(
        stderr.contains("registration refused") && stderr.contains("in the zone team.localhost"),
        "the localhost certificate must be refused for {HOST}; stderr:\n{stderr}"
    );
    support::audit_when(
        &edge.state.join("audit.log"),
        Duration::from_secs(10),
        "the refusal in the audit log",
        |a| a.contains("\"decision\":\"deny\"") && a.contains(HOST),
    );

    // The nested zone's own certificate takes it (nothing was claimed by the refused one).
    let owner = Tunnel::spawn(
        dir.path(),
        "tunnel-team",
        HOST,
        "ssh://127.0.0.1:1",
        &team,
        &edge,
    );
    owner.wait_registered(1, STARTUP);
    // And the parent zone's certificate still registers its own names.
    let own = Tunnel::spawn(
        dir.path(),
        "tunnel-own",
        "y.localhost",
        "ssh://127.0.0.1:1",
        &parent,
        &edge,
    );
    own.wait_registered(1, STARTUP);
}

fn tunnel_cli(home: &Path, cert: &Path, edge: &Edge, args: &[&str]) -> Command {
    let mut cmd = postern(home);
    cmd.arg("tunnel")
        .args(args)
        .arg("--origincert")
        .arg(cert)
        .args(["--edge", &edge.edge_arg(), "--ca"])
        .arg(edge.ca())
        .stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command, what: &str) -> (bool, String) {
    let out = run_with_deadline(&mut cmd, Duration::from_secs(30), what);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn parent_zone_certificate_cannot_route_a_name_of_a_nested_zone() {
    let dir = temp_dir("zone-route");
    let edge = two_zone_edge(dir.path());
    let (parent, team) = certs(dir.path(), &edge);
    let home = dir.join("home");
    std::fs::create_dir_all(home.join(".postern")).unwrap();

    let (ok, out) = run(
        tunnel_cli(&home, &parent, &edge, &["create", "parent-web"]),
        "create (localhost)",
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        tunnel_cli(&home, &parent, &edge, &["route", "dns", "parent-web", HOST]),
        "route dns (localhost cert)",
    );
    assert!(
        !ok,
        "routing {HOST} with the localhost certificate must fail: {out}"
    );
    assert!(out.contains("in the zone team.localhost"), "{out}");
    let (ok, out) = run(
        tunnel_cli(
            &home,
            &parent,
            &edge,
            &["route", "dns", "parent-web", "y.localhost"],
        ),
        "route dns (own name)",
    );
    assert!(ok, "the localhost certificate routes its own names: {out}");

    let (ok, out) = run(
        tunnel_cli(&home, &team, &edge, &["create", "team-web"]),
        "create (team.localhost)",
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        tunnel_cli(&home, &team, &edge, &["route", "dns", "team-web", HOST]),
        "route dns (team cert)",
    );
    assert!(ok, "the team.localhost certificate routes {HOST}: {out}");
}
