//! The edge refuses what it must, says why, and keeps serving afterwards.
//!
//! Each test starts its own chain, provokes one refusal, checks the refused party's exit status
//! and message, and then proves that a normal ssh through the same edge still works.
//!
//! Messages matched (case-insensitive):
//! - wrong service-token secret: `postern access ssh` stderr contains `refused`
//! - unknown hostname: `postern access ssh` stderr contains `not registered`
//! - untrusted edge CA: `postern access ssh` stderr contains `not trusted`
//! - a tunnel whose certificate is for another zone: exit 1, stderr names the hostname and
//!   contains `refused`
//! - TLS SNI `a.localhost` with `Host: b.localhost`: HTTP status 421

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use support::{origin_cert, Chain, Tunnel};

fn assert_refused(status: std::process::ExitStatus, stderr: &str, needle: &str, secrets: &[&str]) {
    assert!(
        !status.success(),
        "postern access ssh must exit non-zero; stderr:\n{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains(needle),
        "stderr must mention {needle:?}; got:\n{stderr}"
    );
    for s in secrets {
        assert!(!stderr.contains(s), "a secret leaked to stderr:\n{stderr}");
    }
}

#[test]
fn wrong_service_token_secret_is_refused() {
    let chain = Chain::start("refuse-secret", "ssh.localhost");
    let wrong = format!("{}x", chain.token.secret);
    let (status, stderr) =
        chain.access_ssh_direct(&chain.hostname, &chain.edge.ca(), &chain.token.id, &wrong);
    assert_refused(status, &stderr, "refused", &[&wrong, &chain.token.secret]);
    assert!(
        !chain.edge.stderr_text().contains(&wrong),
        "the edge logged the presented secret"
    );
    chain.assert_ssh_works("still-serving-after-bad-secret");
}

#[test]
fn unknown_service_token_id_is_refused() {
    let chain = Chain::start("refuse-token-id", "ssh.localhost");
    let (status, stderr) = chain.access_ssh_direct(
        &chain.hostname,
        &chain.edge.ca(),
        "no-such-client-id",
        &chain.token.secret,
    );
    assert_refused(status, &stderr, "refused", &[&chain.token.secret]);
    chain.assert_ssh_works("still-serving-after-bad-id");
}

#[test]
fn unknown_hostname_is_not_registered() {
    let chain = Chain::start("refuse-hostname", "ssh.localhost");
    let (status, stderr) = chain.access_ssh_direct(
        "nobody.localhost",
        &chain.edge.ca(),
        &chain.token.id,
        &chain.token.secret,
    );
    assert_refused(status, &stderr, "not registered", &[&chain.token.secret]);
    chain.assert_ssh_works("still-serving-after-unknown-host");
}

#[test]
fn edge_certificate_from_an_untrusted_ca_is_rejected() {
    let chain = Chain::start("refuse-ca", "ssh.localhost");
    // The origin CA is a real CA, just not the one that signed the edge's TLS certificate.
    let wrong_ca = chain.edge.state.join("origin-ca.pem");
    assert!(wrong_ca.is_file(), "edge --dev must write origin-ca.pem");
    let (status, stderr) = chain.access_ssh_direct(
        &chain.hostname,
        &wrong_ca,
        &chain.token.id,
        &chain.token.secret,
    );
    assert_refused(status, &stderr, "not trusted", &[&chain.token.secret]);
    chain.assert_ssh_works("still-serving-after-bad-ca");
}

#[test]
fn origin_with_a_certificate_for_another_zone_cannot_take_a_hostname() {
    let chain = Chain::start("refuse-zone", "ssh.localhost");
    let other_cert = chain.dir.join("other-cert.pem");
    origin_cert(
        &chain.edge.state,
        "other.test",
        &other_cert,
        &chain.edge.addr,
    );
    let intruder = Tunnel::spawn(
        chain.dir.path(),
        "tunnel-other-zone",
        &chain.hostname,
        &chain.sshd.url(),
        &other_cert,
        &chain.edge,
    );
    let status = intruder
        .child()
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("a refused tunnel must exit: {e}"));
    let stderr = intruder.child().stderr_text();
    assert_eq!(
        status.code(),
        Some(1),
        "a refused registration exits 1; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&chain.hostname),
        "the refusal must name the hostname; stderr:\n{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("refused"),
        "the refusal must say `refused`; stderr:\n{stderr}"
    );
    let claims_success = stderr.lines().any(|l| {
        let l = l.to_lowercase();
        l.contains(&format!("registered {}", chain.hostname))
            && !l.contains("not registered")
            && !l.contains("refus")
    });
    assert!(
        !claims_success,
        "the intruder must never report itself registered; stderr:\n{stderr}"
    );
    // The rightful tunnel keeps the hostname.
    assert!(
        chain.tunnel.child().try_wait().is_none(),
        "the rightful tunnel exited"
    );
    chain.assert_ssh_works("still-serving-after-zone-intruder");
}

#[test]
fn host_header_that_differs_from_sni_gets_421() {
    let chain = Chain::start("refuse-sni", "ssh.localhost");

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(chain.edge.ca()).expect("open ca.pem") {
        roots.add(cert.expect("parse ca.pem")).expect("add CA root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("a.localhost").expect("server name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client connection");
    let tcp = TcpStream::connect(chain.edge.addr).expect("connect to edge");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);

    tls.write_all(
        b"GET / HTTP/1.1\r\n\
          Host: b.localhost\r\n\
          Connection: Upgrade\r\n\
          Upgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          CF-Access-Client-Id: "
            .iter()
            .chain(chain.token.id.as_bytes())
            .chain(b"\r\nCF-Access-Client-Secret: ")
            .chain(chain.token.secret.as_bytes())
            .chain(b"\r\n\r\n")
            .copied()
            .collect::<Vec<u8>>()
            .as_slice(),
    )
    .expect("send request over TLS (the TLS handshake with SNI a.localhost must succeed)");
    tls.flush().unwrap();

    // Read the response head (until CRLFCRLF, EOF, or an error after some bytes).
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") && response.len() < 64 * 1024 {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if !response.is_empty() => {
                eprintln!("read ended with {e} after {} bytes", response.len());
                break;
            }
            Err(e) => panic!("no response from the edge: {e}"),
        }
    }
    let head = String::from_utf8_lossy(&response);
    let status_line = head.lines().next().unwrap_or_default();
    assert!(
        status_line.starts_with("HTTP/1.1 421"),
        "Host b.localhost over SNI a.localhost must get 421 Misdirected Request; got:\n{head}"
    );
    drop(tls);

    chain.assert_ssh_works("still-serving-after-421");
}
