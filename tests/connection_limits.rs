//! The edge's configurable limits close or refuse the offender only: connections per source
//! IP, streams per tunnel connection (503), login requests per minute (429) and idle
//! carriers. Each is logged once per source and interval, and ssh through the same edge keeps
//! working.

use crate::support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::raw;
use support::Chain;

const HOST: &str = "ssh.localhost";
/// Connections `postern tunnel` holds by default (`--ha-connections`).
const HA_CONNECTIONS: u64 = 4;

fn assert_edge_alive_and_serving(chain: &Chain, marker: &str) {
    assert!(
        chain.edge.child().try_wait().is_none(),
        "the edge exited; stderr:\n{}",
        chain.edge.stderr_text()
    );
    chain.assert_ssh_works(marker);
}

#[test]
fn connections_beyond_the_per_ip_limit_are_closed_at_once() {
    let chain = Chain::start_with_limits(
        "limit-per-ip",
        HOST,
        serde_json::json!({ "max_connections_per_ip": 10 }),
    );
    // The tunnel's own connections come from 127.0.0.1 too and count.
    chain
        .tunnel
        .wait_registered(HA_CONNECTIONS, Duration::from_secs(20));
    let room = 10 - HA_CONNECTIONS as usize;
    let mut idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(chain.edge.addr).expect("connect"))
        .collect();
    // The edge accepts in connect order: the first `room` are kept, the rest closed at once.
    for (i, s) in idle.iter_mut().enumerate().skip(room) {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let took = raw::wait_closed(s, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connection {} over the limit: {e}", i + 1));
        assert!(
            took < Duration::from_secs(2),
            "over the limit must close at once"
        );
    }
    for (i, s) in idle.iter_mut().enumerate().take(room) {
        assert!(
            raw::tcp_open(s),
            "connection {} (within the limit) was closed",
            i + 1
        );
    }
    let text = chain
        .edge
        .child()
        .wait_for_stderr("(limits.max_connections_per_ip)", Duration::from_secs(5))
        .expect("the edge logs the limit");
    assert_eq!(
        text.matches("(limits.max_connections_per_ip)").count(),
        1,
        "{} refusals from one address are logged once; edge:\n{text}",
        20 - room
    );
    drop(idle);
    assert_edge_alive_and_serving(&chain, "after-per-ip-limit");
}

#[test]
fn a_stream_beyond_the_per_tunnel_limit_gets_503() {
    let chain = Chain::start_with_limits(
        "limit-streams",
        HOST,
        serde_json::json!({ "max_streams_per_tunnel": 1 }),
    );
    chain
        .tunnel
        .wait_registered(HA_CONNECTIONS, Duration::from_secs(20));
    // One stream on each tunnel connection: the edge spreads them over those with room.
    let carriers: Vec<raw::Tls> = (0..HA_CONNECTIONS)
        .map(|_| {
            let mut tls = raw::carrier(chain.edge.addr, &chain.edge.ca(), HOST);
            raw::open_websocket(&mut tls, HOST, &chain.token);
            tls
        })
        .collect();
    let mut extra = raw::carrier(chain.edge.addr, &chain.edge.ca(), HOST);
    extra
        .write_all(&raw::upgrade_request(HOST, &chain.token))
        .unwrap();
    let (head, _) = raw::read_head(&mut extra);
    assert!(
        head.starts_with("HTTP/1.1 503"),
        "a stream over every connection's limit must get 503; got:\n{head}"
    );
    chain
        .edge
        .child()
        .wait_for_stderr("(limits.max_streams_per_tunnel)", Duration::from_secs(5))
        .expect("the edge logs the limit");
    drop(carriers);
    // The closed carriers' streams are reset; then there is room again.
    let start = Instant::now();
    loop {
        let out = chain.ssh_run("echo after-stream-limit");
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ssh still refused after the carriers closed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_edge_alive_and_serving(&chain, "after-stream-limit");
}

#[test]
fn login_requests_beyond_the_rate_get_429() {
    let chain = Chain::start_with_limits(
        "limit-login-rate",
        HOST,
        serde_json::json!({ "login_attempts_per_minute": 5 }),
    );
    let status = |path: &str| {
        let mut tls = raw::carrier(chain.edge.addr, &chain.edge.ca(), HOST);
        tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .unwrap();
        let (head, _) = raw::read_head(&mut tls);
        head.lines().next().unwrap_or_default().to_owned()
    };
    let cli = "/cdn-cgi/access/cli?id=aaaaaaaaaaaaaaaaaaaa&key=x&app=ssh.localhost";
    for i in 0..5 {
        let s = if i % 2 == 0 {
            status(cli)
        } else {
            status("/cdn-cgi/access/dev-login")
        };
        assert!(
            !s.contains(" 429 "),
            "request {} within the rate: {s}",
            i + 1
        );
    }
    for path in [cli, "/cdn-cgi/access/dev-login"] {
        let s = status(path);
        assert!(
            s.starts_with("HTTP/1.1 429"),
            "{path} over the rate must get 429; got {s:?}"
        );
    }
    // Other pages are not rate-limited.
    assert!(status("/cdn-cgi/access/certs").starts_with("HTTP/1.1 200"));
    chain
        .edge
        .child()
        .wait_for_stderr("(limits.login_attempts_per_minute)", Duration::from_secs(5))
        .expect("the edge logs the limit");
    assert_edge_alive_and_serving(&chain, "after-login-rate");
}

#[test]
fn an_idle_carrier_is_closed_after_the_idle_timeout() {
    let chain = Chain::start_with_limits(
        "limit-idle",
        HOST,
        serde_json::json!({ "idle_timeout_secs": 3 }),
    );
    let mut tls = raw::carrier(chain.edge.addr, &chain.edge.ca(), HOST);
    let already = raw::open_websocket(&mut tls, HOST, &chain.token);
    // sshd sends its banner, then waits for ours: nothing moves from here on.
    let start = Instant::now();
    let code = raw::read_close_code(&mut tls, already, Duration::from_secs(8))
        .unwrap_or_else(|e| panic!("an idle carrier must get a Close: {e}"));
    assert_eq!(code, 1008, "Close 1008 (policy) for an idle carrier");
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "closed after {:?}, before the 3 s idle timeout",
        start.elapsed()
    );
    chain
        .edge
        .child()
        .wait_for_stderr("moved no byte for 3 s", Duration::from_secs(5))
        .expect("the edge logs the idle timeout");
    assert_edge_alive_and_serving(&chain, "after-idle-timeout");
}
