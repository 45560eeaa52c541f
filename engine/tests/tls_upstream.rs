//! TLS from the proxy to PostgreSQL (`nodes.tls`): a server started with `ssl = on`, `hostssl`
//! lines only and `clientcert=verify-full`, reached with each `sslmode`-like setting, on both
//! socket backends; SCRAM-SHA-256-PLUS towards it, shown by a man in the middle that the
//! binding catches.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

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

/// A TLS-terminating man in the middle: it answers the proxy's SSLRequest with a certificate of
/// its own for `localhost` (issued by the CA the proxy trusts, so `verify-full` passes), opens
/// its own TLS session to PostgreSQL and relays the plaintext. Only channel binding can tell:
/// the proxy binds its SCRAM proof to the certificate it saw (the middle's), PostgreSQL checks
/// it against its own. Returns the port it listens on; serves until the process ends.
fn tls_middle(own: &helios_testkit::certs::Issued, ca: &std::path::Path, pg_port: u16) -> u16 {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&own.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&own.key).unwrap();
    let server = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let (server, client) = (server.clone(), client.clone());
            std::thread::spawn(move || {
                let _ = relay(sock?, server, client, pg_port);
                std::io::Result::Ok(())
            });
        }
    });
    port
}

fn relay(
    mut front: TcpStream,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    pg_port: u16,
) -> std::io::Result<()> {
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];
    let mut req = [0u8; 8];
    front.read_exact(&mut req)?;
    assert_eq!(req, SSL_REQUEST, "the proxy starts with an SSLRequest");
    front.write_all(b"S")?;
    let mut front = rustls::StreamOwned::new(rustls::ServerConnection::new(server).unwrap(), front);
    let mut back = TcpStream::connect(("127.0.0.1", pg_port))?;
    back.write_all(&SSL_REQUEST)?;
    let mut s = [0u8; 1];
    back.read_exact(&mut s)?;
    assert_eq!(&s, b"S", "PostgreSQL has ssl = on");
    let mut back = rustls::StreamOwned::new(
        rustls::ClientConnection::new(client, "localhost".try_into().unwrap()).unwrap(),
        back,
    );
    while front.conn.is_handshaking() {
        front.conn.complete_io(&mut front.sock)?;
    }
    while back.conn.is_handshaking() {
        back.conn.complete_io(&mut back.sock)?;
    }
    for s in [&front.sock, &back.sock] {
        s.set_read_timeout(Some(Duration::from_millis(5)))?;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        for (from, to) in [(0, 1), (1, 0)] {
            let got = if from == 0 {
                front.read(&mut buf)
            } else {
                back.read(&mut buf)
            };
            match got {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    if to == 1 {
                        back.write_all(&buf[..n])?;
                        back.flush()?;
                    } else {
                        front.write_all(&buf[..n])?;
                        front.flush()?;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[test]
fn upstream_scram_binds_to_the_servers_certificate() {
    let ca = TestCa::new("pg-ca").unwrap();
    let server = ca.server("pg", &["localhost"], &[]).unwrap();
    let middle = ca.server("middle", &["localhost"], &[]).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        let st = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&server.key)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let pg = own_pg(PgOptions {
        hba: vec![
            // The control: a cleartext password has nothing to bind, so it passes the middle.
            "hostssl cleartext all 127.0.0.1/32 password".into(),
            "hostssl all all 127.0.0.1/32 scram-sha-256".into(),
            "hostnossl all all 127.0.0.1/32 reject".into(),
        ],
        conf: vec![
            "ssl = on".into(),
            format!("ssl_cert_file = '{}'", server.cert.display()),
            format!("ssl_key_file = '{}'", server.key.display()),
        ],
    });
    let db = fresh_db(&pg, "tls_bind");
    pg.psql("postgres", "create database cleartext").unwrap();
    let middle_port = tls_middle(&middle, &ca.cert(), pg.port);
    let node = |name: &str, port: u16| {
        format!(
            "[[nodes]]\nname = \"{name}\"\nhost = \"localhost\"\nport = {port}\ntls = \"verify-full\"\ntls_ca = \"{}\"\n\n",
            ca.cert().display()
        )
    };
    let nodes = node("direct", pg.port) + &node("middle", middle_port);
    let dbs = db_section("direct", &db, "transaction", 2, "node = \"direct\"")
        + &db_section("middle", &db, "transaction", 2, "node = \"middle\"")
        + &db_section(
            "middleclear",
            "cleartext",
            "transaction",
            2,
            "node = \"middle\"",
        );
    for backend in ["uring", "glommio"] {
        let cfg = config(&pg, TRUST, "", &(nodes.clone() + &dbs))
            .replace("${HELIOS_TEST_IO_BACKEND:-uring}", backend);
        let proxy = start_proxy(&cfg, None);
        let q = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
        // Straight to PostgreSQL: SCRAM (bound to its certificate) passes.
        let (ok, out, err) = run_psql(&proxy.url(SUPERUSER, "", "direct"), q);
        assert!(
            ok && out.trim() == "t",
            "{backend}: {out} {err}\n{}",
            proxy.log()
        );
        // Through the middle without SCRAM: the relay works.
        let (ok, out, err) = run_psql(&proxy.url(SUPERUSER, "", "middleclear"), q);
        assert!(
            ok && out.trim() == "t",
            "{backend}: {out} {err}\n{}",
            proxy.log()
        );
        // Through the middle with SCRAM: the proxy used SCRAM-SHA-256-PLUS with the middle's
        // certificate, and PostgreSQL refuses. (Plain SCRAM-SHA-256 would pass here.)
        let (ok, _, err) = run_psql(&proxy.url(SUPERUSER, "", "middle"), q);
        assert!(
            !ok,
            "{backend}: SCRAM through a TLS man in the middle passed"
        );
        assert!(
            err.contains("channel binding"),
            "{backend}: {err}\n{}",
            proxy.log()
        );
    }
}
