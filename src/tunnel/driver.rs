//! The origin's driver: the mio loop around the link core (`core.rs`). It owns what touches
//! the OS: the sockets to the edge (or the proxy) and to the services, TLS record IO
//! (`io::tls::TlsConn`), the resolver thread (`resolve.rs`), signals, randomness and the
//! clock. It makes no protocol decision: readiness and results become core inputs, and
//! core outputs become connects, writes, closes and pumps.
//!
//! ```text
//!  poll ──readiness──▶ pump_edge / pump_service ──bytes, results, now──▶ Core
//!  Core::poll_output ──▶ connect, start TLS, close, resolve, pump ──▶ sockets, resolver
//!  Core::poll_timeout ──▶ the poll's timeout;  SIGTERM ──▶ Core::shutdown
//! ```

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::io::tls::TlsConn;
use crate::io::{random_bytes, random_u64, would_block, Signals};
use crate::limits::{CONN_WRITE_BATCH, TLS_READ_STAGE};
use crate::metrics::{self, Metrics};
use crate::pki;
use crate::proto::idmap::IdMap;
use crate::proto::mux;
use crate::proto::proxy;

use super::core::{self, ConnId, Core, Exit, Output, ServiceId, Waiter};
use super::resolve::{self, Lookup, Resolver};
use super::TunnelOptions;

const SIGNALS: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST: usize = 2;

/// The socket of one HA connection, as far as it got.
enum Sock {
    None,
    /// A TCP connect in progress.
    Connecting(TcpStream),
    /// Connected, talking to the proxy in the clear.
    Plain(TcpStream),
    Tls(Box<TlsConn>),
}

/// The TLS of edge connection `conn` if its previous output is on its socket (`can_send`):
/// where a direct frame may go now (docs/design.md §2.8).
fn sending_edge(edges: &mut [Edge], conn: ConnId) -> Option<&mut TlsConn> {
    match &mut edges.iter_mut().find(|e| e.conn == conn)?.sock {
        Sock::Tls(tls) if tls.can_send() => Some(tls),
        _ => None,
    }
}

struct Edge {
    conn: ConnId,
    sock: Sock,
}

struct Local {
    sock: TcpStream,
    id: ServiceId,
    connected: bool,
}

/// `postern tunnel`: builds the core from the options and runs the loop.
pub struct Origin {
    core: Core,
    tls: Arc<ClientConfig>,
    /// The SNI for each edge (by the core's edge index).
    server_names: Vec<ServerName<'static>>,
    poll: Poll,
    edges: Vec<Edge>,
    locals: Vec<Option<Local>>,
    /// Where each service's socket is in `locals` (its token's index).
    by_service: IdMap<ServiceId, usize>,
    free: Vec<usize>,
    /// Sockets to pump in this round of [`Origin::settle`].
    dirty: Vec<Token>,
    /// Services with a few bytes to write (`Output::PumpServiceFirst`): pumped before
    /// `dirty`, and inside an edge connection's pump before it reads or sends more.
    first: Vec<Token>,
    /// Per socket (token minus `FIRST`): in `dirty` or `next` (asking again changes nothing).
    queued: Vec<bool>,
    /// Per socket: pumped in the current round.
    has_run: Vec<bool>,
    /// Sockets pumped in the current round (to clear `has_run` at its end).
    ran: Vec<usize>,
    /// Sockets asked for after they were pumped in this round: the next pass of the loop,
    /// which then does not wait.
    next: Vec<Token>,
    scratch: Vec<u8>,
    /// Ciphertext staging for `TlsConn::read`, shared by every connection.
    stage: Vec<u8>,
    /// What `--metrics` serves.
    metrics: Arc<Metrics>,
    /// DNS off the loop.
    resolver: Resolver<Waiter>,
    /// Called once, when the first connection is registered (`--pidfile`).
    on_connected: Option<Box<dyn FnOnce()>>,
}

impl Origin {
    pub fn new(opts: TunnelOptions) -> io::Result<Origin> {
        let roots = pki::root_store(opts.extra_ca.as_deref(), &opts.credential.ca)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![opts.credential.cert.clone()],
                opts.credential.key.clone_key(),
            )
            .map_err(|e| io::Error::other(format!("origin certificate unusable: {e}")))?;
        tls.alpn_protocols = vec![mux::ALPN.to_vec()];
        if opts.edges.is_empty() {
            return Err(io::Error::other("no edge to connect to: set --edge"));
        }
        let mut server_names = Vec::new();
        let mut edges = Vec::new();
        for e in opts.edges {
            let name = ServerName::try_from(e.server_name.clone()).map_err(|_| {
                io::Error::other(format!("invalid TLS server name {}", e.server_name))
            })?;
            server_names.push(name);
            let edge_host = e.addr.rsplit_once(':').map_or(&*e.addr, |(h, _)| h);
            let proxy = proxy::proxy_for(edge_host, |k| std::env::var(k).ok())
                .map_err(|e| io::Error::other(e.to_string()))?;
            if let (Some(p), None) = (&proxy, proxy::split_host_port(&e.addr)) {
                return Err(io::Error::other(format!(
                    "the edge address {:?} is not HOST:PORT, which a CONNECT through the proxy \
                     {} needs: set --edge",
                    e.addr, p.addr
                )));
            }
            edges.push(core::EdgeTarget {
                addr: e.addr,
                proxy,
            });
        }
        let connector_id = random_bytes();
        let metrics = Metrics::new(metrics::Role::Tunnel, connector_id);
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let resolver = Resolver::start(Arc::new(resolve::system_lookup), move || {
            let _ = waker.wake();
        })?;
        let cfg = core::Config {
            registration: opts.registration,
            ingress: opts.ingress,
            edges,
            connector_id,
            grace: opts.grace,
            connections: opts.ha_connections,
            resume_window: opts.resume_window,
        };
        let mut core = Core::new(cfg, metrics.clone(), Box::new(random_u64), Instant::now());
        core.time_holds(Instant::now);
        let edges = (0..core.connections())
            .map(|slot| Edge {
                conn: ConnId { slot, epoch: 0 },
                sock: Sock::None,
            })
            .collect();
        Ok(Origin {
            core,
            tls: Arc::new(tls),
            server_names,
            poll,
            edges,
            locals: Vec::new(),
            by_service: IdMap::default(),
            free: Vec::new(),
            dirty: Vec::new(),
            first: Vec::new(),
            queued: Vec::new(),
            has_run: Vec::new(),
            ran: Vec::new(),
            next: Vec::new(),
            scratch: Vec::with_capacity(CONN_WRITE_BATCH + 64 * 1024),
            stage: vec![0; TLS_READ_STAGE],
            metrics,
            resolver,
            on_connected: None,
        })
    }

    /// Runs `f` once, on the loop, when the first connection is registered at an edge
    /// (cloudflared writes its `--pidfile` then).
    pub fn on_connected(&mut self, f: Box<dyn FnOnce()>) {
        self.on_connected = Some(f);
    }

    /// Serves `/metrics` and `/ready` on `addr` (one thread); returns the bound address.
    pub fn serve_metrics(&self, addr: &str) -> io::Result<SocketAddr> {
        crate::io::metrics_server::serve(addr, self.metrics.clone())
    }

    pub fn run(mut self) -> io::Result<Exit> {
        let mut signals = Signals::new()?;
        self.poll
            .registry()
            .register(&mut signals.rx, SIGNALS, Interest::READABLE)?;
        self.core.announce();
        let mut events = Events::with_capacity(1024);
        let mut turn = Instant::now();
        loop {
            let now = Instant::now();
            self.core.handle_timeout(now);
            self.settle();
            if let Some(exit) = self.core.take_exit() {
                return Ok(exit);
            }
            let timeout = if self.next.is_empty() {
                self.core.poll_timeout().saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            crate::io::yield_after_long_turn(turn, || self.core.more_than_one_stream());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            turn = Instant::now();
            for ev in events.iter() {
                if ev.token() == SIGNALS {
                    if signals.take() {
                        self.core.shutdown(Instant::now());
                    }
                } else if ev.token() == WAKER {
                    let now = Instant::now();
                    for (waiter, result) in self.resolver.answers(now) {
                        self.core.resolved(waiter, result, now);
                        self.apply();
                    }
                } else {
                    self.want(ev.token());
                }
            }
            self.settle();
            if self.metrics.ready_connections() > 0 {
                if let Some(f) = self.on_connected.take() {
                    f();
                }
            }
        }
    }

    /// Carries out the core's outputs and pumps what they and readiness made dirty, each
    /// socket at most once: one asked for again after its pump waits for the next pass of
    /// the loop. Without that bound a bulk stream's service socket and edge connection,
    /// asking for each other, kept one call going for the whole transfer: no other socket
    /// was polled and no keepalive sent meanwhile (the edge then drops the idle connections).
    fn settle(&mut self) {
        self.dirty.append(&mut self.next);
        self.apply();
        while let Some(tok) = self.first.pop().or_else(|| self.dirty.pop()) {
            self.pump(tok);
        }
        for i in self.ran.drain(..) {
            self.has_run[i] = false;
        }
    }

    /// Pumps `tok` once in this round (a second ask while it is listed twice does nothing).
    fn pump(&mut self, tok: Token) {
        let i = tok.0 - FIRST;
        if self.has_run[i] {
            return;
        }
        self.queued[i] = false;
        self.has_run[i] = true;
        self.ran.push(i);
        if i < self.edges.len() {
            self.pump_edge(i);
        } else {
            self.pump_service(i - self.edges.len());
        }
        self.apply();
    }

    /// Asks for a pump of `tok` before the others of this round (or in the next, if it has
    /// had one in this).
    fn want_first(&mut self, tok: Token) {
        self.want(tok);
        let i = tok.0 - FIRST;
        if !self.has_run[i] {
            self.first.push(tok); // maybe in `dirty` too: `pump` skips the second
        }
    }

    /// Asks for a pump of `tok` in this round, or in the next if it has had one in this.
    fn want(&mut self, tok: Token) {
        let i = tok.0 - FIRST;
        if self.queued.len() <= i {
            self.queued.resize(i + 1, false);
            self.has_run.resize(i + 1, false);
        }
        if !self.queued[i] {
            self.queued[i] = true;
            if self.has_run[i] {
                self.next.push(tok);
            } else {
                self.dirty.push(tok);
            }
        }
    }

    fn apply(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Resolve { waiter, name } => {
                    let now = Instant::now();
                    match self.resolver.lookup(&name, waiter, now) {
                        Lookup::Ready(addrs) => self.core.resolved(waiter, Ok(addrs), now),
                        Lookup::Failed(e) => self.core.resolved(waiter, Err(e), now),
                        Lookup::Pending => {}
                    }
                }
                Output::ConnectEdge { conn, addr } => self.connect_edge(conn, addr),
                Output::StartTls { conn, early } => self.start_tls(conn, &early),
                Output::CloseEdge { conn } => self.close_edge(conn),
                Output::ConnectService { service, addr } => self.connect_service(service, addr),
                Output::ShutdownService { service } => {
                    if let Some(l) = self.local_of(service) {
                        let _ = l.sock.shutdown(Shutdown::Write);
                    }
                }
                Output::CloseService { service } => {
                    if let Some(slot) = self.by_service.remove(&service) {
                        self.drop_local(slot);
                    }
                }
                Output::PumpEdge(conn) => {
                    if self.edges[conn.slot].conn == conn {
                        self.want(Token(FIRST + conn.slot));
                    }
                }
                Output::PumpService(service) => {
                    if let Some(&slot) = self.by_service.get(&service) {
                        self.want(Token(FIRST + self.edges.len() + slot));
                    }
                }
                Output::PumpServiceFirst(service) => {
                    if let Some(&slot) = self.by_service.get(&service) {
                        self.want_first(Token(FIRST + self.edges.len() + slot));
                    }
                }
            }
        }
    }

    fn local_of(&mut self, service: ServiceId) -> Option<&mut Local> {
        let slot = *self.by_service.get(&service)?;
        self.locals[slot].as_mut()
    }

    // ---- the connection to the edge ----

    /// A TCP connect to the first hop (the proxy or the edge), without waiting.
    fn connect_edge(&mut self, conn: ConnId, addr: SocketAddr) {
        let i = conn.slot;
        self.close_edge(self.edges[i].conn);
        self.edges[i].conn = conn;
        let registered = TcpStream::connect(addr).and_then(|mut sock| {
            let _ = sock.set_nodelay(true);
            self.poll.registry().register(
                &mut sock,
                Token(FIRST + i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(sock)
        });
        match registered {
            Ok(sock) => self.edges[i].sock = Sock::Connecting(sock),
            Err(e) => self
                .core
                .edge_connect_failed(conn, Some(addr), &e, Instant::now()),
        }
    }

    fn close_edge(&mut self, conn: ConnId) {
        let edge = &mut self.edges[conn.slot];
        if edge.conn != conn {
            return;
        }
        match std::mem::replace(&mut edge.sock, Sock::None) {
            Sock::None => {}
            Sock::Connecting(mut sock) | Sock::Plain(mut sock) => {
                let _ = self.poll.registry().deregister(&mut sock);
            }
            Sock::Tls(mut tls) => {
                tls.close();
                let _ = self.poll.registry().deregister(&mut tls.sock);
            }
        }
    }

    /// TLS on the connected socket, first given what followed the proxy's answer.
    fn start_tls(&mut self, conn: ConnId, early: &[u8]) {
        let edge = &mut self.edges[conn.slot];
        let sock = match std::mem::replace(&mut edge.sock, Sock::None) {
            Sock::Plain(sock) | Sock::Connecting(sock) => sock,
            other => {
                edge.sock = other;
                return;
            }
        };
        let server_name = self.server_names[self.core.edge_index(conn.slot)].clone();
        let started = rustls::ClientConnection::new(self.tls.clone(), server_name)
            .map_err(|e| format!("TLS setup: {e}"))
            .and_then(|mut tls| {
                proxy::hand_to_tls(&mut tls, early)
                    .map(|()| tls)
                    .map_err(|e| format!("TLS with the edge through the proxy: {e}"))
            });
        match started {
            Ok(tls) => edge.sock = Sock::Tls(Box::new(TlsConn::new(sock, tls))),
            Err(why) => {
                let mut sock = sock;
                let _ = self.poll.registry().deregister(&mut sock);
                self.core.tls_setup_failed(conn, &why, Instant::now());
            }
        }
    }

    fn pump_edge(&mut self, i: usize) {
        let conn = self.edges[i].conn;
        if matches!(self.edges[i].sock, Sock::Connecting(_)) {
            self.finish_connect(i);
            self.apply();
        }
        if matches!(self.edges[i].sock, Sock::Plain(_)) {
            self.pump_proxy(i);
            self.apply();
        }
        if !matches!(self.edges[i].sock, Sock::Tls(_)) || self.edges[i].conn != conn {
            return;
        }
        loop {
            match self.tls_step(i) {
                Some(true) if self.first.is_empty() => continue,
                Some(true) => {
                    // A service has a few bytes to write: it gets them before this connection
                    // reads (and decrypts) what a bulk stream sent behind them; the rest in
                    // the next pass.
                    self.want(Token(FIRST + i));
                    break;
                }
                Some(false) => break,
                None => return,
            }
        }
        // ... and before this connection sends a bulk stream's next batch.
        while let Some(tok) = self.first.pop() {
            self.pump(tok);
        }
        if self.edges[i].conn != conn {
            return;
        }
        self.transmit(i);
    }

    /// Finishes a non-blocking connect: take_error, then peer_addr (mio's documented steps).
    fn finish_connect(&mut self, i: usize) {
        let conn = self.edges[i].conn;
        let Sock::Connecting(sock) = &mut self.edges[i].sock else {
            return;
        };
        let failed = match sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match sock.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => Some(e),
            },
        };
        let now = Instant::now();
        match failed {
            Some(e) => self.core.edge_connect_failed(conn, None, &e, now),
            None => {
                let Sock::Connecting(sock) = std::mem::replace(&mut self.edges[i].sock, Sock::None)
                else {
                    unreachable!()
                };
                self.edges[i].sock = Sock::Plain(sock);
                self.core.edge_connected(conn, now);
            }
        }
    }

    /// Writes the core's `CONNECT` and reads the proxy's answer as far as the socket allows,
    /// never blocking.
    fn pump_proxy(&mut self, i: usize) {
        let conn = self.edges[i].conn;
        loop {
            let Sock::Plain(sock) = &mut self.edges[i].sock else {
                return;
            };
            let request = self.core.proxy_transmit(conn);
            if !request.is_empty() {
                match sock.write(request) {
                    Ok(0) => self.core.proxy_eof(conn, Instant::now()),
                    Ok(n) => self.core.proxy_sent(conn, n),
                    Err(e) if would_block(&e) => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => self.core.proxy_io_failed(conn, true, &e, Instant::now()),
                }
                continue;
            }
            let room = self.core.proxy_room(conn);
            if room == 0 {
                return; // Answered (the core has moved on) or refused.
            }
            let mut chunk = [0u8; 4096];
            let room = room.min(chunk.len());
            match sock.read(&mut chunk[..room]) {
                Ok(0) => self.core.proxy_eof(conn, Instant::now()),
                Ok(n) => self.core.proxy_input(conn, &chunk[..n], Instant::now()),
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.core.proxy_io_failed(conn, false, &e, Instant::now()),
            }
            // The core may have started TLS or given up: its outputs say which.
            self.apply();
        }
    }

    /// One pass: read, frames in, events. `Some(true)`: `rx` was full, go again;
    /// `None`: the connection is gone.
    fn tls_step(&mut self, i: usize) -> Option<bool> {
        let conn = self.edges[i].conn;
        let Sock::Tls(tls) = &mut self.edges[i].sock else {
            return None;
        };
        let full = tls.read(&mut self.stage);
        let now = Instant::now();
        if !tls.tls.is_handshaking() {
            self.core.tls_handshake_done(conn, now);
        }
        let full = match full {
            Ok(full) => full,
            Err(e) => {
                self.core.tls_failed(conn, &e, now);
                self.apply();
                return None;
            }
        };
        // The client's bytes for a service with nothing waiting go to its socket as they are
        // decrypted (the cut-through, docs/design.md §2.8); what it does not take waits. A
        // failed write ends the stream after this input, as the service's pump would.
        let (locals, by_service) = (&mut self.locals, &self.by_service);
        let mut failed = Vec::new();
        let mut write = |service: ServiceId, data: &[u8]| {
            let Some(Some(local)) = by_service.get(&service).map(|&slot| locals[slot].as_mut())
            else {
                return 0;
            };
            loop {
                match local.sock.write(data) {
                    Ok(n) => return n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if would_block(&e) => return 0,
                    Err(e) => {
                        failed.push((service, e));
                        return 0;
                    }
                }
            }
        };
        let used = self
            .core
            .edge_input_direct(conn, tls.rx.data(), now, &mut write);
        for (service, e) in failed {
            self.core.service_failed(service, &e);
        }
        tls.rx.consume(used);
        let peer_closed = tls.peer_closed;
        self.apply();
        if !self.core.is_current(conn) || !matches!(self.edges[i].sock, Sock::Tls(_)) {
            return None;
        }
        if self.core.exiting() {
            return None;
        }
        if peer_closed {
            self.core.edge_closed(conn, now);
            self.apply();
            return None;
        }
        let Sock::Tls(tls) = &self.edges[i].sock else {
            return None;
        };
        Some(full && tls.has_room())
    }

    fn transmit(&mut self, i: usize) {
        let conn = self.edges[i].conn;
        let Sock::Tls(tls) = &mut self.edges[i].sock else {
            return;
        };
        // Flush first: `can_send` must see what the socket took since the last pass.
        let _ = tls.flush();
        while tls.can_send() && self.core.wants_transmit(conn) {
            self.scratch.clear();
            self.core
                .poll_transmit(conn, &mut self.scratch, CONN_WRITE_BATCH);
            tls.send(&self.scratch);
            if tls.flush().is_err() {
                break;
            }
        }
        self.scratch.clear();
        let flushed = tls.flush();
        let now = Instant::now();
        if let Err(e) = flushed {
            self.core.edge_write_failed(conn, &e, now);
            return;
        }
        self.core.transmitted(conn, now);
    }

    // ---- the services ----

    /// Connects a service connection to `addr` (without waiting).
    fn connect_service(&mut self, id: ServiceId, addr: SocketAddr) {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.locals.push(None);
                self.locals.len() - 1
            }
        };
        let tok = Token(FIRST + self.edges.len() + slot);
        let registered = TcpStream::connect(addr).and_then(|mut sock| {
            let _ = sock.set_nodelay(true);
            self.poll.registry().register(
                &mut sock,
                tok,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(sock)
        });
        match registered {
            Ok(sock) => {
                self.locals[slot] = Some(Local {
                    sock,
                    id,
                    connected: false,
                });
                self.by_service.insert(id, slot);
            }
            Err(e) => {
                self.free.push(slot);
                debug!("{id}: cannot connect to {addr}: {e}");
                self.core.service_connect_failed(id, &e.to_string());
            }
        }
    }

    fn pump_service(&mut self, slot: usize) {
        let Some(Some(l)) = self.locals.get_mut(slot) else {
            return;
        };
        let id = l.id;
        if !self.core.service_open(id) {
            // Closed (the core says `CloseService`), or detached: its client is gone and
            // the socket waits unread until a resume pumps it again.
            return;
        }
        if !l.connected {
            let failed = match l.sock.take_error() {
                Ok(Some(e)) | Err(e) => Some(e),
                Ok(None) => match l.sock.peer_addr() {
                    Ok(_) => None,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(e) => Some(e),
                },
            };
            if let Some(e) = failed {
                return self.core.service_connect_failed(id, &e.to_string());
            }
            l.connected = true;
            self.core.service_connected(id);
        }
        // Service → edge: a record's worth or more read into the loop's stage and sent from
        // there as one DATA frame when nothing waits ahead of it (the cut-through's way out,
        // docs/design.md §2.8), at most a write batch per pump; else read straight into the
        // stream's send buffer, whose bound ends the pump. The lone stream of the origin, when
        // its direct frames used up the batch, asks for another pump in the next pass instead:
        // the send buffer, once filled, would keep the next pumps' frames off the direct path
        // (its bytes copied twice more). Beside other streams it does not: bytes waiting in
        // the send buffer can still be overtaken by a keystroke's frame, bytes on the socket
        // cannot (tried: a ping's p99 beside bulk down grew by half; docs/design.md §2.8).
        let mut budget = CONN_WRITE_BATCH;
        let lone = !self.core.more_than_one_stream();
        let mut again = false;
        loop {
            // A resumable stream's: records framed from its replay buffer, where the read put
            // them (the read is `service_fill`'s, below).
            while budget >= mux::DIRECT_MIN {
                let Some((conn, room)) = self.core.service_records_room(id) else {
                    break;
                };
                let Some(tls) = sending_edge(&mut self.edges, conn) else {
                    break;
                };
                let max = room.min(budget);
                let Some((head, len, payload)) = self.core.service_records_direct(id, max) else {
                    break;
                };
                tls.send_vectored(&[&head[..len], payload]);
                let _ = tls.flush(); // A failure is the edge connection's pump's to see.
                budget = budget.saturating_sub(len + payload.len());
                again = lone && budget < mux::DIRECT_MIN;
            }
            if again {
                break;
            }
            let direct = self.core.service_direct_room(id).and_then(|(conn, room)| {
                // A read that fills, with its frame's header, whole TLS records.
                let room = mux::record_aligned(room.min(budget).min(self.stage.len()));
                let tls = sending_edge(&mut self.edges, conn)?;
                (room >= mux::DIRECT_MIN).then_some((tls, room))
            });
            if let Some((tls, room)) = direct {
                match l.sock.read(&mut self.stage[..room]) {
                    Ok(0) => {} // the EOF: `service_fill` below hears it again, and ends
                    Ok(n) => {
                        let data = &self.stage[..n];
                        if let Some(header) = self.core.service_read_direct(id, data) {
                            tls.send_vectored(&[&header, data]);
                            // A failed flush is the edge connection's pump's to see (the
                            // core asks for it: bytes moved).
                            let _ = tls.flush();
                        }
                        budget -= n;
                        again = lone && budget < mux::DIRECT_MIN;
                        if again {
                            break;
                        }
                        continue;
                    }
                    Err(e) if would_block(&e) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return self.core.service_failed(id, &e),
                }
            }
            let sock = &mut l.sock;
            let Some(got) = self.core.service_fill(id, |tail| sock.read(tail)) else {
                break;
            };
            match got {
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.core.service_failed(id, &e),
            }
        }
        // Edge → service.
        let now = Instant::now();
        loop {
            let data = self.core.service_pending(id, now);
            if data.is_empty() {
                break;
            }
            match l.sock.write(data) {
                Ok(n) => self.core.service_written(id, n, now),
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.core.service_failed(id, &e),
            }
        }
        self.core.service_pumped(id, now);
        if again {
            self.want(Token(FIRST + self.edges.len() + slot));
        }
    }

    fn drop_local(&mut self, slot: usize) {
        if let Some(mut l) = self.locals[slot].take() {
            let _ = self.poll.registry().deregister(&mut l.sock);
            self.free.push(slot);
        }
    }
}
