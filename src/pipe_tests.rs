//! The three roles end to end in memory, quiche-style: `Pipe { clients, edge, origin,
//! service, clock }`. Each role is its real core; the test plays each role's driver:
//!
//! ```text
//!  client (access::core::Splice + upgrade) ─ rustls client ═ wire ═ EdgeCore (carrier)
//!  EdgeCore (tunnel) ═ wire ═ rustls client, origin certificate ─ tunnel::core::Core
//!  tunnel::core::Core ─ service_fill / service_pending ─ an in-memory echo service
//! ```
//!
//! A wire is the edge's tests' pair of byte queues (`edge::core::tests::Wire`); TLS is real
//! rustls on both ends of each; the store is its real worker thread on a temporary directory
//! (the edge's tests' set-up); DNS is answered in memory. Nothing sleeps: [`Pipe::run_until`]
//! moves bytes until a condition holds, and [`Pipe::advance`] moves the simulated clock,
//! firing each core's timeouts as they fall due.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::access::core::{LocalKind, Output as SpliceOutput, Splice, LOCAL_READ};
use crate::access::{upgrade, AccessError, Credentials};
use crate::edge::core::tests::{peer_addr, EdgeEnd, Pipe as EdgeBench, Wire, APP};
use crate::edge::EdgeSettings;
use crate::io::tls::TlsConn;
use crate::limits::{PING_DEAD_INTERVALS, PING_INTERVAL, RESUME_WINDOW, TLS_READ_STAGE};
use crate::metrics::{self, Metrics};
use crate::proto::http::{parse_response_head, HeadLimits};
use crate::proto::mux::{self, FrameType};
use crate::secret::Secret;
use crate::tunnel::core::{self as tunnel, ConnId, Exit, Output, Registration, ServiceId};
use crate::tunnel::Ingress;

/// ≡ -1 modulo every backoff ceiling: each reconnect waits its ceiling less 1 ms (1 s less
/// 1 ms after the first failure).
const JITTER: u64 = 7_679_999;
const GRACE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------- the wires

/// A peer's end of a [`Wire`] (the client's or the origin's socket). `cut` stops delivery
/// both ways, as a network that drops every packet: nothing is read, writes vanish.
struct PeerEnd {
    wire: Wire,
    cut: Rc<Cell<bool>>,
}

impl Read for PeerEnd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut w = self.wire.0.lock().unwrap();
        if self.cut.get() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if w.from_edge.is_empty() {
            // The edge's FIN: it dropped its end, or shut its write side (a lingering close).
            return if w.dropped || w.write_shut {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(w.from_edge.len());
        buf[..n].copy_from_slice(&w.from_edge[..n]);
        w.from_edge.drain(..n);
        Ok(n)
    }
}

impl Write for PeerEnd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut w = self.wire.0.lock().unwrap();
        if self.cut.get() {
            return Ok(buf.len());
        }
        if w.dropped {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        w.to_edge.extend(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PeerEnd {
    /// A FIN, unless the network is cut (then the edge hears nothing).
    fn drop(&mut self) {
        if !self.cut.get() {
            self.wire.0.lock().unwrap().peer_eof = true;
        }
    }
}

// ------------------------------------------------------------------------- the roles

/// The simulated clock every core is handed: `now`, and the same moment in Unix seconds.
struct Clock {
    start: (Instant, u64),
    now: Instant,
    unix: u64,
}

/// The edge: its core, the store worker and its certificates, as the edge's own tests set
/// them up ([`EdgeBench`]).
struct Edge {
    bench: EdgeBench,
    /// Shut down: connects to it are refused.
    down: bool,
    /// Every connection's wire and slot, to run them.
    wires: Vec<(usize, Wire)>,
    next_port: u16,
}

/// The origin: the tunnel's link core and, per HA slot, its connection to the edge.
struct Origin {
    core: tunnel::Core,
    conns: Vec<Option<OriginConn>>,
    /// The mux frames the origin received from the edge, by type, in order.
    frames: Vec<FrameType>,
    /// The claims of each OPEN: who the edge let in.
    claims: Vec<serde_json::Value>,
    /// The wire of every connection to the edge, in order (a TCP connect each).
    wires: Vec<Wire>,
    exit: Option<Exit>,
}

struct OriginConn {
    id: ConnId,
    /// Until TLS starts.
    sock: Option<PeerEnd>,
    tls: Option<TlsConn<PeerEnd>>,
    cut: Rc<Cell<bool>>,
}

/// The service behind the origin: echoes what it receives, and says what the test makes it
/// say. It ends its side once the stream's other side has ended.
#[derive(Default)]
struct Service {
    conns: HashMap<ServiceId, ServiceConn>,
    /// The service connections the origin closed.
    closed: Vec<ServiceId>,
    opened: usize,
}

#[derive(Default)]
struct ServiceConn {
    to_stream: VecDeque<u8>,
    received: Vec<u8>,
    /// The client's direction is over (`ShutdownService`): once it has echoed all, the
    /// service ends its own.
    eof: bool,
}

/// `postern access tcp` in memory: the upgrade, then the splice with a local side the test
/// writes and reads.
struct Client {
    wire: Wire,
    tls: TlsConn<PeerEnd>,
    key: String,
    state: State,
    /// What the local program (ssh) wrote, not yet taken by the splice.
    local_in: VecDeque<u8>,
    local_eof: bool,
    /// What reached the local program.
    local_out: Vec<u8>,
    /// The client's loop is not running (a busy client): nothing is read or sent.
    paused: bool,
}

enum State {
    Upgrading,
    Spliced(Splice),
    Finished,
    Failed(AccessError),
}

struct Pipe {
    clients: Vec<Client>,
    edge: Edge,
    origin: Origin,
    service: Service,
    clock: Clock,
    stage: Vec<u8>,
    /// Bytes moved and outputs carried out: unchanged over a step means quiet.
    progress: Cell<u64>,
}

impl Pipe {
    /// An edge as `postern edge --dev` sets it up (with `tweak`), an origin with `ha`
    /// connections registering [`APP`] for the echo service, and no client yet. The origin
    /// has not started.
    fn with(ha: usize, tweak: impl FnOnce(&mut EdgeSettings)) -> Pipe {
        let bench = EdgeBench::with(tweak);
        let clock = Clock {
            start: (bench.now, bench.unix),
            now: bench.now,
            unix: bench.unix,
        };
        let cfg = tunnel::Config {
            registration: Registration::Hostname(APP.into()),
            ingress: Ingress::single(APP, "tcp://127.0.0.1:2222").expect("ingress"),
            edges: vec![tunnel::EdgeTarget {
                addr: "edge.localhost:443".into(),
                proxy: None,
            }],
            connector_id: [9; 16],
            grace: GRACE,
            connections: ha,
            resume_window: RESUME_WINDOW,
        };
        let metrics = Metrics::new(metrics::Role::Tunnel, [9; 16]);
        let core = tunnel::Core::new(cfg, metrics, Box::new(|| JITTER), clock.now);
        Pipe {
            clients: Vec::new(),
            edge: Edge {
                bench,
                down: false,
                wires: Vec::new(),
                next_port: 40000,
            },
            origin: Origin {
                core,
                conns: (0..ha).map(|_| None).collect(),
                frames: Vec::new(),
                claims: Vec::new(),
                wires: Vec::new(),
                exit: None,
            },
            service: Service::default(),
            clock,
            stage: vec![0; TLS_READ_STAGE],
            progress: Cell::new(0),
        }
    }

    /// One origin connection, registered.
    fn started() -> Pipe {
        Pipe::started_with(|_| {})
    }

    fn started_with(tweak: impl FnOnce(&mut EdgeSettings)) -> Pipe {
        Pipe::started_ha(1, tweak)
    }

    /// `ha` origin connections, each registered.
    fn started_ha(ha: usize, tweak: impl FnOnce(&mut EdgeSettings)) -> Pipe {
        let mut p = Pipe::with(ha, tweak);
        p.advance(Duration::ZERO);
        p.run_until(|p| p.registrations() == ha, 200);
        p
    }

    fn registrations(&self) -> usize {
        let frames = self.origin.frames.iter();
        frames.filter(|f| **f == FrameType::Registered).count()
    }

    // ---- the clock and the loop ----

    /// Runs every role until `done` holds; panics after `max_steps` steps without it.
    fn run_until(&mut self, done: impl Fn(&Pipe) -> bool, max_steps: usize) {
        for _ in 0..max_steps {
            if done(self) {
                return;
            }
            self.step();
        }
        assert!(done(self), "not reached in {max_steps} steps");
    }

    /// Runs every role until nothing moves.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let before = (self.progress.get(), self.in_flight());
            self.step();
            if (self.progress.get(), self.in_flight()) == before {
                return;
            }
        }
        panic!("the pipe never settles");
    }

    /// Moves the clock on by `d`, firing each core's timeouts when they fall due and running
    /// the pipe after each.
    fn advance(&mut self, d: Duration) {
        let target = self.clock.now + d;
        let start = self.clock.start;
        let mut stuck = 0;
        loop {
            let due = self
                .edge
                .bench
                .core
                .poll_timeout()
                .min(self.origin.core.poll_timeout());
            let at = due.max(self.clock.now).min(target);
            stuck = if at == self.clock.now { stuck + 1 } else { 0 };
            assert!(stuck < 100, "a core's timeout does not move on from {at:?}");
            self.clock.now = at;
            self.clock.unix = start.1 + at.duration_since(start.0).as_secs();
            let (now, unix) = (self.clock.now, self.clock.unix);
            self.edge.bench.core.handle_timeout(now, unix);
            self.origin.core.handle_timeout(now);
            self.settle();
            if at >= target {
                return;
            }
        }
    }

    fn step(&mut self) {
        self.origin_outputs();
        let (now, unix) = (self.clock.now, self.clock.unix);
        let edge = &mut self.edge.bench.core;
        while self.edge.bench.woken.try_recv().is_ok() {
            edge.handle_wake(now, unix);
        }
        let mut queued = 0u64;
        for (slot, wire) in &self.edge.wires {
            if !wire.dropped() {
                queued += wire.0.lock().unwrap().to_edge.len() as u64;
                edge.handle_ready(*slot);
            }
        }
        edge.process(now, unix);
        // Bytes the edge took count as progress too.
        for (_, wire) in &self.edge.wires {
            if !wire.dropped() {
                queued = queued.wrapping_sub(wire.0.lock().unwrap().to_edge.len() as u64);
            }
        }
        self.moved(queued);
        self.edge.wires.retain(|(_, w)| !w.dropped());
        for slot in 0..self.origin.conns.len() {
            self.pump_origin(slot);
        }
        self.origin_outputs();
        let streams: Vec<ServiceId> = self.service.conns.keys().copied().collect();
        for id in streams {
            self.pump_service(id);
        }
        for i in 0..self.clients.len() {
            self.pump_client(i);
        }
    }

    /// The bytes on every wire, both ways.
    fn in_flight(&self) -> usize {
        let clients = self.clients.iter().map(|c| &c.wire);
        let wires = clients.chain(&self.origin.wires);
        wires
            .map(|w| {
                let w = w.0.lock().unwrap();
                w.to_edge.len() + w.from_edge.len()
            })
            .sum()
    }

    fn moved(&self, n: u64) {
        self.progress.set(self.progress.get().wrapping_add(n));
    }

    // ---- the origin's driver ----

    fn origin_outputs(&mut self) {
        let now = self.clock.now;
        while let Some(out) = self.origin.core.poll_output() {
            self.moved(1);
            match out {
                Output::Resolve { waiter, name } => {
                    // DNS in memory: the service's address stands for itself, the edge's
                    // name is a documentation address.
                    let addr = name.parse().unwrap_or(([192, 0, 2, 1], 443).into());
                    self.origin.core.resolved(waiter, Ok(vec![addr]), now);
                }
                Output::ConnectEdge { conn, .. } => self.connect_edge(conn),
                Output::StartTls { conn, .. } => {
                    let Some(c) = self.origin.conns[conn.slot].as_mut() else {
                        continue;
                    };
                    let sock = c.sock.take().expect("connected before TLS");
                    let b = &self.edge.bench;
                    let cert = (b.origin_cert.0.clone(), b.origin_cert.1.clone_key());
                    let config = b.client_config(Some(mux::ALPN), Some(&cert));
                    let name = ServerName::try_from(APP.to_owned()).expect("name");
                    let tls = rustls::ClientConnection::new(config, name).expect("client");
                    c.tls = Some(TlsConn::new(sock, tls));
                }
                Output::CloseEdge { conn } => {
                    let slot = &mut self.origin.conns[conn.slot];
                    if slot.as_ref().is_some_and(|c| c.id == conn) {
                        if let Some(mut tls) = slot.take().and_then(|c| c.tls) {
                            tls.close();
                        }
                    }
                }
                Output::ConnectService { service, .. } => {
                    self.service.conns.insert(service, ServiceConn::default());
                    self.service.opened += 1;
                    self.origin.core.service_connected(service);
                }
                Output::ShutdownService { service } => {
                    if let Some(s) = self.service.conns.get_mut(&service) {
                        s.eof = true;
                    }
                }
                Output::CloseService { service } => {
                    if self.service.conns.remove(&service).is_some() {
                        self.service.closed.push(service);
                    }
                }
                // Every connection and stream is pumped at each step.
                Output::PumpEdge(_) | Output::PumpService(_) | Output::PumpServiceFirst(_) => {}
            }
        }
        if let Some(exit) = self.origin.core.take_exit() {
            self.origin.exit = Some(exit);
        }
    }

    /// A TCP connection from the origin to the edge: admitted, accepted, connected.
    fn connect_edge(&mut self, conn: ConnId) {
        let now = self.clock.now;
        let e = &mut self.edge;
        e.next_port += 1;
        let from = peer_addr(50, e.next_port);
        let admitted = if e.down {
            None
        } else {
            e.bench.core.admit(from, now, self.clock.unix)
        };
        let Some(slot) = admitted else {
            let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
            self.origin
                .core
                .edge_connect_failed(conn, None, &refused, now);
            return;
        };
        let wire = Wire::default();
        e.bench
            .core
            .accepted(slot, Box::new(EdgeEnd(wire.clone())), from);
        e.wires.push((slot, wire.clone()));
        self.origin.wires.push(wire.clone());
        let cut = Rc::new(Cell::new(false));
        self.origin.conns[conn.slot] = Some(OriginConn {
            id: conn,
            sock: Some(PeerEnd {
                wire,
                cut: cut.clone(),
            }),
            tls: None,
            cut,
        });
        self.origin.core.edge_connected(conn, now);
    }

    /// The tunnel driver's pump: TLS in, frames to the core, frames out.
    fn pump_origin(&mut self, slot: usize) {
        let now = self.clock.now;
        let o = &mut self.origin;
        let Some(OriginConn {
            id, tls: Some(tls), ..
        }) = o.conns[slot].as_mut()
        else {
            return;
        };
        let id = *id;
        loop {
            let full = tls.read(&mut self.stage);
            if !tls.tls.is_handshaking() {
                o.core.tls_handshake_done(id, now);
            }
            let full = match full {
                Ok(full) => full,
                Err(e) => return o.core.tls_failed(id, &e, now),
            };
            let used = o.core.edge_input(id, tls.rx.data(), now);
            let mut frames = &tls.rx.data()[..used];
            while let Ok(Some((frame, n))) = mux::decode_frame(frames) {
                o.frames.push(frame.ty());
                if let mux::Frame::Open { claims, .. } = frame {
                    o.claims
                        .push(serde_json::from_slice(claims).expect("JSON claims"));
                }
                frames = &frames[n..];
            }
            tls.rx.consume(used);
            self.progress.set(self.progress.get() + used as u64);
            if !o.core.is_current(id) || o.core.exiting() {
                return;
            }
            if tls.peer_closed {
                return o.core.edge_closed(id, now);
            }
            if !(full && tls.has_room()) {
                break;
            }
        }
        let _ = tls.flush();
        let mut out = Vec::new();
        while tls.can_send() && o.core.wants_transmit(id) {
            out.clear();
            o.core.poll_transmit(id, &mut out, 64 * 1024);
            self.progress.set(self.progress.get() + out.len() as u64);
            tls.send(&out);
            if tls.flush().is_err() {
                break;
            }
        }
        match tls.flush() {
            Ok(()) => o.core.transmitted(id, now),
            Err(e) => o.core.edge_write_failed(id, &e, now),
        }
    }

    /// The tunnel driver's service pump, with the echo service in place of a socket.
    fn pump_service(&mut self, id: ServiceId) {
        let now = self.clock.now;
        let core = &mut self.origin.core;
        if !core.service_open(id) {
            return;
        }
        let Some(s) = self.service.conns.get_mut(&id) else {
            return;
        };
        loop {
            let data = core.service_pending(id, now).to_vec();
            if data.is_empty() {
                break;
            }
            s.received.extend_from_slice(&data);
            s.to_stream.extend(&data);
            core.service_written(id, data.len(), now);
            self.progress.set(self.progress.get() + data.len() as u64);
        }
        loop {
            let got = core.service_fill(id, |buf| {
                if s.to_stream.is_empty() {
                    return if s.eof {
                        Ok(0)
                    } else {
                        Err(io::ErrorKind::WouldBlock.into())
                    };
                }
                let n = buf.len().min(s.to_stream.len());
                for (dst, src) in buf.iter_mut().zip(s.to_stream.drain(..n)) {
                    *dst = src;
                }
                Ok(n)
            });
            match got {
                Some(Ok(0)) | None | Some(Err(_)) => break,
                Some(Ok(n)) => self.progress.set(self.progress.get() + n as u64),
            }
        }
        core.service_pumped(id, now);
    }

    // ---- the client's driver ----

    /// A client to [`APP`] from `from` with `credentials`: its TLS connection to the edge,
    /// with the upgrade request queued behind the handshake.
    fn client_with(&mut self, from: SocketAddr, credentials: &Credentials) -> usize {
        let (now, unix) = (self.clock.now, self.clock.unix);
        let core = &mut self.edge.bench.core;
        let wire = Wire::default();
        match core.admit(from, now, unix) {
            Some(slot) => {
                core.accepted(slot, Box::new(EdgeEnd(wire.clone())), from);
                self.edge.wires.push((slot, wire.clone()));
            }
            // A limit refused it: the edge's driver closes the socket before any TLS.
            None => wire.0.lock().unwrap().dropped = true,
        }
        let mut config = (*self.edge.bench.client_config(None, None)).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(APP.to_owned()).expect("name");
        let tls = rustls::ClientConnection::new(config.into(), name).expect("client");
        let sock = PeerEnd {
            wire: wire.clone(),
            cut: Rc::new(Cell::new(false)),
        };
        let mut tls = TlsConn::new(sock, tls);
        let key = crate::proto::base64::encode(&crate::io::random_bytes::<16>());
        tls.send(&upgrade::request(APP, credentials, &key, None, None).expect("request"));
        self.clients.push(Client {
            wire,
            tls,
            key,
            state: State::Upgrading,
            local_in: VecDeque::new(),
            local_eof: false,
            local_out: Vec::new(),
            paused: false,
        });
        self.clients.len() - 1
    }

    fn service_token(&self) -> Credentials {
        let (id, secret) = &self.edge.bench.token;
        Credentials::ServiceToken {
            id: id.clone(),
            secret: Secret::from(secret.clone()),
        }
    }

    /// A client with the store's service token, spliced (its upgrade answered 101).
    fn spliced_client(&mut self, port: u16) -> usize {
        let creds = self.service_token();
        let c = self.client_with(peer_addr(10, port), &creds);
        self.run_until(|p| !p.upgrading(c), 200);
        assert!(self.spliced(c), "{:?}", self.failure(c));
        c
    }

    fn upgrading(&self, c: usize) -> bool {
        matches!(self.clients[c].state, State::Upgrading)
    }

    fn spliced(&self, c: usize) -> bool {
        matches!(self.clients[c].state, State::Spliced(_))
    }

    fn finished(&self, c: usize) -> bool {
        matches!(self.clients[c].state, State::Finished)
    }

    fn failure(&self, c: usize) -> Option<&AccessError> {
        match &self.clients[c].state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The local program writes `bytes` to the client.
    fn client_sends(&mut self, c: usize, bytes: &[u8]) {
        self.clients[c].local_in.extend(bytes);
    }

    /// Sends `bytes` from client `c` and runs until the echo comes back.
    fn round_trip(&mut self, c: usize, bytes: &[u8]) {
        let before = self.clients[c].local_out.len();
        self.client_sends(c, bytes);
        let want = before + bytes.len();
        self.run_until(|p| p.clients[c].local_out.len() >= want, 200);
        assert_eq!(&self.clients[c].local_out[before..], bytes);
    }

    fn pump_client(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if c.paused {
            return;
        }
        let before = c.fingerprint();
        let result = match c.tls.read(&mut self.stage) {
            Err(error) => Err(AccessError::Connection {
                doing: "connection to the edge",
                error,
            }),
            Ok(_) => c.step(),
        };
        if let Err(e) = result {
            c.state = State::Failed(e);
        }
        if c.fingerprint() != before {
            self.moved(1);
        }
    }
}

impl Client {
    /// What changes when the client makes progress.
    fn fingerprint(&self) -> (usize, usize, usize, bool, std::mem::Discriminant<State>) {
        let t = &self.tls;
        let lens = (t.rx.len(), self.local_out.len(), self.local_in.len());
        (
            lens.0,
            lens.1,
            lens.2,
            t.peer_closed,
            std::mem::discriminant(&self.state),
        )
    }

    /// One pass of the client's driver: the upgrade's answer, then the splice (the loop of
    /// `access::driver::Session::step`, with the local side in memory).
    fn step(&mut self) -> Result<(), AccessError> {
        if let State::Upgrading = self.state {
            // The handshake and the request go out as the edge answers.
            self.flush()?;
            let data = self.tls.rx.data();
            let Some((head, used)) =
                parse_response_head(data, &HeadLimits::default()).map_err(AccessError::BadHead)?
            else {
                return self.closed_early();
            };
            let want = upgrade::refusal_body_len(&head);
            if data.len() - used < want && !self.tls.peer_closed {
                return Ok(());
            }
            let body = &data[used..data.len().min(used + want)];
            let answer = upgrade::check_answer(APP, &self.key, &head, body);
            let taken = used + body.len();
            self.tls.rx.consume(taken);
            answer?;
            self.state = State::Spliced(Splice::new(LocalKind::Tcp));
        }
        let State::Spliced(s) = &mut self.state else {
            return Ok(());
        };
        loop {
            let out = s.to_local();
            self.local_out.extend_from_slice(out);
            let n = out.len();
            s.local_written(n);
            if !s.wants_edge_input() {
                break;
            }
            let before = self.tls.rx.len();
            s.handle_edge_input(&mut self.tls.rx)?;
            if self.tls.rx.len() == before {
                break;
            }
        }
        if self.outputs() {
            return Ok(());
        }
        let State::Spliced(s) = &mut self.state else {
            return Ok(());
        };
        if self.tls.peer_closed {
            s.handle_edge_closed()?;
        }
        self.flush()?;
        loop {
            let State::Spliced(s) = &mut self.state else {
                return Ok(());
            };
            if !s.wants_local_input() {
                break;
            }
            if self.local_in.is_empty() {
                if !self.local_eof {
                    break;
                }
                s.handle_local_eof();
            } else {
                let n = self.local_in.len().min(LOCAL_READ);
                let mut buf: Vec<u8> = self.local_in.drain(..n).collect();
                let header = s.handle_local_input(&mut buf);
                self.tls.send_vectored(&[header.bytes(), &buf]);
            }
            if self.outputs() {
                return Ok(());
            }
            self.flush()?;
        }
        self.flush()?;
        self.outputs();
        self.flush()
    }

    /// No answer yet: fine unless the edge has gone.
    fn closed_early(&self) -> Result<(), AccessError> {
        if self.tls.peer_closed {
            return Err(AccessError::EdgeClosed {
                during: " during the upgrade".into(),
                error: None,
            });
        }
        Ok(())
    }

    /// Does what the splice asked for; true once it is finished.
    fn outputs(&mut self) -> bool {
        let State::Spliced(s) = &mut self.state else {
            return true;
        };
        while let Some(out) = s.poll_output() {
            match out {
                SpliceOutput::ToEdge(frame) => self.tls.send(&frame),
                SpliceOutput::ShutdownLocalRead | SpliceOutput::ShutdownLocalWrite => {}
                SpliceOutput::Finished => {
                    self.tls.close();
                    self.state = State::Finished;
                    return true;
                }
            }
        }
        false
    }

    fn flush(&mut self) -> Result<(), AccessError> {
        self.tls.flush().map_err(|error| AccessError::Connection {
            doing: "connection to the edge",
            error,
        })?;
        if let State::Spliced(s) = &mut self.state {
            if self.tls.can_send() {
                s.handle_edge_drained();
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------- round trip

#[test]
fn bytes_round_trip_from_client_to_service_and_back_through_all_three_cores() {
    let mut p = Pipe::started();
    let c = p.spliced_client(1);
    assert_eq!(
        p.service.opened, 1,
        "one stream reached the origin's service"
    );
    assert_eq!(
        p.origin.claims[0]["service_token"], "ci",
        "the edge let it in by its service token: {:?}",
        p.origin.claims
    );
    p.round_trip(c, b"SSH-2.0-OpenSSH_9.2\r\n");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    p.round_trip(c, &big);
    let (_, service) = p
        .service
        .conns
        .iter()
        .next()
        .expect("the service connection");
    let mut sent = b"SSH-2.0-OpenSSH_9.2\r\n".to_vec();
    sent.extend_from_slice(&big);
    assert_eq!(
        service.received, sent,
        "the service got every byte, in order"
    );
    // The local side's EOF: the client's Close, the service's EOF, its FIN back, the edge's
    // Close: the session finishes at both ends.
    p.clients[c].local_eof = true;
    p.run_until(|p| p.finished(c), 200);
    p.run_until(|p| p.service.closed.len() == 1, 200);
    assert!(p.service.conns.is_empty());
}

// ------------------------------------------------------------------------- refusals

/// The refusal a client ended with: its HTTP status and cause.
fn refusal(p: &Pipe, c: usize) -> (u16, String) {
    match p.failure(c) {
        Some(AccessError::Refused { status, cause, .. }) => (*status, cause.clone()),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_wrong_service_token_secret_is_refused_at_the_edge_and_nothing_reaches_the_origin() {
    let mut p = Pipe::started();
    let frames_before = p.origin.frames.len();
    let id = p.edge.bench.token.0.clone();
    let wrong = Credentials::ServiceToken {
        id,
        secret: Secret::from("not-the-secret".to_owned()),
    };
    let c = p.client_with(peer_addr(10, 1), &wrong);
    p.run_until(|p| !p.upgrading(c), 200);
    let (status, cause) = refusal(&p, c);
    assert_eq!(status, 403);
    assert!(cause.contains("service token refused"), "{cause}");
    p.settle();
    assert_eq!(p.service.opened, 0, "no stream reached the service");
    let after = &p.origin.frames[frames_before..];
    assert!(
        !after.contains(&FrameType::Open),
        "no OPEN reached the origin: {after:?}"
    );
}

// ------------------------------------------------------------------------- limits

#[test]
fn a_client_over_the_streams_per_tunnel_cap_is_refused_and_the_first_keeps_working() {
    let mut p = Pipe::started_with(|s| s.limits.max_streams_per_tunnel = 1);
    let first = p.spliced_client(1);
    p.round_trip(first, b"first");
    let creds = p.service_token();
    let second = p.client_with(peer_addr(10, 2), &creds);
    p.run_until(|p| !p.upgrading(second), 200);
    assert_eq!(refusal(&p, second).0, 503);
    assert_eq!(p.edge.bench.core.counters.streams, 1);
    assert_eq!(p.service.opened, 1, "the refused client opened no stream");
    p.round_trip(first, b"still here");
}

#[test]
fn a_client_over_the_per_source_cap_is_closed_at_accept_and_the_first_keeps_working() {
    let mut p = Pipe::started_with(|s| s.limits.max_connections_per_ip = 1);
    let first = p.spliced_client(1);
    p.round_trip(first, b"first");
    let creds = p.service_token();
    let second = p.client_with(peer_addr(10, 2), &creds);
    p.run_until(|p| !p.upgrading(second), 200);
    // Its socket is closed under it: the client's first write fails.
    assert!(
        matches!(
            p.failure(second),
            Some(AccessError::Connection { .. } | AccessError::EdgeClosed { .. })
        ),
        "{:?}",
        p.failure(second)
    );
    assert_eq!(p.edge.bench.core.counters.connections_per_ip, 1);
    // The first goes on, and another source is not affected.
    p.round_trip(first, b"still here");
    let other = p.client_with(peer_addr(11, 1), &creds);
    p.run_until(|p| !p.upgrading(other), 200);
    assert!(p.spliced(other), "{:?}", p.failure(other));
    p.round_trip(other, b"other source");
}

// ------------------------------------------------------------------------- bad input

#[test]
fn a_bad_frame_from_a_client_resets_its_stream_at_the_origin_and_spares_the_other_client() {
    let mut p = Pipe::started();
    let bad = p.spliced_client(1);
    let good = p.spliced_client(2);
    p.round_trip(bad, b"hello");
    p.round_trip(good, b"hello");
    assert_eq!(p.service.conns.len(), 2);
    // Client frames must be masked: an unmasked one, past the splice, straight into TLS.
    p.clients[bad].tls.send(&[0x82, 0x03, b'a', b'b', b'c']);
    p.run_until(|p| p.failure(bad).is_some(), 200);
    assert!(
        matches!(p.failure(bad), Some(AccessError::SessionClosed { .. })),
        "the edge closed the session: {:?}",
        p.failure(bad)
    );
    p.run_until(|p| p.service.closed.len() == 1, 200);
    assert!(
        p.origin.frames.contains(&FrameType::Rst),
        "RST at the origin"
    );
    assert_eq!(p.service.conns.len(), 1, "the other stream stays");
    p.round_trip(good, b"unaffected");
    assert_eq!(p.origin.wires.len(), 1, "the tunnel connection goes on");
}

#[test]
fn a_bad_mux_frame_from_the_origin_ends_that_connection_and_the_origin_reconnects_after_backoff() {
    let mut p = Pipe::started();
    let c = p.spliced_client(1);
    p.round_trip(c, b"before");
    // A frame of an unknown type with a payload length over the limit, from the origin.
    let conn = p.origin.conns[0].as_mut().expect("connected");
    let tls = conn.tls.as_mut().expect("TLS");
    tls.send(&[0xee, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
    p.settle();
    assert!(
        p.origin.wires[0].dropped(),
        "the edge closed that connection"
    );
    assert!(p.origin.conns[0].is_none(), "the origin noticed");
    assert!(p.service.conns.is_empty(), "its stream is gone");
    assert!(!p.spliced(c), "the client's session ended with its tunnel");
    // Backoff: 1 s less the 1 ms jitter after the first failure; not a moment before.
    p.advance(Duration::from_millis(998));
    assert_eq!(p.origin.wires.len(), 1, "no reconnect before the backoff");
    p.advance(Duration::from_millis(1));
    assert_eq!(p.origin.wires.len(), 2, "reconnected after the backoff");
    p.run_until(|p| p.registrations() == 2, 200);
    let again = p.spliced_client(2);
    p.round_trip(again, b"after");
}

#[test]
fn a_bad_mux_frame_on_one_ha_connection_leaves_the_other_serving() {
    let mut p = Pipe::started_ha(2, |_| {});
    let tls = p.origin.conns[0].as_mut().and_then(|c| c.tls.as_mut());
    tls.expect("TLS")
        .send(&[0xee, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
    p.settle();
    assert!(p.origin.wires[0].dropped(), "that connection closed");
    assert!(!p.origin.wires[1].dropped(), "the other one stays");
    assert!(p.origin.conns[1].is_some());
    // Before connection 0 is back, clients get through on connection 1.
    let c = p.spliced_client(1);
    p.round_trip(c, b"through the other connection");
    assert_eq!(p.origin.wires.len(), 2, "no reconnect yet");
    p.advance(Duration::from_secs(1));
    p.run_until(|p| p.registrations() == 3, 200);
    assert_eq!(p.origin.wires.len(), 3, "connection 0 came back");
    p.round_trip(c, b"unaffected");
}

// ------------------------------------------------------------------------- keepalive

#[test]
fn a_silent_tunnel_is_noticed_by_both_ends_within_the_keepalive_and_the_origin_reconnects() {
    let mut p = Pipe::started();
    let c = p.spliced_client(1);
    p.round_trip(c, b"before");
    // The network drops every packet of the tunnel connection, both ways; no FIN either.
    p.origin.conns[0].as_ref().expect("connected").cut.set(true);
    let (mut edge_noticed, mut origin_noticed) = (None, None);
    let limit = PING_INTERVAL.as_secs() * u64::from(PING_DEAD_INTERVALS + 1);
    for s in 1..=limit {
        p.advance(Duration::from_secs(1));
        if edge_noticed.is_none() && p.origin.wires[0].dropped() {
            edge_noticed = Some(s);
        }
        if origin_noticed.is_none() && p.origin.wires.len() > 1 {
            origin_noticed = Some(s);
        }
    }
    // Silent for the dead intervals: closed at the edge then, and (its own keepalive, the
    // same intervals) at the origin, which reconnects after its 1 s backoff.
    let dead = PING_INTERVAL.as_secs() * u64::from(PING_DEAD_INTERVALS);
    let edge_noticed = edge_noticed.expect("the edge closed the silent tunnel");
    let origin_noticed = origin_noticed.expect("the origin reconnected");
    assert!(
        (dead..=dead + 1).contains(&edge_noticed),
        "edge: after {dead} s, not {edge_noticed} s"
    );
    assert!(
        (dead..=dead + 2).contains(&origin_noticed),
        "origin: reconnected at {origin_noticed} s"
    );
    // The carrier on the dead tunnel ended; the new connection registered and serves.
    assert!(!p.spliced(c));
    p.run_until(|p| p.registrations() == 2, 200);
    let again = p.spliced_client(2);
    p.round_trip(again, b"after");
}

// ------------------------------------------------------------------------- drain

#[test]
fn edge_shutdown_sends_goaway_to_the_origin_and_close_notify_to_the_client() {
    let mut p = Pipe::started();
    let c = p.spliced_client(1);
    p.round_trip(c, b"before");
    // The service's last words reach the edge and wait in the carrier's socket.
    p.clients[c].paused = true;
    let stream = *p.service.conns.keys().next().expect("the stream");
    p.service
        .conns
        .get_mut(&stream)
        .unwrap()
        .to_stream
        .extend(b"last words");
    p.settle();
    assert!(!p.clients[c].wire.0.lock().unwrap().from_edge.is_empty());
    let (now, unix) = (p.clock.now, p.clock.unix);
    p.edge.bench.core.shutdown(now, unix);
    p.edge.down = true;
    p.clients[c].paused = false;
    p.settle();
    assert!(p.origin.frames.contains(&FrameType::GoAway), "GOAWAY");
    assert!(p.clients[c].local_out.ends_with(b"last words"));
    // The edge ends carriers at once (its driver exits): a clean TLS close, before the
    // WebSocket Close, which the client reports as the edge closing the connection.
    assert!(p.clients[c].tls.peer_closed && !p.clients[c].tls.truncated);
    assert!(
        matches!(p.failure(c), Some(AccessError::EdgeClosed { .. })),
        "{:?}",
        p.failure(c)
    );
    assert!(
        p.service.conns.is_empty(),
        "the stream's service side closed"
    );
    // The origin keeps trying, with backoff, without exiting.
    p.advance(Duration::from_secs(10));
    assert!(p.origin.exit.is_none());
    assert_eq!(p.origin.wires.len(), 1, "the edge is gone: no connection");
}

#[test]
fn origin_shutdown_drains_the_open_session_and_routes_no_new_stream_to_it() {
    let mut p = Pipe::started();
    let c = p.spliced_client(1);
    p.round_trip(c, b"before");
    p.origin.core.shutdown(p.clock.now);
    p.settle();
    // The edge sends no new stream to a draining connection.
    let creds = p.service_token();
    let late = p.client_with(peer_addr(10, 2), &creds);
    p.run_until(|p| !p.upgrading(late), 200);
    let (status, cause) = refusal(&p, late);
    assert_eq!(status, 404, "{cause}");
    // The open session goes on until it is done.
    p.advance(Duration::from_secs(5));
    p.round_trip(c, b"still draining");
    assert!(p.origin.exit.is_none(), "not while a stream is open");
    p.clients[c].local_eof = true;
    p.run_until(|p| p.finished(c), 200);
    p.advance(Duration::from_secs(1));
    assert_eq!(p.origin.exit, Some(Exit::Signalled), "exited once drained");
    assert_eq!(p.service.opened, 1);
}

#[test]
fn origin_shutdown_closes_a_stream_still_open_at_the_end_of_the_grace_period() {
    let mut p = Pipe::started();
    let c = p.spliced_client(1);
    p.round_trip(c, b"before");
    p.origin.core.shutdown(p.clock.now);
    p.advance(GRACE - Duration::from_secs(1));
    assert!(p.origin.exit.is_none());
    p.round_trip(c, b"last");
    p.advance(Duration::from_secs(1));
    assert_eq!(p.origin.exit, Some(Exit::Signalled));
    assert!(p.service.conns.is_empty(), "its service connection closed");
}
