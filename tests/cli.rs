//! The command line as cloudflared users know it: `--help` everywhere, an ssh-config block
//! naming this binary's absolute path, and errors that name what is wrong.

mod support;

use support::{postern, temp_dir};

fn run(args: &[&str]) -> (bool, String, String) {
    let dir = temp_dir("cli");
    let out = postern(&dir.join("home"))
        .args(args)
        .output()
        .expect("run postern");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["edge", "--help"],
        &["edge", "service-token", "--help"],
        &["edge", "origin-cert", "--help"],
        &["tunnel", "--help"],
        &["access", "--help"],
        &["access", "ssh", "--help"],
        &["access", "tcp", "--help"],
        &["tunnel", "login", "--help"],
        &["service", "--help"],
    ] {
        let (ok, stdout, _) = run(args);
        assert!(ok, "{args:?} --help failed");
        assert!(stdout.contains("USAGE"), "{args:?}: {stdout}");
    }
}

#[test]
fn ssh_config_names_the_absolute_binary() {
    let (ok, stdout, _) = run(&["access", "ssh-config", "--hostname", "ssh.site.com"]);
    assert!(ok);
    let bin = support::postern_bin();
    assert!(bin.is_absolute());
    assert!(stdout.contains("Host ssh.site.com"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "ProxyCommand {} access ssh --hostname %h",
            bin.display()
        )),
        "{stdout}"
    );
}

#[test]
fn bad_input_names_the_problem() {
    let (ok, _, stderr) = run(&["tunnel", "--url", "ssh://localhost:22"]);
    assert!(!ok);
    assert!(stderr.contains("--hostname is missing"), "{stderr}");
    let (ok, _, stderr) = run(&["tunnel", "--hostname", "a.localhost", "--url", "http://x:1"]);
    assert!(!ok);
    assert!(stderr.contains("not supported"), "{stderr}");
    let (ok, _, stderr) = run(&[
        "tunnel",
        "--hostname",
        "a.localhost",
        "--url",
        "ssh://localhost",
        "--origincert",
        "/nonexistent/cert.pem",
    ]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
    let dir = temp_dir("cli-config");
    let cfg = dir.join("edge.json");
    std::fs::write(
        &cfg,
        r#"{"listen":"127.0.0.1:0","state_dir":"/tmp/x","zones":[],"applications":[],"colour":"blue"}"#,
    )
    .unwrap();
    let (ok, _, stderr) = run(&["edge", "--config", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("colour"),
        "unknown field must be named: {stderr}"
    );
    let (ok, _, stderr) = run(&[
        "access",
        "ssh",
        "--hostname",
        "x.localhost",
        "--id",
        "only-id",
    ]);
    assert!(!ok);
    assert!(stderr.contains("needs both"), "{stderr}");
}
