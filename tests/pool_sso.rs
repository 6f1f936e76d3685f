//! An edge pool as an operator runs it (issue 12): three edges with one public URL, one real
//! etcd, the real OpenID Connect provider, one origin connected to all three, and a person in
//! real Chromium.
//!
//! ```text
//!  postern access login ── start, poll ──▶ edge A 127.0.0.1:P ──┐
//!  Chromium (*.localhost → 127.0.0.2)     ─▶ edge B 127.0.0.2:P ──┼── etcd
//!  ssh ── ProxyCommand ──────────────────▶ edge C 127.0.0.3:P ──┘
//!                                              ▲ ▲ ▲
//!  one origin (`--edge A --edge B --edge C`) ──┘ ┘ ┘── sshd
//! ```
//!
//! The three edges listen on one port of three loopback addresses: the public URL
//! `https://login.localhost:P` is the same for all of them, as behind a load balancer, and the
//! browser is sent to edge B by its resolver (login.mjs `--map`), as a balancer would choose.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::etcd::Etcd;
use support::oidc::{browser_login_via, Provider};
use support::sso::{login_prompt, ACCOUNTS};
use support::{origin_cert, postern, run_with_deadline, temp_dir, Child, Edge, Sshd};

/// The config of one edge of the pool: the provider, one application, state in etcd, its own
/// key directory (a copy of the first edge's).
fn edge_config(
    path: &Path,
    listen: &str,
    keys: &Path,
    state: &str,
    public: &str,
    provider: &Provider,
    secret_file: &Path,
) {
    let config = serde_json::json!({
        "listen": listen,
        "state_dir": keys,
        "state": state,
        "zones": [ { "name": "localhost", "local_ca": true } ],
        "public_url": public,
        "identity": {
            "issuer": provider.issuer,
            "client_id": provider.client_id,
            "client_secret_file": secret_file,
        },
        "applications": [
            { "hostname": "ssh.localhost", "policies": [
                { "name": "staff", "decision": "allow", "include": [ { "email_domain": "example.com" } ] }
            ] }
        ],
    });
    fs::write(path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

/// The key directory as an operator copies it to another edge; not the audit log.
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

fn audit_of(keys: &Path) -> String {
    fs::read_to_string(keys.join("audit.log")).unwrap_or_default()
}

#[test]
fn a_login_started_at_one_edge_and_signed_in_with_chromium_at_another_lets_ssh_through_a_third() {
    support::require_all();
    support::oidc::require_node_parts();
    let dir = temp_dir("pool-sso");
    let dir = dir.path();
    let etcd = Etcd::start(dir);
    let state = etcd.url("pool-sso");
    let port = support::free_port();
    let public = format!("https://login.localhost:{port}");
    let provider = Provider::start(
        dir,
        &[format!("{public}/cdn-cgi/access/callback")],
        ACCOUNTS,
    );
    let secret_file = dir.join("client-secret");
    fs::write(&secret_file, &provider.client_secret).unwrap();

    // Edge A makes the keys; B and C get a copy, as docs/scaling.md tells an operator.
    let mut edges: Vec<(Edge, PathBuf)> = Vec::new();
    for (name, ip) in [("a", "127.0.0.1"), ("b", "127.0.0.2"), ("c", "127.0.0.3")] {
        let edge_dir = dir.join(name);
        let keys = edge_dir.join("keys");
        fs::create_dir_all(&edge_dir).unwrap();
        if let Some((_, first)) = edges.first() {
            copy_keys(first, &keys);
        }
        let config = edge_dir.join("edge.json");
        let listen = format!("{ip}:{port}");
        edge_config(
            &config,
            &listen,
            &keys,
            &state,
            &public,
            &provider,
            &secret_file,
        );
        let edge = Edge::start_config(&edge_dir, &config, &keys, &[]);
        assert_eq!(edge.addr.to_string(), listen);
        edges.push((edge, keys));
    }
    let (a, b, c) = (&edges[0].0, &edges[1].0, &edges[2].0);
    let ca = edges[0].1.join("ca.pem");

    // One origin on all three edges.
    let sshd = Sshd::start(dir);
    let cert = dir.join("cert.pem");
    origin_cert(&edges[0].1, "localhost", &cert, &a.addr);
    let mut cmd = postern(&dir.join("origin-home"));
    cmd.args([
        "tunnel",
        "--hostname",
        "ssh.localhost",
        "--url",
        &sshd.url(),
    ])
    .arg("--origincert")
    .arg(&cert)
    .args(["--edge", &a.edge_arg(), "--edge", &b.edge_arg()])
    .args(["--edge", &c.edge_arg(), "--ha-connections", "3", "--ca"])
    .arg(&ca);
    let origin = Child::spawn("origin", cmd, dir);
    for edge in [a, b, c] {
        edge.wait_registered(1, Duration::from_secs(30));
    }

    // The CLI starts its login and polls at edge A; the person's browser lands on edge B.
    let home = dir.join("home-alice");
    fs::create_dir_all(&home).unwrap();
    let mut cmd = postern(&home);
    cmd.args(["access", "login", "ssh.localhost", "--edge", &a.edge_arg()])
        .arg("--ca")
        .arg(&ca)
        .env("BROWSER", "true");
    let cli = Child::spawn("login-alice", cmd, dir);
    let (url, code) = login_prompt(&cli);
    let hosts = ["ssh.localhost", "login.localhost"];
    let page = browser_login_via(&url, "alice", &code, &hosts, "127.0.0.2", dir);
    assert!(
        page.is_ok(),
        "{page:?}\nedge A:\n{}\nedge B:\n{}",
        support::tail(&a.stderr_text(), 3000),
        support::tail(&b.stderr_text(), 3000)
    );
    let status = cli
        .wait_exit(Duration::from_secs(30))
        .expect("the CLI's login ends once the browser confirmed it at edge B");
    assert!(
        status.success(),
        "the CLI polling edge A got the token: {}",
        cli.stderr_text()
    );

    // The sign-in happened at B (its audit log has alice's login), not at A or C.
    let signed_in = |keys: &Path| audit_of(keys).contains("alice@example.com");
    assert!(
        signed_in(&edges[1].1),
        "edge B's audit log: {}",
        audit_of(&edges[1].1)
    );
    assert!(!signed_in(&edges[0].1), "{}", audit_of(&edges[0].1));
    assert!(!signed_in(&edges[2].1), "{}", audit_of(&edges[2].1));

    // The token edge B issued (a key of the copied directory) opens ssh through edge C; no
    // browser is at hand, so a missing token would fail the command rather than sign in.
    let proxy = format!(
        "{} access ssh --hostname %h --edge {} --ca {}",
        support::postern_bin().display(),
        c.edge_arg(),
        ca.display()
    );
    let mut ssh = Command::new("ssh");
    ssh.args(sshd.ssh_options())
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .arg(format!("{}@ssh.localhost", sshd.user))
        .arg("echo through-edge-c")
        .env("HOME", &home)
        .env("BROWSER", "false")
        .env("RUST_LOG", "warn")
        .env_remove("POSTERN_SERVICE_TOKEN_ID")
        .env_remove("POSTERN_SERVICE_TOKEN_SECRET")
        .stdin(Stdio::null());
    let out = run_with_deadline(&mut ssh, Duration::from_secs(60), "ssh through edge C");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "through-edge-c",
        "ssh through edge C: {}\nedge C:\n{}",
        String::from_utf8_lossy(&out.stderr),
        support::tail(&c.stderr_text(), 3000)
    );
    assert!(
        audit_of(&edges[2].1).contains("alice@example.com"),
        "edge C's audit log has alice's session: {}",
        audit_of(&edges[2].1)
    );
    assert!(origin.try_wait().is_none(), "{}", origin.stderr_text());
}
