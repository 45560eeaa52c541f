//! `auth-header`: token authentication through `application_name = "token:<secret>"`.
//!
//! Tokens are never stored in clear: the operator seeds the KV key `token:<sha256 hex of the
//! secret>` with the identity JSON (`{"user_id": …, "roles": […], "tenant_id": …}`), e.g. from the
//! plugin's `config` or with `PUT /plugins/auth-header/kv/token:<hex>`. A known token is allowed
//! with that identity, an unknown one denied; sessions without a token are deferred to the
//! proxy's own authentication.
use helios_plugin_abi::*;

fn authenticate(ctx: &AuthContext) -> AuthResult {
    let Some(secret) = ctx.hook_context.application_name.strip_prefix("token:") else {
        return AuthResult::Defer;
    };
    let key = format!("token:{}", sha256_digest_hex(secret));
    match kv_read_json::<Identity>(&key) {
        Some(identity) => AuthResult::Allow { identity },
        None => AuthResult::Deny {
            message: "unknown token".into(),
        },
    }
}
export_authenticate!(authenticate);
