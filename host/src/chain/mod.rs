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
//! When a config block it wrote changes the channel's consensus type, the
//! actor swaps plugins at that block: the old instance is halted, the new
//! type's plugin starts from `handle-chain` with empty metadata (Fabric's
//! rule after a type change) on the same ledger writer, and what the
//! host's cutter held for the old one is offered to it first, in order,
//! before anything queued after.
//!
//! Envelopes the crashed instance accepted but did not write are reported
//! as lost (counted in [`ChainStatus::lost_envelopes`] and logged), not
//! re-enqueued: a poison envelope would crash the new instance too, and a
//! Fabric client learns that a transaction was ordered from Deliver, not
//! from Broadcast's SUCCESS.

use std::collections::VecDeque;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use crate::channel::ChannelConfig;
use crate::envelope::Envelope;
use crate::ledger::Ledger;
use crate::runtime::{Plugin, RuntimeError};
use crate::support::{BlockSink, ChainPosition, Support};

mod actor;
pub mod cluster;

use actor::{Inputs, Runner, run_actor};
mod restart;
mod resume;
mod writer;

pub use consenter_runtime::chain_core::{ChainCore, EnqueueError};
pub use consenter_runtime::status::{ChainState, ChainStatus, PluginBuild};
pub use restart::{RestartConfig, RestartPolicies, RestartPolicy};
pub use resume::{ResumeError, ResumePoint};
pub use writer::{free_disk_bytes, ledger_sink};

/// An envelope offered to the chain and where its answer goes.
struct Offer(Envelope, oneshot::Sender<Result<(), EnqueueError>>);

/// An event from the cluster for a clustered chain (delivered on the
/// chain's thread, between plugin calls).
#[derive(Debug)]
pub enum ClusterEvent {
    /// A consensus message from member `from` (authenticated by the
    /// transport), sent by its plugin of consensus type `sender_type` (""
    /// if it did not say) at ledger height `sender_height`.
    Message { from: u64, payload: bytes::Bytes, sender_type: String, sender_height: u64 },
    /// A consensus message of a TLS certificate that is no member of the
    /// channel (refused by the transport), sent at ledger height
    /// `sender_height` (see `ChainCore::on_non_member_message`).
    NonMember { sender_height: u64 },
    /// Blocks a catch-up pulled and verified, in order.
    Pulled(Vec<bytes::Bytes>),
    /// The catch-up ended (`Some`: why it stopped short).
    CaughtUp(Option<String>),
}

/// Capacity of a chain's cluster event queue: beyond it, messages are
/// dropped (raft resends).
pub const CLUSTER_QUEUE: usize = 4096;

/// Builds a chain's support for an instance of a plugin around a block
/// sink, at a position, under a configuration, for the chain with that
/// status (called again for every restarted instance, and for the new
/// plugin of a live swap).
pub type SupportFactory =
    Box<dyn Fn(&Plugin, Box<dyn BlockSink>, ChainPosition, Arc<ChannelConfig>, &Arc<ChainStatus>) -> Support + Send>;

/// The plugin of a consensus type, for a live swap (None: no plugin).
pub type PluginResolver = Box<dyn Fn(&str) -> Option<Plugin> + Send>;

/// Told when a chain rolled an upgrade back: the build that failed on
/// probation and why (the node then stops offering that build).
pub type RollbackHook = Arc<dyn Fn(&str, &Plugin, &str) + Send + Sync>;

/// Prepares the new consensus type of a live swap before its first
/// instance starts (channel, the new type's plugin): Fabric starts a new
/// type fresh, so the node empties that type's plugin storage namespace
/// (state left by an earlier run of the type on this channel is void).
/// Err: why the swap cannot go on (the chain then errs with it).
pub type SwapHook = Arc<dyn Fn(&str, &Plugin) -> Result<(), String> + Send + Sync>;

/// How long a live upgrade's new build is on probation by default: a trap
/// or failure within it rolls the chain back to the build before.
pub const DEFAULT_PROBATION: std::time::Duration = std::time::Duration::from_secs(60);

/// How a chain runs: its restart policy, the disk space its ledger writer
/// keeps free, its cluster event queue (on a node with a cluster), and
/// what it calls on live swaps, upgrades and rollbacks.
pub struct ChainOptions {
    /// What happens when the plugin crashes.
    pub restart: RestartConfig,
    /// Free bytes the ledger writer keeps on the ledger's disk (0: none).
    pub disk_reserve: u64,
    /// The cluster event queue (sender and receiver): any chain of a node
    /// with a cluster has one, so a swap to a clustered type can use it
    /// (a single-node instance ignores what arrives).
    pub cluster: Option<(mpsc::Sender<ClusterEvent>, mpsc::Receiver<ClusterEvent>)>,
    /// Where a live swap finds the plugin of the new consensus type (None:
    /// the chain errs when a config block changes its type).
    pub resolve: Option<PluginResolver>,
    /// How long a live upgrade's new build is on probation.
    pub probation: std::time::Duration,
    /// Told when the chain rolls an upgrade back.
    pub on_rollback: Option<RollbackHook>,
    /// Called before the new plugin of a live swap starts.
    pub on_swap: Option<SwapHook>,
}

/// A running chain: its actor thread (which owns the ledger writer) and
/// its status.
pub struct Chain {
    channel: String,
    policy: RestartPolicy,
    halt: watch::Sender<bool>,
    tx: mpsc::Sender<Offer>,
    cluster: Option<mpsc::Sender<ClusterEvent>>,
    /// New builds of the chain's plugin (live upgrades).
    upgrades: mpsc::UnboundedSender<Plugin>,
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
        opts: ChainOptions,
    ) -> Result<Arc<Chain>, RuntimeError> {
        let ChainOptions { restart, disk_reserve, cluster, resolve, probation, on_rollback, on_swap } = opts;
        let (cluster_tx, cluster_rx) = match cluster {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        };
        let status = Arc::new(ChainStatus::default());
        status.set_plugin(plugin.name());
        status.set_build(PluginBuild { version: plugin.version().into(), sha256: plugin.sha256().into() });
        let policy = restart.policy;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (upgrades_tx, upgrades_rx) = mpsc::unbounded_channel();
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
            resolve,
            probation_window: probation,
            probation: None,
            on_rollback,
            on_swap,
        };
        let actor = std::thread::Builder::new()
            .name(format!("chain-{channel}"))
            .spawn(move || match runner.start_instance(resume) {
                Ok(core) => {
                    let _ = ready_tx.send(Ok(()));
                    run_actor(
                        runner,
                        core,
                        Inputs { offers: rx, cluster: cluster_rx, upgrades: upgrades_rx, halt: halt_rx },
                    );
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
            policy,
            halt: halt_tx,
            tx,
            cluster: cluster_tx,
            upgrades: upgrades_tx,
            status,
            ledger,
            threads: Mutex::new(vec![actor]),
        }))
    }

    /// The channel id.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The consenter plugin ordering this chain now (its consensus type;
    /// a live swap changes it).
    pub fn plugin(&self) -> String {
        self.status.plugin()
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

    /// Hands a cluster event to the chain without waiting; false if the
    /// chain is not clustered or its queue is full (the event is dropped).
    pub fn cluster_event(&self, ev: ClusterEvent) -> bool {
        self.cluster.as_ref().is_some_and(|tx| tx.try_send(ev).is_ok())
    }

    /// Upgrades the chain's plugin to a new build of the same consensus type,
    /// live: between two plugin calls (so at a block boundary: what the
    /// host's cutter holds goes to the new instance), the old instance is
    /// halted and the new one starts from the last block's consenter
    /// metadata with the same plugin storage, on probation (see
    /// [`ChainOptions::probation`]). False if the chain's actor has ended.
    pub fn upgrade(&self, plugin: Plugin) -> bool {
        self.upgrades.send(plugin).is_ok()
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
