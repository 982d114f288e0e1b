//! The canary: before a plugin serves any channel, the node instantiates it
//! on a throw-away Store around a throw-away in-memory Support (a new
//! channel `canary` of the plugin's consensus type with Fabric's default
//! batch settings, a hand-moved clock, blocks kept in memory and dropped)
//! and runs `handle-chain` (empty metadata, as for a new chain), `start`
//! and `halt`. A trap, a refusal, a failed chain or a call past the
//! deadline (the runtime's per-call limit) rejects the plugin with the
//! reason. Touches nothing outside memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;

use crate::block;
use crate::channel::{ChannelConfig, ChannelTemplate};
use crate::signer::Signer;
use crate::support::{ChainPosition, Support, SupportLimits};
use crate::testhost::{ManualClock, MemorySink};
use consenter_runtime::{Plugin, RuntimeError};

/// The channel id the canary runs under.
pub const CANARY_CHANNEL: &str = "canary";

/// Why a plugin failed its canary.
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin} rejected by canary: {reason}")]
pub struct CanaryError {
    /// The plugin (consensus type).
    pub plugin: String,
    /// What failed, e.g. `start trapped: unreachable executed ...`.
    pub reason: String,
}

/// Runs the canary on `plugin`; Ok(how long it took).
pub fn run(plugin: &Plugin, signer: Arc<Signer>) -> Result<Duration, CanaryError> {
    let template = if plugin.world().is_clustered() {
        // A one-consenter etcdraft channel whose consenter is this node.
        let mut t = crate::simnet::sim_template(&crate::simnet::SimConfig { nodes: 1, ..Default::default() });
        t.channel_id = CANARY_CHANNEL.into();
        t
    } else {
        ChannelTemplate::solo(CANARY_CHANNEL)
    };
    let mut template = template;
    template.consensus_type = plugin.name().to_string();
    run_on(plugin, signer, &template)
}

/// Runs the canary on a channel made from `template` (tests choose its
/// consensus metadata).
pub fn run_on(plugin: &Plugin, signer: Arc<Signer>, template: &ChannelTemplate) -> Result<Duration, CanaryError> {
    let reject = |reason: String| CanaryError { plugin: plugin.name().to_string(), reason };
    let genesis = template.genesis_block();
    let config =
        ChannelConfig::from_config_block(&genesis).map_err(|e| reject(format!("building the canary channel: {e}")))?;
    let hash = genesis.header.as_ref().map(block::header_hash).unwrap_or_default();
    let sink = MemorySink::default();
    sink.0.lock().unwrap_or_else(|p| p.into_inner()).push(genesis.encode_to_vec().into());
    run_with(plugin, signer, Arc::new(config), sink, hash, false, None)
}

/// The check of a live swap's new plugin, before the update is ordered: the
/// canary on a new chain with `config` (the channel's config as the update
/// makes it, so metadata the plugin cannot use is caught), and between
/// `start` and `halt` one envelope offered and the batch timeout waited
/// out, so a plugin that traps at once is refused rather than swapped in.
/// A clustered plugin runs as a node that is none of the consenters; see
/// [`run_on_config_as`].
pub fn run_on_config(
    plugin: &Plugin,
    signer: Arc<Signer>,
    config: Arc<ChannelConfig>,
) -> Result<Duration, CanaryError> {
    run_with(plugin, signer, config, MemorySink::default(), block::Hash::default(), true, None)
}

/// [`run_on_config`] for a clustered plugin, run as the node whose TLS
/// certificate (DER) is `self_cert`: a swap to a clustered type checks the
/// new plugin as this node's member of the channel's consenter set (its
/// messages go nowhere; its storage is in memory and dropped).
pub fn run_on_config_as(
    plugin: &Plugin,
    signer: Arc<Signer>,
    config: Arc<ChannelConfig>,
    self_cert: Vec<u8>,
) -> Result<Duration, CanaryError> {
    run_with(plugin, signer, config, MemorySink::default(), block::Hash::default(), true, Some(self_cert))
}

fn run_with(
    plugin: &Plugin,
    signer: Arc<Signer>,
    config: Arc<ChannelConfig>,
    sink: MemorySink,
    hash: block::Hash,
    exercise: bool,
    self_cert: Option<Vec<u8>>,
) -> Result<Duration, CanaryError> {
    let t = Instant::now();
    let reject = |reason: String| CanaryError { plugin: plugin.name().to_string(), reason };
    let channel = config.channel_id.clone();
    let (sequence, timeout) = (config.sequence, config.batch_timeout);
    let clock = ManualClock::new();
    let mut support = Support::new(
        &channel,
        config,
        signer,
        Box::new(sink),
        clock.clone(),
        ChainPosition { height: 1, last_hash: hash, last_config: 0 },
        SupportLimits::default(),
    );
    if plugin.world().is_clustered() {
        // Cluster calls go nowhere; storage is in memory and dropped.
        let me = self_cert.unwrap_or_else(|| crate::simnet::sim_cert(0));
        support.set_cluster(Box::new(crate::simnet::NullCluster), Some(me));
        support.set_storage(Box::new(consenter_storage::MemStore::new(64 << 20)));
    }
    let mut instance = plugin.instantiate(support).map_err(|e| reject(describe("instantiate", e)))?;
    let failed = |instance: &consenter_runtime::Instance, step: &str| {
        instance.support().and_then(|s| s.failure()).map(|f| format!("{step} failed the chain: {f}"))
    };
    match instance.handle_chain(&[]) {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => return Err(reject(format!("handle-chain refused a new chain: {refusal}"))),
        Err(e) => return Err(reject(describe("handle-chain", e))),
    }
    if let Some(f) = failed(&instance, "handle-chain") {
        return Err(reject(f));
    }
    instance.start().map_err(|e| reject(describe("start", e)))?;
    if let Some(f) = failed(&instance, "start") {
        return Err(reject(f));
    }
    if exercise {
        let bytes = crate::conformance::test_envelope(&channel, "canary", 64);
        let mut env = crate::envelope::Envelope::parse(bytes).map_err(|e| reject(format!("the test envelope: {e}")))?;
        env.config_seq = sequence;
        instance.enqueue(vec![env]).map_err(|e| reject(describe("enqueue", e)))?;
        if let Some(f) = failed(&instance, "enqueue") {
            return Err(reject(f));
        }
        clock.advance(timeout + Duration::from_millis(1));
        let now = crate::support::Clock::now(&*clock);
        let due = instance.support_mut().map(|s| s.take_due_timers(now)).unwrap_or_default();
        for id in due {
            instance.on_timer(id).map_err(|e| reject(describe("on-timer", e)))?;
        }
        if let Some(f) = failed(&instance, "on-timer") {
            return Err(reject(f));
        }
    }
    instance.halt().map_err(|e| reject(describe("halt", e)))?;
    let took = t.elapsed();
    tracing::info!(plugin = %plugin.name(), us = took.as_micros() as u64, "plugin passed its canary");
    Ok(took)
}

fn describe(step: &str, e: RuntimeError) -> String {
    match e {
        RuntimeError::Trap { reason, .. } => format!("{step} trapped: {reason}"),
        RuntimeError::Instantiate { reason, .. } => format!("{step} failed: {reason}"),
        other => format!("{step} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consenter_runtime::{Limits, Runtime};
    use std::path::Path;

    fn signer(dir: &Path) -> Arc<Signer> {
        let id = crate::signer::ensure_dev_identity(dir).unwrap();
        Arc::new(Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap())
    }

    #[test]
    fn solo_passes() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime::new(Limits::default()).unwrap();
        let solo = rt.load("solo", consenter_test_plugins::SOLO).unwrap();
        run(&solo, signer(dir.path())).unwrap();
    }

    fn hostile(mode: &str, deadline: Duration) -> Result<Duration, CanaryError> {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(consenter_test_plugins::path("consenter_hostile.wasm")).unwrap();
        let rt = Runtime::new(Limits { call_deadline: deadline, ..Limits::default() }).unwrap();
        let p = rt.load("hostile", &bytes).unwrap();
        let mut t = ChannelTemplate::solo(CANARY_CHANNEL);
        t.consensus_type = "hostile".into();
        t.consensus_metadata = bytes::Bytes::from(mode.as_bytes().to_vec());
        run_on(&p, signer(dir.path()), &t)
    }

    #[test]
    fn traps_errors_and_timeouts_reject_with_the_reason() {
        // Well-behaved mode passes.
        hostile("", Duration::from_secs(1)).unwrap();
        for (mode, want) in [
            ("trap:start", "plugin hostile rejected by canary: start trapped: unreachable executed"),
            ("panic:handle-chain", "rejected by canary: handle-chain trapped: unreachable"),
            ("trap:halt", "rejected by canary: halt trapped"),
            ("loop:start", "rejected by canary: start trapped: call deadline exceeded"),
        ] {
            let err = hostile(mode, Duration::from_millis(100)).unwrap_err().to_string();
            assert!(err.contains(want), "{mode}: {err}");
        }
    }

    #[test]
    fn raft_passes_on_a_one_consenter_channel() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(consenter_test_plugins::path("consenter_raft.wasm")).unwrap();
        let rt = Runtime::new(Limits::default()).unwrap();
        let raft = rt.load("etcdraft", &bytes).unwrap();
        assert!(raft.world().is_clustered());
        run(&raft, signer(dir.path())).unwrap();
    }

    #[test]
    fn a_plugin_trapping_in_start_is_rejected_with_the_default_channel() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(consenter_test_plugins::path("consenter_hostile_canary.wasm")).unwrap();
        let rt = Runtime::new(Limits::default()).unwrap();
        let p = rt.load("bad", &bytes).unwrap();
        let err = run(&p, signer(dir.path())).unwrap_err().to_string();
        assert!(err.starts_with("plugin bad rejected by canary: start trapped: unreachable"), "{err}");
    }
}
