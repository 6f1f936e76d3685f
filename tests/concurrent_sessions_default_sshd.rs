//! Bursts of simultaneous ssh sessions against an sshd with its *default* `MaxStartups`
//! (10:30:100): sshd drops some connections right after accepting them, as a real server does
//! under a burst. Direct ssh then fails at once ("Connection reset", "closed by remote host");
//! through postern every ssh must end just as promptly, by success or by such an error. None
//! may hang: a close from sshd that postern lost on the way leaves ssh waiting for ever.
//!
//! (`concurrent_sessions.rs` raises `MaxStartups` so that all of its sessions succeed;
//! `service_close_ends_access_ssh.rs` drops one connection deterministically.)

use crate::support;

use std::process::{Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::{tail, try_run_with_deadline, Chain, Startups};

/// Sessions started at once in each round: well past the 10 after which sshd drops some.
const SESSIONS: usize = 24;
/// Rounds at most; the test stops earlier once sshd has dropped enough connections.
const MAX_ROUNDS: usize = 8;
/// Dropped connections wanted before the test has exercised the path enough.
const WANT_DROPS: usize = 12;
/// How long one ssh may take before it counts as hung (and is killed).
const DEADLINE: Duration = Duration::from_secs(45);
/// A dropped session fails in well under a second; ssh's own `ConnectTimeout` (20 s, which
/// ends a session stuck in the banner exchange with "timed out") is far above this.
const PROMPT_FAILURE: Duration = Duration::from_secs(10);

#[test]
fn every_ssh_ends_promptly_when_a_default_sshd_drops_connections() {
    let chain = Chain::start_with_startups(
        "concurrent-default-sshd",
        "burst.localhost",
        Startups::Default,
    );
    let mut hangs = Vec::new();
    let (mut ok, mut failed, mut rounds) = (0, 0, 0);
    while rounds < MAX_ROUNDS && drops(&chain) < WANT_DROPS {
        rounds += 1;
        for (n, took, out) in burst(&chain, rounds) {
            match out {
                Ok(out) if out.status.success() => ok += 1,
                Ok(out) => {
                    let err = String::from_utf8_lossy(&out.stderr);
                    if took > PROMPT_FAILURE || err.contains("timed out") {
                        hangs.push(format!(
                            "round {rounds} ssh {n} failed after {took:?}: {err:?}"
                        ));
                    } else {
                        failed += 1;
                    }
                }
                Err(hang) => hangs.push(hang),
            }
        }
    }
    let dropped = drops(&chain);
    assert!(
        hangs.is_empty(),
        "{} of {} ssh sessions hung ({ok} succeeded, {failed} failed promptly, sshd dropped \
         {dropped}):\n{}\nedge:\n{}\ntunnel:\n{}",
        hangs.len(),
        rounds * SESSIONS,
        hangs.join("\n"),
        tail(&chain.edge.stderr_text(), 4000),
        tail(&chain.tunnel.child().stderr_text(), 4000),
    );
    // Otherwise the test proved nothing: the bursts must have made sshd drop connections.
    assert!(
        dropped > 0,
        "sshd dropped no connection in {rounds} rounds of {SESSIONS}: raise SESSIONS"
    );
    assert!(ok > 0, "no session succeeded ({failed} failed)");
    assert!(
        chain.tunnel.child().try_wait().is_none(),
        "the tunnel exited"
    );
}

/// Starts `SESSIONS` × `ssh HOST true` at once; returns each one's index, duration and output
/// (or the text of its hang).
fn burst(chain: &Chain, round: usize) -> Vec<(usize, Duration, Result<Output, String>)> {
    thread::scope(|s| {
        let handles: Vec<_> = (0..SESSIONS)
            .map(|n| {
                let mut cmd = chain.ssh();
                cmd.arg("true").stdin(Stdio::null());
                s.spawn(move || {
                    let start = Instant::now();
                    let what = format!("round {round} ssh {n}");
                    let out = try_run_with_deadline(&mut cmd, DEADLINE, &what);
                    (n, start.elapsed(), out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// How many connections sshd dropped at MaxStartups so far (it logs each, LogLevel VERBOSE).
fn drops(chain: &Chain) -> usize {
    chain.sshd.stderr_text().matches("past MaxStartups").count()
}
