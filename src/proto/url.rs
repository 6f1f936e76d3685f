//! Percent-encoding for query strings, and a bounded query parser. No allocation surprises:
//! a query of more than [`MAX_QUERY_PARAMS`] parameters is refused.

/// Most parameters a query may carry.
pub const MAX_QUERY_PARAMS: usize = 32;

/// Encodes `s` for a query component (RFC 3986 unreserved characters stay as they are).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                // Two hex digits exactly (`from_str_radix` alone would take `+5`).
                let hex = b.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
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
        let many: String = (0..40).map(|i| format!("k{i}=v&")).collect();
        assert_eq!(split_target(&format!("/?{many}")), None);
        assert_eq!(
            html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
