//! What an origin certificate may claim by registering hostnames (`tunnel --hostname`), and
//! that a claim the edge confirmed survives a crash.
//!
//! - a hostname in the edge's zone but outside every application is refused (ERROR 404 naming
//!   the hostname), and the real `postern tunnel` exits instead of retrying;
//! - one certificate claims at most 64 hostnames: the next is refused (ERROR 403 naming the cap),
//!   while what it owns stays its own and other certificates are not held back;
//! - REGISTERED means on disk: the edge killed (SIGKILL) right after it still knows the owner.
//!
//! Origins are written by hand (`support::raw::RawTunnel`) with real origin certificates.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use postern::limits::MAX_HOSTNAMES_PER_CERTIFICATE;
use support::raw::RawTunnel;
use support::{free_port, origin_cert, temp_dir, Edge, TempDir, Tunnel};

struct Setup {
    edge: Edge,
    cert: PathBuf,
    dir: TempDir,
}

/// An edge for zone `localhost` whose applications are `app.localhost` and `*.apps.localhost`
/// (so `other.localhost` is in the zone, covered by the certificate, yet served by no
/// application), and an origin certificate for the zone.
fn start(name: &str) -> Setup {
    let dir = temp_dir(name);
    let state = dir.join("edge-state");
    let config = dir.join("edge.json");
    let allow = serde_json::json!([ { "decision": "allow", "include": [
        { "any_valid_service_token": true }
    ] } ]);
    let cfg = serde_json::json!({
        "listen": format!("127.0.0.1:{}", free_port()),
        "state_dir": state,
        "zones": [ { "name": "localhost", "local_ca": true } ],
        "applications": [
            { "hostname": "app.localhost", "policies": allow },
            { "hostname": "*.apps.localhost", "policies": allow },
        ],
    });
    std::fs::write(&config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let edge = Edge::start_config(dir.path(), &config, &state, &[]);
    let cert = dir.join("cert.pem");
    origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    Setup { edge, cert, dir }
}

fn register(s: &Setup, cert: &Path, host: &str) -> Result<RawTunnel, (u16, String)> {
    RawTunnel::try_register(s.edge.addr, &s.edge.ca(), cert, host)
}

#[test]
fn hostname_outside_every_application_is_refused() {
    let s = start("register-no-app");
    let (code, message) = register(&s, &s.cert, "other.localhost")
        .err()
        .expect("a hostname no application serves must be refused");
    assert_eq!(code, 404, "{message}");
    assert!(
        message.contains("other.localhost") && message.contains("no application"),
        "the refusal must name the hostname and the reason: {message}"
    );
    assert!(
        !s.edge.state.join("hostnames.json").exists()
            || !std::fs::read_to_string(s.edge.state.join("hostnames.json"))
                .unwrap()
                .contains("other.localhost"),
        "a refused hostname is not claimed"
    );
    // The real tunnel takes the refusal as final: it exits 1 saying why, without retrying.
    let tunnel = Tunnel::spawn(
        s.dir.path(),
        "tunnel-no-app",
        "other.localhost",
        "ssh://127.0.0.1:1",
        &s.cert,
        &s.edge,
    );
    let status = tunnel
        .child()
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("a refused tunnel must exit: {e}"));
    let stderr = tunnel.child().stderr_text();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no application"), "{stderr}");
    // Hostnames that an application serves still register.
    register(&s, &s.cert, "app.localhost").expect("app.localhost registers");
    register(&s, &s.cert, "a.apps.localhost").expect("a.apps.localhost registers");
}

#[test]
fn one_certificate_claims_at_most_the_cap() {
    let s = start("register-cap");
    for i in 0..MAX_HOSTNAMES_PER_CERTIFICATE {
        let host = format!("h{i}.apps.localhost");
        register(&s, &s.cert, &host).unwrap_or_else(|(c, m)| panic!("{host}: {c} {m}"));
    }
    let (code, message) = register(&s, &s.cert, "one-more.apps.localhost")
        .err()
        .expect("a claim beyond the cap must be refused");
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains(&MAX_HOSTNAMES_PER_CERTIFICATE.to_string())
            && message.contains("named tunnel"),
        "the refusal must name the cap and the way out: {message}"
    );
    s.edge
        .child()
        .wait_for_stderr("registration refused", Duration::from_secs(5))
        .expect("the edge logs the refusal");
    // What the certificate owns stays its own: it registers again (another HA connection).
    register(&s, &s.cert, "h0.apps.localhost").expect("an owned hostname registers again");
    // Another certificate of the zone is not held back by the first one's claims.
    let other = s.dir.join("other-cert.pem");
    origin_cert(&s.edge.state, "localhost", &other, &s.edge.addr);
    register(&s, &other, "one-more.apps.localhost").expect("another certificate claims");
}

#[test]
fn a_confirmed_claim_survives_an_edge_crash_right_after_registered() {
    let mut s = start("register-crash");
    let first = register(&s, &s.cert, "app.localhost").expect("first claim");
    drop(first);
    // SIGKILL at once after REGISTERED: the claim must be on disk already.
    s.edge.restart();
    let other = s.dir.join("other-cert.pem");
    origin_cert(&s.edge.state, "localhost", &other, &s.edge.addr);
    let (code, message) = register(&s, &other, "app.localhost")
        .err()
        .expect("another certificate must not take a confirmed claim after a crash");
    assert_eq!(code, 409, "{message}");
    register(&s, &s.cert, "app.localhost").expect("the owner registers again");
}
