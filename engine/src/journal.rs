//! The write journal's writer (`[journal] enabled`, off by default; docs/replay.md): entries
//! of every execution that is not a plain read — writes, DDL, transaction control, `SET` — with
//! their bound parameters and outcome, as JSON lines on disk, for `POST /api/replay`
//! (admin/src/replay.rs). The pipeline's journal stage (`pipeline/journal.rs`, last in the
//! list) builds one [`Entry`] at each such execution's end and hands it over a bounded
//! crossbeam channel ([`JournalSink::record`]). The thread numbers the
//! entries in the order they arrive (`seq`: the replay order), writes them to
//! `<path>/journal.jsonl`, rotates that file by size and deletes the oldest rotated files. A
//! shard never blocks on it: when the queue is full the entry is dropped and counted, and the
//! thread writes a `{"gap": n}` line where entries went missing, so a replay across it stops
//! instead of applying a history with holes.
//!
//! Cost while on: the statement text, the Bind message (a reference count) and, for a named
//! statement, a copy of its parameter types per execution; one allocation for the entry of a
//! journaled execution; nothing for plain reads beyond the read scan. Off: no stage.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use helios_config::journal::JournalConfig;
use serde::Serialize;

/// Entries waiting for the journal thread before shards start dropping them.
const QUEUE: usize = 65_536;

/// The shards' end of the journal: cloned into every session's stage.
#[derive(Clone, Debug)]
pub struct JournalSink {
    tx: Sender<Entry>,
    dropped: Arc<AtomicU64>,
}

/// What an entry ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Query,
    Execute,
    FunctionCall,
}

/// One journaled execution.
#[derive(Debug)]
pub struct Entry {
    pub ts_ms: u64,
    pub shard: usize,
    pub session: u32,
    pub database: Arc<str>,
    pub user: Arc<str>,
    pub kind: EntryKind,
    pub sql: String,
    /// As the statement's Parse gave them: `i16` count, then `u32` OIDs.
    pub param_types: Bytes,
    /// The Bind message (whole frame), empty for a simple query.
    pub bind: Bytes,
    pub ok: bool,
    pub sqlstate: Option<String>,
    pub rolled_back: bool,
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A bound parameter as the journal writes it: text as sent, binary in base64, or null.
#[derive(Serialize)]
#[serde(untagged)]
enum Param {
    Text { t: String },
    Binary { b: String },
    Null,
}

/// One line of `journal.jsonl`.
#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    ts_ms: u64,
    shard: usize,
    session: u32,
    database: &'a str,
    user: &'a str,
    kind: &'static str,
    sql: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    types: Vec<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    params: Vec<Param>,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    sqlstate: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    rolled_back: bool,
    /// The entry cannot be replayed as recorded (a COPY's data, a fast-path function call,
    /// malformed parameters): replay stops here.
    #[serde(skip_serializing_if = "Option::is_none")]
    unreplayable: Option<&'static str>,
}

/// Starts the journal thread; the sink is what sessions write to.
pub fn start(cfg: &JournalConfig) -> std::io::Result<JournalSink> {
    std::fs::create_dir_all(&cfg.path)?;
    let mut w = Writer::open(cfg)?;
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let gone = dropped.clone();
    std::thread::Builder::new()
        .name("helios-journal".into())
        .spawn(move || w.run(rx, gone))?;
    log::warn!(
        "journal: every statement that is not a plain read is written, with its parameters, to {} (it holds data)",
        cfg.path.join("journal.jsonl").display()
    );
    Ok(JournalSink { tx, dropped })
}

impl JournalSink {
    /// Hands `e` to the journal thread; never waits: with the queue full it is dropped and
    /// counted (the thread writes a gap line there).
    pub fn record(&self, e: Entry) {
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Entries dropped because the journal thread fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// `i16` count, then that many `u32` OIDs.
fn types(b: &[u8]) -> Vec<u32> {
    let Some(n) = b.get(..2).map(|n| i16::from_be_bytes([n[0], n[1]])) else {
        return Vec::new();
    };
    b[2..]
        .chunks_exact(4)
        .take(n.max(0) as usize)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The parameters of a Bind frame (tag and length first), or why they cannot be read.
fn params(frame: &[u8]) -> Result<Vec<Param>, &'static str> {
    let mut b = frame.get(5..).ok_or("short Bind")?;
    for _ in 0..2 {
        let end = memchr::memchr(0, b).ok_or("malformed Bind")?;
        b = &b[end + 1..];
    }
    let i16_at = |b: &[u8], i: usize| -> Result<i16, &'static str> {
        b.get(i..i + 2)
            .map(|x| i16::from_be_bytes([x[0], x[1]]))
            .ok_or("malformed Bind")
    };
    let nfmt = i16_at(b, 0)?.max(0) as usize;
    let formats: Vec<i16> = (0..nfmt)
        .map(|i| i16_at(b, 2 + 2 * i))
        .collect::<Result<_, _>>()?;
    b = &b[2 + 2 * nfmt..];
    let n = i16_at(b, 0)?.max(0) as usize;
    b = &b[2..];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let len = b
            .get(..4)
            .map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]]))
            .ok_or("malformed Bind")?;
        b = &b[4..];
        if len < 0 {
            out.push(Param::Null);
            continue;
        }
        let v = b.get(..len as usize).ok_or("malformed Bind")?;
        b = &b[len as usize..];
        let binary = match formats.len() {
            0 => false,
            1 => formats[0] == 1,
            _ => formats.get(i).copied().unwrap_or(0) == 1,
        };
        out.push(if binary {
            Param::Binary {
                b: base64::engine::general_purpose::STANDARD.encode(v),
            }
        } else {
            Param::Text {
                t: String::from_utf8(v.to_vec()).map_err(|_| "a text parameter is not UTF-8")?,
            }
        });
    }
    Ok(out)
}

/// The journal thread's file.
struct Writer {
    dir: PathBuf,
    max_file_bytes: u64,
    max_files: usize,
    out: BufWriter<File>,
    size: u64,
    seq: u64,
}

impl Writer {
    fn open(cfg: &JournalConfig) -> std::io::Result<Writer> {
        let path = cfg.path.join("journal.jsonl");
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = f.metadata()?.len();
        // Numbering goes on from the files already there (a restart).
        let seq = last_seq(&cfg.path).unwrap_or(0);
        Ok(Writer {
            dir: cfg.path.clone(),
            max_file_bytes: cfg.max_file_bytes,
            max_files: cfg.max_files,
            out: BufWriter::new(f),
            size,
            seq,
        })
    }

    fn run(&mut self, rx: Receiver<Entry>, dropped: Arc<AtomicU64>) {
        let mut lost_seen = 0u64;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(e) => {
                    let lost = dropped.load(Ordering::Relaxed);
                    if lost > lost_seen {
                        self.gap(lost - lost_seen);
                        lost_seen = lost;
                    }
                    self.write(&e);
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    // Idle: what was written reaches the file (a replay reads it).
                    if let Err(e) = self.out.flush() {
                        log::error!("journal: {e}");
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    let _ = self.out.flush();
                    return;
                }
            }
        }
    }

    fn gap(&mut self, n: u64) {
        log::error!("journal: {n} entries dropped (the journal thread fell behind)");
        self.seq += 1;
        let line = serde_json::json!({ "seq": self.seq, "ts_ms": unix_ms(), "gap": n });
        self.put(line.to_string());
    }

    fn write(&mut self, e: &Entry) {
        let (params, unreplayable) = match e.kind {
            EntryKind::FunctionCall => (Vec::new(), Some("a fast-path function call")),
            _ if e.bind.is_empty() => (Vec::new(), None),
            _ => match params(&e.bind) {
                Ok(p) => (p, None),
                Err(why) => (Vec::new(), Some(why)),
            },
        };
        let copy_in = crate::sql::contains_ci(e.sql.as_bytes(), b"from stdin");
        self.seq += 1;
        let line = Line {
            seq: self.seq,
            ts_ms: e.ts_ms,
            shard: e.shard,
            session: e.session,
            database: &e.database,
            user: &e.user,
            kind: match e.kind {
                EntryKind::Query => "query",
                EntryKind::Execute => "execute",
                EntryKind::FunctionCall => "function_call",
            },
            sql: &e.sql,
            types: types(&e.param_types),
            params,
            ok: e.ok,
            sqlstate: e.sqlstate.as_deref(),
            rolled_back: e.rolled_back,
            unreplayable: unreplayable
                .or(copy_in.then_some("COPY FROM STDIN: its data is not journaled")),
        };
        match serde_json::to_string(&line) {
            Ok(s) => self.put(s),
            Err(err) => log::error!("journal: entry {}: {err}", self.seq),
        }
    }

    fn put(&mut self, line: String) {
        if self.size > 0 && self.size + line.len() as u64 + 1 > self.max_file_bytes {
            if let Err(e) = self.rotate() {
                log::error!("journal: rotating: {e}");
            }
        }
        if let Err(e) = writeln!(self.out, "{line}") {
            log::error!("journal: writing: {e}");
        }
        self.size += line.len() as u64 + 1;
    }

    /// `journal.jsonl` → `journal.<unix ms>.jsonl`; the oldest beyond `max_files` deleted.
    /// Names sort in rotation order (the deletion and the replay go by name): a rotation gets a
    /// number above every rotated file's, even when several rotations fall in one millisecond
    /// (taking `ms + 1` for those would otherwise give a later one a name below an earlier
    /// one's once the clock catches up, and the newest file would be deleted as the oldest).
    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let cur = self.dir.join("journal.jsonl");
        let newest = rotated(&self.dir).last().and_then(|p| rotated_ms(p));
        let mut ms = unix_ms().max(newest.map_or(0, |n| n + 1));
        while self.dir.join(format!("journal.{ms:013}.jsonl")).exists() {
            ms += 1;
        }
        std::fs::rename(&cur, self.dir.join(format!("journal.{ms:013}.jsonl")))?;
        let mut old = rotated(&self.dir);
        while old.len() > self.max_files {
            let f = old.remove(0);
            log::info!("journal: deleting {}", f.display());
            std::fs::remove_file(f)?;
        }
        self.out = BufWriter::new(OpenOptions::new().create(true).append(true).open(&cur)?);
        self.size = 0;
        Ok(())
    }
}

/// Rotated journal files, oldest first.
fn rotated(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("journal.") && n.ends_with(".jsonl") && n != "journal.jsonl"
            })
        })
        .collect();
    v.sort();
    v
}

/// The number in a rotated file's name (`journal.<ms>.jsonl`).
fn rotated_ms(p: &Path) -> Option<u64> {
    p.file_name()?
        .to_str()?
        .strip_prefix("journal.")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// The highest `seq` in the journal already on disk.
fn last_seq(dir: &Path) -> Option<u64> {
    let mut files = rotated(dir);
    files.push(dir.join("journal.jsonl"));
    files.iter().rev().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        text.lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["seq"].as_u64())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many rotations within a millisecond or two: the names still sort in rotation order, so
    /// what `max_files` keeps is the newest entries, without holes.
    #[test]
    fn rotations_in_one_millisecond_keep_the_newest_files() {
        let dir = std::env::temp_dir().join(format!("helios-journal-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = JournalConfig {
            enabled: true,
            path: dir.clone(),
            max_file_bytes: 4096,
            max_files: 2,
        };
        let mut w = Writer::open(&cfg).unwrap();
        for i in 1..=400u64 {
            w.seq = i;
            w.put(format!("{{\"seq\":{i},\"pad\":\"{}\"}}", "x".repeat(400)));
        }
        w.out.flush().unwrap();
        let mut files = rotated(&dir);
        assert_eq!(files.len(), 2, "{files:?}");
        files.push(dir.join("journal.jsonl"));
        let seqs: Vec<u64> = files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                            .as_u64()
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let first = seqs[0];
        assert!(first > 1);
        assert_eq!(
            seqs,
            (first..=400).collect::<Vec<_>>(),
            "files in name order: {files:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bind_parameters_are_read_by_format() {
        let mut f = vec![b'B', 0, 0, 0, 0];
        f.extend_from_slice(b"p\0s\0");
        f.extend_from_slice(&2i16.to_be_bytes()); // two format codes
        f.extend_from_slice(&0i16.to_be_bytes());
        f.extend_from_slice(&1i16.to_be_bytes());
        f.extend_from_slice(&3i16.to_be_bytes()); // three parameters
        f.extend_from_slice(&2i32.to_be_bytes());
        f.extend_from_slice(b"42");
        f.extend_from_slice(&4i32.to_be_bytes());
        f.extend_from_slice(&7i32.to_be_bytes());
        f.extend_from_slice(&(-1i32).to_be_bytes());
        f.extend_from_slice(&0i16.to_be_bytes()); // result formats
        let p = serde_json::to_string(&params(&f).unwrap()).unwrap();
        assert_eq!(p, r#"[{"t":"42"},{"b":"AAAABw=="},null]"#);
        assert!(params(&f[..f.len() - 9]).is_err(), "cut short");
        assert_eq!(types(&[0, 2, 0, 0, 0, 23, 0, 0, 0, 25]), vec![23, 25]);
    }
}
