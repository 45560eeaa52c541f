//! Access contexts (docs/contexts.md) against real PostgreSQL: a database alias that fixes the
//! upstream role and session defaults. Clients cannot change what the context fixes — through
//! psql (simple protocol), the postgres crate (extended protocol), inside multi-statement
//! queries and transactions, nor at login — and two contexts on one database with different
//! roles see different tables and never share a server connection.

mod common;

use std::collections::HashSet;
use std::process::Command;

use common::*;
use helios_testkit::proxy::Proxy;
use helios_testkit::{PgCluster, SUPERUSER};
use postgres::{Client, NoTls};

const LOGIN_PW: &str = "ctx-login-pw";

/// A database with table `t` (ro may read, rw may read and write) and `rw_only` (rw alone), the
/// roles `<p>_ro` and `<p>_rw` (no login), and the proxy's login `<p>_login`, a NOINHERIT member
/// of both that has no privileges of its own.
fn setup(pg: &PgCluster, p: &str) -> String {
    let db = fresh_db(pg, p);
    pg.psql(
        "postgres",
        &format!(
            "create role {p}_ro nologin; create role {p}_rw nologin; \
             create role {p}_login login noinherit password '{LOGIN_PW}' in role {p}_ro, {p}_rw"
        ),
    )
    .unwrap();
    pg.psql(
        &db,
        &format!(
            "create table t (x int); insert into t values (1); create table rw_only (y int); \
             grant select on t to {p}_ro; grant select, insert on t, rw_only to {p}_rw"
        ),
    )
    .unwrap();
    db
}

fn section(alias: &str, db: &str, p: &str, role: &str, extra: &str) -> String {
    format!(
        "[databases.{alias}]\ndbname = \"{db}\"\nuser = \"{p}_login\"\npassword = \"{LOGIN_PW}\"\n\
         pool_mode = \"transaction\"\npool_size = 2\nrole = \"{p}_{role}\"\n{extra}\n"
    )
}

const READ_ONLY: &str =
    "defaults = { default_transaction_read_only = \"on\", statement_timeout = \"7s\" }";

fn proxy(pg: &PgCluster, p: &str) -> (Proxy, String) {
    let db = setup(pg, p);
    let dbs = section("ro", &db, p, "ro", READ_ONLY) + &section("rw", &db, p, "rw", "");
    (start_proxy(&config(pg, TRUST, "", &dbs), None), db)
}

/// psql, verbose errors (the SQLSTATE in the message), one session running each command.
fn psql_run(url: &str, commands: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new("psql");
    cmd.arg(url).args([
        "-X",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-v",
        "VERBOSITY=verbose",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.output().expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The statement fails in psql with `code`, and the message contains `names`.
fn psql_refused(url: &str, sql: &str, code: &str, names: &str) {
    let (ok, _, err) = psql_run(url, &[sql], &[]);
    assert!(!ok, "psql {sql:?} succeeded");
    assert!(
        err.contains(&format!("{code}:")) && err.contains(names),
        "psql {sql:?}: want {code} naming {names:?}, got: {err}"
    );
}

fn err_code(r: Result<impl Sized, postgres::Error>) -> (String, String) {
    match r {
        Ok(_) => ("succeeded".into(), String::new()),
        Err(e) => (
            sqlstate(&e).unwrap_or("none").to_string(),
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string()),
        ),
    }
}

#[test]
fn a_read_only_context_cannot_be_escaped() {
    let pg = shared_pg();
    let (proxy, _db) = proxy(&pg, "ctxa");
    let url = proxy.url(SUPERUSER, PW, "ro");

    // The context is applied in the server session.
    let (ok, out, err) = psql_run(
        &url,
        &[
            "select current_user, session_user, current_setting('default_transaction_read_only'), current_setting('statement_timeout')",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "ctxa_ro|ctxa_login|on|7s");
    // PostgreSQL's own read-only transaction error.
    psql_refused(&url, "insert into t values (2)", "25006", "read-only");
    // Each way out of the context, through psql (simple protocol).
    for (sql, code, names) in [
        (
            "SET default_transaction_read_only = off",
            "42501",
            "default_transaction_read_only",
        ),
        ("SET ROLE postgres", "42501", "\"role\""),
        ("RESET ROLE", "42501", "\"role\""),
        (
            "SET SESSION AUTHORIZATION postgres",
            "42501",
            "session_authorization",
        ),
        (
            "select set_config('default_transaction_read_only', 'off', false)",
            "42501",
            "default_transaction_read_only",
        ),
        ("RESET statement_timeout", "42501", "statement_timeout"),
        ("BEGIN READ WRITE", "25006", "default_transaction_read_only"),
        // Inside multi-statement queries.
        (
            "select 1; SET default_transaction_read_only = off; select 2",
            "42501",
            "default_transaction_read_only",
        ),
        ("select 1; SET ROLE postgres", "42501", "\"role\""),
        (
            "select 1; RESET ROLE; insert into t values (3)",
            "42501",
            "\"role\"",
        ),
        (
            "DO $$ BEGIN EXECUTE 'RESET ROLE'; END $$",
            "42501",
            "DO block",
        ),
    ] {
        psql_refused(&url, sql, code, names);
    }
    // Inside a transaction the refusal fails the transaction, as a server error would.
    let (ok, _, err) = psql_run(&url, &["BEGIN", "SET ROLE postgres", "select 1"], &[]);
    assert!(!ok && err.contains("42501"), "{err}");
    // Startup options and parameters that would override a fixed setting: refused at login.
    for (env, names) in [
        (
            ("PGOPTIONS", "-c default_transaction_read_only=off"),
            "default_transaction_read_only",
        ),
        (("PGOPTIONS", "-c role=postgres"), "\"role\""),
        (("PGOPTIONS", "--statement-timeout=0"), "statement_timeout"),
    ] {
        // psql prints no SQLSTATE for a failed login; the postgres crate below checks 42501.
        let (ok, _, err) = psql_run(&url, &["select 1"], &[env]);
        assert!(
            !ok && err.contains("FATAL:  permission denied") && err.contains(names),
            "{env:?}: {err}"
        );
    }
    // What is allowed still works, and RESET ALL / DISCARD ALL return to the context.
    let (ok, out, err) = psql_run(
        &url,
        &[
            "SET work_mem = '8MB'",
            "RESET ALL",
            "DISCARD ALL",
            "select current_user, current_setting('default_transaction_read_only'), count(*) from t",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().last(), Some("ctxa_ro|on|1"), "{out}");

    // The same through the extended protocol (the postgres crate).
    let mut c = connect(&proxy, SUPERUSER, PW, "ro");
    let who: String = c
        .query_one("select current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(who, "ctxa_ro");
    let (code, msg) = err_code(c.execute("insert into t values ($1)", &[&5i32]));
    assert_eq!(code, "25006", "{msg}");
    for (sql, code, names) in [
        (
            "SET default_transaction_read_only = off",
            "42501",
            "default_transaction_read_only",
        ),
        ("SET ROLE postgres", "42501", "\"role\""),
        ("RESET ROLE", "42501", "\"role\""),
        (
            "SET SESSION AUTHORIZATION postgres",
            "42501",
            "session_authorization",
        ),
        ("BEGIN READ WRITE", "25006", "default_transaction_read_only"),
    ] {
        let (got, msg) = err_code(c.execute(sql, &[]));
        assert!(got == code && msg.contains(names), "{sql}: {got} {msg}");
    }
    let (got, msg) = err_code(c.query_one(
        "select set_config($1, 'off', false)",
        &[&"default_transaction_read_only"],
    ));
    assert_eq!(got, "42501", "set_config with a bound name: {msg}");
    // Simple-protocol batches through the crate too.
    let (got, msg) = err_code(c.batch_execute("select 1; SET ROLE postgres; select 2"));
    assert!(got == "42501" && msg.contains("role"), "{got} {msg}");
    let who: String = c
        .query_one("select current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        who, "ctxa_ro",
        "still the context's role after the refusals"
    );
    // Startup options through the crate.
    let r = Client::connect(
        &format!(
            "{} options='-c default_transaction_read_only=off'",
            proxy.conn_str(SUPERUSER, PW, "ro")
        ),
        NoTls,
    );
    let (got, msg) = err_code(r);
    assert!(
        got == "42501" && msg.contains("default_transaction_read_only"),
        "{got} {msg}"
    );

    // A startup parameter of its own (not inside `options`) that would override a fixed
    // setting is refused at login too, naming it.
    for (name, value) in [
        ("default_transaction_read_only", "off"),
        ("role", "postgres"),
    ] {
        match Raw::login_with(
            proxy.port(),
            &[("user", SUPERUSER), ("database", "ro"), (name, value)],
            PW,
        ) {
            Err(LoginError::Refused(m)) => {
                let (code, msg) = (
                    m.code().unwrap_or_default(),
                    m.field(b'M').unwrap_or_default(),
                );
                assert!(
                    code == "42501" && msg.contains(name),
                    "{name}: {code} {msg}"
                );
            }
            Err(LoginError::Io(e)) => panic!("{name}: {e}"),
            Ok(_) => panic!("startup parameter {name}={value} was accepted"),
        }
    }

    // The read-write context of the same database and login is not read-only.
    let mut rw = connect(&proxy, SUPERUSER, PW, "rw");
    rw.execute("insert into t values (10)", &[]).unwrap();
    let (got, _) = err_code(rw.execute("SET ROLE postgres", &[]));
    assert_eq!(got, "42501", "a context with a role fixes it");
    // Defaults it does not set stay the client's.
    rw.batch_execute("SET statement_timeout = '3s'").unwrap();
}

#[test]
fn two_contexts_see_different_tables_and_never_share_connections() {
    let pg = shared_pg();
    let (proxy, db) = proxy(&pg, "ctxb");
    let mut pids: [HashSet<i32>; 2] = Default::default();
    let mut clients: Vec<(usize, Client)> = Vec::new();
    for i in 0..6 {
        let alias = if i % 2 == 0 { "ro" } else { "rw" };
        clients.push((i % 2, connect(&proxy, SUPERUSER, PW, alias)));
    }
    for _ in 0..10 {
        for (k, c) in clients.iter_mut() {
            let row = c
                .query_one("select pg_backend_pid(), current_user::text", &[])
                .unwrap();
            let who: String = row.get(1);
            assert_eq!(who, if *k == 0 { "ctxb_ro" } else { "ctxb_rw" });
            pids[*k].insert(row.get(0));
        }
    }
    assert!(
        pids[0].is_disjoint(&pids[1]),
        "a server connection served both contexts: {pids:?}"
    );
    // Each context's server connections are its own in pg_stat_activity: the proxy's login, in
    // the database, at most pool_size of them per context.
    let mut d = direct(&pg, &db);
    let live: HashSet<i32> = d
        .query(
            "select pid from pg_stat_activity where usename = 'ctxb_login' and datname = $1",
            &[&db],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        pids[0].is_subset(&live) && pids[1].is_subset(&live),
        "{pids:?} {live:?}"
    );
    assert!(pids[0].len() <= 2 && pids[1].len() <= 2, "{pids:?}");
    // Privileges come from the context, not the client's credentials.
    let (first, second) = clients.split_at_mut(1);
    let (ro, rw) = (&mut first[0].1, &mut second[0].1);
    let (got, msg) = err_code(ro.query("select count(*) from rw_only", &[]));
    assert_eq!(got, "42501", "{msg}");
    let n: i64 = rw
        .query_one("select count(*) from rw_only", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    rw.execute("insert into rw_only values (1)", &[]).unwrap();
}

/// A lease file the test rewrites: the control plane's stand-in (`command:cat <file>`).
fn write_lease(path: &std::path::Path, user: &str, password: &str, ttl_s: u64) {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + ttl_s;
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!("{{\"user\":\"{user}\",\"password\":\"{password}\",\"expires_at\":{exp}}}"),
    )
    .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn login_pids(d: &mut Client, login: &str) -> HashSet<i32> {
    d.query(
        "select pid from pg_stat_activity where usename = $1",
        &[&login],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn credential_leases_rotate_drain_and_fail_closed() {
    let pg = shared_pg();
    let p = "ctxc";
    let db = fresh_db(&pg, p);
    pg.psql(
        "postgres",
        &format!("create role {p}_rw nologin; create role {p}_login login noinherit password 'lease-pw-1' in role {p}_rw"),
    )
    .unwrap();
    pg.psql(
        &db,
        &format!("create table t (x int); grant select, insert on t to {p}_rw"),
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("helios-ctx-lease-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lease = dir.join("lease.json");
    // Leases of 6 s, refreshed 3 s before they expire: a new one every ~3 s.
    write_lease(&lease, &format!("{p}_login"), "lease-pw-1", 6);
    let dbs = format!(
        "[databases.leased]\ndbname = \"{db}\"\nuser = \"{p}_login\"\nrole = \"{p}_rw\"\n\
         pool_mode = \"transaction\"\npool_size = 4\nmin_idle = 2\nidle_timeout_ms = 300\n\
         credentials = \"command:cat {}\"\nlease_ttl_s = 6\nlease_refresh_window_s = 3\n\
         lease_refresh_jitter = 0.0\n",
        lease.display()
    );
    let auth = format!("method = \"trust\"\nadmin_users = [\"{SUPERUSER}\"]");
    let proxy = start_proxy(&config_fast_snapshots(&pg, &auth, "", &dbs), None);
    let login = format!("{p}_login");
    // The lease as /pools shows it (the pools of database "leased").
    let pools = |want: &dyn Fn(&serde_json::Value) -> bool| {
        poll(
            std::time::Duration::from_secs(15),
            "/pools to show the lease",
            || {
                let v = admin_json(proxy.admin_port(), "/pools");
                v["pools"]
                    .as_array()?
                    .iter()
                    .find(|p| p["database"] == "leased" && want(p))
                    .cloned()
            },
        )
    };
    let mut d = direct(&pg, &db);

    // Served with the first lease.
    let mut a = connect(&proxy, SUPERUSER, PW, "leased");
    let pid1: i32 = a.query_one("select pg_backend_pid()", &[]).unwrap().get(0);
    let who: String = a
        .query_one("select current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(who, format!("{p}_rw"));

    // The control plane rotates: a new password, the old one invalid from now on.
    pg.psql(
        "postgres",
        &format!("alter role {login} password 'lease-pw-2'"),
    )
    .unwrap();
    write_lease(&lease, &login, "lease-pw-2", 6);
    // The old lease's connection drains (closed once idle) and new ones log in with the new
    // password; the client notices nothing.
    poll(
        std::time::Duration::from_secs(15),
        "the old lease's connection to drain",
        || {
            a.execute("insert into t values (1)", &[]).unwrap();
            let live = login_pids(&mut d, &login);
            (!live.contains(&pid1)).then_some(())
        },
    );
    let pid2: i32 = a.query_one("select pg_backend_pid()", &[]).unwrap().get(0);
    assert_ne!(pid1, pid2);
    // min_idle is reseeded with the new lease: with no client statement running, the pool
    // keeps two idle connections of the login open, none of them the old lease's.
    poll(
        std::time::Duration::from_secs(15),
        "min_idle reseeded under the new lease",
        || {
            let live = login_pids(&mut d, &login);
            (live.len() >= 2 && !live.contains(&pid1)).then_some(())
        },
    );
    let p = pools(&|p| p["lease_generation"].as_u64() >= Some(2));
    assert!(
        p["lease_expires_at"].as_u64().is_some() && p["lease_error"].is_null(),
        "{p}"
    );
    // Secrets are in neither /config nor /pools.
    for route in ["/config", "/pools"] {
        let v = admin_json(proxy.admin_port(), route).to_string();
        assert!(
            v.contains("leased") && !v.contains("lease-pw"),
            "{route}: {v}"
        );
    }

    // The control plane goes down. A transaction open on its connection keeps working.
    a.batch_execute("begin; insert into t values (2)").unwrap();
    let in_tx: i32 = a.query_one("select pg_backend_pid()", &[]).unwrap().get(0);
    std::fs::remove_file(&lease).unwrap();
    // Once the lease expires, a new server connection fails closed, naming the context and the
    // expiry. (An open idle connection would go on serving new clients: each try closes the
    // login's other connections first, so it needs a new one.)
    let msg = poll(
        std::time::Duration::from_secs(20),
        "new connections to fail closed",
        || {
            for pid in login_pids(&mut d, &login) {
                if pid != in_tx {
                    terminate_backend(&mut d, pid);
                }
            }
            let r = try_connect(&proxy, SUPERUSER, PW, "leased")
                .and_then(|mut c| c.query_one("select 1", &[]).map(|_| ()));
            match r {
                Ok(_) => None,
                // The terminated connection itself, handed out before the pool noticed.
                Err(e)
                    if e.as_db_error().is_none()
                        || matches!(sqlstate(&e), Some("08006" | "57P01")) =>
                {
                    eprintln!("not yet: {e}");
                    None
                }
                Err(e) => Some(format!(
                    "{} {}",
                    sqlstate(&e).unwrap_or(""),
                    e.as_db_error().map(|d| d.message()).unwrap_or("")
                )),
            }
        },
    );
    assert!(
        msg.starts_with("28000") && msg.contains("\"leased\"") && msg.contains("expired at"),
        "{msg}"
    );
    let p = pools(&|p| p["lease_error"].is_string());
    assert!(
        p["lease_error"].as_str().unwrap().contains("lease.json"),
        "{p}"
    );
    // The console shows the same, never the secret.
    let shown = psql_ok(&proxy.url(SUPERUSER, PW, "heliosproxy"), "SHOW LEASES");
    assert!(
        shown.starts_with("leased|command|ctxc_login|") && !shown.contains("lease-pw"),
        "{shown}"
    );
    a.batch_execute("insert into t values (3); commit").unwrap();
    let n: i64 = d.query_one("select count(*) from t", &[]).unwrap().get(0);
    assert!(n >= 3, "{n}");

    // The source comes back: new connections work again.
    write_lease(&lease, &login, "lease-pw-2", 6);
    poll(std::time::Duration::from_secs(10), "recovery", || {
        let mut c = try_connect(&proxy, SUPERUSER, PW, "leased").ok()?;
        c.query_one("select 1", &[]).ok()
    });
    // Secrets are never logged.
    let log = proxy.log();
    assert!(
        !log.contains("lease-pw-1") && !log.contains("lease-pw-2"),
        "{log}"
    );
    assert!(log.contains("new upstream credential lease"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rotation under load: pgbench (tpcb-like, 16 clients, 60 s) through a context whose lease
/// changes password every 10 s; each rotation also changes the password in PostgreSQL at once
/// (the old one is invalid from then on, stricter than waiting for the drain). Zero failed
/// transactions, and the login's connections in `pg_stat_activity` are all from the latest
/// leases afterwards.
#[test]
fn leases_rotate_under_pgbench_load_without_failures() {
    let pg = shared_pg();
    let p = "ctxd";
    let db = fresh_db(&pg, p);
    let login = format!("{p}_login");
    pg.psql(
        "postgres",
        &format!("create role {p}_rw nologin; create role {login} login noinherit password 'rot-0' in role {p}_rw"),
    )
    .unwrap();
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", "1", &pg.url(&db)])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    pg.psql(
        &db,
        &format!("grant select, insert, update on all tables in schema public to {p}_rw"),
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("helios-ctx-rot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lease = dir.join("lease.json");
    write_lease(&lease, &login, "rot-0", 3600);
    let dbs = format!(
        "[databases.rot]\ndbname = \"{db}\"\nuser = \"{login}\"\nrole = \"{p}_rw\"\n\
         pool_mode = \"transaction\"\npool_size = 8\n\
         credentials = \"command:cat {}\"\nlease_ttl_s = 3600\nlease_refresh_window_s = 3599\n\
         lease_refresh_jitter = 0.0\n",
        lease.display()
    );
    let proxy = start_proxy(&config(&pg, TRUST, "", &dbs), None);
    // A window of 3599 s on a 3600 s lease: refreshed every second, a new generation only when
    // the test rotates.
    let bench = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            "16",
            "-j",
            "2",
            "-T",
            "60",
            &proxy.url(SUPERUSER, PW, "rot"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut d = direct(&pg, &db);
    let mut old = HashSet::new();
    for i in 1..=5 {
        std::thread::sleep(std::time::Duration::from_secs(10));
        // The connections open under the lease about to be replaced.
        old = login_pids(&mut d, &login);
        let pw = format!("rot-{i}");
        pg.psql("postgres", &format!("alter role {login} password '{pw}'"))
            .unwrap();
        write_lease(&lease, &login, &pw, 3600);
    }
    let out = bench.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.trim() == "number of failed transactions: 0 (0.000%)"),
        "{stdout}\n{stderr}"
    );
    let log = proxy.log();
    let rotations = log.matches("new upstream credential lease").count();
    assert!(rotations >= 6, "{rotations} leases: {log}");
    eprintln!("{rotations} leases during the run; pgbench: {stdout}");
    assert!(
        !log.contains("rot-1") && !log.contains("rot-5"),
        "a secret was logged"
    );
    // The connections of the lease before the last rotation drained: none is left (a client
    // was using them under load; each is closed when it comes back to the pool or sits idle).
    assert!(!old.is_empty());
    poll(
        std::time::Duration::from_secs(10),
        "old-lease connections to drain",
        || login_pids(&mut d, &login).is_disjoint(&old).then_some(()),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
