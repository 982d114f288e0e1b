//! A chain's shared status (Fabric's `Errored()` channel, the config in
//! force for Broadcast's checks, crash counters), read by the node's
//! Broadcast and Deliver while the chain's thread updates it.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::channel::ChannelConfig;

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
    /// What a clustered plugin last reported (leader, active members), and
    /// how often the leader changed.
    cluster: Mutex<Option<crate::support::ClusterReport>>,
    leader_changes: AtomicU64,
    /// Catch-ups: what started them and what they pulled.
    catch_up: CatchUpCounters,
    /// Live consensus-type swaps so far, and the plugin ordered before the
    /// last one.
    swaps: AtomicU64,
    previous_plugin: Mutex<Option<String>>,
    /// Envelopes handed from an old plugin to the new one at swaps.
    handed_over: AtomicU64,
    /// The pauses of the last swaps (µs), most recent last.
    swap_pauses: Mutex<std::collections::VecDeque<u64>>,
    /// The plugin (consensus type) ordering the chain now.
    plugin: Mutex<String>,
    /// Live upgrades of the plugin's build (same consensus type), the
    /// build ordering now and the one before the last upgrade or rollback.
    upgrades: AtomicU64,
    build: Mutex<PluginBuild>,
    previous_build: Mutex<Option<PluginBuild>>,
    /// Upgrades rolled back (the new build failed on probation), and why
    /// the last one was.
    rollbacks: AtomicU64,
    last_rollback: Mutex<Option<String>>,
    /// Until when the build now ordering is on probation (a failure rolls
    /// it back), as wall-clock time for the API.
    probation_until: Mutex<Option<std::time::SystemTime>>,
}

/// A chain's catch-up counters ([`ChainStatus::catch_up`]).
#[derive(Debug, Default)]
pub struct CatchUpCounters {
    /// Consensus messages of another consensus type than the running
    /// plugin's, dropped (a member sent them before or after a live swap,
    /// or claims to).
    pub other_type: AtomicU64,
    /// Consensus messages of a TLS certificate that no bound member of the
    /// channel has (refused by the transport): a consenter that a config
    /// block this node has not written yet added, or not a consenter.
    pub non_member: AtomicU64,
    /// Catch-ups started because such a message (of another consensus
    /// type, or of a non-member) claimed a greater height.
    pub claimed: AtomicU64,
    /// Claims of a greater height not followed: a catch-up was running, or
    /// one had started less than the claim interval before.
    pub claims_ignored: AtomicU64,
    /// Catch-ups the plugin asked for (`replication.catch-up`).
    pub requested: AtomicU64,
    /// Blocks pulled and handed to the chain.
    pub pulled_blocks: AtomicU64,
}

impl CatchUpCounters {
    /// Adds one to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Their values now.
    pub fn snapshot(&self) -> CatchUpStats {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CatchUpStats {
            other_type: v(&self.other_type),
            non_member: v(&self.non_member),
            claimed: v(&self.claimed),
            claims_ignored: v(&self.claims_ignored),
            requested: v(&self.requested),
            pulled_blocks: v(&self.pulled_blocks),
        }
    }
}

/// A snapshot of [`CatchUpCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUpStats {
    /// Consensus messages of another consensus type, dropped.
    pub other_type: u64,
    /// Consensus messages of a certificate that is no bound member.
    pub non_member: u64,
    /// Catch-ups started on a claim of a greater height.
    pub claimed: u64,
    /// Claims not followed (rate limit, or a catch-up running).
    pub claims_ignored: u64,
    /// Catch-ups the plugin asked for.
    pub requested: u64,
    /// Blocks pulled.
    pub pulled_blocks: u64,
}

/// One build of a plugin: its manifest's version and the SHA-256 of its
/// file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginBuild {
    /// The manifest's version ("" for a bare component).
    pub version: String,
    /// SHA-256 of the plugin file (hex).
    pub sha256: String,
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
            cluster: Mutex::new(None),
            leader_changes: AtomicU64::new(0),
            catch_up: CatchUpCounters::default(),
            swaps: AtomicU64::new(0),
            previous_plugin: Mutex::new(None),
            handed_over: AtomicU64::new(0),
            swap_pauses: Mutex::new(Default::default()),
            plugin: Mutex::new(String::new()),
            upgrades: AtomicU64::new(0),
            build: Mutex::new(PluginBuild::default()),
            previous_build: Mutex::new(None),
            rollbacks: AtomicU64::new(0),
            last_rollback: Mutex::new(None),
            probation_until: Mutex::new(None),
        }
    }
}

impl ChainStatus {
    /// Records a live swap from plugin `from` to `to`; the number of swaps.
    pub fn record_swap(&self, from: &str, to: &str) -> u64 {
        *self.previous_plugin.lock().unwrap_or_else(|p| p.into_inner()) = Some(from.to_string());
        self.set_plugin(to);
        self.swaps.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Sets the plugin ordering the chain.
    pub fn set_plugin(&self, name: &str) {
        *self.plugin.lock().unwrap_or_else(|p| p.into_inner()) = name.to_string();
    }

    /// Sets the build of the plugin ordering the chain.
    pub fn set_build(&self, build: PluginBuild) {
        *self.build.lock().unwrap_or_else(|p| p.into_inner()) = build;
    }

    /// The build of the plugin ordering the chain.
    pub fn build(&self) -> PluginBuild {
        self.build.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The build that ordered before the last upgrade or rollback.
    pub fn previous_build(&self) -> Option<PluginBuild> {
        self.previous_build.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a live upgrade to `build`, on probation until `until`;
    /// returns the upgrades so far.
    pub fn record_upgrade(&self, build: PluginBuild, until: Option<std::time::SystemTime>) -> u64 {
        let old = std::mem::replace(&mut *self.build.lock().unwrap_or_else(|p| p.into_inner()), build);
        *self.previous_build.lock().unwrap_or_else(|p| p.into_inner()) = Some(old);
        *self.probation_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
        self.upgrades.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records that the build on probation failed (`reason`) and `back`
    /// orders again; returns the rollbacks so far.
    pub fn record_rollback(&self, back: PluginBuild, reason: &str) -> u64 {
        let failed = std::mem::replace(&mut *self.build.lock().unwrap_or_else(|p| p.into_inner()), back);
        *self.previous_build.lock().unwrap_or_else(|p| p.into_inner()) = Some(failed);
        *self.last_rollback.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        *self.probation_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.rollbacks.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ends the probation of the build ordering now (it held).
    pub fn end_probation(&self) {
        *self.probation_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Until when the build ordering now is on probation (None: it is not).
    pub fn probation_until(&self) -> Option<std::time::SystemTime> {
        let until = *self.probation_until.lock().unwrap_or_else(|p| p.into_inner());
        until.filter(|u| *u > std::time::SystemTime::now())
    }

    /// Live upgrades of the plugin's build so far.
    pub fn upgrades(&self) -> u64 {
        self.upgrades.load(Ordering::Relaxed)
    }

    /// Upgrades rolled back so far.
    pub fn rollbacks(&self) -> u64 {
        self.rollbacks.load(Ordering::Relaxed)
    }

    /// Why the last upgrade was rolled back.
    pub fn last_rollback(&self) -> Option<String> {
        self.last_rollback.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The plugin (consensus type) ordering the chain now.
    pub fn plugin(&self) -> String {
        self.plugin.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts envelopes lost outside a crash (a swap away from a plugin
    /// that held envelopes of its own).
    pub fn add_lost(&self, n: u64) {
        self.lost_envelopes.fetch_add(n, Ordering::Relaxed);
    }

    /// Records a swap's pause: from the old plugin's config block to the
    /// new plugin ready with what was handed over (the last 1,024 kept).
    pub fn record_swap_pause(&self, pause: std::time::Duration) {
        let mut p = self.swap_pauses.lock().unwrap_or_else(|p| p.into_inner());
        if p.len() == 1024 {
            p.pop_front();
        }
        p.push_back(pause.as_micros() as u64);
    }

    /// The pauses of the last swaps (µs), oldest first.
    pub fn swap_pauses(&self) -> Vec<u64> {
        self.swap_pauses.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }

    /// Counts envelopes handed from the old plugin to the new one.
    pub fn add_handed_over(&self, n: u64) {
        self.handed_over.fetch_add(n, Ordering::Relaxed);
    }

    /// Envelopes handed from an old plugin to the new one at swaps so far.
    pub fn handed_over(&self) -> u64 {
        self.handed_over.load(Ordering::Relaxed)
    }

    /// Live consensus-type swaps so far.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }

    /// The plugin that ordered the chain before the last swap.
    pub fn previous_plugin(&self) -> Option<String> {
        self.previous_plugin.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records what the plugin reported of its cluster (counting leader
    /// changes).
    pub fn set_cluster(&self, r: &crate::support::ClusterReport) {
        let mut c = self.cluster.lock().unwrap_or_else(|p| p.into_inner());
        if c.as_ref().is_some_and(|old| old == r) {
            return;
        }
        if c.as_ref().map_or(r.leader != 0, |old| old.leader != r.leader && r.leader != 0) {
            self.leader_changes.fetch_add(1, Ordering::Relaxed);
        }
        *c = Some(r.clone());
    }

    /// What the plugin last reported of its cluster (None: a single-node
    /// plugin, or nothing reported yet).
    pub fn cluster(&self) -> Option<crate::support::ClusterReport> {
        self.cluster.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The catch-up counters (the host's cluster side counts into them).
    pub fn catch_up(&self) -> &CatchUpCounters {
        &self.catch_up
    }

    /// Times a new leader was reported.
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.load(Ordering::Relaxed)
    }

    /// Running, restarting, errored or halted.
    pub fn state(&self) -> ChainState {
        ChainState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, s: ChainState) {
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

    /// Whether a host failure (the ledger writer) errored the chain for good.
    pub fn is_fatal(&self) -> bool {
        self.fatal.load(Ordering::Relaxed)
    }

    /// Counts a crash of the plugin instance (and the envelopes it accepted
    /// but did not write); returns the crashes so far.
    pub fn record_crash(&self, reason: &str, lost: u64) -> u64 {
        self.lost_envelopes.fetch_add(lost, Ordering::Relaxed);
        *self.last_crash.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        self.crashes.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a restarted instance; returns the restarts so far.
    pub fn record_restart(&self) -> u64 {
        self.restarts.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Marks the chain errored for good by a host failure (no restart).
    pub fn set_fatal(&self, reason: String) {
        self.fatal.store(true, Ordering::Relaxed);
        self.set_state(ChainState::Errored);
        self.set_errored(reason);
    }

    /// Replaces the error reason (Deliver streams waiting see a change).
    pub fn replace_errored(&self, reason: String) {
        self.errored.send_replace(Some(reason));
    }

    /// The chain runs again (after a restart).
    pub fn clear_errored(&self) {
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

    pub fn set_config(&self, c: &Arc<ChannelConfig>) {
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
