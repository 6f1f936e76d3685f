//! What an origin learns about a client is an assertion the edge signs for that one stream,
//! never a credential the client presented.
//!
//! The origin here is written by hand (`support::raw::RawTunnel`: mutual TLS with a real origin
//! certificate, HELLO, REGISTER) so that the test reads the OPEN frame exactly as an origin
//! receives it. Clients come in with a service token (plus an app token the edge does not
//! need) and with an app token minted with the edge's own key, as a browser login would get
//! one. For each, OPEN's claims hold no token or secret, and their `assertion` verifies against
//! the JWKS the edge publishes at `/cdn-cgi/access/certs`, for exactly this hostname and this
//! stream, for at most 60 s. Presented back to the edge as `cf-access-token`, the assertion is
//! refused, though its signature, issuer and audience would pass the app-token check.

use crate::support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postern::proto::jwt::{self, Jwks, KeyRing, OriginAssertion};
use postern::proto::mux::Frame;
use support::raw::{self, RawTunnel};
use support::{free_port, origin_cert, service_token, temp_dir, Edge, ServiceToken, TempDir};

/// An application of its own (exact hostname, so that an app token's `aud` equals the
/// assertion's): the replay check cannot lean on an audience mismatch.
const HOST: &str = "raw.localhost";

struct Setup {
    edge: Edge,
    token: ServiceToken,
    public_url: String,
    origin: RawTunnel,
    _dir: TempDir,
}

fn start(name: &str) -> Setup {
    let dir = temp_dir(name);
    let port = free_port();
    let public_url = format!("https://login.localhost:{port}");
    let state = dir.join("edge-state");
    let config = dir.join("edge.json");
    let cfg = serde_json::json!({
        "listen": format!("127.0.0.1:{port}"),
        "state_dir": state,
        "public_url": public_url,
        "zones": [ { "name": "localhost", "local_ca": true } ],
        "applications": [
            { "hostname": HOST, "policies": [ { "decision": "allow", "include": [
                { "any_valid_service_token": true }, { "everyone": true }
            ] } ] }
        ],
    });
    std::fs::write(&config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let edge = Edge::start_config(dir.path(), &config, &state, &[]);
    let token = service_token(&edge.state, "e2e");
    let cert = dir.join("cert.pem");
    origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    let origin = RawTunnel::register(edge.addr, &edge.ca(), &cert, HOST);
    Setup {
        edge,
        token,
        public_url,
        origin,
        _dir: dir,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The edge's key ring, as its state directory holds it (the test signs app tokens with it, as
/// the edge does after a browser login).
fn edge_keys(state: &Path) -> KeyRing {
    KeyRing::from_json(&std::fs::read(state.join("signing-keys.json")).unwrap()).unwrap()
}

/// An app token as the edge issues at sign-in: `aud` the application, one hour.
fn app_token(keys: &KeyRing, iss: &str, email: &str) -> String {
    let now = unix_now();
    keys.sign(&serde_json::json!({
        "iss": iss,
        "aud": [HOST],
        "sub": email,
        "email": email,
        "groups": ["ops"],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": "test-login",
    }))
}

/// A request to the edge over a carrier (SNI = Host = `host`); the whole response as text.
fn request(edge: SocketAddr, ca: &Path, host: &str, text: &str) -> String {
    let mut tls = raw::carrier(edge, ca, host);
    tls.write_all(text.as_bytes()).unwrap();
    tls.flush().unwrap();
    let mut got = Vec::new();
    let _ = tls.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

fn upgrade(headers: &[(&str, &str)]) -> String {
    let mut req = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// The JWKS the edge publishes, fetched as any origin or third party would.
fn published_jwks(s: &Setup) -> Jwks {
    let response = request(
        s.edge.addr,
        &s.edge.ca(),
        HOST,
        &format!("GET /cdn-cgi/access/certs HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
    );
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no JWKS response: {response:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Jwks::parse(body.as_bytes()).unwrap_or_else(|e| panic!("JWKS {body:?}: {e}"))
}

/// Opens a carrier with `headers` and returns what the origin got: the OPEN's stream id and
/// claims. The carrier stays open while the origin reads.
fn open_with(s: &mut Setup, headers: &[(&str, &str)]) -> (u32, serde_json::Value, String) {
    let mut carrier = raw::carrier(s.edge.addr, &s.edge.ca(), HOST);
    carrier.write_all(upgrade(headers).as_bytes()).unwrap();
    let (head, _) = raw::read_head(&mut carrier);
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused:\n{head}");
    let (stream, claims) = s
        .origin
        .wait_for(Duration::from_secs(10), |f| match f {
            Frame::Open { stream, claims, .. } => Some((*stream, claims.to_vec())),
            _ => None,
        })
        .unwrap_or_else(|e| panic!("the edge must OPEN a stream on the origin: {e}"));
    let text = String::from_utf8(claims).expect("claims are UTF-8 JSON");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("claims {text:?}: {e}"));
    (stream, value, text)
}

/// The assertion in `claims`, checked as an origin checks it.
fn check_assertion(
    s: &Setup,
    jwks: &Jwks,
    stream: u32,
    claims: &serde_json::Value,
) -> (String, OriginAssertion) {
    let token = claims["assertion"]
        .as_str()
        .unwrap_or_else(|| panic!("OPEN's claims carry an assertion: {claims}"))
        .to_owned();
    let now = unix_now();
    let a = jwt::verify_origin_assertion(&token, jwks, &s.public_url, HOST, now, 5)
        .unwrap_or_else(|e| panic!("the assertion must verify against the edge's JWKS: {e}"));
    assert_eq!(a.aud, HOST, "aud is exactly the stream's hostname");
    assert_eq!(a.iss, s.public_url);
    assert_eq!(a.stream, stream, "the assertion names its stream");
    assert!(a.exp > now, "not expired");
    assert!(
        a.exp - a.iat <= 60 && a.exp <= now + 60,
        "valid for at most 60 s: iat {} exp {} now {now}",
        a.iat,
        a.exp
    );
    // Independently of postern's verifier: the signature checks with the published keys
    // alone, and the header says what kind of token this is.
    let verified = jwt::verify(&token, jwks, &[jwt::Alg::EdDSA]).unwrap();
    assert_eq!(
        verified.header.typ.as_deref(),
        Some("postern-origin-assertion+jwt")
    );
    (token, a)
}

fn assert_no_secret(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "the origin received a client credential in OPEN: {text}"
        );
    }
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    assert!(
        value.get("app_token").is_none(),
        "OPEN carries no app token: {text}"
    );
}

#[test]
fn origins_get_a_signed_per_stream_assertion_and_never_the_clients_credentials() {
    let mut s = start("origin-assertion");
    let keys = edge_keys(&s.edge.state);
    let jwks = published_jwks(&s);
    let alice = app_token(&keys, &s.public_url, "alice@example.com");
    assert!(
        !alice.is_empty() && keys.active().kid().len() == 16,
        "the edge's key ring is readable"
    );

    // A service token, with an app token the edge never checks along: neither travels on.
    let id = s.token.id.clone();
    let secret = s.token.secret.clone();
    let (stream, claims, text) = open_with(
        &mut s,
        &[
            ("CF-Access-Client-Id", &id),
            ("CF-Access-Client-Secret", &secret),
            ("cf-access-token", &alice),
        ],
    );
    assert_no_secret(&text, &[&alice, &secret, &id]);
    let (_, a) = check_assertion(&s, &jwks, stream, &claims);
    assert_eq!(a.service_token.as_deref(), Some("e2e"));
    assert_eq!(
        a.email, None,
        "the unchecked app token's identity is not asserted"
    );
    assert_eq!(claims["service_token"], "e2e");
    let first_jti = a.jti;

    // An app token from a sign-in: the origin learns who, not the token.
    let (stream, claims, text) = open_with(&mut s, &[("cf-access-token", &alice)]);
    assert_no_secret(&text, &[&alice]);
    let (assertion, a) = check_assertion(&s, &jwks, stream, &claims);
    assert_eq!(a.email.as_deref(), Some("alice@example.com"));
    assert_eq!(a.sub, "alice@example.com");
    assert_eq!(a.groups, ["ops"]);
    assert_eq!(a.service_token, None);
    assert_eq!(claims["email"], "alice@example.com");
    assert_ne!(a.jti, first_jti, "each stream gets its own assertion");

    // The origin replays the assertion at the edge as a token: refused, although its
    // signature, issuer and audience (this very application) would all pass.
    let replay = request(
        s.edge.addr,
        &s.edge.ca(),
        HOST,
        &upgrade(&[("cf-access-token", &assertion)]),
    );
    let status = replay.lines().next().unwrap_or_default();
    assert!(
        status.starts_with("HTTP/1.1 401"),
        "the assertion must not open a stream: {replay}"
    );
    assert!(replay.contains("not an app token"), "{replay}");
    // Whereas the token it stands for still works (the refusal is about its kind).
    let (_, claims, _) = open_with(&mut s, &[("cf-access-token", &alice)]);
    assert!(claims["assertion"].is_string());
    s.edge
        .child()
        .wait_for_stderr("app token refused", Duration::from_secs(5))
        .expect("the edge logs the refused replay");
    assert!(
        !s.edge.stderr_text().contains(&assertion) && !s.edge.stderr_text().contains(&alice),
        "the edge logged a token"
    );
}

/// A zone session as the edge issues it at a browser login (one login per zone), signed with
/// the edge's own key for zone `localhost`.
fn zone_session(keys: &KeyRing, iss: &str, email: &str) -> String {
    let now = unix_now();
    keys.sign_zone_session(&jwt::ZoneSession {
        iss: iss.to_owned(),
        aud: format!("{}localhost", jwt::ZONE_SESSION_AUD_PREFIX),
        sub: email.to_owned(),
        email: Some(email.to_owned()),
        groups: vec!["ops".into()],
        iat: now,
        nbf: now,
        exp: now + 3600,
        jti: "test-zone".into(),
        auth_time: Some(now),
        amr: Vec::new(),
        acr: None,
        postern_kind: jwt::ZONE_SESSION_KIND.into(),
        // As an edge before the claim issued it: still exchanged.
        postern_edge_spki: None,
    })
}

#[test]
fn a_zone_session_opens_no_carrier_and_never_reaches_the_origin() {
    let mut s = start("origin-zone-session");
    let keys = edge_keys(&s.edge.state);
    let session = zone_session(&keys, &s.public_url, "alice@example.com");

    // Presented as an app token: refused, though signed by the edge for this zone.
    let refused = request(
        s.edge.addr,
        &s.edge.ca(),
        HOST,
        &upgrade(&[("cf-access-token", &session)]),
    );
    assert!(
        refused
            .lines()
            .next()
            .unwrap_or_default()
            .starts_with("HTTP/1.1 401"),
        "a zone session must not open a stream: {refused}"
    );
    assert!(refused.contains("not an app token"), "{refused}");

    // Exchanged for an app token (what the CLI does), which then opens a stream: the origin
    // sees the edge's assertion, neither the app token nor the zone session.
    let body = serde_json::json!({ "zone_session": session }).to_string();
    let answer = request(
        s.edge.addr,
        &s.edge.ca(),
        HOST,
        &format!(
            "POST /cdn-cgi/access/exchange HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: \
             application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    let (head, json) = answer.split_once("\r\n\r\n").unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    let token: serde_json::Value = serde_json::from_str(json).unwrap();
    let token = token["token"].as_str().expect("an app token").to_owned();
    let (stream, claims, text) = open_with(
        &mut s,
        &[
            ("cf-access-token", &token),
            ("Cookie", &format!("z={session}")),
        ],
    );
    assert_no_secret(&text, &[&token, &session]);
    let jwks = published_jwks(&s);
    let (assertion, a) = check_assertion(&s, &jwks, stream, &claims);
    assert_eq!(a.email.as_deref(), Some("alice@example.com"));
    assert!(!assertion.contains(&session));
    assert!(
        !s.edge.stderr_text().contains(&session),
        "the edge logged a zone session"
    );
}
