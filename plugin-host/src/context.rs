//! What the engine hands to hooks (borrowed views, serialised without copying the engine's data)
//! and what hooks hand back (decisions).
//!
//! The views serialise to exactly the JSON the SDK's `QueryContext`, `PostQueryContext` and
//! `AuthContext` (crate `helios-plugin-abi`) deserialise; a test below holds the two in step.

use helios_plugin_abi::Identity;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Session attributes (`helios.<name>` → value).
pub type Attributes = BTreeMap<String, String>;

/// An empty attribute map, for sessions without attributes.
pub static EMPTY_ATTRIBUTES: Attributes = BTreeMap::new();

/// Session and request identity, built by the engine (once per query: `request_id` changes).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HookContext<'a> {
    /// One per query; the same for every hook of that query.
    pub request_id: u64,
    /// One per client connection.
    pub client_id: u64,
    /// The identity an `authenticate` plugin established, if any.
    pub identity: Option<&'a Identity>,
    /// Startup `database`.
    pub database: &'a str,
    /// Startup `user`.
    pub user: &'a str,
    /// Current `application_name`.
    pub application_name: &'a str,
    /// Client address; `None` for Unix sockets.
    pub client_ip: Option<IpAddr>,
    /// What the session and earlier hooks established (see the ABI doc, "attributes").
    pub attributes: &'a Attributes,
}

/// Input of `pre_query` and `route`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueryContext<'a> {
    /// SQL text.
    pub query: &'a str,
    /// Fingerprint text (literals replaced).
    pub normalized: &'a str,
    /// Referenced tables.
    pub tables: &'a [String],
    /// Whether the engine classified the statement as read-only.
    pub is_read_only: bool,
    /// Session and request identity.
    pub hook_context: &'a HookContext<'a>,
}

/// How a query ended (input of `post_query`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Outcome<'a> {
    /// Completed without an error.
    pub success: bool,
    /// The node that ran it.
    pub target_node: Option<&'a str>,
    /// Arrival at the proxy to the last response byte, microseconds.
    pub elapsed_us: u64,
    /// Rows returned or affected.
    pub rows: u64,
    /// Response bytes sent to the client.
    pub response_bytes: u64,
    /// Error message when `success` is false.
    pub error: Option<&'a str>,
    /// The error's SQLSTATE, when there is one.
    pub sqlstate: Option<&'a str>,
}

#[derive(Serialize)]
pub(crate) struct PostQueryInput<'a> {
    pub query_context: &'a QueryContext<'a>,
    pub outcome: &'a Outcome<'a>,
    /// Wall clock at the call, µs since the Unix epoch (ABI 1.1).
    pub unix_time_us: u64,
}

#[derive(Serialize)]
pub(crate) struct AuthInput<'a> {
    pub hook_context: &'a HookContext<'a>,
}

/// A query refused by a plugin: the engine answers ErrorResponse with SQLSTATE
/// [`BLOCK_SQLSTATE`](crate::BLOCK_SQLSTATE) (42000) and [`Blocked::reason`] as the message,
/// then ReadyForQuery with the session's current transaction status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The plugin that blocked (or failed with `on_error = "fail_closed"`).
    pub plugin: Arc<str>,
    /// The message for the client.
    pub reason: String,
}

/// The combined verdict of the `pre_query` chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreQueryDecision {
    /// Run the query as sent.
    Continue,
    /// Run `sql` instead (the last rewrite of the chain; later plugins saw it).
    Rewrite {
        /// Replacement SQL.
        sql: String,
    },
    /// Refuse the query.
    Block(Blocked),
}

/// The verdict of the `route` chain: the first plugin with an opinion wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision {
    /// The engine's router decides.
    Default,
    /// The primary.
    Primary,
    /// A replica of the engine's choice.
    Replica,
    /// This configured node (checked against the node names given to the runtime).
    Node(String),
    /// Refuse the query (also used for a target that is not a configured node).
    Block(Blocked),
}

/// The verdict of the `authenticate` chain: the first allow or deny wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Accept the session; put [`Identity::session_attributes`] into its attributes.
    Allow {
        /// The identity for later hook contexts.
        identity: Identity,
        /// The plugin that allowed.
        plugin: Arc<str>,
    },
    /// Refuse with SQLSTATE [`AUTH_DENY_SQLSTATE`](crate::AUTH_DENY_SQLSTATE) (28000).
    Deny {
        /// Message for the client.
        message: String,
        /// The plugin that denied (or failed closed).
        plugin: Arc<str>,
    },
    /// No plugin decided: use the proxy's own authentication.
    Defer,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's borrowed views and the SDK's owned types describe the same JSON.
    #[test]
    fn host_views_deserialise_into_sdk_types() {
        let identity = Identity {
            user_id: "u1".into(),
            roles: vec!["analyst".into()],
            tenant_id: Some("t1".into()),
            attributes: BTreeMap::from([("team".into(), "blue".into())]),
        };
        let attrs = Attributes::from([("helios.region".into(), "eu".into())]);
        let hc = HookContext {
            request_id: 42,
            client_id: 7,
            identity: Some(&identity),
            database: "app",
            user: "alice",
            application_name: "psql \"quoted\"",
            client_ip: Some("10.1.2.3".parse().unwrap()),
            attributes: &attrs,
        };
        let tables = vec!["public.users".to_string()];
        let qc = QueryContext {
            query: "SELECT * FROM users WHERE id = 1",
            normalized: "SELECT * FROM users WHERE id = $1",
            tables: &tables,
            is_read_only: true,
            hook_context: &hc,
        };
        let json = serde_json::to_vec(&qc).unwrap();
        let sdk: helios_plugin_abi::QueryContext<'_> = serde_json::from_slice(&json).unwrap();
        assert_eq!(sdk.query, qc.query);
        assert_eq!(sdk.normalized, qc.normalized);
        assert_eq!(sdk.tables, ["public.users"]);
        assert!(sdk.is_read_only);
        let h = &sdk.hook_context;
        assert_eq!((h.request_id, h.client_id), (42, 7));
        assert_eq!(h.identity.as_ref(), Some(&identity));
        assert_eq!((&*h.database, &*h.user), ("app", "alice"));
        assert_eq!(h.application_name, "psql \"quoted\"");
        assert_eq!(h.client_ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(h.attributes, attrs);

        let outcome = Outcome {
            success: false,
            target_node: Some("replica-1"),
            elapsed_us: 1234,
            rows: 0,
            response_bytes: 99,
            error: Some("boom"),
            sqlstate: Some("XX000"),
        };
        let post = serde_json::to_vec(&PostQueryInput {
            query_context: &qc,
            outcome: &outcome,
            unix_time_us: 1_700_000_000_000_000,
        })
        .unwrap();
        assert_eq!(
            serde_json::from_slice::<helios_plugin_abi::PostQueryContext<'_>>(&post)
                .unwrap()
                .unix_time_us,
            1_700_000_000_000_000
        );
        let sdk: helios_plugin_abi::PostQueryContext<'_> = serde_json::from_slice(&post).unwrap();
        assert_eq!(sdk.query_context.hook_context.request_id, 42);
        assert_eq!(sdk.outcome.target_node.as_deref(), Some("replica-1"));
        assert_eq!(sdk.outcome.error.as_deref(), Some("boom"));
        assert_eq!(sdk.outcome.sqlstate.as_deref(), Some("XX000"));
        assert_eq!(
            (sdk.outcome.elapsed_us, sdk.outcome.response_bytes),
            (1234, 99)
        );

        let auth = serde_json::to_vec(&AuthInput { hook_context: &hc }).unwrap();
        let sdk: helios_plugin_abi::AuthContext<'_> = serde_json::from_slice(&auth).unwrap();
        assert_eq!(sdk.hook_context.user, "alice");
    }
}
