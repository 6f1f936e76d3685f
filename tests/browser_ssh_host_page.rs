//! A web browser that opens a hostname carrying SSH gets a page that says what the host is
//! and shows the exact `~/.ssh/config` block, under the login pages' strict CSP; checked in
//! real headless Chromium (tests/js/page.mjs), with a screenshot of what it rendered.
//!
//! `POSTERN_SAVE_SHOT=FILE` copies the screenshot there (how docs/ssh-host-page.png is made).

use crate::support;

use std::fs;
use std::process::Command;
use std::time::Duration;

use support::oidc::{js_dir, require_node_parts};
use support::{run_with_deadline, temp_dir, Edge};

const HOST: &str = "build-box.localhost";

#[test]
fn a_browser_that_opens_an_ssh_hostname_sees_the_ssh_config_block() {
    require_node_parts();
    let dir = temp_dir("ssh-host-page");
    let edge = Edge::start(dir.path());
    let shot = dir.join("ssh-host-page.png");
    let url = format!("https://{HOST}:{}/", edge.addr.port());
    let mut cmd = Command::new("node");
    cmd.arg(js_dir().join("page.mjs"))
        .arg(&url)
        .arg("--screenshot")
        .arg(&shot)
        .current_dir(js_dir());
    let out = run_with_deadline(&mut cmd, Duration::from_secs(90), "node page.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "page.mjs failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("STATUS: 200\n"), "{stdout}");
    assert!(stdout.contains("CONTENT-TYPE: text/html"), "{stdout}");
    // The login pages' policy: nothing loads, no script runs, no framing.
    let csp = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CSP: "))
        .unwrap_or_default();
    assert!(csp.starts_with("default-src 'none'"), "CSP: {csp:?}");
    assert!(csp.contains("frame-ancestors 'none'"), "CSP: {csp:?}");
    assert!(!csp.contains("script-src"), "CSP: {csp:?}");
    // What the person reads: the host, the block to paste, the command that writes it.
    let text = stdout.split_once("TEXT:\n").map(|(_, t)| t).unwrap_or("");
    for want in [
        &format!("{HOST} carries SSH") as &str,
        &format!("Host {HOST}\n  ProxyCommand postern access ssh --hostname %h"),
        &format!("postern access ssh-config --hostname {HOST}"),
        &format!("ssh {HOST}"),
    ] {
        assert!(text.contains(want), "want {want:?} in the page:\n{text}");
    }
    let png = fs::read(&shot).expect("the screenshot");
    assert!(
        png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "a PNG screenshot"
    );
    if let Some(path) = std::env::var_os("POSTERN_SAVE_SHOT") {
        fs::copy(&shot, path).expect("copy the screenshot");
    }
}
