//! A cloudflared user's command lines, environment variables and units run with `cloudflared`
//! replaced by `postern`: `--logfile` and `--pidfile`, the `TUNNEL_*` variables, `tunnel
//! token` + `tunnel run --token`, `--cred-file`, every flag that means nothing here (each with
//! its notice), against a real edge with real sshd and ssh behind it.

use crate::support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::ready::{metrics_listen, wait_registered_connections};
use support::{
    postern, proxy_command, require_all, run_with_deadline, service_token, temp_dir, wait_until,
    Child, Edge, Sshd,
};

const STARTUP: Duration = Duration::from_secs(30);

fn ssh_echo(sshd: &Sshd, host: &str, proxy: &support::Proxy, home: &Path, marker: &str) {
    let out = run_with_deadline(
        sshd.ssh_command(host, proxy)
            .env("HOME", home)
            .arg(format!("echo {marker}"))
            .stdin(Stdio::null()),
        Duration::from_secs(60),
        "ssh through the tunnel",
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == marker,
        "ssh failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Takes the edge's CA out of an origin credential (the edge put it there), as for an edge
/// whose CA is handed out separately: then only `--cacert` / `TUNNEL_CACERT` makes the
/// tunnel trust the edge.
fn strip_edge_ca(cert: &Path) {
    let pem = fs::read_to_string(cert).unwrap();
    let begin = "-----BEGIN POSTERN EDGE CA-----";
    let end = "-----END POSTERN EDGE CA-----\n";
    let (kept, rest) = pem
        .split_once(begin)
        .expect("the credential carries the edge CA");
    let rest = &rest[rest.find(end).expect("its END line") + end.len()..];
    assert!(!rest.contains(begin), "one edge CA");
    fs::write(cert, format!("{kept}{rest}")).unwrap();
}

/// An sshd, an edge, a service token and an origin certificate (`cert.pem`) without the
/// edge's CA: only `--cacert` or `TUNNEL_CACERT` can make a tunnel trust the edge.
fn without_the_edge_ca(
    name: &str,
) -> (
    support::TempDir,
    Sshd,
    Edge,
    support::ServiceToken,
    std::path::PathBuf,
) {
    let dir = temp_dir(name);
    let sshd = Sshd::start(dir.path());
    let edge = Edge::start(dir.path());
    let token = service_token(&edge.state, "e2e");
    let cert = dir.join("cert.pem");
    support::origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    strip_edge_ca(&cert);
    (dir, sshd, edge, token, cert)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn logfile_and_pidfile_follow_the_tunnel_as_in_cloudflared() {
    require_all();
    let dir = temp_dir("cf-logfile");
    let sshd = Sshd::start(dir.path());
    let edge = Edge::start(dir.path());
    let cert = dir.join("cert.pem");
    support::origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    let (logfile, pidfile) = (dir.join("log/postern.log"), dir.join("postern.pid"));
    fs::create_dir_all(logfile.parent().unwrap()).unwrap();
    let metrics = metrics_listen();
    // cloudflared's own spelling: global flags before `tunnel`, ignored ones among them.
    let mut cmd = postern(&dir.join("home"));
    cmd.arg("--pidfile")
        .arg(&pidfile)
        .arg("--logfile")
        .arg(&logfile)
        .args(["--no-autoupdate", "tunnel", "--protocol", "quic"])
        .args(["--hostname", "ssh.localhost", "--url", &sshd.url()])
        .arg("--origincert")
        .arg(&cert)
        .args(["--edge", &edge.edge_arg(), "--ca"])
        .arg(edge.ca())
        .args(["--metrics", &metrics.to_string()]);
    let tunnel = Child::spawn("tunnel", cmd, dir.path());
    wait_registered_connections(&tunnel, &metrics, 1, STARTUP).expect("registered");

    wait_until(STARTUP, "the pid file", || pidfile.is_file());
    let pid = fs::read_to_string(&pidfile).unwrap();
    assert_eq!(pid.trim(), tunnel.id().to_string(), "the pid file's pid");
    assert_eq!(mode(&logfile), 0o600, "a new log file is 0600");
    wait_until(STARTUP, "the registration in the log file", || {
        fs::read_to_string(&logfile)
            .unwrap_or_default()
            .contains("registered ssh.localhost")
    });
    // stderr keeps its lines too (journald, supervisors).
    assert!(tunnel.stderr_text().contains("registered ssh.localhost"));
    assert!(tunnel
        .stderr_text()
        .contains("--protocol is a cloudflared flag"));

    let status = tunnel.stop().expect("tunnel exits on SIGTERM");
    assert!(status.success(), "{status}: {}", tunnel.stderr_text());
    assert!(!pidfile.exists(), "the pid file is removed on a clean exit");
    // Appended to, not truncated, by the next run.
    let before = fs::read_to_string(&logfile).unwrap();
    let out = run_with_deadline(
        postern(&dir.join("home"))
            .arg("tunnel")
            .arg("--logfile")
            .arg(&logfile)
            .args(["--hostname", "ssh.localhost", "--url", "ftp://x"])
            .stdin(Stdio::null()),
        STARTUP,
        "a second run",
    );
    assert!(!out.status.success());
    let after = fs::read_to_string(&logfile).unwrap();
    assert!(after.starts_with(&before), "the log file was truncated");
}

#[test]
fn a_tunnel_started_from_tunnel_env_vars_alone_serves_ssh() {
    require_all();
    let (dir, sshd, edge, token, cert) = without_the_edge_ca("cf-env");
    let metrics = metrics_listen();
    let logfile = dir.join("env.log");
    let mut cmd = postern(&dir.join("home"));
    cmd.arg("tunnel")
        .env("TUNNEL_HOSTNAME", "ssh.localhost")
        .env("TUNNEL_URL", sshd.url())
        .env("TUNNEL_ORIGIN_CERT", &cert)
        .env("TUNNEL_EDGE", edge.edge_arg())
        .env("TUNNEL_CACERT", edge.ca())
        .env("TUNNEL_METRICS", metrics.to_string())
        .env("TUNNEL_LOGFILE", &logfile)
        .env("TUNNEL_LOGLEVEL", "debug")
        .env("NO_AUTOUPDATE", "true")
        .env("TUNNEL_TRANSPORT_PROTOCOL", "quic");
    let tunnel = Child::spawn("tunnel", cmd, dir.path());
    wait_registered_connections(&tunnel, &metrics, 1, STARTUP).expect("registered");
    let stderr = tunnel.stderr_text();
    assert!(stderr.contains("NO_AUTOUPDATE"), "{stderr}");
    assert!(stderr.contains("TUNNEL_TRANSPORT_PROTOCOL"), "{stderr}");
    assert!(stderr.contains("DEBUG"), "TUNNEL_LOGLEVEL=debug: {stderr}");
    assert!(logfile.is_file(), "TUNNEL_LOGFILE");

    // The client side: cloudflared's TUNNEL_SERVICE_TOKEN_ID/SECRET instead of POSTERN_'s.
    let mut proxy = proxy_command(&edge.addr, &edge.ca(), &token);
    proxy.env = vec![
        ("TUNNEL_SERVICE_TOKEN_ID".into(), token.id.clone()),
        ("TUNNEL_SERVICE_TOKEN_SECRET".into(), token.secret.clone()),
    ];
    ssh_echo(
        &sshd,
        "ssh.localhost",
        &proxy,
        &dir.join("home"),
        "from-env",
    );
}

#[test]
fn a_bad_tunnel_env_value_is_named_and_a_flag_beats_it() {
    let dir = temp_dir("cf-env-bad");
    let config = dir.join("config.json");
    fs::write(
        &config,
        r#"{"tunnel": "web", "ingress": [{"service": "ssh://localhost:22"}]}"#,
    )
    .unwrap();
    let validate = |extra: &[&str]| {
        let mut cmd = postern(&dir.join("home"));
        cmd.args(["tunnel", "ingress", "validate", "--config"])
            .arg(&config)
            .args(extra)
            .env("TUNNEL_GRACE_PERIOD", "soon")
            .env("TUNNEL_TOKEN", "c2VjcmV0")
            .stdin(Stdio::null());
        run_with_deadline(&mut cmd, STARTUP, "ingress validate")
    };
    let out = validate(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("TUNNEL_GRACE_PERIOD=\"soon\""),
        "the variable is named: {stderr}"
    );
    let out = validate(&["--grace-period", "5s"]);
    assert!(
        out.status.success(),
        "the flag wins over the variable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `postern tunnel ARGS --origincert CERT --edge ADDR --ca CA` in `home`.
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

#[test]
fn a_tunnel_runs_from_its_token_alone() {
    require_all();
    let dir = temp_dir("cf-token");
    let sshd = Sshd::start(dir.path());
    let edge = Edge::start(dir.path());
    let token = service_token(&edge.state, "e2e");
    let admin_home = dir.join("admin");
    let postern_dir = admin_home.join(".postern");
    fs::create_dir_all(&postern_dir).unwrap();
    let cert = postern_dir.join("cert.pem");
    support::origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    let ok = |cmd: &mut Command, what: &str| {
        let out = run_with_deadline(cmd, STARTUP, what);
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(
        &mut tunnel_cli(&admin_home, &cert, &edge, &["create", "web"]),
        "create",
    );
    ok(
        &mut tunnel_cli(
            &admin_home,
            &cert,
            &edge,
            &["route", "dns", "web", "ssh.localhost"],
        ),
        "route dns",
    );
    let tunnel_token = ok(
        postern(&admin_home)
            .args(["tunnel", "token", "web"])
            .arg("--origincert")
            .arg(&cert),
        "tunnel token",
    );
    let tunnel_token = tunnel_token.trim().to_owned();
    assert!(tunnel_token.len() > 100, "{tunnel_token}");
    let cleanup = ok(
        postern(&admin_home).args(["tunnel", "cleanup", "web"]),
        "tunnel cleanup",
    );
    assert!(cleanup.contains("Nothing to clean up for web"), "{cleanup}");

    // Another machine: an empty HOME, no cert.pem, no credentials file; the token in the
    // environment (as `service install TOKEN` runs it), the edge and its CA from the token.
    let server_home = dir.join("server");
    let metrics = metrics_listen();
    let mut cmd = postern(&server_home);
    cmd.args(["tunnel", "--no-autoupdate", "run", "--url", &sshd.url()])
        .args(["--metrics", &metrics.to_string()])
        .env("TUNNEL_TOKEN", &tunnel_token);
    let tunnel = Child::spawn("tunnel", cmd, dir.path());
    wait_registered_connections(&tunnel, &metrics, 1, STARTUP).expect("registered");
    let proxy = proxy_command(&edge.addr, &edge.ca(), &token);
    ssh_echo(&sshd, "ssh.localhost", &proxy, &server_home, "from-token");
    let stderr = tunnel.stderr_text();
    assert!(!stderr.contains(&tunnel_token[..40]), "the token is logged");
    assert!(
        !server_home.join(".postern").exists(),
        "nothing written to the server's HOME"
    );
    tunnel.stop();

    // The same tunnel from each of cloudflared's other spellings, each the only place the
    // server learns its credentials from: `--token T` (its docker line), `--cred-file F`,
    // `TUNNEL_CRED_FILE=F` (the credentials file copied off the admin machine).
    let creds_file = fs::read_dir(&postern_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("tunnel create wrote the credentials file");
    let server_creds = dir.join("server-etc/web.json");
    fs::create_dir_all(server_creds.parent().unwrap()).unwrap();
    fs::copy(&creds_file, &server_creds).unwrap();
    let serve = |what: &str, before_run: &[&str], extra: &[&str], env: Option<(&str, &Path)>| {
        let metrics = metrics_listen();
        let mut cmd = postern(&server_home);
        cmd.arg("tunnel")
            .args(before_run)
            .args(["run", "--url", &sshd.url()])
            .args(extra)
            .args(["--metrics", &metrics.to_string()]);
        if let Some((var, value)) = env {
            cmd.env(var, value);
        }
        let tunnel = Child::spawn(what, cmd, dir.path());
        wait_registered_connections(&tunnel, &metrics, 1, STARTUP)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        ssh_echo(&sshd, "ssh.localhost", &proxy, &server_home, what);
        let stderr = tunnel.stderr_text();
        assert!(
            !stderr.contains(&tunnel_token[..40]),
            "{what}: the token is logged"
        );
        tunnel.stop();
    };
    // cloudflared's docs line: `cloudflared tunnel --protocol http2 run --token T`.
    serve(
        "token-flag",
        &["--no-autoupdate", "--protocol", "http2"],
        &["--token", &tunnel_token],
        None,
    );
    let creds_arg = server_creds.to_str().unwrap();
    serve(
        "cred-file-flag",
        &[],
        &["--cred-file", creds_arg, "web"],
        None,
    );
    serve(
        "cred-file-env",
        &[],
        &["web"],
        Some(("TUNNEL_CRED_FILE", &server_creds)),
    );
    assert!(
        !server_home.join(".postern").exists(),
        "nothing written to the server's HOME"
    );

    // `service install TOKEN`, as cloudflared's: the token in a 0600 EnvironmentFile, not on
    // the unit's command line (which `ps` and `systemctl status` show).
    let units = dir.join("units");
    let env_file = dir.join("etc/postern-tunnel.env");
    ok(
        postern(&server_home)
            .args(["service", "install", &tunnel_token, "--url", &sshd.url()])
            .arg("--token-file")
            .arg(&env_file)
            .arg("--unit-dir")
            .arg(&units)
            .args(["--user", "root", "--no-enable"])
            .stdin(Stdio::null()),
        "service install TOKEN",
    );
    assert_eq!(mode(&env_file), 0o600, "the token file's mode");
    assert_eq!(
        fs::read_to_string(&env_file).unwrap(),
        format!("TUNNEL_TOKEN={tunnel_token}\n")
    );
    let unit_path = units.join("postern-tunnel.service");
    let unit = fs::read_to_string(&unit_path).unwrap();
    assert!(
        !unit.contains(&tunnel_token[..40]),
        "the token is in the unit:\n{unit}"
    );
    assert!(
        unit.contains(&format!("EnvironmentFile={}", env_file.display())),
        "{unit}"
    );
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_default();
    assert!(
        exec.ends_with(&format!("\"tunnel\" \"--url\" \"{}\" \"run\"", sshd.url())),
        "{exec}"
    );
    let verify = run_with_deadline(
        Command::new(support::require("systemd-analyze"))
            .args(["verify", "--man=no"])
            .arg(&unit_path)
            .stdin(Stdio::null()),
        STARTUP,
        "systemd-analyze verify",
    );
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // `service uninstall`, as cloudflared's (no role): the unit goes, and the token file with
    // it (it holds the tunnel's private key; cloudflared's token lives in its unit).
    let out = ok(
        postern(&server_home)
            .args(["service", "uninstall", "--unit-dir"])
            .arg(&units)
            .arg("--no-disable")
            .stdin(Stdio::null()),
        "service uninstall",
    );
    assert!(!unit_path.exists(), "the unit is removed: {out}");
    assert!(!env_file.exists(), "the token file is removed: {out}");
    assert!(
        out.contains(&format!(
            "removed the tunnel token in {}",
            env_file.display()
        )),
        "{out}"
    );

    // A cloudflared token is refused saying what it is, without echoing it.
    let cf = "eyJhIjoiYWJjIiwidCI6IjEyMyIsInMiOiJzZWNyZXQifQ==";
    let out = run_with_deadline(
        postern(&server_home)
            .args(["tunnel", "run", "--token", cf])
            .stdin(Stdio::null()),
        STARTUP,
        "run with a cloudflared token",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("Cloudflare tunnel token"), "{stderr}");
    assert!(!stderr.contains(cf), "{stderr}");
}

/// A command line shaped like cloudflared's docs and units, with every flag that means
/// nothing here (`cloudflared::IGNORED`), some before `tunnel` as global flags and some after
/// it: each is accepted with its own one-line notice that says why, and the tunnel then
/// serves ssh. The flags that do act, in cloudflared's spelling, act: `--cacert` is the only
/// trust for the edge's private CA (the credential's copy is taken out, so without it the TLS
/// handshake fails), `TUNNEL_PIDFILE` gets the pid, `--loglevel debug` turns on debug lines,
/// `--grace-period 1s` cuts a session still open at SIGTERM after a second.
#[test]
fn every_ignored_cloudflared_flag_is_noticed_with_its_reason_and_the_tunnel_serves() {
    require_all();
    let (dir, sshd, edge, token, cert) = without_the_edge_ca("cf-ignored");
    let pidfile = dir.join("run/postern.pid");
    fs::create_dir_all(pidfile.parent().unwrap()).unwrap();
    let metrics = metrics_listen();
    let mut cmd = postern(&dir.join("home"));
    // ExecStart=/usr/bin/cloudflared --no-autoupdate --autoupdate-freq 24h --retries 10
    //   --tag env=prod … tunnel --protocol http2 … --hostname H --url URL
    cmd.args([
        "--no-autoupdate",
        "--autoupdate-freq",
        "24h",
        "--retries",
        "10",
    ])
    .args(["--tag", "env=prod", "--compression-quality=0"])
    .args(["--edge-bind-address", "127.0.0.1", "tunnel"])
    .args([
        "--protocol",
        "http2",
        "--edge-ip-version",
        "auto",
        "--region=us",
    ])
    .args(["--transport-loglevel", "warn", "--proto-loglevel", "info"])
    .args(["--metrics-update-freq", "5s", "--loglevel", "debug"])
    .args(["--grace-period", "1s"])
    .args(["--hostname", "ssh.localhost", "--url", &sshd.url()])
    .arg("--origincert")
    .arg(&cert)
    .args(["--edge", &edge.edge_arg(), "--cacert"])
    .arg(edge.ca())
    .args(["--metrics", &metrics.to_string()])
    .env("TUNNEL_PIDFILE", &pidfile);
    for ignored in postern::cloudflared::IGNORED {
        for var in ignored.vars {
            cmd.env(var, "x");
        }
    }
    let tunnel = Child::spawn("tunnel", cmd, dir.path());
    wait_registered_connections(&tunnel, &metrics, 1, STARTUP).expect("registered");
    let proxy = proxy_command(&edge.addr, &edge.ca(), &token);
    ssh_echo(
        &sshd,
        "ssh.localhost",
        &proxy,
        &dir.join("home"),
        "docs-line",
    );

    let stderr = tunnel.stderr_text();
    for ignored in postern::cloudflared::IGNORED {
        let notice = format!(
            "--{} is a cloudflared flag with no meaning here; ignored: {}",
            ignored.flag, ignored.why
        );
        assert_eq!(
            stderr.matches(&notice).count(),
            1,
            "one notice for --{}: {notice:?} in:\n{stderr}",
            ignored.flag
        );
        for var in ignored.vars {
            let notice = format!(
                "{var} (cloudflared's --{}) has no meaning here; ignored: {}",
                ignored.flag, ignored.why
            );
            assert!(stderr.contains(&notice), "{notice:?} in:\n{stderr}");
        }
    }
    // Each reason is its own, and says something.
    for (flag, why) in [
        ("retries", "retries forever"),
        ("proto-loglevel", "--loglevel"),
        ("edge-bind-address", "routes pick"),
        ("no-autoupdate", "package manager"),
    ] {
        let why_given = postern::cloudflared::ignored_flag(flag).map(|i| i.why);
        assert!(
            why_given.is_some_and(|w| w.contains(why)),
            "--{flag}: {why_given:?}"
        );
    }
    assert!(stderr.contains("DEBUG"), "--loglevel debug: {stderr}");

    wait_until(STARTUP, "the pid file from TUNNEL_PIDFILE", || {
        pidfile.is_file()
    });
    let pid = fs::read_to_string(&pidfile).unwrap();
    assert_eq!(pid.trim(), tunnel.id().to_string(), "the pid file's pid");

    // `--grace-period 1s` (cloudflared's duration): a session still open at SIGTERM is cut
    // after 1 s, not after the default 30 s.
    let mut session = sshd
        .ssh_command("ssh.localhost", &proxy)
        .env("HOME", dir.join("home"))
        .arg("echo started; sleep 120")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ssh");
    let mut first = String::new();
    BufReader::new(session.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read");
    assert_eq!(
        first.trim(),
        "started",
        "the session is open before SIGTERM"
    );
    let term = Command::new("kill")
        .args(["-TERM", &tunnel.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let status = tunnel
        .wait_exit(Duration::from_secs(15))
        .expect("--grace-period 1s: the tunnel exits within seconds of SIGTERM");
    assert!(status.success(), "{status}: {}", tunnel.stderr_text());
    let _ = session.kill();
    let _ = session.wait();
    assert!(!pidfile.exists(), "the pid file is removed on a clean exit");
}
