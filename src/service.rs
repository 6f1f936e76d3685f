//! `postern service install|uninstall`: run the tunnel or the edge as a hardened systemd service
//! (cloudflared's `cloudflared service install`).
//!
//! Two halves:
//! - **the unit** (pure): a [`UnitSpec`] can only be built from checked input (absolute paths,
//!   no newlines or control characters, valid unit and user names), and [`render_unit`] turns it
//!   into the unit file's text without failing and without touching the OS;
//! - **the actions** ([`install`], [`uninstall`]): make paths absolute, read the edge's config
//!   for the directories it writes, look up (or create) the service user, write the unit
//!   atomically, and run `systemctl` when systemd is running here (`/run/systemd/system`
//!   exists); otherwise they print the commands to run.
//!
//! ```text
//! install:   args ──absolute paths, edge config──▶ UnitSpec ──render_unit──▶ unit file
//!                                                                             └─▶ systemctl daemon-reload
//!                                                                                 systemctl enable --now UNIT
//! uninstall: systemctl disable --now UNIT ─▶ remove the file ─▶ systemctl daemon-reload
//! ```
//!
//! Every `ExecStart=` argument is double-quoted per systemd.syntax(7): `\` and `"` are
//! backslash-escaped, `%` (specifiers) becomes `%%` and `$` (environment expansion) becomes
//! `$$`, so the service runs exactly the arguments given here. Newlines and other control
//! characters are refused rather than escaped.

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// Where units go unless `--unit-dir` says otherwise.
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";
/// The account the service runs as unless `--user` says otherwise.
pub const DEFAULT_USER: &str = "postern";
/// Where the tunnel's origin credential is expected when `--origincert` is not given: the
/// service user has no home directory, so `~/.postern/cert.pem` would not be found.
pub const DEFAULT_ORIGINCERT: &str = "/etc/postern/cert.pem";
/// `postern tunnel --grace-period` default; the unit's stop timeout is derived from it.
pub const TUNNEL_DEFAULT_GRACE_SECS: u64 = 30;
/// The edge stops at once on SIGTERM; this is its allowance to close sockets and flush logs.
pub const EDGE_STOP_GRACE_SECS: u64 = 5;
/// systemd waits this much longer than the grace period before it sends SIGKILL.
pub const STOP_MARGIN_SECS: u64 = 5;
/// The edge's state directory under /var/lib, created by systemd (`StateDirectory=`).
const STATE_DIRECTORY: &str = "postern";
/// The unit's `Documentation=`.
// TODO(lead): the project's public URL once there is one.
pub const DOCUMENTATION: &str = "https://example.invalid/postern#operating-postern";
/// Directory where systemd keeps its runtime state when it is PID 1 (sd_booted(3)).
const SYSTEMD_RUNNING_MARKER: &str = "/run/systemd/system";

/// Which role the unit runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Tunnel,
    Edge,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Tunnel => "tunnel",
            Role::Edge => "edge",
        }
    }
}

/// What `postern service install tunnel` was given (paths may still be relative).
#[derive(Clone, Debug, Default)]
pub struct TunnelArgs {
    pub hostname: String,
    pub url: String,
    /// A named tunnel's config file: the unit runs `tunnel --config FILE run` instead of
    /// `--hostname`/`--url`.
    pub config: Option<PathBuf>,
    /// Files the config names (credentials, CA): they must be readable, outside `/tmp`.
    pub config_files: Vec<PathBuf>,
    pub origincert: Option<PathBuf>,
    /// `--edge`, as often as given (an edge pool).
    pub edge: Vec<String>,
    pub ca: Option<PathBuf>,
    pub ha_connections: Option<usize>,
    pub grace_secs: Option<u64>,
    /// `--metrics ADDR`, passed on to the tunnel.
    pub metrics: Option<String>,
    /// `--name`: `postern-tunnel-NAME.service`, for several tunnels on one host.
    pub name: Option<String>,
    /// `service install TOKEN`: the file (0600) holding `TUNNEL_TOKEN=…`; the unit runs
    /// `tunnel run` with it as its `EnvironmentFile=`, so the token is not on the command
    /// line where `ps` shows it. `url`, when not empty, is passed as `--url`.
    pub token_file: Option<PathBuf>,
}

/// What `postern service install edge` was given.
#[derive(Clone, Debug, Default)]
pub struct EdgeArgs {
    pub config: PathBuf,
}

/// Directories and files the edge's config file names, as far as the unit cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EdgePaths {
    /// `state_dir`: written (origin CA, tokens, hostnames, default audit log).
    pub state_dir: Option<PathBuf>,
    /// `audit_log`: appended to.
    pub audit_log: Option<PathBuf>,
    /// Files only read: zone certificates and keys, the OIDC client secret file.
    pub read: Vec<PathBuf>,
}

/// A checked description of one unit. Built only by [`UnitSpec::tunnel`] and
/// [`UnitSpec::edge`], which refuse anything [`render_unit`] could not write faithfully.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitSpec {
    role: Role,
    unit_name: String,
    exe: PathBuf,
    args: Vec<String>,
    user: String,
    group: String,
    stop_timeout_secs: u64,
    /// Extra writable paths (`ReadWritePaths=`), beyond the state directory systemd makes.
    read_write: Vec<PathBuf>,
    /// The audit log lives under /var/log/postern: let systemd create it (`LogsDirectory=`).
    logs_directory: bool,
    /// Some path the service uses is under /home, /root or /run/user.
    uses_home: bool,
    /// `EnvironmentFile=` (the tunnel token).
    environment_file: Option<PathBuf>,
}

/// Why a unit was not written or removed. Each message says what to change.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServiceError {
    /// A value contains a newline or another control character, which cannot be written to a
    /// unit file faithfully.
    ControlCharacter { what: String },
    /// A value is not valid UTF-8.
    NotUtf8 { what: String },
    /// A path that must be absolute is not (a bug in the caller: the actions make paths
    /// absolute first).
    NotAbsolute { what: String, path: PathBuf },
    /// A path used in a directive other than `ExecStart=` contains whitespace, quotes or
    /// backslashes.
    UnsupportedPath { what: String, path: PathBuf },
    /// `--name` is not usable in a unit name.
    BadName(String),
    /// `--user` is not a valid user name.
    BadUser(String),
    /// A tunnel argument is invalid.
    BadArgument(String),
    /// The edge's config file cannot be read or is not JSON.
    Config { path: PathBuf, why: String },
    /// A file operation failed.
    Io { what: String, err: io::Error },
    /// A command (`systemctl`, `useradd`) failed.
    Command { command: String, why: String },
    /// `uninstall` found no unit to remove, or more than one.
    NotInstalled(String),
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::ControlCharacter { what } => write!(
                f,
                "{what} contains a newline or control character: a unit file cannot carry it"
            ),
            ServiceError::NotUtf8 { what } => write!(f, "{what} is not valid UTF-8"),
            ServiceError::NotAbsolute { what, path } => {
                write!(f, "{what} {} is not an absolute path", path.display())
            }
            ServiceError::UnsupportedPath { what, path } => write!(
                f,
                "{what} {} contains whitespace, quotes or backslashes: move it to a plainer path",
                path.display()
            ),
            ServiceError::BadName(n) => write!(
                f,
                "--name {n:?}: use letters, digits, '-', '_' and '.' (at most 64, not starting with '-' or '.')"
            ),
            ServiceError::BadUser(u) => write!(
                f,
                "--user {u:?}: use a user name of letters, digits, '-' and '_' (at most 31, not starting with a digit or '-')"
            ),
            ServiceError::BadArgument(why) => f.write_str(why),
            ServiceError::Config { path, why } => write!(f, "{}: {why}", path.display()),
            ServiceError::Io { what, err } => write!(f, "{what}: {err}"),
            ServiceError::Command { command, why } => write!(f, "`{command}` failed: {why}"),
            ServiceError::NotInstalled(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ServiceError {}

// ------------------------------------------------------------------------------- the unit (pure)

/// `postern-tunnel.service`, `postern-tunnel-NAME.service` or `postern-edge.service`.
pub fn unit_name(role: Role, name: Option<&str>) -> Result<String, ServiceError> {
    match name {
        None => Ok(format!("postern-{}.service", role.as_str())),
        Some(n) if valid_instance_name(n) => Ok(format!("postern-{}-{n}.service", role.as_str())),
        Some(n) => Err(ServiceError::BadName(n.to_owned())),
    }
}

fn valid_instance_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with(['-', '.'])
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// systemd's strict user names (and useradd's): `[A-Za-z_][A-Za-z0-9_-]*`, at most 31 bytes.
fn valid_user_name(u: &str) -> bool {
    let mut bytes = u.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && u.len() <= 31
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_text(what: &str, value: &str) -> Result<(), ServiceError> {
    if value.chars().any(char::is_control) {
        return Err(ServiceError::ControlCharacter { what: what.into() });
    }
    Ok(())
}

fn check_path<'a>(what: &str, path: &'a Path) -> Result<&'a str, ServiceError> {
    let text = path
        .to_str()
        .ok_or_else(|| ServiceError::NotUtf8 { what: what.into() })?;
    check_text(what, text)?;
    if !path.is_absolute() {
        return Err(ServiceError::NotAbsolute {
            what: what.into(),
            path: path.to_owned(),
        });
    }
    Ok(text)
}

/// A path for a directive other than `ExecStart=` (written unquoted, `%` escaped).
fn check_plain_path(what: &str, path: &Path) -> Result<(), ServiceError> {
    let text = check_path(what, path)?;
    if text
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\'))
    {
        return Err(ServiceError::UnsupportedPath {
            what: what.into(),
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn under_home(path: &Path) -> bool {
    ["/home", "/root", "/run/user"]
        .iter()
        .any(|h| path.starts_with(h))
}

fn check_user(user: &str, group: &str) -> Result<(), ServiceError> {
    if !valid_user_name(user) {
        return Err(ServiceError::BadUser(user.into()));
    }
    if !valid_user_name(group) {
        return Err(ServiceError::BadUser(group.into()));
    }
    Ok(())
}

impl UnitSpec {
    /// The unit for `postern tunnel`. `exe` and every path in `t` must be absolute.
    pub fn tunnel(
        exe: &Path,
        t: &TunnelArgs,
        user: &str,
        group: &str,
    ) -> Result<UnitSpec, ServiceError> {
        check_path("the postern binary", exe)?;
        check_user(user, group)?;
        let unit_name = unit_name(Role::Tunnel, t.name.as_deref())?;
        let (mut args, mut paths) = match &t.config {
            // A tunnel from its token: the token comes from the environment file.
            None if t.token_file.is_some() => {
                let file = t.token_file.as_deref().unwrap_or(Path::new(""));
                check_path("the token file", file)?;
                check_text("--url", &t.url)?;
                let mut args = vec!["tunnel".to_owned()];
                if !t.url.is_empty() {
                    args.extend(["--url".to_owned(), t.url.clone()]);
                }
                (args, vec![exe.to_owned(), file.to_owned()])
            }
            // A named tunnel: everything else is in the config file.
            Some(config) => {
                let mut paths = vec![exe.to_owned(), config.clone()];
                for p in &t.config_files {
                    check_path("a file named in the config", p)?;
                    paths.push(p.clone());
                }
                (
                    vec![
                        "tunnel".to_owned(),
                        "--config".to_owned(),
                        check_path("--config", config)?.to_owned(),
                    ],
                    paths,
                )
            }
            None => {
                check_text("--hostname", &t.hostname)?;
                check_text("--url", &t.url)?;
                if t.hostname.is_empty() {
                    return Err(ServiceError::BadArgument("--hostname is missing".into()));
                }
                if t.url.is_empty() {
                    return Err(ServiceError::BadArgument("--url is missing".into()));
                }
                let origincert = t
                    .origincert
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_ORIGINCERT));
                let args = vec![
                    "tunnel".to_owned(),
                    "--hostname".to_owned(),
                    t.hostname.clone(),
                    "--url".to_owned(),
                    t.url.clone(),
                    "--origincert".to_owned(),
                    check_path("--origincert", &origincert)?.to_owned(),
                ];
                (args, vec![exe.to_owned(), origincert])
            }
        };
        for edge in &t.edge {
            check_text("--edge", edge)?;
            args.extend(["--edge".to_owned(), edge.clone()]);
        }
        if let Some(ca) = &t.ca {
            args.extend(["--ca".to_owned(), check_path("--ca", ca)?.to_owned()]);
            paths.push(ca.clone());
        }
        if let Some(n) = t.ha_connections {
            if !(1..=16).contains(&n) {
                return Err(ServiceError::BadArgument(
                    "--ha-connections must be between 1 and 16".into(),
                ));
            }
            args.extend(["--ha-connections".to_owned(), n.to_string()]);
        }
        if let Some(g) = t.grace_secs {
            args.extend(["--grace-period".to_owned(), g.to_string()]);
        }
        if let Some(m) = &t.metrics {
            check_text("--metrics", m)?;
            args.extend(["--metrics".to_owned(), m.clone()]);
        }
        if t.config.is_some() || t.token_file.is_some() {
            args.push("run".to_owned());
        }
        let grace = t.grace_secs.unwrap_or(TUNNEL_DEFAULT_GRACE_SECS);
        Ok(UnitSpec {
            role: Role::Tunnel,
            unit_name,
            exe: exe.to_owned(),
            args,
            user: user.into(),
            group: group.into(),
            stop_timeout_secs: grace.saturating_add(STOP_MARGIN_SECS),
            read_write: Vec::new(),
            logs_directory: false,
            uses_home: paths.iter().any(|p| under_home(p)),
            environment_file: t.token_file.clone(),
        })
    }

    /// The unit for `postern edge --config CONFIG`. `exe`, `config` and every path in `paths`
    /// must be absolute.
    pub fn edge(
        exe: &Path,
        config: &Path,
        paths: &EdgePaths,
        user: &str,
        group: &str,
    ) -> Result<UnitSpec, ServiceError> {
        check_path("the postern binary", exe)?;
        check_user(user, group)?;
        let args = vec![
            "edge".to_owned(),
            "--config".to_owned(),
            check_path("--config", config)?.to_owned(),
        ];
        let state = Path::new("/var/lib").join(STATE_DIRECTORY);
        let logs = Path::new("/var/log").join(STATE_DIRECTORY);
        let mut read_write = Vec::new();
        if let Some(dir) = &paths.state_dir {
            check_plain_path("state_dir", dir)?;
            if !dir.starts_with(&state) {
                read_write.push(dir.clone());
            }
        }
        let mut logs_directory = false;
        if let Some(log) = &paths.audit_log {
            check_plain_path("audit_log", log)?;
            let dir = log.parent().unwrap_or(Path::new("/")).to_owned();
            let in_state = dir.starts_with(&state)
                || paths.state_dir.as_ref().is_some_and(|s| dir.starts_with(s));
            if dir.starts_with(&logs) {
                logs_directory = true;
            } else if !in_state && !read_write.contains(&dir) {
                read_write.push(dir);
            }
        }
        let mut all = vec![exe.to_owned(), config.to_owned()];
        all.extend(paths.state_dir.iter().cloned());
        all.extend(paths.audit_log.iter().cloned());
        for p in &paths.read {
            check_path("a file named in the config", p)?;
            all.push(p.clone());
        }
        Ok(UnitSpec {
            role: Role::Edge,
            unit_name: unit_name(Role::Edge, None)?,
            exe: exe.to_owned(),
            args,
            user: user.into(),
            group: group.into(),
            stop_timeout_secs: EDGE_STOP_GRACE_SECS + STOP_MARGIN_SECS,
            read_write,
            logs_directory,
            uses_home: all.iter().any(|p| under_home(p)),
            environment_file: None,
        })
    }

    /// `postern-tunnel.service` and so on.
    pub fn unit_name(&self) -> &str {
        &self.unit_name
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The directories `ReadWritePaths=` names: they must exist, writable by the user.
    pub fn read_write_paths(&self) -> &[PathBuf] {
        &self.read_write
    }
}

/// One `ExecStart=` word: double-quoted, with `\` `"` escaped and `%` `$` doubled.
/// The text was checked for control characters when the spec was built.
fn exec_word(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A checked plain path for a directive that expands specifiers.
fn directive_path(p: &Path) -> String {
    p.to_string_lossy().replace('%', "%%")
}

/// `LimitNOFILE=` of both units (soft and hard): the edge's default `limits.max_connections`
/// (50000) plus its reserve, rounded up. More needs `systemctl edit` and a larger value.
pub const UNIT_OPEN_FILES: u64 = 65536;

/// The unit file's text. Pure: the same spec always gives the same bytes.
pub fn render_unit(spec: &UnitSpec) -> String {
    let mut exec = exec_word(&spec.exe.to_string_lossy());
    for a in &spec.args {
        exec.push(' ');
        exec.push_str(&exec_word(a));
    }
    let (description, after) = match spec.role {
        Role::Tunnel => ("postern tunnel (origin connector)", "network-online.target"),
        Role::Edge => ("postern edge", "network-online.target"),
    };
    let mut u = String::new();
    let mut line = |s: &str| {
        u.push_str(s);
        u.push('\n');
    };
    line("# Written by `postern service install`; `postern service uninstall` removes it.");
    line("[Unit]");
    line(&format!("Description={description}"));
    line(&format!("Documentation={DOCUMENTATION}"));
    line(&format!("After={after}"));
    line("Wants=network-online.target");
    line("");
    line("[Service]");
    line("Type=simple");
    line(&format!("ExecStart={exec}"));
    if spec.role == Role::Edge {
        // `systemctl reload postern-edge` re-reads the config (policies, applications, limits).
        line("ExecReload=/bin/kill -HUP $MAINPID");
    }
    line("Restart=always");
    line("RestartSec=5s");
    line(&format!("User={}", spec.user));
    line(&format!("Group={}", spec.group));
    line("Environment=RUST_LOG=info");
    if let Some(f) = &spec.environment_file {
        // Read by systemd before it drops to User=: the file stays root's, mode 0600.
        line(&format!("EnvironmentFile={}", directive_path(f)));
    }
    line("KillSignal=SIGTERM");
    line(&format!("TimeoutStopSec={}s", spec.stop_timeout_secs));
    // One descriptor per connection (edge) or two per stream (tunnel): systemd's default soft
    // limit of 1024 is filled by four addresses' idle connections. postern raises its soft
    // limit to this hard one and caps limits.max_connections to fit.
    line(&format!("LimitNOFILE={UNIT_OPEN_FILES}"));
    line("# Hardening: see systemd.exec(5). `systemd-analyze security UNIT` rates it.");
    line("NoNewPrivileges=yes");
    line("ProtectSystem=strict");
    line(if spec.uses_home {
        "ProtectHome=read-only"
    } else {
        "ProtectHome=yes"
    });
    line("PrivateTmp=yes");
    line("PrivateDevices=yes");
    line("ProtectKernelTunables=yes");
    line("ProtectKernelModules=yes");
    line("ProtectControlGroups=yes");
    line("RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX");
    line("RestrictNamespaces=yes");
    line("LockPersonality=yes");
    line("MemoryDenyWriteExecute=yes");
    line("SystemCallArchitectures=native");
    match spec.role {
        Role::Tunnel => line("CapabilityBoundingSet="),
        Role::Edge => {
            // Only to bind :443 as an unprivileged user.
            line("CapabilityBoundingSet=CAP_NET_BIND_SERVICE");
            line("AmbientCapabilities=CAP_NET_BIND_SERVICE");
            line(&format!("StateDirectory={STATE_DIRECTORY}"));
            // The edge warns about a state directory other users can read.
            line("StateDirectoryMode=0700");
            if spec.logs_directory {
                line(&format!("LogsDirectory={STATE_DIRECTORY}"));
                line("LogsDirectoryMode=0700");
            }
        }
    }
    for p in &spec.read_write {
        line(&format!("ReadWritePaths={}", directive_path(p)));
    }
    line("");
    line("[Install]");
    line("WantedBy=multi-user.target");
    u
}

// ------------------------------------------------------------------------------- the actions

/// Where and how to install.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    pub unit_dir: PathBuf,
    pub user: String,
    /// `false` (`--no-enable`): write the unit only; no `systemctl`, no `useradd`.
    pub enable: bool,
}

/// What to install.
#[derive(Clone, Debug)]
pub enum InstallWhat {
    Tunnel(Box<TunnelArgs>),
    Edge(EdgeArgs),
}

/// Whether systemd is the running init system (sd_booted(3)).
pub fn systemd_running() -> bool {
    Path::new(SYSTEMD_RUNNING_MARKER).is_dir()
}

/// `path` made absolute against the current directory, `.` and `..` removed lexically (the
/// file need not exist yet: the credential is often copied after the unit is written).
pub fn absolute(path: &Path) -> Result<PathBuf, ServiceError> {
    let joined = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|err| ServiceError::Io {
                what: "the current directory".into(),
                err,
            })?
            .join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// Reads the directories and files the edge's JSON config names. Only these fields are read;
/// the edge itself checks the rest when it starts. Relative paths are refused: the edge would
/// resolve them against its working directory, which is `/` under systemd.
pub fn edge_paths(config: &Path) -> Result<EdgePaths, ServiceError> {
    let text = std::fs::read_to_string(config).map_err(|e| ServiceError::Config {
        path: config.to_owned(),
        why: format!("{e} (write the edge's config before installing the service)"),
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ServiceError::Config {
            path: config.to_owned(),
            why: e.to_string(),
        })?;
    let path_at =
        |v: Option<&serde_json::Value>, what: String| -> Result<Option<PathBuf>, ServiceError> {
            match v.and_then(|v| v.as_str()) {
                None => Ok(None),
                Some(s) if Path::new(s).is_absolute() => Ok(Some(PathBuf::from(s))),
                Some(s) => Err(ServiceError::Config {
                    path: config.to_owned(),
                    why: format!(
                        "{what} {s:?} is relative: a service runs in /, so give an absolute path"
                    ),
                }),
            }
        };
    let mut paths = EdgePaths {
        state_dir: path_at(json.get("state_dir"), "state_dir".into())?,
        audit_log: path_at(json.get("audit_log"), "audit_log".into())?,
        read: Vec::new(),
    };
    if let Some(zones) = json.get("zones").and_then(|z| z.as_array()) {
        for (i, z) in zones.iter().enumerate() {
            for key in ["cert", "key"] {
                if let Some(p) = path_at(z.get(key), format!("zones[{i}].{key}"))? {
                    paths.read.push(p);
                }
            }
        }
    }
    if let Some(p) = path_at(
        json.get("identity")
            .and_then(|i| i.get("client_secret_file")),
        "identity.client_secret_file".into(),
    )? {
        paths.read.push(p);
    }
    Ok(paths)
}

fn run(program: &str, args: &[&str]) -> Result<String, ServiceError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| ServiceError::Command {
            command: command.clone(),
            why: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ServiceError::Command {
            command,
            why: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn is_root() -> bool {
    run("id", &["-u"]).is_ok_and(|uid| uid == "0")
}

/// The useradd line for a system user without a shell or home.
fn useradd_args(user: &str) -> [&str; 8] {
    [
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        user,
    ]
}

/// The user's primary group; creates the user first when allowed and possible.
fn service_group(
    user: &str,
    create: bool,
    say: &mut dyn FnMut(String),
) -> Result<String, ServiceError> {
    if let Ok(group) = run("id", &["-gn", user]) {
        return Ok(group);
    }
    let line = format!("useradd {}", useradd_args(user).join(" "));
    if create && is_root() && run("sh", &["-c", "command -v useradd"]).is_ok() {
        run("useradd", &useradd_args(user))?;
        say(format!("created system user {user} (no shell, no home)"));
        return run("id", &["-gn", user]);
    }
    eprintln!("postern: user {user} does not exist yet; create it (as root): {line}");
    // useradd --user-group makes a group of the same name.
    Ok(user.to_owned())
}

/// Warns when a file the service reads is missing or not readable by the service user.
fn check_readable(what: &str, path: &Path, user: &str) {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Err(_) => eprintln!(
            "postern: warning: {what} {} does not exist yet: put it there before the service starts",
            path.display()
        ),
        Ok(meta) => {
            let owner = run("id", &["-u", user]).ok().and_then(|u| u.parse::<u32>().ok());
            if owner.is_some_and(|uid| uid != meta.uid()) && meta.mode() & 0o004 == 0 {
                eprintln!(
                    "postern: warning: {what} {} is not owned by {user}, who may not be able to read it: \
                     chown {user}: {0} && chmod 600 {0}",
                    path.display()
                );
            }
        }
    }
}

/// `postern service install`: writes the unit and, when systemd runs and `enable` is set,
/// reloads systemd and starts the service. Reports each step through `say`.
pub fn install(
    what: &InstallWhat,
    opts: &InstallOptions,
    say: &mut dyn FnMut(String),
) -> Result<PathBuf, ServiceError> {
    let exe = std::env::current_exe().map_err(|err| ServiceError::Io {
        what: "the path of this binary".into(),
        err,
    })?;
    let exe = absolute(&exe)?;
    if !valid_user_name(&opts.user) {
        return Err(ServiceError::BadUser(opts.user.clone()));
    }
    // Check what can be checked before anything changes on the host.
    let spec_for = |group: &str| -> Result<UnitSpec, ServiceError> {
        match what {
            InstallWhat::Tunnel(t) if t.token_file.is_some() => {
                let mut t = (**t).clone();
                if !t.url.is_empty() {
                    crate::tunnel::service_address(&t.url).map_err(ServiceError::BadArgument)?;
                }
                t.token_file = t.token_file.as_deref().map(absolute).transpose()?;
                t.ca = t.ca.as_deref().map(absolute).transpose()?;
                UnitSpec::tunnel(&exe, &t, &opts.user, group)
            }
            InstallWhat::Tunnel(t) if t.config.is_some() => {
                let mut t = (**t).clone();
                let config = absolute(t.config.as_deref().unwrap_or(Path::new("")))?;
                // The same checks as `tunnel run`, now, rather than in a restart loop.
                let (cfg, _) = crate::tunnel::config::TunnelConfig::read(&config)
                    .map_err(ServiceError::BadArgument)?;
                t.config_files = [cfg.credentials_file, cfg.ca]
                    .into_iter()
                    .flatten()
                    .map(|p| absolute(&p))
                    .collect::<Result<_, _>>()?;
                t.config = Some(config);
                t.ca = t.ca.as_deref().map(absolute).transpose()?;
                UnitSpec::tunnel(&exe, &t, &opts.user, group)
            }
            InstallWhat::Tunnel(t) => {
                let mut t = (**t).clone();
                crate::tunnel::service_address(&t.url).map_err(ServiceError::BadArgument)?;
                t.origincert = Some(absolute(
                    t.origincert
                        .as_deref()
                        .unwrap_or(Path::new(DEFAULT_ORIGINCERT)),
                )?);
                t.ca = t.ca.as_deref().map(absolute).transpose()?;
                t.hostname = t.hostname.to_ascii_lowercase();
                UnitSpec::tunnel(&exe, &t, &opts.user, group)
            }
            InstallWhat::Edge(e) => {
                let config = absolute(&e.config)?;
                let paths = edge_paths(&config)?;
                UnitSpec::edge(&exe, &config, &paths, &opts.user, group)
            }
        }
    };
    spec_for(&opts.user)?;
    let group = service_group(&opts.user, opts.enable, say)?;
    let spec = spec_for(&group)?;
    match what {
        InstallWhat::Tunnel(t) if t.token_file.is_some() => {}
        InstallWhat::Tunnel(t) if t.config.is_some() => {
            let config = absolute(t.config.as_deref().unwrap_or(Path::new("")))?;
            check_readable("the tunnel config", &config, &opts.user);
            if let Ok((cfg, _)) = crate::tunnel::config::TunnelConfig::read(&config) {
                for p in [cfg.credentials_file, cfg.ca].into_iter().flatten() {
                    check_readable("a file the tunnel config names", &p, &opts.user);
                }
            }
        }
        InstallWhat::Tunnel(t) => {
            let cert = absolute(
                t.origincert
                    .as_deref()
                    .unwrap_or(Path::new(DEFAULT_ORIGINCERT)),
            )?;
            check_readable("the origin credential", &cert, &opts.user);
        }
        InstallWhat::Edge(_) => {
            for dir in spec.read_write_paths() {
                if !dir.is_dir() {
                    eprintln!(
                        "postern: warning: {} does not exist: create it writable by {}: install -d -o {} -m 0700 {0}",
                        dir.display(),
                        opts.user,
                        opts.user
                    );
                }
            }
        }
    }
    let text = render_unit(&spec);
    std::fs::create_dir_all(&opts.unit_dir).map_err(|err| ServiceError::Io {
        what: format!("cannot create {}", opts.unit_dir.display()),
        err,
    })?;
    let path = opts.unit_dir.join(spec.unit_name());
    let existed = path.exists();
    crate::io::files::write_file_atomic(&path, text.as_bytes(), 0o644).map_err(|err| {
        ServiceError::Io {
            what: format!(
                "cannot write {} (run as root: sudo postern service install ...)",
                path.display()
            ),
            err,
        }
    })?;
    say(format!(
        "{} {}",
        if existed { "replaced" } else { "wrote" },
        path.display()
    ));
    let unit = spec.unit_name();
    let short = unit.trim_end_matches(".service");
    if !opts.enable {
        say(format!(
            "not enabled (--no-enable); to start it at boot and now: systemctl daemon-reload && systemctl enable --now {unit}"
        ));
    } else if systemd_running() {
        run("systemctl", &["daemon-reload"])?;
        say("ran systemctl daemon-reload".into());
        run("systemctl", &["enable", "--now", unit])?;
        say(format!("ran systemctl enable --now {unit}"));
        say(format!(
            "check it: systemctl status {short}; journalctl -u {short}"
        ));
    } else {
        say(format!(
            "systemd is not running here (no {SYSTEMD_RUNNING_MARKER}); on a systemd host run: \
             systemctl daemon-reload && systemctl enable --now {unit}"
        ));
    }
    Ok(path)
}

/// What to remove.
#[derive(Clone, Debug)]
pub struct UninstallOptions {
    pub unit_dir: PathBuf,
    /// `None`: whichever of postern-tunnel.service and postern-edge.service is installed.
    pub role: Option<Role>,
    pub name: Option<String>,
    /// `false` (`--no-disable`): remove the file only; no `systemctl`.
    pub disable: bool,
}

/// `postern service uninstall`: stops and disables the service when systemd runs, removes
/// the unit file, and reloads systemd.
pub fn uninstall(
    opts: &UninstallOptions,
    say: &mut dyn FnMut(String),
) -> Result<PathBuf, ServiceError> {
    let candidates = match opts.role {
        Some(role) => vec![unit_name(role, opts.name.as_deref())?],
        None => vec![
            unit_name(Role::Tunnel, opts.name.as_deref())?,
            unit_name(Role::Edge, opts.name.as_deref())?,
        ],
    };
    let present: Vec<&String> = candidates
        .iter()
        .filter(|u| opts.unit_dir.join(u).exists())
        .collect();
    let unit = match present.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(ServiceError::NotInstalled(format!(
                "not installed: no {} in {}",
                candidates.join(" or "),
                opts.unit_dir.display()
            )))
        }
        _ => {
            return Err(ServiceError::NotInstalled(format!(
                "both {} are installed: say which (postern service uninstall tunnel|edge)",
                candidates.join(" and ")
            )))
        }
    };
    let path = opts.unit_dir.join(&unit);
    // A unit from `service install TOKEN` names the token's file; the token is the tunnel's
    // private key, so it goes with the unit (cloudflared's token lives in its unit).
    let token_file = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| token_environment_file(&text));
    let systemctl = opts.disable && systemd_running();
    if systemctl {
        run("systemctl", &["disable", "--now", &unit])?;
        say(format!("ran systemctl disable --now {unit}"));
    }
    std::fs::remove_file(&path).map_err(|err| ServiceError::Io {
        what: format!("cannot remove {}", path.display()),
        err,
    })?;
    say(format!("removed {}", path.display()));
    if let Some(file) = token_file {
        // A failure here must not keep systemd from forgetting the unit below.
        match std::fs::remove_file(&file) {
            Ok(()) => say(format!("removed the tunnel token in {}", file.display())),
            Err(err) => say(format!(
                "could not remove the tunnel token in {}: {err}; remove it by hand",
                file.display()
            )),
        }
    }
    if systemctl {
        run("systemctl", &["daemon-reload"])?;
        say("ran systemctl daemon-reload".into());
    } else if opts.disable {
        say(format!(
            "systemd is not running here (no {SYSTEMD_RUNNING_MARKER}); on a systemd host run: \
             systemctl disable --now {unit} && systemctl daemon-reload"
        ));
    }
    Ok(path)
}

/// The `EnvironmentFile=` of a unit text, if it is a tunnel token file that `service install
/// TOKEN` wrote (it holds one `TUNNEL_TOKEN=` line); any other file is the operator's.
fn token_environment_file(unit: &str) -> Option<PathBuf> {
    let file = unit
        .lines()
        .find_map(|l| l.strip_prefix("EnvironmentFile="))?
        .replace("%%", "%");
    let file = PathBuf::from(file);
    // An absolute path, as `service install` writes (not systemd's optional `-/path` form).
    if !file.is_absolute() {
        return None;
    }
    let text = read_small_text(&file)?;
    let mut lines = text.lines();
    let only_token = lines.next()?.starts_with("TUNNEL_TOKEN=") && lines.next().is_none();
    only_token.then_some(file)
}

/// A small file's text (a token file is a few KiB); `None` for anything else.
fn read_small_text(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    let file = std::fs::File::open(path).ok()?;
    // Larger than the bound: not all of it would be read, so not all of it checked.
    if file.metadata().ok()?.len() > crate::limits::TOKEN_FILE_READ_MAX {
        return None;
    }
    file.take(crate::limits::TOKEN_FILE_READ_MAX)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXE: &str = "/usr/local/bin/postern";

    #[test]
    fn uninstall_takes_only_a_token_file_with_the_unit() {
        let dir = std::env::temp_dir().join(format!("postern-unit-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (token, other) = (dir.join("t%1.env"), dir.join("other.env"));
        std::fs::write(&token, "TUNNEL_TOKEN=abc\n").unwrap();
        std::fs::write(&other, "TUNNEL_TOKEN=abc\nHTTPS_PROXY=http://proxy:3128\n").unwrap();
        let unit = |f: &Path| format!("[Service]\nEnvironmentFile={}\n", directive_path(f));
        assert_eq!(token_environment_file(&unit(&token)), Some(token.clone()));
        assert_eq!(
            token_environment_file(&unit(&other)),
            None,
            "the operator's file"
        );
        assert_eq!(token_environment_file("[Service]\nType=simple\n"), None);
        assert_eq!(token_environment_file(&unit(&dir.join("gone.env"))), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tunnel_args() -> TunnelArgs {
        TunnelArgs {
            hostname: "ssh.site.com".into(),
            url: "ssh://localhost:22".into(),
            origincert: Some("/etc/postern/cert.pem".into()),
            ..TunnelArgs::default()
        }
    }

    fn exec_start(unit: &str) -> &str {
        unit.lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart")
    }

    #[test]
    fn tunnel_unit_names_binary_and_arguments() {
        let spec = UnitSpec::tunnel(Path::new(EXE), &tunnel_args(), "postern", "postern").unwrap();
        assert_eq!(spec.unit_name(), "postern-tunnel.service");
        let unit = render_unit(&spec);
        assert_eq!(
            exec_start(&unit),
            r#""/usr/local/bin/postern" "tunnel" "--hostname" "ssh.site.com" "--url" "ssh://localhost:22" "--origincert" "/etc/postern/cert.pem""#
        );
        for line in [
            "Restart=always",
            "User=postern",
            "Group=postern",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "CapabilityBoundingSet=",
            "TimeoutStopSec=35s",
            "LimitNOFILE=65536",
            "WantedBy=multi-user.target",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
        }
        assert!(!unit.contains("AmbientCapabilities"));
        assert!(!unit.contains("StateDirectory"));
        // The tunnel has nothing to reload; SIGHUP keeps its default action there.
        assert!(!unit.contains("ExecReload"));
    }

    #[test]
    fn tunnel_options_and_grace() {
        let t = TunnelArgs {
            edge: vec!["edge.site.com:443".into(), "edge-b.site.com:443".into()],
            ca: Some("/etc/postern/ca.pem".into()),
            ha_connections: Some(2),
            grace_secs: Some(60),
            name: Some("git".into()),
            ..tunnel_args()
        };
        let spec = UnitSpec::tunnel(Path::new(EXE), &t, "postern", "postern").unwrap();
        assert_eq!(spec.unit_name(), "postern-tunnel-git.service");
        let unit = render_unit(&spec);
        assert!(exec_start(&unit).ends_with(
            r#""--edge" "edge.site.com:443" "--edge" "edge-b.site.com:443" "--ca" "/etc/postern/ca.pem" "--ha-connections" "2" "--grace-period" "60""#
        ));
        assert!(unit.contains("\nTimeoutStopSec=65s\n"));
    }

    #[test]
    fn quoting_follows_systemd_syntax() {
        assert_eq!(exec_word("plain"), r#""plain""#);
        assert_eq!(exec_word("a b"), r#""a b""#);
        assert_eq!(exec_word(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(exec_word(r"back\slash"), r#""back\\slash""#);
        assert_eq!(exec_word("100%"), r#""100%%""#);
        assert_eq!(exec_word("$HOME ${X}"), r#""$$HOME $${X}""#);
        assert_eq!(exec_word("it's"), r#""it's""#);
        assert_eq!(exec_word(""), r#""""#);
    }

    #[test]
    fn paths_with_spaces_are_quoted_in_exec_start() {
        let t = TunnelArgs {
            origincert: Some("/etc/post ern/cert%1.pem".into()),
            ..tunnel_args()
        };
        let unit =
            render_unit(&UnitSpec::tunnel(Path::new(EXE), &t, "postern", "postern").unwrap());
        assert!(exec_start(&unit).ends_with(r#""--origincert" "/etc/post ern/cert%%1.pem""#));
    }

    #[test]
    fn refuses_newlines_and_control_characters() {
        for t in [
            TunnelArgs {
                hostname: "ssh.site.com\nExecStartPre=/bin/sh".into(),
                ..tunnel_args()
            },
            TunnelArgs {
                url: "ssh://localhost:22\r".into(),
                ..tunnel_args()
            },
            TunnelArgs {
                edge: vec!["a\tb".into()],
                ..tunnel_args()
            },
            TunnelArgs {
                origincert: Some("/etc/x\n.pem".into()),
                ..tunnel_args()
            },
        ] {
            let err = UnitSpec::tunnel(Path::new(EXE), &t, "postern", "postern").unwrap_err();
            assert!(
                matches!(err, ServiceError::ControlCharacter { .. }),
                "{err}"
            );
        }
        let err = UnitSpec::tunnel(
            Path::new("/usr/bin/post\nern"),
            &tunnel_args(),
            "postern",
            "postern",
        )
        .unwrap_err();
        assert!(matches!(err, ServiceError::ControlCharacter { .. }));
    }

    #[test]
    fn refuses_relative_paths() {
        let err = UnitSpec::tunnel(Path::new("postern"), &tunnel_args(), "postern", "postern")
            .unwrap_err();
        assert!(matches!(err, ServiceError::NotAbsolute { .. }), "{err}");
        let t = TunnelArgs {
            ca: Some("ca.pem".into()),
            ..tunnel_args()
        };
        let err = UnitSpec::tunnel(Path::new(EXE), &t, "postern", "postern").unwrap_err();
        assert!(matches!(err, ServiceError::NotAbsolute { .. }), "{err}");
        let err = UnitSpec::edge(
            Path::new(EXE),
            Path::new("edge.json"),
            &EdgePaths::default(),
            "postern",
            "postern",
        )
        .unwrap_err();
        assert!(matches!(err, ServiceError::NotAbsolute { .. }), "{err}");
    }

    #[test]
    fn refuses_bad_names_and_users() {
        for name in ["", "-x", ".x", "a/b", "a b", "a@b", "a\nb"] {
            let t = TunnelArgs {
                name: Some(name.into()),
                ..tunnel_args()
            };
            let err = UnitSpec::tunnel(Path::new(EXE), &t, "postern", "postern").unwrap_err();
            assert!(matches!(err, ServiceError::BadName(_)), "{name:?}: {err}");
        }
        for user in [
            "",
            "1abc",
            "-x",
            "a b",
            "a:b",
            "root\n",
            "abcdefghijabcdefghijabcdefghijab",
        ] {
            let err =
                UnitSpec::tunnel(Path::new(EXE), &tunnel_args(), user, "postern").unwrap_err();
            assert!(matches!(err, ServiceError::BadUser(_)), "{user:?}: {err}");
        }
        assert!(UnitSpec::tunnel(Path::new(EXE), &tunnel_args(), "_svc-1", "nogroup").is_ok());
    }

    #[test]
    fn protect_home_is_read_only_only_when_needed() {
        let t = TunnelArgs {
            origincert: Some("/root/.postern/cert.pem".into()),
            ..tunnel_args()
        };
        let unit = render_unit(&UnitSpec::tunnel(Path::new(EXE), &t, "root", "root").unwrap());
        assert!(unit.contains("\nProtectHome=read-only\n"));
        let unit = render_unit(
            &UnitSpec::tunnel(
                Path::new("/home/ops/bin/postern"),
                &tunnel_args(),
                "postern",
                "postern",
            )
            .unwrap(),
        );
        assert!(unit.contains("\nProtectHome=read-only\n"));
        // /homestead is not /home.
        let t = TunnelArgs {
            origincert: Some("/homestead/cert.pem".into()),
            ..tunnel_args()
        };
        let unit =
            render_unit(&UnitSpec::tunnel(Path::new(EXE), &t, "postern", "postern").unwrap());
        assert!(unit.contains("\nProtectHome=yes\n"));
    }

    #[test]
    fn edge_unit_binds_443_and_writes_its_state() {
        let paths = EdgePaths {
            state_dir: Some("/var/lib/postern".into()),
            audit_log: Some("/var/log/postern/audit.log".into()),
            read: vec!["/etc/postern/site.com.key".into()],
        };
        let spec = UnitSpec::edge(
            Path::new(EXE),
            Path::new("/etc/postern/edge.json"),
            &paths,
            "postern",
            "postern",
        )
        .unwrap();
        assert_eq!(spec.unit_name(), "postern-edge.service");
        let unit = render_unit(&spec);
        assert_eq!(
            exec_start(&unit),
            r#""/usr/local/bin/postern" "edge" "--config" "/etc/postern/edge.json""#
        );
        for line in [
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "StateDirectory=postern",
            "StateDirectoryMode=0700",
            "LogsDirectory=postern",
            "ProtectHome=yes",
            "TimeoutStopSec=10s",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "LimitNOFILE=65536",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
        }
        assert!(!unit.contains("ReadWritePaths"), "{unit}");
    }

    #[test]
    fn edge_state_elsewhere_is_made_writable() {
        let paths = EdgePaths {
            state_dir: Some("/srv/postern%state".into()),
            audit_log: Some("/srv/audit/edge.log".into()),
            read: vec![],
        };
        let unit = render_unit(
            &UnitSpec::edge(
                Path::new(EXE),
                Path::new("/etc/postern/edge.json"),
                &paths,
                "postern",
                "postern",
            )
            .unwrap(),
        );
        assert!(
            unit.contains("\nReadWritePaths=/srv/postern%%state\n"),
            "{unit}"
        );
        assert!(unit.contains("\nReadWritePaths=/srv/audit\n"), "{unit}");
        assert!(!unit.contains("LogsDirectory"));
        // An audit log inside the state directory needs nothing more.
        let paths = EdgePaths {
            state_dir: Some("/srv/state".into()),
            audit_log: Some("/srv/state/audit.log".into()),
            read: vec![],
        };
        let spec = UnitSpec::edge(
            Path::new(EXE),
            Path::new("/etc/postern/edge.json"),
            &paths,
            "postern",
            "postern",
        )
        .unwrap();
        assert_eq!(spec.read_write_paths(), [PathBuf::from("/srv/state")]);
    }

    #[test]
    fn edge_refuses_paths_it_cannot_write_plainly() {
        let paths = EdgePaths {
            state_dir: Some("/srv/my state".into()),
            ..EdgePaths::default()
        };
        let err = UnitSpec::edge(
            Path::new(EXE),
            Path::new("/etc/postern/edge.json"),
            &paths,
            "postern",
            "postern",
        )
        .unwrap_err();
        assert!(matches!(err, ServiceError::UnsupportedPath { .. }), "{err}");
    }

    #[test]
    fn rendering_is_deterministic_and_complete() {
        let spec = UnitSpec::tunnel(Path::new(EXE), &tunnel_args(), "postern", "postern").unwrap();
        let unit = render_unit(&spec);
        assert_eq!(unit, render_unit(&spec));
        let sections: Vec<&str> = unit.lines().filter(|l| l.starts_with('[')).collect();
        assert_eq!(sections, ["[Unit]", "[Service]", "[Install]"]);
        assert!(unit.ends_with('\n'));
    }

    #[test]
    fn absolute_removes_dots() {
        assert_eq!(
            absolute(Path::new("/etc/./postern/../postern/cert.pem")).unwrap(),
            PathBuf::from("/etc/postern/cert.pem")
        );
        assert!(absolute(Path::new("cert.pem")).unwrap().is_absolute());
    }

    #[test]
    fn unit_names() {
        assert_eq!(unit_name(Role::Edge, None).unwrap(), "postern-edge.service");
        assert_eq!(
            unit_name(Role::Tunnel, Some("a.b_c-1")).unwrap(),
            "postern-tunnel-a.b_c-1.service"
        );
    }
}
