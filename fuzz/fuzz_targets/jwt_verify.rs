//! Tokens come from anyone who can reach the edge: whatever the bytes, parsing and verifying
//! against a fixed key set (one Ed25519, one P-256, one RSA key) and reading the claims must
//! never panic, only refuse.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::proto::jwt::fuzz_verify(data);
});
