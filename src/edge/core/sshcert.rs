//! `POST /cdn-cgi/access/cert_sign`: a short-lived OpenSSH user certificate for the caller's
//! public key, and `GET /cdn-cgi/access/ssh-ca`: the CA line servers trust.
//!
//! ```text
//!  client ── POST https://H/cdn-cgi/access/cert_sign      cf-access-token: <app token for H>
//!            {"public_key": "ssh-ed25519 AAAA…"}          (or cf-access-client-id/secret)
//!         ◀─ 200 {"certificate": "ssh-ed25519-cert-v01@openssh.com AAAA…", "principals": […],
//!                 "valid_after": …, "valid_before": …, "serial": "…", "fingerprint": "SHA256:…"}
//! ```
//!
//! The caller is checked as a carrier is (the same tokens, the same application policy for
//! H); the certificate's principals, lifetime and extensions come from H's
//! `ssh_certificates` (`edge::sshcerts`). Every issuance is an audit line (`ssh_certificate`:
//! identity, principals, key fingerprint, serial, validity); every refusal is one too.

use super::view::Verified;
use super::{Carrier, EdgeCore};
use crate::limits::SSH_CERT_BACKDATE_SECS;
use crate::metrics::Auth;
use crate::proto::carrier;
use crate::proto::policy::Identity;
use crate::proto::sshkey::{self, Certificate, PublicKey};

/// The signing endpoint's path.
pub(super) const CERT_SIGN: &str = "/cdn-cgi/access/cert_sign";
/// The CA's public line(s).
pub(super) const SSH_CA: &str = "/cdn-cgi/access/ssh-ca";

/// What a client sends. `jwt` and `issuer` are the fields of cloudflared's `ssh-gen` body
/// (its app token travels there, not in a header); `issuer` is not used.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    public_key: String,
    /// The application; must be the request's Host when given (a token is checked for it).
    #[serde(default)]
    hostname: Option<String>,
    /// An app token, when no `cf-access-token` header carries one.
    #[serde(default)]
    jwt: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    issuer: Option<String>,
}

fn answer(c: &mut Carrier, status: u16, reason: &str, value: &serde_json::Value) {
    let body = value.to_string();
    c.core.respond(
        status,
        reason,
        &[
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ],
        body.as_bytes(),
        c.now,
    );
}

impl EdgeCore {
    /// `GET /cdn-cgi/access/ssh-ca`: public, the `TrustedUserCAKeys` file's content.
    pub(super) fn ssh_ca_page(&self, c: &mut Carrier) {
        let lines = self.settings.ssh_ca.lines();
        c.core.respond(
            200,
            "OK",
            &[
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Cache-Control", "no-store"),
                ("Connection", "close"),
            ],
            lines.as_bytes(),
            c.now,
        );
    }

    /// `POST /cdn-cgi/access/cert_sign` (the Host already matched the SNI). `looked_up`: the
    /// store was asked about its service token already.
    pub(super) fn cert_sign(
        &mut self,
        slot: usize,
        c: &mut Carrier,
        request: carrier::Request,
        looked_up: bool,
    ) {
        let mut audit = serde_json::Map::new();
        audit.insert("peer".into(), c.peer.to_string().into());
        audit.insert(
            "hostname".into(),
            super::carrier::recorded_host(&request.host).into(),
        );
        audit.insert("what".into(), "ssh certificate".into());
        if request.head.method != "POST" {
            return super::refuse(c, 405, "Method Not Allowed", "POST a public key here");
        }
        let Some(app) = self.settings.application(&request.host) else {
            audit.insert("reason".into(), "no application".into());
            self.deny(audit, Auth::NoApplication);
            let why = format!("no application for {} on this edge", request.host);
            return super::refuse(c, 404, "Not Found", &why);
        };
        let app_hostname = app.hostname.clone();
        let body: SignRequest = match serde_json::from_slice(&request.body) {
            Ok(b) => b,
            Err(e) => {
                let why = format!(
                    "the body must be JSON {{\"public_key\": \"ssh-ed25519 AAAA…\"}}: {}",
                    crate::logging::escape(&e.to_string(), 120)
                );
                return super::refuse(c, 400, "Bad Request", &why);
            }
        };
        let head = &request.head;
        let identity = match (
            head.header("cf-access-client-id"),
            head.header("cf-access-client-secret"),
            head.header("cf-access-token").or(body.jwt.as_deref()),
        ) {
            (Some(id), Some(secret), _) => match self.tokens.verify(id, secret, self.unix) {
                Verified::Unknown if !looked_up => {
                    let id = id.to_owned();
                    return self.look_up_token(slot, c, request, id);
                }
                Verified::Token(name) => Identity {
                    service_token: Some(name),
                    ..Identity::default()
                },
                Verified::Revoked => {
                    audit.insert("reason".into(), "service token revoked".into());
                    self.deny(audit, Auth::BadServiceToken);
                    return super::refuse(c, 403, "Forbidden", "service token revoked");
                }
                Verified::Expired => {
                    audit.insert("reason".into(), "service token expired".into());
                    self.deny(audit, Auth::BadServiceToken);
                    return super::refuse(c, 403, "Forbidden", "service token expired");
                }
                Verified::Refused | Verified::Unknown => {
                    audit.insert(
                        "reason".into(),
                        "unknown service token or bad secret".into(),
                    );
                    self.deny(audit, Auth::BadServiceToken);
                    return super::refuse(
                        c,
                        403,
                        "Forbidden",
                        "service token refused: unknown client id or wrong secret",
                    );
                }
            },
            (_, _, Some(token)) => match self.verify_app_token(token, &app_hostname) {
                Ok(id) => id,
                Err(why) => {
                    audit.insert("reason".into(), format!("app token refused: {why}").into());
                    self.deny(audit, Auth::BadAppToken);
                    let why = format!("app token refused ({why}): log in again");
                    return super::refuse(c, 401, "Unauthorized", &why);
                }
            },
            _ => {
                audit.insert("reason".into(), "no credentials".into());
                self.deny(audit, Auth::NoCredentials);
                let why = format!(
                    "a certificate needs a login: postern access login {} (or a service token)",
                    request.host
                );
                return super::refuse(c, 401, "Unauthorized", &why);
            }
        };
        if let Some(e) = &identity.email {
            audit.insert("email".into(), e.clone().into());
        }
        if let Some(t) = &identity.service_token {
            audit.insert("service_token".into(), t.clone().into());
        }
        let Some(app) = self.settings.application(&request.host) else {
            return super::refuse(c, 404, "Not Found", "application gone");
        };
        let verdict = app.decide(&identity);
        audit.insert("policy".into(), verdict.policy.clone().into());
        let who = identity
            .email
            .clone()
            .or_else(|| {
                identity
                    .service_token
                    .as_ref()
                    .map(|t| format!("service token {t}"))
            })
            .unwrap_or_default();
        if !verdict.allow {
            audit.insert("reason".into(), "policy".into());
            self.deny(audit, Auth::Policy);
            let why = format!(
                "access denied: {who} is not allowed to reach {}",
                request.host
            );
            return super::refuse(c, 403, "Forbidden", &why);
        }
        let ssh = app.ssh_certificates.clone();
        if body
            .hostname
            .as_deref()
            .is_some_and(|h| !h.eq_ignore_ascii_case(&request.host))
        {
            return super::refuse(
                c,
                400,
                "Bad Request",
                "hostname differs from the host the request was sent to",
            );
        }
        let key = match PublicKey::parse_line(&body.public_key) {
            Ok(k) => k,
            Err(e) => {
                audit.insert("reason".into(), format!("public key refused: {e}").into());
                self.deny(audit, Auth::Policy);
                return super::refuse(c, 400, "Bad Request", &format!("public_key: {e}"));
            }
        };
        audit.insert("fingerprint".into(), key.fingerprint().into());
        let principals = ssh.principals_for(&identity);
        if principals.is_empty() {
            audit.insert("reason".into(), "no principal".into());
            self.deny(audit, Auth::Policy);
            let why = format!(
                "no SSH principal for {who} on {app_hostname}: the edge's operator maps one in \
                 applications[].ssh_certificates.principals"
            );
            return super::refuse(c, 403, "Forbidden", &why);
        }
        let serial = u64::from_be_bytes(crate::io::random_bytes::<8>());
        let valid_after = self.unix.saturating_sub(SSH_CERT_BACKDATE_SECS);
        let valid_before = self.unix.saturating_add(ssh.lifetime);
        let key_id: String = format!("postern:{who}")
            .chars()
            .map(|ch| {
                if ch.is_ascii_graphic() || ch == ' ' {
                    ch
                } else {
                    '?'
                }
            })
            .take(crate::limits::MAX_SSH_KEY_ID)
            .collect();
        let cert = Certificate {
            nonce: crate::io::random_bytes::<32>().to_vec(),
            key: key.clone(),
            serial,
            cert_type: sshkey::USER_CERT,
            key_id,
            principals: principals.clone(),
            valid_after,
            valid_before,
            critical_options: Vec::new(),
            extensions: ssh.sorted_extensions(),
        };
        let blob = match cert.sign(self.settings.ssh_ca.pair()) {
            Ok(b) => b,
            Err(e) => {
                audit.insert("reason".into(), format!("not signed: {e}").into());
                self.deny(audit, Auth::Policy);
                return super::refuse(c, 500, "Internal Server Error", &e.to_string());
            }
        };
        let line = sshkey::cert_line(&key, &blob, &app_hostname);
        audit.insert("decision".into(), "allow".into());
        audit.insert("principals".into(), principals.clone().into());
        audit.insert("serial".into(), serial.to_string().into());
        audit.insert("valid_after".into(), valid_after.into());
        audit.insert("valid_before".into(), valid_before.into());
        log::info!(
            "ssh certificate for {} ({}) serial {serial}, principals {}, valid {}s",
            crate::logging::untrusted(&who),
            key.fingerprint(),
            principals.join(","),
            valid_before - self.unix
        );
        self.audit.record("ssh_certificate", audit);
        // `id` and `expires_at` are the fields cloudflared's ssh-gen reads.
        let expires_at = i64::try_from(valid_before)
            .ok()
            .and_then(|t| jiff::Timestamp::from_second(t).ok())
            .map(|t| t.to_string())
            .unwrap_or_default();
        answer(
            c,
            200,
            "OK",
            &serde_json::json!({
                "id": serial.to_string(),
                "expires_at": expires_at,
                "certificate": line,
                "principals": principals,
                "serial": serial.to_string(),
                "valid_after": valid_after,
                "valid_before": valid_before,
                "fingerprint": key.fingerprint(),
            }),
        );
    }
}
