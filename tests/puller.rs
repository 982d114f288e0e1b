//! The block puller (Fabric's cluster BlockPuller) over Deliver with
//! mutual TLS: against a real node process serving the fixture's solo
//! channel, it pulls a range signed by the node and verifies it, going
//! past an unreachable endpoint; a requester the channel's Readers refuse
//! gets FORBIDDEN; against a TLS test orderer serving the fixture ledger
//! (blocks written and signed by a Fabric v2.5 orderer), tampered blocks
//! (data, previous hash, signer, number) are refused with the reason, and
//! with a good endpoint next the pull resumes there at the refused block.

mod common;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use consenter_host::block;
use consenter_host::channel::ChannelConfig;
use consenter_host::cluster::ClientIdentity;
use consenter_host::cluster::puller::{BlockPuller, Failure, PullError, PullerConfig};
use consenter_host::cluster::verify::{BlockVerifier, VerifyError};
use consenter_host::proto::common::{self as pb, Block, ChannelHeader, Payload, SignatureHeader};
use consenter_host::proto::msp::SerializedIdentity;
use consenter_host::proto::orderer::atomic_broadcast_client::AtomicBroadcastClient;
use consenter_host::proto::orderer::atomic_broadcast_server::{AtomicBroadcast, AtomicBroadcastServer};
use consenter_host::proto::orderer::seek_position::Type as Pos;
use consenter_host::proto::orderer::{BroadcastResponse, DeliverResponse, SeekInfo, deliver_response};
use consenter_host::signer::Signer;
use consenter_host::tls::{self, ClientAuth, dial};
use prost::Message;
use sha2::Digest;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/fabric")
}

fn orderer_org(p: &str) -> PathBuf {
    fixtures().join("crypto/ordererOrganizations/example.com").join(p)
}

fn tlsca() -> PathBuf {
    orderer_org("tlsca/tlsca.example.com-cert.pem")
}

fn s(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

fn read_block(p: PathBuf) -> Block {
    Block::decode(Bytes::from(std::fs::read(p).unwrap())).unwrap()
}

fn ledger_block(n: u64) -> Block {
    read_block(fixtures().join(format!("ledger/appchannel/{n}.block")))
}

/// orderer1's identity: TLS (client certificate, the orderer TLS CA) and
/// MSP (OrdererMSP, a reader of every fixture channel).
fn orderer1_tls() -> ClientIdentity {
    let t = orderer_org("orderers/orderer1.example.com/tls");
    ClientIdentity::from_files(&t.join("server.crt"), &t.join("server.key"), &[tlsca()]).unwrap()
}

fn orderer1_signer() -> Arc<Signer> {
    Arc::new(Signer::from_msp_dir(&orderer_org("orderers/orderer1.example.com/msp"), "OrdererMSP").unwrap())
}

fn verifier_from(genesis: &Block) -> BlockVerifier {
    BlockVerifier::new(ChannelConfig::from_config_block(genesis).unwrap(), 0, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_and_verifies_a_range_from_a_tls_node() {
    let dir = tempfile::tempdir().unwrap();
    let o0 = orderer_org("orderers/orderer0.example.com");
    let node = NodeProc::start(
        &dir.path().join("data"),
        &[
            "--msp-dir",
            &s(o0.join("msp")),
            "--mspid",
            "OrdererMSP",
            "--no-dev-channel",
            "--tls-cert",
            &s(o0.join("tls/server.crt")),
            "--tls-key",
            &s(o0.join("tls/server.key")),
            "--tls-client-root-ca",
            &s(tlsca()),
        ],
    );
    let genesis_path = fixtures().join("blocks/solochannel.genesis.block");
    let (ok, out) = cli(&["channel", "join", "-o", node.admin.as_ref().unwrap(), "-b", &s(genesis_path.clone())]);
    assert!(ok, "{out}");

    // 500 envelopes signed by User1@org1 (a writer): block 1 (MaxMessageCount),
    // then one more: block 2 at the BatchTimeout. Over mutual TLS as the
    // orderer org's admin.
    let admin_tls = orderer_org("users/Admin@example.com/tls");
    let config =
        tls::grpc_client_config(&[tlsca()], Some((&admin_tls.join("client.crt"), &admin_tls.join("client.key"))))
            .unwrap();
    let ch = dial::connect(&node.addr, Some(dial::ClientTls { config, server_name: None })).await.unwrap();
    let mut client = AtomicBroadcastClient::new(ch);
    let user = Signer::from_msp_dir(
        &fixtures().join("crypto/peerOrganizations/org1.example.com/users/User1@org1.example.com/msp"),
        "Org1MSP",
    )
    .unwrap();
    let envs: Vec<_> =
        (0..501).map(|i| signed_message("solochannel", &format!("pull-{i}"), 100, Some(&user))).collect();
    let acks = broadcast_all(&mut client, envs).await;
    assert!(acks.iter().all(|(st, _)| *st == 200), "{:?}", acks.iter().find(|a| a.0 != 200));

    // Pull 0..=2 as orderer1; the first endpoint is unreachable.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let genesis = read_block(genesis_path);
    let mut cfg =
        PullerConfig::new("solochannel", vec![gone.clone(), node.addr.clone()], orderer1_tls(), orderer1_signer());
    // Block 2 comes at the channel's 2 s BatchTimeout: wait for it.
    cfg.response_timeout = std::time::Duration::from_secs(60);
    let mut puller = BlockPuller::new(cfg.clone(), verifier_from(&genesis));
    let blocks = puller.pull(0, 2).await.unwrap();
    assert_eq!(blocks.len(), 3);
    assert_eq!(blocks[0], genesis, "block 0 is the genesis block as joined");
    assert_eq!(blocks[1].data.as_ref().unwrap().data.len(), 500);
    assert_eq!(blocks[2].data.as_ref().unwrap().data.len(), 1);
    for w in blocks.windows(2) {
        let prev = block::header_hash(w[0].header.as_ref().unwrap());
        assert_eq!(w[1].header.as_ref().unwrap().previous_hash.as_ref(), prev);
    }
    assert_eq!(puller.verifier().next(), 3);
    // Asking for what the verifier does not expect next is refused.
    assert!(matches!(puller.pull(1, 2).await, Err(PullError::NotNext { expected: 3, .. })));

    // Not waiting (a catch-up on a member's unproven claim): a range past
    // the node's height hands out the blocks that exist, then every
    // endpoint answers NOT_FOUND at the first missing one, at once (the
    // 60 s response timeout is not waited).
    let mut no_wait =
        BlockPuller::new(PullerConfig { endpoints: vec![node.addr.clone()], ..cfg.clone() }, verifier_from(&genesis));
    no_wait.set_wait(false);
    let t = std::time::Instant::now();
    let mut got = Vec::new();
    let e = no_wait.pull_each(0, 1_000_000, |b| got.push(b)).await.unwrap_err();
    assert_eq!(got, blocks, "the blocks that exist, in order");
    match &e {
        PullError::AllFailed { block: 3, failures, .. } => {
            assert!(matches!(failures[0].failure, Failure::Status { status: 404 }), "{e}")
        }
        _ => panic!("{e}"),
    }
    assert!(t.elapsed() < std::time::Duration::from_secs(30), "{:?}", t.elapsed());

    // A requester that is not a reader of the channel (Org3, in no
    // channel): FORBIDDEN from the node, from every endpoint.
    let outsider = Arc::new(
        Signer::from_msp_dir(
            &fixtures().join("crypto-outsider/peerOrganizations/org3.example.com/users/User1@org3.example.com/msp"),
            "Org3MSP",
        )
        .unwrap(),
    );
    let cfg = PullerConfig { signer: outsider, endpoints: vec![node.addr.clone()], ..cfg };
    let e = BlockPuller::new(cfg, verifier_from(&genesis)).pull(0, 0).await.unwrap_err();
    match &e {
        PullError::AllFailed { block: 0, failures, .. } => {
            assert!(matches!(failures[0].failure, Failure::Status { status: 403 }), "{e}")
        }
        _ => panic!("{e}"),
    }
    assert!(e.to_string().contains("FORBIDDEN"), "{e}");
}

/// What a test orderer saw of a Deliver request.
#[derive(Debug)]
struct Seen {
    start: u64,
    mspid: String,
    tls_bound: bool,
}

/// An orderer that serves fixed blocks over TLS (client certificates
/// required) and reports each request.
struct FixedOrderer {
    blocks: Vec<Block>,
    seen: mpsc::UnboundedSender<Seen>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AtomicBroadcast for FixedOrderer {
    type BroadcastStream = BoxStream<BroadcastResponse>;
    type DeliverStream = BoxStream<DeliverResponse>;

    async fn broadcast(&self, _: Request<Streaming<pb::Envelope>>) -> Result<Response<Self::BroadcastStream>, Status> {
        Err(Status::unimplemented("read only"))
    }

    async fn deliver(&self, req: Request<Streaming<pb::Envelope>>) -> Result<Response<Self::DeliverStream>, Status> {
        let cert = req.peer_certs().and_then(|c| c.first().map(|c| c.to_vec())).unwrap_or_default();
        let env = req.into_inner().message().await?.ok_or_else(|| Status::invalid_argument("no request"))?;
        let payload = Payload::decode(env.payload).unwrap();
        let header = payload.header.unwrap();
        let ch = ChannelHeader::decode(header.channel_header).unwrap();
        let creator = SignatureHeader::decode(header.signature_header).unwrap().creator;
        let mspid = SerializedIdentity::decode(creator).unwrap().mspid;
        let seek = SeekInfo::decode(payload.data).unwrap();
        let num = |p: Option<consenter_host::proto::orderer::SeekPosition>| match p.and_then(|p| p.r#type) {
            Some(Pos::Specified(s)) => s.number,
            other => panic!("unexpected position {other:?}"),
        };
        let (start, stop) = (num(seek.start), num(seek.stop));
        let hash: [u8; 32] = sha2::Sha256::digest(&cert).into();
        let tls_bound = ch.tls_cert_hash.as_ref() == hash;
        let _ = self.seen.send(Seen { start, mspid, tls_bound });
        let mut out: Vec<Result<DeliverResponse, Status>> = self
            .blocks
            .iter()
            .filter(|b| (start..=stop).contains(&b.header.as_ref().unwrap().number))
            .map(|b| Ok(DeliverResponse { r#type: Some(deliver_response::Type::Block(b.clone())) }))
            .collect();
        out.push(Ok(DeliverResponse { r#type: Some(deliver_response::Type::Status(pb::Status::Success as i32)) }));
        Ok(Response::new(Box::pin(tokio_stream::iter(out))))
    }
}

/// Serves `blocks` with orderer2's TLS certificate on 127.0.0.1; returns
/// its address and the requests it sees.
async fn fixed_orderer(blocks: Vec<Block>) -> (String, mpsc::UnboundedReceiver<Seen>) {
    let t = orderer_org("orderers/orderer2.example.com/tls");
    let roots = tls::load_roots("ca", &[tlsca()]).unwrap();
    let config = tls::server_config(
        &t.join("server.crt"),
        &t.join("server.key"),
        ("cert", "key"),
        ClientAuth::Require(Arc::new(roots)),
        tls::ALPN_H2,
    )
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let incoming = tls::TlsListener::new(l, config, tls::HANDSHAKE_TIMEOUT, "fixed orderer", true).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let svc = AtomicBroadcastServer::new(FixedOrderer { blocks, seen: tx }).max_encoding_message_size(usize::MAX);
    tokio::spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming));
    (addr, rx)
}

fn fabric_ledger() -> Vec<Block> {
    (0..5).map(ledger_block).collect()
}

fn puller(endpoints: Vec<String>) -> BlockPuller {
    let cfg = PullerConfig::new("appchannel", endpoints, orderer1_tls(), orderer1_signer());
    BlockPuller::new(cfg, verifier_from(&ledger_block(0)))
}

/// Pulls 0..=4 from a test orderer serving `blocks`; returns the blocks
/// handed out and the error.
async fn pull_tampered(blocks: Vec<Block>) -> (Vec<u64>, PullError) {
    let (addr, _seen) = fixed_orderer(blocks).await;
    let mut got = vec![];
    let e = puller(vec![addr])
        .pull_each(0, 4, |b| got.push(b.header.unwrap().number))
        .await
        .expect_err("a tampered block is refused");
    (got, e)
}

fn verify_failure(e: &PullError) -> &VerifyError {
    match e {
        PullError::AllFailed { failures, .. } => match &failures[0].failure {
            Failure::Verify(v) => v,
            f => panic!("not a verification failure: {f}"),
        },
        e => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fabric_blocks_verify_and_tampered_ones_are_refused() {
    // The Fabric orderer's own blocks: all verify; the request was signed
    // by OrdererMSP and bound to the TLS certificate.
    let (addr, mut seen) = fixed_orderer(fabric_ledger()).await;
    let blocks = puller(vec![addr.clone()]).pull(0, 4).await.unwrap();
    assert_eq!(blocks, fabric_ledger());
    let s = seen.recv().await.unwrap();
    assert_eq!((s.start, s.mspid.as_str(), s.tls_bound), (0, "OrdererMSP", true), "{s:?}");

    // Changed data in block 2: blocks 0 and 1 come out, then the refusal.
    let mut bad = fabric_ledger();
    let d = &mut bad[2].data.as_mut().unwrap().data[3];
    let mut x = d.to_vec();
    x[60] ^= 0x01;
    *d = x.into();
    let (got, e) = pull_tampered(bad.clone()).await;
    assert_eq!(got, vec![0, 1]);
    assert!(matches!(verify_failure(&e), VerifyError::DataHash { number: 2, .. }), "{e}");
    let text = e.to_string();
    // Which block, which endpoint, what failed.
    assert!(text.starts_with("pulling block 2 of channel appchannel: every endpoint failed: 127.0.0.1:"), "{text}");
    assert!(text.contains(": block 2: refused its block: block 2: data hash"), "{text}");

    // Another previous hash in block 3.
    let mut ph = fabric_ledger();
    ph[3].header.as_mut().unwrap().previous_hash = Bytes::from(vec![0xab; 32]);
    let (got, e) = pull_tampered(ph).await;
    assert_eq!(got, vec![0, 1, 2]);
    assert!(matches!(verify_failure(&e), VerifyError::PreviousHash { number: 3, .. }), "{e}");

    // Block 1 re-signed by a client of Org1: the hash chain holds, the
    // BlockValidation policy (the orderer org's writers) does not.
    let mut resigned = fabric_ledger();
    let user = Signer::from_msp_dir(
        &fixtures().join("crypto/peerOrganizations/org1.example.com/users/User1@org1.example.com/msp"),
        "Org1MSP",
    )
    .unwrap();
    let (last_config, md) = block::last_config_and_metadata(&resigned[1]);
    block::sign_block(&mut resigned[1], last_config, &md, &user).unwrap();
    let (got, e) = pull_tampered(resigned).await;
    assert_eq!(got, vec![0]);
    let v = verify_failure(&e);
    assert!(matches!(v, VerifyError::Signatures { number: 1, .. }), "{e}");
    assert!(v.to_string().contains("/Channel/Orderer/BlockValidation"), "{v}");

    // A block missing: block 3 where 2 was due.
    let mut gap = fabric_ledger();
    gap.remove(2);
    let (got, e) = pull_tampered(gap).await;
    assert_eq!(got, vec![0, 1]);
    assert_eq!(verify_failure(&e), &VerifyError::Number { expected: 2, got: 3 });

    // The tampered orderer first, a good one next: the pull goes on there
    // from the refused block.
    let (bad_addr, _bad_seen) = fixed_orderer(bad).await;
    let (good_addr, mut good_seen) = fixed_orderer(fabric_ledger()).await;
    let mut p = puller(vec![bad_addr, good_addr]);
    assert_eq!(p.pull(0, 4).await.unwrap(), fabric_ledger());
    assert_eq!(good_seen.recv().await.unwrap().start, 2, "resumed at the refused block");
    assert_eq!(p.verifier().next(), 5);
}
