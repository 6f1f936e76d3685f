//! JSON Web Tokens (RFC 7519) in JWS compact form (RFC 7515): verifying the identity provider's
//! ID tokens and the edge's own app tokens, and signing the latter.
//!
//! Contract:
//! - Sans-IO: no clock, no files, no network. `now` (unix seconds) is an argument; the caller
//!   fetches JWKS documents and stores the edge's key ring (0600, atomically).
//! - Three algorithms exist here: EdDSA (Ed25519), ES256 and RS256, and every verifier passes the
//!   subset it expects. `none`, HMAC and anything unknown are refused from the header alone,
//!   before a key is looked at, so a public key can never serve as an HMAC secret.
//! - Keys come only from the JWKS the caller passes. Header parameters that point elsewhere
//!   (`jku`, `jwk`, `x5u`, `x5c`) are ignored; a header with `crit` is refused.
//! - Inputs are bounded ([`MAX_TOKEN_LEN`], [`MAX_JWKS_LEN`], [`MAX_JWKS_KEYS`]) before they are
//!   decoded; base64url is strict (one spelling per byte string). No input panics.
//! - Errors never carry a token, a signature or key material. Strings taken from a token or key
//!   set (alg, kid, iss, aud) are shortened and stripped of control characters.
//!
//! ```text
//!  token ─len─▶ split on '.' ─▶ header: alg known? allowed? no crit?
//!        ─▶ key: by kid (kty/crv/alg/use must fit) or the only key that fits
//!        ─▶ signature (ring) ─▶ Verified { header, payload }
//!  payload ─▶ Claims ─check(iss, aud, exp, nbf, iat; leeway)─▶ Claims
//! ```
//!
//! The edge signs app tokens with Ed25519 ([`SigningKey`]). Its [`KeyRing`] rotates: the old
//! key's public half stays in the published JWKS until every token it signed has expired.
//!
//! The same key signs [`OriginAssertion`]s: what the edge tells an origin about each stream it
//! opens. Two kinds of token from one key must never stand in for each other, so each names its
//! kind twice (RFC 8725 §3.11): the header `typ` ([`APP_TOKEN_TYP`] or
//! [`ORIGIN_ASSERTION_TYP`]) and, in an assertion, the claim `postern_kind`.
//! [`KeyRing::verify_app_token`] refuses an assertion and [`verify_origin_assertion`] refuses an
//! app token, whatever their audiences.

use std::fmt;

use ring::signature::{self, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::de::{Deserializer, IgnoredAny};
use serde::{Deserialize, Serialize};

use crate::proto::base64;

pub use crate::limits::MAX_JWKS_KEYS;
pub use crate::limits::MAX_JWKS_LEN;
pub use crate::limits::MAX_TOKEN_LEN;

/// Longest string taken from a token or key set that an error message shows, in characters.
const MAX_SHOWN: usize = 64;
/// Version of the key-ring file written by [`KeyRing::to_json`].
const KEY_RING_VERSION: u32 = 1;

/// The header `typ` of the edge's app tokens (the bearer tokens clients present).
pub const APP_TOKEN_TYP: &str = "JWT";
/// The header `typ` of an [`OriginAssertion`]: explicit typing, so that no app-token check
/// takes one for a token (RFC 8725 §3.11).
pub const ORIGIN_ASSERTION_TYP: &str = "postern-origin-assertion+jwt";
/// The `postern_kind` claim of an [`OriginAssertion`]; an app token never carries that claim.
pub const ORIGIN_ASSERTION_KIND: &str = "origin_assertion";
pub use crate::limits::ORIGIN_ASSERTION_LIFETIME_SECS;
/// The header `typ` of a [`ZoneSession`]: explicit typing, so that no app-token check takes
/// one for a token (RFC 8725 §3.11).
pub const ZONE_SESSION_TYP: &str = "postern-zone-session+jwt";
/// The `postern_kind` claim of a [`ZoneSession`].
pub const ZONE_SESSION_KIND: &str = "zone_session";
/// The claim of a [`ZoneSession`] that states the edge's key (`postern_edge_spki`).
pub const ZONE_SESSION_EDGE_KEY: &str = "postern_edge_spki";
/// The prefix of a zone session's `aud`: `zone:<zone>`. A colon is never in a hostname, so
/// no application's audience can equal it.
pub const ZONE_SESSION_AUD_PREFIX: &str = "zone:";

/// A JWS signature algorithm postern implements, by its JOSE name.
#[allow(clippy::upper_case_acronyms)] // the JOSE names, as they appear in tokens
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alg {
    EdDSA,
    ES256,
    RS256,
}

impl Alg {
    /// Every algorithm postern implements.
    pub const ALL: [Alg; 3] = [Alg::EdDSA, Alg::ES256, Alg::RS256];

    /// The JOSE name (`"EdDSA"`, `"ES256"`, `"RS256"`).
    pub fn name(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
            Alg::RS256 => "RS256",
        }
    }

    /// The algorithm with this exact (case-sensitive) JOSE name.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|alg| alg.name() == name)
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One public key of a JWKS (RFC 7517). Members postern does not use are ignored when parsing
/// (providers add many: `x5c`, `x5t`, `key_ops`...) and private members (`d`, `p`...) are never
/// read nor written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `"OKP"` (Ed25519), `"EC"` (P-256) or `"RSA"`; others are never selected.
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// When present, the only algorithm this key may verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// `"sig"` or `"enc"`; a key marked `"enc"` never verifies a signature.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// RSA modulus, base64url big-endian.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent, base64url big-endian.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Curve: `"P-256"` (kty EC) or `"Ed25519"` (kty OKP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// EC x coordinate, or the Ed25519 public key; base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y coordinate, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

impl Jwk {
    /// Whether this key may verify a token signed with `alg`: right type and curve, and no
    /// `alg` or `use` member that says otherwise.
    pub fn fits(&self, alg: Alg) -> bool {
        let shape = match alg {
            Alg::EdDSA => self.kty == "OKP" && self.crv.as_deref() == Some("Ed25519"),
            Alg::ES256 => self.kty == "EC" && self.crv.as_deref() == Some("P-256"),
            Alg::RS256 => self.kty == "RSA",
        };
        shape
            && self.alg.as_deref().is_none_or(|a| a == alg.name())
            && self.use_.as_deref().is_none_or(|u| u == "sig")
    }
}

/// A JWK Set: what an identity provider publishes at its `jwks_uri`, and what the edge serves
/// at `/cdn-cgi/access/certs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// Parses a JWKS document of at most [`MAX_JWKS_LEN`] bytes and [`MAX_JWKS_KEYS`] keys.
    pub fn parse(json: &[u8]) -> Result<Jwks, JwtError> {
        if json.len() > MAX_JWKS_LEN {
            return Err(JwtError::TooLarge {
                what: "key set",
                max: MAX_JWKS_LEN,
            });
        }
        let jwks: Jwks = from_json_object(json).map_err(|_| {
            JwtError::InvalidJwks("not a JSON object with a \"keys\" array of key objects")
        })?;
        if jwks.keys.len() > MAX_JWKS_KEYS {
            return Err(JwtError::TooLarge {
                what: "key set",
                max: MAX_JWKS_KEYS,
            });
        }
        Ok(jwks)
    }

    /// The JSON document to publish.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("bug: a key set of strings always serializes")
    }
}

/// The protected header of a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub alg: Alg,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// A token whose signature checked out. The payload is not yet interpreted: see [`Claims`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub header: Header,
    /// The decoded payload (JSON bytes for a JWT).
    pub payload: Vec<u8>,
}

/// The header as it arrives. Duplicate members are errors (serde's derive), `crit` is noted
/// whatever its value, other members are ignored.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// Parses `bytes` as `T` only if the JSON text is an object (serde's derive would also take an
/// array, member by position).
fn from_json_object<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    if !is_json_object(bytes) {
        return Err(serde::de::Error::custom("not a JSON object"));
    }
    serde_json::from_slice(bytes)
}

/// Whether the JSON text starts as an object; the parser then checks the rest.
fn is_json_object(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Checks `token`'s signature against `jwks`, accepting only the algorithms in `allowed`.
/// Claims are not looked at: use [`verify_claims`] for a JWT.
pub fn verify(token: &str, jwks: &Jwks, allowed: &[Alg]) -> Result<Verified, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLarge {
            what: "token",
            max: MAX_TOKEN_LEN,
        });
    }
    let mut parts = token.split('.');
    let header_b64 = parts.next().unwrap_or_default();
    // The header first: "alg none" is a clearer refusal than "wrong number of parts".
    let header = parse_header(header_b64, allowed)?;
    let (Some(payload_b64), Some(signature_b64), None) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "a token has exactly three parts separated by dots",
        ));
    };
    let payload = decode_part(payload_b64, "payload is not base64url")?;
    let signature = decode_part(signature_b64, "signature is not base64url")?;
    if signature.is_empty() {
        return Err(JwtError::Malformed("token has no signature"));
    }
    let key = select_key(jwks, &header)?;
    let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    check_signature(header.alg, key, signing_input, &signature)?;
    Ok(Verified { header, payload })
}

fn decode_part(part: &str, what: &'static str) -> Result<Vec<u8>, JwtError> {
    base64::decode_url(part).map_err(|_| JwtError::Malformed(what))
}

fn parse_header(header_b64: &str, allowed: &[Alg]) -> Result<Header, JwtError> {
    let bytes = decode_part(header_b64, "header is not base64url")?;
    let raw: RawHeader = from_json_object(&bytes)
        .map_err(|_| JwtError::Malformed("header is not a JSON object with one string \"alg\""))?;
    let Some(alg) = Alg::from_name(&raw.alg) else {
        return Err(JwtError::UnsupportedAlg {
            alg: shown(&raw.alg),
        });
    };
    if !allowed.contains(&alg) {
        return Err(JwtError::AlgNotAllowed { alg });
    }
    if raw.crit {
        return Err(JwtError::CriticalHeader);
    }
    Ok(Header {
        alg,
        kid: raw.kid,
        typ: raw.typ,
    })
}

fn select_key<'a>(jwks: &'a Jwks, header: &Header) -> Result<&'a Jwk, JwtError> {
    let alg = header.alg;
    if let Some(kid) = &header.kid {
        let mut named = jwks
            .keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
            .peekable();
        if named.peek().is_none() {
            return Err(JwtError::UnknownKey {
                kid: Some(shown(kid)),
            });
        }
        return named
            .find(|k| k.fits(alg))
            .ok_or_else(|| JwtError::KeyAlgMismatch {
                kid: shown(kid),
                alg,
            });
    }
    let mut fitting = jwks.keys.iter().filter(|k| k.fits(alg));
    match (fitting.next(), fitting.next()) {
        (Some(key), None) => Ok(key),
        (None, _) => Err(JwtError::UnknownKey { kid: None }),
        (Some(_), Some(_)) => Err(JwtError::AmbiguousKey {
            alg,
            keys: jwks.keys.iter().filter(|k| k.fits(alg)).count(),
        }),
    }
}

fn check_signature(alg: Alg, key: &Jwk, message: &[u8], sig: &[u8]) -> Result<(), JwtError> {
    let invalid = |reason| JwtError::InvalidKey {
        kid: key.kid.as_deref().map(shown),
        reason,
    };
    let member = |value: &Option<String>, reason| {
        value
            .as_deref()
            .and_then(|v| base64::decode_url(v).ok())
            .ok_or_else(|| invalid(reason))
    };
    let bad = |_| JwtError::BadSignature;
    match alg {
        Alg::EdDSA => {
            let x = member(&key.x, "Ed25519 key has no base64url \"x\"")?;
            if x.len() != 32 {
                return Err(invalid("Ed25519 public key is not 32 bytes"));
            }
            if sig.len() != 64 {
                return Err(JwtError::BadSignature);
            }
            UnparsedPublicKey::new(&signature::ED25519, &x)
                .verify(message, sig)
                .map_err(bad)
        }
        Alg::ES256 => {
            let x = member(&key.x, "P-256 key has no base64url \"x\"")?;
            let y = member(&key.y, "P-256 key has no base64url \"y\"")?;
            if x.len() != 32 || y.len() != 32 {
                return Err(invalid("P-256 coordinates are not 32 bytes each"));
            }
            if sig.len() != 64 {
                return Err(JwtError::BadSignature);
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04); // SEC 1 uncompressed point
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
                .verify(message, sig)
                .map_err(bad)
        }
        Alg::RS256 => {
            let n = member(&key.n, "RSA key has no base64url \"n\"")?;
            let e = member(&key.e, "RSA key has no base64url \"e\"")?;
            if !(256..=1024).contains(&n.len()) || n[0] == 0 {
                return Err(invalid("RSA modulus is not 2048 to 8192 bits"));
            }
            if e.is_empty() || e.len() > 4 || e[0] == 0 {
                return Err(invalid(
                    "RSA exponent is not a minimal number of 1 to 4 bytes",
                ));
            }
            if sig.len() != n.len() {
                return Err(JwtError::BadSignature);
            }
            signature::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .map_err(bad)
        }
    }
}

/// `aud`: one application or several (RFC 7519 §4.1.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(one) => one == aud,
            Audience::Many(many) => many.iter().any(|a| a == aud),
        }
    }

    fn shown(&self) -> String {
        match self {
            Audience::One(one) => shown(one),
            Audience::Many(many) => shown(&many.join(", ")),
        }
    }
}

/// The claims postern reads from an ID token or app token. Other claims are ignored; a claim
/// that appears twice is an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: Audience,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// How the person signed in at the provider (an app token repeats the ID token's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
}

impl Claims {
    /// Reads the claims from a verified payload.
    pub fn parse(payload: &[u8]) -> Result<Claims, JwtError> {
        if !is_json_object(payload) {
            return Err(JwtError::InvalidClaims(
                "payload is not a JSON object".into(),
            ));
        }
        serde_json::from_slice(payload).map_err(|e| claims_error(&e))
    }

    /// Checks issuer (exact), audience (contains `aud`) and times: `exp` after `now - leeway`,
    /// `nbf` and `iat` no later than `now + leeway`.
    pub fn check(&self, iss: &str, aud: &str, now: u64, leeway_secs: u64) -> Result<(), JwtError> {
        if self.iss != iss {
            return Err(JwtError::WrongIssuer {
                expected: shown(iss),
                got: shown(&self.iss),
            });
        }
        if !self.aud.contains(aud) {
            return Err(JwtError::WrongAudience {
                expected: shown(aud),
                got: self.aud.shown(),
            });
        }
        if self.exp.saturating_add(leeway_secs) <= now {
            return Err(JwtError::Expired {
                secs_ago: now - self.exp,
            });
        }
        let latest = now.saturating_add(leeway_secs);
        if let Some(nbf) = self.nbf.filter(|&nbf| nbf > latest) {
            return Err(JwtError::NotYetValid { in_secs: nbf - now });
        }
        if self.iat > latest {
            return Err(JwtError::IssuedInFuture {
                secs: self.iat - now,
            });
        }
        Ok(())
    }
}

/// serde_json's messages may quote claim values; keep only what names a claim or a position.
fn claims_error(e: &serde_json::Error) -> JwtError {
    let message = e.to_string();
    let field = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(shown)
    };
    let detail = if let Some(name) = field("missing field `") {
        format!("claim {name} is missing")
    } else if let Some(name) = field("duplicate field `") {
        format!("claim {name} appears twice")
    } else if e.is_data() {
        format!("a claim has the wrong type (column {})", e.column())
    } else {
        "payload is not a JSON object".to_string()
    };
    JwtError::InvalidClaims(detail)
}

/// [`verify`], then [`Claims::parse`] and [`Claims::check`].
pub fn verify_claims(
    token: &str,
    jwks: &Jwks,
    allowed: &[Alg],
    iss: &str,
    aud: &str,
    now: u64,
    leeway_secs: u64,
) -> Result<Claims, JwtError> {
    let verified = verify(token, jwks, allowed)?;
    let claims = Claims::parse(&verified.payload)?;
    claims.check(iss, aud, now, leeway_secs)?;
    Ok(claims)
}

/// Whether a payload has a `postern_kind` claim, whatever its value (or is not an object a
/// probe can read, which [`Claims::parse`] refuses anyway).
fn has_kind_claim(payload: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "present")]
        postern_kind: bool,
    }
    from_json_object::<Probe>(payload).is_ok_and(|p| p.postern_kind)
}

/// What the edge tells an origin about one stream it opens: who was admitted, to which
/// hostname, on which stream. The edge signs it with its app-token key ([`KeyRing`]), typed
/// [`ORIGIN_ASSERTION_TYP`] with `postern_kind` [`ORIGIN_ASSERTION_KIND`], valid for
/// [`ORIGIN_ASSERTION_LIFETIME_SECS`]; an origin checks it with [`verify_origin_assertion`]
/// against the edge's published JWKS (`/cdn-cgi/access/certs`).
///
/// It is not a credential: [`KeyRing::verify_app_token`] refuses it, so an origin that keeps
/// one cannot present it anywhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginAssertion {
    /// The edge's public URL.
    pub iss: String,
    /// The stream's exact hostname (never an application's `*.zone` pattern).
    pub aud: String,
    /// The email of a signed-in user; empty for a service token or a bypass policy.
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The name of the service token that was admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_token: Option<String>,
    /// The mux stream the edge opened for this client.
    pub stream: u32,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    /// Random, one per stream.
    pub jti: String,
    /// Always [`ORIGIN_ASSERTION_KIND`].
    pub postern_kind: String,
}

impl OriginAssertion {
    /// An assertion for `stream` to `hostname`, issued by `iss` at `now` with the random `jti`,
    /// for nobody yet: the caller fills in `sub`, `email`, `groups` or `service_token`.
    pub fn new(iss: &str, hostname: &str, stream: u32, now: u64, jti: String) -> OriginAssertion {
        OriginAssertion {
            iss: iss.to_owned(),
            aud: hostname.to_owned(),
            sub: String::new(),
            email: None,
            groups: Vec::new(),
            service_token: None,
            stream,
            iat: now,
            nbf: now,
            exp: now.saturating_add(ORIGIN_ASSERTION_LIFETIME_SECS),
            jti,
            postern_kind: ORIGIN_ASSERTION_KIND.to_owned(),
        }
    }
}

/// A zone session (issue 15, "one login per zone"): what a browser login gives the CLI besides
/// the app token, so that tokens for the zone's other applications can be had without another
/// browser login, at the edge's exchange endpoint only (`/cdn-cgi/access/exchange`).
///
/// Signed by the edge's app-token key ([`KeyRing`]), so every edge of a pool can check it;
/// typed [`ZONE_SESSION_TYP`] with `postern_kind` [`ZONE_SESSION_KIND`] and an audience of
/// [`ZONE_SESSION_AUD_PREFIX`]`<zone>`, so [`KeyRing::verify_app_token`] refuses it: it opens no
/// carrier and the edge never forwards it (an origin only ever sees an [`OriginAssertion`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneSession {
    /// The edge's public URL.
    pub iss: String,
    /// `zone:<zone>`.
    pub aud: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The groups at login: an exchange evaluates the target application's policy with them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    /// Random; names the session in audit lines.
    pub jti: String,
    /// When the person authenticated at the provider (its ID token's `auth_time`; absent when
    /// the provider did not say): an application's `max_age` is checked against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
    /// The ID token's `amr`, if it had one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// The ID token's `acr`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// Always [`ZONE_SESSION_KIND`].
    pub postern_kind: String,
    /// [`ZONE_SESSION_EDGE_KEY`]: the lowercase hex SHA-256 of the SubjectPublicKeyInfo of the
    /// key the edge serves the zone's names with. The CLI keeps the session only when the
    /// connection that delivered it showed that key, and sends it only to that key. Absent in
    /// sessions from edges before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postern_edge_spki: Option<String>,
}

impl ZoneSession {
    /// The zone this session is bound to (its audience without the prefix).
    pub fn zone(&self) -> &str {
        self.aud
            .strip_prefix(ZONE_SESSION_AUD_PREFIX)
            .unwrap_or_default()
    }
}

/// Checks an origin assertion as an origin would: EdDSA signature against `jwks` (the edge's
/// `/cdn-cgi/access/certs`), typed [`ORIGIN_ASSERTION_TYP`] with `postern_kind`
/// [`ORIGIN_ASSERTION_KIND`], `iss`, `aud` exactly `hostname`, times, and a lifetime of at most
/// [`ORIGIN_ASSERTION_LIFETIME_SECS`]. An app token is refused, whatever its audience.
pub fn verify_origin_assertion(
    token: &str,
    jwks: &Jwks,
    iss: &str,
    hostname: &str,
    now: u64,
    leeway_secs: u64,
) -> Result<OriginAssertion, JwtError> {
    let verified = verify(token, jwks, &[Alg::EdDSA])?;
    let wrong_kind = JwtError::WrongKind {
        expected: "an origin assertion",
    };
    if verified.header.typ.as_deref() != Some(ORIGIN_ASSERTION_TYP) {
        return Err(wrong_kind);
    }
    let claims = Claims::parse(&verified.payload)?;
    claims.check(iss, hostname, now, leeway_secs)?;
    let assertion: OriginAssertion =
        serde_json::from_slice(&verified.payload).map_err(|e| claims_error(&e))?;
    if assertion.postern_kind != ORIGIN_ASSERTION_KIND {
        return Err(wrong_kind);
    }
    if assertion.exp.saturating_sub(assertion.iat) > ORIGIN_ASSERTION_LIFETIME_SECS {
        return Err(JwtError::InvalidClaims(format!(
            "an origin assertion is valid for at most {ORIGIN_ASSERTION_LIFETIME_SECS} s"
        )));
    }
    Ok(assertion)
}

/// The key id postern gives an Ed25519 public key: base64url of the first 12 bytes of its
/// SHA-256 (16 characters).
pub fn key_id(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    base64::encode_url(&digest.as_ref()[..12])
}

/// The edge's Ed25519 signing key for app tokens. No `Debug`: it holds a private key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    kid: String,
}

impl SigningKey {
    /// A fresh key with kid [`key_id`], and its PKCS#8 v2 document for the caller to store
    /// (0600).
    ///
    /// # Panics
    /// If the OS random source fails (getrandom), which leaves nothing sensible to do.
    pub fn generate() -> (SigningKey, Vec<u8>) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .expect("the OS random source failed");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .expect("bug: ring rejects the PKCS#8 it just generated");
        let kid = key_id(pair.public_key().as_ref());
        (SigningKey { pair, kid }, pkcs8.as_ref().to_vec())
    }

    /// Loads a stored Ed25519 PKCS#8 v2 document (as written by [`SigningKey::generate`]).
    /// `kid` is normally [`key_id`] of the public key, as [`SigningKey::generate`] chose it.
    pub fn from_pkcs8(der: &[u8], kid: String) -> Result<SigningKey, JwtError> {
        let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|_| JwtError::InvalidSigningKey)?;
        Ok(SigningKey { pair, kid })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The public key as published in the JWKS.
    pub fn public_jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            kid: Some(self.kid.clone()),
            alg: Some(Alg::EdDSA.name().into()),
            use_: Some("sig".into()),
            crv: Some("Ed25519".into()),
            x: Some(base64::encode_url(self.public_key())),
            ..Jwk::default()
        }
    }

    /// A compact JWS over `claims` with header `{"alg":"EdDSA","kid":…,"typ":"JWT"}`.
    /// The caller keeps claims small: verifiers refuse tokens over [`MAX_TOKEN_LEN`].
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_typed(claims, APP_TOKEN_TYP)
    }

    /// A compact JWS over `claims` with header `{"alg":"EdDSA","kid":…,"typ":typ}`.
    fn sign_typed(&self, claims: &impl Serialize, typ: &'static str) -> String {
        #[derive(Serialize)]
        struct SignedHeader<'a> {
            alg: &'static str,
            kid: &'a str,
            typ: &'static str,
        }
        let header = SignedHeader {
            alg: Alg::EdDSA.name(),
            kid: &self.kid,
            typ,
        };
        let header = serde_json::to_vec(&header).expect("bug: a header of strings serializes");
        let payload = serde_json::to_vec(claims).expect("bug: claims of strings serialize");
        let mut token = base64::encode_url(&header);
        token.push('.');
        token.push_str(&base64::encode_url(&payload));
        let signature = self.pair.sign(token.as_bytes());
        token.push('.');
        token.push_str(&base64::encode_url(signature.as_ref()));
        token
    }
}

/// The edge's signing keys: one active key, and the public halves of retired keys with the
/// time (unix seconds) until which they still verify. No `Debug`: it holds a private key.
pub struct KeyRing {
    active: SigningKey,
    retired: Vec<(Jwk, u64)>,
}

/// The key-ring file. The pkcs8 member is the private key: the caller writes it 0600.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKeyRing {
    version: u32,
    active: StoredActiveKey,
    retired: Vec<StoredRetiredKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredActiveKey {
    kid: String,
    pkcs8: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRetiredKey {
    jwk: Jwk,
    verify_until: u64,
}

impl KeyRing {
    pub fn new(active: SigningKey) -> KeyRing {
        KeyRing {
            active,
            retired: Vec::new(),
        }
    }

    /// A ring with one fresh key, and that key's PKCS#8 (for [`KeyRing::to_json`]).
    ///
    /// # Panics
    /// If the OS random source fails.
    pub fn generate() -> (KeyRing, Vec<u8>) {
        let (active, pkcs8) = SigningKey::generate();
        (KeyRing::new(active), pkcs8)
    }

    pub fn active(&self) -> &SigningKey {
        &self.active
    }

    /// Retired public keys, oldest first, with the time until which each still verifies.
    pub fn retired(&self) -> &[(Jwk, u64)] {
        &self.retired
    }

    /// Makes a fresh key active. The old key keeps verifying until `now + max_token_lifetime`,
    /// when every token it signed has expired; retired keys already past their time are
    /// dropped, and so are the oldest beyond [`MAX_JWKS_KEYS`]` - 1`. Returns the new key's
    /// PKCS#8 for [`KeyRing::to_json`].
    ///
    /// # Panics
    /// If the OS random source fails.
    pub fn rotate(&mut self, now: u64, max_token_lifetime: u64) -> Vec<u8> {
        let (next, pkcs8) = SigningKey::generate();
        let old = std::mem::replace(&mut self.active, next);
        self.retired.retain(|&(_, until)| until > now);
        self.retired
            .push((old.public_jwk(), now.saturating_add(max_token_lifetime)));
        let excess = self.retired.len().saturating_sub(MAX_JWKS_KEYS - 1);
        self.retired.drain(..excess);
        pkcs8
    }

    /// The keys to publish at `now`: the active key and the retired keys still in their window.
    pub fn jwks(&self, now: u64) -> Jwks {
        let retired = self
            .retired
            .iter()
            .filter(|&&(_, until)| until > now)
            .map(|(jwk, _)| jwk.clone());
        Jwks {
            keys: std::iter::once(self.active.public_jwk())
                .chain(retired)
                .collect(),
        }
    }

    /// Signs an app token with the active key.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        self.active.sign(claims)
    }

    /// Signs an origin assertion with the active key, typed [`ORIGIN_ASSERTION_TYP`].
    pub fn sign_origin_assertion(&self, assertion: &OriginAssertion) -> String {
        self.active.sign_typed(assertion, ORIGIN_ASSERTION_TYP)
    }

    /// Checks an app token the edge signed: EdDSA only, against [`KeyRing::jwks`] at `now`,
    /// typed [`APP_TOKEN_TYP`] and without a `postern_kind` claim, then `iss`, `aud` and times.
    /// An origin assertion, signed by the same key, is refused whatever its audience: an origin
    /// cannot present what the edge told it as a credential.
    pub fn verify_app_token(
        &self,
        token: &str,
        iss: &str,
        aud: &str,
        now: u64,
        leeway_secs: u64,
    ) -> Result<Claims, JwtError> {
        let jwks = self.jwks(now);
        let verified = verify(token, &jwks, &[Alg::EdDSA])?;
        if verified.header.typ.as_deref() != Some(APP_TOKEN_TYP)
            || has_kind_claim(&verified.payload)
        {
            return Err(JwtError::WrongKind {
                expected: "an app token",
            });
        }
        let claims = Claims::parse(&verified.payload)?;
        claims.check(iss, aud, now, leeway_secs)?;
        Ok(claims)
    }

    /// Signs a zone session with the active key, typed [`ZONE_SESSION_TYP`].
    pub fn sign_zone_session(&self, session: &ZoneSession) -> String {
        self.active.sign_typed(session, ZONE_SESSION_TYP)
    }

    /// Checks a zone session the edge signed: EdDSA against [`KeyRing::jwks`] at `now`, typed
    /// [`ZONE_SESSION_TYP`] with `postern_kind` [`ZONE_SESSION_KIND`], `iss`, an audience of
    /// exactly `zone:<zone>`, and times. An app token or origin assertion is refused.
    pub fn verify_zone_session(
        &self,
        token: &str,
        iss: &str,
        zone: &str,
        now: u64,
        leeway_secs: u64,
    ) -> Result<ZoneSession, JwtError> {
        let jwks = self.jwks(now);
        let verified = verify(token, &jwks, &[Alg::EdDSA])?;
        let wrong_kind = JwtError::WrongKind {
            expected: "a zone session",
        };
        if verified.header.typ.as_deref() != Some(ZONE_SESSION_TYP) {
            return Err(wrong_kind);
        }
        let claims = Claims::parse(&verified.payload)?;
        let aud = format!("{ZONE_SESSION_AUD_PREFIX}{zone}");
        claims.check(iss, &aud, now, leeway_secs)?;
        let session: ZoneSession =
            serde_json::from_slice(&verified.payload).map_err(|e| claims_error(&e))?;
        if session.postern_kind != ZONE_SESSION_KIND || session.aud != aud {
            return Err(wrong_kind);
        }
        Ok(session)
    }

    /// The key-ring file. `active_pkcs8` is the document [`KeyRing::generate`] or
    /// [`KeyRing::rotate`] returned for the active key (ring cannot export it again). The text
    /// holds the private key: write it 0600.
    ///
    /// # Panics
    /// If `active_pkcs8` is not the active key's: writing it would swap the signing key.
    pub fn to_json(&self, active_pkcs8: &[u8]) -> String {
        let matches = Ed25519KeyPair::from_pkcs8(active_pkcs8)
            .is_ok_and(|pair| pair.public_key().as_ref() == self.active.public_key());
        assert!(matches, "bug: to_json given another key's PKCS#8");
        let stored = StoredKeyRing {
            version: KEY_RING_VERSION,
            active: StoredActiveKey {
                kid: self.active.kid.clone(),
                pkcs8: base64::encode_url(active_pkcs8),
            },
            retired: self
                .retired
                .iter()
                .map(|(jwk, until)| StoredRetiredKey {
                    jwk: jwk.clone(),
                    verify_until: *until,
                })
                .collect(),
        };
        serde_json::to_string_pretty(&stored).expect("bug: a key ring serializes")
    }

    /// Reads what [`KeyRing::to_json`] wrote.
    pub fn from_json(json: &[u8]) -> Result<KeyRing, JwtError> {
        let stored: StoredKeyRing = from_json_object(json)
            .map_err(|_| JwtError::InvalidKeyRing("not a postern key-ring file"))?;
        if stored.version != KEY_RING_VERSION {
            return Err(JwtError::InvalidKeyRing("unknown key-ring version"));
        }
        if stored.retired.len() >= MAX_JWKS_KEYS {
            return Err(JwtError::InvalidKeyRing("too many retired keys"));
        }
        if stored
            .retired
            .iter()
            .any(|r| !r.jwk.fits(Alg::EdDSA) || r.jwk.kid.is_none())
        {
            return Err(JwtError::InvalidKeyRing(
                "a retired key is not an Ed25519 key with a kid",
            ));
        }
        let pkcs8 = base64::decode_url(&stored.active.pkcs8)
            .map_err(|_| JwtError::InvalidKeyRing("active key is not base64url"))?;
        let active = SigningKey::from_pkcs8(&pkcs8, stored.active.kid)?;
        Ok(KeyRing {
            active,
            retired: stored
                .retired
                .into_iter()
                .map(|r| (r.jwk, r.verify_until))
                .collect(),
        })
    }
}

/// Why a token, key set or key ring was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtError {
    /// The token or key set is larger than postern accepts.
    TooLarge { what: &'static str, max: usize },
    /// The token is not three strict base64url parts with a JSON-object header.
    Malformed(&'static str),
    /// The header names an algorithm postern never accepts: `none`, HMAC, or unknown.
    UnsupportedAlg { alg: String },
    /// The algorithm is implemented but not among those this verifier accepts.
    AlgNotAllowed { alg: Alg },
    /// The header has `crit`: it requires extensions postern does not implement.
    CriticalHeader,
    /// No key has the token's kid or, without a kid, no key fits its algorithm.
    UnknownKey { kid: Option<String> },
    /// The token has no kid and several keys fit its algorithm.
    AmbiguousKey { alg: Alg, keys: usize },
    /// The key named by kid is of another type, or restricted to another alg or use.
    KeyAlgMismatch { kid: String, alg: Alg },
    /// The selected key's material is unusable (missing, wrong length, RSA size).
    InvalidKey {
        kid: Option<String>,
        reason: &'static str,
    },
    /// The signature does not verify with the selected key.
    BadSignature,
    /// The payload is not a claims object postern can read.
    InvalidClaims(String),
    /// `exp` has passed (beyond the leeway).
    Expired { secs_ago: u64 },
    /// `nbf` is still ahead (beyond the leeway).
    NotYetValid { in_secs: u64 },
    /// `iat` is ahead (beyond the leeway): the issuer's clock or ours is wrong.
    IssuedInFuture { secs: u64 },
    /// `iss` is not the expected issuer.
    WrongIssuer { expected: String, got: String },
    /// `aud` does not contain this application.
    WrongAudience { expected: String, got: String },
    /// A JWKS document is not `{"keys": [...]}` with key objects.
    InvalidJwks(&'static str),
    /// A stored signing key is not an Ed25519 PKCS#8 v2 document.
    InvalidSigningKey,
    /// A stored key-ring file cannot be read back.
    InvalidKeyRing(&'static str),
    /// The token is another kind of token of the same issuer (its `typ` header or
    /// `postern_kind` claim): an origin assertion or a zone session presented as an app
    /// token, or the reverse.
    WrongKind { expected: &'static str },
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::TooLarge { what, max } => {
                write!(f, "{what} is larger than postern accepts (limit {max})")
            }
            JwtError::Malformed(what) => write!(f, "malformed token: {what}"),
            JwtError::UnsupportedAlg { alg } if alg.eq_ignore_ascii_case("none") => {
                write!(f, "token signed with alg {alg}: refused (unsigned tokens are never accepted)")
            }
            JwtError::UnsupportedAlg { alg } => write!(
                f,
                "token signed with alg {alg}: refused (postern accepts EdDSA, ES256 and RS256 only)"
            ),
            JwtError::AlgNotAllowed { alg } => write!(
                f,
                "token signed with {alg}, which is not accepted for this issuer"
            ),
            JwtError::CriticalHeader => write!(
                f,
                "token header lists critical extensions (crit) that postern does not implement: refused"
            ),
            JwtError::UnknownKey { kid: Some(kid) } => write!(
                f,
                "no key with kid {kid} in the issuer's key set (keys rotated? refresh the JWKS)"
            ),
            JwtError::UnknownKey { kid: None } => write!(
                f,
                "token names no kid and no key in the issuer's key set fits its algorithm"
            ),
            JwtError::AmbiguousKey { alg, keys } => write!(
                f,
                "token names no kid and {keys} {alg} keys in the issuer's key set could verify it: refused"
            ),
            JwtError::KeyAlgMismatch { kid, alg } => write!(
                f,
                "key {kid} cannot verify {alg} (another key type, alg or use): refused"
            ),
            JwtError::InvalidKey { kid, reason } => match kid {
                Some(kid) => write!(f, "key {kid} in the issuer's key set is unusable: {reason}"),
                None => write!(f, "a key in the issuer's key set is unusable: {reason}"),
            },
            JwtError::BadSignature => write!(
                f,
                "token signature does not verify: forged, altered, or signed by another key"
            ),
            JwtError::InvalidClaims(detail) => write!(f, "token claims unreadable: {detail}"),
            JwtError::Expired { secs_ago } => {
                write!(f, "token expired {secs_ago} s ago: log in again")
            }
            JwtError::NotYetValid { in_secs } => write!(
                f,
                "token not valid for another {in_secs} s (check the clocks of issuer and edge)"
            ),
            JwtError::IssuedInFuture { secs } => write!(
                f,
                "token issued {secs} s in the future (check the clocks of issuer and edge)"
            ),
            JwtError::WrongIssuer { expected, got } => {
                write!(f, "token issued by {got}, not by {expected}")
            }
            JwtError::WrongAudience { expected, got } => {
                write!(f, "token is for application {got}, not {expected}")
            }
            JwtError::InvalidJwks(what) => write!(f, "issuer's key set is invalid: {what}"),
            JwtError::InvalidSigningKey => write!(
                f,
                "stored signing key is not an Ed25519 PKCS#8 v2 key: restore it or rotate"
            ),
            JwtError::InvalidKeyRing(what) => write!(f, "signing key file is invalid: {what}"),
            JwtError::WrongKind { expected } => write!(
                f,
                "token is not {expected} (its typ header or postern_kind claim says it is \
                 another kind of token): refused"
            ),
        }
    }
}

impl std::error::Error for JwtError {}

/// A string from a token or key set, safe to put in a log line: at most [`MAX_SHOWN`]
/// characters, control characters replaced.
fn shown(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_SHOWN)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(MAX_SHOWN).is_some() {
        out.push('…');
    }
    out
}

/// Public keys of RFC 8037 A.1 (Ed25519), RFC 7515 A.3 (P-256) and A.2 (RSA): the fuzz target's
/// key set, and the tests'.
#[cfg(any(test, feature = "fuzzing"))]
const FIXED_JWKS: &str = r#"{"keys":[
{"kty":"OKP","crv":"Ed25519","kid":"ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
{"kty":"EC","crv":"P-256","kid":"p256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
{"kty":"RSA","kid":"rsa","e":"AQAB","n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"}
]}"#;
#[cfg(any(test, feature = "fuzzing"))]
const FIXED_ISSUER: &str = "https://idp.example.com";
#[cfg(any(test, feature = "fuzzing"))]
const FIXED_AUDIENCE: &str = "ssh.example.com";
#[cfg(any(test, feature = "fuzzing"))]
const FIXED_NOW: u64 = 1_700_000_000;

#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub fn fuzz_verify(data: &[u8]) {
    static JWKS: std::sync::OnceLock<Jwks> = std::sync::OnceLock::new();
    let jwks = JWKS
        .get_or_init(|| Jwks::parse(FIXED_JWKS.as_bytes()).expect("bug: the fixed key set parses"));
    let token = String::from_utf8_lossy(data);
    let _ = verify_claims(
        &token,
        jwks,
        &Alg::ALL,
        FIXED_ISSUER,
        FIXED_AUDIENCE,
        FIXED_NOW,
        60,
    );
    let _ = verify_origin_assertion(&token, jwks, FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW, 60);
    let _ = Jwks::parse(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, RsaKeyPair};
    use serde_json::json;

    const LEEWAY: u64 = 60;

    // RFC 8037 A.1: the Ed25519 private key (seed) of the fixed key set's "ed25519" key.
    const ED25519_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const ED25519_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    // RFC 8037 A.4: JWS over "Example of Ed25519 signing" with header {"alg":"EdDSA"}.
    const RFC8037_A4_TOKEN: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

    // RFC 7515 A.3: the P-256 key of the fixed key set's "p256" key, and its ES256 example.
    const P256_D: &str = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI";
    const P256_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const P256_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    const RFC7515_A3_TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

    // RFC 7515 A.2: the RSA key of the fixed key set's "rsa" key, and its RS256 example.
    const RSA_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
    const RSA_E: &str = "AQAB";
    const RSA_D: &str = "Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTeXZx9SE-7YwVol2NXOoAJe46sui395IW_GO-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3Mkqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBjudU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p1DhOVRuOopznQ";
    const RSA_P: &str = "4BzEEOtIpmVdVEZNCqS7baC4crd0pqnRH_5IB3jw3bcxGn6QLvnEtfdUdiYrqBdss1l58BQ3KhooKeQTa9AB0Hw_Py5PJdTJNPY8cQn7ouZ2KKDcmnPGBY5t7yLc1QlQ5xHdwW1VhvKn-nXqhJTBgIPgtldC-KDV5z-y2XDwGUc";
    const RSA_Q: &str = "uQPEfgmVtjL0Uyyx88GZFF1fOunH3-7cepKmtH4pxhtCoHqpWmT8YAmZxaewHgHAjLYsp1ZSe7zFYHj7C6ul7TjeLQeZD_YwD66t62wDmpe_HlB-TnBA-njbglfIsRLtXlnDzQkv5dTltRJ11BKBBypeeF6689rjcJIDEz9RWdc";
    const RSA_DP: &str = "BwKfV3Akq5_MFZDFZCnW-wzl-CCo83WoZvnLQwCTeDv8uzluRSnm71I3QCLdhrqE2e9YkxvuxdBfpT_PI7Yz-FOKnu1R6HsJeDCjn12Sk3vmAktV2zb34MCdy7cpdTh_YVr7tss2u6vneTwrA86rZtu5Mbr1C1XsmvkxHQAdYo0";
    const RSA_DQ: &str = "h_96-mK1R_7glhsum81dZxjTnYynPbZpHziZjeeHcXYsXaaMwkOlODsWa7I9xXDoRwbKgB719rrmI2oKr6N3Do9U0ajaHF-NKJnwgjMd2w9cjz3_-kyNlxAr2v4IKhGNpmM5iIgOS1VZnOZ68m6_pbLBSp3nssTdlqvd0tIiTHU";
    const RSA_QI: &str = "IYd7DHOhrWvxkwPQsRM2tOgrjbcrfvtQJipd-DlcxyVuuM9sQLdgjVk2oy26F0EmpScGLq2MowX7fhd_QJQ3ydy5cY7YIBi87w93IKLEdfnbJtoOPLUW0ITrJReOgo1cq9SbsxYawBgfp_gh6A5603k2-ZQwVK0JKSHuLFkuQ3U";
    const RFC7515_A2_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
    // RFC 7515 A.1 (HS256) and A.5 (unsecured).
    const RFC7515_A1_HS256_TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const RFC7515_A1_HS256_KEY: &str =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
    const RFC7515_A5_NONE_TOKEN: &str = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.";

    fn b64(s: &str) -> Vec<u8> {
        base64::decode_url(s).unwrap()
    }

    fn fixed_jwks() -> Jwks {
        Jwks::parse(FIXED_JWKS.as_bytes()).unwrap()
    }

    fn only(jwks: &Jwks, kid: &str) -> Jwks {
        Jwks {
            keys: jwks
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .cloned()
                .collect(),
        }
    }

    fn claims_at(now: u64) -> serde_json::Value {
        json!({
            "iss": FIXED_ISSUER,
            "aud": FIXED_AUDIENCE,
            "sub": "user-1",
            "email": "alice@example.com",
            "groups": ["ops"],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "jti": "j1",
        })
    }

    /// The RFC 8037 key as a `SigningKey` with the fixed key set's kid.
    fn rfc8037_key() -> SigningKey {
        let pair =
            Ed25519KeyPair::from_seed_and_public_key(&b64(ED25519_D), &b64(ED25519_X)).unwrap();
        SigningKey {
            pair,
            kid: "ed25519".into(),
        }
    }

    fn p256_key() -> EcdsaKeyPair {
        let mut public = vec![4];
        public.extend(b64(P256_X));
        public.extend(b64(P256_Y));
        EcdsaKeyPair::from_private_key_and_public_key(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &b64(P256_D),
            &public,
            &SystemRandom::new(),
        )
        .unwrap()
    }

    fn rsa_key() -> RsaKeyPair {
        RsaKeyPair::from_components(&ring::rsa::KeyPairComponents {
            public_key: ring::rsa::PublicKeyComponents {
                n: b64(RSA_N),
                e: b64(RSA_E),
            },
            d: b64(RSA_D),
            p: b64(RSA_P),
            q: b64(RSA_Q),
            dP: b64(RSA_DP),
            dQ: b64(RSA_DQ),
            qInv: b64(RSA_QI),
        })
        .unwrap()
    }

    /// A compact JWS with any header text, signed by `sign`.
    fn jws(header: &str, payload: &[u8], sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let input = format!(
            "{}.{}",
            base64::encode_url(header.as_bytes()),
            base64::encode_url(payload)
        );
        let sig = sign(input.as_bytes());
        format!("{input}.{}", base64::encode_url(&sig))
    }

    fn ed_sign(key: &SigningKey) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
        |m| key.pair.sign(m).as_ref().to_vec()
    }

    fn es_sign(m: &[u8]) -> Vec<u8> {
        p256_key()
            .sign(&SystemRandom::new(), m)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn rs_sign(m: &[u8]) -> Vec<u8> {
        let key = rsa_key();
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(
            &signature::RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            m,
            &mut sig,
        )
        .unwrap();
        sig
    }

    fn fixed_claims(token: &str) -> Result<Claims, JwtError> {
        verify_claims(
            token,
            &fixed_jwks(),
            &Alg::ALL,
            FIXED_ISSUER,
            FIXED_AUDIENCE,
            FIXED_NOW,
            LEEWAY,
        )
    }

    fn edge_check(key: &SigningKey, token: &str, now: u64) -> Result<Claims, JwtError> {
        let jwks = Jwks {
            keys: vec![key.public_jwk()],
        };
        verify_claims(
            token,
            &jwks,
            &[Alg::EdDSA],
            FIXED_ISSUER,
            FIXED_AUDIENCE,
            now,
            LEEWAY,
        )
    }

    /// Replaces the part at `index` of a token with `text`.
    fn with_part(token: &str, index: usize, text: &str) -> String {
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[index] = text;
        parts.join(".")
    }

    // ---- signing and round trips ----

    #[test]
    fn signed_token_verifies_and_yields_its_claims() {
        let (key, _) = SigningKey::generate();
        let token = key.sign(&claims_at(FIXED_NOW));
        let claims = edge_check(&key, &token, FIXED_NOW).unwrap();
        assert_eq!(claims.sub, "user-1");
        assert_eq!(claims.email.as_deref(), Some("alice@example.com"));
        assert_eq!(claims.groups, ["ops"]);
        assert_eq!(claims.jti.as_deref(), Some("j1"));
        assert_eq!(claims.exp, FIXED_NOW + 3600);
    }

    #[test]
    fn signed_header_is_eddsa_with_kid_and_typ_jwt() {
        let (key, _) = SigningKey::generate();
        let token = key.sign(&claims_at(FIXED_NOW));
        let header = b64(token.split('.').next().unwrap());
        let expected = format!(r#"{{"alg":"EdDSA","kid":"{}","typ":"JWT"}}"#, key.kid());
        assert_eq!(header, expected.as_bytes());
        let jwks = Jwks {
            keys: vec![key.public_jwk()],
        };
        let verified = verify(&token, &jwks, &[Alg::EdDSA]).unwrap();
        assert_eq!(
            verified.header,
            Header {
                alg: Alg::EdDSA,
                kid: Some(key.kid().to_string()),
                typ: Some("JWT".into()),
            }
        );
    }

    #[test]
    fn kid_is_base64url_of_the_first_12_bytes_of_sha256_of_the_public_key() {
        let (key, _) = SigningKey::generate();
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key());
        assert_eq!(key.kid(), base64::encode_url(&digest.as_ref()[..12]));
        assert_eq!(key.kid().len(), 16);
    }

    #[test]
    fn public_jwk_is_an_okp_ed25519_signature_key() {
        let (key, _) = SigningKey::generate();
        let jwk = key.public_jwk();
        assert_eq!(jwk.kty, "OKP");
        assert_eq!(jwk.crv.as_deref(), Some("Ed25519"));
        assert_eq!(jwk.alg.as_deref(), Some("EdDSA"));
        assert_eq!(jwk.use_.as_deref(), Some("sig"));
        assert_eq!(b64(jwk.x.as_deref().unwrap()), key.public_key());
        let text = serde_json::to_string(&jwk).unwrap();
        assert!(text.contains(r#""use":"sig""#), "{text}");
        assert!(!text.contains("use_") && !text.contains("null"), "{text}");
    }

    #[test]
    fn stored_pkcs8_loads_back_into_the_same_key() {
        let (key, pkcs8) = SigningKey::generate();
        let loaded = SigningKey::from_pkcs8(&pkcs8, key.kid().to_string()).unwrap();
        assert_eq!(loaded.public_jwk(), key.public_jwk());
        let token = loaded.sign(&claims_at(FIXED_NOW));
        assert!(edge_check(&key, &token, FIXED_NOW).is_ok());
    }

    #[test]
    fn pkcs8_that_is_not_an_ed25519_key_is_refused() {
        let rsa_like = b"\x30\x03\x02\x01\x00";
        for der in [&b""[..], b"not der", rsa_like] {
            assert!(matches!(
                SigningKey::from_pkcs8(der, "k".into()),
                Err(JwtError::InvalidSigningKey)
            ));
        }
        let p256 = EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .unwrap();
        assert!(SigningKey::from_pkcs8(p256.as_ref(), "k".into()).is_err());
    }

    #[test]
    fn payload_that_is_not_json_verifies_but_has_no_claims() {
        let key = rfc8037_key();
        let token = jws(
            r#"{"alg":"EdDSA","kid":"ed25519"}"#,
            b"not json",
            ed_sign(&key),
        );
        let verified = verify(&token, &fixed_jwks(), &Alg::ALL).unwrap();
        assert_eq!(verified.payload, b"not json");
        assert!(matches!(
            fixed_claims(&token),
            Err(JwtError::InvalidClaims(_))
        ));
    }

    // ---- known-answer vectors ----

    #[test]
    fn rfc7515_a2_rs256_vector_verifies() {
        let jwks = Jwks {
            keys: vec![Jwk {
                kty: "RSA".into(),
                n: Some(RSA_N.into()),
                e: Some(RSA_E.into()),
                ..Jwk::default()
            }],
        };
        let verified = verify(RFC7515_A2_TOKEN, &jwks, &[Alg::RS256]).unwrap();
        assert_eq!(verified.header.alg, Alg::RS256);
        assert_eq!(verified.header.kid, None);
        assert!(verified.payload.starts_with(b"{\"iss\":\"joe\",\r\n"));
    }

    #[test]
    fn ring_reproduces_the_rfc7515_a2_signature_from_the_rfc_key() {
        // PKCS#1 v1.5 is deterministic: the same key must give the RFC's exact bytes.
        let (input, sig) = RFC7515_A2_TOKEN.rsplit_once('.').unwrap();
        assert_eq!(rs_sign(input.as_bytes()), b64(sig));
    }

    #[test]
    fn rfc7515_a3_es256_vector_verifies() {
        let jwks = only(&fixed_jwks(), "p256");
        let verified = verify(RFC7515_A3_TOKEN, &jwks, &[Alg::ES256]).unwrap();
        assert_eq!(verified.header.alg, Alg::ES256);
    }

    #[test]
    fn rfc8037_a4_ed25519_vector_verifies() {
        let jwks = only(&fixed_jwks(), "ed25519");
        let verified = verify(RFC8037_A4_TOKEN, &jwks, &[Alg::EdDSA]).unwrap();
        assert_eq!(verified.payload, b"Example of Ed25519 signing");
    }

    #[test]
    fn es256_token_from_a_generated_key_verifies() {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let public = pair.public_key().as_ref();
        assert_eq!((public.len(), public[0]), (65, 4));
        let jwk = Jwk {
            kty: "EC".into(),
            kid: Some("gen".into()),
            crv: Some("P-256".into()),
            x: Some(base64::encode_url(&public[1..33])),
            y: Some(base64::encode_url(&public[33..])),
            ..Jwk::default()
        };
        let token = jws(
            r#"{"alg":"ES256","kid":"gen"}"#,
            claims_at(FIXED_NOW).to_string().as_bytes(),
            |m| pair.sign(&rng, m).unwrap().as_ref().to_vec(),
        );
        let jwks = Jwks { keys: vec![jwk] };
        let claims = verify_claims(
            &token,
            &jwks,
            &[Alg::ES256],
            FIXED_ISSUER,
            FIXED_AUDIENCE,
            FIXED_NOW,
            LEEWAY,
        )
        .unwrap();
        assert_eq!(claims.sub, "user-1");
    }

    #[test]
    fn tokens_of_each_algorithm_verify_against_the_fixed_key_set() {
        let payload = claims_at(FIXED_NOW).to_string();
        let ed = rfc8037_key();
        let tokens = [
            jws(
                r#"{"alg":"EdDSA","kid":"ed25519"}"#,
                payload.as_bytes(),
                ed_sign(&ed),
            ),
            jws(
                r#"{"alg":"ES256","kid":"p256"}"#,
                payload.as_bytes(),
                es_sign,
            ),
            jws(
                r#"{"alg":"RS256","kid":"rsa"}"#,
                payload.as_bytes(),
                rs_sign,
            ),
            // Without kid: the only key of the right type is used.
            jws(r#"{"alg":"RS256"}"#, payload.as_bytes(), rs_sign),
        ];
        for token in &tokens {
            assert_eq!(fixed_claims(token).unwrap().sub, "user-1", "{token}");
        }
    }

    // ---- algorithms and headers ----

    #[test]
    fn alg_none_with_an_empty_signature_is_refused() {
        let err = verify(RFC7515_A5_NONE_TOKEN, &fixed_jwks(), &Alg::ALL).unwrap_err();
        assert_eq!(err, JwtError::UnsupportedAlg { alg: "none".into() });
        assert_eq!(
            err.to_string(),
            "token signed with alg none: refused (unsigned tokens are never accepted)"
        );
    }

    #[test]
    fn alg_none_without_a_signature_part_is_refused() {
        let two_parts = RFC7515_A5_NONE_TOKEN.trim_end_matches('.');
        let header_only = two_parts.split('.').next().unwrap();
        for token in [two_parts, header_only] {
            assert_eq!(
                verify(token, &fixed_jwks(), &Alg::ALL),
                Err(JwtError::UnsupportedAlg { alg: "none".into() })
            );
        }
    }

    #[test]
    fn alg_none_in_any_case_or_with_a_real_signature_is_refused() {
        let key = rfc8037_key();
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = format!(r#"{{"alg":"{alg}","kid":"ed25519"}}"#);
            let token = jws(&header, b"{}", ed_sign(&key));
            assert_eq!(
                verify(&token, &fixed_jwks(), &Alg::ALL),
                Err(JwtError::UnsupportedAlg { alg: alg.into() })
            );
        }
    }

    #[test]
    fn hs256_is_refused_even_when_an_oct_key_is_present() {
        let jwks = Jwks::parse(
            format!(r#"{{"keys":[{{"kty":"oct","k":"{RFC7515_A1_HS256_KEY}"}}]}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(jwks.keys[0].kty, "oct");
        assert_eq!(
            verify(RFC7515_A1_HS256_TOKEN, &jwks, &Alg::ALL),
            Err(JwtError::UnsupportedAlg {
                alg: "HS256".into()
            })
        );
    }

    #[test]
    fn hs256_signed_with_the_rsa_public_key_is_refused() {
        // The classic confusion attack: the public key's bytes used as an HMAC secret.
        let secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, RSA_N.as_bytes());
        let token = jws(r#"{"alg":"HS256","kid":"rsa"}"#, b"{}", |m| {
            ring::hmac::sign(&secret, m).as_ref().to_vec()
        });
        assert!(matches!(
            verify(&token, &fixed_jwks(), &Alg::ALL),
            Err(JwtError::UnsupportedAlg { .. })
        ));
    }

    #[test]
    fn unknown_and_misspelled_algorithms_are_refused() {
        let key = rfc8037_key();
        for alg in ["ES384", "PS256", "eddsa", "Ed25519", "RS256 ", ""] {
            let header = format!(r#"{{"alg":"{alg}"}}"#);
            let token = jws(&header, b"{}", ed_sign(&key));
            assert_eq!(
                verify(&token, &fixed_jwks(), &Alg::ALL),
                Err(JwtError::UnsupportedAlg { alg: alg.into() }),
                "{alg}"
            );
        }
    }

    #[test]
    fn algorithm_outside_the_allowed_list_is_refused() {
        let token = jws(r#"{"alg":"RS256","kid":"rsa"}"#, b"{}", rs_sign);
        assert_eq!(
            verify(&token, &fixed_jwks(), &[Alg::EdDSA, Alg::ES256]),
            Err(JwtError::AlgNotAllowed { alg: Alg::RS256 })
        );
        assert_eq!(
            verify(&token, &fixed_jwks(), &[]),
            Err(JwtError::AlgNotAllowed { alg: Alg::RS256 })
        );
    }

    #[test]
    fn header_with_crit_is_refused_whatever_its_value() {
        let key = rfc8037_key();
        for crit in [r#"["exp"]"#, "[]", "null", r#""b64""#] {
            let header = format!(r#"{{"alg":"EdDSA","kid":"ed25519","crit":{crit}}}"#);
            let token = jws(&header, b"{}", ed_sign(&key));
            assert_eq!(
                verify(&token, &fixed_jwks(), &Alg::ALL),
                Err(JwtError::CriticalHeader),
                "{crit}"
            );
        }
    }

    #[test]
    fn header_that_is_not_one_json_object_is_malformed() {
        let key = rfc8037_key();
        for header in [
            r#"["EdDSA"]"#,
            r#""EdDSA""#,
            r#"{"alg":"EdDSA","alg":"EdDSA"}"#,
            r#"{"alg":"EdDSA"} {}"#,
            r#"{"alg":["EdDSA"]}"#,
            r#"{"kid":"ed25519"}"#,
            r#"{"alg":"EdDSA","kid":7}"#,
            "",
        ] {
            let token = jws(header, b"{}", ed_sign(&key));
            assert!(
                matches!(
                    verify(&token, &fixed_jwks(), &Alg::ALL),
                    Err(JwtError::Malformed(_))
                ),
                "{header}"
            );
        }
    }

    #[test]
    fn token_with_other_than_three_parts_is_malformed() {
        let key = rfc8037_key();
        let token = key.sign(&claims_at(FIXED_NOW));
        for bad in [
            format!("{token}."),
            format!("{token}.x"),
            format!("{token}.."),
        ] {
            assert_eq!(
                verify(&bad, &fixed_jwks(), &Alg::ALL),
                Err(JwtError::Malformed(
                    "a token has exactly three parts separated by dots"
                ))
            );
        }
    }

    #[test]
    fn padded_standard_alphabet_or_spaced_parts_are_malformed() {
        let key = rfc8037_key();
        let token = key.sign(&claims_at(FIXED_NOW));
        let payload = token.split('.').nth(1).unwrap();
        let signature = token.split('.').nth(2).unwrap();
        let cases = [
            with_part(&token, 1, &format!("{payload}=")),
            with_part(&token, 2, &signature.replace(['-', '_'], "+")),
            with_part(&token, 2, &format!(" {signature}")),
            format!("{token}\n"),
            format!(" {token}"),
        ];
        for bad in &cases {
            assert!(
                matches!(
                    verify(bad, &fixed_jwks(), &Alg::ALL),
                    Err(JwtError::Malformed(_) | JwtError::BadSignature)
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            verify(&with_part(&token, 1, "a"), &fixed_jwks(), &Alg::ALL),
            Err(JwtError::Malformed("payload is not base64url"))
        ));
    }

    #[test]
    fn empty_signature_is_malformed() {
        let key = rfc8037_key();
        let token = with_part(&key.sign(&claims_at(FIXED_NOW)), 2, "");
        assert_eq!(
            verify(&token, &fixed_jwks(), &Alg::ALL),
            Err(JwtError::Malformed("token has no signature"))
        );
    }

    #[test]
    fn oversized_token_is_refused_before_it_is_decoded() {
        let token = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            verify(&token, &fixed_jwks(), &Alg::ALL),
            Err(JwtError::TooLarge {
                what: "token",
                max: MAX_TOKEN_LEN
            })
        );
        // Just under the limit, a valid token still verifies.
        let key = rfc8037_key();
        let mut claims = claims_at(FIXED_NOW);
        claims["pad"] = json!("p".repeat(MAX_TOKEN_LEN / 2));
        let token = key.sign(&claims);
        assert!(token.len() < MAX_TOKEN_LEN);
        assert!(fixed_claims(&token).is_ok());
    }

    // ---- tampering, truncation, wrong keys ----

    #[test]
    fn tampered_payload_is_refused() {
        let key = rfc8037_key();
        let token = key.sign(&claims_at(FIXED_NOW));
        let mut forged = claims_at(FIXED_NOW);
        forged["sub"] = json!("admin");
        let forged = base64::encode_url(forged.to_string().as_bytes());
        assert_eq!(
            fixed_claims(&with_part(&token, 1, &forged)),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn tampered_header_is_refused() {
        let key = rfc8037_key();
        let token = key.sign(&claims_at(FIXED_NOW));
        let header = base64::encode_url(br#"{"alg":"EdDSA","kid":"ed25519","typ":"at+jwt"}"#);
        assert_eq!(
            fixed_claims(&with_part(&token, 0, &header)),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn signature_of_wrong_length_is_a_bad_signature() {
        let key = rfc8037_key();
        let token = key.sign(&claims_at(FIXED_NOW));
        let mut sig = b64(token.split('.').nth(2).unwrap());
        sig.push(0);
        let long = with_part(&token, 2, &base64::encode_url(&sig));
        sig.truncate(63);
        let short = with_part(&token, 2, &base64::encode_url(&sig));
        for bad in [long, short] {
            assert_eq!(fixed_claims(&bad), Err(JwtError::BadSignature));
        }
    }

    #[test]
    fn every_changed_character_is_refused() {
        let key = rfc8037_key();
        let token = key.sign(&claims_at(FIXED_NOW));
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            assert!(fixed_claims(&changed).is_err(), "byte {i}");
        }
    }

    #[test]
    fn every_prefix_of_a_valid_token_is_refused() {
        let ed = rfc8037_key();
        let payload = claims_at(FIXED_NOW).to_string();
        let tokens = [
            ed.sign(&claims_at(FIXED_NOW)),
            jws(
                r#"{"alg":"ES256","kid":"p256"}"#,
                payload.as_bytes(),
                es_sign,
            ),
            jws(
                r#"{"alg":"RS256","kid":"rsa"}"#,
                payload.as_bytes(),
                rs_sign,
            ),
        ];
        for token in &tokens {
            assert!(fixed_claims(token).is_ok());
            for len in 0..token.len() {
                assert!(fixed_claims(&token[..len]).is_err(), "prefix {len}");
                assert!(fixed_claims(&token[len + 1..]).is_err(), "suffix {len}");
            }
        }
    }

    #[test]
    fn token_signed_by_another_key_is_refused() {
        let (mine, _) = SigningKey::generate();
        let (theirs, _) = SigningKey::generate();
        let token = theirs.sign(&claims_at(FIXED_NOW));
        assert!(matches!(
            edge_check(&mine, &token, FIXED_NOW),
            Err(JwtError::UnknownKey { .. })
        ));
        // Another key that claims my kid.
        let impostor = SigningKey {
            pair: theirs.pair,
            kid: mine.kid().to_string(),
        };
        let token = impostor.sign(&claims_at(FIXED_NOW));
        assert_eq!(
            edge_check(&mine, &token, FIXED_NOW),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn unknown_kid_is_refused_naming_the_kid() {
        let key = rfc8037_key();
        let token = jws(r#"{"alg":"EdDSA","kid":"2019-old"}"#, b"{}", ed_sign(&key));
        let err = verify(&token, &fixed_jwks(), &Alg::ALL).unwrap_err();
        assert_eq!(
            err,
            JwtError::UnknownKey {
                kid: Some("2019-old".into())
            }
        );
        assert!(err.to_string().contains("kid 2019-old"));
    }

    #[test]
    fn kid_naming_a_key_of_another_type_is_refused() {
        let token = jws(r#"{"alg":"RS256","kid":"p256"}"#, b"{}", rs_sign);
        assert_eq!(
            verify(&token, &fixed_jwks(), &Alg::ALL),
            Err(JwtError::KeyAlgMismatch {
                kid: "p256".into(),
                alg: Alg::RS256
            })
        );
    }

    #[test]
    fn key_restricted_to_another_alg_or_to_encryption_is_not_used() {
        let key = rfc8037_key();
        let token = key.sign(&claims_at(FIXED_NOW));
        let mut jwks = only(&fixed_jwks(), "ed25519");
        jwks.keys[0].alg = Some("ES256".into());
        assert!(matches!(
            verify(&token, &jwks, &Alg::ALL),
            Err(JwtError::KeyAlgMismatch { .. })
        ));
        jwks.keys[0].alg = Some("EdDSA".into());
        jwks.keys[0].use_ = Some("enc".into());
        assert!(matches!(
            verify(&token, &jwks, &Alg::ALL),
            Err(JwtError::KeyAlgMismatch { .. })
        ));
        jwks.keys[0].use_ = Some("sig".into());
        assert!(verify(&token, &jwks, &Alg::ALL).is_ok());
    }

    #[test]
    fn without_kid_the_only_fitting_key_is_used_and_two_are_ambiguous() {
        let token = jws(r#"{"alg":"ES256"}"#, b"{}", es_sign);
        assert!(verify(&token, &fixed_jwks(), &Alg::ALL).is_ok());
        let mut jwks = fixed_jwks();
        let mut second = only(&jwks, "p256").keys.remove(0);
        second.kid = Some("p256-b".into());
        jwks.keys.push(second);
        assert_eq!(
            verify(&token, &jwks, &Alg::ALL),
            Err(JwtError::AmbiguousKey {
                alg: Alg::ES256,
                keys: 2
            })
        );
        assert_eq!(
            verify(&token, &only(&jwks, "rsa"), &Alg::ALL),
            Err(JwtError::UnknownKey { kid: None })
        );
    }

    #[test]
    fn unusable_key_material_is_an_invalid_key() {
        let es = jws(r#"{"alg":"ES256","kid":"p256"}"#, b"{}", es_sign);
        let mut jwks = only(&fixed_jwks(), "p256");
        jwks.keys[0].y = Some(base64::encode_url(&[1; 31]));
        assert!(matches!(
            verify(&es, &jwks, &Alg::ALL),
            Err(JwtError::InvalidKey { .. })
        ));
        jwks.keys[0].y = None;
        assert!(matches!(
            verify(&es, &jwks, &Alg::ALL),
            Err(JwtError::InvalidKey { .. })
        ));
        // A point that is not on the curve never verifies.
        jwks.keys[0].y = Some(base64::encode_url(&[1; 32]));
        assert_eq!(verify(&es, &jwks, &Alg::ALL), Err(JwtError::BadSignature));

        let rs = jws(r#"{"alg":"RS256","kid":"rsa"}"#, b"{}", rs_sign);
        let mut jwks = only(&fixed_jwks(), "rsa");
        let n = b64(RSA_N);
        jwks.keys[0].n = Some(base64::encode_url(&n[..128]));
        let err = verify(&rs, &jwks, &Alg::ALL).unwrap_err();
        assert_eq!(
            err,
            JwtError::InvalidKey {
                kid: Some("rsa".into()),
                reason: "RSA modulus is not 2048 to 8192 bits"
            }
        );
        jwks.keys[0].n = Some(RSA_N.into());
        jwks.keys[0].e = Some("AAEAAQ".into());
        assert!(matches!(
            verify(&rs, &jwks, &Alg::ALL),
            Err(JwtError::InvalidKey { .. })
        ));

        let ed = rfc8037_key();
        let token = ed.sign(&claims_at(FIXED_NOW));
        let mut jwks = only(&fixed_jwks(), "ed25519");
        jwks.keys[0].x = Some("not base64!".into());
        assert!(matches!(
            verify(&token, &jwks, &Alg::ALL),
            Err(JwtError::InvalidKey { .. })
        ));
    }

    // ---- claims ----

    fn claims() -> Claims {
        Claims::parse(claims_at(FIXED_NOW).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn wrong_audience_is_refused_naming_both_applications() {
        let err = claims()
            .check(FIXED_ISSUER, "git.example.com", FIXED_NOW, LEEWAY)
            .unwrap_err();
        assert_eq!(
            err,
            JwtError::WrongAudience {
                expected: "git.example.com".into(),
                got: FIXED_AUDIENCE.into()
            }
        );
        assert_eq!(
            err.to_string(),
            "token is for application ssh.example.com, not git.example.com"
        );
    }

    #[test]
    fn audience_array_containing_the_application_is_accepted() {
        let mut c = claims();
        c.aud = Audience::Many(vec!["other".into(), FIXED_AUDIENCE.into()]);
        assert!(c.check(FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW, 0).is_ok());
        c.aud = Audience::Many(vec![]);
        assert!(matches!(
            c.check(FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW, 0),
            Err(JwtError::WrongAudience { .. })
        ));
        let parsed: Audience = serde_json::from_str(r#"["a","b"]"#).unwrap();
        assert!(parsed.contains("b") && !parsed.contains("c"));
        let parsed: Audience = serde_json::from_str(r#""a""#).unwrap();
        assert_eq!(parsed, Audience::One("a".into()));
    }

    #[test]
    fn wrong_issuer_is_refused() {
        let err = claims()
            .check("https://evil.example", FIXED_AUDIENCE, FIXED_NOW, LEEWAY)
            .unwrap_err();
        assert_eq!(
            err,
            JwtError::WrongIssuer {
                expected: "https://evil.example".into(),
                got: FIXED_ISSUER.into()
            }
        );
        // Exact match: no prefix, no trailing slash, no case folding.
        for iss in [
            "https://idp.example.com/",
            "https://IDP.example.com",
            "https://idp",
        ] {
            assert!(claims().check(iss, FIXED_AUDIENCE, FIXED_NOW, 0).is_err());
        }
    }

    #[test]
    fn expired_token_is_refused_with_its_age() {
        let exp = FIXED_NOW + 3600;
        let c = claims();
        assert!(c.check(FIXED_ISSUER, FIXED_AUDIENCE, exp - 1, 0).is_ok());
        assert_eq!(
            c.check(FIXED_ISSUER, FIXED_AUDIENCE, exp, 0),
            Err(JwtError::Expired { secs_ago: 0 })
        );
        // Within the leeway it still passes; at its end it does not.
        assert!(c.check(FIXED_ISSUER, FIXED_AUDIENCE, exp + 59, 60).is_ok());
        let err = c
            .check(FIXED_ISSUER, FIXED_AUDIENCE, exp + 95, 60)
            .unwrap_err();
        assert_eq!(err, JwtError::Expired { secs_ago: 95 });
        assert_eq!(err.to_string(), "token expired 95 s ago: log in again");
    }

    #[test]
    fn token_before_nbf_is_not_yet_valid() {
        let mut c = claims();
        c.nbf = Some(FIXED_NOW + 100);
        assert_eq!(
            c.check(FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW, 60),
            Err(JwtError::NotYetValid { in_secs: 100 })
        );
        assert!(c
            .check(FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW + 40, 60)
            .is_ok());
        c.nbf = None;
        assert!(c.check(FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW, 0).is_ok());
    }

    #[test]
    fn token_issued_in_the_future_is_refused() {
        let mut c = claims();
        c.iat = FIXED_NOW + 7200;
        c.nbf = None;
        assert_eq!(
            c.check(FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW, 60),
            Err(JwtError::IssuedInFuture { secs: 7200 })
        );
        c.iat = FIXED_NOW + 30;
        assert!(c.check(FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW, 60).is_ok());
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let mut c = claims();
        c.exp = u64::MAX;
        c.iat = 0;
        c.nbf = Some(u64::MAX);
        assert_eq!(
            c.check(FIXED_ISSUER, FIXED_AUDIENCE, u64::MAX - 1, 0),
            Err(JwtError::NotYetValid { in_secs: 1 })
        );
        // A huge leeway saturates instead of wrapping around.
        assert!(c
            .check(FIXED_ISSUER, FIXED_AUDIENCE, u64::MAX - 1, u64::MAX)
            .is_ok());
        c.nbf = None;
        assert!(c
            .check(FIXED_ISSUER, FIXED_AUDIENCE, u64::MAX - 1, u64::MAX)
            .is_ok());
        c.exp = 0;
        assert_eq!(
            c.check(FIXED_ISSUER, FIXED_AUDIENCE, u64::MAX, 0),
            Err(JwtError::Expired { secs_ago: u64::MAX })
        );
    }

    #[test]
    fn signature_is_checked_before_claims_are_read() {
        let key = rfc8037_key();
        let mut expired = claims_at(FIXED_NOW - 10_000);
        expired["aud"] = json!("elsewhere");
        let token = with_part(&key.sign(&expired), 2, &base64::encode_url(&[0; 64]));
        assert_eq!(fixed_claims(&token), Err(JwtError::BadSignature));
    }

    #[test]
    fn verify_claims_reports_each_refusal_with_its_variant() {
        let key = rfc8037_key();
        let sign = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut c = claims_at(FIXED_NOW);
            f(&mut c);
            key.sign(&c)
        };
        let expired = sign(&|c| c["exp"] = json!(FIXED_NOW - 120));
        let early = sign(&|c| c["nbf"] = json!(FIXED_NOW + 120));
        let other_app = sign(&|c| c["aud"] = json!(["a", "b"]));
        let other_iss = sign(&|c| c["iss"] = json!("https://other"));
        assert_eq!(
            fixed_claims(&expired),
            Err(JwtError::Expired { secs_ago: 120 })
        );
        assert_eq!(
            fixed_claims(&early),
            Err(JwtError::NotYetValid { in_secs: 120 })
        );
        assert!(matches!(
            fixed_claims(&other_app),
            Err(JwtError::WrongAudience { got, .. }) if got == "a, b"
        ));
        assert!(matches!(
            fixed_claims(&other_iss),
            Err(JwtError::WrongIssuer { .. })
        ));
    }

    #[test]
    fn missing_or_repeated_claims_are_named() {
        let mut c = claims_at(FIXED_NOW);
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            Claims::parse(c.to_string().as_bytes()),
            Err(JwtError::InvalidClaims("claim aud is missing".into()))
        );
        let twice = br#"{"iss":"a","aud":"b","sub":"c","iat":1,"exp":2,"exp":3}"#;
        assert_eq!(
            Claims::parse(twice),
            Err(JwtError::InvalidClaims("claim exp appears twice".into()))
        );
    }

    #[test]
    fn claim_of_the_wrong_type_is_refused_without_echoing_its_value() {
        let mut c = claims_at(FIXED_NOW);
        c["exp"] = json!("secret-looking-value");
        let err = Claims::parse(c.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, JwtError::InvalidClaims(_)));
        assert!(!err.to_string().contains("secret-looking-value"), "{err}");
        c["exp"] = json!(-5);
        assert!(Claims::parse(c.to_string().as_bytes()).is_err());
        for payload in [&b"[1,2]"[..], b"", b"null", b"{"] {
            assert_eq!(
                Claims::parse(payload),
                Err(JwtError::InvalidClaims(
                    "payload is not a JSON object".into()
                )),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn optional_claims_default_and_unknown_claims_are_ignored() {
        let c = Claims::parse(
            br#"{"iss":"i","aud":"a","sub":"s","iat":1,"exp":2,"azp":"x","amr":["pwd"]}"#,
        )
        .unwrap();
        assert_eq!(c.groups, Vec::<String>::new());
        assert_eq!((c.email, c.nbf, c.jti, c.nonce), (None, None, None, None));
    }

    #[test]
    fn claims_serialize_to_what_they_parse_from() {
        let c = claims();
        let value = serde_json::to_value(&c).unwrap();
        assert_eq!(value, claims_at(FIXED_NOW));
        let (key, _) = SigningKey::generate();
        assert_eq!(edge_check(&key, &key.sign(&value), FIXED_NOW).unwrap(), c);
    }

    // ---- key sets ----

    #[test]
    fn jwks_parse_ignores_unknown_members_and_key_types() {
        let json = br#"{"keys":[
            {"kty":"RSA","kid":"r","use":"sig","alg":"RS256","n":"AQAB","e":"AQAB",
             "x5c":["MIIC"],"x5t":"abc","key_ops":["verify"]},
            {"kty":"oct","k":"c2VjcmV0"},
            {"kty":"EC","crv":"P-384","x":"a","y":"b"}
        ],"extra":true}"#;
        let jwks = Jwks::parse(json).unwrap();
        assert_eq!(jwks.keys.len(), 3);
        assert_eq!(jwks.keys[0].use_.as_deref(), Some("sig"));
        assert!(jwks.keys[1..]
            .iter()
            .all(|k| Alg::ALL.iter().all(|&a| !k.fits(a))));
    }

    #[test]
    fn jwks_is_bounded_in_size_and_key_count() {
        let key =
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let set = |n: usize| format!(r#"{{"keys":[{}]}}"#, vec![key; n].join(","));
        assert_eq!(
            Jwks::parse(set(MAX_JWKS_KEYS).as_bytes())
                .unwrap()
                .keys
                .len(),
            32
        );
        assert_eq!(
            Jwks::parse(set(MAX_JWKS_KEYS + 1).as_bytes()),
            Err(JwtError::TooLarge {
                what: "key set",
                max: MAX_JWKS_KEYS
            })
        );
        let mut big = set(1).into_bytes();
        big.resize(MAX_JWKS_LEN + 1, b' ');
        assert_eq!(
            Jwks::parse(&big),
            Err(JwtError::TooLarge {
                what: "key set",
                max: MAX_JWKS_LEN
            })
        );
    }

    #[test]
    fn jwks_that_is_not_a_key_set_is_refused() {
        for json in [
            &b""[..],
            b"[]",
            b"{}",
            br#"{"keys":{}}"#,
            br#"{"keys":[{"kid":"no kty"}]}"#,
            br#"{"keys":[],"keys":[]}"#,
            b"\xff",
        ] {
            assert!(
                matches!(Jwks::parse(json), Err(JwtError::InvalidJwks(_))),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn jwks_round_trips_through_its_json() {
        let jwks = fixed_jwks();
        assert_eq!(Jwks::parse(jwks.to_json().as_bytes()).unwrap(), jwks);
    }

    // ---- origin assertions ----

    fn rfc8037_ring() -> KeyRing {
        KeyRing::new(rfc8037_key())
    }

    fn assertion_at(now: u64) -> OriginAssertion {
        let mut a = OriginAssertion::new(FIXED_ISSUER, FIXED_AUDIENCE, 7, now, "n1".into());
        a.sub = "alice@example.com".into();
        a.email = Some("alice@example.com".into());
        a.groups = vec!["ops".into()];
        a
    }

    fn origin_check(token: &str, hostname: &str, now: u64) -> Result<OriginAssertion, JwtError> {
        verify_origin_assertion(token, &fixed_jwks(), FIXED_ISSUER, hostname, now, LEEWAY)
    }

    #[test]
    fn origin_assertion_verifies_against_the_published_key_set_for_its_exact_hostname() {
        let ring = rfc8037_ring();
        let token = ring.sign_origin_assertion(&assertion_at(FIXED_NOW));
        let header = b64(token.split('.').next().unwrap());
        let expected =
            format!(r#"{{"alg":"EdDSA","kid":"ed25519","typ":"{ORIGIN_ASSERTION_TYP}"}}"#);
        assert_eq!(header, expected.as_bytes());
        let got = origin_check(&token, FIXED_AUDIENCE, FIXED_NOW).unwrap();
        assert_eq!(got, assertion_at(FIXED_NOW));
        assert_eq!(got.postern_kind, ORIGIN_ASSERTION_KIND);
        assert_eq!(got.exp - got.iat, ORIGIN_ASSERTION_LIFETIME_SECS);
        assert_eq!(got.stream, 7);
        // The key set the edge publishes verifies it too.
        let published = verify_origin_assertion(
            &token,
            &ring.jwks(FIXED_NOW),
            FIXED_ISSUER,
            FIXED_AUDIENCE,
            FIXED_NOW,
            0,
        );
        assert_eq!(published, Ok(got));
    }

    fn zone_session_at(now: u64) -> ZoneSession {
        ZoneSession {
            iss: FIXED_ISSUER.into(),
            aud: format!("{ZONE_SESSION_AUD_PREFIX}example.com"),
            sub: "alice@example.com".into(),
            email: Some("alice@example.com".into()),
            groups: vec!["ops".into()],
            iat: now,
            nbf: now,
            exp: now + 3600,
            jti: "z1".into(),
            auth_time: Some(now - 5),
            amr: vec!["pwd".into()],
            acr: None,
            postern_kind: ZONE_SESSION_KIND.into(),
            postern_edge_spki: Some("ab".repeat(32)),
        }
    }

    #[test]
    fn zone_session_verifies_only_as_a_zone_session_of_its_zone() {
        let ring = rfc8037_ring();
        let token = ring.sign_zone_session(&zone_session_at(FIXED_NOW));
        let got = ring
            .verify_zone_session(&token, FIXED_ISSUER, "example.com", FIXED_NOW, 0)
            .unwrap();
        assert_eq!(got, zone_session_at(FIXED_NOW));
        assert_eq!(got.zone(), "example.com");
        // Never an app token, whatever audience is asked for: it opens no carrier.
        for aud in ["example.com", "zone:example.com", "ssh.example.com"] {
            assert_eq!(
                ring.verify_app_token(&token, FIXED_ISSUER, aud, FIXED_NOW, 0),
                Err(JwtError::WrongKind {
                    expected: "an app token"
                }),
                "{aud}"
            );
        }
        // Bound to its zone, its issuer and its lifetime.
        assert!(matches!(
            ring.verify_zone_session(&token, FIXED_ISSUER, "other.com", FIXED_NOW, 0),
            Err(JwtError::WrongAudience { .. })
        ));
        assert!(ring
            .verify_zone_session(&token, "https://evil.test", "example.com", FIXED_NOW, 0)
            .is_err());
        assert!(matches!(
            ring.verify_zone_session(&token, FIXED_ISSUER, "example.com", FIXED_NOW + 3600, 0),
            Err(JwtError::Expired { .. })
        ));
        // An app token (or an origin assertion) is not a zone session, even with its audience.
        let app = ring.sign(&serde_json::json!({
            "iss": FIXED_ISSUER, "aud": ["zone:example.com"], "sub": "a", "iat": FIXED_NOW,
            "exp": FIXED_NOW + 60, "postern_kind": ZONE_SESSION_KIND, "jti": "j",
            "nbf": FIXED_NOW, "auth_time": FIXED_NOW,
        }));
        assert_eq!(
            ring.verify_zone_session(&app, FIXED_ISSUER, "example.com", FIXED_NOW, 0),
            Err(JwtError::WrongKind {
                expected: "a zone session"
            })
        );
        let assertion = ring.sign_origin_assertion(&assertion_at(FIXED_NOW));
        assert!(ring
            .verify_zone_session(&assertion, FIXED_ISSUER, "example.com", FIXED_NOW, 0)
            .is_err());
    }

    #[test]
    fn origin_assertion_is_refused_as_an_app_token_even_for_the_same_audience() {
        let ring = rfc8037_ring();
        let token = ring.sign_origin_assertion(&assertion_at(FIXED_NOW));
        // Its signature, issuer, audience and times would all pass the app-token check.
        assert!(edge_check(&ring.active, &token, FIXED_NOW).is_ok());
        let refused = ring.verify_app_token(&token, FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW, 0);
        assert_eq!(
            refused,
            Err(JwtError::WrongKind {
                expected: "an app token"
            })
        );
        assert!(refused.unwrap_err().to_string().contains("refused"));
    }

    #[test]
    fn app_token_typed_token_with_the_assertion_claim_is_refused_as_an_app_token() {
        // Either mark alone is enough: a JWT-typed token carrying postern_kind is refused.
        let ring = rfc8037_ring();
        let mut claims = claims_at(FIXED_NOW);
        claims["postern_kind"] = json!(ORIGIN_ASSERTION_KIND);
        let token = ring.sign(&claims);
        assert_eq!(
            ring.verify_app_token(&token, FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW, 0),
            Err(JwtError::WrongKind {
                expected: "an app token"
            })
        );
        claims["postern_kind"] = json!(null);
        let token = ring.sign(&claims);
        assert!(ring
            .verify_app_token(&token, FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW, 0)
            .is_err());
        // And a token of another typ, without the claim, is refused too.
        let untyped = jws(
            &format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, ring.active().kid()),
            &serde_json::to_vec(&claims_at(FIXED_NOW)).unwrap(),
            ed_sign(ring.active()),
        );
        assert_eq!(
            ring.verify_app_token(&untyped, FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW, 0),
            Err(JwtError::WrongKind {
                expected: "an app token"
            })
        );
    }

    #[test]
    fn app_tokens_still_verify_as_app_tokens() {
        let ring = rfc8037_ring();
        let token = ring.sign(&claims_at(FIXED_NOW));
        let claims = ring
            .verify_app_token(&token, FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW, 0)
            .unwrap();
        assert_eq!(claims.email.as_deref(), Some("alice@example.com"));
    }

    #[test]
    fn app_token_is_refused_as_an_origin_assertion() {
        let ring = rfc8037_ring();
        let mut claims = claims_at(FIXED_NOW);
        claims["stream"] = json!(7);
        claims["postern_kind"] = json!(ORIGIN_ASSERTION_KIND);
        claims["exp"] = json!(FIXED_NOW + 30);
        let token = ring.sign(&claims);
        assert_eq!(
            origin_check(&token, FIXED_AUDIENCE, FIXED_NOW),
            Err(JwtError::WrongKind {
                expected: "an origin assertion"
            })
        );
        // Typed as an assertion but without the kind claim: refused as well.
        let mut unmarked = serde_json::to_value(assertion_at(FIXED_NOW)).unwrap();
        unmarked["postern_kind"] = json!("app_token");
        let token = ring.active().sign_typed(&unmarked, ORIGIN_ASSERTION_TYP);
        assert_eq!(
            origin_check(&token, FIXED_AUDIENCE, FIXED_NOW),
            Err(JwtError::WrongKind {
                expected: "an origin assertion"
            })
        );
    }

    #[test]
    fn origin_assertion_for_another_hostname_or_issuer_is_refused() {
        let token = rfc8037_ring().sign_origin_assertion(&assertion_at(FIXED_NOW));
        assert!(matches!(
            origin_check(&token, "git.example.com", FIXED_NOW),
            Err(JwtError::WrongAudience { .. })
        ));
        assert!(matches!(
            verify_origin_assertion(
                &token,
                &fixed_jwks(),
                "https://other.example",
                FIXED_AUDIENCE,
                FIXED_NOW,
                0
            ),
            Err(JwtError::WrongIssuer { .. })
        ));
        // An application pattern is not a hostname.
        let mut wild = assertion_at(FIXED_NOW);
        wild.aud = "*.example.com".into();
        let token = rfc8037_ring().sign_origin_assertion(&wild);
        assert!(matches!(
            origin_check(&token, FIXED_AUDIENCE, FIXED_NOW),
            Err(JwtError::WrongAudience { .. })
        ));
    }

    #[test]
    fn origin_assertion_expires_after_its_lifetime_and_may_not_live_longer() {
        let token = rfc8037_ring().sign_origin_assertion(&assertion_at(FIXED_NOW));
        let end = FIXED_NOW + ORIGIN_ASSERTION_LIFETIME_SECS;
        assert!(verify_origin_assertion(
            &token,
            &fixed_jwks(),
            FIXED_ISSUER,
            FIXED_AUDIENCE,
            end - 1,
            0
        )
        .is_ok());
        assert!(matches!(
            verify_origin_assertion(&token, &fixed_jwks(), FIXED_ISSUER, FIXED_AUDIENCE, end, 0),
            Err(JwtError::Expired { .. })
        ));
        let mut long = assertion_at(FIXED_NOW);
        long.exp = FIXED_NOW + ORIGIN_ASSERTION_LIFETIME_SECS + 1;
        let token = rfc8037_ring().sign_origin_assertion(&long);
        assert!(matches!(
            origin_check(&token, FIXED_AUDIENCE, FIXED_NOW),
            Err(JwtError::InvalidClaims(_))
        ));
    }

    #[test]
    fn origin_assertion_signed_by_another_key_is_refused() {
        let (stranger, _) = KeyRing::generate();
        let token = stranger.sign_origin_assertion(&assertion_at(FIXED_NOW));
        assert!(origin_check(&token, FIXED_AUDIENCE, FIXED_NOW).is_err());
    }

    // ---- key ring ----

    #[test]
    fn rotation_keeps_old_tokens_valid_until_their_window_ends_and_not_after() {
        let lifetime = 3600;
        let t0 = FIXED_NOW;
        let (mut ring, _) = KeyRing::generate();
        let mut claims = claims_at(t0);
        claims["exp"] = json!(t0 + lifetime);
        let old_token = ring.sign(&claims);
        let old_kid = ring.active().kid().to_string();

        ring.rotate(t0 + 10, lifetime);
        assert_ne!(ring.active().kid(), old_kid);
        let new_token = ring.sign(&claims_at(t0 + 10));
        let check =
            |token: &str, now| ring.verify_app_token(token, FIXED_ISSUER, FIXED_AUDIENCE, now, 0);

        assert!(check(&old_token, t0 + 10).is_ok());
        assert!(check(&old_token, t0 + lifetime - 1).is_ok());
        assert!(check(&new_token, t0 + 11).is_ok());
        // The old key leaves the key set at t0 + 10 + lifetime, after every token it signed
        // expired; a token of that key is then refused for its key, whatever its claims.
        assert!(ring.jwks(t0 + 9 + lifetime).keys.len() == 2);
        assert_eq!(ring.jwks(t0 + 10 + lifetime).keys.len(), 1);
        assert_eq!(
            verify(&old_token, &ring.jwks(t0 + 10 + lifetime), &[Alg::EdDSA]),
            Err(JwtError::UnknownKey { kid: Some(old_kid) })
        );
    }

    #[test]
    fn rotation_drops_keys_past_their_window_and_bounds_the_set() {
        let (mut ring, _) = KeyRing::generate();
        ring.rotate(100, 50);
        ring.rotate(200, 50);
        assert_eq!(
            ring.retired().len(),
            1,
            "the first retired key expired at 150"
        );
        assert_eq!(ring.retired()[0].1, 250);
        for i in 0..40 {
            ring.rotate(300 + i, 1000);
        }
        assert_eq!(ring.retired().len(), MAX_JWKS_KEYS - 1);
        let published = ring.jwks(340);
        assert_eq!(published.keys.len(), MAX_JWKS_KEYS);
        assert_eq!(Jwks::parse(published.to_json().as_bytes()), Ok(published));
    }

    #[test]
    fn key_ring_file_round_trips_and_keeps_signing_with_the_same_key() {
        let (mut ring, _) = KeyRing::generate();
        let token = ring.sign(&claims_at(FIXED_NOW));
        let pkcs8 = ring.rotate(FIXED_NOW, 3600);
        let text = ring.to_json(&pkcs8);
        let loaded = KeyRing::from_json(text.as_bytes()).unwrap();
        assert_eq!(loaded.active().public_jwk(), ring.active().public_jwk());
        assert_eq!(loaded.retired(), ring.retired());
        assert_eq!(loaded.jwks(FIXED_NOW), ring.jwks(FIXED_NOW));
        assert!(loaded
            .verify_app_token(&token, FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW, 0)
            .is_ok());
        let fresh = loaded.sign(&claims_at(FIXED_NOW));
        assert!(ring
            .verify_app_token(&fresh, FIXED_ISSUER, FIXED_AUDIENCE, FIXED_NOW, 0)
            .is_ok());
    }

    #[test]
    #[should_panic(expected = "bug: to_json given another key's PKCS#8")]
    fn key_ring_file_is_never_written_with_another_keys_pkcs8() {
        let (ring, _) = KeyRing::generate();
        let (_, other) = SigningKey::generate();
        let _ = ring.to_json(&other);
    }

    #[test]
    fn damaged_key_ring_file_is_refused() {
        let (ring, pkcs8) = KeyRing::generate();
        let good: serde_json::Value = serde_json::from_str(&ring.to_json(&pkcs8)).unwrap();
        let damage = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            f(&mut v);
            KeyRing::from_json(v.to_string().as_bytes())
        };
        assert!(damage(&|_| {}).is_ok());
        assert!(matches!(
            damage(&|v| v["version"] = json!(2)),
            Err(JwtError::InvalidKeyRing(_))
        ));
        assert!(matches!(
            damage(&|v| v["surprise"] = json!(1)),
            Err(JwtError::InvalidKeyRing(_))
        ));
        assert!(matches!(
            damage(&|v| v["active"]["pkcs8"] = json!("AAAA")),
            Err(JwtError::InvalidSigningKey)
        ));
        assert!(matches!(
            damage(&|v| v["active"]["pkcs8"] = json!("a+b=")),
            Err(JwtError::InvalidKeyRing(_))
        ));
        assert!(matches!(
            damage(&|v| v["retired"] = json!([{"jwk": {"kty": "RSA"}, "verify_until": 1}])),
            Err(JwtError::InvalidKeyRing(_))
        ));
        assert!(KeyRing::from_json(b"").is_err());
    }

    #[test]
    fn key_ring_file_holds_the_private_key_only_as_pkcs8() {
        let (ring, pkcs8) = KeyRing::generate();
        let text = ring.to_json(&pkcs8);
        assert!(text.contains(&base64::encode_url(&pkcs8)));
        assert!(text.contains(ring.active().kid()));
    }

    // ---- errors ----

    #[test]
    fn strings_from_the_token_are_shortened_and_cleaned_in_errors() {
        let key = rfc8037_key();
        let long_kid = format!("{}\u{1b}[31m", "k".repeat(500));
        let header = json!({"alg": "EdDSA", "kid": long_kid}).to_string();
        let token = jws(&header, b"{}", ed_sign(&key));
        let err = verify(&token, &fixed_jwks(), &Alg::ALL).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("{}…", "k".repeat(64))), "{text}");
        assert!(!text.contains('\u{1b}') && text.len() < 200, "{text}");
        let header = json!({"alg": "x\ny".repeat(100)}).to_string();
        let token = jws(&header, b"{}", ed_sign(&key));
        let text = verify(&token, &fixed_jwks(), &Alg::ALL)
            .unwrap_err()
            .to_string();
        assert!(!text.contains('\n') && text.len() < 250, "{text}");
    }

    #[test]
    fn no_error_repeats_the_token_or_its_signature() {
        let key = rfc8037_key();
        let token = key.sign(&claims_at(FIXED_NOW - 100_000));
        let signature = token.rsplit('.').next().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let tampered = with_part(&token, 2, &base64::encode_url(&[7; 64]));
        for bad in [
            token.clone(),
            tampered,
            token[..token.len() - 3].to_string(),
        ] {
            let text = fixed_claims(&bad).unwrap_err().to_string();
            assert!(
                !text.contains(signature) && !text.contains(payload),
                "{text}"
            );
            assert!(!text.contains("alice@example.com"), "{text}");
        }
    }

    #[test]
    fn errors_read_as_operator_sentences() {
        let cases = [
            (
                JwtError::UnsupportedAlg { alg: "HS256".into() },
                "token signed with alg HS256: refused (postern accepts EdDSA, ES256 and RS256 only)",
            ),
            (
                JwtError::NotYetValid { in_secs: 12 },
                "token not valid for another 12 s (check the clocks of issuer and edge)",
            ),
            (
                JwtError::WrongIssuer {
                    expected: "https://a".into(),
                    got: "https://b".into(),
                },
                "token issued by https://b, not by https://a",
            ),
            (
                JwtError::BadSignature,
                "token signature does not verify: forged, altered, or signed by another key",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn alg_names_are_the_jose_names() {
        for alg in Alg::ALL {
            assert_eq!(Alg::from_name(alg.name()), Some(alg));
            assert_eq!(
                serde_json::to_string(&alg).unwrap(),
                format!("\"{}\"", alg.name())
            );
        }
        assert_eq!(Alg::from_name("es256"), None);
    }

    /// Prints the fuzz seeds: `cargo test print_fuzz_seeds -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn print_fuzz_seeds() {
        let ed = rfc8037_key();
        let payload = claims_at(FIXED_NOW).to_string();
        let eddsa = ed.sign(&claims_at(FIXED_NOW));
        let seeds = [
            ("eddsa_valid", eddsa.clone()),
            (
                "es256_valid",
                jws(
                    r#"{"alg":"ES256","kid":"p256"}"#,
                    payload.as_bytes(),
                    es_sign,
                ),
            ),
            (
                "rs256_valid",
                jws(
                    r#"{"alg":"RS256","kid":"rsa","typ":"JWT"}"#,
                    payload.as_bytes(),
                    rs_sign,
                ),
            ),
            ("rfc7515_a2_rs256_no_kid", RFC7515_A2_TOKEN.to_string()),
            ("rfc7515_a3_es256_no_kid", RFC7515_A3_TOKEN.to_string()),
            ("rfc8037_a4_eddsa_not_json", RFC8037_A4_TOKEN.to_string()),
            ("alg_none", RFC7515_A5_NONE_TOKEN.to_string()),
            (
                "alg_none_two_parts",
                RFC7515_A5_NONE_TOKEN.trim_end_matches('.').to_string(),
            ),
            ("hs256", RFC7515_A1_HS256_TOKEN.to_string()),
            (
                "tampered_payload",
                with_part(
                    &eddsa,
                    1,
                    &base64::encode_url(payload.replace("user-1", "admin").as_bytes()),
                ),
            ),
            (
                "crit_header",
                jws(
                    r#"{"alg":"EdDSA","kid":"ed25519","crit":["exp"],"exp":1}"#,
                    payload.as_bytes(),
                    ed_sign(&ed),
                ),
            ),
            ("expired", ed.sign(&claims_at(FIXED_NOW - 10_000))),
        ];
        for (name, token) in seeds {
            assert!(!token.contains('\n'));
            println!("SEED {name} {token}");
        }
    }

    #[cfg(feature = "fuzzing")]
    #[test]
    fn fuzz_entry_point_survives_tokens_and_junk() {
        let ed = rfc8037_key();
        fuzz_verify(ed.sign(&claims_at(FIXED_NOW)).as_bytes());
        fuzz_verify(RFC7515_A2_TOKEN.as_bytes());
        fuzz_verify(b"\xff\xfe.\x00.");
        fuzz_verify(FIXED_JWKS.as_bytes());
        fuzz_verify(&[b'.'; MAX_TOKEN_LEN + 1]);
    }
}
