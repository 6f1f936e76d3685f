//! The client's splice driver: the mio side of [`Splice`]. It reads and writes the carrier's
//! socket (TLS records, through [`TlsConn`]) and the local side (stdio or TCP, through
//! [`Local`]), hands the bytes to the core and does what the core's outputs say. It makes no
//! protocol decision: which bytes go where, when a direction closes and when the session ends
//! are the core's (`core.rs`).
//!
//! `access ssh` runs one session on its own loop here ([`ssh`]); `access tcp` runs many on
//! the listener's loop (`listener.rs`), each a [`Session`].

use std::io;
use std::time::Instant;

use log::debug;
use mio::{Events, Interest, Poll, Registry, Token};

use super::core::{LocalKind, Output, Splice, LOCAL_READ};
use super::{authorize, client_config, event_loop, AccessError, AccessOptions, TokenCache};
use crate::io::local::Local;
use crate::io::tls::TlsConn;
use crate::io::would_block;
use crate::limits::TLS_READ_STAGE;

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
    Running,
    Done,
}

/// One carrier spliced with one local endpoint: the sockets and the core that decides.
pub(super) struct Session {
    pub(super) tls: TlsConn,
    pub(super) local: Local,
    core: Splice,
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
        }
    }

    /// Moves what can move now, both ways; call on every readiness event of the session.
    pub(super) fn pump(
        &mut self,
        registry: &Registry,
        bufs: &mut LoopBufs,
    ) -> Result<Progress, AccessError> {
        loop {
            let full = self.tls.read(&mut bufs.stage).map_err(edge_failed)?;
            let progress = self.step(registry, bufs)?;
            if !(full && self.tls.has_room()) || matches!(progress, Progress::Done) {
                return Ok(progress);
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
        while self.core.wants_local_input() {
            let buf = &mut bufs.local;
            match self.local.read(buf) {
                Ok(0) => self.core.handle_local_eof(),
                Ok(n) => {
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
        Ok(Progress::Running)
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
/// `authorize`).
pub fn ssh(mut opts: AccessOptions) -> Result<(), AccessError> {
    let cfg = client_config(opts.extra_ca.as_deref())?;
    let tls = authorize::open_authorized(&mut opts, &cfg, &TokenCache::open_default())?;
    let local = Local::stdio().map_err(|error| AccessError::Local {
        what: "stdio",
        error,
    })?;
    let mut poll = Poll::new().map_err(event_loop)?;
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
        match s.pump(poll.registry(), &mut bufs) {
            Ok(Progress::Running) => {}
            Ok(Progress::Done) => {
                s.local.finish();
                return Ok(());
            }
            Err(e) => {
                s.local.finish();
                return Err(e);
            }
        }
        let timeout = s
            .core
            .poll_timeout()
            .map(|at| at.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(event_loop(e));
            }
        }
        s.core.handle_timeout(Instant::now());
    }
}
