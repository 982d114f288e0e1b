//! AtomicBroadcast over real gRPC against a real node process: every
//! Broadcast status produced by a real request, Deliver's SeekInfo variants,
//! and a chain error ending waiting Deliver streams.

mod common;

use std::time::Duration;

use bytes::Bytes;
use consenter_host::proto::common::{Envelope, Header, Payload};
use consenter_host::proto::orderer::seek_info::SeekBehavior::{BlockUntilReady, FailIfNotReady};
use consenter_host::proto::orderer::seek_position::Type as Pos;
use consenter_host::proto::orderer::{SeekNewest, SeekNextCommit, SeekOldest, SeekSpecified};
use prost::Message;

use common::*;

const SUCCESS: i32 = 200;
const BAD_REQUEST: i32 = 400;
const NOT_FOUND: i32 = 404;
const SERVICE_UNAVAILABLE: i32 = 503;

fn config_envelope(channel: &str, t: consenter_host::proto::common::HeaderType) -> Envelope {
    let b = consenter_host::envelope::build(channel, t, "cfg", Bytes::from_static(b"x"), None).unwrap();
    Envelope::decode(b).unwrap()
}

/// A node whose development channel runs the hostile test plugin in `mode`.
fn hostile_node(dir: &std::path::Path, mode: &str) -> NodeProc {
    let hostile = consenter_test_plugins::path("consenter_hostile.wasm");
    let plugin = format!("hostile={}", hostile.display());
    NodeProc::start(
        &dir.join("data"),
        &[
            "--allow-unsigned-plugins",
            "--plugin",
            &plugin,
            "--dev-consensus",
            "hostile",
            "--dev-consensus-metadata",
            mode,
        ],
    )
}

fn spec(n: u64) -> Pos {
    Pos::Specified(SeekSpecified { number: n })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_statuses_and_deliver_variants() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(
        &dir.path().join("data"),
        &["--dev-max-message-count", "2", "--dev-absolute-max-bytes", "4096", "--dev-batch-timeout", "30s"],
    );
    let mut c = node.client().await;
    let ch = "devchannel";

    let malformed_payload = Envelope { payload: Bytes::from_static(&[0x0a, 0x09, 0x01]), signature: Bytes::new() };
    let no_header = Envelope {
        payload: Payload { header: None, data: Bytes::from_static(b"x") }.encode_to_vec().into(),
        signature: Bytes::new(),
    };
    let bad_channel_header = Envelope {
        payload: Payload {
            header: Some(Header { channel_header: Bytes::from_static(&[0xff]), signature_header: Bytes::new() }),
            data: Bytes::new(),
        }
        .encode_to_vec()
        .into(),
        signature: Bytes::new(),
    };
    let answers = broadcast_all(
        &mut c,
        vec![
            message(ch, "ok1", 100),
            Envelope { payload: Bytes::new(), signature: Bytes::from_static(b"sig") },
            message(ch, "big", 5000),
            message("nosuchchannel", "x", 10),
            malformed_payload,
            no_header,
            bad_channel_header,
            config_envelope(ch, consenter_host::proto::common::HeaderType::Config),
            config_envelope(ch, consenter_host::proto::common::HeaderType::ConfigUpdate),
            message(ch, "ok2", 100),
        ],
    )
    .await;
    let statuses: Vec<i32> = answers.iter().map(|a| a.0).collect();
    assert_eq!(
        statuses,
        vec![
            SUCCESS,
            BAD_REQUEST,
            BAD_REQUEST,
            NOT_FOUND,
            BAD_REQUEST,
            BAD_REQUEST,
            BAD_REQUEST,
            BAD_REQUEST,
            BAD_REQUEST,
            SUCCESS
        ]
    );
    assert!(answers[7].1.contains("CONFIG cannot be broadcast directly"), "{:?}", answers[7]);
    assert!(answers[8].1.contains("error applying config update to existing channel"), "{:?}", answers[8]);
    assert!(answers[1].1.contains("empty payload"), "{:?}", answers[1]);
    assert!(answers[2].1.contains("exceeds maximum allowed 4096 bytes"), "{:?}", answers[2]);
    assert_eq!(answers[3].1, "channel does not exist");
    assert!(answers[4].1.contains("common.Payload"), "{:?}", answers[4]);
    assert!(answers[5].1.contains("no header"), "{:?}", answers[5]);
    assert!(answers[6].1.contains("ChannelHeader"), "{:?}", answers[6]);

    // A frame over AbsoluteMaxBytes + the margin is refused by gRPC itself
    // (never buffered as an envelope); the node keeps serving.
    let huge = message(ch, "huge", 2 * 1024 * 1024);
    let mut s = c.broadcast(tokio_stream::iter(vec![huge])).await.unwrap().into_inner();
    let err = s.message().await.expect_err("oversized frame");
    assert!(
        matches!(err.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal),
        "{err:?}"
    );
    assert!(err.message().contains("message length too large") || err.message().contains("too large"), "{err:?}");

    // ok1 + ok2 make block 1 (MaxMessageCount 2). Then two more: block 2.
    let (blocks, st) = deliver_raw(&mut c, seek_request(ch, spec(1), spec(1), BlockUntilReady, false)).await;
    assert_eq!((blocks, st), (vec![1], Some(SUCCESS)));
    broadcast_all(&mut c, vec![message(ch, "a", 10), message(ch, "b", 10)]).await;
    let (blocks, st) = deliver_raw(&mut c, seek_request(ch, spec(2), spec(2), BlockUntilReady, false)).await;
    assert_eq!((blocks, st), (vec![2], Some(SUCCESS)));

    // Oldest..newest.
    let r = deliver_raw(
        &mut c,
        seek_request(ch, Pos::Oldest(SeekOldest {}), Pos::Newest(SeekNewest {}), FailIfNotReady, false),
    )
    .await;
    assert_eq!(r, (vec![0, 1, 2], Some(SUCCESS)));
    // Newest..newest.
    let r = deliver_raw(
        &mut c,
        seek_request(ch, Pos::Newest(SeekNewest {}), Pos::Newest(SeekNewest {}), FailIfNotReady, false),
    )
    .await;
    assert_eq!(r, (vec![2], Some(SUCCESS)));
    // Past the height without waiting: NOT_FOUND (after what exists).
    let r = deliver_raw(&mut c, seek_request(ch, spec(1), spec(5), FailIfNotReady, false)).await;
    assert_eq!(r, (vec![1, 2], Some(NOT_FOUND)));
    let r = deliver_raw(&mut c, seek_request(ch, spec(7), spec(7), FailIfNotReady, false)).await;
    assert_eq!(r, (vec![], Some(NOT_FOUND)));
    // stop < start: BAD_REQUEST.
    let r = deliver_raw(&mut c, seek_request(ch, spec(2), spec(1), BlockUntilReady, false)).await;
    assert_eq!(r, (vec![], Some(BAD_REQUEST)));
    // Unknown channel.
    let r = deliver_raw(&mut c, seek_request("nosuchchannel", spec(0), spec(0), BlockUntilReady, false)).await;
    assert_eq!(r, (vec![], Some(NOT_FOUND)));
    // Malformed request.
    let r = deliver_raw(&mut c, Envelope { payload: Bytes::from_static(&[0xff, 0x01]), signature: Bytes::new() }).await;
    assert_eq!(r, (vec![], Some(BAD_REQUEST)));

    // A follower of blocks 3..=4 sees them as they are written.
    let mut c3 = c.clone();
    let follower = tokio::spawn(async move {
        deliver_raw(&mut c3, seek_request("devchannel", spec(3), spec(4), BlockUntilReady, false)).await
    });
    broadcast_all(&mut c, (0..4).map(|i| message(ch, &format!("n{i}"), 10)).collect()).await;
    let r = tokio::time::timeout(Duration::from_secs(10), follower).await.unwrap().unwrap();
    assert_eq!(r, (vec![3, 4], Some(SUCCESS)));

    // next_commit: exactly the first block written after the request was
    // served. Keep writing blocks until it answers (the client cannot see
    // when the server starts waiting, so no fixed block number is assumed).
    let mut c2 = c.clone();
    let next = tokio::spawn(async move {
        let nc = || Pos::NextCommit(SeekNextCommit {});
        deliver_raw(&mut c2, seek_request("devchannel", nc(), nc(), BlockUntilReady, false)).await
    });
    let mut written = 4;
    while !next.is_finished() && written < 50 {
        broadcast_all(&mut c, vec![message(ch, "x", 10), message(ch, "y", 10)]).await;
        written += 1;
        deliver_raw(&mut c, seek_request(ch, spec(written), spec(written), BlockUntilReady, false)).await;
    }
    let (blocks, st) = tokio::time::timeout(Duration::from_secs(10), next).await.unwrap().unwrap();
    assert_eq!(st, Some(SUCCESS));
    assert_eq!(blocks.len(), 1);
    assert!(blocks[0] >= 5 && blocks[0] <= written, "next_commit gave {blocks:?}, written up to {written}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_error_ends_waiting_deliver_and_refuses_broadcast() {
    let dir = tempfile::tempdir().unwrap();
    let node = hostile_node(dir.path(), "trap:enqueue");
    let mut c = node.client().await;
    let ch = "devchannel";
    // A strict follower waiting for block 1. Whether it starts waiting
    // before or after the chain errs, it must end with SERVICE_UNAVAILABLE.
    let mut c2 = c.clone();
    let strict = tokio::spawn(async move {
        deliver_raw(&mut c2, seek_request("devchannel", spec(1), spec(u64::MAX), BlockUntilReady, false)).await
    });
    let answers = broadcast_all(&mut c, vec![message(ch, "boom", 10), message(ch, "after", 10)]).await;
    assert_eq!(answers[0].0, SERVICE_UNAVAILABLE, "{:?}", answers[0]);
    assert!(answers[0].1.contains("unreachable"), "{:?}", answers[0]);
    assert_eq!(answers[1].0, SERVICE_UNAVAILABLE);
    assert!(answers[1].1.contains("errored"), "{:?}", answers[1]);
    let r = tokio::time::timeout(Duration::from_secs(10), strict).await.unwrap().unwrap();
    assert_eq!(r, (vec![], Some(SERVICE_UNAVAILABLE)));
    // New strict requests are refused; BEST_EFFORT still reads what exists.
    let r = deliver_raw(&mut c, seek_request(ch, spec(0), spec(0), BlockUntilReady, false)).await;
    assert_eq!(r, (vec![], Some(SERVICE_UNAVAILABLE)));
    let r = deliver_raw(&mut c, seek_request(ch, spec(0), spec(0), BlockUntilReady, true)).await;
    assert_eq!(r, (vec![0], Some(SUCCESS)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_refusal_is_service_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let node = hostile_node(dir.path(), "refuse:enqueue");
    let mut c = node.client().await;
    let answers = broadcast_all(&mut c, vec![message("devchannel", "a", 10), message("devchannel", "b", 10)]).await;
    for a in &answers {
        assert_eq!(a.0, SERVICE_UNAVAILABLE, "{a:?}");
        assert!(a.1.contains("refused the envelope"), "{a:?}");
    }
    // A refusal is not a fault: the chain is not errored, Deliver serves.
    let r = deliver_raw(&mut c, seek_request("devchannel", spec(0), spec(0), BlockUntilReady, false)).await;
    assert_eq!(r, (vec![0], Some(SUCCESS)));
}
