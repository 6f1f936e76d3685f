//! A real etcd (Debian's `etcd-server`) for the edge-pool tests: one member on random loopback
//! ports, its data in the test's temp dir, stopped on drop.
//!
//! ```text
//! etcd --data-dir D --listen-client-urls http://127.0.0.1:P --advertise-client-urls http://127.0.0.1:P
//!      --listen-peer-urls http://127.0.0.1:Q (one member: --initial-cluster NAME=http://127.0.0.1:Q)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{free_port, require, try_http_get, Child, STARTUP};

/// A running etcd member. Dropping it stops it (SIGTERM, then SIGKILL).
pub struct Etcd {
    /// `127.0.0.1:P`: its client (and JSON gateway) address.
    pub addr: SocketAddr,
    data: PathBuf,
    peer: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd with its data under `dir` and waits until `/health` says it is healthy.
    pub fn start(dir: &Path) -> Etcd {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let peer = free_port();
            let data = dir.join(format!("etcd-data-{attempts}"));
            let mut etcd = Etcd {
                addr,
                data,
                peer,
                dir: dir.to_path_buf(),
                child: None,
            };
            match etcd.launch() {
                Ok(()) => return etcd,
                // The ports were free a moment ago; another test may have taken one since.
                Err(e) if attempts < 3 => eprintln!("etcd did not start, trying other ports: {e}"),
                Err(e) => panic!("etcd did not start: {e}"),
            }
        }
    }

    fn launch(&mut self) -> Result<(), String> {
        let bin = require("etcd");
        let client = format!("http://{}", self.addr);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let mut cmd = Command::new(bin);
        cmd.arg("--name")
            .arg("postern-test")
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("postern-test={peer}")])
            .args(["--log-level", "warn"]);
        let child = Child::spawn("etcd", cmd, &self.dir);
        let start = Instant::now();
        loop {
            if let Ok((200, body)) = try_http_get(&self.addr, "/health") {
                if body.contains("true") {
                    self.child = Some(child);
                    return Ok(());
                }
            }
            if let Some(status) = child.try_wait() {
                return Err(format!("etcd exited ({status}): {}", child.stderr_text()));
            }
            if start.elapsed() > STARTUP {
                return Err(format!(
                    "etcd not healthy after {STARTUP:?}: {}",
                    child.stderr_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `etcd://127.0.0.1:P/PREFIX`, as `--state` takes it.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.addr)
    }

    /// Stops it (SIGTERM, then SIGKILL); [`Etcd::restart`] starts it again on its data.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            c.stop();
        }
    }

    /// Starts it again on the same ports and data (after [`Etcd::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let start = Instant::now();
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(e) if start.elapsed() < Duration::from_secs(10) => {
                    eprintln!("etcd restart failed, retrying: {e}")
                }
                Err(e) => panic!("etcd did not restart: {e}"),
            }
        }
    }

    pub fn child(&self) -> &Child {
        self.child.as_ref().expect("etcd running")
    }
}
