//! The health checker: one thread off the shards, with its own small glommio executor, that
//! probes every configured node over its own connection (the engine's `ServerConn` login, on
//! glommio's sockets) and publishes what it finds through the [`TopologyHub`].
//!
//! Each round, every node at once: run `[health] query` (default `SELECT pg_is_in_recovery()`),
//! then `SELECT pg_is_in_recovery(), <replay or current WAL position>`; the whole probe is bounded
//! by `health.timeout_ms`. `health.failures` failed probes in a row mark a node unhealthy,
//! `health.successes` good ones healthy again (a node never probed before is healthy at its
//! first good probe). A replica's lag is the primary's current WAL position minus the replica's
//! replay position, both read in the same round.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use helios_config::{Config, NodeRole};

use super::server::{ServerConn, ServerId, ServerTarget};
use super::topology::{HealthInput, Role, Topology, TopologyHub};
use crate::net::codec::put_query;

/// What one probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub in_recovery: bool,
    /// Replay position (replica) or current WAL position (primary).
    pub lsn: Option<u64>,
    /// Replica: milliseconds since its last replayed transaction while WAL it received waits
    /// to be replayed (0 when caught up with what it received).
    pub lag_ms: Option<u64>,
}

/// The checker's memory of one node between rounds.
#[derive(Default)]
struct Track {
    conn: Option<ServerConn>,
    fails: u32,
    oks: u32,
    healthy: Option<bool>,
    role: Option<Role>,
    /// The WAL position of its last good probe.
    lsn: Option<u64>,
    /// Its last probe answered.
    answered: bool,
}

/// What `auto_promote` remembers between rounds.
#[derive(Default)]
struct Failover {
    /// Some node answered as a primary since start-up (or since the last promotion).
    seen_primary: bool,
    /// A promotion was done for the current outage.
    promoted: bool,
}

/// Starts the checker thread. It runs until [`TopologyHub::stop`].
pub fn spawn(hub: Arc<TopologyHub>, io_memory: usize) -> std::io::Result<()> {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("helios-health")
        .io_memory(io_memory)
        .spawn(move || async move { run(hub).await })
        .map(|_| ())
        .map_err(|e| std::io::Error::other(e.to_string()))
}

async fn run(hub: Arc<TopologyHub>) {
    let mut tracks: HashMap<String, Track> = HashMap::new();
    let mut seq = 0u64;
    let mut failover = Failover::default();
    while !hub.stopping.load(std::sync::atomic::Ordering::Relaxed) {
        let Some(input) = hub.input() else { return };
        let h = &input.config.health;
        let interval = Duration::from_millis(h.interval_ms);
        let round = round(&input, &mut tracks, &mut seq).await;
        hub.update(round);
        if input.config.failover.auto_promote {
            promote_if_needed(&mut tracks, &mut failover).await;
        }
        // Sleep in short steps so a stop is noticed.
        let mut left = interval;
        while !left.is_zero() && !hub.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            let step = left.min(Duration::from_millis(100));
            glommio::timer::sleep(step).await;
            left -= step;
        }
    }
}

/// Probes every node once and returns the topology it saw.
async fn round(
    input: &Arc<HealthInput>,
    tracks: &mut HashMap<String, Track>,
    seq: &mut u64,
) -> Topology {
    let cfg = &input.config;
    tracks.retain(|name, _| cfg.nodes.iter().any(|n| &n.name == name));
    let timeout = Duration::from_millis(cfg.health.timeout_ms);
    let query = Rc::new(cfg.health.query.clone());
    let mut tasks = Vec::new();
    for n in &cfg.nodes {
        let target = target(cfg, input, &n.name);
        let mut track = tracks.remove(&n.name).unwrap_or_default();
        let conn = track.conn.take();
        *seq += 1;
        let id = ServerId((u64::MAX << 48) | *seq);
        let query = query.clone();
        let task = glommio::spawn_local(async move {
            let mut conn = conn;
            let r = match glommio::timer::timeout(timeout, async {
                Ok(probe(&target, id, &mut conn, &query).await)
            })
            .await
            {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            if r.is_err() {
                // A connection that failed or timed out mid-exchange is not reused.
                conn = None;
            }
            (conn, r)
        });
        tasks.push((n.name.clone(), track, task));
    }
    let mut results = Vec::new();
    for (name, mut track, task) in tasks {
        let (conn, r) = task.await;
        track.conn = conn;
        results.push((name, track, r));
    }
    let mut topo = Topology::from_config(cfg);
    let primary_lsn = results.iter().find_map(|(_, _, r)| match r {
        Ok(p) if !p.in_recovery => p.lsn,
        _ => None,
    });
    let (need_fail, need_ok) = (cfg.health.failures, cfg.health.successes);
    for (name, mut track, r) in results {
        let Some(node) = topo.nodes.iter_mut().find(|x| x.name == name) else {
            continue;
        };
        match &r {
            Ok(p) => {
                track.fails = 0;
                track.oks = track.oks.saturating_add(1);
                if track.healthy.is_none() || track.oks >= need_ok {
                    if track.healthy == Some(false) {
                        log::info!("health: node {name} is healthy again");
                    }
                    track.healthy = Some(true);
                }
                // The answer decides; the hub keeps one primary per database and fences any
                // other node that claims to be one.
                let role = if p.in_recovery {
                    Role::Replica
                } else {
                    Role::Primary
                };
                let expected = match node.configured {
                    NodeRole::Primary => Some(Role::Primary),
                    NodeRole::Replica => Some(Role::Replica),
                    NodeRole::Auto => None,
                };
                if expected.is_some_and(|e| e != role) && track.role != Some(role) {
                    log::warn!(
                        "health: node {name} is configured {} but answers as a {}",
                        expected.map_or("auto", Role::as_str),
                        role.as_str()
                    );
                }
                track.lsn = p.lsn;
                track.answered = true;
                track.role = Some(role);
                node.role = role;
                node.lag_bytes = match (role, primary_lsn, p.lsn) {
                    (Role::Replica, Some(primary), Some(replay)) => {
                        Some(primary.saturating_sub(replay))
                    }
                    _ => None,
                };
                (node.lag_ms, node.replay_lsn) = match role {
                    Role::Replica => (p.lag_ms, p.lsn),
                    _ => (None, None),
                };
                node.last_error = None;
            }
            Err(e) => {
                track.answered = false;
                track.oks = 0;
                track.fails = track.fails.saturating_add(1);
                if track.fails >= need_fail && track.healthy != Some(false) {
                    log::warn!(
                        "health: node {name} is unhealthy after {} failed probes: {e}",
                        track.fails
                    );
                    track.healthy = Some(false);
                }
                if let Some(role) = track.role {
                    node.role = role;
                }
                node.last_error = Some(e.clone());
            }
        }
        node.healthy = track.healthy.unwrap_or(node.healthy) && node.role != Role::Unknown;
        node.checked_at_ms = crate::backend::pool::unix_ms();
        tracks.insert(name, track);
    }
    topo
}

/// `failover.auto_promote`: once no node answers as a primary, the last known primary has
/// failed its checks (it answers nothing), and no promotion was done for this outage, the
/// healthy replica with the most WAL replayed is promoted with `pg_promote()`.
async fn promote_if_needed(tracks: &mut HashMap<String, Track>, f: &mut Failover) {
    let alive = tracks
        .values()
        .any(|t| t.answered && t.role == Some(Role::Primary));
    if alive {
        f.seen_primary = true;
        f.promoted = false;
        return;
    }
    let old_down = tracks
        .values()
        .any(|t| t.role == Some(Role::Primary) && t.healthy == Some(false) && !t.answered);
    if !f.seen_primary || f.promoted || !old_down {
        return;
    }
    let Some((name, track)) = tracks
        .iter_mut()
        .filter(|(_, t)| {
            t.answered
                && t.healthy == Some(true)
                && t.role == Some(Role::Replica)
                && t.conn.is_some()
        })
        .max_by_key(|(_, t)| t.lsn)
    else {
        log::error!("failover: the primary is down and no healthy replica can be promoted");
        return;
    };
    f.promoted = true;
    log::warn!("failover: the primary is down; promoting {name} (pg_promote)");
    let conn = track.conn.as_mut().expect("filtered on a connection");
    let r = glommio::timer::timeout(Duration::from_secs(60), async {
        Ok(simple_query(conn, "SELECT pg_promote(true, 55)").await)
    })
    .await;
    match r {
        Ok(Ok(Some(v))) if v == "t" => log::warn!("failover: {name} promoted"),
        Ok(Ok(v)) => log::error!("failover: pg_promote() on {name} answered {v:?}"),
        Ok(Err(e)) => log::error!("failover: promoting {name}: {e}"),
        Err(_) => log::error!("failover: promoting {name}: no answer within 60 s"),
    }
}

/// Where and as whom the checker logs in: `[health] user` / `password`, else the first
/// database that has a `user`.
fn target(cfg: &Config, input: &HealthInput, node: &str) -> ServerTarget {
    let n = cfg.nodes.iter().find(|x| x.name == node);
    let (user, password) = match &cfg.health.user {
        Some(u) => (u.clone(), cfg.health.password.clone()),
        None => cfg
            .databases
            .values()
            .find_map(|d| d.user.clone().map(|u| (u, d.password.clone())))
            .unwrap_or_else(|| ("postgres".into(), cfg.health.password.clone())),
    };
    ServerTarget {
        node: node.to_string(),
        host: n.map(|n| n.host.clone()).unwrap_or_default(),
        port: n.map_or(5432, |n| n.port),
        addrs: input.addrs.get(node).cloned().unwrap_or_default(),
        dbname: cfg.health.dbname.clone(),
        user,
        password,
        connect_timeout: Duration::from_millis(cfg.health.timeout_ms),
        tls: input.node_tls.get(node).cloned(),
        startup: Vec::new(),
        lease: None,
    }
}

/// One probe over `conn` (opened if there is none).
async fn probe(
    target: &ServerTarget,
    id: ServerId,
    conn: &mut Option<ServerConn>,
    query: &str,
) -> Result<Probe, String> {
    if conn.is_none() {
        let c = ServerConn::connect(target, id, 1 << 20, 1, None)
            .await
            .map_err(|e| e.message)?;
        *conn = Some(c);
    }
    let c = conn.as_mut().expect("connected above");
    let first = simple_query(c, query).await?;
    let row = simple_query(c, POSITION_QUERY).await?.unwrap_or_default();
    let mut parts = row.split(' ');
    let (rec, lsn, lag_ms) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let in_recovery = match first.as_deref() {
        Some("t") => true,
        Some("f") => false,
        _ => rec == "true",
    };
    Ok(Probe {
        in_recovery,
        lsn: parse_lsn(lsn),
        lag_ms: lag_ms.parse().ok(),
    })
}

/// Role, WAL position (replay on a replica, current on a primary) and, on a replica, the time
/// lag: how old its last replayed transaction is while received WAL waits to be replayed (a
/// replica with nothing to replay is not behind, however quiet the primary); `-` when unknown.
const POSITION_QUERY: &str = "SELECT pg_is_in_recovery()::text || ' ' || (CASE WHEN \
     pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text \
     || ' ' || CASE WHEN NOT pg_is_in_recovery() THEN '0' \
     WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN '0' \
     ELSE coalesce(greatest(0, (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) \
     * 1000)::bigint)::text, '-') END";

/// `16/B374D848` → its byte position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Runs `sql` as a simple query; the first value of the first row (text), if any. Also the
/// session's own queries on a server connection between clients (read-your-writes).
pub async fn simple_query(c: &mut ServerConn, sql: &str) -> Result<Option<String>, String> {
    put_query(c.conn.queue(), sql);
    c.conn.flush().await.map_err(|e| e.to_string())?;
    let mut first: Option<Option<String>> = None;
    let mut error = None;
    loop {
        let frame = match c.reader.next_frame().map_err(|e| format!("{e:?}"))? {
            Some(f) => f,
            None => {
                let n = c
                    .conn
                    .read_into(&mut c.reader)
                    .await
                    .map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("server closed the connection".into());
                }
                continue;
            }
        };
        match frame.tag {
            b'D' if first.is_none() => first = Some(first_value(frame.body())),
            b'E' => {
                let f = crate::net::codec::parse_error_fields(frame.body());
                error = Some(format!(
                    "{} ({})",
                    String::from_utf8_lossy(f.message),
                    String::from_utf8_lossy(f.code)
                ));
            }
            b'Z' => {
                return match error {
                    Some(e) => Err(e),
                    None => Ok(first.flatten()),
                }
            }
            _ => {}
        }
    }
}

/// The first column of a DataRow body (None: NULL or malformed).
fn first_value(body: &[u8]) -> Option<String> {
    let n = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    if n < 1 {
        return None;
    }
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    if len < 0 {
        return None;
    }
    let v = body.get(6..6 + len as usize)?;
    Some(String::from_utf8_lossy(v).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_and_data_rows_parse() {
        assert_eq!(parse_lsn("0/3000148"), Some(0x3000148));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_lsn("junk"), None);
        let mut row = vec![0, 1, 0, 0, 0, 1, b't'];
        assert_eq!(first_value(&row).as_deref(), Some("t"));
        row[2..6].copy_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(first_value(&row), None);
        assert_eq!(first_value(&[0, 1, 0, 0, 0, 9, b'x']), None);
    }
}
