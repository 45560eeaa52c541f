//! Pool upkeep: min_idle connections are opened before any client arrives, idle connections
//! above it close after idle_timeout_ms, and a connection older than max_lifetime_ms is
//! replaced. Each key is shown to change what the server sees.

mod common;

use std::time::Duration;

use common::*;

/// Backends in `db` that are not this monitoring session.
fn backends(pg: &helios_testkit::PgCluster, db: &str) -> usize {
    pg.psql(
        "postgres",
        &format!(
            "select count(*) from pg_stat_activity where datname = '{db}' and pid <> pg_backend_pid()"
        ),
    )
    .unwrap()
    .parse()
    .unwrap()
}

#[test]
fn min_idle_is_kept_warm_without_clients() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "pl_minidle");
    let cfg = config(
        &pg,
        TRUST,
        "",
        &db_section("app", &db, "transaction", 4, "min_idle = 2"),
    );
    let _proxy = start_proxy(&cfg, None);
    // Two shards, min_idle 2 in all: one warm connection each, with no client at all.
    poll(Duration::from_secs(10), "min_idle connections", || {
        (backends(&pg, &db) >= 2).then_some(())
    });
}

#[test]
fn idle_connections_close_after_idle_timeout() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "pl_idle");
    let cfg = config(
        &pg,
        TRUST,
        "",
        &db_section("app", &db, "transaction", 4, "idle_timeout_ms = 500"),
    );
    let proxy = start_proxy(&cfg, None);
    let mut c = connect(&proxy, helios_testkit::SUPERUSER, PW, "app");
    c.simple_query("select 1").unwrap();
    assert!(backends(&pg, &db) >= 1);
    // The client stays connected but idle: its server connection goes back to the pool and is
    // closed there once idle for idle_timeout_ms (checked once a second).
    poll(
        Duration::from_secs(10),
        "idle server connections closed",
        || (backends(&pg, &db) == 0).then_some(()),
    );
    // And the pool opens a new one on demand.
    c.simple_query("select 1").unwrap();
}

#[test]
fn connections_are_replaced_after_max_lifetime() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "pl_life");
    let cfg = config(
        &pg,
        TRUST,
        "",
        &db_section("app", &db, "transaction", 1, "max_lifetime_ms = 700"),
    );
    let proxy = start_proxy(&cfg, None);
    let mut c = connect(&proxy, helios_testkit::SUPERUSER, PW, "app");
    let pid = |c: &mut postgres::Client| -> i32 {
        c.query_one("select pg_backend_pid()", &[]).unwrap().get(0)
    };
    let first = pid(&mut c);
    assert_eq!(pid(&mut c), first, "same connection while young");
    poll(
        Duration::from_secs(10),
        "a new backend after max_lifetime_ms",
        || (pid(&mut c) != first).then_some(()),
    );
}
