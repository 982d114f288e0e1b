//! One channel's raft chain: the raft-rs `RawNode`, the blocks this node
//! proposed as leader, the envelopes waiting for a block to be cut, and
//! what every event does (Fabric's etcdraft `chain.go`, as a state machine).

use std::collections::VecDeque;

use consenter_protos::common::{BlockData, BlockHeader, ChannelHeader, ConfigEnvelope, HeaderType, Payload};
use consenter_protos::etcdraft::{BlockMetadata, ConfigMetadata};
use consenter_protos::orderer::ConsensusType;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, Snapshot};
use raft::{Config, RawNode, StateRole};

use crate::bindings::fabric::consenter::types::{Batch, Block, Envelope, EnvelopeInfo, Level, MessageClass};
use crate::bindings::fabric::consenter::{cluster, log, replication, support, timers};
use crate::log_store::LogStore;
use crate::options::Options;

/// The raft tick timer.
const TICK: u32 = 1;
/// Fabric's batch timer.
const BATCH: u32 = 2;

/// The format version of the state `export_state` hands to the next build.
const HANDOVER_FORMAT: u64 = 1;

/// The most envelope bytes a node without a leader holds for the leader to
/// come (see `Raft::holding`); past it, envelopes are refused.
const HOLD_BYTES: u64 = 8 << 20;

fn info(m: &str) {
    log::log(Level::Info, m);
}
fn warn(m: &str) {
    log::log(Level::Warn, m);
}

/// A block this node proposed as leader, not yet applied.
struct Proposal {
    index: u64,
    term: u64,
    block: Block,
    config: bool,
}

/// Only the header of a marshalled block (prost skips the rest).
#[derive(Clone, PartialEq, prost::Message)]
struct HeaderOnly {
    #[prost(message, optional, tag = "1")]
    header: Option<BlockHeader>,
}

/// Only the data of a marshalled block.
#[derive(Clone, PartialEq, prost::Message)]
struct DataOnly {
    #[prost(message, optional, tag = "2")]
    data: Option<BlockData>,
}

fn block_number(bytes: &[u8]) -> Option<u64> {
    HeaderOnly::decode(bytes).ok()?.header.map(|h| h.number)
}

/// Whether a marshalled block is a config block (its one envelope is a
/// CONFIG message).
fn is_config_block(bytes: &[u8]) -> bool {
    let Ok(d) = DataOnly::decode(bytes) else { return false };
    let data = d.data.map(|d| d.data).unwrap_or_default();
    if data.len() != 1 {
        return false;
    }
    let kind = || -> Option<i32> {
        let env = consenter_protos::common::Envelope::decode(data[0].as_ref()).ok()?;
        let payload = Payload::decode(env.payload.as_ref()).ok()?;
        let ch = ChannelHeader::decode(payload.header?.channel_header.as_ref()).ok()?;
        Some(ch.r#type)
    };
    kind() == Some(HeaderType::Config as i32)
}

/// The etcdraft consenters a marshalled config block sets (None if it is
/// not a config block of an etcdraft channel).
fn consenters_in_config_block(bytes: &[u8]) -> Option<Vec<cluster::Consenter>> {
    let d = DataOnly::decode(bytes).ok()?;
    let data = d.data?.data;
    let env = consenter_protos::common::Envelope::decode(data.first()?.as_ref()).ok()?;
    let payload = Payload::decode(env.payload.as_ref()).ok()?;
    let ce = ConfigEnvelope::decode(payload.data.as_ref()).ok()?;
    let orderer = ce.config?.channel_group?.groups.get("Orderer")?.clone();
    let ct = ConsensusType::decode(orderer.values.get("ConsensusType")?.value.as_ref()).ok()?;
    let md = ConfigMetadata::decode(ct.metadata.as_ref()).ok()?;
    Some(
        md.consenters
            .into_iter()
            .map(|c| cluster::Consenter {
                host: c.host,
                port: c.port,
                client_tls_cert: c.client_tls_cert.to_vec(),
                server_tls_cert: c.server_tls_cert.to_vec(),
            })
            .collect(),
    )
}

/// Whether two consenter lists are the same, entry by entry.
fn same_consenters(a: &[cluster::Consenter], b: &[cluster::Consenter]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.host == y.host
                && x.port == y.port
                && x.client_tls_cert == y.client_tls_cert
                && x.server_tls_cert == y.server_tls_cert
        })
}

/// The ids of `new` consenters given the ids of `old` ones (Fabric's
/// etcdraft: a consenter keeps its id while its client TLS certificate, or
/// its place with the same endpoint, stays; each new one gets the next id).
fn assign_ids(old: &[cluster::Consenter], ids: &[u64], new: &[cluster::Consenter], next: u64) -> (Vec<u64>, u64) {
    let mut next = next;
    let mut out = Vec::with_capacity(new.len());
    for (i, c) in new.iter().enumerate() {
        let same_cert = old.iter().position(|o| o.client_tls_cert == c.client_tls_cert);
        // A certificate rotation: the same endpoint at the same place.
        let rotated =
            || old.get(i).filter(|o| o.host == c.host && o.port == c.port && old.len() == new.len()).map(|_| i);
        match same_cert.or_else(rotated).and_then(|j| ids.get(j)) {
            Some(id) if !out.contains(id) => out.push(*id),
            _ => {
                out.push(next);
                next += 1;
            }
        }
    }
    (out, next)
}

/// The raft chain of one channel.
pub struct Raft {
    node: RawNode<LogStore>,
    opts: Options,
    /// Consenter ids, index-aligned with `consenters`.
    ids: Vec<u64>,
    /// The channel's consenters (the last config's).
    consenters: Vec<cluster::Consenter>,
    /// A conf change proposed and not yet applied (its raft index).
    conf_change: Option<u64>,
    /// This node was removed from the cluster: it ignores events.
    removed: bool,
    /// A written config block no longer names this node among the
    /// consenters: it orders nothing more (its raft still answers until
    /// its RemoveNode is applied, which may need its acknowledgement).
    evicted: bool,
    next_id: u64,
    me: u64,
    role: StateRole,
    leader: u64,
    batch_timer: bool,
    /// Own proposals not yet applied, in index order.
    inflight: VecDeque<Proposal>,
    /// Batches cut while `max_inflight_blocks` blocks are in flight.
    cut: VecDeque<Batch>,
    /// Envelopes accepted while no block may be cut (a new leader applying
    /// its log first; a config block in flight), or held while a leader is
    /// about to be known (see `holding`), in order.
    waiting: VecDeque<(Envelope, EnvelopeInfo)>,
    /// Ticks left during which a node that knows no leader holds the
    /// envelopes it gets (forwarded ones, or handed over by the previous
    /// build) instead of refusing them, because a leader is about to be
    /// known: it just started (a group that a live consensus-type swap
    /// started elects its first leader; a restarted node hears from the
    /// leader within an election timeout), it campaigns, or it just
    /// replaced a build that led and handed its leadership over. 0: not
    /// holding.
    holding: usize,
    /// Bytes of the envelopes held while `holding`.
    held_bytes: u64,
    /// As a new leader: the log index to apply before cutting blocks.
    cut_after: Option<u64>,
    config_inflight: bool,
    /// The last raft index applied (in the ledger, or a no-op).
    applied: u64,
    /// The marshalled block of the last applied entry (a snapshot's data).
    last_block: Vec<u8>,
    /// A catch-up in progress: the height it pulls to.
    catching_up: Option<u64>,
    /// Leader: ticks each follower has spent waiting for a snapshot.
    snapshot_ticks: std::collections::BTreeMap<u64, usize>,
    /// Committed entries held back until the catch-up ends.
    deferred: VecDeque<Entry>,
    failed: bool,
}

impl Raft {
    /// Fabric's `HandleChain`: the chain from the last block's
    /// `etcdraft.BlockMetadata` (empty: a new channel, ids 1..=n in config
    /// order) and the raft log in the plugin's storage.
    pub fn new(metadata: &[u8]) -> Result<Raft, String> {
        let cfg = support::shared_config();
        let (opts, _) = Options::from_metadata(&cfg.consensus_metadata)?;
        let consenters = cluster::consenters();
        if consenters.is_empty() {
            return Err("the channel's etcdraft metadata names no consenters".into());
        }
        let n = consenters.len() as u64;
        let (ids, next_id, applied) = if metadata.is_empty() {
            ((1..=n).collect::<Vec<u64>>(), n + 1, 0)
        } else {
            let m =
                BlockMetadata::decode(metadata).map_err(|e| format!("the last block's etcdraft BlockMetadata: {e}"))?;
            (m.consenter_ids, m.next_consenter_id, m.raft_index)
        };
        if ids.len() != consenters.len() {
            return Err(format!(
                "the last block names {} consenter ids and the config {} consenters",
                ids.len(),
                consenters.len()
            ));
        }
        let idx = cluster::self_index().ok_or(
            "this node is not a consenter of the channel: its TLS certificate is in none of the channel's consenter entries",
        )?;
        let me = ids[idx as usize];
        let store = match LogStore::load()? {
            Some(s) => s,
            // A new channel: every consenter of the genesis block votes.
            None if metadata.is_empty() => LogStore::bootstrap(ids.clone()),
            // Joining a running channel: the others vote; the leader adds
            // this node and sends it a snapshot.
            None => LogStore::bootstrap(ids.iter().copied().filter(|i| *i != me).collect()),
        };
        let snap_index = store.last_snapshot().get_metadata().index;
        let commit = raft::Storage::initial_state(&store).map(|s| s.hard_state.commit).unwrap_or(0);
        // The ledger may be behind the log's snapshot (blocks queued when the
        // node died): catch up from the snapshot's block on start.
        let applied = applied.max(snap_index).min(commit.max(snap_index));
        let config = Config {
            id: me,
            election_tick: opts.election_tick,
            heartbeat_tick: opts.heartbeat_tick,
            applied,
            pre_vote: true,
            check_quorum: true,
            max_inflight_msgs: 256,
            max_size_per_msg: 1 << 20,
            ..Default::default()
        };
        config.validate().map_err(|e| format!("raft config: {e}"))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        // What a snapshot at the applied index carries (compactions and
        // the snapshot of a conf change need it before the next block).
        let last_block = store.last_block_at(applied);
        let node = RawNode::new(&config, store, &logger).map_err(|e| format!("starting raft: {e}"))?;
        Ok(Raft {
            node,
            opts,
            ids,
            consenters,
            conf_change: None,
            removed: false,
            evicted: false,
            next_id,
            me,
            role: StateRole::Follower,
            leader: 0,
            batch_timer: false,
            inflight: VecDeque::new(),
            cut: VecDeque::new(),
            waiting: VecDeque::new(),
            holding: 0,
            held_bytes: 0,
            cut_after: None,
            config_inflight: false,
            applied,
            last_block,
            catching_up: None,
            snapshot_ticks: Default::default(),
            deferred: VecDeque::new(),
            failed: false,
        })
    }

    /// Fabric's `Start`: bind the ids, arm the tick, campaign if alone.
    pub fn start(&mut self) {
        if let Err(e) = cluster::bind_ids(&self.ids) {
            self.fail(&format!("binding consenter ids {:?}: {e}", self.ids));
            return;
        }
        self.arm(TICK, self.opts.tick_ms);
        info(&format!(
            "raft node {} starting: consenters {:?}, tick {} ms, election {} ticks, applied index {}",
            self.me, self.ids, self.opts.tick_ms, self.opts.election_tick, self.applied
        ));
        // A snapshot ahead of the ledger: pull the blocks it stands for.
        let snap = self.node.store().last_snapshot().clone();
        if !snap.data.is_empty() {
            self.catch_up_to_snapshot(&snap);
        }
        if self.ids.len() == 1 {
            let _ = self.node.campaign();
        } else if self.leader == 0 {
            // The envelopes handed over at a swap or upgrade, and those
            // that come before a leader is known, wait for it.
            self.holding = 2 * self.opts.election_tick;
        }
        self.process();
    }

    /// Fabric's `Halt`. A leader first hands its leadership to the most
    /// up-to-date follower (raft's leadership transfer: that follower
    /// campaigns at once), so a node stopped gracefully or switched to a
    /// new build does not leave the cluster waiting out an election
    /// timeout, forwarding envelopes to a member that no longer leads.
    pub fn halt(&mut self) {
        if self.failed || !self.is_leader() {
            return;
        }
        let me = self.me;
        let best = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, p)| **id != me && p.recent_active)
            .max_by_key(|(_, p)| p.matched)
            .map(|(id, _)| *id);
        if let Some(to) = best {
            info(&format!("halting as leader: handing the leadership to node {to}"));
            self.node.transfer_leader(to);
            self.process();
        }
    }

    /// The live hand-over to the next build (the `handover` export): halts
    /// as `halt` does (a leader hands its leadership over), then returns
    /// this node's state (the leader it follows, if it follows one) and
    /// what it holds that is not in the host's cutter nor in the raft log:
    /// the batches cut while too many blocks were in flight and the
    /// envelopes waiting for a block to be cut or for a leader. Proposed
    /// blocks need no hand-over: they are in the raft log, which the next
    /// build reads from storage.
    pub fn export_state(&mut self) -> (Vec<u8>, Vec<Batch>, Vec<Envelope>) {
        let led = self.is_leader();
        self.halt();
        let follows = if led || self.leader == self.me { 0 } else { self.leader };
        let mut state = Vec::with_capacity(24);
        for v in [HANDOVER_FORMAT, follows, self.node.raft.term] {
            state.extend_from_slice(&v.to_le_bytes());
        }
        let batches = self.cut.drain(..).collect();
        let envelopes = self.waiting.drain(..).map(|(e, _)| e).collect();
        (state, batches, envelopes)
    }

    /// Takes the state the previous build exported (before `start`): a
    /// follower goes on following the same leader at the same term, so
    /// it forwards at once; a node whose previous build led (and handed
    /// the leadership over) holds what it gets until it hears from the
    /// new leader.
    pub fn import_state(&mut self, state: &[u8]) -> Result<(), String> {
        let word = |i: usize| state.get(i * 8..i * 8 + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
        let (Some(format), Some(leader), Some(term)) = (word(0), word(1), word(2)) else {
            return Err(format!("a raft hand-over state is 24 bytes; this one has {}", state.len()));
        };
        if format != HANDOVER_FORMAT {
            return Err(format!(
                "raft hand-over state format {format} is unknown to this build (it reads {HANDOVER_FORMAT})"
            ));
        }
        if leader != 0 && leader != self.me && self.ids.contains(&leader) && term == self.node.raft.term {
            info(&format!("following node {leader} at term {term}, as the previous build did"));
            self.node.raft.become_follower(term, leader);
        } else if self.ids.len() > 1 {
            self.holding = 2 * self.opts.election_tick;
        }
        Ok(())
    }

    fn fail(&mut self, reason: &str) {
        if !self.failed {
            self.failed = true;
            support::fail(reason);
        }
    }

    fn arm(&mut self, id: u32, ms: u64) {
        if let Err(e) = timers::set(id, ms) {
            self.fail(&format!("arming timer {id}: {e}"));
        }
    }

    fn is_leader(&self) -> bool {
        self.role == StateRole::Leader
    }

    /// Whether this node may cut and propose blocks now.
    fn can_cut(&self) -> bool {
        self.is_leader()
            && !self.config_inflight
            && self.catching_up.is_none()
            && self.cut_after.is_none_or(|i| self.applied >= i)
    }

    /// Fabric's `Order`/`Configure`: as leader, cut; as follower, forward
    /// to the leader; with no leader, refuse (SERVICE_UNAVAILABLE).
    pub fn enqueue(&mut self, envs: Vec<(Envelope, EnvelopeInfo)>) -> Vec<bool> {
        let mut answers = Vec::with_capacity(envs.len());
        let mut run: Vec<(Envelope, EnvelopeInfo)> = Vec::new();
        for (env, info) in envs {
            // A node removed from the consenters orders nothing (Fabric's
            // etcdraft halts the chain of an evicted node): SERVICE_UNAVAILABLE.
            if self.failed || self.removed || self.evicted {
                answers.push(false);
                continue;
            }
            if self.is_leader() {
                answers.push(true);
                if !self.can_cut() || !self.waiting.is_empty() {
                    self.waiting.push_back((env, info));
                } else if info.class == MessageClass::Config {
                    self.order_normal(std::mem::take(&mut run));
                    self.order_config(env, info);
                } else {
                    run.push((env, info));
                }
            } else if self.leader != 0 && self.leader != self.me {
                answers.push(cluster::forward(self.leader, env).is_ok());
            } else if self.holding > 0 && self.held_bytes + u64::from(info.size) <= HOLD_BYTES {
                self.held_bytes += u64::from(info.size);
                self.waiting.push_back((env, info));
                answers.push(true);
            } else {
                answers.push(false);
            }
        }
        self.order_normal(run);
        self.process();
        answers
    }

    /// A run of normal envelopes through the cutter (revalidating those
    /// validated under an older config), the batch timer kept as Fabric's.
    fn order_normal(&mut self, run: Vec<(Envelope, EnvelopeInfo)>) {
        if run.is_empty() {
            return;
        }
        let seq = support::sequence();
        let mut envs = Vec::with_capacity(run.len());
        for (env, info) in run {
            if info.config_sequence < seq && support::revalidate(&env).is_err() {
                warn("an envelope no longer valid under the current config was dropped");
                continue;
            }
            envs.push(env);
        }
        if envs.is_empty() {
            return;
        }
        let r = support::ordered_many(envs);
        for b in r.batches {
            self.propose(b, false);
        }
        self.keep_batch_timer();
    }

    fn keep_batch_timer(&mut self) {
        if support::pending_count() > 0 {
            if !self.batch_timer {
                let ms = support::shared_config().batch_timeout_ms;
                self.arm(BATCH, ms);
                self.batch_timer = true;
            }
        } else if self.batch_timer {
            timers::cancel(BATCH);
            self.batch_timer = false;
        }
    }

    /// A config message: revalidated if stale, the pending batch cut
    /// first, then the config block alone; no more blocks until it commits.
    fn order_config(&mut self, env: Envelope, info: EnvelopeInfo) {
        if info.config_sequence < support::sequence()
            && let Err(e) = support::revalidate(&env)
        {
            warn(&format!("a config message no longer valid under the current config was dropped: {e}"));
            return;
        }
        let pending = support::cut();
        if pending.len() > 0 {
            self.propose(pending, false);
        }
        self.keep_batch_timer();
        self.propose(Batch::new(vec![env]), true);
        self.config_inflight = true;
    }

    /// Creates the next block from `batch` and proposes it as one raft
    /// entry (the marshalled block, as Fabric's etcdraft does).
    fn propose(&mut self, batch: Batch, config: bool) {
        if !config && self.inflight.len() >= self.opts.max_inflight_blocks {
            self.cut.push_back(batch);
            return;
        }
        let block = match support::create_next_block(batch) {
            Ok(b) => b,
            Err(e) => {
                self.fail(&format!("creating a block: {e}"));
                return;
            }
        };
        let bytes = block.to_bytes();
        let before = self.node.raft.raft_log.last_index();
        if let Err(e) = self.node.propose(vec![], bytes) {
            warn(&format!("proposing block {}: {e}", block.number()));
            return;
        }
        let index = self.node.raft.raft_log.last_index();
        if index == before {
            warn(&format!("proposing block {}: dropped by raft", block.number()));
            return;
        }
        self.inflight.push_back(Proposal { index, term: self.node.raft.term, block, config });
    }

    /// A snapshot sent to a follower may be lost (the cluster drops what an
    /// unreachable member misses); raft then waits for it forever, sending
    /// that follower nothing else. As Fabric's etcdraft reports a failed
    /// snapshot send, a follower still waiting after an election timeout is
    /// reported failed, so raft probes it and sends a new snapshot.
    fn retry_lost_snapshots(&mut self) {
        let waiting: Vec<u64> = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(_, pr)| pr.state == raft::ProgressState::Snapshot)
            .map(|(id, _)| *id)
            .collect();
        self.snapshot_ticks.retain(|id, _| waiting.contains(id));
        for id in waiting {
            let t = self.snapshot_ticks.entry(id).or_insert(0);
            *t += 1;
            if *t >= self.opts.election_tick {
                self.snapshot_ticks.remove(&id);
                info(&format!("no answer from node {id} to its snapshot: sending it again"));
                self.node.report_snapshot(id, raft::SnapshotStatus::Failure);
            }
        }
    }

    /// A raft tick or Fabric's batch timer.
    pub fn on_timer(&mut self, id: u32) {
        if self.failed || self.removed {
            return;
        }
        match id {
            TICK => {
                self.node.tick();
                self.arm(TICK, self.opts.tick_ms);
                self.hold_tick();
                if self.is_leader() {
                    self.retry_lost_snapshots();
                    self.report();
                }
            }
            BATCH => {
                self.batch_timer = false;
                if self.can_cut() {
                    let b = support::cut();
                    if b.len() > 0 {
                        self.propose(b, false);
                    }
                }
            }
            _ => {}
        }
        self.process();
    }

    /// Counts down the hold: at its end with still no leader, what was
    /// held is dropped (as a follower drops what it cannot forward).
    fn hold_tick(&mut self) {
        if self.holding == 0 {
            return;
        }
        self.holding -= 1;
        if self.holding == 0 && !self.is_leader() && self.leader == 0 && !self.waiting.is_empty() {
            warn(&format!(
                "no raft leader within two election timeouts: {} held envelopes dropped",
                self.waiting.len()
            ));
            self.waiting.clear();
            self.held_bytes = 0;
        }
    }

    /// A raft message from member `from`.
    pub fn on_message(&mut self, from: u64, payload: &[u8]) {
        if self.failed || self.removed {
            return;
        }
        let Ok(m) = Message::parse_from_bytes(payload) else {
            warn(&format!("a message from member {from} is not a raft message"));
            return;
        };
        if m.from != from || m.to != self.me {
            warn(&format!("a raft message from member {from} claims to be from {} to {}", m.from, m.to));
            return;
        }
        let _ = self.node.step(m);
        self.process();
    }

    /// The host's catch-up ended.
    pub fn on_caught_up(&mut self, height: u64, error: Option<String>) {
        let Some(target) = self.catching_up else { return };
        if height < target {
            warn(&format!("catch-up stopped at height {height} of {target}: {}; retrying", error.unwrap_or_default()));
            if let Err(e) = replication::catch_up(target) {
                self.fail(&format!("catch-up to height {target}: {e}"));
            }
            return;
        }
        info(&format!("caught up to height {height}"));
        self.catching_up = None;
        while let Some(e) = self.deferred.pop_front() {
            if self.catching_up.is_some() {
                self.deferred.push_front(e);
                break;
            }
            self.apply_one(e);
        }
        self.after_apply();
        self.process();
    }

    /// A config block changed the consenter set (this node wrote it and
    /// bound the new ids then; a pulled one is bound here).
    pub fn on_consenters_changed(&mut self) {
        let consenters = cluster::consenters();
        if !same_consenters(&consenters, &self.consenters) {
            let (ids, next) = assign_ids(&self.consenters, &self.ids, &consenters, self.next_id);
            self.consenters = consenters;
            self.ids = ids;
            self.next_id = next;
            self.evicted = cluster::self_index().is_none();
        }
        self.bind();
    }

    /// Binds the consenter ids to the config's consenters in the host's
    /// cluster, as Fabric's etcdraft configures its comm: at once when no
    /// member leaves (a new member must be reachable for its AddNode to
    /// commit), otherwise once raft has applied the RemoveNode of every
    /// member that leaves. That conf change commits under the old voters:
    /// with two voters the leaving one must still be reachable, so the
    /// host keeps the previous binding until then.
    fn bind(&mut self) {
        // Mutant: keeps the binding of the start for ever (the host must
        // drop members that left once their grace is over).
        if cfg!(feature = "mutant-never-rebind") {
            return;
        }
        if self.node.store().voters().iter().any(|v| !self.ids.contains(v)) {
            return; // bound again once the RemoveNode applied
        }
        if let Err(e) = cluster::bind_ids(&self.ids) {
            self.fail(&format!("binding consenter ids {:?}: {e}", self.ids));
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            match m.write_to_bytes() {
                // A dropped message is raft's to resend.
                Ok(b) => {
                    let _ = cluster::send(to, &b);
                }
                Err(e) => warn(&format!("encoding a raft message: {e}")),
            }
        }
    }

    /// Runs raft's Ready loop: send, persist (one host write batch), apply.
    fn process(&mut self) {
        while !self.failed && self.node.has_ready() {
            let mut ready = self.node.ready();
            if !ready.messages().is_empty() {
                let m = ready.take_messages();
                self.send(m);
            }
            if !ready.snapshot().is_empty() {
                let s = ready.snapshot().clone();
                self.node.mut_store().apply_snapshot(s.clone());
                self.applied = self.applied.max(s.get_metadata().index);
                self.catch_up_to_snapshot(&s);
            }
            let committed = ready.take_committed_entries();
            self.apply(committed);
            if !ready.entries().is_empty() {
                let entries = ready.entries().clone();
                self.node.mut_store().append(&entries);
                #[cfg(feature = "mutant-minority-commit")]
                if self.node.raft.state == StateRole::Leader {
                    // Mutant: the leader writes what it proposed before a
                    // quorum has it (a quorum of one).
                    for e in entries.into_iter().filter(|e| !e.data.is_empty()) {
                        if e.get_entry_type() == EntryType::EntryNormal {
                            self.apply(vec![e]);
                        }
                    }
                }
            }
            if let Some(hs) = ready.hs() {
                let hs = hs.clone();
                self.node.mut_store().set_hard_state(hs);
            }
            if let Err(e) = self.node.mut_store().flush() {
                self.fail(&e);
                return;
            }
            if !ready.persisted_messages().is_empty() {
                let m = ready.take_persisted_messages();
                self.send(m);
            }
            // advance_append, not advance: raft must not count as applied
            // the entries held back during a catch-up.
            let mut light = self.node.advance_append(ready);
            if let Some(c) = light.commit_index() {
                self.node.mut_store().set_commit(c);
            }
            let m = light.take_messages();
            self.send(m);
            let committed = light.take_committed_entries();
            self.apply(committed);
            // A snapshot restored by raft moves its applied index past ours:
            // what it covers is in the ledger or being pulled.
            self.applied = self.applied.max(self.node.raft.raft_log.applied);
            let applied = self.applied.min(self.node.raft.raft_log.committed);
            if applied > self.node.raft.raft_log.applied {
                self.node.advance_apply_to(applied);
            }
            if let Err(e) = self.node.mut_store().flush() {
                self.fail(&e);
                return;
            }
            self.after_apply();
            self.role_changed();
        }
    }

    /// Leadership changes: a new leader applies its whole log before it
    /// cuts; a leader that steps down drops what it had not proposed
    /// (Fabric's etcdraft does the same) and forwards what waited.
    fn role_changed(&mut self) {
        if self.removed {
            // Its raft may still think it leads: it takes no part any more.
            return;
        }
        let (role, leader) = (self.node.raft.state, self.node.raft.leader_id);
        if role == StateRole::Leader && self.role != StateRole::Leader {
            self.cut_after = Some(self.node.raft.raft_log.last_index());
            info(&format!("raft node {} became the leader at term {}", self.me, self.node.raft.term));
        }
        if role != StateRole::Leader && self.role == StateRole::Leader {
            info(&format!("raft node {} is no longer the leader", self.me));
            self.inflight.clear();
            self.cut.clear();
            let _ = support::cut();
            if self.batch_timer {
                timers::cancel(BATCH);
                self.batch_timer = false;
            }
            self.config_inflight = false;
            self.cut_after = None;
        }
        if role == StateRole::Candidate && self.role != StateRole::Candidate {
            // An election this node may win: hold what it gets meanwhile.
            self.holding = 2 * self.opts.election_tick;
        }
        let changed = role != self.role || leader != self.leader;
        self.role = role;
        if leader != self.leader {
            if leader != 0 {
                info(&format!("raft leader of term {} is node {leader}", self.node.raft.term));
            }
            self.leader = leader;
        }
        if changed {
            self.report();
        }
        if self.leader != 0 {
            self.holding = 0;
            self.held_bytes = 0;
        }
        if !self.is_leader() && self.leader != 0 && self.leader != self.me {
            while let Some((env, _)) = self.waiting.pop_front() {
                let _ = cluster::forward(self.leader, env);
            }
        }
    }

    /// Tells the host the leader and the members heard from (as leader:
    /// raft's recently active peers; as follower: itself and the leader).
    fn report(&mut self) {
        let active: Vec<u64> = if self.is_leader() {
            let mut v: Vec<u64> = self
                .node
                .raft
                .prs()
                .iter()
                .filter(|(id, p)| **id == self.me || p.recent_active)
                .map(|(id, _)| *id)
                .collect();
            v.sort_unstable();
            v
        } else if self.leader != 0 {
            let mut v = vec![self.me, self.leader];
            v.sort_unstable();
            v
        } else {
            vec![self.me]
        };
        cluster::report(self.leader, &active);
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        for e in entries {
            if self.failed {
                return;
            }
            if self.catching_up.is_some() {
                self.deferred.push_back(e);
                continue;
            }
            self.apply_one(e);
        }
    }

    fn apply_one(&mut self, e: Entry) {
        if e.index <= self.applied {
            return;
        }
        match e.get_entry_type() {
            EntryType::EntryNormal => {
                if !e.data.is_empty() && !self.apply_block(&e) {
                    return;
                }
            }
            EntryType::EntryConfChange => {
                if let Ok(cc) = ConfChange::parse_from_bytes(&e.data) {
                    match self.node.apply_conf_change(&cc) {
                        Ok(cs) => {
                            self.node.mut_store().set_conf_state(cs);
                            self.applied = e.index;
                            self.applied_conf_change(e.index, cc.get_change_type(), cc.node_id);
                        }
                        Err(err) => warn(&format!("applying conf change at index {}: {err}", e.index)),
                    }
                }
            }
            EntryType::EntryConfChangeV2 => {
                if let Ok(cc) = ConfChangeV2::parse_from_bytes(&e.data) {
                    match self.node.apply_conf_change(&cc) {
                        Ok(cs) => self.node.mut_store().set_conf_state(cs),
                        Err(err) => warn(&format!("applying conf change at index {}: {err}", e.index)),
                    }
                }
            }
        }
        self.applied = e.index;
    }

    /// Writes the block of a committed entry; false if it waits for a
    /// catch-up (the entry is deferred) or the chain failed.
    fn apply_block(&mut self, e: &Entry) -> bool {
        let own = self.inflight.front().is_some_and(|p| p.index == e.index && p.term == e.term);
        if own {
            let Some(p) = self.inflight.pop_front() else { return false };
            // A catch-up of the host's may have pulled it from a member
            // that wrote it first: it is in the ledger already.
            // (Its consenters, if it changed them, come through
            // `on_consenters_changed`.)
            if p.block.number() >= support::height() {
                self.write(p.block, p.config, e.index);
            } else if p.config {
                self.config_inflight = false;
            }
        } else {
            // Another leader's block, or one this node proposed in an
            // earlier term: proposals of this term at or before it are void.
            while self.inflight.front().is_some_and(|p| p.index <= e.index) {
                self.inflight.pop_front();
            }
            let Some(number) = block_number(&e.data) else {
                self.fail(&format!("committed entry {} holds no block", e.index));
                return false;
            };
            let height = support::height();
            if number < height {
                // Already in the ledger (pulled, or written before a restart).
            } else if number > height {
                // Blocks are missing: pull them, then apply this entry.
                self.deferred.push_back(e.clone());
                self.start_catch_up(number);
                return false;
            } else {
                match replication::block_from_bytes(&e.data) {
                    Ok(b) => {
                        let config = is_config_block(&e.data);
                        self.write(b, config, e.index);
                    }
                    Err(err) => {
                        self.fail(&format!(
                            "committed entry {} holds block {number}, which the host refuses: {err}",
                            e.index
                        ));
                        return false;
                    }
                }
            }
        }
        self.last_block = e.data.to_vec();
        !self.failed
    }

    fn write(&mut self, block: Block, config: bool, index: u64) {
        let number = block.number();
        // A config block that changes the consenter set carries the new
        // ids (Fabric's etcdraft writes them in that block's metadata).
        let membership = if config {
            consenters_in_config_block(&block.to_bytes()).filter(|c| !same_consenters(c, &self.consenters)).map(|c| {
                let (ids, next) = assign_ids(&self.consenters, &self.ids, &c, self.next_id);
                (c, ids, next)
            })
        } else {
            None
        };
        let (ids, next) = match &membership {
            Some((_, ids, next)) => (ids.clone(), *next),
            None => (self.ids.clone(), self.next_id),
        };
        let md =
            BlockMetadata { consenter_ids: ids.clone(), next_consenter_id: next, raft_index: index }.encode_to_vec();
        let r = if config { support::write_config_block(block, &md) } else { support::write_block(block, &md) };
        if let Err(e) = r {
            self.fail(&format!("writing block {number}: {e}"));
            return;
        }
        if config {
            self.config_inflight = false;
        }
        if let Some((consenters, ids, next)) = membership {
            info(&format!("block {number} changes the consenters: ids {:?} -> {ids:?}", self.ids));
            self.consenters = consenters;
            self.ids = ids;
            self.next_id = next;
            self.evicted = cluster::self_index().is_none();
            self.bind();
        }
    }

    /// As leader, brings raft's voters to the config's consenters, one
    /// conf change at a time (Fabric's etcdraft proposes AddNode or
    /// RemoveNode after the config block).
    fn reconcile_voters(&mut self) {
        if !self.can_cut() || self.conf_change.is_some() {
            return;
        }
        let voters: Vec<u64> = self.node.store().voters().to_vec();
        let add = self.ids.iter().copied().find(|i| !voters.contains(i));
        let remove = voters.iter().copied().find(|v| !self.ids.contains(v));
        let (kind, id) = match (add, remove) {
            (Some(id), _) => (ConfChangeType::AddNode, id),
            (None, Some(id)) => (ConfChangeType::RemoveNode, id),
            (None, None) => return,
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id;
        let before = self.node.raft.raft_log.last_index();
        match self.node.propose_conf_change(vec![], cc) {
            Ok(()) if self.node.raft.raft_log.last_index() > before => {
                info(&format!("proposing {kind:?} {id}"));
                self.conf_change = Some(self.node.raft.raft_log.last_index());
            }
            Ok(()) => {}
            Err(e) => warn(&format!("proposing {kind:?} {id}: {e}")),
        }
    }

    fn applied_conf_change(&mut self, index: u64, kind: ConfChangeType, id: u64) {
        if self.conf_change.is_some_and(|i| i <= index) {
            self.conf_change = None;
        }
        info(&format!("conf change applied at index {index}: {kind:?} {id}; voters {:?}", self.node.store().voters()));
        if kind == ConfChangeType::RemoveNode {
            self.bind();
        }
        // A new node starts from a snapshot whose conf state has it (raft
        // refuses one without it): every node compacts its log here, so
        // that whichever leads next sends the new node one it takes.
        if kind == ConfChangeType::AddNode && !self.last_block.is_empty() {
            let block = self.last_block.clone();
            self.node.mut_store().compact(index, block);
            if let Err(e) = self.node.mut_store().flush() {
                self.fail(&e);
            }
        }
        if kind == ConfChangeType::RemoveNode && id == self.me {
            info("this node was removed from the channel's consenters: it stops taking part");
            self.removed = true;
            self.leader = 0;
            self.role = StateRole::Follower;
            if self.batch_timer {
                timers::cancel(BATCH);
                self.batch_timer = false;
            }
            cluster::report(0, &[]);
        }
    }

    /// After applying: compact the log past SnapshotIntervalSize, and as
    /// leader cut what waited.
    fn after_apply(&mut self) {
        if self.failed {
            return;
        }
        let store = self.node.store();
        if store.bytes_since_snapshot >= self.opts.snapshot_interval_size && !self.last_block.is_empty() {
            let (index, block) = (self.applied, self.last_block.clone());
            self.node.mut_store().compact(index, block);
            if let Err(e) = self.node.mut_store().flush() {
                self.fail(&e);
                return;
            }
        }
        self.reconcile_voters();
        if self.can_cut() {
            self.cut_after = None;
            while self.inflight.len() < self.opts.max_inflight_blocks
                && let Some(b) = self.cut.pop_front()
            {
                self.propose(b, false);
            }
            if !self.waiting.is_empty() {
                let waiting: Vec<_> = self.waiting.drain(..).collect();
                let mut run = Vec::new();
                for (env, info) in waiting {
                    if !self.can_cut() {
                        self.waiting.push_back((env, info));
                    } else if info.class == MessageClass::Config {
                        self.order_normal(std::mem::take(&mut run));
                        self.order_config(env, info);
                    } else {
                        run.push((env, info));
                    }
                }
                self.order_normal(run);
            }
        }
    }

    fn catch_up_to_snapshot(&mut self, snap: &Snapshot) {
        if let Some(number) = block_number(&snap.data)
            && number >= support::height()
        {
            self.start_catch_up(number + 1);
        }
    }

    fn start_catch_up(&mut self, target: u64) {
        if self.catching_up.is_some_and(|t| t >= target) {
            return;
        }
        info(&format!("catching up: pulling blocks up to height {target}"));
        self.catching_up = Some(target);
        if let Err(e) = replication::catch_up(target) {
            self.fail(&format!("catch-up to height {target}: {e}"));
        }
    }
}
