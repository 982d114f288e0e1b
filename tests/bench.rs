//! `consenter-host bench` against a real node: every envelope acknowledged
//! and seen in a block, the summary lines printed; a refusal makes the exit
//! code non-zero and says why.

mod common;

use std::process::Command;

use common::*;

fn bench(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_consenter-host")).arg("bench").args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn bench_commits_every_envelope_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = NodeProc::start(&data, &["--dev-batch-timeout", "50ms"]);
    let msp = data.join("dev-identity/client/msp");
    let (ok, out) = bench(&[
        "--orderer",
        &node.addr,
        "--messages",
        "3000",
        "--clients",
        "4",
        "--size",
        "200",
        "--msp-dir",
        msp.to_str().unwrap(),
        "--mspid",
        "DevMSP",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("acknowledged: ") && out.contains("(3000 in"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("committed: ") && l.contains("tx/s (3000 in")), "{out}");
    assert!(out.contains("latency: p50 "), "{out}");
    assert!(out.contains("envelopes seen: 3000"), "{out}");
    // 3000 envelopes with MaxMessageCount 500: at least 6 blocks.
    let blocks: u64 = out.split("blocks: ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    assert!(blocks >= 6, "{out}");

    // A second run on the same channel starts after the first run's blocks.
    let (ok, out) = bench(&["--orderer", &node.addr, "--messages", "500", "--clients", "2", "--size", "100"]);
    assert!(ok, "{out}");
    assert!(out.contains("envelopes seen: 500"), "only its own blocks are counted: {out}");
}

#[test]
fn bench_reports_an_unknown_channel() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"), &[]);
    let (ok, out) = bench(&["--orderer", &node.addr, "--channel", "nope", "--messages", "10"]);
    assert!(!ok, "{out}");
    assert!(out.contains("NOT_FOUND"), "{out}");
}
