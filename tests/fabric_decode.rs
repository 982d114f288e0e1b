//! Blocks our node writes decode with Hyperledger Fabric's official client
//! libraries: `fabric-common`'s BlockDecoder and `fabric-protos`, run with
//! Node.js (tests/node/decode-block.js), installed from npm by this test.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use consenter_host::block::{self, hex};
use consenter_host::channel::ChannelTemplate;
use consenter_host::envelope::{self, Envelope};
use consenter_host::ledger::Ledger;
use consenter_host::node::{Node, NodeConfig, channel_dir};
use consenter_host::proto::common::{Block, HeaderType};
use consenter_host::runtime::Limits;
use consenter_host::signer::{self, Signer};
use consenter_host::support::SupportLimits;
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_we_write_decode_with_fabric_block_decoder() {
    let tmp = tempfile::tempdir().unwrap();
    let id = signer::ensure_dev_identity(&tmp.path().join("id")).unwrap();
    let orderer = Arc::new(Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap());
    let client = Signer::from_msp_dir(&id.client_msp, &id.mspid).unwrap();
    let data = tmp.path().join("data");
    let node = Node::open(NodeConfig {
        data_dir: data.clone(),
        signer: orderer,
        limits: Limits::default(),
        support_limits: SupportLimits::default(),
        disk_reserve: 0,
        plugin_limits: Default::default(),
        restart: Default::default(),
        extra_plugins: vec![],
        cluster: None,
        storage_quota: consenter_host::node::DEFAULT_STORAGE_QUOTA,
        plugin_policy: Default::default(),
        probation: consenter_host::chain::DEFAULT_PROBATION,
    })
    .unwrap();
    let mut t = ChannelTemplate::solo("interop");
    t.batch_size.max_message_count = 3;
    let chain = node.create_channel(&t.genesis_block()).unwrap();
    for i in 0..6 {
        let b = envelope::build(
            "interop",
            HeaderType::Message,
            &format!("tx-{i}"),
            Bytes::from(vec![i as u8; 300]),
            Some(&client),
        )
        .unwrap();
        chain.enqueue(Envelope::parse(b).unwrap()).await.unwrap();
    }
    // A config block: the last-config index moves to it (block 3).
    t.batch_size.max_message_count = 2;
    chain.enqueue(Envelope::parse(t.config_envelope_at(1)).unwrap()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), chain.ledger().wait_for(3)).await.unwrap();
    node.shutdown();
    drop(chain);

    let ledger = Ledger::open(&channel_dir(&data, "interop")).unwrap();
    assert_eq!(ledger.height(), 4);
    let blocks: Vec<Block> = (0..4).map(|n| ledger.block(n).unwrap().unwrap()).collect();
    let mut files = vec![];
    for (n, b) in blocks.iter().enumerate() {
        let p = tmp.path().join(format!("{n}.block"));
        std::fs::write(&p, b.encode_to_vec()).unwrap();
        files.push(p);
    }

    common::npm_ci();
    let out = Command::new("node")
        .arg(common::node_dir().join("decode-block.js"))
        .args(&files)
        .output()
        .expect("running node");
    assert!(out.status.success(), "decode-block.js failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect();
    assert_eq!(lines.len(), 4, "one JSON line per block");
    for (n, (line, b)) in lines.iter().zip(&blocks).enumerate() {
        let h = b.header.as_ref().unwrap();
        let field = |k: &str| -> String {
            // Minimal JSON field read: "k":"value" or "k":number.
            let key = format!("\"{k}\":");
            let i = line.find(&key).unwrap_or_else(|| panic!("{k} missing in {line}")) + key.len();
            let rest = &line[i..];
            if let Some(r) = rest.strip_prefix('"') {
                r[..r.find('"').unwrap()].to_string()
            } else {
                rest[..rest.find([',', '}']).unwrap()].to_string()
            }
        };
        assert_eq!(field("number"), n.to_string());
        assert_eq!(field("previous_hash"), hex(&h.previous_hash));
        assert_eq!(field("data_hash"), hex(&h.data_hash));
        assert_eq!(field("metadata_slots"), "5");
        let count = b.data.as_ref().unwrap().data.len();
        assert_eq!(field("envelopes"), count.to_string());
        if n == 0 {
            // The genesis block is stored as given, unsigned (as Fabric).
            assert!(line.contains("\"signature_creators\":[]"), "block 0 is not signed: {line}");
            assert_eq!(field("last_config_index"), "null", "no orderer metadata in block 0");
            continue;
        }
        assert!(line.contains("\"signature_creators\":[\"DevMSP\"]"), "block {n} signed by the node: {line}");
        let want_last_config = if n == 3 { "3" } else { "0" };
        assert_eq!(field("last_config_index"), want_last_config, "block {n}");
        if (1..=2).contains(&n) {
            assert!(line.contains(&format!("\"tx-{}\"", (n - 1) * 3)), "tx ids decoded: {line}");
        }
        if n > 0 {
            assert_eq!(h.previous_hash.as_ref(), block::header_hash(blocks[n - 1].header.as_ref().unwrap()));
        }
    }
}
