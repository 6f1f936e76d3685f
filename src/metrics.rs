//! Counters for `--metrics ADDR`: a registry of atomics the event loop bumps, and what the
//! server thread (`io::metrics_server`) answers: it renders it as Prometheus text (format 0.0.4) at `GET /metrics` and answers
//! readiness at `GET /ready` (cloudflared's shape).
//!
//! ```text
//!  event loop ──(Relaxed atomic adds)──▶ Arc<Metrics> ◀──(loads)── metrics thread ◀── scraper
//! ```
//!
//! Label values come from fixed enums ([`Auth`], [`Error`], [`Direction`]), never from what a
//! peer sent: no hostnames of unauthenticated requests, no token names, no secrets, and the
//! number of series is a constant.
//!
//! The server answers one request at a time, each within [`REQUEST_DEADLINE`] and at most
//! [`MAX_REQUEST`] bytes of head; anything but `GET /metrics` and `GET /ready` is a 404 (405
//! for another method). A slow scraper delays the next one by at most the deadline; it never
//! touches the event loop.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Largest request head the metrics server reads.
pub const MAX_REQUEST: usize = 4096;
/// Time one request may take, from accept to the last byte of the answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Upper bounds (seconds) of the TLS handshake histogram.
pub const HANDSHAKE_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Upper bounds (seconds) of the interactive hold histogram: microseconds when the loop serves
/// a keystroke first, milliseconds when it waits behind a bulk batch.
pub const HOLD_BUCKETS: [f64; 10] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1,
];

/// A Prometheus histogram of durations: one atomic per bucket (summed into cumulative counts
/// when rendered), a count and a sum in nanoseconds (holds are a few µs each: microseconds
/// would lose a tenth of them).
struct Histogram {
    bounds: &'static [f64; 10],
    buckets: [AtomicU64; 10],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64; 10]) -> Self {
        Histogram {
            bounds,
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Which process this registry describes: it picks the metric prefix and which families exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Edge,
    Tunnel,
}

impl Role {
    fn prefix(self) -> &'static str {
        match self {
            Role::Edge => "postern_edge",
            Role::Tunnel => "postern_tunnel",
        }
    }
}

/// Which way stream bytes moved. The same names on both sides: `client_to_origin` is what the
/// ssh client sent toward sshd (the edge reads it from the carrier, the origin writes it to the
/// service).
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    ClientToOrigin,
    OriginToClient,
}

/// An access decision at the edge and its reason (a fixed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Auth {
    /// Allowed: a service token matched a policy.
    ServiceToken,
    /// Allowed: an app token (browser login) matched a policy.
    AppToken,
    /// Allowed: a bypass policy, no credentials.
    Bypass,
    /// Denied: the Host header does not match the TLS server name.
    HostMismatch,
    /// Denied: no application for the hostname.
    NoApplication,
    /// Denied: unknown service token id or wrong secret.
    BadServiceToken,
    /// Denied: app token invalid or expired.
    BadAppToken,
    /// Denied: no credentials and no bypass.
    NoCredentials,
    /// Denied: the policies refused this identity.
    Policy,
    /// Denied: no tunnel registered the hostname.
    NotRegistered,
    /// Denied: the tunnel connection had no room for another stream.
    TunnelBusy,
    /// Denied: a stream resumption the edge cannot route (bad header, its origin connector
    /// not connected here, or over the per-source rate).
    Resume,
    /// Denied: a jump-host destination the application's allow-list does not admit, or one
    /// the tunnel cannot take (not in bastion mode).
    Destination,
}

impl Auth {
    const ALL: [Auth; 13] = [
        Auth::ServiceToken,
        Auth::AppToken,
        Auth::Bypass,
        Auth::HostMismatch,
        Auth::NoApplication,
        Auth::BadServiceToken,
        Auth::BadAppToken,
        Auth::NoCredentials,
        Auth::Policy,
        Auth::NotRegistered,
        Auth::TunnelBusy,
        Auth::Resume,
        Auth::Destination,
    ];

    /// The reason label (`host_mismatch`, `no_credentials`, …), as in `/metrics`.
    pub fn reason(self) -> &'static str {
        self.labels().1
    }

    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Auth::ServiceToken => ("allow", "service_token"),
            Auth::AppToken => ("allow", "app_token"),
            Auth::Bypass => ("allow", "bypass"),
            Auth::HostMismatch => ("deny", "host_mismatch"),
            Auth::NoApplication => ("deny", "no_application"),
            Auth::BadServiceToken => ("deny", "bad_service_token"),
            Auth::BadAppToken => ("deny", "bad_app_token"),
            Auth::NoCredentials => ("deny", "no_credentials"),
            Auth::Policy => ("deny", "policy"),
            Auth::NotRegistered => ("deny", "not_registered"),
            Auth::TunnelBusy => ("deny", "tunnel_busy"),
            Auth::Resume => ("deny", "resume"),
            Auth::Destination => ("deny", "destination"),
        }
    }
}

/// Why a connection or stream failed (a fixed set; each belongs to the edge, the origin or both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// TLS refused or failed (handshake, certificate, decryption).
    Tls,
    /// A client sent a malformed HTTP request head (edge).
    BadRequest,
    /// A client broke the WebSocket protocol (edge).
    WebSocket,
    /// A tunnel peer broke the mux protocol.
    TunnelProtocol,
    /// The edge refused a registration.
    RegistrationRefused,
    /// A connection did not finish its handshake in time (edge).
    HandshakeTimeout,
    /// A streaming carrier moved no byte for the idle timeout (edge).
    IdleTimeout,
    /// A connection was closed at accept by a connection limit (edge).
    ConnectionLimit,
    /// A login request was over the rate limit, or logins were full (edge).
    LoginLimit,
    /// The origin could not connect to the edge (or its proxy).
    Connect,
    /// The keepalive found a tunnel connection dead.
    Keepalive,
    /// The edge sent an error frame (origin).
    EdgeError,
    /// The origin could not reach its local service.
    ServiceConnect,
}

impl Error {
    const ALL: [Error; 13] = [
        Error::Tls,
        Error::BadRequest,
        Error::WebSocket,
        Error::TunnelProtocol,
        Error::RegistrationRefused,
        Error::HandshakeTimeout,
        Error::IdleTimeout,
        Error::ConnectionLimit,
        Error::LoginLimit,
        Error::Connect,
        Error::Keepalive,
        Error::EdgeError,
        Error::ServiceConnect,
    ];

    fn label(self) -> &'static str {
        match self {
            Error::Tls => "tls",
            Error::BadRequest => "bad_request",
            Error::WebSocket => "websocket",
            Error::TunnelProtocol => "tunnel_protocol",
            Error::RegistrationRefused => "registration_refused",
            Error::HandshakeTimeout => "handshake_timeout",
            Error::IdleTimeout => "idle_timeout",
            Error::ConnectionLimit => "connection_limit",
            Error::LoginLimit => "login_limit",
            Error::Connect => "connect",
            Error::Keepalive => "keepalive",
            Error::EdgeError => "edge_error",
            Error::ServiceConnect => "service_connect",
        }
    }

    fn applies_to(self, role: Role) -> bool {
        match self {
            Error::Tls | Error::TunnelProtocol | Error::RegistrationRefused | Error::Keepalive => {
                true
            }
            Error::BadRequest
            | Error::WebSocket
            | Error::HandshakeTimeout
            | Error::IdleTimeout
            | Error::ConnectionLimit
            | Error::LoginLimit => role == Role::Edge,
            Error::Connect | Error::EdgeError | Error::ServiceConnect => role == Role::Tunnel,
        }
    }
}

/// The registry. Every field is an atomic updated with `Relaxed` ordering: each value is
/// independent, and a scrape that sees one counter a moment before another is still correct.
pub struct Metrics {
    role: Role,
    /// The UUID `/ready` reports: the origin's connector id, or the edge's instance id.
    connector_id: String,
    /// Edge: open carrier connections. Origin: unused.
    carriers: AtomicU64,
    /// Edge: open tunnel connections. Origin: live connections to the edge.
    tunnels: AtomicU64,
    /// Tunnel connections that are registered (what `/ready` counts).
    ready: AtomicU64,
    /// Edge: where its listener is bound, once it is (`/ready` says so; tests and operators
    /// wait on it instead of a log line).
    listening: OnceLock<SocketAddr>,
    /// Edge: 1 while its state store answers, 0 while the store worker holds it down (an
    /// unreachable etcd): `/ready` then says `"store": "unreachable"`.
    store_up: AtomicU64,
    streams_active: AtomicU64,
    streams_total: AtomicU64,
    bytes: [AtomicU64; 2],
    auth: [AtomicU64; Auth::ALL.len()],
    errors: [AtomicU64; Error::ALL.len()],
    reconnects: AtomicU64,
    /// Origin: resumable streams whose client is gone, waiting for it (gauge).
    streams_detached: AtomicU64,
    /// Origin: streams resumed on a new path, refused resumes, and bytes replayed.
    resumes: AtomicU64,
    resume_refusals: AtomicU64,
    replayed_bytes: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_error: AtomicU64,
    handshakes: Histogram,
    /// Time a few bytes for a stream waited in this process (see [`Metrics::held`]).
    holds: Histogram,
    /// Origin: its edges (`--edge`), each with its live and registered connections.
    edges: OnceLock<Vec<EdgeGauge>>,
    /// Edge: its event loops (`--workers`), loop 0 first.
    loops: OnceLock<Vec<LoopGauge>>,
}

/// One event loop of the edge: the connections it serves and the time it spent working.
struct LoopGauge {
    tunnels: AtomicU64,
    carriers: AtomicU64,
    /// Time between `epoll_wait` returning and the next call, summed, in nanoseconds (wall
    /// time: it includes time the thread was descheduled).
    busy_nanos: AtomicU64,
}

/// One edge of an origin's pool: its connections, live and registered.
struct EdgeGauge {
    addr: String,
    live: AtomicU64,
    ready: AtomicU64,
    /// The smallest round trip of its live connections, in microseconds; 0 when none is
    /// measured.
    rtt_micros: AtomicU64,
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn new(role: Role, connector_id: [u8; 16]) -> Arc<Metrics> {
        Arc::new(Metrics {
            role,
            connector_id: uuid(connector_id),
            carriers: AtomicU64::new(0),
            tunnels: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            listening: OnceLock::new(),
            store_up: AtomicU64::new(1),
            streams_active: AtomicU64::new(0),
            streams_total: AtomicU64::new(0),
            bytes: Default::default(),
            auth: Default::default(),
            errors: Default::default(),
            reconnects: AtomicU64::new(0),
            streams_detached: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            resume_refusals: AtomicU64::new(0),
            replayed_bytes: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_error: AtomicU64::new(0),
            handshakes: Histogram::new(&HANDSHAKE_BUCKETS),
            holds: Histogram::new(&HOLD_BUCKETS),
            edges: OnceLock::new(),
            loops: OnceLock::new(),
        })
    }

    pub fn connector_id(&self) -> &str {
        &self.connector_id
    }

    /// Sets the connection gauges (recounted by the loop: a gauge that is set cannot drift).
    pub fn set_connections(&self, carriers: usize, tunnels: usize, ready: usize) {
        self.carriers.store(carriers as u64, Relaxed);
        self.tunnels.store(tunnels as u64, Relaxed);
        self.ready.store(ready as u64, Relaxed);
    }

    /// Origin: names its edges (once; a second call changes nothing).
    pub fn set_edges(&self, addrs: &[String]) {
        let gauges = addrs.iter().map(|a| EdgeGauge {
            addr: a.clone(),
            live: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            rtt_micros: AtomicU64::new(0),
        });
        let _ = self.edges.set(gauges.collect());
    }

    /// Origin: edge `i`'s live and registered connections, and the smallest round trip
    /// measured on them in microseconds, as `mux::Session::rtt_micros` gives it (recounted by
    /// the loop).
    pub fn set_edge_connections(&self, i: usize, live: usize, ready: usize, rtt: Option<u64>) {
        if let Some(g) = self.edges.get().and_then(|e| e.get(i)) {
            g.live.store(live as u64, Relaxed);
            g.ready.store(ready as u64, Relaxed);
            g.rtt_micros.store(rtt.unwrap_or(0), Relaxed);
        }
    }

    /// Edge: names its `n` event loops (once; a second call changes nothing).
    pub fn set_loops(&self, n: usize) {
        let gauges = (0..n).map(|_| LoopGauge {
            tunnels: AtomicU64::new(0),
            carriers: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
        });
        let _ = self.loops.set(gauges.collect());
    }

    /// Edge: the tunnel connections and carriers loop `i` serves itself (recounted by that
    /// loop on its tick; a connection that moved counts on the loop it moved to, so the loops
    /// add up to the totals once no connection is on its way).
    pub fn set_loop_connections(&self, i: usize, tunnels: usize, carriers: usize) {
        if let Some(g) = self.loops.get().and_then(|l| l.get(i)) {
            g.tunnels.store(tunnels as u64, Relaxed);
            g.carriers.store(carriers as u64, Relaxed);
        }
    }

    /// Edge: loop `i` spent `busy` since `epoll_wait` returned (one relaxed addition per pass
    /// of the loop).
    pub fn add_loop_busy(&self, i: usize, busy: Duration) {
        if let Some(g) = self.loops.get().and_then(|l| l.get(i)) {
            let nanos = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
            g.busy_nanos.fetch_add(nanos, Relaxed);
        }
    }

    /// Edge: records the listener's bound address (once; a second call changes nothing).
    pub fn set_listening(&self, addr: SocketAddr) {
        let _ = self.listening.set(addr);
    }

    /// Edge: whether its state store answers (the store worker's circuit breaker).
    pub fn set_store_up(&self, up: bool) {
        self.store_up.store(u64::from(up), Relaxed);
    }

    pub fn set_streams_active(&self, n: usize) {
        self.streams_active.store(n as u64, Relaxed);
    }

    /// Origin: resumable streams detached now.
    pub fn set_streams_detached(&self, n: usize) {
        self.streams_detached.store(n as u64, Relaxed);
    }

    /// Origin: a stream was resumed, replaying `replayed` bytes.
    pub fn resumed(&self, replayed: u64) {
        self.resumes.fetch_add(1, Relaxed);
        self.replayed_bytes.fetch_add(replayed, Relaxed);
    }

    /// Origin: a resume was refused (unknown stream, wrong secret, identity, offset).
    pub fn resume_refused(&self) {
        self.resume_refusals.fetch_add(1, Relaxed);
    }

    pub fn stream_opened(&self) {
        self.streams_total.fetch_add(1, Relaxed);
    }

    pub fn bytes(&self, direction: Direction, n: usize) {
        self.bytes[direction as usize].fetch_add(n as u64, Relaxed);
    }

    pub fn auth(&self, decision: Auth) {
        self.auth[decision as usize].fetch_add(1, Relaxed);
    }

    pub fn error(&self, reason: Error) {
        self.errors[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn reconnect(&self) {
        self.reconnects.fetch_add(1, Relaxed);
    }

    pub fn config_reload(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_error
        };
        c.fetch_add(1, Relaxed);
    }

    pub fn ready_connections(&self) -> u64 {
        self.ready.load(Relaxed)
    }

    /// Records one completed TLS handshake that took `took`.
    pub fn handshake(&self, took: Duration) {
        self.handshakes.observe(took);
    }

    /// Records how long a few bytes of a stream (a keystroke, its echo: at most
    /// `limits::URGENT_READABLE` waiting) stayed in this process: from their DATA frame parsed
    /// to their being taken for the client's or the service's socket
    /// (`mux::Session::delivered`), or from their being read from that socket to their DATA
    /// frame built (`mux::Session::framed_holds`). A full socket or a closed window on the
    /// way counts too: the bytes waited here for it.
    pub fn held(&self, took: Duration) {
        self.holds.observe(took);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let p = self.role.prefix();
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP {p}_build_info Build information; the value is always 1."
        );
        let _ = writeln!(out, "# TYPE {p}_build_info gauge");
        let _ = writeln!(
            out,
            "{p}_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );

        let load = |a: &AtomicU64| a.load(Relaxed);
        let mut put = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {p}_{name} {help}");
            let _ = writeln!(out, "# TYPE {p}_{name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{p}_{name}{labels} {v}");
            }
        };
        match self.role {
            Role::Edge => put(
                "connections",
                "gauge",
                "Open connections by kind.",
                &[
                    ("{kind=\"carrier\"}".into(), load(&self.carriers)),
                    ("{kind=\"tunnel\"}".into(), load(&self.tunnels)),
                ],
            ),
            Role::Tunnel => put(
                "connections",
                "gauge",
                "Live connections to the edge.",
                &[(String::new(), load(&self.tunnels))],
            ),
        }
        put(
            "ready_connections",
            "gauge",
            "Registered tunnel connections.",
            &[(String::new(), load(&self.ready))],
        );
        if self.role == Role::Edge {
            put(
                "store_up",
                "gauge",
                "1 while the edge's state store answers, 0 while it is unreachable.",
                &[(String::new(), load(&self.store_up))],
            );
        }
        if let Some(edges) = self.edges.get() {
            let by_edge = |f: fn(&EdgeGauge) -> &AtomicU64| -> Vec<(String, u64)> {
                let label = |g: &EdgeGauge| format!("{{edge=\"{}\"}}", label_value(&g.addr));
                edges.iter().map(|g| (label(g), load(f(g)))).collect()
            };
            put(
                "edge_connections",
                "gauge",
                "Live connections to each edge of the pool.",
                &by_edge(|g| &g.live),
            );
            put(
                "edge_ready_connections",
                "gauge",
                "Registered connections to each edge of the pool.",
                &by_edge(|g| &g.ready),
            );
        }
        put(
            "streams_active",
            "gauge",
            "Streams open now.",
            &[(String::new(), load(&self.streams_active))],
        );
        put(
            "streams_total",
            "counter",
            "Streams opened since start.",
            &[(String::new(), load(&self.streams_total))],
        );
        put(
            "bytes_total",
            "counter",
            "Stream payload bytes by direction.",
            &[
                (
                    "{direction=\"client_to_origin\"}".into(),
                    load(&self.bytes[Direction::ClientToOrigin as usize]),
                ),
                (
                    "{direction=\"origin_to_client\"}".into(),
                    load(&self.bytes[Direction::OriginToClient as usize]),
                ),
            ],
        );
        if self.role == Role::Edge {
            let samples: Vec<(String, u64)> = Auth::ALL
                .iter()
                .map(|&a| {
                    let (decision, reason) = a.labels();
                    (
                        format!("{{decision=\"{decision}\",reason=\"{reason}\"}}"),
                        load(&self.auth[a as usize]),
                    )
                })
                .collect();
            put(
                "auth_decisions_total",
                "counter",
                "Access decisions on carrier requests.",
                &samples,
            );
        }
        let samples: Vec<(String, u64)> = Error::ALL
            .iter()
            .filter(|e| e.applies_to(self.role))
            .map(|&e| {
                (
                    format!("{{reason=\"{}\"}}", e.label()),
                    load(&self.errors[e as usize]),
                )
            })
            .collect();
        put("errors_total", "counter", "Errors by reason.", &samples);
        match self.role {
            Role::Tunnel => {
                put(
                    "reconnects_total",
                    "counter",
                    "Connection attempts to the edge after a lost or failed one.",
                    &[(String::new(), load(&self.reconnects))],
                );
                put(
                    "streams_detached",
                    "gauge",
                    "Resumable streams whose client is gone, kept for the resume window.",
                    &[(String::new(), load(&self.streams_detached))],
                );
                put(
                    "resumes_total",
                    "counter",
                    "Streams resumed by their client on a new path.",
                    &[(String::new(), load(&self.resumes))],
                );
                put(
                    "resume_refusals_total",
                    "counter",
                    "Resumes refused (unknown stream or wrong secret, other identity, offset).",
                    &[(String::new(), load(&self.resume_refusals))],
                );
                put(
                    "replayed_bytes_total",
                    "counter",
                    "Bytes sent again to clients after a resume.",
                    &[(String::new(), load(&self.replayed_bytes))],
                );
            }
            Role::Edge => put(
                "config_reloads_total",
                "counter",
                "Config reloads on SIGHUP by result.",
                &[
                    ("{result=\"ok\"}".into(), load(&self.reloads_ok)),
                    ("{result=\"error\"}".into(), load(&self.reloads_error)),
                ],
            ),
        }
        self.handshakes.render(
            &mut out,
            &format!("{p}_tls_handshake_seconds"),
            "Time from TCP connect or accept to a finished TLS handshake.",
        );
        self.holds.render(
            &mut out,
            &format!("{p}_interactive_hold_seconds"),
            "Time a few bytes of a stream (at most 4 KiB waiting: a keystroke, its echo) stayed \
             in this process: from their frame parsed to their being taken for the client's or \
             the service's socket, or from their being read from it to their frame built \
             (including any time a full socket or the peer's window held them back).",
        );
        if let Some(loops) = self.loops.get() {
            let _ = writeln!(
                out,
                "# HELP {p}_loop_connections Connections each event loop serves (--workers); \
                 a connection that moved to a loop counts there."
            );
            let _ = writeln!(out, "# TYPE {p}_loop_connections gauge");
            for (i, g) in loops.iter().enumerate() {
                for (kind, v) in [("tunnel", &g.tunnels), ("carrier", &g.carriers)] {
                    let _ = writeln!(
                        out,
                        "{p}_loop_connections{{loop=\"{i}\",kind=\"{kind}\"}} {}",
                        load(v)
                    );
                }
            }
            let _ = writeln!(
                out,
                "# HELP {p}_loop_busy_seconds_total Wall time each event loop spent outside \
                 its wait for events (working, or runnable but waiting for a core)."
            );
            let _ = writeln!(out, "# TYPE {p}_loop_busy_seconds_total counter");
            for (i, g) in loops.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{p}_loop_busy_seconds_total{{loop=\"{i}\"}} {}",
                    load(&g.busy_nanos) as f64 / 1e9
                );
            }
        }
        if let Some(edges) = self.edges.get() {
            let _ = writeln!(
                out,
                "# HELP {p}_edge_rtt_seconds The smallest round trip measured (tunnel PING to \
                 PONG) on the live connections to each edge; absent until one is measured."
            );
            let _ = writeln!(out, "# TYPE {p}_edge_rtt_seconds gauge");
            for g in edges {
                let us = load(&g.rtt_micros);
                if us > 0 {
                    let _ = writeln!(
                        out,
                        "{p}_edge_rtt_seconds{{edge=\"{}\"}} {}",
                        label_value(&g.addr),
                        us as f64 / 1e6
                    );
                }
            }
        }
        out
    }

    /// `/ready`: (status, JSON body) as cloudflared answers it. The edge adds `listening`: its
    /// bound address, `null` until the listener is bound.
    pub fn ready(&self) -> (u16, String) {
        let n = self.ready_connections();
        let status = if n > 0 { 200 } else { 503 };
        let mut body = serde_json::json!({
            "status": status,
            "readyConnections": n,
            "connectorId": self.connector_id,
        });
        if let Some(edges) = self.edges.get() {
            let each = |g: &EdgeGauge| {
                serde_json::json!({
                    "edge": g.addr,
                    "connections": g.live.load(Relaxed),
                    "readyConnections": g.ready.load(Relaxed),
                })
            };
            body["edges"] = edges.iter().map(each).collect();
        }
        if self.role == Role::Edge {
            body["listening"] = match self.listening.get() {
                Some(addr) => serde_json::Value::String(addr.to_string()),
                None => serde_json::Value::Null,
            };
            // Degraded, not down: live sessions, known tokens and routes still work, so a
            // balancer keeps the edge in rotation (the status stays as the tunnels make it);
            // new logins and what needs the store fail with a clear message meanwhile.
            let up = self.store_up.load(Relaxed) == 1;
            body["store"] = (if up { "up" } else { "unreachable" }).into();
            body["degraded"] = (!up).into();
        }
        (status, body.to_string())
    }
}

/// Formats 16 bytes as a UUID (8-4-4-4-12 hex digits), setting the version-4 and variant bits.
pub fn uuid(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The answer to a request for `method` `target`: status, content type and body. The
/// server in `io::metrics_server` reads the request and writes this back.
pub fn answer(metrics: &Metrics, method: &str, target: &str) -> (u16, &'static str, String) {
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", "/ready") => {
            let (status, body) = metrics.ready();
            (status, "application/json", body)
        }
        (_, "/metrics" | "/ready") => (405, "text/plain", "use GET\n".into()),
        _ => (
            404,
            "text/plain",
            "not found: try /metrics or /ready\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_line_is_name_labels_value() {
        for role in [Role::Edge, Role::Tunnel] {
            let m = Metrics::new(role, [7; 16]);
            m.auth(Auth::Policy);
            m.error(Error::Tls);
            m.bytes(Direction::OriginToClient, 42);
            m.handshake(Duration::from_millis(30));
            m.handshake(Duration::from_secs(60));
            m.held(Duration::from_micros(30));
            m.held(Duration::from_micros(3));
            let text = m.render();
            let prefix = role.prefix();
            for line in text.lines() {
                if line.starts_with('#') {
                    continue;
                }
                let (series, value) = line.rsplit_once(' ').expect(line);
                assert!(series.starts_with(prefix), "{line}");
                value.parse::<f64>().expect(line);
            }
            assert!(text.contains(&format!(
                "{prefix}_bytes_total{{direction=\"origin_to_client\"}} 42"
            )));
            assert!(text.contains(&format!(
                "{prefix}_tls_handshake_seconds_bucket{{le=\"0.05\"}} 1"
            )));
            assert!(text.contains(&format!(
                "{prefix}_tls_handshake_seconds_bucket{{le=\"+Inf\"}} 2"
            )));
            assert!(text.contains(&format!(
                "{prefix}_interactive_hold_seconds_bucket{{le=\"0.00001\"}} 1"
            )));
            assert!(text.contains(&format!(
                "{prefix}_interactive_hold_seconds_bucket{{le=\"0.00005\"}} 2"
            )));
            assert!(text.contains(&format!("{prefix}_interactive_hold_seconds_sum 0.000033")));
            assert_eq!(
                text.contains("auth_decisions_total{decision=\"deny\",reason=\"policy\"} 1"),
                role == Role::Edge
            );
        }
    }

    #[test]
    fn each_event_loop_has_its_connections_and_busy_time() {
        let m = Metrics::new(Role::Edge, [0; 16]);
        assert!(
            !m.render().contains("loop_"),
            "no loop series before set_loops"
        );
        m.set_loops(2);
        m.set_loop_connections(1, 3, 7);
        m.add_loop_busy(1, Duration::from_millis(1500));
        m.add_loop_busy(1, Duration::from_micros(250));
        m.add_loop_busy(5, Duration::from_secs(1)); // no such loop: ignored
        let text = m.render();
        for want in [
            "postern_edge_loop_connections{loop=\"0\",kind=\"tunnel\"} 0",
            "postern_edge_loop_connections{loop=\"1\",kind=\"tunnel\"} 3",
            "postern_edge_loop_connections{loop=\"1\",kind=\"carrier\"} 7",
            "postern_edge_loop_busy_seconds_total{loop=\"0\"} 0",
            "postern_edge_loop_busy_seconds_total{loop=\"1\"} 1.50025",
        ] {
            assert!(text.contains(want), "{want} in:\n{text}");
        }
        assert!(!text.contains("loop=\"2\""), "{text}");
    }

    #[test]
    fn answers_get_metrics_and_ready_and_nothing_else() {
        let m = Metrics::new(Role::Tunnel, [7; 16]);
        let (status, ctype, body) = answer(&m, "GET", "/metrics?x=1");
        assert_eq!(
            (status, ctype),
            (200, "text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(body.contains("# TYPE"), "{body}");
        assert_eq!(answer(&m, "GET", "/ready").0, 503);
        assert_eq!(answer(&m, "POST", "/ready").0, 405);
        assert_eq!(answer(&m, "GET", "/etc/passwd").0, 404);
    }

    #[test]
    fn ready_is_503_until_a_connection_registers() {
        let m = Metrics::new(Role::Tunnel, [0; 16]);
        let (status, body) = m.ready();
        assert_eq!(status, 503);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], 503);
        assert_eq!(v["readyConnections"], 0);
        assert_eq!(v["connectorId"], "00000000-0000-4000-8000-000000000000");
        m.set_connections(0, 2, 1);
        let (status, body) = m.ready();
        assert_eq!(status, 200);
        assert!(body.contains("\"readyConnections\":1"), "{body}");
        assert!(
            !body.contains("listening"),
            "an origin listens nowhere: {body}"
        );
    }

    #[test]
    fn an_origin_names_each_edge_and_its_connections() {
        let m = Metrics::new(Role::Tunnel, [0; 16]);
        m.set_edges(&["a.test:443".into(), "b\"x:443".into()]);
        m.set_edge_connections(0, 2, 2, Some(1500));
        m.set_edge_connections(1, 1, 0, None);
        m.set_edge_connections(7, 1, 1, None); // no such edge: ignored
        let v: serde_json::Value = serde_json::from_str(&m.ready().1).unwrap();
        assert_eq!(v["edges"][0]["edge"], "a.test:443");
        assert_eq!(v["edges"][0]["readyConnections"], 2);
        assert_eq!(v["edges"][1]["connections"], 1);
        assert_eq!(v["edges"][1]["readyConnections"], 0);
        let text = m.render();
        assert!(
            text.contains("postern_tunnel_edge_ready_connections{edge=\"a.test:443\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("postern_tunnel_edge_connections{edge=\"b\\\"x:443\"} 1"),
            "the label is escaped: {text}"
        );
        assert!(
            text.contains("postern_tunnel_edge_rtt_seconds{edge=\"a.test:443\"} 0.0015"),
            "{text}"
        );
        assert!(
            !text.contains("postern_tunnel_edge_rtt_seconds{edge=\"b"),
            "no sample before a round trip is measured: {text}"
        );
    }

    #[test]
    fn edge_ready_says_where_it_listens_once_bound() {
        let m = Metrics::new(Role::Edge, [0; 16]);
        let v: serde_json::Value = serde_json::from_str(&m.ready().1).unwrap();
        assert!(v["listening"].is_null(), "not bound yet: {v}");
        m.set_listening("127.0.0.1:8443".parse().unwrap());
        m.set_listening("127.0.0.1:9".parse().unwrap());
        let (status, body) = m.ready();
        assert_eq!(status, 503, "listening is not ready: no tunnel yet");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["listening"], "127.0.0.1:8443",
            "the first bind stays: {v}"
        );
    }
}
