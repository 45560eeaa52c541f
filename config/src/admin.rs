//! `[admin]`: the admin HTTP thread and the psql console database.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin HTTP API (one blocking thread, not on any shard).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address of the admin HTTP API. A non-loopback address requires `token`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token required on every request (`Authorization: Bearer …`); use `${VAR}`.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// How often each shard sends its statistics snapshot to the admin thread.
    #[serde(default = "default_interval")]
    pub snapshot_interval_ms: u64,
    /// Largest request body the admin API accepts.
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Name of the virtual database that serves the PgBouncer-style console over psql
    /// (`SHOW POOLS`, …) to `auth.admin_users`.
    #[serde(default = "default_console")]
    pub console_database: String,
    /// Role the admin API's `POST /api/sql` and `POST /api/shadow` log in to a node as (they
    /// connect to the node directly, not through the pools). Unset: both answer 503.
    #[serde(default)]
    pub sql_user: Option<String>,
    /// Password for `sql_user` (use `${VAR}`); never shown by `/config`.
    #[serde(default, skip_serializing)]
    pub sql_password: Option<String>,
    /// Most rows `POST /api/sql` returns (more are cut off and flagged `truncated`) and
    /// `POST /api/shadow` compares per node (more is a 422).
    #[serde(default = "default_sql_rows")]
    pub sql_max_rows: usize,
    /// `statement_timeout` of the statements `/api/sql` and `/api/shadow` run, and the limit on
    /// connecting to the node.
    #[serde(default = "default_sql_timeout")]
    pub sql_timeout_ms: u64,
}

fn yes() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:9090".into()
}
fn default_interval() -> u64 {
    1000
}
fn default_body() -> usize {
    64 * 1024
}
fn default_console() -> String {
    "heliosproxy".into()
}
fn default_sql_rows() -> usize {
    1000
}
fn default_sql_timeout() -> u64 {
    5000
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: default_listen(),
            token: None,
            snapshot_interval_ms: default_interval(),
            max_body_bytes: default_body(),
            console_database: default_console(),
            sql_user: None,
            sql_password: None,
            sql_max_rows: default_sql_rows(),
            sql_timeout_ms: default_sql_timeout(),
        }
    }
}
