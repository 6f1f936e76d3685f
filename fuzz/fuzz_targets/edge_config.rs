//! The edge's JSON config is read at start-up: whatever the file holds, parsing and checking
//! it (without touching the filesystem) never panics, only names what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::edge::config::fuzz_config(data);
});
