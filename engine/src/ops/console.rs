//! The admin console: a virtual database (`admin.console_database`, default `heliosproxy`)
//! served by the shards themselves to `auth.admin_users`, with PgBouncer's commands and column
//! names so habits and scripts carry over: `SHOW POOLS|STATS|CLIENTS|SERVERS|DATABASES|CONFIG|
//! LATENCY`, `RELOAD`, `PAUSE [db]`, `RESUME [db]`, `SHUTDOWN`.
//!
//! Figures come from the merged snapshots every shard sends each `admin.snapshot_interval_ms`,
//! so they are at most one interval old. Only the simple query protocol is spoken.

use std::rc::Rc;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use helios_admin::{LatencySummary, Metric, Window};

use crate::error::SqlState;
use crate::net::codec::{
    put_backend_key, put_command_complete, put_cstr, put_error, put_msg, put_parameter_status,
    put_ready, FrameReader,
};
use crate::net::conn::Conn;
use crate::shard::Shard;

/// Serves one console session until the client leaves.
pub async fn serve(shard: Rc<Shard>, mut client: Conn, mut reader: FrameReader) {
    for (k, v) in [
        ("server_version", "15.0 (heliosproxy)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        put_parameter_status(client.queue(), k, v);
    }
    put_backend_key(client.queue(), 0, 0);
    put_ready(client.queue(), b'I');
    loop {
        if client.flush().await.is_err() {
            return;
        }
        let frame = loop {
            match reader.next_frame() {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => {
                    put_error(
                        client.queue(),
                        "FATAL",
                        SqlState::PROTOCOL_VIOLATION,
                        &format!("{:?}", e),
                    );
                    client.close().await;
                    return;
                }
            }
            match client.read_into(&mut reader).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        };
        match frame.tag {
            b'X' => return,
            b'Q' => {
                let body = frame.body();
                let sql =
                    std::str::from_utf8(body.strip_suffix(b"\0").unwrap_or(body)).unwrap_or("");
                let out = client.queue();
                if let Err(msg) = command(&shard, sql, out) {
                    put_error(out, "ERROR", SqlState("42601"), &msg);
                }
                put_ready(out, b'I');
            }
            b'S' => put_ready(client.queue(), b'I'),
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => {
                // Discarded until Sync, as after any error in an extended batch.
                put_error(
                    client.queue(),
                    "ERROR",
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "the heliosproxy console speaks only the simple query protocol",
                );
                loop {
                    match reader.next_frame() {
                        Ok(Some(f)) if f.tag == b'S' => break,
                        Ok(Some(_)) => continue,
                        Ok(None) => match client.read_into(&mut reader).await {
                            Ok(n) if n > 0 => {}
                            _ => return,
                        },
                        Err(_) => return,
                    }
                }
                put_ready(client.queue(), b'I');
            }
            t => {
                put_error(
                    client.queue(),
                    "FATAL",
                    SqlState::PROTOCOL_VIOLATION,
                    &format!("invalid frontend message type {t}"),
                );
                client.close().await;
                return;
            }
        }
    }
}

/// A result set: column names, then rows of text values (`None` = NULL).
struct Rows {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Option<String>>>,
}

impl Rows {
    fn new(columns: &[&'static str]) -> Rows {
        Rows {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    fn push(&mut self, row: Vec<Option<String>>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    fn write(&self, out: &mut BytesMut, tag: &str) {
        put_msg(out, b'T', |b| {
            b.put_i16(self.columns.len() as i16);
            for c in &self.columns {
                put_cstr(b, c.as_bytes());
                b.put_i32(0); // table oid
                b.put_i16(0); // column number
                b.put_i32(25); // text
                b.put_i16(-1);
                b.put_i32(-1);
                b.put_i16(0); // text format
            }
        });
        for r in &self.rows {
            put_msg(out, b'D', |b| {
                b.put_i16(r.len() as i16);
                for v in r {
                    match v {
                        Some(s) => {
                            b.put_i32(s.len() as i32);
                            b.put_slice(s.as_bytes());
                        }
                        None => b.put_i32(-1),
                    }
                }
            });
        }
        put_command_complete(out, &format!("{tag} {}", self.rows.len()));
    }
}

fn s<T: ToString>(v: T) -> Option<String> {
    Some(v.to_string())
}

fn command(shard: &Shard, sql: &str, out: &mut BytesMut) -> Result<(), String> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let arg = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .nth(1)
        .map(|d| d.trim_matches('"').to_string());
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["SHOW", what] => {
            let st = shard.shared.console_state.lock().unwrap_or_else(|e| e.into_inner());
            let rows = match *what {
                "POOLS" => pools(&st, shard),
                "STATS" => stats(&st),
                "CLIENTS" => clients(&st),
                "SERVERS" => servers(&st),
                "DATABASES" => databases(shard),
                "CONFIG" => config(shard),
                "LATENCY" => latency(&st),
                "NODES" => nodes(shard),
                "LEASES" => leases(),
                w => return Err(format!("unknown SHOW item {w:?}: try POOLS, STATS, CLIENTS, SERVERS, DATABASES, CONFIG, LATENCY, NODES or LEASES")),
            };
            rows.write(out, "SHOW");
        }
        ["RELOAD"] => {
            // The signal thread owns reloading, as for SIGHUP.
            unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
            put_command_complete(out, "RELOAD");
        }
        ["SHUTDOWN"] => {
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
            put_command_complete(out, "SHUTDOWN");
        }
        ["PAUSE"] | ["PAUSE", _] | ["RESUME"] | ["RESUME", _] => {
            let pause = words[0] == "PAUSE";
            let db = if words.len() == 2 { arg } else { None };
            if let Some(d) = &db {
                if !shard.config().config.databases.contains_key(d) {
                    return Err(format!("no such database: {d}"));
                }
            }
            shard.shared.pauses.set(db.as_deref(), pause);
            put_command_complete(out, if pause { "PAUSE" } else { "RESUME" });
        }
        // Chaos, as the admin API's /api/chaos: every shard routes without the node at once.
        ["DISABLE", "NODE", _] | ["ENABLE", "NODE", _] => {
            let name = sql
                .split_whitespace()
                .nth(2)
                .map(|n| n.trim_end_matches(';').trim_matches('"'))
                .unwrap_or_default();
            let hub = &shard.shared.topology;
            let r = if words[0] == "DISABLE" {
                hub.force_unhealthy(name)
            } else {
                hub.restore(name)
            };
            r.map_err(|e| e.to_string())?;
            put_command_complete(out, if words[0] == "DISABLE" { "DISABLE" } else { "ENABLE" });
        }
        ["RESET", "NODES"] => {
            shard.shared.topology.reset();
            put_command_complete(out, "RESET");
        }
        [] => put_msg(out, b'I', |_| {}),
        _ => {
            return Err(format!(
                "invalid command {:?}: the console knows SHOW POOLS|STATS|CLIENTS|SERVERS|DATABASES|CONFIG|LATENCY|NODES|LEASES, RELOAD, PAUSE [db], RESUME [db], DISABLE NODE name, ENABLE NODE name, RESET NODES, SHUTDOWN",
                sql.trim()
            ))
        }
    }
    Ok(())
}

fn pools(st: &helios_admin::AdminState, shard: &Shard) -> Rows {
    let cfg = shard.config();
    let mut r = Rows::new(&[
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "maxwait",
        "maxwait_us",
        "pool_mode",
        "pool_size",
    ]);
    for p in st.pools_merged() {
        let clients: Vec<_> = st.clients().filter(|c| c.database == p.database).collect();
        let waiting = clients.iter().filter(|c| c.state == "waiting").count();
        r.push(vec![
            s(&p.database),
            s(&p.user),
            s(clients.len() - waiting),
            s(waiting),
            s(p.active),
            s(p.idle),
            s(p.max_wait_us / 1_000_000),
            s(p.max_wait_us % 1_000_000),
            s(p.mode),
            // The configured total: a shard that has not served this database yet has no pool
            // to report, but its share exists all the same.
            s(cfg
                .config
                .databases
                .get(&p.database)
                .map(|d| d.pool_size as u32)
                .unwrap_or(p.pool_size)),
        ]);
    }
    r
}

fn stats(st: &helios_admin::AdminState) -> Rows {
    let mut r = Rows::new(&[
        "database",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "avg_query_time",
        "total_errors",
    ]);
    let c = st.counters();
    for db in st.databases() {
        let h = st.histogram(Metric::Query, Some(&db), Window::Total);
        let l = LatencySummary::of(&h);
        r.push(vec![
            s(&db),
            None,
            s(l.count),
            None,
            None,
            l.mean_us.map(|m| (m as u64).to_string()),
            None,
        ]);
    }
    let total = LatencySummary::of(&st.histogram(Metric::Query, None, Window::Total));
    r.push(vec![
        s("*"),
        s(c.transactions),
        s(c.queries),
        s(c.bytes_in),
        s(c.bytes_out),
        total.mean_us.map(|m| (m as u64).to_string()),
        s(c.errors_by_class.values().sum::<u64>()),
    ]);
    r
}

fn clients(st: &helios_admin::AdminState) -> Rows {
    let mut r = Rows::new(&[
        "type",
        "user",
        "database",
        "state",
        "addr",
        "connect_time",
        "id",
        "shard",
        "application_name",
    ]);
    for c in st.clients() {
        r.push(vec![
            s("C"),
            s(&c.user),
            s(&c.database),
            s(c.state),
            s(&c.addr),
            s(c.connected_at),
            s(c.id),
            s(c.shard),
            s(&c.application_name),
        ]);
    }
    r
}

fn servers(st: &helios_admin::AdminState) -> Rows {
    let mut r = Rows::new(&[
        "type",
        "user",
        "database",
        "state",
        "node",
        "connect_time",
        "id",
        "shard",
        "remote_pid",
    ]);
    for (shard, v) in st.servers() {
        r.push(vec![
            s("S"),
            s(&v.user),
            s(&v.database),
            s(v.state),
            s(&v.node),
            s(v.connected_at),
            s(v.id),
            s(shard),
            s(v.backend_pid),
        ]);
    }
    r
}

fn databases(shard: &Shard) -> Rows {
    let cfg = shard.config();
    let mut r = Rows::new(&[
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_size",
        "min_pool_size",
        "pool_mode",
        "node",
    ]);
    for (alias, db) in &cfg.config.databases {
        let node = cfg.config.node_for(db);
        r.push(vec![
            s(alias),
            s(&node.host),
            s(node.port),
            s(db.dbname.as_deref().unwrap_or(alias)),
            db.user.clone(),
            s(db.pool_size),
            s(db.min_idle()),
            s(format!("{:?}", db.pool_mode).to_lowercase()),
            s(&node.name),
        ]);
    }
    r
}

/// The nodes as the hub has them now (the checker's view with the chaos overrides).
/// `SHOW LEASES`: each access context's credential lease (backend/lease.rs); never the secret.
fn leases() -> Rows {
    let mut r = Rows::new(&[
        "database",
        "source",
        "user",
        "generation",
        "expires_at",
        "refreshes",
        "failures",
        "error",
    ]);
    for l in crate::backend::lease::statuses() {
        r.push(vec![
            Some(l.database),
            Some(l.source.to_string()),
            l.user,
            Some(l.generation.to_string()),
            l.expires_at.map(|e| e.to_string()),
            Some(l.refreshes.to_string()),
            Some(l.failures.to_string()),
            l.error,
        ]);
    }
    r
}

fn nodes(shard: &Shard) -> Rows {
    let t = shard.shared.topology.snapshot();
    let cfg = shard.config();
    let primary = t.current_primary().map(|n| n.name.clone());
    let mut r = Rows::new(&[
        "name",
        "host",
        "port",
        "role",
        "configured_role",
        "healthy",
        "forced_down",
        "current_primary",
        "lag_bytes",
        "weight",
        "tags",
        "last_error",
        "checked_at_ms",
        "fenced",
    ]);
    for n in &t.nodes {
        let c = cfg.config.nodes.iter().find(|c| c.name == n.name);
        let tags: Vec<String> = n.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        r.push(vec![
            s(&n.name),
            c.map(|c| c.host.clone()),
            c.map(|c| c.port.to_string()),
            s(n.role.as_str()),
            s(format!("{:?}", n.configured).to_lowercase()),
            s(n.healthy),
            s(n.forced_down),
            s(primary.as_deref() == Some(n.name.as_str())),
            n.lag_bytes.map(|l| l.to_string()),
            s(n.weight),
            s(tags.join(",")),
            n.last_error.clone(),
            s(n.checked_at_ms),
            s(n.fenced),
        ]);
    }
    r
}

fn config(shard: &Shard) -> Rows {
    let cfg = shard.config();
    // `changeable` as in PgBouncer (yes: a reload applies it); `applies`: `reload` or `restart`,
    // from the same table as the reload path's warnings (helios_config::reload::APPLY).
    let mut r = Rows::new(&["key", "value", "changeable", "applies"]);
    // Secrets are never serialized (passwords, the admin token).
    let v = serde_json::to_value(&cfg.config).unwrap_or_default();
    fn walk(prefix: &str, v: &serde_json::Value, r: &mut Rows) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, x, r);
                }
            }
            serde_json::Value::Array(a) if a.iter().any(|x| x.is_object()) => {
                for (i, x) in a.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), x, r);
                }
            }
            other => {
                let apply = helios_config::apply_of(prefix);
                let changeable = apply.map(|a| a == helios_config::Apply::Reload);
                r.push(vec![
                    Some(prefix.to_string()),
                    Some(match other {
                        serde_json::Value::String(s) => s.clone(),
                        x => x.to_string(),
                    }),
                    changeable.map(|c| if c { "yes" } else { "no" }.into()),
                    apply.map(|a| a.as_str().into()),
                ]);
            }
        }
    }
    walk("", &v, &mut r);
    r
}

fn latency(st: &helios_admin::AdminState) -> Rows {
    let mut r = Rows::new(&[
        "database",
        "metric",
        "count",
        "p50_us",
        "p90_us",
        "p99_us",
        "p99_9_us",
        "p99_99_us",
        "max_us",
    ]);
    let mut dbs: Vec<Option<String>> = st.databases().into_iter().map(Some).collect();
    dbs.push(None);
    for db in dbs {
        for m in [Metric::Query, Metric::Checkout, Metric::Server] {
            let l = LatencySummary::of(&st.histogram(m, db.as_deref(), Window::Total));
            let o = |v: Option<u64>| v.map(|x| x.to_string());
            r.push(vec![
                s(db.as_deref().unwrap_or("*")),
                s(m.name()),
                s(l.count),
                o(l.p50_us),
                o(l.p90_us),
                o(l.p99_us),
                o(l.p99_9_us),
                o(l.p99_99_us),
                o(l.max_us),
            ]);
        }
    }
    r
}

/// Feeds a snapshot to the console's merged view.
pub fn ingest(shard: &Shard, snap: helios_admin::ShardSnapshot) {
    let mut st = shard
        .shared
        .console_state
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    st.ingest(snap, Instant::now());
}
