//! Which credentials a carrier carries, and what happens when the edge refuses them.
//!
//! ```text
//!  service token (flags/env) ─────────────────────────────▶ connect; any refusal is final
//!  app token in hand, or a cached one that is not expired ─▶ connect ─┐
//!  nothing ──────────────────────────────────────────────▶ connect ─┤ (a bypass app needs nothing)
//!                                                                   │
//!        101 ◀──────────────────────────────────────────────────────┤
//!        403 ◀── not allowed: final ────────────────────────────────┤
//!        401 ── forget the refused token; the zone session, if any,┘
//!               is exchanged for a token (no browser; only with an edge that shows
//!               the key pinned at the login); else (or when the edge says
//!               "needs fresh login") log in (one browser login per hostname across
//!               processes), cache, connect once more:
//!                 101 ─▶ done;  401/403 ─▶ "the edge refused the new token: …"
//! ```
//!
//! One login per zone: a browser login also brings a zone session (`<zone>.zone` in the
//! cache), pinned to the key of the edge that delivered it (`edge_key`). Without a usable
//! cached token, or with one that has less than [`REFRESH_MARGIN`] left, the CLI asks the
//! edge to exchange the zone session for a new app token (`POST /cdn-cgi/access/exchange` on
//! the application's host), over a connection that must show the pinned key: another key
//! (another server of the zone's names, trusted or not) fails the handshake before the
//! session is sent, and the CLI signs in with the browser instead, as it does for a session
//! cached without a key. "Not allowed" is final (no browser); "needs fresh login" falls back
//! to a browser login for that application.
//!
//! Without a cached token the first connection goes out with no credentials: when the
//! application does not need a login, nobody sees a browser, and when it does the edge says
//! so with a 401. That costs one TLS handshake per login, never one per connection.

use std::path::PathBuf;
use std::sync::Arc;

use log::{debug, warn};
use rustls::ClientConfig;

use super::edge_key::{self, EdgeKey, Pin};
use super::login::{login_from_edge, Purpose};
use super::login_lock::{self, Acquired, LockError, LockTiming};
use super::token_cache::{is_compact_jwt, TokenCache, ZoneSession, REFRESH_MARGIN};
use super::{connect, AccessError, AccessOptions, Credentials};
use crate::io::tls::TlsConn;
use crate::proto::jwt::ZONE_SESSION_EDGE_KEY;
use crate::secret::Secret;

/// Opens a carrier for `opts.hostname`, logging in through the browser when the edge asks
/// for it (see the module doc). On success `opts.credentials` holds what worked, so the
/// next carrier (`access tcp`) reuses it without another look at the cache.
pub(crate) fn open_authorized(
    opts: &mut AccessOptions,
    cfg: &Arc<ClientConfig>,
    cache: &Result<TokenCache, String>,
) -> Result<TlsConn, AccessError> {
    if let Credentials::ServiceToken { .. } = &opts.credentials {
        return connect(opts, cfg);
    }
    // Only app tokens need the cache (and so HOME).
    let cache = cache
        .as_ref()
        .map_err(|e| AccessError::TokenCache(e.clone()))?;
    // Once withheld from this edge, the zone session is not offered to it again.
    let mut zone_sessions = true;
    if let Credentials::None = &opts.credentials {
        let fresh = cache.load_with_margin(&opts.hostname, REFRESH_MARGIN);
        let token = match fresh {
            Some(token) => Some(token),
            // Missing or about to expire: the zone session brings a new one, silently. A
            // refusal here is not final yet: a bypass policy may admit the carrier without
            // credentials; after the edge's 401 it is (`app_token`).
            None => match zone_token(opts, cache) {
                Ok(Exchange::Token(token)) => Some(token),
                Ok(Exchange::Withheld) => {
                    zone_sessions = false;
                    cache.load(&opts.hostname)
                }
                Ok(Exchange::Nothing) | Err(_) => cache.load(&opts.hostname),
            },
        };
        if let Some(token) = token {
            debug!("using the cached token for {}", opts.hostname);
            opts.credentials = Credentials::AppToken(token);
        }
    }
    match connect(opts, cfg) {
        Ok(conn) => return Ok(conn),
        Err(AccessError::Refused {
            status: 401, cause, ..
        }) => {
            debug!("the edge asks for a login to {}: {cause}", opts.hostname)
        }
        Err(e) => return Err(e),
    }
    let refused = match std::mem::replace(&mut opts.credentials, Credentials::None) {
        Credentials::AppToken(t) => {
            if let Err(e) = cache.remove_if(&opts.hostname, &t) {
                warn!("could not remove the refused token: {e}");
            }
            Some(t)
        }
        _ => None,
    };
    let token = app_token(opts, cache, refused.as_ref(), zone_sessions)?;
    opts.credentials = Credentials::AppToken(token);
    match connect(opts, cfg) {
        Ok(conn) => Ok(conn),
        Err(AccessError::Refused {
            hostname,
            status,
            cause,
        }) => {
            if let Credentials::AppToken(t) = &opts.credentials {
                let _ = cache.remove_if(&opts.hostname, t);
            }
            opts.credentials = Credentials::None;
            Err(AccessError::NewTokenRefused {
                hostname,
                status,
                cause,
            })
        }
        Err(e) => Err(e),
    }
}

/// `access curl`: an app token for `opts.hostname` as `access ssh` gets one when the edge
/// asks: a cached token with [`REFRESH_MARGIN`] left, else (with `zone_sessions`) the zone
/// session's (no browser; only from an edge that shows the key pinned at the login), else
/// [`app_token`]'s (a browser login, unless a parallel process brings one), cached. Without
/// `zone_sessions` the zone session is never sent: curl's default edge is the URL's host,
/// which may be any web server of the zone, and a zone's wildcard certificate and key are
/// often on those servers too (so the pin alone would not stop it).
pub(crate) fn token_for(
    opts: &AccessOptions,
    cache: &TokenCache,
    zone_sessions: bool,
) -> Result<Secret, AccessError> {
    if let Some(t) = cache.load_with_margin(&opts.hostname, REFRESH_MARGIN) {
        return Ok(t);
    }
    if !zone_sessions {
        return app_token(opts, cache, None, false);
    }
    let zone_sessions = match zone_token(opts, cache)? {
        Exchange::Token(t) => return Ok(t),
        Exchange::Withheld => false,
        Exchange::Nothing => true,
    };
    app_token(opts, cache, None, zone_sessions)
}

/// A usable app token for `opts.hostname`: a cached one (other than `refused`), the zone
/// session's (with `zone_sessions`), the one a parallel process is fetching, or a new
/// browser login, which is then cached.
fn app_token(
    opts: &AccessOptions,
    cache: &TokenCache,
    refused: Option<&Secret>,
    zone_sessions: bool,
) -> Result<Secret, AccessError> {
    let differs = |t: &Secret| refused.is_none_or(|r| r.expose() != t.expose());
    if let Some(t) = cache.load(&opts.hostname).filter(differs) {
        return Ok(t);
    }
    if zone_sessions {
        if let Exchange::Token(t) = zone_token(opts, cache)? {
            if differs(&t) {
                return Ok(t);
            }
        }
    }
    let guard = match login_lock::acquire(cache, &opts.hostname, &LockTiming::default(), refused) {
        Ok(Acquired::Token(t)) => return Ok(t),
        Ok(Acquired::Lock(guard)) => {
            // Someone may have finished between our look at the cache and the lock.
            if let Some(t) = cache.load(&opts.hostname).filter(differs) {
                return Ok(t);
            }
            Some(guard)
        }
        Err(e @ LockError::Timeout { .. }) => return Err(e.into()),
        Err(e) => {
            warn!("{e}; logging in without sharing the login with other processes");
            None
        }
    };
    let (plain, key) = login_from_edge(opts, Purpose::App)?;
    let token = login_payload(opts, cache, plain, key)?;
    // Whose token this is: a login link opened by someone else would show their account here.
    eprintln!("{}", signed_in_as(&token, &opts.hostname));
    if let Err(e) = cache.store(&opts.hostname, &token) {
        warn!("could not cache the token (the next connection logs in again): {e}");
    }
    drop(guard);
    Ok(token)
}

/// A browser login's plaintext: the app token, then (from an edge that gives one) a line with
/// the zone session, which is kept for its zone when `opts.hostname` is in that zone and
/// [`keep_zone_session`] says so; `delivered_by` is the key of the server whose connection
/// brought the answer.
fn login_payload(
    opts: &AccessOptions,
    cache: &TokenCache,
    plain: Vec<u8>,
    delivered_by: Option<EdgeKey>,
) -> Result<Secret, AccessError> {
    let text = String::from_utf8(plain).map_err(|_| not_a_token())?;
    let mut lines = text.trim().splitn(2, '\n');
    let token = app_token_from(lines.next().unwrap_or_default().as_bytes().to_vec())?;
    if let Some(session) = lines.next().map(str::trim) {
        let zone = claim(session, "aud")
            .and_then(|aud| aud.strip_prefix("zone:").map(str::to_owned))
            .filter(|z| {
                super::token_cache::valid_cache_hostname(z)
                    && (opts.hostname == *z || opts.hostname.ends_with(&format!(".{z}")))
            });
        match zone {
            Some(zone) if is_compact_jwt(session) => {
                keep_zone_session(cache, &zone, session, delivered_by)
            }
            _ => warn!("the edge handed over a zone session that is not for this host's zone"),
        }
    }
    Ok(token)
}

/// Caches a login's zone session for `zone`, pinned to the key the session itself states
/// (`postern_edge_spki`, inside what the edge signs), and only when `delivered_by`, the key
/// of the connection that brought it, is that key. A server that relays the login (it holds a
/// certificate the client trusts for a name of the zone, and forwards the CLI's requests to
/// the edge) shows its own key: the session is not kept, so it is never sent there. The app
/// token of the login is used either way. A session that states no key (an edge older than
/// this postern) is not kept either: nothing but the connection would vouch for the key.
fn keep_zone_session(cache: &TokenCache, zone: &str, session: &str, delivered_by: Option<EdgeKey>) {
    let Some(stated) = claim(session, ZONE_SESSION_EDGE_KEY) else {
        warn!(
            "the edge's zone session for {zone} does not state the edge's key (an edge older \
             than this postern): it is not kept, and each application of {zone} signs in with \
             the browser until the edge is upgraded"
        );
        return;
    };
    let Some(stated) = EdgeKey::from_hex(&stated) else {
        warn!("the edge's zone session for {zone} states its key in a form this postern does not read: it is not kept");
        return;
    };
    if delivered_by != Some(stated) {
        eprintln!(
            "the login answer came through a server with another key than the edge's (it showed \
             spki-sha256 {}…, the edge states {}…); the zone session for {zone} is not kept",
            delivered_by.map_or_else(|| "(unreadable)".to_owned(), EdgeKey::short),
            stated.short()
        );
        return;
    }
    // Not silently: a session pinned to another key gives way to this one (a new zone key, a
    // pool edge with another certificate, or a login through another server of the zone).
    if let Some(ZoneSession {
        edge_key: Some(before),
        ..
    }) = cache.load_zone_session(zone).filter(|z| z.zone == zone)
    {
        if before != stated {
            eprintln!(
                "the zone session for {zone} now goes to the edge with key spki-sha256 {}… (the \
                 one it replaces went to {}…)",
                stated.short(),
                before.short()
            );
        }
    }
    let session = Secret::from(session.to_owned());
    if let Err(e) = cache.store_zone_session(zone, &session, stated) {
        warn!("could not cache the zone session: {e}");
    }
}

/// A string claim of a compact JWT, read without checking it (the edge checks).
fn claim(token: &str, name: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let json = crate::proto::base64::decode_url(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims.get(name)?.as_str().map(str::to_owned)
}

/// What [`zone_token`] brought.
enum Exchange {
    /// A new app token for `opts.hostname`, cached.
    Token(Secret),
    /// No zone session, or the edge wants a browser login ("needs fresh login"), or the
    /// exchange failed on the way.
    Nothing,
    /// Not sent: the edge shows another key than the one pinned at the login, or the cached
    /// session has no pin (an older postern's). Not offered to this edge again in this command.
    Withheld,
}

/// An app token for `opts.hostname` from the cached zone session, without a browser, cached
/// on success; see [`Exchange`]. The session goes only over a connection whose leaf shows the
/// key pinned with it (on top of the usual check against the system roots or `--ca`). `Err`:
/// the edge says the identity is not allowed (final: no browser login would change that).
fn zone_token(opts: &AccessOptions, cache: &TokenCache) -> Result<Exchange, AccessError> {
    let Some(ZoneSession {
        zone,
        session,
        edge_key,
    }) = cache.load_zone_session(&opts.hostname)
    else {
        return Ok(Exchange::Nothing);
    };
    let Some(key) = edge_key else {
        debug!(
            "the zone session of {zone} was cached without the key of the edge that issued it \
             (by an older postern): not sending it to {}",
            opts.edge
        );
        return Ok(Exchange::Withheld);
    };
    let pin = Pin::new(key);
    let cfg = edge_key::recording_config(
        opts.extra_ca.as_deref(),
        edge_key::seen(),
        edge_key::Record::Verified,
        Some(pin.clone()),
    )?;
    let body = serde_json::json!({ "zone_session": session.expose() }).to_string();
    let (status, answer) = match super::https_request(
        opts,
        &cfg,
        "POST",
        "/cdn-cgi/access/exchange",
        Some(body.as_bytes()),
    ) {
        Ok(a) => a,
        Err(_) if pin.refused() => {
            eprintln!(
                "the edge at {} shows another key than the edge that signed you in to {zone}; \
                 not sending the zone session, signing in with the browser",
                opts.edge
            );
            return Ok(Exchange::Withheld);
        }
        Err(e) => {
            debug!("zone session exchange for {} failed: {e}", opts.hostname);
            return Ok(Exchange::Nothing);
        }
    };
    let value: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    let why = super::json_error(&answer).unwrap_or_else(|| format!("HTTP {status}"));
    match (status, value.get("reason").and_then(|r| r.as_str())) {
        (200, _) => {
            let token = value
                .get("token")
                .and_then(|t| t.as_str())
                .filter(|t| is_compact_jwt(t))
                .ok_or_else(not_a_token)?;
            let token = Secret::from(token.to_owned());
            eprintln!(
                "{} (from the zone session of {zone}, no browser)",
                signed_in_as(&token, &opts.hostname).trim_end_matches('.')
            );
            if let Err(e) = cache.store(&opts.hostname, &token) {
                warn!("could not cache the token: {e}");
            }
            Ok(Exchange::Token(token))
        }
        (403, Some("not_allowed")) => Err(AccessError::Refused {
            hostname: opts.hostname.clone(),
            status: 403,
            cause: why,
        }),
        (401, _) => {
            // Expired, revoked or refused: the next browser login brings a new one.
            debug!(
                "zone session of {zone} not usable for {}: {why}",
                opts.hostname
            );
            if let Err(e) = cache.remove_if_zone_session(&zone, &session) {
                warn!("could not remove the zone session: {e}");
            }
            Ok(Exchange::Nothing)
        }
        _ => {
            debug!("zone session exchange for {}: {why}", opts.hostname);
            Ok(Exchange::Nothing)
        }
    }
}

/// "Signed in as EMAIL for HOST", from the token's claims (read, not verified: the edge checks
/// the token; this only tells the user whose it is). The email is escaped for the terminal.
fn signed_in_as(token: &Secret, host: &str) -> String {
    let email = token
        .expose()
        .split('.')
        .nth(1)
        .and_then(|p| crate::proto::base64::decode_url(p).ok())
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
        .and_then(|c| c.get("email")?.as_str().map(str::to_owned));
    match email {
        Some(e) => format!(
            "Signed in as {} for {host}.",
            crate::logging::escape(&e, crate::limits::MAX_LOGGED_NAME)
        ),
        None => format!("Signed in for {host}."),
    }
}

/// The login's plaintext as an app token, checked to be a compact JWT (it goes into an HTTP
/// header and a file).
fn app_token_from(plain: Vec<u8>) -> Result<Secret, AccessError> {
    let text = String::from_utf8(plain).map_err(|_| not_a_token())?;
    let token = text.trim();
    if !is_compact_jwt(token) {
        return Err(not_a_token());
    }
    Ok(Secret::from(token.to_owned()))
}

fn not_a_token() -> AccessError {
    AccessError::BadAnswer("the edge handed over something that is not a token".into())
}

/// `postern access login H`: always a new browser login (unless a parallel process is in the
/// middle of one, whose token is then taken), cached for `opts.hostname`. Returns where the
/// token was stored.
pub fn login_and_cache(opts: &AccessOptions, cache: &TokenCache) -> Result<PathBuf, AccessError> {
    let path = cache.path(&opts.hostname, ".jwt")?;
    let existing = cache.load(&opts.hostname);
    let guard = match login_lock::acquire(
        cache,
        &opts.hostname,
        &LockTiming::default(),
        existing.as_ref(),
    ) {
        Ok(Acquired::Token(_)) => return Ok(path),
        Ok(Acquired::Lock(guard)) => guard,
        Err(e) => return Err(e.into()),
    };
    let (plain, key) = login_from_edge(opts, Purpose::App)?;
    let token = login_payload(opts, cache, plain, key)?;
    eprintln!("{}", signed_in_as(&token, &opts.hostname));
    let path = cache
        .store(&opts.hostname, &token)
        .map_err(AccessError::StoreToken)?;
    drop(guard);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::token_cache::tests::{edge_key, jwt};

    #[test]
    fn the_user_is_told_whose_token_arrived_escaped() {
        let claims = serde_json::json!({"email": "mallory@x.test\u{1b}[2J", "exp": 9});
        let payload = crate::proto::base64::encode_url(claims.to_string().as_bytes());
        let token = Secret::from(format!("e30.{payload}.c2ln"));
        let line = signed_in_as(&token, "ssh.x.test");
        assert!(line.starts_with("Signed in as mallory@x.test"), "{line}");
        assert!(!line.contains('\u{1b}'), "{line:?}");
        assert_eq!(
            signed_in_as(&Secret::from("a.b.c".to_owned()), "h"),
            "Signed in for h."
        );
    }

    /// Options for `host` without credentials (the edge is never reached in these tests).
    fn options_for(host: &str) -> AccessOptions {
        AccessOptions {
            hostname: host.into(),
            edge: "127.0.0.1:443".into(),
            extra_ca: None,
            credentials: Credentials::None,
            resume: None,
            resume_granted: None,
            destination: None,
        }
    }

    #[test]
    fn a_logins_zone_session_is_cached_only_for_the_hosts_own_zone() {
        let tmp = crate::access::token_cache::tests::TempDir::new("payload-zone");
        let cache = TokenCache::new(tmp.0.join("tokens"));
        let opts = options_for;
        let far = crate::io::unix_now() + 3600;
        let token = jwt(&format!(r#"{{"exp":{far},"aud":["ssh.example.com"]}}"#));
        let stated = edge_key(5).hex();
        let session = jwt(&format!(
            r#"{{"exp":{far},"aud":"zone:example.com","postern_edge_spki":"{stated}"}}"#
        ));
        let payload = format!("{token}\n{session}\n").into_bytes();
        let key = Some(edge_key(5));
        let got = login_payload(&opts("ssh.example.com"), &cache, payload.clone(), key).unwrap();
        assert_eq!(got.expose(), token);
        let cached = cache.load_zone_session("db.example.com").unwrap();
        assert_eq!(
            (
                cached.zone.as_str(),
                cached.session.expose(),
                cached.edge_key
            ),
            ("example.com", session.as_str(), key)
        );
        // A session for a zone the host is not in is not kept (an edge cannot plant one for
        // another zone); an app token alone (an older edge) is fine.
        let cache = TokenCache::new(tmp.0.join("other"));
        login_payload(&opts("ssh.other.org"), &cache, payload.clone(), key).unwrap();
        assert!(cache.load_zone_session("ssh.example.com").is_none());
        assert!(cache.load_zone_session("ssh.other.org").is_none());
        let alone = login_payload(
            &opts("ssh.other.org"),
            &cache,
            token.clone().into_bytes(),
            key,
        );
        assert_eq!(alone.unwrap().expose(), token);
        // Without the delivering edge's key the session is not kept (it would never be sent);
        // the app token still is the login's.
        let cache = TokenCache::new(tmp.0.join("no-key"));
        let got = login_payload(&opts("ssh.example.com"), &cache, payload, None).unwrap();
        assert_eq!(got.expose(), token);
        assert!(cache.load_zone_session("ssh.example.com").is_none());
    }

    #[test]
    fn a_zone_session_is_kept_only_when_the_connection_showed_the_key_it_states() {
        let tmp = crate::access::token_cache::tests::TempDir::new("payload-key");
        let cache = TokenCache::new(tmp.0.join("tokens"));
        let opts = options_for("ssh.example.com");
        let far = crate::io::unix_now() + 3600;
        let token = jwt(&format!(r#"{{"exp":{far},"aud":["ssh.example.com"]}}"#));
        let session = |stated: Option<EdgeKey>, jti: &str| {
            let claim = stated.map_or_else(String::new, |k| {
                format!(r#","postern_edge_spki":"{}""#, k.hex())
            });
            jwt(&format!(
                r#"{{"exp":{far},"aud":"zone:example.com","jti":"{jti}"{claim}}}"#
            ))
        };
        let login = |session: &str, delivered_by: Option<EdgeKey>| {
            let payload = format!("{token}\n{session}\n").into_bytes();
            let got = login_payload(&opts, &cache, payload, delivered_by).unwrap();
            assert_eq!(
                got.expose(),
                token,
                "the app token is the login's either way"
            );
        };
        let cached = || {
            cache
                .load_zone_session("ssh.example.com")
                .map(|z| (z.session.expose().to_owned(), z.edge_key))
        };
        let (edge, relay) = (edge_key(1), edge_key(2));

        // The edge's own connection: kept, pinned to the key the session states.
        let good = session(Some(edge), "good");
        login(&good, Some(edge));
        assert_eq!(cached(), Some((good.clone(), Some(edge))));
        // Delivered through a server with another key (a relay): not kept, and the session
        // cached before stays.
        login(&session(Some(edge), "relayed"), Some(relay));
        assert_eq!(cached(), Some((good.clone(), Some(edge))));
        login(&session(Some(edge), "unreadable"), None);
        assert_eq!(cached(), Some((good.clone(), Some(edge))));
        // No key stated (an older edge), or a malformed one: not kept.
        login(&session(None, "older"), Some(edge));
        assert_eq!(cached(), Some((good.clone(), Some(edge))));
        let bad = jwt(&format!(
            r#"{{"exp":{far},"aud":"zone:example.com","postern_edge_spki":"ABC"}}"#
        ));
        login(&bad, Some(edge));
        assert_eq!(cached(), Some((good, Some(edge))));
        // A session that states the key its connection showed replaces the one before.
        let rotated = session(Some(relay), "rotated");
        login(&rotated, Some(relay));
        assert_eq!(cached(), Some((rotated, Some(relay))));
    }

    #[test]
    fn a_zone_session_without_a_pin_is_withheld_before_any_connection() {
        let tmp = crate::access::token_cache::tests::TempDir::new("withheld");
        let cache = TokenCache::new(tmp.0.clone());
        let far = crate::io::unix_now() + 3600;
        let session = jwt(&format!(r#"{{"exp":{far},"aud":"zone:example.com"}}"#));
        // As an older postern cached it: the session alone.
        std::fs::write(tmp.0.join("example.com.zone"), format!("{session}\n")).unwrap();
        let opts = AccessOptions {
            hostname: "ssh.example.com".into(),
            // Nothing listens here: an attempt to connect would be `Nothing`, not `Withheld`.
            edge: "127.0.0.1:1".into(),
            extra_ca: None,
            credentials: Credentials::None,
            resume: None,
            resume_granted: None,
            destination: None,
        };
        assert!(matches!(zone_token(&opts, &cache), Ok(Exchange::Withheld)));
        // It stays (a browser login replaces it); with no session at all there is nothing.
        assert!(cache.load_zone_session("ssh.example.com").is_some());
        let empty = TokenCache::new(tmp.0.join("empty"));
        assert!(matches!(zone_token(&opts, &empty), Ok(Exchange::Nothing)));
    }

    #[test]
    fn only_a_compact_jwt_is_accepted_from_a_login() {
        let good = jwt(r#"{"exp":1}"#);
        assert_eq!(
            app_token_from(format!("{good}\n").into_bytes())
                .unwrap()
                .expose(),
            good
        );
        for bad in [
            &b""[..],
            b"<html>hello</html>",
            b"a.b",
            b"a.b.c\r\nX-Injected: yes",
            &[0xff, 0x2e, 0x61, 0x2e, 0x62],
        ] {
            assert!(app_token_from(bad.to_vec()).is_err(), "{bad:?}");
        }
    }
}
