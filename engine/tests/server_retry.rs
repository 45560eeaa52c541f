//! A server connection killed while idle in the pool (pg_terminate_backend, a server restart)
//! is found dead on first use: the proxy sends what it had sent to it to another connection,
//! once, and the client never sees 08006 (engine/src/frontend/session.rs, `server_failed`).

mod common;

use std::time::Duration;

use common::*;
use helios_testkit::SUPERUSER;
use postgres::Client;

fn backend(c: &mut Client) -> i32 {
    c.query_one("select pg_backend_pid()", &[]).unwrap().get(0)
}

#[test]
fn a_server_connection_killed_while_idle_is_replaced_without_an_error() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "retry");
    pg.psql(&db, "create table t (x int)").unwrap();
    // One server connection per pool: the killed one is the one the next request gets.
    let proxy = both_modes_proxy(&pg, &db, 1, "");
    let mut d = direct(&pg, &db);
    for alias in ["tx", "sess"] {
        let mut c = connect(&proxy, SUPERUSER, "", alias);
        let st = c.prepare("select $1::int * 2").unwrap();
        // In transaction mode every request takes the idle connection; in session mode the
        // first request of a new client does.
        for round in 0..3 {
            if alias == "sess" {
                c = connect(&proxy, SUPERUSER, "", alias);
            }
            let pid = backend(&mut c);
            if alias == "sess" {
                // The client leaves: its connection is reset and goes back to the pool.
                drop(c);
                std::thread::sleep(Duration::from_millis(100));
                c = connect(&proxy, SUPERUSER, "", alias);
            }
            terminate_backend(&mut d, pid);
            // A simple query, a transaction, a prepared statement, a write: all served.
            let r = match round {
                0 => c
                    .query_one("select 41 + 1", &[])
                    .map(|r| r.get::<_, i32>(0)),
                1 => c.transaction().and_then(|mut t| {
                    t.execute("insert into t values (1)", &[])?;
                    let n: i64 = t.query_one("select count(*) from t", &[])?.get(0);
                    t.commit()?;
                    Ok(n as i32)
                }),
                _ => {
                    let st = if alias == "sess" {
                        c.prepare("select $1::int * 2").unwrap()
                    } else {
                        st.clone()
                    };
                    c.query_one(&st, &[&21]).map(|r| r.get::<_, i32>(0))
                }
            };
            let v = r.unwrap_or_else(|e| panic!("{alias} round {round}: {e:?}"));
            assert!(v > 0, "{alias} round {round}");
            assert_ne!(backend(&mut c), pid, "{alias}: a new server connection");
        }
    }
    // Exactly one row per write: nothing ran twice.
    let n: i64 = d.query_one("select count(*) from t", &[]).unwrap().get(0);
    assert_eq!(n, 2);
    assert!(
        proxy.log().contains("was found dead on first use"),
        "the retry path ran (not only the idle check): {}",
        proxy.log()
    );
}

#[test]
fn a_connection_that_dies_after_answering_is_still_an_error() {
    // Mid-transaction the client must hear about it: nothing is retried once the server
    // answered (the transaction's earlier statements are gone with it).
    let pg = shared_pg();
    let db = fresh_db(&pg, "retry_mid");
    let proxy = both_modes_proxy(&pg, &db, 1, "");
    let mut d = direct(&pg, &db);
    let mut c = connect(&proxy, SUPERUSER, "", "tx");
    c.batch_execute("begin").unwrap();
    let pid = backend(&mut c);
    terminate_backend(&mut d, pid);
    let e = c.batch_execute("select 1").unwrap_err();
    assert!(
        sqlstate(&e).map_or(e.is_closed(), |s| s == "57P01" || s.starts_with("08")),
        "{e:?}"
    );
}
