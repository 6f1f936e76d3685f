//! Connections that never finish their handshake are closed at the configured deadline
//! (`limits.handshake_timeout_secs`, 2 s here), logged once per source rather than once per
//! connection, and the edge keeps serving: carriers that trickle a partial request head, TCP
//! connections that never start TLS, and tunnel connections with a valid origin certificate
//! that never send REGISTER.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::raw;
use support::Chain;

const HOST: &str = "ssh.localhost";
const DEADLINE_SECS: u64 = 2;

fn chain(name: &str) -> Chain {
    Chain::start_with_limits(
        name,
        HOST,
        serde_json::json!({ "handshake_timeout_secs": DEADLINE_SECS }),
    )
}

/// Closed no earlier than the deadline allows (minus the 1 s tick) and not much later.
fn assert_closed_at_deadline(elapsed: Duration, what: &str) {
    assert!(
        elapsed >= Duration::from_millis(DEADLINE_SECS * 1000 - 900)
            && elapsed <= Duration::from_secs(DEADLINE_SECS + 3),
        "{what} closed after {elapsed:?}; the deadline is {DEADLINE_SECS} s"
    );
}

fn assert_edge_alive_and_serving(chain: &Chain, marker: &str) {
    assert!(
        chain.edge.child().try_wait().is_none(),
        "the edge exited; stderr:\n{}",
        chain.edge.stderr_text()
    );
    chain.assert_ssh_works(marker);
}

#[test]
fn carriers_trickling_a_partial_head_are_closed_at_the_deadline() {
    let chain = chain("slowloris-carrier");
    let start = Instant::now();
    let mut conns: Vec<(raw::Tls, Option<Duration>)> = (0..20)
        .map(|_| {
            let mut tls = raw::carrier(chain.edge.addr, &chain.edge.ca(), HOST);
            tls.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes())
                .expect("send the start of a head");
            tls.sock
                .set_read_timeout(Some(Duration::from_millis(5)))
                .expect("timeout");
            (tls, None)
        })
        .collect();
    // A header byte per connection every round, never the blank line that ends the head.
    while conns.iter().any(|(_, closed)| closed.is_none()) {
        assert!(
            start.elapsed() < Duration::from_secs(DEADLINE_SECS + 5),
            "slow carriers still open {:?} after they started",
            start.elapsed()
        );
        for (tls, closed) in conns.iter_mut().filter(|(_, c)| c.is_none()) {
            let wrote = tls.write_all(b"X").and_then(|()| tls.flush());
            let mut buf = [0u8; 256];
            let gone = match tls.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            };
            if wrote.is_err() || gone {
                *closed = Some(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (_, closed) in &conns {
        assert_closed_at_deadline(closed.expect("closed"), "a trickling carrier");
    }
    let text = chain
        .edge
        .child()
        .wait_for_stderr("no request head within 2 s", Duration::from_secs(5))
        .expect("the edge logs the deadline");
    assert_eq!(
        text.matches("no request head within").count(),
        1,
        "20 timeouts from one address are logged once; edge:\n{text}"
    );
    assert_edge_alive_and_serving(&chain, "after-carrier-slowloris");
}

#[test]
fn tcp_connections_that_never_start_tls_are_closed_at_the_deadline() {
    let chain = chain("slowloris-tcp");
    let mut socks: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(chain.edge.addr).expect("connect"))
        .collect();
    let start = Instant::now();
    for s in &mut socks {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let left = Duration::from_secs(DEADLINE_SECS + 4).saturating_sub(start.elapsed());
        raw::wait_closed(s, left).unwrap_or_else(|e| panic!("a silent TCP connection: {e}"));
        assert_closed_at_deadline(start.elapsed(), "a silent TCP connection");
    }
    chain
        .edge
        .child()
        .wait_for_stderr("no TLS handshake within 2 s", Duration::from_secs(5))
        .expect("the edge logs the deadline");
    assert_edge_alive_and_serving(&chain, "after-tcp-slowloris");
}

#[test]
fn tunnel_that_never_registers_is_closed_at_the_deadline() {
    let chain = chain("slowloris-tunnel");
    let start = Instant::now();
    let mut tls = raw::tunnel_tls(chain.edge.addr, &chain.edge.ca(), Some(&chain.origin_cert))
        .expect("mutual TLS with a valid origin certificate succeeds");
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    raw::wait_closed(&mut tls, Duration::from_secs(DEADLINE_SECS + 4))
        .unwrap_or_else(|e| panic!("a tunnel without REGISTER: {e}"));
    assert_closed_at_deadline(start.elapsed(), "a tunnel without REGISTER");
    chain
        .edge
        .child()
        .wait_for_stderr("no REGISTER within 2 s", Duration::from_secs(5))
        .expect("the edge logs the deadline");
    assert_edge_alive_and_serving(&chain, "after-tunnel-slowloris");
}
