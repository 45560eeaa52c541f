//! Logging in: client authentication (SCRAM, md5, trust) against userlist secrets of every
//! kind, upstream authentication (SCRAM, md5, trust), and the refusals clients must be able to
//! tell apart: 28P01, 3D000, 53300 (too many clients, pool exhausted), and the server's own
//! refusals of the proxy's login (42501, 3D000, 53300, 28P01) passed on intact.

mod common;

use std::time::{Duration, Instant};

use common::*;
use helios_testkit::{PgCluster, PgOptions, SUPERUSER};

/// Roles `u_plain`, `u_scram`, `u_md5` and the userlist that knows them by a plain password, a
/// SCRAM verifier taken from the server, and an md5 hash.
fn users_and_userlist(pg: &PgCluster) -> String {
    // Tests of this binary share the cluster and run in parallel: create the roles once.
    static CREATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = CREATE.lock().unwrap_or_else(|e| e.into_inner());
    pg.psql(
        "postgres",
        "do $$ begin \
           if not exists (select from pg_roles where rolname = 'u_plain') then \
             create role u_plain login password 'pw-plain'; \
             create role u_scram login password 'pw-scram'; \
             create role u_md5 login password 'pw-md5'; \
           end if; end $$",
    )
    .unwrap();
    drop(guard);
    let verifier = pg
        .psql(
            "postgres",
            "select rolpassword from pg_authid where rolname = 'u_scram'",
        )
        .unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    let md5 = pg
        .psql("postgres", "select 'md5' || md5('pw-md5' || 'u_md5')")
        .unwrap();
    format!(
        "; comment\n\"u_plain\" \"pw-plain\"\n\"u_scram\" \"{verifier}\"\n\"u_md5\" \"{md5}\"\n\"postgres\" \"{PW}\"\n"
    )
}

fn current_user(proxy: &helios_testkit::proxy::Proxy, user: &str, pw: &str, db: &str) -> String {
    let mut c = connect(proxy, user, pw, db);
    c.query_one("select current_user::text", &[])
        .unwrap()
        .get(0)
}

fn login_error(proxy: &helios_testkit::proxy::Proxy, user: &str, pw: &str, db: &str) -> String {
    match try_connect(proxy, user, pw, db) {
        Ok(_) => panic!("{user}/{pw} logged in to {db}; expected a refusal"),
        Err(e) => sqlstate(&e)
            .unwrap_or_else(|| panic!("{user} to {db}: no SQLSTATE in {e:?}"))
            .to_string(),
    }
}

/// `[databases.app]` (upstream as the superuser) and `[databases.own]` (upstream as the
/// client itself, with its plain userlist password).
fn auth_databases(db: &str) -> String {
    db_section("app", db, "transaction", 4, "")
        + &format!("[databases.own]\ndbname = \"{db}\"\npool_size = 4\n")
}

#[test]
fn scram_auth_with_plain_and_verifier_secrets() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "scram");
    let userlist = users_and_userlist(&pg);
    let auth = "method = \"scram-sha-256\"\nuserlist = \"userlist.txt\"";
    let proxy = start_proxy(
        &config(&pg, auth, "", &auth_databases(&db)),
        Some(&userlist),
    );
    assert_eq!(
        current_user(&proxy, "u_plain", "pw-plain", "app"),
        SUPERUSER
    );
    assert_eq!(
        current_user(&proxy, "u_scram", "pw-scram", "app"),
        SUPERUSER
    );
    // Logged in upstream as the client's own user with its plain password.
    assert_eq!(
        current_user(&proxy, "u_plain", "pw-plain", "own"),
        "u_plain"
    );
    assert_eq!(login_error(&proxy, "u_plain", "wrong", "app"), "28P01");
    assert_eq!(login_error(&proxy, "u_scram", "wrong", "app"), "28P01");
    assert_eq!(login_error(&proxy, "nobody", "pw-plain", "app"), "28P01");
    // An md5 hash cannot answer a SCRAM exchange.
    assert_eq!(login_error(&proxy, "u_md5", "pw-md5", "app"), "28P01");
    assert_eq!(
        login_error(&proxy, "u_scram", "pw-scram", "no_such_db"),
        "3D000"
    );
    // psql (libpq) too.
    let out = psql_ok(&proxy.url("u_scram", "pw-scram", "app"), "select 'psql ok'");
    assert_eq!(out.trim(), "psql ok");
    let out = psql(&proxy.url("u_scram", "nope", "app"), "select 1");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn md5_auth_with_plain_and_md5_secrets() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "md5auth");
    let userlist = users_and_userlist(&pg);
    let auth = "method = \"md5\"\nuserlist = \"userlist.txt\"";
    let proxy = start_proxy(
        &config(&pg, auth, "", &auth_databases(&db)),
        Some(&userlist),
    );
    assert_eq!(
        current_user(&proxy, "u_plain", "pw-plain", "app"),
        SUPERUSER
    );
    assert_eq!(current_user(&proxy, "u_md5", "pw-md5", "app"), SUPERUSER);
    assert_eq!(
        current_user(&proxy, "u_plain", "pw-plain", "own"),
        "u_plain"
    );
    assert_eq!(login_error(&proxy, "u_md5", "wrong", "app"), "28P01");
    assert_eq!(login_error(&proxy, "u_plain", "wrong", "app"), "28P01");
    assert_eq!(login_error(&proxy, "nobody", "x", "app"), "28P01");
    // A SCRAM verifier cannot check an md5 answer.
    assert_eq!(login_error(&proxy, "u_scram", "pw-scram", "app"), "28P01");
    assert_eq!(
        login_error(&proxy, "u_md5", "pw-md5", "no_such_db"),
        "3D000"
    );
    let out = psql_ok(&proxy.url("u_md5", "pw-md5", "app"), "select 'psql ok'");
    assert_eq!(out.trim(), "psql ok");
}

#[test]
fn trust_auth_needs_no_password_but_a_known_database() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "trust");
    let proxy = start_proxy(
        &config(&pg, TRUST, "", &db_section("app", &db, "session", 4, "")),
        None,
    );
    assert_eq!(current_user(&proxy, "anyone", "", "app"), SUPERUSER);
    assert_eq!(login_error(&proxy, "anyone", "", "no_such_db"), "3D000");
    let out = psql_ok(
        &format!("postgres://anyone@127.0.0.1:{}/app", proxy.port()),
        "select 'psql ok'",
    );
    assert_eq!(out.trim(), "psql ok");
}

#[test]
fn upstream_login_with_md5_and_trust() {
    let pg = own_pg(PgOptions {
        hba: vec![
            "host all md5user 127.0.0.1/32 md5".into(),
            "host all trustuser 127.0.0.1/32 trust".into(),
        ],
        conf: vec![],
    });
    pg.psql(
        "postgres",
        "set password_encryption = 'md5'; create role md5user login password 'md5-pw'; \
         create role trustuser login",
    )
    .unwrap();
    let stored = pg
        .psql(
            "postgres",
            "select rolpassword from pg_authid where rolname = 'md5user'",
        )
        .unwrap();
    assert!(
        stored.starts_with("md5"),
        "md5user's password is not md5: {stored}"
    );
    let dbs = "[databases.up_md5]\ndbname = \"postgres\"\nuser = \"md5user\"\npassword = \"md5-pw\"\n\
               [databases.up_trust]\ndbname = \"postgres\"\nuser = \"trustuser\"\n\
               [databases.up_scram]\ndbname = \"postgres\"\nuser = \"postgres\"\npassword = \"helios-test-pw\"\n\
               [databases.up_bad]\ndbname = \"postgres\"\nuser = \"md5user\"\npassword = \"wrong\"\n";
    let proxy = start_proxy(&config(&pg, TRUST, "", dbs), None);
    assert_eq!(current_user(&proxy, "client", "", "up_md5"), "md5user");
    assert_eq!(current_user(&proxy, "client", "", "up_trust"), "trustuser");
    assert_eq!(current_user(&proxy, "client", "", "up_scram"), SUPERUSER);
    // The server's refusal of the proxy's own login reaches the client with its SQLSTATE.
    assert_eq!(login_error(&proxy, "client", "", "up_bad"), "28P01");
    // And the proxy keeps serving after it.
    assert_eq!(current_user(&proxy, "client", "", "up_md5"), "md5user");
}

/// When PostgreSQL refuses the proxy's own login for a client, the client gets the server's
/// SQLSTATE and message (prefixed with the node), not a generic connection error: a revoked
/// CONNECT privilege (42501), a missing database (3D000), a role over its connection limit
/// (53300), a wrong upstream password (28P01).
#[test]
fn server_login_refusals_reach_the_client_with_their_sqlstate() {
    let pg = shared_pg();
    let revoked = fresh_db(&pg, "revoked");
    pg.psql(
        "postgres",
        &format!(
            "do $$ begin \
               if not exists (select from pg_roles where rolname = 'limited') then \
                 create role limited login password 'limited-pw'; \
                 create role capped login password 'capped-pw' connection limit 0; \
               end if; end $$; \
             revoke connect on database {revoked} from public"
        ),
    )
    .unwrap();
    let dbs = format!(
        "[databases.revoked]\ndbname = \"{revoked}\"\nuser = \"limited\"\npassword = \"limited-pw\"\n\
         [databases.gone]\ndbname = \"no_such_database\"\nuser = \"{SUPERUSER}\"\npassword = \"{PW}\"\n\
         [databases.capped]\ndbname = \"postgres\"\nuser = \"capped\"\npassword = \"capped-pw\"\n\
         [databases.badpw]\ndbname = \"postgres\"\nuser = \"limited\"\npassword = \"wrong\"\n\
         [databases.session_revoked]\ndbname = \"{revoked}\"\nuser = \"limited\"\npassword = \"limited-pw\"\npool_mode = \"session\"\n"
    );
    let proxy = start_proxy(&config(&pg, TRUST, "", &dbs), None);
    for (alias, code, text) in [
        ("revoked", "42501", "permission denied for database"),
        ("session_revoked", "42501", "permission denied for database"),
        ("gone", "3D000", "\"no_such_database\" does not exist"),
        (
            "capped",
            "53300",
            "too many connections for role \"capped\"",
        ),
        ("badpw", "28P01", "password authentication failed"),
    ] {
        // Twice: the pool that failed to open a connection fails the same way again.
        for attempt in 1..=2 {
            let e = try_connect(&proxy, "client", "", alias)
                .map(|_| ())
                .expect_err(alias);
            let db = e.as_db_error().unwrap_or_else(|| panic!("{alias}: {e:?}"));
            assert_eq!(
                db.code().code(),
                code,
                "{alias} (attempt {attempt}): {db:?}"
            );
            assert!(
                db.message().contains(text) && db.message().contains("server pg"),
                "{alias}: the server's message, naming the node: {:?}",
                db.message()
            );
        }
    }
    // The hand-written client sees the same, as a FATAL ErrorResponse.
    let Err(LoginError::Refused(m)) = Raw::login(proxy.port(), "client", "", "revoked") else {
        panic!("the login to revoked was not refused");
    };
    assert_eq!(m.code().as_deref(), Some("42501"), "{m:?}");
    assert_eq!(m.field(b'S').as_deref(), Some("FATAL"), "{m:?}");
    // Granting the privilege back lets the same pool in.
    pg.psql(
        "postgres",
        &format!("grant connect on database {revoked} to limited"),
    )
    .unwrap();
    assert_eq!(current_user(&proxy, "client", "", "revoked"), "limited");
}

#[test]
fn max_client_connections_exceeded_gets_53300() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "maxclients");
    let proxy = start_proxy(
        &config(
            &pg,
            TRUST,
            "max_client_connections = 3",
            &db_section("app", &db, "transaction", 4, ""),
        ),
        None,
    );
    let mut held: Vec<_> = (0..3)
        .map(|_| connect(&proxy, SUPERUSER, "", "app"))
        .collect();
    let e = try_connect(&proxy, SUPERUSER, "", "app")
        .map(|_| ())
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("53300"), "{e}");
    // The clients already in are unaffected.
    for c in &mut held {
        assert_eq!(c.query_one("select 1", &[]).unwrap().get::<_, i32>(0), 1);
    }
    // A place freed is a place taken.
    drop(held.pop());
    let mut c = poll(Duration::from_secs(5), "a free client slot", || {
        try_connect(&proxy, SUPERUSER, "", "app").ok()
    });
    assert_eq!(c.query_one("select 2", &[]).unwrap().get::<_, i32>(0), 2);
}

/// Raw clients (trust) until there are `n` on each shard.
fn clients_per_shard(port: u16, db: &str, n: usize) -> [Vec<Raw>; 2] {
    let mut by_shard: [Vec<Raw>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..200 {
        if by_shard.iter().all(|v| v.len() >= n) {
            return by_shard;
        }
        let r = Raw::trust(port, db);
        let s = r.shard() as usize;
        assert!(s < 2, "shard {s} with cores = 2");
        if by_shard[s].len() < n {
            by_shard[s].push(r);
        }
    }
    panic!("could not get {n} clients on each shard in 200 connections");
}

#[test]
fn pool_exhaustion_returns_53300_naming_the_pool() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "exhaust");
    // pool_size 1 over 2 shards: each shard still gets one connection.
    let proxy = start_proxy(
        &config(
            &pg,
            TRUST,
            "",
            &db_section("app", &db, "transaction", 1, "checkout_timeout_ms = 300"),
        ),
        None,
    );
    let [mut s0, mut s1] = clients_per_shard(proxy.port(), "app", 2);
    for (shard, clients) in [(0, &mut s0), (1, &mut s1)] {
        let (holder, waiter) = clients.split_at_mut(1);
        let holder = &mut holder[0];
        let waiter = &mut waiter[0];
        holder.query("begin");
        assert_eq!(
            first_value(&holder.query("select 'held'")).as_deref(),
            Some("held")
        );
        let started = Instant::now();
        let msgs = waiter.query("select 1");
        let waited = started.elapsed();
        let err = msgs.iter().find(|m| m.tag == b'E').unwrap_or_else(|| {
            panic!("shard {shard}: expected 53300 while the only connection is held, got {msgs:?}")
        });
        assert_eq!(err.code().as_deref(), Some("53300"), "{err:?}");
        let text = err.field(b'M').unwrap();
        assert!(
            text.contains("pool") && text.contains("app"),
            "the error must name the pool: {text}"
        );
        assert!(
            waited >= Duration::from_millis(250),
            "gave up after {waited:?}, before the timeout"
        );
        assert!(waited < Duration::from_secs(3), "waited {waited:?}");
        assert_eq!(ready_status(&msgs), b'I');
        // Extended protocol: the same error, then the batch ends at Sync.
        let msgs = waiter.extended("", Some("select 2"), &[]);
        assert_eq!(first_error(&msgs).as_deref(), Some("53300"), "{msgs:?}");
        // The held transaction is untouched; once it ends the waiter gets the connection.
        assert_eq!(
            first_value(&holder.query("select 'still held'")).as_deref(),
            Some("still held")
        );
        holder.query("commit");
        assert_eq!(
            first_value(&waiter.query("select 'got it'")).as_deref(),
            Some("got it")
        );
    }
    // The Rust client sees the same SQLSTATE.
    s0[0].query("begin");
    s0[0].query("select 1");
    s1[0].query("begin");
    s1[0].query("select 1");
    let mut c = connect(&proxy, SUPERUSER, "", "app");
    let e = c.query("select 1", &[]).unwrap_err();
    assert_eq!(sqlstate(&e), Some("53300"), "{e}");
}
