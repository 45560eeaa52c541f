//! The client side: startup and login, and the session state machine around the protocol core.
pub mod login;
pub mod session;

pub use session::serve;
