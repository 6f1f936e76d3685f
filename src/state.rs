//! The edge's state directory (DESIGN.md §4): service-token hashes and hostname ownership.
//!
//! Contract:
//! - One directory (default `~/.postern/edge`), created `0700`. Files in it have fixed names
//!   chosen by the code, never by input; [`StateDir`] refuses a name containing `/` or starting
//!   with `.` (temp files start with `.`, so they can never be addressed by name).
//! - Every write is atomic: a temp file in the same directory, created with its final mode
//!   (`0600` for anything secret, never chmod-ed after), written, fsync-ed, renamed over the
//!   target, then the directory is fsync-ed. A crash leaves the old file or the new one.
//! - `service-tokens.json` keeps only SHA-256 of each secret; [`ServiceTokens::verify`] compares
//!   digests in constant time. The secret itself is shown once, at creation, as a [`Secret`].
//! - `hostnames.json` records which origin certificate (by fingerprint) first registered each
//!   hostname; another certificate cannot take it over ([`Hostnames::claim`]).
//!
//! Writers in the same process are expected to go through one owner (the edge's state task);
//! two `service-token create` processes racing may lose one record (the later rename wins).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

/// File holding service-token records (hashes only), mode 0600.
const SERVICE_TOKENS_FILE: &str = "service-tokens.json";
/// File holding hostname ownership, mode 0600.
const HOSTNAMES_FILE: &str = "hostnames.json";
/// Mode of files that hold secrets or access-control state.
const SECRET_MODE: u32 = 0o600;
/// Longest service-token name.
const MAX_TOKEN_NAME: usize = 64;
/// Suffix of a service token's client id, as Cloudflare Access prints them.
const CLIENT_ID_SUFFIX: &str = ".access";

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
        write_file_atomic(&self.path.join(name), data, mode)
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
        let mut data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
        data.push(b'\n');
        self.write_atomic(name, &data, SECRET_MODE)
    }
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

/// Replaces `path` atomically: temp file beside it created with `mode`, fsync, rename, fsync dir.
pub(crate) fn write_file_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| annotate(e, &format!("cannot write {}", path.display())))
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

/// Equality that looks at every byte whatever the content (lengths are not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

/// A secret shown to the operator once (a service-token secret). Never printed by accident:
/// no `Debug`, no `Display`; call [`Secret::expose`] where it must leave the process.
pub struct Secret(String);

impl Secret {
    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

#[derive(Serialize, Deserialize, Clone)]
struct TokenRecord {
    name: String,
    client_id: String,
    /// Lowercase hex SHA-256 of the secret.
    secret_sha256: String,
    /// Unix seconds.
    created: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

/// The service tokens of this edge (`service-tokens.json`): names, client ids, secret hashes.
pub struct ServiceTokens {
    tokens: Vec<TokenRecord>,
}

impl ServiceTokens {
    /// Loads the token records; a missing file means no tokens.
    pub fn load(state: &StateDir) -> io::Result<ServiceTokens> {
        let mut file: TokenFile = state.load_json(SERVICE_TOKENS_FILE)?;
        for t in &mut file.tokens {
            t.secret_sha256.make_ascii_lowercase();
        }
        Ok(ServiceTokens {
            tokens: file.tokens,
        })
    }

    /// Creates and stores a token called `name`; returns its client id and its secret, which is
    /// not stored anywhere and cannot be shown again.
    pub fn create(state: &StateDir, name: &str) -> io::Result<(String, Secret)> {
        if name.is_empty()
            || name.len() > MAX_TOKEN_NAME
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "invalid service token name {name:?}: use 1 to {MAX_TOKEN_NAME} characters \
                     among A-Z a-z 0-9 . _ -"
                ),
            ));
        }
        let mut tokens = ServiceTokens::load(state)?;
        if tokens.tokens.iter().any(|t| t.name == name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("a service token named {name:?} already exists; choose another name"),
            ));
        }
        let client_id = format!("{}{CLIENT_ID_SUFFIX}", random_hex(16)?);
        let secret = random_hex(32)?;
        tokens.tokens.push(TokenRecord {
            name: name.to_owned(),
            client_id: client_id.clone(),
            secret_sha256: sha256_hex(secret.as_bytes()),
            created: unix_now(),
        });
        state.store_json(
            SERVICE_TOKENS_FILE,
            &TokenFile {
                tokens: tokens.tokens,
            },
        )?;
        Ok((client_id, Secret(secret)))
    }

    /// The name of the token whose client id is `client_id` and whose secret is `secret`.
    pub fn verify(&self, client_id: &str, secret: &str) -> Option<&str> {
        let presented = sha256_hex(secret.as_bytes());
        let mut found = None;
        // Every record is looked at, so timing does not tell how far the search got.
        for t in &self.tokens {
            let id_ok = t.client_id == client_id;
            let secret_ok = ct_eq(presented.as_bytes(), t.secret_sha256.as_bytes());
            if id_ok & secret_ok && found.is_none() {
                found = Some(t.name.as_str());
            }
        }
        found
    }

    /// Token names, in creation order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tokens.iter().map(|t| t.name.as_str())
    }
}

#[derive(Serialize, Deserialize, Clone)]
struct HostnameRecord {
    /// Lowercase hex SHA-256 of the owning origin certificate (ad-hoc `tunnel --hostname`);
    /// empty when a named tunnel owns the hostname.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    cert_sha256: String,
    /// The named tunnel the hostname is routed to (`tunnel route dns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tunnel: Option<String>,
    zone: String,
    /// Unix seconds.
    first_registered: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct HostnameFile {
    hostnames: BTreeMap<String, HostnameRecord>,
}

/// Which origin certificate owns which hostname (`hostnames.json`).
pub struct Hostnames {
    hostnames: BTreeMap<String, HostnameRecord>,
}

/// A successful [`Hostnames::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The hostname was free; it now belongs to the certificate (persisted).
    New,
    /// The certificate already owned the hostname.
    AlreadyOwned,
}

/// Why [`Hostnames::claim`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClaimError {
    /// Another origin certificate registered this hostname first.
    OwnedByOther {
        /// Zone of the certificate that owns it.
        zone_of_owner: String,
    },
    /// The new ownership could not be saved; nothing changed.
    Io(io::Error),
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimError::OwnedByOther { zone_of_owner } => write!(
                f,
                "hostname is already registered by another origin certificate (zone \
                 {zone_of_owner}); use that certificate, or have the edge operator release the \
                 hostname"
            ),
            ClaimError::Io(e) => write!(f, "cannot save hostname ownership: {e}"),
        }
    }
}

impl std::error::Error for ClaimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClaimError::Io(e) => Some(e),
            ClaimError::OwnedByOther { .. } => None,
        }
    }
}

impl Hostnames {
    /// Loads hostname ownership; a missing file means nothing is owned.
    pub fn load(state: &StateDir) -> io::Result<Hostnames> {
        let file: HostnameFile = state.load_json(HOSTNAMES_FILE)?;
        let hostnames = file
            .hostnames
            .into_iter()
            .map(|(mut host, mut rec)| {
                host.make_ascii_lowercase();
                rec.cert_sha256.make_ascii_lowercase();
                (host, rec)
            })
            .collect();
        Ok(Hostnames { hostnames })
    }

    /// Records that the certificate with fingerprint `cert_sha256` (of `zone`) owns `hostname`,
    /// unless another certificate owns it already. Persists before returning [`Claim::New`].
    pub fn claim(
        &mut self,
        state: &StateDir,
        hostname: &str,
        cert_sha256: &str,
        zone: &str,
    ) -> Result<Claim, ClaimError> {
        let host = hostname.to_ascii_lowercase();
        let fingerprint = cert_sha256.to_ascii_lowercase();
        if let Some(owner) = self.hostnames.get(&host) {
            return if owner.tunnel.is_none() && owner.cert_sha256 == fingerprint {
                Ok(Claim::AlreadyOwned)
            } else {
                Err(ClaimError::OwnedByOther {
                    zone_of_owner: owner.zone.clone(),
                })
            };
        }
        self.hostnames.insert(
            host.clone(),
            HostnameRecord {
                cert_sha256: fingerprint,
                tunnel: None,
                zone: zone.to_owned(),
                first_registered: unix_now(),
            },
        );
        if let Err(e) = self.save(state) {
            self.hostnames.remove(&host);
            return Err(ClaimError::Io(e));
        }
        Ok(Claim::New)
    }

    fn save(&self, state: &StateDir) -> io::Result<()> {
        let file = HostnameFile {
            hostnames: self.hostnames.clone(),
        };
        state.store_json(HOSTNAMES_FILE, &file)
    }

    /// Who owns `hostname` now.
    pub fn owner(&self, hostname: &str) -> Option<Owner<'_>> {
        let rec = self.hostnames.get(hostname)?;
        Some(match &rec.tunnel {
            Some(id) => Owner::Tunnel {
                id,
                zone: &rec.zone,
            },
            None => Owner::Certificate { zone: &rec.zone },
        })
    }

    /// The named tunnel `hostname` is routed to, if any.
    pub fn tunnel_of(&self, hostname: &str) -> Option<&str> {
        self.hostnames.get(hostname)?.tunnel.as_deref()
    }

    /// How many hostnames of `zone` are routed to named tunnels.
    pub fn routed_in_zone(&self, zone: &str) -> usize {
        self.hostnames
            .values()
            .filter(|r| r.tunnel.is_some() && r.zone == zone)
            .count()
    }

    /// Every hostname routed to the named tunnel `id`, sorted.
    pub fn routes_of(&self, id: &str) -> Vec<String> {
        self.hostnames
            .iter()
            .filter(|(_, r)| r.tunnel.as_deref() == Some(id))
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Routes `hostname` to the named tunnel `id` of `zone`, replacing any owner (the caller
    /// decides whether that is allowed). Persists before returning; on error nothing changed.
    pub fn route(
        &mut self,
        state: &StateDir,
        hostname: &str,
        id: &str,
        zone: &str,
    ) -> io::Result<()> {
        let host = hostname.to_ascii_lowercase();
        let old = self.hostnames.insert(
            host.clone(),
            HostnameRecord {
                cert_sha256: String::new(),
                tunnel: Some(id.to_owned()),
                zone: zone.to_owned(),
                first_registered: unix_now(),
            },
        );
        if let Err(e) = self.save(state) {
            match old {
                Some(o) => self.hostnames.insert(host, o),
                None => self.hostnames.remove(&host),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Forgets every hostname routed to the named tunnel `id` (it is being deleted).
    pub fn unroute_tunnel(&mut self, state: &StateDir, id: &str) -> io::Result<Vec<String>> {
        self.unroute_unknown(state, |t| t != id)
    }

    /// Forgets every hostname recorded for another zone than `zone_of` gives it now (a zone
    /// configured since, e.g. `team.site.com` beside `site.com`, takes its names back from
    /// the parent zone's certificates and tunnels); returns them. Hostnames in no configured
    /// zone are kept.
    pub fn release_other_zones<'z>(
        &mut self,
        state: &StateDir,
        zone_of: impl Fn(&str) -> Option<&'z str>,
    ) -> io::Result<Vec<String>> {
        let misfiled = |host: &str, r: &HostnameRecord| zone_of(host).is_some_and(|z| z != r.zone);
        let gone: Vec<String> = self
            .hostnames
            .iter()
            .filter(|(h, r)| misfiled(h, r))
            .map(|(h, _)| h.clone())
            .collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        let before = self.hostnames.clone();
        self.hostnames.retain(|h, r| !misfiled(h, r));
        if let Err(e) = self.save(state) {
            self.hostnames = before;
            return Err(e);
        }
        Ok(gone)
    }

    /// Forgets every hostname routed to a tunnel for which `keep` is false; returns them.
    pub fn unroute_unknown(
        &mut self,
        state: &StateDir,
        keep: impl Fn(&str) -> bool,
    ) -> io::Result<Vec<String>> {
        let gone: Vec<String> = self
            .hostnames
            .iter()
            .filter(|(_, r)| r.tunnel.as_deref().is_some_and(|t| !keep(t)))
            .map(|(h, _)| h.clone())
            .collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        let before = self.hostnames.clone();
        self.hostnames
            .retain(|_, r| r.tunnel.as_deref().is_none_or(&keep));
        if let Err(e) = self.save(state) {
            self.hostnames = before;
            return Err(e);
        }
        Ok(gone)
    }
}

/// Who owns a hostname (see [`Hostnames::owner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// The origin certificate that registered it first, of `zone`.
    Certificate { zone: &'a str },
    /// The named tunnel it is routed to.
    Tunnel { id: &'a str, zone: &'a str },
}

/// File holding the named tunnels, mode 0600.
const TUNNELS_FILE: &str = "tunnels.json";
/// Longest tunnel name.
pub const MAX_TUNNEL_NAME: usize = 64;

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

#[derive(Serialize, Deserialize, Default)]
struct TunnelFile {
    tunnels: BTreeMap<String, TunnelRecord>,
}

/// The named tunnels, by id (`tunnels.json`).
pub struct Tunnels {
    tunnels: BTreeMap<String, TunnelRecord>,
}

impl Tunnels {
    /// Loads the named tunnels; a missing file means none.
    pub fn load(state: &StateDir) -> io::Result<Tunnels> {
        let file: TunnelFile = state.load_json(TUNNELS_FILE)?;
        Ok(Tunnels {
            tunnels: file.tunnels,
        })
    }

    fn save(&self, state: &StateDir) -> io::Result<()> {
        state.store_json(
            TUNNELS_FILE,
            &TunnelFile {
                tunnels: self.tunnels.clone(),
            },
        )
    }

    pub fn get(&self, id: &str) -> Option<&TunnelRecord> {
        self.tunnels.get(id)
    }

    /// The tunnel of `zone` called `name_or_id` (a name, or an id).
    pub fn find(&self, zone: &str, name_or_id: &str) -> Option<(&str, &TunnelRecord)> {
        self.tunnels
            .iter()
            .filter(|(_, r)| r.zone == zone)
            .find(|(id, r)| *id == name_or_id || r.name == name_or_id)
            .map(|(id, r)| (id.as_str(), r))
    }

    /// Every tunnel of `zone`, by id.
    pub fn of_zone<'a>(
        &'a self,
        zone: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a TunnelRecord)> + 'a {
        self.tunnels
            .iter()
            .filter(move |(_, r)| r.zone == zone)
            .map(|(id, r)| (id.as_str(), r))
    }

    /// Records a new tunnel; persists before returning; on error nothing changed.
    pub fn insert(&mut self, state: &StateDir, id: &str, rec: TunnelRecord) -> io::Result<()> {
        self.tunnels.insert(id.to_owned(), rec);
        if let Err(e) = self.save(state) {
            self.tunnels.remove(id);
            return Err(e);
        }
        Ok(())
    }

    /// Forgets a tunnel: its certificate is refused from now on.
    pub fn remove(&mut self, state: &StateDir, id: &str) -> io::Result<()> {
        let Some(rec) = self.tunnels.remove(id) else {
            return Ok(());
        };
        if let Err(e) = self.save(state) {
            self.tunnels.insert(id.to_owned(), rec);
            return Err(e);
        }
        Ok(())
    }
}

/// Whether `name` may name a tunnel: 1–64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
pub fn valid_tunnel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TUNNEL_NAME
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
    fn service_token_create_and_verify() {
        let tmp = TempDir::new("state-tokens");
        let state = StateDir::open(&tmp.0).unwrap();
        let (id, secret) = ServiceTokens::create(&state, "ci-bot").unwrap();
        let (id2, _secret2) = ServiceTokens::create(&state, "backup.job_2").unwrap();
        assert_ne!(id, id2);

        let hex_part = id.strip_suffix(".access").unwrap();
        assert_eq!(hex_part.len(), 32);
        assert!(hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(secret.expose().len(), 64);

        let path = tmp.0.join("service-tokens.json");
        assert_eq!(mode_of(&path), 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(secret.expose()), "secret stored in clear");

        let tokens = ServiceTokens::load(&state).unwrap();
        assert_eq!(tokens.verify(&id, secret.expose()), Some("ci-bot"));
        assert_eq!(tokens.verify(&id, "0".repeat(64).as_str()), None);
        assert_eq!(tokens.verify(&id, ""), None);
        assert_eq!(tokens.verify(&id2, secret.expose()), None);
        assert_eq!(tokens.verify("nope.access", secret.expose()), None);
        assert_eq!(
            tokens.names().collect::<Vec<_>>(),
            ["ci-bot", "backup.job_2"]
        );
    }

    #[test]
    fn service_token_names_validated_and_unique() {
        let tmp = TempDir::new("state-token-names");
        let state = StateDir::open(&tmp.0).unwrap();
        ServiceTokens::create(&state, "dup").unwrap();
        let err = ServiceTokens::create(&state, "dup").err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains("already exists"), "{err}");
        for bad in ["", "a b", "x/y", "é", &"n".repeat(65)] {
            assert!(ServiceTokens::create(&state, bad).is_err(), "{bad:?}");
        }
        ServiceTokens::create(&state, &"n".repeat(64)).unwrap();
        assert_eq!(ServiceTokens::load(&state).unwrap().names().count(), 2);
    }

    #[test]
    fn missing_files_are_empty() {
        let tmp = TempDir::new("state-empty");
        let state = StateDir::open(&tmp.0).unwrap();
        assert_eq!(ServiceTokens::load(&state).unwrap().names().count(), 0);
        assert!(Hostnames::load(&state).unwrap().hostnames.is_empty());
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let tmp = TempDir::new("state-corrupt");
        let state = StateDir::open(&tmp.0).unwrap();
        state.write_atomic("hostnames.json", b"{", 0o600).unwrap();
        let err = Hostnames::load(&state).err().unwrap();
        assert!(err.to_string().contains("hostnames.json"), "{err}");
    }

    #[test]
    fn hostname_claims() {
        let tmp = TempDir::new("state-hosts");
        let state = StateDir::open(&tmp.0).unwrap();
        let owner = "ab".repeat(32);
        let other = "cd".repeat(32);
        let mut hosts = Hostnames::load(&state).unwrap();
        assert_eq!(
            hosts
                .claim(&state, "SSH.example.com", &owner, "example.com")
                .unwrap(),
            Claim::New
        );
        assert_eq!(mode_of(&tmp.0.join("hostnames.json")), 0o600);
        assert_eq!(
            hosts
                .claim(
                    &state,
                    "ssh.example.com",
                    &owner.to_uppercase(),
                    "example.com"
                )
                .unwrap(),
            Claim::AlreadyOwned
        );
        match hosts.claim(&state, "ssh.EXAMPLE.com", &other, "evil.test") {
            Err(ClaimError::OwnedByOther { zone_of_owner }) => {
                assert_eq!(zone_of_owner, "example.com")
            }
            other => panic!("unexpected {other:?}"),
        }

        let mut reloaded = Hostnames::load(&state).unwrap();
        assert_eq!(
            reloaded
                .claim(&state, "ssh.example.com", &owner, "example.com")
                .unwrap(),
            Claim::AlreadyOwned
        );
        assert!(matches!(
            reloaded.claim(&state, "ssh.example.com", &other, "evil.test"),
            Err(ClaimError::OwnedByOther { .. })
        ));
        assert_eq!(
            reloaded
                .claim(&state, "git.example.com", &other, "example.com")
                .unwrap(),
            Claim::New
        );
    }

    #[test]
    fn names_held_by_a_parent_zone_are_released_when_their_zone_is_configured() {
        let tmp = TempDir::new("state-zones");
        let state = StateDir::open(&tmp.0).unwrap();
        let id = "0f0e0d0c-0b0a-4908-8706-050403020100";
        let mut hosts = Hostnames::load(&state).unwrap();
        let fp = "ab".repeat(32);
        hosts.claim(&state, "a.site.com", &fp, "site.com").unwrap();
        hosts
            .claim(&state, "b.team.site.com", &fp, "site.com")
            .unwrap();
        hosts
            .route(&state, "c.team.site.com", id, "site.com")
            .unwrap();
        hosts
            .route(&state, "d.team.site.com", id, "team.site.com")
            .unwrap();
        hosts.claim(&state, "e.gone.com", &fp, "gone.com").unwrap();
        let zones = ["site.com".to_owned(), "team.site.com".to_owned()];
        let gone = hosts
            .release_other_zones(&state, |h| crate::edge::config::zone_of(&zones, h))
            .unwrap();
        assert_eq!(gone, ["b.team.site.com", "c.team.site.com"]);
        let hosts = Hostnames::load(&state).unwrap();
        assert!(hosts.owner("b.team.site.com").is_none());
        assert!(hosts.owner("c.team.site.com").is_none());
        assert!(hosts.owner("a.site.com").is_some());
        assert_eq!(hosts.tunnel_of("d.team.site.com"), Some(id));
        // A name in no configured zone is kept (its zone may come back).
        assert!(hosts.owner("e.gone.com").is_some());
    }

    #[test]
    fn named_tunnels_and_routes_persist() {
        let tmp = TempDir::new("state-tunnels");
        let state = StateDir::open(&tmp.0).unwrap();
        let id = "0f0e0d0c-0b0a-4908-8706-050403020100";
        let mut tunnels = Tunnels::load(&state).unwrap();
        let rec = TunnelRecord {
            name: "web".into(),
            zone: "example.com".into(),
            cert_sha256: "ab".repeat(32),
            created: 1,
        };
        tunnels.insert(&state, id, rec.clone()).unwrap();
        assert_eq!(mode_of(&tmp.0.join("tunnels.json")), 0o600);
        let reloaded = Tunnels::load(&state).unwrap();
        assert_eq!(reloaded.get(id), Some(&rec));
        assert_eq!(reloaded.find("example.com", "web").map(|t| t.0), Some(id));
        assert_eq!(reloaded.find("example.com", id).map(|t| t.0), Some(id));
        assert!(
            reloaded.find("other.com", "web").is_none(),
            "zones are apart"
        );
        assert_eq!(reloaded.of_zone("example.com").count(), 1);

        let mut hosts = Hostnames::load(&state).unwrap();
        hosts
            .claim(&state, "old.example.com", &"cd".repeat(32), "example.com")
            .unwrap();
        hosts
            .route(&state, "SSH.example.com", id, "example.com")
            .unwrap();
        hosts
            .route(&state, "old.example.com", id, "example.com")
            .unwrap();
        let mut hosts = Hostnames::load(&state).unwrap();
        assert_eq!(hosts.tunnel_of("ssh.example.com"), Some(id));
        assert_eq!(
            hosts.owner("old.example.com"),
            Some(Owner::Tunnel {
                id,
                zone: "example.com"
            })
        );
        // The certificate that had it cannot take it back the ad-hoc way.
        assert!(hosts
            .claim(&state, "old.example.com", &"cd".repeat(32), "example.com")
            .is_err());
        assert_eq!(
            hosts.routes_of(id),
            vec!["old.example.com".to_owned(), "ssh.example.com".to_owned()]
        );
        // A route to a tunnel that is gone is released at load (a delete cut short).
        hosts
            .route(&state, "dead.example.com", "gone", "example.com")
            .unwrap();
        assert_eq!(hosts.routed_in_zone("example.com"), 3);
        assert_eq!(
            hosts.unroute_unknown(&state, |t| t == id).unwrap(),
            vec!["dead.example.com".to_owned()]
        );
        assert_eq!(hosts.unroute_tunnel(&state, id).unwrap().len(), 2);
        assert_eq!(
            Hostnames::load(&state).unwrap().owner("ssh.example.com"),
            None
        );

        tunnels.remove(&state, id).unwrap();
        assert!(Tunnels::load(&state).unwrap().get(id).is_none());
        assert!(valid_tunnel_name("web-1.prod_a"));
        for bad in ["", "-x", ".x", "a b", "x/y", &"a".repeat(65)] {
            assert!(!valid_tunnel_name(bad), "{bad}");
        }
    }

    #[test]
    fn ct_eq_compares_whole_slices() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert_eq!(hex(&[0x00, 0x9f, 0xff]), "009fff");
    }
}
