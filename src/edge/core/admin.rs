//! The edge's tunnel administration API, for `postern tunnel create/list/info/delete/route`.
//!
//! Contract:
//! - Reached with ALPN [`ALPN`] on the edge's port, over the tunnels' mutual TLS: the client
//!   presents a zone's origin certificate (`tunnel login` or `edge origin-cert create`). A
//!   named tunnel's own certificate administers nothing: it may only read its own record
//!   (`GET /v1/self`, for `tunnel doctor`).
//! - One HTTP/1.1 request per connection, body JSON of at most [`MAX_BODY`] bytes, answered
//!   with JSON and closed. Errors are `{"error": "..."}`.
//! - A zone's certificate sees and manages only that zone's tunnels, and routes only
//!   hostnames under that zone. Routing a hostname someone else holds needs `overwrite`, and
//!   is refused outright when the holder is another zone.
//! - Every change is one `tunnel_admin` line in the audit log.
//! - A change is checked against the edge's view of its store, then made by the store worker
//!   (compare-and-swap: a route expects the hostname as the view saw it); the connection waits
//!   for the answer off the loop, bounded by its request deadline. A change the store made
//!   stands even if the client left meanwhile.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/self` (a named tunnel's own certificate) | TUNNEL; 404 once it is deleted |
//! | `GET /v1/tunnels` | `{"tunnels": [TUNNEL…]}` |
//! | `GET /v1/tunnels/REF` | TUNNEL (REF is a name or an id) |
//! | `POST /v1/tunnels` `{"name"}` | 201, TUNNEL + `certificate`, `key` (PEM) |
//! | `DELETE /v1/tunnels/REF[?force=true]` | `{"id", "routes", "closed"}`; 409 while connected |
//! | `PUT /v1/routes/HOST` `{"tunnel", "overwrite"}` | `{"hostname", "tunnel", "replaced"}` |
//! | `GET /v1/sessions` | `{"sessions": [SESSION…]}`: the zone's live sessions on this edge |
//! | `POST /v1/sessions/kill` `{"id"}`, `{"email"}`, `{"service_token"}` or `{"hostname"}` | `{"killed": [ID…]}` (a `session_kill` audit line) |
//!
//! TUNNEL is `{"id", "name", "zone", "created", "routes": [HOST…], "connections": [{"connector",
//! "ha_index", "origin", "opened", "streams", "rtt_us"}…]}` (`rtt_us`: null until measured).
//! SESSION is `{"id", "email", "service_token", "hostname", "source", "started", "seconds",
//! "bytes_up", "bytes_down"}` (`sessions.rs`).

use std::time::{Duration, Instant};

use log::{info, warn};
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

use super::loops::Away;
use super::sessions::Selector;
use super::view::Owner;
use super::{refusal, Conn, ConnId, EdgeCore, Sock, Waiter};
use crate::io::tls::TlsConn;
use crate::pki::{self, OriginCredential};
use crate::proto::http::{self, HeadLimits, RequestHead};
use crate::store::{
    self, Expect, HostOwner, HostnameRecord, Request, Revocation, StoreError, TunnelRecord,
};

use crate::limits::ADMIN_REQUEST_SECS as REQUEST_SECS;
use crate::limits::MAX_ADMIN_AUDIT_FIELD as MAX_AUDIT_FIELD;
pub use crate::limits::MAX_ADMIN_BODY as MAX_BODY;
pub use crate::limits::MAX_ROUTES_PER_ZONE;
pub use crate::limits::MAX_TUNNELS_PER_ZONE;
/// ALPN of the administration API.
pub use crate::proto::ADMIN_ALPN as ALPN;

pub(super) struct Admin {
    pub(super) tls: TlsConn<Sock>,
    pub(super) peer: std::net::SocketAddr,
    pub(super) deadline: Instant,
    /// The answer is queued: close once it is flushed.
    answered: bool,
    /// The request is with the store worker: parked until its answer.
    waiting: bool,
}

impl Admin {
    pub(super) fn new(
        tls: TlsConn<Sock>,
        peer: std::net::SocketAddr,
        deadline: Instant,
        now: Instant,
    ) -> Admin {
        Admin {
            tls,
            peer,
            deadline: deadline.max(now + Duration::from_secs(REQUEST_SECS)),
            answered: false,
            waiting: false,
        }
    }
}

/// An answer: status and JSON body.
type Answer = (u16, Value);

fn error(status: u16, message: impl Into<String>) -> Answer {
    (status, json!({ "error": message.into() }))
}

/// What a request needs: an answer now, or a store change first.
enum Reply {
    Now(Answer),
    Store(Request, Then),
}

/// An admin request waiting for the store, and what it does with the answer.
pub(super) struct Step {
    /// The `tunnel_admin` audit record, completed with the outcome.
    audit: serde_json::Map<String, Value>,
    then: Then,
}

enum Then {
    /// The tunnel's record is being stored; its credential goes to the client after.
    Create {
        id: String,
        credential: Box<OriginCredential>,
    },
    /// The tunnel's routes are being released; the tunnel itself next.
    Unroute { id: String, rec: TunnelRecord },
    /// The tunnel is being forgotten; its routes are gone.
    Delete {
        id: String,
        rec: TunnelRecord,
        routes: Vec<String>,
    },
    /// The hostname is being routed to the tunnel.
    Route {
        host: String,
        id: String,
        name: String,
        replaced: Value,
    },
    /// A kill by email: the email's zone sessions in the zone are being revoked (every edge
    /// of the pool then refuses to exchange them); `killed` ended here already.
    ZoneSessions { killed: Vec<String> },
}

/// Queues the response on the admin connection; it closes once it is flushed.
fn respond(a: &mut Admin, (status, body): Answer) {
    let body = body.to_string();
    let mut out = Vec::new();
    http::write_response(
        &mut out,
        status,
        reason(status),
        &[
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ],
        body.as_bytes(),
    );
    a.tls.send(&out);
    a.tls.tls.send_close_notify();
    a.answered = true;
    a.waiting = false;
}

impl EdgeCore {
    pub(super) fn pump_admin(&mut self, slot: usize, mut a: Box<Admin>) -> Option<Box<Admin>> {
        if let Err(e) = a.tls.read(&mut self.stage) {
            info!("admin {}: {e}", a.peer);
            return self.end_admin(a);
        }
        if !a.answered && !a.waiting && !a.tls.tls.is_handshaking() {
            let limits = HeadLimits {
                max_head_bytes: self.settings.limits.max_head_bytes,
                max_headers: self.settings.limits.max_headers,
            };
            let answer = match http::parse_request_head(a.tls.rx.data(), &limits) {
                Ok(None) if a.tls.peer_closed => return self.end_admin(a),
                Ok(None) => None,
                Err(e) => Some(error(400, format!("bad request head: {e}"))),
                Ok(Some((head, used))) => match head.content_length() {
                    Some(n) if n > MAX_BODY as u64 => {
                        Some(error(413, format!("body over {MAX_BODY} bytes")))
                    }
                    n => {
                        let n = n.unwrap_or(0) as usize;
                        if a.tls.rx.len() >= used + n {
                            let body = a.tls.rx.data()[used..used + n].to_vec();
                            a.tls.rx.consume(used + n);
                            let cert = a
                                .tls
                                .tls
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| c.clone().into_owned());
                            let conn = self.conn_id(slot);
                            let answer = self.admin_request(conn, &a, cert, &head, &body);
                            a.waiting = answer.is_none();
                            answer
                        } else if a.tls.peer_closed {
                            return self.end_admin(a);
                        } else {
                            None
                        }
                    }
                },
            };
            if let Some(answer) = answer {
                respond(&mut a, answer);
            }
        }
        if a.tls.flush().is_err() || (a.answered && !a.tls.tls.wants_write()) {
            return self.end_admin(a);
        }
        Some(a)
    }

    pub(super) fn end_admin(&mut self, mut a: Box<Admin>) -> Option<Box<Admin>> {
        a.tls.close();
        None
    }

    /// The answer to one request, or `None` when it waits for the store (see
    /// [`EdgeCore::admin_answered`]).
    fn admin_request(
        &mut self,
        conn: ConnId,
        a: &Admin,
        cert: Option<CertificateDer<'static>>,
        head: &RequestHead,
        body: &[u8],
    ) -> Option<Answer> {
        let mut audit = serde_json::Map::new();
        audit.insert("peer".into(), a.peer.to_string().into());
        if let Some(c) = &cert {
            audit.insert("certificate".into(), pki::fingerprint(c).into());
        }
        if cert
            .as_ref()
            .is_some_and(|c| self.certs.is_revoked(c, &pki::fingerprint(c)))
        {
            warn!("admin {}: refused: origin certificate revoked", a.peer);
            audit.insert("decision".into(), "deny".into());
            audit.insert("reason".into(), "origin certificate revoked".into());
            self.audit.record("tunnel_admin", audit);
            return Some(error(403, "origin certificate revoked"));
        }
        let path = head.target.split('?').next().unwrap_or_default();
        if let (Some(c), Some(id)) = (&cert, cert.as_ref().and_then(pki::tunnel_id)) {
            if head.method == "GET" && path == "/v1/self" {
                let answer = self.own_tunnel(&id, &pki::fingerprint(c));
                audit.insert("action".into(), "self".into());
                audit.insert("tunnel".into(), id.clone().into());
                self.admin_audit(audit, &answer);
                return Some(answer);
            }
        }
        let Some(zone) = cert.as_ref().and_then(pki::origin_zone) else {
            warn!("admin {}: refused: not a zone's origin certificate", a.peer);
            audit.insert("decision".into(), "deny".into());
            audit.insert("reason".into(), "not a zone's origin certificate".into());
            self.audit.record("tunnel_admin", audit);
            return Some(error(
                403,
                "this certificate cannot manage tunnels: use the origin certificate from \
                 `postern tunnel login` (cert.pem)",
            ));
        };
        let query = head.target.split_once('?').map_or("", |(_, q)| q);
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return Some(error(400, format!("body is not JSON: {e}"))),
            }
        };
        audit.insert("zone".into(), zone.clone().into());
        let reply = match (head.method.as_str(), path) {
            ("GET", "/v1/tunnels") => {
                let list: Vec<Value> = self
                    .tunnels
                    .of_zone(&zone)
                    .map(|(id, r)| self.describe(id, r))
                    .collect();
                return Some((200, json!({ "tunnels": list })));
            }
            ("POST", "/v1/tunnels") => self.create_tunnel(&zone, &body, &mut audit),
            ("GET", "/v1/sessions") => {
                let list = self.list_sessions(Some(&zone));
                return Some((200, json!({ "sessions": list })));
            }
            ("POST", "/v1/sessions/kill") => {
                let selector = match Selector::from_json(&body) {
                    Ok(s) => s,
                    Err(e) => return Some(error(400, e)),
                };
                let killed = self.kill_sessions(&selector, Some(&zone));
                audit.insert("selector".into(), clip(&format!("{selector:?}")).into());
                audit.insert("killed".into(), json!(killed));
                audit.insert("decision".into(), "allow".into());
                let Selector::Email(email) = selector else {
                    self.audit.record("session_kill", audit);
                    return Some((200, json!({ "killed": killed })));
                };
                // The email's zone sessions too: or its CLI would get new app tokens at once.
                self.audit.record("session_kill", audit.clone());
                audit.insert("action".into(), "revoke zone sessions".into());
                Reply::Store(
                    Request::Revoke(Revocation::ZoneSessions {
                        zone: zone.clone(),
                        email,
                        before: self.unix,
                        reason: "postern edge sessions kill --email".into(),
                    }),
                    Then::ZoneSessions { killed },
                )
            }
            ("PUT", p) if p.starts_with("/v1/routes/") => {
                self.route_hostname(&zone, &p["/v1/routes/".len()..], &body, &mut audit)
            }
            (m, p) if p.starts_with("/v1/tunnels/") => {
                let r = &p["/v1/tunnels/".len()..];
                let Some((id, rec)) = self.tunnels.find(&zone, r) else {
                    return Some(error(404, format!("no tunnel {r:?} in zone {zone}")));
                };
                let (id, rec) = (id.to_owned(), rec.clone());
                match m {
                    "GET" => return Some((200, self.describe(&id, &rec))),
                    "DELETE" => {
                        let force = query
                            .split('&')
                            .any(|kv| kv == "force=true" || kv == "force");
                        self.delete_tunnel(&id, &rec, force, &mut audit)
                    }
                    _ => Reply::Now(error(405, "method not allowed")),
                }
            }
            _ => {
                return Some(error(
                    404,
                    format!("no such endpoint: {} {path}", head.method),
                ))
            }
        };
        let answer = match reply {
            Reply::Now(answer) => answer,
            Reply::Store(request, then) => {
                let step = Box::new(Step { audit, then });
                match self.store.submit(request, Waiter::Admin { conn, step }) {
                    Ok(_) => return None,
                    Err(waiter) => {
                        let answer = error(503, "the edge is busy; try again in a moment");
                        if let Waiter::Admin { step, .. } = waiter {
                            self.admin_audit(step.audit, &answer);
                        }
                        return Some(answer);
                    }
                }
            }
        };
        self.admin_audit(audit, &answer);
        Some(answer)
    }

    /// Completes a `tunnel_admin` audit record with the outcome, and writes it.
    fn admin_audit(&mut self, mut audit: serde_json::Map<String, Value>, answer: &Answer) {
        let decision = if answer.0 < 300 { "allow" } else { "deny" };
        audit.insert("decision".into(), decision.into());
        if answer.0 >= 300 {
            audit.insert("reason".into(), answer.1["error"].clone());
        }
        self.audit.record("tunnel_admin", audit);
    }

    /// The store answered an admin request's change: the next change, or the answer. The
    /// change's effects (connections closed) happen whether or not the client is still there.
    pub(super) fn admin_answered(&mut self, conn: ConnId, step: Step, answer: store::Answer) {
        let Step { audit, then } = step;
        let response = match (then, answer) {
            (
                Then::Create { id, credential },
                store::Answer::TunnelCreated {
                    result: Ok(rec), ..
                },
            ) => {
                info!("created tunnel {} ({id}) in zone {}", rec.name, rec.zone);
                let mut v = self.describe(&id, &rec);
                v["credential"] = credential.to_pem().into();
                (201, v)
            }
            (
                Then::Create { .. },
                store::Answer::TunnelCreated {
                    result: Err(StoreError::Exists(what)),
                    ..
                },
            ) => error(409, format!("{what} already exists")),
            (
                Then::Unroute { id, rec },
                store::Answer::Unrouted {
                    result: Ok(routes), ..
                },
            ) => {
                // Routes are gone; now the tunnel itself.
                let request = Request::DeleteTunnel { id: id.clone() };
                let then = Then::Delete { id, rec, routes };
                let step = Box::new(Step { audit, then });
                match self.store.submit(request, Waiter::Admin { conn, step }) {
                    Ok(_) => return,
                    Err(waiter) => {
                        let answer = error(503, "the edge is busy; try again in a moment");
                        if let Waiter::Admin { step, .. } = waiter {
                            self.admin_audit(step.audit, &answer);
                        }
                        return self.admin_respond(conn, answer);
                    }
                }
            }
            (
                Then::Delete { id, rec, routes },
                store::Answer::TunnelDeleted { result: Ok(()), .. },
            ) => self.tunnel_deleted(&id, &rec, routes),
            (
                Then::Route {
                    host,
                    id,
                    name,
                    replaced,
                },
                store::Answer::Hostname { result: Ok(_), .. },
            ) => self.routed(&host, &id, &name, replaced),
            (
                Then::Route { host, .. },
                store::Answer::Hostname {
                    result: Err(StoreError::Owned(_) | StoreError::Changed(_)),
                    ..
                },
            ) => error(
                409,
                format!("{host} changed hands meanwhile: look at it again, then retry"),
            ),
            (Then::ZoneSessions { killed }, store::Answer::Revoked { result: Ok(_) }) => (
                200,
                json!({ "killed": killed, "zone_sessions_revoked": true }),
            ),
            (then, answer) => {
                let what = match then {
                    Then::ZoneSessions { .. } => "the edge could not revoke the zone sessions",
                    Then::Create { .. } => "the edge could not record the tunnel",
                    Then::Unroute { .. } => "the edge could not remove the tunnel's routes",
                    Then::Delete { .. } => "the edge could not delete the tunnel",
                    Then::Route { .. } => "the edge could not record the route",
                };
                warn!("tunnel admin: {what}: {answer:?}");
                error(500, what)
            }
        };
        self.admin_audit(audit, &response);
        self.admin_respond(conn, response);
    }

    /// Answers the admin connection `conn` names, if it is still there and waiting.
    fn admin_respond(&mut self, conn: ConnId, answer: Answer) {
        if self.generations.get(conn.slot) != Some(&conn.generation) {
            return;
        }
        if let Some(Conn::Admin(a)) = self.conns[conn.slot].as_mut() {
            if a.waiting {
                respond(a, answer);
                self.mark(conn.slot);
            }
        }
    }

    /// A tunnel as the API shows it, with its routes and live connections.
    /// `GET /v1/self` with a named tunnel's own certificate: its record, as `tunnel doctor`
    /// checks it before running (the edge would accept a registration from it), without
    /// registering. Nothing else is open to that certificate.
    fn own_tunnel(&self, id: &str, fingerprint: &str) -> Answer {
        match self.tunnels.get(id) {
            Some(r) if r.cert_sha256 == fingerprint => (200, self.describe(id, r)),
            _ => error(
                404,
                format!(
                    "tunnel {id} does not exist on this edge (deleted?): create it again with \
                     `postern tunnel create`"
                ),
            ),
        }
    }

    pub(super) fn describe(&self, id: &str, r: &TunnelRecord) -> Value {
        let conns: Vec<Value> = self
            .named
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|&s| self.connection(s))
            .collect();
        json!({
            "id": id,
            "name": r.name,
            "zone": r.zone,
            "created": r.created,
            "routes": self.hostnames.routes_of(id),
            "connections": conns,
        })
    }

    fn create_tunnel(
        &mut self,
        zone: &str,
        body: &Value,
        audit: &mut serde_json::Map<String, Value>,
    ) -> Reply {
        audit.insert("action".into(), "create".into());
        let Some(name) = body.get("name").and_then(Value::as_str) else {
            return Reply::Now(error(400, "name: missing"));
        };
        audit.insert("name".into(), clip(name).into());
        if !store::valid_tunnel_name(name) || pki::valid_tunnel_id(name) {
            return Reply::Now(error(
                400,
                format!(
                    "name: {name:?} is not a tunnel name (1-64 of letters, digits, '.', '_', \
                     '-'; not an id)"
                ),
            ));
        }
        if self.tunnels.of_zone(zone).count() >= MAX_TUNNELS_PER_ZONE {
            return Reply::Now(error(
                409,
                format!("zone {zone} has {MAX_TUNNELS_PER_ZONE} tunnels: delete one first"),
            ));
        }
        if self.tunnels.find(zone, name).is_some() {
            return Reply::Now(error(
                409,
                format!("a tunnel named {name} already exists in zone {zone}"),
            ));
        }
        let issued = pki::new_tunnel_id().and_then(|id| {
            let (cert, key) = self.settings.origin_ca.issue_tunnel(&id)?;
            Ok((id, cert, key))
        });
        let (id, cert, key) = match issued {
            Ok(x) => x,
            Err(e) => {
                warn!("tunnel create: {e}");
                return Reply::Now(error(
                    500,
                    "the edge could not issue the tunnel's certificate",
                ));
            }
        };
        let record = TunnelRecord {
            name: name.to_owned(),
            zone: zone.to_owned(),
            cert_sha256: pki::fingerprint(&cert),
            created: self.unix,
        };
        audit.insert("tunnel".into(), id.clone().into());
        // The edge's own CA (dev) travels along, as in `tunnel login`.
        let ca = self.settings.tls_ca_certs();
        let credential = Box::new(OriginCredential {
            key,
            cert,
            zone: zone.to_owned(),
            edge: None,
            ca,
        });
        // The store checks again that id and name are new (another edge may have taken them).
        Reply::Store(
            Request::CreateTunnel {
                id: id.clone(),
                record,
            },
            Then::Create { id, credential },
        )
    }

    fn delete_tunnel(
        &mut self,
        id: &str,
        rec: &TunnelRecord,
        force: bool,
        audit: &mut serde_json::Map<String, Value>,
    ) -> Reply {
        audit.insert("action".into(), "delete".into());
        audit.insert("tunnel".into(), id.into());
        audit.insert("name".into(), rec.name.clone().into());
        let connected = self.named.get(id).map_or(0, Vec::len);
        if connected > 0 && !force {
            return Reply::Now(error(
                409,
                format!(
                    "tunnel {} has {connected} active connection(s): stop its origin first, or \
                     delete with --force (-f) to cut them",
                    rec.name,
                ),
            ));
        }
        // Routes first: a crash between the two changes leaves a tunnel without routes, not
        // routes to a tunnel that is gone (those are also released at start-up).
        Reply::Store(
            Request::UnrouteTunnel { id: id.to_owned() },
            Then::Unroute {
                id: id.to_owned(),
                rec: rec.clone(),
            },
        )
    }

    /// The store forgot tunnel `id`: its connections are cut.
    fn tunnel_deleted(&mut self, id: &str, rec: &TunnelRecord, routes: Vec<String>) -> Answer {
        let slots = self.named.get(id).cloned().unwrap_or_default();
        let why = format!("tunnel {} was deleted", rec.name);
        for &s in &slots {
            self.error_tunnel(s, refusal::NOT_COVERED, &why);
        }
        info!(
            "deleted tunnel {} ({id}); routes removed: {}; connections closed: {}",
            rec.name,
            routes.len(),
            slots.len()
        );
        (
            200,
            json!({ "id": id, "name": rec.name, "routes": routes, "closed": slots.len() }),
        )
    }

    fn route_hostname(
        &mut self,
        zone: &str,
        hostname: &str,
        body: &Value,
        audit: &mut serde_json::Map<String, Value>,
    ) -> Reply {
        let host = hostname.to_ascii_lowercase();
        audit.insert("action".into(), "route".into());
        audit.insert("hostname".into(), clip(&host).into());
        let Some(r) = body.get("tunnel").and_then(Value::as_str) else {
            return Reply::Now(error(400, "tunnel: missing"));
        };
        let overwrite = body
            .get("overwrite")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let Some((id, rec)) = self.tunnels.find(zone, r) else {
            return Reply::Now(error(404, format!("no tunnel {r:?} in zone {zone}")));
        };
        let (id, name) = (id.to_owned(), rec.name.clone());
        audit.insert("tunnel".into(), id.clone().into());
        if !super::valid_hostname(&host) {
            return Reply::Now(error(400, format!("{host:?} is not a hostname")));
        }
        if !(host == zone || host.ends_with(&format!(".{zone}"))) {
            return Reply::Now(error(
                403,
                format!("{host} is not in zone {zone}, which your origin certificate is for"),
            ));
        }
        match self.settings.zone_of(&host) {
            None => {
                return Reply::Now(error(
                    403,
                    format!("{host} is not in a zone served by this edge"),
                ))
            }
            Some(z) if z != zone => {
                return Reply::Now(error(
                    403,
                    format!("{host} is in the zone {z}: route it with a certificate for {z}"),
                ))
            }
            Some(_) => {}
        }
        if self.hostnames.routed_in_zone(zone) >= MAX_ROUTES_PER_ZONE {
            return Reply::Now(error(
                409,
                format!("zone {zone} has {MAX_ROUTES_PER_ZONE} routes already"),
            ));
        }
        let replaced = match self.hostnames.owner(&host) {
            None => Value::Null,
            Some(Owner::Tunnel { id: owner, .. }) if owner == id => {
                return Reply::Now((
                    200,
                    json!({ "hostname": host, "tunnel": id, "name": name, "replaced": null,
                            "unchanged": true }),
                ));
            }
            Some(Owner::Tunnel { zone: z, .. } | Owner::Certificate { zone: z }) if z != zone => {
                return Reply::Now(error(
                    409,
                    format!("{host} is held by an origin of another zone ({z})"),
                ));
            }
            Some(owner) if !overwrite => {
                let holder = match owner {
                    Owner::Tunnel { id, .. } => format!("tunnel {id}"),
                    Owner::Certificate { .. } => "an origin certificate (tunnel --hostname)".into(),
                };
                return Reply::Now(error(
                    409,
                    format!(
                        "{host} is already routed to {holder}: pass --overwrite-dns to move it"
                    ),
                ));
            }
            Some(Owner::Tunnel { id, .. }) => json!(format!("tunnel {id}")),
            Some(Owner::Certificate { .. }) => json!("origin certificate"),
        };
        // The store moves the hostname only if it is still as the view shows it.
        let expect = match self.hostnames.get(&host) {
            None => Expect::Absent,
            Some(cur) => Expect::Revision(cur.revision),
        };
        let request = Request::ClaimHostname {
            hostname: host.clone(),
            record: HostnameRecord {
                owner: HostOwner::Tunnel(id.clone()),
                zone: zone.to_owned(),
                first_registered: self.unix,
            },
            expect,
        };
        Reply::Store(
            request,
            Then::Route {
                host,
                id,
                name,
                replaced,
            },
        )
    }

    /// The store routed `host` to the tunnel: ad-hoc registrations of it lose it now.
    fn routed(&mut self, host: &str, id: &str, name: &str, replaced: Value) -> Answer {
        let why = format!("hostname {host} was routed to tunnel {name}");
        for s in self.routes.remove(host).unwrap_or_default() {
            self.error_tunnel(s, refusal::OWNED, &why);
        }
        info!("routed {host} to tunnel {name} ({id})");
        (
            200,
            json!({ "hostname": host, "tunnel": id, "name": name, "replaced": replaced }),
        )
    }
}

impl EdgeCore {
    /// The tunnel connection in `slot` as the API and the console show it, wherever it is
    /// served.
    pub(super) fn connection(&self, slot: usize) -> Option<Value> {
        let (connector, ha_index, peer, opened, streams, rtt) =
            match self.conns.get(slot)?.as_ref()? {
                Conn::Tunnel(t) => (
                    &t.connector,
                    t.ha_index,
                    t.peer,
                    t.opened,
                    t.mux.stream_count(),
                    t.mux.rtt_micros(),
                ),
                Conn::Away(a) => match a.as_ref() {
                    Away::Tunnel(r) => (
                        &r.connector,
                        r.ha_index,
                        r.peer,
                        r.opened,
                        r.live.streams(),
                        r.live.rtt_micros(),
                    ),
                    Away::Carrier(_) => return None,
                },
                _ => return None,
            };
        Some(json!({
            "connector": connector,
            "ha_index": ha_index,
            "origin": peer.ip().to_string(),
            "opened": opened,
            "streams": streams,
            // The smallest PING-to-PONG time seen on it (what stream windows grow by), or
            // null before the first PONG.
            "rtt_us": rtt,
        }))
    }
}

/// At most [`MAX_AUDIT_FIELD`] characters of a request's field, for the audit log.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(MAX_AUDIT_FIELD) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        _ => "Error",
    }
}
