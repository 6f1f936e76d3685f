//! The edge's key: the SHA-256 of the SubjectPublicKeyInfo (SPKI) of the leaf certificate an
//! edge presents, and the TLS verifier that records that leaf and, when asked, refuses any
//! leaf whose key is not the one expected.
//!
//! ```text
//!  browser login ──poll that delivers the zone session──▶ Recording (no pin): the leaf that
//!       passed the check          the session states the edge's key (`postern_edge_spki`,
//!       │                         signed by the edge)
//!       └─ EdgeKey::of(leaf) == stated? ─yes─▶ cached with the session (`<zone>.zone`,
//!                                 │            `spki-sha256 HEX`)
//!                                 └─no──▶ not kept (a server relayed the login), said once
//!  exchange ──handshake──▶ Recording (pin = that key): the normal WebPKI check, unchanged,
//!       then the leaf's key must be the pinned one, or the handshake fails before any byte
//!       of the request (the zone session) is sent
//! ```
//!
//! The key, not the certificate: a renewed certificate for the same key still matches, and the
//! edges of a pool serve the zone's certificate and key alike. A rotated key costs one browser
//! login. `access doctor` uses the same verifier without a pin, to say what the edge showed.
//! Session resumption is off in these configs: a resumed handshake skips the certificate check,
//! so every connection shows (and is checked against) its leaf.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::AccessError;

/// What the cache file says before the hex key.
const CACHE_PREFIX: &str = "spki-sha256 ";

/// The SHA-256 of a certificate's SubjectPublicKeyInfo (DER, with its outer SEQUENCE, as
/// RFC 7469 pins it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct EdgeKey([u8; 32]);

impl EdgeKey {
    /// The key of `cert`; `None` for bytes that are not an X.509 certificate.
    pub(crate) fn of(cert: &CertificateDer<'_>) -> Option<EdgeKey> {
        crate::pki::spki_sha256(cert).map(EdgeKey)
    }

    /// The line the token cache stores: `spki-sha256 <64 lowercase hex digits>`.
    pub(crate) fn to_line(self) -> String {
        format!("{CACHE_PREFIX}{}", self.hex())
    }

    /// The 64 lowercase hex digits (as the edge states its key in a zone session).
    pub(crate) fn hex(self) -> String {
        crate::store::hex(&self.0)
    }

    /// The first 16 hex digits, enough to tell keys apart in a message.
    pub(crate) fn short(self) -> String {
        crate::store::hex(&self.0[..8])
    }

    /// The key from [`EdgeKey::to_line`]'s line, exactly (no other form is accepted).
    pub(crate) fn from_line(line: &str) -> Option<EdgeKey> {
        EdgeKey::from_hex(line.strip_prefix(CACHE_PREFIX)?)
    }

    /// The key from exactly 64 lowercase hex digits ([`EdgeKey::hex`]).
    pub(crate) fn from_hex(hex: &str) -> Option<EdgeKey> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
        }
        Some(EdgeKey(out))
    }
}

/// The key a connection must show, and whether a handshake was refused for showing another.
#[derive(Debug)]
pub(crate) struct Pin {
    key: EdgeKey,
    refused: AtomicBool,
}

impl Pin {
    pub(crate) fn new(key: EdgeKey) -> Arc<Pin> {
        Arc::new(Pin {
            key,
            refused: AtomicBool::new(false),
        })
    }

    /// True once a leaf that the normal check trusts was refused for its key.
    pub(crate) fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The leaf certificate the last handshake through a [`recording_config`] presented.
pub(crate) type Seen = Arc<Mutex<Option<CertificateDer<'static>>>>;

/// A fresh [`Seen`].
pub(crate) fn seen() -> Seen {
    Arc::new(Mutex::new(None))
}

/// The key of the leaf in `seen`, if one was recorded and parses.
pub(crate) fn seen_key(seen: &Seen) -> Option<EdgeKey> {
    let leaf = seen.lock().ok()?.clone()?;
    EdgeKey::of(&leaf)
}

/// Which leaves a [`Recording`] keeps in its [`Seen`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// Whatever the edge presented, trusted or not (`access doctor` says what it was).
    Presented,
    /// Only a leaf that passed the checks (the login: the key a zone session may be kept for).
    Verified,
}

/// The client's TLS config (`super::client_config`: the same roots, `--ca`, protocol versions
/// and ALPN) with the same WebPKI verification, wrapped in [`Recording`]: each handshake's
/// leaf goes into `seen` (as `record` says), and with `pin`, a leaf with another key is
/// refused.
pub(crate) fn recording_config(
    extra_ca: Option<&Path>,
    seen: Seen,
    record: Record,
    pin: Option<Arc<Pin>>,
) -> Result<Arc<ClientConfig>, AccessError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Recording::new(extra_ca, seen, record, pin, provider.clone())?;
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(AccessError::TlsSetup)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// WebPKI verification, unchanged, that keeps a copy of the leaf certificate and, with a
/// pin, also refuses a leaf whose key differs.
#[derive(Debug)]
pub(crate) struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    seen: Seen,
    record: Record,
    pin: Option<Arc<Pin>>,
}

impl Recording {
    /// The system roots and `extra_ca`, as `super::client_config` trusts them.
    fn new(
        extra_ca: Option<&Path>,
        seen: Seen,
        record: Record,
        pin: Option<Arc<Pin>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<Recording>, AccessError> {
        let roots = crate::pki::root_store(extra_ca, &[]).map_err(AccessError::TrustStore)?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| AccessError::TlsSetup(rustls::Error::General(e.to_string())))?;
        Ok(Arc::new(Recording {
            inner,
            seen,
            record,
            pin,
        }))
    }

    fn keep(&self, leaf: &CertificateDer<'_>) {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(leaf.clone().into_owned());
        }
    }
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.record == Record::Presented {
            self.keep(end_entity);
        }
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match &self.pin {
            Some(pin) if EdgeKey::of(end_entity) != Some(pin.key) => {
                pin.refused.store(true, Ordering::Relaxed);
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
            _ => {
                if self.record == Record::Verified {
                    self.keep(end_entity);
                }
                Ok(verified)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leaf for `name` (new key) signed by a new CA; (CA PEM, leaf DER).
    fn leaf(name: &str) -> (String, CertificateDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (ca_cert.pem(), cert.der().clone())
    }

    fn recording(ca: Option<&Path>, seen: Seen, pin: Option<Arc<Pin>>) -> Arc<Recording> {
        recording_as(ca, seen, Record::Presented, pin)
    }

    fn recording_as(
        ca: Option<&Path>,
        seen: Seen,
        record: Record,
        pin: Option<Arc<Pin>>,
    ) -> Arc<Recording> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Recording::new(ca, seen, record, pin, provider).unwrap()
    }

    fn verify(v: &Recording, leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("ssh.example.test").unwrap();
        v.verify_server_cert(leaf, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn the_pinned_verifier_takes_the_same_key_and_refuses_another_trusted_one() {
        let dir = super::super::token_cache::tests::TempDir::new("edge-key");
        let (ca1, pinned_leaf) = leaf("ssh.example.test");
        let (ca2, other_leaf) = leaf("ssh.example.test");
        let bundle = dir.0.join("cas.pem");
        std::fs::write(&bundle, format!("{ca1}{ca2}")).unwrap();

        // Without a pin both are trusted (the normal check), and the leaf is recorded.
        let seen_now = seen();
        let open = recording(Some(&bundle), seen_now.clone(), None);
        verify(&open, &pinned_leaf).unwrap();
        let pin = seen_key(&seen_now).expect("the leaf was recorded");
        assert_eq!(Some(pin), EdgeKey::of(&pinned_leaf));
        verify(&open, &other_leaf).unwrap();
        assert_eq!(seen_key(&seen_now), EdgeKey::of(&other_leaf));
        assert_ne!(EdgeKey::of(&other_leaf), Some(pin));

        // Pinned: the same key passes, the other trusted key does not.
        let check = Pin::new(pin);
        let pinned = recording(Some(&bundle), seen(), Some(check.clone()));
        verify(&pinned, &pinned_leaf).unwrap();
        assert!(!check.refused());
        let refused = verify(&pinned, &other_leaf).unwrap_err();
        assert!(check.refused(), "the caller learns why");
        assert!(
            matches!(
                refused,
                rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
            ),
            "{refused:?}"
        );
        // The pin adds to the normal check, never replaces it: an untrusted leaf with the
        // pinned key is still refused.
        let check = Pin::new(pin);
        let untrusted = recording(None, seen(), Some(check.clone()));
        assert!(verify(&untrusted, &pinned_leaf).is_err());
        assert!(verify(&untrusted, &other_leaf).is_err());
        assert!(
            !check.refused(),
            "an untrusted leaf is the normal check's refusal"
        );

        // For the login, only a leaf that passed the checks is recorded.
        let verified_only = seen();
        let untrusted = recording_as(None, verified_only.clone(), Record::Verified, None);
        assert!(verify(&untrusted, &pinned_leaf).is_err());
        assert_eq!(seen_key(&verified_only), None, "an untrusted leaf");
        let pinned = recording_as(
            Some(&bundle),
            verified_only.clone(),
            Record::Verified,
            Some(Pin::new(pin)),
        );
        assert!(verify(&pinned, &other_leaf).is_err());
        assert_eq!(seen_key(&verified_only), None, "a leaf the pin refused");
        verify(&pinned, &pinned_leaf).unwrap();
        assert_eq!(seen_key(&verified_only), Some(pin));
    }

    #[test]
    fn the_cache_line_round_trips_and_nothing_else_parses() {
        let (_, cert) = leaf("a.example.test");
        let key = EdgeKey::of(&cert).unwrap();
        let line = key.to_line();
        assert!(
            line.starts_with("spki-sha256 ") && line.len() == 12 + 64,
            "{line}"
        );
        assert_eq!(EdgeKey::from_line(&line), Some(key));
        let hex = &line[12..];
        for bad in [
            String::new(),
            hex.to_owned(),
            format!("spki-sha256 {}", &hex[1..]),
            format!("spki-sha256 {hex}0"),
            format!("spki-sha256 {}", hex.to_uppercase()),
            format!("spki-sha256  {}", &hex[1..]),
            format!("sha256 {hex}"),
            format!("spki-sha256 {}g", &hex[1..]),
            format!("spki-sha256 {}é", &hex[2..]),
        ] {
            assert_eq!(EdgeKey::from_line(&bad), None, "{bad:?}");
        }
        assert_eq!(EdgeKey::of(&CertificateDer::from(vec![0x30, 0x00])), None);
    }
}
