//! The origin resolves names off its event loop: while one ingress service's name waits for a
//! DNS server that never answers, every other service keeps being served, and the waiting
//! stream fails on its own after a bounded time.
//!
//! The tunnel runs in a private mount namespace (`unshare -m`, propagation private, so the
//! host is untouched) where `/etc/resolv.conf` names a DNS server on a loopback address that
//! receives queries and never answers: what a resolver behind a dropped route looks like.

use crate::support;

use std::fs;
use std::net::UdpSocket;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::ready::{metrics_listen, wait_registered_connections};
use support::{
    postern, postern_via, proxy_command, require, require_all, run_with_deadline, service_token,
    temp_dir, Child, Edge, Sshd,
};

/// `postern tunnel ARGS --origincert CERT --edge ADDR --ca CA` in `home`; must succeed.
fn tunnel_cli(home: &Path, cert: &Path, edge: &Edge, args: &[&str]) -> String {
    let mut cmd = postern(home);
    cmd.arg("tunnel")
        .args(args)
        .arg("--origincert")
        .arg(cert)
        .args(["--edge", &edge.edge_arg(), "--ca"])
        .arg(edge.ca())
        .stdin(Stdio::null());
    let out = run_with_deadline(&mut cmd, Duration::from_secs(30), "postern tunnel");
    assert!(
        out.status.success(),
        "tunnel {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_service_whose_name_never_resolves_holds_up_no_other_service() {
    require_all();
    require("unshare");
    require("mount");
    let dir = temp_dir("tunnel-dns");
    let sshd = Sshd::start(dir.path());
    let edge = Edge::start(dir.path());
    let token = service_token(&edge.state, "e2e");
    let proxy = proxy_command(&edge.addr, &edge.ca(), &token);
    let home = dir.join("home");
    let postern_dir = home.join(".postern");
    fs::create_dir_all(&postern_dir).unwrap();
    let cert = postern_dir.join("cert.pem");
    support::origin_cert(&edge.state, "localhost", &cert, &edge.addr);

    let out = tunnel_cli(&home, &cert, &edge, &["create", "dns"]);
    let id = out
        .split("Created tunnel dns with id ")
        .nth(1)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no id in: {out}"));
    for host in ["fast.localhost", "slow.localhost"] {
        tunnel_cli(&home, &cert, &edge, &["route", "dns", "dns", host]);
    }

    // A DNS server that takes queries and never answers.
    let blackhole = UdpSocket::bind("127.83.83.83:53").expect("bind 127.83.83.83:53 (root)");
    let resolv = dir.join("resolv.conf");
    fs::write(
        &resolv,
        "nameserver 127.83.83.83\noptions timeout:30 attempts:1\n",
    )
    .unwrap();

    let config = dir.join("tunnel.json");
    let port = sshd.url().rsplit(':').next().unwrap().to_owned();
    let cfg = serde_json::json!({
        "tunnel": "dns",
        "credentials-file": postern_dir.join(format!("{id}.json")),
        "edge": edge.edge_arg(),
        "ca": edge.ca(),
        "ha-connections": 1,
        "ingress": [
            { "hostname": "fast.localhost", "service": sshd.url() },
            { "hostname": "slow.localhost",
              "service": format!("ssh://sshd.postern-test.invalid:{port}") },
            { "service": "http_status:404" }
        ]
    });
    fs::write(&config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let mut run = postern_via(
        &home,
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
            &resolv.display().to_string(),
        ],
    );
    let metrics = metrics_listen();
    run.env("POSTERN_METRICS", metrics.to_string())
        .args(["tunnel", "--config"])
        .arg(&config)
        .arg("run");
    let origin = Child::spawn("dns-origin", run, dir.path());
    wait_registered_connections(&origin, &metrics, 1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the tunnel did not register: {e}"));

    // A session for the service whose name cannot be resolved: its stream waits for DNS.
    let mut slow = sshd.ssh_command("slow.localhost", &proxy);
    slow.arg("echo unreachable").stdin(Stdio::null());
    let slow = std::thread::spawn(move || {
        run_with_deadline(&mut slow, Duration::from_secs(60), "ssh to slow.localhost")
    });
    let mut query = [0u8; 512];
    blackhole
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    blackhole
        .recv_from(&mut query)
        .expect("the tunnel asks the DNS server for the slow service's name");

    // Meanwhile another service is served, start to end.
    let mut fast = sshd.ssh_command("fast.localhost", &proxy);
    fast.arg("echo served-while-dns-waits").stdin(Stdio::null());
    let out = run_with_deadline(&mut fast, Duration::from_secs(10), "ssh to fast.localhost");
    assert!(
        out.status.success(),
        "fast.localhost waited for slow.localhost's DNS: {out:?}\norigin:\n{}",
        origin.stderr_text()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "served-while-dns-waits"
    );

    // The waiting stream ends by itself, with a reason, long before the DNS server's 30 s.
    let out = slow.join().unwrap();
    assert!(!out.status.success(), "slow.localhost cannot be served");
    origin
        .wait_for_stderr("resolving the service timed out", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("no timeout for the unresolved stream: {e}"));
}
