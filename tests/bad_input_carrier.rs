//! A carrier client that sends a bad HTTP head or bad WebSocket frames is refused with a clear
//! reason (a status, or Close 1002 with the cause), only that connection ends, the edge keeps
//! running, and a normal ssh through the same edge works afterwards.

use crate::support;

use std::io::Write;
use std::time::Duration;

use support::raw::{self, Tls};
use support::Chain;

const HOST: &str = "ssh.localhost";
const MASK: Option<[u8; 4]> = Some([0x12, 0x34, 0x56, 0x78]);

fn carrier(chain: &Chain) -> Tls {
    raw::carrier(chain.edge.addr, &chain.edge.ca(), HOST)
}

fn assert_edge_alive_and_serving(chain: &Chain, marker: &str) {
    assert!(
        chain.edge.child().try_wait().is_none(),
        "the edge exited; stderr:\n{}",
        chain.edge.stderr_text()
    );
    chain.assert_ssh_works(marker);
}

/// Sends `head` on a fresh carrier and returns the response's status line.
fn status_for(chain: &Chain, head: &[u8]) -> String {
    let mut tls = carrier(chain);
    tls.write_all(head).expect("send head");
    let (response, _) = raw::read_head(&mut tls);
    response.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn oversized_request_head_gets_431_or_400() {
    let chain = Chain::start("bad-head-size", HOST);
    let mut head = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: ").into_bytes();
    head.resize(20 * 1024, b'a');
    let status = status_for(&chain, &head);
    assert!(
        status.starts_with("HTTP/1.1 431") || status.starts_with("HTTP/1.1 400"),
        "a 20 KiB head (limit 16 KiB) must get 431 or 400; got {status:?}"
    );
    chain
        .edge
        .child()
        .wait_for_stderr("bad request head", Duration::from_secs(5))
        .expect("the edge logs why");
    assert_edge_alive_and_serving(&chain, "after-oversized-head");
}

#[test]
fn configured_head_limits_apply() {
    // limits.max_head_bytes 2048 and max_headers 10: a 3 KiB head and a 12-header head are
    // refused, while `access ssh`'s upgrade (9 header fields with a service token and
    // Postern-Resume) still fits.
    let chain = Chain::start_with_limits(
        "bad-head-limits",
        HOST,
        serde_json::json!({ "max_head_bytes": 2048, "max_headers": 10 }),
    );
    let mut big = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: ").into_bytes();
    big.resize(3 * 1024, b'a');
    let status = status_for(&chain, &big);
    assert!(
        status.starts_with("HTTP/1.1 431") || status.starts_with("HTTP/1.1 400"),
        "a 3 KiB head over a 2 KiB limit: {status:?}"
    );
    let mut many = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n");
    for i in 0..11 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let status = status_for(&chain, many.as_bytes());
    assert!(
        status.starts_with("HTTP/1.1 431") || status.starts_with("HTTP/1.1 400"),
        "12 headers over a limit of 10: {status:?}"
    );
    assert_edge_alive_and_serving(&chain, "after-configured-head-limits");
}

#[test]
fn malformed_request_heads_get_400() {
    let chain = Chain::start("bad-head-form", HOST);
    for head in [
        format!("GET / HTTP/1.1\r\nHost {HOST}\r\n\r\n"),
        format!("GET / HTTP/1.1\nHost: {HOST}\n\n"),
        format!("GET / HTTP/1.0\r\nHost: {HOST}\r\n\r\n"),
        format!("GET http://x/ HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nHost: {HOST}\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX: a\x01b\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ] {
        let status = status_for(&chain, head.as_bytes());
        assert!(
            status.starts_with("HTTP/1.1 400"),
            "{head:?} must get 400; got {status:?}"
        );
    }
    assert_edge_alive_and_serving(&chain, "after-malformed-heads");
}

/// Upgrades to the real sshd's hostname, sends `frame`, and expects Close 1002 (or 1009 for
/// size) and the end of the connection; the edge must log `why`.
fn frame_is_refused(name: &str, frame: &[u8], codes: &[u16], why: &str) {
    let chain = Chain::start(name, HOST);
    let mut tls = carrier(&chain);
    let already = raw::open_websocket(&mut tls, HOST, &chain.token);
    tls.write_all(frame).expect("send the bad frame");
    tls.flush().expect("flush");
    let code = raw::read_close_code(&mut tls, already, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("expected a Close frame from the edge: {e}"));
    assert!(
        codes.contains(&code),
        "Close code {code}, expected {codes:?}"
    );
    raw::wait_closed(&mut tls, Duration::from_secs(12))
        .unwrap_or_else(|e| panic!("the edge must end the refused carrier: {e}"));
    chain
        .edge
        .child()
        .wait_for_stderr(why, Duration::from_secs(5))
        .expect("the edge logs the violation");
    assert_edge_alive_and_serving(&chain, &format!("after-{name}"));
}

#[test]
fn unmasked_client_frame_gets_close_1002() {
    frame_is_refused(
        "bad-ws-unmasked",
        &raw::ws_frame(0x82, b"SSH-2.0-x\r\n", None, 11),
        &[1002],
        "masked the wrong way",
    );
}

#[test]
fn fragmented_control_frame_gets_close_1002() {
    // A PING without FIN: control frames may not be fragmented.
    frame_is_refused(
        "bad-ws-fragmented-ping",
        &raw::ws_frame(0x09, b"p", MASK, 1),
        &[1002],
        "fragmented or oversized WebSocket control frame",
    );
}

#[test]
fn oversized_websocket_frame_is_refused_from_its_header() {
    // Declares 2 MiB (limit 1 MiB) and sends no payload: refused before any byte of it.
    frame_is_refused(
        "bad-ws-oversized",
        &raw::ws_frame(0x82, b"", MASK, 2 * 1024 * 1024),
        &[1002, 1009],
        "exceeds the 1048576-byte limit",
    );
}
