//! The edge's side of its state store (`crate::store`): a view of the records for the checks
//! made on every request, and the connections parked while the store worker answers.
//!
//! ```text
//!  driver: store.snapshot() ─▶ views (tokens, hostnames, tunnels, revocations)
//!  loop:  need the store ─▶ StoreLink::submit(Request, Waiter) ─▶ connection parked
//!                                 │ busy: refused at once (503), never queued here
//!         Waker ─▶ store_answers(): each Answer updates the views, then resumes its Waiter
//!                  if that very connection (ConnId: slot + generation) is still there
//! ```
//!
//! The views are caches: the store decides (compare-and-swap), and an answer always carries
//! the record as the store has it, so a stale view costs one refused request, never a wrong
//! owner. A view changes only through answers (and, with etcd, through the watch stream's
//! changes made by other edges, applied the same way).
//!
//! Who waits:
//! - a carrier whose service-token id is not in the view: its request head is kept and run
//!   again once the store has looked the id up (a token created since the edge started);
//! - a tunnel connection whose REGISTER claims a hostname: REGISTERED once the claim is stored;
//! - an admin request that changes tunnels or routes (see `admin.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use log::{info, warn};

use super::loops::Away;
use super::{refusal, Conn, ConnId, EdgeCore, Registering, Tunnel, Waiter};
use crate::limits::MAX_STORE_REQUESTS;
use crate::proto::carrier;
use crate::proto::mux::ErrorCode;
use crate::proto::ws;
use crate::store::worker::{Busy, Report, StoreWorker, Ticket};
use crate::store::{
    Answer, Change, Expect, HostOwner, HostnameRecord, Request, Revocation, ServiceTokenRecord,
    Snapshot, StoreError, TunnelRecord, Versioned,
};
use rustls::pki_types::CertificateDer;

/// The service tokens the edge knows, by client id, and the revoked ones.
#[derive(Default)]
pub(super) struct TokenView {
    tokens: HashMap<String, ServiceTokenRecord>,
    revoked: BTreeSet<String>,
    /// Zone sessions revoked: (zone, email) ─▶ those issued at or before this Unix second.
    zone_sessions: HashMap<(String, String), u64>,
}

impl TokenView {
    /// Zone sessions of `email` in `zone` issued at or before `before` are refused from now on.
    pub(super) fn revoke_zone_sessions(&mut self, zone: &str, email: &str, before: u64) {
        let at = self
            .zone_sessions
            .entry((zone.to_owned(), email.to_owned()))
            .or_insert(before);
        *at = (*at).max(before);
    }

    /// Whether a zone session of `email` in `zone` issued at `iat` is revoked.
    pub(super) fn zone_session_revoked(&self, zone: &str, email: &str, iat: u64) -> bool {
        self.zone_sessions
            .get(&(zone.to_owned(), email.to_owned()))
            .is_some_and(|&before| iat <= before)
    }
}

/// What a service token's id and secret are worth.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verified {
    /// A token of this edge: its name.
    Token(String),
    /// A wrong secret.
    Refused,
    /// A revoked token.
    Revoked,
    /// A token past its expiry.
    Expired,
    /// An id the view does not hold: the store may (a token created since).
    Unknown,
}

impl TokenView {
    /// Every service token the edge knows, oldest first, each with whether it is revoked.
    pub(super) fn list(&self) -> Vec<(&ServiceTokenRecord, bool)> {
        let mut all: Vec<_> = self
            .tokens
            .values()
            .map(|t| (t, self.revoked.contains(&t.client_id)))
            .collect();
        all.sort_by(|a, b| (a.0.created, &a.0.name).cmp(&(b.0.created, &b.0.name)));
        all
    }

    /// "Revoked" and "expired" only to the holder of the secret: a client id alone (it is not
    /// secret: it sits in configs and logs) learns nothing about the token's state. `unix`:
    /// now, for expiry and a rotated-out secret's overlap.
    pub(super) fn verify(&self, client_id: &str, secret: &str, unix: u64) -> Verified {
        let revoked = self.revoked.contains(client_id);
        match self.tokens.get(client_id) {
            // The digests are compared in constant time.
            Some(t) if t.matches(secret, unix) && revoked => Verified::Revoked,
            Some(t) if t.matches(secret, unix) && t.expired(unix) => Verified::Expired,
            Some(t) if t.matches(secret, unix) => Verified::Token(t.name.clone()),
            Some(_) => Verified::Refused,
            // A revoked id is refused without asking the store again.
            None if revoked => Verified::Refused,
            None => Verified::Unknown,
        }
    }
}

impl TokenView {
    /// A warning for each token that expires within `ahead` seconds of `unix` (or has), not
    /// revoked: the operator's cue to create its successor.
    pub(super) fn expiring(&self, unix: u64, ahead: u64) -> Vec<String> {
        let mut out: Vec<String> = self
            .tokens
            .values()
            .filter(|t| !self.revoked.contains(&t.client_id))
            .filter_map(|t| {
                let at = t.expires?;
                Some(if at <= unix {
                    format!("service token {} has expired: the edge refuses it", t.name)
                } else if at - unix <= ahead {
                    format!(
                        "service token {} expires in {} h: create its successor \
                         (postern edge service-token create)",
                        t.name,
                        (at - unix) / 3600
                    )
                } else {
                    return None;
                })
            })
            .collect();
        out.sort();
        out
    }
}

/// Who holds a hostname (see [`HostnameView::owner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner<'a> {
    /// The origin certificate that registered it first, of `zone`.
    Certificate { zone: &'a str },
    /// The named tunnel it is routed to.
    Tunnel { id: &'a str, zone: &'a str },
}

/// Hostname ownership as the store last said.
#[derive(Default)]
pub(super) struct HostnameView {
    hostnames: BTreeMap<String, Versioned<HostnameRecord>>,
}

impl HostnameView {
    pub(super) fn get(&self, hostname: &str) -> Option<&Versioned<HostnameRecord>> {
        self.hostnames.get(hostname)
    }

    pub(super) fn owner(&self, hostname: &str) -> Option<Owner<'_>> {
        let rec = &self.hostnames.get(hostname)?.value;
        Some(match &rec.owner {
            HostOwner::Tunnel(id) => Owner::Tunnel {
                id,
                zone: &rec.zone,
            },
            HostOwner::Certificate(_) => Owner::Certificate { zone: &rec.zone },
        })
    }

    /// Whether the certificate with fingerprint `cert_sha256` owns `hostname` (not a route).
    pub(super) fn owned_by(&self, hostname: &str, cert_sha256: &str) -> bool {
        self.hostnames.get(hostname).is_some_and(
            |r| matches!(&r.value.owner, HostOwner::Certificate(fp) if fp.eq_ignore_ascii_case(cert_sha256)),
        )
    }

    /// The named tunnel `hostname` is routed to, if any.
    pub(super) fn tunnel_of(&self, hostname: &str) -> Option<&str> {
        match &self.hostnames.get(hostname)?.value.owner {
            HostOwner::Tunnel(id) => Some(id),
            HostOwner::Certificate(_) => None,
        }
    }

    /// How many hostnames of `zone` are routed to named tunnels.
    pub(super) fn routed_in_zone(&self, zone: &str) -> usize {
        self.hostnames
            .values()
            .filter(|r| matches!(r.value.owner, HostOwner::Tunnel(_)) && r.value.zone == zone)
            .count()
    }

    /// Every hostname routed to the named tunnel `id`, sorted.
    pub(super) fn routes_of(&self, id: &str) -> Vec<String> {
        self.hostnames
            .iter()
            .filter(|(_, r)| matches!(&r.value.owner, HostOwner::Tunnel(t) if t == id))
            .map(|(h, _)| h.clone())
            .collect()
    }

    fn set(&mut self, hostname: &str, record: Option<Versioned<HostnameRecord>>) {
        match record {
            Some(r) => {
                self.hostnames.insert(hostname.to_owned(), r);
            }
            None => {
                self.hostnames.remove(hostname);
            }
        }
    }
}

/// The named tunnels, by id.
#[derive(Default)]
pub(super) struct TunnelView {
    tunnels: BTreeMap<String, TunnelRecord>,
}

impl TunnelView {
    pub(super) fn get(&self, id: &str) -> Option<&TunnelRecord> {
        self.tunnels.get(id)
    }

    /// The tunnel of `zone` called `name_or_id` (a name, or an id).
    pub(super) fn find(&self, zone: &str, name_or_id: &str) -> Option<(&str, &TunnelRecord)> {
        self.tunnels
            .iter()
            .filter(|(_, r)| r.zone == zone)
            .find(|(id, r)| *id == name_or_id || r.name == name_or_id)
            .map(|(id, r)| (id.as_str(), r))
    }

    /// Every tunnel of `zone`, by id.
    pub(super) fn of_zone<'a>(
        &'a self,
        zone: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a TunnelRecord)> + 'a {
        self.tunnels
            .iter()
            .filter(move |(_, r)| r.zone == zone)
            .map(|(id, r)| (id.as_str(), r))
    }
}

/// The revoked origin certificates, by fingerprint.
#[derive(Default)]
pub(super) struct CertView {
    revoked: BTreeSet<String>,
    /// Revoked by serial (lowercase hex).
    serials: BTreeSet<String>,
}

impl CertView {
    /// Whether the certificate (`fingerprint` its SHA-256) is revoked, by fingerprint or
    /// by serial.
    pub(super) fn is_revoked(&self, cert: &CertificateDer<'_>, fingerprint: &str) -> bool {
        self.revoked.contains(fingerprint)
            || (!self.serials.is_empty()
                && crate::pki::serial_hex(cert).is_some_and(|s| self.serials.contains(&s)))
    }
}

/// The views, from a store's snapshot.
pub(super) fn views(snapshot: Snapshot) -> (TokenView, HostnameView, TunnelView, CertView) {
    let tokens = TokenView {
        tokens: snapshot
            .service_tokens
            .into_iter()
            .map(|t| (t.client_id.clone(), t))
            .collect(),
        revoked: snapshot.revocations.service_tokens.into_keys().collect(),
        zone_sessions: Default::default(),
    };
    let mut tokens = tokens;
    for key in snapshot.revocations.zone_sessions.keys() {
        if let Some((zone, email, before)) = crate::store::parse_zone_sessions_key(key) {
            tokens.revoke_zone_sessions(&zone, &email, before);
        }
    }
    let certs = CertView {
        revoked: snapshot.revocations.certificates.into_keys().collect(),
        serials: snapshot.revocations.serials.into_keys().collect(),
    };
    (
        tokens,
        HostnameView {
            hostnames: snapshot.hostnames,
        },
        TunnelView {
            tunnels: snapshot.tunnels,
        },
        certs,
    )
}

/// The store worker and who waits for it. At most [`MAX_STORE_REQUESTS`] wait. A worker loop
/// of a `--workers` edge has none (`loops.rs`: every request that needs the store is served
/// on loop 0); a request there would be refused as busy.
pub(super) struct StoreLink {
    worker: Option<StoreWorker>,
    waiting: HashMap<Ticket, Waiter>,
}

impl StoreLink {
    pub(super) fn new(worker: Option<StoreWorker>) -> StoreLink {
        StoreLink {
            worker,
            waiting: HashMap::new(),
        }
    }

    /// Whether the store answers (false while the worker's breaker holds it down).
    pub(super) fn up(&self) -> bool {
        self.worker.as_ref().is_none_or(StoreWorker::up)
    }

    /// Hands `request` to the worker; `waiter` is resumed with its answer. Never waits: when
    /// the queue, or the table of waiters, is full, the waiter comes back (busy).
    pub(super) fn submit(&mut self, request: Request, waiter: Waiter) -> Result<Ticket, Waiter> {
        if self.waiting.len() >= MAX_STORE_REQUESTS {
            return Err(waiter);
        }
        let Some(worker) = self.worker.as_mut() else {
            return Err(waiter);
        };
        match worker.submit(request) {
            Ok(ticket) => {
                self.waiting.insert(ticket, waiter);
                Ok(ticket)
            }
            Err(Busy) => Err(waiter),
        }
    }
}

/// The ERROR code and message for a REGISTER whose claim the store refused.
pub(super) fn claim_refusal(hostname: &str, e: &StoreError) -> (ErrorCode, String) {
    match e {
        StoreError::Owned(cur) | StoreError::Changed(Some(cur)) => {
            let zone = &cur.value.zone;
            let message = match &cur.value.owner {
                HostOwner::Tunnel(id) => format!(
                    "hostname {hostname} is already registered: it is routed to the named tunnel \
                     {id} (zone {zone})"
                ),
                HostOwner::Certificate(_) => format!(
                    "hostname {hostname} is already registered by another origin certificate \
                     (zone {zone})"
                ),
            };
            (refusal::OWNED, message)
        }
        StoreError::TooMany => (
            refusal::TOO_MANY_HOSTNAMES,
            format!("hostname {hostname}: {e}"),
        ),
        _ => (
            refusal::NOT_RECORDED,
            format!("edge could not record the registration of {hostname}: {e}; try again"),
        ),
    }
}

impl EdgeCore {
    /// Claims `r.hostname` for the tunnel connection `t`: at once when the view says it holds
    /// it already, refused at once when the view says someone else does, else through the
    /// store (REGISTERED once the claim is stored).
    pub(super) fn claim_hostname(&mut self, slot: usize, t: &mut Tunnel, mut r: Registering) {
        let fingerprint = t.cert_fp.to_ascii_lowercase();
        let expect = match self.hostnames.get(&r.hostname) {
            None => Expect::Absent,
            Some(cur) if cur.value.owner == HostOwner::Certificate(fingerprint.clone()) => {
                return self.registered(slot, t, r);
            }
            Some(cur) => {
                let (code, message) = claim_refusal(&r.hostname, &StoreError::Owned(cur.clone()));
                return self.refuse_register(t, r.audit, code, &message);
            }
        };
        let request = Request::ClaimHostname {
            hostname: r.hostname.clone(),
            record: HostnameRecord {
                owner: HostOwner::Certificate(fingerprint),
                zone: crate::pki::origin_zone(&t.cert).unwrap_or_default(),
                first_registered: self.unix,
            },
            expect,
        };
        let conn = self.conn_id(slot);
        match self.store.submit(request, Waiter::Register { conn }) {
            Ok(ticket) => {
                r.ticket = Some(ticket);
                t.registering = Some(r);
            }
            Err(_busy) => self.refuse_register(
                t,
                r.audit,
                ErrorCode::from_u16(503),
                "the edge is busy recording registrations; try again",
            ),
        }
    }

    /// Parks carrier `c` until the store has looked up the service token `client_id`; its
    /// request `head` then runs again ([`EdgeCore::on_request`] with `looked_up`).
    pub(super) fn look_up_token(
        &mut self,
        slot: usize,
        c: &mut super::Carrier,
        request: carrier::Request,
        client_id: String,
    ) {
        let conn = self.conn_id(slot);
        let waiter = Waiter::Carrier {
            conn,
            request: Box::new(request),
        };
        match self
            .store
            .submit(Request::ServiceToken { client_id }, waiter)
        {
            // Parked (the handshake deadline still bounds it).
            Ok(_) => c.core.park(),
            Err(_busy) => super::refuse(
                c,
                503,
                "Service Unavailable",
                "the edge is busy checking service tokens; try again",
            ),
        }
    }

    /// Everything the store worker reported: views first, then whoever waits.
    pub(super) fn store_answers(&mut self) {
        let reports: Vec<Report> = match &self.store.worker {
            Some(w) => w.reports().collect(),
            None => return,
        };
        for report in reports {
            let (ticket, answer) = match report {
                Report::Answer(ticket, answer) => (ticket, answer),
                Report::Change(change) => {
                    self.apply_change(change);
                    continue;
                }
            };
            self.apply_to_views(&answer);
            match self.store.waiting.remove(&ticket) {
                // The store could not say: the token may be a new one, so not "unknown".
                Some(Waiter::Carrier { conn, .. }) if answer.unavailable() => {
                    self.store_unreachable(conn)
                }
                Some(Waiter::Carrier { conn, request }) => self.token_looked_up(conn, *request),
                Some(Waiter::Register { conn }) => self.claim_answered(conn, ticket, answer),
                Some(Waiter::Admin { conn, step }) => self.admin_answered(conn, *step, answer),
                Some(Waiter::Login { conn, step }) => self.login_answered(conn, *step, answer),
                Some(Waiter::Console { conn, step }) => self.console_answered(conn, *step, answer),
                None => {}
            }
        }
        self.run_dirty();
    }

    /// A change someone else made (a token added to or removed from the file).
    fn apply_change(&mut self, change: Change) {
        match change {
            Change::ServiceToken {
                client_id,
                record: Some(r),
            } => {
                self.tokens.tokens.insert(client_id, r);
            }
            Change::ServiceToken {
                client_id,
                record: None,
            } => {
                self.tokens.tokens.remove(&client_id);
            }
            Change::Revoked(r) => self.revoked(&r),
            Change::Hostname { hostname, record } => self.hostnames.set(&hostname, record),
            Change::Tunnel {
                id,
                record: Some(r),
            } => {
                self.tunnels.tunnels.insert(id, r);
            }
            Change::Tunnel { id, record: None } => {
                // Deleted through another edge: its certificate is refused from now on, and
                // its connections here end as they would after a delete here.
                let Some(rec) = self.tunnels.tunnels.remove(&id) else {
                    return;
                };
                let why = format!("tunnel {} was deleted", rec.name);
                for s in self.named.get(&id).cloned().unwrap_or_default() {
                    self.error_tunnel(s, refusal::NOT_COVERED, &why);
                }
                info!("tunnel {} ({id}) deleted through another edge", rec.name);
            }
        }
    }

    /// Something is revoked: the view refuses it from now on, and the connections that use
    /// it end (a carrier with a WebSocket Close, a tunnel connection with ERROR), each with
    /// an audit line.
    fn revoked(&mut self, r: &Revocation) {
        match r {
            Revocation::ServiceToken { client_id, .. } => {
                if !self.tokens.revoked.insert(client_id.clone()) {
                    return;
                }
                for slot in 0..self.conns.len() {
                    let (peer, sni, token) = match self.conns[slot].as_ref() {
                        Some(Conn::Carrier(c)) => (c.peer, &c.sni, &c.service_token),
                        Some(Conn::Away(a)) => match a.as_ref() {
                            Away::Carrier(r) => (r.peer, &r.sni, &r.service_token),
                            Away::Tunnel(_) => continue,
                        },
                        _ => continue,
                    };
                    if token.as_deref() != Some(client_id.as_str()) {
                        continue;
                    }
                    let sni = sni.clone();
                    if !self.end_session(slot, ws::close::POLICY, "service token revoked") {
                        continue;
                    }
                    info!("carrier {peer} ({sni}) closed: service token {client_id} revoked");
                    let mut fields = serde_json::Map::new();
                    fields.insert("peer".into(), peer.to_string().into());
                    fields.insert("hostname".into(), sni.into());
                    fields.insert("client_id".into(), client_id.clone().into());
                    fields.insert("decision".into(), "close".into());
                    fields.insert("reason".into(), "service token revoked".into());
                    self.audit.record("access", fields);
                }
            }
            Revocation::Certificate { sha256, .. } => {
                if self.certs.revoked.insert(sha256.clone()) {
                    self.close_revoked_tunnels(sha256);
                }
            }
            Revocation::Serial { serial, .. } => {
                if self.certs.serials.insert(serial.clone()) {
                    self.close_revoked_tunnels(&format!("serial {serial}"));
                }
            }
            Revocation::ZoneSessions {
                zone,
                email,
                before,
                ..
            } => self.tokens.revoke_zone_sessions(zone, email, *before),
        }
    }

    /// Ends the tunnel connections whose certificate is now revoked (`named`: how the
    /// revocation named it), each with ERROR and an audit line.
    fn close_revoked_tunnels(&mut self, named: &str) {
        for slot in 0..self.conns.len() {
            let (peer, sha256) = match self.conns[slot].as_ref() {
                Some(Conn::Tunnel(t))
                    if !t.closing
                        && !t.cert_fp.is_empty()
                        && self.certs.is_revoked(&t.cert, &t.cert_fp) =>
                {
                    (t.peer, t.cert_fp.clone())
                }
                Some(Conn::Away(a)) => match a.as_ref() {
                    Away::Tunnel(r) if !r.closing && self.certs.is_revoked(&r.cert, &r.cert_fp) => {
                        (r.peer, r.cert_fp.clone())
                    }
                    _ => continue,
                },
                _ => continue,
            };
            self.error_tunnel(slot, refusal::REVOKED, "origin certificate revoked");
            info!("tunnel {peer} closed: origin certificate {sha256} ({named}) revoked");
            let mut fields = serde_json::Map::new();
            fields.insert("peer".into(), peer.to_string().into());
            fields.insert("certificate".into(), sha256.clone().into());
            fields.insert("decision".into(), "close".into());
            fields.insert("reason".into(), "origin certificate revoked".into());
            self.audit.record("register", fields);
        }
    }

    fn apply_to_views(&mut self, answer: &Answer) {
        match answer {
            Answer::ServiceToken { client_id, result } => match result {
                Ok(Some(t)) => {
                    self.tokens.tokens.insert(client_id.clone(), t.clone());
                }
                Ok(None) => {
                    self.tokens.tokens.remove(client_id);
                }
                Err(e) => warn!("service token lookup: {e}"),
            },
            Answer::Hostname { hostname, result } => match result {
                Ok(claimed) => self.hostnames.set(hostname, Some(claimed.record.clone())),
                Err(StoreError::Owned(cur) | StoreError::Changed(Some(cur))) => {
                    self.hostnames.set(hostname, Some(cur.clone()))
                }
                Err(StoreError::Changed(None)) => self.hostnames.set(hostname, None),
                Err(_) => {}
            },
            Answer::Released {
                hostname,
                result: Ok(()),
            } => self.hostnames.set(hostname, None),
            Answer::Unrouted {
                result: Ok(gone), ..
            } => {
                for h in gone {
                    self.hostnames.set(h, None);
                }
            }
            Answer::TunnelCreated {
                id,
                result: Ok(record),
            } => {
                self.tunnels.tunnels.insert(id.clone(), record.clone());
            }
            Answer::TunnelDeleted { id, result: Ok(()) } => {
                self.tunnels.tunnels.remove(id);
            }
            Answer::ServiceTokenCreated {
                result: Ok((t, _)), ..
            } => {
                self.tokens.tokens.insert(t.client_id.clone(), t.clone());
            }
            _ => {}
        }
        if let Answer::Revoked { result: Ok(r) } = answer {
            self.revoked(r);
        }
    }

    /// The store looked a service token up: the parked carrier's request runs again, now
    /// against a view that holds the token if the store does.
    fn token_looked_up(&mut self, conn: ConnId, request: carrier::Request) {
        let Some(mut c) = self.take_waiting_carrier(conn) else {
            return;
        };
        let now = self.now;
        self.on_request(conn.slot, &mut c, request, now, true);
        self.put_back_carrier(conn, c);
    }

    /// A service token the view does not know could not be looked up (etcd unreachable):
    /// 503, saying so; tokens the edge knows go on meanwhile.
    fn store_unreachable(&mut self, conn: ConnId) {
        let Some(mut c) = self.take_waiting_carrier(conn) else {
            return;
        };
        super::refuse(
            &mut c,
            503,
            "Service Unavailable",
            super::login::pool::STORE_DOWN,
        );
        self.put_back_carrier(conn, c);
    }

    /// The store answered a REGISTER's claim: REGISTERED, or the refusal.
    fn claim_answered(&mut self, conn: ConnId, ticket: Ticket, answer: Answer) {
        if self.generations.get(conn.slot) != Some(&conn.generation) {
            return; // The connection went away; the claim stands, as if it had registered.
        }
        let slot = conn.slot;
        if !matches!(self.conns[slot], Some(Conn::Tunnel(_))) {
            return;
        }
        let Some(Conn::Tunnel(mut t)) = self.conns[slot].take() else {
            return;
        };
        let waiting = t.registering.as_ref().and_then(|r| r.ticket) == Some(ticket);
        if let (true, Some(r)) = (waiting, t.registering.take()) {
            match answer {
                Answer::Hostname { result: Ok(_), .. } => self.registered(slot, &mut t, r),
                Answer::Hostname {
                    result: Err(e),
                    hostname,
                } => {
                    let (code, message) = claim_refusal(&hostname, &e);
                    self.refuse_register(&mut t, r.audit, code, &message);
                }
                other => {
                    warn!("bug: a claim answered with {other:?}");
                    self.refuse_register(
                        &mut t,
                        r.audit,
                        refusal::NOT_RECORDED,
                        "edge error; try again",
                    );
                }
            }
        }
        self.conns[slot] = Some(Conn::Tunnel(t));
        self.mark(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Revocations, RevokedToken};

    fn token(name: &str, id: &str, secret: &str) -> ServiceTokenRecord {
        ServiceTokenRecord::new(name, id, secret, 0, None)
    }

    #[test]
    fn zone_sessions_up_to_the_latest_kill_of_their_email_in_their_zone_are_revoked() {
        let (mut zones, _, _, _) = views(Snapshot::default());
        assert!(!zones.zone_session_revoked("z.com", "a@z.com", 10));
        zones.revoke_zone_sessions("z.com", "a@z.com", 10);
        zones.revoke_zone_sessions("z.com", "a@z.com", 5);
        assert!(zones.zone_session_revoked("z.com", "a@z.com", 10));
        assert!(zones.zone_session_revoked("z.com", "a@z.com", 7));
        assert!(!zones.zone_session_revoked("z.com", "a@z.com", 11));
        assert!(!zones.zone_session_revoked("z.com", "b@z.com", 1));
        assert!(!zones.zone_session_revoked("y.com", "a@z.com", 1));
        // From a store's snapshot too (an edge started after the kill).
        let mut revocations = Revocations::default();
        revocations.zone_sessions.insert(
            crate::store::zone_sessions_key("z.com", "a@z.com", 10),
            RevokedToken {
                revoked: 10,
                reason: String::new(),
            },
        );
        let (started, _, _, _) = views(Snapshot {
            revocations,
            ..Snapshot::default()
        });
        assert!(started.zone_session_revoked("z.com", "a@z.com", 9));
        assert!(!started.zone_session_revoked("z.com", "a@z.com", 11));
    }

    #[test]
    fn tokens_verify_refuse_or_are_unknown() {
        let mut revocations = Revocations::default();
        revocations.service_tokens.insert(
            "r.access".into(),
            RevokedToken {
                revoked: 1,
                reason: String::new(),
            },
        );
        let (tokens, _, _, _) = views(Snapshot {
            service_tokens: vec![
                token("ci", "a.access", "s1"),
                token("old", "r.access", "s2"),
            ],
            revocations,
            ..Snapshot::default()
        });
        assert_eq!(
            tokens.verify("a.access", "s1", 0),
            Verified::Token("ci".into())
        );
        assert_eq!(tokens.verify("a.access", "s2", 0), Verified::Refused);
        assert_eq!(
            tokens.verify("r.access", "s2", 0),
            Verified::Revoked,
            "revoked"
        );
        assert_eq!(tokens.verify("b.access", "s1", 0), Verified::Unknown);
        // "Revoked" only to the holder of the secret: the client id alone gets the answer any
        // wrong secret gets, and a revoked id with no record is refused without a lookup.
        assert_eq!(tokens.verify("r.access", "guess", 0), Verified::Refused);
        let (mut tokens, _, _, _) = views(Snapshot::default());
        tokens.revoked.insert("gone.access".into());
        assert_eq!(tokens.verify("gone.access", "s1", 0), Verified::Refused);
    }

    #[test]
    fn an_expired_token_is_called_expired_to_its_holder_and_warned_of_before() {
        let day = 24 * 3600;
        let (tokens, _, _, _) = views(Snapshot {
            service_tokens: vec![
                ServiceTokenRecord::new("soon", "s.access", "s1", 0, Some(10 * day)),
                ServiceTokenRecord::new("later", "l.access", "s2", 0, Some(30 * day)),
                ServiceTokenRecord::new("never", "n.access", "s3", 0, None),
            ],
            ..Snapshot::default()
        });
        assert_eq!(
            tokens.verify("s.access", "s1", 10 * day - 1),
            Verified::Token("soon".into())
        );
        assert_eq!(tokens.verify("s.access", "s1", 10 * day), Verified::Expired);
        assert_eq!(tokens.verify("s.access", "x", 10 * day), Verified::Refused);
        let ahead = crate::limits::SERVICE_TOKEN_EXPIRY_WARNING_SECS;
        assert!(tokens.expiring(day, ahead).is_empty());
        let w = tokens.expiring(4 * day, ahead);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("service token soon expires in 144 h"),
            "{w:?}"
        );
        assert!(tokens.expiring(11 * day, ahead)[0].contains("soon has expired"));
    }

    #[test]
    fn refusals_name_the_holder() {
        let cur = |owner| {
            StoreError::Owned(Versioned {
                value: HostnameRecord {
                    owner,
                    zone: "example.com".into(),
                    first_registered: 0,
                },
                revision: 1,
            })
        };
        let (code, m) = claim_refusal("h.example.com", &cur(HostOwner::Tunnel("t1".into())));
        assert_eq!(code, refusal::OWNED);
        assert!(m.contains("named tunnel t1"), "{m}");
        let (code, m) = claim_refusal("h.example.com", &cur(HostOwner::Certificate("ab".into())));
        assert_eq!(code, refusal::OWNED);
        assert!(
            m.contains("another origin certificate (zone example.com)"),
            "{m}"
        );
        assert_eq!(
            claim_refusal("h", &StoreError::TooMany).0,
            refusal::TOO_MANY_HOSTNAMES
        );
        assert_eq!(
            claim_refusal("h", &StoreError::Unavailable("disk".into())).0,
            refusal::NOT_RECORDED
        );
    }
}
