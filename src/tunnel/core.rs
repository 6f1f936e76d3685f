//! The origin's link core: every decision of `postern tunnel`, with the time passed in. The
//! driver (`driver.rs`) owns the sockets, TLS record IO, the resolver thread and the clock;
//! it turns readiness into the inputs below and carries out the [`Output`]s this core queues.
//!
//! Each HA connection (a *slot*) cycles through:
//!
//! ```text
//!  Waiting(until) ─▶ Resolving(first hop) ─▶ Connecting(TCP) ─────────────▶ Live(TLS + mux)
//!        ▲                                        │                     │   │
//!        │                          (HTTPS_PROXY) └─▶ Proxying(CONNECT) ─┘   │
//!        └──── backoff ◀── failure, timeout, refusal by the proxy, TLS or ◀──┘
//!                          protocol error, keepalive, EOF, non-final ERROR
//!  Live ──final ERROR (a refused REGISTER)──▶ exit: Refused
//!  shutdown ─▶ GOAWAY on every Live; no reconnects; exit once no stream is open, or at grace
//! ```
//!
//! Each attempt bumps the slot's *epoch*: a [`ConnId`] is (slot, epoch), and inputs naming an
//! attempt that has ended are ignored. Backoff is exponential with full jitter
//! (`500 ms << attempt`, capped at `RECONNECT_BACKOFF_CAP_SECS`), and resets once registered.
//!
//! Each stream the edge opens goes to the service of the first ingress rule matching its
//! hostname: `Resolving` (the service's name) ─▶ `Connecting` (TCP, driver's) ─▶ `Spliced`;
//! a name or connect that fails or times out resets the stream (`ConnectFailed`), a hostname
//! with no service resets it at once (`NoService`). The splice's bytes move between the
//! service socket and the stream's buffers through [`Core::service_fill`] and
//! [`Core::service_pending`] without copies; the core says when a side is done.
//!
//! Service connections are named by a [`ServiceId`] for the whole process, not by the mux
//! stream that opened them: a *resumable* stream (OPEN's claims say `"resume":"start"`)
//! outlives its mux stream. Its bytes go through the record layer (`proto::resume`): the
//! service's reads fill the replay buffer, records go to the mux stream, the client's
//! records are parsed and their payload written to the service. Each service is:
//!
//! ```text
//!  attached(conn, stream) ──connection lost, RST Lost──▶ detached(until) ──window over──▶ closed
//!        ▲    │                                               │
//!        │    └──RESUME on another stream (the old one: RST)──┤
//!        └──────────── RESUME: key, identity and offset ok ◀──┘
//!  attached ──finished (FIN both ways, all acked), other RST, service error──▶ closed
//! ```
//!
//! A plain stream is always attached: it closes with its mux stream or its connection.
//! A RESUME (`"resume":"resume"`, no service connect) names the stream by id and secret;
//! a wrong secret, an unknown id, another identity or an offset outside the replay buffer
//! resets the new mux stream only. A detached stream reads and writes nothing: the service's
//! output waits in its socket (backpressure) until the client is back.
//!
//! Shape (str0m's): inputs are method calls carrying `now`; [`Core::poll_output`] yields
//! what to do; [`Core::poll_timeout`] says when to call [`Core::handle_timeout`] next.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use crate::limits::{
    CUT_THROUGH_MIN, EDGE_CONNECT_TIMEOUT, MAX_DETACHED_PER_IDENTITY, MAX_DETACHED_STREAMS,
    RECONNECT_AT_ONCE_JITTER, RECONNECT_AT_ONCE_UPTIME, RECONNECT_BACKOFF_CAP_SECS,
    RESOLVE_TIMEOUT_SECS, RESUME_ACK_INTERVAL, SERVICE_CONNECT_TIMEOUT_SECS,
};
use crate::logging::untrusted;
use crate::metrics::{self, Direction, Metrics};
use crate::proto::destination::{self, Destination, Host as DestHost};
use crate::proto::idmap::IdMap;
use crate::proto::mux::{self, OriginEvent, OriginSession, ResetCode, StreamEvent};
use crate::proto::proxy::{self, ProxyConfig};
use crate::proto::resume::{Endpoint, Key, Opening, ACK_LEN, DATA_HEADER, DIRECT_HEAD, MAX_DATA};

use super::config::{Ingress, Service};

/// The longest the core sleeps: the gauges are refreshed at least this often.
const TICK: Duration = Duration::from_secs(1);

/// What the origin registers with the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// The guide's form, `--hostname H`: H, owned by the origin certificate.
    Hostname(String),
    /// A named tunnel (`tunnel run`): every hostname routed to it at the edge.
    Named { id: String, name: String },
}

/// Why the tunnel stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM and drained.
    Signalled,
    /// The edge refused the registration; retrying cannot help.
    Refused(String),
}

/// One edge of the pool, as `--edge` names it.
pub struct EdgeTarget {
    /// `host:port`.
    pub addr: String,
    /// The HTTP proxy the connections to this edge go through, if any (`NO_PROXY` may
    /// exempt some edges and not others).
    pub proxy: Option<ProxyConfig>,
}

/// What the core decides with: the tunnel's options without the files and the TLS setup.
pub struct Config {
    pub registration: Registration,
    pub ingress: Ingress,
    /// The edges (at least one): slot `i` connects to edge `i mod N` (see [`spread`]).
    pub edges: Vec<EdgeTarget>,
    pub connector_id: [u8; 16],
    /// How long open streams may take to finish after [`Core::shutdown`].
    pub grace: Duration,
    /// HA connections (at least one); raised to the number of edges (see [`slot_count`]).
    pub connections: usize,
    /// How long a resumable stream whose client is gone keeps its service connection.
    pub resume_window: Duration,
}

/// How many slots (HA connections) a tunnel holds: `ha`, raised to the number of edges so
/// that every edge gets one (an edge routes a hostname only to origins connected to it).
pub fn slot_count(ha: usize, edges: usize) -> usize {
    ha.max(edges).max(1)
}

/// Slot `slot`'s edge among `edges`, and its rank among that edge's slots: slots go round
/// the edges (0 → A, 1 → B, 2 → A, …), and the rank picks among the addresses the edge's
/// name resolves to in the same way (`rank mod addresses`).
pub fn spread(slot: usize, edges: usize) -> (usize, usize) {
    let edges = edges.max(1);
    (slot % edges, slot / edges)
}

/// One attempt of one HA connection: its slot and the attempt's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub slot: usize,
    pub epoch: u64,
}

/// One stream of one connection's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamId {
    pub conn: ConnId,
    pub stream: u32,
}

/// One service connection, named for the life of the process (never reused): a resumable
/// stream's service outlives the mux stream, and the tunnel connection, that opened it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u64);

impl std::fmt::Display for ServiceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "service {}", self.0)
    }
}

/// Who waits for a name: a connection attempt (its first hop) or a stream's service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiter {
    Edge(ConnId),
    Service(ServiceId),
}

/// What the driver does for the core, in the order queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Look `name` (`host:port`) up; answer with [`Core::resolved`].
    Resolve { waiter: Waiter, name: String },
    /// Start a TCP connect to `addr` (the proxy or the edge); then [`Core::edge_connected`]
    /// or [`Core::edge_connect_failed`].
    ConnectEdge { conn: ConnId, addr: SocketAddr },
    /// TLS with the edge starts on the connection's socket, first given `early` (what the
    /// proxy passed on after its answer). [`Core::tls_setup_failed`] if it cannot.
    StartTls { conn: ConnId, early: Vec<u8> },
    /// The connection is over: close TLS if it runs, drop the socket.
    CloseEdge { conn: ConnId },
    /// Connect a new service connection to `addr`; then [`Core::service_connected`] or
    /// [`Core::service_connect_failed`].
    ConnectService {
        service: ServiceId,
        addr: SocketAddr,
    },
    /// The service gets no more bytes: shut its socket's write side.
    ShutdownService { service: ServiceId },
    /// The service connection is over: drop its socket.
    CloseService { service: ServiceId },
    /// The connection has something to send, or more to read: pump it.
    PumpEdge(ConnId),
    /// The service's stream has bytes for it, or room for more from it: pump it.
    PumpService(ServiceId),
    /// The service's stream has a few bytes for it (`few_bytes_readable`: a keystroke, an
    /// echo): pump it before the bulk of this pass, and before the connection it came on
    /// reads or sends more (docs/design.md §2.8).
    PumpServiceFirst(ServiceId),
}

struct Live {
    mux: OriginSession,
    /// Since when the edge accepted the registration.
    registered: Option<Instant>,
    next_timeout: Instant,
    /// When TLS started, until the driver says the handshake is done (for metrics).
    tls_started: Option<Instant>,
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
        deadline: Instant,
    },
    Proxying(Box<proxy::Connect>),
    Live(Box<Live>),
}

enum Splice {
    /// The service's name is with the resolver.
    Resolving {
        deadline: Instant,
    },
    Connecting {
        deadline: Instant,
    },
    Spliced {
        read_done: bool,
        write_done: bool,
    },
}

/// Who the edge says a stream is for (OPEN's claims): a resume must come from the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
struct Identity {
    email: Option<String>,
    service_token: Option<String>,
}

/// What the origin reads of OPEN's claims.
#[derive(Debug, Default, serde::Deserialize)]
struct Claims {
    #[serde(flatten)]
    identity: Identity,
    /// `"start"`: a new resumable stream; `"resume"`: a later carrier of one.
    resume: Option<String>,
    /// Bastion mode: where the client asked to go, as the edge checked it.
    destination: Option<String>,
}

impl Claims {
    /// Claims that do not parse are an anonymous plain stream (what the edge sends is JSON).
    fn parse(claims: &[u8]) -> Claims {
        serde_json::from_slice(claims).unwrap_or_default()
    }
}

/// The record layer of a resumable stream, and what a resume is checked against.
struct Resumable {
    ep: Endpoint,
    /// From the START record; until it has come the stream cannot be resumed.
    key: Option<Key>,
    identity: Identity,
    /// The hostname and jump-host destination the stream was opened for: a resume must name
    /// the same, or a user could carry a stream onto a hostname whose policy admits them
    /// while the one it serves no longer does (revocation and session kills go by hostname).
    hostname: String,
    destination: Option<String>,
    /// For logs: who, escaped.
    who: String,
    /// Records made for the current mux stream that it had no room for yet (at most one
    /// transmit's worth: `transmit` is asked for no more than the mux stream can take).
    pending: Vec<u8>,
    /// Detached: closed at this time unless resumed.
    expires: Option<Instant>,
    /// The replay buffer was full: pump the service again once an ACK makes room.
    starved: bool,
}

impl Resumable {
    /// The stream's name in logs: its id's first bytes (never the secret).
    fn label(&self) -> String {
        self.key
            .as_ref()
            .map_or_else(|| "(no START yet)".into(), Key::label)
    }
}

/// A service connection and the stream it serves.
struct Local {
    /// The ingress rule it was opened by (to name its service in logs).
    rule: usize,
    splice: Splice,
    /// The mux stream carrying it; `None`: detached (resumable, its client gone).
    at: Option<StreamId>,
    /// `Some` for a resumable stream.
    resume: Option<Box<Resumable>>,
    /// A jump-host stream: the destination, whose addresses are checked once resolved.
    bastion: Option<Bastion>,
}

/// What a jump-host stream's resolved addresses are checked against (`proto::destination`).
struct Bastion {
    dest: Destination,
    /// The tunnel's own allow-list admitted the destination as written (a name or address).
    by_name: bool,
}

impl Local {
    fn has_socket(&self) -> bool {
        !matches!(self.splice, Splice::Resolving { .. })
    }
}

/// What a mux stream of a connection is to the origin.
enum Carried {
    /// It carries this service's stream.
    Service(ServiceId),
    /// A later carrier of a resumable stream, waiting for its RESUME record.
    Resuming(Box<ResumeAsk>),
}

/// Who asks to resume a stream, and for what, as the edge's OPEN says.
struct ResumeAsk {
    identity: Identity,
    hostname: String,
    destination: Option<String>,
}

struct Conn {
    link: Link,
    /// Bumped at each connect attempt: names this attempt and the session it becomes.
    epoch: u64,
    attempt: u32,
    /// The session's streams the origin serves, by mux stream id.
    streams: IdMap<u32, Carried>,
    /// A service moved bytes since the edge connection was last pumped.
    moved: bool,
    /// The slot's edge last answered with a final refusal (cleared when it registers).
    refused: bool,
}

/// What a connection's timer asks for.
enum Due {
    Connect,
    Pump,
    Lost {
        log: String,
        metric: metrics::Error,
        why: &'static str,
    },
}

/// See the module doc.
pub struct Core {
    cfg: Config,
    conns: Vec<Conn>,
    /// Every service connection, attached or detached.
    locals: IdMap<ServiceId, Local>,
    next_service: u64,
    out: VecDeque<Output>,
    draining: Option<Instant>,
    exit: Option<Exit>,
    metrics: Arc<Metrics>,
    /// Jitter for the backoff (the driver's randomness).
    random: Box<dyn FnMut() -> u64 + Send>,
    next_tick: Instant,
    /// When resumable streams next acknowledge what they took.
    next_ack: Instant,
    /// The driver's clock for `/metrics`' interactive holds ([`Core::time_holds`]).
    hold_clock: Option<fn() -> Instant>,
}

impl Core {
    /// Every connection starts at once (at the first [`Core::handle_timeout`]).
    pub fn new(
        cfg: Config,
        metrics: Arc<Metrics>,
        random: Box<dyn FnMut() -> u64 + Send>,
        now: Instant,
    ) -> Core {
        let addrs: Vec<String> = cfg.edges.iter().map(|e| e.addr.clone()).collect();
        metrics.set_edges(&addrs);
        let conns = (0..slot_count(cfg.connections, cfg.edges.len()))
            .map(|_| Conn {
                link: Link::Waiting { until: now },
                epoch: 0,
                attempt: 0,
                streams: IdMap::default(),
                moved: false,
                refused: false,
            })
            .collect();
        Core {
            cfg,
            conns,
            locals: IdMap::default(),
            next_service: 0,
            out: VecDeque::new(),
            draining: None,
            exit: None,
            metrics,
            random,
            next_tick: now,
            next_ack: now,
            hold_clock: None,
        }
    }

    /// Times how long a keystroke stays in this process (`/metrics`:
    /// `interactive_hold_seconds`) with `clock`, the real time: see `mux::Session::time_holds`.
    pub fn time_holds(&mut self, clock: fn() -> Instant) {
        self.hold_clock = Some(clock);
    }

    /// Whether more than one service connection is attached to a stream now: the driver's
    /// yield after a long turn ([`crate::io::yield_after_long_turn`]). A detached resumable
    /// stream (its client gone, waiting up to the resume window) moves nothing and does not
    /// count, so a lone live stream beside it keeps its slice.
    pub fn more_than_one_stream(&self) -> bool {
        self.locals
            .values()
            .filter(|l| l.at.is_some())
            .nth(1)
            .is_some()
    }

    /// The slots (HA connections).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The edges, for a log line: `a:443` or `a:443, b:443`.
    fn edge_list(&self) -> String {
        let addrs: Vec<&str> = self.cfg.edges.iter().map(|e| e.addr.as_str()).collect();
        addrs.join(", ")
    }

    /// Logs what this tunnel serves and how it reaches the edges.
    pub fn announce(&self) {
        let cfg = &self.cfg;
        let plural = if cfg.edges.len() > 1 { "s" } else { "" };
        let edges = self.edge_list();
        match &cfg.registration {
            Registration::Hostname(h) => info!(
                "starting tunnel for {h} -> {} via edge{plural} {edges} with {} connections",
                cfg.ingress.find(h).1.service,
                self.conns.len()
            ),
            Registration::Named { id, name } => {
                info!(
                    "starting tunnel {name} ({id}) via edge{plural} {edges} with {} connections",
                    self.conns.len()
                );
                for r in cfg.ingress.rules() {
                    info!(
                        "  ingress: {} -> {}",
                        r.hostname.as_deref().unwrap_or("(every other hostname)"),
                        r.service
                    );
                }
            }
        }
        if cfg.edges.len() > cfg.connections.max(1) {
            info!(
                "{} edges and --ha-connections {}: {} connections, so that every edge has one",
                cfg.edges.len(),
                cfg.connections,
                self.conns.len()
            );
        }
        for (i, _) in self.conns.iter().enumerate() {
            debug!("connection {i} goes to edge {}", self.edge(i).addr);
        }
        for e in &cfg.edges {
            if let Some(p) = &e.proxy {
                info!(
                    "connecting to the edge {} through the HTTP proxy {} (from {})",
                    e.addr, p.addr, p.source
                );
            }
        }
    }

    /// True when a slot to another edge than slot `i`'s is registered.
    /// True while another edge of the pool accepts this tunnel, or has not refused it for
    /// good yet (its connection is still on its way, or it is down): one edge's final refusal
    /// then waits for the others' word.
    fn another_edge_may_accept(&self, i: usize) -> bool {
        let edge = self.edge_index(i);
        self.conns.iter().enumerate().any(|(j, c)| {
            self.edge_index(j) != edge
                && (!c.refused || matches!(&c.link, Link::Live(l) if l.registered.is_some()))
        })
    }

    /// The edge slot `i` connects to.
    pub fn edge(&self, i: usize) -> &EdgeTarget {
        &self.cfg.edges[spread(i, self.cfg.edges.len()).0]
    }

    /// Slot `i`'s edge's index (the driver's per-edge TLS name, the gauges).
    pub fn edge_index(&self, i: usize) -> usize {
        spread(i, self.cfg.edges.len()).0
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Why the tunnel stopped, once it has.
    pub fn take_exit(&mut self) -> Option<Exit> {
        self.exit.take()
    }

    /// True once the tunnel has decided to stop (a pump may stop).
    pub fn exiting(&self) -> bool {
        self.exit.is_some()
    }

    /// When [`Core::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self.next_tick;
        if let Some(d) = self.draining {
            next = next.min(d);
        }
        for c in &self.conns {
            let t = match &c.link {
                Link::Waiting { .. } if self.draining.is_some() => None,
                Link::Waiting { until } => Some(*until),
                Link::Resolving { deadline } | Link::Connecting { deadline } => Some(*deadline),
                Link::Proxying(p) => p.deadline(),
                Link::Live(l) => Some(l.next_timeout),
            };
            next = t.map_or(next, |t| next.min(t));
        }
        for l in self.locals.values() {
            match l.splice {
                Splice::Resolving { deadline } | Splice::Connecting { deadline } => {
                    next = next.min(deadline)
                }
                Splice::Spliced { .. } => {}
            }
            if let Some(r) = &l.resume {
                match r.expires {
                    Some(t) => next = next.min(t),
                    None => next = next.min(self.next_ack),
                }
            }
        }
        next
    }

    /// Timers: reconnects, connect and answer deadlines, keepalives, drain.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.next_tick = now + TICK;
        if let Some(deadline) = self.draining {
            let open = self.locals.len();
            if open == 0 || now >= deadline {
                if open > 0 {
                    warn!("grace period over: closing {open} open streams");
                }
                for i in 0..self.conns.len() {
                    self.disconnect(i, None, now);
                }
                self.exit = Some(Exit::Signalled);
                return;
            }
        }
        for i in 0..self.conns.len() {
            let hop = self.first_hop(i).to_owned();
            let connect_timed_out = match &self.edge(i).proxy {
                Some(p) => format!("connecting to the proxy {} timed out", p.addr),
                None => format!("connecting to the edge {hop} timed out"),
            };
            let lost = |log: String, metric, why| Due::Lost { log, metric, why };
            let due = match &mut self.conns[i].link {
                Link::Waiting { until } => {
                    (self.draining.is_none() && now >= *until).then_some(Due::Connect)
                }
                Link::Resolving { deadline } => (now >= *deadline).then(|| {
                    let log = format!("resolving {hop} timed out");
                    lost(log, metrics::Error::Connect, "resolve timeout")
                }),
                Link::Connecting { deadline } => (now >= *deadline).then(|| {
                    let log = connect_timed_out.clone();
                    lost(log, metrics::Error::Connect, "connect timeout")
                }),
                Link::Proxying(p) => match p.handle_timeout(now) {
                    proxy::Progress::Refused(e) => Some(lost(
                        e.to_string(),
                        metrics::Error::Connect,
                        "proxy timeout",
                    )),
                    _ => None,
                },
                Link::Live(l) if now >= l.next_timeout => match l.mux.handle_timeout(now) {
                    Ok(t) => {
                        l.next_timeout = t;
                        Some(Due::Pump)
                    }
                    Err(e) => Some(lost(
                        e.to_string(),
                        metrics::Error::Keepalive,
                        "keepalive timeout",
                    )),
                },
                Link::Live(_) => None,
            };
            match due {
                None => {}
                Some(Due::Connect) => self.connect(i, now),
                Some(Due::Pump) => self.pump_edge(i),
                Some(Due::Lost { log, metric, why }) => {
                    warn!("connection {i}: {log}");
                    self.metrics.error(metric);
                    self.disconnect(i, Some(why), now);
                }
            }
        }
        let due: Vec<(ServiceId, bool)> = self
            .locals
            .iter()
            .filter_map(|(&s, l)| match l.splice {
                Splice::Resolving { deadline } if now >= deadline => Some((s, false)),
                Splice::Connecting { deadline } if now >= deadline => Some((s, true)),
                _ => None,
            })
            .collect();
        for (service, connecting) in due {
            if connecting {
                self.fail_local(service, "connect to the service timed out");
            } else {
                self.fail_opening(service, "resolving the service timed out");
            }
        }
        self.expire_detached(now);
        if now >= self.next_ack {
            self.next_ack = now + RESUME_ACK_INTERVAL;
            self.acknowledge();
        }
        self.count_connections();
    }

    /// SIGTERM: GOAWAY on every connection (the edge opens no new streams on it, and the
    /// session refuses any that cross), no reconnects, and an exit once the open streams are
    /// done or the grace period is over.
    pub fn shutdown(&mut self, now: Instant) {
        if self.draining.is_some() {
            return;
        }
        info!(
            "SIGTERM: draining open streams for up to {}s",
            self.cfg.grace.as_secs()
        );
        self.draining = Some(now + self.cfg.grace);
        let detached: Vec<ServiceId> = self.detached().collect();
        if !detached.is_empty() {
            info!(
                "closing {} detached streams: no resume while shutting down",
                detached.len()
            );
        }
        for service in detached {
            self.close_service(service);
        }
        for i in 0..self.conns.len() {
            if let Link::Live(l) = &mut self.conns[i].link {
                l.mux.send_goaway("origin shutting down");
            }
            self.pump_edge(i);
        }
    }

    /// Sets the connection and stream gauges (a scan of at most 16 connections).
    fn count_connections(&self) {
        let (mut live, mut ready) = (0, 0);
        let mut by_edge = vec![(0, 0, None); self.cfg.edges.len()];
        for (i, c) in self.conns.iter().enumerate() {
            if let Link::Live(l) = &c.link {
                let edge = &mut by_edge[self.edge_index(i)];
                live += 1;
                edge.0 += 1;
                if l.registered.is_some() {
                    ready += 1;
                    edge.1 += 1;
                }
                edge.2 = match (edge.2, l.mux.rtt_micros()) {
                    (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
                    (a, b) => a.or(b),
                };
            }
        }
        self.metrics.set_connections(0, live, ready);
        for (e, (live, ready, rtt)) in by_edge.into_iter().enumerate() {
            self.metrics.set_edge_connections(e, live, ready, rtt);
        }
        let (mut streams, mut detached) = (0, 0);
        for l in self.locals.values().filter(|l| l.has_socket()) {
            streams += 1;
            if l.at.is_none() {
                detached += 1;
            }
        }
        self.metrics.set_streams_active(streams);
        self.metrics.set_streams_detached(detached);
    }

    // ---- the connection to the edge ----

    /// Where slot `i` connects first: its edge's proxy, or its edge.
    fn first_hop(&self, i: usize) -> &str {
        let e = self.edge(i);
        e.proxy.as_ref().map_or(&e.addr, |p| &p.addr)
    }

    fn id(&self, slot: usize) -> ConnId {
        ConnId {
            slot,
            epoch: self.conns[slot].epoch,
        }
    }

    /// True when `conn` is the slot's current attempt.
    fn current(&self, conn: ConnId) -> bool {
        self.conns
            .get(conn.slot)
            .is_some_and(|c| c.epoch == conn.epoch)
    }

    fn live(&mut self, conn: ConnId) -> Option<&mut Live> {
        if !self.current(conn) {
            return None;
        }
        match &mut self.conns[conn.slot].link {
            Link::Live(l) => Some(l),
            _ => None,
        }
    }

    fn pump_edge(&mut self, i: usize) {
        let id = self.id(i);
        self.out.push_back(Output::PumpEdge(id));
    }

    fn connect(&mut self, i: usize, now: Instant) {
        if self.conns[i].attempt > 0 {
            self.metrics.reconnect();
        }
        self.conns[i].epoch += 1;
        self.conns[i].link = Link::Resolving {
            deadline: now + Duration::from_secs(RESOLVE_TIMEOUT_SECS),
        };
        let name = self.first_hop(i).to_owned();
        let waiter = Waiter::Edge(self.id(i));
        self.out.push_back(Output::Resolve { waiter, name });
    }

    /// The resolver's answer for `waiter` (at once from its cache, or later from its thread).
    /// An edge's name may give several addresses: slots spread over them (see [`spread`]);
    /// a service connects to the first.
    pub fn resolved(
        &mut self,
        waiter: Waiter,
        result: Result<Vec<SocketAddr>, String>,
        now: Instant,
    ) {
        let result = result.and_then(|addrs| match addrs.is_empty() {
            true => Err("the name resolves to no address".to_owned()),
            false => Ok(addrs),
        });
        match waiter {
            Waiter::Edge(conn) => {
                if !self.current(conn)
                    || !matches!(self.conns[conn.slot].link, Link::Resolving { .. })
                {
                    return;
                }
                let i = conn.slot;
                match result {
                    Ok(addrs) => {
                        let rank = spread(i, self.cfg.edges.len()).1;
                        let addr = addrs[rank % addrs.len()];
                        debug!(
                            "connection {i}: connecting to {addr} (edge {})",
                            self.edge(i).addr
                        );
                        self.conns[i].link = Link::Connecting {
                            deadline: now + EDGE_CONNECT_TIMEOUT,
                        };
                        self.out.push_back(Output::ConnectEdge { conn, addr });
                    }
                    Err(e) => {
                        warn!("connection {i}: {e}");
                        self.metrics.error(metrics::Error::Connect);
                        self.backoff(i, now);
                    }
                }
            }
            Waiter::Service(service) => {
                let Some(local) = self.locals.get(&service) else {
                    return; // Timed out, reset, or closed.
                };
                if !matches!(local.splice, Splice::Resolving { .. }) {
                    return;
                }
                let result = match (&local.bastion, result) {
                    (Some(b), Ok(addrs)) => self.bastion_address(b, &addrs),
                    (None, Ok(addrs)) => Ok(addrs[0]),
                    (_, Err(e)) => Err(e),
                };
                match result {
                    Ok(addr) => self.connect_local(service, addr, now),
                    Err(e) => self.fail_opening(service, &e),
                }
            }
        }
    }

    /// A failed TCP connect to the first hop (the proxy or the edge), with what to check.
    fn cannot_reach(&self, i: usize, addr: impl std::fmt::Display, e: &io::Error) -> String {
        match &self.edge(i).proxy {
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

    /// The TCP connect to the first hop failed: at once (`addr` given: `connect` itself
    /// failed) or later (the socket's error).
    pub fn edge_connect_failed(
        &mut self,
        conn: ConnId,
        addr: Option<SocketAddr>,
        e: &io::Error,
        now: Instant,
    ) {
        if !self.current(conn) || !matches!(self.conns[conn.slot].link, Link::Connecting { .. }) {
            return;
        }
        let i = conn.slot;
        self.metrics.error(metrics::Error::Connect);
        match addr {
            Some(addr) => {
                warn!("connection {i}: {}", self.cannot_reach(i, addr, e));
                self.conns[i].link = Link::Waiting { until: now };
                self.backoff(i, now);
            }
            None => {
                warn!(
                    "connection {i}: {}",
                    self.cannot_reach(i, self.first_hop(i), e)
                );
                self.disconnect(i, Some("connect failed"), now);
            }
        }
    }

    /// The TCP connection to the first hop is up: ask the proxy for the edge, or start TLS.
    pub fn edge_connected(&mut self, conn: ConnId, now: Instant) {
        if !self.current(conn) || !matches!(self.conns[conn.slot].link, Link::Connecting { .. }) {
            return;
        }
        let i = conn.slot;
        let edge = self.edge(i);
        match &edge.proxy {
            Some(p) => {
                debug!("connection {i}: asking the proxy {} for the edge", p.addr);
                let exchange = proxy::Connect::new(p, &edge.addr, now);
                self.conns[i].link = Link::Proxying(Box::new(exchange));
            }
            None => self.start_tls(i, Vec::new(), now),
        }
    }

    fn proxying(&mut self, conn: ConnId) -> Option<&mut proxy::Connect> {
        if !self.current(conn) {
            return None;
        }
        match &mut self.conns[conn.slot].link {
            Link::Proxying(p) => Some(p),
            _ => None,
        }
    }

    /// While asking the proxy: the request bytes still to write (empty: none, or not asking).
    pub fn proxy_transmit(&mut self, conn: ConnId) -> &[u8] {
        match self.proxying(conn) {
            Some(p) => p.transmit(),
            None => &[],
        }
    }

    /// The driver wrote `n` bytes of [`Core::proxy_transmit`].
    pub fn proxy_sent(&mut self, conn: ConnId, n: usize) {
        if let Some(p) = self.proxying(conn) {
            p.sent(n);
        }
    }

    /// How much the next read from the proxy may take (0: not asking the proxy).
    pub fn proxy_room(&mut self, conn: ConnId) -> usize {
        self.proxying(conn).map_or(0, |p| p.room())
    }

    /// Bytes the proxy sent (at most [`Core::proxy_room`]).
    pub fn proxy_input(&mut self, conn: ConnId, data: &[u8], now: Instant) {
        if let Some(p) = self.proxying(conn) {
            let progress = p.handle_input(data);
            self.proxy_progress(conn.slot, progress, now);
        }
    }

    /// The proxy closed the connection (or a write to it took nothing).
    pub fn proxy_eof(&mut self, conn: ConnId, now: Instant) {
        if let Some(p) = self.proxying(conn) {
            let progress = p.handle_eof();
            self.proxy_progress(conn.slot, progress, now);
        }
    }

    /// Writing the request to the proxy (`writing`) or reading its answer failed.
    pub fn proxy_io_failed(&mut self, conn: ConnId, writing: bool, e: &io::Error, now: Instant) {
        if self.proxying(conn).is_none() {
            return;
        }
        let i = conn.slot;
        let proxy = self.first_hop(i);
        let why = if writing {
            format!("sending CONNECT to the proxy {proxy} failed: {e}")
        } else {
            format!("reading the answer of the proxy {proxy} failed: {e}")
        };
        warn!("connection {i}: {why}");
        self.metrics.error(metrics::Error::Connect);
        self.disconnect(i, Some("no tunnel through the proxy"), now);
    }

    fn proxy_progress(&mut self, i: usize, progress: proxy::Progress, now: Instant) {
        match progress {
            proxy::Progress::Exchanging => {}
            proxy::Progress::Established(early) => {
                debug!(
                    "connection {i}: the proxy opened a tunnel to {}",
                    self.edge(i).addr
                );
                self.start_tls(i, early, now);
            }
            proxy::Progress::Refused(e) => {
                warn!("connection {i}: {e}");
                self.metrics.error(metrics::Error::Connect);
                self.disconnect(i, Some("no tunnel through the proxy"), now);
            }
        }
    }

    /// TLS and the mux start: HELLO and REGISTER are queued behind the handshake.
    fn start_tls(&mut self, i: usize, early: Vec<u8>, now: Instant) {
        let mut mux = OriginSession::new(now);
        if let Some(clock) = self.hold_clock {
            mux.time_holds(clock);
        }
        mux.send_hello(
            self.cfg.connector_id,
            i as u8,
            self.cfg.ingress.has_bastion(),
        );
        match &self.cfg.registration {
            Registration::Hostname(h) => {
                let service = self.cfg.ingress.find(h).1.service.to_string();
                mux.send_register(h, &service)
            }
            // An empty hostname: "route to me what is routed to my certificate's tunnel".
            Registration::Named { name, .. } => mux.send_register("", name),
        }
        self.conns[i].link = Link::Live(Box::new(Live {
            mux,
            registered: None,
            next_timeout: now,
            tls_started: Some(now),
        }));
        let conn = self.id(i);
        self.out.push_back(Output::StartTls { conn, early });
    }

    /// The driver could not start TLS on the connection (it dropped the socket); `why` is
    /// for the log.
    pub fn tls_setup_failed(&mut self, conn: ConnId, why: &str, now: Instant) {
        if self.live(conn).is_none() {
            return;
        }
        warn!("connection {}: {why}", conn.slot);
        self.backoff(conn.slot, now);
    }

    /// The TLS handshake with the edge is done (for the handshake-time metric).
    pub fn tls_handshake_done(&mut self, conn: ConnId, now: Instant) {
        let metrics = self.metrics.clone();
        if let Some(at) = self.live(conn).and_then(|l| l.tls_started.take()) {
            metrics.handshake(now.saturating_duration_since(at));
        }
    }

    /// TLS with the edge failed (rustls' error, or the socket's under it).
    pub fn tls_failed(&mut self, conn: ConnId, e: &io::Error, now: Instant) {
        if self.live(conn).is_none() {
            return;
        }
        let msg = match tls_advice(e) {
            Some(advice) => format!("{e}: {advice}"),
            None => e.to_string(),
        };
        warn!("connection {}: {msg}", conn.slot);
        self.metrics.error(metrics::Error::Tls);
        self.disconnect(conn.slot, Some("TLS error"), now);
    }

    /// Plaintext from the edge; returns how much was taken (whole frames). Also delivers the
    /// session's pending events, so call it after anything that may raise some.
    pub fn edge_input(&mut self, conn: ConnId, data: &[u8], now: Instant) -> usize {
        self.edge_input_direct(conn, data, now, &mut |_, _| 0)
    }

    /// [`Core::edge_input`], with the client's bytes for a plain stream whose service is
    /// connected and has nothing waiting handed to `write(service, bytes)` as they are
    /// decrypted (the driver writes them to the service's socket and returns what it took;
    /// on an error it takes nothing and reports it with [`Core::service_failed`] after this
    /// call): the cut-through of docs/design.md §2.8. Only frames of at least
    /// [`CUT_THROUGH_MIN`] (smaller ones wait, batched), and not for a resumable stream (its
    /// bytes are records), a jump host's stream before it is spliced, nor a service whose
    /// write side is shut.
    pub fn edge_input_direct(
        &mut self,
        conn: ConnId,
        data: &[u8],
        now: Instant,
        write: &mut dyn FnMut(ServiceId, &[u8]) -> usize,
    ) -> usize {
        if !self.current(conn) {
            return 0;
        }
        let c = &mut self.conns[conn.slot];
        let Link::Live(l) = &mut c.link else {
            return 0;
        };
        let (streams, locals, metrics) = (&c.streams, &self.locals, &self.metrics);
        let mut direct = |stream: u32, bytes: &[u8]| {
            if bytes.len() < CUT_THROUGH_MIN {
                return 0;
            }
            let Some(Carried::Service(service)) = streams.get(&stream) else {
                return 0;
            };
            let plain = locals.get(service).is_some_and(|local| {
                local.resume.is_none()
                    && local.at == Some(StreamId { conn, stream })
                    && matches!(
                        local.splice,
                        Splice::Spliced {
                            write_done: false,
                            ..
                        }
                    )
            });
            if !plain {
                return 0;
            }
            let n = write(*service, bytes).min(bytes.len());
            metrics.bytes(Direction::ClientToOrigin, n);
            n
        };
        let mut used = 0;
        if !data.is_empty() {
            match l.mux.handle_input_direct(data, now, &mut direct) {
                Ok(n) => used = n,
                Err(e) => {
                    warn!("connection {}: protocol error from edge: {e}", conn.slot);
                    self.metrics.error(metrics::Error::TunnelProtocol);
                    self.disconnect(conn.slot, Some("protocol error"), now);
                    return 0;
                }
            }
        }
        self.drain_events(conn, now);
        used
    }

    /// The edge closed the connection (close_notify or EOF).
    pub fn edge_closed(&mut self, conn: ConnId, now: Instant) {
        if self.live(conn).is_some() {
            self.disconnect(conn.slot, Some("edge closed the connection"), now);
        }
    }

    /// Writing to the edge failed.
    pub fn edge_write_failed(&mut self, conn: ConnId, e: &io::Error, now: Instant) {
        if self.live(conn).is_some() {
            warn!("connection {}: {e}", conn.slot);
            self.disconnect(conn.slot, Some("write failed"), now);
        }
    }

    /// True when [`Core::poll_transmit`] has frames for the edge.
    pub fn wants_transmit(&mut self, conn: ConnId) -> bool {
        self.live(conn).is_some_and(|l| l.mux.wants_transmit())
    }

    /// Appends frames for the edge to `out`, up to about `max` bytes. Sending frees stream
    /// buffers: call [`Core::transmitted`] after, so that the `Writable` (and `Closed`)
    /// events that raises reach the services now, not with the next frame from the edge
    /// (which may be a WINDOW that waits for those very services).
    pub fn poll_transmit(&mut self, conn: ConnId, out: &mut Vec<u8>, max: usize) {
        if !self.current(conn) {
            return;
        }
        if let Link::Live(l) = &mut self.conns[conn.slot].link {
            l.mux.poll_transmit(out, max);
            for held in l.mux.framed_holds() {
                self.metrics.held(held);
            }
        }
    }

    /// What [`Core::poll_transmit`] produced went to TLS: deliver the events it raised.
    pub fn transmitted(&mut self, conn: ConnId, now: Instant) {
        self.drain_events(conn, now);
    }

    /// True while `conn` is its slot's current attempt (a pump of an older one may stop).
    pub fn is_current(&self, conn: ConnId) -> bool {
        self.current(conn)
    }

    fn drain_events(&mut self, conn: ConnId, now: Instant) {
        while self.exit.is_none() {
            let Some(ev) = self.live(conn).and_then(|l| l.mux.poll_event()) else {
                break;
            };
            self.on_event(conn.slot, ev, now);
        }
    }

    fn on_event(&mut self, i: usize, ev: OriginEvent, now: Instant) {
        let conn = self.id(i);
        match ev {
            OriginEvent::Registered { hostname } => {
                // Text from the edge: escaped before it reaches a terminal or the journal.
                let hostname = untrusted(&hostname);
                let edge = &self.edge(i).addr;
                match &self.cfg.registration {
                    Registration::Hostname(_) => {
                        info!("connection {i} to edge {edge} registered {hostname}")
                    }
                    Registration::Named { name, .. } => info!(
                        "connection {i} to edge {edge} registered tunnel {name} (routes: {hostname})"
                    ),
                }
                self.conns[i].attempt = 0;
                self.conns[i].refused = false;
                if let Link::Live(l) = &mut self.conns[i].link {
                    l.registered = Some(now);
                }
            }
            OriginEvent::Error { code, message } => {
                let message = untrusted(&message).to_string();
                if code.is_final() {
                    self.conns[i].refused = true;
                }
                let elsewhere = self.another_edge_may_accept(i);
                if code.is_final() && elsewhere {
                    // An edge of a pool that has not yet seen what another one has (a tunnel
                    // created a moment ago, within the pool's 2 s), while another edge accepts
                    // the tunnel or has not answered yet: this one is asked again. A refusal
                    // for good reaches the other edges too, and the last one ends the tunnel.
                    warn!(
                        "connection {i}: the edge {} refused ({message}) while another edge \
                         may accept this tunnel: retrying",
                        self.edge(i).addr
                    );
                    self.metrics.error(metrics::Error::EdgeError);
                    self.disconnect(i, Some("refused by this edge"), now);
                } else if code.is_final() {
                    error!("connection {i}: the edge refused: {message}");
                    self.metrics.error(metrics::Error::RegistrationRefused);
                    self.exit = Some(Exit::Refused(message));
                } else {
                    warn!("connection {i}: edge error {code}: {message}");
                    self.metrics.error(metrics::Error::EdgeError);
                    self.disconnect(i, Some("edge error"), now);
                }
            }
            OriginEvent::Open {
                stream,
                hostname,
                claims,
            } => {
                let claims = Claims::parse(&claims);
                let who = who_of(&claims.identity);
                match claims.resume.as_deref() {
                    None => {
                        info!("connection {i}: stream {stream} for {who}");
                        let dest = claims.destination.as_deref();
                        self.open_local(i, stream, &hostname, dest, None, now)
                    }
                    Some("start") => {
                        info!("connection {i}: stream {stream} (resumable) for {who}");
                        let resume = Resumable {
                            ep: Endpoint::new(),
                            key: None,
                            identity: claims.identity,
                            hostname: hostname.clone(),
                            destination: claims.destination.clone(),
                            who,
                            pending: Vec::new(),
                            expires: None,
                            starved: false,
                        };
                        let dest = claims.destination.as_deref();
                        let resume = Some(Box::new(resume));
                        self.open_local(i, stream, &hostname, dest, resume, now)
                    }
                    Some("resume") => {
                        debug!("connection {i}: stream {stream} resumes a stream for {who}");
                        let ask = Box::new(ResumeAsk {
                            identity: claims.identity,
                            hostname,
                            destination: claims.destination,
                        });
                        self.conns[i].streams.insert(stream, Carried::Resuming(ask));
                        self.try_resume(i, stream, now);
                    }
                    Some(other) => {
                        let other = untrusted(other);
                        warn!("connection {i}: stream {stream}: unknown resume mode {other}");
                        if let Some(l) = self.live(conn) {
                            let why = "unsupported resume mode";
                            l.mux.reset(stream, ResetCode::Cancel, why);
                        }
                        self.pump_edge(i);
                    }
                }
            }
            OriginEvent::Stream(
                ev @ (StreamEvent::Readable(stream) | StreamEvent::Writable(stream)),
            ) => {
                let first = matches!(ev, StreamEvent::Readable(_))
                    && self
                        .live(conn)
                        .is_some_and(|l| l.mux.few_bytes_readable(stream));
                match self.conns[i].streams.get(&stream) {
                    Some(Carried::Service(service)) => {
                        let service = *service;
                        let Some(l) = self.locals.get(&service) else {
                            return;
                        };
                        if l.resume.as_ref().is_some_and(|r| r.key.is_none()) {
                            self.read_start(service, now);
                        }
                        if self.locals.get(&service).is_some_and(Local::has_socket) {
                            self.out.push_back(if first {
                                Output::PumpServiceFirst(service)
                            } else {
                                Output::PumpService(service)
                            });
                        }
                    }
                    Some(Carried::Resuming(_)) => self.try_resume(i, stream, now),
                    None => {}
                }
            }
            OriginEvent::Stream(StreamEvent::Closed(stream)) => self.forget_stream(i, stream),
            OriginEvent::Stream(StreamEvent::Reset {
                stream,
                code,
                reason,
            }) => {
                let reason = untrusted(&reason);
                debug!("connection {i}: stream {stream} reset by edge ({code}): {reason}");
                if code == ResetCode::Lost {
                    self.lose_stream(i, stream, "the client's connection was lost", now);
                } else {
                    self.forget_stream(i, stream);
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

    fn backoff(&mut self, i: usize, now: Instant) {
        let attempt = self.conns[i].attempt.saturating_add(1);
        let ceiling = backoff_ceiling(attempt).as_millis().max(1) as u64;
        // Full jitter: anywhere in [0, ceiling).
        let delay = Duration::from_millis((self.random)() % ceiling);
        let c = &mut self.conns[i];
        c.attempt = attempt;
        debug!("connection {i}: retrying in {delay:?}");
        c.link = Link::Waiting { until: now + delay };
    }

    /// Drops a connection; its plain streams close, its resumable ones detach (unless the
    /// tunnel is draining). Reconnects later unless `why` is None (shutdown): at once if
    /// the connection had served for a while, else after the backoff.
    fn disconnect(&mut self, i: usize, why: Option<&str>, now: Instant) {
        let conn = self.id(i);
        let link = std::mem::replace(&mut self.conns[i].link, Link::Waiting { until: now });
        let mut served = false;
        match link {
            Link::Live(l) => {
                served = l
                    .registered
                    .is_some_and(|t| now.saturating_duration_since(t) >= RECONNECT_AT_ONCE_UPTIME);
                self.out.push_back(Output::CloseEdge { conn })
            }
            Link::Connecting { .. } | Link::Proxying(_) => {
                self.out.push_back(Output::CloseEdge { conn })
            }
            Link::Waiting { .. } | Link::Resolving { .. } => {}
        }
        let mut streams: Vec<u32> = self.conns[i].streams.keys().copied().collect();
        streams.sort_unstable();
        for stream in streams {
            self.lose_stream(i, stream, "the tunnel connection was lost", now);
        }
        if let Some(why) = why {
            if served {
                let jitter = RECONNECT_AT_ONCE_JITTER.as_millis().max(1) as u64;
                let delay = Duration::from_millis((self.random)() % jitter);
                let edge = &self.edge(i).addr;
                info!("connection {i} to edge {edge} lost ({why}); reconnecting in {delay:?}");
                self.conns[i].attempt = 0;
                self.conns[i].link = Link::Waiting { until: now + delay };
            } else {
                let edge = &self.edge(i).addr;
                info!("connection {i} to edge {edge} lost ({why}); reconnecting");
                self.backoff(i, now);
            }
        }
    }

    // ---- streams and their services ----

    fn open_local(
        &mut self,
        i: usize,
        stream: u32,
        hostname: &str,
        destination: Option<&str>,
        resume: Option<Box<Resumable>>,
        now: Instant,
    ) {
        let conn = self.id(i);
        let host = hostname.to_ascii_lowercase();
        let (rule, r) = self.cfg.ingress.find(&host);
        let mut bastion = None;
        let name = match (&r.service, destination) {
            (Service::Bastion, d) => match self.bastion_check(&host, d) {
                Ok(b) => {
                    let name = b.dest.to_string();
                    info!("stream {stream}: jump host to {name}");
                    bastion = Some(b);
                    name
                }
                Err(reason) => {
                    warn!("stream {stream}: {reason}");
                    self.metrics.error(metrics::Error::ServiceConnect);
                    if let Some(l) = self.live(conn) {
                        l.mux.reset(stream, mux::ResetCode::NoService, &reason);
                    }
                    return;
                }
            },
            (_, Some(_)) => {
                // Defence in depth: the edge refuses this already for tunnels without a
                // bastion rule, but this tunnel may have one for another hostname.
                let reason = format!(
                    "the origin is not a jump host for {host} (its ingress rule is not \
                     `bastion`): it takes no --destination"
                );
                warn!("stream {stream}: {reason}");
                if let Some(l) = self.live(conn) {
                    l.mux.reset(stream, mux::ResetCode::NoService, &reason);
                }
                return;
            }
            (Service::Tcp { addr, .. }, None) => addr.clone(),
            (Service::Status(code), None) => {
                info!(
                    "stream {stream}: no ingress rule serves {} (http_status:{code})",
                    untrusted(&host)
                );
                let reason = format!("the origin serves no service for {host} (status {code})");
                if let Some(l) = self.live(conn) {
                    l.mux.reset(stream, mux::ResetCode::NoService, &reason);
                }
                return;
            }
        };
        let service = ServiceId(self.next_service);
        self.next_service += 1;
        let resumable = resume.is_some();
        let deadline = now + Duration::from_secs(RESOLVE_TIMEOUT_SECS);
        self.locals.insert(
            service,
            Local {
                rule,
                splice: Splice::Resolving { deadline },
                at: Some(StreamId { conn, stream }),
                resume,
                bastion,
            },
        );
        self.conns[i]
            .streams
            .insert(stream, Carried::Service(service));
        if resumable {
            // Our first record goes before any byte of the service; the client's START is
            // read when it comes, while the service connects.
            let mut accept = Vec::new();
            Opening::Accept { received: 0 }.encode(&mut accept);
            if let Some(l) = self.live(conn) {
                l.mux.write(stream, &accept);
            }
            self.pump_edge(i);
            self.read_start(service, now);
        }
        let waiter = Waiter::Service(service);
        self.out.push_back(Output::Resolve { waiter, name });
    }

    /// A jump-host stream's destination, checked again here: it must parse, and if the
    /// tunnel has its own `bastion-allow`, admit it as written or (checked once resolved) by
    /// its address. The error is the reason the client reads.
    fn bastion_check(&self, host: &str, destination: Option<&str>) -> Result<Bastion, String> {
        let Some(text) = destination else {
            return Err(format!(
                "{host} is a jump host: name where to go (postern access ssh --hostname {host} \
                 --destination HOST:PORT)"
            ));
        };
        let dest = Destination::parse(text).map_err(|why| format!("bad destination: {why}"))?;
        let allow = self.cfg.ingress.bastion_allow();
        let by_name = allow.admits(&dest).is_some();
        let by_address_later = matches!(dest.host, DestHost::Name(_));
        if !allow.is_empty() && !by_name && !by_address_later {
            return Err(format!(
                "destination {dest} is not in the tunnel's bastion-allow"
            ));
        }
        Ok(Bastion { dest, by_name })
    }

    /// The first of a jump-host destination's addresses the tunnel may connect to: a special
    /// address (loopback, link-local, the metadata service…) only when the tunnel's own
    /// allow-list names its range; with an allow-list, only what it admits.
    fn bastion_address(&self, b: &Bastion, addrs: &[SocketAddr]) -> Result<SocketAddr, String> {
        let allow = self.cfg.ingress.bastion_allow();
        let port = b.dest.port;
        let ok = |a: &SocketAddr| {
            let ip = a.ip();
            allow.admits_addr(ip, port).is_some()
                || (!destination::is_special(ip) && (allow.is_empty() || b.by_name))
        };
        if let Some(a) = addrs.iter().find(|a| ok(a)) {
            return Ok(SocketAddr::new(a.ip(), port));
        }
        let first = addrs[0].ip();
        Err(if destination::is_special(first) {
            format!(
                "destination {} is {first}, a loopback, link-local or other special address: \
                 the tunnel reaches one only if its bastion-allow names it (e.g. {first}:{port})",
                b.dest
            )
        } else {
            format!(
                "destination {} ({first}) is not in the tunnel's bastion-allow",
                b.dest
            )
        })
    }

    /// A service waiting for its address cannot have it: its stream is reset, with why.
    fn fail_opening(&mut self, service: ServiceId, why: &str) {
        let Some(l) = self.locals.remove(&service) else {
            return;
        };
        let Some(at) = l.at else {
            return;
        };
        if self.current(at.conn) {
            self.conns[at.conn.slot].streams.remove(&at.stream);
        }
        let metrics = self.metrics.clone();
        if let Some(live) = self.live(at.conn) {
            if live.mux.has_stream(at.stream) {
                warn!("stream {}: {why}", at.stream);
                metrics.error(metrics::Error::ServiceConnect);
                live.mux
                    .reset(at.stream, mux::ResetCode::ConnectFailed, why);
                self.pump_edge(at.conn.slot);
            }
        }
    }

    /// The service is at `addr`: connect to it (the driver does, without waiting).
    fn connect_local(&mut self, service: ServiceId, addr: SocketAddr, now: Instant) {
        let Some(l) = self.locals.get(&service) else {
            return;
        };
        if let Some(at) = l.at {
            if !self
                .live(at.conn)
                .is_some_and(|l| l.mux.has_stream(at.stream))
            {
                // Reset or closed by the edge while its service's name was resolved.
                self.close_service(service);
                return;
            }
        }
        let rules = self.cfg.ingress.rules();
        if let Some(l) = self.locals.get_mut(&service) {
            // The rule's `originRequest.connectTimeout`, else the default.
            let timeout = rules
                .get(l.rule)
                .and_then(|r| r.connect_timeout)
                .unwrap_or(Duration::from_secs(SERVICE_CONNECT_TIMEOUT_SECS));
            l.splice = Splice::Connecting {
                deadline: now + timeout,
            };
        }
        debug!("{service} -> {addr}");
        self.metrics.stream_opened();
        self.out.push_back(Output::ConnectService { service, addr });
    }

    /// Drops a service connection: it leaves its mux stream, if any, and its socket closes.
    fn close_service(&mut self, service: ServiceId) {
        let Some(l) = self.locals.remove(&service) else {
            return;
        };
        if let Some(at) = l.at {
            if self.current(at.conn) {
                let streams = &mut self.conns[at.conn.slot].streams;
                if matches!(streams.get(&at.stream), Some(Carried::Service(s)) if *s == service) {
                    streams.remove(&at.stream);
                }
            }
        }
        if l.has_socket() {
            self.out.push_back(Output::CloseService { service });
        }
    }

    /// The mux stream is gone at the edge's word (closed, or reset other than `Lost`): its
    /// service goes too.
    fn forget_stream(&mut self, i: usize, stream: u32) {
        if let Some(Carried::Service(service)) = self.conns[i].streams.remove(&stream) {
            self.close_service(service);
        }
    }

    /// The mux stream died with its path (the tunnel connection, or the client's carrier:
    /// RST `Lost`): a resumable stream detaches and waits for its client, others close.
    fn lose_stream(&mut self, i: usize, stream: u32, why: &str, now: Instant) {
        let Some(Carried::Service(service)) = self.conns[i].streams.remove(&stream) else {
            return;
        };
        let window = self.cfg.resume_window;
        let mut keep = self.draining.is_none();
        if let Some(r) = self.locals.get(&service).and_then(|l| l.resume.as_deref()) {
            // Bounded: per identity and in all.
            let (mine, all) = self.detached_count(&r.identity);
            if mine >= MAX_DETACHED_PER_IDENTITY || all >= MAX_DETACHED_STREAMS {
                warn!(
                    "stream {}: {why}, and {mine} detached streams are held for {} ({all} in                      all): closing {service} instead of keeping it",
                    r.label(),
                    r.who
                );
                keep = false;
            }
        }
        let Some(l) = self.locals.get_mut(&service) else {
            return;
        };
        match l.resume.as_deref_mut() {
            Some(r) if keep && r.key.is_some() => {
                l.at = None;
                r.ep.detach();
                r.pending = Vec::new();
                r.starved = false;
                r.expires = Some(now + window);
                info!(
                    "stream {}: detached ({why}); keeping {service} for {} s for {}",
                    r.label(),
                    window.as_secs(),
                    r.who
                );
            }
            _ => self.close_service(service),
        }
    }

    /// Detached streams held now: for `identity`, and in all.
    fn detached_count(&self, identity: &Identity) -> (usize, usize) {
        let detached = self.locals.values().filter_map(|l| {
            let r = l.resume.as_deref()?;
            (l.at.is_none() && r.expires.is_some()).then_some(r)
        });
        detached.fold((0, 0), |(mine, all), r| {
            (mine + usize::from(r.identity == *identity), all + 1)
        })
    }

    /// Detached streams whose window is over: their services close.
    fn expire_detached(&mut self, now: Instant) {
        let expired: Vec<ServiceId> = self
            .locals
            .iter()
            .filter(|(_, l)| {
                let expires = l.resume.as_ref().and_then(|r| r.expires);
                l.at.is_none() && expires.is_some_and(|t| now >= t)
            })
            .map(|(s, _)| *s)
            .collect();
        for service in expired {
            if let Some(r) = self.locals.get(&service).and_then(|l| l.resume.as_ref()) {
                info!(
                    "stream {}: not resumed within {} s; closing {service}",
                    r.label(),
                    self.cfg.resume_window.as_secs()
                );
            }
            self.close_service(service);
        }
    }

    fn detached(&self) -> impl Iterator<Item = ServiceId> + '_ {
        let detached = self.locals.iter().filter(|(_, l)| l.at.is_none());
        detached.map(|(s, _)| *s)
    }

    /// The ACK timer: every attached resumable stream tells its client what it took.
    fn acknowledge(&mut self) {
        let resumable: Vec<ServiceId> = self
            .locals
            .iter()
            .filter(|(_, l)| l.at.is_some() && l.resume.is_some())
            .map(|(s, _)| *s)
            .collect();
        for service in resumable {
            let Some((l, mux, at)) = attached(&mut self.conns, &mut self.locals, service) else {
                continue;
            };
            let Some(r) = l.resume.as_deref_mut() else {
                continue;
            };
            r.ep.request_ack();
            if flush(r, mux, at.stream) {
                self.pump_edge(at.conn.slot);
            }
        }
    }

    /// Reads a resumable stream's START record once it is whole; a stream that begins
    /// otherwise is reset.
    fn read_start(&mut self, service: ServiceId, now: Instant) {
        let Some((l, mux, at)) = attached(&mut self.conns, &mut self.locals, service) else {
            return;
        };
        let Some(r) = l.resume.as_deref_mut().filter(|r| r.key.is_none()) else {
            return;
        };
        match Opening::decode(mux.readable(at.stream)) {
            Ok(None) => {}
            Ok(Some((Opening::Start { id, secret }, n))) => {
                mux.consume(at.stream, n, now);
                r.key = Some(Key::new(id, &secret));
                debug!(
                    "stream {}: {service} is resumable as {}",
                    at.stream,
                    r.label()
                );
            }
            Ok(Some(_)) | Err(_) => {
                let why = "resume protocol error: the first record is not START";
                debug!("stream {}: {why}", at.stream);
                self.end_stream(service, why);
            }
        }
    }

    /// Eats the client's records up to the next payload byte (ACKs trim the replay buffer,
    /// FIN ends the client's side). A record that breaks the protocol ends the stream.
    fn parse_records(&mut self, service: ServiceId, now: Instant) {
        let Some((l, mux, at)) = attached(&mut self.conns, &mut self.locals, service) else {
            return;
        };
        let Some(r) = l.resume.as_deref_mut().filter(|r| r.key.is_some()) else {
            return;
        };
        let failed = loop {
            match r.ep.parse(mux.readable(at.stream)) {
                Ok(0) => break None,
                Ok(n) => mux.consume(at.stream, n, now),
                Err(e) => break Some(e),
            }
        };
        if r.starved && r.ep.room() > 0 {
            // An ACK made room: the service is read again (its readiness was not lost: the
            // last read stopped for want of room, not at "would block").
            r.starved = false;
            self.out.push_back(Output::PumpService(service));
        }
        if let Some(e) = failed {
            debug!("stream {}: resume protocol error: {e}", at.stream);
            self.end_stream(service, &format!("resume protocol error: {e}"));
        }
    }

    /// A later carrier's first record: RESUME, checked against the stream it names (by
    /// id, secret, the OPEN's identity and the offset), or the new mux stream is reset.
    fn try_resume(&mut self, i: usize, stream: u32, now: Instant) {
        let conn = self.id(i);
        let Some(live) = self.live(conn) else {
            return;
        };
        let opening = match Opening::decode(live.mux.readable(stream)) {
            Ok(None) => return,
            Ok(Some((o, n))) => {
                live.mux.consume(stream, n, now);
                Some(o)
            }
            Err(_) => None,
        };
        let Some(Carried::Resuming(ask)) = self.conns[i].streams.remove(&stream) else {
            return;
        };
        let identity = &ask.identity;
        let Some(Opening::Resume {
            id,
            secret,
            received,
        }) = opening
        else {
            let why = "the first record is not RESUME";
            return self.refuse_resume(i, stream, identity, why);
        };
        // The id is not secret (it travels in the carrier's request); the secret is compared
        // in constant time.
        let found = self.locals.iter().find(|(_, l)| {
            let key = l.resume.as_ref().and_then(|r| r.key.as_ref());
            key.is_some_and(|k| k.id == id && k.matches(&id, &secret))
        });
        let Some((&service, _)) = found else {
            let why = "unknown stream or wrong secret";
            return self.refuse_resume(i, stream, identity, why);
        };
        let l = self.locals.get_mut(&service).expect("bug: found above");
        let r = l.resume.as_deref_mut().expect("bug: found above");
        if r.identity != *identity {
            let why = "not the identity that opened the stream";
            return self.refuse_resume(i, stream, identity, why);
        }
        if !r.hostname.eq_ignore_ascii_case(&ask.hostname) || r.destination != ask.destination {
            let why = "not the hostname or destination the stream was opened for";
            return self.refuse_resume(i, stream, identity, why);
        }
        if let Err(e) = r.ep.resume_from(received) {
            return self.refuse_resume(i, stream, identity, &e.to_string());
        }
        let replay = r.ep.sent_total() - received;
        r.pending.clear();
        Opening::Accept {
            received: r.ep.received(),
        }
        .encode(&mut r.pending);
        r.expires = None;
        r.starved = false;
        info!(
            "stream {}: resumed at client offset {received}, origin offset {} (replaying \
             {replay} bytes) for {} (connection {i} stream {stream})",
            r.label(),
            r.ep.received(),
            r.who
        );
        let old = l.at.replace(StreamId { conn, stream });
        let has_socket = l.has_socket();
        self.conns[i]
            .streams
            .insert(stream, Carried::Service(service));
        self.metrics.resumed(replay);
        if let Some(old) = old {
            // The client came back while its old path still looked alive: that path is
            // dead to it; what was in flight on it is replayed on the new one.
            if self.current(old.conn) {
                self.conns[old.conn.slot].streams.remove(&old.stream);
            }
            if let Some(live) = self.live(old.conn) {
                let why = "resumed on another connection";
                live.mux.reset(old.stream, ResetCode::Cancel, why);
                self.pump_edge(old.conn.slot);
            }
        }
        if let Some((l, mux, at)) = attached(&mut self.conns, &mut self.locals, service) {
            if let Some(r) = l.resume.as_deref_mut() {
                flush(r, mux, at.stream);
            }
        }
        if has_socket {
            self.out.push_back(Output::PumpService(service));
        }
        self.pump_edge(i);
    }

    fn refuse_resume(&mut self, i: usize, stream: u32, identity: &Identity, why: &str) {
        warn!(
            "connection {i}: stream {stream}: resume refused for {}: {why}",
            who_of(identity)
        );
        self.metrics.resume_refused();
        let conn = self.id(i);
        if let Some(l) = self.live(conn) {
            let reason = format!("resume refused: {why}");
            l.mux.reset(stream, ResetCode::Cancel, &reason);
        }
        self.pump_edge(i);
    }

    /// Ends a stream from the origin's side: its mux stream is reset with why (if attached),
    /// its service closed.
    fn end_stream(&mut self, service: ServiceId, why: &str) {
        if let Some((_, mux, at)) = attached(&mut self.conns, &mut self.locals, service) {
            mux.reset(at.stream, ResetCode::Cancel, why);
            self.pump_edge(at.conn.slot);
        }
        self.close_service(service);
    }

    /// The service cannot be reached: reset the stream with why.
    fn fail_local(&mut self, service: ServiceId, why: &str) {
        let Some(l) = self.locals.get(&service) else {
            return;
        };
        let name =
            l.at.map_or_else(|| service.to_string(), |at| format!("stream {}", at.stream));
        warn!(
            "{name}: cannot connect to the service {}: {why}",
            self.cfg.ingress.rules()[l.rule].service
        );
        self.metrics.error(metrics::Error::ServiceConnect);
        if let Some((_, mux, at)) = attached(&mut self.conns, &mut self.locals, service) {
            mux.reset(at.stream, mux::ResetCode::ConnectFailed, why);
            self.pump_edge(at.conn.slot);
        }
        self.close_service(service);
    }

    /// True while the service's stream is attached and open. When the edge has finished
    /// with it, the service is dropped ([`Output::CloseService`]) and this is false; a
    /// detached service is not pumped either (false) but stays until resumed or expired.
    pub fn service_open(&mut self, service: ServiceId) -> bool {
        match attached(&mut self.conns, &mut self.locals, service) {
            Some((_, mux, at)) if mux.has_stream(at.stream) => true,
            Some(_) => {
                self.close_service(service);
                false
            }
            None => false,
        }
    }

    /// The TCP connection to the service is up: the splice starts.
    pub fn service_connected(&mut self, service: ServiceId) {
        if let Some(l) = self.locals.get_mut(&service) {
            if matches!(l.splice, Splice::Connecting { .. }) {
                l.splice = Splice::Spliced {
                    read_done: false,
                    write_done: false,
                };
            }
        }
    }

    /// The TCP connection to the service failed: the stream is reset with why.
    pub fn service_connect_failed(&mut self, service: ServiceId, why: &str) {
        self.fail_local(service, why);
    }

    /// Reads once from the service with `read`: for a plain stream straight into the mux
    /// stream's send buffer, for a resumable one into its replay buffer (records then go
    /// to the mux stream). `None` when the stream takes no bytes now (gone, detached,
    /// finished reading, or full: it is pumped again once it has room). `Some(Ok(0))` is
    /// the service's EOF: FIN follows. A read error other than "would block" and
    /// "interrupted" goes to [`Core::service_failed`].
    pub fn service_fill(
        &mut self,
        service: ServiceId,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> Option<io::Result<usize>> {
        let (l, mux, at) = attached(&mut self.conns, &mut self.locals, service)?;
        let Splice::Spliced { read_done, .. } = &mut l.splice else {
            return None;
        };
        if *read_done {
            return None;
        }
        let got = match l.resume.as_deref_mut() {
            None => {
                let got = mux.fill(at.stream, read)?;
                if matches!(got, Ok(0)) {
                    mux.close_write(at.stream);
                }
                got
            }
            Some(r) => {
                // Only as fast as the mux stream takes records: the replay buffer is not a
                // second send buffer. What [`Core::service_records_direct`] did not send goes
                // to the mux stream first; a tail too short for a direct frame waits for the
                // next read, to go out with it.
                if r.ep.unsent() >= mux::DIRECT_MIN || !r.pending.is_empty() {
                    flush(r, mux, at.stream);
                    if !r.pending.is_empty() || r.ep.unsent() > 0 {
                        return None; // `Writable` follows.
                    }
                }
                let Some(got) = r.ep.fill(read) else {
                    r.starved = true; // Unacknowledged bytes fill it: an ACK pumps again.
                    return None;
                };
                // A read too short for a direct frame (an echo) goes to the mux stream now, to
                // be batched with the pass's other frames; what no direct frame takes,
                // `service_pumped` flushes.
                if r.ep.unsent() < mux::DIRECT_MIN {
                    flush(r, mux, at.stream);
                }
                got
            }
        };
        match got {
            Ok(0) => *read_done = true,
            Ok(n) => self.metrics.bytes(Direction::OriginToClient, n),
            Err(_) => return Some(got),
        }
        self.conns[at.conn.slot].moved = true;
        Some(got)
    }

    /// How much the service's next read may carry to the edge as one DATA frame of the
    /// driver's own, sent straight from where it read it ([`Core::service_read_direct`]), and
    /// on which edge connection: the cut-through's way out of the origin (docs/design.md
    /// §2.8). `None`, and the driver reads with [`Core::service_fill`], for a resumable stream
    /// (its bytes become records), a service read to its end, or a stream whose frame would
    /// overtake something ([`mux::Session::direct_room`]) or carry less than
    /// [`mux::DIRECT_MIN`].
    pub fn service_direct_room(&mut self, service: ServiceId) -> Option<(ConnId, usize)> {
        let (l, mux, at) = attached(&mut self.conns, &mut self.locals, service)?;
        let Splice::Spliced { read_done, .. } = &l.splice else {
            return None;
        };
        if *read_done || l.resume.is_some() {
            return None;
        }
        let room = mux.direct_room(at.stream);
        (room >= mux::DIRECT_MIN).then_some((at.conn, room))
    }

    /// The driver read `data` (at most [`Core::service_direct_room`]'s room, with nothing in
    /// between) from the service: the header of its DATA frame, which the driver sends before
    /// it. `None` when the read was short of [`mux::DIRECT_MIN`] (a keystroke's echo): the
    /// bytes go into the stream's send buffer, to be batched with the pass's other frames as
    /// [`Core::service_fill`]'s would, so a chatty service does not cost a record and a
    /// syscall per read.
    pub fn service_read_direct(
        &mut self,
        service: ServiceId,
        data: &[u8],
    ) -> Option<[u8; mux::HEADER_LEN]> {
        let (_, mux, at) = attached(&mut self.conns, &mut self.locals, service)?;
        let header = if data.len() >= mux::DIRECT_MIN {
            let header = mux.frame_direct(at.stream, data.len());
            debug_assert!(header.is_some(), "bug: the room for a direct frame went");
            header
        } else {
            None
        };
        if header.is_none() {
            let n = mux.write(at.stream, data);
            debug_assert_eq!(
                n,
                data.len(),
                "bug: an empty send buffer took less than a frame"
            );
        }
        self.metrics.bytes(Direction::OriginToClient, data.len());
        self.conns[at.conn.slot].moved = true;
        header
    }

    /// How much a resumable stream's next records may carry to the edge as one DATA frame
    /// sent straight from its replay buffer ([`Core::service_records_direct`]), and on which
    /// edge connection: the way out of the origin for `access ssh` sessions, without the
    /// copies into `pending`, the mux stream and a frame batch (docs/design.md §2.8). `None`
    /// for a plain stream, while records wait in `pending`, when less than
    /// [`mux::DIRECT_MIN`] is unsent, or when the frame would overtake something.
    pub fn service_records_room(&mut self, service: ServiceId) -> Option<(ConnId, usize)> {
        let (l, mux, at) = attached(&mut self.conns, &mut self.locals, service)?;
        let r = l.resume.as_deref()?;
        if !matches!(l.splice, Splice::Spliced { .. })
            || !r.pending.is_empty()
            || r.ep.unsent() < mux::DIRECT_MIN
        {
            return None;
        }
        let room = mux.direct_room(at.stream);
        (room >= mux::DIRECT_MIN).then_some((at.conn, room))
    }

    /// Frames a resumable stream's unsent bytes as one DATA frame of at most `max` bytes
    /// (within [`Core::service_records_room`]'s room), its records' head in it: all that is
    /// unsent if it fits, else as much as ends the frame on a TLS record's edge (the rest goes
    /// with the next read). Returns the head (mux frame header, an ACK if
    /// owed, the DATA record's header: `head[..len]`) and the payload, a slice of the replay
    /// buffer, which the driver sends right after it.
    pub fn service_records_direct(
        &mut self,
        service: ServiceId,
        max: usize,
    ) -> Option<([u8; RECORDS_HEAD], usize, &[u8])> {
        let (l, mux, at) = attached(&mut self.conns, &mut self.locals, service)?;
        let r = l.resume.as_deref_mut()?;
        let room = max.min(mux.direct_room(at.stream));
        // All that is unsent, if it fits; else as much as ends on a record's edge.
        let unsent = r.ep.unsent();
        let whole = unsent <= MAX_DATA && unsent + r.ep.direct_head_len() <= room;
        let max = if whole {
            room
        } else {
            mux::record_aligned(room)
        };
        let (records, len, n) = r.ep.frame_direct(max)?;
        let Some(frame) = mux.frame_direct(at.stream, len + n) else {
            unreachable!("bug: the room for a direct frame went");
        };
        let mut head = [0u8; RECORDS_HEAD];
        head[..mux::HEADER_LEN].copy_from_slice(&frame);
        head[mux::HEADER_LEN..mux::HEADER_LEN + len].copy_from_slice(&records[..len]);
        self.conns[at.conn.slot].moved = true;
        let r = self.locals.get(&service)?.resume.as_deref()?;
        Some((head, mux::HEADER_LEN + len, r.ep.last_framed(n)))
    }

    /// Bytes from the edge waiting for the service (a resumable stream's: the payload of
    /// the client's current DATA record).
    pub fn service_pending(&mut self, service: ServiceId, now: Instant) -> &[u8] {
        if self
            .locals
            .get(&service)
            .is_some_and(|l| l.resume.is_some())
        {
            self.read_start(service, now);
            self.parse_records(service, now);
        }
        match attached(&mut self.conns, &mut self.locals, service) {
            Some((l, mux, at)) if matches!(l.splice, Splice::Spliced { .. }) => {
                let data = mux.readable(at.stream);
                match &l.resume {
                    None => data,
                    Some(r) => &data[..r.ep.payload_len(data.len())],
                }
            }
            _ => &[],
        }
    }

    /// The service took `n` bytes of [`Core::service_pending`].
    pub fn service_written(&mut self, service: ServiceId, n: usize, now: Instant) {
        if let Some((l, mux, at)) = attached(&mut self.conns, &mut self.locals, service) {
            // Before `consume`, which may end the stream (its last bytes).
            if let Some(held) = mux.delivered(at.stream) {
                self.metrics.held(held);
            }
            mux.consume(at.stream, n, now);
            if let Some(r) = l.resume.as_deref_mut() {
                r.ep.delivered(n);
            }
            self.metrics.bytes(Direction::ClientToOrigin, n);
            self.conns[at.conn.slot].moved = true;
        }
    }

    /// Reading from or writing to the service failed: the stream is reset.
    pub fn service_failed(&mut self, service: ServiceId, e: &io::Error) {
        if !self.locals.contains_key(&service) {
            return;
        }
        debug!("{service}: service connection: {e}");
        self.end_stream(service, "service connection failed");
    }

    /// The driver moved what it could for the service: its write side is shut once the
    /// client's half is done, records due (ACKs, FIN) go out, the edge connection is pumped
    /// if bytes moved, and the service is dropped once the stream is finished.
    pub fn service_pumped(&mut self, service: ServiceId, now: Instant) {
        let Some((l, mux, at)) = attached(&mut self.conns, &mut self.locals, service) else {
            return;
        };
        let (mut finished, mut moved) = (false, false);
        let read_closed = match l.resume.as_deref_mut() {
            None => mux.read_closed(at.stream),
            Some(r) => {
                moved = flush(r, mux, at.stream);
                // Done: all acknowledged both ways, or the edge closed its half (the client
                // ended its carrier) and our FIN record went out. (`finished` counts our FIN
                // once framed: it must also have left `pending` for the mux stream.)
                let edge_done = mux.read_closed(at.stream);
                finished =
                    (r.ep.finished() || (edge_done && r.ep.write_closed())) && r.pending.is_empty();
                r.ep.read_closed() || edge_done
            }
        };
        if let Splice::Spliced { write_done, .. } = &mut l.splice {
            if !*write_done && read_closed {
                *write_done = true;
                self.out.push_back(Output::ShutdownService { service });
            }
        }
        let gone = !mux.has_stream(at.stream);
        if finished && !gone {
            // Nothing more is read from it: what the client still sends is dropped, so the
            // mux stream can end once the edge closes its half.
            let left = mux.readable(at.stream).len();
            mux.consume(at.stream, left, now);
            mux.close_write(at.stream);
            moved = true;
        }
        if std::mem::take(&mut self.conns[at.conn.slot].moved) || moved {
            self.pump_edge(at.conn.slot);
        }
        if gone || finished {
            self.close_service(service);
        }
    }

    /// The service a mux stream carries, if any (tests and logs).
    pub fn service_of(&self, stream: StreamId) -> Option<ServiceId> {
        if !self.current(stream.conn) {
            return None;
        }
        match self.conns[stream.conn.slot].streams.get(&stream.stream)? {
            Carried::Service(s) => Some(*s),
            Carried::Resuming(_) => None,
        }
    }
}

/// The service's local side and its mux session and stream, while it is attached to a
/// stream of a live connection's current attempt.
fn attached<'a>(
    conns: &'a mut [Conn],
    locals: &'a mut IdMap<ServiceId, Local>,
    service: ServiceId,
) -> Option<(&'a mut Local, &'a mut OriginSession, StreamId)> {
    let l = locals.get_mut(&service)?;
    let at = l.at?;
    let c = conns.get_mut(at.conn.slot)?;
    if c.epoch != at.conn.epoch {
        return None;
    }
    let Link::Live(live) = &mut c.link else {
        return None;
    };
    Some((l, &mut live.mux, at))
}

/// The most head bytes before a payload sent from a replay buffer: the mux frame's header
/// and the records' (an ACK, a DATA header).
pub const RECORDS_HEAD: usize = mux::HEADER_LEN + DIRECT_HEAD;

/// Moves a resumable stream's records into its mux stream as far as that has room; true if
/// any moved. When it has none, the mux raises `Writable` later (it promises one after a
/// `writable()` of 0 or a short `write()`).
fn flush(r: &mut Resumable, mux: &mut OriginSession, stream: u32) -> bool {
    let mut moved = false;
    loop {
        if r.pending.is_empty() {
            if !r.ep.wants_transmit() {
                break;
            }
            let room = mux.writable(stream);
            if room == 0 {
                break;
            }
            // Payload that fits with an ACK, one DATA header and a FIN around it.
            let budget = room.saturating_sub(ACK_LEN + DATA_HEADER + 1);
            r.ep.transmit(&mut r.pending, budget.clamp(1, MAX_DATA));
        }
        let n = mux.write(stream, &r.pending);
        if n == 0 {
            break;
        }
        moved = true;
        r.pending.drain(..n);
        if !r.pending.is_empty() {
            break;
        }
    }
    moved
}

/// The backoff's ceiling after `attempt` failures in a row: 500 ms doubled per attempt
/// (from the first: 1 s), capped at `RECONNECT_BACKOFF_CAP_SECS`.
pub fn backoff_ceiling(attempt: u32) -> Duration {
    let cap = RECONNECT_BACKOFF_CAP_SECS * 1000;
    Duration::from_millis((500u64 << attempt.min(10)).min(cap))
}

/// Longest part of a peer's identity a log line shows, in characters.
const MAX_WHO_SHOWN: usize = 128;

/// Who the edge says a stream is for, from OPEN's claims, fit for a log line: an email (SSO),
/// a service token's name, or `anonymous` (a bypass policy); shortened, control characters
/// and quotes escaped. The claims' `assertion` (the same, signed by the edge for this stream)
/// is for whoever wants to check it; it is not logged.
#[cfg(test)]
fn who(claims: &[u8]) -> String {
    who_of(&Claims::parse(claims).identity)
}

fn who_of(identity: &Identity) -> String {
    let shown = |s: &str| crate::logging::escape(s, MAX_WHO_SHOWN);
    match identity {
        Identity {
            email: Some(email), ..
        } => shown(email),
        Identity {
            service_token: Some(token),
            ..
        } => format!("service token {}", shown(token)),
        _ => "anonymous".into(),
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
    use crate::limits::{
        MAX_DETACHED_PER_IDENTITY, PING_DEAD_INTERVALS, PING_INTERVAL, PROXY_ANSWER_TIMEOUT_SECS,
        REPLAY_BUFFER, RESUME_ACK_INTERVAL,
    };
    use crate::proto::mux::{EdgeEvent, EdgeSession, ErrorCode, ResetCode};
    use crate::proto::resume::{Endpoint, Opening};
    use std::collections::HashMap;

    /// ≡ -1 modulo every backoff ceiling (500 ms · 2^k up to 2^10, and the 60 s cap): with
    /// it as the "random" jitter, each delay is its ceiling less 1 ms.
    const JITTER: u64 = 7_679_999;
    const HOST: &str = "ssh.example.com";
    const EDGE: &str = "edge.example.com:443";
    const SERVICE: &str = "127.0.0.1:2222";
    const GRACE: Duration = Duration::from_secs(30);
    const WINDOW: Duration = Duration::from_secs(60);

    /// A simulated driver and edge: the core's outputs are carried out in memory, each
    /// connection's TLS is a plaintext pipe to an `EdgeSession`, and the clock is `now`.
    struct Pipe {
        core: Core,
        now: Instant,
        /// The edge's end of each slot's connection, once TLS started on it.
        edges: Vec<Option<(ConnId, EdgeSession)>>,
        /// Every output, in order (the test inspects and clears it).
        seen: Vec<Output>,
        /// What each slot's edge received.
        edge_events: Vec<Vec<EdgeEvent>>,
        /// Whether a TCP connect to the first hop succeeds.
        reachable: bool,
        /// The edge's socket is up but nothing comes through, either way.
        silent: bool,
        /// Names the resolver never answers.
        unanswered: Vec<&'static str>,
        /// Services connect at once and are pumped like the driver pumps a socket.
        auto_connect: bool,
        services: HashMap<ServiceId, Svc>,
    }

    /// An in-memory service connection (with `auto_connect`).
    #[derive(Default)]
    struct Svc {
        /// What it will send, as fast as the stream takes it.
        says: Vec<u8>,
        /// What it received.
        heard: Vec<u8>,
        /// It has said everything: EOF after `says`.
        done: bool,
        /// Its write side was shut.
        shut: bool,
        closed: bool,
        /// Of `heard`, what came cut through (`edge_input_direct`), not by its pump.
        cut: usize,
        /// The most a cut-through write takes (a socket with that much room); `None`: all.
        room: Option<usize>,
    }

    fn pipe_with(ha: usize, proxy: Option<ProxyConfig>) -> Pipe {
        pipe_serving(ha, proxy, &format!("tcp://{SERVICE}"))
    }

    fn pipe_serving(ha: usize, proxy: Option<ProxyConfig>, service: &str) -> Pipe {
        let edges = vec![EdgeTarget {
            addr: EDGE.into(),
            proxy,
        }];
        pipe_to(ha, edges, service)
    }

    /// A tunnel to a pool of edges (no proxy).
    fn pipe_pool(ha: usize, edges: &[&str]) -> Pipe {
        let edges = edges.iter().map(|&addr| EdgeTarget {
            addr: addr.into(),
            proxy: None,
        });
        pipe_to(ha, edges.collect(), &format!("tcp://{SERVICE}"))
    }

    fn pipe_to(ha: usize, edges: Vec<EdgeTarget>, service: &str) -> Pipe {
        let slots = slot_count(ha, edges.len());
        let cfg = Config {
            registration: Registration::Hostname(HOST.into()),
            ingress: Ingress::single(HOST, service).unwrap(),
            edges,
            connector_id: [7; 16],
            grace: GRACE,
            connections: ha,
            resume_window: WINDOW,
        };
        let metrics = Metrics::new(metrics::Role::Tunnel, [7; 16]);
        let now = Instant::now();
        Pipe {
            core: Core::new(cfg, metrics, Box::new(|| JITTER), now),
            now,
            edges: (0..slots).map(|_| None).collect(),
            seen: Vec::new(),
            edge_events: (0..slots).map(|_| Vec::new()).collect(),
            reachable: true,
            silent: false,
            unanswered: Vec::new(),
            auto_connect: false,
            services: HashMap::new(),
        }
    }

    fn pipe(ha: usize) -> Pipe {
        pipe_with(ha, None)
    }

    impl Pipe {
        /// Carries out outputs and moves bytes until nothing moves.
        fn run(&mut self) {
            for round in 0.. {
                assert!(round < 100_000, "the pipe does not settle");
                let mut moved = false;
                while let Some(out) = self.core.poll_output() {
                    moved = true;
                    self.carry_out(&out);
                    self.seen.push(out);
                }
                for slot in 0..self.edges.len() {
                    moved |= self.exchange(slot);
                }
                if !moved {
                    return;
                }
            }
        }

        fn carry_out(&mut self, out: &Output) {
            let now = self.now;
            match *out {
                Output::Resolve { ref name, .. } if self.unanswered.contains(&name.as_str()) => {}
                Output::Resolve { waiter, ref name } => {
                    // Addresses stand for themselves; names (the edge, the proxy) resolve,
                    // `three.test` to three addresses.
                    let addrs = match name.parse() {
                        Ok(addr) => vec![addr],
                        Err(_) if name == "three.test:443" => {
                            (10..13).map(|n| ([192, 0, 2, n], 443).into()).collect()
                        }
                        // A name whose owner points it at the origin's own loopback.
                        Err(_) if name.starts_with("rebound.test:") => {
                            vec![([127, 0, 0, 1], 443).into()]
                        }
                        Err(_) => vec![([192, 0, 2, 1], 443).into()],
                    };
                    self.core.resolved(waiter, Ok(addrs), now);
                }
                Output::ConnectEdge { conn, .. } => {
                    if self.reachable {
                        self.core.edge_connected(conn, now);
                    } else {
                        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
                        self.core.edge_connect_failed(conn, None, &e, now);
                    }
                }
                Output::StartTls { conn, .. } => {
                    self.edges[conn.slot] = Some((conn, EdgeSession::new(now)));
                }
                Output::CloseEdge { conn }
                    if self.edges[conn.slot]
                        .as_ref()
                        .is_some_and(|(c, _)| *c == conn) =>
                {
                    self.edges[conn.slot] = None;
                }
                // A service with nothing to say: the pump only reports back.
                Output::ConnectService { service, .. } if self.auto_connect => {
                    self.services.insert(service, Svc::default());
                    self.core.service_connected(service);
                    self.pump_service(service);
                }
                Output::ShutdownService { service } => {
                    if let Some(s) = self.services.get_mut(&service) {
                        s.shut = true;
                    }
                }
                Output::CloseService { service } => {
                    if let Some(s) = self.services.get_mut(&service) {
                        s.closed = true;
                    }
                }
                Output::PumpService(service) | Output::PumpServiceFirst(service) => {
                    self.pump_service(service)
                }
                _ => {}
            }
        }

        /// What the driver does for a service: read it into the stream, write the stream's
        /// bytes to it. A service the test plays itself only reports back.
        fn pump_service(&mut self, service: ServiceId) {
            let now = self.now;
            let core = &mut self.core;
            let Some(s) = self.services.get_mut(&service).filter(|s| !s.closed) else {
                core.service_pumped(service, now);
                return;
            };
            if !core.service_open(service) {
                return;
            }
            let mut reads = 0;
            while let Some(Ok(n)) = core.service_fill(service, |buf| {
                reads += 1;
                assert!(reads < 100_000, "the service is read forever");
                if s.says.is_empty() {
                    return match s.done {
                        true => Ok(0),
                        false => Err(io::ErrorKind::WouldBlock.into()),
                    };
                }
                let n = buf.len().min(s.says.len());
                buf[..n].copy_from_slice(&s.says[..n]);
                s.says.drain(..n);
                Ok(n)
            }) {
                if n == 0 {
                    break;
                }
            }
            loop {
                let data = core.service_pending(service, now).to_vec();
                if data.is_empty() {
                    break;
                }
                s.heard.extend_from_slice(&data);
                core.service_written(service, data.len(), now);
            }
            core.service_pumped(service, now);
        }

        /// The edge sends all of `data` on `at`, as fast as the stream's window lets it.
        fn send_all(&mut self, at: StreamId, data: &[u8]) {
            let mut sent = 0;
            for _ in 0..1000 {
                sent += self.edge(at.conn.slot).write(at.stream, &data[sent..]);
                self.run();
                if sent == data.len() {
                    return;
                }
            }
            panic!("{sent} of {} bytes sent", data.len());
        }

        /// The service says `bytes` (and is pumped).
        fn say(&mut self, service: ServiceId, bytes: &[u8]) {
            let s = self.services.get_mut(&service).expect("a service");
            s.says.extend_from_slice(bytes);
            self.pump_service(service);
            self.run();
        }

        fn svc(&self, service: ServiceId) -> &Svc {
            self.services.get(&service).expect("a service")
        }

        /// Moves bytes both ways on one connection; true if any moved.
        fn exchange(&mut self, slot: usize) -> bool {
            let now = self.now;
            let Some((conn, edge)) = &mut self.edges[slot] else {
                return false;
            };
            let conn = *conn;
            let mut up = Vec::new();
            while self.core.wants_transmit(conn) {
                // `max` bounds what `out` holds in all: a batch more each time.
                let max = up.len() + 64 * 1024;
                self.core.poll_transmit(conn, &mut up, max);
            }
            self.core.transmitted(conn, now);
            if self.silent {
                return false;
            }
            let mut moved = !up.is_empty();
            if !up.is_empty() {
                assert_eq!(edge.handle_input(&up, now), Ok(up.len()));
            }
            while let Some(ev) = edge.poll_event() {
                self.edge_events[slot].push(ev);
            }
            let mut down = Vec::new();
            while edge.wants_transmit() {
                let max = down.len() + 64 * 1024;
                edge.poll_transmit(&mut down, max);
            }
            if !down.is_empty() {
                moved = true;
                // As the driver: the client's bytes written to the service as they come.
                let services = &mut self.services;
                let mut write = |service: ServiceId, data: &[u8]| {
                    let Some(s) = services.get_mut(&service).filter(|s| !s.closed) else {
                        return 0;
                    };
                    let n = data.len().min(s.room.unwrap_or(usize::MAX));
                    s.heard.extend_from_slice(&data[..n]);
                    s.cut += n;
                    n
                };
                let used = self.core.edge_input_direct(conn, &down, now, &mut write);
                assert_eq!(used, down.len());
            }
            moved
        }

        /// Moves the clock by `d` as a driver would: waking at each time the core asks for
        /// on the way (keepalives answered, timers fired in order), then at the end.
        fn advance(&mut self, d: Duration) {
            let end = self.now + d;
            for _ in 0..1_000_000 {
                let next = self.core.poll_timeout();
                if next >= end {
                    break;
                }
                self.now = self.now.max(next);
                self.core.handle_timeout(self.now);
                self.run();
            }
            self.now = end;
            self.core.handle_timeout(self.now);
            self.run();
        }

        fn edge(&mut self, slot: usize) -> &mut EdgeSession {
            &mut self.edges[slot].as_mut().expect("connection is up").1
        }

        fn conn(&self, slot: usize) -> ConnId {
            self.edges[slot].as_ref().expect("connection is up").0
        }

        /// Starts every connection and has the edge accept each registration.
        fn register_all(&mut self) {
            self.advance(Duration::ZERO);
            for slot in 0..self.edges.len() {
                assert!(self.edge_events[slot].iter().any(
                    |e| matches!(e, EdgeEvent::Register { hostname, .. } if hostname == HOST)
                ));
                self.edge(slot).send_registered(HOST);
            }
            self.run();
        }

        fn connect_attempts(&self) -> usize {
            let attempts = self.seen.iter();
            attempts
                .filter(|o| matches!(o, Output::ConnectEdge { .. }))
                .count()
        }

        fn closed_edges(&self) -> usize {
            let closes = self.seen.iter();
            closes
                .filter(|o| matches!(o, Output::CloseEdge { .. }))
                .count()
        }

        /// The edge opens a stream on `slot` for `host`; the stream's id at the core.
        fn open(&mut self, slot: usize, host: &str) -> StreamId {
            self.open_claims(slot, host, br#"{"email":"alice@example.com"}"#)
        }

        fn open_claims(&mut self, slot: usize, host: &str, claims: &[u8]) -> StreamId {
            let stream = self
                .edge(slot)
                .open_stream(host, claims)
                .expect("the edge may open a stream");
            self.run();
            StreamId {
                conn: self.conn(slot),
                stream,
            }
        }

        /// The service connection serving a stream.
        fn service(&self, id: StreamId) -> ServiceId {
            self.core.service_of(id).expect("the stream has a service")
        }

        fn resets(&self, slot: usize) -> Vec<(u32, ResetCode, String)> {
            let events = self.edge_events[slot].iter();
            events
                .filter_map(|e| match e {
                    EdgeEvent::Stream(StreamEvent::Reset {
                        stream,
                        code,
                        reason,
                    }) => Some((*stream, *code, reason.clone())),
                    _ => None,
                })
                .collect()
        }
    }

    /// Advances to just before `delay` from now (no attempt), then to it (one attempt).
    fn next_attempt_is_after(p: &mut Pipe, delay: Duration) {
        let before = p.connect_attempts();
        p.advance(delay - Duration::from_millis(1));
        assert_eq!(p.connect_attempts(), before, "too early after {delay:?}");
        p.advance(Duration::from_millis(1));
        assert_eq!(p.connect_attempts(), before + 1, "no attempt at {delay:?}");
    }

    #[test]
    fn reconnect_backoff_grows_with_each_failure_and_resets_once_registered() {
        let mut p = pipe(1);
        p.reachable = false;
        p.advance(Duration::ZERO);
        assert_eq!(p.connect_attempts(), 1);
        // 1 s, 2 s, 4 s … doubling per failure, then the 60 s cap (less the 1 ms jitter).
        for ms in [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000] {
            next_attempt_is_after(&mut p, Duration::from_millis(ms - 1));
        }
        // The edge comes back: the next attempt registers, and a loss after that starts
        // over at the shortest delay.
        p.reachable = true;
        next_attempt_is_after(&mut p, Duration::from_millis(59_999));
        p.edge(0).send_registered(HOST);
        p.run();
        let conn = p.conn(0);
        p.core.edge_closed(conn, p.now);
        p.run();
        assert!(p.edges[0].is_none(), "the lost connection is closed");
        next_attempt_is_after(&mut p, Duration::from_millis(999));
    }

    #[test]
    fn a_refused_registration_ends_the_tunnel() {
        let mut p = pipe(2);
        p.advance(Duration::ZERO);
        p.edge(1).send_error(
            ErrorCode::Conflict,
            "ssh.example.com is owned by \x1b[31manother",
        );
        p.run();
        // Retrying cannot help: the tunnel stops with the edge's reason, escaped.
        assert_eq!(
            p.core.take_exit(),
            Some(Exit::Refused(
                "ssh.example.com is owned by \\u{1b}[31manother".into()
            ))
        );
    }

    #[test]
    fn a_pool_edge_that_refuses_what_another_accepted_is_retried_and_the_last_refusal_ends_it() {
        let (a, b) = ("127.0.0.1:1001", "127.0.0.2:1002");
        let mut p = pipe_pool(2, &[a, b]);
        p.advance(Duration::ZERO);
        p.edge(0).send_registered(HOST);
        p.run();
        p.seen.clear();
        // B has not seen the tunnel yet: its slot retries instead of ending the tunnel.
        p.edge(1)
            .send_error(ErrorCode::Conflict, "no such tunnel on this edge");
        p.run();
        assert_eq!(p.core.take_exit(), None, "A accepted the tunnel");
        assert!(p.edges[1].is_none(), "B's connection is closed");
        p.advance(Duration::from_secs(RECONNECT_BACKOFF_CAP_SECS));
        p.edge(1).send_registered(HOST);
        p.run();
        // Refused for good everywhere: A's refusal, with B's slot not registered, ends it.
        p.edge(1).send_error(ErrorCode::Conflict, "revoked");
        p.run();
        assert_eq!(p.core.take_exit(), None, "A still accepts it");
        p.edge(0).send_error(ErrorCode::Conflict, "revoked");
        p.run();
        assert_eq!(p.core.take_exit(), Some(Exit::Refused("revoked".into())));
    }

    #[test]
    fn a_pool_edge_that_refuses_before_another_has_answered_does_not_end_the_tunnel() {
        let (a, b) = ("127.0.0.1:1001", "127.0.0.2:1002");
        let mut p = pipe_pool(2, &[a, b]);
        p.advance(Duration::ZERO);
        // B answers first, and has not seen the tunnel yet; A has not answered.
        p.edge(1)
            .send_error(ErrorCode::Conflict, "no such tunnel on this edge");
        p.run();
        assert_eq!(p.core.take_exit(), None, "A may still accept it");
        assert!(
            p.edges[1].is_none(),
            "B's connection is closed, to be retried"
        );
        p.edge(0).send_registered(HOST);
        p.run();
        assert_eq!(p.core.take_exit(), None);
        p.advance(Duration::from_secs(RECONNECT_BACKOFF_CAP_SECS));
        p.edge(1).send_registered(HOST);
        p.run();
        assert_eq!(p.core.take_exit(), None);
    }

    #[test]
    fn a_transient_edge_error_or_bad_frames_drop_the_connection_and_reconnect() {
        let mut p = pipe(1);
        p.register_all();
        p.edge(0)
            .send_error(ErrorCode::Internal, "could not record it");
        p.run();
        assert!(p.core.take_exit().is_none());
        assert_eq!(p.closed_edges(), 1);
        next_attempt_is_after(&mut p, Duration::from_millis(999));
        // Bytes that are no mux frame: a protocol error, not a panic; the connection goes.
        let conn = p.conn(0);
        assert_eq!(p.core.edge_input(conn, &[0xff; 64], p.now), 0);
        p.run();
        assert_eq!(p.closed_edges(), 2);
        assert!(p.edges[0].is_none());
        next_attempt_is_after(&mut p, Duration::from_millis(1999));
    }

    /// Where each slot's latest attempt connected, by slot.
    fn connected_to(p: &Pipe) -> Vec<SocketAddr> {
        let mut to = vec![None; p.edges.len()];
        for o in &p.seen {
            if let Output::ConnectEdge { conn, addr } = o {
                to[conn.slot] = Some(*addr);
            }
        }
        to.into_iter()
            .map(|a| a.expect("every slot connected"))
            .collect()
    }

    #[test]
    fn slots_go_round_the_edges_and_every_edge_gets_at_least_one() {
        assert_eq!(slot_count(4, 1), 4);
        assert_eq!(slot_count(4, 2), 4);
        assert_eq!(
            slot_count(2, 3),
            3,
            "more edges than slots: one slot per edge"
        );
        assert_eq!(slot_count(0, 0), 1);
        assert_eq!(spread(0, 2), (0, 0));
        assert_eq!(spread(1, 2), (1, 0));
        assert_eq!(spread(2, 2), (0, 1));
        assert_eq!(spread(3, 2), (1, 1));

        let (a, b, c) = ("127.0.0.1:1001", "127.0.0.2:1002", "127.0.0.3:1003");
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let mut p = pipe_pool(4, &[a, b]);
        assert_eq!(p.core.connections(), 4);
        p.register_all();
        assert_eq!(connected_to(&p), [a, b, a, b].map(addr));
        p.advance(TICK); // the gauges are recounted each tick
        let v: serde_json::Value = serde_json::from_str(&p.core.metrics.ready().1).unwrap();
        assert_eq!(v["edges"][0]["edge"], a);
        assert_eq!(v["edges"][0]["readyConnections"], 2);
        assert_eq!(v["edges"][1]["edge"], b);
        assert_eq!(v["edges"][1]["readyConnections"], 2);

        // Two connections asked of three edges: three, one per edge.
        let mut p = pipe_pool(2, &[a, b, c]);
        assert_eq!(p.core.connections(), 3);
        p.register_all();
        assert_eq!(connected_to(&p), [a, b, c].map(addr));

        // A connection lost reconnects to its own edge, not to another one.
        let mut p = pipe_pool(4, &[a, b]);
        p.register_all();
        p.seen.clear();
        let conn = p.conn(1);
        p.core.edge_closed(conn, p.now);
        p.run();
        p.advance(Duration::from_secs(RECONNECT_BACKOFF_CAP_SECS));
        let again = p.seen.iter().filter_map(|o| match o {
            Output::ConnectEdge { conn, addr } => Some((conn.slot, *addr)),
            _ => None,
        });
        let again: Vec<_> = again.collect();
        assert_eq!(again, vec![(1, addr(b))]);
    }

    #[test]
    fn an_edge_name_with_several_addresses_spreads_its_slots_over_them() {
        let mut p = pipe_pool(4, &["three.test:443", "127.0.0.9:9"]);
        p.register_all();
        let at = |n: u8| SocketAddr::from(([192, 0, 2, n], 443));
        // Slots 0 and 2 go to three.test: its first and second address.
        let to = connected_to(&p);
        assert_eq!(to[0], at(10));
        assert_eq!(to[2], at(11));
        assert_eq!(to[1], "127.0.0.9:9".parse().unwrap());
        assert_eq!(to[3], to[1]);
        // Six slots over one name of three addresses: two on each.
        let mut p = pipe_pool(6, &["three.test:443"]);
        p.register_all();
        assert_eq!(connected_to(&p), [10, 11, 12, 10, 11, 12].map(at));
    }

    fn proxied() -> Pipe {
        let env = |k: &str| (k == "HTTPS_PROXY").then(|| "http://proxy.corp:3128".to_owned());
        let proxy = proxy::proxy_for("edge.example.com", env).unwrap();
        assert!(proxy.is_some());
        pipe_with(1, proxy)
    }

    /// The connection of the latest attempt, asked of the proxy.
    fn asking(p: &mut Pipe) -> ConnId {
        let conn = p
            .seen
            .iter()
            .rev()
            .find_map(|o| match o {
                Output::ConnectEdge { conn, .. } => Some(*conn),
                _ => None,
            })
            .expect("a connect");
        let request = p.core.proxy_transmit(conn).to_vec();
        assert!(request.starts_with(b"CONNECT edge.example.com:443 HTTP/1.1\r\n"));
        p.core.proxy_sent(conn, request.len());
        assert!(p.core.proxy_transmit(conn).is_empty());
        conn
    }

    #[test]
    fn a_proxy_that_refuses_or_stays_silent_means_backoff_and_an_answer_means_tls() {
        let mut p = proxied();
        p.advance(Duration::ZERO);
        let resolved: Vec<&String> = p
            .seen
            .iter()
            .filter_map(|o| match o {
                Output::Resolve { name, .. } => Some(name),
                _ => None,
            })
            .collect();
        assert_eq!(resolved, ["proxy.corp:3128"], "the first hop is the proxy");
        // Refused: the connection goes and comes back after the backoff.
        let conn = asking(&mut p);
        p.core
            .proxy_input(conn, b"HTTP/1.1 403 Forbidden\r\n\r\n", p.now);
        p.run();
        assert_eq!(p.closed_edges(), 1);
        assert!(!p.seen.iter().any(|o| matches!(o, Output::StartTls { .. })));
        next_attempt_is_after(&mut p, Duration::from_millis(999));
        // Silent: given up at the answer's deadline.
        asking(&mut p);
        p.advance(Duration::from_secs(PROXY_ANSWER_TIMEOUT_SECS) - Duration::from_millis(1));
        assert_eq!(p.closed_edges(), 1);
        p.advance(Duration::from_millis(1));
        assert_eq!(p.closed_edges(), 2);
        next_attempt_is_after(&mut p, Duration::from_millis(1999));
        // Closed before answering: the same.
        let conn = asking(&mut p);
        p.core.proxy_input(conn, b"HTTP/1.1 2", p.now);
        p.core.proxy_eof(conn, p.now);
        p.run();
        assert_eq!(p.closed_edges(), 3);
        next_attempt_is_after(&mut p, Duration::from_millis(3999));
        // Answered: TLS starts, given the edge's bytes that came with the answer.
        let conn = asking(&mut p);
        p.core.proxy_input(
            conn,
            b"HTTP/1.0 200 Connection established\r\n\r\n\x16\x03",
            p.now,
        );
        p.run();
        assert!(p.seen.contains(&Output::StartTls {
            conn,
            early: b"\x16\x03".to_vec()
        }));
        assert!(p.edge_events[0]
            .iter()
            .any(|e| matches!(e, EdgeEvent::Register { .. })));
    }

    #[test]
    fn a_rules_connect_timeout_bounds_the_connect_to_its_service() {
        let mut p = pipe(1);
        // config.yml's `originRequest: {connectTimeout: 3s}` on the rule.
        let raw: Vec<crate::tunnel::config::RawRule> = serde_json::from_str(&format!(
            r#"[{{"hostname": "{HOST}", "service": "tcp://{SERVICE}",
                 "originRequest": {{"connectTimeout": "3s"}}}},
                {{"service": "http_status:404"}}]"#
        ))
        .unwrap();
        p.core.cfg.ingress = Ingress::from_raw(&raw, None, &mut Vec::new()).unwrap();
        p.register_all();
        let silent = p.open(0, HOST);
        p.service(silent);
        p.advance(Duration::from_secs(3) - Duration::from_millis(1));
        assert!(p.resets(0).is_empty(), "not before the rule's timeout");
        p.advance(Duration::from_millis(1));
        assert_eq!(
            p.resets(0),
            [(
                silent.stream,
                ResetCode::ConnectFailed,
                "connect to the service timed out".to_owned()
            )]
        );
    }

    #[test]
    fn a_stream_to_a_dead_or_silent_service_is_reset_with_why() {
        let mut p = pipe(1);
        p.register_all();
        // Refused at once.
        let dead = p.open(0, HOST);
        let service = p.service(dead);
        assert!(p.seen.contains(&Output::ConnectService {
            service,
            addr: SERVICE.parse().unwrap()
        }));
        p.core
            .service_connect_failed(service, "Connection refused (os error 111)");
        p.run();
        assert!(p.seen.contains(&Output::CloseService { service }));
        assert_eq!(
            p.resets(0),
            [(
                dead.stream,
                ResetCode::ConnectFailed,
                "Connection refused (os error 111)".to_owned()
            )]
        );
        // Never answers: reset at the connect deadline, not before.
        let silent = p.open(0, HOST);
        let service = p.service(silent);
        p.advance(Duration::from_secs(SERVICE_CONNECT_TIMEOUT_SECS) - Duration::from_millis(1));
        assert_eq!(p.resets(0).len(), 1);
        p.advance(Duration::from_millis(1));
        assert_eq!(
            p.resets(0)[1],
            (
                silent.stream,
                ResetCode::ConnectFailed,
                "connect to the service timed out".to_owned()
            )
        );
        assert!(p.seen.contains(&Output::CloseService { service }));
        // A hostname no ingress rule serves: reset at once, no connect.
        let connects = |p: &Pipe| {
            let seen = p.seen.iter();
            seen.filter(|o| matches!(o, Output::ConnectService { .. }))
                .count()
        };
        let before = connects(&p);
        let none = p.open(0, "other.example.com");
        let (stream, code, reason) = p.resets(0)[2].clone();
        assert_eq!((stream, code), (none.stream, ResetCode::NoService));
        assert!(reason.contains("no service"), "{reason}");
        assert_eq!(connects(&p), before);
        // The connection itself is fine.
        assert_eq!(p.closed_edges(), 0);
    }

    #[test]
    fn names_that_never_resolve_time_out_for_the_edge_and_for_a_service() {
        // The edge's name: the attempt is given up at the deadline, and retried.
        let mut p = pipe(1);
        p.unanswered.push(EDGE);
        p.advance(Duration::ZERO);
        let timeout = Duration::from_secs(RESOLVE_TIMEOUT_SECS);
        p.advance(timeout - Duration::from_millis(1));
        assert_eq!(p.core.poll_timeout(), p.now + Duration::from_millis(1));
        assert!(p.core.take_exit().is_none());
        p.advance(Duration::from_millis(1));
        let resolves = |p: &Pipe| {
            let seen = p.seen.iter();
            seen.filter(|o| matches!(o, Output::Resolve { .. })).count()
        };
        assert_eq!(resolves(&p), 1);
        p.advance(Duration::from_millis(999));
        assert_eq!(resolves(&p), 2, "retried after the backoff");

        // A service's name: only its stream waits, and is reset at the deadline.
        let mut p = pipe_serving(1, None, "tcp://sshd.internal:22");
        p.unanswered.push("sshd.internal:22");
        p.register_all();
        let id = p.open(0, HOST);
        p.advance(timeout - Duration::from_millis(1));
        assert!(p.resets(0).is_empty());
        p.advance(Duration::from_millis(1));
        assert_eq!(
            p.resets(0),
            [(
                id.stream,
                ResetCode::ConnectFailed,
                "resolving the service timed out".to_owned()
            )]
        );
        // No socket was ever asked for, so none is closed; the connection stays.
        assert!(!p
            .seen
            .iter()
            .any(|o| matches!(o, Output::ConnectService { .. })));
        assert!(!p
            .seen
            .iter()
            .any(|o| matches!(o, Output::CloseService { .. })));
        assert_eq!(p.closed_edges(), 0);
    }

    #[test]
    fn keepalive_pings_an_idle_edge_and_drops_a_silent_one() {
        let mut p = pipe(1);
        p.register_all();
        let interval = PING_INTERVAL;
        // An answering edge: pings go out and the connection stays, however long it idles.
        for _ in 0..10 {
            p.advance(interval);
        }
        assert_eq!(p.closed_edges(), 0);
        // A silent one is dropped once `PING_DEAD_INTERVALS` pass without a byte from it.
        p.silent = true;
        for _ in 1..PING_DEAD_INTERVALS {
            p.advance(interval);
        }
        assert_eq!(p.closed_edges(), 0);
        p.advance(interval);
        assert_eq!(p.closed_edges(), 1);
        // It had served: replaced at once (the jitter less 1 ms).
        next_attempt_is_after(&mut p, Duration::from_millis(249));
    }

    #[test]
    fn a_connection_that_served_is_replaced_at_once_then_backoff_as_usual() {
        let mut p = pipe(1);
        p.register_all();
        // Lost right after registering: a flapping edge is not hammered, the backoff holds.
        let conn = p.conn(0);
        p.core.edge_closed(conn, p.now);
        p.run();
        next_attempt_is_after(&mut p, Duration::from_millis(999));
        p.edge(0).send_registered(HOST);
        p.run();
        // Up for a while, then lost (an edge restart): the next attempt comes at once.
        p.advance(RECONNECT_AT_ONCE_UPTIME);
        let conn = p.conn(0);
        p.core.edge_closed(conn, p.now);
        p.run();
        p.reachable = false;
        next_attempt_is_after(&mut p, Duration::from_millis(249));
        // That attempt failed (the edge is still down): the usual backoff from there on.
        next_attempt_is_after(&mut p, Duration::from_millis(999));
        next_attempt_is_after(&mut p, Duration::from_millis(1999));
        p.reachable = true;
        next_attempt_is_after(&mut p, Duration::from_millis(3999));
        p.edge(0).send_registered(HOST);
        p.run();
        p.advance(Duration::ZERO);
        assert_eq!(p.core.metrics.ready_connections(), 1);
    }

    /// A stream on `slot` to a service that answered: the stream and its service.
    fn spliced(p: &mut Pipe, slot: usize) -> (StreamId, ServiceId) {
        let id = p.open(slot, HOST);
        let service = p.service(id);
        p.core.service_connected(service);
        assert!(p.core.service_open(service));
        (id, service)
    }

    /// A few bytes for a service (a keystroke) ask for its pump before the rest of the
    /// driver's pass; a batch does not (docs/design.md §2.8, "Urgent").
    #[test]
    fn a_few_bytes_for_a_service_ask_for_its_pump_first_and_a_batch_does_not() {
        let mut p = pipe(1);
        p.auto_connect = true;
        p.register_all();
        let id = p.open(0, HOST);
        let service = p.service(id);
        let pumps = |p: &Pipe| {
            let first = p.seen.iter();
            let first = first.filter(|o| matches!(o, Output::PumpServiceFirst(s) if *s == service));
            let plain = p.seen.iter();
            let plain = plain.filter(|o| matches!(o, Output::PumpService(s) if *s == service));
            (first.count(), plain.count())
        };
        p.seen.clear();
        p.edge(0).write(id.stream, b"ls\n");
        p.run();
        assert_eq!(p.svc(service).heard, b"ls\n");
        assert_eq!(pumps(&p), (1, 0), "{:?}", p.seen);
        p.seen.clear();
        // A batch the service's socket cannot take at once: the rest waits for its pump.
        p.services.get_mut(&service).unwrap().room = Some(1000);
        let batch = vec![7; 64 * 1024];
        p.edge(0).write(id.stream, &batch);
        p.run();
        assert_eq!(p.svc(service).heard.len(), 3 + batch.len());
        let (first, plain) = pumps(&p);
        assert!(first == 0 && plain > 0, "{:?}", p.seen);
    }

    /// The client's bytes for a plain, connected service with nothing waiting go to its
    /// socket as they are decrypted (`edge_input_direct`, docs/design.md §2.8,
    /// "Cut-through"); a few bytes, the rest of a short write, and what follows bytes that
    /// wait go through the service's pump, in order.
    #[test]
    fn a_clients_bulk_goes_to_its_service_as_it_is_decrypted_and_waiting_bytes_are_not_overtaken() {
        let mut p = pipe(1);
        p.auto_connect = true;
        p.register_all();
        let id = p.open(0, HOST);
        let service = p.service(id);
        p.edge(0).write(id.stream, b"ls\n");
        p.run();
        assert_eq!(
            (p.svc(service).heard.as_slice(), p.svc(service).cut),
            (&b"ls\n"[..], 0)
        );
        // Bulk: all of it cut through, and the window's credit comes back (more than one
        // window's worth arrives).
        let bulk: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        p.send_all(id, &bulk);
        let heard = &p.svc(service).heard;
        assert!(
            heard.len() == 3 + bulk.len() && heard[3..] == bulk[..],
            "in order"
        );
        // (All but the frames of a few bytes the window's edges may cut off.)
        let cut = p.svc(service).cut;
        assert!(cut >= bulk.len() * 9 / 10, "{cut} bytes cut through");
        // A short write: the rest waits for the pump, and the next bytes behind it too.
        p.services.get_mut(&service).unwrap().room = Some(10_000);
        let more: Vec<u8> = (0..100_000).map(|i| (i % 241) as u8).collect();
        p.send_all(id, &more);
        let heard = &p.svc(service).heard;
        assert!(
            heard.len() == 3 + bulk.len() + more.len(),
            "{}",
            heard.len()
        );
        assert!(heard[3 + bulk.len()..] == more[..], "in order");
        assert!(
            p.svc(service).cut < bulk.len() + more.len(),
            "the pump wrote some"
        );
    }

    /// A service's bulk goes to the edge as one DATA frame per read, sent by the driver from
    /// where it read it (`service_direct_room`, `service_read_direct`: the cut-through's way
    /// out); a short read (an echo) goes through the stream's send buffer to be batched, and
    /// while bytes wait there no frame goes past them.
    #[test]
    fn a_services_bulk_goes_to_the_edge_from_where_it_was_read() {
        let mut p = pipe(1);
        p.auto_connect = true;
        p.register_all();
        let id = p.open(0, HOST);
        let service = p.service(id);
        p.run();
        let (conn, room) = p.core.service_direct_room(service).expect("nothing waits");
        assert_eq!(conn, id.conn);
        assert!(room >= mux::DIRECT_MIN, "{room}");
        let bulk: Vec<u8> = (0..32 * 1024).map(|i| (i % 251) as u8).collect();
        let header = p
            .core
            .service_read_direct(service, &bulk)
            .expect("its own frame");
        let frame = [&header[..], &bulk].concat();
        let now = p.now;
        assert_eq!(p.edge(0).handle_input(&frame, now).unwrap(), frame.len());
        assert_eq!(
            p.edge(0).readable(id.stream),
            bulk,
            "a DATA frame of the stream"
        );
        // A short read: into the send buffer, and nothing goes past it until it is framed.
        assert_eq!(p.core.service_read_direct(service, b"ok"), None);
        assert_eq!(p.core.service_direct_room(service), None, "bytes wait");
        p.run();
        assert_eq!(p.edge(0).readable(id.stream), [&bulk[..], b"ok"].concat());
        assert!(
            p.core.service_direct_room(service).is_some(),
            "nothing waits again"
        );
    }

    /// A resumable stream's service reads into its records: no room for a frame of its own.
    #[test]
    fn a_resumable_streams_service_reads_no_frame_of_its_own() {
        let mut p = resumable_pipe(1);
        let mut c = Client::new(1);
        let at = p.open_resumable(0, &mut c);
        let service = p.service(at);
        assert_eq!(p.core.service_direct_room(service), None);
    }

    /// A resumable stream's bulk goes to the edge as records framed where the service's read
    /// put them, the replay buffer, with the ACK the origin owes in front; a short read goes
    /// the batched way, and nothing is framed directly past bytes that wait.
    #[test]
    fn a_resumable_streams_bulk_goes_to_the_edge_from_its_replay_buffer() {
        let mut p = resumable_pipe(1);
        let mut c = Client::new(1);
        let at = p.open_resumable(0, &mut c);
        let service = p.service(at);
        p.say(service, b"hi"); // the ACCEPT goes out with it, batched
        p.client_recv(at, &mut c);
        c.types(b"abc");
        p.client_send(at, &mut c);
        assert_eq!(p.svc(service).heard, b"abc");
        let read = |p: &mut Pipe, data: &[u8]| {
            let got = p.core.service_fill(service, |buf| {
                buf[..data.len()].copy_from_slice(data);
                Ok(data.len())
            });
            assert_eq!(got.map(|r| r.unwrap()), Some(data.len()));
        };
        let bulk: Vec<u8> = (0..40 * 1024).map(|i| (i % 251) as u8).collect();
        read(&mut p, &bulk);
        let (conn, room) = p.core.service_records_room(service).expect("nothing waits");
        assert_eq!(conn, at.conn);
        let (head, len, payload) = p.core.service_records_direct(service, room).unwrap();
        assert_eq!(
            len, RECORDS_HEAD,
            "the frame's header, the ACK owed, DATA's header"
        );
        assert_eq!(payload, &bulk[..], "all of it, from the replay buffer");
        let frame = [&head[..len], payload].concat();
        let now = p.now;
        assert_eq!(p.edge(0).handle_input(&frame, now).unwrap(), frame.len());
        assert_eq!(p.core.service_records_room(service), None, "nothing unsent");
        p.client_recv(at, &mut c);
        assert_eq!(c.got, [&b"hi"[..], &bulk].concat());
        assert_eq!(
            c.ep.buffered(),
            0,
            "the ACK in front trimmed the client's buffer"
        );
        // A short read goes into the mux stream at once; a bulk read behind it is not framed
        // past it.
        read(&mut p, b"ok");
        read(&mut p, &bulk);
        assert_eq!(
            p.core.service_records_room(service),
            None,
            "bytes wait ahead"
        );
        p.core.service_pumped(service, p.now);
        p.run();
        p.client_recv(at, &mut c);
        assert_eq!(c.got, [&b"hi"[..], &bulk, b"ok", &bulk].concat());
    }

    /// A resumable stream's bytes are records: never cut through to the service.
    #[test]
    fn a_resumable_streams_records_are_not_cut_through() {
        let mut p = resumable_pipe(1);
        let mut c = Client::new(1);
        let at = p.open_resumable(0, &mut c);
        let service = p.service(at);
        let bulk = vec![9; 32 * 1024];
        c.types(&bulk);
        p.client_send(at, &mut c);
        let (heard, cut) = (&p.svc(service).heard, p.svc(service).cut);
        assert!(
            heard == &bulk && cut == 0,
            "{} bytes heard, {cut} of them cut through",
            heard.len()
        );
    }

    #[test]
    fn shutdown_lets_open_streams_finish_refuses_new_ones_and_then_exits() {
        let mut p = pipe(2);
        p.register_all();
        let (id, service) = spliced(&mut p, 0);
        // Bytes flow both ways through the splice.
        p.edge(0).write(id.stream, b"ping");
        p.run();
        assert_eq!(p.core.service_pending(service, p.now), b"ping");
        p.core.service_written(service, 4, p.now);
        let got = p.core.service_fill(service, |buf| {
            buf[..4].copy_from_slice(b"pong");
            Ok(4)
        });
        assert_eq!(got.map(|r| r.unwrap()), Some(4));
        p.core.service_pumped(service, p.now);
        p.run();
        assert_eq!(p.edge(0).readable(id.stream), b"pong");

        p.core.shutdown(p.now);
        // An OPEN that crosses the GOAWAY is refused by the origin.
        let crossing = p.edge(0).open_stream(HOST, b"{}").unwrap();
        p.run();
        assert!(p
            .resets(0)
            .iter()
            .any(|(s, code, _)| *s == crossing && *code == ResetCode::Refused));
        for slot in 0..2 {
            assert!(p.edge_events[slot]
                .iter()
                .any(|e| matches!(e, EdgeEvent::GoAway { .. })));
            // After it, the edge opens none.
            assert_eq!(p.edge(slot).open_stream(HOST, b"{}"), None);
        }
        // A connection lost while draining is not replaced.
        let conn1 = p.conn(1);
        p.core.edge_closed(conn1, p.now);
        p.run();
        let attempts = p.connect_attempts();
        p.advance(Duration::from_secs(10));
        assert_eq!(p.connect_attempts(), attempts);
        assert_eq!(p.core.take_exit(), None, "a stream is still open");
        // The stream finishes: the client's side first (the service's write side is shut),
        // then the service's. The tunnel exits at once.
        p.edge(0).close_write(id.stream);
        p.run();
        assert!(p.seen.contains(&Output::ShutdownService { service }));
        assert!(!p.seen.contains(&Output::CloseService { service }));
        assert_eq!(
            p.core.service_fill(service, |_| Ok(0)).map(|r| r.unwrap()),
            Some(0)
        );
        p.core.service_pumped(service, p.now);
        p.run();
        assert!(p.seen.contains(&Output::CloseService { service }));
        p.advance(Duration::ZERO);
        assert_eq!(p.core.take_exit(), Some(Exit::Signalled));
        assert!(
            p.edges.iter().all(Option::is_none),
            "every connection closed"
        );
    }

    #[test]
    fn shutdown_ends_streams_still_open_at_the_grace_period() {
        let mut p = pipe(1);
        p.register_all();
        let (_, service) = spliced(&mut p, 0);
        p.core.shutdown(p.now);
        p.run();
        p.advance(GRACE - Duration::from_millis(1));
        assert_eq!(p.core.take_exit(), None);
        p.advance(Duration::from_millis(1));
        assert_eq!(p.core.take_exit(), Some(Exit::Signalled));
        assert!(p.seen.contains(&Output::CloseService { service }));
        assert!(p.edges[0].is_none());
    }

    #[test]
    fn inputs_for_an_attempt_that_ended_are_ignored() {
        let mut p = pipe(1);
        p.register_all();
        let old = p.conn(0);
        p.core.edge_closed(old, p.now);
        p.run();
        next_attempt_is_after(&mut p, Duration::from_millis(999));
        let new = p.conn(0);
        assert_ne!(old, new);
        // Late news about the old attempt changes nothing about the new one.
        let e = io::Error::from(io::ErrorKind::ConnectionReset);
        p.core.tls_failed(old, &e, p.now);
        p.core.edge_closed(old, p.now);
        assert_eq!(p.core.edge_input(old, b"\xff\xff\xff", p.now), 0);
        p.run();
        assert_eq!(p.conn(0), new);
        assert_eq!(p.closed_edges(), 1);
    }

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

    // ---- resumable streams ----

    const ALICE: &[u8] = br#"{"email":"alice@example.com","resume":"start"}"#;
    const ALICE_AGAIN: &[u8] = br#"{"email":"alice@example.com","resume":"resume"}"#;

    /// The client's end of a resumable stream: its record layer and what it got.
    struct Client {
        id: [u8; 16],
        secret: [u8; 32],
        ep: Endpoint,
        got: Vec<u8>,
        /// The origin's ACCEPT on the current path, once read.
        accepted: Option<u64>,
        /// The current path is a resume: replay from the ACCEPT's offset.
        resuming: bool,
    }

    impl Client {
        fn new(n: u8) -> Client {
            Client {
                id: [n; 16],
                secret: [n.wrapping_add(100); 32],
                ep: Endpoint::new(),
                got: Vec::new(),
                accepted: None,
                resuming: false,
            }
        }

        /// The client typed `bytes` (into its replay buffer).
        fn types(&mut self, bytes: &[u8]) {
            assert_eq!(self.ep.push(bytes), bytes.len());
        }

        /// Its path died: it keeps its replay buffer and comes back.
        fn lost(&mut self) {
            self.ep.detach();
            self.accepted = None;
        }
    }

    fn opening(o: Opening) -> Vec<u8> {
        let mut w = Vec::new();
        o.encode(&mut w);
        w
    }

    impl Pipe {
        /// The edge opens a resumable stream for the client on `slot`; the client's START
        /// follows.
        fn open_resumable(&mut self, slot: usize, c: &mut Client) -> StreamId {
            let stream = self.edge(slot).open_stream(HOST, ALICE).expect("open");
            let start = opening(Opening::Start {
                id: c.id,
                secret: c.secret,
            });
            assert_eq!(self.edge(slot).write(stream, &start), start.len());
            c.accepted = None;
            c.resuming = false;
            self.run();
            StreamId {
                conn: self.conn(slot),
                stream,
            }
        }

        /// The client comes back on `slot` with `claims`, naming `id` and `secret`; returns
        /// the new stream.
        fn resume_as(
            &mut self,
            slot: usize,
            c: &mut Client,
            claims: &[u8],
            secret: [u8; 32],
            received: u64,
        ) -> StreamId {
            self.resume_to(slot, c, HOST, claims, secret, received)
        }

        /// [`Pipe::resume_as`] through the edge's OPEN for `host`.
        fn resume_to(
            &mut self,
            slot: usize,
            c: &mut Client,
            host: &str,
            claims: &[u8],
            secret: [u8; 32],
            received: u64,
        ) -> StreamId {
            let stream = self.edge(slot).open_stream(host, claims).expect("open");
            let resume = opening(Opening::Resume {
                id: c.id,
                secret,
                received,
            });
            assert_eq!(self.edge(slot).write(stream, &resume), resume.len());
            c.accepted = None;
            c.resuming = true;
            self.run();
            StreamId {
                conn: self.conn(slot),
                stream,
            }
        }

        /// The client comes back (through its hostname spelled in capitals: case does not
        /// make it another).
        fn resume(&mut self, slot: usize, c: &mut Client) -> StreamId {
            let (secret, received) = (c.secret, c.ep.received());
            let host = HOST.to_ascii_uppercase();
            self.resume_to(slot, c, &host, ALICE_AGAIN, secret, received)
        }

        /// The client sends what its record layer has for the path `at`.
        fn client_send(&mut self, at: StreamId, c: &mut Client) {
            let mut w = Vec::new();
            c.ep.transmit(&mut w, usize::MAX);
            assert_eq!(self.edge(at.conn.slot).write(at.stream, &w), w.len());
            self.run();
        }

        /// The client reads what came on the path `at`.
        fn client_recv(&mut self, at: StreamId, c: &mut Client) {
            let edge = self.edge(at.conn.slot);
            let data = edge.readable(at.stream).to_vec();
            let mut used = 0;
            if c.accepted.is_none() {
                match Opening::decode(&data) {
                    Ok(None) => return,
                    Ok(Some((Opening::Accept { received }, n))) => {
                        c.accepted = Some(received);
                        if c.resuming {
                            c.ep.resume_from(received).expect("the origin's offset");
                        }
                        used = n;
                    }
                    other => panic!("not an ACCEPT first: {other:?}"),
                }
            }
            used +=
                c.ep.receive(&data[used..], |p| {
                    c.got.extend_from_slice(p);
                    p.len()
                })
                .expect("records from the origin");
            let now = self.now;
            self.edge(at.conn.slot).consume(at.stream, used, now);
            self.run();
        }

        fn closed(&self, service: ServiceId) -> bool {
            self.seen.contains(&Output::CloseService { service })
        }
    }

    fn resumable_pipe(ha: usize) -> Pipe {
        let mut p = pipe(ha);
        p.auto_connect = true;
        p.register_all();
        // The connections have served long enough to be replaced at once when lost.
        p.advance(RECONNECT_AT_ONCE_UPTIME);
        p
    }

    #[test]
    fn a_resumable_stream_is_spliced_through_the_record_layer_and_finishes() {
        let mut p = resumable_pipe(1);
        let mut c = Client::new(1);
        let at = p.open_resumable(0, &mut c);
        let service = p.service(at);
        // The service's bytes reach the client as records, after the ACCEPT.
        p.say(service, b"SSH-2.0-OpenSSH_9.2\r\n");
        p.client_recv(at, &mut c);
        assert_eq!(c.accepted, Some(0));
        assert_eq!(c.got, b"SSH-2.0-OpenSSH_9.2\r\n");
        // The client's bytes reach the service, exactly.
        c.types(b"SSH-2.0-OpenSSH_9.6\r\n");
        p.client_send(at, &mut c);
        assert_eq!(p.svc(service).heard, b"SSH-2.0-OpenSSH_9.6\r\n");
        // Each side acknowledges on the timer: the origin's ACK trims the client's buffer.
        assert_eq!(c.ep.buffered(), 21);
        p.advance(RESUME_ACK_INTERVAL);
        p.client_recv(at, &mut c);
        assert_eq!(c.ep.buffered(), 0, "acknowledged by the origin");
        // The client ends its side: FIN record, the service's write side is shut.
        c.ep.close_write();
        p.client_send(at, &mut c);
        assert!(p.svc(service).shut);
        assert!(!p.closed(service));
        // The service ends too; once the client acknowledged everything, the stream is
        // finished: the service closes and the mux stream gets its FIN.
        p.services.get_mut(&service).unwrap().done = true;
        p.say(service, b"bye");
        p.client_recv(at, &mut c);
        assert_eq!(c.got, b"SSH-2.0-OpenSSH_9.2\r\nbye");
        assert!(c.ep.read_closed());
        assert!(!p.closed(service), "waits for the client's ACK");
        c.ep.request_ack();
        p.client_send(at, &mut c);
        assert!(p.closed(service));
        assert!(p.edge(0).read_closed(at.stream), "the mux stream ended too");
    }

    #[test]
    fn connection_loss_detaches_and_a_resume_on_another_connection_replays_both_ways() {
        let mut p = resumable_pipe(2);
        let mut c = Client::new(1);
        let at = p.open_resumable(0, &mut c);
        let service = p.service(at);
        p.say(service, b"first ");
        p.client_recv(at, &mut c);
        assert_eq!(c.got, b"first ");
        // Bytes both ways are in flight when the connection dies: the service's are in
        // the origin's buffers, the client's in the edge's.
        let s = p.services.get_mut(&service).unwrap();
        s.says.extend_from_slice(b"second");
        p.pump_service(service);
        c.types(b"typed");
        let mut w = Vec::new();
        c.ep.transmit(&mut w, usize::MAX);
        p.edge(0).write(at.stream, &w);
        let conn = p.conn(0);
        p.core.edge_closed(conn, p.now);
        c.lost();
        p.run();
        // Detached, not closed; nothing was delivered.
        assert!(!p.closed(service));
        assert!(p.svc(service).heard.is_empty());
        assert_eq!(
            p.core
                .metrics
                .render()
                .lines()
                .find(|l| l.starts_with("postern_tunnel_streams_detached ")),
            Some("postern_tunnel_streams_detached 0"),
            "gauges are set at the tick"
        );
        p.advance(Duration::ZERO);
        assert!(p
            .core
            .metrics
            .render()
            .contains("postern_tunnel_streams_detached 1"));
        // The client comes back on the other connection: each side replays from the
        // other's offset; the same service connection goes on.
        let connects = p
            .seen
            .iter()
            .filter(|o| matches!(o, Output::ConnectService { .. }))
            .count();
        let again = p.resume(1, &mut c);
        p.client_recv(again, &mut c);
        assert_eq!(
            c.accepted,
            Some(0),
            "the origin had taken none of \"typed\""
        );
        assert_eq!(c.got, b"first second");
        p.client_send(again, &mut c);
        assert_eq!(p.svc(service).heard, b"typed");
        assert_eq!(p.service(again), service);
        assert_eq!(
            p.seen
                .iter()
                .filter(|o| matches!(o, Output::ConnectService { .. }))
                .count(),
            connects
        );
        // And on.
        p.say(service, b" third");
        p.client_recv(again, &mut c);
        assert_eq!(c.got, b"first second third");
        let text = p.core.metrics.render();
        assert!(text.contains("postern_tunnel_resumes_total 1"), "{text}");
        assert!(
            text.contains("postern_tunnel_replayed_bytes_total 6"),
            "{text}"
        );
        p.advance(Duration::ZERO);
        assert!(p
            .core
            .metrics
            .render()
            .contains("postern_tunnel_streams_detached 0"));
    }

    #[test]
    fn a_stream_detached_by_connection_loss_resumes_on_the_reconnected_connection() {
        let mut p = resumable_pipe(1);
        let mut c = Client::new(1);
        let at = p.open_resumable(0, &mut c);
        let service = p.service(at);
        p.say(service, b"before");
        p.client_recv(at, &mut c);
        let conn = p.conn(0);
        p.core.edge_closed(conn, p.now);
        c.lost();
        p.run();
        assert!(p.edges[0].is_none());
        // The service keeps talking; its bytes wait in its socket (nothing reads it).
        p.services
            .get_mut(&service)
            .unwrap()
            .says
            .extend_from_slice(b" during");
        p.pump_service(service);
        assert_eq!(p.svc(service).says, b" during");
        // The connection that served is replaced at once and registers again.
        next_attempt_is_after(&mut p, Duration::from_millis(249));
        p.edge(0).send_registered(HOST);
        p.run();
        let again = p.resume(0, &mut c);
        p.client_recv(again, &mut c);
        assert_eq!(c.got, b"before during");
        assert!(!p.closed(service));
    }

    #[test]
    fn rst_lost_detaches_and_rst_cancel_closes() {
        let mut p = resumable_pipe(1);
        let mut c = Client::new(1);
        let at = p.open_resumable(0, &mut c);
        let service = p.service(at);
        p.say(service, b"hi");
        // The client's carrier died: the edge says Lost. The stream waits for it.
        p.edge(0)
            .reset(at.stream, ResetCode::Lost, "client's connection ended");
        c.lost();
        p.run();
        assert!(!p.closed(service));
        let again = p.resume(0, &mut c);
        p.client_recv(again, &mut c);
        assert_eq!(c.got, b"hi");
        // The client went away on purpose (or was cut off): Cancel ends it.
        p.edge(0).reset(again.stream, ResetCode::Cancel, "idle");
        p.run();
        assert!(p.closed(service));
        // There is nothing left to resume.
        let third = p.resume(0, &mut c);
        assert_eq!(
            p.resets(0).last().unwrap(),
            &(
                third.stream,
                ResetCode::Cancel,
                "resume refused: unknown stream or wrong secret".to_owned()
            )
        );
    }

    #[test]
    fn bad_resumes_are_refused_and_leave_the_stream_alone() {
        let mut p = resumable_pipe(2);
        let mut c = Client::new(1);
        let at = p.open_resumable(0, &mut c);
        let service = p.service(at);
        p.say(service, b"0123456789");
        p.client_recv(at, &mut c);
        let refused = |p: &mut Pipe, why: &str| {
            let (stream, code, reason) = p.resets(1).last().cloned().expect("a reset");
            assert_eq!(code, ResetCode::Cancel);
            assert_eq!(reason, format!("resume refused: {why}"));
            stream
        };
        // A wrong secret and an unknown id read the same.
        let secret = c.secret;
        let mut wrong = secret;
        wrong[0] ^= 1;
        let accepted = c.accepted;
        let s1 = p.resume_as(1, &mut c, ALICE_AGAIN, wrong, 10);
        assert_eq!(refused(&mut p, "unknown stream or wrong secret"), s1.stream);
        let mut stranger = Client::new(9);
        p.resume_as(1, &mut stranger, ALICE_AGAIN, [109; 32], 0);
        refused(&mut p, "unknown stream or wrong secret");
        // The right secret from someone else the edge let in.
        let bob = br#"{"email":"bob@example.com","resume":"resume"}"#;
        p.resume_as(1, &mut c, bob, secret, 10);
        refused(&mut p, "not the identity that opened the stream");
        // The same user and secret through another hostname (whose policy may admit them
        // where the stream's own no longer does), or naming a jump-host destination.
        let host = "other.example.com";
        p.resume_to(1, &mut c, host, ALICE_AGAIN, secret, 10);
        refused(
            &mut p,
            "not the hostname or destination the stream was opened for",
        );
        let jump = br#"{"email":"alice@example.com","resume":"resume","destination":"db:22"}"#;
        p.resume_as(1, &mut c, jump, secret, 10);
        refused(
            &mut p,
            "not the hostname or destination the stream was opened for",
        );

        // An offset beyond what the origin sent (or below what was acknowledged).
        p.resume_as(1, &mut c, ALICE_AGAIN, secret, 11);
        refused(
            &mut p,
            "resume offset 11 outside what can be replayed (0..=10)",
        );
        // Not a RESUME at all.
        let s5 = p.edge(1).open_stream(HOST, ALICE_AGAIN).unwrap();
        p.edge(1)
            .write(s5, &opening(Opening::Accept { received: 0 }));
        p.run();
        refused(&mut p, "the first record is not RESUME");
        assert_eq!(p.resets(0), [], "the original stream is untouched");
        assert!(p
            .core
            .metrics
            .render()
            .contains("postern_tunnel_resume_refusals_total 7"));
        // It goes on where it was.
        (c.accepted, c.resuming) = (accepted, false);
        p.say(service, b"more");
        p.client_recv(at, &mut c);
        assert_eq!(c.got, b"0123456789more");
        c.types(b"up");
        p.client_send(at, &mut c);
        assert_eq!(p.svc(service).heard, b"up");
    }

    #[test]
    fn one_identity_holds_a_bounded_number_of_detached_streams() {
        let mut p = resumable_pipe(1);
        let mut services = Vec::new();
        for n in 0..=MAX_DETACHED_PER_IDENTITY {
            let mut c = Client::new((n % 250) as u8);
            c.id[1] = (n / 250) as u8;
            let at = p.open_resumable(0, &mut c);
            services.push(p.service(at));
            p.edge(0).reset(at.stream, ResetCode::Lost, "gone");
            p.run();
        }
        // The first MAX_DETACHED_PER_IDENTITY wait for their client; the next one closes.
        let (last, kept) = services.split_last().unwrap();
        assert!(
            kept.iter().all(|&s| !p.closed(s)),
            "each detached stream is kept"
        );
        assert!(
            p.closed(*last),
            "one past the bound closes as a plain stream would"
        );
        let alice = Identity {
            email: Some("alice@example.com".into()),
            service_token: None,
        };
        let held = p.core.detached_count(&alice);
        assert_eq!(held, (MAX_DETACHED_PER_IDENTITY, MAX_DETACHED_PER_IDENTITY));
        // Another identity is not held to alice's count.
        let bob = br#"{"email":"bob@example.com","resume":"start"}"#;
        let stream = p.edge(0).open_stream(HOST, bob).expect("open");
        let mut c = Client::new(251);
        let start = opening(Opening::Start {
            id: c.id,
            secret: c.secret,
        });
        p.edge(0).write(stream, &start);
        p.run();
        c.accepted = None;
        let at = StreamId {
            conn: p.conn(0),
            stream,
        };
        let service = p.service(at);
        p.edge(0).reset(stream, ResetCode::Lost, "gone");
        p.run();
        assert!(!p.closed(service), "bob's stream is kept");
    }

    #[test]
    fn a_detached_stream_is_closed_at_the_end_of_the_resume_window() {
        let mut p = resumable_pipe(1);
        let mut c = Client::new(1);
        let at = p.open_resumable(0, &mut c);
        let service = p.service(at);
        p.edge(0).reset(at.stream, ResetCode::Lost, "gone");
        p.run();
        p.advance(WINDOW - Duration::from_millis(1));
        assert!(!p.closed(service));
        p.advance(Duration::from_millis(1));
        assert!(p.closed(service));
        p.resume(0, &mut c);
        let why = p.resets(0).last().unwrap().2.clone();
        assert_eq!(why, "resume refused: unknown stream or wrong secret");
    }

    #[test]
    fn a_second_resume_moves_the_stream_and_resets_the_older_carrier() {
        let mut p = resumable_pipe(2);
        let mut c = Client::new(1);
        let at = p.open_resumable(0, &mut c);
        let service = p.service(at);
        p.say(service, b"one ");
        p.client_recv(at, &mut c);
        // The client gave up on a path the origin still thinks alive (a silent drop).
        c.lost();
        let again = p.resume(1, &mut c);
        assert_eq!(
            p.resets(0),
            [(
                at.stream,
                ResetCode::Cancel,
                "resumed on another connection".to_owned()
            )]
        );
        p.say(service, b"two");
        p.client_recv(again, &mut c);
        assert_eq!(c.got, b"one two");
        assert_eq!(p.service(again), service);
        assert_eq!(p.core.service_of(at), None);
        assert!(!p.closed(service));
    }

    #[test]
    fn a_full_replay_buffer_stops_reading_the_service_until_the_client_acknowledges() {
        let mut p = resumable_pipe(1);
        let mut c = Client::new(1);
        let at = p.open_resumable(0, &mut c);
        let service = p.service(at);
        let big = vec![7u8; REPLAY_BUFFER + 100_000];
        p.services.get_mut(&service).unwrap().says = big.clone();
        // The client reads everything but acknowledges nothing.
        for _ in 0..100 {
            p.pump_service(service);
            p.run();
            p.client_recv(at, &mut c);
        }
        assert_eq!(
            c.got.len(),
            REPLAY_BUFFER,
            "no more than the replay buffer unacknowledged"
        );
        assert_eq!(p.svc(service).says.len(), 100_000);
        c.ep.request_ack();
        p.client_send(at, &mut c);
        for _ in 0..10 {
            p.client_recv(at, &mut c);
        }
        assert_eq!(c.got, big);
    }

    #[test]
    fn a_plain_stream_still_closes_with_its_connection_and_shutdown_closes_detached_ones() {
        let mut p = resumable_pipe(1);
        let plain = p.open(0, HOST);
        let plain_service = p.service(plain);
        let mut c = Client::new(1);
        let at = p.open_resumable(0, &mut c);
        let service = p.service(at);
        // A plain stream's bytes go as they are, no record layer.
        p.say(plain_service, b"raw");
        assert_eq!(p.edge(0).readable(plain.stream), b"raw");
        let conn = p.conn(0);
        p.core.edge_closed(conn, p.now);
        p.run();
        assert!(p.closed(plain_service));
        assert!(!p.closed(service));
        // SIGTERM: no resume while draining; the detached stream closes at once.
        p.core.shutdown(p.now);
        p.run();
        assert!(p.closed(service));
    }

    /// The yield's condition counts live streams only: a resumable stream detached by its
    /// connection's loss does not make a lone live stream beside it "shared".
    #[test]
    fn a_detached_stream_does_not_count_as_a_second_live_stream() {
        let mut p = resumable_pipe(2);
        let mut c = Client::new(1);
        let at = p.open_resumable(0, &mut c);
        let service = p.service(at);
        let plain = p.open(1, HOST);
        let _ = p.service(plain);
        assert!(p.core.more_than_one_stream(), "two live streams");
        let conn = p.conn(0);
        p.core.edge_closed(conn, p.now);
        p.run();
        assert!(!p.closed(service), "the resumable stream is kept, detached");
        assert!(
            !p.core.more_than_one_stream(),
            "one live stream and one detached"
        );
    }

    #[test]
    fn a_resumable_stream_that_does_not_begin_with_start_is_reset() {
        let mut p = resumable_pipe(1);
        let stream = p.edge(0).open_stream(HOST, ALICE).unwrap();
        p.edge(0).write(stream, b"SSH-2.0-client\r\n");
        p.run();
        let (s, code, why) = p.resets(0).last().cloned().unwrap();
        assert_eq!((s, code), (stream, ResetCode::Cancel));
        assert!(why.contains("not START"), "{why}");
        assert!(p.services.values().all(|s| s.closed));
        // A resume mode this origin does not know: reset, no service.
        let services = p.services.len();
        let odd = br#"{"email":"alice@example.com","resume":"later"}"#;
        let stream = p.edge(0).open_stream(HOST, odd).unwrap();
        p.run();
        let (s, code, why) = p.resets(0).last().cloned().unwrap();
        assert_eq!(
            (s, code, why.as_str()),
            (stream, ResetCode::Cancel, "unsupported resume mode")
        );
        assert_eq!(p.services.len(), services);
    }

    // ------------------------------------------------------------------------- jump host

    /// Opens a stream to `destination` and says where it went: `Ok(addr)` connected, or
    /// `Err(reason)` of its reset.
    fn jump(p: &mut Pipe, destination: Option<&str>) -> Result<SocketAddr, String> {
        let claims = match destination {
            Some(d) => serde_json::json!({ "destination": d }),
            None => serde_json::json!({}),
        };
        let before = p.seen.len();
        let id = p.open_claims(0, HOST, &serde_json::to_vec(&claims).unwrap());
        let connected = p.seen[before..].iter().find_map(|o| match o {
            Output::ConnectService { addr, .. } => Some(*addr),
            _ => None,
        });
        if let Some(addr) = connected {
            return Ok(addr);
        }
        let reset = p.resets(0).into_iter().find(|r| r.0 == id.stream);
        let (_, code, reason) = reset.expect("neither connected nor reset");
        // Refused before its name is looked up: NoService; after (by address): ConnectFailed.
        assert!(matches!(
            code,
            ResetCode::NoService | ResetCode::ConnectFailed
        ));
        Err(reason)
    }

    #[test]
    fn a_plain_rule_refuses_a_destination_rather_than_reach_its_own_service() {
        let mut p = pipe(1);
        p.register_all();
        let e = jump(&mut p, Some("10.0.0.5:22")).expect_err("refused");
        assert!(e.contains("not a jump host"), "{e}");
        assert_eq!(
            jump(&mut p, None),
            Ok(SERVICE.parse().unwrap()),
            "without a destination the stream goes to the service as before"
        );
    }

    #[test]
    fn a_bastion_rule_connects_to_the_destination_but_not_to_loopback_or_metadata() {
        let mut p = pipe_serving(1, None, "bastion");
        p.register_all();
        assert_eq!(
            jump(&mut p, Some("10.0.0.5:22")),
            Ok("10.0.0.5:22".parse().unwrap())
        );
        assert_eq!(
            jump(&mut p, Some("[fd00::5]:2222")),
            Ok("[fd00::5]:2222".parse().unwrap())
        );
        // A name connects to what it resolves to, on the destination's port.
        assert_eq!(
            jump(&mut p, Some("db.internal:5432")),
            Ok("192.0.2.1:5432".parse().unwrap())
        );
        for special in [
            "127.0.0.1:22",
            "169.254.169.254:80",
            "[::ffff:169.254.169.254]:80",
            "[::1]:22",
            "0.0.0.0:22",
            "rebound.test:22",
        ] {
            let e = jump(&mut p, Some(special)).expect_err(special);
            assert!(e.contains("special address"), "{special}: {e}");
        }
        let e = jump(&mut p, Some("evil:22\r\nX: y")).expect_err("bad");
        assert!(e.contains("bad destination"), "{e}");
        let e = jump(&mut p, None).expect_err("no destination");
        assert!(e.contains("is a jump host: name where to go"), "{e}");
    }

    #[test]
    fn the_tunnels_own_allow_list_narrows_what_the_edge_vouched_for() {
        let mut p = pipe_serving(1, None, "bastion");
        p.core
            .cfg
            .ingress
            .set_bastion_allow(&["127.0.0.0/8:22".into(), "db.internal:5432".into()])
            .unwrap();
        p.register_all();
        assert_eq!(
            jump(&mut p, Some("127.0.0.2:22")),
            Ok("127.0.0.2:22".parse().unwrap())
        );
        assert_eq!(
            jump(&mut p, Some("rebound.test:22")),
            Ok("127.0.0.1:22".parse().unwrap()),
            "a name whose address the list names"
        );
        assert_eq!(
            jump(&mut p, Some("db.internal:5432")),
            Ok("192.0.2.1:5432".parse().unwrap()),
            "a name the list names"
        );
        for no in ["10.0.0.5:22", "127.0.0.1:23", "other.internal:22"] {
            let e = jump(&mut p, Some(no)).expect_err(no);
            assert!(e.contains("not in the tunnel's bastion-allow"), "{no}: {e}");
        }
        let e = jump(&mut p, Some("169.254.169.254:80")).expect_err("metadata");
        assert!(e.contains("bastion-allow"), "{e}");
    }
}
