//! The node's plugin registry: which build serves each consensus type and
//! where it came from (shipped in the binary, a `--plugin` file, or
//! installed live through the admin endpoint), and live installs: the
//! package's admission (signature, manifest), compiling, the canary, the
//! file kept under `<data-dir>/plugins/<type>.wasm` so the build survives
//! a restart, and going back to the build an install replaced when the
//! new one fails on probation. May touch the plugin runtime and that
//! directory; the node tells the chains.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::cache::PluginCache;
use crate::package::{self, Package, PackageError, Policy};
use crate::runtime::{Limits, Plugin, Runtime, RuntimeError};
use crate::signer::Signer;

/// Where a registered build came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Shipped inside the binary.
    Shipped,
    /// A `--plugin TYPE=FILE` given at start.
    File,
    /// Installed live (`POST /consenter/v1/plugins`), kept in the data
    /// directory.
    Installed,
}

/// A registered build.
#[derive(Clone)]
struct Entry {
    plugin: Plugin,
    source: Source,
}

/// A registered build as the admin endpoint lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginView {
    /// The consensus type it serves.
    pub consensus_type: String,
    /// Its manifest's version ("" for a bare component).
    pub version: String,
    /// SHA-256 of its file.
    pub sha256: String,
    /// `single-node` or `clustered`.
    pub world: &'static str,
    /// Whether it exports `handover` (contract 0.2.1): at a live upgrade
    /// the build before it hands it its in-memory state; without it, what
    /// an instance holds in its own memory is lost at the switch.
    pub handover: bool,
    /// Where it came from.
    pub source: Source,
}

/// Why an install was refused.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the plugin package is refused: {0}")]
    Package(#[from] PackageError),
    #[error(
        "the plugin package names no consensus type: sign it with a manifest (`consenter-host plugin sign \
         --consensus-type TYPE`) or name the type (`?consensusType=TYPE`, `plugin install --consensus-type`)"
    )]
    NoType,
    #[error("the package's manifest says consensus type {manifest:?}, the request says {asked:?}")]
    TypeMismatch { manifest: String, asked: String },
    #[error("plugin {consensus_type:?}: {source}")]
    Load { consensus_type: String, source: RuntimeError },
    #[error("plugin {consensus_type:?} fails its canary: {reason}")]
    Canary { consensus_type: String, reason: String },
    #[error("plugin {consensus_type:?} fails its canary with channel {channel:?}'s config: {reason}")]
    ChannelCanary { consensus_type: String, channel: String, reason: String },
    #[error(
        "plugin {consensus_type:?} is a {new} plugin and the build serving the type now is a {old} one: a live \
         upgrade keeps the kind of consenter (change ConsensusType.type to swap kinds)"
    )]
    WorldChange { consensus_type: String, new: &'static str, old: &'static str },
    #[error("plugin {consensus_type:?} is already this build (sha256 {sha256})")]
    Same { consensus_type: String, sha256: String },
    #[error("keeping the installed plugin at {path}: {source}")]
    Persist { path: PathBuf, source: std::io::Error },
}

impl InstallError {
    /// Whether the node failed (not the package or the request).
    pub fn is_internal(&self) -> bool {
        matches!(self, InstallError::Persist { .. })
    }
}

/// What an install replaced, for a rollback: the entry and the installed
/// file's bytes it had (None: no installed file).
type Replaced = (Entry, Option<Vec<u8>>);

/// The node's plugins by consensus type.
pub struct Registry {
    entries: RwLock<BTreeMap<String, Entry>>,
    replaced: Mutex<BTreeMap<String, Replaced>>,
    /// `<data-dir>/plugins`.
    dir: PathBuf,
    policy: Policy,
    signer: Arc<Signer>,
    limits: Limits,
    plugin_limits: BTreeMap<String, Limits>,
    /// One runtime per wasm stack size (an engine-wide setting).
    runtimes: Mutex<BTreeMap<usize, Runtime>>,
    cache: Option<Arc<PluginCache>>,
}

/// What the registry is built from.
pub struct RegistryConfig {
    /// The data directory (installed builds under `plugins/`).
    pub data_dir: PathBuf,
    /// Who may sign a plugin (installs, and installed builds at start).
    pub policy: Policy,
    /// The node's identity (canaries sign with it).
    pub signer: Arc<Signer>,
    /// Limits of every plugin instance, unless `plugin_limits` has its type.
    pub limits: Limits,
    /// Limits of the instances of a plugin type.
    pub plugin_limits: BTreeMap<String, Limits>,
    /// `--plugin` files (type, bytes), admitted by the caller.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Errors loading the registry at start.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Canary(#[from] crate::canary::CanaryError),
    #[error("plugin limits given for {name:?}, which is not a plugin of this node (available: {available})")]
    LimitsForUnknownPlugin { name: String, available: String },
}

impl Registry {
    /// Loads the shipped plugins, then the `--plugin` files, then the
    /// builds installed earlier (each replaces the one before for its
    /// type; an installed build the trust policy now refuses is skipped,
    /// with an error logged). Every build passes its canary first.
    pub fn load(cfg: RegistryConfig) -> Result<Registry, RegistryError> {
        // Compiled plugins are cached in the data directory (see cache.rs);
        // without a usable cache the node compiles every start.
        let cache = PluginCache::open(&cfg.data_dir)
            .inspect_err(|e| tracing::warn!(error = %e, "plugin cache unavailable; compiling plugins"))
            .ok()
            .map(Arc::new);
        let dir = cfg.data_dir.join("plugins");
        let mut sources: BTreeMap<String, (Vec<u8>, Source)> = crate::node::embedded::EMBEDDED
            .iter()
            .map(|(n, b)| (n.to_string(), (b.to_vec(), Source::Shipped)))
            .collect();
        for (n, b) in cfg.files {
            sources.insert(n, (b, Source::File));
        }
        for (n, b) in installed_files(&dir) {
            let path = dir.join(format!("{n}.wasm"));
            match package::admit(&cfg.policy, &n, &path, &b) {
                Ok(_) => {
                    tracing::info!(plugin = %n, file = %path.display(), "using the build installed live earlier");
                    sources.insert(n, (b, Source::Installed));
                }
                Err(e) => tracing::error!(plugin = %n, error = %e, "an installed plugin is refused now; not loaded"),
            }
        }
        if let Some(name) = cfg.plugin_limits.keys().find(|n| !sources.contains_key(*n)) {
            let available = sources.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(RegistryError::LimitsForUnknownPlugin { name: name.clone(), available });
        }
        let registry = Registry {
            entries: RwLock::new(BTreeMap::new()),
            replaced: Mutex::new(BTreeMap::new()),
            dir,
            policy: cfg.policy,
            signer: cfg.signer,
            limits: cfg.limits,
            plugin_limits: cfg.plugin_limits,
            runtimes: Mutex::new(BTreeMap::new()),
            cache,
        };
        let mut entries = BTreeMap::new();
        for (name, (bytes, source)) in sources {
            let plugin = registry.compile(&name, &bytes)?;
            crate::canary::run(&plugin, registry.signer.clone())?;
            entries.insert(name, Entry { plugin, source });
        }
        *write(&registry.entries) = entries;
        Ok(registry)
    }

    /// Compiles (or takes from the cache) a build of type `name`, with the
    /// limits of its type.
    fn compile(&self, name: &str, bytes: &[u8]) -> Result<Plugin, RuntimeError> {
        let t = std::time::Instant::now();
        let limits = self.plugin_limits.get(name).unwrap_or(&self.limits).clone();
        let runtime = {
            let mut runtimes = self.runtimes.lock().unwrap_or_else(|p| p.into_inner());
            match runtimes.get(&limits.stack_bytes) {
                Some(r) => r.clone(),
                None => {
                    let r = Runtime::new_with_cache(limits.clone(), self.cache.clone())?;
                    runtimes.insert(limits.stack_bytes, r.clone());
                    r
                }
            }
        };
        let (p, source) = runtime.load_with_source(name, bytes)?;
        crate::runtime::observe::plugin_loaded(name, source == crate::cache::LoadSource::Cached);
        tracing::info!(plugin = %name, bytes = bytes.len(), ms = t.elapsed().as_millis() as u64, ?source, version = p.version(), "plugin loaded");
        Ok(p.with_limits(limits))
    }

    /// The build serving consensus type `ty`.
    pub fn get(&self, ty: &str) -> Option<Plugin> {
        read(&self.entries).get(ty).map(|e| e.plugin.clone())
    }

    /// The consensus types served.
    pub fn names(&self) -> Vec<String> {
        read(&self.entries).keys().cloned().collect()
    }

    /// Whether the build serving `ty` is the one shipped in the binary.
    pub fn is_shipped(&self, ty: &str) -> bool {
        read(&self.entries).get(ty).is_some_and(|e| e.source == Source::Shipped)
    }

    /// Every registered build.
    pub fn list(&self) -> Vec<PluginView> {
        read(&self.entries)
            .iter()
            .map(|(ty, e)| PluginView {
                consensus_type: ty.clone(),
                version: e.plugin.version().to_string(),
                sha256: e.plugin.sha256().to_string(),
                world: world_name(&e.plugin),
                handover: e.plugin.has_handover(),
                source: e.source,
            })
            .collect()
    }

    /// Checks a package for a live install: its consensus type (from its
    /// manifest, or `asked` for a bare component where unsigned plugins
    /// are allowed), the trust policy, the contract, compiling, the
    /// canary, and that it is a new build of the same kind of consenter.
    /// Returns the build, not yet registered.
    pub fn prepare(&self, bytes: &[u8], asked: Option<&str>) -> Result<Plugin, InstallError> {
        let pkg = Package::parse("the uploaded plugin", bytes)?;
        let ty = match (pkg.manifest.as_ref().map(|m| m.consensus_type.as_str()), asked) {
            (Some(m), Some(a)) if m != a => {
                return Err(InstallError::TypeMismatch { manifest: m.to_string(), asked: a.to_string() });
            }
            (Some(t), _) | (None, Some(t)) => t.to_string(),
            (None, None) => return Err(InstallError::NoType),
        };
        package::admit(&self.policy, &ty, Path::new("the uploaded plugin"), bytes)?;
        let plugin =
            self.compile(&ty, bytes).map_err(|source| InstallError::Load { consensus_type: ty.clone(), source })?;
        if let Some(old) = self.get(&ty) {
            if old.sha256() == plugin.sha256() {
                return Err(InstallError::Same { consensus_type: ty, sha256: old.sha256().to_string() });
            }
            if old.world().is_clustered() != plugin.world().is_clustered() {
                return Err(InstallError::WorldChange {
                    consensus_type: ty,
                    new: world_name(&plugin),
                    old: world_name(&old),
                });
            }
        }
        crate::canary::run(&plugin, self.signer.clone())
            .map_err(|e| InstallError::Canary { consensus_type: ty.clone(), reason: e.reason })?;
        Ok(plugin)
    }

    /// Registers `plugin` (checked by [`Registry::prepare`]) for its type
    /// and keeps its file, `bytes`, for the next start (written to a
    /// temporary file, fsynced, renamed). The build it replaces is kept
    /// for [`Registry::revert`].
    pub fn commit(&self, plugin: Plugin, bytes: &[u8]) -> Result<(), InstallError> {
        let ty = plugin.name().to_string();
        let path = self.dir.join(format!("{ty}.wasm"));
        let persist = |source| InstallError::Persist { path: path.clone(), source };
        let old_file = std::fs::read(&path).ok();
        write_durably(&self.dir, &path, bytes).map_err(persist)?;
        let old = write(&self.entries).insert(ty.clone(), Entry { plugin, source: Source::Installed });
        if let Some(old) = old {
            self.replaced.lock().unwrap_or_else(|p| p.into_inner()).insert(ty, (old, old_file));
        }
        Ok(())
    }

    /// After a chain rolled back from `failed` (which failed on
    /// probation): if `failed` still serves its type, the build it
    /// replaced serves it again, and the installed file goes back to what
    /// it was, so new chains and the next start do not use `failed`.
    pub fn revert(&self, failed: &Plugin) {
        let ty = failed.name();
        let mut entries = write(&self.entries);
        if entries.get(ty).is_none_or(|e| e.plugin.sha256() != failed.sha256()) {
            return;
        }
        let Some((old, old_file)) = self.replaced.lock().unwrap_or_else(|p| p.into_inner()).remove(ty) else {
            return;
        };
        let path = self.dir.join(format!("{ty}.wasm"));
        let restored = match &old_file {
            Some(b) => write_durably(&self.dir, &path, b),
            None => std::fs::remove_file(&path)
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }),
        };
        if let Err(e) = restored {
            tracing::error!(plugin = %ty, file = %path.display(), error = %e, "restoring the installed plugin file after a rollback");
        }
        tracing::warn!(plugin = %ty, failed = %failed.sha256(), back_to = %old.plugin.sha256(), "the registry serves the build before the failed upgrade again");
        entries.insert(ty.to_string(), old);
    }

    /// The trust policy installs are checked against.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

/// `single-node` or `clustered`.
fn world_name(p: &Plugin) -> &'static str {
    if p.world().is_clustered() { "clustered" } else { "single-node" }
}

/// The builds installed earlier: `<dir>/<type>.wasm`, by type.
fn installed_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names = BTreeSet::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(ty) = name.strip_suffix(".wasm") {
            names.insert(ty.to_string());
        }
    }
    names
        .into_iter()
        .filter_map(|ty| match std::fs::read(dir.join(format!("{ty}.wasm"))) {
            Ok(b) => Some((ty, b)),
            Err(e) => {
                tracing::error!(plugin = %ty, error = %e, "reading an installed plugin");
                None
            }
        })
        .collect()
}

/// Writes `bytes` to `path` in `dir` so that a crash leaves the old file
/// or the new one: a temporary file, fsync, rename, fsync of the directory.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("wasm.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
