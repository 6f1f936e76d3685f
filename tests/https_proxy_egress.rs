//! Egress through an HTTP proxy: with `HTTPS_PROXY` set, the origin (`postern tunnel`) and the
//! client (`postern access ssh`) reach the edge only through a real tinyproxy's CONNECT, while
//! the edge and sshd stay direct; `NO_PROXY` naming the edge bypasses the proxy.
//!
//! ```text
//! ssh ── access ssh ──CONNECT──▶ tinyproxy ──▶ edge ◀── tinyproxy ◀──CONNECT── tunnel ── sshd
//! ```
//!
//! Proof that the proxy carried a connection: its log's `CONNECT 127.0.0.1:EDGE_PORT` lines.

use crate::support;

use std::time::Duration;

use support::{
    access_until_exit, origin_cert, postern, proxy_command, require_all, service_token, temp_dir,
    Chain, Edge, Sshd, Tinyproxy, Tunnel, STARTUP,
};

const USER: &str = "egress";
const PASSWORD: &str = "pr0xy-s3cret";
const WRONG_PASSWORD: &str = "not-the-password";

/// The chain of `Chain::start` with `env` (the proxy variables) on the tunnel and on the
/// ProxyCommand, and a tinyproxy that allows CONNECT to the edge's port.
fn chain_through_proxy(
    name: &str,
    hostname: &str,
    auth: Option<(&str, &str)>,
    env: impl Fn(&Tinyproxy) -> Vec<(String, String)>,
) -> (Chain, Tinyproxy) {
    require_all();
    let dir = temp_dir(name);
    let sshd = Sshd::start(dir.path());
    let edge = Edge::start(dir.path());
    let proxy = Tinyproxy::start(dir.path(), edge.addr.port(), auth);
    let env = env(&proxy);
    let token = service_token(&edge.state, "e2e");
    let cert = dir.join("cert.pem");
    origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let tunnel = Tunnel::start_env(dir.path(), hostname, &sshd.url(), &cert, &edge, &pairs);
    let mut command = proxy_command(&edge.addr, &edge.ca(), &token);
    command.env.extend(env);
    let chain = Chain {
        hostname: hostname.to_string(),
        tunnel,
        edge,
        sshd,
        token,
        proxy: command,
        origin_cert: cert,
        dir,
    };
    (chain, proxy)
}

fn https_proxy(url: String) -> Vec<(String, String)> {
    vec![("HTTPS_PROXY".into(), url)]
}

/// `postern access ssh` run directly (as ssh would) with `HTTPS_PROXY=proxy_url`.
fn access_via(chain: &Chain, proxy_url: &str) -> (std::process::ExitStatus, String) {
    let mut cmd = postern(&chain.dir.join("home"));
    cmd.args(["access", "ssh", "--hostname", &chain.hostname, "--edge"])
        .arg(chain.edge.edge_arg())
        .arg("--ca")
        .arg(chain.edge.ca())
        .env("POSTERN_SERVICE_TOKEN_ID", &chain.token.id)
        .env("POSTERN_SERVICE_TOKEN_SECRET", &chain.token.secret)
        .env("HTTPS_PROXY", proxy_url);
    access_until_exit(cmd, Duration::from_secs(30))
}

fn edge_target(chain: &Chain) -> String {
    chain.edge.addr.to_string()
}

fn assert_no_secret_in(text: &str, what: &str) {
    assert!(
        !text.contains(PASSWORD),
        "{what} shows the proxy password:\n{text}"
    );
}

#[test]
fn origin_and_client_reach_the_edge_only_through_the_proxy() {
    let (chain, proxy) = chain_through_proxy("proxy-egress", "proxied.localhost", None, |p| {
        https_proxy(p.url(None))
    });
    let target = edge_target(&chain);
    // Every HA connection of the origin went through the proxy.
    chain.tunnel.wait_registered(4, STARTUP);
    let tunnel_log = chain.tunnel.child().stderr_text();
    assert!(
        tunnel_log.contains(&format!("through the HTTP proxy {}", proxy.addr)),
        "the tunnel must say it uses the proxy:\n{tunnel_log}"
    );
    let from_origin = proxy.connects_to(&target);
    assert!(
        from_origin >= 4,
        "tinyproxy logged {from_origin} CONNECT {target}, expected one per HA connection (4):\n{}",
        proxy.log_text()
    );

    chain.assert_ssh_works("through-the-proxy");
    let after_ssh = proxy.connects_to(&target);
    assert!(
        after_ssh > from_origin,
        "the client's carrier did not go through the proxy (CONNECT count stayed {after_ssh}):\n{}",
        proxy.log_text()
    );
    assert!(
        proxy
            .log_text()
            .contains("Established connection to host \"127.0.0.1\""),
        "tinyproxy never established a tunnel:\n{}",
        proxy.log_text()
    );
}

#[test]
fn proxy_basic_auth_wrong_password_is_named_and_right_password_works() {
    let auth = Some((USER, PASSWORD));
    let (chain, proxy) = chain_through_proxy("proxy-auth", "auth.localhost", auth, |p| {
        https_proxy(p.url(Some((USER, PASSWORD))))
    });
    let target = edge_target(&chain);
    assert_no_secret_in(&chain.tunnel.child().stderr_text(), "the tunnel's log");

    // The client with a wrong password: refused, naming the proxy, the status and the variable.
    // (tinyproxy answers a wrong password with 401 Unauthorized, a missing one with 407.)
    let (status, stderr) = access_via(&chain, &proxy.url(Some((USER, WRONG_PASSWORD))));
    assert!(!status.success(), "access must fail; stderr:\n{stderr}");
    let expected = format!(
        "proxy {} refused the user and password from HTTPS_PROXY for CONNECT to {target} \
         (HTTP 401 Unauthorized)",
        proxy.addr
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    assert!(
        !stderr.contains(WRONG_PASSWORD),
        "the password leaked:\n{stderr}"
    );

    // Without any credentials: told to put them in HTTPS_PROXY.
    let (status, stderr) = access_via(&chain, &proxy.url(None));
    assert!(!status.success(), "access must fail; stderr:\n{stderr}");
    let expected = format!(
        "proxy {} requires authentication for CONNECT to {target} \
         (HTTP 407 Proxy Authentication Required): set HTTPS_PROXY to http://USER:PASSWORD@{}",
        proxy.addr, proxy.addr
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );

    // The right password, through ssh (the ProxyCommand carries it): works.
    chain.assert_ssh_works("authenticated-proxy");

    // An origin with a wrong password says why and keeps retrying instead of exiting.
    let wrong = https_proxy(proxy.url(Some((USER, WRONG_PASSWORD))));
    let pairs: Vec<(&str, &str)> = wrong
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let origin = Tunnel::spawn_env(
        chain.dir.path(),
        "tunnel-wrong-password",
        "wrong.localhost",
        &chain.sshd.url(),
        &chain.origin_cert,
        &chain.edge,
        &pairs,
    );
    let needle = format!(
        "proxy {} refused the user and password from HTTPS_PROXY",
        proxy.addr
    );
    let log = origin
        .child()
        .wait_for_stderr(&needle, STARTUP)
        .unwrap_or_else(|e| panic!("the origin must log the proxy's 407: {e}"));
    assert!(log.contains("(HTTP 401 Unauthorized)"), "{log}");
    assert!(!log.contains(WRONG_PASSWORD), "the password leaked:\n{log}");
    assert!(
        origin.child().try_wait().is_none(),
        "the origin must keep retrying"
    );
}

#[test]
fn no_proxy_naming_the_edge_bypasses_the_proxy() {
    let (chain, proxy) = chain_through_proxy("proxy-bypass", "bypass.localhost", None, |p| {
        let mut env = https_proxy(p.url(None));
        env.push(("NO_PROXY".into(), "localhost,127.0.0.1".into()));
        env
    });
    let target = edge_target(&chain);
    chain.tunnel.wait_registered(4, STARTUP);
    chain.assert_ssh_works("bypassed");
    assert_eq!(
        proxy.connects_to(&target),
        0,
        "NO_PROXY names the edge, yet tinyproxy saw CONNECTs:\n{}",
        proxy.log_text()
    );
    // A control run: without NO_PROXY the same client does go through this proxy.
    let stderr = access_via_until_connect(&chain, &proxy);
    assert!(
        proxy.connects_to(&target) >= 1,
        "the control run did not reach the proxy; stderr:\n{stderr}\nlog:\n{}",
        proxy.log_text()
    );
}

/// Runs `postern access ssh` through `proxy` (no NO_PROXY) until the proxy logged its
/// CONNECT, then stops it.
fn access_via_until_connect(chain: &Chain, proxy: &Tinyproxy) -> String {
    let mut cmd = postern(&chain.dir.join("home"));
    cmd.args(["access", "ssh", "--hostname", &chain.hostname, "--edge"])
        .arg(chain.edge.edge_arg())
        .arg("--ca")
        .arg(chain.edge.ca())
        .env("POSTERN_SERVICE_TOKEN_ID", &chain.token.id)
        .env("POSTERN_SERVICE_TOKEN_SECRET", &chain.token.secret)
        .env("HTTPS_PROXY", proxy.url(None));
    let child = support::Child::spawn("access-control", cmd, chain.dir.path());
    let target = edge_target(chain);
    support::wait_until(
        STARTUP,
        "the control run's CONNECT in tinyproxy's log",
        || proxy.connects_to(&target) >= 1,
    );
    child.stop();
    child.stderr_text()
}
