//! `postern tunnel doctor`: checks, before (or beside) a running tunnel, each thing the
//! tunnel needs, in order, and names the first that fails (with a pool of edges, `dns` to
//! `auth` once per edge):
//!
//! ```text
//!  config ─▶ credentials ─▶ dns ─▶ proxy ─▶ tcp ─▶ tls ─▶ auth ─▶ [routes] ─▶ service ─▶ ssh
//!  (flags or  (readable,     (the carrier's hops, as     (the edge's  (named:     (each TCP
//!   config     0600, zone     `access doctor` walks them) admin API    hostnames   service's
//!   file)      covers the                                 accepts the  routed to   connect; for
//!              hostnames)                                 certificate) the tunnel) ssh:// its banner)
//! ```
//!
//! Two forms, as the tunnel runs: the quick one (`--hostname H --url URL`, the zone's origin
//! certificate) and a named tunnel's (`tunnel doctor [NAME]` with its config file, its
//! credentials file or its token: the setup `tunnel run` would use, resolved by the CLI).
//! A named tunnel gets a `routes` step, and one `service` (and `ssh`) line per ingress rule
//! with a TCP service.
//!
//! The edge's acceptance of the certificate is checked on its admin API (the same mutual
//! TLS as a tunnel connection: `GET /v1/tunnels` for a zone's certificate, `GET /v1/self`
//! for a named tunnel's own), never by registering: a registration would add this process
//! to the hostname's HA set, and a running tunnel for the same hostname would share its
//! streams with a connection that serves none.

use std::fmt::Display;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::access::doctor::{fail, ok, reach_edge, Failed};
use crate::limits::{DOCTOR_BANNER_TIMEOUT_SECS, MAX_DOCTOR_BANNER, SERVICE_CONNECT_TIMEOUT_SECS};
use crate::logging::untrusted;
use crate::pki::OriginCredential;

use super::admin::AdminClient;
use super::config::{Ingress, Service, TunnelCredentials};

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
    // Every edge of a pool, in order, as the tunnel connects to each of them.
    let edges = match o.edges.as_slice() {
        [] => super::credential_edges(cred.edge.as_deref(), host).map_err(|e| {
            fail(
                "config",
                format!("the origin certificate's edge: {e}"),
                "pass --edge HOST:PORT",
            )
        })?,
        pool => pool.to_vec(),
    };
    let trust = match &o.extra_ca {
        Some(p) => format!(
            "the CA file {}, the credential's CA and the system roots",
            p.display()
        ),
        None => "the credential's CA and the system roots".to_owned(),
    };
    for edge in &edges {
        let client = AdminClient::new(&cred, edge, o.extra_ca.as_deref()).map_err(|e| {
            fail(
                "tls",
                e,
                "fix the --ca file, or get a new origin certificate (postern tunnel login)",
            )
        })?;
        let (opts, cfg) = client.edge_setup();
        let (sock, _tls) = reach_edge(opts, Ok(cfg.clone()), &trust, None)?;
        drop(sock);
        match client.call("GET", "/v1/tunnels", None) {
            Ok(_) => ok(
                "auth",
                format!(
                    "the edge at {edge} accepts the origin certificate of zone {} (checked on \
                     its admin API, without registering)",
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
    }

    // The local service, as the tunnel connects to it for each stream.
    check_service("", &o.url, &service, "fix --url")
}

/// Connects to `service` (`url`'s address) as the tunnel does for each stream; for an
/// `ssh://` url, reads its banner too. `label` starts the lines (the rule's hostname, for a
/// named tunnel); `fix` says where the url is written.
fn check_service(label: &str, url: &str, service: &str, fix: &str) -> Result<(), Failed> {
    let addrs: Vec<_> = service
        .to_socket_addrs()
        .map_err(|e| {
            fail(
                "service",
                format!("{label}cannot resolve {service}: {e}"),
                fix,
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
            format!("{label}{service} refuses connections: {why}"),
            format!("start the service (sshd: systemctl start ssh), or {fix}"),
        ));
    };
    ok("service", format!("{label}{service} accepts connections"));
    if !url.starts_with("ssh://") {
        return Ok(());
    }
    let ssh_fix = format!("point the service at sshd, or use tcp:// for another service ({fix})");
    let _ = conn.set_read_timeout(Some(Duration::from_secs(DOCTOR_BANNER_TIMEOUT_SECS)));
    let mut line = Vec::new();
    let read = BufReader::new(conn.take(MAX_DOCTOR_BANNER as u64)).read_until(b'\n', &mut line);
    let shown =
        untrusted(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n'])).to_string();
    match read {
        Ok(_) if line.starts_with(b"SSH-") => {
            ok("ssh", format!("{label}banner {shown}"));
            Ok(())
        }
        Ok(_) if line.is_empty() => Err(fail(
            "ssh",
            format!("{label}{service} closed the connection without a banner"),
            "check the service's log (sshd: MaxStartups, or it is not sshd)",
        )),
        Ok(_) => Err(fail(
            "ssh",
            format!("{label}{service}'s first line is {shown:?}, not an SSH banner"),
            ssh_fix,
        )),
        Err(e) => Err(fail(
            "ssh",
            format!("{label}no banner from {service}: {e}"),
            ssh_fix,
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

/// What a named tunnel would run with: the setup `tunnel run` resolves from the config
/// file, the flags and the credentials (the CLI resolves it, and reports a failure to do so
/// with [`setup_failed`]).
pub struct NamedDoctorOptions {
    /// Where the ingress rules come from, for the `config` line (the config file, or the
    /// flags).
    pub config: String,
    pub ingress: Ingress,
    pub creds: TunnelCredentials,
    pub credential: OriginCredential,
    /// The credentials file; `None` when they come from a token.
    pub creds_path: Option<PathBuf>,
    /// The credentials as the lines name them: the file, or the token.
    pub shown: String,
    /// The edges the tunnel would connect to (each is checked, in order).
    pub edges: Vec<String>,
    /// The TLS name sent to an edge whose address is no name (as `tunnel run`).
    pub sni_fallback: String,
    pub extra_ca: Option<PathBuf>,
}

/// The line for a setup the CLI could not resolve: `step` is `config` or `credentials`.
pub fn setup_failed(step: &str, cause: impl Display, fix: impl Display) {
    fail(step, cause, fix);
}

/// Runs the checks for a named tunnel (see the module doc). True when every step is ok.
pub fn doctor_named(opts: &NamedDoctorOptions) -> bool {
    run_named(opts).is_ok()
}

fn run_named(o: &NamedDoctorOptions) -> Result<(), Failed> {
    let name = &o.creds.name;
    let rules: Vec<String> = o
        .ingress
        .rules()
        .iter()
        .map(|r| {
            format!(
                "{} → {}",
                r.hostname.as_deref().unwrap_or("*"),
                untrusted(&r.service.to_string())
            )
        })
        .collect();
    ok(
        "config",
        format!("{}: tunnel {name}, {}", o.config, rules.join(", ")),
    );

    // credentials: the file 0600 (the token is the caller's to keep), the zone covers
    // every hostname of the ingress rules (the edge routes only the zone's hostnames).
    let zone = &o.creds.zone;
    let mode = match &o.creds_path {
        Some(path) => {
            let meta = std::fs::metadata(path).map_err(|e| {
                fail(
                    "credentials",
                    format!("{}: {e}", path.display()),
                    "pass --credentials-file FILE (postern tunnel create wrote it)",
                )
            })?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(fail(
                    "credentials",
                    format!(
                        "{} holds tunnel {name}'s private key and is mode {mode:o}: others may \
                         read it",
                        path.display()
                    ),
                    format!("chmod 600 {}", path.display()),
                ));
            }
            format!(" (mode {mode:o})")
        }
        None => String::new(),
    };
    for (i, r) in o.ingress.rules().iter().enumerate() {
        let Some(pattern) = &r.hostname else {
            continue;
        };
        let host = pattern.strip_prefix("*.").unwrap_or(pattern);
        if host != zone && !host.ends_with(&format!(".{zone}")) {
            return Err(fail(
                "credentials",
                format!(
                    "ingress rule {i}'s hostname {pattern} is outside zone {zone}, the zone of \
                     tunnel {name}: the edge routes only the zone's hostnames to it"
                ),
                format!(
                    "fix the rule's hostname, or run a tunnel of {pattern}'s zone for it \
                     (postern tunnel login, then tunnel create)"
                ),
            ));
        }
    }
    let until = crate::pki::describe_certificate(&o.credential.cert).unwrap_or_default();
    ok(
        "credentials",
        format!(
            "{}{mode}: tunnel {name} ({}), zone {zone}: {until}",
            o.shown, o.creds.id
        ),
    );

    // dns … tls, then auth: the tunnel's own certificate on each edge's admin API.
    if o.edges.is_empty() {
        return Err(fail(
            "config",
            format!("{} names no edge", o.shown),
            "pass --edge HOST:PORT",
        ));
    }
    let trust = match &o.extra_ca {
        Some(p) => format!(
            "the CA file {}, the credentials' CA and the system roots",
            p.display()
        ),
        None => "the credentials' CA and the system roots".to_owned(),
    };
    // The routes as the first edge answers them (the edges of a pool share one store).
    let mut record = None;
    for edge in &o.edges {
        let client = AdminClient::new(&o.credential, edge, o.extra_ca.as_deref())
            .map_err(|e| {
                fail(
                    "tls",
                    e,
                    "fix the --ca file, or get new credentials (postern tunnel token NAME)",
                )
            })?
            .with_fallback_name(&o.sni_fallback);
        let (opts, cfg) = client.edge_setup();
        let (sock, _tls) = reach_edge(opts, Ok(cfg.clone()), &trust, None)?;
        drop(sock);
        let answer = client.call("GET", "/v1/self", None).map_err(|e| {
            fail(
                "auth",
                format!("the edge at {edge} refused tunnel {name}'s certificate: {e}"),
                format!(
                    "if the tunnel was deleted, create it again (postern tunnel create {name}) \
                     and use its new credentials; if its certificate was revoked, ask the \
                     edge's operator"
                ),
            )
        })?;
        ok(
            "auth",
            format!(
                "the edge at {edge} accepts tunnel {name}'s certificate (checked on its admin \
                 API, without registering)"
            ),
        );
        record.get_or_insert(answer);
    }
    let record = record.expect("bug: at least one edge was checked");

    // routes: each hostname of the ingress rules is routed to this tunnel.
    let routes: Vec<String> = record
        .get("routes")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(|h| untrusted(h).to_string())
                .collect()
        })
        .unwrap_or_default();
    let shown_routes = if routes.is_empty() {
        "none".to_owned()
    } else {
        routes.join(", ")
    };
    for (i, r) in o.ingress.rules().iter().enumerate() {
        let Some(pattern) = &r.hostname else {
            continue;
        };
        if !routes.iter().any(|h| h == pattern || r.matches(h)) {
            return Err(fail(
                "routes",
                format!(
                    "{pattern} (ingress rule {i}) is not routed to tunnel {name} (its routes: \
                     {shown_routes})"
                ),
                format!("postern tunnel route dns {name} {pattern}"),
            ));
        }
    }
    if routes.is_empty() {
        return Err(fail(
            "routes",
            format!("no hostname is routed to tunnel {name}"),
            format!("postern tunnel route dns {name} HOSTNAME"),
        ));
    }
    ok("routes", format!("tunnel {name} serves {shown_routes}"));

    // service (and ssh): each rule's, as the tunnel connects for a stream.
    let fix = match o.config.starts_with("config ") {
        true => "fix the ingress rule's service (or pass --url)",
        false => "fix --url",
    };
    for r in o.ingress.rules() {
        let label = format!("{}: ", r.hostname.as_deref().unwrap_or("*"));
        match &r.service {
            Service::Tcp { addr, url } => check_service(&label, url, addr, fix)?,
            Service::Bastion => ok(
                "service",
                format!("{label}a jump host: each stream's destination is checked when it opens"),
            ),
            Service::Status(_) => {}
        }
    }
    Ok(())
}
