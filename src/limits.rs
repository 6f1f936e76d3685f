//! Every bound postern enforces, in one place. Full means stop reading, never grow.

use std::time::Duration;

/// Largest mux frame payload (DESIGN.md §3). A frame announcing more is a connection error.
pub const MAX_FRAME_PAYLOAD: usize = 64 * 1024;
/// Initial per-stream flow-control window, each direction.
pub const INITIAL_STREAM_WINDOW: u32 = 256 * 1024;
/// The least window a receiver starts a stream at that shares its connection with another
/// (alone, a stream has the initial window). On a path whose round trip needs less
/// than [`INITIAL_STREAM_WINDOW`], it starts at what a round trip can use, not below this, and
/// withholds the rest of the protocol's initial grant from the first credit it returns
/// (docs/design.md §2.4, "Start window"): a bulk stream then keeps less ahead of an
/// interactive one in the shared connection.
pub const START_STREAM_WINDOW: u32 = 64 * 1024;
const _: () = assert!(START_STREAM_WINDOW <= INITIAL_STREAM_WINDOW);
/// Largest window a receiver grows one stream's to (docs/design.md §2.4, "Window
/// auto-tuning"): 4 MiB is 80 MB/s over a 50 ms path. Senders before auto-tuning refuse credit
/// past 16 × [`INITIAL_STREAM_WINDOW`] as an overflow, so this must not go beyond it.
pub const MAX_STREAM_WINDOW: u32 = 16 * INITIAL_STREAM_WINDOW;
/// What the grown windows of one tunnel connection may add up to beyond their initial ones:
/// four streams at [`MAX_STREAM_WINDOW`]. The memory a stalled consumer can pin stays bounded
/// per connection, whatever its stream count.
pub const TUNED_WINDOW_BUDGET: u32 = 4 * (MAX_STREAM_WINDOW - INITIAL_STREAM_WINDOW);
const _: () = assert!(MAX_STREAM_WINDOW <= 16 * INITIAL_STREAM_WINDOW);
/// The fastest one stream is expected to move, in bytes per second. A window never grows past
/// one round trip of it: more would only be queue, ahead of every other stream of the
/// connection (on loopback, a round trip of it is less than the initial window, so nothing
/// grows there).
pub const STREAM_RATE_CEILING: u64 = 1_000_000_000;
/// The least round trip a window grows by while its stream is alone on the connection. Where
/// the chain's processes share the machine's cores, each hop of a loaded round trip may wait
/// a scheduler slice for a core, so credit comes back far later than the idle minimum the
/// connection measures (60–150 µs on loopback) and a window sized from that leaves the
/// pipeline waiting for it (docs/design.md §2.4, "Alone, sized for a loaded round trip").
/// With nothing beside it, the only queue a lone stream's window adds is its own.
pub const LONE_RTT_FLOOR: Duration = Duration::from_millis(4);
/// Credit is returned to the peer once this much has been consumed: half the initial window,
/// or half the stream's window when it is smaller (docs/design.md §2.4).
pub const WINDOW_UPDATE_THRESHOLD: u32 = 128 * 1024;
/// A stream with at most this much to deliver is served before the bulk of a loop's pass
/// (an interactive packet: a keystroke, its echo); docs/design.md §2.8.
pub const URGENT_READABLE: usize = 4 * 1024;
/// The smallest DATA payload the edge and the origin hand on as it is decrypted, with a write
/// of its own (docs/design.md §2.8, "Cut-through"): one TLS record's worth. Smaller frames wait
/// in their stream and go out batched, so a peer's small frames cannot each cost a syscall.
pub const CUT_THROUGH_MIN: usize = TLS_RECORD;
/// The most plaintext one TLS record carries (RFC 8446 §5.1; rustls's default fragment): a
/// write of a little more than a multiple of it trails a record of a few bytes, which costs a
/// seal, an open and its overhead like a full one.
pub const TLS_RECORD: usize = 16 * 1024;
/// A loop that carries more than one stream gives up its core after a turn longer than this
/// (`sched_yield`), so the other processes of a chain sharing the machine's cores (the next
/// hop of a keystroke) run before its next turn, not after its scheduler slice
/// (docs/design.md §2.8, "Yield after a long turn").
pub const YIELD_AFTER_TURN: Duration = Duration::from_micros(50);
/// Bytes read from a local socket or carrier that wait to be framed for one stream.
pub const STREAM_SEND_BUFFER: usize = 64 * 1024;
/// Largest hostname, service URL or reason string carried in a mux frame.
pub const MAX_NAME_LEN: usize = 1024;
/// Largest identity-claims blob carried in OPEN.
pub const MAX_CLAIMS_LEN: usize = 16 * 1024;
/// Concurrent streams on one tunnel connection.
pub const MAX_STREAMS_PER_TUNNEL: usize = 16 * 1024;
/// Plaintext bytes buffered per TLS connection before they are parsed.
pub const CONN_READ_BUFFER: usize = 128 * 1024;
/// Ciphertext read from a TLS socket in one syscall, into one buffer per event loop (not per
/// connection). rustls alone would read at most 4 KiB per syscall.
pub const TLS_READ_STAGE: usize = 64 * 1024;
/// Plaintext produced per TLS connection per flush round (bounded outbound TLS backlog).
pub const CONN_WRITE_BATCH: usize = 128 * 1024;
/// The most an `access tcp` session moves each way in one turn of its loop before the other
/// sessions of the loop get theirs (docs/design.md §2.8): a bulk upload would otherwise keep
/// the loop until the edge's socket buffer filled (megabytes on loopback), and an interactive
/// session beside it would wait that long.
pub const SESSION_TURN_BYTES: usize = 256 * 1024;
/// Largest WebSocket message payload accepted from a carrier peer.
pub const MAX_WS_FRAME_PAYLOAD: u64 = 1024 * 1024;
/// Largest HTTP request or response head.
pub const MAX_HTTP_HEAD: usize = 16 * 1024;
/// Largest number of headers in one HTTP head.
pub const MAX_HTTP_HEADERS: usize = 64;
/// Largest body of a refusal response the client will read.
pub const MAX_REFUSAL_BODY: usize = 4096;
/// How long `postern access doctor` waits for the service's first bytes (the SSH banner)
/// once the edge has opened the stream; the tunnel's own connect gives up after
/// [`SERVICE_CONNECT_TIMEOUT_SECS`], so this is a little longer.
pub const DOCTOR_BANNER_TIMEOUT_SECS: u64 = SERVICE_CONNECT_TIMEOUT_SECS + 5;
/// Most bytes of the service's first line `postern access doctor` keeps (RFC 4253 §4.2: an
/// SSH identification line is at most 255 bytes with its CR LF).
pub const MAX_DOCTOR_BANNER: usize = 255;
/// Time between keepalive PINGs on a tunnel connection: short, so that a dead path (an edge
/// gone without a FIN, a silent drop) is noticed in seconds and resumable streams move on.
/// A PING is 18 bytes each way.
pub const PING_INTERVAL: Duration = Duration::from_secs(2);
/// A tunnel connection silent for this many ping intervals is dead (6 s).
pub const PING_DEAD_INTERVALS: u32 = 3;
/// Round-trip samples a tunnel connection takes back to back when it starts (each PING sent
/// as the last one's PONG arrives), before the keepalive's one per [`PING_INTERVAL`]: the
/// first one meets a peer busy with its handshake and registration, and under a transfer
/// that starts at once every later one waits behind the queue, so the smallest round trip
/// the windows are sized from would stay several times the path's (docs/design.md §2.4,
/// "The round trip").
pub const RTT_PROBES: u32 = 8;
/// Bytes a side of a resumable stream keeps until its peer acknowledges them (its replay
/// buffer, docs/design.md §2.6). Full, the side stops reading its application.
pub const REPLAY_BUFFER: usize = 1024 * 1024;
/// A resumable stream acknowledges what it took at least every this many bytes (and on a
/// timer, `RESUME_ACK_INTERVAL`), so the peer's replay buffer drains while bulk flows.
pub const RESUME_ACK_EVERY: u64 = 256 * 1024;
/// How often a side acknowledges what it took when nothing else is sent.
pub const RESUME_ACK_INTERVAL: Duration = Duration::from_millis(500);
/// Stream resumptions the edge routes per source IP address per minute; beyond that, 429.
/// A client retries a resumption with backoff for its resume window (about 40 tries in 60 s
/// when the origin is slow to come back).
pub const RESUME_ATTEMPTS_PER_MINUTE: u32 = 120;
/// Detached resumable streams (service connection and replay buffer held for the resume
/// window) the origin keeps for one identity (an email or a service token), and in all: past
/// either, a stream whose path dies closes instead, as a plain stream would. Otherwise an
/// authenticated user could start streams and drop their paths in a loop, each held for the
/// window, outside the edge's connection and stream caps, until the origin runs out of file
/// descriptors for everyone.
pub const MAX_DETACHED_PER_IDENTITY: usize = 256;
pub const MAX_DETACHED_STREAMS: usize = MAX_STREAMS_PER_TUNNEL;
/// How long a resumable stream waits for its other end after its path died: the client
/// retries for this long, the origin keeps the service connection this long by default
/// (`postern tunnel --resume-window`).
pub const RESUME_WINDOW: Duration = Duration::from_secs(60);
/// `access ssh` pings the edge this often on a resumable session.
pub const CARRIER_PING_INTERVAL: Duration = Duration::from_secs(2);
/// A carrier that delivers nothing (not even a pong) for this long is dead: a laptop that
/// changed networks sees no EOF, only silence.
pub const CARRIER_DEAD_AFTER: Duration = Duration::from_secs(6);
/// Seconds a new connection may take to finish TLS and its first head (slowloris bound).
pub const HANDSHAKE_TIMEOUT_SECS: u64 = 20;
/// Cap of the origin's reconnect backoff.
pub const RECONNECT_BACKOFF_CAP_SECS: u64 = 60;
/// A registered tunnel connection that dies after being up this long is replaced at once
/// (within `RECONNECT_AT_ONCE_JITTER`), not after the backoff: an edge restart then costs
/// about its own downtime. One that dies sooner backs off, so a flapping edge is not
/// hammered.
pub const RECONNECT_AT_ONCE_UPTIME: Duration = Duration::from_secs(1);
/// Spread of the immediate reconnect (full jitter), so HA connections and origins do not
/// arrive together.
pub const RECONNECT_AT_ONCE_JITTER: Duration = Duration::from_millis(250);
/// Local connection attempts to the origin service.
pub const SERVICE_CONNECT_TIMEOUT_SECS: u64 = 10;
/// Concurrent connections the edge accepts in total.
pub const MAX_EDGE_CONNECTIONS: usize = 50_000;
/// Control frames (PONG, WINDOW, RST…) queued for a tunnel peer before it is cut off.
pub const MAX_CONTROL_BACKLOG: usize = 256 * 1024;
/// Seconds an HTTP proxy gets to answer CONNECT (origin and client, through `HTTPS_PROXY`).
pub const PROXY_ANSWER_TIMEOUT_SECS: u64 = 10;
/// Concurrent connections the edge accepts from one source IP address.
pub const MAX_EDGE_CONNECTIONS_PER_IP: usize = 256;
/// App-token logins in progress (CLI logins waiting for their browser) an edge holds at once.
pub const MAX_PENDING_TRANSFERS: usize = 1024;
/// Tunnel logins (`postern tunnel login`) in progress at once: a budget apart from app
/// logins, so a flood of one never blocks the other.
pub const MAX_PENDING_TUNNEL_LOGINS: usize = 64;
/// Logins in progress started from one source address (an IPv6 /64 counts as one).
pub const MAX_PENDING_LOGINS_PER_SOURCE: usize = 16;
/// OIDC code exchanges queued for the worker threads; beyond that, the browser gets 503.
pub const MAX_OIDC_JOBS: usize = 64;
/// Threads that run OIDC code exchanges (a slow provider delays at most this many at once).
pub const OIDC_WORKERS: usize = 2;
/// Characters of a peer-supplied name or reason kept when it is logged or shown (the rest is
/// cut, see `logging::escape`).
pub const MAX_LOGGED_NAME: usize = 256;
/// Largest request body the edge reads (the login start and the browser's form posts).
pub const MAX_REQUEST_BODY: usize = 4096;
/// Longest OpenSSH public key line (`ssh-ed25519 AAAA… comment`) the edge or the client
/// parses: an 8192-bit RSA key with a comment fits; the signing request's body is bounded by
/// [`MAX_REQUEST_BODY`] anyway.
pub const MAX_SSH_KEY_LINE: usize = 2048;
/// Longest comment kept from a public key line (never put into a certificate).
pub const MAX_SSH_KEY_COMMENT: usize = 256;
/// Most principals (user names) in one SSH certificate, configured or parsed.
pub const MAX_SSH_PRINCIPALS: usize = 32;
/// Longest principal: a user name (Linux allows 32 bytes; room for `user@realm` forms).
pub const MAX_SSH_PRINCIPAL_LEN: usize = 64;
/// Longest key id written into a certificate (`postern:<email or service token>`).
pub const MAX_SSH_KEY_ID: usize = 320;
/// Longest SSH certificate blob the parser reads (ours are about 300 bytes with an Ed25519
/// subject key, about 800 with an 8192-bit RSA one).
pub const MAX_SSH_CERT_BLOB: usize = 8 * 1024;
/// Default lifetime of an SSH certificate: long enough to log in (as cloudflared's).
pub const SSH_CERT_LIFETIME_SECS: u64 = 3 * 60;
/// Longest lifetime an application may configure for its SSH certificates.
pub const MAX_SSH_CERT_LIFETIME_SECS: u64 = 24 * 3600;
/// A certificate is valid from this long before it was signed, for clocks of servers that
/// run a little behind the edge's.
pub const SSH_CERT_BACKDATE_SECS: u64 = 60;
/// Requests to the login entry points (`/cdn-cgi/access/cli`, `/cdn-cgi/access/dev-login`)
/// per source IP address per minute; beyond that, 429.
pub const LOGIN_ATTEMPTS_PER_MINUTE: u32 = 30;
/// A limit refusal is logged at most once per offender (and limit) per this many seconds;
/// the rest are only counted.
pub const LIMIT_LOG_INTERVAL_SECS: u64 = 60;
/// Offenders remembered for log suppression; beyond that, refusals are only counted.
pub const MAX_LOG_SUPPRESSION_ENTRIES: usize = 4096;
/// File descriptors the edge keeps back from `max_connections`: stdio, the poll, the listener,
/// signal and waker descriptors, the audit log, state files being written, the metrics listener
/// and its connection, and the OIDC workers' connections (about 20 in all, with room to spare).
/// Connections are capped at the open-file soft limit minus this, so `accept` itself does not
/// run out of descriptors.
pub const FD_RESERVE: u64 = 32;
/// After `accept` fails for want of descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM), the edge
/// stops accepting for this long, then tries again (the listener stays ready meanwhile).
pub const ACCEPT_RETRY_MILLIS: u64 = 250;
/// Hostnames one origin certificate may claim by registering them (`tunnel --hostname`); each
/// claim is a record in `hostnames.json` and a write of it. Named tunnels' routes are bounded
/// per zone by the admin API instead.
pub const MAX_HOSTNAMES_PER_CERTIFICATE: usize = 64;
/// Requests queued for the edge's state-store worker, and store answers the edge waits for at
/// once; beyond that a request that needs the store is refused as busy (503, or ERROR 503 to
/// an origin), never queued in memory.
pub const MAX_STORE_REQUESTS: usize = 256;
/// Requests the state-directory store runs as one group: their changes are written with one
/// write per file.
pub const MAX_STORE_BATCH: usize = 64;
/// Pending logins a store keeps at once (app and tunnel logins together).
pub const MAX_STORED_LOGINS: usize = MAX_PENDING_TRANSFERS + MAX_PENDING_TUNNEL_LOGINS;
/// Audit records queued for the audit writer thread. A full queue drops the record, counts it,
/// and says so once in the log and in the audit log itself (`audit_dropped`).
pub const AUDIT_QUEUE_RECORDS: usize = 4096;
/// The audit writer writes what it holds at least this often (it writes at once when idle).
pub const AUDIT_FLUSH_MILLIS: u64 = 1000;
/// `access tcp`: carriers being set up at once (connect, TLS, upgrade, maybe a browser login),
/// each on a thread of its own. Beyond that, new local connections wait in the kernel's accept
/// queue.
pub const MAX_CONCURRENT_SETUPS: usize = 8;
/// The origin's resolver threads (DNS off the event loop).
pub const RESOLVER_THREADS: usize = 2;
/// Names queued for the resolver threads; beyond that a lookup fails at once as busy.
pub const MAX_RESOLVE_JOBS: usize = 64;
/// A name the origin resolves must be answered within this time (the edge's, at each connect;
/// a service's, per stream), or that connection attempt or stream fails.
pub const RESOLVE_TIMEOUT_SECS: u64 = 10;
/// How long the origin reuses a resolved address (the system resolver gives no TTL).
pub const RESOLVE_CACHE_SECS: u64 = 30;
/// The most addresses kept of one name's answer (an edge's slots spread over them).
pub const MAX_RESOLVED_ADDRESSES: usize = 16;
/// The most edges one origin connects to (`--edge` repeated): each gets at least one of
/// the origin's connections, and `--ha-connections` is at most 16 too.
pub const MAX_EDGES: usize = 16;

/// The edge's resource limits: the `"limits"` object of its config file, every field optional
/// (defaults above). Each one is enforced per offender: hitting it closes that connection or
/// refuses that request, never anyone else's.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeLimits {
    /// Concurrent connections in total ([`MAX_EDGE_CONNECTIONS`]).
    pub max_connections: usize,
    /// Concurrent connections from one source IP ([`MAX_EDGE_CONNECTIONS_PER_IP`]).
    pub max_connections_per_ip: usize,
    /// Seconds from accept to a complete TLS handshake and first request head (carriers) or
    /// REGISTER (tunnels) ([`HANDSHAKE_TIMEOUT_SECS`]).
    pub handshake_timeout_secs: u64,
    /// Seconds a streaming carrier may move no byte in either direction before it is closed;
    /// 0 (the default) never closes an idle session (ssh sessions may idle for hours).
    pub idle_timeout_secs: u64,
    /// Concurrent streams on one tunnel connection; one more gets 503
    /// ([`MAX_STREAMS_PER_TUNNEL`]).
    pub max_streams_per_tunnel: usize,
    /// App-token logins in progress at once ([`MAX_PENDING_TRANSFERS`]).
    pub max_pending_transfers: usize,
    /// Tunnel logins in progress at once ([`MAX_PENDING_TUNNEL_LOGINS`]).
    pub max_pending_tunnel_logins: usize,
    /// Logins in progress from one source address or IPv6 /64
    /// ([`MAX_PENDING_LOGINS_PER_SOURCE`]).
    pub max_pending_logins_per_ip: usize,
    /// Login entry-point requests per source IP per minute ([`LOGIN_ATTEMPTS_PER_MINUTE`]).
    pub login_attempts_per_minute: u32,
    /// Largest HTTP request head, bytes ([`MAX_HTTP_HEAD`]; 1 KiB to 64 KiB).
    pub max_head_bytes: usize,
    /// Most headers in one request head ([`MAX_HTTP_HEADERS`]; 10 to 256).
    pub max_headers: usize,
    /// Largest WebSocket frame a client may send, bytes ([`MAX_WS_FRAME_PAYLOAD`]; 1 KiB to
    /// 16 MiB). Frames are streamed, never buffered whole, so this bounds abuse, not memory.
    pub max_ws_frame_bytes: u64,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            max_connections: MAX_EDGE_CONNECTIONS,
            max_connections_per_ip: MAX_EDGE_CONNECTIONS_PER_IP,
            handshake_timeout_secs: HANDSHAKE_TIMEOUT_SECS,
            idle_timeout_secs: 0,
            max_streams_per_tunnel: MAX_STREAMS_PER_TUNNEL,
            max_pending_transfers: MAX_PENDING_TRANSFERS,
            max_pending_tunnel_logins: MAX_PENDING_TUNNEL_LOGINS,
            max_pending_logins_per_ip: MAX_PENDING_LOGINS_PER_SOURCE,
            login_attempts_per_minute: LOGIN_ATTEMPTS_PER_MINUTE,
            max_head_bytes: MAX_HTTP_HEAD,
            max_headers: MAX_HTTP_HEADERS,
            max_ws_frame_bytes: MAX_WS_FRAME_PAYLOAD,
        }
    }
}

impl EdgeLimits {
    /// Names the first field out of range. Zero disables nothing but the idle timeout.
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_ip", self.max_connections_per_ip as u64),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("max_streams_per_tunnel", self.max_streams_per_tunnel as u64),
            ("max_pending_transfers", self.max_pending_transfers as u64),
            (
                "max_pending_tunnel_logins",
                self.max_pending_tunnel_logins as u64,
            ),
            (
                "max_pending_logins_per_ip",
                self.max_pending_logins_per_ip as u64,
            ),
            (
                "login_attempts_per_minute",
                u64::from(self.login_attempts_per_minute),
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("limits.{name} must be at least 1"));
        }
        if self.max_streams_per_tunnel > MAX_STREAMS_PER_TUNNEL {
            return Err(format!(
                "limits.max_streams_per_tunnel is at most {MAX_STREAMS_PER_TUNNEL} (the tunnel protocol's bound)"
            ));
        }
        for (name, v, lo, hi) in [
            (
                "max_head_bytes",
                self.max_head_bytes as u64,
                1024,
                64 * 1024,
            ),
            // 10: `postern access ssh`'s own upgrade has 9 header fields (a service token
            // and Postern-Resume); fewer would refuse the project's own client.
            ("max_headers", self.max_headers as u64, 10, 256),
            (
                "max_ws_frame_bytes",
                self.max_ws_frame_bytes,
                1024,
                16 * 1024 * 1024,
            ),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(format!("limits.{name} must be between {lo} and {hi}"));
            }
        }
        if self.max_connections_per_ip > self.max_connections {
            return Err("limits.max_connections_per_ip exceeds limits.max_connections".into());
        }
        // A week: beyond that a typo, and `Instant + Duration` stays far from overflow.
        for (name, v) in [
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
        ] {
            if v > 7 * 24 * 3600 {
                return Err(format!("limits.{name} is at most a week (604800)"));
            }
        }
        Ok(())
    }

    /// Caps `max_connections` to what `open_files` (the soft `RLIMIT_NOFILE`) can hold beside
    /// [`FD_RESERVE`]; at least 1. Returns the warning to log when it had to.
    pub fn fit_descriptors(&mut self, open_files: u64) -> Option<String> {
        let room =
            usize::try_from(open_files.saturating_sub(FD_RESERVE).max(1)).unwrap_or(usize::MAX);
        if self.max_connections <= room {
            return None;
        }
        let asked = self.max_connections;
        self.max_connections = room;
        Some(format!(
            "limits.max_connections ({asked}) is more than the open-file limit allows: capped \
             at {room} (RLIMIT_NOFILE {open_files} minus {FD_RESERVE} kept for the edge itself); \
             raise the limit (LimitNOFILE= in the systemd unit, `ulimit -n`) to serve more"
        ))
    }
}

// Used by src/edge/core/login.rs.
/// Clock skew tolerated on our own app tokens (edges of a pool keep their clocks in sync).
pub const APP_TOKEN_LEEWAY_SECS: u64 = 5;
/// Wrong dev codes allowed per login.
pub const MAX_DEV_CODE_ATTEMPTS: u32 = 5;
/// Wrong confirmation codes allowed per login (a typo or two; never enough to guess one).
pub const MAX_CONFIRM_ATTEMPTS: u32 = 3;
/// The browser-binding cookie lives this long (a login's whole life fits in it).
pub const BINDER_COOKIE_SECS: u64 = 600;

// Used by src/edge/core/admin.rs.
/// Largest request body.
pub const MAX_ADMIN_BODY: usize = 16 * 1024;
/// A request must have arrived whole this long after the connection was accepted.
pub const ADMIN_REQUEST_SECS: u64 = 10;
/// Most named tunnels per zone (each create rewrites `tunnels.json`).
pub const MAX_TUNNELS_PER_ZONE: usize = 256;
/// Most hostnames of one zone routed to named tunnels (each route rewrites `hostnames.json`).
pub const MAX_ROUTES_PER_ZONE: usize = 4096;
/// Longest name or hostname copied into the audit log from a request.
pub const MAX_ADMIN_AUDIT_FIELD: usize = 253;

// Used by src/edge/core/console.rs (the admin console) and src/audit.rs.
/// A console session (its `__Host-` cookie) lasts this long after the sign-in.
pub const CONSOLE_SESSION_SECS: u64 = 3600;
/// Most console sessions held in memory; a new sign-in beyond it ends the oldest.
pub const MAX_CONSOLE_SESSIONS: usize = 64;
/// Most console sign-ins between the redirect to the provider and the callback; a new one
/// beyond it forgets the oldest (sign-in starts also count against the login rate).
pub const MAX_CONSOLE_SIGNINS: usize = 64;
/// A console sign-in must come back from the provider within this.
pub const CONSOLE_SIGNIN_SECS: u64 = 300;
/// Audit lines the edge keeps in memory for the console (the tail of the file at start, then
/// every line it records); the oldest go first.
pub const CONSOLE_AUDIT_LINES: usize = 5000;
/// Bytes of audit lines kept in memory for the console, at most.
pub const CONSOLE_AUDIT_BYTES: usize = 2 * 1024 * 1024;
/// Matching audit lines one console page shows (newest first).
pub const CONSOLE_AUDIT_SHOWN: usize = 200;
/// Minutes of sessions and bytes the console's chart keeps (a fixed ring, one per minute).
pub const CONSOLE_CHART_MINUTES: usize = 60;

// Used by src/pki.rs.
/// Largest PEM file read as a credential or operator-supplied certificate/key.
pub const MAX_PEM_BYTES: usize = 1024 * 1024;
/// Most sections in such a PEM file.
pub const MAX_PEM_SECTIONS: usize = 64;
/// Largest system CA bundle read (distributions ship ~200 KiB with ~150 certificates).
pub const MAX_BUNDLE_BYTES: usize = 16 * 1024 * 1024;
/// Most certificates read from a system CA bundle or a `--ca` file.
pub const MAX_BUNDLE_SECTIONS: usize = 8192;

// Used by src/proto/url.rs.
/// Most parameters a query may carry.
pub const MAX_QUERY_PARAMS: usize = 32;

// Used by src/proto/jwt.rs.
/// Longest token accepted, in bytes (a whole HTTP head is at most 16 KiB anyway).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Largest JWKS document accepted from an identity provider, in bytes.
pub const MAX_JWKS_LEN: usize = 64 * 1024;
/// Most keys accepted in one JWKS document (also the most keys a [`crate::proto::jwt::KeyRing`] publishes).
pub const MAX_JWKS_KEYS: usize = 32;
/// How long an [`crate::proto::jwt::OriginAssertion`] is valid, in seconds: time for the origin to check it when
/// the stream opens, and little use to anyone who copies it.
pub const ORIGIN_ASSERTION_LIFETIME_SECS: u64 = 60;

// Used by src/proto/carrier.rs.
/// A carrier that is closing gets this long to take its last bytes.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Lingering close: once a closing carrier's last bytes are flushed and its write side is
/// shut (FIN), the edge reads and discards what the client still sends for at most this
/// long (never past [`CLOSE_GRACE`]), so that unread input does not turn the close into a
/// reset that destroys the Close on its way. The client needs one round trip to see the FIN
/// and close its side; 2 s covers slow links (Apache's lingering close waits 2 s per read
/// too) while a client that never stops sending holds its connection slot no longer.
pub const LINGER: Duration = Duration::from_secs(2);
/// Bytes a lingering connection may read and discard per pass of the event loop; it comes
/// back on the next pass for more, so a client that never stops sending cannot hold the loop.
pub const LINGER_DISCARD_PER_TURN: usize = CONN_READ_BUFFER;

// Used by src/proto/token_transfer.rs.
/// How long a transfer id stays valid.
pub const TRANSFER_TTL: Duration = Duration::from_secs(300);
/// Largest sealed payload (a token or an origin credential).
pub const MAX_SEALED: usize = 64 * 1024;
/// A CLI polls every second; one silent for this long has given up (or never existed), and
/// its slot is freed at once instead of holding a place for [`TRANSFER_TTL`].
pub const POLL_GRACE: Duration = Duration::from_secs(30);

// Used by src/store/worker.rs.
/// How often the store worker looks for changes made by others (revocations written by the
/// CLI): a revoked credential stops working within this and the edge's next wake-up.
pub const STORE_POLL_INTERVAL: Duration = Duration::from_secs(1);

// Used by src/store/etcd.rs.
/// How long a TCP connect to one etcd endpoint may take before the next one is tried.
pub const ETCD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request to etcd may take in all (connect, send, answer).
pub const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read from etcd (a snapshot of every record under the prefix).
pub const MAX_ETCD_RESPONSE: u64 = 64 * 1024 * 1024;
/// Most endpoints in an `etcd://` state.
pub const MAX_ETCD_ENDPOINTS: usize = 16;
/// Longest etcd password read from a password file.
pub const MAX_ETCD_PASSWORD: usize = 1024;
/// Operations in one etcd transaction (etcd refuses more than its `--max-txn-ops`, 128).
pub const MAX_ETCD_TXN_OPS: usize = 64;
/// How often a compare-and-swap that lost to another writer is tried again before the
/// caller is told to retry.
pub const ETCD_CAS_ATTEMPTS: usize = 8;

// Used by src/tunnel/core.rs.
/// How long a TCP connect to the first hop (the proxy or the edge) may take.
pub const EDGE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long before a service token's expiry the edge starts warning (daily, in its log).
pub const SERVICE_TOKEN_EXPIRY_WARNING_SECS: u64 = 7 * 24 * 3600;

/// The most `service uninstall` reads of a unit's `EnvironmentFile=` to tell whether it is the
/// tunnel token file that `service install TOKEN` wrote (a token is a few KiB).
pub const TOKEN_FILE_READ_MAX: u64 = 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_limits_are_named() {
        let ok = EdgeLimits::default();
        assert_eq!(ok.check(), Ok(()));
        let tiny = EdgeLimits {
            max_head_bytes: 100,
            ..EdgeLimits::default()
        };
        assert!(tiny.check().unwrap_err().contains("max_head_bytes"));
        let huge = EdgeLimits {
            max_ws_frame_bytes: 1 << 30,
            ..EdgeLimits::default()
        };
        assert!(huge.check().unwrap_err().contains("max_ws_frame_bytes"));
        // Fewer headers than `access ssh`'s own upgrade sends would refuse every ssh.
        let few = EdgeLimits {
            max_headers: 8,
            ..EdgeLimits::default()
        };
        assert!(few
            .check()
            .unwrap_err()
            .contains("max_headers must be between 10"));
    }

    #[test]
    fn max_connections_fits_the_open_file_limit() {
        let mut l = EdgeLimits::default();
        assert_eq!(l.fit_descriptors(1 << 20), None);
        assert_eq!(l.max_connections, MAX_EDGE_CONNECTIONS);
        let warning = l.fit_descriptors(1024).unwrap();
        assert_eq!(l.max_connections, 1024 - FD_RESERVE as usize);
        assert!(
            warning.contains("limits.max_connections (50000)"),
            "{warning}"
        );
        assert!(warning.contains("capped at 992"), "{warning}");
        // Already below: untouched. Absurdly low: still one connection.
        assert_eq!(l.fit_descriptors(1024), None);
        l.fit_descriptors(3);
        assert_eq!(l.max_connections, 1);
    }
}
