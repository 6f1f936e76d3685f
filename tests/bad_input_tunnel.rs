//! An origin that breaks the tunnel protocol loses that one tunnel connection: the edge sends
//! ERROR naming the violation (or just closes, for a truncated frame) and keeps running, and
//! the real tunnel of the same edge keeps serving ssh. A tunnel-ALPN client without an origin
//! certificate never gets past the TLS handshake.
//!
//! The misbehaving origin is written here by hand: mutual TLS with an origin certificate from
//! `postern edge origin-cert create`, ALPN `postern-tunnel/1`, HELLO and REGISTER for
//! `raw.localhost`, then frames built with `postern::proto::mux::encode`.

use crate::support;

use std::io::Write;
use std::time::Duration;

use postern::proto::mux::{encode_header, Frame, FrameType};
use support::raw::{self, RawTunnel};
use support::Chain;

const REAL: &str = "ssh.localhost";
const RAW: &str = "raw.localhost";

fn raw_tunnel(chain: &Chain) -> RawTunnel {
    RawTunnel::register(chain.edge.addr, &chain.edge.ca(), &chain.origin_cert, RAW)
}

/// A carrier for `raw.localhost`, upgraded, so that the edge OPENs a stream on the raw tunnel;
/// returns the carrier (keep it open) and the stream id.
fn open_stream(chain: &Chain, t: &mut RawTunnel) -> (raw::Tls, u32) {
    t.open_stream(chain.edge.addr, &chain.edge.ca(), RAW, &chain.token)
}

/// The edge is alive, the real tunnel never lost its registration, and ssh works.
fn assert_only_the_offender_was_closed(chain: &Chain, marker: &str) {
    assert!(
        chain.edge.child().try_wait().is_none(),
        "the edge exited; stderr:\n{}",
        chain.edge.stderr_text()
    );
    assert!(
        chain.tunnel.child().try_wait().is_none(),
        "the real tunnel exited"
    );
    let lost = chain.edge.stderr_text().lines().any(|l| {
        l.contains(&format!("({REAL}) closed")) || l.contains(&format!("({REAL}) is draining"))
    });
    assert!(
        !lost,
        "a real tunnel connection was closed; edge:\n{}",
        chain.edge.stderr_text()
    );
    chain.assert_ssh_works(marker);
}

fn expect_protocol_error(chain: &Chain, t: &mut RawTunnel, needle: &str) {
    let message = t.expect_error_and_close(Duration::from_secs(10));
    assert!(
        message.contains(needle),
        "ERROR must name the violation ({needle:?}); got {message:?}"
    );
    chain
        .edge
        .child()
        .wait_for_stderr(&format!("protocol error: {needle}"), Duration::from_secs(5))
        .expect("the edge logs the violation");
}

#[test]
fn tunnel_alpn_without_a_client_certificate_fails_the_tls_handshake() {
    let chain = Chain::start("bad-tunnel-nocert", REAL);
    // TLS 1.3: the client finishes its side first; the refusal arrives as an alert.
    let refused = match raw::tunnel_tls(chain.edge.addr, &chain.edge.ca(), None) {
        Err(e) => e.to_string(),
        Ok(mut tls) => {
            let _ = tls.write_all(b"not a mux frame");
            let mut buf = [0u8; 64];
            match std::io::Read::read(&mut tls, &mut buf) {
                Err(e) => e.to_string(),
                Ok(n) => panic!("a tunnel peer without a certificate read {n} bytes"),
            }
        }
    };
    assert!(
        refused.to_lowercase().contains("certificate"),
        "the handshake must fail over the missing certificate; got {refused:?}"
    );
    chain
        .edge
        .child()
        .wait_for_stderr("no certificates", Duration::from_secs(5))
        .expect("the edge logs the refused handshake");
    assert_only_the_offender_was_closed(&chain, "after-tunnel-without-cert");
}

#[test]
fn window_credit_overflow_ends_that_tunnel_connection() {
    let chain = Chain::start("bad-tunnel-credit", REAL);
    let mut t = raw_tunnel(&chain);
    let (mut carrier, stream) = open_stream(&chain, &mut t);
    t.send(&Frame::Window {
        stream,
        credit: u32::MAX,
        consumed: 0,
    });
    expect_protocol_error(&chain, &mut t, "window credit overflow");
    // The carrier on that connection is told, not left hanging.
    let code = raw::read_close_code(&mut carrier, Vec::new(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the carrier must get a Close: {e}"));
    assert_eq!(code, 1013, "Close 1013 (try again) for a lost tunnel");
    assert_only_the_offender_was_closed(&chain, "after-credit-overflow");
}

#[test]
fn data_beyond_the_window_ends_that_tunnel_connection() {
    let chain = Chain::start("bad-tunnel-window", REAL);
    let mut t = raw_tunnel(&chain);
    // The carrier never reads: once its socket buffers fill, the edge stops granting credit
    // and the origin's next DATA overruns the window.
    let (_carrier, stream) = open_stream(&chain, &mut t);
    let chunk = vec![0u8; postern::limits::MAX_FRAME_PAYLOAD];
    let mut frame = Vec::new();
    postern::proto::mux::encode(
        &mut frame,
        &Frame::Data {
            stream,
            data: &chunk,
        },
    );
    let needle = format!("protocol error: peer overran the flow-control window of stream {stream}");
    let mut sent = 0usize;
    while !chain.edge.stderr_text().contains(&needle) {
        assert!(
            sent < 512 * 1024 * 1024,
            "512 MiB sent without a window violation"
        );
        if t.tls
            .write_all(&frame)
            .and_then(|()| t.tls.flush())
            .is_err()
        {
            break;
        }
        sent += frame.len();
    }
    chain
        .edge
        .child()
        .wait_for_stderr(&needle, Duration::from_secs(10))
        .expect("the edge logs the window violation");
    raw::wait_closed(&mut t.tls, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the edge must close the offending connection: {e}"));
    assert_only_the_offender_was_closed(&chain, "after-window-overrun");
}

#[test]
fn data_for_a_stream_never_opened_ends_that_tunnel_connection() {
    let chain = Chain::start("bad-tunnel-unknown", REAL);
    let mut t = raw_tunnel(&chain);
    t.send(&Frame::Data {
        stream: 999,
        data: b"hello",
    });
    expect_protocol_error(
        &chain,
        &mut t,
        "frame for stream 999, which was never opened",
    );
    assert_only_the_offender_was_closed(&chain, "after-unknown-stream");
}

#[test]
fn unknown_frame_type_ends_that_tunnel_connection() {
    let chain = Chain::start("bad-tunnel-type", REAL);
    let mut t = raw_tunnel(&chain);
    t.send_bytes(&[0xee, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect_protocol_error(&chain, &mut t, "unknown frame type 238");
    assert_only_the_offender_was_closed(&chain, "after-unknown-type");
}

#[test]
fn truncated_frame_then_eof_ends_only_that_tunnel_connection() {
    let chain = Chain::start("bad-tunnel-truncated", REAL);
    let mut t = raw_tunnel(&chain);
    // A PING header announcing 8 bytes, 3 of them sent, then the end of the stream.
    let mut bytes = Vec::new();
    encode_header(&mut bytes, FrameType::Ping, 0, 8);
    bytes.extend_from_slice(&[1, 2, 3]);
    t.send_bytes(&bytes);
    t.tls.conn.send_close_notify();
    t.tls.flush().expect("flush close_notify");
    let _ = t.tls.sock.shutdown(std::net::Shutdown::Write);
    raw::wait_closed(&mut t.tls, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the edge must close the truncated connection: {e}"));
    chain
        .edge
        .child()
        .wait_for_stderr(&format!("({RAW}) closed"), Duration::from_secs(5))
        .expect("the edge logs the closed connection");
    assert_only_the_offender_was_closed(&chain, "after-truncated-frame");
}

#[test]
fn an_origin_reset_after_its_fin_sends_the_client_no_second_close() {
    let chain = Chain::start("bad-tunnel-rst-after-fin", REAL);
    let mut t = raw_tunnel(&chain);
    let (mut carrier, stream) = open_stream(&chain, &mut t);
    t.send(&Frame::Data {
        stream,
        data: b"bye",
    });
    t.send(&Frame::Fin { stream });
    let first = raw::read_close_code(&mut carrier, Vec::new(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the origin's FIN becomes a Close: {e}"));
    assert_eq!(first, 1000);
    // The client has not sent its Close yet when the origin resets the stream: the carrier
    // ends, but a second Close would be a protocol error at the client.
    t.send(&Frame::Rst {
        stream,
        code: postern::proto::mux::ResetCode::Cancel,
        reason: "service write failed",
    });
    let second = raw::read_close_code(&mut carrier, Vec::new(), Duration::from_secs(10));
    assert!(
        matches!(&second, Err(e) if e.starts_with("EOF")),
        "one Close per carrier, then the end: {second:?}"
    );
    assert_only_the_offender_was_closed(&chain, "after-rst-after-fin");
}
