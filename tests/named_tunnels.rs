//! Named tunnels as cloudflared users know them: `tunnel create`, `route dns`, `run` with a
//! config file of ingress rules, `list`, `info` and `delete`, against a real edge, with real
//! sshd and ssh behind them.

use crate::support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::ready::{metrics_listen, wait_registered_connections};
use support::{
    postern, proxy_command, require_all, run_with_deadline, service_token, temp_dir, Child, Edge,
    Sshd,
};

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

fn run(cmd: &mut Command, what: &str) -> Output {
    run_with_deadline(cmd, Duration::from_secs(30), what)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(cmd: &mut Command, what: &str) -> String {
    let out = run(cmd, what);
    assert!(out.status.success(), "{what} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(cmd: &mut Command, what: &str, needle: &str) -> String {
    let out = run(cmd, what);
    let t = text(&out);
    assert!(!out.status.success(), "{what} should fail: {t}");
    assert!(t.contains(needle), "{what}: expected {needle:?} in:\n{t}");
    t
}

#[test]
fn create_route_run_info_delete() {
    require_all();
    let dir = temp_dir("named");
    let sshd = Sshd::start(dir.path());
    let edge = Edge::start(dir.path());
    let token = service_token(&edge.state, "e2e");
    let proxy = proxy_command(&edge.addr, &edge.ca(), &token);
    let home = dir.join("home");
    let postern_dir = home.join(".postern");
    fs::create_dir_all(&postern_dir).unwrap();
    let cert = postern_dir.join("cert.pem");
    support::origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    let cli = |args: &[&str]| tunnel_cli(&home, &cert, &edge, args);

    // create: a credentials file (0600) next to cert.pem, named by the tunnel's id.
    let out = ok(&mut cli(&["create", "web"]), "tunnel create");
    let id = out
        .split("Created tunnel web with id ")
        .nth(1)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no id in: {out}"));
    let creds = postern_dir.join(format!("{id}.json"));
    let mode = fs::metadata(&creds)
        .expect("credentials file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "credentials mode");
    refused(
        &mut cli(&["create", "web"]),
        "second create",
        "already exists",
    );

    // list, as a table and as JSON.
    let list = ok(&mut cli(&["list"]), "tunnel list");
    assert!(list.contains(&id) && list.contains("web"), "{list}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&mut cli(&["list", "--output", "json"]), "list json")).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(1), "{json}");

    // route dns: names in this zone only.
    for host in ["ssh.localhost", "git.localhost"] {
        let out = ok(&mut cli(&["route", "dns", "web", host]), "route dns");
        assert!(
            out.contains(&format!("{host} is routed to tunnel web")),
            "{out}"
        );
    }
    // Flags may come before the subcommand and between `route` and `dns`, as with cloudflared.
    let mut flags_first = postern(&home);
    flags_first
        .args(["tunnel", "--origincert"])
        .arg(&cert)
        .args(["route", "--edge", &edge.edge_arg(), "--ca"])
        .arg(edge.ca())
        .args(["dns", "web", "nothing.localhost"])
        .stdin(Stdio::null());
    let out = ok(&mut flags_first, "route dns, flags first");
    assert!(
        out.contains("nothing.localhost is routed to tunnel web"),
        "{out}"
    );

    // Another zone's certificate sees none of this zone's tunnels and cannot touch them.
    let other = postern_dir.join("other.pem");
    support::origin_cert(&edge.state, "other.localhost", &other, &edge.addr);
    let other_cli = |args: &[&str]| tunnel_cli(&home, &other, &edge, args);
    assert!(ok(&mut other_cli(&["list"]), "other zone: list").contains("No tunnels"));
    refused(
        &mut other_cli(&["route", "dns", "web", "x.other.localhost"]),
        "other zone: route",
        "no tunnel \"web\" in zone other.localhost",
    );
    refused(
        &mut other_cli(&["delete", "-f", "web"]),
        "other zone: delete",
        "no tunnel \"web\"",
    );
    // The tunnel's own credential administers nothing.
    let creds_json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&creds).unwrap()).unwrap();
    let tunnel_pem = dir.join("tunnel-cred.pem");
    fs::write(&tunnel_pem, creds_json["Credential"].as_str().unwrap()).unwrap();
    fs::set_permissions(&tunnel_pem, fs::Permissions::from_mode(0o600)).unwrap();
    refused(
        &mut tunnel_cli(&home, &tunnel_pem, &edge, &["list"]),
        "a tunnel's credential as admin",
        "cannot manage tunnels",
    );
    refused(
        &mut cli(&["route", "dns", "web", "ssh.example.com"]),
        "route outside the zone",
        "not in zone localhost",
    );
    refused(
        &mut cli(&["route", "dns", "nosuch", "x.localhost"]),
        "route to an unknown tunnel",
        "no tunnel \"nosuch\"",
    );
    // The quick form cannot take a hostname routed to a named tunnel.
    let quick = tunnel_cli(
        &home,
        &cert,
        &edge,
        &["--hostname", "ssh.localhost", "--url", &sshd.url()],
    );
    let quick = Child::spawn("quick", quick, dir.path());
    let status = quick
        .wait_exit(Duration::from_secs(20))
        .expect("quick tunnel exits");
    assert!(!status.success());
    assert!(
        quick.stderr_text().contains("already registered"),
        "{}",
        quick.stderr_text()
    );

    // run: a config file with ingress rules (flags before the subcommand, as cloudflared).
    let config = dir.join("tunnel.json");
    let cfg = serde_json::json!({
        "tunnel": "web",
        "credentials-file": creds,
        "edge": edge.edge_arg(),
        "ca": edge.ca(),
        "ha-connections": 2,
        "ingress": [
            { "hostname": "ssh.localhost", "service": sshd.url() },
            { "hostname": "git.localhost", "service": sshd.url() },
            { "service": "http_status:404" }
        ]
    });
    fs::write(&config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let validate = ok(
        postern(&home)
            .args(["tunnel", "ingress", "validate", "--config"])
            .arg(&config),
        "ingress validate",
    );
    assert!(validate.contains("OK"), "{validate}");
    let mut run_cmd = postern(&home);
    let metrics = metrics_listen();
    run_cmd
        .env("POSTERN_METRICS", metrics.to_string())
        .args(["tunnel", "--config"])
        .arg(&config)
        .arg("run");
    let origin = Child::spawn("named-origin", run_cmd, dir.path());
    wait_registered_connections(&origin, &metrics, 2, Duration::from_secs(20))
        .expect("both connections register");

    for host in ["ssh.localhost", "git.localhost"] {
        let marker = format!("through-{host}");
        let out = run(
            sshd.ssh_command(host, &proxy)
                .arg(format!("echo {marker}"))
                .stdin(Stdio::null()),
            "ssh through the named tunnel",
        );
        assert!(
            out.status.success(),
            "ssh {host}: {}\norigin:\n{}",
            text(&out),
            origin.stderr_text()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), marker);
    }
    // Routed to the tunnel, but the catch-all refuses it.
    let out = run(
        sshd.ssh_command("nothing.localhost", &proxy)
            .arg("true")
            .stdin(Stdio::null()),
        "ssh to the catch-all",
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no service for nothing.localhost"),
        "{}",
        text(&out)
    );

    // route dns --overwrite-dns (cloudflared's; -f too): a hostname routed to another tunnel
    // of the zone moves only when asked, and then streams for it go to the new tunnel.
    ok(&mut cli(&["create", "web2"]), "tunnel create web2");
    refused(
        &mut cli(&["route", "dns", "web2", "nothing.localhost"]),
        "route a hostname routed to another tunnel",
        "pass --overwrite-dns to move it",
    );
    let out = ok(
        &mut cli(&[
            "route",
            "dns",
            "--overwrite-dns",
            "web2",
            "nothing.localhost",
        ]),
        "route dns --overwrite-dns",
    );
    assert!(
        out.contains("nothing.localhost is routed to tunnel web2") && out.contains("replacing"),
        "{out}"
    );
    let info2 = ok(&mut cli(&["info", "web2"]), "tunnel info web2");
    assert!(info2.contains("ROUTES:   nothing.localhost"), "{info2}");
    // web2 has no connection: the stream no longer reaches web's catch-all rule.
    let out = run(
        sshd.ssh_command("nothing.localhost", &proxy)
            .arg("true")
            .stdin(Stdio::null()),
        "ssh to a hostname routed to an idle tunnel",
    );
    assert!(!out.status.success());
    assert!(
        !text(&out).contains("no service for nothing.localhost"),
        "still routed to web: {}",
        text(&out)
    );
    let out = ok(
        &mut cli(&["route", "dns", "-f", "web", "nothing.localhost"]),
        "route dns -f",
    );
    assert!(out.contains("routed to tunnel web ("), "{out}");
    ok(&mut cli(&["delete", "web2"]), "delete web2");

    // info: routes and both connections.
    let info = ok(&mut cli(&["info", "web"]), "tunnel info");
    assert!(
        info.contains("ROUTES:   git.localhost, nothing.localhost, ssh.localhost"),
        "{info}"
    );
    assert_eq!(
        info.matches("127.0.0.1").count(),
        2,
        "two connections:\n{info}"
    );
    // Each with the round trip the edge measured (its probe PING went out on the origin's
    // first frame, long before this): a figure in milliseconds, not "-".
    let column = info
        .lines()
        .find_map(|l| {
            l.starts_with("CONNECTOR ID")
                .then(|| l.find("RTT"))
                .flatten()
        })
        .unwrap_or_else(|| panic!("an RTT column:\n{info}"));
    for row in info.lines().filter(|l| l.contains("127.0.0.1")) {
        let rtt = row.get(column..).unwrap_or_default();
        assert!(
            rtt.starts_with(|c: char| c.is_ascii_digit()) && rtt.ends_with(" ms"),
            "a round trip per connection, under its header:\n{info}"
        );
    }

    // delete: refused while connected, then forced; the origin is told and stops.
    let saved = dir.join("saved-creds.json");
    fs::copy(&creds, &saved).unwrap();
    refused(
        &mut cli(&["delete", "web"]),
        "delete while connected",
        "--force (-f)",
    );
    let out = ok(&mut cli(&["delete", "-f", "web"]), "delete -f");
    assert!(
        out.contains("3 route(s) removed, 2 connection(s) closed"),
        "{out}"
    );
    assert!(!creds.exists(), "delete removes the local credentials file");
    let status = origin
        .wait_exit(Duration::from_secs(20))
        .expect("origin exits");
    assert!(!status.success());
    assert!(
        origin.stderr_text().contains("was deleted"),
        "{}",
        origin.stderr_text()
    );
    assert!(ok(&mut cli(&["list"]), "list after delete").contains("No tunnels"));

    // The deleted tunnel's credentials are refused from now on.
    let mut again = postern(&home);
    again
        .args(["tunnel", "run", "--credentials-file"])
        .arg(&saved)
        .args(["--url", &sshd.url(), "--edge", &edge.edge_arg(), "--ca"])
        .arg(edge.ca())
        .arg("web");
    let again = Child::spawn("revoked", again, dir.path());
    again
        .wait_exit(Duration::from_secs(20))
        .expect("revoked origin exits");
    assert!(
        again.stderr_text().contains("does not exist on this edge"),
        "{}",
        again.stderr_text()
    );
    assert!(
        !edge.stderr_text().contains(&token.secret),
        "secret in the edge log"
    );
}

#[test]
fn bad_config_is_refused_naming_the_field() {
    let dir = temp_dir("named-cfg");
    let home: PathBuf = dir.join("home");
    let config = dir.join("tunnel.json");
    let check = |cfg: &str, needle: &str| {
        fs::write(&config, cfg).unwrap();
        for sub in [&["run"][..], &["ingress", "validate"][..]] {
            let out = run(
                postern(&home)
                    .arg("tunnel")
                    .args(sub)
                    .arg("--config")
                    .arg(&config)
                    .stdin(Stdio::null()),
                "tunnel with a bad config",
            );
            let t = text(&out);
            assert!(!out.status.success(), "{cfg}: {t}");
            assert!(
                t.contains("tunnel.json") && t.contains(needle),
                "{cfg}: expected {needle:?}: {t}"
            );
        }
    };
    check(
        r#"{"tunnel": "web", "ingres": []}"#,
        "unknown field `ingres`",
    );
    check(
        r#"{"tunnel": "web", "ingress": [{"hostname": "a.localhost", "service": "ssh://127.0.0.1"}]}"#,
        "ingress[0]: the last rule must match every hostname",
    );
    check(
        r#"{"tunnel": "web", "ingress": [{"service": "gopher://x"}]}"#,
        "ingress[0].service",
    );
    check(
        r#"{"tunnel": "web", "ha-connections": 99}"#,
        "ha-connections",
    );
}
