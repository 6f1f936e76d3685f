//! An unauthenticated client cannot fill the disk through the audit log: a Host header that
//! is not a hostname is recorded clipped and escaped, and repeated denials from one source
//! are one audit line and one log line per interval, with the repeats counted.

use crate::support;

use std::io::Write;

use support::{raw, temp_dir, Edge};

const REQUESTS: usize = 200;

#[test]
fn a_flood_of_host_mismatches_writes_a_bounded_audit_log() {
    let dir = temp_dir("audit-flood");
    let edge = Edge::start(dir.path());
    let audit = edge.state.join("audit.log");
    let host = "x".repeat(10 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    for i in 0..REQUESTS {
        let mut tls = raw::carrier(edge.addr, &edge.ca(), "ssh.localhost");
        tls.write_all(request.as_bytes()).expect("send request");
        let (head, _) = raw::read_head(&mut tls);
        assert!(
            head.starts_with("HTTP/1.1 421"),
            "request {i}: Host ≠ SNI gets 421, got:\n{head}"
        );
    }
    // Still serving, and what is pending is written at shutdown.
    edge.child().stop();
    let text = std::fs::read_to_string(&audit).expect("audit.log");
    let size = text.len();
    assert!(
        size < 2048,
        "{REQUESTS} requests with a 10 KiB Host wrote {size} bytes of audit log:\n{}",
        &text[..text.len().min(2000)]
    );
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect();
    let first: Vec<_> = records
        .iter()
        .filter(|r| r["reason"] == "host header does not match SNI")
        .collect();
    assert_eq!(first.len(), 1, "one record for the first denial:\n{text}");
    assert_eq!(
        first[0]["hostname"],
        format!("{}…(10240 bytes)", "x".repeat(64)),
        "the Host is clipped, with its length"
    );
    let repeats: Vec<_> = records
        .iter()
        .filter(|r| r["reason"] == "host_mismatch")
        .collect();
    assert_eq!(repeats.len(), 1, "one record counting the rest:\n{text}");
    assert_eq!(repeats[0]["repeated"], REQUESTS as u64 - 1, "{text}");
    assert_eq!(repeats[0]["decision"], "deny");
    let stderr = edge.stderr_text();
    assert!(
        stderr.matches("denied ").count() <= 2,
        "the log gets one line for the denial and one for its repeats:\n{}",
        &stderr[stderr.len().saturating_sub(3000)..]
    );
    assert!(
        !stderr.contains(&"x".repeat(65)),
        "the log never holds more than the clipped Host"
    );
}
