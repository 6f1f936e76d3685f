//! 32 ssh sessions at the same time over one tunnel, each with its own output.
//!
//! Each remote command first marks itself ready and then waits until all 32 are ready, so the
//! sessions provably overlap: a tunnel or edge that serialised streams would time out here, and one
//! that mixed streams up would deliver the wrong marker to a client.

use crate::support;

use std::fs;
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use support::{run_with_deadline, shell_quote, Chain};

const SESSIONS: usize = 32;

#[test]
fn thirty_two_concurrent_sessions_over_one_tunnel() {
    let chain = Chain::start("concurrent-sessions", "many.localhost");
    let ready = chain.dir.join("ready");
    fs::create_dir_all(&ready).unwrap();
    let ready_q = shell_quote(&ready.display().to_string());

    let results: Vec<(usize, std::process::Output)> = thread::scope(|s| {
        let handles: Vec<_> = (0..SESSIONS)
            .map(|n| {
                let mut cmd = chain.ssh();
                // Wait (up to ~60 s) for every session to be connected, then answer.
                let remote = format!(
                    "touch {ready_q}/$((0 + {n})); i=0; \
                     while [ \"$(ls {ready_q} | wc -l)\" -lt {SESSIONS} ]; do \
                       i=$((i + 1)); [ $i -gt 1200 ] && {{ echo barrier-timeout; exit 9; }}; \
                       sleep 0.05; \
                     done; \
                     echo session-{n}; echo $(({n} * {n}))"
                );
                cmd.arg(remote).stdin(Stdio::null());
                s.spawn(move || {
                    let out = run_with_deadline(
                        &mut cmd,
                        Duration::from_secs(90),
                        &format!("concurrent ssh session {n}"),
                    );
                    (n, out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut failures = Vec::new();
    for (n, out) in &results {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let want = format!("session-{n}\n{}\n", n * n);
        if !out.status.success() || stdout != want {
            failures.push(format!(
                "session {n}: status {}, stdout {stdout:?} (want {want:?}), stderr {:?}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {SESSIONS} sessions failed:\n{}\nedge:\n{}\ntunnel:\n{}",
        failures.len(),
        failures.join("\n"),
        chain.edge.stderr_text(),
        chain.tunnel.child().stderr_text()
    );
    // Still one tunnel process, still running.
    assert!(
        chain.tunnel.child().try_wait().is_none(),
        "the tunnel exited"
    );
}
