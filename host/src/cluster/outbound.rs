//! The sending side: one worker task per (channel, member) drains that
//! member's bounded queue into an `orderer.Cluster/Step` stream, over one
//! TLS connection per remote endpoint shared by every channel (the
//! [`ConnPool`]). A connection is made eagerly (TCP, TLS with the
//! member's pinned server certificate, the server's first HTTP/2 bytes),
//! so "connected" means it really is; when the stream or the connection
//! fails the worker pauses (exponential backoff, capped) and dials again.
//! The queue is only read while a stream is up, so a member that cannot
//! be reached fills its queue and further sends are dropped (raft
//! resends). May touch the network only.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::identity::{ClientIdentity, FRAME_MARGIN, TransportLimits};
use super::stats::{Events, PeerCounters, TransportEvent};
use crate::proto::orderer::StepRequest;
use crate::proto::orderer::cluster_client::ClusterClient;
use crate::proto::orderer::step_response::Payload as Resp;
use crate::tls::dial::{self, ClientTls};

/// Messages between the worker and its stream (lost if the stream fails).
const STREAM_BUFFER: usize = 16;

/// One endpoint's connection, shared by the workers of every channel that
/// has a member there with that server certificate.
type Slot = Arc<tokio::sync::Mutex<Weak<Channel>>>;

/// The shared connections, by (endpoint, server certificate DER). A
/// connection closes when the last worker using it lets it go.
pub(crate) struct ConnPool {
    identity: ClientIdentity,
    slots: Mutex<HashMap<(String, Vec<u8>), Slot>>,
    /// Per channel, the TLS CAs (DER) of its orderer organizations: a
    /// member's server certificate may chain to any of them, or to the
    /// node's own roots (Fabric's cluster trusts every channel's).
    channel_cas: Mutex<HashMap<String, Vec<Vec<u8>>>>,
}

impl ConnPool {
    pub fn new(identity: ClientIdentity) -> ConnPool {
        ConnPool { identity, slots: Mutex::new(HashMap::new()), channel_cas: Mutex::new(HashMap::new()) }
    }

    /// Sets (or with `None` forgets) `channel`'s orderer organizations'
    /// TLS CAs, trusted from the next connection dialed.
    pub fn set_channel_cas(&self, channel: &str, cas: Option<Vec<Vec<u8>>>) {
        let mut all = self.channel_cas.lock().unwrap_or_else(|p| p.into_inner());
        match cas {
            Some(c) => all.insert(channel.to_string(), c),
            None => all.remove(channel),
        };
    }

    /// The identity with every channel's TLS CAs trusted too.
    fn identity_now(&self) -> ClientIdentity {
        let all = self.channel_cas.lock().unwrap_or_else(|p| p.into_inner());
        let mut cas: Vec<Vec<u8>> = Vec::new();
        for der in all.values().flatten() {
            if !cas.contains(der) {
                cas.push(der.clone());
            }
        }
        self.identity.with_roots(&cas)
    }

    fn slot(&self, endpoint: &str, server_der: &[u8]) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Forget endpoints nobody uses any more.
        slots.retain(|_, s| Arc::strong_count(s) > 1 || s.try_lock().map(|w| w.strong_count() > 0).unwrap_or(true));
        slots.entry((endpoint.to_string(), server_der.to_vec())).or_default().clone()
    }

    /// The live connection to `endpoint`, or a new one (dialed now; the
    /// other workers of that endpoint wait for it rather than dialing
    /// too). `failed` is a connection the caller saw fail: it is not
    /// handed out again.
    pub async fn get(
        &self,
        endpoint: &str,
        server_der: &[u8],
        failed: Option<&Arc<Channel>>,
    ) -> Result<Arc<Channel>, String> {
        let slot = self.slot(endpoint, server_der);
        let mut current = slot.lock().await;
        if let Some(c) = current.upgrade()
            && !failed.is_some_and(|f| Arc::ptr_eq(f, &c))
        {
            return Ok(c);
        }
        let spki = crate::tls::public_key_info(server_der).map_err(|e| format!("the member's server_tls_cert: {e}"))?;
        let config = self.identity_now().client_config(Some(spki)).map_err(|e| e.to_string())?;
        let channel =
            dial::connect(endpoint, Some(ClientTls { config, server_name: None })).await.map_err(|e| e.to_string())?;
        let c = Arc::new(channel);
        *current = Arc::downgrade(&c);
        Ok(c)
    }
}

/// A member's queue; dropping it stops the worker (its stream ends, and
/// the connection closes if no other channel uses it).
pub(crate) struct Peer {
    pub tx: mpsc::Sender<StepRequest>,
    /// What is queued now.
    pub queued: Arc<Queued>,
    task: tokio::task::AbortHandle,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a member's queue holds now.
#[derive(Debug, Default)]
pub(crate) struct Queued {
    /// Consensus messages (at most `queue_depth`; the rest of the queue's
    /// room is for forwarded envelopes).
    pub consensus: std::sync::atomic::AtomicUsize,
    /// Forwarded envelopes (submits).
    pub submits: std::sync::atomic::AtomicUsize,
}

/// What a worker works for.
pub(crate) struct PeerCtx {
    pub channel: String,
    pub id: u64,
    pub endpoint: String,
    pub server_der: Vec<u8>,
    pub counters: Arc<PeerCounters>,
    pub pool: Arc<ConnPool>,
    pub events: Events,
    pub limits: TransportLimits,
    /// Told when a queue of submits drains below half its depth
    /// ([`super::Transport::submit_room`] waits for it).
    pub drained: Arc<tokio::sync::Notify>,
}

/// Starts a member's worker on `rt`.
pub(crate) fn spawn(rt: &tokio::runtime::Handle, ctx: PeerCtx) -> Peer {
    let (tx, rx) = mpsc::channel(ctx.limits.queue_depth.max(1) + ctx.limits.submit_queue_depth);
    let queued = Arc::new(Queued::default());
    let task = rt.spawn(run(ctx, rx, queued.clone()));
    Peer { tx, queued, task: task.abort_handle() }
}

/// How many submits queued to one member make a follower's Broadcast
/// wait ([`super::Transport::submit_room`]): half the submit queue.
pub(crate) fn submit_high_water(limits: &TransportLimits) -> usize {
    (limits.submit_queue_depth / 2).max(1)
}

/// Whether a queued request is a consensus message (counted against
/// `queue_depth`).
pub(crate) fn is_consensus(r: &StepRequest) -> bool {
    matches!(r.payload, Some(crate::proto::orderer::step_request::Payload::ConsensusRequest(_)))
}

/// How one connection attempt ended.
enum Ended {
    /// The queue's sender is gone: the member was removed.
    Removed,
    /// The attempt or the stream failed; `was_up`: the stream had lived
    /// long enough (the longest backoff) to count as a working connection,
    /// so the backoff starts over.
    Failed { reason: String, connection: Option<Arc<Channel>>, was_up: bool },
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), String>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run(ctx: PeerCtx, mut rx: mpsc::Receiver<StepRequest>, queued: Arc<Queued>) {
    let mut backoff = ctx.limits.backoff_initial;
    let mut failed: Option<Arc<Channel>> = None;
    let mut quiet = false;
    loop {
        match attempt(&ctx, &mut rx, &queued, failed.take()).await {
            Ended::Removed => return,
            Ended::Failed { reason, connection, was_up } => {
                ctx.counters.connected.store(false, Relaxed);
                if was_up {
                    backoff = ctx.limits.backoff_initial;
                    quiet = false;
                }
                if quiet {
                    tracing::debug!(channel = %ctx.channel, peer = ctx.id, endpoint = %ctx.endpoint, %reason, ?backoff, "cluster: still cannot reach member");
                } else {
                    tracing::warn!(channel = %ctx.channel, peer = ctx.id, endpoint = %ctx.endpoint, %reason, ?backoff, "cluster: member unreachable; retrying");
                    quiet = true;
                }
                ctx.events.send(TransportEvent::Disconnected { channel: ctx.channel.clone(), peer: ctx.id, reason });
                failed = connection;
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2).min(ctx.limits.backoff_max.max(ctx.limits.backoff_initial));
            }
        }
    }
}

async fn attempt(
    ctx: &PeerCtx,
    rx: &mut mpsc::Receiver<StepRequest>,
    queued: &Queued,
    failed: Option<Arc<Channel>>,
) -> Ended {
    let conn = match ctx.pool.get(&ctx.endpoint, &ctx.server_der, failed.as_ref()).await {
        Ok(c) => c,
        Err(reason) => return Ended::Failed { reason, connection: None, was_up: false },
    };
    drop(failed);
    let (tx, stream_rx) = mpsc::channel(STREAM_BUFFER);
    let limit = ctx.limits.max_message_bytes.saturating_add(FRAME_MARGIN);
    let client = ClusterClient::new((*conn).clone()).max_encoding_message_size(limit).max_decoding_message_size(limit);
    let call = AbortOnDrop(tokio::spawn(call(client, ReceiverStream::new(stream_rx), responder(ctx))));
    ctx.counters.connected.store(true, Relaxed);
    ctx.counters.connections.fetch_add(1, Relaxed);
    ctx.events.send(TransportEvent::Connected { channel: ctx.channel.clone(), peer: ctx.id });
    tracing::debug!(channel = %ctx.channel, peer = ctx.id, endpoint = %ctx.endpoint, "cluster: stream to member open");
    let opened = std::time::Instant::now();
    let lived = || opened.elapsed() >= ctx.limits.backoff_max;
    let mut call = call;
    loop {
        tokio::select! {
            r = &mut call.0 => {
                let reason = match r {
                    Ok(Ok(())) => "the member ended the stream".to_string(),
                    Ok(Err(e)) => e,
                    Err(e) => format!("stream task: {e}"),
                };
                return Ended::Failed { reason, connection: Some(conn), was_up: lived() };
            }
            m = rx.recv() => match m {
                None => return Ended::Removed,
                Some(m) => {
                    if is_consensus(&m) {
                        queued.consensus.fetch_sub(1, Relaxed);
                    } else if queued.submits.fetch_sub(1, Relaxed) == submit_high_water(&ctx.limits) {
                        ctx.drained.notify_waiters();
                    }
                    // Counted first: the receiver may have it before this
                    // task runs again.
                    ctx.counters.sent.fetch_add(1, Relaxed);
                    if tx.send(m).await.is_err() {
                        ctx.counters.sent.fetch_sub(1, Relaxed);
                        let reason = match (&mut call.0).await {
                            Ok(Err(e)) => e,
                            _ => "the stream ended".to_string(),
                        };
                        return Ended::Failed { reason, connection: Some(conn), was_up: lived() };
                    }
                }
            }
        }
    }
}

/// What a refused submit coming back is told to.
struct Responder {
    channel: String,
    id: u64,
    counters: Arc<PeerCounters>,
    events: Events,
}

fn responder(ctx: &PeerCtx) -> Responder {
    Responder { channel: ctx.channel.clone(), id: ctx.id, counters: ctx.counters.clone(), events: ctx.events.clone() }
}

/// The Step call: sends what the worker hands it; reads what comes back
/// (SubmitResponses, for refused submits only). Ends with the reason the
/// stream ended.
async fn call(
    mut client: ClusterClient<Channel>,
    requests: ReceiverStream<StepRequest>,
    r: Responder,
) -> Result<(), String> {
    let resp = client.step(requests).await.map_err(|s| status_text(&s))?;
    let mut responses = resp.into_inner();
    loop {
        match responses.message().await {
            Ok(Some(m)) => {
                if let Some(Resp::SubmitRes(s)) = m.payload {
                    r.counters.refused_by_peer.fetch_add(1, Relaxed);
                    tracing::warn!(channel = %s.channel, peer = r.id, status = s.status, info = %s.info, "cluster: member refused a submit");
                    r.events.send(TransportEvent::RefusedByPeer {
                        channel: if s.channel.is_empty() { r.channel.clone() } else { s.channel },
                        peer: r.id,
                        status: s.status,
                        info: s.info,
                    });
                }
            }
            Ok(None) => return Ok(()),
            Err(s) => return Err(status_text(&s)),
        }
    }
}

fn status_text(s: &tonic::Status) -> String {
    dial::error_chain(s)
}
