//! The edge's state: what it persists, and what edges of a pool must agree on (DESIGN.md §4–§6).
//!
//! One trait, [`Store`], names every operation on that state: service-token hashes, hostname
//! ownership (claims and routes), named tunnels, revocations and pending logins. Two backends
//! implement it: the state directory ([`file::FileStore`], the default, one edge) and etcd
//! ([`etcd::EtcdStore`], an edge pool; docs/scaling.md). The edge never calls a store on its event loop: a
//! [`worker::StoreWorker`] thread owns the store, takes [`Request`]s from a bounded queue and
//! sends back [`Answer`]s, waking the loop through its `mio::Waker`. The edge keeps a read-only
//! view of the records (loaded from [`Store::snapshot`] before its loop starts) for the checks
//! it makes on every request, and updates it from the answers.
//!
//! Contract of every backend:
//! - **Compare-and-swap where two writers could race.** A hostname has at most one owner:
//!   [`Store::claim_hostname`] takes an [`Expect`] (the record absent, or at the revision the
//!   caller saw) and fails with the current record when it does not hold. The check and the
//!   change are one step in the backend (one thread for the state directory, one transaction
//!   for etcd), never a read on the edge followed by a write.
//! - **Revisions** ([`Versioned::revision`]) grow with every change. etcd's `mod_revision`
//!   maps onto them directly; the state directory numbers changes in memory (they start again
//!   at each start, which is fine: every edge that compares them got them from this store).
//! - **Durable before answered.** An `Ok` means the change is stored (fsync-ed, or committed by
//!   the etcd cluster); an error means it did not happen.
//! - **No secrets.** Service tokens are stored as SHA-256 of their secret.
//!
//! The state directory, as [`file::FileStore`] keeps it:
//! - One directory (default `~/.postern/edge`), created `0700`. Files in it have fixed names
//!   chosen by the code, never by input; [`StateDir`] refuses a name containing `/` or starting
//!   with `.` (temp files start with `.`, so they can never be addressed by name).
//! - Every write is atomic: a temp file in the same directory, created with its final mode
//!   (`0600` for anything secret, never chmod-ed after), written, fsync-ed, renamed over the
//!   target, then the directory is fsync-ed. A crash leaves the old file or the new one.
//! - `service-tokens.json` keeps only SHA-256 of each secret; [`ServiceTokens::verify`] compares
//!   digests in constant time. The secret itself is shown once, at creation, as a [`Secret`].
//! - `hostnames.json` records which origin certificate (by fingerprint) first registered each
//!   hostname, or which named tunnel it is routed to; one certificate claims at most
//!   [`crate::limits::MAX_HOSTNAMES_PER_CERTIFICATE`]. `tunnels.json` holds the named tunnels,
//!   `revocations.json` revoked certificates and service tokens.
//!
//! Writers in the same process go through one owner (the edge's store worker); two
//! `service-token create` processes racing may lose one record (the later rename wins).

pub mod etcd;
pub mod file;
pub mod worker;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::limits::MAX_HOSTNAMES_PER_CERTIFICATE;
use crate::secret::Secret;

pub use etcd::{EtcdAccess, EtcdConfig, EtcdStore, EtcdUrl};
pub use file::{valid_tunnel_name, FileStore, ServiceTokens, MAX_TUNNEL_NAME};

/// Mode of files that hold secrets or access-control state.
const SECRET_MODE: u32 = 0o600;

/// The edge's state directory. See the module doc for the contract.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens `path`, creating it (and missing parents) with mode 0700 if needed. A directory
    /// owned by another user than this process's is refused: its owner could replace the
    /// signing keys, the origin CA or the hostname records under us.
    pub fn open(path: &Path) -> io::Result<StateDir> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| {
                annotate(
                    e,
                    &format!("cannot create state directory {}", path.display()),
                )
            })?;
        let meta = fs::metadata(path).map_err(|e| {
            annotate(
                e,
                &format!("cannot read state directory {}", path.display()),
            )
        })?;
        let (owner, us) = (meta.uid(), crate::io::sys::euid());
        if owner != us {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "state directory {} is owned by uid {owner}, not by this process's uid {us}: \
                     another user could change the edge's keys and records in it. Run postern \
                     as its owner (e.g. `sudo -u <owner> postern ...`), or chown it to uid {us}",
                    path.display()
                ),
            ));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "state directory {} is accessible to other users; chmod 700 it",
                path.display()
            );
        }
        Ok(StateDir {
            path: path.to_path_buf(),
        })
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `$HOME/.postern/edge`; an error naming HOME and `--state` without a usable HOME.
    pub fn default_path() -> Result<PathBuf, String> {
        Ok(crate::io::postern_dir("pass --state DIR")?.join("edge"))
    }

    /// Replaces `name` atomically with `data`; a new file gets `mode`.
    pub fn write_atomic(&self, name: &str, data: &[u8], mode: u32) -> io::Result<()> {
        check_name(name)?;
        crate::io::files::write_file_atomic(&self.path.join(name), data, mode)
    }

    /// Creates `name` with `data` (mode `mode`, atomically) unless it exists; `Ok(false)`
    /// when it does (another process may have created it a moment ago: read it).
    pub fn write_new(&self, name: &str, data: &[u8], mode: u32) -> io::Result<bool> {
        check_name(name)?;
        match crate::io::files::write_file_new(&self.path.join(name), data, mode) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads `name`; `Ok(None)` if it does not exist.
    pub fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        check_name(name)?;
        let path = self.path.join(name);
        match fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(annotate(e, &format!("cannot read {}", path.display()))),
        }
    }

    fn load_json<T: for<'de> Deserialize<'de> + Default>(&self, name: &str) -> io::Result<T> {
        match self.read(name)? {
            None => Ok(T::default()),
            Some(data) => serde_json::from_slice(&data).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is corrupt ({e}); restore it from a backup or remove it",
                        self.path.join(name).display()
                    ),
                )
            }),
        }
    }

    fn store_json<T: Serialize>(&self, name: &str, value: &T) -> io::Result<()> {
        self.write_atomic(name, &json_file(value)?, SECRET_MODE)
    }
}

/// The bytes of a JSON state file.
fn json_file<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    data.push(b'\n');
    Ok(data)
}

/// State file names are constants of this crate; this is the guard that keeps it so.
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name.contains('\0') || name.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bug: invalid state file name {name:?}"),
        ));
    }
    Ok(())
}

fn annotate(e: io::Error, context: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{context}: {e}"))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Equality in constant time for equal lengths (`subtle`; lengths are not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| io::Error::other("the system random number generator failed"))?;
    Ok(hex(&buf))
}

fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

// ------------------------------------------------------------------------------ the model

/// A service token as a store keeps it: its name, client id and the SHA-256 of its secret
/// (never the secret). The field names are those of `service-tokens.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceTokenRecord {
    pub name: String,
    pub client_id: String,
    /// Lowercase hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Unix seconds.
    pub created: u64,
    /// The secret a rotation replaced, still accepted until its `until` (the overlap that lets
    /// clients move to the new secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousSecret>,
    /// Unix seconds from which the token is refused (`service-token create --expires`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

/// A rotated-out secret of a service token and until when it still counts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PreviousSecret {
    pub secret_sha256: String,
    /// Unix seconds.
    pub until: u64,
}

impl ServiceTokenRecord {
    /// A new token's record (no previous secret); times in unix seconds.
    pub fn new(
        name: &str,
        client_id: &str,
        secret: &str,
        created: u64,
        expires: Option<u64>,
    ) -> Self {
        ServiceTokenRecord {
            name: name.to_owned(),
            client_id: client_id.to_owned(),
            secret_sha256: sha256_hex(secret.as_bytes()),
            created,
            previous: None,
            expires,
        }
    }

    /// Whether `secret` is this token's secret at `unix`: the current one, or the previous
    /// one before its overlap ends; SHA-256 digests compared in constant time. Expiry is
    /// [`ServiceTokenRecord::expired`]'s business.
    pub fn matches(&self, secret: &str, unix: u64) -> bool {
        let presented = sha256_hex(secret.as_bytes());
        let current = ct_eq(presented.as_bytes(), self.secret_sha256.as_bytes());
        let previous = self.previous.as_ref().is_some_and(|p| {
            ct_eq(presented.as_bytes(), p.secret_sha256.as_bytes()) & (unix < p.until)
        });
        current | previous
    }

    /// Whether the token is past its expiry at `unix`.
    pub fn expired(&self, unix: u64) -> bool {
        self.expires.is_some_and(|e| unix >= e)
    }

    /// The record after a rotation at `unix`: `secret` is the new one, the current one stays
    /// valid for `overlap_secs`.
    pub fn rotated(&self, secret: &str, unix: u64, overlap_secs: u64) -> Self {
        ServiceTokenRecord {
            secret_sha256: sha256_hex(secret.as_bytes()),
            previous: (overlap_secs > 0).then(|| PreviousSecret {
                secret_sha256: self.secret_sha256.clone(),
                until: unix.saturating_add(overlap_secs),
            }),
            ..self.clone()
        }
    }
}

/// Who a hostname belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostOwner {
    /// The origin certificate (lowercase hex SHA-256) that registered it first
    /// (`tunnel --hostname`).
    Certificate(String),
    /// The named tunnel (id) it is routed to (`tunnel route dns`).
    Tunnel(String),
}

/// One hostname's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostnameRecord {
    pub owner: HostOwner,
    /// The zone of the certificate or tunnel that holds it.
    pub zone: String,
    /// Unix seconds.
    pub first_registered: u64,
}

/// A record and the revision of its last change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    /// Grows with every change in the store (etcd: the key's `mod_revision`).
    pub revision: u64,
}

/// What a compare-and-swap expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No record (etcd: `create_revision == 0`).
    Absent,
    /// The record as of this revision (etcd: `mod_revision == r`).
    Revision(u64),
}

/// A successful [`Store::claim_hostname`]: the record now stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub record: Versioned<HostnameRecord>,
    /// False when the claimant held the hostname already (nothing was written).
    pub new: bool,
}

/// A named tunnel (`tunnel create`), as the edge keeps it in `tunnels.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TunnelRecord {
    pub name: String,
    /// The zone whose origin certificate created it: only that zone's certificates manage it,
    /// and only hostnames of that zone can be routed to it.
    pub zone: String,
    /// Lowercase hex SHA-256 of the tunnel's certificate: the one credential it accepts.
    pub cert_sha256: String,
    /// Unix seconds.
    pub created: u64,
}

/// A revoked origin certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// The certificate's serial number, lowercase hex, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Unix seconds.
    pub revoked: u64,
    #[serde(default)]
    pub reason: String,
}

/// A revoked service token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RevokedToken {
    /// Unix seconds.
    pub revoked: u64,
    #[serde(default)]
    pub reason: String,
}

/// What is revoked (`revocations.json`). Revoking is for good: nothing is ever removed.
/// `postern edge service-token revoke` and `origin-cert revoke` add to it; a running edge
/// learns of it within [`crate::limits::STORE_POLL_INTERVAL`] and a second.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    /// By certificate fingerprint (lowercase hex SHA-256).
    #[serde(default)]
    pub certificates: BTreeMap<String, RevokedCertificate>,
    /// By client id.
    #[serde(default)]
    pub service_tokens: BTreeMap<String, RevokedToken>,
    /// Origin certificates revoked by serial number alone (lowercase hex, no leading zero
    /// bytes; `origin-cert revoke SERIAL`): the edge refuses any certificate of its origin CA
    /// with this serial.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub serials: BTreeMap<String, RevokedToken>,
    /// Zone sessions (one login per zone) of one email in one zone issued at or before a
    /// time, by [`zone_sessions_key`]: `postern edge sessions kill --email E` adds one. Each
    /// kill is its own entry, so a later kill reaches sessions issued after an earlier one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub zone_sessions: BTreeMap<String, RevokedToken>,
}

/// The key of a zone-session revocation: `<zone>/<hex of the email>/<before>` (the email is
/// provider text: hex keeps it out of key syntax).
pub fn zone_sessions_key(zone: &str, email: &str, before: u64) -> String {
    format!("{zone}/{}/{before}", hex(email.as_bytes()))
}

/// The zone, email and time of a [`zone_sessions_key`]; `None` for anything else.
pub fn parse_zone_sessions_key(key: &str) -> Option<(String, String, u64)> {
    let mut parts = key.split('/');
    let (zone, email, before) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || email.len() % 2 != 0 || !crate::proto::dns::valid_hostname(zone) {
        return None;
    }
    let bytes = (0..email.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(email.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((
        zone.to_owned(),
        String::from_utf8(bytes).ok()?,
        before.parse().ok()?,
    ))
}

/// One revocation to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    Certificate {
        sha256: String,
        serial: Option<String>,
        reason: String,
    },
    ServiceToken {
        client_id: String,
        reason: String,
    },
    /// An origin certificate known only by its serial (lowercase hex).
    Serial {
        serial: String,
        reason: String,
    },
    /// Every zone session of `email` in `zone` issued at or before `before` (Unix seconds):
    /// no edge of the pool exchanges them for app tokens any more.
    ZoneSessions {
        zone: String,
        email: String,
        before: u64,
        reason: String,
    },
}

/// A pending CLI login as a store shares it between the edges of a pool: opaque to the store,
/// kept until it is taken or its time to live ends (etcd: a key under a lease). The edge keeps
/// its login table in memory today; this is the shape it will move into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingLoginRecord(pub Vec<u8>);

/// A change someone else made (another process, another edge), as [`Store::changes`]
/// reports it; the edge applies it to its view as it applies answers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// The service token with this client id is now `record` (`None`: it is gone).
    ServiceToken {
        client_id: String,
        record: Option<ServiceTokenRecord>,
    },
    /// Something was revoked (the CLI wrote `revocations.json`; with etcd, another edge).
    Revoked(Revocation),
    /// Another edge of the pool claimed, routed or released `hostname` (etcd only).
    Hostname {
        hostname: String,
        record: Option<Versioned<HostnameRecord>>,
    },
    /// Another edge of the pool created (`Some`) or deleted (`None`) the named tunnel `id`
    /// (etcd only).
    Tunnel {
        id: String,
        record: Option<TunnelRecord>,
    },
}

/// Everything the edge's view starts from.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub service_tokens: Vec<ServiceTokenRecord>,
    pub hostnames: BTreeMap<String, Versioned<HostnameRecord>>,
    pub tunnels: BTreeMap<String, TunnelRecord>,
    pub revocations: Revocations,
}

/// Why a store operation did not happen. Every variant means nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend could not read or write (a disk error, an unreachable cluster); why.
    Unavailable(String),
    /// The hostname belongs to someone else; its current record.
    Owned(Versioned<HostnameRecord>),
    /// The record is not as the caller expected (it changed since it was read); the current
    /// one, if any.
    Changed(Option<Versioned<HostnameRecord>>),
    /// The certificate holds [`MAX_HOSTNAMES_PER_CERTIFICATE`] hostnames already.
    TooMany,
    /// A record with this name or id exists already.
    Exists(String),
    /// The input is not acceptable (a name); why.
    Invalid(String),
    /// The store holds as many records of this kind as it may ([`crate::limits`]).
    Full,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(why) => write!(f, "the edge's state store failed: {why}"),
            StoreError::Owned(current) => match &current.value.owner {
                HostOwner::Certificate(_) => write!(
                    f,
                    "hostname is already registered by another origin certificate (zone {}); \
                     use that certificate, or have the edge operator release the hostname",
                    current.value.zone
                ),
                HostOwner::Tunnel(id) => write!(
                    f,
                    "hostname is already routed to the named tunnel {id} (zone {})",
                    current.value.zone
                ),
            },
            StoreError::Changed(_) => {
                write!(f, "the record changed meanwhile; look again and retry")
            }
            StoreError::TooMany => write!(
                f,
                "the origin certificate already owns {MAX_HOSTNAMES_PER_CERTIFICATE} hostnames, \
                 the most one certificate may claim; serve more with a named tunnel \
                 (`postern tunnel create`, `postern tunnel route dns`)"
            ),
            StoreError::Exists(what) => write!(f, "{what} already exists"),
            StoreError::Invalid(why) => f.write_str(why),
            StoreError::Full => write!(f, "the edge's state store is full; try again later"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> StoreError {
        StoreError::Unavailable(e.to_string())
    }
}

/// The edge's state, whatever keeps it. Calls block (disk, network): only a
/// [`worker::StoreWorker`] thread, or code that runs before an event loop starts, calls them.
///
/// How the etcd backend ([`etcd::EtcdStore`]: the v3 JSON gateway through ureq) maps onto it;
/// keys live under one prefix, values are the JSON of the records:
///
/// | operation | etcd |
/// |---|---|
/// | [`Store::snapshot`] | `range` of each kind of record at one revision; [`Store::poll`] continues from it |
/// | [`Store::service_token`] | `range tokens/<client id>` |
/// | [`Store::create_service_token`] | `txn`: `tokens/<id>` and `token-names/<name>` both absent → put both |
/// | [`Store::claim_hostname`] | `txn`: compare `hostnames/<h>` (`create_revision == 0`, or `mod_revision == r`) and, for a certificate, one of its free slot keys `cert-slots/<fp>/<n>` absent → put both; else the current record |
/// | [`Store::release_hostname`] | `txn`: compare `mod_revision` → delete |
/// | [`Store::unroute_tunnel`] | `range hostnames/`, then one `txn` deleting each route at its `mod_revision` (retried on a conflict) |
/// | [`Store::create_tunnel`] / [`Store::delete_tunnel`] | `txn` on `tunnels/<id>` and `tunnel-names/<zone>/<name>` |
/// | [`Store::revoke`] | `txn` put-if-absent `revoked/cert/<fp>`, `revoked/token/<id>` or `revoked/serial/<s>` |
/// | [`Store::put_login`] / [`Store::take_login`] | `lease/grant` (TTL) + `txn` put-if-absent with the lease; `txn` delete with `prev_kv` |
///
/// Changes made by other edges reach this edge's view through [`Store::poll`] (a range past
/// the last revision seen) and [`Store::changes`], applied the same way as answers to its own
/// requests.
pub trait Store: Send {
    /// Every record, for the edge's view.
    fn snapshot(&mut self) -> Result<Snapshot, StoreError>;

    /// The service token with this client id, looked up in the store itself (a token created
    /// since the snapshot, e.g. by `postern edge service-token create`).
    fn service_token(&mut self, client_id: &str) -> Result<Option<ServiceTokenRecord>, StoreError>;

    /// Every service token, in creation order.
    fn service_tokens(&mut self) -> Result<Vec<ServiceTokenRecord>, StoreError>;

    /// Creates a service token called `name` (unique); returns its record and its secret, which
    /// is stored nowhere and cannot be shown again.
    fn create_service_token(
        &mut self,
        name: &str,
        expires: Option<u64>,
    ) -> Result<(ServiceTokenRecord, Secret), StoreError>;

    /// Gives the service token called `name` a new secret (returned, stored nowhere); the old
    /// one stays valid for `overlap_secs`. `NotFound` if there is no such token.
    fn rotate_service_token(
        &mut self,
        name: &str,
        overlap_secs: u64,
    ) -> Result<(ServiceTokenRecord, Secret), StoreError>;

    /// Gives `hostname` to `record.owner` if the current record is as `expect` says. A
    /// certificate (or tunnel) that holds the hostname already gets it back unchanged,
    /// whatever `expect`. A certificate is refused beyond
    /// [`MAX_HOSTNAMES_PER_CERTIFICATE`] hostnames; routes to named tunnels are not counted.
    fn claim_hostname(
        &mut self,
        hostname: &str,
        record: HostnameRecord,
        expect: Expect,
    ) -> Result<Claimed, StoreError>;

    /// Forgets `hostname` if its record is at the revision `expect` names (absent: nothing to
    /// do).
    fn release_hostname(&mut self, hostname: &str, expect: Expect) -> Result<(), StoreError>;

    /// Forgets every hostname routed to the named tunnel `id`; returns them, sorted.
    fn unroute_tunnel(&mut self, id: &str) -> Result<Vec<String>, StoreError>;

    /// Records a new named tunnel; its id, and its name within its zone, must be new.
    fn create_tunnel(&mut self, id: &str, record: TunnelRecord) -> Result<(), StoreError>;

    /// Forgets a named tunnel: its certificate is refused from then on. Its routes are
    /// released first with [`Store::unroute_tunnel`] (a crash in between leaves a tunnel
    /// without routes, never routes to a tunnel that is gone).
    fn delete_tunnel(&mut self, id: &str) -> Result<(), StoreError>;

    /// Routes to tunnels that no longer exist (a delete cut short): released, and returned.
    fn release_orphaned_routes(&mut self) -> Result<Vec<String>, StoreError>;

    /// Hostnames recorded for another zone than `zone_of` gives them now (a zone configured
    /// since, e.g. `team.site.com` beside `site.com`, takes its names back from the parent
    /// zone's certificates and tunnels): released, and returned. Hostnames in no configured
    /// zone are kept.
    fn release_misfiled(
        &mut self,
        zone_of: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<String>, StoreError>;

    /// Records a revocation (for good).
    fn revoke(&mut self, revocation: Revocation) -> Result<(), StoreError>;

    /// Keeps a pending login under `key` (new keys only) for `ttl_secs`.
    fn put_login(
        &mut self,
        key: &str,
        login: PendingLoginRecord,
        ttl_secs: u64,
    ) -> Result<(), StoreError>;

    /// Takes the pending login `key` (it is gone afterwards), if it has not expired.
    fn take_login(&mut self, key: &str) -> Result<Option<PendingLoginRecord>, StoreError>;

    /// Changes made by others that the store noticed since the last call (the state
    /// directory: `service-tokens.json` edited by the CLI or an operator, seen when it reads
    /// the file again; etcd: what [`Store::poll`] found). The worker calls it after each batch.
    fn changes(&mut self) -> Vec<Change> {
        Vec::new()
    }

    /// Looks for changes made by others without being asked (the state directory: a `stat`
    /// of the files others write; etcd: a range of what changed past the last revision seen). The worker
    /// calls it every [`crate::limits::STORE_POLL_INTERVAL`], then [`Store::changes`].
    fn poll(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the store is across a network (etcd): the worker then stops calling it for a
    /// while after it was unreachable ([`worker::StoreWorker`]'s breaker), instead of making
    /// every request wait for the timeouts. A local directory is always tried.
    fn remote(&self) -> bool {
        false
    }

    /// Runs one request.
    fn execute_one(&mut self, request: Request) -> Answer {
        match request {
            Request::ServiceToken { client_id } => Answer::ServiceToken {
                result: self.service_token(&client_id),
                client_id,
            },
            Request::ClaimHostname {
                hostname,
                record,
                expect,
            } => Answer::Hostname {
                result: self.claim_hostname(&hostname, record, expect),
                hostname,
            },
            Request::ReleaseHostname { hostname, expect } => Answer::Released {
                result: self.release_hostname(&hostname, expect),
                hostname,
            },
            Request::UnrouteTunnel { id } => Answer::Unrouted {
                result: self.unroute_tunnel(&id),
                id,
            },
            Request::CreateTunnel { id, record } => Answer::TunnelCreated {
                result: self.create_tunnel(&id, record.clone()).map(|()| record),
                id,
            },
            Request::DeleteTunnel { id } => Answer::TunnelDeleted {
                result: self.delete_tunnel(&id),
                id,
            },
            Request::Revoke(r) => Answer::Revoked {
                result: self.revoke(r.clone()).map(|()| r),
            },
            Request::PutLogin {
                key,
                login,
                ttl_secs,
            } => Answer::LoginPut {
                result: self.put_login(&key, login, ttl_secs),
                key,
            },
            Request::TakeLogin { key } => Answer::LoginTaken {
                result: self.take_login(&key),
                key,
            },
            Request::CreateServiceToken { name } => Answer::ServiceTokenCreated {
                result: self
                    .create_service_token(&name, None)
                    .map(|(record, secret)| (record, NewSecret(secret.expose().to_owned()))),
                name,
            },
        }
    }

    /// Runs requests in order and answers each, in order. A backend may make the batch's
    /// changes durable together (the state directory writes each file once per batch); each
    /// answer still says whether its own change is stored.
    fn execute(&mut self, batch: Vec<Request>) -> Vec<Answer> {
        batch.into_iter().map(|r| self.execute_one(r)).collect()
    }
}

/// A [`Store`] operation, as the edge's loop hands it to the [`worker::StoreWorker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    ServiceToken {
        client_id: String,
    },
    ClaimHostname {
        hostname: String,
        record: HostnameRecord,
        expect: Expect,
    },
    ReleaseHostname {
        hostname: String,
        expect: Expect,
    },
    UnrouteTunnel {
        id: String,
    },
    CreateTunnel {
        id: String,
        record: TunnelRecord,
    },
    DeleteTunnel {
        id: String,
    },
    Revoke(Revocation),
    PutLogin {
        key: String,
        login: PendingLoginRecord,
        ttl_secs: u64,
    },
    TakeLogin {
        key: String,
    },
    /// [`Store::create_service_token`] (the admin console).
    CreateServiceToken {
        name: String,
    },
}

impl Request {
    /// The answer that says this request did not happen, because of `e`.
    pub fn failed(self, e: StoreError) -> Answer {
        match self {
            Request::ServiceToken { client_id } => Answer::ServiceToken {
                client_id,
                result: Err(e),
            },
            Request::ClaimHostname { hostname, .. } => Answer::Hostname {
                hostname,
                result: Err(e),
            },
            Request::ReleaseHostname { hostname, .. } => Answer::Released {
                hostname,
                result: Err(e),
            },
            Request::UnrouteTunnel { id } => Answer::Unrouted { id, result: Err(e) },
            Request::CreateTunnel { id, .. } => Answer::TunnelCreated { id, result: Err(e) },
            Request::DeleteTunnel { id } => Answer::TunnelDeleted { id, result: Err(e) },
            Request::Revoke(_) => Answer::Revoked { result: Err(e) },
            Request::PutLogin { key, .. } => Answer::LoginPut {
                key,
                result: Err(e),
            },
            Request::TakeLogin { key } => Answer::LoginTaken {
                key,
                result: Err(e),
            },
            Request::CreateServiceToken { name } => Answer::ServiceTokenCreated {
                name,
                result: Err(e),
            },
        }
    }
}

/// The outcome of one [`Request`]. Each names what it is about, so that the edge can update
/// its view from it whether or not whoever asked is still there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    ServiceToken {
        client_id: String,
        result: Result<Option<ServiceTokenRecord>, StoreError>,
    },
    Hostname {
        hostname: String,
        result: Result<Claimed, StoreError>,
    },
    Released {
        hostname: String,
        result: Result<(), StoreError>,
    },
    Unrouted {
        id: String,
        result: Result<Vec<String>, StoreError>,
    },
    TunnelCreated {
        id: String,
        result: Result<TunnelRecord, StoreError>,
    },
    TunnelDeleted {
        id: String,
        result: Result<(), StoreError>,
    },
    Revoked {
        result: Result<Revocation, StoreError>,
    },
    LoginPut {
        key: String,
        result: Result<(), StoreError>,
    },
    LoginTaken {
        key: String,
        result: Result<Option<PendingLoginRecord>, StoreError>,
    },
    /// A service token was created: its record, and its secret (shown once, then dropped).
    ServiceTokenCreated {
        name: String,
        result: Result<(ServiceTokenRecord, NewSecret), StoreError>,
    },
}

/// A service token's secret on its way from the store to the one page that shows it once.
/// Its `Debug` prints no secret (answers are logged with `{:?}`).
#[derive(Clone, PartialEq, Eq)]
pub struct NewSecret(String);

impl NewSecret {
    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewSecret(..)")
    }
}

impl Answer {
    /// The error, if the operation failed.
    pub fn error(self) -> Option<StoreError> {
        match self {
            Answer::ServiceToken { result, .. } => result.err(),
            Answer::Hostname { result, .. } => result.err(),
            Answer::Released { result, .. }
            | Answer::TunnelDeleted { result, .. }
            | Answer::LoginPut { result, .. } => result.err(),
            Answer::Unrouted { result, .. } => result.err(),
            Answer::TunnelCreated { result, .. } => result.err(),
            Answer::Revoked { result } => result.err(),
            Answer::LoginTaken { result, .. } => result.err(),
            Answer::ServiceTokenCreated { result, .. } => result.err(),
        }
    }

    /// Whether the operation failed because the store could not be reached.
    pub fn unavailable(&self) -> bool {
        let e = match self {
            Answer::ServiceToken { result, .. } => result.as_ref().err(),
            Answer::Hostname { result, .. } => result.as_ref().err(),
            Answer::Released { result, .. }
            | Answer::TunnelDeleted { result, .. }
            | Answer::LoginPut { result, .. } => result.as_ref().err(),
            Answer::Unrouted { result, .. } => result.as_ref().err(),
            Answer::TunnelCreated { result, .. } => result.as_ref().err(),
            Answer::Revoked { result } => result.as_ref().err(),
            Answer::LoginTaken { result, .. } => result.as_ref().err(),
            Answer::ServiceTokenCreated { result, .. } => result.as_ref().err(),
        };
        matches!(e, Some(StoreError::Unavailable(_)))
    }

    /// Whether the operation succeeded.
    pub fn is_ok(&self) -> bool {
        match self {
            Answer::ServiceToken { result, .. } => result.is_ok(),
            Answer::Hostname { result, .. } => result.is_ok(),
            Answer::Released { result, .. }
            | Answer::TunnelDeleted { result, .. }
            | Answer::LoginPut { result, .. } => result.is_ok(),
            Answer::Unrouted { result, .. } => result.is_ok(),
            Answer::TunnelCreated { result, .. } => result.is_ok(),
            Answer::Revoked { result } => result.is_ok(),
            Answer::LoginTaken { result, .. } => result.is_ok(),
            Answer::ServiceTokenCreated { result, .. } => result.is_ok(),
        }
    }

    /// The same answer, failed with `e` (a group write that did not reach the disk).
    pub fn failed(self, e: StoreError) -> Answer {
        match self {
            Answer::ServiceToken { client_id, .. } => Answer::ServiceToken {
                client_id,
                result: Err(e),
            },
            Answer::Hostname { hostname, .. } => Answer::Hostname {
                hostname,
                result: Err(e),
            },
            Answer::Released { hostname, .. } => Answer::Released {
                hostname,
                result: Err(e),
            },
            Answer::Unrouted { id, .. } => Answer::Unrouted { id, result: Err(e) },
            Answer::TunnelCreated { id, .. } => Answer::TunnelCreated { id, result: Err(e) },
            Answer::TunnelDeleted { id, .. } => Answer::TunnelDeleted { id, result: Err(e) },
            Answer::Revoked { .. } => Answer::Revoked { result: Err(e) },
            Answer::LoginPut { key, .. } => Answer::LoginPut {
                key,
                result: Err(e),
            },
            Answer::LoginTaken { key, .. } => Answer::LoginTaken {
                key,
                result: Err(e),
            },
            Answer::ServiceTokenCreated { name, .. } => Answer::ServiceTokenCreated {
                name,
                result: Err(e),
            },
        }
    }
}
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "postern-test-{tag}-{}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                random_hex(4).unwrap()
            ));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn open_creates_private_directory() {
        let tmp = TempDir::new("state-open");
        let dir = tmp.0.join("a").join("edge");
        let state = StateDir::open(&dir).unwrap();
        assert_eq!(state.path(), dir);
        assert_eq!(mode_of(&dir), 0o700);
        StateDir::open(&dir).unwrap();
    }

    #[test]
    fn write_atomic_read_and_bad_names() {
        let tmp = TempDir::new("state-write");
        let state = StateDir::open(&tmp.0).unwrap();
        assert!(state.read("x.json").unwrap().is_none());
        state.write_atomic("x.json", b"one", 0o600).unwrap();
        state.write_atomic("x.json", b"two", 0o600).unwrap();
        assert_eq!(state.read("x.json").unwrap().unwrap(), b"two");
        assert_eq!(mode_of(&tmp.0.join("x.json")), 0o600);
        state.write_atomic("pub.pem", b"p", 0o644).unwrap();
        assert_eq!(mode_of(&tmp.0.join("pub.pem")), 0o644);
        for bad in ["", "../x", "a/b", ".hidden", ".."] {
            assert!(state.write_atomic(bad, b"", 0o600).is_err(), "{bad:?}");
            assert!(state.read(bad).is_err(), "{bad:?}");
        }
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(&tmp.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }

    #[test]
    fn default_path_ends_in_postern_edge() {
        if std::env::var_os("HOME").is_some_and(|h| Path::new(&h).is_absolute()) {
            assert!(StateDir::default_path().unwrap().ends_with(".postern/edge"));
        }
    }

    #[test]
    fn a_rotated_secret_counts_until_its_overlap_ends_and_expiry_is_separate() {
        let t = ServiceTokenRecord::new("ci", "a.access", "old", 100, Some(1000));
        assert!(t.matches("old", 100) && !t.matches("new", 100));
        let r = t.rotated("new", 200, 50);
        assert_eq!((r.client_id.as_str(), r.created), ("a.access", 100));
        assert!(r.matches("new", 200) && r.matches("old", 249));
        assert!(!r.matches("old", 250), "the overlap ends at 200 + 50");
        assert!(r.matches("new", 10_000));
        // A second rotation drops the first secret at once.
        let r2 = r.rotated("newer", 210, 50);
        assert!(!r2.matches("old", 210) && r2.matches("new", 210) && r2.matches("newer", 210));
        // No overlap: the old secret is gone at once.
        assert!(!t.rotated("new", 200, 0).matches("old", 200));
        assert!(!t.expired(999) && t.expired(1000));
        // The JSON of a token without these fields is as before (old files read the same).
        let plain = ServiceTokenRecord::new("ci", "a.access", "s", 1, None);
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("previous").is_none() && json.get("expires").is_none());
    }

    #[test]
    fn zone_session_revocation_keys_round_trip_and_garbage_is_none() {
        for email in ["alice@site.com", "a/b@x", "é@x\u{1b}[2J"] {
            let key = zone_sessions_key("site.com", email, 42);
            assert!(
                !key[9..].contains(email),
                "the email is hex in the key: {key}"
            );
            assert_eq!(
                parse_zone_sessions_key(&key),
                Some(("site.com".into(), email.into(), 42))
            );
        }
        for bad in [
            "",
            "site.com",
            "site.com/61",
            "site.com/6/1",
            "site.com/zz/1",
            "site.com/61/x",
            "site.com/61/1/2",
            "../x/61/1",
            "site.com/ff/1",
        ] {
            assert_eq!(parse_zone_sessions_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ct_eq_compares_whole_slices() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"", b"a"));
        // Any one bit anywhere makes a difference.
        let secret = [0x5au8; 32];
        for i in 0..secret.len() {
            for bit in 0..8 {
                let mut other = secret;
                other[i] ^= 1 << bit;
                assert!(!ct_eq(&secret, &other), "byte {i} bit {bit}");
            }
        }
        assert_eq!(hex(&[0x00, 0x9f, 0xff]), "009fff");
    }
}
