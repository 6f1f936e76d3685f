//! Handing a token from the edge to a CLI exactly once, sealed to the CLI's key.
//!
//! ```text
//!  CLI: transfer id (random), X25519 key pair ──▶ browser opens https://H/cdn-cgi/access/cli?id=…&key=…
//!  edge: after SSO, seal(token) to `key` ──▶ slot[id]
//!  CLI polls /cdn-cgi/access/transfer?id=… ──▶ edge returns the sealed token once, forgets the slot
//! ```
//!
//! Sealing: the edge makes an ephemeral X25519 key, agrees with the CLI's public key, derives
//! an AES-256-GCM key with HKDF-SHA256 (salt = transfer id, info = [`INFO`] ‖ ephemeral public
//! key ‖ CLI public key) and encrypts with a zero nonce (every key is used once). Only the CLI
//! that made the key can open it, so a leaked transfer id or a logged URL gives nothing away.
//! Both public keys are in the info, as HPKE binds them (RFC 9180 §4.1, `kem_context`):
//! X25519 gives the same secret for more than one spelling of a key (its top bit is ignored),
//! so without them a sealed message could be altered in transit and still open.
//!
//! [`Slots`] is the edge's bounded, expiring table of pending transfers (sans-IO: time is
//! passed in).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use ring::aead::{self, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf::{KeyType, Salt, HKDF_SHA256};
use ring::rand::SystemRandom;
use serde::{Deserialize, Serialize};

use crate::proto::base64;

/// The first part of the HKDF info; v2 added the two public keys after it. Edge and CLI are one
/// binary, so they always agree on the version.
const INFO: &[u8] = b"postern token transfer v2";
pub use crate::limits::TRANSFER_TTL;
/// Pending transfers an edge holds at once by default; more are refused.
pub const MAX_PENDING_TRANSFERS: usize = crate::limits::MAX_PENDING_TRANSFERS;
pub use crate::limits::MAX_SEALED;

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
    /// Too many transfers of this kind are pending, edge-wide.
    Full,
    /// Too many transfers are pending from this source (address or IPv6 /64).
    SourceBusy,
    /// A browser already opened this login link.
    AlreadyOpened,
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
            TransferError::SourceBusy => {
                "too many logins in progress from your address: finish or cancel one, or try \
                 again in a minute"
            }
            TransferError::AlreadyOpened => {
                "this login link was already opened in a browser: use that browser, or start \
                 the login again"
            }
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

/// The one-use AEAD key: HKDF-SHA256 of the X25519 secret, salt = the transfer id, info =
/// [`INFO`] ‖ `epk` (the edge's ephemeral public key) ‖ `recipient` (the CLI's public key).
/// Both keys are 32 bytes, so the concatenation is unambiguous.
fn cipher(shared: &[u8], id: &str, epk: &[u8], recipient: &[u8]) -> LessSafeKey {
    let prk = Salt::new(HKDF_SHA256, id.as_bytes()).extract(shared);
    let info = [INFO, epk, recipient];
    let okm = prk
        .expand(&info, AesKey)
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
        cipher(s, id, epk.as_ref(), &peer)
    })
    .map_err(|_| TransferError::BadKey)?;
    Ok(Sealed {
        epk: base64::encode_url(epk.as_ref()),
        ct: base64::encode_url(&seal_with(&key, plaintext)?),
    })
}

/// `plaintext` encrypted under a one-use key (zero nonce), with its tag appended.
fn seal_with(key: &LessSafeKey, plaintext: &[u8]) -> Result<Vec<u8>, TransferError> {
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0; 12]),
        aead::Aad::empty(),
        &mut buf,
    )
    .map_err(|_| TransferError::Unseal)?;
    Ok(buf)
}

/// The plaintext of `ct` (ciphertext and tag) under a one-use key.
fn open_with(key: &LessSafeKey, mut ct: Vec<u8>) -> Result<Vec<u8>, TransferError> {
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            aead::Aad::empty(),
            &mut ct,
        )
        .map_err(|_| TransferError::Unseal)?
        .len();
    ct.truncate(len);
    Ok(ct)
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
        let mut id = [0u8; 24];
        ring::rand::SecureRandom::fill(&rng, &mut id).expect("bug: the OS random source failed");
        let id = base64::encode_url(&id);
        Opener {
            private,
            public,
            id,
        }
    }

    /// Opens what the edge sealed for this transfer. Consumes the key: one use only.
    pub fn open(self, sealed: &Sealed) -> Result<Vec<u8>, TransferError> {
        let epk = base64::decode_url(&sealed.epk).map_err(|_| TransferError::Unseal)?;
        let ct = base64::decode_url(&sealed.ct).map_err(|_| TransferError::Unseal)?;
        if ct.len() > MAX_SEALED + 16 {
            return Err(TransferError::Unseal);
        }
        let recipient = self
            .private
            .compute_public_key()
            .map_err(|_| TransferError::Unseal)?;
        let id = self.id;
        let key =
            agreement::agree_ephemeral(self.private, &UnparsedPublicKey::new(&X25519, &epk), |s| {
                cipher(s, &id, &epk, recipient.as_ref())
            })
            .map_err(|_| TransferError::Unseal)?;
        open_with(&key, ct)
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

/// The short code a login shows in the terminal and on the browser's confirmation page, so
/// the person at the browser can tell that the login they confirm is the one their terminal
/// started (RFC 8628 §6.1 style: 8 letters from 20 consonants, about 34.5 bits, `BCDF-GHJK`).
///
/// Derived from the transfer id and the key the token will be sealed to, so the CLI and the
/// edge compute it independently, and a login started by anyone else (with another key)
/// shows another code. The code is not a secret; comparing it is the point.
pub fn confirmation_code(id: &str, key: &str) -> String {
    const ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"postern login code v1\0");
    ctx.update(id.as_bytes());
    ctx.update(b"\0");
    ctx.update(key.as_bytes());
    let digest = ctx.finish();
    let mut code = String::with_capacity(9);
    for (i, b) in digest.as_ref()[..8].iter().enumerate() {
        if i == 4 {
            code.push('-');
        }
        // 256 = 12 * 20 + 16: a slight bias towards the first 16 letters, harmless for a
        // code that is compared, not guessed.
        code.push(ALPHABET[usize::from(*b) % ALPHABET.len()] as char);
    }
    code
}

/// Where a login request came from, for the per-source budget: an IPv4 address, or the /64
/// an IPv6 address is in (one host usually holds a whole /64).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// How many transfers may wait at once (the edge's `limits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotLimits {
    /// App-token logins in progress, edge-wide.
    pub app: usize,
    /// Tunnel logins (origin certificates) in progress, edge-wide: a budget of their own, so
    /// a flood of one kind never blocks the other.
    pub tunnel: usize,
    /// Logins in progress started from one source ([`source_of`]).
    pub per_source: usize,
}

impl SlotLimits {
    /// The login budgets of the edge's `limits`.
    pub fn of(limits: &crate::limits::EdgeLimits) -> SlotLimits {
        SlotLimits {
            app: limits.max_pending_transfers,
            tunnel: limits.max_pending_tunnel_logins,
            per_source: limits.max_pending_logins_per_ip,
        }
    }
}

impl Default for SlotLimits {
    fn default() -> Self {
        SlotLimits {
            app: MAX_PENDING_TRANSFERS,
            tunnel: crate::limits::MAX_PENDING_TUNNEL_LOGINS,
            per_source: crate::limits::MAX_PENDING_LOGINS_PER_SOURCE,
        }
    }
}

struct Slot {
    key: String,
    purpose: Purpose,
    /// Who asked for it: the CLI's address (shown on the confirmation page).
    requester: IpAddr,
    /// [`source_of`] the requester, for the per-source budget.
    source: IpAddr,
    created: Instant,
    expires: Instant,
    /// When the CLI last polled: a slot whose CLI stopped polling is abandoned.
    last_poll: Instant,
    /// A browser opened the login link (a link opens in one browser only).
    opened: bool,
    sealed: Option<Sealed>,
    /// The login ended without a token (e.g. the policy refused the user).
    refused: Option<String>,
    /// Begun at another edge of a pool and opened here by a browser ([`Slots::adopt`]): its
    /// CLI polls elsewhere, so it lives until it expires, and counts in no budget here.
    adopted: bool,
}

impl Slot {
    fn live(&self, now: Instant) -> bool {
        self.expires > now
            && (self.adopted || now.saturating_duration_since(self.last_poll) < POLL_GRACE)
    }

    fn waiting(&self, now: Instant) -> bool {
        self.live(now) && self.sealed.is_none() && self.refused.is_none()
    }
}

pub use crate::limits::POLL_GRACE;

/// The edge's pending transfers: bounded, expiring, each handed over once.
pub struct Slots {
    slots: HashMap<String, Slot>,
    limits: SlotLimits,
}

impl Default for Slots {
    fn default() -> Self {
        Slots::new(SlotLimits::default())
    }
}

/// The answer to a CLI's poll.
pub enum Poll {
    Pending,
    Ready(Sealed),
    /// The login finished without a token; the reason is safe to show the user.
    Refused(String),
}

/// What the browser's pages show about a waiting transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub purpose: Purpose,
    /// [`confirmation_code`] of the slot.
    pub code: String,
    /// The address the CLI asked from.
    pub requester: IpAddr,
    /// How long ago the CLI asked.
    pub age: Duration,
}

impl Slots {
    pub fn new(limits: SlotLimits) -> Slots {
        Slots {
            slots: HashMap::new(),
            limits,
        }
    }

    /// New budgets (a config reload); transfers already waiting keep their place.
    pub fn set_limits(&mut self, limits: SlotLimits) {
        self.limits = limits;
    }

    /// A CLI at `requester` starts a login with a fresh id and key. Replays, floods from one
    /// source and floods of one purpose are refused.
    pub fn begin(
        &mut self,
        id: &str,
        key: &str,
        purpose: Purpose,
        requester: IpAddr,
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
        let source = source_of(requester);
        let tunnel = purpose == Purpose::Tunnel;
        let (mut from_source, mut same_kind) = (0, 0);
        for s in self.slots.values().filter(|s| !s.adopted) {
            from_source += usize::from(s.source == source);
            same_kind += usize::from((s.purpose == Purpose::Tunnel) == tunnel);
        }
        if from_source >= self.limits.per_source {
            return Err(TransferError::SourceBusy);
        }
        let budget = if tunnel {
            self.limits.tunnel
        } else {
            self.limits.app
        };
        if same_kind >= budget {
            self.evict_for(source, tunnel)?;
        }
        self.slots.insert(
            id.to_owned(),
            Slot {
                key: key.to_owned(),
                purpose,
                requester,
                source,
                created: now,
                expires: now + TRANSFER_TTL,
                last_poll: now,
                opened: false,
                sealed: None,
                refused: None,
                adopted: false,
            },
        );
        Ok(())
    }

    /// A login begun at another edge of a pool, whose link a browser opened here: the slot
    /// is made here, already opened, from what the pool's store shared (the CLI's key, what
    /// it asks for, its address, and how long ago it began). At most as many adopted slots as
    /// the budgets allow in all ([`TransferError::Full`]); a known id is a
    /// [`TransferError::Replay`].
    pub fn adopt(
        &mut self,
        id: &str,
        key: &str,
        purpose: Purpose,
        requester: IpAddr,
        age: Duration,
        now: Instant,
    ) -> Result<Waiting, TransferError> {
        self.expire(now);
        if !valid_id(id) {
            return Err(TransferError::BadId);
        }
        if base64::decode_url(key).map(|k| k.len()) != Ok(32) {
            return Err(TransferError::BadKey);
        }
        if age >= TRANSFER_TTL {
            return Err(TransferError::Unknown);
        }
        if self.slots.get(id).is_some_and(|s| s.opened || s.adopted) {
            return Err(TransferError::Replay);
        }
        let adopted = self.slots.values().filter(|s| s.adopted).count();
        if adopted >= self.limits.app + self.limits.tunnel {
            return Err(TransferError::Full);
        }
        let created = now.checked_sub(age).unwrap_or(now);
        self.slots.insert(
            id.to_owned(),
            Slot {
                key: key.to_owned(),
                purpose: purpose.clone(),
                requester,
                source: source_of(requester),
                created,
                expires: now + (TRANSFER_TTL - age),
                last_poll: now,
                opened: true,
                sealed: None,
                refused: None,
                adopted: true,
            },
        );
        Ok(Waiting {
            purpose,
            code: confirmation_code(id, key),
            requester,
            age,
        })
    }

    /// The CLI's public key of a waiting slot (an edge of a pool shares it with the others).
    pub fn key_of(&self, id: &str, now: Instant) -> Option<&str> {
        self.slots
            .get(id)
            .filter(|s| s.waiting(now))
            .map(|s| s.key.as_str())
    }

    /// Forgets the slot `id` (its outcome went to the pool's store).
    pub fn forget(&mut self, id: &str) {
        self.slots.remove(id);
    }

    /// The budget of a kind is spent: the source holding the most of it gives up its oldest
    /// slot that no browser has opened yet, if it holds at least two more than `source`. So a
    /// few sources cannot hold everyone else out; `Full` when the budget is fairly shared.
    fn evict_for(&mut self, source: IpAddr, tunnel: bool) -> Result<(), TransferError> {
        let mut held: HashMap<IpAddr, usize> = HashMap::new();
        for s in self.slots.values().filter(|s| !s.adopted) {
            if (s.purpose == Purpose::Tunnel) == tunnel {
                *held.entry(s.source).or_default() += 1;
            }
        }
        let mine = held.get(&source).copied().unwrap_or(0);
        let Some((&top, &most)) = held.iter().max_by_key(|(_, &n)| n) else {
            return Err(TransferError::Full);
        };
        if most < mine + 2 {
            return Err(TransferError::Full);
        }
        let victim = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.source == top
                    && !s.opened
                    && !s.adopted
                    && (s.purpose == Purpose::Tunnel) == tunnel
            })
            .min_by_key(|(_, s)| s.created)
            .map(|(id, _)| id.clone())
            .ok_or(TransferError::Full)?;
        self.slots.remove(&victim);
        Ok(())
    }

    /// A browser opened the login link: the slot is now that browser's (the caller binds
    /// the browser). A second opening is refused, so a link cannot be taken over.
    pub fn open(&mut self, id: &str, now: Instant) -> Result<Waiting, TransferError> {
        self.expire(now);
        let slot = self
            .slots
            .get_mut(id)
            .filter(|s| s.waiting(now))
            .ok_or(TransferError::Unknown)?;
        if slot.opened {
            return Err(TransferError::AlreadyOpened);
        }
        slot.opened = true;
        Ok(Waiting {
            purpose: slot.purpose.clone(),
            code: confirmation_code(id, &slot.key),
            requester: slot.requester,
            age: now.saturating_duration_since(slot.created),
        })
    }

    /// What a waiting slot is for, if it is still waiting.
    pub fn waiting(&self, id: &str, now: Instant) -> Option<Waiting> {
        self.slots
            .get(id)
            .filter(|s| s.waiting(now))
            .map(|s| Waiting {
                purpose: s.purpose.clone(),
                code: confirmation_code(id, &s.key),
                requester: s.requester,
                age: now.saturating_duration_since(s.created),
            })
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
            .filter(|s| s.live(now))
            .ok_or(TransferError::Unknown)?;
        if slot.sealed.is_some() || slot.refused.is_some() {
            return Err(TransferError::Replay);
        }
        slot.sealed = Some(seal(&slot.key, id, plaintext)?);
        Ok(())
    }

    /// Ends the transfer without a token, so the CLI stops waiting and says why.
    pub fn refuse(&mut self, id: &str, reason: &str, now: Instant) {
        if let Some(slot) = self.slots.get_mut(id).filter(|s| s.live(now)) {
            if slot.sealed.is_none() {
                slot.refused = Some(reason.to_owned());
            }
        }
    }

    /// The CLI polls: the sealed token once, then the slot is gone. Each poll keeps a
    /// waiting slot alive for another [`POLL_GRACE`].
    pub fn take(&mut self, id: &str, now: Instant) -> Result<Poll, TransferError> {
        self.expire(now);
        let Some(s) = self.slots.get_mut(id) else {
            return Err(TransferError::Unknown);
        };
        s.last_poll = now;
        if s.refused.is_some() {
            let slot = self.slots.remove(id).expect("bug: slot checked above");
            return Ok(Poll::Refused(slot.refused.unwrap_or_default()));
        }
        if s.sealed.is_none() {
            return Ok(Poll::Pending);
        }
        let slot = self.slots.remove(id).expect("bug: slot checked above");
        Ok(Poll::Ready(slot.sealed.expect("bug: sealed checked above")))
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Forgets expired and abandoned slots.
    pub fn expire(&mut self, now: Instant) {
        self.slots.retain(|_, s| s.live(now));
    }
}

/// Sealed JSON from the network opened with a fresh key, and the edge's transfer table driven
/// by the bytes (begin from a few sources, open in a browser, complete, refuse, take, time
/// passing): never a panic, never more than the budgets, and nothing handed over twice.
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub fn fuzz_transfer(data: &[u8]) {
    if let Ok(sealed) = serde_json::from_slice::<Sealed>(data) {
        assert!(Opener::new().open(&sealed).is_err(), "garbage opened");
    }
    let key = base64::encode_url(&[9u8; 32]);
    let start = Instant::now();
    let mut now = start;
    let limits = SlotLimits {
        app: 4,
        tunnel: 2,
        per_source: 3,
    };
    let mut slots = Slots::new(limits);
    for pair in data.chunks(2) {
        let (op, arg) = (pair[0], pair.get(1).copied().unwrap_or(0));
        // Eight ids, one of them malformed: ops collide on purpose.
        let id = match arg % 8 {
            7 => "short".to_owned(),
            n => format!("transfer-id-{n:08}"),
        };
        let source = IpAddr::from([10, 0, 0, arg >> 6]);
        match op % 8 {
            0 => drop(slots.begin(&id, &key, Purpose::Tunnel, source, now)),
            1 => drop(slots.begin(&id, &key, Purpose::App("h".into()), source, now)),
            2 => drop(slots.begin(&id, "not a key", Purpose::App("h".into()), source, now)),
            3 => drop(slots.complete(&id, b"token", now)),
            4 => slots.refuse(&id, "no", now),
            5 => {
                if let Ok(Poll::Ready(_) | Poll::Refused(_)) = slots.take(&id, now) {
                    assert!(slots.take(&id, now).is_err(), "handed over twice");
                }
            }
            6 => {
                if slots.open(&id, now).is_ok() {
                    assert!(slots.open(&id, now).is_err(), "opened twice");
                }
            }
            _ => now += Duration::from_secs(u64::from(arg) / 4),
        }
        assert!(slots.len() <= limits.app + limits.tunnel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLI: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

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
                CLI,
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

    /// RFC 7748 §6.1's X25519 keys: the edge's ephemeral key is Alice's, the CLI's is Bob's.
    const RFC7748_A: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const RFC7748_B: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
    const RFC7748_K: &str = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
    /// base64url of the bytes 0..24.
    const VECTOR_ID: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX";
    /// AES-256-GCM of "postern test token" under the key derived from the values above,
    /// computed independently with Python's `cryptography` (X25519 from RFC 7748's private
    /// keys, which also gives K; HKDF-SHA256; AESGCM with a zero nonce).
    const VECTOR_CT: &str = "cf70c70a17f3933e42976a684e6937c34675ea2ab45300cce68de00522d334c8810b";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// ring cannot make an X25519 key from fixed bytes, so the vector starts from RFC 7748's
    /// shared secret: everything after the agreement (HKDF salt and info, AES-GCM) is pinned.
    #[test]
    fn key_schedule_matches_the_known_answer() {
        let (a, b, k) = (unhex(RFC7748_A), unhex(RFC7748_B), unhex(RFC7748_K));
        let key = cipher(&k, VECTOR_ID, &a, &b);
        let ct = seal_with(&key, b"postern test token").unwrap();
        assert_eq!(crate::store::hex(&ct), VECTOR_CT);
        assert_eq!(
            open_with(&key, unhex(VECTOR_CT)).unwrap(),
            b"postern test token"
        );
    }

    /// The same shared secret and id with either public key changed gives another key: a
    /// message sealed for one pair of keys opens for no other.
    #[test]
    fn both_public_keys_are_bound_into_the_key() {
        let (a, b, k) = (unhex(RFC7748_A), unhex(RFC7748_B), unhex(RFC7748_K));
        let sealed = unhex(VECTOR_CT);
        let mut a2 = a.clone();
        a2[31] ^= 0x80;
        let mut b2 = b.clone();
        b2[31] ^= 0x80;
        for (epk, recipient) in [(&a2, &b), (&a, &b2), (&b, &a)] {
            let key = cipher(&k, VECTOR_ID, epk, recipient);
            assert_eq!(open_with(&key, sealed.clone()), Err(TransferError::Unseal));
        }
        let other_id = cipher(&k, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYY", &a, &b);
        assert_eq!(open_with(&other_id, sealed), Err(TransferError::Unseal));
    }

    /// X25519 ignores the top bit of a public key (RFC 7748 §5), so a second spelling of the
    /// edge's ephemeral key agrees on the same secret. With both keys bound into the key
    /// derivation (as HPKE does), a sealed token whose key was re-spelt in transit no longer
    /// opens: what is opened is exactly what the edge sealed.
    #[test]
    fn a_respelt_ephemeral_key_does_not_open() {
        let cli = Opener::new();
        let sealed = seal(&cli.public, &cli.id, b"the.app.token").unwrap();
        let mut epk = base64::decode_url(&sealed.epk).unwrap();
        epk[31] ^= 0x80;
        let respelt = Sealed {
            epk: base64::encode_url(&epk),
            ct: sealed.ct.clone(),
        };
        assert_eq!(cli.open(&respelt), Err(TransferError::Unseal));
    }

    #[test]
    fn replayed_ids_bad_keys_and_expiry() {
        let now = Instant::now();
        let cli = Opener::new();
        let mut slots = Slots::default();
        slots
            .begin(&cli.id, &cli.public, Purpose::Tunnel, CLI, now)
            .unwrap();
        assert_eq!(
            slots.begin(&cli.id, &cli.public, Purpose::Tunnel, CLI, now),
            Err(TransferError::Replay)
        );
        assert_eq!(
            slots.begin("short", &cli.public, Purpose::Tunnel, CLI, now),
            Err(TransferError::BadId)
        );
        assert_eq!(
            slots.begin(&"a".repeat(20), "AAAA", Purpose::Tunnel, CLI, now),
            Err(TransferError::BadKey)
        );
        // Kept alive by polls up to the TTL, then gone.
        let mut t = now;
        while t + Duration::from_secs(10) < now + TRANSFER_TTL {
            t += Duration::from_secs(10);
            assert!(matches!(slots.take(&cli.id, t), Ok(Poll::Pending)));
        }
        let later = now + TRANSFER_TTL + Duration::from_secs(1);
        assert_eq!(
            slots.take(&cli.id, later).err(),
            Some(TransferError::Unknown)
        );
        assert!(slots.is_empty());
    }

    #[test]
    fn a_slot_whose_cli_stops_polling_is_freed_early() {
        let now = Instant::now();
        let cli = Opener::new();
        let mut slots = Slots::default();
        slots
            .begin(&cli.id, &cli.public, Purpose::Tunnel, CLI, now)
            .unwrap();
        let t = now + POLL_GRACE;
        assert!(slots.waiting(&cli.id, t).is_none());
        assert!(slots.open(&cli.id, t).is_err());
        slots.expire(t);
        assert!(slots.is_empty(), "abandoned long before TRANSFER_TTL");
    }

    #[test]
    fn a_link_opens_in_one_browser_and_shows_the_clis_code_and_address() {
        let now = Instant::now();
        let cli = Opener::new();
        let mut slots = Slots::default();
        slots
            .begin(&cli.id, &cli.public, Purpose::App("a.b".into()), CLI, now)
            .unwrap();
        let later = now + Duration::from_secs(3);
        let w = slots.open(&cli.id, later).unwrap();
        assert_eq!(w.code, confirmation_code(&cli.id, &cli.public));
        assert_eq!(w.requester, CLI);
        assert_eq!(w.age, Duration::from_secs(3));
        assert_eq!(w.purpose, Purpose::App("a.b".into()));
        assert_eq!(
            slots.open(&cli.id, later).err(),
            Some(TransferError::AlreadyOpened)
        );
        assert_eq!(
            slots.open("nosuchtransferid0000", later).err(),
            Some(TransferError::Unknown)
        );
    }

    #[test]
    fn codes_are_stable_distinct_and_readable() {
        let (a, b) = (Opener::new(), Opener::new());
        let code = confirmation_code(&a.id, &a.public);
        assert_eq!(code, confirmation_code(&a.id, &a.public));
        assert_ne!(
            code,
            confirmation_code(&a.id, &b.public),
            "bound to the key"
        );
        assert_ne!(code, confirmation_code(&b.id, &a.public), "bound to the id");
        assert_eq!(code.len(), 9);
        assert_eq!(&code[4..5], "-");
        assert!(code
            .bytes()
            .enumerate()
            .all(|(i, c)| i == 4 || b"BCDFGHJKLMNPQRSTVWXZ".contains(&c)));
    }

    #[test]
    fn budgets_per_kind_and_per_source() {
        let now = Instant::now();
        let limits = SlotLimits {
            app: 6,
            tunnel: 2,
            per_source: 3,
        };
        let mut slots = Slots::new(limits);
        let key = Opener::new().public;
        let id = |i: usize| format!("id-{i:020}");
        let app = || Purpose::App("a.b".into());
        // One source gets three, then is refused; others are not affected.
        for i in 0..3 {
            slots.begin(&id(i), &key, app(), CLI, now).unwrap();
        }
        assert_eq!(
            slots.begin(&id(3), &key, app(), CLI, now),
            Err(TransferError::SourceBusy)
        );
        // IPv6: one /64 is one source; another /64 is another.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for (i, a) in ["2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1:ffff::9"]
            .iter()
            .enumerate()
        {
            slots.begin(&id(10 + i), &key, app(), v6(a), now).unwrap();
        }
        assert_eq!(
            slots.begin(&id(13), &key, app(), v6("2001:db8:0:1::77"), now),
            Err(TransferError::SourceBusy)
        );
        // The app budget is spent (6) by two sources holding 3 each: a newcomer takes the
        // place of one of theirs, the budget stays 6.
        slots
            .begin(&id(20), &key, app(), v6("2001:db8:0:2::1"), now)
            .unwrap();
        assert_eq!(slots.len(), 6);
        // A flood of app logins leaves tunnel logins their own budget.
        let other = IpAddr::from([198, 51, 100, 7]);
        slots
            .begin(&id(30), &key, Purpose::Tunnel, other, now)
            .unwrap();
        slots
            .begin(&id(31), &key, Purpose::Tunnel, v6("2001:db8:0:3::1"), now)
            .unwrap();
        assert_eq!(
            slots.begin(&id(32), &key, Purpose::Tunnel, v6("2001:db8:0:4::1"), now),
            Err(TransferError::Full)
        );
        assert_eq!(source_of(v6("::ffff:192.0.2.1")), CLI);
    }

    #[test]
    fn a_full_budget_is_shared_fairly() {
        let now = Instant::now();
        let limits = SlotLimits {
            app: 4,
            tunnel: 4,
            per_source: 3,
        };
        let mut slots = Slots::new(limits);
        let key = Opener::new().public;
        let id = |i: usize| format!("id-{i:020}");
        let (a, b, c) = (
            IpAddr::from([10, 0, 0, 1]),
            IpAddr::from([10, 0, 0, 2]),
            IpAddr::from([10, 0, 0, 3]),
        );
        // a and b take the whole tunnel budget (3 + 1).
        for i in 0..3 {
            let t = now + Duration::from_millis(i as u64);
            slots.begin(&id(i), &key, Purpose::Tunnel, a, t).unwrap();
        }
        slots.begin(&id(3), &key, Purpose::Tunnel, b, now).unwrap();
        // a's first slot was opened by a browser: it is kept; a's oldest unopened one goes.
        slots.open(&id(0), now).unwrap();
        slots.begin(&id(4), &key, Purpose::Tunnel, c, now).unwrap();
        assert!(slots.waiting(&id(0), now).is_some());
        assert!(slots.waiting(&id(1), now).is_none(), "evicted");
        assert!(slots.waiting(&id(2), now).is_some());
        // a still holds 2 (one opened): a newcomer takes a's unopened one...
        let d = IpAddr::from([10, 0, 0, 4]);
        slots.begin(&id(5), &key, Purpose::Tunnel, d, now).unwrap();
        assert!(slots.waiting(&id(2), now).is_none(), "evicted");
        assert!(slots.waiting(&id(0), now).is_some(), "opened: kept");
        // ...and now each of a, b, c, d holds one: shared fairly, so one more is refused,
        // from a newcomer or from a holder.
        let e = IpAddr::from([10, 0, 0, 5]);
        assert_eq!(
            slots.begin(&id(6), &key, Purpose::Tunnel, e, now),
            Err(TransferError::Full)
        );
        assert_eq!(
            slots.begin(&id(7), &key, Purpose::Tunnel, b, now),
            Err(TransferError::Full)
        );
        assert_eq!(slots.len(), 4);
    }

    #[test]
    fn an_adopted_slot_is_opened_outlives_the_poll_grace_and_takes_no_budget() {
        let now = Instant::now();
        let cli = Opener::new();
        let limits = SlotLimits {
            app: 1,
            tunnel: 1,
            per_source: 1,
        };
        let mut slots = Slots::new(limits);
        let age = Duration::from_secs(100);
        let w = slots
            .adopt(
                &cli.id,
                &cli.public,
                Purpose::App("ssh.site.com".into()),
                CLI,
                age,
                now,
            )
            .unwrap();
        assert_eq!(w.code, confirmation_code(&cli.id, &cli.public));
        assert_eq!((w.requester, w.age), (CLI, age));
        // Opened already: a second browser here is refused, and so is a second adoption.
        assert_eq!(slots.open(&cli.id, now), Err(TransferError::AlreadyOpened));
        assert_eq!(
            slots
                .adopt(&cli.id, &cli.public, Purpose::Tunnel, CLI, age, now)
                .unwrap_err(),
            TransferError::Replay
        );
        // Its CLI polls another edge: it lives past the poll grace, until the transfer's TTL
        // counted from when the CLI began it.
        let later = now + POLL_GRACE * 2;
        assert!(slots.waiting(&cli.id, later).is_some());
        assert!(slots.waiting(&cli.id, now + (TRANSFER_TTL - age)).is_none());
        // The source's and the kind's budgets here are untouched.
        let other = Opener::new();
        slots
            .begin(&other.id, &other.public, Purpose::App("h".into()), CLI, now)
            .unwrap();
        // A transfer too old to finish is not adopted.
        let old = Opener::new();
        assert_eq!(
            slots
                .adopt(
                    &old.id,
                    &old.public,
                    Purpose::Tunnel,
                    CLI,
                    TRANSFER_TTL,
                    now
                )
                .unwrap_err(),
            TransferError::Unknown
        );
        slots.complete(&cli.id, b"token", later).unwrap();
        assert!(matches!(slots.take(&cli.id, later), Ok(Poll::Ready(_))));
    }
}
