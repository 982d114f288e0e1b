//! Channels for real, on Fabric's own bytes: a channel joined through the
//! participation API from configtxgen's genesis block, with its MSPs and
//! policies enforced on Broadcast and Deliver (texts compared with what a
//! Fabric orderer answered); a config update that changes BatchSize; and
//! the system-channel flow creating `appchannel` from Fabric's create tx.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use consenter_host::channel::ChannelConfig;
use consenter_host::envelope;
use consenter_host::proto::common::{
    Block, ConfigEnvelope, ConfigSignature, ConfigUpdate, ConfigUpdateEnvelope, Envelope, HeaderType, Payload,
};
use consenter_host::proto::orderer::seek_info::SeekBehavior;
use consenter_host::proto::orderer::seek_position::Type as Pos;
use consenter_host::proto::orderer::{BatchSize, SeekInfo, SeekPosition, SeekSpecified};
use consenter_host::signer::Signer;
use prost::Message;

const SUCCESS: i32 = 200;
const BAD_REQUEST: i32 = 400;
const FORBIDDEN: i32 = 403;
const NOT_FOUND: i32 = 404;

/// Fabric v2.5's answer to a Broadcast that fails /Channel/Writers (the
/// fixture README's table).
const FABRIC_WRITERS_DENIED: &str = "implicit policy evaluation failed - 0 sub-policies were satisfied, but this \
                                     policy requires 1 of the 'Writers' sub-policies to be satisfied: permission denied";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/fabric")
}

fn identity(org: &str, who: &str) -> Signer {
    let (base, mspid) = match org {
        "orderer" => (fixtures().join("crypto/ordererOrganizations/example.com"), "OrdererMSP"),
        "org1" => (fixtures().join("crypto/peerOrganizations/org1.example.com"), "Org1MSP"),
        "org2" => (fixtures().join("crypto/peerOrganizations/org2.example.com"), "Org2MSP"),
        "org3" => (fixtures().join("crypto-outsider/peerOrganizations/org3.example.com"), "Org3MSP"),
        _ => unreachable!(),
    };
    let domain = base.file_name().unwrap().to_string_lossy().into_owned();
    let dir = match who {
        "peer0" => base.join(format!("peers/peer0.{domain}/msp")),
        "orderer0" => base.join(format!("orderers/orderer0.{domain}/msp")),
        user => base.join(format!("users/{user}@{domain}/msp")),
    };
    Signer::from_msp_dir(&dir, mspid).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn node_as_orderer0(dir: &Path, extra: &[&str]) -> NodeProc {
    let msp = fixtures().join("crypto/ordererOrganizations/example.com/orderers/orderer0.example.com/msp");
    let msp = msp.to_string_lossy().into_owned();
    let mut args = vec!["--msp-dir", &msp, "--mspid", "OrdererMSP"];
    args.extend_from_slice(extra);
    NodeProc::start(dir, &args)
}

fn signed_seek(channel: &str, start: u64, stop: u64, signer: &Signer) -> Envelope {
    let pos = |n| SeekPosition { r#type: Some(Pos::Specified(SeekSpecified { number: n })) };
    let seek = SeekInfo {
        start: Some(pos(start)),
        stop: Some(pos(stop)),
        behavior: SeekBehavior::BlockUntilReady as i32,
        error_response: 0,
    };
    let b =
        envelope::build(channel, HeaderType::DeliverSeekInfo, "", seek.encode_to_vec().into(), Some(signer)).unwrap();
    Envelope::decode(b).unwrap()
}

/// Deliver as `signer`: the blocks and the final status.
async fn deliver_as(node: &NodeProc, channel: &str, start: u64, stop: u64, signer: &Signer) -> (Vec<Block>, i32) {
    let mut c = node.client().await;
    let mut s =
        c.deliver(tokio_stream::iter(vec![signed_seek(channel, start, stop, signer)])).await.unwrap().into_inner();
    let mut blocks = vec![];
    let fut = async {
        while let Some(r) = s.message().await.unwrap() {
            use consenter_host::proto::orderer::deliver_response::Type;
            match r.r#type {
                Some(Type::Block(b)) => blocks.push(b),
                Some(Type::Status(st)) => return st,
                None => break,
            }
        }
        0
    };
    let st = tokio::time::timeout(Duration::from_secs(30), fut).await.expect("deliver answered in time");
    (blocks, st)
}

/// A CONFIG_UPDATE envelope carrying `update`, with a config signature
/// from each of `signers`, the envelope itself signed by `submitter`.
fn config_update_envelope(update: &ConfigUpdate, signers: &[&Signer], submitter: &Signer) -> Envelope {
    let cu = update.encode_to_vec();
    sign_update_bytes(&update.channel_id, cu.into(), vec![], signers, submitter)
}

fn sign_update_bytes(
    channel: &str,
    config_update: Bytes,
    mut signatures: Vec<ConfigSignature>,
    signers: &[&Signer],
    submitter: &Signer,
) -> Envelope {
    for s in signers {
        let sh = s.new_signature_header().encode_to_vec();
        let mut msg = sh.clone();
        msg.extend_from_slice(&config_update);
        signatures.push(ConfigSignature { signature_header: sh.into(), signature: s.sign(&msg).unwrap().into() });
    }
    let cue = ConfigUpdateEnvelope { config_update, signatures };
    let b =
        envelope::build(channel, HeaderType::ConfigUpdate, "", cue.encode_to_vec().into(), Some(submitter)).unwrap();
    Envelope::decode(b).unwrap()
}

fn config_of(b: &Block) -> ConfigEnvelope {
    let env = Envelope::decode(b.data.as_ref().unwrap().data[0].clone()).unwrap();
    ConfigEnvelope::decode(Payload::decode(env.payload).unwrap().data).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn solochannel_joined_over_rest_enforces_fabric_policies() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_as_orderer0(dir.path(), &["--no-dev-channel"]);
    let admin = node.admin.clone().unwrap();
    let genesis = fixtures().join("blocks/solochannel.genesis.block");

    // Join with the CLI (multipart POST, as osnadmin does).
    let (ok, out) = cli(&["channel", "join", "-o", &admin, "-b", genesis.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("Status: 201"), "{out}");
    assert!(out.contains("\"name\": \"solochannel\"") && out.contains("\"height\": 1"), "{out}");
    // Joining twice: Fabric's 405.
    let (ok, out) = cli(&["channel", "join", "-o", &admin, "-b", genesis.to_str().unwrap()]);
    assert!(!ok && out.contains("Status: 405") && out.contains("cannot join: channel already exists"), "{out}");
    let (ok, out) = cli(&["channel", "list", "-o", &admin]);
    assert!(ok && out.contains("/participation/v1/channels/solochannel"), "{out}");
    assert!(out.contains("\"systemChannel\": null"), "{out}");

    let mut c = node.client().await;
    let user1 = identity("org1", "User1");
    let user2 = identity("org2", "User1");
    let peer0 = identity("org1", "peer0");
    let outsider = identity("org3", "User1");
    let msg = |s: &Signer, tx: &str| signed_message("solochannel", tx, 300, Some(s));
    let acks = broadcast_all(
        &mut c,
        vec![msg(&user1, "u1"), msg(&user2, "u2"), msg(&peer0, "p0"), msg(&outsider, "o3"), {
            // A valid creator with a signature that is not its own.
            let mut e = msg(&user1, "forged");
            e.signature = msg(&user2, "x").signature;
            e
        }],
    )
    .await;
    assert_eq!(acks[0], (SUCCESS, String::new()), "User1@org1 may write");
    assert_eq!(acks[1], (SUCCESS, String::new()), "User1@org2 may write");
    for (i, who) in [(2, "peer0.org1"), (3, "User1@org3"), (4, "a forged signature")] {
        assert_eq!(acks[i], (FORBIDDEN, FABRIC_WRITERS_DENIED.to_string()), "{who}");
    }
    // An unsigned envelope is refused the same way.
    let acks = broadcast_all(&mut c, vec![message("solochannel", "unsigned", 10)]).await;
    assert_eq!(acks[0], (FORBIDDEN, FABRIC_WRITERS_DENIED.to_string()));

    // Deliver: readers see both envelopes in block 1 (BatchTimeout 2s).
    let (blocks, st) = deliver_as(&node, "solochannel", 1, 1, &user2).await;
    assert_eq!(st, SUCCESS);
    assert_eq!(blocks[0].data.as_ref().unwrap().data.len(), 2);
    let (blocks, st) = deliver_as(&node, "solochannel", 0, 0, &outsider).await;
    assert_eq!((blocks.len(), st), (0, FORBIDDEN), "an outsider may not read");

    // A config update: BatchSize.MaxMessageCount 500 -> 2, under
    // /Channel/Orderer/Admins (the orderer org's admin).
    let (blocks, _) = deliver_as(&node, "solochannel", 0, 0, &user1).await;
    let current = config_of(&blocks[0]).config.unwrap();
    let orderer = &current.channel_group.as_ref().unwrap().groups["Orderer"];
    let mut bs = BatchSize::decode(orderer.values["BatchSize"].value.clone()).unwrap();
    bs.max_message_count = 2;
    let update = orderer_value_update("solochannel", &current, "BatchSize", bs.encode_to_vec());
    let orderer_admin = identity("orderer", "Admin");
    // Signed by an application user only: the Admins policy refuses it.
    let acks = broadcast_all(&mut c, vec![config_update_envelope(&update, &[&user1], &user1)]).await;
    assert_eq!(acks[0].0, BAD_REQUEST, "{}", acks[0].1);
    assert!(
        acks[0].1.starts_with(
            "error applying config update to existing channel 'solochannel': error authorizing update: error \
             validating DeltaSet: policy for [Value]  /Channel/Orderer/BatchSize not satisfied: implicit policy \
             evaluation failed - 0 sub-policies were satisfied, but this policy requires 1 of the 'Admins' \
             sub-policies to be satisfied"
        ),
        "{}",
        acks[0].1
    );
    let acks = broadcast_all(&mut c, vec![config_update_envelope(&update, &[&orderer_admin], &orderer_admin)]).await;
    assert_eq!(acks[0], (SUCCESS, String::new()));
    let (blocks, st) = deliver_as(&node, "solochannel", 2, 2, &user1).await;
    assert_eq!(st, SUCCESS);
    let cfg = ChannelConfig::from_config_block(&blocks[0]).expect("block 2 is the config block");
    assert_eq!((cfg.sequence, cfg.batch_size.max_message_count), (1, 2));
    assert_eq!(consenter_host::node::last_config_and_metadata(&blocks[0]).0, 2, "LAST_CONFIG moves to it");
    // The new BatchSize applies: two envelopes cut a block at once (no
    // 2 s wait), and the block after points back at config block 2.
    let acks = broadcast_all(&mut c, vec![msg(&user1, "a"), msg(&user2, "b"), msg(&user1, "c")]).await;
    assert!(acks.iter().all(|a| a.0 == SUCCESS), "{acks:?}");
    let (blocks, _) = deliver_as(&node, "solochannel", 3, 3, &user1).await;
    assert_eq!(blocks[0].data.as_ref().unwrap().data.len(), 2);
    assert_eq!(consenter_host::node::last_config_and_metadata(&blocks[0]).0, 2);
    // The same update again is stale (BatchSize is at version 1 now).
    let acks = broadcast_all(&mut c, vec![config_update_envelope(&update, &[&orderer_admin], &orderer_admin)]).await;
    assert_eq!(acks[0].0, BAD_REQUEST);
    assert!(acks[0].1.contains("to version 1, but key is at version 1"), "{}", acks[0].1);
    // Two updates of different values sent together: both are validated
    // under sequence 1, and the second, if stale when the plugin orders it,
    // is recomputed on top of the first. Both take effect.
    let (blocks, _) = deliver_as(&node, "solochannel", 2, 2, &user1).await;
    let current = config_of(&blocks[0]).config.unwrap();
    let timeout = consenter_host::proto::orderer::BatchTimeout { timeout: "1s".into() };
    let mut bs =
        BatchSize::decode(current.channel_group.as_ref().unwrap().groups["Orderer"].values["BatchSize"].value.clone())
            .unwrap();
    bs.max_message_count = 3;
    let two = vec![
        config_update_envelope(
            &orderer_value_update("solochannel", &current, "BatchTimeout", timeout.encode_to_vec()),
            &[&orderer_admin],
            &orderer_admin,
        ),
        config_update_envelope(
            &orderer_value_update("solochannel", &current, "BatchSize", bs.encode_to_vec()),
            &[&orderer_admin],
            &orderer_admin,
        ),
    ];
    let acks = broadcast_all(&mut c, two).await;
    assert!(acks.iter().all(|a| a.0 == SUCCESS), "{acks:?}");
    // Block 4 holds "c" (cut before the first config message), 5 and 6 the
    // two config blocks.
    let (blocks, st) = deliver_as(&node, "solochannel", 4, 6, &user1).await;
    assert_eq!((blocks.len(), st), (3, SUCCESS));
    let last = ChannelConfig::from_config_block(&blocks[2]).expect("block 6 is a config block");
    assert_eq!(last.sequence, 3);
    assert_eq!(
        (last.batch_timeout, last.batch_size.max_message_count),
        (Duration::from_secs(1), 3),
        "both updates applied"
    );

    // Show, then remove through the API; the channel is gone.
    let (ok, out) = cli(&["channel", "show", "-o", &admin, "-c", "solochannel"]);
    assert!(
        ok && out.contains("\"status\": \"active\"") && out.contains("\"consensusRelation\": \"consenter\""),
        "{out}"
    );
    let (ok, out) = cli(&["channel", "remove", "-o", &admin, "-c", "solochannel"]);
    assert!(ok && out.contains("Status: 204"), "{out}");
    let (ok, out) = cli(&["channel", "show", "-o", &admin, "-c", "solochannel"]);
    assert!(!ok && out.contains("Status: 404"), "{out}");
    let acks = broadcast_all(&mut c, vec![msg(&user1, "gone")]).await;
    assert_eq!(acks[0], (NOT_FOUND, "channel does not exist".to_string()));
    assert!(!dir.path().join("chains/solochannel").exists(), "the ledger is deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_channel_creates_appchannel_like_fabric() {
    let dir = tempfile::tempdir().unwrap();
    let genesis = fixtures().join("blocks/system-channel.genesis.block");
    let node = node_as_orderer0(dir.path(), &["--genesis-block", genesis.to_str().unwrap()]);
    let admin = node.admin.clone().unwrap();
    let user1 = identity("org1", "User1");
    let org1_admin = identity("org1", "Admin");
    let orderer_admin = identity("orderer", "Admin");

    // Fabric's answers on the system channel: an application user may not
    // read it, the orderer org's admin may.
    let (blocks, st) = deliver_as(&node, "system-channel", 0, 0, &user1).await;
    assert_eq!((blocks.len(), st), (0, FORBIDDEN));
    let (blocks, st) = deliver_as(&node, "system-channel", 0, 0, &orderer_admin).await;
    assert_eq!((blocks.len(), st), (1, SUCCESS));

    // Fabric's create tx, unsigned: refused by the channel creation policy.
    let tx =
        Envelope::decode(Bytes::from(std::fs::read(fixtures().join("blocks/appchannel.create.tx")).unwrap())).unwrap();
    let payload = Payload::decode(tx.payload.clone()).unwrap();
    let cue = ConfigUpdateEnvelope::decode(payload.data).unwrap();
    let mut c = node.client().await;
    let unsigned = sign_update_bytes("appchannel", cue.config_update.clone(), vec![], &[], &user1);
    let acks = broadcast_all(&mut c, vec![unsigned]).await;
    assert_eq!(acks[0].0, BAD_REQUEST, "{}", acks[0].1);
    // Fabric's text, word for word (its Go error chain).
    assert_eq!(
        acks[0].1,
        "error validating channel creation transaction for new channel 'appchannel', could not successfully apply \
         update to template configuration: error authorizing update: error validating DeltaSet: policy for [Group]  \
         /Channel/Application not satisfied: implicit policy evaluation failed - 0 sub-policies were satisfied, but \
         this policy requires 1 of the 'Admins' sub-policies to be satisfied"
    );

    // Signed by Org1's admin: the system channel orders an
    // ORDERER_TRANSACTION (its block 1) and the node creates appchannel.
    let signed = sign_update_bytes("appchannel", cue.config_update.clone(), vec![], &[&org1_admin], &org1_admin);
    let acks = broadcast_all(&mut c, vec![signed]).await;
    assert_eq!(acks[0], (SUCCESS, String::new()));
    let (blocks, st) = deliver_as(&node, "system-channel", 1, 1, &orderer_admin).await;
    assert_eq!(st, SUCCESS);
    assert_eq!(consenter_host::node::last_config_and_metadata(&blocks[0]).0, 0, "as Fabric: LAST_CONFIG stays 0");

    // appchannel is created once the system channel's block is durable (on
    // the ledger writer's thread, just after Deliver could see block 1): a
    // client retries a NOT_FOUND for a moment, as `peer channel create` does.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let (blocks, st) = loop {
        let (blocks, st) = deliver_as(&node, "appchannel", 0, 0, &user1).await;
        if st != 404 || std::time::Instant::now() > end {
            break (blocks, st);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(st, SUCCESS);
    // appchannel's genesis block carries the config Fabric's orderer made.
    let fabric =
        Block::decode(Bytes::from(std::fs::read(fixtures().join("ledger/appchannel/0.block")).unwrap())).unwrap();
    assert_eq!(config_of(&blocks[0]).config, config_of(&fabric).config, "same config content as Fabric's block 0");
    // Built by the orderer as Fabric builds it: unsigned, five empty
    // metadata slots (Fabric's block 0 of appchannel has no signature).
    assert_eq!(blocks[0].metadata, fabric.metadata, "metadata as Fabric's");
    assert_eq!(blocks[0].header.as_ref().unwrap().previous_hash, fabric.header.as_ref().unwrap().previous_hash);
    // The system channel's block 0 is the bootstrap file, byte for byte
    // (Fabric's own ledger/system-channel/0.block is that file, too).
    let (blocks, st) = deliver_as(&node, "system-channel", 0, 0, &orderer_admin).await;
    assert_eq!(st, SUCCESS);
    assert_eq!(blocks[0].encode_to_vec(), std::fs::read(&genesis).unwrap(), "bootstrap block served unchanged");
    assert_eq!(blocks[0].encode_to_vec(), std::fs::read(fixtures().join("ledger/system-channel/0.block")).unwrap());

    // And it orders: Org1 and Org2 users write, an outsider may not.
    let user2 = identity("org2", "User1");
    let outsider = identity("org3", "User1");
    let acks = broadcast_all(
        &mut c,
        vec![
            signed_message("appchannel", "a", 300, Some(&user1)),
            signed_message("appchannel", "b", 300, Some(&user2)),
            signed_message("appchannel", "c", 300, Some(&outsider)),
        ],
    )
    .await;
    assert_eq!((acks[0].0, acks[1].0), (SUCCESS, SUCCESS));
    assert_eq!(acks[2], (FORBIDDEN, FABRIC_WRITERS_DENIED.to_string()));
    let (blocks, st) = deliver_as(&node, "appchannel", 1, 1, &user2).await;
    assert_eq!((blocks[0].data.as_ref().unwrap().data.len(), st), (2, SUCCESS));

    // The participation API shows the system channel; joining is refused
    // while it exists (405), as in Fabric.
    let (ok, out) = cli(&["channel", "list", "-o", &admin]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.split_once('\n').unwrap().1).unwrap();
    assert_eq!(v["systemChannel"]["name"], "system-channel", "{out}");
    assert_eq!(v["channels"][0]["name"], "appchannel", "{out}");
    let solo = fixtures().join("blocks/solochannel.genesis.block");
    let (ok, out) = cli(&["channel", "join", "-o", &admin, "-b", solo.to_str().unwrap()]);
    assert!(!ok && out.contains("Status: 405") && out.contains("cannot join: system channel exists"), "{out}");
    let (ct, body) = consenter_host::admin::multipart_body("config-block", "s.block", &std::fs::read(&solo).unwrap());
    let r =
        consenter_host::admin::request(&admin, "POST", consenter_host::admin::CHANNELS, Some((&ct, &body))).unwrap();
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")), "{}", r.error_text());
    // Removing an application channel: 405 too, as Fabric.
    let r = consenter_host::admin::request(
        &admin,
        "DELETE",
        &format!("{}/appchannel", consenter_host::admin::CHANNELS),
        None,
    )
    .unwrap();
    assert_eq!((r.status, r.error_text()), (405, "cannot remove: system channel exists".to_string()));
    assert_eq!(r.header("allow"), Some("GET"));
    // Solo in system-channel mode: Fabric's relation is "other".
    for ch in ["appchannel", "system-channel"] {
        let (ok, out) = cli(&["channel", "show", "-o", &admin, "-c", ch]);
        assert!(ok && out.contains("\"consensusRelation\": \"other\""), "{ch}: {out}");
    }
    // Creating the same channel again is refused.
    let again = sign_update_bytes("appchannel", cue.config_update, vec![], &[&org1_admin], &org1_admin);
    let acks = broadcast_all(&mut c, vec![again]).await;
    assert_ne!(acks[0].0, SUCCESS, "{acks:?}");
}

/// The admin endpoint speaks plain HTTP the way curl and osnadmin send
/// it; errors carry Fabric's `{"error": ...}` body.
#[test]
fn participation_api_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(dir.path(), &["--no-dev-channel"]);
    let admin = node.admin.clone().unwrap();
    use consenter_host::admin::{CHANNELS, multipart_body, request};
    let r = request(&admin, "POST", CHANNELS, Some(("application/json", b"{}"))).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.error_text().contains("multipart/form-data"), "{}", r.error_text());
    let (ct, body) = multipart_body("config-block", "x.block", b"\xff\xff not a block");
    let r = request(&admin, "POST", CHANNELS, Some((&ct, &body))).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.error_text().contains("not a common.Block"), "{}", r.error_text());
    // A normal block (not a config block) is refused with the reason.
    let b = Block::decode(Bytes::from(std::fs::read(fixtures().join("ledger/appchannel/1.block")).unwrap())).unwrap();
    let (ct, body) = multipart_body("config-block", "1.block", &b.encode_to_vec());
    let r = request(&admin, "POST", CHANNELS, Some((&ct, &body))).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.error_text().contains("not a config block"), "{}", r.error_text());
    let r = request(&admin, "GET", &format!("{CHANNELS}/nope"), None).unwrap();
    assert_eq!((r.status, r.error_text()), (404, "channel does not exist".to_string()));
    let r = request(&admin, "DELETE", &format!("{CHANNELS}/nope"), None).unwrap();
    assert_eq!((r.status, r.error_text()), (404, "cannot remove: channel does not exist".to_string()));
    // A non-loopback admin address without TLS is refused at start.
    let (ok, out) = cli(&[
        "start",
        "--data-dir",
        dir.path().join("other").to_str().unwrap(),
        "--admin-listen",
        "0.0.0.0:0",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!ok && out.contains("loopback"), "{out}");
    // TLS to the plain endpoint: the CLI says what is wrong.
    let ca = fixtures().join("crypto/ordererOrganizations/example.com/tlsca/tlsca.example.com-cert.pem");
    let (ok, out) = cli(&["channel", "list", "-o", &admin, "--ca-file", ca.to_str().unwrap()]);
    assert!(!ok && out.contains("does the endpoint speak TLS?"), "{out}");
}

/// Fabric's ProcessConfigMsg: a CONFIG envelope made from an older config
/// is recomputed from the update it carries when the plugin revalidates
/// it, so two updates validated under the same sequence both take effect;
/// an update that read what the other changed is refused.
#[test]
fn stale_config_message_is_recomputed_on_revalidation() {
    use consenter_host::processor::{config_update, revalidate};
    use consenter_host::proto::orderer::BatchTimeout;
    let genesis =
        Block::decode(std::fs::read(fixtures().join("blocks/solochannel.genesis.block")).unwrap().as_slice()).unwrap();
    let cfg0 = ChannelConfig::from_config_block(&genesis).unwrap();
    let types = vec![cfg0.consensus_type.clone()];
    let current = config_of(&genesis).config.unwrap();
    let node = identity("orderer", "orderer0");
    let admin = identity("orderer", "Admin");
    let as_update = |u: &ConfigUpdate| {
        let pb = config_update_envelope(u, &[&admin], &admin);
        let env = consenter_host::envelope::Envelope::from_message(pb.clone()).unwrap();
        (pb, env)
    };
    let mut bs = cfg0.batch_size;
    bs.max_message_count = 2;
    let (pa, ea) = as_update(&orderer_value_update("solochannel", &current, "BatchSize", bs.encode_to_vec()));
    let timeout = BatchTimeout { timeout: "1s".into() };
    let (pb, eb) = as_update(&orderer_value_update("solochannel", &current, "BatchTimeout", timeout.encode_to_vec()));

    // Both validated under sequence 0; A is ordered first.
    let a = config_update(&cfg0, &node, &pa, &ea, &types).unwrap();
    let b = config_update(&cfg0, &node, &pb, &eb, &types).unwrap();
    assert!(revalidate(&cfg0, &node, &a, &types).unwrap().is_none(), "made from the current config: ordered as is");
    let cfg1 = ChannelConfig::from_config(
        "solochannel",
        ConfigEnvelope::decode(Payload::decode(a.payload.clone()).unwrap().data).unwrap().config.as_ref().unwrap(),
    )
    .unwrap();
    assert_eq!((cfg1.sequence, cfg1.batch_size.max_message_count), (1, 2));

    // B is stale: recomputed on top of A, it carries both changes.
    let b2 = revalidate(&cfg1, &node, &b, &types).unwrap().expect("recomputed");
    let ce = ConfigEnvelope::decode(Payload::decode(b2.payload.clone()).unwrap().data).unwrap();
    let cfg2 = ChannelConfig::from_config("solochannel", ce.config.as_ref().unwrap()).unwrap();
    assert_eq!(cfg2.sequence, 2);
    assert_eq!(cfg2.batch_size.max_message_count, 2, "A's change kept");
    assert_eq!(cfg2.batch_timeout, Duration::from_secs(1), "B's change applied");
    assert_eq!(b2.config_seq, 1);
    assert_eq!(ce.last_update.unwrap(), pb, "the client's update is carried on");

    // A second BatchSize update read version 0 of the value A changed: it
    // no longer applies, and the plugin drops it with Fabric's reason.
    let mut bs = cfg0.batch_size;
    bs.max_message_count = 3;
    let (pc, ec) = as_update(&orderer_value_update("solochannel", &current, "BatchSize", bs.encode_to_vec()));
    let c = config_update(&cfg0, &node, &pc, &ec, &types).unwrap();
    let err = revalidate(&cfg1, &node, &c, &types).unwrap_err();
    assert!(err.contains("error applying config update to existing channel 'solochannel'"), "{err}");
    assert!(err.contains("to version 1, but key is at version 1"), "{err}");
}

/// One raw HTTP/1.1 exchange with the admin endpoint, with extra request
/// headers (the admin client sends none of its own).
fn raw_http(addr: &str, head: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{head}Host: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Every row of issue 11's table: the participation API answers as Fabric
/// v2.5.12 does (status, JSON body, headers).
#[test]
fn participation_api_answers_as_fabric() {
    use consenter_host::admin::{CHANNELS, multipart_body, request};
    let dir = tempfile::tempdir().unwrap();
    let node = node_as_orderer0(dir.path(), &["--no-dev-channel"]);
    let admin = node.admin.clone().unwrap();
    let is_uuid = |v: Option<&str>| {
        let v = v.unwrap_or_default();
        let parts: Vec<usize> = v.split('-').map(str::len).collect();
        parts == [8, 4, 4, 4, 12] && v.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) && v.as_bytes()[14] == b'4'
    };

    // No channels: "channels": null, Cache-Control: no-store, a request id.
    let r = request(&admin, "GET", CHANNELS, None).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(String::from_utf8(r.body.clone()).unwrap(), "{\"systemChannel\":null,\"channels\":null}\n");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(is_uuid(r.header("x-request-id")), "{:?}", r.headers);
    let again = request(&admin, "GET", CHANNELS, None).unwrap();
    assert_ne!(again.header("x-request-id"), r.header("x-request-id"), "a new id per request");
    // A request's own X-Request-Id comes back.
    let raw = raw_http(&admin, &format!("GET {CHANNELS} HTTP/1.1\r\nX-Request-Id: my-request-7\r\n"));
    assert!(raw.to_ascii_lowercase().contains("\r\nx-request-id: my-request-7\r\n"), "{raw}");

    // /participation/v1/ redirects to the list.
    let r = request(&admin, "GET", "/participation/v1/", None).unwrap();
    assert_eq!((r.status, r.header("location")), (302, Some(CHANNELS)));
    assert!(r.header("x-request-id").is_some());

    // Join, then join again: 405, Fabric's text, Allow: GET, DELETE.
    let genesis = std::fs::read(fixtures().join("blocks/solochannel.genesis.block")).unwrap();
    let (ct, body) = multipart_body("config-block", "solochannel.block", &genesis);
    let r = request(&admin, "POST", CHANNELS, Some((&ct, &body))).unwrap();
    assert_eq!(r.status, 201, "{}", r.error_text());
    assert_eq!(r.header("location"), Some("/participation/v1/channels/solochannel"));
    let r = request(&admin, "POST", CHANNELS, Some((&ct, &body))).unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(String::from_utf8(r.body.clone()).unwrap(), "{\"error\":\"cannot join: channel already exists\"}\n");
    assert_eq!(r.header("allow"), Some("GET, DELETE"));
    assert_eq!(r.header("cache-control"), None, "only 200s carry Cache-Control");
    assert!(is_uuid(r.header("x-request-id")));

    // A listed channel; show it: 200, no-store, consensusRelation
    // "consenter" (not system-channel mode).
    let r = request(&admin, "GET", CHANNELS, None).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v["channels"],
        serde_json::json!([{"name": "solochannel", "url": "/participation/v1/channels/solochannel"}])
    );
    let r = request(&admin, "GET", &format!("{CHANNELS}/solochannel"), None).unwrap();
    assert_eq!((r.status, r.header("cache-control")), (200, Some("no-store")));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (v["consensusRelation"].as_str(), v["status"].as_str(), v["height"].as_u64()),
        (Some("consenter"), Some("active"), Some(1))
    );

    // A name Fabric would never accept: 400 with its text.
    let r = request(&admin, "GET", &format!("{CHANNELS}/BAD_Name"), None).unwrap();
    assert_eq!((r.status, r.error_text()), (400, "invalid channel ID: 'BAD_Name' contains illegal characters".into()));
    let r = request(&admin, "DELETE", &format!("{CHANNELS}/BAD_Name"), None).unwrap();
    assert_eq!((r.status, r.error_text()), (400, "invalid channel ID: 'BAD_Name' contains illegal characters".into()));
    let long = "a".repeat(250);
    let r = request(&admin, "GET", &format!("{CHANNELS}/{long}"), None).unwrap();
    assert_eq!(
        (r.status, r.error_text()),
        (400, "invalid channel ID: channel ID illegal, cannot be longer than 249".into())
    );
    // Unknown but valid: 404 with Fabric's text.
    let r = request(&admin, "GET", &format!("{CHANNELS}/nope"), None).unwrap();
    assert_eq!((r.status, r.error_text()), (404, "channel does not exist".into()));

    // Wrong methods: 405, a JSON error, Allow.
    let r = request(&admin, "PUT", &format!("{CHANNELS}/solochannel"), None).unwrap();
    assert_eq!(String::from_utf8(r.body.clone()).unwrap(), "{\"error\":\"invalid request method: PUT\"}\n");
    assert_eq!(
        (r.status, r.header("allow"), r.header("content-type")),
        (405, Some("GET, DELETE"), Some("application/json"))
    );
    let r = request(&admin, "PATCH", CHANNELS, None).unwrap();
    assert_eq!(
        (r.status, r.error_text(), r.header("allow")),
        (405, "invalid request method: PATCH".into(), Some("GET, POST"))
    );
    assert!(is_uuid(r.header("x-request-id")));

    // The system channel while application channels exist: 403.
    let sys = std::fs::read(fixtures().join("blocks/system-channel.genesis.block")).unwrap();
    let (ct, body) = multipart_body("config-block", "system-channel.block", &sys);
    let r = request(&admin, "POST", CHANNELS, Some((&ct, &body))).unwrap();
    assert_eq!((r.status, r.error_text()), (403, "cannot join: application channels already exist".into()));

    // A join block whose channel name Fabric refuses.
    let bad = consenter_host::channel::ChannelTemplate::solo("Bad_Channel").genesis_block();
    let (ct, body) = multipart_body("config-block", "bad.block", &bad.encode_to_vec());
    let r = request(&admin, "POST", CHANNELS, Some((&ct, &body))).unwrap();
    assert_eq!(
        (r.status, r.error_text()),
        (400, "invalid join block: initializing configtx manager failed: bad channel ID: 'Bad_Channel' contains illegal characters".into())
    );
}

/// Fabric's channel name rule applies to every name that comes in:
/// Broadcast, Deliver and channel creation, with Fabric's texts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_names_are_checked_with_fabrics_rule() {
    let dir = tempfile::tempdir().unwrap();
    let genesis = fixtures().join("blocks/system-channel.genesis.block");
    let node = node_as_orderer0(dir.path(), &["--genesis-block", genesis.to_str().unwrap()]);
    let mut c = node.client().await;
    let user1 = identity("org1", "User1");
    let acks = broadcast_all(&mut c, vec![signed_message("BAD_Name", "x", 10, Some(&user1))]).await;
    assert_eq!(acks[0], (BAD_REQUEST, "invalid channel ID: 'BAD_Name' contains illegal characters".to_string()));
    let acks = broadcast_all(&mut c, vec![signed_message("", "x", 10, Some(&user1))]).await;
    assert_eq!(acks[0], (BAD_REQUEST, "invalid channel ID: channel ID illegal, cannot be empty".to_string()));
    let (blocks, st) = deliver_as(&node, "BAD_Name", 0, 0, &user1).await;
    assert_eq!((blocks.len(), st), (0, BAD_REQUEST));
    // A valid name that does not exist is still NOT_FOUND.
    let (_, st) = deliver_as(&node, "nochannel", 0, 0, &user1).await;
    assert_eq!(st, NOT_FOUND);

    // Creating a channel through the system channel under a bad name.
    let tx =
        Envelope::decode(Bytes::from(std::fs::read(fixtures().join("blocks/appchannel.create.tx")).unwrap())).unwrap();
    let cue = ConfigUpdateEnvelope::decode(Payload::decode(tx.payload).unwrap().data).unwrap();
    let mut update = ConfigUpdate::decode(cue.config_update).unwrap();
    update.channel_id = "App_Channel".into();
    let org1_admin = identity("org1", "Admin");
    let acks = broadcast_all(&mut c, vec![config_update_envelope(&update, &[&org1_admin], &org1_admin)]).await;
    assert_eq!(
        acks[0],
        (
            BAD_REQUEST,
            "initializing configtx manager failed: bad channel ID: 'App_Channel' contains illegal characters".into()
        )
    );
    assert!(!dir.path().join("chains/App_Channel").exists());
}

/// Golden: the block 0 a node serves is the genesis file it joined, byte
/// for byte (Fabric serves the genesis block it was given unchanged), and
/// `ledger verify` passes on that unsigned block 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_joined_genesis_block_is_served_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = node_as_orderer0(dir.path(), &["--no-dev-channel"]);
    let admin = node.admin.clone().unwrap();
    let path = fixtures().join("blocks/solochannel.genesis.block");
    let file = std::fs::read(&path).unwrap();
    let (ok, out) = cli(&["channel", "join", "-o", &admin, "-b", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    let user1 = identity("org1", "User1");
    let (blocks, st) = deliver_as(&node, "solochannel", 0, 0, &user1).await;
    assert_eq!(st, SUCCESS);
    assert_eq!(blocks[0].encode_to_vec().len(), file.len(), "no SIGNATURES entry added");
    assert_eq!(blocks[0].encode_to_vec(), file, "block 0 is the joined file");
    // One more block, signed by the node, so verify checks a signature.
    let acks =
        broadcast_all(&mut node.client().await, vec![signed_message("solochannel", "a", 100, Some(&user1))]).await;
    assert_eq!(acks[0].0, SUCCESS);
    let (blocks, _) = deliver_as(&node, "solochannel", 1, 1, &user1).await;
    assert_eq!(blocks.len(), 1);
    node.kill();
    // The ledger holds the file's bytes as block 0.
    let ledger = consenter_host::ledger::Ledger::open(&dir.path().join("chains/solochannel")).unwrap();
    assert_eq!(ledger.block_bytes(0).unwrap().unwrap().to_vec(), file);
    drop(ledger);
    let (ok, out) = cli(&["ledger", "verify", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(ok && out.contains("solochannel: OK height 2") && out.contains("signatures by OrdererMSP"), "{out}");
}
