//! 256 MiB each way through the chain, byte-exact.
//!
//! Upload: `ssh host 'cat > FILE' < local` ends only when the client's EOF has travelled the whole
//! chain (client stdin -> access -> edge -> tunnel -> sshd), so a lost half-close hangs this test
//! and a lost or reordered byte changes the digest. Download: `ssh host cat FILE > copy` must
//! deliver every byte before the session closes. Backpressure keeps memory bounded meanwhile.

use crate::support;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{run_status_with_deadline, sha256_file, shell_quote, Chain};

const SIZE: u64 = 256 * 1024 * 1024;
/// Generous for a 2-core CI machine; in release the whole test takes seconds.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(180);

/// Deterministic pseudo-random bytes (xorshift64*), incompressible enough for a transport test.
fn write_pseudo_random(path: &Path, size: u64) {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut written = 0u64;
    let mut block = [0u8; 8192];
    while written < size {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            chunk.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = (size - written).min(block.len() as u64) as usize;
        w.write_all(&block[..n]).unwrap();
        written += n as u64;
    }
    w.flush().unwrap();
}

#[test]
fn bulk_transfer_both_ways_is_byte_exact_and_ends_on_eof() {
    let chain = Chain::start("bulk-transfer", "bulk.localhost");
    let source = chain.dir.join("source.bin");
    let remote = chain.dir.join("server-copy.bin");
    let back = chain.dir.join("round-trip.bin");
    write_pseudo_random(&source, SIZE);
    let want = sha256_file(&source);

    // Upload: stdin from the file; `cat > FILE` exits only once EOF arrives.
    let started = Instant::now();
    let (status, stderr) = run_status_with_deadline(
        chain
            .ssh()
            .arg(format!(
                "cat > {}",
                shell_quote(&remote.display().to_string())
            ))
            .stdin(File::open(&source).unwrap())
            .stdout(Stdio::null()),
        TRANSFER_DEADLINE,
        "upload via ssh 'cat > FILE' (a hang here means EOF did not propagate)",
    );
    assert!(status.success(), "upload failed ({status}): {stderr}");
    eprintln!("upload of {SIZE} bytes took {:?}", started.elapsed());
    assert_eq!(
        std::fs::metadata(&remote).map(|m| m.len()).unwrap_or(0),
        SIZE,
        "server-side file has the wrong size"
    );
    assert_eq!(sha256_file(&remote), want, "upload corrupted the data");

    // Download: stdout into a file.
    let started = Instant::now();
    let (status, stderr) = run_status_with_deadline(
        chain
            .ssh()
            .arg(format!(
                "cat {}",
                shell_quote(&remote.display().to_string())
            ))
            .stdin(Stdio::null())
            .stdout(File::create(&back).unwrap()),
        TRANSFER_DEADLINE,
        "download via ssh cat FILE",
    );
    assert!(status.success(), "download failed ({status}): {stderr}");
    eprintln!("download of {SIZE} bytes took {:?}", started.elapsed());
    assert_eq!(
        std::fs::metadata(&back).map(|m| m.len()).unwrap_or(0),
        SIZE,
        "downloaded file has the wrong size"
    );
    assert_eq!(sha256_file(&back), want, "download corrupted the data");
}

/// The same through `access tcp` and plain `ssh -p` (64 MiB each way): a plain stream, not a
/// resumable one, which the origin frames straight from its reads of sshd and the edge straight
/// from the client's records (docs/design.md §2.8, "The other way through each"), so a byte
/// lost, doubled or reordered by either direct path, or an EOF lost behind a direct read,
/// shows here.
#[test]
fn bulk_through_access_tcp_is_byte_exact_both_ways() {
    const SIZE: u64 = 64 * 1024 * 1024;
    let chain = Chain::start("bulk-access-tcp", "bulktcp.localhost");
    let (listener, port) = chain.access_tcp(&chain.edge.edge_arg());
    let ssh = |remote: String| {
        let mut c = chain.ssh_port(port);
        c.arg(remote);
        c
    };
    let source = chain.dir.join("source.bin");
    let remote = chain.dir.join("server-copy.bin");
    let back = chain.dir.join("round-trip.bin");
    write_pseudo_random(&source, SIZE);
    let want = sha256_file(&source);
    let remote_q = shell_quote(&remote.display().to_string());

    let (status, stderr) = run_status_with_deadline(
        ssh(format!("cat > {remote_q}"))
            .stdin(File::open(&source).unwrap())
            .stdout(Stdio::null()),
        TRANSFER_DEADLINE,
        "upload via access tcp (a hang here means EOF did not propagate)",
    );
    assert!(
        status.success(),
        "upload failed ({status}): {stderr}\nlistener:\n{}",
        listener.stderr_text()
    );
    assert_eq!(sha256_file(&remote), want, "upload corrupted the data");

    let (status, stderr) = run_status_with_deadline(
        ssh(format!("cat {remote_q}"))
            .stdin(Stdio::null())
            .stdout(File::create(&back).unwrap()),
        TRANSFER_DEADLINE,
        "download via access tcp",
    );
    assert!(
        status.success(),
        "download failed ({status}): {stderr}\nlistener:\n{}",
        listener.stderr_text()
    );
    assert_eq!(sha256_file(&back), want, "download corrupted the data");
}
