//! Why `postern access` (or a browser login) failed, as a type: callers decide by variant
//! (`authorize` logs in again on a 401 refusal), and the advice printed with each failure is
//! chosen by variant, never by looking for words in an error's text.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::proto::http::HeadError;
use crate::proto::proxy::ProxyError;

use super::login_lock::LockError;
use super::token_cache::CacheError;

/// A failure of the client, with its cause and, where there is one, what to do about it.
/// Text from the edge in a variant is escaped for the terminal before it is stored.
#[derive(Debug)]
#[non_exhaustive]
pub enum AccessError {
    /// The port of an application given as `H:PORT` or `https://H:PORT` is not a port.
    InvalidPort(String),
    /// The application is not a DNS name (`ssh.example.com`, `https://ssh.example.com`).
    InvalidHostname(String),
    /// The trusted CAs could not be loaded: no system bundle, or the `--ca` file is
    /// unreadable or holds no usable CA (the message names the file).
    TrustStore(io::Error),
    /// rustls refused the client's TLS setup.
    TlsSetup(rustls::Error),
    /// The edge's name did not resolve (`error`), or resolved to no address (`None`).
    Resolve {
        edge: String,
        error: Option<io::Error>,
    },
    /// No TCP connection to the edge at `addr`: it is down, or egress to it is blocked.
    Unreachable { addr: SocketAddr, error: io::Error },
    /// The proxy (from `HTTPS_PROXY` or the like) refused or failed the CONNECT, or its
    /// variable is unusable.
    Proxy(ProxyError),
    /// A CONNECT through the proxy needs the edge as `HOST:PORT`.
    EdgeNotHostPort { edge: String, proxy: String },
    /// The proxy's name did not resolve (`error`), or resolved to no address (`None`).
    ProxyResolve {
        proxy: String,
        source: &'static str,
        error: Option<io::Error>,
    },
    /// No TCP connection to the proxy.
    ProxyUnreachable {
        proxy: String,
        source: &'static str,
        addr: SocketAddr,
        error: io::Error,
    },
    /// Writing the CONNECT request to the proxy, or reading its answer, failed.
    ProxyIo {
        proxy: String,
        edge: String,
        writing: bool,
        error: io::Error,
    },
    /// The edge's certificate did not verify: signed by no trusted CA, not valid for the
    /// hostname, or out of its validity period (advice by [`rustls::CertificateError`]).
    UntrustedCertificate {
        edge: String,
        hostname: String,
        error: rustls::Error,
    },
    /// TLS with the edge failed for another reason (directly, or right after the proxy's
    /// answer).
    Tls {
        edge: String,
        through_proxy: bool,
        error: io::Error,
    },
    /// The edge refused the carrier with an HTTP status; `cause` is its reason (the JSON
    /// `error`, else the status line's reason), escaped.
    Refused {
        hostname: String,
        status: u16,
        cause: String,
    },
    /// The edge refused the token a browser login had just produced.
    NewTokenRefused {
        hostname: String,
        status: u16,
        cause: String,
    },
    /// The answer is not an HTTP response head this client accepts.
    BadHead(HeadError),
    /// The edge answered, but not as postern's protocol says (the message says how).
    BadAnswer(String),
    /// The edge's answer to `path` is larger than `limit` bytes.
    AnswerTooLarge { path: String, limit: usize },
    /// The edge closed the connection `during` an exchange (e.g. "during the upgrade").
    EdgeClosed {
        during: String,
        error: Option<io::Error>,
    },
    /// The connection to the edge failed (`doing` says at which step).
    Connection {
        doing: &'static str,
        error: io::Error,
    },
    /// The edge ended the session with a WebSocket Close other than normal; `reason`
    /// (escaped) says why, e.g. the origin could not reach its service.
    SessionClosed { reason: String },
    /// The path to the edge died and no new one resumed the stream within `window` seconds;
    /// `last` is the last attempt's failure.
    NotResumed { window: u64, last: String },
    /// The credentials cannot go into an HTTP header (the message says which).
    BadCredentials(&'static str),
    /// The edge would not start a browser login (`why`: its reason, escaped, with `: `).
    LoginNotStarted {
        status: u16,
        why: String,
        older_edge: bool,
    },
    /// Nobody completed the browser login within the transfer's lifetime.
    LoginTimedOut,
    /// The browser login failed: denied, cancelled, expired, or the edge kept failing.
    Login(String),
    /// Another process's login for the same hostname did not finish in time.
    LoginLock(LockError),
    /// The token cache has no home (`HOME` unset or relative), or the message is its own.
    TokenCache(String),
    /// The token cache cannot name or read a file.
    Cache(CacheError),
    /// `access login` could not store the token it fetched.
    StoreToken(CacheError),
    /// `access tcp` cannot listen on its `--url` address (in use, or not this machine's).
    Listen { addr: SocketAddr, error: io::Error },
    /// `access curl`: no `curl` on PATH.
    CurlMissing,
    /// The local side failed: stdio, the event loop.
    Local {
        what: &'static str,
        error: io::Error,
    },
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use AccessError::*;
        match self {
            InvalidPort(s) => write!(f, "invalid port in {s:?}"),
            InvalidHostname(s) => write!(
                f,
                "invalid hostname {s:?}: expected a DNS name like ssh.example.com or \
                 https://ssh.example.com"
            ),
            TrustStore(e) => write!(f, "{e}"),
            TlsSetup(e) => write!(f, "TLS setup failed: {e}"),
            Resolve {
                edge,
                error: Some(e),
            } => write!(f, "cannot resolve the edge {edge}: {e}"),
            Resolve { edge, error: None } => write!(f, "the edge {edge} resolves to no address"),
            Unreachable { addr, error } => write!(
                f,
                "cannot reach the edge at {addr}: {error} (is the edge running, and is egress \
                 to its port allowed? set --edge or POSTERN_EDGE to the edge's address)"
            ),
            Proxy(e) => write!(f, "{e}"),
            EdgeNotHostPort { edge, proxy } => write!(
                f,
                "the edge address {edge:?} is not HOST:PORT, which a CONNECT through the proxy \
                 {proxy} needs: set --edge or POSTERN_EDGE"
            ),
            ProxyResolve {
                proxy,
                source,
                error: Some(e),
            } => write!(f, "cannot resolve the proxy {proxy} (from {source}): {e}"),
            ProxyResolve {
                proxy,
                source,
                error: None,
            } => write!(
                f,
                "the proxy {proxy} (from {source}) resolves to no address"
            ),
            ProxyUnreachable {
                proxy,
                source,
                addr,
                error,
            } => write!(
                f,
                "cannot reach the proxy {proxy} at {addr} (from {source}): {error} (is the \
                 proxy running? or name the edge in NO_PROXY to connect directly)"
            ),
            ProxyIo {
                proxy,
                edge,
                writing: true,
                error,
            } => write!(
                f,
                "sending CONNECT {edge} to the proxy {proxy} failed: {error}"
            ),
            ProxyIo {
                proxy,
                edge,
                writing: false,
                error,
            } => write!(
                f,
                "reading the answer of the proxy {proxy} to CONNECT {edge} failed: {error}"
            ),
            UntrustedCertificate {
                edge,
                hostname,
                error,
            } => {
                use rustls::CertificateError as C;
                let cert = match error {
                    rustls::Error::InvalidCertificate(c) => Some(c),
                    _ => None,
                };
                match cert {
                    Some(C::NotValidForName | C::NotValidForNameContext { .. }) => write!(
                        f,
                        "certificate not trusted: the edge at {edge} presented a certificate \
                         that is not valid for {hostname} ({error}); is --edge (or \
                         POSTERN_EDGE) the edge that serves {hostname}?"
                    ),
                    Some(
                        C::Expired
                        | C::ExpiredContext { .. }
                        | C::NotValidYet
                        | C::NotValidYetContext { .. },
                    ) => write!(
                        f,
                        "certificate not trusted: the edge at {edge} presented a certificate \
                         for {hostname} outside its validity period ({error}); check this \
                         machine's clock, or ask the edge's operator to renew the certificate"
                    ),
                    _ => write!(
                        f,
                        "certificate not trusted: the edge at {edge} presented a certificate \
                         for {hostname} that no trusted CA signed ({error}); pass --ca FILE \
                         (or POSTERN_CA) with the edge's CA"
                    ),
                }
            }
            Tls {
                edge,
                through_proxy: false,
                error,
            } => write!(f, "TLS handshake with the edge at {edge} failed: {error}"),
            Tls {
                edge,
                through_proxy: true,
                error,
            } => write!(
                f,
                "TLS with the edge at {edge} through the proxy failed: {error}"
            ),
            Refused {
                hostname,
                status,
                cause,
            } => write!(f, "the edge refused {hostname} (HTTP {status}): {cause}"),
            NewTokenRefused {
                hostname,
                status,
                cause,
            } => write!(
                f,
                "the edge refused the new token for {hostname} (HTTP {status}): {cause}"
            ),
            BadHead(e) => write!(f, "bad answer from the edge: {e}"),
            BadAnswer(m) => f.write_str(m),
            AnswerTooLarge { path, limit } => write!(
                f,
                "the edge's answer to {path} is larger than {limit} bytes"
            ),
            EdgeClosed {
                during,
                error: None,
            } => write!(f, "the edge closed the connection{during}"),
            EdgeClosed {
                during,
                error: Some(e),
            } => write!(f, "the edge closed the connection{during}: {e}"),
            Connection { doing, error } => write!(f, "{doing} failed: {error}"),
            SessionClosed { reason } => write!(f, "the edge closed the session: {reason}"),
            NotResumed { window, last } => write!(
                f,
                "the connection to the edge was lost and the session could not be resumed \
                 within {window}s (last attempt: {last})"
            ),
            BadCredentials(m) => f.write_str(m),
            LoginNotStarted {
                status,
                why,
                older_edge,
            } => write!(
                f,
                "the edge refused to start a login (HTTP {status}){why}{}",
                if *older_edge {
                    " (is the edge an older postern? update it)"
                } else {
                    ""
                }
            ),
            LoginTimedOut => {
                f.write_str("login timed out: nobody completed the login in the browser")
            }
            Login(m) => f.write_str(m),
            LoginLock(e) => write!(f, "{e}"),
            TokenCache(m) => f.write_str(m),
            Cache(e) => write!(f, "{e}"),
            StoreToken(e) => write!(f, "could not store the token: {e}"),
            Listen { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            CurlMissing => f.write_str(
                "access curl runs curl, and there is no curl on PATH: install it (apt-get \
                 install curl), or send the header yourself: curl -H \"cf-access-token: \
                 $(postern access token --app H)\" URL",
            ),
            Local { what, error } => write!(f, "{what}: {error}"),
        }
    }
}

impl std::error::Error for AccessError {}

impl From<ProxyError> for AccessError {
    fn from(e: ProxyError) -> Self {
        AccessError::Proxy(e)
    }
}

impl From<LockError> for AccessError {
    fn from(e: LockError) -> Self {
        AccessError::LoginLock(e)
    }
}

impl From<CacheError> for AccessError {
    fn from(e: CacheError) -> Self {
        AccessError::Cache(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn untrusted(c: rustls::CertificateError) -> String {
        AccessError::UntrustedCertificate {
            edge: "127.0.0.1:8443".into(),
            hostname: "ssh.example.com".into(),
            error: rustls::Error::InvalidCertificate(c),
        }
        .to_string()
    }

    #[test]
    fn certificate_advice_follows_what_is_wrong_with_the_certificate() {
        use rustls::CertificateError as C;
        let unknown = untrusted(C::UnknownIssuer);
        assert!(unknown.starts_with("certificate not trusted"), "{unknown}");
        assert!(unknown.contains("pass --ca FILE"), "{unknown}");
        let name = untrusted(C::NotValidForName);
        assert!(name.contains("not valid for ssh.example.com"), "{name}");
        assert!(name.contains("--edge"), "{name}");
        assert!(
            !name.contains("--ca"),
            "a CA does not fix a wrong name: {name}"
        );
        let expired = untrusted(C::Expired);
        assert!(expired.contains("clock"), "{expired}");
        assert!(!expired.contains("--ca"), "{expired}");
    }

    #[test]
    fn an_unreachable_edge_or_proxy_says_what_to_check() {
        let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let edge = AccessError::Unreachable {
            addr: SocketAddr::from(([127, 0, 0, 1], 9)),
            error: refused(),
        }
        .to_string();
        assert!(edge.contains("is the edge running"), "{edge}");
        assert!(edge.contains("POSTERN_EDGE"), "{edge}");
        let proxy = AccessError::ProxyUnreachable {
            proxy: "proxy:3128".into(),
            source: "HTTPS_PROXY",
            addr: SocketAddr::from(([127, 0, 0, 1], 3128)),
            error: refused(),
        }
        .to_string();
        assert!(proxy.contains("(from HTTPS_PROXY)"), "{proxy}");
        assert!(proxy.contains("NO_PROXY"), "{proxy}");
    }
}
