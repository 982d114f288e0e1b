//! The plugin runtime (wasmtime), layered like wasmtime itself: one
//! [`Runtime`] (Engine + Linker, shared by the node), one [`Plugin`] per
//! consenter component (compiled once, pre-linked as `InstancePre`), one
//! [`Instance`] per chain (its own Store: memory cap, epoch deadline per
//! call). Grants the plugin no WASI capability: any `wasi:*` import traps
//! when called. May touch only wasmtime and the Store's data.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};

use crate::cache::{LoadSource, PluginCache};
use crate::support::Support;

/// Generated host bindings of the `consenter` world.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "consenter",
        path: "../wit",
        with: {
            "fabric:consenter/types.envelope": crate::support::EnvelopeRes,
            "fabric:consenter/types.batch": crate::support::BatchRes,
            "fabric:consenter/types.block": crate::support::BlockRes,
        },
        imports: { default: trappable },
    });
}

use bindings::{Consenter, ConsenterPre};

/// The contract version this host speaks.
pub const WIT_PACKAGE: &str = "fabric:consenter@0.1.0";

/// Interfaces a plugin may import from this host.
const PROVIDED: &[&str] = &[
    "fabric:consenter/types@0.1.0",
    "fabric:consenter/support@0.1.0",
    "fabric:consenter/timers@0.1.0",
    "fabric:consenter/log@0.1.0",
];

/// Resource limits of one plugin instance, set per plugin type (see
/// [`Limits::with_overrides`]). Where each is enforced:
/// - `memory_bytes`, `table_elements`, `instances`, `tables`, `memories`:
///   the Store's limiter (a grow past the cap traps);
/// - `stack_bytes`: the engine (`max_wasm_stack`; a plugin with its own
///   value gets its own engine);
/// - `call_deadline`: epoch interruption, re-armed before every call;
/// - `max_list_len`, `max_call_bytes`, `max_handles`, `max_held_bytes`:
///   the import functions in `support.rs`, before the host does any work
///   with the argument;
/// - `max_metadata_bytes`, `disk_bytes_per_minute`, `disk_bytes_total`: the
///   chain's support when a block is written (they are copied into its
///   [`crate::support::SupportLimits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Cap on the instance's linear memory, in bytes.
    pub memory_bytes: usize,
    /// Cap on table elements.
    pub table_elements: usize,
    /// Cap on core and component instances in the Store.
    pub instances: usize,
    /// Cap on tables in the Store.
    pub tables: usize,
    /// Cap on linear memories in the Store.
    pub memories: usize,
    /// Wall-clock deadline of one call into the plugin. `Duration::MAX`
    /// means none (the engine is then built without epoch interruption).
    pub call_deadline: Duration,
    /// Wasm stack size, in bytes.
    pub stack_bytes: usize,
    /// Most handles (envelopes, batches) in one list a plugin passes to
    /// the host (`ordered-many`, the `batch` constructor).
    pub max_list_len: usize,
    /// Most bytes in one `list<u8>` or `string` a plugin passes to the host
    /// (`write-block` metadata, `sign`, `log`, `fail`).
    pub max_call_bytes: usize,
    /// Most envelope, batch and block handles a plugin instance holds at
    /// once (host memory the wasm memory cap does not cover).
    pub max_handles: usize,
    /// Most bytes of envelopes, batches and blocks a plugin instance makes
    /// the host hold at once; None: sized from the channel's batch
    /// settings ([`crate::support::default_held_budget`]).
    pub max_held_bytes: Option<usize>,
    /// Largest consenter metadata of one block.
    pub max_metadata_bytes: usize,
    /// Ledger bytes a chain may write per minute.
    pub disk_bytes_per_minute: u64,
    /// Ledger bytes a chain may hold in all (`u64::MAX`: no cap).
    pub disk_bytes_total: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            table_elements: 20_000,
            instances: 32,
            tables: 32,
            memories: 8,
            call_deadline: Duration::from_secs(1),
            stack_bytes: 512 << 10,
            max_list_len: 65_536,
            max_call_bytes: 4 << 20,
            max_handles: 1 << 20,
            max_held_bytes: None,
            max_metadata_bytes: crate::support::SupportLimits::default().max_metadata_bytes,
            disk_bytes_per_minute: crate::support::SupportLimits::default().disk_bytes_per_minute,
            disk_bytes_total: u64::MAX,
        }
    }
}

/// A `--plugin-limits` specification that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    #[error("plugin limits {spec:?}: expected KEY=VALUE, got {item:?}")]
    Syntax { spec: String, item: String },
    #[error("plugin limits {spec:?}: unknown key {key:?} (known: {known})")]
    UnknownKey { spec: String, key: String, known: &'static str },
    #[error("plugin limits {spec:?}: {key}={value:?} is not a positive whole number")]
    Value { spec: String, key: String, value: String },
}

const LIMIT_KEYS: &str = "memory-mib, table-elements, instances, tables, memories, call-deadline-ms, stack-kib, \
                          max-list-len, max-call-kib, max-handles, max-held-mib, max-metadata-kib, \
                          disk-mib-per-minute, disk-mib-total";

impl Limits {
    /// No limits at all (benchmarks: the cost of the limits is the
    /// difference with [`Limits::default`]). Never use it for a plugin you
    /// do not trust.
    pub fn unlimited() -> Limits {
        Limits {
            memory_bytes: usize::MAX,
            table_elements: usize::MAX,
            instances: usize::MAX,
            tables: usize::MAX,
            memories: usize::MAX,
            call_deadline: Duration::MAX,
            stack_bytes: 512 << 10,
            max_list_len: usize::MAX,
            max_call_bytes: usize::MAX,
            max_handles: usize::MAX,
            max_held_bytes: Some(usize::MAX),
            max_metadata_bytes: usize::MAX,
            disk_bytes_per_minute: u64::MAX,
            disk_bytes_total: u64::MAX,
        }
    }

    /// These limits with the overrides of `spec`, a comma-separated list of
    /// `KEY=VALUE` (e.g. `memory-mib=64,call-deadline-ms=1000`; keys in
    /// [`LIMIT_KEYS`]).
    pub fn with_overrides(&self, spec: &str) -> Result<Limits, LimitsError> {
        let mut l = self.clone();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(LimitsError::Syntax { spec: spec.into(), item: item.into() });
            };
            let (key, value) = (key.trim(), value.trim());
            let n: usize = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| LimitsError::Value {
                spec: spec.into(),
                key: key.into(),
                value: value.into(),
            })?;
            let bytes = |shift: u32| n.saturating_mul(1 << shift);
            match key {
                "memory-mib" => l.memory_bytes = bytes(20),
                "table-elements" => l.table_elements = n,
                "instances" => l.instances = n,
                "tables" => l.tables = n,
                "memories" => l.memories = n,
                "call-deadline-ms" => l.call_deadline = Duration::from_millis(n as u64),
                "stack-kib" => l.stack_bytes = bytes(10),
                "max-list-len" => l.max_list_len = n,
                "max-call-kib" => l.max_call_bytes = bytes(10),
                "max-handles" => l.max_handles = n,
                "max-held-mib" => l.max_held_bytes = Some(bytes(20)),
                "max-metadata-kib" => l.max_metadata_bytes = bytes(10),
                "disk-mib-per-minute" => l.disk_bytes_per_minute = (n as u64).saturating_mul(1 << 20),
                "disk-mib-total" => l.disk_bytes_total = (n as u64).saturating_mul(1 << 20),
                _ => {
                    return Err(LimitsError::UnknownKey { spec: spec.into(), key: key.into(), known: LIMIT_KEYS });
                }
            }
        }
        Ok(l)
    }

    fn has_deadline(&self) -> bool {
        self.call_deadline != Duration::MAX
    }
}

/// The caps the import functions check (a copy of the plugin's [`Limits`]).
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// See [`Limits::max_list_len`].
    pub max_list_len: usize,
    /// See [`Limits::max_call_bytes`].
    pub max_call_bytes: usize,
    /// See [`Limits::max_handles`].
    pub max_handles: usize,
    /// See [`Limits::max_held_bytes`].
    pub max_held_bytes: Option<usize>,
}

impl From<&Limits> for CallLimits {
    fn from(l: &Limits) -> Self {
        CallLimits {
            max_list_len: l.max_list_len,
            max_call_bytes: l.max_call_bytes,
            max_handles: l.max_handles,
            max_held_bytes: l.max_held_bytes,
        }
    }
}

impl Limits {
    /// `base` with this plugin's per-block and disk caps.
    pub fn support_limits(&self, base: &crate::support::SupportLimits) -> crate::support::SupportLimits {
        crate::support::SupportLimits {
            max_metadata_bytes: self.max_metadata_bytes,
            disk_bytes_per_minute: self.disk_bytes_per_minute,
            disk_bytes_total: self.disk_bytes_total,
            ..base.clone()
        }
    }
}

/// How often the engine's epoch advances (the deadline granularity).
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Errors loading a plugin or running it.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("setting up the wasm engine: {0}")]
    Engine(String),
    /// The package (contract version, manifest) is refused before compiling.
    #[error(transparent)]
    Package(#[from] crate::package::PackageError),
    #[error("plugin {plugin}: not a valid WebAssembly component: {reason}")]
    Compile { plugin: String, reason: String },
    #[error(
        "plugin {plugin}: imports {import}, which this host does not provide (it provides {provided}; contract {WIT_PACKAGE})"
    )]
    UnknownImport { plugin: String, import: String, provided: String },
    #[error("plugin {plugin}: does not fit the {WIT_PACKAGE} consenter world: {reason}")]
    Link { plugin: String, reason: String },
    #[error("plugin {plugin}: instantiating for channel {channel}: {reason}")]
    Instantiate { plugin: String, channel: String, reason: String },
    /// The plugin trapped (or ran out of time or memory): its Store is gone.
    #[error("plugin {plugin} on channel {channel} trapped in {call}: {reason}")]
    Trap { plugin: String, channel: String, call: &'static str, reason: String },
    #[error("plugin {plugin} on channel {channel} is no longer running (it trapped earlier)")]
    Dead { plugin: String, channel: String },
}

/// The node's one wasm engine and linker.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<PluginState>,
    limits: Limits,
    stop_ticker: Arc<AtomicBool>,
    /// Compiled-artifact cache (None: always compile).
    cache: Option<Arc<PluginCache>>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// An engine with cranelift, no async/concurrency support (3x cheaper
    /// calls), epoch interruption, and the given limits.
    pub fn new(limits: Limits) -> Result<Runtime, RuntimeError> {
        Runtime::new_with_cache(limits, None)
    }

    /// As [`Runtime::new`], loading compiled plugins through `cache`.
    pub fn new_with_cache(limits: Limits, cache: Option<Arc<PluginCache>>) -> Result<Runtime, RuntimeError> {
        let mut cfg = Config::new();
        cfg.concurrency_support(false);
        cfg.epoch_interruption(limits.has_deadline());
        cfg.max_wasm_stack(limits.stack_bytes);
        cfg.wasm_component_model(true);
        let engine = Engine::new(&cfg).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        Consenter::add_to_linker::<PluginState, wasmtime::component::HasSelf<PluginState>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        // The epoch ticker: deadlines are counted in ticks of EPOCH_TICK.
        let weak = engine.weak();
        let stop = stop_ticker.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("starting the epoch thread: {e}")))?;
        Ok(Runtime { inner: Arc::new(RuntimeInner { engine, linker, limits, stop_ticker, cache }) })
    }

    /// The default limits of the plugins this runtime loads (the engine's
    /// stack size is `stack_bytes` of these).
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Compiles a plugin once and pre-links it. Imports outside this host's
    /// contract are refused here, with their names; `wasi:*` imports are
    /// linked to functions that trap (no WASI capability is granted).
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Plugin, RuntimeError> {
        self.load_with_source(name, bytes).map(|(p, _)| p)
    }

    /// The cache entry `bytes` would have (None without a cache).
    pub fn cache_entry(&self, bytes: &[u8]) -> Option<std::path::PathBuf> {
        self.inner.cache.as_ref().map(|c| c.entry_path(&self.inner.engine, bytes))
    }

    /// As [`Runtime::load`], saying whether the component was compiled or
    /// came from the compiled-artifact cache. The contract version (the
    /// manifest's and the component's own import/export names) is checked
    /// before anything is compiled.
    pub fn load_with_source(&self, name: &str, bytes: &[u8]) -> Result<(Plugin, LoadSource), RuntimeError> {
        let engine = &self.inner.engine;
        crate::package::check_contract(name, bytes, WIT_PACKAGE)?;
        let compiled = match &self.inner.cache {
            Some(cache) => cache.load_or_compile(engine, name, bytes),
            None => Component::new(engine, bytes).map(|c| (c, LoadSource::Compiled)),
        };
        let (component, source) =
            compiled.map_err(|e| RuntimeError::Compile { plugin: name.to_string(), reason: format!("{e:#}") })?;
        let ty = component.component_type();
        for (import, _) in ty.imports(engine) {
            if import.starts_with("wasi:") || PROVIDED.contains(&import) {
                continue;
            }
            return Err(RuntimeError::UnknownImport {
                plugin: name.to_string(),
                import: import.to_string(),
                provided: PROVIDED.join(", "),
            });
        }
        let mut linker = self.inner.linker.clone();
        stub_wasi_imports(&mut linker, &component, engine)
            .map_err(|e| RuntimeError::Link { plugin: name.to_string(), reason: format!("{e:#}") })?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::Link { plugin: name.to_string(), reason: format!("{e:#}") })?;
        let pre = ConsenterPre::new(pre)
            .map_err(|e| RuntimeError::Link { plugin: name.to_string(), reason: format!("{e:#}") })?;
        Ok((Plugin { name: name.to_string(), pre, runtime: self.clone(), limits: self.inner.limits.clone() }, source))
    }
}

/// A compiled, pre-linked consenter plugin.
#[derive(Clone)]
pub struct Plugin {
    name: String,
    pre: ConsenterPre<PluginState>,
    runtime: Runtime,
    limits: Limits,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).finish()
    }
}

impl Plugin {
    /// The plugin's name (its consensus type).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limits each instance of this plugin gets.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// This plugin with other instance limits. The stack size is the
    /// engine's: a different `stack_bytes` needs a [`Runtime`] built with
    /// it (the node keeps one per stack size).
    pub fn with_limits(&self, limits: Limits) -> Plugin {
        Plugin { limits, ..self.clone() }
    }

    /// A new instance for one chain, with its own Store around `support`.
    pub fn instantiate(&self, support: Support) -> Result<Instance, RuntimeError> {
        let limits = &self.limits;
        let channel = support.chain_id().to_string();
        let state = PluginState {
            table: ResourceTable::new(),
            envelopes: Default::default(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .table_elements(limits.table_elements)
                .instances(limits.instances)
                .tables(limits.tables)
                .memories(limits.memories)
                .trap_on_grow_failure(true)
                .build(),
            call_limits: CallLimits::from(limits),
            handles: 0,
            held_bytes: 0,
            call_started: Instant::now(),
            host_time: Duration::ZERO,
            support,
        };
        let mut store = Store::new(&self.runtime.inner.engine, state);
        store.limiter(|s| &mut s.limits);
        let deadline = if limits.has_deadline() && self.runtime.inner.limits.has_deadline() {
            // At the deadline, time the host spent on the plugin's behalf
            // (signature checks in `revalidate`) is given back: only the
            // plugin's own time counts.
            let d = limits.call_deadline;
            store.epoch_deadline_callback(move |ctx| {
                let s = ctx.data();
                let own = s.call_started.elapsed().saturating_sub(s.host_time);
                if own >= d {
                    Ok(wasmtime::UpdateDeadline::Interrupt)
                } else {
                    Ok(wasmtime::UpdateDeadline::Continue(deadline_ticks(d - own)))
                }
            });
            store.set_epoch_deadline(deadline_ticks(limits.call_deadline));
            Some(limits.call_deadline)
        } else {
            None
        };
        let bindings = self.pre.instantiate(&mut store).map_err(|e| RuntimeError::Instantiate {
            plugin: self.name.clone(),
            channel: channel.clone(),
            reason: format!("{e:#}"),
        })?;
        Ok(Instance {
            plugin: self.name.clone(),
            channel,
            store: Some(store),
            bindings,
            deadline,
            written_before_trap: 0,
        })
    }
}

/// Links every `wasi:*` import of `component` to a function that traps
/// (naming the call), so a plugin built with Rust's std for wasm32-wasip2
/// instantiates but gets no capability. (wasmtime's
/// `define_unknown_imports_as_traps` would also stub the resource aliases
/// of our own interfaces, with the wrong resource type.)
fn stub_wasi_imports(linker: &mut Linker<PluginState>, component: &Component, engine: &Engine) -> wasmtime::Result<()> {
    use wasmtime::component::ResourceType;
    use wasmtime::component::types::ComponentItem;
    for (import, item) in component.component_type().imports(engine) {
        if !import.starts_with("wasi:") {
            continue;
        }
        let ComponentItem::ComponentInstance(inst) = item.ty else { continue };
        let mut li = linker.instance(import)?;
        for (export, item) in inst.exports(engine) {
            match item.ty {
                ComponentItem::ComponentFunc(_) => {
                    let what = format!("{import}#{export}");
                    li.func_new(export, move |_, _, _, _| {
                        wasmtime::bail!("the plugin called {what}: plugins are granted no WASI capability")
                    })?;
                }
                ComponentItem::Resource(_) => {
                    li.resource(export, ResourceType::host::<()>(), |_, _| Ok(()))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn deadline_ticks(d: Duration) -> u64 {
    (d.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
}

/// What a Store holds: the resource table, the limits and the chain's
/// native support.
pub struct PluginState {
    /// Batch and block handles given to the plugin.
    pub table: ResourceTable,
    /// Envelope handles given to the plugin.
    pub envelopes: crate::support::EnvelopeSlab,
    limits: StoreLimits,
    /// Caps checked by the import functions.
    pub call_limits: CallLimits,
    /// Envelope, batch and block handles the plugin holds now.
    pub handles: usize,
    /// Bytes of envelopes, batches and blocks held for the plugin now.
    pub held_bytes: usize,
    /// When the current call into the plugin started.
    pub call_started: Instant,
    /// Time the host spent on the plugin's behalf during the current call
    /// (not counted against its deadline).
    pub host_time: Duration,
    /// Native ConsenterSupport of the chain.
    pub support: Support,
}

impl PluginState {
    /// A Store's data around `support` with default limits (unit tests of
    /// the import functions, without a plugin).
    #[cfg(test)]
    pub(crate) fn for_test(support: Support) -> PluginState {
        PluginState {
            table: ResourceTable::new(),
            envelopes: Default::default(),
            limits: StoreLimitsBuilder::new().build(),
            call_limits: CallLimits::from(&Limits::default()),
            handles: 0,
            held_bytes: 0,
            call_started: Instant::now(),
            host_time: Duration::ZERO,
            support,
        }
    }
}

/// One chain's instance of a plugin. After a trap the Store is dropped and
/// every further call answers [`RuntimeError::Dead`].
pub struct Instance {
    plugin: String,
    channel: String,
    store: Option<Store<PluginState>>,
    bindings: Consenter,
    deadline: Option<Duration>,
    /// Envelopes written in blocks by the support of a dropped Store.
    written_before_trap: u64,
}

impl Instance {
    /// The support (for the chain actor: timers, status).
    pub fn support(&self) -> Option<&Support> {
        self.store.as_ref().map(|s| &s.data().support)
    }

    /// Mutable support.
    pub fn support_mut(&mut self) -> Option<&mut Support> {
        self.store.as_mut().map(|s| &mut s.data_mut().support)
    }

    /// Envelopes this instance's support wrote in blocks, also after a
    /// trap dropped the Store.
    pub fn written_envelopes(&self) -> u64 {
        self.support().map_or(self.written_before_trap, Support::written_envelopes)
    }

    /// The most bytes of envelopes this instance may be handed in one
    /// `enqueue` call: a quarter of its held-bytes budget, so the host's
    /// own grouping never makes an honest plugin pass it.
    pub fn max_group_bytes(&self) -> usize {
        self.store.as_ref().map_or(usize::MAX, |s| s.data().held_budget() / 4)
    }

    /// Whether the Store is still alive.
    pub fn is_alive(&self) -> bool {
        self.store.is_some()
    }

    fn call<R>(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&Consenter, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, RuntimeError> {
        let Some(store) = self.store.as_mut() else {
            return Err(RuntimeError::Dead { plugin: self.plugin.clone(), channel: self.channel.clone() });
        };
        if let Some(d) = self.deadline {
            let s = store.data_mut();
            s.call_started = Instant::now();
            s.host_time = Duration::ZERO;
            store.set_epoch_deadline(deadline_ticks(d));
        }
        match f(&self.bindings, store) {
            Ok(r) => Ok(r),
            Err(e) => {
                // A trap ends this Store; the node and other chains go on.
                if let Some(store) = self.store.take() {
                    self.written_before_trap = store.data().support.written_envelopes();
                }
                Err(RuntimeError::Trap {
                    plugin: self.plugin.clone(),
                    channel: self.channel.clone(),
                    call: name,
                    reason: trap_reason(&e),
                })
            }
        }
    }

    /// `handle-chain(metadata)`: Ok(Err(reason)) if the plugin refused.
    pub fn handle_chain(&mut self, metadata: &[u8]) -> Result<Result<(), String>, RuntimeError> {
        self.call("handle-chain", |b, s| b.fabric_consenter_chain().call_handle_chain(s, metadata))
    }

    /// `start()`.
    pub fn start(&mut self) -> Result<(), RuntimeError> {
        self.call("start", |b, s| b.fabric_consenter_chain().call_start(s))
    }

    /// `enqueue(envelopes)`: whether the plugin accepted each, in order.
    /// An answer list of the wrong length refuses them all.
    pub fn enqueue(&mut self, envs: Vec<crate::envelope::Envelope>) -> Result<Vec<bool>, RuntimeError> {
        use bindings::fabric::consenter::types::{EnvelopeInfo, MessageClass};
        let n = envs.len();
        let answers = self.call("enqueue", |b, s| {
            let mut offered = Vec::with_capacity(n);
            for env in envs {
                let info = EnvelopeInfo {
                    class: match env.class() {
                        crate::envelope::MessageClass::Normal => MessageClass::Normal,
                        crate::envelope::MessageClass::Config => MessageClass::Config,
                    },
                    size: env.size,
                    config_sequence: env.config_seq,
                };
                offered.push((s.data_mut().insert_envelope(env)?, info));
            }
            b.fabric_consenter_chain().call_enqueue(s, &offered)
        })?;
        if answers.len() != n {
            tracing::warn!(channel = %self.channel, offered = n, answers = answers.len(), "plugin answered enqueue with a list of the wrong length");
            return Ok(vec![false; n]);
        }
        Ok(answers)
    }

    /// `on-timer(id)`.
    pub fn on_timer(&mut self, id: u32) -> Result<(), RuntimeError> {
        self.call("on-timer", |b, s| b.fabric_consenter_chain().call_on_timer(s, id))
    }

    /// `halt()`.
    pub fn halt(&mut self) -> Result<(), RuntimeError> {
        self.call("halt", |b, s| b.fabric_consenter_chain().call_halt(s))
    }
}

/// A one-line reason for a trap: the trap code (out of time, memory, stack,
/// unreachable) and the innermost message.
fn trap_reason(e: &wasmtime::Error) -> String {
    if let Some(t) = e.downcast_ref::<wasmtime::Trap>() {
        let what = match t {
            wasmtime::Trap::Interrupt => "call deadline exceeded (epoch interrupt)".to_string(),
            wasmtime::Trap::StackOverflow => "wasm stack overflow".to_string(),
            wasmtime::Trap::UnreachableCodeReached => {
                "unreachable executed (a panic or abort in the plugin)".to_string()
            }
            wasmtime::Trap::AllocationTooLarge => "memory cap reached".to_string(),
            other => other.to_string(),
        };
        return what;
    }
    // The innermost error, without the wasm backtrace wasmtime wraps it in.
    let s = e.root_cause().to_string();
    if s.contains("growing memory") || (s.contains("memory") && s.contains("limit")) {
        format!("memory cap reached ({s})")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_overrides() {
        let l = Limits::default()
            .with_overrides("memory-mib=16, call-deadline-ms=250,max-list-len=4,max-call-kib=8")
            .unwrap();
        assert_eq!(l.memory_bytes, 16 << 20);
        assert_eq!(l.call_deadline, Duration::from_millis(250));
        assert_eq!(l.max_list_len, 4);
        assert_eq!(l.max_call_bytes, 8 << 10);
        assert_eq!(l.stack_bytes, Limits::default().stack_bytes, "untouched keys keep their value");
        let e = Limits::default().with_overrides("memory=1").unwrap_err();
        assert!(e.to_string().contains("unknown key \"memory\""), "{e}");
        let e = Limits::default().with_overrides("memory-mib=0").unwrap_err();
        assert!(matches!(e, LimitsError::Value { .. }), "{e}");
        let e = Limits::default().with_overrides("memory-mib").unwrap_err();
        assert!(matches!(e, LimitsError::Syntax { .. }), "{e}");
        assert!(!Limits::unlimited().has_deadline());
        assert!(Limits::default().has_deadline());
    }
}
