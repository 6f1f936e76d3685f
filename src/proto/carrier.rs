//! The edge's end of one carrier connection once TLS is up: one HTTP/1.1 request (a login
//! page, or the WebSocket upgrade that carries a stream), then the stream, then the close.
//!
//! ```text
//!  Head ──GET head──────────────────────────────────────────────┐
//!    └──POST head + Content-Length ─▶ Body{len} ──len bytes──────┴─▶ Deciding
//!  Deciding ──respond / refuse─────────────▶ Closing{until}
//!           ──park─▶ Parked ──respond──────▶ Closing{until}   (a worker answers: OIDC, store)
//!           ──accept(key, link)─▶ Streaming{link, decoder, sent_close}
//!  Streaming ──close_with / both Closes──▶ Closing{until}
//!  Closing ──all of it flushed (the driver: close_notify, then shutdown(Write))──▶
//!      Lingering{until min(until, now + LINGER)} ──client's EOF or until──▶ (closed)
//!  a head that does not parse, a POST without a length or with a body too large: refused
//!  here (400, 411, 413) and Closing; the peer leaving before a whole request: `Event::Left`.
//! ```
//!
//! Lingering is HTTP servers' "lingering close": a socket closed while the client's bytes
//! wait unread in it ends with a TCP reset, not a FIN, and the reset destroys what was still
//! on its way to the client (the response, the Close and its reason) and fails the client's
//! next write. So once everything is flushed, the driver shuts down only its write side (the
//! client sees the FIN after the Close), reads and discards what still comes, and closes at
//! the client's EOF or at the deadline, whichever is first.
//!
//! Sans-IO (the contract of `proto`): the driver hands in the plaintext TLS produced (a
//! [`Buf`]), takes out what to send ([`Carrier::take_transmit`]) and passes the time in. Who is
//! asking and where the stream goes are the driver's decisions; this machine owns the HTTP
//! and WebSocket framing around them, the deadlines, and the rule that a carrier answers one
//! request and sends at most one Close. The stream's bytes themselves are moved by the driver
//! (from the TLS buffers to the mux, without copies), through [`Carrier::streaming`].
//!
//! `L` is what the driver needs to find the stream again (the edge: a tunnel slot and a
//! stream id).

use std::time::Instant;

use crate::proto::buf::Buf;
use crate::proto::http::{self, HeadError, HeadLimits, RequestHead};
use crate::proto::ws::{self, Decoder, Role};

pub use crate::limits::{CLOSE_GRACE, LINGER};

/// A whole request, as the driver decides on it.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub head: RequestHead,
    /// `Host` without its port, lower case; empty when there is none.
    pub host: String,
    /// The path of the target, without the query.
    pub path: String,
    /// A POST's body (at most the limit given to [`Carrier::poll_request`]).
    pub body: Vec<u8>,
    /// `Sec-WebSocket-Key` of a well-formed WebSocket upgrade (GET with `Connection: upgrade`,
    /// `Upgrade: websocket`, version 13 and a valid key); `None` for anything else.
    pub upgrade_key: Option<String>,
}

/// What [`Carrier::poll_request`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole request: answer it with `respond`, `refuse`, `park` or `accept`.
    Request(Request),
    /// The request could not be taken; the refusal is queued and the carrier is closing.
    /// `part` is `"head"` or `"body"`; the text says why (for the driver's log and counters).
    Refused {
        status: u16,
        part: &'static str,
        why: String,
    },
    /// The peer closed before sending a whole request.
    Left,
}

/// The stream half of a carrier: the driver's link to it, the client's frames, and whether
/// our Close went out.
pub struct Streaming<L> {
    pub link: L,
    pub dec: Decoder,
    pub sent_close: bool,
}

enum State<L> {
    Head,
    Body {
        head: Box<RequestHead>,
        len: usize,
    },
    Deciding,
    Parked,
    Streaming(Streaming<L>),
    Closing,
    /// Everything went out and the driver shut its write side: what the client still sends
    /// is read and discarded until its EOF or the deadline (see the module docs).
    Lingering,
}

/// Limits of what a carrier accepts before it streams.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub head: HeadLimits,
    /// Largest POST body read.
    pub max_body: usize,
    /// Largest WebSocket frame the client may send once streaming.
    pub max_ws_frame: u64,
}

/// The edge's end of one carrier connection (see the module docs).
pub struct Carrier<L> {
    state: State<L>,
    /// Until a request is answered: the handshake deadline; while closing: the grace.
    deadline: Option<Instant>,
    tx: Vec<u8>,
}

impl<L> Carrier<L> {
    /// A carrier whose TLS handshake and request must be done by `deadline`.
    pub fn new(deadline: Instant) -> Carrier<L> {
        Carrier {
            state: State::Head,
            deadline: Some(deadline),
            tx: Vec::new(),
        }
    }

    /// Reads what `rx` holds: a whole request comes out once (head and body), consumed from
    /// `rx`; `None` while more is needed (or after the request). `peer_closed`: TLS saw the
    /// end of the client's data.
    pub fn poll_request(
        &mut self,
        rx: &mut Buf,
        peer_closed: bool,
        limits: &Limits,
        now: Instant,
    ) -> Option<Event> {
        loop {
            match &self.state {
                State::Head => match http::parse_request_head(rx.data(), &limits.head) {
                    Ok(None) => return peer_closed.then_some(Event::Left),
                    Err(e) => return Some(self.refuse_head(e, now)),
                    Ok(Some((head, used))) => {
                        rx.consume(used);
                        if head.method != "POST" {
                            self.state = State::Deciding;
                            return Some(Event::Request(request(head, Vec::new())));
                        }
                        if head.header("transfer-encoding").is_some() {
                            return Some(self.refused(
                                411,
                                "Length Required",
                                "send the body with a Content-Length",
                                now,
                            ));
                        }
                        let len = match head.content_length() {
                            None => {
                                return Some(self.refused(
                                    411,
                                    "Length Required",
                                    "send the body with a Content-Length",
                                    now,
                                ))
                            }
                            Some(n) if n > limits.max_body as u64 => {
                                let why = format!(
                                    "request bodies here are at most {} bytes",
                                    limits.max_body
                                );
                                return Some(self.refused(413, "Content Too Large", &why, now));
                            }
                            Some(n) => n as usize,
                        };
                        self.state = State::Body {
                            head: Box::new(head),
                            len,
                        };
                    }
                },
                State::Body { len, .. } => {
                    let len = *len;
                    if rx.len() < len {
                        return peer_closed.then_some(Event::Left);
                    }
                    let State::Body { head, .. } =
                        std::mem::replace(&mut self.state, State::Deciding)
                    else {
                        unreachable!("bug: state matched above");
                    };
                    let body = rx.data()[..len].to_vec();
                    rx.consume(len);
                    return Some(Event::Request(request(*head, body)));
                }
                State::Closing | State::Lingering => {
                    // Whatever else the client sends is not read.
                    rx.consume(rx.len());
                    return None;
                }
                State::Deciding | State::Parked | State::Streaming(_) => return None,
            }
        }
    }

    fn refuse_head(&mut self, e: HeadError, now: Instant) -> Event {
        let status = match e {
            HeadError::TooLarge { .. } | HeadError::TooManyHeaders { .. } => 431,
            _ => 400,
        };
        let reason = if status == 431 {
            "Request Header Fields Too Large"
        } else {
            "Bad Request"
        };
        self.refused(status, reason, &e.to_string(), now)
    }

    fn refused(&mut self, status: u16, reason: &str, why: &str, now: Instant) -> Event {
        self.refuse(status, reason, why, now);
        Event::Refused {
            status,
            part: if status == 400 || status == 431 {
                "head"
            } else {
                "body"
            },
            why: why.to_owned(),
        }
    }

    /// Answers the request with an error whose JSON body names the cause; the carrier then
    /// closes. (A browser navigation gets pages through [`Carrier::respond`] instead.)
    pub fn refuse(&mut self, status: u16, reason: &str, message: &str, now: Instant) {
        self.refuse_step(status, reason, message, None, now)
    }

    /// [`Carrier::refuse`] with a `step` in the JSON body too: which hop of the path refused
    /// (`token`, `policy`, `application`, `tunnel`), for programs (`postern access doctor`)
    /// that must not guess from the message's words.
    pub fn refuse_step(
        &mut self,
        status: u16,
        reason: &str,
        message: &str,
        step: Option<&str>,
        now: Instant,
    ) {
        let mut body = serde_json::json!({ "error": message });
        if let Some(step) = step {
            body["step"] = step.into();
        }
        let body = body.to_string();
        http::write_response(
            &mut self.tx,
            status,
            reason,
            &[
                ("Content-Type", "application/json"),
                ("Connection", "close"),
            ],
            body.as_bytes(),
        );
        self.closing(now);
    }

    /// Answers the request with `status` and `body`; the carrier then closes. `headers` must
    /// not hold `Content-Length` (it is set here).
    pub fn respond(
        &mut self,
        status: u16,
        reason: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        now: Instant,
    ) {
        http::write_response(&mut self.tx, status, reason, headers, body);
        self.closing(now);
    }

    /// The answer waits for a worker (the deadline still holds); answer with `respond` later.
    pub fn park(&mut self) {
        if matches!(self.state, State::Deciding) {
            self.state = State::Parked;
        }
    }

    /// Answers the upgrade with 101 and starts streaming to `link`. The handshake deadline
    /// no longer applies.
    pub fn accept(&mut self, key: &str, link: L, max_ws_frame: u64, extra: &[(&str, &str)]) {
        let accept = http::websocket_accept_key(key);
        let mut headers = vec![
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", &accept),
        ];
        headers.extend_from_slice(extra);
        http::write_response(&mut self.tx, 101, "Switching Protocols", &headers, b"");
        self.deadline = None;
        self.state = State::Streaming(Streaming {
            link,
            dec: Decoder::with_max_frame(Role::Server, max_ws_frame),
            sent_close: false,
        });
    }

    /// The stream's end came from the origin: our normal Close goes out (once), and the
    /// carrier keeps streaming until the client's Close.
    pub fn send_normal_close(&mut self) {
        if let State::Streaming(s) = &mut self.state {
            if !s.sent_close {
                ws::encode_close(&mut self.tx, ws::close::NORMAL, "", None);
                s.sent_close = true;
            }
        }
    }

    /// Ends the carrier: a WebSocket Close with `code` and `reason` if it is streaming and has
    /// not sent its Close yet (a second Close would be a protocol error at the client), then
    /// closing once that is flushed or after [`CLOSE_GRACE`]. Returns the stream's link, if
    /// it was streaming, so the driver can let go of the stream.
    /// A carrier that is closing already is left as it is (its deadline is not pushed back).
    pub fn close_with(&mut self, code: u16, reason: &str, now: Instant) -> Option<L> {
        if self.is_closing() {
            return None;
        }
        let link = match std::mem::replace(&mut self.state, State::Closing) {
            State::Streaming(s) => {
                if !s.sent_close {
                    ws::encode_close(&mut self.tx, code, reason, None);
                }
                Some(s.link)
            }
            _ => None,
        };
        self.deadline = Some(now + CLOSE_GRACE);
        link
    }

    /// Both Closes were exchanged: nothing more to say (the driver sends TLS close_notify).
    pub fn finished_streaming(&mut self, now: Instant) -> Option<L> {
        if self.is_closing() {
            return None;
        }
        let link = match std::mem::replace(&mut self.state, State::Closing) {
            State::Streaming(s) => Some(s.link),
            _ => None,
        };
        self.deadline = Some(now + CLOSE_GRACE);
        link
    }

    fn closing(&mut self, now: Instant) {
        self.state = State::Closing;
        self.deadline = Some(now + CLOSE_GRACE);
    }

    /// Everything queued (the answer or the Close, and TLS close_notify) has reached the
    /// socket and the driver shut down its write side: from now on the carrier only reads
    /// to discard, until the client's EOF or [`LINGER`] from now (never past the close
    /// grace). True if it was closing (a carrier in any other state is left alone).
    pub fn linger(&mut self, now: Instant) -> bool {
        if !matches!(self.state, State::Closing) {
            return false;
        }
        self.state = State::Lingering;
        let until = now + LINGER;
        self.deadline = Some(self.deadline.map_or(until, |d| d.min(until)));
        true
    }

    /// True when bytes wait for [`Carrier::take_transmit`].
    pub fn has_transmit(&self) -> bool {
        !self.tx.is_empty()
    }

    /// Bytes to hand to TLS, if any are queued.
    pub fn take_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.tx.is_empty()).then(|| std::mem::take(&mut self.tx))
    }

    /// When the connection must end unless it has moved on: the handshake deadline, or the
    /// end of the close grace (or of the linger). `None` while streaming.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Waiting for the client's request (its head or body).
    pub fn awaiting_request(&self) -> bool {
        matches!(self.state, State::Head | State::Body { .. })
    }

    pub fn is_parked(&self) -> bool {
        matches!(self.state, State::Parked)
    }

    /// Closing or lingering: nothing more is answered or streamed.
    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing | State::Lingering)
    }

    /// Write side shut, reading only to discard (see [`Carrier::linger`]).
    pub fn is_lingering(&self) -> bool {
        matches!(self.state, State::Lingering)
    }

    /// The stream half, while streaming.
    pub fn streaming(&mut self) -> Option<&mut Streaming<L>> {
        match &mut self.state {
            State::Streaming(s) => Some(s),
            _ => None,
        }
    }

    /// The stream's link, while streaming.
    pub fn link(&self) -> Option<&L> {
        match &self.state {
            State::Streaming(s) => Some(&s.link),
            _ => None,
        }
    }
}

fn request(head: RequestHead, body: Vec<u8>) -> Request {
    let host = head
        .header("host")
        .map(|h| strip_port(h).to_ascii_lowercase())
        .unwrap_or_default();
    let path = head.target.split('?').next().unwrap_or_default().to_owned();
    let upgrade = head.method == "GET"
        && head.header_has_token("connection", "upgrade")
        && head.header_has_token("upgrade", "websocket")
        && head.header("sec-websocket-version") == Some("13");
    let upgrade_key = head
        .header("sec-websocket-key")
        .filter(|k| upgrade && http::is_valid_websocket_key(k))
        .map(str::to_owned);
    Request {
        head,
        host,
        path,
        body,
        upgrade_key,
    }
}

/// `host` without a `:port` suffix (an IPv6 literal's colons are left alone).
pub fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// A carrier fed the bytes, split as they come: never a panic, at most one request out,
/// and nothing consumed beyond what was given.
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub fn fuzz_carrier(data: &[u8]) {
    let limits = Limits {
        head: HeadLimits::default(),
        max_body: 4096,
        max_ws_frame: 1 << 20,
    };
    let start = Instant::now();
    let mut c: Carrier<()> = Carrier::new(start + std::time::Duration::from_secs(20));
    let mut rx = Buf::new(64 * 1024);
    let mut requests = 0;
    let split = data.first().map_or(1, |b| usize::from(*b) + 1);
    for chunk in data.get(1..).unwrap_or_default().chunks(split) {
        let mut rest = chunk;
        while !rest.is_empty() && rx.space() > 0 {
            let tail = rx.tail_mut();
            let n = rest.len().min(tail.len());
            tail[..n].copy_from_slice(&rest[..n]);
            rx.commit(n);
            rest = &rest[n..];
        }
        while let Some(ev) = c.poll_request(&mut rx, false, &limits, start) {
            if let Event::Request(r) = ev {
                requests += 1;
                assert!(r.body.len() <= limits.max_body);
                if let Some(key) = r.upgrade_key {
                    c.accept(&key, (), limits.max_ws_frame, &[]);
                    let _ = c.close_with(1000, "", start);
                } else {
                    c.respond(200, "OK", &[], b"ok", start);
                }
            }
        }
        assert!(requests <= 1, "one request per carrier");
    }
    let _ = c.poll_request(&mut rx, true, &limits, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: ssh.localhost:8443\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    fn limits() -> Limits {
        Limits {
            head: HeadLimits::default(),
            max_body: 64,
            max_ws_frame: 1 << 20,
        }
    }

    fn feed(rx: &mut Buf, bytes: &[u8]) {
        rx.tail_mut()[..bytes.len()].copy_from_slice(bytes);
        rx.commit(bytes.len());
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn an_upgrade_comes_out_whole_at_every_split_and_nothing_before() {
        let now = Instant::now();
        for split in 1..UPGRADE.len() {
            let mut c: Carrier<u32> = Carrier::new(now);
            let mut rx = Buf::new(4096);
            feed(&mut rx, &UPGRADE[..split]);
            assert_eq!(
                c.poll_request(&mut rx, false, &limits(), now),
                None,
                "split {split}"
            );
            assert_eq!(rx.len(), split, "nothing consumed before the head is whole");
            feed(&mut rx, &UPGRADE[split..]);
            let Some(Event::Request(r)) = c.poll_request(&mut rx, false, &limits(), now) else {
                panic!("split {split}: no request");
            };
            assert_eq!(r.host, "ssh.localhost");
            assert_eq!(r.path, "/");
            assert_eq!(r.upgrade_key.as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
            assert!(rx.is_empty());
            assert_eq!(
                c.poll_request(&mut rx, false, &limits(), now),
                None,
                "one request"
            );
        }
    }

    #[test]
    fn a_post_body_is_read_whole_and_bounded() {
        let now = Instant::now();
        let body = b"state=s&code=BCDF-GHJK";
        let msg = [
            format!(
                "POST /cdn-cgi/access/confirm HTTP/1.1\r\nHost: login.localhost\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
            body,
        ]
        .concat();
        for split in 1..msg.len() {
            let mut c: Carrier<u32> = Carrier::new(now);
            let mut rx = Buf::new(4096);
            feed(&mut rx, &msg[..split]);
            assert_eq!(c.poll_request(&mut rx, false, &limits(), now), None);
            feed(&mut rx, &msg[split..]);
            let Some(Event::Request(r)) = c.poll_request(&mut rx, false, &limits(), now) else {
                panic!("split {split}");
            };
            assert_eq!(r.body, body);
            assert_eq!(r.upgrade_key, None);
            assert!(!c.awaiting_request() && !c.is_closing());
        }
        // Too large, no length, chunked: refused here, closing.
        for (head, status) in [
            (
                "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 65\r\n\r\n",
                413,
            ),
            ("POST / HTTP/1.1\r\nHost: h\r\n\r\n", 411),
            (
                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
        ] {
            let mut c: Carrier<u32> = Carrier::new(now);
            let mut rx = Buf::new(4096);
            feed(&mut rx, head.as_bytes());
            let ev = c.poll_request(&mut rx, false, &limits(), now);
            assert!(
                matches!(ev, Some(Event::Refused { status: s, .. }) if s == status),
                "{head}: {ev:?}"
            );
            assert!(c.is_closing());
            let out = text(&c.take_transmit().unwrap());
            assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{out}");
            assert_eq!(c.deadline(), Some(now + CLOSE_GRACE));
        }
    }

    #[test]
    fn a_bad_head_is_refused_and_a_peer_that_leaves_is_noticed() {
        let now = Instant::now();
        let mut c: Carrier<u32> = Carrier::new(now);
        let mut rx = Buf::new(4096);
        feed(&mut rx, b"GARBAGE\r\n\r\n");
        assert!(matches!(
            c.poll_request(&mut rx, false, &limits(), now),
            Some(Event::Refused { status: 400, .. })
        ));
        assert!(text(&c.take_transmit().unwrap()).starts_with("HTTP/1.1 400 "));
        // Closing: later bytes are dropped unread.
        feed(&mut rx, b"more");
        assert_eq!(c.poll_request(&mut rx, false, &limits(), now), None);
        assert!(rx.is_empty());

        let mut c: Carrier<u32> = Carrier::new(now);
        let mut rx = Buf::new(4096);
        feed(&mut rx, b"GET / HT");
        assert_eq!(
            c.poll_request(&mut rx, true, &limits(), now),
            Some(Event::Left)
        );
    }

    #[test]
    fn not_an_upgrade_unless_every_part_is_there() {
        let now = Instant::now();
        let full = text(UPGRADE);
        for (drop, why) in [
            ("Connection: Upgrade\r\n", "no Connection: upgrade"),
            ("Upgrade: websocket\r\n", "no Upgrade"),
            ("Sec-WebSocket-Version: 13\r\n", "no version"),
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "no key"),
        ] {
            let mut c: Carrier<u32> = Carrier::new(now);
            let mut rx = Buf::new(4096);
            feed(&mut rx, full.replace(drop, "").as_bytes());
            let Some(Event::Request(r)) = c.poll_request(&mut rx, false, &limits(), now) else {
                panic!("{why}");
            };
            assert_eq!(r.upgrade_key, None, "{why}");
        }
    }

    #[test]
    fn accept_streams_and_a_carrier_sends_one_close() {
        let now = Instant::now();
        let mut c: Carrier<(usize, u32)> = Carrier::new(now + Duration::from_secs(20));
        let mut rx = Buf::new(4096);
        feed(&mut rx, UPGRADE);
        let Some(Event::Request(r)) = c.poll_request(&mut rx, false, &limits(), now) else {
            panic!()
        };
        c.accept(r.upgrade_key.as_deref().unwrap(), (7, 3), 1024, &[]);
        let out = text(&c.take_transmit().unwrap());
        assert!(out.starts_with("HTTP/1.1 101 "), "{out}");
        assert!(
            out.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{out}"
        );
        assert_eq!(c.deadline(), None, "no handshake deadline once streaming");
        assert_eq!(c.link(), Some(&(7, 3)));
        // The origin ends its side: one normal Close, even if asked twice.
        c.send_normal_close();
        c.send_normal_close();
        let close = c.take_transmit().unwrap();
        assert_eq!(close, [0x88, 0x02, 0x03, 0xe8]);
        // Then the origin resets: the carrier ends without a second Close.
        assert_eq!(
            c.close_with(ws::close::TRY_AGAIN, "reset", now),
            Some((7, 3))
        );
        assert_eq!(c.take_transmit(), None);
        assert!(c.is_closing());
        assert_eq!(c.deadline(), Some(now + CLOSE_GRACE));
        assert_eq!(c.close_with(ws::close::TRY_AGAIN, "again", now), None);
    }

    #[test]
    fn a_closing_carrier_lingers_after_the_flush_for_at_most_linger() {
        let now = Instant::now();
        let mut c: Carrier<u32> = Carrier::new(now + Duration::from_secs(20));
        let mut rx = Buf::new(4096);
        feed(&mut rx, UPGRADE);
        let Some(Event::Request(r)) = c.poll_request(&mut rx, false, &limits(), now) else {
            panic!()
        };
        assert!(
            !c.linger(now),
            "a carrier that is not closing does not linger"
        );
        c.accept(r.upgrade_key.as_deref().unwrap(), 3, 1024, &[]);
        assert!(!c.linger(now), "nor does a streaming one");
        assert!(c.take_transmit().is_some(), "the 101");
        assert_eq!(
            c.close_with(ws::close::TRY_AGAIN, "no service", now),
            Some(3)
        );
        assert!(c.is_closing() && !c.is_lingering());
        assert!(c.take_transmit().is_some_and(|t| t.starts_with(&[0x88])));
        // Flushed one second later: the write side is shut, LINGER from then on.
        let flushed = now + Duration::from_secs(1);
        assert!(c.linger(flushed));
        assert!(c.is_lingering() && c.is_closing());
        assert_eq!(c.deadline(), Some(flushed + LINGER));
        // What the client still sends is dropped, unparsed; nothing more goes out.
        feed(&mut rx, b"\x82\x7e\xff\xff whatever the client was writing");
        assert_eq!(c.poll_request(&mut rx, false, &limits(), flushed), None);
        assert!(rx.is_empty());
        assert_eq!(c.take_transmit(), None);
        // A later close (the tunnel went away meanwhile) changes nothing.
        assert_eq!(c.close_with(ws::close::TRY_AGAIN, "again", flushed), None);
        assert!(!c.linger(flushed));
        assert!(c.is_lingering());
        assert_eq!(c.deadline(), Some(flushed + LINGER));

        // A flush that took almost all of the close grace: the linger ends with the grace.
        let mut c: Carrier<u32> = Carrier::new(now);
        c.refuse(404, "Not Found", "no application", now);
        let late = now + CLOSE_GRACE - Duration::from_millis(100);
        assert!(c.linger(late));
        assert_eq!(c.deadline(), Some(now + CLOSE_GRACE));
    }

    #[test]
    fn a_parked_request_keeps_its_deadline_and_answers_later() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(20);
        let mut c: Carrier<u32> = Carrier::new(deadline);
        let mut rx = Buf::new(4096);
        feed(&mut rx, b"GET /cdn-cgi/access/callback?state=s&code=c HTTP/1.1\r\nHost: login.localhost\r\n\r\n");
        assert!(matches!(
            c.poll_request(&mut rx, false, &limits(), now),
            Some(Event::Request(_))
        ));
        c.park();
        assert!(c.is_parked());
        assert_eq!(c.deadline(), Some(deadline));
        let later = now + Duration::from_secs(1);
        c.respond(200, "OK", &[("Content-Type", "text/plain")], b"done", later);
        let out = text(&c.take_transmit().unwrap());
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with("done"),
            "{out}"
        );
        assert_eq!(c.deadline(), Some(later + CLOSE_GRACE));
    }

    #[test]
    fn host_ports_are_stripped_but_ipv6_literals_are_kept() {
        assert_eq!(strip_port("ssh.localhost:8443"), "ssh.localhost");
        assert_eq!(strip_port("ssh.localhost"), "ssh.localhost");
        assert_eq!(strip_port("[::1]:8443"), "[::1]:8443");
    }
}
