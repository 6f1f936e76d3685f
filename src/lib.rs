//! postern: zero-trust SSH access in one binary — edge, origin tunnel and client.
//!
//! ```text
//!  proto/   codecs and protocol state machines: bytes and time in, events and bytes out.
//!           No files, sockets, clock or threads (`proto::tests` checks it).
//!  edge/ tunnel/ access/   the three roles, each a core that decides (edge/core/,
//!           tunnel/core.rs, access/core.rs: time passed in, tested in memory) and a
//!           driver.rs that runs its mio loop.
//!  io/      sockets, TLS records, stdio, signals, resource limits, the clock: the OS.
//!  store/   what the edge persists or shares: the `Store` trait, the state directory behind
//!           it, and the worker thread that runs it off the edge's loop.
//!  audit, logging, metrics, oidc, pki, service, limits: shared services of the roles.
//!  cloudflared: cloudflared's flags and `TUNNEL_*` variables mapped onto postern's (data).
//! ```
//!
//! Only `io/` and the drivers named in `layout_tests.rs` (each with its reason) touch the OS
//! or the clock; a unit test checks it. See `docs/design.md` for the why.
// `deny`, not `forbid`: `io::sys` alone allows `unsafe` (the libc calls that std lacks;
// vendor-policy.md, "`unsafe`"). `io`'s test `unsafe_code_lives_only_in_sys` keeps it so.
#![deny(unsafe_code)]
#![forbid(unused_must_use)]

pub mod access;
pub mod audit;
pub mod cloudflared;
pub mod edge;
pub mod io;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod oidc;
pub mod pki;
pub mod proto;
pub mod secret;
pub mod service;
pub mod sshca;
pub mod store;
pub mod tunnel;

#[cfg(test)]
mod layout_tests;
#[cfg(test)]
mod pipe_tests;
