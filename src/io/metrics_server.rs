//! The metrics endpoint's server: one thread that answers `GET /metrics` and `GET /ready`
//! from the registry in [`crate::metrics`], one request at a time, each within
//! [`REQUEST_DEADLINE`] and at most [`MAX_REQUEST`] bytes of head. What to answer is decided
//! by [`metrics::answer`]; this file only reads and writes the socket.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::{self, Metrics, MAX_REQUEST, REQUEST_DEADLINE};
use crate::proto::http::{self, HeadLimits};

/// Binds `addr` and serves the registry on one thread. Returns the bound address.
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("--metrics {addr}: cannot listen: {e}")))?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(sock) => {
                        if let Err(e) = answer(sock, &metrics) {
                            log::debug!("metrics: {e}");
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: do not spin on a listener that keeps failing.
                        log::warn!("metrics: accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(bound)
}

/// Reads one request head (bounded in size and time) and writes the answer; then closes.
fn answer(mut sock: TcpStream, metrics: &Metrics) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    let limits = HeadLimits {
        max_head_bytes: MAX_REQUEST,
        max_headers: 32,
    };
    let head = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request too slow"));
        }
        sock.set_read_timeout(Some(left))?;
        match http::parse_request_head(&buf[..len], &limits) {
            Ok(Some((head, _))) => break head,
            Ok(None) if len == buf.len() => {
                return respond(&mut sock, 431, "text/plain", "request head too large\n")
            }
            Ok(None) => {}
            Err(e) => return respond(&mut sock, 400, "text/plain", &format!("{e}\n")),
        }
        match sock.read(&mut buf[len..]) {
            Ok(0) => return Ok(()),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    sock.set_write_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ))?;
    let (status, content_type, body) = metrics::answer(metrics, &head.method, &head.target);
    respond(&mut sock, status, content_type, &body)
}

fn respond(sock: &mut TcpStream, status: u16, content_type: &str, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut out = Vec::with_capacity(body.len() + 128);
    http::write_response(
        &mut out,
        status,
        reason,
        &[("Content-Type", content_type), ("Connection", "close")],
        body.as_bytes(),
    );
    sock.write_all(&out)?;
    sock.flush()
}
