//! Named tunnels on the origin: the config file of `tunnel run`, its ingress rules, and the
//! credentials file `tunnel create` writes.
//!
//! Contract:
//! - The config file is JSON with cloudflared's key names (`tunnel`, `credentials-file`,
//!   `ingress` with `hostname` and `service`, `metrics`), plus `edge`, `ca`,
//!   `ha-connections`, `grace-period`, `resume-window`. Unknown keys are refused. Every error names the file and the field, e.g.
//!   `ingress[1].service`.
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
                },
                Rule {
                    hostname: None,
                    service: Service::Status(404),
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
            }],
            bastion_allow: Default::default(),
        })
    }

    /// Checks raw rules from a config file; errors name `ingress[i].field`.
    pub fn from_raw(raw: &[RawRule]) -> Result<Ingress, String> {
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
            let service =
                Service::parse(&r.service).map_err(|e| format!("ingress[{i}].service: {e}"))?;
            rules.push(Rule { hostname, service });
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

/// An ingress rule as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub service: String,
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
    /// Reads and checks a config file. Paths in it are relative to the file's directory.
    pub fn read(path: &Path) -> Result<(TunnelConfig, Option<Ingress>), String> {
        let text = read_small(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut cfg: TunnelConfig =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let at = |e: String| format!("{}: {e}", path.display());
        if let Some(t) = &cfg.tunnel {
            if !crate::store::valid_tunnel_name(t) {
                return Err(at(format!("tunnel: {t:?} is not a tunnel name or id")));
            }
        }
        if let Some(n) = cfg.ha_connections {
            if !(1..=16).contains(&n) {
                return Err(at("ha-connections: must be between 1 and 16".into()));
            }
        }
        if let Some(e) = &cfg.edge {
            let edges = super::edge_list(&e.list()).map_err(|e| at(format!("edge: {e}")))?;
            if edges.is_empty() {
                return Err(at("edge: names no edge".into()));
            }
        }
        if let Some(g) = &cfg.grace_period {
            parse_seconds(g).map_err(|e| at(format!("grace-period: {e}")))?;
        }
        if let Some(w) = &cfg.resume_window {
            resume_window(w).map_err(|e| at(format!("resume-window: {e}")))?;
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.credentials_file, &mut cfg.ca]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let ingress = if cfg.ingress.is_empty() {
            None
        } else {
            Some(Ingress::from_raw(&cfg.ingress).map_err(at)?)
        };
        Ok((cfg, ingress))
    }
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
    if let Some(g) = &cfg.grace_period {
        let _ = parse_seconds(g);
    }
    if let Ok(ingress) = Ingress::from_raw(&cfg.ingress) {
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
    if let Ok(creds) = serde_json::from_slice::<TunnelCredentials>(data) {
        let _ = OriginCredential::parse(&creds.credential);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            })
            .collect()
    }

    #[test]
    fn ingress_matches_in_order_with_wildcards_and_catch_all() {
        let ing = Ingress::from_raw(&raw(&[
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
                &[(Some("a.com"), "http://x:80"), (None, "ssh://x")],
                "ingress[0].service",
            ),
            (&[(None, "tcp://nohost")], "ingress[0].service"),
            (&[(None, "http_status:99")], "ingress[0].service"),
        ];
        for (rules, want) in cases {
            let e = Ingress::from_raw(&raw(rules)).unwrap_err();
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
