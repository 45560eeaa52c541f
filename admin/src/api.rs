//! Routing, authentication and the endpoint bodies. [`Api::handle`] is a function of a parsed
//! request and the merged state, so every endpoint is tested without sockets as well as over
//! HTTP.

use std::collections::BTreeMap;
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::http::{Request, Response};
use crate::render::{self, LatencySummary};
use crate::snapshot::{AdminCommand, Metric};
use crate::state::{AdminState, Window};
use crate::StaticInfo;

/// The Prometheus text exposition content type.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Endpoints and the methods they take (for 405 and its `Allow` header).
const ROUTES: &[(&str, &str)] = &[
    ("/health", "GET"),
    ("/ready", "GET"),
    ("/metrics", "GET"),
    ("/stats", "GET"),
    ("/histograms", "GET"),
    ("/histograms/reset", "POST"),
    ("/pools", "GET"),
    ("/clients", "GET"),
    ("/servers", "GET"),
    ("/nodes", "GET"),
    ("/topology", "GET"),
    ("/config", "GET"),
    ("/version", "GET"),
    ("/reload", "POST"),
];

/// The admin API: the merged state plus what it needs to answer.
pub struct Api {
    pub state: AdminState,
    info: StaticInfo,
    commands: Sender<AdminCommand>,
    /// SHA-256 of the configured token: comparing digests takes the same time whatever the
    /// presented token's length or content.
    token_digest: Option<[u8; 32]>,
    started: Instant,
}

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

/// Equal in time independent of where the inputs differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for i in 0..32 {
        diff |= a[i] ^ b[i];
    }
    std::hint::black_box(diff) == 0
}

/// `%XX` and `+` decoding of one query component; None when an escape is malformed or the
/// result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Query parameters; 400 on malformed escapes, repeated or unknown parameters.
fn parse_query(query: &str, allowed: &[&str]) -> Result<BTreeMap<String, String>, Response> {
    let mut out = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k)
            .ok_or_else(|| Response::error(400, "malformed percent-encoding in the query"))?;
        let v = percent_decode(v)
            .ok_or_else(|| Response::error(400, "malformed percent-encoding in the query"))?;
        if !allowed.contains(&k.as_str()) {
            return Err(Response::error(
                400,
                if allowed.is_empty() {
                    format!("unknown parameter '{k}': this endpoint takes none")
                } else {
                    format!(
                        "unknown parameter '{k}' (expected one of: {})",
                        allowed.join(", ")
                    )
                },
            ));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(Response::error(400, format!("parameter '{k}' given twice")));
        }
    }
    Ok(out)
}

fn json_ok(v: Value) -> Response {
    Response::json(200, &v)
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl Api {
    pub fn new(
        info: StaticInfo,
        commands: Sender<AdminCommand>,
        token: Option<&str>,
        now: Instant,
    ) -> Api {
        Api {
            state: AdminState::new(info.shards),
            info,
            commands,
            token_digest: token.map(|t| digest(t.as_bytes())),
            started: now,
        }
    }

    /// `Authorization: Bearer <token>`, when a token is configured.
    fn authorized(&self, req: &Request) -> bool {
        let Some(want) = &self.token_digest else {
            return true;
        };
        let presented = req
            .header("authorization")
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .unwrap_or("");
        // Digest even an absent token so both paths cost the same.
        let got = digest(presented.as_bytes());
        ct_eq(&got, want) && !presented.is_empty()
    }

    /// Answers one request.
    pub fn handle(&mut self, req: &Request, now: Instant) -> Response {
        if !self.authorized(req) {
            return Response::error(401, "missing or wrong bearer token")
                .with_header("WWW-Authenticate", "Bearer");
        }
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        // HEAD is answered as GET; the server leaves the body out.
        let method = if req.method == "HEAD" {
            "GET"
        } else {
            req.method.as_str()
        };

        if is_plugin_kv(path) {
            return self.plugin_kv(method, path, &req.body);
        }
        let Some(&(_, allowed)) = ROUTES.iter().find(|(p, _)| *p == path) else {
            return Response::error(404, format!("no such endpoint: {path}"));
        };
        if method != allowed {
            return Response::error(405, format!("{path} takes {allowed}, not {}", req.method))
                .with_header(
                    "Allow",
                    if allowed == "GET" {
                        "GET, HEAD"
                    } else {
                        allowed
                    },
                );
        }
        let params_allowed: &[&str] = match path {
            "/histograms" => &["metric", "db", "format", "window"],
            _ => &[],
        };
        let params = match parse_query(query, params_allowed) {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        match path {
            "/health" => self.health(now),
            "/ready" => self.ready(),
            "/metrics" => Response::text(
                200,
                PROMETHEUS_CONTENT_TYPE,
                render::prometheus(&self.state),
            ),
            "/stats" => self.stats(now),
            "/histograms" => self.histograms(&params),
            "/histograms/reset" => self.reset(now),
            "/pools" => json_ok(json!({
                "pools": self.state.pools_merged(),
                "by_shard": self.state.pools().map(|(shard, p)| {
                    let mut v = to_value(p);
                    v["shard"] = json!(shard);
                    v
                }).collect::<Vec<_>>(),
            })),
            "/clients" => json_ok(json!({ "clients": self.state.clients().collect::<Vec<_>>() })),
            "/servers" => json_ok(json!({
                "servers": self.state.servers().map(|(shard, s)| {
                    let mut v = to_value(s);
                    v["shard"] = json!(shard);
                    v
                }).collect::<Vec<_>>(),
            })),
            "/nodes" => json_ok(json!({ "nodes": self.state.nodes() })),
            "/topology" => json_ok(to_value(self.state.topology())),
            "/config" => json_ok(
                self.info
                    .config_json
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            ),
            "/version" => json_ok(json!({
                "name": "heliosproxy",
                "version": self.info.version,
                "shards": self.info.shards,
            })),
            "/reload" => self.reload(),
            _ => Response::error(404, format!("no such endpoint: {path}")),
        }
    }

    fn health(&self, now: Instant) -> Response {
        json_ok(json!({
            "status": "ok",
            "uptime_s": now.saturating_duration_since(self.started).as_secs(),
            "shards": self.state.shards(),
            "shards_reporting": self.state.shards_reporting(),
            "oldest_snapshot_age_ms": self.state.oldest_snapshot_age(now).map(|d| d.as_millis() as u64),
        }))
    }

    fn ready(&self) -> Response {
        match self.state.ready() {
            Ok(()) => {
                let t = self.state.topology();
                json_ok(json!({ "status": "ready", "healthyNodes": t.healthy_nodes }))
            }
            Err(why) => Response::error(503, why),
        }
    }

    fn latency_tree(&self, window: Window) -> Value {
        let dbs = self.state.databases();
        let mut out = serde_json::Map::new();
        for metric in Metric::ALL {
            let by_db: serde_json::Map<String, Value> = dbs
                .iter()
                .map(|db| {
                    let h = self.state.histogram(metric, Some(db), window);
                    (db.clone(), to_value(LatencySummary::of(&h)))
                })
                .collect();
            let all = self.state.histogram(metric, None, window);
            out.insert(
                metric.name().to_string(),
                json!({ "all": LatencySummary::of(&all), "by_db": by_db }),
            );
        }
        Value::Object(out)
    }

    fn stats(&self, now: Instant) -> Response {
        json_ok(json!({
            "version": self.info.version,
            "uptime_s": now.saturating_duration_since(self.started).as_secs(),
            "shards": self.state.shards(),
            "shards_reporting": self.state.shards_reporting(),
            "histograms_reset_s_ago": self.state.reset_at().map(|t| now.saturating_duration_since(t).as_secs()),
            "counters": self.state.counters(),
            "by_shard": self.state.shard_counters().map(|(shard, c)| {
                let mut v = to_value(c);
                v["shard"] = json!(shard);
                v
            }).collect::<Vec<_>>(),
            "latency_us": {
                "interval": self.latency_tree(Window::Interval),
                "total": self.latency_tree(Window::Total),
            },
        }))
    }

    /// Databases the API answers for: those with latency recorded, and those configured.
    fn known_db(&self, db: &str) -> bool {
        self.state.databases().contains(db)
            || self
                .info
                .config_json
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get("databases")
                .and_then(|d| d.get(db))
                .is_some()
    }

    fn histograms(&self, params: &BTreeMap<String, String>) -> Response {
        let metric = match params.get("metric").map(String::as_str) {
            None => Metric::Query,
            Some(m) => match Metric::parse(m) {
                Some(m) => m,
                None => {
                    return Response::error(
                        400,
                        format!("unknown metric '{m}' (expected query, checkout or server)"),
                    )
                }
            },
        };
        let window = match params.get("window").map(String::as_str) {
            None => Window::Total,
            Some(w) => match Window::parse(w) {
                Some(w) => w,
                None => {
                    return Response::error(
                        400,
                        format!("unknown window '{w}' (expected interval or total)"),
                    )
                }
            },
        };
        let format = params.get("format").map(String::as_str).unwrap_or("json");
        if format != "json" && format != "hgrm" {
            return Response::error(
                400,
                format!("unknown format '{format}' (expected json or hgrm)"),
            );
        }
        let db = params.get("db").map(String::as_str);
        if let Some(db) = db {
            if !self.known_db(db) {
                return Response::error(404, format!("no database '{db}'"));
            }
        }
        let h = self.state.histogram(metric, db, window);
        if format == "hgrm" {
            return Response::text(200, "text/plain; charset=utf-8", render::hgrm(&h));
        }
        let mut v = to_value(LatencySummary::of(&h));
        v["metric"] = json!(metric.name());
        v["db"] = json!(db);
        v["window"] = json!(window.name());
        v["unit"] = json!("us");
        json_ok(v)
    }

    fn reset(&mut self, now: Instant) -> Response {
        self.state.reset_histograms(now);
        let engine_notified = self
            .commands
            .try_send(AdminCommand::ResetHistograms)
            .is_ok();
        json_ok(json!({ "status": "reset", "engine_notified": engine_notified }))
    }

    fn reload(&self) -> Response {
        match self.commands.try_send(AdminCommand::Reload) {
            Ok(()) => Response::json(202, &json!({ "status": "reload requested" })),
            Err(TrySendError::Full(_)) => {
                Response::error(503, "the engine has not taken earlier commands yet; retry")
                    .with_header("Retry-After", "1")
            }
            Err(TrySendError::Disconnected(_)) => Response::error(503, "the engine is not running"),
        }
    }
}

impl Api {
    /// `GET` (the value as the body, `application/octet-stream`), `PUT` (the body is the value),
    /// `DELETE` on `/plugins/{name}/kv/{key}`; the key is percent-decoded.
    fn plugin_kv(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let Some(kv) = &self.info.plugin_kv else {
            return Response::error(503, "plugins not enabled");
        };
        let mut parts = path["/plugins/".len()..].splitn(3, '/');
        let (Some(name), Some(_), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Response::error(404, "no such endpoint");
        };
        let (Some(name), Some(key)) = (percent_decode(name), percent_decode(key)) else {
            return Response::error(400, "malformed percent-encoding in the path");
        };
        let fail = |e: crate::KvFailure| match e {
            crate::KvFailure::UnknownPlugin(m) => Response::error(404, m),
            crate::KvFailure::TooLarge(m) => Response::error(413, m),
            crate::KvFailure::Full(m) => Response::error(507, m),
            crate::KvFailure::Unavailable(m) => Response::error(503, m),
        };
        match method {
            "GET" => match kv.get(&name, key.as_bytes()) {
                Ok(Some(v)) => Response {
                    status: 200,
                    content_type: "application/octet-stream",
                    body: v,
                    headers: Vec::new(),
                },
                Ok(None) => Response::error(404, format!("plugin {name:?} has no key {key:?}")),
                Err(e) => fail(e),
            },
            "PUT" => match kv.put(&name, key.as_bytes(), body) {
                Ok(()) => {
                    json_ok(serde_json::json!({"plugin": name, "key": key, "bytes": body.len()}))
                }
                Err(e) => fail(e),
            },
            "DELETE" => match kv.delete(&name, key.as_bytes()) {
                Ok(()) => json_ok(serde_json::json!({"plugin": name, "key": key, "deleted": true})),
                Err(e) => fail(e),
            },
            m => Response::error(405, format!("{path} takes GET, PUT or DELETE, not {m}"))
                .with_header("Allow", "GET, PUT, DELETE"),
        }
    }
}

/// `/plugins/{name}/kv/{key}`: the plugin KV store.
fn is_plugin_kv(path: &str) -> bool {
    let mut it = path.strip_prefix("/plugins/").map(|r| r.splitn(3, '/'));
    match it.as_mut().map(|i| (i.next(), i.next(), i.next())) {
        Some((Some(name), Some("kv"), Some(key))) => !name.is_empty() && !key.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare_and_decode() {
        assert!(ct_eq(&digest(b"a"), &digest(b"a")));
        assert!(!ct_eq(&digest(b"a"), &digest(b"b")));
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert!(is_plugin_kv("/plugins/p/kv/k"));
        assert!(is_plugin_kv("/plugins/p/kv/a/b"));
        assert!(!is_plugin_kv("/plugins/p/kv/"));
        assert!(!is_plugin_kv("/plugins//kv/k"));
        assert!(!is_plugin_kv("/plugins/p/xx/k"));
    }

    #[test]
    fn query_parsing_refuses_unknown_and_repeated() {
        assert!(parse_query("a=1&b=2", &["a", "b"]).is_ok());
        assert_eq!(parse_query("c=1", &["a"]).unwrap_err().status, 400);
        assert_eq!(parse_query("a=1&a=2", &["a"]).unwrap_err().status, 400);
        assert_eq!(parse_query("x", &[]).unwrap_err().status, 400);
        assert!(parse_query("", &[]).unwrap().is_empty());
    }
}
