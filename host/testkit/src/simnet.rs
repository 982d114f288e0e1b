//! A deterministic simulated network for plugins of the
//! `clustered-consenter` world: N instances of one plugin, each with the
//! real runtime and native support, its own in-memory ledger and plugin
//! storage, one virtual clock, and an in-memory cluster transport with
//! seeded delay, drop, duplication (hence reordering) and partitions.
//! Nodes crash (the instance is discarded; ledger and storage are kept)
//! and restart from their ledger, as a node does after kill -9. A config
//! block that changes the consensus type swaps each node to the plugin
//! of the new type ([`SimNet::start_with_types`]) as the chain actor
//! does. The same seed gives the same run. May touch nothing outside
//! memory.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use crate::block;
use crate::channel::{ChannelConfig, ChannelTemplate, Consenter};
use crate::envelope::Envelope;
use crate::proto::common::Block;
use crate::signer::Signer;
use crate::support::{ChainPosition, Clock, Support, SupportLimits};
use crate::testhost::{ManualClock, MemorySink};
use consenter_runtime::chain_core::ChainCore;
use consenter_runtime::cluster::ClusterSink;
use consenter_runtime::status::ChainStatus;
use consenter_runtime::{Plugin, RuntimeError};
use consenter_storage::{KvStore, MemStore, Op, StorageError};

/// The shape of a simulated network and its faults.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Consenters (nodes), all in the channel from its genesis block.
    pub nodes: usize,
    /// Seed of every random choice (delays, drops, plugin randomness).
    pub seed: u64,
    /// Probability that a message is dropped.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Shortest and longest delivery delay (uniform between).
    pub min_delay: Duration,
    /// See `min_delay`.
    pub max_delay: Duration,
    /// etcdraft TickInterval of the channel.
    pub tick: Duration,
    /// BatchSize.MaxMessageCount.
    pub max_message_count: u32,
    /// BatchTimeout.
    pub batch_timeout: Duration,
    /// etcdraft SnapshotIntervalSize (bytes of blocks between snapshots).
    pub snapshot_interval_size: u32,
    /// The channel's consensus type (`etcdraft` by default).
    pub consensus_type: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            seed: 1,
            drop: 0.0,
            duplicate: 0.0,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            tick: Duration::from_millis(100),
            max_message_count: 10,
            batch_timeout: Duration::from_millis(200),
            snapshot_interval_size: 16 << 20,
            consensus_type: "etcdraft".into(),
        }
    }
}

/// SplitMix64: a small seeded generator.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A value in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A value in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// A plugin's storage that outlives its instance (the node's disk).
#[derive(Clone)]
struct SharedStore(Arc<Mutex<MemStore>>);

impl KvStore for SharedStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(key)
    }
    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).range(start, end, limit, max_bytes)
    }
    fn write(&mut self, ops: &[Op]) -> Result<(), StorageError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(ops)
    }
    fn used_bytes(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).used_bytes()
    }
    fn quota_bytes(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).quota_bytes()
    }
}

/// What a node's plugin asked of the network during one call.
enum Out {
    /// To a member, from a plugin of this consensus type at this height.
    Send(u64, Bytes, String, u64),
    Forward(u64, u64, Bytes),
    CatchUp(u64, u64),
}

/// A node's cluster sink: records what the plugin asks; the network
/// delivers it after the call.
struct SimLink {
    /// The consensus type of the instance and its ledger height (its
    /// messages say both).
    consensus_type: String,
    height: u64,
    /// The highest catch-up target asked for (a catch-up to it runs).
    catching_to: u64,
    out: Arc<Mutex<Vec<Out>>>,
    members: Arc<Mutex<BTreeMap<u64, Consenter>>>,
}

impl ClusterSink for SimLink {
    fn set_members(&mut self, _self_id: Option<u64>, members: &[(u64, Consenter)]) {
        *self.members.lock().unwrap_or_else(|p| p.into_inner()) = members.iter().cloned().collect();
    }
    fn send(&mut self, to: u64, payload: Bytes) -> Result<(), String> {
        let out = Out::Send(to, payload, self.consensus_type.clone(), self.height);
        self.out.lock().unwrap_or_else(|p| p.into_inner()).push(out);
        Ok(())
    }
    fn forward(&mut self, to: u64, config_seq: u64, envelope: Bytes) -> Result<(), String> {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).push(Out::Forward(to, config_seq, envelope));
        Ok(())
    }
    fn catch_up(&mut self, from: u64, target: u64) -> Result<(), String> {
        if target <= self.catching_to {
            return Ok(()); // the running catch-up gets there
        }
        self.catching_to = target;
        self.out.lock().unwrap_or_else(|p| p.into_inner()).push(Out::CatchUp(from, target));
        Ok(())
    }
    fn set_height(&mut self, height: u64) {
        self.height = height;
    }
}

/// One simulated node.
struct SimNode {
    core: Option<ChainCore>,
    ledger: MemorySink,
    store: SharedStore,
    out: Arc<Mutex<Vec<Out>>>,
    members: Arc<Mutex<BTreeMap<u64, Consenter>>>,
    status: Arc<ChainStatus>,
    cert: Vec<u8>,
    starts: u64,
    /// The build this node runs, once upgraded or swapped (else the
    /// network's).
    plugin: Option<Plugin>,
    /// Live consensus-type swaps: (height at the swap, the new type).
    swaps: Vec<(u64, String)>,
}

/// A delivery scheduled on the network.
enum Event {
    /// From node `from`: the receiver finds the sender's id among its
    /// bound members, as the transport does by TLS certificate.
    Message {
        to: usize,
        from: usize,
        payload: Bytes,
        sender_type: String,
        sender_height: u64,
    },
    Forward {
        to: usize,
        from: usize,
        seq: u64,
        env: Bytes,
    },
    CatchUp {
        node: usize,
        from: u64,
        target: u64,
    },
}

/// The simulated network.
pub struct SimNet {
    cfg: SimConfig,
    plugin: Plugin,
    /// The plugins of other consensus types (live swaps), by type.
    types: BTreeMap<String, Plugin>,
    signer: Arc<Signer>,
    clock: Arc<ManualClock>,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: BTreeMap<u64, Event>,
    next_event: u64,
    rng: SimRng,
    /// Pairs of nodes that cannot reach each other.
    cut: BTreeSet<(usize, usize)>,
    /// Events handled (the simulator's work): messages, forwards,
    /// catch-ups, timers fired, envelopes submitted.
    pub handled: u64,
    /// Virtual time at the start.
    started: Instant,
    /// When the last forward from one node to another is delivered: a
    /// forward travels on a stream, in order.
    forward_at: BTreeMap<(usize, usize), Instant>,
}

/// A cluster sink that drops everything (the canary's).
pub struct NullCluster;

impl ClusterSink for NullCluster {
    fn set_members(&mut self, _: Option<u64>, _: &[(u64, Consenter)]) {}
    fn send(&mut self, _: u64, _: Bytes) -> Result<(), String> {
        Ok(())
    }
    fn forward(&mut self, _: u64, _: u64, _: Bytes) -> Result<(), String> {
        Ok(())
    }
    fn catch_up(&mut self, _: u64, _: u64) -> Result<(), String> {
        Ok(())
    }
}

/// The certificate bytes that stand for node `i` (its bytes need not be a
/// real certificate: the host matches certificates by their bytes).
pub fn sim_cert(i: usize) -> Vec<u8> {
    format!("consenter-host simulated node {i}").into_bytes()
}

/// Whether consenter `c` is the node with TLS certificate `der`.
fn cert_is(c: &Consenter, der: &[u8]) -> bool {
    let is = |pem_bytes: &[u8]| consenter_runtime::cluster::pem_to_der(pem_bytes).as_deref() == Some(der);
    is(&c.server_tls_cert) || is(&c.client_tls_cert)
}

/// The etcdraft template of a simulated channel.
pub fn sim_template(cfg: &SimConfig) -> ChannelTemplate {
    use crate::proto::etcdraft::{ConfigMetadata, Consenter as PbConsenter, Options};
    let consenters = (0..cfg.nodes)
        .map(|i| {
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE", sim_cert(i))).into_bytes();
            PbConsenter {
                host: "sim".into(),
                port: 7050 + 100 * i as u32,
                client_tls_cert: pem.clone().into(),
                server_tls_cert: pem.into(),
            }
        })
        .collect();
    let md = ConfigMetadata {
        consenters,
        options: Some(Options {
            tick_interval: format!("{}ms", cfg.tick.as_millis()),
            election_tick: 10,
            heartbeat_tick: 1,
            max_inflight_blocks: 5,
            snapshot_interval_size: cfg.snapshot_interval_size,
        }),
    };
    let mut t = ChannelTemplate::solo("simchannel");
    // The same consenters as Fabric 3's `Orderers` value: where a
    // clustered type other than etcdraft finds its members.
    t.orderers = (0..cfg.nodes)
        .map(|i| {
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE", sim_cert(i))).into_bytes();
            crate::proto::common::Consenter {
                id: i as u32 + 1,
                host: "sim".into(),
                port: 7050 + 100 * i as u32,
                msp_id: "SimMSP".into(),
                identity: Bytes::new(),
                client_tls_cert: pem.clone().into(),
                server_tls_cert: pem.into(),
            }
        })
        .collect();
    t.consensus_type = cfg.consensus_type.clone();
    t.consensus_metadata = md.encode_to_vec().into();
    t.batch_size.max_message_count = cfg.max_message_count;
    t.batch_timeout = cfg.batch_timeout;
    t
}

impl SimNet {
    /// Starts `cfg.nodes` instances of `plugin` on a new etcdraft channel.
    pub fn start(plugin: &Plugin, signer: Arc<Signer>, cfg: SimConfig) -> Result<SimNet, RuntimeError> {
        let genesis = sim_template(&cfg).genesis_block();
        Self::start_from_genesis(plugin, signer, cfg, genesis)
    }

    /// Starts on a channel whose genesis block is `genesis`.
    pub fn start_from_genesis(
        plugin: &Plugin,
        signer: Arc<Signer>,
        cfg: SimConfig,
        genesis: Block,
    ) -> Result<SimNet, RuntimeError> {
        Self::start_with_types(plugin, &[], signer, cfg, genesis)
    }

    /// As [`SimNet::start_from_genesis`], every node also having the
    /// plugins `others` of other consensus types (their names): a config
    /// block changing the channel's type to one of them swaps each node
    /// that writes it to that plugin, as the chain actor does.
    pub fn start_with_types(
        plugin: &Plugin,
        others: &[Plugin],
        signer: Arc<Signer>,
        cfg: SimConfig,
        genesis: Block,
    ) -> Result<SimNet, RuntimeError> {
        ChannelConfig::from_config_block(&genesis)
            .map_err(|e| RuntimeError::Engine(format!("simulator: bad genesis block: {e}")))?;
        let mut nodes = Vec::new();
        for i in 0..cfg.nodes {
            let ledger = MemorySink::default();
            ledger.0.lock().unwrap_or_else(|p| p.into_inner()).push(genesis.encode_to_vec().into());
            nodes.push(SimNode {
                core: None,
                ledger,
                store: SharedStore(Arc::new(Mutex::new(MemStore::new(1 << 30)))),
                out: Arc::default(),
                members: Arc::default(),
                status: Arc::new(ChainStatus::default()),
                cert: sim_cert(i),
                starts: 0,
                plugin: None,
                swaps: Vec::new(),
            });
        }
        let clock = ManualClock::new();
        let mut net = SimNet {
            started: clock.now(),
            rng: SimRng::new(cfg.seed),
            cfg,
            plugin: plugin.clone(),
            types: others.iter().map(|p| (p.name().to_string(), p.clone())).collect(),
            signer,
            clock,
            nodes,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            cut: BTreeSet::new(),
            handled: 0,
            forward_at: BTreeMap::new(),
        };
        for i in 0..net.nodes.len() {
            net.restart(i)?;
        }
        Ok(net)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Virtual time now.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.clock.now() - self.started
    }

    /// Nodes up.
    pub fn up(&self) -> usize {
        self.nodes.iter().filter(|n| n.core.is_some()).count()
    }

    /// What node `i`'s instance holds of the host (None: down or trapped).
    pub fn resources(&self, i: usize) -> Option<consenter_runtime::Resources> {
        self.nodes[i].core.as_ref().and_then(|c| c.resources())
    }

    /// Node `i`'s catch-up counters (`consenter.catchUp` of a node).
    pub fn catch_up_stats(&self, i: usize) -> consenter_runtime::status::CatchUpStats {
        self.nodes[i].status.catch_up().snapshot()
    }

    /// Bytes node `i`'s plugin keeps in its storage.
    pub fn storage_bytes(&self, i: usize) -> u64 {
        self.nodes[i].store.used_bytes()
    }

    /// The shape of every ledger: per node, per block, its transaction ids
    /// (what a deterministic run must repeat; blocks' signatures differ).
    pub fn shapes(&self) -> Vec<Vec<Vec<String>>> {
        (0..self.nodes.len()).map(|i| self.blocks(i).iter().map(crate::conformance::block_txs).collect()).collect()
    }

    /// A new support for node `i`'s next instance at `pos` under
    /// `config`: its ledger, cluster link, plugin storage, the last
    /// block's `metadata`, a seed of its own.
    fn support_for(&mut self, i: usize, config: Arc<ChannelConfig>, pos: ChainPosition, metadata: &[u8]) -> Support {
        let n = &mut self.nodes[i];
        n.starts += 1;
        let clock: Arc<dyn Clock> = self.clock.clone();
        let mut support = Support::new(
            &config.channel_id.clone(),
            config,
            self.signer.clone(),
            Box::new(n.ledger.clone()),
            clock,
            pos,
            SupportLimits::default(),
        );
        let consensus_type = n.plugin.as_ref().unwrap_or(&self.plugin).name().to_string();
        let link =
            SimLink { consensus_type, height: 0, catching_to: 0, out: n.out.clone(), members: n.members.clone() };
        support.set_cluster(Box::new(link), Some(n.cert.clone()));
        support.set_storage(Box::new(n.store.clone()));
        support.set_last_metadata(metadata.to_vec());
        support.set_random_seed(self.cfg.seed ^ ((i as u64 + 1) << 32) ^ n.starts);
        // The types this node has plugins for (a config block may change
        // the channel's type only to one of them).
        let first = self.plugin.name();
        let mut types = vec![first.to_string()];
        types.extend(self.types.keys().filter(|t| t.as_str() != first).cloned());
        support.set_consensus_types(types);
        support
    }

    /// Starts (or restarts after a crash) node `i` from its ledger and
    /// storage, as a node process does.
    pub fn restart(&mut self, i: usize) -> Result<(), RuntimeError> {
        let (config, pos, metadata) = crate::testhost::resume_point(&self.blocks(i), "simulator")?;
        let support = self.support_for(i, Arc::new(config), pos, &metadata);
        let n = &mut self.nodes[i];
        n.status = Arc::new(ChainStatus::default());
        let plugin = n.plugin.as_ref().unwrap_or(&self.plugin);
        let core = ChainCore::start(plugin, support, &metadata, n.status.clone())?;
        n.core = Some(core);
        self.drain(i);
        Ok(())
    }

    /// Upgrades node `i` live to `plugin` (another build of the same
    /// consensus type) between two events, as a node's chain actor does:
    /// the running instance ends for its successor (its `handover` export,
    /// else `halt`); the new one starts at the same ledger position and
    /// config, on the same plugin storage, with the last block's consenter
    /// metadata and the state handed over, and is offered the envelopes
    /// handed over, in order. Later restarts of the node run `plugin`.
    /// Returns how many envelopes were handed over (None: the node is down).
    pub fn upgrade(&mut self, i: usize, plugin: &Plugin) -> Result<Option<usize>, RuntimeError> {
        self.replace(i, plugin, false)
    }

    /// Replaces node `i`'s running instance by one of `next` between two
    /// events, as the chain actor does: the old instance ends for its
    /// successor; the new one starts at the same ledger position and
    /// config, with the last block's metadata, the same storage and the
    /// state handed over (an upgrade), or with empty metadata on fresh
    /// storage (`swap`: a new consensus type, Fabric's rule after a type
    /// change); then it is offered the envelopes handed over, in order. An
    /// old instance that trapped is replaced from the ledger, as after a
    /// restart. Returns how many envelopes were handed over (None: the
    /// node is down).
    fn replace(&mut self, i: usize, next: &Plugin, swap: bool) -> Result<Option<usize>, RuntimeError> {
        let n = &mut self.nodes[i];
        let Some(mut old) = n.core.take() else { return Ok(None) };
        let (pending, state) = old.end_for_successor();
        n.plugin = Some(next.clone());
        if swap {
            n.store = SharedStore(Arc::new(Mutex::new(MemStore::new(1 << 30))));
        }
        let handed = pending.len();
        match old.into_support() {
            None => self.restart(i)?,
            Some(prev) => {
                let metadata = if swap { Vec::new() } else { prev.last_metadata().to_vec() };
                let state = if swap { None } else { state };
                let support = self.support_for(i, prev.config().clone(), prev.position(), &metadata);
                let status = self.nodes[i].status.clone();
                let core = ChainCore::start_handed(next, support, &metadata, status, state.as_deref())?;
                self.nodes[i].core = Some(core);
            }
        }
        if swap {
            let h = self.height(i);
            self.nodes[i].swaps.push((h, next.name().to_string()));
        }
        if let Some(core) = self.nodes[i].core.as_mut()
            && !pending.is_empty()
        {
            let _ = core.enqueue_many(pending);
        }
        self.drain(i);
        Ok(Some(handed))
    }

    /// Node `i`'s live consensus-type swaps: the height at each (the
    /// config block's number + 1) and the new type.
    pub fn swaps(&self, i: usize) -> Vec<(u64, String)> {
        self.nodes[i].swaps.clone()
    }

    /// Swaps node `i` to the plugin of the consensus type its config now
    /// names, if a config block it wrote changed it, as the chain actor
    /// does: the running instance ends for its successor; the new type
    /// starts with empty consenter metadata (Fabric's rule after a type
    /// change) on a fresh plugin storage, at the same ledger position and
    /// config, and is offered the envelopes handed over, in order. A type
    /// with no plugin leaves the node down.
    fn settle(&mut self, i: usize) {
        let n = &self.nodes[i];
        let Some(to) = n.core.as_ref().and_then(|c| c.consensus_type()).map(str::to_string) else { return };
        if to == n.plugin.as_ref().unwrap_or(&self.plugin).name() {
            return;
        }
        let Some(next) = self.types.get(&to).cloned() else {
            self.nodes[i].core = None;
            tracing::error!(node = i, to = %to, "simulator: the new consensus type has no plugin; the node stops");
            return;
        };
        if let Err(e) = self.replace(i, &next, true) {
            tracing::error!(node = i, to = %to, error = %e, "simulator: the new consensus type did not start");
        }
    }

    /// Crashes node `i` (kill -9): its instance is gone, its ledger and
    /// storage stay; messages to it are lost until it restarts.
    pub fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.core = None;
        n.out.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let mut s = n.store.0.lock().unwrap_or_else(|p| p.into_inner());
        *s = s.crash(consenter_storage::Tear::None);
    }

    /// Whether node `i` runs.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    /// Cuts (or heals) the link between nodes `a` and `b`, both ways.
    pub fn partition(&mut self, a: usize, b: usize, cut: bool) {
        for p in [(a, b), (b, a)] {
            if cut {
                self.cut.insert(p);
            } else {
                self.cut.remove(&p);
            }
        }
    }

    /// Heals every partition and stops dropping and duplicating messages
    /// (delays stay).
    pub fn heal(&mut self) {
        self.cut.clear();
        self.cfg.drop = 0.0;
        self.cfg.duplicate = 0.0;
    }

    /// Heals partitions only, keeping the drop and duplication rates.
    pub fn heal_partitions(&mut self) {
        self.cut.clear();
    }

    /// Submits a CONFIG_UPDATE envelope at node `i` as Broadcast does: the
    /// update is checked and applied to the node's current config, and the
    /// resulting CONFIG envelope is offered to its plugin. Err says why the
    /// update was refused.
    pub fn submit_config_update(&mut self, i: usize, update: Bytes) -> Result<bool, String> {
        let cfg = self.nodes[i].status.config().ok_or("the node has no config")?;
        let env = Envelope::parse(update.clone()).map_err(|e| e.to_string())?;
        let pb = crate::proto::common::Envelope::decode(update).map_err(|e| e.to_string())?;
        let mut types = vec![cfg.consensus_type.clone()];
        types.extend(self.types.keys().cloned());
        let config_env = consenter_runtime::processor::config_update(&cfg, &self.signer, &pb, &env, &types)
            .map_err(|e| e.to_string())?;
        let Some(core) = self.nodes[i].core.as_mut() else { return Ok(false) };
        let ok = core.enqueue(config_env).is_ok();
        self.drain(i);
        Ok(ok)
    }

    /// The consenter entry standing for node `i` (whether or not it is in
    /// the channel), for config updates that add it.
    pub fn consenter_entry(i: usize) -> crate::proto::etcdraft::Consenter {
        let pem = pem::encode(&pem::Pem::new("CERTIFICATE", sim_cert(i))).into_bytes();
        crate::proto::etcdraft::Consenter {
            host: "sim".into(),
            port: 7050 + 100 * i as u32,
            client_tls_cert: pem.clone().into(),
            server_tls_cert: pem.into(),
        }
    }

    /// Adds node `len()` to the network, onboarded with node `from`'s
    /// ledger up to its last config block (what `channel join` with that
    /// block pulls), and starts it. Its index.
    pub fn join(&mut self, from: usize) -> Result<usize, RuntimeError> {
        let i = self.nodes.len();
        let src = self.nodes[from].ledger.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let last = self.blocks(from).last().map(|b| block::last_config_and_metadata(b).0).unwrap_or(0);
        let ledger = MemorySink::default();
        *ledger.0.lock().unwrap_or_else(|p| p.into_inner()) = src.into_iter().take(last as usize + 1).collect();
        self.nodes.push(SimNode {
            core: None,
            ledger,
            store: SharedStore(Arc::new(Mutex::new(MemStore::new(1 << 30)))),
            out: Arc::default(),
            members: Arc::default(),
            status: Arc::new(ChainStatus::default()),
            cert: sim_cert(i),
            starts: 0,
            plugin: None,
            swaps: Vec::new(),
        });
        self.restart(i)?;
        Ok(i)
    }

    /// The member ids node `i`'s host binds in its cluster transport now
    /// (what the plugin bound, less members the host dropped).
    pub fn bound_members(&self, i: usize) -> Vec<u64> {
        self.nodes[i].members.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }

    /// What node `i`'s plugin reports of the cluster (leader, members).
    pub fn cluster(&self, i: usize) -> Option<consenter_runtime::support::ClusterReport> {
        self.nodes[i].status.cluster()
    }

    /// Node `i`'s channel config now.
    pub fn config(&self, i: usize) -> Option<Arc<ChannelConfig>> {
        self.nodes[i].status.config()
    }

    /// Offers an envelope at node `i`, validated under its current config
    /// (as Broadcast would); whether the node accepted it.
    pub fn submit(&mut self, i: usize, env: Bytes) -> bool {
        let Ok(mut e) = Envelope::parse(env) else { return false };
        e.config_seq = self.nodes[i].status.sequence();
        let Some(core) = self.nodes[i].core.as_mut() else { return false };
        let ok = core.enqueue(e).is_ok();
        self.handled += 1;
        self.drain(i);
        ok
    }

    /// The blocks of node `i`'s ledger, genesis first.
    pub fn blocks(&self, i: usize) -> Vec<Block> {
        let v = self.nodes[i].ledger.0.lock().unwrap_or_else(|p| p.into_inner());
        v.iter().filter_map(|b| Block::decode(b.clone()).ok()).collect()
    }

    /// Node `i`'s ledger height.
    pub fn height(&self, i: usize) -> u64 {
        self.nodes[i].ledger.0.lock().unwrap_or_else(|p| p.into_inner()).len() as u64
    }

    /// Why node `i`'s chain is errored, if it is.
    pub fn errored(&self, i: usize) -> Option<String> {
        self.nodes[i].status.errored()
    }

    /// The transaction ids in node `i`'s blocks after genesis, in order.
    pub fn tx_ids(&self, i: usize) -> Vec<String> {
        self.blocks(i)
            .iter()
            .skip(1)
            .flat_map(|b| b.data.as_ref().map(|d| d.data.clone()).unwrap_or_default())
            .filter_map(|d| Envelope::parse(d).ok().map(|e| e.tx_id))
            .collect()
    }

    /// Safety: every ledger verifies (numbers, hash chain, data hashes,
    /// config envelopes alone),
    /// and no two nodes hold different blocks at one height.
    pub fn check_safety(&self) -> Result<(), String> {
        let ledgers: Vec<Vec<Block>> = (0..self.nodes.len()).map(|i| self.blocks(i)).collect();
        for (i, l) in ledgers.iter().enumerate() {
            crate::conformance::verify_ledger(l).map_err(|e| format!("node {i}: {e}"))?;
        }
        let top = ledgers.iter().map(Vec::len).max().unwrap_or(0);
        for h in 0..top {
            let mut seen: Option<(usize, block::Hash)> = None;
            for (i, l) in ledgers.iter().enumerate() {
                let Some(b) = l.get(h) else { continue };
                let hash = b.header.as_ref().map(block::header_hash).unwrap_or_default();
                match seen {
                    None => seen = Some((i, hash)),
                    Some((j, other)) if other != hash => {
                        return Err(format!("fork at height {h}: node {j} and node {i} hold different blocks"));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Runs the network for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.clock.now() + d;
        loop {
            let next_msg = self.queue.peek().map(|Reverse((t, _))| *t);
            let next_timer = self.nodes.iter().filter_map(|n| n.core.as_ref().and_then(|c| c.next_deadline())).min();
            let next = match (next_msg, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if next > end {
                break;
            }
            let now = self.clock.now();
            if next > now {
                self.clock.advance(next - now);
            }
            if next_msg == Some(next) {
                let Some(Reverse((_, id))) = self.queue.pop() else { break };
                if let Some(ev) = self.events.remove(&id) {
                    self.handle(ev);
                }
            } else {
                for i in 0..self.nodes.len() {
                    let due = self.nodes[i].core.as_ref().and_then(|c| c.next_deadline()).is_some_and(|t| t <= next);
                    if due {
                        let _node = tracing::info_span!("sim", node = i).entered();
                        if let Some(c) = self.nodes[i].core.as_mut() {
                            c.fire_timers(next);
                        }
                        self.handled += 1;
                        self.drain(i);
                    }
                }
            }
        }
        let now = self.clock.now();
        if end > now {
            self.clock.advance(end - now);
        }
    }

    fn handle(&mut self, ev: Event) {
        self.handled += 1;
        let node = match &ev {
            Event::Message { to, .. } | Event::Forward { to, .. } => *to,
            Event::CatchUp { node, .. } => *node,
        };
        // Log lines name the node whose plugin wrote them.
        let _node = tracing::info_span!("sim", node).entered();
        match ev {
            Event::Message { to, from, payload, sender_type, sender_height } => {
                let id = self.member_id(to, from);
                if let Some(c) = self.nodes[to].core.as_mut() {
                    match id {
                        Some(id) => c.on_member_message(id, &payload, &sender_type, sender_height),
                        // Refused by the transport: a consenter this node's
                        // config does not name (yet).
                        None => c.on_non_member_message(sender_height),
                    }
                    self.drain(to);
                }
            }
            Event::Forward { to, from, seq, env } => {
                if self.member_id(to, from).is_none() {
                    return; // refused (Forbidden) by the transport
                }
                let Ok(mut e) = Envelope::parse(env) else { return };
                // The receiving host's Broadcast checks: the envelope is
                // stamped with the sequence it was validated under.
                e.config_seq = seq;
                if let Some(c) = self.nodes[to].core.as_mut() {
                    let _ = c.enqueue(e);
                    self.drain(to);
                }
            }
            Event::CatchUp { node, from, target } => {
                // Pull from the up node with the most blocks.
                let src =
                    (0..self.nodes.len()).filter(|j| *j != node && self.is_up(*j)).max_by_key(|j| self.height(*j));
                let blocks: Vec<Bytes> = match src {
                    Some(j) => {
                        let v = self.nodes[j].ledger.0.lock().unwrap_or_else(|p| p.into_inner());
                        v.iter().skip(from as usize).take(target.saturating_sub(from) as usize).cloned().collect()
                    }
                    None => Vec::new(),
                };
                let Some(c) = self.nodes[node].core.as_mut() else { return };
                let mut err = None;
                for b in blocks {
                    if let Err(e) = c.write_pulled(b) {
                        err = Some(e);
                        break;
                    }
                }
                let height = self.nodes[node].ledger.0.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
                if err.is_none() && height < target {
                    err = Some(format!("no member had blocks up to {target}"));
                }
                if let Some(c) = self.nodes[node].core.as_mut() {
                    c.caught_up(height, err.as_deref());
                }
                self.drain(node);
            }
        }
    }

    /// Schedules what node `i`'s plugin asked for during its last call,
    /// after a swap if a config block it wrote changed the consensus type.
    fn drain(&mut self, i: usize) {
        self.settle(i);
        let outs: Vec<Out> = std::mem::take(&mut *self.nodes[i].out.lock().unwrap_or_else(|p| p.into_inner()));
        if outs.is_empty() {
            return;
        }
        let members = self.nodes[i].members.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for o in outs {
            match o {
                Out::Send(to, payload, sender_type, sender_height) => {
                    if let Some(j) = self.node_of(&members, to) {
                        self.schedule_faulty(i, j, |at| {
                            let (payload, sender_type) = (payload.clone(), sender_type.clone());
                            (at, Event::Message { to: j, from: i, payload, sender_type, sender_height })
                        });
                    }
                }
                Out::Forward(to, seq, env) => {
                    // A forward travels on a stream: lost with a cut or a
                    // drop, never duplicated or overtaken.
                    if let Some(j) = self.node_of(&members, to)
                        && !self.cut.contains(&(i, j))
                        && self.rng.unit() >= self.cfg.drop
                    {
                        let mut at = self.clock.now() + self.delay();
                        if let Some(prev) = self.forward_at.get(&(i, j)) {
                            at = at.max(*prev);
                        }
                        self.forward_at.insert((i, j), at);
                        self.schedule(at, Event::Forward { to: j, from: i, seq, env: env.clone() });
                    }
                }
                Out::CatchUp(from, target) => {
                    let at = self.clock.now() + self.delay();
                    self.schedule(at, Event::CatchUp { node: i, from, target });
                }
            }
        }
    }

    /// The id under which node `to` has node `from` bound (None: `from`
    /// is no member of `to`'s binding; its transport refuses it).
    fn member_id(&self, to: usize, from: usize) -> Option<u64> {
        let members = self.nodes[to].members.lock().unwrap_or_else(|p| p.into_inner());
        members.iter().find(|(_, c)| cert_is(c, &self.nodes[from].cert)).map(|(id, _)| *id)
    }

    fn node_of(&self, members: &BTreeMap<u64, Consenter>, id: u64) -> Option<usize> {
        let c = members.get(&id)?;
        self.nodes.iter().position(|n| cert_is(c, &n.cert))
    }

    fn delay(&mut self) -> Duration {
        let (lo, hi) = (self.cfg.min_delay.as_micros() as u64, self.cfg.max_delay.as_micros() as u64);
        Duration::from_micros(lo + self.rng.below(hi.saturating_sub(lo) + 1))
    }

    fn schedule_faulty(&mut self, from: usize, to: usize, mk: impl Fn(Instant) -> (Instant, Event)) {
        if self.cut.contains(&(from, to)) || self.rng.unit() < self.cfg.drop {
            return;
        }
        let copies = if self.rng.unit() < self.cfg.duplicate { 2 } else { 1 };
        for _ in 0..copies {
            let at = self.clock.now() + self.delay();
            let (at, ev) = mk(at);
            self.schedule(at, ev);
        }
    }

    fn schedule(&mut self, at: Instant, ev: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, ev);
        self.queue.push(Reverse((at, id)));
    }
}
