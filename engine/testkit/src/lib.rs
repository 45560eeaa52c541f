//! Test harness: throwaway PostgreSQL clusters from the system binaries, free ports from the OS,
//! and proxy processes that are killed when the test ends.
//!
//! A [`PgCluster`] is a real PostgreSQL server: `initdb` + `pg_ctl` from
//! `/usr/lib/postgresql/<ver>/bin`, run as the `postgres` user when the tests run as root (initdb
//! refuses root), listening on 127.0.0.1 on a port the OS picked, with SCRAM authentication. It is
//! stopped and its directory removed on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
pub mod certs;
pub mod proxy;

/// The superuser every cluster is created with, and its password.
pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "helios-test-pw";

/// Where the PostgreSQL server binaries are (the newest installed major version).
pub fn pg_bindir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .context("no /usr/lib/postgresql/<version>/bin/initdb found")
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// Polls until something accepts TCP connections on `port`, or the deadline passes.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command that runs as the `postgres` OS user when we are root.
fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Options for a scratch cluster.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Extra `pg_hba.conf` lines, placed before the default `scram-sha-256` line.
    pub hba: Vec<String>,
    /// Extra `postgresql.conf` lines.
    pub conf: Vec<String>,
}

/// A running throwaway PostgreSQL cluster.
pub struct PgCluster {
    dir: PathBuf,
    bindir: PathBuf,
    pub port: u16,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A new, empty directory for one cluster.
fn scratch_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "helios-pg-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// initdb and pg_basebackup refuse to run as root: the harness runs them as `postgres`, which
/// must own the cluster's directory.
fn give_to_postgres(dir: &Path) -> Result<()> {
    if is_root() {
        run_checked(
            Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(dir),
            "chown",
        )?;
    }
    Ok(())
}

impl PgCluster {
    pub fn start() -> Result<PgCluster> {
        Self::start_with(PgOptions::default())
    }

    pub fn start_with(opts: PgOptions) -> Result<PgCluster> {
        let bindir = pg_bindir()?;
        let dir = scratch_dir()?;
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD)?;
        give_to_postgres(&dir)?;
        let data = dir.join("data");
        run_checked(
            pg_command(&bindir.join("initdb"))
                .arg("-D")
                .arg(&data)
                .arg("-U")
                .arg(SUPERUSER)
                .arg("--auth=scram-sha-256")
                .arg(format!("--pwfile={}", pwfile.display()))
                .arg("--no-sync")
                .arg("-E")
                .arg("UTF8")
                .arg("--locale=C"),
            "initdb",
        )?;
        let mut hba = String::from("local all all trust\n");
        for l in &opts.hba {
            hba.push_str(l);
            hba.push('\n');
        }
        hba.push_str("host all all 127.0.0.1/32 scram-sha-256\n");
        // Streaming standbys (`standby_of`) connect over loopback with the superuser password.
        hba.push_str("host replication all 127.0.0.1/32 scram-sha-256\n");
        std::fs::write(data.join("pg_hba.conf"), hba)?;
        Self::launch(dir, bindir, &opts, "")
    }

    /// A streaming standby of `primary`: `pg_basebackup -R` over loopback (WAL streamed; every
    /// cluster keeps 256 MB of WAL, so a primary busy with other tests' writes does not recycle
    /// a segment the copy still needs), then
    /// started on its own port; `pg_ctl start -w` returns once it accepts read-only connections.
    pub fn standby_of(primary: &PgCluster, opts: PgOptions) -> Result<PgCluster> {
        let bindir = primary.bindir.clone();
        let dir = scratch_dir()?;
        give_to_postgres(&dir)?;
        let data = dir.join("data");
        run_checked(
            pg_command(&bindir.join("pg_basebackup"))
                .arg("-d")
                .arg(format!(
                    "host=127.0.0.1 port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} application_name=standby{}",
                    primary.port,
                    SEQ.load(Ordering::Relaxed)
                ))
                .arg("-D")
                .arg(&data)
                .arg("-R")
                .arg("-X")
                .arg("stream")
                .arg("-c")
                .arg("fast")
                .arg("--no-sync"),
            "pg_basebackup",
        )?;
        // The primary's own settings came with the copy: `launch` writes this cluster's port and
        // socket directory after them, and keeps the primary_conninfo `-R` appended.
        let copied = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap_or_default();
        let keep: String = copied
            .lines()
            .filter(|l| l.starts_with("primary_conninfo"))
            .map(|l| format!("{l}\n"))
            .collect();
        Self::launch(dir, bindir, &opts, &keep)
    }

    /// Writes postgresql.auto.conf (a fresh port each try) and starts the server.
    fn launch(dir: PathBuf, bindir: PathBuf, opts: &PgOptions, extra: &str) -> Result<PgCluster> {
        let data = dir.join("data");
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port();
            let mut conf = format!(
                "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
                 max_connections = 300\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
                 shared_buffers = 128MB\npassword_encryption = 'scram-sha-256'\nlog_min_messages = warning\n\
                 wal_keep_size = '256MB'\n",
                dir.display()
            );
            conf.push_str(extra);
            for l in &opts.conf {
                conf.push_str(l);
                conf.push('\n');
            }
            std::fs::write(data.join("postgresql.auto.conf"), conf)?;
            if is_root() {
                run_checked(
                    Command::new("chown")
                        .arg("-R")
                        .arg("postgres:postgres")
                        .arg(&dir),
                    "chown",
                )?;
            }
            let started = run_checked(
                pg_command(&bindir.join("pg_ctl"))
                    .arg("-D")
                    .arg(&data)
                    .arg("-l")
                    .arg(dir.join("server.log"))
                    .arg("-w")
                    .arg("-t")
                    .arg("60")
                    .arg("start"),
                "pg_ctl start",
            );
            match started {
                Ok(_) => {
                    let cluster = PgCluster {
                        dir: dir.clone(),
                        bindir: bindir.clone(),
                        port,
                    };
                    wait_for_port(port, Duration::from_secs(30))?;
                    return Ok(cluster);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap()).context(format!(
            "server log:\n{}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        ))
    }

    /// `postgres://postgres:PW@127.0.0.1:PORT/DB`
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// A key=value connection string for the `postgres` crate.
    pub fn conn_str(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname={db}",
            self.port
        )
    }

    /// Runs SQL through psql over the Unix socket as the superuser; returns stdout (`-At`).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = run_checked(
            Command::new("psql")
                .arg("-h")
                .arg(&self.dir)
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-U")
                .arg(SUPERUSER)
                .arg("-d")
                .arg(db)
                .arg("-v")
                .arg("ON_ERROR_STOP=1")
                .arg("-At")
                .arg("-c")
                .arg(sql),
            "psql",
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// The server's log so far (for test failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The postmaster's process id (first line of postmaster.pid).
    pub fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Sends `sig` to the postmaster (SIGKILL: a crash; SIGSTOP/SIGCONT: a hang).
    pub fn signal(&self, sig: i32) -> Result<()> {
        let pid = self.postmaster_pid().context("no postmaster.pid")?;
        // SAFETY: kill with the pid of a server this harness started.
        if unsafe { libc::kill(pid, sig) } != 0 {
            bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// `sig` to the postmaster and to every process it started (backends, WAL writer, …).
    pub fn signal_all(&self, sig: i32) -> Result<()> {
        let pid = self.postmaster_pid().context("no postmaster.pid")?;
        let mut children = Vec::new();
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid …: the comm may hold spaces; read after its last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(pid) {
                children.push(child);
            }
        }
        self.signal(sig)?;
        for c in children {
            // SAFETY: kill with pids of this server's own processes.
            unsafe { libc::kill(c, sig) };
        }
        Ok(())
    }

    /// A crash, as when the host dies: SIGKILL to every process of the server (killing the
    /// postmaster alone leaves its backends serving the connections they have).
    pub fn crash(&self) -> Result<()> {
        self.signal_all(libc::SIGKILL)
    }

    /// A hang: every process of the server stopped (SIGSTOP) until the guard is dropped
    /// (SIGCONT), so a failing test does not leave a stopped server behind.
    pub fn freeze(&self) -> Result<Frozen<'_>> {
        self.signal_all(libc::SIGSTOP)?;
        Ok(Frozen(self))
    }

    /// `pg_ctl promote -w`: a standby leaves recovery and takes writes.
    pub fn promote(&self) -> Result<()> {
        run_checked(
            pg_command(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-w")
                .arg("promote"),
            "pg_ctl promote",
        )?;
        Ok(())
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop(&self) -> Result<()> {
        run_checked(
            pg_command(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-m")
                .arg("fast")
                .arg("-w")
                .arg("stop"),
            "pg_ctl stop",
        )?;
        Ok(())
    }

    /// Polls (up to `timeout`) until this standby has replayed what `primary` has written so far.
    pub fn wait_replayed(&self, primary: &PgCluster, timeout: Duration) -> Result<()> {
        // The insert position: with synchronous_commit = off (this harness's default) a commit
        // record may still be in the WAL buffers, past pg_current_wal_lsn().
        let target = primary.psql("postgres", "select pg_current_wal_insert_lsn()")?;
        let deadline = Instant::now() + timeout;
        loop {
            let caught = self.psql(
                "postgres",
                &format!("select pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"),
            )?;
            if caught == "t" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "standby on port {} did not replay up to {target} within {timeout:?}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A server stopped by [`PgCluster::freeze`]; continued when dropped.
pub struct Frozen<'a>(&'a PgCluster);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = self.0.signal_all(libc::SIGCONT);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = pg_command(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-m")
            .arg("immediate")
            .arg("-w")
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process (the proxy) that is killed when dropped; its output goes to a log file that
/// is printed if the test panics while it is alive.
pub struct ChildProcess {
    pub child: Child,
    pub log_path: PathBuf,
}

impl ChildProcess {
    /// Spawns `cmd` with stdout and stderr sent to a temporary log file.
    pub fn spawn(mut cmd: Command, name: &str) -> Result<ChildProcess> {
        let log_path = std::env::temp_dir().join(format!(
            "helios-{name}-{}-{}.log",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let log = std::fs::File::create(&log_path)?;
        let child = cmd
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(ChildProcess { child, log_path })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. `libc::SIGHUP`).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid we spawned.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log_path.display(), self.log());
        }
        let _ = std::fs::remove_file(&self.log_path);
    }
}
