//! Live sessions (issue 16): every carrier stream is a session with an id, who opened it,
//! where to, from where, since when and how many bytes moved each way. The admin API lists
//! them and ends them (`postern edge sessions list|kill`), a config reload ends the ones the
//! new policies no longer allow, and each end is a `session_end` audit line.
//!
//! ```text
//!  on_request: allowed ─▶ Session { id, identity, hostname, … } on the carrier
//!                         audit "access" (decision allow, session id): the start line
//!  splice_carrier         ─▶ up / down byte counts (two additions per batch)
//!  end_carrier            ─▶ audit "session_end" (duration, bytes, reason)
//!  admin kill / reload / revocation ─▶ end_session: Close 1008 with the reason to the client,
//!                                      RST Cancel to the origin (no resumption), the reason
//!                                      kept for the end line
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use log::info;
use serde_json::{json, Map, Value};

use super::loops::Away;
use super::{Carrier, Conn, EdgeCore};
use crate::proto::mux;
use crate::proto::policy::Identity;
use crate::proto::ws;

/// One carrier stream, as the operator sees it. A clone shares the byte counts: the stub a
/// session leaves on the control loop when its carrier moves to its tunnel's loop
/// (`loops.rs`) lists what the carrier moves there.
#[derive(Clone)]
pub(super) struct Session {
    /// 16 hex characters, random: names the session in the admin API and the audit log.
    pub(super) id: String,
    pub(super) identity: Identity,
    /// The hostname the client asked for (SNI = Host).
    pub(super) hostname: String,
    pub(super) peer: SocketAddr,
    pub(super) started: Instant,
    /// Unix seconds.
    pub(super) started_unix: u64,
    /// Client → origin and origin → client bytes (WebSocket payload).
    pub(super) bytes: Arc<Bytes>,
    /// Why the edge ended it, when it did (a kill, a policy change, a revocation).
    pub(super) ended_by: Option<String>,
}

impl Session {
    pub(super) fn new(
        identity: &Identity,
        hostname: &str,
        peer: SocketAddr,
        now: Instant,
        unix: u64,
    ) -> Session {
        Session {
            id: crate::store::hex(&crate::io::random_bytes::<8>()),
            identity: identity.clone(),
            hostname: hostname.to_owned(),
            peer,
            started: now,
            started_unix: unix,
            bytes: Arc::default(),
            ended_by: None,
        }
    }

    /// Who, as the log and the API name them: the email, `service token NAME`, or anonymous.
    pub(super) fn who(&self) -> String {
        match (&self.identity.email, &self.identity.service_token) {
            (Some(e), _) => e.clone(),
            (None, Some(t)) => format!("service token {t}"),
            (None, None) => "anonymous".into(),
        }
    }

    /// The admin API's view of the session.
    pub(super) fn to_json(&self, now: Instant) -> Value {
        json!({
            "id": self.id,
            "email": self.identity.email,
            "service_token": self.identity.service_token,
            "hostname": self.hostname,
            "source": self.peer.to_string(),
            "started": self.started_unix,
            "seconds": now.saturating_duration_since(self.started).as_secs(),
            "bytes_up": self.bytes.up(),
            "bytes_down": self.bytes.down(),
        })
    }

    /// The `session_end` audit line's fields.
    fn end_fields(&self, now: Instant, reason: &str) -> Map<String, Value> {
        let mut f = Map::new();
        f.insert("session".into(), self.id.clone().into());
        f.insert("hostname".into(), self.hostname.clone().into());
        f.insert("peer".into(), self.peer.to_string().into());
        if let Some(e) = &self.identity.email {
            f.insert("email".into(), e.clone().into());
        }
        if let Some(t) = &self.identity.service_token {
            f.insert("service_token".into(), t.clone().into());
        }
        let lasted = now.saturating_duration_since(self.started);
        f.insert("duration_ms".into(), (lasted.as_millis() as u64).into());
        f.insert("bytes_up".into(), self.bytes.up().into());
        f.insert("bytes_down".into(), self.bytes.down().into());
        f.insert("reason".into(), reason.into());
        f
    }
}

/// A session's byte counts: two relaxed atomic additions per batch on the data path, read
/// by the control loop for `sessions list` and the console.
#[derive(Default)]
pub(super) struct Bytes {
    up: AtomicU64,
    down: AtomicU64,
}

impl Bytes {
    pub(super) fn add_up(&self, n: usize) {
        self.up.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn add_down(&self, n: usize) {
        self.down.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    pub(super) fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }

    /// Both ways.
    pub(super) fn total(&self) -> u64 {
        self.up().saturating_add(self.down())
    }
}

/// Which sessions a kill ends.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Selector {
    Id(String),
    Email(String),
    ServiceToken(String),
    Hostname(String),
}

impl Selector {
    /// From the admin API's body: exactly one of `id`, `email`, `service_token`, `hostname`.
    pub(super) fn from_json(v: &Value) -> Result<Selector, String> {
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let given: Vec<Selector> = [
            field("id").map(Selector::Id),
            field("email").map(|e| Selector::Email(e.to_ascii_lowercase())),
            field("service_token").map(Selector::ServiceToken),
            field("hostname").map(|h| Selector::Hostname(h.to_ascii_lowercase())),
        ]
        .into_iter()
        .flatten()
        .collect();
        match <[Selector; 1]>::try_from(given) {
            Ok([one]) => Ok(one),
            Err(_) => Err("give exactly one of id, email, service_token, hostname".into()),
        }
    }

    pub(super) fn matches(&self, s: &Session) -> bool {
        match self {
            Selector::Id(id) => s.id == *id,
            Selector::Email(e) => s.identity.email.as_deref() == Some(e.as_str()),
            Selector::ServiceToken(t) => s.identity.service_token.as_deref() == Some(t.as_str()),
            Selector::Hostname(h) => s.hostname == *h,
        }
    }
}

impl EdgeCore {
    /// The carrier slots whose live session `keep` selects.
    pub(super) fn session_slots(&self, keep: impl Fn(&Session) -> bool) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|&slot| {
                self.live_session(slot)
                    .is_some_and(|s| s.ended_by.is_none() && keep(s))
            })
            .collect()
    }

    /// The session of the carrier in `slot` while it streams, here or on another loop.
    pub(super) fn live_session(&self, slot: usize) -> Option<&Session> {
        match self.conns[slot].as_ref()? {
            Conn::Carrier(c) => match &c.moving {
                // Let in, on its way to its tunnel's loop (`loops.rs`).
                Some((_, open)) => Some(&open.session),
                None => c.session.as_ref().filter(|_| c.core.link().is_some()),
            },
            Conn::Away(a) => match a.as_ref() {
                Away::Carrier(r) => Some(&r.session),
                Away::Tunnel(_) => None,
            },
            _ => None,
        }
    }

    /// The edge ends the session on carrier `slot`: a WebSocket Close `code` with `reason`
    /// to the client, a deliberate reset (not "lost": no resumption) to the origin; the
    /// reason goes on the session's end line. False if the slot holds no live session.
    pub(super) fn end_session(&mut self, slot: usize, code: u16, reason: &str) -> bool {
        let now = self.now;
        let Some(Conn::Carrier(c)) = self.conns[slot].as_mut() else {
            return self.end_away_session(slot, code, reason);
        };
        if let Some((_, open)) = c.moving.take() {
            // Routed to another loop and not gone yet: it goes nowhere, and its stream is
            // never opened; the client hears why instead of a 101.
            info!(
                "session {} of {} to {} from {} ended before it started: {reason}",
                open.session.id,
                crate::logging::untrusted(&open.session.who()),
                open.session.hostname,
                c.peer
            );
            c.service_token = None;
            super::carrier::refuse(c, 403, "Forbidden", reason);
            self.mark(slot);
            return true;
        }
        let Some(session) = c.session.as_mut().filter(|s| s.ended_by.is_none()) else {
            return false;
        };
        session.ended_by = Some(reason.to_owned());
        // The email is the provider's text: escaped before it reaches the log.
        info!(
            "session {} of {} to {} from {} ended: {reason}",
            session.id,
            crate::logging::untrusted(&session.who()),
            session.hostname,
            c.peer
        );
        c.service_token = None;
        let link = c.core.link().copied();
        c.close_with(code, reason, now);
        if let Some((tunnel, stream)) = link {
            if let Some(Some(Conn::Tunnel(t))) = self.conns.get_mut(tunnel) {
                if t.carriers.remove(&stream).is_some() && t.mux.has_stream(stream) {
                    t.mux.reset(stream, mux::ResetCode::Cancel, reason);
                }
                self.mark(tunnel);
            }
        }
        self.mark(slot);
        true
    }

    /// Ends every live session `selector` names within `zone` (`None`: any zone); their ids.
    pub(super) fn kill_sessions(&mut self, selector: &Selector, zone: Option<&str>) -> Vec<String> {
        let slots = self
            .session_slots(|s| selector.matches(s) && zone.is_none_or(|z| in_zone(&s.hostname, z)));
        let mut ids = Vec::new();
        for slot in slots {
            let id = self.live_session(slot).map(|s| s.id.clone());
            if let Some(id) = id {
                if self.end_session(slot, ws::close::POLICY, "session ended by an administrator") {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// After a reload: every live session is checked against the applications and policies
    /// now in force; the ones no longer allowed end. How many ended.
    pub(super) fn recheck_sessions(&mut self) -> usize {
        let refused = self.session_slots(|s| {
            !self
                .settings
                .application(&s.hostname)
                .is_some_and(|app| app.decide(&s.identity).allow)
        });
        refused
            .into_iter()
            .filter(|&slot| {
                self.end_session(
                    slot,
                    ws::close::POLICY,
                    "access revoked: the edge's policy changed",
                )
            })
            .count()
    }

    /// The carrier ended: its session's end line (if it had a session).
    pub(super) fn session_ended(&mut self, c: &mut Carrier, why: &str) {
        if let Some(s) = c.session.take() {
            self.console.chart.ended(s.bytes.total());
            let reason = s.ended_by.as_deref().unwrap_or(why);
            self.audit
                .record("session_end", s.end_fields(self.now, reason));
        }
    }

    /// The admin API's list: live sessions within `zone` (`None`: all), oldest first.
    pub(super) fn list_sessions(&self, zone: Option<&str>) -> Vec<Value> {
        let now = self.now;
        let mut all: Vec<&Session> = self
            .session_slots(|s| zone.is_none_or(|z| in_zone(&s.hostname, z)))
            .into_iter()
            .filter_map(|slot| self.live_session(slot))
            .collect();
        all.sort_by_key(|s| s.started);
        all.into_iter().map(|s| s.to_json(now)).collect()
    }
}

/// Whether `hostname` is `zone` or under it.
pub(super) fn in_zone(hostname: &str, zone: &str) -> bool {
    hostname == zone
        || hostname
            .strip_suffix(zone)
            .is_some_and(|rest| rest.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kill_names_exactly_one_kind_of_session() {
        let sel = |v: Value| Selector::from_json(&v);
        assert_eq!(sel(json!({"id": "ab12"})), Ok(Selector::Id("ab12".into())));
        assert_eq!(
            sel(json!({"email": "Alice@Example.com"})),
            Ok(Selector::Email("alice@example.com".into()))
        );
        assert_eq!(
            sel(json!({"hostname": "SSH.example.com"})),
            Ok(Selector::Hostname("ssh.example.com".into()))
        );
        assert!(sel(json!({})).is_err());
        assert!(sel(json!({"id": "a", "email": "b@c"})).is_err());
        assert!(sel(json!({"id": 5})).is_err());
        assert!(sel(Value::Null).is_err());
    }

    #[test]
    fn a_zone_sees_its_own_hostnames_only() {
        assert!(in_zone("ssh.example.com", "example.com"));
        assert!(in_zone("example.com", "example.com"));
        assert!(!in_zone("ssh.badexample.com", "example.com"));
        assert!(!in_zone("example.com.evil.net", "example.com"));
    }

    #[test]
    fn a_selector_matches_by_its_field() {
        let identity = Identity {
            email: Some("alice@example.com".into()),
            ..Identity::default()
        };
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let s = Session::new(&identity, "ssh.example.com", peer, Instant::now(), 0);
        assert_eq!(s.id.len(), 16);
        assert!(Selector::Id(s.id.clone()).matches(&s));
        assert!(Selector::Email("alice@example.com".into()).matches(&s));
        assert!(!Selector::ServiceToken("alice@example.com".into()).matches(&s));
        assert!(Selector::Hostname("ssh.example.com".into()).matches(&s));
        assert!(!Selector::Hostname("example.com".into()).matches(&s));
        assert_eq!(s.who(), "alice@example.com");
    }
}
