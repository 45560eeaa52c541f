//! The client side: startup, authentication, and the session state machine.
pub mod analyze;
pub mod auth;
pub mod console;
pub mod hooks;
pub mod session;
pub mod sql;
pub mod startup;
