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

/// A cloudflared `tunnel` flag that means nothing here: accepted, and ignored with a
/// one-line notice that says why (`notice`). The README's table gives the same reasons.
pub struct Ignored {
    /// The flag, without its dashes.
    pub flag: &'static str,
    /// It takes a value (`--retries 5`); `--no-autoupdate` does not.
    pub takes_value: bool,
    /// cloudflared's variables for it (noticed and ignored too when set).
    pub vars: &'static [&'static str],
    /// Why it means nothing here: the end of the notice.
    pub why: &'static str,
}

const fn ignored(
    flag: &'static str,
    takes_value: bool,
    vars: &'static [&'static str],
    why: &'static str,
) -> Ignored {
    Ignored {
        flag,
        takes_value,
        vars,
        why,
    }
}

/// cloudflared's `tunnel` flags (and their variables, from its cmd.go) that mean nothing
/// here, each with why. Its own systemd unit passes `--no-autoupdate`; the others turn up
/// in units, env files and docker-compose files copied from its docs.
pub const IGNORED: &[Ignored] = &[
    ignored(
        "no-autoupdate",
        false,
        &["NO_AUTOUPDATE"],
        "postern does not update itself; your package manager does",
    ),
    ignored(
        "autoupdate-freq",
        true,
        &[],
        "postern does not update itself; your package manager does",
    ),
    ignored(
        "protocol",
        true,
        &["TUNNEL_TRANSPORT_PROTOCOL"],
        "postern speaks one protocol, over TLS on 443",
    ),
    ignored(
        "edge-ip-version",
        true,
        &["TUNNEL_EDGE_IP_VERSION"],
        "postern connects to the addresses --edge resolves to, IPv4 or IPv6",
    ),
    ignored(
        "region",
        true,
        &["TUNNEL_REGION"],
        "a postern edge has no regions: it is where --edge says",
    ),
    ignored(
        "retries",
        true,
        &["TUNNEL_RETRIES"],
        "postern retries forever, with backoff (at most 60 s apart)",
    ),
    ignored(
        "tag",
        true,
        &["TUNNEL_TAG"],
        "the edge knows a connector by its tunnel and connector id",
    ),
    ignored(
        "compression-quality",
        true,
        &["TUNNEL_COMPRESSION_LEVEL"],
        "postern carries the bytes as they are (ssh compresses its own, -C)",
    ),
    ignored(
        "edge-bind-address",
        true,
        &["TUNNEL_EDGE_BIND_ADDRESS"],
        "postern connects from the address the system's routes pick",
    ),
    ignored(
        "transport-loglevel",
        true,
        &["TUNNEL_TRANSPORT_LOGLEVEL"],
        "postern has one log: --loglevel sets it",
    ),
    ignored(
        "proto-loglevel",
        true,
        &["TUNNEL_PROTO_LOGLEVEL"],
        "postern has one log: --loglevel sets it",
    ),
    ignored(
        "metrics-update-freq",
        true,
        &["TUNNEL_METRICS_UPDATE_FREQ"],
        "postern's /metrics are computed when scraped",
    ),
];

/// The ignored flag named `name` (without dashes).
pub fn ignored_flag(name: &str) -> Option<&'static Ignored> {
    IGNORED.iter().find(|i| i.flag == name)
}

impl Ignored {
    /// The one-line notice for the flag given on the command line (`--FLAG`).
    pub fn notice(&self) -> String {
        format!(
            "--{} is a cloudflared flag with no meaning here; ignored: {}",
            self.flag, self.why
        )
    }

    /// The one-line notice for its variable `var`, set in the environment.
    pub fn env_notice(&self, var: &str) -> String {
        format!(
            "{var} (cloudflared's --{}) has no meaning here; ignored: {}",
            self.flag, self.why
        )
    }
}

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
pub fn ignored_env(
    lookup: impl Fn(&str) -> Option<String>,
) -> Vec<(&'static str, &'static Ignored)> {
    IGNORED
        .iter()
        .flat_map(|i| i.vars.iter().map(move |v| (*v, i)))
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
        let got: Vec<(&str, &str)> = ignored_env(env).iter().map(|(v, i)| (*v, i.flag)).collect();
        assert_eq!(got, [("NO_AUTOUPDATE", "no-autoupdate")]);
    }

    #[test]
    fn each_ignored_flag_says_its_own_reason() {
        let protocol = ignored_flag("protocol").expect("--protocol is ignored");
        assert_eq!(
            protocol.notice(),
            "--protocol is a cloudflared flag with no meaning here; ignored: postern speaks one \
             protocol, over TLS on 443"
        );
        assert!(ignored_flag("hostname").is_none());
        for i in IGNORED {
            assert!(!i.why.is_empty() && !i.why.contains('\n'), "--{}", i.flag);
        }
    }

    /// The README's table ("Coming from cloudflared") is this module's table for readers:
    /// every flag and variable here has its row, and each ignored flag its reason there.
    #[test]
    fn the_readme_table_names_every_flag_variable_and_reason() {
        let readme = include_str!("../README.md");
        let table: String = readme
            .split("### Coming from cloudflared")
            .nth(1)
            .expect("the README has the section")
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut missing = Vec::new();
        for e in TUNNEL_ENV.iter().chain(ACCESS_ENV) {
            missing.extend(std::iter::once(e.var).filter(|v| !table.contains(&format!("`{v}`"))));
            missing.extend(e.flags.iter().filter(|f| !table.contains(*f)));
        }
        for i in IGNORED {
            let row = table.lines().find(|l| {
                l.strip_prefix(&format!("| `--{}", i.flag))
                    .is_some_and(|rest| rest.starts_with(['`', ' ']))
            });
            match row {
                Some(row) if row.contains(i.why) && i.vars.iter().all(|v| row.contains(v)) => {}
                _ => missing.push(i.flag),
            }
        }
        assert!(missing.is_empty(), "not in the README's table: {missing:?}");
    }
}
