//! Handing a token from the edge to a CLI exactly once, sealed to the CLI's key.
//!
//! ```text
//!  CLI: transfer id (random), X25519 key pair ──▶ browser opens https://H/cdn-cgi/access/cli?id=…&key=…
//!  edge: after SSO, seal(token) to `key` ──▶ slot[id]
//!  CLI polls /cdn-cgi/access/transfer?id=… ──▶ edge returns the sealed token once, forgets the slot
//! ```
//!
//! Sealing: the edge makes an ephemeral X25519 key, agrees with the CLI's public key, derives
//! an AES-256-GCM key with HKDF-SHA256 (salt = transfer id, info = [`INFO`]) and encrypts with
//! a zero nonce (every key is used once). Only the CLI that made the key can open it, so a
//! leaked transfer id or a logged URL gives nothing away.
//!
//! [`Slots`] is the edge's bounded, expiring table of pending transfers (sans-IO: time is
//! passed in).

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use ring::aead::{self, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf::{KeyType, Salt, HKDF_SHA256};
use ring::rand::SystemRandom;
use serde::{Deserialize, Serialize};

use crate::base64;

const INFO: &[u8] = b"postern token transfer v1";
/// How long a transfer id stays valid.
pub const TRANSFER_TTL: Duration = Duration::from_secs(300);
/// Pending transfers an edge holds at once by default; more are refused.
pub const MAX_PENDING_TRANSFERS: usize = crate::limits::MAX_PENDING_TRANSFERS;
/// Largest sealed payload (a token or an origin credential).
pub const MAX_SEALED: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransferError {
    /// The transfer id is not 16–64 URL-safe characters.
    BadId,
    /// The public key is not 32 bytes of base64url.
    BadKey,
    /// The sealed message is malformed or does not open with our key.
    Unseal,
    /// The id is already in use (a replay, or a second browser visit).
    Replay,
    /// Too many transfers are pending.
    Full,
    /// No such transfer, or it expired.
    Unknown,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransferError::BadId => "malformed transfer id",
            TransferError::BadKey => "malformed transfer key",
            TransferError::Unseal => "the sealed token does not open with this client's key",
            TransferError::Replay => "this login link was already used: start the login again",
            TransferError::Full => "too many logins in progress: try again in a minute",
            TransferError::Unknown => "unknown or expired login: start the login again",
        })
    }
}

impl std::error::Error for TransferError {}

/// What the edge returns and the CLI opens.
#[derive(Serialize, Deserialize)]
pub struct Sealed {
    /// The edge's ephemeral public key, base64url.
    pub epk: String,
    /// AES-256-GCM ciphertext and tag, base64url.
    pub ct: String,
}

pub fn valid_id(id: &str) -> bool {
    (16..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

struct AesKey;

impl KeyType for AesKey {
    fn len(&self) -> usize {
        32
    }
}

fn cipher(shared: &[u8], id: &str) -> LessSafeKey {
    let prk = Salt::new(HKDF_SHA256, id.as_bytes()).extract(shared);
    let okm = prk
        .expand(&[INFO], AesKey)
        .expect("bug: 32 bytes is a valid HKDF length");
    let mut key = [0u8; 32];
    okm.fill(&mut key).expect("bug: HKDF fill of 32 bytes");
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("bug: AES-256 key length"))
}

/// Seals `plaintext` to the CLI's public key (base64url) for transfer `id`.
pub fn seal(client_key: &str, id: &str, plaintext: &[u8]) -> Result<Sealed, TransferError> {
    let peer = base64::decode_url(client_key).map_err(|_| TransferError::BadKey)?;
    if peer.len() != 32 {
        return Err(TransferError::BadKey);
    }
    let rng = SystemRandom::new();
    let ours = EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| TransferError::BadKey)?;
    let epk = ours
        .compute_public_key()
        .map_err(|_| TransferError::BadKey)?;
    let key = agreement::agree_ephemeral(ours, &UnparsedPublicKey::new(&X25519, &peer), |s| {
        cipher(s, id)
    })
    .map_err(|_| TransferError::BadKey)?;
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0; 12]),
        aead::Aad::empty(),
        &mut buf,
    )
    .map_err(|_| TransferError::Unseal)?;
    Ok(Sealed {
        epk: base64::encode_url(epk.as_ref()),
        ct: base64::encode_url(&buf),
    })
}

/// The CLI's side: a one-use key pair and the id it goes with.
pub struct Opener {
    private: EphemeralPrivateKey,
    /// The public key to put in the login URL, base64url.
    pub public: String,
    /// The transfer id, base64url of 24 random bytes.
    pub id: String,
}

impl Opener {
    pub fn new() -> Opener {
        let rng = SystemRandom::new();
        let private =
            EphemeralPrivateKey::generate(&X25519, &rng).expect("bug: the OS random source failed");
        let public = base64::encode_url(
            private
                .compute_public_key()
                .expect("bug: X25519 public key")
                .as_ref(),
        );
        let id = base64::encode_url(&crate::io::random_bytes::<24>());
        Opener {
            private,
            public,
            id,
        }
    }

    /// Opens what the edge sealed for this transfer. Consumes the key: one use only.
    pub fn open(self, sealed: &Sealed) -> Result<Vec<u8>, TransferError> {
        let epk = base64::decode_url(&sealed.epk).map_err(|_| TransferError::Unseal)?;
        let mut ct = base64::decode_url(&sealed.ct).map_err(|_| TransferError::Unseal)?;
        if ct.len() > MAX_SEALED + 16 {
            return Err(TransferError::Unseal);
        }
        let id = self.id;
        let key =
            agreement::agree_ephemeral(self.private, &UnparsedPublicKey::new(&X25519, &epk), |s| {
                cipher(s, &id)
            })
            .map_err(|_| TransferError::Unseal)?;
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                aead::Aad::empty(),
                &mut ct,
            )
            .map_err(|_| TransferError::Unseal)?;
        Ok(plain.to_vec())
    }
}

impl Default for Opener {
    fn default() -> Self {
        Opener::new()
    }
}

/// What a pending transfer is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// An app token for this application hostname.
    App(String),
    /// An origin credential (`tunnel login`).
    Tunnel,
}

struct Slot {
    key: String,
    purpose: Purpose,
    expires: Instant,
    sealed: Option<Sealed>,
    /// The login ended without a token (e.g. the policy refused the user).
    refused: Option<String>,
}

/// The edge's pending transfers: bounded, expiring, each handed over once.
pub struct Slots {
    slots: HashMap<String, Slot>,
    cap: usize,
}

impl Default for Slots {
    fn default() -> Self {
        Slots::with_capacity(MAX_PENDING_TRANSFERS)
    }
}

/// The answer to a CLI's poll.
pub enum Poll {
    Pending,
    Ready(Sealed),
    /// The login finished without a token; the reason is safe to show the user.
    Refused(String),
}

impl Slots {
    /// At most `cap` pending transfers (the edge's `limits.max_pending_transfers`).
    pub fn with_capacity(cap: usize) -> Slots {
        Slots {
            slots: HashMap::new(),
            cap,
        }
    }

    /// A browser arrived with a fresh id and key. Replays and floods are refused.
    pub fn begin(
        &mut self,
        id: &str,
        key: &str,
        purpose: Purpose,
        now: Instant,
    ) -> Result<(), TransferError> {
        self.expire(now);
        if !valid_id(id) {
            return Err(TransferError::BadId);
        }
        if base64::decode_url(key).map(|k| k.len()) != Ok(32) {
            return Err(TransferError::BadKey);
        }
        if self.slots.contains_key(id) {
            return Err(TransferError::Replay);
        }
        if self.slots.len() >= self.cap {
            return Err(TransferError::Full);
        }
        self.slots.insert(
            id.to_owned(),
            Slot {
                key: key.to_owned(),
                purpose,
                expires: now + TRANSFER_TTL,
                sealed: None,
                refused: None,
            },
        );
        Ok(())
    }

    /// What the slot was opened for (to finish the login), if it is still waiting.
    pub fn purpose(&self, id: &str, now: Instant) -> Option<&Purpose> {
        self.slots
            .get(id)
            .filter(|s| s.expires > now && s.sealed.is_none() && s.refused.is_none())
            .map(|s| &s.purpose)
    }

    /// Seals `plaintext` into the slot. A slot is filled once.
    pub fn complete(
        &mut self,
        id: &str,
        plaintext: &[u8],
        now: Instant,
    ) -> Result<(), TransferError> {
        let slot = self
            .slots
            .get_mut(id)
            .filter(|s| s.expires > now)
            .ok_or(TransferError::Unknown)?;
        if slot.sealed.is_some() || slot.refused.is_some() {
            return Err(TransferError::Replay);
        }
        slot.sealed = Some(seal(&slot.key, id, plaintext)?);
        Ok(())
    }

    /// Ends the transfer without a token, so the CLI stops waiting and says why.
    pub fn refuse(&mut self, id: &str, reason: &str, now: Instant) {
        if let Some(slot) = self.slots.get_mut(id).filter(|s| s.expires > now) {
            if slot.sealed.is_none() {
                slot.refused = Some(reason.to_owned());
            }
        }
    }

    /// The CLI polls: the sealed token once, then the slot is gone.
    pub fn take(&mut self, id: &str, now: Instant) -> Result<Poll, TransferError> {
        self.expire(now);
        match self.slots.get(id) {
            None => Err(TransferError::Unknown),
            Some(s) if s.refused.is_some() => {
                let slot = self.slots.remove(id).expect("bug: slot checked above");
                Ok(Poll::Refused(slot.refused.unwrap_or_default()))
            }
            Some(s) if s.sealed.is_none() => Ok(Poll::Pending),
            Some(_) => {
                let slot = self.slots.remove(id).expect("bug: slot checked above");
                Ok(Poll::Ready(slot.sealed.expect("bug: sealed checked above")))
            }
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        self.slots.retain(|_, s| s.expires > now);
    }
}

/// Sealed JSON from the network opened with a fresh key, and the edge's transfer table driven
/// by the bytes (begin, complete, refuse, take, time passing): never a panic, never more than
/// the cap, and nothing handed over twice.
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub fn fuzz_transfer(data: &[u8]) {
    if let Ok(sealed) = serde_json::from_slice::<Sealed>(data) {
        assert!(Opener::new().open(&sealed).is_err(), "garbage opened");
    }
    let key = base64::encode_url(&[9u8; 32]);
    let start = Instant::now();
    let mut now = start;
    let mut slots = Slots::with_capacity(4);
    for pair in data.chunks(2) {
        let (op, arg) = (pair[0], pair.get(1).copied().unwrap_or(0));
        // Eight ids, one of them malformed: ops collide on purpose.
        let id = match arg % 8 {
            7 => "short".to_owned(),
            n => format!("transfer-id-{n:08}"),
        };
        match op % 6 {
            0 => drop(slots.begin(&id, &key, Purpose::Tunnel, now)),
            1 => drop(slots.begin(&id, "not a key", Purpose::App("h".into()), now)),
            2 => drop(slots.complete(&id, b"token", now)),
            3 => slots.refuse(&id, "no", now),
            4 => {
                if let Ok(Poll::Ready(_) | Poll::Refused(_)) = slots.take(&id, now) {
                    assert!(slots.take(&id, now).is_err(), "handed over twice");
                }
            }
            _ => now += Duration::from_secs(u64::from(arg) * 4),
        }
        assert!(slots.len() <= 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_token_opens_once_for_the_right_client_only() {
        let now = Instant::now();
        let cli = Opener::new();
        let mut slots = Slots::default();
        slots
            .begin(
                &cli.id,
                &cli.public,
                Purpose::App("ssh.site.com".into()),
                now,
            )
            .unwrap();
        assert!(matches!(slots.take(&cli.id, now), Ok(Poll::Pending)));
        slots.complete(&cli.id, b"the.app.token", now).unwrap();
        assert_eq!(
            slots.complete(&cli.id, b"again", now),
            Err(TransferError::Replay)
        );
        let Ok(Poll::Ready(sealed)) = slots.take(&cli.id, now) else {
            panic!("not ready");
        };
        // Handed over once: the id is forgotten.
        assert_eq!(slots.take(&cli.id, now).err(), Some(TransferError::Unknown));
        // Another client's key cannot open it.
        let other = Opener::new();
        let stolen = Sealed {
            epk: sealed.epk.clone(),
            ct: sealed.ct.clone(),
        };
        assert_eq!(other.open(&stolen), Err(TransferError::Unseal));
        assert_eq!(cli.open(&sealed).unwrap(), b"the.app.token");
    }

    #[test]
    fn replayed_ids_bad_keys_and_expiry() {
        let now = Instant::now();
        let cli = Opener::new();
        let mut slots = Slots::default();
        slots
            .begin(&cli.id, &cli.public, Purpose::Tunnel, now)
            .unwrap();
        assert_eq!(
            slots.begin(&cli.id, &cli.public, Purpose::Tunnel, now),
            Err(TransferError::Replay)
        );
        assert_eq!(
            slots.begin("short", &cli.public, Purpose::Tunnel, now),
            Err(TransferError::BadId)
        );
        assert_eq!(
            slots.begin(&"a".repeat(20), "AAAA", Purpose::Tunnel, now),
            Err(TransferError::BadKey)
        );
        let later = now + TRANSFER_TTL + Duration::from_secs(1);
        assert_eq!(
            slots.take(&cli.id, later).err(),
            Some(TransferError::Unknown)
        );
        assert!(slots.is_empty());
    }

    #[test]
    fn pending_transfers_are_bounded() {
        let now = Instant::now();
        let mut slots = Slots::default();
        let key = Opener::new().public;
        for i in 0..MAX_PENDING_TRANSFERS {
            slots
                .begin(&format!("id-{i:020}"), &key, Purpose::Tunnel, now)
                .unwrap();
        }
        assert_eq!(
            slots.begin(&format!("id-{:020}", 999_999), &key, Purpose::Tunnel, now),
            Err(TransferError::Full)
        );
    }
}
