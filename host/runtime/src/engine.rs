//! The node's one wasm engine and linker ([`Runtime`]): compiles and
//! pre-links plugins (with the compiled-artifact cache), ticks the epoch
//! that call deadlines count in. Grants a plugin no WASI capability: a
//! `wasi:*` import traps when called, but for the few answered without
//! I/O (`wasi`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::bindings::{v0_1, v0_2, v0_2_clustered, v0_2_handover};
use crate::cache::{LoadSource, PluginCache};
use crate::glue::PluginState;
use crate::limits::Limits;
use crate::plugin::Plugin;

/// The newest contract version this host speaks.
pub const WIT_PACKAGE: &str = "fabric:consenter@0.2.1";

/// Every contract version this host speaks, newest first: a plugin built
/// for any of them loads (a host upgrade never breaks an installed plugin).
/// A 0.2.0 plugin is checked against 0.2.1 (same major.minor).
pub const WIT_PACKAGES: &[&str] = &["fabric:consenter@0.2.1", "fabric:consenter@0.1.0"];

/// Interfaces a plugin may import from this host (the linker defines the
/// 0.2.1 ones; wasmtime resolves a 0.2.0 import to them).
const PROVIDED: &[&str] = &[
    "fabric:consenter/types@0.2.1",
    "fabric:consenter/support@0.2.1",
    "fabric:consenter/timers@0.2.1",
    "fabric:consenter/log@0.2.1",
    "fabric:consenter/cluster@0.2.1",
    "fabric:consenter/replication@0.2.1",
    "fabric:consenter/storage@0.2.1",
    "fabric:consenter/types@0.2.0",
    "fabric:consenter/support@0.2.0",
    "fabric:consenter/timers@0.2.0",
    "fabric:consenter/log@0.2.0",
    "fabric:consenter/cluster@0.2.0",
    "fabric:consenter/replication@0.2.0",
    "fabric:consenter/storage@0.2.0",
    "fabric:consenter/types@0.1.0",
    "fabric:consenter/support@0.1.0",
    "fabric:consenter/timers@0.1.0",
    "fabric:consenter/log@0.1.0",
];

/// How often the engine's epoch advances (the deadline granularity).
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

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
    #[error("plugin {plugin}: imports {import}, which this host does not provide (it provides {provided})")]
    UnknownImport { plugin: String, import: String, provided: String },
    #[error("plugin {plugin}: does not fit its contract's world: {reason}")]
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
    pub(crate) inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<PluginState>,
    pub(crate) limits: Limits,
    pub(crate) stop_ticker: Arc<AtomicBool>,
    /// Compiled-artifact cache (None: always compile).
    pub(crate) cache: Option<Arc<PluginCache>>,
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
        // Every contract version at once: 0.1.0's interfaces, and 0.2.1's
        // (the clustered world's imports include the single-node world's).
        type Me = wasmtime::component::HasSelf<PluginState>;
        v0_1::Consenter::add_to_linker::<PluginState, Me>(&mut linker, |s| s)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        v0_2_clustered::ClusteredConsenter::add_to_linker::<PluginState, Me>(&mut linker, |s| s)
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
    /// linked to functions that trap, but for the few [`crate::wasi`]
    /// answers without I/O (no WASI capability is granted).
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
        let pkg = crate::package::check_contract(name, bytes, WIT_PACKAGES)?;
        let world = World::of(&pkg);
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
        crate::wasi::link(&mut linker, &component, engine)
            .map_err(|e| RuntimeError::Link { plugin: name.to_string(), reason: format!("{e:#}") })?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::Link { plugin: name.to_string(), reason: format!("{e:#}") })?;
        let link = |e: wasmtime::Error| RuntimeError::Link { plugin: name.to_string(), reason: format!("{e:#}") };
        // The optional `handover` export (0.2.1): present or not.
        let handover = match world {
            World::V0_1 => None,
            _ => v0_2_handover::exports::fabric::consenter::handover::GuestIndices::new(&pre).ok(),
        };
        let pre = match world {
            World::V0_1 => Pre::V0_1(v0_1::ConsenterPre::new(pre).map_err(link)?),
            World::V0_2 => Pre::V0_2(v0_2::ConsenterPre::new(pre).map_err(link)?),
            World::V0_2Clustered => Pre::V0_2Clustered(v0_2_clustered::ClusteredConsenterPre::new(pre).map_err(link)?),
        };
        use sha2::Digest;
        let sha256 = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        let version = pkg.manifest.as_ref().map(|m| m.version.clone()).unwrap_or_default();
        let plugin = Plugin {
            name: name.to_string(),
            version,
            sha256,
            pre,
            handover,
            runtime: self.clone(),
            limits: self.inner.limits.clone(),
        };
        Ok((plugin, source))
    }
}

/// The contract world a plugin was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `fabric:consenter@0.1.0`, world `consenter`.
    V0_1,
    /// `fabric:consenter@0.2.x`, world `consenter` (single node).
    V0_2,
    /// `fabric:consenter@0.2.x`, world `clustered-consenter`.
    V0_2Clustered,
}

impl World {
    /// The world of a package that passed `check_contract`: its contract
    /// version, and whether it exports `cluster-events`.
    pub fn of(pkg: &crate::package::Package) -> World {
        let wit = crate::package::component_wit(pkg).unwrap_or_default();
        if wit.starts_with("fabric:consenter@0.1.") {
            World::V0_1
        } else if pkg.exports.iter().any(|e| e.starts_with("fabric:consenter/cluster-events@")) {
            World::V0_2Clustered
        } else {
            World::V0_2
        }
    }

    /// The contract and world, e.g. `fabric:consenter@0.2 clustered-consenter`.
    pub fn name(self) -> &'static str {
        match self {
            World::V0_1 => "fabric:consenter@0.1.0 consenter",
            World::V0_2 => "fabric:consenter@0.2 consenter",
            World::V0_2Clustered => "fabric:consenter@0.2 clustered-consenter",
        }
    }

    /// Whether plugins of this world replicate across nodes.
    pub fn is_clustered(self) -> bool {
        self == World::V0_2Clustered
    }
}

/// A pre-linked plugin, by contract world.
#[derive(Clone)]
pub(crate) enum Pre {
    V0_1(v0_1::ConsenterPre<PluginState>),
    V0_2(v0_2::ConsenterPre<PluginState>),
    V0_2Clustered(v0_2_clustered::ClusteredConsenterPre<PluginState>),
}

impl Pre {
    /// The pre-linked component, whatever its world.
    pub(crate) fn instance_pre(&self) -> &wasmtime::component::InstancePre<PluginState> {
        match self {
            Pre::V0_1(p) => p.instance_pre(),
            Pre::V0_2(p) => p.instance_pre(),
            Pre::V0_2Clustered(p) => p.instance_pre(),
        }
    }
}

pub(crate) fn deadline_ticks(d: Duration) -> u64 {
    (d.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
}
