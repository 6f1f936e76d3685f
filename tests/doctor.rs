//! `postern access doctor H` names the failing hop: with a working chain (real sshd, edge,
//! tunnel) every hop is ok and the exit status is 0; then each fault is injected in turn
//! (missing and bad token, wrong CA, no tunnel, egress blocked by a real tinyproxy, service
//! down, edge down) and the doctor's first FAIL line names that hop, nothing after it runs,
//! and it exits non-zero.

use crate::support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{free_port, origin_cert_naming, postern, run_with_deadline, Chain, Tinyproxy};

const HOST: &str = "doctor.localhost";
const STEPS: [&str; 9] = [
    "dns", "proxy", "tcp", "tls", "token", "policy", "tunnel", "service", "ssh",
];

struct Run {
    code: Option<i32>,
    stdout: String,
}

/// `postern access doctor HOSTNAME --edge EDGE --ca CA` with the chain's service token,
/// adjusted by `adjust`.
fn doctor(chain: &Chain, hostname: &str, adjust: impl FnOnce(&mut Command)) -> Run {
    let mut cmd = postern(&chain.dir.join("home"));
    cmd.args(["access", "doctor", hostname, "--edge"])
        .arg(chain.edge.edge_arg())
        .arg("--ca")
        .arg(chain.edge.ca())
        .env("POSTERN_SERVICE_TOKEN_ID", &chain.token.id)
        .env("POSTERN_SERVICE_TOKEN_SECRET", &chain.token.secret);
    adjust(&mut cmd);
    let out = run_with_deadline(&mut cmd, Duration::from_secs(60), "postern access doctor");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    };
    eprintln!("doctor {hostname} ({:?}):\n{}", run.code, run.stdout);
    run
}

/// The run failed at `step`: every earlier hop ok, `FAIL step: …` containing `needle`, no
/// later hop, and a non-zero exit.
fn assert_fails_at(run: &Run, step: &str, needle: &str) {
    let lines: Vec<&str> = run.stdout.lines().collect();
    let at = STEPS.iter().position(|s| *s == step).expect("a step");
    let fail = lines
        .iter()
        .position(|l| l.starts_with("FAIL "))
        .unwrap_or_else(|| panic!("no FAIL line (want {step}):\n{}", run.stdout));
    assert!(
        lines[fail].starts_with(&format!("FAIL {step}: ")),
        "want FAIL {step}:\n{}",
        run.stdout
    );
    assert!(
        lines[fail].contains(needle),
        "want {needle:?} in the FAIL line:\n{}",
        run.stdout
    );
    assert!(
        lines[fail].contains(" — "),
        "a cause and a fix: {}",
        lines[fail]
    );
    assert_eq!(
        fail,
        lines.len() - 1,
        "nothing after the failure:\n{}",
        run.stdout
    );
    for (i, s) in STEPS[..at].iter().enumerate() {
        // A refusal at the upgrade names the hops it proves (token, policy) before its own.
        if i < fail {
            assert!(
                lines[i].starts_with(&format!("ok  {s}: ")),
                "want ok {s} on line {i}:\n{}",
                run.stdout
            );
        }
    }
    assert!(
        matches!(run.code, Some(c) if c != 0),
        "a failure exits non-zero: {:?}\n{}",
        run.code,
        run.stdout
    );
}

#[test]
fn the_doctor_passes_a_working_chain_and_names_each_injected_fault() {
    let chain = Chain::start("doctor", HOST);

    // All ok: every hop, in order, and the SSH banner shown.
    let run = doctor(&chain, HOST, |_| {});
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), STEPS.len(), "{}", run.stdout);
    for (line, step) in lines.iter().zip(STEPS) {
        assert!(line.starts_with(&format!("ok  {step}: ")), "{}", run.stdout);
    }
    assert!(
        lines[8].contains("banner SSH-2.0-OpenSSH"),
        "{}",
        run.stdout
    );
    assert!(lines[3].contains("issuer CN="), "{}", run.stdout);
    // The service token's secret is never printed.
    assert!(!run.stdout.contains(&chain.token.secret));

    // No token, and none cached: never a browser; the fix is a login.
    let run = doctor(&chain, HOST, |c| {
        c.env_remove("POSTERN_SERVICE_TOKEN_ID")
            .env_remove("POSTERN_SERVICE_TOKEN_SECRET")
            .env("BROWSER", "/bin/false");
    });
    assert_fails_at(&run, "token", &format!("postern access login {HOST}"));

    // A bad token: a wrong service token secret; a cached app token the edge did not sign.
    let run = doctor(&chain, HOST, |c| {
        c.env("POSTERN_SERVICE_TOKEN_SECRET", "not-the-secret");
    });
    assert_fails_at(&run, "token", "service token refused");
    let tokens = chain.dir.join("home/.postern/tokens");
    fs::create_dir_all(&tokens).unwrap();
    // {"alg":"EdDSA","kid":"x"} . {"exp":4102444800} . signature
    let forged = "eyJhbGciOiJFZERTQSIsImtpZCI6IngifQ.eyJleHAiOjQxMDI0NDQ4MDB9.c2ln";
    fs::write(tokens.join(format!("{HOST}.jwt")), format!("{forged}\n")).unwrap();
    let run = doctor(&chain, HOST, |c| {
        c.env_remove("POSTERN_SERVICE_TOKEN_ID")
            .env_remove("POSTERN_SERVICE_TOKEN_SECRET");
    });
    assert_fails_at(&run, "token", "the cached app token");
    assert!(run.stdout.contains(&format!("postern access login {HOST}")));

    // The wrong CA: the system roots only, then a CA file that did not sign the edge's
    // certificate. The line names the CA used and the certificate presented.
    let run = doctor(&chain, HOST, |c| {
        c.env_remove("POSTERN_CA");
        // --ca comes from `doctor`; a second, empty-handed run without it:
    });
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let mut cmd = postern(&chain.dir.join("home"));
    cmd.args(["access", "doctor", HOST, "--edge"])
        .arg(chain.edge.edge_arg())
        .env("POSTERN_SERVICE_TOKEN_ID", &chain.token.id)
        .env("POSTERN_SERVICE_TOKEN_SECRET", &chain.token.secret);
    let out = run_with_deadline(&mut cmd, Duration::from_secs(60), "doctor without --ca");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    };
    assert_fails_at(&run, "tls", "the system roots");
    assert!(run.stdout.contains("--ca"), "{}", run.stdout);
    assert!(
        run.stdout.contains("issuer CN=") && run.stdout.contains("valid until"),
        "the presented certificate: {}",
        run.stdout
    );
    let wrong_ca = chain.dir.join("wrong-ca.pem");
    fs::write(&wrong_ca, wrong_ca_pem(&chain)).unwrap();
    let run = doctor(&chain, HOST, |c| {
        c.arg("--ca").arg(&wrong_ca);
    });
    assert_fails_at(&run, "tls", &wrong_ca.display().to_string());

    // No tunnel serves the hostname (the application covers it: *.localhost).
    let run = doctor(&chain, "nothing-here.localhost", |_| {});
    assert_fails_at(&run, "tunnel", "not registered by any tunnel");

    // Egress blocked: a real proxy that refuses CONNECT to the edge's port.
    let blocking = Tinyproxy::start(chain.dir.path(), 443, None);
    let run = doctor(&chain, HOST, |c| {
        c.env("HTTPS_PROXY", blocking.url(None));
    });
    assert_fails_at(&run, "proxy", "CONNECT");
    // ... or no route to the edge's port at all.
    let closed = format!("127.0.0.1:{}", free_port());
    let run = doctor(&chain, HOST, |c| {
        c.arg("--edge").arg(&closed);
    });
    assert_fails_at(&run, "tcp", &closed);

    // The service is down: sshd stopped; the edge and the tunnel are fine.
    chain.sshd.stop();
    let run = doctor(&chain, HOST, |_| {});
    assert_fails_at(&run, "service", "could not reach its service");

    // The edge is down.
    chain.edge.child().kill();
    let run = doctor(&chain, HOST, |_| {});
    assert_fails_at(&run, "tcp", &chain.edge.edge_arg());
}

/// A CA certificate that did not sign the edge's: the edge's origin CA (its other CA), else
/// any certificate in its state directory other than the TLS CA.
fn wrong_ca_pem(chain: &Chain) -> String {
    let tls_ca = fs::read_to_string(chain.edge.ca()).unwrap();
    for entry in fs::read_dir(&chain.edge.state).unwrap().flatten() {
        let path = entry.path();
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        if path != chain.edge.ca()
            && text.starts_with("-----BEGIN CERTIFICATE-----")
            && text != tls_ca
        {
            return text;
        }
    }
    panic!("no other CA certificate in {}", chain.edge.state.display());
}

/// `postern tunnel doctor` with the running tunnel's own flags, adjusted by `adjust`.
fn tunnel_doctor(chain: &Chain, edge: &str, adjust: impl FnOnce(&mut Command)) -> Run {
    let mut cmd = postern(&chain.dir.join("home"));
    cmd.args(["tunnel", "doctor", "--hostname", &chain.hostname, "--url"])
        .arg(chain.sshd.url())
        .arg("--origincert")
        .arg(&chain.origin_cert)
        .args(["--edge", edge, "--ca"])
        .arg(chain.edge.ca());
    adjust(&mut cmd);
    let out = run_with_deadline(&mut cmd, Duration::from_secs(60), "postern tunnel doctor");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    };
    eprintln!("tunnel doctor ({:?}):\n{}", run.code, run.stdout);
    run
}

const TUNNEL_STEPS: [&str; 9] = [
    "config",
    "credentials",
    "dns",
    "proxy",
    "tcp",
    "tls",
    "auth",
    "service",
    "ssh",
];

fn assert_tunnel_fails_at(run: &Run, step: &str, needle: &str) {
    let lines: Vec<&str> = run.stdout.lines().collect();
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.starts_with(&format!("FAIL {step}: ")) && last.contains(needle),
        "want FAIL {step} with {needle:?}:\n{}",
        run.stdout
    );
    let at = TUNNEL_STEPS
        .iter()
        .position(|s| *s == step)
        .expect("a step");
    assert_eq!(lines.len(), at + 1, "{}", run.stdout);
    for (line, s) in lines.iter().zip(&TUNNEL_STEPS[..at]) {
        assert!(line.starts_with(&format!("ok  {s}: ")), "{}", run.stdout);
    }
    assert!(matches!(run.code, Some(c) if c != 0), "{:?}", run.code);
}

#[test]
fn the_tunnel_doctor_checks_credentials_edge_and_service_without_disturbing_a_running_tunnel() {
    let chain = Chain::start("tunnel-doctor", "tdoc.localhost");
    // All four of the tunnel's connections (the default) registered before the doctor runs,
    // so that a late one is not taken for a registration the doctor caused.
    chain.tunnel.wait_registered(4, Duration::from_secs(30));
    support::wait_until(Duration::from_secs(10), "four registrations logged", || {
        chain.tunnel.registered_count() >= 4
    });
    let registered = chain.tunnel.registered_count();
    let edge = chain.edge.edge_arg();

    let run = tunnel_doctor(&chain, &edge, |_| {});
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), TUNNEL_STEPS.len(), "{}", run.stdout);
    for (line, step) in lines.iter().zip(TUNNEL_STEPS) {
        assert!(line.starts_with(&format!("ok  {step}: ")), "{}", run.stdout);
    }
    assert!(lines[8].contains("banner SSH-2.0-"), "{}", run.stdout);

    // Without --edge: the edges the origin certificate names, read as `postern tunnel` reads
    // them (a list, trimmed, duplicates dropped), so the doctor checks what the tunnel uses.
    let listed = chain.dir.join("listed.pem");
    origin_cert_naming(
        &chain.edge.state,
        "localhost",
        &listed,
        &format!(" {edge} , {edge}"),
    );
    let mut cmd = postern(&chain.dir.join("home"));
    cmd.args(["tunnel", "doctor", "--hostname", &chain.hostname, "--url"])
        .arg(chain.sshd.url())
        .arg("--origincert")
        .arg(&listed)
        .arg("--ca")
        .arg(chain.edge.ca())
        .env_remove("POSTERN_EDGE");
    let out = run_with_deadline(
        &mut cmd,
        Duration::from_secs(60),
        "tunnel doctor, no --edge",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.matches("ok  tcp: ").count(), 1, "one edge: {stdout}");

    // The running tunnel was not disturbed: no registration came and went, ssh still works.
    assert_eq!(chain.tunnel.registered_count(), registered);
    chain.assert_ssh_works("still-served");

    // The credentials file readable by others.
    let loose = chain.dir.join("loose.pem");
    fs::copy(&chain.origin_cert, &loose).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let run = tunnel_doctor(&chain, &edge, |c| {
        c.arg("--origincert").arg(&loose);
    });
    assert_tunnel_fails_at(&run, "credentials", "chmod 600");

    // A hostname outside the certificate's zone.
    let run = tunnel_doctor(&chain, &edge, |c| {
        c.args(["--hostname", "ssh.example.com"]);
    });
    assert_tunnel_fails_at(&run, "credentials", "does not cover ssh.example.com");

    // An origin certificate from another edge: the edge refuses it.
    let other = support::Edge::start(&chain.dir.join("other"));
    let foreign = chain.dir.join("foreign.pem");
    support::origin_cert(&other.state, "localhost", &foreign, &chain.edge.addr);
    drop(other);
    let run = tunnel_doctor(&chain, &edge, |c| {
        c.arg("--origincert").arg(&foreign);
    });
    assert_tunnel_fails_at(&run, "auth", "refused the origin certificate");

    // The service is down.
    let closed = format!("ssh://127.0.0.1:{}", free_port());
    let run = tunnel_doctor(&chain, &edge, |c| {
        c.arg("--url").arg(&closed);
    });
    assert_tunnel_fails_at(&run, "service", "refuses connections");

    // The edge is down (unreachable).
    let nowhere = format!("127.0.0.1:{}", free_port());
    let run = tunnel_doctor(&chain, &nowhere, |_| {});
    assert_tunnel_fails_at(&run, "tcp", &nowhere);

    // A pool whose second edge is down: the first passes dns … auth, then the second is
    // checked (the tunnel connects to both) and its tcp step names it.
    let run = tunnel_doctor(&chain, &edge, |c| {
        c.args(["--edge", &nowhere]);
    });
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("FAIL tcp: ") && l.contains(&nowhere)),
        "{}",
        run.stdout
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("ok  auth: ")).count(),
        1,
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("ok  service: "), "{}", run.stdout);
    assert!(matches!(run.code, Some(c) if c != 0), "{:?}", run.code);
}

const NAMED_STEPS: [&str; 10] = [
    "config",
    "credentials",
    "dns",
    "proxy",
    "tcp",
    "tls",
    "auth",
    "routes",
    "service",
    "ssh",
];

/// `postern tunnel doctor ARGS` in `home` (the credentials carry the edge and its CA, as a
/// user's do), with stdout and stderr.
fn named_doctor(home: &Path, args: &[&str], adjust: impl FnOnce(&mut Command)) -> (Run, String) {
    let mut cmd = postern(home);
    cmd.args(["tunnel", "doctor"]).args(args);
    adjust(&mut cmd);
    let out = run_with_deadline(&mut cmd, Duration::from_secs(60), "postern tunnel doctor");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    };
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "tunnel doctor {args:?} ({:?}):\n{}{stderr}",
        run.code, run.stdout
    );
    (run, stderr)
}

fn assert_named_ok(run: &Run) {
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), NAMED_STEPS.len(), "{}", run.stdout);
    for (line, step) in lines.iter().zip(NAMED_STEPS) {
        assert!(line.starts_with(&format!("ok  {step}: ")), "{}", run.stdout);
    }
    assert!(lines[9].contains("banner SSH-2.0-"), "{}", run.stdout);
}

/// The run failed at `step`: each earlier step ok (a setup the CLI could not resolve prints
/// its failure alone), the FAIL line last with a cause and a fix, and a non-zero exit.
fn assert_named_fails_at(run: &Run, step: &str, needle: &str) {
    let lines: Vec<&str> = run.stdout.lines().collect();
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.starts_with(&format!("FAIL {step}: ")) && last.contains(needle),
        "want FAIL {step} with {needle:?}:\n{}",
        run.stdout
    );
    assert!(last.contains(" — "), "a cause and a fix: {last}");
    let at = NAMED_STEPS.iter().position(|s| *s == step).expect("a step");
    assert!(
        lines.len() == at + 1 || lines.len() == 1,
        "every step before {step}, or none:\n{}",
        run.stdout
    );
    for (line, s) in lines[..lines.len() - 1].iter().zip(NAMED_STEPS) {
        assert!(line.starts_with(&format!("ok  {s}: ")), "{}", run.stdout);
    }
    assert!(matches!(run.code, Some(c) if c != 0), "{:?}", run.code);
}

#[test]
fn the_tunnel_doctor_checks_a_named_tunnel_from_its_config_credentials_file_or_token() {
    support::require_all();
    let dir = support::temp_dir("named-doctor");
    let sshd = support::Sshd::start(dir.path());
    let mut edge = Some(support::Edge::start(dir.path()));
    let e = edge.as_ref().unwrap();
    let home = dir.join("home");
    let postern_dir = home.join(".postern");
    fs::create_dir_all(&postern_dir).unwrap();
    let cert = postern_dir.join("cert.pem");
    support::origin_cert(&e.state, "localhost", &cert, &e.addr);
    let admin = |args: &[&str]| {
        let mut cmd = postern(&home);
        cmd.arg("tunnel")
            .args(args)
            .arg("--origincert")
            .arg(&cert)
            .args(["--edge", &e.edge_arg(), "--ca"])
            .arg(e.ca());
        support::run_ok(&mut cmd, &format!("postern tunnel {args:?}"))
    };
    let created = admin(&["create", "web"]);
    let id = created
        .split("Created tunnel web with id ")
        .nth(1)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no id in: {created}"));
    let creds = postern_dir.join(format!("{id}.json"));
    admin(&["route", "dns", "web", "ndoc.localhost"]);
    let creds_s = creds.display().to_string();
    let url = sshd.url();

    // The config form, in cloudflared's YAML, as `tunnel run --config` reads it.
    let config = dir.join("config.yml");
    let write_config = |path: &Path, host: &str, service: &str| {
        fs::write(
            path,
            format!(
                "# as cloudflared's\ntunnel: web\ncredentials-file: {creds_s}\ningress:\n  \
                 - hostname: {host}\n    service: {service}\n  - service: http_status:404\n"
            ),
        )
        .unwrap();
    };
    write_config(&config, "ndoc.localhost", &url);
    let config_s = config.display().to_string();
    let (run, _) = named_doctor(&home, &["--config", &config_s], |_| {});
    assert_named_ok(&run);
    assert!(
        run.stdout.contains("ndoc.localhost → ssh://"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("tunnel web serves ndoc.localhost"),
        "{}",
        run.stdout
    );

    // NAME with its credentials file (and the flag's cloudflared spelling).
    let (run, _) = named_doctor(
        &home,
        &["web", "--cred-file", &creds_s, "--url", &url],
        |_| {},
    );
    assert_named_ok(&run);

    // The token, from TUNNEL_TOKEN: never printed.
    let token = admin(&["token", "web", "--credentials-file", &creds_s])
        .trim()
        .to_owned();
    let (run, stderr) = named_doctor(&home, &["--url", &url], |c| {
        c.env("TUNNEL_TOKEN", &token);
    });
    assert_named_ok(&run);
    assert!(!run.stdout.contains(&token) && !stderr.contains(&token));

    // None of this registered anything at the edge; each look is in its audit log.
    let info = admin(&["info", "web"]);
    assert!(info.contains("has no active connection"), "{info}");
    support::audit_when(
        &e.state.join("audit.log"),
        Duration::from_secs(10),
        "the doctor's reads of the tunnel's own record",
        |t| {
            t.lines()
                .filter(|l| l.contains("\"tunnel_admin\"") && l.contains("\"self\""))
                .filter(|l| l.contains(&id) && l.contains("\"allow\""))
                .count()
                >= 3
        },
    );

    // A bad token: not a tunnel token at all; the token of a tunnel since deleted.
    let (run, stderr) = named_doctor(&home, &["--url", &url], |c| {
        c.env("TUNNEL_TOKEN", "bm90LWEtdG9rZW4K-secret-part");
    });
    assert_named_fails_at(&run, "credentials", "not a tunnel token");
    assert!(!run.stdout.contains("secret-part") && !stderr.contains("secret-part"));
    admin(&["create", "gone"]);
    let gone_creds = postern_dir
        .read_dir()
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "json")
                && fs::read_to_string(p).is_ok_and(|t| t.contains("\"gone\""))
        })
        .expect("gone's credentials");
    let gone_token = admin(&[
        "token",
        "gone",
        "--credentials-file",
        &gone_creds.display().to_string(),
    ])
    .trim()
    .to_owned();
    admin(&["route", "dns", "gone", "gone.localhost"]);
    admin(&["delete", "gone"]);
    let (run, _) = named_doctor(&home, &["--url", &url], |c| {
        c.env("TUNNEL_TOKEN", &gone_token);
    });
    assert_named_fails_at(&run, "auth", "does not exist on this edge");

    // The credentials file readable by others.
    let loose = dir.join("loose.json");
    fs::copy(&creds, &loose).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let loose_s = loose.display().to_string();
    let (run, _) = named_doctor(
        &home,
        &["web", "--credentials-file", &loose_s, "--url", &url],
        |_| {},
    );
    assert_named_fails_at(&run, "credentials", "chmod 600");

    // A rule for a hostname not routed to the tunnel.
    let unrouted = dir.join("unrouted.yml");
    write_config(&unrouted, "elsewhere.localhost", &url);
    let (run, _) = named_doctor(
        &home,
        &["--config", &unrouted.display().to_string()],
        |_| {},
    );
    assert_named_fails_at(
        &run,
        "routes",
        "postern tunnel route dns web elsewhere.localhost",
    );

    // The service is down.
    let down = dir.join("down.yml");
    write_config(
        &down,
        "ndoc.localhost",
        &format!("ssh://127.0.0.1:{}", free_port()),
    );
    let (run, _) = named_doctor(&home, &["--config", &down.display().to_string()], |_| {});
    assert_named_fails_at(&run, "service", "refuses connections");

    // The edge is down: the address in the credentials no longer answers.
    let edge_addr = e.edge_arg();
    drop(edge.take());
    let (run, _) = named_doctor(&home, &["--config", &config_s], |_| {});
    assert_named_fails_at(&run, "tcp", &edge_addr);
}
