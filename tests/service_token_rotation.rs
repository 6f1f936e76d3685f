//! Service-token rotation and expiry (issue 16, item 5), against a running dev edge with real
//! sshd and ssh: `service-token rotate NAME --overlap D` gives a new secret while the old one
//! keeps working for the overlap, then only the new one works; `create --expires D` makes a
//! token the edge refuses from then on, saying so to the holder of the secret.

use crate::support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{
    postern, proxy_command, run_ok, run_with_deadline, service_token, wait_until, Chain,
    ServiceToken, SSH_DEADLINE,
};

/// `ssh HOST echo MARKER` through the chain's edge with `token`: (worked, ssh's stderr).
fn ssh_with(chain: &Chain, token: &ServiceToken, marker: &str) -> (bool, String) {
    let proxy = proxy_command(&chain.edge.addr, &chain.edge.ca(), token);
    let mut cmd = chain.sshd.ssh_command(&chain.hostname, &proxy);
    cmd.env("HOME", chain.dir.join("home"))
        .arg(format!("echo {marker}"))
        .stdin(Stdio::null());
    let out = run_with_deadline(&mut cmd, SSH_DEADLINE, "ssh through postern");
    let worked = out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == marker;
    (worked, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn token_cli(chain: &Chain, args: &[&str]) -> String {
    run_ok(
        postern(&chain.dir.join("home"))
            .args(["edge", "service-token"])
            .args(args)
            .arg("--state")
            .arg(&chain.edge.state),
        &format!("service-token {}", args.join(" ")),
    )
}

fn parse(out: &str) -> ServiceToken {
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    ServiceToken {
        id: v["client_id"].as_str().unwrap().to_owned(),
        secret: v["client_secret"].as_str().unwrap().to_owned(),
    }
}

#[test]
fn a_rotated_token_takes_both_secrets_for_the_overlap_then_only_the_new_one() {
    let chain = Chain::start("token-rotate", "rotate.localhost");
    let old = service_token(&chain.edge.state, "ci-runner");
    assert!(ssh_with(&chain, &old, "before").0);

    let new = parse(&token_cli(
        &chain,
        &["rotate", "ci-runner", "--overlap", "6s"],
    ));
    let rotated = Instant::now();
    assert_eq!(new.id, old.id, "a rotation keeps the client id");
    assert_ne!(new.secret, old.secret);
    // The edge reads the store's change within a second or two.
    wait_until(Duration::from_secs(4), "the new secret to work", || {
        ssh_with(&chain, &new, "new").0
    });
    if rotated.elapsed() < Duration::from_secs(4) {
        assert!(
            ssh_with(&chain, &old, "old-in-overlap").0,
            "the old secret works during the overlap"
        );
    }
    wait_until(
        Duration::from_secs(12),
        "the old secret to be refused",
        || !ssh_with(&chain, &old, "old-after").0,
    );
    // The overlap ends on a whole unix second: 6 s after the command's second began.
    assert!(rotated.elapsed() >= Duration::from_secs(5));
    let (worked, stderr) = ssh_with(&chain, &old, "old-after");
    assert!(!worked);
    assert!(stderr.contains("wrong secret"), "{stderr}");
    assert!(ssh_with(&chain, &new, "new-after").0);

    // Rotating a token that does not exist names it.
    let out = postern(&chain.dir.join("home"))
        .args(["edge", "service-token", "rotate", "nobody", "--state"])
        .arg(&chain.edge.state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service token named \"nobody\""));
}

#[test]
fn a_token_created_with_an_expiry_is_refused_after_it_saying_expired() {
    let chain = Chain::start("token-expiry", "expiry.localhost");
    let token = parse(&token_cli(
        &chain,
        &["create", "short-lived", "--expires", "4s"],
    ));
    let created = Instant::now();
    wait_until(Duration::from_secs(4), "the token to work", || {
        ssh_with(&chain, &token, "fresh").0
    });
    assert!(
        created.elapsed() < Duration::from_secs(4),
        "the machine was too slow to see the token before its expiry"
    );
    wait_until(Duration::from_secs(10), "the token to be refused", || {
        !ssh_with(&chain, &token, "late").0
    });
    assert!(created.elapsed() >= Duration::from_secs(3));
    let (_, stderr) = ssh_with(&chain, &token, "late");
    assert!(stderr.contains("service token expired"), "{stderr}");
    // Someone with only the client id learns nothing about the expiry.
    let guess = ServiceToken {
        id: token.id.clone(),
        secret: "0".repeat(64),
    };
    let (_, stderr) = ssh_with(&chain, &guess, "guess");
    assert!(
        !stderr.contains("expired") && stderr.contains("wrong secret"),
        "{stderr}"
    );
}
