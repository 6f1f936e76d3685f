//! etcd as a [`Store`]: the records an edge pool shares, spoken through etcd's v3 JSON
//! gateway (`POST /v3/kv/range`, `/v3/kv/txn`, `/v3/lease/grant`) with ureq, blocking (only
//! the store worker, or a CLI command, calls it).
//!
//! Transport and identity ([`EtcdConfig`]): `etcd://` is plain HTTP; `etcds://` is TLS
//! (rustls) that trusts only the operator's CA (`--etcd-ca`; never the system roots), checks
//! the endpoint's host name or address, and presents a client certificate when one is given
//! (etcd's `--client-cert-auth`). With a user and password (etcd's `auth enable`), the store
//! gets a token from `/v3/auth/authenticate` and sends it as `Authorization`; when etcd
//! rejects it (a simple token lives `--auth-token-ttl`, 5 min by default, and an etcd restart
//! forgets it) the store authenticates again once and retries the request. The password
//! leaves the process only in that request's body.
//!
//! ```text
//!  etcd://h1:2379,h2:2379/PREFIX    (or etcds://…: TLS)
//!    PREFIX/tokens/<client id>          ServiceTokenRecord (JSON)
//!    PREFIX/token-names/<name>          the client id (a name is unique)
//!    PREFIX/hostnames/<hostname>        the hostname's owner (the JSON of hostnames.json's records)
//!    PREFIX/cert-slots/<fp>/<n>         a hostname the certificate holds, n < the cap
//!    PREFIX/tunnels/<id>                TunnelRecord
//!    PREFIX/tunnel-names/<zone>/<name>  the tunnel id (a name is unique in its zone)
//!    PREFIX/revoked/cert/<fp>           RevokedCertificate
//!    PREFIX/revoked/token/<client id>   RevokedToken
//!    PREFIX/revoked/serial/<serial>     RevokedToken
//!    PREFIX/logins/<key>                a pending login's bytes, under a lease (its TTL)
//! ```
//!
//! Every change that could race is one transaction whose compares say what the caller saw:
//! a hostname is claimed only if its key is absent (`create_revision == 0`) or at the
//! `mod_revision` the caller read, so two edges can never give one hostname to two owners. A
//! certificate holds at most [`MAX_HOSTNAMES_PER_CERTIFICATE`] hostnames because a claim also
//! takes one of that many slot keys (`cert-slots/<fp>/<n>`, created only if absent, in the
//! same transaction); claims racing for one certificate pick free slots at random, so they
//! rarely collide. `take_login` is one
//! delete with `prev_kv`: exactly one caller gets the record. A revision of a record is its
//! key's `mod_revision`.
//!
//! Changes made by other edges and by the CLI ([`Store::poll`]): once per
//! [`crate::limits::STORE_POLL_INTERVAL`], one `range` of a single key reads the cluster's
//! revision; when it moved, `tokens/`, `revoked/`, `hostnames/` and `tunnels/` are read with
//! `min_mod_revision` just past the last revision seen, and what is new is reported by
//! [`Store::changes`]. Such a range shows puts, not deletes: a `count_only` of `hostnames/` and
//! `tunnels/` that finds fewer keys than known lists their names to find which are gone. A
//! token, a revocation, a route or a deleted tunnel is thus seen by every edge within about a
//! second.
//!
//! Endpoints: each request goes to the endpoint that answered last; when it cannot be reached
//! (connect, timeout, 5xx) the next one is tried, each once. A transaction retried on another
//! endpoint after a lost answer is safe: its compares fail if the first try was applied, and
//! the callers read the record again and see their own change.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use ureq::tls::TlsConfig;

use super::file::{valid_token_name, HostnameFileRecord, CLIENT_ID_SUFFIX, MAX_TOKEN_NAME};
use super::{
    random_hex, Change, Claimed, Expect, HostOwner, HostnameRecord, PendingLoginRecord, Revocation,
    Revocations, RevokedCertificate, RevokedToken, ServiceTokenRecord, Snapshot, Store, StoreError,
    TunnelRecord, Versioned,
};
use crate::io::unix_now;
use crate::limits::{
    ETCD_CAS_ATTEMPTS, ETCD_CONNECT_TIMEOUT, ETCD_REQUEST_TIMEOUT, MAX_ETCD_ENDPOINTS,
    MAX_ETCD_PASSWORD, MAX_ETCD_RESPONSE, MAX_ETCD_TXN_OPS, MAX_HOSTNAMES_PER_CERTIFICATE,
    MAX_STORED_LOGINS,
};
use crate::proto::base64;
use crate::secret::Secret;

/// The URL scheme of an etcd state over plain HTTP.
pub const SCHEME: &str = "etcd://";
/// The URL scheme of an etcd state over TLS.
pub const SCHEME_TLS: &str = "etcds://";
/// Longest key prefix.
const MAX_PREFIX: usize = 128;

/// Where an etcd state lives: `etcd://HOST:PORT[,HOST:PORT…]/PREFIX`, or `etcds://…` for TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `host:port`, checked: letters, digits, `.`, `-`, `:`, `[`, `]`, and a port.
    pub endpoints: Vec<String>,
    /// Without slashes at either end.
    pub prefix: String,
    /// `etcds://`: every endpoint speaks TLS.
    pub tls: bool,
}

impl EtcdUrl {
    /// Whether `s` names an etcd state (and not a directory).
    pub fn is_etcd(s: &str) -> bool {
        s.starts_with(SCHEME) || s.starts_with(SCHEME_TLS)
    }

    /// Parses `etcd://h1:2379,h2:2379/PREFIX` (or `etcds://…`); an error says what is wrong.
    pub fn parse(s: &str) -> Result<EtcdUrl, String> {
        let bad = |why: &str| {
            format!(
                "{s:?} is not an etcd state: {why} (expected etcd://HOST:PORT[,HOST:PORT…]/PREFIX, \
                 or etcds://… for TLS, e.g. etcds://10.0.0.5:2379,10.0.0.6:2379/postern)"
            )
        };
        let (rest, tls) = match (s.strip_prefix(SCHEME), s.strip_prefix(SCHEME_TLS)) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => return Err(bad("no etcd:// or etcds://")),
        };
        let (hosts, prefix) = rest.split_once('/').ok_or_else(|| bad("no /PREFIX"))?;
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() || prefix.len() > MAX_PREFIX {
            return Err(bad(&format!("PREFIX must be 1 to {MAX_PREFIX} characters")));
        }
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
            || prefix.contains("//")
        {
            return Err(bad("PREFIX may hold A-Z a-z 0-9 . _ - and single /"));
        }
        let endpoints: Vec<String> = hosts.split(',').map(str::to_owned).collect();
        if endpoints.len() > MAX_ETCD_ENDPOINTS {
            return Err(bad(&format!("at most {MAX_ETCD_ENDPOINTS} endpoints")));
        }
        for e in &endpoints {
            let (host, port) = e.rsplit_once(':').unwrap_or(("", ""));
            let host_ok = !host.is_empty()
                && host.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                });
            if !host_ok || !port.parse::<u16>().is_ok_and(|p| p != 0) {
                return Err(bad(&format!("endpoint {e:?} is not HOST:PORT")));
            }
        }
        Ok(EtcdUrl {
            endpoints,
            prefix: prefix.to_owned(),
            tls,
        })
    }
}

impl std::fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { SCHEME_TLS } else { SCHEME };
        write!(f, "{scheme}{}/{}", self.endpoints.join(","), self.prefix)
    }
}

// ------------------------------------------------------------------ TLS files and credentials

/// How each setting is spelled on the command line, in the edge config and in etcdctl's
/// environment (the fallback): every message names all three.
const CA_NAMES: &str = "--etcd-ca, \"etcd_ca\" or ETCDCTL_CACERT";
const CERT_NAMES: &str = "--etcd-cert, \"etcd_cert\" or ETCDCTL_CERT";
const KEY_NAMES: &str = "--etcd-key, \"etcd_key\" or ETCDCTL_KEY";
const USER_NAMES: &str = "--etcd-user, \"etcd_user\" or ETCDCTL_USER";
const PASSWORD_NAMES: &str = "--etcd-password-file, \"etcd_password_file\" or ETCDCTL_PASSWORD";

/// TLS files and etcd credentials as the operator gave them (flags of `postern edge` and the
/// admin commands, or the keys next to `"state"` in the edge config). What is not given is
/// taken from etcdctl's variables (`ETCDCTL_CACERT`, `ETCDCTL_CERT`, `ETCDCTL_KEY`,
/// `ETCDCTL_USER`, `ETCDCTL_PASSWORD`) by [`EtcdConfig::new`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdAccess {
    /// The CA that signed etcd's server certificates (`etcds://` only).
    pub ca: Option<PathBuf>,
    /// A client certificate (chain) for etcd's `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    /// Its private key: a file only its owner may read.
    pub key: Option<PathBuf>,
    /// An etcd user (etcd's `auth enable`).
    pub user: Option<String>,
    /// A file holding the user's password (its first line), only its owner may read it.
    pub password_file: Option<PathBuf>,
}

impl EtcdAccess {
    /// Whether nothing was given.
    pub fn is_empty(&self) -> bool {
        *self == EtcdAccess::default()
    }
}

/// Where the password comes from.
enum PasswordFrom {
    File(PathBuf),
    Env(Secret),
}

/// [`EtcdAccess`] with etcdctl's variables filled in and the combinations checked; no file
/// read yet.
struct Resolved {
    ca: Option<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
    auth: Option<(String, PasswordFrom)>,
}

/// Fills in what `access` leaves out from `env` (etcdctl's variables) and checks what goes
/// together. Given explicitly, TLS files on an `etcd://` state are an error; from the
/// environment they are ignored there, as etcdctl ignores them for an `http://` endpoint.
fn resolve(
    url: &EtcdUrl,
    access: &EtcdAccess,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved, String> {
    let explicit_tls = access.ca.is_some() || access.cert.is_some() || access.key.is_some();
    if !url.tls && explicit_tls {
        return Err(format!(
            "the etcd TLS files ({CA_NAMES}; client certificate and key) go with an etcds:// \
             state, not {url}: write etcds:// for TLS"
        ));
    }
    let from_env =
        |given: &Option<PathBuf>, var: &str| given.clone().or_else(|| env(var).map(PathBuf::from));
    let (ca, client) = if url.tls {
        let ca = from_env(&access.ca, "ETCDCTL_CACERT").ok_or_else(|| {
            format!(
                "{url} is TLS: give the CA that signed etcd's certificate ({CA_NAMES}); the \
                 system roots are not used for etcd"
            )
        })?;
        let client = match (
            from_env(&access.cert, "ETCDCTL_CERT"),
            from_env(&access.key, "ETCDCTL_KEY"),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(format!(
                    "an etcd client certificate needs its key ({KEY_NAMES})"
                ))
            }
            (None, Some(_)) => {
                return Err(format!(
                    "an etcd client key needs its certificate ({CERT_NAMES})"
                ))
            }
        };
        (Some(ca), client)
    } else {
        (None, None)
    };
    if access.user.as_deref().is_some_and(|u| u.contains(':')) {
        return Err(format!(
            "the etcd user ({USER_NAMES}) is a name without `:`; give the password in a file \
             ({PASSWORD_NAMES}), never on the command line"
        ));
    }
    // etcdctl's ETCDCTL_USER may be `name:password`.
    let (user, env_password) = match (&access.user, env("ETCDCTL_USER")) {
        (Some(user), _) => (Some(user.clone()), None),
        (None, Some(v)) => match v.split_once(':') {
            Some((user, password)) => (Some(user.to_owned()), Some(password.to_owned())),
            None => (Some(v), None),
        },
        (None, None) => (None, None),
    };
    let password = match (&access.password_file, env("ETCDCTL_PASSWORD")) {
        (Some(file), _) => Some(PasswordFrom::File(file.clone())),
        (None, Some(p)) => Some(PasswordFrom::Env(p.into())),
        (None, None) => env_password.map(|p| PasswordFrom::Env(p.into())),
    };
    let auth = match (user, password) {
        (Some(user), _) if user.is_empty() => {
            return Err(format!("the etcd user ({USER_NAMES}) is empty"))
        }
        (Some(user), Some(password)) => Some((user, password)),
        (Some(user), None) => {
            return Err(format!(
                "etcd user {} needs a password ({PASSWORD_NAMES})",
                crate::logging::untrusted(&user)
            ))
        }
        (None, Some(PasswordFrom::File(_))) => {
            return Err(format!(
                "an etcd password file needs its user ({USER_NAMES})"
            ))
        }
        // A lone ETCDCTL_PASSWORD may be meant for another tool.
        (None, _) => None,
    };
    Ok(Resolved { ca, client, auth })
}

/// Refuses a file that holds a secret (a key, a password) when others may read it.
fn private_file(path: &Path, what: &str, names: &str) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("{what} {} ({names}): {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{what} {} ({names}) may be read or written by other users; chmod 600 it (postern \
             refuses to use it until then)",
            path.display()
        ));
    }
    Ok(())
}

/// The first line of a password file.
fn read_password(path: &Path) -> Result<Secret, String> {
    private_file(path, "the etcd password file", PASSWORD_NAMES)?;
    let at = |e: &dyn std::fmt::Display| {
        format!(
            "the etcd password file {} ({PASSWORD_NAMES}): {e}",
            path.display()
        )
    };
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_ETCD_PASSWORD as u64 + 1).read_to_end(&mut data))
        .map_err(|e| at(&e))?;
    if data.len() > MAX_ETCD_PASSWORD {
        return Err(at(&format!("longer than {MAX_ETCD_PASSWORD} bytes")));
    }
    let text = String::from_utf8(data).map_err(|_| at(&"not UTF-8"))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(at(&"empty"));
    }
    Ok(line.to_owned().into())
}

/// ureq's TLS settings: only `ca`'s certificates as roots, and the client certificate.
fn tls_config(ca: &Path, client: Option<&(PathBuf, PathBuf)>) -> Result<TlsConfig, String> {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsProvider};
    // The key's mode first: a key others may read is refused whatever else is wrong.
    if let Some((_, key)) = client {
        private_file(key, "the etcd client key", KEY_NAMES)?;
    }
    let roots = crate::pki::load_certs(ca)
        .map_err(|e| format!("the etcd CA ({CA_NAMES}): {e}"))?
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect::<Vec<_>>();
    let client_cert = match client {
        None => None,
        Some((cert, key)) => {
            let chain = crate::pki::load_certs(cert)
                .map_err(|e| format!("the etcd client certificate ({CERT_NAMES}): {e}"))?
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect::<Vec<_>>();
            let bad_key =
                |e: &dyn std::fmt::Display| format!("the etcd client key ({KEY_NAMES}): {e}");
            // Checked (one key, a kind rustls takes, bounded size) with postern's reader, then
            // handed to ureq as PEM (ureq takes DER only with a key kind it does not export).
            crate::pki::load_private_key(key).map_err(|e| bad_key(&e))?;
            let pem = std::fs::read(key).map_err(|e| bad_key(&e))?;
            let key = PrivateKey::from_pem(&pem).map_err(|e| bad_key(&e))?;
            Some(ClientCert::new_with_certs(&chain, key))
        }
    };
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .client_cert(client_cert)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build())
}

/// An etcd user and its password. No `Debug`.
struct Credentials {
    user: String,
    password: Secret,
}

/// Everything needed to reach an etcd state: its URL, the TLS settings (files read and
/// checked) and the credentials. Shown as its URL; no `Debug` (it holds the password).
#[derive(Clone)]
pub struct EtcdConfig {
    pub url: EtcdUrl,
    tls: Option<TlsConfig>,
    /// The CA file, for messages.
    ca: Option<PathBuf>,
    auth: Option<Arc<Credentials>>,
}

impl EtcdConfig {
    /// Reads and checks what `access` names, with etcdctl's variables as fallbacks: the CA
    /// and client certificate parse, the client key and the password file are readable by
    /// their owner only. An error names the setting (flag, config key and variable).
    pub fn new(url: EtcdUrl, access: &EtcdAccess) -> Result<EtcdConfig, String> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        EtcdConfig::with_env(url, access, &env)
    }

    fn with_env(
        url: EtcdUrl,
        access: &EtcdAccess,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<EtcdConfig, String> {
        let r = resolve(&url, access, env)?;
        let tls = match &r.ca {
            Some(ca) => Some(tls_config(ca, r.client.as_ref())?),
            None => None,
        };
        let auth = match r.auth {
            None => None,
            Some((user, from)) => {
                let password = match from {
                    PasswordFrom::File(path) => read_password(&path)?,
                    PasswordFrom::Env(p) => p,
                };
                if !url.tls {
                    log::warn!(
                        "the etcd password goes to {url} over plain HTTP: anyone on the path can \
                         read it; use etcds:// (docs/scaling.md)"
                    );
                }
                Some(Arc::new(Credentials { user, password }))
            }
        };
        Ok(EtcdConfig {
            url,
            tls,
            ca: r.ca,
            auth,
        })
    }
}

/// Plain HTTP, no credentials (tests, a loopback etcd).
impl From<EtcdUrl> for EtcdConfig {
    fn from(url: EtcdUrl) -> EtcdConfig {
        EtcdConfig {
            url,
            tls: None,
            ca: None,
            auth: None,
        }
    }
}

impl std::fmt::Display for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.url.fmt(f)
    }
}

// ---------------------------------------------------------------------- the gateway's JSON

/// etcd's int64s come as JSON strings; absent means 0.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    match N::deserialize(d)? {
        N::I(i) => Ok(i),
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Deserialize)]
struct Kv {
    /// base64.
    key: String,
    /// base64; absent when empty.
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int64")]
    create_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
}

#[derive(Deserialize, Default)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<Kv>,
    #[serde(default, deserialize_with = "int64")]
    count: i64,
    #[serde(default)]
    more: bool,
}

#[derive(Deserialize, Default)]
struct DeleteResponse {
    #[serde(default)]
    prev_kvs: Vec<Kv>,
}

#[derive(Deserialize, Default)]
struct ResponseOp {
    #[serde(default)]
    response_delete_range: Option<DeleteResponse>,
}

#[derive(Deserialize)]
struct TxnResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<ResponseOp>,
}

#[derive(Deserialize)]
struct LeaseGrant {
    #[serde(rename = "ID", deserialize_with = "int64")]
    id: i64,
}

/// A key as the gateway wants it.
fn b64(key: &str) -> String {
    base64::encode(key.as_bytes())
}

/// The key that ends a prefix range: the prefix with its last byte plus one (our prefixes end
/// in `/`, so in `0`).
fn range_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    base64::encode(&end)
}

impl Kv {
    fn key(&self) -> Result<String, StoreError> {
        let raw = base64::decode(&self.key).map_err(|_| malformed("a key"))?;
        String::from_utf8(raw).map_err(|_| malformed("a key"))
    }

    /// The key without `prefix` (the range asked for keys under it; anything else is an error,
    /// not a panic).
    fn key_under(&self, prefix: &str) -> Result<String, StoreError> {
        let key = self.key()?;
        key.strip_prefix(prefix).map(str::to_owned).ok_or_else(|| {
            StoreError::Unavailable(format!(
                "etcd answered a range of {prefix} with the key {}",
                crate::logging::untrusted(&key)
            ))
        })
    }

    fn value(&self) -> Result<Vec<u8>, StoreError> {
        base64::decode(&self.value).map_err(|_| malformed("a value"))
    }

    fn json<T: DeserializeOwned>(&self) -> Result<T, StoreError> {
        let key = self.key()?;
        serde_json::from_slice(&self.value()?).map_err(|e| {
            StoreError::Unavailable(format!(
                "etcd record {} is not what postern writes ({}); remove or restore it",
                crate::logging::untrusted(&key),
                crate::logging::escape(&e.to_string(), 200)
            ))
        })
    }
}

fn malformed(what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "etcd answered with {what} that is not base64/UTF-8"
    ))
}

/// One compare of a transaction.
fn compare_absent(key: &str) -> Value {
    json!({"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
}

fn compare_revision(key: &str, revision: u64) -> Value {
    json!({"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision.to_string()})
}

fn compare_expect(key: &str, expect: Expect) -> Value {
    match expect {
        Expect::Absent => compare_absent(key),
        Expect::Revision(r) => compare_revision(key, r),
    }
}

fn put(key: &str, value: &[u8]) -> Value {
    json!({"request_put": {"key": b64(key), "value": base64::encode(value)}})
}

fn delete(key: &str) -> Value {
    json!({"request_delete_range": {"key": b64(key)}})
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("bug: records serialize")
}

fn revision(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

// -------------------------------------------------------------------------------- the store

/// etcd as a [`Store`]. See the module doc.
pub struct EtcdStore {
    url: EtcdUrl,
    agent: ureq::Agent,
    /// The CA file of an `etcds://` state, for messages.
    ca: Option<PathBuf>,
    /// The user and password, with etcd's auth.
    auth: Option<Arc<Credentials>>,
    /// The token `/v3/auth/authenticate` gave (none yet, or etcd's auth is off).
    token: Option<Secret>,
    /// The endpoint that answered last.
    current: usize,
    /// `PREFIX/`.
    root: String,
    /// The cluster revision up to which changes were looked at (0: not yet).
    seen: i64,
    /// What [`Store::poll`] found, until [`Store::changes`].
    found: Vec<Change>,
    /// Client ids of the tokens and keys of the revocations reported (or snapshotted)
    /// already: a record put again is not news.
    known_tokens: BTreeMap<String, ServiceTokenRecord>,
    known_revoked: BTreeSet<String>,
    /// The hostnames and tunnels as last seen, to report what another edge changed.
    known_hosts: BTreeMap<String, Versioned<HostnameRecord>>,
    known_tunnels: BTreeMap<String, TunnelRecord>,
}

/// The token etcd's gateway answers `/v3/auth/authenticate` with.
#[derive(Deserialize)]
struct AuthAnswer {
    #[serde(default)]
    token: String,
}

impl EtcdStore {
    /// A store on `config`'s URL; authenticates (with a user) and checks that an endpoint
    /// answers. An error names each endpoint tried, and says so when etcd refused the
    /// credentials or its certificate was not trusted.
    pub fn connect(config: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        let url = &config.url;
        if url.tls && config.tls.is_none() {
            return Err(StoreError::Unavailable(format!(
                "{url} is TLS: give the CA that signed etcd's certificate ({CA_NAMES})"
            )));
        }
        let mut agent = ureq::Agent::config_builder()
            .timeout_connect(Some(ETCD_CONNECT_TIMEOUT))
            .timeout_global(Some(ETCD_REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0);
        if let Some(tls) = &config.tls {
            agent = agent.tls_config(tls.clone());
        }
        let mut store = EtcdStore {
            root: format!("{}/", url.prefix),
            url: url.clone(),
            agent: agent.build().new_agent(),
            ca: config.ca.clone(),
            auth: config.auth.clone(),
            token: None,
            current: 0,
            seen: 0,
            found: Vec::new(),
            known_tokens: BTreeMap::new(),
            known_revoked: BTreeSet::new(),
            known_hosts: BTreeMap::new(),
            known_tunnels: BTreeMap::new(),
        };
        store.authenticate()?;
        store.cluster_revision()?;
        Ok(store)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.root)
    }

    /// POSTs `body` to `path` with the token, trying each endpoint from the one that answered
    /// last. A rejected token (expired, or forgotten by a restarted etcd) is replaced once.
    fn call<T: DeserializeOwned>(&mut self, path: &str, body: &Value) -> Result<T, StoreError> {
        let body = body.to_string();
        let (endpoint, data) = match self.send(path, &body) {
            Err(Failure::TokenRejected(why)) if self.auth.is_some() => {
                log::debug!("etcd rejected the auth token ({why}); authenticating again");
                self.token = None;
                self.authenticate()?;
                self.send(path, &body)
            }
            other => other,
        }
        .map_err(|f| f.into_store_error())?;
        serde_json::from_slice(&data).map_err(|e| {
            StoreError::Unavailable(format!(
                "etcd at {endpoint} answered {path} with unexpected JSON: {}",
                crate::logging::escape(&e.to_string(), 200)
            ))
        })
    }

    /// Gets a token for the user, if there is one. etcd with its auth off answers that it is
    /// off: the store then goes on without a token (until etcd asks for one).
    fn authenticate(&mut self) -> Result<(), StoreError> {
        let Some(auth) = self.auth.clone() else {
            return Ok(());
        };
        let body = json!({"name": auth.user, "password": auth.password.expose()}).to_string();
        let user = crate::logging::untrusted(&auth.user);
        let (endpoint, data) = match self.send_with("/v3/auth/authenticate", &body, false) {
            Ok(answer) => answer,
            Err(Failure::Answer {
                endpoint, message, ..
            }) if message.contains("authentication is not enabled") => {
                log::warn!(
                    "etcd at {endpoint} has authentication off: anyone who reaches it may change \
                     the pool's records; enable it (docs/scaling.md)"
                );
                return Ok(());
            }
            Err(Failure::Answer {
                endpoint, message, ..
            }) if message.contains("authentication failed") => {
                return Err(StoreError::Unavailable(format!(
                    "etcd at {endpoint} refused the credentials of user {user} (etcd auth: {}); \
                     check the user ({USER_NAMES}) and its password ({PASSWORD_NAMES})",
                    crate::logging::escape(&message, 200)
                )))
            }
            Err(other) => return Err(other.into_store_error()),
        };
        let answer: AuthAnswer = serde_json::from_slice(&data).map_err(|e| {
            StoreError::Unavailable(format!(
                "etcd at {endpoint} answered /v3/auth/authenticate with unexpected JSON: {}",
                crate::logging::escape(&e.to_string(), 200)
            ))
        })?;
        if answer.token.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "etcd at {endpoint} authenticated user {user} without giving a token"
            )));
        }
        self.token = Some(answer.token.into());
        Ok(())
    }

    /// POSTs `body` to `path` with the token, from the endpoint that answered last.
    fn send(&mut self, path: &str, body: &str) -> Result<(String, Vec<u8>), Failure> {
        self.send_with(path, body, true)
    }

    fn send_with(
        &mut self,
        path: &str,
        body: &str,
        with_token: bool,
    ) -> Result<(String, Vec<u8>), Failure> {
        let n = self.url.endpoints.len();
        let mut failures = Vec::new();
        for i in 0..n {
            let at = (self.current + i) % n;
            let endpoint = self.url.endpoints[at].clone();
            let token = self.token.as_ref().filter(|_| with_token);
            match self.call_one(&endpoint, path, body, token) {
                Ok(data) => {
                    self.current = at;
                    return Ok((endpoint, data));
                }
                Err(Failure::Unreachable(why)) => failures.push(why),
                Err(answer) => {
                    self.current = at;
                    return Err(answer);
                }
            }
        }
        Err(Failure::Unreachable(failures.join("; ")))
    }

    fn call_one(
        &self,
        endpoint: &str,
        path: &str,
        body: &str,
        token: Option<&Secret>,
    ) -> Result<Vec<u8>, Failure> {
        let scheme = if self.url.tls { "https" } else { "http" };
        let url = format!("{scheme}://{endpoint}{path}");
        let mut request = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(token) = token {
            request = request.header("Authorization", token.expose());
        }
        let unreachable = |e: ureq::Error| {
            Failure::Unreachable(format!(
                "etcd at {endpoint}{}",
                describe(&e, self.url.tls, self.ca.as_deref())
            ))
        };
        let mut resp = request.send(body).map_err(unreachable)?;
        let status = resp.status().as_u16();
        let data = resp
            .body_mut()
            .with_config()
            .limit(MAX_ETCD_RESPONSE)
            .read_to_vec()
            .map_err(unreachable)?;
        if status == 200 {
            return Ok(data);
        }
        // The gateway's errors: {"error": "...", "code": N, "message": "..."}.
        let message = serde_json::from_slice::<Value>(&data)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&data).into_owned());
        let why = format!("HTTP {status} {}", crate::logging::escape(&message, 200));
        if status >= 500 {
            return Err(Failure::Unreachable(format!(
                "etcd at {endpoint} unreachable: {why}"
            )));
        }
        // A token etcd no longer knows, or none where etcd wants one (auth was enabled after
        // this store started): both mean authenticate (again).
        if message.contains("invalid auth token") || message.contains("user name is empty") {
            return Err(Failure::TokenRejected(format!("etcd at {endpoint}: {why}")));
        }
        Err(Failure::Answer {
            endpoint: endpoint.to_owned(),
            message,
            why,
        })
    }

    /// The cluster's current revision (a range of one key: cheap).
    fn cluster_revision(&mut self) -> Result<i64, StoreError> {
        let body = json!({"key": b64(&self.root), "count_only": true});
        let r: RangeResponse = self.call("/v3/kv/range", &body)?;
        Ok(r.header.revision)
    }

    fn get(&mut self, key: &str) -> Result<Option<Kv>, StoreError> {
        let r: RangeResponse = self.call("/v3/kv/range", &json!({"key": b64(key)}))?;
        Ok(r.kvs.into_iter().next())
    }

    /// Every key under `prefix` (whole), at `at` (0: now), changed at `min_mod` or later.
    fn list(&mut self, prefix: &str, at: i64, min_mod: i64) -> Result<RangeResponse, StoreError> {
        let mut body = json!({"key": b64(prefix), "range_end": range_end(prefix)});
        if at > 0 {
            body["revision"] = json!(at.to_string());
        }
        if min_mod > 0 {
            body["min_mod_revision"] = json!(min_mod.to_string());
        }
        let r: RangeResponse = self.call("/v3/kv/range", &body)?;
        if r.more {
            return Err(StoreError::Unavailable(format!(
                "etcd: the records under {prefix} exceed what one answer may hold"
            )));
        }
        Ok(r)
    }

    fn count(&mut self, prefix: &str) -> Result<(i64, i64), StoreError> {
        self.count_at(prefix, 0)
    }

    /// How many keys are under `prefix` at revision `at` (0: now), and the revision.
    fn count_at(&mut self, prefix: &str, at: i64) -> Result<(i64, i64), StoreError> {
        let mut body =
            json!({"key": b64(prefix), "range_end": range_end(prefix), "count_only": true});
        if at > 0 {
            body["revision"] = json!(at.to_string());
        }
        let r: RangeResponse = self.call("/v3/kv/range", &body)?;
        Ok((r.count, r.header.revision))
    }

    /// The slot key by which certificate `fp` holds `host`.
    fn slot_of(&mut self, fp: &str, host: &str) -> Result<Option<String>, StoreError> {
        let slots = self.key(&format!("cert-slots/{fp}/"));
        for kv in &self.list(&slots, 0, 0)?.kvs {
            if kv.value()? == host.as_bytes() {
                return Ok(Some(kv.key()?));
            }
        }
        Ok(None)
    }

    fn txn(&mut self, compare: Vec<Value>, success: Vec<Value>) -> Result<TxnResponse, StoreError> {
        self.call(
            "/v3/kv/txn",
            &json!({"compare": compare, "success": success}),
        )
    }

    fn hostname(&mut self, host: &str) -> Result<Option<Versioned<HostnameRecord>>, StoreError> {
        let key = self.key(&format!("hostnames/{host}"));
        self.get(&key)?.map(|kv| versioned_host(&kv)).transpose()
    }

    fn hostnames(
        &mut self,
        at: i64,
    ) -> Result<BTreeMap<String, Versioned<HostnameRecord>>, StoreError> {
        self.hostnames_since(at, 0)
    }

    /// The hostnames changed at `min_mod` or later, at revision `at`.
    fn hostnames_since(
        &mut self,
        at: i64,
        min_mod: i64,
    ) -> Result<BTreeMap<String, Versioned<HostnameRecord>>, StoreError> {
        let prefix = self.key("hostnames/");
        let r = self.list(&prefix, at, min_mod)?;
        let mut out = BTreeMap::new();
        for kv in &r.kvs {
            let host = kv.key_under(&prefix)?;
            out.insert(host, versioned_host(kv)?);
        }
        Ok(out)
    }

    fn tunnels(&mut self, at: i64) -> Result<BTreeMap<String, TunnelRecord>, StoreError> {
        self.tunnels_since(at, 0)
    }

    /// The tunnels changed at `min_mod` or later, at revision `at`.
    fn tunnels_since(
        &mut self,
        at: i64,
        min_mod: i64,
    ) -> Result<BTreeMap<String, TunnelRecord>, StoreError> {
        let prefix = self.key("tunnels/");
        let r = self.list(&prefix, at, min_mod)?;
        let mut out = BTreeMap::new();
        for kv in &r.kvs {
            out.insert(kv.key_under(&prefix)?, kv.json()?);
        }
        Ok(out)
    }

    /// Tokens (in creation order) changed at `min_mod` or later, at revision `at`.
    fn tokens(&mut self, at: i64, min_mod: i64) -> Result<Vec<ServiceTokenRecord>, StoreError> {
        let prefix = self.key("tokens/");
        let r = self.list(&prefix, at, min_mod)?;
        let mut kvs = r.kvs;
        kvs.sort_by_key(|kv| kv.create_revision);
        kvs.iter().map(Kv::json).collect()
    }

    /// Revocations changed at `min_mod` or later, at revision `at`, with their keys.
    fn revocations(
        &mut self,
        at: i64,
        min_mod: i64,
    ) -> Result<Vec<(String, Revocation, Value)>, StoreError> {
        let prefix = self.key("revoked/");
        let r = self.list(&prefix, at, min_mod)?;
        let mut out = Vec::new();
        for kv in &r.kvs {
            let key = kv.key()?;
            let rest = kv.key_under(&prefix)?;
            let value: Value = kv.json()?;
            let reason = value
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let revocation = match rest.as_str().split_once('/') {
                Some(("cert", fp)) => Revocation::Certificate {
                    sha256: fp.to_owned(),
                    serial: value
                        .get("serial")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    reason,
                },
                Some(("token", id)) => Revocation::ServiceToken {
                    client_id: id.to_owned(),
                    reason,
                },
                Some(("serial", s)) => Revocation::Serial {
                    serial: s.to_owned(),
                    reason,
                },
                Some(("zone", k)) => match super::parse_zone_sessions_key(k) {
                    Some((zone, email, before)) => Revocation::ZoneSessions {
                        zone,
                        email,
                        before,
                        reason,
                    },
                    None => continue,
                },
                _ => continue,
            };
            out.push((key, revocation, value));
        }
        Ok(out)
    }

    /// Deletes the hostnames `gone` picks, each only at the revision it was read at (one
    /// changed meanwhile is looked at again on the next pass); returns them, sorted.
    fn remove_hostnames(
        &mut self,
        gone: &Picks<'_>,
        with_tunnels: bool,
    ) -> Result<Vec<String>, StoreError> {
        let mut removed = Vec::new();
        for _ in 0..ETCD_CAS_ATTEMPTS {
            let at = self.cluster_revision()?;
            let tunnels = if with_tunnels {
                self.tunnels(at)?
            } else {
                BTreeMap::new()
            };
            let picked: Vec<(String, Versioned<HostnameRecord>)> = self
                .hostnames(at)?
                .into_iter()
                .filter(|(h, r)| gone(h, &r.value, &tunnels))
                .collect();
            if picked.is_empty() {
                break;
            }
            let mut conflict = false;
            for chunk in picked.chunks(MAX_ETCD_TXN_OPS / 2) {
                let mut compare = Vec::new();
                let mut ops = Vec::new();
                for (h, r) in chunk {
                    let key = self.key(&format!("hostnames/{h}"));
                    compare.push(compare_revision(&key, r.revision));
                    ops.push(delete(&key));
                    if let HostOwner::Certificate(fp) = &r.value.owner {
                        if let Some(slot) = self.slot_of(fp, h)? {
                            ops.push(delete(&slot));
                        }
                    }
                }
                if self.txn(compare, ops)?.succeeded {
                    removed.extend(chunk.iter().map(|(h, _)| h.clone()));
                } else {
                    conflict = true;
                }
            }
            if !conflict {
                break;
            }
        }
        removed.sort();
        removed.dedup();
        Ok(removed)
    }
}

/// Which hostnames [`EtcdStore::remove_hostnames`] removes: by name, record and the tunnels.
type Picks<'a> = dyn Fn(&str, &HostnameRecord, &BTreeMap<String, TunnelRecord>) -> bool + 'a;

/// How a call failed.
enum Failure {
    /// No answer (connect, TLS, timeout, a 5xx): the next endpoint may do better. The whole
    /// message, naming the endpoint.
    Unreachable(String),
    /// etcd rejected the auth token (or wants one): authenticate and retry.
    TokenRejected(String),
    /// An answer that refuses the request: another endpoint would say the same.
    Answer {
        endpoint: String,
        /// etcd's own message (not escaped).
        message: String,
        /// `HTTP <status> <message>`, escaped.
        why: String,
    },
}

impl Failure {
    fn into_store_error(self) -> StoreError {
        StoreError::Unavailable(match self {
            Failure::Unreachable(why) => why,
            Failure::TokenRejected(why) => {
                format!("{why} (etcd's auth is on: give a user and password, docs/scaling.md)")
            }
            Failure::Answer {
                endpoint,
                message,
                why,
            } => {
                let hint = if message.contains("HTTPS server") {
                    ": it speaks TLS, write etcds:// (docs/scaling.md)"
                } else if message.contains("user name is empty") {
                    ": etcd's auth is on; give a user and password (docs/scaling.md)"
                } else if message.contains("CommonName of client") {
                    ": with its auth on, etcd 3.4's JSON gateway refuses client certificates \
                     that have a CommonName; issue the edge's etcd client certificate without \
                     one (docs/scaling.md)"
                } else if message.contains("permission denied") {
                    ": the etcd user needs a role with readwrite on the prefix (docs/scaling.md)"
                } else {
                    ""
                };
                format!("etcd at {endpoint}: {why}{hint}")
            }
        })
    }
}

/// A request that got no answer, in words: a TLS failure says what to check.
fn describe(e: &ureq::Error, tls_url: bool, ca: Option<&Path>) -> String {
    let tls = match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    let ca = ca.map_or_else(String::new, |p| format!(" in {}", p.display()));
    match tls {
        Some(rustls::Error::InvalidCertificate(why)) => format!(
            ": TLS handshake failed, its certificate was not trusted ({why}); it must be \
             signed by the CA{ca} ({CA_NAMES}) and name this host or address"
        ),
        Some(rustls::Error::AlertReceived(alert)) => format!(
            " refused the TLS handshake (alert {alert:?}): does it want a client certificate \
             ({CERT_NAMES}, {KEY_NAMES}) signed by a CA it trusts?"
        ),
        Some(other) => format!(" unreachable: TLS: {other}"),
        // With TLS 1.3 the client's handshake ends before etcd checks the client
        // certificate: a refusal shows as the connection closing under the request.
        None if closed(e) && tls_url => format!(
            " unreachable: {e} (etcd closes the connection this way when it wants a client \
             certificate signed by a CA it trusts: {CERT_NAMES}, {KEY_NAMES})"
        ),
        None if closed(e) => format!(
            " unreachable: {e} (an etcd that speaks TLS closes plain HTTP connections this way: \
             write etcds://)"
        ),
        None => format!(" unreachable: {e}"),
    }
}

/// Whether the connection closed under the request (not: refused, timed out).
fn closed(e: &ureq::Error) -> bool {
    matches!(e, ureq::Error::Io(io) if matches!(
        io.kind(),
        std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::UnexpectedEof
    ))
}

fn versioned_host(kv: &Kv) -> Result<Versioned<HostnameRecord>, StoreError> {
    let rec: HostnameFileRecord = kv.json()?;
    let mut value = HostnameRecord::from(rec);
    if let HostOwner::Certificate(fp) = &mut value.owner {
        fp.make_ascii_lowercase();
    }
    Ok(Versioned {
        value,
        revision: revision(kv.mod_revision),
    })
}

impl Store for EtcdStore {
    fn remote(&self) -> bool {
        true
    }

    fn snapshot(&mut self) -> Result<Snapshot, StoreError> {
        let at = self.cluster_revision()?;
        let service_tokens = self.tokens(at, 0)?;
        let hostnames = self.hostnames(at)?;
        let tunnels = self.tunnels(at)?;
        let mut revocations = Revocations::default();
        for (key, r, value) in self.revocations(at, 0)? {
            let revoked = value.get("revoked").and_then(Value::as_u64).unwrap_or(0);
            match r {
                Revocation::Certificate {
                    sha256,
                    serial,
                    reason,
                } => {
                    revocations.certificates.insert(
                        sha256,
                        RevokedCertificate {
                            serial,
                            revoked,
                            reason,
                        },
                    );
                }
                Revocation::ServiceToken { client_id, reason } => {
                    revocations
                        .service_tokens
                        .insert(client_id, RevokedToken { revoked, reason });
                }
                Revocation::Serial { serial, reason } => {
                    revocations
                        .serials
                        .insert(serial, RevokedToken { revoked, reason });
                }
                Revocation::ZoneSessions {
                    zone,
                    email,
                    before,
                    reason,
                } => {
                    revocations.zone_sessions.insert(
                        super::zone_sessions_key(&zone, &email, before),
                        RevokedToken { revoked, reason },
                    );
                }
            }
            self.known_revoked.insert(key);
        }
        for t in &service_tokens {
            self.known_tokens.insert(t.client_id.clone(), t.clone());
        }
        self.known_hosts = hostnames.clone();
        self.known_tunnels = tunnels.clone();
        self.seen = self.seen.max(at);
        Ok(Snapshot {
            service_tokens,
            hostnames,
            tunnels,
            revocations,
        })
    }

    fn service_token(&mut self, client_id: &str) -> Result<Option<ServiceTokenRecord>, StoreError> {
        let key = self.key(&format!("tokens/{client_id}"));
        self.get(&key)?.map(|kv| kv.json()).transpose()
    }

    fn service_tokens(&mut self) -> Result<Vec<ServiceTokenRecord>, StoreError> {
        self.tokens(0, 0)
    }

    fn create_service_token(
        &mut self,
        name: &str,
        expires: Option<u64>,
    ) -> Result<(ServiceTokenRecord, Secret), StoreError> {
        if !valid_token_name(name) {
            return Err(StoreError::Invalid(format!(
                "invalid service token name {name:?}: use 1 to {MAX_TOKEN_NAME} characters \
                 among A-Z a-z 0-9 . _ -"
            )));
        }
        let client_id = format!("{}{CLIENT_ID_SUFFIX}", random_hex(16)?);
        let secret = random_hex(32)?;
        let record = ServiceTokenRecord::new(name, &client_id, &secret, unix_now(), expires);
        let name_key = self.key(&format!("token-names/{name}"));
        let id_key = self.key(&format!("tokens/{client_id}"));
        let done = self.txn(
            vec![compare_absent(&name_key), compare_absent(&id_key)],
            vec![
                put(&name_key, client_id.as_bytes()),
                put(&id_key, &to_json(&record)),
            ],
        )?;
        if !done.succeeded {
            return Err(StoreError::Exists(format!("service token {name:?}")));
        }
        Ok((record, Secret::from(secret)))
    }

    fn rotate_service_token(
        &mut self,
        name: &str,
        overlap_secs: u64,
    ) -> Result<(ServiceTokenRecord, Secret), StoreError> {
        let missing = || StoreError::Invalid(format!("no service token named {name:?}"));
        let name_key = self.key(&format!("token-names/{name}"));
        let client_id = self.get(&name_key)?.ok_or_else(missing)?.value()?;
        let client_id = String::from_utf8(client_id).map_err(|_| malformed("token name"))?;
        let id_key = self.key(&format!("tokens/{client_id}"));
        let kv = self.get(&id_key)?.ok_or_else(missing)?;
        let current: ServiceTokenRecord = kv.json()?;
        let secret = random_hex(32)?;
        let record = current.rotated(&secret, unix_now(), overlap_secs);
        // Only over the record as read: a rotation through another edge meanwhile wins, and
        // this one says so rather than undo it.
        let done = self.txn(
            vec![compare_revision(&id_key, revision(kv.mod_revision))],
            vec![put(&id_key, &to_json(&record))],
        )?;
        if !done.succeeded {
            return Err(StoreError::Unavailable(format!(
                "service token {name:?} changed while it was rotated; run the command again"
            )));
        }
        Ok((record, Secret::from(secret)))
    }

    fn claim_hostname(
        &mut self,
        hostname: &str,
        mut record: HostnameRecord,
        expect: Expect,
    ) -> Result<Claimed, StoreError> {
        let host = hostname.to_ascii_lowercase();
        if let HostOwner::Certificate(fp) = &mut record.owner {
            fp.make_ascii_lowercase();
        }
        let key = self.key(&format!("hostnames/{host}"));
        for _ in 0..ETCD_CAS_ATTEMPTS {
            let current = self.hostname(&host)?;
            if let Some(cur) = &current {
                if cur.value.owner == record.owner {
                    return Ok(Claimed {
                        record: cur.clone(),
                        new: false,
                    });
                }
            }
            match (expect, &current) {
                (Expect::Absent, Some(cur)) => return Err(StoreError::Owned(cur.clone())),
                (Expect::Revision(r), Some(cur)) if cur.revision != r => {
                    return Err(StoreError::Changed(Some(cur.clone())))
                }
                (Expect::Revision(_), None) => return Err(StoreError::Changed(None)),
                _ => {}
            }
            let mut compare = vec![compare_expect(&key, expect)];
            let mut ops = vec![put(&key, &to_json(&HostnameFileRecord::from(&record)))];
            if let HostOwner::Certificate(fp) = &record.owner {
                let slots = self.key(&format!("cert-slots/{fp}/"));
                let used: Vec<String> = self
                    .list(&slots, 0, 0)?
                    .kvs
                    .iter()
                    .map(Kv::key)
                    .collect::<Result<_, _>>()?;
                let free: Vec<usize> = (0..MAX_HOSTNAMES_PER_CERTIFICATE)
                    .filter(|n| !used.contains(&format!("{slots}{n}")))
                    .collect();
                if free.is_empty() {
                    return Err(StoreError::TooMany);
                }
                let pick = usize::from_str_radix(&random_hex(4)?, 16).unwrap_or(0) % free.len();
                let slot = format!("{slots}{}", free[pick]);
                compare.push(compare_absent(&slot));
                ops.push(put(&slot, host.as_bytes()));
            }
            if let Some(HostOwner::Certificate(old)) = current.as_ref().map(|c| &c.value.owner) {
                if let Some(slot) = self.slot_of(old, &host)? {
                    ops.push(delete(&slot));
                }
            }
            let done = self.txn(compare, ops)?;
            if done.succeeded {
                return Ok(Claimed {
                    record: Versioned {
                        value: record,
                        revision: revision(done.header.revision),
                    },
                    new: true,
                });
            }
            // The hostname or the certificate's count changed: look again.
        }
        Err(StoreError::Unavailable(format!(
            "etcd: hostname {host} kept changing during {ETCD_CAS_ATTEMPTS} attempts to claim it; retry"
        )))
    }

    fn release_hostname(&mut self, hostname: &str, expect: Expect) -> Result<(), StoreError> {
        let host = hostname.to_ascii_lowercase();
        let Some(cur) = self.hostname(&host)? else {
            return Ok(());
        };
        match expect {
            Expect::Revision(r) if r == cur.revision => {}
            _ => return Err(StoreError::Changed(Some(cur))),
        }
        let key = self.key(&format!("hostnames/{host}"));
        let mut ops = vec![delete(&key)];
        if let HostOwner::Certificate(fp) = &cur.value.owner {
            if let Some(slot) = self.slot_of(fp, &host)? {
                ops.push(delete(&slot));
            }
        }
        if self
            .txn(vec![compare_revision(&key, cur.revision)], ops)?
            .succeeded
        {
            return Ok(());
        }
        match self.hostname(&host)? {
            None => Ok(()),
            now => Err(StoreError::Changed(now)),
        }
    }

    fn unroute_tunnel(&mut self, id: &str) -> Result<Vec<String>, StoreError> {
        self.remove_hostnames(
            &|_, r, _| matches!(&r.owner, HostOwner::Tunnel(t) if t == id),
            false,
        )
    }

    fn create_tunnel(&mut self, id: &str, record: TunnelRecord) -> Result<(), StoreError> {
        let id_key = self.key(&format!("tunnels/{id}"));
        let name_key = self.key(&format!("tunnel-names/{}/{}", record.zone, record.name));
        let done = self.txn(
            vec![compare_absent(&id_key), compare_absent(&name_key)],
            vec![
                put(&id_key, &to_json(&record)),
                put(&name_key, id.as_bytes()),
            ],
        )?;
        if done.succeeded {
            return Ok(());
        }
        if self.get(&id_key)?.is_some() {
            return Err(StoreError::Exists(format!("tunnel {id}")));
        }
        Err(StoreError::Exists(format!(
            "a tunnel named {} in zone {}",
            record.name, record.zone
        )))
    }

    fn delete_tunnel(&mut self, id: &str) -> Result<(), StoreError> {
        let id_key = self.key(&format!("tunnels/{id}"));
        let Some(kv) = self.get(&id_key)? else {
            return Ok(());
        };
        let record: TunnelRecord = kv.json()?;
        let name_key = self.key(&format!("tunnel-names/{}/{}", record.zone, record.name));
        self.txn(
            vec![compare_revision(&id_key, revision(kv.mod_revision))],
            vec![delete(&id_key), delete(&name_key)],
        )?;
        // Not done only when someone else deleted it meanwhile: gone either way.
        Ok(())
    }

    fn release_orphaned_routes(&mut self) -> Result<Vec<String>, StoreError> {
        self.remove_hostnames(
            &|_, r, tunnels| matches!(&r.owner, HostOwner::Tunnel(t) if !tunnels.contains_key(t)),
            true,
        )
    }

    fn release_misfiled(
        &mut self,
        zone_of: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<String>, StoreError> {
        self.remove_hostnames(&|h, r, _| zone_of(h).is_some_and(|z| z != r.zone), false)
    }

    fn revoke(&mut self, revocation: Revocation) -> Result<(), StoreError> {
        let now = unix_now();
        let (key, value) = match revocation {
            Revocation::Certificate {
                sha256,
                serial,
                reason,
            } => (
                format!("revoked/cert/{}", sha256.to_ascii_lowercase()),
                to_json(&RevokedCertificate {
                    serial,
                    revoked: now,
                    reason,
                }),
            ),
            Revocation::ServiceToken { client_id, reason } => (
                format!("revoked/token/{client_id}"),
                to_json(&RevokedToken {
                    revoked: now,
                    reason,
                }),
            ),
            Revocation::Serial { serial, reason } => (
                format!("revoked/serial/{}", serial.to_ascii_lowercase()),
                to_json(&RevokedToken {
                    revoked: now,
                    reason,
                }),
            ),
            Revocation::ZoneSessions {
                zone,
                email,
                before,
                reason,
            } => (
                format!(
                    "revoked/zone/{}",
                    super::zone_sessions_key(&zone, &email, before)
                ),
                to_json(&RevokedToken {
                    revoked: now,
                    reason,
                }),
            ),
        };
        let key = self.key(&key);
        // The first revocation stands (its time and reason); a second one changes nothing.
        self.txn(vec![compare_absent(&key)], vec![put(&key, &value)])?;
        Ok(())
    }

    fn put_login(
        &mut self,
        key: &str,
        login: PendingLoginRecord,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        let prefix = self.key("logins/");
        let (pending, _) = self.count(&prefix)?;
        if usize::try_from(pending).unwrap_or(usize::MAX) >= MAX_STORED_LOGINS {
            return Err(StoreError::Full);
        }
        let ttl = ttl_secs.clamp(1, i64::MAX as u64);
        let lease: LeaseGrant = self.call("/v3/lease/grant", &json!({"TTL": ttl.to_string()}))?;
        let k = format!("{prefix}{key}");
        let mut op = put(&k, &login.0);
        op["request_put"]["lease"] = json!(lease.id.to_string());
        if !self.txn(vec![compare_absent(&k)], vec![op])?.succeeded {
            return Err(StoreError::Exists(format!("login {key}")));
        }
        Ok(())
    }

    fn take_login(&mut self, key: &str) -> Result<Option<PendingLoginRecord>, StoreError> {
        let k = self.key(&format!("logins/{key}"));
        let body =
            json!({"success": [{"request_delete_range": {"key": b64(&k), "prev_kv": true}}]});
        let done: TxnResponse = self.call("/v3/kv/txn", &body)?;
        let taken = done
            .responses
            .into_iter()
            .filter_map(|r| r.response_delete_range)
            .flat_map(|d| d.prev_kvs)
            .next();
        taken
            .map(|kv| kv.value().map(PendingLoginRecord))
            .transpose()
    }

    fn changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.found)
    }

    fn poll(&mut self) -> Result<(), StoreError> {
        let at = self.cluster_revision()?;
        if at <= self.seen {
            return Ok(());
        }
        let since = self.seen + 1;
        for t in self.tokens(at, since)? {
            if self.known_tokens.get(&t.client_id) != Some(&t) {
                self.known_tokens.insert(t.client_id.clone(), t.clone());
                self.found.push(Change::ServiceToken {
                    client_id: t.client_id.clone(),
                    record: Some(t),
                });
            }
        }
        for (key, r, _) in self.revocations(at, since)? {
            if self.known_revoked.insert(key) {
                self.found.push(Change::Revoked(r));
            }
        }
        for (hostname, record) in self.hostnames_since(at, since)? {
            if self.known_hosts.get(&hostname) != Some(&record) {
                self.known_hosts.insert(hostname.clone(), record.clone());
                self.found.push(Change::Hostname {
                    hostname,
                    record: Some(record),
                });
            }
        }
        for (id, record) in self.tunnels_since(at, since)? {
            if self.known_tunnels.get(&id) != Some(&record) {
                self.known_tunnels.insert(id.clone(), record.clone());
                self.found.push(Change::Tunnel {
                    id,
                    record: Some(record),
                });
            }
        }
        // A range past a revision shows what was put, not what was deleted: fewer keys than
        // known means some are gone, and only then are the names listed to find which.
        let hosts = self.key("hostnames/");
        if usize::try_from(self.count_at(&hosts, at)?.0).unwrap_or(0) < self.known_hosts.len() {
            let now = self.hostnames(at)?;
            let gone: Vec<String> = self
                .known_hosts
                .keys()
                .filter(|h| !now.contains_key(*h))
                .cloned()
                .collect();
            for hostname in gone {
                self.known_hosts.remove(&hostname);
                self.found.push(Change::Hostname {
                    hostname,
                    record: None,
                });
            }
        }
        let tunnels = self.key("tunnels/");
        if usize::try_from(self.count_at(&tunnels, at)?.0).unwrap_or(0) < self.known_tunnels.len() {
            let now = self.tunnels(at)?;
            let gone: Vec<String> = self
                .known_tunnels
                .keys()
                .filter(|id| !now.contains_key(*id))
                .cloned()
                .collect();
            for id in gone {
                self.known_tunnels.remove(&id);
                self.found.push(Change::Tunnel { id, record: None });
            }
        }
        self.seen = at;
        Ok(())
    }
}

/// Parses `data` as each answer of the gateway and reads the records in it, as the store
/// does: never panics, whatever the bytes; and parses it as an `etcd://` URL.
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub fn fuzz_answers(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<RangeResponse>(data) {
        for kv in &r.kvs {
            let _ = kv.key_under("p/");
            let _ = kv.json::<ServiceTokenRecord>();
            let _ = versioned_host(kv);
        }
    }
    if let Ok(t) = serde_json::from_slice::<TxnResponse>(data) {
        for kv in t
            .responses
            .iter()
            .filter_map(|r| r.response_delete_range.as_ref())
            .flat_map(|d| &d.prev_kvs)
        {
            let _ = kv.value();
        }
    }
    let _ = serde_json::from_slice::<LeaseGrant>(data);
    let _ = serde_json::from_slice::<AuthAnswer>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = EtcdUrl::parse(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_one_or_more_endpoints() {
        let u = EtcdUrl::parse("etcd://127.0.0.1:2379/postern").unwrap();
        assert_eq!(u.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(u.prefix, "postern");
        let u = EtcdUrl::parse("etcd://h1:2379,h2.example:2379,[::1]:2379/a/b/").unwrap();
        assert_eq!(u.endpoints, ["h1:2379", "h2.example:2379", "[::1]:2379"]);
        assert_eq!(u.prefix, "a/b");
        assert_eq!(
            u.to_string(),
            "etcd://h1:2379,h2.example:2379,[::1]:2379/a/b"
        );
        for bad in [
            "etcd://h1:2379",
            "etcd://h1:2379/",
            "etcd://h1/p",
            "etcd://h1:0/p",
            "etcd://:2379/p",
            "etcd://user@h1:2379/p",
            "etcd://h1:2379,/p",
            "etcd://h1:2379/a//b",
            "etcd://h1:2379/a b",
            "http://h1:2379/p",
        ] {
            let e = EtcdUrl::parse(bad).unwrap_err();
            assert!(e.contains("etcd://HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn etcds_urls_say_tls_and_show_their_scheme() {
        let u = EtcdUrl::parse("etcds://h1:2379,10.0.0.6:2379/postern").unwrap();
        assert!(u.tls);
        assert_eq!(u.endpoints, ["h1:2379", "10.0.0.6:2379"]);
        assert_eq!(u.to_string(), "etcds://h1:2379,10.0.0.6:2379/postern");
        assert!(!EtcdUrl::parse("etcd://h1:2379/p").unwrap().tls);
        assert!(EtcdUrl::is_etcd("etcds://h1:2379/p"));
        for bad in ["etcds://h1:2379", "etcds:/h1:2379/p", "https://h1:2379/p"] {
            let e = EtcdUrl::parse(bad).unwrap_err();
            assert!(e.contains("etcds://"), "{bad}: {e}");
        }
    }

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn resolve_err(url: &str, access: &EtcdAccess, env: &[(&'static str, &'static str)]) -> String {
        let env: &'static [(&str, &str)] = Vec::leak(env.to_vec());
        match resolve(&EtcdUrl::parse(url).unwrap(), access, &env_of(env)) {
            Ok(_) => panic!("{url}: accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn tls_files_and_credentials_come_from_flags_then_etcdctl_variables() {
        let tls = EtcdUrl::parse("etcds://h:2379/p").unwrap();
        let given = EtcdAccess {
            ca: Some("/flag/ca.pem".into()),
            user: Some("edge".into()),
            password_file: Some("/flag/pw".into()),
            ..EtcdAccess::default()
        };
        let env = env_of(&[
            ("ETCDCTL_CACERT", "/env/ca.pem"),
            ("ETCDCTL_CERT", "/env/c.pem"),
            ("ETCDCTL_KEY", "/env/c.key"),
            ("ETCDCTL_USER", "root:envpw"),
        ]);
        let r = resolve(&tls, &given, &env).unwrap();
        assert_eq!(r.ca.as_deref(), Some(Path::new("/flag/ca.pem")));
        assert_eq!(
            r.client,
            Some(("/env/c.pem".into(), "/env/c.key".into())),
            "the client pair from the environment"
        );
        let (user, password) = r.auth.unwrap();
        assert_eq!(user, "edge");
        assert!(matches!(password, PasswordFrom::File(p) if p == Path::new("/flag/pw")));

        // Only the environment: etcdctl's `user:password` form.
        let r = resolve(&tls, &EtcdAccess::default(), &env).unwrap();
        let (user, password) = r.auth.unwrap();
        assert_eq!(user, "root");
        assert!(matches!(password, PasswordFrom::Env(p) if p.expose() == "envpw"));

        // TLS variables are ignored for a plain etcd:// state, as etcdctl ignores them for
        // http:// endpoints; nothing at all means no TLS and no auth.
        let plain = EtcdUrl::parse("etcd://h:2379/p").unwrap();
        let r = resolve(
            &plain,
            &EtcdAccess::default(),
            &env_of(&[("ETCDCTL_CACERT", "/x")]),
        )
        .unwrap();
        assert!(r.ca.is_none() && r.client.is_none() && r.auth.is_none());
        // A lone ETCDCTL_PASSWORD may be another tool's.
        let r = resolve(
            &plain,
            &EtcdAccess::default(),
            &env_of(&[("ETCDCTL_PASSWORD", "x")]),
        )
        .unwrap();
        assert!(r.auth.is_none());
    }

    #[test]
    fn incomplete_or_misplaced_etcd_settings_are_named() {
        let none = EtcdAccess::default();
        let e = resolve_err("etcds://h:2379/p", &none, &[]);
        assert!(
            e.contains("--etcd-ca") && e.contains("ETCDCTL_CACERT"),
            "{e}"
        );
        let ca = EtcdAccess {
            ca: Some("/ca".into()),
            ..none.clone()
        };
        let e = resolve_err("etcd://h:2379/p", &ca, &[]);
        assert!(e.contains("etcds://"), "{e}");
        let cert_only = EtcdAccess {
            cert: Some("/c".into()),
            ..ca.clone()
        };
        let e = resolve_err("etcds://h:2379/p", &cert_only, &[]);
        assert!(e.contains("--etcd-key"), "{e}");
        let e = resolve_err("etcds://h:2379/p", &ca, &[("ETCDCTL_KEY", "/k")]);
        assert!(e.contains("--etcd-cert"), "{e}");
        let user = EtcdAccess {
            user: Some("edge".into()),
            ..none.clone()
        };
        let e = resolve_err("etcd://h:2379/p", &user, &[]);
        assert!(
            e.contains("needs a password") && e.contains("--etcd-password-file"),
            "{e}"
        );
        let inline = EtcdAccess {
            user: Some("edge:secret".into()),
            ..none.clone()
        };
        let e = resolve_err("etcd://h:2379/p", &inline, &[]);
        assert!(e.contains("without `:`") && !e.contains("secret"), "{e}");
        let file_only = EtcdAccess {
            password_file: Some("/pw".into()),
            ..none.clone()
        };
        let e = resolve_err("etcd://h:2379/p", &file_only, &[]);
        assert!(e.contains("--etcd-user"), "{e}");
    }

    #[test]
    fn a_client_key_or_password_file_others_may_read_is_refused() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::env::temp_dir().join(format!("postern-etcd-modes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, mode: u32, data: &[u8]| {
            let path = dir.join(name);
            let _ = std::fs::remove_file(&path);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .unwrap();
            std::io::Write::write_all(&mut f, data).unwrap();
            path
        };
        let shared = write("pw-shared", 0o640, b"hunter2\n");
        let e = read_password(&shared).err().unwrap();
        assert!(e.contains("chmod 600") && !e.contains("hunter2"), "{e}");
        let private = write("pw", 0o600, b"hunter2\nignored\n");
        assert_eq!(read_password(&private).ok().unwrap().expose(), "hunter2");
        let empty = write("pw-empty", 0o600, b"\n");
        assert!(read_password(&empty).err().unwrap().contains("empty"));

        let key = write("client.key", 0o644, b"not even a key");
        let e = tls_config(&shared, Some(&(shared.clone(), key)))
            .err()
            .unwrap();
        assert!(
            e.contains("etcd client key") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_postern_did_not_write_is_an_error_with_etcd_text_escaped() {
        let kv = Kv {
            key: base64::encode(b"p/tokens/\x1b[2Jx"),
            value: base64::encode(b"{\"name\": 7, \"client_id\": \"\x1b[31m\"}"),
            create_revision: 1,
            mod_revision: 1,
        };
        let e = kv.json::<ServiceTokenRecord>().unwrap_err().to_string();
        assert!(e.contains("is not what postern writes"), "{e}");
        assert!(!e.contains('\x1b'), "{e:?}");
        let outside = kv.key_under("q/").unwrap_err().to_string();
        assert!(!outside.contains('\x1b'), "{outside:?}");
    }

    #[test]
    fn range_end_is_the_prefix_plus_one() {
        assert_eq!(
            base64::decode(&range_end("p/tokens/")).unwrap(),
            b"p/tokens0"
        );
    }

    #[test]
    fn gateway_int64s_are_strings_or_absent() {
        let r: RangeResponse = serde_json::from_str(
            r#"{"header":{"revision":"7"},"kvs":[{"key":"cC9h","create_revision":"2","mod_revision":"5"}],"count":"1"}"#,
        )
        .unwrap();
        assert_eq!(r.header.revision, 7);
        assert_eq!(r.kvs[0].mod_revision, 5);
        assert_eq!(r.kvs[0].key().unwrap(), "p/a");
        assert_eq!(r.kvs[0].value().unwrap(), b"");
        let r: RangeResponse = serde_json::from_str(r#"{"header":{"revision":"3"}}"#).unwrap();
        assert_eq!((r.count, r.kvs.len()), (0, 0));
        let t: TxnResponse = serde_json::from_str(r#"{"header":{}}"#).unwrap();
        assert!(!t.succeeded);
    }
}
