//! App tokens cached on disk, one file per application hostname:
//!
//! ```text
//!  ~/.postern/tokens/            0700
//!  ~/.postern/tokens/<H>.jwt     0600, the compact JWT the edge signed for H
//!  ~/.postern/tokens/<H>.lock    a login in progress for H (see `login_lock`)
//!  ~/.postern/tokens/<Z>.zone    0600, the zone session for zone Z (one login per zone):
//!                                exchanged at the edge for app tokens of Z's applications;
//!                                a second line `spki-sha256 HEX` pins the key of the edge
//!                                that delivered it (`edge_key`): exchanged only there
//! ```
//!
//! Files are created with their final mode (never chmod after) and replaced atomically
//! (temp file, rename), so a reader sees the old token or the new one, never half of one.
//! A token is handed out only while its `exp` is more than [`EXPIRY_MARGIN`] away. The
//! signature is not checked here: the edge checks it on every connection, and a token it
//! refuses is removed and replaced by a new login.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::edge_key::EdgeKey;
use crate::io::unix_now;
use crate::secret::Secret;

/// A cached token is used only if it stays valid at least this long: the margin covers the
/// connection setup and a small clock skew with the edge.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// A cached app token with less than this left is replaced through the zone session (no
/// browser) before it is used, when there is one.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Mode of the tokens directory.
const DIR_MODE: u32 = 0o700;
/// Mode of token files.
const FILE_MODE: u32 = 0o600;
/// Largest token file read back (a JWT with a few groups is well under this).
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// Why the cache could not do what was asked.
#[derive(Debug)]
#[non_exhaustive]
pub enum CacheError {
    /// The hostname is not a lowercase DNS name, so it cannot name a file.
    BadHostname(String),
    /// Reading or writing the cache failed.
    Io { path: PathBuf, error: io::Error },
    /// Writing the token failed (the error names the file).
    Write(io::Error),
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheError::BadHostname(h) => write!(
                f,
                "invalid application hostname {h:?}: expected a lowercase DNS name like ssh.example.com"
            ),
            CacheError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            CacheError::Write(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for CacheError {}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |error| CacheError::Io {
        path: path.to_owned(),
        error,
    }
}

/// A hostname that can name a cache file: what the edge accepts as an application name,
/// lowercase (so `SSH.example.com` and `ssh.example.com` share one file). No `/`, no `..`,
/// no leading dot.
pub fn valid_cache_hostname(h: &str) -> bool {
    crate::proto::dns::valid_lowercase_hostname(h)
}

/// The `exp` claim (Unix seconds) of a compact JWT, read without checking the signature.
/// `None` for anything that is not three dot-separated base64url parts with a JSON payload
/// holding a non-negative integer `exp`.
pub fn jwt_expiry(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = crate::proto::base64::decode_url(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims.get("exp")?.as_u64()
}

/// True when `token` looks like a compact JWT: three non-empty base64url parts. Anything
/// else (a stray newline, an HTML page) must not reach an HTTP header or the cache.
pub fn is_compact_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// True when a token expiring at `exp` may still be used at `now` (Unix seconds).
pub fn fresh_enough(exp: u64, now: u64) -> bool {
    exp > now.saturating_add(EXPIRY_MARGIN.as_secs())
}

/// The lines of a cache file as every reader of it takes them: trimmed, blank ones skipped.
fn file_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty())
}

/// A cached zone session (see the module doc).
pub struct ZoneSession {
    /// The zone (`aud: zone:<zone>`), which names the file.
    pub zone: String,
    pub session: Secret,
    /// The key of the edge that delivered the session at the browser login; `None` for a
    /// file written before keys were pinned (such a session is never sent).
    pub(crate) edge_key: Option<EdgeKey>,
}

/// The token directory (`~/.postern/tokens` by default).
pub struct TokenCache {
    dir: PathBuf,
}

impl TokenCache {
    /// `$HOME/.postern/tokens`; an error naming HOME without a usable HOME.
    pub fn default_dir() -> Result<PathBuf, String> {
        let instead = "set HOME (app tokens are cached in ~/.postern/tokens), or use a service \
                       token (--id and --secret, or POSTERN_SERVICE_TOKEN_ID and \
                       POSTERN_SERVICE_TOKEN_SECRET)";
        Ok(crate::io::postern_dir(instead)?.join("tokens"))
    }

    /// The cache in `$HOME/.postern/tokens`.
    pub fn open_default() -> Result<TokenCache, String> {
        TokenCache::default_dir().map(TokenCache::new)
    }

    /// The cache in `dir` (created on the first write).
    pub fn new(dir: PathBuf) -> TokenCache {
        TokenCache { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (0700) if needed.
    pub(crate) fn ensure_dir(&self) -> Result<(), CacheError> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.dir)
            .map_err(io_err(&self.dir))
    }

    /// `<dir>/<hostname><suffix>`, for a valid hostname only.
    pub(crate) fn path(&self, hostname: &str, suffix: &str) -> Result<PathBuf, CacheError> {
        if !valid_cache_hostname(hostname) {
            return Err(CacheError::BadHostname(hostname.to_owned()));
        }
        Ok(self.dir.join(format!("{hostname}{suffix}")))
    }

    /// The cached token for `hostname`, if there is one that stays valid past the margin.
    pub fn load(&self, hostname: &str) -> Option<Secret> {
        self.load_at(hostname, unix_now())
    }

    fn load_at(&self, hostname: &str, now: u64) -> Option<Secret> {
        self.load_file_at(hostname, ".jwt", now)
    }

    /// Stores `token` for `hostname`, replacing any older one atomically.
    pub fn store(&self, hostname: &str, token: &Secret) -> Result<PathBuf, CacheError> {
        self.store_file(hostname, ".jwt", token)
    }

    /// Removes the token for `hostname`. A missing token is not an error.
    pub fn remove(&self, hostname: &str) -> Result<(), CacheError> {
        self.remove_file(hostname, ".jwt", None)
    }

    /// Removes the token for `hostname` only if it is still `token`: a parallel process may
    /// already have replaced a refused token with a fresh one, which must stay.
    pub fn remove_if(&self, hostname: &str, token: &Secret) -> Result<(), CacheError> {
        self.remove_file(hostname, ".jwt", Some(token))
    }

    /// Removes `name` + `suffix`; with `only`, only while it still holds that secret. A
    /// missing file is not an error.
    fn remove_file(
        &self,
        name: &str,
        suffix: &str,
        only: Option<&Secret>,
    ) -> Result<(), CacheError> {
        let path = self.path(name, suffix)?;
        if let Some(secret) = only {
            // The secret is the first line (a zone session's pin follows it), read as the
            // loaders read it.
            match fs::read_to_string(&path) {
                Ok(text) if file_lines(&text).next() == Some(secret.expose()) => {}
                _ => return Ok(()),
            }
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// The cached zone session of the zone `hostname` is in: the first of `hostname` and its
    /// parent domains with a session file that stays valid past the margin.
    pub fn load_zone_session(&self, hostname: &str) -> Option<ZoneSession> {
        self.load_zone_session_at(hostname, unix_now())
    }

    fn load_zone_session_at(&self, hostname: &str, now: u64) -> Option<ZoneSession> {
        let mut zone = hostname;
        loop {
            if let Some((session, edge_key)) = self.read_zone_file(zone, now) {
                return Some(ZoneSession {
                    zone: zone.to_owned(),
                    session,
                    edge_key,
                });
            }
            zone = zone.split_once('.')?.1;
        }
    }

    /// `<zone>.zone`: the session (a compact JWT valid past the margin), then the edge's key
    /// on a second line, or no second line (written by a postern from before pinning).
    /// Anything else is not a zone session.
    fn read_zone_file(&self, zone: &str, now: u64) -> Option<(Secret, Option<EdgeKey>)> {
        let text = self.read_file(zone, ".zone")?;
        let mut lines = file_lines(&text);
        let session = lines.next()?;
        let edge_key = match lines.next() {
            None => None,
            Some(line) => Some(EdgeKey::from_line(line)?),
        };
        if lines.next().is_some()
            || !is_compact_jwt(session)
            || !fresh_enough(jwt_expiry(session)?, now)
        {
            return None;
        }
        Some((Secret::from(session.to_owned()), edge_key))
    }

    /// Stores the zone session for `zone` with the key of the edge that delivered it (0600,
    /// atomically: a reader sees the old pair or the new one).
    pub(crate) fn store_zone_session(
        &self,
        zone: &str,
        session: &Secret,
        edge_key: EdgeKey,
    ) -> Result<PathBuf, CacheError> {
        let text = format!("{}\n{}", session.expose(), edge_key.to_line());
        self.store_file(zone, ".zone", &Secret::from(text))
    }

    /// Removes the zone session of `zone`. A missing one is not an error.
    pub fn remove_zone_session(&self, zone: &str) -> Result<(), CacheError> {
        self.remove_file(zone, ".zone", None)
    }

    /// Removes the zone session of `zone` only if it is still `session` (a parallel login may
    /// have brought a new one).
    pub fn remove_if_zone_session(&self, zone: &str, session: &Secret) -> Result<(), CacheError> {
        self.remove_file(zone, ".zone", Some(session))
    }

    /// A cached app token for `hostname` that has more than `margin` left.
    pub fn load_with_margin(&self, hostname: &str, margin: Duration) -> Option<Secret> {
        let now = unix_now().saturating_add(margin.as_secs());
        self.load_at(hostname, now)
    }

    /// The text of `name` + `suffix`, at most [`MAX_TOKEN_FILE`] bytes of it.
    fn read_file(&self, name: &str, suffix: &str) -> Option<String> {
        let path = self.path(name, suffix).ok()?;
        let file = fs::File::open(&path).ok()?;
        let mut text = String::new();
        io::Read::read_to_string(&mut io::Read::take(file, MAX_TOKEN_FILE), &mut text).ok()?;
        Some(text)
    }

    fn load_file_at(&self, name: &str, suffix: &str, now: u64) -> Option<Secret> {
        let text = self.read_file(name, suffix)?;
        let token = text.trim();
        if !is_compact_jwt(token) || !fresh_enough(jwt_expiry(token)?, now) {
            return None;
        }
        Some(Secret::from(token.to_owned()))
    }

    fn store_file(&self, name: &str, suffix: &str, token: &Secret) -> Result<PathBuf, CacheError> {
        let path = self.path(name, suffix)?;
        self.ensure_dir()?;
        let mut data = Vec::with_capacity(token.expose().len() + 1);
        data.extend_from_slice(token.expose().as_bytes());
        data.push(b'\n');
        crate::io::files::write_file_atomic(&path, &data, FILE_MODE).map_err(CacheError::Write)?;
        Ok(path)
    }

    /// Removes every cached token and zone session; returns how many tokens were removed.
    /// Lock files stay (their owners remove them).
    pub fn remove_all(&self) -> Result<usize, CacheError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            if let Some(zone) = name.to_str().and_then(|n| n.strip_suffix(".zone")) {
                if valid_cache_hostname(zone) {
                    self.remove_zone_session(zone)?;
                }
                continue;
            }
            let Some(host) = name.to_str().and_then(|n| n.strip_suffix(".jwt")) else {
                continue;
            };
            if valid_cache_hostname(host) {
                self.remove(host)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "postern-{tag}-{}-{}",
                std::process::id(),
                crate::proto::base64::encode_url(&crate::io::random_bytes::<6>())
            ));
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A compact JWT (unsigned: the cache never checks signatures) with these claims.
    pub(crate) fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.c2ln",
            crate::proto::base64::encode_url(br#"{"alg":"EdDSA","typ":"JWT"}"#),
            crate::proto::base64::encode_url(claims.as_bytes())
        )
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn stored_token_is_0600_in_a_0700_dir_and_loads_back() {
        let tmp = TempDir::new("cache-mode");
        let cache = TokenCache::new(tmp.0.join("tokens"));
        let token = jwt(&format!(r#"{{"exp":{}}}"#, unix_now() + 3600));
        let path = cache
            .store("ssh.example.com", &Secret::from(token.clone()))
            .unwrap();
        assert_eq!(path, tmp.0.join("tokens/ssh.example.com.jwt"));
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(cache.dir()), 0o700);
        assert_eq!(cache.load("ssh.example.com").unwrap().expose(), token);
        // Replacing keeps the mode and leaves no temp file behind.
        let newer = jwt(&format!(r#"{{"exp":{}}}"#, unix_now() + 7200));
        cache
            .store("ssh.example.com", &Secret::from(newer.clone()))
            .unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(cache.load("ssh.example.com").unwrap().expose(), newer);
        assert_eq!(fs::read_dir(cache.dir()).unwrap().count(), 1);
    }

    #[test]
    fn expired_or_nearly_expired_tokens_are_not_loaded() {
        let tmp = TempDir::new("cache-exp");
        let cache = TokenCache::new(tmp.0.clone());
        let now = 1_000_000;
        for (exp, usable) in [
            (now - 10, false),
            (now, false),
            (now + 30, false),
            (now + 31, true),
        ] {
            let token = jwt(&format!(r#"{{"exp":{exp}}}"#));
            cache.store("a.localhost", &Secret::from(token)).unwrap();
            assert_eq!(
                cache.load_at("a.localhost", now).is_some(),
                usable,
                "exp {exp}"
            );
        }
        // No exp at all: not usable.
        cache
            .store("a.localhost", &Secret::from(jwt(r#"{"sub":"x"}"#)))
            .unwrap();
        assert!(cache.load_at("a.localhost", now).is_none());
        assert!(cache.load("missing.localhost").is_none());
    }

    #[test]
    fn bad_hostnames_are_refused() {
        let tmp = TempDir::new("cache-names");
        let cache = TokenCache::new(tmp.0.clone());
        let token = Secret::from(jwt(r#"{"exp":99999999999}"#));
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "a..b",
            ".hidden",
            "SSH.example.com",
            "a b",
            "a.b\n",
            "-a.b",
            "a.b.",
            "a_b.example.com",
            "127.0.0.1",
        ] {
            assert!(
                matches!(cache.store(bad, &token), Err(CacheError::BadHostname(_))),
                "{bad:?}"
            );
            assert!(cache.load(bad).is_none());
            assert!(cache.remove(bad).is_err());
        }
        assert_eq!(fs::read_dir(&tmp.0).unwrap().count(), 0);
    }

    #[test]
    fn remove_and_remove_all_and_remove_if() {
        let tmp = TempDir::new("cache-rm");
        let cache = TokenCache::new(tmp.0.join("tokens"));
        assert_eq!(cache.remove_all().unwrap(), 0);
        let t = |n: u64| Secret::from(jwt(&format!(r#"{{"exp":{n}}}"#)));
        let far = unix_now() + 3600;
        cache.store("a.localhost", &t(far)).unwrap();
        cache.store("b.localhost", &t(far)).unwrap();
        cache.store("c.localhost", &t(far)).unwrap();
        cache.remove("a.localhost").unwrap();
        cache.remove("a.localhost").unwrap();
        assert!(cache.load("a.localhost").is_none());
        // remove_if leaves a token that someone else already replaced.
        cache.remove_if("b.localhost", &t(far + 1)).unwrap();
        assert!(cache.load("b.localhost").is_some());
        cache.remove_if("b.localhost", &t(far)).unwrap();
        assert!(cache.load("b.localhost").is_none());
        fs::write(cache.dir().join("c.localhost.lock"), "1").unwrap();
        assert_eq!(cache.remove_all().unwrap(), 1);
        assert!(cache.load("c.localhost").is_none());
        assert!(cache.dir().join("c.localhost.lock").exists());
    }

    /// A key for the tests: the cache stores and compares it, never derives it.
    pub(crate) fn edge_key(byte: u8) -> EdgeKey {
        EdgeKey::from_line(&format!("spki-sha256 {}", crate::store::hex(&[byte; 32]))).unwrap()
    }

    #[test]
    fn a_zone_session_is_0600_found_from_any_host_of_its_zone_and_removed_by_logout() {
        let tmp = TempDir::new("cache-zone");
        let cache = TokenCache::new(tmp.0.join("tokens"));
        let session = jwt(&format!(r#"{{"exp":{}}}"#, unix_now() + 3600));
        let path = cache
            .store_zone_session("example.com", &Secret::from(session.clone()), edge_key(1))
            .unwrap();
        assert_eq!(path, tmp.0.join("tokens/example.com.zone"));
        assert_eq!(mode(&path), 0o600);
        for host in ["ssh.example.com", "a.b.example.com", "example.com"] {
            let z = cache.load_zone_session(host).expect(host);
            assert_eq!(
                (z.zone.as_str(), z.session.expose(), z.edge_key),
                ("example.com", session.as_str(), Some(edge_key(1)))
            );
        }
        assert!(cache.load_zone_session("example.org").is_none());
        assert!(cache.load_zone_session("xexample.com").is_none());
        // Only the session it was: a newer one from a parallel login stays.
        cache
            .remove_if_zone_session("example.com", &Secret::from("x.y.z".to_owned()))
            .unwrap();
        assert!(cache.load_zone_session("ssh.example.com").is_some());
        // An expired one is not used.
        let old = jwt(&format!(r#"{{"exp":{}}}"#, unix_now() - 1));
        cache
            .store_zone_session("old.test", &Secret::from(old), edge_key(1))
            .unwrap();
        assert!(cache.load_zone_session("ssh.old.test").is_none());
        // `access logout` (all) forgets zone sessions too.
        cache
            .store("ssh.example.com", &Secret::from(session))
            .unwrap();
        assert_eq!(cache.remove_all().unwrap(), 1);
        assert!(cache.load_zone_session("ssh.example.com").is_none());
        assert_eq!(fs::read_dir(cache.dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_zone_session_keeps_its_edge_key_and_is_removed_by_its_session_alone() {
        let tmp = TempDir::new("cache-zone-pin");
        let cache = TokenCache::new(tmp.0.join("tokens"));
        let session = Secret::from(jwt(&format!(r#"{{"exp":{}}}"#, unix_now() + 3600)));
        let path = cache
            .store_zone_session("example.com", &session, edge_key(7))
            .unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("{}\nspki-sha256 {}\n", session.expose(), "07".repeat(32))
        );
        // A new login replaces the pair at once.
        let newer = Secret::from(jwt(&format!(r#"{{"exp":{}}}"#, unix_now() + 7200)));
        cache
            .store_zone_session("example.com", &newer, edge_key(8))
            .unwrap();
        let z = cache.load_zone_session("ssh.example.com").unwrap();
        assert_eq!(
            (z.session.expose(), z.edge_key),
            (newer.expose(), Some(edge_key(8)))
        );
        // remove_if compares the session, not the whole file: the older one leaves it, the
        // current one removes it (a 401 at the exchange).
        cache
            .remove_if_zone_session("example.com", &session)
            .unwrap();
        assert!(path.exists());
        cache.remove_if_zone_session("example.com", &newer).unwrap();
        assert!(!path.exists());
        // `access logout H` removes a pinned session by name.
        cache
            .store_zone_session("example.com", &newer, edge_key(8))
            .unwrap();
        cache.remove_zone_session("example.com").unwrap();
        assert!(cache.load_zone_session("ssh.example.com").is_none());
    }

    #[test]
    fn an_unpinned_zone_session_loads_without_a_key_and_a_damaged_one_not_at_all() {
        let tmp = TempDir::new("cache-zone-old");
        let cache = TokenCache::new(tmp.0.clone());
        let session = jwt(&format!(r#"{{"exp":{}}}"#, unix_now() + 3600));
        let path = tmp.0.join("example.com.zone");
        // As an older postern wrote it: the session alone. Loaded, with no key (the caller
        // never sends it), and removable by its session.
        fs::write(&path, format!("{session}\n")).unwrap();
        let z = cache.load_zone_session("ssh.example.com").unwrap();
        assert_eq!((z.session.expose(), z.edge_key), (session.as_str(), None));
        cache
            .remove_if_zone_session("example.com", &Secret::from(session.clone()))
            .unwrap();
        assert!(!path.exists());
        let key = edge_key(3).to_line();
        for bad in [
            format!("{session}\nspki-sha256 1234\n"),
            format!("{session}\nsha256 {}\n", "03".repeat(32)),
            format!("{session}\n{key}\n{key}\n"),
            format!("{key}\n{session}\n"),
            format!("{key}\n"),
            format!("not a jwt\n{key}\n"),
        ] {
            fs::write(&path, &bad).unwrap();
            assert!(
                cache.load_zone_session("ssh.example.com").is_none(),
                "{bad:?}"
            );
        }
        fs::write(&path, format!("\n{session}\r\n{key}\r\n")).unwrap();
        assert_eq!(
            cache.load_zone_session("example.com").unwrap().edge_key,
            Some(edge_key(3))
        );
        // What loads as this session is what remove_if takes for it (one reading of the file).
        cache
            .remove_if_zone_session("example.com", &Secret::from(session.clone()))
            .unwrap();
        assert!(!path.exists(), "a 401 removes the session it refused");
    }

    #[test]
    fn jwt_expiry_of_malformed_tokens_is_none_without_panicking() {
        assert_eq!(
            jwt_expiry(&jwt(r#"{"exp":1700000000}"#)),
            Some(1_700_000_000)
        );
        for bad in [
            String::new(),
            ".".into(),
            "..".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            "x.!!!.y".into(),
            "x.=.y".into(),
            format!("x.{}.y", crate::proto::base64::encode_url(b"not json")),
            format!("x.{}.y", crate::proto::base64::encode_url(b"[1,2]")),
            jwt(r#"{"exp":"1700000000"}"#),
            jwt(r#"{"exp":-5}"#),
            jwt(r#"{"exp":1.5e300}"#),
            jwt(r#"{"exp":null}"#),
            format!(
                "x.{}.y",
                crate::proto::base64::encode_url(&[0xff, 0xfe, 0x00])
            ),
            "é.é.é".into(),
        ] {
            assert_eq!(jwt_expiry(&bad), None, "{bad:?}");
        }
        assert!(is_compact_jwt(&jwt("{}")));
        assert!(!is_compact_jwt("a.b"));
        assert!(!is_compact_jwt("a..c"));
        assert!(!is_compact_jwt("a.b.c\r\nX-Injected: 1"));
        assert!(!fresh_enough(u64::MAX, u64::MAX));
    }
}
