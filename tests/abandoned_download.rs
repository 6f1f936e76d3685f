//! A download whose reader goes away mid-transfer ends at the origin too. The program on the
//! client side of `postern access tcp` closes its socket while the service is still sending:
//! the access client says so (a WebSocket Close with GOING_AWAY), the edge resets the stream,
//! and the origin closes its connection to the service, whose next writes fail. Before, the
//! client discarded what still came and the edge only half-closed the stream: the service
//! went on sending at full speed, through three processes, for nobody.

use crate::support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use support::{
    free_port, origin_cert, postern, proxy_command, require_all, service_token, temp_dir, Child,
    Edge, Tunnel,
};

/// How long the service may go on writing after the reader left.
const ENDS_WITHIN: Duration = Duration::from_secs(20);

/// A service that sends zeros to each connection until a write fails, then reports how much
/// it sent.
fn endless_source() -> (u16, mpsc::Receiver<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the service");
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let block = [0u8; 64 * 1024];
                let mut sent = 0u64;
                while let Ok(n) = conn.write(&block) {
                    sent += n as u64;
                }
                let _ = tx.send(sent);
            });
        }
    });
    (port, rx)
}

#[test]
fn a_reader_that_goes_away_ends_the_download_at_the_service() {
    require_all();
    let dir = temp_dir("abandoned-download");
    let edge = Edge::start(dir.path());
    let token = service_token(&edge.state, "abandon");
    let cert = dir.join("cert.pem");
    origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    let (service, ended) = endless_source();
    let _tunnel = Tunnel::start(
        dir.path(),
        "dl.localhost",
        &format!("tcp://127.0.0.1:{service}"),
        &cert,
        &edge,
    );
    let port = free_port();
    let mut cmd = postern(&dir.join("home"));
    cmd.args(["access", "tcp", "--hostname", "dl.localhost", "--url"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--edge")
        .arg(edge.edge_arg())
        .arg("--ca")
        .arg(edge.ca());
    proxy_command(&edge.addr, &edge.ca(), &token).apply_env(&mut cmd);
    let access = Child::spawn("access-tcp", cmd, dir.path());
    access
        .wait_for_stderr("listening on", Duration::from_secs(10))
        .expect("access tcp did not start listening");

    // Read a few MiB of the download, then go away with more on its way.
    let mut reader = TcpStream::connect(("127.0.0.1", port)).expect("connect to access tcp");
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0usize;
    while got < 4 * 1024 * 1024 {
        match reader.read(&mut buf) {
            Ok(0) => panic!("the download ended after {got} bytes"),
            Ok(n) => got += n,
            Err(e) => panic!("read after {got} bytes: {e}"),
        }
    }
    drop(reader);

    let sent = ended.recv_timeout(ENDS_WITHIN).unwrap_or_else(|_| {
        panic!(
            "the service was still sending {ENDS_WITHIN:?} after the reader left\naccess:\n{}\nedge:\n{}",
            access.stderr_text(),
            edge.stderr_text()
        )
    });
    assert!(
        sent >= got as u64,
        "the service sent {sent} bytes, the reader got {got}"
    );
    // The listener goes on serving.
    assert!(access.try_wait().is_none(), "access tcp exited");
}
