//! Browser login from the command line (DESIGN.md §3 Tokens, "CLI login").
//!
//! ```text
//!  Opener::new() (transfer id + one-use X25519 key)
//!    │
//!    ├─ GET /cdn-cgi/access/transfer?id=ID   one poll first: the edge is reachable and trusted
//!    ├─ print the URL on stderr (always), try to open a browser (never fails)
//!    │      https://H[:PORT]/cdn-cgi/access/cli?id=ID&key=PUB&app=H | &purpose=tunnel
//!    └─ poll /cdn-cgi/access/transfer?id=ID every second, up to TRANSFER_TTL:
//!         202 pending ─────────────▶ poll again (the browser opened the link)
//!         404 before any 202 ──────▶ poll again (the browser has not opened it yet)
//!         404 after a 202 ─────────▶ fail with the edge's reason (expired, taken)
//!         200 {"epk","ct"} ────────▶ open with our key: the token (or cert.pem text)
//! ```
//!
//! The edge creates the transfer slot when the browser opens the link, so until then it
//! cannot tell our id from an expired one: a 404 only ends the login once we have seen the
//! slot exist. Nothing here holds a token in a log line; the URL carries only the transfer id
//! and our public key, which are useless without the private key.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;
use rustls::ClientConfig;

use super::{client_config, err, https_get, json_error, AccessError, AccessOptions};
use crate::token_transfer::{Opener, Sealed, TRANSFER_TTL};

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
/// `id` and `key` are base64url, so they need no escaping; `hostname` is a DNS name.
pub fn login_url(hostname: &str, edge: &str, id: &str, key: &str, purpose: Purpose) -> String {
    let authority = match edge_port(edge) {
        Some(port) if port != 443 => format!("{hostname}:{port}"),
        _ => hostname.to_owned(),
    };
    let what = match purpose {
        Purpose::App => format!("app={hostname}"),
        Purpose::Tunnel => "purpose=tunnel".to_owned(),
    };
    format!("https://{authority}/cdn-cgi/access/cli?id={id}&key={key}&{what}")
}

/// Logs in through the browser and returns what the edge handed over: for
/// [`Purpose::App`] an app token for `opts.hostname` (a compact JWT, not yet checked), for
/// [`Purpose::Tunnel`] the text of an origin credential (`cert.pem`).
///
/// Connects to `opts.edge` with SNI and Host `opts.hostname`, trusting `opts.extra_ca` too;
/// `opts.credentials` is not used. Prints the URL on stderr (ssh shows a ProxyCommand's
/// stderr, and a headless machine's user copies it to a browser elsewhere), tries to open a
/// browser, then polls for up to [`TRANSFER_TTL`]. Blocks the calling thread throughout.
/// Takes no lock and writes no file: callers cache or store the result.
pub fn login(opts: &AccessOptions, purpose: Purpose) -> Result<Vec<u8>, AccessError> {
    let cfg = client_config(opts.extra_ca.as_deref())?;
    let opener = Opener::new();
    let poll_path = format!("/cdn-cgi/access/transfer?id={}", opener.id);
    let start = Instant::now();
    let mut transfer = Transfer::new();

    // One poll before bothering the user: an unreachable or untrusted edge fails here,
    // with its cause and fix, and no browser window.
    if let Step::Done(sealed) = transfer.on_answer(poll(opts, &cfg, &poll_path)?)? {
        return open(opener, &sealed);
    }
    let url = login_url(
        &opts.hostname,
        &opts.edge,
        &opener.id,
        &opener.public,
        purpose,
    );
    eprintln!("Please open the following URL and log in with your identity provider:\n\n  {url}\n");
    open_browser(&url);

    loop {
        if start.elapsed() + POLL_INTERVAL > TRANSFER_TTL {
            return Err(err(
                "login timed out: nobody completed the login in the browser",
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
        let step = match poll(opts, &cfg, &poll_path) {
            Ok(answer) => transfer.on_answer(answer)?,
            Err(e) => transfer.on_failure(e)?,
        };
        if let Step::Done(sealed) = step {
            return open(opener, &sealed);
        }
    }
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
        .map_err(|e| err(format!("the login could not be completed: {e}")))
}

/// What to do after one poll.
enum Step {
    Wait,
    Done(Sealed),
}

/// The poll loop's decisions, apart from the IO (so they can be tested without an edge).
struct Transfer {
    /// The edge has answered 202 at least once: the browser opened the link.
    seen_pending: bool,
    failures: u32,
}

impl Transfer {
    fn new() -> Transfer {
        Transfer {
            seen_pending: false,
            failures: 0,
        }
    }

    fn on_answer(&mut self, (status, body): (u16, Vec<u8>)) -> Result<Step, AccessError> {
        match status {
            200 => {
                self.failures = 0;
                let sealed: Sealed = serde_json::from_slice(&body).map_err(|e| {
                    err(format!(
                        "the edge's transfer answer is not a sealed token: {e}"
                    ))
                })?;
                Ok(Step::Done(sealed))
            }
            202 => {
                self.failures = 0;
                self.seen_pending = true;
                Ok(Step::Wait)
            }
            404 if !self.seen_pending => {
                self.failures = 0;
                Ok(Step::Wait)
            }
            404 => Err(err(format!(
                "login failed: {}",
                json_error(&body)
                    .unwrap_or_else(|| "unknown or expired login: start the login again".into())
            ))),
            500..=599 | 429 => self.on_failure(err(format!(
                "the edge answered HTTP {status}{}",
                json_error(&body).map_or_else(String::new, |e| format!(": {e}"))
            ))),
            _ => Err(err(format!(
                "the edge refused the login (HTTP {status}){}",
                json_error(&body).map_or_else(String::new, |e| format!(": {e}"))
            ))),
        }
    }

    /// A poll that failed in a way that may pass (network, edge restart).
    fn on_failure(&mut self, e: AccessError) -> Result<Step, AccessError> {
        self.failures += 1;
        if self.failures >= MAX_POLL_FAILURES {
            return Err(err(format!(
                "login failed: {MAX_POLL_FAILURES} polls of the edge in a row failed, the last with: {e}"
            )));
        }
        debug!("polling the edge failed ({e}); trying again");
        Ok(Step::Wait)
    }
}

/// Tries to show `url` in a browser: `$BROWSER` if set (run by `sh`, so it may carry
/// arguments), else the desktop's opener. Never fails: the URL is on stderr anyway.
fn open_browser(url: &str) {
    use std::os::unix::process::CommandExt;
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
    cmd.stdin(Stdio::null())
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
    const KEY: &str = "S2V5S2V5S2V5S2V5S2V5S2V5S2V5S2V5S2V5S2V5S2U";

    #[test]
    fn login_url_names_the_port_only_when_it_is_not_443() {
        assert_eq!(
            login_url("ssh.localhost", "127.0.0.1:8443", ID, KEY, Purpose::App),
            format!(
                "https://ssh.localhost:8443/cdn-cgi/access/cli?id={ID}&key={KEY}&app=ssh.localhost"
            )
        );
        assert_eq!(
            login_url(
                "ssh.example.com",
                "ssh.example.com:443",
                ID,
                KEY,
                Purpose::App
            ),
            format!(
                "https://ssh.example.com/cdn-cgi/access/cli?id={ID}&key={KEY}&app=ssh.example.com"
            )
        );
        assert_eq!(
            login_url("example.com", "[::1]:443", ID, KEY, Purpose::Tunnel),
            format!("https://example.com/cdn-cgi/access/cli?id={ID}&key={KEY}&purpose=tunnel")
        );
        assert_eq!(
            login_url("example.com", "[::1]:9443", ID, KEY, Purpose::Tunnel),
            format!("https://example.com:9443/cdn-cgi/access/cli?id={ID}&key={KEY}&purpose=tunnel")
        );
        // No parsable port: assume the default.
        assert_eq!(
            login_url("a.localhost", "a.localhost", ID, KEY, Purpose::App),
            format!("https://a.localhost/cdn-cgi/access/cli?id={ID}&key={KEY}&app=a.localhost")
        );
    }

    #[test]
    fn login_url_carries_the_openers_id_and_key_unescaped() {
        let o = Opener::new();
        let url = login_url(
            "a.localhost",
            "a.localhost:443",
            &o.id,
            &o.public,
            Purpose::App,
        );
        assert!(url.contains(&format!("id={}&key={}&", o.id, o.public)));
        assert!(url
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/?=&".contains(&b)));
    }

    fn json(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn a_404_waits_until_the_slot_was_seen_then_fails_with_the_edges_reason() {
        let mut t = Transfer::new();
        let gone = json(serde_json::json!({"error": "unknown or expired login"}));
        assert!(matches!(t.on_answer((404, gone.clone())), Ok(Step::Wait)));
        assert!(matches!(t.on_answer((202, Vec::new())), Ok(Step::Wait)));
        let e = t
            .on_answer((404, gone))
            .err()
            .expect("404 after 202 ends it");
        assert!(e.to_string().contains("unknown or expired login"), "{e}");
    }

    #[test]
    fn a_sealed_answer_opens_with_the_openers_key() {
        let o = Opener::new();
        let sealed = crate::token_transfer::seal(&o.public, &o.id, b"a.b.c").unwrap();
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
            .on_failure(err("connection reset"))
            .err()
            .expect("too many failures");
        assert!(e.to_string().contains("connection reset"), "{e}");
        // A success in between resets the count.
        let mut t = Transfer::new();
        for _ in 0..3 * MAX_POLL_FAILURES {
            assert!(matches!(t.on_failure(err("x")), Ok(Step::Wait)));
            assert!(matches!(t.on_answer((202, Vec::new())), Ok(Step::Wait)));
        }
        // Other statuses end the login at once.
        let mut t = Transfer::new();
        let body = json(serde_json::json!({"error": "bad transfer id"}));
        let e = t.on_answer((400, body)).err().expect("400 ends it");
        assert!(e.to_string().contains("bad transfer id"), "{e}");
    }
}
