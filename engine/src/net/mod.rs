//! The wire: message framing and the socket interface.
pub mod codec;
pub mod conn;
pub mod tls;
