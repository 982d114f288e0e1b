//! The load generator behind `consenter-host bench`: builds and signs
//! envelopes ahead of time, sends them over concurrent Broadcast streams to
//! any AtomicBroadcast endpoint, follows Deliver until every envelope is in
//! a block, and reports acknowledged and committed throughput and latency.
//! Uses only the protocol. May touch the network and the MSP folder only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tonic::transport::Channel;

use crate::envelope;
use crate::proto::common::{self, Envelope, HeaderType};
use crate::proto::orderer::atomic_broadcast_client::AtomicBroadcastClient;
use crate::proto::orderer::seek_info::SeekBehavior;
use crate::proto::orderer::seek_position::Type as Pos;
use crate::proto::orderer::{DeliverResponse, SeekInfo, SeekNewest, SeekPosition, SeekSpecified, deliver_response};
use crate::signer::Signer;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// `host:port` of the orderer.
    pub orderer: String,
    /// The channel to load.
    pub channel: String,
    /// Concurrent Broadcast streams.
    pub clients: usize,
    /// Envelopes in all.
    pub messages: usize,
    /// Payload data bytes per envelope.
    pub size: usize,
    /// Give up waiting for blocks this long after the last acknowledgement.
    pub commit_timeout: Duration,
    /// TLS to the orderer (root CAs, optional client certificate), or
    /// plaintext.
    pub tls: Option<crate::tls::dial::ClientTls>,
    /// SHA-256 of the client certificate's DER (empty without one): the
    /// Deliver requests' channel header `tls_cert_hash` (Fabric's mutual
    /// TLS binding, checked by an orderer that requires client
    /// certificates).
    pub tls_cert_hash: Bytes,
}

/// Different refusal answers a report keeps.
const MAX_REFUSAL_KINDS: usize = 100;

/// Adds `n` refusals answered `key` to `counts` (a new answer only while
/// fewer than [`MAX_REFUSAL_KINDS`] are kept).
fn count_refusal(counts: &mut std::collections::BTreeMap<(i32, String), u64>, key: (i32, String), n: u64) {
    if counts.len() < MAX_REFUSAL_KINDS || counts.contains_key(&key) {
        *counts.entry(key).or_default() += n;
    }
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Envelopes answered SUCCESS.
    pub acknowledged: u64,
    /// Envelopes answered otherwise.
    pub refused: u64,
    /// Refusals by (status, info), with how many got each answer (at most
    /// 100 different answers are kept; the rest count in `refused` only).
    pub refusals: std::collections::BTreeMap<(i32, String), u64>,
    /// This run's envelopes seen in delivered blocks.
    pub committed: u64,
    /// Blocks delivered during the run.
    pub blocks: u64,
    /// Envelopes in those blocks (others' included).
    pub envelopes_seen: u64,
    /// Seconds from the first send to the last acknowledgement.
    pub ack_secs: f64,
    /// Seconds from the first send to the last block.
    pub commit_secs: f64,
    /// Median send-to-delivery latency.
    pub latency_p50: Duration,
    /// 99th percentile send-to-delivery latency.
    pub latency_p99: Duration,
}

impl LoadReport {
    /// Acknowledged envelopes per second.
    pub fn ack_rate(&self) -> f64 {
        self.acknowledged as f64 / self.ack_secs.max(1e-9)
    }
    /// Committed envelopes per second (first send to last block).
    pub fn commit_rate(&self) -> f64 {
        self.committed as f64 / self.commit_secs.max(1e-9)
    }
}

/// Errors of a load run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The orderer could not be reached (TCP, TLS or HTTP/2).
    #[error(transparent)]
    Connect(#[from] crate::tls::dial::DialError),
    /// A call failed.
    #[error("{what}: {status}")]
    Rpc {
        /// Which call.
        what: &'static str,
        /// Its status.
        status: tonic::Status,
    },
    /// Deliver refused before the run.
    #[error("deliver on channel {channel} answered {} ({status}) before the run started", status_name(*status))]
    Deliver {
        /// The channel.
        channel: String,
        /// The common.Status.
        status: i32,
    },
    /// Envelopes could not be signed.
    #[error("signing envelopes: {0}")]
    Sign(String),
}

/// Fabric's name of a status code (e.g. NOT_FOUND).
pub fn status_name(status: i32) -> &'static str {
    common::Status::try_from(status).map(|s| s.as_str_name()).unwrap_or("UNKNOWN_STATUS")
}

fn tx_id(run: u64, i: usize) -> String {
    format!("bench-{run:x}-{i}")
}

/// Builds and signs `n` envelopes on every core.
pub fn build_envelopes(spec: &LoadSpec, run: u64, signer: Option<&Signer>) -> Result<Vec<Envelope>, LoadError> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let chunk = spec.messages.div_ceil(cores).max(1);
    let data = Bytes::from(vec![0xabu8; spec.size]);
    let mut out: Vec<Result<Vec<Envelope>, String>> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..spec.messages)
            .step_by(chunk)
            .map(|start| {
                let data = data.clone();
                s.spawn(move || {
                    (start..(start + chunk).min(spec.messages))
                        .map(|i| {
                            let b = envelope::build(
                                &spec.channel,
                                HeaderType::Message,
                                &tx_id(run, i),
                                data.clone(),
                                signer,
                            )
                            .map_err(|e| e.to_string())?;
                            Envelope::decode(b).map_err(|e| e.to_string())
                        })
                        .collect::<Result<Vec<_>, String>>()
                })
            })
            .collect();
        for h in handles {
            out.push(h.join().unwrap_or_else(|_| Err("a signing thread panicked".into())));
        }
    });
    let mut all = Vec::with_capacity(spec.messages);
    for part in out {
        all.extend(part.map_err(LoadError::Sign)?);
    }
    Ok(all)
}

async fn connect(spec: &LoadSpec) -> Result<AtomicBroadcastClient<Channel>, LoadError> {
    let addr = spec.orderer.strip_prefix("http://").or_else(|| spec.orderer.strip_prefix("https://"));
    let addr = addr.unwrap_or(&spec.orderer);
    let channel = crate::tls::dial::connect(addr, spec.tls.clone()).await?;
    let c = AtomicBroadcastClient::new(channel);
    Ok(c.max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20))
}

/// A Deliver request on `spec`'s channel, bound to its client
/// certificate if it has one.
fn seek(
    spec: &LoadSpec,
    start: Pos,
    stop: Pos,
    behavior: SeekBehavior,
    signer: Option<&Signer>,
) -> Result<Envelope, LoadError> {
    let seek = SeekInfo {
        start: Some(SeekPosition { r#type: Some(start) }),
        stop: Some(SeekPosition { r#type: Some(stop) }),
        behavior: behavior as i32,
        error_response: 0,
    };
    let data = seek.encode_to_vec().into();
    let b =
        envelope::build_bound(&spec.channel, HeaderType::DeliverSeekInfo, "", data, signer, spec.tls_cert_hash.clone())
            .map_err(|e| LoadError::Sign(e.to_string()))?;
    Envelope::decode(b).map_err(|e| LoadError::Sign(e.to_string()))
}

/// The first call is where a failed connection shows (HTTP/2 connects
/// without waiting for the server): a transport error becomes
/// [`LoadError::Connect`], saying what failed and what it most likely means.
fn first_call(spec: &LoadSpec, e: LoadError) -> LoadError {
    use std::error::Error;
    match e {
        LoadError::Rpc { status, .. } if status.source().is_some_and(|s| s.is::<tonic::transport::Error>()) => {
            let tls = spec.tls.as_ref();
            let has_cert = tls.is_some_and(|t| t.config.client_auth_cert_resolver.has_certs());
            LoadError::Connect(crate::tls::dial::from_transport(&spec.orderer, &status, tls.is_some(), has_cert))
        }
        e => e,
    }
}

/// Sends one Deliver request and returns its response stream.
async fn open_deliver(
    client: &mut AtomicBroadcastClient<Channel>,
    req: Envelope,
    what: &'static str,
) -> Result<tonic::Streaming<crate::proto::orderer::DeliverResponse>, LoadError> {
    let r = client.deliver(tokio_stream::iter(vec![req])).await.map_err(|status| LoadError::Rpc { what, status })?;
    Ok(r.into_inner())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a follow task forwards.
type Follow = tokio::sync::mpsc::Receiver<Result<DeliverResponse, LoadError>>;

/// Opens a Deliver stream in a task of its own and forwards what it
/// answers, so that the caller never waits for the stream's response
/// headers. The receiver ends when the stream does; abort the task to
/// close the stream earlier.
fn follow_deliver(mut client: AtomicBroadcastClient<Channel>, req: Envelope) -> (Follow, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let task = tokio::spawn(async move {
        let what = "deliver (follow)";
        let mut s = match open_deliver(&mut client, req, what).await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        loop {
            let item = match s.message().await {
                Ok(Some(r)) => Ok(r),
                Ok(None) => return,
                Err(status) => Err(LoadError::Rpc { what, status }),
            };
            let end = item.is_err();
            if tx.send(item).await.is_err() || end {
                return;
            }
        }
    });
    (rx, task)
}

/// Runs the load; `progress` is called about once a second with
/// (acknowledged, committed).
pub async fn run(
    spec: &LoadSpec,
    signer: Option<Arc<Signer>>,
    mut progress: impl FnMut(u64, u64) + Send,
) -> Result<LoadReport, LoadError> {
    let run_id =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let envs = build_envelopes(spec, run_id, signer.as_deref())?;
    let mut client = connect(spec).await?;

    // Where the chain is now: the newest block's number.
    let newest = seek(
        spec,
        Pos::Newest(SeekNewest {}),
        Pos::Newest(SeekNewest {}),
        SeekBehavior::FailIfNotReady,
        signer.as_deref(),
    )?;
    let mut s = open_deliver(&mut client, newest, "deliver (newest)").await.map_err(|e| first_call(spec, e))?;
    let mut start_block = None;
    while let Some(r) =
        s.message().await.map_err(|status| first_call(spec, LoadError::Rpc { what: "deliver (newest)", status }))?
    {
        match r.r#type {
            Some(deliver_response::Type::Block(b)) => start_block = b.header.map(|h| h.number + 1),
            Some(deliver_response::Type::Status(st)) => {
                if start_block.is_none() || st != common::Status::Success as i32 {
                    return Err(LoadError::Deliver { channel: spec.channel.clone(), status: st });
                }
                break;
            }
            None => break,
        }
    }
    let from = start_block.unwrap_or_default();

    let started = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..spec.messages).map(|_| AtomicU64::new(0)).collect());
    let acked = Arc::new(AtomicU64::new(0));

    // Follow Deliver from the next block. The stream is opened in its own
    // task and nothing waits for it before broadcasting: a server may send
    // the response headers only with the first block (grpc-go, so Fabric's
    // orderer, does), and there is no block until something is broadcast.
    // The request names the first block, so no block is missed however
    // late the stream opens.
    let follow = seek(
        spec,
        Pos::Specified(SeekSpecified { number: from }),
        Pos::Specified(SeekSpecified { number: u64::MAX }),
        SeekBehavior::BlockUntilReady,
        signer.as_deref(),
    )?;
    let (mut follow, follow_task) = follow_deliver(client.clone(), follow);
    // However the run ends, the follow stream closes with it.
    let follow_task = AbortOnDrop(follow_task);

    // Broadcast on `clients` streams.
    let per = spec.messages.div_ceil(spec.clients.max(1)).max(1);
    let mut senders = Vec::new();
    let mut envs = envs.into_iter().enumerate().collect::<Vec<_>>();
    while !envs.is_empty() {
        let rest = envs.split_off(per.min(envs.len()));
        let mine = std::mem::replace(&mut envs, rest);
        let mut c = client.clone();
        let sent_at = sent_at.clone();
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            let stream = tokio_stream::iter(mine.into_iter().map(move |(i, e)| {
                sent_at[i].store(started.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
                e
            }));
            let mut acks =
                c.broadcast(stream).await.map_err(|status| LoadError::Rpc { what: "broadcast", status })?.into_inner();
            let mut refused = std::collections::BTreeMap::<(i32, String), u64>::new();
            let mut n_refused = 0u64;
            while let Some(r) = acks.message().await.map_err(|status| LoadError::Rpc { what: "broadcast", status })? {
                if r.status == common::Status::Success as i32 {
                    acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    n_refused += 1;
                    count_refusal(&mut refused, (r.status, r.info), 1);
                }
            }
            Ok::<_, LoadError>((n_refused, refused))
        }));
    }

    let mut report = LoadReport::default();
    let mut latencies = Vec::with_capacity(spec.messages);
    let mut last_progress = Instant::now();
    let mut acks_done: Option<Instant> = None;
    let mut sender_handles = senders;
    let prefix = format!("bench-{run_id:x}-");
    loop {
        if acks_done.is_none() && sender_handles.iter().all(|h| h.is_finished()) {
            acks_done = Some(Instant::now());
            report.ack_secs = started.elapsed().as_secs_f64();
            for h in sender_handles.drain(..) {
                let (n, r) = h.await.map_err(|e| LoadError::Sign(format!("a sender task failed: {e}")))??;
                report.refused += n;
                for (k, c) in r {
                    count_refusal(&mut report.refusals, k, c);
                }
            }
        }
        report.acknowledged = acked.load(Ordering::Relaxed);
        let expected = spec.messages as u64 - report.refused;
        if acks_done.is_some() && report.committed >= expected.min(report.acknowledged) {
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            progress(report.acknowledged, report.committed);
            last_progress = Instant::now();
        }
        let wait = match acks_done {
            Some(t) => spec.commit_timeout.saturating_sub(t.elapsed()),
            None => Duration::from_millis(200),
        };
        let msg = match tokio::time::timeout(wait, follow.recv()).await {
            Ok(Some(m)) => Some(m?),
            Ok(None) => None,
            Err(_) if acks_done.is_some() => break, // commit timeout: report what we have
            Err(_) => continue,
        };
        match msg.and_then(|r| r.r#type) {
            Some(deliver_response::Type::Block(b)) => {
                report.blocks += 1;
                let now = started.elapsed().as_nanos() as u64;
                for d in b.data.map(|d| d.data).unwrap_or_default() {
                    report.envelopes_seen += 1;
                    let Ok(e) = envelope::Envelope::parse(d) else { continue };
                    if let Some(i) = e.tx_id.strip_prefix(&prefix).and_then(|i| i.parse::<usize>().ok()) {
                        let sent = sent_at.get(i).map(|t| t.load(Ordering::Relaxed)).unwrap_or(0);
                        if sent > 0 {
                            latencies.push(Duration::from_nanos(now.saturating_sub(sent - 1)));
                        }
                        report.committed += 1;
                    }
                }
                report.commit_secs = started.elapsed().as_secs_f64();
            }
            Some(deliver_response::Type::Status(_)) | None => break,
        }
    }
    drop(follow_task);
    latencies.sort();
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied();
    report.latency_p50 = pct(0.50).unwrap_or_default();
    report.latency_p99 = pct(0.99).unwrap_or_default();
    Ok(report)
}

/// What `swaps` did: each swap's round trip (the CONFIG_UPDATE sent to its
/// SUCCESS), and the types swapped between.
#[derive(Debug, Clone, Default)]
pub struct SwapReport {
    /// Swaps acknowledged.
    pub done: usize,
    /// The channel's type before the first swap.
    pub from: String,
    /// Round trip of each swap's CONFIG_UPDATE.
    pub round_trips: Vec<Duration>,
}

/// Swaps `spec.channel`'s consensus type `count` times, alternating between
/// its type now and `to`, one after the other, while a load runs (an
/// unsigned CONFIG_UPDATE each: for org-less channels such as the
/// development channel). The node measures each swap's pause (`channel
/// show`: `consenter.swapPauseUs`).
pub async fn swaps(spec: &LoadSpec, to: &str, count: usize) -> Result<SwapReport, LoadError> {
    use crate::proto::common::{Block, Config};
    use crate::proto::orderer::ConsensusType;
    let mut client = connect(spec).await?;
    let one = |n: u64| {
        seek(
            spec,
            Pos::Specified(SeekSpecified { number: n }),
            Pos::Specified(SeekSpecified { number: n }),
            SeekBehavior::BlockUntilReady,
            None,
        )
    };
    let newest =
        seek(spec, Pos::Newest(SeekNewest {}), Pos::Newest(SeekNewest {}), SeekBehavior::FailIfNotReady, None)?;
    async fn first_block(
        client: &mut AtomicBroadcastClient<Channel>,
        req: Envelope,
    ) -> Result<Option<Block>, LoadError> {
        let mut s = open_deliver(client, req, "deliver (swaps)").await?;
        let r = s.message().await.map_err(|status| LoadError::Rpc { what: "deliver (swaps)", status })?;
        if let Some(deliver_response::Type::Block(b)) = r.and_then(|r| r.r#type) {
            return Ok(Some(b));
        }
        Ok(None)
    }
    let sign_err = |e: String| LoadError::Sign(format!("the swaps' config: {e}"));
    let last = first_block(&mut client, newest).await?.ok_or_else(|| sign_err("no newest block".into()))?;
    let (last_config, _) = crate::block::last_config_and_metadata(&last);
    let block = first_block(&mut client, one(last_config)?).await?.ok_or_else(|| sign_err("no config block".into()))?;
    let cfg = crate::channel::ChannelConfig::from_config_block(&block).map_err(|e| sign_err(e.to_string()))?;
    let mut config: Config = (*cfg.config).clone();
    let from = cfg.consensus_type.clone();
    let mut report = SwapReport { from: from.clone(), ..Default::default() };
    for i in 0..count {
        let ty = if i % 2 == 0 { to } else { from.as_str() };
        let cfg =
            crate::channel::ChannelConfig::from_config(&spec.channel, &config).map_err(|e| sign_err(e.to_string()))?;
        let value = ConsensusType { r#type: ty.into(), metadata: Default::default(), state: 0 }.encode_to_vec();
        let update = crate::conformance::update::orderer_value(&cfg, "ConsensusType", value.clone().into());
        let env = Envelope::decode(update).map_err(|e| sign_err(e.to_string()))?;
        let t = Instant::now();
        let mut acks = client
            .broadcast(tokio_stream::iter(vec![env]))
            .await
            .map_err(|status| LoadError::Rpc { what: "broadcast (swap)", status })?
            .into_inner();
        let r = acks.message().await.map_err(|status| LoadError::Rpc { what: "broadcast (swap)", status })?;
        let r = r.ok_or_else(|| sign_err("the swap's Broadcast ended without an answer".into()))?;
        if r.status != common::Status::Success as i32 {
            return Err(sign_err(format!("swap {i} to {ty}: {} {}", status_name(r.status), r.info)));
        }
        report.round_trips.push(t.elapsed());
        report.done += 1;
        // The next config, as the node computed it: the value's version + 1.
        if let Some(v) = config
            .channel_group
            .as_mut()
            .and_then(|g| g.groups.get_mut("Orderer"))
            .and_then(|o| o.values.get_mut("ConsensusType"))
        {
            v.value = value.into();
            v.version += 1;
        }
    }
    Ok(report)
}
