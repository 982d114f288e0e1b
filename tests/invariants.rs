//! The host's ordering invariants, shown deterministically: in the test
//! host (real runtime and support, a hand-moved clock, blocks in memory)
//! and on an in-process node whose Broadcast stamps are set by the test.
//! - An envelope keeps the config sequence it was validated under: one
//!   validated before a config block and enqueued after it is revalidated
//!   (the stamping race), and a plugin that skips revalidation cannot write
//!   it.
//! - Host work on the plugin's behalf (signature checks in `revalidate`)
//!   does not count against the plugin's call deadline.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use consenter_host::block;
use consenter_host::channel::ChannelTemplate;
use consenter_host::envelope::{self, Envelope};
use consenter_host::node::{Node, NodeConfig};
use consenter_host::processor;
use consenter_host::proto::common::{Block, ConfigEnvelope, HeaderType, Payload};
use consenter_host::proto::orderer::{BatchSize, ConsensusType};
use consenter_host::runtime::{Limits, Runtime};
use consenter_host::signer::{self, Signer};
use consenter_host::support::SupportLimits;
use consenter_host::testhost::TestHost;
use prost::Message;

use common::{config_in, orderer_update};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/fabric")
}

fn dev_signer(dir: &Path) -> Arc<Signer> {
    let id = signer::ensure_dev_identity(dir).unwrap();
    Arc::new(Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap())
}

fn hostile_bytes() -> Vec<u8> {
    std::fs::read(consenter_test_plugins::path("consenter_hostile.wasm")).unwrap()
}

fn template(name: &str, consensus: &str, mode: &str) -> ChannelTemplate {
    let mut t = ChannelTemplate::solo(name);
    t.consensus_type = consensus.into();
    t.consensus_metadata = Bytes::from(mode.as_bytes().to_vec());
    t.batch_size.max_message_count = 1;
    t
}

fn count_update(channel: &str, t: &ChannelTemplate, max: u32) -> consenter_host::proto::common::Envelope {
    let bs = BatchSize { max_message_count: max, ..t.batch_size };
    orderer_update(channel, &config_in(&t.genesis_block()), "BatchSize", bs.encode_to_vec())
}

fn normal(channel: &str, tx: &str, seq: u64) -> Envelope {
    let b = envelope::build(channel, HeaderType::Message, tx, Bytes::from_static(b"data"), None).unwrap();
    let mut e = Envelope::parse(b).unwrap();
    e.config_seq = seq;
    e
}

fn header_type(b: &Block, i: usize) -> i32 {
    let env = consenter_host::proto::common::Envelope::decode(b.data.as_ref().unwrap().data[i].clone()).unwrap();
    let p = Payload::decode(env.payload).unwrap();
    consenter_host::proto::common::ChannelHeader::decode(p.header.unwrap().channel_header).unwrap().r#type
}

/// The stamping race on a real chain actor: two conflicting updates are
/// validated under sequence 0; the first commits; the second, enqueued
/// after, keeps its stamp 0, so solo revalidates it and drops it (it read
/// what the first changed). Were the stamp replaced by the sequence at
/// enqueue time, it would be written as a second config of sequence 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stamp_is_never_replaced_so_a_stale_update_is_revalidated() {
    let dir = tempfile::tempdir().unwrap();
    let signer = dev_signer(&dir.path().join("id"));
    let node = Node::open(NodeConfig {
        data_dir: dir.path().join("data"),
        signer: signer.clone(),
        limits: Limits::default(),
        plugin_limits: Default::default(),
        restart: Default::default(),
        support_limits: SupportLimits::default(),
        disk_reserve: 0,
        extra_plugins: vec![],
        cluster: None,
        storage_quota: consenter_host::node::DEFAULT_STORAGE_QUOTA,
        plugin_policy: Default::default(),
        probation: consenter_host::chain::DEFAULT_PROBATION,
    })
    .unwrap();
    let t = template("race", "solo", "");
    let chain = node.create_channel(&t.genesis_block()).unwrap();
    let cfg0 = chain.status().config().unwrap();
    let types = node.plugin_names();
    let validate = |pb: consenter_host::proto::common::Envelope| {
        let env = Envelope::from_message(pb.clone()).unwrap();
        processor::config_update(&cfg0, &signer, &pb, &env, &types).unwrap()
    };
    // Both validated under sequence 0 (as two Broadcast streams would).
    let a = validate(count_update("race", &t, 2));
    let b = validate(count_update("race", &t, 3));
    assert_eq!((a.config_seq, b.config_seq), (0, 0));
    chain.enqueue(a).await.unwrap();
    chain.ledger().wait_for(1).await;
    assert_eq!(chain.status().sequence(), 1);
    // B is accepted (Broadcast SUCCESS), then dropped on revalidation.
    chain.enqueue(b).await.unwrap();
    chain.enqueue(normal("race", "after", 1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), chain.ledger().wait_for(2)).await.expect("block 2 written");
    let b2 = chain.ledger().block(2).unwrap().unwrap();
    assert_eq!(header_type(&b2, 0), HeaderType::Message as i32, "block 2 is the normal envelope, not a second config");
    let cfg = chain.status().config().unwrap();
    assert_eq!((cfg.sequence, cfg.batch_size.max_message_count), (1, 2), "only A applied");
    node.shutdown();
}

/// In the test host (hand-moved clock): a plugin that writes an envelope
/// validated under an older sequence without revalidating it is refused;
/// after `revalidate` the same kind of envelope is written.
#[test]
fn a_stale_envelope_is_refused_until_revalidated() {
    let dir = tempfile::tempdir().unwrap();
    let signer = dev_signer(dir.path());
    let plugin = Runtime::new(Limits::default()).unwrap().load("hostile", &hostile_bytes()).unwrap();
    let t = template("stale", "hostile", "stale:enqueue");
    let mut host = TestHost::start(&plugin, &t, signer.clone()).unwrap();
    let cfg0 = host.config().unwrap();
    host.enqueue_validated(normal("stale", "s0", 0)).unwrap();
    host.enqueue_validated(normal("stale", "s1", 0)).unwrap();
    assert!(host.new_blocks().is_empty(), "both kept by the plugin");
    let pb = count_update("stale", &t, 4);
    let env = Envelope::from_message(pb.clone()).unwrap();
    let update = processor::config_update(&cfg0, &signer, &pb, &env, &["hostile".to_string()]).unwrap();
    host.enqueue_validated(update).unwrap();
    host.advance(Duration::from_secs(5));
    assert_eq!(host.errored(), None, "the plugin saw the refusal as expected");
    let blocks = host.new_blocks();
    assert_eq!(blocks.len(), 2, "the config block and the revalidated envelope; s0 was refused");
    assert_eq!(header_type(&blocks[0], 0), HeaderType::Config as i32);
    let ce = ConfigEnvelope::decode(
        Payload::decode(
            consenter_host::proto::common::Envelope::decode(blocks[0].data.as_ref().unwrap().data[0].clone())
                .unwrap()
                .payload,
        )
        .unwrap()
        .data,
    )
    .unwrap();
    assert_eq!(ce.config.unwrap().sequence, 1);
    let (_, md) = consenter_host::node::last_config_and_metadata(&blocks[1]);
    assert_eq!(md, b"revalidated");
    assert_eq!(host.config().unwrap().sequence, 1);
}

/// `revalidate` verifies signatures and evaluates policies: 2,000 of them
/// in one call take far longer than a 20 ms deadline, and the plugin is
/// not trapped for the host's time. The channel is Fabric's solochannel
/// (Org1's Writers policy), the envelope signed by User1@org1.
#[test]
fn host_work_is_not_on_the_plugins_clock() {
    let dir = tempfile::tempdir().unwrap();
    let raw = std::fs::read(fixtures().join("blocks/solochannel.genesis.block")).unwrap();
    let fabric = Block::decode(raw.as_slice()).unwrap();
    // The same config, with the hostile mode as ConsensusType.metadata.
    let mut config = config_in(&fabric);
    let orderer = config.channel_group.as_mut().unwrap().groups.get_mut("Orderer").unwrap();
    let ct = orderer.values.get_mut("ConsensusType").unwrap();
    let mut v = ConsensusType::decode(ct.value.clone()).unwrap();
    v.metadata = Bytes::from_static(b"revalidate-storm:enqueue");
    ct.value = v.encode_to_vec().into();
    let ce = ConfigEnvelope { config: Some(config), last_update: None };
    let env = envelope::build("solochannel", HeaderType::Config, "", ce.encode_to_vec().into(), None).unwrap();
    let genesis = block::new_block(0, &[], vec![env]);
    let limits = Limits { call_deadline: Duration::from_millis(20), ..Limits::default() };
    let plugin = Runtime::new(limits.clone()).unwrap().load("hostile", &hostile_bytes()).unwrap().with_limits(limits);
    let mut host = TestHost::start_from_genesis(&plugin, genesis, dev_signer(dir.path())).unwrap();
    let user = Signer::from_msp_dir(
        &fixtures().join("crypto/peerOrganizations/org1.example.com/users/User1@org1.example.com/msp"),
        "Org1MSP",
    )
    .unwrap();
    let b =
        envelope::build("solochannel", HeaderType::Message, "storm", Bytes::from_static(b"x"), Some(&user)).unwrap();
    let started = std::time::Instant::now();
    host.enqueue(b).unwrap();
    let took = started.elapsed();
    assert!(took > Duration::from_millis(40), "2,000 signature checks took only {took:?}: the test shows nothing");
    assert_eq!(host.errored(), None);
    assert_eq!(host.new_blocks().len(), 1, "written after the storm");
}
