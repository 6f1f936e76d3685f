//! The `postern` command line: parse (lexopt), then call into the library.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use lexopt::prelude::*;

use postern::access::{self, AccessError, AccessOptions, Credentials};
use postern::cloudflared;
use postern::edge::config::ConfigError;
use postern::edge::{self, Edge};
use postern::limits::RESUME_WINDOW;
use postern::logging::{self, LogFlags};
use postern::pki::{Authority, CredentialError, OriginCredential};
use postern::secret::Secret;
use postern::service::ServiceError;
use postern::store::{
    EtcdAccess, EtcdConfig, EtcdStore, EtcdUrl, FileStore, Revocation, ServiceTokens, StateDir,
    Store, StoreError,
};
use postern::tunnel::admin::AdminClient;
use postern::tunnel::config::{TunnelConfig, TunnelCredentials};
use postern::tunnel::{self, Exit, Origin, Registration, TunnelOptions};

const USAGE: &str = "\
postern: zero-trust SSH access — edge, origin tunnel and client in one binary

USAGE:
    postern edge --dev [--listen ADDR] [--state DIR]      run the edge on *.localhost
    postern edge --config FILE                            run the edge from a JSON config
    postern edge service-token create NAME [--state DIR]  mint a service token
    postern edge service-token revoke NAME [--state DIR]  revoke it: edges refuse it within 2 s
    postern edge origin-cert create --zone ZONE --out FILE [--state DIR] [--edge HOST:PORT]
    postern edge origin-cert revoke SERIAL|FILE [--state DIR]  revoke an origin certificate
    postern edge ssh-ca [--state DIR]                     print the SSH CA (TrustedUserCAKeys)
    postern tunnel login --edge https://login.site.com    origin certificate by browser sign-in
                                                          (`postern login` too, as cloudflared's)
    postern tunnel sshd-setup --ca-from https://H [--write]   make sshd trust the edge's SSH CA
    postern tunnel --hostname H --url ssh://localhost:22 [OPTIONS]
    postern tunnel create NAME | route dns NAME HOST | run [NAME] | list | info NAME | delete NAME
    postern access login H                                sign in through the browser
    postern access token --app H                          print the cached app token
    postern access logout [H]                             forget cached tokens
    postern access ssh --hostname H [OPTIONS]             ProxyCommand for ssh
    postern access tcp --hostname H --url 127.0.0.1:2222  local listener
    postern access ssh-config [--hostname H]              print an ssh config block
    postern service install tunnel --hostname H --url URL [OPTIONS]   run the tunnel under systemd
    postern service install edge --config FILE            run the edge under systemd
    postern service uninstall [tunnel|edge] [--name NAME] stop and remove the unit

Run `postern COMMAND --help` for the options of each command.

LOGGING (before the command, or among the options of edge, tunnel and access):
    --log-format json|human   JSON lines (time, level, target, message) or plain text
                              (default human; env POSTERN_LOG_FORMAT)
    --loglevel LEVEL          debug, info, warn, error or fatal (overrides RUST_LOG)
Logs go to stderr; RUST_LOG=debug (env_logger's syntax) gives more.
";

type Res = Result<ExitCode, CliError>;

/// Why a command failed. `main` prints `postern: ` and the message on stderr and exits 1,
/// whatever the kind; each kind's message says what to do.
#[derive(Debug)]
#[non_exhaustive]
enum CliError {
    /// The command line is wrong: an unknown command or flag, a missing or invalid value.
    /// The message says which, often followed by the command's usage.
    Usage(String),
    /// There is no usable HOME for a default path; the message names the flag or variable
    /// that gives the path instead.
    Home(String),
    /// `postern access …`, or the browser login of `tunnel login`, failed.
    Access(AccessError),
    /// The edge's configuration (its file, or the dev defaults) is unusable.
    EdgeConfig(ConfigError),
    /// The edge could not start, or stopped with an error.
    Edge(io::Error),
    /// The tunnel could not start, or stopped with an error.
    Tunnel(io::Error),
    /// The edge refused the tunnel's registration: retrying cannot help.
    Refused(String),
    /// The state directory or an origin credential could not be read or written (the
    /// message names the file).
    Io(io::Error),
    /// A file this command writes could not be written.
    File { path: PathBuf, error: io::Error },
    /// A PEM file (the dev CA shipped with an origin credential) is unusable.
    Credential(CredentialError),
    /// `service install` or `service uninstall` failed.
    Service {
        verb: &'static str,
        error: ServiceError,
    },
    /// A step whose library reports a whole sentence (a named tunnel's config or
    /// credentials file, the edge's tunnel admin API, a missing token).
    Failed(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Home(m) | CliError::Failed(m) => f.write_str(m),
            CliError::Access(e) => write!(f, "{e}"),
            CliError::EdgeConfig(e) => write!(f, "{e}"),
            CliError::Edge(e) | CliError::Tunnel(e) | CliError::Io(e) => write!(f, "{e}"),
            CliError::Refused(why) => write!(f, "tunnel refused by the edge: {why}"),
            CliError::File { path, error } => write!(f, "{}: {error}", path.display()),
            CliError::Credential(e) => write!(f, "{e}"),
            CliError::Service { verb, error } => write!(f, "service {verb}: {error}"),
        }
    }
}

/// A command-line mistake; the message says which.
fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

impl From<lexopt::Error> for CliError {
    fn from(e: lexopt::Error) -> Self {
        CliError::Usage(e.to_string())
    }
}

impl From<AccessError> for CliError {
    fn from(e: AccessError) -> Self {
        CliError::Access(e)
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::EdgeConfig(e)
    }
}

fn main() -> ExitCode {
    // Returns only when this process goes on as it is (io/reexec.rs: glibc's memcpy on AMD).
    let retuned = postern::io::reexec::tune_memcpy();
    postern::io::sys::keep_freed_heap();
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut flags = match log_flags(&mut args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::FAILURE;
        }
    };
    config_log_flags(&args, &mut flags);
    let level = if matches!(args.first().and_then(|a| a.to_str()), Some("access")) {
        // The client speaks only when something is wrong: ssh shows its stderr.
        "warn"
    } else {
        "info"
    };
    if let Err(e) = logging::init(&flags, level) {
        eprintln!("postern: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = retuned {
        log::debug!(
            "going on with glibc's default memcpy: cannot start again with {}: {e}",
            postern::io::reexec::TUNABLE
        );
    }
    let cmd = if args.is_empty() {
        String::new()
    } else {
        args.remove(0).to_string_lossy().into_owned()
    };
    let result = match cmd.as_str() {
        "edge" => cmd_edge(args),
        "tunnel" => cmd_tunnel(args),
        "access" => cmd_access(args),
        "service" => cmd_service(args),
        // cloudflared's top-level `login` is its `tunnel login`.
        "login" => cmd_tunnel_login(args),
        "--version" | "-V" | "version" => {
            println!("postern {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        "" | "--help" | "-h" | "help" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(usage(format!("unknown command {other:?}\n\n{USAGE}"))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postern: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--log-format`, `--loglevel` and `--logfile`: before the command (global), and for
/// `edge`, `tunnel` and `access` anywhere after it too (there they win). All are taken out
/// of `args`. For `tunnel`, `TUNNEL_LOGLEVEL` and `TUNNEL_LOGFILE` stand for the flags.
///
/// cloudflared's `tunnel` flags may come before the command too (`cloudflared --pidfile F
/// --config C tunnel run`; its own unit runs `cloudflared --no-autoupdate tunnel run`): those
/// are moved after `tunnel`, and are an error before any other command.
fn log_flags(args: &mut Vec<OsString>) -> Result<LogFlags, String> {
    // The leading run of flags before the command, with their separate values.
    let mut end = 0;
    while let Some(s) = args.get(end).and_then(|a| a.to_str()) {
        let name = s.split_once('=').map_or(s, |(name, _)| name);
        let ignored = name.strip_prefix("--").and_then(cloudflared::ignored_flag);
        let takes_value = matches!(name, "--log-format" | "--loglevel" | "--logfile")
            || TUNNEL_VALUE_FLAGS.contains(&name)
            || ignored.is_some_and(|i| i.takes_value);
        match name {
            _ if takes_value && s.contains('=') => end += 1,
            _ if takes_value => end += 2,
            _ if ignored.is_some() => end += 1,
            _ => break,
        }
    }
    let end = end.min(args.len());
    let mut global: Vec<OsString> = args.drain(..end).collect();
    // cloudflared's global flags with no meaning here: noticed and dropped.
    let mut i = 0;
    while i < global.len() {
        let name = global[i].to_str().unwrap_or_default();
        let name = name.split_once('=').map_or(name, |(n, _)| n).to_owned();
        match name.strip_prefix("--").and_then(cloudflared::ignored_flag) {
            Some(ignored) => {
                eprintln!("postern: {}", ignored.notice());
                let alone =
                    !ignored.takes_value || global[i].to_str().is_some_and(|a| a.contains('='));
                global.drain(i..(i + if alone { 1 } else { 2 }).min(global.len()));
            }
            None => i += 1,
        }
    }
    let global_log = LogFlags::take(&mut global)?;
    let command = args.first().and_then(|a| a.to_str()).map(str::to_owned);
    if let Some(flag) = global.first() {
        if command.as_deref() != Some("tunnel") {
            return Err(format!(
                "{} before the command is a `tunnel` flag: put it after the command",
                flag.to_string_lossy()
            ));
        }
        // After `tunnel`, where its parser finds them (before its subcommand, as cloudflared
        // users write `tunnel --config F run`).
        let at = 1.min(args.len());
        args.splice(at..at, global);
    }
    let mut per_command = match command.as_deref() {
        Some("edge" | "tunnel" | "access") => LogFlags::take(args)?,
        _ => LogFlags::default(),
    };
    if command.as_deref() == Some("tunnel") && global_log.level.is_none() {
        if let Some(v) = env_var("TUNNEL_LOGLEVEL").filter(|_| per_command.level.is_none()) {
            per_command.level =
                Some(logging::loglevel_filter(&v).map_err(|e| format!("TUNNEL_LOGLEVEL: {e}"))?);
        }
    }
    if command.as_deref() == Some("tunnel") && global_log.file.is_none() {
        if let Some(v) = env_var("TUNNEL_LOGFILE").filter(|_| per_command.file.is_none()) {
            per_command.file = Some(PathBuf::from(v));
        }
    }
    Ok(per_command.or(global_log))
}

fn parser(args: Vec<OsString>) -> lexopt::Parser {
    lexopt::Parser::from_args(args)
}

fn string(v: OsString, flag: &str) -> Result<String, CliError> {
    v.into_string()
        .map_err(|_| usage(format!("{flag}: not valid UTF-8")))
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `--state DIR` if given, else `~/.postern/edge` (an error without HOME).
fn state_or_default(state: Option<PathBuf>) -> Result<PathBuf, CliError> {
    state.map_or_else(|| StateDir::default_path().map_err(CliError::Home), Ok)
}

/// Where the shared records and the keys live, from `--state DIR|etcd://…` and `--keys DIR`.
struct StateArgs {
    /// The local directory: the whole state, or (with etcd) the signing keys and CAs.
    /// With etcd it is opened only by the commands that need a key.
    dir: PathBuf,
    /// `--state etcd://…` (or `etcds://…`): the records an edge pool shares.
    etcd: Option<EtcdConfig>,
}

/// `--etcd-ca`, `--etcd-cert`, `--etcd-key`, `--etcd-user`, `--etcd-password-file`: how to
/// reach an etcd state (ETCDCTL_* variables fill in the rest).
fn etcd_flag(name: &str, value: OsString, access: &mut EtcdAccess) -> Result<(), CliError> {
    match name {
        "etcd-ca" => access.ca = Some(value.into()),
        "etcd-cert" => access.cert = Some(value.into()),
        "etcd-key" => access.key = Some(value.into()),
        "etcd-user" => access.user = Some(string(value, "--etcd-user")?),
        "etcd-password-file" => access.password_file = Some(value.into()),
        _ => {
            return Err(usage(format!(
                "unknown flag --{name} (the etcd flags: --etcd-ca, --etcd-cert, --etcd-key, \
                 --etcd-user, --etcd-password-file)"
            )))
        }
    }
    Ok(())
}

/// `--state` is a directory (default `~/.postern/edge`) or `etcd[s]://HOST:PORT[,…]/PREFIX`;
/// with etcd, `--keys DIR` (default `~/.postern/edge`) holds the keys and CAs, and `etcd`
/// says how to reach it.
fn state_args(
    state: Option<OsString>,
    keys: Option<PathBuf>,
    etcd: EtcdAccess,
) -> Result<StateArgs, CliError> {
    match state.as_ref().and_then(|s| s.to_str()) {
        Some(s) if EtcdUrl::is_etcd(s) => Ok(StateArgs {
            // No HOME is no error until a command needs the key directory.
            dir: state_or_default(keys).unwrap_or_default(),
            etcd: Some(EtcdConfig::new(EtcdUrl::parse(s).map_err(usage)?, &etcd).map_err(usage)?),
        }),
        _ if keys.is_some() => Err(usage(
            "--keys DIR goes with --state etcd://…; with a state directory the keys are in it",
        )),
        _ if !etcd.is_empty() => Err(usage(
            "the --etcd-* flags go with --state etcds://… (or etcd://…)",
        )),
        _ => Ok(StateArgs {
            dir: state_or_default(state.map(PathBuf::from))?,
            etcd: None,
        }),
    }
}

impl StateArgs {
    /// The store that holds the records: etcd, or the state directory.
    fn store(&self) -> Result<Box<dyn Store>, CliError> {
        match &self.etcd {
            Some(url) => Ok(Box::new(EtcdStore::connect(url).map_err(store_failed)?)),
            None => {
                let dir = StateDir::open(&self.dir).map_err(CliError::Io)?;
                Ok(Box::new(FileStore::open(&dir).map_err(CliError::Io)?))
            }
        }
    }

    /// The local directory (keys, CAs; without etcd the records too).
    fn keys(&self) -> Result<StateDir, CliError> {
        if self.dir.as_os_str().is_empty() {
            return Err(CliError::Home(
                "HOME is not set: pass --keys DIR for the key directory".into(),
            ));
        }
        StateDir::open(&self.dir).map_err(CliError::Io)
    }

    /// Where the records are, for messages.
    fn shown(&self) -> String {
        match &self.etcd {
            Some(url) => url.to_string(),
            None => self.dir.display().to_string(),
        }
    }
}

/// `~/.postern`; without HOME an error that names `instead` (the flag that gives the path).
fn home_postern(instead: &str) -> Result<PathBuf, CliError> {
    postern::io::postern_dir(instead).map_err(CliError::Home)
}

// ------------------------------------------------------------------------------- edge

const EDGE_HELP: &str = "\
postern edge: the public side (TLS, Access policies, tunnels, routing)

USAGE:
    postern edge --dev [--listen ADDR] [--state DIR | --state etcd[s]://HOST:PORT[,…]/PREFIX [--keys DIR] [--etcd-*]]
    postern edge --config FILE
    postern edge service-token create NAME [--state DIR|etcd://…]
    postern edge service-token revoke NAME [--state DIR|etcd://…]
    postern edge service-token rotate NAME [--overlap D] | create NAME --expires D
    postern edge ssh-ca [--state DIR] [--rotate]   the SSH CA line for sshd's TrustedUserCAKeys
    postern edge origin-cert create --zone ZONE --out FILE [--state DIR | --keys DIR] [--edge HOST:PORT]
    postern edge origin-cert revoke SERIAL|FILE [--state DIR|etcd://…]
    postern edge sessions list [--output json] [--origincert FILE] [--edge HOST:PORT] [--ca FILE]
    postern edge sessions kill ID | --email E | --token NAME | --hostname H [--origincert …]
                     live sessions at one edge, over its admin API, as a zone's origin
                     certificate sees them (the zone's hostnames only); kill ends them with
                     a message to the client and a session_end audit line

OPTIONS:
    --dev            embedded default: local CA, serves *.localhost, admits this edge's service tokens
    --listen ADDR    listen address (dev default 127.0.0.1:8443)
    --state DIR      state directory (default ~/.postern/edge)
    --state etcd://HOST:PORT[,HOST:PORT…]/PREFIX
                     an edge pool's shared records in etcd (tokens, hostnames, tunnels,
                     revocations, logins); the keys and CAs stay in --keys DIR
    --keys DIR       with an etcd state: the local key directory (default ~/.postern/edge);
                     copy one to every edge of the pool (docs/scaling.md)
    --state etcds://HOST:PORT[,…]/PREFIX
                     the same over TLS, trusting only --etcd-ca (recommended)
    --etcd-ca FILE   the CA that signed etcd's certificates (env ETCDCTL_CACERT)
    --etcd-cert FILE, --etcd-key FILE
                     a client certificate and its key (mode 0600) for etcd's --client-cert-auth
                     (env ETCDCTL_CERT, ETCDCTL_KEY)
    --etcd-user NAME, --etcd-password-file FILE
                     etcd user and a file holding its password, mode 0600 (etcd's auth enable;
                     env ETCDCTL_USER, ETCDCTL_PASSWORD). The admin commands take the same flags.
    --config FILE    JSON config for real deployments (see README); SIGHUP re-reads it
    --metrics ADDR   serve Prometheus /metrics and /ready on ADDR, e.g. 127.0.0.1:2000
                     (env POSTERN_METRICS; or \"metrics\" in the config file)
    --workers N      event loops (threads) serving tunnels and their sessions, 1 to 64
                     (default: one per core; or \"workers\" in the config file)
    --log-format F   json or human (env POSTERN_LOG_FORMAT)
    --loglevel L     debug, info, warn, error or fatal (overrides RUST_LOG)
";

fn cmd_edge(args: Vec<OsString>) -> Res {
    if let Some(first) = args.first().and_then(|a| a.to_str()) {
        match first {
            "service-token" => return cmd_service_token(args[1..].to_vec()),
            "origin-cert" => return cmd_origin_cert(args[1..].to_vec()),
            "sessions" => return cmd_sessions(args[1..].to_vec()),
            "ssh-ca" => return cmd_ssh_ca(args[1..].to_vec()),
            _ => {}
        }
    }
    let mut p = parser(args);
    let (mut dev, mut listen, mut state, mut config) = (false, None, None, None);
    let (mut metrics, mut keys, mut etcd) = (None, None, EtcdAccess::default());
    let mut workers = None;
    while let Some(arg) = p.next()? {
        match arg {
            Long(f) if f.starts_with("etcd-") => {
                let f = f.to_owned();
                etcd_flag(&f, p.value()?, &mut etcd)?
            }
            Long("dev") => dev = true,
            Long("workers") => {
                let n = string(p.value()?, "--workers")?;
                let n: usize = n
                    .parse()
                    .map_err(|_| usage(format!("--workers {n}: give a number of event loops")))?;
                workers = Some(edge::config::check_workers(n).map_err(usage)?);
            }
            Long("metrics") => metrics = Some(string(p.value()?, "--metrics")?),
            Long("listen") => listen = Some(string(p.value()?, "--listen")?),
            Long("state") => state = Some(p.value()?),
            Long("keys") => keys = Some(PathBuf::from(p.value()?)),
            Long("config") => config = Some(PathBuf::from(p.value()?)),
            Long("help") | Short('h') => {
                print!("{EDGE_HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            other => {
                return Err(usage(format!(
                    "edge: {}\n\n{EDGE_HELP}",
                    other.unexpected()
                )))
            }
        }
    }
    let mut settings = match (dev, config) {
        (true, Some(_)) => return Err(usage("edge: --dev and --config exclude each other")),
        (false, None) => {
            return Err(usage(format!(
                "edge: pass --dev (try it locally) or --config FILE (a deployment)\n\n{EDGE_HELP}"
            )))
        }
        (true, None) => {
            let listen: SocketAddr = listen
                .as_deref()
                .unwrap_or("127.0.0.1:8443")
                .parse()
                .map_err(|e| usage(format!("--listen: {e}")))?;
            let state = state_args(state, keys, etcd)?;
            state.keys()?;
            let mut s = edge::config::dev(listen, &state.dir)?;
            s.etcd = state.etcd.clone();
            let exe = current_exe();
            let state_shown = s.state.path().display().to_string();
            let records_shown = match &state.etcd {
                Some(url) => format!("{url} --keys {state_shown}"),
                None => state_shown.clone(),
            };
            s.on_ready = Box::new(move |addr| {
                let banner = format!(
                    "\npostern edge (dev) is serving *.localhost on {addr}\n\
                     CA for clients and origins: {state_shown}/ca.pem\n\n\
                     Next steps:\n\
                     1. a service token:   {exe} edge service-token create laptop --state {records_shown}\n\
                     2. an origin cert:    {exe} edge origin-cert create --zone localhost --out {state_shown}/cert.pem --state {state_shown} --edge {addr}\n\
                     3. on the server:     {exe} tunnel --hostname ssh.localhost --url ssh://localhost:22 --origincert {state_shown}/cert.pem\n\
                     4. on the laptop:     POSTERN_SERVICE_TOKEN_ID=… POSTERN_SERVICE_TOKEN_SECRET=… \\\n\
                     \x20                     ssh -o ProxyCommand='{exe} access ssh --hostname %h --edge {addr} --ca {state_shown}/ca.pem' ssh.localhost\n"
                );
                // With JSON logs every stderr line must parse: the banner becomes one record.
                if logging::json() {
                    log::info!("{}", banner.trim());
                } else {
                    eprintln!("{banner}");
                }
            });
            s
        }
        (false, Some(path)) => {
            if listen.is_some() || state.is_some() || keys.is_some() || !etcd.is_empty() {
                return Err(usage(
                    "edge: with --config, set listen, state_dir (and state, etcd_*) in the file",
                ));
            }
            edge::config::from_file(&path)?
        }
    };
    if let Some(n) = workers {
        settings.workers = n;
    }
    if settings.applications.is_empty() {
        log::warn!("no applications configured: every request will be refused");
    }
    settings.applications.shrink_to_fit();
    let metrics = metrics
        .or_else(|| env_var("POSTERN_METRICS"))
        .or_else(|| settings.metrics.clone());
    // One descriptor per connection: use all the hard limit allows (systemd starts us at 1024).
    postern::io::sys::raise_open_files_logged("edge");
    let edge = Edge::new(settings).map_err(CliError::Edge)?;
    if let Some(addr) = metrics {
        let bound = edge.serve_metrics(&addr).map_err(CliError::Edge)?;
        log::info!("metrics on {bound}");
    }
    edge.run().map_err(CliError::Edge)?;
    Ok(ExitCode::SUCCESS)
}

/// `edge sessions list|kill`: the admin API's sessions, reached as `tunnel list` reaches it
/// (the zone's origin certificate, its edge or `--edge`).
fn cmd_sessions(mut args: Vec<OsString>) -> Res {
    const FORM: &str =
        "usage: postern edge sessions list [--output json] | kill ID | kill --email E | \
                        kill --token NAME | kill --hostname H";
    // `--email` and `--token` are kill's own; the rest are the tunnel admin commands' flags.
    let mut own: Vec<(&str, String)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].to_string_lossy().into_owned();
        let Some((flag, inline)) = ["--email", "--token"].iter().find_map(|f| {
            let rest = arg.strip_prefix(f)?;
            match rest.strip_prefix('=') {
                Some(v) => Some((*f, Some(v.to_owned()))),
                None if rest.is_empty() => Some((*f, None)),
                None => None,
            }
        }) else {
            i += 1;
            continue;
        };
        args.remove(i);
        let value = match inline {
            Some(v) => v,
            None if i < args.len() => args.remove(i).to_string_lossy().into_owned(),
            None => return Err(usage(format!("{flag} needs a value\n{FORM}"))),
        };
        own.push((flag, value));
    }
    let Some(a) = TunnelArgs::parse(args, "edge sessions")? else {
        return Ok(ExitCode::SUCCESS);
    };
    let words: Vec<&str> = a.positional.iter().map(String::as_str).collect();
    let out = match (words.as_slice(), own.as_slice(), &a.hostname) {
        (["list"], [], None) => tunnel::admin::sessions(&a.admin()?.0, a.json),
        (["kill", id], [], None) => {
            tunnel::admin::kill_sessions(&a.admin()?.0, serde_json::json!({ "id": id }))
        }
        (["kill"], [(flag, v)], None) => {
            let key = if *flag == "--email" {
                "email"
            } else {
                "service_token"
            };
            tunnel::admin::kill_sessions(&a.admin()?.0, serde_json::json!({ key: v }))
        }
        (["kill"], [], Some(h)) => {
            tunnel::admin::kill_sessions(&a.admin()?.0, serde_json::json!({ "hostname": h }))
        }
        _ => return Err(usage(FORM.to_owned())),
    }
    .map_err(CliError::Failed)?;
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// `postern edge ssh-ca [--state DIR | --keys DIR]`: prints the SSH CA's public line(s), the
/// content of the servers' `TrustedUserCAKeys` file (creates the CA if it is not there yet).
fn cmd_ssh_ca(args: Vec<OsString>) -> Res {
    const HELP: &str = "USAGE: postern edge ssh-ca [--state DIR] [--keys DIR] [--rotate]\n\
        Prints the edge's SSH certificate authority (TrustedUserCAKeys lines for sshd);\n\
        creates ssh-ca.key in the state (or --keys) directory if it is not there yet.\n\
        --rotate makes a new key and keeps the old line listed (ssh-ca-previous.pub);\n\
        restart the edge(s) to sign with it; copy both files to every edge of a pool.\n";
    let mut p = parser(args);
    let (mut state, mut keys, mut rotate) = (None, None, false);
    while let Some(arg) = p.next()? {
        match arg {
            Long("rotate") => rotate = true,
            Long("state") => state = Some(p.value()?),
            Long("keys") => keys = Some(PathBuf::from(p.value()?)),
            Long("help") | Short('h') => {
                print!("{HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(usage(format!("{}\n{HELP}", other.unexpected()))),
        }
    }
    let dir = state_args(state, keys, EtcdAccess::default())?.keys()?;
    let ca = if rotate {
        postern::sshca::SshCa::rotate(&dir)
    } else {
        postern::sshca::SshCa::load_or_create(&dir)
    }
    .map_err(CliError::Io)?;
    print!("{}", ca.lines());
    Ok(ExitCode::SUCCESS)
}

fn cmd_service_token(args: Vec<OsString>) -> Res {
    const HELP: &str = "USAGE: postern edge service-token create NAME [--expires D] [--state DIR|etcd://HOST:PORT[,…]/PREFIX]\n\
        \x20      postern edge service-token rotate NAME [--overlap D] [--state DIR|etcd://…]\n\
        \x20      postern edge service-token revoke NAME [--state DIR|etcd://…]\n\
        create prints {\"client_id\",\"client_secret\"} as JSON; only a hash of the secret is stored.\n\
        With --expires D (e.g. 90d) edges refuse it from then on and warn a week before.\n\
        rotate prints the same with a new secret; the old one keeps working for --overlap D\n\
        (default 24h; 0: at once) while clients move to the new one.\n\
        revoke records the token as revoked for good (revocations.json): edges using DIR refuse it\n\
        within 2 s and close the connections open with it.\n";
    let mut p = parser(args);
    let (mut verb, mut name, mut state, mut keys) = (None, None, None, None);
    let (mut expires, mut overlap) = (None, None);
    let duration = |v: OsString, flag: &str| -> Result<u64, CliError> {
        let text = string(v, flag)?;
        postern::edge::config::parse_duration(&text).ok_or_else(|| {
            usage(format!(
                "{flag} {text:?}: use a number with s, m, h or d, e.g. \"90d\""
            ))
        })
    };
    let mut etcd = EtcdAccess::default();
    while let Some(arg) = p.next()? {
        match arg {
            Long(f) if f.starts_with("etcd-") => {
                let f = f.to_owned();
                etcd_flag(&f, p.value()?, &mut etcd)?
            }
            Long("state") => state = Some(p.value()?),
            Long("keys") => keys = Some(PathBuf::from(p.value()?)),
            Long("expires") => expires = Some(duration(p.value()?, "--expires")?),
            // "0" (any unit): the old secret stops at once, as the help says.
            Long("overlap") => {
                let v = p.value()?;
                let zero = v
                    .to_str()
                    .map(|t| t.trim_end_matches(['s', 'm', 'h', 'd']))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b == b'0'));
                overlap = Some(if zero { 0 } else { duration(v, "--overlap")? })
            }
            Long("help") | Short('h') => {
                print!("{HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            Value(v) if verb.is_none() => verb = Some(string(v, "verb")?),
            Value(v) if name.is_none() => name = Some(string(v, "NAME")?),
            other => return Err(usage(format!("{}\n{HELP}", other.unexpected()))),
        }
    }
    let verb = match verb.as_deref() {
        Some(v @ ("create" | "revoke" | "rotate")) => v,
        _ => {
            return Err(usage(format!(
                "service-token: expected `create`, `rotate` or `revoke`\n{HELP}"
            )))
        }
    };
    let Some(name) = name else {
        return Err(usage(format!(
            "service-token {verb}: NAME is missing\n{HELP}"
        )));
    };
    if expires.is_some() && verb != "create" || overlap.is_some() && verb != "rotate" {
        return Err(usage(format!(
            "service-token {verb}: --expires goes with create, --overlap with rotate\n{HELP}"
        )));
    }
    let args = state_args(state, keys, etcd)?;
    if verb == "revoke" {
        let mut store = args.store()?;
        return revoke_service_token(store.as_mut(), &args.shown(), &name);
    }
    if verb == "rotate" {
        let overlap = overlap.unwrap_or(24 * 3600);
        let (record, secret) = args
            .store()?
            .rotate_service_token(&name, overlap)
            .map_err(store_failed)?;
        println!(
            "{}",
            serde_json::json!({ "client_id": record.client_id, "client_secret": secret.expose() })
        );
        eprintln!(
            "service token {name}: new secret above; the old one keeps working for {overlap} s"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let expires = expires.map(|d| postern::io::unix_now().saturating_add(d));
    let (id, secret) = match &args.etcd {
        None => ServiceTokens::create(&args.keys()?, &name, expires).map_err(CliError::Io)?,
        Some(_) => {
            let (record, secret) = args
                .store()?
                .create_service_token(&name, expires)
                .map_err(store_failed)?;
            (record.client_id, secret)
        }
    };
    println!(
        "{}",
        serde_json::json!({ "client_id": id, "client_secret": secret.expose() })
    );
    Ok(ExitCode::SUCCESS)
}

/// `service-token revoke NAME`: records the revocation in the state directory, where the
/// edges' store workers find it within a second.
fn revoke_service_token(store: &mut dyn Store, shown: &str, name: &str) -> Res {
    let snapshot = store.snapshot().map_err(store_failed)?;
    let Some(token) = snapshot.service_tokens.iter().find(|t| t.name == name) else {
        let mut known: Vec<&str> = snapshot
            .service_tokens
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        known.sort_unstable();
        return Err(CliError::Failed(format!(
            "no service token named {name:?} in {shown} (known: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    };
    let id = token.client_id.clone();
    if snapshot.revocations.service_tokens.contains_key(&id) {
        println!("Service token {name} (client id {id}) was already revoked.");
        return Ok(ExitCode::SUCCESS);
    }
    store
        .revoke(Revocation::ServiceToken {
            client_id: id.clone(),
            reason: format!("service-token revoke {name}"),
        })
        .map_err(store_failed)?;
    println!("Revoked service token {name} (client id {id}). Edges refuse it within 2 s.");
    Ok(ExitCode::SUCCESS)
}

fn store_failed(e: StoreError) -> CliError {
    CliError::Failed(format!("state store: {e}"))
}

/// `origin-cert revoke SERIAL|FILE`: a FILE (an origin credential, a tunnel's credentials,
/// a PEM certificate) revokes its certificate by fingerprint and serial; a SERIAL (hex, as
/// `openssl x509 -serial` prints it) revokes any certificate of the origin CA with it.
fn revoke_origin_cert(store: &mut dyn Store, what: &str) -> Res {
    let path = Path::new(what);
    let revocation = if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|error| CliError::File {
            path: path.to_owned(),
            error,
        })?;
        let cert = postern::pki::certificate_in(&text)
            .map_err(|why| CliError::Failed(format!("{}: {why}", path.display())))?;
        Revocation::Certificate {
            sha256: postern::pki::fingerprint(&cert),
            serial: postern::pki::serial_hex(&cert),
            reason: format!("origin-cert revoke {}", path.display()),
        }
    } else {
        let hex: String = what
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        let hex = hex.trim_start_matches("0x");
        if hex.is_empty() || hex.len() > 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CliError::Failed(format!(
                "{what:?} is neither a file nor a certificate serial (hex, e.g. as \
                 `openssl x509 -noout -serial -in cert.pem` prints it)"
            )));
        }
        // As `pki::serial_hex` writes it: whole bytes, no leading zero byte.
        let mut hex = if hex.len() % 2 == 1 {
            format!("0{hex}")
        } else {
            hex.to_owned()
        };
        while hex.len() > 2 && hex.starts_with("00") {
            hex.drain(..2);
        }
        Revocation::Serial {
            reason: format!("origin-cert revoke {hex}"),
            serial: hex,
        }
    };
    let revoked = store.snapshot().map_err(store_failed)?.revocations;
    let (already, shown) = match &revocation {
        Revocation::Certificate { sha256, serial, .. } => (
            revoked.certificates.contains_key(sha256),
            format!(
                "origin certificate {sha256} (serial {})",
                serial.as_deref().unwrap_or("unknown")
            ),
        ),
        Revocation::Serial { serial, .. } => (
            revoked.serials.contains_key(serial),
            format!("origin certificate serial {serial}"),
        ),
        Revocation::ServiceToken { .. } | Revocation::ZoneSessions { .. } => {
            unreachable!("built above")
        }
    };
    if already {
        println!("{} was already revoked.", capitalized(&shown));
        return Ok(ExitCode::SUCCESS);
    }
    let by_serial = matches!(revocation, Revocation::Serial { .. });
    store.revoke(revocation).map_err(store_failed)?;
    if by_serial {
        eprintln!(
            "note: the edge keeps no list of the certificates it issued, so this serial was not \
             checked against one; revoking by FILE names the certificate exactly"
        );
    }
    println!("Revoked {shown}. Edges refuse it within 2 s and close its tunnel connections.");
    Ok(ExitCode::SUCCESS)
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn cmd_origin_cert(args: Vec<OsString>) -> Res {
    const HELP: &str = "USAGE: postern edge origin-cert create --zone ZONE --out FILE [--state DIR|etcd://… [--keys DIR]] [--edge HOST:PORT]\n\
        \x20      postern edge origin-cert revoke SERIAL|FILE [--state DIR|etcd://…]\n\
        create writes an origin credential (key, certificate for ZONE and *.ZONE, edge address, edge CA), mode 0600.\n\
        revoke records a certificate as revoked for good (revocations.json): FILE is a cert.pem, a named\n\
        tunnel's credentials file or a PEM certificate; SERIAL is its serial in hex (openssl x509 -serial).\n\
        Edges using DIR refuse it within 2 s and close the tunnel connections open with it.\n";
    let mut p = parser(args);
    let (mut verb, mut zone, mut out, mut state, mut edge_addr) = (None, None, None, None, None);
    let (mut target, mut keys, mut etcd) = (None, None, EtcdAccess::default());
    while let Some(arg) = p.next()? {
        match arg {
            Long(f) if f.starts_with("etcd-") => {
                let f = f.to_owned();
                etcd_flag(&f, p.value()?, &mut etcd)?
            }
            Long("zone") => zone = Some(string(p.value()?, "--zone")?),
            Long("out") => out = Some(PathBuf::from(p.value()?)),
            Long("state") => state = Some(p.value()?),
            Long("keys") => keys = Some(PathBuf::from(p.value()?)),
            Long("edge") => edge_addr = Some(string(p.value()?, "--edge")?),
            Long("help") | Short('h') => {
                print!("{HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            Value(v) if verb.is_none() => verb = Some(string(v, "verb")?),
            Value(v) if verb.as_deref() == Some("revoke") && target.is_none() => {
                target = Some(string(v, "SERIAL|FILE")?)
            }
            other => return Err(usage(format!("{}\n{HELP}", other.unexpected()))),
        }
    }
    if verb.as_deref() == Some("revoke") {
        let target = target.ok_or_else(|| {
            usage(format!(
                "origin-cert revoke: SERIAL or FILE is missing\n{HELP}"
            ))
        })?;
        return revoke_origin_cert(state_args(state, keys, etcd)?.store()?.as_mut(), &target);
    }
    if verb.as_deref() != Some("create") {
        return Err(usage(format!(
            "origin-cert: expected `create` or `revoke`\n{HELP}"
        )));
    }
    let zone =
        zone.ok_or_else(|| usage(format!("origin-cert create: --zone is missing\n{HELP}")))?;
    let out = out.ok_or_else(|| usage(format!("origin-cert create: --out is missing\n{HELP}")))?;
    // The origin CA is a key: in the local directory, also with an etcd state.
    let state = state_args(state, keys, etcd)?.keys()?;
    let origin_ca = Authority::load_or_create(&state, "origin-ca", "postern origin CA")
        .map_err(CliError::Io)?;
    let (cert, key) = origin_ca.issue_origin(&zone).map_err(CliError::Io)?;
    // Ship the dev TLS CA along, so the origin trusts a dev edge without --ca.
    let ca = match std::fs::read_to_string(state.path().join("ca.pem")) {
        Ok(pem) => postern::pki::pem_sections(&pem)
            .map_err(CliError::Credential)?
            .into_iter()
            .filter(|(label, _)| label == "CERTIFICATE")
            .map(|(_, der)| der.into())
            .collect(),
        Err(_) => Vec::new(),
    };
    let cred = OriginCredential {
        key,
        cert,
        zone: zone.clone(),
        edge: edge_addr,
        ca,
    };
    cred.write(&out).map_err(|error| CliError::File {
        path: out.clone(),
        error,
    })?;
    eprintln!(
        "wrote origin credential for zone {zone} to {}",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------------------------- tunnel

const TUNNEL_HELP: &str = "\
postern tunnel: the origin connector (outbound only; holds N connections to the edge)

USAGE:
    postern tunnel --hostname H --url ssh://localhost:22 [OPTIONS]   quick tunnel for one hostname
    postern tunnel login --edge https://login.site.com [--ca FILE]   get cert.pem through the browser
    postern tunnel create NAME                  make a named tunnel, write ~/.postern/<ID>.json
    postern tunnel route dns NAME HOST          route HOST to the tunnel [--overwrite-dns]
    postern tunnel run [NAME] [--config FILE]   run a named tunnel with the config's ingress rules
    postern tunnel run --url URL NAME           run a named tunnel sending every hostname to URL
    postern tunnel list [--output json]         the zone's tunnels
    postern tunnel info NAME [--output json]    a tunnel's routes and connections
    postern tunnel delete NAME [-f]             delete it (-f: even while connected)
    postern tunnel token NAME                   print a token that `tunnel run --token T` runs from
    postern tunnel run --token T --url URL      run a tunnel from its token alone (env TUNNEL_TOKEN)
    postern tunnel cleanup NAME                 cloudflared's; nothing to do (the edge drops
                                                a connector's connections when they end)
    postern tunnel ingress validate [--config FILE]   check a config's ingress rules
    postern tunnel ingress rule HOST [--config FILE]  which rule serves HOST
    postern tunnel doctor --hostname H --url URL [OPTIONS]   check the certificate, the edge (without
                                                registering) and the local service; name what fails
    postern tunnel doctor [NAME] [--config FILE] [--credentials-file F | --token T]
                                                the same for a named tunnel, as `tunnel run` would
                                                run it: its credentials, routes and each service

OPTIONS:
    --hostname H          the hostname to register (must be in the origin certificate's zone)
    --url URL             the local service: ssh://host[:port], tcp://host:port or host:port
    --bastion             a jump host: each stream goes to the client's --destination, if the
                          edge's allow-list for the application admits it (no --url then)
    --bastion-allow P     the tunnel's own allow-list too, e.g. 10.0.0.0/8:22 (repeatable);
                          loopback and link-local (169.254.169.254) need an explicit pattern
    --origincert FILE     origin credential (default ~/.postern/cert.pem; env POSTERN_ORIGIN_CERT)
    --config FILE         named tunnel config: cloudflared's config.yml, or JSON (default: the
                          first of ~/.postern/config.{json,yml}, /etc/postern/config.{json,yml},
                          then cloudflared's ~/.cloudflared, ~/.cloudflare-warp,
                          ~/cloudflare-warp, /etc/cloudflared, /usr/local/etc/cloudflared
                          config.{yml,yaml}; env POSTERN_TUNNEL_CONFIG)
    --credentials-file F  a named tunnel's credentials (default ~/.postern/<ID>.json)
    --edge HOST:PORT      connect here (default: the edge in the credential, else H:443; env POSTERN_EDGE,
                          comma-separated). Repeat it for an edge pool: the connections go round
                          the edges, at least one each (docs/scaling.md)
    --ca FILE             trust this CA for the edge's certificate too (env POSTERN_CA)
    --ha-connections N    connections to hold (default 4; raised to the number of edges)
    --grace-period SECS   on SIGTERM, wait this long for open streams (default 30)
    --resume-window SECS  keep the service connection of a resumable stream whose client is
                          gone this long, for the client to come back (default 60)
    --metrics ADDR        serve Prometheus /metrics and /ready on ADDR, e.g. 127.0.0.1:2000
                          (env POSTERN_METRICS; default: none)
    --token T             (run) the tunnel's credentials, from `tunnel token NAME`
                          (prefer env TUNNEL_TOKEN: a flag is visible in the process list)
    --pidfile FILE        write the pid to FILE once connected; removed on exit
    --log-format F        json or human (env POSTERN_LOG_FORMAT)
    --loglevel L          debug, info, warn, error or fatal (overrides RUST_LOG)
    --logfile FILE        append the log to FILE too (created 0600)
    --no-autoupdate, --autoupdate-freq D, --protocol P, --edge-ip-version V, --region R,
    --retries N, --tag T, --compression-quality N, --edge-bind-address A,
    --transport-loglevel L, --proto-loglevel L, --metrics-update-freq D
                          cloudflared's; they mean nothing here and are ignored with a
                          one-line notice that says why (e.g. postern retries forever, with
                          backoff; it updates with your package manager)

ENVIRONMENT (cloudflared's names; a flag on the command line wins):
    TUNNEL_HOSTNAME, TUNNEL_URL, TUNNEL_ORIGIN_CERT, TUNNEL_CRED_FILE, TUNNEL_EDGE,
    TUNNEL_CACERT (--ca), TUNNEL_METRICS, TUNNEL_GRACE_PERIOD, TUNNEL_PIDFILE, TUNNEL_TOKEN,
    TUNNEL_LOGLEVEL, TUNNEL_LOGFILE; NO_AUTOUPDATE, TUNNEL_TRANSPORT_PROTOCOL,
    TUNNEL_EDGE_IP_VERSION, TUNNEL_REGION, TUNNEL_RETRIES, TUNNEL_TAG, TUNNEL_COMPRESSION_LEVEL,
    TUNNEL_EDGE_BIND_ADDRESS, TUNNEL_TRANSPORT_LOGLEVEL, TUNNEL_PROTO_LOGLEVEL,
    TUNNEL_METRICS_UPDATE_FREQ are ignored with a notice

CONFIG (tunnel run; cloudflared's config.yml, or the same keys in JSON):
    tunnel: web
    credentials-file: /root/.postern/<ID>.json
    originRequest:
      connectTimeout: 10s
    ingress:
      - hostname: ssh.site.com
        service: ssh://localhost:22
      - hostname: \"*.git.site.com\"
        service: tcp://localhost:2222
      - service: http_status:404
    Optional: edge (one HOST:PORT or a list), ca, ha-connections, grace-period, resume-window,
    metrics, logfile, loglevel, pidfile, origincert. The last rule must have no hostname.
    cloudflared's keys that mean nothing here are accepted with a notice; others are errors
    naming the key and line (docs/tunnel-config.md).
";

const TUNNEL_LOGIN_HELP: &str = "\
postern tunnel login: get an origin certificate by signing in through the browser

USAGE:
    postern tunnel login --edge https://login.site.com [--ca FILE] [--origincert FILE]

OPTIONS:
    --edge URL          the edge's login URL (its public_url); env POSTERN_EDGE_URL
    --ca FILE           trust this CA for the edge's certificate too (env POSTERN_CA)
    --origincert FILE   where to write the credential (default ~/.postern/cert.pem), mode 0600
";

fn cmd_tunnel_login(args: Vec<OsString>) -> Res {
    let mut p = parser(args);
    let (mut edge_url, mut ca, mut out) = (None, None, None);
    while let Some(arg) = p.next()? {
        match arg {
            Long("edge") => edge_url = Some(string(p.value()?, "--edge")?),
            Long("ca") => ca = Some(PathBuf::from(p.value()?)),
            Long("origincert") => out = Some(PathBuf::from(p.value()?)),
            Long("help") | Short('h') => {
                print!("{TUNNEL_LOGIN_HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            other => {
                return Err(usage(format!(
                    "tunnel login: {}\n\n{TUNNEL_LOGIN_HELP}",
                    other.unexpected()
                )))
            }
        }
    }
    let edge_url = edge_url
        .or_else(|| env_var("POSTERN_EDGE_URL"))
        .ok_or_else(|| {
            usage(format!(
                "tunnel login: --edge URL is missing\n\n{TUNNEL_LOGIN_HELP}"
            ))
        })?;
    let (host, port) = access::application(&edge_url)?;
    let out = match out {
        Some(out) => out,
        None => home_postern("pass --origincert FILE")?.join("cert.pem"),
    };
    if out.exists() {
        return Err(usage(format!(
            "{} already exists: move it away first, or pass --origincert with another path",
            out.display()
        )));
    }
    let opts = AccessOptions {
        edge: format!("{host}:{}", port.unwrap_or(443)),
        hostname: host,
        extra_ca: ca.or_else(|| env_var("POSTERN_CA").map(PathBuf::from)),
        credentials: Credentials::None,
        resume: None,
        resume_granted: None,
        destination: None,
    };
    let pem = access::login(&opts, access::Purpose::Tunnel)?;
    let text = String::from_utf8(pem)
        .map_err(|_| CliError::Failed("the edge sent a credential that is not text".into()))?;
    let cred = OriginCredential::parse(&text)
        .map_err(|e| CliError::Failed(format!("the edge sent an unusable credential: {e}")))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|error| CliError::File {
            path: dir.to_owned(),
            error,
        })?;
    }
    cred.write(&out).map_err(|error| CliError::File {
        path: out.clone(),
        error,
    })?;
    eprintln!(
        "Wrote an origin certificate for zone {} to {} (mode 0600).\n\
         Next: postern tunnel --hostname NAME.{} --url ssh://localhost:22",
        cred.zone,
        out.display(),
        cred.zone
    );
    Ok(ExitCode::SUCCESS)
}

/// Subcommands of `tunnel`; anything else is the quick `--hostname --url` form.
const TUNNEL_SUBCOMMANDS: &[&str] = &[
    "login",
    "create",
    "route",
    "run",
    "list",
    "info",
    "delete",
    "ingress",
    "token",
    "cleanup",
    "doctor",
    "sshd-setup",
];
/// Flags of `tunnel` that take a value: cloudflared users put some before the subcommand
/// (`tunnel --config FILE run`).
const TUNNEL_VALUE_FLAGS: &[&str] = &[
    "--config",
    "--origincert",
    "--credentials-file",
    "--cred-file",
    "--edge",
    "--ca",
    "--url",
    "--hostname",
    "--ha-connections",
    "--grace-period",
    "--resume-window",
    "--output",
    "-o",
    "--metrics",
    "--log-format",
    "--loglevel",
    "--pidfile",
    "--token",
    "--cacert",
];

/// Where the first word that is neither a flag nor a flag's value is in `args`.
fn first_word(args: &[OsString]) -> usize {
    let mut i = 0;
    while let Some(a) = args.get(i).and_then(|a| a.to_str()) {
        if !a.starts_with('-') {
            break;
        }
        // cloudflared's ignored flags take values too (`tunnel --protocol http2 run`).
        let ignored_with_value = a
            .strip_prefix("--")
            .and_then(cloudflared::ignored_flag)
            .is_some_and(|i| i.takes_value);
        i += if TUNNEL_VALUE_FLAGS.contains(&a) || ignored_with_value {
            2
        } else {
            1
        };
    }
    i
}

const SSHD_SETUP_HELP: &str = "\
USAGE: postern tunnel sshd-setup (--ca-from https://H | --ca-file FILE) [OPTIONS]

Makes sshd trust the edge's short-lived SSH certificates (postern access ssh-gen): prints
the CA file and the sshd_config lines, or installs them with --write.

OPTIONS:
    --ca-from URL         fetch the CA from the edge (https://H/cdn-cgi/access/ssh-ca; H is
                          any hostname the edge serves)
    --edge HOST:PORT      with --ca-from: connect here instead of resolving H
    --ca FILE             with --ca-from: trust this TLS CA for the edge's certificate too
    --ca-file FILE        the CA line(s) from a file (`postern edge ssh-ca` printed them)
    --ca-out FILE         where sshd reads the CA (default /etc/ssh/postern_ca.pub)
    --principals-dir DIR  add `AuthorizedPrincipalsFile DIR/%u`: DIR/USER lists who may log
                          in as USER (without it, a certificate's principal is the user name)
    --sshd-config FILE    the file --write changes (default /etc/ssh/sshd_config)
    --write               write the CA file, back up sshd_config, put the lines at its top,
                          check it with `sshd -t` (put back if refused); reload sshd yourself
";

/// `postern tunnel sshd-setup`: see [`SSHD_SETUP_HELP`].
fn cmd_sshd_setup(args: Vec<OsString>) -> Res {
    use postern::tunnel::sshd_setup::{check_ca_lines, SshdSetup};
    let mut p = parser(args);
    let (mut from, mut edge_addr, mut tls_ca, mut ca_file) = (None, None, None, None);
    let (mut ca_out, mut principals_dir, mut config, mut write) = (None, None, None, false);
    while let Some(arg) = p.next()? {
        match arg {
            Long("ca-from") => from = Some(string(p.value()?, "--ca-from")?),
            Long("edge") => edge_addr = Some(string(p.value()?, "--edge")?),
            Long("ca") => tls_ca = Some(PathBuf::from(p.value()?)),
            Long("ca-file") => ca_file = Some(PathBuf::from(p.value()?)),
            // sshd reads it from its own working directory: the path it is told must be whole.
            Long("ca-out") => {
                ca_out = Some(
                    std::path::absolute(PathBuf::from(p.value()?))
                        .map_err(|e| usage(format!("--ca-out: {e}")))?,
                )
            }
            Long("principals-dir") => {
                principals_dir = Some(
                    std::path::absolute(PathBuf::from(p.value()?))
                        .map_err(|e| usage(format!("--principals-dir: {e}")))?,
                )
            }
            Long("sshd-config") => config = Some(PathBuf::from(p.value()?)),
            Long("write") => write = true,
            Long("help") | Short('h') => {
                print!("{SSHD_SETUP_HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            other => {
                return Err(usage(format!(
                    "tunnel sshd-setup: {}\n\n{SSHD_SETUP_HELP}",
                    other.unexpected()
                )))
            }
        }
    }
    let (text, source) = match (from, ca_file) {
        (Some(url), None) => {
            let (host, port) = access::application(&url)?;
            let opts = AccessOptions {
                edge: edge_addr.unwrap_or_else(|| format!("{host}:{}", port.unwrap_or(443))),
                hostname: host.clone(),
                extra_ca: tls_ca.or_else(|| env_var("POSTERN_CA").map(PathBuf::from)),
                credentials: Credentials::None,
                resume: None,
                resume_granted: None,
                destination: None,
            };
            let text = access::sshgen::fetch_ssh_ca(&opts)?;
            (text, format!("https://{host}/cdn-cgi/access/ssh-ca"))
        }
        (None, Some(file)) => {
            let text = std::fs::read_to_string(&file).map_err(|error| CliError::File {
                path: file.clone(),
                error,
            })?;
            (text, file.display().to_string())
        }
        _ => {
            return Err(usage(format!(
            "tunnel sshd-setup: give one of --ca-from URL or --ca-file FILE\n\n{SSHD_SETUP_HELP}"
        )))
        }
    };
    let ca_lines = check_ca_lines(&text)
        .map_err(|e| CliError::Failed(format!("the SSH CA from {source}: {e}")))?;
    let setup = SshdSetup {
        ca_lines,
        ca_file: ca_out.unwrap_or_else(|| PathBuf::from("/etc/ssh/postern_ca.pub")),
        principals_dir,
    };
    let config = config.unwrap_or_else(|| PathBuf::from("/etc/ssh/sshd_config"));
    if !write {
        println!("# {} (from {source}):", setup.ca_file.display());
        print!("{}", setup.ca_lines);
        println!("# at the top of {}:", config.display());
        print!("{}", setup.block());
        eprintln!("Run again with --write to install them (sshd_config is backed up first).");
        return Ok(ExitCode::SUCCESS);
    }
    let sshd = ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("sshd"));
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let backup = setup.write(&config, &sshd, unix).map_err(CliError::Io)?;
    eprintln!(
        "Wrote {} and the lines at the top of {} (backup: {}); `sshd -t` accepts it.\n\
         Reload sshd to apply: systemctl reload ssh (or sshd)",
        setup.ca_file.display(),
        config.display(),
        backup.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_tunnel(args: Vec<OsString>) -> Res {
    let i = first_word(&args);
    if let Some(sub) = args
        .get(i)
        .and_then(|a| a.to_str())
        .filter(|a| TUNNEL_SUBCOMMANDS.contains(a))
    {
        let mut rest = args[..i].to_vec();
        rest.extend_from_slice(&args[i + 1..]);
        return match sub {
            "login" => cmd_tunnel_login(rest),
            "sshd-setup" => cmd_sshd_setup(rest),
            "doctor" => cmd_tunnel_doctor(rest),
            sub => cmd_named_tunnel(sub, rest),
        };
    }
    let Some(a) = TunnelArgs::parse(args, "tunnel")? else {
        return Ok(ExitCode::SUCCESS);
    };
    if let Some(p) = a.positional.first() {
        return Err(usage(format!(
            "tunnel: unknown command {p:?}\n\n{TUNNEL_HELP}"
        )));
    }
    let hostname = a
        .hostname
        .clone()
        .ok_or_else(|| usage(format!("tunnel: --hostname is missing\n\n{TUNNEL_HELP}")))?
        .to_ascii_lowercase();
    let url = match (&a.url, a.bastion) {
        (Some(_), true) => return Err(usage("tunnel: give --url or --bastion, not both")),
        (None, true) => "bastion".to_owned(),
        (url, false) => url
            .clone()
            .ok_or_else(|| usage(format!("tunnel: --url is missing\n\n{TUNNEL_HELP}")))?,
    };
    let mut ingress = tunnel::Ingress::single(&hostname, &url).map_err(CliError::Failed)?;
    ingress
        .set_bastion_allow(&a.bastion_allow)
        .map_err(|e| usage(format!("tunnel: --{e}")))?;
    let credential = OriginCredential::read(&a.origin_cert()?).map_err(CliError::Io)?;
    let mut edges = a.edges(&[], None)?;
    if edges.is_empty() {
        edges = tunnel::credential_edges(credential.edge.as_deref(), &hostname).map_err(usage)?;
    }
    let edges = edges
        .into_iter()
        .map(|addr| tunnel::EdgeAddr {
            addr,
            server_name: hostname.clone(),
        })
        .collect();
    run_origin(
        TunnelOptions {
            registration: Registration::Hostname(hostname.clone()),
            ingress,
            credential,
            edges,
            extra_ca: a.ca(None),
            ha_connections: a.ha.unwrap_or(4),
            grace: Duration::from_secs(a.grace.unwrap_or(30)),
            resume_window: a.resume_window.map_or(RESUME_WINDOW, Duration::from_secs),
        },
        a.metrics.clone(),
        a.pidfile.clone(),
    )
}

/// `postern tunnel doctor`: the quick form (`--hostname H --url URL [--origincert F]`) or a
/// named tunnel's (`[NAME] [--config F] [--credentials-file F | --token T]`, resolved as
/// `tunnel run` does); `--edge`, `--ca` for both. One line per check on stdout, the exit
/// status says whether all passed.
fn cmd_tunnel_doctor(args: Vec<OsString>) -> Res {
    let Some(a) = TunnelArgs::parse(args, "tunnel doctor")? else {
        return Ok(ExitCode::SUCCESS);
    };
    let named = a.config.is_some()
        || a.cred_file.is_some()
        || a.token.is_some()
        || !a.positional.is_empty()
        || a.hostname.is_none();
    if named {
        if a.hostname.is_some() {
            return Err(usage(
                "tunnel doctor: --hostname is the quick form's; a named tunnel's hostnames are \
                 its ingress rules (and its routes)",
            ));
        }
        return tunnel_doctor_named(&a);
    }
    let (Some(hostname), Some(url)) = (a.hostname.clone(), a.url.clone()) else {
        return Err(usage(format!(
            "tunnel doctor: --hostname and --url are needed (the tunnel's own)\n\n{TUNNEL_HELP}"
        )));
    };
    let opts = tunnel::doctor::DoctorOptions {
        hostname: hostname.to_ascii_lowercase(),
        url,
        origin_cert: a.origin_cert()?,
        edges: a.edges(&[], None)?,
        extra_ca: a.ca(None),
    };
    Ok(if tunnel::doctor::doctor(&opts) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `tunnel doctor [NAME]` for a named tunnel: what `tunnel run` would run with.
fn tunnel_doctor_named(a: &TunnelArgs) -> Res {
    let setup = match named_setup(a) {
        Ok(s) => s,
        Err((step, e)) => {
            let (step, fix) = match step {
                SetupStep::Config => (
                    "config",
                    "fix the config file (postern tunnel ingress validate --config FILE checks \
                     its rules) or the flags",
                ),
                SetupStep::Credentials => (
                    "credentials",
                    "give the tunnel's credentials: --credentials-file FILE, or --token T / \
                     TUNNEL_TOKEN (postern tunnel token NAME prints it)",
                ),
            };
            tunnel::doctor::setup_failed(step, e, fix);
            return Ok(ExitCode::FAILURE);
        }
    };
    let sni_fallback = named_sni_fallback(&setup);
    let config = match (&setup.config_path, &a.url, a.bastion) {
        (_, Some(_), _) | (_, _, true) => "--url".to_owned(),
        (Some(p), None, false) => format!("config {}", p.display()),
        (None, None, false) => "no config and no --url: the token's default".to_owned(),
    };
    let opts = tunnel::doctor::NamedDoctorOptions {
        config,
        extra_ca: a.ca(setup.cfg.ca.as_deref()),
        ingress: setup.ingress,
        creds: setup.creds,
        credential: setup.credential,
        creds_path: setup.creds_path,
        shown: setup.shown,
        edges: setup.edges,
        sni_fallback,
    };
    Ok(if tunnel::doctor::doctor_named(&opts) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_origin(opts: TunnelOptions, metrics: Option<String>, pidfile: Option<PathBuf>) -> Res {
    // Two descriptors per stream (its tunnel share and the local service connection).
    postern::io::sys::raise_open_files_logged("tunnel");
    let mut origin = Origin::new(opts).map_err(CliError::Tunnel)?;
    if let Some(addr) = metrics.or_else(|| env_var("POSTERN_METRICS")) {
        let bound = origin.serve_metrics(&addr).map_err(CliError::Tunnel)?;
        log::info!("metrics on {bound}");
    }
    // Removes the pid file on every way out of this function (a clean exit after SIGTERM,
    // a refusal, an error); a SIGKILL leaves it, as it leaves cloudflared's.
    let _pidfile = pidfile.map(|path| {
        let guard = PidFile::new(path);
        let (path, written) = (guard.path.clone(), guard.written.clone());
        origin.on_connected(Box::new(move || {
            // As cloudflared: after the first connection is registered. A few bytes to a
            // local file, once.
            let pid = format!("{}\n", std::process::id());
            match postern::io::files::write_file_atomic(&path, pid.as_bytes(), 0o644) {
                Ok(()) => written.set(true),
                Err(e) => log::error!("--pidfile {}: {e}", path.display()),
            }
        }));
        guard
    });
    match origin.run().map_err(CliError::Tunnel)? {
        Exit::Signalled => Ok(ExitCode::SUCCESS),
        Exit::Refused(why) => Err(CliError::Refused(why)),
    }
}

/// `--pidfile FILE`: removed when dropped, if this process wrote it.
struct PidFile {
    path: PathBuf,
    written: std::rc::Rc<std::cell::Cell<bool>>,
}

impl PidFile {
    fn new(path: PathBuf) -> PidFile {
        PidFile {
            path,
            written: Default::default(),
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if self.written.get() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The flags every `tunnel` form takes, and its positional arguments.
#[derive(Default)]
struct TunnelArgs {
    positional: Vec<String>,
    hostname: Option<String>,
    url: Option<String>,
    config: Option<PathBuf>,
    origincert: Option<PathBuf>,
    cred_file: Option<PathBuf>,
    /// `--edge`, as often as given.
    edge: Vec<String>,
    ca: Option<PathBuf>,
    ha: Option<usize>,
    grace: Option<u64>,
    resume_window: Option<u64>,
    force: bool,
    json: bool,
    metrics: Option<String>,
    /// `--pidfile FILE`: written once a connection is registered, removed on exit.
    pidfile: Option<PathBuf>,
    /// `--token T` (`tunnel run`): the tunnel's credentials in one string.
    token: Option<Secret>,
    /// `--bastion` (cloudflared's): serve as a jump host, as an ingress rule `bastion` does.
    bastion: bool,
    /// `--bastion-allow PATTERN`, as often as given: the tunnel's own destination allow-list.
    bastion_allow: Vec<String>,
}

impl TunnelArgs {
    /// `None` when `--help` was printed. cloudflared's `TUNNEL_*` variables stand for the
    /// flags that `args` do not give (`cloudflared::TUNNEL_ENV`).
    fn parse(mut args: Vec<OsString>, cmd: &str) -> Result<Option<TunnelArgs>, CliError> {
        for (var, ignored) in cloudflared::ignored_env(env_var) {
            eprintln!("postern: {}", ignored.env_notice(var));
        }
        let mut from_env = Vec::new();
        for e in cloudflared::from_env(cloudflared::TUNNEL_ENV, &args, env_var) {
            let pair = vec![OsString::from(e.flag), OsString::from(&e.value)];
            // Checked alone first, so that a bad value names the variable.
            TunnelArgs::parse_args(pair.clone(), cmd)
                .map_err(|err| usage(format!("{}: {err}", e.shown())))?;
            from_env.extend(pair);
        }
        // Before the command line's: where a flag is given twice, the later one wins.
        from_env.append(&mut args);
        TunnelArgs::parse_args(from_env, cmd)
    }

    fn parse_args(args: Vec<OsString>, cmd: &str) -> Result<Option<TunnelArgs>, CliError> {
        let mut a = TunnelArgs::default();
        let mut p = parser(args);
        let val = |p: &mut lexopt::Parser, flag: &str| -> Result<String, CliError> {
            string(p.value()?, flag)
        };
        while let Some(arg) = p.next()? {
            match arg {
                Long("hostname") => a.hostname = Some(val(&mut p, "--hostname")?),
                Long("metrics") => a.metrics = Some(val(&mut p, "--metrics")?),
                Long("url") => a.url = Some(val(&mut p, "--url")?),
                Long("bastion") => a.bastion = true,
                Long("bastion-allow") => a.bastion_allow.push(val(&mut p, "--bastion-allow")?),
                Long("config") => a.config = Some(val(&mut p, "--config")?.into()),
                Long("origincert") => a.origincert = Some(val(&mut p, "--origincert")?.into()),
                Long("credentials-file") | Long("cred-file") => {
                    a.cred_file = Some(val(&mut p, "--credentials-file")?.into())
                }
                Long("edge") => a.edge.push(val(&mut p, "--edge")?),
                Long("ca") | Long("cacert") => a.ca = Some(val(&mut p, "--ca")?.into()),
                Long("pidfile") => a.pidfile = Some(val(&mut p, "--pidfile")?.into()),
                Long("token") => a.token = Some(Secret::from(val(&mut p, "--token")?)),
                Long("ha-connections") => {
                    let n: usize = val(&mut p, "--ha-connections")?
                        .parse()
                        .map_err(|e| usage(format!("--ha-connections: {e}")))?;
                    if !(1..=16).contains(&n) {
                        return Err(usage("--ha-connections must be between 1 and 16"));
                    }
                    a.ha = Some(n);
                }
                Long("grace-period") => {
                    let v = val(&mut p, "--grace-period")?;
                    a.grace = Some(
                        tunnel::config::parse_seconds(&v)
                            .map_err(|e| usage(format!("--grace-period: {e}")))?,
                    );
                }
                Long("resume-window") => {
                    let v = val(&mut p, "--resume-window")?;
                    a.resume_window = Some(
                        tunnel::config::resume_window(&v)
                            .map_err(|e| usage(format!("--resume-window: {e}")))?,
                    );
                }
                Long("force") | Short('f') | Long("overwrite-dns") => a.force = true,
                // cloudflared's flags with no meaning here (its own systemd unit passes
                // --no-autoupdate): accepted, with a notice, so its command lines just work.
                Long(flag) if cloudflared::ignored_flag(flag).is_some() => {
                    let ignored = cloudflared::ignored_flag(flag).expect("bug: checked above");
                    if ignored.takes_value {
                        val(&mut p, &format!("--{}", ignored.flag))?;
                    }
                    eprintln!("postern: {}", ignored.notice());
                }
                Long("output") | Short('o') => {
                    let v = val(&mut p, "--output")?;
                    match v.as_str() {
                        "json" => a.json = true,
                        "table" | "text" => a.json = false,
                        _ => return Err(usage(format!("--output {v:?}: use json or table"))),
                    }
                }
                Long("help") | Short('h') => {
                    print!("{TUNNEL_HELP}");
                    return Ok(None);
                }
                Value(v) => a.positional.push(string(v, "argument")?),
                other => {
                    return Err(usage(format!(
                        "{cmd}: {}\n\n{TUNNEL_HELP}",
                        other.unexpected()
                    )))
                }
            }
        }
        Ok(Some(a))
    }

    fn origin_cert(&self) -> Result<PathBuf, CliError> {
        match self
            .origincert
            .clone()
            .or_else(|| env_var("POSTERN_ORIGIN_CERT").map(PathBuf::from))
        {
            Some(p) => Ok(p),
            None => Ok(
                home_postern("pass --origincert FILE (or set POSTERN_ORIGIN_CERT)")?
                    .join("cert.pem"),
            ),
        }
    }

    fn ca(&self, config: Option<&Path>) -> Option<PathBuf> {
        self.ca
            .clone()
            .or_else(|| env_var("POSTERN_CA").map(PathBuf::from))
            .or_else(|| config.map(Path::to_path_buf))
    }

    /// The edges to connect to: every `--edge`, else `POSTERN_EDGE` (comma-separated), else
    /// the config file's `edge` (one or a list), else the credential's edge. May be empty.
    fn edges(&self, config: &[String], credential: Option<&str>) -> Result<Vec<String>, CliError> {
        let env: Vec<String> = env_var("POSTERN_EDGE").into_iter().collect();
        let cred: Vec<&str> = credential.into_iter().collect();
        let given = if !self.edge.is_empty() {
            tunnel::edge_list(&self.edge)
        } else if !env.is_empty() {
            tunnel::edge_list(&env)
        } else if !config.is_empty() {
            tunnel::edge_list(config)
        } else {
            tunnel::edge_list(&cred)
        };
        given.map_err(usage)
    }

    /// The admin API client, as the zone's origin certificate (through the first edge).
    fn admin(&self) -> Result<(AdminClient, OriginCredential), CliError> {
        let path = self.origin_cert()?;
        let cred = OriginCredential::read(&path).map_err(CliError::Io)?;
        let edge = self
            .edges(&[], cred.edge.as_deref())?
            .into_iter()
            .next()
            .ok_or_else(|| {
                usage(format!(
                    "{} names no edge: pass --edge HOST:PORT (or set POSTERN_EDGE)",
                    path.display()
                ))
            })?;
        let client =
            AdminClient::new(&cred, &edge, self.ca(None).as_deref()).map_err(CliError::Failed)?;
        Ok((client, cred))
    }

    /// The credentials file of tunnel `name` next to the origin certificate, else in
    /// `~/.postern`.
    fn find_credentials(&self, name: &str) -> Option<PathBuf> {
        let cert = self.origin_cert().ok();
        let near_cert = cert
            .as_deref()
            .and_then(Path::parent)
            .filter(|d| !d.as_os_str().is_empty());
        near_cert
            .and_then(|d| TunnelCredentials::find(d, name))
            .or_else(|| TunnelCredentials::find(&home_postern("").ok()?, name))
    }

    /// Exactly `n` positional arguments.
    fn args<const N: usize>(&self, form: &str) -> Result<[&str; N], CliError> {
        let v: Vec<&str> = self.positional.iter().map(String::as_str).collect();
        v.try_into()
            .map_err(|_| usage(format!("usage: postern tunnel {form}\n\n{TUNNEL_HELP}")))
    }

    /// The config file: `--config`, env, else the first default that exists.
    fn config_path(&self) -> Option<PathBuf> {
        tunnel_config_path(self.config.clone())
    }
}

/// A tunnel's config file: `explicit` (`--config`), else `POSTERN_TUNNEL_CONFIG`, else the
/// first of postern's and cloudflared's default places that exists
/// (`tunnel::config::default_config_paths`).
fn tunnel_config_path(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit
        .or_else(|| env_var("POSTERN_TUNNEL_CONFIG").map(PathBuf::from))
        .or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from);
            tunnel::config::default_config_paths(home.as_deref())
                .into_iter()
                .find(|p| p.is_file())
        })
}

/// Reads a tunnel's config file and says each notice (a cloudflared key accepted that means
/// nothing here) on stderr, one line each.
fn read_tunnel_config(path: &Path) -> Result<(TunnelConfig, Option<tunnel::Ingress>), CliError> {
    let (cfg, ingress) = TunnelConfig::read(path).map_err(CliError::Failed)?;
    for n in &cfg.notices {
        eprintln!("postern: {n}");
    }
    Ok((cfg, ingress))
}

/// `logfile` and `loglevel` of a `tunnel` command's config file, for the logging flags that
/// neither the command line nor `TUNNEL_LOG*` give (the log starts before the command
/// runs). A config that does not read is left for the command to report.
fn config_log_flags(args: &[OsString], flags: &mut LogFlags) {
    if args.first().and_then(|a| a.to_str()) != Some("tunnel")
        || (flags.level.is_some() && flags.file.is_some())
    {
        return;
    }
    let mut explicit = None;
    let mut it = args.iter().filter_map(|a| a.to_str());
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--config=") {
            explicit = Some(PathBuf::from(v));
        } else if a == "--config" {
            explicit = it.next().map(PathBuf::from);
        }
    }
    let Some(path) = tunnel_config_path(explicit) else {
        return;
    };
    let Ok((cfg, _)) = TunnelConfig::read(&path) else {
        return;
    };
    if flags.level.is_none() {
        flags.level = cfg
            .loglevel
            .as_deref()
            .and_then(|l| logging::loglevel_filter(l).ok());
    }
    if flags.file.is_none() {
        flags.file = cfg.logfile;
    }
}

fn cmd_named_tunnel(sub: &str, args: Vec<OsString>) -> Res {
    let mut args = args;
    // `route dns NAME HOST`: `dns` is the only kind of route.
    if sub == "route" {
        let i = first_word(&args);
        match args.get(i) {
            Some(w) if w == "dns" => {
                args.remove(i);
            }
            _ => {
                return Err(usage(format!(
                    "usage: postern tunnel route dns NAME HOST\n\n{TUNNEL_HELP}"
                )))
            }
        }
    }
    let Some(a) = TunnelArgs::parse(args, &format!("tunnel {sub}"))? else {
        return Ok(ExitCode::SUCCESS);
    };
    let out = match sub {
        "create" => {
            let [name] = a.args("create NAME")?;
            let (client, origin) = a.admin()?;
            let near_cert = a
                .origin_cert()?
                .parent()
                .map(Path::to_path_buf)
                .filter(|d| !d.as_os_str().is_empty());
            // The default directory matters only without --credentials-file.
            let dir = match (near_cert, &a.cred_file) {
                (Some(d), _) => d,
                (None, Some(_)) => PathBuf::from("."),
                (None, None) => home_postern("pass --credentials-file FILE")?,
            };
            tunnel::admin::create(&client, &origin, name, a.cred_file.as_deref(), &dir)
                .map_err(CliError::Failed)?
        }
        "route" => {
            let [name, host] = a.args("route dns NAME HOST")?;
            let (client, _) = a.admin()?;
            tunnel::admin::route_dns(&client, name, &host.to_ascii_lowercase(), a.force)
                .map_err(CliError::Failed)?
        }
        "list" => {
            a.args::<0>("list")?;
            tunnel::admin::list(&a.admin()?.0, a.json).map_err(CliError::Failed)?
        }
        "info" => {
            let [name] = a.args("info NAME")?;
            tunnel::admin::info(&a.admin()?.0, name, a.json).map_err(CliError::Failed)?
        }
        "delete" => {
            if a.positional.is_empty() {
                return Err(usage(format!(
                    "usage: postern tunnel delete NAME... [-f]\n\n{TUNNEL_HELP}"
                )));
            }
            let (client, _) = a.admin()?;
            let mut out = String::new();
            for name in &a.positional {
                let creds = a.cred_file.clone().or_else(|| a.find_credentials(name));
                out.push_str(
                    &tunnel::admin::delete(&client, name, a.force, creds)
                        .map_err(CliError::Failed)?,
                );
            }
            out
        }
        "ingress" => return ingress_command(&a),
        "run" => return tunnel_run(&a),
        "token" => {
            let [name] = a.args("token NAME")?;
            let path = a
                .cred_file
                .clone()
                .or_else(|| a.find_credentials(name))
                .ok_or_else(|| {
                    usage(format!(
                        "no credentials file for tunnel {name}: pass --credentials-file FILE \
                         (`postern tunnel create {name}` wrote it)"
                    ))
                })?;
            let (creds, _) = TunnelCredentials::read(&path).map_err(CliError::Failed)?;
            if name != creds.name && name != creds.id {
                return Err(usage(format!(
                    "{} holds the credentials of tunnel {} ({}), not of {name}",
                    path.display(),
                    creds.name,
                    creds.id
                )));
            }
            eprintln!(
                "The token below carries tunnel {}'s private key: keep it as secret as {}.",
                creds.name,
                path.display()
            );
            format!("{}\n", creds.to_token())
        }
        "cleanup" => {
            if a.positional.is_empty() {
                return Err(usage(format!(
                    "usage: postern tunnel cleanup NAME...\n\n{TUNNEL_HELP}"
                )));
            }
            // cloudflared asks its API to drop a dead connector's connections; a postern edge
            // drops them itself when the TLS connection ends or misses 3 keepalives (45 s).
            a.positional
                .iter()
                .map(|n| {
                    format!(
                        "Nothing to clean up for {n}: the edge drops a connector's connections \
                         as soon as they end (or miss 45 s of keepalives).\n"
                    )
                })
                .collect()
        }
        _ => unreachable!("bug: unknown tunnel subcommand {sub}"),
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// `tunnel ingress validate|rule HOST`.
fn ingress_command(a: &TunnelArgs) -> Res {
    let path = a
        .config_path()
        .ok_or_else(|| usage("tunnel ingress: no config file: pass --config FILE"))?;
    let (_, ingress) = read_tunnel_config(&path)?;
    let ingress = ingress
        .ok_or_else(|| CliError::Failed(format!("{}: ingress: no rules", path.display())))?;
    match a.positional.as_slice() {
        [v] if v == "validate" => {
            println!("Validating rules from {}", path.display());
            for (i, r) in ingress.rules().iter().enumerate() {
                println!(
                    "  {i}: {} -> {}",
                    r.hostname.as_deref().unwrap_or("*"),
                    r.service
                );
            }
            println!("OK");
        }
        [r, host] if r == "rule" => {
            let host = access::application(host)?.0;
            let (i, rule) = ingress.find(&host);
            println!(
                "Matched rule #{i}: {} -> {}",
                rule.hostname.as_deref().unwrap_or("*"),
                rule.service
            );
        }
        _ => {
            return Err(usage(format!(
                "usage: postern tunnel ingress validate | rule HOST\n\n{TUNNEL_HELP}"
            )))
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What a tunnel run from a token alone serves.
const TOKEN_DEFAULT_URL: &str = "ssh://localhost:22";

/// Which part of a named tunnel's setup is wrong (`tunnel doctor` names it).
#[derive(Clone, Copy)]
enum SetupStep {
    /// The config file, or the flags that stand for it.
    Config,
    /// The credentials file or the token.
    Credentials,
}

/// What `tunnel run [NAME]` runs, and `tunnel doctor` checks: from the config file, the
/// flags and the tunnel's credentials.
struct NamedSetup {
    config_path: Option<PathBuf>,
    cfg: TunnelConfig,
    ingress: tunnel::Ingress,
    creds: TunnelCredentials,
    credential: OriginCredential,
    /// The credentials file; `None` when they came from the token.
    creds_path: Option<PathBuf>,
    /// The credentials as messages name them: the file, or "the token".
    shown: String,
    /// The edges to connect to (at least one).
    edges: Vec<String>,
}

/// Resolves a named tunnel's setup (see [`NamedSetup`]); an error names its step.
fn named_setup(a: &TunnelArgs) -> Result<NamedSetup, (SetupStep, CliError)> {
    use SetupStep::{Config, Credentials};
    let config_path = a.config_path();
    let (cfg, ingress) = match &config_path {
        Some(p) => read_tunnel_config(p).map_err(|e| (Config, e))?,
        None => (TunnelConfig::default(), None),
    };
    let from = |what: &str| match &config_path {
        Some(p) => format!("{what} (config {})", p.display()),
        None => what.to_owned(),
    };
    // `--token T` / `TUNNEL_TOKEN`: the credentials themselves (`tunnel token NAME`).
    let from_token = match &a.token {
        Some(t) => Some(TunnelCredentials::from_token(t.expose()).map_err(|e| {
            (
                Credentials,
                usage(format!("--token (or TUNNEL_TOKEN): {e}")),
            )
        })?),
        None => None,
    };
    let name = match (a.positional.as_slice(), &from_token) {
        ([n], _) => n.clone(),
        ([], Some((creds, _))) => creds.id.clone(),
        ([], None) => cfg.tunnel.clone().ok_or_else(|| {
            (Config, usage(format!(
                "tunnel run: which tunnel? Name it (postern tunnel run NAME), pass --token, or set \"tunnel\" in {}",
                from("the config file")
            )))
        })?,
        _ => return Err((Config, usage(format!("usage: postern tunnel run [NAME]\n\n{TUNNEL_HELP}")))),
    };
    let bastion = a.bastion.then(|| "bastion".to_owned());
    let mut ingress = match (ingress, a.url.as_ref().or(bastion.as_ref())) {
        (_, Some(url)) => {
            tunnel::Ingress::catch_all(url).map_err(|e| (Config, CliError::Failed(e)))?
        }
        (Some(i), None) => i,
        // cloudflared's token tunnels take their ingress from the dashboard; a postern token
        // tunnel without one serves the local sshd (what `service install TOKEN` runs).
        (None, None) if from_token.is_some() => {
            log::info!("no --url and no ingress rules: serving {TOKEN_DEFAULT_URL}");
            tunnel::Ingress::catch_all(TOKEN_DEFAULT_URL)
                .map_err(|e| (Config, CliError::Failed(e)))?
        }
        (None, None) => {
            return Err((
                Config,
                usage(format!(
                "tunnel run: no ingress rules and no --url: add \"ingress\" to {} or pass --url \
                 ssh://localhost:22",
                from("the config file")
            )),
            ))
        }
    };
    let (creds, credential, creds_path, shown) = match from_token {
        Some((creds, credential)) => (creds, credential, None, "the token".to_owned()),
        None => {
            let creds_path = a
                .cred_file
                .clone()
                .or(cfg.credentials_file.clone())
                .or_else(|| {
                    let dir = cfg.origincert.as_deref()?.parent()?;
                    TunnelCredentials::find(dir, &name)
                })
                .or_else(|| a.find_credentials(&name))
                .ok_or_else(|| {
                    let place = home_postern("")
                        .map_or("next to the origin certificate".to_owned(), |d| {
                            format!("in {}", d.display())
                        });
                    (
                        Credentials,
                        usage(format!(
                        "no credentials file for tunnel {name} {place}: pass --credentials-file \
                         or --token, or set \"credentials-file\" in the config; `postern tunnel \
                         create {name}` makes one"
                    )),
                    )
                })?;
            let (creds, credential) = TunnelCredentials::read(&creds_path)
                .map_err(|e| (Credentials, CliError::Failed(e)))?;
            let shown = creds_path.display().to_string();
            (creds, credential, Some(creds_path), shown)
        }
    };
    if name != creds.name && name != creds.id {
        return Err((
            Credentials,
            usage(format!(
                "{shown} holds the credentials of tunnel {} ({}), not of {name}",
                creds.name, creds.id
            )),
        ));
    }
    let allow = [a.bastion_allow.clone(), cfg.bastion_allow.clone()].concat();
    ingress
        .set_bastion_allow(&allow)
        .map_err(|e| (Config, usage(format!("tunnel run: {e}"))))?;
    let config_edges = cfg.edge.as_ref().map(|e| e.list()).unwrap_or_default();
    let edges = a
        .edges(&config_edges, credential.edge.as_deref())
        .map_err(|e| (Config, e))?;
    if edges.is_empty() {
        return Err((
            Config,
            usage(format!("{shown} names no edge: pass --edge HOST:PORT")),
        ));
    }
    Ok(NamedSetup {
        config_path,
        cfg,
        ingress,
        creds,
        credential,
        creds_path,
        shown,
        edges,
    })
}

/// The TLS name sent to each edge when its address is no name: the first plain hostname of
/// the ingress rules, else the zone.
fn named_sni_fallback(s: &NamedSetup) -> String {
    s.ingress
        .rules()
        .iter()
        .filter_map(|r| r.hostname.as_deref())
        .find(|h| !h.starts_with('*'))
        .unwrap_or(&s.creds.zone)
        .to_owned()
}

/// `tunnel run [NAME]`: a named tunnel, from the config file and/or flags.
fn tunnel_run(a: &TunnelArgs) -> Res {
    let setup = named_setup(a).map_err(|(_, e)| e)?;
    let sni_fallback = named_sni_fallback(&setup);
    let NamedSetup {
        cfg,
        ingress,
        creds,
        credential,
        edges,
        ..
    } = setup;
    let grace = match (a.grace, &cfg.grace_period) {
        (Some(g), _) => g,
        (None, Some(g)) => tunnel::config::parse_seconds(g).map_err(CliError::Failed)?,
        (None, None) => 30,
    };
    let resume_window = match (a.resume_window, &cfg.resume_window) {
        (Some(w), _) => w,
        (None, Some(w)) => tunnel::config::resume_window(w).map_err(CliError::Failed)?,
        (None, None) => RESUME_WINDOW.as_secs(),
    };
    run_origin(
        TunnelOptions {
            registration: Registration::Named {
                id: creds.id.clone(),
                name: creds.name.clone(),
            },
            ingress,
            credential,
            edges: edges
                .into_iter()
                .map(|addr| tunnel::EdgeAddr {
                    server_name: tunnel::config::edge_server_name(&addr, &sni_fallback),
                    addr,
                })
                .collect(),
            extra_ca: a.ca(cfg.ca.as_deref()),
            ha_connections: a.ha.or(cfg.ha_connections).unwrap_or(4),
            grace: Duration::from_secs(grace),
            resume_window: Duration::from_secs(resume_window),
        },
        a.metrics.clone().or(cfg.metrics.clone()),
        a.pidfile.clone().or(cfg.pidfile.clone()),
    )
}

// ------------------------------------------------------------------------------- access

const ACCESS_HELP: &str = "\
postern access: reach a hostname behind the edge

USAGE:
    postern access ssh --hostname H [--short-lived-cert] [OPTIONS]  (ssh's ProxyCommand: --hostname %h)
    postern access tcp --hostname H --url 127.0.0.1:2222 [OPTIONS]
    postern access ssh-config [--hostname H] [--short-lived-cert [--agent]] [OPTIONS]
    postern access ssh-gen --hostname H [OPTIONS]      key + short-lived certificate in ~/.postern
    postern access login H [--edge HOST:PORT] [--ca FILE]   log in through the browser, cache the token
    postern access token --app H                       print the cached token for H
    postern access logout [H]                          forget the token for H (or all tokens)
    postern access doctor H [OPTIONS]                  check each hop to H, name the one that fails
    postern access curl URL [CURL ARGS]                curl URL with the token for its host
                                                       (cf-access-token header; see access curl --help)

H may also be given as https://H (cloudflared's form); `-app=H` is accepted too.

Without a service token, `ssh` and `tcp` use the token cached for H (~/.postern/tokens/H.jwt,
mode 0600); when there is none, or the edge refuses it, they print a login URL on stderr,
open a browser (env BROWSER, else xdg-open) and wait for the login. Parallel connections to
the same H share one login. One login per zone: the login also caches a zone session
(~/.postern/tokens/ZONE.zone, 0600), from which tokens for the zone's other applications are
had without a browser while it lasts and their policy admits you; tokens about to expire are
renewed through it silently.

OPTIONS:
    --hostname H       the application's hostname (SNI and Host)
    --edge HOST:PORT   connect here instead of resolving H (env POSTERN_EDGE)
    --ca FILE          trust this CA besides the system roots (env POSTERN_CA)
    --no-browser       never open a browser for a login: only print its URL
    --id ID            service token client id (prefer env POSTERN_SERVICE_TOKEN_ID)
    --secret SECRET    service token secret (prefer env POSTERN_SERVICE_TOKEN_SECRET:
                       a flag is visible to other users in the process list)
                       With a service token, no browser is ever opened.
    --url ADDR         (tcp; ssh too, as in cloudflared) local address to listen on;
                       also -L/--listener (env TUNNEL_SERVICE_URL)
    -T, --tunnel-host  cloudflared's names for --hostname (env TUNNEL_SERVICE_HOSTNAME)
    --destination D    bastion (jump host) mode: the origin connects to D (host:port, e.g.
                       10.0.0.5:22 or db.internal:5432) if the application's allow-list
                       admits it (env TUNNEL_SERVICE_DESTINATION)
    --short-lived-cert (ssh) first put a short-lived SSH certificate for H (as ssh-gen makes
                       it) into the ssh-agent at SSH_AUTH_SOCK, where ssh finds it;
                       (ssh-config) print the block that gets one before each connection:
                       cloudflared's Match exec block, or with --agent the plain block
                       whose ProxyCommand uses the agent
    --logfile FILE     append the log to FILE too (created 0600)
    --log-format F     json or human (env POSTERN_LOG_FORMAT)
    --loglevel L       debug, info, warn, error or fatal (default warn; overrides RUST_LOG)
";

/// cloudflared (urfave/cli) also takes long flags with one dash: `-app=H`, `-hostname H`.
fn cloudflared_flags(args: Vec<OsString>) -> Vec<OsString> {
    const LONG: &[&str] = &[
        "app",
        "hostname",
        "edge",
        "ca",
        "id",
        "secret",
        "service-token-id",
        "service-token-secret",
        "url",
        "listener",
        "tunnel-host",
        "destination",
    ];
    args.into_iter()
        .map(|a| {
            let Some(s) = a.to_str() else { return a };
            let Some(rest) = s.strip_prefix('-').filter(|r| !r.starts_with('-')) else {
                return a;
            };
            let name = rest.split_once('=').map_or(rest, |(n, _)| n);
            if LONG.contains(&name) {
                OsString::from(format!("-{s}"))
            } else {
                a
            }
        })
        .collect()
}

fn cmd_access(mut args: Vec<OsString>) -> Res {
    if args.is_empty() {
        return Err(usage(format!("access: which subcommand?\n\n{ACCESS_HELP}")));
    }
    let sub = args.remove(0).to_string_lossy().into_owned();
    if matches!(sub.as_str(), "--help" | "-h" | "help") {
        print!("{ACCESS_HELP}");
        return Ok(ExitCode::SUCCESS);
    }
    if sub == "curl" {
        return access_curl(args);
    }
    let takes_positional = matches!(sub.as_str(), "login" | "token" | "logout" | "doctor");
    let mut args = cloudflared_flags(args);
    if matches!(sub.as_str(), "ssh" | "tcp") {
        // cloudflared's TUNNEL_SERVICE_HOSTNAME, _URL, _DESTINATION stand for their flags.
        let mut from_env = Vec::new();
        for e in cloudflared::from_env(cloudflared::ACCESS_ENV, &args, env_var) {
            from_env.extend([OsString::from(e.flag), OsString::from(e.value)]);
        }
        from_env.append(&mut args);
        args = from_env;
    }
    let mut p = parser(args);
    let (mut hostname, mut edge_addr, mut ca, mut id, mut secret, mut url) =
        (None, None, None, None, None, None);
    let mut destination: Option<String> = None;
    let mut short_lived_cert = false;
    let mut agent_block = false;
    let named = |slot: &mut Option<String>, v: String| -> Result<(), CliError> {
        if slot.replace(v).is_some() {
            return Err(usage(format!(
                "access {sub}: give the hostname once (--hostname, --app or as an argument)"
            )));
        }
        Ok(())
    };
    while let Some(arg) = p.next()? {
        match arg {
            // cloudflared: `-T`/`--tunnel-host` are `--hostname`; `-L`/`--listener` are `--url`.
            Long("hostname") | Long("app") | Long("tunnel-host") | Short('T') => {
                named(&mut hostname, string(p.value()?, "--hostname")?)?
            }
            Long("destination") => destination = Some(string(p.value()?, "--destination")?),
            Value(v) if takes_positional => named(&mut hostname, string(v, "hostname")?)?,
            Long("edge") => edge_addr = Some(string(p.value()?, "--edge")?),
            Long("ca") => ca = Some(PathBuf::from(p.value()?)),
            Long("id") | Long("service-token-id") => id = Some(string(p.value()?, "--id")?),
            Long("secret") | Long("service-token-secret") => {
                secret = Some(string(p.value()?, "--secret")?)
            }
            Long("url") | Long("listener") | Short('L') => url = Some(string(p.value()?, "--url")?),
            Long("short-lived-cert") if sub == "ssh-config" || sub == "ssh" => {
                short_lived_cert = true
            }
            Long("agent") if sub == "ssh-config" => agent_block = true,
            Long("no-browser") => access::login::set_no_browser(),
            Long("help") | Short('h') => {
                print!("{ACCESS_HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            other => {
                return Err(usage(format!(
                    "access {sub}: {}\n\n{ACCESS_HELP}",
                    other.unexpected()
                )))
            }
        }
    }
    // Bastion mode: the edge checks the destination against the application's allow-list
    // and the origin connects to it; parsed here so a typo fails before any connection.
    let destination = match destination {
        Some(_) if !matches!(sub.as_str(), "ssh" | "tcp") => {
            return Err(usage(format!(
                "access {sub}: --destination is for `access ssh` and `access tcp`"
            )))
        }
        Some(d) => Some(
            postern::proto::destination::Destination::parse(&d)
                .map_err(|why| {
                    usage(format!(
                        "access {sub}: --destination {}: {why}",
                        logging::untrusted(&d)
                    ))
                })?
                .to_string(),
        ),
        None => None,
    };
    // cloudflared's `access ssh` is its `access tcp`: with --url it listens.
    let sub = if sub == "ssh" && url.is_some() {
        "tcp".to_owned()
    } else {
        sub
    };
    if sub == "ssh-config" && short_lived_cert {
        return ssh_config_short_lived(
            hostname.as_deref(),
            edge_addr.as_deref(),
            ca.as_deref(),
            agent_block,
        );
    }
    if sub == "ssh-config" && agent_block {
        return Err(usage(
            "access ssh-config: --agent goes with --short-lived-cert",
        ));
    }
    if sub == "ssh-config" {
        return ssh_config(hostname.as_deref(), edge_addr.as_deref(), ca.as_deref());
    }
    let cache = || access::TokenCache::open_default().map_err(CliError::Home);
    if sub == "logout" {
        return access_logout(&cache()?, hostname.as_deref());
    }
    let (hostname, url_port) = match hostname {
        Some(h) => access::application(&h).map_err(|e| usage(format!("access {sub}: {e}")))?,
        None if sub == "token" => {
            return Err(usage(format!(
                "access token: --app is missing\n\n{ACCESS_HELP}"
            )))
        }
        None if sub == "login" => {
            return Err(usage(format!(
                "access login: which application? (postern access login H)\n\n{ACCESS_HELP}"
            )))
        }
        None => {
            return Err(usage(format!(
                "access {sub}: --hostname is missing\n\n{ACCESS_HELP}"
            )))
        }
    };
    if sub == "token" {
        let token = cache()?.load(&hostname).ok_or_else(|| {
            CliError::Failed(format!(
                "no valid token for {hostname}: run `postern access login {hostname}`"
            ))
        })?;
        println!("{}", token.expose());
        return Ok(ExitCode::SUCCESS);
    }
    let id = id
        .or_else(|| env_var("POSTERN_SERVICE_TOKEN_ID"))
        .or_else(|| env_var("TUNNEL_SERVICE_TOKEN_ID"));
    let secret = secret
        .or_else(|| env_var("POSTERN_SERVICE_TOKEN_SECRET"))
        .or_else(|| env_var("TUNNEL_SERVICE_TOKEN_SECRET"));
    let credentials = match (id, secret) {
        (Some(id), Some(secret)) => Credentials::ServiceToken {
            id,
            secret: Secret::from(secret),
        },
        (None, None) => Credentials::None,
        _ => return Err(usage("access: a service token needs both --id and --secret (or POSTERN_SERVICE_TOKEN_ID and POSTERN_SERVICE_TOKEN_SECRET)")),
    };
    let opts = AccessOptions {
        edge: edge_addr
            .or_else(|| env_var("POSTERN_EDGE"))
            .unwrap_or_else(|| format!("{hostname}:{}", url_port.unwrap_or(443))),
        hostname,
        extra_ca: ca.or_else(|| env_var("POSTERN_CA").map(PathBuf::from)),
        credentials,
        resume: None,
        resume_granted: None,
        destination,
    };
    match sub.as_str() {
        "ssh" => {
            if short_lived_cert {
                offer_certificate(&opts)?;
            }
            access::ssh(opts)?
        }
        "tcp" => {
            let url = url
                .ok_or_else(|| usage("access tcp: --url (the local listen address) is missing"))?;
            let listen: SocketAddr = url
                .trim_start_matches("tcp://")
                .parse()
                .map_err(|e| usage(format!("--url {url}: {e}")))?;
            access::tcp(opts, listen)?
        }
        "ssh-gen" => ssh_gen(&opts)?,
        "doctor" => {
            // One line per hop on stdout; the exit status says whether all were ok.
            let cache = access::TokenCache::open_default();
            if !access::doctor(opts, &cache) {
                return Ok(ExitCode::FAILURE);
            }
        }
        "login" => {
            let path = access::login_and_cache(&opts, &cache()?)?;
            eprintln!(
                "Successfully fetched your token for {} (cached in {})",
                opts.hostname,
                path.display()
            );
        }
        other => {
            return Err(usage(format!(
                "access: unknown subcommand {other:?}\n\n{ACCESS_HELP}"
            )))
        }
    }
    Ok(ExitCode::SUCCESS)
}

const ACCESS_CURL_HELP: &str = "\
USAGE: postern access curl [--edge HOST:PORT] [--ca FILE] [--no-browser] URL [CURL ARGS...]

Runs `curl URL CURL ARGS...` with the app token for URL's host in a cf-access-token header
(as cloudflared's access curl), for an HTTP service that checks it. The token comes as
`access ssh` gets one: cached, from the zone session, or through the browser. curl reads
the header from a 0600 file beside the cached token, never from its command line; the exit
status is curl's. The edge is --edge (env POSTERN_EDGE), else URL's host on port 443.
";

/// `postern access curl`: see [`ACCESS_CURL_HELP`]. postern's flags come before URL;
/// everything after it is curl's.
fn access_curl(args: Vec<OsString>) -> Res {
    let mut p = parser(args);
    let (mut edge, mut ca, mut url) = (None, None, None);
    while let Some(arg) = p.next()? {
        match arg {
            Long("edge") => edge = Some(string(p.value()?, "--edge")?),
            Long("ca") => ca = Some(PathBuf::from(p.value()?)),
            Long("no-browser") => access::login::set_no_browser(),
            Long("help") | Short('h') => {
                print!("{ACCESS_CURL_HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            Value(v) => {
                url = Some(string(v, "URL")?);
                break;
            }
            other => {
                return Err(usage(format!(
                    "access curl: {} (postern's flags go before URL, curl's after it)\n\n{ACCESS_CURL_HELP}",
                    other.unexpected()
                )))
            }
        }
    }
    let url =
        url.ok_or_else(|| usage(format!("access curl: URL is missing\n\n{ACCESS_CURL_HELP}")))?;
    let (hostname, _) =
        access::application(&url).map_err(|e| usage(format!("access curl: {e}")))?;
    let curl_args: Vec<OsString> = p.raw_args()?.collect();
    if let Some(why) = access::curl::refusal(&url, &curl_args) {
        return Err(usage(format!("access curl: {why}")));
    }
    let cache = access::TokenCache::open_default().map_err(CliError::Home)?;
    let edge = edge.or_else(|| env_var("POSTERN_EDGE"));
    let edge_given = edge.is_some();
    let opts = AccessOptions {
        // URL's port is the HTTP service's, not the edge's.
        edge: edge.unwrap_or_else(|| format!("{hostname}:443")),
        hostname,
        extra_ca: ca.or_else(|| env_var("POSTERN_CA").map(PathBuf::from)),
        credentials: Credentials::None,
        resume: None,
        resume_granted: None,
        destination: None,
    };
    let code = access::curl::curl(&opts, &cache, &url, &curl_args, edge_given)?;
    Ok(ExitCode::from(code))
}

/// `postern access logout [H]`: forget one application's token, or all of them.
fn access_logout(cache: &access::TokenCache, hostname: Option<&str>) -> Res {
    match hostname {
        Some(h) => {
            let (h, _) =
                access::application(h).map_err(|e| usage(format!("access logout: {e}")))?;
            cache.remove(&h).map_err(AccessError::from)?;
            eprintln!("Removed the cached token for {h}");
            // The zone session would mint the next token without a browser: a logout from
            // one application of a zone logs out of the zone (its other tokens stay until
            // they expire or `access logout` without a hostname).
            let mut zone = Some(h.as_str());
            while let Some(z) = zone {
                let had = cache
                    .load_zone_session(z)
                    .is_some_and(|found| found.zone == z);
                cache.remove_zone_session(z).map_err(AccessError::from)?;
                if had {
                    eprintln!("Removed the zone session for {z}: the next login opens a browser");
                }
                zone = z.split_once('.').map(|(_, parent)| parent);
            }
        }
        None => {
            let n = cache.remove_all().map_err(AccessError::from)?;
            eprintln!(
                "Removed {n} cached token{} from {}",
                if n == 1 { "" } else { "s" },
                cache.dir().display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn current_exe() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "postern".into())
}

fn ssh_config(hostname: Option<&str>, edge_addr: Option<&str>, ca: Option<&Path>) -> Res {
    let exe = current_exe();
    let mut proxy = format!("{exe} access ssh --hostname %h");
    if let Some(e) = edge_addr {
        proxy.push_str(&format!(" --edge {e}"));
    }
    if let Some(c) = ca {
        proxy.push_str(&format!(" --ca {}", c.display()));
    }
    // The hint goes to stderr so `postern access ssh-config >> ~/.ssh/config` just works.
    eprintln!(
        "Add to your ~/.ssh/config (the first connection opens a browser to log in, unless \
         POSTERN_SERVICE_TOKEN_ID/SECRET are set; `postern access login H` logs in ahead):\n"
    );
    println!("Host {}", hostname.unwrap_or("*.example.com"));
    println!("  ProxyCommand {proxy}");
    Ok(ExitCode::SUCCESS)
}

/// `postern access ssh-gen --hostname H`: a key and a short-lived certificate in ~/.postern.
fn ssh_gen(opts: &AccessOptions) -> Result<(), CliError> {
    let dir = postern::io::postern_dir("set HOME: ssh-gen writes its files to ~/.postern")
        .map_err(CliError::Home)?;
    let cache = match opts.credentials {
        Credentials::None => Some(access::TokenCache::open_default().map_err(CliError::Home)?),
        _ => None,
    };
    let files = access::sshgen::ssh_gen(opts, cache.as_ref(), &dir)?;
    if files.fetched {
        eprintln!(
            "Wrote {} and its certificate {} (valid for {} s)",
            files.key.display(),
            files.certificate.display(),
            files.valid_before.saturating_sub(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            )
        );
    }
    Ok(())
}

/// `access ssh --short-lived-cert`: before relaying, a certificate (kept or fetched as
/// `ssh-gen` does) goes to the user's ssh-agent, where ssh finds it at authentication.
fn offer_certificate(opts: &AccessOptions) -> Result<(), CliError> {
    let socket = env_var("SSH_AUTH_SOCK").ok_or_else(|| {
        CliError::Failed(
            "--short-lived-cert offers the certificate through an ssh-agent, and SSH_AUTH_SOCK \
             is not set: start one (eval \"$(ssh-agent)\"), or use the Match block of \
             `postern access ssh-config --short-lived-cert` (without --agent)"
                .into(),
        )
    })?;
    let dir = postern::io::postern_dir("set HOME: the certificate's files go to ~/.postern")
        .map_err(CliError::Home)?;
    let cache = match opts.credentials {
        Credentials::None => Some(access::TokenCache::open_default().map_err(CliError::Home)?),
        _ => None,
    };
    let files = access::sshgen::ssh_gen(opts, cache.as_ref(), &dir)?;
    access::sshgen::offer_to_agent(&files, Path::new(&socket)).map_err(|e| {
        CliError::Failed(format!(
            "cannot offer the short-lived certificate to the ssh-agent: {e}; or use the Match \
             block of `postern access ssh-config --short-lived-cert` (without --agent)"
        ))
    })
}

/// `ssh-config --short-lived-cert`: cloudflared's block, with a certificate made before each
/// connection by `access ssh-gen` (Match exec) and offered by ssh from ~/.postern; with
/// `--agent`, the plain block whose ProxyCommand puts the certificate in the ssh-agent.
fn ssh_config_short_lived(
    hostname: Option<&str>,
    edge_addr: Option<&str>,
    ca: Option<&Path>,
    agent: bool,
) -> Res {
    let exe = current_exe();
    let mut flags = String::new();
    if let Some(e) = edge_addr {
        flags.push_str(&format!(" --edge {e}"));
    }
    if let Some(c) = ca {
        flags.push_str(&format!(" --ca {}", c.display()));
    }
    let host = hostname.unwrap_or("*.example.com");
    if agent {
        eprintln!(
            "Add to your ~/.ssh/config (each connection first puts a short-lived certificate in \
             your ssh-agent, SSH_AUTH_SOCK; the first one may open a browser to log in):\n"
        );
        println!("Host {host}");
        println!("  ProxyCommand {exe} access ssh --hostname %h --short-lived-cert{flags}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "Add to your ~/.ssh/config (each connection first refreshes a short-lived certificate \
         in ~/.postern; the first one may open a browser to log in):\n"
    );
    println!("Match host {host} exec \"{exe} access ssh-gen --hostname %h{flags}\"");
    println!("  ProxyCommand {exe} access ssh --hostname %h{flags}");
    println!("  IdentityFile ~/.postern/%h-key");
    println!("  CertificateFile ~/.postern/%h-key-cert.pub");
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------------------------- service

const SERVICE_HELP: &str = "\
postern service: run the tunnel or the edge as a hardened systemd service

USAGE:
    postern service install tunnel --hostname H --url ssh://localhost:22 [TUNNEL OPTIONS] [OPTIONS]
    postern service install tunnel --config /etc/postern/config.json [OPTIONS]   (a named tunnel)
    postern service install edge --config /etc/postern/edge.json [OPTIONS]
    postern service install TOKEN [--url URL] [--token-file FILE] [OPTIONS]
                          a tunnel from its token (`postern tunnel token NAME`): the token goes
                          to FILE (default /etc/postern/postern-tunnel.env, mode 0600) and the
                          unit runs `tunnel run` with it as EnvironmentFile (not in `ps`);
                          --url defaults to ssh://localhost:22
    postern service uninstall [tunnel|edge] [--name NAME] [--unit-dir DIR] [--no-disable]

install writes postern-tunnel.service (postern-tunnel-NAME.service with --name) or
postern-edge.service, running this binary by its absolute path with the given arguments
(paths made absolute). When systemd is running it then runs `systemctl daemon-reload` and
`systemctl enable --now UNIT`; otherwise it prints those commands.

TUNNEL OPTIONS (as for `postern tunnel`):
    --hostname H          the hostname to register
    --url URL             the local service: ssh://host[:port], tcp://host:port or host:port
    --origincert FILE     origin credential (default /etc/postern/cert.pem), readable by --user
    --edge HOST:PORT      connect here (default: the edge in the credential, else H:443); repeat for a pool
    --ca FILE             trust this CA for the edge's certificate too
    --ha-connections N    connections to hold (default 4)
    --grace-period SECS   drain time on stop (default 30; the unit allows 5 s more)
    --name NAME           several tunnels on one host: postern-tunnel-NAME.service
    --metrics ADDR        serve /metrics and /ready on ADDR (e.g. 127.0.0.1:2000)

OPTIONS:
    --config FILE         (edge) its JSON config; state_dir and audit_log are made writable
                          (tunnel) a named tunnel's config: the unit runs `tunnel --config FILE run`
    --unit-dir DIR        where the unit goes (default /etc/systemd/system)
    --user NAME           run as this user (default postern; created as a system user without
                          shell or home when missing, if run as root)
    --no-enable           write the unit only: no useradd, no systemctl
    --no-disable          (uninstall) remove the file only: no systemctl

uninstall also removes the token file of a unit from `service install TOKEN` (it holds the
tunnel's private key).
";

fn cmd_service(mut args: Vec<OsString>) -> Res {
    use postern::service::{self, EdgeArgs, InstallOptions, InstallWhat, Role, TunnelArgs};
    if args.is_empty() {
        return Err(usage(format!(
            "service: install or uninstall?\n\n{SERVICE_HELP}"
        )));
    }
    let verb = args.remove(0).to_string_lossy().into_owned();
    match verb.as_str() {
        "--help" | "-h" | "help" => {
            print!("{SERVICE_HELP}");
            return Ok(ExitCode::SUCCESS);
        }
        "install" | "uninstall" => {}
        other => {
            return Err(usage(format!(
                "service: unknown verb {other:?}\n\n{SERVICE_HELP}"
            )))
        }
    }
    let mut p = parser(args);
    let mut role = None;
    let mut t = TunnelArgs::default();
    // `service install TOKEN` (cloudflared's form for a tunnel run from its token).
    let (mut token, mut token_file): (Option<Secret>, Option<PathBuf>) = (None, None);
    let (mut hostname, mut url, mut config) = (None, None, None);
    let mut unit_dir = PathBuf::from(service::DEFAULT_UNIT_DIR);
    let mut user = service::DEFAULT_USER.to_owned();
    let (mut enable, mut disable) = (true, true);
    while let Some(arg) = p.next()? {
        match arg {
            Value(v) if role.is_none() => {
                role = Some(match string(v, "role")?.as_str() {
                    "tunnel" => Role::Tunnel,
                    "edge" => Role::Edge,
                    // No role is that long: a token (checked below, without echoing it).
                    other if verb == "install" && other.len() > 64 => {
                        token = Some(Secret::from(other.to_owned()));
                        Role::Tunnel
                    }
                    other => {
                        return Err(usage(format!(
                            "service {verb}: {other:?} is not tunnel or edge\n\n{SERVICE_HELP}"
                        )))
                    }
                })
            }
            Long("hostname") => hostname = Some(string(p.value()?, "--hostname")?),
            Long("url") => url = Some(string(p.value()?, "--url")?),
            Long("origincert") => t.origincert = Some(PathBuf::from(p.value()?)),
            Long("edge") => t.edge.push(string(p.value()?, "--edge")?),
            Long("ca") => t.ca = Some(PathBuf::from(p.value()?)),
            Long("ha-connections") => {
                t.ha_connections = Some(
                    p.value()?
                        .parse()
                        .map_err(|e| usage(format!("--ha-connections: {e}")))?,
                )
            }
            Long("grace-period") => {
                let v = string(p.value()?, "--grace-period")?;
                t.grace_secs = Some(
                    v.trim_end_matches('s')
                        .parse()
                        .map_err(|e| usage(format!("--grace-period: {e}")))?,
                );
            }
            Long("name") => t.name = Some(string(p.value()?, "--name")?),
            Long("metrics") => t.metrics = Some(string(p.value()?, "--metrics")?),
            Long("config") => config = Some(PathBuf::from(p.value()?)),
            Long("unit-dir") => unit_dir = PathBuf::from(p.value()?),
            Long("token-file") => token_file = Some(PathBuf::from(p.value()?)),
            Long("user") => user = string(p.value()?, "--user")?,
            Long("no-enable") => enable = false,
            Long("no-disable") => disable = false,
            Long("help") | Short('h') => {
                print!("{SERVICE_HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            other => {
                return Err(usage(format!(
                    "service {verb}: {}\n\n{SERVICE_HELP}",
                    other.unexpected()
                )))
            }
        }
    }
    let mut say = |line: String| println!("{line}");
    if verb == "uninstall" {
        service::uninstall(
            &service::UninstallOptions {
                unit_dir,
                role,
                name: t.name,
                disable,
            },
            &mut say,
        )
        .map_err(|error| CliError::Service {
            verb: "uninstall",
            error,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let what = match role {
        Some(Role::Tunnel) if token.is_some() => {
            if hostname.is_some() || config.is_some() || t.origincert.is_some() {
                return Err(usage(
                    "service install TOKEN: the token holds the tunnel's credentials; \
                     --hostname, --config and --origincert do not apply",
                ));
            }
            let token = token.expect("bug: checked above");
            let (creds, _) = TunnelCredentials::from_token(token.expose())
                .map_err(|e| usage(format!("service install TOKEN: {e}")))?;
            let stem = service::unit_name(Role::Tunnel, t.name.as_deref())
                .map_err(|error| CliError::Service {
                    verb: "install",
                    error,
                })?
                .trim_end_matches(".service")
                .to_owned();
            let file =
                token_file.unwrap_or_else(|| PathBuf::from(format!("/etc/postern/{stem}.env")));
            write_token_file(&file, &token)?;
            println!(
                "wrote the token of tunnel {} to {} (mode 0600, read by systemd only)",
                creds.name,
                file.display()
            );
            t.token_file = Some(file);
            t.url = url.unwrap_or_default();
            InstallWhat::Tunnel(Box::new(t))
        }
        Some(Role::Tunnel) if config.is_some() => {
            if hostname.is_some() || url.is_some() || t.origincert.is_some() {
                return Err(usage(
                    "service install tunnel: --config runs a named tunnel from its config \
                     file; --hostname, --url and --origincert are for the quick form",
                ));
            }
            t.config = config;
            InstallWhat::Tunnel(Box::new(t))
        }
        Some(Role::Tunnel) => {
            t.hostname = hostname.ok_or_else(|| {
                usage(format!(
                    "service install tunnel: --hostname is missing\n\n{SERVICE_HELP}"
                ))
            })?;
            t.url = url.ok_or_else(|| {
                usage(format!(
                    "service install tunnel: --url is missing\n\n{SERVICE_HELP}"
                ))
            })?;
            InstallWhat::Tunnel(Box::new(t))
        }
        Some(Role::Edge) => {
            let tunnel_flags = hostname.is_some()
                || url.is_some()
                || t.origincert.is_some()
                || !t.edge.is_empty()
                || t.ca.is_some()
                || t.ha_connections.is_some()
                || t.grace_secs.is_some()
                || t.metrics.is_some()
                || t.name.is_some();
            if tunnel_flags {
                return Err(usage(
                    "service install edge: only --config (and --unit-dir, --user, --no-enable) apply",
                ));
            }
            InstallWhat::Edge(EdgeArgs {
                config: config.ok_or_else(|| {
                    usage(format!(
                        "service install edge: --config is missing\n\n{SERVICE_HELP}"
                    ))
                })?,
            })
        }
        None => {
            return Err(usage(format!(
                "service install: tunnel or edge?\n\n{SERVICE_HELP}"
            )))
        }
    };
    service::install(
        &what,
        &InstallOptions {
            unit_dir,
            user,
            enable,
        },
        &mut say,
    )
    .map_err(|error| CliError::Service {
        verb: "install",
        error,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The `EnvironmentFile=` of a unit that runs a tunnel from its token: `TUNNEL_TOKEN=…`,
/// mode 0600 from creation.
fn write_token_file(path: &Path, token: &Secret) -> Result<(), CliError> {
    let failed = |error| CliError::File {
        path: path.to_owned(),
        error,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let line = format!("TUNNEL_TOKEN={}\n", token.expose());
    postern::io::files::write_file_atomic(path, line.as_bytes(), 0o600).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_kind_prints_its_own_message() {
        assert_eq!(
            CliError::Refused("hostname a.b is already registered".into()).to_string(),
            "tunnel refused by the edge: hostname a.b is already registered"
        );
        assert_eq!(
            CliError::File {
                path: PathBuf::from("/x/cert.pem"),
                error: io::Error::from(io::ErrorKind::PermissionDenied),
            }
            .to_string(),
            format!(
                "/x/cert.pem: {}",
                io::Error::from(io::ErrorKind::PermissionDenied)
            )
        );
        assert_eq!(
            usage("edge: --dev and --config").to_string(),
            "edge: --dev and --config"
        );
        let access: CliError = AccessError::InvalidPort("h:x".into()).into();
        assert!(matches!(access, CliError::Access(_)));
        assert_eq!(access.to_string(), "invalid port in \"h:x\"");
    }

    #[test]
    fn command_line_mistakes_are_usage_errors() {
        let mut p = parser(vec!["--nope".into()]);
        let e: CliError = match p.next() {
            Ok(Some(arg)) => arg.unexpected().into(),
            other => panic!("{other:?}"),
        };
        assert!(matches!(e, CliError::Usage(_)), "{e:?}");
        assert!(e.to_string().contains("--nope"), "{e}");
        let e = string(OsString::from("ok"), "--flag").unwrap();
        assert_eq!(e, "ok");
    }

    #[test]
    fn tunnel_help_lists_every_ignored_flag_and_variable() {
        for i in cloudflared::IGNORED {
            let flag = format!("--{}", i.flag);
            let listed = TUNNEL_HELP
                .split(|c: char| c == ',' || c.is_whitespace())
                .any(|w| w == flag);
            assert!(listed, "{flag} is not in `tunnel --help`");
            for var in i.vars {
                assert!(TUNNEL_HELP.contains(var), "{var} is not in `tunnel --help`");
            }
        }
    }
}
