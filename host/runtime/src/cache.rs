//! The compiled-artifact cache: components this node compiled, serialized
//! under `<data-dir>/plugin-cache/` so that a restart deserializes them
//! instead of compiling again. May touch only that directory and the
//! node's cache key file `<data-dir>/plugin-cache.key`.
//!
//! # Safety rule
//!
//! `Component::deserialize` trusts its input completely (it is native
//! code), so only artifacts this node wrote are ever deserialized. Each
//! entry is authenticated with HMAC-SHA256 under a per-node secret key
//! (32 random bytes, generated on first use, file mode 0600); the tag is
//! checked over the whole entry before deserializing. A missing, corrupt,
//! foreign (another key) or mismatched entry is never loaded: the plugin is
//! compiled again and the entry rewritten atomically (temp file, fsync,
//! rename, fsync of the directory). Every such event is logged.
//!
//! # Entry
//!
//! File `<sha256 of the plugin bytes>-<engine hash>.cwasm`, where the
//! engine hash is SHA-256 of `Engine::precompile_compatibility_hash()`
//! (wasmtime version, target, compiler settings, features), truncated to
//! 16 bytes in the name. Contents: [`MAGIC`] (8 bytes), plugin SHA-256 (32),
//! engine hash (32), HMAC tag (32), then the serialized component. The tag
//! covers magic, both hashes and the artifact.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use ring::hmac;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::block::hex;

/// First bytes of a cache entry (format version 1).
pub const MAGIC: &[u8; 8] = b"CNSCWSM1";
const HEADER: usize = 8 + 32 + 32 + 32;

/// Where a loaded component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Compiled now (and written to the cache if there is one).
    Compiled,
    /// Deserialized from an authenticated cache entry.
    Cached,
}

/// Errors opening the cache (a broken entry is not an error: it is
/// recompiled).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("plugin cache {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("plugin cache key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
}

/// The on-disk cache of one node.
pub struct PluginCache {
    dir: PathBuf,
    key: hmac::Key,
}

impl std::fmt::Debug for PluginCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginCache").field("dir", &self.dir).finish()
    }
}

/// Feeds `Hash` output into SHA-256.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0 // unused: the digest is read with finalize
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// SHA-256 of the engine's precompile compatibility hash.
pub fn engine_hash(engine: &Engine) -> [u8; 32] {
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.finalize().into()
}

impl PluginCache {
    /// The cache of the node whose data directory is `data_dir`: entries in
    /// `plugin-cache/`, the key in `plugin-cache.key` (created if missing).
    pub fn open(data_dir: &Path) -> Result<PluginCache, CacheError> {
        let dir = data_dir.join("plugin-cache");
        std::fs::create_dir_all(&dir).map_err(|source| CacheError::Io { path: dir.clone(), source })?;
        let key = load_or_create_key(&data_dir.join("plugin-cache.key"))?;
        Ok(PluginCache { dir, key: hmac::Key::new(hmac::HMAC_SHA256, &key) })
    }

    /// The entry file for `bytes` compiled by `engine`.
    pub fn entry_path(&self, engine: &Engine, bytes: &[u8]) -> PathBuf {
        let plugin: [u8; 32] = Sha256::digest(bytes).into();
        self.path_of(&plugin, &engine_hash(engine))
    }

    fn path_of(&self, plugin: &[u8; 32], engine: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}-{}.cwasm", hex(plugin), hex(&engine[..16])))
    }

    /// The component of `bytes`: deserialized from an authenticated entry,
    /// or compiled (and the entry written). `plugin` names it in logs.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        plugin: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, LoadSource)> {
        let plugin_sha: [u8; 32] = Sha256::digest(bytes).into();
        let engine_sha = engine_hash(engine);
        let path = self.path_of(&plugin_sha, &engine_sha);
        match std::fs::read(&path) {
            Ok(entry) => match self.authenticate(&entry, &plugin_sha, &engine_sha) {
                Ok(artifact) => {
                    // SAFETY: the artifact is authenticated by this node's
                    // secret key: this node serialized it with an engine of
                    // the same compatibility hash. wasmtime additionally
                    // checks its own header and engine compatibility.
                    match unsafe { Component::deserialize(engine, artifact) } {
                        Ok(c) => {
                            tracing::debug!(plugin, path = %path.display(), "plugin loaded from the compiled-artifact cache");
                            return Ok((c, LoadSource::Cached));
                        }
                        Err(e) => {
                            tracing::warn!(plugin, path = %path.display(), error = %format!("{e:#}"), "cached artifact did not deserialize; recompiling")
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(plugin, path = %path.display(), reason = why, "refusing a plugin cache entry; recompiling")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(plugin, path = %path.display(), "no compiled artifact cached; compiling")
            }
            Err(e) => {
                tracing::warn!(plugin, path = %path.display(), error = %e, "reading the plugin cache entry failed; recompiling")
            }
        }
        let component = Component::new(engine, bytes)?;
        match component.serialize() {
            Ok(artifact) => {
                let entry = self.seal(&plugin_sha, &engine_sha, &artifact);
                match write_atomic(&path, &entry) {
                    Ok(()) => {
                        tracing::info!(plugin, path = %path.display(), bytes = entry.len(), "compiled artifact cached")
                    }
                    Err(e) => {
                        tracing::warn!(plugin, path = %path.display(), error = %e, "writing the plugin cache entry failed")
                    }
                }
            }
            Err(e) => tracing::warn!(plugin, error = %format!("{e:#}"), "serializing the compiled plugin failed"),
        }
        Ok((component, LoadSource::Compiled))
    }

    /// An entry: header with the tag, then the artifact.
    fn seal(&self, plugin: &[u8; 32], engine: &[u8; 32], artifact: &[u8]) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(MAGIC);
        ctx.update(plugin);
        ctx.update(engine);
        ctx.update(artifact);
        let tag = ctx.sign();
        let mut out = Vec::with_capacity(HEADER + artifact.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(plugin);
        out.extend_from_slice(engine);
        out.extend_from_slice(tag.as_ref());
        out.extend_from_slice(artifact);
        out
    }

    /// The artifact of an entry if it is authentic and for this plugin and
    /// engine; else why not.
    fn authenticate<'a>(
        &self,
        entry: &'a [u8],
        plugin: &[u8; 32],
        engine: &[u8; 32],
    ) -> Result<&'a [u8], &'static str> {
        if entry.len() < HEADER || &entry[..8] != MAGIC {
            return Err("not a cache entry of this format (bad magic or truncated)");
        }
        let (p, e, tag, artifact) = (&entry[8..40], &entry[40..72], &entry[72..104], &entry[HEADER..]);
        let mut msg = Vec::with_capacity(72 + artifact.len());
        msg.extend_from_slice(MAGIC);
        msg.extend_from_slice(p);
        msg.extend_from_slice(e);
        msg.extend_from_slice(artifact);
        hmac::verify(&self.key, &msg, tag)
            .map_err(|_| "HMAC does not verify (corrupted, or written by another node or key)")?;
        if p != plugin {
            return Err("entry is for other plugin bytes");
        }
        if e != engine {
            return Err("entry is for another engine configuration");
        }
        Ok(artifact)
    }
}

/// Reads the 32-byte key, or creates it (mode 0600). A key file of the
/// wrong size is replaced (every entry then fails to authenticate and is
/// recompiled).
fn load_or_create_key(path: &Path) -> Result<[u8; 32], CacheError> {
    match std::fs::read(path) {
        Ok(k) if k.len() == 32 => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(m) = std::fs::metadata(path)
                    && m.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(path = %path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777), "plugin cache key is readable by others; it should be 0600");
                }
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(&k);
            return Ok(key);
        }
        Ok(k) => {
            tracing::warn!(path = %path.display(), len = k.len(), "plugin cache key has the wrong size; generating a new one (cached artifacts will be recompiled)")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(CacheError::Io { path: path.to_path_buf(), source }),
    }
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).map_err(|_| CacheError::Key {
        path: path.to_path_buf(),
        reason: "the system random generator failed".into(),
    })?;
    write_atomic(path, &key).map_err(|source| CacheError::Io { path: path.to_path_buf(), source })?;
    tracing::info!(path = %path.display(), "generated the plugin cache key");
    Ok(key)
}

/// Writes `data` (mode 0600) to a new temporary file beside `path`,
/// fsyncs it, renames it over `path` and fsyncs the directory.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut nonce = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce);
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), hex(&nonce)));
    let result = crate::package::write_new(&tmp, data, 0o600).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, Runtime};

    fn solo() -> Vec<u8> {
        std::fs::read(consenter_test_plugins::path("consenter_solo.wasm")).unwrap()
    }

    fn engine(epoch: bool) -> Engine {
        let mut cfg = wasmtime::Config::new();
        cfg.wasm_component_model(true);
        cfg.epoch_interruption(epoch);
        Engine::new(&cfg).unwrap()
    }

    #[test]
    fn hit_gives_a_working_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = solo();
        let cache = || Some(PluginCache::open(dir.path()).unwrap());
        let rt = Runtime::new_with_cache(Limits::default(), cache().map(std::sync::Arc::new)).unwrap();
        let (_, src) = rt.load_with_source("solo", &bytes).unwrap();
        assert_eq!(src, LoadSource::Compiled);
        let entry = rt.cache_entry(&bytes).unwrap();
        assert!(entry.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("plugin-cache.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A new runtime (a restart) finds it, and it orders.
        let rt = Runtime::new_with_cache(Limits::default(), cache().map(std::sync::Arc::new)).unwrap();
        let (plugin, src) = rt.load_with_source("solo", &bytes).unwrap();
        assert_eq!(src, LoadSource::Cached);
        let id = crate::signer::ensure_dev_identity(&dir.path().join("id")).unwrap();
        let signer = std::sync::Arc::new(crate::signer::Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap());
        let mut t = crate::channel::ChannelTemplate::solo("cached");
        t.batch_size.max_message_count = 1;
        let genesis = t.genesis_block();
        let cfg = std::sync::Arc::new(crate::channel::ChannelConfig::from_config_block(&genesis).unwrap());
        let hash = crate::block::header_hash(genesis.header.as_ref().unwrap());
        let pos = crate::support::ChainPosition { height: 1, last_hash: hash, last_config: 0 };
        let written = std::sync::Arc::new(std::sync::Mutex::new(0usize));
        struct Count(std::sync::Arc<std::sync::Mutex<usize>>);
        impl crate::support::BlockSink for Count {
            fn write(&mut self, _: u64, _: bytes::Bytes, _: Option<crate::support::OnDurable>) -> Result<(), String> {
                *self.0.lock().unwrap() += 1;
                Ok(())
            }
        }
        let support = crate::support::Support::new(
            "cached",
            cfg,
            signer,
            Box::new(Count(written.clone())),
            std::sync::Arc::new(crate::support::SystemClock),
            pos,
            crate::support::SupportLimits::default(),
        );
        let status = std::sync::Arc::new(crate::status::ChainStatus::default());
        let mut core = crate::chain_core::ChainCore::start(&plugin, support, &[], status).unwrap();
        let env = crate::envelope::build(
            "cached",
            crate::proto::common::HeaderType::Message,
            "tx1",
            bytes::Bytes::from_static(b"x"),
            None,
        )
        .unwrap();
        core.enqueue(crate::envelope::Envelope::parse(env).unwrap()).unwrap();
        assert_eq!(*written.lock().unwrap(), 1, "the cached plugin cut a block");
    }

    #[test]
    fn flipped_byte_is_recompiled_never_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PluginCache::open(dir.path()).unwrap();
        let e = engine(true);
        let bytes = solo();
        assert_eq!(cache.load_or_compile(&e, "solo", &bytes).unwrap().1, LoadSource::Compiled);
        assert_eq!(cache.load_or_compile(&e, "solo", &bytes).unwrap().1, LoadSource::Cached);
        let path = cache.entry_path(&e, &bytes);
        // Flip one byte of the header, of the tag, and of the artifact.
        for at in [3usize, 80, HEADER + 5000] {
            let mut entry = std::fs::read(&path).unwrap();
            entry[at] ^= 0x01;
            std::fs::write(&path, &entry).unwrap();
            assert_eq!(cache.load_or_compile(&e, "solo", &bytes).unwrap().1, LoadSource::Compiled, "byte {at}");
            // Rewritten: authentic again.
            let fixed = std::fs::read(&path).unwrap();
            assert_ne!(fixed, entry);
            assert_eq!(cache.load_or_compile(&e, "solo", &bytes).unwrap().1, LoadSource::Cached);
        }
        // Truncated, and empty.
        let entry = std::fs::read(&path).unwrap();
        for len in [entry.len() - 1, 10, 0] {
            std::fs::write(&path, &entry[..len]).unwrap();
            assert_eq!(cache.load_or_compile(&e, "solo", &bytes).unwrap().1, LoadSource::Compiled, "len {len}");
        }
        // No temporary files left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("plugin-cache"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn entry_of_another_node_is_not_loaded() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ca, cb) = (PluginCache::open(a.path()).unwrap(), PluginCache::open(b.path()).unwrap());
        let e = engine(true);
        let bytes = solo();
        assert_eq!(ca.load_or_compile(&e, "solo", &bytes).unwrap().1, LoadSource::Compiled);
        // Node B is handed node A's entry (same name, valid wasmtime
        // artifact, but A's HMAC key).
        let foreign = std::fs::read(ca.entry_path(&e, &bytes)).unwrap();
        std::fs::write(cb.entry_path(&e, &bytes), &foreign).unwrap();
        assert_eq!(cb.load_or_compile(&e, "solo", &bytes).unwrap().1, LoadSource::Compiled);
        assert_ne!(std::fs::read(cb.entry_path(&e, &bytes)).unwrap(), foreign, "rewritten under B's key");
        assert_eq!(cb.load_or_compile(&e, "solo", &bytes).unwrap().1, LoadSource::Cached);
        // An entry for other plugin bytes, renamed to this plugin's name.
        let other = b"\0asm\x0d\0\x01\0";
        let sealed = cb.seal(&Sha256::digest(other).into(), &engine_hash(&e), &foreign[HEADER..]);
        std::fs::write(cb.entry_path(&e, &bytes), &sealed).unwrap();
        assert_eq!(cb.load_or_compile(&e, "solo", &bytes).unwrap().1, LoadSource::Compiled);
    }

    #[test]
    fn another_engine_config_misses() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PluginCache::open(dir.path()).unwrap();
        let (e1, e2) = (engine(true), engine(false));
        assert_ne!(engine_hash(&e1), engine_hash(&e2));
        assert_eq!(engine_hash(&e1), engine_hash(&engine(true)), "the hash is stable for one config");
        let bytes = solo();
        assert_eq!(cache.load_or_compile(&e1, "solo", &bytes).unwrap().1, LoadSource::Compiled);
        assert_ne!(cache.entry_path(&e1, &bytes), cache.entry_path(&e2, &bytes));
        assert_eq!(cache.load_or_compile(&e2, "solo", &bytes).unwrap().1, LoadSource::Compiled);
        // Even e1's entry copied under e2's name is refused (the engine
        // hash is authenticated).
        std::fs::copy(cache.entry_path(&e1, &bytes), cache.entry_path(&e2, &bytes)).unwrap();
        assert_eq!(cache.load_or_compile(&e2, "solo", &bytes).unwrap().1, LoadSource::Compiled);
        assert_eq!(cache.load_or_compile(&e1, "solo", &bytes).unwrap().1, LoadSource::Cached);
        assert_eq!(cache.load_or_compile(&e2, "solo", &bytes).unwrap().1, LoadSource::Cached);
    }

    #[test]
    fn key_is_kept_and_a_bad_key_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(true);
        let bytes = solo();
        let c1 = PluginCache::open(dir.path()).unwrap();
        c1.load_or_compile(&e, "solo", &bytes).unwrap();
        let key = std::fs::read(dir.path().join("plugin-cache.key")).unwrap();
        assert_eq!(key.len(), 32);
        assert_eq!(
            PluginCache::open(dir.path()).unwrap().load_or_compile(&e, "solo", &bytes).unwrap().1,
            LoadSource::Cached
        );
        std::fs::write(dir.path().join("plugin-cache.key"), b"short").unwrap();
        let c3 = PluginCache::open(dir.path()).unwrap();
        assert_ne!(std::fs::read(dir.path().join("plugin-cache.key")).unwrap(), key);
        assert_eq!(c3.load_or_compile(&e, "solo", &bytes).unwrap().1, LoadSource::Compiled);
    }
}
