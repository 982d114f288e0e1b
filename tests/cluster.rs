//! The cluster transport (`orderer.Cluster/Step`) over real TLS sockets on
//! 127.0.0.1, with the fixture orderers' TLS certificates (each serving as
//! its node's server and client certificate, as in Fabric's etcdraft):
//! two transports exchange consensus messages and submits in order, on two
//! channels over one connection; certificates that are no member's, an
//! unknown channel, a connection without a certificate and a malformed
//! message are refused, counted and answered (submits), and the stream
//! goes on; an unreachable member's queue fills and drops without blocking
//! the sender; a member whose server restarts is reconnected; an oversized
//! message is dropped and the stream goes on; the sender's own checks.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use consenter_host::cluster::{
    ClientIdentity, Inbound, Member, Refusal, SendError, Transport, TransportEvent, TransportLimits,
};
use consenter_host::proto::common::{Envelope, Status};
use consenter_host::proto::orderer::cluster_client::ClusterClient;
use consenter_host::proto::orderer::step_request::Payload as Req;
use consenter_host::proto::orderer::{ConsensusRequest, StepRequest};
use consenter_host::tls::{self, ClientAuth, dial};
use prost::Message;
use tokio::sync::{broadcast, mpsc};

fn org() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/fabric/crypto/ordererOrganizations/example.com")
}

fn tls_file(n: usize, f: &str) -> PathBuf {
    org().join(format!("orderers/orderer{n}.example.com/tls/{f}"))
}

fn tlsca() -> PathBuf {
    org().join("tlsca/tlsca.example.com-cert.pem")
}

fn identity(n: usize) -> ClientIdentity {
    ClientIdentity::from_files(&tls_file(n, "server.crt"), &tls_file(n, "server.key"), &[tlsca()]).unwrap()
}

fn member(id: u64, n: usize, endpoint: &str) -> Member {
    let cert = std::fs::read(tls_file(n, "server.crt")).unwrap();
    Member { id, endpoint: endpoint.to_string(), server_tls_cert: cert.clone(), client_tls_cert: cert }
}

/// What a test node's Inbound got.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Consensus { channel: String, from: u64, payload: Bytes },
    Submit { channel: String, from: u64, seq: u64, envelope: Bytes },
}

struct Rec(mpsc::UnboundedSender<Got>);

impl Inbound for Rec {
    fn consensus(&self, channel: &str, from: u64, payload: Bytes) {
        let _ = self.0.send(Got::Consensus { channel: channel.into(), from, payload });
    }
    fn submit(&self, channel: &str, from: u64, seq: u64, envelope: Bytes) {
        let _ = self.0.send(Got::Submit { channel: channel.into(), from, seq, envelope });
    }
}

/// A TLS gRPC server (orderer `n`'s certificate, client certificates
/// asked for as Fabric's general port does) serving a transport, on a
/// runtime of its own so that dropping it closes every connection, as a
/// process that stops would.
struct Server {
    rt: Option<tokio::runtime::Runtime>,
    addr: String,
}

impl Server {
    fn start(t: &Transport, inbound: Arc<dyn Inbound>, n: usize, addr: &str) -> Server {
        let std_listener = std::net::TcpListener::bind(addr).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap().to_string();
        let config = tls::server_config(
            &tls_file(n, "server.crt"),
            &tls_file(n, "server.key"),
            ("cert", "key"),
            ClientAuth::Request,
            tls::ALPN_H2,
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let svc = t.server(inbound);
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let incoming = tls::TlsListener::new(l, config, tls::HANDSHAKE_TIMEOUT, "test cluster", true).unwrap();
            let _ = tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming).await;
        });
        Server { rt: Some(rt), addr }
    }
}

impl Server {
    /// Stops it and waits until every task (its sockets with them) is gone.
    async fn stop(mut self) {
        if let Some(rt) = self.rt.take() {
            tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(10))).await.unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A node: a transport, its server, what it received.
struct TestNode {
    t: Transport,
    server: Option<Server>,
    got: mpsc::UnboundedReceiver<Got>,
    events: broadcast::Receiver<TransportEvent>,
    rec: Arc<Rec>,
    n: usize,
}

impl TestNode {
    fn start(n: usize, limits: TransportLimits) -> TestNode {
        let t = Transport::new(identity(n), limits);
        let (tx, got) = mpsc::unbounded_channel();
        let rec = Arc::new(Rec(tx));
        let events = t.events();
        let server = Server::start(&t, rec.clone(), n, "127.0.0.1:0");
        TestNode { t, server: Some(server), got, events, rec, n }
    }

    fn addr(&self) -> String {
        self.server.as_ref().unwrap().addr.clone()
    }

    async fn next(&mut self) -> Got {
        tokio::time::timeout(Duration::from_secs(30), self.got.recv()).await.expect("a message in time").unwrap()
    }

    /// Waits for the first event that `f` picks.
    async fn event<T>(&mut self, mut f: impl FnMut(&TransportEvent) -> Option<T>) -> T {
        let wait = async {
            loop {
                match self.events.recv().await {
                    Ok(e) => {
                        if let Some(x) = f(&e) {
                            return x;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(e) => panic!("events ended: {e}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait).await.expect("the event in time")
    }
}

fn limits() -> TransportLimits {
    TransportLimits {
        queue_depth: 1000,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..TransportLimits::default()
    }
}

fn envelope(i: u32) -> Bytes {
    Bytes::from(
        Envelope { payload: format!("payload {i}").into_bytes().into(), signature: vec![7; 8].into() }.encode_to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_exchange_consensus_and_submits_in_order() {
    let mut a = TestNode::start(0, limits());
    let mut b = TestNode::start(1, limits());
    for ch in ["ch1", "ch2"] {
        let ms = vec![member(1, 0, &a.addr()), member(2, 1, &b.addr())];
        a.t.set_members(ch, 1, ms.clone());
        b.t.set_members(ch, 2, ms);
    }
    // Sends queue before any connection is up; they go out in order.
    let mut want = Vec::new();
    for i in 0..300u32 {
        let ch = if i % 3 == 0 { "ch2" } else { "ch1" };
        if i % 5 == 0 {
            a.t.send_submit(ch, 2, u64::from(i), envelope(i)).unwrap();
            want.push(Got::Submit { channel: ch.into(), from: 1, seq: u64::from(i), envelope: envelope(i) });
        } else {
            let p = Bytes::from(format!("raft {i}"));
            a.t.send_consensus(ch, 2, p.clone()).unwrap();
            want.push(Got::Consensus { channel: ch.into(), from: 1, payload: p });
        }
    }
    let mut got = Vec::new();
    while got.len() < want.len() {
        got.push(b.next().await);
    }
    // In order per channel (each channel is its own stream).
    for ch in ["ch1", "ch2"] {
        let of = |v: &Vec<Got>| {
            v.iter()
                .filter(|g| matches!(g, Got::Consensus { channel, .. } | Got::Submit { channel, .. } if channel == ch))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(of(&got), of(&want), "{ch}");
    }
    // And back.
    b.t.send_consensus("ch1", 1, Bytes::from_static(b"hello")).unwrap();
    assert_eq!(
        a.next().await,
        Got::Consensus { channel: "ch1".into(), from: 2, payload: Bytes::from_static(b"hello") }
    );

    let sa = a.t.stats();
    let to_b = sa.peer("ch1", 2).unwrap();
    assert_eq!((to_b.sent, to_b.dropped, to_b.connected), (200, 0, true), "{sa:?}");
    assert_eq!(sa.peer("ch2", 2).unwrap().sent, 100);
    assert_eq!(sa.peer("ch1", 2).unwrap().received, 1);
    let sb = b.t.stats();
    assert_eq!(sb.peer("ch1", 1).unwrap().received + sb.peer("ch2", 1).unwrap().received, 300);
    assert!(sb.refused.is_empty(), "{sb:?}");
    assert_eq!(sa.channels["ch1"].self_id, 1);
    assert!(!sa.channels["ch1"].peers.contains_key(&1), "this node is not a peer");

    // A member removed: its stream ends and sends to it are refused.
    a.t.set_members("ch1", 1, vec![member(1, 0, &a.addr())]);
    let e = a.t.send_consensus("ch1", 2, Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(e, SendError::UnknownMember { channel: "ch1".into(), id: 2 });
    assert!(a.t.stats().peer("ch1", 2).is_none());
    // The other channel still flows over the shared connection.
    a.t.send_consensus("ch2", 2, Bytes::from_static(b"still")).unwrap();
    assert_eq!(
        b.next().await,
        Got::Consensus { channel: "ch2".into(), from: 1, payload: Bytes::from_static(b"still") }
    );
    a.t.remove_channel("ch2");
    assert!(matches!(a.t.send_consensus("ch2", 2, Bytes::new()), Err(SendError::UnknownMember { .. })));
    assert!(!a.t.stats().channels.contains_key("ch2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_unknown_channels_and_malformed_messages_are_refused() {
    let mut a = TestNode::start(0, limits());
    let b = TestNode::start(1, limits());
    let mut c = TestNode::start(2, limits());
    let ab = vec![member(1, 0, &a.addr()), member(2, 1, &b.addr())];
    a.t.set_members("ch", 1, ab.clone());
    b.t.set_members("ch", 2, ab);
    // orderer2 believes it is a member of "ch" with a: a does not.
    c.t.set_members("ch", 3, vec![member(1, 0, &a.addr()), member(3, 2, &c.addr())]);
    c.t.send_consensus("ch", 1, Bytes::from_static(b"let me in")).unwrap();
    let r = a.event(|e| match e {
        TransportEvent::Refused { channel, from, reason } => Some((channel.clone(), *from, *reason)),
        _ => None,
    });
    assert_eq!(r.await, ("ch".to_string(), None, Refusal::NotMember));
    // A refused submit is answered (FORBIDDEN, Fabric's text).
    c.t.send_submit("ch", 1, 0, envelope(1)).unwrap();
    let (status, info) = c
        .event(|e| match e {
            TransportEvent::RefusedByPeer { channel, peer: 1, status, info } if channel == "ch" => {
                Some((*status, info.clone()))
            }
            _ => None,
        })
        .await;
    assert_eq!(status, Status::Forbidden as i32);
    assert_eq!(info, "certificate extracted from TLS connection isn't authorized");
    // A channel a does not know: NOT_FOUND.
    c.t.set_members("other", 3, vec![member(1, 0, &a.addr()), member(3, 2, &c.addr())]);
    c.t.send_submit("other", 1, 0, envelope(2)).unwrap();
    let (status, info) = c
        .event(|e| match e {
            TransportEvent::RefusedByPeer { channel, status, info, .. } if channel == "other" => {
                Some((*status, info.clone()))
            }
            _ => None,
        })
        .await;
    assert_eq!((status, info.as_str()), (Status::NotFound as i32, "channel other doesn't exist"));

    // No client certificate at all (TLS, but anonymous).
    let anon = tls::grpc_client_config(&[tlsca()], None).unwrap();
    let ch = dial::connect(&a.addr(), Some(dial::ClientTls { config: anon, server_name: None })).await.unwrap();
    let req = |channel: &str, payload: Option<Req>| StepRequest {
        payload: payload.or_else(|| {
            Some(Req::ConsensusRequest(ConsensusRequest {
                channel: channel.into(),
                payload: Bytes::from_static(b"p"),
                metadata: Bytes::new(),
                ..Default::default()
            }))
        }),
    };
    let (tx, rx) = mpsc::channel(8);
    let mut anon_client = ClusterClient::new(ch);
    let _anon_stream = anon_client.step(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
    tx.send(req("ch", None)).await.unwrap();
    let r = a.event(|e| match e {
        TransportEvent::Refused { channel, from, reason: Refusal::NoCertificate } => Some((channel.clone(), *from)),
        _ => None,
    });
    assert_eq!(r.await, ("ch".to_string(), None));

    // A member's malformed message (no payload), then a good one on the
    // same stream: the stream stays up.
    let b_tls = ClientIdentity::from_files(&tls_file(1, "server.crt"), &tls_file(1, "server.key"), &[tlsca()]).unwrap();
    let ch = dial::connect(
        &a.addr(),
        Some(dial::ClientTls { config: b_tls.client_config(None).unwrap(), server_name: None }),
    )
    .await
    .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let mut raw = ClusterClient::new(ch);
    let _stream = raw.step(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
    tx.send(StepRequest { payload: None }).await.unwrap();
    tx.send(req("", None)).await.unwrap();
    tx.send(req("ch", None)).await.unwrap();
    assert_eq!(a.next().await, Got::Consensus { channel: "ch".into(), from: 2, payload: Bytes::from_static(b"p") });

    let s = a.t.stats();
    assert_eq!(s.refused_for(Refusal::NotMember), 2, "{s:?}");
    assert_eq!(s.refused_for(Refusal::UnknownChannel), 1, "{s:?}");
    assert_eq!(s.refused_for(Refusal::NoCertificate), 1, "{s:?}");
    assert_eq!(s.refused_for(Refusal::Malformed), 2, "{s:?}");
    assert_eq!(s.channels["ch"].refused, 3, "not a member twice, no certificate once: {s:?}");
    assert_eq!(s.peer("ch", 2).unwrap().received, 1);
    assert_eq!(c.t.stats().peer("ch", 1).unwrap().refused_by_peer, 1);
    // b's own messages still go through.
    b.t.send_consensus("ch", 1, Bytes::from_static(b"member")).unwrap();
    assert_eq!(
        a.next().await,
        Got::Consensus { channel: "ch".into(), from: 2, payload: Bytes::from_static(b"member") }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_members_queue_fills_and_drops_without_blocking() {
    let a = TestNode::start(0, TransportLimits { queue_depth: 8, submit_queue_depth: 4, ..limits() });
    // A port nobody listens on.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut a = a;
    a.t.set_members("ch", 1, vec![member(1, 0, &a.addr()), member(2, 1, &gone)]);
    let results: Vec<_> = (0..20).map(|i| a.t.send_consensus("ch", 2, Bytes::from(vec![i as u8; 100]))).collect();
    assert!(results[..8].iter().all(|r| r.is_ok()), "{results:?}");
    for r in &results[8..] {
        assert_eq!(r, &Err(SendError::QueueFull { channel: "ch".into(), id: 2, depth: 8 }));
    }
    // Forwarded envelopes have room of their own beyond raft's depth
    // (submit_queue_depth), and are bounded too.
    let submits: Vec<_> = (0..5).map(|i| a.t.send_submit("ch", 2, 0, envelope(i))).collect();
    assert!(submits[..4].iter().all(|r| r.is_ok()), "{submits:?}");
    assert!(matches!(submits[4], Err(SendError::QueueFull { .. })), "{submits:?}");
    let s = a.t.stats();
    let p = s.peer("ch", 2).unwrap();
    assert_eq!((p.sent, p.dropped, p.connected, p.connections), (0, 13, false, 0), "{s:?}");
    // It keeps trying.
    let reason = a.event(|e| match e {
        TransportEvent::Disconnected { peer: 2, reason, .. } => Some(reason.clone()),
        _ => None,
    });
    let reason = reason.await;
    assert!(reason.contains(&gone) && reason.contains("onnect"), "{reason}");
}

/// Backpressure for forwarded envelopes: while a member's queue of
/// submits is half full, `submit_room` waits (and says there is no room
/// when its wait ends); once the member is reachable and the queue
/// drains, the waiter is woken and every queued submit arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_full_queue_of_submits_makes_senders_wait_until_it_drains() {
    let mut a = TestNode::start(0, TransportLimits { submit_queue_depth: 8, ..limits() });
    let b_t = Transport::new(identity(1), limits());
    let (b_tx, mut b_got) = mpsc::unbounded_channel();
    // b's address, not yet served.
    let b_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let ms = vec![member(1, 0, &a.addr()), member(2, 1, &b_addr)];
    a.t.set_members("ch", 1, ms.clone());
    b_t.set_members("ch", 2, ms);
    assert!(a.t.submit_room("ch", Duration::ZERO).await, "an empty queue has room");
    assert!(a.t.submit_room("other", Duration::ZERO).await, "a channel without members never waits");
    for i in 0..3 {
        a.t.send_submit("ch", 2, 0, envelope(i)).unwrap();
    }
    assert!(a.t.submit_room("ch", Duration::ZERO).await, "3 of 8: room");
    a.t.send_submit("ch", 2, 0, envelope(3)).unwrap();
    assert!(!a.t.submit_room("ch", Duration::from_millis(50)).await, "4 of 8 (half): no room");
    // A sender waits; b comes up; the queue drains and wakes it.
    let waiter = {
        let t = a.t.clone();
        tokio::spawn(async move { t.submit_room("ch", Duration::from_secs(60)).await })
    };
    a.event(|e| matches!(e, TransportEvent::Disconnected { peer: 2, .. }).then_some(())).await;
    assert!(!waiter.is_finished(), "the sender waits while the member is unreachable");
    let _b = Server::start(&b_t, Arc::new(Rec(b_tx)), 1, &b_addr);
    assert!(tokio::time::timeout(Duration::from_secs(30), waiter).await.expect("woken in time").unwrap());
    for i in 0..4 {
        let got = tokio::time::timeout(Duration::from_secs(30), b_got.recv()).await.unwrap().unwrap();
        assert_eq!(got, Got::Submit { channel: "ch".into(), from: 1, seq: 0, envelope: envelope(i) });
    }
    assert!(a.t.submit_room("ch", Duration::ZERO).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_reconnected_after_its_server_restarts() {
    let mut a = TestNode::start(0, limits());
    let mut b = TestNode::start(1, limits());
    let ms = vec![member(1, 0, &a.addr()), member(2, 1, &b.addr())];
    a.t.set_members("ch", 1, ms.clone());
    b.t.set_members("ch", 2, ms);
    a.t.send_consensus("ch", 2, Bytes::from_static(b"before")).unwrap();
    assert_eq!(
        b.next().await,
        Got::Consensus { channel: "ch".into(), from: 1, payload: Bytes::from_static(b"before") }
    );
    // b's server stops (every connection closes), then comes back on the
    // same address.
    let addr = b.addr();
    b.server.take().unwrap().stop().await;
    a.event(|e| matches!(e, TransportEvent::Disconnected { peer: 2, .. }).then_some(())).await;
    assert!(!a.t.stats().peer("ch", 2).unwrap().connected);
    b.server = Some(Server::start(&b.t, b.rec.clone(), b.n, &addr));
    a.event(|e| matches!(e, TransportEvent::Connected { peer: 2, .. }).then_some(())).await;
    a.t.send_consensus("ch", 2, Bytes::from_static(b"after")).unwrap();
    assert_eq!(b.next().await, Got::Consensus { channel: "ch".into(), from: 1, payload: Bytes::from_static(b"after") });
    let p = a.t.stats().peer("ch", 2).unwrap().clone();
    assert!(p.connected && p.connections >= 2, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_dropped_and_the_stream_stays_up() {
    let a = TestNode::start(0, TransportLimits { max_message_bytes: 1 << 20, ..limits() });
    let mut b = TestNode::start(1, TransportLimits { max_message_bytes: 64 << 10, ..limits() });
    let ms = vec![member(1, 0, &a.addr()), member(2, 1, &b.addr())];
    a.t.set_members("ch", 1, ms.clone());
    b.t.set_members("ch", 2, ms);
    // Over b's limit (within a's): b drops it.
    a.t.send_consensus("ch", 2, Bytes::from(vec![1u8; 100 << 10])).unwrap();
    let r = b.event(|e| match e {
        TransportEvent::Refused { channel, from, reason } => Some((channel.clone(), *from, *reason)),
        _ => None,
    });
    assert_eq!(r.await, ("ch".to_string(), Some(1), Refusal::Oversized));
    a.t.send_consensus("ch", 2, Bytes::from_static(b"small")).unwrap();
    assert_eq!(b.next().await, Got::Consensus { channel: "ch".into(), from: 1, payload: Bytes::from_static(b"small") });
    let s = b.t.stats();
    assert_eq!((s.peer("ch", 1).unwrap().refused, s.peer("ch", 1).unwrap().received), (1, 1), "{s:?}");
    assert_eq!(s.refused_for(Refusal::Oversized), 1);

    // The sender's own checks.
    let e = a.t.send_consensus("ch", 2, Bytes::from(vec![0u8; (1 << 20) + 1])).unwrap_err();
    assert_eq!(e, SendError::TooLarge { size: (1 << 20) + 1, max: 1 << 20 });
    let e = a.t.send_submit("ch", 2, 0, Bytes::from_static(b"\xff\xff not an envelope")).unwrap_err();
    assert!(matches!(e, SendError::Malformed(_)), "{e}");
    assert!(
        matches!(a.t.send_consensus("ch", 1, Bytes::new()), Err(SendError::UnknownMember { id: 1, .. })),
        "to self"
    );
    assert!(matches!(a.t.send_consensus("nope", 2, Bytes::new()), Err(SendError::UnknownMember { .. })));
}

#[test]
fn a_transport_made_outside_a_runtime_runs_on_its_own() {
    let t = Transport::new(identity(0), limits());
    t.set_members("ch", 1, vec![member(1, 0, "127.0.0.1:1"), member(2, 1, "127.0.0.1:1")]);
    assert!(t.send_consensus("ch", 2, Bytes::from_static(b"queued")).is_ok());
    assert_eq!(t.stats().peer("ch", 2).unwrap().dropped, 0);
    drop(t);
    // Bad identity files are refused with the file named.
    let e = ClientIdentity::from_files(&tls_file(0, "server.crt"), &tls_file(1, "server.key"), &[tlsca()]).unwrap_err();
    assert!(e.to_string().contains("orderer1.example.com/tls/server.key"), "{e}");
    let e = ClientIdentity::from_files(
        &tls_file(0, "server.crt"),
        &tls_file(0, "server.key"),
        &[tls_file(0, "server.key")],
    )
    .unwrap_err();
    assert!(e.to_string().contains("--tls-root-ca") && e.to_string().contains("no CERTIFICATE"), "{e}");
}

/// A transport as orderer1 that takes a node process (orderer0's
/// certificate at `addr`) for member 1 of `channel`.
/// The flags of a cluster port of its own on a free port, with `cert`
/// and `key` as its TLS identity.
fn own_cluster_port<'a>(cert: &'a str, key: &'a str) -> [&'a str; 6] {
    ["--cluster-listen", "127.0.0.1:0", "--cluster-tls-cert", cert, "--cluster-tls-key", key]
}

/// The address of a node's own cluster port (its `cluster service on`
/// banner line).
fn cluster_service_addr(node: &common::NodeProc) -> String {
    let line =
        (0..3).map(|_| node.next_line()).find(|l| l.starts_with("cluster service on ")).expect("the cluster line");
    line.strip_prefix("cluster service on ").unwrap().split_whitespace().next().unwrap().to_string()
}

fn dialer(addr: &str, channel: &str) -> (Transport, broadcast::Receiver<TransportEvent>) {
    let t = Transport::new(identity(1), limits());
    let events = t.events();
    t.set_members(channel, 2, vec![member(1, 0, addr), member(2, 1, "127.0.0.1:1")]);
    (t, events)
}

async fn refused_by_peer(events: &mut broadcast::Receiver<TransportEvent>) -> (i32, String) {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(TransportEvent::RefusedByPeer { status, info, .. }) => return (status, info),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.expect("an answer in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_serves_the_cluster_service_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    let (cert, key, ca) = (s(tls_file(0, "server.crt")), s(tls_file(0, "server.key")), s(tlsca()));
    // On the gRPC port: the node knows no cluster channel yet, so a
    // submit from a well-authenticated orderer is answered NOT_FOUND.
    let node =
        common::NodeProc::start(&dir.path().join("a"), &["--tls-cert", &cert, "--tls-key", &key, "--tls-root-ca", &ca]);
    assert!(node.banner[0].contains("orderer.Cluster, TLS"), "{:?}", node.banner);
    let (t, mut events) = dialer(&node.addr, "devchannel");
    t.send_submit("devchannel", 1, 0, envelope(1)).unwrap();
    let (status, info) = refused_by_peer(&mut events).await;
    assert_eq!((status, info.as_str()), (Status::NotFound as i32, "channel devchannel doesn't exist"));
    drop(node);

    // On a cluster port of its own: mutual TLS against --tls-root-ca; the
    // gRPC port no longer serves it.
    let mut args = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str(), "--tls-root-ca", ca.as_str()];
    args.extend(own_cluster_port(&cert, &key));
    let node = common::NodeProc::start(&dir.path().join("b"), &args);
    assert!(!node.banner[0].contains("orderer.Cluster"), "{:?}", node.banner);
    let cluster_addr = cluster_service_addr(&node);
    let (t, mut events) = dialer(&cluster_addr, "devchannel");
    t.send_submit("devchannel", 1, 0, envelope(2)).unwrap();
    assert_eq!(refused_by_peer(&mut events).await.0, Status::NotFound as i32);
    // Without a client certificate the cluster port refuses the handshake.
    let anon = tls::grpc_client_config(&[tlsca()], None).unwrap();
    let r = dial::connect(&cluster_addr, Some(dial::ClientTls { config: anon, server_name: None })).await;
    let e = r.expect_err("refused").to_string();
    assert!(e.contains("CertificateRequired"), "{e}");
    // The gRPC port answers the Step call with UNIMPLEMENTED.
    let (t, mut events) = dialer(&node.addr, "devchannel");
    t.send_consensus("devchannel", 1, Bytes::from_static(b"x")).unwrap();
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await.unwrap() {
            Ok(TransportEvent::Disconnected { reason, .. }) => break reason,
            _ => continue,
        }
    };
    assert!(reason.contains("not implemented"), "{reason}");
}

/// A cluster port of its own with no `--tls-root-ca`: client certificates
/// chaining to a TLS CA of an organization of one of the node's channels
/// are accepted (Fabric updates its cluster listener's client CAs with
/// every config), others are refused in the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_port_of_its_own_trusts_the_channels_tls_cas() {
    let dir = tempfile::tempdir().unwrap();
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    let (cert, key) = (s(tls_file(0, "server.crt")), s(tls_file(0, "server.key")));
    let msp = s(org().join("orderers/orderer0.example.com/msp"));
    let genesis = s(org().join("../../../blocks/solochannel.genesis.block"));
    let mut args = vec!["--msp-dir", msp.as_str(), "--mspid", "OrdererMSP", "--tls-cert", cert.as_str()];
    args.extend(["--tls-key", key.as_str(), "--genesis-block", genesis.as_str()]);
    args.extend(own_cluster_port(&cert, &key));
    let node = common::NodeProc::start(&dir.path().join("n"), &args);
    let cluster_addr = cluster_service_addr(&node);
    // orderer1's certificate (tlsca.example.com, OrdererMSP's TLS CA in
    // solochannel): the handshake passes; solochannel has no cluster
    // members on a solo node, so the submit is answered NOT_FOUND.
    let (t, mut events) = dialer(&cluster_addr, "solochannel");
    t.send_submit("solochannel", 1, 0, envelope(3)).unwrap();
    let (status, info) = refused_by_peer(&mut events).await;
    assert_eq!((status, info.as_str()), (Status::NotFound as i32, "channel solochannel doesn't exist"));
    // A certificate of a CA no channel names: refused in the handshake.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "not-a-channel-ca");
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["intruder".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &rcgen::Issuer::new(ca_params, &ca_key))
        .unwrap();
    let (leaf_pem, key_pem) = (dir.path().join("intruder.crt"), dir.path().join("intruder.key"));
    std::fs::write(&leaf_pem, leaf.pem()).unwrap();
    std::fs::write(&key_pem, leaf_key.serialize_pem()).unwrap();
    let config = ClientIdentity::from_files(&leaf_pem, &key_pem, &[tlsca()]).unwrap().client_config(None).unwrap();
    let r = dial::connect(&cluster_addr, Some(dial::ClientTls { config, server_name: None })).await;
    let e = r.expect_err("refused").to_string();
    assert!(e.contains("UnknownCA"), "{e}");
    // The node goes on serving members.
    t.send_submit("solochannel", 1, 0, envelope(4)).unwrap();
    assert_eq!(refused_by_peer(&mut events).await.0, Status::NotFound as i32);
}
