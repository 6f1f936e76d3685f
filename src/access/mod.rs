//! `postern access`: the client. Opens a carrier (TLS + WebSocket) to the edge for a
//! hostname and splices it with ssh's stdio (`access ssh`, a ProxyCommand) or with TCP
//! connections accepted on a local port (`access tcp`).
//!
//! The carrier is set up blocking, before the loop (DNS, TCP connect, TLS handshake, HTTP
//! upgrade: `connect.rs`), so every failure can be reported with its cause and fix; `access
//! tcp` does that on a thread per setup (`listener.rs`), never on its loop. Then the splice
//! moves bytes both ways through bounded buffers: its decisions (framing, backpressure,
//! close and half-close, pings) are a sans-IO core (`core.rs`), its sockets and mio loop a
//! driver (`driver.rs`):
//!
//! ```text
//!  local ──read──▶ core: masked WS frames ──▶ TLS ──▶ edge
//!  local ◀──write── core: out (bounded) ◀── WS decoder ◀── TLS ◀── edge
//! ```
//!
//! | module | role |
//! |---|---|
//! | `core` | the splice's state machine: no IO, no clock |
//! | `driver` | the splice's mio loop (`access ssh`) and per-session pump |
//! | `listener` | `access tcp`: accept loop, setup threads |
//! | `connect` | the carrier's blocking setup: TCP, proxy CONNECT, TLS, WebSocket upgrade |
//! | `upgrade` | the WebSocket upgrade's request and answer checks: no IO |
//! | `doctor` | `access doctor`: each hop of the path checked in turn, the failing one named |
//! | `https` | one-shot HTTPS requests (login transfer, tunnel admin): ureq over that setup |
//! | `authorize`, `login`, `login_lock`, `token_cache` | credentials and browser login |
//! | `edge_key` | the edge's key (SPKI hash): recorded at a login, pinned for zone sessions |

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;

use crate::logging::untrusted;
use crate::secret::Secret;

pub mod agent;
mod authorize;
mod connect;
pub(crate) mod core;
pub mod curl;
pub(crate) mod doctor;
mod driver;
mod edge_key;
mod error;
mod https;
mod listener;
pub mod login;
mod login_lock;
pub(crate) mod resumable;
pub mod sshgen;
pub mod token_cache;
pub(crate) mod upgrade;

pub use authorize::login_and_cache;
pub use connect::{connect, tls_connect};
pub use doctor::doctor;
pub use driver::ssh;
pub use error::AccessError;
pub use https::{https_get, https_request, https_request_with, MAX_HTTPS_BODY};
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
    /// `Postern-Resume` to ask for in the upgrade (`access ssh`; docs/design.md §2.6).
    pub resume: Option<String>,
    /// What the edge's 101 granted in its `Postern-Resume` (the origin connector).
    pub resume_granted: Option<String>,
    /// Bastion mode: where the origin should connect (`--destination`), in its canonical
    /// form (`proto::destination`), sent as `Cf-Access-Jump-Destination`.
    pub destination: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
