//! SSO end to end, with real parts only: a real OpenID Connect provider (npm `oidc-provider`),
//! real headless Chromium driven by playwright-core through the real login pages, the edge
//! from a JSON config, a tunnel in front of a real sshd, and real ssh.
//!
//! - `postern access login` prints the URL, the browser signs in at the provider, the CLI
//!   receives the token, and `ssh -o ProxyCommand='postern access ssh …'` runs a command;
//! - policies: an email-domain rule and a group rule admit; a deny rule beats a later allow;
//!   a user outside every policy is refused with a clear message;
//! - tokens: another application's token, another key's token, a tampered payload,
//!   `alg: none` and an expired token are refused; a transfer id cannot be replayed;
//! - an expired cached token makes `access ssh` log in again by itself.

use crate::support;

use std::path::Path;
use std::time::Duration;

use support::oidc::DEFAULT_EXPECT;
use support::sso::{body_of, raw_get, raw_request, status_of, OutputWithDeadline as _, Sso};
use support::{postern, Child, Tunnel};

#[test]
fn browser_login_then_ssh_and_policies_decide() {
    let sso = Sso::start("sso-pol");

    // Email-domain rule: alice@example.com signs in in the browser, then ssh just works.
    let (ok, stderr) = sso.login("alice", "ssh.localhost", DEFAULT_EXPECT);
    assert!(ok, "alice's login failed: {stderr}");
    // The terminal says whose token arrived.
    assert!(
        stderr.contains("Signed in as alice@example.com for ssh.localhost."),
        "{stderr}"
    );
    let token_file = sso.home("alice").join(".postern/tokens/ssh.localhost.jwt");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "token file must be 0600");
    let out = sso.ssh("alice", "ssh.localhost", "echo hello-from-sso");
    assert!(
        out.status.success(),
        "ssh as alice: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello-from-sso"
    );

    // Group rule: dave@partner.org is in ops.
    let (ok, stderr) = sso.login("dave", "ssh.localhost", DEFAULT_EXPECT);
    assert!(ok, "dave (group ops) must be admitted: {stderr}");

    // A deny rule beats a later allow: carol@example.com is a contractor.
    let (ok, stderr) = sso.login("carol", "ssh.localhost", "Access denied");
    assert!(!ok, "carol must be refused");
    // The browser names the account; the terminal that started the login does not learn
    // who opened its link (it could be someone else's).
    assert!(
        stderr.contains("access denied") && !stderr.contains("carol@example.com"),
        "{stderr}"
    );

    // Outside every policy.
    let (ok, stderr) = sso.login("erin", "ssh.localhost", "Access denied");
    assert!(!ok, "erin must be refused");
    assert!(stderr.contains("not allowed"), "{stderr}");

    let audit = support::audit_when(
        &sso.state.join("audit.log"),
        Duration::from_secs(10),
        "the policy's denial in the audit log",
        |a| a.contains("\"policy\":\"no contractors\""),
    );
    assert!(
        !audit.contains(&sso.provider.client_secret),
        "client secret in the audit log"
    );
    assert!(!sso.edge.stderr_text().contains(&sso.provider.client_secret));
}

#[test]
fn forged_foreign_tampered_none_and_expired_tokens_are_refused() {
    let sso = Sso::start("sso-tok");
    let (ok, stderr) = sso.login("alice", "ssh.localhost", DEFAULT_EXPECT);
    assert!(ok, "{stderr}");
    let good = sso.token("alice", "ssh.localhost");
    assert!(status_of(&sso.carrier_status("ssh.localhost", &good)).contains(" 101 "));

    // A token for another application.
    let (ok, stderr) = sso.login("alice", "other.localhost", DEFAULT_EXPECT);
    assert!(ok, "{stderr}");
    let other = sso.token("alice", "other.localhost");
    let r = sso.carrier_status("ssh.localhost", &other);
    assert!(status_of(&r).contains(" 401 "), "{r}");

    // Tampered payload: alice becomes mallory.
    let parts: Vec<&str> = good.split('.').collect();
    let payload = postern::proto::base64::decode_url(parts[1]).unwrap();
    let forged = String::from_utf8(payload)
        .unwrap()
        .replace("alice@example.com", "mallory@example.com");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        postern::proto::base64::encode_url(forged.as_bytes()),
        parts[2]
    );
    assert!(status_of(&sso.carrier_status("ssh.localhost", &tampered)).contains(" 401 "));

    // alg: none, with and without a signature part.
    let none = postern::proto::base64::encode_url(br#"{"alg":"none","typ":"JWT"}"#);
    for t in [
        format!("{none}.{}.", parts[1]),
        format!("{none}.{}", parts[1]),
    ] {
        assert!(status_of(&sso.carrier_status("ssh.localhost", &t)).contains(" 401 "));
    }

    // Signed by another key (same claims).
    let claims: serde_json::Value =
        serde_json::from_slice(&postern::proto::base64::decode_url(parts[1]).unwrap()).unwrap();
    let (stranger, _) = postern::proto::jwt::SigningKey::generate();
    let foreign = stranger.sign(&claims);
    assert!(status_of(&sso.carrier_status("ssh.localhost", &foreign)).contains(" 401 "));

    // Expired, though signed by the edge's own key.
    let ring = postern::proto::jwt::KeyRing::from_json(
        &std::fs::read(sso.state.join("signing-keys.json")).unwrap(),
    )
    .unwrap();
    let mut old = claims.clone();
    old["exp"] = serde_json::json!(1_000_000);
    old["iat"] = serde_json::json!(999_000);
    old["nbf"] = serde_json::json!(999_000);
    let r = sso.carrier_status("ssh.localhost", &ring.sign(&old));
    assert!(
        status_of(&r).contains(" 401 ") && r.contains("expired"),
        "{r}"
    );

    // A login link opens in one browser only: a second visit with the same id is refused.
    let key = postern::proto::token_transfer::Opener::new();
    let start = serde_json::json!({ "id": key.id, "key": key.public, "app": "ssh.localhost" });
    let started = raw_request(
        &sso.edge_addr,
        &sso.ca(),
        "ssh.localhost",
        "POST",
        "/cdn-cgi/access/transfer",
        &[("Content-Type", "application/json")],
        Some(start.to_string().as_bytes()),
    );
    assert!(status_of(&started).contains(" 201 "), "{started}");
    assert!(
        body_of(&started).contains(&postern::proto::token_transfer::confirmation_code(
            &key.id,
            &key.public
        )),
        "{started}"
    );
    // The same id cannot be started twice.
    let again = raw_request(
        &sso.edge_addr,
        &sso.ca(),
        "ssh.localhost",
        "POST",
        "/cdn-cgi/access/transfer",
        &[("Content-Type", "application/json")],
        Some(start.to_string().as_bytes()),
    );
    assert!(status_of(&again).contains(" 409 "), "{again}");
    let target = format!("/cdn-cgi/access/cli?id={}", key.id);
    let open = |host: &str| raw_get(&sso.edge_addr, &sso.ca(), host, &target, &[], false);
    // On the application's host the link moves to the login host first...
    let first = open("ssh.localhost");
    assert!(status_of(&first).contains(" 302 "), "{first}");
    assert!(first.contains("https://login.localhost:"), "{first}");
    // ...where the first visit binds the browser and goes on to the provider, and a second is
    // refused.
    let bound = open("login.localhost");
    assert!(status_of(&bound).contains(" 302 "), "{bound}");
    assert!(bound.contains("Set-Cookie: __Host-postern-"), "{bound}");
    let again = open("login.localhost");
    assert!(status_of(&again).contains(" 409 "), "{again}");
    // Two browsers had the link: the login is cancelled, and its CLI is told why.
    let poll = raw_get(
        &sso.edge_addr,
        &sso.ca(),
        "ssh.localhost",
        &format!("/cdn-cgi/access/transfer?id={}", key.id),
        &[],
        false,
    );
    assert!(
        status_of(&poll).contains(" 403 ") && body_of(&poll).contains("opened in two browsers"),
        "{poll}"
    );
    // Polling an unknown transfer says so.
    let unknown = raw_get(
        &sso.edge_addr,
        &sso.ca(),
        "ssh.localhost",
        "/cdn-cgi/access/transfer?id=nosuchtransferid0000",
        &[],
        false,
    );
    assert!(status_of(&unknown).contains(" 404 "), "{unknown}");

    // A service token gets in only where a policy names it: ssh.localhost names none, while
    // other.localhost admits "everyone" (signed-in users), which a service token is not.
    let token = support::service_token(&sso.state, "ci");
    let creds = [
        ("CF-Access-Client-Id", token.id.as_str()),
        ("CF-Access-Client-Secret", token.secret.as_str()),
    ];
    for host in ["ssh.localhost", "other.localhost"] {
        let r = raw_get(&sso.edge_addr, &sso.ca(), host, "/", &creds, true);
        assert!(
            status_of(&r).contains(" 403 ") && r.contains("service token refused"),
            "{host}: {r}"
        );
    }

    // JWKS is published and holds the key the edge signs with.
    let jwks = raw_get(
        &sso.edge_addr,
        &sso.ca(),
        "ssh.localhost",
        "/cdn-cgi/access/certs",
        &[],
        false,
    );
    assert!(jwks.contains(ring.active().kid()), "{jwks}");
}

#[test]
fn an_expired_cached_token_makes_ssh_log_in_again() {
    let sso = Sso::start("sso-exp");
    let (ok, stderr) = sso.login("alice", "short.localhost", DEFAULT_EXPECT);
    assert!(ok, "{stderr}");
    // The client treats a token within 30 s of its end as stale already; read the cache file.
    let first = std::fs::read_to_string(
        sso.home("alice")
            .join(".postern/tokens/short.localhost.jwt"),
    )
    .expect("cached token");
    let first = first.trim();
    // The session lasts 3 s (+5 s leeway); wait for it to end (a condition, polled).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sso
        .carrier_status("short.localhost", first)
        .contains(" 101 ")
    {
        assert!(std::time::Instant::now() < deadline, "token never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Without a zone session (expired, killed, or from an older edge; with one, the token is
    // renewed without a browser: tests/zone_login.rs), ssh's ProxyCommand finds the cached
    // token expired and logs in again through the browser.
    std::fs::remove_file(sso.home("alice").join(".postern/tokens/localhost.zone"))
        .expect("the login cached a zone session");
    let out = sso.ssh("alice", "short.localhost", "echo logged-in-again");
    assert!(
        out.status.success(),
        "ssh after expiry: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "logged-in-again"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/cdn-cgi/access/cli?"),
        "the login URL must be printed: {stderr}"
    );
}

#[test]
fn tunnel_login_by_browser_gives_a_certificate_for_the_chosen_zone_only() {
    let sso = Sso::start("sso-tl");
    let run_verb = |verb: &[&str], user: &str, out: &Path, expect: &str, zone: Option<&str>| {
        let mut cmd = postern(&sso.home(user));
        cmd.args(verb)
            .arg("--edge")
            .arg(format!(
                "https://login.{}",
                sso.edge_addr.replace("127.0.0.1", "localhost")
            ))
            .arg("--ca")
            .arg(sso.ca())
            .arg("--origincert")
            .arg(out);
        sso.login_with(cmd, &format!("tunnel-login-{user}"), user, expect, zone)
    };
    let run = |user: &str, out: &Path, expect: &str, zone: Option<&str>| {
        run_verb(&["tunnel", "login"], user, out, expect, zone)
    };

    // alice is a tunnel admin and picks example.test on the zone page.
    let cert = sso.dir.join("alice-cert.pem");
    let (ok, stderr) = run("alice", &cert, DEFAULT_EXPECT, Some("example.test"));
    assert!(ok, "tunnel login failed: {stderr}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cert).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let edge = support::EdgeRef {
        addr: sso.edge_addr.parse().unwrap(),
        ca: sso.ca(),
    };
    // It registers a hostname in the chosen zone...
    let _web = Tunnel::start_with(
        sso.dir.path(),
        "tunnel-web",
        "web.example.test",
        &sso.sshd.url(),
        &cert,
        &edge,
    );
    // ...and only there.
    let mut cmd = postern(&sso.home("alice"));
    cmd.args(["tunnel", "--hostname", "intruder.localhost", "--url"])
        .arg(sso.sshd.url())
        .arg("--origincert")
        .arg(&cert)
        .arg("--edge")
        .arg(&sso.edge_addr)
        .arg("--ca")
        .arg(sso.ca());
    let intruder = Child::spawn("tunnel-intruder", cmd, sso.dir.path());
    let status = intruder
        .wait_exit(Duration::from_secs(20))
        .expect("must exit");
    assert_eq!(status.code(), Some(1));
    assert!(
        intruder.stderr_text().contains("does not cover"),
        "{}",
        intruder.stderr_text()
    );

    // cloudflared's top-level `login` is `tunnel login`: the same certificate, by the same
    // browser sign-in, for the chosen zone only.
    let top = sso.dir.join("alice-login.pem");
    let (ok, stderr) = run_verb(
        &["login"],
        "alice",
        &top,
        DEFAULT_EXPECT,
        Some("example.test"),
    );
    assert!(ok, "postern login failed: {stderr}");
    assert!(
        stderr.contains("Wrote an origin certificate for zone example.test"),
        "{stderr}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&top).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // erin is not a tunnel admin.
    let (ok, stderr) = run(
        "erin",
        &sso.dir.join("erin-cert.pem"),
        "Access denied",
        None,
    );
    assert!(!ok);
    assert!(
        stderr.contains("may not create origin certificates"),
        "{stderr}"
    );
    assert!(!sso.dir.join("erin-cert.pem").exists());
}

#[test]
fn parallel_proxy_commands_share_one_browser_login() {
    let sso = Sso::start("sso-par");
    // Three ssh sessions start at once with no token: one of them logs in through the browser,
    // the others wait on the lock and use the token it caches.
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let mut cmd = sso.ssh_command("alice", "ssh.localhost", &format!("echo parallel-{i}"));
            std::thread::spawn(move || cmd.output_with_deadline())
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap();
        assert!(
            out.status.success(),
            "ssh {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("parallel-{i}")
        );
    }
    let audit = support::audit_when(
        &sso.state.join("audit.log"),
        Duration::from_secs(10),
        "the login in the audit log",
        |a| a.contains("\"event\":\"login\""),
    );
    let logins = audit
        .lines()
        .filter(|l| l.contains("\"event\":\"login\""))
        .count();
    assert_eq!(logins, 1, "one browser login for three sessions:\n{audit}");
}
