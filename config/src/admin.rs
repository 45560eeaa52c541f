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

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: default_listen(),
            token: None,
            snapshot_interval_ms: default_interval(),
            max_body_bytes: default_body(),
            console_database: default_console(),
        }
    }
}
