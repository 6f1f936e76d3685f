//! `postern access doctor H`: walks the path `access ssh` takes to H one hop at a time and
//! names the first hop that fails, with its cause and what to do (cloudflared users get
//! "websocket: bad handshake" for four unrelated causes, or an ssh that hangs).
//!
//! ```text
//!  dns ─▶ proxy ─▶ tcp ─▶ tls ─▶ token ─▶ policy ─▶ tunnel ─▶ service ─▶ ssh
//!  (edge  (CONNECT  (to the  (trust: --ca   (the upgrade's answer:     (the stream's first
//!   name)  if set)   edge)    / system)      the edge's refusal step)   bytes: the banner)
//! ```
//!
//! Each hop prints one line, `ok  STEP: detail` or `FAIL STEP: cause — fix`, and the first
//! failure ends the run. Every step is the client's own code path (`connect.rs`'s proxy,
//! TCP and TLS setup, `upgrade.rs`'s request, the token cache), so the doctor tests what ssh
//! would use. It never opens a browser: a missing token is a failure whose fix is `postern
//! access login H`. Which hop refused the upgrade comes from the `step` the edge puts in its
//! refusal (`proto::carrier::Carrier::refuse_step`), else from the status. Everything the
//! edge or the service sent is escaped before it is printed.

use std::fmt::Display;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ClientConnection};

use super::connect::{
    connect_direct, connect_through, edge_proxy, read_response_head, refusal_body, resolve_edge,
    tls_handshake,
};
use super::edge_key;
use super::token_cache::{jwt_expiry, TokenCache};
use super::{json_error, upgrade, AccessError, AccessOptions, Credentials};
use crate::limits::{DOCTOR_BANNER_TIMEOUT_SECS, MAX_DOCTOR_BANNER};
use crate::logging::untrusted;
use crate::proto::ws::{self, Item, Role};

/// A hop failed; its line is printed.
pub(crate) struct Failed;

pub(crate) fn ok(step: &str, detail: impl Display) {
    println!("ok  {step}: {detail}");
}

pub(crate) fn fail(step: &str, cause: impl Display, fix: impl Display) -> Failed {
    println!("FAIL {step}: {cause} — {fix}");
    Failed
}

/// Runs the checks for `opts.hostname` (see the module doc). True when every hop is ok.
pub fn doctor(mut opts: AccessOptions, cache: &Result<TokenCache, String>) -> bool {
    run(&mut opts, cache).is_ok()
}

fn run(opts: &mut AccessOptions, cache: &Result<TokenCache, String>) -> Result<(), Failed> {
    let host = opts.hostname.clone();
    let edge = opts.edge.clone();
    // tls: the client's roots, through a verifier that remembers what the edge presented.
    let trust = match &opts.extra_ca {
        Some(p) => format!("the CA file {} and the system roots", p.display()),
        None => "the system roots (no --ca / POSTERN_CA)".to_owned(),
    };
    let seen = edge_key::seen();
    let cfg = edge_key::recording_config(
        opts.extra_ca.as_deref(),
        seen.clone(),
        edge_key::Record::Presented,
        None,
    );
    let (mut sock, mut tls) = reach_edge(opts, cfg, &trust, Some(&seen))?;

    // token: what ssh would send, without a browser.
    let (token, have) = match &opts.credentials {
        Credentials::ServiceToken { id, .. } => (
            format!(
                "service token {} (from --id/--secret or the environment)",
                untrusted(id)
            ),
            true,
        ),
        Credentials::AppToken(_) => ("the app token given".to_owned(), true),
        Credentials::None => match cache {
            Ok(cache) => match cache.load(&host) {
                Some(t) => {
                    let left = jwt_expiry(t.expose())
                        .map(|exp| exp.saturating_sub(crate::io::unix_now()))
                        .map_or(String::new(), |s| format!(", expires in {}", duration(s)));
                    opts.credentials = Credentials::AppToken(t);
                    (format!("the cached app token for {host}{left}"), true)
                }
                None => (
                    format!("no valid cached token for {host} (none, or it expired)"),
                    false,
                ),
            },
            Err(e) => (format!("no token cache ({e})"), false),
        },
    };
    let login_fix = match &opts.credentials {
        Credentials::ServiceToken { .. } => "check the service token's id and secret, or ask the \
                                             edge's operator for a new one"
            .to_owned(),
        _ => format!("run postern access login {host}"),
    };

    let key = crate::proto::base64::encode(&crate::io::random_bytes::<16>());
    let req = upgrade::request(
        &host,
        &opts.credentials,
        &key,
        None,
        opts.destination.as_deref(),
    )
    .map_err(|e| fail("token", e, &login_fix))?;
    let mut stream = rustls::Stream::new(&mut tls, &mut sock);
    if let Err(e) = stream.write_all(&req).and_then(|()| stream.flush()) {
        return Err(fail(
            "tls",
            format!("the edge closed the connection after the handshake: {e}"),
            "check the edge's log",
        ));
    }
    let (head, mut buf, used) = read_response_head(&mut stream, "the upgrade").map_err(|e| {
        fail(
            "token",
            e,
            format!("is {edge} a postern edge? check the edge's log"),
        )
    })?;
    if head.status != 101 {
        let body = refusal_body(&mut stream, &head, &mut buf, used);
        let cause = json_error(body).unwrap_or_else(|| untrusted(&head.reason).to_string());
        let cause = format!("HTTP {}: {cause}", head.status);
        let step = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("step")?.as_str().map(str::to_owned));
        let step = step.as_deref().unwrap_or(match head.status {
            401 => "token",
            403 => "policy",
            404 | 503 => "tunnel",
            _ => "unknown",
        });
        return Err(match step {
            "token" if !have => fail(
                "token",
                format!("{token}, and the edge asks for one ({cause})"),
                &login_fix,
            ),
            "token" => fail(
                "token",
                format!("the edge refused {token} ({cause})"),
                &login_fix,
            ),
            "application" => fail(
                "policy",
                format!("the edge has no application for {host} ({cause})"),
                "check the hostname; the edge's operator must add an application for it",
            ),
            "policy" => {
                ok("token", format!("{token}: accepted"));
                fail(
                    "policy",
                    cause,
                    format!(
                        "ask the edge's operator to allow you in {host}'s policy (or sign in \
                         with another account: postern access login {host})"
                    ),
                )
            }
            "tunnel" => {
                ok("token", format!("{token}: accepted"));
                ok("policy", format!("you may reach {host}"));
                fail(
                    "tunnel",
                    cause,
                    format!(
                        "start the tunnel on the server (postern tunnel --hostname {host} --url \
                         ssh://localhost:22) and check that its log says it registered {host}"
                    ),
                )
            }
            _ => fail(
                "policy",
                format!("the edge refused the connection ({cause})"),
                "check the edge's log",
            ),
        });
    }
    upgrade::check_answer(&host, &key, &head, b"")
        .map_err(|e| fail("tunnel", e, format!("is {edge} a postern edge?")))?;
    ok(
        "token",
        if have {
            format!("{token}: accepted")
        } else {
            format!("none needed: {host} lets anyone in")
        },
    );
    ok("policy", format!("you may reach {host}"));
    ok(
        "tunnel",
        format!("a tunnel serves {host}: the edge opened a stream"),
    );

    // service and ssh: the stream's first bytes, within the deadline.
    let mut rx = buf[used..].to_vec();
    let first = first_line(&mut stream, &mut rx);
    let mut close = Vec::new();
    ws::encode_close(
        &mut close,
        ws::close::NORMAL,
        "doctor done",
        Some(crate::io::random_bytes::<4>()),
    );
    let _ = stream.write_all(&close).and_then(|()| stream.flush());
    tls.send_close_notify();
    let _ = tls.complete_io(&mut sock);

    let service_fix = "start the service the tunnel's --url names on the server (sshd: \
                       systemctl start ssh), or fix the tunnel's --url";
    let line = match first {
        First::Line(line) => line,
        First::Closed(why) => {
            return Err(fail(
                "service",
                format!("the stream ended before the service sent anything: {why}"),
                service_fix,
            ))
        }
        First::Silent => {
            return Err(fail(
                "service",
                format!("the service sent nothing within {DOCTOR_BANNER_TIMEOUT_SECS} s"),
                service_fix,
            ))
        }
    };
    ok("service", "the origin reached its service, which answered");
    let shown =
        untrusted(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n'])).to_string();
    if line.starts_with(b"SSH-") {
        ok("ssh", format!("banner {shown}"));
        Ok(())
    } else {
        Err(fail(
            "ssh",
            format!("the service's first line is {shown:?}, not an SSH banner"),
            "point the tunnel's --url at sshd (ssh://localhost:22)",
        ))
    }
}

/// The hops to the edge, as the carrier takes them (`connect.rs`): dns, proxy, tcp, then
/// tls with `cfg` (`trust` names its roots for the lines; `seen`, when the config records
/// the presented certificate, describes it on a failure). Returns the TLS connection.
pub(crate) fn reach_edge(
    opts: &AccessOptions,
    cfg: Result<Arc<ClientConfig>, AccessError>,
    trust: &str,
    seen: Option<&Mutex<Option<CertificateDer<'static>>>>,
) -> Result<(StdTcpStream, ClientConnection), Failed> {
    let host = opts.hostname.clone();
    let edge = opts.edge.clone();
    // dns and proxy: the proxy is read first (a CONNECT leaves the name to the proxy).
    let via = edge_proxy(opts).map_err(|e| {
        fail(
            "proxy",
            e,
            "fix or unset HTTPS_PROXY / https_proxy (NO_PROXY=EDGE connects directly)",
        )
    })?;
    let dns_fix = "check the hostname; for a self-hosted edge give its address with --edge \
                   HOST:PORT (or POSTERN_EDGE)";
    match resolve_edge(&edge) {
        Ok(addrs) if !addrs.is_empty() => ok("dns", format!("{edge} is {}", list(&addrs))),
        Ok(_) | Err(_) if via.is_some() => ok(
            "dns",
            format!("{edge} does not resolve here; the proxy resolves it"),
        ),
        Ok(_) => {
            return Err(fail(
                "dns",
                format!("{edge} resolves to no address"),
                dns_fix,
            ))
        }
        Err(e) => return Err(fail("dns", e, dns_fix)),
    }

    let port = edge.rsplit_once(':').map_or("443", |(_, p)| p).to_owned();
    let (sock, early) = match &via {
        None => {
            ok(
                "proxy",
                "none (no HTTPS_PROXY or https_proxy, or NO_PROXY names the edge): direct",
            );
            match connect_direct(&edge) {
                Ok(s) => {
                    let peer = s.peer_addr().map_or(edge.clone(), |a| a.to_string());
                    ok("tcp", format!("connected to the edge at {peer}"));
                    (s, Vec::new())
                }
                Err(e) => {
                    return Err(fail(
                        "tcp",
                        e,
                        format!(
                            "start the edge, or allow egress to port {port} (a firewall); the \
                             address is --edge / POSTERN_EDGE, else {host}:443"
                        ),
                    ))
                }
            }
        }
        Some(p) => match connect_through(p, &edge) {
            Ok(x) => {
                ok(
                    "proxy",
                    format!(
                        "{} (from {}) accepted CONNECT {edge}",
                        untrusted(&p.addr),
                        p.source
                    ),
                );
                ok("tcp", format!("to the edge {edge} through the proxy"));
                x
            }
            Err(e) => {
                return Err(fail(
                    "proxy",
                    e,
                    format!(
                        "the proxy from {} must allow CONNECT to {edge} (port {port}); or name \
                         the edge in NO_PROXY to connect directly",
                        p.source
                    ),
                ))
            }
        },
    };

    let cfg = cfg.map_err(|e| {
        fail(
            "tls",
            e,
            "fix the --ca file (PEM CA certificates), or install the system CA bundle \
             (ca-certificates)",
        )
    })?;
    let presented = || {
        seen.and_then(|s| s.lock().ok()?.clone())
            .and_then(|c| crate::pki::describe_certificate(&c))
            .unwrap_or_else(|| "not recorded".into())
    };
    let (sock, tls) = match tls_handshake(opts, &cfg, sock, &early) {
        Ok(x) => x,
        Err(AccessError::UntrustedCertificate { error, .. }) => {
            use rustls::CertificateError as C;
            let fix = match &error {
                rustls::Error::InvalidCertificate(
                    C::NotValidForName | C::NotValidForNameContext { .. },
                ) => {
                    format!("the edge at {edge} does not serve {host}: check --edge / POSTERN_EDGE")
                }
                rustls::Error::InvalidCertificate(
                    C::Expired
                    | C::ExpiredContext { .. }
                    | C::NotValidYet
                    | C::NotValidYetContext { .. },
                ) => "check this machine's clock, or ask the edge's operator to renew the \
                      certificate"
                    .to_owned(),
                _ => "pass --ca FILE (or POSTERN_CA) with the CA that signed the edge's \
                      certificate (a dev edge writes it to its state directory as ca.pem)"
                    .to_owned(),
            };
            return Err(fail(
                "tls",
                format!(
                    "the edge's certificate ({}) does not verify with {trust}: {error}",
                    presented()
                ),
                fix,
            ));
        }
        Err(e) => {
            return Err(fail(
                "tls",
                e,
                format!(
                    "is {edge} a postern edge (its TLS port), and is nothing on the way \
                     intercepting TLS?"
                ),
            ))
        }
    };
    let shown = tls
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(crate::pki::describe_certificate)
        .unwrap_or_else(|| "not shown".into());
    ok(
        "tls",
        format!("the certificate for {host} ({shown}) verifies with {trust}"),
    );
    Ok((sock, tls))
}

/// What the stream brought first.
enum First {
    /// The service's first line (up to its LF, or [`MAX_DOCTOR_BANNER`] bytes).
    Line(Vec<u8>),
    /// The stream ended before any byte; why (escaped).
    Closed(String),
    /// Nothing within [`DOCTOR_BANNER_TIMEOUT_SECS`].
    Silent,
}

/// Reads WebSocket frames from the edge (after the 101; `rx` holds what came with it) until
/// the service's first line, the stream's end, or the deadline.
fn first_line(stream: &mut impl Read, rx: &mut Vec<u8>) -> First {
    let deadline = Instant::now() + Duration::from_secs(DOCTOR_BANNER_TIMEOUT_SECS);
    let mut dec = ws::Decoder::new(Role::Client);
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        loop {
            match dec.poll(rx, MAX_DOCTOR_BANNER) {
                Ok(Some((Item::Data { start, len }, used))) => {
                    let room = MAX_DOCTOR_BANNER - line.len();
                    line.extend_from_slice(&rx[start..start + len.min(room)]);
                    rx.drain(..used);
                }
                Ok(Some((Item::Close { code, reason }, _))) => {
                    if !line.is_empty() {
                        return First::Line(line);
                    }
                    return First::Closed(format!(
                        "the edge closed it ({code}): {}",
                        untrusted(&reason)
                    ));
                }
                Ok(Some((_, used))) => {
                    rx.drain(..used);
                }
                Ok(None) => break,
                Err(e) => return First::Closed(format!("bad frame from the edge: {e}")),
            }
            if line.contains(&b'\n') || line.len() >= MAX_DOCTOR_BANNER {
                let end = line
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(line.len(), |i| i + 1);
                line.truncate(end);
                return First::Line(line);
            }
        }
        if rx.len() > 2 * MAX_DOCTOR_BANNER + 16 {
            // Only a frame header and a bounded line are ever kept: more is not a stream.
            return First::Closed("the edge sent an oversized frame".into());
        }
        if Instant::now() >= deadline {
            return if line.is_empty() {
                First::Silent
            } else {
                First::Line(line)
            };
        }
        match stream.read(&mut chunk) {
            Ok(0) if line.is_empty() => {
                return First::Closed("the edge closed the connection".into())
            }
            Ok(0) => return First::Line(line),
            Ok(n) => rx.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return First::Closed(format!("reading from the edge failed: {e}")),
        }
    }
}

fn list(addrs: &[SocketAddr]) -> String {
    let shown: Vec<String> = addrs.iter().take(4).map(|a| a.ip().to_string()).collect();
    shown.join(", ")
}

fn duration(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        _ => format!("{} h", secs / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            ws::encode_frame(&mut out, ws::BINARY, p, None);
        }
        out
    }

    #[test]
    fn the_first_line_is_taken_across_frames_and_bounded() {
        let mut rx = frames(&[b"SSH-2.0-Open", b"SSH_9.2\r\nrest"]);
        let First::Line(l) = first_line(&mut io::empty(), &mut rx) else {
            panic!("a line");
        };
        assert_eq!(l, b"SSH-2.0-OpenSSH_9.2\r\n");
        // A service that never ends its line: at most MAX_DOCTOR_BANNER bytes.
        let long = vec![b'x'; 3 * MAX_DOCTOR_BANNER];
        let mut rx = Vec::new();
        for c in long.chunks(100) {
            rx.extend(frames(&[c]));
        }
        let First::Line(l) = first_line(&mut &rx[..], &mut Vec::new()) else {
            panic!("a line");
        };
        assert_eq!(l.len(), MAX_DOCTOR_BANNER);
    }

    #[test]
    fn a_close_before_any_byte_names_the_edges_reason_escaped() {
        let mut rx = Vec::new();
        ws::encode_close(
            &mut rx,
            ws::close::TRY_AGAIN,
            "origin could not reach its service: refused\u{1b}[2J",
            None,
        );
        let First::Closed(why) = first_line(&mut io::empty(), &mut rx) else {
            panic!("closed");
        };
        assert!(why.contains("could not reach its service"), "{why}");
        assert!(!why.contains('\u{1b}'), "{why:?}");
    }
}
