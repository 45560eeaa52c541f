//! The admin dashboard in a real browser: `admin/ui-test/dashboard.test.mjs` (Debian's chromium
//! through playwright-core) against this proxy with real PostgreSQL behind it — every panel
//! renders, disabling a node from the Nodes panel changes what the proxy does (checked with
//! psql through the proxy), a shadow diff of two nodes matches, the SQL panel runs a query
//! with the keyboard, no console error; screenshots in `target/ui-test/`.
//!
//! Needs `chromium` and the script's node modules: `scripts/test.sh` (or `scripts/ui-test.sh`)
//! installs both; without them this test fails saying so.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use helios_testkit::SUPERUSER;

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
    // With anomaly detection on: the Anomalies panel has an event to list.
    let plugins =
        plugins_section("", &plugin_entry("block-drop", "")) + "\n[anomaly]\nenabled = true\n";
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
        .env("HELIOS_SCREENSHOT", &shot)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "the browser test failed: {stderr}");
    assert!(shot.exists(), "no screenshot at {}", shot.display());
}
