//! An edge and the admin commands reach etcd over TLS (`--state etcds://…`, only the operator's
//! CA trusted, a client certificate for etcd's `--client-cert-auth`) and as an etcd user (etcd's
//! `auth enable`), against a real etcd (Debian's `etcd-server`) started by the harness with
//! certificates made by the test (tests/support/etcd.rs).
//!
//! ```text
//! ssh ── access ssh ══▶ postern edge --dev ══TLS+client cert+token══▶ etcd ◀══ service-token create
//!                              ▲                                             (ETCDCTL_* variables)
//!                       tunnel ┘── sshd
//! ```
//!
//! Refusals (no client certificate, a CA that did not sign etcd's certificate, a wrong
//! password) end the edge at start with a message that names the endpoint and the reason and
//! never holds the password. An auth token etcd no longer knows (expired, or forgotten by a
//! restart) is replaced and the request goes on.

use crate::support;

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postern::store::{EtcdAccess, EtcdConfig, EtcdStore, EtcdUrl, Store};
use support::etcd::Etcd;
use support::{
    origin_cert, postern, proxy_command, run_with_deadline, temp_dir, wait_until, Edge,
    ServiceToken, Sshd, Tunnel, SSH_DEADLINE, STARTUP,
};

const USER: &str = "edge";
const PASSWORD: &str = "s3cret-etcd-pa55word";

/// A file only its owner may read, holding `text`.
fn private_file(path: &Path, text: &str) -> PathBuf {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    path.to_path_buf()
}

/// `--etcd-*` flags for `etcd`'s TLS files, the user and `password_file`.
fn etcd_flags(etcd: &Etcd, password_file: &Path) -> Vec<String> {
    let tls = etcd.tls.as_ref().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    vec![
        "--etcd-ca".into(),
        s(&tls.ca),
        "--etcd-cert".into(),
        s(&tls.client_cert),
        "--etcd-key".into(),
        s(&tls.client_key),
        "--etcd-user".into(),
        USER.into(),
        "--etcd-password-file".into(),
        s(password_file),
    ]
}

/// `postern edge service-token create NAME --state etcds://…` with etcdctl's variables (not
/// flags) saying how to reach etcd, under `RUST_LOG=trace`: its token, and its stderr.
fn token_via_etcdctl_env(dir: &Path, etcd: &Etcd, url: &str, name: &str) -> ServiceToken {
    let tls = etcd.tls.as_ref().unwrap();
    let mut cmd = postern(&dir.join("home"));
    cmd.args(["edge", "service-token", "create", name, "--state", url])
        .env("ETCDCTL_CACERT", &tls.ca)
        .env("ETCDCTL_CERT", &tls.client_cert)
        .env("ETCDCTL_KEY", &tls.client_key)
        .env("ETCDCTL_USER", USER)
        .env("ETCDCTL_PASSWORD", PASSWORD)
        .env("RUST_LOG", "trace");
    let out = run_with_deadline(&mut cmd, STARTUP, "service-token create over etcds://");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "service-token create: {stderr}");
    assert!(
        !stderr.contains(PASSWORD),
        "the etcd password is in the trace log: {stderr}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("service-token create prints JSON");
    ServiceToken {
        id: v["client_id"].as_str().unwrap().to_owned(),
        secret: v["client_secret"].as_str().unwrap().to_owned(),
    }
}

/// Whether one `ssh HOST echo ok` through `edge` with `token` succeeds.
fn ssh_works(dir: &Path, sshd: &Sshd, host: &str, edge: &Edge, token: &ServiceToken) -> bool {
    let proxy = proxy_command(&edge.addr, &edge.ca(), token);
    let mut cmd = sshd.ssh_command(host, &proxy);
    cmd.env("HOME", dir.join("home"))
        .arg("echo tls-ok")
        .stdin(Stdio::null());
    let out = run_with_deadline(&mut cmd, SSH_DEADLINE, "ssh through the edge");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("tls-ok")
}

/// `postern edge --dev --state URL --keys DIR ARGS` that must fail at start: its stderr.
fn edge_start_fails(dir: &Path, url: &str, args: &[String]) -> String {
    let mut cmd: Command = postern(&dir.join("home"));
    cmd.args([
        "edge",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--state",
        url,
        "--keys",
    ])
    .arg(dir.join("keys"))
    .args(args)
    .stdin(Stdio::null());
    let out = run_with_deadline(&mut cmd, STARTUP, "an edge that etcd refuses");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the edge started: {stderr}");
    stderr
}

#[test]
fn an_edge_on_etcds_with_a_client_certificate_and_a_user_serves_a_token_the_cli_made() {
    support::require_all();
    let dir = temp_dir("etcd-tls-serve");
    let mut etcd = Etcd::start_tls(dir.path(), &[]);
    etcd.enable_auth("pool", USER, PASSWORD);
    let url = etcd.url("pool");
    assert!(url.starts_with("etcds://"), "{url}");
    let password_file = private_file(&dir.join("etcd-password"), &format!("{PASSWORD}\n"));

    let edge_dir = dir.join("edge");
    fs::create_dir_all(&edge_dir).unwrap();
    let keys = edge_dir.join("edge-state");
    let mut args = vec!["--state".to_owned(), url.clone(), "--keys".to_owned()];
    args.push(keys.to_str().unwrap().to_owned());
    args.extend(etcd_flags(&etcd, &password_file));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let edge = Edge::start_args(&edge_dir, &args);

    let host = "tls.localhost";
    let sshd = Sshd::start(dir.path());
    let cert = dir.join("cert.pem");
    origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    let _tunnel = Tunnel::start(dir.path(), host, &sshd.url(), &cert, &edge);

    let token = token_via_etcdctl_env(dir.path(), &etcd, &url, "over-tls");
    wait_until(
        SSH_DEADLINE,
        "the token made over etcds:// to work at the edge",
        || ssh_works(dir.path(), &sshd, host, &edge, &token),
    );
    assert!(
        !edge.stderr_text().contains(PASSWORD),
        "the etcd password is in the edge's log"
    );

    // etcd forgets its tokens when it restarts: the edge authenticates again by itself, and a
    // token made after the restart works there.
    etcd.restart();
    let later = token_via_etcdctl_env(dir.path(), &etcd, &url, "after-restart");
    let restarted = Instant::now();
    wait_until(
        SSH_DEADLINE,
        "a token made after etcd's restart to work at the edge",
        || ssh_works(dir.path(), &sshd, host, &edge, &later),
    );
    eprintln!(
        "the edge saw a new token {:?} after etcd restarted",
        restarted.elapsed()
    );
    assert!(ssh_works(dir.path(), &sshd, host, &edge, &token));
    assert!(!edge.stderr_text().contains(PASSWORD));
}

#[test]
fn etcd_refuses_an_edge_without_a_client_certificate_and_an_edge_refuses_an_etcd_its_ca_did_not_sign(
) {
    let dir = temp_dir("etcd-tls-refused");
    let etcd = Etcd::start_tls(dir.path(), &[]);
    let tls = etcd.tls.as_ref().unwrap();
    let url = etcd.url("pool");
    let endpoint = etcd.addr.to_string();
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    // A CA that did not sign etcd's certificate: the handshake fails at the edge.
    let wrong_ca = edge_start_fails(
        dir.path(),
        &url,
        &[
            "--etcd-ca".into(),
            s(&tls.other_ca),
            "--etcd-cert".into(),
            s(&tls.client_cert),
            "--etcd-key".into(),
            s(&tls.client_key),
        ],
    );
    assert!(
        wrong_ca.contains(&format!("etcd at {endpoint}"))
            && wrong_ca.contains("certificate was not trusted")
            && wrong_ca.contains(&s(&tls.other_ca)),
        "{wrong_ca}"
    );

    // No client certificate: etcd ends the handshake.
    let no_cert = edge_start_fails(dir.path(), &url, &["--etcd-ca".into(), s(&tls.ca)]);
    assert!(
        no_cert.contains(&format!("etcd at {endpoint}")) && no_cert.contains("client certificate"),
        "{no_cert}"
    );

    // Plain HTTP to a TLS etcd: the message says to write etcds://.
    let plain = edge_start_fails(dir.path(), &url.replace("etcds://", "etcd://"), &[]);
    assert!(plain.contains("etcds://"), "{plain}");

    // A client key others may read is refused before anything is sent.
    let shared_key = dir.join("shared.key");
    fs::copy(&tls.client_key, &shared_key).unwrap();
    fs::set_permissions(&shared_key, fs::Permissions::from_mode(0o644)).unwrap();
    let shared = edge_start_fails(
        dir.path(),
        &url,
        &[
            "--etcd-ca".into(),
            s(&tls.ca),
            "--etcd-cert".into(),
            s(&tls.client_cert),
            "--etcd-key".into(),
            s(&shared_key),
        ],
    );
    assert!(
        shared.contains("etcd client key") && shared.contains("chmod 600"),
        "{shared}"
    );

    // TLS files with a plain etcd:// state, or without any etcd state, are a usage error.
    let out = run_with_deadline(
        postern(&dir.join("home"))
            .args(["edge", "service-token", "create", "x", "--state"])
            .arg(dir.join("state-dir"))
            .args(["--etcd-ca", &s(&tls.ca)]),
        STARTUP,
        "service-token create --etcd-ca without etcd",
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("--etcd-"), "{text}");
}

#[test]
fn a_wrong_etcd_password_ends_the_edge_at_start_naming_etcd_auth_and_never_showing_it() {
    let dir = temp_dir("etcd-tls-password");
    let mut etcd = Etcd::start_tls(dir.path(), &[]);
    etcd.enable_auth("pool", USER, PASSWORD);
    let url = etcd.url("pool");
    let wrong = "wrong-Pa55word-4-etcd";
    let wrong_file = private_file(&dir.join("wrong-password"), wrong);
    let flags = etcd_flags(&etcd, &wrong_file);
    let stderr = edge_start_fails(dir.path(), &url, &flags);
    assert!(
        stderr.contains(&format!("etcd at {} refused the credentials", etcd.addr))
            && stderr.contains("etcd auth")
            && stderr.contains(USER),
        "{stderr}"
    );
    assert!(!stderr.contains(wrong), "the password is shown: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The right password in a file others may read: refused, not shown.
    let shared = dir.join("shared-password");
    fs::write(&shared, PASSWORD).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = edge_start_fails(dir.path(), &url, &etcd_flags(&etcd, &shared));
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    // No user at all, where etcd wants one: the message says etcd's auth is on.
    let tls = etcd.tls.as_ref().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let stderr = edge_start_fails(
        dir.path(),
        &url,
        &[
            "--etcd-ca".into(),
            s(&tls.ca),
            "--etcd-cert".into(),
            s(&tls.client_cert),
            "--etcd-key".into(),
            s(&tls.client_key),
        ],
    );
    assert!(stderr.contains("etcd's auth is on"), "{stderr}");
}

#[test]
fn requests_go_on_after_the_etcd_auth_token_expired() {
    let dir = temp_dir("etcd-tls-expiry");
    // Simple tokens idle for a second expire (etcd checks once a second); the cheapest bcrypt
    // keeps the many authentications of this test fast.
    let mut etcd = Etcd::start_tls(
        dir.path(),
        &[
            "--auth-token",
            "simple",
            "--auth-token-ttl",
            "1",
            "--bcrypt-cost",
            "4",
        ],
    );
    etcd.enable_auth("pool", USER, PASSWORD);
    let tls = etcd.tls.as_ref().unwrap();
    let password_file = private_file(&dir.join("etcd-password"), PASSWORD);
    let access = EtcdAccess {
        ca: Some(tls.ca.clone()),
        cert: Some(tls.client_cert.clone()),
        key: Some(tls.client_key.clone()),
        user: Some(USER.into()),
        password_file: Some(password_file),
    };
    let config = EtcdConfig::new(EtcdUrl::parse(&etcd.url("pool")).unwrap(), &access)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut store = EtcdStore::connect(&config).unwrap_or_else(|e| panic!("{e}"));
    store.create_service_token("before", None).unwrap();

    // Tokens made after the store's last request, each used once: when one is refused, the
    // store's token (idle longer) has expired too.
    // Probe i is used (once) no sooner than i × 250 ms after the first.
    let probes: Vec<String> = (0..40).map(|_| etcd.token(USER, PASSWORD)).collect();
    let mut used = 0;
    let since = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "an idle etcd auth token to expire",
        || {
            if since.elapsed() < Duration::from_millis(250) * used {
                return false;
            }
            let probe = probes.get(used as usize).expect("enough probe tokens");
            used += 1;
            let (status, answer) = etcd.post_as(
                "/v3/kv/range",
                &serde_json::json!({"key": postern::proto::base64::encode(b"pool/x")}),
                probe,
            );
            let expired = status != 200;
            if expired {
                assert!(
                    answer.to_string().contains("invalid auth token"),
                    "{answer}"
                );
            }
            expired
        },
    );
    eprintln!("an idle token expired within {:?}", since.elapsed());

    // The store's next requests work: it authenticated again.
    store.create_service_token("after", None).unwrap();
    let names: Vec<String> = store
        .service_tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["before", "after"]);
}
