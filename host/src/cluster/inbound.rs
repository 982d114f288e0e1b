//! The receiving side: the `orderer.Cluster` service. Every message of a
//! Step stream is authenticated on its own, as Fabric does: the
//! connection's TLS client certificate (DER) must be the client_tls_cert
//! of a member of the channel the message names. Accepted messages go to
//! the node's [`Inbound`] with the sender's id; refused ones (no
//! certificate, unknown channel, not a member, oversized, malformed) are
//! dropped with a warning naming the channel and the reason, counted, and
//! the stream stays up for the next message. A refused submit is answered
//! with a SubmitResponse (status and reason); nothing else is answered. A
//! consensus message refused as not a member's still tells the Inbound the
//! height it claims ([`Inbound::non_member`]): this node may have missed
//! the config block that made its sender a consenter.
//! May touch the transport's membership table and the Inbound only.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::stats::{Refusal, TransportEvent};
use super::{Inbound, Shared};
use crate::proto::common;
use crate::proto::orderer::cluster_server::Cluster;
use crate::proto::orderer::step_request::Payload as Req;
use crate::proto::orderer::step_response::Payload as Resp;
use crate::proto::orderer::{StepRequest, StepResponse, SubmitResponse};

/// SubmitResponses waiting to go out on one stream; more are dropped
/// (the stream's reader is slow, and they are advisory).
const ANSWERS: usize = 64;

/// The `orderer.Cluster` service of a [`super::Transport`].
pub struct ClusterService {
    pub(crate) shared: Arc<Shared>,
    pub(crate) inbound: Arc<dyn Inbound>,
}

type StepStream = Pin<Box<dyn Stream<Item = Result<StepResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Cluster for ClusterService {
    type StepStream = StepStream;

    async fn step(&self, req: Request<Streaming<StepRequest>>) -> Result<Response<StepStream>, Status> {
        let cert: Option<Bytes> = req.peer_certs().and_then(|c| c.first().map(|c| Bytes::copy_from_slice(c)));
        let remote = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut input = req.into_inner();
        let (tx, rx) = mpsc::channel(ANSWERS);
        let stream =
            StreamCtx { shared: self.shared.clone(), inbound: self.inbound.clone(), cert, remote, answers: tx };
        tracing::debug!(remote = %stream.remote, "cluster: Step stream opened");
        tokio::spawn(async move {
            loop {
                match input.message().await {
                    Ok(Some(m)) => stream.handle(m),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::warn!(remote = %stream.remote, error = %status.message(), "cluster: Step stream failed");
                        break;
                    }
                }
            }
            tracing::debug!(remote = %stream.remote, "cluster: Step stream closed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One inbound stream.
struct StreamCtx {
    shared: Arc<Shared>,
    inbound: Arc<dyn Inbound>,
    cert: Option<Bytes>,
    remote: String,
    answers: mpsc::Sender<Result<StepResponse, Status>>,
}

impl StreamCtx {
    fn handle(&self, m: StepRequest) {
        let max = self.shared.limits.max_message_bytes;
        match m.payload {
            None => self.refuse("", None, Refusal::Malformed, false),
            Some(Req::ConsensusRequest(c)) => {
                let from = match self.authenticate(&c.channel, false) {
                    Ok(from) => from,
                    // A consenter this node's config does not name yet
                    // (its chain may catch up on the height it claims).
                    Err(Refusal::NotMember) => return self.inbound.non_member(&c.channel, c.height),
                    Err(_) => return,
                };
                if c.payload.len() > max {
                    return self.refuse_member(&c.channel, from, Refusal::Oversized, false, c.payload.len());
                }
                from.1.received.fetch_add(1, Relaxed);
                self.inbound.consensus_of_type(&c.channel, from.0, c.payload, &c.consensus_type, c.height);
            }
            Some(Req::SubmitRequest(s)) => {
                let seq = s.last_validation_seq;
                let Ok(from) = self.authenticate(&s.channel, true) else { return };
                let Some(env) = s.payload.filter(|e| !e.payload.is_empty()) else {
                    return self.refuse_member(&s.channel, from, Refusal::Malformed, true, 0);
                };
                let bytes = Bytes::from(env.encode_to_vec());
                if bytes.len() > max {
                    return self.refuse_member(&s.channel, from, Refusal::Oversized, true, bytes.len());
                }
                from.1.received.fetch_add(1, Relaxed);
                self.inbound.submit(&s.channel, from.0, seq, bytes);
            }
        }
    }

    /// The sender's id in `channel`, or the refusal made (`submit`: the
    /// message was a submit, which gets an answer).
    fn authenticate(&self, channel: &str, submit: bool) -> Result<(u64, Arc<super::stats::PeerCounters>), Refusal> {
        if channel.is_empty() {
            self.refuse(channel, None, Refusal::Malformed, submit);
            return Err(Refusal::Malformed);
        }
        self.shared.authenticate(channel, self.cert.as_deref()).inspect_err(|r| self.refuse(channel, None, *r, submit))
    }

    fn refuse_member(
        &self,
        channel: &str,
        from: (u64, Arc<super::stats::PeerCounters>),
        reason: Refusal,
        submit: bool,
        size: usize,
    ) {
        from.1.refused.fetch_add(1, Relaxed);
        let max = self.shared.limits.max_message_bytes;
        tracing::warn!(channel, from = from.0, remote = %self.remote, size, max, reason = %reason, "cluster: message dropped");
        self.refuse(channel, Some(from.0), reason, submit);
    }

    fn refuse(&self, channel: &str, from: Option<u64>, reason: Refusal, submit: bool) {
        self.shared.refusals.add(reason);
        if from.is_none() {
            tracing::warn!(channel, remote = %self.remote, reason = %reason, "cluster: message dropped");
        }
        self.shared.events.send(TransportEvent::Refused { channel: channel.to_string(), from, reason });
        if submit {
            let status = match reason {
                Refusal::NoCertificate | Refusal::NotMember => common::Status::Forbidden,
                Refusal::UnknownChannel => common::Status::NotFound,
                Refusal::Oversized | Refusal::Malformed => common::Status::BadRequest,
            };
            let info = match reason {
                Refusal::UnknownChannel => format!("channel {channel} doesn't exist"),
                r => r.text().to_string(),
            };
            let answer = StepResponse {
                payload: Some(Resp::SubmitRes(SubmitResponse {
                    channel: channel.to_string(),
                    status: status as i32,
                    info,
                })),
            };
            let _ = self.answers.try_send(Ok(answer));
        }
    }
}
