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
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");
    pub const INVALID_SQL_STATEMENT_NAME: SqlState = SqlState("26000");
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
}

impl SqlState {
    /// A SQLSTATE a server sent, kept as it is so the client can tell the cause apart (28P01,
    /// 3D000, 42501, 53300, …). A code PostgreSQL does not define keeps its class (`CC000`) when
    /// PostgreSQL defines that; anything else becomes `fallback`.
    pub fn from_server(code: &str, fallback: SqlState) -> SqlState {
        let find = |c: &str| {
            POSTGRES_CODES
                .binary_search(&c)
                .ok()
                .map(|i| POSTGRES_CODES[i])
        };
        if let Some(c) = find(code) {
            return SqlState(c);
        }
        match code.get(..2) {
            Some(class) if code.len() == 5 => find(&format!("{class}000")).map(SqlState),
            _ => None,
        }
        .unwrap_or(fallback)
    }
}

/// Every SQLSTATE PostgreSQL defines (its `errcodes.txt`), sorted: error codes are
/// `&'static str`, so codes from a server map onto these.
const POSTGRES_CODES: &[&str] = &[
    "00000", "01000", "01003", "01004", "01006", "01007", "01008", "0100C", "01P01", "02000",
    "02001", "03000", "08000", "08001", "08003", "08004", "08006", "08007", "08P01", "09000",
    "0A000", "0B000", "0F000", "0F001", "0L000", "0LP01", "0P000", "0Z000", "0Z002", "20000",
    "21000", "22000", "22001", "22002", "22003", "22004", "22005", "22007", "22008", "22009",
    "2200B", "2200C", "2200D", "2200F", "2200G", "2200H", "2200L", "2200M", "2200N", "2200S",
    "2200T", "22010", "22011", "22012", "22013", "22014", "22015", "22016", "22018", "22019",
    "2201B", "2201E", "2201F", "2201G", "2201W", "2201X", "22021", "22022", "22023", "22024",
    "22025", "22026", "22027", "2202E", "2202G", "2202H", "22030", "22031", "22032", "22033",
    "22034", "22035", "22036", "22037", "22038", "22039", "2203A", "2203B", "2203C", "2203D",
    "2203E", "2203F", "2203G", "22P01", "22P02", "22P03", "22P04", "22P05", "22P06", "23000",
    "23001", "23502", "23503", "23505", "23514", "23P01", "24000", "25000", "25001", "25002",
    "25003", "25004", "25005", "25006", "25007", "25008", "25P01", "25P02", "25P03", "26000",
    "27000", "28000", "28P01", "2B000", "2BP01", "2D000", "2F000", "2F002", "2F003", "2F004",
    "2F005", "34000", "38000", "38001", "38002", "38003", "38004", "39000", "39001", "39004",
    "39P01", "39P02", "39P03", "3B000", "3B001", "3D000", "3F000", "40000", "40001", "40002",
    "40003", "40P01", "42000", "42501", "42601", "42602", "42611", "42622", "42701", "42702",
    "42703", "42704", "42710", "42712", "42723", "42725", "42803", "42804", "42809", "42830",
    "42846", "42883", "428C9", "42939", "42P01", "42P02", "42P03", "42P04", "42P05", "42P06",
    "42P07", "42P08", "42P09", "42P10", "42P11", "42P12", "42P13", "42P14", "42P15", "42P16",
    "42P17", "42P18", "42P19", "42P20", "42P21", "42P22", "44000", "53000", "53100", "53200",
    "53300", "53400", "54000", "54001", "54011", "54023", "55000", "55006", "55P02", "55P03",
    "55P04", "57000", "57014", "57P01", "57P02", "57P03", "57P04", "57P05", "58000", "58030",
    "58P01", "58P02", "72000", "F0000", "F0001", "HV000", "HV001", "HV002", "HV004", "HV005",
    "HV006", "HV007", "HV008", "HV009", "HV00A", "HV00B", "HV00C", "HV00D", "HV00J", "HV00K",
    "HV00L", "HV00M", "HV00N", "HV00P", "HV00Q", "HV00R", "HV010", "HV014", "HV021", "HV024",
    "HV090", "HV091", "P0000", "P0001", "P0002", "P0003", "P0004", "XX000", "XX001", "XX002",
];

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_are_kept() {
        assert!(
            POSTGRES_CODES.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
        let f = SqlState::CONNECTION_EXCEPTION;
        for c in [
            "42501", "28P01", "3D000", "53300", "57P03", "08004", "XX000",
        ] {
            assert_eq!(SqlState::from_server(c, f), SqlState(c));
        }
        // Unknown within a known class: the class. Unknown class or not a code: the fallback.
        assert_eq!(SqlState::from_server("42ZZZ", f), SqlState("42000"));
        assert_eq!(SqlState::from_server("ZZ123", f), f);
        assert_eq!(SqlState::from_server("", f), f);
        assert_eq!(SqlState::from_server("4250", f), f);
    }
}
