//! When ssh ends normally it sends its ProxyCommand SIGHUP. `access ssh` takes that as the
//! end of the session and says so (a WebSocket Close), so the origin closes the service
//! connection at once. Dying of the signal instead left a dropped connection that the edge
//! and the origin took for a lost path: the origin kept sshd's connection open for 60 s for a
//! resumption that could never come, and logged that the client was lost.

use crate::support;

use std::time::{Duration, Instant};

use support::Chain;

#[test]
fn a_finished_ssh_session_is_closed_at_the_origin_not_kept_for_resumption() {
    let chain = Chain::start("clean-exit", "ssh.localhost");
    let out = chain.ssh_run("echo done");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    // sshd serves each connection in a child process: the origin's connection to it goes
    // when the stream ends, unless the origin keeps it for a resumption.
    let start = Instant::now();
    while chain.sshd.connections() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "sshd still serves the finished session's connection after {:?}: the origin kept \
             it for a resumption\ntunnel:\n{}",
            start.elapsed(),
            chain.tunnel.child().stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !chain
            .tunnel
            .child()
            .stderr_text()
            .contains("detached (the client's connection was lost)"),
        "{}",
        chain.tunnel.child().stderr_text()
    );
}
