//! Name resolution off the origin's event loop: the edges' addresses at each connect, and
//! each ingress service's address per stream. A name's answer is all its addresses (sorted,
//! at most `MAX_RESOLVED_ADDRESSES`): the core spreads an edge's slots over them.
//!
//! ```text
//!  loop: lookup(name, waiter) ─┬─ an IP address, or cached ones ───────────▶ Ready(addrs)
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

use crate::limits::{
    MAX_RESOLVED_ADDRESSES, MAX_RESOLVE_JOBS, RESOLVER_THREADS, RESOLVE_CACHE_SECS,
};

/// A name's addresses: sorted, no duplicates, at least one.
pub(super) type Addrs = Vec<SocketAddr>;

/// A blocking lookup of `host:port`: its addresses.
pub(super) type LookupFn = dyn Fn(&str) -> Result<Addrs, String> + Send + Sync;

/// What [`Resolver::lookup`] can tell at once.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lookup {
    Ready(Addrs),
    /// The answer comes through [`Resolver::answers`].
    Pending,
    /// Why not (the queue is full).
    Failed(String),
}

/// See the module doc. `W` names who waits for an answer.
pub(super) struct Resolver<W> {
    jobs: SyncSender<String>,
    done: Receiver<(String, Result<Addrs, String>)>,
    /// Addresses and until when they are used.
    cache: HashMap<String, (Addrs, Instant)>,
    /// Names being looked up, and who waits for each.
    waiting: HashMap<String, Vec<W>>,
}

/// The system resolver (`getaddrinfo`): every address, sorted so that a slot's pick stays
/// put when the answer comes back reordered (round-robin DNS).
pub(super) fn system_lookup(name: &str) -> Result<Addrs, String> {
    let addrs = name
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {name}: {e}"))?;
    tidy(addrs.collect()).ok_or_else(|| format!("{name} resolves to no address"))
}

/// Sorted, without duplicates, at most [`MAX_RESOLVED_ADDRESSES`]; `None` if empty.
fn tidy(mut addrs: Addrs) -> Option<Addrs> {
    addrs.sort_unstable();
    addrs.dedup();
    addrs.truncate(MAX_RESOLVED_ADDRESSES);
    (!addrs.is_empty()).then_some(addrs)
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
            return Lookup::Ready(vec![addr]);
        }
        if let Some((addrs, until)) = self.cache.get(name) {
            if now < *until {
                return Lookup::Ready(addrs.clone());
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
    pub(super) fn answers(&mut self, now: Instant) -> Vec<(W, Result<Addrs, String>)> {
        let mut out = Vec::new();
        while let Ok((name, result)) = self.done.try_recv() {
            if let Ok(addrs) = &result {
                let until = now + Duration::from_secs(RESOLVE_CACHE_SECS);
                self.cache.insert(name.clone(), (addrs.clone(), until));
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
                return Ok(vec![SocketAddr::from(([10, 0, 0, 1], 1))]);
            }
            match name
                .strip_prefix('n')
                .and_then(|r| r.strip_suffix(".test:1"))
            {
                Some(n) => Ok(vec![SocketAddr::from(([127, 0, 0, n.parse().unwrap()], 1))]),
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
    ) -> Vec<(u32, Result<Addrs, String>)> {
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
            Lookup::Ready(vec![SocketAddr::from(([127, 0, 0, 1], 22))]),
            "addresses need no lookup"
        );
        assert_eq!(r.lookup("slow.test:1", 1, t0), Lookup::Pending);
        assert_eq!(r.lookup("slow.test:1", 2, t0), Lookup::Pending);
        // While slow.test hangs in one thread, another name is answered.
        assert_eq!(r.lookup("n5.test:1", 3, t0), Lookup::Pending);
        let got = next_answers(&mut r, &woken, t0);
        assert_eq!(
            got,
            vec![(3, Ok(vec![SocketAddr::from(([127, 0, 0, 5], 1))]))]
        );
        release.send(()).unwrap();
        let mut got = next_answers(&mut r, &woken, t0);
        got.sort();
        let slow = Ok(vec![SocketAddr::from(([10, 0, 0, 1], 1))]);
        assert_eq!(got, vec![(1, slow.clone()), (2, slow)]);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one lookup per name");
    }

    #[test]
    fn addresses_are_cached_for_a_while_and_failures_not_at_all() {
        let (mut r, woken, _release, calls) = resolver();
        let t0 = Instant::now();
        assert_eq!(r.lookup("n7.test:1", 1, t0), Lookup::Pending);
        next_answers(&mut r, &woken, t0);
        let seven = vec![SocketAddr::from(([127, 0, 0, 7], 1))];
        let later = t0 + Duration::from_secs(RESOLVE_CACHE_SECS - 1);
        assert_eq!(
            r.lookup("n7.test:1", 2, later),
            Lookup::Ready(seven.clone())
        );
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
    fn a_names_addresses_are_sorted_without_duplicates_and_bounded() {
        let a = |n: u8| SocketAddr::from(([192, 0, 2, n], 443));
        assert_eq!(
            tidy(vec![a(3), a(1), a(3), a(2)]),
            Some(vec![a(1), a(2), a(3)])
        );
        assert_eq!(tidy(Vec::new()), None);
        let many = (0..=255).map(a).rev().collect();
        assert_eq!(tidy(many).unwrap().len(), MAX_RESOLVED_ADDRESSES);
        let local = system_lookup("localhost:1").expect("localhost resolves");
        assert!(local.windows(2).all(|w| w[0] < w[1]), "{local:?}");
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
                Lookup::Ready(a) => panic!("{a:?}"),
            }
        };
        assert!(failed.contains("being resolved already"), "{failed}");
        drop(release);
    }
}
