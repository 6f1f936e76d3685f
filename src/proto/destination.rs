//! Jump-host (bastion) destinations: the one parser for the `host:port` a client names with
//! `--destination` (cloudflared's `Cf-Access-Jump-Destination` header), and the allow-lists
//! the edge (per application) and the tunnel (its own, optional) check it against.
//!
//! A destination is peer text: it comes from the client, through the edge, to the origin. So
//! it is parsed once, here, into a [`Destination`] whose [`Display`](std::fmt::Display) form
//! is canonical (lowercase name or IP literal, `[v6]` in brackets, the port): only that form
//! travels on and reaches a log.
//!
//! ```text
//! destination = [ "tcp://" | "ssh://" ] host [ ":" port ]       (ssh:// alone means port 22)
//! host        = DNS name | IPv4 literal | "[" IPv6 literal "]"
//! port        = 1..65535 (decimal, no sign, at most 5 digits)
//! ```
//! No userinfo (`user@`), path, query, whitespace or control characters: each is refused with
//! a reason, never guessed around.
//!
//! An allow-list entry is `HOSTS:PORTS`:
//! ```text
//! HOSTS = name | "*.suffix" (any name under suffix) | IPv4 [ "/" len ] | "[" IPv6 [ "/" len ] "]"
//! PORTS = port | port "-" port | "*"
//! ```
//! A name pattern matches only a destination written as a name, an address pattern only one
//! written as (or resolved to, at the origin) an address. Loopback, link-local (including
//! the cloud metadata address 169.254.169.254), unspecified, multicast and broadcast
//! addresses are *special*: an address pattern grants one only if the pattern's own network
//! lies inside that special range (`127.0.0.0/8:22` grants 127.0.0.1; `0.0.0.0/0:22` does
//! not), so a broad range never opens the origin's own loopback or metadata service by
//! accident.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::proto::dns::valid_hostname;

/// The HTTP header that carries a destination (cloudflared's name).
pub const HEADER: &str = "cf-access-jump-destination";

/// Longest destination or pattern text accepted (a 253-byte name, brackets, a port, a scheme).
pub const MAX_LEN: usize = 300;

/// Most entries in one allow-list.
pub const MAX_ALLOW: usize = 256;

/// Where a destination's host is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A DNS name, lowercase, resolved at the origin.
    Name(String),
    Ip(IpAddr),
}

/// A parsed destination: see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Name(n) => write!(f, "{n}:{}", self.port),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}:{}", self.port),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

impl Destination {
    /// Parses what a client (or, for the canonical form, the edge) sent; the error says why
    /// in words safe to show (it never quotes the input).
    pub fn parse(text: &str) -> Result<Destination, &'static str> {
        if text.is_empty() {
            return Err("empty destination");
        }
        if text.len() > MAX_LEN {
            return Err("destination too long");
        }
        if text.bytes().any(|b| b.is_ascii_control() || b == b' ') || !text.is_ascii() {
            return Err("destination has spaces, control or non-ASCII characters");
        }
        let (rest, default_port) = match text.split_once("://") {
            None => (text, None),
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "tcp" => (rest, None),
                "ssh" => (rest, Some(22)),
                _ => return Err("destination scheme must be tcp:// or ssh://"),
            },
        };
        if rest.contains('@') {
            return Err("destination must not have a user@ part");
        }
        if rest.contains(['/', '?', '#']) {
            return Err("destination must be host:port, without a path");
        }
        let (host, port, bracketed) = split_host_port(rest)?;
        let port = match (port, default_port) {
            (Some(p), _) => parse_port(p)?,
            (None, Some(p)) => p,
            (None, None) => return Err("destination needs a port (host:port)"),
        };
        let host = parse_host(host)?;
        if bracketed && !matches!(host, Host::Ip(IpAddr::V6(_))) {
            return Err("not a valid IPv6 address");
        }
        Ok(Destination { host, port })
    }
}

/// `host[:port]` with `[v6]` hosts; the brackets are removed (and said).
fn split_host_port(s: &str) -> Result<(&str, Option<&str>, bool), &'static str> {
    if let Some(inner) = s.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ]")?;
        if host.is_empty() {
            return Err("empty IPv6 address");
        }
        return match after {
            "" => Ok((host, None, true)),
            a => match a.strip_prefix(':') {
                Some(p) => Ok((host, Some(p), true)),
                None => Err("expected :port after ]"),
            },
        };
    }
    match s.split_once(':') {
        None => Ok((s, None, false)),
        Some((h, p)) if !p.contains(':') => Ok((h, Some(p), false)),
        Some(_) => Err("an IPv6 address must be written in brackets: [addr]:port"),
    }
}

fn parse_port(p: &str) -> Result<u16, &'static str> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err("port must be a number from 1 to 65535");
    }
    match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err("port must be a number from 1 to 65535"),
    }
}

fn parse_host(h: &str) -> Result<Host, &'static str> {
    if h.is_empty() {
        return Err("destination has no host");
    }
    if h.contains(':') {
        return h
            .parse::<Ipv6Addr>()
            .map(|a| Host::Ip(IpAddr::V6(a)))
            .map_err(|_| "not a valid IPv6 address");
    }
    if h.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // Only dotted quads: `127.1` or `0x7f.1` are names to no resolver we trust.
        return h
            .parse::<Ipv4Addr>()
            .map(|a| Host::Ip(IpAddr::V4(a)))
            .map_err(|_| "not a valid IPv4 address (use four decimal numbers)");
    }
    if !valid_hostname(h) {
        return Err("not a valid host name");
    }
    Ok(Host::Name(h.to_ascii_lowercase()))
}

/// Whether `ip` is loopback, link-local (169.254.0.0/16 holds the cloud metadata service),
/// unspecified, multicast or broadcast: never reachable through a broad pattern.
pub fn is_special(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => {
            a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast()
                || a.octets()[0] == 0
        }
        IpAddr::V6(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// The special range `ip` is in, as (network, prefix length).
fn special_range(ip: IpAddr) -> Option<(IpAddr, u8)> {
    let ip = canonical(ip);
    let ranges: &[(IpAddr, u8)] = &[
        (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        (IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16),
        (IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)), 8),
        (IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 4),
        (IpAddr::V4(Ipv4Addr::new(255, 255, 255, 255)), 32),
        (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
        (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128),
        (IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10),
        (IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8),
    ];
    ranges
        .iter()
        .copied()
        .find(|&(net, len)| in_net(ip, net, len))
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is its IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Name(String),
    /// `*.suffix`: the suffix, lowercase, without `*.`.
    Under(String),
    Net(IpAddr, u8),
}

/// One allow-list entry (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    host: HostPattern,
    ports: (u16, u16),
    text: String,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let bad = |why: &str| {
            format!("{text:?}: {why} (e.g. \"10.0.0.0/8:22\", \"db.internal:5432\", \"*.corp.internal:22\", \"[fd00::/8]:*\")")
        };
        if text.len() > MAX_LEN || !text.is_ascii() || text.bytes().any(|b| b <= b' ') {
            return Err(bad("not a pattern"));
        }
        let (host, ports) = text
            .rsplit_once(':')
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| bad("needs HOSTS:PORTS"))?;
        let ports = match ports {
            "*" => (1, 65535),
            p => match p.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (parse_port(a).map_err(bad)?, parse_port(b).map_err(bad)?);
                    if a > b {
                        return Err(bad("port range runs backwards"));
                    }
                    (a, b)
                }
                None => {
                    let p = parse_port(p).map_err(bad)?;
                    (p, p)
                }
            },
        };
        let host = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| bad("an IPv6 network is written [addr/len]"))?;
            let (a, len) = net_parts(inner, 128).map_err(bad)?;
            let a: Ipv6Addr = a.parse().map_err(|_| bad("not an IPv6 address"))?;
            HostPattern::Net(IpAddr::V6(a), len)
        } else if host
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/')
        {
            let (a, len) = net_parts(host, 32).map_err(bad)?;
            let a: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
            HostPattern::Net(IpAddr::V4(a), len)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !valid_hostname(suffix) {
                return Err(bad("not a valid name after *."));
            }
            HostPattern::Under(suffix.to_ascii_lowercase())
        } else {
            if !valid_hostname(host) {
                return Err(bad("not a valid host name"));
            }
            HostPattern::Name(host.to_ascii_lowercase())
        };
        Ok(Pattern {
            host,
            ports,
            text: text.to_owned(),
        })
    }

    fn port_ok(&self, port: u16) -> bool {
        (self.ports.0..=self.ports.1).contains(&port)
    }

    /// Whether this pattern admits `d` as written (a name against name patterns, an address
    /// against networks).
    pub fn admits(&self, d: &Destination) -> bool {
        if !self.port_ok(d.port) {
            return false;
        }
        match (&self.host, &d.host) {
            (HostPattern::Name(p), Host::Name(n)) => p == n,
            (HostPattern::Under(s), Host::Name(n)) => n
                .strip_suffix(s.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            (HostPattern::Net(..), Host::Ip(ip)) => self.admits_addr(*ip, d.port),
            _ => false,
        }
    }

    /// Whether this pattern admits the address `ip` on `port`; a special address only when
    /// the pattern's network lies inside its special range.
    pub fn admits_addr(&self, ip: IpAddr, port: u16) -> bool {
        let HostPattern::Net(net, len) = self.host else {
            return false;
        };
        let ip = canonical(ip);
        let (net, len) = match net {
            IpAddr::V6(a) if a.to_ipv4_mapped().is_some() && len >= 96 => {
                (canonical(net), len - 96)
            }
            _ => (net, len),
        };
        if !self.port_ok(port) || !in_net(ip, net, len) {
            return false;
        }
        match special_range(ip) {
            None => true,
            Some((_, special_len)) => len >= special_len,
        }
    }
}

/// `addr[/len]` with len at most `max` (default `max`).
fn net_parts(s: &str, max: u8) -> Result<(&str, u8), &'static str> {
    match s.split_once('/') {
        None => Ok((s, max)),
        Some((a, l)) => match l.parse::<u8>() {
            Ok(n) if n <= max && !l.is_empty() && l.len() <= 3 => Ok((a, n)),
            _ => Err("bad prefix length"),
        },
    }
}

/// An ordered allow-list (the edge's per application, or the tunnel's own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    patterns: Vec<Pattern>,
}

impl AllowList {
    /// Parses every entry; the error names the entry's index.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, String> {
        if entries.len() > MAX_ALLOW {
            return Err(format!("more than {MAX_ALLOW} entries"));
        }
        let patterns = entries
            .iter()
            .enumerate()
            .map(|(i, e)| Pattern::parse(e.as_ref()).map_err(|why| format!("[{i}]: {why}")))
            .collect::<Result<_, _>>()?;
        Ok(AllowList { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The first pattern that admits `d` as written.
    pub fn admits(&self, d: &Destination) -> Option<&Pattern> {
        self.patterns.iter().find(|p| p.admits(d))
    }

    /// The first pattern that admits the address `ip` on `port`.
    pub fn admits_addr(&self, ip: IpAddr, port: u16) -> Option<&Pattern> {
        self.patterns.iter().find(|p| p.admits_addr(ip, port))
    }
}

/// The fuzz entry point: any text either parses into a destination whose canonical form
/// parses back to itself, or is refused; patterns never panic either.
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub fn fuzz_destination(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = Destination::parse(text) {
        let canonical = d.to_string();
        assert!(!canonical.contains(['\r', '\n', ' ', '@']));
        assert_eq!(Destination::parse(&canonical), Ok(d.clone()));
        if let Ok(p) = Pattern::parse(text) {
            let _ = p.admits(&d);
        }
    }
    if let Ok(p) = Pattern::parse(text) {
        let _ = p.admits_addr(IpAddr::V4(Ipv4Addr::LOCALHOST), 22);
        let _ = p.admits_addr(IpAddr::V6(Ipv6Addr::LOCALHOST), 22);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Destination {
        Destination::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn destinations_parse_to_a_canonical_form() {
        for (text, canonical) in [
            ("db.internal:5432", "db.internal:5432"),
            ("DB.Internal:5432", "db.internal:5432"),
            ("10.0.0.5:22", "10.0.0.5:22"),
            ("tcp://10.0.0.5:22", "10.0.0.5:22"),
            ("ssh://host.corp", "host.corp:22"),
            ("ssh://host.corp:2222", "host.corp:2222"),
            ("[fd00::1]:22", "[fd00::1]:22"),
            ("[FD00:0::1]:22", "[fd00::1]:22"),
            ("h:65535", "h:65535"),
        ] {
            assert_eq!(d(text).to_string(), canonical, "{text}");
            assert_eq!(d(canonical).to_string(), canonical);
        }
    }

    #[test]
    fn hostile_destinations_are_refused_with_a_reason() {
        for (text, why) in [
            ("", "empty"),
            ("host:22\r\nX-Evil: 1", "control"),
            ("host :22", "spaces"),
            ("root@host:22", "user@"),
            ("ssh://root@host:22", "user@"),
            ("host:0", "port"),
            ("host:65536", "port"),
            ("host:-1", "port"),
            ("host:+22", "port"),
            ("host:022222", "port"),
            ("host", "needs a port"),
            ("fd00::1:22", "brackets"),
            ("[fd00::1:22", "closing ]"),
            ("[fd00::1]22", ":port"),
            ("[not-v6]:22", "IPv6"),
            ("[]:22", "empty"),
            ("999.0.0.1:22", "IPv4"),
            ("127.1:22", "IPv4"),
            ("http://host:80", "scheme"),
            ("host:22/path", "path"),
            ("-bad-.x:22", "host name"),
            ("hoșt:22", "non-ASCII"),
            (":22", "no host"),
        ] {
            let e = Destination::parse(text).expect_err(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
        assert!(Destination::parse(&format!("{}:22", "a".repeat(400))).is_err());
    }

    fn allow(entries: &[&str]) -> AllowList {
        AllowList::parse(entries).unwrap()
    }

    #[test]
    fn names_networks_and_ports_admit_what_they_say() {
        let a = allow(&[
            "10.0.0.0/8:22",
            "db.internal:5432",
            "*.corp.internal:22",
            "[fd00::/8]:*",
            "192.168.1.1:8000-8010",
        ]);
        for ok in [
            "10.1.2.3:22",
            "db.internal:5432",
            "DB.internal:5432",
            "a.corp.internal:22",
            "a.b.corp.internal:22",
            "[fd12::5]:9",
            "192.168.1.1:8005",
        ] {
            assert!(a.admits(&d(ok)).is_some(), "{ok}");
        }
        for no in [
            "10.1.2.3:23",
            "11.0.0.1:22",
            "db.internal:22",
            "corp.internal:22",
            "xcorp.internal:22",
            "a.corp.internal.evil:22",
            "[fe80::1]:22",
            "192.168.1.1:8011",
            // A name is not an address: the edge cannot know what it resolves to.
            "ten.example:22",
        ] {
            assert!(a.admits(&d(no)).is_none(), "{no}");
        }
    }

    #[test]
    fn loopback_and_metadata_need_a_pattern_inside_their_range() {
        let broad = allow(&["0.0.0.0/0:*", "[::/0]:*"]);
        for special in [
            "127.0.0.1:22",
            "169.254.169.254:80",
            "0.0.0.0:22",
            "[::1]:22",
            "[::ffff:127.0.0.1]:22",
            "[fe80::1]:22",
            "224.0.0.1:22",
        ] {
            assert!(broad.admits(&d(special)).is_none(), "{special}");
        }
        assert!(broad.admits(&d("10.0.0.1:22")).is_some());
        let explicit = allow(&["127.0.0.0/8:22", "169.254.169.254:80", "[::1]:22"]);
        assert!(explicit.admits(&d("127.0.0.2:22")).is_some());
        assert!(explicit.admits(&d("[::ffff:127.0.0.2]:22")).is_some());
        assert!(explicit.admits(&d("169.254.169.254:80")).is_some());
        assert!(explicit.admits(&d("[::1]:22")).is_some());
        assert!(explicit.admits(&d("169.254.169.253:80")).is_none());
        assert!(is_special("169.254.169.254".parse().unwrap()));
        assert!(!is_special("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_patterns_are_refused_naming_the_entry() {
        for bad in [
            "10.0.0.0/33:22",
            "10.0.0.0/8",
            "10.0.0.0/8:0",
            "host:22-21",
            "*.:22",
            "a*b:22",
            "[fd00::/129]:22",
            "[fd00::]/8:22",
            "host name:22",
            ":22",
        ] {
            let e = AllowList::parse(&["10.0.0.0/8:22", bad]).expect_err(bad);
            assert!(e.starts_with("[1]: "), "{bad}: {e}");
        }
    }
}
