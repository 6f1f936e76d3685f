//! loadgen: the load generator and sink of `scripts/bench`. Sync, one thread per sink
//! connection, std only but for `relay --loop`, which uses mio as postern does (a benchmark
//! tool, not part of postern).
//!
//! ```text
//! loadgen sink ADDR                       serve: greet, then obey the client's header
//! loadgen probe ADDR                      exit 0 once ADDR greets within 2 s (readiness)
//! loadgen upload ADDR BYTES               send BYTES, wait for the sink's count
//! loadgen download ADDR BYTES [--slow MBPS SECS]   receive BYTES (optionally throttled first)
//! loadgen pingpong ADDR COUNT             COUNT 1-byte round trips: p50/p99 µs
//! loadgen pingpong-under ADDR COUNT up|down [MBPS] [--bulk-via BULK]
//!                                         the same while a second connection to ADDR moves
//!                                         bulk data (paced to MBPS, else as fast as it can);
//!                                         with --bulk-via, the bulk goes to BULK instead
//! loadgen connect ADDR COUNT              COUNT fresh connections: time to the greeting byte
//! loadgen idle ADDR[,ADDR..] COUNT        hold COUNT established connections until stdin closes
//! loadgen relay LISTEN TARGET [--rtt MS]  copy each connection to TARGET and back, no crypto:
//!                                         the kernel's share of a relay process (the floor);
//!                                         with --rtt, a long path: each way holds bytes MS/2
//! loadgen relay LISTEN TARGET --loop      the same in one thread: an event loop (mio) that
//!                                         carries both ways of every connection, as each
//!                                         postern process does
//! ```
//!
//! The sink protocol: on accept the sink sends one greeting byte (so "established" means the
//! whole chain is up, and time-to-first-byte needs no request). The client then sends a
//! 9-byte header, a command byte and a big-endian u64:
//!
//! | cmd | sink does |
//! |---|---|
//! | `D` | discard until EOF, then answer the byte count (u64 BE) |
//! | `S` | source N zero bytes, then close |
//! | `E` | echo until EOF |
//! | `H` | hold: read (and ignore) until EOF |
//!
//! Every client mode prints one JSON line on stdout; `scripts/bench` parses it.
#![forbid(unsafe_code)]

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

const CHUNK: usize = 256 * 1024;
const GREETING: u8 = b'!';

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["sink", addr] => sink(addr),
        ["probe", addr] => probe(addr),
        ["upload", addr, n] => upload(addr, num(n)),
        ["download", addr, n] => download(addr, num(n), None),
        ["download", addr, n, "--slow", mbps, secs] => {
            download(addr, num(n), Some((num(mbps), num(secs))))
        }
        ["pingpong", addr, n] => pingpong(addr, num(n)),
        ["pingpong-under", addr, n, dir] => pingpong_under(addr, num(n), dir, None, addr),
        ["pingpong-under", addr, n, dir, "--bulk-via", bulk] => {
            pingpong_under(addr, num(n), dir, None, bulk)
        }
        ["pingpong-under", addr, n, dir, mbps] => {
            pingpong_under(addr, num(n), dir, Some(num(mbps)), addr)
        }
        ["connect", addr, n] => connect(addr, num(n)),
        ["idle", addrs, n] => idle(addrs, num(n)),
        ["relay", listen, target] => relay(listen, target, Duration::ZERO),
        ["relay", listen, target, "--loop"] => relay_loop(listen, target),
        ["relay", listen, target, "--rtt", ms] => {
            relay(listen, target, Duration::from_millis(num(ms)) / 2)
        }
        _ => Err(io::Error::other(
            "usage: loadgen sink|probe|upload|download|pingpong|connect|idle ... (see source)",
        )),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A size or count; accepts the suffixes K, M, G (powers of 1024).
fn num(s: &str) -> u64 {
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .unwrap_or_else(|_| panic!("not a number: {s:?}"))
        * mult
}

// ------------------------------------------------------------------------------- relay

/// The floor of a relay process on this machine: each connection copied to `target` and back
/// by two threads with blocking reads and writes of up to [`CHUNK`], nothing else (no crypto,
/// no framing, no event loop). What it costs per GiB is the kernel's share (loopback TCP in and
/// out, wake-ups) that any relay pays; postern's processes pay it too, plus their own work.
/// With a `delay`, each direction holds what it read that long before writing it: a long path
/// on loopback (the kernel here has no netem). It reads as fast as it can, so the sender's TCP
/// never waits on it; what bounds the bytes in flight is the window of the protocol above.
fn relay(listen: &str, target: &str, delay: Duration) -> io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    eprintln!("loadgen relay listening on {}", listener.local_addr()?);
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        let target = target.to_owned();
        thread::spawn(move || {
            let Ok(server) = TcpStream::connect(&target) else {
                return;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            let up = thread::spawn(move || copy_half(client, server, delay));
            copy_half(s2, c2, delay);
            let _ = up.join();
        });
    }
    Ok(())
}

/// Copies `from` to `to` until EOF, then ends `to`'s write side; with a `delay`, through a
/// queue that a second thread writes out once each chunk is due.
fn copy_half(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    if !delay.is_zero() {
        let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
        let writer = thread::spawn(move || {
            for (due, chunk) in rx {
                thread::sleep(due.saturating_duration_since(Instant::now()));
                if to.write_all(&chunk).is_err() {
                    return;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
        let mut buf = vec![0u8; CHUNK];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
        drop(tx);
        let _ = writer.join();
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// [`relay`]'s copies in one thread: a mio event loop (epoll) that carries both ways of every
/// connection, the shape of a postern process, with none of its work. Beside a bulk transfer
/// that keeps the cores busy, its pings show what that shape alone costs a round trip on this
/// machine, against `relay`'s blocking thread per direction. Each readiness event moves only
/// the way it concerns (readable: out of that socket; writable: into it), so a ping costs the
/// loop the syscalls `relay` spends on it plus `epoll_wait`. A way is pumped until it would
/// block, with no turns between connections: for pings beside bulk that runs elsewhere.
fn relay_loop(listen: &str, target: &str) -> io::Result<()> {
    use mio::net::{TcpListener, TcpStream};
    use mio::{Events, Interest, Poll, Token};
    use std::collections::HashMap;

    /// One way of a connection: `buf[at..len]` was read from one side and not yet written to
    /// the other.
    struct Way {
        buf: Vec<u8>,
        at: usize,
        len: usize,
        /// Its source ended (or failed) and all it read went out, or its destination failed.
        done: bool,
        eof: bool,
    }
    impl Way {
        fn new() -> Way {
            Way {
                buf: vec![0; CHUNK],
                at: 0,
                len: 0,
                done: false,
                eof: false,
            }
        }
        /// Writes what is held, then reads and writes until either side would block. At its
        /// source's end (a read error counts as one) the destination's write side is shut once
        /// all was written, as `relay` does; a failed write ends the way and drops what it held.
        fn pump(&mut self, from: &mut TcpStream, to: &mut TcpStream) {
            while !self.done {
                while self.at < self.len {
                    match to.write(&self.buf[self.at..self.len]) {
                        Ok(n) => self.at += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            self.done = true;
                            return;
                        }
                    }
                }
                if self.eof {
                    let _ = to.shutdown(Shutdown::Write);
                    self.done = true;
                    return;
                }
                match from.read(&mut self.buf) {
                    Ok(n) => (self.at, self.len, self.eof) = (0, n, n == 0),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => (self.at, self.len, self.eof) = (0, 0, true),
                }
            }
        }
    }
    struct Pair {
        client: TcpStream,
        server: TcpStream,
        up: Way,
        down: Way,
    }
    impl Pair {
        /// Moves the ways that socket `side` (0: the client, 1: the server) is ready for.
        fn ready(&mut self, side: usize, readable: bool, writable: bool) {
            let Pair {
                client,
                server,
                up,
                down,
            } = self;
            let (out_of, into) = if side == 0 { (up, down) } else { (down, up) };
            let (this, other) = if side == 0 {
                (client, server)
            } else {
                (server, client)
            };
            if readable {
                out_of.pump(this, other);
            }
            if writable {
                into.pump(other, this);
            }
        }
    }
    const LISTENER: Token = Token(usize::MAX);

    let target: SocketAddr = target
        .parse()
        .map_err(|_| io::Error::other(format!("not an address: {target}")))?;
    let addr = listen
        .parse()
        .map_err(|_| io::Error::other(format!("not an address: {listen}")))?;
    let mut listener = TcpListener::bind(addr)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!(
        "loadgen relay listening on {} (one loop)",
        listener.local_addr()?
    );
    // Connection k's client is token 2k, its server 2k + 1; k is never reused.
    let mut pairs: HashMap<usize, Pair> = HashMap::new();
    let mut next = 0;
    let mut events = Events::with_capacity(256);
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => r?,
        }
        for ev in events.iter() {
            if ev.token() != LISTENER {
                let k = ev.token().0 / 2;
                let Some(p) = pairs.get_mut(&k) else { continue };
                // A hang-up or an error shows as readable: the read then says which.
                let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
                p.ready(ev.token().0 % 2, readable, writable);
                if p.up.done && p.down.done {
                    if let Some(mut p) = pairs.remove(&k) {
                        let _ = poll.registry().deregister(&mut p.client);
                        let _ = poll.registry().deregister(&mut p.server);
                    }
                }
                continue;
            }
            // Edge-triggered: accept until none is left; one connection's failure ends only it.
            loop {
                let mut client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                        ) =>
                    {
                        continue
                    }
                    Err(e) => {
                        eprintln!("loadgen relay: accept: {e}");
                        break;
                    }
                };
                // A blocking connect: a benchmark's relay, on loopback.
                let server = std::net::TcpStream::connect(target)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s));
                let Ok(server) = server else { continue };
                let mut server = TcpStream::from_std(server);
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let both = Interest::READABLE | Interest::WRITABLE;
                let registry = poll.registry();
                if registry
                    .register(&mut client, Token(2 * next), both)
                    .is_err()
                    || registry
                        .register(&mut server, Token(2 * next + 1), both)
                        .is_err()
                {
                    let _ = (
                        registry.deregister(&mut client),
                        registry.deregister(&mut server),
                    );
                    continue;
                }
                let (up, down) = (Way::new(), Way::new());
                let mut p = Pair {
                    client,
                    server,
                    up,
                    down,
                };
                // What arrived before the registration raises no event.
                p.ready(0, true, true);
                p.ready(1, true, true);
                if p.up.done && p.down.done {
                    let _ = (
                        registry.deregister(&mut p.client),
                        registry.deregister(&mut p.server),
                    );
                } else {
                    pairs.insert(next, p);
                }
                next += 1;
            }
        }
    }
}

// ------------------------------------------------------------------------------- sink

fn sink(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    eprintln!("loadgen sink listening on {}", listener.local_addr()?);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        // Small stacks: the idle scenario holds 10 000 connections, one thread each.
        let spawned = thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            let _ = serve(conn);
        });
        if let Err(e) = spawned {
            eprintln!("loadgen sink: cannot spawn: {e}");
        }
    }
    Ok(())
}

fn serve(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.write_all(&[GREETING])?;
    let mut head = [0u8; 9];
    s.read_exact(&mut head)?;
    let n = u64::from_be_bytes(head[1..].try_into().expect("bug: 8 bytes"));
    match head[0] {
        b'D' => {
            let total = drain(&mut s)?;
            s.write_all(&total.to_be_bytes())?;
        }
        b'S' => {
            let buf = vec![0u8; CHUNK];
            let mut left = n;
            while left > 0 {
                let k = left.min(CHUNK as u64) as usize;
                s.write_all(&buf[..k])?;
                left -= k as u64;
            }
        }
        b'E' => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                s.write_all(&buf[..k])?;
            }
        }
        b'H' => {
            let mut buf = [0u8; 64];
            while s.read(&mut buf)? > 0 {}
        }
        other => return Err(io::Error::other(format!("unknown command {other}"))),
    }
    s.shutdown(Shutdown::Write)
}

fn drain(s: &mut TcpStream) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let k = s.read(&mut buf)?;
        if k == 0 {
            return Ok(total);
        }
        total += k as u64;
    }
}

// ------------------------------------------------------------------------------- clients

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.parse()
        .map_err(|e| io::Error::other(format!("{addr}: {e}")))
}

/// Connects, reads the greeting, sends the header.
fn open(addr: &str, cmd: u8, n: u64) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(resolve(addr)?)?;
    s.set_nodelay(true)?;
    greeting(&mut s)?;
    let mut head = [cmd; 9];
    head[1..].copy_from_slice(&n.to_be_bytes());
    s.write_all(&head)?;
    Ok(s)
}

fn greeting(s: &mut TcpStream) -> io::Result<()> {
    let mut g = [0u8; 1];
    s.read_exact(&mut g)?;
    if g[0] != GREETING {
        return Err(io::Error::other("wrong greeting byte"));
    }
    Ok(())
}

fn probe(addr: &str) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&resolve(addr)?, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    greeting(&mut s)
}

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn upload(addr: &str, n: u64) -> io::Result<()> {
    let start = Instant::now();
    let mut s = open(addr, b'D', n)?;
    let buf = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..k])?;
        left -= k as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)?;
    let secs = start.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(count);
    if got != n {
        return Err(io::Error::other(format!("sink counted {got} of {n} bytes")));
    }
    println!(
        "{{\"mode\":\"upload\",\"bytes\":{n},\"secs\":{secs:.6},\"mbps\":{:.1}}}",
        mb_per_s(n, secs)
    );
    Ok(())
}

/// `slow`: read at most MBPS megabytes per second for SECS seconds, then as fast as possible.
fn download(addr: &str, n: u64, slow: Option<(u64, u64)>) -> io::Result<()> {
    let start = Instant::now();
    let mut s = open(addr, b'S', n)?;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let slow_until = slow.map(|(_, secs)| start + Duration::from_secs(secs));
    loop {
        let want = match (slow, slow_until) {
            (Some((mbps, _)), Some(until)) if Instant::now() < until => {
                // Pace: never be ahead of MBPS since start.
                let allowed = (start.elapsed().as_secs_f64() * mbps as f64 * 1e6) as u64;
                if total >= allowed {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                ((allowed - total) as usize).min(16 * 1024)
            }
            _ => CHUNK,
        };
        let k = s.read(&mut buf[..want])?;
        if k == 0 {
            break;
        }
        total += k as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    if total != n {
        return Err(io::Error::other(format!("received {total} of {n} bytes")));
    }
    println!(
        "{{\"mode\":\"download\",\"bytes\":{n},\"secs\":{secs:.6},\"mbps\":{:.1}}}",
        mb_per_s(n, secs)
    );
    Ok(())
}

/// The q-quantile (0..=1) of sorted microsecond samples, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn print_latency(mode: &str, mut us: Vec<f64>) {
    us.sort_by(f64::total_cmp);
    let mean = us.iter().sum::<f64>() / us.len().max(1) as f64;
    println!(
        "{{\"mode\":\"{mode}\",\"count\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"mean_us\":{mean:.1},\"max_us\":{:.1}}}",
        us.len(),
        quantile(&us, 0.50),
        quantile(&us, 0.99),
        us.last().copied().unwrap_or(f64::NAN)
    );
}

fn pingpong(addr: &str, n: u64) -> io::Result<()> {
    let mut s = open(addr, b'E', 0)?;
    let mut us = Vec::with_capacity(n as usize);
    let mut b = [0u8; 1];
    for i in 0..n {
        let t = Instant::now();
        s.write_all(&[i as u8])?;
        s.read_exact(&mut b)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        if b[0] != i as u8 {
            return Err(io::Error::other("echo returned a different byte"));
        }
    }
    s.shutdown(Shutdown::Write)?;
    print_latency("pingpong", us);
    Ok(())
}

/// `pingpong` on one connection while another connection to the same address moves bulk
/// data (`up`: to the sink, `down`: from it) for the whole run, paced to `mbps` if given.
/// Through one `postern access tcp` and a tunnel with one connection, both streams share the
/// carrier-side edge loop and the one tunnel connection: what the interactive stream waits
/// for is the bulk stream's frames queued ahead of its own. Prints the pingpong line with the
/// bulk stream's rate added. With `bulk_via` another address (a second chain), the two
/// streams share no process of the chain, only the machine's cores.
fn pingpong_under(
    addr: &str,
    n: u64,
    dir: &str,
    mbps: Option<u64>,
    bulk_via: &str,
) -> io::Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let up = match dir {
        "up" => true,
        "down" => false,
        _ => return Err(io::Error::other("pingpong-under: direction is up or down")),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut bulk = open(bulk_via, if up { b'D' } else { b'S' }, u64::MAX)?;
    let bulk_ctl = bulk.try_clone()?;
    let stop_bulk = stop.clone();
    let moved_so_far = Arc::new(AtomicU64::new(0));
    let moved_bulk = moved_so_far.clone();
    let mover = thread::spawn(move || -> (u64, f64) {
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        let start = Instant::now();
        while !stop_bulk.load(Ordering::Relaxed) {
            // 64 KiB at a time: the byte count below is read at this granularity.
            let mut want = 64 * 1024;
            if let Some(mbps) = mbps {
                // Whole 16 KiB pieces, as an application paced by a slower link would write
                // them: topping up to the allowance instead would move a few hundred bytes
                // per call, spin a core and wake the whole chain for each.
                want = 16 * 1024;
                let allowed = (start.elapsed().as_secs_f64() * mbps as f64 * 1e6) as u64;
                if total + want as u64 > allowed {
                    thread::sleep(Duration::from_micros(100));
                    continue;
                }
            }
            let r = match (up, mbps) {
                // Paced: the whole piece, as counted against the allowance.
                (true, Some(_)) => bulk.write_all(&buf[..want]).map(|()| want),
                (true, None) => bulk.write(&buf[..want]),
                (false, _) => bulk.read(&mut buf[..want]),
            };
            match r {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    total += k as u64;
                    moved_bulk.store(total, Ordering::Relaxed);
                }
            }
        }
        (total, start.elapsed().as_secs_f64())
    });
    // Let the bulk stream reach its pace before the first round trip.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) && !mover.is_finished() {
        thread::sleep(Duration::from_millis(10));
    }
    let mut s = open(addr, b'E', 0)?;
    let mut us = Vec::with_capacity(n as usize);
    // Bulk bytes moved during each round trip: what passed the shared connection while the
    // interactive byte went there and back: a measure of the queue ahead of it that, unlike
    // time, does not grow because the machine is slower or busier (for `down`; for `up` it
    // also counts what the local socket buffers took).
    let mut ahead = Vec::with_capacity(n as usize);
    let mut b = [0u8; 1];
    for i in 0..n {
        if mover.is_finished() {
            return Err(io::Error::other(
                "the bulk stream ended during the round trips",
            ));
        }
        let t = Instant::now();
        let before = moved_so_far.load(Ordering::Relaxed);
        s.write_all(&[i as u8])?;
        s.read_exact(&mut b)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        ahead.push((moved_so_far.load(Ordering::Relaxed) - before) as f64 / 1024.0);
        if b[0] != i as u8 {
            return Err(io::Error::other("echo returned a different byte"));
        }
    }
    s.shutdown(Shutdown::Write)?;
    stop.store(true, Ordering::Relaxed);
    let _ = bulk_ctl.shutdown(Shutdown::Both);
    let (moved, secs) = mover
        .join()
        .map_err(|_| io::Error::other("bulk thread panicked"))?;
    us.sort_by(f64::total_cmp);
    ahead.sort_by(f64::total_cmp);
    println!(
        "{{\"mode\":\"pingpong-under\",\"dir\":\"{dir}\",\"count\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"bulk_mbps\":{:.1},\"ahead_p50_kib\":{:.0},\"ahead_p99_kib\":{:.0}}}",
        us.len(),
        quantile(&us, 0.50),
        quantile(&us, 0.99),
        us.last().copied().unwrap_or(f64::NAN),
        mb_per_s(moved, secs),
        quantile(&ahead, 0.50),
        quantile(&ahead, 0.99)
    );
    Ok(())
}

fn connect(addr: &str, n: u64) -> io::Result<()> {
    let sa = resolve(addr)?;
    let mut us = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        let mut s = TcpStream::connect(sa)?;
        s.set_nodelay(true)?;
        greeting(&mut s)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        // Tell the sink to hold, then close: the stream ends cleanly on both sides.
        s.write_all(&[b'H', 0, 0, 0, 0, 0, 0, 0, 0])?;
        s.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    print_latency("connect", us);
    Ok(())
}

fn idle(addrs: &str, n: u64) -> io::Result<()> {
    let addrs: Vec<&str> = addrs.split(',').collect();
    let start = Instant::now();
    let mut held = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        let addr = addrs[i % addrs.len()];
        let s = open(addr, b'H', 0)
            .map_err(|e| io::Error::other(format!("connection {i} to {addr}: {e}")))?;
        held.push(s);
    }
    println!(
        "{{\"mode\":\"idle\",\"established\":{},\"secs\":{:.3}}}",
        held.len(),
        start.elapsed().as_secs_f64()
    );
    io::stdout().flush()?;
    // Hold until whoever started us closes our stdin.
    let mut line = String::new();
    while io::stdin().lock().read_line(&mut line)? > 0 {
        line.clear();
    }
    Ok(())
}
