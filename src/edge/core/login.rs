//! The edge's browser side: the login start, sign-in pages, the OIDC callback, the
//! confirmation step, app tokens and token transfer.
//!
//! ```text
//!  CLI ── POST https://H/cdn-cgi/access/transfer {id, key, app|purpose}
//!           └─ slot opened: requester address, code = confirmation_code(id, key)
//!  CLI prints the URL and the code, and polls GET /cdn-cgi/access/transfer?id (keeps the slot alive)
//!  browser ── GET https://H/cdn-cgi/access/cli?id ──302──▶ {public_url}/cdn-cgi/access/cli?id
//!           └─ the slot opens in this browser only; Set-Cookie __Host-postern-<tag> (binder)
//!           └─ 302 ─▶ provider /authorize (state, nonce, PKCE) or the dev sign-in page
//!  provider ──302──▶ {public_url}/cdn-cgi/access/callback?code&state     (cookie checked)
//!           └─ worker: code exchange + ID token check ─▶ identity ─▶ policy
//!           └─ allow: "Confirm this login": code, requester address, [Confirm] (POST + page secret)
//!  browser ── POST /cdn-cgi/access/confirm (state, secret, zone)           (cookie checked)
//!           └─ app token signed (or origin certificate issued), sealed into the slot
//!  CLI's next poll ─▶ the sealed token, once
//! ```
//!
//! Why the confirmation: a login link or a provider link can be sent to someone else. Without
//! it, a victim whose browser holds a provider session would finish an attacker's login with
//! zero clicks, and the token (sealed to the attacker's key) would be the attacker's. Now:
//! - the browser that opened the link is bound to the login by a `__Host-` cookie, checked at
//!   the callback, the dev sign-in and the confirmation: a provider link sent to a victim ends
//!   at "started in another browser";
//! - nothing is issued until the person at the browser presses Confirm on a page that shows
//!   the code their terminal printed and the address the login was started from; the POST
//!   carries a secret from that page (and must come from the edge's own origin), so no link,
//!   redirect or cross-site form can press it for them.
//!
//! Pages are small server-rendered HTML without JavaScript.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Instant;

use log::{info, warn};

use super::{Carrier, ConnId, EdgeCore};
use crate::edge::config::IdentityProvider;
use crate::logging::escape;
use crate::oidc::OidcError;
use crate::pki::OriginCredential;
use crate::proto::http::RequestHead;
use crate::proto::policy::{self, Identity};
use crate::proto::token_transfer::{Poll, Purpose, TransferError, Waiting};
use crate::proto::url::{self, html, param};
use crate::store::ct_eq;

use crate::limits::APP_TOKEN_LEEWAY_SECS;

use crate::limits::MAX_DEV_CODE_ATTEMPTS;

use crate::limits::MAX_CONFIRM_ATTEMPTS;

use crate::limits::BINDER_COOKIE_SECS;

pub(super) mod pool;
pub(super) mod zone;

pub(super) fn random_token() -> String {
    crate::proto::base64::encode_url(&crate::io::random_bytes::<24>())
}

/// A login between the browser opening the link and the confirmation.
pub(super) struct PendingLogin {
    transfer: String,
    purpose: Purpose,
    /// The value of the `__Host-` cookie that binds the browser to this login.
    binder: String,
    verifier: String,
    nonce: String,
    stage: Stage,
}

enum Stage {
    /// Sent to the provider (or the dev sign-in page); waiting for the callback.
    AtProvider,
    /// Dev sign-in: the code for `email` is on the edge's terminal.
    DevCode {
        email: String,
        code: String,
        attempts: u32,
    },
    /// A code exchange for this login is with the worker (one at a time).
    Exchanging,
    /// Signed in and allowed: the confirmation page is shown, with this page secret;
    /// `attempts` wrong codes were typed so far.
    Confirm {
        identity: Identity,
        secret: String,
        attempts: u32,
    },
}

#[derive(Default)]
pub(super) struct Logins {
    map: HashMap<String, PendingLogin>,
    /// Transfer ids whose CLI asked for a zone session too (`zone_session`); forgotten with
    /// their transfer.
    pub(super) zone_wanted: std::collections::HashSet<String>,
}

/// A confirmed login whose token is sealed for its CLI: what the browser is shown and the
/// audit records once the token is on its way.
pub(super) struct Confirmed {
    event: &'static str,
    audit: serde_json::Map<String, serde_json::Value>,
    email: String,
    requester: std::net::IpAddr,
    title: &'static str,
    html: String,
    /// The `Set-Cookie` value that clears the binding cookie.
    clear: String,
}

/// A code exchange for the worker pool.
pub(crate) struct Job {
    pub(crate) conn: ConnId,
    pub(crate) state: String,
    pub(crate) code: String,
    pub(crate) verifier: String,
    pub(crate) nonce: String,
    pub(crate) redirect: String,
}

/// A worker's answer to a [`Job`].
pub(crate) struct Done {
    pub(crate) conn: ConnId,
    pub(crate) state: String,
    pub(crate) result: Result<Identity, OidcError>,
}

/// The queues to the threads that run the blocking OIDC calls (started by the driver), so the
/// loop never waits on the provider. The queue is bounded ([`crate::limits::MAX_OIDC_JOBS`]):
/// a full queue is a 503, not memory.
pub(crate) struct Worker {
    pub(crate) jobs: mpsc::SyncSender<Job>,
    pub(crate) done: mpsc::Receiver<Done>,
}

/// A finished page for the browser (or JSON for the CLI).
pub(super) fn respond(
    c: &mut Carrier,
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) {
    let mut headers = vec![
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
        ("X-Frame-Options", "DENY"),
        // Not `no-referrer`: under it a browser sends `Origin: null` with our own form posts,
        // and the confirmation checks Origin. Other sites still get no referrer.
        ("Referrer-Policy", "same-origin"),
        (
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'",
        ),
    ];
    headers.extend_from_slice(extra);
    c.core.respond(status, reason, &headers, body, c.now);
}

fn reason_of(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        302 => "Found",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn page_with(c: &mut Carrier, status: u16, title: &str, body_html: &str, extra: &[(&str, &str)]) {
    let doc = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width\"><title>{t}</title><style>body{{font-family:sans-serif;\
         max-width:34em;margin:4em auto;padding:0 1em;line-height:1.5}}input,button{{font-size:1em;\
         padding:.3em}}.code{{font-family:monospace;font-size:2em;letter-spacing:.1em}}\
         </style></head><body><h1>{t}</h1>{body_html}</body></html>",
        t = html(title)
    );
    respond(
        c,
        status,
        reason_of(status),
        "text/html; charset=utf-8",
        doc.as_bytes(),
        extra,
    );
}

fn page(c: &mut Carrier, status: u16, title: &str, body_html: &str) {
    page_with(c, status, title, body_html, &[]);
}

/// What a web browser that opens an SSH hostname gets: a page saying what the host is and the
/// exact `~/.ssh/config` block (the guide warns that a browser request to it "will fail"; it
/// should at least say why and what to do). `served` is false when no application of this
/// edge covers `host`.
pub(super) fn host_page(c: &mut Carrier, host: &str, served: bool) {
    let h = html(host);
    if !served {
        return page(
            c,
            404,
            "Not found",
            &format!("<p>No application is served at <b>{h}</b> on this edge.</p>"),
        );
    }
    let body = format!(
        "<p><b>{h}</b> carries SSH through <b>postern</b>, a zero-trust access gateway: every \
         connection is checked against your sign-in. A web browser cannot open it; connect with \
         <code>ssh</code> instead.</p>\
         <p>Add this block to <code>~/.ssh/config</code> on your computer (with the \
         <code>postern</code> binary installed there):</p>\
         <pre>Host {h}\n  ProxyCommand postern access ssh --hostname %h</pre>\
         <p>then run <code>ssh {h}</code>. The first connection opens a browser to sign in; \
         later ones reuse the sign-in until it expires.</p>\
         <p>postern can write the block for you: \
         <code>postern access ssh-config --hostname {h} &gt;&gt; ~/.ssh/config</code>. \
         An existing <code>cloudflared access ssh</code> block works with <code>cloudflared</code> \
         replaced by <code>postern</code>.</p>"
    );
    page(c, 200, &format!("{host}: an SSH host"), &body);
}

pub(super) fn redirect(c: &mut Carrier, location: &str, extra: &[(&str, &str)]) {
    let mut headers = vec![("Location", location)];
    headers.extend_from_slice(extra);
    respond(c, 302, "Found", "text/plain", b"", &headers);
}

fn json(c: &mut Carrier, status: u16, value: &serde_json::Value) {
    respond(
        c,
        status,
        reason_of(status),
        "application/json",
        value.to_string().as_bytes(),
        &[],
    );
}

fn expired(c: &mut Carrier) {
    page(
        c,
        400,
        "Login expired",
        "<p>This login is unknown or expired. Run the postern command again.</p>",
    );
}

/// The cookie that binds one login to the browser that opened its link. One name per login
/// (two logins in one browser do not overwrite each other); `__Host-` makes the browser keep
/// it to this exact origin, over HTTPS, for path `/`.
fn binder_cookie_name(state: &str) -> String {
    format!("__Host-postern-{}", &state[..state.len().min(12)])
}

/// The `name` cookie's value from the request's `Cookie` headers.
pub(super) fn cookie<'a>(head: &'a RequestHead, name: &str) -> Option<&'a str> {
    head.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// How long ago, for the confirmation page.
fn ago(secs: u64) -> String {
    match secs {
        0..=1 => "just now".to_owned(),
        2..=119 => format!("{secs} seconds ago"),
        _ => format!("{} minutes ago", secs / 60),
    }
}

/// What the CLI sends to start a login.
#[derive(serde::Deserialize)]
struct StartLogin {
    id: String,
    key: String,
    /// The application hostname (an app-token login); defaults to the request's Host.
    #[serde(default)]
    app: Option<String>,
    /// `"tunnel"` for an origin certificate (`tunnel login`).
    #[serde(default)]
    purpose: Option<String>,
    /// An app login that also wants a zone session (one login per zone; `zone_session`).
    #[serde(default)]
    zone_session: bool,
}

impl EdgeCore {
    /// The base URL of the login pages.
    pub(super) fn public_url(&self) -> String {
        self.public_url.clone()
    }

    /// `host[:port]` of [`EdgeCore::public_url`] (config checks that it is just scheme, host
    /// and port).
    fn public_authority(&self) -> &str {
        self.public_url
            .trim_start_matches("https://")
            .split('/')
            .next()
            .unwrap_or_default()
    }

    /// The origin browsers send from the login pages: `https://host`, with the port only
    /// when it is not 443.
    pub(super) fn public_origin(&self) -> String {
        let authority = self.public_authority();
        let authority = authority.strip_suffix(":443").unwrap_or(authority);
        format!("https://{authority}")
    }

    /// The host name of [`EdgeCore::public_url`], where the browser's part of a login happens.
    pub(super) fn public_host(&self) -> String {
        crate::proto::carrier::strip_port(self.public_authority()).to_ascii_lowercase()
    }

    /// True if `method path` starts a login (and so counts against the login rate).
    pub(super) fn is_login_entry(method: &str, path: &str) -> bool {
        matches!(
            (method, path),
            ("POST", "/cdn-cgi/access/transfer")
                | ("GET", "/cdn-cgi/access/cli")
                | (_, "/cdn-cgi/access/dev-login")
                | ("GET", super::console::SIGN_IN)
        )
    }

    /// Serves every request that is not a carrier upgrade. `body` is a POST's body. Returns
    /// true if it answered.
    pub(super) fn on_page(
        &mut self,
        conn: ConnId,
        c: &mut Carrier,
        head: &RequestHead,
        host: &str,
        body: &[u8],
    ) -> bool {
        let Some((path, query)) = url::split_target(&head.target) else {
            page(c, 400, "Bad request", "<p>The link is malformed.</p>");
            return true;
        };
        let now = self.now;
        self.expire_logins(now);
        let post = head.method == "POST";
        // A browser form's fields come in the body; anything else in the query.
        let form = |c: &mut Carrier| -> Option<Vec<(String, String)>> {
            let fields = std::str::from_utf8(body).ok().and_then(url::parse_query);
            if fields.is_none() {
                page(c, 400, "Bad request", "<p>The form is malformed.</p>");
            }
            fields
        };
        match (head.method.as_str(), path) {
            ("GET", super::sshcert::SSH_CA) => self.ssh_ca_page(c),
            ("GET", "/cdn-cgi/access/certs") => {
                let jwks = self.keys.jwks(self.unix);
                respond(
                    c,
                    200,
                    "OK",
                    "application/json",
                    jwks.to_json().as_bytes(),
                    &[],
                );
            }
            ("GET", "/cdn-cgi/access/transfer") => {
                let id = param(&query, "id").unwrap_or("");
                match self.transfers.take(id, now) {
                    // In a pool, a login whose slot is here (or elsewhere) may have been
                    // finished at any edge: the store has its outcome.
                    Ok(Poll::Pending) | Err(TransferError::Unknown)
                        if self.shared_logins() && crate::proto::token_transfer::valid_id(id) =>
                    {
                        let id = id.to_owned();
                        self.poll_shared(conn, c, &id)
                    }
                    Ok(Poll::Ready(sealed)) => json(
                        c,
                        200,
                        &serde_json::json!({ "epk": sealed.epk, "ct": sealed.ct }),
                    ),
                    Ok(Poll::Pending) => json(c, 202, &serde_json::json!({ "status": "pending" })),
                    Ok(Poll::Refused(why)) => json(c, 403, &serde_json::json!({ "error": why })),
                    Err(e) => json(c, 404, &serde_json::json!({ "error": e.to_string() })),
                }
            }
            ("POST", "/cdn-cgi/access/transfer") => {
                self.start_login(conn, c, head, host, body, now)
            }
            ("GET", "/cdn-cgi/access/cli") => self.open_login(conn, c, &query, host, now),
            ("POST", zone::EXCHANGE) => self.exchange_zone_session(c, head, host, body),
            ("GET", "/cdn-cgi/access/callback") => self.callback(conn, c, head, &query),
            ("GET", "/cdn-cgi/access/dev-login") => self.dev_login(c, head, &query),
            ("POST", "/cdn-cgi/access/dev-login") => {
                if let Some(fields) = form(c) {
                    self.dev_login(c, head, &fields)
                }
            }
            ("POST", "/cdn-cgi/access/confirm") => {
                if let Some(fields) = form(c) {
                    self.confirm(conn, c, head, &fields)
                }
            }
            (
                _,
                "/cdn-cgi/access/certs"
                | "/cdn-cgi/access/transfer"
                | "/cdn-cgi/access/cli"
                | "/cdn-cgi/access/callback"
                | "/cdn-cgi/access/confirm",
            ) => page(
                c,
                405,
                "Method not allowed",
                if post {
                    "<p>This page takes no form.</p>"
                } else {
                    "<p>Use the form on the confirmation page.</p>"
                },
            ),
            (_, p) if super::console::is_console_path(p) => {
                self.on_console(conn, c, head, host, path, &query, body)
            }
            _ => return false,
        }
        true
    }

    /// Forgets logins whose transfer ended (expired, abandoned by its CLI, finished).
    fn expire_logins(&mut self, now: Instant) {
        self.transfers.expire(now);
        let transfers = &self.transfers;
        self.logins
            .map
            .retain(|_, l| transfers.waiting(&l.transfer, now).is_some());
        self.logins
            .zone_wanted
            .retain(|id| transfers.waiting(id, now).is_some());
    }

    /// `POST /cdn-cgi/access/transfer` from the CLI: opens a transfer slot for its key,
    /// counted against the budgets of its kind and of its source address.
    fn start_login(
        &mut self,
        conn: ConnId,
        c: &mut Carrier,
        head: &RequestHead,
        host: &str,
        body: &[u8],
        now: Instant,
    ) {
        let error = |c: &mut Carrier, status: u16, msg: &str| {
            json(c, status, &serde_json::json!({ "error": msg }));
        };
        // A browser cannot send this content type across sites without a CORS preflight
        // (which the edge never answers): no web page can start logins from a visitor's address.
        let is_json = head
            .header("content-type")
            .and_then(|t| t.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return error(c, 415, "the login start must be application/json");
        }
        let Ok(req) = serde_json::from_slice::<StartLogin>(body) else {
            return error(c, 400, "malformed login start");
        };
        let purpose = match req.purpose.as_deref() {
            Some("tunnel") => Purpose::Tunnel,
            Some(_) => return error(c, 400, "unknown login purpose"),
            None => {
                let app = req.app.as_deref().unwrap_or(host).to_ascii_lowercase();
                // A host name, not text of the requester's choosing: it is shown on the
                // confirmation page.
                if !super::valid_hostname(&app) {
                    return error(c, 400, "the application must be a host name");
                }
                if self.settings.application(&app).is_none() {
                    return error(
                        c,
                        404,
                        &format!(
                            "this edge has no application for {}",
                            escape(&app, crate::limits::MAX_LOGGED_NAME)
                        ),
                    );
                }
                Purpose::App(app)
            }
        };
        if matches!(self.settings.identity, IdentityProvider::None) {
            return error(
                c,
                501,
                "this edge has no identity provider: use a service token",
            );
        }
        let begun = self
            .transfers
            .begin(&req.id, &req.key, purpose.clone(), c.peer.ip(), now);
        if begun.is_ok() && req.zone_session && matches!(purpose, Purpose::App(_)) {
            self.logins.zone_wanted.insert(req.id.clone());
        }
        match begun {
            Ok(()) if self.shared_logins() => {
                let code = crate::proto::token_transfer::confirmation_code(&req.id, &req.key);
                self.share_transfer(conn, c, &req.id, &purpose, code)
            }
            Ok(()) => json(
                c,
                201,
                &serde_json::json!({
                    "status": "pending",
                    "code": crate::proto::token_transfer::confirmation_code(&req.id, &req.key),
                }),
            ),
            Err(e @ (TransferError::Full | TransferError::SourceBusy)) => {
                let limit = if e == TransferError::Full {
                    super::Limit::PendingTransfers
                } else {
                    super::Limit::PendingPerSource
                };
                let what = e.to_string();
                self.limit_hit(limit, c.peer.ip(), || format!("login refused: {what}"));
                let status = if e == TransferError::Full { 503 } else { 429 };
                error(c, status, &e.to_string());
            }
            Err(e) => {
                let status = if e == TransferError::Replay { 409 } else { 400 };
                error(c, status, &e.to_string());
            }
        }
    }

    /// `GET /cdn-cgi/access/cli?id` from the browser: binds this browser to the login and
    /// sends it to sign in. On an application's host name it first moves to the public
    /// login host, where the binding cookie, the callback and the confirmation live.
    fn open_login(
        &mut self,
        conn: ConnId,
        c: &mut Carrier,
        query: &[(String, String)],
        host: &str,
        now: Instant,
    ) {
        let Some(id) = param(query, "id") else {
            return page(
                c,
                400,
                "Bad request",
                "<p>This login link is incomplete. Run the postern command again.</p>",
            );
        };
        if host != self.public_host() {
            let to = url::with_query(
                &format!("{}/cdn-cgi/access/cli", self.public_url()),
                &[("id", id)],
            );
            return redirect(c, &to, &[]);
        }
        if matches!(self.settings.identity, IdentityProvider::None) {
            return page(
                c,
                501,
                "No sign-in configured",
                "<p>This edge has no identity provider: use a service token.</p>",
            );
        }
        if self.shared_logins() {
            // The store says whether this is the first browser, across the pool.
            return self.open_shared(conn, c, id);
        }
        let waiting = match self.transfers.open(id, now) {
            Ok(w) => w,
            Err(TransferError::AlreadyOpened) => {
                // Two browsers have the link: someone else has seen it. Neither may finish.
                warn!(
                    "login link opened in a second browser ({}): the login ends",
                    c.peer
                );
                self.refuse_transfer(
                    id,
                    "the login link was opened in two browsers: if you did not share it, \
                     someone else has it; start the login again",
                );
                let ended: Vec<String> = self
                    .logins
                    .map
                    .iter()
                    .filter(|(_, l)| l.transfer == id)
                    .map(|(s, _)| s.clone())
                    .collect();
                for state in ended {
                    self.logins.map.remove(&state);
                }
                return page(
                    c,
                    409,
                    "Login link already used",
                    "<p>This login link was already opened in another browser, so it has been \
                     cancelled. Run the postern command again, and open its link in one \
                     browser only.</p>",
                );
            }
            Err(_) => return expired(c),
        };
        self.bind_browser(c, id, waiting);
    }

    /// The login link of transfer `id` opened in this browser (its first): a login state,
    /// the binding cookie, and off to sign in.
    fn bind_browser(&mut self, c: &mut Carrier, id: &str, waiting: Waiting) {
        let state = random_token();
        let nonce = random_token();
        let binder = random_token();
        let (verifier, challenge) = crate::oidc::pkce();
        // An application's step-up settings go to the provider with the request: `max_age`
        // makes it ask for the password (and second factor) again when its own session is
        // older; `acr_values` asks for that assurance class.
        let app = match &waiting.purpose {
            Purpose::App(host) => self.settings.application(host),
            Purpose::Tunnel => None,
        };
        let max_age = app.and_then(|a| a.max_age).map(|m| m.to_string());
        let acr = app
            .filter(|a| !a.acr_values.is_empty())
            .map(|a| a.acr_values.join(" "));
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if let Some(m) = &max_age {
            extra.push(("max_age", m));
        }
        if let Some(a) = &acr {
            extra.push(("acr_values", a));
        }
        self.logins.map.insert(
            state.clone(),
            PendingLogin {
                transfer: id.to_owned(),
                purpose: waiting.purpose,
                binder: binder.clone(),
                verifier,
                nonce: nonce.clone(),
                stage: Stage::AtProvider,
            },
        );
        let location = match (&self.settings.identity, &self.oidc) {
            (IdentityProvider::Oidc(_), Some(p)) => {
                p.authorize_url(&self.callback_url(), &state, &nonce, &challenge, &extra)
            }
            _ => url::with_query(
                &format!("{}/cdn-cgi/access/dev-login", self.public_url()),
                &[("state", &state)],
            ),
        };
        // Lax: the provider's redirect back is a top-level GET from another site, and must
        // carry it; a cross-site POST or subrequest never does.
        let set = format!(
            "{}={binder}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={BINDER_COOKIE_SECS}",
            binder_cookie_name(&state)
        );
        redirect(c, &location, &[("Set-Cookie", &set)]);
    }

    /// True if this request comes from the browser that opened `state`'s login.
    fn bound(&self, head: &RequestHead, state: &str) -> bool {
        let Some(login) = self.logins.map.get(state) else {
            return false;
        };
        cookie(head, &binder_cookie_name(state))
            .is_some_and(|v| ct_eq(v.as_bytes(), login.binder.as_bytes()))
    }

    /// A request for `state`'s login from another browser: the login ends, its CLI learns
    /// why, and the browser is told that the link was not started there.
    fn not_bound(&mut self, c: &mut Carrier, state: &str, step: &str) {
        if let Some(l) = self.logins.map.remove(state) {
            warn!(
                "login refused at the {step}: the browser is not the one that opened the login \
                 link (a forwarded sign-in link?); peer {}",
                c.peer
            );
            self.refuse_transfer(
                &l.transfer,
                "the sign-in was finished in a browser other than the one that opened the login \
                 link",
            );
            let mut audit = serde_json::Map::new();
            audit.insert("peer".into(), c.peer.to_string().into());
            audit.insert("decision".into(), "deny".into());
            audit.insert(
                "reason".into(),
                format!("browser not bound ({step})").into(),
            );
            self.audit.record(Self::audit_event(&l.purpose), audit);
        }
        page(
            c,
            403,
            "Login started in another browser",
            "<p>This sign-in link was not started in this browser, so it cannot finish here. \
             If you did not run a postern command just now, someone may have sent you this \
             link: close this window. Otherwise, run the command again and open its link in \
             this browser.</p>",
        );
    }

    fn audit_event(purpose: &Purpose) -> &'static str {
        match purpose {
            Purpose::App(_) => "login",
            Purpose::Tunnel => "tunnel_login",
        }
    }

    pub(super) fn callback_url(&self) -> String {
        format!("{}/cdn-cgi/access/callback", self.public_url())
    }

    fn callback(
        &mut self,
        conn: ConnId,
        c: &mut Carrier,
        head: &RequestHead,
        query: &[(String, String)],
    ) {
        let state = param(query, "state").unwrap_or("").to_owned();
        if self.console.signing_in(&state) {
            return self.console_callback(conn, c, head, &state, query);
        }
        if !self.logins.map.contains_key(&state) {
            return expired(c);
        }
        if !self.bound(head, &state) {
            return self.not_bound(c, &state, "callback");
        }
        if let Some(err) = param(query, "error") {
            // The provider's words are shown as a code and escaped text, never as markup,
            // and only the code goes on to the terminal.
            let code: String = err
                .chars()
                .filter(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
                .take(64)
                .collect();
            let text = param(query, "error_description").unwrap_or("");
            let text = escape(text, 256);
            if let Some(l) = self.logins.map.remove(&state) {
                self.refuse_transfer(
                    &l.transfer,
                    &format!("sign-in failed at the identity provider ({code})"),
                );
            }
            info!("sign-in failed at the identity provider: {code}: {text}");
            return page(
                c,
                403,
                "Sign-in failed",
                &format!(
                    "<p>The identity provider refused the sign-in: <code>{}</code></p><p>{}</p>",
                    html(&code),
                    html(&text)
                ),
            );
        }
        let Some(code) = param(query, "code") else {
            return page(c, 400, "Bad request", "<p>The provider sent no code.</p>");
        };
        let redirect_uri = self.callback_url();
        let (Some(login), Some(worker)) = (self.logins.map.get_mut(&state), &self.worker) else {
            return page(c, 400, "Bad request", "<p>No identity provider.</p>");
        };
        if !matches!(login.stage, Stage::AtProvider) {
            return page(
                c,
                409,
                "Sign-in in progress",
                "<p>This sign-in is already being finished in another tab.</p>",
            );
        }
        let job = Job {
            conn,
            state: state.clone(),
            code: code.to_owned(),
            verifier: login.verifier.clone(),
            nonce: login.nonce.clone(),
            redirect: redirect_uri,
        };
        match worker.jobs.try_send(job) {
            Ok(()) => {
                login.stage = Stage::Exchanging;
                // Parked until the worker answers (the handshake deadline still bounds it).
                c.core.park();
            }
            Err(mpsc::TrySendError::Full(_)) => page(
                c,
                503,
                "Busy",
                "<p>The edge is finishing many sign-ins: reload this page in a moment.</p>",
            ),
            Err(mpsc::TrySendError::Disconnected(_)) => page(
                c,
                500,
                "Sign-in unavailable",
                "<p>The edge cannot reach its identity provider right now.</p>",
            ),
        }
    }

    /// Answers every browser whose code exchange finished.
    pub(super) fn worker_results(&mut self) {
        let mut finished = Vec::new();
        if let Some(w) = &self.worker {
            while let Ok(done) = w.done.try_recv() {
                finished.push(done);
            }
        }
        for done in finished {
            self.on_worker_done(done);
        }
        self.run_dirty();
    }

    /// A worker finished a code exchange: answer the browser parked for it, if that very
    /// connection is still there and waiting (the slot may hold another connection by now).
    pub(super) fn on_worker_done(&mut self, done: Done) {
        if self.console.signing_in(&done.state) {
            return self.console_signed_in(done);
        }
        let Some(mut c) = self.take_waiting_carrier(done.conn) else {
            // The browser left (or timed out) first: end the login, it cannot be confirmed.
            info!("a sign-in finished after its browser connection had gone: the login ends");
            if let Some(l) = self.logins.map.remove(&done.state) {
                self.refuse_transfer(
                    &l.transfer,
                    "the browser went away before the sign-in finished",
                );
            }
            return;
        };
        match done.result {
            Ok(id) => self.signed_in(&mut c, &done.state, id),
            Err(e) => {
                warn!("sign-in failed: {e}");
                self.end_login(
                    &c,
                    &done.state,
                    "sign-in failed at the identity provider",
                    &format!("sign-in failed: {e}"),
                );
                page(
                    &mut c,
                    403,
                    "Sign-in failed",
                    "<p>The sign-in could not be verified. Run the postern command again.</p>",
                );
            }
        }
        self.put_back_carrier(done.conn, c);
    }

    fn dev_login(&mut self, c: &mut Carrier, head: &RequestHead, params: &[(String, String)]) {
        if !matches!(self.settings.identity, IdentityProvider::Dev) {
            return page(c, 404, "Not found", "<p>No such page.</p>");
        }
        let state = param(params, "state").unwrap_or("").to_owned();
        if !self.logins.map.contains_key(&state) {
            return expired(c);
        }
        if !self.bound(head, &state) {
            return self.not_bound(c, &state, "dev sign-in");
        }
        let login = self.logins.map.get_mut(&state).expect("bug: checked above");
        let hidden = format!(
            "<input type=\"hidden\" name=\"state\" value=\"{}\">",
            html(&state)
        );
        let email = param(params, "email").map(|e| e.trim().to_ascii_lowercase());
        let code = param(params, "code").map(str::trim);
        match (&mut login.stage, email, code) {
            (Stage::AtProvider, None, _) | (Stage::AtProvider, Some(_), Some(_)) => page(
                c,
                200,
                "Sign in (dev)",
                &format!("<p>This is the embedded development sign-in of <code>postern edge --dev</code>.</p>\
                 <form method=\"post\" action=\"/cdn-cgi/access/dev-login\">{hidden}<label>Email \
                 <input name=\"email\" type=\"email\" required autofocus></label> <button>Send code</button></form>"),
            ),
            (Stage::AtProvider, Some(email), None) => {
                if !plausible_email(&email) {
                    return page(c, 400, "Invalid email", "<p>Enter an email address.</p>");
                }
                let n = u32::from_le_bytes(crate::io::random_bytes::<4>()) % 1_000_000;
                let code = format!("{n:06}");
                // The one-time code goes to the operator's terminal, never to the browser.
                eprintln!("postern edge (dev): login code for {email}: {code}");
                info!("dev login code issued for {email}");
                let shown = html(&email);
                login.stage = Stage::DevCode {
                    email,
                    code,
                    attempts: 0,
                };
                page(
                    c,
                    200,
                    "Enter your code",
                    &format!("<p>A one-time code for <b>{shown}</b> is printed on the edge's terminal.</p>\
                     <form method=\"post\" action=\"/cdn-cgi/access/dev-login\">{hidden}<label>Code \
                     <input name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required autofocus></label> \
                     <button>Sign in</button></form>"),
                )
            }
            (Stage::DevCode { .. }, _, None) => {
                page(c, 400, "Code missing", "<p>Enter the code from the edge's terminal.</p>")
            }
            (
                Stage::DevCode {
                    email,
                    code: expected,
                    attempts,
                },
                _,
                Some(code),
            ) => {
                if ct_eq(code.as_bytes(), expected.as_bytes()) {
                    // The dev sign-in is fresh each time; it knows no methods or classes.
                    let id = Identity {
                        email: Some(email.clone()),
                        authn: policy::Authentication {
                            auth_time: Some(self.unix),
                            ..Default::default()
                        },
                        ..Identity::default()
                    };
                    self.signed_in(c, &state, id);
                } else {
                    *attempts += 1;
                    if *attempts >= MAX_DEV_CODE_ATTEMPTS {
                        if let Some(l) = self.logins.map.remove(&state) {
                            self.refuse_transfer(
                                &l.transfer,
                                "too many wrong sign-in codes",
                            );
                        }
                        page(c, 403, "Too many attempts", "<p>Run the postern command again.</p>");
                    } else {
                        page(c, 403, "Wrong code", &format!("<p>That code is not right.</p>\
                         <form method=\"post\" action=\"/cdn-cgi/access/dev-login\">{hidden}<label>Code \
                         <input name=\"code\" required autofocus></label> <button>Sign in</button></form>"));
                    }
                }
            }
            (Stage::Exchanging | Stage::Confirm { .. }, _, _) => page(
                c,
                409,
                "Already signed in",
                "<p>This login is past the sign-in. Run the postern command again.</p>",
            ),
        }
    }

    /// The user is who `id` says: apply the policy, then ask the person to confirm.
    fn signed_in(&mut self, c: &mut Carrier, state: &str, id: Identity) {
        let now = self.now;
        let Some(login) = self.logins.map.get(state) else {
            return expired(c);
        };
        let Some(waiting) = self.transfers.waiting(&login.transfer, now) else {
            self.logins.map.remove(state);
            return expired(c);
        };
        let email = id.email.clone().unwrap_or_default();
        // What the CLI is told names no one: whoever started the login learns nothing of who
        // opened its link (the browser shows the account).
        let (verdict, denied) = match &login.purpose {
            Purpose::App(host) => match self.settings.application(host) {
                Some(app) => (
                    app.decide(&id),
                    format!(
                        "access denied: the account signed in at the browser is not allowed to \
                         reach {host} (the browser page names it)"
                    ),
                ),
                None => {
                    self.end_login(
                        c,
                        state,
                        "the application is no longer configured on this edge",
                        "no application",
                    );
                    return page(c, 404, "Unknown application", "<p>No such application.</p>");
                }
            },
            Purpose::Tunnel => (
                policy::evaluate(&self.settings.tunnel_admins, &id),
                "access denied: the account signed in at the browser may not create origin \
                 certificates (the browser page names it)"
                    .to_owned(),
            ),
        };
        // Step-up: a refusal a stronger sign-in would turn round says so, and an application
        // with `max_age` takes only a sign-in the provider says is that recent.
        let app = match &login.purpose {
            Purpose::App(host) => self.settings.application(host),
            Purpose::Tunnel => None,
        };
        let step_up =
            !verdict.allow && app.is_some_and(|a| policy::needs_step_up(&a.policies, &id));
        let stale = verdict.allow
            && app
                .and_then(|a| a.max_age)
                .is_some_and(|m| !crate::oidc::fresh_enough(id.authn.auth_time, m, self.unix));
        if stale {
            let login = self.logins.map.remove(state).expect("bug: checked above");
            let mut audit = self.login_audit(c, &login, &waiting, &id);
            audit.insert("decision".into(), "deny".into());
            audit.insert("reason".into(), "max_age".into());
            if let Some(t) = id.authn.auth_time {
                audit.insert("auth_time".into(), t.into());
            }
            self.audit.record(Self::audit_event(&login.purpose), audit);
            info!(
                "login denied: {}: the provider's sign-in is older than the application's \
                 max_age (auth_time {:?})",
                escape(&email, crate::limits::MAX_LOGGED_NAME),
                id.authn.auth_time
            );
            self.refuse_transfer(
                &login.transfer,
                "access denied: this application needs a fresh sign-in, and the identity \
                 provider did not ask for one (its max_age was not honoured)",
            );
            return page(
                c,
                403,
                "Fresh sign-in needed",
                "<p>This application needs a recent sign-in at the identity provider, and the \
                 provider reported an older one. Run the postern command again; if this page \
                 comes back, the provider does not honour <code>max_age</code>: tell the \
                 administrator of this edge.</p>",
            );
        }
        if !verdict.allow {
            let login = self.logins.map.remove(state).expect("bug: checked above");
            let mut audit = self.login_audit(c, &login, &waiting, &id);
            audit.insert("policy".into(), verdict.policy.clone().into());
            audit.insert("decision".into(), "deny".into());
            audit.insert(
                "reason".into(),
                if step_up { "step-up" } else { "policy" }.into(),
            );
            self.audit.record(Self::audit_event(&login.purpose), audit);
            info!(
                "login denied: {} ({})",
                escape(&email, crate::limits::MAX_LOGGED_NAME),
                escape(&verdict.policy, crate::limits::MAX_LOGGED_NAME)
            );
            let denied = if step_up {
                "access denied: this application needs a stronger sign-in (such as multi-factor) \
                 than the identity provider reported"
                    .to_owned()
            } else {
                denied
            };
            self.refuse_transfer(&login.transfer, &denied);
            let what = match &login.purpose {
                Purpose::App(host) if step_up => format!(
                    "signed in without the method or assurance level <b>{}</b> requires \
                     (such as multi-factor authentication). Sign in at the identity provider \
                     with it, then run the postern command again. If you did, the provider did \
                     not report it",
                    html(host)
                ),
                Purpose::App(host) => format!("is not allowed to reach <b>{}</b>", html(host)),
                Purpose::Tunnel => "may not create origin certificates on this edge".to_owned(),
            };
            return page(
                c,
                403,
                "Access denied",
                &format!(
                    "<p><b>{}</b> {what}. Ask the administrator of this edge.</p>",
                    html(&email)
                ),
            );
        }
        let login = self.logins.map.get_mut(state).expect("bug: checked above");
        login.stage = Stage::Confirm {
            identity: id,
            secret: random_token(),
            attempts: 0,
        };
        let body = self.confirm_page(state, &waiting, None);
        page(c, 200, "Confirm this login", &body);
    }

    /// The confirmation page of `state`'s login (in its Confirm stage): who signed in, what
    /// is asked, where and when the login was started, and a form that takes the code the
    /// terminal printed (and a tunnel login's zone), with the page secret.
    fn confirm_page(&self, state: &str, waiting: &Waiting, error: Option<&str>) -> String {
        let Some(PendingLogin {
            purpose,
            stage: Stage::Confirm {
                identity, secret, ..
            },
            ..
        }) = self.logins.map.get(state)
        else {
            return String::new();
        };
        let email = html(identity.email.as_deref().unwrap_or_default());
        let (what, zones) = match purpose {
            Purpose::App(host) => (
                format!(
                    "<p>Signed in as <b>{email}</b>. A postern command asks for access to \
                     <b>{}</b> in your name.</p>",
                    html(host)
                ),
                String::new(),
            ),
            Purpose::Tunnel => {
                // No zone is chosen in advance: the person picks one.
                let options: String = self
                    .settings
                    .zones
                    .iter()
                    .map(|z| {
                        format!(
                            "<p><label><input type=\"radio\" name=\"zone\" value=\"{z}\" \
                             required> {z}</label></p>",
                            z = html(z)
                        )
                    })
                    .collect();
                (
                    format!(
                        "<p>Signed in as <b>{email}</b>. <code>postern tunnel login</code> asks \
                         for an origin certificate: the server that holds it may serve every \
                         hostname of the zone you choose.</p>"
                    ),
                    options,
                )
            }
        };
        let error = error
            .map(|e| format!("<p><b>{}</b></p>", html(e)))
            .unwrap_or_default();
        format!(
            "{what}<p>This login was started from <b>{}</b>, {}.</p>{error}\
             <form method=\"post\" action=\"/cdn-cgi/access/confirm\">{zones}\
             <p><label>Type the code your terminal printed: <input name=\"code\" \
             autocomplete=\"off\" autocapitalize=\"characters\" spellcheck=\"false\" \
             placeholder=\"XXXX-XXXX\" size=\"10\" required autofocus></label></p>\
             <p>If you did not just run a postern command, or your terminal shows no code, \
             someone may have sent you this link: press Cancel.</p>\
             <input type=\"hidden\" name=\"state\" value=\"{}\">\
             <input type=\"hidden\" name=\"secret\" value=\"{}\">\
             <button name=\"action\" value=\"confirm\">Confirm</button> \
             <button name=\"action\" value=\"cancel\" formnovalidate>Cancel</button></form>",
            html(&waiting.requester.to_string()),
            ago(waiting.age.as_secs()),
            html(state),
            html(secret)
        )
    }

    /// Ends `state`'s login before anything was issued: the CLI learns `why` at its next
    /// poll (so it stops waiting), and the decision is audited with `reason`.
    fn end_login(&mut self, c: &Carrier, state: &str, why: &str, reason: &str) {
        let Some(login) = self.logins.map.remove(state) else {
            return;
        };
        let now = self.now;
        let mut audit = serde_json::Map::new();
        if let Some(waiting) = self.transfers.waiting(&login.transfer, now) {
            let identity = match &login.stage {
                Stage::Confirm { identity, .. } => identity.clone(),
                _ => Identity::default(),
            };
            audit = self.login_audit(c, &login, &waiting, &identity);
        }
        audit.insert("decision".into(), "deny".into());
        audit.insert("reason".into(), reason.into());
        self.audit.record(Self::audit_event(&login.purpose), audit);
        self.refuse_transfer(&login.transfer, why);
    }

    /// `POST /cdn-cgi/access/confirm`: the person pressed Confirm (or Cancel) on the page
    /// [`EdgeCore::signed_in`] showed, in the browser bound to the login, with that page's secret.
    fn confirm(
        &mut self,
        conn: ConnId,
        c: &mut Carrier,
        head: &RequestHead,
        form: &[(String, String)],
    ) {
        let state = param(form, "state").unwrap_or("").to_owned();
        if !self.logins.map.contains_key(&state) {
            return expired(c);
        }
        // Browsers send Origin with every form POST: one from another site is refused even
        // before the page secret is looked at.
        let origin_ok = head
            .header("origin")
            .is_none_or(|o| o.eq_ignore_ascii_case(&self.public_origin()));
        if !origin_ok || !self.bound(head, &state) {
            return self.not_bound(c, &state, "confirmation");
        }
        let login = self.logins.map.get(&state).expect("bug: checked above");
        let Stage::Confirm {
            secret: expected,
            identity,
            ..
        } = &login.stage
        else {
            return page(
                c,
                409,
                "Not signed in",
                "<p>This login has not been signed in yet.</p>",
            );
        };
        let secret = param(form, "secret").unwrap_or("");
        if !ct_eq(secret.as_bytes(), expected.as_bytes()) {
            return page(
                c,
                403,
                "Confirmation refused",
                "<p>This confirmation did not come from the confirmation page. Run the postern \
                 command again.</p>",
            );
        }
        let identity = identity.clone();
        let now = self.now;
        let Some(waiting) = self.transfers.waiting(&login.transfer, now) else {
            self.logins.map.remove(&state);
            return expired(c);
        };
        let clear = format!(
            "{}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
            binder_cookie_name(&state)
        );
        let clear = [("Set-Cookie", clear.as_str())];
        if param(form, "action") != Some("confirm") {
            self.end_login(
                c,
                &state,
                "the login was cancelled in the browser",
                "cancelled in the browser",
            );
            return page_with(
                c,
                200,
                "Login cancelled",
                "<p>Nothing was issued. You can close this window.</p>",
                &clear,
            );
        }
        // The code from the terminal, typed: whoever has only the page cannot confirm, and no
        // click on a page prepared by someone else can.
        let typed = normalize_code(param(form, "code").unwrap_or(""));
        if !ct_eq(typed.as_bytes(), normalize_code(&waiting.code).as_bytes()) {
            let login = self.logins.map.get_mut(&state).expect("bug: checked above");
            let Stage::Confirm { attempts, .. } = &mut login.stage else {
                unreachable!("bug: stage checked above");
            };
            *attempts += 1;
            if *attempts >= MAX_CONFIRM_ATTEMPTS {
                self.end_login(
                    c,
                    &state,
                    "the code typed in the browser did not match this login's",
                    "wrong confirmation code",
                );
                return page_with(
                    c,
                    403,
                    "Wrong code",
                    "<p>That is not the code of this login. Nothing was issued; run the postern \
                     command again.</p>",
                    &clear,
                );
            }
            let body = self.confirm_page(
                &state,
                &waiting,
                Some("That is not the code your terminal printed for this login."),
            );
            return page(c, 403, "Confirm this login", &body);
        }
        let zone = param(form, "zone").unwrap_or("").to_ascii_lowercase();
        if Purpose::Tunnel == login.purpose && !self.settings.zones.contains(&zone) {
            let body = self.confirm_page(&state, &waiting, Some("Choose one of the zones."));
            return page(c, 400, "Confirm this login", &body);
        }
        // The policy again: a reload since the sign-in may have changed it.
        let allowed = match &login.purpose {
            Purpose::App(host) => self
                .settings
                .application(host)
                .is_some_and(|app| app.decide(&identity).allow),
            Purpose::Tunnel => policy::evaluate(&self.settings.tunnel_admins, &identity).allow,
        };
        if !allowed {
            self.end_login(
                c,
                &state,
                "access denied: the policy changed during the login",
                "policy",
            );
            return page_with(
                c,
                403,
                "Access denied",
                "<p>This login is no longer allowed. Ask the administrator of this edge.</p>",
                &clear,
            );
        }
        let login = self.logins.map.remove(&state).expect("bug: checked above");
        let mut audit = self.login_audit(c, &login, &waiting, &identity);
        let event = Self::audit_event(&login.purpose);
        let email = identity.email.clone().unwrap_or_default();
        let (payload, done_html) = match &login.purpose {
            Purpose::App(host) => {
                let app = self.settings.application(host).expect("bug: allowed above");
                let exp = self.unix.saturating_add(app.session_duration);
                let mut payload = self.app_token(app, &identity, exp);
                // One login per zone: the zone session rides in the same sealed transfer.
                if self.logins.zone_wanted.remove(&login.transfer) {
                    if let Some(zone) = self.issue_zone_session(host, &identity) {
                        payload.push('\n');
                        payload.push_str(&zone);
                    }
                }
                (
                    payload.into_bytes(),
                    format!(
                        "<p>Signed in as <b>{}</b> for <b>{}</b>.</p><p>You can close this \
                         window and return to your terminal.</p>",
                        html(&email),
                        html(host)
                    ),
                )
            }
            Purpose::Tunnel => {
                let credential = match self.issue_origin_credential(&zone) {
                    Ok(cred) => cred,
                    Err(e) => {
                        warn!("tunnel login: cannot issue a certificate: {e}");
                        self.refuse_transfer(
                            &login.transfer,
                            "the edge could not issue a certificate",
                        );
                        return page(
                            c,
                            500,
                            "Error",
                            "<p>The edge could not issue a certificate.</p>",
                        );
                    }
                };
                audit.insert("zone".into(), zone.clone().into());
                audit.insert(
                    "certificate".into(),
                    crate::pki::fingerprint(&credential.cert).into(),
                );
                (
                    credential.to_pem().into_bytes(),
                    format!(
                        "<p>An origin certificate for zone <b>{}</b> is on its way to your \
                         terminal.</p><p>You can close this window.</p>",
                        html(&zone)
                    ),
                )
            }
        };
        let title = match login.purpose {
            Purpose::App(_) => "Signed in",
            Purpose::Tunnel => "Origin authorized",
        };
        let done = Confirmed {
            event,
            audit,
            email,
            requester: waiting.requester,
            title,
            html: done_html,
            clear: clear[0].1.to_owned(),
        };
        match self.transfers.complete(&login.transfer, &payload, now) {
            // In a pool, the CLI may poll another edge: the sealed token goes to the store,
            // and the page says "signed in" once it is there.
            Ok(()) if self.shared_logins() => self.publish_sealed(conn, c, &login.transfer, done),
            Ok(()) => self.confirmed(c, done),
            Err(e) => page(
                c,
                400,
                "Login expired",
                &format!("<p>{}</p>", html(&e.to_string())),
            ),
        }
    }

    /// The token of a confirmed login is on its way to the CLI: audit, log, and the page.
    fn confirmed(&mut self, c: &mut Carrier, done: Confirmed) {
        let Confirmed {
            event,
            mut audit,
            email,
            requester,
            title,
            html: done_html,
            clear,
        } = done;
        audit.insert("decision".into(), "allow".into());
        self.audit.record(event, audit);
        info!(
            "{event}: {} confirmed a login started from {requester}",
            escape(&email, crate::limits::MAX_LOGGED_NAME),
        );
        page_with(c, 200, title, &done_html, &[("Set-Cookie", clear.as_str())]);
    }

    /// The audit fields every login decision carries.
    fn login_audit(
        &self,
        c: &Carrier,
        login: &PendingLogin,
        waiting: &Waiting,
        id: &Identity,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut audit = serde_json::Map::new();
        audit.insert("email".into(), id.email.clone().unwrap_or_default().into());
        audit.insert("groups".into(), id.groups.clone().into());
        if !id.authn.amr.is_empty() {
            audit.insert("amr".into(), id.authn.amr.clone().into());
        }
        if let Some(acr) = &id.authn.acr {
            audit.insert("acr".into(), acr.clone().into());
        }
        if let Purpose::App(host) = &login.purpose {
            audit.insert("hostname".into(), host.clone().into());
        }
        audit.insert("peer".into(), c.peer.to_string().into());
        audit.insert("requester".into(), waiting.requester.to_string().into());
        audit
    }

    /// A new origin credential for `zone`, signed by the edge's origin CA.
    fn issue_origin_credential(&self, zone: &str) -> std::io::Result<OriginCredential> {
        let (cert, key) = self.settings.origin_ca.issue_origin(zone)?;
        let host = self.public_url().trim_start_matches("https://").to_owned();
        Ok(OriginCredential {
            key,
            cert,
            zone: zone.to_owned(),
            edge: Some(if host.contains(':') {
                host
            } else {
                format!("{host}:443")
            }),
            ca: self.settings.tls_ca_certs(),
        })
    }

    /// A signed app token for `app`, for `identity`, issued now and valid until `exp`: who,
    /// and how they signed in (`amr`, `acr`, `auth_time`) so that every later decision (each
    /// connection, a reload) can apply step-up rules as the login did.
    pub(super) fn app_token(
        &self,
        app: &crate::edge::config::Application,
        identity: &Identity,
        exp: u64,
    ) -> String {
        let email = identity.email.clone().unwrap_or_default();
        let issued = self.unix;
        let mut claims = serde_json::json!({
            "iss": self.public_url(),
            "aud": [app.hostname],
            "sub": email,
            "email": email,
            "groups": identity.groups,
            "iat": issued,
            "nbf": issued,
            "exp": exp,
            "jti": random_token(),
        });
        let authn = &identity.authn;
        if !authn.amr.is_empty() {
            claims["amr"] = authn.amr.clone().into();
        }
        if let Some(acr) = &authn.acr {
            claims["acr"] = acr.clone().into();
        }
        if let Some(t) = authn.auth_time {
            claims["auth_time"] = t.into();
        }
        self.keys.sign(&claims)
    }

    /// Verifies an app token for `host`'s application; the identity it carries.
    pub(super) fn verify_app_token(
        &self,
        token: &str,
        app_hostname: &str,
    ) -> Result<Identity, String> {
        let claims = self
            .keys
            .verify_app_token(
                token,
                &self.public_url(),
                app_hostname,
                self.unix,
                APP_TOKEN_LEEWAY_SECS,
            )
            .map_err(|e| e.to_string())?;
        // `sessions kill --email` revokes the user's zone sessions issued until then; the app
        // tokens those sessions minted (cached by the CLI for their whole lifetime) go with
        // them, or a killed user would be back at once, and could sign SSH certificates.
        if let (Some(email), Some(zone)) = (&claims.email, self.settings.zone_of(app_hostname)) {
            if self.tokens.zone_session_revoked(zone, email, claims.iat) {
                return Err(
                    "its user's sessions were ended after it was issued: sign in again".into(),
                );
            }
        }
        Ok(Identity {
            email: claims.email,
            groups: claims.groups,
            service_token: None,
            authn: policy::Authentication {
                amr: claims.amr,
                acr: claims.acr,
                auth_time: claims.auth_time,
            },
        })
    }
}

/// A typed confirmation code as compared: letters upper-cased, spaces and dashes dropped.
fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .take(64)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// An address the dev sign-in will print: printable ASCII with one `@`, no spaces.
fn plausible_email(e: &str) -> bool {
    (3..=254).contains(&e.len())
        && e.bytes().filter(|&b| b == b'@').count() == 1
        && e.bytes().all(|b| b.is_ascii_graphic())
        && !e.starts_with('@')
        && !e.ends_with('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binder_cookies_are_found_by_name_among_others() {
        let head = RequestHead {
            method: "GET".into(),
            target: "/".into(),
            headers: vec![
                (
                    "Cookie".into(),
                    "a=1; __Host-postern-abcdefghijkl=BIND".into(),
                ),
                ("cookie".into(), "b=2".into()),
            ],
        };
        let name = binder_cookie_name("abcdefghijklmnopqrstuvwxyz");
        assert_eq!(name, "__Host-postern-abcdefghijkl");
        assert_eq!(cookie(&head, &name), Some("BIND"));
        assert_eq!(cookie(&head, "b"), Some("2"));
        assert_eq!(cookie(&head, "__Host-postern-other"), None);
    }

    #[test]
    fn dev_emails_that_would_garble_a_terminal_are_refused() {
        assert!(plausible_email("alice@example.com"));
        assert!(!plausible_email("al\u{1b}[2Jice@example.com"));
        assert!(!plausible_email("alice@example.com\nroot@x"));
        assert!(!plausible_email("a b@c"));
        assert!(!plausible_email("@@"));
    }

    #[test]
    fn login_entry_points() {
        assert!(EdgeCore::is_login_entry("POST", "/cdn-cgi/access/transfer"));
        assert!(!EdgeCore::is_login_entry("GET", "/cdn-cgi/access/transfer"));
        assert!(EdgeCore::is_login_entry("GET", "/cdn-cgi/access/cli"));
        assert!(EdgeCore::is_login_entry(
            "POST",
            "/cdn-cgi/access/dev-login"
        ));
        assert!(!EdgeCore::is_login_entry("POST", "/cdn-cgi/access/confirm"));
        // A console sign-in start is a login entry too (its pages are not).
        assert!(EdgeCore::is_login_entry(
            "GET",
            "/cdn-cgi/access/admin/sign-in"
        ));
        assert!(!EdgeCore::is_login_entry("GET", "/cdn-cgi/access/admin"));
    }
}
