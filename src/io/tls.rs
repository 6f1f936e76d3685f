//! rustls driven the sans-IO way over a non-blocking mio socket.
//!
//! `read` moves ciphertext from the socket through rustls into the bounded plaintext buffer
//! `rx`, and stops when `rx` is full (backpressure: the peer's TCP window closes).
//! `send` hands plaintext to rustls; callers only produce more when `can_send` says the
//! previous batch reached the socket, so the outbound backlog stays bounded.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

use crate::limits::CONN_READ_BUFFER;
use crate::proto::buf::Buf;

/// The rustls error inside an IO error of a TLS connection (rustls and [`TlsConn`] wrap
/// them as `InvalidData`), so that advice can be chosen by its variant, not by its text.
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Free plaintext room below which `read` waits instead of reading (one TLS record).
const READ_MIN_ROOM: usize = 16 * 1024;

/// `S` is the transport: a mio socket for the roles' drivers, or any `Read + Write` (the
/// edge's core is handed its sockets as `io::Read + io::Write`, and its tests an in-memory pipe).
pub struct TlsConn<S = TcpStream> {
    pub sock: S,
    pub tls: rustls::Connection,
    /// Decrypted bytes waiting for the protocol on top.
    pub rx: Buf,
    /// The peer closed its side (close_notify or TCP EOF).
    pub peer_closed: bool,
    /// TCP EOF without close_notify (a truncation, unless the protocol above was done).
    pub truncated: bool,
    tcp_eof: bool,
}

impl<S: Read + Write> TlsConn<S> {
    pub fn new(sock: S, tls: impl Into<rustls::Connection>) -> Self {
        let mut tls: rustls::Connection = tls.into();
        // Bounded by `can_send` instead: with a limit, rustls would take part of a frame.
        tls.set_buffer_limit(None);
        TlsConn {
            sock,
            tls,
            rx: Buf::new(CONN_READ_BUFFER),
            peer_closed: false,
            truncated: false,
            tcp_eof: false,
        }
    }

    /// Reads and decrypts while `rx` has room. Errors are fatal for the connection.
    ///
    /// `stage` is the event loop's ciphertext buffer, shared by all its connections (so an
    /// idle connection holds none): the socket is read into it in one syscall, at most as much
    /// as `rx` can take now, and rustls is fed from it until it is consumed. (rustls' own
    /// `read_tls` reads at most 4 KiB per syscall.) Nothing is left in `stage` on return.
    ///
    /// Returns true when it stopped because `rx` was full (see [`TlsConn::has_room`]): the
    /// socket may hold more, and no new readiness event will say so (edge-triggered), so the
    /// caller must call again once `has_room` says so again.
    pub fn read(&mut self, stage: &mut [u8]) -> io::Result<bool> {
        loop {
            self.drain_plaintext()?;
            if self.peer_closed {
                return Ok(false);
            }
            if !self.has_room() {
                return Ok(true);
            }
            if self.tcp_eof {
                // rustls had nothing more to say: treat as truncated.
                self.peer_closed = true;
                self.truncated = true;
                return Ok(false);
            }
            // rustls holds no plaintext now (drained above, `rx` has room). Ciphertext read
            // here yields at most its own length in plaintext, plus at most one record's worth
            // completed from what rustls already buffered: that record may overflow `rx` and
            // waits inside rustls, which still accepts ciphertext while it holds one record.
            let want = stage.len().min(self.rx.space());
            let n = match self.sock.read(&mut stage[..want]) {
                Ok(0) => {
                    // TCP EOF: the next pass drains what is left, then rustls says whether
                    // close_notify came first (Ok(0)) or not (UnexpectedEof).
                    self.tcp_eof = true;
                    continue;
                }
                // A read that took less than it asked for does not end the pass: a FIN that
                // came with the last bytes raises no new readiness event, and only the next
                // read (0) tells of it (docs/design.md §2.8).
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut cipher = &stage[..n];
            while !cipher.is_empty() {
                // Never with an empty slice: rustls would take that for EOF.
                match self.tls.read_tls(&mut cipher) {
                    // close_notify came: what follows it means nothing.
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
                if let Err(e) = self.tls.process_new_packets() {
                    // Send the alert rustls queued before giving up.
                    let _ = self.flush();
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                self.drain_plaintext()?;
            }
        }
    }

    /// True when `rx` has room enough to be worth a socket read: [`READ_MIN_ROOM`] (or all of
    /// a smaller buffer). Below that, a consumer that frees a little at a time (a backpressured
    /// stream) would cost a syscall per little; every consumer either empties `rx` down to
    /// less than one protocol unit (frame, head) or waits for an event that resumes it.
    pub fn has_room(&self) -> bool {
        self.rx.space() >= READ_MIN_ROOM.min(self.rx.capacity())
    }

    /// Moves the plaintext rustls holds into `rx` while it has room; notes the peer's close.
    fn drain_plaintext(&mut self) -> io::Result<()> {
        while self.rx.space() > 0 && !self.peer_closed {
            let tls = &mut self.tls;
            match self.rx.read_from(|tail| tls.reader().read(tail)) {
                Ok(0) => self.peer_closed = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.peer_closed = true;
                    self.truncated = true;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// True when the previous output reached the socket: produce the next batch.
    pub fn can_send(&self) -> bool {
        !self.tls.wants_write() && !self.tls.is_handshaking()
    }

    /// Queues plaintext; rustls encrypts it into records.
    pub fn send(&mut self, data: &[u8]) {
        if !data.is_empty() {
            // Unlimited outbound buffer (see `new`): rustls takes everything or has failed,
            // and a failed connection reports its error on the next read or flush.
            let _ = self.tls.writer().write_all(data);
        }
    }

    /// Queues several slices as one write (a frame header and its payload).
    pub fn send_vectored(&mut self, parts: &[&[u8]]) {
        let slices: [io::IoSlice<'_>; 4] =
            std::array::from_fn(|i| io::IoSlice::new(parts.get(i).copied().unwrap_or(&[])));
        let n = parts.len().min(4);
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut written = self.tls.writer().write_vectored(&slices[..n]).unwrap_or(0);
        // rustls takes everything when unlimited; fall back to plain writes if it did not.
        if written < total {
            for p in parts {
                if written >= p.len() {
                    written -= p.len();
                    continue;
                }
                self.send(&p[written..]);
                written = 0;
            }
        }
    }

    /// Writes queued ciphertext until the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn close(&mut self) {
        self.tls.send_close_notify();
        let _ = self.flush();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use super::*;
    use crate::pki::Authority;
    use crate::store::tests::TempDir;
    use crate::store::StateDir;

    /// A socket fed by the test.
    #[derive(Default)]
    struct Counting {
        inbound: VecDeque<u8>,
        outbound: Vec<u8>,
        /// After `inbound`, the peer's FIN: reads return 0.
        eof: bool,
    }

    impl Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.inbound.is_empty() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(self.inbound.len());
            for (d, s) in buf.iter_mut().zip(self.inbound.drain(..n)) {
                *d = s;
            }
            Ok(n)
        }
    }

    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.outbound.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A server configuration with a certificate for `localhost` from a new CA in `tmp`, and
    /// a client configuration that trusts that CA (for tests of both ends of TLS).
    pub(crate) fn localhost_configs(tmp: &TempDir) -> (rustls::ServerConfig, rustls::ClientConfig) {
        let state = StateDir::open(&tmp.0).unwrap();
        let ca = Authority::load_or_create(&state, "ca", "tls test CA").unwrap();
        let (chain, key) = ca.issue_server(&["localhost".to_owned()]).unwrap();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der()).unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server, client)
    }

    /// A server `TlsConn` on a counting socket, handshaken with `client`.
    fn handshaken(tmp: &TempDir) -> (TlsConn<Counting>, rustls::ClientConnection) {
        let (server, client) = localhost_configs(tmp);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let server = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        let mut conn = TlsConn::new(Counting::default(), server);
        let mut stage = vec![0; 64 * 1024];
        for _ in 0..16 {
            let mut out = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut out).unwrap();
            }
            conn.sock.inbound.extend(out);
            conn.read(&mut stage).unwrap();
            conn.flush().unwrap();
            let back = std::mem::take(&mut conn.sock.outbound);
            let mut rd = &back[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
            }
            if !client.is_handshaking() && !conn.tls.is_handshaking() {
                return (conn, client);
            }
        }
        panic!("handshake did not settle");
    }

    /// A peer's last bytes and its FIN come in one readiness event: the read that takes the
    /// bytes is short, and only the read after it (EOF) tells of the FIN. A pass that ended at
    /// the short read would never hear of it.
    #[test]
    fn the_eof_behind_a_short_read_is_seen_in_the_same_pass() {
        let tmp = TempDir::new("tls-short-read");
        let (mut conn, mut client) = handshaken(&tmp);
        client.writer().write_all(&[7; 10_000]).unwrap();
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        conn.sock.inbound.extend(out);
        conn.sock.eof = true;
        let mut stage = vec![0; 64 * 1024];
        assert!(!conn.read(&mut stage).unwrap(), "rx is not full");
        assert_eq!(conn.rx.data(), &[7; 10_000][..]);
        assert!(
            conn.peer_closed && conn.truncated,
            "the FIN without close_notify is seen"
        );
    }
}
