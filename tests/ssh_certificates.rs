//! Short-lived SSH certificates from the edge (issue 14), with real parts only: a real sshd
//! that trusts the edge's CA and has no authorized_keys, the edge from a JSON config, a
//! tunnel, real ssh and ssh-keygen, and (for a signed-in user) the real OpenID Connect
//! provider with headless Chromium.
//!
//! - a service token gets a certificate for its mapped principal (`access ssh-gen`) and ssh
//!   runs a command with it through the tunnel; `ssh-keygen -L` shows principal and validity;
//! - sshd refuses: the key without its certificate, a certificate for another principal, one
//!   signed by another CA, an expired one;
//! - the edge refuses: no token, a wrong secret, a malformed key, a policy that denies;
//! - a user signed in through the browser gets a certificate for their email's local part.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::oidc::DEFAULT_EXPECT;
use support::sso::{body_of, raw_request, status_of, Sso};
use support::{
    current_user, origin_cert, postern, require, run_ok, run_with_deadline, service_token,
    shell_quote, temp_dir, wait_until, Child, Edge, ServiceToken, Sshd, Tunnel, SSH_DEADLINE,
};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mode(path: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions()) & 0o777
}

/// The edge's config: `ssh.localhost` maps the service token `ci` to this machine's user,
/// `other.localhost` to another user, `short.localhost` signs for 1 s, and
/// `closed.localhost`'s policy admits another token only.
fn write_config(dir: &Path, state: &Path, user: &str) -> PathBuf {
    let allow_tokens = serde_json::json!([{ "decision": "allow", "include": [ { "any_valid_service_token": true } ] }]);
    let ci_is = |who: &str| serde_json::json!([{ "include": [ { "service_token": "ci" } ], "principals": [who] }]);
    let config = serde_json::json!({
        "listen": format!("127.0.0.1:{}", support::free_port()),
        "state_dir": state,
        "zones": [ { "name": "localhost", "local_ca": true } ],
        "applications": [
            { "hostname": "ssh.localhost", "policies": allow_tokens,
              "ssh_certificates": { "principals": ci_is(user) } },
            { "hostname": "other.localhost", "policies": allow_tokens,
              "ssh_certificates": { "principals": ci_is("not-this-user") } },
            { "hostname": "short.localhost", "policies": allow_tokens,
              "ssh_certificates": { "lifetime": "1s", "principals": ci_is(user) } },
            { "hostname": "closed.localhost",
              "policies": [ { "decision": "allow", "include": [ { "service_token": "someone-else" } ] } ],
              "ssh_certificates": { "principals": ci_is(user) } }
        ]
    });
    let path = dir.join("edge.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    path
}

struct Setup {
    dir: support::TempDir,
    edge: Edge,
    sshd: Sshd,
    tunnel: Tunnel,
    token: ServiceToken,
    ca_line: String,
    home: PathBuf,
}

impl Setup {
    fn start(name: &str) -> Setup {
        support::require_all();
        let dir = temp_dir(name);
        let state = dir.join("edge-state");
        let user = current_user();
        let config = write_config(dir.path(), &state, &user);
        // The operator prints the CA before the edge ever ran: it is made then.
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let ca_line = run_ok(
            postern(&home)
                .args(["edge", "ssh-ca", "--state"])
                .arg(&state),
            "postern edge ssh-ca",
        );
        assert!(ca_line.starts_with("ssh-ed25519 AAAA"), "{ca_line}");
        assert!(ca_line.trim_end().ends_with(" postern-ssh-ca"), "{ca_line}");
        assert_eq!(mode(&state.join("ssh-ca.key")), 0o600);
        let trusted = dir.join("trusted_user_ca.pub");
        std::fs::write(&trusted, &ca_line).unwrap();
        // No authorized_keys at all: only certificates from the edge's CA get in.
        let sshd = Sshd::start_with_auth(
            dir.path(),
            &format!(
                "TrustedUserCAKeys {}\nAuthorizedKeysFile none",
                trusted.display()
            ),
        );
        let edge = Edge::start_config(dir.path(), &config, &state, &[]);
        let token = service_token(&state, "ci");
        let cert = dir.join("cert.pem");
        origin_cert(&state, "localhost", &cert, &edge.addr);
        let tunnel = Tunnel::start(dir.path(), "ssh.localhost", &sshd.url(), &cert, &edge);
        Setup {
            dir,
            edge,
            sshd,
            tunnel,
            token,
            ca_line,
            home,
        }
    }

    /// `postern access ssh-gen --hostname HOST` with the service token `ci`.
    fn ssh_gen(&self, host: &str) -> Output {
        let mut cmd = postern(&self.home);
        cmd.args(["access", "ssh-gen", "--hostname", host, "--edge"])
            .arg(self.edge.edge_arg())
            .arg("--ca")
            .arg(self.edge.ca())
            .env("POSTERN_SERVICE_TOKEN_ID", &self.token.id)
            .env("POSTERN_SERVICE_TOKEN_SECRET", &self.token.secret);
        run_with_deadline(&mut cmd, SSH_DEADLINE, "postern access ssh-gen")
    }

    /// `access ssh-config --hostname ssh.localhost --short-lived-cert` with `extra` flags.
    fn ssh_config(&self, extra: &[&str]) -> String {
        let mut cmd = postern(&self.home);
        cmd.args([
            "access",
            "ssh-config",
            "--hostname",
            "ssh.localhost",
            "--short-lived-cert",
        ])
        .args(extra)
        .arg("--edge")
        .arg(self.edge.edge_arg())
        .arg("--ca")
        .arg(self.edge.ca());
        run_ok(&mut cmd, "access ssh-config --short-lived-cert")
    }

    fn key_files(&self, host: &str) -> (PathBuf, PathBuf) {
        let dir = self.home.join(".postern");
        (
            dir.join(format!("{host}-key")),
            dir.join(format!("{host}-key-cert.pub")),
        )
    }

    /// `ssh user@ssh.localhost REMOTE` through the tunnel with `key` and `cert` only (the
    /// carrier's own credential is the service token, as for any ssh through postern).
    fn ssh(&self, key: &Path, cert: Option<&Path>, remote: &str) -> Output {
        require("ssh");
        let proxy = format!(
            "{} access ssh --hostname %h --edge {} --ca {}",
            shell_quote(&support::postern_bin().display().to_string()),
            self.edge.edge_arg(),
            shell_quote(&self.edge.ca().display().to_string())
        );
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-i"])
            .arg(key)
            .arg("-o")
            .arg(format!(
                "CertificateFile={}",
                cert.map_or("none".into(), |c| c.display().to_string())
            ))
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=20",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.sshd.known_hosts.display()
            ))
            .arg("-o")
            .arg(format!("ProxyCommand={proxy}"))
            .arg(format!("{}@ssh.localhost", self.sshd.user))
            .arg(remote)
            .env("HOME", &self.home)
            .env("POSTERN_SERVICE_TOKEN_ID", &self.token.id)
            .env("POSTERN_SERVICE_TOKEN_SECRET", &self.token.secret)
            .stdin(Stdio::null());
        run_with_deadline(&mut cmd, SSH_DEADLINE, "ssh with a certificate")
    }

    /// `POST /cdn-cgi/access/cert_sign` to `host` with raw headers and body.
    fn sign_raw(&self, host: &str, headers: &[(&str, &str)], body: &str) -> String {
        let mut h = vec![("Content-Type", "application/json")];
        h.extend_from_slice(headers);
        raw_request(
            &self.edge.edge_arg(),
            &self.edge.ca(),
            host,
            "POST",
            "/cdn-cgi/access/cert_sign",
            &h,
            Some(body.as_bytes()),
        )
    }

    fn assert_sshd_refuses(&self, key: &Path, cert: Option<&Path>, what: &str) {
        let out = self.ssh(key, cert, "echo should-not-run");
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "sshd must refuse {what}: stdout {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn keygen_list(cert: &Path) -> String {
    run_ok(
        Command::new("ssh-keygen").arg("-L").arg("-f").arg(cert),
        "ssh-keygen -L",
    )
}

#[test]
fn a_service_token_certificate_logs_in_to_an_sshd_without_authorized_keys() {
    let s = Setup::start("ssh-cert-token");
    let user = current_user();

    // The CA is public at the edge, the same line(s) the CLI printed.
    let answer = support::sso::raw_get(
        &s.edge.edge_arg(),
        &s.edge.ca(),
        "ssh.localhost",
        "/cdn-cgi/access/ssh-ca",
        &[],
        false,
    );
    assert!(status_of(&answer).contains(" 200 "), "{answer}");
    assert_eq!(body_of(&answer), s.ca_line);

    let out = s.ssh_gen("ssh.localhost");
    assert!(
        out.status.success(),
        "ssh-gen: {}\nedge:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.edge.stderr_text()
    );
    let (key, cert) = s.key_files("ssh.localhost");
    let public = s.home.join(".postern/ssh.localhost-key.pub");
    for f in [&key, &cert, &public] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // ssh-keygen reads our certificate (and checks its signature) and shows our fields.
    let listed = keygen_list(&cert);
    assert!(
        listed.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("Principals: \n                {user}\n")),
        "{listed}"
    );
    assert!(
        listed.contains("Key ID: \"postern:service token ci\""),
        "{listed}"
    );
    assert!(listed.contains("Valid: from "), "{listed}");
    assert!(listed.contains("permit-pty"), "{listed}");
    let ca_fp = run_ok(
        Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(s.dir.join("trusted_user_ca.pub")),
        "ssh-keygen -l",
    );
    let ca_fp = ca_fp.split_whitespace().nth(1).unwrap().to_owned();
    assert!(
        listed.contains(&format!("Signing CA: ED25519 {ca_fp}")),
        "{listed}"
    );

    // And sshd, which has no authorized_keys, lets the certificate in through the tunnel.
    let out = s.ssh(&key, Some(&cert), "echo cert-ok");
    assert!(
        out.status.success(),
        "ssh with the certificate: {}\nsshd:\n{}",
        String::from_utf8_lossy(&out.stderr),
        support::tail(&s.sshd.stderr_text(), 3000)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cert-ok");

    // The issuance is in the audit log: who, principals, key fingerprint, serial, validity.
    let audit = support::audit_when(
        &s.edge.state.join("audit.log"),
        Duration::from_secs(10),
        "the ssh_certificate audit line",
        |a| a.contains("\"ssh_certificate\""),
    );
    let line = audit
        .lines()
        .find(|l| l.contains("\"ssh_certificate\""))
        .unwrap();
    for field in [
        "\"service_token\":\"ci\"",
        &format!("\"principals\":[\"{user}\"]"),
        "\"fingerprint\":\"SHA256:",
        "\"serial\":",
        "\"valid_before\":",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert!(!audit.contains(&s.token.secret), "secret in the audit log");

    // The same key without its certificate: nothing authorizes it.
    let bare = s.dir.join("bare-key");
    std::fs::copy(&key, &bare).unwrap();
    s.assert_sshd_refuses(&bare, None, "the key without its certificate");

    // A certificate for another principal.
    let out = s.ssh_gen("other.localhost");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (other_key, other_cert) = s.key_files("other.localhost");
    assert!(keygen_list(&other_cert).contains("not-this-user"));
    s.assert_sshd_refuses(
        &other_key,
        Some(&other_cert),
        "a certificate for another user",
    );

    // A certificate signed by another CA, for the right user.
    let rogue = s.dir.join("rogue-ca");
    let user_key = s.dir.join("rogue-user");
    for k in [&rogue, &user_key] {
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(k),
            "ssh-keygen",
        );
    }
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&rogue)
            .args(["-I", "rogue", "-n", &user, "-V", "+5m"])
            .arg(user_key.with_extension("pub")),
        "ssh-keygen -s",
    );
    let rogue_cert = s.dir.join("rogue-user-cert.pub");
    s.assert_sshd_refuses(
        &user_key,
        Some(&rogue_cert),
        "a certificate from another CA",
    );

    // An expired certificate (short.localhost signs for 1 s).
    let out = s.ssh_gen("short.localhost");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (short_key, short_cert) = s.key_files("short.localhost");
    let line = std::fs::read_to_string(&short_cert).unwrap();
    let (parsed, _) = postern::proto::sshkey::Certificate::parse_line(&line).unwrap();
    assert!(
        parsed.valid_before <= unix_now() + 2,
        "{}",
        parsed.valid_before
    );
    wait_until(
        Duration::from_secs(10),
        "the 1 s certificate to expire",
        || unix_now() > parsed.valid_before,
    );
    s.assert_sshd_refuses(&short_key, Some(&short_cert), "an expired certificate");
    assert!(
        s.sshd.stderr_text().contains("expired"),
        "sshd must say the certificate expired:\n{}",
        support::tail(&s.sshd.stderr_text(), 3000)
    );
}

#[test]
fn the_edge_refuses_to_sign_without_a_token_for_a_bad_key_or_when_policy_denies() {
    let s = Setup::start("ssh-cert-refusals");
    let good_key = {
        let k = s.dir.join("probe");
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&k),
            "ssh-keygen",
        );
        std::fs::read_to_string(k.with_extension("pub")).unwrap()
    };
    let body = serde_json::json!({ "public_key": good_key.trim() }).to_string();
    let token = [
        ("cf-access-client-id", s.token.id.as_str()),
        ("cf-access-client-secret", s.token.secret.as_str()),
    ];

    // The same request with the token is signed: the refusals below are for their reason.
    let ok = s.sign_raw("ssh.localhost", &token, &body);
    assert!(status_of(&ok).contains(" 200 "), "{ok}");
    assert!(
        body_of(&ok).contains("ssh-ed25519-cert-v01@openssh.com AAAA"),
        "{ok}"
    );

    let none = s.sign_raw("ssh.localhost", &[], &body);
    assert!(status_of(&none).contains(" 401 "), "{none}");
    assert!(body_of(&none).contains("needs a login"), "{none}");

    let wrong = s.sign_raw(
        "ssh.localhost",
        &[
            ("cf-access-client-id", s.token.id.as_str()),
            ("cf-access-client-secret", "0000"),
        ],
        &body,
    );
    assert!(status_of(&wrong).contains(" 403 "), "{wrong}");

    let bogus = s.sign_raw("ssh.localhost", &[("cf-access-token", "not.a.jwt")], &body);
    assert!(status_of(&bogus).contains(" 401 "), "{bogus}");

    for (key, says) in [
        ("ssh-ed25519 AAAA", "not an OpenSSH public key"),
        ("ssh-ed25519 !!!!", "bad base64"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP8=", "not supported"),
        ("hello", "not supported"),
    ] {
        let body = serde_json::json!({ "public_key": key }).to_string();
        let bad = s.sign_raw("ssh.localhost", &token, &body);
        assert!(status_of(&bad).contains(" 400 "), "{key}: {bad}");
        assert!(body_of(&bad).contains(says), "{key}: {bad}");
    }
    let not_json = s.sign_raw("ssh.localhost", &token, "public_key=x");
    assert!(status_of(&not_json).contains(" 400 "), "{not_json}");

    let denied = s.sign_raw("closed.localhost", &token, &body);
    assert!(status_of(&denied).contains(" 403 "), "{denied}");
    assert!(body_of(&denied).contains("not allowed"), "{denied}");

    // A body naming another application than the one asked.
    let elsewhere =
        serde_json::json!({ "public_key": good_key.trim(), "hostname": "other.localhost" })
            .to_string();
    let mixed = s.sign_raw("ssh.localhost", &token, &elsewhere);
    assert!(status_of(&mixed).contains(" 400 "), "{mixed}");

    // ssh-gen reports the edge's refusal in words.
    let mut cmd = postern(&s.home);
    cmd.args([
        "access",
        "ssh-gen",
        "--hostname",
        "closed.localhost",
        "--edge",
    ])
    .arg(s.edge.edge_arg())
    .arg("--ca")
    .arg(s.edge.ca())
    .env("POSTERN_SERVICE_TOKEN_ID", &s.token.id)
    .env("POSTERN_SERVICE_TOKEN_SECRET", &s.token.secret);
    let out = run_with_deadline(&mut cmd, SSH_DEADLINE, "ssh-gen refused");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not allowed"), "{err}");
    assert!(!s.home.join(".postern/closed.localhost-key").exists());
}

#[test]
fn a_user_signed_in_through_the_browser_gets_a_certificate_for_their_email_local_part() {
    let sso = Sso::start("ssh-cert-sso");
    let (ok, stderr) = sso.login("alice", "ssh.localhost", DEFAULT_EXPECT);
    assert!(ok, "alice's login failed: {stderr}");
    let home = sso.home("alice");
    let mut cmd = postern(&home);
    cmd.args(["access", "ssh-gen", "--hostname", "ssh.localhost", "--edge"])
        .arg(&sso.edge_addr)
        .arg("--ca")
        .arg(sso.ca())
        .env("BROWSER", "false");
    let out = run_with_deadline(&mut cmd, SSH_DEADLINE, "ssh-gen with the cached token");
    assert!(
        out.status.success(),
        "ssh-gen: {}\nedge:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sso.edge.stderr_text()
    );
    let cert = home.join(".postern/ssh.localhost-key-cert.pub");
    let listed = keygen_list(&cert);
    assert!(
        listed.contains("Principals: \n                alice\n"),
        "{listed}"
    );
    assert!(
        listed.contains("Key ID: \"postern:alice@example.com\""),
        "{listed}"
    );
    // Three minutes by default (from a minute before, for clocks behind the edge's).
    let line = std::fs::read_to_string(&cert).unwrap();
    let (parsed, _) = postern::proto::sshkey::Certificate::parse_line(&line).unwrap();
    assert_eq!(parsed.valid_before - parsed.valid_after, 240);
    // A second call while the certificate is fresh keeps it: one request per burst of ssh.
    let out = run_with_deadline(&mut cmd, SSH_DEADLINE, "ssh-gen again");
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), line);

    // cloudflared's ssh-gen body: the app token as `jwt`, an `issuer`; its answer fields.
    let public = std::fs::read_to_string(home.join(".postern/ssh.localhost-key.pub")).unwrap();
    let body = serde_json::json!({
        "public_key": public.trim(),
        "jwt": sso.token("alice", "ssh.localhost"),
        "issuer": "https://login.localhost",
    })
    .to_string();
    let answer = raw_request(
        &sso.edge_addr,
        &sso.ca(),
        "ssh.localhost",
        "POST",
        "/cdn-cgi/access/cert_sign",
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    );
    assert!(status_of(&answer).contains(" 200 "), "{answer}");
    let v: serde_json::Value = serde_json::from_str(body_of(&answer)).unwrap();
    assert!(v["certificate"]
        .as_str()
        .unwrap()
        .starts_with("ssh-ed25519-cert-v01@openssh.com AAAA"));
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert!(
        v["expires_at"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{v}"
    );
}

#[test]
fn sshd_setup_installs_the_edge_ca_in_a_config_that_sshd_runs_with() {
    let s = Setup::start("ssh-cert-sshd-setup");
    let etc = s.dir.join("etc-ssh");
    std::fs::create_dir_all(&etc).unwrap();
    // A server's own config: the harness's (its host key), on another port, without the
    // CA line the harness put there, and with a Match block at the end.
    let port = support::free_port();
    let original: String = std::fs::read_to_string(s.sshd.dir.join("sshd_config"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("TrustedUserCAKeys") && !l.starts_with("Port "))
        .map(|l| {
            if l.starts_with("PidFile ") {
                format!("PidFile {}\n", etc.join("sshd.pid").display())
            } else {
                format!("{l}\n")
            }
        })
        .collect::<String>()
        + &format!("Port {port}\nMatch User nobody\n  X11Forwarding no\n");
    let config = etc.join("sshd_config");
    std::fs::write(&config, &original).unwrap();
    let ca_out = etc.join("postern_ca.pub");
    let setup = |extra: &[&str]| {
        let mut cmd = postern(&s.home);
        cmd.args([
            "tunnel",
            "sshd-setup",
            "--ca-from",
            "https://ssh.localhost",
            "--edge",
        ])
        .arg(s.edge.edge_arg())
        .arg("--ca")
        .arg(s.edge.ca())
        .arg("--sshd-config")
        .arg(&config)
        .arg("--ca-out")
        .arg(&ca_out)
        .args(extra);
        run_with_deadline(&mut cmd, SSH_DEADLINE, "tunnel sshd-setup")
    };
    let effective = || {
        run_ok(
            Command::new(require("sshd"))
                .arg("-T")
                .arg("-f")
                .arg(&config),
            "sshd -T",
        )
    };

    // Printed first: the CA and the lines, nothing written.
    let out = setup(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains(&s.ca_line), "{printed}");
    assert!(
        printed.contains(&format!("TrustedUserCAKeys {}", ca_out.display())),
        "{printed}"
    );
    assert!(!ca_out.exists());
    assert_eq!(std::fs::read_to_string(&config).unwrap(), original);

    // Written with a principals directory, then again without: one block, the last one.
    let principals = etc.join("principals");
    let out = setup(&["--write", "--principals-dir", principals.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&ca_out).unwrap(), s.ca_line);
    let backups: Vec<_> = std::fs::read_dir(&etc)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.display()
                .to_string()
                .contains("sshd_config.postern-backup-")
        })
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(std::fs::read_to_string(&backups[0]).unwrap(), original);
    let t = effective();
    assert!(
        t.contains(&format!("trustedusercakeys {}", ca_out.display())),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "authorizedprincipalsfile {}/%u",
            principals.display()
        )),
        "{t}"
    );
    let out = setup(&["--write"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each run keeps its own backup: the original is never overwritten.
    let mut backups: Vec<String> = std::fs::read_dir(&etc)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.contains("sshd_config.postern-backup-"))
        .collect();
    backups.sort_by_key(|p| p.len());
    assert_eq!(backups.len(), 2, "{backups:?}");
    assert!(backups
        .iter()
        .any(|b| std::fs::read_to_string(b).unwrap() == original));
    let written = std::fs::read_to_string(&config).unwrap();
    assert_eq!(written.matches("# BEGIN postern sshd-setup").count(), 1);
    assert!(written.ends_with(&original), "{written}");
    assert!(!effective().contains("authorizedprincipalsfile /"));

    // The real sshd runs with it and lets the edge's certificate in (directly, no tunnel).
    let sshd = support::Child::spawn(
        "sshd-setup-sshd",
        {
            let mut c = Command::new(require("sshd"));
            c.arg("-D").arg("-e").arg("-f").arg(&config);
            c
        },
        s.dir.path(),
    );
    wait_until(
        Duration::from_secs(20),
        "sshd on the written config",
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    let out = s.ssh_gen("ssh.localhost");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (key, cert) = s.key_files("ssh.localhost");
    let mut ssh = Command::new(require("ssh"));
    ssh.args(["-F", "/dev/null", "-p", &port.to_string(), "-i"])
        .arg(&key)
        .arg("-o")
        .arg(format!("CertificateFile={}", cert.display()))
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            s.sshd.known_hosts.display()
        ))
        .arg(format!("{}@127.0.0.1", s.sshd.user))
        .arg("echo setup-ok")
        .stdin(Stdio::null());
    let out = run_with_deadline(&mut ssh, SSH_DEADLINE, "ssh to the sshd-setup sshd");
    assert!(
        out.status.success(),
        "{}\nsshd:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.stderr_text()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "setup-ok");
    drop(sshd);

    // A config sshd refuses after the change is put back as it was.
    let broken = "NotAnSshdKeyword yes\n";
    std::fs::write(&config, broken).unwrap();
    let out = setup(&["--write"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("put back as it was"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), broken);
}

/// The block `access ssh-config --short-lived-cert` prints, as written, with stock OpenSSH:
/// each connection runs `access ssh-gen` first (Match exec), then offers the key and its
/// certificate to an sshd that has no authorized_keys: ssh, scp, sftp and git.
#[test]
fn the_short_lived_cert_block_works_for_ssh_scp_sftp_and_git() {
    let s = Setup::start("ssh-cert-block");
    require("git");
    require("scp");
    require("sftp");
    let block = s.ssh_config(&[]);
    assert!(
        block.starts_with("Match host ssh.localhost exec \""),
        "{block}"
    );
    assert!(
        block.contains("  IdentityFile ~/.postern/%h-key\n"),
        "{block}"
    );
    assert!(
        block.contains("  CertificateFile ~/.postern/%h-key-cert.pub\n"),
        "{block}"
    );
    // ssh expands `~` from the password database, not $HOME: point it at this test's home.
    let block = block.replace("~/.postern", &s.home.join(".postern").display().to_string());
    let config = s.dir.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "{block}  UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  BatchMode yes\n  IdentitiesOnly yes\n  \
             IdentityAgent none\n  LogLevel ERROR\n",
            s.sshd.known_hosts.display()
        ),
    )
    .unwrap();
    ssh_scp_sftp_and_git(&s, &config, &[]);
    assert!(s.home.join(".postern/ssh.localhost-key-cert.pub").exists());
}

#[test]
fn the_agent_block_works_for_ssh_scp_sftp_and_git() {
    let s = Setup::start("ssh-cert-agent");
    require("ssh-agent");
    require("ssh-add");
    let block = s.ssh_config(&["--agent"]);
    assert!(
        block.starts_with("Host ssh.localhost\n  ProxyCommand "),
        "{block}"
    );
    assert!(block.contains(" --short-lived-cert"), "{block}");
    assert!(
        !block.contains("Match") && !block.contains("IdentityFile"),
        "{block}"
    );
    // A real agent of the user's own, as a desktop session runs one.
    let sock = s.dir.join("agent.sock");
    let mut agent = Command::new("ssh-agent");
    agent.arg("-D").arg("-a").arg(&sock);
    let _agent = Child::spawn("ssh-agent", agent, s.dir.path());
    wait_until(Duration::from_secs(10), "ssh-agent's socket", || {
        sock.exists()
    });
    let sock_text = sock.display().to_string();
    let config = s.dir.join("ssh_config_agent");
    std::fs::write(
        &config,
        format!(
            "{block}  UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n",
            s.sshd.known_hosts.display()
        ),
    )
    .unwrap();
    ssh_scp_sftp_and_git(&s, &config, &[("SSH_AUTH_SOCK", &sock_text)]);
    // The agent holds the certificate, to be forgotten when it expires.
    let listed = run_ok(
        Command::new("ssh-add")
            .arg("-l")
            .env("SSH_AUTH_SOCK", &sock),
        "ssh-add -l",
    );
    assert!(listed.contains("ED25519-CERT"), "{listed}");

    // Without an agent the ProxyCommand says what is missing instead of a bare refusal.
    let mut ssh = Command::new("ssh");
    ssh.arg("-F")
        .arg(&config)
        .arg(format!("{}@ssh.localhost", s.sshd.user))
        .arg("true")
        .env("HOME", &s.home)
        .env_remove("SSH_AUTH_SOCK")
        .env("POSTERN_SERVICE_TOKEN_ID", &s.token.id)
        .env("POSTERN_SERVICE_TOKEN_SECRET", &s.token.secret)
        .stdin(Stdio::null());
    let out = run_with_deadline(&mut ssh, SSH_DEADLINE, "ssh without an agent");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SSH_AUTH_SOCK is not set"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// ssh, scp, sftp and a git push and ls-remote to `s`'s sshd with the ssh `config`, as the
/// service token `ci`, with `extra` in the environment; each must succeed.
fn ssh_scp_sftp_and_git(s: &Setup, config: &Path, extra: &[(&str, &str)]) {
    let dest = format!("{}@ssh.localhost", s.sshd.user);
    let env = |cmd: &mut Command| {
        cmd.env("HOME", &s.home)
            .env("POSTERN_SERVICE_TOKEN_ID", &s.token.id)
            .env("POSTERN_SERVICE_TOKEN_SECRET", &s.token.secret)
            .stdin(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
    };
    let check = |out: Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}\nsshd:\n{}",
            String::from_utf8_lossy(&out.stderr),
            support::tail(&s.sshd.stderr_text(), 2000)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let mut ssh = Command::new("ssh");
    ssh.arg("-F").arg(config).arg(&dest).arg("echo block-ok");
    env(&mut ssh);
    let out = check(run_with_deadline(&mut ssh, SSH_DEADLINE, "ssh"), "ssh");
    assert_eq!(out.trim(), "block-ok");

    let local = s.dir.join("to-copy.txt");
    std::fs::write(&local, "copied by scp\n").unwrap();
    let remote = s.dir.join("copied.txt");
    let mut scp = Command::new("scp");
    scp.arg("-F")
        .arg(config)
        .arg(&local)
        .arg(format!("{dest}:{}", remote.display()));
    env(&mut scp);
    check(run_with_deadline(&mut scp, SSH_DEADLINE, "scp"), "scp");
    assert_eq!(std::fs::read_to_string(&remote).unwrap(), "copied by scp\n");

    let batch = s.dir.join("sftp-batch");
    let fetched = s.dir.join("fetched.txt");
    std::fs::write(
        &batch,
        format!("get {} {}\n", remote.display(), fetched.display()),
    )
    .unwrap();
    let mut sftp = Command::new("sftp");
    sftp.arg("-F").arg(config).arg("-b").arg(&batch).arg(&dest);
    env(&mut sftp);
    check(run_with_deadline(&mut sftp, SSH_DEADLINE, "sftp"), "sftp");
    assert_eq!(
        std::fs::read_to_string(&fetched).unwrap(),
        "copied by scp\n"
    );

    let bare = s.dir.join("repo.git");
    run_ok(
        Command::new("git")
            .arg("init")
            .arg("-q")
            .arg("--bare")
            .arg(&bare),
        "git init --bare",
    );
    let work = s.dir.join("work");
    run_ok(
        Command::new("git").arg("init").arg("-q").arg(&work),
        "git init",
    );
    std::fs::write(work.join("README"), "pushed with a certificate\n").unwrap();
    let git = |args: &[&str]| {
        let mut c = Command::new("git");
        c.arg("-C")
            .arg(&work)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .env(
                "GIT_SSH_COMMAND",
                format!("ssh -F {}", shell_quote(&config.display().to_string())),
            );
        env(&mut c);
        c
    };
    run_ok(&mut git(&["add", "README"]), "git add");
    run_ok(&mut git(&["commit", "-q", "-m", "one"]), "git commit");
    let url = format!("{dest}:{}", bare.display());
    check(
        run_with_deadline(
            &mut git(&["push", "-q", &url, "HEAD:refs/heads/main"]),
            SSH_DEADLINE,
            "git push",
        ),
        "git push",
    );
    let listed = check(
        run_with_deadline(
            &mut git(&["ls-remote", &url]),
            SSH_DEADLINE,
            "git ls-remote",
        ),
        "git ls-remote",
    );
    assert!(listed.contains("refs/heads/main"), "{listed}");
}

/// `edge ssh-ca --rotate`: after a restart the edge signs with the new key and lists both;
/// a server that took the new list accepts certificates of either key.
#[test]
fn a_rotated_ca_signs_with_the_new_key_and_keeps_the_old_one_listed() {
    let mut s = Setup::start("ssh-cert-rotate");
    let out = s.ssh_gen("ssh.localhost");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (key, cert) = s.key_files("ssh.localhost");
    let (old_key, old_cert) = (s.dir.join("old-key"), s.dir.join("old-key-cert.pub"));
    std::fs::copy(&key, &old_key).unwrap();
    std::fs::copy(&cert, &old_cert).unwrap();

    let lines = run_ok(
        postern(&s.home)
            .args(["edge", "ssh-ca", "--rotate", "--state"])
            .arg(&s.edge.state),
        "postern edge ssh-ca --rotate",
    );
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert_eq!(lines.lines().nth(1).unwrap(), s.ca_line.trim());
    s.edge.restart();
    s.tunnel.wait_registered(1, Duration::from_secs(20));
    // The server takes the new list (what `tunnel sshd-setup --write` does).
    std::fs::write(s.dir.join("trusted_user_ca.pub"), &lines).unwrap();
    let answer = support::sso::raw_get(
        &s.edge.edge_arg(),
        &s.edge.ca(),
        "ssh.localhost",
        "/cdn-cgi/access/ssh-ca",
        &[],
        false,
    );
    assert_eq!(body_of(&answer), lines);

    std::fs::remove_file(&cert).unwrap();
    let out = s.ssh_gen("ssh.localhost");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = s.dir.join("new-ca.pub");
    std::fs::write(&first, lines.lines().next().unwrap()).unwrap();
    let new_fp = run_ok(
        Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(&first),
        "ssh-keygen -l",
    );
    let new_fp = new_fp.split_whitespace().nth(1).unwrap().to_owned();
    assert!(keygen_list(&cert).contains(&format!("Signing CA: ED25519 {new_fp}")));
    for (k, c, what) in [
        (&key, &cert, "a certificate from the new key"),
        (&old_key, &old_cert, "a certificate from the old key"),
    ] {
        let out = s.ssh(k, Some(c), "echo rotated-ok");
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The headline, end to end: alice signs in with Chromium at the real provider, and her
/// certificate (principal: this machine's user, mapped from her email by the application's
/// `ssh_certificates`) gets her into an sshd that trusts only the edge's CA, through the
/// tunnel, with ssh, scp and git, from the printed `--short-lived-cert` block with no service
/// token anywhere.
#[test]
fn a_user_signed_in_with_chromium_gets_into_a_ca_only_sshd_with_ssh_scp_and_git() {
    require("git");
    require("scp");
    let user = current_user();
    let staff = serde_json::json!([{ "decision": "allow", "include": [ { "email_domain": "example.com" } ] }]);
    let sso = Sso::start_extra(
        "ssh-cert-browser",
        &Default::default(),
        serde_json::json!({}),
        serde_json::json!({ "applications": [
            // The harness's own tunnels serve these two.
            { "hostname": "ssh.localhost", "policies": staff },
            { "hostname": "short.localhost", "policies": staff },
            { "hostname": "ca.localhost", "policies": staff, "ssh_certificates": {
                "principals": [ { "include": [ { "email": "alice@example.com" } ], "principals": [user] } ]
            } }
        ] }),
    );
    // The server trusts the CA the edge publishes, and nothing else.
    let ca = raw_request(
        &sso.edge_addr,
        &sso.ca(),
        "ca.localhost",
        "GET",
        "/cdn-cgi/access/ssh-ca",
        &[],
        None,
    );
    assert!(status_of(&ca).contains("200"), "{ca}");
    let trusted = sso.dir.join("trusted-ca.pub");
    std::fs::write(&trusted, body_of(&ca)).unwrap();
    // Its own directory: the harness's sshd has one in the test directory already.
    let server = sso.dir.join("ca-server");
    std::fs::create_dir_all(&server).unwrap();
    let sshd = Sshd::start_with_auth(
        &server,
        &format!(
            "TrustedUserCAKeys {}\nAuthorizedKeysFile none",
            trusted.display()
        ),
    );
    let edge = support::EdgeRef {
        addr: sso.edge_addr.parse().unwrap(),
        ca: sso.ca(),
    };
    let _tunnel = Tunnel::start_with(
        sso.dir.path(),
        "tunnel-ca",
        "ca.localhost",
        &sshd.url(),
        &sso.dir.join("cert.pem"),
        &edge,
    );

    let (ok, stderr) = sso.login("alice", "ca.localhost", DEFAULT_EXPECT);
    assert!(ok, "alice's login failed: {stderr}");
    let home = sso.home("alice");
    let mut cmd = postern(&home);
    cmd.args(["access", "ssh-config", "--hostname", "ca.localhost"])
        .args(["--short-lived-cert", "--edge", &sso.edge_addr, "--ca"])
        .arg(sso.ca());
    let block = run_ok(&mut cmd, "access ssh-config --short-lived-cert")
        .replace("~/.postern", &home.join(".postern").display().to_string());
    let config = sso.dir.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "{block}  UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  BatchMode yes\n  IdentitiesOnly yes\n  \
             IdentityAgent none\n  LogLevel ERROR\n",
            sshd.known_hosts.display()
        ),
    )
    .unwrap();
    let dest = format!("{}@ca.localhost", sshd.user);
    let run = |cmd: &mut Command, what: &str| -> String {
        cmd.env("HOME", &home)
            .env("BROWSER", "false")
            .env_remove("POSTERN_SERVICE_TOKEN_ID")
            .env_remove("POSTERN_SERVICE_TOKEN_SECRET")
            .stdin(Stdio::null());
        let out = run_with_deadline(cmd, SSH_DEADLINE, what);
        assert!(
            out.status.success(),
            "{what}: {}\nsshd:\n{}",
            String::from_utf8_lossy(&out.stderr),
            support::tail(&sshd.stderr_text(), 2000)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run(
        Command::new("ssh")
            .arg("-F")
            .arg(&config)
            .arg(&dest)
            .arg("echo alice-in"),
        "ssh",
    );
    assert_eq!(out.trim(), "alice-in");
    let listed = keygen_list(&home.join(".postern/ca.localhost-key-cert.pub"));
    let principals: Vec<&str> = listed
        .split("Principals:")
        .nth(1)
        .and_then(|rest| rest.split("Critical Options:").next())
        .map(|p| p.split_whitespace().collect())
        .unwrap_or_default();
    // The mapped user, and the email's local part (on by default).
    assert!(
        principals.contains(&user.as_str()) && principals.contains(&"alice"),
        "the principals: {listed}"
    );

    let local = sso.dir.join("alice.txt");
    std::fs::write(&local, "from alice\n").unwrap();
    let remote = sso.dir.join("alice-copied.txt");
    run(
        Command::new("scp")
            .arg("-F")
            .arg(&config)
            .arg(&local)
            .arg(format!("{dest}:{}", remote.display())),
        "scp",
    );
    assert_eq!(std::fs::read_to_string(&remote).unwrap(), "from alice\n");

    let bare = sso.dir.join("alice.git");
    run_ok(
        Command::new("git")
            .args(["init", "-q", "--bare"])
            .arg(&bare),
        "git init --bare",
    );
    let url = format!("{dest}:{}", bare.display());
    let listed = run(
        Command::new("git").args(["ls-remote", &url]).env(
            "GIT_SSH_COMMAND",
            format!("ssh -F {}", shell_quote(&config.display().to_string())),
        ),
        "git ls-remote",
    );
    assert!(listed.is_empty(), "an empty repository: {listed}");
}
