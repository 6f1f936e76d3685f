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
//!   ]
//! }
//! ```
//! Unknown fields are errors that name the field.

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

use crate::mux;
use crate::pki::{self, Authority};
use crate::state::StateDir;

/// Everything the edge loop needs, ready to use.
pub struct EdgeSettings {
    pub listen: SocketAddr,
    pub state: StateDir,
    pub audit_log: PathBuf,
    pub carrier_tls: Arc<ServerConfig>,
    pub tunnel_tls: Arc<ServerConfig>,
    pub applications: Vec<Application>,
    /// Called once the listener is bound (the CLI prints next steps).
    pub on_ready: Box<dyn Fn(SocketAddr)>,
}

impl EdgeSettings {
    /// The first application whose hostname pattern matches `host`.
    pub fn application(&self, host: &str) -> Option<&Application> {
        self.applications.iter().find(|a| a.matches(host))
    }
}

/// An Access application: a hostname (or `*.zone`) and its ordered policies.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub hostname: String,
    #[serde(default)]
    pub policies: Vec<Policy>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub decision: Decision,
    pub include: Vec<Rule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

/// One include rule. Identity rules (emails, groups) arrive with SSO.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Rule {
    /// A service token by name.
    ServiceToken(String),
    /// Any service token minted by this edge.
    AnyValidServiceToken(bool),
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
    pub fn allows_service_token(&self, name: &str) -> bool {
        for p in &self.policies {
            let hit = p.include.iter().any(|r| match r {
                Rule::ServiceToken(n) => n == name,
                Rule::AnyValidServiceToken(b) => *b,
            });
            if hit {
                return p.decision == Decision::Allow;
            }
        }
        false
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: SocketAddr,
    state_dir: PathBuf,
    #[serde(default)]
    audit_log: Option<PathBuf>,
    zones: Vec<Zone>,
    applications: Vec<Application>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Zone {
    name: String,
    cert: PathBuf,
    key: PathBuf,
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

/// Serves the certificate of the zone the SNI name falls in.
#[derive(Debug)]
struct ZoneResolver {
    zones: Vec<(String, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for ZoneResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            return self.zones.first().map(|(_, k)| k.clone());
        };
        let sni = sni.to_ascii_lowercase();
        self.zones
            .iter()
            .filter(|(z, _)| sni == *z || sni.ends_with(&format!(".{z}")))
            .max_by_key(|(z, _)| z.len())
            .map(|(_, k)| k.clone())
    }
}

/// The dev edge's resolver: the local CA signs a leaf for each `*.localhost` name on first
/// use (webpki does not accept `*.localhost`, a wildcard over a single-label suffix).
struct DevResolver {
    ca: Authority,
    cache: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl fmt::Debug for DevResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevResolver")
    }
}

impl ResolvesServerCert for DevResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()
            .unwrap_or("localhost")
            .to_ascii_lowercase();
        if !(name == "localhost" || name.ends_with(".localhost")) || !super::valid_hostname(&name) {
            return None;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = cache.get(&name) {
            return Some(k.clone());
        }
        if cache.len() >= 1024 {
            cache.clear();
        }
        let (chain, key) = self.ca.issue_server(std::slice::from_ref(&name)).ok()?;
        let k = certified_key(chain, key).ok()?;
        cache.insert(name, k.clone());
        Some(k)
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
    tunnel.alpn_protocols = vec![mux::ALPN.to_vec()];
    Ok((Arc::new(carrier), Arc::new(tunnel)))
}

/// The embedded default: a local CA, `*.localhost`, any service token of this edge.
pub fn dev(listen: SocketAddr, state_dir: &Path) -> Result<EdgeSettings, ConfigError> {
    let state = StateDir::open(state_dir)?;
    let tls_ca = Authority::load_or_create(&state, "ca", "postern dev CA")?;
    let origin_ca = Authority::load_or_create(&state, "origin-ca", "postern origin CA")?;
    let resolver = Arc::new(DevResolver {
        ca: tls_ca,
        cache: Mutex::new(HashMap::new()),
    });
    let (carrier_tls, tunnel_tls) = tls_configs(resolver, &origin_ca)?;
    let applications = vec![Application {
        hostname: "*.localhost".into(),
        policies: vec![Policy {
            decision: Decision::Allow,
            include: vec![Rule::AnyValidServiceToken(true)],
        }],
    }];
    Ok(EdgeSettings {
        listen,
        audit_log: state.path().join("audit.log"),
        state,
        carrier_tls,
        tunnel_tls,
        applications,
        on_ready: Box::new(|_| {}),
    })
}

/// A deployment from a JSON config file.
pub fn from_file(path: &Path) -> Result<EdgeSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<EdgeSettings, ConfigError> {
    let cfg: FileConfig = serde_json::from_str(text)
        .map_err(|e| ConfigError::Parse(path.to_owned(), e.to_string()))?;
    if cfg.zones.is_empty() {
        return Err(ConfigError::Invalid(
            "`zones` must name at least one zone".into(),
        ));
    }
    for app in &cfg.applications {
        let bare = app.hostname.strip_prefix("*.").unwrap_or(&app.hostname);
        if !super::valid_hostname(bare) {
            return Err(ConfigError::Invalid(format!(
                "applications[].hostname {:?} is not a hostname or *.zone",
                app.hostname
            )));
        }
    }
    let state = StateDir::open(&cfg.state_dir)?;
    let origin_ca = Authority::load_or_create(&state, "origin-ca", "postern origin CA")?;
    let mut zones = Vec::new();
    for z in cfg.zones {
        let chain = pki::load_certs(&z.cert)?;
        let key = pki::load_private_key(&z.key)?;
        zones.push((z.name.to_ascii_lowercase(), certified_key(chain, key)?));
    }
    let (carrier_tls, tunnel_tls) = tls_configs(Arc::new(ZoneResolver { zones }), &origin_ca)?;
    Ok(EdgeSettings {
        listen: cfg.listen,
        audit_log: cfg
            .audit_log
            .unwrap_or_else(|| state.path().join("audit.log")),
        state,
        carrier_tls,
        tunnel_tls,
        applications: cfg.applications,
        on_ready: Box::new(|_| {}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn wildcard_matching_and_first_policy_wins() {
        let app = Application {
            hostname: "*.site.com".into(),
            policies: vec![
                Policy {
                    decision: Decision::Deny,
                    include: vec![Rule::ServiceToken("bad".into())],
                },
                Policy {
                    decision: Decision::Allow,
                    include: vec![Rule::AnyValidServiceToken(true)],
                },
            ],
        };
        assert!(app.matches("ssh.site.com"));
        assert!(app.matches("site.com"));
        assert!(!app.matches("evilsite.com"));
        assert!(!app.matches(".site.com"));
        assert!(app.allows_service_token("ci"));
        assert!(!app.allows_service_token("bad"));
    }
}
