//! HeliosProxy configuration types: plain data, parsed from TOML, validated, no runtime.
//!
//! Loading is three steps: parse the TOML, substitute `${VAR}` / `${VAR:-default}` in every string
//! value (so secrets stay out of the file), then deserialize into [`Config`] with unknown keys
//! rejected by their full path (`databases.app.pool_sise`). [`Config::validate`] then checks what
//! serde cannot: references between sections, ranges, and that the userlist can be read.
//!
//! Which settings apply on reload (SIGHUP) and which need a restart: [`reload::APPLY`], one
//! entry per key. A reload that changes a restart-only key logs it and keeps the running value
//! ([`Config::keep_restart_only`]).

pub mod admin;
pub mod context;
pub mod hba;
pub mod journal;
pub mod plugins;
pub mod reload;
pub mod signal;
mod userlist;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use admin::AdminConfig;
pub use reload::{apply_of, changed_keys, Apply, APPLY};
pub use userlist::{parse_userlist, Secret, UserEntry, Userlist};

/// Why a configuration could not be loaded, with where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: TOML syntax: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Key {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path}: environment variable {var} is not set (used at {key}; write ${{{var}:-default}} to give a default)")]
    MissingEnv {
        path: PathBuf,
        key: String,
        var: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("auth.hba {path}:{line}: {message}")]
    Hba {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("userlist {path}:{line}: {message}")]
    Userlist {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening sockets and the number of shards.
    #[serde(default)]
    pub server: ServerConfig,
    /// Connection and message limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How clients authenticate to the proxy.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Upstream PostgreSQL servers, by name.
    pub nodes: Vec<NodeConfig>,
    /// The databases clients may connect to, keyed by the name clients use (the alias).
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// Socket I/O: the per-shard io_uring ring, or glommio's streams.
    #[serde(default)]
    pub io: IoConfig,
    /// The admin HTTP API and the console database.
    #[serde(default)]
    pub admin: AdminConfig,
    /// WASM plugins: hooks on every query path.
    #[serde(default)]
    pub plugins: plugins::PluginsConfig,
    /// TLS for client connections (docs/tls.md).
    #[serde(default)]
    pub tls: TlsConfig,
    /// The health checker of a multi-node topology (docs/topology.md).
    #[serde(default)]
    pub health: HealthConfig,
    /// What happens when a database's primary is lost (docs/topology.md).
    #[serde(default)]
    pub failover: FailoverConfig,
    /// The opt-in write journal replayed by `POST /api/replay` (docs/replay.md).
    #[serde(default)]
    pub journal: journal::JournalConfig,
    /// Per-session audit summaries (docs/signal.md).
    #[serde(default)]
    pub audit: signal::AuditConfig,
    /// In-process anomaly detection (docs/signal.md).
    #[serde(default)]
    pub anomaly: signal::AnomalyConfig,
    /// Drift alerts over the audit summaries (docs/signal.md).
    #[serde(default)]
    pub drift: signal::DriftConfig,
}

/// `[tls]`: TLS on client connections.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM), leaf first. Relative paths are relative to the config file.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// `require`: a client must negotiate TLS (a plain-text startup gets FATAL 28000);
    /// `prefer`: TLS is offered, plain text accepted; `disable`: SSLRequest is answered `N`.
    /// Default: `require` with a `cert`, `disable` without.
    #[serde(default)]
    pub mode: Option<TlsMode>,
    /// Lowest protocol version accepted: `"1.2"` or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// CA certificates (PEM) client certificates are verified against (mTLS). Without it no
    /// client certificate is asked for.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `require` (a client without a certificate signed by it fails the
    /// handshake) or `optional` (a certificate, if sent, must be signed by it).
    #[serde(default)]
    pub client_cert: ClientCert,
}

impl TlsConfig {
    /// The mode in effect: `mode`, or `require` with a certificate and `disable` without.
    pub fn effective_mode(&self) -> TlsMode {
        self.mode.unwrap_or(if self.cert.is_some() {
            TlsMode::Require
        } else {
            TlsMode::Disable
        })
    }
}

/// `tls.mode`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    Require,
    Prefer,
    Disable,
}

/// `tls.min_version`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// `tls.client_cert`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCert {
    #[default]
    Require,
    Optional,
}

/// `[failover]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// A statement that needs the primary while the database has none waits this long for one
    /// (then SQLSTATE 08006); 0: fails at once.
    #[serde(default = "default_failover_timeout_ms")]
    pub timeout_ms: u64,
    /// When the primary fails its health checks and answers nothing, the proxy promotes the
    /// healthy replica with the most WAL replayed (`pg_promote()`), once per outage.
    #[serde(default)]
    pub auto_promote: bool,
}

fn default_failover_timeout_ms() -> u64 {
    5_000
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            timeout_ms: default_failover_timeout_ms(),
            auto_promote: false,
        }
    }
}

/// `[health]`: the checker that probes every node while a topology is configured (a node with
/// `role` other than `primary`, a database with `nodes` or `read_write_split`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between two probes of a node.
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
    /// A probe (connect, log in, run `query`) that takes longer fails.
    #[serde(default = "default_health_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failed probes that mark a healthy node unhealthy.
    #[serde(default = "default_health_failures")]
    pub failures: u32,
    /// Consecutive good probes that mark an unhealthy node healthy again.
    #[serde(default = "default_health_successes")]
    pub successes: u32,
    /// The probe; its first column of its first row, if a boolean, says whether the node is in
    /// recovery (a replica) — what `auto` nodes take their role from.
    #[serde(default = "default_health_query")]
    pub query: String,
    /// The user the checker logs in as (default: the `user` of the first database that has one).
    #[serde(default)]
    pub user: Option<String>,
    /// Its password (default: that database's `password`); use `${VAR}`.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// The database the checker connects to.
    #[serde(default = "default_health_dbname")]
    pub dbname: String,
}

fn default_health_interval_ms() -> u64 {
    1_000
}
fn default_health_timeout_ms() -> u64 {
    1_000
}
fn default_health_failures() -> u32 {
    3
}
fn default_health_successes() -> u32 {
    2
}
fn default_health_query() -> String {
    "SELECT pg_is_in_recovery()".into()
}
fn default_health_dbname() -> String {
    "postgres".into()
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: default_health_interval_ms(),
            timeout_ms: default_health_timeout_ms(),
            failures: default_health_failures(),
            successes: default_health_successes(),
            query: default_health_query(),
            user: None,
            password: None,
            dbname: default_health_dbname(),
        }
    }
}

/// What a node is, as configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Takes writes.
    #[default]
    Primary,
    /// A streaming standby: reads only.
    Replica,
    /// Discovered by the health checker (`pg_is_in_recovery()`).
    Auto,
}

/// A node tag's value (`tags = { region = "eu", vector = true, rack = 3 }`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TagValue {
    Bool(bool),
    Int(i64),
    Str(String),
}

impl std::fmt::Display for TagValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TagValue::Bool(b) => write!(f, "{b}"),
            TagValue::Int(i) => write!(f, "{i}"),
            TagValue::Str(s) => f.write_str(s),
        }
    }
}

impl TagValue {
    /// `true`, a non-zero number, or a string other than "", "false", "0".
    pub fn is_set(&self) -> bool {
        match self {
            TagValue::Bool(b) => *b,
            TagValue::Int(i) => *i != 0,
            TagValue::Str(s) => !matches!(s.as_str(), "" | "false" | "0"),
        }
    }
}

/// How reads are spread over a database's healthy replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalance {
    /// In turn (one counter per shard).
    #[default]
    RoundRobin,
    /// The replica with the fewest server connections in use on this shard.
    LeastConnections,
    /// In turn, each replica `weight` times per cycle.
    Weighted,
}

/// `[io]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IoConfig {
    /// `uring`: client and server sockets go through a completion-based io_uring ring per shard
    /// (multishot receive into provided buffers, sends batched per loop turn); the proxy falls
    /// back to `glommio` with one log line if the kernel lacks a feature. `glommio`: glommio's
    /// readiness-based streams.
    #[serde(default)]
    pub backend: IoBackend,
    /// Provided receive buffers per shard (a power of two). Receives wait when all are in use.
    #[serde(default = "default_recv_buffers")]
    pub recv_buffers: u16,
    /// Size of each receive buffer (bytes).
    #[serde(default = "default_recv_buffer_size")]
    pub recv_buffer_size_bytes: u32,
    /// Per connection: bytes queued for a peer that is not reading before the proxy stops
    /// reading from the other side.
    #[serde(default = "default_max_pending_send")]
    pub max_pending_send_bytes: usize,
    /// Submission queue entries of each shard's ring.
    #[serde(default = "default_ring_entries")]
    pub ring_entries: u32,
    /// Microseconds a shard with nothing else to run blocks on its ring for the next socket
    /// completion before parking in glommio's reactor (one system call per wake-up instead of
    /// glommio's several). Timers and messages from other shards can be late by this much.
    /// 0: always park in glommio. At most 10000.
    #[serde(default = "default_ring_wait_us")]
    pub ring_wait_us: u32,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            backend: IoBackend::default(),
            recv_buffers: default_recv_buffers(),
            recv_buffer_size_bytes: default_recv_buffer_size(),
            max_pending_send_bytes: default_max_pending_send(),
            ring_entries: default_ring_entries(),
            ring_wait_us: default_ring_wait_us(),
        }
    }
}

fn default_recv_buffers() -> u16 {
    512
}
fn default_recv_buffer_size() -> u32 {
    16 * 1024
}
fn default_max_pending_send() -> usize {
    256 * 1024
}
fn default_ring_entries() -> u32 {
    1024
}
fn default_ring_wait_us() -> u32 {
    500
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoBackend {
    #[default]
    Uring,
    Glommio,
}

/// `[server]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses to accept PostgreSQL clients on (`host:port`). Every shard binds each of them
    /// with SO_REUSEPORT, so the kernel spreads connections across shards.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Number of shards (one glommio executor pinned per CPU; with fewer shards than CPUs, each
    /// on its share of them): a number, or `"auto"` for one per available CPU.
    #[serde(default)]
    pub cores: Cores,
    /// Time slice (µs) each shard thread asks the Linux scheduler for (EEVDF's per-task slice,
    /// `sched_setattr`, kernel 6.12 or later; older kernels ignore it). A shard shares its CPU
    /// with the backends and clients it talks to: a short slice makes them take turns more
    /// finely, so the shard finds more completions waiting each time it runs and handles them
    /// in fewer, larger batches. 0: the kernel's default. Otherwise 100 to 100000.
    #[serde(default = "default_sched_slice_us")]
    pub sched_slice_us: u32,
    /// Bind each shard thread to its CPU(s) (see `cores`). `false`: shards run wherever the
    /// kernel puts them — on a host where other busy processes share the CPUs, a pinned shard
    /// cannot move off a CPU they hold and its clients wait (measured in docs/io-uring.md,
    /// session 7).
    #[serde(default = "default_true")]
    pub pin_shards: bool,
    /// How long SIGTERM waits for running transactions before closing every connection.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            cores: Cores::Auto,
            sched_slice_us: default_sched_slice_us(),
            pin_shards: default_true(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
        }
    }
}

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:6432".to_string()]
}
fn default_sched_slice_us() -> u32 {
    100
}
fn default_true() -> bool {
    true
}
fn default_shutdown_timeout_ms() -> u64 {
    30_000
}

/// `cores = 4` or `cores = "auto"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Cores {
    #[default]
    Auto,
    Count(usize),
}

impl Cores {
    /// The number of shards to start on this machine.
    pub fn resolve(self) -> usize {
        match self {
            Cores::Count(n) => n,
            Cores::Auto => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

impl Serialize for Cores {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cores::Auto => s.serialize_str("auto"),
            Cores::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) if n >= 1 => Ok(Cores::Count(n as usize)),
            Raw::N(n) => Err(serde::de::Error::custom(format!(
                "cores must be at least 1, got {n}"
            ))),
            Raw::S(s) if s == "auto" => Ok(Cores::Auto),
            Raw::S(s) => s
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .map(Cores::Count)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "cores must be a number or \"auto\", got {s:?}"
                    ))
                }),
        }
    }
}

/// `[limits]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Client connections accepted across all shards; one more gets SQLSTATE 53300.
    #[serde(default = "default_max_clients")]
    pub max_client_connections: usize,
    /// Largest message a client may send (bytes, including the 4-byte length). Larger frames get
    /// 08P01 and a close, before any memory is reserved for them.
    #[serde(default = "default_max_message")]
    pub max_message_size_bytes: usize,
    /// A client that has not finished startup and authentication by then is dropped.
    #[serde(default = "default_startup_timeout_ms")]
    pub startup_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_client_connections: default_max_clients(),
            max_message_size_bytes: default_max_message(),
            startup_timeout_ms: default_startup_timeout_ms(),
        }
    }
}

fn default_max_clients() -> usize {
    10_000
}
fn default_max_message() -> usize {
    64 * 1024 * 1024
}
fn default_startup_timeout_ms() -> u64 {
    10_000
}

/// `[auth]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// How clients prove who they are: `scram-sha-256`, `md5`, `cert` or `trust`.
    #[serde(default)]
    pub method: AuthMethod,
    /// PgBouncer-compatible userlist: `"user" "secret"` per line, where the secret is a plain
    /// password, `md5<hex>` or a `SCRAM-SHA-256$…` verifier. Relative paths are relative to the
    /// config file.
    #[serde(default)]
    pub userlist: Option<PathBuf>,
    /// Users allowed into the admin console database (a later feature uses it; must be listed in
    /// the userlist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_users: Vec<String>,
    /// Host-based access rules in `pg_hba.conf` format (docs/tls.md#host-based-access-rules):
    /// the first line matching the connection type, database, user and address decides the
    /// method (or rejects); no match rejects. Without it, every client uses `method`. Relative
    /// to the config file.
    #[serde(default)]
    pub hba: Option<PathBuf>,
    /// Groups for `+group` (and `samegroup`) in `hba`: `admins = ["alice", "bob"]`. Resolved
    /// when the HBA file is loaded; a `+name` no group defines is an error there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Vec<String>>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            method: AuthMethod::ScramSha256,
            userlist: None,
            admin_users: Vec::new(),
            hba: None,
            groups: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum AuthMethod {
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
    /// The TLS client certificate (verified against `tls.client_ca`) names the user: its
    /// common name, or one of its DNS subject alternative names, must equal the login user.
    #[serde(rename = "cert")]
    Cert,
}

/// `[[nodes]]`: one upstream PostgreSQL server.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Name databases refer to.
    pub name: String,
    /// Host name or IP address. The engine resolves names when it loads the configuration
    /// (start-up and reload), not when it opens a connection.
    pub host: String,
    /// TCP port.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Time allowed to open a TCP connection and authenticate.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// TLS to this server, as libpq's `sslmode`: `disable`, `prefer` (TLS if the server offers
    /// it, unverified), `require` (TLS, unverified), `verify-ca` (the chain must lead to
    /// `tls_ca`), `verify-full` (and the certificate must name `host`).
    #[serde(default)]
    pub tls: NodeTls,
    /// CA certificates (PEM) the server's certificate is verified against (verify-ca,
    /// verify-full). Relative to the config file.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) the proxy presents, for a server with `clientcert`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// `primary`, `replica`, or `auto` (the health checker asks `pg_is_in_recovery()`).
    #[serde(default)]
    pub role: NodeRole,
    /// Share of reads under `load_balance = "weighted"` (1..=1000).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Free labels (`region = "eu"`, `vector = true`): shown by `SHOW NODES` and given to
    /// plugins (`helios.node.<name>.<tag>`, `helios.<tag>_node`).
    #[serde(default)]
    pub tags: BTreeMap<String, TagValue>,
}

/// `nodes.tls`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeTls {
    #[default]
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

fn default_weight() -> u32 {
    1
}

fn default_pg_port() -> u16 {
    5432
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}

/// `[databases.<alias>]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The node serving this database (default: the first `[[nodes]]` entry).
    #[serde(default)]
    pub node: Option<String>,
    /// The nodes this database may use (instead of `node`): the first healthy primary among
    /// them takes writes, its healthy replicas serve reads under `read_write_split`.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Transaction mode: plain reads go to a healthy replica, everything else to the primary.
    #[serde(default)]
    pub read_write_split: bool,
    /// How reads are spread over the replicas.
    #[serde(default)]
    pub load_balance: LoadBalance,
    /// A replica whose replay position is more than this many bytes behind the primary's WAL
    /// gets no reads (0: no limit).
    #[serde(default)]
    pub max_replica_lag_bytes: u64,
    /// A replica whose last replayed transaction is more than this many milliseconds old while
    /// it has received WAL it has not replayed gets no reads (0: no limit).
    #[serde(default)]
    pub max_replica_lag_ms: u64,
    /// After a client's transaction writes, for this many milliseconds its reads go only to
    /// replicas that have replayed the primary's WAL position at that commit (else to the
    /// primary). 0: off.
    #[serde(default)]
    pub read_your_writes_ms: u64,
    /// Functions (lowercase names, schema-qualified or not) a SELECT may call and still count
    /// as a read, beyond the built-in list of side-effect-free functions.
    #[serde(default)]
    pub read_only_functions: Vec<String>,
    /// Database name on the server (default: the alias).
    #[serde(default)]
    pub dbname: Option<String>,
    /// User the proxy logs in as. Without it, the proxy logs in as the client's user with the
    /// plain-text password from the userlist.
    #[serde(default)]
    pub user: Option<String>,
    /// Password for `user` (use `${VAR}` to keep it out of the file).
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// `session` (a server connection per client for its whole session) or `transaction`
    /// (returned to the pool at the end of each transaction).
    #[serde(default)]
    pub pool_mode: PoolMode,
    /// Server connections across all shards; each shard gets its share (logged at start-up).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Idle server connections each shard keeps open and ready (across all shards, like
    /// pool_size). Default 0; 2 (at most `pool_size`) for a context with `credentials`, so a
    /// rotated lease is reseeded at once. Read it with [`DatabaseConfig::min_idle`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_idle: Option<usize>,
    /// An idle server connection above `min_idle` is closed after this long. Default 10 min;
    /// 5 min for a context with `credentials`. Read it with [`DatabaseConfig::idle_timeout_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// A server connection is closed (when idle) once it is this old; 0 = no limit. Default
    /// 60 min; 30 min for a context with `credentials` (a connection never outlives a lease
    /// by long). Read it with [`DatabaseConfig::max_lifetime_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_ms: Option<u64>,
    /// How long a client waits in line for a server connection before SQLSTATE 53300.
    #[serde(default = "default_checkout_timeout_ms")]
    pub checkout_timeout_ms: u64,
    /// Named prepared statements each server connection keeps (transaction mode); the least
    /// recently used is closed past this.
    #[serde(default = "default_prepared_cache")]
    pub prepared_statements_per_connection: usize,
    /// Transaction mode: what to do with a statement that changes session state the proxy cannot
    /// carry to another server connection (DO blocks, CALL, temporary objects, SET ROLE, SQL
    /// PREPARE, session advisory locks, WITH HOLD cursors, …). `pin`: the client keeps its
    /// server connection until it leaves; `reset`: the statement runs and the connection gets
    /// DISCARD ALL before anyone else uses it; `refuse`: SQLSTATE 0A000 naming the statement.
    #[serde(default)]
    pub unsafe_statements: UnsafeStatements,
    /// A statement whose result passes this many rows is ended with SQLSTATE 54000 (0: no
    /// limit). Checked as the rows stream; nothing is buffered.
    #[serde(default)]
    pub max_result_rows: u64,
    /// The same for the result's bytes as sent to the client (0: no limit).
    #[serde(default)]
    pub max_result_bytes: u64,
    /// Anomaly detection watches this database's sessions (when `[anomaly] enabled`).
    #[serde(default = "default_true")]
    pub anomaly: bool,
    /// Drift alerts cover this database (when `[drift] enabled`).
    #[serde(default)]
    pub drift: bool,
    /// Access context: the role every server connection acts as (sent as the startup
    /// parameter `role`, i.e. `SET ROLE` that `RESET`/`DISCARD ALL` return to). Clients may
    /// not change it (42501). docs/contexts.md.
    #[serde(default)]
    pub role: Option<String>,
    /// Access context: session defaults (GUC → value) every server connection starts with.
    #[serde(default)]
    pub defaults: context::Defaults,
    /// Clients may not change `defaults` (`SET`, `RESET`, `set_config`, startup options:
    /// 42501). Default: true when `role` is set.
    #[serde(default)]
    pub enforce_defaults: Option<bool>,
    /// Where the upstream login's credentials come from: `env:NAME`, `file:PATH` or
    /// `command:PROGRAM` (a JSON lease); instead of `password`.
    #[serde(default)]
    pub credentials: Option<String>,
    /// A lease without `expires_at` lasts this long.
    #[serde(default = "context::default_lease_ttl_s")]
    pub lease_ttl_s: u64,
    /// A lease is refreshed this long before it expires.
    #[serde(default = "context::default_lease_refresh_window_s")]
    pub lease_refresh_window_s: u64,
    /// The refresh moment is moved earlier by up to this fraction of the window (random).
    #[serde(default = "context::default_lease_refresh_jitter")]
    pub lease_refresh_jitter: context::Fraction,
}

/// Transaction mode's answer to a statement whose session state the proxy cannot track
/// (`databases.<alias>.unsafe_statements`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsafeStatements {
    /// The client keeps its server connection for the rest of its session (reset with
    /// DISCARD ALL when it leaves): it keeps the state it asked for.
    #[default]
    Pin,
    /// The statement runs; the connection is reset with DISCARD ALL at the end of the
    /// transaction, and the proxy's tracked state re-established for the next user.
    Reset,
    /// SQLSTATE 0A000 naming the statement class.
    Refuse,
}

fn default_pool_size() -> usize {
    20
}
fn default_idle_timeout_ms() -> u64 {
    600_000
}
fn default_max_lifetime_ms() -> u64 {
    3_600_000
}
/// The reference's pool defaults for a context whose credentials are leases (pgWarden):
/// `min_idle` 2, `idle_timeout` 5 min, `max_lifetime` 30 min.
const LEASED_MIN_IDLE: usize = 2;
const LEASED_IDLE_TIMEOUT_MS: u64 = 300_000;
const LEASED_MAX_LIFETIME_MS: u64 = 1_800_000;
fn default_checkout_timeout_ms() -> u64 {
    5_000
}
fn default_prepared_cache() -> usize {
    512
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            node: None,
            nodes: Vec::new(),
            read_write_split: false,
            load_balance: LoadBalance::default(),
            max_replica_lag_bytes: 0,
            max_replica_lag_ms: 0,
            read_your_writes_ms: 0,
            read_only_functions: Vec::new(),
            dbname: None,
            user: None,
            password: None,
            pool_mode: PoolMode::default(),
            pool_size: default_pool_size(),
            min_idle: None,
            idle_timeout_ms: None,
            max_lifetime_ms: None,
            checkout_timeout_ms: default_checkout_timeout_ms(),
            prepared_statements_per_connection: default_prepared_cache(),
            unsafe_statements: UnsafeStatements::default(),
            max_result_rows: 0,
            max_result_bytes: 0,
            anomaly: true,
            drift: false,
            role: None,
            defaults: Default::default(),
            enforce_defaults: None,
            credentials: None,
            lease_ttl_s: context::default_lease_ttl_s(),
            lease_refresh_window_s: context::default_lease_refresh_window_s(),
            lease_refresh_jitter: context::default_lease_refresh_jitter(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    #[default]
    Transaction,
}

impl Config {
    /// Reads, substitutes environment variables, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text, path, &|v| std::env::var(v).ok())?;
        if let Some(ul) = &cfg.auth.userlist {
            if ul.is_relative() {
                let base = path.parent().unwrap_or(Path::new("."));
                cfg.auth.userlist = Some(base.join(ul));
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(h) = &cfg.auth.hba {
            if h.is_relative() {
                cfg.auth.hba = Some(base.join(h));
            }
        }
        if cfg.journal.path.is_relative() {
            cfg.journal.path = base.join(&cfg.journal.path);
        }
        let node_paths = cfg
            .nodes
            .iter_mut()
            .flat_map(|n| [&mut n.tls_ca, &mut n.tls_cert, &mut n.tls_key]);
        for p in [&mut cfg.tls.cert, &mut cfg.tls.key, &mut cfg.tls.client_ca]
            .into_iter()
            .chain(node_paths)
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text; `env` looks up variables for `${VAR}` substitution. `path` only names
    /// the source in errors. Does not validate.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Value =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        substitute(&mut value, &mut String::new(), path, env)?;
        serde_path_to_error::deserialize(value).map_err(|e| ConfigError::Key {
            path: path.to_path_buf(),
            key: e.path().to_string(),
            message: e.inner().to_string(),
        })
    }

    /// Checks what the types cannot: cross references and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        self.journal.validate().map_err(ConfigError::Invalid)?;
        if self.server.listen.is_empty() {
            return bad("server.listen: at least one address is needed".into());
        }
        for l in &self.server.listen {
            if l.parse::<std::net::SocketAddr>().is_err() {
                return bad(format!(
                    "server.listen: {l:?} is not an IP:port address (for example \"0.0.0.0:6432\")"
                ));
            }
        }
        if let Cores::Count(n) = self.server.cores {
            if n > 1024 {
                return bad(format!("server.cores: {n} is more than 1024"));
            }
        }
        let slice = self.server.sched_slice_us;
        if slice != 0 && !(100..=100_000).contains(&slice) {
            return bad(format!(
                "server.sched_slice_us: {slice} is outside 100..=100000 (or 0 for the kernel's default)"
            ));
        }
        if self.limits.max_message_size_bytes < 1024 {
            return bad("limits.max_message_size_bytes: must be at least 1024".into());
        }
        if self.limits.max_client_connections == 0 {
            return bad("limits.max_client_connections: must be at least 1".into());
        }
        if self.nodes.is_empty() {
            return bad("nodes: at least one [[nodes]] entry is needed".into());
        }
        let mut names = std::collections::HashSet::new();
        for n in &self.nodes {
            if !names.insert(n.name.as_str()) {
                return bad(format!("nodes: the name {:?} is used twice", n.name));
            }
            if n.host.is_empty() {
                return bad(format!("nodes.{}.host: empty", n.name));
            }
            if !(1..=1000).contains(&n.weight) {
                return bad(format!(
                    "nodes.{}.weight: {} is outside 1..=1000",
                    n.name, n.weight
                ));
            }
        }
        if self.databases.is_empty() {
            return bad("databases: at least one [databases.<name>] table is needed".into());
        }
        for (alias, db) in &self.databases {
            if let Some(node) = &db.node {
                if !names.contains(node.as_str()) {
                    return bad(format!(
                        "databases.{alias}.node: no [[nodes]] entry is named {node:?}"
                    ));
                }
            }
            if db.node.is_some() && !db.nodes.is_empty() {
                return bad(format!(
                    "databases.{alias}: set either node or nodes, not both"
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for node in &db.nodes {
                if !names.contains(node.as_str()) {
                    return bad(format!(
                        "databases.{alias}.nodes: no [[nodes]] entry is named {node:?}"
                    ));
                }
                if !seen.insert(node.as_str()) {
                    return bad(format!("databases.{alias}.nodes: {node:?} is listed twice"));
                }
            }
            if db.read_write_split && db.pool_mode == PoolMode::Session {
                return bad(format!(
                    "databases.{alias}.read_write_split: needs pool_mode = \"transaction\" (a session cannot move between nodes)"
                ));
            }
            if db.pool_size == 0 {
                return bad(format!("databases.{alias}.pool_size: must be at least 1"));
            }
            if let Some(m) = db.min_idle.filter(|m| *m > db.pool_size) {
                return bad(format!(
                    "databases.{alias}.min_idle: {m} is more than pool_size {}",
                    db.pool_size
                ));
            }
            if db.password.is_some() && db.user.is_none() {
                return bad(format!(
                    "databases.{alias}.password: set without databases.{alias}.user"
                ));
            }
            if db.prepared_statements_per_connection == 0 {
                return bad(format!(
                    "databases.{alias}.prepared_statements_per_connection: must be at least 1"
                ));
            }
            db.validate_context(alias).map_err(ConfigError::Invalid)?;
        }
        if !self.io.recv_buffers.is_power_of_two() || self.io.recv_buffers > 32768 {
            return bad(format!(
                "io.recv_buffers: {} is not a power of two up to 32768",
                self.io.recv_buffers
            ));
        }
        if !(512..=1 << 20).contains(&self.io.recv_buffer_size_bytes) {
            return bad("io.recv_buffer_size_bytes: must be between 512 and 1048576".into());
        }
        if self.io.max_pending_send_bytes < 4096 {
            return bad("io.max_pending_send_bytes: must be at least 4096".into());
        }
        if self.io.ring_wait_us > 10_000 {
            return bad(format!(
                "io.ring_wait_us: must be at most 10000, got {}",
                self.io.ring_wait_us
            ));
        }
        if !(8..=32768).contains(&self.io.ring_entries) {
            return bad("io.ring_entries: must be between 8 and 32768".into());
        }
        if self.admin.enabled {
            match self.admin.listen.parse::<std::net::SocketAddr>() {
                Err(_) => {
                    return bad(format!(
                        "admin.listen: {:?} is not an IP:port address",
                        self.admin.listen
                    ))
                }
                Ok(a)
                    if !a.ip().is_loopback()
                        && self.admin.token.as_deref().unwrap_or("").is_empty() =>
                {
                    return bad(format!(
                        "admin.token: required because admin.listen {} is not a loopback address",
                        self.admin.listen
                    ))
                }
                Ok(_) => {}
            }
        }
        if self.admin.sql_max_rows == 0 || self.admin.sql_timeout_ms == 0 {
            return bad("admin.sql_max_rows and admin.sql_timeout_ms: must be above 0".into());
        }
        if let Err(errs) = self.plugins.validate() {
            return bad(errs
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "));
        }
        if let Err(e) = signal::validate(&self.audit, &self.anomaly, &self.drift) {
            return bad(e);
        }
        if self.admin.snapshot_interval_ms < 100 {
            return bad("admin.snapshot_interval_ms: must be at least 100".into());
        }
        if self.admin.console_database.is_empty()
            || self.databases.contains_key(&self.admin.console_database)
        {
            return bad(format!(
                "admin.console_database: {:?} must be a name no [databases] entry uses",
                self.admin.console_database
            ));
        }
        for a in &self.auth.admin_users {
            if a.is_empty() {
                return bad("auth.admin_users: empty user name".into());
            }
        }
        for (g, members) in &self.auth.groups {
            if g.is_empty() || g.starts_with(['+', '@']) {
                return bad(format!(
                    "auth.groups: {g:?} is not a group name (no leading + or @)"
                ));
            }
            if let Some(m) = members
                .iter()
                .find(|m| m.is_empty() || m.starts_with(['+', '@']))
            {
                return bad(format!(
                    "auth.groups.{g}: {m:?}: members are user names (groups do not nest)"
                ));
            }
        }
        let hba = match &self.auth.hba {
            Some(p) => Some(hba::Hba::load(p, &self.auth.groups)?),
            None => None,
        };
        let methods: Vec<AuthMethod> = match &hba {
            Some(h) => h.methods().collect(),
            None => vec![self.auth.method],
        };
        if methods.contains(&AuthMethod::Cert) && self.tls.client_ca.is_none() {
            return bad(
                "auth.method = \"cert\" (or a cert line in auth.hba) needs tls.client_ca (and tls.cert, tls.key)"
                    .into(),
            );
        }
        if methods
            .iter()
            .any(|m| matches!(m, AuthMethod::ScramSha256 | AuthMethod::Md5))
            && self.auth.userlist.is_none()
            && hba.is_some()
        {
            return bad(
                "auth.userlist: required by the scram-sha-256 / md5 lines of auth.hba".into(),
            );
        }
        if !matches!(self.auth.method, AuthMethod::Trust | AuthMethod::Cert)
            && self.auth.userlist.is_none()
            && hba.is_none()
        {
            return bad(format!(
                "auth.userlist: required with auth.method = {:?} (only \"trust\" works without users)",
                self.auth.method
            ));
        }
        if let Some(path) = &self.auth.userlist {
            userlist::load_userlist(path)?;
        }
        let tls = &self.tls;
        if tls.cert.is_some() != tls.key.is_some() {
            return bad("tls.cert and tls.key: give both or neither".into());
        }
        if tls.cert.is_none() && tls.effective_mode() != TlsMode::Disable {
            return bad(format!(
                "tls.mode = {:?} needs tls.cert and tls.key",
                tls.effective_mode()
            ));
        }
        if tls.client_ca.is_some() && tls.cert.is_none() {
            return bad("tls.client_ca: needs tls.cert and tls.key".into());
        }
        for n in &self.nodes {
            if n.tls_cert.is_some() != n.tls_key.is_some() {
                return bad(format!(
                    "nodes {:?}: tls_cert and tls_key: give both or neither",
                    n.name
                ));
            }
            if matches!(n.tls, NodeTls::VerifyCa | NodeTls::VerifyFull) && n.tls_ca.is_none() {
                return bad(format!(
                    "nodes {:?}: tls = {:?} needs tls_ca (the CA the server's certificate is checked against)",
                    n.name, n.tls
                ));
            }
        }
        let h = &self.health;
        if h.interval_ms < 10 || h.timeout_ms < 10 {
            return bad("health.interval_ms, health.timeout_ms: must be at least 10".into());
        }
        if h.failures == 0 || h.successes == 0 {
            return bad("health.failures, health.successes: must be at least 1".into());
        }
        if h.query.trim().is_empty() {
            return bad("health.query: empty".into());
        }
        Ok(())
    }

    /// The nodes a database may use, in its order: `nodes`, else `node`, else the first node.
    pub fn nodes_of<'a>(&'a self, db: &'a DatabaseConfig) -> Vec<&'a NodeConfig> {
        if db.nodes.is_empty() {
            return vec![self.node_for(db)];
        }
        db.nodes
            .iter()
            .filter_map(|n| self.nodes.iter().find(|x| &x.name == n))
            .collect()
    }

    /// Whether the health checker runs: some node's role is not a static `primary`, or some
    /// database lists several nodes or splits reads.
    pub fn has_topology(&self) -> bool {
        self.nodes.iter().any(|n| n.role != NodeRole::Primary)
            || self
                .databases
                .values()
                .any(|d| d.nodes.len() > 1 || d.read_write_split)
    }

    /// The node a database's connections go to.
    pub fn node_for(&self, db: &DatabaseConfig) -> &NodeConfig {
        db.node
            .as_deref()
            .or(db.nodes.first().map(String::as_str))
            .and_then(|n| self.nodes.iter().find(|x| x.name == n))
            .unwrap_or(&self.nodes[0])
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string of the tree.
fn substitute(
    v: &mut toml::Value,
    key: &mut String,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match v {
        toml::Value::String(s) if s.contains("${") => {
            *s = expand(s, key, path, env)?;
        }
        toml::Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                let len = key.len();
                key.push_str(&format!("[{i}]"));
                substitute(x, key, path, env)?;
                key.truncate(len);
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                let len = key.len();
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
                substitute(x, key, path, env)?;
                key.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(
    s: &str,
    key: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(ConfigError::Key {
                path: path.to_path_buf(),
                key: key.to_string(),
                message: "unterminated ${".into(),
            });
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (env(name), default) {
            (Some(val), _) => out.push_str(&val),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(ConfigError::MissingEnv {
                    path: path.to_path_buf(),
                    key: key.to_string(),
                    var: name.to_string(),
                })
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.toml"), &|v| match v {
            "PGPW" => Some("s3cret".into()),
            _ => None,
        })
    }

    const MIN: &str = r#"
        [auth]
        method = "trust"
        [[nodes]]
        name = "pg"
        host = "127.0.0.1"
        [databases.app]
        user = "app"
        password = "${PGPW}"
    "#;

    #[test]
    fn minimal_config_gets_defaults_and_env() {
        let c = parse(MIN).unwrap();
        c.validate().unwrap();
        let db = &c.databases["app"];
        assert_eq!(db.password.as_deref(), Some("s3cret"));
        assert_eq!(db.pool_mode, PoolMode::Transaction);
        assert_eq!(c.nodes[0].port, 5432);
        assert_eq!(c.server.cores, Cores::Auto);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_path() {
        let text = MIN.replace("user = \"app\"", "user = \"app\"\npool_sise = 3");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("databases.app"), "{e}");
        assert!(e.contains("pool_sise"), "{e}");
    }

    #[test]
    fn env_default_and_missing_env() {
        let text = MIN.replace("${PGPW}", "${NOPE:-fallback}");
        assert_eq!(
            parse(&text).unwrap().databases["app"].password.as_deref(),
            Some("fallback")
        );
        let text = MIN.replace("${PGPW}", "${NOPE}");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("NOPE") && e.contains("databases.app.password"),
            "{e}"
        );
    }

    #[test]
    fn sched_slice_is_zero_or_in_the_kernels_range() {
        assert_eq!(parse(MIN).unwrap().server.sched_slice_us, 100);
        for ok in [0, 100, 2500, 100_000] {
            let c = parse(&format!("[server]\nsched_slice_us = {ok}\n{MIN}")).unwrap();
            c.validate().unwrap();
            assert_eq!(c.server.sched_slice_us, ok);
        }
        for bad in [1, 99, 100_001] {
            let c = parse(&format!("[server]\nsched_slice_us = {bad}\n{MIN}")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("server.sched_slice_us"), "{e}");
        }
    }

    #[test]
    fn cores_number_or_auto() {
        let c = parse(&format!("[server]\ncores = 3\n{MIN}")).unwrap();
        assert_eq!(c.server.cores, Cores::Count(3));
        let c = parse(&format!("[server]\ncores = \"auto\"\n{MIN}")).unwrap();
        assert_eq!(c.server.cores, Cores::Auto);
        assert!(parse(&format!("[server]\ncores = 0\n{MIN}")).is_err());
        assert!(parse(&format!("[server]\ncores = \"many\"\n{MIN}")).is_err());
    }

    #[test]
    fn validation_explains_bad_references() {
        let text = MIN.replace("user = \"app\"", "user = \"app\"\nnode = \"ghost\"");
        let e = parse(&text).unwrap().validate().unwrap_err().to_string();
        assert!(
            e.contains("databases.app.node") && e.contains("ghost"),
            "{e}"
        );
        let text = MIN.replace("method = \"trust\"", "method = \"md5\"");
        let e = parse(&text).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("auth.userlist"), "{e}");
    }

    #[test]
    fn hba_groups_are_validated_and_resolved() {
        let dir = std::env::temp_dir().join(format!("helios-cfg-groups-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hba = dir.join("hba.conf");
        std::fs::write(&hba, "host all +ops all trust\n").unwrap();
        let with = |groups: &str| {
            let text = MIN.replace(
                "method = \"trust\"",
                &format!(
                    "method = \"trust\"\nhba = \"{}\"\n[auth.groups]\n{groups}",
                    hba.display()
                ),
            );
            parse(&text).unwrap().validate()
        };
        with("ops = [\"alice\"]").unwrap();
        let e = with("dev = [\"alice\"]").unwrap_err().to_string();
        assert!(
            e.contains("hba.conf:1:") && e.contains("no group \"ops\"") && e.contains("dev"),
            "{e}"
        );
        let e = with("ops = [\"+dev\"]").unwrap_err().to_string();
        assert!(
            e.contains("auth.groups.ops") && e.contains("do not nest"),
            "{e}"
        );
        let e = with("ops = [\"\"]").unwrap_err().to_string();
        assert!(e.contains("auth.groups.ops"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_mode_defaults_and_validation() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.tls.effective_mode(), TlsMode::Disable);
        let with = |extra: &str| parse(&format!("{MIN}\n[tls]\n{extra}\n")).unwrap();
        let c = with("cert = \"a.crt\"\nkey = \"a.key\"");
        assert_eq!(c.tls.effective_mode(), TlsMode::Require);
        assert_eq!(c.tls.min_version, TlsVersion::V1_2);
        c.validate().unwrap();
        let e = with("cert = \"a.crt\"").validate().unwrap_err().to_string();
        assert!(e.contains("tls.key"), "{e}");
        let e = with("mode = \"prefer\"")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.mode"), "{e}");
        let e = with("client_ca = \"ca.crt\"")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.client_ca"), "{e}");
        let text = MIN.replace("method = \"trust\"", "method = \"cert\"");
        let e = parse(&text).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("tls.client_ca"), "{e}");
        let e = parse(&format!("{MIN}\n[tls]\nmin_version = \"1.1\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.min_version"), "{e}");
    }

    #[test]
    fn topology_keys_parse_and_are_checked() {
        let topo = MIN
            .replace(
                "host = \"127.0.0.1\"",
                "host = \"127.0.0.1\"\nrole = \"auto\"\nweight = 3\ntags = { region = \"eu\", vector = true }\n[[nodes]]\nname = \"r1\"\nhost = \"127.0.0.1\"\nrole = \"replica\"",
            )
            .replace(
                "user = \"app\"",
                "user = \"app\"\nnodes = [\"pg\", \"r1\"]\nread_write_split = true\nload_balance = \"weighted\"\nmax_replica_lag_bytes = 1024\nread_only_functions = [\"f\"]",
            );
        let c = parse(&topo).unwrap();
        c.validate().unwrap();
        assert_eq!(c.nodes[0].role, NodeRole::Auto);
        assert_eq!(c.nodes[0].weight, 3);
        assert_eq!(c.nodes[0].tags["vector"], TagValue::Bool(true));
        assert!(c.has_topology());
        let db = &c.databases["app"];
        assert_eq!(db.load_balance, LoadBalance::Weighted);
        assert_eq!(c.node_for(db).name, "pg");
        assert_eq!(c.nodes_of(db).len(), 2);
        assert!(!parse(MIN).unwrap().has_topology());
        for (from, to, want) in [
            (
                "nodes = [\"pg\", \"r1\"]",
                "nodes = [\"pg\", \"x\"]",
                "databases.app.nodes",
            ),
            (
                "nodes = [\"pg\", \"r1\"]",
                "nodes = [\"pg\"]\nnode = \"pg\"",
                "not both",
            ),
            ("weight = 3", "weight = 0", "nodes.pg.weight"),
            (
                "read_write_split = true",
                "read_write_split = true\npool_mode = \"session\"",
                "read_write_split",
            ),
        ] {
            let e = parse(&topo.replace(from, to))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
        let e = parse(&format!("{MIN}\n[health]\nfailures = 0\n"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("health.failures"), "{e}");
    }
}
