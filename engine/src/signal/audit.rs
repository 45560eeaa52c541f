//! Per-session audit summaries and the audit thread that writes them (docs/signal.md).
//!
//! A session counts into its [`Tally`] (cells: no locks, no atomics); at its end — and every
//! `audit.interval_s` while it lasts — the shard turns the tally into a [`Summary`] and
//! `try_send`s it to the audit thread over a bounded channel. A full channel drops the
//! summary and counts it (`heliosproxy_audit_dropped_total`): a shard never waits for a sink.
//! The audit thread writes JSON lines to the sink (a file rotated by size, stdout, or batched
//! HTTP POSTs) and feeds the drift engine ([`super::drift`]).
//!
//! A summary holds counts, sizes and times only: no SQL text, no parameters, no values.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use helios_admin::SignalBoard;
use helios_config::signal::{AuditSink, DriftConfig};

use super::drift::Drift;

/// Summaries waiting for the audit thread before shards start dropping them.
pub const QUEUE: usize = 10_000;
/// HTTP sink: most summaries in one POST, and the longest a batch waits.
pub const HTTP_BATCH: usize = 500;
pub const HTTP_BATCH_WAIT: Duration = Duration::from_secs(1);
/// HTTP sink: connect, write and read limits of one POST.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// Latency buckets: four per power of two from 1 µs (the p95 is within ±10 %), 2.5 KiB-free:
/// 160 `u32`.
pub const LAT_BUCKETS: usize = 160;

fn lat_bucket(us: u64) -> usize {
    let us = us.max(1);
    let lg = 63 - us.leading_zeros() as usize;
    // Two bits below the top one pick the quarter.
    let sub = if lg >= 2 {
        ((us >> (lg - 2)) & 3) as usize
    } else {
        ((us << (2 - lg)) & 3) as usize
    };
    (lg * 4 + sub).min(LAT_BUCKETS - 1)
}

/// The middle of a bucket, in µs.
fn lat_value(b: usize) -> u64 {
    let (lg, sub) = (b / 4, b % 4);
    let lo = (1u64 << lg) as f64 * (1.0 + sub as f64 / 4.0);
    (lo * (1.0 + 1.0 / 8.0)) as u64
}

/// Statement latencies of a session (or a drift window).
#[derive(Clone, Debug)]
pub struct Latencies {
    pub buckets: [u32; LAT_BUCKETS],
    pub count: u64,
    pub sum_us: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            buckets: [0; LAT_BUCKETS],
            count: 0,
            sum_us: 0,
        }
    }
}

impl Latencies {
    pub fn record(&mut self, us: u64) {
        let b = lat_bucket(us);
        self.buckets[b] = self.buckets[b].saturating_add(1);
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn add(&mut self, o: &Latencies) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a = a.saturating_add(*b);
        }
        self.count += o.count;
        self.sum_us = self.sum_us.saturating_add(o.sum_us);
    }

    pub fn avg_us(&self) -> Option<u64> {
        (self.count > 0).then(|| self.sum_us / self.count)
    }

    pub fn p95_us(&self) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let want = (self.count as f64 * 0.95).ceil() as u64;
        let mut seen = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += *n as u64;
            if seen >= want {
                return Some(lat_value(i));
            }
        }
        Some(lat_value(LAT_BUCKETS - 1))
    }
}

/// Who a session is, for its summaries.
#[derive(Clone, Debug)]
pub struct Identity {
    pub context: String,
    pub user: String,
    pub upstream_user: String,
    /// The role statements run as upstream: the access context's `role` (docs/contexts.md),
    /// else the upstream login.
    pub upstream_role: String,
    pub client_addr: String,
    pub tls: bool,
    /// Unix milliseconds.
    pub started_ms: u64,
    /// The database is covered by `[drift]`.
    pub drift: bool,
}

/// What a session did since its previous summary.
#[derive(Default, Debug)]
pub struct Counts {
    pub statements: u64,
    pub rows: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency: Latencies,
}

/// One session's counters, shared by the session loop and its signal stage.
pub struct Tally {
    pub id: Identity,
    pub frontend_messages: Cell<u64>,
    pub backend_messages: Cell<u64>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    pub counts: RefCell<Counts>,
    /// When the previous summary was cut (unix ms).
    pub period_start_ms: Cell<u64>,
}

impl Tally {
    pub fn new(id: Identity) -> Tally {
        Tally {
            period_start_ms: Cell::new(id.started_ms),
            id,
            frontend_messages: Cell::new(0),
            backend_messages: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            counts: RefCell::new(Counts::default()),
        }
    }

    #[inline]
    pub fn add(c: &Cell<u64>, n: u64) {
        c.set(c.get().wrapping_add(n));
    }

    /// An execution's outcome.
    pub fn executed(&self, rows: u64, error: Option<&str>, latency_us: u64) {
        let mut c = self.counts.borrow_mut();
        c.statements += 1;
        c.rows += rows;
        if let Some(code) = error {
            // Executions the proxy ended without a SQLSTATE (never run) count as class "".
            let class = code.get(..2).unwrap_or("");
            match c.errors.get_mut(class) {
                Some(n) => *n += 1,
                None => {
                    c.errors.insert(class.to_string(), 1);
                }
            }
        }
        c.latency.record(latency_us);
    }

    /// The summary of the period since the previous one; the counters start over.
    pub fn cut(&self, now_ms: u64, shard: usize, last: bool) -> Summary {
        let c = std::mem::take(&mut *self.counts.borrow_mut());
        let start = self.period_start_ms.replace(now_ms);
        let take = |x: &Cell<u64>| x.replace(0);
        Summary {
            event: "session_summary",
            last,
            shard,
            context: self.id.context.clone(),
            user: self.id.user.clone(),
            upstream_user: self.id.upstream_user.clone(),
            upstream_role: self.id.upstream_role.clone(),
            client_addr: self.id.client_addr.clone(),
            tls: self.id.tls,
            session_start_ms: self.id.started_ms,
            start_ms: start,
            end_ms: now_ms,
            duration_ms: now_ms.saturating_sub(start),
            frontend_messages: take(&self.frontend_messages),
            statements: c.statements,
            backend_messages: take(&self.backend_messages),
            errors: c.errors.values().sum(),
            errors_by_class: c.errors,
            rows: c.rows,
            bytes_in: take(&self.bytes_in),
            bytes_out: take(&self.bytes_out),
            latency_avg_us: c.latency.avg_us(),
            latency_p95_us: c.latency.p95_us(),
            latency: c.latency,
            drift: self.id.drift,
        }
    }
}

/// One audit event: a session's activity over a period (its whole life, or `interval_s`).
#[derive(Clone, Debug)]
pub struct Summary {
    pub event: &'static str,
    /// The session's last summary (it ended): `"final"` in the JSON.
    pub last: bool,
    pub shard: usize,
    /// The database alias.
    pub context: String,
    pub user: String,
    /// The role the proxy logs in to the server as.
    pub upstream_user: String,
    /// The role statements run as (the context's `role`, else `upstream_user`).
    pub upstream_role: String,
    pub client_addr: String,
    pub tls: bool,
    pub session_start_ms: u64,
    /// This summary's period.
    pub start_ms: u64,
    pub end_ms: u64,
    pub duration_ms: u64,
    pub frontend_messages: u64,
    pub statements: u64,
    pub backend_messages: u64,
    pub errors: u64,
    /// SQLSTATE class (two characters) → errors.
    pub errors_by_class: BTreeMap<String, u64>,
    pub rows: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency_avg_us: Option<u64>,
    pub latency_p95_us: Option<u64>,
    /// For drift (not written).
    pub latency: Latencies,
    pub drift: bool,
}

impl Summary {
    /// The JSON line: every field above but the latency buckets and the drift flag.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "event": self.event,
            "final": self.last,
            "shard": self.shard,
            "context": self.context,
            "user": self.user,
            "upstream_user": self.upstream_user,
            "upstream_role": self.upstream_role,
            "client_addr": self.client_addr,
            "tls": self.tls,
            "session_start_ms": self.session_start_ms,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "duration_ms": self.duration_ms,
            "frontend_messages": self.frontend_messages,
            "statements": self.statements,
            "backend_messages": self.backend_messages,
            "errors": self.errors,
            "errors_by_class": self.errors_by_class,
            "rows": self.rows,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "latency_avg_us": self.latency_avg_us,
            "latency_p95_us": self.latency_p95_us,
        })
    }
}

/// What the audit thread writes to.
pub enum Writer {
    File {
        path: PathBuf,
        file: Option<std::fs::File>,
        size: u64,
        max: u64,
    },
    Stdout,
    Http {
        authority: String,
        /// `authority` resolved where the configuration is loaded (runtime), never here.
        addrs: Vec<std::net::SocketAddr>,
        path: String,
        batch: Vec<u8>,
        count: usize,
        since: Option<Instant>,
    },
    /// No sink: summaries only feed drift.
    None,
}

impl Writer {
    pub fn new(
        sink: Option<AuditSink>,
        max_file_bytes: u64,
        http_addrs: Vec<std::net::SocketAddr>,
    ) -> Writer {
        match sink {
            Some(AuditSink::File(path)) => Writer::File {
                path,
                file: None,
                size: 0,
                max: max_file_bytes,
            },
            Some(AuditSink::Stdout) => Writer::Stdout,
            Some(AuditSink::Http { authority, path }) => Writer::Http {
                authority,
                addrs: http_addrs,
                path,
                batch: Vec::new(),
                count: 0,
                since: None,
            },
            None => Writer::None,
        }
    }

    /// Writes one summary; false if it was lost.
    fn write(&mut self, s: &Summary, board: &SignalBoard) -> bool {
        let Ok(line) = serde_json::to_vec(&s.to_json()) else {
            return false;
        };
        match self {
            Writer::None => true,
            Writer::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&line)
                    .and_then(|_| out.write_all(b"\n"))
                    .is_ok()
            }
            Writer::File {
                path,
                file,
                size,
                max,
            } => {
                if file.is_none() {
                    match std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&*path)
                    {
                        Ok(f) => {
                            *size = f.metadata().map(|m| m.len()).unwrap_or(0);
                            *file = Some(f);
                        }
                        Err(e) => {
                            log::warn!("audit: cannot open {}: {e}", path.display());
                            return false;
                        }
                    }
                }
                if *size > 0 && *size + line.len() as u64 + 1 > *max {
                    // Rotate: PATH → PATH.1 (an older PATH.1 goes).
                    *file = None;
                    let mut old = path.clone().into_os_string();
                    old.push(".1");
                    if let Err(e) = std::fs::rename(&*path, &old) {
                        log::warn!("audit: cannot rotate {}: {e}", path.display());
                    }
                    return self.write(s, board);
                }
                let f = file.as_mut().expect("opened above");
                let ok = f.write_all(&line).and_then(|_| f.write_all(b"\n")).is_ok();
                *size += line.len() as u64 + 1;
                ok
            }
            Writer::Http {
                batch,
                count,
                since,
                ..
            } => {
                batch.push(if *count == 0 { b'[' } else { b',' });
                batch.extend_from_slice(&line);
                *count += 1;
                since.get_or_insert_with(Instant::now);
                if *count >= HTTP_BATCH {
                    self.flush(board);
                }
                true
            }
        }
    }

    /// Sends an HTTP batch that is full or old enough (`force`: whatever there is).
    fn flush_due(&mut self, board: &SignalBoard, force: bool) {
        if let Writer::Http { since, count, .. } = self {
            if *count > 0 && (force || since.is_some_and(|t| t.elapsed() >= HTTP_BATCH_WAIT)) {
                self.flush(board);
            }
        }
        if let Writer::File { file: Some(f), .. } = self {
            let _ = f.flush();
        }
    }

    fn flush(&mut self, board: &SignalBoard) {
        let Writer::Http {
            authority,
            addrs,
            path,
            batch,
            count,
            since,
        } = self
        else {
            return;
        };
        batch.push(b']');
        let n = *count as u64;
        match post(addrs, authority, path, batch) {
            Ok(()) => {
                board.audit_written.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                log::warn!(
                    "audit: POST to http://{authority}{path} failed ({e}): {n} summaries dropped"
                );
                board.audit_http_failures.fetch_add(1, Ordering::Relaxed);
                board.audit_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
        batch.clear();
        *count = 0;
        *since = None;
    }
}

/// One POST of a JSON body; Ok on a 2xx status.
fn post(
    addrs: &[std::net::SocketAddr],
    authority: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let addr = addrs
        .first()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = TcpStream::connect_timeout(addr, HTTP_TIMEOUT)?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: heliosproxy-audit\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    // The status line is all we read: `HTTP/1.1 204 …`.
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = s.read(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let line = &buf[..got];
    let status = line
        .get(9..12)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u16>().ok());
    match status {
        Some(200..=299) if line.starts_with(b"HTTP/1.") => Ok(()),
        _ => Err(std::io::Error::other(format!(
            "answer {:?}",
            String::from_utf8_lossy(line)
        ))),
    }
}

/// The running audit thread: told to stop at shutdown.
pub struct AuditThread {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditThread {
    /// Asks the thread to write what is queued and end; waits up to `wait`.
    pub fn stop(&self, wait: Duration) {
        self.stop.store(true, Ordering::Release);
        let Some(h) = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let deadline = Instant::now() + wait;
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if h.is_finished() {
            let _ = h.join();
        } else {
            log::warn!("audit: the sink did not finish within {wait:?}; exiting without it");
        }
    }
}

/// Starts the audit thread; the shards send to the returned channel.
pub fn start(
    sink: Option<AuditSink>,
    http_addrs: Vec<std::net::SocketAddr>,
    max_file_bytes: u64,
    drift: Option<DriftConfig>,
    board: Arc<SignalBoard>,
) -> std::io::Result<(Sender<Summary>, Arc<AuditThread>)> {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let writer = Writer::new(sink, max_file_bytes, http_addrs);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let handle = std::thread::Builder::new()
        .name("helios-audit".into())
        .spawn(move || run(rx, writer, drift.map(Drift::new), board, s))?;
    Ok((
        tx,
        Arc::new(AuditThread {
            stop,
            handle: std::sync::Mutex::new(Some(handle)),
        }),
    ))
}

fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn run(
    rx: Receiver<Summary>,
    mut w: Writer,
    mut drift: Option<Drift>,
    board: Arc<SignalBoard>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut next_tick = drift.as_ref().map(|d| unix_s() + d.tick_s());
    loop {
        if stop.load(Ordering::Acquire) && rx.is_empty() {
            w.flush_due(&board, true);
            return;
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(s) => {
                if w.write(&s, &board) {
                    if !matches!(w, Writer::Http { .. } | Writer::None) {
                        board.audit_written.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    board.audit_dropped.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(d) = &mut drift {
                    if s.drift {
                        d.add(&s);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                w.flush_due(&board, true);
                return;
            }
        }
        w.flush_due(&board, false);
        if let (Some(d), Some(t)) = (&mut drift, &mut next_tick) {
            let now = unix_s();
            if now >= *t {
                *t = now + d.tick_s();
                let alerts = d.tick(now, now * 1000);
                for a in &alerts {
                    log::warn!(
                        "drift: {} for {}/{}: {}",
                        a.rule,
                        a.context,
                        a.user,
                        a.reason
                    );
                }
                if !alerts.is_empty() {
                    board.push_alerts(alerts);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_p95_is_within_ten_percent() {
        let mut l = Latencies::default();
        for us in 1..=1000u64 {
            l.record(us * 10);
        }
        let p95 = l.p95_us().unwrap() as f64;
        assert!((p95 - 9500.0).abs() / 9500.0 < 0.1, "{p95}");
        assert_eq!(l.avg_us(), Some(5005));
        assert_eq!(Latencies::default().p95_us(), None);
        for us in [0, 1, 2, 3, 5, 7, 1 << 40, u64::MAX] {
            assert!(lat_bucket(us) < LAT_BUCKETS);
        }
    }

    #[test]
    fn a_cut_starts_the_counters_over() {
        let t = Tally::new(Identity {
            context: "app".into(),
            user: "u".into(),
            upstream_user: "u".into(),
            upstream_role: "u".into(),
            client_addr: "127.0.0.1:5".into(),
            tls: false,
            started_ms: 1000,
            drift: false,
        });
        Tally::add(&t.bytes_in, 10);
        t.executed(3, None, 100);
        t.executed(0, Some("23505"), 200);
        let s = t.cut(2000, 0, false);
        assert_eq!((s.statements, s.rows, s.errors, s.bytes_in), (2, 3, 1, 10));
        assert_eq!(s.errors_by_class.get("23"), Some(&1));
        assert_eq!((s.start_ms, s.end_ms), (1000, 2000));
        let s = t.cut(3000, 0, true);
        assert_eq!((s.statements, s.bytes_in, s.start_ms), (0, 0, 2000));
        assert!(s.last);
    }
}
