//! Carriers: the request (host, credentials, policy, route), the 101 and the splice between
//! the WebSocket and a tunnel's mux stream, and the end of either.

use std::net::SocketAddr;
use std::time::Instant;

use log::{debug, info};

use super::loops::Open;
use super::sessions::Session;
use super::view::Verified;
use super::{discard_input, Carrier, Conn, Discarded, EdgeCore, Limit};
use crate::edge::valid_hostname;
use crate::limits::{CONN_WRITE_BATCH, MAX_REQUEST_BODY};
use crate::logging::untrusted;
use crate::metrics::{self, Auth, Direction};
use crate::proto::carrier;
use crate::proto::destination;
use crate::proto::http::{HeadLimits, RequestHead};
use crate::proto::jwt::{KeyRing, OriginAssertion};
use crate::proto::mux;
use crate::proto::policy::Identity;
use crate::proto::resume;
use crate::proto::ws::{self, Item};

impl EdgeCore {
    pub(super) fn pump_carrier(
        &mut self,
        slot: usize,
        mut c: Box<Carrier>,
    ) -> Option<Box<Carrier>> {
        if c.moving.is_some() {
            return Some(c); // to its tunnel's loop, once this pass is over (`loops.rs`)
        }
        if c.core.is_lingering() {
            return self.discard_lingering(slot, c);
        }
        self.direct_budget = CONN_WRITE_BATCH;
        // Until no progress: a full `rx` stopped reading, and consuming it must resume it.
        loop {
            let full = match c.tls.read(&mut self.stage) {
                Ok(full) => full,
                Err(e) => {
                    info!("carrier {}: {e}", c.peer);
                    self.metrics.error(metrics::Error::Tls);
                    self.end_carrier(slot, c, "TLS error");
                    return None;
                }
            };
            self.carrier_step(slot, &mut c);
            if c.moving.is_some() {
                return Some(c);
            }
            c.transmit();
            if c.finished {
                self.end_carrier(slot, c, "closed before the request");
                return None;
            }
            if !(full && c.tls.has_room()) {
                break;
            }
            if c.core.is_closing() {
                // Closing drops what it reads: one buffer per pass, the rest on the next.
                self.again.push(slot);
                break;
            }
        }
        if let Err(e) = c.tls.flush() {
            debug!("carrier {}: {e}", c.peer);
            self.end_carrier(slot, c, "write failed");
            return None;
        }
        if c.core.is_closing() && !c.tls.tls.wants_write() {
            // The answer or the Close is out: close_notify, then a lingering close
            // (`proto::carrier`): closing now, with the client's bytes unread, would send a
            // reset that destroys what is still on its way to the client.
            c.tls.tls.send_close_notify();
            if let Err(e) = c.tls.flush() {
                debug!("carrier {}: {e}", c.peer);
                self.end_carrier(slot, c, "write failed");
                return None;
            }
            if c.tls.tls.wants_write() {
                return Some(c);
            }
            if let Err(e) = c.tls.sock.shutdown_write() {
                debug!("carrier {}: shutdown: {e}", c.peer);
                self.end_carrier(slot, c, "closed");
                return None;
            }
            c.core.linger(self.now);
            return self.discard_lingering(slot, c);
        }
        Some(c)
    }

    /// A lingering carrier (its write side shut): reads and discards what the client still
    /// sends ([`discard_input`]) and ends at the client's EOF (the deadline is `tick`'s).
    fn discard_lingering(&mut self, slot: usize, mut c: Box<Carrier>) -> Option<Box<Carrier>> {
        match discard_input(&mut c.tls.sock, &mut self.stage) {
            Discarded::Ended => {
                self.end_carrier(slot, c, "closed");
                return None;
            }
            Discarded::Drained => {}
            // More may be waiting, and no new readiness event would say so: the next pass.
            Discarded::Bounded => self.again.push(slot),
        }
        Some(c)
    }

    /// One pass of the carrier state machine over what `rx` holds.
    pub(super) fn carrier_step(&mut self, slot: usize, c: &mut Carrier) {
        let now = self.now;
        let limits = carrier::Limits {
            head: HeadLimits {
                max_head_bytes: self.settings.limits.max_head_bytes,
                max_headers: self.settings.limits.max_headers,
            },
            max_body: MAX_REQUEST_BODY,
            max_ws_frame: self.settings.limits.max_ws_frame_bytes,
        };
        loop {
            if c.core.streaming().is_some() {
                if !self.splice_carrier(c) {
                    // Both Closes exchanged: close_notify, then end once it is flushed.
                    c.tls.tls.send_close_notify();
                    let _ = c.core.finished_streaming(now);
                }
                return;
            }
            match c
                .core
                .poll_request(&mut c.tls.rx, c.tls.peer_closed, &limits, now)
            {
                None => return,
                Some(carrier::Event::Left) => {
                    c.finished = true;
                    return;
                }
                Some(carrier::Event::Refused { status, part, why }) => {
                    info!("carrier {}: bad request {part} ({status}): {why}", c.peer);
                    self.metrics.error(metrics::Error::BadRequest);
                    return;
                }
                Some(carrier::Event::Request(request)) => {
                    self.on_request(slot, c, request, now, false);
                    if c.moving.is_some() {
                        return;
                    }
                }
            }
        }
    }

    /// Moves bytes both ways between a carrier and its mux stream. False when finished.
    pub(super) fn splice_carrier(&mut self, c: &mut Carrier) -> bool {
        // What the core queued (the 101, a Close) goes before any stream bytes.
        c.transmit();
        let Some(&(tunnel, stream)) = c.core.link() else {
            return true;
        };
        let Some(Some(Conn::Tunnel(t))) = self.conns.get_mut(tunnel) else {
            // The tunnel went away while this carrier was queued.
            c.close_with(ws::close::TRY_AGAIN, "tunnel went away", self.now);
            return true;
        };
        let carrier::Streaming {
            dec, sent_close, ..
        } = c.core.streaming().expect("bug: link checked above");
        let mut moved = false;

        // Client → origin: decode only as much as the stream can take.
        loop {
            let room = t.mux.writable(stream);
            let rx = c.tls.rx.data_mut();
            match dec.poll(rx, room) {
                Ok(Some((Item::Data { start, len }, used))) => {
                    if len > 0 {
                        let data = &rx[start..start + len];
                        // A record's worth goes into the tunnel connection's TLS as one DATA
                        // frame when nothing waits ahead of it, not through the stream's send
                        // buffer and a frame batch: the cut-through's way up (docs/design.md
                        // §2.8); at most `direct_budget` per run, and never on a closing
                        // tunnel (there the bytes stop in the stream). A failed flush is the
                        // tunnel's pump's to see (marked below).
                        let direct = len >= mux::DIRECT_MIN
                            && len <= self.direct_budget
                            && !t.closing
                            && t.tls.can_send();
                        let n = match direct.then(|| t.mux.frame_direct(stream, len)).flatten() {
                            Some(header) => {
                                t.tls.send_vectored(&[&header, data]);
                                let _ = t.tls.flush();
                                self.direct_budget -= len;
                                len
                            }
                            None => t.mux.write(stream, data),
                        };
                        debug_assert_eq!(n, len);
                        if let Some(s) = c.session.as_mut() {
                            s.bytes.add_up(n);
                        }
                        self.metrics.bytes(Direction::ClientToOrigin, n);
                        moved = true;
                    }
                    c.tls.rx.consume(used);
                }
                Ok(Some((Item::Ping { payload, len }, used))) => {
                    // A keepalive moves no stream byte: it does not hold off the idle timeout.
                    c.tls.rx.consume(used);
                    // A peer that pings but does not read gets no more pongs queued.
                    if c.tls.can_send() {
                        let mut pong = Vec::new();
                        ws::encode_frame(&mut pong, ws::PONG, &payload[..len], None);
                        c.tls.send(&pong);
                    }
                }
                Ok(Some((Item::Pong, used))) => c.tls.rx.consume(used),
                Ok(Some((Item::Close { code, .. }, used))) if code != ws::close::NORMAL => {
                    // Not a half-close: the client's side is gone (GOING_AWAY: its reader
                    // closed) or failed. The stream ends both ways, and the origin closes its
                    // service connection instead of sending on for nobody.
                    c.tls.rx.consume(used);
                    debug!("carrier {}: the client closed with {code}", c.peer);
                    t.mux
                        .reset(stream, mux::ResetCode::Cancel, "the client went away");
                    t.carriers.remove(&stream);
                    c.close_with(ws::close::NORMAL, "", self.now);
                    self.mark(tunnel);
                    return true;
                }
                Ok(Some((Item::Close { .. }, used))) => {
                    c.tls.rx.consume(used);
                    t.mux.close_write(stream);
                    moved = true;
                }
                Ok(None) => break,
                Err(e) => {
                    info!("carrier {}: {e}", c.peer);
                    self.metrics.error(metrics::Error::WebSocket);
                    t.mux
                        .reset(stream, mux::ResetCode::Cancel, "client protocol error");
                    t.carriers.remove(&stream);
                    let code = match e {
                        ws::WsError::TooLarge(..) => ws::close::TOO_BIG,
                        _ => ws::close::PROTOCOL_ERROR,
                    };
                    c.close_with(code, &e.to_string(), self.now);
                    self.mark(tunnel);
                    return true;
                }
            }
        }
        if c.tls.peer_closed && !dec.is_closed() {
            debug!("carrier {} went away without Close", c.peer);
            t.mux
                .reset(stream, mux::ResetCode::Lost, "client went away");
            t.carriers.remove(&stream);
            self.mark(tunnel);
            return false;
        }

        // Origin → client, one bounded batch at a time. Flush first: `can_send` must see
        // what the socket took since the last pass, or no event would ever resume us.
        let _ = c.tls.flush();
        while c.tls.can_send() {
            let data = t.mux.readable(stream);
            if data.is_empty() {
                break;
            }
            let n = data.len().min(CONN_WRITE_BATCH);
            let mut h = [0u8; 14];
            let hl = ws::encode_header(&mut h, ws::BINARY, n, None);
            c.tls.send_vectored(&[&h[..hl], &data[..n]]);
            // Before `consume`, which may end the stream (its last bytes).
            if let Some(held) = t.mux.delivered(stream) {
                self.metrics.held(held);
            }
            t.mux.consume(stream, n, self.now);
            if let Some(s) = c.session.as_mut() {
                s.bytes.add_down(n);
            }
            self.metrics.bytes(Direction::OriginToClient, n);
            moved = true;
            if c.tls.flush().is_err() {
                break;
            }
        }
        let client_closed = dec.is_closed();
        let mut sent = *sent_close;
        if !sent && t.mux.read_closed(stream) {
            c.core.send_normal_close();
            c.transmit();
            sent = true;
        }
        let finished = sent && client_closed;
        if finished {
            t.carriers.remove(&stream);
        }
        if moved {
            c.last_active = self.now;
            self.mark(tunnel);
        }
        !finished
    }

    /// A whole request on a carrier. `looked_up`: the store was asked about its service
    /// token already (an id the view does not hold is then refused, not looked up again).
    pub(super) fn on_request(
        &mut self,
        slot: usize,
        c: &mut Carrier,
        request: carrier::Request,
        now: Instant,
        looked_up: bool,
    ) {
        let carrier::Request {
            head,
            host,
            path,
            body,
            upgrade_key,
        } = request;
        let mut audit = serde_json::Map::new();
        audit.insert("peer".into(), c.peer.to_string().into());
        audit.insert("hostname".into(), recorded_host(&host).into());
        if host.is_empty() || host != c.sni {
            audit.insert("reason".into(), "host header does not match SNI".into());
            self.deny(audit, Auth::HostMismatch);
            return c.core.refuse(
                421,
                "Misdirected Request",
                "Host header does not match the TLS server name",
                now,
            );
        }
        let Some(key) = upgrade_key else {
            if path == super::sshcert::CERT_SIGN {
                let request = carrier::Request {
                    head,
                    host,
                    path,
                    body,
                    upgrade_key: None,
                };
                return self.cert_sign(slot, c, request, looked_up);
            }
            if EdgeCore::is_login_entry(&head.method, &path)
                && !self.login_allowed(c.peer.ip(), now)
            {
                let max = self.settings.limits.login_attempts_per_minute;
                self.limit_hit(Limit::LoginRate, c.peer.ip(), || {
                    format!("over {max} login requests a minute (limits.login_attempts_per_minute)")
                });
                return too_many_requests(c, now);
            }
            return self.serve_page(slot, c, &head, &host, &body);
        };
        let Some(app) = self.settings.application(&host) else {
            audit.insert("reason".into(), "no application".into());
            self.deny(audit, Auth::NoApplication);
            return refuse_at(
                c,
                "application",
                404,
                "Not Found",
                &format!("no application for {host} on this edge"),
            );
        };
        // Who is asking: a service token, an app token from a browser login, or nobody.
        let app_hostname = app.hostname.clone();
        let policies_bypass = crate::proto::policy::bypasses(&app.policies);
        if let (Some(id), Some(secret)) = (
            head.header("cf-access-client-id"),
            head.header("cf-access-client-secret"),
        ) {
            // Tokens created since the edge started are in the store, not the view: ask it
            // (off the loop), then run this request again.
            if !looked_up && self.tokens.verify(id, secret, self.unix) == Verified::Unknown {
                let id = id.to_owned();
                let request = carrier::Request {
                    head,
                    host,
                    path,
                    body,
                    upgrade_key: Some(key),
                };
                return self.look_up_token(slot, c, request, id);
            }
        }
        let identity = match (
            head.header("cf-access-client-id"),
            head.header("cf-access-client-secret"),
            head.header("cf-access-token"),
        ) {
            (Some(id), Some(secret), _) => {
                let name = match self.tokens.verify(id, secret, self.unix) {
                    Verified::Token(name) => Some(name),
                    Verified::Revoked => {
                        audit.insert("client_id".into(), id.into());
                        audit.insert("reason".into(), "service token revoked".into());
                        self.deny(audit, Auth::BadServiceToken);
                        return refuse_at(
                            c,
                            "token",
                            403,
                            "Forbidden",
                            "service token revoked: ask the edge's operator for a new one",
                        );
                    }
                    Verified::Expired => {
                        audit.insert("client_id".into(), id.into());
                        audit.insert("reason".into(), "service token expired".into());
                        self.deny(audit, Auth::BadServiceToken);
                        return refuse_at(
                            c,
                            "token",
                            403,
                            "Forbidden",
                            "service token expired: ask the edge's operator for a new one",
                        );
                    }
                    Verified::Refused | Verified::Unknown => None,
                };
                match name {
                    Some(name) => {
                        c.service_token = Some(id.to_owned());
                        Identity {
                            service_token: Some(name),
                            ..Identity::default()
                        }
                    }
                    None => {
                        audit.insert(
                            "reason".into(),
                            "unknown service token or bad secret".into(),
                        );
                        self.deny(audit, Auth::BadServiceToken);
                        return refuse_at(
                            c,
                            "token",
                            403,
                            "Forbidden",
                            "service token refused: unknown client id or wrong secret",
                        );
                    }
                }
            }
            (_, _, Some(token)) => match self.verify_app_token(token, &app_hostname) {
                Ok(id) => id,
                Err(why) => {
                    audit.insert("reason".into(), format!("app token refused: {why}").into());
                    self.deny(audit, Auth::BadAppToken);
                    return refuse_at(
                        c,
                        "token",
                        401,
                        "Unauthorized",
                        &format!("app token refused ({why}): log in again"),
                    );
                }
            },
            _ if policies_bypass => Identity::default(),
            _ => {
                audit.insert("reason".into(), "no credentials".into());
                self.deny(audit, Auth::NoCredentials);
                return refuse_at(
                    c,
                    "token",
                    401,
                    "Unauthorized",
                    &format!(
                        "authentication required for {host}: log in (postern access login {host}) \
                         or pass a service token"
                    ),
                );
            }
        };
        if let Some(e) = &identity.email {
            audit.insert("email".into(), e.clone().into());
        }
        if let Some(t) = &identity.service_token {
            audit.insert("service_token".into(), t.clone().into());
        }
        let verdict = app.decide(&identity);
        let destination = super::bastion::check(head.header(destination::HEADER), app);
        audit.insert("policy".into(), verdict.policy.clone().into());
        if !verdict.allow {
            audit.insert("reason".into(), "policy".into());
            self.deny(audit, Auth::Policy);
            let who = identity
                .email
                .clone()
                .or(identity
                    .service_token
                    .as_ref()
                    .map(|t| format!("service token {t}")))
                .unwrap_or_else(|| "anonymous".into());
            let what = if identity.service_token.is_some() {
                "service token refused"
            } else {
                "access denied"
            };
            return refuse_at(
                c,
                "policy",
                403,
                "Forbidden",
                &format!("{what}: {who} is not allowed to reach {host}"),
            );
        }
        // Bastion mode: checked against the application's allow-list before any tunnel.
        let destination = match destination {
            Ok(d) => d,
            Err(why) => return self.refuse_destination(c, audit, &head, 403, &why),
        };
        if let Some(d) = &destination {
            audit.insert("destination".into(), d.to_string().into());
        }
        // A resumable stream (docs/design.md §2.6): `start` asks for one, `resume` brings a
        // stream back to the origin connector that holds it.
        let ask = match head.header(resume::HEADER) {
            None => None,
            Some(v) => match resume::Ask::parse(v) {
                Some(ask) => Some(ask),
                None => {
                    audit.insert("reason".into(), "bad Postern-Resume header".into());
                    self.deny(audit, Auth::Resume);
                    return refuse(c, 400, "Bad Request", "bad Postern-Resume header");
                }
            },
        };
        if let Some(resume::Ask::Resume { stream, .. }) = &ask {
            audit.insert("resume".into(), resume::hex(&stream[..6]).into());
            if !self.resume_allowed(c.peer.ip(), now) {
                audit.insert("reason".into(), "too many resumptions".into());
                self.deny(audit, Auth::Resume);
                return refuse(
                    c,
                    429,
                    "Too Many Requests",
                    "too many stream resumptions from your address; wait a minute",
                );
            }
        }
        let connector = match &ask {
            Some(resume::Ask::Resume { connector, .. }) => Some(connector.as_str()),
            _ => None,
        };
        let Some(tunnel) = self.pick_tunnel(&host, connector) else {
            if connector.is_some() {
                audit.insert("reason".into(), "resume: origin not connected".into());
                self.deny(audit, Auth::Resume);
                return refuse(
                    c,
                    503,
                    "Service Unavailable",
                    "the origin that holds this stream is not connected to this edge; try again",
                );
            }
            audit.insert("reason".into(), "hostname not registered".into());
            self.deny(audit, Auth::NotRegistered);
            return refuse_at(
                c,
                "tunnel",
                404,
                "Not Found",
                &format!("hostname {host} is not registered by any tunnel"),
            );
        };
        let max_streams = self.settings.limits.max_streams_per_tunnel;
        let Some(t) = self.tunnel_facts(tunnel) else {
            unreachable!("bug: route to a non-tunnel slot");
        };
        if t.streams >= max_streams {
            let origin = t.peer;
            audit.insert("reason".into(), "tunnel stream limit".into());
            self.deny(audit, Auth::TunnelBusy);
            self.limit_hit(Limit::Streams, origin.ip(), || {
                format!(
                    "tunnel connection {origin} has {max_streams} streams open \
                     (limits.max_streams_per_tunnel)"
                )
            });
            return refuse_at(
                c,
                "tunnel",
                503,
                "Service Unavailable",
                "tunnel is busy; try again",
            );
        }
        if destination.is_some() && !t.bastion {
            let why = format!(
                "the tunnel serving {host} is not a jump host (no `service: bastion` rule, \
                 or a postern older than bastion mode): it cannot take a --destination"
            );
            return self.refuse_destination(c, audit, &head, 502, &why);
        }
        let resume = match (&ask, t.resumable) {
            (Some(resume::Ask::Start), true) => Some("start"),
            (Some(resume::Ask::Resume { .. }), _) => Some("resume"),
            _ => None,
        };
        let open = Open {
            session: Session::new(&identity, &host, c.peer, now, self.unix),
            granted: resume.map(|_| t.connector.clone()),
            resume,
            destination: destination.map(|d| d.to_string()),
            key,
            audit,
        };
        if matches!(self.conns[tunnel], Some(Conn::Tunnel(_))) {
            self.open_stream(slot, c, Some(tunnel), open);
        } else {
            // Served by another loop: the carrier follows it there (`loops.rs`).
            c.moving = Some((self.conn_id(tunnel), Box::new(open)));
        }
    }

    /// Opens the stream of a carrier let in and routed to the tunnel connection in `tunnel`
    /// (on this loop), and answers 101; or refuses, when the tunnel cannot take it (or has
    /// ended on the way from another loop: `None`).
    pub(super) fn open_stream(
        &mut self,
        slot: usize,
        c: &mut Carrier,
        tunnel: Option<usize>,
        open: Open,
    ) {
        let Open {
            session,
            resume,
            destination,
            granted,
            key,
            mut audit,
        } = open;
        let host = session.hostname.clone();
        let max_streams = self.settings.limits.max_streams_per_tunnel;
        let found = tunnel.and_then(|t| self.conns.get_mut(t)?.as_mut());
        let (tunnel, t) = match (tunnel, found) {
            (Some(slot), Some(Conn::Tunnel(t))) if t.mux.stream_count() < max_streams => (slot, t),
            (_, found) => {
                // Ended, or full, between loop 0's route (a pass late) and this loop.
                let why = match found {
                    Some(Conn::Tunnel(_)) => "tunnel stream limit",
                    _ => "tunnel went away",
                };
                audit.insert("reason".into(), why.into());
                self.deny(audit, Auth::TunnelBusy);
                let message = format!("{why}; try again");
                return refuse_at(c, "tunnel", 503, "Service Unavailable", &message);
            }
        };
        // The origin learns who it is serving from an assertion signed for this stream only;
        // no credential the client presented travels on (see `origin_claims`).
        let next = t.mux.next_stream_id();
        let extra: Vec<(&str, &str)> = (resume.map(|r| ("resume", r)).into_iter())
            .chain(destination.as_deref().map(|d| ("destination", d)))
            .collect();
        let identity = &session.identity;
        let Some(claims) = origin_claims(
            &self.keys,
            &self.public_url,
            &host,
            next,
            identity,
            &extra,
            self.unix,
        ) else {
            // Only an app token's groups can be this large.
            audit.insert("reason".into(), "identity too large to forward".into());
            self.deny(audit, Auth::BadAppToken);
            return refuse(
                c,
                431,
                "Request Header Fields Too Large",
                "your identity (groups) is too large to forward to the origin",
            );
        };
        let Some(stream) = t.mux.open_stream(&host, &claims) else {
            return refuse_at(
                c,
                "tunnel",
                503,
                "Service Unavailable",
                "tunnel is busy; try again",
            );
        };
        debug_assert_eq!(stream, next, "bug: the stream id the assertion names");
        t.carriers.insert(stream, slot);
        self.mark(tunnel);
        self.metrics.auth(if identity.service_token.is_some() {
            Auth::ServiceToken
        } else if identity.email.is_some() {
            Auth::AppToken
        } else {
            Auth::Bypass
        });
        audit.insert("session".into(), session.id.clone().into());
        c.session = Some(session);
        audit.insert("decision".into(), "allow".into());
        self.audit.record("access", audit);
        self.metrics.stream_opened();

        let extra: Vec<(&str, &str)> = granted
            .as_deref()
            .map(|connector| (resume::HEADER, connector))
            .into_iter()
            .collect();
        c.core.accept(
            &key,
            (tunnel, stream),
            self.settings.limits.max_ws_frame_bytes,
            &extra,
        );
    }

    /// A request for a page (not a carrier upgrade), with its body if it had one.
    pub(super) fn serve_page(
        &mut self,
        slot: usize,
        c: &mut Carrier,
        head: &RequestHead,
        host: &str,
        body: &[u8],
    ) {
        let conn = self.conn_id(slot);
        if !self.on_page(conn, c, head, host, body) {
            let browser = head.method == "GET"
                && head
                    .header("accept")
                    .is_some_and(|a| a.contains("text/html"));
            if browser {
                let served = self.settings.application(host).is_some();
                return super::login::host_page(c, host, served);
            }
            refuse(
                c,
                400,
                "Bad Request",
                "this endpoint carries SSH over WebSocket: connect with `postern access ssh`",
            );
        }
    }

    pub(super) fn deny(
        &mut self,
        mut fields: serde_json::Map<String, serde_json::Value>,
        why: Auth,
    ) {
        self.metrics.auth(why);
        // Anyone can repeat these without credentials: one line per source, reason and
        // interval; the rest are counted and written when the interval ends.
        let unauthenticated = matches!(
            why,
            Auth::HostMismatch
                | Auth::NoApplication
                | Auth::BadServiceToken
                | Auth::BadAppToken
                | Auth::NoCredentials
        );
        let source = fields
            .get("peer")
            .and_then(|v| v.as_str())
            .and_then(|p| p.parse::<SocketAddr>().ok())
            .map(|p| p.ip());
        if let (true, Some(ip)) = (unauthenticated, source) {
            if !self.denials.first(&(ip, why), self.now) {
                return;
            }
        }
        fields.insert("decision".into(), "deny".into());
        info!(
            "denied {}: {}",
            // Already a valid hostname, or clipped and escaped (`recorded_host`).
            fields
                .get("hostname")
                .and_then(|v| v.as_str())
                .unwrap_or(""),
            // May quote the client's token header (alg, kid).
            untrusted(fields.get("reason").and_then(|v| v.as_str()).unwrap_or(""))
        );
        self.audit.record("access", fields);
    }

    /// A live, non-draining tunnel slot for `host`, round-robin over its HA connections that
    /// have room for another stream.
    ///
    /// With a `connector`, only that origin's connections that can resume streams.
    pub(super) fn pick_tunnel(&mut self, host: &str, connector: Option<&str>) -> Option<usize> {
        let slots = match self.routes.get(host) {
            Some(s) => s,
            None => self.named.get(self.hostnames.tunnel_of(host)?)?,
        };
        let live: Vec<usize> = slots
            .iter()
            .copied()
            .filter(|&s| {
                self.tunnel_facts(s).is_some_and(|t| {
                    t.usable && connector.is_none_or(|c| t.resumable && t.connector == c)
                })
            })
            .collect();
        if live.is_empty() {
            return None;
        }
        // Connections with room for one more stream first; if all are full, any (it gets 503).
        let max = self.settings.limits.max_streams_per_tunnel;
        let roomy: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&s| self.tunnel_facts(s).is_some_and(|t| t.streams < max))
            .collect();
        let pool = if roomy.is_empty() { &live } else { &roomy };
        self.round_robin = self.round_robin.wrapping_add(1);
        Some(pool[self.round_robin % pool.len()])
    }

    pub(super) fn end_carrier(&mut self, slot: usize, mut c: Box<Carrier>, why: &str) {
        debug!("carrier {} closed: {why}", c.peer);
        if let Some(&(tunnel, stream)) = c.core.link() {
            if let Some(Some(Conn::Tunnel(t))) = self.conns.get_mut(tunnel) {
                if t.carriers.remove(&stream).is_some() && t.mux.has_stream(stream) {
                    t.mux
                        .reset(stream, mux::ResetCode::Lost, "client's connection ended");
                }
                self.mark(tunnel);
            }
        }
        self.session_ended(&mut c, why);
        c.tls.close();
        let _ = slot;
    }
}

/// What OPEN tells the origin about a client: who (`email`, `service_token`) and an
/// [`OriginAssertion`] for exactly this hostname and stream, signed with the app-token key,
/// valid for 60 s, that an origin checks against `/cdn-cgi/access/certs`. Never a bearer
/// credential: not the client's app token (valid on every hostname of a `*.zone`
/// application) nor anything else it sent; the edge refuses the assertion as a token.
/// `None` if it would not fit in OPEN (an identity with huge groups).
pub(super) fn origin_claims(
    keys: &KeyRing,
    iss: &str,
    host: &str,
    stream: u32,
    identity: &Identity,
    extra: &[(&str, &str)],
    unix: u64,
) -> Option<Vec<u8>> {
    let jti = crate::proto::base64::encode_url(&crate::io::random_bytes::<16>());
    let mut assertion = OriginAssertion::new(iss, host, stream, unix, jti);
    assertion.sub = identity.email.clone().unwrap_or_default();
    assertion.email = identity.email.clone();
    assertion.groups = identity.groups.clone();
    assertion.service_token = identity.service_token.clone();
    let mut claims = serde_json::json!({
        "email": identity.email,
        "service_token": identity.service_token,
        "assertion": keys.sign_origin_assertion(&assertion),
    });
    // `resume` (a resumable stream), `destination` (a jump host's, canonical).
    for (k, v) in extra {
        claims[*k] = (*v).into();
    }
    let bytes = serde_json::to_vec(&claims).expect("bug: claims of strings serialize");
    (bytes.len() <= crate::limits::MAX_CLAIMS_LEN).then_some(bytes)
}

/// The 429 page for a source over its login rate; the carrier closes after it.
pub(super) fn too_many_requests(c: &mut Carrier, now: Instant) {
    let body = "<!doctype html><html><head><meta charset=\"utf-8\"><title>Too many requests\
                </title></head><body><h1>Too many requests</h1><p>Too many sign-in attempts \
                from your address: wait a minute and try again.</p></body></html>";
    c.core.respond(
        429,
        "Too Many Requests",
        &[
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
            ("Retry-After", "60"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "no-referrer"),
            ("Content-Security-Policy", "default-src 'none'"),
        ],
        body.as_bytes(),
        now,
    );
}

/// Queues an HTTP refusal with a JSON body naming the cause; the carrier closes after it.
pub(super) fn refuse(c: &mut Carrier, status: u16, reason: &str, message: &str) {
    c.core.refuse(status, reason, message, c.now);
}

/// [`refuse`] naming the refusing `step` for programs (`proto::carrier::Carrier::refuse_step`).
fn refuse_at(c: &mut Carrier, step: &str, status: u16, reason: &str, message: &str) {
    c.core
        .refuse_step(status, reason, message, Some(step), c.now);
}

/// A Host header as the audit log and the log record it: as is when it is a valid hostname,
/// else its first 64 characters escaped and its length (a peer may send 16 KiB of anything).
pub(super) fn recorded_host(host: &str) -> String {
    if host.is_empty() || valid_hostname(host) {
        host.to_owned()
    } else {
        crate::logging::escape(host, 64)
    }
}
