//! Tunnel connections: mux frames in and out, HELLO, REGISTER (ad hoc by hostname, or a named
//! tunnel), stream events to their carriers, and the end of a connection.

use log::{info, warn};
use rustls::pki_types::CertificateDer;

use super::{discard_input, refusal, Conn, Discarded, EdgeCore, Registering, Tunnel};
use crate::edge::valid_hostname;
use crate::limits::{CONN_WRITE_BATCH, LINGER};
use crate::logging::untrusted;
use crate::metrics;
use crate::proto::mux::{self, EdgeEvent, StreamEvent};
use crate::proto::ws;

impl EdgeCore {
    pub(super) fn pump_tunnel(&mut self, slot: usize, mut t: Box<Tunnel>) -> Option<Box<Tunnel>> {
        if t.linger_until.is_some() {
            return self.discard_lingering_tunnel(slot, t);
        }
        loop {
            let full = match t.tls.read(&mut self.stage) {
                Ok(full) => full,
                Err(e) => {
                    info!("tunnel {}: {e}", t.peer);
                    self.end_tunnel(slot, t, &e.to_string());
                    return None;
                }
            };
            t = self.tunnel_step(slot, t)?;
            self.shared_turn |= t.mux.stream_count() > 1;
            if !(full && t.tls.has_room()) {
                break;
            }
            if !self.urgent.is_empty() {
                // A carrier has a few bytes to deliver: it runs before this connection reads
                // (and decrypts) what a bulk stream sent behind them; the rest next pass.
                self.again.push(slot);
                break;
            }
        }
        if let Err(e) = t.tls.flush() {
            self.end_tunnel(slot, t, &e.to_string());
            return None;
        }
        if t.closing && !t.tls.tls.wants_write() {
            // The ERROR is out: close_notify, then FIN and a lingering close, as for carriers.
            t.tls.tls.send_close_notify();
            if let Err(e) = t.tls.flush() {
                self.end_tunnel(slot, t, &e.to_string());
                return None;
            }
            if t.tls.tls.wants_write() {
                return Some(t);
            }
            if t.tls.sock.shutdown_write().is_err() {
                self.end_tunnel(slot, t, "closed after error");
                return None;
            }
            t.linger_until = Some(self.now + LINGER);
            return self.discard_lingering_tunnel(slot, t);
        }
        Some(t)
    }

    /// A tunnel connection lingering after its ERROR: reads and discards what the origin
    /// still sends ([`discard_input`]) and ends at its EOF (the deadline is `tick`'s).
    fn discard_lingering_tunnel(&mut self, slot: usize, mut t: Box<Tunnel>) -> Option<Box<Tunnel>> {
        match discard_input(&mut t.tls.sock, &mut self.stage) {
            Discarded::Ended => {
                self.end_tunnel(slot, t, "closed after error");
                return None;
            }
            Discarded::Drained => {}
            Discarded::Bounded => self.again.push(slot),
        }
        Some(t)
    }

    /// One pass over a tunnel connection: frames in, events, frames out.
    pub(super) fn tunnel_step(&mut self, slot: usize, mut t: Box<Tunnel>) -> Option<Box<Tunnel>> {
        let now = self.now;
        if t.cert_fp.is_empty() && !t.tls.tls.is_handshaking() {
            match t.tls.tls.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => {
                    t.cert = cert.clone().into_owned();
                    t.cert_fp = crate::pki::fingerprint(&t.cert);
                    if self.certs.is_revoked(&t.cert, &t.cert_fp) {
                        let mut audit = serde_json::Map::new();
                        audit.insert("peer".into(), t.peer.to_string().into());
                        audit.insert("certificate".into(), t.cert_fp.clone().into());
                        self.refuse_register(
                            &mut t,
                            audit,
                            refusal::REVOKED,
                            "origin certificate revoked",
                        );
                    }
                }
                None => {
                    self.end_tunnel(slot, t, "no client certificate");
                    return None;
                }
            }
        }
        if !t.tls.rx.is_empty() && !t.closing {
            // Origin bytes for a carrier ready to send go out as they are decrypted: the
            // cut-through (docs/design.md §2.8). A carrier whose socket failed meanwhile
            // runs in this pass, and ends.
            let (conns, metrics, carriers) = (&mut self.conns, &*self.metrics, &t.carriers);
            let mut failed = Vec::new();
            let mut direct = |stream: u32, data: &[u8]| {
                let Some(&c) = carriers.get(&stream) else {
                    return 0;
                };
                let Some(Some(Conn::Carrier(carrier))) = conns.get_mut(c) else {
                    return 0;
                };
                match carrier.take_direct((slot, stream), data, metrics, now) {
                    None => 0,
                    Some(flushed) => {
                        if flushed.is_err() {
                            failed.push(c);
                        }
                        data.len()
                    }
                }
            };
            let input = t.mux.handle_input_direct(t.tls.rx.data(), now, &mut direct);
            for c in failed {
                self.mark(c);
            }
            match input {
                Ok(n) => t.tls.rx.consume(n),
                Err(e) => {
                    warn!("tunnel {}: protocol error: {e}", t.peer);
                    self.metrics.error(metrics::Error::TunnelProtocol);
                    t.mux.send_error(mux::ErrorCode::Internal, &e.to_string());
                    t.closing = true;
                }
            }
        }
        while let Some(ev) = t.mux.poll_event() {
            self.on_tunnel_event(slot, &mut t, ev);
        }
        if t.tls.peer_closed {
            self.end_tunnel(slot, t, "origin closed the connection");
            return None;
        }
        // Frames out, one bounded batch at a time (flush first, as for carriers).
        let _ = t.tls.flush();
        while t.tls.can_send() && t.mux.wants_transmit() {
            self.scratch.clear();
            t.mux.poll_transmit(&mut self.scratch, CONN_WRITE_BATCH);
            for held in t.mux.framed_holds() {
                self.metrics.held(held);
            }
            t.tls.send(&self.scratch);
            if t.tls.flush().is_err() {
                break;
            }
        }
        self.scratch.clear();
        // Sending frees stream buffers: the `Writable` (and `Closed`) events that raises must
        // reach their carriers now, not with the next frame from the origin (which may be a
        // WINDOW that waits for those very carriers).
        while let Some(ev) = t.mux.poll_event() {
            self.on_tunnel_event(slot, &mut t, ev);
        }
        Some(t)
    }

    pub(super) fn on_tunnel_event(&mut self, slot: usize, t: &mut Tunnel, ev: EdgeEvent) {
        match ev {
            EdgeEvent::Hello {
                version,
                connector_id,
                ha_index,
            } => {
                t.connector = connector_id.iter().map(|b| format!("{b:02x}")).collect();
                t.ha_index = ha_index;
                t.resumable = version >= 2;
                t.bastion = version >= mux::BASTION_PROTOCOL_VERSION;
                if !(mux::OLDEST_PROTOCOL_VERSION..=mux::PROTOCOL_VERSION).contains(&version) {
                    t.mux.send_error(
                        mux::ErrorCode::BadRequest,
                        "unsupported tunnel protocol version",
                    );
                    t.closing = true;
                }
            }
            EdgeEvent::Register { hostname, service } => {
                self.on_register(slot, t, &hostname.to_ascii_lowercase(), &service)
            }
            EdgeEvent::Stream(StreamEvent::Readable(stream)) => {
                if let Some(&c) = t.carriers.get(&stream) {
                    if t.mux.few_bytes_readable(stream) {
                        self.mark_urgent(c);
                    } else {
                        self.mark(c);
                    }
                }
            }
            EdgeEvent::Stream(StreamEvent::Writable(stream) | StreamEvent::Closed(stream)) => {
                if let Some(&c) = t.carriers.get(&stream) {
                    self.mark(c);
                }
            }
            EdgeEvent::Stream(StreamEvent::Reset {
                stream,
                code,
                reason,
            }) => {
                if let Some(c) = t.carriers.remove(&stream) {
                    if let Some(Some(Conn::Carrier(carrier))) = self.conns.get_mut(c) {
                        let why = if code == mux::ResetCode::ConnectFailed {
                            format!("origin could not reach its service: {reason}")
                        } else {
                            format!("stream reset by origin: {reason}")
                        };
                        carrier.close_with(ws::close::TRY_AGAIN, &why, self.now);
                        self.mark(c);
                    }
                }
            }
            EdgeEvent::GoAway { reason, .. } => {
                info!(
                    "tunnel {} ({}) is draining: {}",
                    t.peer,
                    t.hostname.as_deref().unwrap_or("-"),
                    untrusted(&reason)
                );
            }
        }
    }

    pub(super) fn on_register(
        &mut self,
        slot: usize,
        t: &mut Tunnel,
        hostname: &str,
        service: &str,
    ) {
        if hostname.is_empty() {
            return self.on_register_named(slot, t);
        }
        let mut audit = serde_json::Map::new();
        audit.insert("peer".into(), t.peer.to_string().into());
        audit.insert("hostname".into(), hostname.into());
        audit.insert("connector".into(), t.connector.clone().into());
        audit.insert("certificate".into(), t.cert_fp.clone().into());
        let refusal = if t.hostname.is_some() || t.named.is_some() || t.registering.is_some() {
            Some((
                refusal::BAD_HOSTNAME,
                "one registration per tunnel connection".to_owned(),
            ))
        } else if !valid_hostname(hostname) {
            Some((
                refusal::BAD_HOSTNAME,
                format!("invalid hostname {hostname:?}"),
            ))
        } else if !self
            .settings
            .zones
            .iter()
            .any(|z| hostname == z || hostname.ends_with(&format!(".{z}")))
        {
            Some((
                refusal::NOT_COVERED,
                format!("hostname {hostname} is not in a zone served by this edge"),
            ))
        } else if !origin_cert_covers(&t.cert, hostname) {
            Some((
                refusal::NOT_COVERED,
                format!("origin certificate does not cover hostname {hostname}: use a certificate for its zone"),
            ))
        } else if let Some(zone) = self.zone_mismatch(&t.cert, hostname) {
            Some((
                refusal::NOT_COVERED,
                format!("hostname {hostname} is in the zone {zone}: use a certificate for {zone}"),
            ))
        } else if self.settings.application(hostname).is_none() {
            Some((
                refusal::NO_APPLICATION,
                format!(
                    "no application on this edge serves hostname {hostname}: the edge's \
                     operator adds one (applications[].hostname) before a tunnel can serve it"
                ),
            ))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            return self.refuse_register(t, audit, code, &message);
        }
        let registering = Registering {
            hostname: hostname.to_owned(),
            service: service.to_owned(),
            ticket: None,
            audit,
        };
        // REGISTERED only once the claim is stored: a crash before that loses the claim, and
        // the origin, never told it registered, registers again.
        self.claim_hostname(slot, t, registering);
    }

    pub(super) fn refuse_register(
        &mut self,
        t: &mut Tunnel,
        mut audit: serde_json::Map<String, serde_json::Value>,
        code: mux::ErrorCode,
        message: &str,
    ) {
        warn!("tunnel {}: registration refused: {message}", t.peer);
        self.metrics.error(metrics::Error::RegistrationRefused);
        audit.insert("decision".into(), "deny".into());
        audit.insert("reason".into(), message.into());
        self.audit.record("register", audit);
        t.mux
            .send_error(code, &format!("registration refused: {message}"));
        t.closing = true;
    }

    /// The claim behind `r` is on disk: route the hostname to this connection.
    pub(super) fn registered(&mut self, slot: usize, t: &mut Tunnel, r: Registering) {
        let Registering {
            hostname,
            service,
            mut audit,
            ..
        } = r;
        // The view holds what the store answered last: a route to a named tunnel (admin API)
        // may have taken the hostname since.
        if !self.hostnames.owned_by(&hostname, &t.cert_fp) {
            let (code, message) = match self.hostnames.tunnel_of(&hostname) {
                Some(id) => (
                    refusal::OWNED,
                    format!("hostname {hostname} was routed to the named tunnel {id} meanwhile"),
                ),
                None => (
                    refusal::NOT_RECORDED,
                    format!("edge could not record the registration of {hostname}: try again"),
                ),
            };
            return self.refuse_register(t, audit, code, &message);
        }
        info!(
            "tunnel registered {hostname} -> {} (connector {}, connection {}, {})",
            untrusted(&service),
            &t.connector[..t.connector.len().min(8)],
            t.ha_index,
            t.peer
        );
        audit.insert("decision".into(), "allow".into());
        self.audit.record("register", audit);
        t.deadline = None;
        self.routes.entry(hostname.clone()).or_default().push(slot);
        t.mux.send_registered(&hostname);
        t.hostname = Some(hostname);
        t.moving = true;
    }

    /// REGISTER with no hostname: the connection serves the named tunnel its certificate
    /// was issued for, and so every hostname routed to that tunnel.
    pub(super) fn on_register_named(&mut self, slot: usize, t: &mut Tunnel) {
        let id = crate::pki::tunnel_id(&t.cert);
        let mut audit = serde_json::Map::new();
        audit.insert("peer".into(), t.peer.to_string().into());
        audit.insert("connector".into(), t.connector.clone().into());
        audit.insert("certificate".into(), t.cert_fp.clone().into());
        if let Some(id) = &id {
            audit.insert("tunnel".into(), id.clone().into());
        }
        let record = id.as_deref().and_then(|id| self.tunnels.get(id));
        let refusal = if t.hostname.is_some() || t.named.is_some() {
            Some((
                refusal::BAD_HOSTNAME,
                "one registration per tunnel connection".to_owned(),
            ))
        } else if id.is_none() {
            Some((
                refusal::NOT_COVERED,
                "a named tunnel needs its credentials file from `postern tunnel create`, not \
                 an origin certificate"
                    .to_owned(),
            ))
        } else if record.is_none_or(|r| r.cert_sha256 != t.cert_fp) {
            Some((
                refusal::NOT_COVERED,
                format!(
                    "tunnel {} does not exist on this edge (deleted?): create it again with \
                     `postern tunnel create`",
                    id.as_deref().unwrap_or_default()
                ),
            ))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            warn!("tunnel {}: registration refused: {message}", t.peer);
            audit.insert("decision".into(), "deny".into());
            audit.insert("reason".into(), message.clone().into());
            self.audit.record("register", audit);
            t.mux
                .send_error(code, &format!("registration refused: {message}"));
            t.closing = true;
            return;
        }
        let (Some(id), Some(record)) = (id, record) else {
            return;
        };
        let routes = self.hostnames.routes_of(&id);
        let shown = if routes.is_empty() {
            "none yet: add one with `postern tunnel route dns`".to_owned()
        } else {
            routes.join(", ")
        };
        info!(
            "tunnel {} ({id}) registered connection {} (connector {}, {}); routes: {shown}",
            record.name,
            t.ha_index,
            &t.connector[..t.connector.len().min(8)],
            t.peer
        );
        audit.insert("name".into(), record.name.clone().into());
        audit.insert("decision".into(), "allow".into());
        self.audit.record("register", audit);
        t.deadline = None;
        t.named = Some(id.clone());
        self.named.entry(id).or_default().push(slot);
        t.mux.send_registered(&shown);
        t.moving = true;
    }

    pub(super) fn end_tunnel(&mut self, slot: usize, mut t: Box<Tunnel>, why: &str) {
        info!(
            "tunnel {} ({}) closed: {why}",
            t.peer,
            t.hostname
                .as_deref()
                .or(t.named.as_deref())
                .unwrap_or("unregistered")
        );
        self.unroute(slot, t.hostname.as_deref(), t.named.as_deref());
        for (_, c) in t.carriers.drain() {
            if let Some(Some(Conn::Carrier(carrier))) = self.conns.get_mut(c) {
                carrier.close_with(ws::close::TRY_AGAIN, "tunnel connection lost", self.now);
                self.mark(c);
            }
        }
        t.tls.close();
    }

    /// The tunnel connection in `slot` serves `hostname` (ad hoc) or the named tunnel `named`
    /// no more.
    pub(super) fn unroute(&mut self, slot: usize, hostname: Option<&str>, named: Option<&str>) {
        if let Some(id) = named {
            if let Some(v) = self.named.get_mut(id) {
                v.retain(|&s| s != slot);
                if v.is_empty() {
                    self.named.remove(id);
                }
            }
        }
        if let Some(h) = hostname {
            if let Some(v) = self.routes.get_mut(h) {
                v.retain(|&s| s != slot);
                if v.is_empty() {
                    self.routes.remove(h);
                }
            }
        }
    }
}

impl EdgeCore {
    /// `Some(zone of hostname)` when the origin certificate is for another zone: a certificate
    /// for `site.com` covers `x.team.site.com` by its SANs, but when `team.site.com` is a zone
    /// of its own, only that zone's certificates may claim names in it.
    pub(super) fn zone_mismatch(
        &self,
        cert: &CertificateDer<'_>,
        hostname: &str,
    ) -> Option<String> {
        let zone = self.settings.zone_of(hostname)?;
        (crate::pki::origin_zone(cert).as_deref() != Some(zone)).then(|| zone.to_owned())
    }
}

/// An origin certificate for zone Z (SANs `Z` and `*.Z`) covers Z and every name under it.
/// Checking each label-suffix against the SANs keeps webpki doing the matching, and also
/// works for single-label zones like `localhost`, whose wildcard webpki refuses.
pub(super) fn origin_cert_covers(cert: &CertificateDer<'_>, hostname: &str) -> bool {
    let mut name = hostname;
    loop {
        if crate::pki::cert_covers(cert, name) {
            return true;
        }
        match name.split_once('.') {
            Some((_, parent)) if !parent.is_empty() => name = parent,
            _ => return false,
        }
    }
}
