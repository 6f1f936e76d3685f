//! The command line as cloudflared users know it: `--help` everywhere, an ssh-config block
//! naming this binary's absolute path, and errors that name what is wrong.

use crate::support;

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

/// Runs `postern ARGS` in `cwd` with no HOME at all.
fn run_without_home(cwd: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = postern(&cwd.join("unused-home"))
        .env_remove("HOME")
        .current_dir(cwd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run postern");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_home_commands_fail_naming_home_instead_of_writing_here() {
    let dir = temp_dir("no-home");
    for (args, instead) in [
        (&["edge", "service-token", "create", "x"][..], "--state"),
        (&["edge", "--dev", "--listen", "127.0.0.1:0"], "--state"),
        (
            &[
                "edge",
                "origin-cert",
                "create",
                "--zone",
                "localhost",
                "--out",
                "c.pem",
            ],
            "--state",
        ),
        (
            &[
                "tunnel",
                "--hostname",
                "ssh.localhost",
                "--url",
                "ssh://127.0.0.1:22",
            ],
            "--origincert",
        ),
        (
            &["tunnel", "login", "--edge", "https://login.localhost:1"],
            "--origincert",
        ),
        (&["tunnel", "create", "web"], "--origincert"),
        (
            &["access", "token", "--app", "ssh.localhost"],
            "service token",
        ),
        (&["access", "logout"], "service token"),
        (
            &[
                "access",
                "ssh",
                "--hostname",
                "ssh.localhost",
                "--edge",
                "127.0.0.1:1",
            ],
            "service token",
        ),
    ] {
        let (ok, stderr) = run_without_home(dir.path(), args);
        assert!(!ok, "{args:?} must fail without HOME");
        assert!(
            stderr.contains("HOME is not set") && stderr.contains(instead),
            "{args:?}: the error must name HOME and {instead}; stderr:\n{stderr}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !dir.join(".postern").exists(),
        "nothing may be written under the working directory; it holds {left:?}"
    );
    // A service token needs no home: the same `access ssh` gets as far as the network.
    let out = postern(&dir.join("unused-home"))
        .env_remove("HOME")
        .env("POSTERN_SERVICE_TOKEN_ID", "id.access")
        .env("POSTERN_SERVICE_TOKEN_SECRET", "secret")
        .current_dir(dir.path())
        .args([
            "access",
            "ssh",
            "--hostname",
            "ssh.localhost",
            "--edge",
            "127.0.0.1:1",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run postern");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("HOME"), "{stderr}");
}

#[test]
fn state_directory_owned_by_another_user_is_refused() {
    use std::os::unix::fs::MetadataExt;
    let dir = temp_dir("foreign-state");
    let ours = std::fs::metadata(dir.path()).unwrap().uid();
    // As root (CI): a directory given to `nobody`. Otherwise: `/`, which root owns.
    let (state, owner) = if ours == 0 {
        let state = dir.join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("chown to nobody");
        (state, 65534)
    } else {
        (std::path::PathBuf::from("/"), 0)
    };
    let state_arg = state.to_str().unwrap();
    for args in [
        &["edge", "service-token", "create", "x", "--state", state_arg][..],
        &[
            "edge",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--state",
            state_arg,
        ],
    ] {
        let (ok, _, stderr) = run(args);
        assert!(!ok, "{args:?} must refuse {state_arg}");
        for needle in [
            format!("state directory {state_arg}"),
            format!("owned by uid {owner}"),
            format!("uid {ours}"),
        ] {
            assert!(
                stderr.contains(&needle),
                "{args:?}: {needle:?} missing:\n{stderr}"
            );
        }
    }
    if ours == 0 {
        assert_eq!(
            std::fs::read_dir(&state).unwrap().count(),
            0,
            "nothing may be written into {state_arg}"
        );
    }
}

/// cloudflared's command lines work: its flags that mean nothing here (`--no-autoupdate`,
/// which its own systemd unit passes before `tunnel`, `--protocol`, `--edge-ip-version`…)
/// are accepted with a one-line notice, and the command goes on to do its own work (here it
/// stops at the missing origin certificate, not at the flags). Unknown flags are still refused.
#[test]
fn cloudflared_flags_without_meaning_here_are_accepted_with_a_notice() {
    for args in [
        &["--no-autoupdate", "tunnel", "list"][..],
        &[
            "--no-autoupdate",
            "--autoupdate-freq",
            "24h",
            "tunnel",
            "list",
        ],
        &[
            "tunnel",
            "--no-autoupdate",
            "--protocol",
            "http2",
            "--edge-ip-version",
            "auto",
            "--region=us",
            "list",
        ],
        &["tunnel", "list", "--protocol", "quic", "--no-autoupdate"],
    ] {
        let (ok, _, err) = run(args);
        assert!(
            !ok,
            "{args:?}: there is no origin certificate, so it must still fail"
        );
        assert!(
            err.contains("is a cloudflared flag with no meaning here; ignored"),
            "{args:?}: no notice in:\n{err}"
        );
        assert!(
            !err.contains("invalid option")
                && !err.contains("unexpected")
                && !err.contains("unknown command"),
            "{args:?}: a cloudflared flag was refused:\n{err}"
        );
        assert!(
            err.contains("cert.pem") || err.contains("origin certificate"),
            "{args:?}: expected the missing certificate to be the error:\n{err}"
        );
    }
    let (ok, _, err) = run(&["tunnel", "--protocol"]);
    assert!(
        !ok && err.contains("--protocol"),
        "a missing value names the flag: {err}"
    );
    let (ok, _, err) = run(&["tunnel", "--no-such-flag", "list"]);
    assert!(
        !ok && err.contains("--no-such-flag"),
        "unknown flags are refused: {err}"
    );
}

/// cloudflared's access flags: `-T`/`--tunnel-host` name the hostname, `-L`/`--listener` the
/// local address; a malformed `--destination` (bastion mode) is refused before any connection.
#[test]
fn cloudflared_access_aliases_are_understood() {
    let (ok, _, stderr) = run(&["access", "tcp", "-T", "ssh.example.com"]);
    assert!(!ok);
    assert!(
        stderr.contains("--url (the local listen address) is missing"),
        "-T names the hostname: {stderr}"
    );
    let (ok, _, stderr) = run(&["access", "tcp", "--tunnel-host", "h.example.com", "-L"]);
    assert!(!ok);
    assert!(stderr.contains("missing argument"), "{stderr}");
    let (ok, _, stderr) = run(&[
        "access",
        "ssh",
        "--hostname",
        "bastion.example.com",
        "--destination",
        "root@10.0.0.5:22",
    ]);
    assert!(!ok);
    assert!(stderr.contains("must not have a user@ part"), "{stderr}");
    let (ok, _, stderr) = run(&[
        "access",
        "ssh-config",
        "--hostname",
        "bastion.example.com",
        "--destination",
        "10.0.0.5:22",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("is for `access ssh` and `access tcp`"),
        "{stderr}"
    );
}

/// `tunnel --bastion` (cloudflared's) stands for `--url`; the tunnel's own allow-list is
/// checked before anything connects, its errors naming the entry.
#[test]
fn tunnel_bastion_flags_are_checked_before_connecting() {
    let (ok, _, stderr) = run(&[
        "tunnel",
        "--hostname",
        "jump.example.com",
        "--bastion",
        "--url",
        "ssh://localhost:22",
    ]);
    assert!(
        !ok && stderr.contains("give --url or --bastion, not both"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&[
        "tunnel",
        "--hostname",
        "jump.example.com",
        "--bastion",
        "--bastion-allow",
        "10.0.0.0/8:22",
        "--bastion-allow",
        "10.0.0.0/33:22",
    ]);
    assert!(!ok && stderr.contains("bastion-allow[1]"), "{stderr}");
}

/// cloudflared's global flags go before the command; before anything but `tunnel` the
/// tunnel's flags are a mistake that is named.
#[test]
fn cloudflared_global_tunnel_flags_need_the_tunnel_command() {
    let (ok, _, stderr) = run(&["--pidfile", "/tmp/x.pid", "access", "ssh"]);
    assert!(!ok);
    assert!(stderr.contains("--pidfile before the command"), "{stderr}");
}

/// sshd reads `TrustedUserCAKeys` and `AuthorizedPrincipalsFile` from its own working
/// directory: relative paths given to sshd-setup are written whole.
#[test]
fn sshd_setup_writes_whole_paths_into_sshd_config() {
    let dir = temp_dir("cli-sshd-setup-paths");
    let state = dir.join("edge");
    let out = postern(&dir.join("home"))
        .args(["edge", "ssh-ca", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success());
    let ca = dir.join("ca.pub");
    std::fs::write(&ca, &out.stdout).unwrap();
    let out = postern(&dir.join("home"))
        .current_dir(dir.path())
        .args(["tunnel", "sshd-setup", "--ca-file"])
        .arg(&ca)
        .args([
            "--ca-out",
            "rel/ca.pub",
            "--principals-dir",
            "rel/principals",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whole = dir.path().join("rel");
    assert!(
        text.contains(&format!("TrustedUserCAKeys {}/ca.pub", whole.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "AuthorizedPrincipalsFile {}/principals/%u",
            whole.display()
        )),
        "{text}"
    );
}

/// cloudflared's top-level `login` is its `tunnel login`; postern's too: the same help, the
/// same checks before any connection.
#[test]
fn login_is_tunnel_login() {
    let (ok, top, _) = run(&["login", "--help"]);
    let (_, tunnel, _) = run(&["tunnel", "login", "--help"]);
    assert!(ok && top == tunnel, "{top}");
    let dir = temp_dir("cli-login");
    let existing = dir.join("cert.pem");
    std::fs::write(&existing, "x").unwrap();
    let (ok, _, stderr) = run(&[
        "login",
        "--edge",
        "https://login.localhost:1",
        "--origincert",
        existing.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("already exists"), "{stderr}");
    let (ok, _, stderr) = run(&["login"]);
    assert!(!ok && stderr.contains("--edge URL is missing"), "{stderr}");
}
