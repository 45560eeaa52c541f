//! The admin dashboard in a real browser: `admin/ui-test/dashboard.test.mjs` (Debian's chromium
//! through playwright-core) against this proxy with real PostgreSQL behind it — every panel
//! renders, disabling a node from the Nodes panel and forcing a replica unhealthy from the Chaos
//! panel change what the proxy does (checked with psql through the proxy), a shadow diff of two nodes matches, the SQL panel runs a query
//! with the keyboard, no console error; screenshots in `target/ui-test/`.
//!
//! Needs `chromium` and the script's node modules: `scripts/test.sh` (or `scripts/ui-test.sh`)
//! installs both; without them this test fails saying so.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use helios_testkit::{PgCluster, PgOptions, SUPERUSER};

#[test]
fn dashboard_works_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ui = root.join("admin/ui-test");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists() && ui.join("node_modules/playwright-core").exists(),
        "the browser test needs {chromium} and admin/ui-test/node_modules: run scripts/ui-test.sh \
         (apt-get install chromium; npm ci in admin/ui-test)"
    );
    let pg = shared_pg();
    // A streaming standby of the same cluster and a database `split` over node pg and it, so
    // the Chaos panel's override changes real routing.
    let standby = PgCluster::standby_of(&pg, PgOptions::default()).expect("standby");
    let topology = format!(
        "\n[[nodes]]\nname = \"rep\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"replica\"\n\n\
         [health]\ninterval_ms = 100\nuser = \"{SUPERUSER}\"\npassword = \"{PW}\"\n\n{}",
        standby.port,
        db_section(
            "split",
            "postgres",
            "transaction",
            2,
            "nodes = [\"pg\", \"rep\"]\nread_write_split = true\ndrift = true"
        )
    );
    let journal = std::env::temp_dir().join(format!("helios-dash-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&journal);
    let plugins = plugins_section("", &plugin_entry("block-drop", ""))
        + &topology
        + &format!(
            "\n[journal]\nenabled = true\npath = \"{}\"\n",
            journal.display()
        )
        // With anomaly detection on: the Anomalies panel has an event to list; with drift
        // detection on (one-second windows), a drift alert too.
        + "\n[anomaly]\nenabled = true\n\n[drift]\nenabled = true\nwindow_s = 1\ntick_s = 1\nbaseline_windows = 2\n";
    // The admin API logs at trace level here, so that the check at the end (the token in no
    // log line) covers everything it could log. One test in this binary: no other thread reads
    // the environment meanwhile.
    std::env::set_var("RUST_LOG", "info,helios_admin=trace");
    let proxy = two_node_admin_proxy(&pg, "", &plugins);
    // Some traffic for the counters, the chart and the pools of both nodes.
    for db in ["app", "app2"] {
        let mut c = connect(&proxy, SUPERUSER, "", db);
        for _ in 0..50 {
            c.simple_query("select 1").unwrap();
        }
    }
    connect(&proxy, SUPERUSER, "", "app")
        .simple_query("select 1 where '' = '' or 1=1")
        .unwrap();
    // Writes for the journal (the Replay panel): a table the shadow test does not compare.
    let mut c = connect(&proxy, SUPERUSER, "", "app");
    c.batch_execute("create table jr(x int); insert into jr values (1), (2)")
        .unwrap();
    // A session of `split` whose statements mostly fail: once it ends, its summary gives an
    // error_rate_high drift alert, listed in the Anomalies panel.
    {
        let mut s = connect(&proxy, SUPERUSER, "", "split");
        s.simple_query("select 1").unwrap();
        for _ in 0..5 {
            assert!(s.simple_query("select nosuch_col_zz").is_err());
        }
    }
    poll(
        std::time::Duration::from_secs(20),
        "a drift alert at /drift",
        || {
            let (st, _, body) =
                http(proxy.admin_port(), "GET", "/drift", Some(ADMIN_TOKEN)).ok()?;
            (st == 200 && body.contains("error_rate_high")).then_some(())
        },
    );
    // Only this run's screenshots (a -failed.png of an earlier run would mislead).
    let _ = std::fs::remove_dir_all(root.join("target/ui-test"));
    let shot = root.join("target/ui-test/dashboard.png");
    let out = Command::new("node")
        .arg("dashboard.test.mjs")
        .current_dir(&ui)
        .env(
            "HELIOS_ADMIN_URL",
            format!("http://127.0.0.1:{}", proxy.admin_port()),
        )
        .env("HELIOS_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("HELIOS_APP2_URL", proxy.url(SUPERUSER, "", "app2"))
        .env("HELIOS_SPLIT_URL", proxy.url(SUPERUSER, "", "split"))
        .env("HELIOS_SCREENSHOT", &shot)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "the browser test failed: {stderr}");
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    // The token went into no log line.
    let log = proxy.log();
    assert!(
        log.contains("admin API"),
        "an empty log proves nothing: {log}"
    );
    assert!(
        !log.contains(ADMIN_TOKEN),
        "the admin token is in the proxy's log"
    );
    let _ = std::fs::remove_dir_all(&journal);
}
