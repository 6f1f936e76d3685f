//! The edge's SSH certificate authority: one Ed25519 key in the state (or key) directory,
//! `ssh-ca.key`, written 0600 on first start in the `openssh-key-v1` format `ssh-keygen`
//! reads (so an operator can inspect it with `ssh-keygen -y -f`). It signs the short-lived
//! user certificates of `/cdn-cgi/access/cert_sign`; servers trust its public line
//! (`TrustedUserCAKeys`), served at `/cdn-cgi/access/ssh-ca` and printed by
//! `postern edge ssh-ca`.
//!
//! Rotation (`postern edge ssh-ca --rotate`, or by hand): the old public line goes to
//! `ssh-ca-previous.pub`, a new `ssh-ca.key` is made; after a restart the edge signs with the
//! new key and keeps listing the old line(s), so servers that fetch the list trust both;
//! remove the old line once every server has the new one (certificates last minutes).
//! An edge pool shares the key like the app-token keys: one file copied to every edge.

use std::io;

use ring::signature::Ed25519KeyPair;

use crate::proto::sshkey::{self, PublicKey};
use crate::store::StateDir;

/// The CA's private key file in the state (or `--keys`) directory.
pub const KEY_FILE: &str = "ssh-ca.key";
/// Public lines of retired CA keys, still listed (one `ssh-ed25519 …` line each).
pub const PREVIOUS_FILE: &str = "ssh-ca-previous.pub";
/// The comment of the CA's public line.
pub const COMMENT: &str = "postern-ssh-ca";

/// The loaded CA. No `Debug`: it holds the private key.
pub struct SshCa {
    pair: Ed25519KeyPair,
    public: PublicKey,
    previous: Vec<PublicKey>,
}

impl SshCa {
    /// Loads `ssh-ca.key` from `state`, creating it (0600) if it is not there.
    pub fn load_or_create(state: &StateDir) -> io::Result<SshCa> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let path = state.path().join(KEY_FILE);
        let seed = match state.read(KEY_FILE)? {
            Some(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| invalid(format!("{}: not text", path.display())))?;
                sshkey::decode_private_ed25519(&text)
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?
            }
            None => {
                let seed = crate::io::random_bytes::<32>();
                let check = u32::from_be_bytes(crate::io::random_bytes::<4>());
                let text = sshkey::encode_private_ed25519(&seed, COMMENT, check);
                state.write_atomic(KEY_FILE, text.as_bytes(), 0o600)?;
                log::info!("created the SSH certificate authority {}", path.display());
                seed
            }
        };
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| invalid(format!("{}: not an Ed25519 key", path.display())))?;
        let public = sshkey::ed25519_public(&pair);
        let mut previous = Vec::new();
        if let Some(bytes) = state.read(PREVIOUS_FILE)? {
            let text = String::from_utf8_lossy(&bytes);
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let key = PublicKey::parse_line(line)
                    .map_err(|e| invalid(format!("{PREVIOUS_FILE} line {}: {e}", i + 1)))?;
                if key != public && !previous.contains(&key) {
                    previous.push(key);
                }
            }
        }
        Ok(SshCa {
            pair,
            public,
            previous,
        })
    }

    /// Replaces the signing key with a new one and keeps the old public line listed in
    /// `ssh-ca-previous.pub` (written first: a crash in between leaves the old key signing,
    /// listed once). Running edges sign with the new key after a restart.
    pub fn rotate(state: &StateDir) -> io::Result<SshCa> {
        let old = SshCa::load_or_create(state)?;
        let mut previous = match state.read(PREVIOUS_FILE)? {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => String::new(),
        };
        if !previous.is_empty() && !previous.ends_with('\n') {
            previous.push('\n');
        }
        previous.push_str(&format!("{}\n", old.public.to_line(COMMENT)));
        state.write_atomic(PREVIOUS_FILE, previous.as_bytes(), 0o644)?;
        let seed = crate::io::random_bytes::<32>();
        let check = u32::from_be_bytes(crate::io::random_bytes::<4>());
        let text = sshkey::encode_private_ed25519(&seed, COMMENT, check);
        state.write_atomic(KEY_FILE, text.as_bytes(), 0o600)?;
        log::info!(
            "rotated the SSH certificate authority; the old key stays listed in {PREVIOUS_FILE}"
        );
        SshCa::load_or_create(state)
    }

    /// The key that signs.
    pub fn pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }

    /// The signing key's public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The `TrustedUserCAKeys` file's content: the signing key's line, then the retired ones.
    pub fn lines(&self) -> String {
        std::iter::once(&self.public)
            .chain(&self.previous)
            .map(|k| format!("{}\n", k.to_line(COMMENT)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{mode_of, TempDir};

    #[test]
    fn the_ca_key_is_created_0600_once_and_lists_retired_keys() {
        let tmp = TempDir::new("sshca");
        let state = StateDir::open(&tmp.0).unwrap();
        let ca = SshCa::load_or_create(&state).unwrap();
        assert_eq!(mode_of(&tmp.0.join(KEY_FILE)), 0o600);
        let again = SshCa::load_or_create(&state).unwrap();
        assert_eq!(again.public(), ca.public());
        assert_eq!(ca.lines(), format!("{}\n", ca.public().to_line(COMMENT)));
        // A manual rotation: the old line goes to ssh-ca-previous.pub, the key away.
        let old = ca.lines();
        std::fs::write(tmp.0.join(PREVIOUS_FILE), &old).unwrap();
        std::fs::remove_file(tmp.0.join(KEY_FILE)).unwrap();
        let rotated = SshCa::load_or_create(&state).unwrap();
        assert_ne!(rotated.public(), ca.public());
        assert_eq!(
            rotated.lines(),
            format!("{}\n{old}", rotated.public().to_line(COMMENT))
        );
        // `rotate` does the same in one step, keeping every earlier line.
        let again = SshCa::rotate(&state).unwrap();
        assert_ne!(again.public(), rotated.public());
        assert_eq!(mode_of(&tmp.0.join(KEY_FILE)), 0o600);
        assert_eq!(
            again.lines(),
            format!(
                "{}\n{old}{}\n",
                again.public().to_line(COMMENT),
                rotated.public().to_line(COMMENT)
            )
        );
        std::fs::write(tmp.0.join(PREVIOUS_FILE), "ssh-ed25519 nonsense\n").unwrap();
        let e = SshCa::load_or_create(&state).err().unwrap();
        assert!(e.to_string().contains("ssh-ca-previous.pub line 1"), "{e}");
    }
}
