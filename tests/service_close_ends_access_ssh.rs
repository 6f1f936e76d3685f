//! When the service closes first (sshd dropping a connection at `MaxStartups`, writing
//! "Exceeded MaxStartups" and closing), `postern access ssh` must hand ssh those last bytes and
//! then EOF, even though ssh still holds its stdin open: ssh waits for that EOF before it ends
//! (direct ssh reads it at once: "Connection closed by remote host"). A client that only
//! half-closed its copy of stdout and waited for stdin EOF left both waiting for ever.

use crate::support;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::Duration;

use support::{run_holding_stdin, Chain, Startups};

#[test]
fn access_ssh_delivers_the_last_bytes_and_exits_when_sshd_drops_the_connection() {
    let chain = Chain::start_with_startups("service-close", "dropped.localhost", Startups::Single);
    // Hold sshd's one key-exchange slot: every further connection is dropped. Its banner
    // proves sshd accepted (and counted) this one.
    let held = TcpStream::connect(("127.0.0.1", chain.sshd.port)).expect("connect to sshd");
    held.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut banner = String::new();
    BufReader::new(&held)
        .read_line(&mut banner)
        .expect("sshd banner");
    assert!(banner.starts_with("SSH-2.0-"), "sshd said {banner:?}");

    let (status, stdout, stderr) = run_holding_stdin(
        chain.access_ssh(),
        Duration::from_secs(20),
        "postern access ssh to an sshd that drops the connection (stdin held open)",
    );
    assert!(
        chain.sshd.stderr_text().contains("past MaxStartups"),
        "sshd did not drop the connection; sshd:\n{}",
        chain.sshd.stderr_text()
    );
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        "Exceeded MaxStartups\r\n",
        "stderr:\n{stderr}"
    );
    // The service ended the stream cleanly: not an error.
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    drop(held);
}
