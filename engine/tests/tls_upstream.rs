//! TLS from the proxy to PostgreSQL (`nodes.tls`): a server started with `ssl = on`, `hostssl`
//! lines only and `clientcert=verify-full`, reached with each `sslmode`-like setting, on both
//! socket backends.

mod common;

use std::process::Command;

use common::*;
use helios_testkit::certs::TestCa;
use helios_testkit::{PgOptions, SUPERUSER};

fn run_psql(url: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn verify_full_reaches_a_hostssl_only_server_and_wrong_names_or_cas_are_refused() {
    let ca = TestCa::new("pg-ca").unwrap();
    let other = TestCa::new("not-pg-ca").unwrap();
    // The server's certificate names localhost only: 127.0.0.1 is a wrong name for it.
    let server = ca.server("pg", &["localhost"], &[]).unwrap();
    let client = ca.client("proxy", SUPERUSER).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        // PostgreSQL runs as `postgres` and refuses a key others can read.
        let st = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&server.key)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let pg = own_pg(PgOptions {
        hba: vec![
            "hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full".into(),
            "hostnossl all all 127.0.0.1/32 reject".into(),
        ],
        conf: vec![
            "ssl = on".into(),
            format!("ssl_cert_file = '{}'", server.cert.display()),
            format!("ssl_key_file = '{}'", server.key.display()),
            format!("ssl_ca_file = '{}'", ca.cert().display()),
        ],
    });
    let db = fresh_db(&pg, "tls_up");
    let node = |name: &str, host: &str, tls: &str, ca_path: &std::path::Path, cert: bool| {
        let mut n = format!(
            "[[nodes]]\nname = \"{name}\"\nhost = \"{host}\"\nport = {}\ntls = \"{tls}\"\ntls_ca = \"{}\"\n",
            pg.port,
            ca_path.display()
        );
        if cert {
            n += &format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                client.cert.display(),
                client.key.display()
            );
        }
        n + "\n"
    };
    let nodes = [
        node("full", "localhost", "verify-full", &ca.cert(), true),
        node("wrongname", "127.0.0.1", "verify-full", &ca.cert(), true),
        node("ca", "127.0.0.1", "verify-ca", &ca.cert(), true),
        node("require", "127.0.0.1", "require", &ca.cert(), true),
        node("prefer", "127.0.0.1", "prefer", &ca.cert(), true),
        node("othernode", "localhost", "verify-full", &other.cert(), true),
        node("nocert", "localhost", "verify-full", &ca.cert(), false),
        node("plain", "127.0.0.1", "disable", &ca.cert(), true),
    ]
    .concat();
    let mut dbs = String::new();
    for (alias, node) in [
        ("full", "full"),
        ("wrongname", "wrongname"),
        ("ca", "ca"),
        ("require", "require"),
        ("prefer", "prefer"),
        ("otherca", "othernode"),
        ("nocert", "nocert"),
        ("plain", "plain"),
    ] {
        dbs += &db_section(alias, &db, "transaction", 2, &format!("node = \"{node}\""));
    }
    for backend in ["uring", "glommio"] {
        // config() has one node "pg" (plain, first): the databases name theirs.
        let cfg = config(&pg, TRUST, "", &(nodes.clone() + &dbs))
            .replace("${HELIOS_TEST_IO_BACKEND:-uring}", backend);
        let proxy = start_proxy(&cfg, None);
        let q = "select ssl, client_dn from pg_stat_ssl where pid = pg_backend_pid()";
        for alias in ["full", "ca", "require", "prefer"] {
            let (ok, out, err) = run_psql(&proxy.url(SUPERUSER, "", alias), q);
            assert!(ok, "{backend}/{alias}: {err}\n{}", proxy.log());
            assert_eq!(out.trim(), "t|/CN=postgres", "{backend}/{alias}");
        }
        // Many statements and a large result over the upstream TLS session.
        let (ok, out, err) = run_psql(
            &proxy.url(SUPERUSER, "", "full"),
            "select sum(length(s)) from (select repeat('z', 10000) s from generate_series(1, 300)) t",
        );
        assert!(ok && out.trim() == "3000000", "{backend}: {out} {err}");
        let (ok, out, err) = run_psql(
            &proxy.url(SUPERUSER, "", "full"),
            "select length(string_agg(repeat('q', 1000), '')) from generate_series(1, 2000)",
        );
        assert!(ok && out.trim() == "2000000", "{backend}: {out} {err}");
        for (alias, why) in [
            ("wrongname", "not valid for name \"127.0.0.1\""),
            ("otherca", "UnknownIssuer"),
            ("nocert", "requires a valid client certificate"),
            ("plain", "no encryption"),
        ] {
            let (ok, _, err) = run_psql(&proxy.url(SUPERUSER, "", alias), "select 1");
            assert!(!ok, "{backend}/{alias}: connected");
            assert!(err.contains(why), "{backend}/{alias}: {err}");
        }
    }
}
