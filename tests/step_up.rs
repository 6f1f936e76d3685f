//! Step-up rules and session bounds (issue 16), with real parts: a real OpenID Connect
//! provider, real headless Chromium, the edge, a tunnel in front of a real sshd, real ssh.
//!
//! - `max_age` on an application makes the provider ask for the password again when its own
//!   session is older, where an application without it gets through on that session; the
//!   app token then carries the fresh `auth_time`;
//! - a policy that requires `{"amr": "mfa"}` admits a sign-in the provider reports as
//!   multi-factor (and ssh works with its token: the app token carries `amr`), and refuses one
//!   with a password only, saying a stronger sign-in is needed;
//! - `max_session_duration` ends a live ssh session, with the reason on the client's terminal
//!   and in the audit log.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::oidc::{run_login_js, ProviderOptions, DEFAULT_EXPECT};
use support::sso::{login_prompt, OutputWithDeadline as _, Sso};
use support::{postern, Child};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The applications of [`Sso`] (which its tunnels need), with `ssh` for ssh.localhost's.
fn applications(ssh: serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "applications": [
        ssh,
        { "hostname": "short.localhost", "session_duration": "3s", "policies": [
            { "decision": "allow", "include": [ { "email": "alice@example.com" } ] } ] },
        { "hostname": "other.localhost", "policies": [
            { "decision": "allow", "include": [ { "everyone": true } ] } ] },
        { "hostname": "web.example.test", "policies": [
            { "decision": "allow", "include": [ { "everyone": true } ] } ] }
    ] })
}

/// `postern access login host` in `home`'s name, signed in as `user` by Chromium with the
/// browser profile `profile` (kept between calls: the same person's browser). Returns the
/// CLI's success, its stderr and whether the provider showed its login form.
fn login_in_browser(
    sso: &Sso,
    home: &str,
    user: &str,
    host: &str,
    profile: &Path,
    expect: &str,
) -> (bool, String, bool) {
    let mut cmd = postern(&sso.home(home));
    cmd.args(["access", "login", host, "--edge", &sso.edge_addr, "--ca"])
        .arg(sso.ca())
        .env("BROWSER", "true");
    let cli = Child::spawn(&format!("login-{home}"), cmd, sso.dir.path());
    let (url, code) = login_prompt(&cli);
    let profile = profile.display().to_string();
    let page = run_login_js(
        &url,
        user,
        expect,
        &["--code", &code, "--profile", &profile],
        sso.dir.path(),
    )
    .unwrap_or_else(|e| panic!("{e}\nedge:\n{}", sso.edge.stderr_text()));
    let form = page.contains("PROVIDER-LOGIN 1: form");
    assert!(
        form || page.contains("PROVIDER-LOGIN 1: session"),
        "login.mjs says whether the provider asked: {page}"
    );
    let status = cli
        .wait_exit(Duration::from_secs(30))
        .expect("the login command must end after the browser login");
    (status.success(), cli.stderr_text(), form)
}

/// The claims of the app token `home` holds for `host`.
fn token_claims(sso: &Sso, home: &str, host: &str) -> serde_json::Value {
    let token = sso.token(home, host);
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&postern::proto::base64::decode_url(payload).unwrap()).unwrap()
}

#[test]
fn max_age_makes_the_provider_ask_again_where_its_session_would_do() {
    let max_age = 2;
    let sso = Sso::start_extra(
        "step-age",
        &ProviderOptions::default(),
        serde_json::json!({}),
        applications(serde_json::json!(
            { "hostname": "ssh.localhost", "max_age": format!("{max_age}s"), "policies": [
                { "decision": "allow", "include": [ { "email_domain": "example.com" } ] } ] }
        )),
    );
    let profile = sso.dir.join("alice-browser");

    // The first login signs in at the provider; the second, for an application without
    // max_age, gets through on the provider's session: no form.
    let (ok, err, form) = login_in_browser(
        &sso,
        "a1",
        "alice",
        "other.localhost",
        &profile,
        DEFAULT_EXPECT,
    );
    assert!(ok && form, "first login asks for the password: {err}");
    let signed_in = unix_now();
    let (ok, err, form) = login_in_browser(
        &sso,
        "a2",
        "alice",
        "other.localhost",
        &profile,
        DEFAULT_EXPECT,
    );
    assert!(ok, "{err}");
    assert!(
        !form,
        "without max_age the provider's session does (else this test proves nothing)"
    );

    // Once the provider's sign-in is older than max_age, the application with max_age has
    // the provider ask again, in that same browser.
    support::wait_until(
        Duration::from_secs(max_age + 5),
        "the provider's sign-in to be older than max_age",
        || unix_now() > signed_in + max_age,
    );
    let before = unix_now();
    let (ok, err, form) = login_in_browser(
        &sso,
        "alice",
        "alice",
        "ssh.localhost",
        &profile,
        DEFAULT_EXPECT,
    );
    assert!(ok, "{err}\nedge:\n{}", sso.edge.stderr_text());
    assert!(
        form,
        "max_age must make the provider show its login form again\nprovider:\n{}",
        sso.provider.stderr_text()
    );
    // The token says when that fresh sign-in was, and it opens ssh.
    let claims = token_claims(&sso, "alice", "ssh.localhost");
    let auth_time = claims["auth_time"]
        .as_u64()
        .expect("auth_time in the token");
    assert!(
        auth_time + 1 >= before,
        "auth_time {auth_time} is the fresh sign-in (login began at {before})"
    );
    let out = sso.ssh("alice", "ssh.localhost", "echo fresh-enough");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "fresh-enough");
}

#[test]
fn a_policy_that_requires_mfa_admits_only_multi_factor_sign_ins() {
    let sso = Sso::start_extra(
        "step-mfa",
        &ProviderOptions {
            amr: &[("alice", &["pwd", "mfa"]), ("dave", &["pwd"])],
            ..ProviderOptions::default()
        },
        serde_json::json!({}),
        applications(serde_json::json!(
            { "hostname": "ssh.localhost", "policies": [
                { "name": "ops with mfa", "decision": "allow", "include": [ { "group": "ops" } ],
                  "require": [ { "amr": "mfa" } ] } ] }
        )),
    );

    // alice's provider reports a second factor: in, and her token carries it to each
    // connection's decision.
    let (ok, err) = sso.login("alice", "ssh.localhost", DEFAULT_EXPECT);
    assert!(ok, "alice signed in with mfa: {err}");
    let claims = token_claims(&sso, "alice", "ssh.localhost");
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "mfa"]), "{claims}");
    let out = sso.ssh("alice", "ssh.localhost", "echo with-mfa");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "with-mfa");

    // dave is in ops too, but signed in with a password only: refused, told why.
    let (ok, err) = sso.login("dave", "ssh.localhost", "Access denied");
    assert!(!ok, "dave must be refused without a second factor");
    assert!(
        err.contains("stronger sign-in"),
        "the terminal says why: {err}"
    );
    let audit = support::audit_when(
        &sso.state.join("audit.log"),
        Duration::from_secs(10),
        "dave's step-up refusal in the audit log",
        |a| a.contains("\"reason\":\"step-up\""),
    );
    let line = audit
        .lines()
        .find(|l| l.contains("\"reason\":\"step-up\""))
        .unwrap();
    assert!(line.contains("dave@partner.org"), "{line}");
    assert!(line.contains("\"amr\":[\"pwd\"]"), "{line}");
}

#[test]
fn max_session_duration_ends_a_live_ssh_session() {
    let sso = Sso::start_extra(
        "step-max-session",
        &ProviderOptions::default(),
        serde_json::json!({}),
        applications(serde_json::json!(
            { "hostname": "ssh.localhost", "max_session_duration": "3s", "policies": [
                { "decision": "allow", "include": [ { "email_domain": "example.com" } ] } ] }
        )),
    );
    let (ok, err) = sso.login("alice", "ssh.localhost", DEFAULT_EXPECT);
    assert!(ok, "{err}");
    let started = Instant::now();
    let out = sso
        .ssh_command(
            "alice",
            "ssh.localhost",
            "echo started; sleep 60; echo outlived",
        )
        .output_with_deadline();
    let lasted = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("started"),
        "the session ran: {stdout} {stderr}"
    );
    assert!(!stdout.contains("outlived"), "{stdout}");
    assert!(!out.status.success());
    assert!(
        lasted < Duration::from_secs(30),
        "the session must end near its 3 s bound, lasted {lasted:?}"
    );
    assert!(
        stderr.contains("max_session_duration"),
        "ssh's terminal says why: {stderr}"
    );
    let audit = support::audit_when(
        &sso.state.join("audit.log"),
        Duration::from_secs(10),
        "the session's end line",
        |a| a.contains("\"event\":\"session_end\"") && a.contains("max_session_duration"),
    );
    assert!(audit.contains("alice@example.com"));
}
