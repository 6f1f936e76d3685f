//! Pending logins shared by an edge pool (docs/scaling.md): the CLI's side on one edge, the
//! browser's on another.
//!
//! ```text
//!  CLI ── POST /transfer ──▶ edge A: slot (budgets) + PutLogin transfer/<h(id)> {key, app, requester, began}
//!                                    201 only once the store has it (else 503 "state store unreachable")
//!  browser ── GET /cli?id ──▶ edge B: TakeLogin transfer/<h(id)>: exactly one edge gets it
//!                                    └─ adopt the slot (opened), bind the browser, sign in, confirm (all at B)
//!                                    └─ nothing to take: opened already (or expired): the login ends
//!  B: confirmed ──▶ seal to the CLI's key ──▶ PutLogin outcome/<h(id)> (first writer wins) ─▶ "Signed in"
//!  B or anyone: refused ──▶ PutLogin outcome/<h(id)> {reason}
//!  CLI ── GET /transfer?id ──▶ any edge: TakeLogin outcome/<h(id)>: once; nothing yet: 202
//! ```
//!
//! What stays as with one edge: the link opens in one browser only (the store's take is the
//! test, across the pool; a second opening writes the refusal, and the first browser's
//! confirmation then finds the outcome written and issues nothing); the binding cookie, the
//! dev sign-in code and the typed confirmation code are checked by the edge where the browser
//! opened the link, which holds the browser's part of the login (a browser step that lands on
//! another edge is refused there: it does not know the login). The CLI's key and address and
//! the sealed token are in the store; no plaintext token, cookie, page secret or code is. Keys
//! are a hash of the transfer id, so what etcd holds does not give the login link.

use std::net::IpAddr;
use std::time::Duration;

use log::warn;
use serde::{Deserialize, Serialize};

use super::{expired, json, page, page_with, Carrier, Purpose};
use crate::edge::core::{ConnId, EdgeCore, Waiter};
use crate::proto::token_transfer::{Poll, TransferError, TRANSFER_TTL};
use crate::store::{Answer, PendingLoginRecord, Request, StoreError};

/// What a page says when the pool's store cannot be reached.
pub(crate) const STORE_DOWN: &str = "the edge's state store is unreachable; try again";

/// The transfer as the edge that began it shares it.
#[derive(Serialize, Deserialize)]
struct SharedTransfer {
    /// The CLI's X25519 public key (base64url): what the token is sealed to.
    key: String,
    /// The application hostname; `None`: an origin certificate (`tunnel login`).
    app: Option<String>,
    /// The CLI's address, shown on the confirmation page.
    requester: IpAddr,
    /// Unix seconds.
    began: u64,
    /// The CLI asked for a zone session too.
    #[serde(default)]
    zone_session: bool,
}

/// How a login ended, for its CLI, wherever it polls.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Sealed { epk: String, ct: String },
    Refused { reason: String },
}

/// The store key of a record of transfer `id`: a hash, so the store does not hold the link.
fn record_key(kind: &str, id: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("postern pool login v1\0{id}").as_bytes(),
    );
    format!("{kind}/{}", crate::store::hex(&digest.as_ref()[..16]))
}

fn ttl_secs() -> u64 {
    TRANSFER_TTL.as_secs()
}

/// What a parked login request waits for from the store.
pub(in crate::edge::core) enum Step {
    /// The transfer of a CLI's login start is being shared: then 201 with the code.
    Begun { id: String, code: String },
    /// A browser opened the link of transfer `id`: the store's take says whether it is first.
    Opening { id: String },
    /// The first browser's edge marks the transfer opened (its confirmation takes the mark
    /// back; a second browser's edge takes it first, and the login ends).
    Marking {
        id: String,
        waiting: crate::proto::token_transfer::Waiting,
    },
    /// A confirmed login takes its opened mark: still there, nobody else opened the link.
    Claiming {
        id: String,
        outcome: Vec<u8>,
        done: Box<super::Confirmed>,
    },
    /// A CLI polls transfer `id`.
    Polling { id: String },
    /// A confirmed login's sealed token is being stored: then the page.
    Confirmed(Box<super::Confirmed>),
    /// A refusal written for a CLI; nobody waits.
    Refusal,
}

impl EdgeCore {
    /// Whether pending logins are shared with other edges (an etcd state).
    pub(super) fn shared_logins(&self) -> bool {
        self.settings.etcd.is_some()
    }

    fn submit_login(&mut self, request: Request, conn: Option<ConnId>, step: Step) -> bool {
        let waiter = Waiter::Login {
            conn,
            step: Box::new(step),
        };
        self.store.submit(request, waiter).is_ok()
    }

    /// After the slot of a CLI's login start was made here: share it, and answer once the
    /// store has it.
    pub(super) fn share_transfer(
        &mut self,
        conn: ConnId,
        c: &mut Carrier,
        id: &str,
        purpose: &Purpose,
        code: String,
    ) {
        let Some(key) = self.transfers.key_of(id, self.now).map(str::to_owned) else {
            return json(c, 503, &serde_json::json!({ "error": STORE_DOWN }));
        };
        let shared = SharedTransfer {
            key,
            app: match purpose {
                Purpose::App(h) => Some(h.clone()),
                Purpose::Tunnel => None,
            },
            requester: c.peer.ip(),
            began: self.unix,
            zone_session: self.logins.zone_wanted.contains(id),
        };
        let record = PendingLoginRecord(serde_json::to_vec(&shared).unwrap_or_default());
        let request = Request::PutLogin {
            key: record_key("transfer", id),
            login: record,
            ttl_secs: ttl_secs(),
        };
        let step = Step::Begun {
            id: id.to_owned(),
            code,
        };
        if self.submit_login(request, Some(conn), step) {
            c.core.park();
        } else {
            self.transfers.forget(id);
            json(
                c,
                503,
                &serde_json::json!({ "error": "the edge is busy; try again" }),
            );
        }
    }

    /// A browser opened transfer `id`'s link here: take the transfer from the store (one
    /// edge, one browser), then bind this browser.
    pub(super) fn open_shared(&mut self, conn: ConnId, c: &mut Carrier, id: &str) {
        let request = Request::TakeLogin {
            key: record_key("transfer", id),
        };
        let step = Step::Opening { id: id.to_owned() };
        if self.submit_login(request, Some(conn), step) {
            c.core.park();
        } else {
            page(
                c,
                503,
                "Busy",
                "<p>The edge is busy: reload this page in a moment.</p>",
            );
        }
    }

    /// A CLI polls transfer `id`, which this edge does not hold finished: the outcome, if
    /// any edge wrote one.
    pub(super) fn poll_shared(&mut self, conn: ConnId, c: &mut Carrier, id: &str) {
        let request = Request::TakeLogin {
            key: record_key("outcome", id),
        };
        let step = Step::Polling { id: id.to_owned() };
        if self.submit_login(request, Some(conn), step) {
            c.core.park();
        } else {
            json(
                c,
                503,
                &serde_json::json!({ "error": "the edge is busy; try again" }),
            );
        }
    }

    /// Transfer `id` ended without a token: its CLI learns `why` wherever it polls.
    pub(super) fn refuse_transfer(&mut self, id: &str, why: &str) {
        let now = self.now;
        self.transfers.refuse(id, why, now);
        if !self.shared_logins() {
            return;
        }
        if let Ok(Poll::Refused(reason)) = self.transfers.take(id, now) {
            self.publish_refusal(id, reason);
        }
    }

    fn publish_refusal(&mut self, id: &str, reason: String) {
        let outcome = Outcome::Refused { reason };
        let request = Request::PutLogin {
            key: record_key("outcome", id),
            login: PendingLoginRecord(serde_json::to_vec(&outcome).unwrap_or_default()),
            ttl_secs: ttl_secs(),
        };
        if !self.submit_login(request, None, Step::Refusal) {
            warn!("a login's refusal could not be handed to the state store (busy): its CLI will time out");
        }
    }

    /// A confirmed login: transfer `id`'s token is sealed here; it goes to the store, and
    /// the page says so once it is there.
    pub(super) fn publish_sealed(
        &mut self,
        conn: ConnId,
        c: &mut Carrier,
        id: &str,
        done: super::Confirmed,
    ) {
        let now = self.now;
        let Ok(Poll::Ready(sealed)) = self.transfers.take(id, now) else {
            return expired(c);
        };
        self.transfers.forget(id);
        let outcome = Outcome::Sealed {
            epk: sealed.epk,
            ct: sealed.ct,
        };
        let request = Request::TakeLogin {
            key: record_key("opened", id),
        };
        let step = Step::Claiming {
            id: id.to_owned(),
            outcome: serde_json::to_vec(&outcome).unwrap_or_default(),
            done: Box::new(done),
        };
        if self.submit_login(request, Some(conn), step) {
            c.core.park();
        } else {
            page(
                c,
                503,
                "Busy",
                "<p>The edge is busy: nothing was issued. Run the postern command again.</p>",
            );
        }
    }

    /// The store answered a login step.
    pub(in crate::edge::core) fn login_answered(
        &mut self,
        conn: Option<ConnId>,
        step: Step,
        answer: Answer,
    ) {
        if let (Step::Refusal, Answer::LoginPut { result: Err(e), .. }) = (&step, &answer) {
            if !matches!(e, StoreError::Exists(_)) {
                warn!("a login's refusal was not stored ({e}): its CLI will time out");
            }
        }
        let Some(conn) = conn else {
            return;
        };
        let Some(mut c) = self.take_waiting_carrier(conn) else {
            // The connection went: a transfer already shared or taken stays as it is (it
            // expires); the CLI starts again.
            if let Step::Begun { id, .. } = &step {
                self.transfers.forget(id);
            }
            return;
        };
        match (step, answer) {
            (Step::Begun { id, code }, Answer::LoginPut { result, .. }) => match result {
                Ok(()) => json(
                    &mut c,
                    201,
                    &serde_json::json!({ "status": "pending", "code": code }),
                ),
                Err(e) => {
                    self.transfers.forget(&id);
                    let (status, msg) = match e {
                        StoreError::Exists(_) => (409, TransferError::Replay.to_string()),
                        StoreError::Full => (503, TransferError::Full.to_string()),
                        _ => (503, STORE_DOWN.to_owned()),
                    };
                    json(&mut c, status, &serde_json::json!({ "error": msg }));
                }
            },
            (Step::Opening { id }, Answer::LoginTaken { result, .. }) => {
                self.opened_shared(conn, &mut c, &id, result)
            }
            (Step::Marking { id, waiting }, Answer::LoginPut { result, .. }) => match result {
                Ok(()) => self.bind_browser(&mut c, &id, waiting),
                Err(_) => {
                    self.transfers.forget(&id);
                    page(
                        &mut c,
                        503,
                        "Try again",
                        &format!("<p>Sign-in is unavailable: {STORE_DOWN}. Run the postern command again.</p>"),
                    )
                }
            },
            (Step::Claiming { id, outcome, done }, Answer::LoginTaken { result, .. }) => {
                match result {
                    Ok(Some(_)) => {
                        let request = Request::PutLogin {
                            key: record_key("outcome", &id),
                            login: PendingLoginRecord(outcome),
                            ttl_secs: ttl_secs(),
                        };
                        if self.submit_login(request, Some(conn), Step::Confirmed(done)) {
                            c.core.park();
                        } else {
                            page(
                                &mut c,
                                503,
                                "Busy",
                                "<p>The edge is busy: nothing was issued. Run the postern command again.</p>",
                            );
                        }
                    }
                    Ok(None) => self.cancelled(&mut c, *done),
                    Err(_) => page(
                        &mut c,
                        503,
                        "Try again",
                        &format!("<p>Nothing was issued: {STORE_DOWN}. Run the postern command again.</p>"),
                    ),
                }
            }
            (Step::Polling { id }, Answer::LoginTaken { result, .. }) => match result {
                Ok(Some(record)) => match serde_json::from_slice::<Outcome>(&record.0) {
                    Ok(Outcome::Sealed { epk, ct }) => {
                        self.transfers.forget(&id);
                        json(&mut c, 200, &serde_json::json!({ "epk": epk, "ct": ct }))
                    }
                    Ok(Outcome::Refused { reason }) => {
                        self.transfers.forget(&id);
                        json(&mut c, 403, &serde_json::json!({ "error": reason }))
                    }
                    Err(_) => json(
                        &mut c,
                        500,
                        &serde_json::json!({ "error": "the pool's record of this login is malformed" }),
                    ),
                },
                Ok(None) => json(&mut c, 202, &serde_json::json!({ "status": "pending" })),
                Err(_) => json(&mut c, 503, &serde_json::json!({ "error": STORE_DOWN })),
            },
            (Step::Confirmed(done), Answer::LoginPut { result, .. }) => match result {
                Ok(()) => self.confirmed(&mut c, *done),
                // Another browser opened the link meanwhile and its edge wrote the refusal
                // first: nothing is issued.
                Err(StoreError::Exists(_)) => self.cancelled(&mut c, *done),
                Err(e) => {
                    warn!("a confirmed login could not be handed to the state store: {e}");
                    page(
                        &mut c,
                        503,
                        "Try again",
                        &format!(
                            "<p>Nothing was issued: {STORE_DOWN}. Run the postern command again.</p>"
                        ),
                    );
                }
            },
            (_, other) => {
                warn!("bug: a login step answered with {:?}", other.is_ok());
                page(&mut c, 500, "Error", "<p>Edge error.</p>");
            }
        }
        self.put_back_carrier(conn, c);
    }

    /// The link was opened in another browser too: nothing is issued.
    fn cancelled(&mut self, c: &mut Carrier, done: super::Confirmed) {
        let mut audit = done.audit;
        audit.insert("decision".into(), "deny".into());
        audit.insert("reason".into(), "link opened in another browser".into());
        self.audit.record(done.event, audit);
        page_with(
            c,
            409,
            "Login cancelled",
            "<p>This login link was also opened in another browser, so the login was \
             cancelled and nothing was issued. Run the postern command again, and open its \
             link in one browser only.</p>",
            &[("Set-Cookie", done.clear.as_str())],
        );
    }

    /// The store's take of a transfer whose link this browser opened.
    fn opened_shared(
        &mut self,
        conn: ConnId,
        c: &mut Carrier,
        id: &str,
        result: Result<Option<PendingLoginRecord>, StoreError>,
    ) {
        let now = self.now;
        let record = match result {
            Ok(Some(record)) => record,
            Ok(None) => {
                // Opened already in another browser (at any edge), or expired: as with one
                // edge, a second opening ends the login.
                warn!(
                    "login link opened in a second browser or after it expired ({}): the login ends",
                    c.peer
                );
                // The first browser's mark goes, so its confirmation issues nothing.
                let take = Request::TakeLogin {
                    key: record_key("opened", id),
                };
                if !self.submit_login(take, None, Step::Refusal) {
                    warn!("a login's opened mark could not be taken (store busy)");
                }
                self.publish_refusal(
                    id,
                    "the login link was opened in two browsers: if you did not share it, \
                     someone else has it; start the login again"
                        .to_owned(),
                );
                self.transfers.forget(id);
                return page(
                    c,
                    409,
                    "Login link already used",
                    "<p>This login link was already opened in another browser (so it has been \
                     cancelled), or it has expired. Run the postern command again, and open \
                     its link in one browser only.</p>",
                );
            }
            Err(_) => {
                return page(
                    c,
                    503,
                    "Try again",
                    &format!("<p>Sign-in is unavailable: {STORE_DOWN}.</p>"),
                )
            }
        };
        let Ok(shared) = serde_json::from_slice::<SharedTransfer>(&record.0) else {
            return expired(c);
        };
        if shared.zone_session && shared.app.is_some() {
            self.logins.zone_wanted.insert(id.to_owned());
        }
        let purpose = match shared.app {
            Some(h) => Purpose::App(h),
            None => Purpose::Tunnel,
        };
        // Begun here: this edge's slot opens (its CLI may poll here); else it is adopted.
        let waiting = if self.transfers.key_of(id, now) == Some(shared.key.as_str()) {
            self.transfers.open(id, now)
        } else {
            let age = Duration::from_secs(self.unix.saturating_sub(shared.began));
            self.transfers
                .adopt(id, &shared.key, purpose, shared.requester, age, now)
        };
        match waiting {
            Ok(waiting) => {
                let request = Request::PutLogin {
                    key: record_key("opened", id),
                    login: PendingLoginRecord(Vec::new()),
                    ttl_secs: ttl_secs(),
                };
                let step = Step::Marking {
                    id: id.to_owned(),
                    waiting,
                };
                if self.submit_login(request, Some(conn), step) {
                    c.core.park();
                } else {
                    self.transfers.forget(id);
                    page(
                        c,
                        503,
                        "Busy",
                        "<p>The edge is busy: run the postern command again in a moment.</p>",
                    );
                }
            }
            Err(TransferError::Full) => page(
                c,
                503,
                "Busy",
                "<p>Too many logins in progress at this edge: try again in a minute.</p>",
            ),
            Err(_) => expired(c),
        }
    }
}
