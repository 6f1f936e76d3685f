//! `postern edge`: the public side, split the sans-IO way.
//!
//! ```text
//!  edge/
//!    core/         the decisions, with the time passed in (no socket, clock, file or thread)
//!      mod.rs      EdgeCore: connections by slot, accept limits, ALPN roles, deadlines, shutdown
//!      carrier.rs  a carrier's request ─▶ auth ─▶ policy ─▶ route ─▶ 101 ─▶ splice to a stream
//!      tunnel.rs   a tunnel connection's frames, HELLO, REGISTER, stream events, its end
//!      login.rs    the login pages, OIDC callback, confirmation, token transfer
//!      admin.rs    the tunnel administration API
//!      sshcert.rs  /cdn-cgi/access/cert_sign (short-lived SSH certificates) and /ssh-ca
//!      view.rs     the store's records as the checks see them; who waits for the store
//!      tests.rs    the core driven in memory with a simulated clock
//!    driver.rs     the mio loop, accept, signals, config reload, the clock, worker threads
//!    config.rs     the config file and the secrets it names
//!    sshcerts.rs   an application's `ssh_certificates`: principals, lifetime, extensions
//! ```
//!
//! One mio loop holds every connection:
//!
//! ```text
//!  TCP accept ─▶ Accepting (read ClientHello; ALPN picks the role)
//!                 ├─ "postern-tunnel/1" ─▶ Tunnel  (mutual TLS, mux Session, REGISTER)
//!                 ├─ "postern-admin/1"  ─▶ Admin   (mutual TLS, one JSON request: admin.rs)
//!                 └─ otherwise          ─▶ Carrier (HTTP head ─▶ auth ─▶ 101 ─▶ WebSocket stream)
//! ```

pub mod config;
pub(crate) mod core;
mod driver;
pub mod sshcerts;

pub use self::core::{admin, refusal, LimitCounters};
pub use config::{Application, EdgeSettings};
pub use driver::Edge;

/// The one host-name rule (`proto::dns`), named here for the edge's modules.
pub(crate) use crate::proto::dns::valid_hostname;
