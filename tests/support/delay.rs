//! A long path on loopback: a TCP relay that holds each direction's bytes for a set time
//! before passing them on, and counts how many it holds (the bytes in flight on that path).
//! The kernel has no `netem` here (../shared/REAL-PARTS.md), so the delay is a userspace one.
//! It relays as fast as it reads: the sender's TCP never waits on it, so what bounds the bytes
//! in flight is the window of whatever protocol runs over it.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One direction of the relay, shared by all its connections.
#[derive(Default)]
pub struct Line {
    /// How long a byte is held, in microseconds (changeable while the relay runs).
    delay_us: AtomicU64,
    /// Bytes read and not yet passed on.
    held: AtomicUsize,
    /// The most `held` reached since the last [`Line::reset_peak`].
    peak: AtomicUsize,
}

impl Line {
    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn reset_peak(&self) {
        self.peak
            .store(self.held.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn hold(&self, n: usize) {
        let now = self.held.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn release(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }
}

pub struct DelayRelay {
    pub addr: SocketAddr,
    /// From the side that connects to the relay toward `target`.
    pub up: Arc<Line>,
    /// From `target` back to the side that connected.
    pub down: Arc<Line>,
}

impl DelayRelay {
    /// Listens on 127.0.0.1 and relays each connection to `target`, holding bytes `up` and
    /// `down` for the given times.
    pub fn start(target: SocketAddr, up: Duration, down: Duration) -> DelayRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the delay relay");
        let addr = listener.local_addr().unwrap();
        let (up_line, down_line) = (Arc::new(Line::default()), Arc::new(Line::default()));
        up_line.set_delay(up);
        down_line.set_delay(down);
        let (u, d) = (up_line.clone(), down_line.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                pass(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    u.clone(),
                );
                pass(server, client, d.clone());
            }
        });
        DelayRelay {
            addr,
            up: up_line,
            down: down_line,
        }
    }
}

/// What waits in one direction of one connection: (due, bytes), or `None` for the end.
type Queue = Arc<(Mutex<VecDeque<(Instant, Option<Vec<u8>>)>>, Condvar)>;

/// Relays `from` to `to` through `line`: one thread reads and stamps, one waits and writes.
fn pass(mut from: TcpStream, mut to: TcpStream, line: Arc<Line>) {
    let queue: Queue = Arc::default();
    let (q, l) = (queue.clone(), line.clone());
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let got = match from.read(&mut buf) {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(buf[..n].to_vec()),
            };
            let due = Instant::now() + Duration::from_micros(l.delay_us.load(Ordering::Relaxed));
            let end = got.is_none();
            if let Some(b) = &got {
                l.hold(b.len());
            }
            q.0.lock().unwrap().push_back((due, got));
            q.1.notify_one();
            if end {
                return;
            }
        }
    });
    thread::spawn(move || loop {
        let (due, chunk) = {
            let mut waiting = queue.0.lock().unwrap();
            loop {
                if let Some(head) = waiting.pop_front() {
                    break head;
                }
                waiting = queue.1.wait(waiting).unwrap();
            }
        };
        let wait = due.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            thread::sleep(wait);
        }
        let Some(chunk) = chunk else {
            let _ = to.shutdown(Shutdown::Write);
            return;
        };
        let ok = to.write_all(&chunk).is_ok();
        line.release(chunk.len());
        if !ok {
            return;
        }
    });
}
