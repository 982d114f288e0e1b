//! Live plugin upgrades on a real node: an operator installs a new signed
//! build of `solo` with `consenter-host plugin install` while a client
//! keeps broadcasting; the development channel switches at a block
//! boundary with nothing lost. A build that traps on probation is rolled
//! back with the reason shown, the channel keeps ordering, and the node
//! serves the build before it again, also after a restart. Packages the
//! node must refuse are refused with the reason.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use consenter_host::envelope::Envelope as Parsed;
use consenter_host::proto::common::HeaderType;

const CH: &str = "devchannel";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn start(data: &Path) -> NodeProc {
    NodeProc::start(
        data,
        &["--dev-max-message-count", "10", "--dev-batch-timeout", "100ms", "--plugin-probation", "1h"],
    )
}

/// `plugin install FILE [--consensus-type T]`: (exit ok, output).
fn install(node: &NodeProc, file: &Path, ty: Option<&str>) -> (bool, String) {
    let admin = node.admin.as_deref().expect("the admin endpoint");
    let mut args = vec!["plugin", "install", "-o", admin, s(file)];
    if let Some(t) = ty {
        args.extend(["--consensus-type", t]);
    }
    cli(&args)
}

/// The node's plugin list, by consensus type.
fn plugins(node: &NodeProc) -> BTreeMap<String, serde_json::Value> {
    let admin = node.admin.as_deref().expect("the admin endpoint");
    let (ok, out) = cli(&["plugin", "list", "-o", admin]);
    assert!(ok && out.starts_with("Status: 200"), "{out}");
    let json = out.split_once('\n').map(|(_, j)| j).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["consensusType"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

/// Waits (polling the API, 30 s at most) until the consenter view says
/// `pred`.
fn await_view(node: &NodeProc, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = consenter_view(node, CH);
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: the channel's consenter is still {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Signs `input` as solo `version` into `out`.
fn sign(key: &Path, input: &Path, version: &str, out: &Path) {
    let (ok, text) = cli(&[
        "plugin",
        "sign",
        "--key",
        s(key),
        "--name",
        "solo",
        "--version",
        version,
        "--consensus-type",
        "solo",
        s(input),
        "-o",
        s(out),
    ]);
    assert!(ok, "{text}");
}

/// Reads blocks from 1 on (waiting for each, 20 s at most) until every
/// tx id in `want` was seen: tx ids by block; fails if one is in two
/// blocks.
async fn blocks_with(node: &NodeProc, want: &[String]) -> BTreeMap<String, u64> {
    let mut c = node.client().await;
    let mut seen = BTreeMap::new();
    let mut next = 1;
    while want.iter().any(|t| !seen.contains_key(t)) {
        let missing: Vec<&String> = want.iter().filter(|t| !seen.contains_key(*t)).collect();
        let blocks =
            tokio::time::timeout(Duration::from_secs(20), deliver(&mut c, CH, next, next)).await.unwrap_or_else(|_| {
                panic!(
                    "block {next} did not come; {} acknowledged envelopes are in no block: {missing:?}",
                    missing.len()
                )
            });
        for d in &blocks[0].data.as_ref().unwrap().data {
            let e = Parsed::parse(d.clone()).unwrap();
            if e.header_type != HeaderType::Config as i32
                && let Some(prev) = seen.insert(e.tx_id.clone(), next)
            {
                panic!("{} is in block {prev} and block {next}", e.tx_id);
            }
        }
        next += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_upgrade_loses_nothing_and_a_failing_build_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = dir.path().join("keys");
    let (ok, out) = cli(&["plugin", "keygen", "--out", s(&keys.join("operator"))]);
    assert!(ok, "{out}");
    std::fs::create_dir_all(data.join("trusted-keys")).unwrap();
    std::fs::copy(keys.join("operator.pub"), data.join("trusted-keys/operator.pub")).unwrap();
    let key = keys.join("operator.key");
    // Two new builds of solo: the template crate (Fabric's solo on the WIT
    // alone) as 2.0.0, and a solo that traps on its 100th envelope as 3.0.0.
    let v2 = dir.path().join("solo-2.0.0.wasm");
    let v3 = dir.path().join("solo-3.0.0.wasm");
    sign(&key, &consenter_test_plugins::path("consenter_template.wasm"), "2.0.0", &v2);
    sign(&key, &consenter_test_plugins::path("mutant_solo_trap_after_100.wasm"), "3.0.0", &v3);

    let mut node = start(&data);
    let shipped = consenter_view(&node, CH);
    assert_eq!((&shipped["plugin"], &shipped["upgrades"]), (&"solo".into(), &0.into()), "{shipped}");
    let shipped_version = shipped["version"].as_str().unwrap().to_string();
    let listed = plugins(&node);
    assert_eq!(listed["solo"]["source"], "shipped");
    // Solo keeps nothing of its own (the host's cutter holds what it
    // accepted); raft hands its state over at an upgrade.
    assert_eq!((&listed["solo"]["handover"], &listed["etcdraft"]["handover"]), (&false.into(), &true.into()));

    // Refused, with the reason; nothing changes.
    let unsigned = consenter_test_plugins::path("consenter_template.wasm");
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not a wasm component").unwrap();
    for (file, ty, expect) in [
        (garbage.as_path(), Some("solo"), "the plugin package is refused"),
        (unsigned.as_path(), Some("solo"), "refused"),
        (unsigned.as_path(), None, "names no consensus type"),
        (
            v2.as_path(),
            Some("etcdraft"),
            "the package's manifest says consensus type \"solo\", the request says \"etcdraft\"",
        ),
    ] {
        let (ok, out) = install(&node, file, ty);
        assert!(!ok && out.starts_with("Status: 400") && out.contains(expect), "{file:?} {ty:?}: {out}");
    }
    assert_eq!(consenter_view(&node, CH)["upgrades"], 0);

    // Load on its own stream; the upgrade in the middle of it.
    let load = spawn_load(&node, CH, 20).await;
    let (ok, out) = install(&node, &v2, None);
    assert!(ok && out.starts_with("Status: 201"), "{out}");
    assert!(out.contains("\"version\": \"2.0.0\"") && out.contains("\"devchannel\""), "{out}");
    let v = await_view(&node, "upgrade to 2.0.0", |v| v["version"] == "2.0.0");
    let acked = load.await.unwrap();
    assert_eq!((&v["upgrades"], &v["previousVersion"]), (&1.into(), &shipped_version.clone().into()), "{v}");
    assert!(v["probationMsLeft"].as_u64().is_some(), "{v}");
    let mut c = node.client().await;
    let after: Vec<_> = (0..5).map(|k| message(CH, &format!("after-{k}"), 100)).collect();
    assert!(broadcast_all(&mut c, after).await.iter().all(|(st, _)| *st == 200));
    let v = consenter_view(&node, CH);
    assert_eq!((&v["state"], &v["crashes"], &v["lostEnvelopes"]), (&"running".into(), &0.into(), &0.into()), "{v}");
    // Every acknowledged envelope is in exactly one block.
    let mut want = acked.clone();
    want.extend((0..5).map(|k| format!("after-{k}")));
    blocks_with(&node, &want).await;
    let listed = &plugins(&node)["solo"];
    assert_eq!((&listed["version"], &listed["source"]), (&"2.0.0".into(), &"installed".into()), "{listed}");
    // The same build again is refused (nothing to upgrade).
    let (ok, out) = install(&node, &v2, None);
    assert!(!ok && out.contains("already this build"), "{out}");

    // A build that passes its checks and traps on its 100th envelope: the
    // channel goes back to 2.0.0 and keeps ordering.
    let (ok, out) = install(&node, &v3, None);
    assert!(ok && out.starts_with("Status: 201"), "{out}");
    await_view(&node, "upgrade to 3.0.0", |v| v["version"] == "3.0.0");
    let envs: Vec<_> = (0..150).map(|k| message(CH, &format!("p{k}"), 100)).collect();
    let answers = broadcast_all(&mut c, envs).await;
    assert!(answers.iter().any(|(st, _)| *st != 200), "the trapping build answered everything: {answers:?}");
    let v = await_view(&node, "rollback", |v| v["rollbacks"] == 1);
    assert_eq!((&v["version"], &v["previousVersion"]), (&"2.0.0".into(), &"3.0.0".into()), "{v}");
    let reason = v["lastRollback"].as_str().unwrap();
    assert!(reason.contains("failed on probation") && reason.contains("3.0.0"), "{reason}");
    assert_eq!(v["state"], "running", "{v}");
    let envs: Vec<_> = (0..20).map(|k| message(CH, &format!("back-{k}"), 100)).collect();
    for (k, (st, info)) in broadcast_all(&mut c, envs).await.into_iter().enumerate() {
        assert_eq!(st, 200, "back-{k} after the rollback: {info}");
    }
    // The node serves 2.0.0 again (new channels, the next start).
    assert_eq!(plugins(&node)["solo"]["version"], "2.0.0");
    let rollbacks = node.metric("consenter_plugin_rollbacks{channel=\"devchannel\",plugin=\"solo\"}");
    assert_eq!(rollbacks, Some(1.0));

    // Stopped once they are in blocks (a stop drops what is still in the
    // cutter, as Fabric's does) and started again: the installed 2.0.0
    // orders, the ledger verifies, every envelope answered SUCCESS after
    // the rollback is there.
    let back: Vec<String> = (0..20).map(|k| format!("back-{k}")).collect();
    blocks_with(&node, &back).await;
    let pid = node.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    assert!(node.child.wait().unwrap().success());
    let (ok, out) = cli(&["ledger", "verify", "--data-dir", s(&data)]);
    assert!(ok, "{out}");
    let node = start(&data);
    let v = consenter_view(&node, CH);
    assert_eq!((&v["version"], &v["upgrades"]), (&"2.0.0".into(), &0.into()), "{v}");
    blocks_with(&node, &back).await;
    let mut c = node.client().await;
    assert_eq!(broadcast_all(&mut c, vec![message(CH, "after-restart", 100)]).await[0].0, 200);
}
