//! The state directory as a [`Store`]: `service-tokens.json`, `hostnames.json`,
//! `tunnels.json` and `revocations.json` (formats as they have always been; the last one is
//! new and optional).
//!
//! The tables live in memory and each change is written as the whole file, atomically
//! ([`StateDir::write_atomic`]), before it is answered. [`Store::execute`] runs a batch of
//! requests and writes each file they changed once (group commit): a burst of claims costs a
//! few writes, not one per claim. When a file's write fails, that table goes back to what it
//! was before the batch and every change to it in the batch is answered with the error; the
//! other files' changes stand (they are on disk). Files are written in a fixed order,
//! `hostnames.json` before `tunnels.json`, so that a crash between them leaves a tunnel
//! without routes, never routes to a tunnel that is gone.
//!
//! `service-tokens.json` is also written by `postern edge service-token create`, from another
//! process: a lookup reads the file again when its inode, size, ctime or mtime changed since it
//! was last read (one `stat` otherwise), so a flood of unknown client ids costs a `stat` each.
//! What a new read finds added, changed or removed is reported by [`Store::changes`], so a
//! token deleted from the file stops working at the edge once the file is read again.
//!
//! Pending logins are kept in memory only (as the edge's login table is today): they do not
//! outlive the process.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

use super::{
    random_hex, sha256_hex, Answer, Change, Claimed, Expect, HostOwner, HostnameRecord,
    PendingLoginRecord, Request, Revocation, Revocations, RevokedCertificate, RevokedToken,
    ServiceTokenRecord, Snapshot, StateDir, Store, StoreError, TunnelRecord, Versioned,
};
use crate::io::unix_now;
use crate::limits::{MAX_HOSTNAMES_PER_CERTIFICATE, MAX_STORED_LOGINS};
use crate::secret::Secret;

/// File holding service-token records (hashes only), mode 0600.
pub(crate) const SERVICE_TOKENS_FILE: &str = "service-tokens.json";
/// File holding hostname ownership, mode 0600.
pub(crate) const HOSTNAMES_FILE: &str = "hostnames.json";
/// File holding the named tunnels, mode 0600.
pub(crate) const TUNNELS_FILE: &str = "tunnels.json";
/// File holding revoked certificates and service tokens, mode 0600.
pub(crate) const REVOCATIONS_FILE: &str = "revocations.json";
/// Longest service-token name.
pub(super) const MAX_TOKEN_NAME: usize = 64;
/// Suffix of a service token's client id, as Cloudflare Access prints them.
pub(super) const CLIENT_ID_SUFFIX: &str = ".access";
/// Longest tunnel name.
pub const MAX_TUNNEL_NAME: usize = 64;

#[derive(Serialize, Deserialize, Default)]
struct TokenFile {
    tokens: Vec<ServiceTokenRecord>,
}

/// The service tokens of this edge (`service-tokens.json`): names, client ids, secret hashes.
pub struct ServiceTokens {
    tokens: Vec<ServiceTokenRecord>,
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
    pub fn create(
        state: &StateDir,
        name: &str,
        expires: Option<u64>,
    ) -> io::Result<(String, Secret)> {
        let (record, secret) = ServiceTokens::create_record(state, name, expires)?;
        Ok((record.client_id, secret))
    }

    fn create_record(
        state: &StateDir,
        name: &str,
        expires: Option<u64>,
    ) -> io::Result<(ServiceTokenRecord, Secret)> {
        if !valid_token_name(name) {
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
        let record = ServiceTokenRecord::new(name, &client_id, &secret, unix_now(), expires);
        tokens.tokens.push(record.clone());
        state.store_json(
            SERVICE_TOKENS_FILE,
            &TokenFile {
                tokens: tokens.tokens,
            },
        )?;
        Ok((record, Secret::from(secret)))
    }

    /// Replaces the secret of the token called `name` with a new one (returned); the old one
    /// stays valid for `overlap_secs`.
    fn rotate_record(
        state: &StateDir,
        name: &str,
        overlap_secs: u64,
    ) -> io::Result<(ServiceTokenRecord, Secret)> {
        let mut tokens = ServiceTokens::load(state)?;
        let Some(t) = tokens.tokens.iter_mut().find(|t| t.name == name) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no service token named {name:?}"),
            ));
        };
        let secret = random_hex(32)?;
        *t = t.rotated(&secret, unix_now(), overlap_secs);
        let record = t.clone();
        state.store_json(
            SERVICE_TOKENS_FILE,
            &TokenFile {
                tokens: tokens.tokens,
            },
        )?;
        Ok((record, Secret::from(secret)))
    }

    /// The name of the token whose client id is `client_id` and whose secret is `secret`.
    pub fn verify(&self, client_id: &str, secret: &str) -> Option<&str> {
        verify(&self.tokens, client_id, secret).map(|t| t.name.as_str())
    }

    /// Token names, in creation order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tokens.iter().map(|t| t.name.as_str())
    }
}

/// Whether `name` may name a service token: 1–64 of `A-Z a-z 0-9 . _ -`.
pub(super) fn valid_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOKEN_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The token among `tokens` whose client id is `client_id` and whose secret is `secret`.
/// Every record is looked at, and every digest compared in constant time, so timing does not
/// tell how far the search got.
pub(crate) fn verify<'a>(
    tokens: impl IntoIterator<Item = &'a ServiceTokenRecord>,
    client_id: &str,
    secret: &str,
) -> Option<&'a ServiceTokenRecord> {
    let presented = sha256_hex(secret.as_bytes());
    let mut found = None;
    for t in tokens {
        let id_ok = t.client_id == client_id;
        let secret_ok = super::ct_eq(presented.as_bytes(), t.secret_sha256.as_bytes());
        if id_ok & secret_ok && found.is_none() {
            found = Some(t);
        }
    }
    found
}

/// One hostname in `hostnames.json`.
#[derive(Serialize, Deserialize, Clone)]
pub(super) struct HostnameFileRecord {
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
    hostnames: BTreeMap<String, HostnameFileRecord>,
}

impl From<HostnameFileRecord> for HostnameRecord {
    fn from(r: HostnameFileRecord) -> HostnameRecord {
        HostnameRecord {
            owner: match r.tunnel {
                Some(id) => HostOwner::Tunnel(id),
                None => HostOwner::Certificate(r.cert_sha256.to_ascii_lowercase()),
            },
            zone: r.zone,
            first_registered: r.first_registered,
        }
    }
}

impl From<&HostnameRecord> for HostnameFileRecord {
    fn from(r: &HostnameRecord) -> HostnameFileRecord {
        let (cert_sha256, tunnel) = match &r.owner {
            HostOwner::Certificate(fp) => (fp.clone(), None),
            HostOwner::Tunnel(id) => (String::new(), Some(id.clone())),
        };
        HostnameFileRecord {
            cert_sha256,
            tunnel,
            zone: r.zone.clone(),
            first_registered: r.first_registered,
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
struct TunnelFile {
    tunnels: BTreeMap<String, TunnelRecord>,
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

/// A file a change is written to, in the order a batch writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StateFile {
    Hostnames,
    Tunnels,
    Revocations,
}

const WRITE_ORDER: [StateFile; 3] = [
    StateFile::Hostnames,
    StateFile::Tunnels,
    StateFile::Revocations,
];

/// The file a request may change.
fn file_of(r: &Request) -> Option<StateFile> {
    match r {
        Request::ClaimHostname { .. }
        | Request::ReleaseHostname { .. }
        | Request::UnrouteTunnel { .. } => Some(StateFile::Hostnames),
        Request::CreateTunnel { .. } | Request::DeleteTunnel { .. } => Some(StateFile::Tunnels),
        Request::Revoke(_) => Some(StateFile::Revocations),
        Request::ServiceToken { .. }
        | Request::CreateServiceToken { .. }
        | Request::PutLogin { .. }
        | Request::TakeLogin { .. } => None,
    }
}

/// What tells a changed file from the one read last: a replaced file (atomic write) has
/// another inode; an edited one another size, mtime or ctime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The stamp of `name` in `state`; `None` when it does not exist.
fn stamp(state: &StateDir, name: &str) -> io::Result<Option<FileStamp>> {
    match std::fs::metadata(state.path().join(name)) {
        Ok(m) => Ok(Some(FileStamp {
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The tables a batch may restore, as they were before it.
#[derive(Default)]
struct Before {
    hostnames: Option<BTreeMap<String, Versioned<HostnameRecord>>>,
    tunnels: Option<BTreeMap<String, TunnelRecord>>,
    revocations: Option<Revocations>,
}

/// The state directory as a [`Store`]. See the module doc.
pub struct FileStore {
    state: StateDir,
    tokens: Vec<ServiceTokenRecord>,
    /// The stamp of `service-tokens.json` when `tokens` was read (`None`: it did not exist).
    tokens_read: Option<FileStamp>,
    hostnames: BTreeMap<String, Versioned<HostnameRecord>>,
    tunnels: BTreeMap<String, TunnelRecord>,
    revocations: Revocations,
    /// The stamp of `revocations.json` when it was read last.
    revocations_read: Option<FileStamp>,
    /// Pending logins and when they expire (unix seconds).
    logins: HashMap<String, (PendingLoginRecord, u64)>,
    /// The latest revision handed out.
    revision: u64,
    /// Changes made so far (a batch tells by it which requests changed something).
    changes: u64,
    /// Inside [`Store::execute`]: the files changed and not yet written.
    batch: Option<Vec<StateFile>>,
    /// What reading `service-tokens.json` again found changed, until [`Store::changes`].
    token_changes: Vec<Change>,
}

impl FileStore {
    /// Reads every state file of `state` (missing ones are empty).
    pub fn open(state: &StateDir) -> io::Result<FileStore> {
        let hostnames: HostnameFile = state.load_json(HOSTNAMES_FILE)?;
        let tunnels: TunnelFile = state.load_json(TUNNELS_FILE)?;
        let revocations_read = stamp(state, REVOCATIONS_FILE)?;
        let revocations: Revocations = state.load_json(REVOCATIONS_FILE)?;
        let mut store = FileStore {
            state: state.clone(),
            tokens: Vec::new(),
            tokens_read: None,
            hostnames: BTreeMap::new(),
            tunnels: tunnels.tunnels,
            revocations,
            revocations_read,
            logins: HashMap::new(),
            revision: 0,
            changes: 0,
            batch: None,
            token_changes: Vec::new(),
        };
        for (mut host, rec) in hostnames.hostnames {
            host.make_ascii_lowercase();
            let value = HostnameRecord::from(rec);
            let revision = store.next_revision();
            store.hostnames.insert(host, Versioned { value, revision });
        }
        store.read_tokens()?;
        store.token_changes.clear();
        Ok(store)
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn read_tokens(&mut self) -> io::Result<()> {
        // The stamp first: a file replaced between the two is read again next time.
        let seen = stamp(&self.state, SERVICE_TOKENS_FILE)?;
        let tokens = ServiceTokens::load(&self.state)?.tokens;
        let old: HashMap<&str, &ServiceTokenRecord> = self
            .tokens
            .iter()
            .map(|t| (t.client_id.as_str(), t))
            .collect();
        let new: HashMap<&str, &ServiceTokenRecord> =
            tokens.iter().map(|t| (t.client_id.as_str(), t)).collect();
        let mut changes: Vec<Change> = tokens
            .iter()
            .filter(|t| old.get(t.client_id.as_str()) != Some(t))
            .map(|t| Change::ServiceToken {
                client_id: t.client_id.clone(),
                record: Some(t.clone()),
            })
            .collect();
        changes.extend(
            self.tokens
                .iter()
                .filter(|t| !new.contains_key(t.client_id.as_str()))
                .map(|t| Change::ServiceToken {
                    client_id: t.client_id.clone(),
                    record: None,
                }),
        );
        self.token_changes.extend(changes);
        self.tokens = tokens;
        self.tokens_read = seen;
        Ok(())
    }

    /// Reads `service-tokens.json` again if it changed since it was read.
    fn refresh_tokens(&mut self) -> io::Result<()> {
        if stamp(&self.state, SERVICE_TOKENS_FILE)? != self.tokens_read {
            self.read_tokens()?;
        }
        Ok(())
    }

    /// Reads `revocations.json` again if it changed since it was read, and reports what it
    /// revokes that this store did not know (revoking is for good: entries are only added).
    fn refresh_revocations(&mut self) -> io::Result<()> {
        let seen = stamp(&self.state, REVOCATIONS_FILE)?;
        if seen == self.revocations_read {
            return Ok(());
        }
        let file: Revocations = self.state.load_json(REVOCATIONS_FILE)?;
        for (fp, c) in file.certificates {
            if !self.revocations.certificates.contains_key(&fp) {
                self.token_changes
                    .push(Change::Revoked(Revocation::Certificate {
                        sha256: fp.clone(),
                        serial: c.serial.clone(),
                        reason: c.reason.clone(),
                    }));
                self.revocations.certificates.insert(fp, c);
            }
        }
        for (id, t) in file.service_tokens {
            if !self.revocations.service_tokens.contains_key(&id) {
                self.token_changes
                    .push(Change::Revoked(Revocation::ServiceToken {
                        client_id: id.clone(),
                        reason: t.reason.clone(),
                    }));
                self.revocations.service_tokens.insert(id, t);
            }
        }
        for (key, t) in file.zone_sessions {
            if self.revocations.zone_sessions.contains_key(&key) {
                continue;
            }
            if let Some((zone, email, before)) = super::parse_zone_sessions_key(&key) {
                self.token_changes
                    .push(Change::Revoked(Revocation::ZoneSessions {
                        zone,
                        email,
                        before,
                        reason: t.reason.clone(),
                    }));
            }
            self.revocations.zone_sessions.insert(key, t);
        }
        for (serial, t) in file.serials {
            if !self.revocations.serials.contains_key(&serial) {
                self.token_changes.push(Change::Revoked(Revocation::Serial {
                    serial: serial.clone(),
                    reason: t.reason.clone(),
                }));
                self.revocations.serials.insert(serial, t);
            }
        }
        self.revocations_read = seen;
        Ok(())
    }

    /// Makes a change to `file` durable: now, or at the end of the batch.
    fn persist(&mut self, file: StateFile) -> Result<(), StoreError> {
        self.changes += 1;
        if let Some(dirty) = &mut self.batch {
            if !dirty.contains(&file) {
                dirty.push(file);
            }
            return Ok(());
        }
        Ok(self.write(file)?)
    }

    fn write(&self, file: StateFile) -> io::Result<()> {
        match file {
            StateFile::Hostnames => self.state.store_json(
                HOSTNAMES_FILE,
                &HostnameFile {
                    hostnames: self
                        .hostnames
                        .iter()
                        .map(|(h, r)| (h.clone(), HostnameFileRecord::from(&r.value)))
                        .collect(),
                },
            ),
            StateFile::Tunnels => self.state.store_json(
                TUNNELS_FILE,
                &TunnelFile {
                    tunnels: self.tunnels.clone(),
                },
            ),
            StateFile::Revocations => self.state.store_json(REVOCATIONS_FILE, &self.revocations),
        }
    }

    /// Removes the hostnames `gone` picks, writing the file once; returns them, sorted.
    fn remove_hostnames(
        &mut self,
        gone: impl Fn(&str, &HostnameRecord) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        let names: Vec<String> = self
            .hostnames
            .iter()
            .filter(|(h, r)| gone(h, &r.value))
            .map(|(h, _)| h.clone())
            .collect();
        if names.is_empty() {
            return Ok(names);
        }
        let removed: Vec<_> = names
            .iter()
            .filter_map(|h| self.hostnames.remove_entry(h))
            .collect();
        if let Err(e) = self.persist(StateFile::Hostnames) {
            self.hostnames.extend(removed);
            return Err(e);
        }
        Ok(names)
    }
}

impl Store for FileStore {
    fn snapshot(&mut self) -> Result<Snapshot, StoreError> {
        self.refresh_tokens()?;
        Ok(Snapshot {
            service_tokens: self.tokens.clone(),
            hostnames: self.hostnames.clone(),
            tunnels: self.tunnels.clone(),
            revocations: self.revocations.clone(),
        })
    }

    fn service_token(&mut self, client_id: &str) -> Result<Option<ServiceTokenRecord>, StoreError> {
        self.refresh_tokens()?;
        Ok(self
            .tokens
            .iter()
            .find(|t| t.client_id == client_id)
            .cloned())
    }

    fn service_tokens(&mut self) -> Result<Vec<ServiceTokenRecord>, StoreError> {
        self.refresh_tokens()?;
        Ok(self.tokens.clone())
    }

    fn create_service_token(
        &mut self,
        name: &str,
        expires: Option<u64>,
    ) -> Result<(ServiceTokenRecord, Secret), StoreError> {
        let created =
            ServiceTokens::create_record(&self.state, name, expires).map_err(|e| {
                match e.kind() {
                    io::ErrorKind::InvalidInput => StoreError::Invalid(e.to_string()),
                    io::ErrorKind::AlreadyExists => {
                        StoreError::Exists(format!("service token {name:?}"))
                    }
                    _ => StoreError::from(e),
                }
            })?;
        self.read_tokens()?;
        Ok(created)
    }

    fn rotate_service_token(
        &mut self,
        name: &str,
        overlap_secs: u64,
    ) -> Result<(ServiceTokenRecord, Secret), StoreError> {
        let rotated =
            ServiceTokens::rotate_record(&self.state, name, overlap_secs).map_err(|e| {
                match e.kind() {
                    io::ErrorKind::NotFound => StoreError::Invalid(e.to_string()),
                    _ => StoreError::from(e),
                }
            })?;
        self.read_tokens()?;
        Ok(rotated)
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
        let current = self.hostnames.get(&host);
        if let Some(cur) = current {
            if cur.value.owner == record.owner {
                return Ok(Claimed {
                    record: cur.clone(),
                    new: false,
                });
            }
        }
        match (expect, current) {
            (Expect::Absent, Some(cur)) => return Err(StoreError::Owned(cur.clone())),
            (Expect::Revision(r), Some(cur)) if cur.revision != r => {
                return Err(StoreError::Changed(Some(cur.clone())))
            }
            (Expect::Revision(_), None) => return Err(StoreError::Changed(None)),
            _ => {}
        }
        if let HostOwner::Certificate(fp) = &record.owner {
            let owned = self
                .hostnames
                .values()
                .filter(|r| matches!(&r.value.owner, HostOwner::Certificate(f) if f == fp))
                .count();
            if owned >= MAX_HOSTNAMES_PER_CERTIFICATE {
                return Err(StoreError::TooMany);
            }
        }
        let new = Versioned {
            value: record,
            revision: self.next_revision(),
        };
        let old = self.hostnames.insert(host.clone(), new.clone());
        if let Err(e) = self.persist(StateFile::Hostnames) {
            match old {
                Some(o) => self.hostnames.insert(host, o),
                None => self.hostnames.remove(&host),
            };
            return Err(e);
        }
        Ok(Claimed {
            record: new,
            new: true,
        })
    }

    fn release_hostname(&mut self, hostname: &str, expect: Expect) -> Result<(), StoreError> {
        let host = hostname.to_ascii_lowercase();
        let Some(cur) = self.hostnames.get(&host) else {
            return Ok(());
        };
        match expect {
            Expect::Revision(r) if r == cur.revision => {}
            _ => return Err(StoreError::Changed(Some(cur.clone()))),
        }
        let old = self.hostnames.remove(&host);
        if let Err(e) = self.persist(StateFile::Hostnames) {
            if let Some(o) = old {
                self.hostnames.insert(host, o);
            }
            return Err(e);
        }
        Ok(())
    }

    fn unroute_tunnel(&mut self, id: &str) -> Result<Vec<String>, StoreError> {
        self.remove_hostnames(|_, r| matches!(&r.owner, HostOwner::Tunnel(t) if t == id))
    }

    fn create_tunnel(&mut self, id: &str, record: TunnelRecord) -> Result<(), StoreError> {
        if self.tunnels.contains_key(id) {
            return Err(StoreError::Exists(format!("tunnel {id}")));
        }
        if self
            .tunnels
            .values()
            .any(|t| t.zone == record.zone && t.name == record.name)
        {
            return Err(StoreError::Exists(format!(
                "a tunnel named {} in zone {}",
                record.name, record.zone
            )));
        }
        self.tunnels.insert(id.to_owned(), record);
        if let Err(e) = self.persist(StateFile::Tunnels) {
            self.tunnels.remove(id);
            return Err(e);
        }
        Ok(())
    }

    fn delete_tunnel(&mut self, id: &str) -> Result<(), StoreError> {
        let Some(old) = self.tunnels.remove(id) else {
            return Ok(());
        };
        if let Err(e) = self.persist(StateFile::Tunnels) {
            self.tunnels.insert(id.to_owned(), old);
            return Err(e);
        }
        Ok(())
    }

    fn release_orphaned_routes(&mut self) -> Result<Vec<String>, StoreError> {
        let tunnels = std::mem::take(&mut self.tunnels);
        let gone = self.remove_hostnames(
            |_, r| matches!(&r.owner, HostOwner::Tunnel(t) if !tunnels.contains_key(t)),
        );
        self.tunnels = tunnels;
        gone
    }

    fn release_misfiled(
        &mut self,
        zone_of: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<String>, StoreError> {
        self.remove_hostnames(|h, r| zone_of(h).is_some_and(|z| z != r.zone))
    }

    fn revoke(&mut self, revocation: Revocation) -> Result<(), StoreError> {
        let now = unix_now();
        let before = self.revocations.clone();
        match revocation {
            Revocation::Certificate {
                sha256,
                serial,
                reason,
            } => {
                self.revocations
                    .certificates
                    .entry(sha256.to_ascii_lowercase())
                    .or_insert(RevokedCertificate {
                        serial,
                        revoked: now,
                        reason,
                    });
            }
            Revocation::ServiceToken { client_id, reason } => {
                self.revocations
                    .service_tokens
                    .entry(client_id)
                    .or_insert(RevokedToken {
                        revoked: now,
                        reason,
                    });
            }
            Revocation::Serial { serial, reason } => {
                self.revocations
                    .serials
                    .entry(serial.to_ascii_lowercase())
                    .or_insert(RevokedToken {
                        revoked: now,
                        reason,
                    });
            }
            Revocation::ZoneSessions {
                zone,
                email,
                before,
                reason,
            } => {
                self.revocations
                    .zone_sessions
                    .entry(super::zone_sessions_key(&zone, &email, before))
                    .or_insert(RevokedToken {
                        revoked: now,
                        reason,
                    });
            }
        }
        if self.revocations == before {
            return Ok(());
        }
        if let Err(e) = self.persist(StateFile::Revocations) {
            self.revocations = before;
            return Err(e);
        }
        Ok(())
    }

    fn put_login(
        &mut self,
        key: &str,
        login: PendingLoginRecord,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        let now = unix_now();
        self.logins.retain(|_, (_, until)| *until > now);
        if self.logins.contains_key(key) {
            return Err(StoreError::Exists(format!("login {key}")));
        }
        if self.logins.len() >= MAX_STORED_LOGINS {
            return Err(StoreError::Full);
        }
        self.logins
            .insert(key.to_owned(), (login, now.saturating_add(ttl_secs)));
        Ok(())
    }

    fn take_login(&mut self, key: &str) -> Result<Option<PendingLoginRecord>, StoreError> {
        let now = unix_now();
        Ok(self
            .logins
            .remove(key)
            .filter(|(_, until)| *until > now)
            .map(|(login, _)| login))
    }

    fn changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.token_changes)
    }

    fn poll(&mut self) -> Result<(), StoreError> {
        self.refresh_revocations()?;
        self.refresh_tokens()?;
        Ok(())
    }

    fn execute(&mut self, batch: Vec<Request>) -> Vec<Answer> {
        if batch.len() <= 1 {
            return batch.into_iter().map(|r| self.execute_one(r)).collect();
        }
        let mut before = Before::default();
        for r in &batch {
            match file_of(r) {
                Some(StateFile::Hostnames) if before.hostnames.is_none() => {
                    before.hostnames = Some(self.hostnames.clone())
                }
                Some(StateFile::Tunnels) if before.tunnels.is_none() => {
                    before.tunnels = Some(self.tunnels.clone())
                }
                Some(StateFile::Revocations) if before.revocations.is_none() => {
                    before.revocations = Some(self.revocations.clone())
                }
                _ => {}
            }
        }
        self.batch = Some(Vec::new());
        let answers: Vec<(Answer, Option<StateFile>)> = batch
            .into_iter()
            .map(|r| {
                let file = file_of(&r);
                let changes = self.changes;
                let answer = self.execute_one(r);
                let changed = self.changes != changes && answer.is_ok();
                (answer, file.filter(|_| changed))
            })
            .collect();
        let dirty = self.batch.take().unwrap_or_default();
        let mut failed: Vec<(StateFile, String)> = Vec::new();
        for file in WRITE_ORDER {
            if !dirty.contains(&file) {
                continue;
            }
            if let Err(e) = self.write(file) {
                log::warn!("{e}");
                // A file is dirty only after a request for it, which saved its table first.
                match file {
                    StateFile::Hostnames => {
                        if let Some(b) = before.hostnames.take() {
                            self.hostnames = b;
                        }
                    }
                    StateFile::Tunnels => {
                        if let Some(b) = before.tunnels.take() {
                            self.tunnels = b;
                        }
                    }
                    StateFile::Revocations => {
                        if let Some(b) = before.revocations.take() {
                            self.revocations = b;
                        }
                    }
                }
                failed.push((file, e.to_string()));
            }
        }
        answers
            .into_iter()
            .map(
                |(answer, file)| match file.and_then(|f| failed.iter().find(|(g, _)| *g == f)) {
                    Some((_, why)) => answer.failed(StoreError::Unavailable(why.clone())),
                    None => answer,
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests;
