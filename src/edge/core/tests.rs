//! The edge's core driven in memory, quiche-style: every connection is a pair of byte queues
//! (no socket), the client and the origin are real rustls clients (and a real mux session on
//! the origin's side), and the clock is an `Instant` the test moves forward. Refusals,
//! limits, bad input, keepalive, idle timeouts and the drain at shutdown run in milliseconds.
//!
//! The store runs on its real worker thread (a file store in a temporary directory): a test
//! that needs one of its answers waits for the worker's wake-up with a deadline, as the
//! driver's waker would.
//!
//! The harness (the wires, [`Pipe::with`]) is `pub(crate)`: `crate::pipe_tests` builds its
//! edge with it, between a real client core and a real origin core.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{mpsc, Mutex};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::*;
use crate::edge::config::Application;
use crate::proto::mux::{OriginEvent, OriginSession, StreamEvent};
use crate::proto::policy::{Decision, Policy, Rule};
use crate::store::tests::TempDir;
use crate::store::{Expect, FileStore, HostOwner, HostnameRecord, Revocation, Store};

#[test]
fn hostnames_and_ports() {
    assert!(valid_hostname("ssh.site.com"));
    assert!(!valid_hostname("ssh..site.com"));
    assert!(!valid_hostname("../etc"));
    assert!(!valid_hostname("-a.b"));
}

// ------------------------------------------------------------------------- the harness

/// One connection's bytes, both ways, and whether the edge has let go of its end.
#[derive(Default)]
pub(crate) struct WireState {
    pub(crate) to_edge: VecDeque<u8>,
    pub(crate) from_edge: Vec<u8>,
    /// The peer closed its side (TCP FIN).
    pub(crate) peer_eof: bool,
    /// The core dropped its end: the connection is over.
    pub(crate) dropped: bool,
    /// The core shut down its write side (a FIN; it may still read: a lingering close).
    pub(crate) write_shut: bool,
    /// The peer reads nothing: the edge's writes would block (a full socket buffer).
    pub(crate) full: bool,
}

#[derive(Clone, Default)]
pub(crate) struct Wire(pub(crate) Arc<Mutex<WireState>>);

impl Wire {
    pub(crate) fn dropped(&self) -> bool {
        self.0.lock().unwrap().dropped
    }

    /// The edge sent its FIN: it shut its write side or dropped its end.
    pub(crate) fn edge_finished(&self) -> bool {
        let w = self.0.lock().unwrap();
        w.write_shut || w.dropped
    }
}

/// The edge's end of a [`Wire`], handed to the core as its socket.
pub(crate) struct EdgeEnd(pub(crate) Wire);

impl Read for EdgeEnd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut w = self.0 .0.lock().unwrap();
        if w.to_edge.is_empty() {
            return if w.peer_eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(w.to_edge.len());
        for (dst, src) in buf.iter_mut().zip(w.to_edge.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }
}

impl Write for EdgeEnd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut w = self.0 .0.lock().unwrap();
        if w.write_shut {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if w.full {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        w.from_edge.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for EdgeEnd {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.0 .0.lock().unwrap().write_shut = true;
        Ok(())
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl Drop for EdgeEnd {
    fn drop(&mut self) {
        self.0 .0.lock().unwrap().dropped = true;
    }
}

/// A TLS client on a [`Wire`]: a browser or `postern access` (carrier), or an origin (tunnel).
struct Peer {
    slot: usize,
    wire: Wire,
    tls: ClientConnection,
    /// Plaintext the edge sent, not yet taken by the test.
    received: Vec<u8>,
}

pub(crate) struct Pipe {
    pub(crate) core: EdgeCore,
    pub(crate) now: Instant,
    pub(crate) unix: u64,
    settings_ca: Vec<CertificateDer<'static>>,
    pub(crate) origin_cert: OriginCert,
    /// The store worker's wake-ups (the driver's waker).
    pub(crate) woken: mpsc::Receiver<()>,
    /// The service token the store holds: (client id, secret).
    pub(crate) token: (String, String),
    /// A second loop (`--workers 2`, `loops.rs`), driven by [`Pipe::exchange`] along with
    /// the first.
    pub(crate) second: Option<EdgeCore>,
    /// Loop 0 hears the store only through [`Pipe::store_answer`] (not on each turn).
    hold_store: bool,
    _dir: TempDir,
}

/// An origin certificate and its key.
pub(crate) type OriginCert = (
    CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

pub(crate) const APP: &str = "ssh.localhost";
/// An application whose policy lets in one email only (no service token).
const LOCKED: &str = "locked.localhost";

pub(crate) fn peer_addr(ip: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, ip], port))
}

impl Pipe {
    fn new() -> Pipe {
        Pipe::with(|_| {})
    }

    /// An edge as `postern edge --dev` sets it up, with `tweak` applied to its settings;
    /// the store holds one service token and, claimed by the test's origin certificate,
    /// the hostname [`APP`].
    pub(crate) fn with(tweak: impl FnOnce(&mut EdgeSettings)) -> Pipe {
        let dir = TempDir::new("edge-core");
        let mut settings =
            config::dev(peer_addr(1, 443), &dir.0.join("state")).expect("dev settings");
        settings.applications.insert(
            0,
            Application {
                hostname: LOCKED.into(),
                session_duration: 3600,
                policies: vec![Policy {
                    name: Some("alice only".into()),
                    decision: Decision::Allow,
                    include: vec![Rule::Email("alice@example.com".into())],
                    require: vec![],
                    exclude: vec![],
                }],
                ssh_certificates: Default::default(),
                max_age: None,
                acr_values: Vec::new(),
                max_session_duration: None,
                bastion: None,
            },
        );
        tweak(&mut settings);
        let origin_cert = settings
            .origin_ca
            .issue_origin("localhost")
            .expect("origin certificate");
        let mut store = FileStore::open(&settings.state).expect("store");
        let (record, secret) = store.create_service_token("ci", None).expect("token");
        let token = (record.client_id.clone(), secret.expose().to_owned());
        store
            .claim_hostname(
                APP,
                HostnameRecord {
                    owner: HostOwner::Certificate(crate::pki::fingerprint(&origin_cert.0)),
                    zone: "localhost".into(),
                    first_registered: 1,
                },
                Expect::Absent,
            )
            .expect("claim");
        let snapshot = store.snapshot().expect("snapshot");
        let (wake, woken) = mpsc::channel();
        let worker = StoreWorker::start(Box::new(store), move || {
            let _ = wake.send(());
        })
        .expect("store worker");
        let (keys, _) = KeyRing::generate();
        let parts = Parts {
            snapshot,
            store: Some(worker),
            audit: Audit::disabled(),
            keys,
            oidc: None,
            open_files: None,
            metrics: Metrics::new(metrics::Role::Edge, [7; 16]),
        };
        let settings_ca = settings.tls_ca_certs();
        let now = Instant::now();
        let unix = 1_700_000_000;
        let mut core = EdgeCore::new(settings, parts, now, unix);
        core.listening(443);
        Pipe {
            core,
            now,
            unix,
            settings_ca,
            origin_cert,
            woken,
            token,
            second: None,
            hold_store: false,
            _dir: dir,
        }
    }

    /// An edge with two loops: loop 0 is [`Pipe::core`], loop 1 [`Pipe::second`].
    fn with_two_loops() -> Pipe {
        let mut pipe = Pipe::new();
        let parts = Parts {
            snapshot: Snapshot::default(),
            store: None,
            audit: Audit::disabled(),
            keys: KeyRing::generate().0,
            oidc: None,
            open_files: None,
            metrics: pipe.core.metrics(),
        };
        let mut second = EdgeCore::new(pipe.core.settings.for_worker(), parts, pipe.now, pipe.unix);
        second.listening(443);
        let wakes: Vec<loops::Wake> = vec![Arc::new(|| {}), Arc::new(|| {})];
        let mut links = loops::Loops::wire(wakes).into_iter();
        pipe.core.set_loops(links.next().expect("loop 0"));
        second.set_loops(links.next().expect("loop 1"));
        pipe.second = Some(second);
        pipe
    }

    /// One turn of the second loop (if any): its messages, every slot, then loop 0's messages.
    fn turn_second(&mut self) {
        let (now, unix) = (self.now, self.unix);
        let Some(w) = self.second.as_mut() else {
            return;
        };
        w.handle_wake(now, unix);
        w.take_arrivals();
        for slot in 0..w.conns.len() {
            w.handle_ready(slot);
        }
        w.process(now, unix);
        if !self.hold_store {
            self.core.handle_wake(now, unix);
        }
        self.core.process(now, unix);
    }

    fn limits(&mut self) -> &mut crate::limits::EdgeLimits {
        &mut self.core.settings.limits
    }

    /// A TCP connection from `peer`: its slot, or `None` if a limit refused it.
    fn connect(&mut self, peer: SocketAddr) -> Option<(usize, Wire)> {
        let slot = self.core.admit(peer, self.now, self.unix)?;
        let wire = Wire::default();
        self.core
            .accepted(slot, Box::new(EdgeEnd(wire.clone())), peer);
        self.core.process(self.now, self.unix);
        Some((slot, wire))
    }

    pub(crate) fn client_config(
        &self,
        alpn: Option<&[u8]>,
        cert: Option<&OriginCert>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for ca in &self.settings_ca {
            roots.add(ca.clone()).expect("CA");
        }
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let mut config = if let Some((cert, key)) = cert {
            builder
                .with_client_auth_cert(vec![cert.clone()], key.clone_key())
                .expect("client auth")
        } else {
            builder.with_no_client_auth()
        };
        if let Some(alpn) = alpn {
            config.alpn_protocols = vec![alpn.to_vec()];
        }
        Arc::new(config)
    }

    /// A client that has finished its TLS handshake with the edge.
    fn peer(&mut self, from: SocketAddr, sni: &str, alpn: Option<&[u8]>, origin: bool) -> Peer {
        let cert = origin.then(|| (self.origin_cert.0.clone(), self.origin_cert.1.clone_key()));
        self.peer_with(from, sni, alpn, cert.as_ref())
    }

    fn peer_with(
        &mut self,
        from: SocketAddr,
        sni: &str,
        alpn: Option<&[u8]>,
        cert: Option<&OriginCert>,
    ) -> Peer {
        let (slot, wire) = self.connect(from).expect("admitted");
        let name = ServerName::try_from(sni.to_owned()).expect("name");
        let tls = ClientConnection::new(self.client_config(alpn, cert), name).expect("client");
        let mut p = Peer {
            slot,
            wire,
            tls,
            received: Vec::new(),
        };
        self.exchange(&mut p);
        assert!(!p.tls.is_handshaking(), "TLS handshake with the edge");
        p
    }

    fn carrier(&mut self, from: SocketAddr, host: &str) -> Peer {
        self.peer(from, host, None, false)
    }

    /// Moves bytes both ways until neither side has more to say.
    fn exchange(&mut self, p: &mut Peer) {
        for _ in 0..64 {
            let mut moved = false;
            while p.tls.wants_write() {
                let mut out = Vec::new();
                p.tls.write_tls(&mut out).expect("client write_tls");
                p.wire.0.lock().unwrap().to_edge.extend(out);
                moved = true;
            }
            self.core.handle_ready(p.slot);
            self.core.process(self.now, self.unix);
            self.turn_second();
            self.turn_second();
            let inbound = std::mem::take(&mut p.wire.0.lock().unwrap().from_edge);
            if !inbound.is_empty() {
                moved = true;
                let mut rd = &inbound[..];
                while !rd.is_empty() {
                    if p.tls.read_tls(&mut rd).expect("client read_tls") == 0 {
                        break;
                    }
                    if p.tls.process_new_packets().is_err() {
                        return;
                    }
                    // Each batch of records taken out as it comes: rustls holds at most
                    // 16 KiB of plaintext for its reader.
                    Self::take_plaintext(p);
                }
            }
            Self::take_plaintext(p);
            if !moved {
                return;
            }
        }
    }

    fn take_plaintext(p: &mut Peer) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match p.tls.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => p.received.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
    }

    fn send(&mut self, p: &mut Peer, bytes: &[u8]) {
        p.tls.writer().write_all(bytes).expect("client write");
        self.exchange(p);
    }

    /// Moves the clock on by `secs` and runs the deadlines, as the driver's timer would.
    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.unix += secs;
        self.core.handle_timeout(self.now, self.unix);
    }

    /// Waits (with a deadline) for the store worker's answer and hands it to the core.
    fn store_answer(&mut self) {
        self.woken
            .recv_timeout(Duration::from_secs(10))
            .expect("the store worker answers within 10 s");
        self.core.handle_wake(self.now, self.unix);
    }

    /// A tunnel connection from the test's origin that has registered [`APP`].
    fn tunnel(&mut self, from: SocketAddr) -> (Peer, OriginSession) {
        let p = self.peer(from, APP, Some(mux::ALPN), true);
        let (p, origin, events) = self.register(p, APP);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, OriginEvent::Registered { hostname } if hostname == APP)),
            "registered: {events:?}"
        );
        (p, origin)
    }

    /// HELLO and REGISTER `hostname` on the tunnel connection `p`: what the edge answered.
    fn register(&mut self, mut p: Peer, hostname: &str) -> (Peer, OriginSession, Vec<OriginEvent>) {
        let mut origin = OriginSession::new(self.now);
        origin.send_hello([9; 16], 0, false);
        origin.send_register(hostname, "ssh://localhost:22");
        self.origin_send(&mut p, &mut origin);
        let events = self.origin_events(&mut p, &mut origin);
        (p, origin, events)
    }

    fn origin_send(&mut self, p: &mut Peer, origin: &mut OriginSession) {
        let mut out = Vec::new();
        while origin.wants_transmit() {
            origin.poll_transmit(&mut out, 64 * 1024);
        }
        self.send(p, &out);
    }

    /// What the edge told the origin so far.
    fn origin_events(&mut self, p: &mut Peer, origin: &mut OriginSession) -> Vec<OriginEvent> {
        self.exchange(p);
        let n = origin
            .handle_input(&p.received, self.now)
            .expect("the edge's frames parse");
        p.received.drain(..n);
        let mut events = Vec::new();
        while let Some(e) = origin.poll_event() {
            events.push(e);
        }
        events
    }
}

/// A WebSocket upgrade for `host` with `headers` (credentials).
fn upgrade(host: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// The status code of the HTTP response in `received`.
fn status(received: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(received);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"))
}

fn body_of(received: &[u8]) -> String {
    let text = String::from_utf8_lossy(received);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

impl Pipe {
    fn token_headers(&self) -> [(&'static str, String); 2] {
        [
            ("cf-access-client-id", self.token.0.clone()),
            ("cf-access-client-secret", self.token.1.clone()),
        ]
    }

    /// A carrier to [`APP`] with the service token, streaming through a tunnel.
    fn streaming_carrier(&mut self, from: SocketAddr) -> Peer {
        let mut c = self.carrier(from, APP);
        let [(a, x), (b, y)] = self.token_headers();
        self.send(&mut c, &upgrade(APP, &[(a, &x), (b, &y)]));
        assert_eq!(status(&c.received), 101, "{}", body_of(&c.received));
        c.received.clear();
        c
    }
}

// ------------------------------------------------------------------------- refusals

#[test]
fn a_carrier_without_credentials_is_refused_401() {
    let mut pipe = Pipe::new();
    let mut c = pipe.carrier(peer_addr(10, 1000), APP);
    pipe.send(&mut c, &upgrade(APP, &[]));
    assert_eq!(status(&c.received), 401);
    assert!(body_of(&c.received).contains("authentication required"));
}

#[test]
fn a_carrier_with_a_wrong_service_token_secret_is_refused_403() {
    let mut pipe = Pipe::new();
    let mut c = pipe.carrier(peer_addr(10, 1000), APP);
    let id = pipe.token.0.clone();
    pipe.send(
        &mut c,
        &upgrade(
            APP,
            &[
                ("cf-access-client-id", &id),
                ("cf-access-client-secret", "not-the-secret"),
            ],
        ),
    );
    assert_eq!(status(&c.received), 403);
    assert!(body_of(&c.received).contains("service token refused"));
}

#[test]
fn a_carrier_with_an_unknown_service_token_is_refused_after_the_store_looked() {
    let mut pipe = Pipe::new();
    let mut c = pipe.carrier(peer_addr(10, 1000), APP);
    pipe.send(
        &mut c,
        &upgrade(
            APP,
            &[
                ("cf-access-client-id", "no-such-id.access"),
                ("cf-access-client-secret", "whatever"),
            ],
        ),
    );
    assert!(c.received.is_empty(), "parked until the store answers");
    pipe.store_answer();
    pipe.exchange(&mut c);
    assert_eq!(status(&c.received), 403);
}

#[test]
fn a_carrier_with_a_bad_app_token_is_refused_401() {
    let mut pipe = Pipe::new();
    let mut c = pipe.carrier(peer_addr(10, 1000), APP);
    pipe.send(
        &mut c,
        &upgrade(APP, &[("cf-access-token", "eyJhbGciOiJub25lIn0.e30.")]),
    );
    assert_eq!(status(&c.received), 401);
    assert!(body_of(&c.received).contains("app token refused"));
}

#[test]
fn an_app_token_issued_before_its_users_sessions_were_killed_is_refused_401() {
    let mut pipe = Pipe::new();
    let app = pipe
        .core
        .settings
        .application(LOCKED)
        .cloned()
        .expect("LOCKED");
    let exp = pipe.core.unix + 3600;
    let token_for = |pipe: &Pipe, email: &str| {
        let who = crate::proto::policy::Identity {
            email: Some(email.into()),
            ..Default::default()
        };
        pipe.core.app_token(&app, &who, exp)
    };
    // A carrier's upgrade with `token`, from a port of its own: what came back.
    let upgrade_with = |pipe: &mut Pipe, port: u16, token: &str| {
        let mut c = pipe.carrier(peer_addr(10, port), LOCKED);
        pipe.send(&mut c, &upgrade(LOCKED, &[("cf-access-token", token)]));
        c.received
    };
    let alice = token_for(&pipe, "alice@example.com");
    let got = upgrade_with(&mut pipe, 1000, &alice);
    assert_ne!(status(&got), 401, "the token is good before the kill");
    // `sessions kill --email alice@example.com` in the zone, now.
    let zone = pipe
        .core
        .settings
        .zone_of(LOCKED)
        .expect("a zone")
        .to_owned();
    let now = pipe.core.unix;
    pipe.core
        .tokens
        .revoke_zone_sessions(&zone, "alice@example.com", now);
    let got = upgrade_with(&mut pipe, 1001, &alice);
    assert_eq!(status(&got), 401);
    assert!(body_of(&got).contains("sessions were ended"));
    // Someone else's token is not touched.
    let bob = token_for(&pipe, "bob@example.com");
    let got = upgrade_with(&mut pipe, 1002, &bob);
    assert_ne!(status(&got), 401, "bob's token still authenticates");
}

#[test]
fn a_carrier_the_policy_denies_is_refused_403() {
    let mut pipe = Pipe::new();
    let mut c = pipe.carrier(peer_addr(10, 1000), LOCKED);
    let [(a, x), (b, y)] = pipe.token_headers();
    pipe.send(&mut c, &upgrade(LOCKED, &[(a, &x), (b, &y)]));
    assert_eq!(status(&c.received), 403);
    let body = body_of(&c.received);
    assert!(body.contains("service token ci is not allowed"), "{body}");
}

#[test]
fn a_host_header_other_than_the_tls_name_is_refused_421() {
    let mut pipe = Pipe::new();
    let mut c = pipe.carrier(peer_addr(10, 1000), APP);
    pipe.send(&mut c, &upgrade("other.localhost", &[]));
    assert_eq!(status(&c.received), 421);
}

#[test]
fn a_hostname_without_an_application_is_refused_404() {
    let mut pipe = Pipe::with(|s| s.applications.retain(|a| a.hostname == APP));
    let mut c = pipe.carrier(peer_addr(10, 1000), "other.localhost");
    pipe.send(&mut c, &upgrade("other.localhost", &[]));
    assert_eq!(status(&c.received), 404);
    assert!(body_of(&c.received).contains("no application for other.localhost"));
    assert_eq!(step_of(&c.received), "application");
}

/// The `step` of a JSON refusal: which hop refused, for `postern access doctor`.
fn step_of(received: &[u8]) -> String {
    let body = body_of(received);
    let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON refusal");
    v["step"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_refusal_names_the_hop_that_refused_for_programs() {
    let mut pipe = Pipe::new();
    // No credentials: the token hop.
    let mut c = pipe.carrier(peer_addr(10, 1001), APP);
    pipe.send(&mut c, &upgrade(APP, &[]));
    assert_eq!(
        (status(&c.received), step_of(&c.received).as_str()),
        (401, "token")
    );
    // A wrong service token secret: the token hop too, though it is a 403.
    let mut c = pipe.carrier(peer_addr(10, 1002), APP);
    let [(a, x), (b, _)] = pipe.token_headers();
    pipe.send(&mut c, &upgrade(APP, &[(a, &x), (b, "wrong-secret")]));
    assert_eq!(
        (status(&c.received), step_of(&c.received).as_str()),
        (403, "token")
    );
    // Allowed, but no tunnel: the tunnel hop.
    let mut c = pipe.carrier(peer_addr(10, 1003), APP);
    let [(a, x), (b, y)] = pipe.token_headers();
    pipe.send(&mut c, &upgrade(APP, &[(a, &x), (b, &y)]));
    assert_eq!(
        (status(&c.received), step_of(&c.received).as_str()),
        (404, "tunnel")
    );
}

#[test]
fn a_hostname_no_tunnel_registered_is_refused_404() {
    let mut pipe = Pipe::new();
    let mut c = pipe.carrier(peer_addr(10, 1000), APP);
    let [(a, x), (b, y)] = pipe.token_headers();
    pipe.send(&mut c, &upgrade(APP, &[(a, &x), (b, &y)]));
    assert_eq!(status(&c.received), 404);
    assert!(body_of(&c.received).contains("not registered by any tunnel"));
}

#[test]
fn a_refused_carrier_is_closed_once_the_refusal_is_sent() {
    let mut pipe = Pipe::new();
    let mut c = pipe.carrier(peer_addr(10, 1000), APP);
    pipe.send(&mut c, &upgrade(APP, &[]));
    assert_eq!(status(&c.received), 401);
    // Sent, then the edge's FIN; it reads on (lingers) until the client's.
    assert!(c.wire.edge_finished() && !c.wire.dropped());
    // The client's close_notify and FIN after reading the answer end it, with no timer.
    c.tls.send_close_notify();
    pipe.exchange(&mut c);
    c.wire.0.lock().unwrap().peer_eof = true;
    pipe.exchange(&mut c);
    assert!(c.wire.dropped(), "the connection is over");
}

/// Bytes a client that keeps writing sends after the edge's Close (no frame: never parsed).
fn keep_writing(c: &Peer, n: usize) {
    c.wire
        .0
        .lock()
        .unwrap()
        .to_edge
        .extend(std::iter::repeat_n(0x17, n));
}

#[test]
fn a_closed_carrier_lingers_reading_what_the_client_still_sends_in_bounded_passes() {
    use crate::limits::{LINGER, LINGER_DISCARD_PER_TURN};
    let mut pipe = Pipe::new();
    pipe.limits().idle_timeout_secs = 5;
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    let mut c = pipe.streaming_carrier(peer_addr(10, 1));
    pipe.origin_events(&mut t, &mut origin);
    // The edge ends the carrier on purpose (idle: a trigger the test controls).
    pipe.advance(5);
    pipe.exchange(&mut c);
    assert_eq!(close_of(&c.received).0, ws::close::POLICY);
    // The Close and close_notify went out, then the FIN: the connection is still open,
    // and it counts against the limits as any other.
    assert!(c.wire.edge_finished() && !c.wire.dropped());
    assert!(c.tls.process_new_packets().unwrap().peer_has_closed());
    assert_eq!(pipe.core.per_ip.get(&peer_addr(10, 1).ip()), Some(&1));

    // What the client sends is read and discarded, one bounded batch per pass; a pass
    // that stopped at the bound asks for the next one at once.
    keep_writing(&c, 3 * LINGER_DISCARD_PER_TURN);
    let before = c.wire.0.lock().unwrap().to_edge.len();
    pipe.core.handle_ready(c.slot);
    pipe.core.process(pipe.now, pipe.unix);
    let after = c.wire.0.lock().unwrap().to_edge.len();
    assert!(
        before - after <= LINGER_DISCARD_PER_TURN + TLS_READ_STAGE,
        "one pass read {} bytes",
        before - after
    );
    assert_eq!(pipe.core.poll_timeout(), pipe.now, "the next pass at once");
    for _ in 0..8 {
        pipe.core.process(pipe.now, pipe.unix);
    }
    assert!(
        c.wire.0.lock().unwrap().to_edge.is_empty(),
        "all of it read"
    );
    assert!(
        pipe.core.poll_timeout() > pipe.now,
        "then it waits for readiness"
    );
    assert!(!c.wire.dropped());

    // A client that never stops sending (nor closes) is cut at the linger deadline.
    let secs = LINGER.as_secs();
    pipe.advance(secs - 1);
    keep_writing(&c, 1000);
    pipe.exchange(&mut c);
    assert!(!c.wire.dropped());
    pipe.advance(1);
    assert!(c.wire.dropped(), "closed {secs} s after the FIN");
    assert_eq!(pipe.core.per_ip.get(&peer_addr(10, 1).ip()), None);
}

// ------------------------------------------------------------------------- registration

/// The ERROR code the edge answered a REGISTER with, if it did.
fn refused_with(events: &[OriginEvent]) -> Option<mux::ErrorCode> {
    events.iter().find_map(|e| match e {
        OriginEvent::Error { code, .. } => Some(*code),
        _ => None,
    })
}

#[test]
fn a_register_outside_the_edges_zones_is_refused() {
    let mut pipe = Pipe::new();
    let p = pipe.peer(peer_addr(50, 1), APP, Some(mux::ALPN), true);
    let (p, _, events) = pipe.register(p, "ssh.example.com");
    assert_eq!(
        refused_with(&events),
        Some(refusal::NOT_COVERED),
        "{events:?}"
    );
    // The ERROR, close_notify, then the FIN: the edge reads on until the origin's EOF, so
    // frames the origin sent meanwhile cannot turn the close into a reset.
    assert!(p.wire.edge_finished(), "closed after the ERROR");
    assert!(!p.wire.dropped(), "lingering");
    p.wire.0.lock().unwrap().to_edge.extend([0x17; 4096]);
    pipe.core.handle_ready(p.slot);
    pipe.core.process(pipe.now, pipe.unix);
    assert!(
        p.wire.0.lock().unwrap().to_edge.is_empty(),
        "read and discarded"
    );
    p.wire.0.lock().unwrap().peer_eof = true;
    pipe.core.handle_ready(p.slot);
    pipe.core.process(pipe.now, pipe.unix);
    assert!(p.wire.dropped(), "ended at the origin's EOF");
}

#[test]
fn a_refused_tunnel_that_never_closes_is_cut_at_the_linger_deadline() {
    let mut pipe = Pipe::new();
    let p = pipe.peer(peer_addr(50, 1), APP, Some(mux::ALPN), true);
    let (p, _, events) = pipe.register(p, "ssh.example.com");
    assert!(refused_with(&events).is_some(), "{events:?}");
    assert!(p.wire.edge_finished() && !p.wire.dropped());
    pipe.advance(crate::limits::LINGER.as_secs() - 1);
    assert!(!p.wire.dropped());
    pipe.advance(1);
    assert!(p.wire.dropped());
}

#[test]
fn a_register_for_a_hostname_another_certificate_holds_is_refused() {
    let mut pipe = Pipe::new();
    let other = pipe
        .core
        .settings
        .origin_ca
        .issue_origin("localhost")
        .expect("certificate");
    let p = pipe.peer_with(peer_addr(50, 1), APP, Some(mux::ALPN), Some(&other));
    let (_, _, events) = pipe.register(p, APP);
    assert_eq!(refused_with(&events), Some(refusal::OWNED), "{events:?}");
}

#[test]
fn a_register_without_an_application_is_refused() {
    let mut pipe = Pipe::with(|s| s.applications.retain(|a| a.hostname == APP));
    let p = pipe.peer(peer_addr(50, 1), APP, Some(mux::ALPN), true);
    let (_, _, events) = pipe.register(p, "other.localhost");
    assert_eq!(
        refused_with(&events),
        Some(refusal::NO_APPLICATION),
        "{events:?}"
    );
}

#[test]
fn a_new_hostname_is_registered_once_the_store_recorded_the_claim() {
    let mut pipe = Pipe::new();
    let p = pipe.peer(peer_addr(50, 1), APP, Some(mux::ALPN), true);
    let (mut p, mut origin, events) = pipe.register(p, "new.localhost");
    assert!(
        events.is_empty(),
        "nothing before the claim is stored: {events:?}"
    );
    pipe.store_answer();
    let events = pipe.origin_events(&mut p, &mut origin);
    assert!(
        events.iter().any(
            |e| matches!(e, OriginEvent::Registered { hostname } if hostname == "new.localhost")
        ),
        "{events:?}"
    );
    // A second REGISTER on the same connection is refused.
    origin.send_register(APP, "ssh://localhost:22");
    pipe.origin_send(&mut p, &mut origin);
    let events = pipe.origin_events(&mut p, &mut origin);
    assert_eq!(
        refused_with(&events),
        Some(refusal::BAD_HOSTNAME),
        "{events:?}"
    );
}

impl Pipe {
    /// A carrier to `host` with a service token created while the edge runs (its view does
    /// not hold it: the request waits for the store's lookup); and the token's client id.
    fn late_token_carrier(&mut self, host: &str) -> (Peer, String) {
        let (id, secret) =
            crate::store::ServiceTokens::create(&self.core.settings.state, "late", None).unwrap();
        let mut c = self.carrier(peer_addr(10, 1), host);
        let headers = [
            ("cf-access-client-id", id.as_str()),
            ("cf-access-client-secret", secret.expose()),
        ];
        self.send(&mut c, &upgrade(host, &headers));
        (c, id)
    }
}

/// `--workers 2`: when a tunnel's claim and a carrier's token lookup are answered in one
/// batch, the carrier is routed to the tunnel (and its stream opened) while the tunnel is still
/// on loop 0, about to move. It stays there with its stream: moved, it would take along a
/// stream that names a slot of loop 0.
#[test]
fn with_two_loops_a_tunnel_that_got_a_stream_before_it_moved_stays_with_it() {
    let mut pipe = Pipe::with_two_loops();
    pipe.hold_store = true;
    const NEW: &str = "new.localhost";
    let p = pipe.peer(peer_addr(50, 1), APP, Some(mux::ALPN), true);
    let (mut t, mut origin, events) = pipe.register(p, NEW);
    assert!(
        events.is_empty(),
        "the claim waits for the store: {events:?}"
    );
    let (mut c, _) = pipe.late_token_carrier(NEW);
    assert!(c.received.is_empty(), "parked for the lookup");
    // Both answers in: two batches (two wake-ups), or one batch (no second wake-up).
    pipe.woken
        .recv_timeout(Duration::from_secs(10))
        .expect("the store answers");
    let _ = pipe.woken.recv_timeout(Duration::from_secs(2));
    pipe.core.handle_wake(pipe.now, pipe.unix);
    pipe.hold_store = false;
    pipe.exchange(&mut c);
    assert_eq!(status(&c.received), 101, "{}", body_of(&c.received));
    assert!(
        matches!(pipe.core.conns[t.slot], Some(Conn::Tunnel(_))),
        "the tunnel stays on loop 0 with its stream"
    );
    assert!(matches!(pipe.core.conns[c.slot], Some(Conn::Carrier(_))));
    let stream = opened_stream(&pipe.origin_events(&mut t, &mut origin));
    c.received.clear();
    let mut frame = Vec::new();
    ws::encode_frame(&mut frame, ws::BINARY, b"still here", Some([1, 2, 3, 4]));
    pipe.send(&mut c, &frame);
    pipe.origin_events(&mut t, &mut origin);
    assert_eq!(origin.readable(stream), b"still here");
    // The next tunnel connection goes to the quieter loop.
    let (next, _) = pipe.tunnel(peer_addr(50, 2));
    assert!(matches!(pipe.core.conns[next.slot], Some(Conn::Away(_))));
}

/// `--workers 2`: a carrier let in and routed to a tunnel on loop 1 whose token is revoked in
/// the same round of store reports (the revocation found by the store's poll after the lookup
/// answered, both handed over at one wake-up) is ended on loop 0: it never moves there, and
/// its stream is never opened.
#[test]
fn with_two_loops_a_session_revoked_on_its_way_to_its_loop_never_starts() {
    let mut pipe = Pipe::with_two_loops();
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    assert!(matches!(pipe.core.conns[t.slot], Some(Conn::Away(_))));
    pipe.hold_store = true;
    let (mut c, id) = pipe.late_token_carrier(APP);
    pipe.woken
        .recv_timeout(Duration::from_secs(10))
        .expect("the lookup is answered");
    FileStore::open(&pipe.core.settings.state)
        .expect("store")
        .revoke(Revocation::ServiceToken {
            client_id: id.clone(),
            reason: "test".into(),
        })
        .expect("revoke");
    pipe.woken
        .recv_timeout(Duration::from_secs(10))
        .expect("the store's poll finds the revocation");
    pipe.core.handle_wake(pipe.now, pipe.unix);
    pipe.hold_store = false;
    pipe.exchange(&mut c);
    assert_eq!(status(&c.received), 403, "{}", body_of(&c.received));
    assert!(
        body_of(&c.received).contains("service token revoked"),
        "{}",
        body_of(&c.received)
    );
    assert!(
        matches!(pipe.core.conns[c.slot], Some(Conn::Carrier(_))),
        "it stayed on loop 0"
    );
    let events = pipe.origin_events(&mut t, &mut origin);
    assert!(
        !events.iter().any(|e| matches!(e, OriginEvent::Open { .. })),
        "no stream opened: {events:?}"
    );
}

// ------------------------------------------------------------------------- limits

#[test]
fn connections_per_source_are_capped_at_accept() {
    let mut pipe = Pipe::new();
    pipe.limits().max_connections_per_ip = 2;
    let a = pipe.connect(peer_addr(20, 1)).expect("first");
    let _b = pipe.connect(peer_addr(20, 2)).expect("second");
    assert!(
        pipe.connect(peer_addr(20, 3)).is_none(),
        "third from one IP"
    );
    assert!(
        pipe.connect(peer_addr(21, 1)).is_some(),
        "another IP is not affected"
    );
    assert_eq!(pipe.core.counters.connections_per_ip, 1);
    // A connection that ends gives its share back.
    drop(a);
    pipe.advance(crate::limits::EdgeLimits::default().handshake_timeout_secs + 1);
    assert!(pipe.connect(peer_addr(20, 4)).is_some());
}

#[test]
fn connections_in_total_are_capped_at_accept() {
    let mut pipe = Pipe::new();
    pipe.limits().max_connections = 3;
    for i in 0..3 {
        assert!(pipe.connect(peer_addr(30 + i, 1)).is_some());
    }
    assert!(pipe.connect(peer_addr(40, 1)).is_none());
    assert_eq!(pipe.core.counters.connections, 1);
    assert_eq!(pipe.core.counters.connections_per_ip, 0);
}

#[test]
fn streams_per_tunnel_are_capped_with_503() {
    let mut pipe = Pipe::new();
    pipe.limits().max_streams_per_tunnel = 1;
    let (_t, _origin) = pipe.tunnel(peer_addr(50, 1));
    let _first = pipe.streaming_carrier(peer_addr(10, 1));
    let mut second = pipe.carrier(peer_addr(10, 2), APP);
    let [(a, x), (b, y)] = pipe.token_headers();
    pipe.send(&mut second, &upgrade(APP, &[(a, &x), (b, &y)]));
    assert_eq!(status(&second.received), 503);
    assert_eq!(pipe.core.counters.streams, 1);
}

#[test]
fn login_requests_over_the_rate_get_429() {
    let mut pipe = Pipe::new();
    pipe.limits().login_attempts_per_minute = 2;
    let get = format!("GET /cdn-cgi/access/cli?id=x HTTP/1.1\r\nHost: {APP}\r\n\r\n");
    let mut statuses = Vec::new();
    for port in 0..3 {
        let mut c = pipe.carrier(peer_addr(60, port), APP);
        pipe.send(&mut c, get.as_bytes());
        statuses.push(status(&c.received));
    }
    assert_ne!(statuses[0], 429);
    assert_ne!(statuses[1], 429);
    assert_eq!(statuses[2], 429);
    assert_eq!(pipe.core.counters.login_rate, 1);
    // A minute later the source may try again.
    pipe.advance(61);
    let mut c = pipe.carrier(peer_addr(60, 9), APP);
    pipe.send(&mut c, get.as_bytes());
    assert_ne!(status(&c.received), 429);
}

// ------------------------------------------------------------------------- bad input

#[test]
fn a_bad_frame_from_a_tunnel_ends_that_tunnel_only() {
    let mut pipe = Pipe::new();
    let (mut bad, _) = pipe.tunnel(peer_addr(50, 1));
    let (good, _good_origin) = pipe.tunnel(peer_addr(51, 1));
    // A frame header of an unknown type, with a payload length over the limit.
    pipe.send(&mut bad, &[0xee, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
    assert!(
        bad.wire.edge_finished(),
        "the offending tunnel connection is closed"
    );
    assert!(!good.wire.edge_finished(), "the other one is not");
    // Carriers still reach the hostname, through the other connection.
    let _c = pipe.streaming_carrier(peer_addr(10, 1));
}

#[test]
fn garbage_instead_of_a_request_head_is_refused_400() {
    let mut pipe = Pipe::new();
    let mut c = pipe.carrier(peer_addr(10, 1000), APP);
    pipe.send(&mut c, b"\x00\x01\x02 not http\r\n\r\n");
    assert_eq!(status(&c.received), 400);
}

/// The stream the edge opened toward the origin, among `events`.
fn opened_stream(events: &[OriginEvent]) -> u32 {
    events
        .iter()
        .find_map(|e| match e {
            OriginEvent::Open { stream, .. } => Some(*stream),
            _ => None,
        })
        .expect("OPEN")
}

#[test]
fn a_masked_frame_error_from_the_client_closes_its_carrier_and_resets_its_stream() {
    let mut pipe = Pipe::new();
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    let mut c = pipe.streaming_carrier(peer_addr(10, 1));
    let stream = opened_stream(&pipe.origin_events(&mut t, &mut origin));
    // Client frames must be masked: an unmasked one is a protocol error.
    pipe.send(&mut c, &[0x82, 0x03, b'a', b'b', b'c']);
    assert_eq!(c.received.first(), Some(&0x88), "a Close frame");
    let events = pipe.origin_events(&mut t, &mut origin);
    assert!(
        events.iter().any(
            |e| matches!(e, OriginEvent::Stream(StreamEvent::Reset { stream: s, .. }) if *s == stream)
        ),
        "{events:?}"
    );
    assert!(!t.wire.dropped(), "the tunnel goes on");
}

/// A client whose reader went away says GOING_AWAY: the stream ends both ways (the origin
/// gets a RESET, and closes its service connection), where a normal Close would only
/// half-close it and the origin would go on sending for nobody.
#[test]
fn a_client_going_away_resets_its_stream_where_a_normal_close_half_closes_it() {
    let mut pipe = Pipe::new();
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    for (code, reset) in [(ws::close::NORMAL, false), (ws::close::GOING_AWAY, true)] {
        let mut c = pipe.streaming_carrier(peer_addr(10, 1));
        let stream = opened_stream(&pipe.origin_events(&mut t, &mut origin));
        let mut close = Vec::new();
        ws::encode_close(&mut close, code, "", Some([1, 2, 3, 4]));
        pipe.send(&mut c, &close);
        let events = pipe.origin_events(&mut t, &mut origin);
        let was_reset = events.iter().any(
            |e| matches!(e, OriginEvent::Stream(StreamEvent::Reset { stream: s, .. }) if *s == stream),
        );
        assert_eq!(was_reset, reset, "Close {code}: {events:?}");
        if reset {
            assert_eq!(
                close_of(&c.received).0,
                ws::close::NORMAL,
                "the edge's Close"
            );
        }
    }
    assert!(!t.wire.dropped(), "the tunnel goes on");
}

/// `--workers 2`: a registered tunnel connection goes to the quieter loop, a carrier routed to
/// it follows it there, bytes flow both ways on that loop, and loop 0 still lists the session
/// (with its byte counts), kills it, and frees its stub once it has ended there.
#[test]
fn with_two_loops_a_tunnel_and_its_carriers_move_and_loop_0_still_lists_and_kills() {
    let mut pipe = Pipe::with_two_loops();
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    let away = |pipe: &Pipe, slot: usize| matches!(pipe.core.conns[slot], Some(Conn::Away(_)));
    assert!(away(&pipe, t.slot), "the tunnel left loop 0");
    let on_second = |pipe: &Pipe| {
        let w = pipe.second.as_ref().expect("loop 1");
        let tunnels = w
            .conns
            .iter()
            .flatten()
            .filter(|c| matches!(c, Conn::Tunnel(_)));
        let carriers = w
            .conns
            .iter()
            .flatten()
            .filter(|c| matches!(c, Conn::Carrier(_)));
        (tunnels.count(), carriers.count())
    };
    assert_eq!(on_second(&pipe), (1, 0));

    let mut c = pipe.streaming_carrier(peer_addr(10, 1));
    assert!(away(&pipe, c.slot), "the carrier followed its tunnel");
    assert_eq!(on_second(&pipe), (1, 1));
    let stream = opened_stream(&pipe.origin_events(&mut t, &mut origin));
    let mut frame = Vec::new();
    ws::encode_frame(&mut frame, ws::BINARY, b"hello origin", Some([1, 2, 3, 4]));
    pipe.send(&mut c, &frame);
    pipe.origin_events(&mut t, &mut origin);
    assert_eq!(origin.readable(stream), b"hello origin");
    origin.write(stream, b"hello client");
    pipe.origin_send(&mut t, &mut origin);
    pipe.exchange(&mut c);
    assert!(
        c.received.ends_with(b"hello client"),
        "{:?}",
        String::from_utf8_lossy(&c.received)
    );
    c.received.clear();

    let list = pipe.core.list_sessions(None);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["bytes_up"], 12);
    assert_eq!(list[0]["bytes_down"], 12);
    let id = list[0]["id"].as_str().expect("id").to_owned();
    let killed = pipe
        .core
        .kill_sessions(&sessions::Selector::Id(id.clone()), None);
    assert_eq!(killed, [id]);
    pipe.exchange(&mut c);
    assert_eq!(close_of(&c.received).0, ws::close::POLICY);
    let events = pipe.origin_events(&mut t, &mut origin);
    assert!(
        events.iter().any(
            |e| matches!(e, OriginEvent::Stream(StreamEvent::Reset { stream: s, .. }) if *s == stream)
        ),
        "{events:?}"
    );
    // The client answers the Close and leaves: the carrier ends on loop 1, its stub on loop 0.
    let mut close = Vec::new();
    ws::encode_close(&mut close, ws::close::NORMAL, "", Some([1, 2, 3, 4]));
    pipe.send(&mut c, &close);
    c.wire.0.lock().unwrap().peer_eof = true;
    pipe.exchange(&mut c);
    assert!(c.wire.dropped(), "the carrier ended on loop 1");
    assert_eq!(on_second(&pipe), (1, 0));
    assert!(
        pipe.core.conns[c.slot].is_none(),
        "its stub on loop 0 is free"
    );
    assert!(pipe.core.list_sessions(None).is_empty());

    // The origin leaves: loop 0 forgets the route.
    t.wire.0.lock().unwrap().peer_eof = true;
    pipe.exchange(&mut t);
    assert!(
        pipe.core.conns[t.slot].is_none(),
        "the tunnel's stub is free"
    );
    assert!(pipe.core.routes.is_empty(), "{:?}", pipe.core.routes);
    let mut late = pipe.carrier(peer_addr(10, 2), APP);
    let [(a, x), (b, y)] = pipe.token_headers();
    pipe.send(&mut late, &upgrade(APP, &[(a, &x), (b, &y)]));
    assert_eq!(status(&late.received), 404);
}

/// A bulk upload whose carrier and tunnel both always have more to do (the client's bytes
/// queued, the origin's credit granted) gets one run of each per pass of the loop, not the
/// whole transfer: the loop polls its other sockets and runs its deadlines in between, and
/// the tunnel's keepalive is judged by a clock that moves.
#[test]
fn a_bulk_stream_does_not_keep_a_pass_of_the_loop_to_itself() {
    let mut pipe = Pipe::new();
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    let mut c = pipe.streaming_carrier(peer_addr(10, 1));
    let stream = opened_stream(&pipe.origin_events(&mut t, &mut origin));
    // The origin grants the most credit a stream may hold: 16 windows.
    let mut credit = Vec::new();
    mux::encode(
        &mut credit,
        &mux::Frame::Window {
            stream,
            credit: 15 * crate::limits::INITIAL_STREAM_WINDOW,
            consumed: 0,
        },
    );
    pipe.send(&mut t, &credit);
    // The client has 4 MiB of frames on their way to the edge, all in its socket.
    let chunk = vec![0x5a; 64 * 1024];
    c.tls.set_buffer_limit(None);
    for _ in 0..64 {
        let mut frame = Vec::new();
        ws::encode_frame(&mut frame, ws::BINARY, &chunk, Some([1, 2, 3, 4]));
        c.tls.writer().write_all(&frame).expect("client write");
        while c.tls.wants_write() {
            let mut out = Vec::new();
            c.tls.write_tls(&mut out).expect("client write_tls");
            c.wire.0.lock().unwrap().to_edge.extend(out);
        }
    }
    let queued = c.wire.0.lock().unwrap().to_edge.len();
    pipe.core.handle_ready(c.slot);
    pipe.core.process(pipe.now, pipe.unix);
    let taken = queued - c.wire.0.lock().unwrap().to_edge.len();
    let sent = t.wire.0.lock().unwrap().from_edge.len();
    assert!(
        taken <= 1024 * 1024 && sent <= 1024 * 1024,
        "one pass took {taken} bytes from the client and sent {sent} to the origin"
    );
    assert_eq!(pipe.core.poll_timeout(), pipe.now, "the next pass at once");
    // Pass after pass, all of it arrives.
    for _ in 0..200 {
        if pipe.core.poll_timeout() > pipe.now {
            break;
        }
        pipe.core.process(pipe.now, pipe.unix);
    }
    assert!(
        c.wire.0.lock().unwrap().to_edge.is_empty(),
        "the client's bytes all read"
    );
    // (The test's origin session holds one window; count the edge's ciphertext instead.)
    let sent = t.wire.0.lock().unwrap().from_edge.len();
    assert!(sent >= 64 * chunk.len(), "{sent} bytes went to the origin");
}

/// A tunnel and two carriers streaming through it, a bulk one and an interactive one (ssh),
/// with their stream ids: `(tunnel, origin session, bulk, bulk stream, ssh, ssh stream)`.
fn bulk_and_interactive(pipe: &mut Pipe) -> (Peer, OriginSession, Peer, u32, Peer, u32) {
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    let bulk = pipe.streaming_carrier(peer_addr(10, 1));
    let bulk_stream = opened_stream(&pipe.origin_events(&mut t, &mut origin));
    let ssh = pipe.streaming_carrier(peer_addr(10, 2));
    let ssh_stream = opened_stream(&pipe.origin_events(&mut t, &mut origin));
    (t, origin, bulk, bulk_stream, ssh, ssh_stream)
}

/// The origin's frames, all in the tunnel's socket at once.
fn from_origin(t: &mut Peer, frames: &[mux::Frame<'_>]) {
    let mut bytes = Vec::new();
    for f in frames {
        mux::encode(&mut bytes, f);
    }
    t.tls.set_buffer_limit(None);
    t.tls.writer().write_all(&bytes).expect("origin write");
    while t.tls.wants_write() {
        let mut out = Vec::new();
        t.tls.write_tls(&mut out).expect("origin write_tls");
        t.wire.0.lock().unwrap().to_edge.extend(out);
    }
}

/// The driver's yield after a long turn ([`crate::io::yield_after_long_turn`]) asks whether a
/// tunnel connection run in the turn carries more than one stream: a pass over a tunnel with
/// one stream says no, one with two says yes, and so does a turn whose later pass ran no
/// tunnel (the accept retry's second pass once hid the first's); a turn that ran no tunnel
/// says no again.
#[test]
fn a_turn_is_shared_only_when_a_tunnel_it_ran_carries_more_than_one_stream() {
    let mut pipe = Pipe::new();
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    let _bulk = pipe.streaming_carrier(peer_addr(10, 1));
    let bulk_stream = opened_stream(&pipe.origin_events(&mut t, &mut origin));
    let data = |stream, data| mux::Frame::Data { stream, data };
    let chunk = vec![0x5a; 32 * 1024];
    from_origin(&mut t, &[data(bulk_stream, &chunk)]);
    pipe.core.take_shared_turn();
    pipe.core.handle_ready(t.slot);
    pipe.core.process(pipe.now, pipe.unix);
    assert!(
        !pipe.core.take_shared_turn(),
        "one stream: nobody to yield to"
    );
    let _ssh = pipe.streaming_carrier(peer_addr(10, 2));
    let _ssh_stream = opened_stream(&pipe.origin_events(&mut t, &mut origin));
    from_origin(&mut t, &[data(bulk_stream, &chunk)]);
    pipe.core.take_shared_turn();
    pipe.core.handle_ready(t.slot);
    pipe.core.process(pipe.now, pipe.unix);
    pipe.core.process(pipe.now, pipe.unix);
    assert!(
        pipe.core.take_shared_turn(),
        "two streams on the tunnel the turn's first pass ran"
    );
    pipe.core.process(pipe.now, pipe.unix);
    assert!(!pipe.core.take_shared_turn(), "a turn that ran no tunnel");
}

/// A few bytes for one stream (a keystroke's echo) reach its client in the pass that read
/// them: the tunnel connection stops reading for them, and what a bulk stream sent behind
/// them waits for the next pass (docs/design.md §2.8, "Urgent"). The bulk frames the edge
/// read go to their client as they are decrypted, never waiting in the stream's buffer (the
/// cut-through); the keystroke, a few bytes, is not cut through but waits to be sent with
/// whatever follows it in the pass.
#[test]
fn a_few_bytes_for_one_stream_do_not_wait_for_the_bulk_read_behind_them() {
    let mut pipe = Pipe::new();
    let (mut t, _origin, bulk, bulk_stream, mut ssh, ssh_stream) = bulk_and_interactive(&mut pipe);
    // One byte for the interactive stream, then the bulk stream's whole window.
    let data = |stream, data| mux::Frame::Data { stream, data };
    let chunk = vec![0x5a; 64 * 1024];
    let mut frames = vec![data(ssh_stream, b"x")];
    frames.extend((0..4).map(|_| data(bulk_stream, &chunk)));
    from_origin(&mut t, &frames);
    let queued = t.wire.0.lock().unwrap().to_edge.len();
    let before = ssh.wire.0.lock().unwrap().from_edge.len();
    pipe.core.handle_ready(t.slot);
    pipe.core.process(pipe.now, pipe.unix);
    let left = t.wire.0.lock().unwrap().to_edge.len();
    assert!(
        left > 0,
        "the tunnel read all {queued} bytes before the interactive carrier ran"
    );
    assert_eq!(pipe.core.poll_timeout(), pipe.now, "the rest at once");
    assert!(
        ssh.wire.0.lock().unwrap().from_edge.len() > before,
        "the byte went to its client in the pass that read it"
    );
    pipe.exchange(&mut ssh);
    assert!(
        ssh.received.ends_with(b"x"),
        "the byte is out in the first pass"
    );
    // Pass after pass, the bulk stream's window arrives too.
    for _ in 0..20 {
        if pipe.core.poll_timeout() > pipe.now {
            break;
        }
        pipe.core.process(pipe.now, pipe.unix);
    }
    assert!(t.wire.0.lock().unwrap().to_edge.is_empty(), "all read");
    // (Too much for the test client's plaintext buffer: count the edge's ciphertext.)
    let sent = bulk.wire.0.lock().unwrap().from_edge.len();
    assert!(
        sent >= 4 * chunk.len(),
        "{sent} bytes went to the bulk client"
    );
    let Some(Conn::Tunnel(tunnel)) = &pipe.core.conns[t.slot] else {
        panic!("the tunnel is there");
    };
    assert_eq!(
        tunnel.mux.rx_allocated(bulk_stream),
        0,
        "no bulk byte waited in the edge's stream buffer"
    );
    assert!(
        tunnel.mux.rx_allocated(ssh_stream) > 0,
        "the keystroke waited in its stream"
    );
}

/// A client's bulk goes to its tunnel connection as it is decrypted, each WebSocket frame's
/// payload one DATA frame written straight into the connection's TLS, never through the
/// stream's send buffer and a frame batch (the cut-through's way up, `mux::Session::
/// frame_direct`); a keystroke, a few bytes, goes the usual way; the origin reads every byte
/// of both, in order.
#[test]
fn a_clients_bulk_goes_to_its_tunnel_as_it_is_decrypted() {
    let mut pipe = Pipe::new();
    let (mut t, mut origin, mut bulk, bulk_stream, mut ssh, ssh_stream) =
        bulk_and_interactive(&mut pipe);
    let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 32 * 1024]).collect();
    for chunk in &chunks {
        let mut frame = Vec::new();
        ws::encode_frame(&mut frame, ws::BINARY, chunk, Some([1, 2, 3, 4]));
        pipe.send(&mut bulk, &frame);
    }
    let mut key = Vec::new();
    ws::encode_frame(&mut key, ws::BINARY, b"k", Some([5, 6, 7, 8]));
    pipe.send(&mut ssh, &key);
    let events = pipe.origin_events(&mut t, &mut origin);
    assert!(events
        .iter()
        .all(|e| !matches!(e, OriginEvent::Stream(StreamEvent::Reset { .. }))));
    assert_eq!(
        origin.readable(bulk_stream),
        chunks.concat(),
        "every byte, in order"
    );
    assert_eq!(origin.readable(ssh_stream), b"k");
    let Some(Conn::Tunnel(tunnel)) = &pipe.core.conns[t.slot] else {
        panic!("the tunnel is there");
    };
    assert_eq!(
        tunnel.mux.tx_allocated(bulk_stream),
        0,
        "no bulk byte waited in the edge's stream buffer"
    );
    assert!(
        tunnel.mux.tx_allocated(ssh_stream) > 0,
        "the keystroke went through its stream"
    );
}

/// An origin that does not read takes at most one of a client's frames cut through
/// (`can_send`): the rest waits in the stream's send buffer, which bounds it, and then at the
/// client. Without the check, every frame the stream's credit allowed would be encrypted into
/// rustls's unbounded buffer.
#[test]
fn an_origin_that_does_not_read_gets_nothing_more_cut_through() {
    let mut pipe = Pipe::new();
    let (t, _origin, mut bulk, bulk_stream, _ssh, _) = bulk_and_interactive(&mut pipe);
    t.wire.0.lock().unwrap().full = true;
    let chunk = vec![0x5a; 32 * 1024];
    for _ in 0..8 {
        let mut frame = Vec::new();
        ws::encode_frame(&mut frame, ws::BINARY, &chunk, Some([1, 2, 3, 4]));
        pipe.send(&mut bulk, &frame);
    }
    let Some(Conn::Tunnel(tunnel)) = &mut pipe.core.conns[t.slot] else {
        panic!("the tunnel is there");
    };
    assert_eq!(
        tunnel.mux.writable(bulk_stream),
        0,
        "the stream's send buffer holds what the origin did not take"
    );
    // (The origin reads nothing, so it granted nothing past the protocol's initial window.)
    let spent = crate::limits::INITIAL_STREAM_WINDOW - tunnel.mux.send_credit(bulk_stream);
    assert!(
        spent as usize <= chunk.len(),
        "{spent} bytes framed for an origin that reads nothing"
    );
}

/// A client that does not read takes at most one frame cut through (`can_send`): the rest
/// waits in its stream, where the window bounds it, and earns the origin no credit. Without
/// the check, every frame would be encrypted into rustls's unbounded buffer and credited.
#[test]
fn a_client_that_does_not_read_gets_nothing_more_cut_through() {
    let mut pipe = Pipe::new();
    let (mut t, _origin, bulk, bulk_stream, _ssh, _) = bulk_and_interactive(&mut pipe);
    bulk.wire.0.lock().unwrap().full = true;
    let chunk = vec![0x5a; 64 * 1024];
    let frames: Vec<_> = (0..4)
        .map(|_| mux::Frame::Data {
            stream: bulk_stream,
            data: &chunk,
        })
        .collect();
    from_origin(&mut t, &frames);
    pipe.core.handle_ready(t.slot);
    for _ in 0..20 {
        pipe.core.process(pipe.now, pipe.unix);
        if pipe.core.poll_timeout() > pipe.now {
            break;
        }
    }
    assert!(t.wire.0.lock().unwrap().to_edge.is_empty(), "all read");
    let Some(Conn::Tunnel(tunnel)) = &pipe.core.conns[t.slot] else {
        panic!("the tunnel is there");
    };
    let waiting = tunnel.mux.readable(bulk_stream).len();
    let consumed = tunnel.mux.consumed(bulk_stream);
    assert!(
        waiting >= 3 * chunk.len() && consumed <= chunk.len() as u64,
        "{waiting} bytes wait in the stream, {consumed} taken"
    );
}

/// The tunnel that stopped reading for a few bytes runs again at once, on its own. Here no
/// carrier can send (both clients read nothing, and each carrier holds unsent bytes already),
/// so no carrier's progress wakes the tunnel, and the rest of what the origin sent would wait
/// in its socket for the next tick.
#[test]
fn a_tunnel_that_stopped_for_a_few_bytes_reads_the_rest_though_nothing_else_wakes_it() {
    let mut pipe = Pipe::new();
    let (mut t, _origin, bulk, bulk_stream, mut ssh, ssh_stream) = bulk_and_interactive(&mut pipe);
    let data = |stream, data| mux::Frame::Data { stream, data };
    // Both clients stop reading, and each carrier is left with bytes it could not send.
    bulk.wire.0.lock().unwrap().full = true;
    ssh.wire.0.lock().unwrap().full = true;
    from_origin(&mut t, &[data(ssh_stream, b"a"), data(bulk_stream, b"a")]);
    pipe.core.handle_ready(t.slot);
    for _ in 0..20 {
        pipe.core.process(pipe.now, pipe.unix);
        if pipe.core.poll_timeout() > pipe.now {
            break;
        }
    }
    assert!(t.wire.0.lock().unwrap().to_edge.is_empty());
    // One byte for the interactive stream, then the bulk stream's window.
    let chunk = vec![0x5a; 64 * 1024];
    let mut frames = vec![data(ssh_stream, b"x")];
    frames.extend((0..3).map(|_| data(bulk_stream, &chunk)));
    from_origin(&mut t, &frames);
    pipe.core.handle_ready(t.slot);
    pipe.core.process(pipe.now, pipe.unix);
    assert!(
        !t.wire.0.lock().unwrap().to_edge.is_empty(),
        "the tunnel stopped for the interactive byte"
    );
    for pass in 0..20 {
        if t.wire.0.lock().unwrap().to_edge.is_empty() {
            break;
        }
        assert_eq!(
            pipe.core.poll_timeout(),
            pipe.now,
            "pass {pass}: bytes wait in the tunnel's socket and no pass is due"
        );
        pipe.core.process(pipe.now, pipe.unix);
    }
    assert!(t.wire.0.lock().unwrap().to_edge.is_empty(), "all read");
    // The interactive client reads again: its bytes are all there.
    ssh.wire.0.lock().unwrap().full = false;
    pipe.core.handle_ready(ssh.slot);
    pipe.core.process(pipe.now, pipe.unix);
    pipe.exchange(&mut ssh);
    // (Two Binary frames, as the carrier sent them.)
    assert!(
        ssh.received.ends_with(&[0x82, 1, b'a', 0x82, 1, b'x']),
        "{:?}",
        ssh.received
    );
    assert!(!t.wire.dropped() && !bulk.wire.dropped());
}

// ------------------------------------------------------------------------- timers

#[test]
fn a_connection_without_a_tls_handshake_is_closed_at_the_deadline() {
    let mut pipe = Pipe::new();
    let secs = pipe.limits().handshake_timeout_secs;
    let (_, wire) = pipe.connect(peer_addr(10, 1)).expect("admitted");
    pipe.advance(secs - 1);
    assert!(!wire.dropped());
    pipe.advance(1);
    assert!(wire.dropped());
    assert_eq!(pipe.core.counters.handshake_timeouts, 1);
}

#[test]
fn a_carrier_without_a_request_is_closed_at_the_deadline() {
    let mut pipe = Pipe::new();
    let secs = pipe.limits().handshake_timeout_secs;
    let c = pipe.carrier(peer_addr(10, 1), APP);
    pipe.advance(secs);
    assert!(c.wire.dropped());
    assert_eq!(pipe.core.counters.handshake_timeouts, 1);
}

#[test]
fn a_tunnel_that_never_registers_is_closed_at_the_deadline() {
    let mut pipe = Pipe::new();
    let secs = pipe.limits().handshake_timeout_secs;
    let t = pipe.peer(peer_addr(50, 1), APP, Some(mux::ALPN), true);
    pipe.advance(secs);
    assert!(t.wire.dropped());
    assert_eq!(pipe.core.counters.handshake_timeouts, 1);
}

#[test]
fn an_idle_carrier_is_closed_with_1008_and_its_stream_reset() {
    let mut pipe = Pipe::new();
    pipe.limits().idle_timeout_secs = 30;
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    let mut c = pipe.streaming_carrier(peer_addr(10, 1));
    pipe.origin_events(&mut t, &mut origin);
    // The tunnel answers its keepalives meanwhile (they are not the carrier's traffic), and
    // the client pings every 2 s as `access ssh` does: pings are not bytes moved.
    for i in 0..29 {
        pipe.advance(1);
        pipe.origin_events(&mut t, &mut origin);
        pipe.origin_send(&mut t, &mut origin);
        if i % 2 == 0 {
            let mut ping = Vec::new();
            ws::encode_frame(&mut ping, ws::PING, b"", Some([1, 2, 3, 4]));
            pipe.send(&mut c, &ping);
            assert_eq!(c.received.first(), Some(&0x8a), "a Pong");
            c.received.clear();
        }
    }
    pipe.exchange(&mut c);
    assert!(c.received.is_empty(), "not idle yet");
    pipe.advance(1);
    pipe.exchange(&mut c);
    assert_eq!(c.received.first(), Some(&0x88), "a Close frame");
    assert_eq!(&c.received[2..4], &ws::close::POLICY.to_be_bytes());
    assert_eq!(pipe.core.counters.idle_timeouts, 1);
    let events = pipe.origin_events(&mut t, &mut origin);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, OriginEvent::Stream(StreamEvent::Reset { .. }))),
        "{events:?}"
    );
}

#[test]
fn a_tunnel_that_stops_answering_keepalives_is_closed() {
    let mut pipe = Pipe::new();
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    let interval = crate::limits::PING_INTERVAL.as_secs();
    let dead = interval * u64::from(crate::limits::PING_DEAD_INTERVALS);
    // The edge pings once an interval; an origin that answers stays.
    for _ in 0..4 {
        pipe.advance(interval);
        pipe.origin_events(&mut t, &mut origin);
        pipe.origin_send(&mut t, &mut origin);
    }
    assert!(!t.wire.dropped());
    // One that goes silent is dead after the dead intervals.
    pipe.advance(dead - 1);
    assert!(!t.wire.dropped());
    pipe.advance(1);
    assert!(t.wire.dropped());
}

#[test]
fn a_carrier_parked_for_the_store_still_meets_its_deadline() {
    let mut pipe = Pipe::new();
    let secs = pipe.limits().handshake_timeout_secs;
    let mut c = pipe.carrier(peer_addr(10, 1000), APP);
    pipe.send(
        &mut c,
        &upgrade(
            APP,
            &[
                ("cf-access-client-id", "no-such-id.access"),
                ("cf-access-client-secret", "whatever"),
            ],
        ),
    );
    pipe.advance(secs);
    assert!(c.wire.dropped());
    // The store's late answer finds the slot's generation changed and is dropped.
    pipe.store_answer();
}

// ------------------------------------------------------------------------- shutdown

#[test]
fn shutdown_sends_goaway_to_tunnels_and_close_notify_to_carriers() {
    let mut pipe = Pipe::new();
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    let mut c = pipe.streaming_carrier(peer_addr(10, 1));
    pipe.origin_events(&mut t, &mut origin);
    pipe.core.shutdown(pipe.now, pipe.unix);
    let events = pipe.origin_events(&mut t, &mut origin);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, OriginEvent::GoAway { .. })),
        "{events:?}"
    );
    pipe.exchange(&mut c);
    let mut rest = Vec::new();
    assert_eq!(
        c.tls
            .reader()
            .read_to_end(&mut rest)
            .map_err(|e| e.kind())
            .ok(),
        Some(0),
        "close_notify"
    );
}

#[test]
fn a_draining_tunnel_gets_no_new_streams() {
    let mut pipe = Pipe::new();
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    origin.send_goaway("origin shutting down");
    pipe.origin_send(&mut t, &mut origin);
    let mut c = pipe.carrier(peer_addr(10, 1), APP);
    let [(a, x), (b, y)] = pipe.token_headers();
    pipe.send(&mut c, &upgrade(APP, &[(a, &x), (b, &y)]));
    assert_eq!(status(&c.received), 404);
}

// ------------------------------------------------------------------------- revocation

/// What a Close frame from the edge says: its code and reason.
fn close_of(received: &[u8]) -> (u16, String) {
    assert_eq!(received.first(), Some(&0x88), "a Close frame: {received:?}");
    let len = (received[1] & 0x7f) as usize;
    let payload = &received[2..2 + len];
    (
        u16::from_be_bytes([payload[0], payload[1]]),
        String::from_utf8_lossy(&payload[2..]).into_owned(),
    )
}

fn error_of(events: &[OriginEvent]) -> Option<(mux::ErrorCode, String)> {
    events.iter().find_map(|e| match e {
        OriginEvent::Error { code, message } => Some((*code, message.clone())),
        _ => None,
    })
}

impl Pipe {
    /// Records `r` as `postern edge … revoke` does (another process writing the state
    /// directory), then waits for the store worker to find it and hands it to the core.
    fn revoke_from_the_cli(&mut self, r: Revocation) {
        FileStore::open(&self.core.settings.state)
            .expect("store")
            .revoke(r)
            .expect("revoke");
        self.store_answer();
    }
}

#[test]
fn revoking_a_service_token_closes_its_open_carriers_only_and_refuses_it_after() {
    revoking_a_service_token_closes_its_open_carriers_only_and_refuses_it_after_on(Pipe::new());
}

/// The same with `--workers 2`: the tunnel and the carriers are served by loop 1, the
/// revocation reaches loop 0 (`loops.rs`).
#[test]
fn revoking_a_service_token_closes_its_open_carriers_only_and_refuses_it_after_on_two_loops() {
    revoking_a_service_token_closes_its_open_carriers_only_and_refuses_it_after_on(
        Pipe::with_two_loops(),
    );
}

fn revoking_a_service_token_closes_its_open_carriers_only_and_refuses_it_after_on(mut pipe: Pipe) {
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    let mut revoked = pipe.streaming_carrier(peer_addr(10, 1));
    // Another token, created while the edge runs: its carrier must stay open.
    let (other_id, other_secret) =
        crate::store::ServiceTokens::create(&pipe.core.settings.state, "other", None).unwrap();
    let mut other = pipe.carrier(peer_addr(11, 1), APP);
    pipe.send(
        &mut other,
        &upgrade(
            APP,
            &[
                ("cf-access-client-id", &other_id),
                ("cf-access-client-secret", other_secret.expose()),
            ],
        ),
    );
    pipe.store_answer();
    pipe.exchange(&mut other);
    assert_eq!(status(&other.received), 101);
    other.received.clear();
    pipe.origin_events(&mut t, &mut origin);

    pipe.revoke_from_the_cli(Revocation::ServiceToken {
        client_id: pipe.token.0.clone(),
        reason: "test".into(),
    });
    pipe.exchange(&mut revoked);
    assert_eq!(
        close_of(&revoked.received),
        (ws::close::POLICY, "service token revoked".into())
    );
    let events = pipe.origin_events(&mut t, &mut origin);
    let resets = events
        .iter()
        .filter(|e| matches!(e, OriginEvent::Stream(StreamEvent::Reset { .. })))
        .count();
    assert_eq!(resets, 1, "only the revoked token's stream: {events:?}");
    pipe.exchange(&mut other);
    assert!(
        other.received.is_empty(),
        "the other token's carrier goes on"
    );
    assert!(!other.wire.dropped() && !t.wire.dropped());

    let mut again = pipe.carrier(peer_addr(10, 2), APP);
    let [(a, x), (b, y)] = pipe.token_headers();
    pipe.send(&mut again, &upgrade(APP, &[(a, &x), (b, &y)]));
    assert_eq!(status(&again.received), 403);
    assert!(
        body_of(&again.received).contains("service token revoked"),
        "{}",
        body_of(&again.received)
    );
}

#[test]
fn revoking_an_origin_certificate_closes_its_tunnel_and_refuses_it_after() {
    revoking_an_origin_certificate_closes_its_tunnel_and_refuses_it_after_on(Pipe::new());
}

/// The same with `--workers 2`: the tunnel and the carriers are served by loop 1, the
/// revocation reaches loop 0 (`loops.rs`).
#[test]
fn revoking_an_origin_certificate_closes_its_tunnel_and_refuses_it_after_on_two_loops() {
    revoking_an_origin_certificate_closes_its_tunnel_and_refuses_it_after_on(Pipe::with_two_loops());
}

fn revoking_an_origin_certificate_closes_its_tunnel_and_refuses_it_after_on(mut pipe: Pipe) {
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    let fp = crate::pki::fingerprint(&pipe.origin_cert.0);
    pipe.revoke_from_the_cli(Revocation::Certificate {
        sha256: fp,
        serial: None,
        reason: "test".into(),
    });
    let events = pipe.origin_events(&mut t, &mut origin);
    assert_eq!(
        error_of(&events),
        Some((refusal::REVOKED, "origin certificate revoked".into())),
        "{events:?}"
    );
    pipe.exchange(&mut t);
    assert!(t.wire.edge_finished(), "the tunnel connection is closed");
    // Its reconnect: refused as soon as the certificate is seen.
    let p = pipe.peer(peer_addr(50, 2), APP, Some(mux::ALPN), true);
    let (p, _, events) = pipe.register(p, APP);
    let (code, message) = error_of(&events).expect("refused");
    assert_eq!(code, refusal::REVOKED);
    assert!(message.contains("origin certificate revoked"), "{message}");
    assert!(p.wire.edge_finished());
}

#[test]
fn revoking_a_serial_closes_the_tunnels_of_the_certificate_with_it() {
    let mut pipe = Pipe::new();
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    let serial = crate::pki::serial_hex(&pipe.origin_cert.0).expect("serial");
    // Another serial first: nothing happens.
    pipe.revoke_from_the_cli(Revocation::Serial {
        serial: "4242".into(),
        reason: "test".into(),
    });
    assert_eq!(error_of(&pipe.origin_events(&mut t, &mut origin)), None);
    pipe.revoke_from_the_cli(Revocation::Serial {
        serial,
        reason: "test".into(),
    });
    let events = pipe.origin_events(&mut t, &mut origin);
    assert_eq!(
        error_of(&events).map(|(c, _)| c),
        Some(refusal::REVOKED),
        "{events:?}"
    );
}

// ------------------------------------------------------------------------- resumable streams

/// The `"resume"` field of the OPEN claims in `events`.
fn resume_claim(events: &[OriginEvent]) -> Option<String> {
    events.iter().find_map(|e| match e {
        OriginEvent::Open { claims, .. } => Some(
            serde_json::from_slice::<serde_json::Value>(claims).unwrap()["resume"]
                .as_str()
                .unwrap_or("none")
                .to_owned(),
        ),
        _ => None,
    })
}

#[test]
fn a_resumable_stream_is_granted_and_a_resumption_routed_to_its_connector_only() {
    let mut pipe = Pipe::new();
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    let connector = "09".repeat(16);
    let [(a, x), (b, y)] = pipe.token_headers();
    let creds = [(a, x.as_str()), (b, y.as_str())];
    let ask = |extra: &str| {
        let mut h = creds.to_vec();
        h.push(("Postern-Resume", extra));
        upgrade(APP, &h)
    };

    let mut c = pipe.carrier(peer_addr(10, 1), APP);
    pipe.send(&mut c, &ask("start"));
    let answer = String::from_utf8_lossy(&c.received).into_owned();
    assert_eq!(status(&c.received), 101, "{answer}");
    assert!(
        answer.contains(&format!("Postern-Resume: {connector}\r\n")),
        "{answer}"
    );
    let events = pipe.origin_events(&mut t, &mut origin);
    assert_eq!(resume_claim(&events).as_deref(), Some("start"));

    // Without the header: a plain stream, nothing granted.
    let mut plain = pipe.carrier(peer_addr(10, 2), APP);
    pipe.send(&mut plain, &upgrade(APP, &creds));
    assert!(!String::from_utf8_lossy(&plain.received).contains("Postern-Resume"));
    let events = pipe.origin_events(&mut t, &mut origin);
    assert_eq!(resume_claim(&events).as_deref(), Some("none"));

    let stream = "ab".repeat(16);
    let mut r = pipe.carrier(peer_addr(10, 3), APP);
    pipe.send(
        &mut r,
        &ask(&format!("resume connector={connector} stream={stream}")),
    );
    assert_eq!(status(&r.received), 101, "{}", body_of(&r.received));
    let events = pipe.origin_events(&mut t, &mut origin);
    assert_eq!(resume_claim(&events).as_deref(), Some("resume"));

    // Another connector is not connected here: 503, the client tries again later.
    let mut other = pipe.carrier(peer_addr(10, 4), APP);
    let elsewhere = "07".repeat(16);
    pipe.send(
        &mut other,
        &ask(&format!("resume connector={elsewhere} stream={stream}")),
    );
    assert_eq!(status(&other.received), 503, "{}", body_of(&other.received));

    let mut bad = pipe.carrier(peer_addr(10, 5), APP);
    pipe.send(&mut bad, &ask("resume please"));
    assert_eq!(status(&bad.received), 400);
}

#[test]
fn resumptions_over_the_rate_from_one_source_get_429() {
    let mut pipe = Pipe::new();
    let (_t, _origin) = pipe.tunnel(peer_addr(50, 1));
    let [(a, x), (b, y)] = pipe.token_headers();
    let value = format!(
        "resume connector={} stream={}",
        "09".repeat(16),
        "ab".repeat(16)
    );
    let req = upgrade(APP, &[(a, &x), (b, &y), ("Postern-Resume", &value)]);
    let mut statuses = Vec::new();
    for i in 0..=crate::limits::RESUME_ATTEMPTS_PER_MINUTE {
        let mut c = pipe.carrier(peer_addr(10, (i % 200) as u16 + 1), APP);
        pipe.send(&mut c, &req);
        statuses.push(status(&c.received));
    }
    assert!(statuses[..statuses.len() - 1].iter().all(|&s| s == 101));
    assert_eq!(statuses.last(), Some(&429));
}

#[test]
fn a_carrier_that_dies_without_closing_resets_its_stream_as_lost() {
    let mut pipe = Pipe::new();
    let (mut t, mut origin) = pipe.tunnel(peer_addr(50, 1));
    let mut c = pipe.streaming_carrier(peer_addr(10, 1));
    pipe.origin_events(&mut t, &mut origin);
    // A TCP FIN with no Close frame and no close_notify: the laptop's process was killed.
    c.wire.0.lock().unwrap().peer_eof = true;
    pipe.exchange(&mut c);
    let events = pipe.origin_events(&mut t, &mut origin);
    assert!(
        events.iter().any(|e| matches!(
            e,
            OriginEvent::Stream(StreamEvent::Reset { code, .. }) if *code == mux::ResetCode::Lost
        )),
        "{events:?}"
    );
}

// ------------------------------------------------------------------------- browsers

#[test]
fn a_browser_that_opens_an_ssh_hostname_gets_a_page_with_the_ssh_config_block() {
    let mut pipe = Pipe::new();
    let get = |host: &str, accept: &str| {
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\n\r\n").into_bytes()
    };
    let browser = "text/html,application/xhtml+xml,*/*;q=0.8";

    let mut c = pipe.carrier(peer_addr(10, 1), APP);
    pipe.send(&mut c, &get(APP, browser));
    let answer = String::from_utf8_lossy(&c.received).into_owned();
    assert_eq!(status(&c.received), 200, "{answer}");
    assert!(answer.contains("Content-Type: text/html"), "{answer}");
    assert!(
        answer.contains("Content-Security-Policy: default-src 'none'"),
        "the login pages' CSP: {answer}"
    );
    let block = format!("Host {APP}\n  ProxyCommand postern access ssh --hostname %h");
    assert!(answer.contains(&block), "the ~/.ssh/config block: {answer}");
    assert!(answer.contains(&format!("ssh {APP}")), "{answer}");

    // A program that does not ask for HTML keeps the short JSON refusal.
    let mut p = pipe.carrier(peer_addr(10, 2), APP);
    pipe.send(&mut p, &get(APP, "*/*"));
    assert_eq!(status(&p.received), 400);
    assert!(body_of(&p.received).contains("postern access ssh"));

    // A hostname this edge serves no application for says so, in HTML too.
    let mut pipe = Pipe::with(|s| s.applications.retain(|a| a.hostname == APP));
    let mut o = pipe.carrier(peer_addr(10, 3), "other.localhost");
    pipe.send(&mut o, &get("other.localhost", browser));
    assert_eq!(status(&o.received), 404);
    assert!(body_of(&o.received).contains("No application is served at"));
}

/// `POST /cdn-cgi/access/exchange` on [`APP`] with `session`: (status, body).
fn exchange_zone_session(pipe: &mut Pipe, session: &str) -> (u16, String) {
    let mut c = pipe.carrier(peer_addr(9, 5000), APP);
    let body = serde_json::json!({ "zone_session": session }).to_string();
    let request = format!(
        "POST /cdn-cgi/access/exchange HTTP/1.1\r\nHost: {APP}\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    pipe.send(&mut c, request.as_bytes());
    (status(&c.received), body_of(&c.received))
}

/// A zone session states the key the edge serves its zone with (what the CLI pins it to, so
/// a server that relays the login cannot have it pinned to its own); an exchange of a session
/// that states another key is "needs fresh login", one from an edge before the claim (none)
/// still goes through.
#[test]
fn a_zone_session_states_the_edges_key_and_one_for_another_key_is_not_exchanged() {
    let mut pipe = Pipe::new();
    let key = pipe
        .core
        .settings
        .zone_key("localhost")
        .expect("the dev zone's key")
        .to_owned();
    assert_eq!(key.len(), 64, "{key}");
    let identity = crate::proto::policy::Identity {
        email: Some("alice@example.com".into()),
        groups: Vec::new(),
        service_token: None,
        authn: Default::default(),
    };
    let issued = pipe
        .core
        .issue_zone_session(APP, &identity)
        .expect("a zone session");
    let payload = issued.split('.').nth(1).expect("a compact JWT");
    let claims: serde_json::Value =
        serde_json::from_slice(&crate::proto::base64::decode_url(payload).unwrap()).unwrap();
    assert_eq!(claims["postern_edge_spki"], key.as_str());
    let (code, body) = exchange_zone_session(&mut pipe, &issued);
    assert_eq!(code, 200, "{body}");

    let resigned = |pipe: &Pipe, stated: Option<String>| {
        let verified = pipe
            .core
            .keys
            .verify_zone_session(&issued, &pipe.core.public_url(), "localhost", pipe.unix, 0)
            .expect("the issued session verifies");
        let session = crate::proto::jwt::ZoneSession {
            postern_edge_spki: stated,
            ..verified
        };
        pipe.core.keys.sign_zone_session(&session)
    };
    let other = resigned(&pipe, Some("00".repeat(32)));
    let (code, body) = exchange_zone_session(&mut pipe, &other);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("another key"), "{body}");
    let older = resigned(&pipe, None);
    let (code, body) = exchange_zone_session(&mut pipe, &older);
    assert_eq!(code, 200, "{body}");
}
