//! The origin reconnects by itself when the edge dies: the edge is killed (no GOAWAY) and started
//! again on the same port with the same state directory; the tunnel process keeps running,
//! registers again, and a new ssh session works within 10 s.

use crate::support;

use std::time::{Duration, Instant};

use support::Chain;

const RECONNECT_DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn tunnel_reconnects_after_the_edge_restarts() {
    let mut chain = Chain::start("edge-restart", "restart.localhost");
    chain.assert_ssh_works("before-restart");
    let tunnel_pid = chain.tunnel.child().id();
    let registered_before = chain.tunnel.registered_count();

    chain.edge.restart();
    let restarted = Instant::now();

    // Poll with real ssh sessions until one succeeds; each failing attempt must fail fast.
    let mut attempts = 0;
    let mut last_err = String::new();
    loop {
        attempts += 1;
        let out = chain.ssh_run("echo after-restart");
        if out.status.success() && String::from_utf8_lossy(&out.stdout) == "after-restart\n" {
            break;
        }
        last_err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            chain.tunnel.child().try_wait().is_none(),
            "the tunnel exited instead of reconnecting; its stderr:\n{}",
            chain.tunnel.child().stderr_text()
        );
        if restarted.elapsed() > RECONNECT_DEADLINE {
            panic!(
                "no working ssh within {RECONNECT_DEADLINE:?} of the edge restart \
                 ({attempts} attempts); last ssh stderr:\n{last_err}\ntunnel:\n{}\nedge:\n{}",
                chain.tunnel.child().stderr_text(),
                chain.edge.stderr_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "ssh worked {:?} after the edge restart ({attempts} attempts; last failure: {last_err:?})",
        restarted.elapsed()
    );

    assert_eq!(chain.tunnel.child().id(), tunnel_pid, "same tunnel process");
    assert!(
        chain.tunnel.registered_count() > registered_before,
        "the tunnel must log a new `registered {}` after the restart; stderr:\n{}",
        chain.hostname,
        chain.tunnel.child().stderr_text()
    );
}
