//! cloudflared's `config.yml`, as its docs write it (comments, an anchor and its alias,
//! `originRequest`, a web rule and the `http_status:404` catch-all), runs a named tunnel from
//! cloudflared's default place (`~/.cloudflared/config.yml`) with no `--config`: real edge,
//! real sshd and ssh. A bad key is refused naming the key and its line.

use crate::support;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::ready::{metrics_listen, wait_registered_connections};
use support::{
    postern, proxy_command, require_all, run_with_deadline, service_token, temp_dir, Child, Edge,
    Sshd,
};

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

/// `postern tunnel ARGS` as an administrator of zone `localhost`.
fn admin(home: &Path, cert: &Path, edge: &Edge, args: &[&str]) -> Command {
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
fn a_cloudflared_config_yml_in_its_default_place_runs_a_tunnel_that_serves_ssh() {
    require_all();
    let dir = temp_dir("config-yml");
    let sshd = Sshd::start(dir.path());
    let edge = Edge::start(dir.path());
    let token = service_token(&edge.state, "yml");
    let proxy = proxy_command(&edge.addr, &edge.ca(), &token);
    let home = dir.join("home");
    let cf_dir = home.join(".cloudflared");
    fs::create_dir_all(&cf_dir).unwrap();
    let cert = cf_dir.join("cert.pem");
    support::origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    let out = ok(
        &mut admin(&home, &cert, &edge, &["create", "web"]),
        "create",
    );
    let id = out
        .split("Created tunnel web with id ")
        .nth(1)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no id in: {out}"));
    for host in ["ssh.localhost", "www.localhost"] {
        ok(
            &mut admin(&home, &cert, &edge, &["route", "dns", "web", host]),
            "route dns",
        );
    }
    let metrics = metrics_listen();
    let logfile = dir.join("cloudflared.log");
    // In the shape of cloudflared's "configuration file" docs; only `edge` and `ca` are
    // postern's (a self-hosted edge with a private CA).
    let config = format!(
        "# cloudflared's config.yml, with cloudflared replaced by postern\n\
         tunnel: {id}\n\
         credentials-file: {creds}\n\
         \n\
         # postern's own keys: where the edge is, and the CA it is signed by\n\
         edge: \"{edge_addr}\"\n\
         ca: {ca}\n\
         \n\
         no-autoupdate: true   # meaningless here: noticed, ignored\n\
         protocol: quic\n\
         loglevel: info\n\
         logfile: {logfile}\n\
         metrics: {metrics}\n\
         ha-connections: 1\n\
         \n\
         originRequest: &defaults\n\
         \x20 connectTimeout: 30s\n\
         \x20 noHappyEyeballs: true\n\
         \n\
         ingress:\n\
         \x20 # SSH, as in the guide\n\
         \x20 - hostname: ssh.localhost\n\
         \x20   service: {ssh}\n\
         \x20   originRequest: *defaults\n\
         \x20 # a web app: postern carries TCP only, so this rule refuses its streams\n\
         \x20 - hostname: www.localhost\n\
         \x20   service: http://localhost:8000\n\
         \x20   originRequest:\n\
         \x20     <<: *defaults\n\
         \x20     httpHostHeader: www.example.com\n\
         \x20 - service: http_status:404\n",
        creds = cf_dir.join(format!("{id}.json")).display(),
        edge_addr = edge.edge_arg(),
        ca = edge.ca().display(),
        logfile = logfile.display(),
        ssh = sshd.url(),
    );
    fs::write(cf_dir.join("config.yml"), config).unwrap();

    let validate = ok(
        postern(&home)
            .args(["tunnel", "ingress", "validate"])
            .stdin(Stdio::null()),
        "ingress validate from the default place",
    );
    assert!(
        validate.contains("ssh.localhost") && validate.contains("OK"),
        "{validate}"
    );

    // `tunnel run` with no name and no --config: cloudflared's default place.
    let mut cmd = postern(&home);
    cmd.args(["tunnel", "run"]).stdin(Stdio::null());
    let origin = Child::spawn("yml-origin", cmd, dir.path());
    wait_registered_connections(&origin, &metrics, 1, Duration::from_secs(20))
        .expect("the tunnel from config.yml registers");
    let err = origin.stderr_text();
    for notice in [
        "no-autoupdate: cloudflared's",
        "protocol: cloudflared's",
        "line 27 column 14: ingress[1].service: \"http://localhost:8000\" is a web service",
        "ingress[1].originRequest.httpHostHeader",
    ] {
        assert!(err.contains(notice), "notice {notice:?} missing:\n{err}");
    }
    assert!(
        !err.contains("noHappyEyeballs"),
        "noHappyEyeballs: true is what postern does: no notice\n{err}"
    );

    let out = run(
        sshd.ssh_command("ssh.localhost", &proxy)
            .arg("echo through-config-yml")
            .stdin(Stdio::null()),
        "ssh through the tunnel from config.yml",
    );
    assert!(
        out.status.success(),
        "ssh: {}\norigin:\n{}",
        text(&out),
        origin.stderr_text()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "through-config-yml"
    );
    // The web rule refuses its streams rather than falling through to another rule.
    let out = run(
        sshd.ssh_command("www.localhost", &proxy)
            .arg("true")
            .stdin(Stdio::null()),
        "ssh to the web rule",
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no service for www.localhost"),
        "{}",
        text(&out)
    );
    // `logfile` and `loglevel` from the config took effect.
    let log = fs::read_to_string(&logfile).expect("the config's logfile is written");
    assert!(log.contains("registered"), "{log}");
    assert!(
        !edge.stderr_text().contains(&token.secret),
        "secret in the edge log"
    );
}

#[test]
fn a_bad_key_in_config_yml_is_refused_naming_the_key_and_its_line() {
    let dir = temp_dir("config-yml-bad");
    let home = dir.join("home");
    let config = dir.join("config.yml");
    let check = |yaml: &str, needles: &[&str]| {
        fs::write(&config, yaml).unwrap();
        for sub in [&["run"][..], &["ingress", "validate"][..]] {
            let out = run(
                postern(&home)
                    .arg("tunnel")
                    .args(sub)
                    .arg("--config")
                    .arg(&config)
                    .stdin(Stdio::null()),
                "tunnel with a bad config.yml",
            );
            let t = text(&out);
            assert!(!out.status.success(), "{yaml}: {t}");
            for needle in needles {
                assert!(
                    t.contains("config.yml") && t.contains(needle),
                    "{yaml}: expected {needle:?}: {t}"
                );
            }
        }
    };
    // A misspelt key in a rule.
    check(
        "tunnel: web\n\
         # comment\n\
         ingress:\n\
         \x20 - hostname: ssh.localhost\n\
         \x20   servce: ssh://localhost:22\n\
         \x20 - service: http_status:404\n",
        &["line 5 column 5", "ingress[0]", "unknown field `servce`"],
    );
    // An unknown originRequest key.
    check(
        "tunnel: web\n\
         originRequest:\n\
         \x20 connectTimeout: 10s\n\
         \x20 conectTimeout: 10s\n\
         ingress:\n\
         \x20 - service: ssh://localhost:22\n",
        &[
            "line 4 column 3",
            "originRequest",
            "unknown field `conectTimeout`",
        ],
    );
    // A bad value found after parsing: still its line.
    check(
        "tunnel: web\n\
         ingress:\n\
         \x20 - hostname: ssh.localhost\n\
         \x20   service: gopher://x\n\
         \x20 - service: http_status:404\n",
        &["line 4 column 14", "ingress[0].service"],
    );
    check(
        "tunnel: web\nha-connections: 99\n",
        &["line 2 column 17", "ha-connections"],
    );
    // Not YAML at all.
    check("tunnel: web\ningress: [unclosed\n", &["line "]);
}
