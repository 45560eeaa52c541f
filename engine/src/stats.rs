//! A shard's own statistics: latency histograms per database and counters, recorded without
//! locks or allocation (the histograms are sized once, per database, when its first client
//! arrives) and sent to the admin thread as a snapshot every `admin.snapshot_interval_ms`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;

use helios_admin::new_histogram;

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// The three latency histograms of one database on one shard (this interval only).
pub struct DbStats {
    /// Client-perceived: first byte of a request to the ReadyForQuery sent back.
    pub query: RefCell<Histogram<u64>>,
    /// Waiting for a server connection from the pool.
    pub checkout: RefCell<Histogram<u64>>,
    /// Request flushed to the server to its ReadyForQuery received.
    pub server: RefCell<Histogram<u64>>,
}

impl DbStats {
    fn new() -> DbStats {
        DbStats {
            query: RefCell::new(new_histogram()),
            checkout: RefCell::new(new_histogram()),
            server: RefCell::new(new_histogram()),
        }
    }

    pub fn record_query(&self, d: Duration) {
        self.query.borrow_mut().saturating_record(micros(d));
    }

    pub fn record_checkout(&self, d: Duration) {
        self.checkout.borrow_mut().saturating_record(micros(d));
    }

    pub fn record_server(&self, d: Duration) {
        self.server.borrow_mut().saturating_record(micros(d));
    }
}

/// Monotonic counters (and one gauge) of a shard.
#[derive(Default)]
pub struct Counters {
    pub connections_accepted: Cell<u64>,
    pub connections_refused: Cell<u64>,
    pub clients_active: Cell<u64>,
    pub queries: Cell<u64>,
    pub transactions: Cell<u64>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    pub errors_by_class: RefCell<BTreeMap<[u8; 2], u64>>,
}

impl Counters {
    pub fn add(c: &Cell<u64>, n: u64) {
        c.set(c.get().wrapping_add(n));
    }

    /// Counts an ErrorResponse by its SQLSTATE class (the first two characters).
    pub fn error(&self, code: &[u8]) {
        if code.len() >= 2 {
            *self
                .errors_by_class
                .borrow_mut()
                .entry([code[0], code[1]])
                .or_default() += 1;
        }
    }
}

#[derive(Default)]
pub struct ShardStats {
    dbs: RefCell<HashMap<String, Rc<DbStats>>>,
    pub counters: Counters,
}

impl ShardStats {
    /// The histograms of `db`, created on first use (once per database per shard).
    pub fn db(&self, db: &str) -> Rc<DbStats> {
        if let Some(s) = self.dbs.borrow().get(db) {
            return s.clone();
        }
        let s = Rc::new(DbStats::new());
        self.dbs.borrow_mut().insert(db.to_string(), s.clone());
        s
    }

    /// This interval's histograms, each database's reset for the next interval.
    pub fn take_histograms(&self) -> Vec<(String, [Histogram<u64>; 3])> {
        let dbs = self.dbs.borrow();
        let mut out = Vec::with_capacity(dbs.len());
        for (name, s) in dbs.iter() {
            let take = |h: &RefCell<Histogram<u64>>| {
                let mut h = h.borrow_mut();
                let copy = h.clone();
                h.reset();
                copy
            };
            out.push((
                name.clone(),
                [take(&s.query), take(&s.checkout), take(&s.server)],
            ));
        }
        out
    }

    pub fn reset_histograms(&self) {
        for s in self.dbs.borrow().values() {
            s.query.borrow_mut().reset();
            s.checkout.borrow_mut().reset();
            s.server.borrow_mut().reset();
        }
    }
}
