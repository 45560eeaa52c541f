//! `helios-loadtest`: a PostgreSQL load generator built for latency truth.
//!
//! It is the instrument HeliosProxy's overhead is quoted with, so it is built around the two
//! ways load generators usually lie:
//!
//! * **Coordinated omission.** A closed-loop client that waits for a slow answer also stops
//!   *asking*, so the stall is recorded once instead of for every request that would have
//!   arrived during it. The open loop ([`run::LoopMode::Open`]) sends on a fixed schedule and
//!   measures from the intended send time.
//! * **Instrument overhead and drift.** A dedicated blocking thread per client speaks the wire
//!   protocol directly ([`wire`]), putting the same messages on the wire as pgbench; `--compare`
//!   interleaves two targets in ABBA slices so machine drift affects both alike.
//!
//! Module map: [`url`] parses targets, [`script`] parses and evaluates transaction scripts,
//! [`wire`] is the client, [`run`] drives the loops, [`stats`] summarizes and formats.

pub mod run;
pub mod script;
pub mod stats;
pub mod url;
pub mod wire;

/// Errors of the library. The binary wraps them with `anyhow` context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent something we do not understand or support.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused (during start-up or a setup query), with its SQLSTATE.
    #[error("server error {code}: {message}")]
    Server {
        code: wire::SqlState,
        message: String,
    },
    #[error("bad target URL {0}")]
    Url(String),
    #[error("script error: {0}")]
    Script(String),
}
