//! A `heliosproxy` process for integration tests: its config and userlist in a scratch
//! directory, a port from the OS, killed on drop (and its log printed if the test panicked).
//!
//! The config text names its listen port as `${HELIOS_TEST_PORT}` (and the admin API's as
//! `${HELIOS_TEST_ADMIN_PORT}`), which the proxy's own `${VAR}` substitution fills in from the
//! environment [`Proxy::start`] gives it, so a reload keeps the same addresses. A config with a
//! literal `listen` port is started on that port.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{free_port, ChildProcess};

/// The environment variable a test config uses for its listen port.
pub const PORT_VAR: &str = "HELIOS_TEST_PORT";
/// The environment variable a test config uses for the admin API's port (`[admin] listen`).
pub const ADMIN_PORT_VAR: &str = "HELIOS_TEST_ADMIN_PORT";

const CONFIG_FILE: &str = "proxy.toml";

/// What the proxy logs once every shard is accepting (engine/src/startup.rs).
const READY_LINE: &str = "heliosproxy listening on";
/// What the proxy logs after a successful SIGHUP reload.
const RELOADED_LINE: &str = "configuration reloaded";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// `HELIOS_TEST_ANOMALY=1`: every proxy whose config has no `[anomaly]` table of its own runs
/// with [`ANOMALY_SECTION`] (detection on), and fails its test when dropped if its log shows an
/// SQL-injection or rate-spike event: the suite's ordinary traffic must give none
/// (docs/signal.md). Tests of the detectors configure `[anomaly]` themselves and are not
/// judged.
pub const ANOMALY_VAR: &str = "HELIOS_TEST_ANOMALY";
/// What the switch appends: the defaults, with a short warm-up so that most of a test's
/// traffic is judged.
pub const ANOMALY_SECTION: &str = "\n[anomaly]\nenabled = true\nwarmup_s = 2\n";
/// The events that fail a test under the switch (engine/src/signal: `EVENT_LOG_PREFIX`).
const FALSE_POSITIVES: [&str; 2] = [
    "anomaly event: kind=sql_injection",
    "anomaly event: kind=rate_spike",
];

/// The config as the switch wants it, and whether the switch applies to it.
fn with_anomaly(config_toml: &str) -> (String, bool) {
    let on = std::env::var(ANOMALY_VAR).is_ok_and(|v| v == "1")
        && !config_toml
            .lines()
            .any(|l| l.trim_start().starts_with("[anomaly"));
    if on {
        (format!("{config_toml}{ANOMALY_SECTION}"), true)
    } else {
        (config_toml.to_string(), false)
    }
}

/// A running proxy.
pub struct Proxy {
    process: ChildProcess,
    dir: PathBuf,
    port: u16,
    admin_port: u16,
    /// [`ANOMALY_VAR`] turned detection on: check the log for false positives at drop.
    watch_anomalies: bool,
}

impl Proxy {
    /// Writes `config_toml` (and `userlist`, as `userlist.txt` next to it, so
    /// `userlist = "userlist.txt"` finds it) into a scratch directory, starts `bin --config`,
    /// and waits until every shard listens. A port clash (another process took the port between
    /// our probe and the proxy's bind) is retried with a fresh port.
    pub fn start(bin: &Path, config_toml: &str, userlist: Option<&str>) -> Result<Proxy> {
        let dir = std::env::temp_dir().join(format!(
            "helios-proxy-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (config_toml, watch_anomalies) = with_anomaly(config_toml);
        let config_toml = config_toml.as_str();
        std::fs::write(dir.join(CONFIG_FILE), config_toml)?;
        // Run it under a name of its own: on a shared machine a `pkill heliosproxy` meant for a
        // benchmark must not end a test's proxy.
        let exe = dir.join("proxy-under-test");
        std::os::unix::fs::symlink(bin, &exe)
            .with_context(|| format!("symlinking {}", bin.display()))?;
        if let Some(u) = userlist {
            std::fs::write(dir.join("userlist.txt"), u)?;
        }
        let templated = config_toml.contains(&format!("${{{PORT_VAR}}}"));
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = if templated {
                free_port()
            } else {
                literal_port(config_toml).context(
                    "the config has neither ${HELIOS_TEST_PORT} nor a 127.0.0.1:PORT listen address",
                )?
            };
            let admin_port = free_port();
            let mut cmd = Command::new(&exe);
            cmd.arg("--config")
                .arg(dir.join(CONFIG_FILE))
                .env(PORT_VAR, port.to_string())
                .env(ADMIN_PORT_VAR, admin_port.to_string())
                .current_dir(&dir);
            let mut process = ChildProcess::spawn(cmd, "proxy")?;
            match wait_for_log(&mut process, READY_LINE, 0, Duration::from_secs(20)) {
                Ok(()) => {
                    return Ok(Proxy {
                        process,
                        dir,
                        port,
                        admin_port,
                        watch_anomalies,
                    })
                }
                Err(e) => {
                    last_log = format!("{e:#}\n{}", process.log());
                    let clash = last_log.contains("in use") || last_log.contains("cannot listen");
                    if !(templated && clash) {
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        bail!("heliosproxy did not start:\n{last_log}")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port in `${HELIOS_TEST_ADMIN_PORT}` (meaningful if the config uses it).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// `postgres://USER:PW@127.0.0.1:PORT/DB` (for psql and pgbench); an empty password is
    /// left out.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        let auth = if password.is_empty() {
            user.to_string()
        } else {
            format!("{user}:{password}")
        };
        format!("postgres://{auth}@127.0.0.1:{}/{db}", self.port)
    }

    /// A key=value connection string for the `postgres` crate; an empty password is left out.
    pub fn conn_str(&self, user: &str, password: &str, db: &str) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user={user} dbname={db} connect_timeout=10",
            self.port
        );
        if !password.is_empty() {
            s.push_str(&format!(" password={password}"));
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends a signal (`libc::SIGHUP`, `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        self.process.signal(sig)
    }

    /// The proxy's output so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the config file (for a reload).
    pub fn write_config(&self, config_toml: &str) -> Result<()> {
        let (config_toml, _) = with_anomaly(config_toml);
        Ok(std::fs::write(self.dir.join(CONFIG_FILE), config_toml)?)
    }

    /// Replaces the userlist file (for a reload).
    pub fn write_userlist(&self, userlist: &str) -> Result<()> {
        Ok(std::fs::write(self.dir.join("userlist.txt"), userlist)?)
    }

    /// SIGHUP, then waits until the proxy logged one more successful reload than before.
    pub fn reload(&mut self) -> Result<()> {
        let before = self.log().matches(RELOADED_LINE).count();
        self.signal(libc::SIGHUP);
        wait_for_log(
            &mut self.process,
            RELOADED_LINE,
            before,
            Duration::from_secs(10),
        )
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_timeout(timeout)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A proxy that died during the test explains most failures: say so before its log.
            match self.process.child.try_wait() {
                Ok(Some(st)) => eprintln!("---- the proxy had exited: {st} ----"),
                _ => eprintln!("---- the proxy was still running ----"),
            }
        }
        // The ChildProcess field kills the process (and prints its log if the test panicked).
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.watch_anomalies && !std::thread::panicking() {
            let log = self.log();
            let bad: Vec<&str> = log
                .lines()
                .filter(|l| FALSE_POSITIVES.iter().any(|p| l.contains(p)))
                .collect();
            if !bad.is_empty() {
                panic!(
                    "{ANOMALY_VAR}=1: the proxy reported ordinary traffic as an anomaly:\n{}",
                    bad.join("\n")
                );
            }
        }
    }
}

/// Polls the log until `line` occurs more than `seen` times; fails early if the process exited.
fn wait_for_log(
    process: &mut ChildProcess,
    line: &str,
    seen: usize,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if process.log().matches(line).count() > seen {
            return Ok(());
        }
        if let Ok(Some(st)) = process.child.try_wait() {
            bail!("heliosproxy exited ({st}) before logging {line:?}");
        }
        if Instant::now() > deadline {
            bail!("heliosproxy did not log {line:?} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The port of the first `127.0.0.1:PORT` in the text.
fn literal_port(config: &str) -> Option<u16> {
    let at = config.find("127.0.0.1:")? + "127.0.0.1:".len();
    let digits: String = config[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}
