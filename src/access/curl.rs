//! `postern access curl URL [CURL ARGS…]`: cloudflared's. Runs `curl URL CURL ARGS…` with the
//! app token for URL's host in a `cf-access-token` header, for an HTTP service that checks
//! the token itself (an admin port reached through `access tcp`, say).
//!
//! ```text
//!  curl on PATH? ─no─▶ error (before any login)
//!      │
//!  token for H: cached (with REFRESH_MARGIN left) ─▶ the zone session's (only with --edge, and the pinned key) ─▶ a browser login
//!      │        (as `access ssh` gets one; cached the same way)
//!  header file ~/.postern/tokens/.curl-<random> (0600, created new) ─▶ curl -H @file URL ARGS
//!      │
//!  curl exits ─▶ the file is removed ─▶ postern exits with curl's status
//! ```
//!
//! The token never reaches argv (another local user could read it in the process list):
//! curl reads the header from the file, which sits beside the cached token itself. While
//! curl runs, SIGINT, SIGTERM and SIGHUP only mark the time to leave, so that the file is
//! removed once curl ends: a terminal's Ctrl-C reaches curl too, and for SIGTERM and SIGHUP
//! postern ends curl itself, removes the file, then dies of the signal. A SIGKILL leaves the
//! file, mode 0600 in the token directory; a later `access curl` removes it (once a minute
//! old).

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::authorize::token_for;
use super::token_cache::TokenCache;
use super::{AccessError, AccessOptions};

/// The header files' prefix in the token directory.
const HEADER_PREFIX: &str = ".curl-header-";
/// How old a header file must be for another `access curl` to remove it as a leftover.
const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(60);
/// How often postern looks whether curl ended or a signal asked both to leave.
const CURL_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs curl (see the module doc); returns the exit code for postern to exit with.
///
/// `edge_given`: the edge was named (`--edge`, `POSTERN_EDGE`), not taken from the URL; only
/// then may the zone session be exchanged there (and only if it shows the pinned key).
pub fn curl(
    opts: &AccessOptions,
    cache: &TokenCache,
    url: &str,
    args: &[OsString],
    edge_given: bool,
) -> Result<u8, AccessError> {
    let program = find_on_path("curl").ok_or(AccessError::CurlMissing)?;
    remove_leftovers(cache.dir());
    let token = token_for(opts, cache, edge_given)?;
    let local = |what, error| AccessError::Local { what, error };
    cache.ensure_dir().map_err(AccessError::Cache)?;
    // From before the file exists to after it is removed, these signals only mark that we
    // should leave. SIGINT reaches curl from the terminal too; SIGTERM and SIGHUP (a `kill`,
    // a closed session, a service manager) were meant for both of us, so curl is ended for
    // them.
    let (term, hup) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    for (sig, flag) in [
        (
            signal_hook::consts::SIGINT,
            Arc::new(AtomicBool::new(false)),
        ),
        (signal_hook::consts::SIGTERM, term.clone()),
        (signal_hook::consts::SIGHUP, hup.clone()),
    ] {
        signal_hook::flag::register(sig, flag).map_err(|e| local("signal handler", e))?;
    }
    let header = HeaderFile::create(cache.dir(), token.expose())
        .map_err(|e| local("the header file for curl", e))?;
    drop(token);
    let mut header_arg = OsString::from("@");
    header_arg.push(header.path.as_os_str());
    // The header first: after the user's arguments, a trailing `-o` or `--` would take it.
    let mut child = Command::new(&program)
        .arg("-H")
        .arg(header_arg)
        .arg(url)
        .args(args)
        .spawn()
        .map_err(|e| local("running curl", e))?;
    let ended = loop {
        let status = match child.try_wait() {
            Ok(status) => status,
            Err(e) => {
                let _ = child.kill();
                return Err(local("waiting for curl", e));
            }
        };
        if let Some(status) = status {
            break Ended::Curl(match (status.code(), status.signal()) {
                (Some(c), _) => u8::try_from(c).unwrap_or(1),
                (None, Some(s)) => u8::try_from(128 + s).unwrap_or(1),
                (None, None) => 1,
            });
        }
        let asked = [
            (&term, signal_hook::consts::SIGTERM),
            (&hup, signal_hook::consts::SIGHUP),
        ]
        .into_iter()
        .find_map(|(flag, sig)| flag.load(Ordering::Relaxed).then_some(sig));
        if let Some(sig) = asked {
            // std sends only SIGKILL; curl keeps nothing a SIGTERM would have let it save.
            let _ = child.kill();
            let _ = child.wait();
            break Ended::Signal(sig);
        }
        // At most this long after curl ends, postern does too.
        std::thread::sleep(CURL_POLL);
    };
    drop(header);
    Ok(match ended {
        Ended::Curl(code) => code,
        Ended::Signal(sig) => {
            // The file is gone: die of the signal, as a supervisor expects of a process it
            // stopped (128 + its number if that fails).
            let _ = signal_hook::low_level::emulate_default_handler(sig);
            u8::try_from(128 + sig).unwrap_or(1)
        }
    })
}

/// How the wait for curl ended.
enum Ended {
    /// curl exited: postern exits with its status.
    Curl(u8),
    /// SIGTERM or SIGHUP: curl was ended.
    Signal(i32),
}

/// Why curl must not be run with `url` and `args`, if it must not: a redirect followed by
/// curl keeps the `cf-access-token` header on another host (curl drops only Authorization
/// and Cookie), and plain HTTP carries it in clear beyond this machine.
pub fn refusal(url: &str, args: &[OsString]) -> Option<String> {
    let follows = args.iter().filter_map(|a| a.to_str()).any(|a| {
        matches!(a, "--location" | "--location-trusted")
            || (a.starts_with('-') && !a.starts_with("--") && a.contains('L'))
    });
    if follows {
        return Some(
            "curl would follow redirects (-L, --location) with the token to any host they \
             name: follow them yourself, each with its own access curl"
                .into(),
        );
    }
    let lower = url.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("http://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host.split(':').next().unwrap_or_default(),
        };
        let loopback = host == "localhost"
            || host.ends_with(".localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Some(
                "plain http:// would carry the token in clear: use https://, or http:// to \
                 this machine only (localhost and *.localhost, 127.0.0.1, ::1)"
                    .into(),
            );
        }
    }
    None
}

/// `name` in a directory of `PATH`, as an executable file.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Header files an earlier `access curl` could not remove (it was killed). Only files older
/// than [`LEFTOVER_AGE`]: a parallel `access curl` may have just written its own, and curl
/// reads it when it starts.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = std::time::SystemTime::now();
    for e in entries.flatten() {
        let ours = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(HEADER_PREFIX));
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > LEFTOVER_AGE));
        if ours && old {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The `cf-access-token` header line in a new 0600 file; removed on drop.
struct HeaderFile {
    path: PathBuf,
}

impl HeaderFile {
    fn create(dir: &Path, token: &str) -> std::io::Result<HeaderFile> {
        // A compact JWT (checked when it was cached): no CR or LF can end the header early.
        if token.bytes().any(|b| b.is_ascii_control()) {
            return Err(std::io::Error::other("the token holds control characters"));
        }
        let name = format!(
            "{HEADER_PREFIX}{}",
            crate::proto::resume::hex(&crate::io::random_bytes::<8>())
        );
        let path = dir.join(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let file = HeaderFile { path };
        f.write_all(format!("cf-access-token: {token}\n").as_bytes())?;
        f.sync_all()?;
        Ok(file)
    }
}

impl Drop for HeaderFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn redirects_and_plain_http_beyond_this_machine_are_refused() {
        let https = "https://app.example.com/x";
        assert_eq!(refusal(https, &args(&["-s", "-H", "x: y"])), None);
        for follow in ["-L", "-sL", "--location", "--location-trusted"] {
            assert!(refusal(https, &args(&["-s", follow])).is_some(), "{follow}");
        }
        assert!(refusal("http://app.example.com/", &[]).is_some());
        assert!(refusal("HTTP://10.0.0.1:8080/", &[]).is_some());
        for ok in [
            "http://localhost:8080/",
            "http://127.0.0.1/a",
            "http://[::1]:81/",
        ] {
            assert_eq!(refusal(ok, &[]), None, "{ok}");
        }
    }
}
