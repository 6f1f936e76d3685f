//! The client's splice driver: the mio side of [`Splice`]. It reads and writes the carrier's
//! socket (TLS records, through [`TlsConn`]) and the local side (stdio or TCP, through
//! [`Local`]), hands the bytes to the core and does what the core's outputs say. It makes no
//! protocol decision: which bytes go where, when a direction closes and when the session ends
//! are the core's (`core.rs`).
//!
//! `access ssh` runs one session on its own loop here ([`ssh`]); `access tcp` runs many on
//! the listener's loop (`listener.rs`), each a [`Session`].

use std::io;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use log::debug;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use rustls::ClientConfig;

use super::core::{LocalKind, Output, Splice, LOCAL_READ};
use super::resumable::{Output as ResumableOutput, Resumable};
use super::{authorize, client_config, event_loop, AccessError, AccessOptions, TokenCache};
use crate::io::local::Local;
use crate::io::tls::TlsConn;
use crate::io::would_block;
use crate::limits::{SESSION_TURN_BYTES, TLS_READ_STAGE, URGENT_READABLE};
use crate::proto::resume;

/// A failure of the connection to the edge once it is up.
fn edge_failed(error: io::Error) -> AccessError {
    AccessError::Connection {
        doing: "connection to the edge",
        error,
    }
}

/// Buffers an event loop lends to each session in turn: an idle session holds none of them.
pub(super) struct LoopBufs {
    /// Ciphertext staging for `TlsConn::read`.
    stage: Vec<u8>,
    /// Bytes read from the local side, masked in place and framed without a copy.
    local: Vec<u8>,
}

impl LoopBufs {
    pub(super) fn new() -> Self {
        LoopBufs {
            stage: vec![0; TLS_READ_STAGE],
            local: vec![0; LOCAL_READ],
        }
    }
}

pub(super) enum Progress {
    /// Waiting for readiness.
    Running,
    /// Stopped at its turn's bound ([`SESSION_TURN_BYTES`]) with input left: the loop calls
    /// it again on its next pass without waiting (no readiness event would come for the
    /// bytes already there).
    More,
    Done,
}

/// One carrier spliced with one local endpoint: the sockets and the core that decides.
pub(super) struct Session {
    pub(super) tls: TlsConn,
    pub(super) local: Local,
    core: Splice,
    /// The most it moves each way in one call of [`Session::pump`] ([`SESSION_TURN_BYTES`]).
    turn: usize,
    /// Bytes its last [`Session::pump`] moved, both ways together: see [`Session::is_light`].
    moved: usize,
}

impl Session {
    pub(super) fn new(tls: TlsConn, local: Local) -> Self {
        let kind = match local {
            Local::Stdio { .. } => LocalKind::Stdio,
            Local::Tcp(_) => LocalKind::Tcp,
        };
        Session {
            tls,
            local,
            core: Splice::new(kind),
            turn: SESSION_TURN_BYTES,
            moved: 0,
        }
    }

    /// True when its last pump moved at most [`URGENT_READABLE`] bytes: a keystroke or its
    /// echo, not a transfer. A loop serving many sessions runs these first in a pass, so that
    /// an echo does not wait behind another session's bulk turn (docs/design.md §2.8,
    /// "Urgent").
    pub(super) fn is_light(&self) -> bool {
        self.moved <= URGENT_READABLE
    }

    /// Moves what can move now, both ways; call on every readiness event of the session.
    pub(super) fn pump(
        &mut self,
        registry: &Registry,
        bufs: &mut LoopBufs,
    ) -> Result<Progress, AccessError> {
        // The edge's bytes this turn, taken from the TLS plaintext by the core.
        let mut taken = 0;
        self.moved = 0;
        loop {
            let full = self.tls.read(&mut bufs.stage).map_err(edge_failed)?;
            let before = self.tls.rx.len();
            let progress = self.step(registry, bufs)?;
            let took = before.saturating_sub(self.tls.rx.len());
            taken += took;
            self.moved += took;
            if !(full && self.tls.has_room() && matches!(progress, Progress::Running)) {
                return Ok(progress);
            }
            if taken >= self.turn {
                return Ok(Progress::More);
            }
        }
    }

    fn step(&mut self, registry: &Registry, bufs: &mut LoopBufs) -> Result<Progress, AccessError> {
        // Edge → local.
        loop {
            self.write_local();
            if !self.core.wants_edge_input() {
                break;
            }
            let before = self.tls.rx.len();
            self.core.handle_edge_input(&mut self.tls.rx)?;
            if self.tls.rx.len() == before {
                // Nothing decodable yet: wait for more of the edge's bytes.
                break;
            }
        }
        if self.do_outputs(registry) {
            return Ok(Progress::Done);
        }
        if self.tls.peer_closed {
            self.core.handle_edge_closed()?;
        }
        // Local → edge, one bounded batch at a time. Flush first: the core must see what the
        // socket took since the last pass, or no event would ever resume reading the local side.
        self.flush()?;
        let mut taken = 0;
        let mut more = false;
        while self.core.wants_local_input() {
            if taken >= self.turn {
                more = true;
                break;
            }
            let buf = &mut bufs.local;
            match self.local.read(buf) {
                Ok(0) => self.core.handle_local_eof(),
                Ok(n) => {
                    taken += n;
                    self.moved += n;
                    let header = self.core.handle_local_input(&mut buf[..n]);
                    self.tls.send_vectored(&[header.bytes(), &buf[..n]]);
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return Err(AccessError::Local {
                        what: "local read failed",
                        error,
                    })
                }
            }
            if self.do_outputs(registry) {
                return Ok(Progress::Done);
            }
            self.flush()?;
        }
        self.flush()?;
        // A flush that drained the socket may release a pong: send it now, or it would wait
        // for the next event.
        while self.core.has_output() {
            if self.do_outputs(registry) {
                return Ok(Progress::Done);
            }
            self.flush()?;
        }
        Ok(if more {
            Progress::More
        } else {
            Progress::Running
        })
    }

    /// Writes what the core has for the local side until it would block.
    fn write_local(&mut self) {
        loop {
            let data = self.core.to_local();
            if data.is_empty() {
                return;
            }
            match self.local.write(data) {
                Ok(n) => self.core.local_written(n),
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("local write: {e}");
                    self.core.local_write_failed();
                    return;
                }
            }
        }
    }

    /// Writes queued ciphertext and tells the core when all of it reached the socket.
    fn flush(&mut self) -> Result<(), AccessError> {
        self.tls.flush().map_err(edge_failed)?;
        if self.tls.can_send() {
            self.core.handle_edge_drained();
        }
        Ok(())
    }

    /// Does what the core asked for. Returns true when the session is finished (its TLS
    /// close_notify sent).
    fn do_outputs(&mut self, registry: &Registry) -> bool {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::ToEdge(frame) => self.tls.send(&frame),
                Output::ShutdownLocalRead => self.local.shutdown_read(registry),
                Output::ShutdownLocalWrite => self.local.shutdown_write(registry),
                Output::Finished => {
                    self.tls.close();
                    return true;
                }
            }
        }
        false
    }
}

/// `postern access ssh`: splice stdin/stdout with a carrier (ssh's ProxyCommand). Without a
/// service token, uses the cached app token or logs in through the browser (see
/// `authorize`). The stream is resumable when the edge grants it (docs/design.md §2.6): a
/// lost carrier is replaced and the stream goes on where it stopped.
pub fn ssh(mut opts: AccessOptions) -> Result<(), AccessError> {
    let cfg = client_config(opts.extra_ca.as_deref())?;
    if opts.resume.is_none() && resume_wanted() {
        opts.resume = Some(resume::Ask::Start.value());
    }
    let tls = authorize::open_authorized(&mut opts, &cfg, &TokenCache::open_default())?;
    let local = Local::stdio().map_err(|error| AccessError::Local {
        what: "stdio",
        error,
    })?;
    match opts.resume_granted.take() {
        Some(connector) => ssh_resumable(opts, cfg, tls, local, connector),
        None => ssh_plain(tls, local),
    }
}

/// `POSTERN_RESUME=0` turns resumable streams off (for comparison and for edges in front of
/// which something strips unknown headers).
fn resume_wanted() -> bool {
    !matches!(
        std::env::var("POSTERN_RESUME").as_deref(),
        Ok("0" | "off" | "false" | "no")
    )
}

/// One carrier, one stream: its end is the session's end.
fn ssh_plain(tls: TlsConn, local: Local) -> Result<(), AccessError> {
    let mut poll = Poll::new().map_err(event_loop)?;
    let mut signals = ssh_signals(poll.registry())?;
    let mut s = Session::new(tls, local);
    poll.registry()
        .register(
            &mut s.tls.sock,
            Token(0),
            Interest::READABLE | Interest::WRITABLE,
        )
        .map_err(event_loop)?;
    s.local
        .register(poll.registry(), Token(1), Token(2))
        .map_err(event_loop)?;
    let mut events = Events::with_capacity(16);
    let mut bufs = LoopBufs::new();
    loop {
        let more = match s.pump(poll.registry(), &mut bufs) {
            Ok(Progress::Running) => false,
            Ok(Progress::More) => true,
            Ok(Progress::Done) => {
                s.local.finish();
                return Ok(());
            }
            Err(e) => {
                s.local.finish();
                return Err(e);
            }
        };
        let timeout = if more {
            Some(Duration::ZERO)
        } else {
            s.core
                .poll_timeout()
                .map(|at| at.saturating_duration_since(Instant::now()))
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(event_loop(e));
            }
        }
        if ended_by_ssh(&mut signals) {
            let mut close = Vec::new();
            crate::proto::ws::encode_close(
                &mut close,
                crate::proto::ws::close::NORMAL,
                "",
                Some(crate::io::random_bytes()),
            );
            s.tls.send(&close);
            s.tls.close();
            s.local.finish();
            return Ok(());
        }
        s.core.handle_timeout(Instant::now());
    }
}

const SIGNALS: Token = Token(4);

/// ssh ends its ProxyCommand with SIGHUP when it exits (and a user may send SIGTERM or
/// SIGINT): caught, so that the session ends with a WebSocket Close rather than a dropped
/// connection, which the edge and the origin would take for a lost path and keep the
/// service connection for resumption.
fn ssh_signals(registry: &Registry) -> Result<crate::io::Signals, AccessError> {
    let mut signals = crate::io::Signals::with_reload().map_err(event_loop)?;
    registry
        .register(&mut signals.rx, SIGNALS, Interest::READABLE)
        .map_err(event_loop)?;
    Ok(signals)
}

/// True when ssh (or the user) asked this process to end.
fn ended_by_ssh(signals: &mut crate::io::Signals) -> bool {
    let terminate = signals.take();
    let hangup = signals.take_reload();
    if terminate || hangup {
        debug!("ended by a signal: closing the session");
    }
    terminate || hangup
}

const CARRIER: Token = Token(0);
const WAKER: Token = Token(3);

/// A carrier set up on a thread: the options come back with it.
type SetUp = (AccessOptions, Result<TlsConn, AccessError>);

/// The resumable session's loop: ssh's stdio, the current carrier (if any), and a thread
/// that sets up the next one when a path is lost.
fn ssh_resumable(
    opts: AccessOptions,
    cfg: Arc<ClientConfig>,
    tls: TlsConn,
    mut local: Local,
    connector: String,
) -> Result<(), AccessError> {
    let mut poll = Poll::new().map_err(event_loop)?;
    let mut signals = ssh_signals(poll.registry())?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(event_loop)?);
    let (done_tx, done_rx) = mpsc::channel::<SetUp>();
    local
        .register(poll.registry(), Token(1), Token(2))
        .map_err(event_loop)?;
    let mut core = Resumable::new(connector, Instant::now());
    debug!("stream {}: resumable", core.label());
    let mut carrier = Some(tls);
    attach(poll.registry(), carrier.as_mut())?;
    let mut opts = Some(opts);
    let mut events = Events::with_capacity(16);
    let mut stage = vec![0u8; TLS_READ_STAGE];
    let result = loop {
        let step = pump_resumable(&mut core, &mut carrier, &mut local, &mut stage);
        if let Err(e) = step {
            break Err(e);
        }
        let mut finished = false;
        while let Some(out) = core.poll_output() {
            match out {
                ResumableOutput::DropCarrier => carrier = None,
                ResumableOutput::Connect { ask } => {
                    let mut o = opts.take().expect("bug: one carrier setup at a time");
                    o.resume = Some(ask);
                    o.resume_granted = None;
                    let (cfg, done, waker) = (cfg.clone(), done_tx.clone(), waker.clone());
                    std::thread::Builder::new()
                        .name("carrier setup".into())
                        .spawn(move || {
                            let r = authorize::open_authorized(
                                &mut o,
                                &cfg,
                                &TokenCache::open_default(),
                            );
                            let _ = done.send((o, r));
                            let _ = waker.wake();
                        })
                        .map_err(event_loop)?;
                }
                ResumableOutput::Finished => finished = true,
            }
        }
        if finished {
            if let Some(c) = carrier.as_mut() {
                c.send(core.farewell());
                c.close();
            }
            break Ok(());
        }
        let timeout = core
            .poll_timeout()
            .map(|at| at.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                break Err(event_loop(e));
            }
        }
        if ended_by_ssh(&mut signals) {
            // ssh is gone: nothing to resume. Said so to the edge, if a path is up.
            if let Some(c) = carrier.as_mut() {
                c.send(core.farewell());
                c.close();
            }
            break Ok(());
        }
        let now = Instant::now();
        while let Ok((o, r)) = done_rx.try_recv() {
            let granted = o.resume_granted.clone();
            opts = Some(o);
            let outcome = match r {
                Ok(tls) => {
                    carrier = Some(tls);
                    attach(poll.registry(), carrier.as_mut())?;
                    core.connected(granted.as_deref(), now)
                }
                Err(e) => core.connect_failed(e, now),
            };
            if let Err(e) = outcome {
                local.finish();
                return Err(e);
            }
        }
        if let Err(e) = core.handle_timeout(now) {
            break Err(e);
        }
    };
    local.finish();
    result
}

fn attach(registry: &Registry, carrier: Option<&mut TlsConn>) -> Result<(), AccessError> {
    if let Some(c) = carrier {
        registry
            .register(
                &mut c.sock,
                CARRIER,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(event_loop)?;
    }
    Ok(())
}

/// Moves what can move now: the carrier's bytes to ssh, ssh's bytes into the replay buffer,
/// frames to the carrier. A carrier that fails is reported to the core as a lost path.
fn pump_resumable(
    core: &mut Resumable,
    carrier: &mut Option<TlsConn>,
    local: &mut Local,
    stage: &mut [u8],
) -> Result<(), AccessError> {
    let now = Instant::now();
    loop {
        let mut moved = false;
        if let Some(c) = carrier.as_mut() {
            if let Err(e) = c.read(stage) {
                last_words(core, c, None, now)?;
                core.handle_edge_closed(&format!("{e}"), now);
                *carrier = None;
            }
        }
        if let Some(c) = carrier.as_mut() {
            while core.wants_edge_input() && !c.rx.is_empty() {
                let before = c.rx.len();
                core.handle_edge_input(&mut c.rx, now)?;
                if c.rx.len() == before {
                    break;
                }
                moved = true;
            }
        }
        // Carrier → ssh.
        loop {
            let data = core.to_local();
            if data.is_empty() {
                break;
            }
            match local.write(data) {
                Ok(n) => {
                    core.local_written(n)?;
                    moved = true;
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return Err(AccessError::Local {
                        what: "local write failed",
                        error,
                    })
                }
            }
        }
        if !core.attached() {
            *carrier = None;
        }
        if let Some(c) = carrier.as_ref() {
            if c.peer_closed && c.rx.is_empty() {
                core.handle_edge_closed("the edge closed the connection", now);
                *carrier = None;
            }
        }
        // ssh → replay buffer.
        while core.wants_local_input() {
            match core.local_fill(|b| local.read(b)) {
                None => break,
                Some(Ok(0)) => {
                    moved = true;
                    break;
                }
                Some(Ok(_)) => moved = true,
                Some(Err(e)) if would_block(&e) => break,
                Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Some(Err(error)) => {
                    return Err(AccessError::Local {
                        what: "local read failed",
                        error,
                    })
                }
            }
        }
        // Replay buffer → carrier, a frame at a time as the socket takes them.
        if let Some(c) = carrier.as_mut() {
            loop {
                if let Err(e) = c.flush() {
                    last_words(core, c, Some(&mut *stage), now)?;
                    core.handle_edge_closed(&format!("{e}"), now);
                    *carrier = None;
                    break;
                }
                if c.can_send() {
                    core.handle_edge_drained();
                }
                match core.poll_transmit() {
                    Some(frame) => {
                        c.send(frame);
                        moved = true;
                    }
                    None => break,
                }
            }
        }
        if !moved {
            return Ok(());
        }
    }
}

/// Before a broken carrier counts as a lost path: what the edge said before it broke. An edge
/// that ends a stream on purpose sends a Close with the reason and then closes; a write of ours
/// that crossed it gets a reset, and the Close may still wait in the socket (`stage`: read it
/// once more). A Close with an error ends the session with its reason instead of a resume.
fn last_words(
    core: &mut Resumable,
    c: &mut TlsConn,
    stage: Option<&mut [u8]>,
    now: Instant,
) -> Result<(), AccessError> {
    if let Some(stage) = stage {
        let _ = c.read(stage);
    }
    while core.wants_edge_input() && !c.rx.is_empty() {
        let before = c.rx.len();
        core.handle_edge_input(&mut c.rx, now)?;
        if c.rx.len() == before {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    use super::*;
    use crate::store::tests::TempDir;

    /// `access tcp` runs every session on one loop: a session that took all the local input
    /// there was (a bulk upload, faster than the edge path drains it) kept the loop for as long
    /// as the edge's socket buffer took more, megabytes on loopback, while an interactive
    /// session beside it waited. A call takes at most a turn's bytes and says `More`; the
    /// calls that follow, without any readiness event, move the rest. Meanwhile the session
    /// is not light (the loop serves light ones first); a keystroke after makes it light again.
    #[test]
    fn a_bulk_upload_does_not_keep_the_loop_to_itself() {
        let tmp = TempDir::new("access-turn");
        let (server, client) = crate::io::tls::tests::localhost_configs(&tmp);

        // The edge: a TLS server that counts the plaintext it receives.
        let edge = TcpListener::bind("127.0.0.1:0").unwrap();
        let edge_addr = edge.local_addr().unwrap();
        let (count_tx, count_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (sock, _) = edge.accept().unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(server)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let mut buf = vec![0; 64 * 1024];
            let mut total = 0usize;
            while let Ok(n) = tls.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
                let _ = count_tx.send(total);
            }
        });
        let mut sock = TcpStream::connect(edge_addr).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        sock.set_nonblocking(true).unwrap();
        let tls = TlsConn::new(mio::net::TcpStream::from_std(sock), conn);

        // The local side, with more queued than several turns.
        let local = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut app = TcpStream::connect(local.local_addr().unwrap()).unwrap();
        let (ours, _) = local.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        app.set_nonblocking(true).unwrap();
        let chunk = [7u8; 16 * 1024];
        let mut queued = 0;
        while queued < 1024 * 1024 {
            match app.write(&chunk) {
                Ok(n) => queued += n,
                Err(e) if would_block(&e) => break,
                Err(e) => panic!("local write: {e}"),
            }
        }
        let mut s = Session::new(tls, Local::Tcp(mio::net::TcpStream::from_std(ours)));
        s.turn = 16 * 1024;
        assert!(
            queued >= 8 * s.turn,
            "only {queued} bytes queued: the test needs several turns"
        );

        let poll = mio::Poll::new().unwrap();
        let mut bufs = LoopBufs::new();
        let first = s.pump(poll.registry(), &mut bufs).unwrap();
        assert!(
            matches!(first, Progress::More),
            "one call took all {queued} queued bytes instead of a turn"
        );
        // A session that moved a turn of bulk is not served before the others of a pass.
        assert!(!s.is_light(), "a bulk turn left the session light");
        let mut calls = 1;
        while matches!(s.pump(poll.registry(), &mut bufs).unwrap(), Progress::More) {
            calls += 1;
            assert!(calls < 10_000, "the turns never ended");
        }
        // A turn ends at the first read that reaches it: at most a turn and a read.
        let most = s.turn + LOCAL_READ;
        assert!(calls >= queued / most, "{calls} calls for {queued} bytes");
        // Everything queued reached the edge (framed: a little more than the payload).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut received = 0;
        while received < queued {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            received = count_rx
                .recv_timeout(left)
                .expect("the edge got less than was queued");
            let _ = s.pump(poll.registry(), &mut bufs);
        }
        // Then a keystroke: the pump that moves it counts only it, so the session is light
        // again (what it moved before does not carry over).
        loop {
            s.pump(poll.registry(), &mut bufs).unwrap();
            match count_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(n) => received = n,
                Err(_) => break,
            }
        }
        let before = received;
        app.write_all(b"k").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while received == before {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            s.pump(poll.registry(), &mut bufs).unwrap();
            if let Ok(n) = count_rx.recv_timeout(left.min(Duration::from_millis(10))) {
                received = n;
            }
            assert!(!left.is_zero(), "the keystroke never reached the edge");
        }
        assert!(
            s.is_light(),
            "a pump that moved one byte left the session heavy"
        );
    }
}
