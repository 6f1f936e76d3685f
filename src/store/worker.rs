//! The thread that owns a [`Store`], so that no event loop ever waits for a disk or a cluster.
//!
//! ```text
//!  edge loop ── submit(Request) ──▶ bounded queue (MAX_STORE_REQUESTS) ──▶ worker thread
//!      ▲            │ full: Busy (the caller refuses, never waits)          │ up to MAX_STORE_BATCH
//!      │            ▼                                                       ▼ at once: Store::execute
//!   Waker ◀── answered() ◀── Report::Change…, then Report::Answer(Ticket, Answer) in request order
//! ```
//!
//! A [`Ticket`] names each request; the loop keeps what it needs to resume (a parked
//! connection's generation-checked id) under it, and finds it again when the answer comes.
//! Answers come in the order the requests went in; changes made by others that the batch
//! brought to light ([`Store::changes`]) come just before them. Dropping the worker runs what
//! is still queued, then ends the thread: changes already accepted reach the store before the
//! edge exits.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::{Answer, Change, Request, Store, StoreError};
use crate::limits::{MAX_STORE_BATCH, MAX_STORE_REQUESTS, STORE_POLL_INTERVAL};

/// Names one submitted request; answers carry it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

/// The queue is full (or the worker is gone): the request was not taken.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

/// What the worker sends back.
#[derive(Debug)]
pub enum Report {
    /// The answer to the request with this ticket.
    Answer(Ticket, Answer),
    /// A change someone else made.
    Change(Change),
}

/// A [`Store`] on a thread of its own. See the module doc.
pub struct StoreWorker {
    requests: Option<SyncSender<(Ticket, Request)>>,
    answers: Receiver<Report>,
    next: u64,
    thread: Option<JoinHandle<()>>,
    up: Arc<AtomicBool>,
}

/// What every request gets while the breaker holds a remote store down.
pub const UNREACHABLE: &str = "unreachable at the last try (tried again every second)";

/// The worker's circuit breaker: after a remote store could not be reached, requests fail at
/// once (no wait for the connect and request timeouts, per endpoint) until the once-a-second
/// poll reaches it again.
struct Breaker {
    remote: bool,
    down: bool,
    up: Arc<AtomicBool>,
}

impl Breaker {
    fn failed(&mut self, e: &StoreError) {
        if self.remote && matches!(e, StoreError::Unavailable(_)) && !self.down {
            log::warn!(
                "state store unreachable ({e}): requests fail at once until it answers again \
                 (tried every {}s); live sessions and known tokens go on",
                STORE_POLL_INTERVAL.as_secs()
            );
            self.down = true;
            self.up.store(false, Ordering::Relaxed);
        }
    }

    fn answered(&mut self) {
        if self.down {
            log::warn!("state store reachable again");
        }
        self.down = false;
        self.up.store(true, Ordering::Relaxed);
    }
}

impl StoreWorker {
    /// Moves `store` to a new thread; `answered` runs on that thread after each batch is
    /// answered (the edge wakes its loop with it).
    pub fn start(
        mut store: Box<dyn Store>,
        answered: impl Fn() + Send + 'static,
    ) -> io::Result<StoreWorker> {
        let (requests, queue) = mpsc::sync_channel::<(Ticket, Request)>(MAX_STORE_REQUESTS);
        let (done, answers) = mpsc::channel();
        let up = Arc::new(AtomicBool::new(true));
        let health = up.clone();
        let thread = std::thread::Builder::new()
            .name("postern-store".into())
            .spawn(move || {
                let mut breaker = Breaker {
                    remote: store.remote(),
                    down: false,
                    up: health,
                };
                let mut polled = Instant::now();
                // Every STORE_POLL_INTERVAL: changes made by others, and, while the breaker
                // holds the store down, the one call that tries it again.
                let poll =
                    |store: &mut Box<dyn Store>, polled: &mut Instant, breaker: &mut Breaker| {
                        if polled.elapsed() < STORE_POLL_INTERVAL {
                            return false;
                        }
                        *polled = Instant::now();
                        match store.poll() {
                            Ok(()) => breaker.answered(),
                            Err(e) => {
                                if !breaker.down {
                                    log::warn!("state store: looking for changes: {e}");
                                }
                                breaker.failed(&e);
                            }
                        }
                        true
                    };
                loop {
                    let first = match queue.recv_timeout(STORE_POLL_INTERVAL) {
                        Ok(first) => first,
                        Err(RecvTimeoutError::Timeout) => {
                            let was_down = breaker.down;
                            if poll(&mut store, &mut polled, &mut breaker) {
                                let changes = store.changes();
                                if !changes.is_empty() || was_down != breaker.down {
                                    for change in changes {
                                        let _ = done.send(Report::Change(change));
                                    }
                                    answered();
                                }
                            }
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    // A busy worker looks all the same: its changes go out with this batch.
                    poll(&mut store, &mut polled, &mut breaker);
                    let mut batch = vec![first];
                    while batch.len() < MAX_STORE_BATCH {
                        match queue.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let (tickets, requests): (Vec<Ticket>, Vec<Request>) =
                        batch.into_iter().unzip();
                    let answers = if breaker.remote {
                        // One at a time: once one finds the store unreachable, the rest fail
                        // at once, not each after the timeouts; the poll above tries the
                        // store again once a second.
                        let mut answers = Vec::with_capacity(requests.len());
                        for r in requests {
                            if breaker.down {
                                answers.push(r.failed(StoreError::Unavailable(UNREACHABLE.into())));
                                continue;
                            }
                            let answer = store.execute(vec![r]).pop().expect("bug: one answer");
                            if answer.unavailable() {
                                if let Some(e) = answer.clone().error() {
                                    breaker.failed(&e);
                                }
                            }
                            answers.push(answer);
                        }
                        answers
                    } else {
                        store.execute(requests)
                    };
                    debug_assert_eq!(answers.len(), tickets.len(), "bug: one answer each");
                    // When the loop is gone (shutting down), the changes are made all the same.
                    for change in store.changes() {
                        let _ = done.send(Report::Change(change));
                    }
                    for (ticket, answer) in tickets.into_iter().zip(answers) {
                        let _ = done.send(Report::Answer(ticket, answer));
                    }
                    answered();
                }
            })?;
        Ok(StoreWorker {
            requests: Some(requests),
            answers,
            next: 0,
            thread: Some(thread),
            up,
        })
    }

    /// Whether the store answers: false from a failure to reach a remote store (etcd) until
    /// a call succeeds again (tried every [`STORE_POLL_INTERVAL`]).
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Queues `request`, never waiting: [`Busy`] when [`MAX_STORE_REQUESTS`] are queued.
    pub fn submit(&mut self, request: Request) -> Result<Ticket, Busy> {
        let Some(requests) = &self.requests else {
            return Err(Busy);
        };
        let ticket = Ticket(self.next);
        match requests.try_send((ticket, request)) {
            Ok(()) => {
                self.next += 1;
                Ok(ticket)
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }

    /// The reports that have come in, answers in request order; never waits.
    pub fn reports(&self) -> mpsc::TryIter<'_, Report> {
        self.answers.try_iter()
    }
}

impl Drop for StoreWorker {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::FileStore;
    use crate::store::tests::TempDir;
    use crate::store::{Expect, HostOwner, HostnameRecord, StateDir, StoreError};

    fn claim(host: &str, fp: &str) -> Request {
        Request::ClaimHostname {
            hostname: host.into(),
            record: HostnameRecord {
                owner: HostOwner::Certificate(fp.into()),
                zone: "example.com".into(),
                first_registered: 1,
            },
            expect: Expect::Absent,
        }
    }

    #[test]
    fn answers_come_in_order_through_the_wake_up_and_reach_the_disk() {
        let tmp = TempDir::new("store-worker");
        let state = StateDir::open(&tmp.0).unwrap();
        let store = FileStore::open(&state).unwrap();
        let (tx, woken) = mpsc::channel();
        let mut worker = StoreWorker::start(Box::new(store), move || {
            let _ = tx.send(());
        })
        .unwrap();
        let (a, b) = ("ab".repeat(32), "cd".repeat(32));
        let mut tickets = Vec::new();
        for i in 0..20 {
            tickets.push(
                worker
                    .submit(claim(&format!("h{i}.example.com"), &a))
                    .unwrap(),
            );
        }
        // Two writers for one hostname: the first in wins, the second learns who owns it.
        tickets.push(worker.submit(claim("x.example.com", &a)).unwrap());
        tickets.push(worker.submit(claim("x.example.com", &b)).unwrap());
        let mut got = Vec::new();
        while got.len() < tickets.len() {
            woken
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("the worker wakes the loop after each batch");
            got.extend(worker.reports().map(|r| match r {
                Report::Answer(t, a) => (t, a),
                Report::Change(c) => panic!("nobody else changed anything: {c:?}"),
            }));
        }
        assert_eq!(got.iter().map(|(t, _)| *t).collect::<Vec<_>>(), tickets);
        match &got[20].1 {
            Answer::Hostname { result: Ok(c), .. } => assert!(c.new),
            other => panic!("{other:?}"),
        }
        match &got[21].1 {
            Answer::Hostname {
                result: Err(StoreError::Owned(cur)),
                ..
            } => assert_eq!(cur.value.owner, HostOwner::Certificate(a.clone())),
            other => panic!("{other:?}"),
        }
        // Accepted requests are run before the worker ends.
        worker.submit(claim("last.example.com", &a)).unwrap();
        drop(worker);
        let text = std::fs::read_to_string(tmp.0.join("hostnames.json")).unwrap();
        assert!(text.contains("last.example.com") && text.contains("h19.example.com"));
    }

    #[test]
    fn a_token_removed_from_the_file_is_reported_before_the_answer_that_noticed() {
        let tmp = TempDir::new("store-worker-changes");
        let state = StateDir::open(&tmp.0).unwrap();
        let (kept, _) = crate::store::ServiceTokens::create(&state, "kept", None).unwrap();
        let (gone, _) = crate::store::ServiceTokens::create(&state, "gone", None).unwrap();
        let store = FileStore::open(&state).unwrap();
        let (tx, woken) = mpsc::channel();
        let mut worker = StoreWorker::start(Box::new(store), move || {
            let _ = tx.send(());
        })
        .unwrap();
        // An operator deletes "gone" and the CLI adds "new", while the edge runs.
        let path = tmp.0.join("service-tokens.json");
        let mut file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        file["tokens"]
            .as_array_mut()
            .unwrap()
            .retain(|t| t["name"] != "gone");
        state
            .write_atomic("service-tokens.json", file.to_string().as_bytes(), 0o600)
            .unwrap();
        let (new, _) = crate::store::ServiceTokens::create(&state, "new", None).unwrap();
        let ticket = worker
            .submit(Request::ServiceToken {
                client_id: "unknown.access".into(),
            })
            .unwrap();
        // (The worker's once-a-second poll may have found the changes first, in a report
        // of their own: either way they come before the answer.)
        let mut reports: Vec<Report> = Vec::new();
        while !matches!(reports.last(), Some(Report::Answer(..))) {
            woken
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("answered");
            reports.extend(worker.reports());
        }
        let mut changed: Vec<(String, bool)> = Vec::new();
        for r in &reports[..reports.len() - 1] {
            match r {
                Report::Change(Change::ServiceToken { client_id, record }) => {
                    changed.push((client_id.clone(), record.is_some()))
                }
                other => panic!("changes come first: {other:?}"),
            }
        }
        changed.sort();
        let mut want = vec![(gone, false), (new, true)];
        want.sort();
        assert_eq!(changed, want, "{kept} did not change");
        assert!(matches!(
            reports.last(),
            Some(Report::Answer(t, Answer::ServiceToken { result: Ok(None), .. })) if *t == ticket
        ));
    }

    #[test]
    fn an_idle_worker_reports_a_revocation_written_by_another_process_within_two_seconds() {
        let tmp = TempDir::new("store-worker-revocations");
        let state = StateDir::open(&tmp.0).unwrap();
        let store = FileStore::open(&state).unwrap();
        let (tx, woken) = mpsc::channel();
        let worker = StoreWorker::start(Box::new(store), move || {
            let _ = tx.send(());
        })
        .unwrap();
        let start = Instant::now();
        let revoked = crate::store::Revocation::ServiceToken {
            client_id: "laptop.access".into(),
            reason: String::new(),
        };
        // As `postern edge service-token revoke` does, with no request to the worker.
        FileStore::open(&state)
            .unwrap()
            .revoke(revoked.clone())
            .unwrap();
        woken
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the worker wakes the loop when it finds a revocation");
        assert!(
            start.elapsed() < 2 * STORE_POLL_INTERVAL,
            "{:?}",
            start.elapsed()
        );
        let reports: Vec<Report> = worker.reports().collect();
        assert!(
            matches!(&reports[..], [Report::Change(Change::Revoked(r))] if *r == revoked),
            "{reports:?}"
        );
    }
}
