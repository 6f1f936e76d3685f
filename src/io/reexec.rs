//! One step at start, before anything else: on an AMD x86-64 CPU with ERMS, under glibc, run
//! this same binary again (`execve`, same PID, same arguments) with glibc's `rep movsb`
//! threshold out of reach, so that its `memcpy` uses vector loops instead of `rep movsb`.
//!
//! Why: glibc (2.36 measured) copies anything from 2 KiB up with `rep movsb` on CPUs with
//! ERMS. On AMD Zen 3 and later (an AMD EPYC measured), `rep movsb` moves ~3 GB/s instead of
//! 60–100 when the destination lies 1–15 bytes past the source modulo 4096 (4K aliasing); a
//! C loop reproduces it (design §2.8, "`rep movsb` on this machine"). rustls copies every
//! decrypted record out of its receive buffer, and whether that copy meets such a distance is
//! an accident of the heap's layout: in the origin it did, for every record, and cost 30 % of
//! its CPU and a fifth of upload throughput. The vector loops have no such case and were no
//! slower for any process of the chain (design §2.8). glibc reads its tunables once, when the
//! process starts, hence the `execve`.
//!
//! What it does not do: anything on other CPUs or C libraries (musl copies with `rep movsq`,
//! which has no such cliff), anything under glibc 2.40 or later ([`GLIBC_FIXED`]: glibc itself
//! no longer copies with `rep movsb` on AMD, its BZ 30994), anything when `GLIBC_TUNABLES`
//! already sets the threshold (the user's value wins, and it also ends the loop: the second
//! start finds it set), anything
//! when `/proc` is missing or the binary's path no longer names it (an upgrade replaced the
//! file): the process then goes on as it was, one copy slower. The variable stays set for the
//! process's children (a browser opened for a login): a performance setting, harmless there.
//! Nor anything in a secure-execution process (AT_SECURE: set-uid, or file capabilities such
//! as `setcap cap_net_bind_service` on the binary): glibc erases the tunable from its
//! environment there, so the second start would not find it and would start again forever.
//!
//! What changes with the `execve`: nothing a process sees, but three details. The environment
//! is the one std reads (a name set twice keeps one value); a binary started through a
//! symbolic link takes its target's name in `comm` (argv[0] is kept); a blocked-signal mask
//! inherited from the parent is cleared (std clears it for the new program). When the `execve`
//! fails, std has also set SIGPIPE to its default: it is ignored again here.

use std::ffi::{OsStr, OsString};
use std::io;

/// The glibc tunable and its value: a threshold no copy reaches (1 TiB).
pub const TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold=1099511627776";

/// The name part of [`TUNABLE`]: a `GLIBC_TUNABLES` that mentions it is left alone.
const TUNABLE_NAME: &str = "glibc.cpu.x86_rep_movsb_threshold=";

/// The first glibc that copies with vector loops on AMD by itself: from 2.40 (commit 0c0d39fe,
/// "x86: Fix Zen3/Zen4 ERMS selection (BZ 30994)") its `rep movsb` threshold on AMD is the
/// non-temporal threshold, where `rep movsb` also stops, so no copy takes it. The 2.39 branch
/// got the change after its release (April 2024): a 2.39 may have it or not, and starts again.
pub const GLIBC_FIXED: (u32, u32) = (2, 40);

/// Whether glibc `version` (`None`: unknown) may still copy with `rep movsb` on AMD.
pub fn glibc_needs_tuning(version: Option<(u32, u32)>) -> bool {
    version.is_none_or(|v| v < GLIBC_FIXED)
}

/// What the CPU says about itself (the first processor's record of `/proc/cpuinfo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    pub amd: bool,
    /// Enhanced `rep movsb`: glibc uses `rep movsb` for large copies only with it.
    pub erms: bool,
}

impl Cpu {
    /// Reads the vendor and the `erms` flag from the first record of a `/proc/cpuinfo` text.
    pub fn parse(cpuinfo: &str) -> Cpu {
        let mut cpu = Cpu {
            amd: false,
            erms: false,
        };
        for line in cpuinfo.lines() {
            if line.trim().is_empty() {
                break; // the end of the first processor's record
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key.trim() {
                "vendor_id" => cpu.amd = value.trim() == "AuthenticAMD",
                "flags" => cpu.erms = value.split_whitespace().any(|f| f == "erms"),
                _ => {}
            }
        }
        cpu
    }
}

/// The `GLIBC_TUNABLES` to start again with, or `None` when this process should go on as it
/// is: the CPU is not an AMD with ERMS, or the variable already names the threshold.
/// Tunables the user set are kept, ours appended (`:` separates them).
pub fn tunables_for(cpu: Cpu, current: Option<&OsStr>) -> Option<OsString> {
    if !(cpu.amd && cpu.erms) {
        return None;
    }
    let Some(current) = current.filter(|c| !c.is_empty()) else {
        return Some(OsString::from(TUNABLE));
    };
    let named = current
        .as_encoded_bytes()
        .split(|&b| b == b':')
        .any(|t| t.starts_with(TUNABLE_NAME.as_bytes()));
    if named {
        return None;
    }
    let mut merged = current.to_os_string();
    merged.push(":");
    merged.push(TUNABLE);
    Some(merged)
}

/// Starts this binary again with [`TUNABLE`] when [`tunables_for`] says so; returns only when
/// it does not (`Ok`) or cannot (`Err`: the caller logs it once logging is up, and goes on).
/// Call it first thing in `main`, before any thread or file exists.
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
pub fn tune_memcpy() -> io::Result<()> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;

    // The first record is all we read; it is within the first few KiB.
    let mut head = [0u8; 8192];
    let n = match std::fs::File::open("/proc/cpuinfo").and_then(|mut f| f.read(&mut head)) {
        Ok(n) => n,
        Err(_) => return Ok(()), // no /proc: nothing to learn the CPU from, nor exec by
    };
    let cpu = Cpu::parse(&String::from_utf8_lossy(&head[..n]));
    if !(cpu.amd && cpu.erms && glibc_needs_tuning(super::sys::glibc_version())) {
        return Ok(());
    }
    match std::fs::read("/proc/self/auxv") {
        Ok(auxv) if !secure(&auxv) => {}
        _ => return Ok(()), // secure, or unknown: never risk starting again forever
    }
    let Some(tunables) = tunables_for(cpu, std::env::var_os("GLIBC_TUNABLES").as_deref()) else {
        return Ok(());
    };
    // The binary's own path (not /proc/self/exe, which would name the process "exe" in ps,
    // top and the journal). If the file was replaced since the start, this fails: go on.
    let exe = std::env::current_exe()?;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let err = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .exec();
    // Still here: the execve failed, after std set SIGPIPE back to its default for it.
    super::sys::ignore_sigpipe();
    Err(err)
}

/// Whether the kernel started this process in secure-execution mode: `AT_SECURE` (23) in the
/// auxiliary vector (`/proc/self/auxv`: pairs of native-endian words, key then value, ending
/// with key 0). A vector that does not parse counts as secure.
pub fn secure(auxv: &[u8]) -> bool {
    const AT_NULL: u64 = 0;
    const AT_SECURE: u64 = 23;
    for pair in auxv.chunks(16) {
        let (Ok(key), Some(value)) = (
            <[u8; 8]>::try_from(&pair[..pair.len().min(8)]),
            pair.get(8..16).and_then(|v| <[u8; 8]>::try_from(v).ok()),
        ) else {
            return true;
        };
        match u64::from_ne_bytes(key) {
            AT_NULL => return true, // no AT_SECURE entry at all: not what Linux writes
            AT_SECURE => return u64::from_ne_bytes(value) != 0,
            _ => {}
        }
    }
    true
}

/// Elsewhere there is nothing to tune ([`tune_memcpy`] on glibc x86-64 Linux).
#[cfg(not(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64")))]
pub fn tune_memcpy() -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPYC: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\
        flags\t\t: fpu vme sse2 erms fsrm avx2\nbugs\t\t: sysret_ss_attrs\n\n\
        processor\t: 1\nvendor_id\t: GenuineIntel\nflags\t\t: fpu\n";

    #[test]
    fn only_a_glibc_before_2_40_or_an_unknown_one_is_tuned() {
        assert!(glibc_needs_tuning(Some((2, 36))));
        assert!(
            glibc_needs_tuning(Some((2, 39))),
            "2.39 may lack the backport"
        );
        assert!(!glibc_needs_tuning(Some((2, 40))));
        assert!(!glibc_needs_tuning(Some((2, 41))));
        assert!(!glibc_needs_tuning(Some((3, 0))));
        assert!(glibc_needs_tuning(None));
    }

    #[test]
    fn the_first_processor_s_vendor_and_erms_are_read() {
        assert_eq!(
            Cpu::parse(EPYC),
            Cpu {
                amd: true,
                erms: true
            }
        );
        let intel = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: sse2 erms fsrm\n";
        assert_eq!(
            Cpu::parse(intel),
            Cpu {
                amd: false,
                erms: true
            }
        );
        // A flag that merely contains the letters is not the flag.
        let zen2 = "vendor_id\t: AuthenticAMD\nflags\t\t: sse2 nerms avx2 ermsx\n";
        assert_eq!(
            Cpu::parse(zen2),
            Cpu {
                amd: true,
                erms: false
            }
        );
        // What comes after the first record does not count.
        let later = "processor\t: 0\nvendor_id\t: GenuineIntel\n\nvendor_id\t: AuthenticAMD\n";
        assert!(!Cpu::parse(later).amd);
        assert_eq!(Cpu::parse(""), Cpu::parse("garbage without colons"));
    }

    fn auxv(pairs: &[(u64, u64)]) -> Vec<u8> {
        pairs
            .iter()
            .flat_map(|(k, v)| k.to_ne_bytes().into_iter().chain(v.to_ne_bytes()))
            .collect()
    }

    #[test]
    fn only_a_process_the_kernel_marks_not_secure_starts_again() {
        assert!(!secure(&auxv(&[(6, 4096), (23, 0), (25, 1), (0, 0)])));
        assert!(secure(&auxv(&[(6, 4096), (23, 1), (0, 0)])));
        // No AT_SECURE entry, a cut vector, nothing: counted as secure.
        assert!(secure(&auxv(&[(6, 4096), (0, 0)])));
        assert!(secure(&auxv(&[(6, 4096), (23, 0)])[..20]));
        assert!(secure(&auxv(&[(6, 4096)])));
        assert!(secure(&[]));
        // This test process was not started set-uid.
        assert!(!secure(&std::fs::read("/proc/self/auxv").unwrap()));
    }

    #[test]
    fn only_an_amd_with_erms_starts_again_and_the_user_s_tunables_are_kept() {
        let zen = Cpu {
            amd: true,
            erms: true,
        };
        assert_eq!(tunables_for(zen, None), Some(TUNABLE.into()));
        assert_eq!(
            tunables_for(zen, Some(OsStr::new(""))),
            Some(TUNABLE.into())
        );
        assert_eq!(
            tunables_for(zen, Some(OsStr::new("glibc.malloc.check=3"))),
            Some(format!("glibc.malloc.check=3:{TUNABLE}").into())
        );
        for other in [
            Cpu {
                amd: false,
                erms: true,
            },
            Cpu {
                amd: true,
                erms: false,
            },
        ] {
            assert_eq!(tunables_for(other, None), None);
        }
    }

    #[test]
    fn a_threshold_already_set_is_left_alone_which_also_ends_the_loop() {
        let zen = Cpu {
            amd: true,
            erms: true,
        };
        assert_eq!(tunables_for(zen, Some(OsStr::new(TUNABLE))), None);
        let user = "glibc.malloc.check=3:glibc.cpu.x86_rep_movsb_threshold=2048";
        assert_eq!(tunables_for(zen, Some(OsStr::new(user))), None);
        // A name that only ends like ours, or our name as a value, is another tunable.
        let other = "glibc.cpu.x86_rep_movsb_threshold_x=1:a=glibc.cpu.x86_rep_movsb_threshold=";
        assert_eq!(
            tunables_for(zen, Some(OsStr::new(other))),
            Some(format!("{other}:{TUNABLE}").into())
        );
        // What tune_memcpy started again with, seen by the second start.
        let again = tunables_for(zen, Some(OsStr::new("x=1"))).unwrap();
        assert_eq!(tunables_for(zen, Some(&again)), None);
    }
}
