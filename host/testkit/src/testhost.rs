//! A deterministic test host for consenter plugins: the real runtime and
//! native support, with a hand-moved clock and blocks collected in memory
//! instead of a ledger. The same plugin bytes that run in a node run here;
//! a test feeds events and moves time explicitly. May touch nothing outside
//! memory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use crate::block;
use crate::channel::{ChannelConfig, ChannelTemplate};
use crate::envelope::Envelope;
use crate::proto::common::Block;
use crate::signer::Signer;
use crate::support::{BlockSink, ChainPosition, Clock, OnDurable, Support, SupportLimits};
use consenter_runtime::chain_core::{ChainCore, EnqueueError};
use consenter_runtime::status::ChainStatus;
use consenter_runtime::{Plugin, RuntimeError};

/// A clock moved only by the test.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A clock at an arbitrary origin.
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock { start: Instant::now(), offset: Mutex::new(Duration::ZERO) })
    }

    /// Moves time forward.
    pub fn advance(&self, d: Duration) {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner()) += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Blocks written by the plugin, in order.
#[derive(Clone, Default)]
pub struct MemorySink(pub Arc<Mutex<Vec<Bytes>>>);

impl BlockSink for MemorySink {
    fn write(&mut self, _number: u64, block: Bytes, on_durable: Option<OnDurable>) -> Result<(), String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(block);
        // In memory, a block is "durable" once stored.
        if let Some(f) = on_durable {
            f();
        }
        Ok(())
    }
}

/// Where a chain resumes from the blocks of an in-memory ledger (genesis
/// first): the config of its last config block, its position after the
/// last block, and that block's consenter metadata (what a node reads from
/// its ledger at a restart). `who` names the caller in errors.
pub(crate) fn resume_point(
    blocks: &[Block],
    who: &str,
) -> Result<(ChannelConfig, ChainPosition, Vec<u8>), RuntimeError> {
    let last = blocks.last().ok_or_else(|| RuntimeError::Engine(format!("{who}: empty ledger")))?;
    let (last_config, metadata) = block::last_config_and_metadata(last);
    let last_config = if blocks.len() == 1 { 0 } else { last_config };
    let config_block = blocks.get(last_config as usize).unwrap_or(&blocks[0]);
    let config = ChannelConfig::from_config_block(config_block)
        .map_err(|e| RuntimeError::Engine(format!("{who}: config block {last_config}: {e}")))?;
    let pos = ChainPosition {
        height: blocks.len() as u64,
        last_hash: last.header.as_ref().map(block::header_hash).unwrap_or_default(),
        last_config,
    };
    Ok((config, pos, metadata))
}

/// A plugin running on one in-memory chain.
pub struct TestHost {
    core: ChainCore,
    plugin: Plugin,
    signer: Arc<Signer>,
    clock: Arc<ManualClock>,
    blocks: MemorySink,
    status: Arc<ChainStatus>,
    seen: usize,
}

impl TestHost {
    /// Starts `plugin` on a new chain made from `template` (its genesis
    /// block is block 0 in memory; the plugin starts at height 1).
    pub fn start(plugin: &Plugin, template: &ChannelTemplate, signer: Arc<Signer>) -> Result<TestHost, RuntimeError> {
        Self::start_from_genesis(plugin, template.genesis_block(), signer)
    }

    /// Starts `plugin` on a new chain whose block 0 is `genesis` (e.g. a
    /// configtxgen genesis block of a channel with organizations and
    /// policies).
    pub fn start_from_genesis(plugin: &Plugin, genesis: Block, signer: Arc<Signer>) -> Result<TestHost, RuntimeError> {
        let config = ChannelConfig::from_config_block(&genesis)
            .map_err(|e| RuntimeError::Engine(format!("test host: bad template: {e}")))?;
        let hash = genesis.header.as_ref().map(block::header_hash).unwrap_or_default();
        let clock = ManualClock::new();
        let blocks = MemorySink::default();
        blocks.0.lock().unwrap_or_else(|p| p.into_inner()).push(genesis.encode_to_vec().into());
        let channel = config.channel_id.clone();
        let support = Support::new(
            &channel,
            Arc::new(config),
            signer.clone(),
            Box::new(blocks.clone()),
            clock.clone(),
            ChainPosition { height: 1, last_hash: hash, last_config: 0 },
            SupportLimits::default(),
        );
        let status = Arc::new(ChainStatus::default());
        let core = ChainCore::start(plugin, support, &[], status.clone())?;
        Ok(TestHost { core, plugin: plugin.clone(), signer, clock, blocks, status, seen: 1 })
    }

    /// Halts the instance and starts a new one of the same plugin from the
    /// blocks written so far, as a node does after a restart: the last
    /// block's consenter metadata to `handle-chain`, the config of the last
    /// config block, the chain's position after the last block. What the
    /// old instance had pending (not in a block) is gone.
    pub fn restart(&mut self) -> Result<(), RuntimeError> {
        self.restart_with(&self.plugin.clone())
    }

    /// [`restart`](Self::restart) with another plugin (a new build of it).
    pub fn restart_with(&mut self, plugin: &Plugin) -> Result<(), RuntimeError> {
        self.core.halt();
        let (config, pos, metadata) = resume_point(&self.blocks(), "test host")?;
        let mut support = Support::new(
            &config.channel_id.clone(),
            Arc::new(config),
            self.signer.clone(),
            Box::new(self.blocks.clone()),
            self.clock.clone(),
            pos,
            SupportLimits::default(),
        );
        support.set_last_metadata(metadata.clone());
        self.status = Arc::new(ChainStatus::default());
        self.core = ChainCore::start(plugin, support, &metadata, self.status.clone())?;
        self.plugin = plugin.clone();
        Ok(())
    }

    /// Submits a CONFIG_UPDATE envelope as Broadcast does: it is checked and
    /// applied to the current config, and the resulting CONFIG envelope is
    /// offered to the plugin. Err says why it was refused or not accepted.
    pub fn submit_config_update(&mut self, update: Bytes) -> Result<(), String> {
        let cfg = self.status.config().ok_or("the chain has no config")?;
        let env = Envelope::parse(update.clone()).map_err(|e| e.to_string())?;
        let pb = crate::proto::common::Envelope::decode(update).map_err(|e| e.to_string())?;
        let types = vec![cfg.consensus_type.clone()];
        let config_env = consenter_runtime::processor::config_update(&cfg, &self.signer, &pb, &env, &types)
            .map_err(|e| e.to_string())?;
        self.core.enqueue(config_env).map_err(|e| e.to_string())
    }

    /// The CONFIG envelope a CONFIG_UPDATE makes (checked and applied to
    /// the current config as Broadcast does), with `types` the consensus
    /// types the update may name; not offered to the plugin.
    pub fn config_envelope(&self, update: Bytes, types: &[String]) -> Result<Envelope, String> {
        let cfg = self.status.config().ok_or("the chain has no config")?;
        let env = Envelope::parse(update.clone()).map_err(|e| e.to_string())?;
        let pb = crate::proto::common::Envelope::decode(update).map_err(|e| e.to_string())?;
        consenter_runtime::processor::config_update(&cfg, &self.signer, &pb, &env, types).map_err(|e| e.to_string())
    }

    /// Offers envelopes as Broadcast's checks left them, in one plugin
    /// call; one answer each.
    pub fn enqueue_many_validated(&mut self, envs: Vec<Envelope>) -> Vec<Result<(), EnqueueError>> {
        self.core.enqueue_many(envs)
    }

    /// The consensus type of the config in force (a config block the plugin
    /// wrote may have changed it: a node then swaps plugins).
    pub fn consensus_type(&self) -> Option<&str> {
        self.core.consensus_type()
    }

    /// Takes what the host's cutter holds for the plugin (what a live swap
    /// hands to the next plugin).
    pub fn take_pending(&mut self) -> Vec<Envelope> {
        self.core.take_pending()
    }

    /// What the instance holds of the host now (None once it trapped).
    pub fn resources(&self) -> Option<consenter_runtime::Resources> {
        self.core.resources()
    }

    /// The config sequence now.
    pub fn sequence(&self) -> u64 {
        self.status.sequence()
    }

    /// Virtual time now.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Offers an envelope (parsed from its bytes), validated under the
    /// current config sequence, as Broadcast would have.
    pub fn enqueue(&mut self, env: Bytes) -> Result<(), EnqueueError> {
        let mut e = Envelope::parse(env)
            .map_err(|e| EnqueueError::Errored { channel: self.core.channel().into(), reason: e.to_string() })?;
        e.config_seq = self.status.sequence();
        self.core.enqueue(e)
    }

    /// Offers an envelope as Broadcast's checks left it: with the config
    /// sequence it was validated under (`config_seq`), which the host
    /// never changes.
    pub fn enqueue_validated(&mut self, env: Envelope) -> Result<(), EnqueueError> {
        self.core.enqueue(env)
    }

    /// The channel's config now (after the config blocks written so far).
    pub fn config(&self) -> Option<Arc<ChannelConfig>> {
        self.status.config()
    }

    /// Offers several envelopes in one plugin call (as the node does with
    /// envelopes that queued up); one answer each.
    pub fn enqueue_many(&mut self, envs: Vec<Bytes>) -> Vec<Result<(), EnqueueError>> {
        let mut parsed = Vec::with_capacity(envs.len());
        for e in envs {
            match Envelope::parse(e) {
                Ok(mut e) => {
                    e.config_seq = self.status.sequence();
                    parsed.push(e)
                }
                Err(e) => {
                    return vec![Err(EnqueueError::Errored {
                        channel: self.core.channel().into(),
                        reason: e.to_string(),
                    })];
                }
            }
        }
        self.core.enqueue_many(parsed)
    }

    /// Moves time by `d`, firing the timers that fall due, in order.
    pub fn advance(&mut self, d: Duration) {
        let target = self.clock.now() + d;
        while let Some(deadline) = self.core.next_deadline() {
            if deadline > target {
                break;
            }
            let now = self.clock.now();
            if deadline > now {
                self.clock.advance(deadline - now);
            }
            self.core.fire_timers(deadline);
        }
        let now = self.clock.now();
        if target > now {
            self.clock.advance(target - now);
        }
    }

    /// The earliest armed timer, relative to now.
    pub fn next_timer_in(&self) -> Option<Duration> {
        self.core.next_deadline().map(|d| d.saturating_duration_since(self.clock.now()))
    }

    /// Every block so far, genesis included.
    pub fn blocks(&self) -> Vec<Block> {
        let v = self.blocks.0.lock().unwrap_or_else(|p| p.into_inner());
        v.iter().filter_map(|b| Block::decode(b.clone()).ok()).collect()
    }

    /// Blocks written since the last call.
    pub fn new_blocks(&mut self) -> Vec<Block> {
        let all = self.blocks();
        let new = all[self.seen.min(all.len())..].to_vec();
        self.seen = all.len();
        new
    }

    /// Why the chain is errored, if it is.
    pub fn errored(&self) -> Option<String> {
        self.status.errored()
    }

    /// Halts the plugin.
    pub fn halt(&mut self) {
        self.core.halt();
    }
}
