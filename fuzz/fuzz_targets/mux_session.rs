//! The mux state machine fed arbitrary frame sequences, on both sides: stream life cycle,
//! windows, resets and keepalives must never panic, only end the connection with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::proto::mux::fuzz_session(data);
});
