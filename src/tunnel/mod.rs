//! `postern tunnel`: the origin connector. Holds N outbound TLS connections to the edge
//! (mutual TLS with the origin certificate), registers one hostname on each, and splices each
//! stream the edge opens to the local service.
//!
//! Each HA connection cycles through:
//!
//! ```text
//!  Waiting(until) ──▶ Connecting(TCP) ──▶ Live(TLS + mux) ──(error/EOF/keepalive)──▶ Waiting
//!                            │                  ▲    └──(refused registration)──▶ exit 1
//!              (HTTPS_PROXY) └─▶ Proxying(CONNECT) ──(not 2xx/timeout)──▶ Waiting
//! ```
//! With a proxy (`HTTPS_PROXY`, unless `NO_PROXY` names the edge; see `proxy`), the TCP
//! connection goes to the proxy, and `Proxying` writes `CONNECT edge` and reads the answer
//! without blocking the loop, within `PROXY_ANSWER_TIMEOUT_SECS`; TLS then runs through it.
//! Backoff is exponential with full jitter, capped at 60 s, and resets once registered.
//! SIGTERM sends GOAWAY on every connection and waits for open streams up to the grace period.
//! Names (the edge's, each service's) are resolved by `resolve.rs` off the loop: a connection
//! waits in `Resolving`, a stream in `opening`, until the answer wakes the loop.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::io::tls::TlsConn;
use crate::io::{random_bytes, random_u64, would_block, Signals};
use crate::limits::{
    CONN_WRITE_BATCH, MAX_HTTP_HEAD, PROXY_ANSWER_TIMEOUT_SECS, RECONNECT_BACKOFF_CAP_SECS,
    RESOLVE_TIMEOUT_SECS, SERVICE_CONNECT_TIMEOUT_SECS, TLS_READ_STAGE,
};
use crate::logging::untrusted;
use crate::metrics::{self, Direction, Metrics};
use crate::pki::{self, OriginCredential};
use crate::proto::mux::{self, OriginEvent, OriginSession, StreamEvent};
use crate::proto::proxy::{self, ProxyConfig};

pub mod admin;
pub mod config;
mod resolve;

pub use config::{Ingress, Service};
use resolve::{Lookup, Resolver};

const SIGNALS: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST: usize = 2;

/// Who waits for a name (`resolve.rs`): a connection attempt to the edge, or a stream's
/// connection to its service. `epoch` is the connection's ([`Conn::epoch`]): an answer for an
/// attempt or a session that has ended since is dropped.
enum Waiter {
    Edge {
        conn: usize,
        epoch: u64,
    },
    Stream {
        conn: usize,
        epoch: u64,
        stream: u32,
    },
}

/// A stream whose service's name is being resolved.
struct Opening {
    rule: usize,
    deadline: Instant,
}

/// What the origin registers with the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// The guide's form, `--hostname H`: H, owned by the origin certificate.
    Hostname(String),
    /// A named tunnel (`tunnel run`): every hostname routed to it at the edge.
    Named { id: String, name: String },
}

pub struct TunnelOptions {
    pub registration: Registration,
    /// Which service each hostname's streams go to.
    pub ingress: Ingress,
    /// SNI sent to the edge.
    pub server_name: String,
    pub credential: OriginCredential,
    pub edge: String,
    pub extra_ca: Option<std::path::PathBuf>,
    pub ha_connections: usize,
    pub grace: Duration,
}

/// Why the tunnel stopped.
#[derive(Debug)]
pub enum Exit {
    /// SIGTERM and drained.
    Signalled,
    /// The edge refused the registration; retrying cannot help.
    Refused(String),
}

enum Link {
    Waiting {
        until: Instant,
    },
    /// The first hop's name is with the resolver.
    Resolving {
        deadline: Instant,
    },
    Connecting {
        sock: TcpStream,
        deadline: Instant,
    },
    /// Connected to the proxy: `request[..sent]` (CONNECT) is written, `answer` is what the
    /// proxy said so far (at most `MAX_HTTP_HEAD` bytes).
    Proxying {
        sock: TcpStream,
        deadline: Instant,
        sent: usize,
        request: Vec<u8>,
        answer: Vec<u8>,
    },
    Live {
        tls: Box<TlsConn>,
        mux: Box<OriginSession>,
        registered: bool,
        next_timeout: Instant,
    },
}

struct Conn {
    link: Link,
    /// Bumped at each connect attempt: names this attempt and the session it becomes.
    epoch: u64,
    attempt: u32,
    /// Stream id → local slot.
    locals: HashMap<u32, usize>,
    /// When TLS started on this connection, until the handshake is done (for metrics).
    tls_started: Option<Instant>,
}

struct Local {
    sock: TcpStream,
    conn: usize,
    stream: u32,
    /// The ingress rule it was opened by (to name its service in logs).
    rule: usize,
    connected: bool,
    deadline: Instant,
    read_done: bool,
    write_done: bool,
}

pub struct Origin {
    opts: TunnelOptions,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    /// The HTTP proxy every connection to the edge goes through, if any.
    proxy: Option<ProxyConfig>,
    connector_id: [u8; 16],
    poll: Poll,
    conns: Vec<Conn>,
    locals: Vec<Option<Local>>,
    free: Vec<usize>,
    dirty: Vec<Token>,
    scratch: Vec<u8>,
    /// Ciphertext staging for `TlsConn::read`, shared by every connection.
    stage: Vec<u8>,
    draining: Option<Instant>,
    exit: Option<Exit>,
    /// What `--metrics` serves.
    metrics: Arc<Metrics>,
    /// DNS off the loop.
    resolver: Resolver<Waiter>,
    /// Streams waiting for their service's address, by (connection, epoch, stream).
    opening: HashMap<(usize, u64, u32), Opening>,
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
        let server_name = ServerName::try_from(opts.server_name.clone()).map_err(|_| {
            io::Error::other(format!("invalid TLS server name {}", opts.server_name))
        })?;
        let edge_host = opts.edge.rsplit_once(':').map_or(&*opts.edge, |(h, _)| h);
        let proxy = proxy::proxy_for(edge_host, |k| std::env::var(k).ok())
            .map_err(|e| io::Error::other(e.to_string()))?;
        if let (Some(p), None) = (&proxy, proxy::split_host_port(&opts.edge)) {
            return Err(io::Error::other(format!(
                "the edge address {:?} is not HOST:PORT, which a CONNECT through the proxy {} \
                 needs: set --edge",
                opts.edge, p.addr
            )));
        }
        let n = opts.ha_connections.max(1);
        let now = Instant::now();
        let connector_id = random_bytes();
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let resolver = Resolver::start(Arc::new(resolve::system_lookup), move || {
            let _ = waker.wake();
        })?;
        Ok(Origin {
            metrics: Metrics::new(metrics::Role::Tunnel, connector_id),
            tls: Arc::new(tls),
            server_name,
            proxy,
            connector_id,
            poll,
            conns: (0..n)
                .map(|_| Conn {
                    link: Link::Waiting { until: now },
                    epoch: 0,
                    attempt: 0,
                    locals: HashMap::new(),
                    tls_started: None,
                })
                .collect(),
            locals: Vec::new(),
            free: Vec::new(),
            dirty: Vec::new(),
            scratch: Vec::with_capacity(CONN_WRITE_BATCH + 64 * 1024),
            stage: vec![0; TLS_READ_STAGE],
            draining: None,
            exit: None,
            resolver,
            opening: HashMap::new(),
            opts,
        })
    }

    /// Serves `/metrics` and `/ready` on `addr` (one thread); returns the bound address.
    pub fn serve_metrics(&self, addr: &str) -> io::Result<SocketAddr> {
        crate::io::metrics_server::serve(addr, self.metrics.clone())
    }

    fn local_token(&self, slot: usize) -> Token {
        Token(FIRST + self.conns.len() + slot)
    }

    pub fn run(mut self) -> io::Result<Exit> {
        let mut signals = Signals::new()?;
        self.poll
            .registry()
            .register(&mut signals.rx, SIGNALS, Interest::READABLE)?;
        match &self.opts.registration {
            Registration::Hostname(h) => info!(
                "starting tunnel for {h} -> {} via edge {} with {} connections",
                self.opts.ingress.find(h).1.service,
                self.opts.edge,
                self.conns.len()
            ),
            Registration::Named { id, name } => {
                info!(
                    "starting tunnel {name} ({id}) via edge {} with {} connections",
                    self.opts.edge,
                    self.conns.len()
                );
                for r in self.opts.ingress.rules() {
                    info!(
                        "  ingress: {} -> {}",
                        r.hostname.as_deref().unwrap_or("(every other hostname)"),
                        r.service
                    );
                }
            }
        }
        if let Some(p) = &self.proxy {
            info!(
                "connecting to the edge through the HTTP proxy {} (from {})",
                p.addr, p.source
            );
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let next = self.tick(now);
            if let Some(exit) = self.exit.take() {
                return Ok(exit);
            }
            let timeout = next.saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                if ev.token() == SIGNALS {
                    if signals.take() && self.draining.is_none() {
                        self.start_drain();
                    }
                } else if ev.token() == WAKER {
                    self.resolved();
                } else {
                    self.dirty.push(ev.token());
                }
            }
            while let Some(tok) = self.dirty.pop() {
                let i = tok.0 - FIRST;
                if i < self.conns.len() {
                    self.pump_conn(i);
                } else {
                    self.pump_local(i - self.conns.len());
                }
            }
        }
    }

    fn start_drain(&mut self) {
        info!(
            "SIGTERM: draining open streams for up to {}s",
            self.opts.grace.as_secs()
        );
        self.draining = Some(Instant::now() + self.opts.grace);
        for i in 0..self.conns.len() {
            if let Link::Live { mux, .. } = &mut self.conns[i].link {
                mux.send_goaway("origin shutting down");
            }
            self.dirty.push(Token(FIRST + i));
        }
    }

    /// Timers: reconnects, connect deadlines, keepalives, drain. Returns the next wake-up.
    fn tick(&mut self, now: Instant) -> Instant {
        let mut next = now + Duration::from_secs(1);
        if let Some(deadline) = self.draining {
            let open =
                self.opening.len() + self.conns.iter().map(|c| c.locals.len()).sum::<usize>();
            if open == 0 || now >= deadline {
                if open > 0 {
                    warn!("grace period over: closing {open} open streams");
                }
                for i in 0..self.conns.len() {
                    self.disconnect(i, None);
                }
                self.exit = Some(Exit::Signalled);
                return now;
            }
        }
        for i in 0..self.conns.len() {
            match &mut self.conns[i].link {
                Link::Waiting { until } => {
                    if self.draining.is_none() {
                        if now >= *until {
                            self.connect(i);
                        } else {
                            next = next.min(*until);
                        }
                    }
                }
                Link::Resolving { deadline } => {
                    if now >= *deadline {
                        let first_hop = self.proxy.as_ref().map_or(&self.opts.edge, |p| &p.addr);
                        warn!("connection {i}: resolving {first_hop} timed out");
                        self.metrics.error(metrics::Error::Connect);
                        self.disconnect(i, Some("resolve timeout"));
                    } else {
                        next = next.min(*deadline);
                    }
                }
                Link::Connecting { deadline, .. } => {
                    if now >= *deadline {
                        match &self.proxy {
                            Some(p) => warn!(
                                "connection {i}: connecting to the proxy {} timed out",
                                p.addr
                            ),
                            None => warn!("connection {i}: connecting to the edge timed out"),
                        }
                        self.metrics.error(metrics::Error::Connect);
                        self.disconnect(i, Some("connect timeout"));
                    }
                }
                Link::Proxying { deadline, .. } => {
                    if now >= *deadline {
                        if let Some(p) = &self.proxy {
                            let e = p.timed_out(&self.opts.edge, PROXY_ANSWER_TIMEOUT_SECS);
                            warn!("connection {i}: {e}");
                        }
                        self.metrics.error(metrics::Error::Connect);
                        self.disconnect(i, Some("proxy timeout"));
                    }
                }
                Link::Live {
                    mux, next_timeout, ..
                } => {
                    if now >= *next_timeout {
                        match mux.handle_timeout(now) {
                            Ok(t) => {
                                *next_timeout = t;
                                next = next.min(t);
                                self.dirty.push(Token(FIRST + i));
                            }
                            Err(e) => {
                                warn!("connection {i}: {e}");
                                self.metrics.error(metrics::Error::Keepalive);
                                self.disconnect(i, Some("keepalive timeout"));
                            }
                        }
                    } else {
                        next = next.min(*next_timeout);
                    }
                }
            }
        }
        self.count_connections();
        let unresolved: Vec<(usize, u64, u32)> = self
            .opening
            .iter()
            .filter(|(_, o)| now >= o.deadline)
            .map(|(k, _)| *k)
            .collect();
        for key in unresolved {
            self.opening.remove(&key);
            self.fail_opening(key, "resolving the service timed out");
        }
        if let Some(soonest) = self.opening.values().map(|o| o.deadline).min() {
            next = next.min(soonest);
        }
        for slot in 0..self.locals.len() {
            if let Some(l) = &self.locals[slot] {
                if !l.connected && now >= l.deadline {
                    self.fail_local(slot, "connect to the service timed out");
                }
            }
        }
        while let Some(tok) = self.dirty.pop() {
            let i = tok.0 - FIRST;
            if i < self.conns.len() {
                self.pump_conn(i);
            } else {
                self.pump_local(i - self.conns.len());
            }
        }
        next
    }

    /// Sets the connection and stream gauges (a scan of at most 16 connections).
    fn count_connections(&self) {
        let (mut live, mut ready, mut streams) = (0, 0, 0);
        for c in &self.conns {
            if let Link::Live { registered, .. } = &c.link {
                live += 1;
                if *registered {
                    ready += 1;
                }
            }
            streams += c.locals.len();
        }
        self.metrics.set_connections(0, live, ready);
        self.metrics.set_streams_active(streams);
    }

    fn connect(&mut self, i: usize) {
        if self.conns[i].attempt > 0 {
            self.metrics.reconnect();
        }
        self.conns[i].epoch += 1;
        let epoch = self.conns[i].epoch;
        let first_hop = self.proxy.as_ref().map_or(&self.opts.edge, |p| &p.addr);
        let now = Instant::now();
        match self
            .resolver
            .lookup(first_hop, Waiter::Edge { conn: i, epoch }, now)
        {
            Lookup::Ready(addr) => self.connect_to(i, addr),
            Lookup::Pending => {
                self.conns[i].link = Link::Resolving {
                    deadline: now + Duration::from_secs(RESOLVE_TIMEOUT_SECS),
                }
            }
            Lookup::Failed(e) => {
                warn!("connection {i}: {e}");
                self.metrics.error(metrics::Error::Connect);
                self.backoff(i);
            }
        }
    }

    /// The resolver answered: connections and streams waiting for a name go on (or fail).
    fn resolved(&mut self) {
        for (waiter, result) in self.resolver.answers(Instant::now()) {
            match waiter {
                Waiter::Edge { conn: i, epoch } => {
                    let current = self.conns[i].epoch == epoch
                        && matches!(self.conns[i].link, Link::Resolving { .. });
                    match (current, result) {
                        (false, _) => {}
                        (true, Ok(addr)) => self.connect_to(i, addr),
                        (true, Err(e)) => {
                            warn!("connection {i}: {e}");
                            self.metrics.error(metrics::Error::Connect);
                            self.backoff(i);
                        }
                    }
                }
                Waiter::Stream {
                    conn,
                    epoch,
                    stream,
                } => {
                    let Some(o) = self.opening.remove(&(conn, epoch, stream)) else {
                        continue; // Timed out, reset, or its connection is gone.
                    };
                    match result {
                        Ok(addr) => self.connect_local(conn, stream, o.rule, addr),
                        Err(e) => self.fail_opening((conn, epoch, stream), &e),
                    }
                }
            }
        }
        while let Some(tok) = self.dirty.pop() {
            let i = tok.0 - FIRST;
            if i < self.conns.len() {
                self.pump_conn(i);
            } else {
                self.pump_local(i - self.conns.len());
            }
        }
    }

    /// A TCP connect to the first hop (the proxy or the edge), without waiting.
    fn connect_to(&mut self, i: usize, addr: SocketAddr) {
        match TcpStream::connect(addr) {
            Ok(mut sock) => {
                let _ = sock.set_nodelay(true);
                if let Err(e) = self.poll.registry().register(
                    &mut sock,
                    Token(FIRST + i),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    warn!("connection {i}: {e}");
                    self.backoff(i);
                    return;
                }
                debug!("connection {i}: connecting to {addr}");
                self.conns[i].link = Link::Connecting {
                    sock,
                    deadline: Instant::now() + Duration::from_secs(10),
                };
            }
            Err(e) => {
                warn!("connection {i}: {}", self.cannot_reach(addr, &e));
                self.metrics.error(metrics::Error::Connect);
                self.backoff(i);
            }
        }
    }

    /// A failed TCP connect to the first hop (the proxy or the edge), with what to check.
    fn cannot_reach(&self, addr: impl std::fmt::Display, e: &io::Error) -> String {
        match &self.proxy {
            Some(p) => format!(
                "cannot reach the proxy {} (from {}) at {addr}: {e} (is the proxy running? or \
                 name the edge in NO_PROXY to connect directly)",
                p.addr, p.source
            ),
            None => format!(
                "cannot reach the edge at {addr}: {e} (is egress to the edge's port allowed?)"
            ),
        }
    }

    fn backoff(&mut self, i: usize) {
        let c = &mut self.conns[i];
        c.attempt = c.attempt.saturating_add(1);
        let cap = RECONNECT_BACKOFF_CAP_SECS * 1000;
        let ceiling = (500u64 << c.attempt.min(10)).min(cap);
        // Full jitter: anywhere in [0, ceiling).
        let delay = Duration::from_millis(random_u64() % ceiling.max(1));
        debug!("connection {i}: retrying in {delay:?}");
        c.link = Link::Waiting {
            until: Instant::now() + delay,
        };
    }

    /// Drops a connection and its streams; reconnects later unless `why` is None (shutdown).
    fn disconnect(&mut self, i: usize, why: Option<&str>) {
        let link = std::mem::replace(
            &mut self.conns[i].link,
            Link::Waiting {
                until: Instant::now(),
            },
        );
        match link {
            Link::Live { mut tls, .. } => {
                tls.close();
                let _ = self.poll.registry().deregister(&mut tls.sock);
            }
            Link::Connecting { mut sock, .. } | Link::Proxying { mut sock, .. } => {
                let _ = self.poll.registry().deregister(&mut sock);
            }
            Link::Waiting { .. } | Link::Resolving { .. } => {}
        }
        self.opening.retain(|&(c, _, _), _| c != i);
        let locals: Vec<usize> = self.conns[i].locals.drain().map(|(_, s)| s).collect();
        for slot in locals {
            self.drop_local(slot);
        }
        if let Some(why) = why {
            info!("connection {i} lost ({why}); reconnecting");
            self.backoff(i);
        }
    }

    fn pump_conn(&mut self, i: usize) {
        if matches!(self.conns[i].link, Link::Connecting { .. }) && !self.finish_connect(i) {
            return;
        }
        if matches!(self.conns[i].link, Link::Proxying { .. }) && !self.pump_proxy(i) {
            return;
        }
        loop {
            match self.conn_step(i) {
                Some(true) => continue,
                Some(false) => break,
                None => return,
            }
        }
        // Events that sending raises (Writable, Closed) are handled inside `transmit`.
        self.transmit(i);
    }

    /// Finishes a non-blocking connect: take_error, then peer_addr (mio's documented steps).
    /// True once the link moved on: to `Proxying` with a proxy, else to `Live`.
    fn finish_connect(&mut self, i: usize) -> bool {
        let Link::Connecting { sock, .. } = &mut self.conns[i].link else {
            return false;
        };
        match sock.take_error() {
            Ok(Some(e)) | Err(e) => {
                let first_hop = self.proxy.as_ref().map_or(&self.opts.edge, |p| &p.addr);
                warn!("connection {i}: {}", self.cannot_reach(first_hop, &e));
                self.metrics.error(metrics::Error::Connect);
                self.disconnect(i, Some("connect failed"));
                return false;
            }
            Ok(None) => {}
        }
        match sock.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return false,
            Err(e) => {
                warn!("connection {i}: {e}");
                self.disconnect(i, Some("connect failed"));
                return false;
            }
        }
        let Link::Connecting { sock, .. } = std::mem::replace(
            &mut self.conns[i].link,
            Link::Waiting {
                until: Instant::now(),
            },
        ) else {
            unreachable!()
        };
        match &self.proxy {
            Some(p) => {
                debug!("connection {i}: asking the proxy {} for the edge", p.addr);
                self.conns[i].link = Link::Proxying {
                    sock,
                    deadline: Instant::now() + Duration::from_secs(PROXY_ANSWER_TIMEOUT_SECS),
                    sent: 0,
                    request: p.connect_request(&self.opts.edge),
                    answer: Vec::new(),
                };
                true
            }
            None => self.start_tls(i, sock, &[]),
        }
    }

    /// Writes `CONNECT edge` and reads the proxy's answer as far as the socket allows, never
    /// blocking. True once the proxy opened the tunnel and the link is `Live`.
    fn pump_proxy(&mut self, i: usize) -> bool {
        let (
            Some(p),
            Link::Proxying {
                sock,
                sent,
                request,
                answer,
                ..
            },
        ) = (&self.proxy, &mut self.conns[i].link)
        else {
            return false;
        };
        let edge = &self.opts.edge;
        let outcome = loop {
            if *sent < request.len() {
                match sock.write(&request[*sent..]) {
                    Ok(0) => break Err(p.closed(edge).to_string()),
                    Ok(n) => *sent += n,
                    Err(e) if would_block(&e) => return false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        break Err(format!(
                            "sending CONNECT to the proxy {} failed: {e}",
                            p.addr
                        ))
                    }
                }
                continue;
            }
            match proxy::read_answer(answer, p, edge) {
                Ok(Some(n)) => break Ok(n),
                Ok(None) => {}
                Err(e) => break Err(e.to_string()),
            }
            // Never more than the head limit: `read_answer` refuses a full buffer without
            // a head, so there is always room here.
            let mut chunk = [0u8; 4096];
            let room = MAX_HTTP_HEAD.saturating_sub(answer.len()).min(chunk.len());
            match sock.read(&mut chunk[..room]) {
                Ok(0) => break Err(p.closed(edge).to_string()),
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(e) if would_block(&e) => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    break Err(format!(
                        "reading the answer of the proxy {} failed: {e}",
                        p.addr
                    ))
                }
            }
        };
        let head_len = match outcome {
            Ok(n) => n,
            Err(why) => {
                warn!("connection {i}: {why}");
                self.metrics.error(metrics::Error::Connect);
                self.disconnect(i, Some("no tunnel through the proxy"));
                return false;
            }
        };
        let Link::Proxying { sock, answer, .. } = std::mem::replace(
            &mut self.conns[i].link,
            Link::Waiting {
                until: Instant::now(),
            },
        ) else {
            unreachable!()
        };
        debug!("connection {i}: the proxy opened a tunnel to {edge}");
        self.start_tls(i, sock, &answer[head_len..])
    }

    /// Starts TLS and the mux on a connected socket; `early` holds bytes the edge sent
    /// before (through a proxy, after its answer). True when the link is `Live`.
    fn start_tls(&mut self, i: usize, mut sock: TcpStream, early: &[u8]) -> bool {
        let mut conn =
            match rustls::ClientConnection::new(self.tls.clone(), self.server_name.clone()) {
                Ok(c) => c,
                Err(e) => {
                    error!("connection {i}: TLS setup: {e}");
                    let _ = self.poll.registry().deregister(&mut sock);
                    self.backoff(i);
                    return false;
                }
            };
        if let Err(e) = proxy::hand_to_tls(&mut conn, early) {
            warn!("connection {i}: TLS with the edge through the proxy: {e}");
            let _ = self.poll.registry().deregister(&mut sock);
            self.backoff(i);
            return false;
        }
        let now = Instant::now();
        let mut mux = Box::new(OriginSession::new(now));
        mux.send_hello(self.connector_id, i as u8);
        match &self.opts.registration {
            Registration::Hostname(h) => {
                let service = self.opts.ingress.find(h).1.service.to_string();
                mux.send_register(h, &service)
            }
            // An empty hostname: "route to me what is routed to my certificate's tunnel".
            Registration::Named { name, .. } => mux.send_register("", name),
        }
        self.conns[i].tls_started = Some(now);
        self.conns[i].link = Link::Live {
            tls: Box::new(TlsConn::new(sock, conn)),
            mux,
            registered: false,
            next_timeout: now,
        };
        true
    }

    /// One pass: read, frames in, events. `Some(true)`: `rx` was full, go again;
    /// `None`: the connection is gone.
    fn conn_step(&mut self, i: usize) -> Option<bool> {
        let conn = &mut self.conns[i];
        let Link::Live { tls, mux, .. } = &mut conn.link else {
            return None;
        };
        let full = tls.read(&mut self.stage);
        if !tls.tls.is_handshaking() {
            if let Some(at) = conn.tls_started.take() {
                self.metrics.handshake(at.elapsed());
            }
        }
        if let Err(e) = full {
            let msg = match tls_advice(&e) {
                Some(advice) => format!("{e}: {advice}"),
                None => e.to_string(),
            };
            warn!("connection {i}: {msg}");
            self.metrics.error(metrics::Error::Tls);
            self.disconnect(i, Some("TLS error"));
            return None;
        }
        let full = full.unwrap_or(false);
        if !tls.rx.is_empty() {
            match mux.handle_input(tls.rx.data(), Instant::now()) {
                Ok(n) => tls.rx.consume(n),
                Err(e) => {
                    warn!("connection {i}: protocol error from edge: {e}");
                    self.metrics.error(metrics::Error::TunnelProtocol);
                    self.disconnect(i, Some("protocol error"));
                    return None;
                }
            }
        }
        let mut events = Vec::new();
        while let Some(ev) = mux.poll_event() {
            events.push(ev);
        }
        let peer_closed = tls.peer_closed;
        for ev in events {
            self.on_event(i, ev);
            if self.exit.is_some() {
                return None;
            }
        }
        if peer_closed {
            self.disconnect(i, Some("edge closed the connection"));
            return None;
        }
        let Link::Live { tls, .. } = &self.conns[i].link else {
            return None;
        };
        Some(full && tls.has_room())
    }

    fn transmit(&mut self, i: usize) {
        let Link::Live { tls, mux, .. } = &mut self.conns[i].link else {
            return;
        };
        // Flush first: `can_send` must see what the socket took since the last pass.
        let _ = tls.flush();
        while tls.can_send() && mux.wants_transmit() {
            self.scratch.clear();
            mux.poll_transmit(&mut self.scratch, CONN_WRITE_BATCH);
            tls.send(&self.scratch);
            if tls.flush().is_err() {
                break;
            }
        }
        self.scratch.clear();
        // Sending frees stream buffers: the `Writable` (and `Closed`) events that raises must
        // reach their local sockets now, not with the next frame from the edge (which may be
        // a WINDOW that waits for those very sockets).
        let mut events = Vec::new();
        while let Some(ev) = mux.poll_event() {
            events.push(ev);
        }
        if let Err(e) = tls.flush() {
            warn!("connection {i}: {e}");
            self.disconnect(i, Some("write failed"));
            return;
        }
        for ev in events {
            self.on_event(i, ev);
            if self.exit.is_some() {
                return;
            }
        }
    }

    fn on_event(&mut self, i: usize, ev: OriginEvent) {
        match ev {
            OriginEvent::Registered { hostname } => {
                // Text from the edge: escaped before it reaches a terminal or the journal.
                let hostname = untrusted(&hostname);
                match &self.opts.registration {
                    Registration::Hostname(_) => info!("connection {i} registered {hostname}"),
                    Registration::Named { name, .. } => {
                        info!("connection {i} registered tunnel {name} (routes: {hostname})")
                    }
                }
                self.conns[i].attempt = 0;
                if let Link::Live { registered, .. } = &mut self.conns[i].link {
                    *registered = true;
                }
            }
            OriginEvent::Error { code, message } => {
                let message = untrusted(&message).to_string();
                if code.is_final() {
                    error!("connection {i}: the edge refused: {message}");
                    self.metrics.error(metrics::Error::RegistrationRefused);
                    self.exit = Some(Exit::Refused(message));
                } else {
                    warn!("connection {i}: edge error {code}: {message}");
                    self.metrics.error(metrics::Error::EdgeError);
                    self.disconnect(i, Some("edge error"));
                }
            }
            OriginEvent::Open {
                stream,
                hostname,
                claims,
            } => {
                info!("connection {i}: stream {stream} for {}", who(&claims));
                self.open_local(i, stream, &hostname)
            }
            OriginEvent::Stream(StreamEvent::Readable(stream) | StreamEvent::Writable(stream)) => {
                if let Some(&slot) = self.conns[i].locals.get(&stream) {
                    let tok = self.local_token(slot);
                    self.dirty.push(tok);
                }
            }
            OriginEvent::Stream(StreamEvent::Closed(stream)) => {
                self.opening.remove(&(i, self.conns[i].epoch, stream));
                if let Some(slot) = self.conns[i].locals.remove(&stream) {
                    self.drop_local(slot);
                }
            }
            OriginEvent::Stream(StreamEvent::Reset { stream, reason, .. }) => {
                debug!(
                    "connection {i}: stream {stream} reset by edge: {}",
                    untrusted(&reason)
                );
                self.opening.remove(&(i, self.conns[i].epoch, stream));
                if let Some(slot) = self.conns[i].locals.remove(&stream) {
                    self.drop_local(slot);
                }
            }
            OriginEvent::GoAway { reason, .. } => {
                info!(
                    "connection {i}: edge is going away ({})",
                    untrusted(&reason)
                );
                // Let open streams finish; the edge closes the connection and we reconnect.
            }
        }
    }

    fn open_local(&mut self, i: usize, stream: u32, hostname: &str) {
        let epoch = self.conns[i].epoch;
        let Link::Live { mux, .. } = &mut self.conns[i].link else {
            return;
        };
        let host = hostname.to_ascii_lowercase();
        let (rule, r) = self.opts.ingress.find(&host);
        let service = match &r.service {
            Service::Tcp { addr, .. } => addr,
            Service::Status(code) => {
                info!(
                    "stream {stream}: no ingress rule serves {} (http_status:{code})",
                    untrusted(&host)
                );
                mux.reset(
                    stream,
                    mux::ResetCode::NoService,
                    &format!("the origin serves no service for {host} (status {code})"),
                );
                return;
            }
        };
        let waiter = Waiter::Stream {
            conn: i,
            epoch,
            stream,
        };
        let now = Instant::now();
        match self.resolver.lookup(service, waiter, now) {
            Lookup::Ready(addr) => self.connect_local(i, stream, rule, addr),
            Lookup::Pending => {
                let deadline = now + Duration::from_secs(RESOLVE_TIMEOUT_SECS);
                self.opening
                    .insert((i, epoch, stream), Opening { rule, deadline });
            }
            Lookup::Failed(e) => {
                warn!("stream {stream}: {e}");
                self.metrics.error(metrics::Error::ServiceConnect);
                mux.reset(stream, mux::ResetCode::ConnectFailed, &e);
            }
        }
    }

    /// A stream waiting for its service's address cannot have it: reset, with why.
    fn fail_opening(&mut self, (i, epoch, stream): (usize, u64, u32), why: &str) {
        if self.conns[i].epoch != epoch {
            return;
        }
        if let Link::Live { mux, .. } = &mut self.conns[i].link {
            if mux.has_stream(stream) {
                warn!("stream {stream}: {why}");
                self.metrics.error(metrics::Error::ServiceConnect);
                mux.reset(stream, mux::ResetCode::ConnectFailed, why);
                self.dirty.push(Token(FIRST + i));
            }
        }
    }

    /// Connects a stream to its service at `addr` (without waiting) and splices them.
    fn connect_local(&mut self, i: usize, stream: u32, rule: usize, addr: SocketAddr) {
        let n_conns = self.conns.len();
        let Link::Live { mux, .. } = &mut self.conns[i].link else {
            return;
        };
        if !mux.has_stream(stream) {
            return; // Reset or closed by the edge while its service's name was resolved.
        }
        let mut sock = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                warn!("stream {stream}: cannot connect to {addr}: {e}");
                self.metrics.error(metrics::Error::ServiceConnect);
                mux.reset(stream, mux::ResetCode::ConnectFailed, &e.to_string());
                return;
            }
        };
        let _ = sock.set_nodelay(true);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.locals.push(None);
                self.locals.len() - 1
            }
        };
        let tok = Token(FIRST + n_conns + slot);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut sock, tok, Interest::READABLE | Interest::WRITABLE)
        {
            mux.reset(stream, mux::ResetCode::ConnectFailed, &e.to_string());
            self.free.push(slot);
            return;
        }
        debug!("connection {i}: stream {stream} -> {addr}");
        self.locals[slot] = Some(Local {
            sock,
            conn: i,
            stream,
            rule,
            connected: false,
            deadline: Instant::now() + Duration::from_secs(SERVICE_CONNECT_TIMEOUT_SECS),
            read_done: false,
            write_done: false,
        });
        self.conns[i].locals.insert(stream, slot);
        self.metrics.stream_opened();
    }

    fn pump_local(&mut self, slot: usize) {
        let Some(Some(l)) = self.locals.get_mut(slot) else {
            return;
        };
        let i = l.conn;
        let Link::Live { mux, .. } = &mut self.conns[i].link else {
            return;
        };
        if !mux.has_stream(l.stream) {
            self.conns[i].locals.remove(&l.stream);
            self.drop_local(slot);
            return;
        }
        if !l.connected {
            match l.sock.take_error() {
                Ok(Some(e)) | Err(e) => return self.fail_local(slot, &e.to_string()),
                Ok(None) => {}
            }
            match l.sock.peer_addr() {
                Ok(_) => l.connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.fail_local(slot, &e.to_string()),
            }
        }
        let stream = l.stream;
        let mut moved = false;
        // Service → edge: read straight into the stream's send buffer.
        while !l.read_done {
            let sock = &mut l.sock;
            let Some(got) = mux.fill(stream, |tail| sock.read(tail)) else {
                break;
            };
            match got {
                Ok(0) => {
                    l.read_done = true;
                    mux.close_write(stream);
                    moved = true;
                }
                Ok(n) => {
                    self.metrics.bytes(Direction::OriginToClient, n);
                    moved = true;
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("stream {stream}: service read: {e}");
                    mux.reset(stream, mux::ResetCode::Cancel, "service connection failed");
                    self.conns[i].locals.remove(&stream);
                    self.drop_local(slot);
                    self.dirty.push(Token(FIRST + i));
                    return;
                }
            }
        }
        // Edge → service.
        loop {
            let data = mux.readable(stream);
            if data.is_empty() {
                break;
            }
            match l.sock.write(data) {
                Ok(n) => {
                    mux.consume(stream, n);
                    self.metrics.bytes(Direction::ClientToOrigin, n);
                    moved = true;
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("stream {stream}: service write: {e}");
                    mux.reset(stream, mux::ResetCode::Cancel, "service connection failed");
                    self.conns[i].locals.remove(&stream);
                    self.drop_local(slot);
                    self.dirty.push(Token(FIRST + i));
                    return;
                }
            }
        }
        if !l.write_done && mux.read_closed(stream) {
            l.write_done = true;
            let _ = l.sock.shutdown(Shutdown::Write);
        }
        let gone = !mux.has_stream(stream);
        if moved {
            self.dirty.push(Token(FIRST + i));
        }
        if gone {
            self.conns[i].locals.remove(&stream);
            self.drop_local(slot);
        }
    }

    fn fail_local(&mut self, slot: usize, why: &str) {
        let Some(Some(l)) = self.locals.get(slot) else {
            return;
        };
        let (i, stream) = (l.conn, l.stream);
        warn!(
            "stream {stream}: cannot connect to the service {}: {why}",
            self.opts.ingress.rules()[l.rule].service
        );
        self.metrics.error(metrics::Error::ServiceConnect);
        if let Link::Live { mux, .. } = &mut self.conns[i].link {
            mux.reset(stream, mux::ResetCode::ConnectFailed, why);
        }
        self.conns[i].locals.remove(&stream);
        self.drop_local(slot);
        self.dirty.push(Token(FIRST + i));
    }

    fn drop_local(&mut self, slot: usize) {
        if let Some(mut l) = self.locals[slot].take() {
            let _ = self.poll.registry().deregister(&mut l.sock);
            self.free.push(slot);
        }
    }
}

/// Longest part of a peer's identity a log line shows, in characters.
const MAX_WHO_SHOWN: usize = 128;

/// Who the edge says a stream is for, from OPEN's claims, fit for a log line: an email (SSO),
/// a service token's name, or `anonymous` (a bypass policy); shortened, control characters
/// and quotes escaped. The claims' `assertion` (the same, signed by the edge for this stream)
/// is for whoever wants to check it; it is not logged.
fn who(claims: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Who {
        email: Option<String>,
        service_token: Option<String>,
    }
    let shown = |s: &str| crate::logging::escape(s, MAX_WHO_SHOWN);
    match serde_json::from_slice::<Who>(claims) {
        Ok(Who {
            email: Some(email), ..
        }) => shown(&email),
        Ok(Who {
            service_token: Some(token),
            ..
        }) => format!("service token {}", shown(&token)),
        _ => "anonymous".into(),
    }
}

/// Maps `ssh://host:port`, `tcp://host:port` or `host:port` to `host:port`.
pub fn service_address(url: &str) -> Result<String, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("tcp", url),
    };
    let default_port = match scheme {
        "ssh" => 22,
        "tcp" => 0,
        other => {
            return Err(format!(
                "--url scheme {other}:// is not supported (use ssh:// or tcp://)"
            ))
        }
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err("--url names no host".into());
    }
    if rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        Ok(rest.to_owned())
    } else if default_port != 0 {
        Ok(format!("{rest}:{default_port}"))
    } else {
        Err(format!("--url {url} needs a port"))
    }
}

/// What to do about a failed TLS connection to the edge, chosen by the rustls error's
/// variant (its text also says "certificate" when the edge refused ours).
fn tls_advice(e: &io::Error) -> Option<&'static str> {
    use rustls::AlertDescription as A;
    match crate::io::tls::rustls_error(e)? {
        rustls::Error::InvalidCertificate(_) => {
            Some("the edge's certificate is not trusted: pass --ca with the edge's CA")
        }
        rustls::Error::AlertReceived(
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::CertificateRequired,
        ) => Some(
            "the edge refused this origin's certificate: is the credential from this edge, and \
             still valid? (`postern tunnel login`, or a new credentials file)",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_advice_follows_the_rustls_error_not_its_text() {
        let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let theirs = tls(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert!(tls_advice(&theirs).unwrap().contains("pass --ca"));
        let ours = tls(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate,
        ));
        let advice = tls_advice(&ours).unwrap();
        assert!(
            advice.contains("refused this origin's certificate"),
            "{advice}"
        );
        assert!(!advice.contains("--ca"), "{advice}");
        // Words alone choose nothing.
        assert_eq!(tls_advice(&io::Error::other("certificate")), None);
        assert_eq!(
            tls_advice(&tls(rustls::Error::AlertReceived(
                rustls::AlertDescription::HandshakeFailure
            ))),
            None
        );
    }

    #[test]
    fn service_urls() {
        assert_eq!(
            service_address("ssh://localhost:22").unwrap(),
            "localhost:22"
        );
        assert_eq!(service_address("ssh://localhost").unwrap(), "localhost:22");
        assert_eq!(
            service_address("tcp://127.0.0.1:5432").unwrap(),
            "127.0.0.1:5432"
        );
        assert_eq!(service_address("127.0.0.1:2222").unwrap(), "127.0.0.1:2222");
        assert!(service_address("http://x:1").is_err());
        assert!(service_address("tcp://x").is_err());
    }

    #[test]
    fn who_a_stream_is_for_is_escaped_and_never_shows_the_assertion() {
        assert_eq!(
            who(br#"{"email":"alice@example.com","service_token":null,"assertion":"e.y.j"}"#),
            "alice@example.com"
        );
        assert_eq!(
            who(br#"{"email":null,"service_token":"ci","assertion":"e.y.j"}"#),
            "service token ci"
        );
        assert_eq!(who(br#"{"assertion":"e.y.j"}"#), "anonymous");
        assert_eq!(who(b"not json"), "anonymous");
        assert_eq!(who(br#"{"email":5}"#), "anonymous");
        let evil = who(b"{\"email\":\"a\\u001b[31m\\nINFO forged\\\"\"}");
        assert_eq!(evil, "a\\u{1b}[31m\\u{a}INFO forged\"");
        assert!(!evil.chars().any(char::is_control));
        let long = who(format!(r#"{{"email":"{}"}}"#, "x".repeat(1000)).as_bytes());
        assert_eq!(long, format!("{}…(1000 bytes)", "x".repeat(MAX_WHO_SHOWN)));
    }
}
