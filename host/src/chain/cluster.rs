//! How a clustered chain reaches the other consenters: its
//! [`ClusterSink`] over the node's cluster [`Transport`] (messages and
//! forwarded envelopes, never blocking the chain's thread) and the
//! [`BlockPuller`] (catch-up: verified blocks come back to the chain's
//! actor as [`ClusterEvent::Pulled`], then [`ClusterEvent::CaughtUp`]);
//! catch-ups on a member's claim of a greater height are rate limited and
//! pull only blocks that exist. May touch the transport, the puller and
//! the chain's event queue.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;

use super::{ChainStatus, ClusterEvent};
use crate::channel::Consenter;
use crate::cluster::puller::{BlockPuller, PullerConfig};
use crate::cluster::verify::BlockVerifier;
use crate::cluster::{ClientIdentity, Member, Transport};
use crate::runtime::cluster::ClusterSink;
use crate::runtime::status::CatchUpCounters;
use crate::signer::Signer;

/// The node's side of the cluster, shared by its clustered chains.
#[derive(Clone)]
pub struct NodeCluster {
    /// The cluster transport.
    pub transport: Transport,
    /// The node's TLS client identity (its certificate finds it among a
    /// channel's consenters; the block puller presents it).
    pub identity: ClientIdentity,
    /// Where catch-up tasks run.
    pub runtime: tokio::runtime::Handle,
}

/// Blocks pulled per event handed to the chain.
const PULL_CHUNK: u64 = 64;

/// A clustered chain's sink.
pub struct ChainClusterSink {
    channel: String,
    /// The consensus type of the plugin instance this sink serves and its
    /// chain's ledger height (its messages say both).
    consensus_type: String,
    height: u64,
    cluster: NodeCluster,
    signer: Arc<Signer>,
    status: Arc<ChainStatus>,
    events: mpsc::Sender<ClusterEvent>,
    /// Endpoints of the other members (for pulling).
    peers: Arc<Mutex<Vec<String>>>,
    /// The running catch-up, if any (it reads its target as it goes).
    catch_up: Arc<Mutex<CatchUp>>,
}

/// A chain's catch-up, shared by its sink and the task pulling.
#[derive(Debug, Default)]
struct CatchUp {
    /// A task is pulling.
    running: bool,
    /// Where it stops (exclusive); reset when it ends.
    target: u64,
    /// It waits for blocks not yet written (the plugin asked for them).
    wait: bool,
    /// When a claim last started a catch-up.
    last_claim: Option<Instant>,
}

impl CatchUp {
    /// The catch-up ended: the next one starts afresh.
    fn end(&mut self) {
        (self.running, self.target, self.wait) = (false, 0, false);
    }
}

/// At most one catch-up per this interval is started on claims of a
/// greater height (each costs a Deliver call to the members).
const CLAIM_INTERVAL: Duration = Duration::from_secs(2);

impl ChainClusterSink {
    /// The sink of `channel`'s chain, whose actor takes `events`, for an
    /// instance of consensus type `consensus_type`.
    pub fn new(
        channel: &str,
        consensus_type: &str,
        cluster: NodeCluster,
        signer: Arc<Signer>,
        status: Arc<ChainStatus>,
        events: mpsc::Sender<ClusterEvent>,
    ) -> ChainClusterSink {
        ChainClusterSink {
            channel: channel.to_string(),
            consensus_type: consensus_type.to_string(),
            height: 0,
            cluster,
            signer,
            status,
            events,
            peers: Arc::default(),
            catch_up: Arc::default(),
        }
    }
}

impl ClusterSink for ChainClusterSink {
    fn set_members(&mut self, self_id: Option<u64>, members: &[(u64, Consenter)]) {
        let members: Vec<Member> = members
            .iter()
            .map(|(id, c)| Member {
                id: *id,
                endpoint: format!("{}:{}", c.host, c.port),
                server_tls_cert: c.server_tls_cert.clone(),
                client_tls_cert: c.client_tls_cert.clone(),
            })
            .collect();
        let me = self_id.unwrap_or(0);
        *self.peers.lock().unwrap_or_else(|p| p.into_inner()) =
            members.iter().filter(|m| m.id != me).map(|m| m.endpoint.clone()).collect();
        tracing::info!(channel = %self.channel, self_id = me, members = ?members.iter().map(|m| (m.id, m.endpoint.clone())).collect::<Vec<_>>(), "cluster members bound");
        if let Some(config) = self.status.config() {
            self.cluster.transport.set_channel_tls_cas(&self.channel, config.orderer_tls_cas.clone());
        }
        self.cluster.transport.set_members(&self.channel, me, members);
    }

    fn send(&mut self, to: u64, payload: Bytes) -> Result<(), String> {
        let (t, h) = (&self.consensus_type, self.height);
        self.cluster.transport.send_consensus_of_type(&self.channel, to, payload, t, h).map_err(|e| e.to_string())
    }

    fn set_height(&mut self, height: u64) {
        self.height = height;
    }

    fn forward(&mut self, to: u64, config_seq: u64, envelope: Bytes) -> Result<(), String> {
        self.cluster.transport.send_submit(&self.channel, to, config_seq, envelope).map_err(|e| e.to_string())
    }

    fn catch_up(&mut self, from: u64, target: u64) -> Result<(), String> {
        CatchUpCounters::add(&self.status.catch_up().requested, 1);
        self.start_catch_up(from, target, true)
    }

    fn catch_up_claimed(&mut self, from: u64, target: u64) -> Result<(), String> {
        let counters = self.status.catch_up();
        {
            let mut st = self.catch_up.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if st.running || st.last_claim.is_some_and(|t| now.duration_since(t) < CLAIM_INTERVAL) {
                CatchUpCounters::add(&counters.claims_ignored, 1);
                return Ok(());
            }
            st.last_claim = Some(now);
        }
        CatchUpCounters::add(&counters.claimed, 1);
        tracing::info!(channel = %self.channel, from, claimed = target, "catch-up: a member of another consensus type, or a certificate that is no member yet, claims a greater height; pulling the blocks that exist");
        self.start_catch_up(from, target, false)
    }
}

impl ChainClusterSink {
    /// Starts pulling `from..target`, or retargets the running catch-up.
    /// `wait`: blocks not yet written anywhere are waited for (the plugin
    /// asked); otherwise the pull stops at the first block no member has
    /// (an unproven claim of another type's member).
    fn start_catch_up(&mut self, from: u64, target: u64, wait: bool) -> Result<(), String> {
        {
            let mut st = self.catch_up.lock().unwrap_or_else(|p| p.into_inner());
            st.target = st.target.max(target);
            st.wait |= wait;
            if st.running {
                return Ok(()); // the running catch-up pulls to the new target
            }
            st.running = true;
        }
        let end = |st: &Mutex<CatchUp>| st.lock().unwrap_or_else(|p| p.into_inner()).end();
        let Some(config) = self.status.config() else {
            end(&self.catch_up);
            return Err("the chain has no config yet".into());
        };
        let endpoints = self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let tls = self.cluster.identity.with_roots(&config.orderer_tls_cas);
        let cfg = PullerConfig::new(&self.channel, endpoints, tls, self.signer.clone());
        let (events, state, channel, status) =
            (self.events.clone(), self.catch_up.clone(), self.channel.clone(), self.status.clone());
        self.cluster.runtime.spawn(async move {
            let mut puller = BlockPuller::new(cfg, BlockVerifier::new((*config).clone(), from, None));
            let mut next = from;
            let mut error = None;
            loop {
                let (goal, wait) = {
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    if next >= st.target {
                        st.end();
                        break;
                    }
                    (st.target, st.wait)
                };
                puller.set_wait(wait);
                let last = (next + PULL_CHUNK).min(goal) - 1;
                // Blocks verified before a failure are kept (and written).
                let mut blocks = Vec::new();
                let r = puller.pull_each(next, last, |b| blocks.push(Bytes::from(b.encode_to_vec()))).await;
                next += blocks.len() as u64;
                if !blocks.is_empty() {
                    CatchUpCounters::add(&status.catch_up().pulled_blocks, blocks.len() as u64);
                    if events.send(ClusterEvent::Pulled(blocks)).await.is_err() {
                        end(&state);
                        return;
                    }
                }
                if let Err(e) = r {
                    tracing::warn!(channel = %channel, from = next, error = %e, "catch-up: pulling blocks failed");
                    error = Some(e.to_string());
                    end(&state);
                    break;
                }
            }
            let _ = events.send(ClusterEvent::CaughtUp(error)).await;
        });
        Ok(())
    }
}
