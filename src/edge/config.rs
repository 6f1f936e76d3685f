//! The edge's settings: built from `--dev` (embedded default) or a JSON config file.
//!
//! ```json
//! {
//!   "listen": "0.0.0.0:443",
//!   "state_dir": "/var/lib/postern",
//!   "audit_log": "/var/log/postern/audit.log",
//!   "zones": [ { "name": "site.com", "cert": "/etc/postern/site.com.crt", "key": "/etc/postern/site.com.key" } ],
//!   "applications": [
//!     { "hostname": "ssh.site.com",
//!       "policies": [ { "decision": "allow", "include": [ { "service_token": "ci" } ] } ] }
//!   ],
//!   "limits": { "max_connections_per_ip": 256, "handshake_timeout_secs": 20 }
//! }
//! ```
//! Unknown fields are errors that name the field. `limits` is optional, and so is each of its
//! fields ([`EdgeLimits`] lists them with their defaults).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde::Deserialize;

use crate::limits::EdgeLimits;
pub use crate::oidc::OidcSettings;
use crate::pki::{self, Authority};
use crate::proto::mux;
use crate::proto::policy::{self, Decision, Identity, Policy, Rule, Verdict};
use crate::store::{self, EtcdAccess, EtcdConfig, EtcdUrl, StateDir};

/// Everything the edge loop needs, ready to use.
pub struct EdgeSettings {
    pub listen: SocketAddr,
    /// The local state directory: the whole state, or (with [`EdgeSettings::etcd`]) the
    /// signing keys, the CAs and the audit log.
    pub state: StateDir,
    /// The records an edge pool shares, in etcd (`"state": "etcd://…"` or `"etcds://…"`,
    /// `--state etcd://…`), with the TLS files and credentials to reach it.
    pub etcd: Option<EtcdConfig>,
    pub audit_log: PathBuf,
    pub carrier_tls: Arc<ServerConfig>,
    pub tunnel_tls: Arc<ServerConfig>,
    pub applications: Vec<Application>,
    pub identity: IdentityProvider,
    /// Base URL of the login pages (`https://login.site.com[:port]`); in dev, made from the
    /// bound port.
    pub public_url: Option<String>,
    pub tunnel_admins: Vec<Policy>,
    /// Who may use the admin console at `<public_url>/cdn-cgi/access/admin`; `None` (the
    /// config has no `admins`): the console is off.
    pub admins: Option<Vec<Policy>>,
    /// Zones origins may choose at `tunnel login`.
    pub zones: Vec<String>,
    /// Per zone, the lowercase hex SHA-256 of the SubjectPublicKeyInfo of the key its
    /// certificates have (the fixed certificate's, or `ca-leaf.key` for `local_ca`): stated in
    /// the zone sessions the edge signs (`postern_edge_spki`), so a client keeps a session only
    /// when the connection that brought it showed this key.
    pub zone_keys: Vec<(String, String)>,
    /// How long a zone session (one login per zone) lasts, in seconds (`zone_session_lifetime`,
    /// default 24h); the edge never makes one outlive its longest app-token lifetime.
    pub zone_session_lifetime: u64,
    /// The edge's own TLS CA, shipped inside origin credentials (dev only).
    pub tls_ca_pem: Option<String>,
    /// The origin CA (`origin-ca.pem`/`.key`), loaded once: it signs origin and tunnel
    /// certificates without a file read on the event loop.
    pub origin_ca: Arc<Authority>,
    /// Resource limits (the config's `limits`, or the defaults).
    pub limits: EdgeLimits,
    /// The SSH certificate authority (`ssh-ca.key`), loaded once.
    pub ssh_ca: Arc<crate::sshca::SshCa>,
    /// Called once the listener is bound (the CLI prints next steps).
    pub on_ready: Box<dyn Fn(SocketAddr) + Send>,
    /// Where to serve `/metrics` and `/ready` (the config's `metrics`; `--metrics` wins).
    pub metrics: Option<String>,
    /// The config file and what in it needs a restart, for SIGHUP; none with `--dev`.
    pub source: Option<ConfigSource>,
    /// Event loops (threads) that serve connections (`--workers`, the config's `workers`;
    /// docs/design.md §2.9). 1: one loop does everything.
    pub workers: usize,
}

impl EdgeSettings {
    /// The settings of a worker loop (`edge::core::loops`): a copy of what serving tunnels
    /// and carriers needs; no config file (loop 0 reloads and tells the workers).
    pub fn for_worker(&self) -> EdgeSettings {
        EdgeSettings {
            listen: self.listen,
            state: self.state.clone(),
            etcd: self.etcd.clone(),
            audit_log: self.audit_log.clone(),
            carrier_tls: self.carrier_tls.clone(),
            tunnel_tls: self.tunnel_tls.clone(),
            applications: self.applications.clone(),
            identity: self.identity.clone(),
            public_url: self.public_url.clone(),
            tunnel_admins: self.tunnel_admins.clone(),
            admins: self.admins.clone(),
            zones: self.zones.clone(),
            zone_keys: self.zone_keys.clone(),
            zone_session_lifetime: self.zone_session_lifetime,
            tls_ca_pem: self.tls_ca_pem.clone(),
            origin_ca: self.origin_ca.clone(),
            limits: self.limits.clone(),
            ssh_ca: self.ssh_ca.clone(),
            on_ready: Box::new(|_| {}),
            metrics: None,
            source: None,
            workers: self.workers,
        }
    }
}

/// The file an edge was started from, with the values of the fields a reload cannot change.
pub struct ConfigSource {
    pub path: PathBuf,
    restart_only: RestartOnly,
}

/// Fields that keep their start-up value on reload: the listener, state, audit log and TLS
/// zones are bound or opened once; the identity provider is discovered once and shared with
/// the login worker.
#[derive(Clone, PartialEq)]
struct RestartOnly {
    listen: SocketAddr,
    state_dir: PathBuf,
    state: Option<String>,
    etcd: EtcdAccess,
    audit_log: Option<PathBuf>,
    zones: Vec<Zone>,
    public_url: Option<String>,
    identity: Option<OidcSettings>,
    metrics: Option<String>,
    zone_session_lifetime: u64,
    workers: Option<usize>,
}

impl RestartOnly {
    fn of(cfg: &FileConfig) -> RestartOnly {
        RestartOnly {
            listen: cfg.listen,
            state_dir: cfg.state_dir.clone(),
            state: cfg.state.clone(),
            etcd: cfg.etcd_access(),
            audit_log: cfg.audit_log.clone(),
            zones: cfg.zones.clone(),
            public_url: cfg.public_url.clone(),
            identity: cfg.identity.clone(),
            metrics: cfg.metrics.clone(),
            zone_session_lifetime: cfg.zone_session_lifetime,
            workers: cfg.workers,
        }
    }

    /// The names of the fields that differ.
    fn changed(&self, new: &RestartOnly) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut field = |name, differs: bool| {
            if differs {
                out.push(name);
            }
        };
        field("listen", self.listen != new.listen);
        field("state_dir", self.state_dir != new.state_dir);
        field("state", self.state != new.state);
        field("etcd_ca", self.etcd.ca != new.etcd.ca);
        field("etcd_cert", self.etcd.cert != new.etcd.cert);
        field("etcd_key", self.etcd.key != new.etcd.key);
        field("etcd_user", self.etcd.user != new.etcd.user);
        field(
            "etcd_password_file",
            self.etcd.password_file != new.etcd.password_file,
        );
        field("audit_log", self.audit_log != new.audit_log);
        field("zones", self.zones != new.zones);
        field("public_url", self.public_url != new.public_url);
        field("identity", self.identity != new.identity);
        field("metrics", self.metrics != new.metrics);
        field(
            "zone_session_lifetime",
            self.zone_session_lifetime != new.zone_session_lifetime,
        );
        field("workers", self.workers != new.workers);
        out
    }
}

/// What a reload changes: applications, tunnel admins and limits, ready to swap in.
pub struct Reloaded {
    pub applications: Vec<Application>,
    pub tunnel_admins: Vec<Policy>,
    pub admins: Option<Vec<Policy>>,
    pub limits: EdgeLimits,
    /// Fields that changed in the file but keep their running value until a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Re-reads `source`'s file for SIGHUP. Checks it as strictly as at start-up (unknown fields,
/// invalid values); the caller keeps the running config when this fails.
pub fn reload(source: &ConfigSource) -> Result<Reloaded, ConfigError> {
    let path = &source.path;
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.clone(), e))?;
    let cfg: FileConfig =
        serde_json::from_str(&text).map_err(|e| ConfigError::Parse(path.clone(), e.to_string()))?;
    // An invalid value is reported with the file it is in, like a parse error.
    let named = |e| match e {
        ConfigError::Invalid(m) => ConfigError::Parse(path.clone(), m),
        other => other,
    };
    cfg.check().map_err(named)?;
    check_identity(&cfg, cfg.identity.as_ref()).map_err(named)?;
    let new = RestartOnly::of(&cfg);
    let needs_restart = source.restart_only.changed(&new);
    Ok(Reloaded {
        applications: cfg.applications,
        tunnel_admins: cfg.tunnel_admins,
        admins: cfg.admins,
        limits: cfg.limits,
        needs_restart,
    })
}

impl EdgeSettings {
    /// The edge's own TLS CA certificates (dev), as origin credentials carry them.
    pub fn tls_ca_certs(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        self.tls_ca_pem
            .as_deref()
            .and_then(|pem| pki::pem_sections(pem).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|(label, _)| label == "CERTIFICATE")
            .map(|(_, der)| der.into())
            .collect()
    }

    /// The first application whose hostname pattern matches `host`.
    pub fn application(&self, host: &str) -> Option<&Application> {
        self.applications.iter().find(|a| a.matches(host))
    }

    /// The zone `host` belongs to: the longest configured zone that is `host` or a suffix of it
    /// at a label boundary. With zones `site.com` and `team.site.com`, `x.team.site.com` is in
    /// `team.site.com`, and only that zone's certificates may register or route it.
    pub fn zone_of(&self, host: &str) -> Option<&str> {
        zone_of(&self.zones, host)
    }

    /// [`EdgeSettings::zone_keys`]' entry for `zone`.
    pub fn zone_key(&self, zone: &str) -> Option<&str> {
        self.zone_keys
            .iter()
            .find(|(z, _)| z == zone)
            .map(|(_, k)| k.as_str())
    }
}

/// [`EdgeSettings::zone_of`] over a list of zones.
pub fn zone_of<'a>(zones: &'a [String], host: &str) -> Option<&'a str> {
    zones
        .iter()
        .filter(|z| {
            host == z.as_str()
                || host
                    .strip_suffix(z.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        })
        .max_by_key(|z| z.len())
        .map(String::as_str)
}

/// An Access application: a hostname (or `*.zone`) and its ordered policies.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub hostname: String,
    /// How long an app token (a login) lasts, e.g. `"24h"`, `"30m"`, `"3600s"`.
    #[serde(default = "default_session", deserialize_with = "duration")]
    pub session_duration: u64,
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// Short-lived SSH certificates for this application (`edge::sshcerts`).
    #[serde(default)]
    pub ssh_certificates: crate::edge::sshcerts::SshCertificates,
    /// Step-up: the provider's sign-in may be at most this old when a token for this
    /// application is issued (`"0s"`: every login signs in again). Sent as OIDC `max_age`, and
    /// the ID token's `auth_time` is checked.
    #[serde(default, deserialize_with = "optional_age")]
    pub max_age: Option<u64>,
    /// Step-up: `acr_values` to ask the provider for (e.g. a class that means MFA).
    #[serde(default)]
    pub acr_values: Vec<String>,
    /// A session (one connection) to this application ends after this long, whatever it does;
    /// the client may connect again if its token and the policy still allow.
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_session_duration: Option<u64>,
    /// Jump-host mode: the `--destination`s clients may name (`proto::destination`). None:
    /// every destination is refused.
    #[serde(default)]
    pub bastion: Option<Bastion>,
}

/// `"bastion": {"allow": ["10.0.0.0/8:22", "db.internal:5432", "*.corp.internal:22"]}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bastion {
    #[serde(deserialize_with = "allow_list")]
    pub allow: crate::proto::destination::AllowList,
}

fn allow_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<crate::proto::destination::AllowList, D::Error> {
    let entries = Vec::<String>::deserialize(d)?;
    crate::proto::destination::AllowList::parse(&entries)
        .map_err(|e| serde::de::Error::custom(format!("bastion.allow{e}")))
}

fn default_session() -> u64 {
    24 * 3600
}

/// `"24h"`, `"30m"`, `"90s"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let (num, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(mul).filter(|&d| d > 0)
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "session_duration {text:?}: use a number with s, m, h or d, e.g. \"24h\""
        ))
    })
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "max_session_duration {text:?}: use a number with s, m, h or d, e.g. \"8h\""
        ))
    })
}

/// `max_age` also takes zero: OIDC's "authenticate again now".
fn optional_age<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    let zero = text.trim_end_matches(['s', 'm', 'h', 'd']);
    if !zero.is_empty() && zero.bytes().all(|b| b == b'0') && text.len() - zero.len() <= 1 {
        return Ok(Some(0));
    }
    parse_duration(&text).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "max_age {text:?}: use a number with s, m, h or d, e.g. \"15m\" (\"0s\": always)"
        ))
    })
}

impl Application {
    pub fn matches(&self, host: &str) -> bool {
        match self.hostname.strip_prefix("*.") {
            Some(zone) => {
                host == zone
                    || host
                        .strip_suffix(zone)
                        .is_some_and(|p| p.ends_with('.') && p.len() > 1)
            }
            None => host == self.hostname,
        }
    }

    /// First matching policy wins; no match is a deny.
    pub fn decide(&self, id: &Identity) -> Verdict {
        policy::evaluate(&self.policies, id)
    }
}

/// Where users sign in.
#[derive(Clone, Debug)]
pub enum IdentityProvider {
    /// No SSO: only service tokens (and bypass policies) get in.
    None,
    /// The embedded provider of `edge --dev`: an email and a one-time code printed by the edge.
    Dev,
    /// Any OpenID Connect provider.
    Oidc(OidcSettings),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    listen: SocketAddr,
    state_dir: PathBuf,
    /// The records an edge pool shares: `etcd://HOST:PORT[,HOST:PORT…]/PREFIX`. With it,
    /// `state_dir` keeps only the keys, the CAs and the audit log (docs/scaling.md).
    #[serde(default)]
    state: Option<String>,
    /// With an `etcds://` state: the CA that signed etcd's certificates (the only one
    /// trusted for etcd; env ETCDCTL_CACERT otherwise).
    #[serde(default)]
    etcd_ca: Option<PathBuf>,
    /// A client certificate for etcd's `--client-cert-auth`, and its key (mode 0600).
    #[serde(default)]
    etcd_cert: Option<PathBuf>,
    #[serde(default)]
    etcd_key: Option<PathBuf>,
    /// An etcd user (etcd's `auth enable`) and a file with its password (mode 0600).
    #[serde(default)]
    etcd_user: Option<String>,
    #[serde(default)]
    etcd_password_file: Option<PathBuf>,
    #[serde(default)]
    audit_log: Option<PathBuf>,
    zones: Vec<Zone>,
    applications: Vec<Application>,
    /// Where browsers come back after signing in, e.g. `https://login.site.com` (a name in
    /// one of the zones). Register `<public_url>/cdn-cgi/access/callback` at the provider.
    #[serde(default)]
    public_url: Option<String>,
    #[serde(default)]
    identity: Option<OidcSettings>,
    /// Who may mint origin certificates with `postern tunnel login`.
    #[serde(default)]
    tunnel_admins: Vec<Policy>,
    /// Who may use the admin console (`/cdn-cgi/access/admin`); absent: the console is off.
    #[serde(default)]
    admins: Option<Vec<Policy>>,
    /// Resource limits; each field defaults to its value in `limits.rs`.
    #[serde(default)]
    limits: EdgeLimits,
    /// Address for `/metrics` and `/ready`, e.g. `"127.0.0.1:2000"` (none by default).
    #[serde(default)]
    metrics: Option<String>,
    /// How long a zone session lasts (one browser login per zone), e.g. `"24h"`: the CLI gets
    /// tokens for the zone's other applications without a browser until it ends.
    #[serde(default = "default_session", deserialize_with = "zone_duration")]
    zone_session_lifetime: u64,
    /// Event loops (threads) that serve connections; absent: one per core (`--workers`).
    #[serde(default)]
    workers: Option<usize>,
}

fn zone_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "zone_session_lifetime {text:?}: use a number with s, m, h or d, e.g. \"24h\""
        ))
    })
}

/// A zone the edge terminates TLS for: with the operator's certificate and key, or with
/// leaves the edge's own CA (`ca.pem` in the state dir) issues per name (private zones, dev).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Zone {
    name: String,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    local_ca: bool,
}

#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    Read(PathBuf, std::io::Error),
    /// The JSON did not match the schema (serde names the field and line).
    Parse(PathBuf, String),
    /// A value is invalid.
    Invalid(String),
    /// State, certificates or keys could not be loaded.
    Io(std::io::Error),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read(p, e) => write!(f, "cannot read config {}: {e}", p.display()),
            ConfigError::Parse(p, e) => write!(f, "config {}: {e}", p.display()),
            ConfigError::Invalid(e) => write!(f, "config: {e}"),
            ConfigError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<std::io::Error> for ConfigError {
    fn from(e: std::io::Error) -> Self {
        ConfigError::Io(e)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The key file of a `local_ca` zone's server certificates, in the key directory.
const LEAF_KEY: &str = "ca-leaf.key";

/// How a zone's certificate is obtained.
enum ZoneCert {
    Fixed(Arc<CertifiedKey>),
    /// The edge's CA signs a leaf for each name on first use (cached, at most 1024 names).
    /// webpki refuses a wildcard over a single-label suffix such as `*.localhost`, and a
    /// per-name leaf works for every zone. Every leaf has the one key `ca-leaf.key`, as a
    /// zone certificate has one key for all its names: clients pin zone sessions to it.
    LocalCa(
        Arc<(Authority, pki::LeafKey)>,
        Mutex<HashMap<String, Arc<CertifiedKey>>>,
    ),
}

/// Serves the certificate of the (longest) zone the SNI name falls in.
struct ZoneResolver {
    zones: Vec<(String, ZoneCert)>,
}

impl fmt::Debug for ZoneResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.zones.iter().map(|(z, _)| z.as_str()).collect();
        write!(f, "ZoneResolver({names:?})")
    }
}

impl ResolvesServerCert for ZoneResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = match hello.server_name() {
            Some(n) => n.to_ascii_lowercase(),
            None => self.zones.first()?.0.clone(),
        };
        let (_, cert) = self
            .zones
            .iter()
            .filter(|(z, _)| name == *z || name.ends_with(&format!(".{z}")))
            .max_by_key(|(z, _)| z.len())?;
        match cert {
            ZoneCert::Fixed(k) => Some(k.clone()),
            ZoneCert::LocalCa(ca, cache) => {
                if !crate::proto::dns::valid_hostname(&name) {
                    return None;
                }
                let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(k) = cache.get(&name) {
                    return Some(k.clone());
                }
                if cache.len() >= 1024 {
                    cache.clear();
                }
                let (ca, leaf_key) = &**ca;
                let (chain, key) = ca
                    .issue_server_with(std::slice::from_ref(&name), leaf_key)
                    .ok()?;
                let k = certified_key(chain, key).ok()?;
                cache.insert(name, k.clone());
                Some(k)
            }
        }
    }
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, ConfigError> {
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| ConfigError::Invalid(format!("unusable private key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

fn tls_configs(
    resolver: Arc<dyn ResolvesServerCert>,
    origin_ca: &Authority,
) -> Result<(Arc<ServerConfig>, Arc<ServerConfig>), ConfigError> {
    let mut carrier = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    carrier.alpn_protocols = vec![b"http/1.1".to_vec()];

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(origin_ca.cert_der())
        .map_err(|e| ConfigError::Invalid(format!("origin CA: {e}")))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| ConfigError::Invalid(format!("origin CA: {e}")))?;
    let mut tunnel = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    tunnel.alpn_protocols = vec![mux::ALPN.to_vec(), crate::proto::ADMIN_ALPN.to_vec()];
    Ok((Arc::new(carrier), Arc::new(tunnel)))
}

/// The embedded default: zone `localhost` on the edge's own CA, the dev identity provider,
/// one application `*.localhost` for any service token of this edge and any dev user, and
/// every dev user may `tunnel login`.
pub fn dev(listen: SocketAddr, state_dir: &Path) -> Result<EdgeSettings, ConfigError> {
    let cfg = FileConfig {
        listen,
        state_dir: state_dir.to_owned(),
        state: None,
        etcd_ca: None,
        etcd_cert: None,
        etcd_key: None,
        etcd_user: None,
        etcd_password_file: None,
        audit_log: None,
        zones: vec![Zone {
            name: "localhost".into(),
            cert: None,
            key: None,
            local_ca: true,
        }],
        applications: vec![Application {
            hostname: "*.localhost".into(),
            session_duration: default_session(),
            policies: vec![Policy {
                name: Some("dev: this edge's service tokens and dev users".into()),
                decision: Decision::Allow,
                include: vec![Rule::AnyValidServiceToken(true), Rule::Everyone(true)],
                require: vec![],
                exclude: vec![],
            }],
            ssh_certificates: Default::default(),
            max_age: None,
            acr_values: Vec::new(),
            max_session_duration: None,
            bastion: None,
        }],
        public_url: None,
        identity: None,
        tunnel_admins: vec![Policy {
            name: Some("dev: every dev user".into()),
            decision: Decision::Allow,
            include: vec![Rule::Everyone(true)],
            require: vec![],
            exclude: vec![],
        }],
        // Off in dev: anyone at the dev sign-in can claim any email.
        admins: None,
        limits: EdgeLimits::default(),
        metrics: None,
        zone_session_lifetime: default_session(),
        workers: None,
    };
    build(cfg, IdentityProvider::Dev)
}

/// The most event loops an edge runs (`--workers`).
pub const MAX_WORKERS: usize = 64;

/// `workers` (or `--workers`) checked: 1 to [`MAX_WORKERS`].
pub fn check_workers(n: usize) -> Result<usize, String> {
    if (1..=MAX_WORKERS).contains(&n) {
        Ok(n)
    } else {
        Err(format!("workers {n}: give 1 to {MAX_WORKERS} event loops"))
    }
}

/// One event loop per core the process may run on.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_WORKERS)
}

/// A deployment from a JSON config file.
pub fn from_file(path: &Path) -> Result<EdgeSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<EdgeSettings, ConfigError> {
    let mut cfg: FileConfig = serde_json::from_str(text)
        .map_err(|e| ConfigError::Parse(path.to_owned(), e.to_string()))?;
    cfg.check()?;
    let source = ConfigSource {
        path: path.to_owned(),
        restart_only: RestartOnly::of(&cfg),
    };
    // The dev provider is never reachable from a config file: only `--dev` enables it.
    let identity = match cfg.identity.take() {
        Some(o) => IdentityProvider::Oidc(o),
        None => IdentityProvider::None,
    };
    let mut settings = build(cfg, identity)?;
    settings.source = Some(source);
    Ok(settings)
}

/// Parses an edge config the way `--config` does, without touching the filesystem (no state
/// directory, certificates or keys): never panics, whatever the bytes.
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub fn fuzz_config(data: &[u8]) {
    if let Ok(cfg) = serde_json::from_slice::<FileConfig>(data) {
        let _ = cfg.check();
        for app in &cfg.applications {
            let _ = app.matches("ssh.site.com");
            let _ = app.decide(&Identity::default());
        }
    }
}

impl FileConfig {
    /// The `etcd_*` keys.
    fn etcd_access(&self) -> EtcdAccess {
        EtcdAccess {
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            user: self.etcd_user.clone(),
            password_file: self.etcd_password_file.clone(),
        }
    }

    /// The checks that need no filesystem.
    fn check(&self) -> Result<(), ConfigError> {
        match &self.state {
            Some(state) => {
                EtcdUrl::parse(state).map_err(|e| ConfigError::Invalid(format!("state: {e}")))?;
            }
            None if !self.etcd_access().is_empty() => {
                return Err(ConfigError::Invalid(
                    "etcd_ca, etcd_cert, etcd_key, etcd_user and etcd_password_file go with \
                     \"state\": \"etcds://…\" (or etcd://…)"
                        .into(),
                ))
            }
            None => {}
        }
        if self.zones.is_empty() {
            return Err(ConfigError::Invalid(
                "`zones` must name at least one zone".into(),
            ));
        }
        for app in &self.applications {
            app.ssh_certificates.check().map_err(|e| {
                ConfigError::Invalid(format!("applications[] {}: {e}", app.hostname))
            })?;
            let bare = app.hostname.strip_prefix("*.").unwrap_or(&app.hostname);
            if !crate::proto::dns::valid_hostname(bare) {
                return Err(ConfigError::Invalid(format!(
                    "applications[].hostname {:?} is not a hostname or *.zone",
                    app.hostname
                )));
            }
        }
        if let Some(url) = &self.public_url {
            // Just scheme, host and port: the login pages' links, the cookie's origin and the
            // Origin check of the confirmation are all derived from it.
            let authority = url
                .strip_prefix("https://")
                .map(|a| a.trim_end_matches('/'));
            let valid = authority.is_some_and(|a| {
                let (host, port) = match a.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (a, None),
                };
                crate::proto::dns::valid_hostname(host)
                    && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
            });
            if !valid {
                return Err(ConfigError::Invalid(format!(
                    "public_url {url:?} must be https://HOST or https://HOST:PORT (a host name, \
                     no path)"
                )));
            }
        }
        self.limits.check().map_err(ConfigError::Invalid)
    }
}

/// The identity checks that need no network: a provider needs `public_url` and a secret.
fn check_identity(cfg: &FileConfig, identity: Option<&OidcSettings>) -> Result<(), ConfigError> {
    if cfg.admins.is_some() && identity.is_none() {
        return Err(ConfigError::Invalid(
            "admins needs identity: the admin console signs admins in at the provider".into(),
        ));
    }
    if let Some(o) = identity {
        if cfg.public_url.is_none() {
            return Err(ConfigError::Invalid(
                "identity needs public_url (where the provider sends browsers back)".into(),
            ));
        }
        if o.client_secret.is_none()
            && o.client_secret_file.is_none()
            && std::env::var_os("POSTERN_OIDC_CLIENT_SECRET").is_none()
        {
            return Err(ConfigError::Invalid(
                "identity.client_secret_file (or client_secret, or env POSTERN_OIDC_CLIENT_SECRET) is missing".into(),
            ));
        }
    }
    Ok(())
}

fn build(cfg: FileConfig, identity: IdentityProvider) -> Result<EdgeSettings, ConfigError> {
    cfg.check()?;
    match &identity {
        IdentityProvider::Oidc(o) => check_identity(&cfg, Some(o))?,
        _ => check_identity(&cfg, None)?,
    }
    let etcd = match &cfg.state {
        None => None,
        Some(url) => {
            let url =
                EtcdUrl::parse(url).map_err(|e| ConfigError::Invalid(format!("state: {e}")))?;
            Some(EtcdConfig::new(url, &cfg.etcd_access()).map_err(ConfigError::Invalid)?)
        }
    };
    let state = StateDir::open(&cfg.state_dir)?;
    let origin_ca = Authority::load_or_create(&state, "origin-ca", "postern origin CA")?;
    let ssh_ca = crate::sshca::SshCa::load_or_create(&state)?;
    let mut zones = Vec::new();
    let mut names = Vec::new();
    let mut tls_ca_pem = None;
    let mut zone_keys = Vec::new();
    for (i, z) in cfg.zones.into_iter().enumerate() {
        let name = z.name.to_ascii_lowercase();
        if !crate::proto::dns::valid_hostname(&name) {
            return Err(ConfigError::Invalid(format!(
                "zones[{i}].name {name:?} is not a DNS name"
            )));
        }
        let cert = match (z.cert, z.key, z.local_ca) {
            (Some(c), Some(k), false) => {
                let chain = pki::load_certs(&c)?;
                let key = pki::load_private_key(&k)?;
                let spki = chain.first().and_then(pki::spki_sha256).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "zones[{i}] ({name}): {} holds no certificate postern can read",
                        c.display()
                    ))
                })?;
                zone_keys.push((name.clone(), store::hex(&spki)));
                ZoneCert::Fixed(certified_key(chain, key)?)
            }
            (None, None, true) => {
                let ca_existed = state.path().join("ca.key").exists();
                let ca = Authority::load_or_create(&state, "ca", "postern edge CA")?;
                let (key, origin) = pki::LeafKey::load_or_create(&state, LEAF_KEY)?;
                if origin == pki::LeafKeyOrigin::Created && ca_existed {
                    // An upgrade: every edge of a pool would make its own, and clients'
                    // zone-session pins would then flip from edge to edge.
                    log::warn!(
                        "created {} (the one key of the local CA's server certificates): if \
                         other edges share this key directory (a pool), stop them, copy this \
                         file to each (0600) and start them again (docs/scaling.md)",
                        state.path().join(LEAF_KEY).display()
                    );
                }
                tls_ca_pem = Some(ca.cert_pem().to_owned());
                zone_keys.push((name.clone(), store::hex(&key.spki_sha256())));
                ZoneCert::LocalCa(Arc::new((ca, key)), Mutex::new(HashMap::new()))
            }
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "zones[{i}] ({name}): give either cert and key, or local_ca: true"
                )))
            }
        };
        names.push(name.clone());
        zones.push((name, cert));
    }
    let (carrier_tls, tunnel_tls) = tls_configs(Arc::new(ZoneResolver { zones }), &origin_ca)?;
    Ok(EdgeSettings {
        listen: cfg.listen,
        audit_log: cfg
            .audit_log
            .unwrap_or_else(|| state.path().join("audit.log")),
        state,
        etcd,
        carrier_tls,
        tunnel_tls,
        applications: cfg.applications,
        identity,
        public_url: cfg.public_url.map(|u| u.trim_end_matches('/').to_owned()),
        tunnel_admins: cfg.tunnel_admins,
        admins: cfg.admins,
        zones: names,
        zone_keys,
        zone_session_lifetime: cfg.zone_session_lifetime,
        tls_ca_pem,
        origin_ca: Arc::new(origin_ca),
        ssh_ca: Arc::new(ssh_ca),
        limits: cfg.limits,
        on_ready: Box::new(|_| {}),
        metrics: cfg.metrics,
        source: None,
        workers: match cfg.workers {
            Some(n) => check_workers(n).map_err(ConfigError::Invalid)?,
            None => default_workers(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostname_is_in_the_longest_configured_zone_it_ends_in() {
        let zones = ["site.com".to_owned(), "team.site.com".to_owned()];
        assert_eq!(zone_of(&zones, "x.team.site.com"), Some("team.site.com"));
        assert_eq!(zone_of(&zones, "team.site.com"), Some("team.site.com"));
        assert_eq!(zone_of(&zones, "x.site.com"), Some("site.com"));
        assert_eq!(zone_of(&zones, "site.com"), Some("site.com"));
        // Label boundaries: `xteam.site.com` is in site.com, `othersite.com` in none.
        assert_eq!(zone_of(&zones, "xteam.site.com"), Some("site.com"));
        assert_eq!(zone_of(&zones, "othersite.com"), None);
        assert_eq!(zone_of(&zones, "com"), None);
        // Order in the config does not matter.
        let reversed = ["team.site.com".to_owned(), "site.com".to_owned()];
        assert_eq!(zone_of(&reversed, "x.team.site.com"), Some("team.site.com"));
    }

    #[test]
    fn unknown_field_is_named() {
        let err = match parse(
            Path::new("edge.json"),
            r#"{"listen":"127.0.0.1:1","state_dir":"/tmp/x","zones":[],"applications":[],"bogus":1}"#,
        ) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted an unknown field"),
        };
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn public_url_is_scheme_host_and_port_only() {
        let base = r#""listen":"127.0.0.1:1","state_dir":"/tmp/x","zones":[{"name":"a.test","local_ca":true}],"applications":[]"#;
        let check = |url: &str| {
            let cfg: FileConfig =
                serde_json::from_str(&format!(r#"{{{base},"public_url":"{url}"}}"#)).unwrap();
            cfg.check().map_err(|e| e.to_string())
        };
        for good in [
            "https://login.a.test",
            "https://login.a.test:8443",
            "https://login.a.test/",
        ] {
            assert!(check(good).is_ok(), "{good}: {:?}", check(good));
        }
        for bad in [
            "http://login.a.test",
            "https://login.a.test/sso",
            "https://[::1]:8443",
            "https://login.a.test:0",
            "https://login.a.test:x",
            "https://",
            // An IP address is not a host name (proto::dns): a browser's cookie and the
            // Origin check are for a name.
            "https://10.0.0.1",
            "https://login.a.test.",
        ] {
            let err = check(bad).expect_err(bad);
            assert!(err.contains("public_url"), "{bad}: {err}");
        }
    }

    /// Application hostnames follow the one host-name rule (`proto::dns`), with `*.` allowed
    /// in front.
    #[test]
    fn application_hostnames_follow_the_host_name_rule() {
        let check = |hostname: &str| {
            let text = format!(
                r#"{{"listen":"127.0.0.1:1","state_dir":"/tmp/x","zones":[{{"name":"a.test","local_ca":true}}],"applications":[{{"hostname":"{hostname}","policies":[]}}]}}"#
            );
            let cfg: FileConfig = serde_json::from_str(&text).unwrap();
            cfg.check().map_err(|e| e.to_string())
        };
        for good in ["ssh.a.test", "SSH.a.test", "*.a.test", "a.test"] {
            assert!(check(good).is_ok(), "{good}: {:?}", check(good));
        }
        for bad in [
            "ssh..a.test",
            "ssh.a.test.",
            "ssh_1.a.test",
            "10.0.0.1",
            "*.10.0.0",
            "*.*.a.test",
            "ssh.a.test:22",
        ] {
            let err = check(bad).expect_err(bad);
            assert!(err.contains("applications[].hostname"), "{bad}: {err}");
        }
    }

    #[test]
    fn limits_default_when_absent_and_unknown_limits_are_named() {
        let base = r#""listen":"127.0.0.1:1","state_dir":"/tmp/x","zones":[{"name":"a.test","local_ca":true}],"applications":[]"#;
        let cfg: FileConfig = serde_json::from_str(&format!("{{{base}}}")).unwrap();
        assert_eq!(cfg.limits, EdgeLimits::default());
        let cfg: FileConfig = serde_json::from_str(&format!(
            r#"{{{base},"limits":{{"max_connections_per_ip":10,"idle_timeout_secs":600}}}}"#
        ))
        .unwrap();
        assert_eq!(cfg.limits.max_connections_per_ip, 10);
        assert_eq!(cfg.limits.idle_timeout_secs, 600);
        assert_eq!(
            cfg.limits.handshake_timeout_secs,
            crate::limits::HANDSHAKE_TIMEOUT_SECS
        );
        for (bad, named) in [
            (r#"{"max_conections":1}"#, "max_conections"),
            (r#"{"handshake_timeout_secs":0}"#, "handshake_timeout_secs"),
            (
                r#"{"max_streams_per_tunnel":99999}"#,
                "max_streams_per_tunnel",
            ),
            (
                r#"{"max_connections":5,"max_connections_per_ip":6}"#,
                "max_connections_per_ip",
            ),
        ] {
            let err = match parse(
                Path::new("edge.json"),
                &format!(r#"{{{base},"limits":{bad}}}"#),
            ) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("accepted limits {bad}"),
            };
            assert!(err.contains(named), "{bad}: {err}");
        }
    }

    #[test]
    fn state_in_etcd_is_a_checked_url() {
        let base = r#""listen":"127.0.0.1:1","state_dir":"/tmp/x","zones":[{"name":"a.test","local_ca":true}],"applications":[]"#;
        let cfg = parse(
            Path::new("edge.json"),
            &format!(r#"{{{base},"state":"etcd://10.0.0.5:2379,10.0.0.6:2379/postern"}}"#),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cfg.etcd.map(|u| u.to_string()).as_deref(),
            Some("etcd://10.0.0.5:2379,10.0.0.6:2379/postern")
        );
        for bad in [
            "/var/lib/postern",
            "etcd://10.0.0.5/postern",
            "etcd://h:2379",
        ] {
            let err = match parse(
                Path::new("edge.json"),
                &format!(r#"{{{base},"state":"{bad}"}}"#),
            ) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("accepted state {bad}"),
            };
            assert!(
                err.contains("state:") && err.contains("etcd://HOST:PORT"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn etcd_tls_and_auth_keys_are_checked_and_named() {
        let base = r#""listen":"127.0.0.1:1","state_dir":"/tmp/x","zones":[{"name":"a.test","local_ca":true}],"applications":[]"#;
        let err = |extra: &str| match parse(Path::new("edge.json"), &format!("{{{base},{extra}}}"))
        {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted {extra}"),
        };
        // Without an etcd state the keys mean nothing: an error, not silence.
        let e = err(r#""etcd_ca":"/etc/postern/etcd-ca.pem""#);
        assert!(e.contains("etcd_ca") && e.contains("etcds://"), "{e}");
        // etcds:// needs the CA; the message names the key (and the flag and variable).
        let e = err(r#""state":"etcds://10.0.0.5:2379/postern""#);
        assert!(e.contains("\"etcd_ca\""), "{e}");
        // TLS files with a plain etcd:// state.
        let e = err(r#""state":"etcd://10.0.0.5:2379/postern","etcd_ca":"/ca.pem""#);
        assert!(e.contains("etcds://"), "{e}");
        // A user without a password; a CA file that is not there.
        let e = err(
            r#""state":"etcd://10.0.0.5:2379/postern","etcd_user":"postern","etcd_password_file":"/nonexistent/pw""#,
        );
        assert!(e.contains("\"etcd_password_file\""), "{e}");
        let e = err(r#""state":"etcds://10.0.0.5:2379/postern","etcd_ca":"/nonexistent/ca.pem""#);
        assert!(
            e.contains("\"etcd_ca\"") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        let e = err(r#""state":"etcds://10.0.0.5:2379/postern","etcd_bogus":1"#);
        assert!(e.contains("etcd_bogus"), "{e}");
    }

    #[test]
    fn workers_out_of_range_are_refused_naming_the_field() {
        let base = r#""listen":"127.0.0.1:1","state_dir":"/tmp/x","zones":[{"name":"a.test","local_ca":true}],"applications":[]"#;
        for n in [0, MAX_WORKERS + 1] {
            let text = format!("{{{base},\"workers\":{n}}}");
            match parse(Path::new("edge.json"), &text) {
                Err(e) => assert!(e.to_string().contains(&format!("workers {n}")), "{e}"),
                Ok(_) => panic!("accepted workers {n}"),
            }
        }
        assert_eq!(check_workers(3), Ok(3));
        assert!((1..=MAX_WORKERS).contains(&default_workers()));
    }

    #[test]
    fn reload_names_restart_only_fields_and_refuses_bad_values_by_file() {
        let dir = std::env::temp_dir().join(format!("postern-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("edge.json");
        let base = r#""state_dir":"/tmp/x","zones":[{"name":"a.test","local_ca":true}]"#;
        let write = |body: &str| std::fs::write(&path, format!("{{{base},{body}}}")).unwrap();
        write(r#""listen":"127.0.0.1:1","applications":[]"#);
        let text = std::fs::read_to_string(&path).unwrap();
        let cfg: FileConfig = serde_json::from_str(&text).unwrap();
        let source = ConfigSource {
            path: path.clone(),
            restart_only: RestartOnly::of(&cfg),
        };
        write(
            r#""listen":"127.0.0.1:2","applications":[{"hostname":"ssh.a.test"}],
               "limits":{"idle_timeout_secs":7,"max_pending_transfers":5}"#,
        );
        let new = reload(&source).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(new.applications.len(), 1);
        assert_eq!(new.limits.idle_timeout_secs, 7);
        // Login budgets apply on reload too (logins already waiting keep their place).
        assert_eq!(new.limits.max_pending_transfers, 5);
        assert_eq!(new.needs_restart, ["listen"]);
        write(r#""listen":"127.0.0.1:1","applications":[{"hostname":"bad host"}]"#);
        let err = reload(&source)
            .err()
            .expect("an invalid hostname is refused");
        let msg = err.to_string();
        assert!(
            msg.contains("edge.json") && msg.contains("hostname"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn admins_is_optional_reloadable_and_needs_an_identity_provider() {
        let dir = std::env::temp_dir().join(format!("postern-admins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("edge.json");
        let base = r#""listen":"127.0.0.1:1","state_dir":"/tmp/x",
            "zones":[{"name":"a.test","local_ca":true}],"applications":[]"#;
        let write = |body: &str| std::fs::write(&path, format!("{{{base}{body}}}")).unwrap();
        write("");
        let cfg: FileConfig =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(cfg.admins.is_none(), "absent: the console is off");
        let source = ConfigSource {
            path: path.clone(),
            restart_only: RestartOnly::of(&cfg),
        };
        let admins = r#","admins":[{"decision":"allow","include":[{"group":"ops"}]}]"#;
        write(admins);
        let err = reload(&source).err().expect("admins without a provider");
        assert!(err.to_string().contains("admins needs identity"), "{err}");
        write(&format!(
            r#"{admins},"public_url":"https://login.a.test","identity":{{"issuer":"https://idp.a.test","client_id":"c","client_secret":"s"}}"#
        ));
        let new = reload(&source).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(new.admins.map(|a| a.len()), Some(1));
        // `--dev` never opens a console: its sign-in takes any email on trust.
        let dev = dev("127.0.0.1:1".parse().unwrap(), &dir.join("dev-state")).unwrap();
        assert!(dev.admins.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wildcard_matching_and_first_policy_wins() {
        let app: Application = serde_json::from_str(
            r#"{"hostname":"*.site.com","session_duration":"8h","policies":[
                {"decision":"deny","include":[{"service_token":"bad"}]},
                {"decision":"allow","include":[{"any_valid_service_token":true}]}]}"#,
        )
        .unwrap();
        assert_eq!(app.session_duration, 8 * 3600);
        let token = |n: &str| Identity {
            service_token: Some(n.into()),
            ..Identity::default()
        };
        assert!(app.matches("ssh.site.com"));
        assert!(app.matches("site.com"));
        assert!(!app.matches("evilsite.com"));
        assert!(!app.matches(".site.com"));
        assert!(app.decide(&token("ci")).allow);
        assert!(!app.decide(&token("bad")).allow);
    }
}
