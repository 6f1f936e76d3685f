//! Logins in progress are bounded so that no one source can lock everyone out of signing in
//! (issue 10, finding 6). Before, one edge-wide table of 1024 pending logins filled in about
//! 3 s from some 35 addresses, and every app and tunnel login then got 503 for 5 minutes.
//!
//! - app logins and tunnel logins have budgets of their own;
//! - one source (an address, or an IPv6 /64: see the unit tests of `token_transfer`) has a
//!   budget of its own;
//! - a login whose CLI stopped polling gives its place back within 30 s, not 5 minutes.

use crate::support;

use std::time::{Duration, Instant};

use support::oidc::ProviderOptions;
use support::sso::{body_of, status_code, RawLogin, Sso};

#[test]
fn logins_in_progress_have_budgets_per_kind_and_per_source_and_abandoned_ones_expire() {
    let sso = Sso::start_with(
        "login-budgets",
        &ProviderOptions::default(),
        serde_json::json!({
            "max_pending_transfers": 2,
            "max_pending_tunnel_logins": 2,
            "max_pending_logins_per_ip": 3,
            // The retries below are not what this test is about.
            "login_attempts_per_minute": 1000,
        }),
    );
    let login = |host: &str| RawLogin::new(&sso.edge_addr, &sso.ca(), host);
    let app: Vec<RawLogin> = (0..2).map(|_| login("ssh.localhost")).collect();
    for l in &app {
        let r = l.start(false);
        assert_eq!(status_code(&r), 201, "{r}");
    }
    // The app budget is spent...
    let third = login("ssh.localhost");
    let r = third.start(false);
    assert_eq!(status_code(&r), 503, "{r}");
    assert!(body_of(&r).contains("too many logins in progress"), "{r}");
    // ...but tunnel logins have their own.
    let tunnel = login("login.localhost");
    let r = tunnel.start(true);
    assert_eq!(status_code(&r), 201, "{r}");
    // This address now has 3 logins in progress: its own budget is spent too.
    let r = login("login.localhost").start(true);
    assert_eq!(status_code(&r), 429, "{r}");
    assert!(body_of(&r).contains("from your address"), "{r}");
    sso.edge
        .wait_for_stderr("limits.max_pending", Duration::from_secs(5))
        .ok();
    assert!(
        sso.edge
            .stderr_text()
            .contains("login refused: too many logins"),
        "the limit is logged: {}",
        sso.edge.stderr_text()
    );

    // The first app login keeps polling; the others were abandoned by their CLIs. Their
    // places come back well before the 5-minute lifetime of a login.
    let started = Instant::now();
    let retry = login("ssh.localhost");
    loop {
        assert_eq!(app[0].poll().0, 202, "a polled login stays");
        let r = retry.start(false);
        if status_code(&r) == 201 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "abandoned logins still hold their places after {:?}: {r}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // The polled login is still there; the abandoned tunnel login is gone.
    assert_eq!(app[0].poll().0, 202);
    assert_eq!(tunnel.poll().0, 404);
}
