//! The local end of a splice: ssh's stdin/stdout (ProxyCommand) or a TCP socket.
//!
//! ssh hands a ProxyCommand pipes, which mio polls directly. When stdin or stdout is
//! something epoll cannot watch (a regular file, /dev/null), one relay thread copies between
//! it and a socketpair that the loop polls instead: a per-process cost, not per connection.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::thread::JoinHandle;

use mio::net::{TcpStream, UnixStream};
use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Registry, Token};

pub enum Local {
    Stdio {
        stdin: Option<Input>,
        stdout: Option<Output>,
        relay: Option<JoinHandle<()>>,
    },
    Tcp(TcpStream),
}

pub enum Input {
    Pipe(Receiver),
    Relay(UnixStream),
}

pub enum Output {
    Pipe(Sender),
    Relay(UnixStream),
}

fn pollable(fd: &OwnedFd) -> io::Result<bool> {
    let t = File::from(fd.try_clone()?).metadata()?.file_type();
    Ok(t.is_fifo() || t.is_socket())
}

impl Local {
    /// Our own stdin and stdout, non-blocking and pollable.
    pub fn stdio() -> io::Result<Local> {
        let in_fd = io::stdin().as_fd().try_clone_to_owned()?;
        let out_fd = io::stdout().as_fd().try_clone_to_owned()?;
        let stdin = if pollable(&in_fd)? {
            let r = Receiver::from(in_fd);
            r.set_nonblocking(true)?;
            Input::Pipe(r)
        } else {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            std::thread::Builder::new()
                .name("stdin-relay".into())
                .spawn(move || {
                    let mut theirs = theirs;
                    let _ = io::copy(&mut File::from(in_fd), &mut theirs);
                    let _ = theirs.shutdown(Shutdown::Write);
                })?;
            ours.set_nonblocking(true)?;
            Input::Relay(UnixStream::from_std(ours))
        };
        let mut relay = None;
        let stdout = if pollable(&out_fd)? {
            let w = Sender::from(out_fd);
            w.set_nonblocking(true)?;
            Output::Pipe(w)
        } else {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            relay = Some(
                std::thread::Builder::new()
                    .name("stdout-relay".into())
                    .spawn(move || {
                        let mut theirs = theirs;
                        let mut out = File::from(out_fd);
                        let _ = io::copy(&mut theirs, &mut out);
                        let _ = out.flush();
                    })?,
            );
            ours.set_nonblocking(true)?;
            Output::Relay(UnixStream::from_std(ours))
        };
        Ok(Local::Stdio {
            stdin: Some(stdin),
            stdout: Some(stdout),
            relay,
        })
    }

    /// Registers for reading under `read` and writing under `write` (one token for TCP).
    pub fn register(&mut self, registry: &Registry, read: Token, write: Token) -> io::Result<()> {
        match self {
            Local::Stdio { stdin, stdout, .. } => {
                match stdin {
                    Some(Input::Pipe(r)) => registry.register(r, read, Interest::READABLE)?,
                    Some(Input::Relay(r)) => registry.register(r, read, Interest::READABLE)?,
                    None => {}
                }
                match stdout {
                    Some(Output::Pipe(w)) => registry.register(w, write, Interest::WRITABLE)?,
                    Some(Output::Relay(w)) => registry.register(w, write, Interest::WRITABLE)?,
                    None => {}
                }
                Ok(())
            }
            Local::Tcp(s) => registry.register(s, read, Interest::READABLE | Interest::WRITABLE),
        }
    }

    pub fn deregister(&mut self, registry: &Registry) {
        self.shutdown_read(registry);
        match self {
            Local::Stdio { stdout, .. } => match stdout {
                Some(Output::Pipe(w)) => drop(registry.deregister(w)),
                Some(Output::Relay(w)) => drop(registry.deregister(w)),
                None => {}
            },
            Local::Tcp(s) => drop(registry.deregister(s)),
        }
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Local::Stdio {
                stdin: Some(Input::Pipe(r)),
                ..
            } => r.read(buf),
            Local::Stdio {
                stdin: Some(Input::Relay(r)),
                ..
            } => r.read(buf),
            Local::Stdio { stdin: None, .. } => Ok(0),
            Local::Tcp(s) => s.read(buf),
        }
    }

    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Local::Stdio {
                stdout: Some(Output::Pipe(w)),
                ..
            } => w.write(buf),
            Local::Stdio {
                stdout: Some(Output::Relay(w)),
                ..
            } => w.write(buf),
            Local::Stdio { stdout: None, .. } => Err(io::ErrorKind::BrokenPipe.into()),
            Local::Tcp(s) => s.write(buf),
        }
    }

    /// Half-close toward the local side. A TCP peer gets a FIN. Stdout cannot carry a
    /// half-close: std has no safe way to close fd 1 itself, only our copy of it, so the pipe
    /// to ssh stays open while we run and its reader sees the EOF only when this process
    /// exits. (ssh, waiting for that EOF, keeps its end of our stdin open: the splice's core
    /// ends an `access ssh` session when the edge's end arrives, for that reason.)
    pub fn shutdown_write(&mut self, registry: &Registry) {
        match self {
            Local::Stdio { stdout, .. } => match stdout.take() {
                Some(Output::Pipe(mut w)) => drop(registry.deregister(&mut w)),
                Some(Output::Relay(mut w)) => {
                    let _ = registry.deregister(&mut w);
                    let _ = w.shutdown(Shutdown::Write);
                }
                None => {}
            },
            Local::Tcp(s) => {
                let _ = s.shutdown(Shutdown::Write);
            }
        }
    }

    /// We will read no more from the local side.
    pub fn shutdown_read(&mut self, registry: &Registry) {
        if let Local::Stdio { stdin, .. } = self {
            match stdin.take() {
                Some(Input::Pipe(mut r)) => drop(registry.deregister(&mut r)),
                Some(Input::Relay(mut r)) => drop(registry.deregister(&mut r)),
                None => {}
            }
        }
    }

    /// Waits until a stdout relay has written everything (before the process exits).
    pub fn finish(&mut self) {
        if let Local::Stdio { stdout, relay, .. } = self {
            drop(stdout.take());
            if let Some(t) = relay.take() {
                let _ = t.join();
            }
        }
    }
}
