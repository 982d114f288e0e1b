//! Fault containment: a plugin that traps, panics, loops forever, allocates
//! without bound or recurses without end errs its own chain only; the node
//! and a healthy chain beside it keep ordering, and every ledger verifies.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use consenter_host::channel::ChannelTemplate;
use consenter_host::envelope::{self, Envelope};
use consenter_host::ledger;
use consenter_host::node::{Node, NodeConfig, channel_dir, embedded};
use consenter_host::proto::common::HeaderType;
use consenter_host::runtime::Limits;
use consenter_host::signer::{self, Signer};
use consenter_host::support::SupportLimits;

fn env(channel: &str, i: usize) -> Envelope {
    let b =
        envelope::build(channel, HeaderType::Message, &format!("tx{i}"), Bytes::from(vec![1u8; 200]), None).unwrap();
    Envelope::parse(b).unwrap()
}

fn node(dir: &std::path::Path) -> Arc<Node> {
    let id = signer::ensure_dev_identity(&dir.join("id")).unwrap();
    let hostile = std::fs::read(consenter_test_plugins::path("consenter_hostile.wasm")).unwrap();
    Node::open(NodeConfig {
        data_dir: dir.join("data"),
        signer: Arc::new(Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap()),
        limits: Limits { call_deadline: Duration::from_millis(200), memory_bytes: 32 << 20, ..Limits::default() },
        plugin_limits: Default::default(),
        restart: Default::default(),
        support_limits: SupportLimits::default(),
        disk_reserve: 0,
        extra_plugins: vec![("hostile".into(), hostile)],
        cluster: None,
        storage_quota: consenter_host::node::DEFAULT_STORAGE_QUOTA,
        plugin_policy: Default::default(),
        probation: consenter_host::chain::DEFAULT_PROBATION,
    })
    .unwrap()
}

fn channel(name: &str, consensus: &str, mode: &str) -> ChannelTemplate {
    let mut t = ChannelTemplate::solo(name);
    t.consensus_type = consensus.into();
    t.consensus_metadata = Bytes::from(mode.as_bytes().to_vec());
    t.batch_size.max_message_count = 10;
    t.batch_timeout = Duration::from_millis(50);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_err_only_their_own_chain() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let healthy = node.create_channel(&channel("healthy", "solo", "").genesis_block()).unwrap();
    let modes = [
        ("trap", "trap:enqueue", "unreachable"),
        ("panic", "panic:enqueue", "unreachable"),
        ("spin", "loop:enqueue", "deadline"),
        ("oom", "oom:enqueue", "memory"),
        // Rust keeps its stack in linear memory: overflowing it is an out-of-bounds
        // access (or a wasm stack overflow), a trap either way.
        ("recurse", "recurse:enqueue", "trapped in enqueue"),
    ];
    for (name, mode, _) in &modes {
        node.create_channel(&channel(name, "hostile", mode).genesis_block()).unwrap();
    }
    let mut i = 0;
    for (name, _, expect) in &modes {
        // Healthy chain orders before each fault...
        for _ in 0..10 {
            healthy.enqueue(env("healthy", i)).await.unwrap();
            i += 1;
        }
        let bad = node.chain(name).unwrap();
        let err = bad.enqueue(env(name, 0)).await.unwrap_err().to_string();
        assert!(err.contains(expect), "{name}: error {err:?} should mention {expect:?}");
        // ...the bad chain stays errored and refuses further envelopes...
        let again = bad.enqueue(env(name, 1)).await.unwrap_err().to_string();
        assert!(again.contains("errored"), "{name}: {again}");
        assert!(bad.status().errored().is_some());
        // ...and the healthy chain keeps ordering after it.
        for _ in 0..10 {
            healthy.enqueue(env("healthy", i)).await.unwrap();
            i += 1;
        }
    }
    // 100 envelopes, batch of 10: blocks 1..=10 land on the healthy ledger.
    let l = healthy.ledger().clone();
    tokio::time::timeout(Duration::from_secs(20), l.wait_for(10)).await.expect("healthy chain wrote its blocks");
    assert!(healthy.status().errored().is_none());
    node.shutdown();
    for name in ["healthy", "trap", "panic", "spin", "oom", "recurse"] {
        let h = ledger::verify_dir(&channel_dir(&dir.path().join("data"), name)).unwrap();
        if name == "healthy" {
            assert_eq!(h, 11);
        } else {
            assert_eq!(h, 1, "{name}: only the genesis block");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_failing_at_start_is_refused_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let err = node.create_channel(&channel("bad", "hostile", "trap:start").genesis_block()).err().unwrap().to_string();
    assert!(err.contains("start") && err.contains("unreachable"), "{err}");
    let err = node.create_channel(&channel("nope", "pbft", "").genesis_block()).err().unwrap().to_string();
    assert!(err.contains("pbft") && err.contains("solo"), "names the type and the plugins available: {err}");
    // The node still creates and runs a healthy channel.
    let ok = node.create_channel(&channel("ok", "solo", "").genesis_block()).unwrap();
    ok.enqueue(env("ok", 0)).await.unwrap();
    let _ = embedded::EMBEDDED.len();
}
