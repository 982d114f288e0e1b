//! The command line as an operator uses it: `start` with no flags (the
//! embedded default) in an empty directory, a client signing with the
//! generated identity, Ctrl-C (SIGINT) stopping cleanly, then `ledger
//! verify` and `ledger inspect` on what it wrote, and `--help`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use consenter_host::signer::Signer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_runs_orders_and_stops_cleanly() {
    let cwd = tempfile::tempdir().unwrap();
    let mut node = NodeProc::start_default(cwd.path());
    // The banner tells where the development identity is.
    let banner = node.banner.join("\n");
    assert!(banner.contains("listening on 127.0.0.1:"), "{banner}");
    let channels = node.next_line();
    assert_eq!(channels, "channels: devchannel");
    let id_line = node.next_line();
    let client_msp = cwd.path().join("consenter-data/dev-identity/client/msp");
    assert!(id_line.contains("client identity: --mspid DevMSP --msp-dir"), "{id_line}");
    let client = Signer::from_msp_dir(&client_msp, "DevMSP").expect("the generated client identity is usable");

    let mut c = node.client().await;
    let envs: Vec<_> = (0..10).map(|i| signed_message("devchannel", &format!("cli{i}"), 200, Some(&client))).collect();
    let mut acks = c.broadcast(tokio_stream::iter(envs)).await.unwrap().into_inner();
    for _ in 0..10 {
        assert_eq!(acks.message().await.unwrap().unwrap().status, 200);
    }
    // Batch timeout (2s) cuts the 10 envelopes into block 1.
    let blocks = tokio::time::timeout(Duration::from_secs(10), deliver(&mut c, "devchannel", 1, 1)).await.unwrap();
    assert_eq!(blocks[0].data.as_ref().unwrap().data.len(), 10);

    // A client following the chain (waiting for block 2) while Ctrl-C
    // arrives: the node still stops cleanly (exit code 0), and the stream
    // ends with SERVICE_UNAVAILABLE rather than hanging.
    let seek = seek_envelope(
        "devchannel",
        2,
        u64::MAX,
        consenter_host::proto::orderer::seek_info::SeekBehavior::BlockUntilReady,
    );
    let mut follow = c.deliver(tokio_stream::iter(vec![seek])).await.unwrap().into_inner();
    let pid = node.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let end = tokio::time::timeout(Duration::from_secs(10), follow.message()).await.expect("follower stream ended");
    if let Ok(Some(r)) = end {
        assert_eq!(
            r.r#type,
            Some(consenter_host::proto::orderer::deliver_response::Type::Status(503)),
            "a halted chain answers SERVICE_UNAVAILABLE"
        );
    }
    let status = node.child.wait().unwrap();
    assert!(status.success(), "node exit status after SIGINT: {status}");

    let data = cwd.path().join("consenter-data");
    let data = data.to_str().unwrap();
    let (ok, out) = cli(&["ledger", "verify", "--data-dir", data]);
    assert!(ok, "{out}");
    assert!(out.contains("devchannel: OK height 2"), "{out}");
    assert!(out.contains("DevMSP"), "{out}");
    let (ok, out) = cli(&["ledger", "inspect", "--data-dir", data, "--channel", "devchannel", "--block", "1"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("block 1") && out.contains("envelopes:     10") && out.contains("signed by:     DevMSP"),
        "{out}"
    );
    assert!(out.contains("tx \"cli0\""), "{out}");

    // Restart: the same channel comes back, nothing recreated.
    let node = NodeProc::start_default(cwd.path());
    let mut c = node.client().await;
    assert_eq!(deliver(&mut c, "devchannel", 0, 1).await.len(), 2);
}

#[test]
fn verify_reports_a_damaged_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = cli(&["ledger", "verify", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!ok, "no ledger at all is an error: {out}");
    assert!(out.contains("chains"), "says what is missing: {out}");
}

#[test]
fn help_explains_each_command() {
    let (ok, out) = cli(&["--help"]);
    assert!(ok);
    for w in ["start", "ledger"] {
        assert!(out.contains(w), "{out}");
    }
    let (ok, out) = cli(&["start", "--help"]);
    assert!(ok);
    for w in ["--data-dir", "--listen", "--msp-dir", "--plugin", "development"] {
        assert!(out.contains(w), "start --help mentions {w}: {out}");
    }
    let (ok, out) = cli(&["ledger", "--help"]);
    assert!(ok && out.contains("verify") && out.contains("inspect"), "{out}");
}
