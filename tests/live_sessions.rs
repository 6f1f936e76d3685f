//! Live control (issue 16): an operator sees who is connected now and cuts them off, and a
//! policy change on reload bites on open sessions. Real sshd and ssh, `postern access ssh` as
//! ProxyCommand, one edge with a config file, a tunnel.
//!
//! - `postern edge sessions list` shows the open ssh session with its token, hostname, source
//!   and bytes; `sessions kill ID` ends it: ssh exits saying why, the other session goes on, and
//!   the audit log has its `session_end` line with the bytes that moved;
//! - SIGHUP with a config whose policy no longer admits one token ends that token's session
//!   within 2 s and no other.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{
    free_port, origin_cert, postern, proxy_command, run_ok, service_token, temp_dir, wait_until,
    write_edge_config, Child, Edge, ServiceToken, Sshd, Tunnel,
};

const HOST: &str = "live.localhost";
/// What the edge promises for a reload's effect, plus a second for ssh to show it.
const ENDED_WITHIN: Duration = Duration::from_secs(3);

struct Live {
    dir: support::TempDir,
    sshd: Sshd,
    edge: Edge,
    state: PathBuf,
    config: PathBuf,
    listen: String,
    cert: PathBuf,
    a: ServiceToken,
    b: ServiceToken,
    _tunnel: Tunnel,
}

impl Live {
    fn start(name: &str) -> Live {
        support::require_all();
        let dir = temp_dir(name);
        let sshd = Sshd::start(dir.path());
        let state = dir.join("edge-state");
        let config = dir.join("edge.json");
        let listen = format!("127.0.0.1:{}", free_port());
        let a = service_token(&state, "token-a");
        let b = service_token(&state, "token-b");
        write_edge_config(
            &config,
            &listen,
            &state,
            serde_json::json!([{ "service_token": "token-a" }, { "service_token": "token-b" }]),
            serde_json::json!({}),
        );
        let edge = Edge::start_config(dir.path(), &config, &state, &[]);
        let cert = dir.join("cert.pem");
        origin_cert(&state, "localhost", &cert, &edge.addr);
        let tunnel = Tunnel::start(dir.path(), HOST, &sshd.url(), &cert, &edge);
        Live {
            dir,
            sshd,
            edge,
            state,
            config,
            listen,
            cert,
            a,
            b,
            _tunnel: tunnel,
        }
    }

    /// An ssh session with `token` that prints `marker`, then `extra` bytes, then waits;
    /// returns once all of it arrived.
    fn open(&self, token: &ServiceToken, marker: &str, extra: usize) -> Child {
        let proxy = proxy_command(&self.edge.addr, &self.edge.ca(), token);
        let mut cmd: Command = self.sshd.ssh_command(HOST, &proxy);
        cmd.env("HOME", self.dir.join("home"));
        cmd.arg(format!(
            "head -c {extra} /dev/zero | tr '\\0' x; echo; echo {marker}; exec sleep 120"
        ));
        let child = Child::spawn(marker, cmd, self.dir.path());
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

    /// `postern edge sessions ARGS` as the zone's origin certificate; its stdout.
    fn sessions(&self, args: &[&str]) -> String {
        run_ok(
            postern(&self.dir.join("home"))
                .args(["edge", "sessions"])
                .args(args)
                .arg("--origincert")
                .arg(&self.cert)
                .args(["--edge", &self.edge.edge_arg(), "--ca"])
                .arg(self.edge.ca())
                .stdin(Stdio::null()),
            &format!("postern edge sessions {}", args.join(" ")),
        )
    }

    fn list(&self) -> Vec<serde_json::Value> {
        let out = self.sessions(&["list", "--output", "json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap_or_else(|e| panic!("sessions list --output json ({e}): {out}"))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        audit_lines(&self.state)
    }
}

fn audit_lines(state: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(state.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn ended_lines(lines: &[serde_json::Value], id: &str) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter(|l| l["event"] == "session_end" && l["session"] == id)
        .cloned()
        .collect()
}

#[test]
fn an_operator_lists_the_open_ssh_sessions_and_kills_one_which_ends_saying_why() {
    let live = Live::start("live-kill");
    let a = live.open(&live.a, "session-a", 300_000);
    let b = live.open(&live.b, "session-b", 0);

    let list = live.list();
    assert_eq!(list.len(), 2, "{list:?}");
    let of = |token: &str| {
        list.iter()
            .find(|s| s["service_token"] == token)
            .unwrap_or_else(|| panic!("no session of {token}: {list:?}"))
            .clone()
    };
    let (sa, sb) = (of("token-a"), of("token-b"));
    assert_eq!(sa["hostname"], HOST);
    assert!(sa["source"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(
        sa["bytes_down"].as_u64().unwrap() >= 300_000,
        "session a's output went down: {sa}"
    );
    assert!(sa["bytes_up"].as_u64().unwrap() > 0, "{sa}");
    let id_a = sa["id"].as_str().unwrap().to_owned();
    let id_b = sb["id"].as_str().unwrap().to_owned();
    assert_ne!(id_a, id_b);
    // The start of each is its `access` allow line, with the session id.
    assert!(live
        .audit()
        .iter()
        .any(|l| l["event"] == "access" && l["decision"] == "allow" && l["session"] == id_a));
    let table = live.sessions(&["list"]);
    assert!(
        table.contains(&id_a) && table.contains("token token-a") && table.contains(HOST),
        "{table}"
    );

    let out = live.sessions(&["kill", &id_a]);
    assert!(out.contains(&id_a), "{out}");
    let status = a
        .wait_exit(Duration::from_secs(10))
        .expect("the killed session ends");
    assert!(!status.success());
    let stderr = a.stderr_text();
    assert!(
        stderr.contains("session ended by an administrator"),
        "ssh says why: {stderr}"
    );
    assert!(b.try_wait().is_none(), "{}", b.stderr_text());
    let lines = live.audit();
    let end = ended_lines(&lines, &id_a);
    assert_eq!(end.len(), 1, "{end:?}");
    assert_eq!(end[0]["reason"], "session ended by an administrator");
    assert_eq!(end[0]["service_token"], "token-a");
    assert!(end[0]["bytes_down"].as_u64().unwrap() >= 300_000, "{end:?}");
    assert!(end[0]["duration_ms"].as_u64().is_some());
    assert!(lines
        .iter()
        .any(|l| l["event"] == "session_kill" && l["killed"][0] == id_a.as_str()));
    let left: Vec<String> = live
        .list()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, vec![id_b.clone()]);

    // By token: the other one; nothing left to kill after.
    let out = live.sessions(&["kill", "--token", "token-b"]);
    assert!(out.contains(&id_b), "{out}");
    b.wait_exit(Duration::from_secs(10))
        .expect("the killed session ends");
    assert!(live
        .sessions(&["kill", "--hostname", HOST])
        .contains("No open session"));
    assert!(live.list().is_empty());
}

#[test]
fn a_reload_whose_policy_drops_a_token_ends_that_tokens_session_within_2_s_and_no_other() {
    let live = Live::start("live-reload");
    let a = live.open(&live.a, "session-a", 0);
    let b = live.open(&live.b, "session-b", 0);
    write_edge_config(
        &live.config,
        &live.listen,
        &live.state,
        serde_json::json!([{ "service_token": "token-b" }]),
        serde_json::json!({}),
    );
    let status = Command::new("kill")
        .args(["-HUP", &live.edge.child().id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    let hup = Instant::now();
    let status = a
        .wait_exit(ENDED_WITHIN)
        .expect("token a's session ends after the reload");
    eprintln!("token a's session ended {:?} after SIGHUP", hup.elapsed());
    assert!(!status.success());
    assert!(
        a.stderr_text().contains("the edge's policy changed"),
        "{}",
        a.stderr_text()
    );
    // Token b's session goes on, and still moves bytes.
    std::thread::sleep(Duration::from_millis(500));
    assert!(b.try_wait().is_none(), "{}", b.stderr_text());
    let list = live.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["service_token"], "token-b");
    assert!(live.audit().iter().any(|l| l["event"] == "session_end"
        && l["service_token"] == "token-a"
        && l["reason"] == "access revoked: the edge's policy changed"));
    // And a new session with token a is refused.
    let proxy = proxy_command(&live.edge.addr, &live.edge.ca(), &live.a);
    let mut cmd = live.sshd.ssh_command(HOST, &proxy);
    cmd.env("HOME", live.dir.join("home"))
        .arg("echo in")
        .stdin(Stdio::null());
    let out = support::run_with_deadline(&mut cmd, Duration::from_secs(30), "ssh with token a");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The SSO edge (real provider, Chromium): alice is admitted by her email's domain, dave only
/// by his group `ops`. A reload whose policy no longer admits the group ends dave's open ssh
/// session within 2 s, and alice's goes on.
#[test]
fn a_reload_that_drops_a_group_from_the_policy_ends_that_users_session_and_no_one_elses() {
    use support::sso::Sso;
    let sso = Sso::start("live-sso-reload");
    for user in ["alice", "dave"] {
        let (ok, stderr) = sso.login(user, "ssh.localhost", "You can close this window");
        assert!(ok, "{user} signs in: {stderr}");
    }
    let open = |user: &str| {
        let mut cmd = sso.ssh_command(
            user,
            "ssh.localhost",
            &format!("echo open-{user}; exec sleep 120"),
        );
        cmd.env("BROWSER", "false");
        let child = Child::spawn(&format!("ssh-{user}"), cmd, sso.dir.path());
        let marker = format!("open-{user}");
        wait_until(Duration::from_secs(30), &marker, || {
            child.stdout_text().contains(&marker) || child.try_wait().is_some()
        });
        assert!(child.try_wait().is_none(), "{}", child.stderr_text());
        child
    };
    let alice = open("alice");
    let dave = open("dave");

    let path = sso.dir.join("edge.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let policies = config["applications"][0]["policies"]
        .as_array_mut()
        .expect("ssh.localhost's policies");
    let before = policies.len();
    policies.retain(|p| p["name"] != "ops");
    assert_eq!(policies.len(), before - 1);
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    fs::rename(&tmp, &path).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &sso.edge.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    let hup = Instant::now();
    dave.wait_exit(ENDED_WITHIN)
        .expect("dave's session ends after the reload");
    eprintln!("dave's session ended {:?} after SIGHUP", hup.elapsed());
    assert!(
        dave.stderr_text().contains("the edge's policy changed"),
        "{}",
        dave.stderr_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(alice.try_wait().is_none(), "{}", alice.stderr_text());
    let audit = audit_lines(&sso.state);
    assert!(audit.iter().any(|l| l["event"] == "session_end"
        && l["email"] == "dave@partner.org"
        && l["reason"] == "access revoked: the edge's policy changed"));
    assert!(!audit
        .iter()
        .any(|l| l["event"] == "session_end" && l["email"] == "alice@example.com"));
}
