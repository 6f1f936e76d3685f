//! `postern access tcp` for tools that cannot use a ProxyCommand: a local listener where each
//! accepted connection gets its own carrier. Plain `ssh -p PORT 127.0.0.1` reaches the origin's
//! sshd through it, more than once, and concurrently.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{free_port, postern, run_with_deadline, Chain, Child};

#[test]
fn local_listener_carries_plain_ssh() {
    let chain = Chain::start("access-tcp", "tcp.localhost");
    let port = free_port();
    let home = chain.dir.join("home");
    let mut cmd = postern(&home);
    cmd.args(["access", "tcp", "--hostname", "tcp.localhost", "--url"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--edge")
        .arg(chain.edge.edge_arg())
        .arg("--ca")
        .arg(chain.edge.ca());
    chain.proxy.apply_env(&mut cmd);
    let listener = Child::spawn("access-tcp", cmd, chain.dir.path());
    listener
        .wait_for_stderr("listening on", Duration::from_secs(10))
        .expect("access tcp did not start listening");

    let ssh = |marker: &str| {
        let mut c = Command::new("ssh");
        c.args(chain.sshd.ssh_options())
            .arg("-p")
            .arg(port.to_string())
            .arg(format!("{}@127.0.0.1", chain.sshd.user))
            .arg(format!("echo {marker}"))
            .stdin(Stdio::null());
        c
    };
    for round in 0..2 {
        let marker = format!("via-local-listener-{round}");
        let out = run_with_deadline(&mut ssh(&marker), Duration::from_secs(30), "ssh -p");
        assert!(
            out.status.success(),
            "ssh via access tcp failed: {out:?}\nlistener:\n{}",
            listener.stderr_text()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), marker);
    }
    // Several at once: one loop, one carrier each.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let mut c = ssh(&format!("parallel-{i}"));
            std::thread::spawn(move || {
                run_with_deadline(&mut c, Duration::from_secs(30), "parallel ssh -p")
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().expect("ssh thread");
        assert!(out.status.success(), "parallel ssh {i} failed: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("parallel-{i}")
        );
    }
}
