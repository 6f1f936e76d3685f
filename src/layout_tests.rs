//! The layout's promise, checked: only `io/` and the drivers touch the OS or the clock.
//!
//! A *core* turns inputs (bytes, events, the time, passed in) into outputs and decisions; a
//! *driver* is the thin code that reads sockets, files, the clock, threads and the
//! environment and feeds a core. Everything under `proto/` is a core (`proto::tests` is
//! stricter still); the roles keep their cores in `core.rs` (or a `core/` directory) beside a
//! `driver.rs`. The lists below are every file allowed to touch the OS, each with its reason.

/// What touches the OS or the clock.
pub(crate) const OS_WORDS: &[&str] = &[
    "std::fs",
    "fs::",
    "std::net::Tcp",
    "std::net::Udp",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "mio::",
    "Instant::now",
    "SystemTime::now",
    "std::thread",
    "thread::",
    "std::process",
    "std::env",
    "env::var",
    "ureq::",
];

/// Drivers outside `io/`, and why each one is one.
const DRIVERS: &[(&str, &str)] = &[
    ("main.rs", "the command line: arguments, files, exit codes"),
    (
        "service.rs",
        "installs and removes service units (files, systemctl)",
    ),
    ("logging.rs", "reads RUST_LOG and starts the logger"),
    (
        "oidc.rs",
        "the provider's HTTP client, run on the edge's login workers",
    ),
    ("audit.rs", "the audit log's writer thread and file"),
    ("pki.rs", "writes and reads key and certificate files"),
    ("sshca.rs", "reads and creates the SSH CA key file"),
    (
        "store/mod.rs",
        "the state directory's files and their owner checks",
    ),
    ("store/file.rs", "the file-backed Store"),
    (
        "store/etcd.rs",
        "the etcd-backed Store: HTTP to etcd's JSON gateway (ureq), run on the store worker",
    ),
    ("store/worker.rs", "the thread the Store runs on"),
    (
        "edge/driver.rs",
        "the edge's mio loop: accept, signals, config reload, the clock, worker threads",
    ),
    (
        "edge/config.rs",
        "reads the edge's config file and secret files",
    ),
    (
        "tunnel/config.rs",
        "reads the tunnel's config and credential files",
    ),
    (
        "tunnel/admin.rs",
        "the admin commands' client (reads cert.pem, writes credentials)",
    ),
    ("tunnel/resolve.rs", "the DNS resolver thread"),
    (
        "tunnel/doctor.rs",
        "`tunnel doctor`: the credential file's mode, the local service's TCP connect",
    ),
    (
        "tunnel/sshd_setup.rs",
        "`tunnel sshd-setup --write`: the CA file, sshd_config and its backup, `sshd -t`",
    ),
    (
        "tunnel/driver.rs",
        "the origin's mio loop: sockets, TLS record IO, signals, the clock",
    ),
    (
        "access/driver.rs",
        "the splice's mio loop: sockets, stdio, TLS records, the clock",
    ),
    (
        "access/connect.rs",
        "the carrier's blocking setup: DNS, TCP, proxy CONNECT, TLS handshake, upgrade",
    ),
    (
        "access/curl.rs",
        "`access curl`: finds and runs curl, the header file beside the cached token",
    ),
    (
        "access/doctor.rs",
        "`access doctor`: the carrier's blocking setup step by step, the banner's deadline",
    ),
    (
        "access/https.rs",
        "the login's and the admin commands' HTTPS requests (ureq over the carrier's setup)",
    ),
    (
        "access/listener.rs",
        "`access tcp`'s accept loop and its setup threads",
    ),
    (
        "access/login.rs",
        "opens the browser and waits for the login",
    ),
    (
        "access/login_lock.rs",
        "the per-host lock file that makes one login at a time",
    ),
    ("access/token_cache.rs", "the token files under ~/.postern"),
    (
        "access/sshgen.rs",
        "`access ssh-gen`: the key and certificate files under ~/.postern, the clock",
    ),
];

/// The code of `text` that ships: before its `#[cfg(test)]` module, without comment lines and
/// without the items gated on the `fuzzing` feature (fuzz harnesses may start a clock).
pub(crate) fn shipped(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut out = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut depth = 0i32;
    let mut gated = false;
    for line in text.lines() {
        let opens = line.matches('{').count() as i32;
        let closes = line.matches('}').count() as i32;
        if line
            .trim_start()
            .starts_with("#[cfg(feature = \"fuzzing\")]")
        {
            gated = true;
        } else if gated && opens > 0 && skip_depth.is_none() {
            skip_depth = Some(depth);
            gated = false;
        }
        depth += opens - closes;
        let comment = line.trim_start().starts_with("//");
        match skip_depth {
            Some(d) if depth <= d => skip_depth = None,
            Some(_) => {}
            None if !gated && !comment => {
                out.push_str(line);
                out.push('\n');
            }
            None => {}
        }
    }
    out
}

fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_io_and_the_drivers_touch_the_os_or_the_clock() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut offences = Vec::new();
    for path in files {
        let name = path
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let is_test = name.ends_with("tests.rs") || name.contains("/tests/");
        if name.starts_with("io/") || is_test || DRIVERS.iter().any(|(d, _)| *d == name) {
            continue;
        }
        let code = shipped(&std::fs::read_to_string(&path).unwrap());
        for word in OS_WORDS {
            if code.contains(word) {
                offences.push(format!("src/{name} names {word}"));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "only io/ and the drivers may touch the OS or the clock; move the IO into a driver \
         or pass the value in:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_lists_name_files_that_exist() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for name in DRIVERS.iter().map(|(d, _)| *d) {
        assert!(src.join(name).exists(), "src/{name} is listed but gone");
    }
}

#[test]
fn the_check_sees_through_fuzz_gates_but_not_around_them() {
    let text = "fn a() {}\n#[cfg(feature = \"fuzzing\")]\npub fn f() {\n    let t = Instant::now();\n    if x {\n    }\n}\nfn b() { Instant::now(); }\n";
    let code = shipped(text);
    assert!(!code.contains("let t = Instant::now"), "{code}");
    assert!(code.contains("fn b() { Instant::now(); }"), "{code}");
}
