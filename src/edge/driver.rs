//! The edge's driver: the only code of the edge that touches the OS. It binds the listener,
//! runs the mio loop, accepts sockets, starts the store worker and the login workers, reads
//! the config file on SIGHUP, reads the clock, and hands all of it to [`EdgeCore`] as inputs:
//!
//! ```text
//!  listener readable ─▶ accept ─▶ core.admit(peer) ─▶ register ─▶ core.accepted(slot, sock)
//!  socket readable/writable ─▶ core.handle_ready(slot)           ┐
//!  waker (store, login workers) ─▶ core.handle_wake(now)          ├─▶ core.process(now)
//!  core.poll_timeout() reached ─▶ core.handle_timeout(now)        ┘
//!  SIGHUP ─▶ config::reload (file) ─▶ core.reloaded(..)    SIGTERM ─▶ core.shutdown(now)
//! ```
//!
//! It decides nothing about a connection: which limit refuses it, what a request is worth,
//! where a stream goes and when a deadline passes are the core's. `accept` failures (EMFILE)
//! are the driver's own: it pauses accepting and retries on a timer.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use super::config::{self, EdgeSettings, IdentityProvider};
use super::core::login::{Done, Job, Worker};
use super::core::loops::{Loops, Wake};
use super::core::{EdgeCore, LimitCounters, Parts};
use crate::audit::Audit;
use crate::io::{unix_now, would_block, Signals};
use crate::limits::{ACCEPT_RETRY_MILLIS, LIMIT_LOG_INTERVAL_SECS, MAX_OIDC_JOBS, OIDC_WORKERS};
use crate::metrics::{self, Metrics};
use crate::oidc::Provider;
use crate::proto::jwt::KeyRing;
use crate::store::{EtcdStore, FileStore, Snapshot, Store};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_CONN: usize = 3;

/// A connection's mio socket as the core holds it: it leaves the poll when the core drops it
/// (or when it moves to another loop, whose driver registers it there: `join`).
struct Registered {
    sock: TcpStream,
    registry: Arc<Registry>,
}

impl Registered {
    /// Registers a connection that arrived from another loop with this loop's poll.
    fn join(&mut self, registry: &Arc<Registry>, token: Token) -> io::Result<()> {
        registry.register(
            &mut self.sock,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.registry = registry.clone();
        Ok(())
    }
}

impl io::Read for Registered {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.read(buf)
    }
}

impl io::Write for Registered {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.sock.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

impl super::core::Transport for Registered {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.sock.shutdown(std::net::Shutdown::Write)
    }

    fn leave(&mut self) {
        let _ = self.registry.deregister(&mut self.sock);
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = self.registry.deregister(&mut self.sock);
    }
}

/// `postern edge`: the core and the loop that drives it.
pub struct Edge {
    core: EdgeCore,
    poll: Poll,
    /// Wakes the loop for worker results and store answers.
    waker: Arc<Waker>,
    /// `accept` failed for want of descriptors: paused until then.
    accept_pause: AcceptPause,
}

/// The clock, read once per input: monotonic for deadlines, Unix seconds for tokens.
fn clock() -> (Instant, u64) {
    (Instant::now(), unix_now())
}

impl Edge {
    pub fn new(mut settings: EdgeSettings) -> io::Result<Edge> {
        let open_files = crate::io::sys::open_files().ok().map(|l| l.soft);
        if let Some(warning) = open_files.and_then(|n| settings.limits.fit_descriptors(n)) {
            warn!("{warning}");
        }
        // Before the loop, the store may block; from then on only its worker calls it.
        let mut store: Box<dyn Store> = match &settings.etcd {
            Some(url) => {
                info!(
                    "state: shared records in {url}, keys in {}",
                    settings.state.path().display()
                );
                Box::new(EtcdStore::connect(url).map_err(io::Error::other)?)
            }
            None => Box::new(FileStore::open(&settings.state)?),
        };
        // Routes to tunnels that no longer exist (a delete cut short): free those hostnames.
        let orphans = store.release_orphaned_routes().map_err(io::Error::other)?;
        if !orphans.is_empty() {
            warn!(
                "released {} hostname(s) routed to deleted tunnels: {}",
                orphans.len(),
                orphans.join(", ")
            );
        }
        // Names recorded for a parent zone before their own zone was configured.
        let zones = settings.zones.clone();
        let misfiled = store
            .release_misfiled(&|h| config::zone_of(&zones, h).map(str::to_owned))
            .map_err(io::Error::other)?;
        if !misfiled.is_empty() {
            warn!(
                "released {} hostname(s) held by another zone than their own: {}",
                misfiled.len(),
                misfiled.join(", ")
            );
        }
        let audit = Audit::open(&settings.audit_log)?;
        let keys = load_keys(&settings)?;
        let oidc = match &settings.identity {
            IdentityProvider::Oidc(o) => {
                let secret = oidc_secret(o)?;
                info!("identity provider: discovering {}", o.issuer);
                let p = Provider::discover(o.clone(), secret, None).map_err(io::Error::other)?;
                Some(Arc::new(p))
            }
            _ => None,
        };
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let snapshot = store.snapshot().map_err(io::Error::other)?;
        // From here on, the store is called by its worker thread only, never on the loop.
        let wake = waker.clone();
        let worker = crate::store::worker::StoreWorker::start(store, move || {
            let _ = wake.wake();
        })?;
        let parts = Parts {
            snapshot,
            store: Some(worker),
            audit,
            keys,
            oidc,
            open_files,
            metrics: Metrics::new(metrics::Role::Edge, crate::io::random_bytes()),
        };
        let (now, unix) = clock();
        let mut core = EdgeCore::new(settings, parts, now, unix);
        core.time_holds(Instant::now);
        Ok(Edge {
            core,
            poll,
            waker,
            accept_pause: AcceptPause::default(),
        })
    }

    /// How often each limit was hit since start.
    pub fn counters(&self) -> &LimitCounters {
        &self.core.counters
    }

    /// Serves `/metrics` and `/ready` on `addr` (one thread); returns the bound address.
    pub fn serve_metrics(&self, addr: &str) -> io::Result<SocketAddr> {
        crate::io::metrics_server::serve(addr, self.core.metrics())
    }

    /// SIGHUP: re-reads the config file; the core swaps in what passes the checks.
    fn reload(&mut self) {
        let Some(source) = &self.core.settings.source else {
            info!("SIGHUP: nothing to reload (edge --dev has no config file)");
            return;
        };
        let path = source.path.display().to_string();
        let result = config::reload(source);
        self.core.reloaded(&path, result);
    }

    /// Binds, prints where it listens, and serves until SIGTERM/SIGINT.
    pub fn run(mut self) -> io::Result<()> {
        let listen = self.core.settings.listen;
        let mut listener = TcpListener::bind(listen)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
        let addr = listener.local_addr()?;
        self.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::with_reload()?;
        self.poll
            .registry()
            .register(&mut signals.rx, SIGNALS, Interest::READABLE)?;
        let registry = Arc::new(self.poll.registry().try_clone()?);
        self.core.listening(addr.port());
        if let Some(p) = self.core.oidc() {
            let worker = start_login_workers(p, self.waker.clone())?;
            self.core.set_login_worker(worker);
        }
        self.core
            .metrics()
            .set_loops(self.core.settings.workers.max(1));
        let workers = self.start_workers(addr.port())?;
        info!("postern edge listening on {addr}");
        self.core.metrics().set_listening(addr);
        (self.core.settings.on_ready)(addr);

        let mut events = Events::with_capacity(1024);
        let metrics = self.core.metrics();
        let mut turn = Instant::now();
        loop {
            let next_tick = self.core.poll_timeout();
            let wake = self
                .accept_pause
                .retry_at
                .map_or(next_tick, |r| r.min(next_tick));
            let timeout = wake.saturating_duration_since(Instant::now());
            let shared = self.core.take_shared_turn();
            crate::io::yield_after_long_turn(turn, || shared);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The workers hold the audit log open: they end first.
                self.stop(workers);
                return Err(e);
            }
            let woke = Instant::now();
            turn = woke;
            for ev in events.iter() {
                match ev.token() {
                    LISTENER if self.accept_pause.retry_at.is_some() => {}
                    LISTENER => self.accept(&listener, &registry),
                    SIGNALS => {
                        let terminate = signals.take();
                        if signals.take_reload() {
                            self.reload();
                        }
                        if terminate {
                            info!("edge shutting down");
                            self.stop(workers);
                            return Ok(());
                        }
                    }
                    WAKER => {
                        let (now, unix) = clock();
                        self.core.handle_wake(now, unix);
                    }
                    Token(t) => self.core.handle_ready(t - FIRST_CONN),
                }
            }
            let (now, unix) = clock();
            self.core.process(now, unix);
            self.core.handle_timeout(now, unix);
            // After the pass ran: connections that closed in it have freed their slots and
            // descriptors, so the retry does not meet a cap they no longer hold.
            if self.accept_pause.retry_at.is_some() && !self.accept_pause.paused(Instant::now()) {
                self.accept_pause.retry_at = None;
                self.accept(&listener, &registry);
                let (now, unix) = clock();
                self.core.process(now, unix);
            }
            metrics.add_loop_busy(0, woke.elapsed());
        }
    }

    /// SIGTERM (or a failure): every loop sends GOAWAY to its tunnel connections and
    /// close_notify to its carriers; then the workers end, and this loop waits for them.
    fn stop(&mut self, workers: Vec<JoinHandle<()>>) {
        let (now, unix) = clock();
        self.core.shutdown(now, unix);
        for w in workers {
            let _ = w.join();
        }
    }

    /// Starts the worker loops of `--workers N` (none for 1): each a thread with its own poll
    /// and core, linked to this loop (`core::loops`).
    fn start_workers(&mut self, port: u16) -> io::Result<Vec<JoinHandle<()>>> {
        let n = self.core.settings.workers;
        if n <= 1 {
            return Ok(Vec::new());
        }
        let own = self.waker.clone();
        let mut wakes: Vec<Wake> = vec![Arc::new(move || {
            let _ = own.wake();
        })];
        let mut polls = Vec::new();
        for _ in 1..n {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            wakes.push(Arc::new(move || {
                let _ = waker.wake();
            }));
            polls.push(poll);
        }
        let mut links = Loops::wire(wakes).into_iter();
        self.core
            .set_loops(links.next().expect("bug: loop 0's links"));
        // Everything a worker needs first: a failure here leaves no thread behind.
        let mut ready = Vec::new();
        for (poll, loops) in polls.into_iter().zip(links) {
            let settings = self.core.settings.for_worker();
            let parts = Parts {
                snapshot: Snapshot::default(),
                store: None,
                audit: self.core.audit_sibling(),
                keys: read_keys(&settings)?,
                oidc: None,
                open_files: None,
                metrics: self.core.metrics(),
            };
            ready.push((settings, parts, poll, loops));
        }
        let mut threads = Vec::new();
        for (settings, parts, poll, loops) in ready {
            let me = loops.me();
            let spawned = std::thread::Builder::new()
                .name(format!("postern-loop-{me}"))
                .spawn(move || {
                    let run = std::panic::AssertUnwindSafe(move || {
                        let (now, unix) = clock();
                        let mut core = EdgeCore::new(settings, parts, now, unix);
                        core.time_holds(Instant::now);
                        core.set_loops(loops);
                        core.listening(port);
                        run_worker(core, poll)
                    });
                    // Its connections' stubs on loop 0 would never be freed: the edge ends, as
                    // it does when its only loop fails, and its service manager restarts it.
                    match std::panic::catch_unwind(run) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            error!("edge loop {me} failed: {e}; the edge exits");
                            std::process::exit(1);
                        }
                        Err(_) => {
                            error!("edge loop {me} panicked; the edge exits");
                            std::process::exit(1);
                        }
                    }
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.stop(threads);
                    return Err(e);
                }
            }
        }
        info!("{n} event loops (--workers): tunnel connections are spread over them");
        Ok(threads)
    }

    fn accept(&mut self, listener: &TcpListener, registry: &Arc<Registry>) {
        loop {
            match listener.accept() {
                Ok((mut sock, peer)) => {
                    let (now, unix) = clock();
                    // Refused: dropping `sock` closes it at once, before any TLS.
                    let Some(slot) = self.core.admit(peer, now, unix) else {
                        continue;
                    };
                    let _ = sock.set_nodelay(true);
                    if let Err(e) = registry.register(
                        &mut sock,
                        Token(slot + FIRST_CONN),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!("register {peer}: {e}");
                        self.core.abandon(slot);
                        continue;
                    }
                    let sock = Registered {
                        sock,
                        registry: registry.clone(),
                    };
                    self.core.accepted(slot, Box::new(sock), peer);
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // That one connection was reset while it waited: the next may be fine.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // EMFILE and friends: pause, retry on a timer, log once per interval.
                    self.core.metrics().error(metrics::Error::ConnectionLimit);
                    self.accept_pause.failed(&e, Instant::now());
                    return;
                }
            }
        }
    }
}

/// A worker loop (`--workers`): the tunnel connections and carriers loop 0 sends it, until
/// loop 0 tells it to stop.
fn run_worker(mut core: EdgeCore, mut poll: Poll) -> io::Result<()> {
    let registry = Arc::new(poll.registry().try_clone()?);
    let mut events = Events::with_capacity(1024);
    let (metrics, me) = (core.metrics(), core.loop_index());
    let mut turn = Instant::now();
    loop {
        let timeout = core
            .poll_timeout()
            .saturating_duration_since(Instant::now());
        let shared = core.take_shared_turn();
        crate::io::yield_after_long_turn(turn, || shared);
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let woke = Instant::now();
        turn = woke;
        for ev in events.iter() {
            match ev.token() {
                WAKER => {
                    let (now, unix) = clock();
                    core.handle_wake(now, unix);
                    for slot in core.take_arrivals() {
                        let joined = match core.sock_mut(slot) {
                            Some(sock) => match sock.as_any().downcast_mut::<Registered>() {
                                Some(r) => r.join(&registry, Token(slot + FIRST_CONN)),
                                None => Err(io::Error::other("not a socket")),
                            },
                            None => continue, // refused on arrival and gone already
                        };
                        if let Err(e) = joined {
                            warn!("a connection could not join loop: {e}");
                            core.arrival_failed(slot);
                        }
                    }
                }
                Token(t) if t >= FIRST_CONN => core.handle_ready(t - FIRST_CONN),
                _ => {}
            }
        }
        if core.stopped() {
            return Ok(());
        }
        let (now, unix) = clock();
        core.process(now, unix);
        core.handle_timeout(now, unix);
        metrics.add_loop_busy(me, woke.elapsed());
    }
}

/// The threads that run the blocking OIDC calls, so the loop never waits on the provider;
/// each answer wakes the loop.
fn start_login_workers(provider: Arc<Provider>, waker: Arc<Waker>) -> io::Result<Worker> {
    let (jobs, done) = crate::io::workers::start(
        OIDC_WORKERS,
        "oidc",
        MAX_OIDC_JOBS,
        move |job: Job| {
            let result = provider.exchange(
                &job.code,
                &job.verifier,
                &job.redirect,
                &job.nonce,
                unix_now(),
            );
            Done {
                conn: job.conn,
                state: job.state,
                result,
            }
        },
        move || {
            let _ = waker.wake();
        },
    )?;
    Ok(Worker { jobs, done })
}

/// `accept` failures (EMFILE and friends): accepting pauses for [`ACCEPT_RETRY_MILLIS`], then
/// retries by itself (the listener is edge-triggered: the connections already waiting would
/// raise no new event), and the failure is logged once per [`LIMIT_LOG_INTERVAL_SECS`].
#[derive(Default)]
struct AcceptPause {
    retry_at: Option<Instant>,
    logged_at: Option<Instant>,
    /// Failures since the last line.
    unlogged: u64,
}

impl AcceptPause {
    fn failed(&mut self, e: &io::Error, now: Instant) {
        self.retry_at = Some(now + Duration::from_millis(ACCEPT_RETRY_MILLIS));
        let interval = Duration::from_secs(LIMIT_LOG_INTERVAL_SECS);
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < interval)
        {
            self.unlogged = self.unlogged.saturating_add(1);
            return;
        }
        let unlogged = std::mem::take(&mut self.unlogged);
        let since = if unlogged > 0 {
            format!("; {unlogged} more since the last line")
        } else {
            String::new()
        };
        warn!(
            "accept: {e}; accepting again every {ACCEPT_RETRY_MILLIS} ms (further failures are \
             counted, not logged, for {LIMIT_LOG_INTERVAL_SECS} s{since})"
        );
        self.logged_at = Some(now);
    }

    /// True when accepting is paused at `now`.
    fn paused(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|at| now < at)
    }
}

/// Loads the app-token signing keys, creating them on first start and rotating the active
/// key once it is older than [`KEY_ROTATION_SECS`] (the old key keeps verifying until the
/// longest session it may have signed has ended).
fn load_keys(settings: &EdgeSettings) -> io::Result<KeyRing> {
    const FILE: &str = KEYS_FILE;
    let longest = settings
        .applications
        .iter()
        .map(|a| a.session_duration)
        .max()
        .unwrap_or(24 * 3600);
    let state = &settings.state;
    match state.read(KEYS_FILE)? {
        Some(bytes) => {
            let mut ring =
                KeyRing::from_json(&bytes).map_err(|e| io::Error::other(format!("{FILE}: {e}")))?;
            let age = std::fs::metadata(state.path().join(FILE))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .map_or(0, |d| d.as_secs());
            if age > KEY_ROTATION_SECS && settings.etcd.is_some() {
                // Each edge of a pool rotating its own copy would sign with keys the others
                // do not know: a pool rotates by hand, one file copied to every edge.
                warn!(
                    "the app-token signing key in {} is {} days old; an edge pool does not \
                     rotate it by itself (docs/scaling.md, Keys)",
                    state.path().join(FILE).display(),
                    age / (24 * 3600)
                );
            } else if age > KEY_ROTATION_SECS {
                let pkcs8 = ring.rotate(unix_now(), longest);
                state.write_atomic(FILE, ring.to_json(&pkcs8).as_bytes(), 0o600)?;
                info!(
                    "rotated the app-token signing key (kid {})",
                    ring.active().kid()
                );
            }
            Ok(ring)
        }
        None => {
            let (ring, pkcs8) = KeyRing::generate();
            state.write_atomic(FILE, ring.to_json(&pkcs8).as_bytes(), 0o600)?;
            info!(
                "created the app-token signing key (kid {})",
                ring.active().kid()
            );
            Ok(ring)
        }
    }
}

/// The app-token signing keys, in the state directory.
const KEYS_FILE: &str = "signing-keys.json";

/// The signing keys as loop 0 left them (created or rotated by [`load_keys`]), for a worker
/// loop: it signs the assertions of the streams it opens.
fn read_keys(settings: &EdgeSettings) -> io::Result<KeyRing> {
    let bytes = settings
        .state
        .read(KEYS_FILE)?
        .ok_or_else(|| io::Error::other(format!("{KEYS_FILE}: missing")))?;
    KeyRing::from_json(&bytes).map_err(|e| io::Error::other(format!("{KEYS_FILE}: {e}")))
}

/// The active signing key is replaced after this long.
const KEY_ROTATION_SECS: u64 = 30 * 24 * 3600;

fn oidc_secret(o: &config::OidcSettings) -> io::Result<crate::secret::Secret> {
    if let Ok(s) = std::env::var("POSTERN_OIDC_CLIENT_SECRET") {
        return Ok(s.into());
    }
    if let Some(path) = &o.client_secret_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("identity.client_secret_file {}: {e}", path.display()),
            )
        })?;
        return Ok(text.trim().to_owned().into());
    }
    o.client_secret
        .clone()
        .map(Into::into)
        .ok_or_else(|| io::Error::other("identity: no client secret configured"))
}
