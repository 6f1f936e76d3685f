//! Sealed tokens come back from the edge over the network, and transfer ids and keys arrive
//! from browsers: opening garbage never succeeds or panics, and the pending-transfer table
//! stays bounded and hands each token over once, whatever the sequence of operations.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::proto::token_transfer::fuzz_transfer(data);
});
