//! `scripts/build-static` makes a binary that runs with nothing from the machine: `file` calls
//! it statically linked, `ldd` finds no shared library, and it runs with an empty environment.
//!
//! The script always builds (into the normal target directory, so after the first time it is
//! incremental). Never skips: a missing `file`, `ldd` or `env` is a failure naming the package.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::run_with_deadline;

/// A cold static build on 2 cores takes about two minutes; leave room for a busy machine.
const BUILD_DEADLINE: Duration = Duration::from_secs(600);
const RUN_DEADLINE: Duration = Duration::from_secs(30);

fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found: install it (`apt-get install -y {package}`); this test does not skip")
        })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn build_static() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(root.join("scripts/build-static"));
    cmd.current_dir(root).stdin(Stdio::null());
    // What `cargo test` sets for this test process must not reach the inner cargo: ring's build
    // script reruns when CARGO_MANIFEST_DIR changes, which would make every other build (this
    // one, then the next one from a shell) recompile ring, rustls and postern.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&&*key)
        {
            cmd.env_remove(&*key);
        }
    }
    let started = Instant::now();
    let out = run_with_deadline(&mut cmd, BUILD_DEADLINE, "scripts/build-static");
    assert!(
        out.status.success(),
        "scripts/build-static failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    eprintln!(
        "scripts/build-static took {:.1?}:\n{}",
        started.elapsed(),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let printed = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    let expected = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root.join(d) })
        .unwrap_or_else(|| root.join("target"))
        .join("static/postern");
    assert_eq!(
        printed.canonicalize().ok(),
        expected.canonicalize().ok(),
        "build-static printed {stdout:?}, expected {}",
        expected.display()
    );
    expected
}

#[test]
fn build_static_makes_a_binary_that_needs_nothing_from_the_machine() {
    let file = tool("file", "file");
    let ldd = tool("ldd", "libc-bin");
    let env = tool("env", "coreutils");
    let bin = build_static();

    let out = run_with_deadline(
        Command::new(&file).arg(&bin).stdin(Stdio::null()),
        RUN_DEADLINE,
        "file",
    );
    let described = text(&out.stdout);
    assert!(
        described.contains("statically linked") || described.contains("static-pie linked"),
        "file does not call it static: {described}"
    );
    assert!(!described.contains("interpreter"), "{described}");

    // ldd exits non-zero for "not a dynamic executable" on some glibc versions: read its words.
    let out = run_with_deadline(
        Command::new(&ldd).arg(&bin).stdin(Stdio::null()),
        RUN_DEADLINE,
        "ldd",
    );
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd found shared libraries:\n{said}"
    );
    assert!(!said.contains("=>"), "ldd lists libraries:\n{said}");

    // An empty environment: no PATH, no HOME, no locale.
    let out = run_with_deadline(
        Command::new(&env)
            .arg("-i")
            .arg(&bin)
            .arg("--version")
            .stdin(Stdio::null()),
        RUN_DEADLINE,
        "env -i postern --version",
    );
    assert!(out.status.success(), "--version: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("postern {}", env!("CARGO_PKG_VERSION"))
    );

    let out = run_with_deadline(
        Command::new(&env)
            .arg("-i")
            .arg(&bin)
            .args(["access", "ssh-config", "--hostname", "x.example"])
            .stdin(Stdio::null()),
        RUN_DEADLINE,
        "env -i postern access ssh-config",
    );
    assert!(out.status.success(), "ssh-config: {}", text(&out.stderr));
    let config = text(&out.stdout);
    assert!(config.contains("Host x.example"), "{config}");
    assert!(
        config.contains(&format!(
            "ProxyCommand {} access ssh --hostname %h",
            bin.canonicalize().unwrap().display()
        )),
        "{config}"
    );
}
