//! A client that stops reading does not make the edge or the origin buffer without bound:
//! `ssh host 'head -c 1G /dev/zero'` with a stdout pipe nobody reads for 5 s, and neither
//! process grows by 32 MiB (backpressure reaches sshd through the windows).

use crate::support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::raw::vm_rss_kib;
use support::Chain;

const MAX_GROWTH_KIB: u64 = 32 * 1024;

#[test]
fn a_client_that_never_reads_does_not_grow_edge_or_origin_memory() {
    let chain = Chain::start("slow-reader", "ssh.localhost");
    // Warm up: one session allocates what every session allocates.
    chain.assert_ssh_works("warm-up");
    let (edge, origin) = (chain.edge.child().id(), chain.tunnel.child().id());
    let before = (vm_rss_kib(edge), vm_rss_kib(origin));

    let mut cmd = chain.ssh();
    cmd.arg("head -c 1G /dev/zero")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut ssh = cmd.spawn().expect("spawn ssh");
    let mut out = ssh.stdout.take().expect("stdout piped");
    // Prove the bytes flow (1 MiB), then stop reading.
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 1024 * 1024 {
        match out.read(&mut buf) {
            Ok(0) => panic!("ssh ended after {got} bytes"),
            Ok(n) => got += n,
            Err(e) => panic!("read ssh stdout: {e}"),
        }
    }
    let start = Instant::now();
    let mut peak = before;
    while start.elapsed() < Duration::from_secs(5) {
        peak.0 = peak.0.max(vm_rss_kib(edge));
        peak.1 = peak.1.max(vm_rss_kib(origin));
        std::thread::sleep(Duration::from_millis(100));
    }
    let still_running = ssh.try_wait().expect("try_wait").is_none();
    // The whole group: ssh and its ProxyCommand.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", ssh.id())])
        .status();
    let _ = ssh.wait();
    drop(out);
    assert!(
        still_running,
        "ssh must still be blocked on its unread stdout"
    );
    for (name, b, p) in [("edge", before.0, peak.0), ("origin", before.1, peak.1)] {
        assert!(
            p.saturating_sub(b) < MAX_GROWTH_KIB,
            "{name} grew from {b} KiB to {p} KiB with a client that never reads"
        );
        eprintln!("{name}: VmRSS {b} KiB before, {p} KiB peak");
    }
    assert!(chain.edge.child().try_wait().is_none(), "the edge exited");
    chain.assert_ssh_works("after-slow-reader");
}
