//! Hand-made clients for the bad-input tests: TLS to the edge as a carrier or as a tunnel,
//! WebSocket and mux frames written byte by byte, and a process's memory from `/proc`.
//!
//! Every read has a timeout; waits poll against a deadline.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use postern::pki::OriginCredential;
use postern::proto::mux::{decode_frame, encode, Frame};

use super::ServiceToken;

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Read timeout of one poll of a raw connection.
const POLL_READ: Duration = Duration::from_millis(50);

fn client_config(ca: &Path, alpn: &[u8], credential: Option<&Path>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("open CA file") {
        roots
            .add(cert.expect("parse CA file"))
            .expect("add CA root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match credential {
        Some(path) => {
            let text = std::fs::read_to_string(path).expect("read origin credential");
            let cred = OriginCredential::parse(&text)
                .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
            builder
                .with_client_auth_cert(vec![cred.cert], cred.key)
                .expect("client certificate")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

fn connect(edge: SocketAddr, config: Arc<ClientConfig>, sni: &str) -> io::Result<Tls> {
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let tcp = TcpStream::connect(edge)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// A carrier connection (SNI `host`, ALPN `http/1.1`) with its TLS handshake done.
pub fn carrier(edge: SocketAddr, ca: &Path, host: &str) -> Tls {
    connect(edge, client_config(ca, b"http/1.1", None), host)
        .unwrap_or_else(|e| panic!("TLS to the edge as {host}: {e}"))
}

/// [`carrier`], with the failure returned instead of a panic (for load from helper threads).
pub fn try_carrier(edge: SocketAddr, ca: &Path, host: &str) -> io::Result<Tls> {
    connect(edge, client_config(ca, b"http/1.1", None), host)
}

/// A tunnel-ALPN connection presenting `credential` (an origin `cert.pem`) or no certificate.
/// With TLS 1.3 the client finishes first: a refused certificate shows up on the first read.
pub fn tunnel_tls(edge: SocketAddr, ca: &Path, credential: Option<&Path>) -> io::Result<Tls> {
    connect(
        edge,
        client_config(ca, postern::proto::mux::ALPN, credential),
        "tunnel.localhost",
    )
}

/// A WebSocket upgrade for `host` with a service token.
pub fn upgrade_request(host: &str, token: &ServiceToken) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         CF-Access-Client-Id: {}\r\nCF-Access-Client-Secret: {}\r\n\r\n",
        token.id, token.secret
    )
    .into_bytes()
}

/// Reads a response head; returns it as text and whatever bytes followed it.
pub fn read_head(tls: &mut Tls) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tls.read(&mut buf) {
            Ok(0) => break got.len(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if got.is_empty() => panic!("no response from the edge: {e}"),
            Err(_) => break got.len(),
        }
    };
    let rest = got.split_off(end);
    (String::from_utf8_lossy(&got).into_owned(), rest)
}

/// Upgrades a carrier to `host` with `token` and asserts `101`; returns bytes read past it.
pub fn open_websocket(tls: &mut Tls, host: &str, token: &ServiceToken) -> Vec<u8> {
    tls.write_all(&upgrade_request(host, token))
        .expect("send upgrade");
    let (head, rest) = read_head(tls);
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "the upgrade to {host} must succeed; got:\n{head}"
    );
    rest
}

/// One WebSocket frame with the given first byte (FIN, RSV and opcode) and payload, masked
/// with `mask` if given; the length is declared as `declared` (normally `payload.len()`).
pub fn ws_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>, declared: u64) -> Vec<u8> {
    let mut out = vec![first];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match declared {
        0..=125 => out.push(bit | declared as u8),
        126..=0xffff => {
            out.push(bit | 126);
            out.extend_from_slice(&(declared as u16).to_be_bytes());
        }
        _ => {
            out.push(bit | 127);
            out.extend_from_slice(&declared.to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads server frames (after `already`) until a Close; its status code, or `Err` with what
/// happened instead (EOF, error, deadline).
pub fn read_close_code(tls: &mut Tls, already: Vec<u8>, deadline: Duration) -> Result<u16, String> {
    let start = Instant::now();
    let mut got = already;
    let mut buf = [0u8; 16 * 1024];
    tls.sock.set_read_timeout(Some(POLL_READ)).expect("timeout");
    loop {
        // Skip whole frames until a Close (0x88).
        while let Some((first, payload)) = next_frame(&mut got) {
            if first & 0x0f == 0x8 {
                return match payload.len() {
                    0 => Ok(1005),
                    1 => Err("Close frame with a 1-byte payload".into()),
                    _ => Ok(u16::from_be_bytes([payload[0], payload[1]])),
                };
            }
        }
        if start.elapsed() > deadline {
            return Err(format!("no Close frame within {deadline:?}"));
        }
        match tls.read(&mut buf) {
            Ok(0) => return Err("EOF before a Close frame".into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if timed_out(&e) => {}
            Err(e) => return Err(format!("read error before a Close frame: {e}")),
        }
    }
}

/// Takes the first whole WebSocket frame off `wire`, as the edge sends them (never masked):
/// its first byte (FIN and opcode) and its payload. `None` until a whole frame is there.
pub fn next_frame(wire: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    if wire.len() < 2 {
        return None;
    }
    let (len, head) = match wire[1] & 0x7f {
        126 if wire.len() >= 4 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
        127 if wire.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&wire[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if wire.len() < head + len {
        return None;
    }
    let first = wire[0];
    let payload = wire[head..head + len].to_vec();
    wire.drain(..head + len);
    Some((first, payload))
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads (discarding) until the peer closes (EOF or a TLS/TCP error); how long that took, or
/// `Err` if `deadline` passes first.
pub fn wait_closed(stream: &mut impl Read, deadline: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(start.elapsed()),
            Ok(_) => {}
            Err(e) if timed_out(&e) => {}
            Err(_) => return Ok(start.elapsed()),
        }
        if start.elapsed() > deadline {
            return Err(format!("still open after {deadline:?}"));
        }
    }
}

/// Whether a plain TCP connection is still open: no EOF or reset within one short read.
pub fn tcp_open(sock: &mut TcpStream) -> bool {
    sock.set_read_timeout(Some(POLL_READ)).expect("timeout");
    let mut buf = [0u8; 64];
    match sock.read(&mut buf) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => timed_out(&e),
    }
}

/// A hand-driven tunnel connection: mutual TLS with an origin credential, then mux frames.
pub struct RawTunnel {
    pub tls: Tls,
    buf: Vec<u8>,
}

impl RawTunnel {
    /// Connects, sends HELLO and REGISTER for `hostname`, and waits for REGISTERED.
    pub fn register(edge: SocketAddr, ca: &Path, credential: &Path, hostname: &str) -> RawTunnel {
        Self::try_register(edge, ca, credential, hostname)
            .unwrap_or_else(|(code, message)| panic!("REGISTER refused: {code} {message}"))
    }

    /// Like [`RawTunnel::register`], but a refusal is `Err` with the ERROR's code and message.
    pub fn try_register(
        edge: SocketAddr,
        ca: &Path,
        credential: &Path,
        hostname: &str,
    ) -> Result<RawTunnel, (u16, String)> {
        let tls = tunnel_tls(edge, ca, Some(credential))
            .unwrap_or_else(|e| panic!("tunnel TLS with an origin certificate: {e}"));
        let mut t = RawTunnel {
            tls,
            buf: Vec::new(),
        };
        t.send(&Frame::Hello {
            version: postern::proto::mux::PROTOCOL_VERSION,
            connector_id: [7; 16],
            ha_index: 0,
        });
        t.send(&Frame::Register {
            hostname,
            service: "ssh://127.0.0.1:1",
        });
        t.wait_for(Duration::from_secs(10), |f| match f {
            Frame::Registered { hostname: h } if *h == hostname => Some(Ok(())),
            Frame::Error { code, message } => Some(Err((code.to_u16(), message.to_string()))),
            _ => None,
        })
        .unwrap_or_else(|e| panic!("no REGISTERED or ERROR for {hostname}: {e}"))?;
        Ok(t)
    }

    /// Opens a carrier for `host` and upgrades it, so that the edge OPENs a stream on this
    /// tunnel; returns the carrier (keep it open) and the stream id.
    pub fn open_stream(
        &mut self,
        edge: SocketAddr,
        ca: &Path,
        host: &str,
        token: &ServiceToken,
    ) -> (Tls, u32) {
        let mut carrier = carrier(edge, ca, host);
        open_websocket(&mut carrier, host, token);
        let stream = self
            .wait_for(Duration::from_secs(10), |f| match f {
                Frame::Open { stream, .. } => Some(*stream),
                _ => None,
            })
            .unwrap_or_else(|e| panic!("the edge must OPEN a stream for the carrier: {e}"));
        (carrier, stream)
    }

    pub fn send(&mut self, frame: &Frame<'_>) {
        let mut out = Vec::new();
        encode(&mut out, frame);
        self.send_bytes(&out);
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).expect("write to the edge");
        self.tls.flush().expect("flush to the edge");
    }

    /// Reads frames until `pick` returns `Some`; `Err` on EOF, a read error or the deadline.
    pub fn wait_for<T>(
        &mut self,
        deadline: Duration,
        mut pick: impl FnMut(&Frame<'_>) -> Option<T>,
    ) -> Result<T, String> {
        let start = Instant::now();
        self.tls
            .sock
            .set_read_timeout(Some(POLL_READ))
            .expect("timeout");
        let mut chunk = [0u8; 16 * 1024];
        loop {
            loop {
                let (found, used) = match decode_frame(&self.buf) {
                    Ok(Some((frame, used))) => (pick(&frame), used),
                    Ok(None) => break,
                    Err(e) => return Err(format!("the edge sent a malformed frame: {e}")),
                };
                self.buf.drain(..used);
                if let Some(v) = found {
                    return Ok(v);
                }
            }
            if start.elapsed() > deadline {
                return Err(format!("nothing matched within {deadline:?}"));
            }
            match self.tls.read(&mut chunk) {
                Ok(0) => return Err("the edge closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if timed_out(&e) => {}
                Err(e) => return Err(format!("read error: {e}")),
            }
        }
    }

    /// Expects an ERROR frame from the edge and then the end of the connection; returns the
    /// ERROR's message.
    pub fn expect_error_and_close(&mut self, deadline: Duration) -> String {
        let message = self
            .wait_for(deadline, |f| match f {
                Frame::Error { code, message } => Some(format!("{code} {message}")),
                _ => None,
            })
            .unwrap_or_else(|e| panic!("expected an ERROR frame from the edge: {e}"));
        let closed = self.wait_for(deadline, |_| None::<()>);
        assert!(
            matches!(&closed, Err(e) if !e.starts_with("nothing matched")),
            "the edge must close the connection after ERROR: {closed:?}"
        );
        message
    }
}

/// Resident memory of a process in KiB (`VmRSS` in `/proc/PID/status`).
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}
