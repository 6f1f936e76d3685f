//! `postern access ssh-gen --hostname H`: a fresh Ed25519 key and a short-lived certificate
//! for it from the edge (`POST /cdn-cgi/access/cert_sign`), written as cloudflared does:
//!
//! ```text
//!  ~/.postern/H-key            the private key (openssh-key-v1, unencrypted), 0600
//!  ~/.postern/H-key.pub        its public line, 0600
//!  ~/.postern/H-key-cert.pub   the certificate, 0600
//! ```
//!
//! ssh picks them up with `IdentityFile ~/.postern/%h-key` and `CertificateFile
//! ~/.postern/%h-key-cert.pub` (`access ssh-config --short-lived-cert` prints the block).
//! The credential is the service token, or the app token cached for H (a browser login
//! when there is none, or when the edge refuses the cached one). A certificate that is
//! still valid for [`REUSE_MARGIN_SECS`] is kept: ssh, scp and git calls in a row
//! make one request, not one each.

use std::path::{Path, PathBuf};

use super::https::https_request_with;
use super::{client_config, json_error, AccessError, AccessOptions, Credentials, TokenCache};
use crate::proto::sshkey::{self, Certificate, PublicKey};
use crate::secret::Secret;

/// A certificate still valid this long is reused instead of asking for a new one.
pub const REUSE_MARGIN_SECS: u64 = 30;

/// The three files of `ssh-gen` for one hostname.
pub struct SshGenFiles {
    pub key: PathBuf,
    pub public: PathBuf,
    pub certificate: PathBuf,
    /// False when a certificate still valid was kept.
    pub fetched: bool,
    /// End of the certificate's validity (Unix seconds).
    pub valid_before: u64,
}

impl SshGenFiles {
    /// The file names under `dir` for `hostname` (a valid cache hostname: no `/`).
    pub fn in_dir(dir: &Path, hostname: &str) -> SshGenFiles {
        SshGenFiles {
            key: dir.join(format!("{hostname}-key")),
            public: dir.join(format!("{hostname}-key.pub")),
            certificate: dir.join(format!("{hostname}-key-cert.pub")),
            fetched: false,
            valid_before: 0,
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The validity end of the certificate in `files` if it is still good for a while and its
/// key is there.
fn reusable(files: &SshGenFiles) -> Option<u64> {
    let line = std::fs::read_to_string(&files.certificate).ok()?;
    let (cert, _) = Certificate::parse_line(&line).ok()?;
    let key_text = std::fs::read_to_string(&files.key).ok()?;
    let seed = sshkey::decode_private_ed25519(&key_text).ok()?;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).ok()?;
    (cert.key == sshkey::ed25519_public(&pair)
        && cert.valid_before > unix_now().saturating_add(REUSE_MARGIN_SECS))
    .then_some(cert.valid_before)
}

/// Gets (or keeps) a certificate for `opts.hostname` and writes the files into `dir`.
pub fn ssh_gen(
    opts: &AccessOptions,
    cache: Option<&TokenCache>,
    dir: &Path,
) -> Result<SshGenFiles, AccessError> {
    let mut files = SshGenFiles::in_dir(dir, &opts.hostname);
    if let Some(until) = reusable(&files) {
        files.valid_before = until;
        return Ok(files);
    }
    let seed = crate::io::random_bytes::<32>();
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
        .expect("bug: any 32 bytes are an Ed25519 seed");
    let public = sshkey::ed25519_public(&pair);
    let comment = format!("postern@{}", opts.hostname);
    let body = serde_json::json!({
        "public_key": public.to_line(&comment),
        "hostname": opts.hostname,
    })
    .to_string();
    let cfg = client_config(opts.extra_ca.as_deref())?;
    let ask = |headers: &[(&str, &str)]| {
        https_request_with(
            opts,
            &cfg,
            "POST",
            "/cdn-cgi/access/cert_sign",
            Some(body.as_bytes()),
            headers,
        )
    };
    let (status, answer) = match &opts.credentials {
        Credentials::ServiceToken { id, secret } => ask(&[
            ("cf-access-client-id", id.as_str()),
            ("cf-access-client-secret", secret.expose()),
        ])?,
        Credentials::AppToken(token) => ask(&[("cf-access-token", token.expose())])?,
        Credentials::None => {
            let cache = cache.ok_or_else(|| {
                AccessError::TokenCache("no token cache and no service token".into())
            })?;
            let token = app_token(opts, cache)?;
            let first = ask(&[("cf-access-token", token.expose())])?;
            if first.0 == 401 {
                // Expired or revoked since it was cached: log in once more.
                cache
                    .remove_if(&opts.hostname, &token)
                    .map_err(AccessError::Cache)?;
                let token = app_token(opts, cache)?;
                ask(&[("cf-access-token", token.expose())])?
            } else {
                first
            }
        }
    };
    if status != 200 {
        return Err(AccessError::Refused {
            hostname: opts.hostname.clone(),
            status,
            cause: json_error(&answer).unwrap_or_else(|| "certificate refused".into()),
        });
    }
    let bad = |what: &str| AccessError::BadAnswer(format!("cert_sign: {what}"));
    let answer: serde_json::Value =
        serde_json::from_slice(&answer).map_err(|_| bad("the answer is not JSON"))?;
    let line = answer
        .get("certificate")
        .and_then(|c| c.as_str())
        .ok_or_else(|| bad("no certificate in the answer"))?;
    let (cert, _ca) = Certificate::parse_line(line).map_err(|e| bad(&e.to_string()))?;
    if cert.key != public {
        return Err(bad("the certificate is for another key"));
    }
    let local = |error: std::io::Error, path: &Path| AccessError::Local {
        what: "writing the ssh-gen files",
        error: std::io::Error::new(error.kind(), format!("{}: {error}", path.display())),
    };
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .map_err(|e| local(e, dir))?;
    let write = |path: &Path, text: &str| {
        crate::io::files::write_file_atomic(path, text.as_bytes(), 0o600)
            .map_err(|e| local(e, path))
    };
    let check = u32::from_be_bytes(crate::io::random_bytes::<4>());
    write(
        &files.key,
        &sshkey::encode_private_ed25519(&seed, &comment, check),
    )?;
    write(&files.public, &format!("{}\n", public.to_line(&comment)))?;
    write(&files.certificate, &format!("{}\n", line.trim()))?;
    files.fetched = true;
    files.valid_before = cert.valid_before;
    Ok(files)
}

/// Offers the key and certificate in `files` to the ssh-agent at `socket`, to be forgotten when
/// the certificate expires (`access ssh --short-lived-cert`).
pub fn offer_to_agent(files: &SshGenFiles, socket: &Path) -> Result<(), String> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let line = read(&files.certificate)?;
    let blob = line
        .split_whitespace()
        .nth(1)
        .and_then(|b| crate::proto::base64::decode(b).ok())
        .ok_or_else(|| format!("{}: not a certificate line", files.certificate.display()))?;
    let (cert, _) = Certificate::parse(&blob).map_err(|e| e.to_string())?;
    let seed = sshkey::decode_private_ed25519(&read(&files.key)?).map_err(|e| e.to_string())?;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
        .map_err(|_| "the key file holds no Ed25519 key".to_owned())?;
    let public: [u8; 32] = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .try_into()
        .map_err(|_| "bug: an Ed25519 public key is 32 bytes".to_owned())?;
    if cert.key != sshkey::ed25519_public(&pair) {
        return Err("the certificate is for another key".into());
    }
    let lifetime = cert
        .valid_before
        .saturating_sub(unix_now())
        .clamp(1, u64::from(u32::MAX));
    super::agent::add_certificate(
        socket,
        &blob,
        &seed,
        &public,
        &format!("postern@{}", files.key.display()),
        lifetime as u32,
    )
}

/// The cached app token for the hostname, after a browser login if there is none.
fn app_token(opts: &AccessOptions, cache: &TokenCache) -> Result<Secret, AccessError> {
    if let Some(t) = cache.load(&opts.hostname) {
        return Ok(t);
    }
    super::login_and_cache(opts, cache)?;
    cache.load(&opts.hostname).ok_or_else(|| {
        AccessError::Login(format!(
            "no token for {} after the login: run `postern access login {}`",
            opts.hostname, opts.hostname
        ))
    })
}

/// The public key of the certificate in `files`, for messages.
pub fn fingerprint(files: &SshGenFiles) -> Option<String> {
    let line = std::fs::read_to_string(&files.public).ok()?;
    PublicKey::parse_line(&line).ok().map(|k| k.fingerprint())
}

/// `GET /cdn-cgi/access/ssh-ca` from the edge at `opts` (public: no credential): the CA
/// lines for `TrustedUserCAKeys`, as the edge sent them (the caller checks them).
pub fn fetch_ssh_ca(opts: &AccessOptions) -> Result<String, AccessError> {
    let cfg = client_config(opts.extra_ca.as_deref())?;
    let (status, body) = super::https_get(opts, &cfg, "/cdn-cgi/access/ssh-ca")?;
    if status != 200 {
        return Err(AccessError::Refused {
            hostname: opts.hostname.clone(),
            status,
            cause: json_error(&body).unwrap_or_else(|| "no SSH CA at this edge".into()),
        });
    }
    String::from_utf8(body)
        .map_err(|_| AccessError::BadAnswer("/cdn-cgi/access/ssh-ca: not text".into()))
}
