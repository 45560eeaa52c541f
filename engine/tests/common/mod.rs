//! Shared by the integration tests: a scratch cluster per test binary, config text for a proxy
//! with two shards, a `postgres` client and psql through it, and a hand-written wire client for
//! what real clients never send.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use helios_testkit::proxy::Proxy;
use helios_testkit::{PgCluster, PgOptions, SUPERUSER, SUPERUSER_PASSWORD};
use postgres::{Client, NoTls};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

pub const BIN: &str = env!("CARGO_BIN_EXE_heliosproxy");
pub const PW: &str = SUPERUSER_PASSWORD;

/// The cluster the tests of one binary share while any of them runs; stopped when the last one
/// lets go (a `static` would never be dropped and would leave the server running).
pub fn shared_pg() -> Arc<PgCluster> {
    static SHARED: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
    let mut w = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pg) = w.upgrade() {
        return pg;
    }
    let pg = Arc::new(PgCluster::start().expect("start PostgreSQL"));
    *w = Arc::downgrade(&pg);
    pg
}

pub fn own_pg(opts: PgOptions) -> PgCluster {
    PgCluster::start_with(opts).expect("start PostgreSQL")
}

/// A new empty database with a name unique to this test.
pub fn fresh_db(pg: &PgCluster, prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!("{prefix}_{}", N.fetch_add(1, Ordering::Relaxed));
    pg.psql("postgres", &format!("create database {name}"))
        .expect("create database");
    name
}

/// `[databases.<alias>]` logging in upstream as the superuser.
pub fn db_section(alias: &str, dbname: &str, mode: &str, pool_size: usize, extra: &str) -> String {
    format!(
        "[databases.{alias}]\ndbname = \"{dbname}\"\nuser = \"{SUPERUSER}\"\npassword = \"{PW}\"\n\
         pool_mode = \"{mode}\"\npool_size = {pool_size}\n{extra}\n"
    )
}

/// A whole config: two shards, the admin API on a port of its own, the given `[auth]` and
/// `[limits]` bodies, one node (`pg`), then the database sections. The socket backend is
/// `$HELIOS_TEST_IO_BACKEND` (default `uring`): scripts/test.sh runs the suite with both.
pub fn config(pg: &PgCluster, auth: &str, limits: &str, databases: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:${{HELIOS_TEST_PORT}}\"]\ncores = 2\nshutdown_timeout_ms = 5000\n\n\
         [admin]\nlisten = \"127.0.0.1:${{HELIOS_TEST_ADMIN_PORT}}\"\n\n\
         [io]\nbackend = \"${{HELIOS_TEST_IO_BACKEND:-uring}}\"\n\n\
         [limits]\n{limits}\n\n[auth]\n{auth}\n\n\
         [[nodes]]\nname = \"pg\"\nhost = \"127.0.0.1\"\nport = {}\n\n{databases}",
        pg.port
    )
}

pub const TRUST: &str = "method = \"trust\"";

/// `admin.token` of [`two_node_admin_proxy`].
pub const ADMIN_TOKEN: &str = "admin-v2-token";

/// For the admin API tests: two databases with the same rows (inserted in different orders), a proxy with node `pg`
/// serving `app` (session pooling) from the first and `pg2` serving `app2` from the second.
pub fn two_node_admin_proxy(pg: &PgCluster, admin_extra: &str, plugins: &str) -> Proxy {
    let d1 = fresh_db(pg, "adm_a");
    let d2 = fresh_db(pg, "adm_b");
    pg.psql(
        &d1,
        "create table t (id int, name text); insert into t select g, 'n' || g from generate_series(1, 20) g",
    )
    .unwrap();
    pg.psql(
        &d2,
        "create table t (id int, name text); insert into t select g, 'n' || g from generate_series(20, 1, -1) g",
    )
    .unwrap();
    let dbs = format!(
        "[[nodes]]\nname = \"pg2\"\nhost = \"127.0.0.1\"\nport = {}\n\n{}{}",
        pg.port,
        db_section("app", &d1, "session", 4, ""),
        db_section("app2", &d2, "session", 4, "node = \"pg2\"")
    );
    let cfg = config(pg, TRUST, "", &dbs).replace(
        "[admin]\n",
        &format!(
            "[admin]\ntoken = \"{ADMIN_TOKEN}\"\nsnapshot_interval_ms = 100\nsql_user = \"{SUPERUSER}\"\n\
             sql_password = \"{PW}\"\n{admin_extra}\n"
        ),
    ) + plugins;
    start_proxy(&cfg, None)
}

pub fn start_proxy(config: &str, userlist: Option<&str>) -> Proxy {
    Proxy::start(Path::new(BIN), config, userlist).expect("start heliosproxy")
}

/// A proxy with trust auth and, for `dbname`, the alias `sess` (session pooling) and `tx`
/// (transaction pooling).
pub fn both_modes_proxy(pg: &PgCluster, dbname: &str, pool_size: usize, extra: &str) -> Proxy {
    let dbs = db_section("sess", dbname, "session", pool_size, extra)
        + &db_section("tx", dbname, "transaction", pool_size, extra);
    start_proxy(&config(pg, TRUST, "", &dbs), None)
}

pub fn connect(proxy: &Proxy, user: &str, password: &str, db: &str) -> Client {
    Client::connect(&proxy.conn_str(user, password, db), NoTls)
        .unwrap_or_else(|e| panic!("connect through the proxy as {user} to {db}: {e}"))
}

pub fn try_connect(
    proxy: &Proxy,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client, postgres::Error> {
    Client::connect(&proxy.conn_str(user, password, db), NoTls)
}

pub fn direct(pg: &PgCluster, db: &str) -> Client {
    Client::connect(&pg.conn_str(db), NoTls).expect("connect directly")
}

/// The SQLSTATE of an error, if the server (or proxy) sent one.
/// `pg_terminate_backend(pid)` from a direct connection, then waits until that backend is gone.
pub fn terminate_backend(d: &mut Client, pid: i32) {
    let ok: bool = d
        .query_one("select pg_terminate_backend($1)", &[&pid])
        .unwrap()
        .get(0);
    assert!(ok, "backend {pid} was not there to terminate");
    poll(Duration::from_secs(10), "the backend to exit", || {
        let n: i64 = d
            .query_one(
                "select count(*) from pg_stat_activity where pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    });
}

pub fn sqlstate(e: &postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// Runs psql against a URL (`-X -At`, stop on error).
pub fn psql(url: &str, sql: &str) -> Output {
    Command::new("psql")
        .arg(url)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql")
}

pub fn psql_ok(url: &str, sql: &str) -> String {
    let out = psql(url, sql);
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("psql output is UTF-8")
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn poll<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    try_poll(timeout, f).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `f` every 20 ms until it returns `Some`; `None` once `timeout` has passed.
pub fn try_poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A message from the server, as read by [`Raw`].
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// A field of an ErrorResponse / NoticeResponse (`b'C'` for the SQLSTATE, `b'M'` message).
    pub fn field(&self, kind: u8) -> Option<String> {
        let mut b = &self.body[..];
        while let Some((&k, rest)) = b.split_first() {
            if k == 0 {
                break;
            }
            let end = rest.iter().position(|&x| x == 0)?;
            if k == kind {
                return Some(String::from_utf8_lossy(&rest[..end]).into_owned());
            }
            b = &rest[end + 1..];
        }
        None
    }

    pub fn code(&self) -> Option<String> {
        (self.tag == b'E').then(|| self.field(b'C')).flatten()
    }

    /// The columns of a DataRow as text (`None` for NULL).
    pub fn row(&self) -> Vec<Option<String>> {
        assert_eq!(self.tag, b'D', "not a DataRow: {self:?}");
        let n = i16::from_be_bytes([self.body[0], self.body[1]]) as usize;
        let mut at = 2;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let len = i32::from_be_bytes(self.body[at..at + 4].try_into().unwrap());
            at += 4;
            if len < 0 {
                out.push(None);
            } else {
                let len = len as usize;
                out.push(Some(
                    String::from_utf8_lossy(&self.body[at..at + len]).into_owned(),
                ));
                at += len;
            }
        }
        out
    }
}

/// Why a raw login failed.
#[derive(Debug)]
pub enum LoginError {
    /// The server answered with this ErrorResponse.
    Refused(Msg),
    Io(std::io::Error),
}

/// A hand-driven protocol connection (std TcpStream, blocking, with a read timeout).
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// BackendKeyData: the proxy's process id for this client (its shard in bits 22..30).
    pub pid: i32,
    pub secret: i32,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
            pid: 0,
            secret: 0,
        }
    }

    /// Connects and logs in (trust, cleartext, md5 or SCRAM), through to ReadyForQuery.
    pub fn login(port: u16, user: &str, password: &str, db: &str) -> Result<Raw, LoginError> {
        Raw::login_with(port, &[("user", user), ("database", db)], password)
    }

    /// [`Raw::login`] with the startup packet's parameters given whole (`user` among them).
    pub fn login_with(
        port: u16,
        params: &[(&str, &str)],
        password: &str,
    ) -> Result<Raw, LoginError> {
        let user = params
            .iter()
            .find(|(k, _)| *k == "user")
            .map_or("", |(_, v)| *v);
        let mut r = Raw::connect(port);
        let mut b = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut b).unwrap();
        r.send(&b);
        let mut scram: Option<ScramSha256> = None;
        loop {
            let m = match r.recv() {
                Ok(Some(m)) => m,
                Ok(None) => {
                    return Err(LoginError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed during login",
                    )))
                }
                Err(e) => return Err(LoginError::Io(e)),
            };
            let mut out = BytesMut::new();
            match m.tag {
                b'R' => {
                    let code = i32::from_be_bytes(m.body[..4].try_into().unwrap());
                    let data = &m.body[4..];
                    match code {
                        0 => {}
                        3 => frontend::password_message(password.as_bytes(), &mut out).unwrap(),
                        5 => {
                            let h = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password.as_bytes(),
                                data[..4].try_into().unwrap(),
                            );
                            frontend::password_message(h.as_bytes(), &mut out).unwrap();
                        }
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)
                                .unwrap();
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().expect("SASL continue without SASL");
                            s.update(data).map_err(LoginError::Io)?;
                            frontend::sasl_response(s.message(), &mut out).unwrap();
                        }
                        12 => {
                            let s = scram.as_mut().expect("SASL final without SASL");
                            s.finish(data).map_err(LoginError::Io)?;
                        }
                        c => panic!("unexpected authentication request {c}"),
                    }
                    if !out.is_empty() {
                        r.send(&out);
                    }
                }
                b'K' => {
                    r.pid = i32::from_be_bytes(m.body[..4].try_into().unwrap());
                    r.secret = i32::from_be_bytes(m.body[4..8].try_into().unwrap());
                }
                b'E' => return Err(LoginError::Refused(m)),
                b'Z' => return Ok(r),
                _ => {}
            }
        }
    }

    pub fn trust(port: u16, db: &str) -> Raw {
        match Raw::login(port, SUPERUSER, "", db) {
            Ok(r) => r,
            Err(e) => panic!("raw login to {db}: {e:?}"),
        }
    }

    /// The shard the proxy put this client on (from its BackendKeyData process id).
    pub fn shard(&self) -> i32 {
        (self.pid >> 22) & 0xFF
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the proxy");
    }

    /// The next message; `Ok(None)` at end of stream.
    pub fn recv(&mut self) -> std::io::Result<Option<Msg>> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..len + 1].to_vec();
                    self.buf.drain(..len + 1);
                    return Ok(Some(Msg { tag, body }));
                }
            }
            let mut chunk = [0u8; 16384];
            let n = match self.stream.read(&mut chunk) {
                Ok(n) => n,
                // A reset after the proxy's last message is still the end of the stream.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Messages up to and including the next ReadyForQuery.
    pub fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            match self.recv() {
                Ok(Some(m)) => {
                    let z = m.tag == b'Z';
                    out.push(m);
                    if z {
                        return out;
                    }
                }
                Ok(None) => panic!("connection closed before ReadyForQuery; got {out:?}"),
                Err(e) => panic!("reading: {e}; got {out:?}"),
            }
        }
    }

    /// Every message until the proxy closes the connection (panics if it stays open past the
    /// read timeout).
    pub fn until_closed(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            match self.recv() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => return out,
                Err(e) => panic!("the proxy did not close the connection ({e}); got {out:?}"),
            }
        }
    }

    /// A simple query, through ReadyForQuery.
    pub fn query(&mut self, sql: &str) -> Vec<Msg> {
        let mut b = BytesMut::new();
        frontend::query(sql, &mut b).unwrap();
        self.send(&b);
        self.until_ready()
    }

    /// Parse (named) + Bind + Execute + Sync with text parameters.
    pub fn extended(&mut self, stmt: &str, sql: Option<&str>, params: &[&str]) -> Vec<Msg> {
        let mut b = BytesMut::new();
        if let Some(sql) = sql {
            frontend::parse(stmt, sql, std::iter::empty(), &mut b).unwrap();
        }
        frontend::bind(
            "",
            stmt,
            std::iter::empty::<i16>(),
            params.iter(),
            |p, buf| {
                buf.extend_from_slice(p.as_bytes());
                Ok::<_, Box<dyn std::error::Error + Sync + Send>>(postgres_protocol::IsNull::No)
            },
            Some(0),
            &mut b,
        )
        .map_err(|_| ())
        .unwrap();
        frontend::execute("", 0, &mut b).unwrap();
        frontend::sync(&mut b);
        self.send(&b);
        self.until_ready()
    }

    pub fn terminate(mut self) {
        let mut b = BytesMut::new();
        frontend::terminate(&mut b);
        let _ = self.stream.write_all(&b);
    }
}

/// The first DataRow's first column.
pub fn first_value(msgs: &[Msg]) -> Option<String> {
    msgs.iter()
        .find(|m| m.tag == b'D')
        .and_then(|m| m.row()[0].clone())
}

/// The SQLSTATE of the first ErrorResponse.
pub fn first_error(msgs: &[Msg]) -> Option<String> {
    msgs.iter().find_map(|m| m.code())
}

/// The transaction status of the last ReadyForQuery.
pub fn ready_status(msgs: &[Msg]) -> u8 {
    let z = msgs
        .iter()
        .rev()
        .find(|m| m.tag == b'Z')
        .expect("no ReadyForQuery");
    z.body[0]
}

// ---- observability and backpressure helpers (engine/tests/observability.rs, backpressure.rs) ----

/// Like [`config`], but with the whole `[admin]` body given (`listen`, `token`,
/// `snapshot_interval_ms`, …) and extra `[io]` lines after `backend`.
pub fn config_custom(
    pg: &PgCluster,
    admin: &str,
    io_extra: &str,
    auth: &str,
    limits: &str,
    databases: &str,
) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:${{HELIOS_TEST_PORT}}\"]\ncores = 2\nshutdown_timeout_ms = 5000\n\n\
         [admin]\n{admin}\n\n\
         [io]\nbackend = \"${{HELIOS_TEST_IO_BACKEND:-uring}}\"\n{io_extra}\n\n\
         [limits]\n{limits}\n\n[auth]\n{auth}\n\n\
         [[nodes]]\nname = \"pg\"\nhost = \"127.0.0.1\"\nport = {}\n\n{databases}",
        pg.port
    )
}

/// The `[admin]` body of [`config`] plus snapshots every 100 ms (the minimum), so the admin
/// API and the console catch up with what the shards did within a few tenths of a second.
pub const FAST_ADMIN: &str =
    "listen = \"127.0.0.1:${HELIOS_TEST_ADMIN_PORT}\"\nsnapshot_interval_ms = 100";

/// [`config`] with [`FAST_ADMIN`].
pub fn config_fast_snapshots(pg: &PgCluster, auth: &str, limits: &str, databases: &str) -> String {
    config_custom(pg, FAST_ADMIN, "", auth, limits, databases)
}

/// One HTTP/1.1 request to the admin API on 127.0.0.1 (the admin closes every connection after
/// its answer): `(status, headers as lowercase "name: value" lines, body)`.
pub fn http(
    port: u16,
    method: &str,
    target: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String, String)> {
    http_body(port, method, target, token, "")
}

/// [`http`] with a request body (sent as JSON).
pub fn http_body(
    port: u16,
    method: &str,
    target: &str,
    token: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.set_write_timeout(Some(Duration::from_secs(15)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no end of headers in {text:?}"),
        )
    })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad status line in {head:?}"),
            )
        })?;
    Ok((status, head.to_ascii_lowercase(), body.to_string()))
}

/// GET on the admin API without a token; panics unless it answers 200; the body as JSON.
pub fn admin_json(port: u16, target: &str) -> serde_json::Value {
    let (status, _, body) =
        http(port, "GET", target, None).unwrap_or_else(|e| panic!("GET {target}: {e}"));
    assert_eq!(status, 200, "GET {target}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {target}: {e}: {body}"))
}

/// `(name, /proc directory)` of each thread of `pid` (none once it has exited).
pub fn threads(pid: u32) -> Vec<(String, std::path::PathBuf)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            (comm.trim().to_string(), t.path())
        })
        .collect()
}

/// The value of the `key` line of a /proc file made of `key: value` lines (spaces allowed
/// before the colon, as in `sched`).
pub fn proc_field(path: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// Resident set size of a process in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

// ---- plugin helpers (engine/tests/plugins.rs) ----

/// A guest plugin built by `scripts/build-plugins.sh`: `<repo>/target/plugins/<name>.wasm`
/// (or `$HELIOS_PLUGIN_WASM_DIR/<name>.wasm`). Panics with the command to run if it is missing.
pub fn plugin_wasm(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("HELIOS_PLUGIN_WASM_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let p = dir.join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: build the guest plugins first with scripts/build-plugins.sh",
        p.display()
    );
    p
}

/// A `[[plugins.plugin]]` entry for a built example plugin; `extra` is more lines of the entry
/// (`on_error = "fail_open"`, `hooks = [...]`).
pub fn plugin_entry(name: &str, extra: &str) -> String {
    format!(
        "[[plugins.plugin]]\nname = \"{name}\"\nsource = \"{}\"\n{extra}\n",
        plugin_wasm(name).display()
    )
}

/// A `[plugins]` section (enabled, `extra` keys such as `timeout_ms = 20`) followed by
/// `entries` (from [`plugin_entry`]); append it to what [`config`] returns.
/// Compiled modules are cached in `<repo>/target/plugin-test-cache` (as the plugin-host tests
/// and benchmarks do), so each proxy start does not recompile them.
pub fn plugins_section(extra: &str, entries: &str) -> String {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-test-cache");
    format!(
        "\n[plugins]\nenabled = true\ncompiled_cache_dir = \"{}\"\n{extra}\n\n{entries}",
        cache.display()
    )
}
