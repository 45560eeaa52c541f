//! Plugin KV: one namespace per plugin name, a full replica on every shard, one master thread.
//!
//! # Consistency
//!
//! - **Reads** are served from the shard's own replica, without a lock or a message.
//! - **A write** (from a plugin, `kv_set`/`kv_delete`) is applied to the writing shard's replica at
//!   once (read-your-writes on that shard) and queued to the master over a bounded crossbeam
//!   channel. The master applies writes in arrival order — *the* order of the store — and
//!   broadcasts each one to every shard over bounded channels; a shard applies them when the
//!   engine calls [`ShardPlugins::apply_kv_updates`](crate::ShardPlugins::apply_kv_updates).
//! - A shard ignores other shards' writes to a key while its own writes to that key are still in
//!   flight, then takes the master's value when its last one comes back. So every replica ends
//!   with the master's value (eventual consistency, last writer in master order wins), each
//!   shard sees its own writes in order, and writes to one key are applied in one order
//!   everywhere.
//! - There is no cross-shard atomic read-modify-write: two shards incrementing one counter at
//!   the same time can lose an increment. Plugins that count per shard should key by something
//!   shard-local or accept approximate totals.
//! - **Caps** (value size, keys per plugin, bytes per plugin, key length [`MAX_KEY_BYTES`]) are
//!   checked on the writing shard and again by the master; a write the master refuses is
//!   corrected on every shard with the master's value. A full outbound queue refuses the write
//!   (`kv_set` returns -1) rather than block the shard.
//! - Host writes (admin API, config seeds) go through the master too, so they are ordered with
//!   plugin writes.
//! - With `kv_persist_path`, the master saves the store atomically (write + rename) at most once
//!   a second when it changed, and at shutdown; it is loaded at start-up.

use base64::Engine as _;
use crossbeam_channel::{
    bounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError,
};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest key, bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Capacity of each shard's inbound replication channel (updates).
pub const SHARD_QUEUE_CAPACITY: usize = 65_536;
/// Capacity of the channel into the master (updates from all shards and the host).
pub const MASTER_QUEUE_CAPACITY: usize = 65_536;
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// KV caps from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Largest value, bytes.
    pub max_value_bytes: usize,
    /// Most keys per plugin.
    pub max_keys: usize,
    /// Most key + value bytes per plugin.
    pub max_total_bytes: usize,
}

/// Why a KV operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// No loaded plugin has this name.
    #[error("no plugin named {0:?} is loaded")]
    UnknownPlugin(String),
    /// Key longer than [`MAX_KEY_BYTES`].
    #[error("key is {len} bytes, the limit is {max}")]
    KeyTooLong {
        /// Key length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Value over `kv_max_value_bytes`.
    #[error("value is {len} bytes, kv_max_value_bytes is {max}")]
    ValueTooLarge {
        /// Value length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Namespace at `kv_max_keys`.
    #[error("the plugin already holds kv_max_keys = {max} keys")]
    TooManyKeys {
        /// Limit.
        max: usize,
    },
    /// Namespace would exceed `kv_max_total_bytes`.
    #[error("the plugin's keys and values would exceed kv_max_total_bytes = {max}")]
    NamespaceFull {
        /// Limit.
        max: usize,
    },
    /// The replication queue is full; retry later.
    #[error("replication backlog is full")]
    Backlog,
    /// The runtime is shutting down.
    #[error("the KV master has stopped")]
    Stopped,
}

/// One plugin's keys.
#[derive(Debug, Clone, Default)]
pub(crate) struct Namespace {
    map: HashMap<Arc<[u8]>, Arc<[u8]>>,
    bytes: usize,
}

impl Namespace {
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Arc<[u8]>> {
        self.map.get(key)
    }

    /// Would writing `key` = `value` (`None`: delete) fit the caps?
    fn check(&self, key: &[u8], value: Option<&[u8]>, lim: &KvLimits) -> Result<(), KvError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(KvError::KeyTooLong {
                len: key.len(),
                max: MAX_KEY_BYTES,
            });
        }
        let Some(value) = value else { return Ok(()) };
        if value.len() > lim.max_value_bytes {
            return Err(KvError::ValueTooLarge {
                len: value.len(),
                max: lim.max_value_bytes,
            });
        }
        let old = self.map.get(key).map(|v| key.len() + v.len());
        if old.is_none() && self.map.len() >= lim.max_keys {
            return Err(KvError::TooManyKeys { max: lim.max_keys });
        }
        if self.bytes - old.unwrap_or(0) + key.len() + value.len() > lim.max_total_bytes {
            return Err(KvError::NamespaceFull {
                max: lim.max_total_bytes,
            });
        }
        Ok(())
    }

    fn apply(&mut self, key: Arc<[u8]>, value: Option<Arc<[u8]>>) {
        let klen = key.len();
        let old = match value {
            Some(v) => {
                self.bytes += klen + v.len();
                self.map.insert(key, v)
            }
            None => self.map.remove(&key),
        };
        if let Some(old) = old {
            self.bytes -= klen + old.len();
        }
    }

    fn keys(&self) -> Vec<Vec<u8>> {
        let mut k: Vec<Vec<u8>> = self.map.keys().map(|k| k.to_vec()).collect();
        k.sort();
        k
    }
}

/// A write travelling through the master.
#[derive(Debug, Clone)]
pub(crate) struct Update {
    ns: Arc<str>,
    key: Arc<[u8]>,
    value: Option<Arc<[u8]>>,
    /// Subscriber id of the writing shard; 0 for the host.
    origin: u64,
}

enum MasterMsg {
    Update(Update, Option<Sender<Result<(), KvError>>>),
    Flush(Sender<()>),
    Stop,
}

struct MasterState {
    data: HashMap<Arc<str>, Namespace>,
    subs: Vec<(u64, Sender<Update>)>,
    limits: KvLimits,
    /// Names the host API accepts (the loaded plugins).
    known: HashSet<Arc<str>>,
    dirty: bool,
}

/// The master copy of the store, its thread, and the shards' subscriptions.
pub(crate) struct KvMaster {
    state: Arc<Mutex<MasterState>>,
    tx: Sender<MasterMsg>,
    stop: Arc<AtomicBool>,
    next_id: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl KvMaster {
    /// Starts the master thread; loads `persist` if it exists.
    pub(crate) fn start(limits: KvLimits, persist: Option<PathBuf>) -> Result<KvMaster, String> {
        let data = match &persist {
            Some(p) => load_file(p)?,
            None => HashMap::new(),
        };
        let state = Arc::new(Mutex::new(MasterState {
            data,
            subs: Vec::new(),
            limits,
            known: HashSet::new(),
            dirty: false,
        }));
        let (tx, rx) = bounded(MASTER_QUEUE_CAPACITY);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::Builder::new()
                .name("helios-plugin-kv".into())
                .spawn(move || master_loop(state, rx, stop, persist))
                .map_err(|e| format!("cannot start the KV thread: {e}"))?
        };
        Ok(KvMaster {
            state,
            tx,
            stop,
            next_id: AtomicU64::new(1),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MasterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_limits(&self, limits: KvLimits) {
        self.lock().limits = limits;
    }

    pub(crate) fn set_known(&self, names: impl IntoIterator<Item = Arc<str>>) {
        self.lock().known = names.into_iter().collect();
    }

    /// A new shard replica: a snapshot plus the channel of every later update, taken atomically.
    pub(crate) fn subscribe(&self, limits: KvLimits) -> ShardKv {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = bounded(SHARD_QUEUE_CAPACITY);
        let snapshot = {
            let mut st = self.lock();
            st.subs.push((id, tx));
            st.data.clone()
        };
        let limits = Rc::new(Cell::new(limits));
        let spaces = snapshot
            .into_iter()
            .map(|(ns, space)| {
                let r = Replica::new(ns.clone(), space, id, self.tx.clone(), limits.clone());
                (ns, Rc::new(RefCell::new(r)))
            })
            .collect();
        ShardKv {
            id,
            rx,
            to_master: self.tx.clone(),
            spaces,
            limits,
        }
    }

    pub(crate) fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let st = self.lock();
        if !st.known.contains(ns) {
            return Err(KvError::UnknownPlugin(ns.to_owned()));
        }
        Ok(st.data.get(ns).and_then(|s| s.get(key)).map(|v| v.to_vec()))
    }

    pub(crate) fn list(&self, ns: &str) -> Result<Vec<Vec<u8>>, KvError> {
        let st = self.lock();
        if !st.known.contains(ns) {
            return Err(KvError::UnknownPlugin(ns.to_owned()));
        }
        Ok(st.data.get(ns).map(Namespace::keys).unwrap_or_default())
    }

    /// A host write, ordered with plugin writes; returns once the master applied it.
    pub(crate) fn write(
        &self,
        ns: &str,
        key: &[u8],
        value: Option<&[u8]>,
        check_known: bool,
    ) -> Result<(), KvError> {
        let ns: Arc<str> = {
            let st = self.lock();
            match st.known.get(ns) {
                Some(n) => n.clone(),
                None if !check_known => Arc::from(ns),
                None => return Err(KvError::UnknownPlugin(ns.to_owned())),
            }
        };
        let (ack_tx, ack_rx) = bounded(1);
        let u = Update {
            ns,
            key: Arc::from(key),
            value: value.map(Arc::from),
            origin: 0,
        };
        self.tx
            .send_timeout(MasterMsg::Update(u, Some(ack_tx)), Duration::from_secs(5))
            .map_err(|_| KvError::Backlog)?;
        match ack_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(verdict) => verdict,
            // The master is still pushing earlier writes to a shard that is not draining.
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(KvError::Backlog),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(KvError::Stopped),
        }
    }

    /// Waits until the master has handled everything sent before, and saved if persisting.
    pub(crate) fn flush(&self) {
        let (tx, rx) = bounded(1);
        if self.tx.send(MasterMsg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }

    pub(crate) fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self
            .tx
            .send_timeout(MasterMsg::Stop, Duration::from_secs(1));
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for KvMaster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn master_loop(
    state: Arc<Mutex<MasterState>>,
    rx: Receiver<MasterMsg>,
    stop: Arc<AtomicBool>,
    persist: Option<PathBuf>,
) {
    let mut last_save = Instant::now();
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut out = Vec::new();
        let mut waiters = Vec::new();
        let mut stopping = false;
        let subs = {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            for msg in first.into_iter().chain(rx.try_iter().take(4096)) {
                match msg {
                    MasterMsg::Update(u, ack) => {
                        let limits = st.limits;
                        let space = st.data.entry(u.ns.clone()).or_default();
                        let verdict = space.check(&u.key, u.value.as_deref(), &limits);
                        match &verdict {
                            Ok(()) => {
                                space.apply(u.key.clone(), u.value.clone());
                                st.dirty = true;
                                out.push(u);
                            }
                            // The writing shard applied it already: correct every replica to
                            // the master's value.
                            Err(_) if u.origin != 0 => {
                                let value = space.get(&u.key).cloned();
                                out.push(Update { value, ..u });
                            }
                            Err(_) => {}
                        }
                        if let Some(ack) = ack {
                            let _ = ack.send(verdict);
                        }
                    }
                    MasterMsg::Flush(w) => waiters.push(w),
                    MasterMsg::Stop => stopping = true,
                }
            }
            st.subs.clone()
        };
        let mut gone = Vec::new();
        for u in &out {
            for (id, tx) in &subs {
                if gone.contains(id) {
                    continue;
                }
                // Block (the master is not a shard) but keep an eye on shutdown: a shard that
                // stops draining stalls replication, never the shard threads.
                let mut msg = u.clone();
                loop {
                    match tx.send_timeout(msg, Duration::from_millis(100)) {
                        Ok(()) => break,
                        Err(SendTimeoutError::Disconnected(_)) => {
                            gone.push(*id);
                            break;
                        }
                        Err(SendTimeoutError::Timeout(m)) => {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            msg = m;
                        }
                    }
                }
            }
        }
        if !gone.is_empty() {
            state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .subs
                .retain(|(id, _)| !gone.contains(id));
        }
        if let Some(path) = &persist {
            if stopping || !waiters.is_empty() || last_save.elapsed() >= PERSIST_INTERVAL {
                save_if_dirty(&state, path);
                last_save = Instant::now();
            }
        }
        for w in waiters {
            let _ = w.send(());
        }
        if stopping {
            break;
        }
    }
    if let Some(path) = &persist {
        save_if_dirty(&state, path);
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(serde::Serialize, serde::Deserialize)]
struct PersistFile {
    format: u32,
    /// plugin → base64(key) → base64(value)
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

fn save_if_dirty(state: &Mutex<MasterState>, path: &Path) {
    let file = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.dirty {
            return;
        }
        st.dirty = false;
        PersistFile {
            format: 1,
            namespaces: st
                .data
                .iter()
                .map(|(ns, space)| {
                    let m = space
                        .map
                        .iter()
                        .map(|(k, v)| (B64.encode(k), B64.encode(v)))
                        .collect();
                    (ns.to_string(), m)
                })
                .collect(),
        }
    };
    let tmp = path.with_extension("tmp");
    let result = serde_json::to_vec(&file)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        log::error!("plugin KV: cannot save {}: {e}", path.display());
        state.lock().unwrap_or_else(|p| p.into_inner()).dirty = true;
    }
}

fn load_file(path: &Path) -> Result<HashMap<Arc<str>, Namespace>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(format!("kv_persist_path {}: {e}", path.display())),
    };
    let file: PersistFile = serde_json::from_slice(&bytes)
        .map_err(|e| format!("kv_persist_path {}: {e}", path.display()))?;
    let mut data = HashMap::new();
    for (ns, entries) in file.namespaces {
        let mut space = Namespace::default();
        for (k, v) in entries {
            let (Ok(k), Ok(v)) = (B64.decode(k), B64.decode(v)) else {
                return Err(format!(
                    "kv_persist_path {}: bad base64 in {ns}",
                    path.display()
                ));
            };
            space.apply(Arc::from(k), Some(Arc::from(v)));
        }
        data.insert(Arc::from(ns), space);
    }
    Ok(data)
}

/// A shard's replica of every namespace and its replication channels.
pub(crate) struct ShardKv {
    id: u64,
    rx: Receiver<Update>,
    to_master: Sender<MasterMsg>,
    spaces: HashMap<Arc<str>, Rc<RefCell<Replica>>>,
    limits: Rc<Cell<KvLimits>>,
}

impl ShardKv {
    /// The replica of `ns`, created empty if the store has none yet.
    pub(crate) fn replica(&mut self, ns: &Arc<str>) -> Rc<RefCell<Replica>> {
        let (id, tx, limits) = (self.id, &self.to_master, &self.limits);
        self.spaces
            .entry(ns.clone())
            .or_insert_with(|| {
                Rc::new(RefCell::new(Replica::new(
                    ns.clone(),
                    Namespace::default(),
                    id,
                    tx.clone(),
                    limits.clone(),
                )))
            })
            .clone()
    }

    pub(crate) fn set_limits(&self, limits: KvLimits) {
        self.limits.set(limits);
    }

    /// Applies queued updates from the master; returns how many.
    pub(crate) fn drain(&mut self, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Ok(u) = self.rx.try_recv() else { break };
            n += 1;
            let ns = u.ns.clone();
            self.replica(&ns).borrow_mut().receive(u);
        }
        n
    }
}

/// One namespace on one shard.
pub(crate) struct Replica {
    ns: Arc<str>,
    space: Namespace,
    /// Own writes not yet echoed by the master, per key.
    pending: HashMap<Arc<[u8]>, u32>,
    id: u64,
    to_master: Sender<MasterMsg>,
    limits: Rc<Cell<KvLimits>>,
}

impl Replica {
    fn new(
        ns: Arc<str>,
        space: Namespace,
        id: u64,
        to_master: Sender<MasterMsg>,
        limits: Rc<Cell<KvLimits>>,
    ) -> Replica {
        Replica {
            ns,
            space,
            pending: HashMap::new(),
            id,
            to_master,
            limits,
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Arc<[u8]>> {
        self.space.get(key)
    }

    /// A plugin's write (`None`: delete).
    pub(crate) fn write(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), KvError> {
        self.space.check(key, value, &self.limits.get())?;
        let key: Arc<[u8]> = Arc::from(key);
        let value: Option<Arc<[u8]>> = value.map(Arc::from);
        let u = Update {
            ns: self.ns.clone(),
            key: key.clone(),
            value: value.clone(),
            origin: self.id,
        };
        match self.to_master.try_send(MasterMsg::Update(u, None)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(KvError::Backlog),
            Err(TrySendError::Disconnected(_)) => return Err(KvError::Stopped),
        }
        *self.pending.entry(key.clone()).or_insert(0) += 1;
        self.space.apply(key, value);
        Ok(())
    }

    fn receive(&mut self, u: Update) {
        if u.origin == self.id {
            match self.pending.get_mut(&u.key) {
                Some(n) if *n > 1 => *n -= 1, // a newer own write is still in flight
                _ => {
                    self.pending.remove(&u.key);
                    self.space.apply(u.key, u.value);
                }
            }
        } else if !self.pending.contains_key(&u.key) {
            self.space.apply(u.key, u.value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: KvLimits = KvLimits {
        max_value_bytes: 100,
        max_keys: 3,
        max_total_bytes: 120,
    };

    fn wait_until(mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(
                Instant::now() < deadline,
                "condition not reached within 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn caps_are_enforced() {
        let s = Namespace::default();
        assert_eq!(
            s.check(&[0; 1025], Some(b"v"), &LIM),
            Err(KvError::KeyTooLong {
                len: 1025,
                max: 1024
            })
        );
        assert_eq!(
            s.check(b"k", Some(&[0; 101]), &LIM),
            Err(KvError::ValueTooLarge { len: 101, max: 100 })
        );
        let mut s = Namespace::default();
        for k in [b"a", b"b", b"c"] {
            s.apply(Arc::from(&k[..]), Some(Arc::from(&b"x"[..])));
        }
        assert_eq!(
            s.check(b"d", Some(b"x"), &LIM),
            Err(KvError::TooManyKeys { max: 3 })
        );
        assert_eq!(s.check(b"a", Some(&[0; 100]), &LIM), Ok(()));
        s.apply(Arc::from(&b"a"[..]), Some(Arc::from(&[0u8; 100][..])));
        assert_eq!(s.bytes, 101 + 2 + 2);
        assert_eq!(
            s.check(b"b", Some(&[0; 20]), &LIM),
            Err(KvError::NamespaceFull { max: 120 })
        );
        s.apply(Arc::from(&b"a"[..]), None);
        assert_eq!(s.bytes, 4);
    }

    /// Two shards write one key concurrently; both converge on the master's last value.
    #[test]
    fn replicas_converge_on_master_order() {
        let m = KvMaster::start(LIM, None).unwrap();
        m.set_known([Arc::from("p")]);
        let ns: Arc<str> = Arc::from("p");
        let mut a = m.subscribe(LIM);
        let mut b = m.subscribe(LIM);
        let (ra, rb) = (a.replica(&ns), b.replica(&ns));
        for i in 0..50u8 {
            ra.borrow_mut().write(b"k", Some(&[b'a', i])).unwrap();
            rb.borrow_mut().write(b"k", Some(&[b'b', i])).unwrap();
        }
        assert_eq!(ra.borrow().get(b"k").unwrap()[..], [b'a', 49]); // read-your-writes
        m.flush();
        wait_until(|| {
            a.drain(usize::MAX);
            b.drain(usize::MAX);
            ra.borrow().pending.is_empty() && rb.borrow().pending.is_empty()
        });
        let master = m.get("p", b"k").unwrap().unwrap();
        assert_eq!(ra.borrow().get(b"k").unwrap()[..], master[..]);
        assert_eq!(rb.borrow().get(b"k").unwrap()[..], master[..]);
    }

    #[test]
    fn master_corrects_a_write_over_the_cap() {
        let m = KvMaster::start(LIM, None).unwrap();
        m.set_known([Arc::from("p")]);
        let ns: Arc<str> = Arc::from("p");
        let mut a = m.subscribe(LIM);
        let mut b = m.subscribe(LIM);
        let (ra, rb) = (a.replica(&ns), b.replica(&ns));
        // Each shard sees room for its own third key; the master takes a's "c" and refuses b's "d".
        ra.borrow_mut().write(b"a", Some(b"1")).unwrap();
        ra.borrow_mut().write(b"b", Some(b"1")).unwrap();
        ra.borrow_mut().write(b"c", Some(b"1")).unwrap();
        rb.borrow_mut().write(b"d", Some(b"1")).unwrap();
        m.flush();
        wait_until(|| {
            a.drain(usize::MAX);
            b.drain(usize::MAX);
            ra.borrow().pending.is_empty() && rb.borrow().pending.is_empty()
        });
        assert_eq!(
            m.list("p").unwrap(),
            [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert!(rb.borrow().get(b"d").is_none(), "refused write rolled back");
        assert!(ra.borrow().get(b"d").is_none());
        assert!(rb.borrow().get(b"c").is_some());
    }

    #[test]
    fn persistence_round_trips() {
        let dir = std::env::temp_dir().join(format!("helios-kv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kv.json");
        let _ = std::fs::remove_file(&path);
        {
            let m = KvMaster::start(LIM, Some(path.clone())).unwrap();
            m.set_known([Arc::from("p")]);
            m.write("p", b"\0bin", Some(b"\xffv"), true).unwrap();
        }
        let m = KvMaster::start(LIM, Some(path.clone())).unwrap();
        m.set_known([Arc::from("p")]);
        assert_eq!(m.get("p", b"\0bin").unwrap(), Some(b"\xffv".to_vec()));
        assert_eq!(m.get("q", b"x"), Err(KvError::UnknownPlugin("q".into())));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
