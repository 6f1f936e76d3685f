//! The carrier's WebSocket upgrade, sans-IO: the request the client sends (with Cloudflare
//! Access's header names for its credentials) and what it makes of the edge's answer. The
//! blocking exchange itself is `connect.rs`'s.
//!
//! ```text
//!  request(hostname, credentials, key) ──▶ GET / Upgrade: websocket … ──▶ edge
//!  answer head ──101 + right Sec-WebSocket-Accept──▶ Ok: the splice starts
//!              ──101, wrong accept────────────────▶ BadAnswer
//!              ──anything else────refusal_body_len(head) bytes of body──▶ Refused{cause}
//! ```

use crate::limits::MAX_REFUSAL_BODY;
use crate::logging::untrusted;
use crate::proto::http::{self, ResponseHead};

use super::{json_error, AccessError, Credentials, USER_AGENT};

/// The upgrade request for `hostname`, carrying `credentials`, with the WebSocket `key`
/// (base64 of 16 random bytes). Credentials that cannot go into a header are refused here.
pub fn request(
    hostname: &str,
    credentials: &Credentials,
    key: &str,
    resume: Option<&str>,
    destination: Option<&str>,
) -> Result<Vec<u8>, AccessError> {
    let mut headers: Vec<(&str, &str)> = vec![
        ("Host", hostname),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
        ("User-Agent", USER_AGENT),
    ];
    let printable = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic());
    match credentials {
        Credentials::ServiceToken { id, secret } => {
            if !printable(id) || !printable(secret.expose()) {
                return Err(AccessError::BadCredentials(
                    "the service token id and secret must be printable ASCII without spaces",
                ));
            }
            headers.push(("CF-Access-Client-Id", id));
            headers.push(("CF-Access-Client-Secret", secret.expose()));
        }
        Credentials::AppToken(token) => {
            if !printable(token.expose()) {
                return Err(AccessError::BadCredentials(
                    "the app token must be printable ASCII without spaces",
                ));
            }
            headers.push(("cf-access-token", token.expose()));
        }
        Credentials::None => {}
    }
    if let Some(resume) = resume {
        headers.push((crate::proto::resume::HEADER, resume));
    }
    if let Some(d) = destination {
        // Canonical (parsed by `proto::destination`): no CR, LF or spaces can be in it.
        headers.push(("Cf-Access-Jump-Destination", d));
    }
    let mut req = Vec::new();
    http::write_request(&mut req, "GET", "/", &headers);
    Ok(req)
}

/// How many bytes of body to read after `head`: none for a 101, else the (bounded) body of
/// a refusal, which names its cause.
pub fn refusal_body_len(head: &ResponseHead) -> usize {
    if head.status == 101 {
        return 0;
    }
    head.content_length()
        .map_or(0, |n| n.min(MAX_REFUSAL_BODY as u64) as usize)
}

/// The edge's answer to the upgrade with `key`: `Ok` when the splice may start; a refusal
/// (401, 403, …) with its cause from the JSON `body` (else the reason phrase), escaped; a
/// wrong `Sec-WebSocket-Accept`.
pub fn check_answer(
    hostname: &str,
    key: &str,
    head: &ResponseHead,
    body: &[u8],
) -> Result<(), AccessError> {
    if head.status != 101 {
        let cause = json_error(body).unwrap_or_else(|| untrusted(&head.reason).to_string());
        return Err(AccessError::Refused {
            hostname: hostname.to_owned(),
            status: head.status,
            cause,
        });
    }
    let expected = http::websocket_accept_key(key);
    if head.header("sec-websocket-accept") != Some(expected.as_str()) {
        return Err(AccessError::BadAnswer(
            "the edge answered the upgrade with a wrong Sec-WebSocket-Accept".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http::{parse_response_head, HeadLimits};
    use crate::secret::Secret;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn head(text: &str) -> ResponseHead {
        parse_response_head(text.as_bytes(), &HeadLimits::default())
            .unwrap()
            .expect("a whole head")
            .0
    }

    #[test]
    fn the_request_carries_cloudflare_access_header_names() {
        let creds = Credentials::ServiceToken {
            id: "id.access".into(),
            secret: Secret::from("s3cret".to_owned()),
        };
        let req = String::from_utf8(request("ssh.example.com", &creds, KEY, None, None).unwrap())
            .unwrap();
        assert!(req.starts_with("GET / HTTP/1.1\r\n"), "{req}");
        for line in [
            "Host: ssh.example.com\r\n",
            "Upgrade: websocket\r\n",
            &format!("Sec-WebSocket-Key: {KEY}\r\n"),
            "CF-Access-Client-Id: id.access\r\n",
            "CF-Access-Client-Secret: s3cret\r\n",
        ] {
            assert!(req.contains(line), "{line:?} in {req}");
        }
        let app = Credentials::AppToken(Secret::from("a.b.c".to_owned()));
        let req = String::from_utf8(request("h.example", &app, KEY, None, None).unwrap()).unwrap();
        assert!(req.contains("cf-access-token: a.b.c\r\n"), "{req}");
    }

    #[test]
    fn credentials_that_cannot_be_a_header_are_refused_before_sending() {
        for creds in [
            Credentials::AppToken(Secret::from("a.b\r\nX-Evil: 1".to_owned())),
            Credentials::AppToken(Secret::from(String::new())),
            Credentials::ServiceToken {
                id: "id with space".into(),
                secret: Secret::from("s".to_owned()),
            },
        ] {
            let e = request("h.example", &creds, KEY, None, None).expect_err("refused");
            assert!(e.to_string().contains("printable ASCII"), "{e}");
        }
    }

    #[test]
    fn a_refusal_names_the_edges_cause_escaped_and_reads_a_bounded_body() {
        let h = head("HTTP/1.1 403 Forbidden\r\nContent-Length: 999999\r\n\r\n");
        assert_eq!(refusal_body_len(&h), MAX_REFUSAL_BODY);
        let body = br#"{"error":"denied by policy \u001b[2J"}"#;
        let e = check_answer("h.example", KEY, &h, body).expect_err("refused");
        let AccessError::Refused { status, cause, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(*status, 403);
        assert!(cause.contains("denied by policy"), "{cause}");
        assert!(!cause.contains('\u{1b}'), "{cause:?}");
        // No JSON: the reason phrase.
        let h = head("HTTP/1.1 502 Bad Gateway\r\n\r\n");
        let e = check_answer("h.example", KEY, &h, b"<html>").expect_err("refused");
        let AccessError::Refused { status, cause, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!((*status, cause.as_str()), (502, "Bad Gateway"));
    }

    #[test]
    fn a_101_needs_the_right_accept_key() {
        let ok = head(
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: \
             s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        );
        assert_eq!(refusal_body_len(&ok), 0);
        assert!(check_answer("h.example", KEY, &ok, b"").is_ok());
        let wrong = head("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n");
        let e = check_answer("h.example", KEY, &wrong, b"").expect_err("wrong key");
        assert!(e.to_string().contains("wrong Sec-WebSocket-Accept"), "{e}");
    }
}
