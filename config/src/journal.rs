//! `[journal]`: the opt-in write journal (`engine/src/pipeline/journal.rs`), replayed by the
//! admin API's `POST /api/replay`. It holds statement text and bound parameters: data.
//!
//! ```toml
//! [journal]
//! enabled = true
//! path = "journal"            # a directory; relative to the config file
//! max_file_bytes = 67108864   # rotate journal.jsonl at this size
//! max_files = 8               # rotated files kept (the oldest is deleted)
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Off by default: the journal contains the data the statements carry.
    #[serde(default)]
    pub enabled: bool,
    /// Directory of `journal.jsonl` and its rotated predecessors.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// `journal.jsonl` is rotated when it grows past this many bytes.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Rotated files kept besides the current one.
    #[serde(default = "default_max_files")]
    pub max_files: usize,
}

fn default_path() -> PathBuf {
    PathBuf::from("journal")
}
fn default_max_file_bytes() -> u64 {
    64 << 20
}
fn default_max_files() -> usize {
    8
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            enabled: false,
            path: default_path(),
            max_file_bytes: default_max_file_bytes(),
            max_files: default_max_files(),
        }
    }
}

impl JournalConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_file_bytes < 4096 {
            return Err("journal.max_file_bytes: must be at least 4096".into());
        }
        if self.max_files == 0 {
            return Err("journal.max_files: must be at least 1".into());
        }
        Ok(())
    }
}
