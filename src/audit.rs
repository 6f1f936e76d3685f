//! The audit log: one JSON object per line for each access decision (DESIGN.md §4).
//!
//! Contract: each line is `{"time": RFC 3339 UTC, "event": …, <fields>}`. `time` and `event`
//! cannot be overridden by fields. Recording never fails the caller and never waits: the
//! event loop formats the line and hands it to a writer thread through a bounded queue
//! ([`AUDIT_QUEUE_RECORDS`]). The writer appends what it holds in whole lines to a file opened
//! for append (created 0600), one `write` per batch, so lines never interleave with another
//! writer's; it writes as soon as records wait (at the latest every [`AUDIT_FLUSH_MILLIS`]),
//! and what is queued is written when the [`Audit`] is dropped (the edge's shutdown).
//!
//! A full queue drops the record and counts it: the first drop is logged (`log::warn!`), and
//! the writer then records an `audit_dropped` line with the count, so the audit log itself says
//! that records are missing. A write error is logged and the decision goes ahead.
//!
//! The admin console reads the log from memory, never from the file on the event loop: the
//! [`Audit`] keeps the last lines it knows ([`Recent`], bounded by
//! [`CONSOLE_AUDIT_LINES`] and [`CONSOLE_AUDIT_BYTES`]): the tail of the file, read once
//! when it is opened (before the loop starts), then each line as it is recorded.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::limits::{
    AUDIT_FLUSH_MILLIS, AUDIT_QUEUE_RECORDS, CONSOLE_AUDIT_BYTES, CONSOLE_AUDIT_LINES,
};

/// Bytes of whole lines the writer gathers into one `write`.
const WRITE_BATCH: usize = 64 * 1024;

/// Where decisions are recorded; [`Audit::disabled`] records nothing.
pub struct Audit {
    writer: Option<Writer>,
    /// Shared with the siblings: the console sees every loop's lines.
    recent: Arc<Mutex<Recent>>,
}

/// The last audit lines, oldest first, at most [`CONSOLE_AUDIT_LINES`] of them and
/// [`CONSOLE_AUDIT_BYTES`] in all (the oldest go first).
#[derive(Default)]
pub struct Recent {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Recent {
    fn push(&mut self, line: &str) {
        let line = line.trim_end_matches('\n');
        if line.is_empty() || line.len() > CONSOLE_AUDIT_BYTES {
            return;
        }
        self.bytes += line.len();
        self.lines.push_back(line.to_owned());
        while self.lines.len() > CONSOLE_AUDIT_LINES || self.bytes > CONSOLE_AUDIT_BYTES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn push_for_tests(&mut self, line: &str) {
        self.push(line);
    }

    /// The lines, oldest first.
    pub fn lines(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    /// The whole lines in the last [`CONSOLE_AUDIT_BYTES`] of `file` (a line cut by where
    /// the read starts is dropped).
    fn tail_of(file: &mut File) -> io::Result<Recent> {
        let len = file.metadata()?.len();
        let start = len.saturating_sub(CONSOLE_AUDIT_BYTES as u64);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.take(CONSOLE_AUDIT_BYTES as u64)
            .read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        let mut lines = text.split('\n');
        if start > 0 {
            lines.next();
        }
        let mut recent = Recent::default();
        for line in lines {
            recent.push(line);
        }
        Ok(recent)
    }
}

struct Writer {
    lines: Option<SyncSender<String>>,
    shared: Arc<Dropped>,
    thread: Option<JoinHandle<()>>,
}

/// Records the queue had no room for.
#[derive(Default)]
struct Dropped {
    /// Dropped since the writer last recorded a count.
    count: AtomicU64,
    /// The drop was logged; cleared once the writer recorded the count.
    logged: AtomicBool,
}

impl Audit {
    /// Appends to `path`, creating it with mode 0600, through a writer thread.
    pub fn open(path: &Path) -> io::Result<Audit> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open audit log {}: {e}", path.display()),
                )
            })?;
        let recent = Recent::tail_of(&mut file).unwrap_or_else(|e| {
            log::warn!(
                "cannot read the audit log {} back for the console: {e}",
                path.display()
            );
            Recent::default()
        });
        let (lines, queue) = mpsc::sync_channel(AUDIT_QUEUE_RECORDS);
        let shared = Arc::new(Dropped::default());
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("postern-audit".into())
            .spawn(move || write_lines(file, &queue, &theirs))?;
        Ok(Audit {
            writer: Some(Writer {
                lines: Some(lines),
                shared,
                thread: Some(thread),
            }),
            recent: Arc::new(Mutex::new(recent)),
        })
    }

    /// Another handle on the same log, for another event loop of the edge (`--workers`): its
    /// records go through the same queue and writer thread, so lines still never interleave.
    /// The console's recent lines are shared with it. The log's file is closed once the
    /// handle that opened it and every sibling have been dropped.
    pub fn sibling(&self) -> Audit {
        Audit {
            writer: self.writer.as_ref().map(|w| Writer {
                lines: w.lines.clone(),
                shared: w.shared.clone(),
                thread: None,
            }),
            recent: self.recent.clone(),
        }
    }

    /// An audit log that drops every record.
    pub fn disabled() -> Audit {
        Audit {
            writer: None,
            recent: Arc::default(),
        }
    }

    /// The last lines recorded (see [`Recent`]), for the admin console.
    pub fn recent(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one line for `event` with `fields`; never waits.
    pub fn record(&self, event: &str, fields: Map<String, Value>) {
        let Some(writer) = &self.writer else { return };
        let Some(lines) = &writer.lines else { return };
        let line = line(event, fields);
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(&line);
        match lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                writer.shared.count.fetch_add(1, Ordering::Relaxed);
                if !writer.shared.logged.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "the audit log's queue is full ({AUDIT_QUEUE_RECORDS} records): records \
                         are dropped and counted until its writer catches up (the disk is slow \
                         or full?)"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                log::warn!("the audit log's writer has stopped: a record was not written");
            }
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        if let Some(w) = &mut self.writer {
            // The writer drains the queue, writes, and ends.
            w.lines = None;
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// One audit line, newline included.
fn line(event: &str, fields: Map<String, Value>) -> String {
    let mut line = Map::new();
    line.insert("time".into(), Value::String(rfc3339(SystemTime::now())));
    line.insert("event".into(), Value::String(event.into()));
    for (key, value) in fields {
        line.entry(key).or_insert(value);
    }
    let mut text = Value::Object(line).to_string();
    text.push('\n');
    text
}

/// The writer thread: waits for lines, gathers what is queued, appends it in one write.
fn write_lines(mut file: File, queue: &Receiver<String>, dropped: &Dropped) {
    let tick = Duration::from_millis(AUDIT_FLUSH_MILLIS);
    let mut batch = String::new();
    let mut open = true;
    while open {
        match queue.recv_timeout(tick) {
            Ok(l) => batch.push_str(&l),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        while batch.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(l) => batch.push_str(&l),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let lost = dropped.count.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let mut fields = Map::new();
            fields.insert("dropped".into(), lost.into());
            batch.push_str(&line("audit_dropped", fields));
            dropped.logged.store(false, Ordering::Relaxed);
        }
        if batch.is_empty() {
            continue;
        }
        if let Err(e) = file.write_all(batch.as_bytes()) {
            log::warn!("cannot write the audit log: {e}");
        }
        batch.clear();
    }
}

/// Repeats of one kind of record from one source (e.g. a denial, keyed by source IP and
/// reason): the first in each interval is recorded, the rest only counted, so a client that
/// repeats a refused request thousands of times a second writes one line a minute, not
/// megabytes. Sans-IO: time is passed in. At most `capacity` keys are tracked; repeats from
/// keys beyond that are counted together.
pub struct Repeats<K> {
    seen: std::collections::HashMap<K, (std::time::Instant, u64)>,
    capacity: usize,
    interval: std::time::Duration,
    /// Occurrences not recorded because the table was full.
    overflow: u64,
}

impl<K: std::hash::Hash + Eq + Clone> Repeats<K> {
    pub fn new(capacity: usize, interval: std::time::Duration) -> Repeats<K> {
        Repeats {
            seen: std::collections::HashMap::new(),
            capacity,
            interval,
            overflow: 0,
        }
    }

    /// True if this occurrence of `key` is to be recorded; false if it is counted instead.
    pub fn first(&mut self, key: &K, now: std::time::Instant) -> bool {
        if let Some((since, count)) = self.seen.get_mut(key) {
            if now.duration_since(*since) < self.interval {
                *count = count.saturating_add(1);
                return false;
            }
        }
        if !self.seen.contains_key(key) && self.seen.len() >= self.capacity {
            self.overflow = self.overflow.saturating_add(1);
            return false;
        }
        self.seen.insert(key.clone(), (now, 0));
        true
    }

    /// Forgets keys whose interval is over at `now` (every key with `now = None`); returns
    /// those that had repeats counted, with their counts, and the count of repeats from keys
    /// the table had no room for.
    pub fn expire(&mut self, now: Option<std::time::Instant>) -> (Vec<(K, u64)>, u64) {
        let interval = self.interval;
        let over =
            |since: &std::time::Instant| now.is_none_or(|n| n.duration_since(*since) >= interval);
        let counted = self
            .seen
            .iter()
            .filter(|(_, (since, n))| *n > 0 && over(since))
            .map(|(k, (_, n))| (k.clone(), *n))
            .collect();
        self.seen.retain(|_, (since, _)| !over(since));
        (counted, std::mem::take(&mut self.overflow))
    }
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ`: the timestamp the logger writes (env_logger formats
/// it with jiff, so log lines and audit lines read alike). Clamped to jiff's range (years
/// -9999 to 9999).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let at = jiff::Timestamp::try_from(t).unwrap_or(if t < UNIX_EPOCH {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    });
    format!("{at:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{mode_of, TempDir};
    use std::time::Duration;

    #[test]
    fn formats_rfc3339_utc() {
        let at = |secs, millis| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
        // Beyond jiff's range: its last instant (which leaves room for time-zone offsets).
        assert_eq!(at(u64::MAX / 2, 0), "9999-12-30T22:00:00.999Z");
    }

    #[test]
    fn appends_one_json_line_per_record() {
        let tmp = TempDir::new("audit");
        let path = tmp.0.join("audit.log");
        let audit = Audit::open(&path).unwrap();
        let mut fields = Map::new();
        fields.insert("host".into(), "ssh.localhost".into());
        fields.insert("event".into(), "spoofed".into());
        audit.record("allow", fields);
        drop(audit);
        Audit::open(&path).unwrap().record("deny", Map::new());
        Audit::disabled().record("ignored", Map::new());

        assert_eq!(mode_of(&path), 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "allow");
        assert_eq!(lines[0]["host"], "ssh.localhost");
        assert_eq!(lines[1]["event"], "deny");
        let time = lines[0]["time"].as_str().unwrap();
        assert!(time.len() == 24 && time.ends_with('Z'), "{time}");
    }

    #[test]
    fn the_console_sees_the_files_tail_at_open_then_each_record_within_its_bounds() {
        let tmp = TempDir::new("audit-recent");
        let path = tmp.0.join("audit.log");
        // More than the byte bound: only whole lines of the tail come back.
        let old = format!("{}\n", "x".repeat(100));
        let mut text = String::new();
        while text.len() <= CONSOLE_AUDIT_BYTES + 1000 {
            text.push_str(&old);
        }
        text.push_str("{\"event\":\"last-before\"}\n");
        std::fs::write(&path, &text).unwrap();
        let audit = Audit::open(&path).unwrap();
        {
            let recent = audit.recent();
            let lines: Vec<&str> = recent.lines().collect();
            assert_eq!(lines.last(), Some(&"{\"event\":\"last-before\"}"));
            assert!(lines.len() <= CONSOLE_AUDIT_LINES);
            assert!(lines[..lines.len() - 1].iter().all(|l| *l == &old[..100]));
        }
        for i in 0..CONSOLE_AUDIT_LINES + 10 {
            let mut fields = Map::new();
            fields.insert("i".into(), i.into());
            audit.record("new", fields);
        }
        let recent = audit.recent();
        assert_eq!(recent.lines().count(), CONSOLE_AUDIT_LINES);
        assert!(recent
            .lines()
            .last()
            .unwrap()
            .contains(&format!("\"i\":{}", CONSOLE_AUDIT_LINES + 9)));
        assert!(recent.bytes <= CONSOLE_AUDIT_BYTES);
    }

    #[test]
    fn records_are_written_by_the_writer_soon_and_all_at_drop() {
        let tmp = TempDir::new("audit-writer");
        let path = tmp.0.join("audit.log");
        let audit = Audit::open(&path).unwrap();
        audit.record("first", Map::new());
        // Written while the edge runs, not only at the end (someone may be reading it).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&path).unwrap().contains("first") {
            assert!(
                std::time::Instant::now() < deadline,
                "not written within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        for i in 0..1000 {
            let mut fields = Map::new();
            fields.insert("i".into(), i.into());
            audit.record("many", fields);
        }
        drop(audit);
        let text = std::fs::read_to_string(&path).unwrap();
        let many = text.lines().filter(|l| l.contains("\"many\"")).count();
        let dropped: u64 = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["event"] == "audit_dropped")
            .map(|v| v["dropped"].as_u64().unwrap())
            .sum();
        assert_eq!(
            many as u64 + dropped,
            1000,
            "each record written or counted"
        );
    }

    #[test]
    fn repeats_are_recorded_once_per_interval_and_counted() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let mut r = Repeats::new(2, minute);
        assert!(r.first(&"a", t0));
        for _ in 0..199 {
            assert!(!r.first(&"a", t0 + Duration::from_secs(1)));
        }
        assert!(r.first(&"b", t0));
        // Full: a third source is counted apart, not tracked.
        assert!(!r.first(&"c", t0));
        assert_eq!(r.expire(Some(t0 + Duration::from_secs(59))), (vec![], 1));
        assert_eq!(r.expire(Some(t0 + minute)), (vec![("a", 199)], 0));
        // After the interval the next one is recorded again.
        assert!(r.first(&"a", t0 + minute));
        assert!(!r.first(&"a", t0 + minute));
        // Shutdown: everything pending, whatever its age.
        assert_eq!(r.expire(None), (vec![("a", 1)], 0));
    }
}
