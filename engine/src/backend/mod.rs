//! The server side: connections to PostgreSQL and the per-shard pools.
pub mod health;
pub mod lease;
pub mod listen;
pub mod pool;
pub mod server;
pub mod topology;
