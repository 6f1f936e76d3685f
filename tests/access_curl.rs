//! `postern access curl URL [CURL ARGS]` (cloudflared's): curl gets the app token for URL's
//! host in a `cf-access-token` header, signed in through the real login pages (real OpenID
//! Connect provider, headless Chromium) when no token is cached. The HTTP service is a small
//! listener in this test that records each request head, so the header curl sent is seen as
//! the service sees it. The token is never on curl's command line (a wrapper on PATH records
//! curl's argv) nor on postern's stderr; curl's output and exit status pass through; the
//! header file is gone afterwards, also when postern is sent SIGTERM while curl waits (it ends
//! curl, then dies of the signal); without curl the error says so before any login.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::oidc::DEFAULT_EXPECT;
use support::sso::Sso;
use support::{postern, require, run_with_deadline};

const BODY: &str = "admin says hello\n";

/// An HTTP/1.1 listener that sends each request head it reads to the channel, and answers
/// 200 with [`BODY`] (404 for `/missing`).
fn http_recorder() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let missing = head.starts_with("GET /missing ");
            let _ = tx.send(head);
            let answer = if missing {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
                    BODY.len()
                )
            };
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    (port, rx)
}

/// The value of header `name` (case-insensitive) in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The `access curl` header files in a token directory.
fn header_files(tokens_dir: &Path) -> Vec<String> {
    std::fs::read_dir(tokens_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".curl-header-"))
        .collect()
}

/// A `curl` for PATH that appends its argv to `log`, then runs the real curl.
fn curl_wrapper(dir: &Path, log: &Path) -> std::path::PathBuf {
    let real = require("curl");
    let bin = dir.join("wrapped-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("curl");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >>{}\nexec {} \"$@\"\n",
            log.display(),
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn access_curl_signs_in_and_hands_curl_the_token_in_a_header_never_on_its_command_line() {
    let sso = Sso::start("access-curl");
    let (port, heads) = http_recorder();
    let argv_log = sso.dir.join("curl-argv.log");
    let bin = curl_wrapper(sso.dir.path(), &argv_log);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let home = sso.home("alice");
    let resolve = format!("ssh.localhost:{port}:127.0.0.1");
    let curl = |target: &str| {
        let mut cmd = postern(&home);
        cmd.args(["access", "curl", "--edge", &sso.edge_addr, "--ca"])
            .arg(sso.ca())
            .arg(format!("http://ssh.localhost:{port}{target}"))
            .args(["-sS", "--resolve", &resolve, "-H", "X-Extra: kept"])
            .env("PATH", &path);
        cmd
    };

    // No token yet: the browser login, then curl with the new token.
    let (ok, stderr) = sso.login_with(curl("/status"), "curl-alice", "alice", DEFAULT_EXPECT, None);
    assert!(ok, "access curl with a browser login failed:\n{stderr}");
    let head = heads
        .recv_timeout(Duration::from_secs(30))
        .expect("curl must reach the service");
    let token = sso.token("alice", "ssh.localhost");
    assert_eq!(
        header(&head, "cf-access-token"),
        Some(token.as_str()),
        "{head}"
    );
    assert_eq!(
        header(&head, "x-extra"),
        Some("kept"),
        "curl's own args: {head}"
    );
    assert!(head.starts_with("GET /status HTTP/1.1\r\n"), "{head}");
    assert!(!stderr.contains(&token), "the token on stderr:\n{stderr}");

    // Cached now: no browser; curl's output and status are postern's.
    let out = run_with_deadline(
        curl("/status").env("BROWSER", "false"),
        Duration::from_secs(30),
        "access curl with a cached token",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), BODY);
    assert!(!stderr.contains(&token), "{stderr}");
    let head = heads.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        header(&head, "cf-access-token"),
        Some(token.as_str()),
        "{head}"
    );
    let out = run_with_deadline(
        curl("/missing").arg("-f").env("BROWSER", "false"),
        Duration::from_secs(30),
        "access curl -f to a 404",
    );
    assert_eq!(
        out.status.code(),
        Some(22),
        "curl -f's exit status for a 404"
    );

    // curl never had the token on its command line; the header file is gone.
    let argv = std::fs::read_to_string(&argv_log).unwrap();
    assert_eq!(argv.lines().count(), 3, "{argv}");
    assert!(!argv.contains(&token), "the token in curl's argv: {argv}");
    assert!(argv.contains("-H @"), "the header from a file: {argv}");
    let tokens_dir = home.join(".postern/tokens");
    let left = header_files(&tokens_dir);
    assert!(left.is_empty(), "header files left: {left:?}");

    // SIGTERM to postern while curl waits on a service that never answers: postern ends
    // curl, removes the header file and dies of the signal, instead of waiting for a curl
    // nobody wants any more.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let (conn_tx, conn_rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((conn, _)) = silent.accept() {
            let _ = conn_tx.send(conn); // held, never answered
        }
    });
    let resolve = format!("ssh.localhost:{silent_port}:127.0.0.1");
    let mut child = postern(&home)
        .args(["access", "curl", "--edge", &sso.edge_addr, "--ca"])
        .arg(sso.ca())
        .arg(format!("http://ssh.localhost:{silent_port}/never"))
        .args(["-sS", "--resolve", &resolve, "-m", "300"])
        .env("PATH", &path)
        .env("BROWSER", "false")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let Ok(mut conn) = conn_rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        panic!("curl never connected to the silent service");
    };
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("postern still waits for curl 10 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(15),
        "postern dies of the SIGTERM: {status:?}"
    );
    // curl is gone: the service sees its connection close (the request head, then EOF).
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) => panic!("curl's connection is still open after postern left: {e}"),
        }
    }
    assert_eq!(header_files(&tokens_dir), Vec::<String>::new());

    // No curl on PATH: a clear error, and no login is started for nothing.
    let empty = sso.dir.join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let fresh = sso.home("nobody");
    let mut cmd = postern(&fresh);
    cmd.args(["access", "curl", "--edge", &sso.edge_addr])
        .arg("https://ssh.localhost/")
        .env("PATH", &empty)
        .env("BROWSER", "false");
    let out = run_with_deadline(
        &mut cmd,
        Duration::from_secs(30),
        "access curl without curl",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no curl on PATH"), "{stderr}");
    assert!(
        !stderr.contains("/cdn-cgi/access/cli?"),
        "a login was started: {stderr}"
    );
}

#[test]
fn access_curl_without_a_url_says_how_to_call_it() {
    let dir = support::temp_dir("access-curl-usage");
    let out = Command::new(support::postern_bin())
        .args(["access", "curl", "--edge", "127.0.0.1:1"])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("URL is missing"), "{stderr}");
}
