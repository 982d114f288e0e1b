//! etcdraft across real node processes: three consenter-host nodes started
//! from Fabric's `raftchannel.genesis.block` with the fixture crypto
//! (orderer0..2's MSP and TLS certificates, ports 7050/7150/7250 as the
//! genesis block names them), over mutual TLS (two of the three trusting
//! only the TLS CA the channel config names). A leader is elected;
//! Broadcast to every node (followers forward) and Deliver from every node;
//! the ledgers hold identical headers and data and verify; the leader is
//! killed with SIGKILL while load runs, a new leader takes over, and the
//! killed node restarts and catches up, ten times over.

mod common;
mod raft_cluster;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
// The fixture paths, the client identity and the ledger comparisons are
// shared with tests/raft_faults.rs.
use consenter_host::envelope;
use consenter_host::proto::common::{Block, Envelope, HeaderType};
use consenter_host::proto::orderer::atomic_broadcast_client::AtomicBroadcastClient;
use consenter_host::signer::Signer;
use prost::Message;
use raft_cluster::{Net, fixtures, orderer, same_chain, tlsca, tx_ids, user1};
use tonic::transport::Channel;

/// The channel of `raftchannel.genesis.block`.
const RAFT: &str = "raftchannel";
/// The channel of `solochannel.genesis.block` (the same orgs, solo).
const SOLO: &str = "solochannel";

/// The genesis blocks fix the nodes' ports: one cluster at a time, in
/// this process (a mutex, which also holds the channel the helpers below
/// talk to) and across test processes (a file lock).
static PORTS: tokio::sync::Mutex<&'static str> = tokio::sync::Mutex::const_new(RAFT);

/// The channel of the cluster that holds the ports now.
static CHANNEL_NOW: std::sync::RwLock<&'static str> = std::sync::RwLock::new(RAFT);

/// The channel the helpers talk to: the one the running test locked the
/// ports for.
fn channel() -> &'static str {
    *CHANNEL_NOW.read().unwrap()
}

/// Holds the fixture's ports for the lifetime of the guard.
struct PortsGuard {
    _in_process: tokio::sync::MutexGuard<'static, &'static str>,
    _file: std::fs::File,
}

/// Takes the fixture's ports for a cluster ordering `channel`.
async fn lock_ports(channel: &'static str) -> PortsGuard {
    let mut g = PORTS.lock().await;
    *g = channel;
    *CHANNEL_NOW.write().unwrap() = channel;
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

/// The running test's cluster: the channel it locked the ports for, on
/// orderer0..3's ports (orderer3 joins by config update; the helpers of
/// `tests/raft_cluster` talk to it).
fn net() -> Net {
    let mut net = match channel() {
        SOLO => Net::solo3(),
        _ => Net::raft3(),
    };
    net.ports = (0..4).map(Net::consenter_port).collect();
    net
}

/// The channel's `consenter.cluster` object on node `node`, if the plugin
/// reported one.
async fn cluster_info(node: &NodeProc) -> Option<serde_json::Value> {
    net().cluster_info(node).await
}

/// The index of the node that leads, once the up nodes agree on one
/// (waits up to 60 s).
async fn leader(nodes: &[Option<NodeProc>]) -> usize {
    net().leader(nodes).await
}

/// Node `i` of the raft channel (orderer`i`, port 7050 + 100·i).
fn raft_node(i: usize, data: &Path) -> NodeProc {
    fixture_node(i, data, Some("raftchannel.genesis.block"))
}

/// orderer`i` (its MSP and TLS identity, port 7050 + 100·i) over mutual
/// TLS, bootstrapped from the fixture block `genesis`, or with no channel
/// (it joins one through its admin API).
fn fixture_node(i: usize, data: &Path, genesis: Option<&str>) -> NodeProc {
    node_with(i, data, genesis, true)
}

/// [`fixture_node`]; without `own_roots` the node is given no
/// `--tls-root-ca`: it trusts the TLS CAs the channel's orderer
/// organization names (its MSP's `tls_root_certs`), as a Fabric orderer.
fn node_with(i: usize, data: &Path, genesis: Option<&str>, own_roots: bool) -> NodeProc {
    let listen = format!("127.0.0.1:{}", 7050 + 100 * i);
    let (msp, cert, key, ca) = (orderer(i, "msp"), orderer(i, "tls/server.crt"), orderer(i, "tls/server.key"), tlsca());
    let mut args: Vec<String> =
        ["--listen", &listen, "--msp-dir", &msp, "--mspid", "OrdererMSP", "--tls-cert", &cert, "--tls-key", &key]
            .map(String::from)
            .to_vec();
    if own_roots {
        args.extend(["--tls-root-ca".into(), ca]);
    }
    match genesis {
        Some(g) => args.extend(["--genesis-block".into(), fixtures().join("blocks").join(g).display().to_string()]),
        None => args.push("--no-dev-channel".into()),
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    NodeProc::start_logged(data, &args, &data.with_extension("log"))
}

async fn client(i: usize) -> AtomicBroadcastClient<Channel> {
    net().client(i).await
}

/// Blocks 0..=stop of node `i`, waiting up to 60 s for them.
async fn blocks_of(i: usize, stop: u64) -> Vec<Block> {
    net().blocks_of(i, stop).await
}

/// Blocks start..=stop of node `i`, waiting up to 60 s for them.
async fn blocks_range(i: usize, start: u64, stop: u64) -> Vec<Block> {
    net().blocks_range(i, start, stop).await
}

/// Broadcasts `txs` to node `i` until each is acknowledged SUCCESS; the
/// ids acknowledged.
async fn broadcast_until_ok(i: usize, txs: &[String]) -> Vec<String> {
    net().broadcast_until_ok(i, txs).await
}

/// Waits until node `i` delivers blocks holding every id of `txs`; its
/// blocks then.
async fn until_ordered(i: usize, txs: &[String]) -> Vec<Block> {
    net().until_ordered(i, txs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_order_through_any_node_and_agree() {
    let _ports = lock_ports(RAFT).await;
    let dir = tempfile::tempdir().unwrap();
    // Nodes 1 and 2 get no --tls-root-ca: they reach the others by
    // trusting the orderer org's TLS CA from the channel config.
    let _nodes: Vec<NodeProc> = (0..3)
        .map(|i| node_with(i, &dir.path().join(format!("n{i}")), Some("raftchannel.genesis.block"), i == 0))
        .collect();
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
    let _ports = lock_ports(RAFT).await;
    let dir = tempfile::tempdir().unwrap();
    let data = |i: usize| dir.path().join(format!("k{i}"));
    let mut nodes: Vec<Option<NodeProc>> = (0..3).map(|i| Some(raft_node(i, &data(i)))).collect();
    let mut during: Vec<String> = Vec::new();
    let mut after: Vec<String> = Vec::new();
    let mut written: Vec<Block> = Vec::new();
    for round in 0..10 {
        let l = leader(&nodes).await;
        let survivor = (l + 1) % 3;
        // Load through a follower while the leader is killed with SIGKILL.
        let txs: Vec<String> = (0..30).map(|k| format!("during{round}-{k}")).collect();
        let load = tokio::spawn(async move { broadcast_until_ok(survivor, &txs).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        nodes[l].as_mut().unwrap().kill();
        nodes[l] = None;
        during.extend(load.await.unwrap());
        // A new leader among the two left orders what comes next...
        let new = leader(&nodes).await;
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
    let mut leader_changes = None;
    for n in nodes.iter().flatten() {
        let c = net().leader_changes(n).await;
        leader_changes = leader_changes.max(Some(c));
    }
    assert!(leader_changes.is_some_and(|n| n >= 1), "{leader_changes:?}");
}

/// A CONFIG_UPDATE of the raft channel setting its etcdraft consenters,
/// signed by the orderer org's admin (the ConsensusType value's Admins
/// policy), from the channel's config in `last_config`.
fn consenters_update(last_config: &Block, consenters: Vec<consenter_host::proto::etcdraft::Consenter>) -> Envelope {
    use consenter_host::proto::etcdraft::ConfigMetadata;
    consensus_update(last_config, |ct| {
        let mut md = ConfigMetadata::decode(ct.metadata.clone()).unwrap();
        md.consenters = consenters;
        ct.metadata = md.encode_to_vec().into();
    })
}

/// A CONFIG_UPDATE of the channel's ConsensusType value as `change`
/// makes it, signed by the orderer org's admin (the value's Admins
/// policy), from the channel's config in `last_config`.
fn consensus_update(
    last_config: &Block,
    change: impl FnOnce(&mut consenter_host::proto::orderer::ConsensusType),
) -> Envelope {
    use consenter_host::proto::common::{ConfigSignature, ConfigUpdateEnvelope};
    use consenter_host::proto::orderer::ConsensusType;
    let config = config_in(last_config);
    let orderer = &config.channel_group.as_ref().unwrap().groups["Orderer"];
    let mut ct = ConsensusType::decode(orderer.values["ConsensusType"].value.clone()).unwrap();
    change(&mut ct);
    let update = orderer_value_update(channel(), &config, "ConsensusType", ct.encode_to_vec());
    let admin_dir = fixtures().join("crypto/ordererOrganizations/example.com/users/Admin@example.com/msp");
    let admin = Signer::from_msp_dir(&admin_dir, "OrdererMSP").unwrap();
    let cu: bytes::Bytes = update.encode_to_vec().into();
    let sh = admin.new_signature_header().encode_to_vec();
    let mut msg = sh.clone();
    msg.extend_from_slice(&cu);
    let sig = ConfigSignature { signature_header: sh.into(), signature: admin.sign(&msg).unwrap().into() };
    let cue = ConfigUpdateEnvelope { config_update: cu, signatures: vec![sig] };
    let b = envelope::build(channel(), HeaderType::ConfigUpdate, "", cue.encode_to_vec().into(), Some(&admin)).unwrap();
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
    let _ports = lock_ports(RAFT).await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Option<NodeProc>> =
        (0..3).map(|i| Some(raft_node(i, &dir.path().join(format!("m{i}"))))).collect();
    let first: Vec<String> = (0..10).map(|k| format!("before-{k}")).collect();
    let first = broadcast_until_ok(1, &first).await;
    let blocks = until_ordered(0, &first).await;
    // Add orderer3 as a consenter.
    let update = consenters_update(&blocks[0], (0..4).map(consenter_entry).collect());
    let mut c = client(0).await;
    let acks = broadcast_all(&mut c, vec![update.clone()]).await;
    assert_eq!(acks[0].0, 200, "{acks:?}");
    // The config block: the last block once it is written. A follower's
    // forward to a leader that just lost its leadership is lost (as in
    // Fabric); the client then sends the update again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let config_block = loop {
        let h = blocks.len() as u64;
        match tokio::time::timeout(Duration::from_secs(15), blocks_of(0, h)).await {
            Ok(b) => {
                if let Some(last) = b.last()
                    && config_in_opt(last).is_some()
                {
                    break last.clone();
                }
            }
            Err(_) => {
                let _ = broadcast_all(&mut client(0).await, vec![update.clone()]).await;
            }
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
            cli(&["channel", "show", "-o", nodes[3].as_ref().unwrap().admin.as_ref().unwrap(), "-c", channel()]);
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
    let info = cluster_info(nodes[3].as_ref().unwrap()).await.expect("orderer3 reports its cluster");
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
    fixture_node(i, data, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_while_the_log_is_compacted_catches_up_by_pulling_blocks() {
    // SnapshotIntervalSize is 16 MiB in the fixture: 20,000 envelopes of
    // 1 KiB while orderer2 is down make the others compact past it.
    let _ports = lock_ports(RAFT).await;
    let dir = tempfile::tempdir().unwrap();
    let data = |i: usize| dir.path().join(format!("c{i}"));
    let mut nodes: Vec<Option<NodeProc>> = (0..3).map(|i| Some(raft_node(i, &data(i)))).collect();
    let warm = broadcast_until_ok(0, &["warm".to_string()]).await;
    until_ordered(2, &warm).await;
    nodes[2].as_mut().unwrap().kill();
    nodes[2] = None;
    // If orderer2 led, the others elect a leader first (an envelope sent
    // to a node that knows no leader for longer than it holds them is
    // refused; failover is the kill test's subject, not this one's).
    leader(&nodes).await;
    let signer = user1();
    let mut sent = Vec::new();
    for round in 0..20 {
        let txs: Vec<String> = (0..1000).map(|k| format!("bulk{round}-{k}")).collect();
        let envs = txs.iter().map(|t| signed_message(channel(), t, 1024, Some(&signer))).collect();
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

/// The first config block at or after block `from` on node `i` (waits for
/// it, block by block).
async fn config_block_from(i: usize, from: u64) -> Block {
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in from.. {
        assert!(Instant::now() < deadline, "node {i}: a config block from block {from} in time");
        let b = blocks_range(i, n, n).await.remove(0);
        if config_in_opt(&b).is_some() {
            return b;
        }
    }
    unreachable!()
}

/// Submits a config update to node `i`: its Broadcast status and info.
async fn submit_update(i: usize, update: Envelope) -> (i32, String) {
    broadcast_all(&mut client(i).await, vec![update]).await.remove(0)
}

/// Waits until node `i`'s channel is active with `plugin` as its consenter.
async fn until_plugin(node: &NodeProc, plugin: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = consenter_view(node, channel());
        if v["plugin"] == plugin && v["state"] == "running" {
            return;
        }
        assert!(Instant::now() < deadline, "the channel runs {plugin}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts orderer`i` with no channel and joins it to the channel from
/// `join` (a config block); returns once the channel is active there.
async fn join_from(i: usize, data: &Path, join: &Block) -> NodeProc {
    let file = data.with_extension("join.block");
    std::fs::write(&file, join.encode_to_vec()).unwrap();
    let node = raft_node_joining(i, data);
    let admin = node.admin.clone().unwrap();
    let (ok, out) = cli(&["channel", "join", "-o", &admin, "-b", file.to_str().unwrap()]);
    assert!(ok && (out.contains("\"status\": \"onboarding\"") || out.contains("\"status\": \"active\"")), "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = cli(&["channel", "show", "-o", &admin, "-c", channel()]);
        if ok && out.contains("\"status\": \"active\"") {
            return node;
        }
        assert!(ok && out.contains("\"status\": \"onboarding\""), "{out}");
        assert!(Instant::now() < deadline, "orderer{i} became active: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Broadcasts to node 0 until `stop` is set, one round of 20 envelopes
/// (ids `{prefix}{round}-{k}`) at a time; the ids acknowledged SUCCESS.
fn load_until(prefix: &'static str, stop: Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let signer = user1();
        let mut acked = Vec::new();
        for round in 0.. {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let txs: Vec<String> = (0..20).map(|k| format!("{prefix}{round}-{k}")).collect();
            let envs = txs.iter().map(|t| signed_message(channel(), t, 512, Some(&signer))).collect();
            let acks = broadcast_all(&mut client(0).await, envs).await;
            for (t, (st, info)) in txs.into_iter().zip(acks) {
                match st {
                    200 => acked.push(t),
                    // No leader for a moment (a consenter being added
                    // before it runs): not acknowledged, not required.
                    503 => {}
                    other => panic!("{t}: status {other}: {info}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acked
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_solo_channel_swaps_to_raft_grows_to_three_nodes_and_swaps_back_to_solo() {
    // A development channel (solo, one node, Fabric's solochannel) becomes
    // a three-node etcdraft channel while load runs, by config updates
    // alone: the type swap names this node as the only consenter, then
    // two consenters are added and join from the latest config block.
    // Then back: the two are removed and the channel swaps to solo.
    let _ports = lock_ports(SOLO).await;
    let dir = tempfile::tempdir().unwrap();
    let data = |i: usize| dir.path().join(format!("g{i}"));
    let mut nodes: Vec<Option<NodeProc>> = vec![Some(fixture_node(0, &data(0), Some("solochannel.genesis.block")))];
    let first = broadcast_until_ok(0, &(0..10).map(|k| format!("solo-{k}")).collect::<Vec<_>>()).await;
    let blocks = until_ordered(0, &first).await;
    until_plugin(nodes[0].as_ref().unwrap(), "solo").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = load_until("grow", stop.clone());

    // Refused up front: raft naming consenters that are not this node.
    let raft_md = {
        use consenter_host::proto::etcdraft::ConfigMetadata;
        use consenter_host::proto::orderer::ConsensusType;
        let genesis = std::fs::read(fixtures().join("blocks/raftchannel.genesis.block")).unwrap();
        let config = config_in(&Block::decode(genesis.as_slice()).unwrap());
        let orderer = &config.channel_group.as_ref().unwrap().groups["Orderer"];
        let ct = ConsensusType::decode(orderer.values["ConsensusType"].value.clone()).unwrap();
        let fabric = ConfigMetadata::decode(ct.metadata).unwrap();
        move |members: &[usize]| ConfigMetadata {
            consenters: members.iter().map(|i| consenter_entry(*i)).collect(),
            ..fabric.clone()
        }
    };
    let to_raft = |last: &Block, members: &[usize]| {
        let md = raft_md(members).encode_to_vec();
        consensus_update(last, move |ct| {
            ct.r#type = "etcdraft".into();
            ct.metadata = md.into();
        })
    };
    let genesis = &blocks[0];
    let (st, info) = submit_update(0, to_raft(genesis, &[1])).await;
    assert_eq!(st, 400, "{info}");
    assert!(info.contains("this node's TLS certificate is in none of the 1 consenter entries"), "{info}");

    // 1. solo -> etcdraft with this node alone: a live swap at the config block.
    let (st, info) = submit_update(0, to_raft(genesis, &[0])).await;
    assert_eq!(st, 200, "{info}");
    let swap = config_block_from(0, 1).await;
    until_plugin(nodes[0].as_ref().unwrap(), "etcdraft").await;
    assert_eq!(leader(&nodes).await, 0);
    // 2. and 3. Two consenters added, one config update each; each joins
    // from the config block that added it.
    let mut last = swap;
    for i in [1, 2] {
        let members: Vec<usize> = (0..=i).collect();
        let (st, info) =
            submit_update(0, consenters_update(&last, members.iter().map(|m| consenter_entry(*m)).collect())).await;
        assert_eq!(st, 200, "adding orderer{i}: {info}");
        last = config_block_from(0, last.header.as_ref().unwrap().number + 1).await;
        nodes.push(Some(join_from(i, &data(i), &last).await));
    }
    let lead = leader(&nodes).await;
    let view = consenter_view(nodes[0].as_ref().unwrap(), channel());
    assert_eq!(view["swaps"], 1, "{view}");
    // Broadcast through each node (followers forward), then stop the load.
    for i in 0..3 {
        let txs = broadcast_until_ok(i, &(0..5).map(|k| format!("three-{i}-{k}")).collect::<Vec<_>>()).await;
        until_ordered(lead, &txs).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = load.await.unwrap();
    assert!(acked.len() >= 100, "the load ran through the growth: {} acknowledged", acked.len());
    let all = until_ordered(0, &acked).await;
    let ids = tx_ids(&all);
    let mut seen = std::collections::BTreeSet::new();
    assert!(ids.iter().filter(|t| !t.is_empty()).all(|t| seen.insert(t.clone())), "an envelope ordered twice");
    for i in 1..3 {
        same_chain(&blocks_of(i, all.len() as u64 - 1).await, &all);
    }

    // Back to solo: refused while three consenters would each order alone.
    let last_config = config_block_from(0, last.header.as_ref().unwrap().number).await;
    let to_solo = |last: &Block| {
        consensus_update(last, |ct| {
            ct.r#type = "solo".into();
            ct.metadata = Default::default();
        })
    };
    let (st, info) = submit_update(0, to_solo(&last_config)).await;
    assert_eq!(st, 400, "{info}");
    assert!(info.contains("while the channel has 3 consenters"), "{info}");
    // Remove orderer2, then orderer1; then the swap.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = load_until("shrink", stop.clone());
    let mut last = last_config;
    for i in [2, 1] {
        let members: Vec<usize> = (0..i).collect();
        let (st, info) =
            submit_update(0, consenters_update(&last, members.iter().map(|m| consenter_entry(*m)).collect())).await;
        assert_eq!(st, 200, "removing orderer{i}: {info}");
        last = config_block_from(0, last.header.as_ref().unwrap().number + 1).await;
        // A block after it: raft applied the removal (which the removed
        // node still had to acknowledge, with two voters), so it may stop.
        let next = last.header.as_ref().unwrap().number + 1;
        blocks_range(0, next, next).await;
        nodes[i].as_mut().unwrap().kill();
        nodes[i] = None;
    }
    let (st, info) = submit_update(0, to_solo(&last)).await;
    assert_eq!(st, 200, "{info}");
    let back = config_block_from(0, last.header.as_ref().unwrap().number + 1).await;
    until_plugin(nodes[0].as_ref().unwrap(), "solo").await;
    let after = broadcast_until_ok(0, &(0..10).map(|k| format!("solo-again-{k}")).collect::<Vec<_>>()).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked2 = load.await.unwrap();
    let end = until_ordered(0, &[after, acked2.clone()].concat()).await;
    assert!(end.len() as u64 > back.header.as_ref().unwrap().number + 1, "solo writes blocks after the swap back");
    let ids = tx_ids(&end);
    let mut seen = std::collections::BTreeSet::new();
    let twice: Vec<&String> = ids.iter().filter(|t| !t.is_empty() && !seen.insert(t.to_string())).collect();
    assert!(twice.is_empty(), "ordered twice: {twice:?}");
    let view = consenter_view(nodes[0].as_ref().unwrap(), channel());
    assert_eq!(view["swaps"], 2, "{view}");
    assert_eq!(view["lostEnvelopes"], 0, "{view}");
    nodes[0].as_mut().unwrap().kill();
    let (ok, out) = cli(&["ledger", "verify", "--data-dir", &data(0).display().to_string()]);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_to_a_new_raft_build_keeps_the_cluster_ordering() {
    // An operator installs a new signed build of etcdraft on each node in
    // turn while load runs: each node's chain switches at its next block
    // boundary with the same raft storage and the last block's metadata,
    // and the cluster orders through it before the next node upgrades;
    // the ledgers stay identical, nothing is ordered twice, and every
    // envelope acknowledged SUCCESS, during the upgrades too, is ordered:
    // each old build hands what it held (waiting, cut, the leader it
    // follows) to the new one through the `handover` export.
    let _ports = lock_ports(RAFT).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (ok, out) = cli(&["plugin", "keygen", "--out", keys.join("operator").to_str().unwrap()]);
    assert!(ok, "{out}");
    let build = dir.path().join("raft-2.0.0.wasm");
    let raft = consenter_test_plugins::path("consenter_raft.wasm");
    let (ok, out) = cli(&[
        "plugin",
        "sign",
        "--key",
        keys.join("operator.key").to_str().unwrap(),
        "--name",
        "raft",
        "--version",
        "2.0.0",
        "--consensus-type",
        "etcdraft",
        "--capability",
        "cluster",
        "--capability",
        "replication",
        "--capability",
        "storage",
        raft.to_str().unwrap(),
        "-o",
        build.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let data = |i: usize| dir.path().join(format!("u{i}"));
    let nodes: Vec<Option<NodeProc>> = (0..3)
        .map(|i| {
            std::fs::create_dir_all(data(i).join("trusted-keys")).unwrap();
            std::fs::copy(keys.join("operator.pub"), data(i).join("trusted-keys/operator.pub")).unwrap();
            Some(raft_node(i, &data(i)))
        })
        .collect();
    let warm = broadcast_until_ok(0, &["warm".to_string()]).await;
    until_ordered(0, &warm).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = load_until("rolling", stop.clone());
    for (i, node) in nodes.iter().enumerate() {
        let node = node.as_ref().unwrap();
        let admin = node.admin.clone().unwrap();
        let (ok, out) = cli(&["plugin", "install", "-o", &admin, build.to_str().unwrap()]);
        assert!(ok && out.starts_with("Status: 201"), "orderer{i}: {out}");
        assert!(out.contains("\"raftchannel\""), "orderer{i}: {out}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = consenter_view(node, channel());
            if v["version"] == "2.0.0" {
                assert_eq!((&v["upgrades"], &v["state"]), (&1.into(), &"running".into()), "orderer{i}: {v}");
                break;
            }
            assert!(Instant::now() < deadline, "orderer{i} upgraded: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The cluster orders through the upgraded node before the next.
        let txs = broadcast_until_ok(i, &(0..5).map(|k| format!("upgraded-{i}-{k}")).collect::<Vec<_>>()).await;
        until_ordered(i, &txs).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = load.await.unwrap();
    let after = broadcast_until_ok(0, &(0..20).map(|k| format!("after-{k}")).collect::<Vec<_>>()).await;
    let all = until_ordered(0, &after).await;
    let ids = tx_ids(&all);
    let mut seen = std::collections::BTreeSet::new();
    let twice: Vec<&String> = ids.iter().filter(|t| !t.is_empty() && !seen.insert(t.to_string())).collect();
    assert!(twice.is_empty(), "ordered twice: {twice:?}");
    let unordered: Vec<&String> = acked.iter().filter(|t| !seen.contains(*t)).collect();
    eprintln!("{} of {} envelopes acknowledged during the upgrades are in no block", unordered.len(), acked.len());
    assert!(unordered.is_empty(), "acknowledged and never ordered: {unordered:?}");
    for i in 1..3 {
        same_chain(&blocks_of(i, all.len() as u64 - 1).await, &all);
    }
    for node in nodes.iter().flatten() {
        let v = consenter_view(node, channel());
        assert_eq!((&v["version"], &v["rollbacks"], &v["crashes"]), (&"2.0.0".into(), &0.into(), &0.into()), "{v}");
        eprintln!("handedOver {} lostEnvelopes {}", v["handedOver"], v["lostEnvelopes"]);
    }
    leader(&nodes).await;
}
