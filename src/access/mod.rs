//! `postern access`: the client. Opens a carrier (TLS + WebSocket) to the edge for a
//! hostname and splices it with ssh's stdio (`access ssh`, a ProxyCommand) or with TCP
//! connections accepted on a local port (`access tcp`).
//!
//! The carrier is set up blocking, before the loop (DNS, TCP connect, TLS handshake, HTTP
//! upgrade), so every failure can be reported with its cause and fix; `access tcp` does that
//! on a thread per setup (`listener.rs`), never on its loop. Then one mio loop moves bytes
//! both ways through bounded buffers:
//!
//! ```text
//!  local ──read──▶ masked WS frames ──▶ TLS ──▶ edge
//!  local ◀──write── out (bounded) ◀── WS decoder ◀── TLS ◀── edge
//! ```
//! Local EOF sends a WebSocket Close (half-close); the edge's Close shuts our write side.
//! Stdout cannot be half-closed (see `Local::shutdown_write`), so with stdio the edge's Close
//! ends the session once its bytes are written: ssh sees EOF when we exit, and it would not
//! close our stdin before it saw one.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::io::local::Local;
use crate::io::tls::TlsConn;
use crate::io::{random_bytes, would_block};
use crate::limits::{
    MAX_REFUSAL_BODY, PROXY_ANSWER_TIMEOUT_SECS, STREAM_SEND_BUFFER, TLS_READ_STAGE,
};
use crate::logging::untrusted;
use crate::proto::buf::Buf;
use crate::proto::http::{self, HeadLimits};
use crate::proto::proxy::{self, ProxyConfig};
use crate::proto::ws::{self, Decoder, Item, Role};
use crate::store::Secret;

mod authorize;
mod error;
mod listener;
pub mod login;
mod login_lock;
pub mod token_cache;

pub use authorize::login_and_cache;
pub use error::AccessError;
pub use listener::tcp;
pub use login::{login, login_url, Purpose};
pub use token_cache::TokenCache;

/// How the client proves who it is.
pub enum Credentials {
    /// A service token (`CF-Access-Client-Id` + `CF-Access-Client-Secret`): never a browser.
    ServiceToken { id: String, secret: Secret },
    /// An app token from a browser login (`cf-access-token`).
    AppToken(Secret),
    /// Nothing yet: use a cached app token, or log in when the edge asks for one.
    None,
}

const USER_AGENT: &str = concat!("postern/", env!("CARGO_PKG_VERSION"));

pub struct AccessOptions {
    pub hostname: String,
    /// Where to connect (`host:port`); SNI and Host stay `hostname`.
    pub edge: String,
    pub extra_ca: Option<PathBuf>,
    pub credentials: Credentials,
}

/// A failure of the connection to the edge once it is up.
fn edge_failed(error: io::Error) -> AccessError {
    AccessError::Connection {
        doing: "connection to the edge",
        error,
    }
}

/// A failure of the local event loop (poll, registration, signals).
fn event_loop(error: io::Error) -> AccessError {
    AccessError::Local {
        what: "event loop",
        error,
    }
}

/// An application as the CLI takes it: `H`, `H:PORT` or `https://H[:PORT][/…]`
/// (cloudflared's form). Returns the lowercase hostname and the port, if one was named.
pub fn application(s: &str) -> Result<(String, Option<u16>), AccessError> {
    let lower = s.trim().to_ascii_lowercase();
    // A path is dropped only from a URL; a bare name must be just the name.
    let authority = match lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    {
        Some(rest) => rest.split(['/', '?', '#']).next().unwrap_or_default(),
        None => &lower,
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| AccessError::InvalidPort(s.to_owned()))?;
            (h, Some(port))
        }
        None => (authority, None),
    };
    if !token_cache::valid_cache_hostname(host) {
        return Err(AccessError::InvalidHostname(s.to_owned()));
    }
    Ok((host.to_owned(), port))
}

fn client_config(extra_ca: Option<&std::path::Path>) -> Result<Arc<ClientConfig>, AccessError> {
    let roots = crate::pki::root_store(extra_ca, &[]).map_err(AccessError::TrustStore)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(AccessError::TlsSetup)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Largest body [`https_get`] reads (the transfer endpoint's sealed token or origin
/// credential, as JSON).
pub const MAX_HTTPS_BODY: usize = 64 * 1024;

/// The edge's addresses. `localhost` and `*.localhost` are loopback without asking DNS
/// (RFC 6761 §6.3; browsers do the same, the system resolver often does not), so the dev
/// edge works as `https://ssh.localhost:8443` without `--edge`.
fn resolve_edge(edge: &str) -> Result<Vec<SocketAddr>, AccessError> {
    if let Some((host, port)) = edge.rsplit_once(':') {
        let host = host.to_ascii_lowercase();
        if let (true, Ok(port)) = (
            host == "localhost" || host.ends_with(".localhost"),
            port.parse::<u16>(),
        ) {
            return Ok(vec![
                SocketAddr::from(([127, 0, 0, 1], port)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
            ]);
        }
    }
    Ok(edge
        .to_socket_addrs()
        .map_err(|e| AccessError::Resolve {
            edge: edge.to_owned(),
            error: Some(e),
        })?
        .collect())
}

/// The first of `addrs` that accepts a TCP connection (10 s each); else the last failure.
fn connect_first(addrs: &[SocketAddr]) -> Result<StdTcpStream, Option<(SocketAddr, io::Error)>> {
    let mut last = None;
    for a in addrs {
        match StdTcpStream::connect_timeout(a, Duration::from_secs(10)) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some((*a, e)),
        }
    }
    Err(last)
}

/// TCP to the edge itself.
fn connect_direct(edge: &str) -> Result<StdTcpStream, AccessError> {
    connect_first(&resolve_edge(edge)?).map_err(|last| match last {
        Some((addr, error)) => AccessError::Unreachable { addr, error },
        None => AccessError::Resolve {
            edge: edge.to_owned(),
            error: None,
        },
    })
}

/// TCP to the proxy, then `CONNECT edge` and its answer, within
/// [`PROXY_ANSWER_TIMEOUT_SECS`]. Returns the tunnel and any bytes that followed the
/// proxy's answer (the edge's, for TLS).
fn connect_through(p: &ProxyConfig, edge: &str) -> Result<(StdTcpStream, Vec<u8>), AccessError> {
    if proxy::split_host_port(edge).is_none() {
        return Err(AccessError::EdgeNotHostPort {
            edge: edge.to_owned(),
            proxy: p.addr.clone(),
        });
    }
    let addrs: Vec<SocketAddr> = p
        .addr
        .to_socket_addrs()
        .map_err(|e| AccessError::ProxyResolve {
            proxy: p.addr.clone(),
            source: p.source,
            error: Some(e),
        })?
        .collect();
    let mut sock = connect_first(&addrs).map_err(|last| match last {
        Some((addr, error)) => AccessError::ProxyUnreachable {
            proxy: p.addr.clone(),
            source: p.source,
            addr,
            error,
        },
        None => AccessError::ProxyResolve {
            proxy: p.addr.clone(),
            source: p.source,
            error: None,
        },
    })?;
    debug!("connecting to the edge {edge} through the proxy {}", p.addr);
    // The exchange itself is `proxy::Connect`'s (the tunnel drives the same one); here it is
    // only fed, blocking, with the socket's timeouts set to its deadline.
    let mut connect = proxy::Connect::new(p, edge, Instant::now());
    let proxy_io = |writing, error| AccessError::ProxyIo {
        proxy: p.addr.clone(),
        edge: edge.to_owned(),
        writing,
        error,
    };
    let _ = sock.set_write_timeout(Some(Duration::from_secs(PROXY_ANSWER_TIMEOUT_SECS)));
    sock.write_all(connect.transmit())
        .map_err(|e| proxy_io(true, e))?;
    connect.sent(connect.transmit().len());
    let mut chunk = [0u8; 4096];
    loop {
        let now = Instant::now();
        let left = connect
            .deadline()
            .map_or(Duration::ZERO, |d| d.saturating_duration_since(now));
        let progress = if left.is_zero() {
            connect.handle_timeout(now)
        } else {
            let _ = sock.set_read_timeout(Some(left));
            let room = connect.room().min(chunk.len());
            match sock.read(&mut chunk[..room]) {
                Ok(0) => connect.handle_eof(),
                Ok(n) => connect.handle_input(&chunk[..n]),
                Err(e) if would_block(&e) || e.kind() == io::ErrorKind::TimedOut => {
                    connect.handle_timeout(Instant::now())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => proxy::Progress::Exchanging,
                Err(e) => return Err(proxy_io(false, e)),
            }
        };
        match progress {
            proxy::Progress::Exchanging => {}
            proxy::Progress::Established(early) => return Ok((sock, early)),
            proxy::Progress::Refused(e) => return Err(e.into()),
        }
    }
}

/// Resolves the edge, connects over TCP (through the proxy `HTTPS_PROXY` names, unless
/// `NO_PROXY` names the edge) and completes the TLS handshake (SNI = the application's
/// hostname). The socket is blocking, with a 30 s read timeout.
pub fn tls_connect(
    opts: &AccessOptions,
    cfg: &Arc<ClientConfig>,
) -> Result<(StdTcpStream, ClientConnection), AccessError> {
    let edge_host = opts.edge.rsplit_once(':').map_or(&*opts.edge, |(h, _)| h);
    let via = proxy::proxy_for(edge_host, |k| std::env::var(k).ok())?;
    let (mut sock, early) = match &via {
        None => (connect_direct(&opts.edge)?, Vec::new()),
        Some(p) => connect_through(p, &opts.edge)?,
    };
    let _ = sock.set_nodelay(true);
    let _ = sock.set_read_timeout(Some(Duration::from_secs(30)));
    let name = ServerName::try_from(opts.hostname.clone())
        .map_err(|_| AccessError::InvalidHostname(opts.hostname.clone()))?;
    let mut tls = ClientConnection::new(cfg.clone(), name).map_err(AccessError::TlsSetup)?;
    // Advice by the rustls error's variant (see `AccessError::UntrustedCertificate`).
    let tls_failed = |error, through_proxy| match crate::io::tls::rustls_error(&error) {
        Some(e @ rustls::Error::InvalidCertificate(_)) => AccessError::UntrustedCertificate {
            edge: opts.edge.clone(),
            hostname: opts.hostname.clone(),
            error: e.clone(),
        },
        _ => AccessError::Tls {
            edge: opts.edge.clone(),
            through_proxy,
            error,
        },
    };
    proxy::hand_to_tls(&mut tls, &early).map_err(|e| tls_failed(e, true))?;
    while tls.is_handshaking() {
        tls.complete_io(&mut sock)
            .map_err(|e| tls_failed(e, false))?;
    }
    Ok((sock, tls))
}

/// Reads a response head from `stream`, returning it, the bytes read and where the body
/// starts in them.
fn read_response_head(
    stream: &mut impl Read,
    what: &str,
) -> Result<(http::ResponseHead, Vec<u8>, usize), AccessError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let limits = HeadLimits::default();
    loop {
        if let Some((head, used)) =
            http::parse_response_head(&buf, &limits).map_err(AccessError::BadHead)?
        {
            return Ok((head, buf, used));
        }
        let closed = |error| AccessError::EdgeClosed {
            during: format!(" during {what}"),
            error,
        };
        let n = stream.read(&mut chunk).map_err(|e| closed(Some(e)))?;
        if n == 0 {
            return Err(closed(None));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The `error` field of a JSON body, if it has one, escaped for the terminal (the edge, or
/// whatever answers at its address, chose that text).
fn json_error(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("error")
                .and_then(|e| e.as_str())
                .map(|e| untrusted(e).to_string())
        })
}

/// One `GET path` to the edge over its own TLS connection (`Connection: close`), with the
/// carrier's TLS setup (SNI and Host = the hostname, `--edge`, `--ca`). Returns the status
/// and the body, which may be at most [`MAX_HTTPS_BODY`] bytes.
pub fn https_get(
    opts: &AccessOptions,
    cfg: &Arc<ClientConfig>,
    path: &str,
) -> Result<(u16, Vec<u8>), AccessError> {
    https_request(opts, cfg, "GET", path, None)
}

/// [`https_get`] with any method, and a JSON body when `body` is given.
pub fn https_request(
    opts: &AccessOptions,
    cfg: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>), AccessError> {
    let (mut sock, mut tls) = tls_connect(opts, cfg)?;
    let mut req = Vec::new();
    let len = body.map(|b| b.len().to_string());
    let mut headers = vec![
        ("Host", opts.hostname.as_str()),
        ("Accept", "application/json"),
        ("Connection", "close"),
        ("User-Agent", USER_AGENT),
    ];
    if let Some(len) = &len {
        headers.push(("Content-Type", "application/json"));
        headers.push(("Content-Length", len));
    }
    http::write_request(&mut req, method, path, &headers);
    req.extend_from_slice(body.unwrap_or_default());
    tls.writer().write_all(&req).map_err(edge_failed)?;
    let mut stream = rustls::Stream::new(&mut tls, &mut sock);
    stream.flush().map_err(edge_failed)?;
    let (head, buf, used) = read_response_head(&mut stream, "a request")?;
    let mut body = buf[used..].to_vec();
    let too_big = || AccessError::AnswerTooLarge {
        path: path.to_owned(),
        limit: MAX_HTTPS_BODY,
    };
    let mut chunk = [0u8; 4096];
    match head.content_length() {
        Some(n) if n > MAX_HTTPS_BODY as u64 => return Err(too_big()),
        Some(n) => {
            let n = n as usize;
            while body.len() < n {
                let closed = |error| AccessError::EdgeClosed {
                    during: " mid-answer".into(),
                    error,
                };
                let got = stream.read(&mut chunk).map_err(|e| closed(Some(e)))?;
                if got == 0 {
                    return Err(closed(None));
                }
                body.extend_from_slice(&chunk[..got]);
            }
            body.truncate(n);
        }
        // No length: the body ends with the connection (we asked for `Connection: close`).
        None => loop {
            if body.len() > MAX_HTTPS_BODY {
                return Err(too_big());
            }
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(got) => {
                    body.extend_from_slice(&chunk[..got]);
                    if body.len() > MAX_HTTPS_BODY {
                        return Err(too_big());
                    }
                }
                // A peer that closes without close_notify: the body has no length to
                // check against anyway.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(error) => {
                    return Err(AccessError::Connection {
                        doing: "reading the edge's answer",
                        error,
                    })
                }
            }
        },
    }
    Ok((head.status, body))
}

/// Connects, upgrades, and returns a carrier ready for the loop. The edge's refusal (401,
/// 403, …) is [`AccessError::Refused`].
pub fn connect(opts: &AccessOptions, cfg: &Arc<ClientConfig>) -> Result<TlsConn, AccessError> {
    let (mut sock, mut tls) = tls_connect(opts, cfg)?;

    // The upgrade request, with Cloudflare Access's header names.
    let key = crate::proto::base64::encode(&random_bytes::<16>());
    let mut headers: Vec<(&str, &str)> = vec![
        ("Host", &opts.hostname),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", &key),
        ("Sec-WebSocket-Version", "13"),
        ("User-Agent", USER_AGENT),
    ];
    let printable = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic());
    match &opts.credentials {
        Credentials::ServiceToken { id, secret } => {
            if !printable(id) || !printable(secret.expose()) {
                return Err(AccessError::BadCredentials(
                    "the service token id and secret must be printable ASCII without spaces",
                ));
            }
            headers.push(("CF-Access-Client-Id", id));
            headers.push(("CF-Access-Client-Secret", secret.expose()));
        }
        Credentials::AppToken(token) => {
            if !printable(token.expose()) {
                return Err(AccessError::BadCredentials(
                    "the app token must be printable ASCII without spaces",
                ));
            }
            headers.push(("cf-access-token", token.expose()));
        }
        Credentials::None => {}
    }
    let mut req = Vec::new();
    http::write_request(&mut req, "GET", "/", &headers);
    tls.writer().write_all(&req).map_err(edge_failed)?;
    let mut stream = rustls::Stream::new(&mut tls, &mut sock);
    stream.flush().map_err(edge_failed)?;

    let (head, mut buf, used) = read_response_head(&mut stream, "the upgrade")?;
    let mut chunk = [0u8; 4096];
    if head.status != 101 {
        // Read the (bounded) JSON body naming the cause.
        let want = head
            .content_length()
            .map_or(0, |n| n.min(MAX_REFUSAL_BODY as u64) as usize);
        while buf.len() - used < want {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = &buf[used..buf.len().min(used + want)];
        let cause = json_error(body).unwrap_or_else(|| untrusted(&head.reason).to_string());
        return Err(AccessError::Refused {
            hostname: opts.hostname.clone(),
            status: head.status,
            cause,
        });
    }
    let expected = http::websocket_accept_key(&key);
    if head.header("sec-websocket-accept") != Some(expected.as_str()) {
        return Err(AccessError::BadAnswer(
            "the edge answered the upgrade with a wrong Sec-WebSocket-Accept".into(),
        ));
    }
    sock.set_nonblocking(true).map_err(event_loop)?;
    let mut conn = TlsConn::new(TcpStream::from_std(sock), tls);
    let leftover = &buf[used..];
    let pushed = conn.rx.push(leftover);
    debug_assert_eq!(pushed, leftover.len());
    Ok(conn)
}

/// One carrier spliced with one local endpoint.
struct Splice {
    tls: TlsConn,
    local: Local,
    dec: Decoder,
    /// Bytes from the edge waiting for the local side.
    out: Buf,
    local_eof: bool,
    local_write_shut: bool,
    sent_close: bool,
}

/// Buffers an event loop lends to each session in turn: an idle session holds none of them.
struct LoopBufs {
    /// Small frames (pongs, closes) on their way into rustls.
    scratch: Vec<u8>,
    /// Ciphertext staging for `TlsConn::read`.
    stage: Vec<u8>,
    /// Bytes read from the local side, masked in place and framed without a copy.
    local: Vec<u8>,
}

/// Largest payload of one client frame: with its 8-byte masked header it fills four TLS
/// records of 16 KiB exactly (no small record trailing each frame), and it is read from the
/// local side in one syscall.
const LOCAL_READ: usize = 4 * 16 * 1024 - 8;

impl LoopBufs {
    fn new() -> Self {
        LoopBufs {
            scratch: Vec::with_capacity(1024),
            stage: vec![0; TLS_READ_STAGE],
            local: vec![0; LOCAL_READ],
        }
    }
}

enum Progress {
    Running,
    Done,
}

impl Splice {
    fn new(tls: TlsConn, local: Local) -> Self {
        Splice {
            tls,
            local,
            dec: Decoder::new(Role::Client),
            out: Buf::new(STREAM_SEND_BUFFER),
            local_eof: false,
            local_write_shut: false,
            sent_close: false,
        }
    }

    fn pump(&mut self, registry: &Registry, bufs: &mut LoopBufs) -> Result<Progress, AccessError> {
        loop {
            let full = self.tls.read(&mut bufs.stage).map_err(edge_failed)?;
            let progress = self.step(registry, bufs)?;
            if !(full && self.tls.has_room()) || matches!(progress, Progress::Done) {
                return Ok(progress);
            }
        }
    }

    fn step(&mut self, registry: &Registry, bufs: &mut LoopBufs) -> Result<Progress, AccessError> {
        let scratch = &mut bufs.scratch;
        // Edge → local.
        loop {
            while !self.out.is_empty() && !self.local_write_shut {
                match self.local.write(self.out.data()) {
                    Ok(n) => self.out.consume(n),
                    Err(e) if would_block(&e) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        debug!("local write: {e}");
                        // The local side is gone: nothing more to deliver.
                        self.out.consume(self.out.len());
                        self.local_write_shut = true;
                    }
                }
            }
            if self.out.space() == 0 {
                break;
            }
            let rx = self.tls.rx.data_mut();
            match self.dec.poll(rx, self.out.space()) {
                Ok(Some((Item::Data { start, len }, used))) => {
                    if !self.local_write_shut {
                        self.out.push(&rx[start..start + len]);
                    }
                    self.tls.rx.consume(used);
                }
                Ok(Some((Item::Ping { payload, len }, used))) => {
                    self.tls.rx.consume(used);
                    scratch.clear();
                    ws::encode_frame(scratch, ws::PONG, &payload[..len], Some(random_bytes()));
                    self.tls.send(scratch);
                }
                Ok(Some((Item::Pong, used))) => self.tls.rx.consume(used),
                Ok(Some((Item::Close { code, reason }, used))) => {
                    self.tls.rx.consume(used);
                    if code != ws::close::NORMAL {
                        return Err(AccessError::SessionClosed {
                            reason: untrusted(&reason).to_string(),
                        });
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(AccessError::BadAnswer(format!(
                        "bad frame from the edge: {e}"
                    )))
                }
            }
        }
        if self.dec.is_closed() && self.out.is_empty() && !self.local_write_shut {
            self.local_write_shut = true;
            if !self.local.shutdown_write(registry) && !self.local_eof {
                // The reader (ssh, on our stdout) sees the EOF only when we exit, and waits
                // for it before it closes our stdin: the remote's end ends the session.
                debug!("the edge closed the stream: ending the session");
                self.end_local_input(registry, scratch);
            }
        }
        if self.tls.peer_closed && !self.dec.is_closed() {
            return Err(AccessError::EdgeClosed {
                during: String::new(),
                error: None,
            });
        }
        // Local → edge, one bounded batch at a time. Flush first: `can_send` must see what
        // the socket took since the last pass, or no event would ever resume reading stdin.
        self.tls.flush().map_err(edge_failed)?;
        while self.tls.can_send() && !self.local_eof {
            let buf = &mut bufs.local;
            match self.local.read(buf) {
                Ok(0) => self.end_local_input(registry, scratch),
                Ok(n) => {
                    let mask = random_bytes();
                    let mut h = [0u8; 14];
                    let hl = ws::encode_header(&mut h, ws::BINARY, n, Some(mask));
                    ws::unmask(&mut buf[..n], mask, 0);
                    self.tls.send_vectored(&[&h[..hl], &buf[..n]]);
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
            self.tls.flush().map_err(edge_failed)?;
        }
        self.tls.flush().map_err(edge_failed)?;
        if self.sent_close && self.dec.is_closed() && self.out.is_empty() {
            self.tls.close();
            return Ok(Progress::Done);
        }
        Ok(Progress::Running)
    }

    /// Reads no more from the local side and sends our Close (the half-close toward the edge).
    fn end_local_input(&mut self, registry: &Registry, scratch: &mut Vec<u8>) {
        self.local_eof = true;
        self.local.shutdown_read(registry);
        scratch.clear();
        ws::encode_close(scratch, ws::close::NORMAL, "", Some(random_bytes()));
        self.tls.send(scratch);
        self.sent_close = true;
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
    let mut s = Splice::new(tls, local);
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
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(event_loop(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_names_resolve_to_loopback_without_dns() {
        let addrs = resolve_edge("ssh.LOCALHOST:8443").unwrap();
        assert!(addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8443));
        assert_eq!(
            resolve_edge("127.0.0.1:9").unwrap(),
            vec![SocketAddr::from(([127, 0, 0, 1], 9))]
        );
    }

    #[test]
    fn applications_are_taken_bare_or_as_https_urls() {
        let ok = |s: &str| application(s).map_err(|e| e.to_string());
        assert_eq!(ok("ssh.example.com"), Ok(("ssh.example.com".into(), None)));
        assert_eq!(ok("SSH.Example.com"), Ok(("ssh.example.com".into(), None)));
        assert_eq!(
            ok("https://ssh.example.com/"),
            Ok(("ssh.example.com".into(), None))
        );
        assert_eq!(
            ok("https://ssh.localhost:8443/some/path?x=1"),
            Ok(("ssh.localhost".into(), Some(8443)))
        );
        assert_eq!(ok("http://a.b:443"), Ok(("a.b".into(), Some(443))));
        for bad in [
            "",
            "https://",
            "../etc",
            "a/../../b",
            "ssh.example.com:0",
            "ssh.example.com:99999",
            "ssh.example.com:x",
            "user@ssh.example.com",
            "[::1]:22",
            "ftp://a.b",
        ] {
            assert!(application(bad).is_err(), "{bad:?}");
        }
    }
}
