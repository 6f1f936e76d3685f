//! SSO end to end, with real parts only: a real OpenID Connect provider (npm `oidc-provider`),
//! real headless Chromium driven by playwright-core through the real login pages, the edge
//! from a JSON config, a tunnel in front of a real sshd, and real ssh.
//!
//! - `postern access login` prints the URL, the browser signs in at the provider, the CLI
//!   receives the token, and `ssh -o ProxyCommand='postern access ssh …'` runs a command;
//! - policies: an email-domain rule and a group rule admit; a deny rule beats a later allow;
//!   a user outside every policy is refused with a clear message;
//! - tokens: another application's token, another key's token, a tampered payload,
//!   `alg: none` and an expired token are refused; a transfer id cannot be replayed;
//! - an expired cached token makes `access ssh` log in again by itself.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::oidc::{browser_login, Provider, DEFAULT_EXPECT};
use support::{
    free_port, origin_cert, postern, run_with_deadline, temp_dir, Child, Sshd, TempDir, Tunnel,
};

const ACCOUNTS: &[(&str, &str, &[&str])] = &[
    ("alice", "alice@example.com", &["ops"]),
    ("carol", "carol@example.com", &["contractors"]),
    ("dave", "dave@partner.org", &["ops"]),
    ("erin", "erin@other.org", &[]),
];

/// An edge configured with the provider, two applications and a tunnel to sshd.
struct Sso {
    dir: TempDir,
    provider: Provider,
    edge: Child,
    edge_addr: String,
    state: PathBuf,
    sshd: Sshd,
    _tunnel: Tunnel,
    _tunnel_short: Tunnel,
}

impl Sso {
    fn start(name: &str) -> Sso {
        let dir = temp_dir(name);
        let port = free_port();
        let public = format!("https://login.localhost:{port}");
        let provider = Provider::start(
            dir.path(),
            &[format!("{public}/cdn-cgi/access/callback")],
            ACCOUNTS,
        );
        let state = dir.join("edge-state");
        let secret_file = dir.join("client-secret");
        std::fs::write(&secret_file, &provider.client_secret).unwrap();
        let config = serde_json::json!({
            "listen": format!("127.0.0.1:{port}"),
            "state_dir": state,
            "zones": [ { "name": "localhost", "local_ca": true }, { "name": "example.test", "local_ca": true } ],
            "public_url": public,
            "identity": {
                "issuer": provider.issuer,
                "client_id": provider.client_id,
                "client_secret_file": secret_file,
            },
            "applications": [
                { "hostname": "ssh.localhost", "policies": [
                    { "name": "no contractors", "decision": "deny", "include": [ { "group": "contractors" } ] },
                    { "name": "staff", "decision": "allow", "include": [ { "email_domain": "example.com" } ] },
                    { "name": "ops", "decision": "allow", "include": [ { "group": "ops" } ] }
                ] },
                { "hostname": "short.localhost", "session_duration": "3s", "policies": [
                    { "decision": "allow", "include": [ { "email": "alice@example.com" } ] }
                ] },
                { "hostname": "other.localhost", "policies": [
                    { "decision": "allow", "include": [ { "everyone": true } ] }
                ] },
                // Served by the tunnel of an origin certificate from `tunnel login`.
                { "hostname": "web.example.test", "policies": [
                    { "decision": "allow", "include": [ { "everyone": true } ] }
                ] }
            ],
            "tunnel_admins": [ { "decision": "allow", "include": [ { "email": "alice@example.com" } ] } ]
        });
        let cfg = dir.join("edge.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut cmd = postern(&dir.join("home"));
        cmd.args(["edge", "--config"]).arg(&cfg);
        let edge = Child::spawn("edge", cmd, dir.path());
        edge.wait_for_stderr("postern edge listening on", Duration::from_secs(20))
            .expect("edge did not start");
        let edge_addr = format!("127.0.0.1:{port}");

        let sshd = Sshd::start(dir.path());
        let cert = dir.join("cert.pem");
        origin_cert(&state, "localhost", &cert, &edge_addr.parse().unwrap());
        let support_edge = support::EdgeRef {
            addr: edge_addr.parse().unwrap(),
            ca: state.join("ca.pem"),
        };
        let tunnel = Tunnel::start_with(
            dir.path(),
            "tunnel",
            "ssh.localhost",
            &sshd.url(),
            &cert,
            &support_edge,
        );
        let tunnel_short = Tunnel::start_with(
            dir.path(),
            "tunnel-short",
            "short.localhost",
            &sshd.url(),
            &cert,
            &support_edge,
        );
        Sso {
            dir,
            provider,
            edge,
            edge_addr,
            state,
            sshd,
            _tunnel: tunnel,
            _tunnel_short: tunnel_short,
        }
    }

    fn ca(&self) -> PathBuf {
        self.state.join("ca.pem")
    }

    fn home(&self, user: &str) -> PathBuf {
        let h = self.dir.join(format!("home-{user}"));
        std::fs::create_dir_all(&h).unwrap();
        h
    }

    /// `postern access login H` as `user`: the browser signs in; returns (success, stderr).
    fn login(&self, user: &str, host: &str, expect: &str) -> (bool, String) {
        let mut cmd = postern(&self.home(user));
        cmd.args(["access", "login", host, "--edge", &self.edge_addr, "--ca"])
            .arg(self.ca())
            .env("BROWSER", "true");
        let cli = Child::spawn(&format!("login-{user}"), cmd, self.dir.path());
        let text = cli
            .wait_for_stderr("/cdn-cgi/access/cli?", Duration::from_secs(20))
            .expect("access login must print the login URL");
        let url = text
            .split_whitespace()
            .find(|w| w.contains("/cdn-cgi/access/cli?"))
            .expect("URL in stderr")
            .to_owned();
        let page = browser_login(&url, user, expect, None, self.dir.path());
        assert!(
            page.is_ok(),
            "browser login as {user}: {page:?}\nedge:\n{}",
            self.edge.stderr_text()
        );
        let status = cli
            .wait_exit(Duration::from_secs(30))
            .expect("access login must end after the browser login");
        (status.success(), cli.stderr_text())
    }

    fn ssh(&self, user: &str, host: &str, remote: &str) -> std::process::Output {
        self.ssh_command(user, host, remote).output_with_deadline()
    }

    fn ssh_command(&self, user: &str, host: &str, remote: &str) -> Command {
        let proxy = format!(
            "{} access ssh --hostname %h --edge {} --ca {}",
            support::postern_bin().display(),
            self.edge_addr,
            self.ca().display()
        );
        let mut cmd = Command::new("ssh");
        cmd.args(self.sshd.ssh_options())
            .arg("-o")
            .arg(format!("ProxyCommand={proxy}"))
            .arg(format!("{}@{host}", self.sshd.user))
            .arg(remote)
            .env("HOME", self.home(user))
            .env("RUST_LOG", "warn")
            .env_remove("POSTERN_SERVICE_TOKEN_ID")
            .env_remove("POSTERN_SERVICE_TOKEN_SECRET")
            .stdin(Stdio::null());
        cmd.env("BROWSER", browser_script(self.dir.path(), user));
        cmd
    }

    /// The token `user` holds for `host` (`postern access token`).
    fn token(&self, user: &str, host: &str) -> String {
        let out = postern(&self.home(user))
            .args(["access", "token", "--app", host])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "access token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Sends an upgrade with `cf-access-token: token` for `host`; returns the status line.
    fn carrier_status(&self, host: &str, token: &str) -> String {
        raw_get(
            &self.edge_addr,
            &self.ca(),
            host,
            "/",
            &[("cf-access-token", token)],
            true,
        )
    }
}

/// A `BROWSER` for ProxyCommand logins: signs `user` in with login.mjs in the background.
fn browser_script(dir: &Path, user: &str) -> PathBuf {
    let script = dir.join(format!("browser-{user}.sh"));
    let js = support::oidc::js_dir().join("login.mjs");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nnode {} \"$1\" {user} {} >>{} 2>&1 &\n",
            js.display(),
            support::oidc::TEST_PASSWORD,
            dir.join(format!("browser-{user}.log")).display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

trait OutputWithDeadline {
    fn output_with_deadline(&mut self) -> std::process::Output;
}

impl OutputWithDeadline for Command {
    fn output_with_deadline(&mut self) -> std::process::Output {
        run_with_deadline(self, Duration::from_secs(120), "ssh through postern")
    }
}

/// One HTTPS request over rustls to the edge with SNI = Host = `host`; the status line.
fn raw_get(
    edge: &str,
    ca: &Path,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
    upgrade: bool,
) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("open ca.pem") {
        roots.add(cert.expect("parse ca.pem")).expect("add CA root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from(host.to_owned()).unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(edge).expect("connect to edge");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n");
    if upgrade {
        req.push_str("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn status_of(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[test]
fn browser_login_then_ssh_and_policies_decide() {
    let sso = Sso::start("sso-pol");

    // Email-domain rule: alice@example.com signs in in the browser, then ssh just works.
    let (ok, stderr) = sso.login("alice", "ssh.localhost", DEFAULT_EXPECT);
    assert!(ok, "alice's login failed: {stderr}");
    let token_file = sso.home("alice").join(".postern/tokens/ssh.localhost.jwt");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "token file must be 0600");
    let out = sso.ssh("alice", "ssh.localhost", "echo hello-from-sso");
    assert!(
        out.status.success(),
        "ssh as alice: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello-from-sso"
    );

    // Group rule: dave@partner.org is in ops.
    let (ok, stderr) = sso.login("dave", "ssh.localhost", DEFAULT_EXPECT);
    assert!(ok, "dave (group ops) must be admitted: {stderr}");

    // A deny rule beats a later allow: carol@example.com is a contractor.
    let (ok, stderr) = sso.login("carol", "ssh.localhost", "Access denied");
    assert!(!ok, "carol must be refused");
    assert!(
        stderr.contains("access denied") && stderr.contains("carol@example.com"),
        "{stderr}"
    );

    // Outside every policy.
    let (ok, stderr) = sso.login("erin", "ssh.localhost", "Access denied");
    assert!(!ok, "erin must be refused");
    assert!(stderr.contains("not allowed"), "{stderr}");

    let audit = std::fs::read_to_string(sso.state.join("audit.log")).unwrap();
    assert!(audit.contains("\"policy\":\"no contractors\""), "{audit}");
    assert!(
        !audit.contains(&sso.provider.client_secret),
        "client secret in the audit log"
    );
    assert!(!sso.edge.stderr_text().contains(&sso.provider.client_secret));
}

#[test]
fn forged_foreign_tampered_none_and_expired_tokens_are_refused() {
    let sso = Sso::start("sso-tok");
    let (ok, stderr) = sso.login("alice", "ssh.localhost", DEFAULT_EXPECT);
    assert!(ok, "{stderr}");
    let good = sso.token("alice", "ssh.localhost");
    assert!(status_of(&sso.carrier_status("ssh.localhost", &good)).contains(" 101 "));

    // A token for another application.
    let (ok, stderr) = sso.login("alice", "other.localhost", DEFAULT_EXPECT);
    assert!(ok, "{stderr}");
    let other = sso.token("alice", "other.localhost");
    let r = sso.carrier_status("ssh.localhost", &other);
    assert!(status_of(&r).contains(" 401 "), "{r}");

    // Tampered payload: alice becomes mallory.
    let parts: Vec<&str> = good.split('.').collect();
    let payload = postern::base64::decode_url(parts[1]).unwrap();
    let forged = String::from_utf8(payload)
        .unwrap()
        .replace("alice@example.com", "mallory@example.com");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        postern::base64::encode_url(forged.as_bytes()),
        parts[2]
    );
    assert!(status_of(&sso.carrier_status("ssh.localhost", &tampered)).contains(" 401 "));

    // alg: none, with and without a signature part.
    let none = postern::base64::encode_url(br#"{"alg":"none","typ":"JWT"}"#);
    for t in [
        format!("{none}.{}.", parts[1]),
        format!("{none}.{}", parts[1]),
    ] {
        assert!(status_of(&sso.carrier_status("ssh.localhost", &t)).contains(" 401 "));
    }

    // Signed by another key (same claims).
    let claims: serde_json::Value =
        serde_json::from_slice(&postern::base64::decode_url(parts[1]).unwrap()).unwrap();
    let (stranger, _) = postern::jwt::SigningKey::generate();
    let foreign = stranger.sign(&claims);
    assert!(status_of(&sso.carrier_status("ssh.localhost", &foreign)).contains(" 401 "));

    // Expired, though signed by the edge's own key.
    let ring = postern::jwt::KeyRing::from_json(
        &std::fs::read(sso.state.join("signing-keys.json")).unwrap(),
    )
    .unwrap();
    let mut old = claims.clone();
    old["exp"] = serde_json::json!(1_000_000);
    old["iat"] = serde_json::json!(999_000);
    old["nbf"] = serde_json::json!(999_000);
    let r = sso.carrier_status("ssh.localhost", &ring.sign(&old));
    assert!(
        status_of(&r).contains(" 401 ") && r.contains("expired"),
        "{r}"
    );

    // A transfer id works once: a second browser visit with the same id is refused.
    let key = postern::token_transfer::Opener::new();
    let target = format!(
        "/cdn-cgi/access/cli?id={}&key={}&app=ssh.localhost",
        key.id, key.public
    );
    assert!(status_of(&raw_get(
        &sso.edge_addr,
        &sso.ca(),
        "ssh.localhost",
        &target,
        &[],
        false
    ))
    .contains(" 302 "));
    let again = raw_get(
        &sso.edge_addr,
        &sso.ca(),
        "ssh.localhost",
        &target,
        &[],
        false,
    );
    assert!(status_of(&again).contains(" 409 "), "{again}");
    // Polling an unknown transfer says so.
    let unknown = raw_get(
        &sso.edge_addr,
        &sso.ca(),
        "ssh.localhost",
        "/cdn-cgi/access/transfer?id=nosuchtransferid0000",
        &[],
        false,
    );
    assert!(status_of(&unknown).contains(" 404 "), "{unknown}");

    // A service token gets in only where a policy names it: ssh.localhost names none, while
    // other.localhost admits "everyone" (signed-in users), which a service token is not.
    let token = support::service_token(&sso.state, "ci");
    let creds = [
        ("CF-Access-Client-Id", token.id.as_str()),
        ("CF-Access-Client-Secret", token.secret.as_str()),
    ];
    for host in ["ssh.localhost", "other.localhost"] {
        let r = raw_get(&sso.edge_addr, &sso.ca(), host, "/", &creds, true);
        assert!(
            status_of(&r).contains(" 403 ") && r.contains("service token refused"),
            "{host}: {r}"
        );
    }

    // JWKS is published and holds the key the edge signs with.
    let jwks = raw_get(
        &sso.edge_addr,
        &sso.ca(),
        "ssh.localhost",
        "/cdn-cgi/access/certs",
        &[],
        false,
    );
    assert!(jwks.contains(ring.active().kid()), "{jwks}");
}

#[test]
fn an_expired_cached_token_makes_ssh_log_in_again() {
    let sso = Sso::start("sso-exp");
    let (ok, stderr) = sso.login("alice", "short.localhost", DEFAULT_EXPECT);
    assert!(ok, "{stderr}");
    // The client treats a token within 30 s of its end as stale already; read the cache file.
    let first = std::fs::read_to_string(
        sso.home("alice")
            .join(".postern/tokens/short.localhost.jwt"),
    )
    .expect("cached token");
    let first = first.trim();
    // The session lasts 3 s (+5 s leeway); wait for it to end (a condition, polled).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sso
        .carrier_status("short.localhost", first)
        .contains(" 101 ")
    {
        assert!(std::time::Instant::now() < deadline, "token never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    // ssh's ProxyCommand finds the cached token expired and logs in again through the browser.
    let out = sso.ssh("alice", "short.localhost", "echo logged-in-again");
    assert!(
        out.status.success(),
        "ssh after expiry: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "logged-in-again"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/cdn-cgi/access/cli?"),
        "the login URL must be printed: {stderr}"
    );
}

#[test]
fn tunnel_login_by_browser_gives_a_certificate_for_the_chosen_zone_only() {
    let sso = Sso::start("sso-tl");
    let run = |user: &str, out: &Path, expect: &str, zone: Option<&str>| {
        let mut cmd = postern(&sso.home(user));
        cmd.args(["tunnel", "login", "--edge"])
            .arg(format!(
                "https://login.{}",
                sso.edge_addr.replace("127.0.0.1", "localhost")
            ))
            .arg("--ca")
            .arg(sso.ca())
            .arg("--origincert")
            .arg(out)
            .env("BROWSER", "true");
        let cli = Child::spawn(&format!("tunnel-login-{user}"), cmd, sso.dir.path());
        let text = cli
            .wait_for_stderr("/cdn-cgi/access/cli?", Duration::from_secs(20))
            .expect("tunnel login must print the login URL");
        let url = text
            .split_whitespace()
            .find(|w| w.contains("/cdn-cgi/access/cli?"))
            .unwrap()
            .to_owned();
        assert!(url.contains("purpose=tunnel"), "{url}");
        let page = browser_login(&url, user, expect, zone, sso.dir.path());
        assert!(
            page.is_ok(),
            "browser: {page:?}\nedge:\n{}",
            sso.edge.stderr_text()
        );
        let status = cli
            .wait_exit(Duration::from_secs(30))
            .expect("tunnel login must end");
        (status.success(), cli.stderr_text())
    };

    // alice is a tunnel admin and picks example.test on the zone page.
    let cert = sso.dir.join("alice-cert.pem");
    let (ok, stderr) = run("alice", &cert, DEFAULT_EXPECT, Some("example.test"));
    assert!(ok, "tunnel login failed: {stderr}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cert).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let edge = support::EdgeRef {
        addr: sso.edge_addr.parse().unwrap(),
        ca: sso.ca(),
    };
    // It registers a hostname in the chosen zone...
    let _web = Tunnel::start_with(
        sso.dir.path(),
        "tunnel-web",
        "web.example.test",
        &sso.sshd.url(),
        &cert,
        &edge,
    );
    // ...and only there.
    let mut cmd = postern(&sso.home("alice"));
    cmd.args(["tunnel", "--hostname", "intruder.localhost", "--url"])
        .arg(sso.sshd.url())
        .arg("--origincert")
        .arg(&cert)
        .arg("--edge")
        .arg(&sso.edge_addr)
        .arg("--ca")
        .arg(sso.ca());
    let intruder = Child::spawn("tunnel-intruder", cmd, sso.dir.path());
    let status = intruder
        .wait_exit(Duration::from_secs(20))
        .expect("must exit");
    assert_eq!(status.code(), Some(1));
    assert!(
        intruder.stderr_text().contains("does not cover"),
        "{}",
        intruder.stderr_text()
    );

    // erin is not a tunnel admin.
    let (ok, stderr) = run(
        "erin",
        &sso.dir.join("erin-cert.pem"),
        "Access denied",
        None,
    );
    assert!(!ok);
    assert!(
        stderr.contains("may not create origin certificates"),
        "{stderr}"
    );
    assert!(!sso.dir.join("erin-cert.pem").exists());
}

#[test]
fn parallel_proxy_commands_share_one_browser_login() {
    let sso = Sso::start("sso-par");
    // Three ssh sessions start at once with no token: one of them logs in through the browser,
    // the others wait on the lock and use the token it caches.
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let mut cmd = sso.ssh_command("alice", "ssh.localhost", &format!("echo parallel-{i}"));
            std::thread::spawn(move || cmd.output_with_deadline())
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap();
        assert!(
            out.status.success(),
            "ssh {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("parallel-{i}")
        );
    }
    let audit = std::fs::read_to_string(sso.state.join("audit.log")).unwrap();
    let logins = audit
        .lines()
        .filter(|l| l.contains("\"event\":\"login\""))
        .count();
    assert_eq!(logins, 1, "one browser login for three sessions:\n{audit}");
}
