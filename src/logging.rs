//! Log output: human lines (the default) or JSON lines (`--log-format json`), on stderr, and
//! with cloudflared's `--logfile FILE` appended to FILE as well (created 0600: a log names
//! users, hosts and addresses).
//!
//! Levels come from `RUST_LOG` (env_logger's filter syntax); cloudflared's
//! `--loglevel debug|info|warn|error|fatal` overrides it (`fatal` is `error`: there is no
//! fatal level in `log`). A JSON line is one object with `time` (RFC 3339, UTC, milliseconds),
//! `level`, `target` and `message`, built with serde_json, so quotes, newlines and control
//! characters in a message are escaped and every line parses on its own.
//!
//! Third-party wire traces stay off unless asked for by name: a bare level (`RUST_LOG=trace`,
//! `--loglevel debug`) reaches [`WIRE_TARGETS`] capped at `info`, because their debug and trace
//! records show what goes over the wire (ureq-proto hexdumps the OIDC token request with the
//! client secret, and the tokens that come back; the client's login poll and admin commands
//! answer with sealed tokens and, for `tunnel create`, a private key). `RUST_LOG=ureq_proto=trace` still turns them
//! on, with a warning that the output may contain secrets.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// How many characters of untrusted text [`untrusted`] shows before it clips.
pub use crate::limits::MAX_LOGGED_NAME as UNTRUSTED_MAX_CHARS;

/// Text that a peer chose (a reset reason, a hostname, an HTTP body, a dev-login email), made
/// safe to print on a terminal or into a log line: see [`Untrusted`].
pub fn untrusted(text: &str) -> Untrusted<'_> {
    Untrusted {
        text,
        max: UNTRUSTED_MAX_CHARS,
    }
}

/// [`untrusted`] as a `String`, clipped at `max` characters.
pub fn escape(text: &str, max: usize) -> String {
    untrusted(text).clip(max).to_string()
}

/// Displays peer text so that it cannot drive a terminal or forge log lines: control
/// characters (C0 such as ESC and newline, DEL, C1), Unicode format characters (bidi overrides,
/// zero-width characters, line and paragraph separators) and `\` itself are written as
/// `\u{..}` escapes (`\\` for the backslash); everything else as is. At most `max` characters
/// are shown, then `…(N bytes)` with the full length.
#[derive(Clone, Copy)]
pub struct Untrusted<'a> {
    text: &'a str,
    max: usize,
}

impl Untrusted<'_> {
    /// Shows at most `max` characters.
    pub fn clip(self, max: usize) -> Self {
        Untrusted { max, ..self }
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c as u32,
            0x00AD | 0x061C | 0x180E | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x206F
            | 0xFEFF | 0xFFF9..=0xFFFB)
}

impl std::fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for (n, c) in self.text.chars().enumerate() {
            if n == self.max {
                return write!(f, "…({} bytes)", self.text.len());
            }
            if c == '\\' {
                f.write_str("\\\\")?;
            } else if needs_escape(c) {
                write!(f, "\\u{{{:x}}}", c as u32)?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Set by [`init`] when the logger writes JSON lines.
static JSON: AtomicBool = AtomicBool::new(false);

/// True when logs are JSON lines: plain text printed to stderr (a banner) should then go
/// through the logger instead.
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// How log records are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `[time LEVEL] message`, env_logger's format without the target.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn parse(text: &str) -> Result<LogFormat, String> {
        match text {
            "json" => Ok(LogFormat::Json),
            "human" | "text" | "default" => Ok(LogFormat::Human),
            other => Err(format!(
                "--log-format {other:?}: use json or human (env POSTERN_LOG_FORMAT)"
            )),
        }
    }
}

/// Maps cloudflared's `--loglevel` onto an env_logger filter.
pub fn loglevel_filter(level: &str) -> Result<&'static str, String> {
    match level.to_ascii_lowercase().as_str() {
        "trace" => Ok("trace"),
        "debug" => Ok("debug"),
        "info" => Ok("info"),
        "warn" | "warning" => Ok("warn"),
        "error" | "fatal" | "panic" => Ok("error"),
        other => Err(format!(
            "--loglevel {other:?}: use debug, info, warn, error or fatal"
        )),
    }
}

/// The logging flags found on the command line (each may be absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogFlags {
    pub format: Option<LogFormat>,
    /// An env_logger filter from `--loglevel`.
    pub level: Option<&'static str>,
    /// `--logfile FILE`: every record is appended to FILE too.
    pub file: Option<PathBuf>,
}

impl LogFlags {
    /// Removes `--log-format F`, `--loglevel L` and `--logfile FILE` (each also as
    /// `--flag=VALUE`) from `args` and returns what they said (the last one wins). No other
    /// flag of postern takes
    /// a value that starts with `--`, so taking them out before the command's own parser runs
    /// cannot steal another flag's value.
    pub fn take(args: &mut Vec<OsString>) -> Result<LogFlags, String> {
        let mut flags = LogFlags::default();
        let mut kept = Vec::with_capacity(args.len());
        let mut it = std::mem::take(args).into_iter();
        while let Some(a) = it.next() {
            let Some(s) = a.to_str() else {
                kept.push(a);
                continue;
            };
            let (name, inline) = match s.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (s, None),
            };
            if !matches!(name, "--log-format" | "--loglevel" | "--logfile") {
                kept.push(a);
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .and_then(|v| v.into_string().ok())
                    .ok_or_else(|| format!("{name} needs a value"))?,
            };
            match name {
                "--log-format" => flags.format = Some(LogFormat::parse(&value)?),
                "--logfile" if value.is_empty() => return Err("--logfile needs a file".into()),
                "--logfile" => flags.file = Some(PathBuf::from(value)),
                _ => flags.level = Some(loglevel_filter(&value)?),
            }
        }
        *args = kept;
        Ok(flags)
    }

    /// Our settings where we have them, else `earlier`'s (a command's flags beat global ones).
    pub fn or(self, earlier: LogFlags) -> LogFlags {
        LogFlags {
            format: self.format.or(earlier.format),
            level: self.level.or(earlier.level),
            file: self.file.or(earlier.file),
        }
    }
}

/// Crates whose debug and trace records carry wire data or secrets: `ureq_proto` hexdumps
/// every request and response (the token request's `Authorization: Basic` header with the OIDC
/// client secret, the authorization code, the tokens in the answer), `ureq` logs request URLs
/// with their query at trace, `rustls` logs handshake messages.
pub const WIRE_TARGETS: [&str; 3] = ["ureq", "ureq_proto", "rustls"];

/// The env_logger filter to install for `spec` (RUST_LOG syntax): `spec` itself, plus a cap at
/// `info` (or the spec's own level, if lower) for each of [`WIRE_TARGETS`] that the spec does
/// not name. Also returns the wire targets it names, which then log as asked.
///
/// A directive names a target when it covers it (env_logger matches names as prefixes, so
/// `ureq` covers `ureq_proto`) or one of its modules (`rustls::client`).
pub fn cap_wire_traces(spec: &str) -> (String, Vec<&'static str>) {
    let (mods, regex) = match spec.split_once('/') {
        Some((m, f)) => (m, Some(f)),
        None => (spec, None),
    };
    let mut global = None;
    let mut names = Vec::new();
    for d in mods.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (name, level) = match d.split_once('=') {
            Some((n, l)) => (n.trim(), Some(l.trim())),
            None => match d.parse::<log::LevelFilter>() {
                Ok(l) => {
                    global = Some(l);
                    continue;
                }
                Err(_) => (d, None),
            },
        };
        if name.is_empty() {
            // `=debug`: a name that every target starts with, i.e. a bare level.
            global = level.and_then(|l| l.parse().ok()).or(global);
        } else {
            names.push(name);
        }
    }
    let named: Vec<&'static str> = WIRE_TARGETS
        .into_iter()
        .filter(|w| {
            names
                .iter()
                .any(|n| w.starts_with(n) || n.starts_with(&format!("{w}::")))
        })
        .collect();
    let mut out = mods.trim().to_owned();
    if let Some(cap) = global.map(|g| g.min(log::LevelFilter::Info)) {
        for w in WIRE_TARGETS.iter().filter(|w| !named.contains(w)) {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&format!("{w}={}", cap.as_str().to_ascii_lowercase()));
        }
    }
    if let Some(f) = regex {
        out.push('/');
        out.push_str(f);
    }
    (out, named)
}

/// Installs the logger. `flags.level` beats `RUST_LOG`, which beats `default_level`; the
/// format is `flags.format`, else env `POSTERN_LOG_FORMAT`, else human. Wire traces are capped
/// ([`cap_wire_traces`]).
pub fn init(flags: &LogFlags, default_level: &str) -> Result<(), String> {
    let format = match flags.format {
        Some(f) => f,
        None => match std::env::var("POSTERN_LOG_FORMAT") {
            Ok(v) if !v.is_empty() => LogFormat::parse(&v)?,
            _ => LogFormat::Human,
        },
    };
    let mut spec = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default_level.to_owned(),
    };
    if let Some(level) = flags.level {
        // After RUST_LOG's directives (and before its `/filter`): the later bare level wins.
        spec = match spec.split_once('/') {
            Some((mods, filter)) => format!("{mods},{level}/{filter}"),
            None => format!("{spec},{level}"),
        };
    }
    let (filter, named) = cap_wire_traces(&spec);
    let mut b = env_logger::Builder::new();
    if let Ok(style) = std::env::var("RUST_LOG_STYLE") {
        b.parse_write_style(&style);
    }
    b.parse_filters(&filter);
    if let Some(path) = &flags.file {
        let file = open_log_file(path)?;
        b.target(env_logger::Target::Pipe(Box::new(Tee {
            file,
            path: path.clone(),
            failed: false,
        })));
    }
    match format {
        LogFormat::Human => {
            b.format_target(false);
        }
        LogFormat::Json => {
            JSON.store(true, Ordering::Relaxed);
            b.format(|buf, record| {
                let line = json_line(
                    &buf.timestamp_millis().to_string(),
                    record.level(),
                    record.target(),
                    &record.args().to_string(),
                );
                writeln!(buf, "{line}")
            });
        }
    }
    b.init();
    if !named.is_empty() {
        log::warn!(
            "RUST_LOG turns on wire traces of {}: they can contain secrets (the OIDC client \
             secret, authorization codes, tokens, a new tunnel's private key); do not share \
             these logs",
            named.join(", ")
        );
    }
    Ok(())
}

/// Opens `--logfile FILE` for appending, creating it with mode 0600 (an existing file keeps
/// its mode).
fn open_log_file(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("--logfile {}: {e}", path.display()))
}

/// Writes each log record to stderr and appends it to the `--logfile` (cloudflared writes
/// both too, so `journalctl` keeps working). A failing file write is reported once on stderr
/// and then skipped: losing the file must not stop the tunnel.
struct Tee {
    file: std::fs::File,
    path: PathBuf,
    failed: bool,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        if !self.failed {
            if let Err(e) = self.file.write_all(buf) {
                self.failed = true;
                let _ = writeln!(
                    std::io::stderr(),
                    "postern: --logfile {}: {e}; logging to stderr only",
                    self.path.display()
                );
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// One JSON log line (without the newline).
pub fn json_line(time: &str, level: log::Level, target: &str, message: &str) -> String {
    serde_json::json!({
        "time": time,
        "level": level.as_str().to_ascii_lowercase(),
        "target": target,
        "message": message,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_text_is_escaped_and_clipped() {
        assert_eq!(escape("plain text", 64), "plain text");
        assert_eq!(escape("a\x1b[2Jb\nc\\", 64), "a\\u{1b}[2Jb\\u{a}c\\\\");
        assert_eq!(escape("x\u{202e}y", 64), "x\\u{202e}y");
        assert_eq!(escape("abcdef", 3), "abc…(6 bytes)");
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn flags_are_taken_out_in_both_spellings() {
        let mut a = args(&[
            "--hostname",
            "h",
            "--log-format",
            "json",
            "--loglevel=fatal",
        ]);
        let f = LogFlags::take(&mut a).unwrap();
        assert_eq!(a, args(&["--hostname", "h"]));
        assert_eq!(f.format, Some(LogFormat::Json));
        assert_eq!(f.level, Some("error"));
        let mut a = args(&["tunnel", "--logfile", "/var/log/p.log", "run"]);
        let g = LogFlags::take(&mut a).unwrap();
        assert_eq!(a, args(&["tunnel", "run"]));
        assert_eq!(g.file.as_deref(), Some(Path::new("/var/log/p.log")));
        assert!(LogFlags::take(&mut args(&["--logfile="])).is_err());
        assert!(LogFlags::take(&mut args(&["--log-format", "xml"])).is_err());
        assert!(LogFlags::take(&mut args(&["--loglevel"])).is_err());
        let later = LogFlags {
            level: Some("debug"),
            ..LogFlags::default()
        };
        assert_eq!(later.or(f).format, Some(LogFormat::Json));
    }

    #[test]
    fn bare_levels_keep_wire_traces_at_info() {
        let (f, named) = cap_wire_traces("trace");
        assert_eq!(f, "trace,ureq=info,ureq_proto=info,rustls=info");
        assert!(named.is_empty());
        // A level below info is the cap itself; no bare level, nothing to cap.
        assert_eq!(
            cap_wire_traces("warn").0,
            "warn,ureq=warn,ureq_proto=warn,rustls=warn"
        );
        assert_eq!(cap_wire_traces("postern=trace").0, "postern=trace");
        // `--loglevel` appended after RUST_LOG: the last bare level counts; `/filter` stays last.
        assert_eq!(
            cap_wire_traces("info,postern=debug,DEBUG/edge").0,
            "info,postern=debug,DEBUG,ureq=info,ureq_proto=info,rustls=info/edge"
        );
        assert_eq!(
            cap_wire_traces("=trace").0,
            "=trace,ureq=info,ureq_proto=info,rustls=info"
        );
    }

    #[test]
    fn wire_targets_named_explicitly_are_left_as_asked() {
        // `ureq` covers `ureq_proto` (env_logger matches prefixes); `ureq_proto` only itself.
        let (f, named) = cap_wire_traces("trace,ureq=trace");
        assert_eq!(f, "trace,ureq=trace,rustls=info");
        assert_eq!(named, ["ureq", "ureq_proto"]);
        let (f, named) = cap_wire_traces("debug,ureq_proto");
        assert_eq!(f, "debug,ureq_proto,ureq=info,rustls=info");
        assert_eq!(named, ["ureq_proto"]);
        let (_, named) = cap_wire_traces("rustls::client=trace");
        assert_eq!(named, ["rustls"]);
        // A longer name is not a module of ours: `rustlsx` does not name rustls.
        assert!(cap_wire_traces("trace,rustlsx=trace").1.is_empty());
    }

    /// What env_logger makes of the capped filter: the test that matters.
    #[test]
    fn capped_filter_refuses_wire_trace_records() {
        let enabled = |spec: &str, target: &str, level: log::Level| {
            let (f, _) = cap_wire_traces(spec);
            let logger = env_logger::Builder::new().parse_filters(&f).build();
            let meta = log::Metadata::builder().target(target).level(level).build();
            log::Log::enabled(&logger, &meta)
        };
        use log::Level::{Info, Trace};
        assert!(enabled("trace", "postern::oidc", Trace));
        assert!(!enabled("trace", "ureq_proto::util", Trace));
        assert!(!enabled("trace", "ureq::run", Trace));
        assert!(!enabled("trace", "rustls::client::hs", Trace));
        assert!(enabled("trace", "ureq::run", Info));
        assert!(enabled("trace,ureq_proto=trace", "ureq_proto::util", Trace));
        assert!(!enabled("trace,ureq_proto=trace", "ureq::run", Trace));
    }

    #[test]
    fn untrusted_text_cannot_drive_a_terminal_or_forge_lines() {
        let shown = untrusted("a\u{1b}[2J\nforged INFO line\r\u{7f}\u{9b}").to_string();
        assert_eq!(
            shown,
            "a\\u{1b}[2J\\u{a}forged INFO line\\u{d}\\u{7f}\\u{9b}"
        );
        assert!(!shown.chars().any(char::is_control));
        // Bidi overrides and zero-width characters are escaped too; the backslash as well, so
        // an escape cannot be faked by the peer.
        assert_eq!(
            untrusted("\u{202e}gnp.exe\u{200b}").to_string(),
            "\\u{202e}gnp.exe\\u{200b}"
        );
        assert_eq!(untrusted("\\u{1b}").to_string(), "\\\\u{1b}");
        // Ordinary text, UTF-8 included, is kept.
        assert_eq!(
            untrusted("café ✓ ssh.site.com").to_string(),
            "café ✓ ssh.site.com"
        );
        assert_eq!(format!("{:?}", untrusted("x\ny")), "\"x\\u{a}y\"");
    }

    #[test]
    fn untrusted_text_is_clipped_with_its_length() {
        let long = "h".repeat(10 * 1024);
        assert_eq!(
            escape(&long, 64),
            format!("{}…(10240 bytes)", "h".repeat(64))
        );
        assert_eq!(
            untrusted(&long).to_string().chars().count(),
            UNTRUSTED_MAX_CHARS + 14
        );
        assert_eq!(escape("short", 64), "short");
        assert_eq!(escape("exactly", 7), "exactly");
        assert_eq!(escape("é\u{1b}é", 2), "é\\u{1b}…(5 bytes)");
    }

    #[test]
    fn json_line_escapes_and_parses() {
        let line = json_line(
            "2026-01-01T00:00:00.000Z",
            log::Level::Warn,
            "postern::edge",
            "a \"quoted\"\nline\u{1b}[31m",
        );
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["target"], "postern::edge");
        assert_eq!(v["message"], "a \"quoted\"\nline\u{1b}[31m");
        assert_eq!(v["time"], "2026-01-01T00:00:00.000Z");
    }
}
