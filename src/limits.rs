//! Every bound postern enforces, in one place. Full means stop reading, never grow.

/// Largest mux frame payload (DESIGN.md §3). A frame announcing more is a connection error.
pub const MAX_FRAME_PAYLOAD: usize = 64 * 1024;
/// Initial per-stream flow-control window, each direction.
pub const INITIAL_STREAM_WINDOW: u32 = 256 * 1024;
/// Credit is returned to the peer once this much has been consumed.
pub const WINDOW_UPDATE_THRESHOLD: u32 = 64 * 1024;
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
/// Plaintext produced per TLS connection per flush round (bounded outbound TLS backlog).
pub const CONN_WRITE_BATCH: usize = 128 * 1024;
/// Largest WebSocket message payload accepted from a carrier peer.
pub const MAX_WS_FRAME_PAYLOAD: u64 = 1024 * 1024;
/// Largest HTTP request or response head.
pub const MAX_HTTP_HEAD: usize = 16 * 1024;
/// Largest number of headers in one HTTP head.
pub const MAX_HTTP_HEADERS: usize = 64;
/// Largest body of a refusal response the client will read.
pub const MAX_REFUSAL_BODY: usize = 4096;
/// Seconds between keepalive PINGs on a tunnel connection.
pub const PING_INTERVAL_SECS: u64 = 15;
/// A tunnel connection silent for this many ping intervals is dead.
pub const PING_DEAD_INTERVALS: u32 = 3;
/// Seconds a new connection may take to finish TLS and its first head (slowloris bound).
pub const HANDSHAKE_TIMEOUT_SECS: u64 = 20;
/// Cap of the origin's reconnect backoff.
pub const RECONNECT_BACKOFF_CAP_SECS: u64 = 60;
/// Local connection attempts to the origin service.
pub const SERVICE_CONNECT_TIMEOUT_SECS: u64 = 10;
/// Concurrent connections the edge accepts in total.
pub const MAX_EDGE_CONNECTIONS: usize = 50_000;
/// Control frames (PONG, WINDOW, RST…) queued for a tunnel peer before it is cut off.
pub const MAX_CONTROL_BACKLOG: usize = 256 * 1024;
/// Seconds an HTTP proxy gets to answer CONNECT (origin and client, through `HTTPS_PROXY`).
pub const PROXY_ANSWER_TIMEOUT_SECS: u64 = 10;
