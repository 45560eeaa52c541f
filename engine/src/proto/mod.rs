//! The sans-io protocol core: what a session must do with each client and server frame, with no
//! socket, pool or shard in sight.
pub mod exchange;
pub mod prepared;
