//! An edge on every core (`--workers N`, docs/design.md §2.9): N event loops in one process,
//! each a whole [`EdgeCore`] with its own poll, slots and connections; what crosses loops is
//! control, never bytes.
//!
//! ```text
//!  loop 0 (control): accept, TLS, requests, tokens, policies, logins, admin, console, store
//!     │ a tunnel connection is registered ─▶ Msg::Tunnel to the loop with the fewest tunnels
//!     │ a carrier is let in and routed    ─▶ Msg::Carrier to its tunnel's loop (with Open)
//!     │ kill, reload, revocation, delete  ─▶ Msg::EndSession / CloseTunnel / Reload
//!     ▼                                          SIGTERM ─▶ Msg::Shutdown
//!  loop k (worker): splices its tunnels and their carriers, runs their deadlines
//!     └─ a connection that came from loop 0 ends ─▶ Msg::Gone ─▶ loop 0 frees its stub
//! ```
//!
//! A connection that moves leaves a stub ([`Away`]) in its slot on loop 0: the slot keeps the
//! source IP's share of the connection limits, the routes keep naming it, and the admin API,
//! the console and `sessions list` read it (its facts are copied; a session's byte counts and a
//! tunnel's stream count are shared atomics). A carrier and the tunnel it streams through are
//! always on one loop, so splicing takes no lock. A message for a connection that has ended
//! meanwhile finds no slot (or another generation) and is dropped; a carrier routed to a
//! tunnel that ended on the way gets 503 "try again".

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use log::{debug, info, warn};
use rustls::pki_types::CertificateDer;
use serde_json::Value;

use super::sessions::Session;
use super::{Carrier, Conn, ConnId, EdgeCore, Tunnel};
use crate::edge::config::Application;
use crate::limits::EdgeLimits;
use crate::proto::mux;

/// Wakes one loop (its mio `Waker`).
pub(crate) type Wake = Arc<dyn Fn() + Send + Sync>;

/// What one loop sends another.
pub(super) enum Msg {
    /// Control → worker: a registered tunnel connection, served there from now on; `home`
    /// names its stub on loop 0.
    Tunnel { t: Box<Tunnel>, home: ConnId },
    /// Control → worker: a carrier let in and routed to the tunnel whose stub is `tunnel`.
    Carrier {
        c: Box<Carrier>,
        home: ConnId,
        tunnel: ConnId,
        open: Box<Open>,
    },
    /// Control → worker: end that tunnel connection with an ERROR.
    CloseTunnel {
        tunnel: ConnId,
        code: mux::ErrorCode,
        message: String,
    },
    /// Control → worker: end a session (a kill, a policy that changed, a revoked token).
    EndSession {
        id: String,
        code: u16,
        reason: String,
    },
    /// Control → worker: a reloaded config's applications and limits.
    Reload {
        applications: Vec<Application>,
        limits: EdgeLimits,
    },
    /// Control → worker: SIGTERM.
    Shutdown,
    /// Worker → control: the connection that left `home` has ended.
    Gone { home: ConnId },
}

/// What opening a routed carrier's stream needs, decided on loop 0 (`carrier::open_stream`).
pub(super) struct Open {
    pub(super) session: Session,
    /// `resume` or `start` for the origin (a resumable stream), if any.
    pub(super) resume: Option<&'static str>,
    /// A jump host's destination, canonical.
    pub(super) destination: Option<String>,
    /// The origin connector a resumable stream was granted on (`Postern-Resume` header).
    pub(super) granted: Option<String>,
    /// The client's `Sec-WebSocket-Key`.
    pub(super) key: String,
    pub(super) audit: serde_json::Map<String, Value>,
}

/// One other loop: its inbox and its waker.
struct Peer {
    tx: Sender<Msg>,
    wake: Wake,
}

impl Peer {
    fn send(&self, m: Msg) {
        // A loop that has stopped (shutdown) takes nothing more: the message is dropped.
        if self.tx.send(m).is_ok() {
            (self.wake)();
        }
    }
}

/// This loop's place among the edge's loops.
pub(crate) struct Loops {
    me: usize,
    /// On a worker: loop 0.
    control: Option<Peer>,
    /// On loop 0: the workers, loop 1 first.
    workers: Vec<Peer>,
    inbox: Option<Receiver<Msg>>,
}

impl Loops {
    /// One loop, alone: nothing crosses.
    pub(crate) fn single() -> Loops {
        Loops {
            me: 0,
            control: None,
            workers: Vec::new(),
            inbox: None,
        }
    }

    /// The links of `wakes.len()` loops, loop 0 first.
    pub(crate) fn wire(wakes: Vec<Wake>) -> Vec<Loops> {
        let (txs, rxs): (Vec<Sender<Msg>>, Vec<Receiver<Msg>>) =
            wakes.iter().map(|_| mpsc::channel()).unzip();
        let peer = |i: usize| Peer {
            tx: txs[i].clone(),
            wake: wakes[i].clone(),
        };
        rxs.into_iter()
            .enumerate()
            .map(|(me, inbox)| Loops {
                me,
                control: (me > 0).then(|| peer(0)),
                workers: if me == 0 {
                    (1..wakes.len()).map(peer).collect()
                } else {
                    Vec::new()
                },
                inbox: Some(inbox),
            })
            .collect()
    }

    /// This loop's number (0: the control loop).
    pub(crate) fn me(&self) -> usize {
        self.me
    }

    /// How many loops the edge runs.
    fn count(&self) -> usize {
        if self.me == 0 {
            1 + self.workers.len()
        } else {
            0
        }
    }

    fn to_worker(&self, lp: usize, m: Msg) {
        if let Some(p) = lp.checked_sub(1).and_then(|i| self.workers.get(i)) {
            p.send(m);
        }
    }

    fn broadcast(&self, m: impl Fn() -> Msg) {
        for p in &self.workers {
            p.send(m());
        }
    }
}

/// A tunnel connection's live figures, written by the loop that serves it and read by loop 0
/// when it routes (relaxed: a route may read one pass late, and the worker checks again).
#[derive(Default)]
pub(super) struct TunnelLive {
    streams: AtomicUsize,
    /// Not closing, not draining, no error: it takes new streams.
    usable: AtomicBool,
    /// Its smallest round trip in microseconds (`mux::Session::rtt_micros`); 0 until measured.
    rtt_micros: AtomicU64,
}

impl TunnelLive {
    pub(super) fn set(&self, t: &Tunnel) {
        self.streams.store(t.mux.stream_count(), Ordering::Relaxed);
        self.usable.store(t.usable(), Ordering::Relaxed);
        let rtt = t.mux.rtt_micros().unwrap_or(0);
        self.rtt_micros.store(rtt, Ordering::Relaxed);
    }

    pub(super) fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    pub(super) fn rtt_micros(&self) -> Option<u64> {
        Some(self.rtt_micros.load(Ordering::Relaxed)).filter(|&us| us > 0)
    }

    pub(super) fn usable(&self) -> bool {
        self.usable.load(Ordering::Relaxed)
    }
}

impl Tunnel {
    /// Not closing, not draining, no error: it takes new streams.
    fn usable(&self) -> bool {
        !self.closing && !self.mux.is_going_away() && self.mux.error().is_none()
    }
}

/// What a slot of loop 0 holds for a connection that moved to a worker.
pub(super) enum Away {
    Tunnel(Box<RemoteTunnel>),
    Carrier(Box<RemoteCarrier>),
}

/// A tunnel connection served by another loop, as loop 0 routes to it and shows it.
pub(super) struct RemoteTunnel {
    pub(super) lp: usize,
    pub(super) peer: SocketAddr,
    pub(super) cert: CertificateDer<'static>,
    pub(super) cert_fp: String,
    pub(super) hostname: Option<String>,
    pub(super) named: Option<String>,
    pub(super) connector: String,
    pub(super) ha_index: u8,
    pub(super) opened: u64,
    pub(super) resumable: bool,
    pub(super) bastion: bool,
    pub(super) live: Arc<TunnelLive>,
    /// An ERROR was sent its way: it is on its way out.
    pub(super) closing: bool,
}

/// A carrier streaming on another loop, as loop 0 lists, kills and revokes it.
pub(super) struct RemoteCarrier {
    pub(super) lp: usize,
    pub(super) peer: SocketAddr,
    pub(super) sni: String,
    pub(super) service_token: Option<String>,
    pub(super) session: Session,
}

/// What a route needs of a tunnel connection, wherever it is served.
pub(super) struct Facts {
    pub(super) streams: usize,
    pub(super) usable: bool,
    pub(super) resumable: bool,
    pub(super) bastion: bool,
    pub(super) connector: String,
    pub(super) peer: SocketAddr,
}

impl EdgeCore {
    /// The loops of a `--workers` edge (set by the driver before the loop starts).
    pub(crate) fn set_loops(&mut self, loops: Loops) {
        self.loops = loops;
    }

    /// A worker stopped at SIGTERM (loop 0's `Msg::Shutdown`): its driver ends.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    /// The slots of connections that arrived from another loop since the last call: the
    /// driver registers their sockets under them.
    pub(crate) fn take_arrivals(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.arrivals)
    }

    /// The driver could not register the arrival in `slot` with its poll: it ends.
    pub(crate) fn arrival_failed(&mut self, slot: usize) {
        match self.conns[slot].take() {
            Some(Conn::Carrier(c)) => self.end_carrier(slot, c, "could not join its loop"),
            Some(Conn::Tunnel(t)) => self.end_tunnel(slot, t, "could not join its loop"),
            _ => {}
        }
        self.release(slot);
    }

    /// The socket of `slot`, for the driver to register an arrival.
    pub(crate) fn sock_mut(&mut self, slot: usize) -> Option<&mut super::Sock> {
        match self.conns.get_mut(slot)?.as_mut()? {
            Conn::Carrier(c) => Some(&mut c.tls.sock),
            Conn::Tunnel(t) => Some(&mut t.tls.sock),
            Conn::Admin(a) => Some(&mut a.tls.sock),
            Conn::Accepting { sock, .. } => Some(sock),
            Conn::Away(_) => None,
        }
    }

    /// The figures a route needs of the tunnel connection in `slot`, local or away.
    pub(super) fn tunnel_facts(&self, slot: usize) -> Option<Facts> {
        match self.conns.get(slot)?.as_ref()? {
            Conn::Tunnel(t) => Some(Facts {
                streams: t.mux.stream_count(),
                usable: t.usable(),
                resumable: t.resumable,
                bastion: t.bastion,
                connector: t.connector.clone(),
                peer: t.peer,
            }),
            Conn::Away(a) => match a.as_ref() {
                Away::Tunnel(r) => Some(Facts {
                    streams: r.live.streams(),
                    usable: !r.closing && r.live.usable(),
                    resumable: r.resumable,
                    bastion: r.bastion,
                    connector: r.connector.clone(),
                    peer: r.peer,
                }),
                Away::Carrier(_) => None,
            },
            _ => None,
        }
    }

    /// Ends the tunnel connection in `slot` with ERROR `code` (here, or on its loop). False
    /// if the slot holds no tunnel connection.
    pub(super) fn error_tunnel(
        &mut self,
        slot: usize,
        code: mux::ErrorCode,
        message: &str,
    ) -> bool {
        let home = self.conn_id(slot);
        match self.conns[slot].as_mut() {
            Some(Conn::Tunnel(t)) => {
                t.mux.send_error(code, message);
                t.closing = true;
                self.mark(slot);
                true
            }
            Some(Conn::Away(a)) => match a.as_mut() {
                Away::Tunnel(r) => {
                    r.closing = true;
                    let lp = r.lp;
                    self.loops.to_worker(
                        lp,
                        Msg::CloseTunnel {
                            tunnel: home,
                            code,
                            message: message.to_owned(),
                        },
                    );
                    true
                }
                Away::Carrier(_) => false,
            },
            _ => false,
        }
    }

    /// Loop 0, after a pass ran `slot`: a registered tunnel connection goes to the loop with
    /// the fewest tunnel connections, and a carrier routed to a tunnel on another loop goes
    /// there; each leaves a stub. True if the connection left.
    pub(super) fn move_out(&mut self, slot: usize, conn: Conn) -> Result<(), Conn> {
        match conn {
            Conn::Tunnel(mut t) if t.moving => {
                t.moving = false;
                // A carrier routed to it in the same pass (a parked request run again) opened
                // a stream here already: it stays, with its streams, on this loop.
                if !t.carriers.is_empty() || t.mux.stream_count() > 0 {
                    return Err(Conn::Tunnel(t));
                }
                let Some(lp) = self.quietest_loop().filter(|&lp| lp != 0) else {
                    return Err(Conn::Tunnel(t));
                };
                t.tls.sock.leave();
                let live = Arc::new(TunnelLive::default());
                live.set(&t);
                t.live = Some(live.clone());
                let stub = RemoteTunnel {
                    lp,
                    peer: t.peer,
                    cert: t.cert.clone(),
                    cert_fp: t.cert_fp.clone(),
                    hostname: t.hostname.clone(),
                    named: t.named.clone(),
                    connector: t.connector.clone(),
                    ha_index: t.ha_index,
                    opened: t.opened,
                    resumable: t.resumable,
                    bastion: t.bastion,
                    live,
                    closing: false,
                };
                info!(
                    "tunnel {} ({}, connection {}) is served by loop {lp}",
                    t.peer,
                    t.hostname.as_deref().or(t.named.as_deref()).unwrap_or("-"),
                    t.ha_index
                );
                let home = self.conn_id(slot);
                self.loops.to_worker(lp, Msg::Tunnel { t, home });
                self.conns[slot] = Some(Conn::Away(Box::new(Away::Tunnel(Box::new(stub)))));
                Ok(())
            }
            Conn::Carrier(mut c) if c.moving.is_some() => {
                let (tunnel, open) = c.moving.take().expect("bug: checked above");
                let lp = match self.conns.get(tunnel.slot).and_then(Option::as_ref) {
                    Some(Conn::Away(a)) if self.generations[tunnel.slot] == tunnel.generation => {
                        match a.as_ref() {
                            Away::Tunnel(r) => r.lp,
                            Away::Carrier(_) => 0,
                        }
                    }
                    _ => 0,
                };
                if lp == 0 {
                    // The tunnel ended between the route and now (its stub is gone).
                    let mut audit = open.audit;
                    audit.insert("reason".into(), "tunnel went away".into());
                    self.deny(audit, crate::metrics::Auth::TunnelBusy);
                    super::carrier::refuse(
                        &mut c,
                        503,
                        "Service Unavailable",
                        "tunnel went away; try again",
                    );
                    self.mark(slot);
                    return Err(Conn::Carrier(c));
                }
                c.tls.sock.leave();
                let stub = RemoteCarrier {
                    lp,
                    peer: c.peer,
                    sni: c.sni.clone(),
                    service_token: c.service_token.clone(),
                    session: open.session.clone(),
                };
                let home = self.conn_id(slot);
                self.loops.to_worker(
                    lp,
                    Msg::Carrier {
                        c,
                        home,
                        tunnel,
                        open,
                    },
                );
                self.conns[slot] = Some(Conn::Away(Box::new(Away::Carrier(Box::new(stub)))));
                Ok(())
            }
            other => Err(other),
        }
    }

    /// The loop with the fewest registered tunnel connections (loop 0 counts its own); a tie
    /// goes to a worker, as loop 0 also does every handshake and request.
    fn quietest_loop(&self) -> Option<usize> {
        let n = self.loops.count();
        if n <= 1 {
            return None;
        }
        let mut load = vec![0usize; n];
        for conn in self.conns.iter().flatten() {
            match conn {
                Conn::Tunnel(t) if t.deadline.is_none() => load[0] += 1,
                Conn::Away(a) => {
                    if let Away::Tunnel(r) = a.as_ref() {
                        if let Some(l) = load.get_mut(r.lp) {
                            *l += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        (0..n).min_by_key(|&lp| (load[lp], lp == 0, lp))
    }

    /// The inbox: what other loops sent (the driver's waker fired).
    pub(super) fn take_messages(&mut self) {
        let Some(inbox) = self.loops.inbox.take() else {
            return;
        };
        while let Ok(m) = inbox.try_recv() {
            self.on_message(m);
        }
        self.loops.inbox = Some(inbox);
    }

    fn on_message(&mut self, m: Msg) {
        match m {
            Msg::Tunnel { t, home } => {
                let slot = self.arrive(home);
                self.homes.insert(home, slot);
                debug!("tunnel {} arrived on loop {}", t.peer, self.loops.me);
                self.conns[slot] = Some(Conn::Tunnel(t));
            }
            Msg::Carrier {
                mut c,
                home,
                tunnel,
                open,
            } => {
                let slot = self.arrive(home);
                c.now = self.now;
                let tunnel = self.homes.get(&tunnel).copied();
                self.open_stream(slot, &mut c, tunnel, *open);
                self.conns[slot] = Some(Conn::Carrier(c));
            }
            Msg::CloseTunnel {
                tunnel,
                code,
                message,
            } => {
                if let Some(&slot) = self.homes.get(&tunnel) {
                    self.error_tunnel(slot, code, &message);
                }
            }
            Msg::EndSession { id, code, reason } => {
                for slot in self.session_slots(|s| s.id == id) {
                    self.end_session(slot, code, &reason);
                }
            }
            Msg::Reload {
                applications,
                limits,
            } => {
                self.settings.applications = applications;
                self.settings.limits = limits;
            }
            Msg::Shutdown => {
                let (now, unix) = (self.now, self.unix);
                self.shutdown(now, unix);
                self.stopped = true;
            }
            Msg::Gone { home } => self.gone(home),
        }
    }

    /// A slot for a connection that arrived from loop 0 (whose stub is `home`).
    fn arrive(&mut self, home: ConnId) -> usize {
        let slot = self.alloc();
        self.slot_home[slot] = Some(home);
        self.arrivals.push(slot);
        self.mark(slot);
        slot
    }

    /// A worker frees `slot`: the connection ended; loop 0 frees its stub.
    pub(super) fn left(&mut self, slot: usize) {
        if let Some(home) = self.slot_home[slot].take() {
            self.homes.remove(&home);
            if let Some(c) = &self.loops.control {
                c.send(Msg::Gone { home });
            }
        }
    }

    /// Loop 0: the connection that left `home` has ended on its loop.
    fn gone(&mut self, home: ConnId) {
        if self.generations.get(home.slot) != Some(&home.generation) {
            warn!("bug: a worker's connection ended twice");
            return;
        }
        let slot = home.slot;
        if !matches!(self.conns[slot], Some(Conn::Away(_))) {
            warn!("bug: a worker's connection ended on a slot without a stub");
            return;
        }
        let Some(Conn::Away(a)) = self.conns[slot].take() else {
            return;
        };
        match *a {
            Away::Tunnel(r) => self.unroute(slot, r.hostname.as_deref(), r.named.as_deref()),
            Away::Carrier(r) => self.console.chart.ended(r.session.bytes.total()),
        }
        self.release(slot);
    }

    /// Loop 0 ends a session that streams on another loop.
    pub(super) fn end_away_session(&mut self, slot: usize, code: u16, reason: &str) -> bool {
        let Some(Conn::Away(a)) = self.conns[slot].as_mut() else {
            return false;
        };
        let Away::Carrier(r) = a.as_mut() else {
            return false;
        };
        if r.session.ended_by.is_some() {
            return false;
        }
        r.session.ended_by = Some(reason.to_owned());
        r.service_token = None;
        let (lp, id) = (r.lp, r.session.id.clone());
        self.loops.to_worker(
            lp,
            Msg::EndSession {
                id,
                code,
                reason: reason.to_owned(),
            },
        );
        true
    }

    /// Loop 0 at reload and SIGTERM: the workers follow.
    pub(super) fn tell_workers_reload(&mut self) {
        let (apps, limits) = (&self.settings.applications, &self.settings.limits);
        self.loops.broadcast(|| Msg::Reload {
            applications: apps.clone(),
            limits: limits.clone(),
        });
    }

    pub(super) fn tell_workers_shutdown(&mut self) {
        self.loops.broadcast(|| Msg::Shutdown);
    }
}
