//! The cluster transport: Fabric's `orderer.Cluster/Step` streams between
//! the consenters of a channel, for consensus plugins that talk to their
//! peers (raft). The chain code tells it each channel's members
//! ([`Transport::set_members`]) and sends ([`Transport::send_consensus`],
//! [`Transport::send_submit`]: never blocking; a full queue drops, and raft
//! resends); the node serves [`Transport::server`] on its gRPC port (or a
//! cluster port) and gets every authenticated inbound message through its
//! [`Inbound`]. Block catch-up over Deliver is [`puller`], with the block
//! checks of [`verify`].
//!
//! Streams: one TLS connection per remote endpoint (and server
//! certificate), shared by every channel, carrying one Step stream per
//! (channel, member), each with its own bounded queue. Fabric does the
//! same (one gRPC connection per remote node, streams per channel): a
//! busy or stuck channel cannot delay another's messages (HTTP/2 flow
//! control is per stream), a membership change of one channel touches
//! only its own streams, and the connection costs one TLS handshake per
//! remote node whatever the number of channels.
//!
//! Layout: [`identity`] (the TLS client identity, member pinning,
//! limits), `outbound` (per-member workers, shared connections,
//! reconnection), `inbound` (the service: authentication and refusals),
//! [`stats`] (counters and events), [`verify`], [`puller`].

pub mod identity;
mod inbound;
mod outbound;
pub mod puller;
pub mod stats;
pub mod verify;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use prost::Message;

pub use identity::{ClientIdentity, FRAME_MARGIN, TransportLimits};
pub use inbound::ClusterService;
pub use stats::{ChannelStats, PeerStats, Refusal, TransportEvent, TransportStats};

use crate::proto::common::Envelope;
use crate::proto::orderer::cluster_server::ClusterServer;
use crate::proto::orderer::step_request::Payload as Req;
use crate::proto::orderer::{ConsensusRequest, StepRequest, SubmitRequest};
use outbound::{ConnPool, Peer, PeerCtx};
use stats::{Events, PeerCounters, RefusalCounters};

/// A consenter of a channel as the transport knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its id in the channel (etcdraft's consenter id).
    pub id: u64,
    /// Where its cluster service listens: `host:port`.
    pub endpoint: String,
    /// Its TLS server certificate (PEM), as in etcdraft.Consenter.
    pub server_tls_cert: Vec<u8>,
    /// Its TLS client certificate (PEM): how its messages are recognised.
    pub client_tls_cert: Vec<u8>,
}

/// What the transport hands to the node for authenticated inbound
/// messages. Called on the transport's tasks, one stream's messages in
/// order: an implementation must not block (hand the message off).
pub trait Inbound: Send + Sync + 'static {
    /// A consensus message (e.g. a raft message) from member `from`.
    fn consensus(&self, channel: &str, from: u64, payload: Bytes);
    /// [`Inbound::consensus`], with the consensus type of the plugin that
    /// sent it ("" when the sender did not say: a Fabric orderer) and the
    /// sender's ledger height. The default ignores both.
    fn consensus_of_type(&self, channel: &str, from: u64, payload: Bytes, consensus_type: &str, height: u64) {
        let _ = (consensus_type, height);
        self.consensus(channel, from, payload);
    }
    /// A consensus message of `channel` from a TLS certificate that is no
    /// bound member of it (refused), sent at the sender's ledger height
    /// `height`: a consenter added by a config block this node has not
    /// written yet is one. The default ignores it.
    fn non_member(&self, channel: &str, height: u64) {
        let _ = (channel, height);
    }
    /// An envelope forwarded by member `from` (a marshalled
    /// common.Envelope), validated there under config sequence
    /// `last_validation_seq`.
    fn submit(&self, channel: &str, from: u64, last_validation_seq: u64, envelope: Bytes);
}

/// Why a send was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No such channel, no such member, or the member is this node.
    #[error("member {id} of channel {channel} is unknown to the transport")]
    UnknownMember {
        /// The channel.
        channel: String,
        /// The member.
        id: u64,
    },
    /// The member's queue is full (it is slow or unreachable); the message
    /// was dropped and counted.
    #[error("the queue to member {id} of channel {channel} is full ({depth} messages): message dropped")]
    QueueFull {
        /// The channel.
        channel: String,
        /// The member.
        id: u64,
        /// The queue's depth.
        depth: usize,
    },
    /// The payload is over the transport's max_message_bytes.
    #[error("message of {size} bytes is over the cluster limit of {max} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The envelope given to send_submit is not a common.Envelope.
    #[error("the envelope to submit is not a common.Envelope: {0}")]
    Malformed(String),
}

/// The cluster transport (cheap to clone; every clone is the same
/// transport). Dropping the last clone stops its workers.
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
}

/// Where the transport's tasks run: the multi-threaded runtime that
/// created it, or a runtime of its own (shut down with the transport).
struct Rt {
    handle: tokio::runtime::Handle,
    owned: Option<tokio::runtime::Runtime>,
}

impl Rt {
    fn new() -> Rt {
        if let Ok(h) = tokio::runtime::Handle::try_current()
            && h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        {
            return Rt { handle: h, owned: None };
        }
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cluster-transport")
            .enable_all()
            .build()
            .or_else(|e| {
                tracing::error!(error = %e, "cluster: cannot start the transport's threads; using one");
                tokio::runtime::Builder::new_current_thread().enable_all().build()
            });
        match built {
            Ok(r) => Rt { handle: r.handle().clone(), owned: Some(r) },
            // Not even an event loop: the machine is out of resources.
            Err(e) => panic!("cluster: cannot create the transport's runtime: {e}"),
        }
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(r) = self.owned.take() {
            // Never blocks, even when dropped inside another runtime.
            r.shutdown_background();
        }
    }
}

/// What every clone and the service share.
pub(crate) struct Shared {
    pub(crate) limits: TransportLimits,
    table: RwLock<Table>,
    pool: Arc<ConnPool>,
    pub(crate) refusals: RefusalCounters,
    pub(crate) events: Events,
    /// Told when a member's queue of submits drains below its high water.
    drained: Arc<tokio::sync::Notify>,
    // Last: the runtime goes after the workers (dropped with the table).
    rt: Rt,
}

#[derive(Default)]
struct Table {
    channels: HashMap<String, ChannelEntry>,
}

struct ChannelEntry {
    self_id: u64,
    members: HashMap<u64, MemberEntry>,
    refused: Arc<AtomicU64>,
}

struct MemberEntry {
    member: Member,
    /// The client certificate, DER (None if its PEM does not parse).
    client_der: Option<Vec<u8>>,
    counters: Arc<PeerCounters>,
    /// The sending side (None for this node, or a member whose server
    /// certificate does not parse).
    outbound: Option<Peer>,
}

fn first_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    crate::tls::certs_from_pem("certificate", std::path::Path::new("(member)"), pem)
        .map(|mut c| c.swap_remove(0).to_vec())
        .map_err(|e| e.to_string())
}

impl Transport {
    /// A transport presenting `tls` to the members it connects to. Its
    /// tasks run on the current Tokio runtime if that is multi-threaded,
    /// else on a runtime of its own (two worker threads).
    pub fn new(tls: ClientIdentity, limits: TransportLimits) -> Transport {
        let rt = Rt::new();
        Transport {
            shared: Arc::new(Shared {
                limits,
                table: RwLock::new(Table::default()),
                pool: Arc::new(ConnPool::new(tls)),
                refusals: RefusalCounters::default(),
                events: Events::new(),
                drained: Arc::default(),
                rt,
            }),
        }
    }

    /// Replaces `channel`'s members (this node is `self_id`; it may be in
    /// `members`, and is never dialed). Members whose endpoint and
    /// certificates are unchanged keep their stream, queue and counters;
    /// streams to removed members end (and a connection no channel uses
    /// any more closes).
    pub fn set_members(&self, channel: &str, self_id: u64, members: Vec<Member>) {
        let mut table = self.shared.table.write().unwrap_or_else(|p| p.into_inner());
        let old = table.channels.remove(channel);
        let (mut old_members, refused) = match old {
            Some(o) => (o.members, o.refused),
            None => (HashMap::new(), Arc::default()),
        };
        let mut next = HashMap::with_capacity(members.len());
        for m in members {
            if next.contains_key(&m.id) {
                tracing::warn!(channel, id = m.id, "cluster: member id given twice; the last one counts");
            }
            let kept = old_members.remove(&m.id).filter(|e| e.member == m && (m.id == self_id) == e.outbound.is_none());
            let entry = match kept {
                Some(e) => e,
                None => self.entry(channel, self_id, m),
            };
            next.insert(entry.member.id, entry);
        }
        table.channels.insert(channel.to_string(), ChannelEntry { self_id, members: next, refused });
        drop(table);
        // Queues of removed members went with them: waiters look again.
        self.shared.drained.notify_waiters();
        // `old_members` (the removed ones) drop here: their workers stop.
    }

    fn entry(&self, channel: &str, self_id: u64, m: Member) -> MemberEntry {
        let client_der = match first_der(&m.client_tls_cert) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(channel, id = m.id, error = %e, "cluster: member's client_tls_cert does not parse; its messages will be refused");
                None
            }
        };
        let counters = Arc::new(PeerCounters::default());
        let outbound = if m.id == self_id {
            None
        } else {
            match first_der(&m.server_tls_cert) {
                Ok(server_der) => Some(outbound::spawn(
                    &self.shared.rt.handle,
                    PeerCtx {
                        channel: channel.to_string(),
                        id: m.id,
                        endpoint: m.endpoint.clone(),
                        server_der,
                        counters: counters.clone(),
                        pool: self.shared.pool.clone(),
                        events: self.shared.events.clone(),
                        limits: self.shared.limits,
                        drained: self.shared.drained.clone(),
                    },
                )),
                Err(e) => {
                    tracing::warn!(channel, id = m.id, error = %e, "cluster: member's server_tls_cert does not parse; it cannot be reached");
                    None
                }
            }
        };
        MemberEntry { member: m, client_der, counters, outbound }
    }

    /// Trusts `cas` (DER: the TLS CAs of `channel`'s orderer
    /// organizations, from its config) for members' server certificates,
    /// besides the node's own root CAs, as Fabric's cluster does; from the
    /// next connection dialed.
    pub fn set_channel_tls_cas(&self, channel: &str, cas: Vec<Vec<u8>>) {
        self.shared.pool.set_channel_cas(channel, Some(cas));
    }

    /// Forgets a channel: its streams end.
    pub fn remove_channel(&self, channel: &str) {
        self.shared.pool.set_channel_cas(channel, None);
        let removed = self.shared.table.write().unwrap_or_else(|p| p.into_inner()).channels.remove(channel);
        drop(removed);
    }

    /// Queues a consensus message to member `to` (never blocks).
    pub fn send_consensus(&self, channel: &str, to: u64, payload: Bytes) -> Result<(), SendError> {
        self.send_consensus_of_type(channel, to, payload, "", 0)
    }

    /// [`Transport::send_consensus`], saying which consensus type's plugin
    /// sent it and the sender's ledger height (the receiving host drops it
    /// if its chain runs another type by then, after a live swap between
    /// two types of one wire protocol, and catches up if it is behind).
    pub fn send_consensus_of_type(
        &self,
        channel: &str,
        to: u64,
        payload: Bytes,
        consensus_type: &str,
        height: u64,
    ) -> Result<(), SendError> {
        self.check_size(payload.len())?;
        let req = Req::ConsensusRequest(ConsensusRequest {
            channel: channel.to_string(),
            payload,
            metadata: Bytes::new(),
            consensus_type: consensus_type.to_string(),
            height,
        });
        self.enqueue(channel, to, StepRequest { payload: Some(req) })
    }

    /// Queues an envelope (a marshalled common.Envelope) for member `to`
    /// to order, validated here under `last_validation_seq` (never
    /// blocks).
    pub fn send_submit(
        &self,
        channel: &str,
        to: u64,
        last_validation_seq: u64,
        envelope: Bytes,
    ) -> Result<(), SendError> {
        self.check_size(envelope.len())?;
        let env = Envelope::decode(envelope).map_err(|e| SendError::Malformed(e.to_string()))?;
        let req =
            Req::SubmitRequest(SubmitRequest { channel: channel.to_string(), last_validation_seq, payload: Some(env) });
        self.enqueue(channel, to, StepRequest { payload: Some(req) })
    }

    /// Waits until no member's queue of forwarded envelopes of `channel`
    /// is half full, for at most `max_wait`; whether there is room. A
    /// follower's Broadcast awaits this before handing an envelope to its
    /// chain, so clients that send faster than the leader orders are slowed
    /// down over their streams (as Fabric's followers block on forwarding)
    /// instead of being answered SERVICE_UNAVAILABLE when the queue is
    /// full. Immediate when the channel has no cluster members.
    pub async fn submit_room(&self, channel: &str, max_wait: std::time::Duration) -> bool {
        let high = outbound::submit_high_water(&self.shared.limits);
        let full = || {
            let table = self.shared.table.read().unwrap_or_else(|p| p.into_inner());
            table.channels.get(channel).is_some_and(|c| {
                c.members.values().filter_map(|m| m.outbound.as_ref()).any(|p| p.queued.submits.load(Relaxed) >= high)
            })
        };
        if !full() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let notified = self.shared.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !full() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !full();
            }
        }
    }

    fn check_size(&self, size: usize) -> Result<(), SendError> {
        let max = self.shared.limits.max_message_bytes;
        if size > max {
            return Err(SendError::TooLarge { size, max });
        }
        Ok(())
    }

    fn enqueue(&self, channel: &str, to: u64, req: StepRequest) -> Result<(), SendError> {
        let table = self.shared.table.read().unwrap_or_else(|p| p.into_inner());
        let unknown = || SendError::UnknownMember { channel: channel.to_string(), id: to };
        let entry = table.channels.get(channel).and_then(|c| c.members.get(&to)).ok_or_else(unknown)?;
        let peer = entry.outbound.as_ref().ok_or_else(unknown)?;
        let consensus = outbound::is_consensus(&req);
        let depth = self.shared.limits.queue_depth.max(1);
        let counter = if consensus { &peer.queued.consensus } else { &peer.queued.submits };
        let room = counter.fetch_add(1, Relaxed) < depth || !consensus;
        let sent = room && peer.tx.try_send(req).is_ok();
        if !sent {
            counter.fetch_sub(1, Relaxed);
        }
        match sent {
            true => Ok(()),
            false => {
                entry.counters.dropped.fetch_add(1, Relaxed);
                Err(SendError::QueueFull {
                    channel: channel.to_string(),
                    id: to,
                    depth: self.shared.limits.queue_depth.max(1),
                })
            }
        }
    }

    /// The `orderer.Cluster` service to add to a tonic router whose
    /// listener speaks TLS (the sender is its client certificate).
    pub fn server(&self, inbound: Arc<dyn Inbound>) -> ClusterServer<ClusterService> {
        let limit = self.shared.limits.max_message_bytes.saturating_add(FRAME_MARGIN);
        ClusterServer::new(ClusterService { shared: self.shared.clone(), inbound })
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    /// The counters now.
    pub fn stats(&self) -> TransportStats {
        let table = self.shared.table.read().unwrap_or_else(|p| p.into_inner());
        let channels = table
            .channels
            .iter()
            .map(|(name, c)| {
                let peers = c
                    .members
                    .values()
                    .filter(|m| m.member.id != c.self_id)
                    .map(|m| (m.member.id, PeerStats::of(&m.member.endpoint, &m.counters)))
                    .collect();
                (name.clone(), ChannelStats { self_id: c.self_id, peers, refused: c.refused.load(Relaxed) })
            })
            .collect();
        TransportStats { channels, refused: self.shared.refusals.snapshot() }
    }

    /// Connections made and lost, refusals: a receiver of what happens
    /// from now on (a receiver that lags loses the oldest events).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<TransportEvent> {
        self.shared.events.subscribe()
    }
}

impl Shared {
    /// The member of `channel` whose client certificate is `cert` (DER).
    pub(crate) fn authenticate(&self, channel: &str, cert: Option<&[u8]>) -> Result<(u64, Arc<PeerCounters>), Refusal> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let c = table.channels.get(channel).ok_or(Refusal::UnknownChannel)?;
        let refused = |r| {
            c.refused.fetch_add(1, Relaxed);
            r
        };
        let cert = cert.ok_or_else(|| refused(Refusal::NoCertificate))?;
        c.members
            .values()
            .find(|m| m.client_der.as_deref() == Some(cert))
            .map(|m| (m.member.id, m.counters.clone()))
            .ok_or_else(|| refused(Refusal::NotMember))
    }
}
