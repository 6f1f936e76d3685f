//! `scripts/demo` is re-runnable: started twice in a row, stopped and started again, each
//! start ends with ssh working through it (the demo runs `echo it works` through the edge
//! and tunnel itself), a stop leaves none of its processes running, and a start that fails
//! half way stops what it had started. Real parts: the demo's own edge, sshd, tunnel and ssh.
//!
//! `scripts/demo --sso` runs the guide's headline: ssh with no service token opens the
//! browser at the dev edge's embedded sign-in; here the browser is headless Chromium
//! (tests/js/login.mjs as $BROWSER) typing an email, the one-time code from the edge's log and
//! the terminal's confirmation code, and the ssh command runs.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, postern_bin, require_all, run_with_deadline, temp_dir};

struct Demo {
    dir: PathBuf,
    home: PathBuf,
    listen: String,
}

impl Demo {
    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, |_| {})
    }

    fn run_with(&self, args: &[&str], adjust: impl FnOnce(&mut Command)) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo");
        let mut cmd = Command::new("bash");
        cmd.arg(script)
            .args(args)
            .env("HOME", &self.home)
            .env("POSTERN_DEMO_DIR", &self.dir)
            .env("POSTERN_DEMO_LISTEN", &self.listen)
            .env("POSTERN_DEMO_BIN", postern_bin())
            .env_remove("POSTERN_SERVICE_TOKEN_ID")
            .env_remove("POSTERN_SERVICE_TOKEN_SECRET")
            .stdin(Stdio::null());
        adjust(&mut cmd);
        run_with_deadline(&mut cmd, Duration::from_secs(60), "scripts/demo")
    }

    fn start(&self) -> String {
        let out = self.run(&[]);
        let t = text(&out);
        assert!(out.status.success(), "scripts/demo failed:\n{t}");
        assert!(t.contains("\nit works\n"), "ssh did not work:\n{t}");
        t
    }

    /// The pids the running demo recorded.
    fn pids(&self) -> Vec<u32> {
        let list = fs::read_to_string(self.dir.join("pids")).expect("the demo's pid list");
        let pids: Vec<u32> = list
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect();
        assert_eq!(pids.len(), 3, "edge, sshd and tunnel: {list}");
        pids
    }
}

/// Whatever happens in the test, the demo is stopped at its end.
impl Drop for Demo {
    fn drop(&mut self) {
        if self.dir.join("pids").exists() {
            let _ = self.run(&["stop"]);
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Gone, or a zombie waiting for init to reap it.
fn gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn assert_gone(pids: &[u32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for &pid in pids {
        while !gone(pid) {
            assert!(Instant::now() < deadline, "{what}: pid {pid} still runs");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn the_demo_starts_twice_stops_and_starts_again_leaving_no_process_behind() {
    require_all();
    let tmp = temp_dir("demo");
    let demo = Demo {
        dir: tmp.join("demo"),
        home: tmp.join("home"),
        listen: format!("127.0.0.1:{}", free_port()),
    };
    fs::create_dir_all(&demo.home).unwrap();

    let first = demo.start();
    assert!(
        first.contains("ProxyCommand='env -u POSTERN_SERVICE_TOKEN_ID"),
        "the sign-in line (no service token):\n{first}"
    );
    assert!(
        first.contains("not private") && first.contains("certutil"),
        "why the browser warns and how to trust the dev CA:\n{first}"
    );
    let first_pids = demo.pids();

    // Started again without a stop: the first demo is stopped, the token gets a new secret.
    demo.start();
    assert_gone(&first_pids, "the first demo after the second start");
    let second_pids = demo.pids();

    let out = demo.run(&["stop"]);
    assert!(out.status.success(), "stop: {}", text(&out));
    assert_gone(&second_pids, "after scripts/demo stop");

    demo.start();
    let third_pids = demo.pids();
    let out = demo.run(&["stop"]);
    assert!(out.status.success(), "stop: {}", text(&out));
    assert_gone(&third_pids, "after the second stop");

    // A start that fails after its edge is up (sshd_config cannot be written) stops the edge.
    let sshd_config = demo.dir.join("sshd/sshd_config");
    let _ = fs::remove_file(&sshd_config);
    fs::create_dir_all(&sshd_config).unwrap();
    let out = demo.run(&[]);
    let t = text(&out);
    assert!(!out.status.success(), "the start should fail:\n{t}");
    assert!(t.contains("stopping what it had started"), "{t}");
    let stopped: Vec<u32> = t
        .lines()
        .filter_map(|l| l.strip_prefix("stopped postern (pid ")?.strip_suffix(')'))
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(!stopped.is_empty(), "the failed start stops its edge:\n{t}");
    assert_gone(&stopped, "after a failed start");
    fs::remove_dir(&sshd_config).unwrap();
    demo.start();
    let pids = demo.pids();
    demo.run(&["stop"]);
    assert_gone(&pids, "after the last stop");
}

#[test]
fn the_demo_sso_line_signs_in_through_the_dev_edge_in_a_browser_and_runs_the_command() {
    require_all();
    support::oidc::require_node_parts();
    let tmp = temp_dir("demo-sso");
    let demo = Demo {
        dir: tmp.join("demo"),
        home: tmp.join("home"),
        listen: format!("127.0.0.1:{}", free_port()),
    };
    fs::create_dir_all(&demo.home).unwrap();
    // $BROWSER for the ProxyCommand's login: headless Chromium through the dev sign-in.
    let browser = tmp.join("browser.sh");
    let browser_log = tmp.join("browser.log");
    fs::write(
        &browser,
        format!(
            "#!/bin/sh\nexec node {} \"$1\" demo@example.com unused --dev-code-log {} >>{} 2>&1\n",
            support::oidc::js_dir().join("login.mjs").display(),
            demo.dir.join("logs/edge.log").display(),
            browser_log.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&browser, fs::Permissions::from_mode(0o755)).unwrap();
    }

    let out = demo.run_with(&["--sso"], |c| {
        c.env("BROWSER", &browser);
    });
    let t = text(&out);
    let log = fs::read_to_string(&browser_log).unwrap_or_default();
    assert!(
        out.status.success(),
        "scripts/demo --sso failed:\n{t}\nbrowser:\n{log}"
    );
    assert!(t.contains("\nit works\n"), "the service token's line:\n{t}");
    assert!(
        t.contains("\nsigned in through the browser: it works\n"),
        "the sign-in line ran the command:\n{t}\nbrowser:\n{log}"
    );
    assert!(
        log.contains("dev sign-in") && log.contains("confirmation page"),
        "the browser went through the dev sign-in and the confirmation:\n{log}"
    );
    // The token is cached for the next ssh (0600), as the guide says.
    let token = demo.home.join(".postern/tokens/ssh.localhost.jwt");
    let mode = fs::metadata(&token)
        .unwrap_or_else(|e| panic!("{}: {e}", token.display()))
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let pids = demo.pids();
    let out = demo.run(&["stop"]);
    assert!(out.status.success(), "stop: {}", text(&out));
    assert_gone(&pids, "after scripts/demo stop");
}
