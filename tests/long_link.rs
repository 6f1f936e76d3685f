//! One ssh session fills a long path. The origin's tunnel reaches the edge through a relay
//! that holds bytes for 50 ms: a continent away, on loopback. A mux stream's initial window
//! (256 KiB) would let at most that much of a transfer be in flight, about 5 MB/s at 50 ms
//! whatever the bandwidth; the receiver grows the window of a stream whose reader keeps up
//! (docs/design.md §2.4), so ssh's own window becomes the limit (OpenSSH's session window is
//! 2 MiB; about 1 MiB was in flight at once here, 20 MB/s at 50 ms).
//! The relay counts the bytes it holds: more than three initial windows at once proves a grown
//! window, both ways (the edge grows it for a download, the origin for an upload). Real sshd
//! with its defaults, real ssh, the origin with its default four connections.

use crate::support;

use std::fs;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::delay::DelayRelay;
use support::{
    origin_cert, proxy_command, require_all, service_token, tail, temp_dir, Edge, EdgeRef, Sshd,
    Tunnel,
};

const PATH_RTT: Duration = Duration::from_millis(50);
const TRANSFER: usize = 32 * 1024 * 1024;
/// Three initial windows: a stream whose window did not grow cannot have more in flight (its
/// sender may not pass the credit it was given); ssh's own limit is about 1 MiB.
const GROWN: usize = 768 * 1024;

#[test]
fn one_ssh_session_fills_a_long_path_both_ways() {
    require_all();
    let dir = temp_dir("long-link");
    let sshd = Sshd::start_default(dir.path());
    let edge = Edge::start(dir.path());
    let token = service_token(&edge.state, "long");
    let cert = dir.join("cert.pem");
    origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    // The round trip is measured when a tunnel connection starts: half each way then.
    let relay = DelayRelay::start(edge.addr, PATH_RTT / 2, PATH_RTT / 2);
    let far = EdgeRef {
        addr: relay.addr,
        ca: edge.ca(),
    };
    let tunnel = Tunnel::start_with(
        dir.path(),
        "tunnel",
        "far.localhost",
        &sshd.url(),
        &cert,
        &far,
    );
    let proxy = proxy_command(&edge.addr, &edge.ca(), &token);
    let home = dir.join("home");
    fs::create_dir_all(&home).unwrap();
    let ssh = |remote: &str| {
        let mut cmd = sshd.ssh_command("far.localhost", &proxy);
        cmd.env("HOME", &home).arg(remote);
        cmd
    };
    let logs = || {
        format!(
            "edge:\n{}\ntunnel:\n{}",
            tail(&edge.stderr_text(), 3000),
            tail(&tunnel.child().stderr_text(), 3000)
        )
    };
    // What the relay held at most (`peak`) during one transfer that took `took`.
    let grew = |what: &str, took: Duration, peak: usize| {
        eprintln!(
            "{what}: {} MiB in {took:?} over a {PATH_RTT:?} path, {peak} bytes in flight at most",
            TRANSFER >> 20
        );
        assert!(
            peak > GROWN,
            "{what}: at most {peak} bytes were in flight on the {PATH_RTT:?} path: the window did not grow\n{}",
            logs()
        );
    };

    // Download: all of the delay on the way to the edge, where the data goes, so what the
    // relay holds that way is everything in flight.
    relay.up.set_delay(PATH_RTT);
    relay.down.set_delay(Duration::ZERO);
    relay.up.reset_peak();
    let started = Instant::now();
    let mut child = ssh(&format!("head -c {TRANSFER} /dev/zero"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh");
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0usize;
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                assert!(
                    buf[..n].iter().all(|b| *b == 0),
                    "the download is not zeros"
                );
                got += n;
            }
            Err(e) => panic!("read the download after {got} bytes: {e}"),
        }
    }
    let status = child.wait().unwrap();
    let took = started.elapsed();
    let peak = relay.up.peak();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success() && got == TRANSFER,
        "download: {status}, {got} of {TRANSFER} bytes\nssh: {err}\n{}",
        logs()
    );
    grew("download", took, peak);

    // Upload: the delay the other way.
    relay.up.set_delay(Duration::ZERO);
    relay.down.set_delay(PATH_RTT);
    relay.down.reset_peak();
    let started = Instant::now();
    let mut child = ssh("wc -c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh");
    let mut input = child.stdin.take().unwrap();
    let block = vec![0x5au8; 256 * 1024];
    for _ in 0..TRANSFER / block.len() {
        input.write_all(&block).expect("write the upload");
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    let took = started.elapsed();
    let peak = relay.down.peak();
    let counted = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success() && counted == TRANSFER.to_string(),
        "upload: {}, the far end counted {counted:?} of {TRANSFER}\nssh: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        logs()
    );
    grew("upload", took, peak);
}
