//! `postern tunnel`: the origin connector. Holds N outbound TLS connections to the edge
//! (mutual TLS with the origin certificate), registers one hostname on each, and splices each
//! stream the edge opens to the local service. With several edges (`--edge` repeated: a pool),
//! the connections go round the edges, at least one each (`core::spread`).
//!
//! - `core.rs`: the link core, every decision (per connection: resolve, connect, CONNECT
//!   through a proxy, TLS, REGISTER, serve, backoff; per stream: its service; drain), with
//!   the time passed in. Its module doc has the state diagram.
//! - `driver.rs`: the mio loop around it: sockets, TLS record IO, signals, the clock.
//! - `resolve.rs`: names resolved off the loop (the driver's helper).
//! - `config.rs`, `admin.rs`: the config and credential files, the admin commands.
//!
//! With a proxy (`HTTPS_PROXY`, unless `NO_PROXY` names the edge; see `proto::proxy`), the
//! TCP connection goes to the proxy and `proxy::Connect` asks it for the edge without
//! blocking the loop, within `PROXY_ANSWER_TIMEOUT_SECS`; TLS then runs through it.

use std::time::Duration;

use crate::pki::OriginCredential;

pub mod admin;
pub mod config;
pub mod core;
pub mod doctor;
mod driver;
mod resolve;
pub mod sshd_setup;

pub use self::core::{Exit, Registration};
pub use config::{Ingress, Service};
pub use driver::Origin;

pub struct TunnelOptions {
    pub registration: Registration,
    /// Which service each hostname's streams go to.
    pub ingress: Ingress,
    pub credential: OriginCredential,
    /// The edges (at least one, at most `MAX_EDGES`), each with the SNI sent to it.
    pub edges: Vec<EdgeAddr>,
    pub extra_ca: Option<std::path::PathBuf>,
    pub ha_connections: usize,
    pub grace: Duration,
    /// How long a resumable stream whose client is gone keeps its service connection.
    pub resume_window: Duration,
}

/// One edge an origin connects to.
pub struct EdgeAddr {
    /// `host:port`.
    pub addr: String,
    /// The TLS server name (SNI) sent to it.
    pub server_name: String,
}

/// The edges a quick tunnel for `host` connects to when none is given on the command line, in
/// the environment or a config: the origin certificate's edge (a list, as [`edge_list`] reads
/// it), else `host:443`. `postern tunnel` and `tunnel doctor` both use it.
pub fn credential_edges(cred_edge: Option<&str>, host: &str) -> Result<Vec<String>, String> {
    let edges = edge_list(&[cred_edge.unwrap_or_default()])?;
    Ok(if edges.is_empty() {
        vec![format!("{host}:443")]
    } else {
        edges
    })
}

/// The edges from `--edge` (repeatable), `POSTERN_EDGE` (comma-separated) or the config's
/// `edge` (a string or a list): trimmed, duplicates dropped, at most `MAX_EDGES`.
pub fn edge_list<S: AsRef<str>>(given: &[S]) -> Result<Vec<String>, String> {
    let mut edges: Vec<String> = Vec::new();
    for e in given.iter().flat_map(|g| g.as_ref().split(',')) {
        let e = e.trim();
        if e.is_empty() {
            continue;
        }
        if !edges.iter().any(|x| x == e) {
            edges.push(e.to_owned());
        }
    }
    if edges.len() > crate::limits::MAX_EDGES {
        return Err(format!(
            "{} edges given: an origin connects to at most {}",
            edges.len(),
            crate::limits::MAX_EDGES
        ));
    }
    Ok(edges)
}

/// Maps `ssh://host:port`, `tcp://host:port` or `host:port` to `host:port`.
pub fn service_address(url: &str) -> Result<String, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("tcp", url),
    };
    let default_port = match scheme {
        "ssh" => 22,
        "tcp" => 0,
        other => {
            return Err(format!(
                "--url scheme {other}:// is not supported (use ssh:// or tcp://)"
            ))
        }
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err("--url names no host".into());
    }
    if rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        Ok(rest.to_owned())
    } else if default_port != 0 {
        Ok(format!("{rest}:{default_port}"))
    } else {
        Err(format!("--url {url} needs a port"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_come_from_repeats_and_commas_without_duplicates() {
        assert_eq!(
            edge_list(&["a:1", "b:2, c:3", "a:1", " "]).unwrap(),
            vec!["a:1", "b:2", "c:3"]
        );
        assert_eq!(edge_list::<&str>(&[]).unwrap(), Vec::<String>::new());
        let many: Vec<String> = (0..17).map(|i| format!("e{i}:443")).collect();
        assert!(edge_list(&many).unwrap_err().contains("at most 16"));
    }

    #[test]
    fn without_given_edges_the_credentials_list_else_the_hostname() {
        assert_eq!(
            credential_edges(Some(" a:1 , a:1,b:2"), "h.example").unwrap(),
            vec!["a:1", "b:2"]
        );
        assert_eq!(
            credential_edges(None, "h.example").unwrap(),
            vec!["h.example:443"]
        );
        assert_eq!(
            credential_edges(Some(" , "), "h.example").unwrap(),
            vec!["h.example:443"]
        );
    }

    #[test]
    fn service_urls() {
        assert_eq!(
            service_address("ssh://localhost:22").unwrap(),
            "localhost:22"
        );
        assert_eq!(service_address("ssh://localhost").unwrap(), "localhost:22");
        assert_eq!(
            service_address("tcp://127.0.0.1:5432").unwrap(),
            "127.0.0.1:5432"
        );
        assert_eq!(service_address("127.0.0.1:2222").unwrap(), "127.0.0.1:2222");
        assert!(service_address("http://x:1").is_err());
        assert!(service_address("tcp://x").is_err());
    }
}
