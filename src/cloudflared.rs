//! cloudflared's command-line surface, mapped onto postern's: which of its environment
//! variables stand for which flag, and which of its flags and variables mean nothing here.
//!
//! A cloudflared user's unit files, scripts and env files must run with `cloudflared`
//! replaced by `postern` (README, "Coming from cloudflared"). The rules:
//! - a `TUNNEL_*` variable acts as its flag, unless the command line gives the flag (the
//!   command line wins, as in cloudflared);
//! - a bad value names the variable (`TUNNEL_GRACE_PERIOD="x": …`);
//! - a flag or variable with no meaning here is accepted and ignored with a one-line notice.
//!
//! The table is data; `main.rs` applies it. Nothing here reads the process environment: the
//! caller passes a lookup, so the tests need no environment of their own.

use std::ffi::OsString;

/// A cloudflared environment variable and the postern flags it stands for (the first is
/// the one injected; the others are aliases that count as "given on the command line").
pub struct EnvFlag {
    pub var: &'static str,
    pub flags: &'static [&'static str],
    /// The value is a secret: never echoed in an error.
    pub secret: bool,
}

const fn env(var: &'static str, flags: &'static [&'static str]) -> EnvFlag {
    EnvFlag {
        var,
        flags,
        secret: false,
    }
}

/// `cloudflared tunnel` / `tunnel run` (cmd/cloudflared/tunnel/cmd.go's `EnvVars`).
/// `TUNNEL_LOGLEVEL`, `TUNNEL_LOGFILE` are read with the logging flags, before the command.
pub const TUNNEL_ENV: &[EnvFlag] = &[
    env("TUNNEL_HOSTNAME", &["--hostname"]),
    env("TUNNEL_URL", &["--url"]),
    env("TUNNEL_ORIGIN_CERT", &["--origincert"]),
    env("TUNNEL_CRED_FILE", &["--credentials-file", "--cred-file"]),
    env("TUNNEL_EDGE", &["--edge"]),
    env("TUNNEL_CACERT", &["--ca", "--cacert"]),
    env("TUNNEL_METRICS", &["--metrics"]),
    env("TUNNEL_GRACE_PERIOD", &["--grace-period"]),
    env("TUNNEL_PIDFILE", &["--pidfile"]),
    EnvFlag {
        var: "TUNNEL_TOKEN",
        flags: &["--token"],
        secret: true,
    },
];

/// `cloudflared access tcp|ssh` (cmd/cloudflared/access/cmd.go). The service token's
/// `TUNNEL_SERVICE_TOKEN_ID` / `_SECRET` are read where `POSTERN_SERVICE_TOKEN_*` are, as
/// their fallback, so that the secret never becomes an argument.
pub const ACCESS_ENV: &[EnvFlag] = &[
    env("TUNNEL_SERVICE_HOSTNAME", &["--hostname", "--app"]),
    env("TUNNEL_SERVICE_URL", &["--url"]),
    env("TUNNEL_SERVICE_DESTINATION", &["--destination"]),
];

/// cloudflared variables for flags that mean nothing here (postern updates with the package
/// manager, speaks one protocol over TLS on 443, connects to what `--edge` resolves to,
/// retries forever with backoff): noticed and ignored.
pub const IGNORED_ENV: &[(&str, &str)] = &[
    ("NO_AUTOUPDATE", "--no-autoupdate"),
    ("TUNNEL_TRANSPORT_PROTOCOL", "--protocol"),
    ("TUNNEL_EDGE_IP_VERSION", "--edge-ip-version"),
    ("TUNNEL_REGION", "--region"),
    ("TUNNEL_RETRIES", "--retries"),
];

/// cloudflared `tunnel` flags that take a value and mean nothing here.
pub const IGNORED_VALUE_FLAGS: &[&str] = &[
    "autoupdate-freq",
    "protocol",
    "edge-ip-version",
    "region",
    "retries",
    "tag",
    "compression-quality",
    "edge-bind-address",
    "transport-loglevel",
    "proto-loglevel",
    "metrics-update-freq",
];

/// One flag taken from the environment.
pub struct FromEnv {
    pub var: &'static str,
    pub flag: &'static str,
    pub value: String,
    pub secret: bool,
}

impl FromEnv {
    /// How to name this setting in an error: the variable, and its value unless secret.
    pub fn shown(&self) -> String {
        if self.secret {
            self.var.to_owned()
        } else {
            format!("{}={:?}", self.var, self.value)
        }
    }
}

/// True when `args` give `flag` (`--flag V` or `--flag=V`; cloudflared's one-dash spelling
/// `-flag` too).
pub fn gives(args: &[OsString], flag: &str) -> bool {
    let bare = flag.trim_start_matches('-');
    args.iter().filter_map(|a| a.to_str()).any(|a| {
        let name = a.split_once('=').map_or(a, |(n, _)| n);
        name.strip_prefix("--")
            .or_else(|| name.strip_prefix('-'))
            .is_some_and(|n| n == bare)
    })
}

/// The flags that `table`'s variables give (as seen through `lookup`), for those that `args`
/// do not give. Empty values count as unset.
pub fn from_env(
    table: &'static [EnvFlag],
    args: &[OsString],
    lookup: impl Fn(&str) -> Option<String>,
) -> Vec<FromEnv> {
    table
        .iter()
        .filter(|e| !e.flags.iter().any(|f| gives(args, f)))
        .filter_map(|e| {
            let value = lookup(e.var).filter(|v| !v.is_empty())?;
            Some(FromEnv {
                var: e.var,
                flag: e.flags[0],
                value,
                secret: e.secret,
            })
        })
        .collect()
}

/// The ignored variables that are set, each with its flag.
pub fn ignored_env(lookup: impl Fn(&str) -> Option<String>) -> Vec<(&'static str, &'static str)> {
    IGNORED_ENV
        .iter()
        .copied()
        .filter(|(var, _)| lookup(var).is_some_and(|v| !v.is_empty()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn a_variable_gives_its_flag_unless_the_command_line_does() {
        let env = lookup(&[
            ("TUNNEL_HOSTNAME", "ssh.site.com"),
            ("TUNNEL_URL", "ssh://localhost:22"),
            ("TUNNEL_GRACE_PERIOD", "10s"),
            ("TUNNEL_METRICS", ""),
        ]);
        let got = from_env(TUNNEL_ENV, &args(&["--url=tcp://x:1", "run"]), env);
        let got: Vec<(&str, &str)> = got.iter().map(|f| (f.flag, f.value.as_str())).collect();
        // --url is on the command line; an empty variable is unset.
        assert_eq!(
            got,
            [("--hostname", "ssh.site.com"), ("--grace-period", "10s")]
        );
    }

    #[test]
    fn aliases_and_one_dash_spellings_count_as_given() {
        assert!(gives(&args(&["--cred-file", "f"]), "--cred-file"));
        assert!(gives(&args(&["-hostname", "h"]), "--hostname"));
        assert!(!gives(&args(&["--hostnames", "h"]), "--hostname"));
        let env = lookup(&[("TUNNEL_CRED_FILE", "/c.json")]);
        assert!(from_env(TUNNEL_ENV, &args(&["--cred-file", "/d.json"]), env).is_empty());
    }

    #[test]
    fn a_secret_variable_is_named_without_its_value() {
        let env = lookup(&[("TUNNEL_TOKEN", "s3cret"), ("TUNNEL_HOSTNAME", "h")]);
        let got = from_env(TUNNEL_ENV, &[], env);
        let shown: Vec<String> = got.iter().map(FromEnv::shown).collect();
        assert_eq!(shown, ["TUNNEL_HOSTNAME=\"h\"", "TUNNEL_TOKEN"]);
    }

    #[test]
    fn ignored_variables_are_listed_when_set() {
        let env = lookup(&[("NO_AUTOUPDATE", "true"), ("TUNNEL_REGION", "")]);
        assert_eq!(ignored_env(env), [("NO_AUTOUPDATE", "--no-autoupdate")]);
    }
}
