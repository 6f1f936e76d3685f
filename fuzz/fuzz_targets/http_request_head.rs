//! Request heads come from anyone on the internet: never panic, never claim more bytes than
//! given, need more until the last byte, and read back exactly what `write_request` writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::proto::http::{parse_request_head, write_request, HeadLimits};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits::default();
    let Ok(Some((head, consumed))) = parse_request_head(data, &limits) else {
        return;
    };
    assert!(consumed <= data.len());
    assert_eq!(parse_request_head(&data[..consumed - 1], &limits), Ok(None));
    let headers: Vec<(&str, &str)> = head
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let mut out = Vec::new();
    write_request(&mut out, &head.method, &head.target, &headers);
    // Re-encoding turns `name:value` into `name: value`: up to one more byte per header.
    let roomier = HeadLimits {
        max_head_bytes: limits.max_head_bytes + limits.max_headers,
        ..limits
    };
    assert_eq!(
        parse_request_head(&out, &roomier),
        Ok(Some((head, out.len())))
    );
});
