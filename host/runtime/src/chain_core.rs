//! The deterministic core of a chain: one plugin instance and its support,
//! driven by explicit events (enqueue, timers, halt) and an explicit `now`.
//! The node's chain actor drives it on a thread of its own; the testkit
//! drives it directly with a hand-moved clock.

use std::sync::Arc;
use std::time::Instant;

use crate::engine::RuntimeError;
use crate::envelope::Envelope;
use crate::instance::Instance;
use crate::plugin::Plugin;
use crate::status::ChainStatus;
use crate::support::Support;

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
        ChainCore::start_handed(plugin, support, metadata, status, None)
    }

    /// As [`ChainCore::start`], giving the instance, between `handle-chain`
    /// and `start`, the state its predecessor exported (`import-state`, if
    /// the plugin exports `handover`). A refused state is logged; the
    /// instance starts without it.
    pub fn start_handed(
        plugin: &Plugin,
        support: Support,
        metadata: &[u8],
        status: Arc<ChainStatus>,
        handed_state: Option<&[u8]>,
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
        if let Some(state) = handed_state
            && let Err(reason) = core.instance.import_state(state)?
        {
            tracing::warn!(channel = %core.channel, plugin = plugin.name(), %reason, "the new instance refused the state its predecessor handed over; it starts without it");
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

    /// The consensus type of the config in force now (a config block the
    /// plugin wrote may have changed it: the chain then swaps plugins).
    pub fn consensus_type(&self) -> Option<&str> {
        self.instance.support().map(|s| s.config().consensus_type.as_str())
    }

    /// Takes the envelopes the host's cutter holds for the plugin (accepted,
    /// not yet in a block), in order, and counts them as handed over (not
    /// lost): a live swap offers them to the next plugin.
    pub fn take_pending(&mut self) -> Vec<Envelope> {
        let pending = self.instance.support_mut().map(Support::take_pending).unwrap_or_default();
        self.accepted = self.accepted.saturating_sub(pending.len() as u64);
        pending
    }

    /// Ends the instance for a successor (a live swap or upgrade): takes
    /// what the host's cutter holds, then calls `handover.export-state` if
    /// the plugin exports it, `halt` otherwise. Returns the envelopes
    /// accepted and not written that came back, in their order (the
    /// batches it had cut, the cutter's, those it held), counted as handed
    /// over (not lost), and the state it exported (None without the
    /// export, if it trapped there, or if the state was over the per-call
    /// byte cap).
    pub fn end_for_successor(&mut self) -> (Vec<Envelope>, Option<Vec<u8>>) {
        let pending = self.take_pending();
        let handed = match self.instance.export_state() {
            None => {
                self.halt();
                return (pending, None);
            }
            Some(r) => self.on_call_result(r).ok(),
        };
        let Some(h) = handed else { return (pending, None) };
        // `take_pending` uncounted the cutter's already.
        self.accepted = self.accepted.saturating_sub((h.cut.len() + h.held.len()) as u64);
        let mut envs = h.cut;
        envs.extend(pending);
        envs.extend(h.held);
        (envs, h.state)
    }

    /// Envelopes the plugin accepted that this node neither wrote nor
    /// forwarded to another member nor handed on: lost if the instance
    /// ends now.
    pub fn unaccounted(&self) -> u64 {
        self.accepted.saturating_sub(self.written_envelopes() + self.instance.forwarded_envelopes())
    }

    /// Ends the chain's instance (after `halt`) and returns its support:
    /// the block sink, the position and the config in force, for the next
    /// plugin of a live swap. None once the instance trapped.
    pub fn into_support(self) -> Option<Support> {
        self.instance.into_support()
    }

    /// What the instance holds of the host now (None once it trapped).
    pub fn resources(&self) -> Option<crate::instance::Resources> {
        self.instance.resources()
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
        if self.status.is_fatal() {
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
            if let Some(r) = s.cluster_report() {
                self.status.set_cluster(r);
            }
            self.status.set_config(s.config());
        }
    }

    fn on_call_result<R>(&mut self, r: Result<R, RuntimeError>) -> Result<R, EnqueueError> {
        match r {
            Ok(v) => {
                self.sync_status();
                self.tell_consenters_changed();
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
            Some(s) => {
                s.expire_departed();
                s.take_due_timers(now)
            }
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

    /// If a config block written in the last call changed the consenter
    /// set, tells a clustered plugin (`on-consenters-changed`), after that
    /// call and before any other event.
    fn tell_consenters_changed(&mut self) {
        let changed = self.instance.support_mut().is_some_and(|s| s.take_consenters_changed());
        if changed && self.instance.is_clustered() && self.status.errored().is_none() {
            let r = self.instance.on_consenters_changed();
            let _ = self.on_call_result(r);
        }
    }

    /// Whether the plugin is of the clustered world.
    pub fn is_clustered(&self) -> bool {
        self.instance.is_clustered()
    }

    /// A consensus message from member `from`, sent by its plugin of
    /// consensus type `sender_type` ("" when the sender did not say: a
    /// Fabric orderer) at ledger height `sender_height`. One of another
    /// type than this instance's is dropped: the old type sent it before a
    /// live swap, and the new type's plugin would take it for its own when
    /// both speak one protocol. If its sender is ahead, the chain went on
    /// without this node (it missed the switch), and the host pulls the
    /// blocks it misses (`Support::catch_up_to`), the config block that
    /// swapped the others among them.
    pub fn on_member_message(&mut self, from: u64, payload: &[u8], sender_type: &str, sender_height: u64) {
        if sender_type.is_empty() || sender_type == self.instance.plugin {
            return self.on_message(from, payload);
        }
        let running = &self.instance.plugin;
        let counters = self.status.catch_up();
        crate::status::CatchUpCounters::add(&counters.other_type, 1);
        tracing::debug!(channel = %self.channel, from, %sender_type, %running, sender_height, "cluster: a consensus message of another consensus type was dropped");
        self.follow_claim(sender_height, "a member of another consensus type");
    }

    /// Catches up (rate limited, see `Support::catch_up_to`) if a sender
    /// that is not a member running this chain's plugin (`who`) claims a
    /// greater height.
    fn follow_claim(&mut self, sender_height: u64, who: &str) {
        let Some(s) = self.instance.support_mut() else { return };
        if sender_height > s.height()
            && let Err(e) = s.catch_up_to(sender_height)
        {
            tracing::warn!(channel = %self.channel, target = sender_height, error = %e, "cluster: catching up on the claim of {who}");
        }
    }

    /// A consensus message of a TLS certificate that is no bound member of
    /// the channel (the transport refused it), sent at ledger height
    /// `sender_height`. A consenter added by a config block this node has
    /// not written yet sends such messages (it may even lead): this node
    /// missed that block while it was down, and the members it knows no
    /// longer send it anything that would make its plugin catch up. As for
    /// another type's member, a greater height is a claim: the host pulls
    /// the blocks that exist (rate limited), and with the config block the
    /// new consenter becomes a member. Fabric's etcdraft pulls the last
    /// config block when it has known no leader for a while (its eviction
    /// suspicion), to the same end.
    pub fn on_non_member_message(&mut self, sender_height: u64) {
        let counters = self.status.catch_up();
        crate::status::CatchUpCounters::add(&counters.non_member, 1);
        self.follow_claim(sender_height, "a non-member");
    }

    /// A consensus message from member `from` (`on-message`).
    pub fn on_message(&mut self, from: u64, payload: &[u8]) {
        if self.status.errored().is_some() {
            return;
        }
        if let Some(s) = self.instance.support_mut() {
            s.expire_departed();
        }
        let r = self.instance.on_message(from, payload);
        let _ = self.on_call_result(r);
    }

    /// Writes a block the block puller fetched and verified during a
    /// catch-up. Err: it was refused (the catch-up stops there).
    pub fn write_pulled(&mut self, block: bytes::Bytes) -> Result<(), String> {
        let r = match self.instance.support_mut() {
            Some(s) => s.write_pulled(block).map_err(|e| e.to_string()),
            None => Err("the plugin instance has ended".into()),
        };
        self.sync_status();
        r
    }

    /// A catch-up ended at `height` (`error`: why it stopped short).
    pub fn caught_up(&mut self, height: u64, error: Option<&str>) {
        if self.status.errored().is_some() {
            return;
        }
        // Config blocks pulled during the catch-up may have changed the set.
        self.tell_consenters_changed();
        let r = self.instance.on_caught_up(height, error);
        let _ = self.on_call_result(r);
    }

    /// Halts the plugin.
    pub fn halt(&mut self) {
        if self.instance.is_alive() {
            let r = self.instance.halt();
            let _ = self.on_call_result(r);
        }
    }
}
