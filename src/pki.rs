//! Certificate authorities, certificates and the origin credential (`cert.pem`, DESIGN.md §3).
//!
//! Contract:
//! - An [`Authority`] is a self-signed ECDSA P-256 CA kept in the state directory as
//!   `{stem}.pem` (certificate, 0644) and `{stem}.key` (PKCS#8, 0600). The edge has two: the dev
//!   TLS CA (`ca`, users pass its certificate as `--ca`) and the origin CA (`origin-ca`, which
//!   signs the client certificates tunnels present). Reloading rebuilds the issuer from the
//!   same distinguished name and key and proves, by issuing a probe certificate, that what it
//!   signs still chains to the stored certificate; a mismatch is an error, never a silent new CA.
//! - Server leaves (EKU serverAuth) and origin leaves (EKU clientAuth, SAN `zone` and `*.zone`)
//!   live one year and get a random serial.
//! - The origin credential is PEM, in this order: `PRIVATE KEY` (PKCS#8), `CERTIFICATE` (the
//!   origin certificate), `POSTERN EDGE` (base64 of JSON `{"zone":…,"edge":…}`), then zero or
//!   more `POSTERN EDGE CA` (CAs the origin trusts for the edge's TLS, in addition to system
//!   roots). [`OriginCredential::parse`] refuses anything else: unknown or repeated sections,
//!   a key that does not match the certificate, a certificate that does not cover the zone.
//! - [`pem_sections`] is the one PEM reader: bounded ([`MAX_PEM_BYTES`], [`MAX_PEM_SECTIONS`]),
//!   BEGIN/END labels must match, text outside sections is ignored (comments in bundles). It
//!   only finds the sections: the body of every section `rustls-pki-types` knows (`CERTIFICATE`,
//!   `PRIVATE KEY`, `EC PRIVATE KEY`, ...) is decoded by its `PemObject` reader, which decodes
//!   private keys in constant time; only postern's own sections (`POSTERN EDGE`,
//!   `POSTERN EDGE CA`) and other labels it does not know go through `proto::base64`.
//!
//! Keys are written only through files created with their final mode; [`OriginCredential`] and
//! [`Authority`] hold keys and have no `Debug`.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
    ServerName, UnixTime,
};
use serde::{Deserialize, Serialize};

use crate::store::{self, StateDir};

use crate::limits::MAX_BUNDLE_BYTES;
use crate::limits::MAX_BUNDLE_SECTIONS;
pub use crate::limits::MAX_PEM_BYTES;
pub use crate::limits::MAX_PEM_SECTIONS;

/// Lifetime of a CA certificate.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Lifetime of a leaf certificate.
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Backdating of `notBefore`, so a peer whose clock is a little behind accepts a new certificate.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// Where distributions keep the system trust store; the first that exists is read.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

const LABEL_KEY: &str = "PRIVATE KEY";
const LABEL_CERT: &str = "CERTIFICATE";
const LABEL_EDGE: &str = "POSTERN EDGE";
const LABEL_EDGE_CA: &str = "POSTERN EDGE CA";

/// What to do about a missing or bad origin credential.
const CREDENTIAL_FIX: &str = "run `postern tunnel login` or `postern edge origin-cert create`";

/// A certificate authority: its self-signed certificate and its signing key. No `Debug`.
pub struct Authority {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// Loads the CA `{stem}.pem` + `{stem}.key` from `state`, or creates both if neither exists.
    /// `common_name` must be the one the CA was created with.
    pub fn load_or_create(
        state: &StateDir,
        stem: &str,
        common_name: &str,
    ) -> io::Result<Authority> {
        let cert_name = format!("{stem}.pem");
        let key_name = format!("{stem}.key");
        match (state.read(&cert_name)?, state.read(&key_name)?) {
            (Some(cert), Some(key)) => {
                let dir = state.path();
                Authority::from_files(&cert, &key, common_name).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "CA {} / {} in {}: {e}; restore both files from a backup, or remove \
                             both to create a new CA (everything it issued stops being trusted)",
                            cert_name,
                            key_name,
                            dir.display()
                        ),
                    )
                })
            }
            (None, None) => {
                let key =
                    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
                let params = ca_params(common_name, SystemTime::now())?;
                let cert = params.self_signed(&key).map_err(rcgen_err)?;
                let cert_der = cert.der().clone();
                let cert_pem = pem_encode(LABEL_CERT, &cert_der);
                // Key first: a crash in between leaves a key without a certificate, which
                // load_or_create refuses loudly instead of replacing.
                state.write_atomic(&key_name, key.serialize_pem().as_bytes(), 0o600)?;
                state.write_atomic(&cert_name, cert_pem.as_bytes(), 0o644)?;
                log::info!("created CA {} in {}", cert_name, state.path().display());
                Ok(Authority {
                    cert_der,
                    cert_pem,
                    issuer: Issuer::new(params, key),
                })
            }
            (cert, _) => {
                let (have, missing) = if cert.is_some() {
                    (&cert_name, &key_name)
                } else {
                    (&key_name, &cert_name)
                };
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{have} exists in {} but {missing} does not; restore {missing}, or remove \
                         {have} to create a new CA",
                        state.path().display()
                    ),
                ))
            }
        }
    }

    fn from_files(cert: &[u8], key: &[u8], common_name: &str) -> Result<Authority, String> {
        let cert_der = first_section(cert, LABEL_CERT)?.ok_or("no CERTIFICATE section")?;
        let key_der = first_section(key, LABEL_KEY)?.ok_or("no PRIVATE KEY section")?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key_der),
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )
        .map_err(|e| format!("unusable key ({e})"))?;
        let cert_der = CertificateDer::from(cert_der);
        // Validity is not part of an issuer; only the name, key usages and key are used.
        let params = ca_params(common_name, SystemTime::now()).map_err(|e| e.to_string())?;
        let issuer = Issuer::new(params, key);
        let authority = Authority {
            cert_pem: pem_encode(LABEL_CERT, &cert_der),
            cert_der,
            issuer,
        };
        authority.check_chains()?;
        Ok(authority)
    }

    /// Issues a throwaway leaf and verifies it against the stored certificate.
    fn check_chains(&self) -> Result<(), String> {
        let (chain, _key) = self
            .issue_server(&["probe.invalid".to_owned()])
            .map_err(|e| e.to_string())?;
        verify_server_chain(&chain[0], &self.cert_der, "probe.invalid").map_err(|e| {
            format!(
                "the key or common name does not match the certificate ({e}); was the CA \
                 created with another name?"
            )
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// A server certificate for `names` (DNS names or IP addresses): chain `[leaf, ca]` and key.
    pub fn issue_server(
        &self,
        names: &[String],
    ) -> io::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let params = server_params(names)?;
        let (cert, key) = self.sign(params)?;
        Ok((vec![cert, self.cert_der()], key))
    }

    /// An origin (client) certificate for `zone`: SAN `zone` and `*.zone`, EKU clientAuth.
    pub fn issue_origin(
        &self,
        zone: &str,
    ) -> io::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        validate_zone(zone).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut params = leaf_params(vec![zone.to_owned(), format!("*.{zone}")], zone)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A named tunnel's (client) certificate: its one SAN is `<id>.tunnel.invalid`, EKU
    /// clientAuth. It covers no zone, so it can never register a hostname the ad-hoc way nor
    /// administer tunnels; the edge accepts it only as the tunnel `id` it has on record.
    pub fn issue_tunnel(
        &self,
        id: &str,
    ) -> io::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        if !valid_tunnel_id(id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid tunnel id {id:?}"),
            ));
        }
        let name = format!("{id}{TUNNEL_SAN_SUFFIX}");
        let mut params = leaf_params(vec![name.clone()], &name)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// [`Authority::issue_server`] for the one key of a `local_ca` zone's server certificates.
    pub fn issue_server_with(
        &self,
        names: &[String],
        key: &LeafKey,
    ) -> io::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let params = server_params(names)?;
        let cert = params.signed_by(&key.0, &self.issuer).map_err(rcgen_err)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.0.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert_der()], key_der))
    }

    fn sign(
        &self,
        params: CertificateParams,
    ) -> io::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_err)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key_der))
    }
}

/// The one key of the server certificates the edge's CA signs for the names of its
/// `local_ca` zones (a file in the key directory, PKCS#8 PEM, 0600, made on first use). Every
/// name, every restart and every edge with a copy of the key directory shows the same key,
/// which is what a client pins a zone session to (`access::edge_key`): with a key per name,
/// each application of the zone would need its own browser login. It is long-lived and shared
/// by every `local_ca` name: whoever holds it (with a certificate `ca.key` signs, or one that
/// is still valid) passes every client's pin for those zones.
pub struct LeafKey(KeyPair);

/// Whether [`LeafKey::load_or_create`] found the key or made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafKeyOrigin {
    Loaded,
    Created,
}

impl LeafKey {
    /// `name` from the state directory, or a new P-256 key written there first. The file is
    /// created only if it does not exist (two edges starting on one directory end up with the
    /// same key: the loser reads the winner's); a file other users may read is warned about.
    pub fn load_or_create(state: &StateDir, name: &str) -> io::Result<(LeafKey, LeafKeyOrigin)> {
        if let Some(key) = LeafKey::load(state, name)? {
            return Ok((key, LeafKeyOrigin::Loaded));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
        if !state.write_new(name, key.serialize_pem().as_bytes(), 0o600)? {
            // Another process created it between our read and our write: theirs wins.
            let theirs = LeafKey::load(state, name)?.ok_or_else(|| {
                io::Error::other(format!(
                    "{name} in {} appeared and vanished while the edge started; start it again",
                    state.path().display()
                ))
            })?;
            return Ok((theirs, LeafKeyOrigin::Loaded));
        }
        log::info!(
            "created {name} (the key of the local CA's server certificates) in {}",
            state.path().display()
        );
        Ok((LeafKey(key), LeafKeyOrigin::Created))
    }

    /// `name` from the state directory; `Ok(None)` if there is no such file.
    fn load(state: &StateDir, name: &str) -> io::Result<Option<LeafKey>> {
        let Some(pem) = state.read(name)? else {
            return Ok(None);
        };
        let path = state.path().join(name);
        if let Ok(meta) = fs::metadata(&path) {
            if meta.permissions().mode() & 0o077 != 0 {
                log::warn!(
                    "{} is readable by other users; chmod 600 it (whoever holds it passes the \
                     key check of every client's zone session for the local_ca zones)",
                    path.display()
                );
            }
        }
        let bad = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{name} in {}: {why}; restore it from a backup, or remove it to make a new \
                     one (clients then sign in with the browser once more per zone)",
                    state.path().display()
                ),
            )
        };
        let der = first_section(&pem, LABEL_KEY)
            .map_err(bad)?
            .ok_or_else(|| bad("no PRIVATE KEY section".into()))?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(der),
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )
        .map_err(|e| bad(format!("unusable key ({e})")))?;
        Ok(Some(LeafKey(key)))
    }

    /// The SHA-256 of this key's SubjectPublicKeyInfo: what [`spki_sha256`] gives for every
    /// certificate signed with it.
    pub fn spki_sha256(&self) -> [u8; 32] {
        use rcgen::PublicKeyData;
        sha256(&self.0.subject_public_key_info())
    }
}

/// The SHA-256 of the SubjectPublicKeyInfo (DER, with its outer SEQUENCE, as RFC 7469 pins
/// it) of `cert`; `None` for bytes that are not an X.509 certificate.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(sha256(parsed.subject_public_key_info().as_ref()))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Sets `notBefore` to `now - BACKDATE` and `notAfter` to `now + lifetime`. (`time` is rcgen's
/// dependency, not ours: its `OffsetDateTime` is reached through `rcgen::date_time_ymd`.)
fn set_validity(
    params: &mut CertificateParams,
    now: SystemTime,
    lifetime: Duration,
) -> io::Result<()> {
    let since_epoch = now
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| d.checked_sub(BACKDATE))
        .ok_or_else(|| io::Error::other("the system clock is before 1970"))?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch;
    params.not_after = epoch + since_epoch + BACKDATE + lifetime;
    Ok(())
}

fn ca_params(common_name: &str, now: SystemTime) -> io::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "postern");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now, CA_VALIDITY)?;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// A server certificate's parameters for `names` (the first is its common name).
fn server_params(names: &[String]) -> io::Result<CertificateParams> {
    let first = names.first().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a server certificate needs a name",
        )
    })?;
    let mut params = leaf_params(names.to_vec(), first)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

fn leaf_params(names: Vec<String>, common_name: &str) -> io::Result<CertificateParams> {
    let mut params = CertificateParams::new(names).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid certificate name ({e})"),
        )
    })?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, SystemTime::now(), LEAF_VALIDITY)?;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

fn random_serial() -> io::Result<SerialNumber> {
    let mut serial = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| io::Error::other("the system random number generator failed"))?;
    // Positive and without a leading zero byte, so it encodes in exactly 16 bytes.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&serial))
}

fn rcgen_err(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("certificate generation failed: {e}"))
}

/// Verifies `leaf` for `hostname` as a server certificate issued by `ca`, now.
fn verify_server_chain(
    leaf: &CertificateDer<'_>,
    ca: &CertificateDer<'_>,
    hostname: &str,
) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(ca)?;
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )?;
    let name = ServerName::try_from(hostname).map_err(|_| webpki::Error::MalformedDnsIdentifier)?;
    ee.verify_is_valid_for_subject_name(&name)
}

/// Checks that `zone` is a host name written in lowercase (`proto::dns`).
fn validate_zone(zone: &str) -> Result<(), String> {
    crate::proto::dns::check_lowercase_hostname(zone)
        .map_err(|why| format!("invalid zone {zone:?}: {why}"))
}

/// Lowercase hex SHA-256 of the certificate's DER: how the edge names an origin certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    store::hex(ring::digest::digest(&ring::digest::SHA256, cert.as_ref()).as_ref())
}

/// The certificate's serial number as lowercase hex, without leading zero bytes (how
/// `postern edge origin-cert revoke SERIAL` names it); `None` when the DER is not a
/// certificate. Reads only the outer SEQUENCEs, the optional version and the INTEGER.
pub fn serial_hex(cert: &CertificateDer<'_>) -> Option<String> {
    let element = der_element;
    let (0x30, certificate, _) = element(cert.as_ref())? else {
        return None;
    };
    let (0x30, tbs, _) = element(certificate)? else {
        return None;
    };
    let (mut tag, mut value, rest) = element(tbs)?;
    if tag == 0xa0 {
        (tag, value, _) = element(rest)?;
    }
    if tag != 0x02 || value.is_empty() {
        return None;
    }
    while value.len() > 1 && value[0] == 0 {
        value = &value[1..];
    }
    Some(store::hex(value))
}

/// One DER element at the start of `der`: its tag, its contents and what follows it.
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, &b| (l << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A certificate as a person checks it: `subject CN=…, issuer CN=…, valid until …, names …`,
/// read from its DER (no verification: this only describes what a peer presented, so every
/// text in it is escaped). `None` when the DER is not a certificate.
pub fn describe_certificate(cert: &CertificateDer<'_>) -> Option<String> {
    /// The common name (else the organization) of a `Name`.
    fn name(der: &[u8]) -> String {
        const CN: &[u8] = &[0x55, 0x04, 0x03];
        const O: &[u8] = &[0x55, 0x04, 0x0a];
        let (mut cn, mut o) = (None, None);
        let mut rdns = der;
        while let Some((0x31, set, rest)) = der_element(rdns) {
            rdns = rest;
            let mut atvs = set;
            while let Some((0x30, atv, rest)) = der_element(atvs) {
                atvs = rest;
                let Some((0x06, oid, value)) = der_element(atv) else {
                    continue;
                };
                let Some((_, text, _)) = der_element(value) else {
                    continue;
                };
                let text = String::from_utf8_lossy(text).into_owned();
                if oid == CN {
                    cn = Some(text);
                } else if oid == O {
                    o = Some(text);
                }
            }
        }
        match (cn, o) {
            (Some(cn), _) => format!("CN={}", crate::logging::escape(&cn, 128)),
            (None, Some(o)) => format!("O={}", crate::logging::escape(&o, 128)),
            (None, None) => "(no CN)".into(),
        }
    }
    /// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ` as `YYYY-MM-DD HH:MM:SS UTC`.
    fn time(tag: u8, der: &[u8]) -> Option<String> {
        let t = std::str::from_utf8(der).ok()?;
        let t = t.strip_suffix('Z')?;
        let full = match (tag, t.len()) {
            (0x17, 12) => {
                let yy: u32 = t[..2].parse().ok()?;
                format!("{}{t}", if yy >= 50 { "19" } else { "20" })
            }
            (0x18, 14) => t.to_owned(),
            _ => return None,
        };
        if !full.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(format!(
            "{}-{}-{} {}:{}:{} UTC",
            &full[..4],
            &full[4..6],
            &full[6..8],
            &full[8..10],
            &full[10..12],
            &full[12..14]
        ))
    }
    let (0x30, certificate, _) = der_element(cert.as_ref())? else {
        return None;
    };
    let (0x30, tbs, _) = der_element(certificate)? else {
        return None;
    };
    let (mut tag, _, mut rest) = der_element(tbs)?;
    if tag == 0xa0 {
        (tag, _, rest) = der_element(rest)?; // the serial
    }
    if tag != 0x02 {
        return None;
    }
    let (_, _, rest) = der_element(rest)?; // the signature algorithm
    let (0x30, issuer, rest) = der_element(rest)? else {
        return None;
    };
    let (0x30, validity, rest) = der_element(rest)? else {
        return None;
    };
    let (0x30, subject, _) = der_element(rest)? else {
        return None;
    };
    let (_, _, after) = der_element(validity)?;
    let (t, until, _) = der_element(after)?;
    let names: Vec<String> = webpki::EndEntityCert::try_from(cert)
        .map(|ee| {
            ee.valid_dns_names()
                .take(8)
                .map(|n| crate::logging::escape(n, 128))
                .collect()
        })
        .unwrap_or_default();
    Some(format!(
        "subject {}, issuer {}, valid until {}, names {}",
        name(subject),
        name(issuer),
        time(t, until).unwrap_or_else(|| "(unreadable)".into()),
        if names.is_empty() {
            "(none)".into()
        } else {
            names.join(" ")
        }
    ))
}

/// The certificate a file holds, for revoking it: an origin credential (`cert.pem`), a named
/// tunnel's credentials file (JSON with `Credential`), or a PEM whose first CERTIFICATE is it.
pub fn certificate_in(text: &str) -> Result<CertificateDer<'static>, String> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        return match v.get("Credential").and_then(|c| c.as_str()) {
            Some(pem) => certificate_in(pem),
            None => Err("a JSON file without a \"Credential\" (not a tunnel's credentials)".into()),
        };
    }
    let sections = pem_sections(text).map_err(|e| e.to_string())?;
    sections
        .into_iter()
        .find(|(label, _)| label == LABEL_CERT)
        .map(|(_, der)| CertificateDer::from(der))
        .ok_or_else(|| "no CERTIFICATE in it".into())
}

/// Whether `cert`'s subject alternative names cover `hostname` (wildcards cover one label).
pub fn cert_covers(cert: &CertificateDer<'_>, hostname: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(hostname) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The zone an origin certificate from [`Authority::issue_origin`] is scoped to: its one DNS
/// name without a wildcard. `None` for anything else (a named tunnel's certificate included).
/// Only meaningful for a certificate that has already been verified against the origin CA.
pub fn origin_zone(cert: &CertificateDer<'_>) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut plain = ee.valid_dns_names().filter(|n| !n.starts_with('*'));
    let zone = plain.next()?;
    if plain.next().is_some() || validate_zone(zone).is_err() || zone.ends_with(TUNNEL_SAN_SUFFIX) {
        return None;
    }
    Some(zone.to_owned())
}

/// What follows a named tunnel's id in its certificate's one SAN (`.invalid` is reserved by
/// RFC 2606: no zone can ever be called that).
pub const TUNNEL_SAN_SUFFIX: &str = ".tunnel.invalid";

/// The named tunnel a certificate from [`Authority::issue_tunnel`] belongs to. `None` for
/// anything else. Only meaningful for a certificate verified against the origin CA.
pub fn tunnel_id(cert: &CertificateDer<'_>) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut names = ee.valid_dns_names();
    let name = names.next()?;
    if names.next().is_some() {
        return None;
    }
    let id = name.strip_suffix(TUNNEL_SAN_SUFFIX)?;
    valid_tunnel_id(id).then(|| id.to_owned())
}

/// A tunnel id: a lowercase UUID, `8-4-4-4-12` hex digits.
pub fn valid_tunnel_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// A new random (version 4) tunnel id.
pub fn new_tunnel_id() -> io::Result<String> {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| io::Error::other("the OS random source failed"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = store::hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// The origin credential, `cert.pem`: what a tunnel presents to the edge. No `Debug`.
pub struct OriginCredential {
    /// The origin's private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
    /// The origin certificate, issued by the edge's origin CA for `zone` and `*.zone`.
    pub cert: CertificateDer<'static>,
    /// The zone the certificate is scoped to.
    pub zone: String,
    /// Where the edge is (`host:port`), when it is not the hostname itself.
    pub edge: Option<String>,
    /// CAs to trust for the edge's TLS certificate, in addition to system roots.
    pub ca: Vec<CertificateDer<'static>>,
}

#[derive(Serialize, Deserialize)]
struct EdgeInfo {
    zone: String,
    edge: Option<String>,
}

impl OriginCredential {
    /// The credential as PEM (see the module doc for the layout).
    pub fn to_pem(&self) -> String {
        let info = EdgeInfo {
            zone: self.zone.clone(),
            edge: self.edge.clone(),
        };
        let json = serde_json::to_vec(&info).expect("bug: EdgeInfo always serializes");
        let mut out = pem_encode(LABEL_KEY, self.key.secret_der());
        out.push_str(&pem_encode(LABEL_CERT, &self.cert));
        out.push_str(&pem_encode(LABEL_EDGE, &json));
        for ca in &self.ca {
            out.push_str(&pem_encode(LABEL_EDGE_CA, ca));
        }
        out
    }

    /// Parses and checks a credential written by [`OriginCredential::to_pem`].
    pub fn parse(text: &str) -> Result<OriginCredential, CredentialError> {
        let mut key = None;
        let mut cert = None;
        let mut info = None;
        let mut ca = Vec::new();
        for (label, der) in pem_sections(text)? {
            let (slot, name) = match label.as_str() {
                LABEL_KEY => (&mut key, LABEL_KEY),
                LABEL_CERT => (&mut cert, LABEL_CERT),
                LABEL_EDGE => (&mut info, LABEL_EDGE),
                LABEL_EDGE_CA => {
                    ca.push(CertificateDer::from(der));
                    continue;
                }
                _ => return Err(CredentialError::UnexpectedSection(label)),
            };
            if slot.replace(der).is_some() {
                return Err(CredentialError::Duplicate(name));
            }
        }
        let key = key.ok_or(CredentialError::Missing(LABEL_KEY))?;
        let cert = CertificateDer::from(cert.ok_or(CredentialError::Missing(LABEL_CERT))?);
        let info = info.ok_or(CredentialError::Missing(LABEL_EDGE))?;
        let info: EdgeInfo = serde_json::from_slice(&info)
            .map_err(|e| CredentialError::BadEdgeInfo(e.to_string()))?;
        validate_zone(&info.zone).map_err(CredentialError::BadEdgeInfo)?;
        if !cert_covers(&cert, &info.zone) && tunnel_id(&cert).is_none() {
            return Err(CredentialError::ZoneNotCovered(info.zone));
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|_| CredentialError::BadKey)?;
        rustls::sign::CertifiedKey::new(vec![cert.clone()], signer)
            .keys_match()
            .map_err(|_| CredentialError::KeyMismatch)?;
        Ok(OriginCredential {
            key,
            cert,
            zone: info.zone,
            edge: info.edge,
            ca,
        })
    }

    /// Writes the credential to `path` (mode 0600 from creation), replacing it atomically.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        crate::io::files::write_file_atomic(path, self.to_pem().as_bytes(), 0o600)
    }

    /// Reads and checks the credential at `path`.
    pub fn read(path: &Path) -> io::Result<OriginCredential> {
        let text = fs::read_to_string(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot read origin credential {}: {e}; {CREDENTIAL_FIX}",
                    path.display()
                ),
            )
        })?;
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                log::warn!(
                    "origin credential {} is readable by other users; chmod 600 it",
                    path.display()
                );
            }
        }
        OriginCredential::parse(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}; {CREDENTIAL_FIX}", path.display()),
            )
        })
    }
}

/// Why an origin credential (or another PEM file) was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum CredentialError {
    /// The file is larger than [`MAX_PEM_BYTES`].
    TooLarge,
    /// The file has more than [`MAX_PEM_SECTIONS`] sections.
    TooManySections,
    /// The PEM structure is broken at this line (1-based).
    Malformed {
        /// Line number, from 1.
        line: usize,
        /// What is wrong there.
        reason: &'static str,
    },
    /// A required section is absent (its label).
    Missing(&'static str),
    /// A section that must appear once appears twice (its label).
    Duplicate(&'static str),
    /// A section this format does not have (its label).
    UnexpectedSection(String),
    /// The `POSTERN EDGE` section is not the expected JSON, or its zone is invalid.
    BadEdgeInfo(String),
    /// The certificate does not cover the zone named in `POSTERN EDGE`.
    ZoneNotCovered(String),
    /// The private key cannot be used.
    BadKey,
    /// The private key does not belong to the certificate.
    KeyMismatch,
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialError::TooLarge => {
                write!(
                    f,
                    "file is larger than {MAX_PEM_BYTES} bytes; is it the right file?"
                )
            }
            CredentialError::TooManySections => write!(
                f,
                "file has more than {MAX_PEM_SECTIONS} PEM sections; is it the right file?"
            ),
            CredentialError::Malformed { line, reason } => {
                write!(f, "malformed PEM at line {line}: {reason}")
            }
            CredentialError::Missing(label) => write!(f, "no {label} section in cert.pem"),
            CredentialError::Duplicate(label) => {
                write!(f, "more than one {label} section in cert.pem")
            }
            CredentialError::UnexpectedSection(label) => {
                write!(f, "unexpected {label:?} section in cert.pem")
            }
            CredentialError::BadEdgeInfo(why) => {
                write!(f, "the POSTERN EDGE section of cert.pem is invalid: {why}")
            }
            CredentialError::ZoneNotCovered(zone) => write!(
                f,
                "the certificate in cert.pem is not valid for its zone {zone}"
            ),
            CredentialError::BadKey => {
                write!(f, "the PRIVATE KEY in cert.pem is not a usable PKCS#8 key")
            }
            CredentialError::KeyMismatch => write!(
                f,
                "the PRIVATE KEY in cert.pem does not belong to its CERTIFICATE"
            ),
        }
    }
}

impl std::error::Error for CredentialError {}

/// Splits PEM text into `(label, decoded bytes)` sections, in order. Bounded by
/// [`MAX_PEM_BYTES`] and [`MAX_PEM_SECTIONS`]; text outside sections is ignored.
pub fn pem_sections(text: &str) -> Result<Vec<(String, Vec<u8>)>, CredentialError> {
    parse_pem(text, MAX_PEM_BYTES, MAX_PEM_SECTIONS)
}

fn parse_pem(
    text: &str,
    max_bytes: usize,
    max_sections: usize,
) -> Result<Vec<(String, Vec<u8>)>, CredentialError> {
    if text.len() > max_bytes {
        return Err(CredentialError::TooLarge);
    }
    let mut sections = Vec::new();
    // (label, line of BEGIN, base64 body)
    let mut open: Option<(&str, usize, String)> = None;
    for (index, raw) in text.split('\n').enumerate() {
        let line_no = index + 1;
        let line = raw.trim_end_matches('\r').trim();
        let malformed = |reason| CredentialError::Malformed {
            line: line_no,
            reason,
        };
        match open.as_mut() {
            None => {
                let Some(label) = line.strip_prefix("-----BEGIN ") else {
                    if line.starts_with("-----END ") {
                        return Err(malformed("END without BEGIN"));
                    }
                    continue;
                };
                let label = label
                    .strip_suffix("-----")
                    .ok_or_else(|| malformed("BEGIN line does not end with -----"))?;
                if !valid_label(label) {
                    return Err(malformed("invalid label"));
                }
                if sections.len() == max_sections {
                    return Err(CredentialError::TooManySections);
                }
                open = Some((label, line_no, String::new()));
            }
            Some((label, _, body)) => {
                if let Some(end) = line.strip_prefix("-----END ") {
                    if end.strip_suffix("-----") != Some(*label) {
                        return Err(malformed("END label does not match BEGIN"));
                    }
                    let der = decode_section(label, body)
                        .ok_or(malformed("invalid base64 in section"))?;
                    sections.push(((*label).to_owned(), der));
                    open = None;
                } else if line.starts_with("-----") {
                    return Err(malformed("BEGIN inside a section"));
                } else if line.contains(':') {
                    return Err(malformed("PEM headers (encrypted PEM?) are not supported"));
                } else if line.contains('\r') {
                    // rustls-pki-types ends a line at a lone CR too: refusing it keeps both
                    // readers agreeing on where a section ends.
                    return Err(malformed("carriage return inside a line"));
                } else {
                    body.push_str(line);
                }
            }
        }
    }
    if let Some((_, begin_line, _)) = open {
        return Err(CredentialError::Malformed {
            line: begin_line,
            reason: "section has no END line",
        });
    }
    Ok(sections)
}

/// The bytes of one section, from its body (its lines, trimmed and joined). A label
/// `rustls-pki-types` knows is decoded by its PEM reader: constant-time for private keys (its
/// `decode_secret`), so key material never meets a table-driven decoder. Postern's own labels
/// (and any other) are public data, decoded by the strict [`b64::decode_lenient_ws`].
fn decode_section(label: &str, body: &str) -> Option<Vec<u8>> {
    if SectionKind::try_from(label.as_bytes()).is_err() {
        return b64::decode_lenient_ws(body).ok();
    }
    // The block rebuilt in the one shape both readers agree on: the body is one line
    // without CR, LF, `:` or a leading `-----` (parse_pem refused those).
    let block = format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n");
    let (_, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(block.as_bytes()).ok()?;
    Some(der)
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 64
        && label
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ' || b == b'-')
}

/// The bytes of the first `label` section of PEM `data`.
fn first_section(data: &[u8], label: &str) -> Result<Option<Vec<u8>>, String> {
    let text = std::str::from_utf8(data).map_err(|_| "not PEM text".to_owned())?;
    let sections = pem_sections(text).map_err(|e| e.to_string())?;
    Ok(sections
        .into_iter()
        .find(|(l, _)| l == label)
        .map(|(_, der)| der))
}

/// PEM `label` block for `der`, lines of 64 characters.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = b64::encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("bug: base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn read_pem_file(
    path: &Path,
    max_bytes: usize,
    max_sections: usize,
) -> io::Result<Vec<(String, Vec<u8>)>> {
    let data = fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))?;
    let invalid = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    let text = std::str::from_utf8(&data).map_err(|_| invalid("not a PEM file".to_owned()))?;
    parse_pem(text, max_bytes, max_sections).map_err(|e| invalid(e.to_string()))
}

/// The certificates of a PEM file (e.g. an operator's zone certificate chain), in order.
pub fn load_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    certs_from(path, MAX_PEM_BYTES, MAX_PEM_SECTIONS)
}

fn certs_from(
    path: &Path,
    max_bytes: usize,
    max_sections: usize,
) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = read_pem_file(path, max_bytes, max_sections)?
        .into_iter()
        .filter(|(label, _)| label == LABEL_CERT)
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no CERTIFICATE section found", path.display()),
        ));
    }
    Ok(certs)
}

/// The one private key of a PEM file: `PRIVATE KEY` (PKCS#8), `EC PRIVATE KEY` (SEC1) or
/// `RSA PRIVATE KEY` (PKCS#1).
pub fn load_private_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    let invalid = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    let mut found = None;
    for (label, der) in read_pem_file(path, MAX_PEM_BYTES, MAX_PEM_SECTIONS)? {
        let key = match label.as_str() {
            "PRIVATE KEY" => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
            "EC PRIVATE KEY" => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
            "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
            "ENCRYPTED PRIVATE KEY" => {
                return Err(invalid(
                    "encrypted keys are not supported; decrypt it with `openssl pkey`",
                ))
            }
            _ => continue,
        };
        if found.replace(key).is_some() {
            return Err(invalid(
                "more than one private key; keep only the one to use",
            ));
        }
    }
    found.ok_or_else(|| invalid("no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY section found"))
}

/// Trust roots: the system bundle (the first of `/etc/ssl/certs/ca-certificates.crt`,
/// `/etc/pki/tls/certs/ca-bundle.crt`, `/etc/ssl/cert.pem` that exists), plus the
/// certificates of `extra_ca` (`--ca FILE`), plus `inline_cas` (from the origin credential).
/// The system bundle's certificates plus those in `extra_ca` (for clients that take a
/// certificate list rather than a `RootCertStore`, such as ureq).
pub fn root_certs(extra_ca: Option<&Path>) -> io::Result<Vec<CertificateDer<'static>>> {
    let mut out = Vec::new();
    if let Some(bundle) = SYSTEM_CA_BUNDLES.iter().map(Path::new).find(|p| p.exists()) {
        out.extend(certs_from(bundle, MAX_BUNDLE_BYTES, MAX_BUNDLE_SECTIONS)?);
    }
    if let Some(path) = extra_ca {
        out.extend(certs_from(path, MAX_BUNDLE_BYTES, MAX_BUNDLE_SECTIONS)?);
    }
    Ok(out)
}

pub fn root_store(
    extra_ca: Option<&Path>,
    inline_cas: &[CertificateDer<'static>],
) -> io::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    match SYSTEM_CA_BUNDLES.iter().map(Path::new).find(|p| p.exists()) {
        Some(bundle) => {
            let certs = certs_from(bundle, MAX_BUNDLE_BYTES, MAX_BUNDLE_SECTIONS)?;
            let (added, ignored) = roots.add_parsable_certificates(certs);
            log::debug!(
                "{} system roots from {} ({ignored} ignored)",
                added,
                bundle.display()
            );
        }
        None if extra_ca.is_none() && inline_cas.is_empty() => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no system CA bundle found (looked for {}); install ca-certificates or pass \
                     --ca FILE",
                    SYSTEM_CA_BUNDLES.join(", ")
                ),
            ));
        }
        None => log::debug!("no system CA bundle found"),
    }
    if let Some(path) = extra_ca {
        for (i, cert) in certs_from(path, MAX_BUNDLE_BYTES, MAX_BUNDLE_SECTIONS)?
            .into_iter()
            .enumerate()
        {
            roots.add(cert).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: certificate {} is not a usable CA ({e})",
                        path.display(),
                        i + 1
                    ),
                )
            })?;
        }
    }
    for cert in inline_cas {
        roots.add(cert.clone()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a POSTERN EDGE CA in the origin credential is not usable ({e})"),
            )
        })?;
    }
    Ok(roots)
}

use crate::proto::base64 as b64;

#[cfg(test)]
mod tests {
    #[test]
    fn a_certificate_is_described_by_subject_issuer_expiry_and_names_escaped() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["ssh.example.com".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "edge \u{1b}[2J");
        params.not_after = rcgen::date_time_ymd(2031, 2, 3);
        let cert = params.self_signed(&key).unwrap();
        let d = super::describe_certificate(cert.der()).unwrap();
        assert!(d.starts_with("subject CN=edge "), "{d}");
        assert!(d.contains("issuer CN=edge "), "{d}");
        assert!(d.contains("valid until 2031-02-03 00:00:00 UTC"), "{d}");
        assert!(d.ends_with("names ssh.example.com"), "{d}");
        assert!(!d.contains('\u{1b}'), "{d:?}");
        let garbage = rustls::pki_types::CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert_eq!(super::describe_certificate(&garbage), None);
    }

    use super::*;
    use crate::store::tests::{mode_of, TempDir};
    use rustls::pki_types::ServerName as RustlsName;
    use std::sync::Arc;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn dev_ca(tmp: &TempDir) -> (StateDir, Authority) {
        let state = StateDir::open(&tmp.0).unwrap();
        let ca = Authority::load_or_create(&state, "ca", "postern dev CA").unwrap();
        (state, ca)
    }

    fn credential(ca: &Authority, zone: &str) -> OriginCredential {
        let (cert, key) = ca.issue_origin(zone).unwrap();
        OriginCredential {
            key,
            cert,
            zone: zone.to_owned(),
            edge: Some("127.0.0.1:8443".to_owned()),
            ca: vec![ca.cert_der()],
        }
    }

    #[test]
    fn a_local_ca_signs_every_name_with_the_one_leaf_key_kept_across_restarts() {
        let tmp = TempDir::new("pki-leaf-key");
        let (state, ca) = dev_ca(&tmp);
        let (key, origin) = LeafKey::load_or_create(&state, "ca-leaf.key").unwrap();
        assert_eq!(origin, LeafKeyOrigin::Created);
        assert_eq!(mode_of(&tmp.0.join("ca-leaf.key")), 0o600);
        let spki = |chain: &[CertificateDer<'static>]| {
            webpki::EndEntityCert::try_from(&chain[0])
                .unwrap()
                .subject_public_key_info()
                .as_ref()
                .to_vec()
        };
        let (a, _) = ca
            .issue_server_with(&names(&["a.localhost"]), &key)
            .unwrap();
        let (b, _) = ca
            .issue_server_with(&names(&["b.localhost"]), &key)
            .unwrap();
        assert_eq!(spki(&a), spki(&b), "one key for every name");
        // What the edge states in zone sessions is what clients see in the certificates.
        assert_eq!(spki_sha256(&a[0]), Some(key.spki_sha256()));
        assert_eq!(spki_sha256(&b[0]), Some(key.spki_sha256()));
        verify_server_chain(&a[0], &ca.cert_der(), "a.localhost").unwrap();
        verify_server_chain(&b[0], &ca.cert_der(), "b.localhost").unwrap();
        drop(key);
        let (again, origin) = LeafKey::load_or_create(&state, "ca-leaf.key").unwrap();
        assert_eq!(origin, LeafKeyOrigin::Loaded);
        let (c, _) = ca
            .issue_server_with(&names(&["a.localhost"]), &again)
            .unwrap();
        assert_eq!(spki(&a), spki(&c), "the same key after a restart");
        let (fresh, _) = ca.issue_server(&names(&["a.localhost"])).unwrap();
        assert_ne!(spki(&a), spki(&fresh));
        std::fs::write(tmp.0.join("ca-leaf.key"), "garbage").unwrap();
        let err = LeafKey::load_or_create(&state, "ca-leaf.key")
            .err()
            .unwrap();
        assert!(err.to_string().contains("ca-leaf.key"), "{err}");
        // Never overwritten: a file that appears between the read and the write wins.
        assert!(!state.write_new("ca-leaf.key", b"other", 0o600).unwrap());
        assert_eq!(
            std::fs::read(tmp.0.join("ca-leaf.key")).unwrap(),
            b"garbage"
        );
        assert!(state.write_new("fresh.key", b"new", 0o600).unwrap());
        assert_eq!(mode_of(&tmp.0.join("fresh.key")), 0o600);
    }

    #[test]
    fn authority_files_and_reload_issue_for_original_cert() {
        let tmp = TempDir::new("pki-ca");
        let (state, ca) = dev_ca(&tmp);
        assert_eq!(mode_of(&tmp.0.join("ca.key")), 0o600);
        assert_eq!(mode_of(&tmp.0.join("ca.pem")), 0o644);
        let original = ca.cert_der();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
        drop(ca);

        let reloaded = Authority::load_or_create(&state, "ca", "postern dev CA").unwrap();
        assert_eq!(
            reloaded.cert_der(),
            original,
            "reload must not make a new CA"
        );
        let (chain, _key) = reloaded.issue_server(&names(&["ssh.localhost"])).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], original);
        verify_server_chain(&chain[0], &original, "ssh.localhost").unwrap();
    }

    #[test]
    fn tunnel_certificate_names_its_tunnel_and_no_zone() {
        let tmp = TempDir::new("pki-tunnel");
        let (_state, ca) = dev_ca(&tmp);
        let id = new_tunnel_id().unwrap();
        assert!(valid_tunnel_id(&id), "{id}");
        assert_eq!(&id[14..15], "4", "version 4: {id}");
        assert_ne!(id, new_tunnel_id().unwrap());
        let (cert, key) = ca.issue_tunnel(&id).unwrap();
        assert_eq!(tunnel_id(&cert).as_deref(), Some(id.as_str()));
        assert_eq!(
            origin_zone(&cert),
            None,
            "a tunnel certificate administers nothing"
        );
        assert!(!cert_covers(&cert, "ssh.localhost"));
        // It still makes a credential (the zone is the tunnel's account).
        let cred = OriginCredential {
            key,
            cert,
            zone: "localhost".into(),
            edge: None,
            ca: vec![],
        };
        assert!(OriginCredential::parse(&cred.to_pem()).is_ok());

        let (origin, _) = ca.issue_origin("localhost").unwrap();
        assert_eq!(tunnel_id(&origin), None);
        for bad in [
            "",
            "x",
            "0123456789abcdef0123456789abcdef0123",
            &id.to_uppercase(),
        ] {
            assert!(!valid_tunnel_id(bad), "{bad}");
            assert!(ca.issue_tunnel(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn authority_refuses_mismatched_or_partial_files() {
        let tmp = TempDir::new("pki-ca-bad");
        let (state, _ca) = dev_ca(&tmp);
        let err = Authority::load_or_create(&state, "ca", "another name")
            .err()
            .unwrap();
        assert!(err.to_string().contains("ca.pem"), "{err}");

        // Key of one CA with the certificate of another.
        Authority::load_or_create(&state, "other", "postern dev CA").unwrap();
        fs::copy(tmp.0.join("other.key"), tmp.0.join("ca.key")).unwrap();
        assert!(Authority::load_or_create(&state, "ca", "postern dev CA").is_err());

        fs::remove_file(tmp.0.join("ca.pem")).unwrap();
        let err = Authority::load_or_create(&state, "ca", "postern dev CA")
            .err()
            .unwrap();
        assert!(err.to_string().contains("ca.pem does not"), "{err}");
        assert!(
            tmp.0.join("ca.key").exists(),
            "an existing key is never replaced"
        );
    }

    #[test]
    fn origin_certificate_scoped_to_zone_for_client_auth() {
        let tmp = TempDir::new("pki-origin");
        let state = StateDir::open(&tmp.0).unwrap();
        let ca = Authority::load_or_create(&state, "origin-ca", "postern origin CA").unwrap();
        let (cert, _key) = ca.issue_origin("example.com").unwrap();
        assert!(cert_covers(&cert, "example.com"));
        assert!(cert_covers(&cert, "ssh.example.com"));
        assert!(!cert_covers(&cert, "ssh.example.org"));

        let anchor = webpki::anchor_from_trusted_cert(&ca.cert_der).unwrap();
        let ee = webpki::EndEntityCert::try_from(&cert).unwrap();
        let verify = |usage| {
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                std::slice::from_ref(&anchor),
                &[],
                UnixTime::now(),
                usage,
                None,
                None,
            )
            .map(|_| ())
        };
        verify(webpki::KeyUsage::client_auth()).unwrap();
        assert!(verify(webpki::KeyUsage::server_auth()).is_err());

        for bad in [
            "",
            "Example.com",
            "a..b",
            ".a",
            "a.",
            "-a.com",
            "a_b.com",
            "a b",
            // Not host names (proto::dns), so webpki could never match a host to them.
            "10.0.0.1",
            "example.123",
        ] {
            assert!(ca.issue_origin(bad).is_err(), "{bad:?}");
        }
        let err = ca.issue_origin("Example.com").err().unwrap().to_string();
        assert_eq!(err, "invalid zone \"Example.com\": use lowercase letters");
        ca.issue_origin("localhost").unwrap();
    }

    #[test]
    fn fingerprint_is_sha256_hex() {
        let tmp = TempDir::new("pki-fp");
        let (_state, ca) = dev_ca(&tmp);
        let fp = fingerprint(&ca.cert_der());
        assert_eq!(fp.len(), 64);
        assert_eq!(fp, fingerprint(&ca.cert_der()));
        let (leaf, _) = ca.issue_origin("example.com").unwrap();
        assert_ne!(fp, fingerprint(&leaf));
    }

    #[test]
    fn wildcard_covers_one_label() {
        let tmp = TempDir::new("pki-covers");
        let (_state, ca) = dev_ca(&tmp);
        let (chain, _) = ca
            .issue_server(&names(&["dev.localhost", "*.dev.localhost"]))
            .unwrap();
        let leaf = &chain[0];
        assert!(cert_covers(leaf, "ssh.dev.localhost"));
        assert!(cert_covers(leaf, "SSH.dev.localhost"));
        assert!(cert_covers(leaf, "dev.localhost"));
        assert!(!cert_covers(leaf, "ssh.other.test"));
        assert!(!cert_covers(leaf, "a.b.dev.localhost"));
        assert!(!cert_covers(leaf, "not a name"));
        assert!(!cert_covers(
            &CertificateDer::from(vec![1, 2, 3]),
            "localhost"
        ));
        assert!(ca.issue_server(&[]).is_err());
    }

    /// webpki (so every rustls client) wants two labels after a wildcard, like NSS: a
    /// `*.localhost` certificate does not cover `ssh.localhost`. The dev edge must issue
    /// certificates for exact names, and origin scope cannot rest on the wildcard alone.
    #[test]
    fn wildcard_under_a_single_label_covers_nothing() {
        let tmp = TempDir::new("pki-covers-tld");
        let (_state, ca) = dev_ca(&tmp);
        let (chain, _) = ca
            .issue_server(&names(&["localhost", "*.localhost"]))
            .unwrap();
        assert!(cert_covers(&chain[0], "localhost"));
        assert!(!cert_covers(&chain[0], "ssh.localhost"));

        let (origin, _) = ca.issue_origin("localhost").unwrap();
        assert_eq!(origin_zone(&origin).as_deref(), Some("localhost"));
        assert!(!cert_covers(&origin, "ssh.localhost"));
        let (origin, _) = ca.issue_origin("example.com").unwrap();
        assert_eq!(origin_zone(&origin).as_deref(), Some("example.com"));
        assert_eq!(origin_zone(&chain[1]), None);
        assert_eq!(origin_zone(&CertificateDer::from(vec![0])), None);
    }

    #[test]
    fn credential_round_trip_and_file_mode() {
        let tmp = TempDir::new("pki-cred");
        let (_state, ca) = dev_ca(&tmp);
        let cred = credential(&ca, "example.com");
        let pem = cred.to_pem();
        let labels: Vec<String> = pem_sections(&pem)
            .unwrap()
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(
            labels,
            [
                "PRIVATE KEY",
                "CERTIFICATE",
                "POSTERN EDGE",
                "POSTERN EDGE CA"
            ]
        );

        let parsed = OriginCredential::parse(&pem).unwrap();
        assert_eq!(parsed.zone, "example.com");
        assert_eq!(parsed.edge.as_deref(), Some("127.0.0.1:8443"));
        assert_eq!(parsed.cert, cred.cert);
        assert_eq!(parsed.key.secret_der(), cred.key.secret_der());
        assert_eq!(parsed.ca, cred.ca);
        assert_eq!(parsed.to_pem(), pem);

        let no_edge = OriginCredential {
            edge: None,
            ca: Vec::new(),
            ..OriginCredential::parse(&pem).unwrap()
        };
        let parsed = OriginCredential::parse(&no_edge.to_pem()).unwrap();
        assert!(parsed.edge.is_none() && parsed.ca.is_empty());

        let path = tmp.0.join("cert.pem");
        cred.write(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        no_edge.write(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert!(OriginCredential::read(&path).unwrap().edge.is_none());

        let err = OriginCredential::read(&tmp.0.join("missing.pem"))
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("missing.pem") && msg.contains("postern tunnel login"),
            "{msg}"
        );
    }

    #[test]
    fn credential_refusals_name_the_problem() {
        let tmp = TempDir::new("pki-cred-bad");
        let (_state, ca) = dev_ca(&tmp);
        let cred = credential(&ca, "example.com");
        let other = credential(&ca, "example.org");
        let key = pem_encode(LABEL_KEY, cred.key.secret_der());
        let cert = pem_encode(LABEL_CERT, &cred.cert);
        let edge = pem_encode(LABEL_EDGE, br#"{"zone":"example.com","edge":null}"#);
        let err = |text: String| OriginCredential::parse(&text).err().unwrap().to_string();

        assert_eq!(
            err(format!("{cert}{edge}")),
            "no PRIVATE KEY section in cert.pem"
        );
        assert_eq!(
            err(format!("{key}{edge}")),
            "no CERTIFICATE section in cert.pem"
        );
        assert_eq!(
            err(format!("{key}{cert}")),
            "no POSTERN EDGE section in cert.pem"
        );
        assert!(err(format!("{key}{cert}{cert}{edge}")).contains("more than one CERTIFICATE"));
        assert!(err(format!("{key}{cert}{edge}{}", pem_encode("X", b"x"))).contains("\"X\""));
        let mismatched = pem_encode(LABEL_KEY, other.key.secret_der());
        assert!(err(format!("{mismatched}{cert}{edge}")).contains("does not belong"));
        let wrong_zone = pem_encode(LABEL_EDGE, br#"{"zone":"example.org","edge":null}"#);
        assert!(err(format!("{key}{cert}{wrong_zone}")).contains("not valid for its zone"));
        let bad_json = pem_encode(LABEL_EDGE, b"{");
        assert!(err(format!("{key}{cert}{bad_json}")).contains("POSTERN EDGE"));
        let bad_key = pem_encode(LABEL_KEY, b"junk");
        assert!(err(format!("{bad_key}{cert}{edge}")).contains("PKCS#8"));

        let path = tmp.0.join("cert.pem");
        fs::write(&path, format!("{cert}{edge}")).unwrap();
        let msg = OriginCredential::read(&path).err().unwrap().to_string();
        assert!(
            msg.contains("cert.pem") && msg.contains("origin-cert create"),
            "{msg}"
        );
    }

    #[test]
    fn pem_sections_structure_and_bounds() {
        let text = "comment\r\n-----BEGIN A B-----\r\naGVs\r\n bG8=\r\n-----END A B-----\r\n\
                    between\n-----BEGIN C-----\n-----END C-----";
        let sections = pem_sections(text).unwrap();
        assert_eq!(
            sections,
            [
                ("A B".to_owned(), b"hello".to_vec()),
                ("C".to_owned(), vec![])
            ]
        );

        let malformed = |text: &str| match pem_sections(text) {
            Err(CredentialError::Malformed { line, .. }) => line,
            other => panic!("{text:?}: {:?}", other.map(|_| ())),
        };
        assert_eq!(malformed("-----BEGIN A-----\nAAAA\n-----END B-----\n"), 3);
        assert_eq!(malformed("x\n-----BEGIN A-----\nAAAA\n"), 2);
        assert_eq!(malformed("-----END A-----\n"), 1);
        assert_eq!(malformed("-----BEGIN A-----\n-----BEGIN B-----\n"), 2);
        assert_eq!(malformed("-----BEGIN a-----\n-----END a-----\n"), 1);
        assert_eq!(malformed("-----BEGIN A-----\nA*AA\n-----END A-----\n"), 3);
        assert_eq!(
            malformed("-----BEGIN A-----\nProc-Type: 4\n-----END A-----\n"),
            2
        );
        // Sections rustls-pki-types decodes fail the same way, at their END line.
        for label in ["CERTIFICATE", "PRIVATE KEY", "EC PRIVATE KEY"] {
            let text = format!("-----BEGIN {label}-----\nA*AA\n-----END {label}-----\n");
            assert_eq!(malformed(&text), 3, "{label}");
        }
        // A lone CR would end the line for rustls-pki-types but not for us: refused, so the
        // two never disagree about where a section ends.
        assert_eq!(
            malformed(
                "-----BEGIN CERTIFICATE-----\nAAAA\r-----END CERTIFICATE-----AAAA\n\
                 -----END CERTIFICATE-----\n"
            ),
            2
        );

        let one = "-----BEGIN A-----\n-----END A-----\n";
        assert_eq!(
            pem_sections(&one.repeat(MAX_PEM_SECTIONS)).unwrap().len(),
            64
        );
        assert!(matches!(
            pem_sections(&one.repeat(MAX_PEM_SECTIONS + 1)),
            Err(CredentialError::TooManySections)
        ));
        assert!(matches!(
            pem_sections(&" ".repeat(MAX_PEM_BYTES + 1)),
            Err(CredentialError::TooLarge)
        ));
    }

    /// Private keys are decoded by rustls-pki-types' constant-time decoder, never by the
    /// table-driven `proto::base64`. Observable through one difference between the two: the
    /// pki-types decoder accepts a body without its `=` padding, the strict one does not.
    #[test]
    fn private_key_sections_are_decoded_by_the_constant_time_reader() {
        let section =
            |label: &str| format!("-----BEGIN {label}-----\nZm9vYg\n-----END {label}-----\n");
        for label in [
            "PRIVATE KEY",
            "EC PRIVATE KEY",
            "RSA PRIVATE KEY",
            "CERTIFICATE",
        ] {
            assert_eq!(
                pem_sections(&section(label)).unwrap(),
                [(label.to_owned(), b"foob".to_vec())],
                "{label}"
            );
        }
        // Postern's own sections hold public data and keep the strict decoder.
        assert!(matches!(
            pem_sections(&section(LABEL_EDGE)),
            Err(CredentialError::Malformed { line: 3, .. })
        ));
        // The whole path: a credential's key comes out of the same reader.
        let tmp = TempDir::new("pki-ct");
        let (_state, ca) = dev_ca(&tmp);
        let cred = credential(&ca, "example.com");
        let parsed = OriginCredential::parse(&cred.to_pem()).unwrap();
        assert_eq!(parsed.key.secret_der(), cred.key.secret_der());
    }

    #[test]
    fn base64_round_trip_and_strictness() {
        assert_eq!(b64::encode(b""), "");
        assert_eq!(b64::encode(b"f"), "Zg==");
        assert_eq!(b64::encode(b"fo"), "Zm8=");
        assert_eq!(b64::encode(b"foo"), "Zm9v");
        assert_eq!(b64::encode(&[0xfb, 0xff]), "+/8=");
        for len in 0..40u8 {
            let data: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
            let encoded = b64::encode(&data);
            assert_eq!(b64::decode_lenient_ws(&encoded).unwrap(), data);
            let spaced: String = encoded.chars().flat_map(|c| [c, '\n']).collect();
            assert_eq!(b64::decode_lenient_ws(&spaced).unwrap(), data);
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9v!", "=Zg="] {
            assert!(b64::decode_lenient_ws(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn operator_certs_and_keys_from_files() {
        let tmp = TempDir::new("pki-files");
        let (_state, ca) = dev_ca(&tmp);
        let (chain, key) = ca.issue_server(&names(&["ssh.example.com"])).unwrap();
        let certs_path = tmp.0.join("chain.pem");
        let pem: String = chain.iter().map(|c| pem_encode(LABEL_CERT, c)).collect();
        fs::write(&certs_path, format!("# zone chain\n{pem}")).unwrap();
        assert_eq!(load_certs(&certs_path).unwrap(), chain);

        let key_path = tmp.0.join("key.pem");
        fs::write(&key_path, pem_encode("PRIVATE KEY", key.secret_der())).unwrap();
        assert!(matches!(
            load_private_key(&key_path).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
        fs::write(&key_path, pem_encode("EC PRIVATE KEY", b"sec1")).unwrap();
        assert!(matches!(
            load_private_key(&key_path).unwrap(),
            PrivateKeyDer::Sec1(_)
        ));
        fs::write(
            &key_path,
            format!("{pem}{}", pem_encode("RSA PRIVATE KEY", b"rsa")),
        )
        .unwrap();
        assert!(matches!(
            load_private_key(&key_path).unwrap(),
            PrivateKeyDer::Pkcs1(_)
        ));

        fs::write(&key_path, pem_encode("ENCRYPTED PRIVATE KEY", b"x")).unwrap();
        assert!(load_private_key(&key_path).is_err());
        fs::write(
            &key_path,
            format!("{0}{0}", pem_encode("PRIVATE KEY", b"x")),
        )
        .unwrap();
        assert!(load_private_key(&key_path).is_err());
        let msg = load_private_key(&certs_path).err().unwrap().to_string();
        assert!(msg.contains("chain.pem"), "{msg}");
        let msg = load_certs(&key_path).err().unwrap().to_string();
        assert!(
            msg.contains("key.pem") && msg.contains("no CERTIFICATE"),
            "{msg}"
        );
    }

    #[test]
    fn root_store_adds_extra_and_inline_cas() {
        let tmp = TempDir::new("pki-roots");
        let (state, _ca) = dev_ca(&tmp);
        let other = Authority::load_or_create(&state, "o", "other").unwrap();
        let ca_path = tmp.0.join("ca.pem");
        let base = root_store(None, &[]).map(|r| r.len()).unwrap_or(0);
        let roots = root_store(Some(&ca_path), &[other.cert_der()]).unwrap();
        assert_eq!(roots.len(), base + 2);

        let empty = tmp.0.join("empty.pem");
        fs::write(&empty, "nothing here\n").unwrap();
        let msg = root_store(Some(&empty), &[]).err().unwrap().to_string();
        assert!(msg.contains("empty.pem"), "{msg}");
        let msg = root_store(Some(&tmp.0.join("nope.pem")), &[])
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("nope.pem"), "{msg}");
    }

    /// Moves TLS records both ways until neither side has anything to send.
    fn pump(
        client: &mut rustls::Connection,
        server: &mut rustls::Connection,
    ) -> Result<(), rustls::Error> {
        fn transfer(
            from: &mut rustls::Connection,
            to: &mut rustls::Connection,
        ) -> Result<bool, rustls::Error> {
            let mut buf = Vec::new();
            while from.wants_write() {
                from.write_tls(&mut buf).unwrap();
            }
            let mut rest = &buf[..];
            while !rest.is_empty() {
                to.read_tls(&mut rest).unwrap();
                to.process_new_packets()?;
            }
            Ok(!buf.is_empty())
        }
        for _ in 0..16 {
            let moved = transfer(client, server)? | transfer(server, client)?;
            if !moved {
                return Ok(());
            }
        }
        panic!("handshake did not settle");
    }

    fn server_config(
        ca: &Authority,
        client_roots: Option<rustls::RootCertStore>,
    ) -> Arc<rustls::ServerConfig> {
        let (chain, key) = ca
            .issue_server(&names(&["localhost", "ssh.localhost"]))
            .unwrap();
        let builder = rustls::ServerConfig::builder();
        let builder = match client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap(),
            ),
        };
        Arc::new(builder.with_single_cert(chain, key).unwrap())
    }

    fn connect(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> (
        rustls::Connection,
        rustls::Connection,
        Result<(), rustls::Error>,
    ) {
        let name = RustlsName::try_from("ssh.localhost").unwrap();
        let mut c = rustls::Connection::from(rustls::ClientConnection::new(client, name).unwrap());
        let mut s = rustls::Connection::from(rustls::ServerConnection::new(server).unwrap());
        let result = pump(&mut c, &mut s);
        (c, s, result)
    }

    #[test]
    fn tls_handshake_with_issued_server_certificate() {
        let tmp = TempDir::new("pki-tls");
        let (_state, ca) = dev_ca(&tmp);
        let roots = root_store(Some(&tmp.0.join("ca.pem")), &[]).unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (mut c, mut s, result) = connect(Arc::new(client), server_config(&ca, None));
        result.unwrap();
        assert!(!c.is_handshaking() && !s.is_handshaking());
        let rustls::Connection::Server(server) = &s else {
            unreachable!()
        };
        assert_eq!(server.server_name(), Some("ssh.localhost"));

        io::Write::write_all(&mut c.writer(), b"SSH-2.0-test\r\n").unwrap();
        pump(&mut c, &mut s).unwrap();
        let mut got = [0u8; 14];
        io::Read::read_exact(&mut s.reader(), &mut got).unwrap();
        assert_eq!(&got, b"SSH-2.0-test\r\n");

        // A client that trusts another CA refuses the edge.
        let other = Authority::load_or_create(&StateDir::open(&tmp.0).unwrap(), "x", "x").unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(root_store(None, &[other.cert_der()]).unwrap())
            .with_no_client_auth();
        assert!(connect(Arc::new(client), server_config(&ca, None))
            .2
            .is_err());
    }

    #[test]
    fn tls_client_auth_with_origin_certificate() {
        let tmp = TempDir::new("pki-mtls");
        let state = StateDir::open(&tmp.0).unwrap();
        let edge_ca = Authority::load_or_create(&state, "ca", "postern dev CA").unwrap();
        let origin_ca =
            Authority::load_or_create(&state, "origin-ca", "postern origin CA").unwrap();
        let mut origin_roots = rustls::RootCertStore::empty();
        origin_roots.add(origin_ca.cert_der()).unwrap();
        let server = server_config(&edge_ca, Some(origin_roots));

        let client_with = |cred: &OriginCredential| {
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(root_store(None, &cred.ca).unwrap())
                .with_client_auth_cert(vec![cred.cert.clone()], cred.key.clone_key())
                .unwrap();
            Arc::new(config)
        };

        let mut cred = credential(&origin_ca, "localhost");
        cred.ca = vec![edge_ca.cert_der()];
        let cred = OriginCredential::parse(&cred.to_pem()).unwrap();
        let (_c, s, result) = connect(client_with(&cred), server.clone());
        result.unwrap();
        let presented = s.peer_certificates().unwrap();
        assert_eq!(fingerprint(&presented[0]), fingerprint(&cred.cert));

        // An origin certificate from another CA is refused by the edge.
        let mut stranger = credential(&edge_ca, "localhost");
        stranger.ca = vec![edge_ca.cert_der()];
        assert!(connect(client_with(&stranger), server).2.is_err());
    }

    #[test]
    fn serial_hex_reads_the_serial_the_certificate_was_issued_with() {
        let tmp = TempDir::new("pki-serial");
        let (_, ca) = dev_ca(&tmp);
        let (a, _) = ca.issue_origin("localhost").unwrap();
        let (b, _) = ca.issue_origin("localhost").unwrap();
        let (sa, sb) = (serial_hex(&a).unwrap(), serial_hex(&b).unwrap());
        // 16 random bytes, the first in 0x40..0x7f (random_serial).
        assert_eq!(sa.len(), 32, "{sa}");
        assert!(matches!(&sa[..1], "4" | "5" | "6" | "7"), "{sa}");
        assert_ne!(sa, sb);
        // The same DER again, read by hand: the serial's bytes are in it right after the
        // INTEGER tag and its length 16.
        let needle: Vec<u8> = [0x02, 0x10]
            .into_iter()
            .chain((0..16).map(|i| u8::from_str_radix(&sa[2 * i..2 * i + 2], 16).unwrap()))
            .collect();
        assert!(a.as_ref().windows(18).any(|w| w == needle.as_slice()));
        assert_eq!(
            serial_hex(&CertificateDer::from(vec![0x30, 0x03, 0x02])),
            None
        );
        assert_eq!(serial_hex(&CertificateDer::from(Vec::new())), None);
        let pem = pem_encode(LABEL_CERT, &a);
        assert_eq!(fingerprint(&certificate_in(&pem).unwrap()), fingerprint(&a));
        assert!(certificate_in("{}").is_err());
    }
}
