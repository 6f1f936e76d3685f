//! etcd as a [`Store`]: the records an edge pool shares, spoken through etcd's v3 JSON
//! gateway (`POST /v3/kv/range`, `/v3/kv/txn`, `/v3/lease/grant`) with ureq, plain HTTP,
//! blocking (only the store worker, or a CLI command, calls it).
//!
//! ```text
//!  etcd://h1:2379,h2:2379/PREFIX
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

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::file::{valid_token_name, HostnameFileRecord, CLIENT_ID_SUFFIX, MAX_TOKEN_NAME};
use super::{
    random_hex, Change, Claimed, Expect, HostOwner, HostnameRecord, PendingLoginRecord, Revocation,
    Revocations, RevokedCertificate, RevokedToken, ServiceTokenRecord, Snapshot, Store, StoreError,
    TunnelRecord, Versioned,
};
use crate::io::unix_now;
use crate::limits::{
    ETCD_CAS_ATTEMPTS, ETCD_CONNECT_TIMEOUT, ETCD_REQUEST_TIMEOUT, MAX_ETCD_ENDPOINTS,
    MAX_ETCD_RESPONSE, MAX_ETCD_TXN_OPS, MAX_HOSTNAMES_PER_CERTIFICATE, MAX_STORED_LOGINS,
};
use crate::proto::base64;
use crate::secret::Secret;

/// The URL scheme of an etcd state.
pub const SCHEME: &str = "etcd://";
/// Longest key prefix.
const MAX_PREFIX: usize = 128;

/// Where an etcd state lives: `etcd://HOST:PORT[,HOST:PORT…]/PREFIX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `host:port`, checked: letters, digits, `.`, `-`, `:`, `[`, `]`, and a port.
    pub endpoints: Vec<String>,
    /// Without slashes at either end.
    pub prefix: String,
}

impl EtcdUrl {
    /// Whether `s` names an etcd state (and not a directory).
    pub fn is_etcd(s: &str) -> bool {
        s.starts_with(SCHEME)
    }

    /// Parses `etcd://h1:2379,h2:2379/PREFIX`; an error says what is wrong with it.
    pub fn parse(s: &str) -> Result<EtcdUrl, String> {
        let bad = |why: &str| {
            format!(
                "{s:?} is not an etcd state: {why} (expected etcd://HOST:PORT[,HOST:PORT…]/PREFIX, \
                 e.g. etcd://10.0.0.5:2379,10.0.0.6:2379/postern)"
            )
        };
        let rest = s.strip_prefix(SCHEME).ok_or_else(|| bad("no etcd://"))?;
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
        })
    }
}

impl std::fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.endpoints.join(","), self.prefix)
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

impl EtcdStore {
    /// A store on `url`; checks that an endpoint answers (an error names each one tried).
    pub fn connect(url: &EtcdUrl) -> Result<EtcdStore, StoreError> {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(ETCD_CONNECT_TIMEOUT))
            .timeout_global(Some(ETCD_REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .new_agent();
        let mut store = EtcdStore {
            root: format!("{}/", url.prefix),
            url: url.clone(),
            agent,
            current: 0,
            seen: 0,
            found: Vec::new(),
            known_tokens: BTreeMap::new(),
            known_revoked: BTreeSet::new(),
            known_hosts: BTreeMap::new(),
            known_tunnels: BTreeMap::new(),
        };
        store.cluster_revision()?;
        Ok(store)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.root)
    }

    /// POSTs `body` to `path`, trying each endpoint from the one that answered last.
    fn call<T: DeserializeOwned>(&mut self, path: &str, body: &Value) -> Result<T, StoreError> {
        let body = body.to_string();
        let n = self.url.endpoints.len();
        let mut failures = Vec::new();
        for i in 0..n {
            let at = (self.current + i) % n;
            let endpoint = self.url.endpoints[at].clone();
            match self.call_one(&endpoint, path, &body) {
                Ok(data) => {
                    self.current = at;
                    return serde_json::from_slice(&data).map_err(|e| {
                        StoreError::Unavailable(format!(
                            "etcd at {endpoint} answered {path} with unexpected JSON: {}",
                            crate::logging::escape(&e.to_string(), 200)
                        ))
                    });
                }
                Err(Failure::Answer(why)) => {
                    self.current = at;
                    return Err(StoreError::Unavailable(format!(
                        "etcd at {endpoint}: {why}"
                    )));
                }
                Err(Failure::Unreachable(why)) => {
                    failures.push(format!("etcd at {endpoint} unreachable: {why}"))
                }
            }
        }
        Err(StoreError::Unavailable(failures.join("; ")))
    }

    fn call_one(&self, endpoint: &str, path: &str, body: &str) -> Result<Vec<u8>, Failure> {
        let url = format!("http://{endpoint}{path}");
        let mut resp = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let data = resp
            .body_mut()
            .with_config()
            .limit(MAX_ETCD_RESPONSE)
            .read_to_vec()
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        if status == 200 {
            return Ok(data);
        }
        // The gateway's errors: {"error": "...", "code": N, "message": "..."}.
        let message = serde_json::from_slice::<Value>(&data)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        let why = format!("HTTP {status} {}", crate::logging::escape(&message, 200));
        if status >= 500 {
            Err(Failure::Unreachable(why))
        } else {
            Err(Failure::Answer(why))
        }
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
    /// No answer (connect, timeout, a 5xx): the next endpoint may do better.
    Unreachable(String),
    /// An answer that refuses the request: another endpoint would say the same.
    Answer(String),
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
