//! The SSO edge the login tests share: a real OpenID Connect provider, an edge configured
//! with it (applications with policies, tunnel admins), tunnels in front of a real sshd, and
//! helpers that sign users in through real Chromium.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::oidc::{browser_login, Provider};
use super::{
    free_port, origin_cert, postern, run_with_deadline, temp_dir, Child, Sshd, TempDir, Tunnel,
};

pub const ACCOUNTS: &[(&str, &str, &[&str])] = &[
    ("alice", "alice@example.com", &["ops"]),
    ("carol", "carol@example.com", &["contractors"]),
    ("dave", "dave@partner.org", &["ops"]),
    ("erin", "erin@other.org", &[]),
];

/// An edge configured with the provider, two applications and a tunnel to sshd.
pub struct Sso {
    pub dir: TempDir,
    pub provider: Provider,
    pub edge: Child,
    pub edge_addr: String,
    pub state: PathBuf,
    pub sshd: Sshd,
    _tunnel: Tunnel,
    _tunnel_short: Tunnel,
}

impl Sso {
    pub fn start(name: &str) -> Sso {
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
        let support_edge = super::EdgeRef {
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

    pub fn ca(&self) -> PathBuf {
        self.state.join("ca.pem")
    }

    pub fn home(&self, user: &str) -> PathBuf {
        let h = self.dir.join(format!("home-{user}"));
        std::fs::create_dir_all(&h).unwrap();
        h
    }

    /// `postern access login H` as `user`: the browser signs in and confirms with the code
    /// the CLI printed; returns (success, stderr).
    pub fn login(&self, user: &str, host: &str, expect: &str) -> (bool, String) {
        let mut cmd = postern(&self.home(user));
        cmd.args(["access", "login", host, "--edge", &self.edge_addr, "--ca"])
            .arg(self.ca())
            .env("BROWSER", "true");
        let cli = Child::spawn(&format!("login-{user}"), cmd, self.dir.path());
        let (url, code) = login_prompt(&cli);
        let page = browser_login(&url, user, expect, None, Some(&code), self.dir.path());
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

    pub fn ssh(&self, user: &str, host: &str, remote: &str) -> std::process::Output {
        self.ssh_command(user, host, remote).output_with_deadline()
    }

    pub fn ssh_command(&self, user: &str, host: &str, remote: &str) -> Command {
        let proxy = format!(
            "{} access ssh --hostname %h --edge {} --ca {}",
            super::postern_bin().display(),
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
    pub fn token(&self, user: &str, host: &str) -> String {
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
    pub fn carrier_status(&self, host: &str, token: &str) -> String {
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

/// The login URL and the confirmation code a login command prints on stderr.
pub fn login_prompt(cli: &Child) -> (String, String) {
    let text = cli
        .wait_for_stderr("confirm this code: ", Duration::from_secs(20))
        .expect("the login command must print the login URL and its code");
    let url = text
        .split_whitespace()
        .find(|w| w.contains("/cdn-cgi/access/cli?"))
        .expect("URL in stderr")
        .to_owned();
    let code = text
        .split("confirm this code: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("code in stderr")
        .to_owned();
    (url, code)
}

/// A `BROWSER` for ProxyCommand logins: signs `user` in with login.mjs in the background.
pub fn browser_script(dir: &Path, user: &str) -> PathBuf {
    let script = dir.join(format!("browser-{user}.sh"));
    let js = super::oidc::js_dir().join("login.mjs");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nnode {} \"$1\" {user} {} >>{} 2>&1 &\n",
            js.display(),
            super::oidc::TEST_PASSWORD,
            dir.join(format!("browser-{user}.log")).display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

pub trait OutputWithDeadline {
    fn output_with_deadline(&mut self) -> std::process::Output;
}

impl OutputWithDeadline for Command {
    fn output_with_deadline(&mut self) -> std::process::Output {
        run_with_deadline(self, Duration::from_secs(120), "ssh through postern")
    }
}

/// One HTTPS GET over rustls to the edge with SNI = Host = `host`; the whole response.
pub fn raw_get(
    edge: &str,
    ca: &Path,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
    upgrade: bool,
) -> String {
    let mut extra: Vec<(&str, &str)> = Vec::new();
    if upgrade {
        extra.extend([
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
    }
    extra.extend_from_slice(headers);
    raw_request(edge, ca, host, "GET", target, &extra, None)
}

/// One HTTPS request over rustls to the edge with SNI = Host = `host`, with `body` (and its
/// Content-Length) if given; the whole response.
pub fn raw_request(
    edge: &str,
    ca: &Path,
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
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
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    tls.write_all(&bytes).unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

/// The value of header `name` in a raw response.
pub fn header_of<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response
        .split("\r\n\r\n")
        .next()?
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// The body of a raw response.
pub fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

pub fn status_of(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}
