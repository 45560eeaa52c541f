//! Multi-node topology against real streaming replication: a primary and two standbys
//! (`pg_basebackup -R`, loopback), the health checker, read/write routing, hints, plugin route
//! results, chaos overrides and lag limits (docs/topology.md).

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use common::*;
use helios_testkit::proxy::Proxy;
use helios_testkit::{PgCluster, PgOptions, SUPERUSER};
use postgres::{Client, SimpleQueryMessage};

struct Three {
    primary: PgCluster,
    r1: PgCluster,
    r2: PgCluster,
    db: String,
}

/// A primary with two streaming standbys, shared by the tests of this binary, with a database
/// that has a table `t`, a sequence `s` and two functions (`ro_fn`, listed read-only in the
/// config; `rw_fn`, not).
fn three() -> Arc<Three> {
    static SHARED: Mutex<Weak<Three>> = Mutex::new(Weak::new());
    let mut w = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = w.upgrade() {
        return c;
    }
    let primary = PgCluster::start().expect("primary");
    let db = fresh_db(&primary, "topo");
    primary
        .psql(
            &db,
            "create table t(id serial primary key, v text); create sequence s; \
             create function ro_fn() returns int language sql immutable as 'select 1'; \
             create function rw_fn() returns int language sql as 'select 2'",
        )
        .unwrap();
    let r1 = PgCluster::standby_of(&primary, PgOptions::default()).expect("standby r1");
    let r2 = PgCluster::standby_of(&primary, PgOptions::default()).expect("standby r2");
    let c = Arc::new(Three {
        primary,
        r1,
        r2,
        db,
    });
    *w = Arc::downgrade(&c);
    c
}

fn topo_config(c: &Three, health: &str, dbs: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:${{HELIOS_TEST_PORT}}\"]\ncores = 2\nshutdown_timeout_ms = 5000\n\n\
         [admin]\nlisten = \"127.0.0.1:${{HELIOS_TEST_ADMIN_PORT}}\"\n\n\
         [io]\nbackend = \"${{HELIOS_TEST_IO_BACKEND:-uring}}\"\n\n\
         [auth]\nmethod = \"trust\"\nadmin_users = [\"{SUPERUSER}\"]\n\n\
         [[nodes]]\nname = \"p\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"auto\"\n\n\
         [[nodes]]\nname = \"r1\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"replica\"\ntags = {{ vector = true, zone = \"a\" }}\n\n\
         [[nodes]]\nname = \"r2\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"auto\"\nweight = 3\n\n\
         [health]\ninterval_ms = 100\ntimeout_ms = 1000\nfailures = 2\nsuccesses = 1\nuser = \"{SUPERUSER}\"\npassword = \"{PW}\"\n{health}\n\n\
         {dbs}\n{extra}",
        c.primary.port, c.r1.port, c.r2.port
    )
}

fn split_db(c: &Three, alias: &str, extra: &str) -> String {
    db_section(
        alias,
        &c.db,
        "transaction",
        6,
        &format!(
            "nodes = [\"p\", \"r1\", \"r2\"]\nread_write_split = true\nread_only_functions = [\"ro_fn\"]\n{extra}"
        ),
    )
}

/// The first value of the last result of a simple query.
fn one(c: &mut Client, sql: &str) -> String {
    let msgs = c
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let mut v = None;
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            v = Some(r.get(0).unwrap_or("NULL").to_string());
        }
    }
    v.unwrap_or_default()
}

/// The first value of every row of a simple query.
fn rows(c: &mut Client, sql: &str) -> Vec<String> {
    c.simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .collect()
}

/// Which server ports `n` fresh transactions of `sql` ran on.
fn ports(c: &mut Client, sql_prefix: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            one(c, &format!("{sql_prefix}SELECT inet_server_port()"))
                .parse()
                .unwrap()
        })
        .collect()
}

/// Polls until every one of 6 reads runs on a port in `want` (the shards have the snapshot).
fn wait_reads_on(c: &mut Client, want: &[u16], what: &str) {
    let want: BTreeSet<u16> = want.iter().copied().collect();
    poll(Duration::from_secs(15), what, || {
        let got: BTreeSet<u16> = ports(c, "", 6).into_iter().collect();
        (got.is_subset(&want)).then_some(())
    });
}

fn console(proxy: &Proxy, sql: &str) -> String {
    psql_ok(&proxy.url(SUPERUSER, "", "heliosproxy"), sql)
}

#[test]
fn reads_go_to_replicas_writes_and_transactions_to_the_primary() {
    let c = three();
    let proxy = start_proxy(&topo_config(&c, "", &split_db(&c, "app", ""), ""), None);
    let mut cl = connect(&proxy, SUPERUSER, "", "app");
    let replicas = [c.r1.port, c.r2.port];
    // Both standbys serve reads once the checker has seen r2 (role auto) answer.
    poll(Duration::from_secs(15), "reads on both replicas", || {
        let got: BTreeSet<u16> = ports(&mut cl, "", 8).into_iter().collect();
        (got == replicas.iter().copied().collect()).then_some(())
    });
    assert_eq!(one(&mut cl, "SELECT pg_is_in_recovery()"), "t");
    // The extended protocol (a named statement prepared once, bound each time) routes the same.
    let row = cl.query_one("SELECT pg_is_in_recovery()", &[]).unwrap();
    assert!(row.get::<_, bool>(0));

    // A write lands on the primary and is then visible on the replicas.
    one(&mut cl, "INSERT INTO t(v) VALUES ('w1') RETURNING id");
    let direct_p = c
        .primary
        .psql(&c.db, "select count(*) from t where v = 'w1'")
        .unwrap();
    assert_eq!(direct_p, "1");
    for r in [&c.r1, &c.r2] {
        r.wait_replayed(&c.primary, Duration::from_secs(10))
            .unwrap();
    }
    assert_eq!(one(&mut cl, "SELECT count(*) FROM t WHERE v = 'w1'"), "1");
    assert_eq!(
        one(&mut cl, "SELECT pg_is_in_recovery() FROM t WHERE v = 'w1'"),
        "t"
    );

    // A transaction that starts with a SELECT and then writes stays on the primary.
    assert_eq!(
        rows(
            &mut cl,
            "BEGIN; SELECT pg_is_in_recovery(); INSERT INTO t(v) VALUES ('w2'); COMMIT"
        ),
        ["f"]
    );
    let mut tx = cl.transaction().unwrap();
    let in_rec: bool = tx
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(
        !in_rec,
        "BEGIN takes the primary; the SELECT after it stays there"
    );
    tx.execute("INSERT INTO t(v) VALUES ('w3')", &[]).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        c.primary
            .psql(&c.db, "select count(*) from t where v in ('w2','w3')")
            .unwrap(),
        "2"
    );

    // BEGIN READ ONLY: the whole transaction on a replica.
    assert_eq!(
        rows(
            &mut cl,
            "BEGIN READ ONLY; SELECT pg_is_in_recovery(); SELECT 1; COMMIT"
        ),
        ["t", "1"]
    );
    one(&mut cl, "BEGIN READ ONLY");
    assert_eq!(one(&mut cl, "SELECT pg_is_in_recovery()"), "t");
    one(&mut cl, "COMMIT");

    // Locking clauses, unknown functions and sequences go to the primary; listed functions not.
    for (sql, want) in [
        ("SELECT pg_is_in_recovery() FROM t LIMIT 1 FOR UPDATE", "f"),
        ("SELECT pg_is_in_recovery(), nextval('s')", "f"),
        ("SELECT pg_is_in_recovery(), rw_fn()", "f"),
        ("SELECT pg_is_in_recovery(), ro_fn()", "t"),
        (
            "WITH d AS (DELETE FROM t WHERE false RETURNING 1) SELECT pg_is_in_recovery()",
            "f",
        ),
    ] {
        assert_eq!(one(&mut cl, sql), want, "{sql}");
    }

    // Hints: a leading comment for one statement, SET helios.route for the session.
    assert_eq!(
        one(
            &mut cl,
            "/* helios:route=primary */ SELECT pg_is_in_recovery()"
        ),
        "f"
    );
    assert_eq!(
        one(
            &mut cl,
            "/* helios:route=replica */ SELECT pg_is_in_recovery(), rw_fn()"
        ),
        "t"
    );
    one(&mut cl, "SET helios.route = 'primary'");
    assert_eq!(one(&mut cl, "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(one(&mut cl, "SELECT pg_is_in_recovery()"), "f");
    one(&mut cl, "RESET helios.route");
    assert_eq!(one(&mut cl, "SELECT pg_is_in_recovery()"), "t");

    // SHOW NODES: roles as discovered, the current primary.
    let nodes = console(&proxy, "SHOW NODES");
    let lines: Vec<&str> = nodes.lines().collect();
    assert_eq!(lines.len(), 3, "{nodes}");
    assert!(
        lines[0].starts_with("p|127.0.0.1|") && lines[0].contains("|primary|auto|true|false|true|"),
        "{nodes}"
    );
    assert!(
        lines[1].starts_with("r1|") && lines[1].contains("|replica|replica|true|false|false|"),
        "{nodes}"
    );
    assert!(lines[1].contains("vector=true,zone=a"), "{nodes}");
    assert!(
        lines[2].starts_with("r2|") && lines[2].contains("|replica|auto|true|"),
        "{nodes}"
    );
}

#[test]
fn chaos_moves_reads_at_once_and_lagging_replicas_are_skipped() {
    let c = three();
    let dbs = split_db(&c, "app", "") + &split_db(&c, "lag", "max_replica_lag_bytes = 4096");
    let proxy = start_proxy(&topo_config(&c, "", &dbs, ""), None);
    let mut cl = connect(&proxy, SUPERUSER, "", "app");
    wait_reads_on(&mut cl, &[c.r1.port, c.r2.port], "reads on the replicas");
    poll(Duration::from_secs(15), "r2 known", || {
        ports(&mut cl, "", 6).contains(&c.r2.port).then_some(())
    });

    // Forced unhealthy through the admin API: no read goes there from the next transaction on,
    // on every shard.
    let admin = proxy.admin_port();
    let chaos = |body: &str| http_body(admin, "POST", "/api/chaos", None, body).unwrap();
    let (status, _, body) = chaos(r#"{"action":"force_unhealthy","target_node":"r1"}"#);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"r1\""), "{body}");
    let mut other = connect(&proxy, SUPERUSER, "", "app");
    for cl in [&mut cl, &mut other] {
        let got = ports(cl, "", 10);
        assert!(got.iter().all(|&p| p == c.r2.port), "{got:?}");
    }
    assert!(console(&proxy, "SHOW NODES").contains("r1|127.0.0.1"));
    let topo = admin_json(admin, "/topology");
    assert_eq!(topo["currentPrimary"], "p", "{topo}");
    assert_eq!(topo["totalNodes"], 3, "{topo}");
    assert_eq!(topo["healthyNodes"], 2, "{topo}");
    assert_eq!(topo["unhealthyNodes"], 1, "{topo}");
    let r1 = &topo["nodes"][1];
    assert_eq!(r1["name"], "r1");
    assert_eq!(r1["forcedDown"], true, "{topo}");
    assert_eq!(r1["tags"]["zone"], "a", "{topo}");
    assert!(topo["nodes"][2]["lagBytes"].is_u64(), "{topo}");
    assert_eq!(admin_json(admin, "/api/chaos")["overrides"][0], "r1");
    let (_, _, metrics) = http(admin, "GET", "/metrics", None).unwrap();
    for want in [
        "heliosproxy_topology_node_forced_down{node=\"r1\"} 1",
        "heliosproxy_topology_node_healthy{node=\"r1\"} 0",
        "heliosproxy_topology_node_healthy{node=\"r2\"} 1",
        "heliosproxy_topology_node_role{node=\"p\",role=\"primary\"} 1",
        "heliosproxy_topology_replica_lag_bytes{node=\"r2\"} ",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    // Refusals: an unknown node, a malformed body, an unknown action.
    assert_eq!(
        chaos(r#"{"action":"restore","target_node":"ghost"}"#).0,
        404
    );
    assert_eq!(chaos("not json").0, 400);
    assert_eq!(chaos(r#"{"action":"explode"}"#).0, 400);
    assert_eq!(chaos(r#"{"action":"restore"}"#).0, 400);
    // Restored through the API: r1 takes reads again; then the console's words for the same.
    assert_eq!(chaos(r#"{"action":"restore","target_node":"r1"}"#).0, 200);
    poll(Duration::from_secs(15), "r1 restored", || {
        ports(&mut cl, "", 6).contains(&c.r1.port).then_some(())
    });
    console(&proxy, "DISABLE NODE r1");
    let got = ports(&mut cl, "", 6);
    assert!(got.iter().all(|&p| p == c.r2.port), "{got:?}");
    // `POST /nodes/{name}/disable` takes a node out of the rotation too.
    console(&proxy, "ENABLE NODE r1");
    assert_eq!(
        http(admin, "POST", "/nodes/r2/disable", None).unwrap().0,
        200
    );
    let got = ports(&mut cl, "", 6);
    assert!(got.iter().all(|&p| p == c.r1.port), "{got:?}");
    assert_eq!(
        http(admin, "POST", "/nodes/r2/enable", None).unwrap().0,
        200
    );
    console(&proxy, "DISABLE NODE r1");
    // Both replicas out: reads fall back to the primary.
    console(&proxy, "DISABLE NODE r2");
    assert_eq!(one(&mut cl, "SELECT pg_is_in_recovery()"), "f");
    console(&proxy, "ENABLE NODE r1");
    let got = ports(&mut cl, "", 6);
    assert!(got.iter().all(|&p| p == c.r1.port), "{got:?}");
    console(&proxy, "RESET NODES");
    let got: BTreeSet<u16> = ports(&mut cl, "", 8).into_iter().collect();
    assert_eq!(got, [c.r1.port, c.r2.port].into_iter().collect());
    let out = psql(
        &proxy.url(SUPERUSER, "", "heliosproxy"),
        "DISABLE NODE ghost",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ghost"));

    // Lag: r1 stops replaying, the primary writes; r1 is then more than 4 KiB behind and
    // database `lag` reads only from r2 (database `app`, no limit, still uses both).
    let mut lag = connect(&proxy, SUPERUSER, "", "lag");
    wait_reads_on(&mut lag, &[c.r1.port, c.r2.port], "lag: reads on replicas");
    c.r1.psql("postgres", "select pg_wal_replay_pause()")
        .unwrap();
    c.primary
        .psql(
            &c.db,
            "insert into t(v) select 'lag' from generate_series(1, 2000)",
        )
        .unwrap();
    wait_reads_on(&mut lag, &[c.r2.port], "lag: r1 skipped");
    let got: BTreeSet<u16> = ports(&mut cl, "", 8).into_iter().collect();
    assert!(got.contains(&c.r1.port), "app has no lag limit: {got:?}");
    c.r1.psql("postgres", "select pg_wal_replay_resume()")
        .unwrap();
    poll(Duration::from_secs(15), "lag: r1 back", || {
        ports(&mut lag, "", 8).contains(&c.r1.port).then_some(())
    });
    let nodes = console(&proxy, "SHOW NODES");
    assert!(
        nodes
            .lines()
            .nth(1)
            .unwrap()
            .split('|')
            .nth(8)
            .is_some_and(|l| l.parse::<u64>().is_ok()),
        "{nodes}"
    );
}

#[test]
fn plugin_route_results_act_on_real_routing() {
    let c = three();
    let plain = db_section(
        "plain",
        &c.db,
        "transaction",
        4,
        "nodes = [\"p\", \"r1\", \"r2\"]",
    );
    let two = db_section("two", &c.db, "transaction", 4, "nodes = [\"p\", \"r1\"]");
    let dbs = split_db(&c, "app", "") + &plain + &two;
    let plugins = plugins_section("", &plugin_entry("route", "hooks = [\"route\"]"));
    // r2 is tagged `vector` too (after r1, so `helios.vector_node` is r1 while it is usable).
    let cfg = topo_config(&c, "", &dbs, &plugins)
        .replace("weight = 3\n", "weight = 3\ntags = { vector = true }\n");
    let proxy = start_proxy(&cfg, None);
    let mut cl = connect(&proxy, SUPERUSER, "", "plain");
    // Without the split, everything goes to the primary; the plugin's `replica` to a replica.
    assert_eq!(one(&mut cl, "SELECT pg_is_in_recovery()"), "f");
    poll(Duration::from_secs(15), "plugin replica", || {
        (one(&mut cl, "/* route: replica */ SELECT pg_is_in_recovery()") == "t").then_some(())
    });
    assert_eq!(
        one(&mut cl, "/* route: node=r2 */ SELECT inet_server_port()"),
        c.r2.port.to_string()
    );
    // Node tags reach the plugin as attributes: it routes to the node named by
    // `helios.vector_node` (no name in the plugin or the query), and follows it when the first
    // vector node is forced down; `echo` shows what the plugin saw (a `block` result, here on
    // a database with a topology).
    let vector_port = |cl: &mut Client| {
        one(
            cl,
            "/* route: node_of=helios.vector_node */ SELECT inet_server_port()",
        )
    };
    let echo = |cl: &mut Client, attr: &str| {
        let e = cl
            .simple_query(&format!("/* route: echo={attr} */ SELECT 1"))
            .unwrap_err();
        assert_eq!(sqlstate(&e), Some("42000"), "{e:?}");
        e.as_db_error().unwrap().message().to_string()
    };
    assert_eq!(vector_port(&mut cl), c.r1.port.to_string());
    assert_eq!(echo(&mut cl, "helios.vector_node"), "helios.vector_node=r1");
    assert_eq!(
        echo(&mut cl, "helios.node.r1.zone"),
        "helios.node.r1.zone=a"
    );
    assert_eq!(
        echo(&mut cl, "helios.primary_node"),
        "helios.primary_node=p"
    );
    let admin = proxy.admin_port();
    let chaos = |body: &str| {
        http_body(admin, "POST", "/api/chaos", None, body)
            .unwrap()
            .0
    };
    assert_eq!(
        chaos(r#"{"action":"force_unhealthy","target_node":"r1"}"#),
        200
    );
    poll(Duration::from_secs(5), "vector node r2", || {
        (vector_port(&mut cl) == c.r2.port.to_string()).then_some(())
    });
    assert_eq!(echo(&mut cl, "helios.vector_node"), "helios.vector_node=r2");
    assert_eq!(chaos(r#"{"action":"reset"}"#), 200);
    poll(Duration::from_secs(5), "vector node r1 again", || {
        (vector_port(&mut cl) == c.r1.port.to_string()).then_some(())
    });
    // The client's region: SET helios.region is an attribute the plugin sees.
    assert_eq!(echo(&mut cl, "helios.region"), "helios.region unset");
    cl.batch_execute("SET helios.region = 'eu'").unwrap();
    assert_eq!(echo(&mut cl, "helios.region"), "helios.region=eu");
    let mut app = connect(&proxy, SUPERUSER, "", "app");
    wait_reads_on(&mut app, &[c.r1.port, c.r2.port], "app reads on replicas");
    assert_eq!(
        one(&mut app, "/* route: primary */ SELECT pg_is_in_recovery()"),
        "f"
    );
    let e = app
        .simple_query("/* route: node=ghost */ SELECT 1")
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("42000"), "{e}");
    // A database that lists its nodes is routed only to those: r2 is configured, not its.
    let mut two = connect(&proxy, SUPERUSER, "", "two");
    let e = two
        .simple_query("/* route: node=r2 */ SELECT 1")
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("42000"), "{e}");
    assert!(
        format!("{e:?}").contains("not one of database two's nodes"),
        "{e:?}"
    );
    assert_eq!(
        one(&mut two, "/* route: node=r1 */ SELECT inet_server_port()"),
        c.r1.port.to_string()
    );
}

#[test]
fn a_stopped_replica_leaves_the_rotation() {
    // Its own standby: stopping one of the shared ones would disturb the other tests.
    let c = three();
    let r3 = PgCluster::standby_of(&c.primary, PgOptions::default()).expect("standby r3");
    let cfg = topo_config(&c, "", "", "").replace(
        &format!("port = {}\nrole = \"auto\"\nweight = 3", c.r2.port),
        &format!("port = {}\nrole = \"auto\"\nweight = 3", r3.port),
    );
    let cfg = format!("{cfg}\n{}", split_db(&c, "app", ""));
    let proxy = start_proxy(&cfg, None);
    let mut cl = connect(&proxy, SUPERUSER, "", "app");
    poll(Duration::from_secs(15), "r3 serves", || {
        ports(&mut cl, "", 6).contains(&r3.port).then_some(())
    });
    r3.stop().unwrap();
    let t0 = Instant::now();
    // After `failures` failed probes (2 × 100 ms plus the probe timeout) reads avoid it; a read
    // that still went there meanwhile gets an error of class 08, never a hang.
    poll(Duration::from_secs(15), "r3 out", || {
        let mut ok = 0;
        for _ in 0..6 {
            match cl.simple_query("SELECT inet_server_port()") {
                Ok(m) => {
                    let port = m.iter().find_map(|m| match m {
                        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                        _ => None,
                    });
                    if port == Some(c.r1.port.to_string()) {
                        ok += 1;
                    }
                }
                Err(e) => assert!(
                    sqlstate(&e).is_some_and(|s| s.starts_with("08")) || e.is_closed(),
                    "{e}"
                ),
            }
            if cl.is_closed() {
                cl = connect(&proxy, SUPERUSER, "", "app");
            }
        }
        (ok == 6).then_some(())
    });
    println!(
        "a stopped replica left the rotation after {:?}",
        t0.elapsed()
    );
    assert!(console(&proxy, "SHOW NODES").contains("|false|false|false|"));
}

/// `load_balance = "weighted"` spreads reads by `weight` (r2 has 3, r1 the default 1);
/// `least_connections` sends reads away from a replica whose connection a client holds. One
/// shard, so every pick sees the same counters and pools.
#[test]
fn weighted_and_least_connections_spread_reads() {
    let c = three();
    let dbs = split_db(&c, "w", "load_balance = \"weighted\"")
        + &split_db(&c, "lc", "load_balance = \"least_connections\"");
    let cfg = topo_config(&c, "", &dbs, "").replace("cores = 2", "cores = 1");
    let proxy = start_proxy(&cfg, None);
    let mut w = connect(&proxy, SUPERUSER, "", "w");
    wait_reads_on(&mut w, &[c.r1.port, c.r2.port], "w: reads on replicas");
    poll(Duration::from_secs(15), "w: r2 known", || {
        ports(&mut w, "", 8).contains(&c.r2.port).then_some(())
    });
    let got = ports(&mut w, "", 40);
    let on_r2 = got.iter().filter(|&&p| p == c.r2.port).count();
    let on_r1 = got.iter().filter(|&&p| p == c.r1.port).count();
    println!("weighted 1:3 over 40 reads: r1 {on_r1}, r2 {on_r2}");
    assert_eq!(on_r1 + on_r2, 40, "{got:?}");
    assert!(
        (26..=34).contains(&on_r2),
        "r2 (weight 3) got {on_r2} of 40"
    );

    // least_connections: idle replicas tie, and a tie goes to the first (r1).
    let mut lc = connect(&proxy, SUPERUSER, "", "lc");
    wait_reads_on(&mut lc, &[c.r1.port, c.r2.port], "lc: reads on replicas");
    let got = ports(&mut lc, "", 6);
    assert!(got.iter().all(|&p| p == c.r1.port), "idle tie: {got:?}");
    // A client holds a read-only transaction on r1: the next reads go to r2, the idle one.
    let mut holder = connect(&proxy, SUPERUSER, "", "lc");
    holder.batch_execute("BEGIN READ ONLY").unwrap();
    assert_eq!(
        one(&mut holder, "SELECT inet_server_port()"),
        c.r1.port.to_string()
    );
    let got = ports(&mut lc, "", 6);
    assert!(
        got.iter().all(|&p| p == c.r2.port),
        "r1 busy, r2 idle: {got:?}"
    );
    holder.batch_execute("COMMIT").unwrap();
    let got = ports(&mut lc, "", 6);
    assert!(got.iter().all(|&p| p == c.r1.port), "idle again: {got:?}");
}

/// A custom `[health] query` decides a node's health (roles still come from the probe), and
/// `successes = 3` keeps a node that failed out until three good probes in a row.
#[test]
fn a_custom_health_query_decides_and_successes_delay_the_return() {
    let c = three();
    // Fails on r2 (division by zero) while the table `gate` is empty.
    c.primary
        .psql(
            &c.db,
            "create table if not exists gate(x int); delete from gate; insert into gate values (1)",
        )
        .unwrap();
    c.r2.wait_replayed(&c.primary, Duration::from_secs(10))
        .unwrap();
    let query = format!(
        "SELECT CASE WHEN inet_server_port() = {} THEN 1 / (SELECT count(*) FROM gate)::int ELSE 1 END",
        c.r2.port
    );
    let interval = Duration::from_millis(600);
    let health = format!("query = \"{query}\"\ndbname = \"{}\"", c.db);
    let cfg = topo_config(&c, &health, &split_db(&c, "app", ""), "")
        .replace(
            "interval_ms = 100\n",
            &format!("interval_ms = {}\n", interval.as_millis()),
        )
        .replace(
            "failures = 2\nsuccesses = 1\n",
            "failures = 1\nsuccesses = 3\n",
        );
    let proxy = start_proxy(&cfg, None);
    let mut cl = connect(&proxy, SUPERUSER, "", "app");
    // The query answers 1, not t/f: the roles come from the probe's own question (r2 is
    // `auto` and serves reads, so it was found to be a replica).
    poll(Duration::from_secs(15), "reads on both replicas", || {
        let got: BTreeSet<u16> = ports(&mut cl, "", 8).into_iter().collect();
        (got == [c.r1.port, c.r2.port].into_iter().collect()).then_some(())
    });
    let nodes = console(&proxy, "SHOW NODES");
    assert!(
        nodes
            .lines()
            .nth(2)
            .unwrap()
            .contains("|replica|auto|true|"),
        "{nodes}"
    );

    // The query fails on r2: one failed probe (failures = 1) takes it out.
    c.primary.psql(&c.db, "delete from gate").unwrap();
    wait_reads_on(&mut cl, &[c.r1.port], "r2 out after its query failed");
    let nodes = console(&proxy, "SHOW NODES");
    assert!(nodes.contains("division by zero"), "{nodes}");
    let topo = admin_json(proxy.admin_port(), "/topology");
    assert_eq!(topo["nodes"][2]["healthy"], false, "{topo}");
    assert_eq!(topo["nodes"][1]["healthy"], true, "{topo}");

    // It passes again: r2 serves only after three good probes, two intervals after the first.
    // Timed from the insert: r2 cannot pass before it has replayed it, and then needs two
    // more intervals (timing from the replay, seen by polling, would start late on a busy host).
    let t0 = Instant::now();
    c.primary
        .psql(&c.db, "insert into gate values (1)")
        .unwrap();
    poll(Duration::from_secs(15), "r2 back", || {
        ports(&mut cl, "", 4).contains(&c.r2.port).then_some(())
    });
    let back = t0.elapsed();
    println!(
        "successes = 3, interval {interval:?}: r2 served again {back:?} after its query passed"
    );
    assert!(
        back >= 2 * interval - Duration::from_millis(100),
        "{back:?}"
    );
}

/// The failover tests one at a time: each crashes a primary and waits on timings; two at once
/// on a 2-CPU host only make both slower.
static ONE: Mutex<()> = Mutex::new(());

/// A primary with one standby of its own (the test kills the primary), a proxy in front with
/// `[failover]` settings, and a writer through the proxy: SIGKILL the primary, let the standby
/// become the primary, and measure until writes through the proxy succeed again.
///
/// With `auto_promote`, first the split-brain guard: the primary forced unhealthy by chaos still
/// answers, so nothing is promoted and a write waits for it instead of going elsewhere. After
/// the crash the proxy promotes the standby; the time is from SIGKILL to the first good write.
///
/// Without it (`pg_ctl promote` from outside) the outage is held open first: reads go on on
/// the standby, a write waits `failover.timeout_ms` (3 s) and gets 08006, a write issued before
/// the promotion (1 s later) waits and succeeds; the time is from `pg_ctl promote` to it.
///
/// Both: a client whose transaction has a statement in flight on the primary, and one idle in
/// a transaction there, get an error of class 08 at the crash (never a hang) and their next
/// transaction, on a new connection, works.
fn failover_after_kill(auto_promote: bool) -> Duration {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let primary = PgCluster::start().expect("primary");
    let db = fresh_db(&primary, "fo");
    primary
        .psql(
            &db,
            "create table h(id serial primary key, at timestamptz default now())",
        )
        .unwrap();
    let standby = PgCluster::standby_of(&primary, PgOptions::default()).expect("standby");
    let wait_ms = if auto_promote { 15000 } else { 3000 };
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:${{HELIOS_TEST_PORT}}\"]\ncores = 2\nshutdown_timeout_ms = 5000\n\n\
         [admin]\nlisten = \"127.0.0.1:${{HELIOS_TEST_ADMIN_PORT}}\"\n\n\
         [io]\nbackend = \"${{HELIOS_TEST_IO_BACKEND:-uring}}\"\n\n\
         [auth]\nmethod = \"trust\"\nadmin_users = [\"{SUPERUSER}\"]\n\n\
         [[nodes]]\nname = \"a\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"auto\"\nconnect_timeout_ms = 1000\n\n\
         [[nodes]]\nname = \"b\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"auto\"\nconnect_timeout_ms = 1000\n\n\
         [health]\ninterval_ms = 100\ntimeout_ms = 500\nfailures = 3\nsuccesses = 1\nuser = \"{SUPERUSER}\"\npassword = \"{PW}\"\n\n\
         [failover]\ntimeout_ms = {wait_ms}\nauto_promote = {auto_promote}\n\n{}",
        primary.port,
        standby.port,
        db_section("app", &db, "transaction", 4, "nodes = [\"a\", \"b\"]\nread_write_split = true")
    );
    let proxy = start_proxy(&cfg, None);
    let admin = proxy.admin_port();
    let mut cl = connect(&proxy, SUPERUSER, "", "app");
    poll(Duration::from_secs(15), "the standby serves reads", || {
        (one(&mut cl, "SELECT pg_is_in_recovery()") == "t").then_some(())
    });
    for _ in 0..20 {
        one(&mut cl, "INSERT INTO h DEFAULT VALUES RETURNING id");
    }
    assert_eq!(
        primary.psql(&db, "select count(*) from h").unwrap(),
        "20",
        "the writes went to the primary"
    );

    if auto_promote {
        // Split brain guard: the primary forced unhealthy still answers its probes, so it is
        // not replaced; writes wait for it (never to the standby), reads stay on the standby.
        let chaos = |body: &str| http_body(admin, "POST", "/api/chaos", None, body).unwrap();
        let (status, _, body) = chaos(r#"{"action":"force_unhealthy","target_node":"a"}"#);
        assert_eq!(status, 200, "{body}");
        let forced = Instant::now();
        let mut rd = connect(&proxy, SUPERUSER, "", "app");
        std::thread::scope(|s| {
            let restorer = s.spawn(|| {
                // Many times failures × interval (3 × 100 ms): an unguarded checker would
                // have promoted the standby by now.
                std::thread::sleep(Duration::from_millis(1500));
                assert_eq!(
                    standby.psql(&db, "select pg_is_in_recovery()").unwrap(),
                    "t",
                    "the standby was promoted while the old primary still answered"
                );
                assert_eq!(one(&mut rd, "SELECT pg_is_in_recovery()"), "t");
                let topo = admin_json(admin, "/topology");
                assert_eq!(topo["failovers"], 0, "{topo}");
                assert_eq!(chaos(r#"{"action":"restore","target_node":"a"}"#).0, 200);
            });
            // Issued while `a` is forced down: waits for a usable primary, then runs on `a`.
            one(&mut cl, "INSERT INTO h DEFAULT VALUES");
            let waited = forced.elapsed();
            restorer.join().unwrap();
            println!("split-brain guard: a write waited {waited:?} for the forced-down primary, nothing was promoted");
            assert!(waited >= Duration::from_millis(1400), "{waited:?}");
        });
        assert_eq!(
            primary.psql(&db, "select count(*) from h").unwrap(),
            "21",
            "the write waited for the primary, it went nowhere else"
        );
        assert_eq!(
            standby.psql(&db, "select pg_is_in_recovery()").unwrap(),
            "t"
        );
    }
    let before_crash: u64 = primary
        .psql(&db, "select count(*) from h")
        .unwrap()
        .parse()
        .unwrap();
    standby
        .wait_replayed(&primary, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        standby.psql(&db, "select count(*) from h").unwrap(),
        before_crash.to_string()
    );
    // A client that started before the crash and stays idle through it.
    let mut before = connect(&proxy, SUPERUSER, "", "app");
    assert_eq!(one(&mut before, "SELECT 1"), "1");
    // A transaction with a statement in flight on the primary at the crash, and one idle in a
    // transaction there.
    let mut inflight = Raw::trust(proxy.port(), "app");
    let r = inflight.query("BEGIN; INSERT INTO h DEFAULT VALUES");
    assert_eq!(ready_status(&r), b'T');
    let mut b = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query("SELECT pg_sleep(60)", &mut b).unwrap();
    inflight.send(&b);
    poll(
        Duration::from_secs(10),
        "the statement runs on the primary",
        || {
            (primary
            .psql(
                "postgres",
                "select count(*) from pg_stat_activity where state = 'active' and query = 'SELECT pg_sleep(60)'",
            )
            .ok()?
            == "1")
            .then_some(())
        },
    );
    let mut idle_tx = Raw::trust(proxy.port(), "app");
    let r = idle_tx.query("BEGIN; INSERT INTO h DEFAULT VALUES");
    assert_eq!(ready_status(&r), b'T');

    // As when the host dies: every process stopped, then killed, so no backend gets to say
    // why (a backend that outlives its postmaster by a moment says FATAL 57P01 itself, and
    // that is forwarded as it is).
    let frozen = primary.freeze().unwrap();
    primary.crash().unwrap();
    let killed = Instant::now();
    drop(frozen);
    for (what, raw) in [
        ("in flight", &mut inflight),
        ("idle in transaction", &mut idle_tx),
    ] {
        let msgs = raw.until_closed();
        let code = first_error(&msgs);
        assert!(
            code.as_deref().is_some_and(|c| c.starts_with("08")),
            "{what}: {msgs:?}"
        );
        println!(
            "a transaction {what} on the crashed primary: SQLSTATE {} after {:?}",
            code.unwrap(),
            killed.elapsed()
        );
        assert!(killed.elapsed() < Duration::from_secs(5), "{what}: slow");
    }

    let took = if auto_promote {
        // Writes through the proxy until one succeeds: an error of class 08 (or a closed
        // connection, reopened) meanwhile, never a hang past the failover timeout.
        loop {
            let started = Instant::now();
            match cl.simple_query("INSERT INTO h DEFAULT VALUES") {
                Ok(_) => break killed.elapsed(),
                Err(e) => {
                    assert!(
                        e.is_closed()
                            || sqlstate(&e).is_some_and(|s| s.starts_with("08") || s == "57P01"),
                        "{e:?}"
                    );
                    assert!(started.elapsed() < Duration::from_secs(16), "a write hung");
                }
            }
            if cl.is_closed() {
                match try_connect(&proxy, SUPERUSER, "", "app") {
                    Ok(c) => cl = c,
                    // During the failover a login may be refused (08006), never held.
                    Err(e) => assert!(sqlstate(&e).is_some_and(|s| s.starts_with("08")), "{e:?}"),
                }
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "no failover");
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        // The outage, held open: once the checker has seen the primary fail, reads go on on
        // the standby while a write waits failover.timeout_ms for a primary and gets 08006.
        poll(
            Duration::from_secs(10),
            "the proxy sees the primary down",
            || {
                let topo = admin_json(admin, "/topology");
                (topo["nodes"][0]["healthy"] == false).then_some(())
            },
        );
        let mut rd = connect(&proxy, SUPERUSER, "", "app");
        let mut w = connect(&proxy, SUPERUSER, "", "app");
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let t0 = Instant::now();
                let mut n = 0;
                while t0.elapsed() < Duration::from_millis(2500) {
                    assert_eq!(one(&mut rd, "SELECT pg_is_in_recovery()"), "t");
                    n += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                n
            });
            let t0 = Instant::now();
            let e = w.simple_query("INSERT INTO h DEFAULT VALUES").unwrap_err();
            let waited = t0.elapsed();
            assert_eq!(sqlstate(&e), Some("08006"), "{e:?}");
            let reads = reader.join().unwrap();
            println!("no primary: a write got 08006 after {waited:?} (failover.timeout_ms = {wait_ms}); meanwhile {reads} reads ran on the standby");
            assert!(
                waited >= Duration::from_millis(wait_ms - 200)
                    && waited < Duration::from_millis(wait_ms + 3000),
                "{waited:?}"
            );
            assert!(reads >= 10, "{reads} reads during the outage");
        });
        // The error leaves the session usable: a read on the same connection.
        assert_eq!(one(&mut w, "SELECT pg_is_in_recovery()"), "t");
        // A write issued before the promotion waits for it and succeeds.
        std::thread::scope(|s| {
            let t0 = Instant::now();
            let promoter = s.spawn(|| {
                std::thread::sleep(Duration::from_secs(1));
                let at = Instant::now();
                standby.promote().unwrap();
                at
            });
            w.simple_query("INSERT INTO h DEFAULT VALUES")
                .expect("a write waiting for the new primary succeeds");
            let promoted_at = promoter.join().unwrap();
            println!(
                "a write issued during the outage waited {:?} and succeeded on the new primary",
                t0.elapsed()
            );
            assert!(t0.elapsed() >= Duration::from_secs(1), "it did not wait");
            promoted_at.elapsed()
        })
    };
    assert_eq!(
        standby.psql(&db, "select pg_is_in_recovery()").unwrap(),
        "f"
    );
    let n: u64 = standby
        .psql(&db, "select count(*) from h")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        n > before_crash,
        "the writes before the crash (replicated) and the one after it are on the new primary: {n}"
    );
    // Its next transactions work, extended protocol included (a prepared statement's Describe
    // takes a connection before any Bind: from the new primary, not the dead one).
    poll(
        Duration::from_secs(10),
        "the idle client writes again",
        || before.execute("INSERT INTO h DEFAULT VALUES", &[]).ok(),
    );
    let id: i32 = before
        .query_one("INSERT INTO h DEFAULT VALUES RETURNING id", &[])
        .unwrap()
        .get(0);
    assert!(id > 0);
    // The clients whose transaction died with the primary: their next transaction (on a new
    // connection: the proxy closed theirs, see docs/topology.md) works.
    for _ in 0..2 {
        let mut again = Raw::trust(proxy.port(), "app");
        let r = again.query("BEGIN; INSERT INTO h DEFAULT VALUES; COMMIT");
        assert_eq!(first_error(&r), None, "{r:?}");
        assert_eq!(ready_status(&r), b'I');
        again.terminate();
    }
    if took > Duration::from_secs(2) {
        eprintln!("slow failover ({took:?}); the proxy log:\n{}", proxy.log());
    }
    let nodes = console(&proxy, "SHOW NODES");
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("b|") && l.contains("|primary|auto|true|false|true|")),
        "{nodes}"
    );
    // The admin API and Prometheus say what happened.
    let topo = admin_json(proxy.admin_port(), "/topology");
    assert_eq!(topo["currentPrimary"], "b", "{topo}");
    assert!(topo["lastFailoverAt"].is_u64(), "{topo}");
    assert_eq!(topo["failovers"], 1, "{topo}");
    let (_, _, metrics) = http(proxy.admin_port(), "GET", "/metrics", None).unwrap();
    for want in [
        "heliosproxy_topology_failovers_total 1",
        "heliosproxy_topology_node_role{node=\"b\",role=\"primary\"} 1",
        "heliosproxy_topology_node_healthy{node=\"a\"} 0",
        "heliosproxy_topology_last_failover_timestamp_seconds ",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    took
}

#[test]
fn failover_by_an_external_promotion() {
    let took = failover_after_kill(false);
    println!("pg_ctl promote: a waiting write through the proxy succeeded {took:?} after pg_ctl promote began");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn failover_by_auto_promote() {
    let took = failover_after_kill(true);
    println!("auto_promote: writes through the proxy succeeded again {took:?} after SIGKILL of the primary");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// pgbench (tpcb-like, 8 clients, `--log`) through the proxy; the primary crashes mid-run and
/// the standby is promoted, by `auto_promote` or by `pg_ctl promote` from outside right after
/// the crash. Returns (transactions pgbench logged as committed, rows in pgbench_history on the
/// new primary, time from SIGKILL until a write through the proxy worked).
fn pgbench_failover(sync: bool, auto_promote: bool) -> (u64, u64, Duration) {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let primary = PgCluster::start().expect("primary");
    let db = fresh_db(&primary, "pgfo");
    let init = std::process::Command::new("pgbench")
        .args(["-i", "-s", "1", "-q", &primary.url(&db)])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    primary.psql(&db, "create table probe(x int)").unwrap();
    let standby = PgCluster::standby_of(&primary, PgOptions::default()).expect("standby");
    if sync {
        for sql in [
            "alter system set synchronous_standby_names = '*'",
            "alter system set synchronous_commit = on",
        ] {
            primary.psql("postgres", sql).unwrap();
        }
        primary.psql("postgres", "select pg_reload_conf()").unwrap();
        poll(Duration::from_secs(15), "a synchronous standby", || {
            (primary
                .psql(
                    "postgres",
                    "select count(*) from pg_stat_replication where sync_state = 'sync'",
                )
                .ok()?
                == "1")
                .then_some(())
        });
    }
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:${{HELIOS_TEST_PORT}}\"]\ncores = 2\nshutdown_timeout_ms = 5000\n\n\
         [admin]\nlisten = \"127.0.0.1:${{HELIOS_TEST_ADMIN_PORT}}\"\n\n\
         [io]\nbackend = \"${{HELIOS_TEST_IO_BACKEND:-uring}}\"\n\n\
         [auth]\nmethod = \"trust\"\nadmin_users = [\"{SUPERUSER}\"]\n\n\
         [[nodes]]\nname = \"a\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"auto\"\nconnect_timeout_ms = 1000\n\n\
         [[nodes]]\nname = \"b\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"auto\"\nconnect_timeout_ms = 1000\n\n\
         [health]\ninterval_ms = 100\ntimeout_ms = 500\nfailures = 3\nsuccesses = 1\nuser = \"{SUPERUSER}\"\npassword = \"{PW}\"\n\n\
         [failover]\ntimeout_ms = 15000\nauto_promote = {auto_promote}\n\n{}",
        primary.port,
        standby.port,
        db_section("app", &db, "transaction", 8, "nodes = [\"a\", \"b\"]\nread_write_split = true")
    );
    let proxy = start_proxy(&cfg, None);
    let dir = std::env::temp_dir().join(format!(
        "helios-pgfo-{}-{sync}-{auto_promote}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut bench = std::process::Command::new("pgbench")
        .args(["-n", "-c", "8", "-j", "2", "-T", "9", "--log"])
        .arg(format!("--log-prefix={}", dir.join("pgl").display()))
        .arg(proxy.url(SUPERUSER, "", "app"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pgbench");
    std::thread::sleep(Duration::from_secs(3));
    primary.crash().unwrap();
    let killed = Instant::now();
    if !auto_promote {
        standby.promote().unwrap();
    }
    let mut cl: Option<Client> = None;
    let took = loop {
        if cl.as_ref().is_none_or(|c| c.is_closed()) {
            cl = try_connect(&proxy, SUPERUSER, "", "app").ok();
        }
        if let Some(c) = cl.as_mut() {
            if c.simple_query("INSERT INTO probe VALUES (1)").is_ok() {
                break killed.elapsed();
            }
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no failover");
        std::thread::sleep(Duration::from_millis(20));
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while bench.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "pgbench hangs");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut logged = 0u64;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        logged += text
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(2)
                    .is_some_and(|t| t.parse::<u64>().is_ok())
            })
            .count() as u64;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let history: u64 = standby
        .psql(&db, "select count(*) from pgbench_history")
        .unwrap()
        .parse()
        .unwrap();
    assert!(logged > 0, "pgbench logged no transaction before the crash");
    (logged, history, took)
}

#[test]
fn failover_under_pgbench_with_a_synchronous_standby_loses_nothing() {
    let (logged, history, took) = pgbench_failover(true, true);
    println!(
        "synchronous standby, auto_promote: pgbench logged {logged} committed transactions, {history} in the history on the new primary; writes worked again after {took:?}"
    );
    assert!(history >= logged, "{logged} logged, {history} kept");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn failover_under_pgbench_by_pg_ctl_promote_loses_nothing_with_a_synchronous_standby() {
    let (logged, history, took) = pgbench_failover(true, false);
    println!(
        "synchronous standby, pg_ctl promote: pgbench logged {logged} committed transactions, {history} in the history on the new primary; writes worked again {took:?} after SIGKILL"
    );
    assert!(history >= logged, "{logged} logged, {history} kept");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn failover_under_pgbench_with_an_asynchronous_standby_reports_its_loss() {
    let (logged, history, took) = pgbench_failover(false, true);
    println!(
        "asynchronous standby, auto_promote: pgbench logged {logged} committed transactions, {history} in the history on the new primary: {} lost; writes worked again after {took:?}",
        logged.saturating_sub(history)
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn a_hung_replica_is_cut_off_within_the_health_settings() {
    // Its own standby: a hung one would disturb the other tests.
    let c = three();
    let r3 = PgCluster::standby_of(&c.primary, PgOptions::default()).expect("standby r3");
    let cfg = topo_config(&c, "", "", "").replace(
        &format!("port = {}\nrole = \"auto\"\nweight = 3", c.r2.port),
        &format!(
            "port = {}\nrole = \"auto\"\nweight = 3\nconnect_timeout_ms = 1000",
            r3.port
        ),
    );
    let cfg = format!("{cfg}\n{}", split_db(&c, "app", ""));
    let proxy = start_proxy(&cfg, None);
    let mut cl = connect(&proxy, SUPERUSER, "", "app");
    poll(Duration::from_secs(15), "r3 serves", || {
        ports(&mut cl, "", 6).contains(&r3.port).then_some(())
    });
    // Health: failures = 2, interval 100 ms, timeout 1000 ms: about 2.2 s to be declared
    // unhealthy; a new connection to it gives up after its connect_timeout_ms (1 s); 1.8 s
    // for a loaded 2-CPU host.
    let bound = 2 * Duration::from_millis(100 + 1000)
        + Duration::from_millis(1000)
        + Duration::from_millis(1800);
    // Several readers (on both shards) through a 15 s freeze, each measuring its longest read.
    let mut readers: Vec<Client> = (0..4)
        .map(|_| connect(&proxy, SUPERUSER, "", "app"))
        .collect();
    let frozen = r3.freeze().unwrap();
    let t0 = Instant::now();
    let results: Vec<(Duration, Option<Duration>, usize)> = std::thread::scope(|s| {
        let tasks: Vec<_> = readers
            .iter_mut()
            .map(|cl| {
                let proxy = &proxy;
                let r1 = c.r1.port.to_string();
                s.spawn(move || {
                    let mut longest = Duration::ZERO;
                    let mut on_r1_since: Option<Instant> = None;
                    let mut errors = 0;
                    while t0.elapsed() < Duration::from_secs(15) {
                        let q = Instant::now();
                        let r = cl.simple_query("SELECT inet_server_port()");
                        match r {
                            Ok(m) => {
                                let port = m.iter().find_map(|m| match m {
                                    SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                                    _ => None,
                                });
                                if port.as_deref() == Some(r1.as_str()) {
                                    on_r1_since.get_or_insert_with(Instant::now);
                                } else {
                                    on_r1_since = None;
                                }
                            }
                            Err(e) => {
                                errors += 1;
                                assert!(
                                    e.is_closed()
                                        || sqlstate(&e).is_some_and(|s| s.starts_with("08")),
                                    "{e:?}"
                                )
                            }
                        }
                        if cl.is_closed() {
                            *cl = connect(proxy, SUPERUSER, "", "app");
                        }
                        // The read and, after an error, the new login.
                        longest = longest.max(q.elapsed());
                    }
                    (
                        longest,
                        on_r1_since.map(|s| t0.elapsed() - s.elapsed()),
                        errors,
                    )
                })
            })
            .collect();
        tasks.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let longest = results.iter().map(|r| r.0).max().unwrap();
    println!(
        "a replica frozen for 15 s, 4 readers: longest read per reader {:?} (bound {bound:?}), reads on r1 only from {:?}, errors {:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>(),
        results.iter().map(|r| r.1).collect::<Vec<_>>(),
        results.iter().map(|r| r.2).collect::<Vec<_>>(),
    );
    assert!(longest < bound, "a read hung for {longest:?}");
    for (_, settled, _) in &results {
        assert!(
            settled.is_some_and(|s| s < Duration::from_secs(5)),
            "reads settled on r1: {results:?}"
        );
    }
    let mut cl = readers.pop().unwrap();
    drop(frozen);
    poll(Duration::from_secs(15), "r3 back", || {
        ports(&mut cl, "", 6).contains(&r3.port).then_some(())
    });
}

/// A standby that applies WAL two seconds late (`recovery_min_apply_delay`), beside the shared
/// primary: read-your-writes sends a writer's reads to the primary until the replica has
/// replayed the commit (not for a fixed time), and `max_replica_lag_ms` skips it while WAL
/// waits to be replayed.
#[test]
fn read_your_writes_follows_the_commit_position_and_time_lag_skips_a_delayed_replica() {
    let c = three();
    let delayed = PgCluster::standby_of(
        &c.primary,
        PgOptions {
            conf: vec!["recovery_min_apply_delay = '2s'".into()],
            ..PgOptions::default()
        },
    )
    .expect("delayed standby");
    let db = |alias: &str, extra: &str| {
        db_section(
            alias,
            &c.db,
            "transaction",
            4,
            &format!("nodes = [\"p\", \"d\"]\nread_write_split = true\n{extra}"),
        )
    };
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:${{HELIOS_TEST_PORT}}\"]\ncores = 2\nshutdown_timeout_ms = 5000\n\n\
         [admin]\nlisten = \"127.0.0.1:${{HELIOS_TEST_ADMIN_PORT}}\"\n\n\
         [io]\nbackend = \"${{HELIOS_TEST_IO_BACKEND:-uring}}\"\n\n\
         [auth]\nmethod = \"trust\"\nadmin_users = [\"{SUPERUSER}\"]\n\n\
         [[nodes]]\nname = \"p\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"auto\"\n\n\
         [[nodes]]\nname = \"d\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"replica\"\n\n\
         [health]\ninterval_ms = 100\ntimeout_ms = 1000\nfailures = 2\nsuccesses = 1\nuser = \"{SUPERUSER}\"\npassword = \"{PW}\"\n\n\
         {}\n{}\n{}",
        c.primary.port,
        delayed.port,
        db("plain", ""),
        db("ryw", "read_your_writes_ms = 20000"),
        db("lagms", "max_replica_lag_ms = 1000"),
    );
    let proxy = start_proxy(&cfg, None);
    let mut plain = connect(&proxy, SUPERUSER, "", "plain");
    let mut ryw = connect(&proxy, SUPERUSER, "", "ryw");
    wait_reads_on(&mut plain, &[delayed.port], "plain: reads on d");
    wait_reads_on(
        &mut ryw,
        &[delayed.port],
        "ryw: reads on d before any write",
    );

    // Without read-your-writes the delayed replica answers a read right after a write: the
    // row is not there yet (this is what the setting fixes).
    plain
        .batch_execute("insert into t(v) values ('plain-1')")
        .unwrap();
    assert_eq!(
        one(&mut plain, "select count(*) from t where v = 'plain-1'"),
        "0",
        "the delayed replica should not have the row yet"
    );

    // With it: every write is seen by the next read, in autocommit and in a transaction, by
    // the simple and the extended protocol.
    for i in 0..5 {
        let v = format!("ryw-{i}");
        if i % 2 == 0 {
            ryw.batch_execute(&format!("insert into t(v) values ('{v}')"))
                .unwrap();
        } else {
            ryw.batch_execute(&format!("begin; insert into t(v) values ('{v}'); commit"))
                .unwrap();
        }
        let n: i64 = ryw
            .query_one("select count(*) from t where v = $1", &[&v])
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{v}: the writer's read must see its write");
        assert_eq!(
            one(&mut ryw, "select inet_server_port()"),
            c.primary.port.to_string(),
            "{v}: until the replica replays the commit, reads go to the primary"
        );
    }
    // Exact, not timed: once the replica has replayed the last commit (2 s delay + a probe),
    // the writer's reads go back to it although the 20 s window is still open.
    let t0 = Instant::now();
    wait_reads_on(
        &mut ryw,
        &[delayed.port],
        "ryw: reads back on d once it replayed",
    );
    let back = t0.elapsed();
    println!("read-your-writes: reads back on the replica {back:?} after the last write");
    assert!(back < Duration::from_secs(15), "{back:?}");
    assert_eq!(
        one(&mut ryw, "select count(*) from t where v like 'ryw-%'"),
        "5"
    );
    // Reads that write nothing do not open a window.
    ryw.batch_execute("begin; select 1; commit").unwrap();
    assert_eq!(
        one(&mut ryw, "select inet_server_port()"),
        delayed.port.to_string()
    );

    // Time lag: while the primary keeps writing, WAL waits on d for 2 s, more than lagms's
    // 1000 ms: its reads go to the primary; quiet again, d catches up and serves them.
    let mut lagms = connect(&proxy, SUPERUSER, "", "lagms");
    wait_reads_on(&mut lagms, &[delayed.port], "lagms: reads on d while quiet");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, port, db) = (stop.clone(), c.primary.port, c.db.clone());
        std::thread::spawn(move || {
            let mut d = postgres::Client::connect(
                &format!("host=127.0.0.1 port={port} user={SUPERUSER} password={PW} dbname={db}"),
                postgres::NoTls,
            )
            .unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                d.batch_execute("insert into t(v) values ('tick')").unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    wait_reads_on(
        &mut lagms,
        &[c.primary.port],
        "lagms: d skipped while behind",
    );
    let topo = admin_json(proxy.admin_port(), "/topology");
    let lag = topo["nodes"][1]["lagMs"].as_u64().unwrap_or(0);
    println!("time lag of the delayed replica under writes: {lag} ms");
    assert!(lag > 1000, "{topo}");
    let got: BTreeSet<u16> = ports(&mut plain, "", 4).into_iter().collect();
    assert_eq!(
        got,
        [delayed.port].into_iter().collect(),
        "plain has no time limit"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    wait_reads_on(&mut lagms, &[delayed.port], "lagms: d back once caught up");
}
