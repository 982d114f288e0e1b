//! etcdraft under faults, on real node processes over loopback TLS, from
//! the fixtures' raft genesis blocks and crypto:
//! - five nodes (`raft5channel`): two killed with SIGKILL (the leader among
//!   them), the other three keep ordering; a third killed, ordering stops
//!   and Broadcast answers SERVICE_UNAVAILABLE (check-quorum: the leader
//!   steps down); the three restarted, ordering resumes and the five
//!   ledgers agree;
//! - a minority cut off by a TCP proxy standing on its consenter endpoint
//!   (a follower, then the leader): it writes no block while the majority
//!   orders, and once healed it follows the majority's chain (no fork) and
//!   does not disrupt its leader;
//! - hostile cluster input: Step streams from certificates that are no
//!   consenter's (refused, counted, answered FORBIDDEN), and from a
//!   consenter's own certificate: garbage, an oversized message, replayed
//!   raft messages (captured from the cluster itself), an unknown channel,
//!   messages of another consensus type claiming a far greater height
//!   (dropped; at most one catch-up per 2 s, pulling only what exists);
//!   the cluster keeps ordering, no election, the ledgers agree;
//! - Fabric's Node.js SDK (tests/node/interop.js) against a follower over
//!   TLS with User1@org1's identity.
//!
//! The genesis blocks fix the consenter ports (7050 + 100·i): the tests of
//! this file run one at a time (`PORTS`), and cargo runs test binaries one
//! after another, so they never meet tests/raft.rs's clusters.

mod common;
mod raft_cluster;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use consenter_host::cluster::{ClientIdentity, Inbound, Member, Transport, TransportLimits};
use consenter_host::proto::common::Envelope;
use consenter_host::proto::orderer::cluster_client::ClusterClient;
use consenter_host::proto::orderer::step_request::Payload as Req;
use consenter_host::proto::orderer::step_response::Payload as Resp;
use consenter_host::proto::orderer::{ConsensusRequest, StepRequest, StepResponse, SubmitRequest, SubmitResponse};
use consenter_host::tls::{self, ClientAuth, dial};
use prost::Message;
use raft_cluster::*;
use tokio::sync::mpsc;

/// The genesis blocks fix the nodes' ports: one cluster at a time.
static PORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Five nodes: two down, the three left order; three down, Broadcast
/// answers SERVICE_UNAVAILABLE and nothing is written; all back, ordering
/// resumes and every ledger agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_order_with_two_down_stop_with_three_down_and_resume() {
    let _ports = PORTS.lock().await;
    let t0 = Instant::now();
    let net = Net::raft5();
    let dir = test_dir("five");
    let data = |i: usize| dir.path().join(format!("n{i}"));
    let mut nodes: Vec<Option<NodeProc>> = (0..5).map(|i| Some(net.start(i, &data(i)))).collect();
    let l = net.leader(&nodes).await;
    let mut tracked = Vec::new();
    for i in 0..5 {
        tracked.extend(net.broadcast_until_ok(i, &txs(&format!("five-via{i}"), 10)).await);
    }
    let all = [0, 1, 2, 3, 4];
    let chain5 = net.all_agree(&all, &tracked).await;
    ordered_once(&chain5, &tracked);

    // Two killed with SIGKILL, the leader and a follower: the three left
    // elect a leader among them and order through each of them.
    let f = (l + 1) % 5;
    for k in [l, f] {
        nodes[k].take().unwrap().kill();
    }
    let up: Vec<usize> = all.iter().copied().filter(|i| nodes[*i].is_some()).collect();
    let l3 = net.leader_among(&nodes, &up, secs(60)).await;
    assert!(up.contains(&l3));
    let mut three = Vec::new();
    for &i in &up {
        three.extend(net.broadcast_until_ok(i, &txs(&format!("three-via{i}"), 10)).await);
    }
    let chain3 = net.all_agree(&up, &three).await;
    same_chain(&chain3[..chain5.len()], &chain5);
    ordered_once(&chain3, &tracked);
    ordered_once(&chain3, &three);
    tracked.extend(three);

    // A third killed (a follower): the leader is left with two of five,
    // check-quorum makes it step down, and within a bounded time every
    // node left answers SERVICE_UNAVAILABLE and none leads.
    let victim = *up.iter().find(|i| **i != l3).unwrap();
    nodes[victim].take().unwrap().kill();
    let left: Vec<usize> = up.iter().copied().filter(|i| *i != victim).collect();
    let killed_at = Instant::now();
    let mut probe = 0;
    let mut last_info = String::new();
    loop {
        let mut stopped = true;
        for &i in &left {
            probe += 1;
            let (st, info) = net.broadcast(i, &[format!("probe-{probe}")]).await.remove(0);
            let c = net.cluster_info(nodes[i].as_ref().unwrap()).await.unwrap_or_default();
            stopped &= st == 503 && c["leader"] == 0 && c["isLeader"] == false;
            last_info = format!("node {i}: status {st} {info:?}, cluster {c}");
        }
        if stopped {
            break;
        }
        assert!(killed_at.elapsed() < secs(45), "ordering did not stop within 45 s: {last_info}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stop_time = killed_at.elapsed();
    // ...and stays stopped: no node writes a block, Broadcast keeps
    // answering SERVICE_UNAVAILABLE.
    let mut heights = Vec::new();
    for &i in &left {
        heights.push(net.height(nodes[i].as_ref().unwrap()).await);
    }
    let window = Instant::now();
    while window.elapsed() < secs(3) {
        for (k, &i) in left.iter().enumerate() {
            probe += 1;
            let (st, info) = net.broadcast(i, &[format!("probe-{probe}")]).await.remove(0);
            assert_eq!(st, 503, "node {i} without a quorum: {info}");
            assert_eq!(net.height(nodes[i].as_ref().unwrap()).await, heights[k], "node {i} wrote a block");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The three restarted from their ledgers: a leader again, ordering
    // through every node, five identical ledgers that keep every block
    // written before.
    for k in [l, f, victim] {
        nodes[k] = Some(net.start(k, &data(k)));
    }
    let back = Instant::now();
    net.leader(&nodes).await;
    let mut after = Vec::new();
    for i in all {
        after.extend(net.broadcast_until_ok(i, &txs(&format!("after-via{i}"), 10)).await);
    }
    let resumed = back.elapsed();
    let last = net.all_agree(&all, &after).await;
    same_chain(&last[..chain3.len()], &chain3);
    ordered_once(&last, &tracked);
    ordered_once(&last, &after);
    let mut crashed = Vec::new();
    for n in nodes.iter().flatten() {
        crashed.push(crashes(&net, n).await);
    }
    eprintln!(
        "five nodes: SERVICE_UNAVAILABLE {stop_time:?} after the third kill; ordering through all five {resumed:?} \
         after the restarts; {} blocks; plugin crashes per node {crashed:?}; test {:?}",
        last.len(),
        t0.elapsed()
    );
}

/// `consenter.crashes` of the channel on `node`.
async fn crashes(net: &Net, node: &NodeProc) -> u64 {
    net.show(node).await.and_then(|v| v["consenter"]["crashes"].as_u64()).expect("consenter.crashes")
}

/// A leader that loses its quorum after it created a block (accepted
/// Broadcasts, cut a batch, proposed it) steps down; when the others
/// return and the cluster orders again, it must follow without its plugin
/// crashing. (It used to: its host still counted the block it created
/// and never wrote, so the next block committed at that height was
/// refused by `block-from-bytes`; a foreign block is now checked against
/// the last written block, voiding what a deposed leader created.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_its_quorum_with_a_block_in_flight_follows_without_crashing() {
    let _ports = PORTS.lock().await;
    let net = Net::raft3();
    let dir = test_dir("stepdown");
    let data = |i: usize| dir.path().join(format!("n{i}"));
    let mut nodes: Vec<Option<NodeProc>> = (0..3).map(|i| Some(net.start(i, &data(i)))).collect();
    let mut tracked = net.broadcast_until_ok(0, &txs("before", 10)).await;
    net.all_agree(&[0, 1, 2], &tracked).await;
    let l = net.leader(&nodes).await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    for &f in &followers {
        nodes[f].take().unwrap().kill();
    }
    // The leader does not know yet: it accepts, and cuts a block at the
    // batch timeout (2 s), before check-quorum (5 s at least) makes it
    // step down.
    let acks = net.broadcast(l, &txs("in-flight", 10)).await;
    assert!(acks.iter().all(|(st, _)| *st == 200), "{acks:?}");
    let deadline = Instant::now() + secs(30);
    let mut k = 0;
    loop {
        k += 1;
        let (st, _) = net.broadcast(l, &[format!("probe-{k}")]).await.remove(0);
        if st == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "the leader never stepped down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for &f in &followers {
        nodes[f] = Some(net.start(f, &data(f)));
    }
    net.leader(&nodes).await;
    for i in 0..3 {
        tracked.extend(net.broadcast_until_ok(i, &txs(&format!("after-via{i}"), 10)).await);
    }
    let chain = net.all_agree(&[0, 1, 2], &tracked).await;
    ordered_once(&chain, &tracked);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(crashes(&net, n.as_ref().unwrap()).await, 0, "node {i}'s plugin crashed (old leader: {l})");
    }
}

/// A follower stopped while the others order past their log compaction
/// (SnapshotIntervalSize, 16 MiB by default) gets a snapshot when it
/// returns and catches up by pulling blocks, while load goes on. (Its
/// plugin used to panic in raft-rs as soon as an entry committed during
/// the catch-up: `RawNode::advance` counted the held-back entry as
/// applied; the plugin now uses `advance_append` and applies itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_compacted_log_catches_up_by_pulling_under_load() {
    let _ports = PORTS.lock().await;
    let t0 = Instant::now();
    let net = Net::raft3();
    let dir = test_dir("compaction");
    let data = |i: usize| dir.path().join(format!("n{i}"));
    let mut nodes: Vec<Option<NodeProc>> = (0..3).map(|i| Some(net.start(i, &data(i)))).collect();
    let mut tracked = net.broadcast_until_ok(0, &txs("before", 10)).await;
    net.all_agree(&[0, 1, 2], &tracked).await;
    let l = net.leader(&nodes).await;
    let v = (l + 1) % 3;
    nodes[v].take().unwrap().kill();
    // The leader's queue to V fills up (raft's heartbeats, every 500 ms)
    // and drops what comes next: V cannot get the blocks from messages
    // queued while it was down.
    let deadline = Instant::now() + secs(120);
    loop {
        let s = cluster_stats(nodes[l].as_ref().unwrap()).await;
        if s.channels[net.channel].peers[&(v as u64 + 1)].dropped > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the queue to node {v} never filled");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // About 2 KiB per envelope (1000 bytes of data, User1's certificate,
    // the signature): 12,000 of them are over 20 MiB of raft entries.
    let mut streams = Vec::new();
    for s in 0..4 {
        let net = net.clone();
        streams.push(tokio::spawn(async move {
            let mut ok = Vec::new();
            for k in 0..6 {
                ok.extend(net.broadcast_until_ok(l, &txs(&format!("bulk{s}-{k}"), 500)).await);
            }
            ok
        }));
    }
    for st in streams {
        tracked.extend(st.await.unwrap());
    }
    eprintln!("compaction: {} envelopes ordered without node {v} in {:?}", tracked.len(), t0.elapsed());
    // V returns while load goes on.
    nodes[v] = Some(net.start(v, &data(v)));
    let load = {
        let net = net.clone();
        tokio::spawn(async move {
            let mut ok = Vec::new();
            for k in 0..20 {
                ok.extend(net.broadcast_until_ok(l, &txs(&format!("during{k}"), 50)).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ok
        })
    };
    tracked.extend(load.await.unwrap());
    let chain = net.all_agree(&[0, 1, 2], &tracked).await;
    ordered_once(&chain, &tracked);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(crashes(&net, n.as_ref().unwrap()).await, 0, "node {i}'s plugin crashed (the returning node: {v})");
    }
    // The path taken (no state shows it): the plugin pulled blocks.
    let log = std::fs::read_to_string(data(v).with_extension("log")).unwrap();
    assert!(log.contains("catching up: pulling blocks"), "node {v} caught up without pulling");
    eprintln!("compaction: {} blocks; test {:?}", chain.len(), t0.elapsed());
}

/// Every node of `nodes` at one height (waits up to 30 s); that height.
async fn same_height(net: &Net, nodes: &[Option<NodeProc>]) -> u64 {
    let deadline = Instant::now() + secs(30);
    loop {
        let mut hs = Vec::new();
        for n in nodes.iter().flatten() {
            hs.push(net.height(n).await);
        }
        if hs.windows(2).all(|w| w[0] == w[1]) {
            return hs[0];
        }
        assert!(Instant::now() < deadline, "heights never met: {hs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the transports of `from` are (or are not) connected to
/// node `x` (up to 30 s).
async fn connected_to(net: &Net, nodes: &[Option<NodeProc>], from: &[usize], x: usize, up: bool) {
    let deadline = Instant::now() + secs(30);
    for &i in from {
        loop {
            let s = cluster_stats(nodes[i].as_ref().unwrap()).await;
            let peer = &s.channels[net.channel].peers[&(x as u64 + 1)];
            if peer.connected == up {
                break;
            }
            assert!(Instant::now() < deadline, "node {i}'s transport: connected to {x} is not {up}: {peer:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A TCP proxy stands on each consenter endpoint (7050/7150/7250) and
/// forwards to the node's real port (17050/17150/17250); clients use the
/// real ports. Cutting node X's proxy cuts every connection to X's cluster
/// service (X still reaches the others through theirs): X cannot commit.
/// First a follower is cut off, then the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_by_a_proxy_writes_nothing_and_rejoins_without_a_fork() {
    let _ports = PORTS.lock().await;
    let t0 = Instant::now();
    let net = Net::raft3_behind_proxies();
    let proxies: Vec<Proxy> = (0..3).map(|i| Proxy::start(Net::consenter_port(i), net.ports[i])).collect();
    let dir = test_dir("partition");
    let nodes: Vec<Option<NodeProc>> = (0..3).map(|i| Some(net.start(i, &dir.path().join(format!("n{i}"))))).collect();
    let mut tracked = net.broadcast_until_ok(0, &txs("before", 20)).await;
    net.all_agree(&[0, 1, 2], &tracked).await;
    assert!(proxies.iter().all(|p| p.forwarded.load(std::sync::atomic::Ordering::Relaxed) > 0));
    for round in ["follower", "leader"] {
        let l = net.leader(&nodes).await;
        let x = if round == "leader" { l } else { (l + 1) % 3 };
        let majority: Vec<usize> = (0..3).filter(|i| *i != x).collect();
        let xn = nodes[x].as_ref().unwrap();
        // Nothing in flight: every node at the same height.
        let h0 = same_height(&net, &nodes).await;
        proxies[x].cut();
        // The majority's transports lose their connections to X.
        connected_to(&net, &nodes, &majority, x, false).await;
        // The majority keeps (or, when X led, elects) a leader of its own
        // and orders through both of its nodes.
        let ml = net.leader_among(&nodes, &majority, secs(60)).await;
        assert_ne!(ml, x, "{round} round");
        let mut during = Vec::new();
        for &i in &majority {
            during.extend(net.broadcast_until_ok(i, &txs(&format!("{round}-during-via{i}"), 10)).await);
        }
        let majority_chain = net.all_agree(&majority, &during).await;
        assert!(majority_chain.len() as u64 > h0);
        // X loses its leader and answers SERVICE_UNAVAILABLE (its
        // Broadcasts before that may reach the majority's leader through
        // the leader's proxy: X's outbound traffic is not cut).
        let deadline = Instant::now() + secs(30);
        let mut k = 0;
        loop {
            k += 1;
            let (st, _) = net.broadcast(x, &[format!("{round}-cut-probe-{k}")]).await.remove(0);
            let c = net.cluster_info(xn).await.unwrap_or_default();
            if st == 503 && c["leader"] == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{round} {x} cut off still answers {st}: {c}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // ...and has written no block while the majority ordered.
        assert_eq!(net.height(xn).await, h0, "{round} round: the cut-off node wrote a block");
        let changes: Vec<u64> = {
            let mut v = Vec::new();
            for &i in &majority {
                v.push(net.leader_changes(nodes[i].as_ref().unwrap()).await);
            }
            v
        };

        // Healed: X follows the majority's chain, identical block for
        // block (no fork), and the majority's leader stays (pre-vote: X's
        // failed elections did not raise its term).
        proxies[x].heal();
        connected_to(&net, &nodes, &majority, x, true).await;
        let stop = majority_chain.len() as u64 - 1;
        same_chain(&net.blocks_of(x, stop).await, &majority_chain);
        assert_eq!(net.leader(&nodes).await, ml, "{round} round: the healed node changed the leader");
        for (k, &i) in majority.iter().enumerate() {
            assert_eq!(
                net.leader_changes(nodes[i].as_ref().unwrap()).await,
                changes[k],
                "{round} round: node {i} saw an election when the cut-off node returned"
            );
        }
        // X orders again (it forwards to the leader).
        let via_x = net.broadcast_until_ok(x, &txs(&format!("{round}-after-via{x}"), 10)).await;
        let chain = net.all_agree(&[0, 1, 2], &via_x).await;
        same_chain(&chain[..majority_chain.len()], &majority_chain);
        tracked.extend(during);
        tracked.extend(via_x);
        ordered_once(&chain, &tracked);
    }
    eprintln!("partition: test {:?}", t0.elapsed());
    drop(proxies);
}

/// An `orderer.Cluster/Step` client with a TLS client certificate (or
/// none) of its own choosing.
struct StepClient {
    tx: mpsc::Sender<StepRequest>,
    answers: tonic::Streaming<StepResponse>,
}

impl StepClient {
    async fn connect(addr: &str, identity: Option<(&str, &str)>) -> StepClient {
        let ca = std::path::PathBuf::from(tlsca());
        let config = match identity {
            Some((cert, key)) => {
                ClientIdentity::from_files(Path::new(cert), Path::new(key), &[ca]).unwrap().client_config(None).unwrap()
            }
            None => tls::grpc_client_config(&[ca], None).unwrap(),
        };
        let ch = dial::connect(addr, Some(dial::ClientTls { config, server_name: None })).await.unwrap();
        let (tx, rx) = mpsc::channel(64);
        let mut client =
            ClusterClient::new(ch).max_encoding_message_size(256 << 20).max_decoding_message_size(256 << 20);
        let answers = client.step(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        StepClient { tx, answers }
    }

    async fn consensus(&self, channel: &str, payload: Bytes) {
        let req = Req::ConsensusRequest(ConsensusRequest { channel: channel.into(), payload, ..Default::default() });
        self.tx.send(StepRequest { payload: Some(req) }).await.expect("the Step stream is up");
    }

    /// A consensus message whose sender claims to run `consensus_type` at
    /// ledger height `height` (ConsensusRequest fields 100 and 101).
    async fn consensus_claiming(&self, channel: &str, payload: Bytes, consensus_type: &str, height: u64) {
        let req = Req::ConsensusRequest(ConsensusRequest {
            channel: channel.into(),
            payload,
            consensus_type: consensus_type.into(),
            height,
            ..Default::default()
        });
        self.tx.send(StepRequest { payload: Some(req) }).await.expect("the Step stream is up");
    }

    async fn submit(&self, channel: &str, env: Envelope) {
        let req =
            Req::SubmitRequest(SubmitRequest { channel: channel.into(), last_validation_seq: 0, payload: Some(env) });
        self.tx.send(StepRequest { payload: Some(req) }).await.expect("the Step stream is up");
    }

    /// The next SubmitResponse (waits up to 30 s).
    async fn answer(&mut self) -> SubmitResponse {
        let m = tokio::time::timeout(secs(30), self.answers.message())
            .await
            .expect("an answer in time")
            .expect("the Step stream is up")
            .expect("an answer");
        match m.payload {
            Some(Resp::SubmitRes(s)) => s,
            other => panic!("not a SubmitResponse: {other:?}"),
        }
    }
}

/// Records the raft messages a stand-in for a node receives.
struct Recorder(mpsc::UnboundedSender<(u64, Bytes)>);

impl Inbound for Recorder {
    fn consensus(&self, _channel: &str, from: u64, payload: Bytes) {
        let _ = self.0.send((from, payload));
    }
    fn submit(&self, _channel: &str, _from: u64, _seq: u64, _envelope: Bytes) {}
}

/// A stand-in for orderer`v` on its consenter endpoint (its TLS server
/// certificate, the channel's members as the transport knows them),
/// recording the raft messages the other two send it; on a runtime of its
/// own, so that dropping it closes its port and connections.
struct StandIn {
    rt: Option<tokio::runtime::Runtime>,
    _transport: Transport,
}

impl StandIn {
    fn start(v: usize, rec: mpsc::UnboundedSender<(u64, Bytes)>) -> StandIn {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let _in = rt.enter();
        let id = |i: usize| {
            ClientIdentity::from_files(
                Path::new(&orderer(i, "tls/server.crt")),
                Path::new(&orderer(i, "tls/server.key")),
                &[tlsca().into()],
            )
            .unwrap()
        };
        let t = Transport::new(id(v), TransportLimits::default());
        let members = (0..3)
            .map(|i| {
                let cert = std::fs::read(orderer(i, "tls/server.crt")).unwrap();
                // Never dialed for real: the stand-in only listens.
                Member {
                    id: i as u64 + 1,
                    endpoint: "127.0.0.1:9".into(),
                    server_tls_cert: cert.clone(),
                    client_tls_cert: cert,
                }
            })
            .collect();
        t.set_members("raftchannel", v as u64 + 1, members);
        let config = tls::server_config(
            Path::new(&orderer(v, "tls/server.crt")),
            Path::new(&orderer(v, "tls/server.key")),
            ("cert", "key"),
            ClientAuth::Request,
            tls::ALPN_H2,
        )
        .unwrap();
        let port = Net::consenter_port(v);
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("the stand-in's port");
        std_listener.set_nonblocking(true).unwrap();
        let svc = t.server(Arc::new(Recorder(rec)));
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let incoming = tls::TlsListener::new(l, config, tls::HANDSHAKE_TIMEOUT, "stand-in", true).unwrap();
            let _ = tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming).await;
        });
        drop(_in);
        StandIn { rt: Some(rt), _transport: t }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What the tests read of a raft message (etcd's raftpb.Message, which
/// raft-rs's eraftpb shares: field numbers and message types).
#[derive(Clone, PartialEq, prost::Message)]
struct RaftMessage {
    #[prost(int32, tag = "1")]
    msg_type: i32,
    #[prost(uint64, tag = "2")]
    to: u64,
    #[prost(uint64, tag = "3")]
    from: u64,
    #[prost(message, repeated, tag = "7")]
    entries: Vec<RaftEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RaftEntry {
    #[prost(uint64, tag = "3")]
    index: u64,
    #[prost(bytes = "bytes", tag = "4")]
    data: Bytes,
}

/// raftpb.MessageType MsgApp.
const MSG_APPEND: i32 = 3;

/// Deterministic garbage of `n` bytes.
fn garbage(seed: u64, n: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Hostile cluster input against a running three-node channel. Raft
/// messages are first captured for real: a follower V is killed and a
/// stand-in on its endpoint records what the leader goes on sending it
/// (appends carrying blocks, heartbeats) while the other two order; then
/// V returns from its ledger. Then, while load runs: Step streams from a
/// certificate that is no consenter's (the orderer org Admin's TLS client
/// certificate) and from none at all, sending the captured raft
/// messages and signed envelopes: refused, counted, submits answered
/// FORBIDDEN, nothing ordered. From orderer0's own certificate, on
/// connections of its own to orderer1 and orderer2: garbage raft payloads,
/// garbage forwarded envelopes, an oversized message (over the transport's
/// 100 MiB), messages for a channel that does not exist; and from the
/// leader's certificate, the captured messages replayed twenty times over
/// to V. None disturbs ordering: the load's envelopes are all ordered, no
/// node sees an election, the ledgers agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_step_input_neither_enters_nor_disturbs_the_cluster() {
    let _ports = PORTS.lock().await;
    let t0 = Instant::now();
    let net = Net::raft3();
    let ch = net.channel;
    let dir = test_dir("hostile");
    let data = |i: usize| dir.path().join(format!("n{i}"));

    // Capture: the three order; a follower V is killed and a recorder
    // takes its endpoint; the leader goes on replicating to it (raft
    // messages with real blocks, heartbeats) while the other two order.
    let mut nodes: Vec<Option<NodeProc>> = (0..3).map(|i| Some(net.start(i, &data(i)))).collect();
    let mut tracked = net.broadcast_until_ok(0, &txs("first", 10)).await;
    net.all_agree(&[0, 1, 2], &tracked).await;
    let l = net.leader(&nodes).await;
    let v = (l + 1) % 3;
    let others: Vec<usize> = (0..3).filter(|i| *i != v).collect();
    nodes[v].take().unwrap().kill();
    let (rec_tx, mut rec_rx) = mpsc::unbounded_channel();
    let stand_in = StandIn::start(v, rec_tx);
    let mut captured: Vec<(u64, Bytes)> = Vec::new();
    let deadline = Instant::now() + secs(60);
    let mut k = 0;
    loop {
        let from_leader: Vec<RaftMessage> = captured
            .iter()
            .filter(|(f, _)| *f == l as u64 + 1)
            .map(|(_, m)| RaftMessage::decode(m.clone()).expect("a raft message"))
            .collect();
        let appends = from_leader.iter().filter(|m| m.msg_type == MSG_APPEND && !m.entries.is_empty()).count();
        if from_leader.len() >= 20 && appends >= 3 {
            assert!(from_leader.iter().all(|m| m.to == v as u64 + 1 && m.from == l as u64 + 1));
            break;
        }
        assert!(Instant::now() < deadline, "captured {} raft messages, {appends} appends", captured.len());
        k += 1;
        tracked.extend(net.broadcast_until_ok(l, &txs(&format!("capture{k}"), 10)).await);
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Some(m)) = tokio::time::timeout_at(until, rec_rx.recv()).await {
            captured.push(m);
        }
    }
    net.all_agree(&others, &tracked).await;
    drop(stand_in);
    // V again, from its ledger, once the recorder's port is free.
    let deadline = Instant::now() + secs(10);
    while std::net::TcpListener::bind(("127.0.0.1", Net::consenter_port(v))).is_err() {
        assert!(Instant::now() < deadline, "the recorder's port stays taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes[v] = Some(net.start(v, &data(v)));
    tracked.extend(net.broadcast_until_ok(v, &txs("with-all", 10)).await);
    net.all_agree(&[0, 1, 2], &tracked).await;
    assert_eq!(net.leader(&nodes).await, l, "V's return changed the leader");
    let node = |i: usize| nodes[i].as_ref().unwrap();
    let mut changes = Vec::new();
    for i in 0..3 {
        changes.push(net.leader_changes(node(i)).await);
    }
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(cluster_stats(node(i)).await);
    }

    // Load through every node while the hostile input comes.
    let load = {
        let net = net.clone();
        tokio::spawn(async move {
            let mut ok = Vec::new();
            for round in 0..10 {
                let via = round % 3;
                ok.extend(net.broadcast_until_ok(via, &txs(&format!("load{round}-via{via}"), 10)).await);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            ok
        })
    };

    // 1. Not a consenter: the orderer org Admin's TLS client certificate,
    //    and no certificate at all, to every node. The Admin's consensus
    //    messages claim a height a million blocks ahead (what a consenter
    //    added by a config block a node missed would make it follow):
    //    counted as non-members', followed at most once per 2 s, pulling
    //    only blocks that exist.
    let non_member = |v: Option<serde_json::Value>| -> [u64; 3] {
        let c = v.and_then(|v| v["consenter"].get("catchUp").cloned()).unwrap_or_default();
        ["nonMemberMessages", "claimsFollowed", "claimsIgnored"].map(|k| c[k].as_u64().unwrap_or(0))
    };
    let mut non_member_before = Vec::new();
    for i in 0..3 {
        non_member_before.push(non_member(net.show(node(i)).await));
    }
    let intruded_at = Instant::now();
    let admin_tls = |f: &str| {
        fixtures()
            .join("crypto/ordererOrganizations/example.com/users/Admin@example.com/tls")
            .join(f)
            .to_string_lossy()
            .into_owned()
    };
    let (admin_cert, admin_key) = (admin_tls("client.crt"), admin_tls("client.key"));
    let signer = user1();
    for i in 0..3 {
        for (who, identity, text) in [
            (
                "admin",
                Some((admin_cert.as_str(), admin_key.as_str())),
                "certificate extracted from TLS connection isn't authorized",
            ),
            ("anonymous", None, "no TLS certificate sent"),
        ] {
            let mut c = StepClient::connect(&net.addr(i), identity).await;
            for (k, (_, m)) in captured.iter().cycle().take(50).enumerate() {
                c.consensus_claiming(ch, m.clone(), "etcdraft", 1_000_000 + k as u64).await;
                c.submit(ch, signed_message(ch, &format!("intruder-{who}-{i}-{k}"), 100, Some(&signer))).await;
            }
            for _ in 0..50 {
                let a = c.answer().await;
                assert_eq!((a.status, a.info.as_str(), a.channel.as_str()), (403, text, ch), "{who} to node {i}");
            }
        }
    }
    for (i, b) in before.iter().enumerate() {
        let s = cluster_stats(node(i)).await;
        let d = |k: &str| s.refused[k] - b.refused[k];
        assert_eq!((d("notMember"), d("noCertificate")), (100, 100), "node {i}: {s:?}");
        assert_eq!(s.channels[ch].refused - b.channels[ch].refused, 200, "node {i}");
    }
    for (i, b) in non_member_before.iter().enumerate() {
        // Only the Admin's 50 count (an anonymous stream is no one's).
        let deadline = Instant::now() + secs(30);
        let d = loop {
            let now = non_member(net.show(node(i)).await);
            let d: Vec<u64> = (0..3).map(|j| now[j] - b[j]).collect();
            if d[0] >= 50 || Instant::now() > deadline {
                break d;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let most = intruded_at.elapsed().as_secs() / 2 + 1;
        assert_eq!(d[0], 50, "node {i}: non-member messages {d:?}");
        assert!(d[1] >= 1 && d[1] <= most, "node {i}: {} catch-ups on claims (at most {most}): {d:?}", d[1]);
        assert_eq!(d[1] + d[2], 50, "node {i}: every claim followed or ignored: {d:?}");
    }
    // The claims below start a catch-up only once the claim interval (2 s)
    // since the last followed one is over: wait it out.
    let claims_open = tokio::time::Instant::now() + Duration::from_secs(2);

    // 2. orderer0's own certificate on connections of its own (member 1
    //    to orderer1 = member 2, and to orderer2 = member 3).
    let (o0_cert, o0_key) = (orderer(0, "tls/server.crt"), orderer(0, "tls/server.key"));
    let mut to1 = StepClient::connect(&net.addr(1), Some((&o0_cert, &o0_key))).await;
    let mut to2 = StepClient::connect(&net.addr(2), Some((&o0_cert, &o0_key))).await;
    // Messages naming raftchannel sent to node i from member 1.
    let mut sent = [0u64; 3];
    // Garbage raft payloads (an empty one too), garbage forwarded
    // envelopes, an envelope of another channel.
    for (i, c) in [(1, &to1), (2, &to2)] {
        c.consensus(ch, Bytes::new()).await;
        for k in 0..200u64 {
            c.consensus(ch, garbage(k, 1 + (k as usize * 37) % 3000)).await;
            if k % 10 == 0 {
                c.submit(ch, Envelope { payload: garbage(k + 1000, 200), signature: garbage(k, 70) }).await;
            }
        }
        c.submit(ch, signed_message("raft5channel", &format!("other-channel-{i}"), 100, Some(&signer))).await;
        sent[i] += 1 + 200 + 20 + 1;
    }
    // Replays: every captured message the leader sent V, twenty times
    // over, to V (the member they were for), from the leader's
    // certificate.
    let replays: Vec<Bytes> = captured.iter().filter(|(f, _)| *f == l as u64 + 1).map(|(_, m)| m.clone()).collect();
    let (l_cert, l_key) = (orderer(l, "tls/server.crt"), orderer(l, "tls/server.key"));
    let replayer = StepClient::connect(&net.addr(v), Some((&l_cert, &l_key))).await;
    for _ in 0..20 {
        for m in &replays {
            replayer.consensus(ch, m.clone()).await;
        }
    }
    let replayed = 20 * replays.len() as u64;
    // Claims: messages of another consensus type from a member that says
    // its ledger is a million blocks ahead (what a member left behind at
    // a live swap would follow). Dropped before the plugin; the claims
    // start at most one catch-up per 2 s, which pulls only blocks that
    // exist; the chain goes on.
    let catch_up = |v: Option<serde_json::Value>| -> [u64; 4] {
        let c = v.and_then(|v| v["consenter"].get("catchUp").cloned()).unwrap_or_default();
        ["otherTypeMessages", "claimsFollowed", "claimsIgnored", "pulledBlocks"].map(|k| c[k].as_u64().unwrap_or(0))
    };
    tokio::time::sleep_until(claims_open).await;
    let mut claims_before = Vec::new();
    for i in [1, 2] {
        claims_before.push(catch_up(net.show(node(i)).await));
    }
    let claimed_at = Instant::now();
    const CLAIMS: u64 = 300;
    for k in 0..CLAIMS {
        for c in [&to1, &to2] {
            c.consensus_claiming(ch, garbage(k + 5000, 50), "BFT", 1_000_000 + k).await;
        }
        if k % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // A channel that does not exist.
    for k in 0..50u64 {
        to2.consensus("nosuchchannel", garbage(k, 100)).await;
    }
    for k in 0..5 {
        to2.submit("nosuchchannel", signed_message("nosuchchannel", &format!("nowhere-{k}"), 100, Some(&signer))).await;
    }
    for _ in 0..5 {
        let a = to2.answer().await;
        assert_eq!((a.status, a.info.as_str()), (404, "channel nosuchchannel doesn't exist"));
    }
    // Oversized: one byte over the transport's 100 MiB, then a malformed
    // submit on the same stream, whose answer shows the stream survived.
    let max = TransportLimits::default().max_message_bytes;
    to1.consensus(ch, Bytes::from(vec![0x42; max + 1])).await;
    to1.submit(ch, Envelope::default()).await;
    let a = to1.answer().await;
    assert_eq!((a.status, a.info.as_str()), (400, "badly formatted message"));

    let s1 = cluster_stats(node(1)).await;
    let s2 = cluster_stats(node(2)).await;
    let sv = cluster_stats(node(v)).await;
    let got = |s: &consenter_host::admin::ClusterStatsView, i: usize, from: u64| {
        s.channels[ch].peers[&from].received - before[i].channels[ch].peers[&from].received
    };
    // Everything that named raftchannel came from a member: accepted by
    // the transport and handed to the chain (the node's real traffic from
    // that member comes on top).
    let from_l = replayed + if l == 0 { sent[v] } else { 0 };
    assert!(got(&s1, 1, 1) >= sent[1], "node 1 accepted {} of {}: {s1:?}", got(&s1, 1, 1), sent[1]);
    assert!(got(&s2, 2, 1) >= sent[2], "node 2 accepted {} of {}: {s2:?}", got(&s2, 2, 1), sent[2]);
    assert!(got(&sv, v, l as u64 + 1) >= from_l, "node {v} accepted {} of {from_l}", got(&sv, v, l as u64 + 1));
    assert_eq!(s1.refused["oversized"] - before[1].refused["oversized"], 1);
    // Member 1's own refused messages: the oversized one, the malformed submit.
    assert_eq!(s1.channels[ch].peers[&1].refused - before[1].channels[ch].peers[&1].refused, 2);
    assert_eq!(s1.refused["malformed"] - before[1].refused["malformed"], 1);
    assert_eq!(s2.refused["unknownChannel"] - before[2].refused["unknownChannel"], 55);

    // Every claim reached the chain; few were followed.
    for (k, i) in [1usize, 2].into_iter().enumerate() {
        let deadline = Instant::now() + secs(30);
        let now = loop {
            let now = catch_up(net.show(node(i)).await);
            if now[0] - claims_before[k][0] >= CLAIMS || Instant::now() > deadline {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let d: Vec<u64> = (0..4).map(|j| now[j] - claims_before[k][j]).collect();
        let most = claimed_at.elapsed().as_secs() / 2 + 1;
        assert_eq!(d[0], CLAIMS, "node {i}: other-type messages {d:?}");
        assert!(d[1] >= 1 && d[1] <= most, "node {i}: {} catch-ups on claims (at most {most}): {d:?}", d[1]);
        assert_eq!(d[1] + d[2], CLAIMS, "node {i}: every claim followed or ignored: {d:?}");
        eprintln!("claims at node {i}: other-type, followed, ignored, pulled blocks: {d:?}");
    }

    // The cluster kept ordering: every envelope of the load, once; none
    // from the intruders; the same leader, no election anywhere; three
    // identical ledgers.
    let loaded = load.await.unwrap();
    let chain = net.all_agree(&[0, 1, 2], &loaded).await;
    ordered_once(&chain, &loaded);
    ordered_once(&chain, &tracked);
    let ids = tx_ids(&chain);
    assert!(!ids.iter().any(|t| t.starts_with("intruder-") || t.starts_with("nowhere-") || t.starts_with("other-")));
    // Ordering after the hostile input too.
    let after = net.broadcast_until_ok(l, &txs("after-hostile", 10)).await;
    net.all_agree(&[0, 1, 2], &after).await;
    assert_eq!(net.leader(&nodes).await, l, "the leader changed");
    for (i, c) in changes.iter().enumerate() {
        assert_eq!(net.leader_changes(node(i)).await, *c, "node {i} saw an election");
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        assert_eq!(n.as_mut().unwrap().child.try_wait().unwrap(), None, "node {i} is up");
    }
    eprintln!(
        "hostile: {} raft messages captured, {} from the leader replayed x20 to node {v}; test {:?}",
        captured.len(),
        replays.len(),
        t0.elapsed()
    );
    drop((to1, to2, replayer));
}

/// Fabric's Node.js SDK (fabric-common's Committer for Broadcast, the
/// fabric-protos Deliver client, BlockDecoder) against a follower over
/// TLS, signing as User1@org1: its envelopes are forwarded to the leader,
/// ordered, and delivered by the follower, and every ledger agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fabric_node_sdk_orders_and_delivers_through_a_follower_over_tls() {
    npm_ci();
    let _ports = PORTS.lock().await;
    let t0 = Instant::now();
    let net = Net::raft3();
    let dir = test_dir("interop");
    let nodes: Vec<Option<NodeProc>> = (0..3).map(|i| Some(net.start(i, &dir.path().join(format!("n{i}"))))).collect();
    let l = net.leader(&nodes).await;
    let f = (l + 1) % 3;
    let changes = net.leader_changes(nodes[l].as_ref().unwrap()).await;
    let n = 40;
    let (addr, msp) = (net.addr(f), user1_msp());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(node_dir().join("interop.js"))
            .args(["--orderer", &addr, "--channel", "raftchannel", "--mspid", "Org1MSP", "--count", &n.to_string()])
            .arg("--msp-dir")
            .arg(msp)
            .args(["--tls-ca", &tlsca(), "--timeout-ms", "60000"])
            .output()
            .expect("running node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "interop.js against follower {f}:\n{stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(summary["broadcast_ok"], n, "{summary}");
    assert_eq!(summary["found"], n, "{summary}");
    assert_eq!(summary["chain_ok"], true, "{summary}");
    // The follower stayed a follower (its envelopes went to the leader),
    // and the three ledgers hold the same blocks with the SDK's envelopes.
    assert_eq!(net.leader(&nodes).await, l);
    assert_eq!(net.leader_changes(nodes[l].as_ref().unwrap()).await, changes);
    let blocks = summary["blocks"].as_u64().unwrap();
    let chain = net.blocks_of(f, blocks - 1).await;
    assert_eq!(tx_ids(&chain).len(), n, "the SDK's envelopes, once each");
    for i in 0..3 {
        same_chain(&net.blocks_of(i, blocks - 1).await, &chain);
    }
    eprintln!("interop through follower {f}: {blocks} blocks; test {:?}", t0.elapsed());
}

/// A node without a cluster transport (no TLS) answers the admin
/// endpoint's cluster stats with 404 and says why; the participation API
/// is unchanged.
#[test]
fn cluster_stats_without_a_cluster_transport_is_404() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"), &[]);
    let admin = node.admin.as_ref().unwrap();
    let a = consenter_host::admin::request(admin, "GET", consenter_host::admin::CLUSTER_STATS, None).unwrap();
    assert_eq!(a.status, 404);
    assert!(a.error_text().contains("no cluster transport"), "{}", a.error_text());
    let a = consenter_host::admin::request(admin, "POST", consenter_host::admin::CLUSTER_STATS, None).unwrap();
    assert_eq!((a.status, a.header("allow")), (405, Some("GET")));
    let a = consenter_host::admin::request(admin, "GET", consenter_host::admin::CHANNELS, None).unwrap();
    assert_eq!(a.status, 200);
}
