//! The chain actor: one thread per channel owns the plugin instance and
//! delivers events to it one at a time (enqueue, timer, halt); a second
//! thread writes the blocks the plugin produces to the ledger (group commit:
//! one fsync for every block that queued up meanwhile). The [`ChainCore`]
//! inside is the deterministic part (the test host drives it directly with
//! its own clock). May touch the plugin instance, its ledger and its status.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::channel::ChannelConfig;
use crate::envelope::Envelope;
use crate::ledger::Ledger;
use crate::runtime::{Instance, Plugin, RuntimeError};
use crate::support::{BlockSink, Support};

/// Shared view of a chain's health (Fabric's `Errored()` channel).
#[derive(Debug)]
pub struct ChainStatus {
    errored: watch::Sender<Option<String>>,
    /// The channel's AbsoluteMaxBytes now (Broadcast's size check).
    absolute_max_bytes: AtomicU32,
    /// The channel's config sequence now (what Broadcast validates under).
    sequence: AtomicU64,
    /// The channel's config bundle now (policies, MSPs, orderer values).
    config: RwLock<Option<Arc<ChannelConfig>>>,
}

impl Default for ChainStatus {
    fn default() -> Self {
        ChainStatus {
            errored: watch::channel(None).0,
            absolute_max_bytes: AtomicU32::new(u32::MAX),
            sequence: AtomicU64::new(0),
            config: RwLock::new(None),
        }
    }
}

impl ChainStatus {
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
        let mut core = ChainCore { instance, status, channel };
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
            Ok(answers) => answers
                .into_iter()
                .map(|ok| if ok { Ok(()) } else { Err(EnqueueError::Refused { channel: self.channel.clone() }) })
                .collect(),
            Err(e) => vec![Err(e); n],
        }
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

/// A running chain: its actor thread, its ledger writer and its status.
pub struct Chain {
    channel: String,
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
    /// Starts a chain: a ledger writer thread, then the actor thread, which
    /// instantiates the plugin and runs `handle-chain` and `start`. Returns
    /// once the plugin started (or failed to).
    pub fn spawn(
        channel: &str,
        plugin: Plugin,
        make_support: impl FnOnce(Box<dyn BlockSink>) -> Support + Send + 'static,
        metadata: Vec<u8>,
        ledger: Ledger,
    ) -> Result<Arc<Chain>, RuntimeError> {
        let status = Arc::new(ChainStatus::default());
        let (sink, writer) = ledger_sink(channel, ledger.clone(), status.clone())?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (halt_tx, halt_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let actor_status = status.clone();
        let actor = std::thread::Builder::new()
            .name(format!("chain-{channel}"))
            .spawn(move || {
                let support = make_support(sink);
                match ChainCore::start(&plugin, support, &metadata, actor_status) {
                    Ok(core) => {
                        let _ = ready_tx.send(Ok(()));
                        run_actor(core, rx, halt_rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("starting a chain thread: {e}")))?;
        let started = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(RuntimeError::Engine("the chain thread ended before starting the plugin".into())));
        if let Err(e) = started {
            let _ = actor.join();
            let _ = writer.join();
            return Err(e);
        }
        Ok(Arc::new(Chain {
            channel: channel.to_string(),
            halt: halt_tx,
            tx,
            status,
            ledger,
            threads: Mutex::new(vec![actor, writer]),
        }))
    }

    /// The channel id.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Status (errored or not).
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
    pub async fn submit(
        &self,
        mut env: Envelope,
    ) -> Result<impl Future<Output = Result<(), EnqueueError>> + Send + 'static, EnqueueError> {
        if let Some(reason) = self.status.errored() {
            return Err(EnqueueError::Errored { channel: self.channel.clone(), reason });
        }
        // The envelope was checked by Broadcast under the current config.
        env.config_seq = self.status.sequence();
        let (rtx, rrx) = oneshot::channel();
        if self.tx.send(Offer(env, rtx)).await.is_err() {
            return Err(EnqueueError::Halted { channel: self.channel.clone() });
        }
        let channel = self.channel.clone();
        Ok(async move { rrx.await.unwrap_or(Err(EnqueueError::Halted { channel })) })
    }

    /// Halts the plugin, waits for queued blocks to be durable, and stops
    /// both threads.
    pub fn halt(&self) {
        self.halt.send_replace(true);
        // Waiting Deliver streams end (SERVICE_UNAVAILABLE) and new
        // Broadcasts are refused, as after any chain error.
        self.status.set_errored(format!("channel {} is halted", self.channel));
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        self.halt.send_replace(true);
    }
}

/// A sink that hands blocks to a new ledger writer thread for `ledger`
/// (group commit). The thread ends, after writing everything queued, when
/// the sink is dropped; a write error marks `status` errored.
pub fn ledger_sink(
    channel: &str,
    ledger: Ledger,
    status: Arc<ChainStatus>,
) -> Result<(Box<dyn BlockSink>, JoinHandle<()>), RuntimeError> {
    let (wtx, wrx) = std_mpsc::channel::<Bytes>();
    let writer = std::thread::Builder::new()
        .name(format!("ledger-{channel}"))
        .spawn(move || ledger_writer(ledger, wrx, status))
        .map_err(|e| RuntimeError::Engine(format!("starting a ledger writer thread: {e}")))?;
    Ok((Box::new(ChannelSink(wtx)), writer))
}

struct ChannelSink(std_mpsc::Sender<Bytes>);

impl BlockSink for ChannelSink {
    fn write(&mut self, number: u64, block: Bytes) -> Result<(), String> {
        self.0.send(block).map_err(|_| format!("the ledger writer stopped before block {number}"))
    }
}

/// Appends blocks as they come, grouping whatever queued up into one fsync.
fn ledger_writer(ledger: Ledger, rx: std_mpsc::Receiver<Bytes>, status: Arc<ChainStatus>) {
    const GROUP_BYTES: usize = 64 << 20;
    while let Ok(first) = rx.recv() {
        let mut size = first.len();
        let mut group = vec![first];
        while size < GROUP_BYTES {
            match rx.try_recv() {
                Ok(b) => {
                    size += b.len();
                    group.push(b);
                }
                Err(_) => break,
            }
        }
        if let Err(e) = ledger.append(&group) {
            tracing::error!(error = %e, "ledger write failed; the chain stops");
            status.set_errored(format!("ledger write failed: {e}"));
            return;
        }
    }
}

/// The actor loop on the chain's own thread: a current-thread runtime that
/// waits for the next event or the next timer.
fn run_actor(mut core: ChainCore, mut rx: mpsc::Receiver<Offer>, mut halt: watch::Receiver<bool>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
        Ok(rt) => rt,
        Err(e) => {
            core.status.set_errored(format!("starting the chain's event loop: {e}"));
            return;
        }
    };
    rt.block_on(async move {
        loop {
            let deadline = core.next_deadline();
            let first = tokio::select! {
                biased;
                _ = halt.changed() => break,
                ev = rx.recv() => match ev {
                    Some(ev) => ev,
                    None => break,
                },
                _ = sleep_until_opt(deadline) => {
                    core.fire_timers(Instant::now());
                    continue;
                }
            };
            // Deliver what queued up meanwhile in one call (in order).
            let mut envs = vec![first.0];
            let mut replies = vec![first.1];
            while envs.len() < MAX_GROUP {
                let Ok(Offer(env, reply)) = rx.try_recv() else { break };
                envs.push(env);
                replies.push(reply);
            }
            for (r, reply) in core.enqueue_many(envs).into_iter().zip(replies) {
                let _ = reply.send(r);
            }
            if core.next_deadline().is_some_and(|d| d <= Instant::now()) {
                core.fire_timers(Instant::now());
            }
        }
        core.halt();
    });
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
