//! Fabric's `orderer.AtomicBroadcast` gRPC service (tonic): Broadcast hands
//! each envelope to its channel's chain and answers in order; Deliver
//! streams blocks from the ledger per SeekInfo. May touch the node's chains
//! and ledgers only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::chain::{Chain, EnqueueError};
use crate::channel::{ChannelConfig, READERS};
use crate::envelope::{Envelope, MessageClass};
use crate::metrics::{BroadcastMetrics, BroadcastOutcome, DeliverMetrics};
use crate::node::Node;
use crate::processor::{self, Refusal};
use crate::proto::common::{self, Block, HeaderType, Payload};
use crate::proto::orderer::atomic_broadcast_server::{AtomicBroadcast, AtomicBroadcastServer};
use crate::proto::orderer::seek_info::{SeekBehavior, SeekErrorResponse};
use crate::proto::orderer::seek_position::Type as Pos;
use crate::proto::orderer::{BroadcastResponse, DeliverResponse, SeekInfo, deliver_response};

/// Room above AbsoluteMaxBytes for the envelope's own framing (Fabric
/// counts payload + signature; the gRPC message is the whole Envelope).
pub const MESSAGE_MARGIN: usize = 1024 * 1024;

/// Fabric's default AbsoluteMaxBytes, used when the node has no channel.
const DEFAULT_ABSOLUTE_MAX: usize = 10 * 1024 * 1024;

/// The AtomicBroadcast service over a node.
pub struct Service {
    node: Arc<Node>,
    /// Client certificates are required (General.TLS.ClientAuthRequired):
    /// every Deliver request must be bound to the client's certificate.
    mutual_tls: bool,
}

impl Service {
    /// The tonic server for `node`. The largest message accepted is the
    /// largest AbsoluteMaxBytes of the node's channels plus a margin for
    /// the envelope's framing (larger frames are refused by gRPC before they
    /// are buffered; smaller ones over a channel's own limit get
    /// BAD_REQUEST with the sizes). Blocks sent by Deliver are not capped.
    /// With `mutual_tls` (the port requires client certificates) a Deliver
    /// request's channel header must carry the SHA-256 of the client's TLS
    /// certificate, as Fabric's orderer checks (BAD_REQUEST otherwise).
    pub fn server(node: Arc<Node>, mutual_tls: bool) -> AtomicBroadcastServer<Service> {
        let largest = node
            .channels()
            .iter()
            .filter_map(|c| node.chain(c))
            .map(|c| c.status().absolute_max_bytes() as usize)
            .max()
            .unwrap_or(DEFAULT_ABSOLUTE_MAX);
        AtomicBroadcastServer::new(Service { node, mutual_tls })
            .max_decoding_message_size(largest.saturating_add(MESSAGE_MARGIN))
            .max_encoding_message_size(usize::MAX)
    }
}

fn resp(status: common::Status, info: impl Into<String>) -> BroadcastResponse {
    BroadcastResponse { status: status as i32, info: info.into() }
}

/// Broadcast's answer for one envelope: now (a refusal), or later (the
/// plugin's answer, awaited in order by the stream's responder).
enum Answer {
    Now(BroadcastResponse),
    Later(Pin<Box<dyn Future<Output = Result<(), EnqueueError>> + Send>>),
}

/// An envelope that passed the checks, for its chain.
type Checked = Result<(Arc<Chain>, Envelope), BroadcastResponse>;

/// An envelope being checked: done already, or its signature check
/// running on another worker (results are taken in order; the check's
/// own end time comes with it, for `broadcast_validate_duration`).
enum Check {
    Done(Checked),
    Verifying(tokio::task::JoinHandle<(Checked, Instant)>),
}

/// Runs a check on another worker.
fn verifying(check: impl Future<Output = Checked> + Send + 'static) -> Check {
    Check::Verifying(tokio::spawn(async move {
        let r = check.await;
        (r, Instant::now())
    }))
}

/// What the metrics need of an envelope: its channel and header type (if
/// it parsed) and when its checks began.
struct Tag {
    channel: Arc<str>,
    header_type: Option<i32>,
    started: Instant,
}

/// An envelope's answer on its way to the responder, with what its
/// metrics need: its tag, how long its checks took and their status, and
/// when it was handed to its chain.
struct Pending {
    answer: Answer,
    tag: Tag,
    validate: (Duration, i32),
    enqueued: Option<Instant>,
}

fn refusal(r: Refusal) -> BroadcastResponse {
    match r {
        Refusal::BadRequest(m) => resp(common::Status::BadRequest, m),
        Refusal::Forbidden(m) => resp(common::Status::Forbidden, m),
        Refusal::Internal(m) => resp(common::Status::InternalServerError, m),
    }
}

/// Fabric's broadcast checks, in order: malformed, empty payload, unknown
/// channel, size, then the channel's policies. A normal message's
/// signature check (the costly part) is spawned so that the envelopes of
/// one stream are verified on all cores at once.
/// `last` is the stream's last channel name, shared by its envelopes' tags
/// (no allocation while a stream sends to one channel).
fn check_one(node: &Arc<Node>, pb: common::Envelope, last: &mut Option<Arc<str>>) -> (Check, Tag) {
    let started = Instant::now();
    let env = match Envelope::from_message(pb.clone()) {
        Ok(e) => e,
        Err(e) => {
            let tag = Tag { channel: Arc::from(""), header_type: None, started };
            return (Check::Done(Err(resp(common::Status::BadRequest, e.to_string()))), tag);
        }
    };
    let channel = match last {
        Some(l) if **l == *env.channel_id => l.clone(),
        _ => {
            let c: Arc<str> = Arc::from(env.channel_id.as_str());
            *last = Some(c.clone());
            c
        }
    };
    let tag = Tag { channel, header_type: Some(env.header_type), started };
    (check_parsed(node, pb, env), tag)
}

/// [`check_one`] after the envelope parsed.
fn check_parsed(node: &Arc<Node>, pb: common::Envelope, env: Envelope) -> Check {
    // Fabric's classification: a CONFIG (or ORDERER_TRANSACTION) envelope
    // is never taken from a client as is; config changes arrive as
    // CONFIG_UPDATE and are checked against the modification policies.
    if env.class() == MessageClass::Config {
        return Check::Done(Err(resp(
            common::Status::BadRequest,
            format!(
                "message of type {} cannot be broadcast directly: send a CONFIG_UPDATE",
                common::HeaderType::try_from(env.header_type).map(|t| t.as_str_name()).unwrap_or("?")
            ),
        )));
    }
    let is_update = env.header_type == HeaderType::ConfigUpdate as i32;
    // Fabric's channel name rule, with its texts: a channel creation says
    // what Fabric's templator says, anything else is not a channel name.
    if let Err(e) = crate::configtx::validate_channel_id(&env.channel_id) {
        let info = if is_update && node.system_channel().is_some() {
            format!("initializing configtx manager failed: bad channel ID: {e}")
        } else {
            format!("invalid channel ID: {e}")
        };
        return Check::Done(Err(resp(common::Status::BadRequest, info)));
    }
    let chain = match node.chain(&env.channel_id) {
        Some(c) => c,
        None => {
            if let Some(reason) = node.broken(&env.channel_id) {
                return Check::Done(Err(resp(
                    common::Status::ServiceUnavailable,
                    format!("channel {} is not running: {reason}", env.channel_id),
                )));
            }
            if node.is_onboarding(&env.channel_id) {
                return Check::Done(Err(resp(
                    common::Status::ServiceUnavailable,
                    format!(
                        "channel {} is onboarding: its blocks are being pulled from its consenters",
                        env.channel_id
                    ),
                )));
            }
            // A CONFIG_UPDATE for an unknown channel creates it through the
            // system channel, if the node has one.
            match (is_update, node.system_channel()) {
                (true, Some(sys)) => sys,
                _ => return Check::Done(Err(resp(common::Status::NotFound, "channel does not exist"))),
            }
        }
    };
    let max = chain.status().absolute_max_bytes();
    if env.size > max {
        return Check::Done(Err(resp(
            common::Status::BadRequest,
            format!("message payload is {} bytes and exceeds maximum allowed {} bytes", env.size, max),
        )));
    }
    let Some(cfg) = chain.status().config() else {
        return Check::Done(Err(resp(common::Status::ServiceUnavailable, "channel is starting")));
    };
    if is_update {
        let node = node.clone();
        return verifying(async move {
            let types = node.plugin_names();
            let made = if chain.channel() == env.channel_id {
                processor::config_update_with_config(&cfg, node.signer(), &pb, &env, &types).and_then(|(e, new)| {
                    // A change of the consensus type is a live swap: the new
                    // plugin is checked before the update is ordered.
                    node.check_swap(&cfg, new).map_err(|reason| {
                        processor::Refusal::BadRequest(format!(
                            "error applying config update to existing channel '{}': {reason}",
                            cfg.channel_id
                        ))
                    })?;
                    Ok(e)
                })
            } else {
                processor::channel_creation(&cfg, node.signer(), &pb, &env, &types)
            };
            made.map(|e| (chain, e)).map_err(refusal)
        });
    }
    if cfg.consensus_state == processor::STATE_MAINTENANCE {
        // Fabric: only config updates while the channel is in maintenance.
        return Check::Done(Err(resp(common::Status::ServiceUnavailable, processor::MAINTENANCE_REFUSAL)));
    }
    let mut env = env;
    env.config_seq = cfg.sequence;
    if cfg.open_writers {
        return Check::Done(Ok((chain, env)));
    }
    verifying(async move {
        processor::check_writers(&cfg, &env).map_err(refusal)?;
        Ok((chain, env))
    })
}

fn enqueue_response(r: Result<(), EnqueueError>) -> BroadcastResponse {
    match r {
        Ok(()) => resp(common::Status::Success, ""),
        Err(e) => resp(common::Status::ServiceUnavailable, e.to_string()),
    }
}

/// Envelopes of one Broadcast stream in flight at once (answers stay in
/// order; the client waits when this many are unanswered).
const IN_FLIGHT: usize = 1024;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AtomicBroadcast for Service {
    type BroadcastStream = BoxStream<BroadcastResponse>;
    type DeliverStream = BoxStream<DeliverResponse>;

    async fn broadcast(
        &self,
        req: Request<Streaming<common::Envelope>>,
    ) -> Result<Response<Self::BroadcastStream>, Status> {
        let mut input = req.into_inner();
        let node = self.node.clone();
        let submit_node = self.node.clone();
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let (check_tx, mut check_rx) = mpsc::channel::<Result<(Check, Tag), Status>>(IN_FLIGHT);
        let (pending_tx, mut pending_rx) = mpsc::channel::<Result<Pending, Status>>(IN_FLIGHT);
        // Reader: parses and checks envelopes as they arrive (signature
        // checks run in parallel).
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let item = match input.message().await {
                    Ok(Some(m)) => Ok(check_one(&node, m, &mut last)),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let end = item.is_err();
                if check_tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        // Submitter: takes the checks in order and hands the envelopes that
        // passed to their chains, in order.
        tokio::spawn(async move {
            while let Some(item) = check_rx.recv().await {
                let checked = match item {
                    Ok((Check::Done(c), tag)) => Ok((c, Instant::now(), tag)),
                    Ok((Check::Verifying(h), tag)) => Ok(match h.await {
                        Ok((c, at)) => (c, at, tag),
                        Err(e) => {
                            let r = resp(common::Status::InternalServerError, format!("checking the envelope: {e}"));
                            (Err(r), Instant::now(), tag)
                        }
                    }),
                    Err(status) => Err(status),
                };
                let answer = checked.map(|(checked, validated, tag)| {
                    let took = validated.saturating_duration_since(tag.started);
                    (checked, took, tag)
                });
                let answer = match answer {
                    Ok((Ok((chain, env)), took, tag)) => {
                        let enqueued = tag.started + took;
                        submit_node.forward_room(chain.channel()).await;
                        let answer = match chain.submit(env).await {
                            Ok(answer) => Answer::Later(Box::pin(answer)),
                            Err(e) => Answer::Now(enqueue_response(Err(e))),
                        };
                        let validate = (took, common::Status::Success as i32);
                        Ok(Pending { answer, tag, validate, enqueued: Some(enqueued) })
                    }
                    Ok((Err(r), took, tag)) => {
                        let validate = (took, r.status);
                        Ok(Pending { answer: Answer::Now(r), tag, validate, enqueued: None })
                    }
                    Err(status) => Err(status),
                };
                let end = answer.is_err();
                if pending_tx.send(answer).await.is_err() || end {
                    return;
                }
            }
        });
        // Responder: one answer per envelope, in order.
        tokio::spawn(async move {
            let mut metrics = BroadcastMetrics::default();
            while let Some(item) = pending_rx.recv().await {
                let out = match item {
                    Ok(p) => {
                        let r = match p.answer {
                            Answer::Now(r) => r,
                            Answer::Later(f) => enqueue_response(f.await),
                        };
                        metrics.record(&BroadcastOutcome {
                            channel: &p.tag.channel,
                            header_type: p.tag.header_type,
                            validate: p.validate,
                            enqueue: p.enqueued.map(|t| t.elapsed()),
                            status: r.status,
                        });
                        Ok(r)
                    }
                    Err(status) => Err(status),
                };
                if tx.send(out).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn deliver(
        &self,
        req: Request<Streaming<common::Envelope>>,
    ) -> Result<Response<Self::DeliverStream>, Status> {
        // Fabric's mutual TLS binding: the hash of the certificate this
        // connection's client presented, when the port requires one.
        let binding = self.mutual_tls.then(|| {
            use sha2::Digest;
            req.peer_certs().and_then(|c| c.first().map(|c| sha2::Sha256::digest(c).to_vec()))
        });
        let mut input = req.into_inner();
        let node = self.node.clone();
        let (tx, rx) = mpsc::channel(16);
        crate::metrics::deliver_stream_opened();
        tokio::spawn(async move {
            /// Counts the stream closed however its task ends.
            struct Closed;
            impl Drop for Closed {
                fn drop(&mut self) {
                    crate::metrics::deliver_stream_closed();
                }
            }
            let _closed = Closed;
            loop {
                let msg = match input.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let status = deliver_one(&node, msg, binding.as_ref(), &tx).await;
                let Some(status) = status else { return };
                let r = DeliverResponse { r#type: Some(deliver_response::Type::Status(status as i32)) };
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A Deliver request parsed from its envelope: the channel and the
/// SeekInfo, or what is malformed (answered BAD_REQUEST).
pub fn parse_seek(pb: &common::Envelope) -> Result<(String, SeekInfo), String> {
    parse_seek_signed(pb, None).map(|(c, s, _)| (c, s))
}

/// [`parse_seek`], also returning the request's creator (signature
/// header), for the Readers policy. With `binding` (the port requires
/// client certificates: the hash of the one presented, if any), the
/// channel header must be bound to that certificate.
fn parse_seek_signed(
    pb: &common::Envelope,
    binding: Option<&Option<Vec<u8>>>,
) -> Result<(String, SeekInfo, bytes::Bytes), String> {
    if pb.payload.is_empty() {
        return Err("envelope has an empty payload".into());
    }
    let payload = Payload::decode(pb.payload.clone()).map_err(|e| format!("payload is not a common.Payload: {e}"))?;
    let header = payload.header.ok_or("payload has no header")?;
    let ch = common::ChannelHeader::decode(header.channel_header)
        .map_err(|e| format!("channel header is not a common.ChannelHeader: {e}"))?;
    if ch.r#type != HeaderType::DeliverSeekInfo as i32 {
        // Fabric accepts any type here, but only SeekInfo payloads are meaningful.
        tracing::debug!(header_type = ch.r#type, "deliver request with a non DELIVER_SEEK_INFO header type");
    }
    check_timestamp(ch.timestamp.as_ref(), std::time::SystemTime::now())?;
    if let Some(actual) = binding {
        check_binding(&ch.tls_cert_hash, actual.as_deref())?;
    }
    let seek = SeekInfo::decode(payload.data).map_err(|e| format!("payload data is not an orderer.SeekInfo: {e}"))?;
    let creator = common::SignatureHeader::decode(header.signature_header).map(|h| h.creator).unwrap_or_default();
    Ok((ch.channel_id, seek, creator))
}

/// Fabric's Deliver time window: a request's channel header timestamp
/// must be within this of the server's clock (replay protection).
pub const TIME_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);

fn check_timestamp(ts: Option<&prost_types::Timestamp>, now: std::time::SystemTime) -> Result<(), String> {
    let now = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let Some(ts) = ts else {
        return Err("channel header has no timestamp".into());
    };
    let skew = (now - ts.seconds).unsigned_abs();
    if skew > TIME_WINDOW.as_secs() {
        return Err(format!(
            "envelope timestamp {} is {skew} s apart from the server's time, more than the {} s window",
            ts.seconds,
            TIME_WINDOW.as_secs()
        ));
    }
    Ok(())
}

/// Fabric's mutual TLS binding of a Deliver request (`comm`'s
/// `mutualTLSBinding`): the channel header's `tls_cert_hash` must be the
/// SHA-256 of the TLS certificate the client presented.
fn check_binding(claimed: &[u8], actual: Option<&[u8]>) -> Result<(), String> {
    if claimed.is_empty() {
        return Err("client didn't include its TLS cert hash (the channel header's tls_cert_hash: this orderer \
                    requires client certificates and binds Deliver requests to them)"
            .into());
    }
    let Some(actual) = actual else {
        return Err("client didn't send a TLS certificate".into());
    };
    if claimed != actual {
        return Err(format!(
            "claimed TLS cert hash is {} but actual TLS cert hash is {}",
            crate::block::hex(claimed),
            crate::block::hex(actual)
        ));
    }
    Ok(())
}

/// Serves one SeekInfo request; returns the final status, or None if the
/// client went away.
async fn deliver_one(
    node: &Node,
    pb: common::Envelope,
    binding: Option<&Option<Vec<u8>>>,
    tx: &mpsc::Sender<Result<DeliverResponse, Status>>,
) -> Option<common::Status> {
    let (channel, seek, creator) = match parse_seek_signed(&pb, binding) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "malformed deliver request");
            return Some(common::Status::BadRequest);
        }
    };
    let metrics = DeliverMetrics::received(&channel);
    let status = deliver_seek(node, &pb, channel, seek, creator, tx, &metrics).await;
    if let Some(s) = status {
        metrics.completed(s as i32);
    }
    status
}

/// [`deliver_one`] after the request parsed.
async fn deliver_seek(
    node: &Node,
    pb: &common::Envelope,
    channel: String,
    seek: SeekInfo,
    creator: bytes::Bytes,
    tx: &mpsc::Sender<Result<DeliverResponse, Status>>,
    metrics: &DeliverMetrics,
) -> Option<common::Status> {
    if let Err(e) = crate::configtx::validate_channel_id(&channel) {
        tracing::warn!("deliver request refused: invalid channel ID: {e}");
        return Some(common::Status::BadRequest);
    }
    let Some(chain) = node.chain(&channel) else {
        return Some(if node.broken(&channel).is_some() {
            common::Status::ServiceUnavailable
        } else {
            common::Status::NotFound
        });
    };
    // Readers policy, on the request and again for each block whenever
    // the channel's config changed meanwhile.
    let readers = |cfg: &ChannelConfig| processor::authorize(cfg, READERS, &pb.payload, &creator, &pb.signature);
    let Some(mut cfg) = chain.status().config() else {
        return Some(common::Status::ServiceUnavailable);
    };
    if let Err(e) = readers(&cfg) {
        tracing::warn!(channel = %channel, error = %e, "deliver request refused");
        return Some(common::Status::Forbidden);
    }
    let strict = seek.error_response != SeekErrorResponse::BestEffort as i32;
    let mut errored = chain.status().subscribe();
    if strict && errored.borrow().is_some() {
        return Some(common::Status::ServiceUnavailable);
    }
    let ledger = chain.ledger().clone();
    let height = ledger.height();
    // A position that is missing or has no type is a malformed request.
    let pos = |p: &Option<crate::proto::orderer::SeekPosition>| -> Option<u64> {
        match p.as_ref().and_then(|p| p.r#type.as_ref())? {
            Pos::Oldest(_) => Some(0),
            Pos::Newest(_) => Some(height.saturating_sub(1)),
            Pos::Specified(s) => Some(s.number),
            Pos::NextCommit(_) => Some(height),
        }
    };
    let (Some(start), Some(stop)) = (pos(&seek.start), pos(&seek.stop)) else {
        return Some(common::Status::BadRequest);
    };
    if stop < start {
        return Some(common::Status::BadRequest);
    }
    let wait = seek.behavior == SeekBehavior::BlockUntilReady as i32;
    let mut n = start;
    loop {
        if n >= ledger.height() {
            if !wait {
                return Some(common::Status::NotFound);
            }
            tokio::select! {
                _ = ledger.wait_for(n) => {}
                _ = errored.changed(), if strict => {
                    return Some(common::Status::ServiceUnavailable);
                }
                _ = tx.closed() => return None,
            }
        }
        if let Some(now) = chain.status().config()
            && now.sequence != cfg.sequence
        {
            cfg = now;
            if let Err(e) = readers(&cfg) {
                tracing::warn!(channel = %channel, error = %e, "deliver stream refused after a config change");
                return Some(common::Status::Forbidden);
            }
        }
        let block: Block = match ledger.block(n) {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(channel = %channel, block = n, error = %e, "reading block for deliver");
                return Some(common::Status::InternalServerError);
            }
        };
        let r = DeliverResponse { r#type: Some(deliver_response::Type::Block(block)) };
        if tx.send(Ok(r)).await.is_err() {
            return None;
        }
        metrics.block_sent();
        if n == stop {
            return Some(common::Status::Success);
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn deliver_tls_binding() {
        let (a, b) = (vec![1u8; 32], vec![2u8; 32]);
        assert!(check_binding(&a, Some(&a)).is_ok());
        assert!(check_binding(&[], Some(&a)).unwrap_err().contains("didn't include its TLS cert hash"));
        assert!(check_binding(&a, None).unwrap_err().contains("didn't send a TLS certificate"));
        let e = check_binding(&a, Some(&b)).unwrap_err();
        assert!(
            e.contains(&format!("claimed TLS cert hash is {}", crate::block::hex(&a)))
                && e.contains(&crate::block::hex(&b)),
            "{e}"
        );
    }

    #[test]
    fn deliver_time_window() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ts = |s: i64| prost_types::Timestamp { seconds: s, nanos: 0 };
        assert!(check_timestamp(Some(&ts(1_000_000)), now).is_ok());
        assert!(check_timestamp(Some(&ts(1_000_000 - 900)), now).is_ok());
        assert!(check_timestamp(Some(&ts(1_000_000 + 900)), now).is_ok());
        assert!(check_timestamp(Some(&ts(1_000_000 - 901)), now).unwrap_err().contains("901 s apart"));
        assert!(check_timestamp(Some(&ts(1_000_000 + 901)), now).is_err());
        assert!(check_timestamp(None, now).unwrap_err().contains("no timestamp"));
    }
}
