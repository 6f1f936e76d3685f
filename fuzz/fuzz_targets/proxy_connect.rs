//! The proxy variables come from the environment and the answer to CONNECT from the network:
//! whatever the bytes, picking the proxy, matching NO_PROXY, writing the request and reading
//! the answer must never panic, the request must stay one head, and an accepted answer must be
//! incomplete at every shorter prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::proto::proxy::fuzz_proxy(data);
});
