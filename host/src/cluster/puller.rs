//! Pulling a channel's blocks from other orderers over Deliver (Fabric's
//! cluster `BlockPuller`, for catch-up and onboarding): mutual TLS with
//! the node's cluster identity, a SeekInfo envelope signed by the node's
//! MSP identity (with the TLS certificate hash Fabric binds it to), the
//! endpoints tried in turn, resuming at the first block not yet verified
//! when one fails, and every block checked by a [`BlockVerifier`] before
//! it is handed out. May touch the network only.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use super::identity::{ClientIdentity, FRAME_MARGIN};
use super::verify::{BlockVerifier, VerifyError};
use crate::proto::common::{Block, ChannelHeader, Envelope, Header, HeaderType, Payload};
use crate::proto::orderer::atomic_broadcast_client::AtomicBroadcastClient;
use crate::proto::orderer::seek_info::SeekBehavior;
use crate::proto::orderer::seek_position::Type as Pos;
use crate::proto::orderer::{SeekInfo, SeekPosition, SeekSpecified, deliver_response};
use crate::signer::Signer;
use crate::tls::dial::{self, ClientTls, DialError};

/// Where and as whom to pull from.
#[derive(Clone)]
pub struct PullerConfig {
    /// The channel.
    pub channel: String,
    /// Orderer endpoints (`host:port`), tried in this order.
    pub endpoints: Vec<String>,
    /// The TLS client identity and the root CAs of the endpoints' server
    /// certificates.
    pub tls: ClientIdentity,
    /// Signs the Deliver requests (the node's MSP identity; it must
    /// satisfy the channel's Readers policy).
    pub signer: Arc<Signer>,
    /// How long to wait for the next block from an endpoint before trying
    /// another (Fabric's ReplicationPullTimeout).
    pub response_timeout: Duration,
    /// Largest block accepted, in bytes.
    pub max_block_bytes: usize,
}

impl PullerConfig {
    /// With Fabric's defaults: 5 s per block, blocks up to 100 MiB.
    pub fn new(channel: &str, endpoints: Vec<String>, tls: ClientIdentity, signer: Arc<Signer>) -> PullerConfig {
        PullerConfig {
            channel: channel.to_string(),
            endpoints,
            tls,
            signer,
            response_timeout: Duration::from_secs(5),
            max_block_bytes: 100 * 1024 * 1024,
        }
    }
}

/// What went wrong with one endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// It could not be reached.
    #[error(transparent)]
    Connect(#[from] DialError),
    /// The Deliver call failed.
    #[error("deliver failed: {0}")]
    Rpc(String),
    /// It answered a status instead of the block.
    #[error("answered {} ({status})", status_name(*status))]
    Status {
        /// The common.Status.
        status: i32,
    },
    /// The stream ended before the block.
    #[error("the stream ended before the block")]
    Ended,
    /// No block within the response timeout.
    #[error("no block within {0:?}")]
    Timeout(Duration),
    /// The block it sent does not verify.
    #[error("refused its block: {0}")]
    Verify(#[from] VerifyError),
}

/// One endpoint's failure, at one block.
#[derive(Debug, thiserror::Error)]
#[error("{endpoint}: block {block}: {failure}")]
pub struct EndpointFailure {
    /// The endpoint.
    pub endpoint: String,
    /// The block it was asked for.
    pub block: u64,
    /// What went wrong.
    pub failure: Failure,
}

/// Why a pull did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// `to` is before `from`.
    #[error("cannot pull blocks {from} to {to} of channel {channel}: the range is empty")]
    Range {
        /// The channel.
        channel: String,
        /// The first block asked for.
        from: u64,
        /// The last.
        to: u64,
    },
    /// `from` is not the block the verifier expects next.
    #[error("cannot pull from block {from} of channel {channel}: the verifier expects block {expected} next")]
    NotNext {
        /// The channel.
        channel: String,
        /// The first block asked for.
        from: u64,
        /// What the verifier expects.
        expected: u64,
    },
    /// No endpoint to pull from.
    #[error("no endpoint to pull channel {channel} from")]
    NoEndpoints {
        /// The channel.
        channel: String,
    },
    /// The request could not be signed.
    #[error("signing the deliver request: {0}")]
    Sign(String),
    /// Every endpoint failed at `block` (each once since the last
    /// progress).
    #[error("pulling block {block} of channel {channel}: every endpoint failed: {}", list(.failures))]
    AllFailed {
        /// The channel.
        channel: String,
        /// The first block not pulled.
        block: u64,
        /// Each endpoint's failure.
        failures: Vec<EndpointFailure>,
    },
}

/// Fabric's name of a status (e.g. FORBIDDEN).
fn status_name(status: i32) -> &'static str {
    crate::proto::common::Status::try_from(status).map(|s| s.as_str_name()).unwrap_or("UNKNOWN_STATUS")
}

fn list(f: &[EndpointFailure]) -> String {
    f.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

/// Pulls verified blocks of one channel.
pub struct BlockPuller {
    cfg: PullerConfig,
    verifier: BlockVerifier,
    next_endpoint: usize,
    /// Wait for blocks not yet written (BLOCK_UNTIL_READY), or stop at the
    /// first one an endpoint does not have (FAIL_IF_NOT_READY).
    wait: bool,
}

impl BlockPuller {
    /// A puller whose blocks `verifier` checks (it says which block comes
    /// next and under which config).
    pub fn new(cfg: PullerConfig, verifier: BlockVerifier) -> BlockPuller {
        BlockPuller { cfg, verifier, next_endpoint: 0, wait: true }
    }

    /// Whether the next pulls wait for blocks not written yet (Fabric's
    /// puller does; the default), or end at the first block an endpoint
    /// does not have (each endpoint then answers NOT_FOUND there).
    pub fn set_wait(&mut self, wait: bool) {
        self.wait = wait;
    }

    /// The verifier (the next block expected, the config now).
    pub fn verifier(&self) -> &BlockVerifier {
        &self.verifier
    }

    /// Blocks `from..=to`, each verified; `from` must be the verifier's
    /// next block.
    pub async fn pull(&mut self, from: u64, to: u64) -> Result<Vec<Block>, PullError> {
        let mut out = Vec::new();
        self.pull_each(from, to, |b| out.push(b)).await?;
        Ok(out)
    }

    /// As [`BlockPuller::pull`], handing each verified block to `each` as
    /// it comes (in order), without holding them all.
    pub async fn pull_each(&mut self, from: u64, to: u64, mut each: impl FnMut(Block)) -> Result<(), PullError> {
        let channel = self.cfg.channel.clone();
        if to < from {
            return Err(PullError::Range { channel, from, to });
        }
        if from != self.verifier.next() {
            return Err(PullError::NotNext { channel, from, expected: self.verifier.next() });
        }
        if self.cfg.endpoints.is_empty() {
            return Err(PullError::NoEndpoints { channel });
        }
        let mut failures: Vec<EndpointFailure> = Vec::new();
        loop {
            let n = self.verifier.next();
            if n > to {
                return Ok(());
            }
            if failures.len() >= self.cfg.endpoints.len() {
                return Err(PullError::AllFailed { channel, block: n, failures });
            }
            let endpoint = self.cfg.endpoints[self.next_endpoint % self.cfg.endpoints.len()].clone();
            match self.pull_from(&endpoint, to, &mut each).await {
                Ok(()) => return Ok(()),
                Err(failure) => {
                    let block = self.verifier.next();
                    if block > n {
                        failures.clear(); // progress: every endpoint may be tried again
                    }
                    tracing::warn!(channel = %self.cfg.channel, %endpoint, block, error = %failure, "block puller: trying the next endpoint");
                    failures.push(EndpointFailure { endpoint, block, failure });
                    self.next_endpoint = self.next_endpoint.wrapping_add(1);
                }
            }
        }
    }

    /// Pulls from one endpoint until `to` or a failure.
    async fn pull_from(&mut self, endpoint: &str, to: u64, each: &mut impl FnMut(Block)) -> Result<(), Failure> {
        let config = self.cfg.tls.client_config(None).map_err(|e| Failure::Rpc(e.to_string()))?;
        let has_cert = true;
        let channel: Channel = dial::connect(endpoint, Some(ClientTls { config, server_name: None })).await?;
        let limit = self.cfg.max_block_bytes.saturating_add(FRAME_MARGIN);
        let mut client = AtomicBroadcastClient::new(channel).max_decoding_message_size(limit);
        let req = self.seek(self.verifier.next(), to).map_err(Failure::Rpc)?;
        let timeout = self.cfg.response_timeout;
        let call = tokio::time::timeout(timeout, client.deliver(tokio_stream::iter(vec![req])));
        let mut stream = match call.await {
            Err(_) => return Err(Failure::Timeout(timeout)),
            Ok(Err(status)) => return Err(rpc(endpoint, &status, has_cert)),
            Ok(Ok(r)) => r.into_inner(),
        };
        loop {
            let msg = match tokio::time::timeout(timeout, stream.message()).await {
                Err(_) => return Err(Failure::Timeout(timeout)),
                Ok(Err(status)) => return Err(rpc(endpoint, &status, has_cert)),
                Ok(Ok(None)) => return Err(Failure::Ended),
                Ok(Ok(Some(m))) => m,
            };
            match msg.r#type {
                Some(deliver_response::Type::Block(b)) => {
                    self.verifier.verify(&b)?;
                    let n = b.header.as_ref().map(|h| h.number).unwrap_or_default();
                    each(b);
                    if n >= to {
                        return Ok(());
                    }
                }
                Some(deliver_response::Type::Status(status)) => return Err(Failure::Status { status }),
                None => return Err(Failure::Ended),
            }
        }
    }

    /// A Deliver request for `from..=to`, waiting for blocks (Fabric's
    /// puller asks BLOCK_UNTIL_READY) unless told not to, signed by the
    /// node and bound to its TLS certificate (the channel header's
    /// tls_cert_hash, which a Fabric orderer with client authentication
    /// checks).
    fn seek(&self, from: u64, to: u64) -> Result<Envelope, String> {
        let pos = |n| SeekPosition { r#type: Some(Pos::Specified(SeekSpecified { number: n })) };
        let seek = SeekInfo {
            start: Some(pos(from)),
            stop: Some(pos(to)),
            behavior: if self.wait { SeekBehavior::BlockUntilReady } else { SeekBehavior::FailIfNotReady } as i32,
            error_response: 0,
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let ch = ChannelHeader {
            r#type: HeaderType::DeliverSeekInfo as i32,
            timestamp: Some(prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 }),
            channel_id: self.cfg.channel.clone(),
            tls_cert_hash: Bytes::copy_from_slice(&Sha256::digest(self.cfg.tls.cert_der())),
            ..Default::default()
        };
        let payload = Payload {
            header: Some(Header {
                channel_header: ch.encode_to_vec().into(),
                signature_header: self.cfg.signer.new_signature_header().encode_to_vec().into(),
            }),
            data: seek.encode_to_vec().into(),
        }
        .encode_to_vec();
        let signature = self.cfg.signer.sign(&payload).map_err(|e| e.to_string())?;
        Ok(Envelope { payload: payload.into(), signature: signature.into() })
    }
}

fn rpc(endpoint: &str, status: &tonic::Status, has_cert: bool) -> Failure {
    use std::error::Error;
    if status.source().is_some_and(|s| s.is::<tonic::transport::Error>()) {
        return Failure::Connect(dial::from_transport(endpoint, status, true, has_cert));
    }
    Failure::Rpc(dial::error_chain(status))
}
