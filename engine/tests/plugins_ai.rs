//! The first-party plugins cost-governor, ai-classifier, token-budget and llm-guardrail through
//! the proxy against real PostgreSQL, in the simple and the extended protocol (a statement
//! prepared once and executed repeatedly counts at every execution), configured through their
//! `config` tables and KV seeded through the admin KV routes, as an operator would; then the
//! chain ai-classifier → token-budget → llm-guardrail on one statement stream from an
//! `application_name=claude-agent` client, against a human client's identical statements.
//!
//! The guest plugins come from `scripts/build-plugins.sh` (`target/plugins/<name>.wasm`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use helios_testkit::proxy::Proxy;
use helios_testkit::{PgCluster, SUPERUSER};
use postgres::{Client, NoTls};

const T: Duration = Duration::from_secs(15);

/// One admin request; (status, body).
fn request(port: u16, method: &str, target: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, String::from_utf8_lossy(&raw[at + 4..]).into_owned())
}

/// `PUT /plugins/{plugin}/kv/{key}` (the key percent-encoded), asserting 200.
fn kv_put(proxy: &Proxy, plugin: &str, key: &str, value: &str) {
    let (st, body) = request(
        proxy.admin_port(),
        "PUT",
        &format!("/plugins/{plugin}/kv/{}", encode(key)),
        value.as_bytes(),
    );
    assert_eq!(st, 200, "PUT {plugin}/{key}: {body}");
}

fn kv_get(proxy: &Proxy, plugin: &str, key: &str) -> Option<String> {
    let (st, body) = request(
        proxy.admin_port(),
        "GET",
        &format!("/plugins/{plugin}/kv/{}", encode(key)),
        b"",
    );
    (st == 200).then_some(body)
}

fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A proxy for `db` (alias `app`, transaction pooling) with these `[[plugins.plugin]]` entries
/// and `[plugins]` keys.
fn proxy_with(pg: &PgCluster, db: &str, extra: &str, entries: &str) -> Proxy {
    let cfg = config(pg, TRUST, "", &db_section("app", db, "transaction", 4, ""))
        + &plugins_section(&format!("timeout_ms = 5000\n{extra}"), entries);
    let proxy = start_proxy(&cfg, None);
    poll(T, "the proxy to accept connections", || {
        TcpStream::connect(("127.0.0.1", proxy.port())).ok()
    });
    proxy
}

/// A client through the proxy as `user` with `application_name`.
fn client(proxy: &Proxy, user: &str, app: &str) -> Client {
    let url = format!(
        "host=127.0.0.1 port={} user={user} dbname=app application_name={app}",
        proxy.port()
    );
    Client::connect(&url, NoTls).unwrap_or_else(|e| panic!("connect as {user}/{app}: {e}"))
}

/// The plugin's refusal: SQLSTATE 42000 and its message.
fn refusal(e: &postgres::Error) -> String {
    let d = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not an ErrorResponse: {e}"));
    assert_eq!(d.code().code(), "42000", "{}", d.message());
    d.message().to_string()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn cost_governor_charges_rows_and_blocks_over_budget_in_both_protocols() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "ai_cost");
    pg.psql(
        &db,
        "create table t (id int); insert into t select generate_series(1, 1000)",
    )
    .unwrap();
    // beta = 0: the cost is exactly rows / 1000, so the test does not depend on timing.
    let proxy = proxy_with(
        &pg,
        &db,
        "",
        &plugin_entry("cost-governor", "config = { alpha = 0.001, beta = 0.0 }"),
    );
    assert_eq!(
        kv_get(&proxy, "cost-governor", "alpha").as_deref(),
        Some("0.001")
    );
    // The operator seeds day budgets of 0.5 (500 rows) for two tenants; with no
    // authenticate plugin the tenant is the user name.
    kv_put(
        &proxy,
        "cost-governor",
        "tenant:simple_t:budget",
        r#"{"day": 0.5}"#,
    );
    kv_put(
        &proxy,
        "cost-governor",
        "tenant:ext_t:budget",
        r#"{"day": 0.5}"#,
    );
    // A tenant without a budget is not governed.
    let mut free = client(&proxy, "free_t", "psql");
    for _ in 0..8 {
        free.simple_query("select * from t limit 100").unwrap();
    }
    assert_eq!(kv_get(&proxy, "cost-governor", "tenant:free_t:usage"), None);

    // Simple protocol: five queries of 100 rows spend the budget, the sixth is refused.
    let mut c = client(&proxy, "simple_t", "psql");
    for i in 0..5 {
        c.simple_query("select * from t limit 100")
            .unwrap_or_else(|e| panic!("query {i}: {e}"));
    }
    let msg = refusal(&c.simple_query("select 1").unwrap_err());
    assert!(
        msg.starts_with("cost-governor: tenant simple_t exhausted its day budget (0.500000 of 0.5"),
        "{msg}"
    );
    let secs: u64 = msg
        .rsplit_once("retry in ")
        .and_then(|(_, r)| r.strip_suffix(" s"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry time in {msg}"));
    assert!((1..=86_400).contains(&secs), "{msg}");
    // The usage the operator reads back is the rows CommandComplete reported.
    let usage = poll(T, "usage replicated", || {
        kv_get(&proxy, "cost-governor", "tenant:simple_t:usage")
            .filter(|u| (json(u)["day"]["cost"].as_f64().unwrap() - 0.5).abs() < 1e-9)
    });
    let u = json(&usage);
    assert!(u["hour"]["cost"].as_f64().unwrap() <= 0.5 + 1e-9, "{usage}");

    // Extended protocol: one prepared statement, every execution is charged.
    let mut e = client(&proxy, "ext_t", "psql");
    let st = e.prepare("select * from t where id <= $1").unwrap();
    for i in 0..5 {
        let rows = e
            .query(&st, &[&100i32])
            .unwrap_or_else(|x| panic!("exec {i}: {x}"));
        assert_eq!(rows.len(), 100);
    }
    let msg = refusal(&e.query(&st, &[&1i32]).unwrap_err());
    assert!(
        msg.contains("tenant ext_t exhausted its day budget"),
        "{msg}"
    );
    // Each later execution is refused too; the other tenant's session is untouched.
    assert!(e.query(&st, &[&1i32]).is_err());
    assert_eq!(
        free.query_one("select count(*) from t", &[])
            .unwrap()
            .get::<_, i64>(0),
        1000
    );
    // The operator raises the budget: executions run again.
    kv_put(
        &proxy,
        "cost-governor",
        "tenant:ext_t:budget",
        r#"{"day": 100}"#,
    );
    poll(T, "the raised budget applies", || {
        e.query(&st, &[&1i32]).ok()
    });
    // A minute budget of 0 refuses at once, with the minute's retry.
    kv_put(
        &proxy,
        "cost-governor",
        "tenant:ext_t:budget",
        r#"{"minute": 0, "day": 100}"#,
    );
    let msg = poll(T, "the minute budget applies", || {
        e.query(&st, &[&1i32]).err().map(|x| refusal(&x))
    });
    assert!(msg.contains("minute budget"), "{msg}");
    // Day over minute: both exhausted, the day is reported.
    kv_put(
        &proxy,
        "cost-governor",
        "tenant:ext_t:budget",
        r#"{"minute": 0, "day": 0}"#,
    );
    let msg = poll(T, "the day budget applies", || {
        e.query(&st, &[&1i32])
            .err()
            .map(|x| refusal(&x))
            .filter(|m| m.contains("day budget"))
    });
    assert!(msg.contains("retry in"), "{msg}");
}

#[test]
fn ai_classifier_tags_later_plugins_and_leaves_no_request_keys() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "ai_cls");
    pg.psql(
        &db,
        "create table t (id int); insert into t values (1), (2)",
    )
    .unwrap();
    // kv_max_keys = 40 per namespace: 50 tagged executions would leave 150 keys if post_query
    // did not delete them, and the namespace would refuse the operator's PUT below.
    let proxy = proxy_with(
        &pg,
        &db,
        "kv_max_keys = 40",
        &(plugin_entry("ai-classifier", "")
            + &plugin_entry(
                "token-budget",
                "config = { default_budget = { day = 1000000 } }",
            )),
    );
    // application_name signal, simple protocol.
    let mut agent = client(&proxy, SUPERUSER, "claude-agent");
    for _ in 0..25 {
        agent.simple_query("select * from t").unwrap();
    }
    // The tags reached token-budget (a later plugin): it metered agent claude-agent, model claude.
    let usage = poll(T, "token-budget saw the tags", || {
        kv_get(&proxy, "token-budget", "usage:claude-agent:claude")
    });
    assert!(
        json(&usage)["day"]["tokens"].as_u64().unwrap() > 0,
        "{usage}"
    );
    // The marker signal and the extended protocol: a human app name, a generated-by comment.
    let mut marked = client(&proxy, SUPERUSER, "reporting");
    let st = marked
        .prepare("/* generated by GPT-4o */ select * from t where id = $1")
        .unwrap();
    for _ in 0..25 {
        marked.query(&st, &[&1i32]).unwrap();
    }
    poll(T, "the marker tagged executions", || {
        kv_get(&proxy, "token-budget", "usage:reporting:gpt-4o")
    });
    // SET helios.ai_traffic = true opts a session in.
    let mut opted = client(&proxy, SUPERUSER, "batch");
    opted.batch_execute("SET helios.ai_traffic = true").unwrap();
    opted.simple_query("select * from t").unwrap();
    poll(T, "the attribute tagged executions", || {
        kv_get(&proxy, "token-budget", "usage:batch:unknown")
    });
    // Untagged traffic is not metered.
    let mut human = client(&proxy, SUPERUSER, "psql");
    human.simple_query("select * from t").unwrap();
    assert_eq!(kv_get(&proxy, "token-budget", "usage:psql:unknown"), None);
    // Every per-request key was deleted at post_query: the namespace has room.
    poll(T, "the request keys to be gone", || {
        let (st, _) = request(
            proxy.admin_port(),
            "PUT",
            "/plugins/ai-classifier/kv/operator-note",
            b"x",
        );
        (st == 200).then_some(())
    });
    // A session attribute alone does not tag: an untagged session's helios.agent_id meters
    // nothing.
    let mut other = client(&proxy, SUPERUSER, "psql2");
    other
        .batch_execute("SET helios.agent_id = 'someone-else'")
        .unwrap();
    other.simple_query("select 1").unwrap();
    assert_eq!(
        kv_get(&proxy, "token-budget", "usage:someone-else:unknown"),
        None
    );
}

#[test]
fn token_budget_blocks_an_agent_model_pair_in_both_protocols() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "ai_tok");
    pg.psql(
        &db,
        "create table t (id int, pad text); insert into t select g, repeat('x', 100) from generate_series(1, 50) g",
    )
    .unwrap();
    let proxy = proxy_with(
        &pg,
        &db,
        "",
        &(plugin_entry("ai-classifier", "")
            + &plugin_entry("token-budget", "config = { bytes_per_token = 4 }")),
    );
    // ~5.5 KB per result ≈ 1,400 tokens: a 3,000-token day budget allows three results.
    kv_put(
        &proxy,
        "token-budget",
        "budget:gpt-runner:gpt",
        r#"{"day": 3000}"#,
    );
    let mut c = client(&proxy, SUPERUSER, "gpt-runner");
    let mut refused = None;
    for i in 0..6 {
        match c.simple_query("select * from t") {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, refusal(&e)));
                break;
            }
        }
    }
    let (at, msg) = refused.expect("the budget never refused");
    assert!((2..=3).contains(&at), "refused at query {at}: {msg}");
    assert!(
        msg.starts_with("token-budget: agent gpt-runner with model gpt exhausted its day budget"),
        "{msg}"
    );
    // A human's identical query passes.
    let mut human = client(&proxy, SUPERUSER, "psql");
    // 50 rows, RowDescription, CommandComplete.
    assert_eq!(human.simple_query("select * from t").unwrap().len(), 52);

    // Extended protocol: a per-minute budget, every execution of one prepared statement counts.
    kv_put(
        &proxy,
        "token-budget",
        "budget:claude-agent:claude",
        r#"{"minute": 3000, "day": 1000000}"#,
    );
    let mut a = client(&proxy, SUPERUSER, "claude-agent");
    let st = a.prepare("select * from t where id <= $1").unwrap();
    let mut n = 0;
    let msg = loop {
        match a.query(&st, &[&50i32]) {
            Ok(rows) => assert_eq!(rows.len(), 50),
            Err(e) => break refusal(&e),
        }
        n += 1;
        // Three fit a minute; a minute that ends during the loop allows three more.
        assert!(
            n < 8,
            "{n} executions of ~1,400 tokens fit a 3,000-token minute"
        );
    };
    assert!(n >= 2, "refused after {n} executions: {msg}");
    assert!(
        msg.contains("minute budget") && msg.contains("retry in"),
        "{msg}"
    );
    let u = json(&kv_get(&proxy, "token-budget", "usage:claude-agent:claude").unwrap());
    assert!(u["day"]["tokens"].as_u64().unwrap() >= 3000, "{u}");
}

#[test]
fn llm_guardrail_refuses_dangerous_sql_from_ai_traffic_only() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "ai_guard");
    pg.psql(
        &db,
        "create table events (id int); insert into events select generate_series(1, 10);\
         create table orders (id int, tenant_id int); insert into orders values (1, 1), (2, 2);\
         create table scratch (id int)",
    )
    .unwrap();
    // Alone, without ai-classifier: its own application_name heuristic.
    let proxy = proxy_with(
        &pg,
        &db,
        "",
        &plugin_entry(
            "llm-guardrail",
            "config = { large_tables = [\"events\"], tenant_scoped_tables = [\"orders\"] }",
        ),
    );
    let mut bot = client(&proxy, SUPERUSER, "claude-bot");
    for (sql, reason) in [
        (
            "DROP TABLE scratch",
            "llm-guardrail: DROP/TRUNCATE forbidden in LLM-tagged traffic",
        ),
        ("truncate scratch", "llm-guardrail: DROP/TRUNCATE forbidden"),
        (
            "DELETE FROM scratch",
            "llm-guardrail: DELETE/UPDATE without WHERE forbidden",
        ),
        (
            "update orders set id = id where_x",
            "llm-guardrail: DELETE/UPDATE without WHERE forbidden",
        ),
        (
            "delete from scratch using (select 1 from events where id = 1 limit 1) s",
            "llm-guardrail: DELETE/UPDATE without WHERE forbidden",
        ),
        (
            "SELECT * FROM events",
            "llm-guardrail: SELECT without LIMIT against large table events",
        ),
        (
            "select * from orders where id = 1 -- and tenant_id = 1",
            "llm-guardrail: missing tenant_id filter on tenant-scoped table orders",
        ),
    ] {
        let msg = refusal(&bot.simple_query(sql).unwrap_err());
        assert!(msg.starts_with(reason), "{sql}: {msg}");
    }
    for ok in [
        "select 'drop table scratch; delete from orders'",
        "/* DROP TABLE scratch */ select * from events limit 5",
        "SELECT * FROM orders WHERE tenant_id = 1",
        "delete from scratch where id = 1",
    ] {
        bot.simple_query(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    // Extended protocol: a refused prepared statement is refused at every execution.
    let st = bot.prepare("select * from orders where id = $1").unwrap();
    for _ in 0..3 {
        let msg = refusal(&bot.query(&st, &[&1i32]).unwrap_err());
        assert!(msg.contains("missing tenant_id filter"), "{msg}");
    }
    let st = bot
        .prepare("select * from orders where tenant_id = $1")
        .unwrap();
    for _ in 0..3 {
        assert_eq!(bot.query(&st, &[&1i32]).unwrap().len(), 1);
    }
    // The operator adds a large table through the admin route.
    kv_put(
        &proxy,
        "llm-guardrail",
        "large_tables",
        r#"["events", "orders"]"#,
    );
    let msg = poll(T, "the new large table applies", || {
        bot.query(&st, &[&1i32]).err().map(|e| refusal(&e))
    });
    assert!(msg.contains("large table orders"), "{msg}");
    // Nothing of it applies to a human client.
    let mut human = client(&proxy, SUPERUSER, "psql");
    human.simple_query("select * from events").unwrap();
    human.simple_query("drop table scratch").unwrap();
}

/// The chain: ai-classifier → token-budget → llm-guardrail, configured in that order.
#[test]
fn chain_classifier_budget_guardrail_on_an_agent_stream_and_a_human_one() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "ai_chain");
    pg.psql(
        &db,
        "create table events (id int); insert into events select generate_series(1, 100);\
         create table orders (id int, tenant_id int); insert into orders values (1, 1), (2, 2);\
         create table scratch (id int)",
    )
    .unwrap();
    let proxy = proxy_with(
        &pg,
        &db,
        "",
        &(plugin_entry("ai-classifier", "")
            + &plugin_entry("token-budget", "")
            + &plugin_entry(
                "llm-guardrail",
                // The guardrail's own heuristic is off (no keywords): only the classifier's
                // tags make it act, which shows they reach it.
                "config = { keywords = [], large_tables = [\"events\"], tenant_scoped_tables = [\"orders\"] }",
            )),
    );
    kv_put(
        &proxy,
        "token-budget",
        "budget:claude-agent:claude",
        r#"{"day": 1000000}"#,
    );

    // One statement stream, run by both clients.
    let stream: &[&str] = &[
        "select * from orders where tenant_id = 1",
        "select id from events order by id limit 10",
        "select * from events",
        "delete from scratch",
        "DROP TABLE scratch",
    ];
    let mut agent = client(&proxy, SUPERUSER, "claude-agent");
    let mut refusals = Vec::new();
    let mut tokens = Vec::new();
    for sql in stream {
        let ran = match agent.simple_query(sql) {
            Ok(_) => true,
            Err(e) => {
                refusals.push((*sql, refusal(&e)));
                false
            }
        };
        if !ran {
            // A refused execution's outcome may carry no response bytes: nothing to meter.
            continue;
        }
        // Budget consumed after each statement that ran (read-your-writes on the shard; the
        // admin copy follows).
        let seen = tokens.last().copied().unwrap_or(0);
        let now = poll(T, "usage replicated", || {
            kv_get(&proxy, "token-budget", "usage:claude-agent:claude")
                .and_then(|u| json(&u)["day"]["tokens"].as_u64())
                .filter(|&t| t > seen)
        });
        tokens.push(now);
    }
    assert_eq!(refusals.len(), 3, "{refusals:?}");
    assert!(refusals[0]
        .1
        .starts_with("llm-guardrail: SELECT without LIMIT against large table events"));
    assert!(refusals[1]
        .1
        .starts_with("llm-guardrail: DELETE/UPDATE without WHERE forbidden"));
    assert_eq!(refusals[2].0, "DROP TABLE scratch");
    assert_eq!(
        refusals[2].1,
        "llm-guardrail: DROP/TRUNCATE forbidden in LLM-tagged traffic"
    );
    // The extended protocol in the same chain: each execution is metered, the DROP refused
    // at each.
    let st = agent
        .prepare("select * from orders where tenant_id = $1")
        .unwrap();
    for _ in 0..3 {
        assert_eq!(agent.query(&st, &[&2i32]).unwrap().len(), 1);
        let seen = *tokens.last().unwrap();
        tokens.push(poll(T, "usage grows per execution", || {
            kv_get(&proxy, "token-budget", "usage:claude-agent:claude")
                .and_then(|u| json(&u)["day"]["tokens"].as_u64())
                .filter(|&t| t > seen)
        }));
    }
    let drop = agent.prepare("drop table scratch").unwrap();
    for _ in 0..2 {
        let msg = refusal(&agent.execute(&drop, &[]).unwrap_err());
        assert!(msg.starts_with("llm-guardrail: DROP/TRUNCATE"), "{msg}");
    }
    // The budget runs out: token-budget (before the guardrail) refuses the agent.
    kv_put(
        &proxy,
        "token-budget",
        "budget:claude-agent:claude",
        r#"{"day": 1}"#,
    );
    let msg = poll(T, "the exhausted budget refuses", || {
        agent
            .simple_query("select * from orders where tenant_id = 1")
            .err()
            .map(|e| refusal(&e))
    });
    assert!(
        msg.starts_with("token-budget: agent claude-agent with model claude"),
        "{msg}"
    );

    // A human's identical statements all pass, and nothing is metered for them.
    let mut human = client(&proxy, SUPERUSER, "psql");
    for sql in stream {
        human
            .simple_query(sql)
            .unwrap_or_else(|e| panic!("human {sql}: {e}"));
    }
    assert_eq!(kv_get(&proxy, "token-budget", "usage:psql:unknown"), None);
    let exists: bool = direct(&pg, &db)
        .query_one("select to_regclass('scratch') is not null", &[])
        .unwrap()
        .get(0);
    assert!(!exists, "the human's DROP ran");
}
