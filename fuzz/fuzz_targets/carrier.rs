//! The edge's carrier state machine reads requests from anyone on the internet, split however
//! TCP splits them: never a panic, one request per carrier, bodies within their bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::proto::carrier::fuzz_carrier(data);
});
