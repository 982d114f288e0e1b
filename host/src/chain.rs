//! The chain actor: one thread per channel owns the plugin instance and
//! delivers events to it one at a time (enqueue, timer, halt); a second
//! thread writes the blocks the plugin produces to the ledger (group commit:
//! one fsync for every block that queued up meanwhile). The [`ChainCore`]
//! inside is the deterministic part (the test host drives it directly with
//! its own clock). May touch the plugin instance, its ledger and its status.
//!
//! When the plugin crashes (a trap, a `fail`, too many refused calls) the
//! actor discards its Store, lets the ledger writer finish every block the
//! instance wrote, and applies the channel's [`RestartPolicy`]: stay errored
//! (`fail-closed`) or start a new instance from the last written block
//! (`reload`) after an exponential backoff, up to a crash-loop cap.
//! Envelopes the crashed instance accepted but did not write are reported
//! as lost (counted in [`ChainStatus::lost_envelopes`] and logged), not
//! re-enqueued: a poison envelope would crash the new instance too, and a
//! Fabric client learns that a transaction was ordered from Deliver, not
//! from Broadcast's SUCCESS.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::block::{self, Hash};
use crate::channel::ChannelConfig;
use crate::envelope::Envelope;
use crate::ledger::{Ledger, LedgerError};
use crate::runtime::{Instance, Plugin, RuntimeError};
use crate::support::{BlockSink, ChainPosition, OnDurable, Support};

/// Where a chain is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainState {
    /// The plugin instance is running.
    Running,
    /// The instance crashed; a new one starts after a backoff (`reload`).
    Restarting,
    /// The chain stays errored (fail-closed, crash-loop cap, host failure).
    Errored,
    /// The chain was halted.
    Halted,
}

impl ChainState {
    fn from_u8(v: u8) -> ChainState {
        match v {
            0 => ChainState::Running,
            1 => ChainState::Restarting,
            2 => ChainState::Errored,
            _ => ChainState::Halted,
        }
    }
}

impl std::fmt::Display for ChainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChainState::Running => "running",
            ChainState::Restarting => "restarting",
            ChainState::Errored => "errored",
            ChainState::Halted => "halted",
        })
    }
}

/// What a chain does when its plugin instance crashes (after Envoy's
/// proxy-wasm failure policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// The chain stays errored until the node restarts.
    FailClosed,
    /// A new instance from the last written block, with backoff and a
    /// crash-loop cap.
    Reload,
}

impl FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reload" => Ok(RestartPolicy::Reload),
            "fail-closed" => Ok(RestartPolicy::FailClosed),
            other => Err(format!("restart policy {other:?}: expected reload or fail-closed")),
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestartPolicy::FailClosed => "fail-closed",
            RestartPolicy::Reload => "reload",
        })
    }
}

/// A chain's restart policy and its backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartConfig {
    /// Reload or fail closed.
    pub policy: RestartPolicy,
    /// Delay before the first restart; doubled for each further crash
    /// within `crash_window`.
    pub initial_backoff: Duration,
    /// Longest delay between a crash and the restart.
    pub max_backoff: Duration,
    /// This many crashes within `crash_window` leave the chain errored.
    pub max_crashes: u32,
    /// The crash-loop window.
    pub crash_window: Duration,
}

impl RestartConfig {
    /// `policy` with the default backoff: 100 ms doubling to 10 s, at most
    /// 5 crashes within 60 s.
    pub fn new(policy: RestartPolicy) -> RestartConfig {
        RestartConfig {
            policy,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_crashes: 5,
            crash_window: Duration::from_secs(60),
        }
    }

    /// The delay before restarting after the `n`-th crash in the window
    /// (n >= 1): initial × 2^(n-1), at most `max_backoff`.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Restart policies of a node's chains: per channel, else per plugin type,
/// else the default (`reload` for the plugins shipped in the binary,
/// `fail-closed` for plugins loaded from files), with one backoff.
#[derive(Debug, Clone)]
pub struct RestartPolicies {
    /// Policy of a channel (wins over its plugin's).
    pub by_channel: std::collections::BTreeMap<String, RestartPolicy>,
    /// Policy of every channel ordered by a plugin type.
    pub by_plugin: std::collections::BTreeMap<String, RestartPolicy>,
    /// Backoff and crash-loop cap (its `policy` is not used).
    pub backoff: RestartConfig,
}

impl Default for RestartPolicies {
    fn default() -> Self {
        RestartPolicies {
            by_channel: Default::default(),
            by_plugin: Default::default(),
            backoff: RestartConfig::new(RestartPolicy::Reload),
        }
    }
}

impl RestartPolicies {
    /// The restart configuration of `channel`, ordered by `plugin`
    /// (`shipped`: embedded in the binary).
    pub fn for_chain(&self, channel: &str, plugin: &str, shipped: bool) -> RestartConfig {
        let default = if shipped { RestartPolicy::Reload } else { RestartPolicy::FailClosed };
        let policy = self.by_channel.get(channel).or_else(|| self.by_plugin.get(plugin)).copied().unwrap_or(default);
        RestartConfig { policy, ..self.backoff.clone() }
    }
}

/// Shared view of a chain's health (Fabric's `Errored()` channel) and its
/// crash counters.
#[derive(Debug)]
pub struct ChainStatus {
    errored: watch::Sender<Option<String>>,
    /// The channel's AbsoluteMaxBytes now (Broadcast's size check).
    absolute_max_bytes: AtomicU32,
    /// The channel's config sequence now (what Broadcast validates under).
    sequence: AtomicU64,
    /// The channel's config bundle now (policies, MSPs, orderer values).
    config: RwLock<Option<Arc<ChannelConfig>>>,
    state: AtomicU8,
    /// A host failure (ledger): no restart helps.
    fatal: AtomicBool,
    crashes: AtomicU64,
    restarts: AtomicU64,
    lost_envelopes: AtomicU64,
    last_crash: Mutex<Option<String>>,
}

impl Default for ChainStatus {
    fn default() -> Self {
        ChainStatus {
            errored: watch::channel(None).0,
            absolute_max_bytes: AtomicU32::new(u32::MAX),
            sequence: AtomicU64::new(0),
            config: RwLock::new(None),
            state: AtomicU8::new(ChainState::Running as u8),
            fatal: AtomicBool::new(false),
            crashes: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            lost_envelopes: AtomicU64::new(0),
            last_crash: Mutex::new(None),
        }
    }
}

impl ChainStatus {
    /// Running, restarting, errored or halted.
    pub fn state(&self) -> ChainState {
        ChainState::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn set_state(&self, s: ChainState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// Plugin instance crashes so far (traps, `fail`, refusal cap).
    pub fn crashes(&self) -> u64 {
        self.crashes.load(Ordering::Relaxed)
    }

    /// New instances started after a crash.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Envelopes accepted by crashed instances but never written.
    pub fn lost_envelopes(&self) -> u64 {
        self.lost_envelopes.load(Ordering::Relaxed)
    }

    /// Why the plugin last crashed.
    pub fn last_crash_reason(&self) -> Option<String> {
        self.last_crash.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Marks the chain errored for good by a host failure (no restart).
    pub fn set_fatal(&self, reason: String) {
        self.fatal.store(true, Ordering::Relaxed);
        self.set_state(ChainState::Errored);
        self.set_errored(reason);
    }

    /// Replaces the error reason (Deliver streams waiting see a change).
    fn replace_errored(&self, reason: String) {
        self.errored.send_replace(Some(reason));
    }

    /// The chain runs again (after a restart).
    fn clear_errored(&self) {
        self.errored.send_replace(None);
    }

    /// The channel's config sequence as of its latest config.
    pub fn sequence(&self) -> u64 {
        self.sequence.load(Ordering::Relaxed)
    }

    /// The channel's config bundle as of its latest config block (None
    /// only before the chain started).
    pub fn config(&self) -> Option<Arc<ChannelConfig>> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_config(&self, c: &Arc<ChannelConfig>) {
        let same = self.config.read().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|x| Arc::ptr_eq(x, c));
        if !same {
            self.absolute_max_bytes.store(c.batch_size.absolute_max_bytes, Ordering::Relaxed);
            self.sequence.store(c.sequence, Ordering::Relaxed);
            *self.config.write().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        }
    }

    /// The channel's AbsoluteMaxBytes as of its latest config.
    pub fn absolute_max_bytes(&self) -> u32 {
        self.absolute_max_bytes.load(Ordering::Relaxed)
    }

    /// Marks the chain errored with `reason` (first reason wins).
    pub fn set_errored(&self, reason: String) {
        self.errored.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Why the chain is errored, if it is.
    pub fn errored(&self) -> Option<String> {
        self.errored.borrow().clone()
    }

    /// A receiver that changes when the chain errs (for Deliver streams).
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.errored.subscribe()
    }
}

/// Why an envelope was not accepted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EnqueueError {
    #[error("consenter for channel {channel} is errored: {reason}")]
    Errored { channel: String, reason: String },
    #[error("consenter for channel {channel} refused the envelope")]
    Refused { channel: String },
    #[error("channel {channel} is halted")]
    Halted { channel: String },
}

/// The deterministic core of a chain: an instance and its support, driven
/// by explicit events and an explicit `now`.
pub struct ChainCore {
    instance: Instance,
    status: Arc<ChainStatus>,
    channel: String,
    /// Why the instance ended (a trap), if it did.
    ended: Option<String>,
    /// Envelopes the plugin accepted.
    accepted: u64,
}

impl ChainCore {
    /// Runs `handle-chain(metadata)` and `start` on a fresh instance.
    pub fn start(
        plugin: &Plugin,
        support: Support,
        metadata: &[u8],
        status: Arc<ChainStatus>,
    ) -> Result<ChainCore, RuntimeError> {
        let channel = support.chain_id().to_string();
        status.set_config(support.config());
        let instance = plugin.instantiate(support)?;
        let mut core = ChainCore { instance, status, channel, ended: None, accepted: 0 };
        match core.instance.handle_chain(metadata)? {
            Ok(()) => {}
            Err(reason) => {
                return Err(RuntimeError::Instantiate {
                    plugin: plugin.name().to_string(),
                    channel: core.channel.clone(),
                    reason: format!("the plugin refused the chain: {reason}"),
                });
            }
        }
        core.instance.start()?;
        core.sync_status();
        Ok(core)
    }

    /// The channel id.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The instance's support (None once the instance trapped).
    pub fn support(&self) -> Option<&Support> {
        self.instance.support()
    }

    /// Envelopes written in blocks so far (also after a trap).
    pub fn written_envelopes(&self) -> u64 {
        self.instance.written_envelopes()
    }

    /// Envelopes the plugin accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Whether the plugin crashed: why, and whether a restart may help
    /// (false for a host failure such as the ledger).
    pub fn crashed(&self) -> Option<(String, bool)> {
        if let Some(r) = &self.ended {
            return Some((r.clone(), true));
        }
        // The ledger writer failed (disk full, I/O error): a host failure.
        if self.status.fatal.load(Ordering::Relaxed) {
            return Some((self.status.errored().unwrap_or_else(|| "the ledger writer failed".into()), false));
        }
        let s = self.instance.support()?;
        s.failure().map(|f| (f.to_string(), !s.host_fault()))
    }

    fn sync_status(&mut self) {
        if let Some(s) = self.instance.support() {
            if let Some(reason) = s.failure() {
                self.status.set_errored(reason.to_string());
            }
            self.status.set_config(s.config());
        }
    }

    fn on_call_result<R>(&mut self, r: Result<R, RuntimeError>) -> Result<R, EnqueueError> {
        match r {
            Ok(v) => {
                self.sync_status();
                Ok(v)
            }
            Err(e) => {
                tracing::error!(channel = %self.channel, error = %e, "plugin instance ended");
                self.ended = Some(e.to_string());
                self.status.set_errored(e.to_string());
                Err(EnqueueError::Errored { channel: self.channel.clone(), reason: e.to_string() })
            }
        }
    }

    /// Offers an envelope to the plugin.
    pub fn enqueue(&mut self, env: Envelope) -> Result<(), EnqueueError> {
        self.enqueue_many(vec![env])
            .pop()
            .unwrap_or_else(|| Err(EnqueueError::Refused { channel: self.channel.clone() }))
    }

    /// Offers envelopes to the plugin in one call; one answer each.
    pub fn enqueue_many(&mut self, envs: Vec<Envelope>) -> Vec<Result<(), EnqueueError>> {
        let n = envs.len();
        if let Some(reason) = self.status.errored() {
            return vec![Err(EnqueueError::Errored { channel: self.channel.clone(), reason }); n];
        }
        let r = self.instance.enqueue(envs);
        match self.on_call_result(r) {
            Ok(answers) => {
                self.accepted += answers.iter().filter(|a| **a).count() as u64;
                answers
                    .into_iter()
                    .map(|ok| if ok { Ok(()) } else { Err(EnqueueError::Refused { channel: self.channel.clone() }) })
                    .collect()
            }
            Err(e) => vec![Err(e); n],
        }
    }

    /// The most envelope bytes handed to the plugin in one `enqueue`.
    pub fn max_group_bytes(&self) -> usize {
        self.instance.max_group_bytes()
    }

    /// The earliest armed timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.status.errored().is_some() {
            return None;
        }
        self.instance.support().and_then(|s| s.next_deadline())
    }

    /// Fires every timer due at `now`.
    pub fn fire_timers(&mut self, now: Instant) {
        let due = match self.instance.support_mut() {
            Some(s) => s.take_due_timers(now),
            None => return,
        };
        for id in due {
            if self.status.errored().is_some() {
                return;
            }
            let r = self.instance.on_timer(id);
            if self.on_call_result(r).is_err() {
                return;
            }
        }
    }

    /// Halts the plugin.
    pub fn halt(&mut self) {
        if self.instance.is_alive() {
            let r = self.instance.halt();
            let _ = self.on_call_result(r);
        }
    }
}

/// An envelope offered to the chain and where its answer goes.
struct Offer(Envelope, oneshot::Sender<Result<(), EnqueueError>>);

/// Where a chain resumes: its position, its configuration (from the last
/// config block) and the consenter metadata of its last block.
pub struct ResumePoint {
    /// Height, last header hash, last config block.
    pub pos: ChainPosition,
    /// The configuration in force.
    pub config: Arc<ChannelConfig>,
    /// The consenter metadata of the last block (handed to `handle-chain`).
    pub metadata: Vec<u8>,
}

/// Why a chain's resume point cannot be read from its ledger.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("channel {channel}: {what}")]
    Missing { channel: String, what: String },
    #[error("channel {channel}: {source}")]
    Config { channel: String, source: crate::channel::ConfigError },
}

impl ResumePoint {
    /// Reads the resume point of `channel` from its (non-empty) ledger.
    pub fn read(channel: &str, ledger: &Ledger) -> Result<ResumePoint, ResumeError> {
        let missing = |what: String| ResumeError::Missing { channel: channel.into(), what };
        let height = ledger.height();
        if height == 0 {
            return Err(missing("ledger is empty (no genesis block)".into()));
        }
        let last = ledger.block(height - 1)?.ok_or_else(|| missing(format!("block {} is missing", height - 1)))?;
        let last_hash: Hash =
            last.header.as_ref().map(block::header_hash).ok_or_else(|| missing("last block has no header".into()))?;
        let (last_config, metadata) = crate::node::last_config_and_metadata(&last);
        let config_block =
            ledger.block(last_config)?.ok_or_else(|| missing(format!("config block {last_config} is missing")))?;
        let config = ChannelConfig::from_config_block(&config_block)
            .map_err(|source| ResumeError::Config { channel: channel.into(), source })?;
        Ok(ResumePoint { pos: ChainPosition { height, last_hash, last_config }, config: Arc::new(config), metadata })
    }
}

/// Builds a chain's support around a block sink, at a position, under a
/// configuration (called again for every restarted instance).
pub type SupportFactory = Box<dyn Fn(Box<dyn BlockSink>, ChainPosition, Arc<ChannelConfig>) -> Support + Send>;

/// A running chain: its actor thread (which owns the ledger writer) and
/// its status.
pub struct Chain {
    channel: String,
    plugin: String,
    policy: RestartPolicy,
    halt: watch::Sender<bool>,
    tx: mpsc::Sender<Offer>,
    status: Arc<ChainStatus>,
    ledger: Ledger,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Most envelopes handed to the plugin in one `enqueue` call.
const MAX_GROUP: usize = 1024;

/// Capacity of a chain's event queue: Broadcast waits (back-pressure)
/// when it is full.
const QUEUE: usize = 4096;

impl Chain {
    /// Starts a chain on the actor thread: a ledger writer, the support
    /// made by `make_support` at `resume` (the ledger's last block, read
    /// by the caller), then the plugin's `handle-chain` (with that block's
    /// consenter metadata) and `start`.
    /// Returns once the plugin started (or failed to: a chain that cannot
    /// start is refused, whatever its restart policy).
    pub fn spawn(
        channel: &str,
        plugin: Plugin,
        make_support: SupportFactory,
        ledger: Ledger,
        resume: ResumePoint,
        restart: RestartConfig,
        disk_reserve: u64,
    ) -> Result<Arc<Chain>, RuntimeError> {
        let status = Arc::new(ChainStatus::default());
        let plugin_name = plugin.name().to_string();
        let policy = restart.policy;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (halt_tx, halt_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let mut runner = Runner {
            channel: channel.to_string(),
            plugin,
            ledger: ledger.clone(),
            status: status.clone(),
            make_support,
            restart,
            disk_reserve,
            writer: None,
            start_height: 0,
            crash_times: VecDeque::new(),
        };
        let actor = std::thread::Builder::new()
            .name(format!("chain-{channel}"))
            .spawn(move || match runner.start_instance(resume) {
                Ok(core) => {
                    let _ = ready_tx.send(Ok(()));
                    run_actor(runner, core, rx, halt_rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("starting a chain thread: {e}")))?;
        let started = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(RuntimeError::Engine("the chain thread ended before starting the plugin".into())));
        if let Err(e) = started {
            let _ = actor.join();
            return Err(e);
        }
        Ok(Arc::new(Chain {
            channel: channel.to_string(),
            plugin: plugin_name,
            policy,
            halt: halt_tx,
            tx,
            status,
            ledger,
            threads: Mutex::new(vec![actor]),
        }))
    }

    /// The channel id.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The consenter plugin ordering this chain (its consensus type).
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// What the chain does when its plugin crashes.
    pub fn restart_policy(&self) -> RestartPolicy {
        self.policy
    }

    /// Status (errored or not, crash counters).
    pub fn status(&self) -> &Arc<ChainStatus> {
        &self.status
    }

    /// The chain's ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Offers an envelope; waits for queue space (back-pressure) and for
    /// the plugin's answer.
    pub async fn enqueue(&self, env: Envelope) -> Result<(), EnqueueError> {
        self.submit(env).await?.await
    }

    /// Queues an envelope for the plugin (waiting for queue space: the
    /// back-pressure) and returns the plugin's answer to come, so a
    /// Broadcast stream can have many envelopes in flight and still answer
    /// in order.
    ///
    /// The envelope keeps the config sequence it was validated under
    /// (`config_seq`, stamped by Broadcast's checks): if a config block
    /// commits meanwhile, the plugin sees an older sequence and must
    /// revalidate it, and the host refuses to write it otherwise.
    pub async fn submit(
        &self,
        env: Envelope,
    ) -> Result<impl Future<Output = Result<(), EnqueueError>> + Send + 'static, EnqueueError> {
        if let Some(reason) = self.status.errored() {
            return Err(EnqueueError::Errored { channel: self.channel.clone(), reason });
        }
        let (rtx, rrx) = oneshot::channel();
        if self.tx.send(Offer(env, rtx)).await.is_err() {
            return Err(EnqueueError::Halted { channel: self.channel.clone() });
        }
        let channel = self.channel.clone();
        Ok(async move { rrx.await.unwrap_or(Err(EnqueueError::Halted { channel })) })
    }

    /// Halts the plugin, waits for queued blocks to be durable, and stops
    /// the chain's threads.
    pub fn halt(&self) {
        self.halt.send_replace(true);
        // Waiting Deliver streams end (SERVICE_UNAVAILABLE) and new
        // Broadcasts are refused, as after any chain error.
        self.status.set_errored(format!("channel {} is halted", self.channel));
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        self.status.set_state(ChainState::Halted);
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        self.halt.send_replace(true);
    }
}

/// A sink that hands blocks to a new ledger writer thread for `ledger`
/// (group commit). The thread ends, after writing everything queued, when
/// the sink is dropped; a write error marks `status` errored for good.
/// Before each group the writer checks that the ledger's filesystem keeps
/// `disk_reserve` bytes free after it; if not, the chain errs (nothing is
/// written, so nothing is torn) and the node and its other chains go on.
pub fn ledger_sink(
    channel: &str,
    ledger: Ledger,
    status: Arc<ChainStatus>,
    disk_reserve: u64,
) -> Result<(Box<dyn BlockSink>, JoinHandle<()>), RuntimeError> {
    let (wtx, wrx) = std_mpsc::channel::<Queued>();
    let ch = channel.to_string();
    let writer = std::thread::Builder::new()
        .name(format!("ledger-{channel}"))
        .spawn(move || ledger_writer(&ch, ledger, wrx, status, disk_reserve))
        .map_err(|e| RuntimeError::Engine(format!("starting a ledger writer thread: {e}")))?;
    Ok((Box::new(ChannelSink(wtx)), writer))
}

/// A block queued for the ledger and what runs once it is durable.
struct Queued(Bytes, Option<OnDurable>);

struct ChannelSink(std_mpsc::Sender<Queued>);

impl BlockSink for ChannelSink {
    fn write(&mut self, number: u64, block: Bytes, on_durable: Option<OnDurable>) -> Result<(), String> {
        self.0.send(Queued(block, on_durable)).map_err(|_| format!("the ledger writer stopped before block {number}"))
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub fn free_disk_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Appends blocks as they come, grouping whatever queued up into one fsync;
/// then runs what waited for them to be durable.
fn ledger_writer(
    channel: &str,
    ledger: Ledger,
    rx: std_mpsc::Receiver<Queued>,
    status: Arc<ChainStatus>,
    reserve: u64,
) {
    const GROUP_BYTES: usize = 64 << 20;
    while let Ok(first) = rx.recv() {
        let mut size = first.0.len();
        let mut group = vec![first.0];
        let mut after: Vec<OnDurable> = first.1.into_iter().collect();
        while size < GROUP_BYTES {
            match rx.try_recv() {
                Ok(Queued(b, f)) => {
                    size += b.len();
                    group.push(b);
                    after.extend(f);
                }
                Err(_) => break,
            }
        }
        if reserve > 0 {
            match free_disk_bytes(ledger.dir()) {
                Ok(free) if free < reserve.saturating_add(size as u64) => {
                    let reason = format!(
                        "the ledger's disk ({}) has {} MiB free, under the reserve of {} MiB (--disk-reserve-mib) \
                         after {} more bytes: channel {channel} stops writing; free space and restart the node",
                        ledger.dir().display(),
                        free >> 20,
                        reserve >> 20,
                        size
                    );
                    tracing::error!(
                        channel,
                        free_mib = free >> 20,
                        reserve_mib = reserve >> 20,
                        "ledger disk nearly full; the chain stops"
                    );
                    status.set_fatal(reason);
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(channel, error = %e, "cannot read the ledger disk's free space"),
            }
        }
        if let Err(e) = ledger.append(&group) {
            tracing::error!(channel, error = %e, "ledger write failed; the chain stops");
            status.set_fatal(format!("ledger write failed: {e}"));
            return;
        }
        for f in after {
            f();
        }
    }
}

/// What the actor needs to (re)start plugin instances of one chain.
struct Runner {
    channel: String,
    plugin: Plugin,
    ledger: Ledger,
    status: Arc<ChainStatus>,
    make_support: SupportFactory,
    restart: RestartConfig,
    /// Free bytes the ledger writer keeps on the ledger's disk.
    disk_reserve: u64,
    /// The ledger writer of the current instance.
    writer: Option<JoinHandle<()>>,
    /// The height the current instance started at.
    start_height: u64,
    /// When the plugin crashed within the crash window.
    crash_times: VecDeque<Instant>,
}

/// The actor's phase.
enum Phase {
    Running(Box<ChainCore>),
    /// Waiting to restart at this instant.
    Backoff(Instant),
    /// Errored for good (or halted).
    Down,
}

impl Runner {
    /// A new instance at the ledger's last durable block: a fresh ledger
    /// writer and support, `handle-chain(metadata)`, `start`.
    fn start_instance(&mut self, rp: ResumePoint) -> Result<ChainCore, RuntimeError> {
        let (sink, writer) = ledger_sink(&self.channel, self.ledger.clone(), self.status.clone(), self.disk_reserve)?;
        self.start_height = rp.pos.height;
        self.status.absolute_max_bytes.store(rp.config.batch_size.absolute_max_bytes, Ordering::Relaxed);
        self.status.sequence.store(rp.config.sequence, Ordering::Relaxed);
        let support = (self.make_support)(sink, rp.pos, rp.config);
        match ChainCore::start(&self.plugin, support, &rp.metadata, self.status.clone()) {
            Ok(core) => {
                self.writer = Some(writer);
                Ok(core)
            }
            Err(e) => {
                // The support (and its sink) went with the failed instance.
                let _ = writer.join();
                Err(e)
            }
        }
    }

    /// Ends an instance: every block it wrote becomes durable; returns how
    /// many envelopes it accepted but did not write.
    fn tear_down(&mut self, mut core: ChainCore) -> u64 {
        // A plugin that reported a failure still gets `halt` (its Store is
        // alive); a trapped one has no Store left.
        core.halt();
        // Written: handed to the ledger writer, which makes them durable
        // below (a write that fails makes the chain fail for good).
        let lost = core.accepted().saturating_sub(core.written_envelopes());
        drop(core);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        lost
    }

    /// Records a crash and decides what follows: a restart after a backoff,
    /// or errored for good.
    fn on_crash(&mut self, reason: String, restartable: bool, lost: u64) -> Phase {
        let st = &self.status;
        let crashes = st.crashes.fetch_add(1, Ordering::Relaxed) + 1;
        st.lost_envelopes.fetch_add(lost, Ordering::Relaxed);
        *st.last_crash.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
        let ch = &self.channel;
        tracing::error!(channel = %ch, crashes, lost_envelopes = lost, %reason, policy = %self.restart.policy, "plugin instance crashed");
        if !restartable || st.fatal.load(Ordering::Relaxed) || self.restart.policy == RestartPolicy::FailClosed {
            st.set_state(ChainState::Errored);
            st.set_errored(reason);
            return Phase::Down;
        }
        let now = Instant::now();
        while self.crash_times.front().is_some_and(|t| now.duration_since(*t) > self.restart.crash_window) {
            self.crash_times.pop_front();
        }
        self.crash_times.push_back(now);
        let recent = self.crash_times.len() as u32;
        if recent >= self.restart.max_crashes {
            tracing::error!(channel = %ch, crashes = recent, window_s = self.restart.crash_window.as_secs(), "crash loop: the chain stays errored");
            st.set_state(ChainState::Errored);
            st.replace_errored(format!(
                "crash loop: {recent} plugin crashes within {:?}, the chain stays errored; last: {reason}",
                self.restart.crash_window
            ));
            return Phase::Down;
        }
        let delay = self.restart.backoff(recent);
        tracing::warn!(channel = %ch, delay_ms = delay.as_millis() as u64, attempt = recent, "plugin instance restart scheduled");
        st.set_state(ChainState::Restarting);
        st.replace_errored(format!("restarting the plugin instance in {delay:?} after a crash: {reason}"));
        Phase::Backoff(now + delay)
    }

    /// Starts a new instance after a backoff.
    fn restart(&mut self) -> Phase {
        let resume = ResumePoint::read(&self.channel, &self.ledger).map_err(|e| RuntimeError::Instantiate {
            plugin: self.plugin.name().to_string(),
            channel: self.channel.clone(),
            reason: e.to_string(),
        });
        match resume.and_then(|rp| self.start_instance(rp)) {
            Ok(core) => {
                let restarts = self.status.restarts.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(channel = %self.channel, restarts, height = self.start_height, "plugin instance restarted from the last written block");
                self.status.set_state(ChainState::Running);
                self.status.clear_errored();
                Phase::Running(Box::new(core))
            }
            Err(e) => self.on_crash(e.to_string(), true, 0),
        }
    }
}

/// The actor loop on the chain's own thread: a current-thread runtime that
/// waits for the next event, the next timer or the end of a backoff.
fn run_actor(mut runner: Runner, core: ChainCore, mut rx: mpsc::Receiver<Offer>, mut halt: watch::Receiver<bool>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
        Ok(rt) => rt,
        Err(e) => {
            runner.status.set_fatal(format!("starting the chain's event loop: {e}"));
            return;
        }
    };
    // A host failure (the ledger writer) is handled as a crash at once, so
    // the chain's state and counters agree with its status.
    let mut errored = runner.status.subscribe();
    let phase = rt.block_on(async {
        let mut phase = Phase::Running(Box::new(core));
        loop {
            phase = settle(phase, &mut runner);
            let deadline = match &phase {
                Phase::Running(core) => core.next_deadline(),
                Phase::Backoff(at) => Some(*at),
                Phase::Down => None,
            };
            let first = tokio::select! {
                biased;
                _ = halt.changed() => break,
                Ok(()) = errored.changed() => continue,
                ev = rx.recv() => match ev {
                    Some(ev) => ev,
                    None => break,
                },
                _ = sleep_until_opt(deadline) => {
                    if let Phase::Running(core) = &mut phase {
                        core.fire_timers(Instant::now());
                    }
                    continue;
                }
            };
            let Phase::Running(core) = &mut phase else {
                // Restarting or errored: answer at once.
                let reason = runner.status.errored().unwrap_or_else(|| runner.status.state().to_string());
                let _ = first.1.send(Err(EnqueueError::Errored { channel: runner.channel.clone(), reason }));
                continue;
            };
            // Deliver what queued up meanwhile in one call (in order).
            // At most MAX_GROUP envelopes and a quarter of the plugin's
            // held-bytes budget (so grouping never makes it pass it).
            let max_bytes = core.max_group_bytes();
            let mut bytes = first.0.bytes.len();
            let mut envs = vec![first.0];
            let mut replies = vec![first.1];
            while envs.len() < MAX_GROUP && bytes < max_bytes {
                let Ok(Offer(env, reply)) = rx.try_recv() else { break };
                bytes += env.bytes.len();
                envs.push(env);
                replies.push(reply);
            }
            let results = core.enqueue_many(envs);
            if core.next_deadline().is_some_and(|d| d <= Instant::now()) {
                core.fire_timers(Instant::now());
            }
            // A crash is handled before the answers go out, so a client
            // that sends again sees the chain restarting or errored.
            phase = settle(phase, &mut runner);
            for (r, reply) in results.into_iter().zip(replies) {
                let _ = reply.send(r);
            }
        }
        phase
    });
    if let Phase::Running(core) = phase {
        runner.tear_down(*core);
    }
}

/// The next phase: a crashed instance is torn down and the restart policy
/// applied; a backoff that ran out starts a new instance.
fn settle(phase: Phase, runner: &mut Runner) -> Phase {
    match phase {
        Phase::Running(core) => match core.crashed() {
            Some((reason, restartable)) => {
                let lost = runner.tear_down(*core);
                runner.on_crash(reason, restartable, lost)
            }
            None => Phase::Running(core),
        },
        Phase::Backoff(at) if at <= Instant::now() => runner.restart(),
        other => other,
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let c = RestartConfig::new(RestartPolicy::Reload);
        let ms: Vec<u128> = (1..=9).map(|n| c.backoff(n).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(c.backoff(200), Duration::from_secs(10), "no overflow");
    }

    #[test]
    fn restart_policy_defaults_and_overrides() {
        let mut p = RestartPolicies::default();
        assert_eq!(p.for_chain("ch", "solo", true).policy, RestartPolicy::Reload);
        assert_eq!(p.for_chain("ch", "mine", false).policy, RestartPolicy::FailClosed);
        p.by_plugin.insert("mine".into(), RestartPolicy::Reload);
        p.by_channel.insert("strict".into(), RestartPolicy::FailClosed);
        assert_eq!(p.for_chain("ch", "mine", false).policy, RestartPolicy::Reload);
        assert_eq!(p.for_chain("strict", "mine", false).policy, RestartPolicy::FailClosed, "channel wins");
        assert_eq!("fail-closed".parse::<RestartPolicy>(), Ok(RestartPolicy::FailClosed));
        assert!("sometimes".parse::<RestartPolicy>().is_err());
    }
}
