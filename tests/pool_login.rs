//! CLI logins in an edge pool (issue 12): two `postern edge --dev` on one real etcd, one key
//! directory copied to both. The CLI's side (start, polls) goes to edge A, the browser's side
//! (the link, the dev sign-in, the confirmation) to edge B, request by request as
//! `tests/login_confirmation.rs` drives one edge.
//!
//! ```text
//!  CLI ── start, poll ──▶ edge A ──┐
//!                                  ├── etcd (the transfer, then its outcome)
//!  browser ── link, sign-in, ──▶ edge B ──┘
//!             confirm
//! ```
//!
//! And with etcd stopped: a login start fails with "the edge's state store is unreachable;
//! try again" (fast, after the first failure), `/ready` says degraded while it stays in
//! rotation, `postern_edge_store_up` is 0; when etcd is back, a login works again without a restart.

use crate::support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use support::etcd::Etcd;
use support::ready::try_ready;
use support::sso::{header_of, hidden_input, set_cookie, state_of, status_code, RawLogin};
use support::{temp_dir, try_http_get, wait_until, Edge, TempDir};

const EMAIL: &str = "alice@example.com";

struct Pool {
    a: Edge,
    b: Edge,
    etcd: Etcd,
    url: String,
    dir: TempDir,
}

impl Pool {
    fn start(name: &str) -> Pool {
        support::require_all();
        let dir = temp_dir(name);
        let etcd = Etcd::start(dir.path());
        let url = etcd.url("pool");
        let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
        fs::create_dir_all(&a_dir).unwrap();
        fs::create_dir_all(&b_dir).unwrap();
        let a = pooled_edge(&a_dir, &url);
        copy_keys(&a.state, &b_dir.join("edge-state"));
        let b = pooled_edge(&b_dir, &url);
        Pool {
            a,
            b,
            etcd,
            url,
            dir,
        }
    }

    /// `postern edge service-token create NAME --state etcd://…`: (client id, secret).
    fn token(&self, name: &str) -> (String, String) {
        let out = support::run_ok(
            support::postern(&self.dir.join("home"))
                .args(["edge", "service-token", "create", name, "--state"])
                .arg(&self.url),
            "service-token create --state etcd://…",
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        (
            v["client_id"].as_str().unwrap().to_owned(),
            v["client_secret"].as_str().unwrap().to_owned(),
        )
    }
}

/// A carrier request (WebSocket upgrade) for `ssh.localhost` at `edge` with a service token;
/// the response.
fn carrier_with(edge: &Edge, (id, secret): &(String, String)) -> String {
    support::sso::raw_get(
        &edge.addr.to_string(),
        &edge.ca(),
        "ssh.localhost",
        "/",
        &[
            ("cf-access-client-id", id.as_str()),
            ("cf-access-client-secret", secret.as_str()),
        ],
        true,
    )
}

fn pooled_edge(dir: &Path, url: &str) -> Edge {
    let keys = dir.join("edge-state");
    Edge::start_args(dir, &["--state", url, "--keys", keys.to_str().unwrap()])
}

/// The key directory (CAs, signing keys) as an operator copies it; not the audit log.
fn copy_keys(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "audit.log" || !entry.file_type().unwrap().is_file() {
            continue;
        }
        fs::copy(entry.path(), to.join(&name)).unwrap();
    }
}

/// A browser at `edge` with the login's link: the binding cookie, the login host's origin
/// and the dev sign-in's state, or the response that refused it.
#[derive(Debug)]
struct Browser {
    edge: String,
    public: String,
    origin: String,
    cookie: String,
    state: String,
}

fn open_link(login: &mut RawLogin, edge: &Edge) -> Result<Browser, String> {
    let cli_edge = std::mem::replace(&mut login.edge, edge.addr.to_string());
    let link = login.link();
    let first = login.browser_get(
        "ssh.localhost",
        &link[link.find("/cdn-cgi").unwrap()..],
        None,
    );
    assert_eq!(status_code(&first), 302, "{first}");
    let to = header_of(&first, "location").expect("Location").to_owned();
    let origin = to[..to.find("/cdn-cgi").unwrap()].to_owned();
    let public = "login.localhost".to_owned();
    let opened = login.browser_get(&public, &to[origin.len()..], None);
    login.edge = cli_edge;
    if status_code(&opened) != 302 {
        return Err(opened);
    }
    let cookie = set_cookie(&opened).expect("a binder cookie");
    let dev = header_of(&opened, "location").expect("to the dev sign-in");
    Ok(Browser {
        edge: edge.addr.to_string(),
        public,
        origin,
        cookie,
        state: state_of(dev).expect("state"),
    })
}

impl Browser {
    fn post(&self, login: &mut RawLogin, target: &str, form: &str) -> String {
        let cli_edge = std::mem::replace(&mut login.edge, self.edge.clone());
        let r = login.browser_post(
            &self.public,
            target,
            form,
            Some(&self.cookie),
            Some(&self.origin),
        );
        login.edge = cli_edge;
        r
    }

    /// The dev sign-in at this browser's edge (the code read from `edge`'s terminal, its
    /// `nth` one); the confirmation page.
    fn sign_in(&self, login: &mut RawLogin, edge: &Edge, nth: usize) -> String {
        let sent = self.post(
            login,
            "/cdn-cgi/access/dev-login",
            &format!("state={}&email={EMAIL}", self.state),
        );
        assert!(sent.contains("Enter your code"), "{sent}");
        let needle = format!("login code for {EMAIL}: ");
        let text = edge
            .child()
            .wait_for_stderr_count(&needle, nth, Duration::from_secs(10))
            .expect("the dev code on the edge's terminal");
        let code = text
            .rsplit(&needle)
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_owned();
        let page = self.post(
            login,
            "/cdn-cgi/access/dev-login",
            &format!("state={}&code={code}", self.state),
        );
        assert!(page.contains("Confirm this login"), "{page}");
        page
    }

    fn confirm(&self, login: &mut RawLogin, page: &str, code: &str) -> String {
        let secret = hidden_input(page, "secret").expect("the page secret");
        self.post(
            login,
            "/cdn-cgi/access/confirm",
            &format!(
                "state={}&secret={secret}&action=confirm&code={code}",
                self.state
            ),
        )
    }
}

/// The CLI's poll at `edge`.
fn poll_at(login: &mut RawLogin, edge: &Edge) -> (u16, String) {
    let cli_edge = std::mem::replace(&mut login.edge, edge.addr.to_string());
    let r = login.poll();
    login.edge = cli_edge;
    r
}

/// The `email` claim of an app token (a JWT: its payload, base64url JSON).
fn email_of(token: &[u8]) -> String {
    let token = std::str::from_utf8(token).unwrap();
    let payload = token.split('.').nth(1).expect("a JWT");
    let json = postern::proto::base64::decode_url(payload).expect("base64url payload");
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["email"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_login_started_at_edge_a_is_confirmed_in_a_browser_at_edge_b_and_its_token_reaches_the_cli_at_a(
) {
    let pool = Pool::start("pool-login");
    let mut login = RawLogin::new(&pool.a.addr.to_string(), &pool.a.ca(), "ssh.localhost");
    let started = login.start(false);
    assert_eq!(status_code(&started), 201, "{started}");
    assert_eq!(login.poll().0, 202, "pending at A");

    let browser = open_link(&mut login, &pool.b).expect("the link opens at B");
    let page = browser.sign_in(&mut login, &pool.b, 1);
    // B shows the CLI's address (from A's record) and asks for the code; it does not show it.
    assert!(page.contains("started from <b>127.0.0.1</b>"), "{page}");
    assert!(!page.contains(&login.code()), "{page}");
    assert_eq!(login.poll().0, 202, "signed in, not confirmed: nothing yet");

    // The browser's part lives where the link was opened: the same confirmation at A, with
    // the right cookie, secret and code, issues nothing (A does not know this sign-in).
    let at_a = Browser {
        edge: pool.a.addr.to_string(),
        public: browser.public.clone(),
        origin: browser.origin.clone(),
        cookie: browser.cookie.clone(),
        state: browser.state.clone(),
    };
    let code = login.code();
    let elsewhere = at_a.confirm(&mut login, &page, &code);
    assert_eq!(status_code(&elsewhere), 400, "{elsewhere}");
    assert_eq!(login.poll().0, 202);

    // The typed code is checked at B: a wrong one issues nothing.
    let wrong = browser.confirm(&mut login, &page, "BCDF-GHJK");
    assert_eq!(status_code(&wrong), 403, "{wrong}");
    assert_eq!(login.poll().0, 202);
    let done = browser.confirm(&mut login, &page, &code);
    assert_eq!(status_code(&done), 200, "{done}");
    assert!(done.contains("Signed in"), "{done}");

    // The CLI polling A gets the token sealed at B, once.
    let (status, sealed) = login.poll();
    assert_eq!(status, 200, "{sealed}");
    let again = login.poll().0;
    assert_ne!(again, 200, "handed over once");
    let token = login.open(&sealed);
    assert_eq!(email_of(&token), EMAIL);
    // The edge that signed it lets it in (a dev edge's issuer is its own login URL, port
    // included, so A, on another port, would not; a pool's edges share one `public_url`).
    let edge = &pool.b;
    let r = support::sso::raw_get(
        &edge.addr.to_string(),
        &edge.ca(),
        "ssh.localhost",
        "/",
        &[("cf-access-token", std::str::from_utf8(&token).unwrap())],
        true,
    );
    // No origin is registered: the token is accepted and the edge says so (not 401/403).
    let s = status_code(&r);
    assert!(s != 401 && s != 403, "{r}");
}

#[test]
fn a_login_polled_at_edge_b_gets_the_token_and_a_second_browser_at_the_other_edge_ends_a_login() {
    let pool = Pool::start("pool-login-twice");

    // Started at A, opened and confirmed at B, the CLI's poll lands on B.
    let mut login = RawLogin::new(&pool.a.addr.to_string(), &pool.a.ca(), "ssh.localhost");
    assert_eq!(status_code(&login.start(false)), 201);
    let browser = open_link(&mut login, &pool.b).expect("opens at B");
    let page = browser.sign_in(&mut login, &pool.b, 1);
    let code = login.code();
    let done = browser.confirm(&mut login, &page, &code);
    assert_eq!(status_code(&done), 200, "{done}");
    let (status, sealed) = poll_at(&mut login, &pool.b);
    assert_eq!(status, 200, "{sealed}");
    assert_eq!(
        poll_at(&mut login, &pool.a).0,
        202,
        "not twice, at either edge"
    );
    assert_eq!(email_of(&login.open(&sealed)), EMAIL);

    // A second login: its link opened at B, then again in another browser at A. The second
    // opening ends it: the CLI learns why, and the first browser's confirmation issues
    // nothing.
    let mut login = RawLogin::new(&pool.a.addr.to_string(), &pool.a.ca(), "ssh.localhost");
    assert_eq!(status_code(&login.start(false)), 201);
    let first = open_link(&mut login, &pool.b).expect("opens at B");
    let second = open_link(&mut login, &pool.a).expect_err("a second browser is refused");
    assert_eq!(status_code(&second), 409, "{second}");
    let (status, refused) = login.poll();
    assert_eq!(status, 403, "{refused}");
    assert!(refused.contains("two browsers"), "{refused}");
    let page = first.sign_in(&mut login, &pool.b, 2);
    let code = login.code();
    let late = first.confirm(&mut login, &page, &code);
    assert_eq!(status_code(&late), 409, "{late}");
    assert!(late.contains("nothing was issued"), "{late}");
    assert_ne!(login.poll().0, 200);
}

/// `postern_edge_store_up` in `/metrics` at `edge`.
fn store_up(edge: &Edge) -> Option<u64> {
    let (_, body) = try_http_get(&edge.metrics, "/metrics").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("postern_edge_store_up "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn with_etcd_down_logins_fail_fast_saying_so_ready_says_degraded_and_all_recovers_without_restart()
{
    let mut pool = Pool::start("pool-login-degraded");
    let known = pool.token("known");
    // The edge learns the token (a lookup); no origin is registered, so it gets as far as
    // the route: 404 "not registered", past the token check.
    let r = carrier_with(&pool.a, &known);
    assert!(r.contains("not registered by any tunnel"), "{r}");
    let unknown = (
        format!("{}x", known.0),
        "not-a-secret-of-any-token".to_owned(),
    );
    assert_eq!(store_up(&pool.a), Some(1));
    let (_, ready) = try_ready(&pool.a.metrics).expect("/ready");
    assert_eq!(ready["store"], "up", "{ready}");
    assert_eq!(ready["degraded"], false, "{ready}");

    pool.etcd.stop();
    let login = RawLogin::new(&pool.a.addr.to_string(), &pool.a.ca(), "ssh.localhost");
    let refused = login.start(false);
    assert_eq!(status_code(&refused), 503, "{refused}");
    assert!(
        refused.contains("the edge's state store is unreachable; try again"),
        "{refused}"
    );
    // Known down: the next ones fail at once, not after the store's timeouts.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let login = RawLogin::new(&pool.a.addr.to_string(), &pool.a.ca(), "ssh.localhost");
        let t = Instant::now();
        let r = login.start(false);
        slowest = slowest.max(t.elapsed());
        assert_eq!(status_code(&r), 503, "{r}");
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a login start took {slowest:?} with the store known down"
    );
    // The metric says the store is down (the loop sets it within its one-second tick), and
    // /ready says degraded, with whatever status the tunnels make it (none here: 503, as
    // before the outage; an edge with registered tunnels stays 200, in rotation).
    wait_until(
        Duration::from_secs(5),
        "postern_edge_store_up 0 at A",
        || store_up(&pool.a) == Some(0),
    );
    let (status, ready) = try_ready(&pool.a.metrics).expect("/ready");
    assert_eq!(ready["store"], "unreachable", "{ready}");
    assert_eq!(ready["degraded"], true, "{ready}");
    assert_eq!(u64::from(status), ready["status"].as_u64().unwrap());
    assert_eq!(ready["readyConnections"], 0, "{ready}");
    // A token the edge knows goes on; one it does not know cannot be looked up: 503 saying
    // why (it may be a new token), not "unknown token", and at once.
    let r = carrier_with(&pool.a, &known);
    assert!(r.contains("not registered by any tunnel"), "{r}");
    let t = Instant::now();
    let r = carrier_with(&pool.a, &unknown);
    assert_eq!(status_code(&r), 503, "{r}");
    assert!(
        r.contains("the edge's state store is unreachable; try again"),
        "{r}"
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    pool.etcd.restart();
    wait_until(
        Duration::from_secs(10),
        "postern_edge_store_up 1 at A again",
        || store_up(&pool.a) == Some(1),
    );
    let (_, ready) = try_ready(&pool.a.metrics).expect("/ready");
    assert_eq!(ready["degraded"], false, "{ready}");
    // A login across the pool works again, without a restart.
    let mut login = RawLogin::new(&pool.a.addr.to_string(), &pool.a.ca(), "ssh.localhost");
    let started = login.start(false);
    assert_eq!(status_code(&started), 201, "{started}");
    let browser = open_link(&mut login, &pool.b).expect("opens at B");
    let page = browser.sign_in(&mut login, &pool.b, 1);
    let code = login.code();
    assert_eq!(status_code(&browser.confirm(&mut login, &page, &code)), 200);
    let (status, sealed) = login.poll();
    assert_eq!(status, 200, "{sealed}");
    assert_eq!(email_of(&login.open(&sealed)), EMAIL);
}
