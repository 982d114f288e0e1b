//! Native ConsenterSupport: what a plugin's imports do. The block cutter,
//! block creation and writing (signed, Fabric v2 metadata), shared config,
//! the signer, timers and logging, for one chain. Every import call is
//! checked here (next block only, size caps, timer caps). A pure state
//! machine apart from the [`BlockSink`] it writes blocks to and the
//! [`Clock`] it reads; may touch nothing else.
//!
//! What a plugin passes to the host, and how it is capped:
//! - handles (envelope, batch, block): the component model checks every
//!   handle when the call is lifted (a forged index, a handle of another
//!   type or one already consumed traps before the host runs); each Store
//!   has its own handle tables, so another chain's handles do not exist
//!   here. The number a plugin holds at once is capped (`max-handles`;
//!   trap).
//! - `list<envelope>` (`ordered-many`, `batch` constructor): wasmtime lifts
//!   it into a `Vec` from the plugin's memory (so it is already bounded by
//!   the memory cap, 4 bytes per handle); its length is checked first
//!   thing (`max-list-len`; trap: these functions have no error result).
//! - `list<u8>` and `string` (`write-block` metadata, `sign`, `log`,
//!   `fail`): lifted by a copy bounded by the plugin's memory; the length
//!   is checked before any other work: `write-block`/`write-config-block`
//!   metadata over `max_metadata_bytes` and `sign` messages over
//!   `max-call-bytes` are refused with `limit-exceeded` (a refusal, counted);
//!   `log`/`fail` text over `max-call-bytes` traps, shorter log lines are
//!   truncated to `max_log_bytes`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use wasmtime::component::Resource;

use crate::block::{self, Hash};
use crate::channel::ChannelConfig;
use crate::cutter::BlockCutter;
use crate::envelope::{Envelope, MessageClass};
use crate::proto::common::Block;
use crate::runtime::PluginState;
use crate::runtime::bindings::fabric::consenter::{log, support, timers, types};
use crate::signer::Signer;

/// The type of envelope handles. Their values live in an
/// [`EnvelopeSlab`] (not the ResourceTable), keyed by the handle's rep: the
/// hot path hands the plugin one handle per envelope, and a slab slot costs
/// no allocation.
pub struct EnvelopeRes;

/// Envelopes the plugin holds handles to, by handle rep. The component
/// model guarantees a plugin only passes back handles it was given and
/// still owns, so a rep always names a live slot.
#[derive(Default)]
pub struct EnvelopeSlab {
    slots: Vec<Option<Envelope>>,
    free: Vec<u32>,
}

impl EnvelopeSlab {
    /// Stores an envelope; returns the owned handle to give the plugin.
    pub fn insert(&mut self, env: Envelope) -> wasmtime::Result<Resource<EnvelopeRes>> {
        let rep = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(env);
                i
            }
            None => {
                let i =
                    u32::try_from(self.slots.len()).map_err(|_| wasmtime::format_err!("too many envelope handles"))?;
                self.slots.push(Some(env));
                i
            }
        };
        Ok(Resource::new_own(rep))
    }

    fn get(&self, r: &Resource<EnvelopeRes>) -> wasmtime::Result<&Envelope> {
        self.slots
            .get(r.rep() as usize)
            .and_then(|s| s.as_ref())
            .ok_or_else(|| wasmtime::format_err!("envelope handle {} is not live", r.rep()))
    }

    fn get_mut(&mut self, r: &Resource<EnvelopeRes>) -> wasmtime::Result<&mut Envelope> {
        self.slots
            .get_mut(r.rep() as usize)
            .and_then(|s| s.as_mut())
            .ok_or_else(|| wasmtime::format_err!("envelope handle {} is not live", r.rep()))
    }

    fn replace(&mut self, r: &Resource<EnvelopeRes>, env: Envelope) -> wasmtime::Result<()> {
        let slot = self
            .slots
            .get_mut(r.rep() as usize)
            .and_then(|s| s.as_mut())
            .ok_or_else(|| wasmtime::format_err!("envelope handle {} is not live", r.rep()))?;
        *slot = env;
        Ok(())
    }

    fn take(&mut self, r: Resource<EnvelopeRes>) -> wasmtime::Result<Envelope> {
        let rep = r.rep();
        let env = self
            .slots
            .get_mut(rep as usize)
            .and_then(|s| s.take())
            .ok_or_else(|| wasmtime::format_err!("envelope handle {rep} is not live"))?;
        self.free.push(rep);
        Ok(env)
    }
}
impl PluginState {
    /// Hands the plugin an envelope: counts the handle against `max-handles`
    /// and its bytes against the held-bytes budget.
    pub fn insert_envelope(&mut self, env: Envelope) -> wasmtime::Result<Resource<EnvelopeRes>> {
        self.count_handle()?;
        self.hold(env.bytes.len())?;
        self.envelopes.insert(env)
    }

    fn count_handle(&mut self) -> wasmtime::Result<()> {
        if self.handles >= self.call_limits.max_handles {
            wasmtime::bail!(
                "the plugin holds {} envelope, batch and block handles, the cap (max-handles); it must drop some",
                self.handles
            );
        }
        self.handles += 1;
        Ok(())
    }

    /// The most bytes of envelopes, batches and blocks the plugin may make
    /// the host hold at once (`max-held-mib`, else sized from the channel's
    /// batch settings: [`default_held_budget`]).
    pub fn held_budget(&self) -> usize {
        self.call_limits.max_held_bytes.unwrap_or_else(|| default_held_budget(&self.support.config.batch_size))
    }

    /// Counts `n` more bytes held for the plugin; traps past the budget
    /// (the host's memory is not the plugin's to fill).
    fn hold(&mut self, n: usize) -> wasmtime::Result<()> {
        let budget = self.held_budget();
        let held = self.held_bytes.saturating_add(n);
        if held > budget {
            wasmtime::bail!(
                "the plugin holds {} bytes of envelopes, batches and blocks in host memory; {n} more would pass its \
                 budget of {budget} bytes (max-held-mib); it must write or drop what it holds",
                self.held_bytes
            );
        }
        self.held_bytes = held;
        Ok(())
    }

    fn release(&mut self, n: usize) {
        self.held_bytes = self.held_bytes.saturating_sub(n);
    }

    fn take_envelope(&mut self, r: Resource<EnvelopeRes>) -> wasmtime::Result<Envelope> {
        let e = self.envelopes.take(r)?;
        self.handles = self.handles.saturating_sub(1);
        self.release(e.bytes.len());
        Ok(e)
    }

    fn push<T: Held + Send + 'static>(&mut self, v: T) -> wasmtime::Result<Resource<T>> {
        self.count_handle()?;
        if let Err(e) = self.hold(v.held_bytes()) {
            self.handles = self.handles.saturating_sub(1);
            return Err(e);
        }
        Ok(self.table.push(v)?)
    }

    fn delete<T: Held + 'static>(&mut self, r: Resource<T>) -> wasmtime::Result<T> {
        let v = self.table.delete(r)?;
        self.handles = self.handles.saturating_sub(1);
        self.release(v.held_bytes());
        Ok(v)
    }

    /// Traps if a plugin passed more handles in one list than `max-list-len`.
    fn check_list(&self, call: &str, len: usize) -> wasmtime::Result<()> {
        let max = self.call_limits.max_list_len;
        if len > max {
            wasmtime::bail!("the plugin passed {len} handles to {call}, over the cap of {max} per call (max-list-len)");
        }
        Ok(())
    }

    /// Traps if a plugin passed more bytes in one argument than `max-call-bytes`.
    /// Passes a call's answer on, unless the plugin has reached the refusal
    /// cap: then the call traps (the chain has failed; the plugin must not
    /// keep the chain's thread busy with more refused calls).
    fn answer<T>(&mut self, r: Result<T, types::SupportError>) -> wasmtime::Result<Result<T, types::SupportError>> {
        if r.is_err() && self.support.refusals >= self.support.limits.max_refusals {
            wasmtime::bail!("the plugin made {} refused calls (the cap); its chain has failed", self.support.refusals);
        }
        Ok(r)
    }

    fn check_bytes(&self, call: &str, len: usize) -> wasmtime::Result<()> {
        let max = self.call_limits.max_call_bytes;
        if len > max {
            wasmtime::bail!("the plugin passed {len} bytes to {call}, over the cap of {max} per call (max-call-bytes)");
        }
        Ok(())
    }
}

/// A host value a handle keeps in host memory, counted against the
/// plugin's held-bytes budget.
pub trait Held {
    /// Bytes held (the envelopes' marshalled bytes).
    fn held_bytes(&self) -> usize;
}

/// A batch handle's host value.
pub struct BatchRes(pub Vec<Envelope>);

impl Held for BatchRes {
    fn held_bytes(&self) -> usize {
        self.0.iter().map(|e| e.bytes.len()).sum()
    }
}

/// A block handle's host value.
pub struct BlockRes {
    block: Block,
    number: u64,
    hash: Hash,
    contents: Contents,
}

impl Held for BlockRes {
    fn held_bytes(&self) -> usize {
        self.contents.bytes as usize
    }
}

/// What the host knows of the envelopes in a block it created: enough to
/// enforce Fabric's message-class and revalidation rules when the plugin
/// writes it, whatever the plugin says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Contents {
    /// Envelopes in the block.
    count: usize,
    /// Their marshalled bytes.
    bytes: u64,
    /// The lowest config sequence they were validated under.
    min_seq: u64,
    /// The header type of the first envelope that is not a normal message
    /// (CONFIG, ORDERER_TRANSACTION, CONFIG_UPDATE), and its index.
    special: Option<(usize, i32)>,
}

impl Contents {
    fn of(envs: &[Envelope]) -> Contents {
        use crate::proto::common::HeaderType as H;
        let special = envs.iter().position(|e| {
            e.header_type == H::Config as i32
                || e.header_type == H::OrdererTransaction as i32
                || e.header_type == H::ConfigUpdate as i32
        });
        Contents {
            count: envs.len(),
            bytes: envs.iter().map(|e| e.bytes.len() as u64).sum(),
            min_seq: envs.iter().map(|e| e.config_seq).min().unwrap_or(u64::MAX),
            special: special.map(|i| (i, envs[i].header_type)),
        }
    }
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
    chain_id: String,
    config: Arc<ChannelConfig>,
    cutter: BlockCutter<Envelope>,
    signer: Arc<Signer>,
    sink: Box<dyn BlockSink>,
    clock: Arc<dyn Clock>,
    limits: SupportLimits,
    /// Blocks written (queued to the sink).
    height: u64,
    /// Header hash of the last written block.
    last_hash: Hash,
    /// Number and header hash of the last created block (the next created
    /// block links to it; reset to the last written on a refused write).
    created: (u64, Hash),
    last_config: u64,
    timers: BTreeMap<u32, Instant>,
    failed: Option<String>,
    /// Whether the failure is the host's (ledger, signer), not the plugin's.
    host_fault: bool,
    refusals: u32,
    /// Envelopes in the blocks written so far by this Support.
    written_envelopes: u64,
    /// Log rate limit: tokens left, when they were last refilled, and how
    /// many lines were dropped since the last one written.
    log_tokens: f64,
    log_refilled: Instant,
    log_dropped: u64,
    channel_creator: Option<ChannelCreator>,
    /// Bytes in the chain's ledger (including what was queued).
    disk_used: u64,
    /// The consensus types this node has plugins for (what a config update
    /// may name).
    types: Vec<String>,
    /// Disk budget: bytes that may still be written in the current minute
    /// (a token bucket) and when it was last refilled.
    disk_tokens: f64,
    disk_refilled: Instant,
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
            log_tokens,
            log_refilled,
            log_dropped: 0,
            channel_creator: None,
            disk_used: 0,
            types,
            disk_tokens: limits_disk_tokens(&limits),
            disk_refilled: log_refilled,
            limits,
        }
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

    /// Marks the chain failed because of the plugin (first reason wins).
    pub fn fail(&mut self, reason: String) {
        if self.failed.is_none() {
            tracing::error!(channel = %self.chain_id, %reason, "chain failed");
            self.failed = Some(reason);
        }
    }

    /// Marks the chain failed because of the host (first reason wins).
    fn fail_host(&mut self, reason: String) {
        if self.failed.is_none() {
            self.host_fault = true;
        }
        self.fail(reason);
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

    fn refuse(&mut self, e: types::SupportError) -> types::SupportError {
        self.refusals += 1;
        tracing::warn!(channel = %self.chain_id, error = ?e, "plugin call refused");
        if self.refusals == self.limits.max_refusals {
            self.fail(format!("plugin made {} refused calls; last: {e:?}", self.refusals));
        }
        e
    }

    /// Writes a block; on a refusal the block creator goes back to the last
    /// written block (what was created after it can no longer be written).
    fn write(&mut self, blk: BlockRes, metadata: &[u8], is_config: bool) -> Result<(), types::SupportError> {
        let r = self.try_write(blk, metadata, is_config);
        if r.is_err() {
            self.created = (self.height, self.last_hash);
        }
        r
    }

    fn try_write(&mut self, blk: BlockRes, metadata: &[u8], is_config: bool) -> Result<(), types::SupportError> {
        use types::SupportError as E;
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
        self.written_envelopes += env_count;
        self.last_hash = blk.hash;
        if self.created.0 < self.height {
            // Written past what was created (after a refusal reset it).
            self.created = (self.height, self.last_hash);
        }
        self.last_config = last_config;
        if let Applied::Config(c) = applied {
            tracing::info!(channel = %self.chain_id, block = n, sequence = c.sequence, "config applied");
            self.config = Arc::new(*c);
        }
        Ok(())
    }

    /// Fabric's message classes for a normal block: at least one envelope
    /// (Fabric's consenters never write an empty block), no config message
    /// (CONFIG, ORDERER_TRANSACTION, CONFIG_UPDATE), and every envelope
    /// validated under the current config sequence (revalidated since, if
    /// it was validated under an older one).
    fn check_normal_block(&self, blk: &BlockRes) -> Result<(), types::SupportError> {
        use types::SupportError as E;
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
    fn check_config_block(&self, blk: &BlockRes) -> Result<Applied, types::SupportError> {
        use crate::proto::common::HeaderType as H;
        use types::SupportError as E;
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
        self.disk_tokens = (self.disk_tokens + elapsed * rate).min(limits_disk_tokens(l));
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

/// A full minute of the disk budget (the token bucket's size).
fn limits_disk_tokens(l: &SupportLimits) -> f64 {
    l.disk_bytes_per_minute as f64
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

fn batch_size(s: &Support) -> types::BatchSize {
    let b = &s.config.batch_size;
    types::BatchSize {
        max_message_count: b.max_message_count,
        absolute_max_bytes: b.absolute_max_bytes,
        preferred_max_bytes: b.preferred_max_bytes,
    }
}

impl types::Host for PluginState {}

impl types::HostEnvelope for PluginState {
    fn size(&mut self, e: Resource<EnvelopeRes>) -> wasmtime::Result<u32> {
        Ok(self.envelopes.get(&e)?.size)
    }
    fn class(&mut self, e: Resource<EnvelopeRes>) -> wasmtime::Result<types::MessageClass> {
        Ok(match self.envelopes.get(&e)?.class() {
            MessageClass::Normal => types::MessageClass::Normal,
            MessageClass::Config => types::MessageClass::Config,
        })
    }
    fn config_sequence(&mut self, e: Resource<EnvelopeRes>) -> wasmtime::Result<u64> {
        Ok(self.envelopes.get(&e)?.config_seq)
    }
    fn tx_id(&mut self, e: Resource<EnvelopeRes>) -> wasmtime::Result<String> {
        Ok(self.envelopes.get(&e)?.tx_id.clone())
    }
    fn to_bytes(&mut self, e: Resource<EnvelopeRes>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.envelopes.get(&e)?.bytes.to_vec())
    }
    fn drop(&mut self, e: Resource<EnvelopeRes>) -> wasmtime::Result<()> {
        self.take_envelope(e)?;
        Ok(())
    }
}

impl types::HostBatch for PluginState {
    fn new(&mut self, envelopes: Vec<Resource<EnvelopeRes>>) -> wasmtime::Result<Resource<BatchRes>> {
        self.check_list("the batch constructor", envelopes.len())?;
        let mut v = Vec::with_capacity(envelopes.len());
        for e in envelopes {
            v.push(self.take_envelope(e)?);
        }
        self.push(BatchRes(v))
    }
    fn len(&mut self, b: Resource<BatchRes>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&b)?.0.len() as u32)
    }
    fn size_bytes(&mut self, b: Resource<BatchRes>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&b)?.0.iter().map(|e| u64::from(e.size)).sum())
    }
    fn drop(&mut self, b: Resource<BatchRes>) -> wasmtime::Result<()> {
        self.delete(b)?;
        Ok(())
    }
}

impl types::HostBlock for PluginState {
    fn number(&mut self, b: Resource<BlockRes>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&b)?.number)
    }
    fn envelope_count(&mut self, b: Resource<BlockRes>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&b)?.block.data.as_ref().map(|d| d.data.len() as u32).unwrap_or(0))
    }
    fn header_hash(&mut self, b: Resource<BlockRes>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&b)?.hash.to_vec())
    }
    fn to_bytes(&mut self, b: Resource<BlockRes>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&b)?.block.encode_to_vec())
    }
    fn drop(&mut self, b: Resource<BlockRes>) -> wasmtime::Result<()> {
        self.delete(b)?;
        Ok(())
    }
}

impl support::Host for PluginState {
    fn ordered(&mut self, env: Resource<EnvelopeRes>) -> wasmtime::Result<support::OrderedResult> {
        let env = self.take_envelope(env)?;
        let bs = self.support.config.batch_size;
        let r = self.support.cutter.ordered(env, &bs);
        let mut batches = Vec::with_capacity(r.batches.len());
        for b in r.batches {
            batches.push(self.push(BatchRes(b))?);
        }
        Ok(support::OrderedResult { batches, pending: r.pending })
    }

    fn ordered_many(&mut self, envs: Vec<Resource<EnvelopeRes>>) -> wasmtime::Result<support::OrderedManyResult> {
        self.check_list("ordered-many", envs.len())?;
        let bs = self.support.config.batch_size;
        let mut batches = Vec::new();
        let mut pending = Vec::with_capacity(envs.len());
        for env in envs {
            let env = self.take_envelope(env)?;
            let r = self.support.cutter.ordered(env, &bs);
            for b in r.batches {
                batches.push(self.push(BatchRes(b))?);
            }
            pending.push(r.pending);
        }
        Ok(support::OrderedManyResult { batches, pending })
    }

    fn cut(&mut self) -> wasmtime::Result<Resource<BatchRes>> {
        let b = self.support.cutter.cut();
        self.push(BatchRes(b))
    }

    fn pending_count(&mut self) -> wasmtime::Result<u32> {
        Ok(self.support.cutter.pending_len() as u32)
    }

    fn create_next_block(
        &mut self,
        batch: Resource<BatchRes>,
    ) -> wasmtime::Result<Result<Resource<BlockRes>, types::SupportError>> {
        let envs = self.delete(batch)?.0;
        let (number, prev) = self.support.created;
        let contents = Contents::of(&envs);
        let data: Vec<Bytes> = envs.into_iter().map(|e| e.bytes).collect();
        let block = block::new_block(number, if number == 0 { &[] } else { &prev }, data);
        let hash = block.header.as_ref().map(block::header_hash).unwrap_or_default();
        self.support.created = (number + 1, hash);
        Ok(Ok(self.push(BlockRes { block, number, hash, contents })?))
    }

    fn write_block(
        &mut self,
        b: Resource<BlockRes>,
        consenter_metadata: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::SupportError>> {
        let blk = self.delete(b)?;
        let r = self.support.write(blk, &consenter_metadata, false);
        self.answer(r)
    }

    fn write_config_block(
        &mut self,
        b: Resource<BlockRes>,
        consenter_metadata: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::SupportError>> {
        let blk = self.delete(b)?;
        let r = self.support.write(blk, &consenter_metadata, true);
        self.answer(r)
    }

    fn revalidate(&mut self, env: Resource<EnvelopeRes>) -> wasmtime::Result<Result<(), String>> {
        // Signature and policy checks are the host's work: their time is
        // not counted against the plugin's call deadline.
        let started = Instant::now();
        let e = self.envelopes.get(&env)?;
        let r = crate::processor::revalidate(&self.support.config, &self.support.signer, e, &self.support.types);
        self.host_time += started.elapsed();
        match r {
            Ok(None) => {
                // It passes under the current config: stamped so.
                self.envelopes.get_mut(&env)?.config_seq = self.support.config.sequence;
                Ok(Ok(()))
            }
            // A config message recomputed against the current config: the
            // handle now names the new CONFIG envelope.
            Ok(Some(recomputed)) => {
                tracing::info!(
                    channel = %self.support.chain_id,
                    sequence = self.support.config.sequence,
                    "config message made from an older config recomputed against the current one"
                );
                let before = self.envelopes.get(&env)?.bytes.len();
                self.release(before);
                self.hold(recomputed.bytes.len())?;
                self.envelopes.replace(&env, recomputed)?;
                Ok(Ok(()))
            }
            Err(reason) => Ok(Err(reason)),
        }
    }

    fn shared_config(&mut self) -> wasmtime::Result<types::OrdererConfig> {
        let c = &self.support.config;
        Ok(types::OrdererConfig {
            batch_size: batch_size(&self.support),
            batch_timeout_ms: c.batch_timeout.as_millis() as u64,
            consensus_type: c.consensus_type.clone(),
            consensus_metadata: c.consensus_metadata.to_vec(),
        })
    }

    fn chain_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.support.chain_id.clone())
    }

    fn height(&mut self) -> wasmtime::Result<u64> {
        Ok(self.support.height)
    }

    fn sequence(&mut self) -> wasmtime::Result<u64> {
        Ok(self.support.config.sequence)
    }

    fn sign(&mut self, message: Vec<u8>) -> wasmtime::Result<Result<Vec<u8>, types::SupportError>> {
        let max = self.call_limits.max_call_bytes;
        if message.len() > max {
            let e = types::SupportError::LimitExceeded(format!(
                "sign: a message of {} bytes is over the cap of {max} (max-call-bytes)",
                message.len()
            ));
            let e = self.support.refuse(e);
            return self.answer(Err(e));
        }
        Ok(self.support.signer.sign(&message).map_err(|e| types::SupportError::LimitExceeded(e.to_string())))
    }

    fn new_signature_header(&mut self) -> wasmtime::Result<Result<Vec<u8>, types::SupportError>> {
        Ok(Ok(self.support.signer.new_signature_header().encode_to_vec()))
    }

    fn fail(&mut self, reason: String) -> wasmtime::Result<()> {
        self.check_bytes("fail", reason.len())?;
        let reason: String = reason.chars().take(self.support.limits.max_log_bytes).collect();
        self.support.fail(format!("plugin reported a fatal error: {reason}"));
        Ok(())
    }
}

impl timers::Host for PluginState {
    fn set(&mut self, id: u32, delay_ms: u64) -> wasmtime::Result<Result<(), types::SupportError>> {
        let s = &mut self.support;
        let delay = Duration::from_millis(delay_ms);
        if delay > s.limits.max_timer_delay {
            let e = types::SupportError::LimitExceeded(format!(
                "timer {id}: delay of {delay_ms} ms is over the maximum of {} ms",
                s.limits.max_timer_delay.as_millis()
            ));
            let e = s.refuse(e);
            return self.answer(Err(e));
        }
        if !s.timers.contains_key(&id) && s.timers.len() >= s.limits.max_timers {
            let e =
                types::SupportError::LimitExceeded(format!("timer {id}: {} timers are already armed", s.timers.len()));
            let e = s.refuse(e);
            return self.answer(Err(e));
        }
        // A zero delay re-armed from `on-timer` would spin the chain's
        // thread: every timer waits at least MIN_TIMER_DELAY.
        let at = s.clock.now() + delay.max(MIN_TIMER_DELAY);
        s.timers.insert(id, at);
        Ok(Ok(()))
    }

    fn cancel(&mut self, id: u32) -> wasmtime::Result<()> {
        self.support.timers.remove(&id);
        Ok(())
    }
}

impl Support {
    /// Takes a log token; false means the line is dropped (rate limit).
    fn log_allowed(&mut self) -> bool {
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

impl log::Host for PluginState {
    fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        self.check_bytes("log", message.len())?;
        if !self.support.log_allowed() {
            return Ok(());
        }
        let max = self.support.limits.max_log_bytes;
        let msg = if message.len() > max {
            let mut end = max;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            &message[..end]
        } else {
            &message
        };
        let ch = &self.support.chain_id;
        match level {
            types::Level::Trace => tracing::trace!(channel = %ch, plugin = true, "{msg}"),
            types::Level::Debug => tracing::debug!(channel = %ch, plugin = true, "{msg}"),
            types::Level::Info => tracing::info!(channel = %ch, plugin = true, "{msg}"),
            types::Level::Warn => tracing::warn!(channel = %ch, plugin = true, "{msg}"),
            types::Level::Error => tracing::error!(channel = %ch, plugin = true, "{msg}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelTemplate;
    use crate::testhost::{ManualClock, MemorySink};
    use support::Host as _;
    use timers::Host as _;
    use types::HostBatch as _;

    fn state(limits: SupportLimits) -> (PluginState, Arc<ManualClock>, MemorySink) {
        let dir = tempfile::tempdir().unwrap();
        let id = crate::signer::ensure_dev_identity(dir.path()).unwrap();
        let signer = Arc::new(Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap());
        let t = ChannelTemplate::solo("unit");
        let genesis = t.genesis_block();
        let cfg = Arc::new(ChannelConfig::from_config_block(&genesis).unwrap());
        let hash = block::header_hash(genesis.header.as_ref().unwrap());
        let clock = ManualClock::new();
        let sink = MemorySink::default();
        let pos = ChainPosition { height: 1, last_hash: hash, last_config: 0 };
        let s = Support::new("unit", cfg, signer, Box::new(sink.clone()), clock.clone(), pos, limits);
        (PluginState::for_test(s), clock, sink)
    }

    fn envelope(st: &mut PluginState, tx: &str) -> Resource<EnvelopeRes> {
        let b = crate::envelope::build(
            "unit",
            crate::proto::common::HeaderType::Message,
            tx,
            Bytes::from_static(b"x"),
            None,
        )
        .unwrap();
        st.envelopes.insert(Envelope::parse(b).unwrap()).unwrap()
    }

    fn block_of(st: &mut PluginState, tx: &str) -> Resource<BlockRes> {
        let e = envelope(st, tx);
        let b = st.new(vec![e]).unwrap();
        st.create_next_block(b).unwrap().unwrap()
    }

    #[test]
    fn only_the_next_block_is_written() {
        let (mut st, _, sink) = state(SupportLimits::default());
        let b1 = block_of(&mut st, "a");
        let b2 = block_of(&mut st, "b");
        assert_eq!(st.support.height(), 1);
        // Writing block 2 before block 1 is refused.
        let e = st.write_block(b2, vec![]).unwrap().unwrap_err();
        assert!(matches!(e, types::SupportError::OutOfOrder(_)), "{e:?}");
        assert_eq!(sink.0.lock().unwrap().len(), 0);
        st.write_block(b1, vec![]).unwrap().unwrap();
        assert_eq!(st.support.height(), 2);
        // The creator was reset to the last written block: the next block
        // created is number 2 and links to block 1.
        let b = block_of(&mut st, "c");
        st.write_block(b, vec![1, 2, 3]).unwrap().unwrap();
        let written = sink.0.lock().unwrap().clone();
        assert_eq!(written.len(), 2);
        let blk = Block::decode(written[1].clone()).unwrap();
        assert_eq!(blk.header.as_ref().unwrap().number, 2);
        assert_eq!(block::orderer_metadata(&blk).unwrap().consenter_metadata.as_ref(), &[1, 2, 3]);
    }

    #[test]
    fn oversized_metadata_and_bad_config_blocks_are_refused() {
        let limits = SupportLimits { max_metadata_bytes: 8, ..SupportLimits::default() };
        let (mut st, _, sink) = state(limits);
        let b = block_of(&mut st, "a");
        let e = st.write_block(b, vec![0; 9]).unwrap().unwrap_err();
        assert!(matches!(e, types::SupportError::LimitExceeded(_)), "{e:?}");
        // A normal envelope is not a config block.
        let b = block_of(&mut st, "a");
        let e = st.write_config_block(b, vec![]).unwrap().unwrap_err();
        assert!(matches!(e, types::SupportError::Invalid(_)), "{e:?}");
        assert!(sink.0.lock().unwrap().is_empty());
        assert!(st.support.failure().is_none(), "refusals alone do not fail the chain");
    }

    #[test]
    fn repeated_refusals_fail_the_chain() {
        let limits = SupportLimits { max_refusals: 3, ..SupportLimits::default() };
        let (mut st, _, _) = state(limits);
        for _ in 0..2 {
            let _ = st.set(1, u64::MAX).unwrap().unwrap_err();
        }
        assert!(st.support.failure().is_none());
        // The refusal that reaches the cap fails the chain and traps.
        let trap = st.set(1, u64::MAX).unwrap_err().to_string();
        assert!(trap.contains("3 refused calls"), "{trap}");
        assert!(st.support.failure().unwrap().contains("3 refused calls"));
        assert!(!st.support.host_fault(), "the plugin's fault");
        // A failed chain writes nothing more.
        let b = block_of(&mut st, "a");
        assert!(st.write_block(b, vec![]).is_err());
    }

    #[test]
    fn list_byte_and_handle_caps_trap() {
        let (mut st, _, _) = state(SupportLimits::default());
        st.call_limits.max_list_len = 2;
        st.call_limits.max_call_bytes = 16;
        let envs: Vec<_> = (0..3).map(|i| envelope(&mut st, &format!("e{i}"))).collect();
        let e = st.ordered_many(envs).unwrap_err().to_string();
        assert!(e.contains("passed 3 handles to ordered-many, over the cap of 2"), "{e}");
        let e = log::Host::log(&mut st, types::Level::Info, "x".repeat(17)).unwrap_err().to_string();
        assert!(e.contains("17 bytes to log"), "{e}");
        let r = st.sign(vec![0; 17]).unwrap();
        assert!(matches!(r, Err(types::SupportError::LimitExceeded(_))), "{r:?}");
        // Handles: the cap counts envelopes, batches and blocks held.
        let (mut st, _, _) = state(SupportLimits::default());
        st.call_limits.max_handles = 3;
        let _held: Vec<_> = (0..3).map(|_| st.cut().unwrap()).collect();
        let e = st.cut().unwrap_err().to_string();
        assert!(e.contains("holds 3 envelope, batch and block handles"), "{e}");
    }

    #[test]
    fn held_bytes_are_budgeted_and_released() {
        let (mut st, _, _) = state(SupportLimits::default());
        let one = {
            let e = insert(&mut st, "k9");
            let n = st.held_bytes;
            assert!(n > 0, "an envelope handed over is held");
            types::HostEnvelope::drop(&mut st, e).unwrap();
            assert_eq!(st.held_bytes, 0, "dropping releases");
            n
        };
        st.call_limits.max_held_bytes = Some(3 * one);
        let mut held: Vec<_> = (0..3).map(|i| insert(&mut st, &format!("k{i}"))).collect();
        let e = insert_err(&mut st, "k3");
        assert!(e.contains("budget of") && e.contains("max-held-mib"), "{e}");
        // A batch holds what its envelopes held; a block likewise.
        let batch = st.new(held.drain(..2).collect()).unwrap();
        assert_eq!(st.held_bytes, 3 * one);
        let blk = st.create_next_block(batch).unwrap().unwrap();
        assert_eq!(st.held_bytes, 3 * one);
        st.write_block(blk, vec![]).unwrap().unwrap();
        assert_eq!(st.held_bytes, one, "a written block is no longer held");
        let _more = insert(&mut st, "k4");
    }

    fn insert(st: &mut PluginState, tx: &str) -> Resource<EnvelopeRes> {
        let b = crate::envelope::build(
            "unit",
            crate::proto::common::HeaderType::Message,
            tx,
            Bytes::from_static(b"x"),
            None,
        )
        .unwrap();
        st.insert_envelope(Envelope::parse(b).unwrap()).unwrap()
    }

    fn insert_err(st: &mut PluginState, tx: &str) -> String {
        let b = crate::envelope::build(
            "unit",
            crate::proto::common::HeaderType::Message,
            tx,
            Bytes::from_static(b"x"),
            None,
        )
        .unwrap();
        st.insert_envelope(Envelope::parse(b).unwrap()).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn empty_stale_and_config_class_blocks_are_refused() {
        let (mut st, _, sink) = state(SupportLimits::default());
        let empty = st.cut().unwrap();
        let b = st.create_next_block(empty).unwrap().unwrap();
        let e = st.write_block(b, vec![]).unwrap().unwrap_err();
        assert!(matches!(&e, types::SupportError::Invalid(m) if m.contains("no envelopes")), "{e:?}");
        // Validated under an older sequence than the channel's (here the
        // channel is made to be at sequence 1).
        let mut cfg = (**st.support.config()).clone();
        cfg.sequence = 1;
        st.support.config = Arc::new(cfg);
        let b = block_of(&mut st, "old");
        let e = st.write_block(b, vec![]).unwrap().unwrap_err();
        assert!(matches!(&e, types::SupportError::Invalid(m) if m.contains("revalidate it first")), "{e:?}");
        // A CONFIG envelope in a normal block.
        let c =
            crate::envelope::build("unit", crate::proto::common::HeaderType::Config, "", Bytes::new(), None).unwrap();
        let mut env = Envelope::parse(c).unwrap();
        env.config_seq = 1;
        let h = st.envelopes.insert(env).unwrap();
        let batch = st.new(vec![h]).unwrap();
        let b = st.create_next_block(batch).unwrap().unwrap();
        let e = st.write_block(b, vec![]).unwrap().unwrap_err();
        assert!(matches!(&e, types::SupportError::Invalid(m) if m.contains("CONFIG message")), "{e:?}");
        assert!(sink.0.lock().unwrap().is_empty());
    }

    #[test]
    fn metadata_is_bounded_by_the_blocks_data() {
        let (mut st, _, _) = state(SupportLimits::default());
        let b = block_of(&mut st, "a");
        let e = st.write_block(b, vec![0; METADATA_SLACK + 200]).unwrap().unwrap_err();
        assert!(matches!(&e, types::SupportError::LimitExceeded(m) if m.contains("plus 1024")), "{e:?}");
        let b = block_of(&mut st, "a");
        st.write_block(b, vec![0; METADATA_SLACK]).unwrap().unwrap();
    }

    #[test]
    fn disk_budget_per_minute_refills_with_time() {
        let limits = SupportLimits { disk_bytes_per_minute: 6000, ..SupportLimits::default() };
        let (mut st, clock, sink) = state(limits);
        let mut written = 0;
        let reason = loop {
            let b = block_of(&mut st, &format!("w{written}"));
            match st.write_block(b, vec![]).unwrap() {
                Ok(()) => written += 1,
                Err(e) => break format!("{e:?}"),
            }
            assert!(written < 100, "no budget");
        };
        assert!(reason.contains("disk-mib-per-minute"), "{reason}");
        assert!(written >= 2, "{written}");
        assert!(st.support.failure().is_some_and(|f| f.contains("disk budget")), "the chain errs");
        assert_eq!(sink.0.lock().unwrap().len(), written);
        let _ = clock;
    }

    #[test]
    fn timer_caps() {
        let (mut st, clock, _) = state(SupportLimits { max_timers: 4, ..SupportLimits::default() });
        for id in 0..4 {
            st.set(id, 10 * u64::from(id + 1)).unwrap().unwrap();
        }
        assert!(matches!(st.set(9, 5).unwrap(), Err(types::SupportError::LimitExceeded(_))));
        // Re-arming an armed timer is not a new timer.
        st.set(0, 5).unwrap().unwrap();
        assert!(matches!(st.set(0, 25 * 3600 * 1000).unwrap(), Err(types::SupportError::LimitExceeded(_))));
        st.cancel(1).unwrap();
        clock.advance(Duration::from_millis(30));
        assert_eq!(st.support.take_due_timers(clock.now()), vec![0, 2]);
        assert_eq!(st.support.next_deadline(), Some(clock.now() + Duration::from_millis(10)));
    }

    #[test]
    fn log_flood_is_rate_limited() {
        let (mut st, clock, _) = state(SupportLimits { max_log_lines_per_sec: 10, ..SupportLimits::default() });
        let allowed = (0..1000).filter(|_| st.support.log_allowed()).count();
        assert_eq!(allowed, 20, "burst of twice the rate");
        clock.advance(Duration::from_secs(1));
        let allowed = (0..1000).filter(|_| st.support.log_allowed()).count();
        assert_eq!(allowed, 10, "refilled at the rate");
    }
}
