//! Log output: human lines (the default) or JSON lines (`--log-format json`), on stderr.
//!
//! Levels come from `RUST_LOG` (env_logger's filter syntax); cloudflared's
//! `--loglevel debug|info|warn|error|fatal` overrides it (`fatal` is `error`: there is no
//! fatal level in `log`). A JSON line is one object with `time` (RFC 3339, UTC, milliseconds),
//! `level`, `target` and `message`, built with serde_json, so quotes, newlines and control
//! characters in a message are escaped and every line parses on its own.

use std::ffi::OsString;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

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
}

impl LogFlags {
    /// Removes `--log-format F`, `--log-format=F`, `--loglevel L` and `--loglevel=L` from
    /// `args` and returns what they said (the last one wins). No other flag of postern takes
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
            if name != "--log-format" && name != "--loglevel" {
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
            if name == "--log-format" {
                flags.format = Some(LogFormat::parse(&value)?);
            } else {
                flags.level = Some(loglevel_filter(&value)?);
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
        }
    }
}

/// Installs the logger. `flags.level` beats `RUST_LOG`, which beats `default_level`; the
/// format is `flags.format`, else env `POSTERN_LOG_FORMAT`, else human.
pub fn init(flags: &LogFlags, default_level: &str) -> Result<(), String> {
    let format = match flags.format {
        Some(f) => f,
        None => match std::env::var("POSTERN_LOG_FORMAT") {
            Ok(v) if !v.is_empty() => LogFormat::parse(&v)?,
            _ => LogFormat::Human,
        },
    };
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level));
    if let Some(level) = flags.level {
        b.parse_filters(level);
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
    Ok(())
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

/// Text that came from a peer, made safe for a terminal or a log line: control characters,
/// and the Unicode ones that reorder or hide text, become `\u{..}` escapes (a backslash
/// becomes `\\`), and anything past `max` characters is cut with a note of the full length.
pub fn escape(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 8);
    for (n, ch) in text.chars().enumerate() {
        if n == max {
            out.push_str(&format!("…({} bytes)", text.len()));
            break;
        }
        match ch {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || is_format_char(c) => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// Invisible characters that change how a line reads (bidi overrides, zero widths).
fn is_format_char(c: char) -> bool {
    matches!(u32::from(c), 0x200b..=0x200f | 0x202a..=0x202e | 0x2066..=0x2069 | 0xfeff)
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
        assert!(LogFlags::take(&mut args(&["--log-format", "xml"])).is_err());
        assert!(LogFlags::take(&mut args(&["--loglevel"])).is_err());
        let later = LogFlags {
            format: None,
            level: Some("debug"),
        };
        assert_eq!(later.or(f).format, Some(LogFormat::Json));
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
