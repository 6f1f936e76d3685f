//! A code exchange that finishes after its browser connection has gone acts on nothing else
//! (issue 10, finding 3). Before, the worker's answer named a bare slot: if the parked
//! callback had timed out and the slot now held another connection (even a tunnel), that
//! connection was taken out and dropped, and the slot and its address's count leaked.
//! Now answers name the connection by slot and generation; a stale one only ends its login.
//! One exchange per login is in flight at a time.

use crate::support;

use std::time::{Duration, Instant};

use support::oidc::ProviderOptions;
use support::sso::{header_of, set_cookie, state_of, status_code, RawLogin, Sso};
use support::{EdgeRef, Tunnel};

#[test]
fn a_late_code_exchange_never_touches_the_connection_that_took_its_slot() {
    // The provider holds each token request for 6 s; the edge gives a parked callback 2 s.
    let sso = Sso::start_with(
        "late-exchange",
        &ProviderOptions {
            token_delay_ms: 6000,
            ..ProviderOptions::default()
        },
        serde_json::json!({ "handshake_timeout_secs": 2 }),
    );
    let login = RawLogin::new(&sso.edge_addr, &sso.ca(), "ssh.localhost");
    // An edge from before the login start (`POSTERN_BIN` of an older build) took the key in
    // the link and set no cookie: the test then shows what such an edge does.
    let link = if status_code(&login.start(false)) == 201 {
        format!("/cdn-cgi/access/cli?id={}", login.opener.id)
    } else {
        format!(
            "/cdn-cgi/access/cli?id={}&key={}&app=ssh.localhost",
            login.opener.id, login.opener.public
        )
    };
    let opened = login.browser_get("login.localhost", &link, None);
    let state = state_of(header_of(&opened, "location").unwrap()).unwrap();
    let cookie = set_cookie(&opened);
    let callback = format!("/cdn-cgi/access/callback?state={state}&code=not-a-real-code");

    // The browser's callback parks while the edge exchanges the code...
    let parked = {
        let (edge, ca, cookie, callback) = (
            sso.edge_addr.clone(),
            sso.ca(),
            cookie.clone(),
            callback.clone(),
        );
        std::thread::spawn(move || {
            let l = RawLogin::new(&edge, &ca, "ssh.localhost");
            l.browser_get("login.localhost", &callback, cookie.as_deref())
        })
    };
    sso.provider
        .child()
        .wait_for_stderr("holding a token request", Duration::from_secs(10))
        .expect("the edge exchanges the code");
    // ...and a second callback for the same login does not start a second exchange.
    // (Checked at the end, so that against an older edge the test first shows its worse bug.)
    let second = login.browser_get("login.localhost", &callback, cookie.as_deref());
    // The edge gives up on the parked browser after its 2 s; its slot is free again.
    let parked = parked.join().unwrap();
    assert!(!parked.contains("200 OK"), "{parked}");

    // A tunnel's connections take the freed slot before the exchange ends.
    let edge = EdgeRef {
        addr: sso.edge_addr.parse().unwrap(),
        ca: sso.ca(),
    };
    let cert = sso.dir.join("cert.pem");
    let tunnel = Tunnel::start_with(
        sso.dir.path(),
        "tunnel-late",
        "other.localhost",
        &sso.sshd.url(),
        &cert,
        &edge,
    );
    tunnel.wait_registered(4, Duration::from_secs(20));
    assert!(
        !sso.provider.stderr_text().contains("POST /token ->"),
        "the exchange ended too early for this test"
    );

    // The exchange ends (the provider refuses the made-up code)...
    sso.provider
        .child()
        .wait_for_stderr("POST /token ->", Duration::from_secs(15))
        .expect("the token request ends");
    // ...and the tunnel is left alone: no connection lost, none registered again.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        let log = tunnel.child().stderr_text();
        assert!(
            !log.contains(" lost ("),
            "a late exchange dropped a tunnel connection:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(tunnel.registered_count(), 4);
    // The login it belonged to ends, and its CLI learns that.
    sso.edge
        .wait_for_stderr(
            "a sign-in finished after its browser connection had gone",
            Duration::from_secs(5),
        )
        .expect("the edge ends the login");
    let (status, answer) = login.poll();
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("browser went away"), "{answer}");
    assert_eq!(
        status_code(&second),
        409,
        "one exchange per login: {second}"
    );
}
