//! Named tunnels on the origin: the config file of `tunnel run`, its ingress rules, and the
//! credentials file `tunnel create` writes.
//!
//! Contract:
//! - The config file is cloudflared's `config.yml` (YAML, read by [`crate::proto::yaml`]) or
//!   the same keys in JSON (a file ending in `.json`, or whose text starts with `{`): one
//!   model, [`TunnelConfig`], for both. Keys: cloudflared's (`tunnel`, `credentials-file`,
//!   `origincert`, `ingress` with `hostname`, `service`, `path`, `originRequest`, top-level
//!   `originRequest`, `metrics`, `logfile`, `loglevel`, `pidfile`), plus `edge`, `ca`,
//!   `ha-connections`, `grace-period`, `resume-window`. cloudflared's keys that mean nothing
//!   here ([`IGNORED_KEYS`], the HTTP-only `originRequest` keys) are accepted, each with a
//!   one-line notice ([`TunnelConfig::notices`]); any other key is refused. Every error names
//!   the file and the key, e.g. `ingress[1].service`, and for YAML the line and column.
//! - `originRequest.connectTimeout` bounds the connect to the service (default
//!   [`crate::limits::SERVICE_CONNECT_TIMEOUT_SECS`]); a rule's own `originRequest` wins over
//!   the top-level one. A rule for a web service (`http://`, `https://`, `unix:`,
//!   `hello_world`...) or with a `path` keeps its place but refuses its streams, with a
//!   notice: postern carries TCP streams only, which have no path.
//! - Ingress rules are tried in order. `hostname` is a name or `*.suffix` (any name under
//!   suffix); a rule without one matches everything and must be the last rule; the last rule
//!   must be such a catch-all. A service is `ssh://host[:port]`, `tcp://host:port`,
//!   `host:port`, `http_status:CODE` (refuse the stream: nothing listens for it), or
//!   `bastion` (a jump host: the client's `--destination`, checked by the edge and by the
//!   tunnel's own `bastion-allow`).
//! - The credentials file `<TUNNEL-ID>.json` (mode 0600) holds the tunnel's id, name, zone
//!   (`AccountTag`) and its origin credential (PEM, see [`crate::pki`]): key, certificate for
//!   the tunnel, edge address, edge CA. It is all `tunnel run` needs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pki::{self, OriginCredential};

/// Largest config or credentials file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most ingress rules.
const MAX_RULES: usize = 256;

/// What a stream for a hostname is spliced to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// A TCP service: `addr` is `host:port`, `url` as written.
    Tcp { addr: String, url: String },
    /// No service: the stream is refused, and the client told this status.
    Status(u16),
    /// cloudflared's `bastion`: a jump host. Each stream connects to the destination the
    /// client named and the edge checked (OPEN's `destination`), if the tunnel's own
    /// `bastion-allow` and special-address rules admit it too.
    Bastion,
}

impl Service {
    /// Parses a service as written in `--url` or an ingress rule.
    pub fn parse(url: &str) -> Result<Service, String> {
        if url == "bastion" {
            return Ok(Service::Bastion);
        }
        if let Some(code) = url.strip_prefix("http_status:") {
            return match code.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(Service::Status(c)),
                _ => Err(format!(
                    "{url:?}: http_status needs an HTTP status code, e.g. http_status:404"
                )),
            };
        }
        let addr = super::service_address(url).map_err(|e| format!("{url:?}: {e}"))?;
        Ok(Service::Tcp {
            addr,
            url: url.to_owned(),
        })
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Service::Tcp { url, .. } => f.write_str(url),
            Service::Status(c) => write!(f, "http_status:{c}"),
            Service::Bastion => f.write_str("bastion"),
        }
    }
}

/// One ingress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Lowercase name or `*.suffix`; `None` matches every hostname.
    pub hostname: Option<String>,
    pub service: Service,
    /// `originRequest.connectTimeout`; `None`: the default.
    pub connect_timeout: Option<Duration>,
}

impl Rule {
    pub fn matches(&self, host: &str) -> bool {
        match &self.hostname {
            None => true,
            Some(p) => match p.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                None => p.eq_ignore_ascii_case(host),
            },
        }
    }
}

/// Ordered ingress rules; the last one matches everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress {
    rules: Vec<Rule>,
    /// The tunnel's own allow-list for `bastion` rules (`bastion-allow`); empty: any
    /// destination the edge vouched for that is not a special address (`proto::destination`).
    bastion_allow: crate::proto::destination::AllowList,
}

impl Ingress {
    /// The ad-hoc form `--hostname H --url U`: H goes to U, anything else is refused.
    pub fn single(hostname: &str, url: &str) -> Result<Ingress, String> {
        Ok(Ingress {
            rules: vec![
                Rule {
                    hostname: Some(hostname.to_ascii_lowercase()),
                    service: Service::parse(url).map_err(|e| format!("--url {e}"))?,
                    connect_timeout: None,
                },
                Rule {
                    hostname: None,
                    service: Service::Status(404),
                    connect_timeout: None,
                },
            ],
            bastion_allow: Default::default(),
        })
    }

    /// `tunnel run --url U` without ingress rules: every hostname routed to the tunnel goes
    /// to U.
    pub fn catch_all(url: &str) -> Result<Ingress, String> {
        Ok(Ingress {
            rules: vec![Rule {
                hostname: None,
                service: Service::parse(url).map_err(|e| format!("--url {e}"))?,
                connect_timeout: None,
            }],
            bastion_allow: Default::default(),
        })
    }

    /// Checks raw rules from a config file; errors name `ingress[i].field`. `defaults` is the
    /// top-level `originRequest`; what is accepted but means nothing here goes to `notices`
    /// (each starting with the key path).
    pub fn from_raw(
        raw: &[RawRule],
        defaults: Option<&OriginRequest>,
        notices: &mut Vec<String>,
    ) -> Result<Ingress, String> {
        if raw.is_empty() {
            return Err("ingress: no rules (add at least a catch-all: {\"service\": ...})".into());
        }
        if raw.len() > MAX_RULES {
            return Err(format!("ingress: more than {MAX_RULES} rules"));
        }
        let mut rules = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            let hostname = match &r.hostname {
                None => None,
                Some(h) if h.is_empty() || h == "*" => None,
                Some(h) => {
                    let h = h.to_ascii_lowercase();
                    let name = h.strip_prefix("*.").unwrap_or(&h);
                    if name.contains('*') || !crate::proto::dns::valid_hostname(name) {
                        return Err(format!(
                            "ingress[{i}].hostname: {h:?} is not a hostname (a wildcard is \
                             allowed only as the first label: *.example.com)"
                        ));
                    }
                    Some(h)
                }
            };
            if hostname.is_none() && i + 1 != raw.len() {
                return Err(format!(
                    "ingress[{i}].hostname: rule {i} matches every hostname but is not the last \
                     rule, so the rules after it can never match"
                ));
            }
            let web = WEB_SERVICES
                .iter()
                .any(|p| r.service.to_ascii_lowercase().starts_with(p));
            let service = if web {
                notices.push(format!(
                    "ingress[{i}].service: {:?} is a web service; postern carries SSH and TCP \
                     only, so this rule refuses its streams",
                    r.service
                ));
                Service::Status(502)
            } else {
                Service::parse(&r.service).map_err(|e| format!("ingress[{i}].service: {e}"))?
            };
            let service = match (&r.path, service) {
                (Some(path), Service::Tcp { .. }) => {
                    notices.push(format!(
                        "ingress[{i}].path: {path:?}: postern's streams are TCP and have no \
                         path, so this rule refuses its streams"
                    ));
                    Service::Status(404)
                }
                (_, s) => s,
            };
            let own = match &r.origin_request {
                Some(o) => o.check(&format!("ingress[{i}].originRequest"), notices)?,
                None => None,
            };
            let default = match defaults {
                Some(o) => o.connect_timeout()?,
                None => None,
            };
            rules.push(Rule {
                hostname,
                service,
                connect_timeout: own.or(default),
            });
        }
        if rules.last().is_some_and(|r| r.hostname.is_some()) {
            return Err(format!(
                "ingress[{}]: the last rule must match every hostname (leave out \"hostname\"), \
                 e.g. {{\"service\": \"http_status:404\"}}",
                rules.len() - 1
            ));
        }
        Ok(Ingress {
            rules,
            bastion_allow: Default::default(),
        })
    }

    /// The index and rule for `host` (the last rule matches everything).
    pub fn find(&self, host: &str) -> (usize, &Rule) {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(host))
            .unwrap_or_else(|| {
                let last = self.rules.len() - 1;
                (last, &self.rules[last])
            })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether a rule is `bastion` (the origin then says so in HELLO: mux version 3).
    pub fn has_bastion(&self) -> bool {
        self.rules.iter().any(|r| r.service == Service::Bastion)
    }

    /// Sets the tunnel's own bastion allow-list from `--bastion-allow` / `bastion-allow`.
    pub fn set_bastion_allow(&mut self, entries: &[String]) -> Result<(), String> {
        self.bastion_allow = crate::proto::destination::AllowList::parse(entries)
            .map_err(|e| format!("bastion-allow{e}"))?;
        Ok(())
    }

    pub fn bastion_allow(&self) -> &crate::proto::destination::AllowList {
        &self.bastion_allow
    }
}

/// Services of cloudflared's that are web (HTTP) services: postern does not proxy them.
const WEB_SERVICES: &[&str] = &[
    "http://",
    "https://",
    "unix:",
    "unix+tls:",
    "hello_world",
    "hello-world",
    "socks5",
    "bastion",
];

/// An ingress rule as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub service: String,
    /// cloudflared's path regex (HTTP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(
        default,
        rename = "originRequest",
        skip_serializing_if = "Option::is_none"
    )]
    pub origin_request: Option<OriginRequest>,
}

/// A duration as cloudflared writes it: `"30s"`, `"1m30s"`, `"500ms"`, or a number of
/// seconds.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(
    untagged,
    expecting = "a duration such as \"30s\" or a number of seconds"
)]
pub enum GoDuration {
    Seconds(u64),
    Text(String),
}

impl GoDuration {
    pub fn get(&self) -> Result<Duration, String> {
        match self {
            GoDuration::Seconds(s) => Ok(Duration::from_secs(*s)),
            GoDuration::Text(t) => parse_go_duration(t),
        }
    }
}

/// Go's `time.ParseDuration` for what configs write: numbers with `h`, `m`, `s`, `ms`
/// units (`1m30s`), or a bare number of seconds. At most a day.
pub fn parse_go_duration(v: &str) -> Result<Duration, String> {
    let bad = || format!("{v:?} is not a duration like 30s or 1m30s");
    if let Ok(secs) = v.parse::<u64>() {
        return (secs <= 86_400)
            .then(|| Duration::from_secs(secs))
            .ok_or_else(bad);
    }
    let mut rest = v;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let ms_per = match &rest[..unit] {
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            _ => return Err(bad()),
        };
        rest = &rest[unit..];
        total_ms = n
            .checked_mul(ms_per)
            .and_then(|x| total_ms.checked_add(x))
            .ok_or_else(bad)?;
    }
    if v.is_empty() || total_ms > 86_400_000 {
        return Err(bad());
    }
    Ok(Duration::from_millis(total_ms))
}

/// cloudflared's `originRequest` (top level, or in a rule). Only `connectTimeout` acts here;
/// `noHappyEyeballs: true` is what postern does anyway (it connects to the addresses in
/// turn); the rest are for HTTP origins or cloudflared's own network and are noticed and
/// ignored. Unknown keys are refused.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OriginRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_happy_eyeballs: Option<bool>,
    #[serde(default, skip_serializing)]
    tcp_keep_alive: Option<IgnoredValue>,
    #[serde(default, skip_serializing)]
    tls_timeout: Option<IgnoredValue>,
    #[serde(default, skip_serializing)]
    keep_alive_connections: Option<IgnoredValue>,
    #[serde(default, skip_serializing)]
    keep_alive_timeout: Option<IgnoredValue>,
    #[serde(default, skip_serializing)]
    http_host_header: Option<IgnoredValue>,
    #[serde(default, skip_serializing)]
    origin_server_name: Option<IgnoredValue>,
    #[serde(default, skip_serializing, rename = "matchSNItoHost")]
    match_sni_to_host: Option<IgnoredValue>,
    #[serde(default, skip_serializing)]
    ca_pool: Option<IgnoredValue>,
    #[serde(default, skip_serializing, rename = "noTLSVerify")]
    no_tls_verify: Option<IgnoredValue>,
    #[serde(default, skip_serializing)]
    disable_chunked_encoding: Option<IgnoredValue>,
    #[serde(default, skip_serializing)]
    http2_origin: Option<IgnoredValue>,
    #[serde(default, skip_serializing)]
    bastion_mode: Option<IgnoredValue>,
    #[serde(default, skip_serializing)]
    proxy_address: Option<IgnoredValue>,
    #[serde(default, skip_serializing)]
    proxy_port: Option<IgnoredValue>,
    #[serde(default, skip_serializing)]
    proxy_type: Option<IgnoredValue>,
    #[serde(default, skip_serializing)]
    ip_rules: Option<IgnoredValue>,
    #[serde(default, skip_serializing)]
    access: Option<IgnoredValue>,
}

/// A value of a key accepted and ignored: anything.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IgnoredValue(serde::de::IgnoredAny);

impl OriginRequest {
    fn connect_timeout(&self) -> Result<Option<Duration>, String> {
        self.connect_timeout
            .as_ref()
            .map(GoDuration::get)
            .transpose()
    }

    /// The connect timeout; notices for the keys that mean nothing here (named under
    /// `at`).
    fn check(&self, at: &str, notices: &mut Vec<String>) -> Result<Option<Duration>, String> {
        let ignored = [
            (
                "tcpKeepAlive",
                &self.tcp_keep_alive,
                "the service connection uses the system's TCP keepalive settings",
            ),
            ("tlsTimeout", &self.tls_timeout, HTTP_ONLY),
            (
                "keepAliveConnections",
                &self.keep_alive_connections,
                HTTP_ONLY,
            ),
            ("keepAliveTimeout", &self.keep_alive_timeout, HTTP_ONLY),
            ("httpHostHeader", &self.http_host_header, HTTP_ONLY),
            ("originServerName", &self.origin_server_name, HTTP_ONLY),
            ("matchSNItoHost", &self.match_sni_to_host, HTTP_ONLY),
            ("caPool", &self.ca_pool, HTTP_ONLY),
            ("noTLSVerify", &self.no_tls_verify, HTTP_ONLY),
            (
                "disableChunkedEncoding",
                &self.disable_chunked_encoding,
                HTTP_ONLY,
            ),
            ("http2Origin", &self.http2_origin, HTTP_ONLY),
            (
                "access",
                &self.access,
                "the edge enforces Access for every stream",
            ),
            (
                "bastionMode",
                &self.bastion_mode,
                "bastion mode is not supported yet",
            ),
            ("proxyAddress", &self.proxy_address, SOCKS_ONLY),
            ("proxyPort", &self.proxy_port, SOCKS_ONLY),
            ("proxyType", &self.proxy_type, SOCKS_ONLY),
            ("ipRules", &self.ip_rules, SOCKS_ONLY),
        ];
        for (key, v, why) in ignored {
            if v.is_some() {
                notices.push(format!("{at}.{key}: {why}; ignored"));
            }
        }
        if self.no_happy_eyeballs == Some(false) {
            notices.push(format!(
                "{at}.noHappyEyeballs: postern connects to a service's addresses in turn \
                 (no happy eyeballs); ignored"
            ));
        }
        self.connect_timeout()
            .map_err(|e| format!("{at}.connectTimeout: {e}"))
    }
}

const HTTP_ONLY: &str = "an HTTP origin setting, and postern carries SSH and TCP only";
const SOCKS_ONLY: &str = "cloudflared's SOCKS proxy setting, which postern does not have";

/// Top-level keys of cloudflared's config that mean nothing here, accepted with a notice:
/// its `tunnel` flags of the kind (their reasons are [`crate::cloudflared::IGNORED`]'s, the
/// one table), and these config-only keys, each with why.
pub const IGNORED_KEYS: &[(&str, &str)] = &[
    (
        "warp-routing",
        "postern routes hostnames, not private networks",
    ),
    ("post-quantum", "the TLS settings are the edge's"),
    ("heartbeat-interval", "postern's keepalive is fixed (15 s)"),
    ("heartbeat-count", "postern's keepalive is fixed (3 misses)"),
];

/// Why an ignored top-level key means nothing here.
fn ignored_key_reason(key: &str) -> &'static str {
    crate::cloudflared::ignored_flag(key)
        .map(|i| i.why)
        .or_else(|| {
            IGNORED_KEYS
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, w)| *w)
        })
        .expect("bug: an ignored config key without a reason")
}

/// The config file of `postern tunnel run` (see the module doc).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// Name or id of the tunnel.
    pub tunnel: Option<String>,
    #[serde(rename = "credentials-file")]
    pub credentials_file: Option<PathBuf>,
    /// The edge's `host:port`, when it is not the one in the credentials; a list for an
    /// edge pool (cloudflared's `edge` is a list too).
    pub edge: Option<Edges>,
    /// A CA to trust for the edge's TLS, besides the system roots.
    pub ca: Option<PathBuf>,
    #[serde(rename = "ha-connections")]
    pub ha_connections: Option<usize>,
    /// How long SIGTERM waits for open streams, e.g. `"30s"`.
    #[serde(rename = "grace-period")]
    pub grace_period: Option<String>,
    /// How long a resumable stream whose client is gone keeps its service, e.g. `"60s"`.
    #[serde(rename = "resume-window")]
    pub resume_window: Option<String>,
    #[serde(default)]
    pub ingress: Vec<RawRule>,
    /// The tunnel's own allow-list for `bastion` rules (`proto::destination` patterns).
    #[serde(default, rename = "bastion-allow")]
    pub bastion_allow: Vec<String>,
    /// Where to serve `/metrics` and `/ready` (`--metrics`).
    pub metrics: Option<String>,
    /// Defaults for every rule's `originRequest`.
    #[serde(rename = "originRequest")]
    pub origin_request: Option<OriginRequest>,
    /// The origin certificate, for finding the credentials file next to it.
    pub origincert: Option<PathBuf>,
    /// `--logfile`: append the log here too.
    pub logfile: Option<PathBuf>,
    /// `--loglevel`.
    pub loglevel: Option<String>,
    /// `--pidfile`.
    pub pidfile: Option<PathBuf>,
    // cloudflared's keys with no meaning here (IGNORED_KEYS), accepted with a notice.
    #[serde(rename = "no-autoupdate")]
    no_autoupdate: Option<IgnoredValue>,
    #[serde(rename = "autoupdate-freq")]
    autoupdate_freq: Option<IgnoredValue>,
    protocol: Option<IgnoredValue>,
    #[serde(rename = "edge-ip-version")]
    edge_ip_version: Option<IgnoredValue>,
    #[serde(rename = "edge-bind-address")]
    edge_bind_address: Option<IgnoredValue>,
    region: Option<IgnoredValue>,
    retries: Option<IgnoredValue>,
    tag: Option<IgnoredValue>,
    #[serde(rename = "transport-loglevel")]
    transport_loglevel: Option<IgnoredValue>,
    #[serde(rename = "proto-loglevel")]
    proto_loglevel: Option<IgnoredValue>,
    #[serde(rename = "metrics-update-freq")]
    metrics_update_freq: Option<IgnoredValue>,
    #[serde(rename = "compression-quality")]
    compression_quality: Option<IgnoredValue>,
    #[serde(rename = "warp-routing")]
    warp_routing: Option<IgnoredValue>,
    #[serde(rename = "post-quantum")]
    post_quantum: Option<IgnoredValue>,
    #[serde(rename = "heartbeat-interval")]
    heartbeat_interval: Option<IgnoredValue>,
    #[serde(rename = "heartbeat-count")]
    heartbeat_count: Option<IgnoredValue>,
    /// One line for each key accepted that means nothing here, with the file and line.
    #[serde(skip)]
    pub notices: Vec<String>,
}

/// The config's `edge`: one `host:port`, or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "edge: a \"HOST:PORT\" or a list of them, [\"HOST:PORT\", …]"
)]
pub enum Edges {
    One(String),
    Many(Vec<String>),
}

impl Edges {
    pub fn list(&self) -> Vec<String> {
        match self {
            Edges::One(e) => vec![e.clone()],
            Edges::Many(v) => v.clone(),
        }
    }
}

impl TunnelConfig {
    /// Reads and checks a config file (YAML or JSON, see the module doc). Paths in it are
    /// relative to the file's directory. Errors name the file, the key and, for YAML, the
    /// line and column.
    pub fn read(path: &Path) -> Result<(TunnelConfig, Option<Ingress>), String> {
        let text = read_small(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let shown = path.display().to_string();
        let (cfg, doc) = if is_json(path, &text) {
            let cfg: TunnelConfig =
                serde_json::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
            (cfg, None)
        } else {
            let doc =
                crate::proto::yaml::Document::parse(&text).map_err(|e| format!("{shown}: {e}"))?;
            let cfg: TunnelConfig = doc.deserialize().map_err(|e| format!("{shown}: {e}"))?;
            (cfg, Some(doc))
        };
        // "KEY.PATH: message" → "FILE: line L column C: KEY.PATH: message".
        let at = |e: String| {
            let key = e.split_once(": ").map_or("", |(k, _)| k);
            let key = key.split_once(' ').map_or(key, |(k, _)| k);
            match doc.as_ref().and_then(|d| d.position(key)) {
                Some(p) => format!("{shown}: line {} column {}: {e}", p.line, p.col),
                None => format!("{shown}: {e}"),
            }
        };
        cfg.check(path).map_err(at).map(|(mut cfg, ingress)| {
            cfg.notices = std::mem::take(&mut cfg.notices)
                .into_iter()
                .map(at)
                .collect();
            (cfg, ingress)
        })
    }

    /// Checks the values; errors and notices start with the key path.
    fn check(mut self, path: &Path) -> Result<(TunnelConfig, Option<Ingress>), String> {
        if let Some(t) = &self.tunnel {
            if !crate::store::valid_tunnel_name(t) {
                return Err(format!("tunnel: {t:?} is not a tunnel name or id"));
            }
        }
        if let Some(n) = self.ha_connections {
            if !(1..=16).contains(&n) {
                return Err("ha-connections: must be between 1 and 16".into());
            }
        }
        if let Some(e) = &self.edge {
            let edges = super::edge_list(&e.list()).map_err(|e| format!("edge: {e}"))?;
            if edges.is_empty() {
                return Err("edge: names no edge".into());
            }
        }
        if let Some(g) = &self.grace_period {
            parse_seconds(g).map_err(|e| format!("grace-period: {e}"))?;
        }
        if let Some(w) = &self.resume_window {
            resume_window(w).map_err(|e| format!("resume-window: {e}"))?;
        }
        if let Some(l) = &self.loglevel {
            crate::logging::loglevel_filter(l).map_err(|e| format!("loglevel: {e}"))?;
        }
        let mut notices = Vec::new();
        for (key, why) in self.ignored_keys() {
            notices.push(format!("{key}: cloudflared's; {why}; ignored"));
        }
        if let Some(o) = &self.origin_request {
            o.check("originRequest", &mut notices)?;
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut self.credentials_file,
            &mut self.ca,
            &mut self.origincert,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let ingress = if self.ingress.is_empty() {
            None
        } else {
            Some(Ingress::from_raw(
                &self.ingress,
                self.origin_request.as_ref(),
                &mut notices,
            )?)
        };
        self.notices = notices;
        Ok((self, ingress))
    }

    /// The [`IGNORED_KEYS`] this config sets, each with why it means nothing here.
    fn ignored_keys(&self) -> Vec<(&'static str, &'static str)> {
        let set = [
            ("no-autoupdate", self.no_autoupdate.is_some()),
            ("autoupdate-freq", self.autoupdate_freq.is_some()),
            ("protocol", self.protocol.is_some()),
            ("edge-ip-version", self.edge_ip_version.is_some()),
            ("edge-bind-address", self.edge_bind_address.is_some()),
            ("region", self.region.is_some()),
            ("retries", self.retries.is_some()),
            ("tag", self.tag.is_some()),
            ("transport-loglevel", self.transport_loglevel.is_some()),
            ("proto-loglevel", self.proto_loglevel.is_some()),
            ("metrics-update-freq", self.metrics_update_freq.is_some()),
            ("compression-quality", self.compression_quality.is_some()),
            ("warp-routing", self.warp_routing.is_some()),
            ("post-quantum", self.post_quantum.is_some()),
            ("heartbeat-interval", self.heartbeat_interval.is_some()),
            ("heartbeat-count", self.heartbeat_count.is_some()),
        ];
        set.into_iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| (k, ignored_key_reason(k)))
            .collect()
    }
}

/// JSON when the file is named `*.json` or its text starts with `{`; YAML otherwise.
fn is_json(path: &Path, text: &str) -> bool {
    path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{')
}

/// Where `tunnel run` looks for its config without `--config` (or `POSTERN_TUNNEL_CONFIG`):
/// postern's own places, then cloudflared's (its `DefaultConfigSearchDirectories`, each
/// with `config.yml` and `config.yaml`). `home` is the user's home directory.
pub fn default_config_paths(home: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(h) = home {
        out.push(h.join(".postern/config.json"));
        out.push(h.join(".postern/config.yml"));
    }
    out.push(PathBuf::from("/etc/postern/config.json"));
    out.push(PathBuf::from("/etc/postern/config.yml"));
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(h) = home {
        for d in [".cloudflared", ".cloudflare-warp", "cloudflare-warp"] {
            dirs.push(h.join(d));
        }
    }
    dirs.push(PathBuf::from("/etc/cloudflared"));
    dirs.push(PathBuf::from("/usr/local/etc/cloudflared"));
    for d in dirs {
        out.push(d.join("config.yml"));
        out.push(d.join("config.yaml"));
    }
    out
}

/// `"30s"`, `"30"`, `"2m"` → seconds.
pub fn parse_seconds(v: &str) -> Result<u64, String> {
    let (num, mult) = match v.strip_suffix('s') {
        Some(n) => (n, 1),
        None => match v.strip_suffix('m') {
            Some(n) => (n, 60),
            None => (v, 1),
        },
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{v:?} is not a duration like 30s"))
}

/// Longest resume window: a day (a detached stream holds a service connection and up to
/// a replay buffer of memory).
const MAX_RESUME_WINDOW_SECS: u64 = 24 * 3600;

/// A resume window in seconds (`--resume-window`, `resume-window`), at most a day.
pub fn resume_window(v: &str) -> Result<u64, String> {
    let secs = parse_seconds(v)?;
    if secs > MAX_RESUME_WINDOW_SECS {
        return Err(format!("{v:?} is longer than a day"));
    }
    Ok(secs)
}

/// Reads a text file of at most [`MAX_FILE_BYTES`].
fn read_small(path: &Path) -> io::Result<String> {
    let meta = fs::metadata(path)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(io::Error::other(format!(
            "larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    fs::read_to_string(path)
}

/// The credentials file of a named tunnel (see the module doc). No `Debug`: it holds a key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelCredentials {
    /// The zone the tunnel belongs to (cloudflared's account).
    #[serde(rename = "AccountTag")]
    pub zone: String,
    #[serde(rename = "TunnelID")]
    pub id: String,
    #[serde(rename = "TunnelName")]
    pub name: String,
    /// The origin credential PEM: key, the tunnel's certificate, edge, edge CA.
    #[serde(rename = "Credential")]
    pub credential: String,
}

impl TunnelCredentials {
    /// Writes the file, mode 0600 from creation.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let mut data = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        data.push(b'\n');
        crate::io::files::write_file_atomic(path, &data, 0o600)
    }

    /// Reads and checks a credentials file: the PEM parses and its certificate is for `id`.
    pub fn read(path: &Path) -> Result<(TunnelCredentials, OriginCredential), String> {
        let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let text = read_small(path).map_err(|e| at(&e))?;
        if let Ok(meta) = fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                log::warn!(
                    "{} holds the tunnel's private key but others may read it: chmod 600 {0}",
                    path.display()
                );
            }
        }
        let creds: TunnelCredentials = serde_json::from_str(&text).map_err(|e| at(&e))?;
        creds.check().map_err(|e| at(&e))
    }

    /// The PEM parses and its certificate is tunnel `id`'s.
    fn check(self) -> Result<(TunnelCredentials, OriginCredential), String> {
        let cred =
            OriginCredential::parse(&self.credential).map_err(|e| format!("Credential: {e}"))?;
        if pki::tunnel_id(&cred.cert).as_deref() != Some(self.id.as_str()) {
            return Err(format!(
                "Credential: the certificate is not tunnel {}'s",
                self.id
            ));
        }
        Ok((self, cred))
    }

    /// `tunnel token NAME`: the whole credentials in one string that `tunnel run --token`
    /// (or `TUNNEL_TOKEN`) runs from, shaped as cloudflared's (base64 of a JSON object with
    /// `a` the account, here the zone, and `t` the tunnel id), with `s` the credential PEM
    /// (key, certificate, edge, edge CA) where cloudflared has a shared secret, and `n` the
    /// name. As secret as the credentials file.
    pub fn to_token(&self) -> String {
        let v = serde_json::json!({
            "a": self.zone,
            "t": self.id,
            "n": self.name,
            "s": self.credential,
        });
        crate::proto::base64::encode(v.to_string().as_bytes())
    }

    /// Reads a token made by [`TunnelCredentials::to_token`]. Errors never quote the token.
    pub fn from_token(token: &str) -> Result<(TunnelCredentials, OriginCredential), String> {
        #[derive(Deserialize)]
        struct Token {
            a: String,
            t: String,
            #[serde(default)]
            n: Option<String>,
            s: String,
        }
        let token = token.trim();
        if token.len() > MAX_FILE_BYTES as usize {
            return Err(format!("the token is longer than {MAX_FILE_BYTES} bytes"));
        }
        let json = crate::proto::base64::decode(token)
            .or_else(|_| crate::proto::base64::decode_url(token.trim_end_matches('=')))
            .map_err(|_| {
                "the token is not base64 (copy it whole from `postern tunnel token NAME`)"
            })?;
        let t: Token = serde_json::from_slice(&json).map_err(|_| {
            "the token is not a tunnel token (`postern tunnel token NAME` makes one)"
        })?;
        if !t.s.contains("-----BEGIN") {
            return Err("this is a Cloudflare tunnel token: its secret is not a postern                         credential; make one with `postern tunnel token NAME` against your                         postern edge"
                .into());
        }
        TunnelCredentials {
            zone: t.a,
            name: t.n.unwrap_or_else(|| t.t.clone()),
            id: t.t,
            credential: t.s,
        }
        .check()
        .map_err(|e| format!("the token's {e}"))
    }

    /// The credentials file of the tunnel called (or with id) `name_or_id` in `dir`: first
    /// `dir/<id>.json`, then any `dir/*.json` whose `TunnelName` is `name_or_id`.
    pub fn find(dir: &Path, name_or_id: &str) -> Option<PathBuf> {
        if pki::valid_tunnel_id(name_or_id) {
            let p = dir.join(format!("{name_or_id}.json"));
            if p.is_file() {
                return Some(p);
            }
        }
        let mut found: Vec<PathBuf> = fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && p.file_stem()
                        .and_then(|s| s.to_str())
                        .is_some_and(pki::valid_tunnel_id)
            })
            .filter(|p| {
                read_small(p)
                    .ok()
                    .and_then(|t| serde_json::from_str::<TunnelCredentials>(&t).ok())
                    .is_some_and(|c| c.name == name_or_id || c.id == name_or_id)
            })
            .collect();
        found.sort();
        found.into_iter().next()
    }
}

/// The SNI an origin or admin command sends to the edge: the edge's own name when `edge` is
/// `name:port`, else `fallback` (a hostname the edge serves, or the zone).
pub fn edge_server_name(edge: &str, fallback: &str) -> String {
    let host = edge.rsplit_once(':').map_or(edge, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_err() && crate::proto::dns::valid_hostname(host) {
        host.to_ascii_lowercase()
    } else {
        fallback.to_ascii_lowercase()
    }
}

/// A grace period as a [`Duration`].
pub fn grace(v: &str) -> Result<Duration, String> {
    parse_seconds(v).map(Duration::from_secs)
}

/// For the fuzz target: parse a config file's text and its ingress rules, and route a few
/// hostnames through them. Must never panic, whatever `data` holds.
pub fn fuzz_config(data: &[u8]) {
    let Ok(cfg) = serde_json::from_slice::<TunnelConfig>(data) else {
        return;
    };
    fuzz_checks(cfg);
    if let Ok(creds) = serde_json::from_slice::<TunnelCredentials>(data) {
        let _ = OriginCredential::parse(&creds.credential);
    }
}

/// For the fuzz target: the same as [`fuzz_config`] for a config in YAML, and the line
/// lookup of every error path. Must never panic.
pub fn fuzz_config_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = crate::proto::yaml::Document::parse(text) else {
        return;
    };
    match doc.deserialize::<TunnelConfig>() {
        Ok(cfg) => {
            if let Err(e) = cfg.check(Path::new("/nonexistent/config.yml")) {
                let key = e.split_once(": ").map_or("", |(k, _)| k);
                let _ = doc.position(key);
            }
        }
        Err(e) => {
            let _ = doc.position(&e.path());
        }
    }
}

fn fuzz_checks(cfg: TunnelConfig) {
    if let Some(g) = &cfg.grace_period {
        let _ = parse_seconds(g);
    }
    let mut notices = Vec::new();
    if let Ok(ingress) = Ingress::from_raw(&cfg.ingress, cfg.origin_request.as_ref(), &mut notices)
    {
        assert!(ingress.rules().last().is_some_and(|r| r.hostname.is_none()));
        for r in ingress.rules() {
            let host = r.hostname.as_deref().unwrap_or("x.example.com");
            let host = host
                .strip_prefix("*.")
                .map_or(host.to_owned(), |s| format!("a.{s}"));
            let (i, _) = ingress.find(&host);
            assert!(i < ingress.rules().len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ignored_key_is_noticed_with_its_reason_from_the_one_table() {
        let json = r#"{"no-autoupdate": true, "autoupdate-freq": "24h", "protocol": "quic",
            "edge-ip-version": "auto", "edge-bind-address": "10.0.0.1", "region": "us",
            "retries": 5, "tag": ["a=b"], "transport-loglevel": "warn",
            "proto-loglevel": "warn", "metrics-update-freq": "5s", "compression-quality": 0,
            "warp-routing": {"enabled": true}, "post-quantum": true,
            "heartbeat-interval": "5s", "heartbeat-count": 5}"#;
        let cfg: TunnelConfig = serde_json::from_str(json).expect("every ignored key reads");
        let got = cfg.ignored_keys();
        assert_eq!(got.len(), 16, "{got:?}");
        for flag in crate::cloudflared::IGNORED {
            assert!(
                got.contains(&(flag.flag, flag.why)),
                "{}: {got:?}",
                flag.flag
            );
        }
    }

    #[test]
    fn a_bad_tunnel_token_says_what_it_is_without_quoting_it() {
        let err = |t: &str| match TunnelCredentials::from_token(t) {
            Err(e) => e,
            Ok(_) => panic!("{t} was accepted"),
        };
        assert!(err("not base64!").contains("not base64"));
        let not_json = crate::proto::base64::encode(b"[1,2]");
        assert!(err(&not_json).contains("not a tunnel token"));
        // cloudflared's shape: a shared secret where postern has the credential PEM.
        let cf = crate::proto::base64::encode(br#"{"a":"acct","t":"id","s":"c2VjcmV0"}"#);
        let e = err(&cf);
        assert!(e.contains("Cloudflare tunnel token"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
        let bad_pem =
            crate::proto::base64::encode(br#"{"a":"z","t":"id","s":"-----BEGIN NOTHING-----"}"#);
        assert!(err(&bad_pem).starts_with("the token's Credential"));
    }

    fn raw(rules: &[(Option<&str>, &str)]) -> Vec<RawRule> {
        rules
            .iter()
            .map(|(h, s)| RawRule {
                hostname: h.map(str::to_owned),
                service: (*s).to_owned(),
                path: None,
                origin_request: None,
            })
            .collect()
    }

    impl Ingress {
        fn from_raw_plain(raw: &[RawRule]) -> Result<Ingress, String> {
            let mut notices = Vec::new();
            let i = Ingress::from_raw(raw, None, &mut notices)?;
            assert!(notices.is_empty(), "{notices:?}");
            Ok(i)
        }
    }

    #[test]
    fn ingress_matches_in_order_with_wildcards_and_catch_all() {
        let ing = Ingress::from_raw_plain(&raw(&[
            (Some("SSH.example.com"), "ssh://localhost:22"),
            (Some("*.git.example.com"), "tcp://127.0.0.1:2222"),
            (None, "http_status:404"),
        ]))
        .unwrap();
        assert_eq!(ing.find("ssh.example.com").0, 0);
        assert_eq!(ing.find("a.git.example.com").0, 1);
        assert_eq!(ing.find("a.b.git.example.com").0, 1);
        assert_eq!(
            ing.find("git.example.com").0,
            2,
            "the wildcard needs a label"
        );
        assert_eq!(ing.find("xgit.example.com").0, 2);
        assert_eq!(
            ing.find("other.example.com").1.service,
            Service::Status(404)
        );
        assert_eq!(
            ing.rules()[0].service,
            Service::Tcp {
                addr: "localhost:22".into(),
                url: "ssh://localhost:22".into()
            }
        );
        assert_eq!(ing.rules()[0].connect_timeout, None);
    }

    #[test]
    fn ingress_errors_name_the_field() {
        type Rules<'a> = &'a [(Option<&'a str>, &'a str)];
        let cases: &[(Rules, &str)] = &[
            (&[], "ingress: no rules"),
            (
                &[(Some("a.example.com"), "ssh://x")],
                "ingress[0]: the last rule",
            ),
            (
                &[(None, "ssh://x"), (Some("a.example.com"), "ssh://x")],
                "ingress[0].hostname",
            ),
            (
                &[(Some("a b"), "ssh://x"), (None, "ssh://x")],
                "ingress[0].hostname",
            ),
            (
                &[(Some("a.*.com"), "ssh://x"), (None, "ssh://x")],
                "ingress[0].hostname",
            ),
            (
                &[(Some("10.0.0.1"), "ssh://x"), (None, "ssh://x")],
                "ingress[0].hostname",
            ),
            (
                &[(Some("a.example.com."), "ssh://x"), (None, "ssh://x")],
                "ingress[0].hostname",
            ),
            (
                &[(Some("a.com"), "ftp://x:21"), (None, "ssh://x")],
                "ingress[0].service",
            ),
            (&[(None, "tcp://nohost")], "ingress[0].service"),
            (&[(None, "http_status:99")], "ingress[0].service"),
        ];
        for (rules, want) in cases {
            let e = Ingress::from_raw_plain(&raw(rules)).unwrap_err();
            assert!(e.starts_with(want), "{rules:?}: {e}");
        }
    }

    #[test]
    fn single_and_catch_all_forms() {
        let one = Ingress::single("SSH.localhost", "ssh://127.0.0.1:2222").unwrap();
        assert_eq!(one.find("ssh.localhost").0, 0);
        assert_eq!(one.find("other.localhost").1.service, Service::Status(404));
        let all = Ingress::catch_all("127.0.0.1:22").unwrap();
        assert_eq!(all.find("anything").0, 0);
        assert!(Ingress::single("x", "ftp://x")
            .unwrap_err()
            .starts_with("--url"));
    }

    #[test]
    fn config_file_errors_name_file_and_field() {
        let dir = crate::store::tests::TempDir::new("tunnel-config");
        let path = dir.0.join("tunnel.json");
        let check = |text: &str, want: &str| {
            fs::write(&path, text).unwrap();
            let e = TunnelConfig::read(&path).unwrap_err();
            assert!(e.contains("tunnel.json") && e.contains(want), "{text}: {e}");
        };
        check(r#"{"tunel": "x"}"#, "unknown field `tunel`");
        check(
            r#"{"ingress": [{"service": "ssh://x", "port": 1}]}"#,
            "unknown field `port`",
        );
        check(r#"{"ha-connections": 0}"#, "ha-connections");
        check(r#"{"grace-period": "soon"}"#, "grace-period");
        check(r#"{"resume-window": "soon"}"#, "resume-window");
        check(r#"{"resume-window": "100000s"}"#, "resume-window");
        check(r#"{"tunnel": "a/b"}"#, "tunnel:");
        check(r#"{"edge": 443}"#, "edge: a \"HOST:PORT\" or a list");
        check(r#"{"edge": []}"#, "edge: names no edge");
        check(r#"{"edge": [" ", ","]}"#, "edge: names no edge");
        for (edge, want) in [
            (r#""a.example.com:443""#, vec!["a.example.com:443"]),
            (
                r#"["a:443", "b:443", "a:443"]"#,
                vec!["a:443", "b:443", "a:443"],
            ),
        ] {
            fs::write(&path, format!(r#"{{"edge": {edge}}}"#)).unwrap();
            let (cfg, _) = TunnelConfig::read(&path).unwrap();
            assert_eq!(cfg.edge.unwrap().list(), want, "a string or a list");
        }
        check(
            r#"{"ingress": [{"hostname": "a.example.com", "service": "htp://x"}, {"service": "http_status:404"}]}"#,
            "ingress[0].service",
        );
        fs::write(
            &path,
            r#"{"tunnel": "web", "credentials-file": "web.json",
                "ingress": [{"hostname": "ssh.example.com", "service": "ssh://localhost"},
                            {"service": "http_status:404"}]}"#,
        )
        .unwrap();
        let (cfg, ingress) = TunnelConfig::read(&path).unwrap();
        assert_eq!(cfg.credentials_file.unwrap(), dir.0.join("web.json"));
        assert_eq!(ingress.unwrap().rules().len(), 2);
    }

    #[test]
    fn a_config_yml_fills_the_same_model_as_json() {
        let dir = crate::store::tests::TempDir::new("tunnel-config-yml");
        let yml = dir.0.join("config.yml");
        fs::write(
            &yml,
            "# cloudflared's shape\n\
             tunnel: web\n\
             credentials-file: web.json\n\
             no-autoupdate: true\n\
             loglevel: debug\n\
             originRequest: &o\n  connectTimeout: 1m30s\n  tcpKeepAlive: 30s\n\
             ingress:\n\
             \x20 - hostname: ssh.example.com\n    service: ssh://localhost:22\n\
             \x20 - hostname: git.example.com\n    service: tcp://localhost:2222\n\
             \x20   originRequest:\n      <<: *o\n      connectTimeout: 5\n\
             \x20 - hostname: web.example.com\n    service: https://localhost:8443\n\
             \x20 - service: http_status:404\n",
        )
        .unwrap();
        let (cfg, ingress) = TunnelConfig::read(&yml).unwrap();
        let ingress = ingress.unwrap();
        assert_eq!(cfg.tunnel.as_deref(), Some("web"));
        assert_eq!(cfg.credentials_file.unwrap(), dir.0.join("web.json"));
        assert_eq!(cfg.loglevel.as_deref(), Some("debug"));
        let timeouts: Vec<Option<u64>> = ingress
            .rules()
            .iter()
            .map(|r| r.connect_timeout.map(|d| d.as_secs()))
            .collect();
        assert_eq!(timeouts, [Some(90), Some(5), Some(90), Some(90)]);
        assert_eq!(ingress.rules()[2].service, Service::Status(502));
        let notices = cfg.notices.join("\n");
        for want in [
            "config.yml: line 4 column 16: no-autoupdate: cloudflared's",
            "line 8 column 17: originRequest.tcpKeepAlive:",
            "line 18 column 14: ingress[2].service: \"https://localhost:8443\" is a web service",
        ] {
            assert!(notices.contains(want), "{want:?} not in\n{notices}");
        }
        // The merged `tcpKeepAlive` is noticed for the rule too, at the line it is written on.
        assert!(notices.contains("line 8 column 17: ingress[1].originRequest.tcpKeepAlive"));
        assert_eq!(cfg.notices.len(), 4, "{notices}");
        // The same keys in JSON: the same model.
        let json = dir.0.join("config.json");
        fs::write(
            &json,
            r#"{"tunnel": "web", "originRequest": {"connectTimeout": 7},
                "ingress": [{"service": "ssh://localhost", "path": "/x"}]}"#,
        )
        .unwrap();
        let (cfg, ingress) = TunnelConfig::read(&json).unwrap();
        let ingress = ingress.unwrap();
        let rule = &ingress.rules()[0];
        assert_eq!(rule.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(rule.service, Service::Status(404), "a path rule refuses");
        assert!(
            cfg.notices[0].contains("ingress[0].path"),
            "{:?}",
            cfg.notices
        );
    }

    #[test]
    fn go_durations_and_default_places() {
        let d = |v: &str| parse_go_duration(v).map(|d| d.as_millis());
        assert_eq!(d("30s"), Ok(30_000));
        assert_eq!(d("1m30s"), Ok(90_000));
        assert_eq!(d("500ms"), Ok(500));
        assert_eq!(d("2h"), Ok(7_200_000));
        assert_eq!(d("10"), Ok(10_000));
        for bad in [
            "",
            "s",
            "10x",
            "-1s",
            "25h",
            "1.5s",
            "99999999999999999999s",
        ] {
            assert!(d(bad).is_err(), "{bad}");
        }
        let paths = default_config_paths(Some(Path::new("/home/u")));
        let at = |p: &str| paths.iter().position(|x| x == Path::new(p)).unwrap();
        assert!(at("/home/u/.postern/config.json") < at("/home/u/.cloudflared/config.yml"));
        assert!(at("/home/u/.cloudflared/config.yml") < at("/etc/cloudflared/config.yml"));
        assert!(at("/etc/cloudflared/config.yaml") < at("/usr/local/etc/cloudflared/config.yml"));
    }

    #[test]
    fn server_name_prefers_the_edge_name() {
        assert_eq!(
            edge_server_name("edge.site.com:443", "site.com"),
            "edge.site.com"
        );
        assert_eq!(edge_server_name("127.0.0.1:8443", "localhost"), "localhost");
        assert_eq!(edge_server_name("[::1]:8443", "localhost"), "localhost");
        assert_eq!(parse_seconds("2m").unwrap(), 120);
        assert_eq!(parse_seconds("30s").unwrap(), 30);
        assert!(parse_seconds("-1").is_err());
    }
}
