//! Host names: the one rule for every DNS name postern takes from a person or a peer
//! (application hostnames and zones in the edge config, a tunnel's REGISTER and ingress rules,
//! the zone in `cert.pem`, `public_url`, the application of a login, token-cache file names).
//!
//! A host name is what `rustls_pki_types::DnsName` accepts (the check rustls applies to a
//! server name: at most 253 characters, labels of 1 to 63, no label starting or ending with
//! `-`, and a last label that is not a number, so no IPv4 address passes), with two more rules:
//! - letters, digits and `-` only: no `_` (RFC 1123 host names; `DnsName` allows `_`, which
//!   no certificate authority issues for a host);
//! - no trailing dot: `example.com.` would be a second spelling of `example.com`.
//!
//! Case: [`valid_hostname`] takes either case (callers lowercase before comparing);
//! [`check_lowercase_hostname`] is for names kept as written (a credential's zone, a cache
//! file name), where `Example.com` and `example.com` must not be two names.
//! A wildcard (`*.example.com`) is not a host name: the application-pattern code strips `*.`
//! before asking.

use std::fmt;

use rustls_pki_types::DnsName;

/// Why a name is not a host name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostnameError {
    /// Not a DNS name: empty, too long, an empty or over-long label, a character other than
    /// letters, digits, `-` and `.`, a label starting or ending with `-`, or numeric.
    NotDnsName,
    /// An `_` somewhere.
    Underscore,
    /// A trailing `.`.
    TrailingDot,
    /// An uppercase letter where only lowercase is accepted.
    Uppercase,
}

impl fmt::Display for HostnameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostnameError::NotDnsName => {
                "expected a DNS name like example.com: labels of 1 to 63 letters, digits and \
                 '-' (not first or last), at most 253 characters, not an IP address"
            }
            HostnameError::Underscore => "'_' is not allowed in a host name",
            HostnameError::TrailingDot => "remove the trailing '.'",
            HostnameError::Uppercase => "use lowercase letters",
        })
    }
}

impl std::error::Error for HostnameError {}

/// Checks that `name` is a host name (either case).
pub fn check_hostname(name: &str) -> Result<(), HostnameError> {
    DnsName::try_from(name).map_err(|_| HostnameError::NotDnsName)?;
    if name.contains('_') {
        return Err(HostnameError::Underscore);
    }
    if name.ends_with('.') {
        return Err(HostnameError::TrailingDot);
    }
    Ok(())
}

/// Checks that `name` is a host name written in lowercase.
pub fn check_lowercase_hostname(name: &str) -> Result<(), HostnameError> {
    check_hostname(name)?;
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(HostnameError::Uppercase);
    }
    Ok(())
}

/// Whether `name` is a host name (either case).
pub fn valid_hostname(name: &str) -> bool {
    check_hostname(name).is_ok()
}

/// Whether `name` is a host name written in lowercase.
pub fn valid_lowercase_hostname(name: &str) -> bool {
    check_lowercase_hostname(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_of_letters_digits_and_hyphens_pass() {
        for name in [
            "localhost",
            "ssh.example.com",
            "SSH.Example.COM",
            "a-b.c0.d",
            "0a.example.com",
            "xn--bcher-kva.example",
            "example.com1",
            &format!("{}.com", "a".repeat(63)),
            &["a".repeat(63).as_str(); 4].join(".")[..253],
        ] {
            assert_eq!(check_hostname(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn everything_else_is_refused_with_its_reason() {
        use HostnameError::*;
        let cases: &[(&str, HostnameError)] = &[
            ("", NotDnsName),
            (".", NotDnsName),
            ("ssh..example.com", NotDnsName),
            (".example.com", NotDnsName),
            ("-a.example.com", NotDnsName),
            ("a-.example.com", NotDnsName),
            ("../etc", NotDnsName),
            ("a/b", NotDnsName),
            ("a b", NotDnsName),
            ("*.example.com", NotDnsName),
            ("ssh.example.com:443", NotDnsName),
            ("bücher.example", NotDnsName),
            ("127.0.0.1", NotDnsName),
            ("host.123", NotDnsName),
            ("host.0x1f", NotDnsName),
            ("::1", NotDnsName),
            ("_acme.example.com", Underscore),
            ("a_b.example.com", Underscore),
            ("example.com.", TrailingDot),
        ];
        for (name, why) in cases {
            assert_eq!(check_hostname(name), Err(*why), "{name:?}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert_eq!(check_hostname(&long_label), Err(NotDnsName));
        let long_name = ["a".repeat(63).as_str(); 5].join(".");
        assert_eq!(check_hostname(&long_name[..254]), Err(NotDnsName));
    }

    #[test]
    fn lowercase_is_required_only_where_asked() {
        assert!(valid_hostname("SSH.example.com"));
        assert!(!valid_lowercase_hostname("SSH.example.com"));
        assert_eq!(
            check_lowercase_hostname("SSH.example.com"),
            Err(HostnameError::Uppercase)
        );
        assert!(valid_lowercase_hostname("ssh.example.com"));
        assert_eq!(
            check_lowercase_hostname("example.com."),
            Err(HostnameError::TrailingDot)
        );
    }

    #[test]
    fn reasons_read_as_sentences() {
        assert!(HostnameError::NotDnsName
            .to_string()
            .starts_with("expected a DNS name like example.com"));
    }
}
