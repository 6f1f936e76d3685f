//! One login per zone (issue 15): a browser login for one application also hands the CLI a
//! **zone session**, from which app tokens for the zone's other applications are obtained
//! without a browser.
//!
//! ```text
//!  CLI ── POST /cdn-cgi/access/transfer {id, key, app, zone_session: true}
//!  … browser sign-in and confirmation as for any login …
//!  sealed payload = app token "\n" zone session        (zone session: signed, typ
//!                                                        postern-zone-session+jwt, aud zone:Z,
//!                                                        postern_edge_spki: the edge's key
//!                                                        for Z, which the CLI pins)
//!  CLI ── POST https://H2/cdn-cgi/access/exchange      (TLS, SNI = Host = H2, H2 in zone Z)
//!         Content-Type: application/json {"zone_session": "…"}
//!           ├─ 200 {"token"}                              app token for H2's application
//!           ├─ 401 {"reason": "login_required", "error"}  bad, expired or revoked session,
//!           │                                             one stating another key, or
//!           │                                             H2's application needs a fresher
//!           │                                             sign-in: the CLI opens a browser
//!           └─ 403 {"reason": "not_allowed", "error"}     H2's policy refuses the identity:
//!                                                         final, no browser
//! ```
//!
//! Every edge of a pool checks a zone session with the shared signing keys; revocations
//! (`postern edge sessions kill --email E`) go through the store, so every edge refuses the
//! killed sessions. An exchange evaluates the target application's policy now, with the
//! identity and groups recorded at login, and writes an `exchange` audit line. The zone
//! session never opens a carrier (the app-token check refuses its type) and the edge never
//! forwards it: origins only ever see the edge's own origin assertion.

use serde_json::json;

use super::{json, random_token, Carrier};
use crate::edge::config::Application;
use crate::edge::core::EdgeCore;
use crate::limits::APP_TOKEN_LEEWAY_SECS;
use crate::logging::escape;
use crate::proto::http::RequestHead;
use crate::proto::jwt::{ZoneSession, ZONE_SESSION_AUD_PREFIX, ZONE_SESSION_KIND};
use crate::proto::policy::{self, Authentication, Identity};

/// Where a CLI exchanges a zone session for an app token (on the application's host name).
pub(in crate::edge::core) const EXCHANGE: &str = "/cdn-cgi/access/exchange";

/// Whether a sign-in at `auth_time` (Unix seconds; `None`: the provider did not say) is
/// recent enough at `now` for `app`'s `max_age` (always, without one): as at a browser login.
pub(in crate::edge::core) fn fresh_enough(
    app: &Application,
    auth_time: Option<u64>,
    now: u64,
) -> bool {
    app.max_age
        .is_none_or(|max| crate::oidc::fresh_enough(auth_time, max, now))
}

/// What the exchange endpoint takes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeRequest {
    zone_session: String,
}

impl EdgeCore {
    /// How long a zone session lasts: the config's `zone_session_lifetime`, never longer than
    /// the longest app-token lifetime (so the key rotation keeps verifying it to its end).
    fn zone_session_lifetime(&self) -> u64 {
        let longest = self
            .settings
            .applications
            .iter()
            .map(|a| a.session_duration)
            .max()
            .unwrap_or(0);
        self.settings.zone_session_lifetime.min(longest)
    }

    /// A zone session for the zone of `host`, for `identity` (and how it signed in);
    /// `None` when `host` is in no zone or the identity has no email.
    pub(in crate::edge::core) fn issue_zone_session(
        &self,
        host: &str,
        identity: &Identity,
    ) -> Option<String> {
        let zone = self.settings.zone_of(host)?;
        let email = identity.email.clone()?;
        let issued = self.unix;
        let session = ZoneSession {
            iss: self.public_url(),
            aud: format!("{ZONE_SESSION_AUD_PREFIX}{zone}"),
            sub: email.clone(),
            email: Some(email),
            groups: identity.groups.clone(),
            iat: issued,
            nbf: issued,
            exp: issued.saturating_add(self.zone_session_lifetime()),
            jti: random_token(),
            auth_time: identity.authn.auth_time,
            amr: identity.authn.amr.clone(),
            acr: identity.authn.acr.clone(),
            postern_kind: ZONE_SESSION_KIND.to_owned(),
            // The edge's own word on its key, inside what only it can sign: a server that
            // relays the login cannot make the CLI pin the session to the relay's key.
            postern_edge_spki: self.settings.zone_key(zone).map(str::to_owned),
        };
        Some(self.keys.sign_zone_session(&session))
    }

    /// `POST /cdn-cgi/access/exchange` on `host`: a zone session in, an app token for
    /// `host`'s application out (see the module doc).
    pub(in crate::edge::core) fn exchange_zone_session(
        &mut self,
        c: &mut Carrier,
        head: &RequestHead,
        host: &str,
        body: &[u8],
    ) {
        let mut audit = serde_json::Map::new();
        audit.insert("hostname".into(), host.into());
        audit.insert("peer".into(), c.peer.to_string().into());
        let answer = self.exchange_answer(head, host, body, &mut audit);
        let (status, value) = match answer {
            Ok(token) => {
                audit.insert("decision".into(), "allow".into());
                (200, json!({ "token": token }))
            }
            Err((status, reason, why)) => {
                audit.insert("decision".into(), "deny".into());
                audit.insert("reason".into(), why.clone().into());
                (status, json!({ "reason": reason, "error": why }))
            }
        };
        log::info!(
            "zone session exchange for {host} by {}: HTTP {status}",
            escape(
                audit
                    .get("email")
                    .and_then(|e| e.as_str())
                    .unwrap_or("(unknown)"),
                crate::limits::MAX_LOGGED_NAME
            )
        );
        self.audit.record("exchange", audit);
        json(c, status, &value);
    }

    /// The app token, or (status, reason code, reason text).
    fn exchange_answer(
        &mut self,
        head: &RequestHead,
        host: &str,
        body: &[u8],
        audit: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, (u16, &'static str, String)> {
        const LOGIN: &str = "login_required";
        // A browser cannot send this content type across sites without a preflight: no web
        // page can spend a visitor's zone session (it has none anyway: the CLI holds it).
        let is_json = head
            .header("content-type")
            .and_then(|t| t.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err((
                415,
                "bad_request",
                "the exchange must be application/json".into(),
            ));
        }
        let Ok(req) = serde_json::from_slice::<ExchangeRequest>(body) else {
            return Err((400, "bad_request", "malformed exchange request".into()));
        };
        let Some(app) = self.settings.application(host).cloned() else {
            return Err((
                404,
                "not_allowed",
                "this edge has no application for this host".into(),
            ));
        };
        let Some(zone) = self.settings.zone_of(host).map(str::to_owned) else {
            return Err((
                404,
                "not_allowed",
                "this host is in no zone of this edge".into(),
            ));
        };
        audit.insert("zone".into(), zone.clone().into());
        let session = self
            .keys
            .verify_zone_session(
                &req.zone_session,
                &self.public_url(),
                &zone,
                self.unix,
                APP_TOKEN_LEEWAY_SECS,
            )
            .map_err(|e| {
                (
                    401,
                    LOGIN,
                    format!("needs fresh login: zone session refused: {e}"),
                )
            })?;
        audit.insert("session".into(), session.jti.clone().into());
        let Some(email) = session.email.clone() else {
            return Err((
                401,
                LOGIN,
                "needs fresh login: the zone session names no one".into(),
            ));
        };
        audit.insert("email".into(), email.clone().into());
        // A session states the key it is pinned to; one for another key than this edge's
        // (the zone's key was replaced, or an edge of the pool serves another) goes no
        // further than here: the CLI's next browser login brings one for this key.
        if let Some(stated) = &session.postern_edge_spki {
            if self.settings.zone_key(&zone) != Some(stated.as_str()) {
                return Err((
                    401,
                    LOGIN,
                    "needs fresh login: the zone session is for another key than this edge's"
                        .into(),
                ));
            }
        }
        if self.tokens.zone_session_revoked(&zone, &email, session.iat) {
            return Err((
                401,
                LOGIN,
                "needs fresh login: the zone session was revoked".into(),
            ));
        }
        let identity = Identity {
            email: Some(email.clone()),
            groups: session.groups.clone(),
            service_token: None,
            authn: Authentication {
                amr: session.amr.clone(),
                acr: session.acr.clone(),
                auth_time: session.auth_time,
            },
        };
        let verdict = app.decide(&identity);
        audit.insert("policy".into(), verdict.policy.clone().into());
        if !verdict.allow && policy::needs_step_up(&app.policies, &identity) {
            // A stronger sign-in would do: the CLI opens a browser for this application.
            return Err((
                401,
                LOGIN,
                format!("needs fresh login: {host} needs a stronger sign-in (such as MFA)"),
            ));
        }
        if !verdict.allow {
            return Err((
                403,
                "not_allowed",
                format!("not allowed: the policy of {host} does not admit this identity"),
            ));
        }
        if !fresh_enough(&app, session.auth_time, self.unix) {
            return Err((
                401,
                LOGIN,
                format!("needs fresh login: {host} asks for a more recent sign-in (max_age)"),
            ));
        }
        // Never past the zone session: what it grants ends with it.
        let exp = self
            .unix
            .saturating_add(app.session_duration)
            .min(session.exp);
        Ok(self.app_token(&app, &identity, exp))
    }
}
