//! The admin console (issue 16, item 4) in real Chromium against a real OpenID Connect provider,
//! with a live ssh session through the edge (real sshd and ssh, `postern access ssh`):
//!
//! - an admin (alice: group `ops`, domain example.com) signs in at the provider, sees the live
//!   session on the sessions page, ends it with its Kill button (ssh exits with "session ended
//!   by an administrator"), and sees the kill in the audit log page; the audit file names her;
//! - someone the `admins` policy does not name (erin) signs in and gets 403 and an audit line;
//! - the kill form POSTed without its CSRF token (raw HTTPS with the console's cookie) is
//!   refused and the session goes on; the same POST with the page's token ends it.
//!
//! With `POSTERN_UPDATE_SCREENSHOTS=1` the first test copies its screenshots of the console
//! into `docs/` (what the README shows).

use crate::support;

use std::path::Path;
use std::time::Duration;

use support::oidc::{run_login_js, ProviderOptions};
use support::sso::{body_of, header_of, hidden_input, raw_request, status_code, Sso};
use support::{postern, run_ok, temp_dir, wait_until, Child, Edge};

const HOST: &str = "ssh.localhost";

fn start(name: &str) -> Sso {
    support::require_all();
    Sso::start_extra(
        name,
        &ProviderOptions::default(),
        serde_json::json!({}),
        serde_json::json!({ "admins": [ {
            "name": "ops staff", "decision": "allow",
            "include": [ { "group": "ops" } ], "require": [ { "email_domain": "example.com" } ]
        } ] }),
    )
}

/// `https://login.localhost:PORT/cdn-cgi/access/admin`.
fn console_url(sso: &Sso) -> String {
    let port = sso.edge_addr.rsplit(':').next().unwrap();
    format!("https://login.localhost:{port}/cdn-cgi/access/admin")
}

/// alice signs in for ssh and opens a session that stays; the session and its id.
fn open_session(sso: &Sso) -> (Child, String) {
    let (ok, stderr) = sso.login("alice", HOST, "You can close this window");
    assert!(ok, "alice signs in for ssh: {stderr}");
    let mut cmd = sso.ssh_command("alice", HOST, "echo open-alice; exec sleep 120");
    cmd.env("BROWSER", "false");
    let ssh = Child::spawn("ssh-alice", cmd, sso.dir.path());
    wait_until(Duration::from_secs(30), "alice's ssh session open", || {
        ssh.stdout_text().contains("open-alice") || ssh.try_wait().is_some()
    });
    assert!(ssh.try_wait().is_none(), "{}", ssh.stderr_text());
    let out = run_ok(
        postern(&sso.dir.join("home"))
            .args([
                "edge",
                "sessions",
                "list",
                "--output",
                "json",
                "--origincert",
            ])
            .arg(sso.dir.join("cert.pem"))
            .args(["--edge", &sso.edge_addr, "--ca"])
            .arg(sso.ca()),
        "postern edge sessions list",
    );
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).expect("sessions as JSON");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["email"], "alice@example.com");
    (ssh, list[0]["id"].as_str().unwrap().to_owned())
}

fn audit(sso: &Sso) -> Vec<serde_json::Value> {
    std::fs::read_to_string(sso.state.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn browser(sso: &Sso, url: &str, user: &str, expect: &str, extra: &[&str]) -> String {
    run_login_js(url, user, expect, extra, sso.dir.path()).unwrap_or_else(|e| {
        panic!(
            "browser at {url} as {user}: {e}\nedge:\n{}",
            sso.edge.stderr_text()
        )
    })
}

#[test]
fn an_admin_signs_in_sees_the_live_ssh_session_kills_it_with_its_button_and_sees_the_audit_entry() {
    let sso = start("console-kill");
    let (ssh, id) = open_session(&sso);
    let base = console_url(&sso);
    let shots = sso.dir.join("console");
    let shots_arg = shots.display().to_string();
    let kill = format!("button.kill[value=\"{id}\"]");
    let killed_audit = format!("{base}/audit?event=session_kill");
    let alice_audit = format!("{base}/audit?identity=alice");
    let tokens = format!("{base}/tokens");
    let page = browser(
        &sso,
        &format!("{base}/sessions"),
        "alice",
        &id,
        &[
            "--click",
            &kill,
            "--click-expect",
            "ended: its client was told",
            "--then",
            &killed_audit,
            "--then-expect",
            &id,
            "--then",
            &alice_audit,
            "--then-expect",
            "session_kill",
            "--then",
            &base,
            "--then-expect",
            "Named tunnels",
            "--then",
            &tokens,
            "--then-expect",
            "Create a service token",
            "--shots",
            &shots_arg,
        ],
    );
    assert!(page.contains("alice@example.com"), "{page}");

    // ssh ends, saying why.
    let status = ssh
        .wait_exit(Duration::from_secs(10))
        .expect("the killed session ends");
    assert!(!status.success());
    assert!(
        ssh.stderr_text()
            .contains("session ended by an administrator"),
        "{}",
        ssh.stderr_text()
    );
    // The audit log names the admin, the session, and how it ended.
    wait_until(Duration::from_secs(10), "the session_end line", || {
        audit(&sso)
            .iter()
            .any(|l| l["event"] == "session_end" && l["session"] == id.as_str())
    });
    let lines = audit(&sso);
    assert!(lines.iter().any(|l| l["event"] == "console"
        && l["action"] == "sign_in"
        && l["decision"] == "allow"
        && l["admin"] == "alice@example.com"));
    let kill_line = lines
        .iter()
        .find(|l| l["event"] == "session_kill" && l["via"] == "console")
        .expect("a session_kill line from the console");
    assert_eq!(kill_line["admin"], "alice@example.com");
    assert_eq!(kill_line["killed"][0], id.as_str());
    let end = lines
        .iter()
        .find(|l| l["event"] == "session_end" && l["session"] == id.as_str())
        .unwrap();
    assert_eq!(end["reason"], "session ended by an administrator");

    // What the pages looked like (docs/ holds copies).
    for n in 1..=6 {
        let shot = shots.with_file_name(format!("console-{n}.png"));
        assert!(shot.exists(), "screenshot {}", shot.display());
    }
    if std::env::var_os("POSTERN_UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        for (n, name) in [
            (1, "console-sessions.png"),
            (4, "console-audit.png"),
            (5, "console-overview.png"),
            (6, "console-tokens.png"),
        ] {
            std::fs::copy(
                shots.with_file_name(format!("console-{n}.png")),
                docs.join(name),
            )
            .unwrap();
        }
    }
}

#[test]
fn someone_the_admins_policy_does_not_name_gets_403_and_an_audit_line() {
    let sso = start("console-403");
    let base = console_url(&sso);
    // erin is in no group; the console is no use to her, whatever she signs in as.
    let page = browser(&sso, &base, "erin", "Not an administrator", &[]);
    assert!(page.contains("erin@other.org"), "{page}");
    assert!(!page.contains("Sessions"), "{page}");
    wait_until(Duration::from_secs(5), "the audit line", || {
        audit(&sso).iter().any(|l| {
            l["event"] == "console"
                && l["action"] == "sign_in"
                && l["decision"] == "deny"
                && l["admin"] == "erin@other.org"
        })
    });
    // No console session came of it: without one, a page sends the browser to sign in, and
    // a form is refused.
    let ca = sso.ca();
    let r = raw_request(
        &sso.edge_addr,
        &ca,
        "login.localhost",
        "GET",
        "/cdn-cgi/access/admin/sessions",
        &[],
        None,
    );
    assert_eq!(status_code(&r), 302, "{r}");
    assert!(
        header_of(&r, "location").is_some_and(|l| l.starts_with("/cdn-cgi/access/admin/sign-in")),
        "{r}"
    );
    let r = raw_request(
        &sso.edge_addr,
        &ca,
        "login.localhost",
        "POST",
        "/cdn-cgi/access/admin/sessions/kill",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"id=x&csrf=y"),
    );
    assert_eq!(status_code(&r), 403, "{r}");
}

#[test]
fn the_kill_form_posted_without_its_csrf_token_is_refused_and_the_session_goes_on() {
    let sso = start("console-csrf");
    let (ssh, id) = open_session(&sso);
    let base = console_url(&sso);
    let out = browser(
        &sso,
        &format!("{base}/sessions"),
        "alice",
        &id,
        &["--print-cookies"],
    );
    let cookie = out
        .lines()
        .filter_map(|l| l.strip_prefix("COOKIE: "))
        .find(|c| c.starts_with("__Host-postern-console="))
        .unwrap_or_else(|| panic!("the console cookie: {out}"))
        .to_owned();
    let ca = sso.ca();
    let post = |form: &str| {
        raw_request(
            &sso.edge_addr,
            &ca,
            "login.localhost",
            "POST",
            "/cdn-cgi/access/admin/sessions/kill",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", &cookie),
            ],
            Some(form.as_bytes()),
        )
    };
    for form in [format!("id={id}"), format!("id={id}&csrf=not-the-token")] {
        let r = post(&form);
        assert_eq!(status_code(&r), 403, "{form}: {r}");
        assert!(body_of(&r).contains("CSRF token"), "{r}");
    }
    assert!(ssh.try_wait().is_none(), "{}", ssh.stderr_text());
    wait_until(Duration::from_secs(5), "two refused-form lines", || {
        audit(&sso)
            .iter()
            .filter(|l| {
                l["event"] == "console"
                    && l["action"] == "post"
                    && l["decision"] == "deny"
                    && l["admin"] == "alice@example.com"
            })
            .count()
            >= 2
    });

    // The same request with the token of the page the console served does end it: the token
    // was the only thing missing.
    let page = raw_request(
        &sso.edge_addr,
        &ca,
        "login.localhost",
        "GET",
        "/cdn-cgi/access/admin/sessions",
        &[("Cookie", &cookie)],
        None,
    );
    assert_eq!(status_code(&page), 200, "{page}");
    let csrf = hidden_input(body_of(&page), "csrf").expect("the page's CSRF token");
    let r = post(&format!("id={id}&csrf={csrf}"));
    assert_eq!(status_code(&r), 200, "{r}");
    ssh.wait_exit(Duration::from_secs(10))
        .expect("the session ends once the form carries its token");
}

#[test]
fn a_service_token_created_in_the_console_shows_its_secret_once_and_can_be_revoked_there() {
    let sso = start("console-tok");
    let base = console_url(&sso);
    let out = browser(
        &sso,
        &format!("{base}/tokens"),
        "alice",
        "Create a service token",
        &["--print-cookies"],
    );
    let cookie = out
        .lines()
        .filter_map(|l| l.strip_prefix("COOKIE: "))
        .find(|c| c.starts_with("__Host-postern-console="))
        .unwrap_or_else(|| panic!("the console cookie: {out}"))
        .to_owned();
    let ca = sso.ca();
    let request = |method: &str, path: &str, form: Option<&str>| {
        raw_request(
            &sso.edge_addr,
            &ca,
            "login.localhost",
            method,
            path,
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", &cookie),
            ],
            form.map(str::as_bytes),
        )
    };
    let page = request("GET", "/cdn-cgi/access/admin/tokens", None);
    let csrf = hidden_input(body_of(&page), "csrf").expect("the page's CSRF token");

    let created = request(
        "POST",
        "/cdn-cgi/access/admin/tokens/create",
        Some(&format!("csrf={csrf}&name=ci-runner")),
    );
    assert_eq!(status_code(&created), 201, "{created}");
    let secret_of = |page: &str, label: &str| -> String {
        let at = page
            .find(label)
            .unwrap_or_else(|| panic!("{label}: {page}"));
        let rest = &page[at..];
        let start = rest.find("<span class=\"secret\">").unwrap() + 21;
        rest[start..start + rest[start..].find("</span>").unwrap()].to_owned()
    };
    let body = body_of(&created);
    let client_id = secret_of(body, "CF-Access-Client-Id");
    let secret = secret_of(body, "CF-Access-Client-Secret");
    assert!(client_id.ends_with(".access"), "{client_id}");
    assert!(secret.len() >= 32, "{secret}");
    // Stored as its hash only; shown that once.
    let stored = std::fs::read_to_string(sso.state.join("service-tokens.json")).unwrap();
    assert!(stored.contains(&client_id) && !stored.contains(&secret));
    let listed = request("GET", "/cdn-cgi/access/admin/tokens", None);
    assert!(body_of(&listed).contains("ci-runner"), "{listed}");
    assert!(!body_of(&listed).contains(&secret));
    assert!(
        !sso.edge.stderr_text().contains(&secret),
        "the secret is never logged"
    );
    // A second token of the same name is refused, saying why.
    let again = request(
        "POST",
        "/cdn-cgi/access/admin/tokens/create",
        Some(&format!("csrf={csrf}&name=ci-runner")),
    );
    assert_eq!(status_code(&again), 400, "{again}");
    assert!(body_of(&again).contains("already exists"), "{again}");

    let revoked = request(
        "POST",
        "/cdn-cgi/access/admin/tokens/revoke",
        Some(&format!("csrf={csrf}&client_id={client_id}")),
    );
    assert_eq!(status_code(&revoked), 200, "{revoked}");
    assert!(body_of(&revoked).contains("revoked"), "{revoked}");
    let revocations = std::fs::read_to_string(sso.state.join("revocations.json")).unwrap();
    assert!(revocations.contains(&client_id), "{revocations}");
    // The audit writer appends within a second.
    for action in ["create", "revoke"] {
        wait_until(
            Duration::from_secs(5),
            &format!("the {action} line"),
            || {
                audit(&sso).iter().any(|l| {
                    l["event"] == "service_token"
                        && l["action"] == action
                        && l["decision"] == "allow"
                        && l["admin"] == "alice@example.com"
                        && l["name"] == "ci-runner"
                })
            },
        );
    }
}

#[test]
fn the_console_is_off_on_a_dev_edge() {
    // `--dev` has no `admins`: its sign-in believes any email, so there is no console at all.
    let dir = temp_dir("console-dev");
    let edge = Edge::start(dir.path());
    let addr = edge.addr.to_string();
    for (method, path) in [
        ("GET", "/cdn-cgi/access/admin"),
        ("GET", "/cdn-cgi/access/admin/sign-in"),
        ("POST", "/cdn-cgi/access/admin/sessions/kill"),
    ] {
        let r = raw_request(
            &addr,
            &edge.ca(),
            "login.localhost",
            method,
            path,
            &[],
            Some(b""),
        );
        assert_eq!(status_code(&r), 404, "{method} {path}: {r}");
    }
}
