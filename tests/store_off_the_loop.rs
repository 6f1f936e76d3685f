//! The edge never waits for its state store on its event loop. A client can make the store
//! work hard (unknown service-token ids make it look the id up in `service-tokens.json`, read
//! again whenever the file changed), and an operator can grow the file large; meanwhile every
//! other client is served as fast as before. A token created while the edge runs is found
//! (off the loop) at its first use.

use crate::support;

use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use support::{raw, service_token, temp_dir, wait_until, Edge, ServiceToken};

const HOST: &str = "ssh.localhost";
/// Records in the large token file (about 60 MB of JSON).
const TOKENS: usize = 250_000;
/// Threads sending unknown token ids back to back.
const FLOODERS: usize = 8;
/// A client that needs no store is answered within this, however busy the store is.
const PROBE_DEADLINE: Duration = Duration::from_millis(500);

/// Replaces the edge's `service-tokens.json` with `n` made-up records (atomically, as
/// `service-token create` would), in the format the edge has always read.
fn write_large_token_file(state: &Path, n: usize) {
    let mut text = String::with_capacity(n * 240);
    text.push_str("{\n  \"tokens\": [\n");
    for i in 0..n {
        if i > 0 {
            text.push_str(",\n");
        }
        text.push_str(&format!(
            "    {{\n      \"name\": \"bulk-{i}\",\n      \"client_id\": \"{i:032x}.access\",\n      \
             \"secret_sha256\": \"{}\",\n      \"created\": 1700000000\n    }}",
            "0".repeat(64)
        ));
    }
    text.push_str("\n  ]\n}\n");
    let tmp = state.join(".service-tokens.json.test-tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, state.join("service-tokens.json")).unwrap();
}

/// One request without credentials on a fresh carrier: the edge answers 401 from its own
/// memory. Returns how long the whole exchange (TCP, TLS, request, answer) took.
fn probe(edge: SocketAddr, ca: &Path) -> Duration {
    let start = Instant::now();
    let mut tls = raw::carrier(edge, ca, HOST);
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).unwrap();
    let (head, _) = raw::read_head(&mut tls);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    start.elapsed()
}

/// Sends requests with unknown token ids until `stop`, counting the answers in `answered`;
/// errors (timeouts) are fine here.
fn flood(edge: SocketAddr, ca: &Path, n: usize, stop: &AtomicBool, answered: &AtomicUsize) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let Ok(mut tls) = raw::try_carrier(edge, ca, HOST) else {
            continue;
        };
        let token = ServiceToken {
            id: format!("{n:x}{i:016x}.access"),
            secret: "0".repeat(64),
        };
        if tls.write_all(&raw::upgrade_request(HOST, &token)).is_err() {
            continue;
        }
        let mut buf = [0u8; 512];
        if tls.read(&mut buf).is_ok_and(|got| got > 0) {
            answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn a_busy_state_store_does_not_slow_down_other_clients() {
    let dir = temp_dir("store-off-loop");
    let edge = Edge::start(dir.path());
    let ca = edge.ca();
    write_large_token_file(&edge.state, TOKENS);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    // The file keeps changing (an operator's script adding tokens, say): every lookup of an
    // unknown id reads it whole again.
    {
        let (stop, path) = (stop.clone(), edge.state.join("service-tokens.json"));
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let f = fs::File::options().append(true).open(&path).unwrap();
                f.set_modified(SystemTime::now()).unwrap();
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
    }
    for n in 0..FLOODERS {
        let (stop, ca, answered) = (stop.clone(), ca.clone(), answered.clone());
        let addr = edge.addr;
        threads.push(std::thread::spawn(move || {
            flood(addr, &ca, n, &stop, &answered)
        }));
    }
    // Once the flood is under way (the store has answered some), measure everyone else.
    wait_until(
        Duration::from_secs(120),
        "the flood's first answers",
        || answered.load(Ordering::Relaxed) >= FLOODERS,
    );
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        slowest = slowest.max(probe(edge.addr, &ca));
    }
    stop.store(true, Ordering::Relaxed);
    let flooded = answered.load(Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        slowest < PROBE_DEADLINE,
        "a client that needs nothing from the store waited {slowest:?} while others made the \
         store read a large file ({flooded} unknown ids answered); edge log:\n{}",
        support::tail(&edge.stderr_text(), 3000)
    );

    // A token created now (the CLI rewrites the large file) works at its first use.
    let fresh = service_token(&edge.state, "fresh");
    let mut tls = raw::carrier(edge.addr, &ca, HOST);
    tls.write_all(&raw::upgrade_request(HOST, &fresh)).unwrap();
    let (head, body) = raw::read_head(&mut tls);
    let mut body = String::from_utf8_lossy(&body).into_owned();
    let _ = tls.read_to_string(&mut body);
    assert!(
        head.starts_with("HTTP/1.1 404") && body.contains("not registered"),
        "the new token is accepted (then no tunnel serves {HOST}):\n{head}{body}"
    );
}

/// Sends an upgrade with `token`; returns the status line and body.
fn answer_to(edge: &Edge, token: &ServiceToken) -> String {
    let mut tls = raw::carrier(edge.addr, &edge.ca(), HOST);
    tls.write_all(&raw::upgrade_request(HOST, token)).unwrap();
    let (head, body) = raw::read_head(&mut tls);
    let text = head + &String::from_utf8_lossy(&body);
    let mut rest = String::new();
    let _ = tls.read_to_string(&mut rest);
    text + &rest
}

#[test]
fn a_token_deleted_from_the_file_is_refused_once_the_file_is_read_again() {
    let dir = temp_dir("store-token-deleted");
    let edge = Edge::start(dir.path());
    let kept = service_token(&edge.state, "kept");
    let deleted = service_token(&edge.state, "deleted");
    for t in [&kept, &deleted] {
        let a = answer_to(&edge, t);
        assert!(a.starts_with("HTTP/1.1 404"), "accepted (no tunnel): {a}");
    }
    // The operator deletes the token from the file while the edge runs.
    let path = edge.state.join("service-tokens.json");
    let mut file: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    file["tokens"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["name"] != "deleted");
    let tmp = edge.state.join(".service-tokens.json.test-tmp");
    fs::write(&tmp, file.to_string()).unwrap();
    fs::rename(&tmp, &path).unwrap();
    // Any unknown id makes the edge read the file again.
    let unknown = ServiceToken {
        id: "0123456789abcdef0123456789abcdef.access".into(),
        secret: "0".repeat(64),
    };
    assert!(answer_to(&edge, &unknown).starts_with("HTTP/1.1 403"));
    let a = answer_to(&edge, &deleted);
    assert!(
        a.starts_with("HTTP/1.1 403"),
        "the deleted token is refused: {a}"
    );
    let a = answer_to(&edge, &kept);
    assert!(
        a.starts_with("HTTP/1.1 404"),
        "the other one still works: {a}"
    );
}
