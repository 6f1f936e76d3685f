//! The only place that touches the OS: sockets, TLS glue, stdio, signals, the clock.

pub mod local;
pub mod tls;

use std::io;

use mio::net::UnixStream;

/// A pollable source that becomes readable when SIGTERM or SIGINT arrives.
pub struct Signals {
    pub rx: UnixStream,
}

impl Signals {
    pub fn new() -> io::Result<Signals> {
        let (rx, tx) = std::os::unix::net::UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::low_level::pipe::register(sig, tx.try_clone()?)?;
        }
        Ok(Signals {
            rx: UnixStream::from_std(rx),
        })
    }

    /// Drains the wake-up bytes; true if any signal arrived.
    pub fn take(&mut self) -> bool {
        let mut got = false;
        let mut buf = [0u8; 64];
        loop {
            match io::Read::read(&mut self.rx, &mut buf) {
                Ok(0) => return got,
                Ok(_) => got = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return got,
            }
        }
    }
}

/// A uniformly random u64 from the OS.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("bug: the OS random source failed");
    u64::from_le_bytes(b)
}

/// Random bytes from the OS.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("bug: the OS random source failed");
    b
}

pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}
