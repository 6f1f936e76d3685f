//! `postern service install` writes units that systemd itself accepts: the real binary writes
//! them into a temporary directory (`--unit-dir`, `--no-enable`: no systemctl, no useradd) and
//! `systemd-analyze verify` (Debian's `systemd` package; it needs no running systemd) checks
//! each one. `postern service uninstall` removes them again.
//!
//! Never skips: without `systemd-analyze` the test fails saying what to install.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{postern, postern_bin, run_with_deadline, temp_dir};

const DEADLINE: Duration = Duration::from_secs(60);

fn systemd_analyze() -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join("systemd-analyze"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "`systemd-analyze` not found: install Debian's systemd package \
             (`apt-get install -y systemd`, or run scripts/test which installs it); \
             this test does not skip"
        )
    })
}

/// Runs `postern ARGS` to completion; returns (success, stdout, stderr).
fn run_postern(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = run_with_deadline(
        postern(home).args(args).stdin(Stdio::null()),
        DEADLINE,
        &format!("postern {}", args.join(" ")),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `systemd-analyze verify` must accept `unit` and say nothing about it.
fn assert_verifies(unit: &Path) {
    let out = run_with_deadline(
        Command::new(systemd_analyze())
            .args(["verify", "--man=no"])
            .arg(unit)
            .stdin(Stdio::null()),
        DEADLINE,
        "systemd-analyze verify",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let unit_text = std::fs::read_to_string(unit).unwrap_or_default();
    assert!(
        out.status.success(),
        "systemd-analyze verify {} failed ({}):\n{stderr}\n--- unit ---\n{unit_text}",
        unit.display(),
        out.status
    );
    let name = unit.file_name().unwrap().to_string_lossy();
    let about_us: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(&*name) || l.contains("postern"))
        .collect();
    assert!(
        about_us.is_empty(),
        "systemd-analyze warned about our unit:\n{stderr}\n--- unit ---\n{unit_text}"
    );
}

fn directive<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

fn assert_hardened(unit: &str) {
    for (key, value) in [
        ("Restart", "always"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("KillSignal", "SIGTERM"),
        ("User", "root"),
        // Descriptor exhaustion: systemd's default soft limit is 1024.
        ("LimitNOFILE", "65536"),
        ("WantedBy", "multi-user.target"),
    ] {
        assert_eq!(directive(unit, key), [value], "{key}= in:\n{unit}");
    }
}

#[test]
fn tunnel_unit_passes_systemd_analyze_verify_and_uninstalls() {
    let dir = temp_dir("service-tunnel");
    let units = dir.join("units");
    let home = dir.join("home");
    // A credential path that needs quoting: a space, a specifier and a dollar.
    let cert_dir = dir.join("etc postern");
    std::fs::create_dir_all(&cert_dir).unwrap();
    let cert = cert_dir.join("cert%n$HOME.pem");
    std::fs::write(&cert, "not a real credential").unwrap();
    let (ok, stdout, stderr) = run_postern(
        &home,
        &[
            "service",
            "install",
            "tunnel",
            "--hostname",
            "SSH.site.com",
            "--url",
            "ssh://localhost:22",
            "--origincert",
            cert.to_str().unwrap(),
            "--ha-connections",
            "2",
            "--unit-dir",
            units.to_str().unwrap(),
            "--user",
            "root",
            "--no-enable",
        ],
    );
    assert!(ok, "install failed:\n{stdout}\n{stderr}");
    let unit_path = units.join("postern-tunnel.service");
    assert!(
        stdout.contains(&format!("wrote {}", unit_path.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("systemctl enable --now postern-tunnel.service"),
        "{stdout}"
    );
    let unit = std::fs::read_to_string(&unit_path).expect("unit written");
    assert_verifies(&unit_path);
    assert_hardened(&unit);

    let bin = postern_bin();
    assert!(bin.is_absolute());
    let quoted_cert = cert.to_str().unwrap().replace('%', "%%").replace('$', "$$");
    assert_eq!(
        directive(&unit, "ExecStart"),
        [format!(
            "\"{}\" \"tunnel\" \"--hostname\" \"ssh.site.com\" \"--url\" \"ssh://localhost:22\" \
             \"--origincert\" \"{quoted_cert}\" \"--ha-connections\" \"2\"",
            bin.display()
        )
        .as_str()],
        "{unit}"
    );
    assert_eq!(directive(&unit, "TimeoutStopSec"), ["35s"]);
    assert_eq!(directive(&unit, "CapabilityBoundingSet"), [""]);

    // A second, named tunnel beside it.
    let (ok, stdout, stderr) = run_postern(
        &home,
        &[
            "service",
            "install",
            "tunnel",
            "--name",
            "git",
            "--hostname",
            "git.site.com",
            "--url",
            "tcp://127.0.0.1:2222",
            "--origincert",
            cert.to_str().unwrap(),
            "--grace-period",
            "60",
            "--unit-dir",
            units.to_str().unwrap(),
            "--user",
            "root",
            "--no-enable",
        ],
    );
    assert!(ok, "named install failed:\n{stdout}\n{stderr}");
    let named = units.join("postern-tunnel-git.service");
    assert_verifies(&named);
    let named_unit = std::fs::read_to_string(&named).unwrap();
    assert_eq!(directive(&named_unit, "TimeoutStopSec"), ["65s"]);

    // Uninstall removes exactly the unit asked for.
    let (ok, stdout, stderr) = run_postern(
        &home,
        &[
            "service",
            "uninstall",
            "tunnel",
            "--unit-dir",
            units.to_str().unwrap(),
            "--no-disable",
        ],
    );
    assert!(ok, "uninstall failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("removed {}", unit_path.display())),
        "{stdout}"
    );
    assert!(!unit_path.exists());
    assert!(named.exists());
    let (ok, _, stderr) = run_postern(
        &home,
        &[
            "service",
            "uninstall",
            "tunnel",
            "--name",
            "git",
            "--unit-dir",
            units.to_str().unwrap(),
            "--no-disable",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(!named.exists());
    let (ok, _, stderr) = run_postern(
        &home,
        &[
            "service",
            "uninstall",
            "--unit-dir",
            units.to_str().unwrap(),
            "--no-disable",
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("not installed"), "{stderr}");
}

#[test]
fn named_tunnel_unit_runs_the_config_and_refuses_a_bad_one() {
    let dir = temp_dir("service-named");
    let units = dir.join("units");
    let home = dir.join("home");
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let config = etc.join("config.json");
    // Relative to the config's directory, as `tunnel run` reads it.
    std::fs::write(
        &config,
        r#"{"tunnel": "web", "credentials-file": "web.json",
            "ingress": [{"hostname": "ssh.site.com", "service": "ssh://localhost:22"},
                        {"service": "http_status:404"}]}"#,
    )
    .unwrap();
    let install = |extra: &[&str]| {
        let mut args = vec!["service", "install", "tunnel", "--config"];
        args.push(config.to_str().unwrap());
        args.extend_from_slice(extra);
        args.extend([
            "--unit-dir",
            units.to_str().unwrap(),
            "--user",
            "root",
            "--no-enable",
        ]);
        run_postern(&home, &args)
    };
    let (ok, stdout, stderr) = install(&["--name", "web", "--metrics", "127.0.0.1:2000"]);
    assert!(ok, "install failed:\n{stdout}\n{stderr}");
    let unit_path = units.join("postern-tunnel-web.service");
    assert_verifies(&unit_path);
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert_hardened(&unit);
    assert_eq!(
        directive(&unit, "ExecStart"),
        [format!(
            "\"{}\" \"tunnel\" \"--config\" \"{}\" \"--metrics\" \"127.0.0.1:2000\" \"run\"",
            postern_bin().display(),
            config.display()
        )
        .as_str()],
        "{unit}"
    );
    // The credentials file it names does not exist: said now, not in a restart loop.
    assert!(
        stderr.contains("web.json"),
        "a missing credentials file is named:\n{stderr}"
    );

    // A config `tunnel run` would refuse is refused at install, naming the field.
    std::fs::write(
        &config,
        r#"{"tunnel": "web", "ingress": [{"service": "ftp://x"}]}"#,
    )
    .unwrap();
    let (ok, _, stderr) = install(&["--name", "bad"]);
    assert!(!ok);
    assert!(stderr.contains("ingress[0].service"), "{stderr}");
    assert!(!units.join("postern-tunnel-bad.service").exists());
    // The quick form's flags do not mix with --config.
    let (ok, _, stderr) = install(&["--hostname", "x.site.com"]);
    assert!(!ok);
    assert!(stderr.contains("quick form"), "{stderr}");
}

#[test]
fn edge_unit_passes_systemd_analyze_verify_and_can_bind_443() {
    let dir = temp_dir("service-edge");
    let units = dir.join("units");
    let state = dir.join("state");
    let audit = dir.join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    let config = dir.join("edge.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"listen":"0.0.0.0:443","state_dir":"{}","audit_log":"{}","zones":[],"applications":[]}}"#,
            state.display(),
            audit.join("audit.log").display()
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = run_postern(
        &dir.join("home"),
        &[
            "service",
            "install",
            "edge",
            "--config",
            config.to_str().unwrap(),
            "--unit-dir",
            units.to_str().unwrap(),
            "--user",
            "root",
            "--no-enable",
        ],
    );
    assert!(ok, "install failed:\n{stdout}\n{stderr}");
    let unit_path = units.join("postern-edge.service");
    let unit = std::fs::read_to_string(&unit_path).expect("unit written");
    assert_verifies(&unit_path);
    assert_hardened(&unit);
    assert_eq!(
        directive(&unit, "ExecStart"),
        [format!(
            "\"{}\" \"edge\" \"--config\" \"{}\"",
            postern_bin().display(),
            config.display()
        )
        .as_str()]
    );
    assert_eq!(
        directive(&unit, "CapabilityBoundingSet"),
        ["CAP_NET_BIND_SERVICE"]
    );
    assert_eq!(
        directive(&unit, "AmbientCapabilities"),
        ["CAP_NET_BIND_SERVICE"]
    );
    assert_eq!(directive(&unit, "StateDirectory"), ["postern"]);
    let mut rw = directive(&unit, "ReadWritePaths");
    rw.sort();
    let mut want = [audit.display().to_string(), state.display().to_string()];
    want.sort();
    assert_eq!(rw, want, "{unit}");
    // The state directory is the edge's to create: installing must not have made it.
    assert!(!state.exists());

    let (ok, stdout, stderr) = run_postern(
        &dir.join("home"),
        &[
            "service",
            "uninstall",
            "--unit-dir",
            units.to_str().unwrap(),
            "--no-disable",
        ],
    );
    assert!(ok, "uninstall failed:\n{stdout}\n{stderr}");
    assert!(!unit_path.exists());
}

#[test]
fn install_refuses_what_a_unit_cannot_carry() {
    let dir = temp_dir("service-refuse");
    let units = dir.join("units");
    let home = dir.join("home");
    let common = [
        "--unit-dir",
        units.to_str().unwrap(),
        "--user",
        "root",
        "--no-enable",
    ];
    for (args, needle) in [
        (
            &[
                "tunnel",
                "--hostname",
                "a\nExecStartPre=/bin/sh",
                "--url",
                "ssh://x",
            ][..],
            "newline",
        ),
        (
            &["tunnel", "--hostname", "a", "--url", "http://x"],
            "not supported",
        ),
        (&["tunnel", "--url", "ssh://x"], "--hostname is missing"),
        (
            &[
                "tunnel",
                "--hostname",
                "a",
                "--url",
                "ssh://x",
                "--name",
                "../x",
            ],
            "--name",
        ),
        (
            &["edge", "--config", "/nonexistent/edge.json"],
            "/nonexistent/edge.json",
        ),
    ] {
        let mut all = vec!["service", "install"];
        all.extend_from_slice(args);
        all.extend_from_slice(&common);
        let (ok, _, stderr) = run_postern(&home, &all);
        assert!(!ok, "{args:?} was accepted");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    assert!(!units.exists() || std::fs::read_dir(&units).unwrap().next().is_none());
}
