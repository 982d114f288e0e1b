//! The node: its plugins, its channels and their chains (Fabric's
//! registrar). Creates a channel from a genesis block, restarts every
//! channel it has from its ledger (handing the plugin the consenter
//! metadata of the last block), and finds a chain by id. May touch the
//! data directory (`<data>/chains/<channel>/`) and the runtime.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};

use bytes::Bytes;
use prost::Message;

pub use crate::block::last_config_and_metadata;
use crate::chain::cluster::{ChainClusterSink, NodeCluster};
use crate::chain::{Chain, ChainOptions, ChainStatus, ClusterEvent, RestartPolicies, ResumeError, ResumePoint};
use crate::channel::ChannelConfig;
use crate::configtx::validate_channel_id;
use crate::ledger::{Ledger, LedgerError};
use crate::proto::common::Block;
use crate::registry::{InstallError, PluginView, Registry, RegistryConfig};
use crate::runtime::{Limits, Plugin, RuntimeError};
use crate::signer::Signer;
use crate::support::{Support, SupportLimits, SystemClock};

/// Plugins shipped inside the binary.
pub mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_plugins.rs"));

    /// The embedded plugin of a consensus type.
    pub fn get(name: &str) -> Option<&'static [u8]> {
        EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }
}

/// Errors of the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("channel {channel}: {source}")]
    Config { channel: String, source: crate::channel::ConfigError },
    #[error("channel {channel}: consensus type {wanted:?} has no plugin on this node (available: {available})")]
    NoPlugin { channel: String, wanted: String, available: String },
    /// Fabric's ErrChannelAlreadyExists (its text: the participation API
    /// answers `cannot join: channel already exists`).
    #[error("channel already exists")]
    Exists(String),
    /// Fabric's ErrChannelNotExist.
    #[error("channel does not exist")]
    NotFound(String),
    /// Fabric's ErrSystemChannelExists: joins, and removals of other
    /// channels, are refused while the node has a system channel.
    #[error("system channel exists")]
    SystemChannelExists { system: String },
    /// Fabric's ErrAppChannelsAlreadyExists: a system channel cannot be
    /// joined by a node that has channels.
    #[error("application channels already exist")]
    AppChannelsExist { channels: Vec<String> },
    /// A join block that cannot be joined, with Fabric's prefix.
    #[error("invalid join block: {0}")]
    InvalidJoinBlock(String),
    #[error("channel {channel}: {what}")]
    Channel { channel: String, what: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Canary(#[from] crate::canary::CanaryError),
    #[error(transparent)]
    Resume(#[from] ResumeError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Install(#[from] crate::registry::InstallError),
}

/// What a node is made of.
pub struct NodeConfig {
    /// Data directory (ledgers under `chains/`).
    pub data_dir: PathBuf,
    /// The node's signing identity.
    pub signer: Arc<Signer>,
    /// Limits of every plugin instance, unless `plugin_limits` has its type.
    pub limits: Limits,
    /// Limits of the instances of a plugin type.
    pub plugin_limits: BTreeMap<String, Limits>,
    /// What a chain does when its plugin crashes.
    pub restart: RestartPolicies,
    /// Limits on plugin calls into the host.
    pub support_limits: SupportLimits,
    /// Free bytes every ledger writer keeps on the ledger's disk (0: no
    /// check): a chain that would go below errs instead.
    pub disk_reserve: u64,
    /// Extra plugins (consensus type, component bytes), besides the
    /// embedded ones; a name given here replaces an embedded plugin.
    pub extra_plugins: Vec<(String, Vec<u8>)>,
    /// The cluster (transport, TLS identity) for clustered plugins such as
    /// etcdraft; None: the node has no TLS identity and runs single-node
    /// plugins only.
    pub cluster: Option<NodeCluster>,
    /// Bytes of plugin storage each clustered chain may hold.
    pub storage_quota: u64,
    /// Who may sign a plugin: `--plugin` files are admitted by the caller
    /// with it; live installs and builds installed earlier by the node.
    pub plugin_policy: crate::package::Policy,
    /// How long a live upgrade's new build is on probation (a failure
    /// meanwhile rolls the chain back).
    pub probation: std::time::Duration,
}

/// The default plugin storage quota of a chain: 1 GiB.
pub const DEFAULT_STORAGE_QUOTA: u64 = 1 << 30;

/// A running node.
pub struct Node {
    me: Weak<Node>,
    data_dir: PathBuf,
    signer: Arc<Signer>,
    support_limits: SupportLimits,
    disk_reserve: u64,
    plugins: Arc<Registry>,
    /// How long a live upgrade's new build is on probation.
    probation: std::time::Duration,
    /// Held through an install: installs go one at a time, so each one's
    /// checks see the build it replaces.
    installing: std::sync::Mutex<()>,
    restart: RestartPolicies,
    chains: RwLock<HashMap<String, Arc<Chain>>>,
    cluster: Option<NodeCluster>,
    storage_quota: u64,
    /// Channels pulling their blocks to join (their ledger so far).
    onboarding: RwLock<HashMap<String, Ledger>>,
    /// Channels that could not start: the reason and the ledger's height
    /// (read when it failed, so showing it reads no ledger).
    broken: RwLock<HashMap<String, (String, u64)>>,
}

impl Node {
    /// Loads the plugins and restarts every channel found in the data
    /// directory. A channel that cannot start is reported (see
    /// [`Node::broken`]) and the others run.
    pub fn open(cfg: NodeConfig) -> Result<Arc<Node>, NodeError> {
        let plugins = Arc::new(Registry::load(RegistryConfig {
            data_dir: cfg.data_dir.clone(),
            policy: cfg.plugin_policy,
            signer: cfg.signer.clone(),
            limits: cfg.limits,
            plugin_limits: cfg.plugin_limits,
            files: cfg.extra_plugins,
        })?);
        let node = Arc::new_cyclic(|me| Node {
            me: me.clone(),
            data_dir: cfg.data_dir,
            signer: cfg.signer,
            support_limits: cfg.support_limits,
            disk_reserve: cfg.disk_reserve,
            plugins,
            probation: cfg.probation,
            installing: std::sync::Mutex::new(()),
            restart: cfg.restart,
            chains: RwLock::new(HashMap::new()),
            cluster: cfg.cluster,
            storage_quota: cfg.storage_quota,
            onboarding: RwLock::new(HashMap::new()),
            broken: RwLock::new(HashMap::new()),
        });
        let chains_dir = node.chains_dir();
        std::fs::create_dir_all(&chains_dir).map_err(|source| NodeError::Io { path: chains_dir.clone(), source })?;
        let rd = std::fs::read_dir(&chains_dir).map_err(|source| NodeError::Io { path: chains_dir.clone(), source })?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let mut height = 0;
            match node.resume(&name, &mut height) {
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(channel = %name, error = %e, "channel did not start");
                    write(&node.broken).insert(name, (e.to_string(), height));
                }
            }
        }
        Ok(node)
    }

    fn chains_dir(&self) -> PathBuf {
        chains_dir(&self.data_dir)
    }

    fn channel_dir(&self, channel: &str) -> PathBuf {
        channel_dir(&self.data_dir, channel)
    }

    /// The node's identity.
    pub fn signer(&self) -> &Arc<Signer> {
        &self.signer
    }

    /// Names of the plugins this node can run.
    pub fn plugin_names(&self) -> Vec<String> {
        self.plugins.names()
    }

    /// Waits (up to Fabric's 7 s cluster RPC timeout) while the queue of
    /// envelopes forwarded to a member of `channel` is half full: the
    /// Broadcast of a follower whose leader orders slower than clients send
    /// slows them down instead of refusing them
    /// ([`crate::cluster::Transport::submit_room`]). At once on a node
    /// without a cluster or for a channel without members.
    pub async fn forward_room(&self, channel: &str) {
        if let Some(c) = &self.cluster
            && !c.transport.submit_room(channel, FORWARD_WAIT).await
        {
            tracing::debug!(channel, "the queue of forwarded envelopes stays full; handing the envelope on");
        }
    }

    /// A running chain.
    pub fn chain(&self, channel: &str) -> Option<Arc<Chain>> {
        read(&self.chains).get(channel).cloned()
    }

    /// Why a channel is not running, if it failed to start.
    pub fn broken(&self, channel: &str) -> Option<String> {
        read(&self.broken).get(channel).map(|(r, _)| r.clone())
    }

    /// Ids of the running channels, sorted.
    pub fn channels(&self) -> Vec<String> {
        let mut v: Vec<String> = read(&self.chains).keys().cloned().collect();
        v.sort();
        v
    }

    /// The TLS CA certificates (DER) of the organizations of every running
    /// channel's config in force, each once: what a client certificate may
    /// chain to when the gRPC port requires one.
    pub fn channel_tls_cas(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let chains: Vec<Arc<Chain>> = read(&self.chains).values().cloned().collect();
        for config in chains.iter().filter_map(|c| c.status().config()) {
            for der in &config.tls_cas {
                if !out.contains(der) {
                    out.push(der.clone());
                }
            }
        }
        out
    }

    /// Every channel the node has, running or not, sorted.
    pub fn all_channels(&self) -> Vec<String> {
        let mut v: Vec<String> = read(&self.chains)
            .keys()
            .chain(read(&self.broken).keys())
            .chain(read(&self.onboarding).keys())
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The ordering system channel, if the node has one (a running channel
    /// whose config has Consortiums).
    pub fn system_channel(&self) -> Option<Arc<Chain>> {
        read(&self.chains).values().find(|c| c.status().config().is_some_and(|c| c.system)).cloned()
    }

    /// Whether the node is pulling `channel`'s blocks to join it.
    pub fn is_onboarding(&self, channel: &str) -> bool {
        read(&self.onboarding).contains_key(channel)
    }

    /// What the channel participation API shows of a channel.
    pub fn info(&self, channel: &str) -> Option<ChannelInfo> {
        if let Some(l) = read(&self.onboarding).get(channel) {
            return Some(ChannelInfo {
                name: channel.to_string(),
                status: "onboarding",
                consensus_relation: "consenter",
                height: l.height(),
                system: false,
                error: None,
                consenter: None,
            });
        }
        if let Some(c) = self.chain(channel) {
            let status = if c.status().errored().is_some() { "failed" } else { "active" };
            // Fabric: a consenter that reports no cluster relation (solo,
            // which exists only in system-channel mode there) is "other".
            let relation = if c.plugin() == "solo" && self.system_channel().is_some() { "other" } else { "consenter" };
            let (build, previous) = (c.status().build(), c.status().previous_build());
            return Some(ChannelInfo {
                name: channel.to_string(),
                status,
                consensus_relation: relation,
                height: c.ledger().height(),
                system: c.status().config().is_some_and(|c| c.system),
                error: c.status().errored(),
                consenter: Some(ConsenterInfo {
                    plugin: c.plugin().to_string(),
                    state: c.status().state().to_string(),
                    restart_policy: c.restart_policy().to_string(),
                    crashes: c.status().crashes(),
                    restarts: c.status().restarts(),
                    lost_envelopes: c.status().lost_envelopes(),
                    last_crash: c.status().last_crash_reason(),
                    swaps: c.status().swaps(),
                    previous_plugin: c.status().previous_plugin(),
                    handed_over: c.status().handed_over(),
                    swap_pause_us: SwapPauses::of(c.status().swap_pauses()),
                    catch_up: CatchUpInfo::of(c.status().catch_up().snapshot()),
                    cluster: c.status().cluster().map(|r| ClusterInfo {
                        is_leader: r.leader != 0 && r.leader == r.self_id,
                        self_id: r.self_id,
                        leader: r.leader,
                        active_nodes: r.active,
                        leader_changes: c.status().leader_changes(),
                    }),
                    version: build.version,
                    sha256: build.sha256,
                    previous_version: previous.as_ref().map(|b| b.version.clone()),
                    previous_sha256: previous.map(|b| b.sha256),
                    upgrades: c.status().upgrades(),
                    rollbacks: c.status().rollbacks(),
                    last_rollback: c.status().last_rollback(),
                    probation_ms_left: c
                        .status()
                        .probation_until()
                        .map(|u| u.duration_since(std::time::SystemTime::now()).unwrap_or_default().as_millis() as u64),
                }),
            });
        }
        let (reason, height) = read(&self.broken).get(channel).cloned()?;
        Some(ChannelInfo {
            name: channel.to_string(),
            status: "failed",
            consensus_relation: "consenter",
            height,
            system: false,
            error: Some(reason),
            consenter: None,
        })
    }

    /// Joins a channel from its genesis block (Fabric's channel
    /// participation join), given as the marshalled block that was sent:
    /// those bytes become block 0, unchanged. Refused, in Fabric's order
    /// and with its errors: a block that is not a valid config block
    /// ([`NodeError::InvalidJoinBlock`]); any join while the node has a
    /// system channel (channels are then created through it); a channel
    /// the node has; a system channel when the node already has channels;
    /// and a config block other than the genesis block (joining later
    /// needs blocks from other orderers, which a solo node has no way to
    /// fetch).
    pub fn join(&self, raw: Bytes) -> Result<ChannelInfo, NodeError> {
        let block = Block::decode(raw.clone())
            .map_err(|e| NodeError::InvalidJoinBlock(format!("config-block is not a common.Block: {e}")))?;
        let cfg = ChannelConfig::from_config_block(&block).map_err(|e| NodeError::InvalidJoinBlock(e.to_string()))?;
        let channel = cfg.channel_id.clone();
        validate_channel_id(&channel).map_err(|e| {
            NodeError::InvalidJoinBlock(format!("initializing configtx manager failed: bad channel ID: {e}"))
        })?;
        if let Some(sys) = self.system_channel() {
            return Err(NodeError::SystemChannelExists { system: sys.channel().to_string() });
        }
        if self.chain(&channel).is_some()
            || self.broken(&channel).is_some()
            || read(&self.onboarding).contains_key(&channel)
        {
            return Err(NodeError::Exists(channel));
        }
        if cfg.system && !self.all_channels().is_empty() {
            return Err(NodeError::AppChannelsExist { channels: self.all_channels() });
        }
        let number = block.header.as_ref().map(|h| h.number).unwrap_or_default();
        if number != 0 {
            return self.onboard(block, cfg);
        }
        self.create_channel_from_bytes(raw)?;
        self.info(&channel).ok_or(NodeError::NotFound(channel))
    }

    /// Joins a running channel from one of its later config blocks (block
    /// `N` > 0), as Fabric 2.3+ does: the node must be one of the
    /// consenters it names and run their consensus type as a clustered
    /// plugin; it answers at once with status `onboarding`, pulls blocks
    /// 0..=N from those consenters (each verified: hash chain, data hash,
    /// the BlockValidation policy of the config in force), checks that
    /// block N is the join block, and then starts the chain (`active`).
    fn onboard(&self, join: Block, cfg: ChannelConfig) -> Result<ChannelInfo, NodeError> {
        let channel = cfg.channel_id.clone();
        let number = join.header.as_ref().map(|h| h.number).unwrap_or_default();
        let refuse = |what: String| NodeError::Channel { channel: channel.clone(), what };
        let plugin = self.plugin_for(&channel, &cfg)?;
        let Some(cluster) = self.cluster.clone().filter(|_| plugin.world().is_clustered()) else {
            return Err(refuse(format!(
                "the join block is block {number}: joining a running channel needs its blocks from the other \
                 consenters, and consensus type {} on this node {}",
                cfg.consensus_type,
                if plugin.world().is_clustered() {
                    "has no cluster (start it with --tls-cert and --tls-key)"
                } else {
                    "is a single-node plugin"
                }
            )));
        };
        let me = crate::runtime::cluster::Membership::new(Some(cluster.identity.cert_der().to_vec()));
        let Some(idx) = me.self_index(&cfg.consenters) else {
            return Err(refuse(format!(
                "this node's TLS certificate is in none of the consenter entries of join block {number}: add it \
                 as a consenter first (following a channel without being a consenter is not supported)"
            )));
        };
        let endpoints: Vec<String> = cfg
            .consenters
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != idx as usize)
            .map(|(_, c)| format!("{}:{}", c.host, c.port))
            .collect();
        let dir = self.channel_dir(&channel);
        if dir.exists() {
            return Err(NodeError::Exists(channel));
        }
        let ledger = Ledger::open(&dir)?;
        write(&self.onboarding).insert(channel.clone(), ledger.clone());
        tracing::info!(channel = %channel, join_block = number, ?endpoints, "onboarding: pulling the channel's blocks");
        let me = self.me.clone();
        let signer = self.signer.clone();
        let ch = channel.clone();
        cluster.runtime.spawn(async move {
            use crate::cluster::puller::{BlockPuller, PullerConfig};
            use crate::cluster::verify::BlockVerifier;
            // The join block's orderer organizations' TLS CAs are trusted
            // too, as Fabric's onboarding trusts them.
            let tls = cluster.identity.with_roots(&cfg.orderer_tls_cas);
            let cfgp = PullerConfig::new(&ch, endpoints, tls, signer);
            let mut puller = BlockPuller::new(cfgp, BlockVerifier::new(cfg, 0, None));
            let r = async {
                let mut next = 0;
                while next <= number {
                    let last = (next + 63).min(number);
                    let blocks = puller.pull(next, last).await.map_err(|e| e.to_string())?;
                    if last == number
                        && let Some(b) = blocks.last()
                        && b.header != join.header
                    {
                        return Err(format!("block {number} pulled from the consenters is not the join block"));
                    }
                    let bytes: Vec<Bytes> = blocks.iter().map(|b| Bytes::from(b.encode_to_vec())).collect();
                    ledger.append(&bytes).map_err(|e| e.to_string())?;
                    next = last + 1;
                }
                Ok::<(), String>(())
            }
            .await;
            let Some(node) = me.upgrade() else { return };
            // Still onboarding until the chain runs (or failed to).
            let started = r.and_then(|()| node.start_chain(&ch, ledger.clone()).map_err(|e| e.to_string()));
            write(&node.onboarding).remove(&ch);
            match started {
                Ok(_) => {
                    tracing::info!(channel = %ch, height = ledger.height(), "onboarding done: the channel is active")
                }
                Err(e) => {
                    tracing::error!(channel = %ch, error = %e, "onboarding failed");
                    write(&node.broken).insert(ch.clone(), (format!("onboarding failed: {e}"), ledger.height()));
                }
            }
        });
        Ok(ChannelInfo {
            name: channel,
            status: "onboarding",
            consensus_relation: "consenter",
            height: 0,
            system: false,
            error: None,
            consenter: None,
        })
    }

    /// Removes a channel: halts its chain and deletes its ledger. Refused
    /// for application channels while the node has a system channel (as
    /// Fabric does).
    pub fn remove(&self, channel: &str) -> Result<(), NodeError> {
        if let Some(sys) = self.system_channel()
            && sys.channel() != channel
        {
            return Err(NodeError::SystemChannelExists { system: sys.channel().to_string() });
        }
        let chain = write(&self.chains).remove(channel);
        let broken = write(&self.broken).remove(channel);
        if chain.is_none() && broken.is_none() {
            return Err(NodeError::NotFound(channel.to_string()));
        }
        if let Some(c) = chain {
            c.halt();
        }
        let dir = self.channel_dir(channel);
        std::fs::remove_dir_all(&dir).map_err(|source| NodeError::Io { path: dir, source })?;
        tracing::info!(channel, "channel removed");
        Ok(())
    }

    /// Creates a channel from a genesis (CONFIG) block: writes it as block 0
    /// of a new ledger and starts its chain. The block is stored as its
    /// protobuf encoding; a block read from a file or the network should go
    /// through [`Node::create_channel_from_bytes`], which keeps the bytes.
    pub fn create_channel(&self, genesis: &Block) -> Result<Arc<Chain>, NodeError> {
        self.create_channel_inner(genesis, Bytes::from(genesis.encode_to_vec()))
    }

    /// Creates a channel from a marshalled genesis block (a bootstrap or
    /// join file): block 0 is these bytes exactly, as in Fabric, which
    /// serves the genesis block it was given byte for byte. The node does
    /// not sign a genesis block (neither does Fabric, not even one it built
    /// from an ORDERER_TRANSACTION: its SIGNATURES metadata stays empty).
    pub fn create_channel_from_bytes(&self, raw: Bytes) -> Result<Arc<Chain>, NodeError> {
        let genesis = Block::decode(raw.clone()).map_err(|e| NodeError::Channel {
            channel: "(genesis)".into(),
            what: format!("the genesis block is not a common.Block: {e}"),
        })?;
        self.create_channel_inner(&genesis, raw)
    }

    fn create_channel_inner(&self, genesis: &Block, raw: Bytes) -> Result<Arc<Chain>, NodeError> {
        let cfg = ChannelConfig::from_config_block(genesis)
            .map_err(|source| NodeError::Config { channel: "(genesis)".into(), source })?;
        let channel = cfg.channel_id.clone();
        validate_channel_id(&channel).map_err(|e| NodeError::Channel {
            channel: channel.clone(),
            what: format!("initializing configtx manager failed: bad channel ID: {e}"),
        })?;
        if self.chain(&channel).is_some() || self.channel_dir(&channel).exists() {
            return Err(NodeError::Exists(channel));
        }
        if genesis.header.as_ref().map(|h| h.number) != Some(0) {
            return Err(NodeError::Channel { channel, what: "a genesis block must be block 0".into() });
        }
        self.plugin_for(&channel, &cfg)?;
        let ledger = Ledger::open(&self.channel_dir(&channel))?;
        ledger.append(&[raw])?;
        tracing::info!(channel = %channel, consensus = %cfg.consensus_type, "channel created");
        let height = ledger.height();
        self.start_chain(&channel, ledger).inspect_err(|e| {
            write(&self.broken).insert(channel.clone(), (e.to_string(), height));
        })
    }

    /// Restarts a channel from its ledger; `height` is set once the ledger
    /// is open (for the report if the chain does not start).
    fn resume(&self, channel: &str, height: &mut u64) -> Result<(), NodeError> {
        let ledger = Ledger::open(&self.channel_dir(channel))?;
        *height = ledger.height();
        self.start_chain(channel, ledger)?;
        Ok(())
    }

    /// Checks a config update that changes a channel's consensus type (a
    /// live swap) before it is ordered: the new type's plugin must pass its
    /// canary with the channel's new config (which also checks the new
    /// metadata: a plugin refuses metadata it cannot use in
    /// `handle-chain`). A swap to a clustered type needs this node's
    /// cluster (TLS) and this node among the new consenters (the canary
    /// runs as this node's member); a swap from a clustered type to a
    /// single-node one needs this node to be the channel's only consenter,
    /// as two nodes each ordering alone would fork. `new` is the config
    /// the update makes; Ok also when the type is the same.
    pub fn check_swap(&self, current: &ChannelConfig, new: ChannelConfig) -> Result<(), String> {
        let (from, to) = (current.consensus_type.clone(), new.consensus_type.clone());
        if from == to {
            return Ok(());
        }
        let plugin = self.plugins.get(&to).ok_or_else(|| {
            format!("ConsensusType.type {to:?} has no plugin on this node; the channel keeps {from:?}")
        })?;
        let old_clustered = self.plugins.get(&from).is_some_and(|p| p.world().is_clustered());
        let me = self.cluster.as_ref().map(|c| c.identity.cert_der().to_vec());
        let membership = crate::runtime::cluster::Membership::new(me.clone());
        if old_clustered && !plugin.world().is_clustered() {
            let alone = current.consenters.len() == 1 && membership.self_index(&current.consenters).is_some();
            if !alone {
                return Err(format!(
                    "ConsensusType.type cannot change from {from:?} to {to:?} while the channel has {} consenters: \
                     {to:?} orders on one node, and every consenter would order alone (a fork); remove the other \
                     consenters first, one config update at a time (the channel keeps {from:?})",
                    current.consenters.len()
                ));
            }
        }
        let checked = if plugin.world().is_clustered() {
            let Some(me) = me else {
                return Err(format!(
                    "ConsensusType.type {to:?} replicates across nodes and needs the cluster: this node runs without \
                     TLS (start it with --tls-cert and --tls-key); the channel keeps {from:?}"
                ));
            };
            if membership.self_index(&new.consenters).is_none() {
                return Err(format!(
                    "ConsensusType.type {to:?}: this node's TLS certificate is in none of the {} consenter entries of \
                     the new metadata; name this node among the consenters (the channel keeps {from:?})",
                    new.consenters.len()
                ));
            }
            consenter_testkit::canary::run_on_config_as(&plugin, self.signer.clone(), Arc::new(new), me)
        } else {
            consenter_testkit::canary::run_on_config(&plugin, self.signer.clone(), Arc::new(new))
        };
        checked.map_err(|e| {
            format!(
                "ConsensusType.type {to:?}: its plugin fails its canary with this channel's new config: {}; the \
                 channel keeps {from:?}",
                e.reason
            )
        })?;
        Ok(())
    }

    /// The plugins of this node, one build per consensus type.
    pub fn plugins(&self) -> Vec<PluginView> {
        self.plugins.list()
    }

    /// Installs a new build of a plugin live (`POST /consenter/v1/plugins`):
    /// the package's checks ([`Registry::prepare`]: trust, contract,
    /// canary), then for a single-node plugin the canary with the config of
    /// every channel the type orders now, so nothing is installed that
    /// one of them would refuse. Then the build serves its type (and is
    /// kept for the next start), and every chain of the type upgrades to it
    /// at its next block boundary, on probation. `asked`: the type, for a
    /// package without a manifest.
    pub fn install_plugin(&self, bytes: &[u8], asked: Option<&str>) -> Result<Installed, NodeError> {
        let _one_at_a_time = self.installing.lock().unwrap_or_else(|p| p.into_inner());
        let plugin = self.plugins.prepare(bytes, asked)?;
        let ty = plugin.name().to_string();
        let chains: Vec<Arc<Chain>> = read(&self.chains).values().filter(|c| c.plugin() == ty).cloned().collect();
        if !plugin.world().is_clustered() {
            for c in &chains {
                let Some(cfg) = c.status().config() else { continue };
                consenter_testkit::canary::run_on_config(&plugin, self.signer.clone(), cfg).map_err(|e| {
                    InstallError::ChannelCanary {
                        consensus_type: ty.clone(),
                        channel: c.channel().to_string(),
                        reason: e.reason,
                    }
                })?;
            }
        }
        let replaced = self.plugins.get(&ty).map(|p| p.version().to_string());
        self.plugins.commit(plugin.clone(), bytes)?;
        let mut channels: Vec<String> =
            chains.iter().filter(|c| c.upgrade(plugin.clone())).map(|c| c.channel().to_string()).collect();
        channels.sort();
        tracing::info!(plugin = %ty, version = plugin.version(), sha256 = plugin.sha256(), ?channels, "plugin installed; its chains upgrade at their next block");
        Ok(Installed {
            consensus_type: ty,
            version: plugin.version().to_string(),
            sha256: plugin.sha256().to_string(),
            replaced_version: replaced,
            channels,
            probation_secs: self.probation.as_secs(),
        })
    }

    fn plugin_for(&self, channel: &str, cfg: &ChannelConfig) -> Result<Plugin, NodeError> {
        self.plugins.get(&cfg.consensus_type).ok_or_else(|| NodeError::NoPlugin {
            channel: channel.into(),
            wanted: cfg.consensus_type.clone(),
            available: self.plugin_names().join(", "),
        })
    }

    fn start_chain(&self, channel: &str, ledger: Ledger) -> Result<Arc<Chain>, NodeError> {
        let height = ledger.height();
        let resume = ResumePoint::read(channel, &ledger)?;
        let plugin = self.plugin_for(channel, &resume.config)?;
        let restart = self.restart.for_chain(channel, plugin.name(), self.plugins.is_shipped(plugin.name()));
        let signer = self.signer.clone();
        let base_limits = self.support_limits.clone();
        let ch = channel.to_string();
        let me = self.me.clone();
        let types = self.plugin_names();
        let disk = ledger.clone();
        let (setup, events) = match self.cluster_setup(channel, &plugin)? {
            Some((setup, rx)) => (Some(setup.clone()), Some((setup.events.clone(), rx))),
            None => (None, None),
        };
        let plugins = self.plugins.clone();
        let resolve: crate::chain::PluginResolver = Box::new(move |ty| plugins.get(ty));
        let registry = self.plugins.clone();
        let on_rollback: crate::chain::RollbackHook =
            Arc::new(move |_channel, failed, _reason| registry.revert(failed));
        let on_swap: Option<crate::chain::SwapHook> = setup.clone().map(|s| {
            let hook: crate::chain::SwapHook = Arc::new(move |_channel, to| s.fresh_namespace(to));
            hook
        });
        let chain = Chain::spawn(
            channel,
            plugin,
            Box::new(move |plugin, sink, pos, cfg, status| {
                let system = cfg.system;
                let limits = plugin.limits().support_limits(&base_limits);
                let mut s = Support::new(&ch, cfg, signer.clone(), sink, Arc::new(SystemClock), pos, limits);
                s.set_consensus_types(types.clone());
                s.set_disk_used(disk.size_bytes());
                if system {
                    let me = me.clone();
                    s.set_channel_creator(Arc::new(move |genesis| {
                        let node = me.upgrade().ok_or("the node is shutting down")?;
                        node.create_channel(&genesis).map(|_| ()).map_err(|e| e.to_string())
                    }));
                }
                match &setup {
                    Some(setup) if plugin.world().is_clustered() => setup.equip(&mut s, &ch, plugin, &signer, status),
                    // A single-node plugin (after a swap from a clustered
                    // one too): the channel has no members to talk to.
                    Some(setup) => setup.cluster.transport.remove_channel(&ch),
                    None => {}
                }
                s
            }),
            ledger,
            resume,
            ChainOptions {
                restart,
                disk_reserve: self.disk_reserve,
                cluster: events,
                resolve: Some(resolve),
                probation: self.probation,
                on_rollback: Some(on_rollback),
                on_swap,
            },
        )?;
        tracing::info!(channel, height, "chain started");
        write(&self.chains).insert(channel.to_string(), chain.clone());
        write(&self.broken).remove(channel);
        Ok(chain)
    }

    /// What any chain of a node with a cluster gets (None without one): a
    /// clustered plugin's cluster sink, its event queue (the receiver,
    /// for the chain) and its plugin storage, so that a chain can start or
    /// swap to a clustered type. The storage is opened now when `plugin`
    /// is clustered (an error is the chain's), otherwise at the first swap
    /// to a clustered type.
    #[allow(clippy::type_complexity)]
    fn cluster_setup(
        &self,
        channel: &str,
        plugin: &Plugin,
    ) -> Result<Option<(Arc<ClusterSetup>, tokio::sync::mpsc::Receiver<ClusterEvent>)>, NodeError> {
        let Some(cluster) = self.cluster.clone() else {
            if plugin.world().is_clustered() {
                return Err(NodeError::Channel {
                    channel: channel.into(),
                    what: format!(
                        "consensus type {} replicates across nodes and needs the cluster: start the node with TLS \
                         (--tls-cert and --tls-key; Fabric's etcdraft requires TLS too)",
                        plugin.name()
                    ),
                });
            }
            return Ok(None);
        };
        let (tx, rx) = tokio::sync::mpsc::channel(crate::chain::CLUSTER_QUEUE);
        let setup = ClusterSetup {
            cluster,
            events: tx,
            path: self.channel_dir(channel).join("plugin-storage.redb"),
            storage: Mutex::new(None),
            quota: self.storage_quota,
        };
        if plugin.world().is_clustered() {
            setup.storage().map_err(|what| NodeError::Channel { channel: channel.into(), what })?;
        }
        Ok(Some((Arc::new(setup), rx)))
    }

    /// What receives the cluster transport's authenticated messages: they
    /// go to the channel's chain (forwarded envelopes after Broadcast's
    /// checks when the sender validated them under another config).
    pub fn cluster_inbound(self: &Arc<Node>) -> Arc<dyn crate::cluster::Inbound> {
        Arc::new(NodeInbound { node: Arc::downgrade(self) })
    }

    /// Halts every chain (queued blocks are made durable first).
    pub fn shutdown(&self) {
        let chains: Vec<Arc<Chain>> = write(&self.chains).drain().map(|(_, c)| c).collect();
        for c in chains {
            c.halt();
        }
    }
}

/// A chain's side of the node's cluster: what a clustered plugin's
/// support gets (see [`Node::cluster_setup`]).
struct ClusterSetup {
    cluster: NodeCluster,
    /// The sender of the chain's cluster event queue.
    events: tokio::sync::mpsc::Sender<ClusterEvent>,
    /// `<channel dir>/plugin-storage.redb`, one namespace per consensus type.
    path: PathBuf,
    storage: Mutex<Option<Arc<consenter_storage::ChannelStorage>>>,
    /// Bytes each namespace may hold.
    quota: u64,
}

impl ClusterSetup {
    /// The channel's plugin storage, opened on first use.
    fn storage(&self) -> Result<Arc<consenter_storage::ChannelStorage>, String> {
        let mut slot = self.storage.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = &*slot {
            return Ok(s.clone());
        }
        let opened = consenter_storage::ChannelStorage::open(&self.path)
            .map(Arc::new)
            .map_err(|e| format!("plugin storage {}: {e}", self.path.display()))?;
        *slot = Some(opened.clone());
        Ok(opened)
    }

    /// Gives a clustered plugin's support its cluster sink and its
    /// storage namespace (named for its consensus type).
    fn equip(&self, s: &mut Support, channel: &str, plugin: &Plugin, signer: &Arc<Signer>, status: &Arc<ChainStatus>) {
        let (cluster, events) = (self.cluster.clone(), self.events.clone());
        let sink = ChainClusterSink::new(channel, plugin.name(), cluster, signer.clone(), status.clone(), events);
        s.set_cluster(Box::new(sink), Some(self.cluster.identity.cert_der().to_vec()));
        match self.storage().and_then(|st| st.namespace(plugin.name(), self.quota).map_err(|e| e.to_string())) {
            Ok(ns) => s.set_storage(Box::new(ns)),
            Err(e) => tracing::error!(channel, error = %e, "the plugin's storage could not be opened"),
        }
        use rand_core::RngCore;
        s.set_random_seed(rand_core::OsRng.next_u64());
    }

    /// Empties the storage namespace of a live swap's new type: Fabric
    /// starts a new consensus type fresh, so what an earlier run of that
    /// type left on this channel is void. Nothing for a single-node type.
    fn fresh_namespace(&self, to: &Plugin) -> Result<(), String> {
        if !to.world().is_clustered() {
            return Ok(());
        }
        self.storage()?.drop_namespace(to.name()).map_err(|e| format!("emptying its storage namespace: {e}"))
    }
}

/// The node as the cluster transport's [`crate::cluster::Inbound`].
struct NodeInbound {
    node: Weak<Node>,
}

impl crate::cluster::Inbound for NodeInbound {
    fn consensus(&self, channel: &str, from: u64, payload: Bytes) {
        self.consensus_of_type(channel, from, payload, "", 0);
    }

    fn consensus_of_type(&self, channel: &str, from: u64, payload: Bytes, consensus_type: &str, height: u64) {
        let Some(chain) = self.node.upgrade().and_then(|n| n.chain(channel)) else { return };
        let sender_type = consensus_type.to_string();
        if !chain.cluster_event(ClusterEvent::Message { from, payload, sender_type, sender_height: height }) {
            tracing::debug!(
                channel,
                from,
                "cluster: a consensus message was dropped (queue full or no clustered chain)"
            );
        }
    }

    fn non_member(&self, channel: &str, height: u64) {
        let Some(chain) = self.node.upgrade().and_then(|n| n.chain(channel)) else { return };
        let _ = chain.cluster_event(ClusterEvent::NonMember { sender_height: height });
    }

    fn submit(&self, channel: &str, from: u64, last_validation_seq: u64, envelope: Bytes) {
        let Some(node) = self.node.upgrade() else { return };
        let Some(chain) = node.chain(channel) else { return };
        let Some(cfg) = chain.status().config() else { return };
        let mut env = match crate::envelope::Envelope::parse(envelope) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(channel, from, error = %e, "cluster: a forwarded envelope does not parse; dropped");
                return;
            }
        };
        if env.channel_id != channel {
            tracing::warn!(channel, from, other = %env.channel_id, "cluster: a forwarded envelope is for another channel; dropped");
            return;
        }
        if env.bytes.len() > cfg.batch_size.absolute_max_bytes as usize {
            tracing::warn!(
                channel,
                from,
                bytes = env.bytes.len(),
                "cluster: a forwarded envelope is over AbsoluteMaxBytes; dropped"
            );
            return;
        }
        if last_validation_seq != cfg.sequence {
            // Validated under another config: Broadcast's checks again.
            match crate::processor::revalidate(&cfg, &node.signer, &env, &node.plugin_names()) {
                Ok(None) => {}
                Ok(Some(recomputed)) => env = recomputed,
                Err(e) => {
                    tracing::warn!(channel, from, error = %e, "cluster: a forwarded envelope fails the current config; dropped");
                    return;
                }
            }
            env.config_seq = cfg.sequence;
        } else {
            env.config_seq = last_validation_seq;
        }
        tokio::spawn(async move {
            if let Err(e) = chain.enqueue(env).await {
                tracing::debug!(error = %e, "cluster: a forwarded envelope was not accepted");
            }
        });
    }
}

/// A channel as the participation API shows it (Fabric's ChannelInfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub name: String,
    /// "active" or "failed".
    pub status: &'static str,
    /// "consenter": this node orders the channel; "other" (Fabric's
    /// answer for solo) for solo channels in system-channel mode.
    pub consensus_relation: &'static str,
    pub height: u64,
    /// The ordering system channel.
    pub system: bool,
    /// Why the channel failed, if it did.
    pub error: Option<String>,
    /// The consenter plugin instance and its crash counters (running
    /// chains only).
    pub consenter: Option<ConsenterInfo>,
}

/// What a live install did (the answer of `POST /consenter/v1/plugins`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Installed {
    /// The consensus type it serves.
    pub consensus_type: String,
    /// Its manifest's version.
    pub version: String,
    /// SHA-256 of its file.
    pub sha256: String,
    /// The version of the build it replaced (None: a new type).
    pub replaced_version: Option<String>,
    /// The channels that upgrade to it at their next block.
    pub channels: Vec<String>,
    /// How long the new build is on probation in each of them.
    pub probation_secs: u64,
}

/// A chain's plugin instance as the participation API shows it (the
/// `consenter` object of a channel).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsenterInfo {
    /// The plugin (consensus type).
    pub plugin: String,
    /// running, restarting, errored or halted.
    pub state: String,
    /// reload or fail-closed.
    pub restart_policy: String,
    pub crashes: u64,
    pub restarts: u64,
    /// Envelopes accepted by crashed instances but never written.
    pub lost_envelopes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_crash: Option<String>,
    /// Live consensus-type swaps since the chain started.
    #[serde(default)]
    pub swaps: u64,
    /// The plugin that ordered the chain before the last swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_plugin: Option<String>,
    /// Envelopes the old plugin had accepted but not written (in the host's
    /// cutter) that swaps handed to the new one.
    #[serde(default)]
    pub handed_over: u64,
    /// The pauses of the last swaps (up to 1,024): from the old plugin's
    /// config block to the new plugin ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_pause_us: Option<SwapPauses>,
    /// The host's catch-ups of the chain (None: none yet, and no message
    /// of another consensus type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUpInfo>,
    /// What a clustered plugin reports of its cluster (raft's leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
    /// The build ordering now: its manifest's version and SHA-256.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub sha256: String,
    /// The build before the last upgrade or rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_sha256: Option<String>,
    /// Live upgrades of the build since the chain started.
    #[serde(default)]
    pub upgrades: u64,
    /// Upgrades rolled back (the new build failed on probation), and why
    /// the last one was.
    #[serde(default)]
    pub rollbacks: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback: Option<String>,
    /// Milliseconds left of the new build's probation (None: not on
    /// probation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation_ms_left: Option<u64>,
}

/// A chain's catch-ups (the `consenter.catchUp` object of a channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatchUpInfo {
    /// Catch-ups the plugin asked for.
    pub requested: u64,
    /// Blocks pulled from other consenters.
    pub pulled_blocks: u64,
    /// Consensus messages of another consensus type, dropped.
    pub other_type_messages: u64,
    /// Consensus messages of a TLS certificate that is no member of the
    /// channel as this node's config has it, refused (a consenter added
    /// by a config block this node misses, or not a consenter).
    #[serde(default)]
    pub non_member_messages: u64,
    /// Catch-ups started because such a message (of another type, or of a
    /// non-member) claimed a greater height.
    pub claims_followed: u64,
    /// Such claims not followed (one catch-up per 2 s at most, none while
    /// one runs).
    pub claims_ignored: u64,
}

impl CatchUpInfo {
    fn of(s: crate::runtime::status::CatchUpStats) -> Option<CatchUpInfo> {
        (s != Default::default()).then_some(CatchUpInfo {
            requested: s.requested,
            pulled_blocks: s.pulled_blocks,
            other_type_messages: s.other_type,
            non_member_messages: s.non_member,
            claims_followed: s.claimed,
            claims_ignored: s.claims_ignored,
        })
    }
}

/// Swap pauses, in microseconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwapPauses {
    /// Swaps counted.
    pub count: usize,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Longest.
    pub max: u64,
    /// The last swap's.
    pub last: u64,
}

impl SwapPauses {
    fn of(pauses: Vec<u64>) -> Option<SwapPauses> {
        let last = *pauses.last()?;
        let mut v = pauses;
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some(SwapPauses { count: v.len(), p50: at(0.5), p99: at(0.99), max: at(1.0), last })
    }
}

/// A clustered chain's view of its cluster, as its plugin reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    /// This node's member id.
    pub self_id: u64,
    /// The leader's id (0: none known).
    pub leader: u64,
    /// Whether this node leads.
    pub is_leader: bool,
    /// Members this node hears from.
    pub active_nodes: Vec<u64>,
    /// Times a new leader was reported since the chain started.
    pub leader_changes: u64,
}

/// How long a Broadcast waits for room in the queue of forwarded
/// envelopes (Fabric's General.Cluster.RPCTimeout default).
const FORWARD_WAIT: std::time::Duration = std::time::Duration::from_secs(7);

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// The data directory layout of a channel's ledger.
pub fn channel_dir(data_dir: &Path, channel: &str) -> PathBuf {
    chains_dir(data_dir).join(channel)
}

/// Where a node keeps its channels' ledgers: `<data>/chains/`.
pub fn chains_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("chains")
}
