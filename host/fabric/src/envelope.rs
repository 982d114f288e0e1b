//! An envelope as the node handles it: the marshalled `common.Envelope`
//! kept as received (zero-copy `Bytes`) plus what ordering needs from its
//! headers, parsed once at Broadcast. May touch nothing.

use bytes::Bytes;
use prost::Message;

use crate::cutter::MessageSize;
use crate::proto::common::{ChannelHeader, Envelope as PbEnvelope, HeaderType, Payload, SignatureHeader};

/// How an envelope is ordered (Fabric's message classification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageClass {
    /// Batched by the block cutter.
    Normal,
    /// A config message: ordered alone in a config block.
    Config,
}

/// Why an envelope is malformed (answered BAD_REQUEST).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("envelope is not a valid common.Envelope: {0}")]
    Envelope(String),
    #[error("envelope has an empty payload")]
    EmptyPayload,
    #[error("envelope payload is not a valid common.Payload: {0}")]
    Payload(String),
    #[error("envelope payload has no header")]
    NoHeader,
    #[error("envelope channel header is not a valid common.ChannelHeader: {0}")]
    ChannelHeader(String),
}

/// A parsed envelope.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The marshalled `common.Envelope`, as received.
    pub bytes: Bytes,
    /// len(payload) + len(signature).
    pub size: u32,
    /// Header type from the channel header.
    pub header_type: i32,
    /// Channel id from the channel header.
    pub channel_id: String,
    /// Transaction id from the channel header.
    pub tx_id: String,
    /// The config sequence this envelope was validated under.
    pub config_seq: u64,
    /// The signed bytes (the envelope's payload).
    pub payload: Bytes,
    /// The envelope's signature.
    pub signature: Bytes,
    /// The signer: the signature header's creator (a marshalled
    /// SerializedIdentity; empty when the envelope has no signature header).
    pub creator: Bytes,
}

impl Envelope {
    /// Parses the envelope and its channel header. `bytes` is kept as is.
    pub fn parse(bytes: Bytes) -> Result<Envelope, EnvelopeError> {
        let env = PbEnvelope::decode(bytes.clone()).map_err(|e| EnvelopeError::Envelope(e.to_string()))?;
        Self::with_bytes(env, bytes)
    }

    /// An envelope already decoded (as gRPC hands it over): its headers
    /// are parsed and its bytes encoded once, without decoding it again.
    pub fn from_message(env: PbEnvelope) -> Result<Envelope, EnvelopeError> {
        let bytes = env.encode_to_vec().into();
        Self::with_bytes(env, bytes)
    }

    fn with_bytes(env: PbEnvelope, bytes: Bytes) -> Result<Envelope, EnvelopeError> {
        if env.payload.is_empty() {
            return Err(EnvelopeError::EmptyPayload);
        }
        let size = u32::try_from(env.payload.len() + env.signature.len()).unwrap_or(u32::MAX);
        let payload = Payload::decode(env.payload.clone()).map_err(|e| EnvelopeError::Payload(e.to_string()))?;
        let header = payload.header.ok_or(EnvelopeError::NoHeader)?;
        let ch =
            ChannelHeader::decode(header.channel_header).map_err(|e| EnvelopeError::ChannelHeader(e.to_string()))?;
        // A missing or undecodable signature header leaves the creator
        // empty: such an envelope satisfies only policies that need no
        // signature (an org-less channel), as in Fabric.
        let creator = SignatureHeader::decode(header.signature_header).map(|h| h.creator).unwrap_or_default();
        Ok(Envelope {
            bytes,
            size,
            header_type: ch.r#type,
            channel_id: ch.channel_id,
            tx_id: ch.tx_id,
            config_seq: 0,
            payload: env.payload,
            signature: env.signature,
            creator,
        })
    }

    /// Normal or config, from the header type (CONFIG, and
    /// ORDERER_TRANSACTION on a system channel, are config messages).
    pub fn class(&self) -> MessageClass {
        if self.header_type == HeaderType::Config as i32 || self.header_type == HeaderType::OrdererTransaction as i32 {
            MessageClass::Config
        } else {
            MessageClass::Normal
        }
    }
}

impl MessageSize for Envelope {
    fn message_size(&self) -> u32 {
        self.size
    }
}

/// Builds a marshalled envelope (unsigned unless `signer` is given) of
/// `header_type` on `channel` carrying `data`; used by the CLI's tools, the
/// benchmarks and tests.
pub fn build(
    channel: &str,
    header_type: HeaderType,
    tx_id: &str,
    data: Bytes,
    signer: Option<&crate::signer::Signer>,
) -> Result<Bytes, crate::signer::SignerError> {
    build_bound(channel, header_type, tx_id, data, signer, Bytes::new())
}

/// [`build`] with the channel header's timestamp given (`now`, since the
/// Unix epoch): the same arguments give the same bytes, as deterministic
/// test runs need (unsigned, or signed with RFC 6979 nonces).
pub fn build_at(
    channel: &str,
    header_type: HeaderType,
    tx_id: &str,
    data: Bytes,
    signer: Option<&crate::signer::Signer>,
    now: std::time::Duration,
) -> Result<Bytes, crate::signer::SignerError> {
    build_full(channel, header_type, tx_id, data, signer, now, Bytes::new())
}

/// [`build`] bound to the client's TLS certificate: the channel header's
/// `tls_cert_hash` is `tls_cert_hash` (SHA-256 of the certificate's DER),
/// which an orderer that requires client certificates checks on Deliver
/// requests (Fabric's mutual TLS binding).
pub fn build_bound(
    channel: &str,
    header_type: HeaderType,
    tx_id: &str,
    data: Bytes,
    signer: Option<&crate::signer::Signer>,
    tls_cert_hash: Bytes,
) -> Result<Bytes, crate::signer::SignerError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    build_full(channel, header_type, tx_id, data, signer, now, tls_cert_hash)
}

fn build_full(
    channel: &str,
    header_type: HeaderType,
    tx_id: &str,
    data: Bytes,
    signer: Option<&crate::signer::Signer>,
    now: std::time::Duration,
    tls_cert_hash: Bytes,
) -> Result<Bytes, crate::signer::SignerError> {
    use crate::proto::common::Header;
    let ch = ChannelHeader {
        r#type: header_type as i32,
        version: 0,
        timestamp: Some(prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 }),
        channel_id: channel.to_string(),
        tx_id: tx_id.to_string(),
        epoch: 0,
        extension: Bytes::new(),
        tls_cert_hash,
    };
    let sh = signer.map(|s| s.new_signature_header().encode_to_vec()).unwrap_or_default();
    let payload = Payload {
        header: Some(Header { channel_header: ch.encode_to_vec().into(), signature_header: sh.into() }),
        data,
    }
    .encode_to_vec();
    let signature = match signer {
        Some(s) => s.sign(&payload)?,
        None => Vec::new(),
    };
    Ok(PbEnvelope { payload: payload.into(), signature: signature.into() }.encode_to_vec().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_headers_and_size() {
        let b = build("ch1", HeaderType::Message, "tx-1", Bytes::from(vec![1u8; 100]), None).unwrap();
        let e = Envelope::parse(b.clone()).unwrap();
        assert_eq!(e.channel_id, "ch1");
        assert_eq!(e.tx_id, "tx-1");
        assert_eq!(e.class(), MessageClass::Normal);
        let pb = PbEnvelope::decode(b).unwrap();
        assert_eq!(e.size as usize, pb.payload.len() + pb.signature.len());
        let c = build("ch1", HeaderType::Config, "", Bytes::new(), None).unwrap();
        assert_eq!(Envelope::parse(c).unwrap().class(), MessageClass::Config);
    }

    #[test]
    fn malformed_envelopes_say_what_is_wrong() {
        assert!(matches!(Envelope::parse(Bytes::from_static(&[0xff, 0xff])), Err(EnvelopeError::Envelope(_))));
        assert_eq!(Envelope::parse(Bytes::new()).unwrap_err(), EnvelopeError::EmptyPayload);
        let no_header = PbEnvelope {
            payload: Payload { header: None, data: Bytes::from_static(b"x") }.encode_to_vec().into(),
            signature: Bytes::new(),
        };
        assert_eq!(Envelope::parse(no_header.encode_to_vec().into()).unwrap_err(), EnvelopeError::NoHeader);
        let bad_payload = PbEnvelope { payload: Bytes::from_static(&[0x0a, 0x05]), signature: Bytes::new() };
        assert!(matches!(Envelope::parse(bad_payload.encode_to_vec().into()), Err(EnvelopeError::Payload(_))));
    }
}
