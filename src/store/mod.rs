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
//!   hostname; another certificate cannot take it over ([`Hostnames::claim`]), and one
//!   certificate claims at most [`MAX_HOSTNAMES_PER_CERTIFICATE`].
//! - The edge writes `hostnames.json` behind its event loop ([`Hostnames::write_behind`]): a
//!   [`FileWriter`] thread writes the newest whole file, and the loop learns through a callback
//!   (its `mio::Waker`) which change is on disk. A change is in memory at once, so nobody else
//!   can claim the hostname meanwhile; the edge confirms a registration only once it is on disk.
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
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::limits::MAX_HOSTNAMES_PER_CERTIFICATE;

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
        self.write_atomic(name, &json_file(value)?, SECRET_MODE)
    }
}

/// The bytes of a JSON state file.
fn json_file<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    data.push(b'\n');
    Ok(data)
}

/// Writes one state file on a thread of its own, so that an event loop never waits for an
/// fsync. Each [`FileWriter::submit`] hands over the whole file and gets a number; the thread
/// writes the newest file it has (one submitted while another is written replaces any still
/// waiting: writes coalesce), atomically, as [`StateDir::write_atomic`] does. At most two
/// copies are held: the one being written and the next. Since every file is whole, number `n`
/// is on disk once any file numbered `n` or later is.
///
/// Dropping the writer writes what is still waiting, then ends the thread.
pub struct FileWriter {
    shared: Arc<WriterShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct WriterShared {
    state: Mutex<WriterState>,
    changed: Condvar,
}

#[derive(Default)]
struct WriterState {
    /// The newest file not yet being written, and its number.
    next: Option<(u64, Vec<u8>)>,
    /// Number of the latest submission.
    submitted: u64,
    /// Number of the newest file on disk.
    durable: u64,
    /// The newest failed write: its number and why.
    failed: Option<(u64, String)>,
    stop: bool,
}

impl WriterState {
    fn outcome(&self, n: u64) -> Option<Result<(), String>> {
        if self.durable >= n {
            return Some(Ok(()));
        }
        match &self.failed {
            Some((failed, why)) if *failed >= n => Some(Err(why.clone())),
            _ => None,
        }
    }
}

impl FileWriter {
    /// Starts the thread that writes `path` (mode 0600); `written` runs on that thread after
    /// each write, successful or not (the edge wakes its loop with it).
    pub fn start(path: PathBuf, written: impl Fn() + Send + 'static) -> io::Result<FileWriter> {
        let shared = Arc::new(WriterShared {
            state: Mutex::new(WriterState::default()),
            changed: Condvar::new(),
        });
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("postern-state-writer".into())
            .spawn(move || loop {
                let (n, data) = {
                    let mut st = lock(&theirs.state);
                    while st.next.is_none() && !st.stop {
                        st = theirs
                            .changed
                            .wait(st)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                    }
                    match st.next.take() {
                        Some(next) => next,
                        None => return,
                    }
                };
                let result = write_file_atomic(&path, &data, SECRET_MODE);
                {
                    let mut st = lock(&theirs.state);
                    match result {
                        Ok(()) => st.durable = st.durable.max(n),
                        Err(e) => st.failed = Some((n, e.to_string())),
                    }
                }
                theirs.changed.notify_all();
                written();
            })?;
        Ok(FileWriter {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands over the whole new file; its number, for [`FileWriter::outcome`].
    pub fn submit(&self, data: Vec<u8>) -> u64 {
        let n = {
            let mut st = lock(&self.shared.state);
            st.submitted += 1;
            let n = st.submitted;
            st.next = Some((n, data));
            n
        };
        self.shared.changed.notify_all();
        n
    }

    /// Whether submission `n` is on disk (`Ok`), failed (`Err` with why), or not written yet.
    pub fn outcome(&self, n: u64) -> Option<Result<(), String>> {
        lock(&self.shared.state).outcome(n)
    }

    /// The latest submission, unless it is on disk already.
    pub fn pending(&self) -> Option<u64> {
        let st = lock(&self.shared.state);
        (st.submitted > st.durable).then_some(st.submitted)
    }

    /// Blocks until submission `n` is on disk or failed.
    pub fn wait(&self, n: u64) -> io::Result<()> {
        let mut st = lock(&self.shared.state);
        loop {
            if let Some(outcome) = st.outcome(n) {
                return outcome.map_err(io::Error::other);
            }
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer's state stays consistent under any panic (plain assignments), so a poisoned
/// lock is still usable.
fn lock(m: &Mutex<WriterState>) -> MutexGuard<'_, WriterState> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// Equality in constant time for equal lengths (`subtle`; lengths are not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
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
    state: StateDir,
    /// Set by [`Hostnames::write_behind`]; until then every change is written before it
    /// returns.
    writer: Option<FileWriter>,
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
    /// The certificate owns [`MAX_HOSTNAMES_PER_CERTIFICATE`] hostnames already.
    TooMany,
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
            ClaimError::TooMany => write!(
                f,
                "the origin certificate already owns {MAX_HOSTNAMES_PER_CERTIFICATE} hostnames, \
                 the most one certificate may claim; serve more with a named tunnel \
                 (`postern tunnel create`, `postern tunnel route dns`)"
            ),
            ClaimError::Io(e) => write!(f, "cannot save hostname ownership: {e}"),
        }
    }
}

impl std::error::Error for ClaimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClaimError::Io(e) => Some(e),
            ClaimError::OwnedByOther { .. } | ClaimError::TooMany => None,
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
        Ok(Hostnames {
            hostnames,
            state: state.clone(),
            writer: None,
        })
    }

    /// From now on, writes `hostnames.json` on a [`FileWriter`] thread that calls `written`
    /// after each write. [`Hostnames::claim`] then returns before its change is on disk (see
    /// [`Hostnames::pending_write`]); the other changes still wait for theirs.
    pub fn write_behind(&mut self, written: impl Fn() + Send + 'static) -> io::Result<()> {
        let path = self.state.path().join(HOSTNAMES_FILE);
        self.writer = Some(FileWriter::start(path, written)?);
        Ok(())
    }

    /// With [`Hostnames::write_behind`]: the number of the newest change not yet on disk.
    /// Every change so far is on disk once [`Hostnames::write_outcome`] of it is `Ok`.
    pub fn pending_write(&self) -> Option<u64> {
        self.writer.as_ref()?.pending()
    }

    /// Whether change `n` (from [`Hostnames::pending_write`]) is on disk, failed, or waits.
    pub fn write_outcome(&self, n: u64) -> Option<Result<(), String>> {
        match &self.writer {
            Some(w) => w.outcome(n),
            None => Some(Ok(())),
        }
    }

    /// Records that the certificate with fingerprint `cert_sha256` (of `zone`) owns `hostname`,
    /// unless another certificate owns it already or it owns [`MAX_HOSTNAMES_PER_CERTIFICATE`].
    /// Persists before returning [`Claim::New`], or with [`Hostnames::write_behind`] hands the
    /// file to the writer and returns (see [`Hostnames::pending_write`]).
    pub fn claim(
        &mut self,
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
        let owned = self
            .hostnames
            .values()
            .filter(|r| r.tunnel.is_none() && r.cert_sha256 == fingerprint)
            .count();
        if owned >= MAX_HOSTNAMES_PER_CERTIFICATE {
            return Err(ClaimError::TooMany);
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
        if let Err(e) = self.save_behind() {
            self.hostnames.remove(&host);
            return Err(ClaimError::Io(e));
        }
        Ok(Claim::New)
    }

    /// Undoes a [`Claim::New`] of `hostname` by `cert_sha256` whose write failed (the
    /// registration it was for was refused). Anything else is left alone.
    pub fn release(&mut self, hostname: &str, cert_sha256: &str) {
        let fingerprint = cert_sha256.to_ascii_lowercase();
        let host = hostname.to_ascii_lowercase();
        let theirs = self
            .hostnames
            .get(&host)
            .is_some_and(|r| r.tunnel.is_none() && r.cert_sha256 == fingerprint);
        if theirs {
            self.hostnames.remove(&host);
            if let Err(e) = self.save_behind() {
                log::warn!("{e}");
            }
        }
    }

    fn file(&self) -> io::Result<Vec<u8>> {
        json_file(&HostnameFile {
            hostnames: self.hostnames.clone(),
        })
    }

    /// Writes the file, and returns once it is on disk (through the writer, if there is one,
    /// so that writes keep their order).
    fn save(&self) -> io::Result<()> {
        match &self.writer {
            Some(w) => w.wait(w.submit(self.file()?)),
            None => self
                .state
                .write_atomic(HOSTNAMES_FILE, &self.file()?, SECRET_MODE),
        }
    }

    /// Hands the file to the writer if there is one; else writes it as [`Hostnames::save`].
    fn save_behind(&self) -> io::Result<()> {
        match &self.writer {
            Some(w) => {
                w.submit(self.file()?);
                Ok(())
            }
            None => self.save(),
        }
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

    /// Whether the certificate with fingerprint `cert_sha256` owns `hostname` (not a route).
    pub fn owned_by(&self, hostname: &str, cert_sha256: &str) -> bool {
        self.hostnames
            .get(hostname)
            .is_some_and(|r| r.tunnel.is_none() && r.cert_sha256.eq_ignore_ascii_case(cert_sha256))
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
    pub fn route(&mut self, hostname: &str, id: &str, zone: &str) -> io::Result<()> {
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
        if let Err(e) = self.save() {
            match old {
                Some(o) => self.hostnames.insert(host, o),
                None => self.hostnames.remove(&host),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Forgets every hostname routed to the named tunnel `id` (it is being deleted).
    pub fn unroute_tunnel(&mut self, id: &str) -> io::Result<Vec<String>> {
        self.unroute_unknown(|t| t != id)
    }

    /// Forgets every hostname recorded for another zone than `zone_of` gives it now (a zone
    /// configured since, e.g. `team.site.com` beside `site.com`, takes its names back from
    /// the parent zone's certificates and tunnels); returns them. Hostnames in no configured
    /// zone are kept.
    pub fn release_other_zones<'z>(
        &mut self,
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
        if let Err(e) = self.save() {
            self.hostnames = before;
            return Err(e);
        }
        Ok(gone)
    }

    /// Forgets every hostname routed to a tunnel for which `keep` is false; returns them.
    pub fn unroute_unknown(&mut self, keep: impl Fn(&str) -> bool) -> io::Result<Vec<String>> {
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
        if let Err(e) = self.save() {
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
                .claim("SSH.example.com", &owner, "example.com")
                .unwrap(),
            Claim::New
        );
        assert_eq!(mode_of(&tmp.0.join("hostnames.json")), 0o600);
        assert_eq!(
            hosts
                .claim("ssh.example.com", &owner.to_uppercase(), "example.com")
                .unwrap(),
            Claim::AlreadyOwned
        );
        match hosts.claim("ssh.EXAMPLE.com", &other, "evil.test") {
            Err(ClaimError::OwnedByOther { zone_of_owner }) => {
                assert_eq!(zone_of_owner, "example.com")
            }
            other => panic!("unexpected {other:?}"),
        }

        let mut reloaded = Hostnames::load(&state).unwrap();
        assert_eq!(
            reloaded
                .claim("ssh.example.com", &owner, "example.com")
                .unwrap(),
            Claim::AlreadyOwned
        );
        assert!(matches!(
            reloaded.claim("ssh.example.com", &other, "evil.test"),
            Err(ClaimError::OwnedByOther { .. })
        ));
        assert_eq!(
            reloaded
                .claim("git.example.com", &other, "example.com")
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
        hosts.claim("a.site.com", &fp, "site.com").unwrap();
        hosts.claim("b.team.site.com", &fp, "site.com").unwrap();
        hosts.route("c.team.site.com", id, "site.com").unwrap();
        hosts.route("d.team.site.com", id, "team.site.com").unwrap();
        hosts.claim("e.gone.com", &fp, "gone.com").unwrap();
        let zones = ["site.com".to_owned(), "team.site.com".to_owned()];
        let gone = hosts
            .release_other_zones(|h| crate::edge::config::zone_of(&zones, h))
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
    fn one_certificate_claims_at_most_the_cap_and_keeps_what_it_owns() {
        let tmp = TempDir::new("state-hosts-cap");
        let state = StateDir::open(&tmp.0).unwrap();
        let owner = "ab".repeat(32);
        let mut hosts = Hostnames::load(&state).unwrap();
        for i in 0..MAX_HOSTNAMES_PER_CERTIFICATE {
            let host = format!("h{i}.example.com");
            assert_eq!(
                hosts.claim(&host, &owner, "example.com").unwrap(),
                Claim::New
            );
        }
        assert!(matches!(
            hosts.claim("one-more.example.com", &owner, "example.com"),
            Err(ClaimError::TooMany)
        ));
        let refused = ClaimError::TooMany.to_string();
        assert!(refused.contains(&MAX_HOSTNAMES_PER_CERTIFICATE.to_string()));
        assert!(refused.contains("named tunnel"), "{refused}");
        // What it owns stays its own, and another certificate is not limited by it.
        assert_eq!(
            hosts
                .claim("h0.example.com", &owner, "example.com")
                .unwrap(),
            Claim::AlreadyOwned
        );
        assert_eq!(
            hosts
                .claim("one-more.example.com", &"cd".repeat(32), "example.com")
                .unwrap(),
            Claim::New
        );
        // Routes to named tunnels do not count against a certificate.
        let mut reloaded = Hostnames::load(&state).unwrap();
        reloaded
            .route("h1.example.com", "t1", "example.com")
            .unwrap();
        assert_eq!(
            reloaded
                .claim("again.example.com", &owner, "example.com")
                .unwrap(),
            Claim::New
        );
    }

    /// A `write_behind` hostname table whose writer reports each write on the channel.
    fn behind(state: &StateDir) -> (Hostnames, std::sync::mpsc::Receiver<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut hosts = Hostnames::load(state).unwrap();
        hosts
            .write_behind(move || {
                let _ = tx.send(());
            })
            .unwrap();
        (hosts, rx)
    }

    /// Waits (with a deadline) until change `n` has an outcome.
    fn outcome(
        hosts: &Hostnames,
        rx: &std::sync::mpsc::Receiver<()>,
        n: u64,
    ) -> Result<(), String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(done) = hosts.write_outcome(n) {
                return done;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            rx.recv_timeout(left)
                .expect("the writer reports each write within 10 s");
        }
    }

    #[test]
    fn written_behind_claims_hold_at_once_and_reach_the_disk() {
        let tmp = TempDir::new("state-hosts-behind");
        let state = StateDir::open(&tmp.0).unwrap();
        let (owner, other) = ("ab".repeat(32), "cd".repeat(32));
        let (mut hosts, rx) = behind(&state);
        assert_eq!(hosts.pending_write(), None);
        assert_eq!(
            hosts
                .claim("ssh.example.com", &owner, "example.com")
                .unwrap(),
            Claim::New
        );
        // Taken in memory before the write: nobody else gets it meanwhile.
        assert!(matches!(
            hosts.claim("ssh.example.com", &other, "example.com"),
            Err(ClaimError::OwnedByOther { .. })
        ));
        let n = hosts.pending_write().unwrap_or(1);
        assert_eq!(outcome(&hosts, &rx, n), Ok(()));
        assert_eq!(hosts.pending_write(), None);
        assert_eq!(mode_of(&tmp.0.join("hostnames.json")), 0o600);
        let on_disk = Hostnames::load(&state).unwrap();
        assert!(matches!(
            on_disk.owner("ssh.example.com"),
            Some(Owner::Certificate { .. })
        ));
        // A route (written through the same writer, and waited for) keeps the order: the file
        // holds both changes, whatever the writer coalesced.
        for i in 0..20 {
            hosts
                .claim(&format!("h{i}.example.com"), &owner, "example.com")
                .unwrap();
        }
        hosts.route("git.example.com", "t1", "example.com").unwrap();
        assert_eq!(hosts.pending_write(), None, "route returns once on disk");
        let on_disk = Hostnames::load(&state).unwrap();
        assert_eq!(on_disk.routes_of("t1"), ["git.example.com"]);
        assert!(on_disk.owner("h19.example.com").is_some());
        // Dropping the table writes what is still waiting.
        hosts
            .claim("last.example.com", &owner, "example.com")
            .unwrap();
        drop(hosts);
        assert!(Hostnames::load(&state)
            .unwrap()
            .owner("last.example.com")
            .is_some());
    }

    #[test]
    fn failed_write_behind_is_reported_and_the_claim_can_be_released() {
        let tmp = TempDir::new("state-hosts-fail");
        let state = StateDir::open(&tmp.0).unwrap();
        let owner = "ab".repeat(32);
        let (mut hosts, rx) = behind(&state);
        // A non-empty directory where the file goes: the rename fails, even for root.
        fs::create_dir_all(tmp.0.join("hostnames.json").join("x")).unwrap();
        hosts
            .claim("ssh.example.com", &owner, "example.com")
            .unwrap();
        let n = hosts
            .pending_write()
            .expect("the claim waits for its write");
        let failed = outcome(&hosts, &rx, n).unwrap_err();
        assert!(failed.contains("hostnames.json"), "{failed}");
        hosts.release("ssh.example.com", &owner);
        assert!(hosts.owner("ssh.example.com").is_none());
        assert_eq!(
            hosts
                .claim("ssh.example.com", &"cd".repeat(32), "example.com")
                .unwrap(),
            Claim::New,
            "a released hostname is free again"
        );
        // Releasing what another certificate owns does nothing.
        hosts.release("ssh.example.com", &owner);
        assert!(hosts.owner("ssh.example.com").is_some());
        // A change that waits for its write reports the failure.
        assert!(hosts.route("git.example.com", "t1", "example.com").is_err());
        assert!(hosts.tunnel_of("git.example.com").is_none());
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
            .claim("old.example.com", &"cd".repeat(32), "example.com")
            .unwrap();
        hosts.route("SSH.example.com", id, "example.com").unwrap();
        hosts.route("old.example.com", id, "example.com").unwrap();
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
            .claim("old.example.com", &"cd".repeat(32), "example.com")
            .is_err());
        assert_eq!(
            hosts.routes_of(id),
            vec!["old.example.com".to_owned(), "ssh.example.com".to_owned()]
        );
        // A route to a tunnel that is gone is released at load (a delete cut short).
        hosts
            .route("dead.example.com", "gone", "example.com")
            .unwrap();
        assert_eq!(hosts.routed_in_zone("example.com"), 3);
        assert_eq!(
            hosts.unroute_unknown(|t| t == id).unwrap(),
            vec!["dead.example.com".to_owned()]
        );
        assert_eq!(hosts.unroute_tunnel(id).unwrap().len(), 2);
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
