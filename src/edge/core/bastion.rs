//! Jump-host (bastion) mode at the edge: a carrier that names a destination
//! (`Cf-Access-Jump-Destination`, cloudflared's header) is let through only if its
//! application has a `bastion` allow-list that admits it, before anything reaches a tunnel.
//! The destination then travels to the origin in OPEN's claims, in its canonical form.

use crate::edge::config::Application;
use crate::logging::escape;
use crate::metrics::Auth;
use crate::proto::destination::{self, Destination};
use crate::proto::http::RequestHead;

/// The destination a carrier asks for, if any, checked against `app`'s allow-list: `Ok(None)`
/// for none, the refusal's text (safe to show and log: it never quotes the header) if the
/// destination is malformed or not allowed.
pub(super) fn check(
    header: Option<&str>,
    app: &Application,
) -> Result<Option<Destination>, String> {
    let Some(text) = header else {
        return Ok(None);
    };
    let d = Destination::parse(text).map_err(|why| format!("bad destination: {why}"))?;
    let Some(bastion) = &app.bastion else {
        return Err(format!(
            "{} is not a jump host: its application has no bastion allow-list, so it takes \
             no --destination",
            app.hostname
        ));
    };
    match bastion.allow.admits(&d) {
        Some(_) => Ok(Some(d)),
        None => Err(format!(
            "destination {d} is not in the bastion allow-list of {}",
            app.hostname
        )),
    }
}

impl super::EdgeCore {
    /// Refuses a carrier's destination: the reason to the client (`status`), an audit line
    /// with what it asked for (escaped, clipped), a log line and the `destination` counter.
    pub(super) fn refuse_destination(
        &mut self,
        c: &mut super::Carrier,
        mut audit: serde_json::Map<String, serde_json::Value>,
        head: &RequestHead,
        status: u16,
        why: &str,
    ) {
        if let Some(asked) = head.header(destination::HEADER) {
            audit.insert("destination".into(), escape(asked, 64).into());
        }
        audit.insert("reason".into(), why.into());
        self.deny(audit, Auth::Destination);
        let reason = if status == 403 {
            "Forbidden"
        } else {
            "Bad Gateway"
        };
        super::carrier::refuse(c, status, reason, why);
    }
}
