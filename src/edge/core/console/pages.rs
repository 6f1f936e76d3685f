//! The console's HTML: small server-rendered pages under the login pages' headers (strict
//! CSP, no script, `X-Frame-Options: DENY`). Every value that came from a peer, a provider, the
//! store or the audit log goes through [`html`].

use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use super::super::login::respond;
use super::super::Carrier;
use super::{Admin, BASE};
use crate::audit::Recent;
use crate::limits::CONSOLE_AUDIT_SHOWN;
use crate::proto::url::{html, param};
use crate::store::ServiceTokenRecord;

const STYLE: &str = "body{font-family:sans-serif;margin:0;line-height:1.4;color:#222}\
    header{background:#24292f;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;\
    align-items:center;flex-wrap:wrap}header a{color:#fff;text-decoration:none}\
    header b{margin-right:1em}header form{margin-left:auto}main{padding:1em 1.2em;\
    max-width:80em}table{border-collapse:collapse;width:100%;margin:.5em 0 1.5em}\
    th,td{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top;\
    font-size:.92em}th{background:#f3f3f3}code{font-size:.95em}.notice{background:#fff6d5;\
    border:1px solid #e6d38a;padding:.5em .8em}.secret{font-family:monospace;font-size:1.1em;\
    background:#eef;padding:.3em .5em;word-break:break-all}.muted{color:#777}\
    form.filters{display:flex;gap:.6em;flex-wrap:wrap;align-items:end}\
    form.filters label{display:flex;flex-direction:column;font-size:.85em}\
    button{cursor:pointer}button.kill{color:#a00}td.details{word-break:break-all;\
    font-size:.8em}";

/// A page outside the console's frame (errors, sign-in outcomes).
pub(super) fn plain(c: &mut Carrier, status: u16, title: &str, body_html: &str) {
    plain_with(c, status, title, body_html, &[]);
}

pub(super) fn plain_with(
    c: &mut Carrier,
    status: u16,
    title: &str,
    body_html: &str,
    extra: &[(&str, &str)],
) {
    let doc = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width\"><title>{t}</title><style>body{{font-family:sans-serif;\
         max-width:34em;margin:4em auto;padding:0 1em;line-height:1.5}}</style></head><body>\
         <h1>{t}</h1>{body_html}</body></html>",
        t = html(title)
    );
    send(c, status, &doc, extra);
}

fn send(c: &mut Carrier, status: u16, doc: &str, extra: &[(&str, &str)]) {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    };
    respond(
        c,
        status,
        reason,
        "text/html; charset=utf-8",
        doc.as_bytes(),
        extra,
    );
}

/// 403 for someone the `admins` policy does not name.
pub(super) fn not_admin(c: &mut Carrier, who: &str) {
    plain(
        c,
        403,
        "Not an administrator",
        &format!(
            "<p>You are signed in as <b>{}</b>, who is not an administrator of this edge \
             (the config's <code>admins</code> policy does not allow you). This attempt was \
             recorded.</p>",
            html(who)
        ),
    );
}

/// The page that sets the console cookie after the provider's redirect. The cookie is
/// `SameSite=Strict`, so it would not go with a redirect that ends a cross-site chain: this
/// page moves on by itself (a same-site navigation), or with its link.
pub(super) fn signed_in(c: &mut Carrier, who: &str, next: &str, extra: &[(&str, &str)]) {
    let doc = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" \
         content=\"0;url={next}\"><title>Signed in</title></head><body \
         style=\"font-family:sans-serif;margin:4em auto;max-width:34em\"><h1>Signed in</h1>\
         <p>Signed in to the console as <b>{}</b>. <a href=\"{next}\">Open the console</a>.\
         </p></body></html>",
        html(who),
        next = html(next)
    );
    send(c, 200, &doc, extra);
}

/// A console page: the frame (navigation, who is signed in, sign-out) around `body_html`.
pub(super) fn console(c: &mut Carrier, status: u16, title: &str, admin: &Admin, body_html: &str) {
    let email = html(&super::who(&admin.identity));
    let doc = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width\"><title>{t} · postern console</title><style>{STYLE}\
         </style></head><body><header><b>postern console</b><a href=\"{BASE}\">Overview</a>\
         <a href=\"{BASE}/sessions\">Sessions</a><a href=\"{BASE}/audit\">Audit log</a>\
         <a href=\"{BASE}/tokens\">Service tokens</a><form method=\"post\" \
         action=\"{BASE}/sign-out\"><span>{email}</span> <input type=\"hidden\" name=\"csrf\" \
         value=\"{csrf}\"><button>Sign out</button></form></header><main><h1>{t}</h1>\
         {body_html}</main></body></html>",
        t = html(title),
        csrf = html(&admin.csrf),
    );
    send(c, status, &doc, &[]);
}

/// `n` bytes, for people.
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Unix seconds as RFC 3339 UTC.
fn time(unix: u64) -> String {
    crate::audit::rfc3339(UNIX_EPOCH + Duration::from_secs(unix))
}

fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        _ => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn connections_table(conns: &[Value], now: u64) -> String {
    if conns.is_empty() {
        return "<p class=\"muted\">No connection.</p>".into();
    }
    let rows: String = conns
        .iter()
        .map(|c| {
            format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{} ({} ago)</td>\
                 <td>{}</td><td>{}</td></tr>",
                html(s(c, "connector")),
                n(c, "ha_index"),
                html(s(c, "origin")),
                html(&time(n(c, "opened"))),
                duration(now.saturating_sub(n(c, "opened"))),
                n(c, "streams"),
                c["rtt_us"]
                    .as_u64()
                    .map_or("-".into(), |us| format!("{:.1} ms", us as f64 / 1000.0)),
            )
        })
        .collect();
    format!(
        "<table><tr><th>connector</th><th>HA index</th><th>origin address</th><th>connected \
         since</th><th>streams</th><th>round trip</th></tr>{rows}</table>"
    )
}

/// The overview: the chart, the named tunnels and the ad-hoc registrations.
pub(super) fn overview(
    svg: &str,
    open: usize,
    named: &[Value],
    adhoc: &[(String, Vec<Value>)],
    now: u64,
) -> String {
    let mut out = format!(
        "<p><b>{open}</b> open session(s). <a href=\"{BASE}/sessions\">See them</a>.</p>\
         <h2>Last hour</h2>{svg}<h2>Named tunnels</h2>"
    );
    if named.is_empty() {
        out.push_str("<p class=\"muted\">No named tunnel.</p>");
    }
    for t in named {
        let routes: Vec<String> = t["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|r| format!("<code>{}</code>", html(r)))
            .collect();
        let conns = t["connections"].as_array().cloned().unwrap_or_default();
        out.push_str(&format!(
            "<h3>{} <span class=\"muted\">({}, zone {}, {} connection(s))</span></h3><p>Routes: \
             {}</p>{}",
            html(s(t, "name")),
            html(s(t, "id")),
            html(s(t, "zone")),
            conns.len(),
            if routes.is_empty() {
                "none".into()
            } else {
                routes.join(", ")
            },
            connections_table(&conns, now)
        ));
    }
    out.push_str("<h2>Hostnames registered with <code>tunnel --hostname</code></h2>");
    if adhoc.is_empty() {
        out.push_str("<p class=\"muted\">None.</p>");
    }
    for (host, conns) in adhoc {
        out.push_str(&format!(
            "<h3>{} <span class=\"muted\">({} connection(s))</span></h3>{}",
            html(host),
            conns.len(),
            connections_table(conns, now)
        ));
    }
    out
}

/// The live sessions, each with its Kill form.
pub(super) fn sessions(list: &[Value], csrf: &str, notice: Option<&str>) -> String {
    let mut out = notice.unwrap_or_default().to_owned();
    if list.is_empty() {
        out.push_str("<p class=\"muted\">No open session.</p>");
        return out;
    }
    let rows: String = list
        .iter()
        .map(|v| {
            let who = match (v["email"].as_str(), v["service_token"].as_str()) {
                (Some(e), _) => html(e),
                (None, Some(t)) => format!("service token <b>{}</b>", html(t)),
                (None, None) => "anonymous".into(),
            };
            format!(
                "<tr><td><code>{id}</code></td><td>{who}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td><form method=\"post\" \
                 action=\"{BASE}/sessions/kill\"><input type=\"hidden\" name=\"csrf\" \
                 value=\"{csrf}\"><input type=\"hidden\" name=\"id\" value=\"{id}\"><button \
                 class=\"kill\" name=\"kill\" value=\"{id}\">Kill</button></form></td></tr>",
                html(s(v, "hostname")),
                html(s(v, "source")),
                html(&time(n(v, "started"))),
                duration(n(v, "seconds")),
                bytes(n(v, "bytes_up")),
                bytes(n(v, "bytes_down")),
                id = html(s(v, "id")),
                csrf = html(csrf),
            )
        })
        .collect();
    out.push_str(&format!(
        "<table><tr><th>session</th><th>who</th><th>hostname</th><th>source</th><th>started\
         </th><th>for</th><th>bytes up</th><th>bytes down</th><th></th></tr>{rows}</table>\
         <p class=\"muted\">Kill ends the session at once: the client is told \"session ended \
         by an administrator\" and may connect again if the policy still allows it (revoke \
         its service token, or change the policy, to keep it out).</p>"
    ));
    out
}

/// The service tokens, a form to create one, a Revoke form per live one.
pub(super) fn tokens(
    list: &[(&ServiceTokenRecord, bool)],
    csrf: &str,
    notice: Option<&str>,
    now: u64,
) -> String {
    let csrf = html(csrf);
    let mut out = notice.unwrap_or_default().to_owned();
    let rows: String = list
        .iter()
        .map(|(t, revoked)| {
            let action = if *revoked {
                "<span class=\"muted\">revoked</span>".to_owned()
            } else {
                format!(
                    "<form method=\"post\" action=\"{BASE}/tokens/revoke\"><input \
                     type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" \
                     name=\"client_id\" value=\"{}\"><button class=\"kill\">Revoke</button>\
                     </form>",
                    html(&t.client_id)
                )
            };
            format!(
                "<tr><td><b>{}</b></td><td><code>{}</code></td><td>{}</td><td>{}</td>\
                 <td>{action}</td></tr>",
                html(&t.name),
                html(&t.client_id),
                html(&time(t.created)),
                validity(t, *revoked, now),
            )
        })
        .collect();
    if list.is_empty() {
        out.push_str("<p class=\"muted\">No service token.</p>");
    } else {
        out.push_str(&format!(
            "<table><tr><th>name</th><th>client id</th><th>created</th><th>valid</th><th></th>\
             </tr>{rows}</table>"
        ));
    }
    out.push_str(&format!(
        "<h2>Create a service token</h2><form method=\"post\" action=\"{BASE}/tokens/create\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><label>Name <input name=\"name\" \
         required maxlength=\"64\" pattern=\"[A-Za-z0-9._-]+\"></label> <button>Create</button>\
         </form><p class=\"muted\">The secret is shown once, on the next page; the edge keeps \
         only its hash.</p>"
    ));
    out
}

/// A token's expiry and rotation overlap, flagged when the expiry is less than
/// [`crate::limits::SERVICE_TOKEN_EXPIRY_WARNING_SECS`] away (as the log warns).
fn validity(t: &ServiceTokenRecord, revoked: bool, now: u64) -> String {
    if revoked {
        return String::new();
    }
    let mut out = match t.expires {
        None => "<span class=\"muted\">no expiry</span>".to_owned(),
        Some(at) if at <= now => format!("<b class=\"kill\">expired</b> {}", html(&time(at))),
        Some(at) if at - now < crate::limits::SERVICE_TOKEN_EXPIRY_WARNING_SECS => format!(
            "<span class=\"notice\">expires in {} h</span> {}",
            (at - now).div_ceil(3600),
            html(&time(at))
        ),
        Some(at) => format!("until {}", html(&time(at))),
    };
    if let Some(prev) = t.previous.as_ref().filter(|p| p.until > now) {
        out.push_str(&format!(
            "<br><span class=\"muted\">rotated: the old secret works until {}</span>",
            html(&time(prev.until))
        ));
    }
    out
}

/// What a token's creation shows: its id and, this once, its secret.
pub(super) fn token_created(name: &str, client_id: &str, secret: &str) -> String {
    format!(
        "<div class=\"notice\"><p>Service token <b>{}</b> created. Copy the secret now: it is \
         shown this once and kept nowhere.</p><p>CF-Access-Client-Id: <span class=\"secret\">{}\
         </span></p><p>CF-Access-Client-Secret: <span class=\"secret\">{}</span></p></div>",
        html(name),
        html(client_id),
        html(secret)
    )
}

/// The filters the audit page takes, from its query.
struct Filters<'a> {
    identity: &'a str,
    hostname: &'a str,
    decision: &'a str,
    event: &'a str,
    since: &'a str,
    until: &'a str,
}

impl Filters<'_> {
    /// Whether the audit line `v` (with its `time`) passes every filter given.
    fn keep(&self, v: &Value) -> bool {
        let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
        let contains =
            |hay: &str, needle: &str| hay.to_lowercase().contains(&needle.to_lowercase());
        let who_matches = ["email", "service_token", "admin", "client_id", "name"]
            .iter()
            .any(|k| contains(field(k), self.identity));
        let time = field("time");
        (self.identity.is_empty() || who_matches)
            && (self.hostname.is_empty() || contains(field("hostname"), self.hostname))
            && (self.decision.is_empty() || field("decision") == self.decision)
            && (self.event.is_empty() || field("event") == self.event)
            // RFC 3339 UTC and the form's `YYYY-MM-DDTHH:MM` compare as text.
            && (self.since.is_empty() || time >= self.since)
            && (self.until.is_empty() || time.get(..self.until.len()).unwrap_or(time) <= self.until)
    }
}

/// The audit page: the filter form, then the newest matching lines.
pub(super) fn audit(recent: &Recent, query: &[(String, String)]) -> String {
    let get = |k| param(query, k).unwrap_or("").trim();
    let f = Filters {
        identity: get("identity"),
        hostname: get("hostname"),
        decision: get("decision"),
        event: get("event"),
        since: get("since"),
        until: get("until"),
    };
    let option = |value: &str, current: &str, label: &str| {
        format!(
            "<option value=\"{v}\"{sel}>{l}</option>",
            v = html(value),
            sel = if value == current { " selected" } else { "" },
            l = html(label)
        )
    };
    let decisions: String = [
        ("", "any"),
        ("allow", "allow"),
        ("deny", "deny"),
        ("close", "close"),
    ]
    .iter()
    .map(|(v, l)| option(v, f.decision, l))
    .collect();
    let mut out = format!(
        "<form class=\"filters\" method=\"get\" action=\"{BASE}/audit\">\
         <label>identity<input name=\"identity\" value=\"{}\" placeholder=\"email or token\"></label>\
         <label>hostname<input name=\"hostname\" value=\"{}\"></label>\
         <label>decision<select name=\"decision\">{decisions}</select></label>\
         <label>event<input name=\"event\" value=\"{}\" placeholder=\"e.g. session_end\" size=\"12\"></label>\
         <label>from (UTC)<input type=\"datetime-local\" name=\"since\" value=\"{}\"></label>\
         <label>to (UTC)<input type=\"datetime-local\" name=\"until\" value=\"{}\"></label>\
         <button>Filter</button></form>",
        html(f.identity),
        html(f.hostname),
        html(f.event),
        html(f.since),
        html(f.until),
    );
    let shown: Vec<Value> = recent
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| f.keep(v))
        .take(CONSOLE_AUDIT_SHOWN)
        .collect();
    if shown.is_empty() {
        out.push_str("<p class=\"muted\">No matching line.</p>");
        return out;
    }
    let rows: String = shown
        .iter()
        .map(|v| {
            let who = ["admin", "email", "service_token", "client_id"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str))
                .unwrap_or("");
            let rest: serde_json::Map<String, Value> = v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| {
                    !["time", "event", "decision", "hostname", "reason"].contains(&k.as_str())
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut details = Value::Object(rest).to_string();
            if let Some((cut, _)) = details.char_indices().nth(400) {
                details.truncate(cut);
                details.push('…');
            }
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td class=\"details\"><code>{}</code></td></tr>",
                html(s(v, "time")),
                html(s(v, "event")),
                html(who),
                html(s(v, "hostname")),
                html(s(v, "decision")),
                html(s(v, "reason")),
                html(&details),
            )
        })
        .collect();
    out.push_str(&format!(
        "<p class=\"muted\">The newest {} matching line(s) of the last ones this edge keeps in \
         memory (the audit log file has them all).</p><table><tr><th>time (UTC)</th><th>event\
         </th><th>who</th><th>hostname</th><th>decision</th><th>reason</th><th>details</th>\
         </tr>{rows}</table>",
        shown.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_filters_match_identity_hostname_decision_and_time() {
        let line = serde_json::json!({
            "time": "2026-12-01T22:40:05Z", "event": "session_end", "email": "alice@example.com",
            "hostname": "ssh.localhost", "decision": "close"
        });
        let f = |identity, hostname, decision, since, until| Filters {
            identity,
            hostname,
            decision,
            event: "",
            since,
            until,
        };
        assert!(f("", "", "", "", "").keep(&line));
        assert!(f(
            "ALICE",
            "ssh",
            "close",
            "2026-12-01T22:40",
            "2026-12-01T22:40"
        )
        .keep(&line));
        assert!(!f("bob", "", "", "", "").keep(&line));
        assert!(!f("", "web", "", "", "").keep(&line));
        assert!(!f("", "", "allow", "", "").keep(&line));
        assert!(!f("", "", "", "2026-12-01T22:41", "").keep(&line));
        assert!(!f("", "", "", "", "2026-12-01T22:39").keep(&line));
    }

    #[test]
    fn peer_text_in_the_audit_page_is_escaped() {
        let mut recent = Recent::default();
        recent.push_for_tests(
            &serde_json::json!({"time": "t", "event": "access", "hostname": "<script>x</script>",
                "email": "\"><img src=x>"})
            .to_string(),
        );
        let page = audit(&recent, &[]);
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("&lt;script&gt;"), "{page}");
    }

    #[test]
    fn peer_text_in_the_sessions_and_tokens_pages_is_escaped() {
        let list = [serde_json::json!({
            "id": "\"><b>id", "email": "<img src=x>@example.com", "hostname": "<i>h</i>",
            "source": "127.0.0.1:1", "started": 0, "seconds": 5, "bytes_up": 1, "bytes_down": 2
        })];
        let page = sessions(&list, "tok\"en", None);
        for raw in ["<img", "<i>", "\"><b>", "tok\"en"] {
            assert!(!page.contains(raw), "{raw} unescaped: {page}");
        }
        let record = ServiceTokenRecord::new("<script>", "\"onclick=x", "s", 0, None);
        let page = tokens(&[(&record, false)], "t", None, 0);
        assert!(
            !page.contains("<script>") && !page.contains("\"onclick"),
            "{page}"
        );
        let shown = token_created("<n>", "<id>", "<secret>");
        assert!(!shown.contains("<secret>") && shown.contains("&lt;secret&gt;"));
    }

    #[test]
    fn tokens_near_their_expiry_are_flagged_and_rotations_shown() {
        let now = 1_800_000_000;
        let day = 86_400;
        let soon = ServiceTokenRecord::new("soon", "a", "s", 0, Some(now + 2 * day));
        let later = ServiceTokenRecord::new("later", "b", "s", 0, Some(now + 60 * day));
        let gone = ServiceTokenRecord::new("gone", "c", "s", 0, Some(now - 1));
        let mut rotated = ServiceTokenRecord::new("rotated", "d", "s", 0, None);
        rotated.previous = Some(crate::store::PreviousSecret {
            secret_sha256: "x".into(),
            until: now + 3600,
        });
        let row = |r: &ServiceTokenRecord| {
            let page = tokens(&[(r, false)], "t", None, now);
            page.split("<tr>").nth(2).unwrap_or_default().to_owned()
        };
        assert!(row(&soon).contains("expires in 48 h"), "{}", row(&soon));
        assert!(!row(&later).contains("expires in"), "{}", row(&later));
        assert!(row(&later).contains("until "), "{}", row(&later));
        assert!(row(&gone).contains("expired"), "{}", row(&gone));
        assert!(row(&rotated).contains("old secret works until"));
        assert!(row(&rotated).contains("no expiry"));
    }

    #[test]
    fn byte_counts_read_as_people_say_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
