//! Egress through an HTTP proxy: `HTTPS_PROXY`, `NO_PROXY` and HTTP CONNECT (RFC 9110
//! §9.3.6), sans-IO. No sockets, no clock, no process environment: the environment comes in
//! as a function and the proxy's answer as bytes, so every rule is unit-tested.
//!
//! ```text
//!   postern ──TCP──▶ proxy                                  (the caller connects)
//!           ── CONNECT edge:443 HTTP/1.1 ─────────▶        connect_request
//!           ◀── HTTP/1.1 200 Connection established ──     read_answer → Ok(Some(n))
//!           ══ TLS with the edge, through the tunnel ══▶   (answer[n..] is TLS already)
//! ```
//!
//! Which proxy, as curl chooses it for an `https://` URL:
//! - the first non-empty of `https_proxy`, `HTTPS_PROXY`, `all_proxy`, `ALL_PROXY`, in the form
//!   `[http://][user[:password]@]host[:port]` (port 80 by default, as curl; a path is ignored;
//!   user and password percent-decoded). `https://` (TLS to the proxy) and SOCKS proxies are
//!   refused with an error rather than ignored, so a connection never goes direct by surprise.
//! - unless the first non-empty of `no_proxy`, `NO_PROXY` names the target: a comma or space
//!   separated list of `*` (everything), domain names (`example.com` and `.example.com` both
//!   match `example.com` and every name under it; `localhost` matches `ssh.localhost`), IP
//!   addresses (`127.0.0.1`, `::1`, `[::1]`) and CIDR ranges (`10.0.0.0/8`, `fd00::/8`). A
//!   `:port` after an entry is ignored. Names are not resolved: an IP entry never matches a
//!   name, and a domain entry never matches an IP address.
//!
//! [`Connect`] is the exchange as one state machine, driven alike by the origin's link core
//! (non-blocking, in its event loop) and by `access` (blocking, on a setup thread): request
//! bytes out, answer bytes in, the time passed in:
//!
//! ```text
//!  Exchanging ──2xx head──────────────────────────▶ Established(bytes after the head)
//!      ├──other status, not HTTP, head too large──▶ Refused(ProxyError)
//!      ├──EOF before a whole head─────────────────▶ Refused(Closed)
//!      └──now ≥ deadline──────────────────────────▶ Refused(TimedOut)
//! ```
//!
//! Contract of [`read_answer`], after `http`'s: `Ok(None)` means "need more bytes" and
//! consumes nothing; every prefix of an answer returns `Ok(None)`; a buffer of
//! `MAX_HTTP_HEAD` bytes without a complete head is an error. Proxies answer CONNECT in
//! HTTP/1.0 as often as in HTTP/1.1 (tinyproxy says `HTTP/1.0 200 Connection established`),
//! so both versions are accepted here, and nowhere else.
//!
//! The proxy's credentials live in [`BasicAuth`], which has no `Debug` and no `Display`;
//! errors name the variable they came from, never its value.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::limits::{MAX_HTTP_HEAD, PROXY_ANSWER_TIMEOUT_SECS};
use crate::proto::base64;
use crate::proto::http::{self, HeadError, HeadLimits};
use crate::proto::url;

/// Proxy variables, in the order they are looked up (curl's, for an `https://` URL).
pub const PROXY_VARS: [&str; 4] = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];
/// Bypass-list variables, in the order they are looked up.
pub const NO_PROXY_VARS: [&str; 2] = ["no_proxy", "NO_PROXY"];
/// The port of an `http://` proxy URL without one (curl's default).
pub const DEFAULT_PROXY_PORT: u16 = 80;
/// Longest reason phrase repeated in an error message.
const MAX_REASON_SHOWN: usize = 128;

/// A proxy to reach a target through.
pub struct ProxyConfig {
    /// `host:port` of the proxy (an IPv6 host in brackets): where to connect, and how
    /// messages name it.
    pub addr: String,
    /// The variable it came from, so a message can say what to change.
    pub source: &'static str,
    auth: Option<BasicAuth>,
}

impl ProxyConfig {
    /// The credentials to send in `Proxy-Authorization`, if the URL had any.
    pub fn auth(&self) -> Option<&BasicAuth> {
        self.auth.as_ref()
    }

    /// The `CONNECT` request for `target` (`host:port`), with this proxy's credentials.
    pub fn connect_request(&self, target: &str) -> Vec<u8> {
        connect_request(target, self.auth())
    }

    /// The error for a proxy that closed the connection before its answer was complete.
    pub fn closed(&self, target: &str) -> ProxyError {
        ProxyError::Closed {
            proxy: self.addr.clone(),
            target: target.to_owned(),
        }
    }

    /// The error for a proxy that did not answer within `secs` seconds.
    pub fn timed_out(&self, target: &str, secs: u64) -> ProxyError {
        ProxyError::TimedOut {
            proxy: self.addr.clone(),
            target: target.to_owned(),
            secs,
        }
    }
}

/// Basic credentials for the proxy (RFC 7617), decoded from the proxy URL. Deliberately
/// without `Debug` or `Display`: they leave the process only in `Proxy-Authorization`.
pub struct BasicAuth {
    user: Vec<u8>,
    password: Vec<u8>,
}

impl BasicAuth {
    /// The `Proxy-Authorization` value: `Basic base64(user:password)`.
    fn header_value(&self) -> String {
        let mut pair = Vec::with_capacity(self.user.len() + 1 + self.password.len());
        pair.extend_from_slice(&self.user);
        pair.push(b':');
        pair.extend_from_slice(&self.password);
        format!("Basic {}", base64::encode(&pair))
    }
}

/// Why no tunnel through the proxy was set up.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// A proxy variable holds something other than `http://[user:password@]host[:port]`.
    /// `why` never repeats the value, which may hold a password.
    BadUrl {
        var: &'static str,
        why: &'static str,
    },
    /// The proxy answered 407 (or 401, which tinyproxy sends for a wrong password): it wants
    /// credentials, or refused the ones sent.
    AuthRequired {
        proxy: String,
        source: &'static str,
        target: String,
        status: u16,
        reason: String,
        sent_credentials: bool,
    },
    /// The proxy answered CONNECT with a status other than 2xx and 407.
    Refused {
        proxy: String,
        target: String,
        status: u16,
        reason: String,
    },
    /// The answer is not an HTTP response head we accept (or is larger than `MAX_HTTP_HEAD`).
    BadAnswer {
        proxy: String,
        target: String,
        error: HeadError,
    },
    /// The proxy closed the connection before its answer was complete.
    Closed { proxy: String, target: String },
    /// The proxy did not answer within the deadline.
    TimedOut {
        proxy: String,
        target: String,
        secs: u64,
    },
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::BadUrl { var, why } => write!(
                f,
                "{var} is not a proxy postern can use: {why} \
                 (expected http://[user:password@]host[:port]; or name the edge in NO_PROXY)"
            ),
            ProxyError::AuthRequired {
                proxy,
                source,
                target,
                status,
                reason,
                sent_credentials: false,
            } => write!(
                f,
                "proxy {proxy} requires authentication for CONNECT to {target} \
                 (HTTP {status} {reason}): set {source} to http://USER:PASSWORD@{proxy}"
            ),
            ProxyError::AuthRequired {
                proxy,
                source,
                target,
                status,
                reason,
                sent_credentials: true,
            } => write!(
                f,
                "proxy {proxy} refused the user and password from {source} for CONNECT to \
                 {target} (HTTP {status} {reason}): check them, with special characters \
                 percent-encoded"
            ),
            ProxyError::Refused {
                proxy,
                target,
                status,
                reason,
            } => {
                write!(
                    f,
                    "proxy {proxy} refused CONNECT to {target} (HTTP {status} {reason}): "
                )?;
                f.write_str(match status {
                    502..=504 => {
                        "the proxy could not reach the edge: is the edge running, and can the \
                         proxy resolve and reach its address?"
                    }
                    _ => {
                        "is the edge's port allowed by the proxy (many allow CONNECT to 443 \
                         only)? or name the edge in NO_PROXY"
                    }
                })
            }
            ProxyError::BadAnswer {
                proxy,
                target,
                error,
            } => write!(
                f,
                "proxy {proxy} answered CONNECT to {target} with something that is not HTTP \
                 ({error}): is {proxy} an HTTP proxy?"
            ),
            ProxyError::Closed { proxy, target } => write!(
                f,
                "proxy {proxy} closed the connection before answering CONNECT to {target}"
            ),
            ProxyError::TimedOut {
                proxy,
                target,
                secs,
            } => write!(
                f,
                "proxy {proxy} did not answer CONNECT to {target} within {secs} s"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

/// The proxy to reach `target_host` through, from the variables `env` returns (pass
/// `|k| std::env::var(k).ok()` for the process environment). `Ok(None)`: connect directly,
/// because no proxy is set or `NO_PROXY` names the host. A proxy variable that cannot be
/// used is an error, not a silent direct connection.
pub fn proxy_for(
    target_host: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<ProxyConfig>, ProxyError> {
    let first = |vars: &[&'static str]| {
        vars.iter()
            .find_map(|&k| env(k).filter(|v| !v.trim().is_empty()).map(|v| (k, v)))
    };
    let Some((var, url)) = first(&PROXY_VARS) else {
        return Ok(None);
    };
    if let Some((_, list)) = first(&NO_PROXY_VARS) {
        if no_proxy_matches(&list, target_host) {
            return Ok(None);
        }
    }
    let (addr, auth) = parse_proxy_url(&url).map_err(|why| ProxyError::BadUrl { var, why })?;
    Ok(Some(ProxyConfig {
        addr,
        source: var,
        auth,
    }))
}

/// `[http://][user[:password]@]host[:port][/…]` → (`host:port`, credentials).
fn parse_proxy_url(url: &str) -> Result<(String, Option<BasicAuth>), &'static str> {
    let url = url.trim();
    let rest = match url.split_once("://") {
        None => url,
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "http" => rest,
            "https" => return Err("https:// proxies (TLS to the proxy) are not supported"),
            s if s.starts_with("socks") => {
                return Err("SOCKS proxies are not supported, only HTTP CONNECT")
            }
            _ => return Err("the scheme is not http://"),
        },
    };
    // The authority ends at the path, query or fragment (RFC 3986 §3.2); the last `@` in it
    // ends the user information.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let auth = match userinfo {
        None | Some("") => None,
        Some(u) => {
            let (user, password) = u.split_once(':').unwrap_or((u, ""));
            let bad_escape = "a %-escape in the user or password is not two hex digits";
            let user = url::percent_decode(user).ok_or(bad_escape)?;
            let password = url::percent_decode(password).ok_or(bad_escape)?;
            if user.is_empty() {
                return Err("a password without a user name");
            }
            if user.contains(&b':') {
                return Err("the user name contains `:` (RFC 7617 forbids it)");
            }
            Some(BasicAuth { user, password })
        }
    };
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (ip, after) = v6
                .split_once(']')
                .ok_or("`[` without `]` around an IPv6 host")?;
            ip.parse::<Ipv6Addr>()
                .map_err(|_| "not an IPv6 address between `[` and `]`")?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("junk after `]`")?),
            };
            (&hostport[..ip.len() + 2], port)
        }
        None => match hostport.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err("an IPv6 host must be written in brackets, as [::1]:3128")
            }
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    if !host.starts_with('[') && !is_host_name(host) {
        return Err("the host is empty or not a DNS name or IP address");
    }
    let port = match port {
        None => DEFAULT_PROXY_PORT,
        Some(p) => parse_port(p).ok_or("the port is not a number from 1 to 65535")?,
    };
    Ok((format!("{}:{port}", host.to_ascii_lowercase()), auth))
}

/// Letters, digits, `-`, `.` and `_` (DNS names as resolvers take them, and IPv4 addresses).
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&p| p != 0)
}

/// Splits `host:port` or `[v6]:port`; the host comes back without brackets. `None` unless
/// the host is a DNS name, an IPv4 address or a bracketed IPv6 address and the port is
/// 1–65535.
pub fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = parse_port(port)?;
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(|_| (v6, port)),
        None => is_host_name(host).then_some((host, port)),
    }
}

/// True when the `NO_PROXY` list `list` names `host` (see the module doc for the forms).
pub fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let ip = host.parse::<IpAddr>().ok();
    list.split([',', ' ', '\t'])
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = without_port(entry);
            match ip {
                Some(ip) => ip_entry_matches(entry, ip),
                None => {
                    // `example.com`, `.example.com` and `*.example.com` say the same.
                    let domain = entry.trim_start_matches('*').trim_start_matches('.');
                    let domain = domain.trim_end_matches('.');
                    let domain = domain.to_ascii_lowercase();
                    !domain.is_empty()
                        && (host == domain
                            || host
                                .strip_suffix(domain.as_str())
                                .is_some_and(|h| h.ends_with('.')))
                }
            }
        })
}

/// An entry without a `:port` after it, and an IPv6 entry without its brackets.
fn without_port(entry: &str) -> &str {
    if let Some(v6) = entry.strip_prefix('[') {
        return v6.split_once(']').map_or(v6, |(ip, _)| ip);
    }
    match entry.rsplit_once(':') {
        // One colon: `name:port` or `1.2.3.4:port`; more are an IPv6 address.
        Some((h, p)) if !h.contains(':') && parse_port(p).is_some() => h,
        _ => entry,
    }
}

/// `ip` equals the entry's address, or lies in its `addr/prefix` range.
fn ip_entry_matches(entry: &str, ip: IpAddr) -> bool {
    let (addr, prefix) = match entry.split_once('/') {
        Some((a, p)) => match p.parse::<u8>() {
            Ok(p) => (a, Some(p)),
            Err(_) => return false,
        },
        None => (entry, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    let (ip, net, bits) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (
            u128::from(u32::from(a)) << 96,
            u128::from(u32::from(n)) << 96,
            32,
        ),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    let prefix = prefix.unwrap_or(bits);
    if prefix > bits {
        return false;
    }
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    ip & mask == net & mask
}

/// `CONNECT target HTTP/1.1` with `Host` and, with credentials, `Proxy-Authorization`.
/// `target` is `host:port` as [`split_host_port`] accepts it (an IPv6 host in brackets).
pub fn connect_request(target: &str, auth: Option<&BasicAuth>) -> Vec<u8> {
    debug_assert!(
        split_host_port(target).is_some(),
        "bug: CONNECT target {target:?} is not host:port"
    );
    // Only what `split_host_port` allows reaches the head: never a CR, LF or space.
    let target: String = target
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(*c))
        .collect();
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").as_bytes());
    if let Some(auth) = auth {
        out.extend_from_slice(b"Proxy-Authorization: ");
        out.extend_from_slice(auth.header_value().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        concat!(
            "User-Agent: postern/",
            env!("CARGO_PKG_VERSION"),
            "\r\n\r\n"
        )
        .as_bytes(),
    );
    out
}

/// Reads the proxy's answer to CONNECT from the front of `buf` (see the module doc for the
/// contract). `Ok(Some(n))`: the tunnel is open, `buf[..n]` was the proxy's head and
/// `buf[n..]`, if anything, already came from the edge and belongs to TLS.
pub fn read_answer(
    buf: &[u8],
    proxy: &ProxyConfig,
    target: &str,
) -> Result<Option<usize>, ProxyError> {
    let bad = |error| ProxyError::BadAnswer {
        proxy: proxy.addr.clone(),
        target: target.to_owned(),
        error,
    };
    let Some((head, n)) = parse_answer_head(buf).map_err(bad)? else {
        return Ok(None);
    };
    answer_status(
        &head,
        &proxy.addr,
        proxy.source,
        proxy.auth.is_some(),
        target,
    )?;
    Ok(Some(n))
}

/// Where a [`Connect`] stands; what each of its inputs returns. Sticky: once the exchange is
/// decided, every later input returns the same decision (bytes given after `Established`
/// are the target's, and come back as such).
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The answer is not complete yet: write [`Connect::transmit`], read at most
    /// [`Connect::room`] bytes, wake up at [`Connect::deadline`].
    Exchanging,
    /// The proxy opened the tunnel. The bytes are what followed its answer: the target's
    /// already (for TLS, see [`hand_to_tls`]); normally none.
    Established(Vec<u8>),
    /// No tunnel: why, for the operator.
    Refused(ProxyError),
}

enum ConnectState {
    Exchanging,
    Established,
    Refused(ProxyError),
}

/// One `CONNECT target` exchange with a proxy, sans-IO (see the module doc): the caller has
/// connected to the proxy, writes [`Connect::transmit`], feeds what it reads to
/// [`Connect::handle_input`] (or [`Connect::handle_eof`]) and calls
/// [`Connect::handle_timeout`] when the deadline passes. The answer is held in at most
/// `MAX_HTTP_HEAD` bytes.
pub struct Connect {
    proxy: String,
    source: &'static str,
    sent_credentials: bool,
    target: String,
    request: Vec<u8>,
    sent: usize,
    answer: Vec<u8>,
    deadline: Instant,
    state: ConnectState,
}

impl Connect {
    /// The exchange for `CONNECT target` through `proxy`, started at `now`: the proxy has
    /// `PROXY_ANSWER_TIMEOUT_SECS` from then to answer.
    pub fn new(proxy: &ProxyConfig, target: &str, now: Instant) -> Connect {
        Connect {
            proxy: proxy.addr.clone(),
            source: proxy.source,
            sent_credentials: proxy.auth.is_some(),
            target: target.to_owned(),
            request: proxy.connect_request(target),
            sent: 0,
            answer: Vec::new(),
            deadline: now + Duration::from_secs(PROXY_ANSWER_TIMEOUT_SECS),
            state: ConnectState::Exchanging,
        }
    }

    /// Request bytes not yet written (empty once all are, or once the exchange is decided).
    pub fn transmit(&self) -> &[u8] {
        match self.state {
            ConnectState::Exchanging => &self.request[self.sent..],
            _ => &[],
        }
    }

    /// The caller wrote `n` bytes of [`Connect::transmit`].
    pub fn sent(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.request.len());
    }

    /// How many bytes the next read may take: the head limit's remainder (0 once decided).
    /// It is never 0 while exchanging: a full buffer without a head is refused.
    pub fn room(&self) -> usize {
        match self.state {
            ConnectState::Exchanging => MAX_HTTP_HEAD.saturating_sub(self.answer.len()),
            _ => 0,
        }
    }

    /// When the proxy must have answered by; `None` once decided.
    pub fn deadline(&self) -> Option<Instant> {
        matches!(self.state, ConnectState::Exchanging).then_some(self.deadline)
    }

    /// Bytes read from the proxy (at most [`Connect::room`]).
    pub fn handle_input(&mut self, data: &[u8]) -> Progress {
        match &self.state {
            ConnectState::Exchanging => {}
            ConnectState::Established => return Progress::Established(data.to_vec()),
            ConnectState::Refused(e) => return Progress::Refused(e.clone()),
        }
        self.answer.extend_from_slice(data);
        let outcome = parse_answer_head(&self.answer)
            .map_err(|error| ProxyError::BadAnswer {
                proxy: self.proxy.clone(),
                target: self.target.clone(),
                error,
            })
            .and_then(|head| match head {
                None => Ok(None),
                Some((head, n)) => answer_status(
                    &head,
                    &self.proxy,
                    self.source,
                    self.sent_credentials,
                    &self.target,
                )
                .map(|()| Some(n)),
            });
        match outcome {
            Ok(None) => Progress::Exchanging,
            Ok(Some(n)) => {
                self.state = ConnectState::Established;
                let early = self.answer.split_off(n);
                self.answer = Vec::new();
                Progress::Established(early)
            }
            Err(e) => self.refuse(e),
        }
    }

    /// The proxy closed the connection (or took no more bytes) before a whole answer.
    pub fn handle_eof(&mut self) -> Progress {
        match &self.state {
            ConnectState::Exchanging => self.refuse(ProxyError::Closed {
                proxy: self.proxy.clone(),
                target: self.target.clone(),
            }),
            ConnectState::Established => Progress::Established(Vec::new()),
            ConnectState::Refused(e) => Progress::Refused(e.clone()),
        }
    }

    /// The time is `now`: past the deadline without an answer, the exchange is refused.
    pub fn handle_timeout(&mut self, now: Instant) -> Progress {
        match &self.state {
            ConnectState::Exchanging if now >= self.deadline => self.refuse(ProxyError::TimedOut {
                proxy: self.proxy.clone(),
                target: self.target.clone(),
                secs: PROXY_ANSWER_TIMEOUT_SECS,
            }),
            ConnectState::Exchanging => Progress::Exchanging,
            ConnectState::Established => Progress::Established(Vec::new()),
            ConnectState::Refused(e) => Progress::Refused(e.clone()),
        }
    }

    fn refuse(&mut self, e: ProxyError) -> Progress {
        self.state = ConnectState::Refused(e.clone());
        self.answer = Vec::new();
        Progress::Refused(e)
    }
}

/// The decision on a whole answer head: a 2xx opens the tunnel, anything else says why not.
fn answer_status(
    head: &http::ResponseHead,
    proxy: &str,
    source: &'static str,
    sent_credentials: bool,
    target: &str,
) -> Result<(), ProxyError> {
    match head.status {
        // Any 2xx opens the tunnel (RFC 9110 §9.3.6); its head frames no body.
        200..=299 => Ok(()),
        // 407 is the standard answer; tinyproxy says 401 to a wrong password. Either way it
        // is the proxy's: the edge has not been reached yet.
        status @ (401 | 407) => Err(ProxyError::AuthRequired {
            proxy: proxy.to_owned(),
            source,
            target: target.to_owned(),
            status,
            reason: shown(&head.reason),
            sent_credentials,
        }),
        status => Err(ProxyError::Refused {
            proxy: proxy.to_owned(),
            target: target.to_owned(),
            status,
            reason: shown(&head.reason),
        }),
    }
}

/// A reason phrase from the network, cut short for a message.
fn shown(reason: &str) -> String {
    let cut: String = reason.chars().take(MAX_REASON_SHOWN).collect();
    crate::logging::untrusted(&cut).to_string()
}

/// `http::parse_response_head`, taking `HTTP/1.0` for `HTTP/1.1`. The two spellings have
/// the same length, so offsets into the rewritten copy are offsets into `buf`.
fn parse_answer_head(buf: &[u8]) -> Result<Option<(http::ResponseHead, usize)>, HeadError> {
    let limits = HeadLimits::default();
    if !buf.starts_with(b"HTTP/1.0") {
        return http::parse_response_head(buf, &limits);
    }
    // The parser looks at no more than the limit; a copy of that much decides the same.
    let mut copy = buf[..buf.len().min(limits.max_head_bytes)].to_vec();
    copy[..8].copy_from_slice(b"HTTP/1.1");
    http::parse_response_head(&copy, &limits)
}

/// Hands bytes that followed the proxy's answer to TLS, as if they had been read from the
/// socket, before anything else is read. A real edge speaks only after our ClientHello, so
/// this is normally empty; anything there is the edge's and must not be lost.
pub fn hand_to_tls(tls: &mut rustls::ClientConnection, mut early: &[u8]) -> std::io::Result<()> {
    while !early.is_empty() {
        tls.read_tls(&mut early)?;
        tls.process_new_packets()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    }
    Ok(())
}

/// Fuzz entry: the first line is a proxy URL (as `HTTPS_PROXY`), the second a `NO_PROXY`
/// list, the rest the proxy's answer to CONNECT.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_proxy(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let url = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let list = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let answer = parts.next().unwrap_or_default();
    for host in ["edge.example.com", "10.1.2.3", "::1"] {
        let _ = no_proxy_matches(&list, host);
    }
    let env = |k: &str| match k {
        "HTTPS_PROXY" => Some(url.clone()),
        _ => None,
    };
    let config = proxy_for("edge.example.com", env)
        .ok()
        .flatten()
        .unwrap_or(ProxyConfig {
            addr: "proxy:3128".into(),
            source: "HTTPS_PROXY",
            auth: None,
        });
    // Whatever the URL held, the request is one head: nothing in it can end it early.
    let request = config.connect_request("edge.example.com:443");
    assert!(request.ends_with(b"\r\n\r\n"));
    assert_eq!(request.windows(4).filter(|w| w == b"\r\n\r\n").count(), 1);
    let target = "edge.example.com:443";
    let whole = read_answer(answer, &config, target);
    if let Ok(Some(n)) = whole {
        assert!(n <= answer.len());
        for k in 0..n {
            assert_eq!(read_answer(&answer[..k], &config, target), Ok(None));
        }
    }
    // The exchange decides as `read_answer` does, however the answer is split, and keeps
    // every byte after the head.
    let mut exchange = Connect::new(&config, target, std::time::Instant::now());
    let split = answer
        .first()
        .map_or(0, |&b| usize::from(b) % (answer.len() + 1));
    let progress = match exchange.handle_input(&answer[..split]) {
        Progress::Exchanging => exchange.handle_input(&answer[split..]),
        Progress::Established(mut early) => {
            // Sticky: what comes after is the target's too.
            let Progress::Established(rest) = exchange.handle_input(&answer[split..]) else {
                panic!("an established exchange changed its mind")
            };
            early.extend_from_slice(&rest);
            Progress::Established(early)
        }
        refused => refused,
    };
    match (whole, progress) {
        (Ok(Some(n)), Progress::Established(early)) => assert_eq!(early, &answer[n..]),
        (Ok(None), Progress::Exchanging) | (Err(_), Progress::Refused(_)) => {}
        (whole, progress) => panic!("read_answer {whole:?} but Connect {progress:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn proxy(vars: &[(&str, &str)]) -> Option<ProxyConfig> {
        match proxy_for("edge.example.com", env(vars)) {
            Ok(p) => p,
            Err(e) => panic!("{vars:?}: {e}"),
        }
    }

    fn addr(url: &str) -> String {
        proxy(&[("HTTPS_PROXY", url)])
            .unwrap_or_else(|| panic!("{url}: no proxy"))
            .addr
    }

    fn bad_url(url: &str) -> ProxyError {
        match proxy_for("edge.example.com", env(&[("HTTPS_PROXY", url)])) {
            Err(e) => e,
            Ok(_) => panic!("{url:?} was accepted"),
        }
    }

    fn authorization(config: &ProxyConfig) -> Option<String> {
        let req = config.connect_request("edge.example.com:443");
        let text = String::from_utf8(req).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("Proxy-Authorization: Basic "))
            .map(|b| String::from_utf8(base64::decode(b).unwrap()).unwrap())
    }

    #[test]
    fn no_variable_means_direct() {
        assert!(proxy(&[]).is_none());
        assert!(proxy(&[("HTTPS_PROXY", ""), ("https_proxy", "  ")]).is_none());
        // HTTP_PROXY is for http:// URLs; the edge is always https.
        assert!(proxy(&[("HTTP_PROXY", "http://p:1"), ("http_proxy", "http://p:1")]).is_none());
    }

    #[test]
    fn variables_are_taken_in_curls_order() {
        let all = [
            ("https_proxy", "http://a:1"),
            ("HTTPS_PROXY", "http://b:2"),
            ("all_proxy", "http://c:3"),
            ("ALL_PROXY", "http://d:4"),
        ];
        for skip in 0..all.len() {
            let p = proxy(&all[skip..]).unwrap();
            assert_eq!(p.addr, all[skip].1.trim_start_matches("http://"));
            assert_eq!(p.source, all[skip].0);
        }
        // An empty variable does not hide the next one.
        let p = proxy(&[("https_proxy", ""), ("ALL_PROXY", "http://d:4")]).unwrap();
        assert_eq!((p.addr.as_str(), p.source), ("d:4", "ALL_PROXY"));
    }

    #[test]
    fn proxy_url_forms() {
        assert_eq!(addr("http://proxy.corp:3128"), "proxy.corp:3128");
        assert_eq!(addr("http://proxy.corp"), "proxy.corp:80");
        assert_eq!(addr("proxy.corp:8080"), "proxy.corp:8080");
        assert_eq!(addr("proxy.corp"), "proxy.corp:80");
        assert_eq!(addr("HTTP://Proxy.Corp:3128/"), "proxy.corp:3128");
        assert_eq!(
            addr(" http://10.0.0.1:3128/some/path?x#y "),
            "10.0.0.1:3128"
        );
        assert_eq!(addr("http://[::1]:3128"), "[::1]:3128");
        assert_eq!(addr("http://[fd00::1]"), "[fd00::1]:80");
        assert_eq!(addr("http://u:p@127.0.0.1:8888"), "127.0.0.1:8888");
        assert_eq!(addr("http://my_proxy:1"), "my_proxy:1");
    }

    #[test]
    fn credentials_are_percent_decoded_and_sent_as_basic() {
        let p = proxy(&[("HTTPS_PROXY", "http://alice:s3cret@proxy:3128")]).unwrap();
        assert_eq!(authorization(&p).as_deref(), Some("alice:s3cret"));
        let p = proxy(&[("HTTPS_PROXY", "http://a%40b.c:p%3Aw%2F%25d@proxy:1")]).unwrap();
        assert_eq!(authorization(&p).as_deref(), Some("a@b.c:p:w/%d"));
        // Userinfo is not form-encoded: `+` is a plus, not a space.
        let p = proxy(&[("HTTPS_PROXY", "http://a+b:c%2Bd@proxy:1")]).unwrap();
        assert_eq!(authorization(&p).as_deref(), Some("a+b:c+d"));
        // The last `@` ends the user information; a colon may follow in the password.
        let p = proxy(&[("HTTPS_PROXY", "http://u:p@ss:w@proxy:1")]).unwrap();
        assert_eq!(p.addr, "proxy:1");
        assert_eq!(authorization(&p).as_deref(), Some("u:p@ss:w"));
        // A user without a password sends an empty one (curl does the same).
        let p = proxy(&[("HTTPS_PROXY", "http://bob@proxy:1")]).unwrap();
        assert_eq!(authorization(&p).as_deref(), Some("bob:"));
        // No user information, or an empty one: no header at all.
        for url in ["http://proxy:1", "http://@proxy:1"] {
            let p = proxy(&[("HTTPS_PROXY", url)]).unwrap();
            assert!(p.auth().is_none(), "{url}");
            assert_eq!(authorization(&p), None, "{url}");
        }
    }

    #[test]
    fn unusable_proxy_urls_are_errors_that_do_not_repeat_the_password() {
        for url in [
            "https://u:hunter2@proxy:443",
            "socks5://u:hunter2@proxy:1080",
            "socks5h://proxy:1080",
            "ftp://proxy:21",
            "http://",
            "http://u:hunter2@",
            "http://u:hunter2@:3128",
            "http://proxy:0",
            "http://proxy:65536",
            "http://proxy:x",
            "http://proxy:",
            "http://proxy:+80",
            "http://::1:3128",
            "http://[::1",
            "http://[::1]x",
            "http://[not-v6]:1",
            "http://pro xy:1",
            "http://proxy\r\nX-Injected: 1:1",
            "http://u:hunter2%zz@proxy:1",
            "http://u:hunter2%4@proxy:1",
            "http://u:hunter2%+1@proxy:1",
            "http://u%-1:hunter2@proxy:1",
            "http://:hunter2@proxy:1",
            "http://a%3Ab:hunter2@proxy:1",
        ] {
            let e = bad_url(url);
            assert!(
                matches!(
                    e,
                    ProxyError::BadUrl {
                        var: "HTTPS_PROXY",
                        ..
                    }
                ),
                "{url}"
            );
            let text = e.to_string();
            assert!(text.starts_with("HTTPS_PROXY is not a proxy"), "{text}");
            assert!(!text.contains("hunter2"), "{url}: {text}");
        }
    }

    #[test]
    fn no_proxy_skips_an_unusable_proxy_url() {
        let vars = [("HTTPS_PROXY", "socks5://p:1"), ("NO_PROXY", "example.com")];
        assert!(proxy(&vars).is_none());
    }

    #[test]
    fn no_proxy_variables_in_order() {
        let vars = [
            ("HTTPS_PROXY", "http://p:1"),
            ("no_proxy", "other.com"),
            ("NO_PROXY", "example.com"),
        ];
        assert!(
            proxy(&vars).is_some(),
            "no_proxy comes first and does not match"
        );
        let vars = [
            ("HTTPS_PROXY", "http://p:1"),
            ("no_proxy", ""),
            ("NO_PROXY", "example.com"),
        ];
        assert!(
            proxy(&vars).is_none(),
            "an empty no_proxy does not hide NO_PROXY"
        );
    }

    #[test]
    fn no_proxy_star_matches_everything() {
        for host in ["edge.example.com", "127.0.0.1", "::1", "localhost"] {
            assert!(no_proxy_matches("*", host), "{host}");
            assert!(no_proxy_matches("a.b, *", host), "{host}");
        }
        assert!(!no_proxy_matches("*.example.com", "other.org"));
        assert!(no_proxy_matches("*.example.com", "edge.example.com"));
    }

    #[test]
    fn no_proxy_domains_match_themselves_and_names_under_them() {
        for entry in [
            "example.com",
            ".example.com",
            "EXAMPLE.com.",
            "example.com:443",
        ] {
            for host in [
                "example.com",
                "edge.example.com",
                "a.b.Example.COM",
                "example.com.",
            ] {
                assert!(no_proxy_matches(entry, host), "{entry} vs {host}");
            }
            for host in ["xexample.com", "example.com.evil", "example.org", "com"] {
                assert!(!no_proxy_matches(entry, host), "{entry} vs {host}");
            }
        }
        assert!(no_proxy_matches("localhost", "localhost"));
        assert!(no_proxy_matches("localhost", "ssh.localhost"));
        assert!(!no_proxy_matches("ssh.localhost", "localhost"));
    }

    #[test]
    fn no_proxy_lists_are_split_on_commas_and_spaces() {
        let list = " a.org,, b.org \t c.org ,";
        for host in ["a.org", "x.b.org", "c.org"] {
            assert!(no_proxy_matches(list, host), "{host}");
        }
        assert!(!no_proxy_matches(list, "d.org"));
        assert!(!no_proxy_matches("", "a.org"));
        assert!(!no_proxy_matches(",.,", "a.org"));
    }

    #[test]
    fn no_proxy_ip_addresses_match_exactly() {
        assert!(no_proxy_matches("127.0.0.1", "127.0.0.1"));
        assert!(no_proxy_matches("127.0.0.1:8443", "127.0.0.1"));
        assert!(!no_proxy_matches("127.0.0.1", "127.0.0.2"));
        // No suffix matching on addresses, and names are never resolved.
        assert!(!no_proxy_matches("0.0.1", "10.0.0.1"));
        assert!(!no_proxy_matches(".0.0.1", "10.0.0.1"));
        assert!(!no_proxy_matches("127.0.0.1", "localhost"));
        assert!(!no_proxy_matches("localhost", "127.0.0.1"));
        for entry in ["::1", "[::1]", "[::1]:443", "0:0::1"] {
            for host in ["::1", "[::1]"] {
                assert!(no_proxy_matches(entry, host), "{entry} vs {host}");
            }
        }
        assert!(!no_proxy_matches("::1", "::2"));
        assert!(!no_proxy_matches("::ffff:127.0.0.1", "127.0.0.1"));
    }

    #[test]
    fn no_proxy_cidr_ranges() {
        assert!(no_proxy_matches("10.0.0.0/8", "10.200.3.4"));
        assert!(!no_proxy_matches("10.0.0.0/8", "11.0.0.1"));
        assert!(no_proxy_matches("192.168.1.0/24", "192.168.1.255"));
        assert!(!no_proxy_matches("192.168.1.0/24", "192.168.2.1"));
        assert!(no_proxy_matches("0.0.0.0/0", "8.8.8.8"));
        assert!(no_proxy_matches("127.0.0.1/32", "127.0.0.1"));
        assert!(no_proxy_matches("fd00::/8", "fd12::1"));
        assert!(!no_proxy_matches("fd00::/8", "fe80::1"));
        assert!(no_proxy_matches("::/0", "::1"));
        for bad in ["10.0.0.0/33", "10.0.0.0/x", "10.0.0.0/", "fd00::/129"] {
            assert!(!no_proxy_matches(bad, "10.0.0.1"), "{bad}");
            assert!(!no_proxy_matches(bad, "fd00::1"), "{bad}");
        }
        // Families never mix.
        assert!(!no_proxy_matches("0.0.0.0/0", "::1"));
        assert!(!no_proxy_matches("::/0", "127.0.0.1"));
        // A range is not a domain suffix.
        assert!(!no_proxy_matches("10.0.0.0/8", "a.10.0.0.0"));
    }

    #[test]
    fn host_port_splitting() {
        assert_eq!(
            split_host_port("edge.example.com:443"),
            Some(("edge.example.com", 443))
        );
        assert_eq!(split_host_port("127.0.0.1:8443"), Some(("127.0.0.1", 8443)));
        assert_eq!(split_host_port("[::1]:443"), Some(("::1", 443)));
        for bad in [
            "edge.example.com",
            "edge:0",
            "edge:65536",
            ":443",
            "::1:443",
            "[::1]",
            "[zz]:1",
            "a b:1",
            "a\r\n:1",
            "[::1]x:1",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn connect_request_bytes() {
        let ua = concat!("User-Agent: postern/", env!("CARGO_PKG_VERSION"));
        assert_eq!(
            String::from_utf8(connect_request("edge.example.com:443", None)).unwrap(),
            format!(
                "CONNECT edge.example.com:443 HTTP/1.1\r\nHost: edge.example.com:443\r\n{ua}\r\n\r\n"
            )
        );
        let p = proxy(&[("HTTPS_PROXY", "http://user:pass@p:1")]).unwrap();
        assert_eq!(
            String::from_utf8(p.connect_request("[::1]:8443")).unwrap(),
            format!(
                "CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\
                 Proxy-Authorization: Basic dXNlcjpwYXNz\r\n{ua}\r\n\r\n"
            )
        );
    }

    fn config(auth: bool) -> ProxyConfig {
        let url = if auth {
            "http://u:p@127.0.0.1:8888"
        } else {
            "127.0.0.1:8888"
        };
        proxy(&[("HTTPS_PROXY", url)]).unwrap()
    }

    const TARGET: &str = "edge.example.com:443";

    /// Every strict prefix of `answer` asks for more and consumes nothing.
    fn assert_prefixes_need_more(answer: &[u8]) {
        let p = config(false);
        for k in 0..answer.len() {
            assert_eq!(
                read_answer(&answer[..k], &p, TARGET),
                Ok(None),
                "prefix {k}"
            );
        }
    }

    #[test]
    fn a_2xx_opens_the_tunnel_in_http_1_0_and_1_1() {
        for answer in [
            &b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n"[..],
            b"HTTP/1.1 200 Connection established\r\n\r\n",
            b"HTTP/1.1 200 \r\n\r\n",
            b"HTTP/1.1 204\r\n\r\n",
        ] {
            assert_prefixes_need_more(answer);
            assert_eq!(
                read_answer(answer, &config(false), TARGET),
                Ok(Some(answer.len()))
            );
        }
    }

    #[test]
    fn bytes_after_the_answer_are_left_for_tls() {
        let head = b"HTTP/1.0 200 Connection established\r\n\r\n";
        let mut buf = head.to_vec();
        buf.extend_from_slice(b"\x16\x03\x03\x00\x10early");
        assert_eq!(
            read_answer(&buf, &config(false), TARGET),
            Ok(Some(head.len()))
        );
    }

    #[test]
    fn a_407_asks_for_credentials_or_says_they_were_refused() {
        let answer = b"HTTP/1.0 407 Proxy Authentication Required\r\n\
            Server: tinyproxy/1.11.1\r\nContent-Type: text/html\r\n\
            Proxy-Authenticate: Basic realm=\"Tinyproxy\"\r\nConnection: close\r\n\r\n<html>";
        assert_prefixes_need_more(&answer[..answer.len() - 6]);
        let e = read_answer(answer, &config(false), TARGET).unwrap_err();
        assert!(matches!(
            e,
            ProxyError::AuthRequired {
                sent_credentials: false,
                ..
            }
        ));
        let text = e.to_string();
        assert!(
            text.contains("proxy 127.0.0.1:8888 requires authentication"),
            "{text}"
        );
        assert!(
            text.contains("(HTTP 407 Proxy Authentication Required)"),
            "{text}"
        );
        assert!(text.contains(TARGET), "{text}");
        assert!(text.contains("set HTTPS_PROXY to http://USER:PASSWORD@127.0.0.1:8888"));

        let text = read_answer(answer, &config(true), TARGET)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("proxy 127.0.0.1:8888 refused the user and password from HTTPS_PROXY"),
            "{text}"
        );
        assert!(
            text.contains("(HTTP 407 Proxy Authentication Required)"),
            "{text}"
        );
        assert!(!text.contains(":p@"), "{text}");
    }

    #[test]
    fn tinyproxys_401_for_a_wrong_password_is_an_authentication_error() {
        let answer = b"HTTP/1.0 401 Unauthorized\r\nServer: tinyproxy/1.11.1\r\n\
            Content-Type: text/html\r\nConnection: close\r\n\r\n<html>";
        assert_prefixes_need_more(&answer[..answer.len() - 6]);
        let e = read_answer(answer, &config(true), TARGET).unwrap_err();
        assert_eq!(
            e.to_string(),
            "proxy 127.0.0.1:8888 refused the user and password from HTTPS_PROXY for CONNECT \
             to edge.example.com:443 (HTTP 401 Unauthorized): check them, with special \
             characters percent-encoded"
        );
    }

    #[test]
    fn other_statuses_are_refusals_naming_status_and_reason() {
        let answer = b"HTTP/1.1 403 Access violation\r\nConnection: close\r\n\r\n";
        assert_prefixes_need_more(answer);
        let e = read_answer(answer, &config(false), TARGET).unwrap_err();
        assert_eq!(
            e,
            ProxyError::Refused {
                proxy: "127.0.0.1:8888".into(),
                target: TARGET.into(),
                status: 403,
                reason: "Access violation".into(),
            }
        );
        assert_eq!(
            e.to_string(),
            "proxy 127.0.0.1:8888 refused CONNECT to edge.example.com:443 \
             (HTTP 403 Access violation): is the edge's port allowed by the proxy (many allow \
             CONNECT to 443 only)? or name the edge in NO_PROXY"
        );
        let text = read_answer(b"HTTP/1.1 502 Bad Gateway\r\n\r\n", &config(false), TARGET)
            .unwrap_err()
            .to_string();
        assert!(text.contains("(HTTP 502 Bad Gateway): the proxy could not reach the edge"));
        // 1xx is not an answer to CONNECT we expect.
        assert!(matches!(
            read_answer(b"HTTP/1.1 100 Continue\r\n\r\n", &config(false), TARGET),
            Err(ProxyError::Refused { status: 100, .. })
        ));
        // A long reason is cut short in the message.
        let long = format!("HTTP/1.1 403 {}\r\n\r\n", "x".repeat(5000));
        match read_answer(long.as_bytes(), &config(false), TARGET) {
            Err(ProxyError::Refused { reason, .. }) => assert_eq!(reason.len(), MAX_REASON_SHOWN),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn something_other_than_http_is_a_bad_answer() {
        for answer in [
            &b"SSH-2.0-OpenSSH_9.2\r\n"[..],
            b"\x16\x03\x01\x00\x05hello\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.0 200 OK\n\n",
            b"HTTP/1.0 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n bad: fold\r\n\r\n",
        ] {
            let e = read_answer(answer, &config(false), TARGET).unwrap_err();
            assert!(
                matches!(e, ProxyError::BadAnswer { .. }),
                "{answer:?}: {e:?}"
            );
            assert!(e.to_string().contains("is 127.0.0.1:8888 an HTTP proxy?"));
        }
    }

    #[test]
    fn an_answer_larger_than_the_head_limit_is_refused() {
        let limit = HeadLimits::default().max_head_bytes;
        for version in ["HTTP/1.0", "HTTP/1.1"] {
            let mut buf = format!("{version} 200 OK\r\nX-Pad: ").into_bytes();
            buf.resize(limit - 1, b'a');
            assert_prefixes_need_more(&buf);
            buf.push(b'a');
            assert_eq!(
                read_answer(&buf, &config(false), TARGET),
                Err(ProxyError::BadAnswer {
                    proxy: "127.0.0.1:8888".into(),
                    target: TARGET.into(),
                    error: HeadError::TooLarge { limit },
                }),
                "{version}"
            );
        }
    }

    #[test]
    fn closed_and_timed_out_messages() {
        let p = config(true);
        assert_eq!(
            p.closed(TARGET).to_string(),
            "proxy 127.0.0.1:8888 closed the connection before answering CONNECT to \
             edge.example.com:443"
        );
        assert_eq!(
            p.timed_out(TARGET, 10).to_string(),
            "proxy 127.0.0.1:8888 did not answer CONNECT to edge.example.com:443 within 10 s"
        );
    }

    #[test]
    fn early_bytes_reach_tls() {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("edge.example.com").unwrap();
        let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        hand_to_tls(&mut tls, b"").unwrap();
        // Not a TLS record: TLS sees it and fails, rather than the bytes vanishing.
        assert!(hand_to_tls(&mut tls, b"garbage that is not TLS").is_err());
    }

    fn exchange(url: &str) -> (Connect, Instant) {
        let p = proxy(&[("HTTPS_PROXY", url)]).unwrap();
        let t0 = Instant::now();
        (Connect::new(&p, "edge.example.com:443", t0), t0)
    }

    #[test]
    fn connect_sends_its_request_in_pieces_and_takes_the_answer_at_any_split() {
        let answer = b"HTTP/1.0 200 Connection established\r\nProxy-Agent: x\r\n\r\n\x16\x03";
        let head = answer.len() - 2;
        for split in 0..=answer.len() {
            let (mut c, _) = exchange("http://proxy:3128");
            let want = c.transmit().to_vec();
            assert!(want.starts_with(b"CONNECT edge.example.com:443 HTTP/1.1\r\n"));
            c.sent(5);
            assert_eq!(c.transmit(), &want[5..]);
            c.sent(want.len());
            assert!(c.transmit().is_empty());
            let first = c.handle_input(&answer[..split]);
            if split >= head {
                let early = answer[head..split].to_vec();
                assert_eq!(first, Progress::Established(early), "split {split}");
            } else {
                assert_eq!(first, Progress::Exchanging, "split {split}");
                assert_eq!(c.room(), MAX_HTTP_HEAD - split);
                // What followed the head is the edge's, for TLS: never lost.
                let rest = c.handle_input(&answer[split..]);
                assert_eq!(rest, Progress::Established(b"\x16\x03".to_vec()));
            }
            assert_eq!(c.deadline(), None);
            assert_eq!(c.room(), 0);
            // Later bytes are the edge's too.
            assert_eq!(
                c.handle_input(b"tls"),
                Progress::Established(b"tls".to_vec())
            );
        }
    }

    #[test]
    fn connect_refusals_are_sticky_and_say_why() {
        let (mut c, t0) = exchange("http://u:pw@proxy:3128");
        let refused = c.handle_input(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n");
        let Progress::Refused(e @ ProxyError::AuthRequired { .. }) = refused else {
            panic!("{refused:?}")
        };
        assert!(
            e.to_string().contains("refused the user and password"),
            "{e}"
        );
        assert!(!e.to_string().contains("pw"), "{e}");
        assert!(c.transmit().is_empty());
        assert_eq!(
            c.handle_input(b"HTTP/1.1 200 OK\r\n\r\n"),
            Progress::Refused(e.clone())
        );
        assert_eq!(c.handle_eof(), Progress::Refused(e.clone()));
        assert_eq!(
            c.handle_timeout(t0 + Duration::from_secs(99)),
            Progress::Refused(e)
        );

        let (mut c, _) = exchange("http://proxy:3128");
        let Progress::Refused(ProxyError::Refused { status: 403, .. }) =
            c.handle_input(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        else {
            panic!()
        };
        let (mut c, _) = exchange("http://proxy:3128");
        let Progress::Refused(ProxyError::BadAnswer { .. }) = c.handle_input(b"SSH-2.0-x\r\n\r\n")
        else {
            panic!()
        };
        // A head that never ends stops at the limit, not at memory's.
        let (mut c, _) = exchange("http://proxy:3128");
        assert_eq!(
            c.handle_input(b"HTTP/1.1 200 OK\r\nX: "),
            Progress::Exchanging
        );
        let mut last = Progress::Exchanging;
        while last == Progress::Exchanging {
            let room = c.room();
            assert!(room > 0);
            last = c.handle_input(&vec![b'a'; room.min(4096)]);
        }
        assert!(matches!(
            last,
            Progress::Refused(ProxyError::BadAnswer { .. })
        ));
    }

    #[test]
    fn connect_times_out_at_its_deadline_and_fails_on_early_eof() {
        let (mut c, t0) = exchange("http://proxy:3128");
        let deadline = t0 + Duration::from_secs(PROXY_ANSWER_TIMEOUT_SECS);
        assert_eq!(c.deadline(), Some(deadline));
        assert_eq!(c.handle_input(b"HTTP/1.1 200"), Progress::Exchanging);
        assert_eq!(
            c.handle_timeout(deadline - Duration::from_millis(1)),
            Progress::Exchanging
        );
        let Progress::Refused(e @ ProxyError::TimedOut { .. }) = c.handle_timeout(deadline) else {
            panic!()
        };
        assert!(e.to_string().contains("did not answer CONNECT"), "{e}");

        let (mut c, _) = exchange("http://proxy:3128");
        assert_eq!(c.handle_input(b"HTTP/1.1 20"), Progress::Exchanging);
        let Progress::Refused(ProxyError::Closed { .. }) = c.handle_eof() else {
            panic!()
        };
    }
}
