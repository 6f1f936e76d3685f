//! The ssh-agent's answer to `access ssh --short-lived-cert`'s add request: whatever the
//! socket sends (another program listening there, a truncated or huge message) is an answer
//! or an error, never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::access::agent::fuzz_reply(data);
});
