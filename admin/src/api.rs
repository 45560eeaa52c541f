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
/// Server-sent events (`/anomalies/stream`): the admin loop keeps such a response open.
pub const EVENT_STREAM: &str = "text/event-stream";

/// Every endpoint and the methods it takes (for 405 and its `Allow` header; HEAD is answered
/// wherever GET is). `{x}` matches one path segment; a last `{key}` or `{path}` matches the rest.
/// `openapi.json` describes exactly these (a test keeps them in step).
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/", &["GET"]),
    ("/ui", &["GET"]),
    ("/openapi.json", &["GET"]),
    ("/health", &["GET"]),
    ("/ready", &["GET"]),
    ("/metrics", &["GET"]),
    ("/stats", &["GET"]),
    ("/histograms", &["GET"]),
    ("/histograms/reset", &["POST"]),
    ("/pools", &["GET"]),
    ("/clients", &["GET"]),
    ("/servers", &["GET"]),
    ("/nodes", &["GET"]),
    ("/nodes/{name}/enable", &["POST"]),
    ("/nodes/{name}/disable", &["POST"]),
    ("/topology", &["GET"]),
    ("/plugins", &["GET"]),
    ("/plugins/{name}/kv/{key}", &["GET", "PUT", "DELETE"]),
    ("/anomalies", &["GET"]),
    ("/anomalies/stream", &["GET"]),
    ("/drift", &["GET"]),
    ("/api/chaos", &["GET", "POST"]),
    ("/api/edge", &["GET"]),
    ("/api/edge/{path}", &["GET", "POST", "PUT", "DELETE"]),
    ("/api/shadow", &["POST"]),
    ("/api/sql", &["POST"]),
    ("/api/replay", &["GET", "POST"]),
    ("/config", &["GET"]),
    ("/version", &["GET"]),
    ("/reload", &["POST"]),
];

/// The dashboard: one page, no external resources (`admin/src/ui/index.html`).
pub const DASHBOARD_HTML: &str = include_str!("ui/index.html");

/// Matches `path` against a [`ROUTES`] pattern; the captured (still percent-encoded) segments.
pub fn match_route<'a>(pattern: &str, path: &'a str) -> Option<Vec<&'a str>> {
    if pattern == "/" {
        return (path == "/").then(Vec::new);
    }
    let pat: Vec<&str> = pattern[1..].split('/').collect();
    let mut rest = path.strip_prefix('/')?;
    let mut caps = Vec::new();
    for (i, p) in pat.iter().enumerate() {
        let last = i + 1 == pat.len();
        if last && (*p == "{key}" || *p == "{path}") {
            if rest.is_empty() {
                return None;
            }
            caps.push(rest);
            return Some(caps);
        }
        let (seg, tail) = match rest.split_once('/') {
            Some((a, b)) if !last => (a, b),
            None if last => (rest, ""),
            _ => return None,
        };
        if p.starts_with('{') {
            if seg.is_empty() {
                return None;
            }
            caps.push(seg);
        } else if seg != *p {
            return None;
        }
        rest = tail;
    }
    Some(caps)
}

/// A feature that is not built into this proxy yet: 503 with the feature named.
fn not_enabled(feature: &str, detail: &str) -> Response {
    Response::json(
        503,
        &json!({ "error": format!("{feature} not enabled"), "feature": feature, "detail": detail }),
    )
}

/// The admin API: the merged state plus what it needs to answer.
pub struct Api {
    pub state: AdminState,
    info: StaticInfo,
    commands: Sender<AdminCommand>,
    /// SHA-256 of the configured token: comparing digests takes the same time whatever the
    /// presented token's length or content.
    token_digest: Option<[u8; 32]>,
    started: Instant,
    sql: crate::sql::SqlSettings,
    /// The shards' snapshots, taken in while a statement runs on a node (see [`Api::off_thread`]).
    snapshots: Option<crossbeam_channel::Receiver<crate::snapshot::ShardSnapshot>>,
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
            sql: crate::sql::SqlSettings {
                user: None,
                password: None,
                max_rows: 1000,
                timeout: std::time::Duration::from_secs(5),
            },
            snapshots: None,
        }
    }

    /// Who `/api/sql` and `/api/shadow` log in as, and their limits (`admin.sql_*`).
    pub fn with_sql(mut self, sql: crate::sql::SqlSettings) -> Api {
        self.sql = sql;
        self
    }

    /// The snapshot channel, so that a long `/api/sql` or `/api/shadow` call does not make the
    /// shards' snapshots back up (and their latency intervals get dropped) while it runs.
    pub fn with_snapshots(
        mut self,
        rx: crossbeam_channel::Receiver<crate::snapshot::ShardSnapshot>,
    ) -> Api {
        self.snapshots = Some(rx);
        self
    }

    /// Runs `f` (a statement on a node: up to the connect and statement timeouts) on a
    /// short-lived thread while this one keeps taking in the shards' snapshots.
    fn off_thread<T: Send>(&mut self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            let h = scope.spawn(f);
            while !h.is_finished() {
                if let Some(rx) = &self.snapshots {
                    while let Ok(snap) = rx.try_recv() {
                        self.state.ingest(snap, Instant::now());
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            match h.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
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
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        // The dashboard page holds no data (it asks for the token and sends it with each of
        // its requests): a browser must be able to load it without one.
        let public = matches!(path, "/" | "/ui") && matches!(req.method.as_str(), "GET" | "HEAD");
        if !public && !self.authorized(req) {
            return Response::error(401, "missing or wrong bearer token")
                .with_header("WWW-Authenticate", "Bearer");
        }
        // HEAD is answered as GET; the server leaves the body out.
        let method = if req.method == "HEAD" {
            "GET"
        } else {
            req.method.as_str()
        };

        let Some((pattern, allowed, caps)) = ROUTES
            .iter()
            .find_map(|(p, m)| match_route(p, path).map(|c| (*p, *m, c)))
        else {
            return Response::error(404, format!("no such endpoint: {path}"));
        };
        if !allowed.contains(&method) {
            let mut allow: Vec<&str> = allowed.to_vec();
            if allow.contains(&"GET") {
                allow.push("HEAD");
            }
            return Response::error(
                405,
                format!("{path} takes {}, not {}", allowed.join(" or "), req.method),
            )
            .with_header("Allow", allow.join(", "));
        }
        let params_allowed: &[&str] = match pattern {
            "/histograms" => &["metric", "db", "format", "window"],
            "/anomalies" | "/drift" => &["limit"],
            _ => &[],
        };
        let params = match parse_query(query, params_allowed) {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        match pattern {
            "/" | "/ui" => Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                headers: vec![
                    // Everything the page needs is in it: nothing may load from elsewhere.
                    (
                        "Content-Security-Policy",
                        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                         frame-ancestors 'none'"
                            .to_string(),
                    ),
                    ("Referrer-Policy", "no-referrer".to_string()),
                    ("X-Content-Type-Options", "nosniff".to_string()),
                ],
                body: DASHBOARD_HTML.as_bytes().to_vec(),
            },
            "/openapi.json" => Response {
                status: 200,
                content_type: "application/json",
                headers: Vec::new(),
                body: crate::openapi::OPENAPI_JSON.as_bytes().to_vec(),
            },
            "/plugins/{name}/kv/{key}" => self.plugin_kv(method, caps[0], caps[1], &req.body),
            "/plugins" => self.plugins(),
            "/nodes/{name}/enable" => self.switch_node(caps[0], true),
            "/nodes/{name}/disable" => self.switch_node(caps[0], false),
            "/anomalies" => self.anomalies(&params),
            "/anomalies/stream" => self.anomaly_stream(),
            "/drift" => self.drift(&params),
            "/api/chaos" => self.chaos(method, &req.body),
            "/api/edge" | "/api/edge/{path}" => not_enabled(
                "edge cache",
                "the cache/edge tier is not built into this proxy yet",
            ),
            "/api/replay" => self.api_replay(method, req),
            "/api/sql" => self.api_sql(req),
            "/api/shadow" => self.api_shadow(req),
            "/health" => self.health(now),
            "/ready" => self.ready(),
            "/metrics" => {
                let mut text = render::prometheus(&self.state);
                crate::signal::prometheus(&mut text, &self.state.signal, self.info.signal.as_deref());
                if let Some(t) = self.info.topology.as_ref().and_then(|t| t.topology()) {
                    render::prometheus_topology(&mut text, &t);
                }
                Response::text(200, PROMETHEUS_CONTENT_TYPE, text)
            }
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
            "/nodes" => self.nodes(),
            "/topology" => match self.info.topology.as_ref().and_then(|t| t.topology()) {
                Some(v) => json_ok(v),
                None => json_ok(to_value(self.state.topology())),
            },
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
            _ => Response::error(500, format!("{pattern} has no handler")),
        }
    }

    /// `[anomaly] enabled` as in effect.
    fn anomaly_on(&self) -> bool {
        self.info
            .signal
            .as_ref()
            .is_some_and(|b| b.anomaly_enabled.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// `?limit=N` (1..=1000, default 100), or 400.
    fn limit(params: &BTreeMap<String, String>) -> Result<usize, Response> {
        match params.get("limit") {
            None => Ok(100),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=crate::signal::EVENT_BUFFER).contains(&n) => Ok(n),
                _ => Err(Response::error(
                    400,
                    format!(
                        "limit: {v:?} is not a number from 1 to {}",
                        crate::signal::EVENT_BUFFER
                    ),
                )),
            },
        }
    }

    fn anomalies(&self, params: &BTreeMap<String, String>) -> Response {
        if !self.anomaly_on() {
            return not_enabled(
                "anomaly detection",
                "set [anomaly] enabled = true in the configuration (docs/signal.md)",
            );
        }
        let limit = match Self::limit(params) {
            Ok(l) => l,
            Err(r) => return r,
        };
        let events = self.state.signal.recent(limit);
        json_ok(json!({
            "count": events.len(),
            "limit": limit,
            "events": events,
            "buffer_total": self.state.signal.total,
        }))
    }

    /// The head of `/anomalies/stream`: the admin loop keeps the connection (lib.rs) and
    /// writes each new event to it as a server-sent event.
    fn anomaly_stream(&mut self) -> Response {
        if !self.anomaly_on() {
            return not_enabled(
                "anomaly detection",
                "set [anomaly] enabled = true in the configuration (docs/signal.md)",
            );
        }
        // Only what arrives from now on.
        self.state.signal.take_fresh();
        if let Some(b) = &self.info.signal {
            b.take_fresh();
        }
        Response::text(200, EVENT_STREAM, ": heliosproxy anomaly events\n\n".into())
    }

    /// Drift alerts not streamed yet.
    pub fn drift_alerts_fresh(&self) -> Vec<crate::signal::DriftAlert> {
        self.info
            .signal
            .as_ref()
            .map(|b| b.take_fresh())
            .unwrap_or_default()
    }

    fn drift(&self, params: &BTreeMap<String, String>) -> Response {
        let board = self
            .info
            .signal
            .as_ref()
            .filter(|b| b.drift_enabled.load(std::sync::atomic::Ordering::Relaxed));
        let Some(board) = board else {
            return not_enabled(
                "drift detection",
                "set [drift] enabled = true and drift = true on a database (docs/signal.md)",
            );
        };
        let limit = match Self::limit(params) {
            Ok(l) => l,
            Err(r) => return r,
        };
        let (alerts, total) = board.alerts(limit);
        json_ok(json!({
            "count": alerts.len(),
            "limit": limit,
            "alerts": alerts,
            "total": total,
        }))
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

/// The node list and database routing of the running configuration.
struct Routing {
    /// (name, host, port), in configuration order.
    nodes: Vec<(String, String, u16)>,
    /// database alias -> (node, dbname on the server).
    databases: BTreeMap<String, (String, String)>,
}

impl Routing {
    fn of(config: &Value) -> Routing {
        let nodes: Vec<(String, String, u16)> = config["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|n| {
                        (
                            n["name"].as_str().unwrap_or_default().to_string(),
                            n["host"].as_str().unwrap_or_default().to_string(),
                            n["port"].as_u64().unwrap_or(5432) as u16,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let first = nodes.first().map(|n| n.0.clone()).unwrap_or_default();
        let databases = config["databases"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(alias, d)| {
                        let node = d["node"].as_str().unwrap_or(&first).to_string();
                        let dbname = d["dbname"].as_str().unwrap_or(alias).to_string();
                        (alias.clone(), (node, dbname))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Routing { nodes, databases }
    }

    /// Where a statement for `node` runs: `database` (a name on the server) or the dbname of
    /// the first database alias routed to the node, else `postgres`.
    fn target(&self, node: &str, database: Option<&str>) -> Option<crate::sql::Target> {
        let (name, host, port) = self.nodes.iter().find(|n| n.0 == node)?;
        let dbname = database.map(str::to_string).unwrap_or_else(|| {
            self.databases
                .values()
                .find(|(n, _)| n == node)
                .map(|(_, d)| d.clone())
                .unwrap_or_else(|| "postgres".into())
        });
        Some(crate::sql::Target {
            node: name.clone(),
            host: host.clone(),
            port: *port,
            dbname,
        })
    }
}

/// A JSON object body, or 400 saying what is wrong with it.
fn json_body(req: &Request, allowed: &[&str]) -> Result<serde_json::Map<String, Value>, Response> {
    let v: Value = serde_json::from_slice(&req.body)
        .map_err(|e| Response::error(400, format!("the body is not JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(Response::error(400, "the body must be a JSON object"));
    };
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Response::error(
            400,
            format!("unknown field '{k}' (expected: {})", allowed.join(", ")),
        ));
    }
    Ok(o)
}

fn str_field<'a>(
    o: &'a serde_json::Map<String, Value>,
    name: &str,
    required: bool,
) -> Result<Option<&'a str>, Response> {
    match o.get(name) {
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(Response::error(400, format!("'{name}' is required"))),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Response::error(400, format!("'{name}' must be a string"))),
    }
}

impl Api {
    fn routing(&self) -> Routing {
        Routing::of(
            &self
                .info
                .config_json
                .read()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Configured nodes, with the shards' view of their health, the operator's switch and the
    /// pools routed to them.
    fn nodes(&self) -> Response {
        let routing = self.routing();
        let seen = self.state.nodes();
        let pools = self.state.pools_merged();
        // With a topology: the health checker's role, health, lag and the chaos overrides.
        let topo = self.info.topology.as_ref().and_then(|t| t.topology());
        let topo_node = |name: &str| {
            topo.as_ref()
                .and_then(|t| t["nodes"].as_array())
                .and_then(|ns| ns.iter().find(|n| n["name"] == name))
                .cloned()
        };
        let nodes: Vec<Value> = routing
            .nodes
            .iter()
            .map(|(name, host, port)| {
                let m = seen.iter().find(|n| &n.name == name);
                let node_pools: Vec<Value> = routing
                    .databases
                    .iter()
                    .filter(|(_, (n, _))| n == name)
                    .map(|(alias, (_, dbname))| {
                        let p = pools.iter().find(|p| &p.database == alias);
                        json!({
                            "database": alias,
                            "dbname": dbname,
                            "pool_size": p.map(|p| p.pool_size),
                            "active": p.map(|p| p.active),
                            "idle": p.map(|p| p.idle),
                            "waiting": p.map(|p| p.waiting),
                        })
                    })
                    .collect();
                let t = topo_node(name);
                let from_topo = |k: &str| t.as_ref().map_or(Value::Null, |t| t[k].clone());
                let shards_healthy = m.map(|m| m.healthy).unwrap_or(true);
                json!({
                    "name": name,
                    "host": host,
                    "port": port,
                    "role": t.as_ref().and_then(|t| t["role"].as_str()).unwrap_or(m.map(|m| m.role).unwrap_or("primary")),
                    "enabled": !self.info.node_switches.is_disabled(name),
                    "healthy": shards_healthy && t.as_ref().is_none_or(|t| t["healthy"] == true),
                    "forced_down": t.as_ref().is_some_and(|t| t["forcedDown"] == true),
                    "lag_bytes": from_topo("lagBytes"),
                    "lag_ms": from_topo("lagMs"),
                    "tags": t.as_ref().map_or_else(|| json!({}), |t| t["tags"].clone()),
                    "last_error": m.and_then(|m| m.last_error.clone()),
                    "last_checked_at_ms": m.and_then(|m| m.last_checked_at_ms),
                    "unhealthy_shards": m.map(|m| m.unhealthy_shards.clone()).unwrap_or_default(),
                    "pools": node_pools,
                })
            })
            .collect();
        json_ok(json!({ "nodes": nodes }))
    }

    /// `GET /api/chaos` (the overrides) and `POST /api/chaos` (force a node unhealthy, restore
    /// it, reset): through the engine's topology, so every shard's routing changes.
    fn chaos(&self, method: &str, body: &[u8]) -> Response {
        let Some(t) = &self.info.topology else {
            return not_enabled("chaos", "the engine's topology is not available");
        };
        let r = if method == "POST" {
            t.chaos(body)
        } else {
            t.chaos_state()
        };
        match r {
            Ok(v) => json_ok(v),
            Err(crate::ChaosFailure::Malformed(m)) => Response::error(400, m),
            Err(crate::ChaosFailure::UnknownNode(m)) => Response::error(404, m),
            Err(crate::ChaosFailure::NotEnabled(m)) => not_enabled("chaos", &m),
        }
    }

    fn switch_node(&self, name: &str, enabled: bool) -> Response {
        let Some(name) = percent_decode(name) else {
            return Response::error(400, "malformed percent-encoding in the path");
        };
        if !self.routing().nodes.iter().any(|n| n.0 == name) {
            return Response::error(404, format!("no node named {name:?} is configured"));
        }
        let changed = self.info.node_switches.set(&name, enabled);
        if changed {
            log::warn!(
                "admin API: node {name} {}",
                if enabled {
                    "enabled"
                } else {
                    "disabled: no new server connections are handed out for it"
                }
            );
        }
        json_ok(json!({ "node": name, "enabled": enabled, "changed": changed }))
    }

    fn plugins(&self) -> Response {
        let Some(kv) = &self.info.plugin_kv else {
            return not_enabled("plugins", "set [plugins] enabled = true");
        };
        let merged = self.state.plugins_merged();
        let plugins: Vec<Value> = kv
            .catalog()
            .into_iter()
            .map(|meta| {
                let m = merged.iter().find(|m| m.name == meta.name);
                let time = m.map(|m| LatencySummary::of(&m.time_us));
                let mut v = to_value(&meta);
                v["state"] = json!(match m {
                    None => "loaded",
                    Some(m) if m.last_error.is_some() && m.errors > 0 => "failing",
                    Some(_) => "active",
                });
                v["invocations"] = json!(m.map(|m| m.invocations).unwrap_or(0));
                v["errors"] = json!(m.map(|m| m.errors).unwrap_or(0));
                v["timeouts"] = json!(m.map(|m| m.timeouts).unwrap_or(0));
                v["last_error"] = json!(m.and_then(|m| m.last_error.clone()));
                v["time_p50_us"] = json!(time.as_ref().and_then(|t| t.p50_us));
                v["time_p99_us"] = json!(time.as_ref().and_then(|t| t.p99_us));
                v["time_us"] = to_value(&time);
                v
            })
            .collect();
        json_ok(json!({ "plugins": plugins }))
    }

    /// `POST /api/sql`: always needs the token, even where none is configured (then it is
    /// refused outright).
    fn api_sql(&mut self, req: &Request) -> Response {
        if self.token_digest.is_none() {
            return Response::error(
                403,
                "POST /api/sql always requires the bearer token: set admin.token",
            );
        }
        let o = match json_body(req, &["sql", "node", "database", "read_only", "max_rows"]) {
            Ok(o) => o,
            Err(r) => return r,
        };
        let fields = (|| {
            let sql = str_field(&o, "sql", true)?.unwrap_or_default();
            let node = str_field(&o, "node", false)?;
            let database = str_field(&o, "database", false)?;
            let read_only = match o.get("read_only") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(Response::error(400, "'read_only' must be a boolean")),
            };
            let max_rows = match o.get("max_rows") {
                None | Some(Value::Null) => self.sql.max_rows,
                Some(v) => match v.as_u64() {
                    Some(n) if n >= 1 => (n as usize).min(self.sql.max_rows),
                    _ => {
                        return Err(Response::error(
                            400,
                            "'max_rows' must be a positive integer",
                        ))
                    }
                },
            };
            Ok((sql, node, database, read_only, max_rows))
        })();
        let (sql, node, database, read_only, max_rows) = match fields {
            Ok(f) => f,
            Err(r) => return r,
        };
        let routing = self.routing();
        let node = match node {
            Some(n) => n.to_string(),
            None => match routing.nodes.first() {
                Some(n) => n.0.clone(),
                None => return Response::error(404, "no node is configured"),
            },
        };
        let Some(target) = routing.target(&node, database) else {
            return Response::error(404, format!("no node named {node:?} is configured"));
        };
        let settings = self.sql.clone();
        let result = self
            .off_thread(|| crate::sql::run(&settings, &target, sql, read_only, max_rows, false));
        match result {
            Ok(r) => {
                let mut v = to_value(&r);
                v["node"] = json!(target.node);
                v["database"] = json!(target.dbname);
                v["read_only"] = json!(read_only);
                v["row_count"] = json!(r.rows.len());
                v["max_rows"] = json!(max_rows);
                json_ok(v)
            }
            Err(e) => Response::json(e.status(), &e.to_json(&target.node)),
        }
    }

    /// The journal's directory, if `[journal] enabled`.
    fn journal_dir(&self) -> Option<std::path::PathBuf> {
        let cfg = self
            .info
            .config_json
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let j = &cfg["journal"];
        (j["enabled"] == true)
            .then(|| j["path"].as_str().map(std::path::PathBuf::from))
            .flatten()
    }

    /// `GET /api/replay`: the journal's extent. `POST /api/replay` `{"node", "from_ms",
    /// "to_ms", "database", "dry_run"}`: its writes in that window applied to the node
    /// (admin/src/replay.rs). 200 when the window was applied whole, 422 with the same report
    /// when it stopped at an error.
    fn api_replay(&mut self, method: &str, req: &Request) -> Response {
        let Some(dir) = self.journal_dir() else {
            return not_enabled(
                "replay",
                "set [journal] enabled = true: writes are journaled from then on",
            );
        };
        if method == "GET" {
            return json_ok(crate::replay::status(&dir));
        }
        if self.token_digest.is_none() {
            return Response::error(
                403,
                "POST /api/replay writes to a node: it always requires the bearer token: set admin.token",
            );
        }
        let o = match json_body(req, &["node", "from_ms", "to_ms", "database", "dry_run"]) {
            Ok(o) => o,
            Err(r) => return r,
        };
        let ms = |k: &str, default: u64| match o.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| {
                Response::error(400, format!("'{k}' must be unix milliseconds (an integer)"))
            }),
        };
        let fields = (|| {
            let node = str_field(&o, "node", true)?.unwrap_or_default().to_string();
            let database = str_field(&o, "database", false)?.map(str::to_string);
            let dry_run = match o.get("dry_run") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(Response::error(400, "'dry_run' must be a boolean")),
            };
            let (from_ms, to_ms) = (ms("from_ms", 0)?, ms("to_ms", u64::MAX)?);
            if from_ms > to_ms {
                return Err(Response::error(400, "'from_ms' is after 'to_ms'"));
            }
            Ok(crate::replay::Request {
                from_ms,
                to_ms,
                database: database.clone(),
                dry_run,
            }
            .with_node(node))
        })();
        let (node, request) = match fields {
            Ok(f) => f,
            Err(r) => return r,
        };
        let routing = self.routing();
        let Some(target) = routing.target(&node, None) else {
            return Response::error(404, format!("no node named {node:?} is configured"));
        };
        if let Some(d) = &request.database {
            if !routing.databases.contains_key(d) {
                return Response::error(404, format!("no database alias {d:?} is configured"));
            }
        }
        let dbs: BTreeMap<String, String> = routing
            .databases
            .iter()
            .map(|(a, (_, d))| (a.clone(), d.clone()))
            .collect();
        let settings = self.sql.clone();
        let result = self.off_thread(|| {
            let dbname = |alias: &str| dbs.get(alias).cloned().unwrap_or_else(|| alias.to_string());
            crate::replay::replay(&settings, &target, &dbname, &dir, &request)
        });
        match result {
            Ok(r) => {
                let status = if r.stopped.is_some() { 422 } else { 200 };
                if !r.dry_run {
                    log::warn!(
                        "admin API: replay onto {}: {} applied, {} skipped (failed originally){}",
                        r.node,
                        r.applied,
                        r.skipped_failed,
                        r.stopped
                            .as_ref()
                            .map(|s| format!(", stopped at seq {}: {}", s.seq, s.message))
                            .unwrap_or_default()
                    );
                }
                Response::json(status, &to_value(&r))
            }
            Err(e) => Response::json(e.status(), &e.to_json(&target.node)),
        }
    }

    /// `POST /api/shadow`: the same read on two nodes, compared.
    fn api_shadow(&mut self, req: &Request) -> Response {
        let o = match json_body(req, &["sql", "source_node", "target_node", "database"]) {
            Ok(o) => o,
            Err(r) => return r,
        };
        let fields = (|| {
            Ok((
                str_field(&o, "sql", true)?.unwrap_or_default(),
                str_field(&o, "source_node", true)?.unwrap_or_default(),
                str_field(&o, "target_node", true)?.unwrap_or_default(),
                str_field(&o, "database", false)?,
            ))
        })();
        let (sql, source, target, database) = match fields {
            Ok(f) => f,
            Err(r) => return r,
        };
        let routing = self.routing();
        let Some(s) = routing.target(source, database) else {
            return Response::error(404, format!("no node named {source:?} is configured"));
        };
        let Some(t) = routing.target(target, database) else {
            return Response::error(404, format!("no node named {target:?} is configured"));
        };
        let settings = self.sql.clone();
        match self.off_thread(|| crate::sql::shadow(&settings, &s, &t, sql)) {
            Ok(r) => json_ok(to_value(&r)),
            Err((node, e)) => Response::json(e.status(), &e.to_json(&node)),
        }
    }

    /// `GET` (the value as the body, `application/octet-stream`), `PUT` (the body is the value),
    /// `DELETE` on `/plugins/{name}/kv/{key}`; the key is percent-decoded.
    fn plugin_kv(&self, method: &str, name: &str, key: &str, body: &[u8]) -> Response {
        let Some(kv) = &self.info.plugin_kv else {
            return not_enabled("plugins", "set [plugins] enabled = true");
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
            m => Response::error(405, format!("takes GET, PUT or DELETE, not {m}"))
                .with_header("Allow", "GET, HEAD, PUT, DELETE"),
        }
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
        let m = |p, x| match_route(p, x);
        assert_eq!(
            m("/plugins/{name}/kv/{key}", "/plugins/p/kv/k"),
            Some(vec!["p", "k"])
        );
        assert_eq!(
            m("/plugins/{name}/kv/{key}", "/plugins/p/kv/a/b"),
            Some(vec!["p", "a/b"])
        );
        assert_eq!(m("/plugins/{name}/kv/{key}", "/plugins/p/kv/"), None);
        assert_eq!(m("/plugins/{name}/kv/{key}", "/plugins//kv/k"), None);
        assert_eq!(m("/plugins/{name}/kv/{key}", "/plugins/p/xx/k"), None);
        assert_eq!(
            m("/nodes/{name}/enable", "/nodes/pg1/enable"),
            Some(vec!["pg1"])
        );
        assert_eq!(m("/nodes/{name}/enable", "/nodes/pg1/enable/"), None);
        assert_eq!(m("/health", "/health/"), None);
        assert_eq!(m("/health", "/health"), Some(vec![]));
        assert_eq!(m("/", "/"), Some(vec![]));
        assert_eq!(m("/", "/x"), None);
        assert_eq!(m("/api/edge/{path}", "/api/edge/a/b"), Some(vec!["a/b"]));
        assert_eq!(m("/api/edge", "/api/edge"), Some(vec![]));
    }

    fn post(target: &str, body: &str, token: Option<&str>) -> Request {
        Request {
            method: "POST".into(),
            target: target.into(),
            headers: token
                .map(|t| vec![("authorization".to_string(), format!("Bearer {t}"))])
                .unwrap_or_default(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn sql_on_a_node_that_does_not_answer_is_502() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let info = StaticInfo {
            version: "t".into(),
            config_json: crate::live_config(json!({
                "nodes": [ { "name": "dead", "host": "127.0.0.1", "port": port } ],
                "databases": { "app": {} },
            })),
            plugin_kv: None,
            shards: 1,
            node_switches: Default::default(),
            topology: None,
            signal: None,
        };
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let mut api =
            Api::new(info, tx, Some("t"), Instant::now()).with_sql(crate::sql::SqlSettings {
                user: Some("u".into()),
                password: None,
                max_rows: 10,
                timeout: std::time::Duration::from_millis(500),
            });
        let now = Instant::now();
        let r = api.handle(&post("/api/sql", r#"{"sql": "select 1"}"#, Some("t")), now);
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["node"], "dead");
        let r = api.handle(
            &post(
                "/api/shadow",
                r#"{"sql": "select 1", "source_node": "dead", "target_node": "dead"}"#,
                Some("t"),
            ),
            now,
        );
        assert_eq!(r.status, 502);
        // Unknown nodes are 404 before anything is tried; a non-object body is 400.
        let r = api.handle(
            &post("/api/sql", r#"{"sql": "select 1", "node": "x"}"#, Some("t")),
            now,
        );
        assert_eq!(r.status, 404);
        let r = api.handle(&post("/api/sql", "[1]", Some("t")), now);
        assert_eq!(r.status, 400);
        // And without the token, 401 whatever the body.
        assert_eq!(api.handle(&post("/api/sql", "{}", None), now).status, 401);
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
