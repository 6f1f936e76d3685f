//! OpenSSH keys and user certificates, sans-IO: the public key line a client sends
//! (`ssh-ed25519 AAAA… comment`), the certificate the edge signs for it
//! (`ssh-ed25519-cert-v01@openssh.com`, OpenSSH's PROTOCOL.certkeys) and the unencrypted
//! `openssh-key-v1` private key file `postern access ssh-gen` writes and the edge keeps its
//! SSH CA in.
//!
//! ```text
//!  certificate = string cert-algorithm        e.g. "ssh-ed25519-cert-v01@openssh.com"
//!                string nonce                 32 random bytes
//!                <subject key fields>         ed25519: string pk; ecdsa: string curve, string Q;
//!                                             rsa: mpint e, mpint n
//!                uint64 serial | uint32 type (1 = user) | string key id
//!                string valid principals      (a list of strings)
//!                uint64 valid after | uint64 valid before          (seconds since the epoch)
//!                string critical options | string extensions       (name, string data; sorted)
//!                string reserved | string signature key (the CA's public key blob)
//!                string signature             over every byte before it
//! ```
//!
//! Subject keys: `ssh-ed25519`, `ecdsa-sha2-nistp256` and `ssh-rsa` of at least
//! [`MIN_RSA_BITS`]; anything else (DSA, the other curves, security keys) is refused by name.
//! The CA is Ed25519 only (ring signs). Every length is checked by [`Reader`] before use and
//! every size is bounded by a constant in `limits.rs`.

use ring::signature::{self, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::limits::{
    MAX_SSH_CERT_BLOB, MAX_SSH_KEY_COMMENT, MAX_SSH_KEY_ID, MAX_SSH_KEY_LINE, MAX_SSH_PRINCIPALS,
    MAX_SSH_PRINCIPAL_LEN,
};
use crate::proto::base64;
use crate::proto::reader::Reader;

/// Smallest RSA modulus accepted as a subject key (OpenSSH's own floor is 1024).
pub const MIN_RSA_BITS: usize = 2048;
/// Certificate type of a user certificate (PROTOCOL.certkeys `SSH_CERT_TYPE_USER`).
pub const USER_CERT: u32 = 1;
/// The extensions `ssh-keygen` grants by default, sorted: what a certificate carries unless
/// the application lists fewer.
pub const DEFAULT_EXTENSIONS: &[&str] = &[
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
];

/// Why a key, certificate or key file was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The line or blob is longer than its bound in `limits.rs`.
    TooLong,
    /// Not an OpenSSH key (or certificate, or key file): says which part.
    Malformed(&'static str),
    /// A key type postern does not sign, named (escaped, clipped).
    Unsupported(String),
    /// An RSA key smaller than [`MIN_RSA_BITS`].
    WeakRsa(usize),
    /// A principal that is empty, too long or has characters outside `[A-Za-z0-9._@+-]`.
    BadPrincipal(String),
    /// The certificate's signature does not verify with the key it names.
    BadSignature,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::TooLong => write!(f, "the key is longer than {MAX_SSH_KEY_LINE} bytes"),
            KeyError::Malformed(what) => write!(f, "not an OpenSSH public key: {what}"),
            KeyError::Unsupported(name) => write!(
                f,
                "key type {name} is not supported: use ssh-ed25519 (ssh-keygen -t ed25519), \
                 ecdsa-sha2-nistp256 or ssh-rsa"
            ),
            KeyError::WeakRsa(bits) => write!(
                f,
                "RSA key of {bits} bits: at least {MIN_RSA_BITS} are needed"
            ),
            KeyError::BadPrincipal(p) => write!(
                f,
                "principal {p} is not a user name (1 to {MAX_SSH_PRINCIPAL_LEN} of \
                 A-Z a-z 0-9 . _ @ + -, not starting with -)"
            ),
            KeyError::BadSignature => write!(f, "the certificate's signature does not verify"),
        }
    }
}

impl std::error::Error for KeyError {}

/// A subject key type postern signs certificates for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Ed25519,
    EcdsaP256,
    Rsa,
}

impl Algorithm {
    /// The public key's name (`ssh-ed25519`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ssh-ed25519",
            Algorithm::EcdsaP256 => "ecdsa-sha2-nistp256",
            Algorithm::Rsa => "ssh-rsa",
        }
    }

    /// The name of a certificate for such a key.
    pub fn cert_name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ssh-ed25519-cert-v01@openssh.com",
            Algorithm::EcdsaP256 => "ecdsa-sha2-nistp256-cert-v01@openssh.com",
            Algorithm::Rsa => "ssh-rsa-cert-v01@openssh.com",
        }
    }

    fn from_name(name: &[u8]) -> Result<Self, KeyError> {
        match name {
            b"ssh-ed25519" => Ok(Algorithm::Ed25519),
            b"ecdsa-sha2-nistp256" => Ok(Algorithm::EcdsaP256),
            b"ssh-rsa" => Ok(Algorithm::Rsa),
            other => Err(KeyError::Unsupported(shown(other))),
        }
    }

    fn from_cert_name(name: &[u8]) -> Result<Self, KeyError> {
        [Algorithm::Ed25519, Algorithm::EcdsaP256, Algorithm::Rsa]
            .into_iter()
            .find(|a| a.cert_name().as_bytes() == name)
            .ok_or_else(|| KeyError::Unsupported(shown(name)))
    }
}

/// Peer text as it may appear in an error: printable ASCII, clipped.
fn shown(bytes: &[u8]) -> String {
    let mut out: String = bytes
        .iter()
        .take(40)
        .map(|&b| {
            if b.is_ascii_graphic() {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    if bytes.len() > 40 {
        out.push('…');
    }
    format!("{out:?}")
}

/// A checked OpenSSH public key: its type and its wire blob (`string name` then the fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: Algorithm,
    blob: Vec<u8>,
}

/// One SSH `string` (u32 length, bytes).
fn string<'a>(r: &mut Reader<'a>) -> Option<&'a [u8]> {
    let len = usize::try_from(r.u32()?).ok()?;
    r.take(len)
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    let len = u32::try_from(s.len()).expect("bug: SSH string longer than u32");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
}

/// Reads the subject key fields of `algorithm` (after its name) and checks them.
fn key_fields(r: &mut Reader<'_>, algorithm: Algorithm) -> Result<(), KeyError> {
    match algorithm {
        Algorithm::Ed25519 => {
            let pk = string(r).ok_or(KeyError::Malformed("truncated ed25519 key"))?;
            if pk.len() != 32 {
                return Err(KeyError::Malformed("an ed25519 key is 32 bytes"));
            }
        }
        Algorithm::EcdsaP256 => {
            let curve = string(r).ok_or(KeyError::Malformed("truncated ecdsa key"))?;
            if curve != b"nistp256" {
                return Err(KeyError::Malformed(
                    "ecdsa-sha2-nistp256 names another curve",
                ));
            }
            let q = string(r).ok_or(KeyError::Malformed("truncated ecdsa key"))?;
            if q.len() != 65 || q[0] != 4 {
                return Err(KeyError::Malformed(
                    "a P-256 point is 65 bytes, uncompressed",
                ));
            }
        }
        Algorithm::Rsa => {
            let e = string(r).ok_or(KeyError::Malformed("truncated rsa key"))?;
            let n = string(r).ok_or(KeyError::Malformed("truncated rsa key"))?;
            let e = positive_mpint(e).ok_or(KeyError::Malformed("bad rsa exponent"))?;
            if e.is_empty() || e.len() > 8 || e[e.len() - 1] & 1 == 0 {
                return Err(KeyError::Malformed("bad rsa exponent"));
            }
            let n = positive_mpint(n).ok_or(KeyError::Malformed("bad rsa modulus"))?;
            let bits = n.first().map_or(0, |&top| {
                (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize)
            });
            if bits < MIN_RSA_BITS {
                return Err(KeyError::WeakRsa(bits));
            }
        }
    }
    Ok(())
}

/// The magnitude of a non-negative SSH mpint, leading zeros stripped; `None` if negative.
fn positive_mpint(m: &[u8]) -> Option<&[u8]> {
    if m.first().is_some_and(|&b| b & 0x80 != 0) {
        return None;
    }
    let start = m.iter().position(|&b| b != 0).unwrap_or(m.len());
    Some(&m[start..])
}

impl PublicKey {
    /// Parses one `authorized_keys`-style line without options: `type base64 [comment]`.
    pub fn parse_line(line: &str) -> Result<PublicKey, KeyError> {
        if line.len() > MAX_SSH_KEY_LINE {
            return Err(KeyError::TooLong);
        }
        let mut words = line.split_ascii_whitespace();
        let name = words.next().ok_or(KeyError::Malformed("empty line"))?;
        let algorithm = Algorithm::from_name(name.as_bytes())?;
        let b64 = words
            .next()
            .ok_or(KeyError::Malformed("no base64 after the key type"))?;
        let blob = base64::decode(b64).map_err(|_| KeyError::Malformed("bad base64"))?;
        let key = PublicKey::parse_blob(&blob)?;
        if key.algorithm != algorithm {
            return Err(KeyError::Malformed(
                "the line and the key name different types",
            ));
        }
        Ok(key)
    }

    /// Parses a public key's wire blob (`string name`, then its fields, nothing after).
    pub fn parse_blob(blob: &[u8]) -> Result<PublicKey, KeyError> {
        if blob.len() > MAX_SSH_KEY_LINE {
            return Err(KeyError::TooLong);
        }
        let mut r = Reader::new(blob);
        let name = string(&mut r).ok_or(KeyError::Malformed("truncated key type"))?;
        let algorithm = Algorithm::from_name(name)?;
        key_fields(&mut r, algorithm)?;
        if !r.is_empty() {
            return Err(KeyError::Malformed("bytes after the key"));
        }
        Ok(PublicKey {
            algorithm,
            blob: blob.to_vec(),
        })
    }

    /// An Ed25519 key from its 32 bytes.
    pub fn ed25519(pk: &[u8; 32]) -> PublicKey {
        let mut blob = Vec::with_capacity(51);
        put_string(&mut blob, b"ssh-ed25519");
        put_string(&mut blob, pk);
        PublicKey {
            algorithm: Algorithm::Ed25519,
            blob,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The wire blob.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// The blob without its leading name: the fields a certificate copies.
    fn fields(&self) -> &[u8] {
        &self.blob[4 + self.algorithm.name().len()..]
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.blob);
        let b64 = base64::encode(digest.as_ref());
        format!("SHA256:{}", b64.trim_end_matches('='))
    }

    /// The `authorized_keys`-style line; `comment` is written only if it is one printable
    /// word-ish string of bounded length.
    pub fn to_line(&self, comment: &str) -> String {
        let mut line = format!("{} {}", self.algorithm.name(), base64::encode(&self.blob));
        if !comment.is_empty()
            && comment.len() <= MAX_SSH_KEY_COMMENT
            && comment.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            line.push(' ');
            line.push_str(comment);
        }
        line
    }
}

/// True if `p` may be a certificate principal: 1 to [`MAX_SSH_PRINCIPAL_LEN`] bytes of
/// `[A-Za-z0-9._@+-]`, not starting with `-`. No wildcard, comma or space can slip in.
pub fn valid_principal(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= MAX_SSH_PRINCIPAL_LEN
        && !p.starts_with('-')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'+' | b'-'))
}

/// The fields of an OpenSSH certificate (what is signed, less the CA's key and signature).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    pub nonce: Vec<u8>,
    pub key: PublicKey,
    pub serial: u64,
    pub cert_type: u32,
    pub key_id: String,
    pub principals: Vec<String>,
    pub valid_after: u64,
    pub valid_before: u64,
    /// Name and data (the data as it goes on the wire, itself an SSH string for the options
    /// OpenSSH defines), sorted by name.
    pub critical_options: Vec<(String, Vec<u8>)>,
    /// Name and data (empty for the `permit-*` flags), sorted by name.
    pub extensions: Vec<(String, Vec<u8>)>,
}

/// Appends a sorted, unique list of (name, data) pairs as SSH does: a string of pairs.
fn put_pairs(out: &mut Vec<u8>, pairs: &[(String, Vec<u8>)]) {
    let mut inner = Vec::new();
    for (name, data) in pairs {
        put_string(&mut inner, name.as_bytes());
        put_string(&mut inner, data);
    }
    put_string(out, &inner);
}

fn sorted_unique(pairs: &[(String, Vec<u8>)]) -> bool {
    pairs.windows(2).all(|w| w[0].0 < w[1].0)
}

fn parse_pairs(blob: &[u8]) -> Result<Vec<(String, Vec<u8>)>, KeyError> {
    let mut r = Reader::new(blob);
    let mut out = Vec::new();
    while !r.is_empty() {
        if out.len() >= MAX_SSH_PRINCIPALS {
            return Err(KeyError::Malformed("too many options or extensions"));
        }
        let name = string(&mut r).ok_or(KeyError::Malformed("truncated extension"))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| KeyError::Malformed("extension name is not UTF-8"))?;
        let data = string(&mut r).ok_or(KeyError::Malformed("truncated extension"))?;
        out.push((name.to_owned(), data.to_vec()));
    }
    if !sorted_unique(&out) {
        return Err(KeyError::Malformed(
            "options or extensions not sorted and unique",
        ));
    }
    Ok(out)
}

impl Certificate {
    /// Checks the fields an encoder must never write: no principal (valid for every user),
    /// bad principals, an empty or inverted validity, unsorted extensions.
    fn check(&self) -> Result<(), KeyError> {
        if self.principals.is_empty() {
            return Err(KeyError::Malformed("no principal: valid for any user"));
        }
        if self.principals.len() > MAX_SSH_PRINCIPALS {
            return Err(KeyError::Malformed("too many principals"));
        }
        if let Some(p) = self.principals.iter().find(|p| !valid_principal(p)) {
            return Err(KeyError::BadPrincipal(shown(p.as_bytes())));
        }
        if self.key_id.len() > MAX_SSH_KEY_ID
            || !self
                .key_id
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(KeyError::Malformed(
                "key id not printable ASCII or too long",
            ));
        }
        if self.valid_after >= self.valid_before {
            return Err(KeyError::Malformed(
                "valid after is not before valid before",
            ));
        }
        if !sorted_unique(&self.critical_options) || !sorted_unique(&self.extensions) {
            return Err(KeyError::Malformed(
                "options or extensions not sorted and unique",
            ));
        }
        if self.nonce.len() < 16 || self.nonce.len() > 64 {
            return Err(KeyError::Malformed("nonce of 16 to 64 bytes"));
        }
        Ok(())
    }

    /// The certificate's wire blob, signed by `ca`.
    pub fn sign(&self, ca: &Ed25519KeyPair) -> Result<Vec<u8>, KeyError> {
        self.check()?;
        let mut out = Vec::with_capacity(512);
        put_string(&mut out, self.key.algorithm.cert_name().as_bytes());
        put_string(&mut out, &self.nonce);
        out.extend_from_slice(self.key.fields());
        out.extend_from_slice(&self.serial.to_be_bytes());
        out.extend_from_slice(&self.cert_type.to_be_bytes());
        put_string(&mut out, self.key_id.as_bytes());
        let mut principals = Vec::new();
        for p in &self.principals {
            put_string(&mut principals, p.as_bytes());
        }
        put_string(&mut out, &principals);
        out.extend_from_slice(&self.valid_after.to_be_bytes());
        out.extend_from_slice(&self.valid_before.to_be_bytes());
        put_pairs(&mut out, &self.critical_options);
        put_pairs(&mut out, &self.extensions);
        put_string(&mut out, b""); // reserved
        let ca_key: &[u8; 32] = ca
            .public_key()
            .as_ref()
            .try_into()
            .expect("bug: an Ed25519 public key is 32 bytes");
        put_string(&mut out, PublicKey::ed25519(ca_key).blob());
        let sig = ca.sign(&out);
        let mut sig_blob = Vec::with_capacity(83);
        put_string(&mut sig_blob, b"ssh-ed25519");
        put_string(&mut sig_blob, sig.as_ref());
        put_string(&mut out, &sig_blob);
        Ok(out)
    }

    /// Parses a certificate blob and verifies its signature (Ed25519 CAs only). Returns the
    /// fields and the CA's public key.
    pub fn parse(blob: &[u8]) -> Result<(Certificate, PublicKey), KeyError> {
        if blob.len() > MAX_SSH_CERT_BLOB {
            return Err(KeyError::TooLong);
        }
        let truncated = KeyError::Malformed("truncated certificate");
        let mut r = Reader::new(blob);
        let name = string(&mut r).ok_or(truncated.clone())?;
        let algorithm = Algorithm::from_cert_name(name)?;
        let nonce = string(&mut r).ok_or(truncated.clone())?.to_vec();
        let fields_at = r.position();
        key_fields(&mut r, algorithm)?;
        let fields_end = r.position();
        let mut key_blob = Vec::new();
        put_string(&mut key_blob, algorithm.name().as_bytes());
        key_blob.extend_from_slice(&blob[fields_at..fields_end]);
        let key = PublicKey {
            algorithm,
            blob: key_blob,
        };
        let serial = r.u64().ok_or(truncated.clone())?;
        let cert_type = r.u32().ok_or(truncated.clone())?;
        let key_id = std::str::from_utf8(string(&mut r).ok_or(truncated.clone())?)
            .map_err(|_| KeyError::Malformed("key id is not UTF-8"))?
            .to_owned();
        let mut pr = Reader::new(string(&mut r).ok_or(truncated.clone())?);
        let mut principals = Vec::new();
        while !pr.is_empty() {
            if principals.len() >= MAX_SSH_PRINCIPALS {
                return Err(KeyError::Malformed("too many principals"));
            }
            let p = string(&mut pr).ok_or(KeyError::Malformed("truncated principal"))?;
            let p =
                std::str::from_utf8(p).map_err(|_| KeyError::Malformed("principal not UTF-8"))?;
            principals.push(p.to_owned());
        }
        let valid_after = r.u64().ok_or(truncated.clone())?;
        let valid_before = r.u64().ok_or(truncated.clone())?;
        let critical_options = parse_pairs(string(&mut r).ok_or(truncated.clone())?)?;
        let extensions = parse_pairs(string(&mut r).ok_or(truncated.clone())?)?;
        let _reserved = string(&mut r).ok_or(truncated.clone())?;
        let ca = PublicKey::parse_blob(string(&mut r).ok_or(truncated.clone())?)?;
        let signed_len = r.position();
        let sig = string(&mut r).ok_or(truncated)?;
        if !r.is_empty() {
            return Err(KeyError::Malformed("bytes after the signature"));
        }
        if ca.algorithm != Algorithm::Ed25519 {
            return Err(KeyError::Unsupported(ca.algorithm.name().to_owned()));
        }
        let mut sr = Reader::new(sig);
        let sig_name = string(&mut sr).ok_or(KeyError::BadSignature)?;
        let sig_bytes = string(&mut sr).ok_or(KeyError::BadSignature)?;
        if sig_name != b"ssh-ed25519" || !sr.is_empty() {
            return Err(KeyError::BadSignature);
        }
        UnparsedPublicKey::new(&signature::ED25519, &ca.fields()[4..])
            .verify(&blob[..signed_len], sig_bytes)
            .map_err(|_| KeyError::BadSignature)?;
        let cert = Certificate {
            nonce,
            key,
            serial,
            cert_type,
            key_id,
            principals,
            valid_after,
            valid_before,
            critical_options,
            extensions,
        };
        Ok((cert, ca))
    }

    /// Parses a certificate line (`ssh-ed25519-cert-v01@openssh.com AAAA… [comment]`).
    pub fn parse_line(line: &str) -> Result<(Certificate, PublicKey), KeyError> {
        if line.len() > MAX_SSH_CERT_BLOB * 2 {
            return Err(KeyError::TooLong);
        }
        let mut words = line.split_ascii_whitespace();
        let name = words.next().ok_or(KeyError::Malformed("empty line"))?;
        let b64 = words
            .next()
            .ok_or(KeyError::Malformed("no base64 after the certificate type"))?;
        let blob = base64::decode(b64).map_err(|_| KeyError::Malformed("bad base64"))?;
        let (cert, ca) = Certificate::parse(&blob)?;
        if cert.key.algorithm.cert_name() != name {
            return Err(KeyError::Malformed(
                "the line and the certificate name different types",
            ));
        }
        Ok((cert, ca))
    }
}

/// The text line of a certificate blob made by [`Certificate::sign`] for `key`.
pub fn cert_line(key: &PublicKey, blob: &[u8], comment: &str) -> String {
    let mut line = format!("{} {}", key.algorithm.cert_name(), base64::encode(blob));
    if !comment.is_empty() && comment.bytes().all(|b| b.is_ascii_graphic()) {
        line.push(' ');
        line.push_str(comment);
    }
    line
}

/// The public key of an Ed25519 key pair, as a key.
pub fn ed25519_public(pair: &Ed25519KeyPair) -> PublicKey {
    let pk: &[u8; 32] = pair
        .public_key()
        .as_ref()
        .try_into()
        .expect("bug: an Ed25519 public key is 32 bytes");
    PublicKey::ed25519(pk)
}

const PRIVATE_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const PRIVATE_END: &str = "-----END OPENSSH PRIVATE KEY-----";
const PRIVATE_MAGIC: &[u8] = b"openssh-key-v1\0";

/// An unencrypted `openssh-key-v1` file holding one Ed25519 key (the format `ssh-keygen`
/// writes without a passphrase). `check` is the file's random check integer.
pub fn encode_private_ed25519(seed: &[u8; 32], comment: &str, check: u32) -> String {
    let pair = Ed25519KeyPair::from_seed_unchecked(seed).expect("bug: any 32 bytes are a seed");
    let public = ed25519_public(&pair);
    let mut section = Vec::with_capacity(160);
    section.extend_from_slice(&check.to_be_bytes());
    section.extend_from_slice(&check.to_be_bytes());
    section.extend_from_slice(public.blob());
    let mut secret = Vec::with_capacity(64);
    secret.extend_from_slice(seed);
    secret.extend_from_slice(pair.public_key().as_ref());
    put_string(&mut section, &secret);
    put_string(&mut section, comment.as_bytes());
    let mut pad = 1u8;
    while section.len() % 8 != 0 {
        section.push(pad);
        pad += 1;
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(PRIVATE_MAGIC);
    put_string(&mut out, b"none");
    put_string(&mut out, b"none");
    put_string(&mut out, b"");
    out.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut out, public.blob());
    put_string(&mut out, &section);
    let b64 = base64::encode(&out);
    let mut text = String::with_capacity(b64.len() + 80);
    text.push_str(PRIVATE_BEGIN);
    text.push('\n');
    for chunk in b64.as_bytes().chunks(70) {
        text.push_str(std::str::from_utf8(chunk).expect("bug: base64 is ASCII"));
        text.push('\n');
    }
    text.push_str(PRIVATE_END);
    text.push('\n');
    secret.fill(0);
    text
}

/// Reads an unencrypted `openssh-key-v1` file with one Ed25519 key: its 32-byte seed.
pub fn decode_private_ed25519(text: &str) -> Result<[u8; 32], KeyError> {
    if text.len() > MAX_SSH_KEY_LINE * 2 {
        return Err(KeyError::TooLong);
    }
    let body = text
        .trim()
        .strip_prefix(PRIVATE_BEGIN)
        .and_then(|t| t.strip_suffix(PRIVATE_END))
        .ok_or(KeyError::Malformed("not an OPENSSH PRIVATE KEY file"))?;
    let raw = base64::decode_lenient_ws(body).map_err(|_| KeyError::Malformed("bad base64"))?;
    let bad = KeyError::Malformed("not an unencrypted ed25519 openssh-key-v1 file");
    let mut r = Reader::new(&raw);
    if r.take(PRIVATE_MAGIC.len()) != Some(PRIVATE_MAGIC)
        || string(&mut r) != Some(b"none")
        || string(&mut r) != Some(b"none")
        || string(&mut r) != Some(b"")
        || r.u32() != Some(1)
    {
        return Err(bad);
    }
    let public = PublicKey::parse_blob(string(&mut r).ok_or(bad.clone())?)?;
    let section = string(&mut r).ok_or(bad.clone())?;
    let mut s = Reader::new(section);
    let (a, b) = (s.u32(), s.u32());
    if a.is_none() || a != b || string(&mut s) != Some(b"ssh-ed25519") {
        return Err(bad);
    }
    let pk = string(&mut s).ok_or(bad.clone())?;
    let secret = string(&mut s).ok_or(bad.clone())?;
    if public.algorithm != Algorithm::Ed25519 || pk != &public.fields()[4..] || secret.len() != 64 {
        return Err(bad);
    }
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&secret[..32]);
    Ed25519KeyPair::from_seed_and_public_key(&seed, pk)
        .map_err(|_| KeyError::Malformed("the private and public halves do not match"))?;
    Ok(seed)
}

#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub fn fuzz_public_key(data: &[u8]) {
    if let Ok(key) = PublicKey::parse_blob(data) {
        assert_eq!(key.blob(), data);
        let again = PublicKey::parse_line(&key.to_line("c")).expect("bug: own line refused");
        assert_eq!(again, key);
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(key) = PublicKey::parse_line(&text) {
        assert_eq!(PublicKey::parse_blob(key.blob()).as_ref(), Ok(&key));
    }
    let _ = Certificate::parse(data);
    let _ = decode_private_ed25519(&text);
}

/// Signs a certificate made of `data` (principals, key id, times, extensions drawn from it)
/// with a fixed CA and checks that parsing gives every field back.
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub fn fuzz_certificate_roundtrip(data: &[u8]) {
    let ca = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).expect("bug: fixed seed");
    let mut r = Reader::new(data);
    let Some(pk) = r.take(32) else { return };
    let pk: [u8; 32] = pk.try_into().expect("bug: took 32");
    let (Some(serial), Some(after), Some(before), Some(n)) = (r.u64(), r.u64(), r.u64(), r.u8())
    else {
        return;
    };
    let mut principals = Vec::new();
    for _ in 0..n % 40 {
        let Some(len) = r.u8() else { return };
        let Some(p) = r.take(usize::from(len % 80)) else {
            return;
        };
        principals.push(String::from_utf8_lossy(p).into_owned());
    }
    let key_id = String::from_utf8_lossy(r.rest()).into_owned();
    let extensions = DEFAULT_EXTENSIONS
        .iter()
        .take(usize::from(n % 6))
        .map(|e| ((*e).to_owned(), Vec::new()))
        .collect();
    let cert = Certificate {
        nonce: vec![n; 32],
        key: PublicKey::ed25519(&pk),
        serial,
        cert_type: USER_CERT,
        key_id,
        principals,
        valid_after: after,
        valid_before: before,
        critical_options: Vec::new(),
        extensions,
    };
    let Ok(blob) = cert.sign(&ca) else { return };
    let (parsed, by) = Certificate::parse(&blob).expect("bug: own certificate refused");
    assert_eq!(parsed, cert);
    assert_eq!(by, ed25519_public(&ca));
    let line = cert_line(&cert.key, &blob, "x");
    assert_eq!(Certificate::parse_line(&line).map(|c| c.0), Ok(cert));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::TempDir;
    use std::path::Path;
    use std::process::Command;

    /// Runs `ssh-keygen` (a real one: these are the vectors), returning stdout.
    fn keygen(args: &[&str]) -> String {
        let out = Command::new("ssh-keygen")
            .args(args)
            .output()
            .expect("ssh-keygen must be installed (openssh-client)");
        assert!(
            out.status.success(),
            "ssh-keygen {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn new_key(dir: &Path, name: &str, kind: &[&str]) -> String {
        let path = dir.join(name);
        let p = path.to_str().unwrap();
        let mut args = vec!["-q", "-N", "", "-C", "test", "-f", p];
        args.extend_from_slice(kind);
        keygen(&args);
        std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap()
    }

    fn ca() -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[42u8; 32]).unwrap()
    }

    fn cert_for(key: PublicKey, principals: &[&str]) -> Certificate {
        Certificate {
            nonce: vec![9; 32],
            key,
            serial: 0x0102_0304_0506_0708,
            cert_type: USER_CERT,
            key_id: "postern:alice@example.com".into(),
            principals: principals.iter().map(|p| (*p).to_owned()).collect(),
            valid_after: 1_700_000_000,
            valid_before: 1_700_000_180,
            critical_options: Vec::new(),
            extensions: DEFAULT_EXTENSIONS
                .iter()
                .map(|e| ((*e).to_owned(), Vec::new()))
                .collect(),
        }
    }

    #[test]
    fn ssh_keygen_public_keys_parse_with_the_same_fingerprint() {
        let tmp = TempDir::new("sshkey-pub");
        for (name, kind, alg) in [
            ("ed", &["-t", "ed25519"][..], Algorithm::Ed25519),
            (
                "ec",
                &["-t", "ecdsa", "-b", "256"][..],
                Algorithm::EcdsaP256,
            ),
            ("rsa", &["-t", "rsa", "-b", "2048"][..], Algorithm::Rsa),
        ] {
            let line = new_key(&tmp.0, name, kind);
            let key = PublicKey::parse_line(&line).unwrap();
            assert_eq!(key.algorithm(), alg);
            let pub_path = tmp.0.join(format!("{name}.pub"));
            let listed = keygen(&["-l", "-E", "sha256", "-f", pub_path.to_str().unwrap()]);
            assert!(
                listed.contains(&key.fingerprint()),
                "{listed} vs {}",
                key.fingerprint()
            );
            assert_eq!(
                key.to_line("test").trim(),
                line.trim(),
                "our line is ssh-keygen's"
            );
        }
    }

    #[test]
    fn unsupported_and_weak_keys_are_refused_by_name() {
        let tmp = TempDir::new("sshkey-weak");
        let ec384 = new_key(&tmp.0, "ec384", &["-t", "ecdsa", "-b", "384"]);
        let e = PublicKey::parse_line(&ec384).unwrap_err();
        assert!(e.to_string().contains("ecdsa-sha2-nistp384"), "{e}");
        let rsa1024 = new_key(&tmp.0, "rsa1024", &["-t", "rsa", "-b", "1024"]);
        assert_eq!(
            PublicKey::parse_line(&rsa1024),
            Err(KeyError::WeakRsa(1024))
        );
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 !!!!",
            "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
            // The line says ed25519, the blob says rsa.
            &format!("ssh-ed25519 {}", ec384.split_whitespace().nth(1).unwrap()),
        ] {
            assert!(PublicKey::parse_line(bad).is_err(), "{bad:?}");
        }
        let long = format!("ssh-ed25519 {}", "A".repeat(MAX_SSH_KEY_LINE));
        assert_eq!(PublicKey::parse_line(&long), Err(KeyError::TooLong));
    }

    #[test]
    fn every_truncation_or_extension_of_a_key_blob_is_refused() {
        let key = PublicKey::ed25519(&[1u8; 32]);
        let blob = key.blob();
        for n in 0..blob.len() {
            assert!(PublicKey::parse_blob(&blob[..n]).is_err(), "prefix {n}");
        }
        let mut longer = blob.to_vec();
        longer.push(0);
        assert!(PublicKey::parse_blob(&longer).is_err());
        assert_eq!(PublicKey::parse_blob(blob).as_ref(), Ok(&key));
    }

    #[test]
    fn ssh_keygen_lists_our_certificate_with_its_fields() {
        let tmp = TempDir::new("sshkey-cert");
        for (name, kind) in [
            ("ed", &["-t", "ed25519"][..]),
            ("ec", &["-t", "ecdsa", "-b", "256"][..]),
            ("rsa", &["-t", "rsa", "-b", "2048"][..]),
        ] {
            let key = PublicKey::parse_line(&new_key(&tmp.0, name, kind)).unwrap();
            let cert = cert_for(key.clone(), &["alice", "deploy"]);
            let blob = cert.sign(&ca()).unwrap();
            let path = tmp.0.join(format!("{name}-cert.pub"));
            std::fs::write(&path, cert_line(&key, &blob, "alice@example.com")).unwrap();
            // ssh-keygen checks the CA's signature while it parses.
            let listed = keygen(&["-L", "-f", path.to_str().unwrap()]);
            let kind = format!("Type: {} user certificate", key.algorithm().cert_name());
            assert!(listed.contains(&kind), "{listed}");
            assert!(listed.contains(&key.fingerprint()), "{listed}");
            assert!(
                listed.contains(&ed25519_public(&ca()).fingerprint()),
                "{listed}"
            );
            assert!(
                listed.contains("Key ID: \"postern:alice@example.com\""),
                "{listed}"
            );
            assert!(listed.contains("Serial: 72623859790382856"), "{listed}");
            assert!(
                listed.contains("alice\n") && listed.contains("deploy\n"),
                "{listed}"
            );
            for e in DEFAULT_EXTENSIONS {
                assert!(listed.contains(e), "{e}: {listed}");
            }
            assert!(listed.contains("Critical Options: (none)"), "{listed}");
            assert_eq!(
                Certificate::parse(&blob).unwrap(),
                (cert, ed25519_public(&ca()))
            );
        }
    }

    #[test]
    fn ssh_keygen_signed_certificate_parses_and_verifies() {
        let tmp = TempDir::new("sshkey-theirs");
        new_key(&tmp.0, "ca", &["-t", "ed25519"]);
        let user = PublicKey::parse_line(&new_key(&tmp.0, "user", &["-t", "ed25519"])).unwrap();
        let ca_path = tmp.0.join("ca");
        let user_path = tmp.0.join("user.pub");
        keygen(&[
            "-q",
            "-s",
            ca_path.to_str().unwrap(),
            "-I",
            "their-id",
            "-n",
            "bob,carol",
            "-z",
            "42",
            "-V",
            "20300101000000:20300101001000",
            user_path.to_str().unwrap(),
        ]);
        let line = std::fs::read_to_string(tmp.0.join("user-cert.pub")).unwrap();
        let (cert, by) = Certificate::parse_line(&line).unwrap();
        assert_eq!(cert.key, user);
        assert_eq!(cert.serial, 42);
        assert_eq!(cert.cert_type, USER_CERT);
        assert_eq!(cert.key_id, "their-id");
        assert_eq!(cert.principals, ["bob", "carol"]);
        assert_eq!(cert.valid_before - cert.valid_after, 600);
        let names: Vec<&str> = cert.extensions.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, DEFAULT_EXTENSIONS);
        let ca_line = std::fs::read_to_string(tmp.0.join("ca.pub")).unwrap();
        assert_eq!(by, PublicKey::parse_line(&ca_line).unwrap());
        // One flipped bit anywhere in what is signed: refused.
        let blob = base64::decode(line.split_whitespace().nth(1).unwrap()).unwrap();
        let mut forged = blob.clone();
        forged[60] ^= 1;
        assert!(Certificate::parse(&forged).is_err());
        for n in 0..blob.len() {
            assert!(Certificate::parse(&blob[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn a_certificate_for_no_or_bad_principals_is_never_signed() {
        let key = PublicKey::ed25519(&[3u8; 32]);
        assert!(cert_for(key.clone(), &[]).sign(&ca()).is_err());
        for bad in [
            "",
            "-oProxyCommand",
            "a b",
            "a,b",
            "*",
            "r\u{e9}",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(
                    cert_for(key.clone(), &[bad]).sign(&ca()),
                    Err(KeyError::BadPrincipal(_))
                ),
                "{bad:?}"
            );
        }
        let mut inverted = cert_for(key.clone(), &["alice"]);
        inverted.valid_before = inverted.valid_after;
        assert!(inverted.sign(&ca()).is_err());
        let mut unsorted = cert_for(key, &["alice"]);
        unsorted.extensions.reverse();
        assert!(unsorted.sign(&ca()).is_err());
    }

    #[test]
    fn our_private_key_file_is_read_by_ssh_keygen_and_back() {
        let tmp = TempDir::new("sshkey-priv");
        let seed = [5u8; 32];
        let text = encode_private_ed25519(&seed, "postern", 0xdead_beef);
        let path = tmp.0.join("key");
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let public = keygen(&["-y", "-f", path.to_str().unwrap()]);
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        assert_eq!(
            PublicKey::parse_line(&public).unwrap(),
            ed25519_public(&pair)
        );
        assert_eq!(decode_private_ed25519(&text), Ok(seed));
        // And a key file ssh-keygen wrote is read back to the public key it lists.
        let line = new_key(&tmp.0, "theirs", &["-t", "ed25519"]);
        let theirs = std::fs::read_to_string(tmp.0.join("theirs")).unwrap();
        let seed = decode_private_ed25519(&theirs).unwrap();
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        assert_eq!(PublicKey::parse_line(&line).unwrap(), ed25519_public(&pair));
        assert!(decode_private_ed25519(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----"
        )
        .is_err());
    }
}
