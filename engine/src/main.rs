//! `heliosproxy`: a PostgreSQL connection pooler and proxy, one shard per core.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use helios_config::{
    AdminConfig, AuthConfig, AuthMethod, Config, Cores, DatabaseConfig, IoBackend, IoConfig,
    LimitsConfig, NodeConfig, PoolMode, Secret, ServerConfig, UserEntry, Userlist,
};
use helios_engine::shard::RuntimeConfig;

#[derive(Parser, Debug)]
#[command(
    name = "heliosproxy",
    version,
    about = "PostgreSQL proxy and connection pooler, one shard per core"
)]
struct Cli {
    /// Configuration file (TOML). See docs/configuration.md.
    #[arg(long, short = 'c', conflicts_with = "upstream")]
    config: Option<PathBuf>,
    /// Quick start without a file: postgres://USER:PASS@HOST:PORT/DB. Clients log in as USER
    /// with PASS (SCRAM) and reach DB.
    #[arg(long)]
    upstream: Option<String>,
    /// Quick start: address to listen on.
    #[arg(long, default_value = "127.0.0.1:6432", requires = "upstream")]
    listen: String,
    /// Number of shards (overrides server.cores).
    #[arg(long)]
    cores: Option<usize>,
    /// Quick start: session or transaction.
    #[arg(long, default_value = "transaction", requires = "upstream")]
    pool_mode: String,
    /// Quick start: server connections across all shards.
    #[arg(long, default_value_t = 20, requires = "upstream")]
    pool_size: usize,
    /// Quick start: admin HTTP API address, or "off".
    #[arg(long, default_value = "127.0.0.1:9090", requires = "upstream")]
    admin_listen: String,
    /// Quick start: socket I/O backend, uring or glommio.
    #[arg(long, default_value = "uring", requires = "upstream")]
    io_backend: String,
    /// Quick start: load this WASM plugin (`.wasm` or `.tar.gz`); repeatable.
    #[arg(long = "plugin", requires = "upstream")]
    plugins: Vec<PathBuf>,
    /// Quick start: only load plugins signed by a key in this directory (`<signer>.pub`).
    #[arg(long, requires = "upstream")]
    trust_root: Option<PathBuf>,
    /// Quick start: turn anomaly detection on (`[anomaly] enabled = true`, docs/signal.md).
    #[arg(long, requires = "upstream")]
    anomaly: bool,
    /// Check the configuration (and load and verify the plugins) and exit.
    #[arg(long)]
    check: bool,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    if let Err(e) = real_main() {
        eprintln!("heliosproxy: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let (rt, path) = match (&cli.config, &cli.upstream) {
        (Some(path), None) => (
            helios_engine::runtime::load_runtime(path, cli.cores)?,
            Some(path.clone()),
        ),
        (None, Some(url)) => (quick_start(&cli, url)?, None),
        _ => bail!(
            "give --config FILE, or --upstream postgres://USER:PASS@HOST:PORT/DB for a quick start"
        ),
    };
    if rt.shards == 0 {
        bail!("--cores must be at least 1");
    }
    if cli.check {
        // The plugins load and verify as at start-up; a required one that fails exits 1.
        let plugin_lines = helios_engine::runtime::check_plugins(&rt)?;
        for l in &plugin_lines {
            println!("{l}");
        }
        println!(
            "configuration OK: {} databases, {} users, {} shards, {} plugins",
            rt.config.databases.len(),
            rt.users.len(),
            rt.shards,
            plugin_lines
                .iter()
                .filter(|l| !l.starts_with("optional "))
                .count()
        );
        return Ok(());
    }
    helios_engine::runtime::run(rt, path)
}

/// Builds the configuration for `--upstream`: one node, one database, one user who is both the
/// client login and the upstream login.
fn quick_start(cli: &Cli, url: &str) -> Result<RuntimeConfig> {
    let u = parse_url(url)?;
    let pool_mode = match cli.pool_mode.as_str() {
        "session" => PoolMode::Session,
        "transaction" => PoolMode::Transaction,
        m => bail!("--pool-mode must be session or transaction, not {m:?}"),
    };
    if cli.pool_size == 0 {
        bail!("--pool-size must be at least 1");
    }
    let mut databases = BTreeMap::new();
    databases.insert(
        u.dbname.clone(),
        DatabaseConfig {
            user: Some(u.user.clone()),
            password: Some(u.password.clone()),
            pool_mode,
            pool_size: cli.pool_size,
            ..DatabaseConfig::default()
        },
    );
    let config = Config {
        server: ServerConfig {
            listen: vec![cli.listen.clone()],
            cores: cli.cores.map(Cores::Count).unwrap_or(Cores::Auto),
            ..ServerConfig::default()
        },
        limits: LimitsConfig::default(),
        auth: AuthConfig {
            method: AuthMethod::ScramSha256,
            userlist: None,
            admin_users: vec![u.user.clone()],
            ..AuthConfig::default()
        },
        nodes: vec![NodeConfig {
            name: "upstream".into(),
            host: u.host,
            port: u.port,
            connect_timeout_ms: 5_000,
            tls: helios_config::NodeTls::Disable,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            role: Default::default(),
            weight: 1,
            tags: Default::default(),
        }],
        databases,
        io: IoConfig {
            backend: match cli.io_backend.as_str() {
                "uring" => IoBackend::Uring,
                "glommio" => IoBackend::Glommio,
                b => bail!("--io-backend must be uring or glommio, not {b:?}"),
            },
            ..IoConfig::default()
        },
        audit: Default::default(),
        anomaly: helios_config::signal::AnomalyConfig {
            enabled: cli.anomaly,
            ..Default::default()
        },
        drift: Default::default(),
        plugins: helios_config::plugins::PluginsConfig {
            enabled: !cli.plugins.is_empty(),
            trust_root: cli.trust_root.clone(),
            entries: cli
                .plugins
                .iter()
                .map(|p| helios_config::plugins::PluginEntry {
                    name: None,
                    source: p.clone(),
                    hooks: None,
                    on_error: None,
                    config: None,
                    optional: false,
                })
                .collect(),
            ..Default::default()
        },
        admin: AdminConfig {
            enabled: cli.admin_listen != "off",
            listen: if cli.admin_listen == "off" {
                AdminConfig::default().listen
            } else {
                cli.admin_listen.clone()
            },
            ..AdminConfig::default()
        },
        // The quick start has no certificate: it serves plain text, and says so at start-up.
        tls: helios_config::TlsConfig::default(),
        health: Default::default(),
        failover: Default::default(),
        journal: Default::default(),
    };
    if cli.listen.parse::<std::net::SocketAddr>().is_err() {
        bail!("--listen {:?} is not an IP:port address", cli.listen);
    }
    let mut users = Userlist::new();
    users.insert(
        u.user.clone(),
        UserEntry {
            name: u.user,
            secret: Secret::Plain(u.password),
        },
    );
    let shards = config.server.cores.resolve();
    helios_engine::runtime::runtime_config(config, users, shards)
}

struct Url {
    user: String,
    password: String,
    host: String,
    port: u16,
    dbname: String,
}

fn parse_url(url: &str) -> Result<Url> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| anyhow!("--upstream must start with postgres://"))?;
    let rest = rest.split('?').next().unwrap_or(rest);
    let (auth, hostpart) = rest
        .rsplit_once('@')
        .ok_or_else(|| anyhow!("--upstream needs USER:PASS@ (clients log in with them)"))?;
    let (user, password) = auth
        .split_once(':')
        .ok_or_else(|| anyhow!("--upstream needs a password: postgres://USER:PASS@HOST:PORT/DB"))?;
    let (hostport, dbname) = hostpart.split_once('/').unwrap_or((hostpart, ""));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().context("--upstream port")?),
        None => (hostport, 5432),
    };
    let user = decode(user)?;
    let dbname = if dbname.is_empty() {
        user.clone()
    } else {
        decode(dbname)?
    };
    Ok(Url {
        password: decode(password)?,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        dbname,
        user,
    })
}

/// Percent-decoding for the URL's user, password and database.
fn decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| anyhow!("bad %-escape in --upstream"))?;
            out.push(u8::from_str_radix(hex, 16).context("bad %-escape in --upstream")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("--upstream is not UTF-8")
}
