//! WebSocket frames from carrier peers, decoded on both sides with tiny consumer windows:
//! never a panic, whatever the masking, lengths or control frames.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::proto::ws::fuzz_decode(data);
});
