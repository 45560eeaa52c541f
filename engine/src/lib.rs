//! HeliosProxy's data plane: shard-per-core executors that accept PostgreSQL clients,
//! authenticate them, and pool connections to the upstream servers.
//!
//! Layers, lowest first; a module imports only from layers below it (checked by the test
//! `layers::no_module_imports_a_higher_layer`):
//!
//! | layer | what |
//! |---|---|
//! | `error`, `ids`, `stats`, `sql`, `auth` | plain data and pure functions: errors, ids, counters, SQL scanning, SCRAM |
//! | `net`, `signal`, `journal` | the wire: frame codec and sockets; the signal plane's detectors, audit and drift; the write journal's writer thread |
//! | `proto` | the sans-io protocol core: frames in, actions out |
//! | `backend` | the server side: connections and pools |
//! | `shard` | one core's state: pools, registry, cancel keys, channels |
//! | `pipeline` | the stages every statement passes (plugins, …) |
//! | `frontend` | the client side: login and the session loop |
//! | `ops` | the psql console and the admin thread's snapshots |
//! | `runtime` | process start-up, shard tasks, signals |

pub mod auth;
pub mod backend;
pub mod error;
pub mod frontend;
pub mod ids;
pub mod journal;
pub mod layers;
pub mod net;
pub mod ops;
pub mod pipeline;
pub mod proto;
pub mod runtime;
pub mod shard;
pub mod signal;
pub mod sql;
pub mod stats;
