//! The node's metrics, under Fabric's names where Fabric has one, recorded
//! through the `metrics` facade and rendered in Prometheus' text format by
//! the operations endpoint (`/metrics`).
//!
//! Fabric's: `broadcast_validate_duration`, `broadcast_enqueue_duration`,
//! `broadcast_processed_count` (labels `channel`, `type`, `status`);
//! `deliver_streams_opened`, `deliver_streams_closed`,
//! `deliver_requests_received`, `deliver_requests_completed`,
//! `deliver_blocks_sent` (labels `channel`, `filtered`, `data_type`, and
//! `success`); `blockcutter_block_fill_duration` (recorded by the runtime);
//! `ledger_blockchain_height`, `ledger_blockstorage_commit_time`;
//! `participation_status`, `participation_consensus_relation`;
//! `consensus_etcdraft_*` through [`consensus`], for a raft plugin's host
//! side to call; `fabric_version`. Ours (`consenter_*`): plugin calls,
//! their duration and traps, host bytes held per chain and compile-cache
//! hits (recorded by the runtime, `consenter_runtime::observe`), crashes,
//! restarts, lost envelopes and swaps per channel.
//!
//! Without an installed recorder ([`install`]) every handle is a no-op, so
//! the library costs nothing in tests and tools. On the Broadcast path the
//! handles are cached per stream ([`BroadcastMetrics`]): an envelope costs a
//! hash lookup and a few atomic operations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::node::Node;
use crate::proto::common::{HeaderType, Status};

/// Prometheus' default buckets (what Fabric's histograms use unless they
/// name their own), in seconds.
pub const DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Fabric's buckets of `ledger_blockstorage_commit_time`.
pub const COMMIT_TIME_BUCKETS: [f64; 7] = [0.005, 0.01, 0.015, 0.05, 0.1, 1.0, 10.0];

/// Buckets of our plugin call durations (calls are usually well under 5 ms).
pub const CALL_BUCKETS: [f64; 12] = [0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// What went wrong setting up metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The Prometheus recorder could not be built or installed (a second
    /// install in one process, for instance).
    #[error("installing the Prometheus metrics recorder: {0}")]
    Install(String),
}

/// The installed Prometheus recorder: renders the text format.
#[derive(Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
}

impl Exporter {
    /// Every metric in Prometheus' text format (version 0.0.4), after
    /// reading the node's channel state into its gauges and counters.
    pub fn render(&self, node: Option<&Node>) -> String {
        if let Some(node) = node {
            collect(node);
        }
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// Drains histogram samples into their buckets (run now and then so
    /// they do not pile up between scrapes).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// Installs the process-wide Prometheus recorder (once per process) and
/// describes every metric of the node with Fabric's help texts.
pub fn install(version: &str) -> Result<Exporter, MetricsError> {
    let err = |e: metrics_exporter_prometheus::BuildError| MetricsError::Install(e.to_string());
    let recorder = PrometheusBuilder::new()
        .set_buckets(&DEFAULT_BUCKETS)
        .map_err(err)?
        .set_buckets_for_metric(Matcher::Full(LEDGER_COMMIT_TIME.into()), &COMMIT_TIME_BUCKETS)
        .map_err(err)?
        .set_buckets_for_metric(Matcher::Prefix("consenter_plugin_call_duration".into()), &CALL_BUCKETS)
        .map_err(err)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| MetricsError::Install(e.to_string()))?;
    describe();
    gauge!(FABRIC_VERSION, "version" => version.to_string()).set(1.0);
    Ok(Exporter { handle })
}

const BROADCAST_VALIDATE: &str = "broadcast_validate_duration";
const BROADCAST_ENQUEUE: &str = "broadcast_enqueue_duration";
const BROADCAST_PROCESSED: &str = "broadcast_processed_count";
const DELIVER_OPENED: &str = "deliver_streams_opened";
const DELIVER_CLOSED: &str = "deliver_streams_closed";
const DELIVER_RECEIVED: &str = "deliver_requests_received";
const DELIVER_COMPLETED: &str = "deliver_requests_completed";
const DELIVER_BLOCKS: &str = "deliver_blocks_sent";
const LEDGER_HEIGHT: &str = "ledger_blockchain_height";
const LEDGER_COMMIT_TIME: &str = "ledger_blockstorage_commit_time";
const PARTICIPATION_STATUS: &str = "participation_status";
const PARTICIPATION_RELATION: &str = "participation_consensus_relation";
const RAFT_CLUSTER_SIZE: &str = "consensus_etcdraft_cluster_size";
const RAFT_IS_LEADER: &str = "consensus_etcdraft_is_leader";
const RAFT_ACTIVE_NODES: &str = "consensus_etcdraft_active_nodes";
const RAFT_COMMITTED: &str = "consensus_etcdraft_committed_block_number";
const RAFT_LEADER_CHANGES: &str = "consensus_etcdraft_leader_changes";
const FABRIC_VERSION: &str = "fabric_version";
const CRASHES: &str = "consenter_plugin_crashes";
const RESTARTS: &str = "consenter_plugin_restarts";
const LOST: &str = "consenter_lost_envelopes";
const SWAPS: &str = "consenter_plugin_swaps";
const UPGRADES: &str = "consenter_plugin_upgrades";
const ROLLBACKS: &str = "consenter_plugin_rollbacks";

fn describe() {
    use consenter_runtime::observe as o;
    describe_histogram!(BROADCAST_VALIDATE, "The time to validate a transaction in seconds.");
    describe_histogram!(BROADCAST_ENQUEUE, "The time to enqueue a transaction in seconds.");
    describe_counter!(BROADCAST_PROCESSED, "The number of transactions processed.");
    describe_counter!(DELIVER_OPENED, "The number of GRPC streams that have been opened for the deliver service.");
    describe_counter!(DELIVER_CLOSED, "The number of GRPC streams that have been closed for the deliver service.");
    describe_counter!(DELIVER_RECEIVED, "The number of deliver requests that have been received.");
    describe_counter!(DELIVER_COMPLETED, "The number of deliver requests that have been completed.");
    describe_counter!(DELIVER_BLOCKS, "The number of blocks sent by the deliver service.");
    describe_histogram!(
        o::BLOCK_FILL_DURATION,
        "The time from first transaction enqueing to the block being cut in seconds."
    );
    describe_gauge!(LEDGER_HEIGHT, "Height of the chain in blocks.");
    describe_histogram!(LEDGER_COMMIT_TIME, "Time taken in seconds for committing the block to storage.");
    describe_gauge!(
        PARTICIPATION_STATUS,
        "The channel participation status of the node: 0 if inactive, 1 if active, 2 if onboarding, 3 if failed."
    );
    describe_gauge!(
        PARTICIPATION_RELATION,
        "The channel participation consensus relation of the node: 0 if other, 1 if consenter, 2 if follower, 3 if \
         config-tracker."
    );
    describe_gauge!(RAFT_CLUSTER_SIZE, "Number of nodes in this channel.");
    describe_gauge!(RAFT_IS_LEADER, "The leadership status of the current node: 1 if it is the leader else 0.");
    describe_gauge!(RAFT_ACTIVE_NODES, "Number of active nodes in this channel.");
    describe_gauge!(RAFT_COMMITTED, "The block number of the latest block committed.");
    describe_counter!(RAFT_LEADER_CHANGES, "The number of leader changes since process start.");
    describe_gauge!(FABRIC_VERSION, "The active version of Fabric.");
    describe_counter!(o::PLUGIN_CALLS, "Calls into a chain's consenter plugin.");
    describe_histogram!(o::PLUGIN_CALL_DURATION, "Duration of calls into a chain's consenter plugin in seconds.");
    describe_counter!(o::PLUGIN_TRAPS, "Traps of a chain's plugin instance (the call that trapped).");
    describe_gauge!(o::HOST_BYTES_HELD, "Bytes of envelopes, batches and blocks the host holds for a chain's plugin.");
    describe_counter!(o::CACHE_HITS, "Plugins loaded from the compiled-artifact cache.");
    describe_counter!(o::CACHE_MISSES, "Plugins compiled because the cache had no usable entry.");
    describe_counter!(CRASHES, "Crashes of a chain's plugin instance (traps, failures, host faults).");
    describe_counter!(RESTARTS, "Restarts of a chain's plugin instance after a crash.");
    describe_counter!(LOST, "Envelopes accepted by crashed plugin instances and never written.");
    describe_counter!(SWAPS, "Live swaps of a chain's consenter plugin.");
    describe_counter!(UPGRADES, "Live upgrades of a chain's consenter plugin to a new build of its type.");
    describe_counter!(ROLLBACKS, "Plugin upgrades rolled back after the new build failed on probation.");
}

/// The text of a Broadcast status for the `status` label (Fabric's
/// `cb.Status` names, e.g. `SUCCESS`, `BAD_REQUEST`).
pub fn status_name(status: i32) -> &'static str {
    Status::try_from(status).map(|s| s.as_str_name()).unwrap_or("UNKNOWN")
}

/// The text of a header type for the `type` label (Fabric's
/// `cb.HeaderType` names; empty when the envelope did not parse).
pub fn type_name(header_type: Option<i32>) -> &'static str {
    match header_type {
        None => "",
        Some(t) => HeaderType::try_from(t).map(|t| t.as_str_name()).unwrap_or("UNKNOWN"),
    }
}

/// Handles of one (channel, type, status) of Broadcast.
struct BroadcastHandles {
    validate: Histogram,
    enqueue: Histogram,
    processed: Counter,
}

/// Broadcast metrics of one stream: handles cached by channel, header type
/// and status, so that recording an envelope allocates and hashes nothing
/// after the first of its kind (a stream sends to few channels and sees few
/// kinds: short lists, the last channel first).
#[derive(Default)]
pub struct BroadcastMetrics {
    channels: Vec<ChannelHandles>,
}

/// The cached handles of one channel.
struct ChannelHandles {
    channel: Arc<str>,
    kinds: Vec<((i32, i32), BroadcastHandles)>,
    accepted: Arc<AtomicU64>,
}

impl ChannelHandles {
    fn kind(&mut self, key: (i32, i32), make: impl FnOnce() -> BroadcastHandles) -> &BroadcastHandles {
        let i = match self.kinds.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.kinds.push((key, make()));
                self.kinds.len() - 1
            }
        };
        &self.kinds[i].1
    }
}

/// What is known of one envelope when its answer goes out.
pub struct BroadcastOutcome<'a> {
    /// Its channel ("" if it did not parse).
    pub channel: &'a Arc<str>,
    /// Its header type, if it parsed.
    pub header_type: Option<i32>,
    /// How long its checks took, and their status.
    pub validate: (Duration, i32),
    /// How long the chain took to take it, if it was handed over.
    pub enqueue: Option<Duration>,
    /// The answer's status.
    pub status: i32,
}

impl BroadcastMetrics {
    /// Records one envelope's outcome.
    pub fn record(&mut self, o: &BroadcastOutcome<'_>) {
        let ty = o.header_type.unwrap_or(-1);
        let handles = |status: i32| {
            let labels = [
                ("channel", o.channel.to_string()),
                ("type", type_name(o.header_type).to_string()),
                ("status", status_name(status).to_string()),
            ];
            BroadcastHandles {
                validate: histogram!(BROADCAST_VALIDATE, &labels),
                enqueue: histogram!(BROADCAST_ENQUEUE, &labels),
                processed: counter!(BROADCAST_PROCESSED, &labels),
            }
        };
        let found = match self.channels.first() {
            Some(c) if Arc::ptr_eq(&c.channel, o.channel) => Some(0),
            _ => self.channels.iter().position(|c| *c.channel == **o.channel),
        };
        let i = match found {
            Some(i) => i,
            None => {
                let accepted = accepted(o.channel);
                self.channels.push(ChannelHandles { channel: o.channel.clone(), kinds: vec![], accepted });
                self.channels.len() - 1
            }
        };
        if i > 0 {
            // The last channel first: the next envelope is most likely its.
            self.channels.swap(0, i);
        }
        let ch = &mut self.channels[0];
        // Keep the pointer of the stream's current name for the fast path.
        if !Arc::ptr_eq(&ch.channel, o.channel) {
            ch.channel = o.channel.clone();
        }
        ch.kind((ty, o.validate.1), || handles(o.validate.1)).validate.record(o.validate.0);
        let h = ch.kind((ty, o.status), || handles(o.status));
        if let Some(d) = o.enqueue {
            h.enqueue.record(d);
        }
        h.processed.increment(1);
        if o.status == Status::Success as i32 {
            ch.accepted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Envelopes Broadcast accepted (SUCCESS) on `channel` since the node
/// started: what the status page's throughput plot is made of.
pub fn accepted(channel: &str) -> Arc<AtomicU64> {
    static ACCEPTED: OnceLock<RwLock<HashMap<String, Arc<AtomicU64>>>> = OnceLock::new();
    let map = ACCEPTED.get_or_init(Default::default);
    if let Some(c) = read(map).get(channel) {
        return c.clone();
    }
    map.write().unwrap_or_else(|p| p.into_inner()).entry(channel.to_string()).or_default().clone()
}

/// A Deliver stream opened (Fabric's `deliver_streams_opened`).
pub fn deliver_stream_opened() {
    counter!(DELIVER_OPENED).increment(1);
}

/// A Deliver stream closed (Fabric's `deliver_streams_closed`).
pub fn deliver_stream_closed() {
    counter!(DELIVER_CLOSED).increment(1);
}

/// Deliver metrics of one request's channel (`filtered="false"`,
/// `data_type="block"`: this node serves full blocks only).
pub struct DeliverMetrics {
    channel: String,
    blocks: Counter,
}

impl DeliverMetrics {
    /// A request for `channel` was received.
    pub fn received(channel: &str) -> DeliverMetrics {
        let labels = [("channel", channel.to_string()), ("filtered", "false".into()), ("data_type", "block".into())];
        counter!(DELIVER_RECEIVED, &labels).increment(1);
        DeliverMetrics { channel: channel.to_string(), blocks: counter!(DELIVER_BLOCKS, &labels) }
    }

    /// A block was sent.
    pub fn block_sent(&self) {
        self.blocks.increment(1);
    }

    /// The request ended with `status` (`success` is whether it is SUCCESS).
    pub fn completed(&self, status: i32) {
        let success = if status == Status::Success as i32 { "true" } else { "false" };
        let labels = [
            ("channel", self.channel.clone()),
            ("filtered", "false".into()),
            ("data_type", "block".into()),
            ("success", success.into()),
        ];
        counter!(DELIVER_COMPLETED, &labels).increment(1);
    }
}

/// Fabric's ledger metrics of one channel.
pub struct LedgerMetrics {
    height: Gauge,
    commit: Histogram,
}

impl LedgerMetrics {
    /// Handles of `channel`'s ledger.
    pub fn new(channel: &str) -> LedgerMetrics {
        LedgerMetrics {
            height: gauge!(LEDGER_HEIGHT, "channel" => channel.to_string()),
            commit: histogram!(LEDGER_COMMIT_TIME, "channel" => channel.to_string()),
        }
    }

    /// The ledger's durable height is now `height`.
    pub fn height(&self, height: u64) {
        self.height.set(height as f64);
    }

    /// A group of blocks took `took` to write and fsync.
    pub fn committed(&self, took: Duration) {
        self.commit.record(took);
    }
}

/// What the consensus plugin of a channel knows of its cluster (raft):
/// Fabric's `consensus_etcdraft_*` metrics and the status page's leader.
/// Get one with [`consensus`]; cloning shares it.
#[derive(Clone)]
pub struct ConsensusMetrics {
    inner: Arc<ConsensusInner>,
}

struct ConsensusInner {
    is_leader: Gauge,
    leader_changes: Counter,
    committed: Gauge,
    cluster_size: Gauge,
    active_nodes: Gauge,
    /// The leader's raft id, 0 when unknown.
    leader: AtomicU64,
    leading: AtomicU64,
}

/// The consensus metrics of `channel` (made on first use; the same handle
/// afterwards). [`collect`] fills them before each scrape from what a
/// clustered plugin reports (the channel's `consenter.cluster`: leader,
/// active nodes, leader changes) and the channel's config (cluster size)
/// and height (committed block); code with fresher values may call
/// `set_is_leader`, `leader_changed`, `set_committed_block_number`,
/// `set_cluster_size`, `set_active_nodes` and `set_leader` itself.
pub fn consensus(channel: &str) -> ConsensusMetrics {
    if let Some(m) = read(consensus_registry()).get(channel) {
        return m.clone();
    }
    let mut w = consensus_registry().write().unwrap_or_else(|p| p.into_inner());
    w.entry(channel.to_string())
        .or_insert_with(|| {
            let ch = channel.to_string();
            ConsensusMetrics {
                inner: Arc::new(ConsensusInner {
                    is_leader: gauge!(RAFT_IS_LEADER, "channel" => ch.clone()),
                    leader_changes: counter!(RAFT_LEADER_CHANGES, "channel" => ch.clone()),
                    committed: gauge!(RAFT_COMMITTED, "channel" => ch.clone()),
                    cluster_size: gauge!(RAFT_CLUSTER_SIZE, "channel" => ch.clone()),
                    active_nodes: gauge!(RAFT_ACTIVE_NODES, "channel" => ch),
                    leader: AtomicU64::new(0),
                    leading: AtomicU64::new(0),
                }),
            }
        })
        .clone()
}

/// The consensus metrics of `channel`, if its plugin's host side made them.
pub fn consensus_known(channel: &str) -> Option<ConsensusMetrics> {
    read(consensus_registry()).get(channel).cloned()
}

fn consensus_registry() -> &'static RwLock<HashMap<String, ConsensusMetrics>> {
    static ALL: OnceLock<RwLock<HashMap<String, ConsensusMetrics>>> = OnceLock::new();
    ALL.get_or_init(Default::default)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

impl ConsensusMetrics {
    /// Whether this node leads the channel (`consensus_etcdraft_is_leader`).
    pub fn set_is_leader(&self, leader: bool) {
        self.inner.is_leader.set(if leader { 1.0 } else { 0.0 });
        self.inner.leading.store(if leader { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// The leader changed (`consensus_etcdraft_leader_changes`).
    pub fn leader_changed(&self) {
        self.inner.leader_changes.increment(1);
    }

    /// The latest committed block (`consensus_etcdraft_committed_block_number`).
    pub fn set_committed_block_number(&self, number: u64) {
        self.inner.committed.set(number as f64);
    }

    /// Nodes in the channel (`consensus_etcdraft_cluster_size`).
    pub fn set_cluster_size(&self, n: u64) {
        self.inner.cluster_size.set(n as f64);
    }

    /// Active nodes in the channel (`consensus_etcdraft_active_nodes`).
    pub fn set_active_nodes(&self, n: u64) {
        self.inner.active_nodes.set(n as f64);
    }

    /// The leader's raft id, if known (shown on the status page).
    pub fn set_leader(&self, id: Option<u64>) {
        self.inner.leader.store(id.unwrap_or(0), Ordering::Relaxed);
    }

    /// The leader's raft id, if known.
    pub fn leader(&self) -> Option<u64> {
        Some(self.inner.leader.load(Ordering::Relaxed)).filter(|l| *l != 0)
    }

    /// Whether this node leads, if reported.
    pub fn is_leader(&self) -> Option<bool> {
        match self.inner.leading.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }
}

/// A channel's consenter plugin was swapped live (for the code that swaps).
pub fn plugin_swapped(channel: &str, from: &str, to: &str) {
    let labels = [("channel", channel.to_string()), ("from", from.to_string()), ("to", to.to_string())];
    counter!(SWAPS, &labels).increment(1);
}

/// Counts a live upgrade of `channel`'s plugin (consensus type `plugin`).
pub fn plugin_upgraded(channel: &str, plugin: &str) {
    counter!(UPGRADES, "channel" => channel.to_string(), "plugin" => plugin.to_string()).increment(1);
}

/// Counts a rollback of `channel`'s plugin upgrade.
pub fn plugin_rolled_back(channel: &str, plugin: &str) {
    counter!(ROLLBACKS, "channel" => channel.to_string(), "plugin" => plugin.to_string()).increment(1);
}

/// Fabric's participation gauges and our crash counters, read from the
/// node's channels (run before each scrape).
pub fn collect(node: &Node) {
    for name in node.all_channels() {
        let Some(info) = node.info(&name) else { continue };
        let ch = || ("channel", name.clone());
        let status = match info.status {
            "active" => 1.0,
            "onboarding" => 2.0,
            "failed" => 3.0,
            _ => 0.0,
        };
        gauge!(PARTICIPATION_STATUS, &[ch()]).set(status);
        let relation = match info.consensus_relation {
            "consenter" => 1.0,
            "follower" => 2.0,
            "config-tracker" => 3.0,
            _ => 0.0,
        };
        gauge!(PARTICIPATION_RELATION, &[ch()]).set(relation);
        if let Some(c) = &info.consenter {
            counter!(CRASHES, &[ch()]).absolute(c.crashes);
            counter!(RESTARTS, &[ch()]).absolute(c.restarts);
            counter!(LOST, &[ch()]).absolute(c.lost_envelopes);
            // What a clustered plugin reported (raft's `cluster.report`),
            // as Fabric's etcdraft metrics.
            if let Some(cl) = &c.cluster {
                let m = consensus(&name);
                m.set_is_leader(cl.is_leader);
                m.inner.leader_changes.absolute(cl.leader_changes);
                m.set_leader(Some(cl.leader).filter(|l| *l != 0));
                m.set_active_nodes(cl.active_nodes.len() as u64);
                m.set_committed_block_number(info.height.saturating_sub(1));
                let size = node.chain(&name).and_then(|c| c.status().config()).map_or(0, |c| c.consenters.len());
                m.set_cluster_size(size as u64);
            }
        }
    }
}
