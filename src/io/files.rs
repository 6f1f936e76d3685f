//! Files as the roles write them: the one atomic writer (temp file beside the target, created
//! with its mode, fsync, rename, fsync of the directory). Keys, tokens, state files, units
//! and config files all go through it, so none is ever seen half-written or with a wide mode.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` atomically: temp file beside it created with `mode`, fsync, rename, fsync dir.
pub fn write_file_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_file(path, data, mode, Publish::Replace)
}

/// Creates `path` atomically with `data` and `mode`, only if it does not exist yet: as
/// [`write_file_atomic`], but the temp file is hard-linked to `path`, which fails with
/// [`io::ErrorKind::AlreadyExists`] when another process got there first (the caller then
/// reads theirs). A reader sees no file or the whole one.
pub fn write_file_new(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_file(path, data, mode, Publish::New)
}

/// How the temp file becomes `path`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Publish {
    Replace,
    New,
}

fn write_file(path: &Path, data: &[u8], mode: u32, publish: Publish) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    // Random as well as unique: someone who may write to the directory cannot create the
    // name first and so block the write (`create_new` already stops them reading it).
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        crate::proto::base64::encode_url(&super::random_bytes::<6>())
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        match publish {
            Publish::Replace => fs::rename(&tmp, path)?,
            Publish::New => {
                let linked = fs::hard_link(&tmp, path);
                let _ = fs::remove_file(&tmp);
                linked?;
            }
        }
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| annotate(e, &format!("cannot write {}", path.display())))
}

fn annotate(e: io::Error, context: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{context}: {e}"))
}
