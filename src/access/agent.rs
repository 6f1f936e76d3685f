//! Offering a short-lived certificate to ssh through the user's ssh-agent
//! (`postern access ssh --short-lived-cert`), so that the ssh config needs only the
//! ProxyCommand line and no `Match exec`.
//!
//! ```text
//!  ssh ─ runs ─▶ access ssh --short-lived-cert ─ cert (ssh-gen) ─▶ ssh-agent (SSH_AUTH_SOCK)
//!   │                  │  ADD_ID_CONSTRAINED: key + certificate, lifetime = its validity
//!   │                  └─ then relays ──▶ edge ══ tunnel ══▶ sshd
//!   └─ after key exchange, asks the agent for identities: the certificate is there
//! ```
//!
//! The proxy adds the key before it relays a byte, and ssh asks the agent only at user
//! authentication, which needs the relay: no race, unlike key files written by a
//! ProxyCommand (ssh reads `IdentityFile`/`CertificateFile` as soon as the proxy starts).
//! Wire format: draft-miller-ssh-agent (`SSH_AGENTC_ADD_ID_CONSTRAINED`, the
//! `ssh-ed25519-cert-v01@openssh.com` key form of OpenSSH's PROTOCOL.certkeys and
//! `ssh-add`), one request and one reply on a Unix socket.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const SSH_AGENTC_ADD_ID_CONSTRAINED: u8 = 25;
const SSH_AGENT_CONSTRAIN_LIFETIME: u8 = 1;
const SSH_AGENT_SUCCESS: u8 = 6;
const SSH_AGENT_FAILURE: u8 = 5;
/// A reply to an add is one byte; anything much longer is not an agent talking.
const MAX_REPLY: usize = 1024;
/// How long the agent may take to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// The whole request (length prefix included) that adds the Ed25519 key of `seed`/`public`
/// with its certificate `cert_blob`, forgotten by the agent after `lifetime` seconds.
pub fn add_request(
    cert_blob: &[u8],
    seed: &[u8; 32],
    public: &[u8; 32],
    comment: &str,
    lifetime: u32,
) -> Vec<u8> {
    let mut body = vec![SSH_AGENTC_ADD_ID_CONSTRAINED];
    put_string(&mut body, b"ssh-ed25519-cert-v01@openssh.com");
    put_string(&mut body, cert_blob);
    put_string(&mut body, public);
    let mut secret = [0u8; 64];
    secret[..32].copy_from_slice(seed);
    secret[32..].copy_from_slice(public);
    put_string(&mut body, &secret);
    secret.fill(0);
    put_string(&mut body, comment.as_bytes());
    body.push(SSH_AGENT_CONSTRAIN_LIFETIME);
    body.extend_from_slice(&lifetime.to_be_bytes());
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    body.fill(0);
    out
}

/// What the agent answered: `Ok` for success, an error naming what it said otherwise.
pub fn parse_reply(reply: &[u8]) -> Result<(), String> {
    match reply.first() {
        Some(&SSH_AGENT_SUCCESS) => Ok(()),
        Some(&SSH_AGENT_FAILURE) => Err("the agent refused the key".into()),
        Some(other) => Err(format!("the agent answered with message type {other}")),
        None => Err("the agent sent an empty message".into()),
    }
}

/// Reads one length-prefixed agent message from `r`, at most [`MAX_REPLY`] bytes.
pub fn read_message(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_REPLY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("an agent message of {len} bytes"),
        ));
    }
    let mut msg = vec![0u8; len];
    r.read_exact(&mut msg)?;
    Ok(msg)
}

/// Adds the key and its certificate to the agent listening on `socket`.
pub fn add_certificate(
    socket: &Path,
    cert_blob: &[u8],
    seed: &[u8; 32],
    public: &[u8; 32],
    comment: &str,
    lifetime: u32,
) -> Result<(), String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the ssh-agent at {}: {e}", socket.display()))?;
    let io_err = |e: io::Error| format!("ssh-agent at {}: {e}", socket.display());
    s.set_read_timeout(Some(AGENT_TIMEOUT)).map_err(io_err)?;
    s.set_write_timeout(Some(AGENT_TIMEOUT)).map_err(io_err)?;
    let mut request = add_request(cert_blob, seed, public, comment, lifetime);
    let sent = s.write_all(&request);
    request.fill(0);
    sent.map_err(io_err)?;
    let reply = read_message(&mut s).map_err(io_err)?;
    parse_reply(&reply)
}

/// For the fuzz target: an agent's reply, whatever it is, is an answer or an error.
#[cfg(feature = "fuzzing")]
pub fn fuzz_reply(data: &[u8]) {
    let mut r = data;
    if let Ok(msg) = read_message(&mut r) {
        assert!(!msg.is_empty() && msg.len() <= MAX_REPLY);
        let _ = parse_reply(&msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_add_request_is_the_drafts_layout() {
        let req = add_request(b"CERT", &[1; 32], &[2; 32], "c", 180);
        let len = u32::from_be_bytes(req[..4].try_into().unwrap()) as usize;
        assert_eq!(len, req.len() - 4);
        let body = &req[4..];
        assert_eq!(body[0], SSH_AGENTC_ADD_ID_CONSTRAINED);
        let mut at = 1;
        let mut next = || {
            let n = u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
            let s = &body[at + 4..at + 4 + n];
            at += 4 + n;
            s.to_vec()
        };
        assert_eq!(next(), b"ssh-ed25519-cert-v01@openssh.com");
        assert_eq!(next(), b"CERT");
        assert_eq!(next(), [2; 32]);
        let secret = next();
        assert_eq!(&secret[..32], &[1; 32]);
        assert_eq!(&secret[32..], &[2; 32]);
        assert_eq!(next(), b"c");
        assert_eq!(&body[at..], &[SSH_AGENT_CONSTRAIN_LIFETIME, 0, 0, 0, 180]);
    }

    #[test]
    fn replies_are_bounded_and_named() {
        assert_eq!(parse_reply(&[SSH_AGENT_SUCCESS]), Ok(()));
        assert!(parse_reply(&[SSH_AGENT_FAILURE])
            .unwrap_err()
            .contains("refused"));
        assert!(parse_reply(&[]).is_err());
        let mut huge: &[u8] = &[0, 1, 0, 0, 6];
        assert!(read_message(&mut huge).is_err());
        let mut empty: &[u8] = &[0, 0, 0, 0];
        assert!(read_message(&mut empty).is_err());
        let mut ok: &[u8] = &[0, 0, 0, 1, 6];
        assert_eq!(read_message(&mut ok).unwrap(), [6]);
    }
}
