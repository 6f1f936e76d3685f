//! HTTP/1.1 heads for the WebSocket upgrade (RFC 9112, RFC 6455 §4), sans-IO.
//!
//! The edge reads request heads from anyone on the internet and the client reads the edge's
//! response head; nothing else of HTTP is spoken. Both directions use one parser.
//!
//! ```text
//!   client                                   edge
//!   write_request ── GET /path HTTP/1.1 ──▶ parse_request_head
//!   parse_response_head ◀── HTTP/1.1 101 ── write_response
//!                     (WebSocket frames follow)
//! ```
//!
//! Contract of `parse_request_head` / `parse_response_head`:
//! - `Ok(None)`: the head is not complete yet; nothing is consumed, call again with the same
//!   bytes plus whatever arrived since. Every prefix of a valid head returns `Ok(None)`.
//! - `Ok(Some((head, n)))`: `buf[..n]` is the head including its blank line; `buf[n..]` is
//!   the first byte after it (WebSocket frames or a body) and is left untouched.
//! - `Err(_)`: the peer is not speaking the HTTP/1.1 we accept; drop the connection (after a
//!   400 if it is a client). Errors are reported as soon as a complete line is wrong, and a
//!   buffer of `max_head_bytes` without a complete head is `TooLarge`, so a slow or hostile
//!   peer cannot make us wait or buffer forever.
//!
//! Strictness, chosen because a parser facing the internet should accept one spelling:
//! lines end in CRLF; the request target is origin-form (`/path?query`, RFC 3986 characters
//! only); the version is exactly `HTTP/1.1`; header names are tokens followed directly by
//! `:`; values hold no control characters (HTAB excepted) and are valid UTF-8; obs-fold is
//! refused; `Host` and `Content-Length` appear at most once, `Content-Length` is a decimal
//! number and never comes with `Transfer-Encoding` (the classic smuggling ambiguity); a
//! request must carry `Host`.
//!
//! Parsing makes two passes over the head: the first validates and counts without
//! allocating, so limits are enforced before any memory is spent; the second, run only on a
//! complete and valid head, copies it into owned strings.

use std::fmt;

use crate::limits::{MAX_HTTP_HEAD, MAX_HTTP_HEADERS};
use crate::proto::base64;

/// Bounds on one head. `Default` takes them from `limits.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head in bytes, start line through the blank line.
    pub max_head_bytes: usize,
    /// Largest number of header fields.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head_bytes: MAX_HTTP_HEAD,
            max_headers: MAX_HTTP_HEADERS,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeadError {
    /// No complete head within `limit` bytes.
    TooLarge { limit: usize },
    /// More than `limit` header fields.
    TooManyHeaders { limit: usize },
    /// A line ended in LF without the CR before it.
    BareLineFeed,
    /// The request line is not `METHOD SP target SP version`.
    BadRequestLine,
    /// The request target is not origin-form.
    BadTarget,
    /// The status line is not `HTTP/1.1 NNN reason`.
    BadStatusLine,
    /// Well-formed, but a version other than HTTP/1.1.
    UnsupportedVersion,
    /// A header name that is empty, not a token, or followed by whitespace before `:`.
    BadHeaderName,
    /// A header value with a control character or invalid UTF-8.
    BadHeaderValue,
    /// A header line starting with whitespace (obsolete line folding).
    ObsFold,
    /// A header that may appear only once appeared twice.
    DuplicateHeader { name: &'static str },
    /// A request without `Host`.
    MissingHost,
    /// `Content-Length` is not a decimal number that fits in 64 bits.
    BadContentLength,
    /// Both `Content-Length` and `Transfer-Encoding`: the body length is ambiguous.
    LengthWithTransferEncoding,
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::TooLarge { limit } => write!(f, "HTTP head larger than {limit} bytes"),
            HeadError::TooManyHeaders { limit } => {
                write!(f, "HTTP head has more than {limit} header fields")
            }
            HeadError::BareLineFeed => {
                write!(f, "HTTP head line ends in a bare LF; HTTP/1.1 requires CRLF")
            }
            HeadError::BadRequestLine => {
                write!(f, "malformed HTTP request line (expected `METHOD /path HTTP/1.1`)")
            }
            HeadError::BadTarget => write!(
                f,
                "HTTP request target is not a plain `/path?query` (proxy-style or unescaped characters)"
            ),
            HeadError::BadStatusLine => {
                write!(f, "malformed HTTP status line (expected `HTTP/1.1 NNN reason`)")
            }
            HeadError::UnsupportedVersion => write!(
                f,
                "peer does not speak HTTP/1.1 (is something other than postern on this port?)"
            ),
            HeadError::BadHeaderName => write!(f, "malformed HTTP header name"),
            HeadError::BadHeaderValue => write!(
                f,
                "HTTP header value contains a control character or invalid UTF-8"
            ),
            HeadError::ObsFold => write!(f, "folded HTTP header line (obs-fold) refused"),
            HeadError::DuplicateHeader { name } => write!(f, "duplicate HTTP {name} header"),
            HeadError::MissingHost => write!(f, "HTTP/1.1 request without a Host header"),
            HeadError::BadContentLength => write!(f, "HTTP Content-Length is not a number"),
            HeadError::LengthWithTransferEncoding => write!(
                f,
                "HTTP head has both Content-Length and Transfer-Encoding; refused as ambiguous"
            ),
        }
    }
}

impl std::error::Error for HeadError {}

/// A parsed request head. Header order and name spelling are kept as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

/// A parsed response head. Header order and name spelling are kept as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The value of the first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// True when any `name` header lists `token` in its comma-separated value
    /// (case-insensitive), e.g. `Connection: keep-alive, Upgrade` has `upgrade`.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        has_token(&self.headers, name, token)
    }

    /// The body length announced by `Content-Length` (validated while parsing).
    pub fn content_length(&self) -> Option<u64> {
        find_header(&self.headers, "content-length").and_then(|v| v.parse().ok())
    }
}

impl ResponseHead {
    /// The value of the first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// True when any `name` header lists `token` in its comma-separated value
    /// (case-insensitive), e.g. `Connection: Upgrade` has `upgrade`.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        has_token(&self.headers, name, token)
    }

    /// The body length announced by `Content-Length` (validated while parsing).
    pub fn content_length(&self) -> Option<u64> {
        find_header(&self.headers, "content-length").and_then(|v| v.parse().ok())
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    // A list header may be split over several lines (RFC 9110 §5.3), so look at all of them.
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim_matches(is_ows_char).eq_ignore_ascii_case(token))
}

/// Parses a request head from the front of `buf`. See the module doc for the contract.
pub fn parse_request_head(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let Some(scan) = scan_head(buf, limits, |line| request_line(line).map(drop))? else {
        return Ok(None);
    };
    if !scan.has_host {
        return Err(HeadError::MissingHost);
    }
    let head = &buf[..scan.len];
    let (method, target) = request_line(first_line(head)?)?;
    let head = RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        headers: collect_headers(head, scan.header_count)?,
    };
    Ok(Some((head, scan.len)))
}

/// Parses a response head from the front of `buf`. See the module doc for the contract.
pub fn parse_response_head(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let Some(scan) = scan_head(buf, limits, |line| status_line(line).map(drop))? else {
        return Ok(None);
    };
    let head = &buf[..scan.len];
    let (status, reason) = status_line(first_line(head)?)?;
    let head = ResponseHead {
        status,
        reason: reason.to_owned(),
        headers: collect_headers(head, scan.header_count)?,
    };
    Ok(Some((head, scan.len)))
}

/// Appends a request head. A body, if any, follows; the caller names its `Content-Length`.
pub fn write_request(out: &mut Vec<u8>, method: &str, target: &str, headers: &[(&str, &str)]) {
    push_checked(out, method, is_tchar);
    out.push(b' ');
    push_checked(out, target, is_target_char);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_headers(out, headers);
    out.extend_from_slice(b"\r\n");
}

/// Appends a response head and `body`. `Content-Length` is added for every status that may
/// carry a body (all but 1xx and 204), so the peer never has to read until EOF.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    debug_assert!((100..=599).contains(&status), "bug: HTTP status {status}");
    let bodiless = (100..200).contains(&status) || status == 204;
    debug_assert!(!bodiless || body.is_empty(), "bug: body on a {status}");
    debug_assert!(
        !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length")),
        "bug: write_response sets Content-Length itself"
    );
    out.extend_from_slice(format!("HTTP/1.1 {status:03} ").as_bytes());
    push_checked(out, reason, is_value_byte);
    out.extend_from_slice(b"\r\n");
    push_headers(out, headers);
    if !bodiless {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        out.extend_from_slice(body);
    }
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn websocket_accept_key(client_key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut input = Vec::with_capacity(client_key.len() + GUID.len());
    input.extend_from_slice(client_key.as_bytes());
    input.extend_from_slice(GUID.as_bytes());
    // SHA-1 only proves the peer read the handshake; collision resistance does not matter.
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::encode(digest.as_ref())
}

/// True when `key` is a valid `Sec-WebSocket-Key`: base64 of exactly 16 bytes (RFC 6455 §4.1).
pub fn is_valid_websocket_key(key: &str) -> bool {
    base64::decode(key).is_ok_and(|k| k.len() == 16)
}

fn push_headers(out: &mut Vec<u8>, headers: &[(&str, &str)]) {
    for (name, value) in headers {
        push_checked(out, name, is_tchar);
        out.extend_from_slice(b": ");
        push_checked(out, value.trim_matches(is_ows_char), is_value_byte);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends the bytes of `s` that `allowed` accepts. Callers pass our own strings, so a
/// refused byte is a bug (caught in tests); in release it is dropped rather than letting a
/// CR or LF split the head and inject a header.
fn push_checked(out: &mut Vec<u8>, s: &str, allowed: fn(u8) -> bool) {
    debug_assert!(
        s.bytes().all(allowed),
        "bug: CR, LF or another invalid byte in an HTTP head field"
    );
    out.extend(s.bytes().filter(|&b| allowed(b)));
}

/// What the validating pass learned about a complete head.
struct Scan {
    /// Bytes through the blank line.
    len: usize,
    header_count: usize,
    has_host: bool,
}

/// Pass one: finds the end of the head and validates every complete line, without
/// allocating. Looks at no more than `max_head_bytes`.
fn scan_head(
    buf: &[u8],
    limits: &HeadLimits,
    check_start_line: impl Fn(&[u8]) -> Result<(), HeadError>,
) -> Result<Option<Scan>, HeadError> {
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let incomplete = || {
        // At the limit without a blank line, the head can only be longer than allowed.
        if buf.len() >= limits.max_head_bytes {
            Err(HeadError::TooLarge {
                limit: limits.max_head_bytes,
            })
        } else {
            Ok(None)
        }
    };
    let mut lines = Lines::new(window);
    let Some(start) = lines.next_line()? else {
        return incomplete();
    };
    check_start_line(start)?;
    let mut header_count = 0usize;
    let mut seen = Seen::default();
    loop {
        let Some(line) = lines.next_line()? else {
            return incomplete();
        };
        if line.is_empty() {
            break;
        }
        header_count += 1;
        if header_count > limits.max_headers {
            return Err(HeadError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        let (name, value) = header_line(line)?;
        seen.note(name, value)?;
    }
    if seen.content_length && seen.transfer_encoding {
        return Err(HeadError::LengthWithTransferEncoding);
    }
    Ok(Some(Scan {
        len: lines.pos,
        header_count,
        has_host: seen.host,
    }))
}

/// Headers whose repetition or combination changes how the message is framed or routed.
#[derive(Default)]
struct Seen {
    host: bool,
    content_length: bool,
    transfer_encoding: bool,
}

impl Seen {
    fn note(&mut self, name: &str, value: &str) -> Result<(), HeadError> {
        if name.eq_ignore_ascii_case("host") {
            if self.host {
                return Err(HeadError::DuplicateHeader { name: "Host" });
            }
            self.host = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            if self.content_length {
                return Err(HeadError::DuplicateHeader {
                    name: "Content-Length",
                });
            }
            if value.is_empty()
                || !value.bytes().all(|b| b.is_ascii_digit())
                || value.parse::<u64>().is_err()
            {
                return Err(HeadError::BadContentLength);
            }
            self.content_length = true;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.transfer_encoding = true;
        }
        Ok(())
    }
}

/// Pass two, on a head pass one accepted: copies the header fields out.
fn collect_headers(head: &[u8], count: usize) -> Result<Vec<(String, String)>, HeadError> {
    let mut lines = Lines::new(head);
    lines.next_line()?;
    let mut headers = Vec::with_capacity(count);
    while let Some(line) = lines.next_line()? {
        if line.is_empty() {
            break;
        }
        let (name, value) = header_line(line)?;
        headers.push((name.to_owned(), value.to_owned()));
    }
    Ok(headers)
}

fn first_line(head: &[u8]) -> Result<&[u8], HeadError> {
    // Pass one found this line; an empty result cannot happen, but is not worth a panic.
    Lines::new(head)
        .next_line()?
        .ok_or(HeadError::BadRequestLine)
}

/// Splits CRLF-terminated lines off the front of a buffer, stopping at the first
/// incomplete one.
struct Lines<'a> {
    buf: &'a [u8],
    /// Start of the next line; everything before it has been returned.
    pos: usize,
}

impl<'a> Lines<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Lines { buf, pos: 0 }
    }

    /// The next complete line without its CRLF, `None` if no LF follows yet.
    fn next_line(&mut self) -> Result<Option<&'a [u8]>, HeadError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let line = rest[..lf]
            .strip_suffix(b"\r")
            .ok_or(HeadError::BareLineFeed)?;
        self.pos += lf + 1;
        Ok(Some(line))
    }
}

/// `method SP origin-form SP HTTP/1.1`.
fn request_line(line: &[u8]) -> Result<(&str, &str), HeadError> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().ok_or(HeadError::BadRequestLine)?;
    let version = parts.next().ok_or(HeadError::BadRequestLine)?;
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(HeadError::BadRequestLine);
    }
    // The version first: `PRI * HTTP/2.0` deserves "wrong version", not "bad target".
    check_version(version, HeadError::BadRequestLine)?;
    if !is_origin_form(target) {
        return Err(HeadError::BadTarget);
    }
    Ok((ascii(method), ascii(target)))
}

/// `HTTP/1.1 SP 3DIGIT SP reason`; the space before an empty reason may be missing.
fn status_line(line: &[u8]) -> Result<(u16, &str), HeadError> {
    let (version, rest) = line.split_at_checked(8).ok_or(HeadError::BadStatusLine)?;
    check_version(version, HeadError::BadStatusLine)?;
    let rest = rest.strip_prefix(b" ").ok_or(HeadError::BadStatusLine)?;
    let (code, rest) = rest.split_at_checked(3).ok_or(HeadError::BadStatusLine)?;
    let reason = match rest {
        [] => &[][..],
        [b' ', reason @ ..] => reason,
        _ => return Err(HeadError::BadStatusLine),
    };
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::BadStatusLine);
    }
    let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&status) {
        return Err(HeadError::BadStatusLine);
    }
    if !reason.iter().all(|&b| is_value_byte(b)) {
        return Err(HeadError::BadStatusLine);
    }
    let reason = std::str::from_utf8(reason).map_err(|_| HeadError::BadStatusLine)?;
    Ok((status, reason))
}

/// Accepts `HTTP/1.1`; another well-formed `HTTP/d.d` is `UnsupportedVersion`, anything
/// else is `malformed`.
fn check_version(version: &[u8], malformed: HeadError) -> Result<(), HeadError> {
    match version {
        b"HTTP/1.1" => Ok(()),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(HeadError::UnsupportedVersion)
        }
        _ => Err(malformed),
    }
}

/// `name ":" OWS value OWS`, returning the name and the trimmed value.
fn header_line(line: &[u8]) -> Result<(&str, &str), HeadError> {
    if line.first().is_some_and(|&b| is_ows(b)) {
        return Err(HeadError::ObsFold);
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(HeadError::BadHeaderName)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(HeadError::BadHeaderName);
    }
    let value = trim_ows(value);
    if !value.iter().all(|&b| is_value_byte(b)) {
        return Err(HeadError::BadHeaderValue);
    }
    let value = std::str::from_utf8(value).map_err(|_| HeadError::BadHeaderValue)?;
    Ok((ascii(name), value))
}

/// `/` followed by RFC 3986 path and query characters, with well-formed percent escapes.
fn is_origin_form(target: &[u8]) -> bool {
    target.first() == Some(&b'/')
        && target.iter().all(|&b| is_target_char(b))
        && crate::proto::url::escapes_well_formed(target)
}

/// A string from bytes already checked to be ASCII.
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("bug: bytes validated as ASCII are UTF-8")
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_ows_char(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 3986 `pchar`, `/` and `?`, plus `%` (escapes are checked separately).
fn is_target_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// RFC 9110 §5.5 field-value bytes: visible ASCII, SP, HTAB and obs-text (>= 0x80, which we
/// further require to form UTF-8). No other control characters, so no CR, LF or NUL.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE_REQUEST: &[u8] = b"GET /ssh?v=1 HTTP/1.1\r\n\
        Host: ssh.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\
        cf-access-client-id: 0123abcd.access\r\n\
        cf-access-client-secret:\t s3cr3t \t\r\n\
        \r\n";

    const SWITCHING_RESPONSE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
        \r\n";

    fn req(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
        parse_request_head(buf, &HeadLimits::default())
    }

    fn resp(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, HeadError> {
        parse_response_head(buf, &HeadLimits::default())
    }

    fn req_err(buf: &[u8]) -> HeadError {
        req(buf).expect_err("head should be refused")
    }

    fn resp_err(buf: &[u8]) -> HeadError {
        resp(buf).expect_err("head should be refused")
    }

    /// A minimal request with one extra header line.
    fn with_header(line: &str) -> Vec<u8> {
        format!("GET / HTTP/1.1\r\nHost: h\r\n{line}\r\n\r\n").into_bytes()
    }

    #[test]
    fn parses_a_websocket_upgrade_request() {
        let (head, n) = req(UPGRADE_REQUEST).unwrap().unwrap();
        assert_eq!(n, UPGRADE_REQUEST.len());
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/ssh?v=1");
        assert_eq!(head.headers.len(), 7);
        assert_eq!(head.header("HOST"), Some("ssh.example.com"));
        assert_eq!(head.header("CF-Access-Client-Secret"), Some("s3cr3t"));
        assert_eq!(head.header("missing"), None);
        assert!(head.header_has_token("connection", "upgrade"));
        assert!(head.header_has_token("Upgrade", "WebSocket"));
        assert!(!head.header_has_token("connection", "close"));
        assert!(is_valid_websocket_key(
            head.header("sec-websocket-key").unwrap()
        ));
    }

    #[test]
    fn parses_a_switching_protocols_response() {
        let (head, n) = resp(SWITCHING_RESPONSE).unwrap().unwrap();
        assert_eq!(n, SWITCHING_RESPONSE.len());
        assert_eq!(head.status, 101);
        assert_eq!(head.reason, "Switching Protocols");
        assert!(head.header_has_token("Connection", "Upgrade"));
        assert_eq!(head.content_length(), None);
    }

    #[test]
    fn bytes_after_the_head_are_not_consumed() {
        let mut buf = SWITCHING_RESPONSE.to_vec();
        buf.extend_from_slice(&[0x82, 0x03, b'a', b'b', b'c']);
        let (_, n) = resp(&buf).unwrap().unwrap();
        assert_eq!(&buf[n..], &[0x82, 0x03, b'a', b'b', b'c']);
    }

    #[test]
    fn every_prefix_needs_more_and_consumes_nothing() {
        for len in 0..UPGRADE_REQUEST.len() {
            assert_eq!(req(&UPGRADE_REQUEST[..len]), Ok(None), "prefix {len}");
        }
        for len in 0..SWITCHING_RESPONSE.len() {
            assert_eq!(resp(&SWITCHING_RESPONSE[..len]), Ok(None), "prefix {len}");
        }
    }

    #[test]
    fn every_split_point_parses_when_fed_incrementally() {
        let whole = req(UPGRADE_REQUEST).unwrap().unwrap();
        for split in 0..=UPGRADE_REQUEST.len() {
            // A driver appends what arrives and retries until the parser has a head.
            let mut buf = Vec::new();
            let mut result = None;
            for chunk in [&UPGRADE_REQUEST[..split], &UPGRADE_REQUEST[split..]] {
                buf.extend_from_slice(chunk);
                if let Some(parsed) = req(&buf).unwrap() {
                    result = Some(parsed);
                    break;
                }
            }
            assert_eq!(result.as_ref(), Some(&whole), "split at {split}");
        }
        // And one byte at a time.
        let mut buf = Vec::new();
        for (i, &b) in SWITCHING_RESPONSE.iter().enumerate() {
            buf.push(b);
            let parsed = resp(&buf).unwrap();
            assert_eq!(parsed.is_some(), i == SWITCHING_RESPONSE.len() - 1);
        }
    }

    #[test]
    fn head_of_exactly_the_limit_parses_one_byte_more_is_too_large() {
        let base = b"GET / HTTP/1.1\r\nHost: h\r\nX: \r\n\r\n".len();
        let limit = 256;
        let head = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
            "a".repeat(limit - base)
        );
        assert_eq!(head.len(), limit);
        let limits = HeadLimits {
            max_head_bytes: limit,
            max_headers: 8,
        };
        assert!(parse_request_head(head.as_bytes(), &limits)
            .unwrap()
            .is_some());

        let longer = head.replacen("X: ", "X: a", 1);
        assert_eq!(
            parse_request_head(longer.as_bytes(), &limits),
            Err(HeadError::TooLarge { limit })
        );
        // The error comes as soon as the limit is reached, not when the head completes.
        assert_eq!(
            parse_request_head(&longer.as_bytes()[..limit], &limits),
            Err(HeadError::TooLarge { limit })
        );
        assert_eq!(
            parse_request_head(&longer.as_bytes()[..limit - 1], &limits),
            Ok(None)
        );
    }

    #[test]
    fn endless_header_without_newline_is_too_large_not_pending() {
        let mut buf = b"GET / HTTP/1.1\r\nX-Slow: ".to_vec();
        buf.resize(MAX_HTTP_HEAD + 1, b'a');
        assert_eq!(
            req(&buf),
            Err(HeadError::TooLarge {
                limit: MAX_HTTP_HEAD
            })
        );
    }

    #[test]
    fn header_count_limit() {
        let limits = HeadLimits {
            max_head_bytes: MAX_HTTP_HEAD,
            max_headers: 3,
        };
        let ok = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n";
        assert!(parse_request_head(ok, &limits).unwrap().is_some());
        let too_many = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n";
        // Refused before the head is even complete.
        assert_eq!(
            parse_request_head(too_many, &limits),
            Err(HeadError::TooManyHeaders { limit: 3 })
        );
        let default_too_many: String = std::iter::once("GET / HTTP/1.1\r\n".to_owned())
            .chain((0..=MAX_HTTP_HEADERS).map(|i| format!("X-{i}: v\r\n")))
            .collect();
        assert_eq!(
            req(default_too_many.as_bytes()),
            Err(HeadError::TooManyHeaders {
                limit: MAX_HTTP_HEADERS
            })
        );
    }

    #[test]
    fn line_endings_must_be_crlf() {
        assert_eq!(req_err(b"GET / HTTP/1.1\n"), HeadError::BareLineFeed);
        assert_eq!(
            req_err(b"GET / HTTP/1.1\r\nHost: h\n\r\n"),
            HeadError::BareLineFeed
        );
        assert_eq!(
            req_err(b"GET / HTTP/1.1\r\nHost: h\r\n\n"),
            HeadError::BareLineFeed
        );
        assert_eq!(resp_err(b"HTTP/1.1 200 OK\n\n"), HeadError::BareLineFeed);
        // A CR inside a line is a control character in whatever it lands in.
        assert_eq!(
            req_err(b"GET / HTTP/1.1\r\nHost: h\rX\r\n\r\n"),
            HeadError::BadHeaderValue
        );
    }

    #[test]
    fn malformed_request_lines() {
        for line in [
            "\r\n",
            "GET /\r\n",
            "GET  / HTTP/1.1\r\n",
            "GET / HTTP/1.1 \r\n",
            " GET / HTTP/1.1\r\n",
            "G(T / HTTP/1.1\r\n",
            "GET / http/1.1\r\n",
            "GET / HTTP/1.12\r\n",
            "GET /a b HTTP/1.1\r\n",
        ] {
            assert_eq!(
                req_err(line.as_bytes()),
                HeadError::BadRequestLine,
                "{line:?}"
            );
        }
    }

    #[test]
    fn only_origin_form_targets() {
        for target in [
            "*",
            "http://example.com/",
            "example.com:443",
            "",
            "/a#frag",
            "/a\"b",
            "/%zz",
            "/%4",
            "/caf\u{e9}",
        ] {
            let line = format!("GET {target} HTTP/1.1\r\n");
            assert_eq!(req_err(line.as_bytes()), HeadError::BadTarget, "{target:?}");
        }
        let (head, _) = req(b"GET /a%2Fb?q=1&r=@:~ HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.target, "/a%2Fb?q=1&r=@:~");
    }

    #[test]
    fn only_http_1_1() {
        assert_eq!(
            req_err(b"GET / HTTP/1.0\r\n"),
            HeadError::UnsupportedVersion
        );
        assert_eq!(
            req_err(b"PRI * HTTP/2.0\r\n"),
            HeadError::UnsupportedVersion
        );
        assert_eq!(
            resp_err(b"HTTP/1.0 200 OK\r\n"),
            HeadError::UnsupportedVersion
        );
    }

    #[test]
    fn malformed_status_lines() {
        for line in [
            "HTTP/1.1\r\n",
            "HTTP/1.1 \r\n",
            "HTTP/1.1 20\r\n",
            "HTTP/1.1 2000 OK\r\n",
            "HTTP/1.1 099 Low\r\n",
            "HTTP/1.1 600 High\r\n",
            "HTTP/1.1 +20 OK\r\n",
            "HTTP/1.1  200 OK\r\n",
            "HTTP/1.1 200 O\x00K\r\n",
            "HTTP/1.1 200 O\x7fK\r\n",
            "http/1.1 200 OK\r\n",
            "GET / HTTP/1.1\r\n",
        ] {
            assert_eq!(
                resp_err(line.as_bytes()),
                HeadError::BadStatusLine,
                "{line:?}"
            );
        }
        assert_eq!(
            resp_err(b"HTTP/1.1 200 \xff\r\n\r\n"),
            HeadError::BadStatusLine,
            "reason must be UTF-8"
        );
    }

    #[test]
    fn status_line_with_empty_or_missing_reason() {
        let (head, _) = resp(b"HTTP/1.1 204\r\n\r\n").unwrap().unwrap();
        assert_eq!((head.status, head.reason.as_str()), (204, ""));
        let (head, _) = resp(b"HTTP/1.1 404 \r\n\r\n").unwrap().unwrap();
        assert_eq!((head.status, head.reason.as_str()), (404, ""));
        let (head, _) = resp(b"HTTP/1.1 403 Forbidden \t by policy\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.reason, "Forbidden \t by policy");
    }

    #[test]
    fn malformed_header_names() {
        for line in [
            "NoColon",
            ": empty",
            "Bad Name: v",
            "Host : h2",
            "X(y): v",
            "X\x00: v",
        ] {
            assert_eq!(
                req_err(&with_header(line)),
                HeadError::BadHeaderName,
                "{line:?}"
            );
        }
    }

    #[test]
    fn malformed_header_values() {
        for line in ["X: a\x00b", "X: a\x7fb", "X: \x1b[31m", "X: a\x0bb"] {
            assert_eq!(
                req_err(&with_header(line)),
                HeadError::BadHeaderValue,
                "{line:?}"
            );
        }
        let mut invalid_utf8 = with_header("X: ab");
        let at = invalid_utf8.windows(2).position(|w| w == b"ab").unwrap();
        invalid_utf8[at] = 0xc3;
        assert_eq!(req_err(&invalid_utf8), HeadError::BadHeaderValue);
        // Valid UTF-8 outside ASCII is obs-text and allowed.
        let (head, _) = req(&with_header("X-Name: Zo\u{eb}")).unwrap().unwrap();
        assert_eq!(head.header("x-name"), Some("Zo\u{eb}"));
    }

    #[test]
    fn values_are_trimmed_and_may_be_empty() {
        let (head, _) = req(&with_header("X-Empty:")).unwrap().unwrap();
        assert_eq!(head.header("x-empty"), Some(""));
        let (head, _) = req(&with_header("X-Pad: \t a  b \t")).unwrap().unwrap();
        assert_eq!(head.header("x-pad"), Some("a  b"));
        let (head, _) = req(&with_header("X-Colons: a:b:c")).unwrap().unwrap();
        assert_eq!(head.header("x-colons"), Some("a:b:c"));
    }

    #[test]
    fn obs_fold_is_refused() {
        let buf = b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n";
        assert_eq!(req_err(buf), HeadError::ObsFold);
        let buf = b"HTTP/1.1 200 OK\r\n\tX: a\r\n\r\n";
        assert_eq!(resp_err(buf), HeadError::ObsFold);
    }

    #[test]
    fn duplicate_host_or_content_length_is_refused() {
        assert_eq!(
            req_err(&with_header("host: other")),
            HeadError::DuplicateHeader { name: "Host" }
        );
        assert_eq!(
            resp_err(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\n"),
            HeadError::DuplicateHeader {
                name: "Content-Length"
            }
        );
        // Other headers may repeat, and header_has_token sees every copy.
        let (head, _) = req(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nConnection: Upgrade\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.header("connection"), Some("keep-alive"));
        assert!(head.header_has_token("connection", "upgrade"));
    }

    #[test]
    fn request_without_host_is_refused() {
        assert_eq!(req_err(b"GET / HTTP/1.1\r\n\r\n"), HeadError::MissingHost);
        // A response needs none.
        assert!(resp(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().is_some());
    }

    #[test]
    fn content_length_must_be_a_number() {
        for value in ["", "-1", "+1", "1 1", "0x10", "1,1", "18446744073709551616"] {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(
                resp_err(head.as_bytes()),
                HeadError::BadContentLength,
                "{value:?}"
            );
        }
        let (head, _) = resp(b"HTTP/1.1 404 Not Found\r\nContent-Length: 42\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.content_length(), Some(42));
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused() {
        let buf = with_header("Content-Length: 5\r\nTransfer-Encoding: chunked");
        assert_eq!(req_err(&buf), HeadError::LengthWithTransferEncoding);
    }

    #[test]
    fn request_round_trip() {
        let (head, _) = req(UPGRADE_REQUEST).unwrap().unwrap();
        let headers: Vec<(&str, &str)> = head
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let mut out = Vec::new();
        write_request(&mut out, &head.method, &head.target, &headers);
        assert_eq!(req(&out), Ok(Some((head, out.len()))));
    }

    #[test]
    fn response_round_trip_with_body() {
        let mut out = Vec::new();
        let body = b"hostname ssh.example.com is not registered by any tunnel\n";
        write_response(
            &mut out,
            404,
            "Not Found",
            &[("Content-Type", "text/plain")],
            body,
        );
        let (head, n) = resp(&out).unwrap().unwrap();
        assert_eq!(head.status, 404);
        assert_eq!(head.reason, "Not Found");
        assert_eq!(head.header("content-type"), Some("text/plain"));
        assert_eq!(head.content_length(), Some(body.len() as u64));
        assert_eq!(&out[n..], body);
    }

    #[test]
    fn switching_protocols_has_no_content_length_other_statuses_always_do() {
        let mut out = Vec::new();
        let accept = websocket_accept_key("dGhlIHNhbXBsZSBub25jZQ==");
        write_response(
            &mut out,
            101,
            "Switching Protocols",
            &[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", &accept),
            ],
            b"",
        );
        assert_eq!(out, SWITCHING_RESPONSE);

        let mut out = Vec::new();
        write_response(&mut out, 403, "Forbidden", &[], b"");
        assert_eq!(out, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
    }

    #[test]
    fn encoders_never_emit_line_breaks_from_fields() {
        // Debug builds assert on a bad field; release builds drop the offending bytes.
        if cfg!(debug_assertions) {
            let caught = std::panic::catch_unwind(|| {
                let mut out = Vec::new();
                write_request(&mut out, "GET", "/", &[("X", "a\r\nInjected: 1")]);
            });
            assert!(caught.is_err());
        } else {
            let mut out = Vec::new();
            write_request(
                &mut out,
                "GET",
                "/",
                &[("Host", "h"), ("X", "a\r\nInjected: 1")],
            );
            let (head, _) = req(&out).unwrap().unwrap();
            assert_eq!(head.header("x"), Some("aInjected: 1"));
            assert_eq!(head.header("injected"), None);
        }
    }

    #[test]
    fn websocket_accept_key_rfc6455_example() {
        assert_eq!(
            websocket_accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn websocket_key_must_be_16_bytes_of_base64() {
        assert!(is_valid_websocket_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_websocket_key("dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!is_valid_websocket_key("c2hvcnQ="));
        assert!(!is_valid_websocket_key(""));
    }

    #[test]
    fn errors_tell_the_operator_what_happened() {
        assert_eq!(
            HeadError::TooLarge { limit: 16384 }.to_string(),
            "HTTP head larger than 16384 bytes"
        );
        assert_eq!(
            HeadError::DuplicateHeader { name: "Host" }.to_string(),
            "duplicate HTTP Host header"
        );
    }
}
