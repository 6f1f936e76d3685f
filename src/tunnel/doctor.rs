//! `postern tunnel doctor --hostname H --url URL`: checks, before (or beside) a running
//! tunnel, each thing the tunnel needs, in order, and names the first that fails:
//!
//! ```text
//!  config ─▶ credentials ─▶ dns ─▶ proxy ─▶ tcp ─▶ tls ─▶ auth ─▶ service ─▶ ssh
//!  (flags)   (readable,     (the carrier's hops, as     (the edge's   (the --url's TCP
//!             0600, zone     `access doctor` walks them) admin API    connect, and for
//!             covers H)                                  accepts the  ssh:// its banner)
//!                                                        certificate)
//! ```
//!
//! The edge's acceptance of the origin certificate is checked on its admin API (the same
//! mutual TLS as a tunnel connection, `GET /v1/tunnels`), never by registering: a
//! registration would add this process to the hostname's HA set, and a running tunnel for
//! the same hostname would share its streams with a connection that serves none.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::access::doctor::{fail, ok, reach_edge, Failed};
use crate::limits::{DOCTOR_BANNER_TIMEOUT_SECS, MAX_DOCTOR_BANNER, SERVICE_CONNECT_TIMEOUT_SECS};
use crate::logging::untrusted;
use crate::pki::OriginCredential;

use super::admin::AdminClient;

/// What the tunnel would run with (the quick form's flags).
pub struct DoctorOptions {
    pub hostname: String,
    pub url: String,
    pub origin_cert: PathBuf,
    /// `--edge` / `POSTERN_EDGE`, validated; empty: the credential's edge, else `H:443`.
    pub edges: Vec<String>,
    pub extra_ca: Option<PathBuf>,
}

/// Runs the checks (see the module doc). True when every step is ok.
pub fn doctor(opts: &DoctorOptions) -> bool {
    run(opts).is_ok()
}

fn run(o: &DoctorOptions) -> Result<(), Failed> {
    let host = &o.hostname;
    super::Ingress::single(host, &o.url).map_err(|e| {
        fail(
            "config",
            e,
            "fix --url (ssh://HOST:PORT or tcp://HOST:PORT)",
        )
    })?;
    let service = super::service_address(&o.url).map_err(|e| {
        fail(
            "config",
            e,
            "fix --url (ssh://HOST:PORT or tcp://HOST:PORT)",
        )
    })?;
    ok("config", format!("{host} to {}", untrusted(&o.url)));

    let cred = credentials(&o.origin_cert, host)?;
    let edge = o
        .edges
        .first()
        .cloned()
        .or_else(|| cred.edge.clone())
        .unwrap_or_else(|| format!("{host}:443"));
    let client = AdminClient::new(&cred, &edge, o.extra_ca.as_deref()).map_err(|e| {
        fail(
            "tls",
            e,
            "fix the --ca file, or get a new origin certificate (postern tunnel login)",
        )
    })?;
    let trust = match &o.extra_ca {
        Some(p) => format!(
            "the CA file {}, the credential's CA and the system roots",
            p.display()
        ),
        None => "the credential's CA and the system roots".to_owned(),
    };
    let (opts, cfg) = client.edge_setup();
    let (sock, _tls) = reach_edge(opts, Ok(cfg.clone()), &trust, None)?;
    drop(sock);
    match client.call("GET", "/v1/tunnels", None) {
        Ok(_) => ok(
            "auth",
            format!(
                "the edge at {edge} accepts the origin certificate of zone {} (checked on its \
                 admin API, without registering)",
                cred.zone
            ),
        ),
        Err(e) => {
            return Err(fail(
                "auth",
                format!("the edge at {edge} refused the origin certificate: {e}"),
                "get a new origin certificate from this edge (postern tunnel login), or ask \
                 the edge's operator whether it was revoked",
            ))
        }
    }

    // The local service, as the tunnel connects to it for each stream.
    let addrs: Vec<_> = service
        .to_socket_addrs()
        .map_err(|e| {
            fail(
                "service",
                format!("cannot resolve {service}: {e}"),
                "fix --url",
            )
        })?
        .collect();
    let timeout = Duration::from_secs(SERVICE_CONNECT_TIMEOUT_SECS);
    let mut last = None;
    let mut conn = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                conn = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(conn) = conn else {
        let why = last.map_or("no address".to_owned(), |e| e.to_string());
        return Err(fail(
            "service",
            format!("{service} refuses connections: {why}"),
            "start the service (sshd: systemctl start ssh), or fix --url",
        ));
    };
    ok("service", format!("{service} accepts connections"));
    if !o.url.starts_with("ssh://") {
        return Ok(());
    }
    let _ = conn.set_read_timeout(Some(Duration::from_secs(DOCTOR_BANNER_TIMEOUT_SECS)));
    let mut line = Vec::new();
    let read = BufReader::new(conn.take(MAX_DOCTOR_BANNER as u64)).read_until(b'\n', &mut line);
    let shown =
        untrusted(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n'])).to_string();
    match read {
        Ok(_) if line.starts_with(b"SSH-") => {
            ok("ssh", format!("banner {shown}"));
            Ok(())
        }
        Ok(_) if line.is_empty() => Err(fail(
            "ssh",
            format!("{service} closed the connection without a banner"),
            "check the service's log (sshd: MaxStartups, or it is not sshd)",
        )),
        Ok(_) => Err(fail(
            "ssh",
            format!("{service}'s first line is {shown:?}, not an SSH banner"),
            "point --url at sshd, or use tcp:// for another service",
        )),
        Err(e) => Err(fail(
            "ssh",
            format!("no banner from {service}: {e}"),
            "point --url at sshd, or use tcp:// for another service",
        )),
    }
}

/// The origin certificate: readable, 0600, parses, and its zone covers `host`.
fn credentials(path: &Path, host: &str) -> Result<OriginCredential, Failed> {
    let fix = "run postern tunnel login (or pass --origincert FILE)";
    let meta = std::fs::metadata(path)
        .map_err(|e| fail("credentials", format!("{}: {e}", path.display()), fix))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(fail(
            "credentials",
            format!(
                "{} holds the origin's private key and is mode {mode:o}: others may read it",
                path.display()
            ),
            format!("chmod 600 {}", path.display()),
        ));
    }
    let cred = OriginCredential::read(path).map_err(|e| fail("credentials", e, fix))?;
    let covers = host == cred.zone || host.ends_with(&format!(".{}", cred.zone));
    if !covers {
        return Err(fail(
            "credentials",
            format!(
                "{} is for zone {}, which does not cover {host}",
                path.display(),
                cred.zone
            ),
            format!("use the origin certificate of {host}'s zone (postern tunnel login)"),
        ));
    }
    let until = crate::pki::describe_certificate(&cred.cert).unwrap_or_default();
    ok(
        "credentials",
        format!(
            "{} (mode {mode:o}), zone {}: {until}",
            path.display(),
            cred.zone
        ),
    );
    Ok(cred)
}
