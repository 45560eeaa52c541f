//! [`ShardPlugins`]: the per-shard instance cache and the hook chains.

use crate::context::{
    Attributes, AuthDecision, AuthInput, Blocked, HookContext, Outcome, PostQueryInput,
    PreQueryDecision, QueryContext, RouteDecision,
};
use crate::imports::{self, HostState, Limiter, ShardRc};
use crate::kv::{Replica, ShardKv};
use crate::runtime::{hook_index, CallSettings, Generation, LoadedPlugin, Shared};
use helios_config::plugins::OnError;
use helios_plugin_abi::{
    annotation_error, annotation_prefix, AuthResult, Hook, PreQueryResult, RouteResult,
    DEFAULT_BLOCK_REASON,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Memory, Store, StoreLimitsBuilder, Trap, TypedFunc};

/// Largest result a plugin may return, bytes.
const MAX_RESULT_BYTES: u32 = 1 << 20;
/// Smallest input buffer allocated in a guest (grown by doubling).
const MIN_INPUT_BUFFER: usize = 4096;
/// Most KV updates applied per `apply_kv_updates` call, so one call stays short.
const KV_DRAIN_BATCH: usize = 65_536;

/// Counters of one plugin on one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginStats {
    /// Plugin name.
    pub name: String,
    /// Hook calls.
    pub calls: u64,
    /// Calls that failed (any reason).
    pub failures: u64,
    /// Failures by timeout.
    pub timeouts: u64,
    /// Failures by the memory limit.
    pub memory_failures: u64,
    /// Failures by fuel exhaustion.
    pub fuel_failures: u64,
    /// Instances created (1 + one per failure that needed a fresh instance).
    pub instantiations: u64,
    /// The last failure.
    pub last_error: Option<String>,
}

enum Failure {
    Timeout,
    Fuel,
    Memory,
    Trap(String),
    Instantiate(String),
    BadResult(String),
}

impl Failure {
    fn describe(&self, s: &CallSettings) -> String {
        match self {
            Failure::Timeout => format!("timed out after {} ms", s.timeout_ms),
            Failure::Fuel => format!("ran out of fuel ({} units)", s.fuel.unwrap_or(0)),
            Failure::Memory => format!("exceeded memory_limit_mb = {}", s.memory_limit_mb),
            Failure::Trap(m) => format!("trapped: {m}"),
            Failure::Instantiate(m) => format!("could not be instantiated: {m}"),
            Failure::BadResult(m) => format!("returned an invalid result: {m}"),
        }
    }
}

struct Live {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    dealloc: TypedFunc<(i32, i32), ()>,
    hooks: [Option<TypedFunc<(i32, i32), i64>>; 4],
    in_ptr: i32,
    in_cap: usize,
}

struct Slot {
    plugin: Arc<LoadedPlugin>,
    live: Option<Live>,
    replica: Rc<RefCell<Replica>>,
    stats: PluginStats,
    /// Time each hook call took on this shard since the last [`ShardPlugins::take_stats`],
    /// microseconds (1 µs – 60 s, 2 significant digits: 20 KiB per plugin per shard, allocated
    /// once).
    times: hdrhistogram::Histogram<u64>,
    last_log: Option<Instant>,
}

fn call_time_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).expect("constant bounds are valid")
}

/// The plugins of one shard: one wasmtime `Store` + `Instance` per plugin, reused across calls
/// (a plugin's linear memory persists between its calls on this shard), re-created from the
/// shared `InstancePre` after a failure or a reload. Not `Send`: create it on the shard thread
/// with [`PluginRuntime::shard`](crate::PluginRuntime::shard).
///
/// Hook methods take no lock. Each starts with one atomic load to notice a reload; the engine
/// should call [`ShardPlugins::has_hook`] first to skip building contexts when no plugin has
/// the hook, and [`ShardPlugins::apply_kv_updates`] regularly (every loop turn or every
/// millisecond) to receive other shards' KV writes.
pub struct ShardPlugins {
    shared: Arc<Shared>,
    shard_id: usize,
    gen: Arc<Generation>,
    slots: Vec<Slot>,
    by_hook: [Vec<usize>; 4],
    kv: ShardKv,
    buf: Vec<u8>,
    /// The `annotate` results of the last `pre_query` chain, prefixed
    /// (`plugin.<name>.<key>`); see [`ShardPlugins::take_annotations`].
    annotations: Attributes,
}

impl ShardPlugins {
    pub(crate) fn new(shared: Arc<Shared>, shard_id: usize) -> ShardPlugins {
        let gen = shared.current();
        let kv = shared.kv.subscribe(gen.kv_limits);
        let mut s = ShardPlugins {
            shared,
            shard_id,
            gen: gen.clone(),
            slots: Vec::new(),
            by_hook: Default::default(),
            kv,
            buf: Vec::with_capacity(4096),
            annotations: Attributes::new(),
        };
        s.install(gen);
        s
    }

    /// The shard id given at creation.
    pub fn shard_id(&self) -> usize {
        self.shard_id
    }

    /// Measured: under 1 ns (one atomic load and a length check).
    /// Does any plugin implement `hook`? When false the hook method would return the default
    /// at once; skip building its context.
    pub fn has_hook(&mut self, hook: Hook) -> bool {
        self.refresh();
        !self.by_hook[hook_index(hook)].is_empty()
    }

    /// Picks up a reload now (hook calls also do it by themselves); true if the plugin set or
    /// settings changed.
    pub fn reload(&mut self) -> bool {
        self.refresh()
    }

    /// Applies the KV writes other shards and the admin API made (at most 65 536 per call);
    /// returns how many were applied.
    pub fn apply_kv_updates(&mut self) -> usize {
        self.kv.drain(KV_DRAIN_BATCH)
    }

    /// Per-plugin counters of this shard.
    pub fn stats(&self) -> Vec<PluginStats> {
        self.slots.iter().map(|s| s.stats.clone()).collect()
    }

    /// Per-plugin counters of this shard and the hook call times recorded since the previous
    /// call (which are then reset): what the shard's statistics snapshot carries.
    pub fn take_stats(&mut self) -> Vec<(PluginStats, hdrhistogram::Histogram<u64>)> {
        self.slots
            .iter_mut()
            .map(|s| {
                let t = s.times.clone();
                s.times.reset();
                (s.stats.clone(), t)
            })
            .collect()
    }

    /// Runs the `pre_query` chain in plugin order. A block stops the chain; a rewrite is seen by
    /// the later plugins (their `query` is the rewritten text; `normalized` and `tables` still
    /// describe the original). An `annotate` result continues the chain and adds its attributes,
    /// as `plugin.<name>.<key>`, to the later plugins' `hook_context.attributes`; the engine
    /// takes them with [`ShardPlugins::take_annotations`] for the execution's `route` and
    /// `post_query`. A failing plugin blocks (`fail_closed`, the default) or is skipped
    /// (`fail_open`).
    ///
    /// Measured cost (`benches/hook_call.rs`, release build, one `block-drop` plugin, 100-byte
    /// query, result `Continue`, on the 2-core development machine with other builds running,
    /// load average ≈ 4.5): **median 1.70 µs per call** (criterion; mean 1.96 µs), 1.66–1.68 µs
    /// median over 20 000 single timed calls. The guest's JSON decoding of the ~430-byte input is
    /// most of it; host encoding is ≈ 0.3 µs.
    pub fn pre_query(&mut self, ctx: &QueryContext<'_>) -> PreQueryDecision {
        const H: Hook = Hook::PreQuery;
        self.refresh();
        self.annotations.clear();
        if self.by_hook[hook_index(H)].is_empty() {
            return PreQueryDecision::Continue;
        }
        encode(&mut self.buf, ctx);
        let mut rewritten: Option<String> = None;
        // The session's attributes plus the annotations so far, once a plugin annotated.
        let mut merged: Option<Attributes> = None;
        for k in 0..self.by_hook[hook_index(H)].len() {
            let i = self.by_hook[hook_index(H)][k];
            let slot = &mut self.slots[i];
            match invoke::<PreQueryResult>(&self.shared, &self.gen, slot, H, &self.buf) {
                Ok(None | Some(PreQueryResult::Continue)) => {}
                Ok(Some(PreQueryResult::Block { reason })) => {
                    return PreQueryDecision::Block(blocked(&slot.plugin, reason));
                }
                Ok(Some(PreQueryResult::Rewrite { sql })) => {
                    encode_with(&mut self.buf, ctx, Some(&sql), merged.as_ref());
                    rewritten = Some(sql);
                }
                Ok(Some(PreQueryResult::Annotate { attributes })) => {
                    if let Some(e) = annotation_error(&attributes) {
                        if let Some(b) = self.failed(i, H, Failure::BadResult(e)) {
                            return PreQueryDecision::Block(b);
                        }
                        continue;
                    }
                    let prefix = annotation_prefix(&slot.plugin.name);
                    let m = merged.get_or_insert_with(|| ctx.hook_context.attributes.clone());
                    for (key, v) in attributes {
                        let key = format!("{prefix}{key}");
                        m.insert(key.clone(), v.clone());
                        self.annotations.insert(key, v);
                    }
                    encode_with(&mut self.buf, ctx, rewritten.as_deref(), merged.as_ref());
                }
                Err(f) => {
                    if let Some(b) = self.failed(i, H, f) {
                        return PreQueryDecision::Block(b);
                    }
                }
            }
        }
        match rewritten {
            Some(sql) => PreQueryDecision::Rewrite { sql },
            None => PreQueryDecision::Continue,
        }
    }

    /// The attributes the last [`ShardPlugins::pre_query`] chain's `annotate` results added
    /// (`plugin.<name>.<key>` → value; empty when none did, also after a block). The engine
    /// adds them to the `hook_context.attributes` of that execution's `route` and `post_query`.
    pub fn take_annotations(&mut self) -> Attributes {
        std::mem::take(&mut self.annotations)
    }

    /// Measured: median 1.42 µs per call (criterion, `route` plugin answering `default`,
    /// 100-byte query, same conditions as [`ShardPlugins::pre_query`]).
    /// Runs the `route` chain: the first plugin whose result is not `default` decides. A `node`
    /// target that is not a configured node name refuses the query with a clear message.
    pub fn route(&mut self, ctx: &QueryContext<'_>) -> RouteDecision {
        const H: Hook = Hook::Route;
        self.refresh();
        if self.by_hook[hook_index(H)].is_empty() {
            return RouteDecision::Default;
        }
        encode(&mut self.buf, ctx);
        for k in 0..self.by_hook[hook_index(H)].len() {
            let i = self.by_hook[hook_index(H)][k];
            let slot = &mut self.slots[i];
            match invoke::<RouteResult>(&self.shared, &self.gen, slot, H, &self.buf) {
                Ok(None | Some(RouteResult::Default)) => {}
                Ok(Some(RouteResult::Primary)) => return RouteDecision::Primary,
                Ok(Some(RouteResult::Replica)) => return RouteDecision::Replica,
                Ok(Some(RouteResult::Node { target })) => {
                    if self.gen.nodes.contains(&target) {
                        return RouteDecision::Node(target);
                    }
                    let mut known: Vec<&str> = self.gen.nodes.iter().map(String::as_str).collect();
                    known.sort_unstable();
                    return RouteDecision::Block(Blocked {
                        plugin: slot.plugin.name.clone(),
                        reason: format!(
                            "plugin '{}' routed the query to node '{target}', which is not a configured node (configured: {})",
                            slot.plugin.name,
                            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                        ),
                    });
                }
                Ok(Some(RouteResult::Block { reason })) => {
                    return RouteDecision::Block(blocked(&slot.plugin, reason))
                }
                Err(f) => {
                    if let Some(b) = self.failed(i, H, f) {
                        return RouteDecision::Block(b);
                    }
                }
            }
        }
        RouteDecision::Default
    }

    /// Measured: median 3.3–6.5 µs per call for `tenant-budget` (two KV reads and one
    /// replicated KV write per call, plus `apply_kv_updates`), varying with machine load.
    /// Runs every `post_query` plugin (results are ignored; failures are counted and logged).
    pub fn post_query(&mut self, ctx: &QueryContext<'_>, outcome: &Outcome<'_>) {
        const H: Hook = Hook::PostQuery;
        self.refresh();
        if self.by_hook[hook_index(H)].is_empty() {
            return;
        }
        encode(
            &mut self.buf,
            &PostQueryInput {
                query_context: ctx,
                outcome,
                unix_time_us: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64),
            },
        );
        for k in 0..self.by_hook[hook_index(H)].len() {
            let i = self.by_hook[hook_index(H)][k];
            let slot = &mut self.slots[i];
            if let Err(f) =
                invoke::<serde::de::IgnoredAny>(&self.shared, &self.gen, slot, H, &self.buf)
            {
                let _ = self.failed(i, H, f);
            }
        }
    }

    /// Runs the `authenticate` chain: the first `allow` or `deny` decides; all `defer` →
    /// [`AuthDecision::Defer`]. A failing plugin denies (`fail_closed`, the default) or defers.
    pub fn authenticate(&mut self, hc: &HookContext<'_>) -> AuthDecision {
        const H: Hook = Hook::Authenticate;
        self.refresh();
        if self.by_hook[hook_index(H)].is_empty() {
            return AuthDecision::Defer;
        }
        encode(&mut self.buf, &AuthInput { hook_context: hc });
        for k in 0..self.by_hook[hook_index(H)].len() {
            let i = self.by_hook[hook_index(H)][k];
            let slot = &mut self.slots[i];
            match invoke::<AuthResult>(&self.shared, &self.gen, slot, H, &self.buf) {
                Ok(None | Some(AuthResult::Defer)) => {}
                Ok(Some(AuthResult::Allow { identity })) => {
                    return AuthDecision::Allow {
                        identity,
                        plugin: slot.plugin.name.clone(),
                    }
                }
                Ok(Some(AuthResult::Deny { message })) => {
                    return AuthDecision::Deny {
                        message,
                        plugin: slot.plugin.name.clone(),
                    }
                }
                Err(f) => {
                    if let Some(b) = self.failed(i, H, f) {
                        return AuthDecision::Deny {
                            message: b.reason,
                            plugin: b.plugin,
                        };
                    }
                }
            }
        }
        AuthDecision::Defer
    }

    /// Records a failure; returns the block to answer with when the plugin fails closed.
    fn failed(&mut self, i: usize, hook: Hook, f: Failure) -> Option<Blocked> {
        let settings = self.gen.settings;
        let slot = &mut self.slots[i];
        let what = f.describe(&settings);
        slot.stats.failures += 1;
        match f {
            Failure::Timeout => slot.stats.timeouts += 1,
            Failure::Memory => slot.stats.memory_failures += 1,
            Failure::Fuel => slot.stats.fuel_failures += 1,
            _ => {}
        }
        let policy = slot.plugin.on_error[hook_index(hook)];
        // One line per plugin per second at most: a broken plugin must not flood the log.
        if slot
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            slot.last_log = Some(Instant::now());
            log::warn!(
                "plugin '{}' {hook} on shard {} {what} (on_error = {}; {} failures so far)",
                slot.plugin.name,
                self.shard_id,
                if policy == OnError::FailOpen {
                    "fail_open"
                } else {
                    "fail_closed"
                },
                slot.stats.failures
            );
        }
        slot.stats.last_error = Some(what.clone());
        match policy {
            OnError::FailOpen => None,
            OnError::FailClosed => Some(Blocked {
                plugin: slot.plugin.name.clone(),
                reason: format!(
                    "plugin '{}' {what}; refused (on_error = fail_closed)",
                    slot.plugin.name
                ),
            }),
        }
    }

    fn refresh(&mut self) -> bool {
        if self.shared.gen_id.load(Ordering::Acquire) == self.gen.id {
            return false;
        }
        let gen = self.shared.current();
        self.install(gen);
        true
    }

    fn install(&mut self, gen: Arc<Generation>) {
        let mut old = std::mem::take(&mut self.slots);
        let mut slots = Vec::with_capacity(gen.plugins.len());
        for p in &gen.plugins {
            let slot = match old.iter().position(|s| Arc::ptr_eq(&s.plugin, p)) {
                Some(pos) => {
                    let mut s = old.swap_remove(pos);
                    if let Some(live) = &mut s.live {
                        live.store.data_mut().limiter.limits = store_limits(&gen.settings);
                    }
                    s
                }
                None => Slot {
                    plugin: p.clone(),
                    live: None,
                    replica: self.kv.replica(&p.name),
                    stats: PluginStats {
                        name: p.name.to_string(),
                        ..PluginStats::default()
                    },
                    times: call_time_histogram(),
                    last_log: None,
                },
            };
            slots.push(slot);
        }
        let mut by_hook: [Vec<usize>; 4] = Default::default();
        for (i, s) in slots.iter().enumerate() {
            for h in Hook::ALL {
                if s.plugin.hooks[hook_index(h)] {
                    by_hook[hook_index(h)].push(i);
                }
            }
        }
        self.kv.set_limits(gen.kv_limits);
        self.slots = slots;
        self.by_hook = by_hook;
        self.gen = gen;
        // Instantiate now rather than on the first query.
        for i in 0..self.slots.len() {
            if self.slots[i].live.is_none() {
                match instantiate(&self.shared, &self.gen, &mut self.slots[i]) {
                    Ok(live) => self.slots[i].live = Some(live),
                    Err(f) => {
                        let what = f.describe(&self.gen.settings);
                        log::warn!(
                            "plugin '{}' on shard {} {what}",
                            self.slots[i].plugin.name,
                            self.shard_id
                        );
                    }
                }
            }
        }
    }
}

fn encode<T: Serialize>(buf: &mut Vec<u8>, value: &T) {
    buf.clear();
    // Serialising plain data into a Vec cannot fail.
    serde_json::to_writer(&mut *buf, value).expect("context serialises");
}

/// `ctx` with its query replaced by `sql` and its attributes by `attributes`, where given.
fn encode_with(
    buf: &mut Vec<u8>,
    ctx: &QueryContext<'_>,
    sql: Option<&str>,
    attributes: Option<&Attributes>,
) {
    let hc = HookContext {
        attributes: attributes.unwrap_or(ctx.hook_context.attributes),
        ..*ctx.hook_context
    };
    encode(
        buf,
        &QueryContext {
            query: sql.unwrap_or(ctx.query),
            hook_context: &hc,
            ..*ctx
        },
    );
}

fn blocked(plugin: &LoadedPlugin, reason: String) -> Blocked {
    let reason = if reason.trim().is_empty() {
        DEFAULT_BLOCK_REASON.to_owned()
    } else {
        reason
    };
    Blocked {
        plugin: plugin.name.clone(),
        reason,
    }
}

fn store_limits(s: &CallSettings) -> wasmtime::StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(s.memory_limit_bytes)
        .trap_on_grow_failure(false)
        .build()
}

fn arm(store: &mut Store<HostState>, s: &CallSettings) {
    store.set_epoch_deadline(s.timeout_ticks);
    if let Some(fuel) = s.fuel {
        // Only fails when the engine was built without fuel; reload keeps fuel off then.
        let _ = store.set_fuel(fuel);
    }
    store.data_mut().limiter.memory_refused = false;
}

fn classify(err: wasmtime::Error, store: &Store<HostState>) -> Failure {
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout,
        Some(Trap::OutOfFuel) => Failure::Fuel,
        _ if store.data().limiter.memory_refused => Failure::Memory,
        Some(t) => Failure::Trap(t.to_string()),
        None => Failure::Trap(err.root_cause().to_string()),
    }
}

fn instantiate(shared: &Shared, gen: &Generation, slot: &mut Slot) -> Result<Live, Failure> {
    slot.stats.instantiations += 1;
    let state = HostState {
        kv: ShardRc(slot.replica.clone()),
        limiter: Limiter {
            limits: store_limits(&gen.settings),
            memory_refused: false,
        },
        memory: None,
        wasi: imports::wasi_ctx(),
    };
    let mut store = Store::new(&shared.engine, state);
    store.limiter(|s| &mut s.limiter as &mut dyn wasmtime::ResourceLimiter);
    arm(&mut store, &gen.settings);
    let instance = match slot.plugin.pre.instantiate(&mut store) {
        Ok(i) => i,
        Err(e) => {
            return Err(match classify(e, &store) {
                Failure::Trap(m) => Failure::Instantiate(m),
                other => other,
            })
        }
    };
    let bad = |m: String| Failure::Instantiate(m);
    let memory = instance
        .get_memory(&mut store, "memory")
        .ok_or_else(|| bad("no memory export".into()))?;
    store.data_mut().memory = Some(memory);
    // A WASI reactor (e.g. C built with wasi-libc) must run its initialiser before any other
    // export; under the same limits as a hook call. Rust cdylibs for wasm32-wasip1 have none.
    if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
        arm(&mut store, &gen.settings);
        init.call(&mut store, ())
            .map_err(|e| match classify(e, &store) {
                Failure::Trap(m) => Failure::Instantiate(format!("_initialize: {m}")),
                other => other,
            })?;
    }
    let alloc = instance
        .get_typed_func(&mut store, "alloc")
        .map_err(|e| bad(format!("{e:#}")))?;
    let dealloc = instance
        .get_typed_func(&mut store, "dealloc")
        .map_err(|e| bad(format!("{e:#}")))?;
    let mut hooks: [Option<TypedFunc<(i32, i32), i64>>; 4] = Default::default();
    for h in Hook::ALL {
        if slot.plugin.hooks[hook_index(h)] {
            hooks[hook_index(h)] = Some(
                instance
                    .get_typed_func(&mut store, h.export_name())
                    .map_err(|e| bad(format!("{e:#}")))?,
            );
        }
    }
    Ok(Live {
        store,
        memory,
        alloc,
        dealloc,
        hooks,
        in_ptr: 0,
        in_cap: 0,
    })
}

/// One hook call: place `input` in guest memory (in a buffer reused across calls), call, decode
/// the result from guest memory. Any trap drops the instance; the next call re-instantiates.
fn invoke<R: DeserializeOwned>(
    shared: &Shared,
    gen: &Generation,
    slot: &mut Slot,
    hook: Hook,
    input: &[u8],
) -> Result<Option<R>, Failure> {
    slot.stats.calls += 1;
    if slot.live.is_none() {
        slot.live = Some(instantiate(shared, gen, slot)?);
    }
    let live = slot.live.as_mut().expect("instantiated above");
    // Two clock reads per call (~40 ns) against a call of ~1.7 µs.
    let started = Instant::now();
    let result = call(live, hook, input, &gen.settings);
    slot.times
        .saturating_record(started.elapsed().as_micros() as u64);
    if matches!(
        result,
        Err(Failure::Timeout | Failure::Fuel | Failure::Memory | Failure::Trap(_))
    ) {
        // The guest stopped at an arbitrary instruction: its heap may be inconsistent.
        slot.live = None;
    }
    result
}

fn call<R: DeserializeOwned>(
    live: &mut Live,
    hook: Hook,
    input: &[u8],
    s: &CallSettings,
) -> Result<Option<R>, Failure> {
    let Some(func) = live.hooks[hook_index(hook)].clone() else {
        return Ok(None);
    };
    arm(&mut live.store, s);
    if input.len() > live.in_cap {
        let cap = input.len().next_power_of_two().max(MIN_INPUT_BUFFER);
        let cap_i32 =
            i32::try_from(cap).map_err(|_| Failure::BadResult("input too large".into()))?;
        if live.in_cap > 0 {
            let old = (live.in_ptr, live.in_cap as i32);
            live.dealloc
                .call(&mut live.store, old)
                .map_err(|e| classify(e, &live.store))?;
            live.in_cap = 0;
        }
        let ptr = live
            .alloc
            .call(&mut live.store, cap_i32)
            .map_err(|e| classify(e, &live.store))?;
        if ptr == 0 {
            return Err(Failure::Memory);
        }
        live.in_ptr = ptr;
        live.in_cap = cap;
    }
    let start = live.in_ptr as u32 as usize;
    let dst = live
        .memory
        .data_mut(&mut live.store)
        .get_mut(start..start + input.len())
        .ok_or_else(|| Failure::BadResult("alloc returned a region outside memory".into()))?;
    dst.copy_from_slice(input);
    let packed = func
        .call(&mut live.store, (live.in_ptr, input.len() as i32))
        .map_err(|e| classify(e, &live.store))?;
    let (out_ptr, out_len) = ((packed as u64 >> 32) as u32, packed as u64 as u32);
    if out_len == 0 {
        return Ok(None);
    }
    if out_len > MAX_RESULT_BYTES {
        return Err(Failure::BadResult(format!(
            "{out_len} bytes is over the {MAX_RESULT_BYTES}-byte limit"
        )));
    }
    let (start, end) = (out_ptr as usize, out_ptr as usize + out_len as usize);
    let bytes = live
        .memory
        .data(&live.store)
        .get(start..end)
        .ok_or_else(|| Failure::BadResult("result region is outside memory".into()))?;
    serde_json::from_slice(bytes)
        .map(Some)
        .map_err(|e| Failure::BadResult(format!("not a {hook} result: {e}")))
}
