//! HeliosProxy's data plane: shard-per-core executors that accept PostgreSQL clients,
//! authenticate them, and pool connections to the upstream servers.
//!
//! Layout follows the question "where does a message go?": `net` is the wire (codec and
//! sockets), `frontend` is the client side (startup, authentication, the session state
//! machine), `backend` is the server side (connections and pools), `shard` ties one core's
//! worth of them together.

pub mod backend;
pub mod error;
pub mod frontend;
pub mod net;
pub mod report;
pub mod shard;
pub mod startup;
pub mod stats;
