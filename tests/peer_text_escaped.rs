//! Text a peer chose never reaches a terminal or a log raw: an origin's reset reason (shown by
//! `postern access ssh` on the user's terminal) and a GOAWAY reason (logged by the edge) with
//! an escape sequence that would clear the screen and a newline that would forge a log line.

use crate::support;

use std::time::Duration;

use postern::proto::mux::{Frame, ResetCode};
use support::raw::RawTunnel;
use support::{access_until_exit, origin_cert, postern, service_token, temp_dir, Edge};

const HOST: &str = "ssh.localhost";
const EVIL: &str = "\u{1b}[2J\nINFO forged: root logged in\u{7}";

#[test]
fn an_origins_reset_reason_reaches_the_users_terminal_escaped() {
    let dir = temp_dir("peer-text");
    let edge = Edge::start(dir.path());
    let token = service_token(&edge.state, "e2e");
    let cert = dir.join("cert.pem");
    origin_cert(&edge.state, "localhost", &cert, &edge.addr);
    let mut origin = RawTunnel::register(edge.addr, &edge.ca(), &cert, HOST);

    // The origin answers the stream the client opens with a reset carrying EVIL, then drains
    // with EVIL as its GOAWAY reason.
    let origin_side = std::thread::spawn(move || {
        let stream = origin
            .wait_for(Duration::from_secs(20), |f| match f {
                Frame::Open { stream, .. } => Some(*stream),
                _ => None,
            })
            .expect("an OPEN from the edge");
        origin.send(&Frame::Rst {
            stream,
            code: ResetCode::ConnectFailed,
            reason: EVIL,
        });
        origin.send(&Frame::GoAway {
            last_stream: stream,
            reason: EVIL,
        });
        origin
    });

    let mut cmd = postern(&dir.join("home"));
    cmd.args([
        "access",
        "ssh",
        "--hostname",
        HOST,
        "--edge",
        &edge.edge_arg(),
        "--ca",
    ])
    .arg(edge.ca())
    .env("POSTERN_SERVICE_TOKEN_ID", &token.id)
    .env("POSTERN_SERVICE_TOKEN_SECRET", &token.secret);
    let (status, stderr) = access_until_exit(cmd, Duration::from_secs(30));
    let _origin = origin_side.join().expect("origin thread");
    assert!(
        !status.success(),
        "a reset session fails; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("\\u{1b}[2J\\u{a}INFO forged: root logged in\\u{7}"),
        "the client shows the reason escaped; stderr:\n{stderr:?}"
    );
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{7}'),
        "no raw control character reaches the terminal: {stderr:?}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");

    let log = edge
        .child()
        .wait_for_stderr("is draining: ", Duration::from_secs(10))
        .expect("the edge logs the GOAWAY");
    assert!(
        log.contains("is draining: \\u{1b}[2J\\u{a}INFO forged"),
        "the edge logs the reason escaped:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}') && !log.contains("\nINFO forged"),
        "the edge's log holds no raw escape and no forged line:\n{log:?}"
    );
}
