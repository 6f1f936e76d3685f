//! Percent-encoding for query strings, and a bounded query parser. No allocation surprises:
//! a query of more than [`MAX_QUERY_PARAMS`] parameters is refused.
//!
//! The escaping itself is the `percent-encoding` crate's. That crate decodes leniently (a `%`
//! not followed by two hex digits passes through as text); [`percent_decode`] refuses such
//! input first, so every decoder in postern agrees on what an escape is: exactly `%` and two
//! hex digits (never `%+1`, whatever `u8::from_str_radix` would say).

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

pub use crate::limits::MAX_QUERY_PARAMS;

/// What [`encode`] escapes: everything but the RFC 3986 unreserved characters.
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Encodes `s` for a query component (RFC 3986 unreserved characters stay as they are).
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, QUERY_COMPONENT).to_string()
}

/// Whether every `%` in `s` starts an escape of exactly two hex digits.
pub fn escapes_well_formed(s: &[u8]) -> bool {
    s.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || matches!(s.get(i + 1..i + 3), Some([h, l])
                if h.is_ascii_hexdigit() && l.is_ascii_hexdigit())
    })
}

/// `%XX` escapes to bytes; `None` if a `%` is not followed by two hex digits. Nothing else
/// is changed (`+` stays `+`).
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    escapes_well_formed(s.as_bytes()).then(|| percent_decode_str(s).collect())
}

/// Builds `base?k1=v1&k2=v2` with every key and value encoded.
pub fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let mut out = base.to_owned();
    for (i, (k, v)) in params.iter().enumerate() {
        out.push(if i == 0 && !base.contains('?') {
            '?'
        } else {
            '&'
        });
        out.push_str(&encode(k));
        out.push('=');
        out.push_str(&encode(v));
    }
    out
}

/// A query component: `+` is a space (form encoding), then strict [`percent_decode`], then
/// UTF-8.
fn decode(s: &str) -> Option<String> {
    String::from_utf8(percent_decode(&s.replace('+', " "))?).ok()
}

/// Splits a request target into its path and decoded query parameters.
/// `None` when the query is malformed or too long.
pub fn split_target(target: &str) -> Option<(&str, Vec<(String, String)>)> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some((path, parse_query(query)?))
}

/// Decodes a query string or an `application/x-www-form-urlencoded` body.
/// `None` when it is malformed or has too many parameters.
pub fn parse_query(query: &str) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if params.len() == MAX_QUERY_PARAMS {
            return None;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.push((decode(k)?, decode(v)?));
    }
    Some(params)
}

/// The first value of `name` in `params`.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Escapes text for HTML bodies and attribute values.
pub fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let url = with_query("/cb", &[("state", "a b&c=d"), ("x", "é/?")]);
        let (path, params) = split_target(&url).unwrap();
        assert_eq!(path, "/cb");
        assert_eq!(param(&params, "state"), Some("a b&c=d"));
        assert_eq!(param(&params, "x"), Some("é/?"));
        assert_eq!(split_target("/a?x=%zz"), None);
        assert_eq!(split_target("/a?x=%4"), None);
        assert_eq!(split_target("/a?x=%+5"), None);
        assert_eq!(split_target("/a?x=%+1"), None);
        assert_eq!(split_target("/a?x=%"), None);
        assert_eq!(split_target("/a?x=%%41"), None);
        assert_eq!(split_target("/a?x=%C3"), None, "not UTF-8");
        let many: String = (0..40).map(|i| format!("k{i}=v&")).collect();
        assert_eq!(split_target(&format!("/?{many}")), None);
        assert_eq!(
            html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn plus_is_a_space_and_an_escaped_plus_is_a_plus() {
        let params = parse_query("a=x+y&b=x%2By&c=%20%2b").unwrap();
        assert_eq!(param(&params, "a"), Some("x y"));
        assert_eq!(param(&params, "b"), Some("x+y"));
        assert_eq!(param(&params, "c"), Some(" +"));
        assert_eq!(encode("a b+c/é~"), "a%20b%2Bc%2F%C3%A9~");
    }

    #[test]
    fn percent_decode_takes_exactly_two_hex_digits() {
        assert_eq!(percent_decode("a%41%6a+").as_deref(), Some(&b"aAj+"[..]));
        assert_eq!(percent_decode("%ff%00").as_deref(), Some(&[0xff, 0][..]));
        for bad in ["%", "%4", "%4g", "%+1", "%-1", "% 1", "%%", "a%"] {
            assert_eq!(percent_decode(bad), None, "{bad:?}");
        }
    }
}
