#!/usr/bin/env python3
"""Writes admin/src/openapi.json (served at /openapi.json). Edit here, run `python3 admin/openapi-gen.py`;
the test `openapi_names_every_route` keeps it in step with admin/src/api.rs ROUTES."""
import json
def err(desc): return {"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
def ok(desc, schema=None, ctype="application/json"):
    r={"description": desc}
    r["content"]={ctype: {"schema": schema or {"type":"object"}}}
    return r
common={"401": err("a token is configured and the request lacks it or has a wrong one")}
def op(summary, responses, params=None, body=None, security=True, tags=None):
    o={"summary": summary, "responses": dict(responses)}
    if security: o["responses"].update(common)
    else: o["security"]=[]
    if params: o["parameters"]=params
    if body: o["requestBody"]={"required": True, "content": {"application/json": {"schema": body}}}
    return o
name={"name":"name","in":"path","required":True,"schema":{"type":"string"}}
key={"name":"key","in":"path","required":True,"schema":{"type":"string"},"description":"percent-decoded; may contain '/'"}
pathp={"name":"path","in":"path","required":True,"schema":{"type":"string"}}
limitp={"name":"limit","in":"query","schema":{"type":"integer","minimum":1,"maximum":1000,"default":100}}
na=lambda f: err(f"{f} not enabled (the JSON names the feature)")
paths={
"/": {"get": op("The dashboard (HTML, no token needed to load it)", {"200": ok("the page", {"type":"string"}, "text/html")}, security=False)},
"/ui": {"get": op("The dashboard (same page as /)", {"200": ok("the page", {"type":"string"}, "text/html")}, security=False)},
"/openapi.json": {"get": op("This document", {"200": ok("OpenAPI 3 document")})},
"/health": {"get": op("Liveness", {"200": ok("the admin thread answers", {"$ref":"#/components/schemas/Health"})})},
"/ready": {"get": op("Readiness for a load balancer", {"200": ok("ready"), "503": err("no snapshot yet or no healthy node")})},
"/metrics": {"get": op("Prometheus text exposition 0.0.4", {"200": ok("metrics", {"type":"string"}, "text/plain")})},
"/stats": {"get": op("Counters and latency summaries", {"200": ok("stats")})},
"/histograms": {"get": op("One merged latency distribution", {"200": {"description": "summary (format=json) or HdrHistogram percentile text (format=hgrm)", "content": {"application/json": {"schema": {"$ref":"#/components/schemas/LatencySummary"}}, "text/plain": {"schema": {"type": "string"}}}}, "400": err("unknown parameter or value"), "404": err("unknown database")}, params=[
  {"name":"metric","in":"query","schema":{"type":"string","enum":["query","checkout","server"]}},
  {"name":"db","in":"query","schema":{"type":"string"}},
  {"name":"window","in":"query","schema":{"type":"string","enum":["interval","total"]}},
  {"name":"format","in":"query","schema":{"type":"string","enum":["json","hgrm"]}}])},
"/histograms/reset": {"post": op("Forget recorded latency", {"200": ok("reset")})},
"/pools": {"get": op("Pools merged and by shard", {"200": ok("pools")})},
"/clients": {"get": op("Client connections", {"200": ok("clients")})},
"/servers": {"get": op("Server connections", {"200": ok("servers")})},
"/nodes": {"get": op("Configured nodes: health, switch, pools", {"200": ok("nodes", {"type":"object","required":["nodes"],"properties":{"nodes":{"type":"array","items":{"$ref":"#/components/schemas/Node"}}}})})},
"/nodes/{name}/enable": {"post": op("Let the node take new server connections again", {"200": ok("switched", {"$ref":"#/components/schemas/NodeSwitch"}), "404": err("no such node"), "400": err("malformed name")}, params=[name])},
"/nodes/{name}/disable": {"post": op("No new server connections for this node (checkouts get SQLSTATE 57P03)", {"200": ok("switched", {"$ref":"#/components/schemas/NodeSwitch"}), "404": err("no such node"), "400": err("malformed name")}, params=[name])},
"/topology": {"get": op("The primary, node counts, the last failover and each node's role, health, lag and tags", {"200": ok("topology", {"$ref":"#/components/schemas/Topology"})})},
"/plugins": {"get": op("Loaded plugins with counters merged across shards", {"200": ok("plugins", {"type":"object","properties":{"plugins":{"type":"array","items":{"$ref":"#/components/schemas/Plugin"}}}}), "503": na("plugins")})},
"/plugins/{name}/kv/{key}": {
  "get": op("A plugin KV value", {"200": ok("the value", {"type":"string","format":"binary"}, "application/octet-stream"), "404": err("no such plugin or key"), "400": err("malformed path"), "503": na("plugins")}, params=[name,key]),
  "put": {**op("Set a plugin KV value", {"200": ok("stored"), "413": err("too large"), "507": err("namespace full"), "404": err("no such plugin"), "400": err("malformed path"), "503": na("plugins")}, params=[name,key]), "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type":"string","format":"binary"}}}}},
  "delete": op("Delete a plugin KV value", {"200": ok("deleted"), "404": err("no such plugin"), "400": err("malformed path"), "503": na("plugins")}, params=[name,key])},
"/anomalies": {"get": op("Anomaly events merged across shards, newest first (docs/signal.md)", {"200": ok("events", {"type":"object","required":["count","limit","events","buffer_total"],"properties":{"count":{"type":"integer"},"limit":{"type":"integer"},"events":{"type":"array","items":{"$ref":"#/components/schemas/AnomalyEvent"}},"buffer_total":{"type":"integer","description":"events received since start (the buffer keeps the last 1000)"}}}), "400": err("bad limit parameter"), "503": na("anomaly detection")}, params=[limitp])},
"/anomalies/stream": {"get": op("New anomaly events (event: anomaly) and drift alerts (event: drift) as server-sent events", {"200": ok("an event stream that stays open", {"type":"string"}, "text/event-stream"), "503": na("anomaly detection")})},
"/drift": {"get": op("Drift alerts over the audit summaries, newest first (docs/signal.md)", {"200": ok("alerts", {"type":"object","required":["count","limit","alerts","total"],"properties":{"count":{"type":"integer"},"limit":{"type":"integer"},"alerts":{"type":"array","items":{"$ref":"#/components/schemas/DriftAlert"}},"total":{"type":"integer"}}}), "400": err("bad limit parameter"), "503": na("drift detection")}, params=[limitp])},
"/api/chaos": {"get": op("Chaos overrides in force", {"200": ok("overrides", {"$ref":"#/components/schemas/Chaos"}), "503": na("chaos")}),
  "post": op("Force a node unhealthy, restore it, or reset every override: routing changes on every shard", {"200": ok("the overrides now", {"$ref":"#/components/schemas/Chaos"}), "400": err("malformed body or unknown action"), "404": err("unknown node"), "503": na("chaos")},
    body={"type":"object","required":["action"],"properties":{"action":{"type":"string","enum":["force_unhealthy","restore","reset"]},"target_node":{"type":"string"}}})},
"/api/edge": {"get": op("Edge cache", {"503": na("edge cache")})},
"/api/edge/{path}": {m: op("Edge cache", {"503": na("edge cache")}, params=[pathp]) for m in ["get","post","put","delete"]},
"/api/shadow": {"post": op("Run one read on two nodes and compare the results", {
   "200": ok("comparison", {"$ref":"#/components/schemas/Shadow"}), "400": err("not a read, bad JSON, missing field"), "404": err("unknown node"),
   "422": err("the server failed the statement (timeout, …) or the result has more than admin.sql_max_rows rows"), "502": err("a node cannot be reached or refused the login"), "503": err("admin.sql_user is not set")},
   body={"type":"object","required":["sql","source_node","target_node"],"additionalProperties":False,"properties":{"sql":{"type":"string"},"source_node":{"type":"string"},"target_node":{"type":"string"},"database":{"type":"string"}}})},
"/api/sql": {"post": op("An ad-hoc statement on a node as admin.sql_user (read-only unless read_only is false)", {
   "200": ok("result", {"$ref":"#/components/schemas/SqlResult"}), "400": err("bad JSON, syntax error, a write in read-only mode"), "403": err("admin.token is not configured"), "404": err("unknown node"),
   "422": err("the server failed the statement (timeout, …)"), "502": err("the node cannot be reached or refused the login"), "503": err("admin.sql_user is not set")},
   body={"type":"object","required":["sql"],"additionalProperties":False,"properties":{"sql":{"type":"string"},"node":{"type":"string"},"database":{"type":"string"},"read_only":{"type":"boolean","default":True},"max_rows":{"type":"integer","minimum":1}}})},
"/api/replay": {"get": op("The write journal's extent (entries, gaps, first/last time) and what replay cannot reproduce", {"200": ok("journal", {"$ref":"#/components/schemas/Journal"}), "503": na("replay")}),
  "post": op("Apply the journaled writes of a time window onto a node, in order, stopping at the first error (always requires the token)", {
   "200": ok("applied whole", {"$ref":"#/components/schemas/ReplayReport"}), "422": ok("stopped at an error, a gap or an entry that cannot be replayed; what was applied", {"$ref":"#/components/schemas/ReplayReport"}),
   "400": err("bad JSON, missing node, bad window"), "403": err("admin.token is not configured"), "404": err("unknown node or database"), "502": err("the node cannot be reached or refused the login"), "503": err("[journal] is not enabled, or admin.sql_user is not set")},
   body={"type":"object","required":["node"],"additionalProperties":False,"properties":{"node":{"type":"string"},"from_ms":{"type":"integer","minimum":0},"to_ms":{"type":"integer","minimum":0},"database":{"type":"string"},"dry_run":{"type":"boolean","default":False}}})},
"/config": {"get": op("The running configuration, secrets redacted", {"200": ok("config")})},
"/version": {"get": op("Name, version, shards", {"200": ok("version")})},
"/reload": {"post": op("Reload the configuration (as SIGHUP)", {"202": ok("requested"), "503": err("engine busy or not running")})},
}
for p,ops in paths.items():
    for m,o in ops.items():
        o["responses"].setdefault("405", err("method not allowed (Allow header lists the methods)"))
        o["responses"].setdefault("413", err("request body over admin.max_body_bytes"))
doc={"openapi":"3.0.3",
 "info":{"title":"HeliosProxy admin API","version":"2","description":"One API for the dashboard and for programs. See docs/admin-api.md."},
 "servers":[{"url":"/"}],
 "security":[{"bearer":[]}],
 "paths":paths,
 "components":{
  "securitySchemes":{"bearer":{"type":"http","scheme":"bearer","description":"admin.token; required everywhere once configured (except the dashboard page), and always for /api/sql"}},
  "schemas":{
   "Error":{"type":"object","required":["error"],"properties":{"error":{"type":"string"},"feature":{"type":"string"},"sqlstate":{"type":"string"},"node":{"type":"string"},"detail":{"type":"string"}}},
   "Health":{"type":"object","properties":{"status":{"type":"string"},"uptime_s":{"type":"integer"},"shards":{"type":"integer"},"shards_reporting":{"type":"integer"},"oldest_snapshot_age_ms":{"type":"integer","nullable":True}}},
   "LatencySummary":{"type":"object","properties":{k:{"type":"integer","nullable":True} for k in ["count","min_us","p50_us","p90_us","p99_us","p99_9_us","p99_99_us","max_us"]}},
   "Journal":{"type":"object","required":["enabled","entries","gaps"],"properties":{"enabled":{"type":"boolean"},"path":{"type":"string"},"entries":{"type":"integer"},"gaps":{"type":"integer"},"bytes":{"type":"integer"},"first_ts_ms":{"type":"integer","nullable":True},"last_ts_ms":{"type":"integer","nullable":True},"first_seq":{"type":"integer","nullable":True},"last_seq":{"type":"integer","nullable":True},"caveats":{"type":"array","items":{"type":"string"}}}},
   "ReplayReport":{"type":"object","required":["node","applied","total","skipped_failed","stopped"],"properties":{"node":{"type":"string"},"dry_run":{"type":"boolean"},"total":{"type":"integer"},"applied":{"type":"integer"},"skipped_failed":{"type":"integer"},"first_seq":{"type":"integer","nullable":True},"last_applied_seq":{"type":"integer","nullable":True},
     "stopped":{"type":"object","nullable":True,"properties":{"seq":{"type":"integer"},"sql":{"type":"string"},"sqlstate":{"type":"string","nullable":True},"message":{"type":"string"}}},"open_transactions_rolled_back":{"type":"integer"},"elapsed_ms":{"type":"integer"},"caveats":{"type":"array","items":{"type":"string"}}}},
   "Chaos":{"type":"object","required":["overrides"],"properties":{"overrides":{"type":"array","items":{"type":"string"}}}},
   "Topology":{"type":"object","required":["currentPrimary","healthyNodes","unhealthyNodes","totalNodes","lastFailoverAt"],"properties":{"currentPrimary":{"type":"string","nullable":True},"healthyNodes":{"type":"integer"},"unhealthyNodes":{"type":"integer"},"totalNodes":{"type":"integer"},"lastFailoverAt":{"type":"integer","nullable":True},"failovers":{"type":"integer"},"version":{"type":"integer"},
     "nodes":{"type":"array","items":{"type":"object","properties":{"name":{"type":"string"},"role":{"type":"string"},"configuredRole":{"type":"string"},"healthy":{"type":"boolean"},"probeHealthy":{"type":"boolean"},"forcedDown":{"type":"boolean"},"fenced":{"type":"boolean"},"lagBytes":{"type":"integer","nullable":True},"lagMs":{"type":"integer","nullable":True},"replayLsn":{"type":"string","nullable":True},"weight":{"type":"integer"},"tags":{"type":"object"},"lastError":{"type":"string","nullable":True},"checkedAt":{"type":"integer"}}}}}},
   "NodeSwitch":{"type":"object","required":["node","enabled","changed"],"properties":{"node":{"type":"string"},"enabled":{"type":"boolean"},"changed":{"type":"boolean"}}},
   "Node":{"type":"object","required":["name","host","port","enabled","healthy","pools"],"properties":{"name":{"type":"string"},"host":{"type":"string"},"port":{"type":"integer"},"role":{"type":"string"},"enabled":{"type":"boolean"},"healthy":{"type":"boolean"},"last_error":{"type":"string","nullable":True},"last_checked_at_ms":{"type":"integer","nullable":True},"unhealthy_shards":{"type":"array","items":{"type":"integer"}},"forced_down":{"type":"boolean"},"lag_bytes":{"type":"integer","nullable":True},"lag_ms":{"type":"integer","nullable":True},"tags":{"type":"object"},"pools":{"type":"array","items":{"type":"object"}}}},
   "Plugin":{"type":"object","required":["name","hooks","state","invocations","errors"],"properties":{"name":{"type":"string"},"version":{"type":"string","nullable":True},"hooks":{"type":"array","items":{"type":"string"}},"signer":{"type":"string","nullable":True},"sha256":{"type":"string"},"source":{"type":"string"},"state":{"type":"string","enum":["loaded","active","failing"]},"invocations":{"type":"integer"},"errors":{"type":"integer"},"timeouts":{"type":"integer"},"last_error":{"type":"string","nullable":True},"time_p50_us":{"type":"integer","nullable":True},"time_p99_us":{"type":"integer","nullable":True}}},
   "AnomalyEvent":{"type":"object","required":["at_ms","shard","kind","class","action","database","user","tenant","address","score","fingerprint","detail"],"properties":{"at_ms":{"type":"integer"},"shard":{"type":"integer"},"kind":{"type":"string","enum":["sql_injection","rate_spike","credential_stuffing","novel_query"]},"class":{"type":"string"},"action":{"type":"string","enum":["log","block"]},"database":{"type":"string"},"user":{"type":"string"},"tenant":{"type":"string"},"address":{"type":"string"},"score":{"type":"number"},"fingerprint":{"type":"string","description":"hash of the statement with literals stripped; never the text"},"detail":{"type":"string"}}},
   "DriftAlert":{"type":"object","required":["at_ms","rule","context","user","window_start","window_end","reason","z","value"],"properties":{"at_ms":{"type":"integer"},"rule":{"type":"string","enum":["error_rate_high","error_rate_drift","latency_drift","query_volume_drift"]},"context":{"type":"string"},"user":{"type":"string"},"window_start":{"type":"integer"},"window_end":{"type":"integer"},"reason":{"type":"string"},"z":{"type":"object","additionalProperties":{"type":"number","nullable":True}},"value":{"type":"object","additionalProperties":{"type":"number"}}}},
   "SqlResult":{"type":"object","required":["columns","rows","truncated","node","database","read_only"],"properties":{"columns":{"type":"array","items":{"type":"string"}},"rows":{"type":"array","items":{"type":"array","items":{"type":"string","nullable":True}}},"truncated":{"type":"boolean"},"affected":{"type":"integer","nullable":True},"elapsed_ms":{"type":"integer"},"node":{"type":"string"},"database":{"type":"string"},"read_only":{"type":"boolean"},"row_count":{"type":"integer"},"max_rows":{"type":"integer"}}},
   "ShadowSide":{"type":"object","properties":{"node":{"type":"string"},"database":{"type":"string"},"rows":{"type":"integer"},"hash":{"type":"string"},"elapsed_ms":{"type":"integer"}}},
   "Shadow":{"type":"object","required":["source","target","match","columns_match"],"properties":{"source":{"$ref":"#/components/schemas/ShadowSide"},"target":{"$ref":"#/components/schemas/ShadowSide"},"match":{"type":"boolean"},"columns_match":{"type":"boolean"},"first_difference":{"type":"object","nullable":True}}}
  }}}
import os
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "src", "openapi.json"), "w").write(json.dumps(doc, indent=1)+"\n")
