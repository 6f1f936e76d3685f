//! Browser login from the command line (DESIGN.md §3 Tokens, "CLI login"; docs/design.md
//! §3.6, "Sign-in").
//!
//! ```text
//!  Opener::new() (transfer id + one-use X25519 key); code = confirmation_code(id, key)
//!    │
//!    ├─ POST /cdn-cgi/access/transfer {id, key, app|purpose}
//!    │      201 {code} ─────────────▶ the edge holds a slot for our key (and is reachable, trusted)
//!    │      4xx/5xx ────────────────▶ fail with the edge's reason (busy, unknown application…)
//!    ├─ print the URL and the code on stderr (always), try to open a browser (never fails)
//!    │      https://H[:PORT]/cdn-cgi/access/cli?id=ID
//!    └─ poll /cdn-cgi/access/transfer?id=ID every second, up to TRANSFER_TTL:
//!         202 pending ─────────────▶ poll again (each poll keeps the slot alive)
//!         403 {error} ─────────────▶ fail with the edge's reason (denied, cancelled)
//!         404 ─────────────────────▶ fail: expired or taken
//!         200 {"epk","ct"} ────────▶ open with our key: the token (or cert.pem text)
//! ```
//!
//! The browser shows a confirmation page with the same code and this machine's address; the
//! person confirms there. Nothing here holds a token in a log line; the URL carries only the
//! transfer id, which is useless without the private key (and opens in one browser only).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;
use rustls::ClientConfig;

use super::edge_key::{self, EdgeKey};
use super::{https_get, https_request, json_error, AccessError, AccessOptions};
use crate::logging::escape;
use crate::proto::token_transfer::{confirmation_code, Opener, Sealed, TRANSFER_TTL};

/// Pause between two polls of the transfer endpoint.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Consecutive failed polls (network, TLS, 5xx) after which the login gives up.
const MAX_POLL_FAILURES: u32 = 5;

/// What the login is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// An app token (a compact JWT) for `opts.hostname`.
    App,
    /// An origin credential (`cert.pem` text) for `tunnel login`.
    Tunnel,
}

/// The port of an `--edge` address (`host:port`, `[v6]:port`), if it has one.
fn edge_port(edge: &str) -> Option<u16> {
    edge.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// The browser login URL. The port appears only when the edge listens elsewhere than 443
/// (`--edge 127.0.0.1:8443` with `ssh.localhost` gives `https://ssh.localhost:8443/…`).
/// `id` is base64url, so it needs no escaping; `hostname` is a DNS name.
pub fn login_url(hostname: &str, edge: &str, id: &str) -> String {
    let authority = match edge_port(edge) {
        Some(port) if port != 443 => format!("{hostname}:{port}"),
        _ => hostname.to_owned(),
    };
    format!("https://{authority}/cdn-cgi/access/cli?id={id}")
}

/// Logs in through the browser and returns what the edge handed over: for
/// [`Purpose::App`] an app token for `opts.hostname` (a compact JWT, not yet checked), for
/// [`Purpose::Tunnel`] the text of an origin credential (`cert.pem`).
///
/// Connects to `opts.edge` with SNI and Host `opts.hostname`, trusting `opts.extra_ca` too;
/// `opts.credentials` is not used. Starts the login at the edge, prints the URL and the
/// confirmation code on stderr (ssh shows a ProxyCommand's stderr, and a headless machine's
/// user copies the URL to a browser elsewhere), tries to open a browser, then polls for up to
/// [`TRANSFER_TTL`]. Blocks the calling thread throughout. Takes no lock and writes no file:
/// callers cache or store the result.
pub fn login(opts: &AccessOptions, purpose: Purpose) -> Result<Vec<u8>, AccessError> {
    login_from_edge(opts, purpose).map(|(plain, _)| plain)
}

/// [`login`], and the key of the server that handed the answer over: the leaf certificate of
/// the poll's connection that brought it (`None` only if that certificate does not parse). A
/// zone session in the answer is kept only if that key is the one the session states
/// (`authorize::login_payload`): a server that relays the login shows its own.
pub(crate) fn login_from_edge(
    opts: &AccessOptions,
    purpose: Purpose,
) -> Result<(Vec<u8>, Option<EdgeKey>), AccessError> {
    // The client's usual TLS config (roots, `--ca`), recording each connection's leaf.
    let seen = edge_key::seen();
    let cfg = edge_key::recording_config(
        opts.extra_ca.as_deref(),
        seen.clone(),
        edge_key::Record::Verified,
        None,
    )?;
    let opener = Opener::new();
    let code = confirmation_code(&opener.id, &opener.public);
    let poll_path = format!("/cdn-cgi/access/transfer?id={}", opener.id);
    let start = Instant::now();
    let mut transfer = Transfer::new();

    // Start before bothering the user: an unreachable or untrusted edge, or one that will
    // not take another login, fails here with its cause and no browser window.
    let body = match purpose {
        // A zone session too (one login per zone): older edges ignore the field.
        Purpose::App => serde_json::json!({
            "id": opener.id, "key": opener.public, "app": opts.hostname, "zone_session": true,
        }),
        Purpose::Tunnel => serde_json::json!({
            "id": opener.id, "key": opener.public, "purpose": "tunnel",
        }),
    };
    let answer = https_request(
        opts,
        &cfg,
        "POST",
        "/cdn-cgi/access/transfer",
        Some(body.to_string().as_bytes()),
    )?;
    started(answer, &code)?;
    let url = login_url(&opts.hostname, &opts.edge, &opener.id);
    eprintln!(
        "Please open the following URL and log in with your identity provider:\n\n  {url}\n\n\
         To confirm the login, the page will ask for this code: {code}\n"
    );
    open_browser(&url, &code);

    loop {
        if start.elapsed() + POLL_INTERVAL > TRANSFER_TTL {
            return Err(AccessError::LoginTimedOut);
        }
        std::thread::sleep(POLL_INTERVAL);
        if let Ok(mut leaf) = seen.lock() {
            *leaf = None;
        }
        let step = match poll(opts, &cfg, &poll_path) {
            Ok(answer) => transfer.on_answer(answer)?,
            Err(e) => transfer.on_failure(e)?,
        };
        if let Step::Done(sealed) = step {
            // This poll's connection (one per request, never resumed) delivered it.
            let key = edge_key::seen_key(&seen);
            return open(opener, &sealed).map(|plain| (plain, key));
        }
    }
}

/// The edge's answer to the login start: 201 with the same code we computed.
fn started((status, body): (u16, Vec<u8>), code: &str) -> Result<(), AccessError> {
    if status != 201 {
        let why = edge_error(&body).map_or_else(String::new, |e| format!(": {e}"));
        // An edge from before browser logins answers the transfer endpoint as it answers any
        // path: as a carrier that wants a WebSocket upgrade. Its words are the only sign.
        let older_edge = status == 400 && why.contains("carries SSH over WebSocket");
        return Err(AccessError::LoginNotStarted {
            status,
            why,
            older_edge,
        });
    }
    let theirs = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned));
    if theirs.as_deref() != Some(code) {
        return Err(AccessError::BadAnswer(
            "the edge answered the login start with another confirmation code: it does not \
             speak this postern's login protocol"
                .into(),
        ));
    }
    Ok(())
}

fn poll(
    opts: &AccessOptions,
    cfg: &Arc<ClientConfig>,
    path: &str,
) -> Result<(u16, Vec<u8>), AccessError> {
    https_get(opts, cfg, path)
}

fn open(opener: Opener, sealed: &Sealed) -> Result<Vec<u8>, AccessError> {
    opener
        .open(sealed)
        .map_err(|e| AccessError::Login(format!("the login could not be completed: {e}")))
}

/// What to do after one poll.
enum Step {
    Wait,
    Done(Sealed),
}

/// The poll loop's decisions, apart from the IO (so they can be tested without an edge).
struct Transfer {
    failures: u32,
}

impl Transfer {
    fn new() -> Transfer {
        Transfer { failures: 0 }
    }

    fn on_answer(&mut self, (status, body): (u16, Vec<u8>)) -> Result<Step, AccessError> {
        match status {
            200 => {
                self.failures = 0;
                let sealed: Sealed = serde_json::from_slice(&body).map_err(|e| {
                    AccessError::BadAnswer(format!(
                        "the edge's transfer answer is not a sealed token: {e}"
                    ))
                })?;
                Ok(Step::Done(sealed))
            }
            202 => {
                self.failures = 0;
                Ok(Step::Wait)
            }
            // The slot exists from the start: gone means expired, abandoned or taken.
            404 => Err(AccessError::Login(format!(
                "login failed: {}",
                edge_error(&body)
                    .unwrap_or_else(|| "unknown or expired login: start the login again".into())
            ))),
            500..=599 | 429 => self.on_failure(AccessError::BadAnswer(format!(
                "the edge answered HTTP {status}{}",
                edge_error(&body).map_or_else(String::new, |e| format!(": {e}"))
            ))),
            _ => Err(AccessError::Login(format!(
                "the edge refused the login (HTTP {status}){}",
                edge_error(&body).map_or_else(String::new, |e| format!(": {e}"))
            ))),
        }
    }

    /// A poll that failed in a way that may pass (network, edge restart).
    fn on_failure(&mut self, e: AccessError) -> Result<Step, AccessError> {
        self.failures += 1;
        if self.failures >= MAX_POLL_FAILURES {
            return Err(AccessError::Login(format!(
                "login failed: {MAX_POLL_FAILURES} polls of the edge in a row failed, the last with: {e}"
            )));
        }
        debug!("polling the edge failed ({e}); trying again");
        Ok(Step::Wait)
    }
}

/// The edge's `error` text, escaped for the terminal.
fn edge_error(body: &[u8]) -> Option<String> {
    json_error(body).map(|e| escape(&e, 512))
}

/// `--no-browser`: logins print their URL only (a headless machine, or a user who opens the
/// URL in a browser elsewhere). Set once from the command line, before any login.
static NO_BROWSER: AtomicBool = AtomicBool::new(false);

/// From now on, logins never start a browser; they print the URL (and code) only.
pub fn set_no_browser() {
    NO_BROWSER.store(true, Ordering::Relaxed);
}

/// Tries to show `url` in a browser (unless [`set_no_browser`] was called): `$BROWSER` if set (run by `sh`, so it may carry
/// arguments), else the desktop's opener. Never fails: the URL is on stderr anyway. The
/// browser command finds the confirmation code in `POSTERN_LOGIN_CODE` (not a secret: it is
/// printed and shown, and only comparing it matters), for wrappers that automate the page.
fn open_browser(url: &str, code: &str) {
    use std::os::unix::process::CommandExt;
    if NO_BROWSER.load(Ordering::Relaxed) {
        return;
    }
    let mut cmd = match std::env::var_os("BROWSER").filter(|b| !b.is_empty()) {
        Some(_) => {
            // The URL goes in as $0, never into the script text: no quoting issues.
            let mut c = Command::new("sh");
            c.arg("-c").arg("$BROWSER \"$0\"").arg(url);
            c
        }
        None => {
            let mut c = Command::new(if cfg!(target_os = "macos") {
                "open"
            } else {
                "xdg-open"
            });
            c.arg(url);
            c
        }
    };
    cmd.env("POSTERN_LOGIN_CODE", code)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C meant for ssh does not reach the browser.
        .process_group(0);
    match cmd.spawn() {
        // Reap it whenever it exits, without waiting for it here.
        Ok(mut child) => {
            let _ = std::thread::Builder::new()
                .name("browser".into())
                .spawn(move || child.wait());
        }
        Err(e) => debug!("could not start a browser: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn login_url_names_the_port_only_when_it_is_not_443() {
        assert_eq!(
            login_url("ssh.localhost", "127.0.0.1:8443", ID),
            format!("https://ssh.localhost:8443/cdn-cgi/access/cli?id={ID}")
        );
        assert_eq!(
            login_url("ssh.example.com", "ssh.example.com:443", ID),
            format!("https://ssh.example.com/cdn-cgi/access/cli?id={ID}")
        );
        assert_eq!(
            login_url("example.com", "[::1]:9443", ID),
            format!("https://example.com:9443/cdn-cgi/access/cli?id={ID}")
        );
        // No parsable port: assume the default.
        assert_eq!(
            login_url("a.localhost", "a.localhost", ID),
            format!("https://a.localhost/cdn-cgi/access/cli?id={ID}")
        );
    }

    #[test]
    fn login_url_carries_the_id_but_never_the_key() {
        let o = Opener::new();
        let url = login_url("a.localhost", "a.localhost:443", &o.id);
        assert!(url.ends_with(&format!("?id={}", o.id)));
        assert!(!url.contains(&o.public));
        assert!(url
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/?=&".contains(&b)));
    }

    fn json(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn a_404_ends_the_login_with_the_edges_reason_escaped() {
        let mut t = Transfer::new();
        assert!(matches!(t.on_answer((202, Vec::new())), Ok(Step::Wait)));
        let gone = json(serde_json::json!({"error": "unknown or expired login\u{1b}[2J"}));
        let e = t.on_answer((404, gone)).err().expect("404 ends it");
        let e = e.to_string();
        assert!(e.contains("unknown or expired login"), "{e}");
        assert!(
            !e.contains('\u{1b}'),
            "peer text reaches the terminal escaped: {e:?}"
        );
    }

    #[test]
    fn the_login_start_must_answer_201_with_our_code() {
        let o = Opener::new();
        let code = confirmation_code(&o.id, &o.public);
        let ok = json(serde_json::json!({"status": "pending", "code": code}));
        assert!(started((201, ok), &code).is_ok());
        let other = json(serde_json::json!({"status": "pending", "code": "BBBB-BBBB"}));
        assert!(started((201, other), &code).is_err());
        let busy =
            json(serde_json::json!({"error": "too many logins in progress from your address"}));
        let e = started((429, busy), &code).err().unwrap().to_string();
        assert!(
            e.contains("HTTP 429") && e.contains("from your address"),
            "{e}"
        );
        let old = json(serde_json::json!({"error": "this endpoint carries SSH over WebSocket"}));
        let e = started((400, old), &code).err().unwrap().to_string();
        assert!(e.contains("older postern"), "{e}");
    }

    #[test]
    fn a_sealed_answer_opens_with_the_openers_key() {
        let o = Opener::new();
        let sealed = crate::proto::token_transfer::seal(&o.public, &o.id, b"a.b.c").unwrap();
        let mut t = Transfer::new();
        let Ok(Step::Done(s)) = t.on_answer((200, serde_json::to_vec(&sealed).unwrap())) else {
            panic!("200 with a sealed body is done");
        };
        assert_eq!(open(o, &s).unwrap(), b"a.b.c");
        let mut t = Transfer::new();
        assert!(t.on_answer((200, b"<html>".to_vec())).is_err());
    }

    #[test]
    fn transient_failures_are_retried_a_few_times_then_reported() {
        let mut t = Transfer::new();
        for _ in 1..MAX_POLL_FAILURES {
            assert!(matches!(t.on_answer((503, Vec::new())), Ok(Step::Wait)));
        }
        let e = t
            .on_failure(AccessError::BadAnswer("connection reset".into()))
            .err()
            .expect("too many failures");
        assert!(e.to_string().contains("connection reset"), "{e}");
        // A success in between resets the count.
        let mut t = Transfer::new();
        for _ in 0..3 * MAX_POLL_FAILURES {
            assert!(matches!(
                t.on_failure(AccessError::BadAnswer("x".into())),
                Ok(Step::Wait)
            ));
            assert!(matches!(t.on_answer((202, Vec::new())), Ok(Step::Wait)));
        }
        // Other statuses end the login at once.
        let mut t = Transfer::new();
        let body = json(serde_json::json!({"error": "bad transfer id"}));
        let e = t.on_answer((400, body)).err().expect("400 ends it");
        assert!(e.to_string().contains("bad transfer id"), "{e}");
    }
}
