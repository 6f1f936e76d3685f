//! Waiting on state, not on log text: every edge and origin the harness starts serves
//! `/metrics` and `/ready` (`--metrics ADDR` / `POSTERN_METRICS`), and the harness waits on what
//! `/ready` says.
//!
//! ```text
//! edge   /ready {"status":503|200, "readyConnections":N, "connectorId":…, "listening":"IP:PORT"|null}
//! origin /ready {"status":503|200, "readyConnections":N, "connectorId":…}
//! ```
//!
//! - the edge is listening: its `listening` is an address (the one it bound, so `--listen
//!   127.0.0.1:0` needs no log line to be found);
//! - N tunnel connections are registered: `readyConnections >= N` (on an origin: its own
//!   connections the edge acknowledged; on an edge: the tunnel connections it holds registered).
//!
//! Both processes recount `readyConnections` once a second, so a wait on it takes up to a
//! second longer than the event itself. Log lines stay what tests *assert* on (a refusal names
//! its limit, peer text is escaped), never what they wait for.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, tail, try_http_get, Child, POLL};

/// An address for a `--metrics` listener of a process the harness starts: a port free a moment
/// ago (the process reports a bind failure by exiting; [`wait_ready`] then says so).
pub fn metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// `GET /ready` once: `None` while nothing answers on `addr` (not bound yet) or what answers
/// is not a `/ready` (not ours), else the status and the JSON body.
pub fn try_ready(addr: &SocketAddr) -> Option<(u16, serde_json::Value)> {
    let (status, body) = try_http_get(addr, "/ready").ok()?;
    // Not JSON: another process holds the port (the child then exits for want of it, and
    // `wait_ready` says so), or a bug, which the wait's deadline reports with the child's log.
    let v = serde_json::from_str(&body).ok()?;
    Some((status, v))
}

/// Polls `/ready` on `addr` (served by `child`) until `holds` is true of its JSON; returns that
/// JSON. `Err` with `child`'s stderr when the deadline passes or `child` exits first.
pub fn wait_ready(
    child: &Child,
    addr: &SocketAddr,
    deadline: Duration,
    what: &str,
    holds: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, String> {
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Some((_, v)) = try_ready(addr) {
            if holds(&v) {
                return Ok(v);
            }
            last = Some(v);
        }
        let why = if let Some(status) = child.try_wait() {
            format!("exited ({status})")
        } else if start.elapsed() > deadline {
            format!("still running after {deadline:?}")
        } else {
            thread::sleep(POLL);
            continue;
        };
        let last = match last {
            Some(v) => format!("last /ready: {v}"),
            None => "/ready never answered".to_owned(),
        };
        return Err(format!(
            "{} {why} before {what} ({last} on {addr}); stderr:\n{}",
            child.name(),
            tail(&child.stderr_text(), 4000)
        ));
    }
}

/// Waits until the edge `child` (serving `/ready` on `metrics`) has bound its listener; returns
/// the address it listens on.
pub fn wait_edge_listening(
    child: &Child,
    metrics: &SocketAddr,
    deadline: Duration,
) -> Result<SocketAddr, String> {
    let v = wait_ready(child, metrics, deadline, "the edge listens", |v| {
        v["listening"].is_string()
    })?;
    let addr = v["listening"].as_str().expect("a string");
    addr.parse()
        .map_err(|e| format!("/ready listening {addr:?} is not an address: {e}"))
}

/// Waits until at least `n` tunnel connections are registered, as `/ready` on `metrics` (served
/// by `child`, an origin or an edge) counts them.
pub fn wait_registered_connections(
    child: &Child,
    metrics: &SocketAddr,
    n: u64,
    deadline: Duration,
) -> Result<serde_json::Value, String> {
    wait_ready(
        child,
        metrics,
        deadline,
        &format!("{n} tunnel connection(s) registered"),
        |v| v["readyConnections"].as_u64().is_some_and(|r| r >= n),
    )
}

/// True when `child` exited because its `--metrics` port was taken meanwhile (the harness then
/// starts it again on another port).
pub fn lost_metrics_port(child: &Child) -> bool {
    let text = child.stderr_text();
    child.try_wait().is_some() && text.contains("--metrics ") && text.contains("cannot listen: ")
}
