//! A login completes only when the person at the browser that opened its link confirms it
//! (issue 10, findings 1 and 2), checked request by request against the dev edge, as an
//! attacker's raw client would try it:
//!
//! - signing in issues nothing: the CLI's poll stays pending until the confirmation;
//! - the confirmation is a POST from the bound browser (its `__Host-` cookie) carrying the
//!   confirmation page's secret, from the edge's own origin: a GET, a wrong secret, a missing
//!   cookie or another site's origin issues nothing, and the last two end the login;
//! - the page shows the CLI's address and asks for the code the CLI printed (without showing
//!   it); wrong codes are asked again, three end the login; Cancel ends it with a reason;
//! - a dev sign-in step from another browser ends the login.

use crate::support;

use std::time::Duration;

use support::sso::{body_of, header_of, hidden_input, set_cookie, state_of, status_code, RawLogin};
use support::{temp_dir, Edge};

const EMAIL: &str = "alice@example.com";

/// A login that went through the dev sign-in in one browser, up to its confirmation page.
struct Signed {
    login: RawLogin,
    /// The login host (`login.localhost`), where the browser's part happens.
    public: String,
    origin: String,
    cookie: String,
    state: String,
    page: String,
}

fn sign_in(edge: &Edge, attempt: usize) -> Signed {
    let login = RawLogin::new(&edge.addr.to_string(), &edge.ca(), "ssh.localhost");
    let started = login.start(false);
    assert_eq!(status_code(&started), 201, "{started}");
    // The link on the application's host moves to the login host.
    let link = login.link();
    let first = login.browser_get(
        "ssh.localhost",
        &link[link.find("/cdn-cgi").unwrap()..],
        None,
    );
    assert_eq!(status_code(&first), 302, "{first}");
    let to = header_of(&first, "location").expect("Location").to_owned();
    let public = "login.localhost".to_owned();
    let origin = to[..to.find("/cdn-cgi").unwrap()].to_owned();
    assert!(origin.starts_with("https://login.localhost:"), "{to}");
    let opened = login.browser_get(&public, &to[origin.len()..], None);
    assert_eq!(status_code(&opened), 302, "{opened}");
    let raw_cookie = header_of(&opened, "set-cookie").expect("a binder cookie");
    for attr in [
        "__Host-postern-",
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
    ] {
        assert!(
            raw_cookie.contains(attr),
            "cookie lacks {attr}: {raw_cookie}"
        );
    }
    let cookie = set_cookie(&opened).unwrap();
    let dev = header_of(&opened, "location")
        .expect("to the dev sign-in")
        .to_owned();
    let state = state_of(&dev).expect("state");
    let target = &dev[origin.len()..];
    let form = login.browser_get(&public, target, Some(&cookie));
    assert_eq!(status_code(&form), 200, "{form}");
    let sent = login.browser_post(
        &public,
        "/cdn-cgi/access/dev-login",
        &format!("state={state}&email={EMAIL}"),
        Some(&cookie),
        Some(&origin),
    );
    assert!(sent.contains("Enter your code"), "{sent}");
    let needle = format!("login code for {EMAIL}: ");
    let text = edge
        .child()
        .wait_for_stderr_count(&needle, attempt + 1, Duration::from_secs(10))
        .expect("the dev code on the edge's terminal");
    let code = text
        .rsplit(&needle)
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let page = login.browser_post(
        &public,
        "/cdn-cgi/access/dev-login",
        &format!("state={state}&code={code}"),
        Some(&cookie),
        Some(&origin),
    );
    assert!(page.contains("Confirm this login"), "{page}");
    Signed {
        login,
        public,
        origin,
        cookie,
        state,
        page,
    }
}

impl Signed {
    fn secret(&self) -> String {
        hidden_input(&self.page, "secret").expect("the page secret")
    }

    fn confirm(
        &self,
        secret: &str,
        cookie: Option<&str>,
        origin: Option<&str>,
        action: &str,
    ) -> String {
        self.post(secret, cookie, origin, action, &self.login.code())
    }

    /// A Confirm from the bound browser with the page's secret, typing `code`.
    fn confirm_code(&self, code: &str) -> String {
        self.post(
            &self.secret(),
            Some(&self.cookie),
            Some(&self.origin),
            "confirm",
            code,
        )
    }

    fn post(
        &self,
        secret: &str,
        cookie: Option<&str>,
        origin: Option<&str>,
        action: &str,
        code: &str,
    ) -> String {
        self.login.browser_post(
            &self.public,
            "/cdn-cgi/access/confirm",
            &format!(
                "state={}&secret={secret}&action={action}&code={code}",
                self.state
            ),
            cookie,
            origin,
        )
    }
}

#[test]
fn a_login_is_issued_only_on_a_confirmation_from_its_own_browser() {
    let dir = temp_dir("confirm-checks");
    let edge = Edge::start(dir.path());

    let s = sign_in(&edge, 0);
    // The page shows the code the CLI printed and where the login was started from.
    // It asks for the code the terminal printed, and does not show it: whoever has only the
    // page (someone sent a link) has nothing to type.
    assert!(!s.page.contains(&s.login.code()), "{}", s.page);
    assert!(
        s.page.contains("Type the code your terminal printed"),
        "{}",
        s.page
    );
    assert!(
        s.page.contains("started from <b>127.0.0.1</b>"),
        "{}",
        s.page
    );
    // Signed in, not confirmed: nothing for the CLI (no zero-click completion).
    assert_eq!(s.login.poll().0, 202);
    // A link or a redirect is a GET: it confirms nothing.
    let get = s.login.browser_get(
        &s.public,
        &format!(
            "/cdn-cgi/access/confirm?state={}&secret={}&action=confirm",
            s.state,
            s.secret()
        ),
        Some(&s.cookie),
    );
    assert_eq!(status_code(&get), 405, "{get}");
    assert_eq!(s.login.poll().0, 202);
    // The bound browser without the page's secret.
    let wrong = s.confirm(
        "not-the-secret",
        Some(&s.cookie),
        Some(&s.origin),
        "confirm",
    );
    assert_eq!(status_code(&wrong), 403, "{wrong}");
    assert_eq!(s.login.poll().0, 202);
    // The bound browser and the page's secret, but not the terminal's code: asked again.
    for typo in ["BCDF-GHJK", ""] {
        let again = s.confirm_code(typo);
        assert_eq!(status_code(&again), 403, "{again}");
        assert!(
            again.contains("not the code your terminal printed"),
            "{again}"
        );
        assert_eq!(s.login.poll().0, 202);
    }
    // The page's secret without the browser's cookie: the login ends.
    let unbound = s.confirm(&s.secret(), None, Some(&s.origin), "confirm");
    assert_eq!(status_code(&unbound), 403, "{unbound}");
    assert!(unbound.contains("another browser"), "{unbound}");
    let (status, refused) = s.login.poll();
    assert_eq!(status, 403, "{refused}");
    assert!(
        body_of(&refused).contains("browser other than"),
        "{refused}"
    );

    // Another site's form, even with the cookie and the secret: the login ends.
    let s = sign_in(&edge, 1);
    let cross = s.confirm(
        &s.secret(),
        Some(&s.cookie),
        Some("https://evil.example"),
        "confirm",
    );
    assert_eq!(status_code(&cross), 403, "{cross}");
    assert_eq!(s.login.poll().0, 403);

    // Three wrong codes end the login.
    let s = sign_in(&edge, 2);
    for _ in 0..2 {
        assert_eq!(status_code(&s.confirm_code("ZZZZ-ZZZZ")), 403);
    }
    let third = s.confirm_code("ZZZZ-ZZZZ");
    assert!(third.contains("Nothing was issued"), "{third}");
    let (status, refused) = s.login.poll();
    assert_eq!(status, 403, "{refused}");
    assert!(body_of(&refused).contains("did not match"), "{refused}");

    // Cancel: nothing issued, and the CLI learns why.
    let s = sign_in(&edge, 3);
    let cancel = s.confirm(&s.secret(), Some(&s.cookie), Some(&s.origin), "cancel");
    assert!(cancel.contains("Login cancelled"), "{cancel}");
    let (status, refused) = s.login.poll();
    assert_eq!(status, 403, "{refused}");
    assert!(body_of(&refused).contains("cancelled"), "{refused}");

    // The person types the code (as printed, or lower case without the dash) and confirms:
    // the CLI gets an app token for its application, once.
    let s = sign_in(&edge, 4);
    let ok = s.confirm_code(&s.login.code().to_lowercase().replace('-', ""));
    assert_eq!(status_code(&ok), 200, "{ok}");
    assert!(ok.contains("You can close this window"), "{ok}");
    assert!(
        header_of(&ok, "set-cookie").is_some_and(|c| c.contains("Max-Age=0")),
        "the binder cookie is cleared: {ok}"
    );
    let (status, sealed) = s.login.poll();
    assert_eq!(status, 200, "{sealed}");
    let again = s.confirm(&s.secret(), Some(&s.cookie), Some(&s.origin), "confirm");
    assert_eq!(status_code(&again), 400, "confirmed once: {again}");
    let token = String::from_utf8(s.login.open(&sealed)).unwrap();
    let claims = token.split('.').nth(1).unwrap();
    let claims = String::from_utf8(postern::proto::base64::decode_url(claims).unwrap()).unwrap();
    assert!(
        claims.contains(EMAIL) && claims.contains(r#""aud":["*.localhost"]"#),
        "{claims}"
    );
}

#[test]
fn a_sign_in_step_from_another_browser_ends_the_login() {
    let dir = temp_dir("confirm-unbound-dev");
    let edge = Edge::start(dir.path());
    let login = RawLogin::new(&edge.addr.to_string(), &edge.ca(), "ssh.localhost");
    assert_eq!(status_code(&login.start(false)), 201);
    let opened = login.browser_get(
        "login.localhost",
        &format!("/cdn-cgi/access/cli?id={}", login.opener.id),
        None,
    );
    assert_eq!(status_code(&opened), 302, "{opened}");
    let state = state_of(header_of(&opened, "location").unwrap()).unwrap();
    // Someone else's browser (no cookie) with the sign-in link.
    let other = login.browser_get(
        "login.localhost",
        &format!("/cdn-cgi/access/dev-login?state={state}"),
        None,
    );
    assert_eq!(status_code(&other), 403, "{other}");
    assert!(other.contains("not started in this browser"), "{other}");
    assert_eq!(login.poll().0, 403);
    // The link itself opens in one browser only.
    let twice = login.browser_get(
        "login.localhost",
        &format!("/cdn-cgi/access/cli?id={}", login.opener.id),
        None,
    );
    assert!(matches!(status_code(&twice), 400 | 409), "{twice}");
}
