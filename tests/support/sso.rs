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

use super::oidc::{browser_login, Provider, ProviderOptions};
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
        Sso::start_with(name, &ProviderOptions::default(), serde_json::json!({}))
    }

    /// [`Sso::start`] with provider options and the edge config's `"limits"`.
    pub fn start_with(name: &str, options: &ProviderOptions, limits: serde_json::Value) -> Sso {
        Sso::start_extra(name, options, limits, serde_json::json!({}))
    }

    /// [`Sso::start_with`] with more top-level config fields (`extra`'s, e.g. `"admins"`).
    pub fn start_extra(
        name: &str,
        options: &ProviderOptions,
        limits: serde_json::Value,
        extra: serde_json::Value,
    ) -> Sso {
        let dir = temp_dir(name);
        let port = free_port();
        let public = format!("https://login.localhost:{port}");
        let provider = Provider::start_with(
            dir.path(),
            &[format!("{public}/cdn-cgi/access/callback")],
            ACCOUNTS,
            options,
        );
        let state = dir.join("edge-state");
        let secret_file = dir.join("client-secret");
        std::fs::write(&secret_file, &provider.client_secret).unwrap();
        let config = serde_json::json!({
            "listen": format!("127.0.0.1:{port}"),
            "state_dir": state,
            "zones": [ { "name": "localhost", "local_ca": true }, { "name": "example.test", "local_ca": true } ],
            "public_url": public,
            "limits": limits,
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
        let mut config = config;
        if let (Some(cfg), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                cfg.insert(k.clone(), v.clone());
            }
        }
        let cfg = dir.join("edge.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut cmd = postern(&dir.join("home"));
        let metrics = super::ready::metrics_listen();
        cmd.args(["edge", "--config"])
            .arg(&cfg)
            .arg("--metrics")
            .arg(metrics.to_string());
        let edge = Child::spawn("edge", cmd, dir.path());
        let listening = super::ready::wait_edge_listening(&edge, &metrics, Duration::from_secs(20))
            .expect("edge did not start");
        let edge_addr = format!("127.0.0.1:{port}");
        assert_eq!(listening.to_string(), edge_addr);

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
            .arg(self.ca());
        self.login_with(cmd, &format!("login-{user}"), user, expect, None)
    }

    /// Runs a login command (`access login`, `tunnel login`), signs `user` in where its URL
    /// leads, confirming with the code it printed (choosing `zone` if asked); (success, stderr).
    pub fn login_with(
        &self,
        mut cmd: Command,
        name: &str,
        user: &str,
        expect: &str,
        zone: Option<&str>,
    ) -> (bool, String) {
        cmd.env("BROWSER", "true");
        let cli = Child::spawn(name, cmd, self.dir.path());
        let (url, code) = login_prompt(&cli);
        let page = browser_login(&url, user, expect, zone, Some(&code), self.dir.path());
        assert!(
            page.is_ok(),
            "browser login as {user}: {page:?}\nedge:\n{}",
            self.edge.stderr_text()
        );
        let status = cli
            .wait_exit(Duration::from_secs(30))
            .expect("the login command must end after the browser login");
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
        .wait_for_stderr("ask for this code: ", Duration::from_secs(20))
        .expect("the login command must print the login URL and its code");
    let url = text
        .split_whitespace()
        .find(|w| w.contains("/cdn-cgi/access/cli?"))
        .expect("URL in stderr")
        .to_owned();
    let code = text
        .split("ask for this code: ")
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

/// A command-line login as a raw client makes it: its key, its edge, and the requests of
/// the CLI's side (start, poll) and of a browser's side (with the cookie it holds).
pub struct RawLogin {
    pub opener: postern::proto::token_transfer::Opener,
    pub edge: String,
    pub ca: PathBuf,
    /// The application host name the CLI talks to (SNI and Host).
    pub host: String,
}

impl RawLogin {
    pub fn new(edge: &str, ca: &Path, host: &str) -> RawLogin {
        RawLogin {
            opener: postern::proto::token_transfer::Opener::new(),
            edge: edge.to_owned(),
            ca: ca.to_owned(),
            host: host.to_owned(),
        }
    }

    /// The code the CLI prints.
    pub fn code(&self) -> String {
        postern::proto::token_transfer::confirmation_code(&self.opener.id, &self.opener.public)
    }

    /// `POST /cdn-cgi/access/transfer` for an app token (`tunnel: false`) or a tunnel login.
    pub fn start(&self, tunnel: bool) -> String {
        let body = if tunnel {
            serde_json::json!({ "id": self.opener.id, "key": self.opener.public, "purpose": "tunnel" })
        } else {
            serde_json::json!({ "id": self.opener.id, "key": self.opener.public, "app": self.host })
        };
        raw_request(
            &self.edge,
            &self.ca,
            &self.host,
            "POST",
            "/cdn-cgi/access/transfer",
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
    }

    /// The CLI's poll: the status line's code (200 sealed, 202 pending, 403 refused, 404).
    pub fn poll(&self) -> (u16, String) {
        let r = raw_get(
            &self.edge,
            &self.ca,
            &self.host,
            &format!("/cdn-cgi/access/transfer?id={}", self.opener.id),
            &[],
            false,
        );
        (status_code(&r), r)
    }

    /// The login link as the CLI prints it (on the application's host).
    pub fn link(&self) -> String {
        let port = self.edge.rsplit(':').next().unwrap_or("443");
        format!(
            "https://{}:{port}/cdn-cgi/access/cli?id={}",
            self.host, self.opener.id
        )
    }

    /// A browser's GET on `host`: the response, and the binder cookie (`name=value`) it sets.
    pub fn browser_get(&self, host: &str, target: &str, cookie: Option<&str>) -> String {
        let mut headers = Vec::new();
        if let Some(c) = cookie {
            headers.push(("Cookie", c));
        }
        raw_get(&self.edge, &self.ca, host, target, &headers, false)
    }

    /// A browser's form POST on `host` (`Origin` set as a browser would, unless `origin` says
    /// otherwise).
    pub fn browser_post(
        &self,
        host: &str,
        target: &str,
        form: &str,
        cookie: Option<&str>,
        origin: Option<&str>,
    ) -> String {
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        if let Some(c) = cookie {
            headers.push(("Cookie", c));
        }
        if let Some(o) = origin {
            headers.push(("Origin", o));
        }
        raw_request(
            &self.edge,
            &self.ca,
            host,
            "POST",
            target,
            &headers,
            Some(form.as_bytes()),
        )
    }

    /// Opens the sealed answer of a 200 poll with this login's key.
    pub fn open(self, poll_response: &str) -> Vec<u8> {
        let sealed: postern::proto::token_transfer::Sealed =
            serde_json::from_str(body_of(poll_response)).expect("a sealed answer");
        self.opener
            .open(&sealed)
            .expect("the sealed answer opens with our key")
    }
}

/// The numeric status of a raw response.
pub fn status_code(response: &str) -> u16 {
    status_of(response)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `name=value` of the first `Set-Cookie` of a raw response.
pub fn set_cookie(response: &str) -> Option<String> {
    header_of(response, "set-cookie").map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
}

/// The `value` of the hidden input `name` in an HTML page.
pub fn hidden_input(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// The `state` query parameter of a URL.
pub fn state_of(url: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .find_map(|p| p.strip_prefix("state="))
        .map(str::to_owned)
}
