//! `#[hook(PreQuery)]`, `#[hook(Route)]`, `#[hook(PostQuery)]`, `#[hook(Authenticate)]`: the
//! attribute form of the SDK's `export_*!` macros. Use it through `helios_plugin_abi` (which
//! re-exports it), not directly:
//!
//! ```text
//! use helios_plugin_abi::*;
//!
//! #[hook(PreQuery)]
//! fn check_query(ctx: &QueryContext) -> PreQueryResult {
//!     if ctx.query.to_uppercase().contains("DROP TABLE") {
//!         return PreQueryResult::Block { reason: "DROP forbidden".into() };
//!     }
//!     PreQueryResult::Continue
//! }
//! ```
//!
//! The function stays as written (callable from the plugin's own unit tests); the attribute adds
//! the wasm export (`pre_query`, …) when building for `wasm32`, and a signature check that points
//! at the function when its type is not the hook's.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

/// Exports the function as a hook. The argument names the hook: `PreQuery`, `Route`,
/// `PostQuery` or `Authenticate` (or their export names `pre_query`, …). Signatures:
///
/// | hook | function |
/// |---|---|
/// | `PreQuery` | `fn(&QueryContext) -> PreQueryResult` |
/// | `Route` | `fn(&QueryContext) -> RouteResult` |
/// | `PostQuery` | `fn(&PostQueryContext)` |
/// | `Authenticate` | `fn(&AuthContext) -> AuthResult` |
#[proc_macro_attribute]
pub fn hook(
    attr: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// One hook as the attribute knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    PreQuery,
    Route,
    PostQuery,
    Authenticate,
}

impl Hook {
    fn parse(name: &str) -> Option<Hook> {
        Some(match name {
            "PreQuery" | "pre_query" => Hook::PreQuery,
            "Route" | "route" => Hook::Route,
            "PostQuery" | "post_query" => Hook::PostQuery,
            "Authenticate" | "authenticate" => Hook::Authenticate,
            _ => return None,
        })
    }

    fn export_name(self) -> &'static str {
        match self {
            Hook::PreQuery => "pre_query",
            Hook::Route => "route",
            Hook::PostQuery => "post_query",
            Hook::Authenticate => "authenticate",
        }
    }

    /// The function-pointer type the user's function must coerce to.
    fn fn_type(self) -> TokenStream {
        match self {
            Hook::PreQuery => quote!(
                fn(&::helios_plugin_abi::QueryContext<'_>) -> ::helios_plugin_abi::PreQueryResult
            ),
            Hook::Route => quote!(
                fn(&::helios_plugin_abi::QueryContext<'_>) -> ::helios_plugin_abi::RouteResult
            ),
            Hook::PostQuery => quote!(fn(&::helios_plugin_abi::PostQueryContext<'_>)),
            Hook::Authenticate => {
                quote!(fn(&::helios_plugin_abi::AuthContext<'_>) -> ::helios_plugin_abi::AuthResult)
            }
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Hook::PreQuery => "fn(&QueryContext) -> PreQueryResult",
            Hook::Route => "fn(&QueryContext) -> RouteResult",
            Hook::PostQuery => "fn(&PostQueryContext)",
            Hook::Authenticate => "fn(&AuthContext) -> AuthResult",
        }
    }
}

fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    const NAMES: &str = "PreQuery, Route, PostQuery or Authenticate";
    let hook_ident: syn::Ident = syn::parse2(attr.clone()).map_err(|_| {
        let span = if attr.is_empty() {
            Span::call_site()
        } else {
            attr.span()
        };
        syn::Error::new(span, format!("#[hook(...)] takes one hook name: {NAMES}"))
    })?;
    let hook = Hook::parse(&hook_ident.to_string()).ok_or_else(|| {
        syn::Error::new(
            hook_ident.span(),
            format!("unknown hook `{hook_ident}`: expected {NAMES}"),
        )
    })?;
    let f: syn::ItemFn = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "#[hook(...)] goes on a free function (`fn name(ctx: &…) -> …`)",
        )
    })?;
    let sig = &f.sig;
    let wrong = |span: Span, what: &str| {
        Err(syn::Error::new(
            span,
            format!(
                "a {} hook {what}; expected {}",
                hook.export_name(),
                hook.expected()
            ),
        ))
    };
    if let Some(a) = &sig.asyncness {
        return wrong(a.span(), "cannot be async");
    }
    if !sig.generics.params.is_empty() {
        return wrong(sig.generics.span(), "cannot be generic");
    }
    if let Some(abi) = &sig.abi {
        return wrong(abi.span(), "is a plain Rust function (no extern ABI)");
    }
    if sig.inputs.len() != 1 {
        return wrong(sig.inputs.span(), "takes exactly one argument");
    }
    if let Some(syn::FnArg::Receiver(r)) = sig.inputs.first() {
        return wrong(r.span(), "is a free function, not a method");
    }
    let name = &sig.ident;
    let export = hook.export_name();
    let wrapper = format_ident!("__helios_export_{}", export);
    let rt_fn = format_ident!("{}", export);
    let fn_type = hook.fn_type();
    // The check is spanned on the signature so a wrong type is reported at the user's function.
    let check = quote_spanned! {sig.span()=>
        const _: #fn_type = #name;
    };
    Ok(quote! {
        #f

        #check

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[export_name = #export]
            pub extern "C" fn #wrapper(ptr: i32, len: i32) -> i64 {
                ::helios_plugin_abi::__rt::#rt_fn(ptr, len, #name)
            }
        };
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(attr: &str, item: &str) -> String {
        expand(attr.parse().unwrap(), item.parse().unwrap())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn expands_to_the_export_and_a_type_check() {
        let out = expand(
            "PreQuery".parse().unwrap(),
            "fn check(ctx: &QueryContext) -> PreQueryResult { PreQueryResult::Continue }"
                .parse()
                .unwrap(),
        )
        .unwrap()
        .to_string();
        assert!(out.contains("export_name = \"pre_query\""), "{out}");
        assert!(
            out.contains("__rt :: pre_query (ptr , len , check)"),
            "{out}"
        );
        assert!(out.contains("const _ : fn"), "{out}");
        assert!(out.contains("fn check"), "{out}");
        // snake_case names work too, and name the same export.
        let out = expand(
            "post_query".parse().unwrap(),
            "fn seen(ctx: &PostQueryContext) {}".parse().unwrap(),
        )
        .unwrap()
        .to_string();
        assert!(out.contains("export_name = \"post_query\""), "{out}");
    }

    #[test]
    fn refuses_what_cannot_be_a_hook() {
        assert!(err(
            "Prequery",
            "fn f(c: &QueryContext) -> PreQueryResult { todo!() }"
        )
        .contains("unknown hook `Prequery`"));
        assert!(
            err("", "fn f(c: &QueryContext) -> PreQueryResult { todo!() }")
                .contains("takes one hook name")
        );
        assert!(err(
            "Route, PreQuery",
            "fn f(c: &QueryContext) -> RouteResult { todo!() }"
        )
        .contains("takes one hook name"));
        assert!(err(
            "Route",
            "async fn f(c: &QueryContext) -> RouteResult { todo!() }"
        )
        .contains("cannot be async"));
        assert!(err(
            "Route",
            "fn f<T>(c: &QueryContext) -> RouteResult { todo!() }"
        )
        .contains("cannot be generic"));
        assert!(err(
            "Route",
            "fn f(a: &QueryContext, b: u8) -> RouteResult { todo!() }"
        )
        .contains("exactly one argument"));
        assert!(err("Route", "fn f() -> RouteResult { todo!() }").contains("exactly one argument"));
        assert!(err("Route", "struct S;").contains("free function"));
        assert!(err(
            "Authenticate",
            "extern \"C\" fn f(c: &AuthContext) -> AuthResult { todo!() }"
        )
        .contains("no extern ABI"));
    }
}
