//! The chain actor's loop on the chain's own thread: waits for the next
//! envelope, timer or end of a backoff, drives the [`ChainCore`], applies
//! the restart policy when the instance crashes, swaps plugins when a
//! config block changes the channel's consensus type, and upgrades the
//! plugin's build live (rolling back a build that fails on probation).

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use super::restart::{RestartConfig, RestartPolicy};
use super::resume::ResumePoint;
use super::writer::ledger_sink;
use super::{ClusterEvent, MAX_GROUP, Offer, PluginResolver, RollbackHook, SupportFactory, SwapHook};
use crate::chain::{ChainCore, ChainState, ChainStatus, EnqueueError, PluginBuild};
use crate::envelope::Envelope;
use crate::ledger::Ledger;
use crate::runtime::{Plugin, RuntimeError};
use crate::support::Support;

/// What the actor needs to (re)start plugin instances of one chain.
pub(super) struct Runner {
    pub(super) channel: String,
    pub(super) plugin: Plugin,
    pub(super) ledger: Ledger,
    pub(super) status: Arc<ChainStatus>,
    pub(super) make_support: SupportFactory,
    pub(super) restart: RestartConfig,
    /// Free bytes the ledger writer keeps on the ledger's disk.
    pub(super) disk_reserve: u64,
    /// The ledger writer of the current instance.
    pub(super) writer: Option<JoinHandle<()>>,
    /// The height the current instance started at.
    pub(super) start_height: u64,
    /// When the plugin crashed within the crash window.
    pub(super) crash_times: VecDeque<Instant>,
    /// The plugins of other consensus types (live swaps).
    pub(super) resolve: Option<PluginResolver>,
    /// How long a live upgrade's new build is on probation.
    pub(super) probation_window: Duration,
    /// While a new build is on probation: the build before it, and until
    /// when. A crash meanwhile rolls the chain back to that build.
    pub(super) probation: Option<(Plugin, Instant)>,
    /// Told when the chain rolls an upgrade back.
    pub(super) on_rollback: Option<RollbackHook>,
    /// Prepares a live swap's new type before it starts.
    pub(super) on_swap: Option<SwapHook>,
}

/// What the actor waits on.
pub(super) struct Inputs {
    /// Envelopes from Broadcast (and forwarded ones), with their answer.
    pub(super) offers: mpsc::Receiver<Offer>,
    /// Cluster events of a clustered chain.
    pub(super) cluster: Option<mpsc::Receiver<ClusterEvent>>,
    /// New builds of the chain's plugin (live upgrades).
    pub(super) upgrades: mpsc::UnboundedReceiver<Plugin>,
    /// Set when the chain halts.
    pub(super) halt: watch::Receiver<bool>,
}

/// A plugin's build as the chain's status shows it.
fn build_of(p: &Plugin) -> PluginBuild {
    PluginBuild { version: p.version().to_string(), sha256: p.sha256().to_string() }
}

/// A build's name in logs and reasons: its version and short hash.
fn label(p: &Plugin) -> String {
    let short = &p.sha256()[..p.sha256().len().min(12)];
    match p.version() {
        "" => format!("{} (sha256 {short})", p.name()),
        v => format!("{} {v} (sha256 {short})", p.name()),
    }
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
    pub(super) fn start_instance(&mut self, rp: ResumePoint) -> Result<ChainCore, RuntimeError> {
        let (sink, writer) = ledger_sink(&self.channel, self.ledger.clone(), self.status.clone(), self.disk_reserve)?;
        self.start_height = rp.pos.height;
        let mut support = (self.make_support)(&self.plugin, sink, rp.pos, rp.config, &self.status);
        support.set_last_metadata(rp.metadata.to_vec());
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
        let lost = core.unaccounted();
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
        let crashes = st.record_crash(&reason, lost);
        let ch = &self.channel;
        tracing::error!(channel = %ch, crashes, lost_envelopes = lost, %reason, policy = %self.restart.policy, "plugin instance crashed");
        if !restartable || st.is_fatal() || self.restart.policy == RestartPolicy::FailClosed {
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

    /// Swaps plugins at the config block the running instance just wrote,
    /// which changed the channel's consensus type to `to`: the old instance
    /// is halted; the new plugin starts with empty metadata on the old
    /// support's block sink, position and config (the ledger writer goes
    /// on, blocks stay in order); what the host's cutter held for the old
    /// one is offered to the new one first, in order.
    fn swap(&mut self, core: ChainCore, to: String) -> Phase {
        let started = Instant::now();
        let from = self.plugin.name().to_string();
        let ch = self.channel.clone();
        // A new type gets the envelopes, not the old type's state.
        let (pending, old, _) = self.hand_off(core, "swap");
        let next = self.resolve.as_ref().and_then(|r| r(&to));
        let Some((next, old)) = next.zip(old) else {
            let reason = format!(
                "a config block changed the consensus type from {from:?} to {to:?}, which has no plugin on this node \
                 (or the old instance ended)"
            );
            if let Some(w) = self.writer.take() {
                let _ = w.join();
            }
            return self.on_crash(reason, false, pending.len() as u64);
        };
        if let Some(Err(e)) = self.on_swap.as_ref().map(|hook| hook(&ch, &next)) {
            drop(old);
            if let Some(w) = self.writer.take() {
                let _ = w.join();
            }
            let lost = pending.len() as u64;
            return self.on_crash(format!("preparing plugin {to} for a consensus-type change: {e}"), false, lost);
        }
        self.plugin = next;
        // A build on probation is confirmed by a type change: the build
        // before it was of the old type.
        self.probation = None;
        self.status.end_probation();
        self.status.set_build(build_of(&self.plugin));
        let handed = pending.len();
        // Fabric: a new consensus type starts without metadata.
        match self.start_on(old, Vec::new(), pending, None) {
            Ok(core) => {
                let swaps = self.status.record_swap(&from, &to);
                crate::metrics::plugin_swapped(&ch, &from, &to);
                let pause = started.elapsed();
                self.status.record_swap_pause(pause);
                tracing::info!(
                    channel = %ch, from = %from, to = %to, swaps, handed_over = handed, height = self.start_height,
                    pause_us = pause.as_micros() as u64,
                    "consensus plugin swapped at the config block"
                );
                Phase::Running(Box::new(core))
            }
            // The old plugin cannot order the new type's config: the chain
            // errs with the reason, as a chain that cannot start.
            Err((e, _)) => self.on_crash(format!("starting plugin {to} after a consensus-type change: {e}"), false, 0),
        }
    }

    /// Ends the running instance for a new plugin (a swap or an upgrade,
    /// `what`): takes what the host's cutter held for it and, from a plugin
    /// that exports `handover`, what it held itself and its state (handed
    /// over, not lost); otherwise halts it. Counts as lost what it kept to
    /// itself, and returns its support (None once it trapped).
    fn hand_off(&mut self, mut core: ChainCore, what: &str) -> (Vec<Envelope>, Option<Support>, Option<Vec<u8>>) {
        let (pending, state) = core.end_for_successor();
        let lost = core.unaccounted();
        if lost > 0 {
            // Envelopes the old instance kept to itself (neither in the
            // host's cutter nor handed over) do not survive it.
            self.status.add_lost(lost);
            tracing::warn!(channel = %self.channel, from = %label(&self.plugin), lost, "envelopes the old instance held were lost in the {what}");
        }
        (pending, core.into_support(), state)
    }

    /// Starts `self.plugin` on the old instance's support: its block sink
    /// (the ledger writer keeps running, no wait for its fsync, blocks stay
    /// in one queue, in order), position and config, with consenter
    /// metadata `metadata` and the state the old instance handed over, if
    /// any; then offers it `pending` (accepted already: their answers went
    /// out), in order. On failure the writer has ended (the failed
    /// instance took the sink with it) and `pending` comes back.
    fn start_on(
        &mut self,
        old: Support,
        metadata: Vec<u8>,
        pending: Vec<Envelope>,
        state: Option<Vec<u8>>,
    ) -> Result<ChainCore, (RuntimeError, Vec<Envelope>)> {
        let (pos, config) = (old.position(), old.config().clone());
        let sink = old.into_sink();
        self.start_height = pos.height;
        let mut support = (self.make_support)(&self.plugin, sink, pos, config, &self.status);
        support.set_last_metadata(metadata.clone());
        match ChainCore::start_handed(&self.plugin, support, &metadata, self.status.clone(), state.as_deref()) {
            Ok(mut core) => {
                self.hand(&mut core, pending);
                Ok(core)
            }
            Err(e) => {
                if let Some(w) = self.writer.take() {
                    let _ = w.join();
                }
                Err((e, pending))
            }
        }
    }

    /// Offers `pending` to a new instance, in order, counting them handed
    /// over.
    fn hand(&self, core: &mut ChainCore, pending: Vec<Envelope>) {
        self.status.add_handed_over(pending.len() as u64);
        if !pending.is_empty() {
            // Their clients were answered already: one the new instance
            // refuses is lost.
            let refused = core.enqueue_many(pending).iter().filter(|r| r.is_err()).count() as u64;
            if refused > 0 {
                self.status.add_lost(refused);
                tracing::warn!(channel = %self.channel, plugin = %label(&self.plugin), refused, "the new instance refused envelopes handed over to it; they are lost");
            }
        }
    }

    /// Whether `next` is another build of the type this chain runs.
    fn is_new_build(&self, next: &Plugin) -> bool {
        next.name() == self.plugin.name() && next.sha256() != self.plugin.sha256()
    }

    /// Upgrades to `next`, a new build of the same consensus type, between
    /// two plugin calls (a block boundary: every block the old instance
    /// cut is written or queued to the writer): the old instance is halted,
    /// or hands over its state and what it held if it exports `handover`;
    /// the new one starts on the old support's block sink, position and
    /// config with the last block's consenter metadata (Fabric's restart
    /// rule: the type did not change), the same plugin storage and that
    /// state, and is offered what the old one held and what the host's
    /// cutter held for it, in order. The old build is kept while the new
    /// one is on probation.
    fn upgrade(&mut self, core: ChainCore, next: Plugin) -> Phase {
        if !self.is_new_build(&next) {
            return Phase::Running(Box::new(core));
        }
        let started = Instant::now();
        let (from, to) = (label(&self.plugin), label(&next));
        let (pending, old, state) = self.hand_off(core, "upgrade");
        let previous = std::mem::replace(&mut self.plugin, next);
        let Some(old) = old else {
            // The old instance trapped in `halt`: the new build starts from
            // the ledger once what was queued is durable.
            if let Some(w) = self.writer.take() {
                let _ = w.join();
            }
            self.begin_probation(previous);
            return self.restart_with(pending);
        };
        let metadata = old.last_metadata().to_vec();
        let handed = pending.len();
        // The old build's state (a new build without `handover` ignores it).
        match self.start_on(old, metadata, pending, state) {
            Ok(core) => {
                let upgrades = self.begin_probation(previous);
                crate::metrics::plugin_upgraded(&self.channel, self.plugin.name());
                tracing::info!(
                    channel = %self.channel, from = %from, to = %to, upgrades, handed_over = handed,
                    height = self.start_height, pause_us = started.elapsed().as_micros() as u64,
                    probation_s = self.probation_window.as_secs(), "plugin upgraded at a block boundary"
                );
                Phase::Running(Box::new(core))
            }
            Err((e, pending)) => self.rollback(previous, format!("the new build {to} did not start: {e}"), pending),
        }
    }

    /// Puts the build now in `self.plugin` on probation, keeping
    /// `previous` for a rollback; the upgrades so far.
    fn begin_probation(&mut self, previous: Plugin) -> u64 {
        let until = SystemTime::now() + self.probation_window;
        self.probation = Some((previous, Instant::now() + self.probation_window));
        self.status.record_upgrade(build_of(&self.plugin), Some(until))
    }

    /// Goes back to `back` after the build on probation failed (`reason`):
    /// a new instance of it from the ledger's last durable block, offered
    /// `pending` (envelopes accepted and not written, in order).
    fn rollback(&mut self, back: Plugin, reason: String, pending: Vec<Envelope>) -> Phase {
        let failed = std::mem::replace(&mut self.plugin, back);
        self.probation = None;
        let rollbacks = self.status.record_rollback(build_of(&self.plugin), &reason);
        crate::metrics::plugin_rolled_back(&self.channel, self.plugin.name());
        tracing::error!(
            channel = %self.channel, failed = %label(&failed), back_to = %label(&self.plugin), rollbacks, %reason,
            "plugin upgrade rolled back"
        );
        if let Some(hook) = &self.on_rollback {
            hook(&self.channel, &failed, &reason);
        }
        self.restart_with(pending)
    }

    /// A new instance of `self.plugin` from the ledger's last durable
    /// block, at once, offered `pending` in order.
    fn restart_with(&mut self, pending: Vec<Envelope>) -> Phase {
        match self.start_from_ledger() {
            Ok(mut core) => {
                self.status.set_state(ChainState::Running);
                self.status.clear_errored();
                self.hand(&mut core, pending);
                Phase::Running(Box::new(core))
            }
            Err(e) => self.on_crash(e.to_string(), true, pending.len() as u64),
        }
    }

    /// Starts a new instance after a backoff.
    fn restart(&mut self) -> Phase {
        match self.start_from_ledger() {
            Ok(core) => {
                let restarts = self.status.record_restart();
                tracing::info!(channel = %self.channel, restarts, height = self.start_height, "plugin instance restarted from the last written block");
                self.status.set_state(ChainState::Running);
                self.status.clear_errored();
                Phase::Running(Box::new(core))
            }
            Err(e) => self.on_crash(e.to_string(), true, 0),
        }
    }

    /// A new instance of `self.plugin` at the ledger's last durable block.
    fn start_from_ledger(&mut self) -> Result<ChainCore, RuntimeError> {
        let rp = ResumePoint::read(&self.channel, &self.ledger).map_err(|e| RuntimeError::Instantiate {
            plugin: self.plugin.name().to_string(),
            channel: self.channel.clone(),
            reason: e.to_string(),
        })?;
        self.start_instance(rp)
    }
}

/// The actor loop on the chain's own thread: a current-thread runtime that
/// waits for the next event, the next timer or the end of a backoff.
pub(super) fn run_actor(mut runner: Runner, core: ChainCore, inputs: Inputs) {
    let Inputs { offers: mut rx, mut cluster, mut upgrades, mut halt } = inputs;
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
                Some(ev) = recv_opt(&mut cluster) => {
                    if let Phase::Running(core) = &mut phase {
                        on_cluster_event(core, ev);
                    }
                    continue;
                }
                Some(next) = upgrades.recv() => {
                    phase = match phase {
                        Phase::Running(core) => runner.upgrade(*core, next),
                        Phase::Backoff(at) => {
                            // The restart after the backoff starts the new
                            // build, on probation.
                            if runner.is_new_build(&next) {
                                let previous = std::mem::replace(&mut runner.plugin, next);
                                runner.begin_probation(previous);
                            }
                            Phase::Backoff(at)
                        }
                        Phase::Down => {
                            tracing::warn!(channel = %runner.channel, build = %label(&next), "the chain is down: the new build is not started");
                            Phase::Down
                        }
                    };
                    continue;
                }
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
        let lost = runner.tear_down(*core);
        if lost > 0 {
            // Fabric's orderer drops its block cutter's pending batch when
            // it stops too; a client learns from Deliver what was ordered.
            runner.status.add_lost(lost);
            tracing::warn!(channel = %runner.channel, lost_envelopes = lost, "the chain halted holding envelopes accepted but not yet in a block: they are dropped");
        }
    }
}

/// The next phase: a crashed instance is torn down and the restart policy
/// applied; a backoff that ran out starts a new instance.
fn settle(phase: Phase, runner: &mut Runner) -> Phase {
    match phase {
        Phase::Running(core) => match core.crashed() {
            Some((reason, restartable)) => {
                let lost = runner.tear_down(*core);
                match runner.probation.take() {
                    // The new build failed on probation: back to the old.
                    Some((back, until)) if Instant::now() < until => {
                        runner.status.record_crash(&reason, lost);
                        let failed = label(&runner.plugin);
                        runner.rollback(back, format!("the new build {failed} failed on probation: {reason}"), vec![])
                    }
                    _ => runner.on_crash(reason, restartable, lost),
                }
            }
            None if runner.probation.as_ref().is_some_and(|(_, until)| *until <= Instant::now()) => {
                runner.probation = None;
                runner.status.end_probation();
                tracing::info!(channel = %runner.channel, build = %label(&runner.plugin), "the new build held its probation");
                settle(Phase::Running(core), runner)
            }
            // A config block it wrote changed the consensus type.
            None => match core.consensus_type().filter(|t| *t != runner.plugin.name()).map(str::to_string) {
                Some(to) => runner.swap(*core, to),
                None => Phase::Running(core),
            },
        },
        Phase::Backoff(at) if at <= Instant::now() => runner.restart(),
        other => other,
    }
}

/// The next cluster event, or never for a chain without a cluster.
async fn recv_opt(rx: &mut Option<mpsc::Receiver<ClusterEvent>>) -> Option<ClusterEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Delivers a cluster event to the plugin: a consensus message (one of
/// another consensus type is dropped, see `ChainCore::on_member_message`;
/// a non-member's only counts, and may start a catch-up),
/// pulled blocks (written by the host; the first refused one stops the
/// catch-up), the end of a catch-up.
fn on_cluster_event(core: &mut ChainCore, ev: ClusterEvent) {
    match ev {
        ClusterEvent::Message { from, payload, sender_type, sender_height } => {
            core.on_member_message(from, &payload, &sender_type, sender_height)
        }
        ClusterEvent::NonMember { sender_height } => core.on_non_member_message(sender_height),
        ClusterEvent::Pulled(blocks) => {
            for b in blocks {
                if let Err(e) = core.write_pulled(b) {
                    tracing::warn!(channel = %core.channel(), error = %e, "a pulled block was refused");
                    break;
                }
            }
        }
        ClusterEvent::CaughtUp(err) => {
            let height = core.support().map_or(0, |s| s.height());
            core.caught_up(height, err.as_deref());
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
