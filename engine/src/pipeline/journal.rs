//! The journal stage (`[journal] enabled`): last in the stage list, it sees each execution's
//! outcome and hands every execution that is not a plain read (`sql::read::is_read`) to the
//! journal thread (`crate::journal`; docs/replay.md). Cost while on: per journaled execution one
//! entry (the text copied, the Bind message kept by reference, a named statement's parameter
//! types copied); for plain reads the read scan only. Off: no stage.

use std::sync::Arc;

use super::{Execution, Kind, Stage};
use crate::journal::{unix_ms, Entry, EntryKind, JournalSink};
use crate::shard::Shard;
use crate::sql::read::is_read;

/// The stage of one session.
pub struct JournalStage {
    sink: JournalSink,
    database: Arc<str>,
    user: Arc<str>,
    session: u32,
}

impl JournalStage {
    pub fn configured(shard: &Shard, database: &str, user: &str, session: u32) -> Option<Self> {
        let sink = shard.shared.journal.clone()?;
        Some(JournalStage {
            sink,
            database: database.into(),
            user: user.into(),
            session,
        })
    }
}

impl Stage for JournalStage {
    fn active(&self, _shard: &Shard) -> bool {
        true
    }

    fn after(&mut self, shard: &Shard, ex: &Execution) {
        if is_read(&ex.sql, &[]) {
            return;
        }
        let e = Entry {
            ts_ms: unix_ms(),
            shard: shard.id,
            session: self.session,
            database: self.database.clone(),
            user: self.user.clone(),
            kind: match ex.kind {
                Kind::Query => EntryKind::Query,
                Kind::Execute => EntryKind::Execute,
                Kind::FunctionCall => EntryKind::FunctionCall,
            },
            sql: ex.sql.to_string(),
            param_types: ex.param_types.clone(),
            bind: ex.bind.clone(),
            ok: ex.success(),
            sqlstate: ex.error.as_ref().map(|(code, _)| code.clone()),
            rolled_back: ex.rolled_back,
        };
        self.sink.record(e);
    }
}
