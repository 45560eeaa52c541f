//! Upstream credential leases for access contexts (`databases.<alias>.credentials`,
//! docs/contexts.md): where a context's login and password come from, refreshed before they
//! expire, off the shards.
//!
//! One process-wide registry ([`configure`], at start-up and on every reload) holds a
//! [`LeaseCell`] per context with credentials; the `helios-leases` thread refreshes each inside
//! its window (`lease_refresh_window_s` before expiry, moved earlier by up to
//! `lease_refresh_jitter` of the window). A shard reads the cell only when it opens a server
//! connection (a mutex held for a clone of an `Arc`: rare, never per message) and records the
//! lease's generation on the connection. A connection whose generation is not the cell's is
//! *draining*: the pool never hands it out again and closes it when it comes back or sits idle
//! (`pool::expired`); a transaction on it finishes first. Source down: the last lease keeps
//! serving until it expires; after that new server connections fail closed with an error naming
//! the context and the expiry, while open ones go on serving.
//!
//! Secrets: a lease's password is never logged or shown; errors name the source, not its output.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use helios_config::context::CredentialSource;
use helios_config::{Config, DatabaseConfig};

/// How long a `command:` source may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed refresh, the next try.
const RETRY: Duration = Duration::from_secs(1);

/// One lease: the login and password, until `expires_at` (unix seconds).
#[derive(Clone)]
pub struct Lease {
    pub user: String,
    pub password: String,
    pub expires_at: u64,
    pub generation: u64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("user", &self.user)
            .field("password", &"<secret>")
            .field("expires_at", &self.expires_at)
            .field("generation", &self.generation)
            .finish()
    }
}

/// What a context's lease source is configured as (re-read at every reload).
#[derive(Clone, Debug, PartialEq)]
struct Source {
    source: CredentialSource,
    user: Option<String>,
    ttl_s: u64,
    window_s: u64,
    jitter: f64,
}

struct State {
    source: Source,
    lease: Option<Arc<Lease>>,
    /// The last refresh's failure (cleared by a success).
    error: Option<String>,
    next_refresh: Instant,
    refreshes: u64,
    failures: u64,
}

/// The lease of one context.
pub struct LeaseCell {
    alias: String,
    generation: AtomicU64,
    state: Mutex<State>,
}

/// A lease's status for the console and the admin API (no secrets).
#[derive(Clone, Debug)]
pub struct LeaseStatus {
    pub database: String,
    pub source: &'static str,
    pub user: Option<String>,
    pub generation: u64,
    pub expires_at: Option<u64>,
    pub refreshes: u64,
    pub failures: u64,
    pub error: Option<String>,
}

/// How a pool refers to its context's lease (`ServerTarget::lease`): equal when it is the same
/// cell, so a reload does not rebuild pools whose lease did not change.
#[derive(Clone)]
pub struct LeaseRef(pub Arc<LeaseCell>);

impl PartialEq for LeaseRef {
    fn eq(&self, o: &LeaseRef) -> bool {
        Arc::ptr_eq(&self.0, &o.0)
    }
}
impl Eq for LeaseRef {}

impl std::fmt::Debug for LeaseRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeaseRef({})", self.0.alias)
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl LeaseCell {
    /// The lease to open a new server connection with, or why there is none (fail closed).
    pub fn current(&self) -> Result<Arc<Lease>, String> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let why = st.error.as_deref().unwrap_or("no refresh succeeded yet");
        match &st.lease {
            Some(l) if l.expires_at > unix_now() => Ok(l.clone()),
            Some(l) => Err(format!(
                "access context \"{}\": its upstream credential lease expired at {} and the credential source failed: {why}",
                self.alias,
                when(l.expires_at)
            )),
            None => Err(format!(
                "access context \"{}\": no upstream credential lease: {why}",
                self.alias
            )),
        }
    }

    /// A connection opened under generation `g` is draining (a newer lease is active).
    #[inline]
    pub fn stale(&self, g: u64) -> bool {
        self.generation.load(Ordering::Relaxed) != g
    }

    pub fn status(&self) -> LeaseStatus {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        LeaseStatus {
            database: self.alias.clone(),
            source: match st.source.source {
                CredentialSource::Env(_) => "env",
                CredentialSource::File(_) => "file",
                CredentialSource::Command(_) => "command",
            },
            user: st.lease.as_ref().map(|l| l.user.clone()),
            generation: self.generation.load(Ordering::Relaxed),
            expires_at: st.lease.as_ref().map(|l| l.expires_at),
            refreshes: st.refreshes,
            failures: st.failures,
            error: st.error.clone(),
        }
    }

    /// Fetches a new lease now; on success it becomes the active one (a new generation).
    fn refresh(&self) {
        let source = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .source
            .clone();
        let got = fetch(&source);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match got {
            Ok((user, password, expires_at)) => {
                let expires_at = expires_at.unwrap_or_else(|| unix_now() + source.ttl_s);
                // The same credentials again (a static env: or file: source): the lease is
                // extended, and its connections stay.
                let same = st
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.user == user && l.password == password);
                let generation = self.generation.load(Ordering::Relaxed) + u64::from(!same);
                st.lease = Some(Arc::new(Lease {
                    user,
                    password,
                    expires_at,
                    generation,
                }));
                if st.error.take().is_some() {
                    log::warn!(
                        "access context \"{}\": credential source recovered",
                        self.alias
                    );
                }
                st.refreshes += 1;
                st.next_refresh = now + refresh_in(&source, expires_at);
                self.generation.store(generation, Ordering::Relaxed);
                if same {
                    return;
                }
                log::info!(
                    "access context \"{}\": new upstream credential lease (generation {generation}, expires {}); connections of the previous lease drain",
                    self.alias,
                    when(expires_at)
                );
            }
            Err(e) => {
                st.failures += 1;
                if st.error.as_deref() != Some(e.as_str()) {
                    log::error!(
                        "access context \"{}\": credential refresh failed: {e} (open connections keep serving; new ones use the current lease until it expires)",
                        self.alias
                    );
                }
                st.error = Some(e);
                st.next_refresh = now + RETRY;
            }
        }
    }
}

/// When to refresh a lease expiring at `expires_at`: `window` before it, earlier by a random part
/// of up to `jitter × window`; at least a second from now.
fn refresh_in(s: &Source, expires_at: u64) -> Duration {
    let left = expires_at.saturating_sub(unix_now()) as f64;
    let jitter = rand::random::<f64>() * s.jitter * s.window_s as f64;
    Duration::from_secs_f64((left - s.window_s as f64 - jitter).max(1.0))
}

/// `unix 1764700000 (12 s ago)` / `(in 30 s)`.
fn when(unix: u64) -> String {
    let now = unix_now();
    if unix <= now {
        format!("unix {unix} ({} s ago)", now - unix)
    } else {
        format!("unix {unix} (in {} s)", unix - now)
    }
}

#[derive(serde::Deserialize)]
struct JsonLease {
    user: Option<String>,
    password: String,
    /// Unix seconds.
    expires_at: Option<u64>,
}

/// (user, password, expires_at) from the source.
fn fetch(s: &Source) -> Result<(String, String, Option<u64>), String> {
    let need_user = |u: Option<String>| -> Result<String, String> {
        u.or_else(|| s.user.clone())
            .ok_or_else(|| "the lease names no user and databases.<alias>.user is not set".into())
    };
    let json = |text: &str| -> Result<(String, String, Option<u64>), String> {
        let l: JsonLease = serde_json::from_str(text).map_err(|e| {
            format!("not a JSON lease {{\"user\",\"password\",\"expires_at\"}}: {e}")
        })?;
        Ok((need_user(l.user)?, l.password, l.expires_at))
    };
    match &s.source {
        CredentialSource::Env(name) => match std::env::var(name) {
            Ok(p) if !p.is_empty() => Ok((need_user(None)?, p, None)),
            _ => Err(format!("environment variable {name} is not set")),
        },
        CredentialSource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("file {path}: {e}"))?;
            let text = text.trim();
            if text.starts_with('{') {
                json(text).map_err(|e| format!("file {path}: {e}"))
            } else if text.is_empty() {
                Err(format!("file {path} is empty"))
            } else {
                Ok((need_user(None)?, text.to_string(), None))
            }
        }
        CredentialSource::Command(cmd) => {
            let out = run(cmd)?;
            json(out.trim()).map_err(|e| format!("command {cmd:?}: {e}"))
        }
    }
}

/// Runs a `command:` source (no shell), at most [`COMMAND_TIMEOUT`]; its stdout.
fn run(cmd: &str) -> Result<String, String> {
    let mut words = cmd.split_whitespace();
    let prog = words.next().ok_or("empty command")?;
    let mut child = Command::new(prog)
        .args(words)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("command {cmd:?}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    // The output is small; read it on a helper thread so a hung program cannot block us.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.take(1 << 16).read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "command {cmd:?} timed out after {COMMAND_TIMEOUT:?}"
                ));
            }
            Err(e) => return Err(format!("command {cmd:?}: {e}")),
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("command {cmd:?} failed ({status})"));
    }
    Ok(out)
}

#[derive(Default)]
struct Registry {
    cells: Mutex<HashMap<String, Arc<LeaseCell>>>,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

/// The lease cell of a context, if it takes its credentials from a source.
pub fn cell(alias: &str) -> Option<Arc<LeaseCell>> {
    registry()
        .cells
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(alias)
        .cloned()
}

/// Every context's lease status, by database.
pub fn statuses() -> Vec<LeaseStatus> {
    let cells: Vec<Arc<LeaseCell>> = registry()
        .cells
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let mut v: Vec<LeaseStatus> = cells.iter().map(|c| c.status()).collect();
    v.sort_by(|a, b| a.database.cmp(&b.database));
    v
}

fn source_of(db: &DatabaseConfig) -> Option<Source> {
    let c = db.credentials.as_deref()?;
    Some(Source {
        // Validated when the configuration was loaded.
        source: CredentialSource::parse(c).ok()?,
        user: db.user.clone(),
        ttl_s: db.lease_ttl_s,
        window_s: db.lease_refresh_window_s,
        jitter: db.lease_refresh_jitter.0,
    })
}

/// Brings the registry in line with `config` (start-up, reload; off the shards): a new context
/// or a changed source is fetched now (blocking, bounded by the command timeout), so the
/// shards' first connections have a lease; contexts gone are dropped. Starts the refresher
/// thread once.
pub fn configure(config: &Config) {
    let mut fresh = Vec::new();
    {
        let mut cells = registry().cells.lock().unwrap_or_else(|e| e.into_inner());
        cells.retain(|alias, _| {
            config
                .databases
                .get(alias)
                .is_some_and(|d| d.credentials.is_some())
        });
        for (alias, db) in &config.databases {
            let Some(source) = source_of(db) else {
                continue;
            };
            match cells.get(alias) {
                Some(c) => {
                    let mut st = c.state.lock().unwrap_or_else(|e| e.into_inner());
                    if st.source != source {
                        st.source = source;
                        drop(st);
                        fresh.push(c.clone());
                    }
                }
                None => {
                    let c = Arc::new(LeaseCell {
                        alias: alias.clone(),
                        generation: AtomicU64::new(0),
                        state: Mutex::new(State {
                            source,
                            lease: None,
                            error: None,
                            next_refresh: Instant::now(),
                            refreshes: 0,
                            failures: 0,
                        }),
                    });
                    cells.insert(alias.clone(), c.clone());
                    fresh.push(c);
                }
            }
        }
    }
    for c in fresh {
        c.refresh();
    }
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("helios-leases".into())
            .spawn(refresher);
        if let Err(e) = spawned {
            log::error!("credential leases: refresher thread not started: {e}");
        }
    });
}

/// Refreshes each lease when it is due; checks four times a second.
fn refresher() {
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let cells: Vec<Arc<LeaseCell>> = registry()
            .cells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let now = Instant::now();
        for c in cells {
            let due = c
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .next_refresh
                <= now;
            if due {
                c.refresh();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(source: CredentialSource) -> Source {
        Source {
            source,
            user: Some("login".into()),
            ttl_s: 60,
            window_s: 10,
            jitter: 0.2,
        }
    }

    #[test]
    fn sources_give_leases_and_name_their_failures() {
        let dir = std::env::temp_dir().join(format!("helios-lease-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, "s3cret\n").unwrap();
        let got = fetch(&src(CredentialSource::File(plain.display().to_string()))).unwrap();
        assert_eq!(got, ("login".into(), "s3cret".into(), None));
        let json = dir.join("json");
        std::fs::write(
            &json,
            r#"{"user":"u2","password":"p2","expires_at":4102444800,"lease_id":"x"}"#,
        )
        .unwrap();
        let got = fetch(&src(CredentialSource::File(json.display().to_string()))).unwrap();
        assert_eq!(got, ("u2".into(), "p2".into(), Some(4102444800)));
        let got = fetch(&src(CredentialSource::Command(format!(
            "cat {}",
            json.display()
        ))))
        .unwrap();
        assert_eq!(got.1, "p2");
        let e = fetch(&src(CredentialSource::Command("false".into()))).unwrap_err();
        assert!(e.contains("failed"), "{e}");
        std::env::set_var("HELIOS_LEASE_TEST_PW", "from-env");
        let got = fetch(&src(CredentialSource::Env("HELIOS_LEASE_TEST_PW".into()))).unwrap();
        assert_eq!(got, ("login".into(), "from-env".into(), None));
        let e = fetch(&src(CredentialSource::Env("HELIOS_NO_SUCH_VAR_X".into()))).unwrap_err();
        assert!(e.contains("HELIOS_NO_SUCH_VAR_X"), "{e}");
        std::fs::write(&json, r#"{"user":"u2"}"#).unwrap();
        let e = fetch(&src(CredentialSource::File(json.display().to_string()))).unwrap_err();
        assert!(e.contains("password") && !e.contains("u2"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_refresh_comes_inside_the_window() {
        let s = src(CredentialSource::Env("X".into()));
        let exp = unix_now() + 60;
        let mut earliest = f64::MAX;
        for _ in 0..200 {
            let d = refresh_in(&s, exp).as_secs_f64();
            // 60 s left, window 10 s, jitter up to 2 s more.
            assert!((47.0..=50.5).contains(&d), "{d}");
            earliest = earliest.min(d);
        }
        // The jitter is applied: some refresh comes well before the window's edge (the chance
        // that 200 draws all land in its last 0.5 s is 0.25^200).
        assert!(earliest < 49.5, "no jitter: earliest {earliest}");
        let lease = Lease {
            user: "u".into(),
            password: "hunter2".into(),
            expires_at: 1,
            generation: 1,
        };
        assert!(!format!("{lease:?}").contains("hunter2"));
    }
}
