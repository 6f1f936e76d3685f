//! `postern access tcp` for tools that cannot use a ProxyCommand: a local listener where each
//! accepted connection gets its own carrier. Plain `ssh -p PORT 127.0.0.1` reaches the origin's
//! sshd through it, more than once, and concurrently; and a connection whose carrier cannot
//! be set up (an edge that never answers) holds up no other. cloudflared's spellings work:
//! `access ssh --url` listens, `--listener`, `--service-token-id/-secret`, `--loglevel`,
//! `--logfile`, and the `TUNNEL_SERVICE_*` variables in place of the flags.

use crate::support;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{free_port, postern, run_with_deadline, wait_until, Chain, Child};

#[test]
fn local_listener_carries_plain_ssh() {
    let chain = Chain::start("access-tcp", "tcp.localhost");
    let (listener, port) = chain.access_tcp(&chain.edge.edge_arg());

    let ssh = |marker: &str| ssh_command(&chain, port, marker);
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

/// A TCP front for the edge whose first connection is accepted and then left silent (an edge
/// that never answers the TLS ClientHello); every later connection is relayed to `edge`.
/// Sends on the channel once the silent connection is in.
fn stall_first_connection(edge: SocketAddr) -> (SocketAddr, mpsc::Receiver<()>) {
    let front = TcpListener::bind("127.0.0.1:0").expect("bind the front");
    let addr = front.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (n, conn) in front.incoming().enumerate() {
            let Ok(client) = conn else { continue };
            if n == 0 {
                held.push(client);
                let _ = tx.send(());
                continue;
            }
            let Ok(upstream) = TcpStream::connect(edge) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                (upstream, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (addr, rx)
}

#[test]
fn a_silent_edge_for_one_connection_does_not_hold_up_the_next() {
    let chain = Chain::start("access-tcp-stall", "tcp.localhost");
    let (front, stalled) = stall_first_connection(chain.edge.addr);
    let (listener, port) = chain.access_tcp(&front.to_string());

    // The first local connection: its carrier's TLS handshake never gets an answer (the
    // client gives up after 30 s).
    let mut first = TcpStream::connect(("127.0.0.1", port)).expect("connect to access tcp");
    stalled
        .recv_timeout(Duration::from_secs(10))
        .expect("access tcp connects to the edge for the first connection");

    // Meanwhile a second connection is set up and carries a whole ssh session.
    let mut ssh = Command::new("ssh");
    ssh.args(chain.sshd.ssh_options())
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{}@127.0.0.1", chain.sshd.user))
        .arg("echo not-held-up")
        .stdin(Stdio::null());
    let out = run_with_deadline(&mut ssh, Duration::from_secs(15), "ssh -p while one stalls");
    assert!(
        out.status.success(),
        "the second connection waited for the first one's setup: {out:?}\nlistener:\n{}",
        listener.stderr_text()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "not-held-up");

    // The first is still being set up (nothing was sent to it, nothing closed it).
    first
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut byte = [0u8; 1];
    match first.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the stalled connection should still wait, got {other:?}"),
    }
}

/// `ssh -p PORT user@127.0.0.1 echo MARKER` through a local listener; asserts MARKER.
/// Starts `cmd`, an `access tcp` that is to listen on 127.0.0.1:`port` for tcp.localhost,
/// waits until it says so, and runs ssh through it.
fn listening_for_ssh(chain: &Chain, name: &str, cmd: std::process::Command, port: u16) -> Child {
    let child = Child::spawn(name, cmd, chain.dir.path());
    child
        .wait_for_stderr(
            &format!("listening on 127.0.0.1:{port} for tcp.localhost"),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{name} must listen on {port}: {e}"));
    ssh_via(chain, port, name, &child);
    child
}

/// `ssh -p port user@127.0.0.1 echo marker` to the chain's sshd.
fn ssh_command(chain: &Chain, port: u16, marker: &str) -> Command {
    let mut c = chain.ssh_port(port);
    c.arg(format!("echo {marker}")).stdin(Stdio::null());
    c
}

fn ssh_via(chain: &Chain, port: u16, marker: &str, listener: &Child) {
    let mut c = ssh_command(chain, port, marker);
    let out = run_with_deadline(&mut c, Duration::from_secs(30), "ssh -p");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == marker,
        "ssh via {} failed: {out:?}\nlistener:\n{}",
        listener.name(),
        listener.stderr_text()
    );
}

/// cloudflared's command lines for a local listener, each one the only source of what it
/// sets (no POSTERN_ variables, an empty HOME: without the service token the edge would
/// want a browser login and ssh would time out):
/// - `access ssh --url ADDR` listens, as cloudflared's, with the service token from
///   `--service-token-id/--service-token-secret`, and `--loglevel info --logfile F` put its
///   info lines into F (the default level for `access` is warn);
/// - `access tcp --listener ADDR` with `TUNNEL_SERVICE_TOKEN_ID/_SECRET`;
/// - `access tcp` with no flag at all: `TUNNEL_SERVICE_HOSTNAME` and `TUNNEL_SERVICE_URL`.
#[test]
fn cloudflared_access_flags_and_variables_set_up_the_listener() {
    let chain = Chain::start("access-cf", "tcp.localhost");
    let home = chain.dir.join("home");
    let base = |args: &[&str]| {
        let mut cmd = postern(&home);
        cmd.args(["access"])
            .args(args)
            .arg("--edge")
            .arg(chain.edge.edge_arg())
            .arg("--ca")
            .arg(chain.edge.ca())
            .env("BROWSER", "true")
            .env_remove("RUST_LOG");
        cmd
    };
    let (a, b, c) = (free_port(), free_port(), free_port());

    let logfile = chain.dir.join("access.log");
    let mut cmd = base(&["ssh", "--hostname", "tcp.localhost"]);
    cmd.args(["--url", &format!("127.0.0.1:{a}")])
        .args(["--service-token-id", &chain.token.id])
        .args(["--service-token-secret", &chain.token.secret])
        .args(["--loglevel", "info", "--logfile"])
        .arg(&logfile);
    let ssh_url = Child::spawn("access-ssh-url", cmd, chain.dir.path());
    wait_until(
        Duration::from_secs(10),
        "access ssh --url logs that it listens",
        || {
            std::fs::read_to_string(&logfile)
                .unwrap_or_default()
                .contains(&format!("listening on 127.0.0.1:{a}"))
        },
    );
    ssh_via(&chain, a, "ssh-with-url", &ssh_url);

    let mut cmd = base(&["tcp", "--hostname", "tcp.localhost"]);
    cmd.args(["--listener", &format!("127.0.0.1:{b}")])
        .args(["--loglevel", "info"])
        .env("TUNNEL_SERVICE_TOKEN_ID", &chain.token.id)
        .env("TUNNEL_SERVICE_TOKEN_SECRET", &chain.token.secret);
    let listener = listening_for_ssh(&chain, "tcp-with-listener", cmd, b);

    let mut cmd = base(&["tcp", "--loglevel", "info"]);
    cmd.env("TUNNEL_SERVICE_HOSTNAME", "tcp.localhost")
        .env("TUNNEL_SERVICE_URL", format!("127.0.0.1:{c}"))
        .env("TUNNEL_SERVICE_TOKEN_ID", &chain.token.id)
        .env("TUNNEL_SERVICE_TOKEN_SECRET", &chain.token.secret);
    let from_env = listening_for_ssh(&chain, "tcp-from-env", cmd, c);

    // cloudflared's short forms: -T for the hostname, -L for the listener.
    let d = free_port();
    let listen = format!("127.0.0.1:{d}");
    let mut cmd = base(&[
        "tcp",
        "-T",
        "tcp.localhost",
        "-L",
        &listen,
        "--loglevel",
        "info",
    ]);
    cmd.env("TUNNEL_SERVICE_TOKEN_ID", &chain.token.id)
        .env("TUNNEL_SERVICE_TOKEN_SECRET", &chain.token.secret);
    let short = listening_for_ssh(&chain, "tcp-short-flags", cmd, d);

    for child in [&ssh_url, &listener, &from_env, &short] {
        assert!(
            !child.stderr_text().contains(&chain.token.secret),
            "{}: the secret is logged",
            child.name()
        );
    }
}
