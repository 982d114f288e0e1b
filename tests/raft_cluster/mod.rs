//! Helpers for etcdraft clusters of real node processes over loopback TLS
//! (tests/raft_faults.rs): the fixture crypto, nodes started from a raft
//! genesis block, Broadcast/Deliver clients, the `consenter.cluster`
//! object and the transport's counters from a node's admin endpoint, chain
//! comparison, and a test-controlled TCP proxy that can cut a node off.
//! The same shapes as tests/raft.rs's helpers, for any of the fixture's
//! raft channels and any listen ports.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use consenter_host::admin::ClusterStatsView;
use consenter_host::block;
use consenter_host::envelope;
use consenter_host::proto::common::{Block, Envelope, HeaderType};
use consenter_host::proto::orderer::atomic_broadcast_client::AtomicBroadcastClient;
use consenter_host::proto::orderer::seek_info::SeekBehavior;
use consenter_host::proto::orderer::seek_position::Type as Pos;
use consenter_host::proto::orderer::{SeekInfo, SeekPosition, SeekSpecified};
use consenter_host::signer::Signer;
use consenter_host::tls::{self, dial};
use prost::Message;
use tonic::transport::Channel;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/fabric")
}

fn s(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

/// A file of orderer `i`'s crypto (e.g. "tls/server.crt").
pub fn orderer(i: usize, p: &str) -> String {
    s(fixtures().join(format!("crypto/ordererOrganizations/example.com/orderers/orderer{i}.example.com")).join(p))
}

pub fn tlsca() -> String {
    s(fixtures().join("crypto/ordererOrganizations/example.com/tlsca/tlsca.example.com-cert.pem"))
}

pub fn user1_msp() -> PathBuf {
    fixtures().join("crypto/peerOrganizations/org1.example.com/users/User1@org1.example.com/msp")
}

pub fn user1() -> Signer {
    Signer::from_msp_dir(&user1_msp(), "Org1MSP").unwrap()
}

/// A scratch directory for one test, removed at the end unless
/// RAFT_KEEP_DIRS is set (then kept, with the nodes' logs, and named).
pub struct Scratch {
    tmp: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub fn test_dir(name: &str) -> Scratch {
    let d = tempfile::Builder::new().prefix(&format!("raft-{name}-")).tempdir().unwrap();
    let path = d.path().to_path_buf();
    if std::env::var_os("RAFT_KEEP_DIRS").is_some() {
        eprintln!("{name}: data and logs in {}", path.display());
        let _ = d.keep();
        return Scratch { tmp: None, path };
    }
    Scratch { tmp: Some(d), path }
}

/// A raft channel of the fixtures and where its nodes listen.
#[derive(Clone)]
pub struct Net {
    pub channel: &'static str,
    genesis: &'static str,
    /// The port node `i` listens on (AtomicBroadcast and the cluster
    /// service): the consenter port of the genesis block, unless a proxy
    /// stands there.
    pub ports: Vec<u16>,
}

impl Net {
    /// `raftchannel`: orderer0..2 on 7050/7150/7250.
    pub fn raft3() -> Net {
        Net { channel: "raftchannel", genesis: "raftchannel.genesis.block", ports: vec![7050, 7150, 7250] }
    }

    /// `solochannel` (the same orgs, solo; tests/raft.rs swaps it to
    /// etcdraft and grows it to three nodes): orderer0..2 on
    /// 7050/7150/7250.
    pub fn solo3() -> Net {
        Net { channel: "solochannel", genesis: "solochannel.genesis.block", ports: vec![7050, 7150, 7250] }
    }

    /// `raft5channel`: orderer0..4 on 7050..7450.
    pub fn raft5() -> Net {
        Net {
            channel: "raft5channel",
            genesis: "raft5channel.genesis.block",
            ports: vec![7050, 7150, 7250, 7350, 7450],
        }
    }

    /// `raftchannel` with the nodes on 17050/17150/17250, for proxies on
    /// the consenter ports.
    pub fn raft3_behind_proxies() -> Net {
        Net { ports: vec![17050, 17150, 17250], ..Net::raft3() }
    }

    /// The consenter endpoint of node `i` in the genesis block.
    pub fn consenter_port(i: usize) -> u16 {
        7050 + 100 * i as u16
    }

    pub fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    /// Starts node `i` (orderer`i`'s MSP and TLS certificate) with its
    /// data in `data` and its log in `data`.log.
    pub fn start(&self, i: usize, data: &Path) -> NodeProc {
        let listen = self.addr(i);
        let (msp, cert, key) = (orderer(i, "msp"), orderer(i, "tls/server.crt"), orderer(i, "tls/server.key"));
        let genesis = s(fixtures().join("blocks").join(self.genesis));
        let ca = tlsca();
        let args = [
            "--listen",
            &listen,
            "--msp-dir",
            &msp,
            "--mspid",
            "OrdererMSP",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-root-ca",
            &ca,
            "--genesis-block",
            &genesis,
        ];
        NodeProc::start_logged(data, &args, &data.with_extension("log"))
    }

    /// An AtomicBroadcast client of node `i` over TLS.
    pub async fn client(&self, i: usize) -> AtomicBroadcastClient<Channel> {
        let config = tls::grpc_client_config(&[PathBuf::from(tlsca())], None).unwrap();
        let tls = dial::ClientTls { config, server_name: None };
        let addr = self.addr(i);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match dial::connect(&addr, Some(tls.clone())).await {
                Ok(ch) => return AtomicBroadcastClient::new(ch).max_decoding_message_size(64 << 20),
                Err(e) if Instant::now() > deadline => panic!("connecting to node {i}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn seek(&self, start: u64, stop: u64, signer: &Signer) -> Envelope {
        let pos = |n| SeekPosition { r#type: Some(Pos::Specified(SeekSpecified { number: n })) };
        let seek = SeekInfo {
            start: Some(pos(start)),
            stop: Some(pos(stop)),
            behavior: SeekBehavior::BlockUntilReady as i32,
            error_response: 0,
        };
        let b =
            envelope::build(self.channel, HeaderType::DeliverSeekInfo, "", seek.encode_to_vec().into(), Some(signer))
                .unwrap();
        Envelope::decode(b).unwrap()
    }

    /// Blocks 0..=stop of node `i`, waiting up to 60 s for them.
    pub async fn blocks_of(&self, i: usize, stop: u64) -> Vec<Block> {
        self.blocks_range(i, 0, stop).await
    }

    /// Blocks start..=stop of node `i`, waiting up to 60 s for them.
    pub async fn blocks_range(&self, i: usize, start: u64, stop: u64) -> Vec<Block> {
        let mut c = self.client(i).await;
        let req = tokio_stream::iter(vec![self.seek(start, stop, &user1())]);
        let fut = async {
            let mut s = c.deliver(req).await.unwrap().into_inner();
            let mut out = vec![];
            while let Some(r) = s.message().await.unwrap() {
                use consenter_host::proto::orderer::deliver_response::Type;
                match r.r#type {
                    Some(Type::Block(b)) => out.push(b),
                    Some(Type::Status(st)) => {
                        assert_eq!(st, 200, "node {i}: deliver status");
                        break;
                    }
                    None => break,
                }
            }
            out
        };
        tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .unwrap_or_else(|_| panic!("node {i}: blocks up to {stop} in time"))
    }

    /// One Broadcast stream of `txs` (1000-byte envelopes signed by
    /// User1@org1) to node `i`: each one's (status, info).
    pub async fn broadcast(&self, i: usize, txs: &[String]) -> Vec<(i32, String)> {
        let signer = user1();
        let mut c = self.client(i).await;
        let envs = txs.iter().map(|t| signed_message(self.channel, t, 1000, Some(&signer))).collect();
        broadcast_all(&mut c, envs).await
    }

    /// Broadcasts `txs` to node `i` until each is acknowledged SUCCESS (a
    /// node without a leader answers SERVICE_UNAVAILABLE: retried); the
    /// ids acknowledged.
    pub async fn broadcast_until_ok(&self, i: usize, txs: &[String]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut pending: Vec<String> = txs.to_vec();
        let mut ok = Vec::new();
        while !pending.is_empty() {
            assert!(Instant::now() < deadline, "node {i}: {} envelopes never acknowledged", pending.len());
            let acks = self.broadcast(i, &pending).await;
            let mut again = Vec::new();
            for (t, (st, info)) in pending.iter().zip(acks) {
                match st {
                    200 => ok.push(t.clone()),
                    503 => again.push(t.clone()),
                    other => panic!("node {i}: {t}: status {other}: {info}"),
                }
            }
            if !again.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            pending = again;
        }
        ok
    }

    /// Waits until node `i` delivers blocks holding every id of `txs`;
    /// its blocks then (0 up to the first height that holds them all).
    pub async fn until_ordered(&self, i: usize, txs: &[String]) -> Vec<Block> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut missing: std::collections::HashSet<&String> = txs.iter().collect();
        let mut blocks = self.blocks_of(i, 0).await;
        while !missing.is_empty() {
            assert!(Instant::now() < deadline, "node {i}: {} envelopes not ordered in time", missing.len());
            let n = blocks.len() as u64;
            let next = self.blocks_range(i, n, n).await;
            for t in next.iter().flat_map(block_tx_ids) {
                missing.remove(&t);
            }
            blocks.extend(next);
        }
        blocks
    }

    /// Waits until every node in `which` has blocks holding every id of
    /// `txs`, and checks that they agree block for block up to the
    /// highest of those heights; the chain.
    pub async fn all_agree(&self, which: &[usize], txs: &[String]) -> Vec<Block> {
        let mut longest: Vec<Block> = Vec::new();
        for &i in which {
            let b = self.until_ordered(i, txs).await;
            if b.len() > longest.len() {
                longest = b;
            }
        }
        let stop = longest.len() as u64 - 1;
        for &i in which {
            same_chain(&self.blocks_of(i, stop).await, &longest);
        }
        longest
    }

    /// The channel as node `node`'s participation API shows it.
    pub async fn show(&self, node: &NodeProc) -> Option<serde_json::Value> {
        let admin = node.admin.clone()?;
        let path = format!("{}/{}", consenter_host::admin::CHANNELS, self.channel);
        let a = tokio::task::spawn_blocking(move || consenter_host::admin::request(&admin, "GET", &path, None))
            .await
            .unwrap()
            .ok()?;
        if a.status != 200 {
            return None;
        }
        serde_json::from_slice(&a.body).ok()
    }

    /// The channel's `consenter.cluster` object on `node`, if the plugin
    /// reported one.
    pub async fn cluster_info(&self, node: &NodeProc) -> Option<serde_json::Value> {
        self.show(node).await?.get("consenter")?.get("cluster").cloned()
    }

    /// The ledger height of `node` (its participation API's `height`).
    pub async fn height(&self, node: &NodeProc) -> u64 {
        let v = self.show(node).await.expect("channel show");
        v["height"].as_u64().expect("a height")
    }

    /// The node (index) that leads according to every node of `among`
    /// (all up), once they agree (waits up to `within`).
    pub async fn leader_among(&self, nodes: &[Option<NodeProc>], among: &[usize], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut infos = Vec::new();
            for &i in among {
                if let Some(c) = match nodes[i].as_ref() {
                    Some(n) => self.cluster_info(n).await,
                    None => None,
                } {
                    infos.push((i, c));
                }
            }
            let leading: Vec<usize> =
                infos.iter().filter(|(_, c)| c["isLeader"] == serde_json::Value::Bool(true)).map(|(i, _)| *i).collect();
            if leading.len() == 1 && infos.len() == among.len() {
                let id = infos.iter().find(|(i, _)| *i == leading[0]).map(|(_, c)| c["selfId"].clone());
                if infos.iter().all(|(_, c)| Some(c["leader"].clone()) == id) {
                    return leading[0];
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader among {among:?}: {infos:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader every up node agrees on (waits up to 60 s).
    pub async fn leader(&self, nodes: &[Option<NodeProc>]) -> usize {
        let up: Vec<usize> = (0..nodes.len()).filter(|i| nodes[*i].is_some()).collect();
        self.leader_among(nodes, &up, Duration::from_secs(60)).await
    }

    /// `leaderChanges` of `node`'s channel.
    pub async fn leader_changes(&self, node: &NodeProc) -> u64 {
        self.cluster_info(node).await.and_then(|c| c["leaderChanges"].as_u64()).unwrap_or(0)
    }
}

/// The transport's counters on `node` (its admin endpoint's
/// /cluster/v1/stats).
pub async fn cluster_stats(node: &NodeProc) -> ClusterStatsView {
    let admin = node.admin.clone().expect("an admin endpoint");
    let a = tokio::task::spawn_blocking(move || {
        consenter_host::admin::request(&admin, "GET", consenter_host::admin::CLUSTER_STATS, None)
    })
    .await
    .unwrap()
    .expect("GET /cluster/v1/stats");
    assert_eq!(a.status, 200, "cluster stats: {}", a.error_text());
    serde_json::from_slice(&a.body).expect("cluster stats JSON")
}

/// `n` transaction ids `prefix-0`...
pub fn txs(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|k| format!("{prefix}-{k}")).collect()
}

/// The transaction ids of a block's envelopes.
pub fn block_tx_ids(b: &Block) -> Vec<String> {
    let data = b.data.as_ref().map(|d| d.data.clone()).unwrap_or_default();
    data.into_iter().map(|d| consenter_host::envelope::Envelope::parse(d).unwrap().tx_id).collect()
}

/// The transaction ids of the envelopes of `blocks` after the genesis
/// block (a chain from block 0).
pub fn tx_ids(blocks: &[Block]) -> Vec<String> {
    blocks.iter().skip(1).flat_map(block_tx_ids).collect()
}

/// Headers and data of two ledgers are identical, and each verifies (data
/// hashes, hash chain).
pub fn same_chain(a: &[Block], b: &[Block]) {
    assert_eq!(a.len(), b.len(), "ledger lengths");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.header, y.header, "block {:?}", x.header.as_ref().map(|h| h.number));
        assert_eq!(x.data, y.data);
        block::check_data_hash(x).unwrap();
    }
    for w in a.windows(2) {
        assert_eq!(
            w[1].header.as_ref().unwrap().previous_hash.as_ref(),
            block::header_hash(w[0].header.as_ref().unwrap())
        );
    }
    for (n, b) in a.iter().enumerate() {
        assert_eq!(b.header.as_ref().unwrap().number, n as u64, "block numbers");
    }
}

/// Each id of `txs` is ordered exactly once in `blocks`.
pub fn ordered_once(blocks: &[Block], txs: &[String]) {
    let ids = tx_ids(blocks);
    for t in txs {
        assert_eq!(ids.iter().filter(|x| *x == t).count(), 1, "{t} ordered once");
    }
}

/// A TCP proxy on a consenter endpoint, forwarding to a node's real port,
/// on a runtime of its own (so that the test's own waits never slow it).
/// Cut: every connection through it is closed and new ones are closed as
/// soon as they are accepted; healed: it forwards again.
pub struct Proxy {
    rt: Option<tokio::runtime::Runtime>,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// Connections accepted and forwarded so far.
    pub forwarded: Arc<AtomicU64>,
    /// Connections closed on arrival while cut.
    pub refused: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(listen: u16, to: u16) -> Proxy {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", listen))
            .unwrap_or_else(|e| panic!("proxy on 127.0.0.1:{listen}: {e}"));
        std_listener.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let forwarded = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let (c, cs, f, r) = (cut.clone(), conns.clone(), forwarded.clone(), refused.clone());
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((mut down, _)) = l.accept().await else { continue };
                // Under the lock, so that a cut never misses a connection.
                let mut v = cs.lock().unwrap();
                if c.load(Ordering::SeqCst) {
                    r.fetch_add(1, Ordering::Relaxed);
                    drop(down);
                    continue;
                }
                f.fetch_add(1, Ordering::Relaxed);
                let task = tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else { return };
                    let _ = up.set_nodelay(true);
                    let _ = down.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
                v.retain(|h| !h.is_finished());
                v.push(task.abort_handle());
            }
        });
        Proxy { rt: Some(rt), cut, conns, forwarded, refused }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        let mut conns = self.conns.lock().unwrap();
        self.cut.store(true, Ordering::SeqCst);
        for h in conns.drain(..) {
            h.abort(); // drops both sockets: the connection closes
        }
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
