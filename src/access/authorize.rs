//! Which credentials a carrier carries, and what happens when the edge refuses them.
//!
//! ```text
//!  service token (flags/env) ─────────────────────────────▶ connect; any refusal is final
//!  app token in hand, or a cached one that is not expired ─▶ connect ─┐
//!  nothing ──────────────────────────────────────────────▶ connect ─┤ (a bypass app needs nothing)
//!                                                                   │
//!        101 ◀──────────────────────────────────────────────────────┤
//!        403 ◀── not allowed: final ────────────────────────────────┤
//!        401 ── forget the refused token, log in (one browser login ┘
//!               per hostname across processes), cache, connect once more:
//!                 101 ─▶ done;  401/403 ─▶ "the edge refused the new token: …"
//! ```
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
use super::token_cache::{is_compact_jwt, TokenCache};
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
        if let Some(token) = cache.load(&opts.hostname) {
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
    let token = app_token(opts, cache, refused.as_ref())?;
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

/// A usable app token for `opts.hostname`: a cached one (other than `refused`), the one a
/// parallel process is fetching, or a new browser login, which is then cached.
fn app_token(
    opts: &AccessOptions,
    cache: &TokenCache,
    refused: Option<&Secret>,
) -> Result<Secret, AccessError> {
    let differs = |t: &Secret| refused.is_none_or(|r| r.expose() != t.expose());
    if let Some(t) = cache.load(&opts.hostname).filter(differs) {
        return Ok(t);
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
    let token = app_token_from(login(opts, Purpose::App)?)?;
    // Whose token this is: a login link opened by someone else would show their account here.
    eprintln!("{}", signed_in_as(&token, &opts.hostname));
    if let Err(e) = cache.store(&opts.hostname, &token) {
        warn!("could not cache the token (the next connection logs in again): {e}");
    }
    drop(guard);
    Ok(token)
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
    let token = app_token_from(login(opts, Purpose::App)?)?;
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
