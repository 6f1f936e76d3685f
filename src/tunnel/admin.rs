//! The origin side of named-tunnel administration: `postern tunnel create`, `route dns`,
//! `list`, `info` and `delete`, each one request to the edge's admin API
//! ([`crate::edge::admin`]) authenticated with the zone's origin certificate (`cert.pem`).
//! Blocking and short-lived, like the CLI that calls it; `HTTPS_PROXY` applies as for tunnels.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rustls::ClientConfig;
use serde_json::{json, Value};

use super::config::{edge_server_name, TunnelCredentials};
use crate::access::{self, AccessOptions, Credentials};
use crate::pki::{self, OriginCredential};
use crate::proto::ADMIN_ALPN as ALPN;

/// Where and as whom to reach the edge's admin API.
pub struct AdminClient {
    opts: AccessOptions,
    cfg: Arc<ClientConfig>,
}

impl AdminClient {
    /// `edge`: `host:port`; `extra_ca`: a CA for the edge's TLS besides the system roots and
    /// the ones in the credential.
    pub fn new(
        cred: &OriginCredential,
        edge: &str,
        extra_ca: Option<&Path>,
    ) -> Result<AdminClient, String> {
        let roots = pki::root_store(extra_ca, &cred.ca).map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cred.cert.clone()], cred.key.clone_key())
            .map_err(|e| format!("origin certificate unusable: {e}"))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(AdminClient {
            opts: AccessOptions {
                hostname: edge_server_name(edge, &cred.zone),
                edge: edge.to_owned(),
                extra_ca: None,
                credentials: Credentials::None,
                resume: None,
                resume_granted: None,
                destination: None,
            },
            cfg: Arc::new(cfg),
        })
    }

    /// Sends `fallback` as the TLS name when the edge's address is no name (a named tunnel
    /// sends the first hostname of its ingress rules, as `tunnel run` does).
    pub fn with_fallback_name(mut self, fallback: &str) -> AdminClient {
        self.opts.hostname = edge_server_name(&self.opts.edge, fallback);
        self
    }

    /// Where and how it connects: the setup `tunnel doctor` walks hop by hop.
    pub(crate) fn edge_setup(&self) -> (&AccessOptions, &Arc<ClientConfig>) {
        (&self.opts, &self.cfg)
    }

    /// One request; a non-2xx answer is an error with the edge's reason.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string());
        let (status, answer) = access::https_request(
            &self.opts,
            &self.cfg,
            method,
            path,
            body.as_deref().map(str::as_bytes),
        )
        .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(v);
        }
        Err(match v.get("error").and_then(Value::as_str) {
            Some(e) => format!(
                "the edge refused ({status}): {}",
                crate::logging::untrusted(e)
            ),
            None if status == 400 && answer.is_empty() => format!(
                "the edge at {} has no tunnel admin API (an older postern?)",
                self.opts.edge
            ),
            None => format!("the edge answered {status}"),
        })
    }
}

fn path_segment(s: &str) -> String {
    crate::proto::url::encode(s)
}

/// `tunnel create NAME`: makes the tunnel at the edge and writes its credentials file
/// (0600). Returns the file and what to print.
pub fn create(
    client: &AdminClient,
    origin: &OriginCredential,
    name: &str,
    out: Option<&Path>,
    default_dir: &Path,
) -> Result<String, String> {
    if let Some(p) = out.filter(|p| p.exists()) {
        return Err(format!(
            "{} exists: pass --credentials-file with another path",
            p.display()
        ));
    }
    let v = client.call("POST", "/v1/tunnels", Some(json!({ "name": name })))?;
    let id = v["id"].as_str().ok_or("the edge's answer has no id")?;
    let pem = v["credential"]
        .as_str()
        .ok_or("the edge's answer has no credential")?;
    let mut cred = OriginCredential::parse(pem).map_err(|e| format!("credential: {e}"))?;
    // Where the edge is and which CA it uses, as the origin certificate knows them.
    cred.edge.clone_from(&origin.edge);
    for ca in &origin.ca {
        if !cred.ca.contains(ca) {
            cred.ca.push(ca.clone());
        }
    }
    let path = match out {
        Some(p) => p.to_path_buf(),
        None => default_dir.join(format!("{id}.json")),
    };
    let written = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            if path.exists() {
                return Err(std::io::Error::other("the file exists"));
            }
            TunnelCredentials {
                zone: cred.zone.clone(),
                id: id.to_owned(),
                name: name.to_owned(),
                credential: cred.to_pem(),
            }
            .write(&path)
        });
    if let Err(e) = written {
        // Without its credentials the tunnel is useless: take it back at the edge.
        let undo = client.call("DELETE", &format!("/v1/tunnels/{id}"), None);
        return Err(format!(
            "{}: {e}; {}",
            path.display(),
            match undo {
                Ok(_) => format!("tunnel {name} was deleted again at the edge"),
                Err(u) => format!(
                    "tunnel {name} ({id}) stays at the edge without credentials ({u}): delete it"
                ),
            }
        ));
    }
    Ok(format!(
        "Tunnel credentials written to {}. Keep this file secret: it is all `postern tunnel \
         run` needs. To revoke these credentials, delete the tunnel.\n\nCreated tunnel {name} \
         with id {id}\n",
        path.display()
    ))
}

/// `tunnel route dns NAME HOST`.
pub fn route_dns(
    client: &AdminClient,
    tunnel: &str,
    host: &str,
    overwrite: bool,
) -> Result<String, String> {
    let v = client.call(
        "PUT",
        &format!("/v1/routes/{}", path_segment(host)),
        Some(json!({ "tunnel": tunnel, "overwrite": overwrite })),
    )?;
    let (name, id) = (
        v["name"].as_str().unwrap_or(tunnel),
        v["tunnel"].as_str().unwrap_or(""),
    );
    Ok(if v["unchanged"] == json!(true) {
        format!("{host} is already routed to tunnel {name} ({id})\n")
    } else if let Some(old) = v["replaced"].as_str() {
        format!("Added route: {host} is routed to tunnel {name} ({id}), replacing {old}\n")
    } else {
        format!("Added route: {host} is routed to tunnel {name} ({id})\n")
    })
}

/// `tunnel list`: a table, or the edge's JSON.
pub fn list(client: &AdminClient, as_json: bool) -> Result<String, String> {
    let v = client.call("GET", "/v1/tunnels", None)?;
    if as_json {
        return Ok(format!("{:#}\n", v["tunnels"]));
    }
    let tunnels = v["tunnels"].as_array().cloned().unwrap_or_default();
    if tunnels.is_empty() {
        return Ok(
            "No tunnels were found for this zone. Create one with `postern tunnel create NAME`.\n"
                .into(),
        );
    }
    let mut out = format!(
        "{:<36}  {:<20}  {:<20}  {}\n",
        "ID", "NAME", "CREATED", "CONNECTIONS"
    );
    for t in &tunnels {
        let conns = t["connections"].as_array().map_or(0, Vec::len);
        out.push_str(&format!(
            "{:<36}  {:<20}  {:<20}  {}\n",
            t["id"].as_str().unwrap_or(""),
            t["name"].as_str().unwrap_or(""),
            time(&t["created"]),
            conns
        ));
    }
    Ok(out)
}

/// `tunnel info NAME`: the tunnel, its routes and its connections.
pub fn info(client: &AdminClient, tunnel: &str, as_json: bool) -> Result<String, String> {
    let t = client.call(
        "GET",
        &format!("/v1/tunnels/{}", path_segment(tunnel)),
        None,
    )?;
    if as_json {
        return Ok(format!("{t:#}\n"));
    }
    let routes: Vec<&str> = t["routes"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = format!(
        "NAME:     {}\nID:       {}\nZONE:     {}\nCREATED:  {}\nROUTES:   {}\n\n",
        t["name"].as_str().unwrap_or(""),
        t["id"].as_str().unwrap_or(""),
        t["zone"].as_str().unwrap_or(""),
        time(&t["created"]),
        if routes.is_empty() {
            "(none: add one with `postern tunnel route dns`)".to_owned()
        } else {
            routes.join(", ")
        }
    );
    let conns = t["connections"].as_array().cloned().unwrap_or_default();
    if conns.is_empty() {
        out.push_str(&format!(
            "Tunnel {} has no active connection.\n",
            t["name"].as_str().unwrap_or("")
        ));
        return Ok(out);
    }
    out.push_str(&format!(
        "{:<32}  {:>2}  {:<39}  {:<20}  {:>7}  {}\n",
        "CONNECTOR ID", "HA", "ORIGIN IP", "OPENED", "STREAMS", "RTT"
    ));
    for c in &conns {
        out.push_str(&format!(
            "{:<32}  {:>2}  {:<39}  {:<20}  {:>7}  {}\n",
            c["connector"].as_str().unwrap_or(""),
            c["ha_index"].as_u64().unwrap_or(0),
            c["origin"].as_str().unwrap_or(""),
            time(&c["opened"]),
            c["streams"].as_u64().unwrap_or(0),
            round_trip(&c["rtt_us"]),
        ));
    }
    Ok(out)
}

/// `tunnel delete NAME`: at the edge, then the local credentials file if `creds` is given.
pub fn delete(
    client: &AdminClient,
    tunnel: &str,
    force: bool,
    creds: Option<PathBuf>,
) -> Result<String, String> {
    let q = if force { "?force=true" } else { "" };
    let v = client.call(
        "DELETE",
        &format!("/v1/tunnels/{}{q}", path_segment(tunnel)),
        None,
    )?;
    let routes = v["routes"].as_array().map_or(0, Vec::len);
    let mut out = format!(
        "Deleted tunnel {} ({}): {routes} route(s) removed, {} connection(s) closed\n",
        v["name"].as_str().unwrap_or(tunnel),
        v["id"].as_str().unwrap_or(""),
        v["closed"]
    );
    // Only the file of the tunnel just deleted: another zone's or an older tunnel's file of the
    // same name keeps its key.
    let id = v["id"].as_str().unwrap_or("");
    let ours = creds.filter(|p| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<TunnelCredentials>(&t).ok())
            .is_some_and(|c| c.id == id)
    });
    if let Some(p) = ours {
        match std::fs::remove_file(&p) {
            Ok(()) => out.push_str(&format!("Removed the credentials file {}\n", p.display())),
            Err(e) => out.push_str(&format!(
                "The credentials file {} was not removed: {e}\n",
                p.display()
            )),
        }
    }
    Ok(out)
}

/// A connection's round trip (`rtt_us`) in milliseconds, or "-" before the edge measured it
/// (or from an edge that does not report it).
fn round_trip(v: &Value) -> String {
    match v.as_u64() {
        Some(us) => format!("{:.1} ms", us as f64 / 1000.0),
        None => "-".into(),
    }
}

fn time(v: &Value) -> String {
    match v.as_u64() {
        Some(secs) => {
            let Some(at) = UNIX_EPOCH.checked_add(Duration::from_secs(secs)) else {
                return "-".into();
            };
            let t = crate::audit::rfc3339(at);
            // Seconds are enough in a table.
            format!("{}Z", &t[..19])
        }
        None => "-".into(),
    }
}

/// `edge sessions list`: the zone's live sessions at the edge, oldest first.
pub fn sessions(client: &AdminClient, as_json: bool) -> Result<String, String> {
    let v = client.call("GET", "/v1/sessions", None)?;
    if as_json {
        return Ok(format!("{:#}\n", v["sessions"]));
    }
    let list = v["sessions"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return Ok("No open sessions in this zone at this edge.\n".into());
    }
    let field = |s: &Value, k: &str| crate::logging::escape(s[k].as_str().unwrap_or("-"), 48);
    let mut out = format!(
        "{:<16}  {:<32}  {:<28}  {:<21}  {:>8}  {:>12}  {:>12}\n",
        "ID", "WHO", "HOSTNAME", "SOURCE", "SECONDS", "BYTES UP", "BYTES DOWN"
    );
    for s in &list {
        let who = match (s["email"].as_str(), s["service_token"].as_str()) {
            (Some(e), _) => crate::logging::escape(e, 48),
            (None, Some(t)) => format!("token {}", crate::logging::escape(t, 42)),
            (None, None) => "anonymous".into(),
        };
        out.push_str(&format!(
            "{:<16}  {:<32}  {:<28}  {:<21}  {:>8}  {:>12}  {:>12}\n",
            field(s, "id"),
            who,
            field(s, "hostname"),
            field(s, "source"),
            s["seconds"].as_u64().unwrap_or(0),
            s["bytes_up"].as_u64().unwrap_or(0),
            s["bytes_down"].as_u64().unwrap_or(0),
        ));
    }
    Ok(out)
}

/// `edge sessions kill`: ends the sessions `selector` names (`{"id"}`, `{"email"}`,
/// `{"service_token"}` or `{"hostname"}`); says which.
pub fn kill_sessions(client: &AdminClient, selector: Value) -> Result<String, String> {
    let v = client.call("POST", "/v1/sessions/kill", Some(selector))?;
    let killed: Vec<String> = v["killed"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|id| crate::logging::escape(id, 32))
                .collect()
        })
        .unwrap_or_default();
    Ok(match killed.len() {
        0 => "No open session matched.\n".into(),
        n => format!("Ended {n} session(s): {}\n", killed.join(" ")),
    })
}
