//! Running one shard: its ring, listeners, accept loop (with hand-over to a lighter shard),
//! maintenance, snapshot reporter and control inbox. Shard-owned *state* lives in
//! [`crate::shard`]; this module is the task code that drives it.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, TryRecvError};
use glommio::net::TcpListener;
use helios_config::{IoBackend, PoolMode};

use crate::frontend::login::Entry;
use crate::shard::{RuntimeConfig, Shard, ShardMsg};

/// Runs one shard until shutdown completes. `started` is told once the listeners are bound, or
/// why they could not be (the shard then returns at once: the process is not for this library
/// to end).
pub async fn run_shard(
    shard: Rc<Shard>,
    inbox: Receiver<ShardMsg>,
    doorbell: Arc<AtomicWaker>,
    plugins: Option<helios_plugin_host::PluginRuntime>,
    started: impl FnOnce(Result<(), String>),
) {
    let cfg = shard.config();
    if let Some(rt) = plugins {
        // Instances are created here, on the shard's own thread, and never leave it.
        *shard.plugins.borrow_mut() = Some(rt.shard(shard.id));
    }
    if cfg.config.io.backend == IoBackend::Uring {
        match start_ring(&cfg.config.io, cfg.shards) {
            Ok(ring) => {
                ring.spawn_driver();
                *shard.ring.borrow_mut() = Some(ring);
            }
            Err(e) => {
                if shard.id == 0 {
                    log::warn!("io_uring ring unavailable ({e}); using glommio's sockets instead");
                }
            }
        }
    }
    let mut listeners = Vec::new();
    for addr in &cfg.config.server.listen {
        match TcpListener::bind(addr.as_str()) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                started(Err(format!("cannot listen on {addr}: {e}")));
                return;
            }
        }
    }
    for l in listeners {
        let s = shard.clone();
        glommio::spawn_local(accept_loop(s, l)).detach();
    }
    started(Ok(()));
    glommio::spawn_local(maintenance_loop(shard.clone())).detach();
    glommio::spawn_local(crate::ops::report::reporter(
        shard.clone(),
        shard.shared.snapshots.clone(),
        shard.shared.snapshot_interval,
    ))
    .detach();
    if shard.shared.inboxes.len() > 1 {
        glommio::spawn_local(rate_reports(shard.clone())).detach();
    }

    // The control loop: the shard's inbox, woken by its doorbell.
    loop {
        let msg = std::future::poll_fn(|cx| {
            doorbell.register(cx.waker());
            match inbox.try_recv() {
                Ok(m) => Poll::Ready(Some(m)),
                Err(TryRecvError::Empty) => Poll::Pending,
                Err(TryRecvError::Disconnected) => Poll::Ready(None),
            }
        })
        .await;
        match msg {
            Some(ShardMsg::Cancel { pid, secret }) => shard.cancel_local(pid, secret),
            Some(ShardMsg::Reload(cfg)) => shard.reload(cfg),
            Some(ShardMsg::ResetHistograms) => shard.stats.reset_histograms(),
            Some(ShardMsg::Adopt(stream)) => {
                use std::os::fd::{FromRawFd, IntoRawFd};
                // SAFETY: the descriptor comes from a std stream that gives it up here.
                let stream = unsafe { glommio::net::TcpStream::from_raw_fd(stream.into_raw_fd()) };
                start_session(&shard, stream);
            }
            Some(ShardMsg::Plugins(rt)) => {
                if shard.plugins.borrow().is_none() {
                    *shard.plugins.borrow_mut() = Some(rt.shard(shard.id));
                }
            }
            Some(ShardMsg::Topology(t)) => shard.set_topology(t),
            Some(ShardMsg::Rates(r)) => shard.signal.borrow_mut().merge_rates(&r),
            Some(ShardMsg::Shutdown) | None => break,
        }
    }
    shard.shutdown.set();
    for e in shard.cancels.borrow().values() {
        if let Some(w) = e.meta.waker.borrow_mut().take() {
            w.wake();
        }
    }
    let timeout = Duration::from_millis(shard.config().config.server.shutdown_timeout_ms);
    let deadline = std::time::Instant::now() + timeout;
    while shard.sessions.get() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    if shard.sessions.get() > 0 {
        log::warn!(
            "shard {}: {} sessions still open after {} ms; closing them",
            shard.id,
            shard.sessions.get(),
            timeout.as_millis()
        );
    }
}

/// Every `RATE_REPORT_MS`, this shard's per-tenant counts of its finished seconds go to the
/// other shards (nothing is sent while it has none: detection off, or no traffic).
async fn rate_reports(shard: Rc<Shard>) {
    let every = Duration::from_millis(crate::signal::RATE_REPORT_MS);
    while !shard.shutdown.is_set() {
        glommio::timer::sleep(every).await;
        let report = {
            let mut sig = shard.signal.borrow_mut();
            let now = sig.seconds(std::time::Instant::now());
            sig.rate_report(now)
        };
        if report.counts.is_empty() {
            continue;
        }
        let report = Arc::new(report);
        for to in (0..shard.shared.inboxes.len()).filter(|&i| i != shard.id) {
            // A full inbox drops the report: that shard's baseline misses these counts.
            shard.shared.send(to, ShardMsg::Rates(report.clone()));
        }
    }
}

/// Probes the kernel and builds this shard's ring.
fn start_ring(
    io: &helios_config::IoConfig,
    shards: usize,
) -> std::io::Result<Rc<helios_uring::Ring>> {
    let features = helios_uring::probe()?;
    if !features.supports_ring() {
        return Err(std::io::Error::other(format!(
            "kernel lacks a needed feature: {features:?}"
        )));
    }
    helios_uring::Ring::new(&helios_uring::RingConfig {
        entries: io.ring_entries,
        recv_buffers: io.recv_buffers,
        recv_buffer_size: io.recv_buffer_size_bytes,
        max_pending_send_bytes: io.max_pending_send_bytes,
        wait: Duration::from_micros(io.ring_wait_us.into()),
        // Holding batches saves CPU when each shard shares its CPU with others, and delays
        // every client when one shard serves them all (measured: see RingConfig::hold_turns).
        hold_turns: if shards > 1 { 8 } else { 0 },
    })
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.shutdown.wait().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                shard.shared.clients.fetch_add(1, Ordering::Relaxed);
                let c = &shard.stats.counters;
                crate::stats::Counters::add(&c.connections_accepted, 1);
                if let Some(to) = shard.shared.lighter_than(shard.id) {
                    if hand_over(&shard, to, &stream) {
                        continue;
                    }
                }
                shard.shared.sessions[shard.id].fetch_add(1, Ordering::Relaxed);
                start_session(&shard, stream);
            }
            Some(Err(e)) => {
                log::warn!("shard {}: accept: {e}", shard.id);
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Gives an accepted client to shard `to` (it has fewer clients). False if its inbox is full:
/// the client then stays here.
fn hand_over(shard: &Shard, to: usize, stream: &glommio::net::TcpStream) -> bool {
    let Ok(std_stream) = crate::net::conn::duplicate(stream) else {
        return false;
    };
    let sessions = &shard.shared.sessions[to];
    sessions.fetch_add(1, Ordering::Relaxed);
    if shard.shared.send(to, ShardMsg::Adopt(std_stream)) {
        return true;
    }
    sessions.fetch_sub(1, Ordering::Relaxed);
    false
}

/// Serves a client on this shard (already counted in `Shared::sessions`).
fn start_session(shard: &Rc<Shard>, stream: glommio::net::TcpStream) {
    shard.sessions.set(shard.sessions.get() + 1);
    let s = shard.clone();
    glommio::spawn_local(async move {
        match crate::frontend::login::admit(&s, stream).await {
            Some(Entry::Session(a)) => crate::frontend::serve(s.clone(), a).await,
            Some(Entry::Console(client, reader)) => {
                crate::ops::console::serve(s.clone(), client, reader).await
            }
            None => {}
        }
        s.sessions.set(s.sessions.get() - 1);
        s.shared.sessions[s.id].fetch_sub(1, Ordering::Relaxed);
        s.shared.clients.fetch_sub(1, Ordering::Relaxed);
    })
    .detach();
}

async fn maintenance_loop(shard: Rc<Shard>) {
    let mut warmed = false;
    loop {
        if !warmed {
            // Create the pools of databases with min_idle so they are warm before the first client.
            let cfg = shard.config();
            for (alias, db) in &cfg.config.databases {
                if db.min_idle() > 0 && (db.user.is_some() || db.leased()) {
                    shard.pool(alias, "");
                }
            }
            warmed = true;
        }
        for pool in shard.pools() {
            pool.maintain().await;
        }
        if let Some(p) = shard.plugins.borrow_mut().as_mut() {
            // Hook calls drain KV replication too; this covers shards without traffic.
            p.apply_kv_updates();
        }
        if shard.shutdown.is_set() {
            return;
        }
        glommio::timer::sleep(Duration::from_secs(1)).await;
    }
}

/// Logs each shard's share of every pool once at start-up.
pub fn log_budget(cfg: &RuntimeConfig) {
    for (alias, db) in &cfg.config.databases {
        let shares: Vec<usize> = (0..cfg.shards)
            .map(|s| cfg.share(db.pool_size, s))
            .collect();
        log::info!(
            "database {alias}: {:?} pooling, pool_size {} over {} shards -> {:?} per shard, min_idle {}",
            db.pool_mode,
            db.pool_size,
            cfg.shards,
            shares,
            db.min_idle()
        );
        if db.pool_mode == PoolMode::Transaction && db.pool_size < cfg.shards {
            log::warn!("database {alias}: pool_size {} is below the shard count {}: each shard still gets one connection", db.pool_size, cfg.shards);
        }
    }
}
