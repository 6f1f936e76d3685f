//! ssh through the whole chain (access ssh -> edge -> tunnel -> sshd) runs a remote command:
//! its stdout arrives intact and its exit status comes back to the client.

use crate::support;

use support::Chain;

#[test]
fn ssh_through_the_chain_runs_a_command_and_returns_its_exit_status() {
    let chain = Chain::start("ssh-runs-command", "ssh.localhost");
    let out = chain.ssh_run("echo hello; exit 3");
    assert_eq!(
        out.status.code(),
        Some(3),
        "remote exit status must be 3; stdout {:?}\nstderr:\n{}\nedge:\n{}\ntunnel:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        chain.edge.stderr_text(),
        chain.tunnel.child().stderr_text()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    // The secret travels in the environment only: it must never be echoed on the client side.
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(&chain.token.secret),
        "the service-token secret leaked to stderr"
    );
    assert!(
        !chain.edge.stderr_text().contains(&chain.token.secret),
        "the edge logged the service-token secret"
    );
}
