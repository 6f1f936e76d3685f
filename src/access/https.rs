//! One-shot HTTPS requests to the edge: the browser login's transfer calls and the tunnel
//! admin commands. ureq is the project's one HTTP client (`oidc` uses it too): it writes the
//! request and reads the answer. The connection under it is the carrier's own setup
//! ([`tls_connect`]), given to ureq as its connector, so these requests go where the carrier
//! goes, as it goes: `--edge` (the URL's host is only the name: SNI and `Host`), the proxy
//! that `HTTPS_PROXY`/`NO_PROXY` name, `--ca`, the caller's TLS config (ALPN, and the admin
//! commands' client certificate), the same 10 s connect and 30 s read timeouts, and the same
//! errors for each step of the setup.
//!
//! ```text
//!  https_request ─▶ ureq::Agent::run ─▶ EdgeResolver (no DNS: the connector resolves)
//!                                    └▶ EdgeConnector ─▶ tls_connect (TCP, CONNECT, TLS)
//!                 ◀─ (status, body ≤ MAX_HTTPS_BODY) ◀─ ureq reads the answer over TlsStream
//! ```
//!
//! The connection is used once (`Connection: close`, no pool). ureq's connector and resolver
//! traits are in its `unversioned` module (outside its semver promise): Cargo.lock pins the
//! version, and a ureq upgrade must re-check this file (vendor-policy.md).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use rustls::{ClientConfig, StreamOwned};
use ureq::http::Request;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};

use super::connect::tls_connect;
use super::{AccessError, AccessOptions, Credentials, USER_AGENT};
use crate::limits::MAX_HTTP_HEAD;
use crate::logging::untrusted;

/// Largest body [`https_request`] reads (the transfer endpoint's sealed token or origin
/// credential, the admin API's answers, as JSON).
pub const MAX_HTTPS_BODY: usize = 64 * 1024;

/// One `GET path` to the edge (see [`https_request`]).
pub fn https_get(
    opts: &AccessOptions,
    cfg: &Arc<ClientConfig>,
    path: &str,
) -> Result<(u16, Vec<u8>), AccessError> {
    https_request(opts, cfg, "GET", path, None)
}

/// One request to the edge over its own TLS connection (`Connection: close`), with the
/// carrier's setup (SNI and Host = the hostname, `--edge`, the proxy, `--ca`, `cfg`), and a
/// JSON body when `body` is given. Returns the status, whatever it is, and the body, which
/// may be at most [`MAX_HTTPS_BODY`] bytes.
pub fn https_request(
    opts: &AccessOptions,
    cfg: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>), AccessError> {
    https_request_with(opts, cfg, method, path, body, &[])
}

/// [`https_request`] with extra request headers (the credentials of `access ssh-gen`).
pub fn https_request_with(
    opts: &AccessOptions,
    cfg: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Result<(u16, Vec<u8>), AccessError> {
    let connector = EdgeConnector {
        hostname: opts.hostname.clone(),
        edge: opts.edge.clone(),
        cfg: cfg.clone(),
    };
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_idle_connections(0)
        .proxy(None)
        .user_agent(USER_AGENT)
        .accept("application/json")
        // The same bound as every head postern parses.
        .max_response_header_size(MAX_HTTP_HEAD)
        .build();
    let agent = ureq::Agent::with_parts(config, connector, EdgeResolver);
    let url = format!("https://{}{path}", opts.hostname);
    let mut request = Request::builder()
        .method(method)
        .uri(&url)
        .header("Connection", "close");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let sent = match body {
        Some(b) => request
            .header("Content-Type", "application/json")
            .body(b)
            .map(|r| agent.run(r)),
        None => request.body(()).map(|r| agent.run(r)),
    };
    let mut answer = sent
        .map_err(|e| AccessError::BadAnswer(format!("cannot make the request {path}: {e}")))?
        .map_err(|e| from_ureq(e, path))?;
    let status = answer.status().as_u16();
    if !delimited(answer.headers(), status) {
        return Err(AccessError::BadAnswer(format!(
            "bad answer from the edge to {path}: it has no length (neither Content-Length nor \
             chunked)"
        )));
    }
    let body = answer
        .body_mut()
        .with_config()
        .limit(MAX_HTTPS_BODY as u64)
        .read_to_vec()
        .map_err(|e| from_ureq(e, path))?;
    Ok((status, body))
}

/// Whether an answer says how long it is. The edge always does; an answer delimited only by
/// the close could be cut short by anyone on the path (a reset or a missing close_notify ends
/// it like a close), so it is refused rather than read.
fn delimited(headers: &ureq::http::HeaderMap, status: u16) -> bool {
    matches!(status, 204 | 304)
        || headers.contains_key("content-length")
        || headers
            .get("transfer-encoding")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"))
}

/// Our own errors from the connector come back as they were; ureq's own say which step.
fn from_ureq(e: ureq::Error, path: &str) -> AccessError {
    match e {
        ureq::Error::Other(inner) => match inner.downcast::<AccessError>() {
            Ok(ours) => *ours,
            Err(other) => AccessError::BadAnswer(format!(
                "bad answer from the edge: {}",
                untrusted(&other.to_string())
            )),
        },
        ureq::Error::BodyExceedsLimit(_) => AccessError::AnswerTooLarge {
            path: path.to_owned(),
            limit: MAX_HTTPS_BODY,
        },
        ureq::Error::Io(error) => AccessError::EdgeClosed {
            during: " during a request".into(),
            error: Some(error),
        },
        other => AccessError::BadAnswer(format!(
            "bad answer from the edge: {}",
            untrusted(&other.to_string())
        )),
    }
}

/// No DNS for the URL's host: it is only the name (SNI, `Host`); [`EdgeConnector`] connects
/// to `--edge` (or the proxy) and resolves that itself.
#[derive(Debug)]
struct EdgeResolver;

impl Resolver for EdgeResolver {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        // ureq wants at least one address; the connector never looks at it.
        let mut addrs = self.empty();
        addrs.push(SocketAddr::from(([0, 0, 0, 0], 0)));
        Ok(addrs)
    }
}

/// The carrier's setup as a ureq connector.
struct EdgeConnector {
    hostname: String,
    edge: String,
    cfg: Arc<ClientConfig>,
}

impl fmt::Debug for EdgeConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeConnector")
            .field("hostname", &self.hostname)
            .field("edge", &self.edge)
            .finish()
    }
}

impl Connector for EdgeConnector {
    type Out = TlsStream;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<TlsStream>, ureq::Error> {
        let opts = AccessOptions {
            hostname: self.hostname.clone(),
            edge: self.edge.clone(),
            extra_ca: None,
            credentials: Credentials::None,
            resume: None,
            resume_granted: None,
            destination: None,
        };
        let (sock, tls) =
            tls_connect(&opts, &self.cfg).map_err(|e| ureq::Error::Other(Box::new(e)))?;
        Ok(Some(TlsStream {
            stream: StreamOwned::new(tls, sock),
            buffers: LazyBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
        }))
    }
}

/// A TLS connection to the edge, blocking (its read timeout set by [`tls_connect`]).
struct TlsStream {
    stream: StreamOwned<rustls::ClientConnection, TcpStream>,
    buffers: LazyBuffers,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsStream")
    }
}

impl Transport for TlsStream {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, _timeout: NextTimeout) -> Result<(), ureq::Error> {
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        self.stream.flush()?;
        Ok(())
    }

    fn await_input(&mut self, _timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let input = self.buffers.input_append_buf();
        let n = match self.stream.read(input) {
            Ok(n) => n,
            // A peer that closes without close_notify: an answer delimited by the close has
            // no length to check against anyway, and one with a length is checked by ureq.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        // Never pooled (`max_idle_connections(0)`).
        false
    }

    fn is_tls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_errors_come_back_from_ureq_as_they_were() {
        let ours = AccessError::Resolve {
            edge: "edge.invalid:443".into(),
            error: None,
        };
        let text = ours.to_string();
        let back = from_ureq(ureq::Error::Other(Box::new(ours)), "/p");
        assert!(matches!(back, AccessError::Resolve { .. }));
        assert_eq!(back.to_string(), text);
    }

    #[test]
    fn an_answer_without_a_length_is_not_read() {
        use ureq::http::{HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        assert!(!delimited(&h, 200));
        assert!(delimited(&h, 204));
        h.insert("transfer-encoding", HeaderValue::from_static("gzip"));
        assert!(!delimited(&h, 200));
        h.insert("transfer-encoding", HeaderValue::from_static("Chunked"));
        assert!(delimited(&h, 200));
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("12"));
        assert!(delimited(&h, 403));
    }

    #[test]
    fn an_answer_over_the_limit_names_the_path_and_the_limit() {
        let e = from_ureq(ureq::Error::BodyExceedsLimit(MAX_HTTPS_BODY as u64), "/x");
        assert_eq!(
            e.to_string(),
            format!("the edge's answer to /x is larger than {MAX_HTTPS_BODY} bytes")
        );
    }
}
