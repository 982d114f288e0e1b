//! How a clustered chain reaches the other consenters: its
//! [`ClusterSink`] over the node's cluster [`Transport`] (messages and
//! forwarded envelopes, never blocking the chain's thread) and the
//! [`BlockPuller`] (catch-up: verified blocks come back to the chain's
//! actor as [`ClusterEvent::Pulled`], then [`ClusterEvent::CaughtUp`]).
//! May touch the transport, the puller and the chain's event queue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;

use super::{ChainStatus, ClusterEvent};
use crate::channel::Consenter;
use crate::cluster::puller::{BlockPuller, PullerConfig};
use crate::cluster::verify::BlockVerifier;
use crate::cluster::{ClientIdentity, Member, Transport};
use crate::runtime::cluster::ClusterSink;
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
    /// The running catch-up's target (it reads it as it goes).
    target: Arc<AtomicU64>,
    pulling: Arc<AtomicBool>,
}

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
            target: Arc::new(AtomicU64::new(0)),
            pulling: Arc::new(AtomicBool::new(false)),
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
        self.target.fetch_max(target, Ordering::SeqCst);
        if self.pulling.swap(true, Ordering::SeqCst) {
            return Ok(()); // the running catch-up pulls to the new target
        }
        let config = self.status.config().ok_or("the chain has no config yet")?;
        let endpoints = self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let tls = self.cluster.identity.with_roots(&config.orderer_tls_cas);
        let cfg = PullerConfig::new(&self.channel, endpoints, tls, self.signer.clone());
        let (events, target, pulling, channel) =
            (self.events.clone(), self.target.clone(), self.pulling.clone(), self.channel.clone());
        self.cluster.runtime.spawn(async move {
            let mut puller = BlockPuller::new(cfg, BlockVerifier::new((*config).clone(), from, None));
            let mut next = from;
            let mut error = None;
            loop {
                let goal = target.load(Ordering::SeqCst);
                if next >= goal {
                    break;
                }
                let last = (next + PULL_CHUNK).min(goal) - 1;
                match puller.pull(next, last).await {
                    Ok(blocks) => {
                        next = last + 1;
                        let bytes = blocks.iter().map(|b| Bytes::from(b.encode_to_vec())).collect();
                        if events.send(ClusterEvent::Pulled(bytes)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(channel = %channel, from = next, error = %e, "catch-up: pulling blocks failed");
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
            pulling.store(false, Ordering::SeqCst);
            let _ = events.send(ClusterEvent::CaughtUp(error)).await;
        });
        Ok(())
    }
}
