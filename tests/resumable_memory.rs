//! Resumable streams cost bounded memory: 100 `access ssh` sessions to a service that writes
//! without end, their stdout never read, so every origin-side replay buffer fills to its
//! bound. The origin must stay within the budget README and docs/design.md §2.6 state: per
//! resumable stream at most the replay buffer (1 MiB) plus the mux buffers (a 256 KiB window
//! and a 64 KiB send buffer), plus what the process holds idle.

use crate::support;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Child as ProcessChild, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::raw::vm_rss_kib;
use support::{origin_cert, postern, require_all, service_token, tail, temp_dir, Edge, Tunnel};

const SESSIONS: usize = 100;
/// Per stream: the replay buffer, the mux receive window and send buffer, with slack for the
/// allocator (KiB).
const PER_STREAM_KIB: u64 = 1024 + 256 + 64 + 128;
/// What the origin may hold beyond the streams (its idle process, TLS buffers) (KiB).
const BASE_KIB: u64 = 48 * 1024;

/// A TCP service that writes to every connection until it blocks, counting what it wrote.
struct Flood {
    port: u16,
    written: Arc<Mutex<Vec<Arc<AtomicU64>>>>,
}

impl Flood {
    fn start() -> Flood {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the flood service");
        let port = listener.local_addr().unwrap().port();
        let written: Arc<Mutex<Vec<Arc<AtomicU64>>>> = Arc::default();
        let w = written.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let count = Arc::new(AtomicU64::new(0));
                w.lock().unwrap().push(count.clone());
                thread::spawn(move || flood(conn, &count));
            }
        });
        Flood { port, written }
    }

    /// Bytes written to each connection so far.
    fn counts(&self) -> Vec<u64> {
        let w = self.written.lock().unwrap();
        w.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

fn flood(mut conn: TcpStream, count: &AtomicU64) {
    let chunk = vec![b'x'; 64 * 1024];
    while let Ok(n) = conn.write(&chunk) {
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[test]
fn a_hundred_sessions_with_full_replay_buffers_stay_within_the_memory_budget() {
    require_all();
    let dir = temp_dir("resumable-memory");
    let flood = Flood::start();
    let edge = Edge::start(dir.path());
    let token = service_token(&edge.state, "memory");
    let cert = dir.join("cert.pem");
    origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    let hostname = "flood.localhost";
    let url = format!("tcp://127.0.0.1:{}", flood.port);
    let tunnel = Tunnel::start(dir.path(), hostname, &url, &cert, &edge);
    let origin = tunnel.child().id();
    let idle = vm_rss_kib(origin);

    let mut clients: Vec<ProcessChild> = (0..SESSIONS)
        .map(|_| {
            let mut cmd: Command = postern(dir.path());
            cmd.args(["access", "ssh", "--hostname", hostname, "--edge"])
                .arg(edge.edge_arg())
                .arg("--ca")
                .arg(edge.ca())
                .env("POSTERN_SERVICE_TOKEN_ID", &token.id)
                .env("POSTERN_SERVICE_TOKEN_SECRET", &token.secret)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd.spawn().expect("spawn postern access ssh")
        })
        .collect();

    // Every stream backs up to the flood service: each connection wrote at least a replay
    // buffer's worth, and nothing moves any more.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    let mut still_since = Instant::now();
    let mut peak = idle;
    loop {
        let counts = flood.counts();
        peak = peak.max(vm_rss_kib(origin));
        if counts != last {
            last = counts;
            still_since = Instant::now();
        } else if last.len() == SESSIONS
            && last.iter().all(|&n| n >= 1024 * 1024)
            && still_since.elapsed() > Duration::from_secs(2)
        {
            break;
        }
        if Instant::now() > deadline {
            let stderr: Vec<String> = clients
                .iter_mut()
                .take(2)
                .map(|c| {
                    let _ = c.kill();
                    let mut s = String::new();
                    if let Some(e) = c.stderr.as_mut() {
                        let _ = std::io::Read::read_to_string(e, &mut s);
                    }
                    s
                })
                .collect();
            panic!(
                "the streams never backed up: {} connections, written {:?}\nclients: {stderr:?}\n\
                 tunnel:\n{}",
                last.len(),
                &last[..last.len().min(10)],
                tail(&tunnel.child().stderr_text(), 3000)
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    let held = vm_rss_kib(origin);
    peak = peak.max(held);
    let budget = BASE_KIB.max(idle) + SESSIONS as u64 * PER_STREAM_KIB;
    eprintln!(
        "origin VmRSS: idle {idle} KiB, {SESSIONS} backed-up streams {held} KiB (peak {peak} \
         KiB, budget {budget} KiB); per stream {} KiB; flood wrote {} MiB in all",
        held.saturating_sub(idle) / SESSIONS as u64,
        last.iter().sum::<u64>() >> 20
    );
    assert!(
        peak <= budget,
        "the origin holds {peak} KiB with {SESSIONS} backed-up streams (budget {budget} KiB)"
    );
    // The replay buffers did fill: the origin holds more than the mux alone would.
    assert!(
        held.saturating_sub(idle) >= SESSIONS as u64 * 512,
        "the origin grew only {} KiB: are the streams resumable (replay buffers)?",
        held.saturating_sub(idle)
    );
    for c in &mut clients {
        let _ = c.kill();
        let _ = c.wait();
    }
}
