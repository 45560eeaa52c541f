//! Operator surfaces inside the data plane: the psql admin console, and the shard snapshots the
//! admin thread merges.
pub mod console;
pub mod report;
