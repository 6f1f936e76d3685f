//! The edge's core: every decision of `postern edge`, over connections named by slot. The
//! driver (`edge::driver`) hands it sockets as `io::Read + io::Write`, readiness, worker
//! answers and the time; the core never reads the clock, opens a file or starts a thread.
//!
//! ```text
//!  admit(peer) ─▶ accepted(slot, sock) ─▶ Accepting (ClientHello; ALPN picks the role)
//!                 ├─ "postern-tunnel/1" ─▶ Tunnel  (mutual TLS, mux Session, REGISTER)
//!                 ├─ "postern-admin/1"  ─▶ Admin   (mutual TLS, one JSON request: admin.rs)
//!                 └─ otherwise          ─▶ Carrier (HTTP head ─▶ auth ─▶ 101 ─▶ WebSocket stream)
//!  handle_ready(slot), process(now)      ─▶ TLS in, decisions, TLS out
//!  handle_wake(now)                      ─▶ store and login-worker answers resume parked work
//!  poll_timeout() / handle_timeout(now)  ─▶ handshake, request, idle and keepalive deadlines
//!  shutdown(now)                         ─▶ GOAWAY to tunnels, close_notify to carriers
//! ```
//!
//! A carrier's WebSocket payload goes into one mux stream of a tunnel connection that
//! registered the carrier's hostname; the stream's bounded buffers and window are the
//! backpressure: a full stream stops reading the carrier, an empty window stops the origin.
//!
//! What one client may hold is bounded by [`crate::limits::EdgeLimits`] (the config's
//! `"limits"`): connections per IP and in total at accept, the handshake deadline and the idle
//! timeout in `tick`, streams per tunnel connection and the login rate in `on_request`. A hit
//! closes or refuses that client only, is counted in [`LimitCounters`], and is logged once per
//! source and interval.

pub mod admin;
mod bastion;
mod carrier;
mod console;
pub(super) mod login;
pub(crate) mod loops;
mod sessions;
mod sshcert;
#[cfg(test)]
pub(crate) mod tests;
mod tunnel;
mod view;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use rustls::pki_types::CertificateDer;
use rustls::server::{Acceptor, ServerConfig};

use crate::audit::{Audit, Repeats};
use crate::edge::config::{self, EdgeSettings, Reloaded};
use crate::io::tls::TlsConn;
use crate::io::would_block;
use crate::limits::{
    CONN_WRITE_BATCH, CUT_THROUGH_MIN, LIMIT_LOG_INTERVAL_SECS, LINGER_DISCARD_PER_TURN,
    MAX_LOG_SUPPRESSION_ENTRIES, SERVICE_TOKEN_EXPIRY_WARNING_SECS as EXPIRY_WARNING_SECS,
    TLS_READ_STAGE,
};
use crate::metrics::{self, Auth, Direction, Metrics};
use crate::oidc::Provider;
use crate::proto::idmap::IdMap;
use crate::proto::jwt::KeyRing;
use crate::proto::mux::{self, EdgeSession};
use crate::proto::token_transfer::{SlotLimits, Slots};
use crate::proto::ws;
use crate::store::worker::StoreWorker;
use crate::store::Snapshot;
use carrier::refuse;
use view::{CertView, HostnameView, StoreLink, TokenView, TunnelView};

/// Who waits for an answer from the store (`view::StoreLink`). Defined here, beside the
/// connections it names, so that `view` and `admin` each depend on the core and not on
/// each other.
enum Waiter {
    /// A carrier parked (`carrier::Carrier::park`); its request is run again.
    Carrier {
        conn: ConnId,
        request: Box<crate::proto::carrier::Request>,
    },
    /// A tunnel connection whose claim is being stored (`Tunnel::registering`).
    Register { conn: ConnId },
    /// An admin request (`admin::Step` says what comes next).
    Admin {
        conn: ConnId,
        step: Box<admin::Step>,
    },
    /// A login step of an edge pool (`login::pool::Step`); `None`: nobody waits.
    Login {
        conn: Option<ConnId>,
        step: Box<login::pool::Step>,
    },
    /// An admin console action (`console::Step`): a parked browser.
    Console {
        conn: ConnId,
        step: Box<console::Step>,
    },
}

/// A connection's byte stream as the driver hands it over: a registered mio socket (which
/// leaves the poll when dropped), or an in-memory pipe in the tests. The core reads and writes
/// it only through [`TlsConn`], and only when the driver says it is ready.
pub(crate) trait Transport: io::Read + io::Write + Send {
    /// Ends the edge's direction (a TCP FIN) and keeps reading possible: the lingering
    /// close of a carrier (`proto::carrier`, `Lingering`).
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// The connection moves to another loop (`loops.rs`): it leaves this loop's poll. The
    /// driver there registers it again ([`EdgeCore::take_arrivals`]).
    fn leave(&mut self) {}

    /// The driver's own type, for registering an arrival.
    fn as_any(&mut self) -> &mut dyn std::any::Any;
}

/// The transport of one connection.
pub(crate) type Sock = Box<dyn Transport>;

/// What one pass of a lingering close's reads found ([`discard_input`]).
#[derive(Debug, PartialEq, Eq)]
enum Discarded {
    /// The peer's EOF (or a read error): close now.
    Ended,
    /// Nothing more to read now: wait for readiness (or the deadline).
    Drained,
    /// [`LINGER_DISCARD_PER_TURN`] read with more maybe waiting: run again on the next pass.
    Bounded,
}

/// The reads of a lingering close, on a connection whose write side is shut: reads what the
/// peer still sends into `stage` and throws it away (no TLS, no buffer of its own), at most
/// [`LINGER_DISCARD_PER_TURN`] bytes per pass.
fn discard_input(sock: &mut Sock, stage: &mut [u8]) -> Discarded {
    let mut discarded = 0;
    while discarded < LINGER_DISCARD_PER_TURN {
        match sock.read(stage) {
            Ok(0) => return Discarded::Ended,
            Ok(n) => discarded += n,
            Err(e) if would_block(&e) => return Discarded::Drained,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!("while lingering: {e}");
                return Discarded::Ended;
            }
        }
    }
    Discarded::Bounded
}

/// How often [`EdgeCore::handle_timeout`] runs the deadlines (handshake, idle, keepalive).
const TICK: Duration = Duration::from_secs(1);

/// ERROR codes sent to an origin whose registration is refused, by reason. The origin exits
/// on all but `NOT_RECORDED` ([`mux::ErrorCode::is_final`]).
pub mod refusal {
    use crate::proto::mux::ErrorCode;

    /// The certificate does not cover the hostname.
    pub const NOT_COVERED: ErrorCode = ErrorCode::Forbidden;
    /// Another origin certificate owns the hostname.
    pub const OWNED: ErrorCode = ErrorCode::Conflict;
    /// The hostname is not valid.
    pub const BAD_HOSTNAME: ErrorCode = ErrorCode::BadRequest;
    /// No application of the edge serves the hostname.
    pub const NO_APPLICATION: ErrorCode = ErrorCode::NotFound;
    /// The origin certificate is revoked (`postern edge origin-cert revoke`).
    pub const REVOKED: ErrorCode = ErrorCode::Forbidden;
    /// The certificate owns `limits::MAX_HOSTNAMES_PER_CERTIFICATE` hostnames already.
    pub const TOO_MANY_HOSTNAMES: ErrorCode = ErrorCode::Forbidden;
    /// The edge could not record the claim: transient, the origin tries again.
    pub const NOT_RECORDED: ErrorCode = ErrorCode::Internal;
}

enum Conn {
    Accepting {
        sock: Sock,
        acceptor: Box<Acceptor>,
        deadline: Instant,
        peer: SocketAddr,
    },
    Carrier(Box<Carrier>),
    Tunnel(Box<Tunnel>),
    Admin(Box<admin::Admin>),
    /// A connection served by another loop (`loops.rs`), on loop 0.
    Away(Box<loops::Away>),
}

struct Carrier {
    tls: TlsConn<Sock>,
    peer: SocketAddr,
    sni: String,
    /// The request, the stream and the close (`proto::carrier`); its stream link is the
    /// tunnel slot and the stream id.
    core: crate::proto::carrier::Carrier<Link>,
    /// The client left before sending a request.
    finished: bool,
    /// The client id of the service token it was let in with (closed if that is revoked).
    service_token: Option<String>,
    /// When a byte last moved either way while streaming (for `limits.idle_timeout_secs`).
    last_active: Instant,
    /// Once streaming: who, where, since when, how much (`sessions.rs`).
    session: Option<sessions::Session>,
    /// The time of the input being handled (set by the core before it hands the carrier to
    /// a handler), for the close deadlines that responses start.
    now: Instant,
    /// Let in and routed to the tunnel connection that stub names, which another loop serves:
    /// the carrier goes there at the end of this pass (`loops.rs`). Its session counts as
    /// live meanwhile (a kill or a revocation ends it here).
    moving: Option<(ConnId, Box<loops::Open>)>,
}

/// A connection's name that outlives it: the slot and the slot's generation, which changes
/// whenever the slot is freed. A late result (a worker's answer) for a connection that has
/// gone finds another generation and is dropped, never acting on the slot's new tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnId {
    slot: usize,
    generation: u32,
}

/// Where a streaming carrier's bytes go: a tunnel connection's slot and a stream on it.
type Link = (usize, u32);

impl Carrier {
    /// Ends the carrier with a WebSocket Close (none if its Close went out already); the
    /// stream is the caller's to let go of.
    fn close_with(&mut self, code: u16, reason: &str, now: Instant) {
        let _ = self.core.close_with(code, reason, now);
    }

    /// Sends `data`, origin bytes of its stream `link` that have nothing waiting before them,
    /// as one WebSocket frame at once (the mux's cut-through, `handle_input_direct`). `None`:
    /// not taken; the bytes wait in the stream and `splice_carrier` sends them in turn, after
    /// whatever is queued. Taken only when at least [`CUT_THROUGH_MIN`] (smaller frames are
    /// batched), while streaming to that link with nothing of its own queued (a 101, a Close,
    /// a pong), and with the previous batch out on the socket (`can_send`: a client that does
    /// not read takes nothing more, and its stream's window bounds what waits). `Some(Err)`:
    /// taken, but the socket failed; the caller runs the carrier, which ends it.
    fn take_direct(
        &mut self,
        link: Link,
        data: &[u8],
        metrics: &Metrics,
        now: Instant,
    ) -> Option<io::Result<()>> {
        if data.len() < CUT_THROUGH_MIN
            || self.moving.is_some()
            || self.core.has_transmit()
            || !self.tls.can_send()
        {
            return None;
        }
        match self.core.streaming() {
            Some(s) if s.link == link && !s.sent_close => {}
            _ => return None,
        }
        let mut h = [0u8; 14];
        let hl = ws::encode_header(&mut h, ws::BINARY, data.len(), None);
        self.tls.send_vectored(&[&h[..hl], data]);
        if let Some(s) = self.session.as_mut() {
            s.bytes.add_down(data.len());
        }
        metrics.bytes(Direction::OriginToClient, data.len());
        self.last_active = now;
        Some(self.tls.flush())
    }

    /// Hands what the core queued to TLS.
    fn transmit(&mut self) {
        if let Some(bytes) = self.core.take_transmit() {
            self.tls.send(&bytes);
        }
    }
}

struct Tunnel {
    tls: TlsConn<Sock>,
    peer: SocketAddr,
    mux: EdgeSession,
    cert: CertificateDer<'static>,
    cert_fp: String,
    /// The hostname an ad-hoc (`--hostname`) registration took.
    hostname: Option<String>,
    /// The named tunnel (id) this connection serves.
    named: Option<String>,
    /// Unix seconds when the TLS connection was accepted.
    opened: u64,
    connector: String,
    ha_index: u8,
    /// The origin speaks mux version 2: its streams may be resumable (docs/design.md §2.6).
    resumable: bool,
    /// The origin speaks mux version 3, which only a tunnel with a `bastion` rule sends: it
    /// reads OPEN's `destination` (a jump host). Older ones would ignore it.
    bastion: bool,
    /// Stream id → carrier slot.
    carriers: IdMap<u32, usize>,
    /// Close once the queued output (e.g. an ERROR frame) is flushed.
    closing: bool,
    /// The ERROR and close_notify went out and the write side is shut: what the origin still
    /// sends is read and discarded until its EOF or then (a lingering close, as carriers do:
    /// `proto::carrier`), so that its unread frames do not turn the ERROR into a reset.
    linger_until: Option<Instant>,
    next_timeout: Instant,
    /// TLS and REGISTER must complete by then (slowloris bound); none once registered.
    deadline: Option<Instant>,
    /// A REGISTER the edge admitted, waiting until its hostname claim is on disk.
    registering: Option<Registering>,
    /// Registered on loop 0 of a `--workers` edge: it may go to a quieter loop at the end
    /// of this pass (`loops.rs`).
    moving: bool,
    /// Served by a worker: the figures loop 0 routes by.
    live: Option<Arc<loops::TunnelLive>>,
}

/// An admitted REGISTER whose hostname claim the store is recording (`view::Waiter::Register`).
struct Registering {
    hostname: String,
    service: String,
    /// The store request that records the claim.
    ticket: Option<crate::store::worker::Ticket>,
    /// The audit record, completed with the outcome.
    audit: serde_json::Map<String, serde_json::Value>,
}

/// The edge's decisions: every connection's state, the routes, the limits and the timers.
/// The driver hands it sockets, readiness, worker answers and the time; it never reads the
/// clock (the time of the input being handled is `now`, and `unix` for tokens).
pub(crate) struct EdgeCore {
    pub(super) settings: EdgeSettings,
    /// The time of the input being handled.
    now: Instant,
    /// The same moment in Unix seconds (token lifetimes, records).
    unix: u64,
    /// When [`EdgeCore::handle_timeout`] runs the deadlines next.
    next_tick: Instant,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Connections to run in this round of [`EdgeCore::run_dirty`].
    dirty: Vec<usize>,
    /// Carriers with a few bytes to deliver (`few_bytes_readable`): they run before `dirty` in
    /// this round, and a tunnel stops reading for them (docs/design.md §2.8, "Urgent").
    urgent: Vec<usize>,
    /// The slot is in `dirty`, or deferred to `again` (a mark then changes nothing).
    is_dirty: Vec<bool>,
    /// The slot ran in the current round: a mark now defers it to the next pass of the loop.
    has_run: Vec<bool>,
    /// The slots that ran in the current round (to clear `has_run` at its end).
    ran: Vec<usize>,
    /// A tunnel connection that carries more than one stream ran since the driver last asked
    /// ([`EdgeCore::take_shared_turn`]): it may yield its core after a long turn
    /// ([`crate::io::yield_after_long_turn`]).
    shared_turn: bool,
    /// Connections for the next pass of the loop, which then does not wait: those that
    /// stopped at a per-pass bound with input left (a lingering carrier), and those marked
    /// again after they ran in this round (a bulk stream: its carrier and its tunnel mark
    /// each other for as long as data flows). A slot freed meanwhile gets a spurious run.
    again: Vec<usize>,
    /// Hostname → tunnel slots that registered it (ad-hoc `--hostname`).
    routes: HashMap<String, Vec<usize>>,
    /// Named tunnel id → its registered connection slots. Hostnames reach them through the
    /// routes in `hostnames` (`tunnel route dns`).
    named: HashMap<String, Vec<usize>>,
    /// The named tunnels, as the store last said (`view.rs`).
    tunnels: TunnelView,
    round_robin: usize,
    tokens: TokenView,
    /// The revoked origin certificates.
    certs: CertView,
    hostnames: HostnameView,
    /// The state store's worker thread, and who waits for its answers.
    store: StoreLink,
    audit: Audit,
    scratch: Vec<u8>,
    /// Ciphertext staging for `TlsConn::read`, shared by every connection.
    stage: Vec<u8>,
    /// What the carrier being run may still frame straight into its tunnel connection's TLS
    /// in this run ([`CONN_WRITE_BATCH`] at its start): the rest goes through its stream's
    /// send buffer, whose bound ends the run, so one upload cannot keep a pass to itself.
    direct_budget: usize,
    /// The edge's app-token signing keys (state dir `signing-keys.json`).
    keys: KeyRing,
    transfers: Slots,
    logins: login::Logins,
    /// The admin console's sign-ins, sessions and chart (`console.rs`).
    console: console::Console,
    oidc: Option<Arc<Provider>>,
    worker: Option<login::Worker>,
    /// Base URL of the login pages; known once the listener is bound.
    public_url: String,
    /// Source IP of each slot's connection, for `per_ip`.
    slot_ip: Vec<Option<IpAddr>>,
    /// Open connections per source IP (entries removed at zero).
    per_ip: HashMap<IpAddr, usize>,
    /// Login entry-point requests per source IP: (start of the current minute, count).
    login_windows: HashMap<IpAddr, (Instant, u32)>,
    /// Stream resumptions per source IP, the same way (`RESUME_ATTEMPTS_PER_MINUTE`).
    resume_windows: HashMap<IpAddr, (Instant, u32)>,
    /// When each (offender, limit) was last logged: one line per interval, the rest counted.
    limit_log: HashMap<(IpAddr, Limit), Instant>,
    /// How often each limit was hit since start.
    pub(crate) counters: LimitCounters,
    /// What `--metrics` serves.
    metrics: Arc<Metrics>,
    /// When each slot's connection was accepted, until its TLS handshake is done.
    tls_started: Vec<Option<Instant>>,
    /// Each slot's generation: bumped when the slot is freed (see [`ConnId`]).
    generations: Vec<u32>,
    /// The open-file soft limit at start, which caps `limits.max_connections`.
    open_files: Option<u64>,
    /// Denials before authentication, per source and reason: one audit and log line per
    /// interval, the rest counted.
    denials: Repeats<(IpAddr, Auth)>,
    /// Unix second of the next look for service tokens about to expire (daily).
    next_expiry_check: u64,
    /// The other loops of a `--workers` edge (`loops.rs`).
    loops: loops::Loops,
    /// On a worker: the stub on loop 0 of each slot's connection.
    slot_home: Vec<Option<ConnId>>,
    /// On a worker: the tunnel connections by their stub on loop 0.
    homes: HashMap<ConnId, usize>,
    /// Slots of connections that arrived from another loop, for the driver to register.
    arrivals: Vec<usize>,
    /// A worker that stopped at SIGTERM.
    stopped: bool,
    /// The driver's clock for `/metrics`' interactive holds ([`EdgeCore::time_holds`]).
    hold_clock: Option<fn() -> Instant>,
}

/// A resource limit an offender hit (see [`crate::limits::EdgeLimits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Limit {
    Connections,
    ConnectionsPerIp,
    Handshake,
    Idle,
    Streams,
    PendingTransfers,
    PendingPerSource,
    LoginRate,
}

/// How often each limit refused or closed something since the edge started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitCounters {
    /// Connections closed at accept: `limits.max_connections` were open.
    pub connections: u64,
    /// Connections closed at accept: their source IP had `max_connections_per_ip` open.
    pub connections_per_ip: u64,
    /// Connections closed at the handshake deadline (TLS, request head or REGISTER).
    pub handshake_timeouts: u64,
    /// Streaming carriers closed after `idle_timeout_secs` without a byte.
    pub idle_timeouts: u64,
    /// Carriers refused with 503: their tunnel connection had `max_streams_per_tunnel`.
    pub streams: u64,
    /// Logins refused: `max_pending_transfers` (or `max_pending_tunnel_logins`) were in
    /// progress.
    pub pending_transfers: u64,
    /// Logins refused: `max_pending_logins_per_ip` were in progress from one source.
    pub pending_per_source: u64,
    /// Login requests answered 429: over `login_attempts_per_minute` for their source IP.
    pub login_rate: u64,
}

impl LimitCounters {
    fn bump(&mut self, limit: Limit) {
        let c = match limit {
            Limit::Connections => &mut self.connections,
            Limit::ConnectionsPerIp => &mut self.connections_per_ip,
            Limit::Handshake => &mut self.handshake_timeouts,
            Limit::Idle => &mut self.idle_timeouts,
            Limit::Streams => &mut self.streams,
            Limit::PendingTransfers => &mut self.pending_transfers,
            Limit::PendingPerSource => &mut self.pending_per_source,
            Limit::LoginRate => &mut self.login_rate,
        };
        *c = c.saturating_add(1);
    }
}

impl std::fmt::Display for LimitCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connections {}, per-IP connections {}, handshake timeouts {}, idle timeouts {}, \
             streams {}, pending logins {}, pending logins per source {}, login rate {}",
            self.connections,
            self.connections_per_ip,
            self.handshake_timeouts,
            self.idle_timeouts,
            self.streams,
            self.pending_transfers,
            self.pending_per_source,
            self.login_rate
        )
    }
}

/// What the driver reads before the loop starts and hands to [`EdgeCore::new`].
pub(crate) struct Parts {
    /// The store's records at start (the views are built from them).
    pub snapshot: Snapshot,
    /// The store's worker thread, already running (none on a worker loop: `loops.rs`).
    pub store: Option<StoreWorker>,
    pub audit: Audit,
    /// The app-token signing keys.
    pub keys: KeyRing,
    /// The discovered identity provider, if the config names one.
    pub oidc: Option<Arc<Provider>>,
    /// The open-file soft limit, if known.
    pub open_files: Option<u64>,
    pub metrics: Arc<Metrics>,
}

impl EdgeCore {
    pub(crate) fn new(settings: EdgeSettings, parts: Parts, now: Instant, unix: u64) -> EdgeCore {
        let Parts {
            snapshot,
            store,
            audit,
            keys,
            oidc,
            open_files,
            metrics,
        } = parts;
        let (tokens, hostnames, tunnels, certs) = view::views(snapshot);
        EdgeCore {
            now,
            unix,
            next_tick: now + TICK,
            conns: Vec::new(),
            free: Vec::new(),
            dirty: Vec::new(),
            urgent: Vec::new(),
            is_dirty: Vec::new(),
            has_run: Vec::new(),
            shared_turn: false,
            ran: Vec::new(),
            again: Vec::new(),
            routes: HashMap::new(),
            named: HashMap::new(),
            tunnels,
            round_robin: 0,
            tokens,
            certs,
            hostnames,
            store: StoreLink::new(store),
            audit,
            scratch: Vec::with_capacity(CONN_WRITE_BATCH + 64 * 1024),
            stage: vec![0; TLS_READ_STAGE],
            direct_budget: 0,
            keys,
            transfers: Slots::new(SlotLimits::of(&settings.limits)),
            logins: login::Logins::default(),
            console: console::Console::default(),
            oidc,
            worker: None,
            public_url: settings
                .public_url
                .as_deref()
                .map(|u| u.trim_end_matches('/').to_owned())
                .unwrap_or_default(),
            settings,
            slot_ip: Vec::new(),
            per_ip: HashMap::new(),
            login_windows: HashMap::new(),
            resume_windows: HashMap::new(),
            limit_log: HashMap::new(),
            counters: LimitCounters::default(),
            metrics,
            tls_started: Vec::new(),
            generations: Vec::new(),
            open_files,
            denials: Repeats::new(
                MAX_LOG_SUPPRESSION_ENTRIES,
                Duration::from_secs(LIMIT_LOG_INTERVAL_SECS),
            ),
            next_expiry_check: 0,
            loops: loops::Loops::single(),
            slot_home: Vec::new(),
            homes: HashMap::new(),
            arrivals: Vec::new(),
            stopped: false,
            hold_clock: None,
        }
    }

    /// The time of the input being handled, from the driver's clock.
    fn set_time(&mut self, now: Instant, unix: u64) {
        self.now = now;
        self.unix = unix;
    }

    /// Times how long a keystroke stays in this loop (`/metrics`: `interactive_hold_seconds`)
    /// with `clock`, the real time: see `mux::Session::time_holds`.
    pub(crate) fn time_holds(&mut self, clock: fn() -> Instant) {
        self.hold_clock = Some(clock);
    }

    /// The listener is bound on `port`: without a configured `public_url`, the login pages
    /// are at `https://login.localhost[:port]`.
    pub(crate) fn listening(&mut self, port: u16) {
        if self.public_url.is_empty() {
            self.public_url = if port == 443 {
                "https://login.localhost".to_owned()
            } else {
                format!("https://login.localhost:{port}")
            };
        }
    }

    /// The provider the login workers call, if any.
    pub(crate) fn oidc(&self) -> Option<Arc<Provider>> {
        self.oidc.clone()
    }

    /// The login workers are running (`driver`): code exchanges go to them.
    pub(crate) fn set_login_worker(&mut self, worker: login::Worker) {
        self.worker = Some(worker);
    }

    /// A handle on the audit log for a worker loop (`loops.rs`).
    pub(crate) fn audit_sibling(&self) -> Audit {
        self.audit.sibling()
    }

    pub(crate) fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// SIGHUP: the driver re-read the config file (`config::reload`); swap in its
    /// applications, tunnel admins and limits. Open sessions the new policies no longer allow
    /// end (Close 1008 with the reason, an audit line); the others go on. A file that did not pass the start-up checks
    /// changes nothing.
    pub(crate) fn reloaded(&mut self, path: &str, result: Result<Reloaded, config::ConfigError>) {
        match result {
            Ok(new) => {
                for field in &new.needs_restart {
                    warn!(
                        "config {path}: `{field}` changed; it keeps its running value until \
                         the edge restarts"
                    );
                }
                if new.applications.is_empty() {
                    warn!("no applications configured: every request will be refused");
                }
                self.settings.applications = new.applications;
                self.settings.tunnel_admins = new.tunnel_admins;
                self.settings.admins = new.admins;
                self.settings.limits = new.limits;
                self.transfers
                    .set_limits(SlotLimits::of(&self.settings.limits));
                let open_files = self.open_files;
                if let Some(w) = open_files.and_then(|n| self.settings.limits.fit_descriptors(n)) {
                    warn!("{w}");
                }
                self.metrics.config_reload(true);
                self.tell_workers_reload();
                info!("config reloaded from {path}");
                // Policy that bites: open sessions are held to the new policies too.
                let ended = self.recheck_sessions();
                if ended > 0 {
                    info!("{ended} open session(s) ended: the new policies no longer allow them");
                }
            }
            Err(e) => {
                self.metrics.config_reload(false);
                warn!("config reload refused, the running config stays in effect: {e}");
            }
        }
    }

    /// A connection from `peer` is waiting to be accepted: its slot, or `None` when a limit
    /// refuses it (the driver then drops the socket: the offender only, before any TLS).
    /// The driver registers the socket under the slot, then hands it over with
    /// [`EdgeCore::accepted`] (or gives the slot back with [`EdgeCore::abandon`]).
    pub(crate) fn admit(&mut self, peer: SocketAddr, now: Instant, unix: u64) -> Option<usize> {
        self.set_time(now, unix);
        let ip = peer.ip();
        let limits = &self.settings.limits;
        let (total, per_ip) = (limits.max_connections, limits.max_connections_per_ip);
        if self.conns.len() - self.free.len() >= total {
            self.limit_hit(Limit::Connections, ip, || {
                format!("{total} connections open (limits.max_connections)")
            });
            return None;
        }
        if self.per_ip.get(&ip).is_some_and(|&n| n >= per_ip) {
            self.limit_hit(Limit::ConnectionsPerIp, ip, || {
                format!(
                    "{per_ip} connections open from this address \
                     (limits.max_connections_per_ip)"
                )
            });
            return None;
        }
        Some(self.alloc())
    }

    /// The slot [`EdgeCore::admit`] gave could not be used (registering the socket failed).
    pub(crate) fn abandon(&mut self, slot: usize) {
        self.free.push(slot);
    }

    /// The socket of an admitted connection, registered under `slot`: its TLS handshake
    /// starts, bounded by `limits.handshake_timeout_secs`.
    pub(crate) fn accepted(&mut self, slot: usize, sock: Sock, peer: SocketAddr) {
        let ip = peer.ip();
        *self.per_ip.entry(ip).or_default() += 1;
        self.slot_ip[slot] = Some(ip);
        self.tls_started[slot] = Some(self.now);
        let handshake = Duration::from_secs(self.settings.limits.handshake_timeout_secs);
        self.conns[slot] = Some(Conn::Accepting {
            sock,
            acceptor: Box::default(),
            deadline: self.now + handshake,
            peer,
        });
        self.mark(slot);
    }

    /// The socket of `slot` is ready (readable or writable); [`EdgeCore::process`] runs it.
    pub(crate) fn handle_ready(&mut self, slot: usize) {
        self.mark(slot);
    }

    /// Runs every connection that is ready or was touched by another one.
    pub(crate) fn process(&mut self, now: Instant, unix: u64) {
        self.set_time(now, unix);
        for slot in std::mem::take(&mut self.again) {
            self.is_dirty[slot] = false;
            self.mark(slot);
        }
        self.run_dirty();
    }

    /// Whether a tunnel connection that carries more than one stream ran since the last call
    /// (in every pass of the turn, the accept retry's second one too): a loop whose bulk may
    /// delay another stream's keystroke in the next process of the chain (docs/design.md
    /// §2.8, "Yield after a long turn"). Asked once per turn; the answer starts the next afresh.
    pub(crate) fn take_shared_turn(&mut self) -> bool {
        std::mem::take(&mut self.shared_turn)
    }

    /// The store worker or a login worker has answers (the driver's waker fired).
    pub(crate) fn handle_wake(&mut self, now: Instant, unix: u64) {
        self.set_time(now, unix);
        self.take_messages();
        self.store_answers();
        self.worker_results();
    }

    /// When the deadlines are due next; at once if a connection waits for its next pass.
    pub(crate) fn poll_timeout(&self) -> Instant {
        if self.again.is_empty() {
            self.next_tick
        } else {
            self.now
        }
    }

    /// Runs the deadlines once they are due: handshake and request deadlines, idle carriers,
    /// tunnel keepalives, and the expiry of the per-source log and login tables.
    pub(crate) fn handle_timeout(&mut self, now: Instant, unix: u64) {
        self.set_time(now, unix);
        if now < self.next_tick {
            return;
        }
        self.tick(now);
        self.run_dirty();
        self.next_tick = now + TICK;
    }

    fn alloc(&mut self) -> usize {
        if let Some(i) = self.free.pop() {
            return i;
        }
        self.conns.push(None);
        self.is_dirty.push(false);
        self.has_run.push(false);
        self.slot_ip.push(None);
        self.slot_home.push(None);
        self.tls_started.push(None);
        self.generations.push(0);
        self.conns.len() - 1
    }

    fn conn_id(&self, slot: usize) -> ConnId {
        ConnId {
            slot,
            generation: self.generations[slot],
        }
    }

    /// Takes the carrier `id` names out of its slot if it is still that connection and is
    /// parked waiting for a worker; give it back with [`EdgeCore::put_back_carrier`].
    fn take_waiting_carrier(&mut self, id: ConnId) -> Option<Box<Carrier>> {
        if self.generations.get(id.slot) != Some(&id.generation) {
            return None;
        }
        match self.conns[id.slot].take() {
            Some(Conn::Carrier(mut c)) if c.core.is_parked() => {
                c.now = self.now;
                Some(c)
            }
            other => {
                self.conns[id.slot] = other;
                None
            }
        }
    }

    fn put_back_carrier(&mut self, id: ConnId, c: Box<Carrier>) {
        self.conns[id.slot] = Some(Conn::Carrier(c));
        self.mark(id.slot);
    }

    /// Frees a slot whose connection has ended, and its source IP's share.
    fn release(&mut self, slot: usize) {
        self.tls_started[slot] = None;
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        if let Some(ip) = self.slot_ip[slot].take() {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
        self.left(slot);
        self.free.push(slot);
    }

    /// Counts a limit hit by `ip` and logs it, at most once per offender and limit per
    /// [`LIMIT_LOG_INTERVAL_SECS`] (a flood of refusals is one line, not a flood of lines).
    fn limit_hit(&mut self, limit: Limit, ip: IpAddr, what: impl FnOnce() -> String) {
        self.counters.bump(limit);
        self.metrics.error(match limit {
            Limit::Connections | Limit::ConnectionsPerIp => metrics::Error::ConnectionLimit,
            Limit::Handshake => metrics::Error::HandshakeTimeout,
            Limit::Idle => metrics::Error::IdleTimeout,
            Limit::Streams => metrics::Error::ConnectionLimit,
            Limit::PendingTransfers | Limit::PendingPerSource | Limit::LoginRate => {
                metrics::Error::LoginLimit
            }
        });
        let now = self.now;
        let interval = Duration::from_secs(LIMIT_LOG_INTERVAL_SECS);
        let fresh = match self.limit_log.get(&(ip, limit)) {
            Some(&at) => now.duration_since(at) >= interval,
            None => self.limit_log.len() < MAX_LOG_SUPPRESSION_ENTRIES,
        };
        if fresh {
            self.limit_log.insert((ip, limit), now);
            warn!(
                "limit: {ip}: {} (further hits by {ip} are counted, not logged, for \
                 {LIMIT_LOG_INTERVAL_SECS} s)",
                what()
            );
        }
    }

    /// True if `ip` may make one more login request this minute (and counts it). Counted
    /// per source as the login budgets are: an address, or an IPv6 /64.
    fn login_allowed(&mut self, ip: IpAddr, now: Instant) -> bool {
        let max = self.settings.limits.login_attempts_per_minute;
        per_minute(&mut self.login_windows, ip, max, now)
    }

    /// Counts one stream resumption from `ip`; false beyond
    /// `limits::RESUME_ATTEMPTS_PER_MINUTE` this minute.
    fn resume_allowed(&mut self, ip: IpAddr, now: Instant) -> bool {
        let max = crate::limits::RESUME_ATTEMPTS_PER_MINUTE;
        per_minute(&mut self.resume_windows, ip, max, now)
    }

    /// Marks `slot` to run before the others of this round: a carrier whose stream has a few
    /// bytes (a keystroke, an echo) should not wait behind a bulk carrier's batch. Once it has
    /// run in this round, it waits for the next pass like any other.
    fn mark_urgent(&mut self, slot: usize) {
        if slot < self.is_dirty.len() && !self.has_run[slot] {
            self.is_dirty[slot] = true;
            self.urgent.push(slot); // also in `dirty`, maybe: `run_dirty` skips the second
        } else {
            self.mark(slot);
        }
    }

    fn mark(&mut self, slot: usize) {
        if slot < self.is_dirty.len() && !self.is_dirty[slot] {
            self.is_dirty[slot] = true;
            if self.has_run[slot] {
                self.again.push(slot);
            } else {
                self.dirty.push(slot);
            }
        }
    }

    /// Runs the marked connections, each at most once: what a run marks that has run already
    /// waits for the next pass of the loop. Without that bound a bulk stream's carrier and
    /// tunnel, marking each other, kept one call going for as long as data flowed: the loop
    /// polled no other socket, ran no deadline, and judged the tunnel's keepalive by the
    /// clock of the call's start (a tunnel that sent frames throughout was "presumed dead").
    fn run_dirty(&mut self) {
        while let Some(slot) = self.urgent.pop().or_else(|| self.dirty.pop()) {
            if self.has_run[slot] {
                continue; // listed twice (deferred by a pump and marked): it ran already
            }
            self.is_dirty[slot] = false;
            self.has_run[slot] = true;
            self.ran.push(slot);
            let Some(conn) = self.conns[slot].take() else {
                continue;
            };
            let kept = match conn {
                Conn::Accepting {
                    sock,
                    acceptor,
                    deadline,
                    peer,
                } => self.pump_accepting(slot, sock, acceptor, deadline, peer),
                Conn::Carrier(mut c) => {
                    c.now = self.now;
                    self.pump_carrier(slot, c).map(Conn::Carrier)
                }
                Conn::Tunnel(t) => self.pump_tunnel(slot, t).map(|t| {
                    if let Some(live) = &t.live {
                        live.set(&t);
                    }
                    Conn::Tunnel(t)
                }),
                Conn::Admin(a) => self.pump_admin(slot, a).map(Conn::Admin),
                away @ Conn::Away(_) => Some(away),
            };
            match kept {
                Some(c) => {
                    self.observe_handshake(slot, &c);
                    if let Err(c) = self.move_out(slot, c) {
                        self.conns[slot] = Some(c);
                    }
                }
                None => self.release(slot),
            }
        }
        for slot in self.ran.drain(..) {
            self.has_run[slot] = false;
        }
    }

    /// Records the TLS handshake time of `slot` once its handshake has finished.
    fn observe_handshake(&mut self, slot: usize, c: &Conn) {
        let done = match c {
            Conn::Accepting { .. } => false,
            Conn::Carrier(c) => !c.tls.tls.is_handshaking(),
            Conn::Tunnel(t) => !t.tls.tls.is_handshaking(),
            Conn::Admin(a) => !a.tls.tls.is_handshaking(),
            Conn::Away(_) => false,
        };
        if done {
            if let Some(at) = self.tls_started[slot].take() {
                self.metrics
                    .handshake(self.now.saturating_duration_since(at));
            }
        }
    }

    fn pump_accepting(
        &mut self,
        slot: usize,
        mut sock: Sock,
        mut acceptor: Box<Acceptor>,
        deadline: Instant,
        peer: SocketAddr,
    ) -> Option<Conn> {
        loop {
            match acceptor.read_tls(&mut sock) {
                Ok(0) => {
                    return None;
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("{peer}: {e}");
                    return None;
                }
            }
            match acceptor.accept() {
                Ok(None) => continue,
                Ok(Some(accepted)) => {
                    let hello = accepted.client_hello();
                    let is_tunnel = hello
                        .alpn()
                        .is_some_and(|mut protos| protos.any(|p| p == mux::ALPN));
                    let is_admin = !is_tunnel
                        && hello
                            .alpn()
                            .is_some_and(|mut protos| protos.any(|p| p == admin::ALPN));
                    let sni = hello.server_name().unwrap_or("").to_ascii_lowercase();
                    let config: Arc<ServerConfig> = if is_tunnel || is_admin {
                        self.settings.tunnel_tls.clone()
                    } else {
                        self.settings.carrier_tls.clone()
                    };
                    return match accepted.into_connection(config) {
                        Ok(conn) => {
                            let tls = TlsConn::new(sock, conn);
                            self.mark(slot);
                            if is_admin {
                                Some(Conn::Admin(Box::new(admin::Admin::new(
                                    tls, peer, deadline, self.now,
                                ))))
                            } else if is_tunnel {
                                let mut mux = EdgeSession::new(self.now);
                                if let Some(clock) = self.hold_clock {
                                    mux.time_holds(clock);
                                }
                                Some(Conn::Tunnel(Box::new(Tunnel {
                                    tls,
                                    peer,
                                    mux,
                                    cert: CertificateDer::from(Vec::new()),
                                    cert_fp: String::new(),
                                    hostname: None,
                                    named: None,
                                    opened: self.unix,
                                    connector: String::new(),
                                    ha_index: 0,
                                    resumable: false,
                                    bastion: false,
                                    carriers: IdMap::default(),
                                    closing: false,
                                    linger_until: None,
                                    next_timeout: self.now,
                                    deadline: Some(deadline),
                                    registering: None,
                                    moving: false,
                                    live: None,
                                })))
                            } else {
                                Some(Conn::Carrier(Box::new(Carrier {
                                    tls,
                                    peer,
                                    sni,
                                    core: crate::proto::carrier::Carrier::new(deadline),
                                    finished: false,
                                    service_token: None,
                                    last_active: self.now,
                                    session: None,
                                    now: self.now,
                                    moving: None,
                                })))
                            }
                        }
                        Err((e, mut alert)) => {
                            info!("{peer}: TLS refused: {e}");
                            self.metrics.error(metrics::Error::Tls);
                            let _ = alert.write_all(&mut sock);
                            None
                        }
                    };
                }
                Err((e, mut alert)) => {
                    info!("{peer}: TLS refused: {e}");
                    self.metrics.error(metrics::Error::Tls);
                    let _ = alert.write_all(&mut sock);
                    return None;
                }
            }
        }
        Some(Conn::Accepting {
            sock,
            acceptor,
            deadline,
            peer,
        })
    }

    // ---------------------------------------------------------------- time

    fn tick(&mut self, now: Instant) {
        if self.unix >= self.next_expiry_check {
            self.next_expiry_check = self.unix + 24 * 3600;
            for warning in self.tokens.expiring(self.unix, EXPIRY_WARNING_SECS) {
                warn!("{warning}");
            }
        }
        let idle = match self.settings.limits.idle_timeout_secs {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        };
        // Most configs bound no session: then no carrier's application is looked up each tick.
        let bounded = self
            .settings
            .applications
            .iter()
            .any(|a| a.max_session_duration.is_some());
        for slot in 0..self.conns.len() {
            let expired = match &mut self.conns[slot] {
                Some(Conn::Accepting { deadline, .. }) => now >= *deadline,
                Some(Conn::Carrier(c)) => {
                    if let (Some(idle), Some(_)) = (idle, c.core.link()) {
                        if now.duration_since(c.last_active) >= idle {
                            self.close_idle(slot);
                            continue;
                        }
                    }
                    let over = bounded
                        && c.session.as_ref().is_some_and(|s| {
                            s.ended_by.is_none()
                                && self
                                    .settings
                                    .application(&s.hostname)
                                    .and_then(|a| a.max_session_duration)
                                    .is_some_and(|max| {
                                        now.saturating_duration_since(s.started)
                                            >= Duration::from_secs(max)
                                    })
                        });
                    if over {
                        self.end_session(
                            slot,
                            ws::close::POLICY,
                            "the session reached its application's max_session_duration",
                        );
                        continue;
                    }
                    c.core.deadline().is_some_and(|d| now >= d)
                }
                Some(Conn::Tunnel(t)) if t.deadline.is_some_and(|d| now >= d) => true,
                Some(Conn::Tunnel(t)) if t.linger_until.is_some_and(|d| now >= d) => true,
                Some(Conn::Tunnel(t)) if now >= t.next_timeout => match t.mux.handle_timeout(now) {
                    Ok(next) => {
                        t.next_timeout = next;
                        self.mark(slot);
                        false
                    }
                    Err(e) => {
                        warn!("tunnel {}: {e}", t.peer);
                        self.metrics.error(metrics::Error::Keepalive);
                        true
                    }
                },
                Some(Conn::Tunnel(_)) => false,
                Some(Conn::Admin(a)) => now >= a.deadline,
                Some(Conn::Away(_)) | None => false,
            };
            if !expired {
                continue;
            }
            let handshake = self.settings.limits.handshake_timeout_secs;
            let timed_out = |what: &'static str| {
                move || format!("{what} within {handshake} s (limits.handshake_timeout_secs)")
            };
            match self.conns[slot].take() {
                Some(Conn::Accepting { peer, .. }) => {
                    debug!("{peer}: handshake timed out");
                    self.limit_hit(Limit::Handshake, peer.ip(), timed_out("no TLS handshake"));
                }
                Some(Conn::Carrier(c)) => {
                    // A closing carrier's grace ran out: not a limit, just the end.
                    if c.core.awaiting_request() {
                        debug!("carrier {}: no request before the deadline", c.peer);
                        self.limit_hit(Limit::Handshake, c.peer.ip(), timed_out("no request head"));
                    }
                    self.end_carrier(slot, c, "timeout");
                }
                Some(Conn::Admin(a)) => {
                    debug!("admin {}: no whole request before the deadline", a.peer);
                    self.end_admin(a);
                }
                Some(Conn::Tunnel(t)) => {
                    if t.deadline.is_some_and(|d| now >= d) {
                        debug!("tunnel {}: no registration before the deadline", t.peer);
                        self.limit_hit(Limit::Handshake, t.peer.ip(), timed_out("no REGISTER"));
                        self.end_tunnel(slot, t, "no registration before the deadline");
                    } else {
                        let why = if t.linger_until.is_some() {
                            "closed after error"
                        } else {
                            "timed out"
                        };
                        self.end_tunnel(slot, t, why);
                    }
                }
                Some(Conn::Away(_)) | None => {}
            }
            self.release(slot);
        }
        if self.loops.me() == 0 {
            // Loop 0 counts every loop's connections (by their stubs) and keeps the chart.
            self.count_connections();
            self.console_tick();
        }
        self.count_own_connections();
        self.record_repeated_denials(Some(now));
        // Forget offenders whose log interval or login minute is over (bounded maps).
        let interval = Duration::from_secs(LIMIT_LOG_INTERVAL_SECS);
        self.limit_log
            .retain(|_, at| now.duration_since(*at) < interval);
        self.login_windows
            .retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        self.resume_windows
            .retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
    }

    /// Sets the connection and stream gauges from what the slots hold (once a second).
    fn count_connections(&self) {
        let (mut carriers, mut tunnels, mut ready, mut streams) = (0, 0, 0, 0);
        for conn in self.conns.iter().flatten() {
            match conn {
                Conn::Carrier(c) => {
                    carriers += 1;
                    if c.core.link().is_some() {
                        streams += 1;
                    }
                }
                Conn::Tunnel(t) => {
                    tunnels += 1;
                    // Registered: past its registration deadline, and not on its way out.
                    if t.deadline.is_none() && !t.closing && !t.mux.is_going_away() {
                        ready += 1;
                    }
                }
                Conn::Away(a) => match a.as_ref() {
                    loops::Away::Tunnel(r) => {
                        tunnels += 1;
                        if !r.closing && r.live.usable() {
                            ready += 1;
                        }
                    }
                    loops::Away::Carrier(_) => {
                        carriers += 1;
                        streams += 1;
                    }
                },
                Conn::Accepting { .. } | Conn::Admin(_) => {}
            }
        }
        self.metrics.set_connections(carriers, tunnels, ready);
        self.metrics.set_store_up(self.store.up());
        self.metrics.set_streams_active(streams);
    }

    /// Per loop (`--workers`): the tunnel connections and carriers this loop serves itself,
    /// not the stubs of those that moved away.
    fn count_own_connections(&self) {
        let (mut tunnels, mut carriers) = (0, 0);
        for conn in self.conns.iter().flatten() {
            match conn {
                Conn::Tunnel(_) => tunnels += 1,
                Conn::Carrier(_) => carriers += 1,
                Conn::Away(_) | Conn::Accepting { .. } | Conn::Admin(_) => {}
            }
        }
        self.metrics
            .set_loop_connections(self.loops.me(), tunnels, carriers);
    }

    /// Which event loop this core runs (0: the control loop).
    pub(crate) fn loop_index(&self) -> usize {
        self.loops.me()
    }

    /// Closes a streaming carrier that moved no byte for `limits.idle_timeout_secs`: its
    /// stream is reset, the client gets Close 1008, and the connection ends after a grace.
    fn close_idle(&mut self, slot: usize) {
        let Some(Conn::Carrier(c)) = self.conns[slot].as_ref() else {
            return;
        };
        let peer = c.peer;
        if !self.end_session(slot, ws::close::POLICY, "idle timeout") {
            return;
        }
        let secs = self.settings.limits.idle_timeout_secs;
        self.limit_hit(Limit::Idle, peer.ip(), || {
            format!("carrier {peer} moved no byte for {secs} s (limits.idle_timeout_secs)")
        });
    }

    /// SIGTERM: GOAWAY to every tunnel connection, close_notify to every carrier, and the
    /// denials counted but not yet written go to the audit log.
    pub(crate) fn shutdown(&mut self, now: Instant, unix: u64) {
        self.set_time(now, unix);
        self.tell_workers_shutdown();
        for slot in 0..self.conns.len() {
            match self.conns[slot].take() {
                Some(Conn::Tunnel(mut t)) => {
                    t.mux.send_goaway("edge shutting down");
                    self.scratch.clear();
                    t.mux.poll_transmit(&mut self.scratch, CONN_WRITE_BATCH);
                    t.tls.send(&self.scratch);
                    t.tls.close();
                }
                Some(Conn::Carrier(mut c)) => {
                    self.session_ended(&mut c, "edge shutting down");
                    c.tls.close();
                }
                _ => {}
            }
        }
        self.record_repeated_denials(None);
        match self.loops.me() {
            0 => info!("limits hit since start: {}", self.counters),
            // A worker's own: its idle timeouts and its streams' refusals.
            me => info!("loop {me}: limits hit since start: {}", self.counters),
        }
    }

    /// Writes what [`EdgeCore::deny`] counted instead of recording, for sources whose interval
    /// is over (all of them at shutdown, `now = None`).
    fn record_repeated_denials(&mut self, now: Option<Instant>) {
        let (counted, overflow) = self.denials.expire(now);
        let record = |peer: String, reason: &str, n: u64| {
            info!("denied {n} more request(s) from {peer} ({reason}) in the last interval");
            let mut fields = serde_json::Map::new();
            fields.insert("peer".into(), peer.into());
            fields.insert("decision".into(), "deny".into());
            fields.insert("reason".into(), reason.into());
            fields.insert("repeated".into(), n.into());
            self.audit.record("access", fields);
        };
        for ((ip, why), n) in counted {
            record(ip.to_string(), why.reason(), n);
        }
        if overflow > 0 {
            record(
                "many sources".into(),
                "beyond the suppression table",
                overflow,
            );
        }
    }
}

use crate::edge::valid_hostname;

/// Counts one request from `ip` (an IPv6 /64 as one source) in its current minute; false once
/// the minute has seen more than `max`.
fn per_minute(
    windows: &mut HashMap<IpAddr, (Instant, u32)>,
    ip: IpAddr,
    max: u32,
    now: Instant,
) -> bool {
    let source = crate::proto::token_transfer::source_of(ip);
    let w = windows.entry(source).or_insert((now, 0));
    if now.duration_since(w.0) >= Duration::from_secs(60) {
        *w = (now, 0);
    }
    w.1 = w.1.saturating_add(1);
    w.1 <= max
}
