//! parse(sign(c)) == c for any certificate the encoder agrees to sign (principals, key id,
//! validity and extensions drawn from the input), and the encoder refuses, never panics,
//! on fields it must not write (no principal, bad names, inverted validity).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    postern::proto::sshkey::fuzz_certificate_roundtrip(data);
});
