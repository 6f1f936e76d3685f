//! `postern access tcp`: a local listener; each accepted connection gets its own carrier.
//!
//! ```text
//!  loop: accept ──▶ setup thread: connect, TLS, upgrade (and a browser login if the edge asks)
//!          │ MAX_CONCURRENT_SETUPS running: stop accepting (the kernel's backlog holds the rest)
//!          ◀── Waker ◀── (local connection, carrier or why not) ◀── channel
//!  loop: register both, splice them (a driver `Session` around the core's `Splice`, as
//!        `access ssh` does)
//! ```
//!
//! Setting a carrier up blocks (DNS, connect, TLS, the upgrade, maybe minutes of a browser
//! login), so it never runs on the loop: a silent edge or a pending login delays only the
//! connection it is for, never the sessions already spliced or the next connection. A setup
//! thread lives for the setup only; the established carrier goes back to the loop. The
//! credentials that worked (a fresh app token) are shared with the setups that follow, and
//! parallel logins are one browser login (`login_lock`).

use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

use log::{info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use rustls::ClientConfig;

use super::driver::{LoopBufs, Progress, Session};
use super::{
    authorize, client_config, event_loop, AccessError, AccessOptions, Credentials, TokenCache,
};
use crate::io::local::Local;
use crate::io::tls::TlsConn;
use crate::io::{would_block, Signals};
use crate::limits::MAX_CONCURRENT_SETUPS;
use crate::secret::Secret;

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const WAKER: Token = Token(2);
/// Session `n` has tokens `FIRST_SESSION + 2n` (the carrier) and `+ 1` (the local side).
const FIRST_SESSION: usize = 3;

/// What the setup threads share.
struct Shared {
    /// The options, with the credentials that worked last.
    opts: Mutex<AccessOptions>,
    cfg: Arc<ClientConfig>,
    cache: Result<TokenCache, String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, AccessOptions> {
        self.opts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the options for one setup.
    fn options(&self) -> AccessOptions {
        let o = self.lock();
        AccessOptions {
            hostname: o.hostname.clone(),
            edge: o.edge.clone(),
            extra_ca: o.extra_ca.clone(),
            credentials: match &o.credentials {
                Credentials::ServiceToken { id, secret } => Credentials::ServiceToken {
                    id: id.clone(),
                    secret: Secret::from(secret.expose().to_owned()),
                },
                Credentials::AppToken(t) => {
                    Credentials::AppToken(Secret::from(t.expose().to_owned()))
                }
                Credentials::None => Credentials::None,
            },
            resume: None,
            resume_granted: None,
            destination: o.destination.clone(),
        }
    }

    /// Connects, upgrades, and logs in if the edge asks (see `authorize`).
    fn setup(&self) -> Result<TlsConn, AccessError> {
        let mut opts = self.options();
        let carrier = authorize::open_authorized(&mut opts, &self.cfg, &self.cache)?;
        // What worked (a token from the cache or a login) serves the next connections.
        self.lock().credentials = opts.credentials;
        Ok(carrier)
    }
}

/// A finished setup: the local connection, and its carrier or why there is none.
struct Setup {
    local: TcpStream,
    peer: SocketAddr,
    carrier: Result<TlsConn, AccessError>,
}

/// The setups in progress, and where they report.
struct Setups {
    shared: Arc<Shared>,
    waker: Arc<Waker>,
    done_tx: Sender<Setup>,
    done: Receiver<Setup>,
    running: usize,
}

impl Setups {
    /// Accepts local connections while fewer than [`MAX_CONCURRENT_SETUPS`] setups run, and
    /// starts a setup thread for each.
    fn accept(&mut self, listener: &TcpListener) {
        while self.running < MAX_CONCURRENT_SETUPS {
            let (local, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("accept: {e}");
                    return;
                }
            };
            let _ = local.set_nodelay(true);
            let (shared, done, waker) = (
                self.shared.clone(),
                self.done_tx.clone(),
                self.waker.clone(),
            );
            let started = std::thread::Builder::new()
                .name("postern-setup".into())
                .spawn(move || {
                    let carrier = shared.setup();
                    let _ = done.send(Setup {
                        local,
                        peer,
                        carrier,
                    });
                    let _ = waker.wake();
                });
            match started {
                Ok(_) => self.running += 1,
                // The local connection went with the closure: it is closed.
                Err(e) => warn!("{peer}: cannot start a thread to connect it: {e}"),
            }
        }
    }
}

/// Puts a set-up carrier and its local connection in a free session slot, registered.
fn start_session(
    registry: &Registry,
    sessions: &mut Vec<Option<Session>>,
    tls: TlsConn,
    local: TcpStream,
    peer: SocketAddr,
) -> Option<usize> {
    let slot = sessions
        .iter()
        .position(Option::is_none)
        .unwrap_or_else(|| {
            sessions.push(None);
            sessions.len() - 1
        });
    let mut s = Session::new(tls, Local::Tcp(local));
    let base = FIRST_SESSION + 2 * slot;
    let ok = registry
        .register(
            &mut s.tls.sock,
            Token(base),
            Interest::READABLE | Interest::WRITABLE,
        )
        .and_then(|_| s.local.register(registry, Token(base + 1), Token(base + 1)));
    if let Err(e) = ok {
        warn!("{peer}: {e}");
        let _ = registry.deregister(&mut s.tls.sock);
        s.local.deregister(registry);
        return None;
    }
    sessions[slot] = Some(s);
    Some(slot)
}

/// The order of one pass over the sessions with work: each once, light ones first (a
/// keystroke session, see [`Session::is_light`]), then the rest, each group by slot. An echo
/// then waits for no other session's bulk turn in its pass, only for the other light ones.
fn serve_order(touched: &mut Vec<usize>, is_light: impl Fn(usize) -> bool) {
    touched.sort_unstable_by_key(|&slot| (!is_light(slot), slot));
    touched.dedup();
}

/// `postern access tcp`: a local listener; each accepted connection gets its own carrier.
/// Credentials as for [`super::ssh`]; a browser login, when one is needed, delays only the
/// connections that wait for it.
pub fn tcp(opts: AccessOptions, listen: SocketAddr) -> Result<(), AccessError> {
    let cfg = client_config(opts.extra_ca.as_deref())?;
    let cache = TokenCache::open_default();
    if let (Err(e), false) = (
        &cache,
        matches!(opts.credentials, Credentials::ServiceToken { .. }),
    ) {
        // Fail now, not at the first connection.
        return Err(AccessError::TokenCache(e.clone()));
    }
    let mut listener = TcpListener::bind(listen).map_err(|error| AccessError::Listen {
        addr: listen,
        error,
    })?;
    let mut poll = Poll::new().map_err(event_loop)?;
    let mut signals = Signals::new().map_err(event_loop)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(event_loop)?;
    poll.registry()
        .register(&mut signals.rx, SIGNALS, Interest::READABLE)
        .map_err(event_loop)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(event_loop)?);
    info!(
        "listening on {} for {} (via edge {})",
        listener.local_addr().map_err(event_loop)?,
        opts.hostname,
        opts.edge
    );
    let (done_tx, done) = mpsc::channel();
    let mut setups = Setups {
        shared: Arc::new(Shared {
            opts: Mutex::new(opts),
            cfg,
            cache,
        }),
        waker,
        done_tx,
        done,
        running: 0,
    };
    let mut sessions: Vec<Option<Session>> = Vec::new();
    let mut events = Events::with_capacity(256);
    let mut bufs = LoopBufs::new();
    // Sessions that stopped at their turn's bound with input left (`Progress::More`): run
    // again on the next pass, which then does not wait.
    let mut again: Vec<usize> = Vec::new();
    let mut turn = std::time::Instant::now();
    loop {
        crate::io::yield_after_long_turn(turn, || sessions.iter().flatten().nth(1).is_some());
        // The splice's core keeps no timers (`core::Splice::poll_timeout` is always None), so
        // this loop waits for readiness only, unless a session has more to do.
        let timeout = (!again.is_empty()).then_some(std::time::Duration::ZERO);
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(event_loop(e));
            }
        }
        turn = std::time::Instant::now();
        let mut touched = std::mem::take(&mut again);
        let mut accept = false;
        for ev in events.iter() {
            match ev.token() {
                LISTENER => accept = true,
                SIGNALS => {
                    if signals.take() {
                        return Ok(());
                    }
                }
                WAKER => {
                    let finished: Vec<Setup> = setups.done.try_iter().collect();
                    for s in finished {
                        setups.running -= 1;
                        // A setup ended: the backlog may hold connections not yet accepted.
                        accept = true;
                        match s.carrier {
                            Ok(tls) => {
                                let reg = poll.registry();
                                if let Some(slot) =
                                    start_session(reg, &mut sessions, tls, s.local, s.peer)
                                {
                                    touched.push(slot);
                                }
                            }
                            Err(e) => warn!("{}: {e}", s.peer),
                        }
                    }
                }
                Token(t) => touched.push((t - FIRST_SESSION) / 2),
            }
        }
        if accept {
            setups.accept(&listener);
        }
        serve_order(
            &mut touched,
            |slot| matches!(sessions.get(slot), Some(Some(s)) if s.is_light()),
        );
        for slot in touched {
            let Some(Some(s)) = sessions.get_mut(slot) else {
                continue;
            };
            let done = match s.pump(poll.registry(), &mut bufs) {
                Ok(Progress::Running) => false,
                Ok(Progress::More) => {
                    again.push(slot);
                    false
                }
                Ok(Progress::Done) => true,
                Err(e) => {
                    warn!("session ended: {e}");
                    true
                }
            };
            if done {
                if let Some(mut s) = sessions[slot].take() {
                    let _ = poll.registry().deregister(&mut s.tls.sock);
                    s.local.deregister(poll.registry());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::serve_order;

    #[test]
    fn a_pass_serves_each_session_once_the_light_ones_first() {
        // Sessions 1 and 4 moved bulk in their last pump; 0, 2 and 3 a few bytes. Events and
        // the turn-bound re-runs name some twice.
        let mut touched = vec![4, 2, 1, 4, 0, 3, 2];
        serve_order(&mut touched, |slot| ![1, 4].contains(&slot));
        assert_eq!(touched, [0, 2, 3, 1, 4]);
    }
}
