//! Jump-host (bastion) mode, end to end with real parts: one tunnel with a `bastion` rule
//! reaches two real sshd's by `--destination`; the edge checks each destination against its
//! application's allow-list before any tunnel sees it (a reason to the client, an audit line);
//! a tunnel without a bastion rule takes no destination; the origin's loopback and the cloud
//! metadata address are refused unless named explicitly.

use crate::support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// An edge whose applications each say what `--destination`s they admit.
fn edge_config(dir: &Path, a: u16, b: u16) -> (std::path::PathBuf, std::path::PathBuf) {
    let state = dir.join("edge-state");
    let config = dir.join("edge.json");
    let audit = dir.join("audit.log");
    let tokens = serde_json::json!([
        { "decision": "allow", "include": [ { "any_valid_service_token": true } ] }
    ]);
    let cfg = serde_json::json!({
        "listen": format!("127.0.0.1:{}", free_port()),
        "state_dir": state,
        "audit_log": audit,
        "zones": [ { "name": "localhost", "local_ca": true } ],
        "applications": [
            { "hostname": "jump.localhost", "policies": tokens,
              "bastion": { "allow": [ format!("127.0.0.1:{a}"), format!("localhost:{b}") ] } },
            { "hostname": "plain.localhost", "policies": tokens,
              "bastion": { "allow": [ format!("127.0.0.1:{a}") ] } },
            { "hostname": "open.localhost", "policies": tokens,
              "bastion": { "allow": [ "0.0.0.0/0:*", format!("127.0.0.1:{a}") ] } },
            { "hostname": "ssh.localhost", "policies": tokens },
        ],
    });
    fs::write(&config, serde_json::to_vec_pretty(&cfg).expect("JSON")).expect("write config");
    (config, audit)
}

struct Setup {
    a: Sshd,
    b: Sshd,
    edge: Edge,
    token: ServiceToken,
    audit: std::path::PathBuf,
    cert: std::path::PathBuf,
    dir: TempDir,
}

fn setup(name: &str) -> Setup {
    require_all();
    let dir = temp_dir(name);
    fs::create_dir_all(dir.join("a")).expect("mkdir a");
    fs::create_dir_all(dir.join("b")).expect("mkdir b");
    let a = Sshd::start(&dir.join("a"));
    let b = Sshd::start(&dir.join("b"));
    let (config, audit) = edge_config(dir.path(), a.port, b.port);
    let edge = Edge::start_config(dir.path(), &config, &dir.join("edge-state"), &[]);
    let token = service_token(&edge.state, "e2e");
    let cert = dir.join("cert.pem");
    origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    Setup {
        a,
        b,
        edge,
        token,
        audit,
        cert,
        dir,
    }
}

impl Setup {
    fn proxy(&self, destination: &str) -> Proxy {
        let mut p = proxy_command(&self.edge.addr, &self.edge.ca(), &self.token);
        p.command.push_str(&format!(" --destination {destination}"));
        p
    }

    /// `postern access ssh --hostname HOST --destination D` until it exits: (ok, stderr).
    fn access(&self, host: &str, destination: &str) -> (bool, String) {
        let mut cmd = postern(self.dir.path());
        cmd.args(["access", "ssh", "--hostname", host, "--edge"])
            .arg(self.edge.edge_arg())
            .arg("--ca")
            .arg(self.edge.ca())
            .args(["--destination", destination])
            .env("POSTERN_SERVICE_TOKEN_ID", &self.token.id)
            .env("POSTERN_SERVICE_TOKEN_SECRET", &self.token.secret);
        let (status, stderr) = access_until_exit(cmd, Duration::from_secs(20));
        (status.success(), stderr)
    }
}

/// `ssh` to `alias` through `proxy` as `sshd`'s user: the server's port, from $SSH_CONNECTION.
fn server_port(sshd: &Sshd, alias: &str, proxy: &Proxy, s: &Setup, t: &Tunnel) -> String {
    let mut cmd: Command = sshd.ssh_command(alias, proxy);
    let out = run_with_deadline(
        cmd.arg("echo $SSH_CONNECTION").stdin(Stdio::null()),
        SSH_DEADLINE,
        "ssh through the jump host",
    );
    assert!(
        out.status.success(),
        "ssh failed: {}\nedge:\n{}\ntunnel:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&s.edge.stderr_text(), 3000),
        tail(&t.child().stderr_text(), 3000)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .nth(3)
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn one_bastion_tunnel_reaches_two_sshds_by_destination_and_audits_each() {
    let s = setup("bastion-two");
    let t = Tunnel::start_extra(
        s.dir.path(),
        "tunnel-jump",
        ("jump.localhost", "bastion"),
        &s.cert,
        &s.edge,
        &["--bastion-allow", "127.0.0.0/8:*"],
    );
    let a = format!("127.0.0.1:{}", s.a.port);
    let b = format!("localhost:{}", s.b.port);
    let port = server_port(&s.a, "jump.localhost", &s.proxy(&a), &s, &t);
    assert_eq!(port, s.a.port.to_string(), "reached the first sshd");
    let port = server_port(&s.b, "jump.localhost", &s.proxy(&b), &s, &t);
    assert_eq!(
        port,
        s.b.port.to_string(),
        "reached the second sshd, by name"
    );
    // cloudflared's TUNNEL_SERVICE_DESTINATION stands for --destination (without any, a
    // bastion stream has nowhere to go).
    let mut from_env = proxy_command(&s.edge.addr, &s.edge.ca(), &s.token);
    from_env
        .env
        .push(("TUNNEL_SERVICE_DESTINATION".into(), b.clone()));
    let port = server_port(&s.b, "jump.localhost", &from_env, &s, &t);
    assert_eq!(
        port,
        s.b.port.to_string(),
        "TUNNEL_SERVICE_DESTINATION picked the second sshd"
    );
    let audit = audit_when(
        &s.audit,
        STARTUP,
        "allow lines with the destinations",
        |t| {
            t.lines().any(|l| l.contains("\"allow\"") && l.contains(&a))
                && t.lines().any(|l| l.contains("\"allow\"") && l.contains(&b))
        },
    );
    assert!(audit.contains("\"destination\""), "{audit}");
}

#[test]
fn a_destination_outside_the_allow_list_is_refused_at_the_edge_with_a_reason_and_an_audit_line() {
    let s = setup("bastion-outside");
    let t = Tunnel::start_extra(
        s.dir.path(),
        "tunnel-jump",
        ("jump.localhost", "bastion"),
        &s.cert,
        &s.edge,
        &["--bastion-allow", "127.0.0.0/8:*"],
    );
    // sshd b's port is allowed only by name, not as an address: the edge cannot resolve.
    let outside = format!("127.0.0.1:{}", s.b.port);
    let (ok, stderr) = s.access("jump.localhost", &outside);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("not in the bastion allow-list of jump.localhost"),
        "{stderr}"
    );
    // An application without bastion config refuses any destination.
    let (ok, stderr) = s.access("ssh.localhost", &format!("127.0.0.1:{}", s.a.port));
    assert!(!ok && stderr.contains("not a jump host"), "{stderr}");
    // A hostile destination never leaves the client.
    let (ok, stderr) = s.access("jump.localhost", "root@127.0.0.1:22");
    assert!(!ok && stderr.contains("user@"), "{stderr}");
    let audit = audit_when(&s.audit, STARTUP, "the deny line", |t| {
        t.lines()
            .any(|l| l.contains("\"deny\"") && l.contains(&outside) && l.contains("allow-list"))
    });
    assert!(audit.contains("not a jump host"), "{audit}");
    assert!(
        !t.child().stderr_text().contains(&outside),
        "the refused destination reached the tunnel:\n{}",
        t.child().stderr_text()
    );
}

#[test]
fn a_tunnel_not_in_bastion_mode_takes_no_destination() {
    let s = setup("bastion-plain");
    let _t = Tunnel::start_extra(
        s.dir.path(),
        "tunnel-plain",
        ("plain.localhost", &s.a.url()),
        &s.cert,
        &s.edge,
        &[],
    );
    let (ok, stderr) = s.access("plain.localhost", &format!("127.0.0.1:{}", s.a.port));
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("not a jump host"), "{stderr}");
}

#[test]
fn loopback_and_link_local_are_refused_unless_explicitly_allowed() {
    let s = setup("bastion-special");
    // No --bastion-allow: the tunnel reaches what the edge vouched for, but not its own
    // loopback or the metadata address.
    let t = Tunnel::start_extra(
        s.dir.path(),
        "tunnel-open",
        ("open.localhost", "bastion"),
        &s.cert,
        &s.edge,
        &[],
    );
    // 0.0.0.0/0 at the edge does not grant the metadata address.
    let (ok, stderr) = s.access("open.localhost", "169.254.169.254:80");
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("not in the bastion allow-list"), "{stderr}");
    // The edge admits 127.0.0.1:A explicitly; the tunnel without its own allow-list refuses.
    let (ok, stderr) = s.access("open.localhost", &format!("127.0.0.1:{}", s.a.port));
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("loopback"), "{stderr}");
    t.child()
        .wait_for_stderr("loopback", STARTUP)
        .expect("the tunnel says why");
}
