//! The edge as an OpenID Connect relying party: authorization code flow with PKCE (S256),
//! `state` and `nonce`; the ID token's signature is checked against the provider's JWKS and
//! its `iss`, `aud`, `exp` and `nonce` are checked; email and groups come from configurable
//! claims of the ID token, or from the userinfo endpoint when the ID token lacks them.
//!
//! Every call here blocks (ureq): discovery runs before the event loop starts, the code
//! exchange runs in the edge's worker pool, never on the loop.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::proto::base64;
use crate::proto::jwt::{self, Alg, Jwks};
use crate::proto::policy::Identity;
use crate::secret::Secret;

/// The `identity` section of the edge's config for an OpenID Connect provider.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// The issuer URL; `/.well-known/openid-configuration` is read from it at start-up.
    pub issuer: String,
    pub client_id: String,
    /// The client secret. Prefer `client_secret_file` (or env POSTERN_OIDC_CLIENT_SECRET).
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Claim holding the user's email.
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    /// Claim holding the user's groups (an array of strings).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Scopes to ask for besides `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
}

fn default_email_claim() -> String {
    "email".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_scopes() -> Vec<String> {
    vec!["email".into(), "profile".into(), "groups".into()]
}

/// Largest discovery document, JWKS, token or userinfo response read from a provider.
const MAX_RESPONSE: u64 = 256 * 1024;
/// Clock skew tolerated between edge and provider.
const LEEWAY_SECS: u64 = 120;

#[derive(Debug)]
#[non_exhaustive]
pub enum OidcError {
    /// The provider could not be reached or answered with an HTTP error.
    Http(String),
    /// A provider document did not parse.
    Document(String),
    /// The ID token failed verification.
    Token(String),
    /// The provider reported an error in the callback (e.g. the user cancelled).
    Provider(String),
}

impl fmt::Display for OidcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OidcError::Http(e) => write!(f, "identity provider unreachable: {e}"),
            OidcError::Document(e) => write!(f, "identity provider document: {e}"),
            OidcError::Token(e) => write!(f, "ID token refused: {e}"),
            OidcError::Provider(e) => write!(f, "identity provider said: {e}"),
        }
    }
}

impl std::error::Error for OidcError {}

#[derive(Clone, Debug, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: String,
    #[serde(default)]
    access_token: Option<String>,
}

/// A provider, discovered and ready. Shared with the worker threads.
pub struct Provider {
    pub settings: OidcSettings,
    secret: Secret,
    pub discovery: Discovery,
    jwks: Mutex<Jwks>,
    agent: ureq::Agent,
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let verifier = base64::encode_url(&crate::io::random_bytes::<32>());
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    (verifier, base64::encode_url(digest.as_ref()))
}

fn agent(extra_ca: Option<&std::path::Path>) -> Result<ureq::Agent, OidcError> {
    let roots = crate::pki::root_certs(extra_ca).map_err(|e| OidcError::Http(e.to_string()))?;
    let roots: Vec<ureq::tls::Certificate<'static>> = roots
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    Ok(ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(Duration::from_secs(15)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent())
}

impl Provider {
    /// Reads the discovery document and the JWKS (blocking; at start-up).
    pub fn discover(
        settings: OidcSettings,
        secret: Secret,
        extra_ca: Option<&std::path::Path>,
    ) -> Result<Provider, OidcError> {
        let agent = agent(extra_ca)?;
        let issuer = settings.issuer.trim_end_matches('/').to_owned();
        let url = format!("{issuer}/.well-known/openid-configuration");
        let body = get(&agent, &url)?;
        let discovery: Discovery = serde_json::from_slice(&body)
            .map_err(|e| OidcError::Document(format!("{url}: {e}")))?;
        if discovery.issuer.trim_end_matches('/') != issuer {
            return Err(OidcError::Document(format!(
                "{url} names issuer {:?}, expected {issuer:?}",
                discovery.issuer
            )));
        }
        let jwks = fetch_jwks(&agent, &discovery.jwks_uri)?;
        Ok(Provider {
            settings,
            secret,
            discovery,
            jwks: Mutex::new(jwks),
            agent,
        })
    }

    /// Where to send the browser.
    pub fn authorize_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: &str,
    ) -> String {
        let mut scope = String::from("openid");
        for s in &self.settings.scopes {
            if s != "openid" {
                scope.push(' ');
                scope.push_str(s);
            }
        }
        crate::proto::url::with_query(
            &self.discovery.authorization_endpoint,
            &[
                ("response_type", "code"),
                ("client_id", &self.settings.client_id),
                ("redirect_uri", redirect_uri),
                ("scope", &scope),
                ("state", state),
                ("nonce", nonce),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
            ],
        )
    }

    /// Exchanges the code, verifies the ID token, and returns who signed in (blocking).
    pub fn exchange(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        nonce: &str,
        now: u64,
    ) -> Result<Identity, OidcError> {
        self.exchange_signed_in(code, verifier, redirect_uri, nonce, now)
            .map(|(id, _)| id)
    }

    /// [`Provider::exchange`], with how the person authenticated ([`SignIn`], from the
    /// verified ID token) for the zone session.
    pub fn exchange_signed_in(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        nonce: &str,
        now: u64,
    ) -> Result<(Identity, SignIn), OidcError> {
        let basic = base64::encode(
            format!(
                "{}:{}",
                crate::proto::url::encode(&self.settings.client_id),
                crate::proto::url::encode(self.secret.expose())
            )
            .as_bytes(),
        );
        let mut resp = self
            .agent
            .post(&self.discovery.token_endpoint)
            .header("Authorization", &format!("Basic {basic}"))
            .header("Accept", "application/json")
            .send_form([
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
            ])
            .map_err(|e| OidcError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| OidcError::Http(e.to_string()))?;
        if status != 200 {
            let why = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("error_description")
                        .or_else(|| v.get("error"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(OidcError::Provider(format!("token exchange failed: {why}")));
        }
        let tokens: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| OidcError::Document(format!("token response: {e}")))?;
        let claims = self.verify_id_token(&tokens.id_token, nonce, now)?;
        let id = signed_in(&self.settings, &claims, || {
            match (&self.discovery.userinfo_endpoint, &tokens.access_token) {
                (Some(url), Some(at)) => self.userinfo(url, at).map(Some),
                _ => Ok(None),
            }
        })?;
        Ok((id, SignIn::from_claims(&claims)))
    }

    fn verify_id_token(&self, token: &str, nonce: &str, now: u64) -> Result<Value, OidcError> {
        let allowed = [Alg::RS256, Alg::ES256, Alg::EdDSA];
        let verified = {
            let jwks = self.jwks.lock().unwrap_or_else(|p| p.into_inner());
            jwt::verify(token, &jwks, &allowed)
        };
        let verified = match verified {
            Ok(v) => v,
            Err(jwt::JwtError::UnknownKey { .. }) => {
                // The provider rotated its keys: fetch the JWKS once more.
                let fresh = fetch_jwks(&self.agent, &self.discovery.jwks_uri)?;
                let v = jwt::verify(token, &fresh, &allowed)
                    .map_err(|e| OidcError::Token(e.to_string()))?;
                *self.jwks.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                v
            }
            Err(e) => return Err(OidcError::Token(e.to_string())),
        };
        let claims: Value = serde_json::from_slice(&verified.payload)
            .map_err(|e| OidcError::Token(format!("payload: {e}")))?;
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        if iss.trim_end_matches('/') != self.discovery.issuer.trim_end_matches('/') {
            return Err(OidcError::Token(format!(
                "issued by {iss:?}, not our provider"
            )));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == self.settings.client_id,
            Some(Value::Array(list)) => list
                .iter()
                .any(|a| a.as_str() == Some(self.settings.client_id.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(OidcError::Token("issued for another client".into()));
        }
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        if exp + LEEWAY_SECS <= now {
            return Err(OidcError::Token("expired".into()));
        }
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(OidcError::Token("nonce does not match this login".into()));
        }
        Ok(claims)
    }

    fn userinfo(&self, url: &str, access_token: &str) -> Result<Value, OidcError> {
        let mut resp = self
            .agent
            .get(url)
            .header("Authorization", &format!("Bearer {access_token}"))
            .call()
            .map_err(|e| OidcError::Http(e.to_string()))?;
        if resp.status().as_u16() != 200 {
            return Err(OidcError::Http(format!("userinfo: HTTP {}", resp.status())));
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| OidcError::Http(e.to_string()))?;
        serde_json::from_slice(&body).map_err(|e| OidcError::Document(format!("userinfo: {e}")))
    }
}

/// What a claims object says of its email: `Some(false)` for `"email_verified": false` (or the
/// string `"false"`, as some providers send it), `Some(true)` for true, `None` when the claim
/// is absent or anything else.
fn email_verified(claims: &Value) -> Option<bool> {
    match claims.get("email_verified")? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        _ => None,
    }
}

/// How the person authenticated at the provider, from the verified ID token: what a zone
/// session records so that an application's `max_age` or `amr`/`acr` rule can be checked
/// when a token for it is exchanged. Provider text, bounded here; never shown unescaped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignIn {
    /// The ID token's `auth_time` (Unix seconds), if it has one.
    pub auth_time: Option<u64>,
    /// The ID token's `amr` (at most 16 values of at most 64 characters).
    pub amr: Vec<String>,
    /// The ID token's `acr` (at most 256 characters).
    pub acr: Option<String>,
}

impl SignIn {
    /// Reads `auth_time`, `amr` and `acr` from verified ID-token claims; anything of the
    /// wrong type is left out.
    pub fn from_claims(claims: &Value) -> SignIn {
        let short = |s: &str, max: usize| s.chars().take(max).collect::<String>();
        SignIn {
            auth_time: claims.get("auth_time").and_then(Value::as_u64),
            amr: match claims.get("amr") {
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .take(16)
                    .map(|m| short(m, 64))
                    .collect(),
                _ => Vec::new(),
            },
            acr: claims
                .get("acr")
                .and_then(Value::as_str)
                .map(|a| short(a, 256)),
        }
    }
}

/// The identity in one claims object (ID token or userinfo). The email is dropped when the
/// same object says `email_verified: false`: policies then see no email, so no `email` or
/// `email_domain` rule can match an address the provider has not verified. An absent claim
/// is trusted (many providers omit it for addresses they manage themselves).
fn identity_from(settings: &OidcSettings, claims: &Value) -> Identity {
    let email = claims
        .get(&settings.email_claim)
        .and_then(Value::as_str)
        .filter(|e| email_verified(claims) != Some(false) && e.contains('@'))
        .map(str::to_ascii_lowercase);
    let groups = match claims.get(&settings.groups_claim) {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .take(256)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(g)) => vec![g.clone()],
        _ => Vec::new(),
    };
    Identity {
        email,
        groups,
        service_token: None,
    }
}

/// Who signed in, from the verified ID token's `claims`, and from the userinfo endpoint
/// (`userinfo`, called only when the ID token has no email) otherwise. An explicit
/// `email_verified: false` in either refuses the sign-in: a userinfo answer that merely omits
/// the claim does not overrule an ID token that says the address is unverified.
fn signed_in(
    settings: &OidcSettings,
    claims: &Value,
    userinfo: impl FnOnce() -> Result<Option<Value>, OidcError>,
) -> Result<Identity, OidcError> {
    let unverified = || {
        OidcError::Token(format!(
            "the identity provider says the address in {:?} is not verified \
             (email_verified: false): verify it at the provider, then sign in again",
            settings.email_claim
        ))
    };
    if email_verified(claims) == Some(false) {
        return Err(unverified());
    }
    let mut id = identity_from(settings, claims);
    if id.email.is_none() {
        if let Some(info) = userinfo()? {
            if info.get("sub") != claims.get("sub") {
                return Err(OidcError::Token(
                    "userinfo is about another subject than the ID token".into(),
                ));
            }
            if email_verified(&info) == Some(false) {
                return Err(unverified());
            }
            id = identity_from(settings, &info);
        }
    }
    if id.email.is_none() {
        return Err(OidcError::Token(format!(
            "no {:?} claim: ask for the email scope or set identity.email_claim",
            settings.email_claim
        )));
    }
    Ok(id)
}

fn get(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, OidcError> {
    let mut resp = agent
        .get(url)
        .header("Accept", "application/json")
        .call()
        .map_err(|e| OidcError::Http(format!("{url}: {e}")))?;
    if resp.status().as_u16() != 200 {
        return Err(OidcError::Http(format!("{url}: HTTP {}", resp.status())));
    }
    resp.body_mut()
        .with_config()
        .limit(MAX_RESPONSE)
        .read_to_vec()
        .map_err(|e| OidcError::Http(format!("{url}: {e}")))
}

fn fetch_jwks(agent: &ureq::Agent, url: &str) -> Result<Jwks, OidcError> {
    let body = get(agent, url)?;
    Jwks::parse(&body).map_err(|e| OidcError::Document(format!("{url}: {e}")))
}

#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub fn fuzz_documents(data: &[u8]) {
    let _ = serde_json::from_slice::<Discovery>(data);
    let _ = Jwks::parse(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_s256_of_the_verifier() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
        assert_eq!(
            base64::encode_url(digest.as_ref()),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let (v, c) = pkce();
        assert_eq!(v.len(), 43);
        let d = ring::digest::digest(&ring::digest::SHA256, v.as_bytes());
        assert_eq!(base64::encode_url(d.as_ref()), c);
    }

    fn settings() -> OidcSettings {
        serde_json::from_value(serde_json::json!({
            "issuer": "http://127.0.0.1:1", "client_id": "c"
        }))
        .unwrap()
    }

    fn no_userinfo() -> Result<Option<Value>, OidcError> {
        Ok(None)
    }

    #[test]
    fn an_unverified_email_is_never_an_identity() {
        let s = settings();
        let claims = |verified: Value| {
            serde_json::json!({ "sub": "1", "email": "Mallory@Example.com",
                                "email_verified": verified, "groups": ["ops"] })
        };
        // Explicitly false, as a boolean or as the string some providers send: no email.
        for v in [serde_json::json!(false), serde_json::json!("false")] {
            let c = claims(v);
            assert_eq!(identity_from(&s, &c).email, None);
            let err = signed_in(&s, &c, no_userinfo).unwrap_err().to_string();
            assert!(err.contains("not verified"), "{err}");
        }
        // True, or absent (many providers omit it): trusted.
        let id = signed_in(&s, &claims(serde_json::json!(true)), no_userinfo).unwrap();
        assert_eq!(id.email.as_deref(), Some("mallory@example.com"));
        assert_eq!(id.groups, ["ops"]);
        let absent = serde_json::json!({ "sub": "1", "email": "a@example.com" });
        assert!(signed_in(&s, &absent, no_userinfo).unwrap().email.is_some());
    }

    #[test]
    fn userinfo_cannot_launder_an_email_the_id_token_calls_unverified() {
        let s = settings();
        let id_token = serde_json::json!({ "sub": "1", "email": "m@example.com",
                                           "email_verified": false });
        let silent = serde_json::json!({ "sub": "1", "email": "m@example.com" });
        let err = signed_in(&s, &id_token, || Ok(Some(silent.clone())))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not verified"), "{err}");
        // An ID token without email defers to userinfo, whose own `false` also refuses.
        let bare = serde_json::json!({ "sub": "1" });
        let unverified = serde_json::json!({ "sub": "1", "email": "m@example.com",
                                             "email_verified": "false" });
        assert!(signed_in(&s, &bare, || Ok(Some(unverified.clone()))).is_err());
        let verified = serde_json::json!({ "sub": "1", "email": "m@example.com",
                                           "email_verified": true });
        assert_eq!(
            signed_in(&s, &bare, || Ok(Some(verified.clone())))
                .unwrap()
                .email
                .as_deref(),
            Some("m@example.com")
        );
        let other = serde_json::json!({ "sub": "2", "email": "m@example.com" });
        assert!(signed_in(&s, &bare, || Ok(Some(other.clone()))).is_err());
    }

    #[test]
    fn discovery_documents_parse_and_ignore_extras() {
        let d: Discovery = serde_json::from_str(
            r#"{"issuer":"http://127.0.0.1:1","authorization_endpoint":"http://127.0.0.1:1/auth",
                "token_endpoint":"http://127.0.0.1:1/token","jwks_uri":"http://127.0.0.1:1/jwks",
                "claims_supported":["sub","email"]}"#,
        )
        .unwrap();
        assert_eq!(d.userinfo_endpoint, None);
        assert!(serde_json::from_str::<Discovery>(r#"{"issuer":"x"}"#).is_err());
    }
}
