//! etcdraft across real node processes: three consenter-host nodes started
//! from Fabric's `raftchannel.genesis.block` with the fixture crypto
//! (orderer0..2's MSP and TLS certificates, ports 7050/7150/7250 as the
//! genesis block names them), over mutual TLS. A leader is elected;
//! Broadcast to every node (followers forward) and Deliver from every node;
//! the ledgers hold identical headers and data and verify; the leader is
//! killed with SIGKILL while load runs, a new leader takes over, and the
//! killed node restarts and catches up, ten times over.

mod common;
mod raft_cluster;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
// The fixture paths, the client identity and the ledger comparisons are
// shared with tests/raft_faults.rs.
use consenter_host::envelope;
use consenter_host::proto::common::{Block, Envelope, HeaderType};
use consenter_host::proto::orderer::atomic_broadcast_client::AtomicBroadcastClient;
use consenter_host::proto::orderer::seek_info::SeekBehavior;
use consenter_host::proto::orderer::seek_position::Type as Pos;
use consenter_host::proto::orderer::{SeekInfo, SeekPosition, SeekSpecified};
use consenter_host::signer::Signer;
use consenter_host::tls::{self, dial};
use prost::Message;
use raft_cluster::{fixtures, orderer, same_chain, tlsca, tx_ids, user1};
use tonic::transport::Channel;

const CHANNEL: &str = "raftchannel";

/// The genesis block fixes the nodes' ports: one cluster at a time, in
/// this process (a mutex) and across test processes (a file lock).
static PORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds the fixture's ports for the lifetime of the guard.
struct PortsGuard {
    _in_process: tokio::sync::MutexGuard<'static, ()>,
    _file: std::fs::File,
}

async fn lock_ports() -> PortsGuard {
    let g = PORTS.lock().await;
    let path = std::env::temp_dir().join("consenter-host-fabric-fixture-ports.lock");
    let file = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::create(&path).unwrap();
        f.lock().unwrap();
        f
    })
    .await
    .unwrap();
    PortsGuard { _in_process: g, _file: file }
}

/// The channel's `consenter.cluster` object on node `node` (its admin
/// endpoint), if the plugin reported one.
fn cluster_info(node: &NodeProc) -> Option<serde_json::Value> {
    let admin = node.admin.as_ref()?;
    let (ok, out) = cli(&["channel", "show", "-o", admin, "-c", CHANNEL]);
    if !ok {
        eprintln!("channel show on {admin}: {out}");
        return None;
    }
    let start = out.find('{')?;
    let v: serde_json::Value = serde_json::from_str(out[start..].trim()).ok()?;
    v.get("consenter")?.get("cluster").cloned()
}

/// The index of the node that leads, once the up nodes agree on one
/// (waits up to 60 s).
fn leader(nodes: &[Option<NodeProc>]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let infos: Vec<(usize, serde_json::Value)> =
            nodes.iter().enumerate().filter_map(|(i, n)| n.as_ref().and_then(cluster_info).map(|c| (i, c))).collect();
        let leading: Vec<usize> =
            infos.iter().filter(|(_, c)| c["isLeader"] == serde_json::Value::Bool(true)).map(|(i, _)| *i).collect();
        let up = nodes.iter().filter(|n| n.is_some()).count();
        if leading.len() == 1 && infos.len() == up {
            let id = infos.iter().find(|(i, _)| *i == leading[0]).map(|(_, c)| c["selfId"].clone());
            if infos.iter().all(|(_, c)| Some(c["leader"].clone()) == id) {
                return leading[0];
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {infos:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Node `i` of the raft channel (orderer`i`, port 7050 + 100·i).
fn raft_node(i: usize, data: &Path) -> NodeProc {
    let listen = format!("127.0.0.1:{}", 7050 + 100 * i);
    let (msp, cert, key, genesis) = (
        orderer(i, "msp"),
        orderer(i, "tls/server.crt"),
        orderer(i, "tls/server.key"),
        fixtures().join("blocks/raftchannel.genesis.block").to_string_lossy().into_owned(),
    );
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

async fn client(i: usize) -> AtomicBroadcastClient<Channel> {
    let config = tls::grpc_client_config(&[PathBuf::from(tlsca())], None).unwrap();
    let tls = dial::ClientTls { config, server_name: None };
    let addr = format!("127.0.0.1:{}", 7050 + 100 * i);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match dial::connect(&addr, Some(tls.clone())).await {
            Ok(ch) => return AtomicBroadcastClient::new(ch).max_decoding_message_size(64 << 20),
            Err(e) if Instant::now() > deadline => panic!("connecting to node {i}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn signed_seek(start: u64, stop: u64, behavior: SeekBehavior, signer: &Signer) -> Envelope {
    let pos = |n| SeekPosition { r#type: Some(Pos::Specified(SeekSpecified { number: n })) };
    let seek =
        SeekInfo { start: Some(pos(start)), stop: Some(pos(stop)), behavior: behavior as i32, error_response: 0 };
    let b =
        envelope::build(CHANNEL, HeaderType::DeliverSeekInfo, "", seek.encode_to_vec().into(), Some(signer)).unwrap();
    Envelope::decode(b).unwrap()
}

/// Blocks 0..=stop of node `i`, waiting up to 60 s for them.
async fn blocks_of(i: usize, stop: u64) -> Vec<Block> {
    blocks_range(i, 0, stop).await
}

/// Blocks start..=stop of node `i`, waiting up to 60 s for them.
async fn blocks_range(i: usize, start: u64, stop: u64) -> Vec<Block> {
    let mut c = client(i).await;
    let req = tokio_stream::iter(vec![signed_seek(start, stop, SeekBehavior::BlockUntilReady, &user1())]);
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
        .unwrap_or_else(|_| panic!("node {i}: blocks {start}..={stop} in time"))
}

/// Broadcasts `txs` to node `i` until each is acknowledged SUCCESS (a
/// node without a leader answers SERVICE_UNAVAILABLE: retried); the ids
/// acknowledged.
async fn broadcast_until_ok(i: usize, txs: &[String]) -> Vec<String> {
    let signer = user1();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<String> = txs.to_vec();
    let mut ok = Vec::new();
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "node {i}: {} envelopes never acknowledged", pending.len());
        let mut c = client(i).await;
        let envs = pending.iter().map(|t| signed_message(CHANNEL, t, 1000, Some(&signer))).collect();
        let acks = broadcast_all(&mut c, envs).await;
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

/// Waits until node `i` delivers a block holding every id of `txs`; its
/// blocks then (each block is fetched once, as it comes).
async fn until_ordered(i: usize, txs: &[String]) -> Vec<Block> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut blocks = blocks_of(i, 0).await;
    let mut missing: std::collections::BTreeSet<String> = txs.iter().cloned().collect();
    loop {
        if missing.is_empty() {
            return blocks;
        }
        assert!(Instant::now() < deadline, "node {i}: {} envelopes not ordered in time", missing.len());
        let next = blocks.len() as u64;
        let more = blocks_range(i, next, next).await;
        // tx_ids skips the first block of what it is given: count the new
        // block on its own.
        for b in &more {
            for d in b.data.as_ref().map(|d| d.data.clone()).unwrap_or_default() {
                missing.remove(&consenter_host::envelope::Envelope::parse(d).unwrap().tx_id);
            }
        }
        blocks.extend(more);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_order_through_any_node_and_agree() {
    let _ports = lock_ports().await;
    let dir = tempfile::tempdir().unwrap();
    let _nodes: Vec<NodeProc> = (0..3).map(|i| raft_node(i, &dir.path().join(format!("n{i}")))).collect();
    let mut all = Vec::new();
    for i in 0..3 {
        let txs: Vec<String> = (0..20).map(|k| format!("via{i}-{k}")).collect();
        all.extend(broadcast_until_ok(i, &txs).await);
    }
    let b0 = until_ordered(0, &all).await;
    let stop = b0.len() as u64 - 1;
    let b1 = blocks_of(1, stop).await;
    let b2 = blocks_of(2, stop).await;
    same_chain(&b0, &b1);
    same_chain(&b0, &b2);
    let ids = tx_ids(&b0);
    for t in &all {
        assert_eq!(ids.iter().filter(|x| *x == t).count(), 1, "{t} ordered once");
    }
    // Each node signs the blocks it writes with its own identity (as every
    // Fabric orderer does): the signatures differ, the headers do not.
    assert_ne!(b0[1].metadata, b1[1].metadata);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_ten_times_loses_no_written_block() {
    let _ports = lock_ports().await;
    let dir = tempfile::tempdir().unwrap();
    let data = |i: usize| dir.path().join(format!("k{i}"));
    let mut nodes: Vec<Option<NodeProc>> = (0..3).map(|i| Some(raft_node(i, &data(i)))).collect();
    let mut during: Vec<String> = Vec::new();
    let mut after: Vec<String> = Vec::new();
    let mut written: Vec<Block> = Vec::new();
    for round in 0..10 {
        let l = leader(&nodes);
        let survivor = (l + 1) % 3;
        // Load through a follower while the leader is killed with SIGKILL.
        let txs: Vec<String> = (0..30).map(|k| format!("during{round}-{k}")).collect();
        let load = tokio::spawn(async move { broadcast_until_ok(survivor, &txs).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        nodes[l].as_mut().unwrap().kill();
        nodes[l] = None;
        during.extend(load.await.unwrap());
        // A new leader among the two left orders what comes next...
        let new = leader(&nodes);
        assert_ne!(new, l, "round {round}: a new leader");
        let next: Vec<String> = (0..10).map(|k| format!("after{round}-{k}")).collect();
        let next = broadcast_until_ok(survivor, &next).await;
        let now = until_ordered(survivor, &next).await;
        after.extend(next);
        // ...and every block any node had written is there, unchanged.
        assert!(now.len() >= written.len(), "round {round}: blocks lost");
        same_chain(&now[..written.len()], &written);
        same_chain(&blocks_of(new, now.len() as u64 - 1).await, &now);
        // The killed node restarts from its ledger and catches up.
        nodes[l] = Some(raft_node(l, &data(l)));
        same_chain(&blocks_of(l, now.len() as u64 - 1).await, &now);
        written = now;
    }
    let ids = tx_ids(&written);
    let mut seen = std::collections::BTreeSet::new();
    assert!(ids.iter().all(|t| seen.insert(t)), "an envelope ordered twice");
    for t in &after {
        assert!(ids.contains(t), "{t} was ordered and is gone");
    }
    // Envelopes a follower forwarded to the leader that was killed may be
    // lost, as in Fabric's etcdraft (the client learns the outcome from
    // Deliver); how many were, for the record.
    let lost = during.iter().filter(|t| !ids.contains(t)).count();
    eprintln!("envelopes in flight at the 10 kills: {}, lost with the killed leader: {lost}", during.len());
    let leader_changes =
        nodes.iter().flatten().filter_map(cluster_info).map(|c| c["leaderChanges"].as_u64().unwrap_or(0)).max();
    assert!(leader_changes.is_some_and(|n| n >= 1), "{leader_changes:?}");
}

/// A CONFIG_UPDATE of the raft channel setting its etcdraft consenters,
/// signed by the orderer org's admin (the ConsensusType value's Admins
/// policy), from the channel's config in `last_config`.
fn consenters_update(last_config: &Block, consenters: Vec<consenter_host::proto::etcdraft::Consenter>) -> Envelope {
    use consenter_host::proto::common::{ConfigSignature, ConfigUpdateEnvelope};
    use consenter_host::proto::etcdraft::ConfigMetadata;
    use consenter_host::proto::orderer::ConsensusType;
    let config = config_in(last_config);
    let orderer = &config.channel_group.as_ref().unwrap().groups["Orderer"];
    let mut ct = ConsensusType::decode(orderer.values["ConsensusType"].value.clone()).unwrap();
    let mut md = ConfigMetadata::decode(ct.metadata.clone()).unwrap();
    md.consenters = consenters;
    ct.metadata = md.encode_to_vec().into();
    let update = orderer_value_update(CHANNEL, &config, "ConsensusType", ct.encode_to_vec());
    let admin_dir = fixtures().join("crypto/ordererOrganizations/example.com/users/Admin@example.com/msp");
    let admin = Signer::from_msp_dir(&admin_dir, "OrdererMSP").unwrap();
    let cu: bytes::Bytes = update.encode_to_vec().into();
    let sh = admin.new_signature_header().encode_to_vec();
    let mut msg = sh.clone();
    msg.extend_from_slice(&cu);
    let sig = ConfigSignature { signature_header: sh.into(), signature: admin.sign(&msg).unwrap().into() };
    let cue = ConfigUpdateEnvelope { config_update: cu, signatures: vec![sig] };
    let b = envelope::build(CHANNEL, HeaderType::ConfigUpdate, "", cue.encode_to_vec().into(), Some(&admin)).unwrap();
    Envelope::decode(b).unwrap()
}

/// The etcdraft consenter entry of orderer`i` (127.0.0.1:7050 + 100·i).
fn consenter_entry(i: usize) -> consenter_host::proto::etcdraft::Consenter {
    let cert = std::fs::read(orderer(i, "tls/server.crt")).unwrap();
    consenter_host::proto::etcdraft::Consenter {
        host: "127.0.0.1".into(),
        port: 7050 + 100 * i as u32,
        client_tls_cert: cert.clone().into(),
        server_tls_cert: cert.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consenter_is_added_by_config_update_and_joins_from_the_latest_config_block() {
    let _ports = lock_ports().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Option<NodeProc>> =
        (0..3).map(|i| Some(raft_node(i, &dir.path().join(format!("m{i}"))))).collect();
    let first: Vec<String> = (0..10).map(|k| format!("before-{k}")).collect();
    let first = broadcast_until_ok(1, &first).await;
    let blocks = until_ordered(0, &first).await;
    // Add orderer3 as a consenter.
    let update = consenters_update(&blocks[0], (0..4).map(consenter_entry).collect());
    let mut c = client(0).await;
    let acks = broadcast_all(&mut c, vec![update]).await;
    assert_eq!(acks[0].0, 200, "{acks:?}");
    // The config block: the last block once it is written.
    let deadline = Instant::now() + Duration::from_secs(30);
    let config_block = loop {
        let h = blocks.len() as u64;
        let b = blocks_of(0, h).await;
        if let Some(last) = b.last()
            && config_in_opt(last).is_some()
        {
            break last.clone();
        }
        assert!(Instant::now() < deadline, "the config block was written");
    };
    let join_file = dir.path().join("join.block");
    std::fs::write(&join_file, config_block.encode_to_vec()).unwrap();
    // orderer3 joins from that block: it onboards, then takes part.
    let n3 = raft_node_joining(3, &dir.path().join("m3"));
    let (ok, out) = cli(&["channel", "join", "-o", n3.admin.as_ref().unwrap(), "-b", join_file.to_str().unwrap()]);
    assert!(ok && (out.contains("\"status\": \"onboarding\"") || out.contains("\"status\": \"active\"")), "{out}");
    nodes.push(Some(n3));
    // Onboarding, then active (as osnadmin shows it in Fabric 2.3+).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) =
            cli(&["channel", "show", "-o", nodes[3].as_ref().unwrap().admin.as_ref().unwrap(), "-c", CHANNEL]);
        if ok && out.contains("\"status\": \"active\"") {
            break;
        }
        assert!(ok && out.contains("\"status\": \"onboarding\""), "{out}");
        assert!(Instant::now() < deadline, "orderer3 became active: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second: Vec<String> = (0..10).map(|k| format!("after-{k}")).collect();
    let second = broadcast_until_ok(3, &second).await;
    let all = until_ordered(0, &second).await;
    let on3 = blocks_of(3, all.len() as u64 - 1).await;
    same_chain(&on3, &all);
    let info = cluster_info(nodes[3].as_ref().unwrap()).expect("orderer3 reports its cluster");
    assert_eq!(info["selfId"], 4, "{info}");

    // Then orderer1 is removed, while load runs through orderer3.
    let last_config = all.iter().rev().find(|b| config_in_opt(b).is_some()).unwrap().clone();
    let load = tokio::spawn(async {
        let txs: Vec<String> = (0..30).map(|k| format!("during-removal-{k}")).collect();
        broadcast_until_ok(3, &txs).await
    });
    let update = consenters_update(&last_config, [0, 2, 3].into_iter().map(consenter_entry).collect());
    let acks = broadcast_all(&mut client(0).await, vec![update]).await;
    assert_eq!(acks[0].0, 200, "{acks:?}");
    let during = load.await.unwrap();
    // Once the config commits, orderer1 is out: stop it; the others order.
    let deadline = Instant::now() + Duration::from_secs(30);
    for nudge in 0.. {
        let b = blocks_of(0, all.len() as u64).await;
        if b.iter().skip(all.len()).any(|b| config_in_opt(b).is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "the removal's config block was written");
        let _ = broadcast_until_ok(0, &[format!("nudge-{nudge}")]).await;
    }
    nodes[1].as_mut().unwrap().kill();
    nodes[1] = None;
    let after: Vec<String> = (0..10).map(|k| format!("after-removal-{k}")).collect();
    let after = broadcast_until_ok(2, &after).await;
    let end = until_ordered(0, &after).await;
    for i in [2, 3] {
        same_chain(&blocks_of(i, end.len() as u64 - 1).await, &end);
    }
    let ids = tx_ids(&end);
    let mut seen = std::collections::BTreeSet::new();
    // Config envelopes have no tx id.
    if let Some(d) = ids.iter().filter(|t| !t.is_empty()).find(|t| !seen.insert(*t)) {
        let holding: Vec<u64> = end
            .iter()
            .filter(|b| tx_ids(&[Block::default(), (*b).clone()]).contains(d))
            .map(|b| b.header.as_ref().unwrap().number)
            .collect();
        panic!("{d} ordered twice, in blocks {holding:?}");
    }
    let ordered_during = during.iter().filter(|t| ids.contains(t)).count();
    eprintln!("{ordered_during} of {} envelopes sent during the removal were ordered", during.len());
}

/// The Config of a config block, if it is one.
fn config_in_opt(b: &Block) -> Option<consenter_host::proto::common::Config> {
    use consenter_host::proto::common::{ChannelHeader, ConfigEnvelope, Payload};
    let env = Envelope::decode(b.data.as_ref()?.data.first()?.clone()).ok()?;
    let p = Payload::decode(env.payload).ok()?;
    let ch = ChannelHeader::decode(p.header.as_ref()?.channel_header.clone()).ok()?;
    (ch.r#type == HeaderType::Config as i32).then(|| ConfigEnvelope::decode(p.data).ok()?.config).flatten()
}

/// orderer`i` with no channel yet (it joins one through its admin API).
fn raft_node_joining(i: usize, data: &Path) -> NodeProc {
    let listen = format!("127.0.0.1:{}", 7050 + 100 * i);
    let (msp, cert, key, ca) = (orderer(i, "msp"), orderer(i, "tls/server.crt"), orderer(i, "tls/server.key"), tlsca());
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
        "--no-dev-channel",
    ];
    NodeProc::start_logged(data, &args, &data.with_extension("log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_while_the_log_is_compacted_catches_up_by_pulling_blocks() {
    // SnapshotIntervalSize is 16 MiB in the fixture: 20,000 envelopes of
    // 1 KiB while orderer2 is down make the others compact past it.
    let _ports = lock_ports().await;
    let dir = tempfile::tempdir().unwrap();
    let data = |i: usize| dir.path().join(format!("c{i}"));
    let mut nodes: Vec<Option<NodeProc>> = (0..3).map(|i| Some(raft_node(i, &data(i)))).collect();
    let warm = broadcast_until_ok(0, &["warm".to_string()]).await;
    until_ordered(2, &warm).await;
    nodes[2].as_mut().unwrap().kill();
    nodes[2] = None;
    let signer = user1();
    let mut sent = Vec::new();
    for round in 0..20 {
        let txs: Vec<String> = (0..1000).map(|k| format!("bulk{round}-{k}")).collect();
        let envs = txs.iter().map(|t| signed_message(CHANNEL, t, 1024, Some(&signer))).collect();
        let acks = broadcast_all(&mut client(0).await, envs).await;
        assert!(acks.iter().all(|(st, _)| *st == 200), "{:?}", acks.iter().find(|a| a.0 != 200));
        sent.extend(txs);
    }
    let last = sent.last().cloned().unwrap();
    let done = until_ordered(0, std::slice::from_ref(&last)).await;
    let bytes: usize = done.iter().map(|b| b.encode_to_vec().len()).sum();
    assert!(bytes > 16 << 20, "the others wrote past SnapshotIntervalSize ({bytes} bytes)");
    nodes[2] = Some(raft_node(2, &data(2)));
    let back = blocks_of(2, done.len() as u64 - 1).await;
    same_chain(&back, &done);
}
