//! `access ssh`'s resumable session, sans-IO: ssh's stdio spliced with a stream that outlives
//! its carriers (docs/design.md §2.6). The record layer is `proto::resume`; this file decides
//! when a path is dead, when to connect again, and when the session is over. The driver
//! (`driver.rs`, `ssh`) does the IO, and sets carriers up on a thread.
//!
//! ```text
//!            ┌──────────── path lost (EOF, TLS error, Close 1000 before FIN, silence) ──┐
//!            ▼                                                                         │
//!  Connecting ──connected(granted)──▶ Attached (START or RESUME sent; replay after ACCEPT)
//!     ▲   │                             │
//!     │   └─ refused for good / window over ─▶ error        origin's FIN delivered ─▶ Finished
//!     └── backoff ◀── connect failed (503, network) ◀── Lost
//! ```
//!
//! The stream's bytes are records inside the carrier's Binary frames. What ssh writes goes
//! into the replay buffer (1 MiB) and is framed from there; what the origin sends is parsed
//! in `records` and its payload written to ssh straight from there. A Close other than 1000
//! from the edge (the origin refused the resumption, the session was revoked) ends the
//! session with its reason; anything else that ends a path is a loss, and the session waits
//! for a new path for [`RESUME_WINDOW`].
//!
//! Keepalive: a ping every [`CARRIER_PING_INTERVAL`]; a carrier that delivers nothing for
//! [`CARRIER_DEAD_AFTER`] is dead (a laptop that changed networks never sees an EOF).

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::io::random_bytes;
use crate::limits::{
    CARRIER_DEAD_AFTER, CARRIER_PING_INTERVAL, RESUME_ACK_INTERVAL, RESUME_WINDOW,
    STREAM_SEND_BUFFER,
};
use crate::logging::untrusted;
use crate::proto::buf::Buf;
use crate::proto::resume::{self, Ask, Endpoint, Opening, ID_LEN, SECRET_LEN};
use crate::proto::ws::{self, Decoder, Item, Role};

use super::core::LOCAL_READ;
use super::AccessError;

/// What the driver must do, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// The current carrier is over: drop it (no close_notify needed).
    DropCarrier,
    /// Set up a new carrier asking `Postern-Resume: <ask>`; answer with
    /// [`Resumable::connected`] or [`Resumable::connect_failed`].
    Connect { ask: String },
    /// Both directions are done: send close_notify, end the session.
    Finished,
}

enum Path {
    /// A carrier is being set up (by the driver, off the loop).
    Connecting,
    /// A carrier is up.
    Attached(Box<Attached>),
    /// Waiting to try again.
    Lost { next_try: Instant },
}

struct Attached {
    dec: Decoder,
    /// The opening record (START or RESUME) still has to go out.
    opening: Option<Vec<u8>>,
    /// The origin's ACCEPT arrived.
    accepted: bool,
    /// DATA may flow: at once on a new stream (both ends start at 0), after ACCEPT on a
    /// resumed one (the origin's offset says where to replay from).
    may_send: bool,
    /// A frame handed to the driver has not reached the socket yet.
    edge_busy: bool,
    pong: Option<([u8; 125], usize)>,
    /// Our keepalive ping is due.
    ping_wanted: bool,
    last_heard: Instant,
    next_ping: Instant,
}

/// One resumable `access ssh` session (see the module doc).
pub struct Resumable {
    id: [u8; ID_LEN],
    secret: [u8; SECRET_LEN],
    connector: String,
    ep: Endpoint,
    /// Record bytes from the origin, parsed up to the next payload.
    records: Buf,
    path: Path,
    /// When the first path of the current outage died (the window runs from there).
    lost_since: Option<Instant>,
    attempts: u32,
    next_ack: Instant,
    /// Frame bytes for the edge, reused.
    frame: Vec<u8>,
    scratch: Vec<u8>,
    outputs: VecDeque<Output>,
    finished: bool,
    resumes: u32,
}

impl Resumable {
    /// A session whose first carrier is up and was granted resumption by origin `connector`:
    /// START goes out first.
    pub fn new(connector: String, now: Instant) -> Resumable {
        let mut r = Resumable {
            id: random_bytes(),
            secret: random_bytes(),
            connector,
            ep: Endpoint::new(),
            records: Buf::new(STREAM_SEND_BUFFER),
            path: Path::Connecting,
            lost_since: None,
            attempts: 0,
            next_ack: now + RESUME_ACK_INTERVAL,
            frame: Vec::new(),
            scratch: Vec::new(),
            outputs: VecDeque::new(),
            finished: false,
            resumes: 0,
        };
        let mut start = Vec::new();
        Opening::Start {
            id: r.id,
            secret: r.secret,
        }
        .encode(&mut start);
        r.attach(start, true, now);
        r
    }

    fn attach(&mut self, opening: Vec<u8>, may_send: bool, now: Instant) {
        self.path = Path::Attached(Box::new(Attached {
            dec: Decoder::new(Role::Client),
            opening: Some(opening),
            accepted: false,
            may_send,
            edge_busy: false,
            pong: None,
            ping_wanted: false,
            last_heard: now,
            next_ping: now + CARRIER_PING_INTERVAL,
        }));
    }

    /// The stream's identity, short, for logs.
    pub fn label(&self) -> String {
        resume::hex(&self.id[..6])
    }

    /// True while a carrier is up (the driver reads and writes it).
    pub fn attached(&self) -> bool {
        matches!(self.path, Path::Attached(_))
    }

    /// True when the driver should read more of ssh's input.
    pub fn wants_local_input(&self) -> bool {
        self.ep.room() > 0
    }

    /// Reads ssh's input with `read` straight into the replay buffer. `Some(Ok(0))` is its
    /// EOF (FIN follows the data).
    pub fn local_fill(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> Option<io::Result<usize>> {
        let got = self.ep.fill(read);
        if let Some(Ok(0)) = got {
            debug!("stream {}: local EOF", self.label());
            self.ep.close_write();
        }
        got
    }

    /// The next frame for the edge (masked), if one may go now: the opening record, a pong,
    /// or records (ACK, DATA, FIN) up to one frame. Report with [`Resumable::transmitted`].
    pub fn poll_transmit(&mut self) -> Option<&[u8]> {
        let Path::Attached(a) = &mut self.path else {
            return None;
        };
        if a.edge_busy {
            return None;
        }
        self.frame.clear();
        if let Some((payload, len)) = a.pong.take() {
            ws::encode_frame(
                &mut self.frame,
                ws::PONG,
                &payload[..len],
                Some(random_bytes()),
            );
        } else if let Some(opening) = a.opening.take() {
            ws::encode_frame(&mut self.frame, ws::BINARY, &opening, Some(random_bytes()));
        } else if std::mem::take(&mut a.ping_wanted) {
            ws::encode_frame(&mut self.frame, ws::PING, b"", Some(random_bytes()));
        } else if a.may_send && self.ep.wants_transmit() {
            // The records go straight into the frame, behind room for the largest header, and
            // are masked there: no copy through a scratch buffer (docs/design.md §2.8).
            self.frame.resize(ws::MAX_HEADER, 0);
            self.ep
                .transmit(&mut self.frame, LOCAL_READ - 64 - resume::DATA_HEADER);
            let mask = random_bytes();
            let mut header = [0u8; ws::MAX_HEADER];
            let len = self.frame.len() - ws::MAX_HEADER;
            let n = ws::encode_header(&mut header, ws::BINARY, len, Some(mask));
            ws::unmask(&mut self.frame[ws::MAX_HEADER..], mask, 0);
            self.frame[ws::MAX_HEADER - n..ws::MAX_HEADER].copy_from_slice(&header[..n]);
            a.edge_busy = true;
            return Some(&self.frame[ws::MAX_HEADER - n..]);
        } else {
            return None;
        }
        a.edge_busy = true;
        Some(&self.frame)
    }

    /// The last frames of a finished session, to queue before close_notify: our
    /// acknowledgement and FIN (so the origin lets go of the stream at once rather than
    /// holding it for the resume window), then our Close.
    pub fn farewell(&mut self) -> &[u8] {
        self.frame.clear();
        if let Path::Attached(a) = &self.path {
            if a.may_send {
                self.ep.request_ack();
                self.scratch.clear();
                self.ep
                    .transmit(&mut self.scratch, crate::limits::REPLAY_BUFFER);
                ws::encode_frame(
                    &mut self.frame,
                    ws::BINARY,
                    &self.scratch,
                    Some(random_bytes()),
                );
            }
            ws::encode_close(&mut self.frame, ws::close::NORMAL, "", Some(random_bytes()));
        }
        &self.frame
    }

    /// Everything handed out reached the socket: the next frame may go.
    pub fn handle_edge_drained(&mut self) {
        if let Path::Attached(a) = &mut self.path {
            a.edge_busy = false;
        }
    }

    /// True while the edge's bytes may be decoded (the records buffer has room).
    pub fn wants_edge_input(&self) -> bool {
        self.attached() && self.records.space() > 0
    }

    /// Decodes the edge's frames from `rx` (TLS plaintext). A Close other than 1000 ends the
    /// session with its reason; a bad frame or record is a lost path only if it is the
    /// carrier's (records are the origin's word: a bad one ends the session).
    pub fn handle_edge_input(&mut self, rx: &mut Buf, now: Instant) -> Result<(), AccessError> {
        let Path::Attached(a) = &mut self.path else {
            return Ok(());
        };
        if !rx.is_empty() {
            a.last_heard = now;
        }
        let mut lost = None;
        while self.records.space() > 0 {
            let input = rx.data_mut();
            match a.dec.poll(input, self.records.space()) {
                Ok(Some((Item::Data { start, len }, used))) => {
                    self.records.push(&input[start..start + len]);
                    rx.consume(used);
                }
                Ok(Some((Item::Ping { payload, len }, used))) => {
                    rx.consume(used);
                    a.pong = Some((payload, len));
                }
                Ok(Some((Item::Pong, used))) => rx.consume(used),
                Ok(Some((Item::Close { code, reason }, used))) => {
                    rx.consume(used);
                    if code != ws::close::NORMAL {
                        return Err(AccessError::SessionClosed {
                            reason: untrusted(&reason).to_string(),
                        });
                    }
                    lost = Some("the edge closed the carrier".to_string());
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    lost = Some(format!("bad frame from the edge: {e}"));
                    break;
                }
            }
        }
        self.settle()?;
        if let Some(why) = lost {
            if !self.finished {
                self.lose(&why, now);
            }
        }
        Ok(())
    }

    /// Takes the origin's opening record and control records, up to the next payload byte;
    /// finishes the session once the origin's FIN is parsed.
    fn settle(&mut self) -> Result<(), AccessError> {
        let bad = |e: resume::ResumeError| AccessError::BadAnswer(format!("from the origin: {e}"));
        if let Path::Attached(a) = &mut self.path {
            if !a.accepted {
                match Opening::decode(self.records.data()).map_err(bad)? {
                    None => return Ok(()),
                    Some((Opening::Accept { received }, used)) => {
                        self.records.consume(used);
                        if self.resumes > 0 {
                            self.ep.resume_from(received).map_err(bad)?;
                            info!(
                                "stream {}: resumed (the origin had {received} bytes, we had {})",
                                resume::hex(&self.id[..6]),
                                self.ep.received()
                            );
                        } else if received != 0 {
                            return Err(bad(resume::ResumeError::Offset {
                                got: received,
                                low: 0,
                                high: 0,
                            }));
                        }
                        a.accepted = true;
                        a.may_send = true;
                        self.lost_since = None;
                        self.attempts = 0;
                    }
                    Some(_) => {
                        return Err(AccessError::BadAnswer(
                            "from the origin: an opening record other than ACCEPT".into(),
                        ))
                    }
                }
            }
        } else {
            return Ok(());
        }
        let used = self.ep.parse(self.records.data()).map_err(bad)?;
        self.records.consume(used);
        if self.ep.read_closed() && !self.finished {
            debug!("stream {}: the origin's end", self.label());
            self.finished = true;
            self.ep.close_write();
            self.outputs.push_back(Output::Finished);
        }
        Ok(())
    }

    /// Payload waiting for ssh's stdout.
    pub fn to_local(&self) -> &[u8] {
        let n = self.ep.payload_len(self.records.len());
        &self.records.data()[..n]
    }

    /// ssh's stdout took `n` bytes of [`Resumable::to_local`].
    pub fn local_written(&mut self, n: usize) -> Result<(), AccessError> {
        self.ep.delivered(n);
        self.records.consume(n);
        self.settle()
    }

    /// The carrier's TLS ended or failed, or a write to it failed.
    pub fn handle_edge_closed(&mut self, why: &str, now: Instant) {
        if self.attached() && !self.finished {
            self.lose(why, now);
        }
    }

    fn lose(&mut self, why: &str, now: Instant) {
        let since = *self.lost_since.get_or_insert(now);
        warn!(
            "stream {}: the connection to the edge was lost ({why}); resuming for up to {}s",
            self.label(),
            RESUME_WINDOW.saturating_sub(now - since).as_secs()
        );
        self.ep.detach();
        self.records.consume(self.records.len());
        self.outputs.push_back(Output::DropCarrier);
        self.path = Path::Lost {
            next_try: now + retry_delay(self.attempts),
        };
    }

    /// A carrier is up again, granted by `granted` (the 101's `Postern-Resume`).
    pub fn connected(&mut self, granted: Option<&str>, now: Instant) -> Result<(), AccessError> {
        if granted != Some(self.connector.as_str()) {
            return Err(AccessError::BadAnswer(
                "the edge did not resume the stream".into(),
            ));
        }
        self.resumes += 1;
        let mut opening = Vec::new();
        Opening::Resume {
            id: self.id,
            secret: self.secret,
            received: self.ep.received(),
        }
        .encode(&mut opening);
        self.attach(opening, false, now);
        Ok(())
    }

    /// Setting up a carrier failed: try again later, unless the edge refused for good or the
    /// window is over.
    pub fn connect_failed(&mut self, e: AccessError, now: Instant) -> Result<(), AccessError> {
        let since = *self.lost_since.get_or_insert(now);
        let transient = match &e {
            AccessError::Refused { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            AccessError::Resolve { .. }
            | AccessError::Unreachable { .. }
            | AccessError::Proxy(_)
            | AccessError::ProxyResolve { .. }
            | AccessError::ProxyUnreachable { .. }
            | AccessError::ProxyIo { .. }
            | AccessError::Tls { .. }
            | AccessError::EdgeClosed { .. }
            | AccessError::Connection { .. } => true,
            _ => false,
        };
        if !transient {
            return Err(e);
        }
        if now - since >= RESUME_WINDOW {
            return Err(AccessError::NotResumed {
                window: RESUME_WINDOW.as_secs(),
                last: e.to_string(),
            });
        }
        debug!("stream {}: not resumed yet: {e}", self.label());
        self.attempts = self.attempts.saturating_add(1);
        self.path = Path::Lost {
            next_try: now + retry_delay(self.attempts),
        };
        Ok(())
    }

    /// The next thing the driver must do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Resumable::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.path {
            Path::Attached(a) => Some(
                self.next_ack
                    .min(a.next_ping)
                    .min(a.last_heard + CARRIER_DEAD_AFTER),
            ),
            Path::Lost { next_try } => Some(*next_try),
            Path::Connecting => None,
        }
    }

    /// Keepalive pings, dead paths, acknowledgements, retries.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), AccessError> {
        if self.finished {
            return Ok(());
        }
        match &mut self.path {
            Path::Attached(a) => {
                if self.records.space() == 0 {
                    // We stopped reading (ssh is not taking its output): the edge's silence
                    // is ours, not a dead path.
                    a.last_heard = now;
                }
                if now >= a.last_heard + CARRIER_DEAD_AFTER {
                    let silent = now - a.last_heard;
                    self.lose(&format!("nothing heard for {}s", silent.as_secs()), now);
                    return Ok(());
                }
                if now >= a.next_ping {
                    a.next_ping = now + CARRIER_PING_INTERVAL;
                    a.ping_wanted = true;
                }
                if now >= self.next_ack {
                    self.next_ack = now + RESUME_ACK_INTERVAL;
                    self.ep.request_ack();
                }
            }
            Path::Lost { next_try } => {
                if now >= *next_try {
                    if now - self.lost_since.unwrap_or(now) >= RESUME_WINDOW {
                        return Err(AccessError::NotResumed {
                            window: RESUME_WINDOW.as_secs(),
                            last: "no connection to the edge".into(),
                        });
                    }
                    self.path = Path::Connecting;
                    let ask = Ask::Resume {
                        connector: self.connector.clone(),
                        stream: self.id,
                    };
                    self.outputs.push_back(Output::Connect { ask: ask.value() });
                }
            }
            Path::Connecting => {}
        }
        Ok(())
    }
}

/// The wait before connection attempt `attempt` of an outage: at once, then 250 ms doubling
/// to 2 s.
fn retry_delay(attempt: u32) -> Duration {
    match attempt {
        0 => Duration::ZERO,
        n => Duration::from_millis(250 << (n - 1).min(3)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::resume::Key;

    const CONNECTOR: &str = "0123456789abcdef0123456789abcdef";

    /// The client's core against an origin played by a real `Endpoint`, the edge reduced to
    /// WebSocket framing, and a clock the test holds.
    struct Pipe {
        client: Resumable,
        now: Instant,
        /// The edge's bytes for the client (TLS plaintext).
        rx: Buf,
        /// Frames from the client, decoded as the edge would.
        edge_dec: Decoder,
        /// Record bytes that reached the origin on the current path.
        at_origin: Vec<u8>,
        origin: Endpoint,
        key: Option<Key>,
        opened: bool,
        /// What ssh's stdout got, and what the origin's service got.
        stdout: Vec<u8>,
        service: Vec<u8>,
        outputs: Vec<Output>,
    }

    impl Pipe {
        fn new() -> Pipe {
            let now = Instant::now();
            Pipe {
                client: Resumable::new(CONNECTOR.into(), now),
                now,
                rx: Buf::new(1 << 22),
                edge_dec: Decoder::new(Role::Server),
                at_origin: Vec::new(),
                origin: Endpoint::new(),
                key: None,
                opened: false,
                stdout: Vec::new(),
                service: Vec::new(),
                outputs: Vec::new(),
            }
        }

        /// Client → edge → origin until nothing moves.
        fn client_sends(&mut self) {
            while let Some(frame) = self.client.poll_transmit() {
                let mut frame = frame.to_vec();
                self.client.handle_edge_drained();
                let mut at = 0;
                while let Ok(Some((item, used))) = self.edge_dec.poll(&mut frame[at..], 1 << 20) {
                    if let Item::Data { start, len } = item {
                        self.at_origin
                            .extend_from_slice(&frame[at + start..at + start + len]);
                    }
                    at += used;
                }
            }
            self.origin_takes();
        }

        fn origin_takes(&mut self) {
            if !self.opened {
                match Opening::decode(&self.at_origin).unwrap() {
                    None => return,
                    Some((Opening::Start { id, secret }, n)) => {
                        self.key = Some(Key::new(id, &secret));
                        self.at_origin.drain(..n);
                        self.origin_says(|o, out| {
                            Opening::Accept { received: 0 }.encode(out);
                            let _ = o;
                        });
                    }
                    Some((
                        Opening::Resume {
                            id,
                            secret,
                            received,
                        },
                        n,
                    )) => {
                        assert!(self.key.as_ref().unwrap().matches(&id, &secret));
                        self.at_origin.drain(..n);
                        self.origin.resume_from(received).unwrap();
                        self.origin_says(|o, out| {
                            Opening::Accept {
                                received: o.received(),
                            }
                            .encode(out)
                        });
                    }
                    Some(other) => panic!("{other:?}"),
                }
                self.opened = true;
            }
            let mut sink = Vec::new();
            let n = self
                .origin
                .receive(&self.at_origin, |p| {
                    sink.extend_from_slice(p);
                    p.len()
                })
                .unwrap();
            self.at_origin.drain(..n);
            self.service.extend_from_slice(&sink);
        }

        /// Origin → edge → client: records in one unmasked Binary frame.
        fn origin_says(&mut self, f: impl FnOnce(&mut Endpoint, &mut Vec<u8>)) {
            let mut records = Vec::new();
            f(&mut self.origin, &mut records);
            let mut frame = Vec::new();
            ws::encode_frame(&mut frame, ws::BINARY, &records, None);
            self.rx.push(&frame);
        }

        fn origin_sends(&mut self, data: &[u8]) {
            self.origin.push(data);
            self.origin_flushes();
        }

        fn origin_flushes(&mut self) {
            self.origin_says(|o, out| o.transmit(out, usize::MAX));
        }

        /// The edge's bytes into the client, the client's payload to stdout.
        fn client_reads(&mut self) -> Result<(), AccessError> {
            loop {
                let before = (self.rx.len(), self.stdout.len());
                self.client.handle_edge_input(&mut self.rx, self.now)?;
                loop {
                    let data = self.client.to_local().to_vec();
                    if data.is_empty() {
                        break;
                    }
                    self.stdout.extend_from_slice(&data);
                    self.client.local_written(data.len())?;
                }
                self.collect();
                if (self.rx.len(), self.stdout.len()) == before {
                    return Ok(());
                }
            }
        }

        fn ssh_writes(&mut self, data: &[u8]) {
            let got = self.client.local_fill(|b| {
                b[..data.len()].copy_from_slice(data);
                Ok(data.len())
            });
            assert_eq!(got.unwrap().unwrap(), data.len());
        }

        fn collect(&mut self) {
            while let Some(o) = self.client.poll_output() {
                self.outputs.push(o);
            }
        }

        fn advance(&mut self, d: Duration) -> Result<(), AccessError> {
            self.now += d;
            let r = self.client.handle_timeout(self.now);
            self.collect();
            r
        }

        /// The path dies: what was on its way is gone.
        fn lose_path(&mut self) {
            self.client.handle_edge_closed("test", self.now);
            self.collect();
            self.rx.consume(self.rx.len());
            self.at_origin.clear();
            self.edge_dec = Decoder::new(Role::Server);
            self.origin.detach();
            self.opened = false;
        }

        /// Waits for the client's Connect and answers it with a new carrier.
        fn reconnect(&mut self) {
            for _ in 0..20 {
                if let Some(Output::Connect { ask }) = self.outputs.last() {
                    let ask = Ask::parse(ask).expect("a valid header");
                    assert!(
                        matches!(ask, Ask::Resume { ref connector, .. } if connector == CONNECTOR)
                    );
                    self.client.connected(Some(CONNECTOR), self.now).unwrap();
                    self.outputs.clear();
                    return;
                }
                self.advance(Duration::from_millis(250)).unwrap();
            }
            panic!("no Connect after a loss: {:?}", self.outputs);
        }
    }

    #[test]
    fn bytes_flow_both_ways_through_records() {
        let mut p = Pipe::new();
        p.ssh_writes(b"SSH-2.0-client\r\n");
        p.client_sends();
        assert_eq!(
            p.service, b"SSH-2.0-client\r\n",
            "no wait for ACCEPT on a new stream"
        );
        p.origin_sends(b"SSH-2.0-server\r\n");
        p.client_reads().unwrap();
        assert_eq!(p.stdout, b"SSH-2.0-server\r\n");
        assert!(p.outputs.is_empty());
    }

    #[test]
    fn a_lost_path_is_resumed_and_every_byte_arrives_once() {
        let mut p = Pipe::new();
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let down: Vec<u8> = (0..500_000u32).map(|i| (i % 241) as u8).collect();
        p.client_sends();
        p.client_reads().unwrap();
        // Half of each way, then the path dies with more on its way.
        for c in up[..150_000].chunks(30_000) {
            p.ssh_writes(c);
        }
        p.client_sends();
        p.origin_sends(&down[..200_000]);
        p.client_reads().unwrap();
        for c in up[150_000..].chunks(30_000) {
            p.ssh_writes(c);
        }
        p.origin.push(&down[200_000..]);
        p.lose_path();
        assert_eq!(p.outputs.first(), Some(&Output::DropCarrier));
        assert!(!p.client.attached());
        p.reconnect();
        p.client_sends();
        p.client_reads().unwrap();
        p.origin_flushes();
        p.client_reads().unwrap();
        p.client_sends();
        assert_eq!(p.service, up, "client → origin exactly once, in order");
        assert_eq!(p.stdout, down, "origin → client exactly once, in order");
    }

    #[test]
    fn silence_is_a_dead_path_and_pings_go_out_meanwhile() {
        let mut p = Pipe::new();
        p.client_sends();
        p.client_reads().unwrap();
        p.advance(CARRIER_PING_INTERVAL).unwrap();
        let frame = p.client.poll_transmit().expect("a ping").to_vec();
        p.client.handle_edge_drained();
        assert_eq!(frame[0] & 0x0f, 0x9, "a Ping frame");
        p.advance(CARRIER_DEAD_AFTER).unwrap();
        assert_eq!(p.outputs.first(), Some(&Output::DropCarrier));
    }

    #[test]
    fn a_slow_reader_of_the_output_is_not_a_dead_path() {
        let mut p = Pipe::new();
        p.client_sends();
        // More than the records buffer holds, and ssh takes none of it.
        p.origin_sends(&vec![7u8; 2 * STREAM_SEND_BUFFER]);
        loop {
            let before = p.rx.len();
            p.client.handle_edge_input(&mut p.rx, p.now).unwrap();
            if p.rx.len() == before {
                break;
            }
        }
        assert!(!p.client.wants_edge_input(), "backpressure");
        for _ in 0..10 {
            p.advance(CARRIER_DEAD_AFTER).unwrap();
            p.client_sends();
        }
        assert!(p.client.attached(), "still attached: {:?}", p.outputs);
        assert!(!p.outputs.contains(&Output::DropCarrier));
        p.client_reads().unwrap();
        assert_eq!(p.stdout.len(), 2 * STREAM_SEND_BUFFER);
    }

    #[test]
    fn an_edge_that_keeps_refusing_ends_the_session_after_the_window() {
        let mut p = Pipe::new();
        p.client_sends();
        p.client_reads().unwrap();
        p.lose_path();
        let unavailable = || AccessError::Refused {
            hostname: "h".into(),
            status: 503,
            cause: "origin not connected".into(),
        };
        let mut waited = Duration::ZERO;
        let gave_up = loop {
            p.outputs.clear();
            if let Err(e) = p.advance(Duration::from_millis(250)) {
                break e;
            }
            waited += Duration::from_millis(250);
            if matches!(p.outputs.last(), Some(Output::Connect { .. })) {
                if let Err(e) = p.client.connect_failed(unavailable(), p.now) {
                    break e;
                }
            }
            assert!(
                waited < RESUME_WINDOW + Duration::from_secs(3),
                "never gave up"
            );
        };
        assert!(
            matches!(gave_up, AccessError::NotResumed { .. }),
            "{gave_up}"
        );
        assert!(
            waited >= RESUME_WINDOW - Duration::from_secs(1),
            "gave up after {waited:?}"
        );
        // A refusal that waiting cannot change ends it at once.
        let mut p = Pipe::new();
        p.lose_path();
        p.advance(Duration::ZERO).unwrap();
        let forbidden = AccessError::Refused {
            hostname: "h".into(),
            status: 403,
            cause: "revoked".into(),
        };
        assert!(matches!(
            p.client.connect_failed(forbidden, p.now),
            Err(AccessError::Refused { status: 403, .. })
        ));
    }

    #[test]
    fn a_close_with_an_error_ends_the_session_with_its_reason() {
        let mut p = Pipe::new();
        let mut frame = Vec::new();
        ws::encode_close(
            &mut frame,
            ws::close::TRY_AGAIN,
            "resume refused: \x1b[31m",
            None,
        );
        p.rx.push(&frame);
        let e = p.client_reads().unwrap_err();
        assert!(e.to_string().contains("resume refused"), "{e}");
        assert!(!e.to_string().contains('\x1b'), "escaped: {e:?}");
    }

    #[test]
    fn the_origins_fin_finishes_and_the_farewell_carries_our_fin() {
        let mut p = Pipe::new();
        p.client_sends();
        p.origin_sends(b"bye\n");
        p.origin.close_write();
        p.origin_flushes();
        p.client_reads().unwrap();
        assert_eq!(p.stdout, b"bye\n");
        assert_eq!(p.outputs, vec![Output::Finished]);
        let mut farewell = p.client.farewell().to_vec();
        let mut records = Vec::new();
        let mut at = 0;
        let mut closed = false;
        while let Ok(Some((item, used))) = p.edge_dec.poll(&mut farewell[at..], 1 << 20) {
            match item {
                Item::Data { start, len } => {
                    records.extend_from_slice(&farewell[at + start..at + start + len])
                }
                Item::Close { code, .. } => closed = code == ws::close::NORMAL,
                _ => {}
            }
            at += used;
        }
        assert!(closed, "a normal Close after the records");
        p.origin.receive(&records, |d| d.len()).unwrap();
        assert!(p.origin.finished(), "the origin has our ack and FIN");
    }
}
