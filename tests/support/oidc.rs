//! Real OpenID Connect parts for the SSO end-to-end tests: a real provider (`oidc-provider` 9 on
//! Node, `tests/js/provider.mjs`) and a real browser (Debian's Chromium driven by
//! `playwright-core`, `tests/js/login.mjs`).
//!
//! ```text
//! browser_login ── node login.mjs ── chromium ──▶ edge ──302──▶ Provider /auth
//!                                        ◀── login form, consent ──┘
//!                                        ──303──▶ edge redirect_uri?code&state&iss ──▶ page text
//! ```
//!
//! The provider's issuer is exactly `http://127.0.0.1:PORT`; it has one confidential client
//! (registered `client_secret_basic` unless [`ProviderOptions::auth_method`] says otherwise, the
//! library taking the secret in a Basic header or the form body either way; PKCE S256 required;
//! authorization_code only) and the accounts given to [`Provider::start`]. The
//! devInteractions login form accepts any password; the login name is the account id. A login
//! name that is not an account comes back to the redirect URI as `error=access_denied` with the
//! state and no code. ID tokens carry `email`, `email_verified` and `groups` for the scopes
//! `email` and `groups`.
//!
//! Secrets reach the provider through its environment, never argv. These tests never skip:
//! [`require_node_parts`] panics naming what to install (`scripts/test` installs all of it).

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::{find_binary, free_port, run_with_deadline, Child, POLL, STARTUP};

/// The browser login.mjs drives (Debian's `chromium` package).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// How long login.mjs itself waits for its text before it gives up with a screenshot.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The outer bound on one `node login.mjs` run (its own timeout plus browser start and close).
pub const LOGIN_DEADLINE: Duration = Duration::from_secs(90);
/// The password typed into the devInteractions form (it accepts any).
pub const TEST_PASSWORD: &str = "postern-test-password";
/// The text login.mjs waits for unless told otherwise.
pub const DEFAULT_EXPECT: &str = "You can close this window";

/// `tests/js` in this checkout (independent of the test's working directory).
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// Panics with an install hint unless `node`, `tests/js/node_modules` (with `oidc-provider` and
/// `playwright-core`) and `/usr/bin/chromium` are all there. End-to-end tests do not skip.
pub fn require_node_parts() {
    let mut missing = String::new();
    if find_binary("node").is_none() {
        missing
            .push_str("\n  - `node` is not on PATH: `apt-get install -y nodejs npm` (Node >= 20)");
    }
    let modules = js_dir().join("node_modules");
    for package in ["oidc-provider", "playwright-core"] {
        if !modules.join(package).join("package.json").is_file() {
            let _ = write!(
                missing,
                "\n  - {} is missing: run `npm ci --no-audit --no-fund` in {}",
                modules.join(package).display(),
                js_dir().display()
            );
        }
    }
    if !Path::new(CHROMIUM).is_file() {
        let _ = write!(
            missing,
            "\n  - {CHROMIUM} is missing: `apt-get install -y --no-install-recommends chromium` \
             (never `npx playwright install`)"
        );
    }
    if !missing.is_empty() {
        panic!(
            "the SSO end-to-end tests need a real OpenID Connect provider and browser; \
             missing:{missing}\nscripts/test installs all of these; end-to-end tests do not skip"
        );
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
}

impl AuthMethod {
    fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
        }
    }
}

/// Knobs beyond [`Provider::start`]'s defaults.
#[derive(Clone, Debug)]
pub struct ProviderOptions {
    /// The client's registered `token_endpoint_auth_method`. oidc-provider 9 accepts the client
    /// secret either way (Basic header or form body) whichever is registered; a wrong secret is
    /// `invalid_client` both ways.
    pub auth_method: AuthMethod,
    /// Grant every requested scope without showing the consent page.
    pub skip_consent: bool,
    /// The client's `id_token_signed_response_alg`: `RS256`, `ES256` or `EdDSA`.
    pub id_token_alg: &'static str,
    /// Milliseconds the token endpoint holds each request (0: none).
    pub token_delay_ms: u64,
    /// Accounts whose sign-ins report these `amr` methods (as if the provider had asked for
    /// them); other accounts' ID tokens carry no `amr`.
    pub amr: &'static [(&'static str, &'static [&'static str])],
}

impl Default for ProviderOptions {
    fn default() -> Self {
        ProviderOptions {
            auth_method: AuthMethod::ClientSecretBasic,
            skip_consent: false,
            id_token_alg: "RS256",
            token_delay_ms: 0,
            amr: &[],
        }
    }
}

/// A running `node tests/js/provider.mjs`, stopped (SIGTERM) on drop.
pub struct Provider {
    /// `http://127.0.0.1:PORT`, exactly (no trailing slash); also the ID tokens' `iss`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    child: Child,
}

impl Provider {
    /// Starts the provider with one client allowed to redirect to `redirect_uris`, and the
    /// accounts `(id, email, groups)`; returns once it prints its listening line.
    pub fn start(
        dir: &Path,
        redirect_uris: &[String],
        accounts: &[(&str, &str, &[&str])],
    ) -> Provider {
        Provider::start_with(dir, redirect_uris, accounts, &ProviderOptions::default())
    }

    /// [`Provider::start`] with [`ProviderOptions`].
    pub fn start_with(
        dir: &Path,
        redirect_uris: &[String],
        accounts: &[(&str, &str, &[&str])],
        options: &ProviderOptions,
    ) -> Provider {
        require_node_parts();
        assert!(
            !redirect_uris.is_empty(),
            "the provider's client needs a redirect URI"
        );
        for uri in redirect_uris {
            assert!(
                !uri.contains(','),
                "REDIRECT_URIS is comma-separated: {uri:?}"
            );
        }
        let accounts_json = serde_json::Value::Array(
            accounts
                .iter()
                .map(|(id, email, groups)| {
                    let mut a = serde_json::json!({ "id": id, "email": email, "groups": groups });
                    if let Some((_, amr)) = options.amr.iter().find(|(who, _)| who == id) {
                        a["amr"] = serde_json::json!(amr);
                    }
                    a
                })
                .collect(),
        )
        .to_string();
        let client_id = format!("postern-e2e-{}", random_hex(8));
        let client_secret = random_hex(32);

        // The port was free a moment ago; if another process took it meanwhile, try another.
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let issuer = format!("http://127.0.0.1:{port}");
            let mut cmd = Command::new("node");
            cmd.arg(js_dir().join("provider.mjs"))
                .current_dir(js_dir())
                .env("PORT", port.to_string())
                .env("CLIENT_ID", &client_id)
                .env("CLIENT_SECRET", &client_secret)
                .env("REDIRECT_URIS", redirect_uris.join(","))
                .env("ACCOUNTS", &accounts_json)
                .env("TOKEN_ENDPOINT_AUTH_METHOD", options.auth_method.as_str())
                .env("SKIP_CONSENT", if options.skip_consent { "1" } else { "0" })
                .env("ID_TOKEN_ALG", options.id_token_alg)
                .env("TOKEN_DELAY_MS", options.token_delay_ms.to_string())
                .env("NO_COLOR", "1");
            let child = Child::spawn("oidc-provider", cmd, dir);
            let needle = format!("oidc-provider listening on {issuer}");
            match wait_for_stdout(&child, &needle, STARTUP) {
                Ok(()) => {
                    return Provider {
                        issuer,
                        client_id,
                        client_secret,
                        child,
                    }
                }
                Err(e) => {
                    last_error = e;
                    drop(child);
                }
            }
        }
        panic!("oidc-provider did not start: {last_error}");
    }

    /// `ISSUER/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// The provider's log: one line per request, plus refusals and grant errors.
    pub fn stderr_text(&self) -> String {
        self.child.stderr_text()
    }

    pub fn child(&self) -> &Child {
        &self.child
    }
}

/// Polls `child`'s stdout log for `needle`; `Err` with its stderr if it exits first or the
/// deadline passes.
fn wait_for_stdout(child: &Child, needle: &str, deadline: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if child.stdout_text().contains(needle) {
            return Ok(());
        }
        if let Some(status) = child.try_wait() {
            if child.stdout_text().contains(needle) {
                return Ok(());
            }
            return Err(format!(
                "exited ({status}) before printing {needle:?}; stdout:\n{}\nstderr:\n{}",
                child.stdout_text(),
                child.stderr_text()
            ));
        }
        if start.elapsed() > deadline {
            return Err(format!(
                "did not print {needle:?} within {deadline:?}; stdout:\n{}\nstderr:\n{}",
                child.stdout_text(),
                child.stderr_text()
            ));
        }
        thread::sleep(POLL);
    }
}

/// Signs `login` in through a real browser: opens `url` (usually the edge's sign-in URL), fills
/// the provider's login form, consents if asked, follows the redirects back, on postern's
/// confirmation page checks that it shows `code` (the code the CLI printed) and presses
/// Confirm (picking `select_zone` there or on a zone-choice page if asked), and waits until the
/// page text contains `expect` (pass [`DEFAULT_EXPECT`] for the usual success page). With no
/// `code`, nothing is pressed on a confirmation page.
///
/// `Ok(stdout)`: `URL: <final url>` then the final page's text. `Err`: login.mjs's log (each
/// step, the URL, the page text and a screenshot path under `dir`). Panics only if login.mjs
/// outlives [`LOGIN_DEADLINE`].
pub fn browser_login(
    url: &str,
    login: &str,
    expect: &str,
    select_zone: Option<&str>,
    code: Option<&str>,
    dir: &Path,
) -> Result<String, String> {
    let mut extra: Vec<&str> = Vec::new();
    if let Some(zone) = select_zone {
        extra.extend(["--select-zone", zone]);
    }
    if let Some(code) = code {
        extra.extend(["--code", code]);
    }
    run_login_js(url, login, expect, &extra, dir)
}

/// [`browser_login`] (confirming with `code`) in a browser that resolves each of `hosts` to the
/// loopback address `ip`: one edge of a pool that shares one public URL, as a load balancer
/// would choose it.
pub fn browser_login_via(
    url: &str,
    login: &str,
    code: &str,
    hosts: &[&str],
    ip: &str,
    dir: &Path,
) -> Result<String, String> {
    let maps: Vec<String> = hosts.iter().map(|h| format!("{h}={ip}")).collect();
    let mut extra = vec!["--code", code];
    for map in &maps {
        extra.extend(["--map", map.as_str()]);
    }
    run_login_js(url, login, DEFAULT_EXPECT, &extra, dir)
}

/// [`browser_login`] at `url` (confirming with `code`), then, in the same browser with its
/// provider session still signed in, opens `then_url` and waits for `then_expect` without
/// pressing anything: what a signed-in victim's browser does with a link it was sent.
pub fn browser_login_then(
    url: &str,
    login: &str,
    code: &str,
    then_url: &str,
    then_expect: &str,
    dir: &Path,
) -> Result<String, String> {
    let extra = [
        "--code",
        code,
        "--then",
        then_url,
        "--then-expect",
        then_expect,
    ];
    run_login_js(url, login, DEFAULT_EXPECT, &extra, dir)
}

/// Runs login.mjs at `url` as `login`, waiting for `expect`, with more of its options in
/// `extra` (see its header: `--then`, `--click`, `--shots`, `--print-cookies`).
pub fn run_login_js(
    url: &str,
    login: &str,
    expect: &str,
    extra: &[&str],
    dir: &Path,
) -> Result<String, String> {
    require_node_parts();
    static RUN: AtomicU64 = AtomicU64::new(0);
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    // Chromium's profile, crash dumps and caches stay inside the test directory. Short names:
    // Chromium puts its singleton socket under TMPDIR, and a Unix socket path longer than 107
    // bytes makes it abort at launch (SIGTRAP), which a long test name used to reach.
    let home = dir.join(format!("b{n}"));
    let tmp = home.join("t");
    fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("mkdir {}: {e}", tmp.display()));
    let screenshot = dir.join(format!("login-{n}.png"));

    let mut cmd = Command::new("node");
    cmd.arg(js_dir().join("login.mjs"))
        .arg(url)
        .arg(login)
        .arg(TEST_PASSWORD)
        .arg("--expect")
        .arg(expect)
        .arg("--timeout")
        .arg(LOGIN_TIMEOUT.as_secs().to_string())
        .arg("--screenshot")
        .arg(&screenshot);
    cmd.args(extra)
        .current_dir(js_dir())
        .env_remove("POSTERN_LOGIN_CODE")
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    let out = run_with_deadline(&mut cmd, LOGIN_DEADLINE, &format!("login.mjs {url}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "browser login as {login:?} at {url} failed ({}):\n{stderr}\nstdout:\n{stdout}",
            out.status
        ))
    }
}

/// `bytes` random bytes from the kernel, hex-encoded (no rand crate in the tests).
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter()
        .fold(String::with_capacity(bytes * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
