//! Host-based access rules (`auth.hba`): a `reject` line for one source address while another
//! passes (127.0.0.2 as a second loopback source), `hostssl` refusing plain text, reload
//! swapping rules and refusing a broken file whole, `--check` naming the line.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::FromRawFd;
use std::process::Command;
use std::time::Duration;

use common::*;
use helios_testkit::certs::TestCa;
use helios_testkit::proxy::Proxy;
use helios_testkit::SUPERUSER;

/// A TCP connection to the proxy from the local address `src` (any of 127/8 is ours).
fn connect_from(src: [u8; 4], port: u16) -> TcpStream {
    // SAFETY: plain socket calls on a descriptor we own; std takes it over on success.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let sa = |ip: [u8; 4], port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sa(src, 0);
        assert_eq!(
            libc::bind(fd, &local as *const _ as *const libc::sockaddr, len),
            0
        );
        let remote = sa([127, 0, 0, 1], port);
        assert_eq!(
            libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
        TcpStream::from_raw_fd(fd)
    }
}

/// A trust login in plain text from `src`: `Ok` at ReadyForQuery, `Err(message)` on an
/// ErrorResponse.
fn login_from(src: [u8; 4], proxy: &Proxy, db: &str) -> Result<(), String> {
    login_as(src, proxy, SUPERUSER, db)
}

/// [`login_from`] as `user`.
fn login_as(src: [u8; 4], proxy: &Proxy, user: &str, db: &str) -> Result<(), String> {
    let mut s = connect_from(src, proxy.port());
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
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
    s.write_all(&p).unwrap();
    loop {
        let mut h = [0u8; 5];
        s.read_exact(&mut h).map_err(|e| e.to_string())?;
        let len = i32::from_be_bytes(h[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).map_err(|e| e.to_string())?;
        let m = Msg { tag: h[0], body };
        match m.tag {
            b'Z' => return Ok(()),
            b'E' => {
                return Err(format!(
                    "{} {}",
                    m.code().unwrap_or_default(),
                    m.field(b'M').unwrap_or_default()
                ))
            }
            _ => {}
        }
    }
}

fn hba_config(pg: &helios_testkit::PgCluster, db: &str, extra: &str) -> String {
    config(
        pg,
        "method = \"trust\"\nhba = \"hba.conf\"",
        "",
        &db_section("tx", db, "transaction", 4, ""),
    ) + "\n"
        + extra
}

#[test]
fn reject_line_for_one_address_while_another_passes_and_reload_swaps_rules() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "hba_addr");
    let dir = std::env::temp_dir().join(format!("helios-hba-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hba_path = dir.join("hba.conf");
    std::fs::write(
        &hba_path,
        "host all all 127.0.0.2/32 reject\nhost all all 127.0.0.0/8 trust\n",
    )
    .unwrap();
    let cfg = hba_config(&pg, &db, "").replace(
        "hba = \"hba.conf\"",
        &format!("hba = \"{}\"", hba_path.display()),
    );
    let mut proxy = start_proxy(&cfg, None);
    login_from([127, 0, 0, 1], &proxy, "tx").unwrap();
    let e = login_from([127, 0, 0, 2], &proxy, "tx").unwrap_err();
    assert_eq!(
        e,
        format!("28000 pg_hba.conf rejects connection for host \"127.0.0.2\", user \"{SUPERUSER}\", database \"tx\", no encryption")
    );
    login_from([127, 0, 0, 3], &proxy, "tx").unwrap();
    // Reload: now only 127.0.0.2 may come in, and only to tx.
    std::fs::write(&hba_path, "host tx all 127.0.0.2/32 trust\n").unwrap();
    proxy.reload().unwrap();
    // Each shard takes the new rules from its inbox: the shard a connection lands on may not
    // have yet when the reload is logged.
    poll(
        std::time::Duration::from_secs(10),
        "the new rules on every shard",
        || {
            (0..4)
                .all(|_| login_from([127, 0, 0, 2], &proxy, "tx").is_ok())
                .then_some(())
        },
    );
    let e = login_from([127, 0, 0, 1], &proxy, "tx").unwrap_err();
    assert_eq!(
        e,
        format!("28000 no pg_hba.conf entry for host \"127.0.0.1\", user \"{SUPERUSER}\", database \"tx\", no encryption")
    );
    // A broken file: the reload fails naming the line, the rules in force stay.
    std::fs::write(
        &hba_path,
        "host all all all trust\nhost all all 127.0.0.1/40 trust\n",
    )
    .unwrap();
    proxy.signal(libc::SIGHUP);
    poll(Duration::from_secs(10), "the failed reload", || {
        let log = proxy.log();
        (log.contains("reload failed") && log.contains("hba.conf:2:")).then_some(())
    });
    login_from([127, 0, 0, 2], &proxy, "tx").unwrap();
    assert!(login_from([127, 0, 0, 1], &proxy, "tx").is_err());
    // --check names the line too.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(proxy.dir().join("proxy.toml"))
        .arg("--check")
        .env("HELIOS_TEST_PORT", "1")
        .env("HELIOS_TEST_ADMIN_PORT", "2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("hba.conf:2:") && err.contains("mask"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hostssl_lines_refuse_plain_text() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "hba_ssl");
    let ca = TestCa::new("helios-test-ca").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    for backend in ["uring", "glommio"] {
        let tls = format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nmode = \"prefer\"\n",
            server.cert.display(),
            server.key.display()
        );
        let hba_path = ca.dir.join(format!("hba-{backend}.conf"));
        std::fs::write(
            &hba_path,
            "hostnossl tx all 127.0.0.9/32 trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let cfg = hba_config(&pg, &db, &tls)
            .replace("${HELIOS_TEST_IO_BACKEND:-uring}", backend)
            .replace(
                "hba = \"hba.conf\"",
                &format!("hba = \"{}\"", hba_path.display()),
            );
        let proxy = start_proxy(&cfg, None);
        let e = login_from([127, 0, 0, 1], &proxy, "tx").unwrap_err();
        assert!(
            e.contains("no pg_hba.conf entry") && e.contains("no encryption"),
            "{backend}: {e}"
        );
        let out = Command::new("psql")
            .arg(format!(
                "host=localhost port={} user={SUPERUSER} dbname=tx sslmode=verify-full sslrootcert={}",
                proxy.port(),
                ca.cert().display()
            ))
            .args(["-X", "-At", "-c", "select 11"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "11",
            "{backend}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        login_from([127, 0, 0, 9], &proxy, "tx").unwrap();
    }
}

#[test]
fn plus_group_lets_members_in_and_a_reload_of_the_groups_applies() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "hba_group");
    let dir = std::env::temp_dir().join(format!("helios-hba-group-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hba_path = dir.join("hba.conf");
    // Members of ops from anywhere on loopback; everyone else only from 127.0.0.2.
    std::fs::write(
        &hba_path,
        "host all +ops 127.0.0.0/8 trust\nhost all all 127.0.0.2/32 trust\n",
    )
    .unwrap();
    let cfg = |members: &str| {
        hba_config(&pg, &db, "").replace(
            "hba = \"hba.conf\"",
            &format!(
                "hba = \"{}\"\n[auth.groups]\nops = [{members}]",
                hba_path.display()
            ),
        )
    };
    let mut proxy = start_proxy(&cfg("\"alice\", \"bob\""), None);
    login_as([127, 0, 0, 1], &proxy, "alice", "tx").unwrap();
    login_as([127, 0, 0, 1], &proxy, "bob", "tx").unwrap();
    let e = login_as([127, 0, 0, 1], &proxy, "carol", "tx").unwrap_err();
    assert_eq!(
        e,
        "28000 no pg_hba.conf entry for host \"127.0.0.1\", user \"carol\", database \"tx\", no encryption"
    );
    // The group's own name is no member.
    assert!(login_as([127, 0, 0, 1], &proxy, "ops", "tx").is_err());
    login_as([127, 0, 0, 2], &proxy, "carol", "tx").unwrap();
    // A reload with carol in ops and bob out swaps them.
    proxy.write_config(&cfg("\"alice\", \"carol\"")).unwrap();
    proxy.reload().unwrap();
    poll(
        Duration::from_secs(10),
        "the new groups on every shard",
        || {
            (0..4)
                .all(|_| login_as([127, 0, 0, 1], &proxy, "carol", "tx").is_ok())
                .then_some(())
        },
    );
    assert!(login_as([127, 0, 0, 1], &proxy, "bob", "tx").is_err());
    login_as([127, 0, 0, 1], &proxy, "alice", "tx").unwrap();
    // A group the file names but the configuration no longer defines fails the reload whole:
    // the groups in force stay.
    proxy
        .write_config(&cfg("\"alice\"").replace("[auth.groups]\nops", "[auth.groups]\ndev"))
        .unwrap();
    proxy.signal(libc::SIGHUP);
    poll(Duration::from_secs(10), "the failed reload", || {
        let log = proxy.log();
        (log.contains("reload failed") && log.contains("no group \"ops\"")).then_some(())
    });
    login_as([127, 0, 0, 1], &proxy, "carol", "tx").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A login from `src` as `user` with `password` (plain text), answering whatever the proxy
/// asks for: `(the authentication request codes it sent, Ok or Err("SQLSTATE message"))`.
/// 0 = ok, 3 = cleartext, 5 = md5, 10 = SASL (SCRAM).
fn login_with_password(
    src: [u8; 4],
    proxy: &Proxy,
    user: &str,
    password: &str,
    db: &str,
) -> (Vec<i32>, Result<(), String>) {
    use bytes::BytesMut;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::frontend;
    let mut s = connect_from(src, proxy.port());
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = BytesMut::new();
    frontend::startup_message([("user", user), ("database", db)], &mut b).unwrap();
    s.write_all(&b).unwrap();
    let mut codes = Vec::new();
    let mut scram: Option<ScramSha256> = None;
    loop {
        let mut h = [0u8; 5];
        if let Err(e) = s.read_exact(&mut h) {
            return (codes, Err(e.to_string()));
        }
        let len = i32::from_be_bytes(h[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).unwrap();
        let m = Msg { tag: h[0], body };
        let mut out = BytesMut::new();
        match m.tag {
            b'R' => {
                let code = i32::from_be_bytes(m.body[..4].try_into().unwrap());
                let data = &m.body[4..];
                match code {
                    0 | 10 | 3 | 5 => codes.push(code),
                    _ => {}
                }
                match code {
                    3 => frontend::password_message(password.as_bytes(), &mut out).unwrap(),
                    5 => {
                        let hash = postgres_protocol::authentication::md5_hash(
                            user.as_bytes(),
                            password.as_bytes(),
                            data[..4].try_into().unwrap(),
                        );
                        frontend::password_message(hash.as_bytes(), &mut out).unwrap();
                    }
                    10 => {
                        let sc =
                            ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        frontend::sasl_initial_response("SCRAM-SHA-256", sc.message(), &mut out)
                            .unwrap();
                        scram = Some(sc);
                    }
                    11 => {
                        let sc = scram.as_mut().unwrap();
                        if let Err(e) = sc.update(data) {
                            return (codes, Err(e.to_string()));
                        }
                        frontend::sasl_response(sc.message(), &mut out).unwrap();
                    }
                    12 => {
                        if let Err(e) = scram.as_mut().unwrap().finish(data) {
                            return (codes, Err(e.to_string()));
                        }
                    }
                    _ => {}
                }
                if !out.is_empty() {
                    s.write_all(&out).unwrap();
                }
            }
            b'Z' => return (codes, Ok(())),
            b'E' => {
                return (
                    codes,
                    Err(format!(
                        "{} {}",
                        m.code().unwrap_or_default(),
                        m.field(b'M').unwrap_or_default()
                    )),
                )
            }
            _ => {}
        }
    }
}

/// HBA methods other than trust and reject, end to end: with `auth.method = "trust"`, the first
/// matching line's `scram-sha-256`, `md5` or `cert` is what the login asks for, chosen by the
/// source address (raw client from 127.0.0.3 / .4) and by the user (the postgres crate and psql
/// from 127.0.0.1): a wrong password is refused with 28P01, the right one gets in, and a `cert`
/// line on `hostssl` wants the certificate that names the user (without one: PostgreSQL's
/// "connection requires a valid client certificate").
#[test]
fn hba_scram_md5_and_cert_lines_choose_the_login_method() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "hba_methods");
    let ca = TestCa::new("helios-test-ca").unwrap();
    let server = ca.server("server", &["localhost"], &["127.0.0.1"]).unwrap();
    let alice = ca.client("alice", "alice").unwrap();
    let hba_path = ca.dir.join("hba-methods.conf");
    std::fs::write(
        &hba_path,
        "hostssl all alice 127.0.0.1/32 cert\n\
         host all all 127.0.0.3/32 scram-sha-256\n\
         host all all 127.0.0.4/32 md5\n\
         host all scram_user all scram-sha-256\n\
         host all md5_user all md5\n\
         host all all 127.0.0.0/8 trust\n",
    )
    .unwrap();
    let userlist = "\"carol\" \"carol-pw\"\n\"scram_user\" \"s-pw\"\n\"md5_user\" \"m-pw\"\n";
    let tls = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nmode = \"prefer\"\nclient_ca = \"{}\"\nclient_cert = \"optional\"\n",
        server.cert.display(),
        server.key.display(),
        ca.cert().display()
    );
    let cfg = hba_config(&pg, &db, &tls).replace(
        "hba = \"hba.conf\"",
        &format!(
            "hba = \"{}\"\nuserlist = \"userlist.txt\"",
            hba_path.display()
        ),
    );
    let proxy = start_proxy(&cfg, Some(userlist));

    // By address, raw client: .3 is asked for SCRAM, .4 for md5, .5 nothing (trust).
    let (codes, r) = login_with_password([127, 0, 0, 3], &proxy, "carol", "carol-pw", "tx");
    assert_eq!((codes.as_slice(), &r), (&[10, 0][..], &Ok(())), "from .3");
    let (codes, r) = login_with_password([127, 0, 0, 3], &proxy, "carol", "wrong", "tx");
    assert_eq!(codes, [10], "from .3, wrong password");
    assert_eq!(
        r,
        Err("28P01 password authentication failed for user \"carol\"".into())
    );
    let (codes, r) = login_with_password([127, 0, 0, 4], &proxy, "carol", "carol-pw", "tx");
    assert_eq!((codes.as_slice(), &r), (&[5, 0][..], &Ok(())), "from .4");
    let (codes, r) = login_with_password([127, 0, 0, 4], &proxy, "carol", "wrong", "tx");
    assert_eq!(codes, [5], "from .4, wrong password");
    assert_eq!(
        r,
        Err("28P01 password authentication failed for user \"carol\"".into())
    );
    let (codes, r) = login_with_password([127, 0, 0, 5], &proxy, "carol", "", "tx");
    assert_eq!(
        (codes.as_slice(), &r),
        (&[0][..], &Ok(())),
        "from .5 (trust)"
    );

    // By user, real clients from 127.0.0.1: the postgres crate with a password.
    let url = |user: &str, pw: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} password={pw} dbname=tx connect_timeout=10",
            proxy.port()
        )
    };
    for (user, pw) in [("scram_user", "s-pw"), ("md5_user", "m-pw")] {
        let mut c = postgres::Client::connect(&url(user, pw), postgres::NoTls)
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        c.simple_query("select 1").unwrap();
        let e = postgres::Client::connect(&url(user, "nope"), postgres::NoTls)
            .err()
            .unwrap_or_else(|| panic!("{user}: a wrong password got in"));
        assert_eq!(sqlstate(&e), Some("28P01"), "{user}: {e}");
        // The line names the method: the login asked for SCRAM (10) or md5 (5).
        let (codes, r) = login_with_password([127, 0, 0, 1], &proxy, user, pw, "tx");
        let want = if user == "scram_user" { 10 } else { 5 };
        assert_eq!((codes.as_slice(), &r), (&[want, 0][..], &Ok(())), "{user}");
    }
    // psql with a password (PGPASSWORD) through the md5 line; a wrong one is refused.
    let psql_as = |user: &str, pw: &str, ssl: &str| {
        Command::new("psql")
            .arg(format!(
                "host=localhost port={} user={user} dbname=tx connect_timeout=10 {ssl}",
                proxy.port()
            ))
            .args(["-X", "-At", "-w", "-c", "select 7"])
            .env("PGPASSWORD", pw)
            .output()
            .unwrap()
    };
    let out = psql_as("md5_user", "m-pw", "sslmode=disable");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "7",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql_as("md5_user", "nope", "sslmode=disable");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("password authentication failed for user \"md5_user\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // hostssl … alice … cert: over TLS alice needs her certificate; in plain text the line does
    // not apply (the trust line at the end does).
    let verify = format!("sslmode=verify-full sslrootcert={}", ca.cert().display());
    let out = psql_as(
        "alice",
        "",
        &format!(
            "{verify} sslcert={} sslkey={}",
            alice.cert.display(),
            alice.key.display()
        ),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "7",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql_as("alice", "", &verify);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("FATAL:  connection requires a valid client certificate"),
        "over TLS without a certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql_as("alice", "", "sslmode=disable");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "7",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
