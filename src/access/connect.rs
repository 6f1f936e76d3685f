//! The carrier's setup, blocking, before the splice's loop (or on a setup thread of
//! `access tcp`): DNS, the TCP connection (directly or through the `HTTPS_PROXY`'s CONNECT),
//! the TLS handshake and the WebSocket upgrade, each failure reported with its cause and fix.
//! The one-shot HTTPS requests of the browser login and the tunnel admin commands use the
//! same setup, under ureq (`https.rs`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;
use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use super::{edge_failed, event_loop, upgrade, AccessError, AccessOptions};
use crate::io::tls::TlsConn;
use crate::io::{random_bytes, would_block};
use crate::limits::PROXY_ANSWER_TIMEOUT_SECS;
use crate::proto::http::{self, HeadLimits};
use crate::proto::proxy::{self, ProxyConfig};

/// The edge's addresses. `localhost` and `*.localhost` are loopback without asking DNS
/// (RFC 6761 §6.3; browsers do the same, the system resolver often does not), so the dev
/// edge works as `https://ssh.localhost:8443` without `--edge`.
pub(super) fn resolve_edge(edge: &str) -> Result<Vec<SocketAddr>, AccessError> {
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
pub(super) fn connect_direct(edge: &str) -> Result<StdTcpStream, AccessError> {
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
pub(super) fn connect_through(
    p: &ProxyConfig,
    edge: &str,
) -> Result<(StdTcpStream, Vec<u8>), AccessError> {
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
    let (sock, early) = match edge_proxy(opts)? {
        None => (connect_direct(&opts.edge)?, Vec::new()),
        Some(p) => connect_through(&p, &opts.edge)?,
    };
    tls_handshake(opts, cfg, sock, &early)
}

/// The proxy the carrier to `opts.edge` goes through: the one `HTTPS_PROXY` (or the like)
/// names, unless `NO_PROXY` names the edge.
pub(super) fn edge_proxy(opts: &AccessOptions) -> Result<Option<ProxyConfig>, AccessError> {
    let edge_host = opts.edge.rsplit_once(':').map_or(&*opts.edge, |(h, _)| h);
    Ok(proxy::proxy_for(edge_host, |k| std::env::var(k).ok())?)
}

/// The TLS handshake over `sock` (after `early`, the edge's bytes that came with the
/// proxy's answer), SNI = the application's hostname; sets the socket's timeouts.
pub(super) fn tls_handshake(
    opts: &AccessOptions,
    cfg: &Arc<ClientConfig>,
    mut sock: StdTcpStream,
    early: &[u8],
) -> Result<(StdTcpStream, ClientConnection), AccessError> {
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
    proxy::hand_to_tls(&mut tls, early).map_err(|e| tls_failed(e, true))?;
    while tls.is_handshaking() {
        tls.complete_io(&mut sock)
            .map_err(|e| tls_failed(e, false))?;
    }
    Ok((sock, tls))
}

/// Reads a response head from `stream`, returning it, the bytes read and where the body
/// starts in them.
pub(super) fn read_response_head(
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
/// The body of a refused upgrade (bounded by [`upgrade::refusal_body_len`]), read on after
/// the head that `read_response_head` left at `used` in `buf`; empty for a 101.
pub(super) fn refusal_body<'a>(
    stream: &mut impl Read,
    head: &http::ResponseHead,
    buf: &'a mut Vec<u8>,
    used: usize,
) -> &'a [u8] {
    let want = upgrade::refusal_body_len(head);
    let mut chunk = [0u8; 4096];
    while buf.len() - used < want {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    &buf[used..buf.len().min(used + want)]
}

/// Connects, upgrades, and returns a carrier ready for the loop. The edge's refusal (401,
/// 403, …) is [`AccessError::Refused`].
pub fn connect(opts: &mut AccessOptions, cfg: &Arc<ClientConfig>) -> Result<TlsConn, AccessError> {
    let (mut sock, mut tls) = tls_connect(opts, cfg)?;

    let key = crate::proto::base64::encode(&random_bytes::<16>());
    let req = upgrade::request(
        &opts.hostname,
        &opts.credentials,
        &key,
        opts.resume.as_deref(),
        opts.destination.as_deref(),
    )?;
    tls.writer().write_all(&req).map_err(edge_failed)?;
    let mut stream = rustls::Stream::new(&mut tls, &mut sock);
    stream.flush().map_err(edge_failed)?;

    let (head, mut buf, used) = read_response_head(&mut stream, "the upgrade")?;
    // A refusal's (bounded) body names its cause; a 101 has none to read.
    let body = refusal_body(&mut stream, &head, &mut buf, used);
    upgrade::check_answer(&opts.hostname, &key, &head, body)?;
    opts.resume_granted = head
        .header(crate::proto::resume::HEADER)
        .filter(|c| opts.resume.is_some() && crate::proto::resume::unhex::<16>(c).is_some())
        .map(str::to_ascii_lowercase);
    sock.set_nonblocking(true).map_err(event_loop)?;
    let mut conn = TlsConn::new(TcpStream::from_std(sock), tls);
    let leftover = &buf[used..];
    let pushed = conn.rx.push(leftover);
    debug_assert_eq!(pushed, leftover.len());
    Ok(conn)
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
}
