//! The edge's browser side: sign-in pages, the OIDC callback, app tokens and token transfer.
//!
//! ```text
//!  CLI ──opens──▶ https://H/cdn-cgi/access/cli?id&key&app=H        (transfer slot opened)
//!                   └─302─▶ provider /authorize (state, nonce, PKCE) or the dev login page
//!  provider ──302──▶ {public_url}/cdn-cgi/access/callback?code&state
//!                   └─ worker: code exchange + ID token check ─▶ identity ─▶ policy
//!                   └─ allow: app token signed, sealed into the slot ─▶ "You can close this window"
//!  CLI polls https://H/cdn-cgi/access/transfer?id ─▶ sealed token, once
//! ```
//!
//! Pages are small server-rendered HTML without JavaScript. Every request here is answered
//! and the connection closed; no cookies are set: the provider keeps the browser's session.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use mio::Waker;

use super::{Carrier, CarrierState, Edge, CLOSE_GRACE_SECS};
use crate::edge::config::IdentityProvider;
use crate::http::{self, RequestHead};
use crate::oidc::{OidcError, Provider};
use crate::pki::{Authority, OriginCredential};
use crate::policy::{self, Identity};
use crate::token_transfer::{Poll, Purpose, TransferError, TRANSFER_TTL};
use crate::url::{self, html, param};

/// Clock skew tolerated on our own app tokens (edges of a pool keep their clocks in sync).
const APP_TOKEN_LEEWAY_SECS: u64 = 5;

/// Wrong dev codes allowed per login.
const MAX_DEV_CODE_ATTEMPTS: u32 = 5;

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A login between the CLI link and the callback.
pub(super) struct PendingLogin {
    transfer: String,
    purpose: Purpose,
    verifier: String,
    nonce: String,
    expires: Instant,
    dev: Option<(String, String, u32)>,
    /// Set once signed in (a tunnel login still has to pick a zone).
    identity: Option<Identity>,
}

#[derive(Default)]
pub(super) struct Logins {
    map: HashMap<String, PendingLogin>,
}

impl Logins {
    fn expire(&mut self, now: Instant) {
        self.map.retain(|_, l| l.expires > now);
    }
}

/// A code exchange for the worker pool.
pub(super) struct Job {
    slot: usize,
    state: String,
    code: String,
    verifier: String,
    nonce: String,
    redirect: String,
}

pub(super) struct Done {
    slot: usize,
    state: String,
    result: Result<Identity, OidcError>,
}

/// Two threads that run the blocking OIDC calls, so the loop never waits on the provider.
pub(super) struct Worker {
    jobs: mpsc::Sender<Job>,
    pub(super) done: mpsc::Receiver<Done>,
}

impl Worker {
    pub(super) fn start(provider: Arc<Provider>, waker: Arc<Waker>) -> Worker {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        for i in 0..2 {
            let (rx, tx, p, w) = (
                job_rx.clone(),
                done_tx.clone(),
                provider.clone(),
                waker.clone(),
            );
            let _ = std::thread::Builder::new()
                .name(format!("oidc-{i}"))
                .spawn(move || loop {
                    let job = {
                        let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                        match rx.recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        }
                    };
                    let result = p.exchange(
                        &job.code,
                        &job.verifier,
                        &job.redirect,
                        &job.nonce,
                        unix_now(),
                    );
                    let _ = tx.send(Done {
                        slot: job.slot,
                        state: job.state,
                        result,
                    });
                    let _ = w.wake();
                });
        }
        Worker { jobs, done }
    }
}

/// A finished page for the browser (or JSON for the CLI).
fn respond(
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
        ("Referrer-Policy", "no-referrer"),
        (
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https:",
        ),
    ];
    headers.extend_from_slice(extra);
    let mut out = Vec::new();
    http::write_response(&mut out, status, reason, &headers, body);
    c.tls.send(&out);
    c.state = CarrierState::Closing;
    c.deadline = Some(Instant::now() + std::time::Duration::from_secs(CLOSE_GRACE_SECS));
}

fn page(c: &mut Carrier, status: u16, title: &str, body_html: &str) {
    let doc = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width\"><title>{t}</title><style>body{{font-family:sans-serif;\
         max-width:34em;margin:4em auto;padding:0 1em;line-height:1.5}}input,button{{font-size:1em;\
         padding:.3em}}</style></head><body><h1>{t}</h1>{body_html}</body></html>",
        t = html(title)
    );
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        501 => "Not Implemented",
        _ => "Error",
    };
    respond(
        c,
        status,
        reason,
        "text/html; charset=utf-8",
        doc.as_bytes(),
        &[],
    );
}

fn redirect(c: &mut Carrier, location: &str) {
    respond(
        c,
        302,
        "Found",
        "text/plain",
        b"",
        &[("Location", location)],
    );
}

fn json(c: &mut Carrier, status: u16, value: &serde_json::Value) {
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        404 => "Not Found",
        _ => "Error",
    };
    respond(
        c,
        status,
        reason,
        "application/json",
        value.to_string().as_bytes(),
        &[],
    );
}

impl Edge {
    /// The base URL of the login pages.
    pub(super) fn public_url(&self) -> String {
        self.public_url.clone()
    }

    /// Serves every request that is not a carrier upgrade. Returns true if it answered.
    pub(super) fn on_page(
        &mut self,
        slot: usize,
        c: &mut Carrier,
        head: &RequestHead,
        host: &str,
    ) -> bool {
        let Some((path, params)) = url::split_target(&head.target) else {
            page(c, 400, "Bad request", "<p>The link is malformed.</p>");
            return true;
        };
        if head.method != "GET" {
            return false;
        }
        let now = Instant::now();
        self.logins.expire(now);
        match path {
            "/cdn-cgi/access/certs" => {
                let jwks = self.keys.jwks(unix_now());
                respond(
                    c,
                    200,
                    "OK",
                    "application/json",
                    jwks.to_json().as_bytes(),
                    &[],
                );
            }
            "/cdn-cgi/access/transfer" => {
                let id = param(&params, "id").unwrap_or("");
                match self.transfers.take(id, now) {
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
            "/cdn-cgi/access/cli" => self.begin_login(c, &params, host, now),
            "/cdn-cgi/access/callback" => self.callback(slot, c, &params),
            "/cdn-cgi/access/dev-login" => self.dev_login(c, &params),
            "/cdn-cgi/access/tunnel-zone" => self.tunnel_zone(c, &params),
            _ => return false,
        }
        true
    }

    fn begin_login(
        &mut self,
        c: &mut Carrier,
        params: &[(String, String)],
        host: &str,
        now: Instant,
    ) {
        let (Some(id), Some(key)) = (param(params, "id"), param(params, "key")) else {
            return page(
                c,
                400,
                "Bad request",
                "<p>This login link is incomplete. Run the postern command again.</p>",
            );
        };
        let purpose = if param(params, "purpose") == Some("tunnel") {
            Purpose::Tunnel
        } else {
            let app = param(params, "app").unwrap_or(host).to_ascii_lowercase();
            if self.settings.application(&app).is_none() {
                return page(
                    c,
                    404,
                    "Unknown application",
                    &format!(
                        "<p>This edge has no application for <b>{}</b>.</p>",
                        html(&app)
                    ),
                );
            }
            Purpose::App(app)
        };
        if matches!(self.settings.identity, IdentityProvider::None) {
            return page(
                c,
                501,
                "No sign-in configured",
                "<p>This edge has no identity provider: use a service token.</p>",
            );
        }
        if self.logins.map.len() >= self.settings.limits.max_pending_transfers {
            return self.logins_busy(c);
        }
        if let Err(e) = self.transfers.begin(id, key, purpose.clone(), now) {
            if e == TransferError::Full {
                return self.logins_busy(c);
            }
            let status = if e == TransferError::Replay { 409 } else { 400 };
            return page(
                c,
                status,
                "Login link refused",
                &format!("<p>{}</p>", html(&e.to_string())),
            );
        }
        let state = crate::base64::encode_url(&crate::io::random_bytes::<24>());
        let nonce = crate::base64::encode_url(&crate::io::random_bytes::<24>());
        let (verifier, challenge) = crate::oidc::pkce();
        self.logins.map.insert(
            state.clone(),
            PendingLogin {
                transfer: id.to_owned(),
                purpose,
                verifier,
                nonce: nonce.clone(),
                expires: now + TRANSFER_TTL,
                dev: None,
                identity: None,
            },
        );
        let location = match (&self.settings.identity, &self.oidc) {
            (IdentityProvider::Oidc(_), Some(p)) => {
                p.authorize_url(&self.callback_url(), &state, &nonce, &challenge)
            }
            _ => url::with_query(
                &format!("{}/cdn-cgi/access/dev-login", self.public_url()),
                &[("state", &state)],
            ),
        };
        redirect(c, &location);
    }

    /// 503 for a login beyond `limits.max_pending_transfers`, counted and logged.
    fn logins_busy(&mut self, c: &mut Carrier) {
        let max = self.settings.limits.max_pending_transfers;
        self.limit_hit(super::Limit::PendingTransfers, c.peer.ip(), || {
            format!("{max} logins in progress (limits.max_pending_transfers)")
        });
        page(
            c,
            503,
            "Busy",
            "<p>Too many logins in progress: try again in a minute.</p>",
        );
    }

    fn callback_url(&self) -> String {
        format!("{}/cdn-cgi/access/callback", self.public_url())
    }

    fn callback(&mut self, slot: usize, c: &mut Carrier, params: &[(String, String)]) {
        let state = param(params, "state").unwrap_or("");
        let Some(login) = self.logins.map.get(state) else {
            return page(
                c,
                400,
                "Login expired",
                "<p>This login is unknown or expired. Run the postern command again.</p>",
            );
        };
        if let Some(err) = param(params, "error") {
            let why = param(params, "error_description").unwrap_or(err).to_owned();
            if let Some(l) = self.logins.map.remove(state) {
                self.transfers.refuse(
                    &l.transfer,
                    &format!("sign-in failed: {why}"),
                    Instant::now(),
                );
            }
            return page(
                c,
                403,
                "Sign-in failed",
                &format!("<p>The identity provider said: {}</p>", html(&why)),
            );
        }
        let (Some(code), Some(worker)) = (param(params, "code"), &self.worker) else {
            return page(c, 400, "Bad request", "<p>The provider sent no code.</p>");
        };
        let job = Job {
            slot,
            state: state.to_owned(),
            code: code.to_owned(),
            verifier: login.verifier.clone(),
            nonce: login.nonce.clone(),
            redirect: self.callback_url(),
        };
        if worker.jobs.send(job).is_err() {
            return page(
                c,
                500,
                "Sign-in unavailable",
                "<p>The edge cannot reach its identity provider right now.</p>",
            );
        }
        // Parked until the worker answers (the handshake deadline still bounds it).
        c.state = CarrierState::Waiting;
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

    /// A worker finished a code exchange: answer the parked browser.
    pub(super) fn on_worker_done(&mut self, done: Done) {
        let Some(Some(super::Conn::Carrier(mut c))) =
            self.conns.get_mut(done.slot).map(Option::take)
        else {
            return;
        };
        if matches!(c.state, CarrierState::Waiting) {
            match done.result {
                Ok(id) => self.signed_in(&mut c, &done.state, id),
                Err(e) => {
                    warn!("sign-in failed: {e}");
                    if let Some(l) = self.logins.map.remove(&done.state) {
                        self.transfers.refuse(
                            &l.transfer,
                            "sign-in failed at the identity provider",
                            Instant::now(),
                        );
                    }
                    let mut audit = serde_json::Map::new();
                    audit.insert("reason".into(), e.to_string().into());
                    audit.insert("decision".into(), "deny".into());
                    self.audit.record("login", audit);
                    page(
                        &mut c,
                        403,
                        "Sign-in failed",
                        "<p>The sign-in could not be verified. Run the postern command again.</p>",
                    );
                }
            }
        }
        self.conns[done.slot] = Some(super::Conn::Carrier(c));
        self.mark(done.slot);
    }

    fn dev_login(&mut self, c: &mut Carrier, params: &[(String, String)]) {
        if !matches!(self.settings.identity, IdentityProvider::Dev) {
            return page(c, 404, "Not found", "<p>No such page.</p>");
        }
        let state = param(params, "state").unwrap_or("").to_owned();
        let Some(login) = self.logins.map.get_mut(&state) else {
            return page(
                c,
                400,
                "Login expired",
                "<p>This login is unknown or expired. Run the postern command again.</p>",
            );
        };
        let hidden = format!(
            "<input type=\"hidden\" name=\"state\" value=\"{}\">",
            html(&state)
        );
        let email = param(params, "email").map(|e| e.trim().to_ascii_lowercase());
        let code = param(params, "code").map(str::trim);
        match (&mut login.dev, email, code) {
            (None, None, _) | (None, Some(_), Some(_)) => page(
                c,
                200,
                "Sign in (dev)",
                &format!("<p>This is the embedded development sign-in of <code>postern edge --dev</code>.</p>\
                 <form method=\"get\" action=\"/cdn-cgi/access/dev-login\">{hidden}<label>Email \
                 <input name=\"email\" type=\"email\" required autofocus></label> <button>Send code</button></form>"),
            ),
            (None, Some(email), None) => {
                if !email.contains('@') || email.len() > 254 {
                    return page(c, 400, "Invalid email", "<p>Enter an email address.</p>");
                }
                let n = u32::from_le_bytes(crate::io::random_bytes::<4>()) % 1_000_000;
                let code = format!("{n:06}");
                // The one-time code goes to the operator's terminal, never to the browser.
                eprintln!("postern edge (dev): login code for {email}: {code}");
                info!("dev login code issued for {email}");
                login.dev = Some((email.clone(), code, 0));
                page(
                    c,
                    200,
                    "Enter your code",
                    &format!("<p>A one-time code for <b>{}</b> is printed on the edge's terminal.</p>\
                     <form method=\"get\" action=\"/cdn-cgi/access/dev-login\">{hidden}<label>Code \
                     <input name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required autofocus></label> \
                     <button>Sign in</button></form>", html(&email)),
                )
            }
            (Some(_), _, None) => page(c, 400, "Code missing", "<p>Enter the code from the edge's terminal.</p>"),
            (Some((email, expected, attempts)), _, Some(code)) => {
                let ok = code.len() == expected.len()
                    && code
                        .bytes()
                        .zip(expected.bytes())
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0;
                if ok {
                    let id = Identity {
                        email: Some(email.clone()),
                        groups: Vec::new(),
                        service_token: None,
                    };
                    self.signed_in(c, &state, id);
                } else {
                    *attempts += 1;
                    if *attempts >= MAX_DEV_CODE_ATTEMPTS {
                        self.logins.map.remove(&state);
                        page(c, 403, "Too many attempts", "<p>Run the postern command again.</p>");
                    } else {
                        page(c, 403, "Wrong code", &format!("<p>That code is not right.</p>\
                         <form method=\"get\" action=\"/cdn-cgi/access/dev-login\">{hidden}<label>Code \
                         <input name=\"code\" required autofocus></label> <button>Sign in</button></form>"));
                    }
                }
            }
        }
    }

    /// The user is who `id` says: apply the policy and finish the transfer.
    fn signed_in(&mut self, c: &mut Carrier, state: &str, id: Identity) {
        let Some(login) = self.logins.map.get_mut(state) else {
            return page(
                c,
                400,
                "Login expired",
                "<p>Run the postern command again.</p>",
            );
        };
        let email = id.email.clone().unwrap_or_default();
        let mut audit = serde_json::Map::new();
        audit.insert("email".into(), email.clone().into());
        audit.insert("groups".into(), id.groups.clone().into());
        match login.purpose.clone() {
            Purpose::App(host) => {
                let transfer = login.transfer.clone();
                self.logins.map.remove(state);
                audit.insert("hostname".into(), host.clone().into());
                let Some(app) = self.settings.application(&host) else {
                    return page(c, 404, "Unknown application", "<p>No such application.</p>");
                };
                let verdict = app.decide(&id);
                audit.insert("policy".into(), verdict.policy.clone().into());
                if !verdict.allow {
                    audit.insert("decision".into(), "deny".into());
                    audit.insert("reason".into(), "policy".into());
                    self.audit.record("login", audit);
                    info!("login denied: {email} for {host} ({})", verdict.policy);
                    self.transfers.refuse(
                        &transfer,
                        &format!("access denied: {email} is not allowed to reach {host}"),
                        Instant::now(),
                    );
                    return page(c, 403, "Access denied", &format!(
                        "<p><b>{}</b> is not allowed to reach <b>{}</b>. Ask the administrator of this edge.</p>",
                        html(&email), html(&host)));
                }
                let now = unix_now();
                let claims = serde_json::json!({
                    "iss": self.public_url(),
                    "aud": [app.hostname],
                    "sub": email,
                    "email": email,
                    "groups": id.groups,
                    "iat": now,
                    "nbf": now,
                    "exp": now + app.session_duration,
                    "jti": crate::base64::encode_url(&crate::io::random_bytes::<16>()),
                });
                let token = self.keys.sign(&claims);
                match self
                    .transfers
                    .complete(&transfer, token.as_bytes(), Instant::now())
                {
                    Ok(()) => {
                        audit.insert("decision".into(), "allow".into());
                        self.audit.record("login", audit);
                        info!("login: {email} for {host}");
                        page(c, 200, "Signed in", &format!(
                            "<p>Signed in as <b>{}</b> for <b>{}</b>.</p><p>You can close this window and return to your terminal.</p>",
                            html(&email), html(&host)));
                    }
                    Err(e) => page(
                        c,
                        400,
                        "Login expired",
                        &format!("<p>{}</p>", html(&e.to_string())),
                    ),
                }
            }
            Purpose::Tunnel => {
                let verdict = policy::evaluate(&self.settings.tunnel_admins, &id);
                audit.insert("policy".into(), verdict.policy.clone().into());
                if !verdict.allow {
                    if let Some(l) = self.logins.map.remove(state) {
                        self.transfers.refuse(
                            &l.transfer,
                            &format!("access denied: {email} may not create origin certificates"),
                            Instant::now(),
                        );
                    }
                    audit.insert("decision".into(), "deny".into());
                    self.audit.record("tunnel_login", audit);
                    return page(
                        c,
                        403,
                        "Access denied",
                        &format!(
                            "<p><b>{}</b> may not create origin certificates on this edge.</p>",
                            html(&email)
                        ),
                    );
                }
                login.identity = Some(id);
                let mut options = String::new();
                for (i, z) in self.settings.zones.iter().enumerate() {
                    options.push_str(&format!(
                        "<p><label><input type=\"radio\" name=\"zone\" value=\"{z}\"{}> {z}</label></p>",
                        if i == 0 { " checked" } else { "" },
                        z = html(z)
                    ));
                }
                page(c, 200, "Choose a zone", &format!(
                    "<p>Signed in as <b>{}</b>. Which zone will this origin serve?</p>\
                     <form method=\"get\" action=\"/cdn-cgi/access/tunnel-zone\">\
                     <input type=\"hidden\" name=\"state\" value=\"{}\">{options}<button>Authorize</button></form>",
                    html(&email), html(state)));
            }
        }
    }

    fn tunnel_zone(&mut self, c: &mut Carrier, params: &[(String, String)]) {
        let state = param(params, "state").unwrap_or("");
        let zone = param(params, "zone").unwrap_or("").to_ascii_lowercase();
        let ready = self
            .logins
            .map
            .get(state)
            .is_some_and(|l| l.purpose == Purpose::Tunnel && l.identity.is_some());
        if !ready {
            return page(
                c,
                400,
                "Login expired",
                "<p>Run <code>postern tunnel login</code> again.</p>",
            );
        }
        if !self.settings.zones.contains(&zone) {
            return page(
                c,
                400,
                "Unknown zone",
                "<p>Choose one of the zones offered.</p>",
            );
        }
        let login = self.logins.map.remove(state).expect("bug: checked above");
        let email = login.identity.and_then(|i| i.email).unwrap_or_default();
        let credential =
            Authority::load_or_create(&self.settings.state, "origin-ca", "postern origin CA")
                .and_then(|ca| ca.issue_origin(&zone))
                .map(|(cert, key)| OriginCredential {
                    key,
                    cert,
                    zone: zone.clone(),
                    edge: Some(self.public_url().trim_start_matches("https://").to_owned()).map(
                        |h| {
                            if h.contains(':') {
                                h
                            } else {
                                format!("{h}:443")
                            }
                        },
                    ),
                    ca: self.settings.tls_ca_certs(),
                });
        let credential = match credential {
            Ok(c) => c,
            Err(e) => {
                warn!("tunnel login: cannot issue a certificate: {e}");
                return page(
                    c,
                    500,
                    "Error",
                    "<p>The edge could not issue a certificate.</p>",
                );
            }
        };
        let mut audit = serde_json::Map::new();
        audit.insert("email".into(), email.clone().into());
        audit.insert("zone".into(), zone.clone().into());
        audit.insert(
            "certificate".into(),
            crate::pki::fingerprint(&credential.cert).into(),
        );
        match self.transfers.complete(
            &login.transfer,
            credential.to_pem().as_bytes(),
            Instant::now(),
        ) {
            Ok(()) => {
                audit.insert("decision".into(), "allow".into());
                self.audit.record("tunnel_login", audit);
                info!("tunnel login: {email} got an origin certificate for zone {zone}");
                page(c, 200, "Origin authorized", &format!(
                    "<p>An origin certificate for zone <b>{}</b> is on its way to your terminal.</p>\
                     <p>You can close this window.</p>", html(&zone)));
            }
            Err(e) => page(
                c,
                400,
                "Login expired",
                &format!("<p>{}</p>", html(&e.to_string())),
            ),
        }
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
                unix_now(),
                APP_TOKEN_LEEWAY_SECS,
            )
            .map_err(|e| e.to_string())?;
        Ok(Identity {
            email: claims.email,
            groups: claims.groups,
            service_token: None,
        })
    }
}
