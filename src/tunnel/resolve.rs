//! Name resolution off the origin's event loop: the edge's address at each connect, and each
//! ingress service's address per stream.
//!
//! ```text
//!  loop: lookup(name, waiter) ─┬─ an IP address, or a cached one ──────────▶ Ready(addr)
//!                              ├─ the name is being looked up: waiter joins ─▶ Pending
//!                              └─ queued (MAX_RESOLVE_JOBS) ─▶ RESOLVER_THREADS ─▶ Pending
//!                                   full: Failed (busy), at once
//!  Waker ─▶ answers(now): the address is cached for RESOLVE_CACHE_SECS, and every waiter of
//!           the name gets the result (a failure is not cached)
//! ```
//!
//! `getaddrinfo` may take seconds (a slow or unreachable DNS server); here it only delays the
//! connections that need that name. The system resolver gives no TTL, so a fixed one applies;
//! names come from the configuration (the edge, the ingress services), so the cache is as
//! small as the configuration.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::limits::{MAX_RESOLVE_JOBS, RESOLVER_THREADS, RESOLVE_CACHE_SECS};

/// A blocking lookup of `host:port`: the first address.
pub(super) type LookupFn = dyn Fn(&str) -> Result<SocketAddr, String> + Send + Sync;

/// What [`Resolver::lookup`] can tell at once.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lookup {
    Ready(SocketAddr),
    /// The answer comes through [`Resolver::answers`].
    Pending,
    /// Why not (the queue is full).
    Failed(String),
}

/// See the module doc. `W` names who waits for an answer.
pub(super) struct Resolver<W> {
    jobs: SyncSender<String>,
    done: Receiver<(String, Result<SocketAddr, String>)>,
    /// Address and until when it is used.
    cache: HashMap<String, (SocketAddr, Instant)>,
    /// Names being looked up, and who waits for each.
    waiting: HashMap<String, Vec<W>>,
}

/// The system resolver (`getaddrinfo`).
pub(super) fn system_lookup(name: &str) -> Result<SocketAddr, String> {
    name.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {name}: {e}"))?
        .next()
        .ok_or_else(|| format!("{name} resolves to no address"))
}

impl<W> Resolver<W> {
    /// Starts the resolver threads; `wake` runs on one of them after each answer.
    pub(super) fn start(
        lookup: Arc<LookupFn>,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> io::Result<Resolver<W>> {
        let (jobs, done) = crate::io::workers::start(
            RESOLVER_THREADS,
            "postern-resolve",
            MAX_RESOLVE_JOBS,
            move |name: String| {
                let result = lookup(&name);
                (name, result)
            },
            wake,
        )?;
        Ok(Resolver {
            jobs,
            done,
            cache: HashMap::new(),
            waiting: HashMap::new(),
        })
    }

    /// The address of `name` (`host:port`) now, or later for `waiter`; never waits.
    pub(super) fn lookup(&mut self, name: &str, waiter: W, now: Instant) -> Lookup {
        if let Ok(addr) = name.parse::<SocketAddr>() {
            return Lookup::Ready(addr);
        }
        if let Some(&(addr, until)) = self.cache.get(name) {
            if now < until {
                return Lookup::Ready(addr);
            }
            self.cache.remove(name);
        }
        if let Some(waiters) = self.waiting.get_mut(name) {
            waiters.push(waiter);
            return Lookup::Pending;
        }
        match self.jobs.try_send(name.to_owned()) {
            Ok(()) => {
                self.waiting.insert(name.to_owned(), vec![waiter]);
                Lookup::Pending
            }
            Err(TrySendError::Full(_)) => Lookup::Failed(format!(
                "cannot resolve {name}: {MAX_RESOLVE_JOBS} names are being resolved already"
            )),
            Err(TrySendError::Disconnected(_)) => {
                Lookup::Failed(format!("cannot resolve {name}: the resolver stopped"))
            }
        }
    }

    /// The lookups that finished: each waiter with the result of its name.
    pub(super) fn answers(&mut self, now: Instant) -> Vec<(W, Result<SocketAddr, String>)> {
        let mut out = Vec::new();
        while let Ok((name, result)) = self.done.try_recv() {
            if let Ok(addr) = result {
                let until = now + Duration::from_secs(RESOLVE_CACHE_SECS);
                self.cache.insert(name.clone(), (addr, until));
            }
            for w in self.waiting.remove(&name).unwrap_or_default() {
                out.push((w, result.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Mutex};

    /// A resolver whose lookups of `slow…` names wait for the test to let them go (one each),
    /// and whose other names answer at once (127.0.0.N for `nN.test`, an error for the rest).
    fn resolver() -> (
        Resolver<u32>,
        mpsc::Receiver<()>,
        mpsc::Sender<()>,
        Arc<AtomicUsize>,
    ) {
        let (release, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let lookup = move |name: &str| {
            counted.fetch_add(1, Ordering::SeqCst);
            if name.starts_with("slow") {
                let _ = gate.lock().unwrap().recv();
                return Ok(SocketAddr::from(([10, 0, 0, 1], 1)));
            }
            match name
                .strip_prefix('n')
                .and_then(|r| r.strip_suffix(".test:1"))
            {
                Some(n) => Ok(SocketAddr::from(([127, 0, 0, n.parse().unwrap()], 1))),
                None => Err(format!("cannot resolve {name}: no such name")),
            }
        };
        let (woke, woken) = mpsc::channel();
        let r = Resolver::start(Arc::new(lookup), move || {
            let _ = woke.send(());
        })
        .unwrap();
        (r, woken, release, calls)
    }

    fn next_answers(
        r: &mut Resolver<u32>,
        woken: &mpsc::Receiver<()>,
        now: Instant,
    ) -> Vec<(u32, Result<SocketAddr, String>)> {
        woken
            .recv_timeout(Duration::from_secs(10))
            .expect("a resolver thread answers");
        r.answers(now)
    }

    #[test]
    fn a_slow_name_does_not_hold_up_others_and_waiters_share_one_lookup() {
        let (mut r, woken, release, calls) = resolver();
        let t0 = Instant::now();
        assert_eq!(
            r.lookup("127.0.0.1:22", 0, t0),
            Lookup::Ready(SocketAddr::from(([127, 0, 0, 1], 22))),
            "addresses need no lookup"
        );
        assert_eq!(r.lookup("slow.test:1", 1, t0), Lookup::Pending);
        assert_eq!(r.lookup("slow.test:1", 2, t0), Lookup::Pending);
        // While slow.test hangs in one thread, another name is answered.
        assert_eq!(r.lookup("n5.test:1", 3, t0), Lookup::Pending);
        let got = next_answers(&mut r, &woken, t0);
        assert_eq!(got, vec![(3, Ok(SocketAddr::from(([127, 0, 0, 5], 1))))]);
        release.send(()).unwrap();
        let mut got = next_answers(&mut r, &woken, t0);
        got.sort();
        let slow = Ok(SocketAddr::from(([10, 0, 0, 1], 1)));
        assert_eq!(got, vec![(1, slow.clone()), (2, slow)]);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one lookup per name");
    }

    #[test]
    fn addresses_are_cached_for_a_while_and_failures_not_at_all() {
        let (mut r, woken, _release, calls) = resolver();
        let t0 = Instant::now();
        assert_eq!(r.lookup("n7.test:1", 1, t0), Lookup::Pending);
        next_answers(&mut r, &woken, t0);
        let seven = SocketAddr::from(([127, 0, 0, 7], 1));
        let later = t0 + Duration::from_secs(RESOLVE_CACHE_SECS - 1);
        assert_eq!(r.lookup("n7.test:1", 2, later), Lookup::Ready(seven));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let expired = t0 + Duration::from_secs(RESOLVE_CACHE_SECS);
        assert_eq!(r.lookup("n7.test:1", 3, expired), Lookup::Pending);
        assert_eq!(next_answers(&mut r, &woken, expired), vec![(3, Ok(seven))]);
        assert_eq!(r.lookup("bad.test:1", 4, t0), Lookup::Pending);
        let got = next_answers(&mut r, &woken, t0);
        assert!(
            matches!(&got[..], [(4, Err(e))] if e.contains("bad.test")),
            "{got:?}"
        );
        assert_eq!(
            r.lookup("bad.test:1", 5, t0),
            Lookup::Pending,
            "asked again"
        );
    }

    #[test]
    fn a_full_queue_fails_at_once() {
        let (mut r, _woken, release, _calls) = resolver();
        let t0 = Instant::now();
        // Every thread stuck on a slow name, then the queue filled with other names.
        for i in 0..RESOLVER_THREADS as u32 {
            assert_eq!(r.lookup(&format!("slow{i}.test:1"), i, t0), Lookup::Pending);
        }
        let mut n = 100u32;
        let failed = loop {
            n += 1;
            assert!(n < 200 + MAX_RESOLVE_JOBS as u32, "the queue never filled");
            match r.lookup(&format!("q{n}.test:1"), n, t0) {
                Lookup::Pending => {}
                Lookup::Failed(e) => break e,
                Lookup::Ready(a) => panic!("{a}"),
            }
        };
        assert!(failed.contains("being resolved already"), "{failed}");
        drop(release);
    }
}
