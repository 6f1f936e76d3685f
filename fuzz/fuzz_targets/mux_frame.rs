//! Tunnel frames come from the other end of a TLS connection we do not fully trust: the
//! decoder never panics, never claims more than it was given, and what it decodes encodes
//! back to exactly the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::proto::mux::{decode_frame, encode};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = decode_frame(rest) {
        assert!(used <= rest.len());
        let mut out = Vec::new();
        encode(&mut out, &frame);
        assert_eq!(&out[..], &rest[..used], "round trip of {frame:?}");
        rest = &rest[used..];
    }
});
