//! The client's splice, sans-IO: one carrier (WebSocket over TLS, already upgraded) and one
//! local endpoint (ssh's stdio or an accepted TCP connection). This file decides; the driver
//! (`driver.rs`) reads and writes the sockets and hands the bytes in and out.
//!
//! ```text
//!  local ──handle_local_input(bytes)──▶ masked Binary frame header (payload masked in place) ──▶ edge
//!  local ◀──to_local() / local_written(n)── out (bounded) ◀──handle_edge_input(plaintext)── edge
//!            poll_output(): ToEdge(pong | close) | ShutdownLocalRead | ShutdownLocalWrite | Finished
//! ```
//!
//! Per direction:
//!
//! ```text
//!  local → edge:  Open ──local EOF──▶ Closed (our Close sent, local reading shut)
//!  edge → local:  Open ──edge's Close, out drained──▶ Closed (local write shut)
//!  both Closed ──▶ Finished (the driver sends close_notify and ends the session)
//! ```
//!
//! Close semantics by local endpoint ([`LocalKind`]): a TCP peer takes a half-close, so the
//! edge's Close becomes a FIN and the local side may still send (`access tcp`). Stdout cannot
//! be half-closed (see `Local::shutdown_write`): ssh sees EOF only when we exit, and it would
//! not close our stdin before it saw one, so with stdio the edge's Close ends the session once
//! its bytes are written (`access ssh`).
//!
//! Backpressure, both ways, with bounded buffers:
//! - edge → local: at most [`STREAM_SEND_BUFFER`] bytes wait for the local side; when they
//!   fill it, [`Splice::wants_edge_input`] is false and decoding stops, so the TLS buffer
//!   fills and the driver stops reading the edge's socket (its TCP window closes).
//! - local → edge: one frame at a time. After a frame (or a pong or Close) is handed out,
//!   [`Splice::wants_local_input`] is false until the driver reports with
//!   [`Splice::handle_edge_drained`] that the TLS layer passed it to the socket.
//!
//! Pings from the edge are answered with a Pong; while our previous frame is still on its
//! way, only the latest ping waits for an answer (RFC 6455 §5.5.3), so an edge that pings
//! and does not read cannot grow our memory.
//!
//! Time: the client keeps no timers of its own. An idle session stays up however long it is
//! quiet (ssh's `ServerAliveInterval` and the edge decide about idle peers), so
//! [`Splice::poll_timeout`] is always `None`; the methods exist so that the driver's loop has
//! the shape every role's has.
//!
//! Errors end the session: the driver drops it after the first `Err`.

use std::collections::VecDeque;
use std::time::Instant;

use crate::io::random_bytes;
use crate::limits::{STREAM_SEND_BUFFER, TLS_RECORD};
use crate::logging::untrusted;
use crate::proto::buf::Buf;
use crate::proto::mux;
use crate::proto::ws::{self, Decoder, Item, Role};

use super::AccessError;

/// Largest payload of one client frame, read from the local side in one syscall: with its
/// 8-byte masked header it fits four TLS records (no small record trailing each frame), and
/// so does the edge's DATA frame of it, whose header is [`mux::HEADER_LEN`] (10) bytes, when
/// the edge frames it straight from the client's record (docs/design.md §2.8, "The other way
/// through each").
pub const LOCAL_READ: usize = 4 * TLS_RECORD - mux::HEADER_LEN;

/// What the local end is, which decides what the edge's Close does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalKind {
    /// ssh's stdin/stdout (`access ssh`): no half-close; the edge's Close ends the session.
    Stdio,
    /// A TCP connection (`access tcp`): the edge's Close becomes a FIN; the local side may
    /// go on sending until its own EOF.
    Tcp,
}

/// What the driver must do, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// A control frame (a Pong or our Close) to send to the edge, already masked.
    ToEdge(Vec<u8>),
    /// Read no more from the local side.
    ShutdownLocalRead,
    /// Half-close toward the local side (a FIN for TCP; stdout stops being written).
    ShutdownLocalWrite,
    /// Both directions are done: send TLS close_notify and end the session.
    Finished,
}

/// A Binary frame's header for a payload that [`Splice::handle_local_input`] masked in place:
/// the driver sends `header.bytes()` then the payload, without copying the payload.
pub struct FrameHeader {
    bytes: [u8; 14],
    len: usize,
}

impl FrameHeader {
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// One carrier spliced with one local endpoint (see the module doc).
pub struct Splice {
    kind: LocalKind,
    dec: Decoder,
    /// Bytes from the edge waiting for the local side.
    out: Buf,
    /// We read no more from the local side (its EOF, or the session is ending).
    local_eof: bool,
    /// The local side takes no more bytes (shut by us, or its write failed).
    local_write_shut: bool,
    sent_close: bool,
    /// A frame handed to the driver has not yet reached the socket.
    edge_busy: bool,
    /// The payload of the latest ping not yet answered.
    pong: Option<([u8; 125], usize)>,
    outputs: VecDeque<Output>,
    finished: bool,
    /// The local side is gone (a write to it failed): the stream is abandoned, and the
    /// session ends once our Close (GOING_AWAY) is out, without waiting for the edge's.
    abandoned: bool,
}

impl Splice {
    pub fn new(kind: LocalKind) -> Self {
        Splice {
            kind,
            dec: Decoder::new(Role::Client),
            out: Buf::new(STREAM_SEND_BUFFER),
            local_eof: false,
            local_write_shut: false,
            sent_close: false,
            edge_busy: false,
            pong: None,
            outputs: VecDeque::new(),
            finished: false,
            abandoned: false,
        }
    }

    /// True while decoding may go on: the bytes for the local side have room.
    pub fn wants_edge_input(&self) -> bool {
        self.out.space() > 0
    }

    /// Decodes the edge's frames from `rx` (TLS plaintext), consuming what it takes: stream
    /// bytes into the local side's buffer (while it has room), pings answered, the edge's
    /// Close noted. A frame that does not parse or a Close with a code other than normal ends
    /// the session with that reason.
    pub fn handle_edge_input(&mut self, rx: &mut Buf) -> Result<(), AccessError> {
        while self.out.space() > 0 {
            let input = rx.data_mut();
            match self.dec.poll(input, self.out.space()) {
                Ok(Some((Item::Data { start, len }, used))) => {
                    if !self.local_write_shut {
                        self.out.push(&input[start..start + len]);
                    }
                    rx.consume(used);
                }
                Ok(Some((Item::Ping { payload, len }, used))) => {
                    rx.consume(used);
                    self.pong = Some((payload, len));
                    self.answer_ping();
                }
                Ok(Some((Item::Pong, used))) => rx.consume(used),
                Ok(Some((Item::Close { code, reason }, used))) => {
                    rx.consume(used);
                    if code != ws::close::NORMAL {
                        return Err(AccessError::SessionClosed {
                            reason: untrusted(&reason).to_string(),
                        });
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(AccessError::BadAnswer(format!(
                        "bad frame from the edge: {e}"
                    )))
                }
            }
        }
        self.settle();
        Ok(())
    }

    /// The edge's TLS ended (close_notify or TCP EOF). Before its Close, that is an error.
    pub fn handle_edge_closed(&mut self) -> Result<(), AccessError> {
        if self.dec.is_closed() {
            return Ok(());
        }
        Err(AccessError::EdgeClosed {
            during: String::new(),
            error: None,
        })
    }

    /// Everything handed out so far reached the socket: the next frame may go.
    pub fn handle_edge_drained(&mut self) {
        self.edge_busy = false;
        self.answer_ping();
    }

    /// True when the driver should read the local side now.
    pub fn wants_local_input(&self) -> bool {
        !self.local_eof && !self.edge_busy
    }

    /// Bytes read from the local side (at most [`LOCAL_READ`]): masks them in place and
    /// returns the header of their Binary frame. Call only when [`Splice::wants_local_input`].
    pub fn handle_local_input(&mut self, data: &mut [u8]) -> FrameHeader {
        debug_assert!(
            self.wants_local_input(),
            "bug: local input while not wanted"
        );
        let mask = random_bytes();
        let mut bytes = [0u8; 14];
        let len = ws::encode_header(&mut bytes, ws::BINARY, data.len(), Some(mask));
        ws::unmask(data, mask, 0);
        self.edge_busy = true;
        FrameHeader { bytes, len }
    }

    /// The local side's EOF: our Close goes to the edge (the half-close toward it).
    pub fn handle_local_eof(&mut self) {
        self.end_local_input();
        self.settle();
    }

    /// What waits for the local side (write it, then report with [`Splice::local_written`]).
    pub fn to_local(&self) -> &[u8] {
        if self.local_write_shut {
            return &[];
        }
        self.out.data()
    }

    /// The local side took `n` bytes of [`Splice::to_local`].
    pub fn local_written(&mut self, n: usize) {
        self.out.consume(n);
        self.settle();
    }

    /// Writing to the local side failed: it is gone, nothing more is delivered to it. The
    /// stream is abandoned, both ways: our Close says GOING_AWAY (the edge resets the stream,
    /// and the origin closes its service connection), or, if our normal Close went out
    /// already, the session simply ends. Discarding the edge's bytes until it ended the stream
    /// would have let a download go on at full speed, for nobody, until the service stopped.
    pub fn local_write_failed(&mut self) {
        self.out.consume(self.out.len());
        self.local_write_shut = true;
        self.abandoned = true;
        self.end_local_input_with(ws::close::GOING_AWAY, "local side closed");
        self.settle();
    }

    /// The next thing the driver must do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// True when [`Splice::poll_output`] has something.
    pub fn has_output(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// When [`Splice::handle_timeout`] wants to run: never (see the module doc, "Time").
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// A timer fired. The client's splice has none.
    pub fn handle_timeout(&mut self, _now: Instant) {}

    fn answer_ping(&mut self) {
        if self.edge_busy {
            return;
        }
        if let Some((payload, len)) = self.pong.take() {
            let mut frame = Vec::with_capacity(6 + len);
            ws::encode_frame(&mut frame, ws::PONG, &payload[..len], Some(random_bytes()));
            self.outputs.push_back(Output::ToEdge(frame));
            self.edge_busy = true;
        }
    }

    /// Reads no more from the local side and sends our Close.
    fn end_local_input(&mut self) {
        self.end_local_input_with(ws::close::NORMAL, "");
    }

    /// [`Splice::end_local_input`] with the Close's code and reason.
    fn end_local_input_with(&mut self, code: u16, reason: &str) {
        if self.local_eof {
            return;
        }
        self.local_eof = true;
        self.outputs.push_back(Output::ShutdownLocalRead);
        let mut frame = Vec::with_capacity(8 + reason.len());
        ws::encode_close(&mut frame, code, reason, Some(random_bytes()));
        self.outputs.push_back(Output::ToEdge(frame));
        self.edge_busy = true;
        self.sent_close = true;
    }

    /// The transitions that follow from the buffers' state: the edge's end reaching the
    /// local side, and the end of both directions.
    fn settle(&mut self) {
        if self.dec.is_closed() && self.out.is_empty() && !self.local_write_shut {
            self.local_write_shut = true;
            self.outputs.push_back(Output::ShutdownLocalWrite);
            if self.kind == LocalKind::Stdio {
                // The reader (ssh, on our stdout) sees the EOF only when we exit, and waits
                // for it before it closes our stdin: the remote's end ends the session.
                log::debug!("the edge closed the stream: ending the session");
                self.end_local_input();
            }
        }
        let edge_done = self.dec.is_closed() && self.out.is_empty();
        if !self.finished && self.sent_close && (edge_done || self.abandoned) {
            self.finished = true;
            self.outputs.push_back(Output::Finished);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tungstenite::protocol::frame::coding::{Control, OpCode};

    use super::*;
    use crate::limits::CONN_READ_BUFFER;

    /// The splice between an in-memory edge and an in-memory local side, quiche-style: the
    /// test moves the bytes and holds the clock.
    struct Pipe {
        client: Splice,
        /// TLS plaintext from the edge, as the driver's `TlsConn::rx`.
        rx: Buf,
        /// What the client sent to the edge, decoded: (opcode byte, unmasked payload).
        to_edge: Vec<(u8, Vec<u8>)>,
        /// What the local side received.
        local: Vec<u8>,
        /// The driver's actions other than frames, in order.
        actions: Vec<Output>,
        now: Instant,
    }

    impl Pipe {
        fn new(kind: LocalKind) -> Pipe {
            Pipe {
                client: Splice::new(kind),
                rx: Buf::new(CONN_READ_BUFFER),
                to_edge: Vec::new(),
                local: Vec::new(),
                actions: Vec::new(),
                now: Instant::now(),
            }
        }

        /// The edge sends a frame (unmasked, as a server does).
        fn edge_sends(&mut self, opcode: OpCode, payload: &[u8]) {
            let mut f = Vec::new();
            ws::encode_frame(&mut f, opcode, payload, None);
            assert_eq!(self.rx.push(&f), f.len(), "test frame fits in rx");
        }

        fn edge_closes(&mut self, code: u16, reason: &str) {
            let mut f = Vec::new();
            ws::encode_close(&mut f, code, reason, None);
            assert_eq!(self.rx.push(&f), f.len());
        }

        /// The driver's edge side: decode what arrived, collect what the client sends.
        fn edge_to_client(&mut self) -> Result<(), AccessError> {
            self.client.handle_edge_input(&mut self.rx)?;
            self.collect();
            Ok(())
        }

        /// The local side takes at most `budget` bytes.
        fn local_takes(&mut self, budget: usize) {
            let data = self.client.to_local();
            let n = data.len().min(budget);
            self.local.extend_from_slice(&data[..n]);
            self.client.local_written(n);
            self.collect();
        }

        /// The local side sends `data` (only when the core wants it).
        fn local_sends(&mut self, data: &[u8]) {
            assert!(self.client.wants_local_input());
            let mut payload = data.to_vec();
            let header = self.client.handle_local_input(&mut payload);
            let mut frame = header.bytes().to_vec();
            frame.extend_from_slice(&payload);
            self.frames_to_edge(&frame);
            self.collect();
        }

        fn collect(&mut self) {
            while let Some(out) = self.client.poll_output() {
                match out {
                    Output::ToEdge(frame) => self.frames_to_edge(&frame),
                    other => self.actions.push(other),
                }
            }
        }

        /// Decodes client frames as the edge would: masked, one whole frame at a time.
        fn frames_to_edge(&mut self, mut bytes: &[u8]) {
            while !bytes.is_empty() {
                let op = bytes[0];
                assert_eq!(bytes[1] & 0x80, 0x80, "client frames are masked");
                let (len, at) = match bytes[1] & 0x7f {
                    126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                    127 => (
                        u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    n => (n as usize, 2),
                };
                let mask: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
                let mut payload = bytes[at + 4..at + 4 + len].to_vec();
                ws::unmask(&mut payload, mask, 0);
                self.to_edge.push((op, payload));
                bytes = &bytes[at + 4 + len..];
            }
        }

        fn sent_close(&self) -> bool {
            self.to_edge
                .iter()
                .any(|(op, p)| *op == 0x88 && p.as_slice() == ws::close::NORMAL.to_be_bytes())
        }
    }

    const BINARY: u8 = 0x82;
    const PONG: u8 = 0x8a;

    /// A download whose reader went away (its socket closed mid-transfer): the client says
    /// GOING_AWAY, so that the edge ends the stream and the origin its service connection,
    /// and ends the session without waiting for the edge's Close. Before, it discarded what
    /// came and waited: the transfer went on at full speed, for nobody.
    #[test]
    fn a_local_side_that_went_away_abandons_the_stream() {
        let mut p = Pipe::new(LocalKind::Tcp);
        p.edge_sends(ws::BINARY, &[1; 1000]);
        p.edge_to_client().unwrap();
        p.client.local_write_failed();
        p.collect();
        let close = p
            .to_edge
            .iter()
            .find(|(op, _)| *op == 0x88)
            .expect("a Close");
        assert_eq!(close.1[..2], ws::close::GOING_AWAY.to_be_bytes());
        assert!(p.actions.contains(&Output::ShutdownLocalRead));
        assert_eq!(p.actions.last(), Some(&Output::Finished), "{:?}", p.actions);
        // What still comes from the edge is not delivered, and nothing more is sent.
        let sent = p.to_edge.len();
        p.edge_sends(ws::BINARY, &[2; 1000]);
        p.edge_to_client().unwrap();
        assert!(p.client.to_local().is_empty());
        assert_eq!(p.to_edge.len(), sent);

        // After our normal Close (the local side half-closed first), a failed write ends the
        // session at once: a second Close would be a protocol error.
        let mut p = Pipe::new(LocalKind::Tcp);
        p.client.handle_local_eof();
        p.collect();
        p.client.handle_edge_drained();
        assert!(p.sent_close());
        assert!(!p.actions.contains(&Output::Finished));
        p.client.local_write_failed();
        p.collect();
        assert_eq!(p.actions.last(), Some(&Output::Finished));
        assert_eq!(p.to_edge.iter().filter(|(op, _)| *op == 0x88).count(), 1);
    }

    #[test]
    fn local_bytes_go_to_the_edge_as_masked_binary_frames() {
        let mut p = Pipe::new(LocalKind::Tcp);
        p.local_sends(b"SSH-2.0-OpenSSH_9.2\r\n");
        assert_eq!(
            p.to_edge,
            vec![(BINARY, b"SSH-2.0-OpenSSH_9.2\r\n".to_vec())]
        );
        p.client.handle_edge_drained();
        let big = vec![7u8; LOCAL_READ];
        p.local_sends(&big);
        assert_eq!(p.to_edge[1], (BINARY, big));
    }

    #[test]
    fn a_slow_edge_stops_the_reading_of_the_local_side() {
        let mut p = Pipe::new(LocalKind::Tcp);
        assert!(p.client.wants_local_input());
        p.local_sends(b"one");
        // The frame has not reached the socket: nothing more is read locally.
        assert!(!p.client.wants_local_input());
        // The edge's own traffic does not change that.
        p.edge_sends(ws::BINARY, b"hello");
        p.edge_to_client().unwrap();
        assert!(!p.client.wants_local_input());
        p.client.handle_edge_drained();
        assert!(p.client.wants_local_input());
        p.local_sends(b"two");
        assert_eq!(p.to_edge.len(), 2);
    }

    #[test]
    fn a_slow_local_side_stops_the_decoding_of_the_edges_frames() {
        let mut p = Pipe::new(LocalKind::Tcp);
        // More than the local buffer holds, in frames of 16 KiB.
        let sent: Vec<u8> = (0..STREAM_SEND_BUFFER + 40_000)
            .map(|i| (i % 251) as u8)
            .collect();
        for chunk in sent.chunks(16 * 1024) {
            p.edge_sends(ws::BINARY, chunk);
        }
        p.edge_to_client().unwrap();
        assert_eq!(p.client.to_local().len(), STREAM_SEND_BUFFER);
        assert!(!p.client.wants_edge_input(), "full: stop decoding");
        let waiting = p.rx.len();
        assert!(waiting > 40_000, "the rest stays in the TLS buffer");
        // Decoding again changes nothing while the local side takes nothing.
        p.edge_to_client().unwrap();
        assert_eq!(p.rx.len(), waiting);
        // The local side takes a little: a little more is decoded.
        p.local_takes(1000);
        assert!(p.client.wants_edge_input());
        p.edge_to_client().unwrap();
        assert_eq!(p.client.to_local().len(), STREAM_SEND_BUFFER);
        assert!(p.rx.len() < waiting);
        while !p.rx.is_empty() || !p.client.to_local().is_empty() {
            p.local_takes(9000);
            p.edge_to_client().unwrap();
        }
        assert_eq!(p.local, sent, "every byte, in order");
    }

    #[test]
    fn the_services_end_ends_an_access_ssh_session_once_its_bytes_are_written() {
        let mut p = Pipe::new(LocalKind::Stdio);
        p.edge_sends(ws::BINARY, b"last words");
        p.edge_closes(ws::close::NORMAL, "");
        p.edge_to_client().unwrap();
        assert!(p.actions.is_empty(), "not before the bytes reached ssh");
        assert!(!p.sent_close());
        p.local_takes(4);
        assert!(p.actions.is_empty());
        p.local_takes(usize::MAX);
        assert_eq!(p.local, b"last words");
        // Stdout cannot be half-closed: the session ends, with our Close to the edge.
        assert_eq!(
            p.actions,
            vec![
                Output::ShutdownLocalWrite,
                Output::ShutdownLocalRead,
                Output::Finished
            ]
        );
        assert!(p.sent_close());
        assert!(!p.client.wants_local_input());
    }

    #[test]
    fn access_tcp_half_closes_toward_the_local_side_and_goes_on_sending() {
        let mut p = Pipe::new(LocalKind::Tcp);
        p.edge_sends(ws::BINARY, b"output");
        p.edge_closes(ws::close::NORMAL, "");
        p.edge_to_client().unwrap();
        p.local_takes(usize::MAX);
        assert_eq!(p.actions, vec![Output::ShutdownLocalWrite]);
        // The local side may still send (`ssh host cat <file`, `git push`).
        assert!(p.client.wants_local_input());
        p.local_sends(b"more input");
        p.client.handle_edge_drained();
        assert!(!p.sent_close());
        // Its EOF ends our direction too, and with both done the session.
        p.client.handle_local_eof();
        p.collect();
        assert!(p.sent_close());
        assert_eq!(
            p.actions,
            vec![
                Output::ShutdownLocalWrite,
                Output::ShutdownLocalRead,
                Output::Finished
            ]
        );
    }

    #[test]
    fn the_local_eof_half_closes_toward_the_edge_which_may_still_answer() {
        for kind in [LocalKind::Tcp, LocalKind::Stdio] {
            let mut p = Pipe::new(kind);
            p.local_sends(b"request");
            p.client.handle_edge_drained();
            p.client.handle_local_eof();
            p.collect();
            assert!(p.sent_close(), "{kind:?}");
            assert_eq!(p.actions, vec![Output::ShutdownLocalRead], "{kind:?}");
            assert!(!p.client.wants_local_input());
            // The answer still arrives, then the edge's Close finishes the session.
            p.edge_sends(ws::BINARY, b"answer");
            p.edge_closes(ws::close::NORMAL, "");
            p.edge_to_client().unwrap();
            p.local_takes(usize::MAX);
            assert_eq!(p.local, b"answer");
            assert_eq!(
                p.actions,
                vec![
                    Output::ShutdownLocalRead,
                    Output::ShutdownLocalWrite,
                    Output::Finished
                ],
                "{kind:?}"
            );
            let closes = p.to_edge.iter().filter(|(op, _)| *op == 0x88).count();
            assert_eq!(closes, 1, "one Close only ({kind:?})");
        }
    }

    #[test]
    fn a_bad_frame_from_the_edge_ends_the_session_with_a_clear_message() {
        // Masked (a server must not mask), text, reserved bits, oversized control frames.
        let masked = {
            let mut f = Vec::new();
            ws::encode_frame(&mut f, ws::BINARY, b"x", Some([1, 2, 3, 4]));
            f
        };
        let bad: [(&[u8], &str); 4] = [
            (&masked, "masked the wrong way"),
            (&[0x81, 0x01, b'x'], "text WebSocket frame"),
            (&[0xc2, 0x01, b'x'], "reserved bits"),
            (&[0x09, 0x01, b'x'], "fragmented or oversized"),
        ];
        for (frame, why) in bad {
            let mut p = Pipe::new(LocalKind::Stdio);
            p.rx.push(frame);
            let e = p.edge_to_client().expect_err("a bad frame is an error");
            let e = e.to_string();
            assert!(e.starts_with("bad frame from the edge: "), "{e}");
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn the_edges_close_with_an_error_code_ends_the_session_with_its_reason_escaped() {
        let mut p = Pipe::new(LocalKind::Tcp);
        p.edge_closes(ws::close::TRY_AGAIN, "service unreachable\u{1b}[2J");
        let e = p.edge_to_client().expect_err("an error close").to_string();
        assert!(
            e.contains("the edge closed the session: service unreachable"),
            "{e}"
        );
        assert!(!e.contains('\u{1b}'), "peer text escaped: {e:?}");
    }

    #[test]
    fn the_edge_leaving_without_its_close_is_an_error_but_after_it_is_not() {
        let mut p = Pipe::new(LocalKind::Tcp);
        p.edge_sends(ws::BINARY, b"partial");
        p.edge_to_client().unwrap();
        let e = p.client.handle_edge_closed().expect_err("truncated");
        assert_eq!(e.to_string(), "the edge closed the connection");
        let mut p = Pipe::new(LocalKind::Tcp);
        p.edge_closes(ws::close::NORMAL, "");
        p.edge_to_client().unwrap();
        assert!(p.client.handle_edge_closed().is_ok());
    }

    #[test]
    fn pings_from_the_edge_are_answered_with_their_payload() {
        let mut p = Pipe::new(LocalKind::Stdio);
        p.edge_sends(OpCode::Control(Control::Ping), b"are you there");
        p.edge_sends(ws::BINARY, b"data");
        p.edge_to_client().unwrap();
        assert_eq!(p.to_edge, vec![(PONG, b"are you there".to_vec())]);
        assert_eq!(
            p.client.to_local(),
            b"data",
            "a ping does not disturb the stream"
        );
        // A pong from the edge is taken silently.
        p.client.handle_edge_drained();
        p.edge_sends(OpCode::Control(Control::Pong), b"");
        p.edge_to_client().unwrap();
        assert_eq!(p.to_edge.len(), 1);
    }

    #[test]
    fn an_edge_that_pings_without_reading_gets_one_pong_for_the_latest_ping() {
        let mut p = Pipe::new(LocalKind::Tcp);
        p.local_sends(b"in flight");
        for i in 0..1000u32 {
            p.edge_sends(OpCode::Control(Control::Ping), &i.to_be_bytes());
            p.edge_to_client().unwrap();
        }
        assert_eq!(p.to_edge.len(), 1, "no pong queued behind an unsent frame");
        p.client.handle_edge_drained();
        p.collect();
        assert_eq!(p.to_edge[1], (PONG, 999u32.to_be_bytes().to_vec()));
        assert!(
            !p.client.wants_local_input(),
            "the pong is on its way first"
        );
    }

    #[test]
    fn an_idle_session_keeps_no_timer_and_stays_up_for_hours() {
        let mut p = Pipe::new(LocalKind::Stdio);
        p.local_sends(b"ls\n");
        p.client.handle_edge_drained();
        for _ in 0..48 {
            assert_eq!(p.client.poll_timeout(), None);
            p.now += Duration::from_secs(3600);
            p.client.handle_timeout(p.now);
            p.collect();
        }
        assert!(p.actions.is_empty(), "nothing closed: {:?}", p.actions);
        assert_eq!(p.to_edge.len(), 1, "no keepalive of our own");
        // And it still works.
        p.edge_sends(ws::BINARY, b"file\n");
        p.edge_to_client().unwrap();
        p.local_takes(usize::MAX);
        assert_eq!(p.local, b"file\n");
        p.local_sends(b"exit\n");
    }

    #[test]
    fn after_the_local_side_fails_the_edges_bytes_are_dropped_not_buffered() {
        let mut p = Pipe::new(LocalKind::Tcp);
        p.edge_sends(ws::BINARY, b"lost");
        p.edge_to_client().unwrap();
        p.client.local_write_failed();
        assert!(p.client.to_local().is_empty());
        // More than the local buffer holds: none of it waits.
        for _ in 0..2 {
            for _ in 0..6 {
                p.edge_sends(ws::BINARY, &[0; 16 * 1024]);
            }
            p.edge_to_client().unwrap();
            assert!(p.rx.is_empty(), "nothing stalls the edge");
        }
        assert!(p.client.wants_edge_input());
        // And the session does not wait for the edge's end or the local EOF: it abandoned
        // the stream (a_local_side_that_went_away_abandons_the_stream).
        p.collect();
        assert_eq!(
            p.actions,
            [Output::ShutdownLocalRead, Output::Finished],
            "{:?}",
            p.actions
        );
    }
}
