//! postern: zero-trust SSH access in one binary — edge, origin tunnel and client.
//!
//! Protocol modules are sans-IO (bytes and time in, events and bytes out); only `io` touches
//! sockets, the clock and the OS. See `docs/design.md` for the why.
// `deny`, not `forbid`: `io::sys` alone allows `unsafe` (the libc calls that std lacks;
// vendor-policy.md, "`unsafe`"). `io`'s test `unsafe_code_lives_only_in_sys` keeps it so.
#![deny(unsafe_code)]
#![forbid(unused_must_use)]

pub mod access;
pub mod audit;
pub mod base64;
pub mod buf;
pub mod edge;
pub mod http;
pub mod io;
pub mod jwt;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod mux;
pub mod oidc;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod reader;
pub mod service;
pub mod state;
pub mod token_transfer;
pub mod tunnel;
pub mod url;
pub mod ws;
