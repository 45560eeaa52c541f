//! The access-context guard (docs/contexts.md): the first stage, for databases that fix their
//! upstream role or enforce session defaults. It refuses, before any other stage or the server
//! sees it, every execution that would change what the context fixes (`sql::fixed`): 42501
//! naming the setting, or 25006 for a read-write transaction in a read-only context. The
//! context's values themselves are applied by the server session (startup parameters of every
//! server connection, `ServerTarget::startup`); this stage only keeps clients from changing them.
//! Not configured (no role, no enforced defaults): not in the pipeline, no cost.

use super::{Execution, Kind, Stage};
use crate::error::{Blame, ProxyError, SqlState};
use crate::shard::Shard;
use crate::sql::fixed::{Breach, Fixed};

/// `set_config(text, text, boolean)`: its OID is fixed in PostgreSQL's catalog (pg_proc.dat).
const SET_CONFIG_OID: &str = "2078";

pub struct ContextGuard {
    alias: String,
    fixed: Fixed,
}

impl ContextGuard {
    /// The guard for a database, if its context fixes anything.
    pub fn configured(config: &helios_config::Config, alias: &str) -> Option<ContextGuard> {
        let db = config.databases.get(alias)?;
        Some(ContextGuard {
            alias: alias.to_string(),
            fixed: Fixed::new(db.fixed_settings())?,
        })
    }

    fn refusal(&self, b: Breach) -> ProxyError {
        match b {
            Breach::Setting(s) => ProxyError::error(
                SqlState("42501"),
                Blame::Client,
                format!(
                    "permission denied to change \"{s}\": it is fixed by access context \"{}\" (heliosproxy)",
                    self.alias
                ),
            ),
            Breach::ReadWrite => ProxyError::error(
                SqlState("25006"),
                Blame::Client,
                format!(
                    "cannot start a read-write transaction: access context \"{}\" fixes default_transaction_read_only (heliosproxy)",
                    self.alias
                ),
            ),
            Breach::Statement(what) => ProxyError::error(
                SqlState("42501"),
                Blame::Client,
                format!(
                    "permission denied for {what}: access context \"{}\" fixes its role and settings (heliosproxy)",
                    self.alias
                ),
            ),
        }
    }
}

impl Stage for ContextGuard {
    fn active(&self, _shard: &Shard) -> bool {
        true
    }

    fn before(&mut self, _shard: &Shard, ex: &mut Execution) -> Result<(), ProxyError> {
        if ex.kind == Kind::FunctionCall {
            let oid = ex.sql.rsplit(' ').next().unwrap_or("");
            if oid == SET_CONFIG_OID {
                return Err(self.refusal(Breach::Statement("set_config by FunctionCall")));
            }
            return Ok(());
        }
        self.fixed.check(&ex.sql).map_err(|b| self.refusal(b))
    }
}
