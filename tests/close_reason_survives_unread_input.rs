//! An edge that ends a carrier on purpose delivers its WebSocket Close (code and reason) and
//! ends the TCP connection with a FIN, even while the client keeps writing bytes the edge will
//! never read (ssh keeps writing). Closing a TCP socket with unread input makes the kernel
//! answer with a reset instead of a FIN: the client's next write fails with "connection
//! reset", and whatever the edge sent that was still queued (the Close) is thrown away. The
//! edge therefore closes the way HTTP servers do ("lingering close", docs/design.md): Close
//! and close_notify flushed, then `shutdown(Write)`, then it reads and discards until the
//! client's EOF or a short deadline, and only then closes.
//!
//! The origin is a hand-made tunnel (mutual TLS with an origin certificate, mux frames) that
//! grants the edge no window, so the client's bytes pile up unread in the edge, and then
//! resets the stream with a reason, which the edge turns into the Close. The client is a
//! rustls connection shared by two threads: one writes WebSocket frames without pause, as
//! ssh does, the other reads.

use crate::support;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use postern::limits::{CONN_READ_BUFFER, INITIAL_STREAM_WINDOW};
use postern::proto::mux::{Frame, ResetCode};
use rustls::ClientConnection;
use support::raw::{self, RawTunnel};
use support::{origin_cert, service_token, temp_dir, wait_until, Edge};

const HOST: &str = "linger.localhost";
const REASON: &str = "no service for nothing.localhost";
const ROUNDS: usize = 20;
/// More than the edge takes from a stream whose origin grants no window (the window, then
/// its read buffer): past this, the client's bytes wait unread in the edge's socket.
const UNREAD: usize = 2 * INITIAL_STREAM_WINDOW as usize + CONN_READ_BUFFER;

/// The client's writer: masked binary frames, one after the other, until told to stop.
/// Returns the first write error that came before `stop`.
fn keep_writing(
    conn: Arc<Mutex<ClientConnection>>,
    mut sock: TcpStream,
    written: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Option<io::Error> {
    let frame = raw::ws_frame(0x82, &[0x5a; 16 * 1024], Some([1, 2, 3, 4]), 16 * 1024);
    let mut cipher = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        cipher.clear();
        {
            let mut c = conn.lock().expect("lock");
            c.writer()
                .write_all(&frame)
                .expect("rustls takes plaintext");
            while c.wants_write() {
                c.write_tls(&mut cipher).expect("rustls writes to a Vec");
            }
        }
        if let Err(e) = sock.write_all(&cipher) {
            return (!stop.load(Ordering::SeqCst)).then_some(e);
        }
        written.fetch_add(frame.len(), Ordering::SeqCst);
    }
    None
}

/// What the reading side saw of the end of the connection.
#[derive(Debug, Default)]
struct End {
    /// The Close frame's code and reason.
    close: Option<(u16, String)>,
    /// TLS close_notify came.
    close_notify: bool,
}

/// Reads until the edge's FIN: plaintext through the shared TLS state, the Close frame out
/// of it. `Err` on a reset, a TLS error or the deadline, with what was seen until then.
fn read_to_the_end(
    conn: &Mutex<ClientConnection>,
    sock: &mut TcpStream,
    mut plain: Vec<u8>,
) -> Result<End, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    let mut end = End::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if end.close.is_none() {
            end.close = close_frame(&mut plain)?;
        }
        if Instant::now() > deadline {
            return Err(format!("no FIN within 10 s; saw {end:?}"));
        }
        let n = match sock.read(&mut buf) {
            Ok(0) => return Ok(end),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(format!("{e} (after {end:?})")),
        };
        let mut c = conn.lock().expect("lock");
        let mut cipher = &buf[..n];
        while !cipher.is_empty() {
            c.read_tls(&mut cipher).map_err(|e| format!("TLS: {e}"))?;
            c.process_new_packets()
                .map_err(|e| format!("TLS: {e} (after {end:?})"))?;
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match c.reader().read(&mut chunk) {
                    Ok(0) => {
                        end.close_notify = true;
                        break;
                    }
                    Ok(m) => plain.extend_from_slice(&chunk[..m]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("TLS: {e} (after {end:?})")),
                }
            }
        }
    }
}

/// Takes whole server frames off the front of `plain` until a Close: its code and reason.
fn close_frame(plain: &mut Vec<u8>) -> Result<Option<(u16, String)>, String> {
    while plain.len() >= 2 {
        let (len, hl) = match plain[1] & 0x7f {
            126 if plain.len() >= 4 => (u16::from_be_bytes([plain[2], plain[3]]) as usize, 4),
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if plain.len() < hl + len {
            return Ok(None);
        }
        if plain[0] & 0x0f == 0x8 {
            if len < 2 {
                return Err(format!("a Close frame of {len} bytes"));
            }
            let code = u16::from_be_bytes([plain[hl], plain[hl + 1]]);
            let reason = String::from_utf8_lossy(&plain[hl + 2..hl + len]).into_owned();
            plain.drain(..hl + len);
            return Ok(Some((code, reason)));
        }
        plain.drain(..hl + len);
    }
    Ok(None)
}

#[test]
fn a_close_with_its_reason_reaches_a_client_that_keeps_writing() {
    let dir = temp_dir("close-linger");
    let edge = Edge::start(dir.path());
    let token = service_token(&edge.state, "linger");
    let cert = dir.join("cert.pem");
    origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    let mut origin = RawTunnel::register(edge.addr, &edge.ca(), &cert, HOST);

    for round in 0..ROUNDS {
        let mut carrier = raw::carrier(edge.addr, &edge.ca(), HOST);
        let already = raw::open_websocket(&mut carrier, HOST, &token);
        let stream = origin
            .wait_for(Duration::from_secs(10), |f| match f {
                Frame::Open { stream, .. } => Some(*stream),
                _ => None,
            })
            .unwrap_or_else(|e| panic!("round {round}: the edge must OPEN a stream: {e}"));

        let rustls::StreamOwned { conn, sock } = carrier;
        sock.set_write_timeout(None).expect("blocking writes");
        let conn = Arc::new(Mutex::new(conn));
        let written = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (conn, written, stop) = (conn.clone(), written.clone(), stop.clone());
            let sock = sock.try_clone().expect("clone the socket");
            thread::spawn(move || keep_writing(conn, sock, written, stop))
        };
        // The origin grants no window: once the edge has forwarded the window and filled its
        // buffer, the client's bytes wait unread in the edge's socket.
        wait_until(
            Duration::from_secs(10),
            "the client has written more than the edge reads",
            || written.load(Ordering::SeqCst) > UNREAD || writer.is_finished(),
        );

        origin.send(&Frame::Rst {
            stream,
            code: ResetCode::NoService,
            reason: REASON,
        });
        let mut reader = sock.try_clone().expect("clone the socket");
        let seen = read_to_the_end(&conn, &mut reader, already);

        stop.store(true, Ordering::SeqCst);
        let _ = sock.shutdown(Shutdown::Both);
        let write_error = writer.join().expect("writer thread");
        let unread = written.load(Ordering::SeqCst);
        let end = seen.unwrap_or_else(|e| {
            panic!(
                "round {round}: the edge's deliberate close must end with a FIN while the \
                 client keeps writing ({unread} bytes written); the client saw: {e}; \
                 its writes: {write_error:?}"
            )
        });
        assert!(
            write_error.is_none(),
            "round {round}: a client write failed before the edge's FIN: {write_error:?}"
        );
        let (code, reason) = end.close.clone().unwrap_or_else(|| {
            panic!("round {round}: the client must read the edge's Close; saw {end:?}")
        });
        assert_eq!(code, 1013, "round {round}: Close code (try again later)");
        assert!(
            reason.contains(REASON),
            "round {round}: the Close names why: {reason:?}"
        );
        assert!(
            end.close_notify,
            "round {round}: TLS close_notify before the FIN"
        );
    }
    assert!(
        edge.child().try_wait().is_none(),
        "the edge exited:\n{}",
        edge.stderr_text()
    );
}
