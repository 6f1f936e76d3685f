//! Login links sent to someone else, with a real OpenID Connect provider and real Chromium
//! (issue 10, findings 1 and 2). Before the confirmation step, both attacks worked:
//!
//! 1. Tunnel-login hijack: an attacker starts `tunnel login` itself, opens the login link in
//!    its own client, and sends a tunnel admin the provider link it was redirected to. The
//!    admin's browser signs in; the attacker then finished the login itself
//!    (`GET /cdn-cgi/access/tunnel-zone?state&zone`) and received an origin certificate for
//!    the zone, sealed to its own key. Now the admin's browser is not the one bound to the
//!    login: the login ends at "started in another browser", and the attacker gets nothing.
//! 2. CLI-login phishing: a login link with the attacker's key, sent to a user whose browser
//!    is signed in at the provider, completed with zero clicks and sealed the victim's app
//!    token to the attacker. Now it stops at a confirmation page that shows where the login
//!    came from and asks for the code its terminal printed, which the victim does not have;
//!    nothing is issued without it.
//!
//! Each test tries the attack in the form today's edge speaks and, against an edge from
//! before the fix (which did not know the login start), in the old form, so running it with
//! `POSTERN_BIN` pointing at an old binary shows the attack succeed there.

use crate::support;

use support::oidc::{browser_login, browser_login_then};
use support::sso::{header_of, set_cookie, state_of, status_code, RawLogin, Sso};

#[test]
fn a_forwarded_provider_link_cannot_finish_a_tunnel_login_in_another_browser() {
    let sso = Sso::start("hijack-tunnel");
    let attacker = RawLogin::new(&sso.edge_addr, &sso.ca(), "login.localhost");
    // The attacker starts a tunnel login and opens its link in its own client.
    let opened = if status_code(&attacker.start(true)) == 201 {
        attacker.browser_get(
            "login.localhost",
            &format!("/cdn-cgi/access/cli?id={}", attacker.opener.id),
            None,
        )
    } else {
        attacker.browser_get(
            "login.localhost",
            &format!(
                "/cdn-cgi/access/cli?id={}&key={}&purpose=tunnel",
                attacker.opener.id, attacker.opener.public
            ),
            None,
        )
    };
    assert_eq!(status_code(&opened), 302, "{opened}");
    let provider_link = header_of(&opened, "location").unwrap().to_owned();
    assert!(
        provider_link.starts_with(&sso.provider.issuer),
        "{provider_link}"
    );
    let state = state_of(&provider_link).unwrap();
    let cookie = set_cookie(&opened);

    // alice, a tunnel admin, follows the provider link she was sent; her browser signs in.
    let page = browser_login(
        &provider_link,
        "alice",
        "Login started in another browser",
        None,
        None,
        sso.dir.path(),
    );

    // The attacker tries to finish the login from its side, the old way and the new.
    let origin = edge_origin(&sso);
    let _ = attacker.browser_get(
        "login.localhost",
        &format!("/cdn-cgi/access/tunnel-zone?state={state}&zone=localhost"),
        cookie.as_deref(),
    );
    let _ = attacker.browser_post(
        "login.localhost",
        "/cdn-cgi/access/confirm",
        &format!("state={state}&action=confirm&zone=localhost"),
        cookie.as_deref(),
        Some(&origin),
    );
    let (status, answer) = attacker.poll();
    assert_ne!(
        status, 200,
        "the attacker received an origin certificate: {answer}"
    );
    let page = page.unwrap_or_else(|e| panic!("alice's browser: {e}"));
    assert!(
        page.contains("someone may have sent you this link"),
        "{page}"
    );
    assert_eq!(status, 403, "the attacker's login ended: {answer}");
    support::audit_when(
        &sso.state.join("audit.log"),
        std::time::Duration::from_secs(10),
        "the refusal in the audit log",
        |a| a.contains("browser not bound (callback)"),
    );
}

#[test]
fn a_login_link_sent_to_a_signed_in_user_waits_for_their_confirmation() {
    let sso = Sso::start("phish-app");
    let attacker = RawLogin::new(&sso.edge_addr, &sso.ca(), "ssh.localhost");
    let link = app_link(&attacker);

    // alice logs in for herself (her browser now holds a provider session), then opens the
    // link she was sent, in the same browser.
    let own = RawLogin::new(&sso.edge_addr, &sso.ca(), "other.localhost");
    let own_link = app_link(&own);
    let page = browser_login_then(
        &own_link,
        "alice",
        &own.code(),
        &link,
        "Confirm this login",
        sso.dir.path(),
    );
    let (status, answer) = own.poll();
    assert_eq!(status, 200, "alice's own login: {answer}");

    // Her browser went through the provider without a click, but nothing was issued.
    let (status, answer) = attacker.poll();
    assert_ne!(
        status, 200,
        "the attacker received alice's app token: {answer}"
    );
    assert_eq!(status, 202, "{answer}");
    let page = page.unwrap_or_else(|e| panic!("alice's browser: {e}"));
    // The page asks for the code the login's terminal printed (the attacker's: alice has
    // none to type, and the page does not show it) and says where the login came from.
    assert!(
        page.contains("Type the code your terminal printed"),
        "{page}"
    );
    assert!(!page.contains(&attacker.code()), "{page}");
    assert!(
        page.contains("This login was started from 127.0.0.1"),
        "{page}"
    );
}

/// Starts an app login for `login`'s host and returns its link; an edge from before the
/// login start took the key in the link instead.
fn app_link(login: &RawLogin) -> String {
    if status_code(&login.start(false)) == 201 {
        login.link()
    } else {
        format!(
            "{}&key={}&app={}",
            login.link(),
            login.opener.public,
            login.host
        )
    }
}

/// The edge's own origin, as a browser on its login pages would send it.
fn edge_origin(sso: &Sso) -> String {
    let port = sso.edge_addr.rsplit(':').next().unwrap();
    format!("https://login.localhost:{port}")
}
