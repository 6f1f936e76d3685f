//! Real hosts for the tests: three network namespaces joined by veth pairs, as
//! docs/design.md §8 describes.
//!
//! ```text
//! laptop 10.77.1.2/24 ── edge0|laptop0 ── edge 10.77.1.1/24, 10.77.2.1/24 ── server0|edge0 ── server 10.77.2.2/24
//! ```
//!
//! - The edge does not forward (`net.ipv4.ip_forward=0` in its namespace): the laptop reaches
//!   the edge's address and nothing behind it.
//! - The server's nftables ruleset drops every inbound packet that is not part of a connection
//!   it opened, and lets out only its loopback and TCP to the edge's address port 443.
//! - Every host reaches the edge at [`EDGE_ADDR`] (the server through a default route via
//!   10.77.2.1), as a laptop and a server reach one public address.
//!
//! The namespaces are named `pst{pid}n{N}{l|e|s}`, so tests run in parallel, in one process
//! or several. The interfaces are created inside them (never in the initial namespace), so
//! their names and the addresses repeat from one set to the next without clashing. [`Hosts`]'s
//! `Drop` SIGKILLs every process in its namespaces and deletes them, whatever part of the set-up
//! succeeded; namespaces left by a test process that was killed are removed by the next
//! [`Hosts::create`]. The harness needs root and the `ip` and `nft` binaries; without them the tests
//! fail with a message saying so (they never skip).
//!
//! [`NetChain`] is the chain of `Chain` placed on these hosts: sshd and `postern tunnel` on the
//! server, `postern edge --dev` on the edge listening on [`EDGE_ADDR`] with a state directory
//! kept across [`NetEdge::restart`], and stock `ssh` with `postern access ssh` as its
//! ProxyCommand on the laptop, authenticated by a service token.

use std::io::{self, BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{
    home_of, is_root, origin_cert, postern, proxy_command, require, require_all, service_token,
    signal_group, spawn_group, tail, temp_dir, tunnel_command, Capture, Child, Proxy, ServiceToken,
    Sshd, Startups, TempDir, POLL, STARTUP,
};

/// The laptop's first address.
pub const LAPTOP_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
/// The edge's address on the laptop's link: the one address everyone connects to.
pub const EDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
/// The edge's address on the server's link (the server's gateway).
pub const EDGE_SERVER_SIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
/// The server's address.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
/// Where the edge listens: its address, port 443.
pub const EDGE_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(EDGE_IP, 443));
/// The prefix length of both links.
const PREFIX: u8 = 24;
/// sshd's port on the server (a namespace of its own: the usual port is free).
pub const SSHD_PORT: u16 = 22;
/// Where the edge serves `/ready` inside its namespace.
const EDGE_METRICS: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9090));
/// Where the tunnel serves `/ready` inside the server's namespace.
const TUNNEL_METRICS: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9091));
/// How long one probe (a TCP connect, a `/ready`) inside a namespace may take.
const PROBE: Duration = Duration::from_secs(3);

/// One of the three hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Laptop,
    Edge,
    Server,
}

/// Three network namespaces laptop — edge — server (see the module doc); removed on drop.
pub struct Hosts {
    pub laptop: String,
    pub edge: String,
    pub server: String,
    /// The namespaces created so far, for `Drop` after a partial set-up.
    created: Vec<String>,
}

impl Hosts {
    /// Creates the namespaces, links, addresses, routes, the edge's sysctl and the server's
    /// firewall. Panics with the failing command if any step fails (what was made is removed).
    pub fn create() -> Hosts {
        assert!(
            is_root(),
            "the network-namespace tests need root (ip netns add, nft): run them as root \
             (as scripts/test does in CI); they do not skip"
        );
        require("ip");
        require("nft");
        remove_leftovers();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("pst{}n{n}", std::process::id());
        let mut hosts = Hosts {
            laptop: format!("{base}l"),
            edge: format!("{base}e"),
            server: format!("{base}s"),
            created: Vec::new(),
        };
        for ns in [
            hosts.laptop.clone(),
            hosts.edge.clone(),
            hosts.server.clone(),
        ] {
            // A namespace of this name is left over from a dead process that had our pid.
            if Path::new("/run/netns").join(&ns).exists() {
                remove_namespace(&ns);
            }
            ip(&format!("netns add {ns}"));
            hosts.created.push(ns);
        }
        let (l, e, s) = (
            hosts.laptop.clone(),
            hosts.edge.clone(),
            hosts.server.clone(),
        );
        // The veth ends are made inside the namespaces: no name in the initial namespace.
        ip(&format!(
            "link add name edge0 netns {l} type veth peer name laptop0 netns {e}"
        ));
        ip(&format!(
            "link add name server0 netns {e} type veth peer name edge0 netns {s}"
        ));
        ip(&format!("-n {l} addr add {LAPTOP_IP}/{PREFIX} dev edge0"));
        ip(&format!("-n {e} addr add {EDGE_IP}/{PREFIX} dev laptop0"));
        ip(&format!(
            "-n {e} addr add {EDGE_SERVER_SIDE_IP}/{PREFIX} dev server0"
        ));
        ip(&format!("-n {s} addr add {SERVER_IP}/{PREFIX} dev edge0"));
        for (ns, dev) in [
            (&l, "lo"),
            (&l, "edge0"),
            (&e, "lo"),
            (&e, "laptop0"),
            (&e, "server0"),
            (&s, "lo"),
            (&s, "edge0"),
        ] {
            ip(&format!("-n {ns} link set {dev} up"));
        }
        // Default routes, as hosts have: the laptop's and the server's go to the edge, which
        // drops what is not for itself.
        ip(&format!("-n {l} route add default via {EDGE_IP}"));
        ip(&format!(
            "-n {s} route add default via {EDGE_SERVER_SIDE_IP}"
        ));
        // net.ipv4.ip_forward=0 in the edge's namespace (/proc/sys/net is the writer's
        // namespace's; no procps needed), read back to be sure.
        let mut forward = Command::new("sh");
        forward.args([
            "-c",
            "echo 0 > /proc/sys/net/ipv4/ip_forward && cat /proc/sys/net/ipv4/ip_forward",
        ]);
        let out = hosts
            .command(Host::Edge, forward)
            .stdin(Stdio::null())
            .output()
            .expect("run sh in the edge's namespace");
        assert!(
            out.status.success() && out.stdout == b"0\n",
            "could not set net.ipv4.ip_forward=0 in the edge's namespace ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        hosts.firewall_server();
        hosts
    }

    /// The server's nftables ruleset: inbound only replies (and loopback), outbound only
    /// loopback and TCP to the edge's port 443.
    fn firewall_server(&self) {
        let ruleset = format!(
            "table inet postern_test {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority 0; policy drop;\n\
             \t\tiif \"lo\" accept\n\
             \t\tct state established,related accept\n\
             \t}}\n\
             \tchain output {{\n\
             \t\ttype filter hook output priority 0; policy drop;\n\
             \t\toif \"lo\" accept\n\
             \t\tip daddr {edge} tcp dport {port} accept\n\
             \t}}\n\
             }}\n",
            edge = EDGE_IP,
            port = EDGE_ADDR.port(),
        );
        let mut cmd = self.command(Host::Server, Command::new(require("nft")));
        cmd.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn nft");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("nft stdin");
            stdin
                .write_all(ruleset.as_bytes())
                .expect("write the ruleset to nft");
        }
        let out = child.wait_with_output().expect("wait for nft");
        assert!(
            out.status.success(),
            "nft -f refused the server's ruleset ({}): {}\n(does the kernel have nf_tables and \
             conntrack?)\nruleset:\n{ruleset}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The namespace's name.
    pub fn ns(&self, host: Host) -> &str {
        match host {
            Host::Laptop => &self.laptop,
            Host::Edge => &self.edge,
            Host::Server => &self.server,
        }
    }

    /// `cmd` run inside `host`'s namespace: `ip netns exec NS PROGRAM ARGS` with `cmd`'s
    /// environment and working directory (set stdio on the result). `ip netns exec` execs the
    /// program, so the child's pid is the program's.
    pub fn command(&self, host: Host, cmd: Command) -> Command {
        in_namespace(self.ns(host), &cmd)
    }

    /// True when a TCP connection from `host` to `addr` is established within `timeout`.
    pub fn tcp_connects(&self, host: Host, addr: SocketAddr, timeout: Duration) -> bool {
        tcp_connects(self.ns(host), addr, timeout)
    }

    /// Removes the laptop's address (its link stays up): the laptop has left its network.
    pub fn remove_laptop_address(&self, addr: Ipv4Addr) {
        ip(&format!(
            "-n {} addr del {addr}/{PREFIX} dev edge0",
            self.laptop
        ));
    }

    /// Gives the laptop `addr` (in the edge's subnet) and its default route back: the laptop
    /// has joined a network again, with a new address.
    pub fn add_laptop_address(&self, addr: Ipv4Addr) {
        ip(&format!(
            "-n {} addr add {addr}/{PREFIX} dev edge0",
            self.laptop
        ));
        ip(&format!(
            "-n {} route replace default via {EDGE_IP}",
            self.laptop
        ));
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in self.created.drain(..) {
            remove_namespace(&ns);
        }
    }
}

/// Removes the namespaces of test processes that died without their `Drop` (a SIGKILLed test
/// binary): `pst{PID}n…` whose PID no longer runs.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("pst") else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty()
            && rest[pid.len()..].starts_with('n')
            && !Path::new("/proc").join(&pid).exists()
        {
            remove_namespace(&name);
        }
    }
}

/// SIGKILLs every process in `ns` (until none is left, briefly) and deletes it.
fn remove_namespace(ns: &str) {
    let start = Instant::now();
    loop {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if pids.is_empty() || start.elapsed() > Duration::from_secs(5) {
            break;
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        thread::sleep(POLL);
    }
    let status = Command::new("ip")
        .args(["netns", "del", ns])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    if let Ok(o) = status {
        if !o.status.success() {
            eprintln!(
                "ip netns del {ns}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }
}

/// `ip ARGS` (split at whitespace), which must succeed.
fn ip(line: &str) {
    run_checked(
        Command::new("ip").args(line.split_whitespace()),
        &format!("ip {line}"),
    );
}

fn run_checked(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// `ip netns exec NS` + `cmd` (program, arguments, environment changes, working directory).
fn in_namespace(ns: &str, cmd: &Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", ns])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// A TCP connect from inside `ns` (bash's `/dev/tcp`, bounded by `timeout`).
fn tcp_connects(ns: &str, addr: SocketAddr, timeout: Duration) -> bool {
    let mut cmd = Command::new("timeout");
    cmd.arg(format!("{}", timeout.as_secs_f64()))
        .args(["bash", "-c", "exec 3<>/dev/tcp/$0/$1"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    in_namespace(ns, &cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `GET /ready` on `addr` inside `ns`: `None` while nothing answers, else its JSON.
fn ready_in(ns: &str, addr: SocketAddr) -> Option<serde_json::Value> {
    let mut cmd = Command::new("timeout");
    cmd.arg(format!("{}", PROBE.as_secs_f64()))
        .args([
            "bash",
            "-c",
            "exec 3<>/dev/tcp/$0/$1 || exit 1; \
             printf 'GET /ready HTTP/1.1\\r\\nHost: %s:%s\\r\\nConnection: close\\r\\n\\r\\n' \
             \"$0\" \"$1\" >&3; cat <&3",
        ])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    let out = in_namespace(ns, &cmd)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some(
        serde_json::from_str(body).unwrap_or_else(|e| {
            panic!("/ready on {addr} in {ns} answered non-JSON ({e}): {body:?}")
        }),
    )
}

/// Polls `/ready` of `child` (serving it on `addr` in `ns`) until `holds`; `Err` with its
/// stderr when `deadline` passes or it exits first.
fn wait_ready_in(
    ns: &str,
    child: &Child,
    addr: SocketAddr,
    deadline: Duration,
    what: &str,
    holds: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, String> {
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Some(v) = ready_in(ns, addr) {
            if holds(&v) {
                return Ok(v);
            }
            last = Some(v);
        }
        let why = if let Some(status) = child.try_wait() {
            format!("exited ({status})")
        } else if start.elapsed() > deadline {
            format!("still running after {deadline:?}")
        } else {
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        let last = match last {
            Some(v) => format!("last /ready: {v}"),
            None => "/ready never answered".to_owned(),
        };
        return Err(format!(
            "{} {why} before {what} ({last} on {addr} in {ns}); stderr:\n{}",
            child.name(),
            tail(&child.stderr_text(), 4000)
        ));
    }
}

fn registered(n: u64) -> impl Fn(&serde_json::Value) -> bool {
    move |v| v["readyConnections"].as_u64().is_some_and(|r| r >= n)
}

// ---------------------------------------------------------------------------------------------
// The chain on the hosts
// ---------------------------------------------------------------------------------------------

/// `postern edge --dev --listen EDGE_ADDR --state DIR` in the edge's namespace.
pub struct NetEdge {
    pub addr: SocketAddr,
    pub state: PathBuf,
    ns: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl NetEdge {
    fn start(hosts: &Hosts, dir: &Path) -> NetEdge {
        let mut edge = NetEdge {
            addr: EDGE_ADDR,
            state: dir.join("edge-state"),
            ns: hosts.edge.clone(),
            dir: dir.to_path_buf(),
            child: None,
        };
        edge.launch(STARTUP);
        edge
    }

    /// Spawns the edge and waits until it listens on [`EDGE_ADDR`]; retries while the address
    /// is still held (a restart right after a kill) until `deadline`.
    fn launch(&mut self, deadline: Duration) {
        let start = Instant::now();
        loop {
            let mut cmd = postern(&home_of(&self.dir));
            cmd.args([
                "edge",
                "--dev",
                "--listen",
                &self.addr.to_string(),
                "--state",
            ])
            .arg(&self.state)
            .arg("--metrics")
            .arg(EDGE_METRICS.to_string());
            let child = Child::spawn("edge", in_namespace(&self.ns, &cmd), &self.dir);
            let listening = wait_ready_in(
                &self.ns,
                &child,
                EDGE_METRICS,
                STARTUP,
                "the edge listens",
                |v| v["listening"].is_string(),
            );
            match listening {
                Ok(v) => {
                    assert_eq!(
                        v["listening"].as_str(),
                        Some(self.addr.to_string().as_str()),
                        "the edge must listen on {}",
                        self.addr
                    );
                    self.child = Some(child);
                    return;
                }
                Err(e) if start.elapsed() < deadline => {
                    eprintln!("edge start failed, retrying: {e}");
                    drop(child);
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("edge did not start on {}: {e}", self.addr),
            }
        }
    }

    /// SIGKILLs the edge (a crash: no goodbye to tunnels or clients).
    pub fn kill(&mut self) {
        if let Some(old) = self.child.take() {
            old.kill();
        }
    }

    /// Starts the edge again on the same address with the same state directory (after
    /// [`NetEdge::kill`]).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "kill the edge first");
        self.launch(Duration::from_secs(10));
    }

    /// Waits until at least `n` tunnel connections are registered with the edge.
    pub fn wait_registered(&self, n: u64, deadline: Duration) {
        if let Err(e) = wait_ready_in(
            &self.ns,
            self.child(),
            EDGE_METRICS,
            deadline,
            &format!("{n} tunnel connection(s) registered"),
            registered(n),
        ) {
            panic!("no tunnel registered with the edge: {e}");
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.state.join("ca.pem")
    }

    pub fn child(&self) -> &Child {
        self.child.as_ref().expect("edge running")
    }

    /// Its stderr, every generation (a restarted edge writes a new log file).
    pub fn stderr_text(&self) -> String {
        self.child
            .as_ref()
            .map(Child::stderr_text)
            .unwrap_or_default()
    }
}

/// The chain on [`Hosts`] for one hostname under `localhost`. Fields drop in declaration
/// order: the namespaces first (every process in them SIGKILLed), the temp dir last.
pub struct NetChain {
    pub hosts: Hosts,
    pub edge: NetEdge,
    pub tunnel: Child,
    pub sshd: Sshd,
    pub token: ServiceToken,
    pub proxy: Proxy,
    pub hostname: String,
    pub dir: TempDir,
}

impl NetChain {
    /// Starts everything: namespaces, sshd (sshd's defaults, listening on all of the server's
    /// addresses on port 22, so that only the firewall keeps it unreachable), the edge, a
    /// service token, an origin cert, and a tunnel registered with the edge.
    pub fn start(name: &str, hostname: &str) -> NetChain {
        require_all();
        let hosts = Hosts::create();
        let dir = temp_dir(name);
        let server = hosts.server.clone();
        let sshd = Sshd::start_via(
            dir.path(),
            Startups::Default,
            "0.0.0.0",
            SSHD_PORT,
            &|cmd| in_namespace(&server, &cmd),
            &|addr| tcp_connects(&server, *addr, PROBE),
        );
        let edge = NetEdge::start(&hosts, dir.path());
        let token = service_token(&edge.state, "e2e");
        let cert = dir.join("cert.pem");
        origin_cert(&edge.state, "localhost", &cert, &edge.addr);
        let cmd = tunnel_command(
            dir.path(),
            hostname,
            &sshd.url(),
            &cert,
            &edge.addr.to_string(),
            &edge.ca(),
            &TUNNEL_METRICS,
        );
        let tunnel = Child::spawn("tunnel", in_namespace(&hosts.server, &cmd), dir.path());
        if let Err(e) = wait_ready_in(
            &hosts.server,
            &tunnel,
            TUNNEL_METRICS,
            STARTUP,
            "1 tunnel connection registered",
            registered(1),
        ) {
            panic!("tunnel {hostname} did not register: {e}");
        }
        let proxy = proxy_command(&edge.addr, &edge.ca(), &token);
        NetChain {
            hosts,
            edge,
            tunnel,
            sshd,
            token,
            proxy,
            hostname: hostname.to_string(),
            dir,
        }
    }

    /// Stock `ssh ... user@HOSTNAME` on the laptop through the chain; append the remote command.
    pub fn ssh(&self) -> Command {
        let mut cmd = self.sshd.ssh_command(&self.hostname, &self.proxy);
        cmd.env("HOME", home_of(self.dir.path()));
        self.hosts.command(Host::Laptop, cmd)
    }

    /// Stock `scp` on the laptop through the chain (same options as [`NetChain::ssh`]); append
    /// the sources and the destination (`HOSTNAME:PATH` names the server).
    pub fn scp(&self) -> Command {
        require("scp");
        let mut cmd = Command::new("scp");
        cmd.args(self.sshd.ssh_options())
            .arg("-o")
            .arg(format!("ProxyCommand={}", self.proxy.command))
            .arg("-o")
            .arg(format!("User={}", self.sshd.user));
        self.proxy.apply_env(&mut cmd);
        cmd.env("HOME", home_of(self.dir.path()));
        self.hosts.command(Host::Laptop, cmd)
    }

    /// The logs of the edge, the tunnel and sshd, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "edge:\n{}\ntunnel:\n{}\nsshd:\n{}",
            tail(&self.edge.stderr_text(), 3000),
            tail(&self.tunnel.stderr_text(), 3000),
            tail(&self.sshd.stderr_text(), 2000),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// A client process watched line by line
// ---------------------------------------------------------------------------------------------

/// A process (ssh, scp) in its own process group whose stdout lines are timestamped as they
/// arrive, so a test can inject a fault mid-run and measure the stall after it.
pub struct Watched {
    what: String,
    child: std::process::Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: Option<thread::JoinHandle<()>>,
    stderr: Option<Capture>,
}

/// How a [`Watched`] process ended.
pub struct Ended {
    /// `None` when it was still running at the deadline (then killed).
    pub status: Option<ExitStatus>,
    pub lines: Vec<(Instant, String)>,
    pub stderr: String,
}

impl Ended {
    /// The lines' text, in arrival order.
    pub fn texts(&self) -> Vec<&str> {
        self.lines.iter().map(|(_, l)| l.as_str()).collect()
    }

    /// Time from `fault` to the first line that arrived after it.
    pub fn stall_after(&self, fault: Instant) -> Option<Duration> {
        self.lines
            .iter()
            .find(|(t, _)| *t >= fault)
            .map(|(t, _)| t.duration_since(fault))
    }

    /// "exit status 0", "still running at the deadline (killed)", ...
    pub fn status_text(&self) -> String {
        match self.status {
            Some(s) => s.to_string(),
            None => "still running at the deadline (killed)".to_string(),
        }
    }
}

impl Watched {
    /// Spawns `cmd` (stdin null) in its own process group.
    pub fn spawn(cmd: &mut Command, what: &str) -> Watched {
        let mut child = spawn_group(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            what,
        );
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = Capture::start(child.stderr.take().expect("stderr piped"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) => sink
                        .lock()
                        .unwrap()
                        .push((Instant::now(), line.trim_end_matches('\n').to_string())),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        Watched {
            what: what.to_string(),
            child,
            lines,
            reader: Some(reader),
            stderr: Some(stderr),
        }
    }

    /// How many lines have arrived.
    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until `n` lines have arrived; `Err` if the process exits first or `deadline`
    /// passes.
    pub fn wait_lines(&mut self, n: usize, deadline: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if self.line_count() >= n {
                return Ok(());
            }
            if !self.running() {
                return Err(format!(
                    "{} exited before printing {n} lines ({} arrived)",
                    self.what,
                    self.line_count()
                ));
            }
            if start.elapsed() > deadline {
                return Err(format!(
                    "{} printed {} of {n} lines within {deadline:?}",
                    self.what,
                    self.line_count()
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for the process to exit by `deadline` (else kills its process group); returns
    /// how it ended, with every line and its stderr.
    pub fn finish(mut self, deadline: Duration) -> Ended {
        let start = Instant::now();
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break Some(s);
            }
            if start.elapsed() > deadline {
                signal_group(self.child.id(), "KILL");
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            thread::sleep(POLL);
        };
        // A ProxyCommand in the group may hold stdout a moment longer.
        let linger = Instant::now();
        while self.reader.as_ref().is_some_and(|r| !r.is_finished())
            && linger.elapsed() < Duration::from_secs(5)
        {
            thread::sleep(POLL);
        }
        if self.reader.as_ref().is_some_and(|r| !r.is_finished()) {
            signal_group(self.child.id(), "KILL");
        }
        let stderr = self
            .stderr
            .take()
            .map(|c| c.finish(Duration::from_secs(2)))
            .unwrap_or_default();
        Ended {
            status,
            lines: std::mem::take(&mut *self.lines.lock().unwrap()),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal_group(self.child.id(), "KILL");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
