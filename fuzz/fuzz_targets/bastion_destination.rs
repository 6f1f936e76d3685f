//! A `--destination` is peer text that travels from the client through the edge to the origin:
//! it parses into a canonical form that parses back to itself (no CR, LF, space or user@ in
//! it), or is refused; allow-list patterns never panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::proto::destination::fuzz_destination(data);
});
