//! Native ConsenterSupport, as a state machine that knows nothing of
//! wasmtime: the block cutter, block creation and writing (signed, Fabric v2
//! metadata), the checks Fabric's block writer and message processor make
//! on every write (see `Support::try_write`), shared config, the signer,
//! timers and log rate limits, for one chain. The import glue (`glue/`)
//! turns plugin calls into calls on it. May touch nothing but the
//! [`BlockSink`] it writes blocks to and the [`Clock`] it reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use crate::block::{self, Hash};
use crate::channel::ChannelConfig;
use crate::cluster::{ClusterSink, Membership};
use crate::cutter::BlockCutter;
use crate::envelope::Envelope;
use crate::proto::common::Block;
use crate::signer::Signer;
use consenter_storage::KvStore;

/// Why the support refused a call. The plugin may recover from any of
/// these; the chain keeps running unless the plugin calls `fail` (the
/// contract's `support-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupportError {
    /// A block was not the next one, or a handle was used after it was
    /// consumed.
    #[error("out of order: {0}")]
    OutOfOrder(String),
    /// An argument exceeded a host limit.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The argument is malformed or breaks an ordering rule.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The host could not complete the call; the chain is about to err.
    #[error("internal: {0}")]
    Internal(String),
}

/// A block made by [`Support::create_block`], not yet written: the
/// host value behind a plugin's block handle.
pub struct CreatedBlock {
    pub(crate) block: Block,
    pub(crate) number: u64,
    pub(crate) hash: Hash,
    pub(crate) contents: Contents,
}

/// What the host knows of the envelopes in a block it created: enough to
/// enforce Fabric's message-class and revalidation rules when the plugin
/// writes it, whatever the plugin says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Contents {
    /// Envelopes in the block.
    pub(crate) count: usize,
    /// Their marshalled bytes.
    pub(crate) bytes: u64,
    /// The lowest config sequence they were validated under.
    pub(crate) min_seq: u64,
    /// The header type of the first envelope that is not a normal message
    /// (CONFIG, ORDERER_TRANSACTION, CONFIG_UPDATE), and its index.
    pub(crate) special: Option<(usize, i32)>,
}

impl Contents {
    pub(crate) fn of(envs: &[Envelope]) -> Contents {
        use crate::proto::common::HeaderType as H;
        let mut c = Contents { count: envs.len(), bytes: 0, min_seq: u64::MAX, special: None };
        for (i, e) in envs.iter().enumerate() {
            c.bytes += e.bytes.len() as u64;
            c.min_seq = c.min_seq.min(e.config_seq);
            let t = e.header_type;
            if c.special.is_none()
                && (t == H::Config as i32 || t == H::OrdererTransaction as i32 || t == H::ConfigUpdate as i32)
            {
                c.special = Some((i, t));
            }
        }
        c
    }
}

/// FNV-1a of `b` (a default random seed that depends on the channel).
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3))
}

/// The name of a header type, for messages.
fn header_type_name(t: i32) -> String {
    crate::proto::common::HeaderType::try_from(t).map(|h| h.as_str_name().to_string()).unwrap_or(format!("type {t}"))
}

/// The default held-bytes budget of a chain: 64 MiB, or four of the
/// channel's largest messages and batches if that is more.
pub fn default_held_budget(bs: &crate::proto::orderer::BatchSize) -> usize {
    let per = u64::from(bs.absolute_max_bytes).max(u64::from(bs.preferred_max_bytes));
    (64usize << 20).max(usize::try_from(per.saturating_mul(4)).unwrap_or(usize::MAX))
}

/// Called on the ledger writer's thread once a block is durable (fsync).
pub type OnDurable = Box<dyn FnOnce() + Send>;

/// Where written blocks go: the chain's ledger writer in a node, a vector
/// in the deterministic test host.
pub trait BlockSink: Send {
    /// Queue a signed, marshalled block for the ledger. Err means the chain
    /// can no longer write (it is marked errored). `on_durable`, if any,
    /// runs once the block is durable (never if it is not written).
    fn write(&mut self, number: u64, block: Bytes, on_durable: Option<OnDurable>) -> Result<(), String>;
}

/// The time source of timers: the wall clock in a node, a hand-moved clock
/// in the test host.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Instant;
}

/// The wall clock.
pub struct SystemClock;
impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The shortest timer delay (shorter delays are raised to it).
pub const MIN_TIMER_DELAY: Duration = Duration::from_millis(1);

/// Caps on what a plugin may ask of the host.
#[derive(Debug, Clone)]
pub struct SupportLimits {
    /// Most timers armed at once.
    pub max_timers: usize,
    /// Longest timer delay.
    pub max_timer_delay: Duration,
    /// Largest consenter metadata stored with a block (per plugin type:
    /// `max-metadata-kib`). A block's metadata may also be at most its
    /// envelopes' bytes plus [`METADATA_SLACK`].
    pub max_metadata_bytes: usize,
    /// Most ledger bytes the chain may write per minute (a token bucket
    /// holding one minute's worth; per plugin type: `disk-mib-per-minute`).
    pub disk_bytes_per_minute: u64,
    /// Most bytes the chain's ledger may hold in all (per plugin type:
    /// `disk-mib-total`; `u64::MAX`: no cap).
    pub disk_bytes_total: u64,
    /// Longest log line (longer lines are truncated).
    pub max_log_bytes: usize,
    /// Log lines a plugin may write per second (burst: twice that); the
    /// rest are dropped and counted.
    pub max_log_lines_per_sec: u32,
    /// Refused calls tolerated before the chain is failed.
    pub max_refusals: u32,
}

/// Consenter metadata a block may carry beyond its envelopes' own bytes
/// (raft's is tens of bytes): a plugin cannot amplify small envelopes into
/// large blocks.
pub const METADATA_SLACK: usize = 1024;

impl Default for SupportLimits {
    fn default() -> Self {
        SupportLimits {
            max_timers: 64,
            max_timer_delay: crate::channel::MAX_BATCH_TIMEOUT,
            max_metadata_bytes: 16 << 10,
            disk_bytes_per_minute: 4 << 30,
            disk_bytes_total: u64::MAX,
            max_log_bytes: 4096,
            max_log_lines_per_sec: 100,
            max_refusals: 1000,
        }
    }
}

/// The native ConsenterSupport of one chain.
pub struct Support {
    pub(crate) chain_id: String,
    pub(crate) config: Arc<ChannelConfig>,
    pub(crate) cutter: BlockCutter<Envelope>,
    /// Fabric's block fill time of the cutter (a metric).
    pub(crate) fill: crate::observe::FillTimer,
    pub(crate) signer: Arc<Signer>,
    pub(crate) sink: Box<dyn BlockSink>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) limits: SupportLimits,
    /// Blocks written (queued to the sink).
    pub(crate) height: u64,
    /// Header hash of the last written block.
    pub(crate) last_hash: Hash,
    /// Number and header hash of the last created block (the next created
    /// block links to it; reset to the last written on a refused write).
    pub(crate) created: (u64, Hash),
    pub(crate) last_config: u64,
    pub(crate) timers: BTreeMap<u32, Instant>,
    pub(crate) failed: Option<String>,
    /// Whether the failure is the host's (ledger, signer), not the plugin's.
    pub(crate) host_fault: bool,
    pub(crate) refusals: u32,
    /// Envelopes in the blocks written so far by this Support.
    pub(crate) written_envelopes: u64,
    /// Envelopes handed to another member with `cluster.forward`.
    pub(crate) forwarded_envelopes: u64,
    /// Log rate limit: tokens left, when they were last refilled, and how
    /// many lines were dropped since the last one written.
    pub(crate) log_tokens: f64,
    pub(crate) log_refilled: Instant,
    pub(crate) log_dropped: u64,
    pub(crate) channel_creator: Option<ChannelCreator>,
    /// Bytes in the chain's ledger (including what was queued).
    pub(crate) disk_used: u64,
    /// The consensus types this node has plugins for (what a config update
    /// may name).
    pub(crate) types: Vec<String>,
    /// Disk budget: bytes that may still be written in the current minute
    /// (a token bucket) and when it was last refilled.
    pub(crate) disk_tokens: f64,
    pub(crate) disk_refilled: Instant,
    /// Where a clustered chain's messages go (None: a single-node chain).
    pub(crate) cluster: Option<Box<dyn ClusterSink>>,
    /// The consenters' ids as the plugin bound them, and this node's cert.
    pub(crate) membership: Membership,
    /// The plugin's durable key-value state (None: not granted).
    pub(crate) storage: Option<Box<dyn KvStore>>,
    /// Consenter metadata of the last written block.
    pub(crate) last_metadata: Vec<u8>,
    /// A written config block changed the consenter set; cleared once the
    /// plugin is told (`on-consenters-changed`).
    pub(crate) consenters_changed: bool,
    /// Seed of the plugin's `wasi:random` generator.
    pub(crate) random_seed: u64,
    /// What the plugin last reported of the cluster (`cluster.report`).
    pub(crate) cluster_report: Option<ClusterReport>,
}

/// What a clustered plugin reports of its cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterReport {
    /// This node's id (0: not bound).
    pub self_id: u64,
    /// The leader's id (0: none known).
    pub leader: u64,
    /// Members this node hears from.
    pub active: Vec<u64>,
}

/// Where a chain resumes: its height, last header hash and last config
/// block number.
#[derive(Debug, Clone, Copy)]
pub struct ChainPosition {
    pub height: u64,
    pub last_hash: Hash,
    pub last_config: u64,
}

impl Support {
    /// Support for `chain_id` resuming at `pos`.
    pub fn new(
        chain_id: &str,
        config: Arc<ChannelConfig>,
        signer: Arc<Signer>,
        sink: Box<dyn BlockSink>,
        clock: Arc<dyn Clock>,
        pos: ChainPosition,
        limits: SupportLimits,
    ) -> Support {
        let log_tokens = f64::from(limits.max_log_lines_per_sec) * 2.0;
        let log_refilled = clock.now();
        let types = vec![config.consensus_type.clone()];
        Support {
            chain_id: chain_id.to_string(),
            config,
            cutter: BlockCutter::default(),
            fill: crate::observe::FillTimer::new(chain_id),
            signer,
            sink,
            clock,
            height: pos.height,
            last_hash: pos.last_hash,
            created: (pos.height, pos.last_hash),
            last_config: pos.last_config,
            timers: BTreeMap::new(),
            failed: None,
            host_fault: false,
            refusals: 0,
            written_envelopes: 0,
            forwarded_envelopes: 0,
            log_tokens,
            log_refilled,
            log_dropped: 0,
            channel_creator: None,
            disk_used: 0,
            types,
            disk_tokens: limits.disk_bytes_per_minute as f64,
            disk_refilled: log_refilled,
            limits,
            cluster: None,
            membership: Membership::default(),
            storage: None,
            last_metadata: Vec::new(),
            consenters_changed: false,
            random_seed: fnv1a(chain_id.as_bytes()),
            cluster_report: None,
        }
    }

    /// Seeds the plugin's `wasi:random` generator (default: from the
    /// channel id). A node seeds it from the OS; the test host from its
    /// schedule's seed, so a run is reproducible.
    pub fn set_random_seed(&mut self, seed: u64) {
        self.random_seed = seed;
    }

    /// The seed of the plugin's `wasi:random` generator.
    pub fn random_seed(&self) -> u64 {
        self.random_seed
    }

    /// Makes this the support of a clustered chain: messages, forwards and
    /// catch-up requests go to `sink`; `self_cert` (DER) is this node's TLS
    /// certificate, which finds it among the channel's consenters.
    pub fn set_cluster(&mut self, mut sink: Box<dyn ClusterSink>, self_cert: Option<Vec<u8>>) {
        sink.set_height(self.height);
        self.cluster = Some(sink);
        self.membership = Membership::new(self_cert);
    }

    /// Pulls blocks from the other consenters up to `target` (the host's
    /// own catch-up, when a member shows that the chain went on without
    /// this node: it runs another consensus type at a greater height).
    /// The blocks come back through `ChainCore::write_pulled`. Ok without
    /// a cluster or when the ledger is that high already.
    pub fn catch_up_to(&mut self, target: u64) -> Result<(), String> {
        let height = self.height;
        match self.cluster.as_mut() {
            Some(c) if target > height => c.catch_up_claimed(height, target),
            _ => Ok(()),
        }
    }

    /// Grants the plugin durable key-value state.
    pub fn set_storage(&mut self, store: Box<dyn KvStore>) {
        self.storage = Some(store);
    }

    /// The consenter metadata of the last block (where the chain resumes).
    pub fn set_last_metadata(&mut self, metadata: Vec<u8>) {
        self.last_metadata = metadata;
    }

    /// The consenter metadata of the last written block.
    pub fn last_metadata(&self) -> &[u8] {
        &self.last_metadata
    }

    /// Takes the "consenter set changed" flag.
    pub fn take_consenters_changed(&mut self) -> bool {
        std::mem::take(&mut self.consenters_changed)
    }

    /// What the plugin last reported of its cluster.
    pub fn cluster_report(&self) -> Option<&ClusterReport> {
        self.cluster_report.as_ref()
    }

    /// Drops from the plugin's binding the members that left the consenter
    /// set, once their grace is over and the plugin has not bound the new
    /// set (a plugin cannot keep a removed consenter in the channel); tells
    /// the cluster transport. Called before every timer and message.
    pub fn expire_departed(&mut self) {
        if !self.membership.has_departing() {
            return;
        }
        let now = self.clock.now();
        if let Some((me, members)) = self.membership.expire_departed(&self.config.consenters, now) {
            tracing::warn!(
                channel = %self.chain_id,
                members = ?members.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                "the plugin did not bind the new consenter set within the grace: members that left are no longer bound"
            );
            if let Some(c) = self.cluster.as_mut() {
                c.set_members(me, &members);
            }
        }
    }

    /// The membership (ids bound by the plugin).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// A block made by another consenter, from its bytes, as a handle to
    /// write (`replication.block-from-bytes`): it must be the next block to
    /// write (height), link to the last written block, have the data hash of its data
    /// and envelopes that parse, for this channel. Its envelopes count as
    /// validated under the current sequence (the leader's host validated
    /// them); a config envelope's config must be what its last update gives
    /// on the current config (Fabric's `Validate`). Its metadata (the other
    /// node's signatures) is dropped: writing signs it anew.
    pub fn block_from_bytes(&mut self, bytes: Bytes) -> Result<CreatedBlock, SupportError> {
        let r = self.parse_foreign_block(bytes);
        match r {
            Ok(b) => {
                self.created = (b.number + 1, b.hash);
                Ok(b)
            }
            Err(e) => Err(self.refuse(e)),
        }
    }

    fn parse_foreign_block(&self, bytes: Bytes) -> Result<CreatedBlock, SupportError> {
        use SupportError as E;
        let b = Block::decode(bytes).map_err(|e| E::Invalid(format!("not a common.Block: {e}")))?;
        let header = b.header.as_ref().ok_or_else(|| E::Invalid("the block has no header".into()))?;
        let n = header.number;
        // The next block to write: blocks this node created and did not
        // write (a leader that lost its leadership) are void.
        let (next, prev) = (self.height, self.last_hash);
        if n != next || (n > 0 && header.previous_hash.as_ref() != prev) {
            return Err(E::OutOfOrder(format!(
                "block {n} is not the next block: that is {next}, linking to {}",
                block::hex(&prev)
            )));
        }
        block::check_data_hash(&b).map_err(|e| E::Invalid(format!("block {n}: {e}")))?;
        let data = b.data.map(|d| d.data).unwrap_or_default();
        let mut envs = Vec::with_capacity(data.len());
        for (i, d) in data.iter().enumerate() {
            let mut e = Envelope::parse(d.clone()).map_err(|e| E::Invalid(format!("block {n}: envelope {i}: {e}")))?;
            if e.channel_id != self.chain_id {
                return Err(E::Invalid(format!(
                    "block {n}: envelope {i} is for channel {}, not {}",
                    e.channel_id, self.chain_id
                )));
            }
            e.config_seq = self.config.sequence;
            envs.push(e);
        }
        let contents = Contents::of(&envs);
        if let Some((i, t)) = contents.special {
            use crate::proto::common::HeaderType as H;
            if t != H::Config as i32 || envs.len() != 1 {
                return Err(E::Invalid(format!(
                    "block {n}: envelope {i} is a {} message, which another consenter's block may only hold as \
                     the one CONFIG envelope of a config block",
                    header_type_name(t)
                )));
            }
            crate::processor::verify_config(&self.config, &envs[0], &self.types)
                .map_err(|e| E::Invalid(format!("config block {n}: {e}")))?;
        }
        let blk = block::new_block(n, &header.previous_hash, data);
        let hash = blk.header.as_ref().map(block::header_hash).unwrap_or_default();
        Ok(CreatedBlock { block: blk, number: n, hash, contents })
    }

    /// Writes a block pulled from another consenter during catch-up (the
    /// puller verified its signatures against the channel's BlockValidation
    /// policy): the same checks as `block_from_bytes`, then written as its
    /// class requires, signed by this node, with the consenter metadata the
    /// block carried.
    pub fn write_pulled(&mut self, bytes: Bytes) -> Result<(), SupportError> {
        let b = Block::decode(bytes.clone()).map_err(|e| SupportError::Invalid(format!("not a common.Block: {e}")))?;
        let (_, metadata) = block::last_config_and_metadata(&b);
        // Pulled blocks continue the ledger: anything created and not
        // written is void.
        self.created = (self.height, self.last_hash);
        let blk = self.block_from_bytes(bytes)?;
        let is_config = blk.contents.special.is_some();
        self.write(blk, &metadata, is_config)
    }

    /// The consensus types this node has plugins for (named in the refusal
    /// of a config update that changes the type). Default: the channel's
    /// own type only.
    pub fn set_consensus_types(&mut self, types: Vec<String>) {
        self.types = types;
    }

    /// Tells the support how many bytes the chain's ledger holds already
    /// (for the total disk budget).
    pub fn set_disk_used(&mut self, bytes: u64) {
        self.disk_used = bytes;
    }

    /// The channel id.
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// The current channel config.
    pub fn config(&self) -> &Arc<ChannelConfig> {
        &self.config
    }

    /// Blocks written so far.
    pub fn height(&self) -> u64 {
        self.height
    }

    /// Why the chain failed, if the plugin or the host failed it.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Whether the failure (if any) is the host's (ledger or signer), not
    /// the plugin's: a restart policy does not apply to it.
    pub fn host_fault(&self) -> bool {
        self.host_fault
    }

    /// Envelopes in the blocks written through this Support.
    pub fn written_envelopes(&self) -> u64 {
        self.written_envelopes
    }

    /// Envelopes forwarded to another member (`cluster.forward`): ordered
    /// there, not here.
    pub fn forwarded_envelopes(&self) -> u64 {
        self.forwarded_envelopes
    }

    /// Marks the chain failed because of the plugin (first reason wins).
    pub fn fail(&mut self, reason: String) {
        if self.failed.is_none() {
            tracing::error!(channel = %self.chain_id, %reason, "chain failed");
            self.failed = Some(reason);
        }
    }

    /// Marks the chain failed because of the host (first reason wins).
    pub(crate) fn fail_host(&mut self, reason: String) {
        if self.failed.is_none() {
            self.host_fault = true;
        }
        self.fail(reason);
    }

    /// Where the chain is: the next block's number, the last written
    /// block's hash, the last config block.
    pub fn position(&self) -> ChainPosition {
        ChainPosition { height: self.height, last_hash: self.last_hash, last_config: self.last_config }
    }

    /// Ends the support, returning its block sink (a live swap gives it to
    /// the next plugin's support: blocks keep one writer, in order).
    pub fn into_sink(self) -> Box<dyn BlockSink> {
        self.sink
    }

    /// Takes what the cutter holds (accepted, not yet in a batch), in
    /// order: what a live swap hands to the next plugin.
    pub fn take_pending(&mut self) -> Vec<Envelope> {
        self.cutter.cut()
    }

    /// Timers armed now.
    pub fn armed_timers(&self) -> usize {
        self.timers.len()
    }

    /// Calls refused so far.
    pub fn refusals(&self) -> u32 {
        self.refusals
    }

    /// The earliest armed timer deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.values().min().copied()
    }

    /// Disarms and returns the timers due at `now`, earliest first.
    pub fn take_due_timers(&mut self, now: Instant) -> Vec<u32> {
        let mut due: Vec<(Instant, u32)> =
            self.timers.iter().filter(|(_, d)| **d <= now).map(|(id, d)| (*d, *id)).collect();
        due.sort();
        for (_, id) in &due {
            self.timers.remove(id);
        }
        due.into_iter().map(|(_, id)| id).collect()
    }

    pub(crate) fn refuse(&mut self, e: SupportError) -> SupportError {
        self.refusals += 1;
        tracing::warn!(channel = %self.chain_id, error = ?e, "plugin call refused");
        if self.refusals == self.limits.max_refusals {
            self.fail(format!("plugin made {} refused calls; last: {e:?}", self.refusals));
        }
        e
    }

    /// Blocks created and not written are void: the next
    /// `create-next-block` follows the last written block.
    pub fn void_created(&mut self) {
        self.created = (self.height, self.last_hash);
    }

    /// Writes a block; on a refusal the block creator goes back to the last
    /// written block (what was created after it can no longer be written).
    pub(crate) fn write(&mut self, blk: CreatedBlock, metadata: &[u8], is_config: bool) -> Result<(), SupportError> {
        let r = self.try_write(blk, metadata, is_config);
        if r.is_err() {
            self.created = (self.height, self.last_hash);
        }
        r
    }

    fn try_write(&mut self, blk: CreatedBlock, metadata: &[u8], is_config: bool) -> Result<(), SupportError> {
        use SupportError as E;
        if self.failed.is_some() {
            return Err(E::Internal(format!("channel {} has failed; no more blocks are written", self.chain_id)));
        }
        let n = blk.number;
        if metadata.len() > self.limits.max_metadata_bytes {
            return Err(self.refuse(E::LimitExceeded(format!(
                "block {n}: consenter metadata of {} bytes is over the limit of {} (max-metadata-kib)",
                metadata.len(),
                self.limits.max_metadata_bytes
            ))));
        }
        if metadata.len() as u64 > blk.contents.bytes + METADATA_SLACK as u64 {
            return Err(self.refuse(E::LimitExceeded(format!(
                "block {n}: consenter metadata of {} bytes is more than the block's {} bytes of envelopes plus \
                 {METADATA_SLACK}",
                metadata.len(),
                blk.contents.bytes
            ))));
        }
        let prev = blk.block.header.as_ref().map(|h| h.previous_hash.clone()).unwrap_or_default();
        if n != self.height || (self.height > 0 && prev.as_ref() != self.last_hash) {
            return Err(self.refuse(E::OutOfOrder(format!(
                "block {n} is not the next block: height is {}, expected previous hash {}",
                self.height,
                block::hex(&self.last_hash)
            ))));
        }
        let applied = if is_config {
            match self.check_config_block(&blk) {
                Ok(a) => a,
                Err(e) => return Err(self.refuse(e)),
            }
        } else {
            if let Err(e) = self.check_normal_block(&blk) {
                return Err(self.refuse(e));
            }
            Applied::Nothing
        };
        let mut b = blk.block;
        let last_config = if matches!(applied, Applied::Config(_)) { n } else { self.last_config };
        let env_count = blk.contents.count as u64;
        if let Err(e) = block::sign_block(&mut b, last_config, metadata, &self.signer) {
            let msg = e.to_string();
            self.fail_host(msg.clone());
            return Err(E::Internal(msg));
        }
        let bytes: Bytes = b.encode_to_vec().into();
        if let Err(reason) = self.spend_disk(n, bytes.len() as u64) {
            // The plugin's writes, not the host: the restart policy applies.
            self.fail(reason.clone());
            return Err(E::LimitExceeded(reason));
        }
        // A channel made by this block is created once the block is
        // durable, on the ledger writer's thread (not on the plugin's
        // call, and never from a block that was lost).
        let on_durable: Option<OnDurable> = match (&applied, &self.channel_creator) {
            (Applied::Channel(genesis), Some(create)) => {
                let (create, genesis, channel, number) = (create.clone(), genesis.clone(), self.chain_id.clone(), n);
                Some(Box::new(move || {
                    if let Err(e) = create(genesis) {
                        tracing::error!(channel = %channel, block = number, error = %e, "creating a channel");
                    }
                }))
            }
            _ => None,
        };
        if let Err(e) = self.sink.write(n, bytes, on_durable) {
            let msg = format!("writing block {n} to the ledger: {e}");
            self.fail_host(msg.clone());
            return Err(E::Internal(msg));
        }
        self.height += 1;
        if let Some(c) = self.cluster.as_mut() {
            c.set_height(self.height);
        }
        self.written_envelopes += env_count;
        self.last_hash = blk.hash;
        if self.created.0 < self.height {
            // Written past what was created (after a refusal reset it).
            self.created = (self.height, self.last_hash);
        }
        self.last_config = last_config;
        self.last_metadata = metadata.to_vec();
        if let Applied::Config(c) = applied {
            tracing::info!(channel = %self.chain_id, block = n, sequence = c.sequence, "config applied");
            if c.consenters != self.config.consenters {
                // The plugin's ids named the old set: it binds the new
                // one when it is ready (the old binding stays meanwhile,
                // for members that left at most DEPARTED_GRACE).
                self.consenters_changed = true;
                self.membership.consenters_changed(&c.consenters, self.clock.now());
            }
            self.config = Arc::new(*c);
        }
        Ok(())
    }

    /// Fabric's message classes for a normal block: at least one envelope
    /// (Fabric's consenters never write an empty block), no config message
    /// (CONFIG, ORDERER_TRANSACTION, CONFIG_UPDATE), and every envelope
    /// validated under the current config sequence (revalidated since, if
    /// it was validated under an older one).
    fn check_normal_block(&self, blk: &CreatedBlock) -> Result<(), SupportError> {
        use SupportError as E;
        let (n, c) = (blk.number, &blk.contents);
        if c.count == 0 {
            return Err(E::Invalid(format!(
                "block {n} has no envelopes: a normal block holds at least one (Fabric's consenters never write \
                 an empty block)"
            )));
        }
        if let Some((i, t)) = c.special {
            return Err(E::Invalid(format!(
                "block {n}: envelope {i} is a {} message, which is never ordered in a normal block (a config \
                 message goes alone, with write-config-block)",
                header_type_name(t)
            )));
        }
        let seq = self.config.sequence;
        if c.min_seq < seq {
            return Err(E::Invalid(format!(
                "block {n} holds an envelope validated under config sequence {}, and the channel is at sequence \
                 {seq}: revalidate it first (support.revalidate)",
                c.min_seq
            )));
        }
        Ok(())
    }

    /// Fabric's `WriteConfigBlock` checks: one envelope, a config message
    /// the host made (or recomputed) under the current config sequence,
    /// whose config is the next one (sequence + 1) and valid; or, on an
    /// ordering system channel, an ORDERER_TRANSACTION creating a channel.
    /// A config envelope kept from an older config (a replay) is refused.
    fn check_config_block(&self, blk: &CreatedBlock) -> Result<Applied, SupportError> {
        use crate::proto::common::HeaderType as H;
        use SupportError as E;
        let (n, c) = (blk.number, &blk.contents);
        if c.count != 1 {
            return Err(E::Invalid(format!("block {n}: a config block holds exactly one envelope, not {}", c.count)));
        }
        let t = match c.special {
            Some((_, t)) if t == H::Config as i32 || t == H::OrdererTransaction as i32 => t,
            Some((_, t)) => {
                return Err(E::Invalid(format!(
                    "block {n}: a {} envelope is not a config message",
                    header_type_name(t)
                )));
            }
            None => {
                return Err(E::Invalid(format!(
                    "block {n}: a config block holds a config message, not a normal one (write it with write-block)"
                )));
            }
        };
        let seq = self.config.sequence;
        if c.min_seq != seq {
            return Err(E::Invalid(format!(
                "block {n}: its config message was validated under config sequence {}, and the channel is at \
                 sequence {seq}: a config made from an older config is refused (revalidate recomputes it)",
                c.min_seq
            )));
        }
        if t == H::OrdererTransaction as i32 {
            if self.channel_creator.is_none() || !self.config.system {
                return Err(E::Invalid(format!(
                    "block {n}: an ORDERER_TRANSACTION can only be written on an ordering system channel"
                )));
            }
            let genesis = match orderer_transaction(&blk.block) {
                Ok(Some(g)) => g,
                Ok(None) => return Err(E::Invalid(format!("block {n}: not an ORDERER_TRANSACTION"))),
                Err(e) => return Err(E::Invalid(format!("block {n}: {e}"))),
            };
            if let Err(e) = ChannelConfig::from_config_block(&genesis) {
                return Err(E::Invalid(format!("block {n}: new channel: {e}")));
            }
            return Ok(Applied::Channel(genesis));
        }
        let next =
            ChannelConfig::from_config_block(&blk.block).map_err(|e| E::Invalid(format!("config block {n}: {e}")))?;
        if next.sequence != seq + 1 {
            return Err(E::Invalid(format!(
                "config block {n}: its config has sequence {}, and the next config of the channel has sequence {}",
                next.sequence,
                seq + 1
            )));
        }
        if next.channel_id != self.chain_id {
            return Err(E::Invalid(format!("config block {n}: the config is for channel {}", next.channel_id)));
        }
        Ok(Applied::Config(Box::new(next)))
    }

    /// Counts a block's bytes against the chain's disk budget (per minute
    /// and in all); Err says which was passed.
    fn spend_disk(&mut self, number: u64, bytes: u64) -> Result<(), String> {
        let l = &self.limits;
        if self.disk_used.saturating_add(bytes) > l.disk_bytes_total {
            return Err(format!(
                "block {number} of {bytes} bytes would take the channel's ledger past its disk budget of {} bytes \
                 (disk-mib-total; it holds {})",
                l.disk_bytes_total, self.disk_used
            ));
        }
        let now = self.clock.now();
        let rate = l.disk_bytes_per_minute as f64 / 60.0;
        let elapsed = now.saturating_duration_since(self.disk_refilled).as_secs_f64();
        self.disk_refilled = now;
        self.disk_tokens = (self.disk_tokens + elapsed * rate).min(l.disk_bytes_per_minute as f64);
        if (bytes as f64) > self.disk_tokens {
            return Err(format!(
                "block {number}: the plugin wrote more than the channel's disk budget of {} bytes per minute \
                 (disk-mib-per-minute)",
                l.disk_bytes_per_minute
            ));
        }
        self.disk_tokens -= bytes as f64;
        self.disk_used += bytes;
        Ok(())
    }

    /// Makes this the support of an ordering system channel: config blocks
    /// holding an ORDERER_TRANSACTION create the channel inside, through
    /// `create` (called with the new channel's genesis block once the
    /// system channel's block is written).
    pub fn set_channel_creator(&mut self, create: ChannelCreator) {
        self.channel_creator = Some(create);
    }
}

/// What writing a config block changes.
enum Applied {
    Nothing,
    /// The channel's new config.
    Config(Box<ChannelConfig>),
    /// A channel to create (its genesis block), from a system channel.
    Channel(Block),
}

/// Creates a channel from its genesis block (the registrar).
pub type ChannelCreator = Arc<dyn Fn(Block) -> Result<(), String> + Send + Sync>;

/// If `b`'s one envelope is an ORDERER_TRANSACTION, the genesis block of
/// the channel it creates (block 0 holding the inner CONFIG envelope).
pub fn orderer_transaction(b: &Block) -> Result<Option<Block>, String> {
    use crate::proto::common::{ChannelHeader, Envelope as PbEnvelope, HeaderType, Payload};
    let Some(data) = b.data.as_ref().and_then(|d| d.data.first()) else {
        return Ok(None);
    };
    let env = PbEnvelope::decode(data.clone()).map_err(|e| format!("envelope: {e}"))?;
    let payload = Payload::decode(env.payload).map_err(|e| format!("payload: {e}"))?;
    let header = payload.header.ok_or("payload has no header")?;
    let ch = ChannelHeader::decode(header.channel_header).map_err(|e| format!("channel header: {e}"))?;
    if ch.r#type != HeaderType::OrdererTransaction as i32 {
        return Ok(None);
    }
    Ok(Some(block::new_block(0, &[], vec![payload.data])))
}

impl Support {
    /// Takes a log token; false means the line is dropped (rate limit).
    pub(crate) fn log_allowed(&mut self) -> bool {
        let rate = f64::from(self.limits.max_log_lines_per_sec);
        let now = self.clock.now();
        let elapsed = now.saturating_duration_since(self.log_refilled).as_secs_f64();
        self.log_refilled = now;
        self.log_tokens = (self.log_tokens + elapsed * rate).min(rate * 2.0);
        if self.log_tokens >= 1.0 {
            self.log_tokens -= 1.0;
            if self.log_dropped > 0 {
                tracing::warn!(channel = %self.chain_id, dropped = self.log_dropped, "plugin log lines dropped (rate limit)");
                self.log_dropped = 0;
            }
            true
        } else {
            self.log_dropped += 1;
            false
        }
    }
}
