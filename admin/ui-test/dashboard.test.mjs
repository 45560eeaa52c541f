// Drives the admin dashboard in a real browser (Debian's chromium through playwright-core)
// against a running heliosproxy with real PostgreSQL behind it. Started by the Rust test
// engine/tests/dashboard.rs, which sets up the proxy and passes:
//   HELIOS_ADMIN_URL      http://127.0.0.1:PORT
//   HELIOS_ADMIN_TOKEN    the configured admin.token
//   HELIOS_APP2_URL       a psql URL through the proxy for a database served by node pg2
//   HELIOS_SPLIT_URL      a psql URL through the proxy for a database split over node pg and
//                         its streaming standby rep (reads go to rep)
//   HELIOS_SCREENSHOT     where to save the screenshot (under target/)
//   CHROMIUM              the browser binary (default /usr/bin/chromium)
// Exits non-zero, saying why, on any failed check and on any console error of the page.

import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { chromium } from "playwright-core";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const ADMIN = env("HELIOS_ADMIN_URL");
const TOKEN = env("HELIOS_ADMIN_TOKEN");
const APP2 = env("HELIOS_APP2_URL");
const SPLIT = env("HELIOS_SPLIT_URL");
const SHOT = env("HELIOS_SCREENSHOT");
const WAIT = 15000;

let checks = 0;
function ok(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  checks++;
  console.log(`ok ${checks} - ${what}`);
}

/** psql through the proxy: "" on success, else the error line (with its SQLSTATE). */
function throughProxy(url) {
  try {
    execFileSync("psql", [url, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-c", "select 1"],
      { stdio: ["ignore", "pipe", "pipe"], timeout: 20000 });
    return "";
  } catch (e) {
    return String(e.stderr || e.message);
  }
}

/** The value psql prints for `sql` through the proxy. */
function valueThroughProxy(url, sql) {
  return execFileSync("psql", [url, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
    { stdio: ["ignore", "pipe", "pipe"], timeout: 20000 }).toString().trim();
}

/** Polls `f` until it returns true (15 s). */
async function until(f, what) {
  const end = Date.now() + WAIT;
  while (Date.now() < end) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
// Chromium logs every HTTP response of status 400 or more as a console error ("Failed to load
// resource: the server responded with a status of N"), whether or not the page handled it.
// Exactly these are expected, each handled and shown by the page: 401 until the token is given
// (the page then asks for it), 503 from the routes of the edge cache, which is not built (the
// panel says "edge cache not enabled"), and the 400 of the read-only refusal this test provokes.
// Any other console error fails the test: drift detection is on, so /drift answering 503 would.
const NOT_BUILT = ["/api/edge"];
let edge503 = 0;
let phase = "before-token";
function expected(text, url) {
  const m = /^Failed to load resource: the server responded with a status of (\d+)/.exec(text);
  if (!m) return false;
  const status = Number(m[1]), path = new URL(url).pathname;
  return (status === 401 && phase === "before-token") ||
    (status === 503 && NOT_BUILT.some((p) => path === p || path.startsWith(p + "/")) && ++edge503 > 0) ||
    (status === 400 && phase === "bad-write" && path === "/api/sql");
}
const consoleErrors = [];
let tolerated = 0;
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    if (expected(m.text(), m.location().url)) tolerated++;
    else consoleErrors.push(`${m.text()} (${m.location().url}, ${phase})`);
  });
  page.on("pageerror", (e) => consoleErrors.push(`uncaught: ${e.message}`));
  const requested = [];
  page.on("request", (r) => requested.push(r.url()));

  await page.goto(ADMIN + "/", { waitUntil: "load" });
  ok((await page.title()) === "HeliosProxy", "the dashboard loads at /");

  // The token is asked for once, then sent as a bearer header (never in a URL).
  await page.locator("#token-box.shown").waitFor({ timeout: WAIT });
  ok(await page.locator("#token-input").evaluate((e) => e === document.activeElement), "the token field has the focus");
  await page.keyboard.type(TOKEN);
  // Every request of the first refresh (sent before the token) has come back with its 401.
  await page.waitForFunction(() => Number(document.body.dataset.refreshed || 0) >= 1, null, { timeout: WAIT });
  phase = "main";
  await page.keyboard.press("Enter");
  await page.locator("#token-box.shown").waitFor({ state: "hidden", timeout: WAIT });
  await page.waitForFunction(() => Number(document.body.dataset.refreshed || 0) >= 2, null, { timeout: WAIT });
  ok(!requested.some((u) => u.includes(TOKEN)), "the token is in no URL");

  // Traffic: counters, the percentile curve, the pool gauges.
  await page.locator("#traffic-kv div").first().waitFor({ timeout: WAIT });
  const queries = await page.locator("#traffic-kv div", { hasText: "queries" }).first().locator("b").textContent();
  ok(Number(queries.replace(/,/g, "")) > 0, `Traffic shows queries (${queries})`);
  await page.waitForFunction(() => document.getElementById("chart-total").getAttribute("points").split(" ").length > 5,
    null, { timeout: WAIT });
  ok(true, "the latency percentile chart has a curve");
  ok((await page.locator("#pools .gauge").count()) >= 2, "a gauge per pool");

  // Nodes, Topology, Plugins with data; the features not built say so.
  const nodeRows = page.locator("#nodes-body tbody tr");
  await nodeRows.nth(1).waitFor({ timeout: WAIT });
  await nodeRows.nth(2).waitFor({ timeout: WAIT });
  ok((await nodeRows.count()) === 3, "Nodes lists the three nodes");
  ok((await page.locator("#topology-body").textContent()).includes("primary"), "Topology renders");
  await page.locator("#plugins-body tbody tr").first().waitFor({ timeout: WAIT });
  ok((await page.locator("#plugins-body").textContent()).includes("block-drop"), "Plugins lists block-drop");
  // Anomalies: the proxy runs with [anomaly] on and the Rust side sent a tautology.
  await page.locator("#anomalies-body tbody tr").first().waitFor({ timeout: WAIT });
  ok((await page.locator("#anomalies-body").textContent()).includes("tautology"), "Anomalies lists the tautology event");
  // Drift detection is on and the Rust side ended a session whose statements mostly failed:
  // its error_rate_high alert is a row of the same panel.
  await until(async () => (await page.locator("#anomalies-body").textContent()).includes("error_rate_high"),
    "Anomalies lists the drift alert");
  ok((await page.locator("#anomalies-body tbody tr", { hasText: "error_rate_high" }).first().textContent()).includes("drift"),
    "Anomalies lists the drift alert (error_rate_high) as a drift row");
  // The edge cache is not built: /api/edge answers 503 and the panel says so (no spinner).
  for (const [panel, feature] of [["edge", "edge cache"]]) {
    await page.locator(`#${panel}-body .off-note`).waitFor({ timeout: WAIT });
    const t = await page.locator(`#${panel}-body`).textContent();
    ok(t.startsWith(`${feature} not enabled`), `${panel} says "${feature} not enabled"`);
  }
  const edge = await page.evaluate(async (token) => {
    const r = await fetch("/api/edge", { headers: { Authorization: "Bearer " + token } });
    return { status: r.status, body: await r.json() };
  }, TOKEN);
  ok(edge.status === 503 && /edge cache/.test(edge.body.error || JSON.stringify(edge.body)),
    `/api/edge answers 503 naming the feature (${edge.status} ${JSON.stringify(edge.body)})`);
  ok(edge503 > 0, `the Edge panel's requests got the 503 (${edge503} seen)`);
  ok((await page.locator("#edge [data-state]").getAttribute("class")) === "state off",
    "the Edge panel is in its off state (not loading, not an error)");
  for (const panel of ["traffic", "nodes", "topology", "plugins", "anomalies", "edge", "chaos", "shadow", "replay", "sql"]) {
    ok(!(await page.locator(`#${panel} [data-state].error`).count()), `${panel} shows no error`);
  }

  // A refresh updates in place: an unchanged table is the same element afterwards (no flicker).
  const table = await page.locator("#nodes-body table").elementHandle();
  const before = await page.evaluate(() => Number(document.body.dataset.refreshed));
  await page.waitForFunction((n) => Number(document.body.dataset.refreshed) > n, before, { timeout: 12000 });
  ok(await table.evaluate((t) => t.isConnected), "the 5 s refresh keeps unchanged content in place");

  // Disable node pg2 from the Nodes panel: the proxy refuses new server connections for it.
  ok(throughProxy(APP2) === "", "app2 (node pg2) answers through the proxy");
  await page.getByRole("button", { name: "Disable pg2" }).click();
  await page.getByRole("button", { name: "Enable pg2" }).waitFor({ timeout: WAIT });
  ok((await nodeRows.nth(1).textContent()).includes("disabled"), "Nodes shows pg2 disabled");
  const refused = throughProxy(APP2);
  // An ERROR when the client logged in on a shard that already knew the server's parameters
  // (psql prints its SQLSTATE), a FATAL at login otherwise (psql prints no SQLSTATE for a
  // failed connection; engine/tests/admin_v2.rs checks the code, 57P03, with the postgres crate).
  ok(refused.includes("57P03: node pg2 is disabled by the operator") ||
     refused.includes("FATAL:  node pg2 is disabled by the operator"),
     `through the proxy app2 is refused (${refused.trim()})`);
  await page.getByRole("button", { name: "Enable pg2" }).click();
  await page.getByRole("button", { name: "Disable pg2" }).waitFor({ timeout: WAIT });
  ok(throughProxy(APP2) === "", "enabled again, app2 answers through the proxy");

  // Chaos: force the replica unhealthy from the panel; reads through the proxy move to the
  // primary at once, the Nodes panel says so; restore it and reads go back to the replica.
  await until(() => valueThroughProxy(SPLIT, "select pg_is_in_recovery()") === "t", "split reads on the replica");
  ok(true, "split: a read through the proxy runs on the replica");
  await page.getByRole("button", { name: "Force unhealthy rep" }).click();
  await page.getByRole("button", { name: "Restore rep" }).waitFor({ timeout: WAIT });
  ok((await page.locator("#chaos-body").textContent()).includes("forced unhealthy: rep"), "Chaos shows the override");
  ok(valueThroughProxy(SPLIT, "select pg_is_in_recovery()") === "f", "split: with rep forced down, the read runs on the primary");
  const repRow = page.locator("#nodes-body tbody tr", { hasText: "rep" });
  await until(async () => (await repRow.textContent()).includes("forced unhealthy"), "Nodes shows rep forced unhealthy");
  ok(true, "Nodes shows rep forced unhealthy");
  await page.getByRole("button", { name: "Restore rep" }).click();
  await page.getByRole("button", { name: "Force unhealthy rep" }).waitFor({ timeout: WAIT });
  await until(() => valueThroughProxy(SPLIT, "select pg_is_in_recovery()") === "t", "split reads back on the replica");
  ok(true, "restored: reads run on the replica again");

  // Replay: the journal's extent, and a dry run onto pg counts the journaled writes.
  await until(async () => (await page.locator("#replay-body").textContent()).includes("journaled"), "Replay shows the journal");
  const journaled = Number((await page.locator("#replay-body .kv div", { hasText: "journaled" }).locator("b").textContent()).replace(/,/g, ""));
  ok(journaled >= 1, `Replay: ${journaled} write(s) journaled`);
  await page.selectOption("#replay-node", "pg");
  await page.getByRole("button", { name: "Replay" }).click();
  await page.locator("#replay-result [data-replay-applied]").waitFor({ timeout: WAIT });
  const applied = Number(await page.locator("#replay-result [data-replay-applied]").getAttribute("data-replay-applied"));
  ok(applied === journaled, `Replay: a dry run would apply ${applied} (${await page.locator("#replay-result").textContent()})`);

  // Shadow: the same rows on both nodes (inserted in different orders) match.
  await page.selectOption("#shadow-source", "pg");
  await page.selectOption("#shadow-target", "pg2");
  await page.fill("#shadow-sql", "select id, name from t");
  await page.getByRole("button", { name: "Compare" }).click();
  await page.locator("#shadow-result [data-shadow-match]").waitFor({ timeout: WAIT });
  ok((await page.locator("#shadow-result [data-shadow-match]").getAttribute("data-shadow-match")) === "true",
    "Shadow: pg and pg2 match");

  // SQL, with the keyboard only: focus the statement, type, Tab to Run, Enter.
  await page.focus("#sql-text");
  await page.keyboard.press("Control+A");
  await page.keyboard.type("select count(*) as n from t");
  for (let i = 0; i < 4; i++) {
    await page.keyboard.press("Tab");
    if (await page.evaluate(() => document.activeElement.textContent === "Run")) break;
  }
  ok(await page.evaluate(() => document.activeElement.textContent === "Run"), "Run is reachable with Tab");
  await page.keyboard.press("Enter");
  await page.locator("#sql-result [data-sql-rows]").waitFor({ timeout: WAIT });
  ok((await page.locator("#sql-result [data-sql-rows]").getAttribute("data-sql-rows")) === "1", "SQL: one row");
  ok((await page.locator("#sql-result td").first().textContent()) === "20", "SQL: count(*) is 20");

  // A write in read-only mode is refused and the error is shown, not swallowed.
  await page.fill("#sql-text", "delete from t");
  phase = "bad-write";
  await page.getByRole("button", { name: "Run" }).click();
  await page.locator("#sql-result .bad").waitFor({ timeout: WAIT });
  phase = "main";
  const refusal = await page.locator("#sql-result .bad").textContent();
  ok(refusal.includes("HTTP 400") && refusal.includes("not a read"), `SQL: a write is refused and shown (${refusal})`);

  mkdirSync(dirname(SHOT), { recursive: true });
  await page.screenshot({ path: SHOT, fullPage: true });
  ok(true, `screenshot saved to ${SHOT}`);

  // Narrow window: nothing wider than the window.
  await page.setViewportSize({ width: 400, height: 800 });
  await page.waitForTimeout(100);
  const over = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  ok(over <= 1, `a 400 px window needs no horizontal scrolling (${over} px over)`);
  await page.screenshot({ path: SHOT.replace(/\.png$/, "-narrow.png"), fullPage: true });

  ok(!requested.some((u) => !u.startsWith(ADMIN)), "nothing is loaded from anywhere else");
} catch (e) {
  if (page) {
    try {
      mkdirSync(dirname(SHOT), { recursive: true });
      await page.screenshot({ path: SHOT.replace(/\.png$/, "-failed.png"), fullPage: true });
    } catch {}
  }
  console.error(String(e && e.stack || e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
if (consoleErrors.length) {
  console.error("console errors:\n  " + consoleErrors.join("\n  "));
  process.exitCode = 1;
} else if (!process.exitCode) {
  console.log(`no unexpected console error (${tolerated} expected HTTP-status lines)`);
  console.log(`${checks} passed, 0 failed`);
}
