//! One login per zone (issue 15), with real parts only: a real OpenID Connect provider, real
//! headless Chromium through the real login pages, the edge from a JSON config, tunnels in
//! front of a real sshd, and real ssh.
//!
//! - one browser login for `ssh.localhost`, then `ssh short.localhost` (another application of
//!   zone `localhost`) works with no second browser: the CLI exchanges its zone session;
//! - an application whose policy excludes the identity is refused at the exchange, and the CLI
//!   opens no browser for it;
//! - `postern edge sessions kill --email E` revokes E's zone sessions: exchanges stop;
//! - a zone session is no app token: the carrier refuses it; the cache file is 0600;
//! - `--no-browser` prints the login URL and starts no browser;
//! - the zone session goes only to an edge that shows the key of the edge of the login: a
//!   second edge for the zone's names, on another key the client also trusts, never sees it;
//! - a server of the zone's names that relays a login to the edge (its own trusted key,
//!   forwarding the CLI's requests) does not get the session pinned to its key: the CLI keeps
//!   a session only when the connection that brought it showed the key the edge states in it.

use crate::support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use support::oidc::browser_login;
use support::oidc::DEFAULT_EXPECT;
use support::sso::{body_of, login_prompt, raw_request, status_of, Sso};
use support::{postern, run_ok, Child};

/// What a ProxyCommand prints when it starts a browser login.
const BROWSER_PROMPT: &str = "/cdn-cgi/access/cli?";

fn mode(path: &Path) -> u32 {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777
}

/// The zone session `user` holds for `localhost`: the first line of its cache file (the key
/// of the edge it is pinned to follows).
fn zone_session(sso: &Sso, user: &str) -> String {
    let path = sso.home(user).join(".postern/tokens/localhost.zone");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the zone session must be cached at {}: {e}", path.display()))
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// `POST /cdn-cgi/access/exchange` on `host` with `session`; the whole response.
fn exchange(sso: &Sso, host: &str, session: &str) -> String {
    let body = serde_json::json!({ "zone_session": session }).to_string();
    raw_request(
        &sso.edge_addr,
        &sso.ca(),
        host,
        "POST",
        "/cdn-cgi/access/exchange",
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    )
}

/// The BROWSER script of `user` ran (a ProxyCommand tried to open a browser) if its log exists.
/// `postern access login HOST --edge EDGE --ca CAS` as alice, who signs in with the browser:
/// whether it succeeded, and its stderr.
fn login_alice(sso: &Sso, host: &str, edge: &str, cas: &Path, tag: &str) -> (bool, String) {
    let mut cmd = postern(&sso.home("alice"));
    cmd.args(["access", "login", host, "--edge", edge, "--ca"])
        .arg(cas);
    sso.login_with(cmd, tag, "alice", DEFAULT_EXPECT, None)
}

fn browser_ran(sso: &Sso, user: &str) -> bool {
    sso.dir.join(format!("browser-{user}.log")).exists()
}

#[test]
fn one_browser_login_then_ssh_to_another_application_of_the_zone_needs_no_browser() {
    let sso = Sso::start("zone-one");
    // The one browser login (Chromium driven once, by the harness).
    let (ok, stderr) = sso.login("alice", "ssh.localhost", DEFAULT_EXPECT);
    assert!(ok, "alice's login failed: {stderr}");
    let tokens = sso.home("alice").join(".postern/tokens");
    assert_eq!(mode(&tokens.join("ssh.localhost.jwt")), 0o600);
    assert_eq!(
        mode(&tokens.join("localhost.zone")),
        0o600,
        "the zone session is a credential: 0600"
    );

    // ssh to another application of the zone: no browser, within the deadline.
    let out = sso.ssh("alice", "short.localhost", "echo zone-ok");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ssh short.localhost: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "zone-ok");
    assert!(
        !stderr.contains(BROWSER_PROMPT) && !browser_ran(&sso, "alice"),
        "no second browser login may be needed: {stderr}"
    );
    assert!(
        stderr.contains("from the zone session of localhost"),
        "{stderr}"
    );
    assert_eq!(mode(&tokens.join("short.localhost.jwt")), 0o600);

    // short.localhost's tokens last 3 s: the next ssh, after the cached one has ended, gets a
    // fresh one through the zone session again, silently.
    let cached = std::fs::read_to_string(tokens.join("short.localhost.jwt")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sso
        .carrier_status("short.localhost", cached.trim())
        .contains(" 101 ")
    {
        assert!(std::time::Instant::now() < deadline, "token never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = sso.ssh("alice", "short.localhost", "echo refreshed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ssh after expiry: {stderr}");
    assert!(
        !stderr.contains(BROWSER_PROMPT) && !browser_ran(&sso, "alice"),
        "refresh needs no browser: {stderr}"
    );

    // Each exchange is an audit line.
    support::audit_when(
        &sso.state.join("audit.log"),
        Duration::from_secs(10),
        "the exchanges in the audit log",
        |a| {
            a.lines()
                .filter(|l| {
                    l.contains("\"exchange\"")
                        && l.contains("short.localhost")
                        && l.contains("\"allow\"")
                })
                .count()
                >= 2
        },
    );

    // The zone session itself opens no carrier, on any application.
    let session = zone_session(&sso, "alice");
    for host in ["ssh.localhost", "short.localhost"] {
        let r = sso.carrier_status(host, &session);
        assert!(status_of(&r).contains(" 401 "), "{host}: {r}");
    }
}

#[test]
fn an_application_whose_policy_excludes_the_identity_is_refused_without_a_browser() {
    let sso = Sso::start("zone-deny");
    // dave (group ops) may reach ssh.localhost; short.localhost admits alice only.
    let (ok, stderr) = sso.login("dave", "ssh.localhost", DEFAULT_EXPECT);
    assert!(ok, "dave's login failed: {stderr}");
    let out = sso.ssh("dave", "short.localhost", "echo must-not-run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dave must be refused: {stderr}");
    assert!(stderr.contains("not allowed"), "a clear reason: {stderr}");
    assert!(
        !stderr.contains(BROWSER_PROMPT) && !browser_ran(&sso, "dave"),
        "\"not allowed\" is final: no browser login: {stderr}"
    );
    let r = exchange(&sso, "short.localhost", &zone_session(&sso, "dave"));
    assert!(status_of(&r).contains(" 403 "), "{r}");
    assert!(body_of(&r).contains("\"not_allowed\""), "{r}");
}

#[test]
fn a_killed_zone_session_stops_exchanges() {
    let sso = Sso::start("zone-kill");
    let (ok, stderr) = sso.login("alice", "ssh.localhost", DEFAULT_EXPECT);
    assert!(ok, "alice's login failed: {stderr}");
    let session = zone_session(&sso, "alice");
    let r = exchange(&sso, "other.localhost", &session);
    assert!(status_of(&r).contains(" 200 "), "{r}");
    // Not for another zone's application, whatever the policy there.
    let r = exchange(&sso, "web.example.test", &session);
    assert!(status_of(&r).contains(" 401 "), "{r}");

    let out = run_ok(
        postern(&sso.home("admin"))
            .args(["edge", "sessions", "kill", "--email", "alice@example.com"])
            .arg("--origincert")
            .arg(sso.dir.join("cert.pem"))
            .args(["--edge", &sso.edge_addr, "--ca"])
            .arg(sso.ca()),
        "postern edge sessions kill --email",
    );
    let _ = out;
    let r = exchange(&sso, "other.localhost", &session);
    assert!(
        status_of(&r).contains(" 401 ") && body_of(&r).contains("revoked"),
        "a killed zone session must not be exchanged: {r}"
    );
    assert!(body_of(&r).contains("\"login_required\""), "{r}");
}

#[test]
fn no_browser_prints_the_login_url_and_starts_no_browser() {
    let sso = Sso::start("zone-nobrowser");
    // A BROWSER that leaves a mark if it is ever started.
    let marker = sso.dir.join("browser-started");
    let script = sso.dir.join("marking-browser.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = postern(&sso.home("alice"));
    cmd.args(["access", "login", "ssh.localhost", "--no-browser"])
        .args(["--edge", &sso.edge_addr, "--ca"])
        .arg(sso.ca())
        .env("BROWSER", &script);
    let cli = Child::spawn("login-no-browser", cmd, sso.dir.path());
    let (url, code) = login_prompt(&cli);
    // The person opens the printed URL in a browser of their own.
    let page = browser_login(
        &url,
        "alice",
        DEFAULT_EXPECT,
        None,
        Some(&code),
        sso.dir.path(),
    );
    assert!(page.is_ok(), "browser login: {page:?}");
    let status = cli
        .wait_exit(Duration::from_secs(30))
        .expect("the login ends after the browser login");
    assert!(status.success(), "{}", cli.stderr_text());
    assert!(
        !marker.exists(),
        "--no-browser must not start a browser: {}",
        cli.stderr_text()
    );
    zone_session(&sso, "alice");
}

/// `access logout H` logs out of H's zone too: without that, the cached zone session would
/// mint H's next token at once, and "logged out" would mean nothing.
#[test]
fn logout_from_an_application_ends_the_zone_session_too() {
    let sso = Sso::start("zone-logout");
    let (ok, stderr) = sso.login("alice", "ssh.localhost", DEFAULT_EXPECT);
    assert!(ok, "alice's login failed: {stderr}");
    let tokens = sso.home("alice").join(".postern/tokens");
    assert!(tokens.join("localhost.zone").exists() && tokens.join("ssh.localhost.jwt").exists());
    let out = support::run_with_deadline(
        postern(&sso.home("alice")).args(["access", "logout", "ssh.localhost"]),
        Duration::from_secs(30),
        "postern access logout ssh.localhost",
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("zone session for localhost"), "{said}");
    assert!(
        !tokens.join("ssh.localhost.jwt").exists(),
        "the app token is gone"
    );
    assert!(
        !tokens.join("localhost.zone").exists(),
        "the zone session is gone"
    );
    // The next token for the zone needs a browser login again.
    let mut cmd = postern(&sso.home("alice"));
    cmd.args(["access", "login", "other.localhost", "--no-browser"])
        .args(["--edge", &sso.edge_addr, "--ca"])
        .arg(sso.ca());
    let cli = Child::spawn("token-after-logout", cmd, sso.dir.path());
    let (url, _) = login_prompt(&cli);
    assert!(url.contains(BROWSER_PROMPT), "{url}");
}

/// `ssh user@host remote` as `user`, through `postern access ssh` with `--edge edge --ca ca`,
/// with `browser` as BROWSER.
fn ssh_via(sso: &Sso, user: &str, host: &str, edge: &str, ca: &Path, browser: &Path) -> Output {
    let proxy = format!(
        "{} access ssh --hostname %h --edge {edge} --ca {}",
        support::postern_bin().display(),
        ca.display()
    );
    let mut cmd = Command::new("ssh");
    cmd.args(sso.sshd.ssh_options())
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .arg(format!("{}@{host}", sso.sshd.user))
        .arg("echo pinned-ok")
        .env("HOME", sso.home(user))
        .env("RUST_LOG", "warn")
        .env("BROWSER", browser)
        .env_remove("POSTERN_SERVICE_TOKEN_ID")
        .env_remove("POSTERN_SERVICE_TOKEN_SECRET")
        .stdin(Stdio::null());
    support::run_with_deadline(&mut cmd, Duration::from_secs(120), "ssh through postern")
}

/// The zone session is pinned to the key of the edge that delivered it at the browser login.
/// A second edge serving the zone's names with another key, on a CA the client trusts too (a
/// taken-over CNAME, a SaaS host on a subdomain), never receives it: the handshake fails
/// before the request, the client says so and signs in with the browser instead. The edge of
/// the login still exchanges it, without a browser.
#[test]
fn the_zone_session_is_sent_only_to_an_edge_with_the_key_of_the_login() {
    let sso = Sso::start("zone-pin");
    let other_dir = sso.dir.join("other-edge");
    std::fs::create_dir_all(&other_dir).unwrap();
    // Zone `localhost` on its own CA and key, application `*.localhost`, no identity provider.
    let other = support::Edge::start_with_limits(&other_dir, serde_json::json!({}));
    let both = sso.dir.join("both-cas.pem");
    let pems = [sso.ca(), other.ca()].map(|p| std::fs::read_to_string(p).unwrap());
    std::fs::write(&both, pems.concat()).unwrap();

    // One browser login to ssh.localhost through the first edge, trusting both CAs.
    let (ok, stderr) = login_alice(&sso, "ssh.localhost", &sso.edge_addr, &both, "login-alice");
    assert!(ok, "alice's login failed: {stderr}");
    let session = zone_session(&sso, "alice");

    // Through the other edge (trusted, but another key) nothing is sent: not by `access curl`
    // (which no longer needs a named edge to use the zone session), not by `access ssh`.
    let refusing = sso.dir.join("no-browser.sh");
    std::fs::write(&refusing, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(
        &refusing,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut curl = postern(&sso.home("alice"));
    curl.args(["access", "curl", "--edge", &other.edge_arg(), "--ca"])
        .arg(&both)
        .arg("https://other.localhost/")
        .env("BROWSER", &refusing);
    let curled = support::run_with_deadline(&mut curl, Duration::from_secs(60), "access curl");
    let out = ssh_via(
        &sso,
        "alice",
        "short.localhost",
        &other.edge_arg(),
        &both,
        &refusing,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the other edge has no way in: {stderr}"
    );
    // The carrier's refusal is audited after any exchange either client would have tried.
    let audit = support::audit_when(
        &other.state.join("audit.log"),
        Duration::from_secs(10),
        "the other edge's refusal of the carrier",
        |a| {
            a.lines()
                .any(|l| l.contains("\"event\":\"access\"") && l.contains("short.localhost"))
        },
    );
    assert!(
        !audit.contains("\"exchange\""),
        "the zone session reached an edge with another key:\n{audit}"
    );
    assert!(
        !other.stderr_text().contains(&session),
        "the session in the other edge's log"
    );
    assert!(
        stderr.contains(&format!(
            "the edge at {} shows another key than the edge that signed you in to localhost; \
             not sending the zone session, signing in with the browser",
            other.edge_arg()
        )),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("shows another key").count(),
        1,
        "one line: {stderr}"
    );
    // The browser login it falls back to is the other edge's (which has none to offer).
    assert!(stderr.contains("no identity provider"), "{stderr}");
    let stderr = String::from_utf8_lossy(&curled.stderr);
    assert!(!curled.status.success(), "no token from there: {stderr}");
    assert!(
        stderr.contains("shows another key") && stderr.contains("no identity provider"),
        "access curl: {stderr}"
    );

    // The edge of the login still exchanges it: no browser.
    let out = ssh_via(
        &sso,
        "alice",
        "short.localhost",
        &sso.edge_addr,
        &both,
        &refusing,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ssh short.localhost: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pinned-ok");
    assert!(
        stderr.contains("from the zone session of localhost") && !stderr.contains(BROWSER_PROMPT),
        "{stderr}"
    );

    // The pin sits with the session, in the same 0600 file.
    let path = sso.home("alice").join(".postern/tokens/localhost.zone");
    assert_eq!(mode(&path), 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[1].starts_with("spki-sha256 ") && lines[1].len() == 12 + 64,
        "{text}"
    );
}

/// A BROWSER that opens nothing (a login it is asked for goes nowhere).
fn refusing_browser(dir: &Path) -> PathBuf {
    let script = dir.join("no-browser.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

/// A server for names of the zone with its own key, on a CA the client trusts (a name of the
/// zone taken over, a SaaS host on a subdomain), standing between the CLI and the edge: it
/// terminates TLS with its certificate and, while `forward` is set, opens TLS to the edge
/// (SNI = the name the client asked for) and copies the plaintext both ways, so a login
/// through it completes at the real edge. With `forward` off it answers every request itself
/// with a 401, as an attacker's server would to get a zone session posted to it. Every request
/// it reads (or the first bytes of each relayed connection) is kept in `received`.
struct Relay {
    addr: SocketAddr,
    ca: PathBuf,
    forward: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    fn start(dir: &Path, edge: &str, edge_ca: &Path, names: &[&str]) -> Relay {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let ca = dir.join("relay-ca.pem");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(edge_ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let (server, client) = (Arc::new(server), Arc::new(client));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            ca,
            forward: Arc::new(AtomicBool::new(true)),
            received: Arc::new(Mutex::new(Vec::new())),
        };
        let (forward, received, edge) = (
            relay.forward.clone(),
            relay.received.clone(),
            edge.to_owned(),
        );
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (server, client) = (server.clone(), client.clone());
                let (received, edge) = (received.clone(), edge.clone());
                let forward = forward.load(Ordering::SeqCst);
                std::thread::spawn(move || {
                    // A client that refuses our key ends the handshake: nothing to keep.
                    let _ = relay_one(tcp, &server, &client, &edge, forward, received);
                });
            }
        });
        relay
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

/// One connection to the [`Relay`].
fn relay_one(
    mut tcp: TcpStream,
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
    edge: &str,
    forward: bool,
    received: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut conn = rustls::ServerConnection::new(server.clone()).map_err(std::io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    if !forward {
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let request = read_request(&mut tls)?;
        received.lock().unwrap().push(request);
        let body = r#"{"error":"login required"}"#;
        let answer = format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(answer.as_bytes())?;
        tls.conn.send_close_notify();
        return tls.flush();
    }
    let name = conn.server_name().unwrap_or("localhost").to_owned();
    let mut up = TcpStream::connect(edge)?;
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut upconn = rustls::ClientConnection::new(
        client.clone(),
        ServerName::try_from(name).map_err(std::io::Error::other)?,
    )
    .map_err(std::io::Error::other)?;
    while upconn.is_handshaking() {
        upconn.complete_io(&mut up)?;
    }
    let down = Arc::new(TlsEnd::new(conn.into(), tcp)?);
    let up = Arc::new(TlsEnd::new(upconn.into(), up)?);
    // Copies `from`'s plaintext to `to` until `from` ends. With `record`, its first 4096 bytes
    // are kept as they arrive (not when the connection ends: a request is seen at once).
    let pump = |from: Arc<TlsEnd>, to: Arc<TlsEnd>, record: Option<Arc<Mutex<Vec<String>>>>| {
        std::thread::spawn(move || -> std::io::Result<()> {
            let (mut head, mut entry) = (Vec::new(), None);
            loop {
                let (data, eof) = from.read()?;
                if !data.is_empty() {
                    if let Some(r) = record.as_ref().filter(|_| head.len() < 4096) {
                        head.extend_from_slice(&data[..data.len().min(4096 - head.len())]);
                        let text = String::from_utf8_lossy(&head).into_owned();
                        let mut all = r.lock().unwrap();
                        match entry {
                            Some(i) => all[i] = text,
                            None => {
                                entry = Some(all.len());
                                all.push(text);
                            }
                        }
                    }
                    to.write(&data)?;
                }
                if eof {
                    to.close();
                    return Ok(());
                }
            }
        })
    };
    let to_edge = pump(down.clone(), up.clone(), Some(received));
    let to_client = pump(up, down, None);
    let _ = to_edge.join();
    let _ = to_client.join();
    Ok(())
}

/// One HTTP request (head and Content-Length body) read from `tls`, as text.
fn read_request(tls: &mut impl Read) -> std::io::Result<String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return Ok(String::from_utf8_lossy(&data).into_owned());
            }
        }
        let n = tls.read(&mut buf)?;
        if n == 0 || data.len() > 64 * 1024 {
            return Ok(String::from_utf8_lossy(&data).into_owned());
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// One side of a relayed TLS connection, shared by the two copying threads: each blocks on
/// its socket without the lock, and takes the lock only to feed or drain rustls.
struct TlsEnd {
    conn: Mutex<rustls::Connection>,
    sock: TcpStream,
    reader: Mutex<TcpStream>,
}

impl TlsEnd {
    fn new(conn: rustls::Connection, sock: TcpStream) -> std::io::Result<TlsEnd> {
        Ok(TlsEnd {
            conn: Mutex::new(conn),
            reader: Mutex::new(sock.try_clone()?),
            sock,
        })
    }

    /// The next plaintext from the peer, and whether the peer has finished.
    fn read(&self) -> std::io::Result<(Vec<u8>, bool)> {
        let mut reader = self.reader.lock().unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        let mut out = Vec::new();
        loop {
            {
                let mut conn = self.conn.lock().unwrap();
                let eof = drain(&mut conn, &mut out)?;
                if eof || !out.is_empty() {
                    return Ok((out, eof));
                }
            }
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok((out, true));
            }
            let mut conn = self.conn.lock().unwrap();
            let mut input = &buf[..n];
            while !input.is_empty() {
                conn.read_tls(&mut input)?;
                conn.process_new_packets().map_err(std::io::Error::other)?;
                if drain(&mut conn, &mut out)? {
                    break;
                }
            }
            self.flush(&mut conn)?;
        }
    }

    fn write(&self, data: &[u8]) -> std::io::Result<()> {
        let mut conn = self.conn.lock().unwrap();
        conn.writer().write_all(data)?;
        self.flush(&mut conn)
    }

    fn close(&self) {
        let mut conn = self.conn.lock().unwrap();
        conn.send_close_notify();
        let _ = self.flush(&mut conn);
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }

    fn flush(&self, conn: &mut rustls::Connection) -> std::io::Result<()> {
        while conn.wants_write() {
            conn.write_tls(&mut &self.sock)?;
        }
        Ok(())
    }
}

/// Moves the plaintext rustls holds into `out`; true once the peer has closed.
fn drain(conn: &mut rustls::Connection, out: &mut Vec<u8>) -> std::io::Result<bool> {
    match conn.reader().read_to_end(out) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(true),
        Err(e) => Err(e),
    }
}

/// The attack of a server that relays the login: it holds a certificate the client trusts for
/// names of the zone, and passes the CLI's login requests to the edge (the browser signs in
/// at the real edge, the user confirms a genuine code). The sealed answer comes back over the
/// relay's connection. Before, the CLI pinned the zone session to the key that connection
/// showed, the relay's, replacing the session pinned to the edge; the next command through the
/// relay (which then answered 401) posted the session to it. Now the session states the
/// edge's key, the CLI keeps it only from a connection showing that key: the relayed login
/// leaves the cached session alone, and the relay gets no session, then or later.
#[test]
fn a_login_relayed_by_another_server_of_the_zone_gives_it_no_zone_session() {
    let sso = Sso::start("zone-relay");
    let relay = Relay::start(
        sso.dir.path(),
        &sso.edge_addr,
        &sso.ca(),
        &["ssh.localhost", "short.localhost", "other.localhost"],
    );
    let both = sso.dir.join("edge-and-relay-cas.pem");
    let pems = [sso.ca(), relay.ca.clone()].map(|p| std::fs::read_to_string(p).unwrap());
    std::fs::write(&both, pems.concat()).unwrap();
    let zone_file = sso.home("alice").join(".postern/tokens/localhost.zone");
    let relay_arg = relay.addr.to_string();

    // A login through the edge itself: a session pinned to the edge's key.
    let (ok, stderr) = login_alice(&sso, "ssh.localhost", &sso.edge_addr, &both, "login-edge");
    assert!(ok, "alice's login at the edge failed: {stderr}");
    let good = std::fs::read_to_string(&zone_file).unwrap();
    let good_session = zone_session(&sso, "alice");

    // A login through the relay: the CLI's requests and the browser's pass through it to the
    // edge, which signs alice in and hands over an app token and a zone session.
    let (relayed_ok, relayed) =
        login_alice(&sso, "other.localhost", &relay_arg, &both, "login-relayed");
    let after_relayed_login = std::fs::read_to_string(&zone_file).unwrap_or_default();
    let logged_in_through_relay = relay
        .received()
        .iter()
        .any(|r| r.starts_with("POST /cdn-cgi/access/transfer"));

    // The relay now answers by itself, 401 to everything: does the session come to it?
    relay.forward.store(false, Ordering::SeqCst);
    let refusing = refusing_browser(sso.dir.path());
    let out = ssh_via(
        &sso,
        "alice",
        "short.localhost",
        &relay_arg,
        &both,
        &refusing,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let received = relay.received();
    assert!(
        !received
            .iter()
            .any(|r| r.contains("/cdn-cgi/access/exchange")
                || r.contains(r#""zone_session":""#)
                || r.contains(&good_session)),
        "a zone session reached the relay:\n{received:#?}\nssh: {stderr}"
    );
    assert!(!out.status.success(), "the relay has no way in: {stderr}");

    // The relayed login itself worked (its app token is alice's), went through the relay, and
    // said why its zone session was not kept; the edge's session stayed as it was.
    assert!(relayed_ok, "the relayed login: {relayed}");
    assert!(logged_in_through_relay, "{:#?}", relay.received());
    assert!(
        relayed.contains("the login answer came through a server with another key than the edge's")
            && relayed.contains("the zone session for localhost is not kept"),
        "{relayed}"
    );
    assert_eq!(
        after_relayed_login, good,
        "the relayed login replaced the session pinned to the edge"
    );
    assert_eq!(std::fs::read_to_string(&zone_file).unwrap(), good);
    assert!(
        stderr.contains(&format!(
            "the edge at {relay_arg} shows another key than the edge that signed you in to \
             localhost"
        )),
        "{stderr}"
    );

    // The edge still takes the session it pinned: no browser.
    let out = ssh_via(
        &sso,
        "alice",
        "short.localhost",
        &sso.edge_addr,
        &both,
        &refusing,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ssh short.localhost: {stderr}");
    assert!(
        stderr.contains("from the zone session of localhost") && !stderr.contains(BROWSER_PROMPT),
        "{stderr}"
    );
}
