//! What a shard tells the admin thread every `admin.snapshot_interval_ms`: this interval's
//! histograms (then reset), counters, pools, clients, servers and node health, as one
//! `ShardSnapshot` over a bounded crossbeam channel. Built off the hot path, once per interval.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use helios_admin::{
    ClientInfo, Counters, Metric, NodeStatus, PluginShardStats, PoolStats, ServerInfo,
    ShardSnapshot,
};
use helios_config::PoolMode;

use crate::shard::Shard;

pub fn build(shard: &Shard) -> ShardSnapshot {
    let mut snap = ShardSnapshot::new(shard.id);
    snap.anomalies = shard.signal.borrow_mut().take_events();
    for (db, [q, c, s]) in shard.stats.take_histograms() {
        snap.histograms.push((Metric::Query, db.clone(), q));
        snap.histograms.push((Metric::Checkout, db.clone(), c));
        snap.histograms.push((Metric::Server, db, s));
    }
    let k = &shard.stats.counters;
    snap.counters = Counters {
        connections_accepted: k.connections_accepted.get(),
        connections_refused: k.connections_refused.get(),
        queries: k.queries.get(),
        transactions: k.transactions.get(),
        bytes_in: k.bytes_in.get(),
        bytes_out: k.bytes_out.get(),
        errors_by_class: k
            .errors_by_class
            .borrow()
            .iter()
            .map(|(c, n)| (String::from_utf8_lossy(c).into_owned(), *n))
            .collect(),
        clients_active: shard.sessions.get() as u64,
        ..Counters::default()
    };
    if let Some(ring) = shard.ring.borrow().as_ref() {
        let r = ring.stats();
        snap.counters.ring_enters = r.enters;
        snap.counters.ring_waits = r.waits;
        snap.counters.ring_parks = r.parks;
    }
    if let Some(p) = shard.plugins.borrow_mut().as_mut() {
        for (st, time_us) in p.take_stats() {
            snap.plugins.push(PluginShardStats {
                name: st.name,
                invocations: st.calls,
                errors: st.failures,
                timeouts: st.timeouts,
                last_error: st.last_error,
                time_us,
            });
        }
    }
    let mut nodes: BTreeMap<String, NodeStatus> = BTreeMap::new();
    let cfg = shard.config();
    for n in &cfg.config.nodes {
        nodes.insert(
            n.name.clone(),
            NodeStatus {
                name: n.name.clone(),
                host: n.host.clone(),
                port: n.port,
                healthy: true,
                last_error: None,
                role: "primary",
                last_checked_at_ms: None,
            },
        );
    }
    for pool in shard.pools() {
        let st = pool.settings.borrow();
        let cnt = pool.counters.get();
        let idle = pool.idle_count() as u32;
        snap.pools.push(PoolStats {
            database: st.alias.clone(),
            user: st.target.user.clone(),
            mode: match st.mode {
                PoolMode::Session => "session",
                PoolMode::Transaction => "transaction",
            },
            pool_size: st.max_size as u32,
            active: (pool.total() as u32).saturating_sub(idle),
            idle,
            waiting: pool.waiting() as u32,
            max_wait_us: pool.max_wait().as_micros() as u64,
            total_checkouts: cnt.checkouts,
            checkout_timeouts: cnt.checkout_timeouts,
            server_connects: cnt.connects,
            connect_failures: cnt.connect_failures,
            ..lease_stats(&st.target)
        });
        for (id, pid, since) in pool.idle_servers() {
            snap.servers.push(ServerInfo {
                id,
                node: st.target.node.clone(),
                database: st.alias.clone(),
                user: st.target.user.clone(),
                state: "idle",
                backend_pid: pid.0,
                connected_at: since,
            });
        }
        if let (Some((ok, err, at)), Some(node)) = (
            pool.last_connect.borrow().clone(),
            nodes.get_mut(&st.target.node),
        ) {
            // The most recent attempt of any pool on this shard decides.
            if node.last_checked_at_ms.is_none_or(|t| at >= t) {
                node.healthy = ok;
                node.last_error = err;
                node.last_checked_at_ms = Some(at);
            }
        }
    }
    for (pid, e) in shard.cancels.borrow().iter() {
        let m = &e.meta;
        snap.clients.push(ClientInfo {
            id: pid.0,
            user: m.user.clone(),
            database: m.database.clone(),
            application_name: m.application_name.clone(),
            addr: m.addr.clone(),
            state: m.state.get(),
            connected_at: m.connected_at,
            shard: shard.id,
        });
        if let Some((id, backend_pid, since)) = m.server.get() {
            let pool_user = shard
                .pools()
                .into_iter()
                .find(|p| p.settings.borrow().alias == m.database)
                .map(|p| p.settings.borrow().target.user.clone())
                .unwrap_or_else(|| m.user.clone());
            snap.servers.push(ServerInfo {
                id,
                node: cfg
                    .config
                    .databases
                    .get(&m.database)
                    .map(|d| cfg.config.node_for(d).name.clone())
                    .unwrap_or_default(),
                database: m.database.clone(),
                user: pool_user,
                state: "active",
                backend_pid: backend_pid.0,
                connected_at: since,
            });
        }
    }
    snap.nodes = nodes.into_values().collect();
    snap
}

/// Feeds the console's view and, if it runs, the admin thread, every interval until shutdown.
pub async fn reporter(
    shard: Rc<Shard>,
    tx: Option<crossbeam_channel::Sender<ShardSnapshot>>,
    every: Duration,
) {
    loop {
        glommio::timer::sleep(every).await;
        if shard.shutdown.is_set() {
            return;
        }
        let snap = build(&shard);
        let Some(tx) = &tx else {
            super::console::ingest(&shard, snap);
            continue;
        };
        super::console::ingest(&shard, snap.clone());
        if tx.try_send(snap).is_err() {
            // The admin thread is behind or gone: this interval's histograms are dropped,
            // never queued without bound.
            log::debug!("shard {}: admin snapshot dropped", shard.id);
        }
    }
}

/// The pool's credential lease, if its context has one (no secret).
fn lease_stats(target: &crate::backend::server::ServerTarget) -> PoolStats {
    match &target.lease {
        Some(l) => {
            let st = l.0.status();
            PoolStats {
                lease_generation: st.generation,
                lease_expires_at: st.expires_at,
                lease_error: st.error,
                ..PoolStats::default()
            }
        }
        None => PoolStats::default(),
    }
}
