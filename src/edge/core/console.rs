//! The admin console (issue 16): `https://<public_url>/cdn-cgi/access/admin`, server-rendered
//! pages without JavaScript, for the people the config's `admins` policy names.
//!
//! ```text
//!  GET /cdn-cgi/access/admin[/…] without a console session
//!    └─302─▶ /cdn-cgi/access/admin/sign-in  (a login entry: counts against the login rate)
//!              └─ sign-in state + binder cookie (Lax, this browser) ─302─▶ provider /authorize
//!  provider ─302─▶ /cdn-cgi/access/callback?code&state   (login.rs hands console states here)
//!              └─ binder checked ─▶ worker: code exchange + ID token ─▶ identity
//!              └─ `admins` policy: deny ─▶ 403 page + audit `console` (deny)
//!                                  allow ─▶ console session: `__Host-postern-console` cookie
//!                                           (Secure, HttpOnly, SameSite=Strict, Path=/),
//!                                           audit `console` (allow), page ─▶ the console
//!  GET  /cdn-cgi/access/admin            overview: tunnels, connections, chart of the last hour
//!  GET  /cdn-cgi/access/admin/sessions   live sessions, a Kill form per row
//!  POST /cdn-cgi/access/admin/sessions/kill       (csrf, id)   ─▶ audit `session_kill`
//!  GET  /cdn-cgi/access/admin/audit?identity&hostname&decision&event&since&until
//!  GET  /cdn-cgi/access/admin/tokens     service tokens
//!  POST /cdn-cgi/access/admin/tokens/create       (csrf, name) ─▶ store ─▶ secret shown once
//!  POST /cdn-cgi/access/admin/tokens/revoke       (csrf, client_id) ─▶ store ─▶ sessions end
//!  POST /cdn-cgi/access/admin/sign-out            (csrf)
//! ```
//!
//! Contract:
//! - Off (404 for every console path) unless the config has `admins`; `--dev` has none (its
//!   sign-in takes any email on trust, so it must not open a console).
//! - Served on the public login host only. A console session is a random 256-bit value in the
//!   cookie; the edge keeps only its SHA-256 (at most [`MAX_CONSOLE_SESSIONS`], each for
//!   [`CONSOLE_SESSION_SECS`]), never logs it, and holds its identity to the `admins` policy
//!   in force at every request (a reload that drops an admin ends their console too).
//! - Every POST carries the session's CSRF token (random, compared in constant time) and, as
//!   browsers send it, an `Origin` equal to the public URL's; anything else is a 403 and an
//!   audit line. `SameSite=Strict` already keeps the cookie off cross-site requests.
//! - Every string from a peer (identities, hostnames, token names, audit fields) is
//!   HTML-escaped. Every change (kill, token create, token revoke) is an audit line naming the
//!   admin.
//! - Nothing here reads a file or waits: the audit page reads the lines the [`Audit`] keeps in
//!   memory, and token changes go to the store worker like the admin API's.
//!
//! [`Audit`]: crate::audit::Audit

mod chart;
mod pages;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::{info, warn};
use serde_json::{Map, Value};

use super::login::{cookie, random_token, redirect, Done, Job};
use super::sessions::Selector;
use super::{Carrier, ConnId, EdgeCore, Waiter};
use crate::edge::config::IdentityProvider;
use crate::limits::{
    CONSOLE_SESSION_SECS, CONSOLE_SIGNIN_SECS, MAX_CONSOLE_SESSIONS, MAX_CONSOLE_SIGNINS,
    MAX_LOGGED_NAME,
};
use crate::logging::escape;
use crate::proto::http::RequestHead;
use crate::proto::policy::{self, Identity};
use crate::proto::url::{self, html, param};
use crate::store::{self, ct_eq, Request, Revocation, StoreError};

pub(super) use chart::Chart;

/// Where the console lives.
pub(super) const BASE: &str = "/cdn-cgi/access/admin";
/// Starts a sign-in (a login entry point: rate-limited like the others).
pub(super) const SIGN_IN: &str = "/cdn-cgi/access/admin/sign-in";
/// The console session's cookie.
const COOKIE: &str = "__Host-postern-console";

/// Whether `path` is one of the console's.
pub(super) fn is_console_path(path: &str) -> bool {
    path == BASE || path.strip_prefix(BASE).is_some_and(|p| p.starts_with('/'))
}

/// A sign-in between the redirect to the provider and the callback.
struct SignIn {
    /// The binder cookie's value: the callback must come to the browser that started it.
    binder: String,
    verifier: String,
    nonce: String,
    started: Instant,
    /// The code exchange is with the worker.
    exchanging: bool,
    /// The console page to open once signed in.
    next: String,
}

/// A signed-in admin.
struct Session {
    identity: Identity,
    /// The CSRF token every form of this session carries.
    csrf: String,
    expires: Instant,
}

/// The console's state in the edge: sign-ins, sessions, and the chart's counters.
#[derive(Default)]
pub(super) struct Console {
    signins: HashMap<String, SignIn>,
    /// By SHA-256 of the cookie value (hex): the value itself is kept nowhere.
    sessions: HashMap<String, Session>,
    pub(super) chart: Chart,
}

impl Console {
    /// Whether `state` names a console sign-in (the callback and the worker hand it here).
    pub(super) fn signing_in(&self, state: &str) -> bool {
        !state.is_empty() && self.signins.contains_key(state)
    }

    fn expire(&mut self, now: Instant) {
        let max = Duration::from_secs(CONSOLE_SIGNIN_SECS);
        self.signins
            .retain(|_, s| s.exchanging || now.saturating_duration_since(s.started) < max);
        self.sessions.retain(|_, s| now < s.expires);
    }
}

/// Whether `next` may be where a sign-in leads: a console page (a path of ours, no query, no
/// other site).
fn valid_next(next: &str) -> bool {
    is_console_path(next)
        && next != SIGN_IN
        && next
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'/' || b == b'-')
}

/// The hex SHA-256 of a cookie value: what the session map is keyed by.
fn digest(value: &str) -> String {
    store::hex(ring::digest::digest(&ring::digest::SHA256, value.as_bytes()).as_ref())
}

/// The binder cookie of console sign-in `state`.
fn binder_name(state: &str) -> String {
    format!("__Host-postern-admin-{}", &state[..state.len().min(12)])
}

/// Who an admin is, for pages and audit lines.
fn who(id: &Identity) -> String {
    id.email.clone().unwrap_or_else(|| "(no email)".into())
}

/// What a console request is about, after the session check.
struct Admin {
    identity: Identity,
    csrf: String,
    /// The session's key in [`Console::sessions`].
    key: String,
}

/// A console action waiting for the store.
pub(super) struct Step {
    /// Who asked (email), and their session's key (the page after is theirs).
    admin: String,
    key: String,
    then: Then,
}

enum Then {
    CreateToken { name: String },
    RevokeToken { name: String },
}

impl EdgeCore {
    /// Every request under [`BASE`] (routed here by `login::on_page`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_console(
        &mut self,
        conn: ConnId,
        c: &mut Carrier,
        head: &RequestHead,
        host: &str,
        path: &str,
        query: &[(String, String)],
        body: &[u8],
    ) {
        let now = self.now;
        self.console.expire(now);
        let Some(admins) = self.settings.admins.clone() else {
            return pages::plain(c, 404, "Not found", "<p>No such page.</p>");
        };
        if host != self.public_host() {
            // The console's cookie lives on the login host only.
            if head.method == "GET" {
                return redirect(c, &format!("{}{BASE}", self.public_url()), &[]);
            }
            return pages::plain(c, 404, "Not found", "<p>No such page.</p>");
        }
        if (head.method.as_str(), path) == ("GET", SIGN_IN) {
            return self.console_sign_in(c, query);
        }
        let key = cookie(head, COOKIE).map(digest).unwrap_or_default();
        let Some(session) = self.console.sessions.get(&key) else {
            if head.method == "GET" {
                return redirect(c, &url::with_query(SIGN_IN, &[("next", path)]), &[]);
            }
            return pages::plain(
                c,
                403,
                "Not signed in",
                &format!(
                    "<p>Your console session has ended. <a href=\"{BASE}\">Sign in again</a>.</p>"
                ),
            );
        };
        // The policy in force now, not the one at sign-in.
        let verdict = policy::evaluate(&admins, &session.identity);
        let admin = Admin {
            identity: session.identity.clone(),
            csrf: session.csrf.clone(),
            key: key.clone(),
        };
        if !verdict.allow {
            self.console.sessions.remove(&key);
            self.console_audit(
                "console",
                &admin,
                "access",
                "deny",
                Some("no longer an admin"),
                Map::new(),
            );
            return pages::not_admin(c, &who(&admin.identity));
        }
        if head.method == "POST" {
            let form = std::str::from_utf8(body).ok().and_then(url::parse_query);
            let Some(form) = form else {
                return pages::plain(c, 400, "Bad request", "<p>The form is malformed.</p>");
            };
            // Browsers send Origin with every form POST; the token proves the form is ours.
            let origin_ok = head
                .header("origin")
                .is_none_or(|o| o.eq_ignore_ascii_case(&self.public_origin()));
            let token = param(&form, "csrf").unwrap_or("");
            if !origin_ok || !ct_eq(token.as_bytes(), admin.csrf.as_bytes()) {
                warn!(
                    "console: a POST to {} by {} without the console's CSRF token (or from \
                     another origin) was refused; peer {}",
                    escape(path, MAX_LOGGED_NAME),
                    escape(&who(&admin.identity), MAX_LOGGED_NAME),
                    c.peer
                );
                let mut f = Map::new();
                f.insert(
                    "path".into(),
                    path.chars()
                        .take(MAX_LOGGED_NAME)
                        .collect::<String>()
                        .into(),
                );
                f.insert("peer".into(), c.peer.to_string().into());
                self.console_audit(
                    "console",
                    &admin,
                    "post",
                    "deny",
                    Some("missing or wrong CSRF token"),
                    f,
                );
                return pages::plain(
                    c,
                    403,
                    "Refused",
                    "<p>This form did not come from the console (its CSRF token is missing or \
                     wrong). Open the console again and use its buttons.</p>",
                );
            }
            return match path {
                "/cdn-cgi/access/admin/sessions/kill" => self.console_kill(c, &admin, &form),
                "/cdn-cgi/access/admin/tokens/create" => {
                    self.console_create_token(conn, c, &admin, &form)
                }
                "/cdn-cgi/access/admin/tokens/revoke" => {
                    self.console_revoke_token(conn, c, &admin, &form)
                }
                "/cdn-cgi/access/admin/sign-out" => {
                    self.console.sessions.remove(&key);
                    self.console_audit("console", &admin, "sign_out", "allow", None, Map::new());
                    let clear =
                        format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
                    pages::plain_with(
                        c,
                        200,
                        "Signed out",
                        &format!("<p>Signed out of the console. <a href=\"{BASE}\">Sign in again</a>.</p>"),
                        &[("Set-Cookie", clear.as_str())],
                    )
                }
                _ => pages::plain(c, 404, "Not found", "<p>No such action.</p>"),
            };
        }
        if head.method != "GET" {
            return pages::plain(
                c,
                405,
                "Method not allowed",
                "<p>Use the console's pages.</p>",
            );
        }
        match path {
            BASE => {
                let body = self.console_overview();
                pages::console(c, 200, "Overview", &admin, &body);
            }
            "/cdn-cgi/access/admin/sessions" => {
                let body = self.console_sessions(&admin, None);
                pages::console(c, 200, "Sessions", &admin, &body);
            }
            "/cdn-cgi/access/admin/audit" => {
                let body = pages::audit(&self.audit.recent(), query);
                pages::console(c, 200, "Audit log", &admin, &body);
            }
            "/cdn-cgi/access/admin/tokens" => {
                let body = self.console_tokens(&admin, None);
                pages::console(c, 200, "Service tokens", &admin, &body);
            }
            _ => pages::plain(c, 404, "Not found", "<p>No such page.</p>"),
        }
    }

    /// `GET /cdn-cgi/access/admin/sign-in`: a sign-in state, the binder cookie, and off to
    /// the provider.
    fn console_sign_in(&mut self, c: &mut Carrier, query: &[(String, String)]) {
        let provider = match (&self.settings.identity, &self.oidc) {
            (IdentityProvider::Oidc(_), Some(p)) => p.clone(),
            _ => {
                return pages::plain(
                    c,
                    501,
                    "No sign-in configured",
                    "<p>The console signs admins in at the identity provider, and this edge \
                     has none.</p>",
                )
            }
        };
        if self.console.signins.len() >= MAX_CONSOLE_SIGNINS {
            // The oldest goes: an anonymous flood cannot lock admins out for long (and the
            // login rate bounds each source).
            if let Some(oldest) = self
                .console
                .signins
                .iter()
                .filter(|(_, s)| !s.exchanging)
                .min_by_key(|(_, s)| s.started)
                .map(|(k, _)| k.clone())
            {
                self.console.signins.remove(&oldest);
            } else {
                return pages::plain(
                    c,
                    503,
                    "Busy",
                    "<p>Many sign-ins are under way: try again in a moment.</p>",
                );
            }
        }
        let state = random_token();
        let nonce = random_token();
        let binder = random_token();
        let (verifier, challenge) = crate::oidc::pkce();
        let location =
            provider.authorize_url(&self.callback_url(), &state, &nonce, &challenge, &[]);
        let set = format!(
            "{}={binder}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={CONSOLE_SIGNIN_SECS}",
            binder_name(&state)
        );
        self.console.signins.insert(
            state,
            SignIn {
                binder,
                verifier,
                nonce,
                started: self.now,
                exchanging: false,
                next: param(query, "next")
                    .filter(|p| valid_next(p))
                    .unwrap_or(BASE)
                    .to_owned(),
            },
        );
        redirect(c, &location, &[("Set-Cookie", &set)]);
    }

    /// The provider sent the browser back for a console sign-in: the code goes to the
    /// worker (the browser waits, parked).
    pub(super) fn console_callback(
        &mut self,
        conn: ConnId,
        c: &mut Carrier,
        head: &RequestHead,
        state: &str,
        query: &[(String, String)],
    ) {
        let bound = self.console.signins.get(state).is_some_and(|s| {
            cookie(head, &binder_name(state))
                .is_some_and(|v| ct_eq(v.as_bytes(), s.binder.as_bytes()))
        });
        if !bound {
            self.console.signins.remove(state);
            warn!(
                "console sign-in refused at the callback: not the browser that started it; peer {}",
                c.peer
            );
            return pages::plain(
                c,
                403,
                "Sign-in started in another browser",
                "<p>This sign-in was not started in this browser. Open the console again.</p>",
            );
        }
        if let Some(err) = param(query, "error") {
            self.console.signins.remove(state);
            let code: String = err
                .chars()
                .filter(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
                .take(64)
                .collect();
            return pages::plain(
                c,
                403,
                "Sign-in failed",
                &format!(
                    "<p>The identity provider refused the sign-in: <code>{}</code></p>",
                    html(&code)
                ),
            );
        }
        let Some(code) = param(query, "code") else {
            return pages::plain(c, 400, "Bad request", "<p>The provider sent no code.</p>");
        };
        let redirect_uri = self.callback_url();
        let (Some(signin), Some(worker)) = (self.console.signins.get_mut(state), &self.worker)
        else {
            return pages::plain(c, 400, "Bad request", "<p>No identity provider.</p>");
        };
        if signin.exchanging {
            return pages::plain(
                c,
                409,
                "Sign-in in progress",
                "<p>This sign-in is already being finished in another tab.</p>",
            );
        }
        let job = Job {
            conn,
            state: state.to_owned(),
            code: code.to_owned(),
            verifier: signin.verifier.clone(),
            nonce: signin.nonce.clone(),
            redirect: redirect_uri,
        };
        match worker.jobs.try_send(job) {
            Ok(()) => {
                signin.exchanging = true;
                c.core.park();
            }
            Err(_) => pages::plain(
                c,
                503,
                "Busy",
                "<p>The edge is finishing many sign-ins: open the console again in a moment.</p>",
            ),
        }
    }

    /// The worker finished a console sign-in's code exchange: the `admins` policy decides.
    pub(super) fn console_signed_in(&mut self, done: Done) {
        let Some(signin) = self.console.signins.remove(&done.state) else {
            return;
        };
        let Some(mut c) = self.take_waiting_carrier(done.conn) else {
            return;
        };
        let clear_binder = format!(
            "{}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
            binder_name(&done.state)
        );
        match done.result {
            Err(e) => {
                warn!("console sign-in failed: {e}");
                let failed = Admin {
                    identity: Identity::default(),
                    csrf: String::new(),
                    key: String::new(),
                };
                let mut f = Map::new();
                f.insert("peer".into(), c.peer.to_string().into());
                self.console_audit(
                    "console",
                    &failed,
                    "sign_in",
                    "deny",
                    Some("sign-in failed at the identity provider"),
                    f,
                );
                pages::plain(
                    &mut c,
                    403,
                    "Sign-in failed",
                    "<p>The sign-in could not be verified. Open the console again.</p>",
                );
            }
            Ok(identity) => {
                let verdict = self
                    .settings
                    .admins
                    .as_deref()
                    .map(|a| policy::evaluate(a, &identity));
                let value = crate::proto::base64::encode_url(&crate::io::random_bytes::<32>());
                let admin = Admin {
                    identity,
                    csrf: random_token(),
                    key: digest(&value),
                };
                let mut f = Map::new();
                f.insert("peer".into(), c.peer.to_string().into());
                f.insert("groups".into(), admin.identity.groups.clone().into());
                match verdict {
                    Some(v) if v.allow => {
                        f.insert("policy".into(), v.policy.into());
                        self.console_audit("console", &admin, "sign_in", "allow", None, f);
                        info!(
                            "console: {} signed in from {}",
                            escape(&who(&admin.identity), MAX_LOGGED_NAME),
                            c.peer
                        );
                        if self.console.sessions.len() >= MAX_CONSOLE_SESSIONS {
                            if let Some(oldest) = self
                                .console
                                .sessions
                                .iter()
                                .min_by_key(|(_, s)| s.expires)
                                .map(|(k, _)| k.clone())
                            {
                                self.console.sessions.remove(&oldest);
                            }
                        }
                        self.console.sessions.insert(
                            admin.key.clone(),
                            Session {
                                identity: admin.identity.clone(),
                                csrf: admin.csrf.clone(),
                                expires: self.now + Duration::from_secs(CONSOLE_SESSION_SECS),
                            },
                        );
                        let set = format!(
                            "{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; \
                             Max-Age={CONSOLE_SESSION_SECS}"
                        );
                        pages::signed_in(
                            &mut c,
                            &who(&admin.identity),
                            &signin.next,
                            &[("Set-Cookie", &set), ("Set-Cookie", &clear_binder)],
                        );
                    }
                    _ => {
                        let policy = verdict.map_or("console off".into(), |v| v.policy);
                        f.insert("policy".into(), policy.into());
                        self.console_audit(
                            "console",
                            &admin,
                            "sign_in",
                            "deny",
                            Some("not an admin"),
                            f,
                        );
                        info!(
                            "console: {} is not an admin (peer {})",
                            escape(&who(&admin.identity), MAX_LOGGED_NAME),
                            c.peer
                        );
                        pages::not_admin(&mut c, &who(&admin.identity));
                    }
                }
            }
        }
        self.put_back_carrier(done.conn, c);
    }

    /// An audit line for a console event, naming the admin.
    fn console_audit(
        &mut self,
        event: &str,
        admin: &Admin,
        action: &str,
        decision: &str,
        reason: Option<&str>,
        mut fields: Map<String, Value>,
    ) {
        fields.insert("admin".into(), who(&admin.identity).into());
        fields.insert("action".into(), action.into());
        fields.insert("via".into(), "console".into());
        fields.insert("decision".into(), decision.into());
        if let Some(r) = reason {
            fields.insert("reason".into(), r.into());
        }
        self.audit.record(event, fields);
    }

    /// `POST …/sessions/kill`: ends the session `id` names.
    fn console_kill(&mut self, c: &mut Carrier, admin: &Admin, form: &[(String, String)]) {
        let id = param(form, "id").unwrap_or("").to_owned();
        let killed = if id.is_empty() {
            Vec::new()
        } else {
            self.kill_sessions(&Selector::Id(id.clone()), None)
        };
        let mut f = Map::new();
        f.insert(
            "selector".into(),
            format!("{:?}", Selector::Id(id.chars().take(64).collect())).into(),
        );
        f.insert("killed".into(), killed.clone().into());
        let decision = if killed.is_empty() { "deny" } else { "allow" };
        let reason = killed.is_empty().then_some("no such open session");
        self.console_audit("session_kill", admin, "kill", decision, reason, f);
        let notice = if killed.is_empty() {
            format!(
                "<p class=\"notice\">No open session <code>{}</code>: it had ended already.</p>",
                html(&id)
            )
        } else {
            info!(
                "console: {} ended session {}",
                escape(&who(&admin.identity), MAX_LOGGED_NAME),
                escape(&id, MAX_LOGGED_NAME)
            );
            format!(
                "<p class=\"notice\">Session <code>{}</code> ended: its client was told \
                 \"session ended by an administrator\".</p>",
                html(&id)
            )
        };
        let body = self.console_sessions(admin, Some(&notice));
        pages::console(c, 200, "Sessions", admin, &body);
    }

    /// `POST …/tokens/create`: the store creates it; the page shows the secret once.
    fn console_create_token(
        &mut self,
        conn: ConnId,
        c: &mut Carrier,
        admin: &Admin,
        form: &[(String, String)],
    ) {
        let name = param(form, "name").unwrap_or("").trim().to_owned();
        let step = Step {
            admin: who(&admin.identity),
            key: admin.key.clone(),
            then: Then::CreateToken { name: name.clone() },
        };
        self.console_submit(conn, c, admin, Request::CreateServiceToken { name }, step);
    }

    /// `POST …/tokens/revoke`: the store records the revocation; sessions with it end.
    fn console_revoke_token(
        &mut self,
        conn: ConnId,
        c: &mut Carrier,
        admin: &Admin,
        form: &[(String, String)],
    ) {
        let client_id = param(form, "client_id").unwrap_or("");
        let Some((t, revoked)) = self
            .tokens
            .list()
            .into_iter()
            .find(|(t, _)| t.client_id == client_id)
        else {
            let notice = "<p class=\"notice\">No such service token.</p>".to_owned();
            let body = self.console_tokens(admin, Some(&notice));
            return pages::console(c, 404, "Service tokens", admin, &body);
        };
        if revoked {
            let notice = format!(
                "<p class=\"notice\">Service token <b>{}</b> is revoked already.</p>",
                html(&t.name)
            );
            let body = self.console_tokens(admin, Some(&notice));
            return pages::console(c, 200, "Service tokens", admin, &body);
        }
        let (name, client_id) = (t.name.clone(), t.client_id.clone());
        let request = Request::Revoke(Revocation::ServiceToken {
            client_id,
            reason: format!("revoked in the admin console by {}", who(&admin.identity)),
        });
        let step = Step {
            admin: who(&admin.identity),
            key: admin.key.clone(),
            then: Then::RevokeToken { name },
        };
        self.console_submit(conn, c, admin, request, step);
    }

    /// Hands a console change to the store worker; the browser waits, parked.
    fn console_submit(
        &mut self,
        conn: ConnId,
        c: &mut Carrier,
        admin: &Admin,
        request: Request,
        step: Step,
    ) {
        let waiter = Waiter::Console {
            conn,
            step: Box::new(step),
        };
        match self.store.submit(request, waiter) {
            Ok(_) => c.core.park(),
            Err(_busy) => {
                let notice =
                    "<p class=\"notice\">The edge is busy: try again in a moment.</p>".to_owned();
                let body = self.console_tokens(admin, Some(&notice));
                pages::console(c, 503, "Service tokens", admin, &body);
            }
        }
    }

    /// The store answered a console change: the audit line, and the page if the browser is
    /// still there (a created token's secret is shown to it, or to no one).
    pub(super) fn console_answered(&mut self, conn: ConnId, step: Step, answer: store::Answer) {
        let Step { admin, key, then } = step;
        let (notice, status) = match (then, answer) {
            (
                Then::CreateToken { name },
                store::Answer::ServiceTokenCreated {
                    result: Ok((record, secret)),
                    ..
                },
            ) => {
                let mut f = Map::new();
                f.insert("admin".into(), admin.clone().into());
                f.insert("action".into(), "create".into());
                f.insert("via".into(), "console".into());
                f.insert("name".into(), record.name.clone().into());
                f.insert("client_id".into(), record.client_id.clone().into());
                f.insert("decision".into(), "allow".into());
                self.audit.record("service_token", f);
                info!(
                    "console: {} created service token {name} ({})",
                    escape(&admin, MAX_LOGGED_NAME),
                    record.client_id
                );
                (
                    pages::token_created(&record.name, &record.client_id, secret.expose()),
                    201,
                )
            }
            (Then::CreateToken { name }, answer) => {
                let why = match answer.error() {
                    Some(StoreError::Exists(_)) => {
                        format!("a service token named {name:?} already exists")
                    }
                    Some(StoreError::Invalid(why)) => why,
                    Some(e) => {
                        warn!("console: token create: {e}");
                        "the edge could not record the token".into()
                    }
                    None => "the edge could not record the token".into(),
                };
                let mut f = Map::new();
                f.insert("admin".into(), admin.clone().into());
                f.insert("action".into(), "create".into());
                f.insert("via".into(), "console".into());
                f.insert(
                    "name".into(),
                    name.chars()
                        .take(MAX_LOGGED_NAME)
                        .collect::<String>()
                        .into(),
                );
                f.insert("decision".into(), "deny".into());
                f.insert("reason".into(), why.clone().into());
                self.audit.record("service_token", f);
                (
                    format!("<p class=\"notice\">Not created: {}.</p>", html(&why)),
                    400,
                )
            }
            (Then::RevokeToken { name }, answer) => {
                let ok = answer.is_ok();
                let mut f = Map::new();
                f.insert("admin".into(), admin.clone().into());
                f.insert("action".into(), "revoke".into());
                f.insert("via".into(), "console".into());
                f.insert("name".into(), name.clone().into());
                f.insert("decision".into(), if ok { "allow" } else { "deny" }.into());
                if let Some(e) = answer.error() {
                    warn!("console: token revoke: {e}");
                    f.insert("reason".into(), e.to_string().into());
                }
                self.audit.record("service_token", f);
                let notice = if ok {
                    info!(
                        "console: {} revoked service token {name}",
                        escape(&admin, MAX_LOGGED_NAME)
                    );
                    format!(
                        "<p class=\"notice\">Service token <b>{}</b> revoked: edges refuse it \
                         and its open sessions ended.</p>",
                        html(&name)
                    )
                } else {
                    "<p class=\"notice\">The edge could not record the revocation.</p>".into()
                };
                (notice, if ok { 200 } else { 500 })
            }
        };
        let Some(mut c) = self.take_waiting_carrier(conn) else {
            return;
        };
        // The session may have ended meanwhile; the page is for whoever asked.
        let admin = self.console.sessions.get(&key).map(|s| Admin {
            identity: s.identity.clone(),
            csrf: s.csrf.clone(),
            key: key.clone(),
        });
        match admin {
            Some(admin) => {
                let body = self.console_tokens(&admin, Some(&notice));
                pages::console(&mut c, status, "Service tokens", &admin, &body);
            }
            None => pages::plain(&mut c, status, "Service tokens", &notice),
        }
        self.put_back_carrier(conn, c);
    }

    /// Once a second: the chart's counters, and expired console state goes.
    pub(super) fn console_tick(&mut self) {
        let now = self.now;
        self.console.expire(now);
        let (mut open, mut live_bytes) = (0u32, 0u64);
        // Every loop's sessions: a carrier on another loop has its stub here (`loops.rs`).
        for slot in 0..self.conns.len() {
            if let Some(s) = self.live_session(slot) {
                open = open.saturating_add(1);
                live_bytes = live_bytes.saturating_add(s.bytes.total());
            }
        }
        self.console.chart.sample(self.unix, open, live_bytes);
    }

    /// The overview page's body: the chart, the tunnels and their connections.
    fn console_overview(&self) -> String {
        let mut named = Vec::new();
        for zone in &self.settings.zones {
            for (id, rec) in self.tunnels.of_zone(zone) {
                named.push(self.describe(id, rec));
            }
        }
        let mut adhoc: Vec<(String, Vec<Value>)> = self
            .routes
            .iter()
            .map(|(host, slots)| {
                let mut conns: Vec<Value> =
                    slots.iter().filter_map(|&s| self.connection(s)).collect();
                conns.sort_by_key(|c| c["ha_index"].as_u64());
                (host.clone(), conns)
            })
            .collect();
        adhoc.sort_by(|a, b| a.0.cmp(&b.0));
        let open = self.list_sessions(None).len();
        pages::overview(
            &self.console.chart.svg(self.unix),
            open,
            &named,
            &adhoc,
            self.unix,
        )
    }

    fn console_sessions(&self, admin: &Admin, notice: Option<&str>) -> String {
        pages::sessions(&self.list_sessions(None), &admin.csrf, notice)
    }

    fn console_tokens(&self, admin: &Admin, notice: Option<&str>) -> String {
        pages::tokens(&self.tokens.list(), &admin.csrf, notice, self.unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_paths_and_where_a_sign_in_may_lead() {
        assert!(is_console_path(BASE));
        assert!(is_console_path("/cdn-cgi/access/admin/sessions"));
        assert!(!is_console_path("/cdn-cgi/access/administrator"));
        assert!(!is_console_path("/cdn-cgi/access/callback"));
        assert!(valid_next("/cdn-cgi/access/admin/audit"));
        assert!(!valid_next(SIGN_IN));
        assert!(!valid_next("https://evil.example/cdn-cgi/access/admin"));
        assert!(!valid_next("/cdn-cgi/access/admin/\"><script>"));
        assert!(!valid_next("//evil.example/cdn-cgi/access/admin"));
    }

    #[test]
    fn the_session_map_keeps_a_hash_never_the_cookie() {
        let value = "abc";
        let key = digest(value);
        assert_eq!(key.len(), 64);
        assert!(!key.contains(value));
    }
}
