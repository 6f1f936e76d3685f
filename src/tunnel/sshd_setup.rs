//! `postern tunnel sshd-setup`: the sshd side of short-lived certificates. Prints (or with
//! `--write` installs) the edge's SSH CA as a `TrustedUserCAKeys` file and the sshd_config
//! lines that trust it:
//!
//! ```text
//!  # BEGIN postern sshd-setup
//!  TrustedUserCAKeys /etc/ssh/postern_ca.pub
//!  AuthorizedPrincipalsFile /etc/ssh/principals/%u        (only with --principals-dir)
//!  # END postern sshd-setup
//! ```
//!
//! Without `AuthorizedPrincipalsFile`, sshd lets a certificate log in as user U when U is
//! one of its principals (the edge's default principal is the email's local part). With it,
//! the file `/etc/ssh/principals/U` lists the principals that may log in as U.
//!
//! `--write` puts the block at the top of sshd_config (sshd takes the first value of a
//! keyword, and the top is outside every `Match`), replacing an earlier block of ours, after
//! copying the file to `sshd_config.postern-backup-UNIXTIME`; then `sshd -t` checks the
//! result, and a config sshd refuses is put back from the backup. sshd is not reloaded:
//! the operator does it (`systemctl reload ssh`) once they have read the change.

use std::io;
use std::path::{Path, PathBuf};

use crate::proto::sshkey::PublicKey;

const BEGIN: &str = "# BEGIN postern sshd-setup";
const END: &str = "# END postern sshd-setup";

/// What `sshd-setup` installs.
pub struct SshdSetup {
    /// The CA lines (`ssh-ed25519 AAAA… postern-ssh-ca`), checked.
    pub ca_lines: String,
    /// Where the CA lines go (`/etc/ssh/postern_ca.pub`).
    pub ca_file: PathBuf,
    /// `AuthorizedPrincipalsFile DIR/%u`, if given.
    pub principals_dir: Option<PathBuf>,
}

/// Checks the CA text (one public key per line, comments and blank lines allowed) and
/// returns it normalized; an error names the line.
pub fn check_ca_lines(text: &str) -> Result<String, String> {
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = PublicKey::parse_line(line).map_err(|e| format!("CA line {}: {e}", i + 1))?;
        let comment = line.split_ascii_whitespace().nth(2).unwrap_or("");
        out.push_str(&key.to_line(comment));
        out.push('\n');
    }
    if out.is_empty() {
        return Err("no CA key in it".into());
    }
    Ok(out)
}

impl SshdSetup {
    /// The sshd_config block.
    pub fn block(&self) -> String {
        let mut b = format!("{BEGIN}\nTrustedUserCAKeys {}\n", self.ca_file.display());
        if let Some(dir) = &self.principals_dir {
            b.push_str(&format!("AuthorizedPrincipalsFile {}/%u\n", dir.display()));
        }
        b.push_str(END);
        b.push('\n');
        b
    }

    /// Writes the CA file, backs up `config`, puts the block at its top and checks it with
    /// `sshd -t` (restoring the backup if sshd refuses). Returns the backup's path.
    pub fn write(&self, config: &Path, sshd: &Path, unix: u64) -> io::Result<PathBuf> {
        let original = std::fs::read_to_string(config).map_err(|e| named(config, e))?;
        crate::io::files::write_file_atomic(&self.ca_file, self.ca_lines.as_bytes(), 0o644)
            .map_err(|e| named(&self.ca_file, e))?;
        let backup = backup(config, unix, original.as_bytes())?;
        let mode = std::fs::metadata(config)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .unwrap_or(0o644);
        let updated = with_block(&original, &self.block());
        crate::io::files::write_file_atomic(config, updated.as_bytes(), mode)
            .map_err(|e| named(config, e))?;
        let check = std::process::Command::new(sshd)
            .arg("-t")
            .arg("-f")
            .arg(config)
            .output()
            .map_err(|e| named(sshd, e))?;
        if !check.status.success() {
            crate::io::files::write_file_atomic(config, original.as_bytes(), mode)
                .map_err(|e| named(config, e))?;
            // sshd's own lines, each escaped, one per line as sshd wrote them.
            let said: Vec<String> = String::from_utf8_lossy(&check.stderr)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(10)
                .map(|l| crate::logging::escape(l.trim(), 300))
                .collect();
            return Err(io::Error::other(format!(
                "sshd -t refused the new {} (put back as it was; {} stays written, \
                 and alone changes nothing; sshd's line numbers count the {} lines added at \
                 the top):\n  {}",
                config.display(),
                self.ca_file.display(),
                self.block().lines().count(),
                said.join("\n  ")
            )));
        }
        Ok(backup)
    }
}

/// Copies `data` to a new `CONFIG.postern-backup-UNIX[-N]`: never over an earlier backup
/// (two runs in one second would otherwise lose the original).
fn backup(config: &Path, unix: u64, data: &[u8]) -> io::Result<PathBuf> {
    use std::io::Write as _;
    for n in 0..100 {
        let path = match n {
            0 => PathBuf::from(format!("{}.postern-backup-{unix}", config.display())),
            n => PathBuf::from(format!("{}.postern-backup-{unix}-{n}", config.display())),
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(data)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| named(&path, e))?;
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(named(&path, e)),
        }
    }
    Err(io::Error::other(format!(
        "{}: too many backups this second",
        config.display()
    )))
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// `config` with `block` at its top, in place of an earlier block of ours.
pub fn with_block(config: &str, block: &str) -> String {
    let mut rest = String::with_capacity(config.len());
    let mut inside = false;
    for line in config.lines() {
        match line.trim() {
            BEGIN => inside = true,
            END if inside => inside = false,
            _ if inside => {}
            _ => {
                rest.push_str(line);
                rest.push('\n');
            }
        }
    }
    format!("{block}{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_goes_on_top_once_and_replaces_an_earlier_one() {
        let setup = SshdSetup {
            ca_lines: String::new(),
            ca_file: "/etc/ssh/postern_ca.pub".into(),
            principals_dir: Some("/etc/ssh/principals".into()),
        };
        let config = "Port 22\nMatch User git\n  X11Forwarding no\n";
        let once = with_block(config, &setup.block());
        assert_eq!(
            once,
            "# BEGIN postern sshd-setup\nTrustedUserCAKeys /etc/ssh/postern_ca.pub\n\
             AuthorizedPrincipalsFile /etc/ssh/principals/%u\n# END postern sshd-setup\n\
             Port 22\nMatch User git\n  X11Forwarding no\n"
        );
        let plain = SshdSetup {
            principals_dir: None,
            ..setup
        };
        let twice = with_block(&once, &plain.block());
        assert_eq!(twice.matches(BEGIN).count(), 1);
        assert!(!twice.contains("AuthorizedPrincipalsFile"));
        assert!(twice.ends_with("Port 22\nMatch User git\n  X11Forwarding no\n"));
    }

    #[test]
    fn ca_text_must_hold_keys() {
        let key = PublicKey::ed25519(&[1; 32]).to_line("postern-ssh-ca");
        assert_eq!(
            check_ca_lines(&format!("# ca\n\n{key}\n")),
            Ok(format!("{key}\n"))
        );
        assert!(check_ca_lines("").is_err());
        assert!(check_ca_lines("<html>").unwrap_err().contains("CA line 1"));
    }
}
