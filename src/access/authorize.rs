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
//!               is exchanged for a token (no browser); else (or when the edge says
//!               "needs fresh login") log in (one browser login per hostname across
//!               processes), cache, connect once more:
//!                 101 ─▶ done;  401/403 ─▶ "the edge refused the new token: …"
//! ```
//!
//! One login per zone: a browser login also brings a zone session (`<zone>.zone` in the
//! cache). Without a usable cached token, or with one that has less than
//! [`REFRESH_MARGIN`] left, the CLI asks the edge to exchange the zone session for a new app
//! token (`POST /cdn-cgi/access/exchange` on the application's host). "Not allowed" is final
//! (no browser); "needs fresh login" falls back to a browser login for that application.
//!
//! Without a cached token the first connection goes out with no credentials: when the
//! application does not need a login, nobody sees a browser, and when it does the edge says
//! so with a 401. That costs one TLS handshake per login, never one per connection.

use std::path::PathBuf;
use std::sync::Arc;

use log::{debug, warn};
use rustls::ClientConfig;

use super::login::{login, Purpose};
use super::login_lock::{self, Acquired, LockError, LockTiming};
use super::token_cache::{is_compact_jwt, TokenCache, REFRESH_MARGIN};
use super::{connect, AccessError, AccessOptions, Credentials};
use crate::io::tls::TlsConn;
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
    if let Credentials::None = &opts.credentials {
        let fresh = cache.load_with_margin(&opts.hostname, REFRESH_MARGIN);
        let token = match fresh {
            Some(token) => Some(token),
            // Missing or about to expire: the zone session brings a new one, silently. A
            // refusal here is not final yet: a bypass policy may admit the carrier without
            // credentials; after the edge's 401 it is (`app_token`).
            None => match zone_token(opts, cfg, cache) {
                Ok(Some(token)) => Some(token),
                Ok(None) | Err(_) => cache.load(&opts.hostname),
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
    let token = app_token(opts, cfg, cache, refused.as_ref(), true)?;
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
/// session's (no browser), else [`app_token`]'s (a browser login, unless a parallel process
/// brings one), cached. Without `zone_sessions` the zone session is never sent: curl's
/// default edge is the URL's host, which may be any web server of the zone.
pub(crate) fn token_for(
    opts: &AccessOptions,
    cache: &TokenCache,
    zone_sessions: bool,
) -> Result<Secret, AccessError> {
    if let Some(t) = cache.load_with_margin(&opts.hostname, REFRESH_MARGIN) {
        return Ok(t);
    }
    let cfg = super::client_config(opts.extra_ca.as_deref())?;
    if zone_sessions {
        if let Some(t) = zone_token(opts, &cfg, cache)? {
            return Ok(t);
        }
    }
    app_token(opts, &cfg, cache, None, zone_sessions)
}

/// A usable app token for `opts.hostname`: a cached one (other than `refused`), the one a
/// parallel process is fetching, or a new browser login, which is then cached.
fn app_token(
    opts: &AccessOptions,
    cfg: &Arc<ClientConfig>,
    cache: &TokenCache,
    refused: Option<&Secret>,
    zone_sessions: bool,
) -> Result<Secret, AccessError> {
    let differs = |t: &Secret| refused.is_none_or(|r| r.expose() != t.expose());
    if let Some(t) = cache.load(&opts.hostname).filter(differs) {
        return Ok(t);
    }
    if zone_sessions {
        if let Some(t) = zone_token(opts, cfg, cache)?.filter(differs) {
            return Ok(t);
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
    let token = login_payload(opts, cache, login(opts, Purpose::App)?)?;
    // Whose token this is: a login link opened by someone else would show their account here.
    eprintln!("{}", signed_in_as(&token, &opts.hostname));
    if let Err(e) = cache.store(&opts.hostname, &token) {
        warn!("could not cache the token (the next connection logs in again): {e}");
    }
    drop(guard);
    Ok(token)
}

/// A browser login's plaintext: the app token, then (from an edge that gives one) a line with
/// the zone session, which is cached for its zone when `opts.hostname` is in that zone.
fn login_payload(
    opts: &AccessOptions,
    cache: &TokenCache,
    plain: Vec<u8>,
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
                if let Err(e) = cache.store_zone_session(&zone, &Secret::from(session.to_owned())) {
                    warn!("could not cache the zone session: {e}");
                }
            }
            _ => warn!("the edge handed over a zone session that is not for this host's zone"),
        }
    }
    Ok(token)
}

/// A string claim of a compact JWT, read without checking it (the edge checks).
fn claim(token: &str, name: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let json = crate::proto::base64::decode_url(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims.get(name)?.as_str().map(str::to_owned)
}

/// An app token for `opts.hostname` from the cached zone session, without a browser, cached
/// on success. `Ok(None)`: no zone session, or the edge wants a browser login ("needs fresh
/// login"), or the exchange failed on the way; `Err`: the edge says the identity is not
/// allowed (final: no browser login would change that).
fn zone_token(
    opts: &AccessOptions,
    cfg: &Arc<ClientConfig>,
    cache: &TokenCache,
) -> Result<Option<Secret>, AccessError> {
    let Some((zone, session)) = cache.load_zone_session(&opts.hostname) else {
        return Ok(None);
    };
    let body = serde_json::json!({ "zone_session": session.expose() }).to_string();
    let (status, answer) = match super::https_request(
        opts,
        cfg,
        "POST",
        "/cdn-cgi/access/exchange",
        Some(body.as_bytes()),
    ) {
        Ok(a) => a,
        Err(e) => {
            debug!("zone session exchange for {} failed: {e}", opts.hostname);
            return Ok(None);
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
            Ok(Some(token))
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
            Ok(None)
        }
        _ => {
            debug!("zone session exchange for {}: {why}", opts.hostname);
            Ok(None)
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
    let token = login_payload(opts, cache, login(opts, Purpose::App)?)?;
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
    use crate::access::token_cache::tests::jwt;

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

    #[test]
    fn a_logins_zone_session_is_cached_only_for_the_hosts_own_zone() {
        let tmp = crate::access::token_cache::tests::TempDir::new("payload-zone");
        let cache = TokenCache::new(tmp.0.join("tokens"));
        let opts = |host: &str| AccessOptions {
            hostname: host.into(),
            edge: "127.0.0.1:443".into(),
            extra_ca: None,
            credentials: Credentials::None,
            resume: None,
            resume_granted: None,
            destination: None,
        };
        let far = crate::io::unix_now() + 3600;
        let token = jwt(&format!(r#"{{"exp":{far},"aud":["ssh.example.com"]}}"#));
        let session = jwt(&format!(r#"{{"exp":{far},"aud":"zone:example.com"}}"#));
        let payload = format!("{token}\n{session}\n").into_bytes();
        let got = login_payload(&opts("ssh.example.com"), &cache, payload.clone()).unwrap();
        assert_eq!(got.expose(), token);
        let (zone, cached) = cache.load_zone_session("db.example.com").unwrap();
        assert_eq!(
            (zone.as_str(), cached.expose()),
            ("example.com", session.as_str())
        );
        // A session for a zone the host is not in is not kept (an edge cannot plant one for
        // another zone); an app token alone (an older edge) is fine.
        let cache = TokenCache::new(tmp.0.join("other"));
        login_payload(&opts("ssh.other.org"), &cache, payload).unwrap();
        assert!(cache.load_zone_session("ssh.example.com").is_none());
        assert!(cache.load_zone_session("ssh.other.org").is_none());
        let alone = login_payload(&opts("ssh.other.org"), &cache, token.clone().into_bytes());
        assert_eq!(alone.unwrap().expose(), token);
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
