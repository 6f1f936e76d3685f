//! The resumable-stream record layer fed arbitrary bytes: opening records and the record
//! stream (DATA, ACK, FIN) must never panic, deliver exactly what they count as received, and
//! never hold more than the replay buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::proto::resume::fuzz_records(data);
});
