//! Bad input: random bytes and truncated protobufs on both RPCs get
//! BAD_REQUEST (or a gRPC error for undecodable frames) and the node keeps
//! serving; property tests of envelope and SeekInfo decoding (never a
//! panic, errors say what is malformed).

mod common;

use bytes::{BufMut, Bytes};
use consenter_host::envelope::{self, Envelope};
use consenter_host::grpc::parse_seek;
use consenter_host::proto::common as pb;
use proptest::prelude::*;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

use common::*;

/// A codec that sends and receives raw frames, to put arbitrary bytes on
/// the wire where an Envelope is expected.
#[derive(Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// Deterministic garbage.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// Sends one raw frame on a fresh stream of `method`; returns the status
/// code of the first response (Broadcast's status or Deliver's final
/// status), or Err with the gRPC error code.
async fn raw_call(addr: &str, method: &'static str, frame: Vec<u8>) -> Result<i32, tonic::Code> {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let req = tonic::Request::new(tokio_stream::iter(vec![frame]));
    let mut s = grpc.streaming(req, PathAndQuery::from_static(method), Raw).await.map_err(|e| e.code())?.into_inner();
    let msg = s.message().await.map_err(|e| e.code())?.expect("a response");
    if method.ends_with("Broadcast") {
        Ok(consenter_host::proto::orderer::BroadcastResponse::decode(&msg[..]).unwrap().status)
    } else {
        match consenter_host::proto::orderer::DeliverResponse::decode(&msg[..]).unwrap().r#type {
            Some(consenter_host::proto::orderer::deliver_response::Type::Status(s)) => Ok(s),
            other => panic!("garbage delivered a block: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_wire_is_refused_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"), &["--dev-max-message-count", "1"]);
    let good = message("devchannel", "good", 50).encode_to_vec();
    let mut frames: Vec<Vec<u8>> = (0..40).map(|i| garbage(i, 1 + (i as usize * 37) % 300)).collect();
    // Every truncation of a valid envelope.
    for cut in (1..good.len()).step_by(7) {
        frames.push(good[..cut].to_vec());
    }
    for method in ["/orderer.AtomicBroadcast/Broadcast", "/orderer.AtomicBroadcast/Deliver"] {
        for f in &frames {
            match raw_call(&node.addr, method, f.clone()).await {
                Ok(status) => assert!(status == 400 || status == 404, "{method}: {f:?} answered {status}"),
                Err(code) => assert_ne!(code, tonic::Code::Unavailable, "{method}: the node went away"),
            }
        }
    }
    // Still serving: a good envelope is ordered and delivered.
    let mut c = node.client().await;
    assert_eq!(broadcast_all(&mut c, vec![message("devchannel", "after", 50)]).await[0].0, 200);
    assert_eq!(deliver(&mut c, "devchannel", 1, 1).await.len(), 1);
}

fn valid_envelope() -> Bytes {
    envelope::build("ch", pb::HeaderType::Message, "t", Bytes::from_static(b"payload"), None).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn envelope_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(e) = Envelope::parse(Bytes::from(bytes.clone())) {
            // What parses is self-consistent.
            let pbe = pb::Envelope::decode(&bytes[..]).unwrap();
            prop_assert_eq!(e.size as usize, pbe.payload.len() + pbe.signature.len());
        }
    }

    #[test]
    fn mutated_envelopes_parse_or_fail_cleanly(pos in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
        let mut v = valid_envelope().to_vec();
        let n = v.len();
        v[pos % n] = byte;
        v.truncate(cut.max(1).min(n));
        let _ = Envelope::parse(Bytes::from(v));
    }

    #[test]
    fn seek_info_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let env = pb::Envelope { payload: Bytes::from(bytes), signature: Bytes::new() };
        let _ = parse_seek(&env);
    }
}
