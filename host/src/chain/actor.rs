//! The chain actor's loop on the chain's own thread: waits for the next
//! envelope, timer or end of a backoff, drives the [`ChainCore`], applies
//! the restart policy when the instance crashes, and swaps plugins when a
//! config block changes the channel's consensus type.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::restart::{RestartConfig, RestartPolicy};
use super::resume::ResumePoint;
use super::writer::ledger_sink;
use super::{ClusterEvent, MAX_GROUP, Offer, PluginResolver, SupportFactory};
use crate::chain::{ChainCore, ChainState, ChainStatus, EnqueueError};
use crate::ledger::Ledger;
use crate::runtime::{Plugin, RuntimeError};

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
        let support = (self.make_support)(&self.plugin, sink, rp.pos, rp.config, &self.status);
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
    fn swap(&mut self, mut core: ChainCore, to: String) -> Phase {
        let started = Instant::now();
        let from = self.plugin.name().to_string();
        let ch = self.channel.clone();
        let pending = core.take_pending();
        core.halt();
        let lost = core.accepted().saturating_sub(core.written_envelopes());
        if lost > 0 {
            // Envelopes the old plugin kept to itself (not in the host's
            // cutter) do not survive it.
            self.status.add_lost(lost);
            tracing::warn!(channel = %ch, from = %from, lost, "envelopes the old plugin held were lost in the swap");
        }
        let next = self.resolve.as_ref().and_then(|r| r(&to));
        // The old support's block sink, position and config go to the new
        // plugin: the ledger writer keeps running (no wait for its fsync),
        // blocks stay in one queue, in order.
        let Some((next, old)) = next.zip(core.into_support()) else {
            let reason = format!(
                "a config block changed the consensus type from {from:?} to {to:?}, which has no plugin on this node \
                 (or the old instance ended)"
            );
            if let Some(w) = self.writer.take() {
                let _ = w.join();
            }
            return self.on_crash(reason, false, pending.len() as u64);
        };
        let pos = old.position();
        let config = old.config().clone();
        let sink = old.into_sink();
        self.plugin = next;
        self.start_height = pos.height;
        let support = (self.make_support)(&self.plugin, sink, pos, config, &self.status);
        // Fabric: a new consensus type starts without metadata.
        match ChainCore::start(&self.plugin, support, &[], self.status.clone()) {
            Ok(mut core) => {
                let swaps = self.status.record_swap(&from, &to);
                crate::metrics::plugin_swapped(&ch, &from, &to);
                let handed = pending.len();
                self.status.add_handed_over(handed as u64);
                if !pending.is_empty() {
                    // Accepted already: their answers went out.
                    let _ = core.enqueue_many(pending);
                }
                let pause = started.elapsed();
                self.status.record_swap_pause(pause);
                tracing::info!(
                    channel = %ch, from = %from, to = %to, swaps, handed_over = handed, height = self.start_height,
                    pause_us = pause.as_micros() as u64,
                    "consensus plugin swapped at the config block"
                );
                Phase::Running(Box::new(core))
            }
            Err(e) => {
                // The failed instance took the sink with it: the writer ends
                // once what was queued is durable.
                if let Some(w) = self.writer.take() {
                    let _ = w.join();
                }
                // The old plugin cannot order the new type's config: the
                // chain errs with the reason, as a chain that cannot start.
                self.on_crash(format!("starting plugin {to} after a consensus-type change: {e}"), false, 0)
            }
        }
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
                let restarts = self.status.record_restart();
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
pub(super) fn run_actor(
    mut runner: Runner,
    core: ChainCore,
    mut rx: mpsc::Receiver<Offer>,
    mut cluster: Option<mpsc::Receiver<ClusterEvent>>,
    mut halt: watch::Receiver<bool>,
) {
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

/// Delivers a cluster event to the plugin: a consensus message, pulled
/// blocks (written by the host; the first refused one stops the catch-up),
/// the end of a catch-up.
fn on_cluster_event(core: &mut ChainCore, ev: ClusterEvent) {
    match ev {
        ClusterEvent::Message { from, payload } => core.on_message(from, &payload),
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
