//! The result guard: a result observer that ends a statement's result with an error once it
//! passes the database's `max_result_rows` or `max_result_bytes`, as the rows stream (nothing is
//! buffered). The client gets SQLSTATE 54000 in place of the rest of the result; in a
//! transaction block its transaction is failed, as PostgreSQL would for an error.

use super::{Execution, Stage};
use crate::error::{Blame, ProxyError, SqlState};
use crate::proto::exchange::RowAction;
use crate::shard::Shard;

pub struct ResultGuard {
    database: String,
    /// 0: no limit.
    max_rows: u64,
    max_bytes: u64,
}

impl ResultGuard {
    /// The guard for a database, if it sets a limit.
    pub fn configured(database: &str, max_rows: u64, max_bytes: u64) -> Option<ResultGuard> {
        (max_rows > 0 || max_bytes > 0).then(|| ResultGuard {
            database: database.to_string(),
            max_rows,
            max_bytes,
        })
    }

    fn exceeded(&self, what: &str, limit: u64) -> RowAction {
        RowAction::Fail(ProxyError::error(
            SqlState::PROGRAM_LIMIT_EXCEEDED,
            Blame::Client,
            format!(
                "the statement's result exceeds {what} = {limit} of database \"{}\" \
                 (heliosproxy ended it)",
                self.database
            ),
        ))
    }
}

impl Stage for ResultGuard {
    fn active(&self, _shard: &Shard) -> bool {
        true
    }

    fn observes_rows(&self, _ex: &Execution) -> bool {
        true
    }

    fn row(&mut self, ex: &Execution, tag: u8, frame: &[u8]) -> RowAction {
        if tag != b'D' {
            return RowAction::Forward;
        }
        if self.max_rows > 0 && ex.rows_seen >= self.max_rows {
            return self.exceeded("max_result_rows", self.max_rows);
        }
        if self.max_bytes > 0 && ex.bytes + frame.len() as u64 > self.max_bytes {
            return self.exceeded("max_result_bytes", self.max_bytes);
        }
        RowAction::Forward
    }
}
