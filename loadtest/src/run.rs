//! The runner: client threads, the closed and open loops, warm-up, progress, compare slices.
//!
//! One OS thread per client, each owning its connection, its RNG and its histograms. Why
//! threads and not tasks: a blocked `read(2)` per client is the shortest path from "server
//! answered" to "timestamp taken" (no executor between the wake-up and `Instant::now()`), and the
//! client counts we need for latency work (1–200) are well within what threads handle.
//!
//! **Closed loop**: each client sends its next transaction as soon as the previous one ends;
//! latency is measured from the actual send.
//!
//! **Open loop**: a single schedule of intended send times at `rate` per second (constant
//! spacing, or Poisson with `--poisson`) is shared by all clients; a free client takes the next
//! slot, sleeps until its time if it is in the future, and otherwise sends at once (the slot is
//! late: the request was queued). Latency is measured from the *intended* time, so time a request
//! spent waiting for a free connection counts — the coordinated-omission correction (Gil Tene;
//! wrk2 does the same). The uncorrected "service" latency is kept alongside for contrast.
//! Sends still due when the run ends are counted as `unsent` rather than silently dropped.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::script::Script;
use crate::stats::{self, Latency, TargetReport};
use crate::url::ConnParams;
use crate::wire::{Conn, SqlState};
use crate::Error;

/// How statements go on the wire (pgbench's `-M`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Query messages with the values spliced into the text.
    Simple,
    /// Parse/Bind/Describe/Execute/Sync with an unnamed statement, every time.
    Extended,
    /// Parse once per connection, then Bind/Describe/Execute/Sync.
    Prepared,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
            Protocol::Prepared => "prepared",
        }
    }
}

/// Closed loop (N clients back to back) or open loop (a fixed arrival rate).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LoopMode {
    Closed,
    Open {
        /// Transactions per second over all clients.
        rate: f64,
        /// Exponential inter-arrival times (as pgbench `--rate`) instead of constant spacing.
        poisson: bool,
    },
}

/// Everything that defines a run, except the targets.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub clients: usize,
    pub mode: LoopMode,
    pub protocol: Protocol,
    pub connect_per_txn: bool,
    pub warmup: Duration,
    pub duration: Duration,
    /// Print a progress line to stderr every this often (None: quiet).
    pub progress: Option<Duration>,
    pub script: Arc<Script>,
    /// Value of `:scale`.
    pub scale: i64,
    /// Seed for the clients' RNGs (client i uses seed + i); None: from the OS.
    pub seed: Option<u64>,
}

/// Counters the progress thread reads while clients run.
#[derive(Default)]
struct Live {
    done: AtomicU64,
    failed: AtomicU64,
    lat_ns: AtomicU64,
}

/// A client: its connection survives across compare slices; its histograms do not.
pub struct Client {
    conn: Option<Conn>,
    rng: SmallRng,
    vars: crate::script::Vars,
}

/// One client's measurements for one phase.
struct ClientResult {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    failed: u64,
    errors: BTreeMap<String, u64>,
}

/// Why a transaction failed.
enum TxnError {
    /// The server said no; the connection is still usable.
    Sql(SqlState),
    /// Connection lost or unusable; it has been dropped and will be re-opened.
    Client(&'static str),
}

impl TxnError {
    fn key(&self) -> String {
        match self {
            TxnError::Sql(s) => s.to_string(),
            TxnError::Client(k) => format!("client:{k}"),
        }
    }
}

/// Makes the clients for one target (not yet connected).
pub fn make_clients(cfg: &RunConfig) -> Vec<Client> {
    (0..cfg.clients)
        .map(|id| Client {
            conn: None,
            rng: match cfg.seed {
                Some(s) => SmallRng::seed_from_u64(s.wrapping_add(id as u64)),
                None => SmallRng::from_entropy(),
            },
            vars: cfg.script.new_vars(cfg.scale, id as i64),
        })
        .collect()
}

impl Client {
    fn ensure_conn(&mut self, target: &ConnParams) -> Result<&mut Conn, TxnError> {
        if self.conn.is_none() {
            match Conn::connect(target) {
                Ok(c) => self.conn = Some(c),
                Err(Error::Server { code, .. }) => return Err(TxnError::Sql(code)),
                Err(_) => return Err(TxnError::Client("connect")),
            }
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// One transaction of the script. Connection-level failures drop the connection.
    fn transaction(&mut self, cfg: &RunConfig, target: &ConnParams) -> Result<(), TxnError> {
        self.ensure_conn(target)?;
        let Client {
            conn, rng, vars, ..
        } = self;
        let c = conn.as_mut().expect("connected above");
        let protocol = cfg.protocol;
        let r = cfg.script.run(
            vars,
            rng,
            protocol == Protocol::Simple,
            |i, st, sql, params| {
                let res = match protocol {
                    Protocol::Simple => c.simple(sql),
                    Protocol::Extended => c.extended(&st.param_sql, params),
                    Protocol::Prepared => c.prepared(i, &st.param_sql, params),
                };
                match res {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(code)) => Err(TxnError::Sql(code)),
                    Err(_) => Err(TxnError::Client("io")),
                }
            },
            |_| TxnError::Client("script"),
        );
        match &r {
            Err(TxnError::Client("io")) => self.conn = None,
            // End a failed transaction block so the next transaction starts clean.
            Err(_) if c.txn_status != b'I' && !matches!(c.simple("ROLLBACK"), Ok(Ok(()))) => {
                self.conn = None;
            }
            _ => {}
        }
        if cfg.connect_per_txn {
            if let Some(c) = self.conn.take() {
                c.close();
            }
        }
        r
    }
}

/// The schedule of intended send times for the open loop, shared by the clients of a phase.
struct Schedule {
    next: Instant,
    interval: Duration,
    poisson: Option<SmallRng>,
    rate: f64,
}

impl Schedule {
    fn take(&mut self) -> Instant {
        let t = self.next;
        let step = match &mut self.poisson {
            // Inverse-CDF sampling of an exponential with mean 1/rate; 1-u avoids ln(0).
            Some(rng) => Duration::from_secs_f64(-(1.0f64 - rng.gen::<f64>()).ln() / self.rate),
            None => self.interval,
        };
        self.next += step;
        t
    }
}

/// Minimal timer slack for this thread, so that sleeping until an intended send time
/// overshoots by microseconds rather than the default 50 µs.
fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and only affects the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

fn sleep_until(t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        std::thread::sleep(t - now);
    }
}

/// Accumulates a target's phases (compare mode runs several per target).
pub struct TargetAccumulator {
    target: String,
    latency: Histogram<u64>,
    service: Histogram<u64>,
    failed: u64,
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
    unsent: u64,
    open: bool,
}

impl TargetAccumulator {
    pub fn new(target: &ConnParams, cfg: &RunConfig) -> TargetAccumulator {
        TargetAccumulator {
            target: target.redacted(),
            latency: stats::new_histogram(),
            service: stats::new_histogram(),
            failed: 0,
            errors: BTreeMap::new(),
            elapsed: Duration::ZERO,
            unsent: 0,
            open: matches!(cfg.mode, LoopMode::Open { .. }),
        }
    }

    pub fn report(&self) -> TargetReport {
        let secs = self.elapsed.as_secs_f64();
        TargetReport {
            target: self.target.clone(),
            transactions: self.latency.len(),
            failed: self.failed,
            elapsed_s: secs,
            tps: if secs > 0.0 {
                self.latency.len() as f64 / secs
            } else {
                0.0
            },
            errors: self.errors.clone(),
            unsent: self.unsent,
            latency: Latency::of(&self.latency),
            service_latency: self.open.then(|| Latency::of(&self.service)),
        }
    }

    /// The corrected latency histogram (for `--hgrm`).
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.latency
    }
}

/// Runs one phase — `warmup` unrecorded, then `duration` recorded — of `clients` against
/// `target`, adding the measurements to `acc`. Fails only if the clients cannot connect at
/// the start (a wrong URL should stop the run, not be measured as errors).
pub fn run_phase(
    cfg: &RunConfig,
    target: &ConnParams,
    clients: &mut [Client],
    warmup: Duration,
    duration: Duration,
    label: &str,
    acc: &mut TargetAccumulator,
) -> Result<(), Error> {
    let n = clients.len();
    let ready = Barrier::new(n + 1);
    let go = Barrier::new(n + 1);
    let times: Mutex<Option<(Instant, Instant, Instant)>> = Mutex::new(None);
    let setup_error: Mutex<Option<Error>> = Mutex::new(None);
    let schedule: Mutex<Option<Schedule>> = Mutex::new(None);
    let live = Live::default();
    let finished = AtomicBool::new(false);

    let (results, started, t_measure, t_end) = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for client in clients.iter_mut() {
            let (ready, go, times, setup_error, schedule, live) =
                (&ready, &go, &times, &setup_error, &schedule, &live);
            handles.push(s.spawn(move || {
                tighten_timer_slack();
                if !cfg.connect_per_txn && client.conn.is_none() {
                    match Conn::connect(target) {
                        Ok(c) => client.conn = Some(c),
                        Err(e) => {
                            setup_error
                                .lock()
                                .expect("no panics hold it")
                                .get_or_insert(e);
                        }
                    }
                }
                ready.wait();
                go.wait();
                // None: another client could not connect and the phase is abandoned.
                let (_, t_measure, t_end) = (*times.lock().expect("no panics hold it"))?;
                Some(client_loop(
                    cfg, target, client, schedule, live, t_measure, t_end,
                ))
            }));
        }
        ready.wait();
        let failed_setup = setup_error.lock().expect("no panics hold it").is_some();
        let t_start = Instant::now();
        let t_measure = t_start + warmup;
        let t_end = t_measure + duration;
        if !failed_setup {
            *times.lock().expect("no panics hold it") = Some((t_start, t_measure, t_end));
            if let LoopMode::Open { rate, poisson } = cfg.mode {
                *schedule.lock().expect("no panics hold it") = Some(Schedule {
                    next: t_start,
                    interval: Duration::from_secs_f64(1.0 / rate),
                    poisson: poisson.then(|| SmallRng::seed_from_u64(cfg.seed.unwrap_or(0))),
                    rate,
                });
            }
        }
        go.wait();
        if let Some(every) = cfg.progress.filter(|_| !failed_setup) {
            let live = &live;
            let finished = &finished;
            s.spawn(move || progress(label, live, finished, t_start, t_measure, every));
        }
        let results: Vec<Option<ClientResult>> = handles
            .into_iter()
            .map(|h| h.join().expect("client threads do not panic"))
            .collect();
        finished.store(true, Ordering::Relaxed);
        (results, Instant::now(), t_measure, t_end)
    });
    if let Some(e) = setup_error.into_inner().expect("threads done") {
        return Err(e);
    }
    // Elapsed measured time: until the last recorded transaction finished (the loops stop
    // taking new work at t_end but finish what they started).
    acc.elapsed += started
        .saturating_duration_since(t_measure)
        .max(Duration::from_micros(1));
    for r in results.into_iter().flatten() {
        acc.latency.add(&r.latency).expect("same bounds");
        acc.service.add(&r.service).expect("same bounds");
        acc.failed += r.failed;
        for (k, v) in r.errors {
            *acc.errors.entry(k).or_default() += v;
        }
    }
    if let Some(mut sch) = schedule.into_inner().expect("threads done") {
        // Slots due before the end that no client took: the backlog.
        let mut unsent = 0u64;
        while sch.next < t_end && unsent < 100_000_000 {
            sch.take();
            unsent += 1;
        }
        acc.unsent += unsent;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn client_loop(
    cfg: &RunConfig,
    target: &ConnParams,
    client: &mut Client,
    schedule: &Mutex<Option<Schedule>>,
    live: &Live,
    t_measure: Instant,
    t_end: Instant,
) -> ClientResult {
    let mut r = ClientResult {
        latency: stats::new_histogram(),
        service: stats::new_histogram(),
        failed: 0,
        errors: BTreeMap::new(),
    };
    loop {
        let intended = match cfg.mode {
            LoopMode::Closed => {
                let now = Instant::now();
                if now >= t_end {
                    break;
                }
                now
            }
            LoopMode::Open { .. } => {
                let mut guard = schedule.lock().expect("no panics hold it");
                let sch = guard.as_mut().expect("open loop has a schedule");
                if sch.next >= t_end || Instant::now() >= t_end {
                    break;
                }
                let t = sch.take();
                drop(guard);
                sleep_until(t);
                t
            }
        };
        let sent = Instant::now();
        let outcome = client.transaction(cfg, target);
        let end = Instant::now();
        let recorded = intended >= t_measure;
        match outcome {
            Ok(()) => {
                if recorded {
                    stats::record(&mut r.latency, end - intended);
                    stats::record(&mut r.service, end - sent);
                }
                live.done.fetch_add(1, Ordering::Relaxed);
                live.lat_ns
                    .fetch_add((end - intended).as_nanos() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                if recorded {
                    r.failed += 1;
                    *r.errors.entry(e.key()).or_default() += 1;
                }
                live.failed.fetch_add(1, Ordering::Relaxed);
                if matches!(e, TxnError::Client("connect")) {
                    // Do not spin on a target that refuses connections.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    r
}

fn progress(
    label: &str,
    live: &Live,
    finished: &AtomicBool,
    t_start: Instant,
    t_measure: Instant,
    every: Duration,
) {
    let mut next = t_start + every;
    let (mut done0, mut lat0, mut failed0) = (0u64, 0u64, 0u64);
    loop {
        while Instant::now() < next {
            if finished.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20).min(next - Instant::now()));
        }
        let (done, lat, failed) = (
            live.done.load(Ordering::Relaxed),
            live.lat_ns.load(Ordering::Relaxed),
            live.failed.load(Ordering::Relaxed),
        );
        let d = done - done0;
        let avg_ms = if d > 0 {
            (lat - lat0) as f64 / d as f64 / 1e6
        } else {
            0.0
        };
        let phase = if next <= t_measure { " (warm-up)" } else { "" };
        let _ = writeln!(
            std::io::stderr(),
            "progress{label}: {:.1} s, {:.1} tps, lat {:.3} ms avg, {} failed{phase}",
            (next - t_start).as_secs_f64(),
            d as f64 / every.as_secs_f64(),
            avg_ms,
            failed - failed0,
        );
        (done0, lat0, failed0) = (done, lat, failed);
        next += every;
    }
}

/// Runs the whole benchmark against one target.
pub fn run_single(cfg: &RunConfig, target: &ConnParams) -> Result<TargetAccumulator, Error> {
    let mut acc = TargetAccumulator::new(target, cfg);
    let mut clients = make_clients(cfg);
    run_phase(
        cfg,
        target,
        &mut clients,
        cfg.warmup,
        cfg.duration,
        "",
        &mut acc,
    )?;
    close_all(&mut clients);
    Ok(acc)
}

/// Runs the same workload against `a` and `b` in `slices` alternating slices each, in ABBA
/// order (A B, B A, A B, ...) so that a slow drift of the machine (cache warm-up, vacuum,
/// another process) lands on both targets alike. Each target gets `cfg.warmup` once at its
/// first slice and `cfg.duration / slices` per slice; connections persist across its slices.
pub fn run_compare(
    cfg: &RunConfig,
    a: &ConnParams,
    b: &ConnParams,
    slices: usize,
) -> Result<(TargetAccumulator, TargetAccumulator), Error> {
    let slices = slices.max(1);
    let slice = cfg.duration / slices as u32;
    let targets = [a, b];
    let mut accs = [
        TargetAccumulator::new(a, cfg),
        TargetAccumulator::new(b, cfg),
    ];
    let mut clients = [make_clients(cfg), make_clients(cfg)];
    for i in 0..slices {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for t in order {
            let warmup = if i == 0 { cfg.warmup } else { Duration::ZERO };
            let label = format!(" [{}] slice {}/{}", ["A", "B"][t], i + 1, slices);
            run_phase(
                cfg,
                targets[t],
                &mut clients[t],
                warmup,
                slice,
                &label,
                &mut accs[t],
            )?;
        }
    }
    for c in &mut clients {
        close_all(c);
    }
    let [acc_a, acc_b] = accs;
    Ok((acc_a, acc_b))
}

fn close_all(clients: &mut [Client]) {
    for c in clients {
        if let Some(conn) = c.conn.take() {
            conn.close();
        }
    }
}

/// pgbench's scale of the database: `count(*)` of `pgbench_branches`, as pgbench detects it.
pub fn detect_scale(target: &ConnParams) -> Result<Option<i64>, Error> {
    let mut c = Conn::connect(target)?;
    let r = c.query_one_int("select count(*) from pgbench_branches");
    c.close();
    r
}
