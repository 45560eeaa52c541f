//! Errors that say who is to blame and what the client should see.

use std::fmt;

/// A PostgreSQL SQLSTATE code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqlState(pub &'static str);

impl SqlState {
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    pub const CONNECTION_EXCEPTION: SqlState = SqlState("08000");
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");
    pub const INVALID_SQL_STATEMENT_NAME: SqlState = SqlState("26000");
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Who caused an error: decides the log level and whether the client may retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    Client,
    Server,
    Proxy,
}

/// An error on its way to a client as an ErrorResponse.
#[derive(Clone, Debug)]
pub struct ProxyError {
    pub code: SqlState,
    pub message: String,
    pub blame: Blame,
    /// FATAL errors end the client connection after they are sent.
    pub fatal: bool,
}

impl ProxyError {
    pub fn fatal(code: SqlState, blame: Blame, message: impl Into<String>) -> Self {
        ProxyError {
            code,
            message: message.into(),
            blame,
            fatal: true,
        }
    }

    pub fn error(code: SqlState, blame: Blame, message: impl Into<String>) -> Self {
        ProxyError {
            code,
            message: message.into(),
            blame,
            fatal: false,
        }
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        Self::fatal(SqlState::PROTOCOL_VIOLATION, Blame::Client, message)
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {:?})", self.message, self.code, self.blame)
    }
}

impl std::error::Error for ProxyError {}
