//! The tunnel multiplexing protocol between origin and edge (DESIGN.md §3), sans-IO.
//!
//! ```text
//! frame = type:u8 | flags:u8 | stream_id:u32 | length:u32 | payload[length]   (big endian)
//! ```
//!
//! [`Session`] is one end of one tunnel connection. The driver feeds it decrypted bytes
//! (`handle_input`), drains frames to send (`poll_transmit`), reads events (`poll_event`) and
//! tells it the time (`handle_timeout`). It never touches a socket or a clock.
//!
//! Stream life cycle: each direction is its own state (`SendHalf`, `RecvHalf`), and the
//! stream is gone once both ended and everything received was read, or at once on RST:
//!
//! ```text
//!   send:  Open ──close_write──▶ FinQueued ──(buffer framed)──▶ FinSent ─┐
//!   recv:  Open ──FIN──────────▶ FinReceived ──(all consumed)───────────┴─▶ Closed
//!   either ──RST sent or received──▶ Closed     (late frames for it are ignored)
//! ```
//!
//! Flow control: each side may have at most the window its peer granted in flight per stream.
//! WINDOW frames return credit as the application consumes and carry the cumulative offset
//! consumed, so a stream could later be resumed at a known offset on another connection.
//! A receiver grows a stream's window (auto-tuning, docs/design.md §2.4) when its application
//! consumes half of it in under two round trips, so one stream can fill a long path; the
//! round trip is the smallest PING-to-PONG time the connection has seen (for a stream alone
//! on its connection, at least [`LONE_RTT_FLOOR`]: a loaded one).
//! A peer that overruns its window, names a stream it never opened, or sends a malformed
//! frame gets a connection error ([`MuxError`]), which is sticky.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use crate::limits::{
    CUT_THROUGH_MIN, INITIAL_STREAM_WINDOW, LONE_RTT_FLOOR, MAX_CLAIMS_LEN, MAX_CONTROL_BACKLOG,
    MAX_FRAME_PAYLOAD, MAX_NAME_LEN, MAX_STREAMS_PER_TUNNEL, MAX_STREAM_WINDOW,
    PING_DEAD_INTERVALS, PING_INTERVAL, RTT_PROBES, START_STREAM_WINDOW, STREAM_RATE_CEILING,
    STREAM_SEND_BUFFER, TLS_RECORD, TUNED_WINDOW_BUDGET, URGENT_READABLE, WINDOW_UPDATE_THRESHOLD,
};
use crate::proto::buf::Buf;
use crate::proto::idmap::IdMap;
use crate::proto::reader::{put_str16, Reader};

pub const HEADER_LEN: usize = 10;
/// The least payload of a DATA frame sent straight from the caller's buffer
/// ([`Session::frame_direct`]): with its header, a TLS record's worth ([`CUT_THROUGH_MIN`]).
/// Less waits in the stream's send buffer, to be batched with other frames.
pub const DIRECT_MIN: usize = CUT_THROUGH_MIN - HEADER_LEN;

/// The most of `most` payload bytes a frame sent straight from the caller's buffer carries so
/// that, with its header, it ends on a TLS record's edge and trails no record of a few bytes
/// (0 when less than one record's worth).
pub fn record_aligned(most: usize) -> usize {
    ((most + HEADER_LEN) / TLS_RECORD * TLS_RECORD).saturating_sub(HEADER_LEN)
}
/// The newest version an edge serves. An origin sends [`PLAIN_PROTOCOL_VERSION`] unless it
/// has a `bastion` ingress rule, so it keeps working with edges older than bastion mode.
pub const PROTOCOL_VERSION: u16 = 3;
/// Resumable streams (docs/design.md §2.6), no bastion mode.
pub const PLAIN_PROTOCOL_VERSION: u16 = 2;
/// OPEN's claims may carry a `destination` (bastion mode) and the origin honours it.
pub const BASTION_PROTOCOL_VERSION: u16 = 3;
/// The oldest version an edge still serves: version 1 origins know no resumable streams
/// (docs/design.md §2.6), so the edge offers resumption only through version 2 ones.
pub const OLDEST_PROTOCOL_VERSION: u16 = 1;
/// ALPN protocol id that marks a TLS connection to the edge as a tunnel, not a carrier.
pub const ALPN: &[u8] = b"postern-tunnel/1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 1,
    Register = 2,
    Registered = 3,
    Error = 4,
    Open = 5,
    Data = 6,
    Window = 7,
    Fin = 8,
    Rst = 9,
    Ping = 10,
    Pong = 11,
    GoAway = 12,
}

impl FrameType {
    fn from_u8(v: u8) -> Option<Self> {
        use FrameType::*;
        Some(match v {
            1 => Hello,
            2 => Register,
            3 => Registered,
            4 => Error,
            5 => Open,
            6 => Data,
            7 => Window,
            8 => Fin,
            9 => Rst,
            10 => Ping,
            11 => Pong,
            12 => GoAway,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub ty: FrameType,
    pub flags: u8,
    pub stream: u32,
    pub len: u32,
}

/// Decodes one frame header. `Ok(None)`: fewer than [`HEADER_LEN`] bytes, nothing consumed.
pub fn decode_header(buf: &[u8]) -> Result<Option<FrameHeader>, MuxError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut r = Reader::new(head);
    let (ty, flags, stream, len) = (
        r.u8().expect("bug: header length checked"),
        r.u8().expect("bug: header length checked"),
        r.u32().expect("bug: header length checked"),
        r.u32().expect("bug: header length checked"),
    );
    let ty = FrameType::from_u8(ty).ok_or(MuxError::UnknownFrameType(ty))?;
    if len as usize > MAX_FRAME_PAYLOAD {
        return Err(MuxError::FrameTooLarge(len));
    }
    // No flags are defined yet; connection-level frames name no stream, stream frames do.
    let stream_frame = matches!(
        ty,
        FrameType::Open | FrameType::Data | FrameType::Window | FrameType::Fin | FrameType::Rst
    );
    if flags != 0 || stream_frame != (stream != 0) {
        return Err(MuxError::MalformedHeader(ty));
    }
    Ok(Some(FrameHeader {
        ty,
        flags,
        stream,
        len,
    }))
}

/// Appends a frame header; the payload of `len` bytes must follow.
pub fn encode_header(out: &mut Vec<u8>, ty: FrameType, stream: u32, len: usize) {
    debug_assert!(len <= MAX_FRAME_PAYLOAD);
    out.push(ty as u8);
    out.push(0);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

/// Appends a whole frame whose payload is built by `body`.
fn encode_frame(out: &mut Vec<u8>, ty: FrameType, stream: u32, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    encode_header(out, ty, stream, 0);
    body(out);
    let len = out.len() - at - HEADER_LEN;
    assert!(len <= MAX_FRAME_PAYLOAD, "bug: control frame too large");
    out[at + 6..at + 10].copy_from_slice(&(len as u32).to_be_bytes());
}

/// One decoded frame whose payload borrows the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello {
        version: u16,
        connector_id: [u8; 16],
        ha_index: u8,
    },
    Register {
        hostname: &'a str,
        service: &'a str,
    },
    Registered {
        hostname: &'a str,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
    },
    Open {
        stream: u32,
        hostname: &'a str,
        claims: &'a [u8],
    },
    Data {
        stream: u32,
        data: &'a [u8],
    },
    Window {
        stream: u32,
        credit: u32,
        consumed: u64,
    },
    Fin {
        stream: u32,
    },
    Rst {
        stream: u32,
        code: ResetCode,
        reason: &'a str,
    },
    Ping(u64),
    Pong(u64),
    GoAway {
        last_stream: u32,
        reason: &'a str,
    },
}

impl Frame<'_> {
    /// The frame's type on the wire.
    pub fn ty(&self) -> FrameType {
        match self {
            Frame::Hello { .. } => FrameType::Hello,
            Frame::Register { .. } => FrameType::Register,
            Frame::Registered { .. } => FrameType::Registered,
            Frame::Error { .. } => FrameType::Error,
            Frame::Open { .. } => FrameType::Open,
            Frame::Data { .. } => FrameType::Data,
            Frame::Window { .. } => FrameType::Window,
            Frame::Fin { .. } => FrameType::Fin,
            Frame::Rst { .. } => FrameType::Rst,
            Frame::Ping(_) => FrameType::Ping,
            Frame::Pong(_) => FrameType::Pong,
            Frame::GoAway { .. } => FrameType::GoAway,
        }
    }
}

/// Decodes one whole frame from the front of `buf`: `Ok(None)` needs more bytes.
/// Returns the frame and the bytes it took.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, MuxError> {
    let Some(h) = decode_header(buf)? else {
        return Ok(None);
    };
    let total = HEADER_LEN + h.len as usize;
    let Some(payload) = buf.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    let bad = || MuxError::MalformedPayload(h.ty);
    let mut r = Reader::new(payload);
    let frame = match h.ty {
        FrameType::Hello => {
            let version = r.u16().ok_or_else(bad)?;
            let mut connector_id = [0u8; 16];
            connector_id.copy_from_slice(r.take(16).ok_or_else(bad)?);
            let ha_index = r.u8().ok_or_else(bad)?;
            Frame::Hello {
                version,
                connector_id,
                ha_index,
            }
        }
        FrameType::Register => Frame::Register {
            hostname: r.str16(MAX_NAME_LEN).ok_or_else(bad)?,
            service: r.str16(MAX_NAME_LEN).ok_or_else(bad)?,
        },
        FrameType::Registered => Frame::Registered {
            hostname: r.str16(MAX_NAME_LEN).ok_or_else(bad)?,
        },
        FrameType::Error => Frame::Error {
            code: ErrorCode::from_u16(r.u16().ok_or_else(bad)?),
            message: r.str16(MAX_NAME_LEN).ok_or_else(bad)?,
        },
        FrameType::Open => {
            let hostname = r.str16(MAX_NAME_LEN).ok_or_else(bad)?;
            let claims = r.rest();
            if claims.len() > MAX_CLAIMS_LEN {
                return Err(bad());
            }
            Frame::Open {
                stream: h.stream,
                hostname,
                claims,
            }
        }
        FrameType::Data => Frame::Data {
            stream: h.stream,
            data: r.rest(),
        },
        FrameType::Window => Frame::Window {
            stream: h.stream,
            credit: r.u32().ok_or_else(bad)?,
            consumed: r.u64().ok_or_else(bad)?,
        },
        FrameType::Fin => Frame::Fin { stream: h.stream },
        FrameType::Rst => Frame::Rst {
            stream: h.stream,
            code: ResetCode::from_u32(r.u32().ok_or_else(bad)?),
            reason: r.str16(MAX_NAME_LEN).ok_or_else(bad)?,
        },
        FrameType::Ping => Frame::Ping(r.u64().ok_or_else(bad)?),
        FrameType::Pong => Frame::Pong(r.u64().ok_or_else(bad)?),
        FrameType::GoAway => Frame::GoAway {
            last_stream: r.u32().ok_or_else(bad)?,
            reason: r.str16(MAX_NAME_LEN).ok_or_else(bad)?,
        },
    };
    if !r.is_empty() {
        return Err(bad());
    }
    Ok(Some((frame, total)))
}

/// Appends the encoding of `frame` (the inverse of [`decode_frame`]).
pub fn encode(out: &mut Vec<u8>, frame: &Frame<'_>) {
    match *frame {
        Frame::Hello {
            version,
            connector_id,
            ha_index,
        } => encode_frame(out, FrameType::Hello, 0, |o| {
            o.extend_from_slice(&version.to_be_bytes());
            o.extend_from_slice(&connector_id);
            o.push(ha_index);
        }),
        Frame::Register { hostname, service } => encode_frame(out, FrameType::Register, 0, |o| {
            put_str16(o, clip(hostname));
            put_str16(o, clip(service));
        }),
        Frame::Registered { hostname } => encode_frame(out, FrameType::Registered, 0, |o| {
            put_str16(o, clip(hostname))
        }),
        Frame::Error { code, message } => encode_frame(out, FrameType::Error, 0, |o| {
            o.extend_from_slice(&code.to_u16().to_be_bytes());
            put_str16(o, clip(message));
        }),
        Frame::Open {
            stream,
            hostname,
            claims,
        } => encode_frame(out, FrameType::Open, stream, |o| {
            put_str16(o, clip(hostname));
            o.extend_from_slice(&claims[..claims.len().min(MAX_CLAIMS_LEN)]);
        }),
        Frame::Data { stream, data } => {
            encode_header(out, FrameType::Data, stream, data.len());
            out.extend_from_slice(data);
        }
        Frame::Window {
            stream,
            credit,
            consumed,
        } => encode_frame(out, FrameType::Window, stream, |o| {
            o.extend_from_slice(&credit.to_be_bytes());
            o.extend_from_slice(&consumed.to_be_bytes());
        }),
        Frame::Fin { stream } => encode_header(out, FrameType::Fin, stream, 0),
        Frame::Rst {
            stream,
            code,
            reason,
        } => encode_frame(out, FrameType::Rst, stream, |o| {
            o.extend_from_slice(&code.to_u32().to_be_bytes());
            put_str16(o, clip(reason));
        }),
        Frame::Ping(v) => encode_frame(out, FrameType::Ping, 0, |o| {
            o.extend_from_slice(&v.to_be_bytes())
        }),
        Frame::Pong(v) => encode_frame(out, FrameType::Pong, 0, |o| {
            o.extend_from_slice(&v.to_be_bytes())
        }),
        Frame::GoAway {
            last_stream,
            reason,
        } => encode_frame(out, FrameType::GoAway, 0, |o| {
            o.extend_from_slice(&last_stream.to_be_bytes());
            put_str16(o, clip(reason));
        }),
    }
}

/// Strings in frames are bounded; longer ones are cut at a char boundary.
fn clip(s: &str) -> &str {
    if s.len() <= MAX_NAME_LEN {
        return s;
    }
    let mut end = MAX_NAME_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Connection errors. Each ends the tunnel connection (never the process) and is sticky.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MuxError {
    /// The peer sent a frame type this version does not know.
    UnknownFrameType(u8),
    /// The peer announced a payload larger than the 64 KiB limit.
    FrameTooLarge(u32),
    /// Unknown flags, or a stream id where none belongs (or none where one must be).
    MalformedHeader(FrameType),
    /// The payload of a frame of this type did not parse.
    MalformedPayload(FrameType),
    /// The peer sent more DATA on a stream than the window it was granted.
    WindowExceeded(u32),
    /// The peer named a stream that was never opened.
    UnknownStream(u32),
    /// The peer opened a stream it may not open (wrong side, reused id, or over the limit).
    BadOpen(u32),
    /// The peer granted credit that overflows the window.
    WindowOverflow(u32),
    /// The peer stayed silent for three keepalive intervals.
    KeepaliveTimeout,
    /// The peer kept asking for answers (PING) without reading them.
    ControlBacklog,
    /// The peer sent a frame that is not valid at this point of the session.
    Unexpected(FrameType),
}

impl fmt::Display for MuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MuxError::UnknownFrameType(t) => write!(
                f,
                "unknown frame type {t}: peer speaks another protocol version?"
            ),
            MuxError::FrameTooLarge(n) => write!(
                f,
                "frame of {n} bytes exceeds the {MAX_FRAME_PAYLOAD}-byte limit"
            ),
            MuxError::MalformedHeader(t) => write!(f, "malformed {t:?} frame header"),
            MuxError::MalformedPayload(t) => write!(f, "malformed {t:?} frame"),
            MuxError::WindowExceeded(s) => {
                write!(f, "peer overran the flow-control window of stream {s}")
            }
            MuxError::UnknownStream(s) => write!(f, "frame for stream {s}, which was never opened"),
            MuxError::BadOpen(s) => write!(f, "invalid OPEN of stream {s}"),
            MuxError::WindowOverflow(s) => write!(f, "window credit overflow on stream {s}"),
            MuxError::KeepaliveTimeout => write!(
                f,
                "no traffic for {} keepalive intervals: connection presumed dead",
                PING_DEAD_INTERVALS
            ),
            MuxError::ControlBacklog => write!(f, "peer sends PINGs but does not read the answers"),
            MuxError::Unexpected(t) => write!(f, "unexpected {t:?} frame"),
        }
    }
}

impl std::error::Error for MuxError {}

/// Which end of the tunnel a session is. Only the edge opens streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Edge,
    Origin,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Edge {}
    impl Sealed for super::Origin {}
}

/// The side a [`Session`] plays: [`Edge`] or [`Origin`]. Each side has its own event type,
/// holding only what its peer may send:
///
/// ```text
///   origin ──▶ edge:    HELLO  REGISTER                 GOAWAY  (stream frames)
///   edge ──▶ origin:    REGISTERED  ERROR  OPEN         GOAWAY  (stream frames)
/// ```
///
/// A frame only the other side receives (REGISTERED at the edge, OPEN or HELLO at the
/// origin, …) is a connection error inside the session ([`MuxError::Unexpected`],
/// [`MuxError::BadOpen`]) and never reaches the driver.
pub trait Role: sealed::Sealed {
    const SIDE: Side;
    /// What the session tells its driver.
    type Event: fmt::Debug + From<StreamEvent>;
    /// The event for a connection-level frame (or OPEN) from the peer, or the error for a
    /// frame this side never receives. The session has checked stream ids already.
    #[doc(hidden)]
    fn control(frame: Frame<'_>) -> Result<Self::Event, MuxError>;
}

/// The edge's side of a tunnel connection.
#[derive(Debug)]
pub enum Edge {}

/// The origin's side of a tunnel connection.
#[derive(Debug)]
pub enum Origin {}

pub type EdgeSession = Session<Edge>;
pub type OriginSession = Session<Origin>;

/// What happens to one stream, on either side.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// New bytes are readable on the stream, or its peer half-closed it.
    Readable(u32),
    /// The stream may accept more bytes from the application (window or buffer space returned).
    Writable(u32),
    /// Both directions finished cleanly; the stream is gone.
    Closed(u32),
    /// The peer reset the stream; it is gone.
    Reset {
        stream: u32,
        code: ResetCode,
        reason: String,
    },
}

/// What an edge's session tells its driver: what an origin may send.
#[derive(Debug, PartialEq, Eq)]
pub enum EdgeEvent {
    /// The origin introduced itself.
    Hello {
        version: u16,
        connector_id: [u8; 16],
        ha_index: u8,
    },
    /// The origin asks to serve `hostname` (empty: what is routed to its named tunnel).
    Register {
        hostname: String,
        service: String,
    },
    /// The origin is draining: no new streams; open ones go on until they finish.
    GoAway {
        last_stream: u32,
        reason: String,
    },
    Stream(StreamEvent),
}

impl From<StreamEvent> for EdgeEvent {
    fn from(e: StreamEvent) -> Self {
        EdgeEvent::Stream(e)
    }
}

/// What an origin's session tells its driver: what an edge may send.
#[derive(Debug, PartialEq, Eq)]
pub enum OriginEvent {
    /// The edge routes `hostname` (a named tunnel: its routes) to this connection.
    Registered {
        hostname: String,
    },
    /// The edge refused something at connection level (e.g. a registration); it will close.
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The edge opened a stream for `hostname`, for the client `claims` describe.
    Open {
        stream: u32,
        hostname: String,
        claims: Vec<u8>,
    },
    /// The edge is draining: no new streams on this connection.
    GoAway {
        last_stream: u32,
        reason: String,
    },
    Stream(StreamEvent),
}

impl From<StreamEvent> for OriginEvent {
    fn from(e: StreamEvent) -> Self {
        OriginEvent::Stream(e)
    }
}

impl Role for Edge {
    const SIDE: Side = Side::Edge;
    type Event = EdgeEvent;

    fn control(frame: Frame<'_>) -> Result<EdgeEvent, MuxError> {
        Ok(match frame {
            Frame::Hello {
                version,
                connector_id,
                ha_index,
            } => EdgeEvent::Hello {
                version,
                connector_id,
                ha_index,
            },
            Frame::Register { hostname, service } => EdgeEvent::Register {
                hostname: hostname.to_owned(),
                service: service.to_owned(),
            },
            Frame::GoAway {
                last_stream,
                reason,
            } => EdgeEvent::GoAway {
                last_stream,
                reason: reason.to_owned(),
            },
            Frame::Open { stream, .. } => return Err(MuxError::BadOpen(stream)),
            other => return Err(MuxError::Unexpected(other.ty())),
        })
    }
}

impl Role for Origin {
    const SIDE: Side = Side::Origin;
    type Event = OriginEvent;

    fn control(frame: Frame<'_>) -> Result<OriginEvent, MuxError> {
        Ok(match frame {
            Frame::Registered { hostname } => OriginEvent::Registered {
                hostname: hostname.to_owned(),
            },
            Frame::Error { code, message } => OriginEvent::Error {
                code,
                message: message.to_owned(),
            },
            Frame::Open {
                stream,
                hostname,
                claims,
            } => OriginEvent::Open {
                stream,
                hostname: hostname.to_owned(),
                claims: claims.to_vec(),
            },
            Frame::GoAway {
                last_stream,
                reason,
            } => OriginEvent::GoAway {
                last_stream,
                reason: reason.to_owned(),
            },
            other => return Err(MuxError::Unexpected(other.ty())),
        })
    }
}

/// The code of an ERROR frame: why the edge refuses a registration or ends a tunnel
/// connection. The edge chooses it; the origin decides by it whether reconnecting can help
/// ([`ErrorCode::is_final`]). The numbers are HTTP's, and are what operators see in logs.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: malformed or out of place: an invalid hostname, a second registration on one
    /// connection, an unsupported protocol version.
    BadRequest,
    /// 403: the credential does not allow it: the certificate does not cover the hostname
    /// (or its zone), owns `limits::MAX_HOSTNAMES_PER_CERTIFICATE` hostnames already, or
    /// belongs to a named tunnel this edge does not have (deleted).
    Forbidden,
    /// 404: no application of the edge serves the hostname.
    NotFound,
    /// 409: another origin certificate, or a named tunnel, owns the hostname.
    Conflict,
    /// 500: the edge failed (it could not record a registration) or the connection broke the
    /// protocol: transient, the origin reconnects.
    Internal,
    /// Any other code, kept as sent. Not final.
    Other(u16),
}

impl ErrorCode {
    /// The code on the wire. [`ErrorCode::from_u16`] maps it back to the same variant.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::Internal => 500,
            ErrorCode::Other(n) => n,
        }
    }

    /// The code a frame carried; a number this version does not know is kept as `Other`.
    pub fn from_u16(n: u16) -> Self {
        match n {
            400 => ErrorCode::BadRequest,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            409 => ErrorCode::Conflict,
            500 => ErrorCode::Internal,
            n => ErrorCode::Other(n),
        }
    }

    /// True when retrying cannot help: the origin reports the refusal and exits instead of
    /// reconnecting.
    pub fn is_final(self) -> bool {
        matches!(
            ErrorCode::from_u16(self.to_u16()),
            ErrorCode::BadRequest
                | ErrorCode::Forbidden
                | ErrorCode::NotFound
                | ErrorCode::Conflict
        )
    }
}

/// Codes compare by number: `Other(409)` is `Conflict`.
impl PartialEq for ErrorCode {
    fn eq(&self, other: &Self) -> bool {
        self.to_u16() == other.to_u16()
    }
}

impl Eq for ErrorCode {}

/// The number, as logs and refusal messages show it.
impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_u16())
    }
}

/// The code of an RST frame: why one side abandoned a stream.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum ResetCode {
    /// 1: the application on one side went away (the client closed, the service connection
    /// failed, the stream was idle too long).
    Cancel,
    /// 2: the origin could not reach its local service; the reason says why.
    ConnectFailed,
    /// 3: no ingress rule of the origin serves the stream's hostname.
    NoService,
    /// 4: the connection is draining and refuses new streams.
    Refused,
    /// 5: the client's path died (its carrier ended without closing the stream): a
    /// resumable stream waits for the client to come back (docs/design.md §2.6); any other
    /// stream ends as with `Cancel`.
    Lost,
    /// Any other code, kept as sent.
    Other(u32),
}

impl ResetCode {
    /// The code on the wire. [`ResetCode::from_u32`] maps it back to the same variant.
    pub fn to_u32(self) -> u32 {
        match self {
            ResetCode::Cancel => 1,
            ResetCode::ConnectFailed => 2,
            ResetCode::NoService => 3,
            ResetCode::Refused => 4,
            ResetCode::Lost => 5,
            ResetCode::Other(n) => n,
        }
    }

    /// The code a frame carried; a number this version does not know is kept as `Other`.
    pub fn from_u32(n: u32) -> Self {
        match n {
            1 => ResetCode::Cancel,
            2 => ResetCode::ConnectFailed,
            3 => ResetCode::NoService,
            4 => ResetCode::Refused,
            5 => ResetCode::Lost,
            n => ResetCode::Other(n),
        }
    }
}

/// Codes compare by number: `Other(2)` is `ConnectFailed`.
impl PartialEq for ResetCode {
    fn eq(&self, other: &Self) -> bool {
        self.to_u32() == other.to_u32()
    }
}

impl Eq for ResetCode {}

impl fmt::Display for ResetCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_u32())
    }
}

/// Our direction of a stream: application → peer.
///
/// ```text
///   Open ──close()──▶ FinQueued ──fin_framed() once the buffer drained──▶ FinSent
/// ```
///
/// There is no `Reset` state: a stream reset either way leaves the session at once (its
/// buffers freed), and frames that still arrive for it are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendHalf {
    /// The application may write.
    Open,
    /// The application will write no more; FIN follows the bytes still buffered.
    FinQueued,
    /// FIN is framed: nothing more goes out on this stream.
    FinSent,
}

impl SendHalf {
    /// The application closes its side (again: nothing changes).
    fn close(self) -> SendHalf {
        match self {
            SendHalf::Open => SendHalf::FinQueued,
            done => done,
        }
    }

    /// FIN was framed. Only [`SendHalf::fin_due`] says when.
    fn fin_framed(self) -> SendHalf {
        debug_assert_eq!(self, SendHalf::FinQueued, "bug: FIN framed out of turn");
        SendHalf::FinSent
    }

    /// The application may hand over bytes.
    fn accepts_bytes(self) -> bool {
        self == SendHalf::Open
    }

    /// FIN is to be framed now: it was queued and every byte before it is framed.
    fn fin_due(self, drained: bool) -> bool {
        self == SendHalf::FinQueued && drained
    }
}

/// The peer's direction of a stream: peer → application.
///
/// ```text
///   Open ──FIN──▶ FinReceived          (DATA or FIN after FIN: connection error)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecvHalf {
    /// DATA may arrive.
    Open,
    /// The peer's FIN arrived; what it sent before may still wait for the application.
    FinReceived,
}

impl RecvHalf {
    /// DATA arrived: allowed only before FIN (after it, the peer's window is closed).
    fn on_data(self, stream: u32) -> Result<RecvHalf, MuxError> {
        match self {
            RecvHalf::Open => Ok(RecvHalf::Open),
            RecvHalf::FinReceived => Err(MuxError::WindowExceeded(stream)),
        }
    }

    /// FIN arrived: allowed once.
    fn on_fin(self) -> Result<RecvHalf, MuxError> {
        match self {
            RecvHalf::Open => Ok(RecvHalf::FinReceived),
            RecvHalf::FinReceived => Err(MuxError::Unexpected(FrameType::Fin)),
        }
    }
}

struct Stream {
    send: SendHalf,
    recv: RecvHalf,
    /// Bytes received from the peer, waiting for the application.
    rx: Buf,
    /// Bytes from the application, waiting to be framed.
    tx: Buf,
    /// How much more DATA we may send.
    send_window: u32,
    /// Consumed by the application but not yet credited back to the peer.
    unacked: u32,
    /// Total bytes consumed by the application (the resumable offset).
    consumed: u64,
    /// How much the peer may still send before we must have granted more.
    recv_window: u32,
    /// The window this end grants the stream: at first [`INITIAL_STREAM_WINDOW`] while it is
    /// alone on the connection, else what a round trip of the path can use (at least
    /// [`START_STREAM_WINDOW`], at most [`INITIAL_STREAM_WINDOW`]); grown by auto-tuning up
    /// to [`MAX_STREAM_WINDOW`] (alone, for a round trip of at least [`LONE_RTT_FLOOR`]), and
    /// held to [`shared_window`] while it shares the connection.
    window: u32,
    /// Credit still kept back of the protocol's implicit [`INITIAL_STREAM_WINDOW`] grant (or,
    /// after [`Stream::share`], of the window it had alone): paid out of the next credit due,
    /// after which the peer has at most `window` in flight. At most the largest window the
    /// stream had less `window`.
    withheld: u32,
    /// Auto-tuning's measuring epoch: when it began and how much had been received then
    /// (`None` before the application first consumed). Bytes that were already waiting do
    /// not count: a reader that drains a backlog was not keeping up.
    epoch: Option<(Instant, u64)>,
    /// Measurement, not protocol state: when a few bytes ([`URGENT_READABLE`]) arrived for
    /// the stream while nothing was waiting, on the real clock (a caller's `now` may be the
    /// start of its pass, and the wait measured is mostly inside one). [`Session::delivered`]
    /// reports the time since.
    few_arrived: Option<Instant>,
    /// The same for the other way: when the application wrote a few bytes while nothing was
    /// waiting to be framed; ended when their DATA frame is built ([`Session::framed_holds`]).
    few_written: Option<Instant>,
    /// Scheduling, not protocol state: waiting in `ready` for `poll_transmit`.
    queued: bool,
    /// Scheduling: the application was told the stream is writable-blocked and wants to
    /// hear when it frees.
    want_writable: bool,
}

impl Stream {
    /// Another stream joined the connection: a window past what a stream that shares may keep
    /// (`most`, [`shared_window`]: on a short path the initial window, or one grown while
    /// alone) is held to it, by keeping credit back as a stream that starts small does.
    fn share(&mut self, most: u32) {
        if most < self.window {
            self.withheld += self.window - most;
            self.window = most;
        }
    }

    /// The most this end may have to hold for the stream: its window, and the credit the peer
    /// still has beyond it (`withheld`). Neither `share` nor `alone` changes it past the
    /// initial window, so the budget's count (the session's `tuned`) moves only in `consume`.
    fn holdable(&self) -> u32 {
        self.window + self.withheld
    }

    /// Alone on the connection again: the protocol's initial window back, first out of what
    /// is still kept back, the rest as credit with the next `WINDOW` frame.
    fn alone(&mut self) {
        if self.window < INITIAL_STREAM_WINDOW {
            let more = INITIAL_STREAM_WINDOW - self.window;
            let back = more.min(self.withheld);
            self.withheld -= back;
            self.unacked += more - back;
            self.window = INITIAL_STREAM_WINDOW;
        }
    }

    /// A stream whose receiver starts at `window` (see [`start_window`]).
    fn new(window: u32) -> Self {
        Stream {
            send: SendHalf::Open,
            recv: RecvHalf::Open,
            // Bounded by the window (raised when it grows): memory is taken only as bytes
            // wait, and the peer may send no more than the window.
            rx: Buf::new(INITIAL_STREAM_WINDOW as usize),
            tx: Buf::new(STREAM_SEND_BUFFER),
            send_window: INITIAL_STREAM_WINDOW,
            unacked: 0,
            consumed: 0,
            recv_window: INITIAL_STREAM_WINDOW,
            window,
            withheld: INITIAL_STREAM_WINDOW - window,
            epoch: None,
            few_arrived: None,
            few_written: None,
            queued: false,
            want_writable: false,
        }
    }

    fn has_work(&self) -> bool {
        (!self.tx.is_empty() && self.send_window > 0) || self.send.fin_due(self.tx.is_empty())
    }

    /// Both directions ended cleanly and the application read everything: the stream goes.
    fn finished(&self) -> bool {
        self.send == SendHalf::FinSent && self.read_closed()
    }

    /// The peer's FIN arrived and every byte before it was consumed.
    fn read_closed(&self) -> bool {
        self.recv == RecvHalf::FinReceived && self.rx.is_empty()
    }
}

/// A write to a stream that had nothing waiting to be framed starts a new wait: timed if it
/// is a few bytes, not if it is bulk (a start left from an earlier write is dropped either
/// way, so it cannot stretch a later hold).
fn few_written(s: &mut Stream, was_empty: bool, clock: Option<fn() -> Instant>) {
    if was_empty {
        s.few_written = clock
            .filter(|_| s.tx.len() <= URGENT_READABLE)
            .map(|clock| clock());
    }
}

/// One end of one tunnel connection; `R` says which ([`EdgeSession`], [`OriginSession`]).
pub struct Session<R: Role> {
    side: PhantomData<R>,
    streams: IdMap<u32, Stream>,
    /// Streams that may have frames to send, round-robin.
    ready: VecDeque<u32>,
    /// Control frames waiting to go out (small, bounded by the number of streams).
    control: Vec<u8>,
    events: VecDeque<R::Event>,
    next_stream: u32,
    /// Highest stream id the peer opened (origin side) or we opened (edge side).
    highest_stream: u32,
    error: Option<MuxError>,
    last_received: Instant,
    next_ping: Instant,
    ping_counter: u64,
    /// The PING whose PONG would measure the round trip, and when it left.
    ping_out: Option<(u64, Instant)>,
    /// The smallest round trip measured on this connection: the path's, without the queues
    /// that bulk transfers build (which would grow windows that grow queues).
    rtt_min: Option<Duration>,
    /// Round trips measured so far, counted up to [`RTT_PROBES`]: until then each PONG is
    /// followed by the next PING at once.
    rtt_samples: u32,
    /// What the streams' grown windows add beyond their initial ones ([`TUNED_WINDOW_BUDGET`]),
    /// counted until the peer can no longer fill them: a window held back after it grew
    /// ([`Stream::share`]) leaves the count as its credit is paid back ([`Stream::holdable`]).
    tuned: u32,
    going_away: bool,
    /// Measurement: how long a few bytes waited between the application's write and their
    /// DATA frame, per stream framed since [`Session::framed_holds`] last drained it (at most
    /// [`MAX_PENDING_HOLDS`]; beyond, not recorded).
    framed: Vec<Duration>,
    /// The clock the holds are timed with, lent by the driver ([`Session::time_holds`]); none:
    /// nothing is timed.
    clock: Option<fn() -> Instant>,
}

/// The most [`Session::framed_holds`] keeps between two drains.
const MAX_PENDING_HOLDS: usize = 64;

impl<R: Role> Session<R> {
    pub fn new(now: Instant) -> Self {
        Session {
            side: PhantomData,
            streams: IdMap::default(),
            ready: VecDeque::new(),
            control: Vec::new(),
            events: VecDeque::new(),
            next_stream: 1,
            highest_stream: 0,
            error: None,
            last_received: now,
            next_ping: now + PING_INTERVAL,
            ping_counter: 0,
            ping_out: None,
            rtt_min: None,
            rtt_samples: 0,
            tuned: 0,
            going_away: false,
            framed: Vec::new(),
            clock: None,
        }
    }

    /// Times how long a few bytes of a stream stay in this session (see
    /// [`Session::delivered`], [`Session::framed_holds`]) with `clock`, which reads the real
    /// time: the callers' `now` is the start of their pass, and these waits are mostly inside
    /// one. Off unless called: this module reads no clock of its own.
    pub fn time_holds(&mut self, clock: fn() -> Instant) {
        self.clock = Some(clock);
    }

    /// A PING with the next number. It needs no secret: a peer that answers one it has not
    /// read yet only makes the round trip look shorter, which keeps the windows *this* side
    /// grants it small (docs/design.md §2.4).
    fn send_ping(&mut self, now: Instant) {
        self.ping_counter += 1;
        encode(&mut self.control, &Frame::Ping(self.ping_counter));
        self.ping_out = Some((self.ping_counter, now));
    }

    /// The smallest round trip measured on this connection in whole microseconds (at least
    /// 1), once a PING came back: how the edge's API and the origin's metrics show it.
    pub fn rtt_micros(&self) -> Option<u64> {
        self.rtt_min
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1))
    }

    pub fn error(&self) -> Option<&MuxError> {
        self.error.as_ref()
    }

    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    pub fn is_going_away(&self) -> bool {
        self.going_away
    }

    /// Feeds decrypted bytes; returns how many were consumed (whole frames only).
    pub fn handle_input(&mut self, buf: &[u8], now: Instant) -> Result<usize, MuxError> {
        self.handle_input_direct(buf, now, &mut |_, _| 0)
    }

    /// [`Session::handle_input`], with the payload of a DATA frame for a stream that has
    /// nothing waiting offered first to `direct(stream, payload)`, the application's sink,
    /// which returns how much of it it took (the edge's WebSocket carrier all or nothing,
    /// encrypting it at once; the origin's service socket what a write took). Taken bytes
    /// skip the stream's receive buffer, a copy and a trip through memory the cache has lost
    /// by the time the consumer runs (docs/design.md §2.8, "Cut-through"), and count as
    /// received and consumed at once (credit, window tuning); no `Readable` event is raised
    /// for them. The rest waits in the stream as with `handle_input`, and says so.
    pub fn handle_input_direct(
        &mut self,
        buf: &[u8],
        now: Instant,
        direct: &mut dyn FnMut(u32, &[u8]) -> usize,
    ) -> Result<usize, MuxError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let mut used = 0;
        loop {
            match decode_frame(&buf[used..]) {
                Ok(None) => break,
                Ok(Some((frame, n))) => {
                    self.last_received = now;
                    if let Err(e) = self.on_frame(frame, now, direct) {
                        self.error = Some(e.clone());
                        return Err(e);
                    }
                    used += n;
                }
                Err(e) => {
                    self.error = Some(e.clone());
                    return Err(e);
                }
            }
        }
        // The peer is there: measure the round trip now, before any stream needs it, rather
        // than at the first keepalive.
        if used > 0 && self.rtt_min.is_none() && self.ping_out.is_none() {
            self.send_ping(now);
        }
        Ok(used)
    }

    fn on_frame(
        &mut self,
        frame: Frame<'_>,
        now: Instant,
        direct: &mut dyn FnMut(u32, &[u8]) -> usize,
    ) -> Result<(), MuxError> {
        match frame {
            Frame::Hello { .. }
            | Frame::Register { .. }
            | Frame::Registered { .. }
            | Frame::Error { .. } => {
                let ev = R::control(frame)?;
                self.events.push_back(ev);
            }
            Frame::Open { stream, .. } => {
                // Streams are opened by the edge only, with increasing odd ids.
                if R::SIDE != Side::Origin
                    || stream % 2 == 0
                    || stream <= self.highest_stream
                    || self.streams.len() >= MAX_STREAMS_PER_TUNNEL
                {
                    return Err(MuxError::BadOpen(stream));
                }
                self.highest_stream = stream;
                if self.going_away {
                    self.queue_rst(stream, ResetCode::Refused, "connection is draining");
                    return Ok(());
                }
                let ev = R::control(frame)?;
                self.insert_stream(stream);
                self.events.push_back(ev);
            }
            Frame::Data { stream, data } => {
                let clock = self.clock;
                let Some(s) = self.live_stream(stream)? else {
                    return Ok(());
                };
                let n = data.len() as u32;
                s.recv = s.recv.on_data(stream)?;
                if n > s.recv_window {
                    return Err(MuxError::WindowExceeded(stream));
                }
                s.recv_window -= n;
                let mut data = data;
                let mut taken = 0;
                if s.rx.is_empty() && n > 0 {
                    taken = direct(stream, data).min(data.len());
                    if taken == data.len() {
                        self.credit(stream, taken, now);
                        return Ok(());
                    }
                    data = &data[taken..];
                }
                let was_empty = s.rx.is_empty();
                let pushed = s.rx.push(data);
                assert_eq!(pushed, data.len(), "bug: window larger than receive buffer");
                if was_empty && !data.is_empty() && taken == 0 {
                    // A new wait: timed if a few bytes, not if bulk (nor the rest of a bulk
                    // frame a sink took part of). A start left by bytes consumed without
                    // `delivered` (a resumable stream's records) is dropped, so it cannot
                    // stretch a later hold.
                    s.few_arrived = clock
                        .filter(|_| s.rx.len() <= URGENT_READABLE)
                        .map(|clock| clock());
                }
                if !data.is_empty() {
                    self.events.push_back(StreamEvent::Readable(stream).into());
                }
                if taken > 0 {
                    self.credit(stream, taken, now);
                }
            }
            Frame::Window {
                stream,
                credit,
                consumed: _,
            } => {
                let Some(s) = self.live_stream(stream)? else {
                    return Ok(());
                };
                s.send_window = s
                    .send_window
                    .checked_add(credit)
                    .filter(|w| *w <= MAX_STREAM_WINDOW)
                    .ok_or(MuxError::WindowOverflow(stream))?;
                if s.want_writable && s.tx.space() > 0 {
                    s.want_writable = false;
                    self.events.push_back(StreamEvent::Writable(stream).into());
                }
                self.mark_ready(stream);
            }
            Frame::Fin { stream } => {
                let Some(s) = self.live_stream(stream)? else {
                    return Ok(());
                };
                s.recv = s.recv.on_fin()?;
                self.events.push_back(StreamEvent::Readable(stream).into());
                // Our FIN may have gone first: then this one finishes the stream.
                self.reap(stream);
            }
            Frame::Rst {
                stream,
                code,
                reason,
            } => {
                if self.live_stream(stream)?.is_some() {
                    self.forget(stream);
                    self.events.push_back(
                        StreamEvent::Reset {
                            stream,
                            code,
                            reason: reason.to_owned(),
                        }
                        .into(),
                    );
                }
            }
            Frame::Ping(v) => {
                // A peer that pings without reading our answers is cut off, not buffered for.
                if self.control.len() > MAX_CONTROL_BACKLOG {
                    return Err(MuxError::ControlBacklog);
                }
                encode(&mut self.control, &Frame::Pong(v));
            }
            Frame::Pong(v) => {
                if let Some((_, at)) = self.ping_out.filter(|(sent, _)| *sent == v) {
                    self.ping_out = None;
                    let rtt = now.saturating_duration_since(at);
                    self.rtt_min = Some(self.rtt_min.map_or(rtt, |m| m.min(rtt)));
                    self.rtt_samples = (self.rtt_samples + 1).min(RTT_PROBES);
                    if self.rtt_samples < RTT_PROBES {
                        self.send_ping(now);
                    }
                }
            }
            Frame::GoAway { .. } => {
                self.going_away = true;
                let ev = R::control(frame)?;
                self.events.push_back(ev);
            }
        }
        Ok(())
    }

    /// The stream, `None` if it existed once and is closed (late frames are ignored),
    /// or an error if it never existed.
    fn live_stream(&mut self, id: u32) -> Result<Option<&mut Stream>, MuxError> {
        let opened = match R::SIDE {
            Side::Edge => id < self.next_stream,
            Side::Origin => id <= self.highest_stream,
        };
        match self.streams.get_mut(&id) {
            Some(s) => Ok(Some(s)),
            None if opened && id != 0 => Ok(None),
            None => Err(MuxError::UnknownStream(id)),
        }
    }

    pub fn poll_event(&mut self) -> Option<R::Event> {
        self.events.pop_front()
    }

    /// True when events wait for [`Session::poll_event`]. `poll_transmit` can add some (a
    /// stream whose last FIN it sent is reaped: [`StreamEvent::Closed`]); the owner must look
    /// again after transmitting, or they wait for the next frame from the peer.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    // ---- control messages ----

    /// Stops new streams; open ones go on until they finish.
    pub fn send_goaway(&mut self, reason: &str) {
        self.going_away = true;
        let last_stream = self.highest_stream.max(self.next_stream.saturating_sub(2));
        encode(
            &mut self.control,
            &Frame::GoAway {
                last_stream,
                reason,
            },
        );
    }

    // ---- streams ----

    #[cfg(test)]
    fn halves(&self, id: u32) -> Option<(SendHalf, RecvHalf)> {
        self.streams.get(&id).map(|s| (s.send, s.recv))
    }

    /// Bytes of `id` the application consumed or a sink took, as WINDOW frames report them
    /// (tests: each byte counts once).
    #[cfg(test)]
    pub(crate) fn consumed(&self, id: u32) -> u64 {
        self.streams.get(&id).map_or(0, |s| s.consumed)
    }

    /// Memory the receive buffer of `id` holds (tests: bytes handed on directly take none).
    #[cfg(test)]
    pub(crate) fn rx_allocated(&self, id: u32) -> usize {
        self.streams.get(&id).map_or(0, |s| s.rx.allocated())
    }

    /// How much more DATA `id` may send before its peer grants more (tests).
    #[cfg(test)]
    pub(crate) fn send_credit(&self, id: u32) -> u32 {
        self.streams.get(&id).map_or(0, |s| s.send_window)
    }

    /// Memory the send buffer of `id` holds (tests: bytes framed directly take none).
    #[cfg(test)]
    pub(crate) fn tx_allocated(&self, id: u32) -> usize {
        self.streams.get(&id).map_or(0, |s| s.tx.allocated())
    }

    pub fn has_stream(&self, id: u32) -> bool {
        self.streams.contains_key(&id)
    }

    /// Bytes received on `id` and not yet consumed.
    pub fn readable(&self, id: u32) -> &[u8] {
        self.streams.get(&id).map(|s| s.rx.data()).unwrap_or(&[])
    }

    /// True when `id` has only a few bytes waiting ([`URGENT_READABLE`]: a keystroke, its
    /// echo): its consumer should run before the bulk of the loop's pass (docs/design.md
    /// §2.8, "Urgent").
    pub fn few_bytes_readable(&self, id: u32) -> bool {
        self.readable(id).len() <= URGENT_READABLE
    }

    /// True once the peer half-closed `id` and everything it sent was consumed.
    pub fn read_closed(&self, id: u32) -> bool {
        self.streams.get(&id).is_none_or(Stream::read_closed)
    }

    /// The application took `n` bytes from `readable(id)` at `now`; credit flows back to the
    /// peer, more than was taken when the stream's window grows.
    pub fn consume(&mut self, id: u32, n: usize, now: Instant) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.rx.consume(n);
        }
        self.credit(id, n, now);
    }

    /// `n` bytes of `id` reached the application (from its buffer, or handed on directly):
    /// credit flows back to the peer, more than was taken when the stream's window grows.
    fn credit(&mut self, id: u32, n: usize, now: Instant) {
        // Alone, the window grows as if the round trip were at least a loaded one.
        let rtt = match self.streams.len() {
            1 => self.rtt_min.map(|rtt| rtt.max(LONE_RTT_FLOOR)),
            _ => self.rtt_min,
        };
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let counted = grown(s.holdable());
        s.consumed += n as u64;
        s.unacked += n as u32;
        // Auto-tuning (quic-go's rule): half the window, received since the epoch began,
        // consumed in under two round trips means the window, not the consumer, set the
        // pace: double it, within the limits.
        let received = s.consumed + s.rx.len() as u64;
        match s.epoch {
            None => s.epoch = Some((now, received)),
            Some((since, from)) if s.consumed >= from + u64::from(s.window / 2) => {
                let took = now.saturating_duration_since(since);
                let room = growth_room(rtt, took, s.window);
                if room > 0 && s.recv == RecvHalf::Open {
                    // Only what the peer may make this end hold past the initial window counts
                    // against the budget (`holdable`; the count is settled after the payback
                    // below). A stream that shares grows only by the path's idle round trip,
                    // which a short path's start window already covers; alone again, it is
                    // back at the initial window before it grows.
                    let headroom = TUNED_WINDOW_BUDGET - self.tuned
                        + INITIAL_STREAM_WINDOW.saturating_sub(s.holdable());
                    let more = s.window.min(room).min(headroom);
                    s.window += more;
                    s.rx.raise_capacity(s.window as usize);
                    s.unacked += more;
                }
                s.epoch = Some((now, received));
            }
            Some(_) => {}
        }
        // Credit kept back (the implicit initial grant beyond a start window, or what a held
        // window's peer already had) is paid back first.
        let pay = s.withheld.min(s.unacked);
        s.withheld -= pay;
        s.unacked -= pay;
        self.tuned = self.tuned + grown(s.holdable()) - counted;
        if s.unacked >= WINDOW_UPDATE_THRESHOLD.min(s.window / 2) && s.recv == RecvHalf::Open {
            let credit = s.unacked;
            s.unacked = 0;
            s.recv_window += credit;
            let consumed = s.consumed;
            encode(
                &mut self.control,
                &Frame::Window {
                    stream: id,
                    credit,
                    consumed,
                },
            );
        }
        self.reap(id);
    }

    /// Call when bytes of `id` go to the application's socket, before [`Session::consume`]
    /// (which may end the stream): if they began with a few
    /// bytes that arrived while nothing was waiting (a keystroke, its echo), how long those
    /// waited here, on the real clock. The process's own share of an interactive round trip
    /// (`/metrics`: `interactive_hold_seconds`); protocol records consumed before the payload
    /// (a resumable stream's) do not end the wait, delivery does.
    pub fn delivered(&mut self, id: u32) -> Option<Duration> {
        let since = self.streams.get_mut(&id)?.few_arrived.take()?;
        Some(self.clock?().saturating_duration_since(since))
    }

    /// How long a few bytes written while nothing was waiting (a keystroke, its echo) waited
    /// before their DATA frame was built, for each stream `poll_transmit` framed since the
    /// last call: the process's own share of an interactive round trip, the other way from
    /// [`Session::delivered`].
    pub fn framed_holds(&mut self) -> std::vec::Drain<'_, Duration> {
        self.framed.drain(..)
    }

    /// Room for more application bytes on `id` (0 also when the stream is gone).
    /// When there is none, a [`StreamEvent::Writable`] follows once there is.
    pub fn writable(&mut self, id: u32) -> usize {
        match self.streams.get_mut(&id) {
            Some(s) if s.send.accepts_bytes() => {
                let room = s.tx.space();
                if room == 0 {
                    s.want_writable = true;
                }
                room
            }
            _ => 0,
        }
    }

    /// Reads once with `read` (a socket read) straight into the stream's send buffer, without
    /// a copy. `None` when the stream cannot take bytes now (gone, FIN queued, or full: then
    /// [`StreamEvent::Writable`] follows once it has room). `Some(Ok(0))` is the source's EOF.
    pub fn fill(
        &mut self,
        id: u32,
        read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> Option<std::io::Result<usize>> {
        let s = self.streams.get_mut(&id)?;
        if !s.send.accepts_bytes() || s.tx.space() == 0 {
            s.want_writable = true;
            return None;
        }
        let was_empty = s.tx.is_empty();
        let got = s.tx.read_from(read);
        if matches!(got, Ok(n) if n > 0) {
            few_written(s, was_empty, self.clock);
            self.mark_ready(id);
        }
        Some(got)
    }

    /// Copies as much of `data` as fits into the stream; returns the count taken.
    pub fn write(&mut self, id: u32, data: &[u8]) -> usize {
        let Some(s) = self.streams.get_mut(&id) else {
            return 0;
        };
        if !s.send.accepts_bytes() {
            return 0;
        }
        let was_empty = s.tx.is_empty();
        let n = s.tx.push(data);
        if n < data.len() {
            s.want_writable = true;
        }
        if n > 0 {
            few_written(s, was_empty, self.clock);
        }
        self.mark_ready(id);
        n
    }

    /// The header of a DATA frame of `len` bytes on `id` whose payload the caller sends itself,
    /// straight after the header and from its own buffer: the way out of
    /// [`Session::handle_input_direct`]'s cut-through, for bytes that would otherwise be copied
    /// into the stream's send buffer and again into a frame batch (docs/design.md §2.8,
    /// "Cut-through"). `None`, and the caller writes them with [`Session::write`], unless the
    /// stream takes bytes, has none waiting, and has the credit for all `len`, and the
    /// connection has nothing else to frame (a control frame such as this stream's OPEN, or
    /// another stream's DATA): so the frame overtakes nothing, and the streams that wait keep
    /// their turns. The bytes count as sent.
    pub fn frame_direct(&mut self, id: u32, len: usize) -> Option<[u8; HEADER_LEN]> {
        if len == 0 || len > self.direct_room(id) {
            return None;
        }
        let s = self.streams.get_mut(&id)?;
        s.send_window -= len as u32;
        let mut h = [0u8; HEADER_LEN]; // as `encode_header` lays it out, without a Vec
        h[0] = FrameType::Data as u8;
        h[2..6].copy_from_slice(&id.to_be_bytes());
        h[6..10].copy_from_slice(&(len as u32).to_be_bytes());
        Some(h)
    }

    /// The most a [`Session::frame_direct`] on `id` may carry now (0: none; write instead).
    pub fn direct_room(&self, id: u32) -> usize {
        if self.error.is_some() || self.wants_transmit() {
            return 0;
        }
        match self.streams.get(&id) {
            Some(s) if s.send.accepts_bytes() && s.tx.is_empty() => {
                (s.send_window as usize).min(MAX_FRAME_PAYLOAD)
            }
            _ => 0,
        }
    }

    /// The application will write no more on `id`: FIN follows the buffered bytes.
    pub fn close_write(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.send = s.send.close();
            self.mark_ready(id);
        }
    }

    /// Abandons `id` in both directions and tells the peer.
    pub fn reset(&mut self, id: u32, code: ResetCode, reason: &str) {
        if self.forget(id) {
            self.queue_rst(id, code, reason);
        }
    }

    fn queue_rst(&mut self, id: u32, code: ResetCode, reason: &str) {
        encode(
            &mut self.control,
            &Frame::Rst {
                stream: id,
                code,
                reason,
            },
        );
    }

    fn mark_ready(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.queued && s.has_work() {
                s.queued = true;
                self.ready.push_back(id);
            }
        }
    }

    /// Adds stream `id` at the window its receiver starts at ([`start_window`]). A short
    /// path's start window is for sharing: a stream alone on the connection has nothing to
    /// keep a queue short for and takes the protocol's whole initial window (and may grow for
    /// a loaded round trip); from the moment another stream joins it, it holds to what a
    /// stream that shares may keep, [`shared_window`] (docs/design.md §2.4, "Start window",
    /// "Alone").
    fn insert_stream(&mut self, id: u32) {
        let shared = start_window(self.rtt_min);
        let window = if self.streams.is_empty() {
            INITIAL_STREAM_WINDOW
        } else {
            if self.streams.len() == 1 {
                let most = shared_window(self.rtt_min);
                self.streams.values_mut().for_each(|s| s.share(most));
            }
            shared
        };
        self.streams.insert(id, Stream::new(window));
    }

    /// Removes a stream and gives what its window grew back to the connection's budget; a
    /// stream left alone takes the initial window back.
    fn forget(&mut self, id: u32) -> bool {
        let Some(s) = self.streams.remove(&id) else {
            return false;
        };
        self.tuned -= grown(s.holdable());
        if self.streams.len() == 1 {
            self.streams.values_mut().for_each(Stream::alone);
        }
        true
    }

    fn reap(&mut self, id: u32) {
        if self.streams.get(&id).is_some_and(Stream::finished) {
            self.forget(id);
            self.events.push_back(StreamEvent::Closed(id).into());
        }
    }

    /// True when `poll_transmit` would produce something.
    pub fn wants_transmit(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// Appends frames to `out` until it holds at least `max` bytes or nothing is left.
    /// Control frames first, then DATA round-robin over streams within their windows.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>, max: usize) {
        if !self.control.is_empty() {
            out.extend_from_slice(&self.control);
            self.control.clear();
            if self.control.capacity() > 64 * 1024 {
                self.control = Vec::new();
            }
        }
        let mut budget = self.ready.len();
        while out.len() < max && budget > 0 {
            budget -= 1;
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.queued = false;
            let room = max.saturating_sub(out.len() + HEADER_LEN).max(1024);
            let n =
                s.tx.len()
                    .min(s.send_window as usize)
                    .min(MAX_FRAME_PAYLOAD)
                    .min(room);
            if n > 0 {
                if let (Some(since), Some(clock)) = (s.few_written.take(), self.clock) {
                    if self.framed.len() < MAX_PENDING_HOLDS {
                        self.framed.push(clock().saturating_duration_since(since));
                    }
                }
                encode_header(out, FrameType::Data, id, n);
                out.extend_from_slice(&s.tx.data()[..n]);
                s.tx.consume(n);
                s.send_window -= n as u32;
                if s.want_writable {
                    s.want_writable = false;
                    self.events.push_back(StreamEvent::Writable(id).into());
                }
            }
            if s.send.fin_due(s.tx.is_empty()) {
                s.send = s.send.fin_framed();
                encode_header(out, FrameType::Fin, id, 0);
            }
            if s.has_work() {
                s.queued = true;
                self.ready.push_back(id);
                budget += 1;
            }
            self.reap(id);
        }
    }

    /// Sends keepalives and detects a dead peer. Returns the next time to call it.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<Instant, MuxError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let interval = PING_INTERVAL;
        if now.saturating_duration_since(self.last_received) >= interval * PING_DEAD_INTERVALS {
            self.error = Some(MuxError::KeepaliveTimeout);
            return Err(MuxError::KeepaliveTimeout);
        }
        if now >= self.next_ping {
            self.send_ping(now);
            self.next_ping = now + interval;
            // Buffers of streams with nothing waiting go back: an idle stream costs little
            // memory, and a busy one does not re-grow its buffers on every batch.
            for st in self.streams.values_mut() {
                st.rx.release_if_empty();
                st.tx.release_if_empty();
            }
        }
        Ok(self
            .next_ping
            .min(self.last_received + interval * PING_DEAD_INTERVALS))
    }
}

/// What of a window counts against [`TUNED_WINDOW_BUDGET`]: its growth past the initial one.
fn grown(window: u32) -> u32 {
    window.saturating_sub(INITIAL_STREAM_WINDOW)
}

/// How much a window of `window` bytes may grow after half of it took `took` to consume:
/// nothing unless that was under two round trips (`rtt`, unknown: nothing), and never past
/// what the path can use ([`path_window`]).
fn growth_room(rtt: Option<Duration>, took: Duration, window: u32) -> u32 {
    let Some(rtt) = rtt.filter(|rtt| took < 2 * *rtt) else {
        return 0;
    };
    path_window(rtt).saturating_sub(window)
}

/// What a path of round trip `rtt` can use: a round trip at [`STREAM_RATE_CEILING`], at most
/// [`MAX_STREAM_WINDOW`].
fn path_window(rtt: Duration) -> u32 {
    let bdp = rtt.as_nanos() * u128::from(STREAM_RATE_CEILING) / 1_000_000_000;
    bdp.min(u128::from(MAX_STREAM_WINDOW)) as u32
}

/// The window a receiver starts a stream at that shares its connection (a stream alone
/// has the initial one, [`Session::insert_stream`]): what the path can use, but no less than
/// [`START_STREAM_WINDOW`] and no more than the protocol's [`INITIAL_STREAM_WINDOW`] (and
/// that while the round trip is unknown). On a short path a bulk stream then keeps less
/// ahead of an interactive one in the shared connection (docs/design.md §2.4); a long one
/// starts as before and ramps no slower.
fn start_window(rtt: Option<Duration>) -> u32 {
    shared_window(rtt).min(INITIAL_STREAM_WINDOW)
}

/// The most a receiver grants a stream that shares its connection: what a round trip of the
/// path can use ([`path_window`] of the idle round trip), no less than
/// [`START_STREAM_WINDOW`], and the initial window while the round trip is unknown. A window
/// grown while the stream was alone, sized for a loaded round trip ([`LONE_RTT_FLOOR`]), is
/// held to it once another stream joins (docs/design.md §2.4).
fn shared_window(rtt: Option<Duration>) -> u32 {
    rtt.map_or(INITIAL_STREAM_WINDOW, |rtt| {
        path_window(rtt).max(START_STREAM_WINDOW)
    })
}

/// What only the edge does: answer registrations and open streams.
impl Session<Edge> {
    pub fn send_registered(&mut self, hostname: &str) {
        encode(&mut self.control, &Frame::Registered { hostname });
    }

    pub fn send_error(&mut self, code: ErrorCode, message: &str) {
        encode(&mut self.control, &Frame::Error { code, message });
    }

    /// The id the next [`Session::open_stream`] takes, if it succeeds (so that what OPEN
    /// carries can name its own stream).
    pub fn next_stream_id(&self) -> u32 {
        self.next_stream
    }

    /// Opens a stream toward the origin.
    pub fn open_stream(&mut self, hostname: &str, claims: &[u8]) -> Option<u32> {
        if self.going_away || self.error.is_some() || self.streams.len() >= MAX_STREAMS_PER_TUNNEL {
            return None;
        }
        let id = self.next_stream;
        self.next_stream = self.next_stream.checked_add(2)?;
        self.highest_stream = id;
        self.insert_stream(id);
        encode(
            &mut self.control,
            &Frame::Open {
                stream: id,
                hostname,
                claims,
            },
        );
        Some(id)
    }
}

/// What only the origin does: introduce itself and register.
impl Session<Origin> {
    /// `bastion`: the origin has a `bastion` rule and reads OPEN's `destination` (version 3);
    /// otherwise version 2, which edges older than bastion mode accept.
    pub fn send_hello(&mut self, connector_id: [u8; 16], ha_index: u8, bastion: bool) {
        encode(
            &mut self.control,
            &Frame::Hello {
                version: if bastion {
                    BASTION_PROTOCOL_VERSION
                } else {
                    PLAIN_PROTOCOL_VERSION
                },
                connector_id,
                ha_index,
            },
        );
    }

    pub fn send_register(&mut self, hostname: &str, service: &str) {
        encode(&mut self.control, &Frame::Register { hostname, service });
    }
}

#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub fn fuzz_session(data: &[u8]) {
    let now = Instant::now();
    let mut edge = EdgeSession::new(now);
    edge.open_stream("a.example", b"{}");
    fuzz_feed(&mut edge, data, now, |ev| match ev {
        EdgeEvent::Stream(StreamEvent::Readable(id)) => Some(*id),
        _ => None,
    });
    fuzz_feed(&mut OriginSession::new(now), data, now, |ev| match ev {
        OriginEvent::Stream(StreamEvent::Readable(id)) => Some(*id),
        _ => None,
    });
}

/// Feeds `data` to `s` as a driver would, echoing on every readable stream.
#[cfg(feature = "fuzzing")]
fn fuzz_feed<R: Role>(
    s: &mut Session<R>,
    data: &[u8],
    now: Instant,
    readable: impl Fn(&R::Event) -> Option<u32>,
) {
    let mut rest = data;
    let mut now = now;
    while !rest.is_empty() {
        // Time moves with the input, so round trips are measured and windows may grow.
        now += Duration::from_micros(u64::from(rest[0]) * 100);
        match s.handle_input(rest, now) {
            Ok(0) | Err(_) => break,
            Ok(n) => rest = &rest[n..],
        }
        while let Some(ev) = s.poll_event() {
            if let Some(id) = readable(&ev) {
                let n = s.readable(id).len();
                s.consume(id, n, now);
                s.write(id, b"echo");
            }
        }
        let mut out = Vec::new();
        s.poll_transmit(&mut out, 1 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe(a: &mut EdgeSession, b: &mut OriginSession, now: Instant) {
        loop {
            let mut out = Vec::new();
            a.poll_transmit(&mut out, 1 << 20);
            let mut back = Vec::new();
            b.poll_transmit(&mut back, 1 << 20);
            if out.is_empty() && back.is_empty() {
                break;
            }
            assert_eq!(b.handle_input(&out, now).unwrap(), out.len());
            assert_eq!(a.handle_input(&back, now).unwrap(), back.len());
        }
    }

    #[test]
    fn every_frame_round_trips_and_every_prefix_needs_more() {
        let frames = [
            Frame::Hello {
                version: 1,
                connector_id: [7; 16],
                ha_index: 3,
            },
            Frame::Register {
                hostname: "ssh.site.com",
                service: "ssh://localhost:22",
            },
            Frame::Registered { hostname: "h" },
            Frame::Error {
                code: ErrorCode::Other(9),
                message: "no",
            },
            Frame::Error {
                code: ErrorCode::Conflict,
                message: "owned",
            },
            Frame::Open {
                stream: 5,
                hostname: "h",
                claims: b"{\"a\":1}",
            },
            Frame::Data {
                stream: 5,
                data: b"hello",
            },
            Frame::Window {
                stream: 5,
                credit: 10,
                consumed: 1 << 40,
            },
            Frame::Fin { stream: 5 },
            Frame::Rst {
                stream: 5,
                code: ResetCode::ConnectFailed,
                reason: "refused",
            },
            Frame::Rst {
                stream: 5,
                code: ResetCode::Other(77),
                reason: "",
            },
            Frame::Ping(42),
            Frame::Pong(43),
            Frame::GoAway {
                last_stream: 9,
                reason: "bye",
            },
        ];
        for f in &frames {
            let mut out = Vec::new();
            encode(&mut out, f);
            for cut in 0..out.len() {
                assert_eq!(decode_frame(&out[..cut]).unwrap(), None, "{f:?} at {cut}");
            }
            let (g, n) = decode_frame(&out).unwrap().unwrap();
            assert_eq!((&g, n), (f, out.len()));
        }
    }

    #[test]
    fn codes_keep_every_number_and_only_refusals_are_final() {
        for n in 0..=u16::MAX {
            let code = ErrorCode::from_u16(n);
            assert_eq!(code.to_u16(), n);
            assert_eq!(code, ErrorCode::Other(n), "compared by number");
            assert_eq!(code.is_final(), matches!(n, 400 | 403 | 404 | 409), "{n}");
            assert_eq!(code.to_string(), n.to_string());
        }
        assert!(matches!(ErrorCode::from_u16(409), ErrorCode::Conflict));
        assert!(matches!(ErrorCode::from_u16(500), ErrorCode::Internal));
        assert!(!ErrorCode::Internal.is_final());
        for n in (0..=1000).chain([u32::MAX - 1, u32::MAX]) {
            let code = ResetCode::from_u32(n);
            assert_eq!(code.to_u32(), n);
            assert_eq!(code, ResetCode::Other(n));
        }
        assert!(matches!(ResetCode::from_u32(2), ResetCode::ConnectFailed));
        assert_ne!(ResetCode::Cancel, ResetCode::Refused);
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(
            decode_header(&[99, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(MuxError::UnknownFrameType(99))
        );
        let mut big = vec![6, 0, 0, 0, 0, 1];
        big.extend_from_slice(&(MAX_FRAME_PAYLOAD as u32 + 1).to_be_bytes());
        assert!(matches!(
            decode_header(&big),
            Err(MuxError::FrameTooLarge(_))
        ));
        // PING with a short payload.
        let mut ping = Vec::new();
        encode_header(&mut ping, FrameType::Ping, 0, 3);
        ping.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            decode_frame(&ping),
            Err(MuxError::MalformedPayload(FrameType::Ping))
        );
    }

    /// Issue 17, interactive under load: a bulk stream that always has data and window must
    /// not hold back another stream's byte by more than one of its frames. The interactive
    /// byte goes out in the first batch framed after it was written, behind at most one bulk
    /// DATA frame, whatever the batch size and wherever the round-robin stood.
    #[test]
    fn an_interactive_byte_goes_out_behind_at_most_one_bulk_frame() {
        use crate::limits::CONN_WRITE_BATCH;
        let now = Instant::now();
        let mut edge = EdgeSession::new(now);
        let mut origin = OriginSession::new(now);
        let bulk = edge.open_stream("h", b"").unwrap();
        let interactive = edge.open_stream("h", b"").unwrap();
        pipe(&mut edge, &mut origin, now);
        while origin.poll_event().is_some() {}
        let chunk = vec![0u8; STREAM_SEND_BUFFER];
        for (round, batch) in [
            CONN_WRITE_BATCH,
            HEADER_LEN + MAX_FRAME_PAYLOAD + 1,
            1 << 20,
        ]
        .into_iter()
        .cycle()
        .take(40)
        .enumerate()
        {
            // The bulk stream's buffer is full; the interactive byte arrives, before or after
            // the bulk stream last became ready.
            if round % 2 == 0 {
                edge.write(bulk, &chunk);
                assert_eq!(edge.write(interactive, &[round as u8]), 1);
            } else {
                assert_eq!(edge.write(interactive, &[round as u8]), 1);
                edge.write(bulk, &chunk);
            }
            let mut out = Vec::new();
            edge.poll_transmit(&mut out, batch);
            // Where the interactive DATA frame starts in the batch.
            let mut at = 0;
            let mut found = None;
            while let Some((frame, n)) = decode_frame(&out[at..]).unwrap() {
                if let Frame::Data { stream, data } = frame {
                    if stream == interactive {
                        assert_eq!(data, &[round as u8]);
                        found = Some(at);
                        break;
                    }
                }
                at += n;
            }
            let found = found.unwrap_or_else(|| {
                panic!("round {round}: the interactive byte is not in a {batch}-byte batch")
            });
            assert!(
                found <= HEADER_LEN + MAX_FRAME_PAYLOAD,
                "round {round}: {found} bytes of bulk ahead of the interactive byte"
            );
            // The origin reads everything: credit flows back, the bulk stream stays busy.
            assert_eq!(origin.handle_input(&out, now).unwrap(), out.len());
            for id in [bulk, interactive] {
                let n = origin.readable(id).len();
                origin.consume(id, n, now);
            }
            let mut back = Vec::new();
            origin.poll_transmit(&mut back, 1 << 20);
            assert_eq!(edge.handle_input(&back, now).unwrap(), back.len());
            // The rest of the bulk stream's buffer goes before the next round.
            while edge.wants_transmit() {
                let mut rest = Vec::new();
                edge.poll_transmit(&mut rest, batch);
                assert_eq!(origin.handle_input(&rest, now).unwrap(), rest.len());
                let n = origin.readable(bulk).len();
                origin.consume(bulk, n, now);
                let mut back = Vec::new();
                origin.poll_transmit(&mut back, 1 << 20);
                assert_eq!(edge.handle_input(&back, now).unwrap(), back.len());
            }
        }
    }

    /// `delivered` times a few bytes that arrived while nothing was waiting, from arrival to
    /// delivery, once; bulk and bytes behind others are not timed. `framed_holds` the same
    /// for the sending side, from the write to the frame.
    #[test]
    fn a_few_bytes_are_timed_from_arrival_to_delivery_once() {
        let now = Instant::now();
        let mut edge = EdgeSession::new(now);
        let mut origin = OriginSession::new(now);
        edge.time_holds(Instant::now);
        origin.time_holds(Instant::now);
        let id = edge.open_stream("h", b"").unwrap();
        pipe(&mut edge, &mut origin, now);
        let arrive = |edge: &mut EdgeSession, origin: &mut OriginSession, data: &[u8]| {
            assert_eq!(edge.write(id, data), data.len());
            pipe(edge, origin, now);
            // The other way: a few bytes written are timed until framed, once; bulk is not.
            edge.framed_holds().count()
        };
        let before = Instant::now();
        assert_eq!(arrive(&mut edge, &mut origin, b"k"), 1);
        std::thread::sleep(Duration::from_millis(5));
        // A record the application eats before the payload does not end the wait.
        origin.consume(id, 1, now);
        let held = origin.delivered(id).expect("a keystroke is timed");
        assert!(
            held >= Duration::from_millis(5) && held <= before.elapsed(),
            "{held:?}"
        );
        assert_eq!(origin.delivered(id), None, "timed once");
        // A few bytes consumed without `delivered` (a resumable stream's record), then bulk:
        // the bulk's delivery is not timed from the record's arrival.
        assert_eq!(arrive(&mut edge, &mut origin, b"r"), 1);
        origin.consume(id, 1, now);
        assert_eq!(
            arrive(&mut edge, &mut origin, &vec![0; URGENT_READABLE + 1]),
            0
        );
        let n = origin.readable(id).len();
        origin.consume(id, n, now);
        assert_eq!(origin.delivered(id), None, "no stale start");
        // Bulk (more than URGENT_READABLE at once) is not timed, nor what arrives behind it.
        assert_eq!(
            arrive(&mut edge, &mut origin, &vec![0; URGENT_READABLE + 1]),
            0
        );
        assert_eq!(arrive(&mut edge, &mut origin, b"k"), 1);
        let n = origin.readable(id).len();
        origin.consume(id, n, now);
        assert_eq!(origin.delivered(id), None);
        // A few bytes, then more before delivery: the wait of the first ones is timed.
        assert_eq!(arrive(&mut edge, &mut origin, b"k"), 1);
        assert_eq!(
            arrive(&mut edge, &mut origin, &vec![0; 2 * URGENT_READABLE]),
            0
        );
        let n = origin.readable(id).len();
        origin.consume(id, n, now);
        assert!(origin.delivered(id).is_some());
    }

    /// A direct frame's payload and its header end on a TLS record's edge.
    #[test]
    fn a_direct_frame_fills_whole_records() {
        assert_eq!(record_aligned(64 * 1024), 64 * 1024 - HEADER_LEN);
        assert_eq!(
            record_aligned(64 * 1024 - HEADER_LEN),
            64 * 1024 - HEADER_LEN
        );
        assert_eq!(
            record_aligned(64 * 1024 - HEADER_LEN - 1),
            48 * 1024 - HEADER_LEN
        );
        assert_eq!(record_aligned(DIRECT_MIN), DIRECT_MIN);
        assert_eq!(record_aligned(DIRECT_MIN - 1), 0);
        assert_eq!(record_aligned(0), 0);
        assert_eq!(DIRECT_MIN + HEADER_LEN, TLS_RECORD);
    }

    /// The edge's way up ([`Session::frame_direct`]): a DATA header for bytes the caller sends
    /// itself, only when the frame overtakes nothing (the stream's OPEN, its own waiting bytes,
    /// another stream's) and only within the stream's credit, all of it or none, which it
    /// spends. The peer reads the frame as any other DATA, in order.
    #[test]
    fn a_frame_sent_directly_overtakes_nothing_and_spends_credit() {
        let now = Instant::now();
        let mut edge = EdgeSession::new(now);
        let mut origin = OriginSession::new(now);
        let settle = |edge: &mut EdgeSession, origin: &mut OriginSession| {
            pipe(edge, origin, now);
            while origin.poll_event().is_some() {}
            while edge.poll_event().is_some() {}
        };
        let id = edge.open_stream("h", b"").unwrap();
        assert_eq!(edge.frame_direct(id, 1000), None, "its OPEN is not out yet");
        settle(&mut edge, &mut origin);
        assert_eq!(edge.write(id, b"a"), 1);
        assert_eq!(edge.frame_direct(id, 1000), None, "a byte of its own waits");
        let other = edge.open_stream("h", b"").unwrap();
        settle(&mut edge, &mut origin);
        assert_eq!(edge.write(other, b"b"), 1);
        assert_eq!(
            edge.frame_direct(id, 1000),
            None,
            "another stream's byte waits"
        );
        settle(&mut edge, &mut origin);
        assert_eq!(edge.frame_direct(id, 0), None);
        assert_eq!(edge.frame_direct(id, MAX_FRAME_PAYLOAD + 1), None);
        assert_eq!(edge.frame_direct(other + 100, 1000), None, "no such stream");
        // Nothing waits: a header, and the peer reads header and payload as DATA, in order.
        let payload: Vec<u8> = (0..1000).map(|i| i as u8).collect();
        let header = edge.frame_direct(id, payload.len()).expect("nothing waits");
        let wire = [&header[..], &payload].concat();
        assert_eq!(origin.handle_input(&wire, now).unwrap(), wire.len());
        assert_eq!(origin.readable(id), [&b"a"[..], &payload].concat());
        // Credit: spent by each frame, and a frame that needs more than is left gets none.
        let left = |edge: &EdgeSession| edge.streams[&id].send_window as usize;
        while left(&edge) > 1000 {
            let n = left(&edge).min(MAX_FRAME_PAYLOAD) - 1;
            let before = left(&edge);
            assert!(edge.frame_direct(id, n).is_some());
            assert_eq!(left(&edge), before - n, "spent");
        }
        let rest = left(&edge);
        assert_eq!(edge.direct_room(id), rest, "the room is the credit left");
        assert_eq!(
            edge.frame_direct(id, rest + 1),
            None,
            "more than the credit"
        );
        assert_eq!(left(&edge), rest, "nothing spent");
        assert!(edge.frame_direct(id, rest).is_some(), "all of the credit");
        // A closed write side takes nothing more.
        edge.close_write(id);
        assert_eq!(
            edge.frame_direct(other, 1),
            None,
            "the FIN waits to be framed"
        );
        settle(&mut edge, &mut origin);
        assert_eq!(
            edge.frame_direct(id, 1),
            None,
            "the stream's write side is closed"
        );
    }

    /// Bytes a sink takes as they arrive (`handle_input_direct`) skip the stream's buffer,
    /// raise no event and earn credit as if consumed; bytes that wait are never overtaken.
    #[test]
    fn bytes_handed_on_directly_skip_the_buffer_and_never_overtake_waiting_ones() {
        let now = Instant::now();
        let mut edge = EdgeSession::new(now);
        let mut origin = OriginSession::new(now);
        let id = edge.open_stream("h", b"").unwrap();
        pipe(&mut edge, &mut origin, now);
        while origin.poll_event().is_some() {}
        while edge.poll_event().is_some() {}
        // Origin to edge, each DATA offered to `take`; what it took, in order.
        let mut taken = Vec::new();
        let flow = |edge: &mut EdgeSession,
                    origin: &mut OriginSession,
                    take: Option<usize>,
                    taken: &mut Vec<u8>| {
            let mut out = Vec::new();
            origin.poll_transmit(&mut out, 1 << 20);
            // Takes all, none, or (`Some(n)`) at most n of each payload.
            let mut sink = |stream: u32, data: &[u8]| {
                assert_eq!(stream, id);
                let n = match take {
                    Some(most) => data.len().min(most),
                    None => 0,
                };
                taken.extend_from_slice(&data[..n]);
                n
            };
            let n = edge.handle_input_direct(&out, now, &mut sink).unwrap();
            assert_eq!(n, out.len());
            let mut back = Vec::new();
            edge.poll_transmit(&mut back, 1 << 20);
            origin.handle_input(&back, now).unwrap();
        };
        // Refused: the bytes wait, as with `handle_input`, and say so.
        assert_eq!(origin.write(id, b"a"), 1);
        flow(&mut edge, &mut origin, None, &mut taken);
        assert_eq!(edge.readable(id), b"a");
        assert_eq!(
            edge.poll_event(),
            Some(EdgeEvent::Stream(StreamEvent::Readable(id)))
        );
        // Something waits: the next bytes are not offered, though the sink would take them.
        assert_eq!(origin.write(id, b"b"), 1);
        flow(&mut edge, &mut origin, Some(usize::MAX), &mut taken);
        assert!(taken.is_empty(), "offered past waiting bytes");
        assert_eq!(edge.readable(id), b"ab");
        edge.consume(id, 2, now);
        while edge.poll_event().is_some() {}
        assert_eq!(edge.consumed(id), 2);
        // Nothing waits: the bytes are taken, count as consumed, and raise no event.
        assert_eq!(origin.write(id, b"k"), 1);
        flow(&mut edge, &mut origin, Some(usize::MAX), &mut taken);
        assert_eq!(taken, b"k");
        assert_eq!(edge.consumed(id), 3);
        assert_eq!(edge.poll_event(), None);
        // Part taken (a socket took what it had room for): the rest waits, and says so.
        let part = vec![7u8; 3000];
        assert_eq!(origin.write(id, &part), part.len());
        flow(&mut edge, &mut origin, Some(1000), &mut taken);
        assert_eq!(taken, [&b"k"[..], &part[..1000]].concat());
        assert_eq!(edge.readable(id), &part[1000..]);
        assert_eq!(
            edge.poll_event(),
            Some(EdgeEvent::Stream(StreamEvent::Readable(id)))
        );
        assert_eq!(
            edge.consumed(id),
            1003,
            "the part taken counts once, at once"
        );
        edge.consume(id, 2000, now);
        assert_eq!(edge.consumed(id), 3003);
        // Bulk, several windows' worth: all of it taken, none of it buffered. The origin
        // can send it only if taken bytes earn credit (WINDOW frames).
        let bulk: Vec<u8> = (0..4 * INITIAL_STREAM_WINDOW).map(|i| i as u8).collect();
        let mut sent = 0;
        taken.clear();
        let allocated = edge.rx_allocated(id); // the 1 KiB the waiting bytes took
        for _ in 0..1000 {
            sent += origin.write(id, &bulk[sent..]);
            flow(&mut edge, &mut origin, Some(usize::MAX), &mut taken);
            if taken.len() == bulk.len() {
                break;
            }
        }
        assert!(
            taken == bulk,
            "{} of {} bytes, in order",
            taken.len(),
            bulk.len()
        );
        assert!(edge.readable(id).is_empty());
        assert_eq!(edge.rx_allocated(id), allocated, "the buffer did not grow");
        assert_eq!(edge.consumed(id), 3003 + bulk.len() as u64);
        assert_eq!(edge.poll_event(), None);
    }

    #[test]
    fn data_flows_with_flow_control_and_half_close() {
        let now = Instant::now();
        let mut edge = EdgeSession::new(now);
        let mut origin = OriginSession::new(now);
        let id = edge.open_stream("h", b"").unwrap();
        let payload = vec![0xab; 1 << 20];
        let mut sent = 0;
        let mut received = 0;
        let mut closed = false;
        for _ in 0..10_000 {
            sent += edge.write(id, &payload[sent..]);
            if sent == payload.len() && !closed {
                edge.close_write(id);
                closed = true;
            }
            pipe(&mut edge, &mut origin, now);
            while let Some(ev) = origin.poll_event() {
                if let OriginEvent::Open { stream, .. } = ev {
                    assert_eq!(stream, id);
                }
            }
            let n = origin.readable(id).len();
            received += n;
            origin.consume(id, n, now);
            if origin.read_closed(id) {
                break;
            }
        }
        assert_eq!(received, payload.len());
        assert!(origin.read_closed(id));
        // The origin answers and closes; the stream is gone on both sides afterwards.
        assert_eq!(origin.write(id, b"bye"), 3);
        origin.close_write(id);
        pipe(&mut edge, &mut origin, now);
        assert_eq!(edge.readable(id), b"bye");
        edge.consume(id, 3, now);
        assert!(edge.read_closed(id));
        assert_eq!(edge.stream_count(), 0);
        assert_eq!(origin.stream_count(), 0);
    }

    #[test]
    fn a_stream_whose_fin_was_sent_first_is_reaped_when_the_peers_fin_arrives() {
        let now = Instant::now();
        let mut edge = EdgeSession::new(now);
        let mut origin = OriginSession::new(now);
        let id = edge.open_stream("h", b"").unwrap();
        pipe(&mut edge, &mut origin, now);
        while origin.poll_event().is_some() {}
        // The origin's service closes first; its FIN goes out.
        origin.close_write(id);
        pipe(&mut edge, &mut origin, now);
        assert!(origin.has_stream(id));
        // Then the edge's FIN arrives with nothing left to read: the stream is done.
        edge.close_write(id);
        pipe(&mut edge, &mut origin, now);
        assert!(!origin.has_stream(id), "origin kept a finished stream");
        let mut closed = false;
        while let Some(ev) = origin.poll_event() {
            closed |= ev == OriginEvent::Stream(StreamEvent::Closed(id));
        }
        assert!(closed, "the origin must be told the stream is gone");
        assert!(!edge.has_stream(id), "edge kept a finished stream");
        assert_eq!((edge.stream_count(), origin.stream_count()), (0, 0));
    }

    #[test]
    fn a_stream_reaped_by_sending_the_last_fin_leaves_an_event() {
        let now = Instant::now();
        let mut edge = EdgeSession::new(now);
        let mut origin = OriginSession::new(now);
        let id = edge.open_stream("h", b"").unwrap();
        pipe(&mut edge, &mut origin, now);
        while origin.poll_event().is_some() {}
        // The edge's FIN arrives first; then the origin's own FIN is the last word.
        edge.close_write(id);
        pipe(&mut edge, &mut origin, now);
        while origin.poll_event().is_some() {}
        assert!(!origin.has_events());
        origin.close_write(id);
        let mut out = Vec::new();
        origin.poll_transmit(&mut out, 64 * 1024);
        assert!(!origin.has_stream(id));
        // Nothing more will come from the edge for this stream: the owner must see the
        // event now, from has_events after transmitting.
        assert!(
            origin.has_events(),
            "reaped in poll_transmit but no event pending"
        );
        assert_eq!(
            origin.poll_event(),
            Some(OriginEvent::Stream(StreamEvent::Closed(id)))
        );
    }

    #[test]
    fn stream_halves_move_only_forward() {
        use RecvHalf as R;
        use SendHalf as S;
        assert_eq!(S::Open.close(), S::FinQueued);
        assert_eq!(S::FinQueued.close(), S::FinQueued);
        assert_eq!(S::FinSent.close(), S::FinSent);
        assert_eq!(S::FinQueued.fin_framed(), S::FinSent);
        for (state, accepts, due_when_drained) in [
            (S::Open, true, false),
            (S::FinQueued, false, true),
            (S::FinSent, false, false),
        ] {
            assert_eq!(state.accepts_bytes(), accepts, "{state:?}");
            assert_eq!(state.fin_due(true), due_when_drained, "{state:?}");
            assert!(
                !state.fin_due(false),
                "{state:?}: FIN before buffered bytes"
            );
        }
        assert_eq!(R::Open.on_data(1), Ok(R::Open));
        assert_eq!(R::Open.on_fin(), Ok(R::FinReceived));
        assert_eq!(R::FinReceived.on_data(1), Err(MuxError::WindowExceeded(1)));
        assert_eq!(
            R::FinReceived.on_fin(),
            Err(MuxError::Unexpected(FrameType::Fin))
        );
    }

    #[test]
    fn a_closed_send_half_takes_no_more_bytes_and_fin_waits_for_the_buffer() {
        let now = Instant::now();
        let mut edge = EdgeSession::new(now);
        let mut origin = OriginSession::new(now);
        let id = edge.open_stream("h", b"").unwrap();
        assert_eq!(edge.halves(id), Some((SendHalf::Open, RecvHalf::Open)));
        assert_eq!(edge.write(id, b"abc"), 3);
        edge.close_write(id);
        assert_eq!(edge.halves(id), Some((SendHalf::FinQueued, RecvHalf::Open)));
        assert_eq!(edge.write(id, b"more"), 0);
        assert_eq!(edge.writable(id), 0);
        assert!(edge.fill(id, |_| Ok(1)).is_none());
        // Nothing framed yet: FIN goes out after the three bytes, in the same batch.
        let mut out = Vec::new();
        edge.poll_transmit(&mut out, 1 << 20);
        assert_eq!(edge.halves(id), Some((SendHalf::FinSent, RecvHalf::Open)));
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while let Some((f, n)) = decode_frame(rest).unwrap() {
            frames.push(format!("{f:?}"));
            rest = &rest[n..];
        }
        let tail: Vec<_> = frames.iter().rev().take(2).rev().cloned().collect();
        assert_eq!(
            tail,
            [
                format!(
                    "{:?}",
                    Frame::Data {
                        stream: id,
                        data: b"abc"
                    }
                ),
                format!("{:?}", Frame::Fin { stream: id }),
            ]
        );
        assert_eq!(origin.handle_input(&out, now), Ok(out.len()));
        assert_eq!(
            origin.halves(id),
            Some((SendHalf::Open, RecvHalf::FinReceived))
        );
        // Received but unread bytes keep the stream readable after the FIN.
        assert!(!origin.read_closed(id));
        origin.consume(id, 3, now);
        assert!(origin.read_closed(id));
    }

    #[test]
    fn data_or_fin_after_fin_is_a_connection_error() {
        let now = Instant::now();
        for late in [
            Frame::Data {
                stream: 1,
                data: b"x",
            },
            Frame::Fin { stream: 1 },
        ] {
            let mut edge = EdgeSession::new(now);
            let mut origin = OriginSession::new(now);
            let id = edge.open_stream("h", b"").unwrap();
            edge.close_write(id);
            pipe(&mut edge, &mut origin, now);
            let mut out = Vec::new();
            encode(&mut out, &late);
            let want = match late {
                Frame::Fin { .. } => MuxError::Unexpected(FrameType::Fin),
                _ => MuxError::WindowExceeded(id),
            };
            assert_eq!(origin.handle_input(&out, now), Err(want));
        }
    }

    /// The frames of one stream's whole life, as the origin receives them.
    fn one_stream_life(id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for f in [
            Frame::Open {
                stream: id,
                hostname: "h",
                claims: b"{}",
            },
            Frame::Data {
                stream: id,
                data: b"hello",
            },
            Frame::Window {
                stream: id,
                credit: 10,
                consumed: 0,
            },
            Frame::Data {
                stream: id,
                data: b"",
            },
            Frame::Fin { stream: id },
            Frame::Ping(7),
        ] {
            encode(&mut out, &f);
        }
        out
    }

    /// What an origin session shows after `input` went in, in pieces that end at `cuts`,
    /// each piece after what the previous calls left unconsumed (as a driver does).
    fn origin_after(
        input: &[u8],
        cuts: &[usize],
    ) -> (Vec<OriginEvent>, Option<(SendHalf, RecvHalf)>) {
        let now = Instant::now();
        let mut s = OriginSession::new(now);
        let mut pending = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([&input.len()]) {
            pending.extend_from_slice(&input[from..cut]);
            from = cut;
            let n = s.handle_input(&pending, now).unwrap();
            pending.drain(..n);
        }
        assert!(pending.is_empty());
        let mut events = Vec::new();
        while let Some(ev) = s.poll_event() {
            events.push(ev);
        }
        (events, s.halves(1))
    }

    #[test]
    fn stream_states_do_not_depend_on_how_the_input_is_split() {
        let input = one_stream_life(1);
        let whole = origin_after(&input, &[]);
        assert_eq!(whole.1, Some((SendHalf::Open, RecvHalf::FinReceived)));
        assert!(whole
            .0
            .contains(&OriginEvent::Stream(StreamEvent::Readable(1))));
        for cut in 0..=input.len() {
            assert_eq!(origin_after(&input, &[cut]), whole, "split at {cut}");
        }
        let every_byte: Vec<usize> = (1..input.len()).collect();
        assert_eq!(origin_after(&input, &every_byte), whole, "byte by byte");
    }

    #[test]
    fn window_violation_is_a_connection_error() {
        let now = Instant::now();
        let mut edge = EdgeSession::new(now);
        let mut origin = OriginSession::new(now);
        let id = edge.open_stream("h", b"").unwrap();
        pipe(&mut edge, &mut origin, now);
        let mut out = Vec::new();
        let chunk = vec![0u8; MAX_FRAME_PAYLOAD];
        for _ in 0..=(INITIAL_STREAM_WINDOW as usize / MAX_FRAME_PAYLOAD) {
            encode(
                &mut out,
                &Frame::Data {
                    stream: id,
                    data: &chunk,
                },
            );
        }
        assert_eq!(
            origin.handle_input(&out, now),
            Err(MuxError::WindowExceeded(id))
        );
        // Sticky.
        assert_eq!(
            origin.handle_input(&[], now),
            Err(MuxError::WindowExceeded(id))
        );
    }

    #[test]
    fn unknown_and_closed_streams() {
        let now = Instant::now();
        let mut origin = OriginSession::new(now);
        let mut out = Vec::new();
        encode(
            &mut out,
            &Frame::Data {
                stream: 7,
                data: b"x",
            },
        );
        assert_eq!(
            origin.handle_input(&out, now),
            Err(MuxError::UnknownStream(7))
        );

        let mut edge = EdgeSession::new(now);
        let id = edge.open_stream("h", b"").unwrap();
        edge.reset(id, ResetCode::Cancel, "gone");
        // A late frame for a stream we reset is ignored.
        let mut late = Vec::new();
        encode(
            &mut late,
            &Frame::Data {
                stream: id,
                data: b"x",
            },
        );
        assert_eq!(edge.handle_input(&late, now), Ok(late.len()));
        // The origin may not open streams.
        let mut open = Vec::new();
        encode(
            &mut open,
            &Frame::Open {
                stream: 3,
                hostname: "h",
                claims: b"",
            },
        );
        assert_eq!(edge.handle_input(&open, now), Err(MuxError::BadOpen(3)));
    }

    fn encoded(frame: &Frame<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, frame);
        out
    }

    #[test]
    fn frames_only_the_other_side_receives_are_connection_errors_not_events() {
        let now = Instant::now();
        let registered = Frame::Registered { hostname: "h" };
        let error = Frame::Error {
            code: ErrorCode::Forbidden,
            message: "no",
        };
        let open = Frame::Open {
            stream: 1,
            hostname: "h",
            claims: b"",
        };
        for (frame, want) in [
            (&registered, MuxError::Unexpected(FrameType::Registered)),
            (&error, MuxError::Unexpected(FrameType::Error)),
            (&open, MuxError::BadOpen(1)),
        ] {
            let mut edge = EdgeSession::new(now);
            let bytes = encoded(frame);
            assert_eq!(
                edge.handle_input(&bytes, now),
                Err(want.clone()),
                "{frame:?}"
            );
            assert_eq!(
                edge.poll_event(),
                None,
                "{frame:?} reached the edge's driver"
            );
            assert_eq!(edge.handle_input(&[], now), Err(want), "sticky");
        }
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            connector_id: [1; 16],
            ha_index: 0,
        };
        let register = Frame::Register {
            hostname: "h",
            service: "ssh://localhost:22",
        };
        for (frame, want) in [
            (&hello, MuxError::Unexpected(FrameType::Hello)),
            (&register, MuxError::Unexpected(FrameType::Register)),
        ] {
            let mut origin = OriginSession::new(now);
            let bytes = encoded(frame);
            assert_eq!(origin.handle_input(&bytes, now), Err(want), "{frame:?}");
            assert_eq!(
                origin.poll_event(),
                None,
                "{frame:?} reached the origin's driver"
            );
        }
    }

    #[test]
    fn each_side_hears_what_its_peer_may_send() {
        let now = Instant::now();
        let mut edge = EdgeSession::new(now);
        let mut origin = OriginSession::new(now);
        origin.send_hello([3; 16], 2, false);
        origin.send_register("h", "ssh://localhost:22");
        pipe(&mut edge, &mut origin, now);
        assert_eq!(
            edge.poll_event(),
            Some(EdgeEvent::Hello {
                version: PLAIN_PROTOCOL_VERSION,
                connector_id: [3; 16],
                ha_index: 2
            })
        );
        assert_eq!(
            edge.poll_event(),
            Some(EdgeEvent::Register {
                hostname: "h".into(),
                service: "ssh://localhost:22".into()
            })
        );
        edge.send_registered("h");
        edge.send_error(ErrorCode::Conflict, "taken");
        let id = edge.open_stream("h", b"{}").unwrap();
        pipe(&mut edge, &mut origin, now);
        assert_eq!(
            origin.poll_event(),
            Some(OriginEvent::Registered {
                hostname: "h".into()
            })
        );
        assert_eq!(
            origin.poll_event(),
            Some(OriginEvent::Error {
                code: ErrorCode::Conflict,
                message: "taken".into()
            })
        );
        assert_eq!(
            origin.poll_event(),
            Some(OriginEvent::Open {
                stream: id,
                hostname: "h".into(),
                claims: b"{}".to_vec()
            })
        );
        origin.reset(id, ResetCode::ConnectFailed, "refused");
        pipe(&mut edge, &mut origin, now);
        assert_eq!(
            edge.poll_event(),
            Some(EdgeEvent::Stream(StreamEvent::Reset {
                stream: id,
                code: ResetCode::ConnectFailed,
                reason: "refused".into()
            }))
        );
    }

    #[test]
    fn keepalive_pings_then_declares_dead() {
        let t0 = Instant::now();
        let mut s = OriginSession::new(t0);
        let next = s.handle_timeout(t0).unwrap();
        assert!(next > t0);
        let t1 = t0 + PING_INTERVAL;
        s.handle_timeout(t1).unwrap();
        let mut out = Vec::new();
        s.poll_transmit(&mut out, 1024);
        assert!(matches!(decode_frame(&out), Ok(Some((Frame::Ping(1), _)))));
        let dead = t0 + PING_INTERVAL * PING_DEAD_INTERVALS;
        assert_eq!(s.handle_timeout(dead), Err(MuxError::KeepaliveTimeout));
    }

    #[test]
    fn goaway_refuses_new_streams() {
        let now = Instant::now();
        let mut edge = EdgeSession::new(now);
        let mut origin = OriginSession::new(now);
        origin.send_goaway("shutting down");
        pipe(&mut edge, &mut origin, now);
        assert!(matches!(edge.poll_event(), Some(EdgeEvent::GoAway { .. })));
        assert!(edge.is_going_away());
        assert_eq!(edge.open_stream("h", b""), None);
    }

    /// The PINGs among `bytes`' frames.
    fn pings_in(mut bytes: &[u8]) -> usize {
        let mut pings = 0;
        while let Ok(Some((frame, n))) = decode_frame(bytes) {
            pings += usize::from(matches!(frame, Frame::Ping(_)));
            bytes = &bytes[n..];
        }
        pings
    }

    #[test]
    fn a_new_connection_measures_its_round_trip_with_a_burst_of_probes() {
        // The first exchange meets a peer busy with its handshake (250 µs each way, so the
        // first sample is several times the path's); the path's own round trip is 60 µs.
        // Each PONG sends the next PING at once, RTT_PROBES in all, so the windows are not
        // sized from the busy first sample until a keepalive.
        let (busy, path) = (Duration::from_micros(500), Duration::from_micros(60));
        let t0 = Instant::now();
        let (mut edge, mut origin) = (EdgeSession::new(t0), OriginSession::new(t0));
        origin.send_hello([0; 16], 0, false);
        let mut now = t0;
        let mut edge_pings = 0;
        for round in 0..2 * RTT_PROBES {
            let half = if round == 0 { busy / 2 } else { path / 2 };
            let mut out = Vec::new();
            origin.poll_transmit(&mut out, 1 << 20);
            now += half;
            edge.handle_input(&out, now).unwrap();
            let mut back = Vec::new();
            edge.poll_transmit(&mut back, 1 << 20);
            edge_pings += pings_in(&back);
            now += half;
            origin.handle_input(&back, now).unwrap();
        }
        assert_eq!(
            edge_pings, RTT_PROBES as usize,
            "a burst, then none until a keepalive"
        );
        assert_eq!(edge.rtt_min, Some(path));
        assert_eq!(origin.rtt_min, Some(path));
        assert_eq!(edge.rtt_samples, RTT_PROBES);
        // The keepalive still pings, and its PONG sends no further probe.
        edge.handle_timeout(t0 + PING_INTERVAL).unwrap();
        let mut out = Vec::new();
        edge.poll_transmit(&mut out, 1 << 20);
        assert_eq!(pings_in(&out), 1);
        origin.handle_input(&out, now).unwrap();
        let mut back = Vec::new();
        origin.poll_transmit(&mut back, 1 << 20);
        edge.handle_input(&back, t0 + PING_INTERVAL + path).unwrap();
        let mut out = Vec::new();
        edge.poll_transmit(&mut out, 1 << 20);
        assert_eq!(pings_in(&out), 0);
        assert_eq!(edge.rtt_min, Some(path));
    }

    // ---- window auto-tuning ----

    /// An edge and an origin whose first frames measured a round trip of `rtt` on each side
    /// (each one's first input sends a probe PING), and one stream from the edge.
    fn measured(rtt: Duration) -> (EdgeSession, OriginSession, u32, Instant) {
        measured_beside(rtt, 0)
    }

    /// [`measured`], with the stream opened after `others` idle ones (an interactive stream
    /// beside a bulk one: what a short path's start window is for).
    fn measured_beside(rtt: Duration, others: usize) -> (EdgeSession, OriginSession, u32, Instant) {
        let t0 = Instant::now();
        let (mut edge, mut origin) = (EdgeSession::new(t0), OriginSession::new(t0));
        origin.send_hello([0; 16], 0, false);
        let mut now = t0;
        // The whole burst of probes, so that none is in flight during the test's rounds.
        for _ in 0..=RTT_PROBES {
            let mut out = Vec::new();
            origin.poll_transmit(&mut out, 1 << 20);
            now += rtt / 2;
            edge.handle_input(&out, now).unwrap();
            let mut back = Vec::new();
            edge.poll_transmit(&mut back, 1 << 20);
            now += rtt / 2;
            origin.handle_input(&back, now).unwrap();
        }
        assert_eq!(edge.rtt_min, Some(rtt));
        assert_eq!(origin.rtt_min, Some(rtt));
        assert_eq!(
            (edge.rtt_samples, origin.rtt_samples),
            (RTT_PROBES, RTT_PROBES)
        );
        while edge.poll_event().is_some() {}
        for _ in 0..others {
            edge.open_stream("h", b"").unwrap();
        }
        let id = edge.open_stream("h", b"").unwrap();
        (edge, origin, id, now)
    }

    /// One round trip of a bulk upload on `id`: the edge sends all its window allows, the
    /// origin consumes up to `take` bytes half a round trip later, and its credit arrives
    /// back at the edge after the other half. Returns the bytes the edge framed.
    fn bulk_round(
        edge: &mut EdgeSession,
        origin: &mut OriginSession,
        id: u32,
        now: &mut Instant,
        rtt: Duration,
        take: usize,
    ) -> usize {
        let chunk = vec![7u8; 64 * 1024];
        let mut out = Vec::new();
        let mut sent = edge.streams[&id].tx.len();
        loop {
            sent += edge.write(id, &chunk);
            let before = out.len();
            edge.poll_transmit(&mut out, usize::MAX);
            if out.len() == before {
                break;
            }
        }
        sent -= edge.streams[&id].tx.len();
        *now += rtt / 2;
        origin.handle_input(&out, *now).unwrap();
        while origin.poll_event().is_some() {}
        let n = origin.readable(id).len().min(take);
        origin.consume(id, n, *now);
        let mut back = Vec::new();
        origin.poll_transmit(&mut back, 1 << 20);
        *now += rtt / 2;
        edge.handle_input(&back, *now).unwrap();
        sent
    }

    /// Moves `total` bytes on `id` from `tx` to `rx`, whose reader takes at most `piece`
    /// bytes per `consume`, half a round trip each way. Panics if the stream stalls.
    fn trickle<A: Role, B: Role>(
        tx: &mut Session<A>,
        rx: &mut Session<B>,
        id: u32,
        total: usize,
        piece: usize,
        now: &mut Instant,
        rtt: Duration,
    ) {
        let chunk = vec![3u8; 16 * 1024];
        let (mut written, mut received) = (0, 0);
        for _ in 0..100_000 {
            let mut out = Vec::new();
            loop {
                let want = chunk.len().min(total - written);
                written += tx.write(id, &chunk[..want]);
                let before = out.len();
                tx.poll_transmit(&mut out, usize::MAX);
                if out.len() == before {
                    break;
                }
            }
            *now += rtt / 2;
            rx.handle_input(&out, *now).unwrap();
            while rx.poll_event().is_some() {}
            loop {
                let n = rx.readable(id).len().min(piece);
                if n == 0 {
                    break;
                }
                rx.consume(id, n, *now);
                received += n;
            }
            if received == total {
                return;
            }
            let mut back = Vec::new();
            rx.poll_transmit(&mut back, usize::MAX);
            *now += rtt / 2;
            tx.handle_input(&back, *now).unwrap();
            while tx.poll_event().is_some() {}
        }
        panic!("the stream stalled at {received} of {total} bytes");
    }

    #[test]
    fn a_start_window_below_the_initial_one_never_stalls_a_stream() {
        // Readers that take small pieces, each way, where the receiver starts below the
        // protocol's 256 KiB (beside another stream) and withholds the rest from its first
        // credit.
        for (rtt_us, start) in [(20, START_STREAM_WINDOW), (150, 150_000)] {
            let rtt = Duration::from_micros(rtt_us);
            for piece in [1000, 4096, 65536] {
                let (mut edge, mut origin, id, mut now) = measured_beside(rtt, 1);
                trickle(&mut edge, &mut origin, id, 1 << 20, piece, &mut now, rtt);
                assert_eq!(origin.streams[&id].window, start);
                // Download: the origin writes, the edge reads.
                trickle(&mut origin, &mut edge, id, 1 << 20, piece, &mut now, rtt);
                assert_eq!(edge.streams[&id].window, start);
                assert_eq!((edge.tuned, origin.tuned), (0, 0));
            }
        }
    }

    #[test]
    fn a_window_grows_to_fill_a_long_path_when_the_consumer_keeps_up() {
        let rtt = Duration::from_millis(50);
        let (mut edge, mut origin, id, mut now) = measured(rtt);
        bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
        // The first consume only starts the measuring.
        assert_eq!(origin.streams[&id].window, INITIAL_STREAM_WINDOW);
        let mut last = 0;
        for _ in 0..10 {
            last = bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
        }
        assert_eq!(origin.streams[&id].window, MAX_STREAM_WINDOW);
        // A whole grown window per round trip: 16 times what the initial one allowed.
        assert!(
            last > (MAX_STREAM_WINDOW - WINDOW_UPDATE_THRESHOLD) as usize,
            "{last} bytes in the last round trip"
        );
        // The stream ends: what its window grew goes back to the connection.
        origin.reset(id, ResetCode::Refused, "done");
        assert_eq!(origin.tuned, 0);
    }

    #[test]
    fn a_consumer_slower_than_the_window_keeps_the_initial_one() {
        let rtt = Duration::from_millis(50);
        let (mut edge, mut origin, id, mut now) = measured(rtt);
        // 48 KiB per round trip, under the 64 KiB that half the window in two round trips
        // would be: the reader, not the window, sets the pace.
        for _ in 0..40 {
            bulk_round(&mut edge, &mut origin, id, &mut now, rtt, 48 * 1024);
        }
        assert_eq!(origin.streams[&id].window, INITIAL_STREAM_WINDOW);
        // A reader that stalls, then drains its backlog in pieces at one moment (as a loop
        // writes it out in batches), did not keep up either, however often it does so.
        for _ in 0..4 {
            for _ in 0..10 {
                bulk_round(&mut edge, &mut origin, id, &mut now, rtt, 0);
            }
            while !origin.readable(id).is_empty() {
                let n = origin.readable(id).len().min(16 * 1024);
                origin.consume(id, n, now);
            }
        }
        assert_eq!(origin.streams[&id].window, INITIAL_STREAM_WINDOW);
        assert_eq!(
            origin.streams[&id].rx.capacity(),
            INITIAL_STREAM_WINDOW as usize
        );
        assert_eq!(origin.tuned, 0);
    }

    #[test]
    fn a_window_grows_no_further_than_the_path_can_use() {
        // Loopback: a round trip at the fastest a stream moves is less than the initial
        // window, so the receiver starts below it and a bulk stream there adds no queue ahead
        // of the others, however fast its reader is (bursts of credit make half a window
        // arrive within two round trips).
        for (rtt_us, start) in [(150, 150_000), (20, START_STREAM_WINDOW)] {
            let rtt = Duration::from_micros(rtt_us);
            let (mut edge, mut origin, id, mut now) = measured_beside(rtt, 1);
            // The first round trip (which opens the stream at the origin) still moves the
            // protocol's implicit grant...
            let first = bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
            assert_eq!(first, INITIAL_STREAM_WINDOW as usize);
            assert_eq!(origin.streams[&id].window, start, "at {rtt_us} µs");
            // ...which the receiver then pays back out of its credit: no more than its own
            // window is in flight per round trip, and still more than half of it.
            for _ in 0..40 {
                let moved = bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
                assert!(
                    moved <= start as usize && moved > start as usize / 2,
                    "{moved} in flight at {rtt_us} µs"
                );
            }
            assert_eq!(origin.streams[&id].window, start);
            assert_eq!(origin.tuned, 0);
        }
        // A LAN's millisecond: up to a round trip at the ceiling, not to the largest window
        // (beside another stream: alone, it grows for a loaded round trip).
        let rtt = Duration::from_millis(1);
        let (mut edge, mut origin, id, mut now) = measured_beside(rtt, 1);
        for _ in 0..40 {
            bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
        }
        let w = origin.streams[&id].window;
        let bdp = (STREAM_RATE_CEILING / 1000) as u32;
        assert!(w > INITIAL_STREAM_WINDOW && w <= bdp, "window {w} at 1 ms");
    }

    /// The most the edge had in flight on `id` over `rounds` bulk rounds.
    fn most_in_flight(
        edge: &mut EdgeSession,
        origin: &mut OriginSession,
        id: u32,
        now: &mut Instant,
        rtt: Duration,
        rounds: usize,
    ) -> usize {
        (0..rounds)
            .map(|_| bulk_round(edge, origin, id, now, rtt, usize::MAX))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn a_stream_alone_grows_for_a_loaded_round_trip_and_is_held_when_another_joins() {
        // Loopback: the start window (a round trip at the ceiling) is 150 KB, below the
        // protocol's 256 KiB; it keeps a queue short for the others. Alone there are none, and
        // the window grows as if the round trip were a loaded one (`LONE_RTT_FLOOR`).
        let rtt = Duration::from_micros(150);
        let start = 150_000;
        let lone = path_window(LONE_RTT_FLOOR);
        assert!(lone > 2 * INITIAL_STREAM_WINDOW && lone <= MAX_STREAM_WINDOW);
        let (mut edge, mut origin, id, mut now) = measured(rtt);
        let most = most_in_flight(&mut edge, &mut origin, id, &mut now, rtt, 10);
        assert_eq!(origin.streams[&id].window, lone);
        assert_eq!(origin.tuned, grown(lone));
        assert!(most > lone as usize / 2, "alone: at most {most} in flight");
        // Two interactive streams open beside it (their OPENs reach the origin with the next
        // round): from then on, once the credit already granted is spent, the bulk stream
        // has no more than the start window in flight, and its growth is given back.
        let other = edge.open_stream("h", b"").unwrap();
        let third = edge.open_stream("h", b"").unwrap();
        for _ in 0..3 {
            bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
        }
        assert_eq!(origin.streams[&id].window, start);
        assert_eq!(origin.streams[&other].window, start);
        assert_eq!(origin.tuned, 0);
        for _ in 0..20 {
            let moved = bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
            assert!(moved <= start as usize, "shared: {moved} in flight");
        }
        // One ends: the bulk stream still shares the connection with the other.
        origin.reset(third, ResetCode::Refused, "done");
        let most = most_in_flight(&mut edge, &mut origin, id, &mut now, rtt, 10);
        assert_eq!(origin.streams[&id].window, start);
        assert!(most <= start as usize, "still shared: {most} in flight");
        // The last ends: alone again, it takes the initial window back and grows again.
        origin.reset(other, ResetCode::Refused, "done");
        let most = most_in_flight(&mut edge, &mut origin, id, &mut now, rtt, 10);
        assert_eq!(origin.streams[&id].window, lone);
        assert!(
            most > lone as usize / 2,
            "alone again: at most {most} in flight"
        );
        assert_eq!((edge.tuned, origin.tuned), (0, grown(lone)));
    }

    #[test]
    fn alone_a_window_does_not_grow_for_a_reader_slower_than_a_loaded_round_trip() {
        // The idle round trip is loopback's, but the reader takes a window (so half of one
        // since the last look) only every two `LONE_RTT_FLOOR`s: not under two loaded round
        // trips.
        let rtt = Duration::from_micros(150);
        let (mut edge, mut origin, id, mut now) = measured(rtt);
        let slow = 2 * LONE_RTT_FLOOR;
        for _ in 0..10 {
            bulk_round(&mut edge, &mut origin, id, &mut now, slow, usize::MAX);
        }
        assert_eq!(origin.streams[&id].window, INITIAL_STREAM_WINDOW);
        assert_eq!(origin.tuned, 0);
        // A microsecond faster, it grows.
        for _ in 0..10 {
            let fast = slow - Duration::from_micros(1);
            bulk_round(&mut edge, &mut origin, id, &mut now, fast, usize::MAX);
        }
        assert!(origin.streams[&id].window > INITIAL_STREAM_WINDOW);
    }

    #[test]
    fn a_lone_stream_at_the_initial_window_is_held_to_the_start_window() {
        // One round alone (the first look starts the measuring epoch: nothing grew yet),
        // then another stream opens.
        let rtt = Duration::from_micros(150);
        let (mut edge, mut origin, id, mut now) = measured(rtt);
        bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
        assert_eq!(origin.streams[&id].window, INITIAL_STREAM_WINDOW);
        edge.open_stream("h", b"").unwrap();
        bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
        assert_eq!(origin.streams[&id].window, start_window(Some(rtt)));
    }

    #[test]
    fn a_window_held_twice_before_its_credit_is_paid_back_neither_overruns_nor_escapes() {
        // Grown alone, then a stream opens and closes and another opens, with the reader
        // stalled throughout: the credit the peer already had is all it may send, and once
        // the reader drains, the hold is the start window's.
        let rtt = Duration::from_micros(150);
        let start = start_window(Some(rtt)) as usize;
        let (mut edge, mut origin, id, mut now) = measured(rtt);
        for _ in 0..10 {
            bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
        }
        let lone = origin.streams[&id].window;
        assert_eq!(lone, path_window(LONE_RTT_FLOOR));
        // Whatever the edge may send, delivered, nothing consumed.
        let deliver = |edge: &mut EdgeSession, origin: &mut OriginSession, now: Instant| {
            let mut out = Vec::new();
            let _ = edge.write(id, &[7u8; 64 * 1024]);
            edge.poll_transmit(&mut out, usize::MAX);
            origin.handle_input(&out, now).unwrap();
            while origin.poll_event().is_some() {}
        };
        let b = edge.open_stream("h", b"").unwrap();
        deliver(&mut edge, &mut origin, now);
        origin.reset(b, ResetCode::Refused, "done");
        let c = edge.open_stream("h", b"").unwrap();
        for _ in 0..80 {
            deliver(&mut edge, &mut origin, now);
        }
        assert!(origin.streams.contains_key(&c));
        assert!(origin.readable(id).len() <= lone as usize);
        assert_eq!(origin.tuned, grown(origin.streams[&id].holdable()));
        assert!(origin.tuned > 0, "the held credit still counts");
        // The reader drains: once the credit given before is spent, a start window at most.
        for _ in 0..3 {
            bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
        }
        for _ in 0..10 {
            let moved = bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
            assert!(moved <= start, "{moved} in flight");
        }
        assert_eq!(origin.tuned, 0);
    }

    #[test]
    fn a_window_grown_for_a_long_path_is_not_held_when_another_stream_joins() {
        // A long path: the start window is the initial one, and a window that auto-tuning
        // grew is the path's, not a queue; it stays, and so does the budget's count of it.
        let rtt = Duration::from_millis(50);
        let (mut edge, mut origin, id, mut now) = measured(rtt);
        for _ in 0..11 {
            bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
        }
        assert_eq!(origin.streams[&id].window, MAX_STREAM_WINDOW);
        let tuned = origin.tuned;
        assert_eq!(tuned, grown(MAX_STREAM_WINDOW));
        let other = edge.open_stream("h", b"").unwrap();
        bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
        assert!(origin.streams.contains_key(&other));
        assert_eq!(origin.streams[&id].window, MAX_STREAM_WINDOW);
        assert_eq!(origin.tuned, tuned);
        origin.reset(other, ResetCode::Refused, "done");
        assert_eq!(origin.streams[&id].window, MAX_STREAM_WINDOW);
        assert_eq!(origin.tuned, tuned);
    }

    #[test]
    fn a_window_grown_alone_on_a_medium_path_is_held_to_what_the_path_uses() {
        // 1 ms: a round trip at the ceiling is 1 MB, above the initial window but below what
        // the stream grew to alone. Sharing, it keeps the path's window, not the start one.
        let rtt = Duration::from_millis(1);
        let (mut edge, mut origin, id, mut now) = measured(rtt);
        for _ in 0..10 {
            bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
        }
        assert_eq!(origin.streams[&id].window, path_window(LONE_RTT_FLOOR));
        edge.open_stream("h", b"").unwrap();
        bulk_round(&mut edge, &mut origin, id, &mut now, rtt, usize::MAX);
        assert_eq!(origin.streams[&id].window, path_window(rtt));
        assert_eq!(origin.tuned, grown(path_window(rtt)));
    }

    #[test]
    fn without_a_measured_round_trip_no_window_grows() {
        let now = Instant::now();
        let (mut edge, mut origin) = (EdgeSession::new(now), OriginSession::new(now));
        let id = edge.open_stream("h", b"").unwrap();
        let mut t = now;
        for _ in 0..20 {
            // The probe PING is never answered: the edge's output is read, not its PONGs.
            bulk_round(
                &mut edge,
                &mut origin,
                id,
                &mut t,
                Duration::ZERO,
                usize::MAX,
            );
            origin.ping_out = None;
            origin.rtt_min = None;
        }
        assert_eq!(origin.streams[&id].window, INITIAL_STREAM_WINDOW);
    }

    /// Twelve rounds in which each of `ids` moves all its window allows, a quarter of a round
    /// trip of `rtt` apart: readers that keep up.
    fn fast_rounds(
        edge: &mut EdgeSession,
        origin: &mut OriginSession,
        ids: &[u32],
        now: &mut Instant,
        rtt: Duration,
    ) {
        for _ in 0..12 {
            for &id in ids {
                bulk_round(edge, origin, id, now, Duration::ZERO, usize::MAX);
            }
            *now += rtt / 4;
        }
    }

    #[test]
    fn grown_windows_stay_within_the_connection_budget() {
        let rtt = Duration::from_millis(50);
        let (mut edge, mut origin, first, mut now) = measured(rtt);
        let mut ids = vec![first];
        for _ in 0..5 {
            ids.push(edge.open_stream("h", b"").unwrap());
        }
        fast_rounds(&mut edge, &mut origin, &ids, &mut now, rtt);
        let extra: u32 = ids.iter().map(|id| grown(origin.streams[id].window)).sum();
        assert_eq!(extra, origin.tuned);
        assert_eq!(
            origin.tuned, TUNED_WINDOW_BUDGET,
            "six fast streams use it all"
        );
        let late = edge.open_stream("h", b"").unwrap();
        fast_rounds(&mut edge, &mut origin, &[late], &mut now, rtt);
        assert_eq!(origin.streams[&late].window, INITIAL_STREAM_WINDOW);
        // Closing streams gives their share back, and the late stream grows now.
        for &id in &ids {
            origin.reset(id, ResetCode::Refused, "done");
        }
        assert_eq!(origin.tuned, 0);
        fast_rounds(&mut edge, &mut origin, &[late], &mut now, rtt);
        assert_eq!(origin.streams[&late].window, MAX_STREAM_WINDOW);
        assert_eq!(origin.tuned, MAX_STREAM_WINDOW - INITIAL_STREAM_WINDOW);
    }
}
