//! TLS between clients and the proxy, with a CA and certificates the harness makes (openssl):
//! psql with `sslmode=verify-full`, plain text refused when TLS is required, pgbench over TLS in
//! both pool modes, bad bytes around the handshake, direct TLS (ALPN `postgresql`), Python
//! drivers (psycopg2 from Debian, psycopg 3 and asyncpg from PyPI). Each test
//! runs on both socket backends (the io_uring ring and glommio's streams).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use helios_testkit::certs::{Issued, TestCa};
use helios_testkit::proxy::Proxy;
use helios_testkit::{PgCluster, SUPERUSER};

const BACKENDS: [&str; 2] = ["uring", "glommio"];

/// `[tls]` for a server certificate (mode left to its default, or `extra` lines).
fn tls_section(server: &Issued, extra: &str) -> String {
    format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
        server.cert.display(),
        server.key.display()
    )
}

/// A trust-auth proxy on `backend` with the `sess` / `tx` aliases and `tls`.
fn tls_proxy(pg: &PgCluster, dbname: &str, backend: &str, tls: &str) -> Proxy {
    let dbs = db_section("sess", dbname, "session", 4, "")
        + &db_section("tx", dbname, "transaction", 4, "");
    let cfg = config(pg, TRUST, "", &dbs).replace("${HELIOS_TEST_IO_BACKEND:-uring}", backend)
        + "\n"
        + tls;
    start_proxy(&cfg, None)
}

/// A libpq connection string through the proxy.
fn libpq(proxy: &Proxy, host: &str, db: &str, ssl: &str) -> String {
    format!(
        "host={host} port={} user={SUPERUSER} dbname={db} connect_timeout=10 {ssl}",
        proxy.port()
    )
}

fn run_psql(conn: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(conn)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify_full(ca: &TestCa) -> String {
    format!("sslmode=verify-full sslrootcert={}", ca.cert().display())
}

#[test]
fn psql_verify_full_connects_and_plain_text_is_refused() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "tls_psql");
    let ca = TestCa::new("helios-test-ca").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    for backend in BACKENDS {
        let proxy = tls_proxy(&pg, &db, backend, &tls_section(&server, ""));
        for alias in ["sess", "tx"] {
            let conn = libpq(&proxy, "localhost", alias, &verify_full(&ca));
            let (ok, out, err) = run_psql(&conn, "\\conninfo");
            assert!(ok, "{backend}/{alias}: {err}\n{}", proxy.log());
            assert!(out.contains("SSL connection"), "{backend}: {out}");
            let (ok, out, err) = run_psql(&conn, "select 40 + 2");
            assert!(ok && out.trim() == "42", "{backend}/{alias}: {out} {err}");
            // A result larger than one TLS record (16 KiB) and one receive buffer, both ways.
            let big = "y".repeat(100_000);
            let (ok, out, err) = run_psql(
                &conn,
                &format!("select length('{big}'), length(repeat('x', 1000000)), md5(repeat('x', 1000000)) = md5(string_agg(s, '')) from (select repeat('x', 1000) s from generate_series(1, 1000)) t"),
            );
            assert!(ok, "{backend}/{alias}: {err}");
            assert_eq!(out.trim(), "100000|1000000|t", "{backend}/{alias}");
        }
        // sslmode=require encrypts without checking the certificate.
        let (ok, _, err) = run_psql(
            &libpq(&proxy, "localhost", "tx", "sslmode=require"),
            "select 1",
        );
        assert!(ok, "{backend}: sslmode=require: {err}");
        // verify-full checks the name: the certificate is for localhost and 127.0.0.1, not for
        // `wrong.example` (reached at 127.0.0.1 through hostaddr).
        let (ok, _, err) = run_psql(
            &format!(
                "{} hostaddr=127.0.0.1",
                libpq(&proxy, "wrong.example", "tx", &verify_full(&ca))
            ),
            "select 1",
        );
        assert!(
            !ok && err.contains("does not match host name \"wrong.example\""),
            "{backend}: verify-full accepted a wrong name: {err}"
        );
        // Plain text when TLS is required: FATAL 28000 saying so.
        let (ok, _, err) = run_psql(
            &libpq(&proxy, "127.0.0.1", "tx", "sslmode=disable"),
            "select 1",
        );
        assert!(!ok && err.contains("TLS is required"), "{backend}: {err}");
        let Err(e) = try_connect(&proxy, SUPERUSER, "", "tx") else {
            panic!("{backend}: plain text accepted");
        };
        assert_eq!(sqlstate(&e), Some("28000"), "{backend}: {e}");
    }
}

#[test]
fn prefer_accepts_both_and_disable_answers_n() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "tls_prefer");
    let ca = TestCa::new("helios-test-ca").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    let proxy = tls_proxy(
        &pg,
        &db,
        "uring",
        &tls_section(&server, "mode = \"prefer\""),
    );
    let (ok, out, err) = run_psql(
        &libpq(&proxy, "localhost", "tx", &verify_full(&ca)),
        "\\conninfo",
    );
    assert!(ok && out.contains("SSL connection"), "{out} {err}");
    let (ok, out, err) = run_psql(
        &libpq(&proxy, "localhost", "tx", "sslmode=disable"),
        "select 7",
    );
    assert!(ok && out.trim() == "7", "{out} {err}");
    drop(proxy);
    let proxy = tls_proxy(
        &pg,
        &db,
        "uring",
        &tls_section(&server, "mode = \"disable\""),
    );
    let (ok, _, err) = run_psql(
        &libpq(&proxy, "localhost", "tx", "sslmode=require"),
        "select 1",
    );
    assert!(!ok && err.contains("does not support SSL"), "{err}");
    let (ok, out, err) = run_psql(
        &libpq(&proxy, "localhost", "tx", "sslmode=prefer"),
        "select 8",
    );
    assert!(ok && out.trim() == "8", "{out} {err}");
    assert!(proxy.log().contains("PLAIN TEXT"), "{}", proxy.log());
}

#[test]
fn pgbench_over_tls_in_both_pool_modes() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "tls_bench");
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", "1"])
        .arg(pg.url(&db))
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let ca = TestCa::new("helios-test-ca").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    for backend in BACKENDS {
        let proxy = tls_proxy(&pg, &db, backend, &tls_section(&server, ""));
        for alias in ["sess", "tx"] {
            for mode in ["simple", "extended", "prepared"] {
                let conn = libpq(&proxy, "127.0.0.1", alias, "sslmode=require");
                let out = Command::new("pgbench")
                    .args(["-n", "-S", "-c", "4", "-j", "2", "-T", "2", "-M", mode])
                    .arg(&conn)
                    .output()
                    .unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "{backend}/{alias}/{mode}: {stdout}\n{}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    proxy.log()
                );
                let tx: u64 = stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                assert!(tx > 100, "{backend}/{alias}/{mode}: {stdout}");
                assert!(
                    stdout.contains("number of failed transactions: 0"),
                    "{backend}/{alias}/{mode}: {stdout}"
                );
            }
        }
    }
}

/// Opens a socket and sends an SSLRequest; returns the socket and the one-byte answer.
fn ssl_request(proxy: &Proxy, code: i32, extra: &[u8]) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut msg = Vec::new();
    msg.extend_from_slice(&8i32.to_be_bytes());
    msg.extend_from_slice(&code.to_be_bytes());
    msg.extend_from_slice(extra);
    s.write_all(&msg).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    (s, b[0])
}

/// Reads until the proxy closes the connection (error or EOF), within the read timeout.
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    for _ in 0..100 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
    false
}

#[test]
fn bad_bytes_around_the_handshake_close_the_connection_and_the_proxy_keeps_serving() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "tls_garbage");
    let ca = TestCa::new("helios-test-ca").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    for backend in BACKENDS {
        let proxy = tls_proxy(&pg, &db, backend, &tls_section(&server, ""));
        // GSSAPI encryption: not offered.
        let (_s, answer) = ssl_request(&proxy, 80_877_104, b"");
        assert_eq!(answer, b'N');
        // Garbage instead of a ClientHello.
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for len in [1usize, 5, 300, 20_000] {
            let (mut s, answer) = ssl_request(&proxy, 80_877_103, b"");
            assert_eq!(answer, b'S', "{backend}");
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect();
            let _ = s.write_all(&junk);
            if len == 1 || len == 5 {
                // A partial record header: the proxy waits for more, then the client leaves.
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            assert!(
                closed(&mut s),
                "{backend}: {len} junk bytes left the connection open"
            );
        }
        // A plain startup packet after SSLRequest, in the same write (CVE-2021-23214): refused
        // before any handshake, in plain text.
        let mut startup = Vec::new();
        startup.extend_from_slice(&[0, 0, 0, 0, 0, 3, 0, 0]);
        startup.extend_from_slice(b"user\0postgres\0\0");
        let n = startup.len() as i32;
        startup[..4].copy_from_slice(&n.to_be_bytes());
        let (mut s, answer) = ssl_request(&proxy, 80_877_103, &startup);
        assert_eq!(answer, b'E', "{backend}");
        assert!(closed(&mut s));
        // Still serving.
        let (ok, out, err) = run_psql(
            &libpq(&proxy, "localhost", "tx", &verify_full(&ca)),
            "select 5",
        );
        assert!(ok && out.trim() == "5", "{backend}: {out} {err}");
        assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
    }
}

/// A rustls client for what psql 15 cannot do: direct TLS with ALPN.
fn rustls_client(ca: &Path, alpn: Option<&[u8]>) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
    Arc::new(cfg)
}

fn startup_packet(user: &str, db: &str) -> Vec<u8> {
    let mut p = vec![0, 0, 0, 0, 0, 3, 0, 0];
    for (k, v) in [("user", user), ("database", db)] {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p.push(0);
    let n = p.len() as i32;
    p[..4].copy_from_slice(&n.to_be_bytes());
    p
}

/// Reads server messages until ReadyForQuery or an ErrorResponse; returns their tags.
fn tags_until_ready(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut tags = Vec::new();
    loop {
        let mut h = [0u8; 5];
        r.read_exact(&mut h)?;
        let len = i32::from_be_bytes(h[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        r.read_exact(&mut body)?;
        tags.push(h[0]);
        if h[0] == b'Z' || h[0] == b'E' {
            return Ok(tags);
        }
    }
}

#[test]
fn direct_tls_needs_alpn_postgresql() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "tls_direct");
    let ca = TestCa::new("helios-test-ca").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    for backend in BACKENDS {
        let proxy = tls_proxy(&pg, &db, backend, &tls_section(&server, ""));
        let cfg = rustls_client(&ca.cert(), Some(b"postgresql"));
        let mut sock = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        tls.write_all(&startup_packet(SUPERUSER, "tx")).unwrap();
        let tags = tags_until_ready(&mut tls).unwrap();
        assert_eq!(
            tags.last(),
            Some(&b'Z'),
            "{backend}: {tags:?}\n{}",
            proxy.log()
        );
        // Without ALPN a direct TLS connection is refused (PostgreSQL 17 does the same).
        let cfg = rustls_client(&ca.cert(), None);
        let mut sock = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        tls.write_all(&startup_packet(SUPERUSER, "tx")).unwrap();
        let tags = tags_until_ready(&mut tls).unwrap();
        assert_eq!(tags, [b'E'], "{backend}: direct TLS without ALPN accepted");
    }
}

#[test]
fn check_fails_on_a_broken_certificate() {
    let ca = TestCa::new("helios-test-ca").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    let other = ca.server("other", &["localhost"], &[]).unwrap();
    let dir = ca.dir.join("check");
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let base = "[auth]\nmethod = \"trust\"\n[[nodes]]\nname = \"a\"\nhost = \"127.0.0.1\"\n[databases.app]\n";
    let check = |tls: String| {
        let path = dir.join("proxy.toml");
        std::fs::write(&path, format!("{base}\n{tls}")).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .arg("--check")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check(tls_section(&server, ""));
    assert!(ok, "{err}");
    // A certificate with another certificate's key.
    let (ok, err) = check(format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        server.cert.display(),
        other.key.display()
    ));
    assert!(!ok && err.contains("tls.cert"), "{err}");
    let (ok, err) = check(format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        garbage.display(),
        server.key.display()
    ));
    assert!(!ok && err.contains("tls.cert"), "{err}");
    let (ok, err) = check(format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.join("missing.crt").display(),
        server.key.display()
    ));
    assert!(!ok && err.contains("missing.crt"), "{err}");
    let (ok, err) = check("[tls]\nmode = \"require\"\n".into());
    assert!(!ok && err.contains("tls.mode"), "{err}");
}

fn with_client_cert(ca: &TestCa, cert: &Issued) -> String {
    format!(
        "{} sslcert={} sslkey={}",
        verify_full(ca),
        cert.cert.display(),
        cert.key.display()
    )
}

#[test]
fn mtls_refuses_clients_without_a_good_certificate_and_maps_the_cn_to_the_user() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "tls_mtls");
    let ca = TestCa::new("helios-test-ca").unwrap();
    let other_ca = TestCa::new("someone-else").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    let alice = ca.client("alice", "alice").unwrap();
    let forged = other_ca.client("alice", "alice").unwrap();
    let client_ca = format!("client_ca = \"{}\"", ca.cert().display());
    for backend in BACKENDS {
        let dbs = db_section("tx", &db, "transaction", 4, "");
        let cfg = config(&pg, "method = \"cert\"", "", &dbs)
            .replace("${HELIOS_TEST_IO_BACKEND:-uring}", backend)
            + "\n"
            + &tls_section(&server, &client_ca);
        let proxy = start_proxy(&cfg, None);
        let as_user = |user: &str, ssl: &str| {
            run_psql(
                &format!(
                    "host=localhost port={} user={user} dbname=tx connect_timeout=10 {ssl}",
                    proxy.port()
                ),
                "select 1",
            )
        };
        let (ok, out, err) = as_user("alice", &with_client_cert(&ca, &alice));
        assert!(ok && out.trim() == "1", "{backend}: {err}\n{}", proxy.log());
        // The certificate says alice: no one else.
        let (ok, _, err) = as_user("bob", &with_client_cert(&ca, &alice));
        assert!(
            !ok && err.contains("certificate authentication failed for user \"bob\""),
            "{backend}: {err}"
        );
        // No certificate: the handshake fails (client_cert = "require").
        let (ok, _, err) = as_user("alice", &verify_full(&ca));
        assert!(!ok, "{backend}: accepted without a certificate");
        assert!(!err.contains("certificate authentication failed"), "{err}");
        // A certificate from another CA, for the same name.
        let (ok, _, err) = as_user("alice", &with_client_cert(&ca, &forged));
        assert!(
            !ok,
            "{backend}: accepted a certificate of another CA: {err}"
        );
        assert!(
            proxy.log().contains("TLS handshake failed"),
            "{}",
            proxy.log()
        );
    }
    // client_cert = "optional": no certificate is fine, a bad one is not; cert auth then says
    // which is missing.
    let dbs = db_section("tx", &db, "transaction", 4, "");
    let cfg = config(&pg, TRUST, "", &dbs)
        + "\n"
        + &tls_section(&server, &format!("{client_ca}\nclient_cert = \"optional\""));
    let proxy = start_proxy(&cfg, None);
    let conn = |ssl: &str| {
        run_psql(
            &format!(
                "host=localhost port={} user=carol dbname=tx connect_timeout=10 {ssl}",
                proxy.port()
            ),
            "select 2",
        )
    };
    let (ok, out, err) = conn(&verify_full(&ca));
    assert!(ok && out.trim() == "2", "{err}");
    let (ok, _, _) = conn(&with_client_cert(&ca, &forged));
    assert!(!ok, "optional still verifies a certificate that is sent");
    let (ok, out, err) = conn(&with_client_cert(&ca, &alice));
    assert!(ok && out.trim() == "2", "{err}");
}

/// A client certificate signed by `ca` whose common name is `cn` and whose subject alternative
/// names are the DNS names `dns` (the harness's `TestCa::client` makes CN-only ones).
fn client_with_san(ca: &TestCa, file: &str, cn: &str, dns: &[&str]) -> Issued {
    let san: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
    std::fs::write(
        ca.dir.join(format!("{file}.ext")),
        format!(
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\nsubjectAltName={}\n",
            san.join(",")
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(&ca.dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (key, csr, crt, ext) = (
        format!("{file}.key"),
        format!("{file}.csr"),
        format!("{file}.crt"),
        format!("{file}.ext"),
    );
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        &format!("/CN={cn}"),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        &crt,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ca.dir.join(&key), std::fs::Permissions::from_mode(0o600)).unwrap();
    Issued {
        cert: ca.dir.join(crt),
        key: ca.dir.join(key),
    }
}

/// `cert` maps a subject alternative name to the user too, as PostgreSQL's
/// `clientcert=verify-full` can: a certificate whose CN is someone else and whose DNS SAN says
/// alice logs in as alice, and not as a name it does not carry.
#[test]
fn cert_auth_maps_a_subject_alternative_name_to_the_user() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "tls_san");
    let ca = TestCa::new("helios-test-ca").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    let by_san = client_with_san(&ca, "by-san", "Some Operator", &["alice", "ops.example"]);
    let cn_only = ca.client("carol", "carol").unwrap();
    let client_ca = format!("client_ca = \"{}\"", ca.cert().display());
    for backend in BACKENDS {
        let cfg = config(
            &pg,
            "method = \"cert\"",
            "",
            &db_section("tx", &db, "transaction", 4, ""),
        )
        .replace("${HELIOS_TEST_IO_BACKEND:-uring}", backend)
            + "\n"
            + &tls_section(&server, &client_ca);
        let proxy = start_proxy(&cfg, None);
        let as_user = |user: &str, cert: &Issued| {
            run_psql(
                &format!(
                    "host=localhost port={} user={user} dbname=tx connect_timeout=10 {}",
                    proxy.port(),
                    with_client_cert(&ca, cert)
                ),
                "select current_user is not null",
            )
        };
        // The CN is not alice: the SAN lets alice in (either of its names works).
        let (ok, out, err) = as_user("alice", &by_san);
        assert!(ok && out.trim() == "t", "{backend}: {err}\n{}", proxy.log());
        let (ok, _, err) = as_user("ops.example", &by_san);
        assert!(ok, "{backend}: the second SAN: {err}");
        // A name the certificate does not carry.
        let (ok, _, err) = as_user("bob", &by_san);
        assert!(
            !ok && err.contains("certificate authentication failed for user \"bob\""),
            "{backend}: {err}"
        );
        // A CN-only certificate for carol does not let her in as alice.
        let (ok, _, err) = as_user("alice", &cn_only);
        assert!(
            !ok && err.contains("certificate authentication failed for user \"alice\""),
            "{backend}: {err}"
        );
    }
}

/// Upstream `tls = "prefer"` towards a server with `ssl = off` (the test cluster): the server
/// answers `N` and the proxy goes on in plain text, while `require` towards it is refused.
#[test]
fn upstream_prefer_falls_back_to_plain_text_when_the_server_has_no_tls() {
    let pg = shared_pg();
    assert_eq!(pg.psql("postgres", "show ssl").unwrap().trim(), "off");
    let db = fresh_db(&pg, "tls_prefer_up");
    let nodes = format!(
        "[[nodes]]\nname = \"pref\"\nhost = \"127.0.0.1\"\nport = {p}\ntls = \"prefer\"\n\n\
         [[nodes]]\nname = \"req\"\nhost = \"127.0.0.1\"\nport = {p}\ntls = \"require\"\n\n",
        p = pg.port
    );
    let dbs = db_section("pref", &db, "transaction", 2, "node = \"pref\"")
        + &db_section("req", &db, "transaction", 2, "node = \"req\"");
    for backend in BACKENDS {
        let cfg = config(&pg, TRUST, "", &(nodes.clone() + &dbs))
            .replace("${HELIOS_TEST_IO_BACKEND:-uring}", backend);
        let proxy = start_proxy(&cfg, None);
        let q = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
        let (ok, out, err) = run_psql(&proxy.url(SUPERUSER, "", "pref"), q);
        assert!(ok, "{backend}/prefer: {err}\n{}", proxy.log());
        assert_eq!(
            out.trim(),
            "f",
            "{backend}/prefer: the server session is plain text"
        );
        let (ok, _, err) = run_psql(&proxy.url(SUPERUSER, "", "req"), "select 1");
        assert!(
            !ok && err.contains("server does not support TLS"),
            "{backend}/require: {err}"
        );
    }
}

/// Logs in over direct TLS and returns the open stream, ready for queries.
fn direct_session(
    proxy: &Proxy,
    ca: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let cfg = rustls_client(ca, Some(b"postgresql"));
    let sock = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(&startup_packet(SUPERUSER, "tx")).unwrap();
    let tags = tags_until_ready(&mut tls).unwrap();
    assert_eq!(tags.last(), Some(&b'Z'), "{tags:?}");
    tls
}

fn simple_query(s: &mut impl ReadWrite, sql: &str) -> Vec<u8> {
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    s.write_all(&q).unwrap();
    tags_until_ready(s).unwrap()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn certificates_reload_on_sighup_and_a_broken_one_keeps_the_old() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "tls_reload");
    let ca = TestCa::new("helios-test-ca").unwrap();
    let ca2 = TestCa::new("helios-next-ca").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    let server2 = ca2
        .server("server", &["localhost"], &["127.0.0.1"])
        .unwrap();
    let broken = ca.dir.join("broken.crt");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for backend in BACKENDS {
        let dbs = db_section("tx", &db, "transaction", 4, "");
        let base =
            config(&pg, TRUST, "", &dbs).replace("${HELIOS_TEST_IO_BACKEND:-uring}", backend);
        let mut proxy = start_proxy(&(base.clone() + "\n" + &tls_section(&server, "")), None);
        let mut open = direct_session(&proxy, &ca.cert());
        let psql_with = |proxy: &Proxy, ca: &TestCa| {
            run_psql(
                &libpq(proxy, "localhost", "tx", &verify_full(ca)),
                "select 3",
            )
        };
        // A broken certificate: the reload fails loudly, the running one stays.
        let broken_tls = format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            broken.display(),
            server.key.display()
        );
        proxy
            .write_config(&(base.clone() + "\n" + &broken_tls))
            .unwrap();
        proxy.signal(libc::SIGHUP);
        poll(
            Duration::from_secs(10),
            "the failed reload's log line",
            || {
                let log = proxy.log();
                (log.contains("reload failed") && log.contains("broken.crt")).then_some(())
            },
        );
        let (ok, out, err) = psql_with(&proxy, &ca);
        assert!(ok && out.trim() == "3", "{backend}: {err}");
        // A good new certificate from another CA: new handshakes use it, open sessions go on.
        proxy
            .write_config(&(base.clone() + "\n" + &tls_section(&server2, "")))
            .unwrap();
        proxy.reload().unwrap();
        // Each shard takes the new certificate from its inbox: one may not have yet when the
        // reload is logged. Four good handshakes in a row, then the old CA must fail.
        let fresh = try_poll(Duration::from_secs(10), || {
            (0..4)
                .all(|_| {
                    let (ok, out, _) = psql_with(&proxy, &ca2);
                    ok && out.trim() == "3"
                })
                .then_some(())
        });
        assert!(
            fresh.is_some(),
            "{backend}: {}\n{}",
            psql_with(&proxy, &ca2).2,
            proxy.log()
        );
        let (ok, _, _) = psql_with(&proxy, &ca);
        assert!(!ok, "{backend}: the old certificate is still served");
        assert_eq!(
            simple_query(&mut open, "select 1").last(),
            Some(&b'Z'),
            "{backend}"
        );
    }
}

#[test]
fn scram_sha_256_plus_is_offered_on_tls_connections() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "tls_plus");
    let ca = TestCa::new("helios-test-ca").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    for backend in BACKENDS {
        let dbs = db_section("tx", &db, "transaction", 4, "");
        let cfg = config(
            &pg,
            "method = \"scram-sha-256\"\nuserlist = \"userlist.txt\"",
            "",
            &dbs,
        )
        .replace("${HELIOS_TEST_IO_BACKEND:-uring}", backend)
            + "\n"
            + &tls_section(&server, "mode = \"prefer\"");
        let proxy = start_proxy(&cfg, Some("\"alice\" \"s3cret\"\n"));
        let conn = |ssl: &str, pw: &str| {
            run_psql(
                &format!(
                    "host=localhost port={} user=alice password={pw} dbname=tx connect_timeout=10 {ssl}",
                    proxy.port()
                ),
                "select 6",
            )
        };
        // libpq binds the exchange to the proxy's certificate.
        let (ok, out, err) = conn(
            &format!("{} channel_binding=require", verify_full(&ca)),
            "s3cret",
        );
        assert!(ok && out.trim() == "6", "{backend}: {err}\n{}", proxy.log());
        let (ok, _, err) = conn(
            &format!("{} channel_binding=require", verify_full(&ca)),
            "wrong",
        );
        assert!(
            !ok && err.contains("password authentication failed"),
            "{backend}: {err}"
        );
        // Plain text: no PLUS offered, so a client that requires binding gives up.
        let (ok, _, err) = conn("sslmode=disable channel_binding=require", "s3cret");
        assert!(!ok && err.contains("channel binding"), "{backend}: {err}");
        let (ok, out, err) = conn("sslmode=disable", "s3cret");
        assert!(ok && out.trim() == "6", "{backend}: {err}");
        // TLS without binding (channel_binding=disable picks SCRAM-SHA-256): still fine.
        let (ok, out, err) = conn(
            &format!("{} channel_binding=disable", verify_full(&ca)),
            "s3cret",
        );
        assert!(ok && out.trim() == "6", "{backend}: {err}");
    }
}

#[test]
fn min_version_refuses_older_clients() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "tls_minver");
    let ca = TestCa::new("helios-test-ca").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    let tls12 = format!("{} ssl_max_protocol_version=TLSv1.2", verify_full(&ca));
    // Default 1.2: a TLS 1.2 client connects.
    let proxy = tls_proxy(&pg, &db, "uring", &tls_section(&server, ""));
    let (ok, out, err) = run_psql(&libpq(&proxy, "localhost", "tx", &tls12), "\\conninfo");
    assert!(ok && out.contains("TLSv1.2"), "{out} {err}");
    drop(proxy);
    let proxy = tls_proxy(
        &pg,
        &db,
        "uring",
        &tls_section(&server, "min_version = \"1.3\""),
    );
    let (ok, _, err) = run_psql(&libpq(&proxy, "localhost", "tx", &tls12), "select 1");
    assert!(!ok, "a TLS 1.2 client got in with min_version 1.3: {err}");
    let (ok, out, err) = run_psql(
        &libpq(&proxy, "localhost", "tx", &verify_full(&ca)),
        "\\conninfo",
    );
    assert!(ok && out.contains("TLSv1.3"), "{out} {err}");
}

#[test]
fn psycopg2_over_tls() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "tls_psycopg");
    let ca = TestCa::new("helios-test-ca").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    // Debian's python3-psycopg2 (scripts/test.sh installs it).
    let script = r#"
import sys, psycopg2
conn = psycopg2.connect(sys.argv[1])
conn.autocommit = False
cur = conn.cursor()
cur.execute("select %s::int + %s::int, %s::text", (40, 2, "über"))
row = cur.fetchone()
cur.execute("create temporary table t (i int, s text) on commit drop")
cur.executemany("insert into t values (%s, %s)", [(i, "x" * i) for i in range(200)])
cur.execute("select count(*), sum(length(s)) from t")
agg = cur.fetchone()
conn.commit()
print(row[0], row[1], agg[0], agg[1], conn.info.ssl_in_use)
"#;
    for backend in BACKENDS {
        let proxy = tls_proxy(&pg, &db, backend, &tls_section(&server, ""));
        for alias in ["sess", "tx"] {
            let out = Command::new("/usr/bin/python3")
                .args(["-c", script])
                .arg(libpq(&proxy, "localhost", alias, &verify_full(&ca)))
                .output()
                .expect("run python3");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{backend}/{alias}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(stdout.trim(), "42 über 200 19900 True", "{backend}/{alias}");
        }
    }
}

/// The Python of `target/py-driver-venv` (psycopg 3 and asyncpg from PyPI), made by
/// `scripts/lib.sh: ensure_py_driver_deps` — by scripts/test.sh before the suite, or here if it
/// is missing. `None` only when PyPI cannot be reached on a developer's machine (the test then
/// says so and passes); with `CI=true` in the environment a missing venv fails the test.
/// `CI` set to anything but `false`/`0`/empty, as CI services (and .ci/run) set it.
fn on_ci() -> bool {
    std::env::var("CI")
        .is_ok_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"))
}

fn py_driver_python() -> Option<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg("-c")
        .arg(". scripts/lib.sh && ensure_py_driver_deps")
        .current_dir(&root)
        .output()
        .expect("run bash");
    if out.status.success() {
        return Some(root.join("target/py-driver-venv/bin/python"));
    }
    assert!(
        !on_ci(),
        "CI is set: psycopg 3 and asyncpg must be installed (scripts/test.sh runs \
         scripts/lib.sh ensure_py_driver_deps), yet installing them failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reach = Command::new("python3")
        .args([
            "-c",
            "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/psycopg/', timeout=15)",
        ])
        .output()
        .expect("run python3");
    assert!(
        !reach.status.success(),
        "PyPI is reachable, yet installing psycopg and asyncpg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "SKIPPED: PyPI cannot be reached, so there is no psycopg 3 / asyncpg venv: {}",
        String::from_utf8_lossy(&reach.stderr)
    );
    None
}

#[test]
fn psycopg3_and_asyncpg_verify_full_prepared_statements_and_transactions() {
    let Some(python) = py_driver_python() else {
        return;
    };
    let pg = shared_pg();
    let db = fresh_db(&pg, "tls_pydrivers");
    pg.psql(&db, "create table t (i int, s text, who text)")
        .unwrap();
    let ca = TestCa::new("helios-test-ca").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    // psycopg 3 (its own libpq): every parameterised query server-side prepared (named
    // Parse/Bind/Execute), run ten times; a transaction committed and one rolled back.
    let psycopg = r#"
import sys, psycopg
who = sys.argv[2]
with psycopg.connect(sys.argv[1], prepare_threshold=0, autocommit=True) as conn:
    assert conn.pgconn.ssl_in_use
    for i in range(10):
        r = conn.execute("select %s::int * 2, %s::text || 'x'", (i, "ü"), prepare=True).fetchone()
        assert r == (i * 2, "üx"), r
    with conn.transaction():
        for i in range(50):
            conn.execute("insert into t values (%s, %s, %s)", (i, "x" * i, who), prepare=True)
    class Undo(Exception):
        pass
    try:
        with conn.transaction():
            conn.execute("insert into t values (%s, %s, %s)", (999, "no", who), prepare=True)
            raise Undo()
    except Undo:
        pass
    n, total = conn.execute("select count(*), sum(length(s)) from t where who = %s", (who,), prepare=True).fetchone()
    print(n, total, "TLS" if conn.pgconn.ssl_in_use else "plain")
"#;
    // asyncpg (the protocol in Python, TLS from the ssl module; a default context is
    // verify-full): a prepared statement run ten times, its statement cache, executemany in a
    // transaction, and a rolled-back one.
    let asyncpg = r#"
import sys, ssl, asyncio, asyncpg
async def main(port, user, db, ca, who):
    ctx = ssl.create_default_context(cafile=ca)
    conn = await asyncpg.connect(host="localhost", port=int(port), user=user, database=db, ssl=ctx)
    stmt = await conn.prepare("select $1::int * 2, $2::text || 'x'")
    for i in range(10):
        r = await stmt.fetchrow(i, "ü")
        assert tuple(r) == (i * 2, "üx"), r
    for i in range(10):
        assert await conn.fetchval("select $1::int + 1", i) == i + 1
    async with conn.transaction():
        await conn.executemany("insert into t values ($1, $2, $3)", [(i, "y" * i, who) for i in range(50)])
    try:
        async with conn.transaction():
            await conn.execute("insert into t values (999, 'no', $1)", who)
            raise RuntimeError("undo")
    except RuntimeError:
        pass
    n, total = await conn.fetchrow("select count(*), sum(length(s)) from t where who = $1", who)
    tls = conn._transport.get_extra_info("ssl_object").version()
    await conn.close()
    print(n, total, tls)
asyncio.run(main(*sys.argv[1:]))
"#;
    for backend in BACKENDS {
        let proxy = tls_proxy(&pg, &db, backend, &tls_section(&server, ""));
        for alias in ["tx", "sess"] {
            let who = format!("psycopg-{backend}-{alias}");
            let out = Command::new(&python)
                .args(["-c", psycopg])
                .arg(libpq(&proxy, "localhost", alias, &verify_full(&ca)))
                .arg(&who)
                .output()
                .expect("run python");
            assert!(
                out.status.success(),
                "psycopg {backend}/{alias}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                proxy.log()
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "50 1225 TLS",
                "psycopg {backend}/{alias}"
            );
            let who = format!("asyncpg-{backend}-{alias}");
            let out = Command::new(&python)
                .args(["-c", asyncpg])
                .arg(proxy.port().to_string())
                .args([SUPERUSER, alias])
                .arg(ca.cert())
                .arg(&who)
                .output()
                .expect("run python");
            assert!(
                out.status.success(),
                "asyncpg {backend}/{alias}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                proxy.log()
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "50 1225 TLSv1.3",
                "asyncpg {backend}/{alias}"
            );
        }
    }
    // The same server certificate, without the CA that issued it: verify-full refuses.
    let proxy = tls_proxy(&pg, &db, "uring", &tls_section(&server, ""));
    let other = TestCa::new("another-ca").unwrap();
    let out = Command::new(&python)
        .args(["-c", psycopg])
        .arg(libpq(&proxy, "localhost", "tx", &verify_full(&other)))
        .arg("nobody")
        .output()
        .expect("run python");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("certificate verify failed"),
        "{err}"
    );
}
