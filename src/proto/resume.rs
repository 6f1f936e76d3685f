//! Resumable streams: a small record layer that the client and the origin speak inside one
//! stream, end to end, so that the stream outlives the carrier and the tunnel connection that
//! carry it (docs/design.md §2.6).
//!
//! The edge relays these bytes like any others; it keeps nothing. Each side keeps what it sent
//! until the peer acknowledges it (a cumulative offset), in a bounded replay buffer. When the
//! path dies, the client connects again (any edge), and the first records on the new path say
//! where each side stands; both replay from there.
//!
//! ```text
//!  client ─▶ origin   START  id[16] secret[32]                first record of a new stream
//!                     RESUME id[16] secret[32] received:u64   first record of a later carrier
//!  origin ─▶ client   ACCEPT received:u64                     first record of every carrier
//!  both ways          DATA   len:u32 bytes (len ≤ MAX_DATA)
//!                     ACK    received:u64                     cumulative payload bytes taken
//!                     FIN                                     no more DATA this way
//! ```
//!
//! Offsets count payload bytes only, from 0 at START. `received` is what the side has handed
//! to its application (the service socket, ssh's stdout): bytes parsed but not yet handed over
//! when a path dies are sent again. A RESUME or ACCEPT offset below what the peer already
//! acknowledged, or beyond what was ever sent, is refused ([`ResumeError::Offset`]); so is an
//! ACK beyond what was sent.
//!
//! Who may resume: the origin keeps only the SHA-256 of the secret ([`Key`]) and compares in
//! constant time; a stream identity without its secret is useless, and the secret never leaves
//! the two ends' TLS sessions (the edge between them sees it, as it sees every byte).

use std::io;

use ring::digest;

use crate::limits::{REPLAY_BUFFER, RESUME_ACK_EVERY};

pub const ID_LEN: usize = 16;
pub const SECRET_LEN: usize = 32;
/// Largest DATA payload.
pub const MAX_DATA: usize = 64 * 1024;

const START: u8 = 1;
const RESUME: u8 = 2;
const ACCEPT: u8 = 3;
const DATA: u8 = 4;
const ACK: u8 = 5;
const FIN: u8 = 6;

/// Bytes of a DATA record's header.
pub const DATA_HEADER: usize = 5;
/// Bytes of an ACK record.
pub const ACK_LEN: usize = 9;
/// The most record bytes [`Endpoint::frame_direct`] puts before its payload: an ACK and a
/// DATA header.
pub const DIRECT_HEAD: usize = ACK_LEN + DATA_HEADER;

/// The header of a DATA record of `n` payload bytes (at most [`MAX_DATA`]).
fn data_header(n: usize) -> [u8; DATA_HEADER] {
    let mut h = [DATA; DATA_HEADER];
    h[1..].copy_from_slice(&(n as u32).to_be_bytes());
    h
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeError {
    /// A record type this side never receives here, or not at this point.
    Unexpected(u8),
    /// A DATA record longer than [`MAX_DATA`].
    TooLong(u32),
    /// DATA after FIN.
    AfterFin,
    /// An offset outside what this side can replay or has sent.
    Offset { got: u64, low: u64, high: u64 },
    /// RESUME with an identity this side does not hold, or the wrong secret.
    Refused,
}

impl std::fmt::Display for ResumeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResumeError::Unexpected(t) => write!(f, "unexpected resume record type {t}"),
            ResumeError::TooLong(n) => {
                write!(f, "resume DATA record of {n} bytes (limit {MAX_DATA})")
            }
            ResumeError::AfterFin => f.write_str("resume DATA after FIN"),
            ResumeError::Offset { got, low, high } => write!(
                f,
                "resume offset {got} outside what can be replayed ({low}..={high})"
            ),
            ResumeError::Refused => f.write_str("unknown stream or wrong resume secret"),
        }
    }
}

impl std::error::Error for ResumeError {}

/// The first record on a carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    Start {
        id: [u8; ID_LEN],
        secret: [u8; SECRET_LEN],
    },
    Resume {
        id: [u8; ID_LEN],
        secret: [u8; SECRET_LEN],
        received: u64,
    },
    Accept {
        received: u64,
    },
}

impl Opening {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Opening::Start { id, secret } => {
                out.push(START);
                out.extend_from_slice(id);
                out.extend_from_slice(secret);
            }
            Opening::Resume {
                id,
                secret,
                received,
            } => {
                out.push(RESUME);
                out.extend_from_slice(id);
                out.extend_from_slice(secret);
                out.extend_from_slice(&received.to_be_bytes());
            }
            Opening::Accept { received } => {
                out.push(ACCEPT);
                out.extend_from_slice(&received.to_be_bytes());
            }
        }
    }

    /// Decodes the opening record at the front of `input`: `Ok(None)` until it is whole, then
    /// the record and its length. Anything else first is an error.
    pub fn decode(input: &[u8]) -> Result<Option<(Opening, usize)>, ResumeError> {
        let Some(&ty) = input.first() else {
            return Ok(None);
        };
        let len = match ty {
            START => 1 + ID_LEN + SECRET_LEN,
            RESUME => 1 + ID_LEN + SECRET_LEN + 8,
            ACCEPT => 1 + 8,
            t => return Err(ResumeError::Unexpected(t)),
        };
        if input.len() < len {
            return Ok(None);
        }
        let body = &input[1..len];
        let opening = match ty {
            START => Opening::Start {
                id: array(&body[..ID_LEN]),
                secret: array(&body[ID_LEN..]),
            },
            RESUME => Opening::Resume {
                id: array(&body[..ID_LEN]),
                secret: array(&body[ID_LEN..ID_LEN + SECRET_LEN]),
                received: u64_at(&body[ID_LEN + SECRET_LEN..]),
            },
            _ => Opening::Accept {
                received: u64_at(body),
            },
        };
        Ok(Some((opening, len)))
    }
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

fn u64_at(b: &[u8]) -> u64 {
    u64::from_be_bytes(array(b))
}

/// The upgrade request's header that asks for a resumable stream, and the 101 answer's header
/// that grants one (naming the origin connector that holds it).
pub const HEADER: &str = "Postern-Resume";

/// What a client's `Postern-Resume` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// `start`: a new resumable stream.
    Start,
    /// `resume connector=<32 hex> stream=<32 hex>`: a later carrier of an existing stream, to
    /// the origin connector that holds it.
    Resume {
        connector: String,
        stream: [u8; ID_LEN],
    },
}

impl Ask {
    /// Parses the header's value; `None` if it is not one of the two forms.
    pub fn parse(value: &str) -> Option<Ask> {
        let mut words = value.split_ascii_whitespace();
        match words.next()? {
            "start" => words.next().is_none().then_some(Ask::Start),
            "resume" => {
                let connector = words.next()?.strip_prefix("connector=")?;
                let stream = words.next()?.strip_prefix("stream=")?;
                if words.next().is_some() || connector.len() != 2 * ID_LEN {
                    return None;
                }
                let stream = unhex::<ID_LEN>(stream)?;
                unhex::<ID_LEN>(connector)?;
                Some(Ask::Resume {
                    connector: connector.to_ascii_lowercase(),
                    stream,
                })
            }
            _ => None,
        }
    }

    /// The header's value.
    pub fn value(&self) -> String {
        match self {
            Ask::Start => "start".into(),
            Ask::Resume { connector, stream } => {
                format!("resume connector={connector} stream={}", hex(stream))
            }
        }
    }
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from exactly `2 * N` hex digits.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// What the origin keeps to recognise a stream's owner: the identity and a hash of the secret.
#[derive(Clone)]
pub struct Key {
    pub id: [u8; ID_LEN],
    hash: [u8; 32],
}

impl Key {
    pub fn new(id: [u8; ID_LEN], secret: &[u8; SECRET_LEN]) -> Key {
        Key {
            id,
            hash: sha256(secret),
        }
    }

    /// True if `id` and `secret` are this stream's (constant time in the secret).
    pub fn matches(&self, id: &[u8; ID_LEN], secret: &[u8; SECRET_LEN]) -> bool {
        use subtle::ConstantTimeEq;
        let same_id = self.id.ct_eq(id);
        let same_secret = self.hash.ct_eq(&sha256(secret));
        (same_id & same_secret).into()
    }

    /// The identity as short hex, for logs (never the secret).
    pub fn label(&self) -> String {
        self.id[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.label())
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    array(digest::digest(&digest::SHA256, b).as_ref())
}

/// Where the parser stands inside the record stream of the current path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rx {
    /// At a record boundary.
    Boundary,
    /// Inside a DATA payload, this many bytes still to come.
    Payload(u32),
}

/// One side of a resumable stream: its replay buffer and both directions' offsets. No IO.
///
/// Sending: the application's bytes go into the replay buffer ([`Endpoint::fill`] or
/// [`Endpoint::push`]), [`Endpoint::transmit`] frames what the current path has not had, an
/// ACK trims the buffer. Receiving: [`Endpoint::parse`] eats control records and DATA headers,
/// [`Endpoint::payload_len`] says how much payload is at the front, [`Endpoint::delivered`]
/// counts what the application took.
#[derive(Debug)]
pub struct Endpoint {
    /// Unacknowledged bytes, `buf[start..end]`: offsets `acked .. acked + end - start`.
    /// What lies past `end` is spare room, zeroed once when the buffer grew: a read goes
    /// there without zeroing it again (a `resize` per read zeroed 64 KiB for every read of a
    /// few KiB, a fifth of the origin's instructions; docs/design.md §2.8).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The peer has taken everything before this offset.
    acked: u64,
    /// Sent on the current path up to this offset.
    framed: u64,
    /// The application has no more to send.
    eof: bool,
    fin_sent: bool,
    /// Payload handed to the application.
    received: u64,
    /// What our last ACK (or opening record) told the peer.
    ack_told: u64,
    ack_wanted: bool,
    peer_fin: bool,
    rx: Rx,
}

impl Default for Endpoint {
    fn default() -> Self {
        Self::new()
    }
}

impl Endpoint {
    pub fn new() -> Endpoint {
        Endpoint {
            buf: Vec::new(),
            start: 0,
            end: 0,
            acked: 0,
            framed: 0,
            eof: false,
            fin_sent: false,
            received: 0,
            ack_told: 0,
            ack_wanted: false,
            peer_fin: false,
            rx: Rx::Boundary,
        }
    }

    fn unacked(&self) -> usize {
        self.end - self.start
    }

    /// Offset one past the last byte the application gave.
    pub fn sent_total(&self) -> u64 {
        self.acked + self.unacked() as u64
    }

    /// Payload bytes handed to the application so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes held for replay.
    pub fn buffered(&self) -> usize {
        self.unacked()
    }

    /// Room for more of the application's bytes (0: stop reading it, backpressure).
    pub fn room(&self) -> usize {
        if self.eof {
            0
        } else {
            REPLAY_BUFFER - self.unacked()
        }
    }

    /// Reads once from the application with `read`, straight into the replay buffer (at most
    /// [`MAX_DATA`] bytes). The room `read` gets is not zeroed: it may hold this stream's own
    /// acknowledged bytes, and only the `n` bytes `read` says it wrote count. `None` when there
    /// is no room or the application has ended. `Some(Ok(0))` is the application's EOF.
    pub fn fill(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> Option<io::Result<usize>> {
        let want = self.room().min(MAX_DATA);
        if want == 0 {
            return None;
        }
        self.compact();
        let at = self.end;
        if self.buf.len() < at + want {
            self.buf.resize(at + want, 0);
        }
        let got = read(&mut self.buf[at..at + want]);
        self.end += (*got.as_ref().unwrap_or(&0)).min(want);
        if matches!(got, Ok(0)) {
            self.eof = true;
        }
        Some(got)
    }

    /// Copies as much of `data` as there is room for; returns how much.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = self.room().min(data.len());
        if n > 0 {
            self.compact();
            let at = self.end;
            if self.buf.len() < at + n {
                self.buf.resize(at + n, 0);
            }
            self.buf[at..at + n].copy_from_slice(&data[..n]);
            self.end += n;
        }
        n
    }

    /// The application has no more to send: FIN follows the last DATA.
    pub fn close_write(&mut self) {
        self.eof = true;
    }

    /// True once the application ended and the FIN went out on the current path.
    pub fn write_closed(&self) -> bool {
        self.fin_sent
    }

    /// The peer sent FIN and all its payload was delivered.
    pub fn read_closed(&self) -> bool {
        self.peer_fin
    }

    /// Everything sent was acknowledged and both directions are closed: nothing left to
    /// resume.
    pub fn finished(&self) -> bool {
        self.peer_fin && self.fin_sent && self.unacked() == 0
    }

    /// Drops the acknowledged front when it is most of the buffer, and gives memory back
    /// when nothing waits.
    fn compact(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.capacity() > 4 * MAX_DATA {
                self.buf.truncate(MAX_DATA);
                self.buf.shrink_to(MAX_DATA);
            }
        } else if self.start > 0 && self.start >= self.end / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Asks for an ACK at the next [`Endpoint::transmit`] if the peer does not know all we
    /// took (the owner calls this on a timer, so a one-way stream is acknowledged too).
    pub fn request_ack(&mut self) {
        if self.received > self.ack_told {
            self.ack_wanted = true;
        }
    }

    /// True if [`Endpoint::transmit`] would produce something.
    pub fn wants_transmit(&self) -> bool {
        self.ack_wanted
            || self.received - self.ack_told >= RESUME_ACK_EVERY
            || self.framed < self.sent_total()
            || (self.eof && !self.fin_sent)
    }

    /// Appends records for the current path to `out`, at most about `max` bytes of payload:
    /// an ACK when one is due (or rides along with DATA), then DATA, then FIN.
    pub fn transmit(&mut self, out: &mut Vec<u8>, max: usize) {
        let unsent = (self.sent_total() - self.framed) as usize;
        let ack_due = self.ack_wanted || self.received - self.ack_told >= RESUME_ACK_EVERY;
        if (ack_due || unsent > 0) && self.received > self.ack_told {
            out.extend_from_slice(&self.take_ack());
        }
        self.ack_wanted = false;
        let mut budget = max;
        while budget > 0 && self.framed < self.sent_total() {
            let from = self.start + (self.framed - self.acked) as usize;
            let n = (self.end - from).min(MAX_DATA).min(budget);
            out.extend_from_slice(&data_header(n));
            out.extend_from_slice(&self.buf[from..from + n]);
            self.framed += n as u64;
            budget -= n;
        }
        if self.eof && !self.fin_sent && self.framed == self.sent_total() {
            out.push(FIN);
            self.fin_sent = true;
        }
    }

    /// Record bytes [`Endpoint::frame_direct`] puts before its payload now: a DATA header,
    /// and an ACK when one is owed.
    pub fn direct_head_len(&self) -> usize {
        if self.received > self.ack_told {
            DIRECT_HEAD
        } else {
            DATA_HEADER
        }
    }

    /// Bytes the application gave that the current path has not had yet.
    pub fn unsent(&self) -> usize {
        (self.sent_total() - self.framed) as usize
    }

    /// Frames the front of the unsent bytes as one DATA record (at most `max` record bytes,
    /// header included), an ACK before it when the peer does not know all we took, as
    /// [`Endpoint::transmit`] would, but without copying the payload: returns the records'
    /// head (`head[..len]`) and the payload's length; [`Endpoint::last_framed`] is the
    /// payload, in the replay buffer, for the caller to send right after the head
    /// (docs/design.md §2.8). `None` when nothing is unsent or `max` leaves no room for a
    /// payload byte.
    pub fn frame_direct(&mut self, max: usize) -> Option<([u8; DIRECT_HEAD], usize, usize)> {
        let len = self.direct_head_len() - DATA_HEADER;
        let n = self
            .unsent()
            .min(MAX_DATA)
            .min(max.saturating_sub(len + DATA_HEADER));
        if n == 0 {
            return None;
        }
        let mut head = [0u8; DIRECT_HEAD];
        if len > 0 {
            head[..ACK_LEN].copy_from_slice(&self.take_ack());
        }
        self.ack_wanted = false;
        head[len..len + DATA_HEADER].copy_from_slice(&data_header(n));
        self.framed += n as u64;
        Some((head, len + DATA_HEADER, n))
    }

    /// The ACK record of everything we took; from now on the peer is counted as knowing it.
    fn take_ack(&mut self) -> [u8; ACK_LEN] {
        let mut ack = [ACK; ACK_LEN];
        ack[1..].copy_from_slice(&self.received.to_be_bytes());
        self.ack_told = self.received;
        ack
    }

    /// The last `n` bytes framed (at most what is unacknowledged).
    pub fn last_framed(&self, n: usize) -> &[u8] {
        let end = self.start + (self.framed - self.acked) as usize;
        &self.buf[end - n..end]
    }

    /// Eats control records and DATA headers at the front of `input`; returns how many bytes
    /// were eaten (the caller drops them). Stops at the first payload byte, at a partial
    /// record, or at the end.
    pub fn parse(&mut self, input: &[u8]) -> Result<usize, ResumeError> {
        let mut at = 0;
        while self.rx == Rx::Boundary {
            let rest = &input[at..];
            let Some(&ty) = rest.first() else { break };
            let need = match ty {
                DATA => DATA_HEADER,
                ACK => ACK_LEN,
                FIN => 1,
                t => return Err(ResumeError::Unexpected(t)),
            };
            if rest.len() < need {
                break;
            }
            match ty {
                DATA => {
                    if self.peer_fin {
                        return Err(ResumeError::AfterFin);
                    }
                    let len = u32::from_be_bytes(array(&rest[1..5]));
                    if len as usize > MAX_DATA {
                        return Err(ResumeError::TooLong(len));
                    }
                    if len > 0 {
                        self.rx = Rx::Payload(len);
                    }
                }
                ACK => self.acknowledged(u64_at(&rest[1..9]))?,
                _ => self.peer_fin = true,
            }
            at += need;
        }
        Ok(at)
    }

    fn acknowledged(&mut self, offset: u64) -> Result<(), ResumeError> {
        if offset > self.framed {
            return Err(ResumeError::Offset {
                got: offset,
                low: self.acked,
                high: self.framed,
            });
        }
        if offset > self.acked {
            self.start += (offset - self.acked) as usize;
            self.acked = offset;
            if self.start == self.end {
                self.compact();
            }
        }
        Ok(())
    }

    /// Payload bytes of the current DATA record among the first `available` bytes (after
    /// [`Endpoint::parse`]).
    pub fn payload_len(&self, available: usize) -> usize {
        match self.rx {
            Rx::Payload(n) => available.min(n as usize),
            Rx::Boundary => 0,
        }
    }

    /// The application took `n` bytes of the payload (at most [`Endpoint::payload_len`]).
    pub fn delivered(&mut self, n: usize) {
        let Rx::Payload(left) = self.rx else {
            assert_eq!(n, 0, "bug: delivered payload outside a DATA record");
            return;
        };
        let left = left - n as u32;
        self.received += n as u64;
        self.rx = if left == 0 {
            Rx::Boundary
        } else {
            Rx::Payload(left)
        };
    }

    /// Parses `input` and hands payload to `deliver` (which returns how much it took);
    /// returns how many bytes of `input` were consumed. Stops when `deliver` takes less than
    /// it was offered.
    pub fn receive(
        &mut self,
        input: &[u8],
        mut deliver: impl FnMut(&[u8]) -> usize,
    ) -> Result<usize, ResumeError> {
        let mut at = 0;
        loop {
            at += self.parse(&input[at..])?;
            let p = self.payload_len(input.len() - at);
            if p == 0 {
                return Ok(at);
            }
            let took = deliver(&input[at..at + p]).min(p);
            self.delivered(took);
            at += took;
            if took < p {
                return Ok(at);
            }
        }
    }

    /// The path died: whatever was half parsed is dropped (the peer sends it again).
    pub fn detach(&mut self) {
        self.rx = Rx::Boundary;
    }

    /// A new path: the peer says it has taken `peer_received` bytes; replay from there. The
    /// opening record we send on this path tells the peer our [`Endpoint::received`].
    pub fn resume_from(&mut self, peer_received: u64) -> Result<(), ResumeError> {
        if peer_received < self.acked || peer_received > self.framed {
            return Err(ResumeError::Offset {
                got: peer_received,
                low: self.acked,
                high: self.framed,
            });
        }
        self.acknowledged(peer_received)?;
        self.framed = peer_received;
        self.fin_sent = false;
        self.rx = Rx::Boundary;
        self.ack_told = self.received;
        self.ack_wanted = false;
        Ok(())
    }
}

#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub fn fuzz_records(data: &[u8]) {
    let _ = Opening::decode(data);
    let mut ep = Endpoint::new();
    ep.push(&[7u8; 300]);
    let mut out = Vec::new();
    ep.transmit(&mut out, 200);
    let mut rest = data;
    let mut taken = 0u64;
    while let Ok(n) = ep.receive(rest, |p| {
        let k = p.len().div_ceil(2);
        taken += k as u64;
        k
    }) {
        if n == 0 {
            break;
        }
        rest = &rest[n..];
    }
    assert_eq!(ep.received(), taken);
    assert!(ep.buffered() <= REPLAY_BUFFER);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moves everything `a` wants to send into `b`, delivering into `sink`.
    fn carry(a: &mut Endpoint, b: &mut Endpoint, sink: &mut Vec<u8>) -> Result<(), ResumeError> {
        let mut wire = Vec::new();
        a.transmit(&mut wire, usize::MAX);
        let n = b.receive(&wire, |p| {
            sink.extend_from_slice(p);
            p.len()
        })?;
        assert_eq!(n, wire.len());
        Ok(())
    }

    #[test]
    fn openings_round_trip_and_wait_for_whole_records() {
        for o in [
            Opening::Start {
                id: [1; 16],
                secret: [2; 32],
            },
            Opening::Resume {
                id: [3; 16],
                secret: [4; 32],
                received: 1 << 40,
            },
            Opening::Accept { received: 77 },
        ] {
            let mut wire = Vec::new();
            o.encode(&mut wire);
            wire.extend_from_slice(b"rest");
            for cut in 0..wire.len() - 4 {
                assert_eq!(Opening::decode(&wire[..cut]), Ok(None));
            }
            assert_eq!(Opening::decode(&wire), Ok(Some((o, wire.len() - 4))));
        }
        assert_eq!(
            Opening::decode(&[DATA, 0]),
            Err(ResumeError::Unexpected(DATA))
        );
    }

    #[test]
    fn bytes_flow_and_acks_trim_the_replay_buffer() {
        let (mut a, mut b) = (Endpoint::new(), Endpoint::new());
        let mut got = Vec::new();
        assert_eq!(a.push(b"hello "), 6);
        assert_eq!(a.push(b"world"), 5);
        carry(&mut a, &mut b, &mut got).unwrap();
        assert_eq!(got, b"hello world");
        assert_eq!(a.buffered(), 11, "kept until acknowledged");
        assert!(
            !b.wants_transmit(),
            "a small one-way stream acks on the timer only"
        );
        b.request_ack();
        carry(&mut b, &mut a, &mut Vec::new()).unwrap();
        assert_eq!(a.buffered(), 0);
        assert!(!a.wants_transmit());
    }

    /// Reads of every size into spare room that earlier reads left behind (it is not zeroed
    /// again), acknowledgements that slide the buffer while bytes wait, and a drained buffer
    /// that gives its memory back: every byte arrives once, in order.
    #[test]
    fn reads_into_reused_room_carry_every_byte_in_order() {
        let (mut a, mut b) = (Endpoint::new(), Endpoint::new());
        let (mut next, mut sink) = (0u8, Vec::new());
        let mut sent = Vec::new();
        for round in 0..400usize {
            let len = [1, 7, 4096, MAX_DATA, 30_000, 513][round % 6];
            let got = a.fill(|room| {
                assert!(room.len() <= MAX_DATA);
                let n = len.min(room.len());
                for byte in &mut room[..n] {
                    *byte = next;
                    next = next.wrapping_add(1);
                }
                sent.extend_from_slice(&room[..n]);
                Ok(n)
            });
            assert!(matches!(got, Some(Ok(_))), "round {round}: no room");
            carry(&mut a, &mut b, &mut sink).unwrap();
            if round % 3 == 0 {
                b.request_ack(); // On every third round only: bytes wait while others come.
                carry(&mut b, &mut a, &mut Vec::new()).unwrap();
            }
            assert!(a.buf.len() <= 2 * REPLAY_BUFFER + MAX_DATA, "bounded");
        }
        assert_eq!(sink, sent);
        b.request_ack();
        carry(&mut b, &mut a, &mut Vec::new()).unwrap();
        assert_eq!(a.buffered(), 0);
        a.push(b"x");
        assert!(
            a.buf.capacity() <= 4 * MAX_DATA,
            "memory given back once drained"
        );
        carry(&mut a, &mut b, &mut sink).unwrap();
        assert_eq!(sink.last(), Some(&b'x'));
    }

    /// A record framed from the replay buffer reads, at the peer, as `transmit`'s would: its
    /// ACK first when one is owed, then the payload, in order with the records around it, and
    /// within the room it was given.
    #[test]
    fn records_framed_in_place_read_like_transmitted_ones() {
        let data: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        // `a` took 7 bytes of b's and has not acknowledged them.
        let (mut a, mut b) = (Endpoint::new(), Endpoint::new());
        b.push(b"seven!!");
        carry(&mut b, &mut a, &mut Vec::new()).unwrap();
        assert_eq!(a.push(&data), data.len());
        assert_eq!(a.frame_direct(DIRECT_HEAD), None, "no room for a byte");
        assert_eq!(a.direct_head_len(), DIRECT_HEAD, "an ACK is owed");
        let mut wire = Vec::new();
        let (head, len, n) = a.frame_direct(40_000).unwrap();
        let payload = a.last_framed(n);
        assert_eq!((len, payload.len()), (DIRECT_HEAD, 40_000 - DIRECT_HEAD));
        assert_eq!(head[0], ACK, "the ACK owed rides in front");
        wire.extend_from_slice(&head[..len]);
        wire.extend_from_slice(payload);
        assert_eq!(a.direct_head_len(), DATA_HEADER, "the ACK went");
        a.transmit(&mut wire, 1000); // one batched record in between
        let (head, len, n) = a.frame_direct(usize::MAX).unwrap();
        let payload = a.last_framed(n);
        assert_eq!(
            (len, payload.len()),
            (DATA_HEADER, MAX_DATA),
            "one record at most"
        );
        wire.extend_from_slice(&head[..len]);
        wire.extend_from_slice(payload);
        a.close_write();
        a.transmit(&mut wire, usize::MAX); // the rest, and FIN
        assert_eq!(a.frame_direct(usize::MAX), None, "nothing unsent");
        let mut got = Vec::new();
        let n = b
            .receive(&wire, |p| {
                got.extend_from_slice(p);
                p.len()
            })
            .unwrap();
        assert_eq!(n, wire.len());
        assert_eq!(got, data);
        assert!(b.read_closed());
        assert_eq!(b.buffered(), 0, "the ACK trimmed b's replay buffer");
    }

    #[test]
    fn a_full_replay_buffer_stops_the_reader_until_acknowledged() {
        let (mut a, mut b) = (Endpoint::new(), Endpoint::new());
        let chunk = vec![9u8; MAX_DATA];
        let mut pushed = 0;
        while a.room() > 0 {
            pushed += a.push(&chunk);
        }
        assert_eq!(pushed, REPLAY_BUFFER);
        assert_eq!(a.fill(|_| unreachable!()).map(|r| r.is_ok()), None);
        let mut sink = Vec::new();
        carry(&mut a, &mut b, &mut sink).unwrap();
        assert_eq!(sink.len(), REPLAY_BUFFER);
        assert_eq!(a.room(), 0, "sent is not acknowledged");
        assert!(b.wants_transmit(), "a large backlog acks without the timer");
        carry(&mut b, &mut a, &mut Vec::new()).unwrap();
        assert_eq!(a.room(), REPLAY_BUFFER);
    }

    #[test]
    fn a_lost_path_is_replayed_from_every_offset() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for lost_at in [0usize, 1, 4, 5, 6, 70_000, 131_077, 199_999] {
            let (mut a, mut b) = (Endpoint::new(), Endpoint::new());
            let mut pushed = 0;
            while pushed < data.len() {
                pushed += a.push(&data[pushed..]);
            }
            a.close_write();
            let mut wire = Vec::new();
            a.transmit(&mut wire, usize::MAX);
            // The path dies after `lost_at` bytes of records, and b has delivered some of
            // what it parsed.
            let mut sink = Vec::new();
            b.receive(&wire[..lost_at.min(wire.len())], |p| {
                let k = p.len().min(1000);
                sink.extend_from_slice(&p[..k]);
                k
            })
            .unwrap();
            a.detach();
            b.detach();
            // New path: each tells the other what it took.
            a.resume_from(b.received()).unwrap();
            b.resume_from(a.received()).unwrap();
            for _ in 0..100 {
                carry(&mut a, &mut b, &mut sink).unwrap();
                b.request_ack();
                b.close_write();
                carry(&mut b, &mut a, &mut Vec::new()).unwrap();
            }
            assert_eq!(sink, data, "lost at {lost_at}");
            assert!(b.read_closed());
            assert!(a.finished() && b.read_closed());
        }
    }

    #[test]
    fn offsets_outside_the_buffer_are_refused() {
        let (mut a, mut b) = (Endpoint::new(), Endpoint::new());
        a.push(b"0123456789");
        carry(&mut a, &mut b, &mut Vec::new()).unwrap();
        b.request_ack();
        carry(&mut b, &mut a, &mut Vec::new()).unwrap();
        a.push(b"abc");
        let mut w = Vec::new();
        a.transmit(&mut w, usize::MAX);
        assert!(matches!(
            a.resume_from(9),
            Err(ResumeError::Offset {
                got: 9,
                low: 10,
                high: 13
            })
        ));
        assert!(matches!(a.resume_from(14), Err(ResumeError::Offset { .. })));
        assert_eq!(a.resume_from(11), Ok(()));
        // An ACK beyond what was sent is a protocol error.
        let mut c = Endpoint::new();
        let mut ack = vec![ACK];
        ack.extend_from_slice(&5u64.to_be_bytes());
        assert!(matches!(c.parse(&ack), Err(ResumeError::Offset { .. })));
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        let mut e = Endpoint::new();
        assert_eq!(e.parse(&[START]), Err(ResumeError::Unexpected(START)));
        let mut long = vec![DATA];
        long.extend_from_slice(&(MAX_DATA as u32 + 1).to_be_bytes());
        assert_eq!(
            Endpoint::new().parse(&long),
            Err(ResumeError::TooLong(MAX_DATA as u32 + 1))
        );
        let mut after = vec![FIN, DATA];
        after.extend_from_slice(&1u32.to_be_bytes());
        assert_eq!(Endpoint::new().parse(&after), Err(ResumeError::AfterFin));
    }

    #[test]
    fn the_header_has_two_forms_and_nothing_else() {
        assert_eq!(Ask::parse("start"), Some(Ask::Start));
        let ask = Ask::Resume {
            connector: "ab".repeat(16),
            stream: [0xcd; 16],
        };
        assert_eq!(Ask::parse(&ask.value()), Some(ask));
        for bad in [
            "",
            "start now",
            "resume",
            "resume connector=ab stream=cd",
            &format!(
                "resume stream={} connector={}",
                "cd".repeat(16),
                "ab".repeat(16)
            ),
            &format!(
                "resume connector={} stream={}",
                "zz".repeat(16),
                "cd".repeat(16)
            ),
            &format!(
                "resume connector={} stream={} x",
                "ab".repeat(16),
                "cd".repeat(16)
            ),
        ] {
            assert_eq!(Ask::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_key_matches_only_its_identity_and_secret() {
        let k = Key::new([1; 16], &[2; 32]);
        assert!(k.matches(&[1; 16], &[2; 32]));
        assert!(!k.matches(&[1; 16], &[3; 32]));
        assert!(!k.matches(&[0; 16], &[2; 32]));
        assert!(!format!("{k:?}").contains("0202"));
    }
}
