//! An application's SSH certificate settings (the config's `ssh_certificates`) and the
//! decision of what a certificate says: its principals, lifetime and extensions.
//!
//! ```json
//! "ssh_certificates": {
//!   "lifetime": "3m",
//!   "principals": [
//!     { "include": [ { "group": "ops" } ], "principals": ["root"] },
//!     { "include": [ { "service_token": "ci" } ], "principals": ["deploy"] }
//!   ],
//!   "email_local_part": true,
//!   "extensions": ["permit-pty", "permit-port-forwarding"]
//! }
//! ```
//! Every field is optional. A signed-in user gets the principals of every rule that matches
//! them and, unless `email_local_part` is false, the local part of their email
//! (`alice@example.com` → `alice`); a service token gets only the principals of the rules
//! that name it. No principal: no certificate. `lifetime` defaults to 3 minutes (enough to
//! log in; an open session outlives its certificate), at most 24 h. `extensions` defaults
//! to ssh-keygen's five (`permit-X11-forwarding`, `permit-agent-forwarding`,
//! `permit-port-forwarding`, `permit-pty`, `permit-user-rc`).

use serde::Deserialize;

use crate::limits::{MAX_SSH_CERT_LIFETIME_SECS, MAX_SSH_PRINCIPALS, SSH_CERT_LIFETIME_SECS};
use crate::proto::policy::{Identity, Rule};
use crate::proto::sshkey::{valid_principal, DEFAULT_EXTENSIONS};

/// `ssh_certificates` of an application.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshCertificates {
    /// How long a certificate is valid, e.g. `"3m"`.
    #[serde(default = "default_lifetime", deserialize_with = "lifetime")]
    pub lifetime: u64,
    /// Principal rules, in order; all that match contribute.
    #[serde(default)]
    pub principals: Vec<PrincipalRule>,
    /// Whether a signed-in user also gets their email's local part.
    #[serde(default = "yes")]
    pub email_local_part: bool,
    /// The `permit-*` extensions certificates carry.
    #[serde(default = "default_extensions")]
    pub extensions: Vec<String>,
}

impl Default for SshCertificates {
    fn default() -> Self {
        SshCertificates {
            lifetime: default_lifetime(),
            principals: Vec::new(),
            email_local_part: true,
            extensions: default_extensions(),
        }
    }
}

/// `{"include": [rules…], "principals": ["user", …]}`: who (any rule, as a policy's
/// `include`) gets which user names.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalRule {
    pub include: Vec<Rule>,
    pub principals: Vec<String>,
}

fn default_lifetime() -> u64 {
    SSH_CERT_LIFETIME_SECS
}

fn yes() -> bool {
    true
}

fn default_extensions() -> Vec<String> {
    DEFAULT_EXTENSIONS.iter().map(|e| (*e).to_owned()).collect()
}

fn lifetime<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    crate::edge::config::parse_duration(&text)
        .filter(|&s| s <= MAX_SSH_CERT_LIFETIME_SECS)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "ssh_certificates.lifetime {text:?}: use a number with s, m or h, at most 24h, \
                 e.g. \"3m\""
            ))
        })
}

impl SshCertificates {
    /// The checks serde cannot make; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        for (i, rule) in self.principals.iter().enumerate() {
            if rule.principals.is_empty() || rule.principals.len() > MAX_SSH_PRINCIPALS {
                return Err(format!(
                    "ssh_certificates.principals[{i}].principals: 1 to {MAX_SSH_PRINCIPALS} user names"
                ));
            }
            if let Some(p) = rule.principals.iter().find(|p| !valid_principal(p)) {
                return Err(format!(
                    "ssh_certificates.principals[{i}].principals: {p:?} is not a user name \
                     (letters, digits, . _ @ + -, not starting with -)"
                ));
            }
            if rule.include.is_empty() {
                return Err(format!(
                    "ssh_certificates.principals[{i}].include: name at least one rule"
                ));
            }
        }
        for e in &self.extensions {
            if !DEFAULT_EXTENSIONS.contains(&e.as_str()) {
                return Err(format!(
                    "ssh_certificates.extensions: unknown extension {e:?} (use some of {})",
                    DEFAULT_EXTENSIONS.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The principals `id` gets, in config order without repeats; empty means none (refuse).
    /// An anonymous identity (a bypass policy) gets none, whatever the rules say.
    pub fn principals_for(&self, id: &Identity) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if id.email.is_none() && id.service_token.is_none() {
            return out;
        }
        let mut add = |p: &str| {
            if !out.iter().any(|q| q == p) && out.len() < MAX_SSH_PRINCIPALS {
                out.push(p.to_owned());
            }
        };
        for rule in &self.principals {
            if rule.include.iter().any(|r| r.matches(id, false)) {
                rule.principals.iter().for_each(|p| add(p));
            }
        }
        if self.email_local_part {
            if let Some((local, _)) = id.email.as_deref().and_then(|e| e.rsplit_once('@')) {
                if valid_principal(local) {
                    add(local);
                }
            }
        }
        out
    }

    /// The extensions, sorted as a certificate needs them.
    pub fn sorted_extensions(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = self
            .extensions
            .iter()
            .map(|e| (e.clone(), Vec::new()))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> SshCertificates {
        let s: SshCertificates = serde_json::from_str(json).unwrap();
        s.check().unwrap();
        s
    }

    fn user(email: &str, groups: &[&str]) -> Identity {
        Identity {
            email: Some(email.into()),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..Identity::default()
        }
    }

    fn token(name: &str) -> Identity {
        Identity {
            service_token: Some(name.into()),
            ..Identity::default()
        }
    }

    #[test]
    fn principals_come_from_the_email_and_the_rules_that_match() {
        let s = parse(
            r#"{"principals": [
                {"include": [{"group": "ops"}], "principals": ["root", "alice"]},
                {"include": [{"service_token": "ci"}], "principals": ["deploy"]}]}"#,
        );
        assert_eq!(s.principals_for(&user("alice@example.com", &[])), ["alice"]);
        assert_eq!(
            s.principals_for(&user("alice@example.com", &["ops"])),
            ["root", "alice"]
        );
        assert_eq!(s.principals_for(&token("ci")), ["deploy"]);
        assert!(s.principals_for(&token("other")).is_empty());
        assert!(s.principals_for(&Identity::default()).is_empty());
        // A local part that is no user name is dropped, not signed.
        assert!(s.principals_for(&user("-oops@example.com", &[])).is_empty());
        let off = parse(r#"{"email_local_part": false}"#);
        assert!(off
            .principals_for(&user("alice@example.com", &[]))
            .is_empty());
        assert_eq!(SshCertificates::default().lifetime, 180);
    }

    #[test]
    fn bad_settings_are_refused_naming_the_field() {
        for (json, field) in [
            (r#"{"lifetime": "2d"}"#, "ssh_certificates.lifetime"),
            (r#"{"lifetime": "soon"}"#, "ssh_certificates.lifetime"),
            (r#"{"colour": 1}"#, "colour"),
            (
                r#"{"principals": [{"include": [{"group": "g"}], "principals": ["a b"]}]}"#,
                "ssh_certificates.principals[0].principals",
            ),
            (
                r#"{"principals": [{"include": [], "principals": ["a"]}]}"#,
                "ssh_certificates.principals[0].include",
            ),
            (
                r#"{"extensions": ["permit-everything"]}"#,
                "ssh_certificates.extensions",
            ),
        ] {
            let e = match serde_json::from_str::<SshCertificates>(json) {
                Err(e) => e.to_string(),
                Ok(s) => s.check().unwrap_err(),
            };
            assert!(e.contains(field), "{json}: {e}");
        }
    }
}
