//! Access policies: who may reach an application. Pure functions, no I/O.
//!
//! An application has ordered policies. A policy matches an identity when **any** `include`
//! rule matches, **every** `require` rule matches, and **no** `exclude` rule matches. The
//! first matching policy decides (`allow`, `deny`, or `bypass`: allow without credentials);
//! when none matches, the answer is deny.
//!
//! Step-up rules (`amr`, `acr`) look at how the person signed in at the identity provider, as
//! its ID token said (RFC 8176 method references, the provider's assurance class): a `require`
//! of `{"amr": "mfa"}` lets in only logins the provider vouches were multi-factor. A service
//! token never matches them.

use serde::Deserialize;

/// Who is asking, as far as the edge has verified it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Verified email from the identity provider (lowercase); `None` when the provider said
    /// `email_verified: false` (an absent claim counts as verified).
    pub email: Option<String>,
    /// Groups from the identity provider.
    pub groups: Vec<String>,
    /// Name of the service token presented.
    pub service_token: Option<String>,
    /// How the person signed in at the provider (empty for service tokens and dev sign-ins).
    pub authn: Authentication,
}

/// What the provider's ID token said about the sign-in itself; carried on in the app token so
/// that every later decision (each connection, a reload, a zone-session exchange) sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authentication {
    /// `amr`: the methods used (`pwd`, `otp`, `mfa`, `hwk`, … RFC 8176), as the provider lists them.
    pub amr: Vec<String>,
    /// `acr`: the authentication context class the provider reached.
    pub acr: Option<String>,
    /// `auth_time`: when the person last authenticated at the provider (Unix seconds).
    pub auth_time: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
    Bypass,
}

/// One rule. Written in the config as `{"email": "a@b.c"}`, `{"email_domain": "b.c"}`, ...
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Rule {
    /// Every signed-in user (as Cloudflare's "Everyone"); in a `bypass` policy, anyone at all.
    Everyone(bool),
    /// A verified email, compared case-insensitively.
    Email(String),
    /// Several emails.
    Emails(Vec<String>),
    /// Everyone whose verified email is in this domain.
    EmailDomain(String),
    /// A member of this identity-provider group.
    Group(String),
    /// A service token by name.
    ServiceToken(String),
    /// Any service token minted by this edge.
    AnyValidServiceToken(bool),
    /// A sign-in whose `amr` lists this method, e.g. `"mfa"` (Cloudflare calls the rule
    /// "authentication method").
    #[serde(alias = "auth_method")]
    Amr(String),
    /// A sign-in whose `acr` is this class.
    Acr(String),
}

impl Rule {
    /// A rule about how the person signed in rather than who they are.
    pub fn is_step_up(&self) -> bool {
        matches!(self, Rule::Amr(_) | Rule::Acr(_))
    }

    /// True if the rule matches `id` (`bypass`: in a bypass policy, `everyone` is anyone).
    pub fn matches(&self, id: &Identity, bypass: bool) -> bool {
        let email = id.email.as_deref();
        match self {
            Rule::Everyone(b) => *b && (bypass || email.is_some()),
            Rule::Email(e) => email.is_some_and(|m| m.eq_ignore_ascii_case(e)),
            Rule::Emails(list) => {
                email.is_some_and(|m| list.iter().any(|e| m.eq_ignore_ascii_case(e)))
            }
            Rule::EmailDomain(d) => email
                .and_then(|m| m.rsplit_once('@'))
                .is_some_and(|(_, dom)| dom.eq_ignore_ascii_case(d.trim_start_matches('@'))),
            Rule::Group(g) => id.groups.iter().any(|x| x == g),
            Rule::ServiceToken(n) => id.service_token.as_deref() == Some(n.as_str()),
            Rule::AnyValidServiceToken(b) => *b && id.service_token.is_some(),
            Rule::Amr(m) => id.service_token.is_none() && id.authn.amr.iter().any(|a| a == m),
            Rule::Acr(c) => {
                id.service_token.is_none() && id.authn.acr.as_deref() == Some(c.as_str())
            }
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Shown in the audit log; defaults to the policy's position.
    #[serde(default)]
    pub name: Option<String>,
    pub decision: Decision,
    pub include: Vec<Rule>,
    #[serde(default)]
    pub require: Vec<Rule>,
    #[serde(default)]
    pub exclude: Vec<Rule>,
}

impl Policy {
    pub fn matches(&self, id: &Identity) -> bool {
        self.matches_assuming(id, false)
    }

    /// [`Policy::matches`]; with `step_up`, as if every `amr`/`acr` rule in `include` and
    /// `require` held (what a stronger sign-in by the same person would get).
    fn matches_assuming(&self, id: &Identity, step_up: bool) -> bool {
        let bypass = self.decision == Decision::Bypass;
        let holds = |r: &Rule| (step_up && r.is_step_up()) || r.matches(id, bypass);
        self.include.iter().any(holds)
            && self.require.iter().all(holds)
            && !self.exclude.iter().any(|r| r.matches(id, bypass))
    }
}

/// The outcome, with what to write in the audit log.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allow: bool,
    /// Which policy decided (name or `#N`), or `default deny`.
    pub policy: String,
}

/// First matching policy wins; no match is a deny.
pub fn evaluate(policies: &[Policy], id: &Identity) -> Verdict {
    evaluate_assuming(policies, id, false)
}

fn evaluate_assuming(policies: &[Policy], id: &Identity, step_up: bool) -> Verdict {
    for (i, p) in policies.iter().enumerate() {
        if p.matches_assuming(id, step_up) {
            return Verdict {
                allow: p.decision != Decision::Deny,
                policy: p.name.clone().unwrap_or_else(|| format!("#{}", i + 1)),
            };
        }
    }
    Verdict {
        allow: false,
        policy: "default deny".into(),
    }
}

/// Whether a person `evaluate` refuses would be let in by a stronger sign-in (the `amr`/`acr`
/// rules met): then the refusal can say "sign in with MFA" rather than "not allowed".
pub fn needs_step_up(policies: &[Policy], id: &Identity) -> bool {
    id.service_token.is_none()
        && !evaluate(policies, id).allow
        && evaluate_assuming(policies, id, true).allow
}

/// True when some policy lets a request in without any credential.
pub fn bypasses(policies: &[Policy]) -> bool {
    evaluate(policies, &Identity::default()).allow
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(email: &str, groups: &[&str]) -> Identity {
        Identity {
            email: Some(email.into()),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            ..Identity::default()
        }
    }

    fn policies(json: &str) -> Vec<Policy> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn emails_domains_and_groups() {
        let p = policies(
            r#"[{"decision":"allow","include":[{"email":"Alice@Example.com"},{"email_domain":"ops.example"},{"group":"admins"}]}]"#,
        );
        assert!(evaluate(&p, &user("alice@example.com", &[])).allow);
        assert!(evaluate(&p, &user("bob@ops.example", &[])).allow);
        assert!(evaluate(&p, &user("carol@else.example", &["admins"])).allow);
        assert!(!evaluate(&p, &user("mallory@example.com", &["users"])).allow);
        // A domain rule is not a suffix match.
        assert!(!evaluate(&p, &user("eve@evilops.example", &[])).allow);
    }

    /// `oidc` leaves the email out of an identity whose provider says `email_verified: false`;
    /// such an identity matches no email, domain or everyone rule.
    #[test]
    fn an_identity_without_a_verified_email_matches_no_email_rule() {
        let p = policies(
            r#"[{"decision":"allow","include":[{"email":"m@example.com"},{"emails":["m@example.com"]},{"email_domain":"example.com"},{"everyone":true}]}]"#,
        );
        let unverified = Identity {
            email: None,
            groups: vec!["users".into()],
            ..Identity::default()
        };
        assert!(!evaluate(&p, &unverified).allow);
        assert!(evaluate(&p, &user("m@example.com", &[])).allow);
    }

    #[test]
    fn first_match_wins_so_an_earlier_deny_beats_a_later_allow() {
        let p = policies(
            r#"[{"name":"no-contractors","decision":"deny","include":[{"group":"contractors"}]},
                {"decision":"allow","include":[{"email_domain":"example.com"}]}]"#,
        );
        let v = evaluate(&p, &user("dan@example.com", &["contractors"]));
        assert_eq!(
            v,
            Verdict {
                allow: false,
                policy: "no-contractors".into()
            }
        );
        assert!(evaluate(&p, &user("erin@example.com", &[])).allow);
        assert_eq!(evaluate(&p, &user("x@y.z", &[])).policy, "default deny");
    }

    #[test]
    fn require_and_exclude() {
        let p = policies(
            r#"[{"decision":"allow","include":[{"email_domain":"example.com"}],
                 "require":[{"group":"ssh"}],"exclude":[{"email":"fired@example.com"}]}]"#,
        );
        assert!(evaluate(&p, &user("a@example.com", &["ssh"])).allow);
        assert!(!evaluate(&p, &user("a@example.com", &[])).allow);
        assert!(!evaluate(&p, &user("fired@example.com", &["ssh"])).allow);
    }

    #[test]
    fn service_tokens_only_where_named() {
        let p = policies(r#"[{"decision":"allow","include":[{"service_token":"ci"}]}]"#);
        let ci = Identity {
            service_token: Some("ci".into()),
            ..Identity::default()
        };
        let other = Identity {
            service_token: Some("laptop".into()),
            ..Identity::default()
        };
        assert!(evaluate(&p, &ci).allow);
        assert!(!evaluate(&p, &other).allow);
        assert!(!bypasses(&p));
        let open = policies(r#"[{"decision":"bypass","include":[{"everyone":true}]}]"#);
        assert!(bypasses(&open));
        // "everyone" in an allow policy means every signed-in user, not anonymous callers.
        let users = policies(r#"[{"decision":"allow","include":[{"everyone":true}]}]"#);
        assert!(!bypasses(&users));
        assert!(evaluate(&users, &user("a@b.c", &[])).allow);
        assert!(!evaluate(&users, &ci).allow);
    }

    #[test]
    fn step_up_rules_look_at_how_the_person_signed_in() {
        let p = policies(
            r#"[{"name":"prod","decision":"allow","include":[{"group":"ops"}],
                 "require":[{"amr":"mfa"}]},
                {"name":"gold","decision":"allow","include":[{"acr":"gold"}]}]"#,
        );
        let mut pwd = user("a@example.com", &["ops"]);
        pwd.authn.amr = vec!["pwd".into()];
        let mut mfa = pwd.clone();
        mfa.authn.amr.push("mfa".into());
        assert!(!evaluate(&p, &pwd).allow);
        assert!(needs_step_up(&p, &pwd), "a stronger sign-in would do");
        assert_eq!(evaluate(&p, &mfa).policy, "prod");
        assert!(!needs_step_up(&p, &mfa));
        // Someone outside the group is refused whatever the sign-in: no step-up helps.
        let mut outsider = user("b@example.com", &[]);
        outsider.authn.amr = vec!["mfa".into()];
        assert!(!evaluate(&p, &outsider).allow);
        let mut gold = user("c@example.com", &[]);
        gold.authn.acr = Some("gold".into());
        assert_eq!(evaluate(&p, &gold).policy, "gold");
        // A service token never matches a step-up rule, whatever it claims.
        let token = Identity {
            service_token: Some("ci".into()),
            authn: Authentication {
                amr: vec!["mfa".into()],
                acr: Some("gold".into()),
                auth_time: None,
            },
            ..Identity::default()
        };
        assert!(!evaluate(&p, &token).allow);
        assert!(!needs_step_up(&p, &token));
        // Cloudflare's name for the rule reads the same.
        let cf = policies(r#"[{"decision":"allow","include":[{"auth_method":"mfa"}]}]"#);
        assert!(evaluate(&cf, &mfa).allow && !evaluate(&cf, &pwd).allow);
    }

    #[test]
    fn unknown_rule_is_an_error_naming_it() {
        let e = serde_json::from_str::<Vec<Policy>>(
            r#"[{"decision":"allow","include":[{"emial":"a@b.c"}]}]"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("emial"), "{e}");
    }
}
