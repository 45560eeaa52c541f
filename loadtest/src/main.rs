//! `helios-loadtest` command line. See docs/loadtest.md for the full story.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use helios_loadtest::run::{self, LoopMode, Protocol, RunConfig};
use helios_loadtest::script::{Script, SELECT_ONLY, TPCB_LIKE};
use helios_loadtest::stats::{hgrm, Comparison, Report};
use helios_loadtest::url::ConnParams;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Workload {
    /// pgbench -S: one primary-key SELECT on pgbench_accounts.
    SelectOnly,
    /// pgbench's default TPC-B-like read/write transaction.
    TpcbLike,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtocolArg {
    Simple,
    Extended,
    Prepared,
}

/// PostgreSQL load generator for latency truth (closed/open loop, CO-corrected, A/B compare).
#[derive(Parser, Debug)]
#[command(name = "helios-loadtest", version)]
struct Cli {
    /// Target, e.g. postgres://user:pw@127.0.0.1:5432/db (omit with --compare).
    #[arg(required_unless_present = "compare")]
    url: Option<String>,

    /// Run against two targets in alternating slices and print both plus B/A ratios
    /// (A = baseline, e.g. direct; B = e.g. through the proxy).
    #[arg(long, num_args = 2, value_names = ["URL_A", "URL_B"], conflicts_with = "url")]
    compare: Option<Vec<String>>,

    /// Alternating slices per target in --compare mode (order A B, B A, A B, ...).
    #[arg(long, default_value_t = 6)]
    slices: usize,

    /// Built-in workload (pgbench's scripts, on tables created by `pgbench -i`).
    #[arg(short = 'b', long, value_enum, default_value = "select-only")]
    workload: Workload,

    /// Custom script file instead of a built-in workload (`\set x random(1, 100)` + SQL with
    /// `:x`; see docs/loadtest.md).
    #[arg(short = 'f', long, value_name = "FILE")]
    file: Option<PathBuf>,

    /// Extra script variable, NAME=INTEGER (repeatable).
    #[arg(short = 'D', long = "define", value_name = "NAME=VALUE")]
    defines: Vec<String>,

    /// Query protocol.
    #[arg(short = 'M', long, value_enum, default_value = "simple")]
    protocol: ProtocolArg,

    /// Concurrent clients (one connection and one thread each).
    #[arg(short = 'c', long, default_value_t = 1)]
    clients: usize,

    /// Open loop: this many transactions per second over all clients, latency measured from
    /// the intended send time. Without it: closed loop.
    #[arg(short = 'R', long, value_name = "TPS")]
    rate: Option<f64>,

    /// Open loop with exponential (Poisson) arrivals instead of constant spacing.
    #[arg(long, requires = "rate")]
    poisson: bool,

    /// Open a new connection for every transaction (connect time is in the latency).
    #[arg(short = 'C', long)]
    connect: bool,

    /// Measured duration, seconds (in --compare: split over the slices of each target).
    #[arg(short = 'T', long, default_value_t = 10.0)]
    duration: f64,

    /// Unrecorded warm-up before measuring, seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,

    /// Progress line on stderr every this many seconds (0: none).
    #[arg(short = 'P', long, default_value_t = 1.0)]
    progress: f64,

    /// pgbench scale for `:scale` (default: count(*) of pgbench_branches on the target).
    #[arg(short = 's', long)]
    scale: Option<i64>,

    /// RNG seed (client i uses seed+i) for reproducible parameter sequences.
    #[arg(long)]
    seed: Option<u64>,

    /// Write the corrected latency distribution in HdrHistogram's .hgrm text format (ms).
    /// With --compare, FILE gets `.a`/`.b` inserted before its extension.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<PathBuf>,

    /// Write the full report as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn secs(v: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("--{what} must be >= 0, got {v}"))
}

fn suffixed(path: &Path, tag: &str) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{tag}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{tag}"),
    };
    path.with_file_name(name)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if let Some(r) = cli.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be a positive number, got {r}");
        }
    }
    let targets: Vec<ConnParams> = match (&cli.compare, &cli.url) {
        (Some(pair), _) => pair
            .iter()
            .map(|u| ConnParams::parse(u))
            .collect::<Result<_, _>>()?,
        (None, Some(u)) => vec![ConnParams::parse(u)?],
        (None, None) => bail!("give a target URL or --compare URL_A URL_B"),
    };
    let mut defines = Vec::new();
    for d in &cli.defines {
        let (k, v) = d
            .split_once('=')
            .with_context(|| format!("--define {d}: expected NAME=VALUE"))?;
        let v: i64 = v
            .trim()
            .parse()
            .with_context(|| format!("--define {d}: value must be an integer"))?;
        defines.push((k.trim().to_string(), v));
    }
    let (workload, source) = match &cli.file {
        Some(f) => (
            f.display().to_string(),
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        ),
        None => match cli.workload {
            Workload::SelectOnly => ("select-only".into(), SELECT_ONLY.into()),
            Workload::TpcbLike => ("tpcb-like".into(), TPCB_LIKE.into()),
        },
    };
    let script = Script::parse(&source, &defines).with_context(|| format!("in {workload}"))?;
    let scale = match cli.scale {
        Some(s) => Some(s),
        None if script.uses_scale() => Some(
            run::detect_scale(&targets[0])
                .with_context(|| format!("connecting to {}", targets[0].redacted()))?
                .filter(|&s| s > 0)
                .context("the script uses :scale but pgbench_branches is missing or empty (run `pgbench -i` or pass --scale)")?,
        ),
        None => None,
    };
    let cfg = RunConfig {
        clients: cli.clients,
        mode: match cli.rate {
            Some(rate) => LoopMode::Open {
                rate,
                poisson: cli.poisson,
            },
            None => LoopMode::Closed,
        },
        protocol: match cli.protocol {
            ProtocolArg::Simple => Protocol::Simple,
            ProtocolArg::Extended => Protocol::Extended,
            ProtocolArg::Prepared => Protocol::Prepared,
        },
        connect_per_txn: cli.connect,
        warmup: secs(cli.warmup, "warmup")?,
        duration: secs(cli.duration, "duration")?,
        progress: (cli.progress > 0.0)
            .then(|| secs(cli.progress, "progress"))
            .transpose()?,
        script: Arc::new(script),
        scale: scale.unwrap_or(1),
        seed: cli.seed,
    };
    if cfg.duration.is_zero() {
        bail!("--duration must be positive");
    }

    let accs = if targets.len() == 2 {
        let (a, b) =
            run::run_compare(&cfg, &targets[0], &targets[1], cli.slices).context("compare run")?;
        vec![a, b]
    } else {
        vec![run::run_single(&cfg, &targets[0])
            .with_context(|| format!("run against {}", targets[0].redacted()))?]
    };
    let reports: Vec<_> = accs.iter().map(|a| a.report()).collect();
    let report = Report {
        tool: concat!("helios-loadtest ", env!("CARGO_PKG_VERSION")),
        workload,
        protocol: cfg.protocol.name().into(),
        mode: match cfg.mode {
            LoopMode::Closed => "closed".into(),
            LoopMode::Open { poisson: true, .. } => "open (poisson)".into(),
            LoopMode::Open { .. } => "open".into(),
        },
        rate: cli.rate,
        clients: cfg.clients,
        connect_per_transaction: cfg.connect_per_txn,
        warmup_s: cfg.warmup.as_secs_f64(),
        duration_s: cfg.duration.as_secs_f64(),
        slices: (targets.len() == 2).then_some(cli.slices.max(1)),
        scale,
        comparison: (reports.len() == 2).then(|| Comparison::of(&reports[0], &reports[1])),
        targets: reports,
    };
    print!("{}", report.to_text());
    if let Some(path) = &cli.hgrm {
        if accs.len() == 1 {
            std::fs::write(path, hgrm(accs[0].histogram()))
                .with_context(|| format!("writing {}", path.display()))?;
        } else {
            for (acc, tag) in accs.iter().zip(["a", "b"]) {
                let p = suffixed(path, tag);
                std::fs::write(&p, hgrm(acc.histogram()))
                    .with_context(|| format!("writing {}", p.display()))?;
            }
        }
    }
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
