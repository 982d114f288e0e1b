//! Crash safety with a real node process: SIGKILL while it writes blocks,
//! restart, and find every block that was reported written (delivered,
//! which happens only after fsync), a valid hash chain, and ordering
//! resuming at the right height.

mod common;

use std::time::Duration;

use consenter_host::block;
use consenter_host::proto::common::Block;
use consenter_host::proto::orderer::deliver_response;
use consenter_host::proto::orderer::seek_info::SeekBehavior;

use common::*;

const ARGS: &[&str] = &["--dev-max-message-count", "20", "--dev-batch-timeout", "20ms"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_written_block() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = NodeProc::start(&data, ARGS);
    let mut client = node.client().await;

    // Follow the channel from the genesis block, forever.
    let seek = seek_envelope("devchannel", 0, u64::MAX, SeekBehavior::BlockUntilReady);
    let mut follow = client.deliver(tokio_stream::iter(vec![seek])).await.unwrap().into_inner();

    // Broadcast continuously until the node dies.
    let mut bclient = client.clone();
    let sender = tokio::spawn(async move {
        let envs = (0..1_000_000).map(|i| message("devchannel", &format!("tx{i}"), 512));
        let mut acks = bclient.broadcast(tokio_stream::iter(envs)).await.unwrap().into_inner();
        let mut n = 0u64;
        while let Ok(Some(r)) = acks.message().await {
            assert_eq!(r.status, 200, "{}", r.info);
            n += 1;
        }
        n
    });

    // Collect blocks reported written; kill the node mid-stream.
    let mut seen: Vec<Block> = vec![];
    while seen.len() < 60 {
        match follow.message().await.unwrap().unwrap().r#type {
            Some(deliver_response::Type::Block(b)) => seen.push(b),
            other => panic!("unexpected deliver response {other:?}"),
        }
    }
    node.kill();
    let acked = sender.await.unwrap();
    assert!(acked > 0);

    // Restart on the same data directory.
    let node = NodeProc::start(&data, ARGS);
    let mut client = node.client().await;
    let height_probe = deliver(&mut client, "devchannel", 0, 0).await;
    assert_eq!(height_probe.len(), 1);
    // Every block reported before the crash is there, byte for byte.
    let after = deliver(&mut client, "devchannel", 0, seen.len() as u64 - 1).await;
    assert_eq!(after.len(), seen.len());
    for (a, b) in seen.iter().zip(&after) {
        assert_eq!(a, b, "block {} changed across the crash", a.header.as_ref().unwrap().number);
    }

    // Ordering resumes: new envelopes land in blocks that extend the chain.
    let envs: Vec<_> = (0..20).map(|i| message("devchannel", &format!("after{i}"), 512)).collect();
    let mut acks = client.broadcast(tokio_stream::iter(envs)).await.unwrap().into_inner();
    for _ in 0..20 {
        assert_eq!(acks.message().await.unwrap().unwrap().status, 200);
    }
    // Find the block holding "after0" by following from the last seen block.
    let mut all = after.clone();
    let mut n = all.len() as u64;
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let b = deliver(&mut client, "devchannel", n, n).await.pop().unwrap();
            n += 1;
            let has = b
                .data
                .as_ref()
                .unwrap()
                .data
                .iter()
                .any(|d| consenter_host::envelope::Envelope::parse(d.clone()).unwrap().tx_id == "after0");
            all.push(b);
            if has {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "new envelopes were not ordered after restart");
    for w in all.windows(2) {
        let (p, b) = (w[0].header.as_ref().unwrap(), w[1].header.as_ref().unwrap());
        assert_eq!(b.number, p.number + 1);
        assert_eq!(b.previous_hash.as_ref(), block::header_hash(p));
        block::check_data_hash(&w[1]).unwrap();
    }
    drop(node);

    // The offline verifier agrees.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_consenter-host"))
        .args(["ledger", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ledger verify failed: {text}");
    assert!(text.contains("devchannel: OK height"), "{text}");
}
