//! An interactive ssh session beside two bulk transfers on the *same* tunnel connection
//! (`--ha-connections 1`): every line it types comes back, in order, while 128 MiB go up and
//! 128 MiB come down, byte-exact. The small frames take the loops' urgent path
//! (docs/design.md §2.8, "Urgent"): a connection that stops reading for them must pick up
//! what it left in its socket in the next pass, or a transfer hangs here. While lines flow,
//! each new one wakes the loops anyway; the second test sends its frames once and then nothing,
//! so that only the next pass the edge asked for can read the rest.

use crate::support;

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use postern::limits::{INITIAL_STREAM_WINDOW, MAX_FRAME_PAYLOAD};
use postern::proto::mux::{encode, Frame};
use support::raw::{self, RawTunnel};
use support::{run_status_with_deadline, sha256_file, shell_quote, Chain, Tunnel};

const SIZE: usize = 128 * 1024 * 1024;
/// Generous for a 2-core CI machine; in release the transfers take seconds.
const DEADLINE: Duration = Duration::from_secs(180);
/// How long one typed line may take to come back before the test calls it lost.
const ECHO_DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn an_interactive_session_beside_bulk_on_one_tunnel_connection_gets_every_line_back() {
    let mut chain = Chain::start("interactive-beside-bulk", "beside.localhost");
    // The chain's tunnel has four connections; this one has one, so every stream shares it.
    let url = chain.sshd.url();
    let one = Tunnel::start_extra(
        chain.dir.path(),
        "tunnel-one-connection",
        (&chain.hostname, &url),
        &chain.origin_cert,
        &chain.edge,
        &["--ha-connections", "1"],
    );
    chain.tunnel = one; // the four-connection tunnel stops
    chain.assert_ssh_works("one-connection");

    let source = chain.dir.join("source.bin");
    let served = chain.dir.join("served.bin");
    let uploaded = chain.dir.join("uploaded.bin");
    let downloaded = chain.dir.join("downloaded.bin");
    {
        let mut w = BufWriter::new(File::create(&source).unwrap());
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..SIZE / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.write_all(&x.to_le_bytes()).unwrap();
        }
        w.flush().unwrap();
    }
    std::fs::copy(&source, &served).unwrap();
    let want = sha256_file(&source);

    // The interactive session first (its key exchange done), echoing lines back with `cat`.
    let mut echo = chain
        .ssh()
        .arg("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ssh cat");
    let mut typed = echo.stdin.take().unwrap();
    let lines = BufReader::new(echo.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in lines.lines() {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut exchange = |i: usize| {
        writeln!(typed, "line {i}").expect("type a line");
        typed.flush().unwrap();
        let got = rx
            .recv_timeout(ECHO_DEADLINE)
            .unwrap_or_else(|_| panic!("line {i} did not come back"))
            .expect("read the echo");
        assert_eq!(got, format!("line {i}"));
    };
    exchange(0);

    // Then both bulk transfers, while lines go back and forth until they are done.
    let done = Arc::new(AtomicUsize::new(0));
    let transfer = |remote: String, stdin: Stdio, stdout: Stdio, what: &'static str| {
        let mut cmd = chain.ssh();
        cmd.arg(remote).stdin(stdin).stdout(stdout);
        let done = done.clone();
        thread::spawn(move || {
            let r = run_status_with_deadline(&mut cmd, DEADLINE, what);
            done.fetch_add(1, Ordering::SeqCst);
            r
        })
    };
    let up = transfer(
        format!("cat > {}", shell_quote(&uploaded.display().to_string())),
        Stdio::from(File::open(&source).unwrap()),
        Stdio::null(),
        "upload beside an interactive session",
    );
    let down = transfer(
        format!("cat {}", shell_quote(&served.display().to_string())),
        Stdio::null(),
        Stdio::from(File::create(&downloaded).unwrap()),
        "download beside an interactive session",
    );
    let mut i = 1;
    while done.load(Ordering::SeqCst) < 2 {
        exchange(i);
        i += 1;
    }
    drop(typed);
    let _ = echo.kill();
    let _ = echo.wait();
    for (t, what) in [(up, "upload"), (down, "download")] {
        let (status, stderr) = t.join().expect("transfer thread");
        assert!(status.success(), "{what} failed ({status}): {stderr}");
    }
    eprintln!("{i} lines went back and forth beside the transfers");
    assert_eq!(sha256_file(&uploaded), want, "the upload arrived changed");
    assert_eq!(
        sha256_file(&downloaded),
        want,
        "the download arrived changed"
    );
}

/// The edge's side of the urgent path, with an origin written by hand: one byte for one
/// stream, then a whole window for another, in one write, and then nothing. The edge stops
/// reading the tunnel connection to deliver the byte first; what it left in the socket must
/// still be read on its next pass, since no new byte arrives to wake it.
#[test]
fn a_byte_for_one_stream_then_a_window_for_another_all_arrive_though_nothing_follows() {
    const RAW: &str = "raw.localhost";
    let chain = Chain::start("urgent-then-bulk", "ssh.localhost");
    let mut t = RawTunnel::register(chain.edge.addr, &chain.edge.ca(), &chain.origin_cert, RAW);
    let mut open = || t.open_stream(chain.edge.addr, &chain.edge.ca(), RAW, &chain.token);
    let (mut small, a) = open();
    let (mut bulk, b) = open();
    let mut frames = Vec::new();
    encode(
        &mut frames,
        &Frame::Data {
            stream: a,
            data: b"x",
        },
    );
    let chunk = vec![0x5a; MAX_FRAME_PAYLOAD];
    let window = INITIAL_STREAM_WINDOW as usize;
    for _ in 0..window / chunk.len() {
        encode(
            &mut frames,
            &Frame::Data {
                stream: b,
                data: &chunk,
            },
        );
    }
    t.send_bytes(&frames);
    let got = payload(&mut small, 1).unwrap_or_else(|e| panic!("the byte: {e}"));
    assert_eq!(got, b"x");
    let got = payload(&mut bulk, window).unwrap_or_else(|e| panic!("the window: {e}"));
    assert!(got.iter().all(|&b| b == 0x5a));
}

/// Reads the edge's WebSocket frames (never masked) until their payloads add up to `want`.
fn payload(tls: &mut raw::Tls, want: usize) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut wire = Vec::new();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    while got.len() < want {
        while let Some((_, payload)) = raw::next_frame(&mut wire) {
            got.extend_from_slice(&payload);
        }
        if got.len() >= want {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{} of {want} bytes within 20 s", got.len()));
        }
        match tls.read(&mut buf) {
            Ok(0) => return Err(format!("EOF after {} of {want} bytes", got.len())),
            Ok(n) => wire.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("read after {} of {want} bytes: {e}", got.len())),
        }
    }
    Ok(got)
}
