//! Response heads come from the edge (or whatever answers in its place): never panic, never
//! claim more bytes than given, and read back what `write_response` writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::proto::http::{parse_response_head, write_response, HeadLimits};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits::default();
    let Ok(Some((head, consumed))) = parse_response_head(data, &limits) else {
        return;
    };
    assert!(consumed <= data.len());
    assert_eq!(
        parse_response_head(&data[..consumed - 1], &limits),
        Ok(None)
    );
    // write_response frames the body itself: compare all but the framing headers.
    let framing = |n: &str| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    };
    let kept: Vec<(&str, &str)> = head
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .filter(|(n, _)| !framing(n))
        .collect();
    let mut out = Vec::new();
    write_response(&mut out, head.status, &head.reason, &kept, &[]);
    // Room for `name: value` normalisation and the added `Content-Length: 0`.
    let roomier = HeadLimits {
        max_head_bytes: 2 * limits.max_head_bytes,
        max_headers: limits.max_headers + 1,
    };
    let (again, used) = parse_response_head(&out, &roomier).unwrap().unwrap();
    assert_eq!(
        (used, again.status, again.reason.as_str()),
        (out.len(), head.status, head.reason.as_str())
    );
    let again_kept: Vec<(&str, &str)> = again
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .filter(|(n, _)| !framing(n))
        .collect();
    assert_eq!(again_kept, kept);
});
