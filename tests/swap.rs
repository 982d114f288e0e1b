//! Live consensus-type swaps on a real node: config updates alternate the
//! development channel between two solo builds (the shipped `solo` and the
//! template crate loaded as `solo2`) while a client keeps broadcasting;
//! every envelope acknowledged SUCCESS is in exactly one block, the ledger
//! verifies, the channel never errs, and after a restart it keeps the last
//! type. Updates naming a type with no plugin, a plugin that fails its
//! canary with the new config (its metadata), or a clustered type are
//! refused up front with the reason.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;
use consenter_host::envelope::Envelope as Parsed;
use consenter_host::proto::common::{Config, Envelope, HeaderType};
use consenter_host::proto::orderer::ConsensusType;
use consenter_host::proto::orderer::atomic_broadcast_client::AtomicBroadcastClient;
use prost::Message;
use tonic::transport::Channel;

const CH: &str = "devchannel";
const SWAPS: usize = 100;

fn type_update(current: &Config, ty: &str) -> Envelope {
    type_update_with(current, ty, b"")
}

fn type_update_with(current: &Config, ty: &str, metadata: &[u8]) -> Envelope {
    let v = ConsensusType { r#type: ty.into(), metadata: metadata.to_vec().into(), state: 0 }.encode_to_vec();
    orderer_update(CH, current, "ConsensusType", v)
}

/// `current` after an update of ConsensusType to `ty` (only that value
/// and its version change, as Fabric computes the next config).
fn applied(mut current: Config, ty: &str) -> Config {
    let root = current.channel_group.as_mut().unwrap();
    let v = root.groups.get_mut("Orderer").unwrap().values.get_mut("ConsensusType").unwrap();
    v.value = ConsensusType { r#type: ty.into(), metadata: Default::default(), state: 0 }.encode_to_vec().into();
    v.version += 1;
    current
}

fn start(data: &std::path::Path) -> NodeProc {
    let solo2 = format!("solo2={}", consenter_test_plugins::path("consenter_template.wasm").display());
    let hostile = format!("hostile={}", consenter_test_plugins::path("consenter_hostile.wasm").display());
    NodeProc::start(
        data,
        &[
            "--allow-unsigned-plugins",
            "--plugin",
            &solo2,
            "--plugin",
            &hostile,
            "--dev-max-message-count",
            "10",
            "--dev-batch-timeout",
            "100ms",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_live_swaps_under_load_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = start(&data);
    let mut c = node.client().await;
    let genesis = deliver(&mut c, CH, 0, 0).await.remove(0);
    let mut current = config_in(&genesis);

    // Refused up front, with the reason; the channel keeps solo.
    // (The hostile plugin passes its canary with empty metadata, so the
    // node loads it; with metadata "trap:start" it traps in start.)
    for (ty, md, expect) in [
        ("kafka", "", "ConsensusType.type \"kafka\" has no plugin on this node"),
        (
            "hostile",
            "trap:start",
            "ConsensusType.type \"hostile\": its plugin fails its canary with this channel's new config: start trapped",
        ),
        // Passes handle-chain and start, traps on the first envelope: the
        // swap check offers one, so it is refused rather than swapped in.
        (
            "hostile",
            "trap:enqueue",
            "ConsensusType.type \"hostile\": its plugin fails its canary with this channel's new config: enqueue \
             trapped",
        ),
        (
            "etcdraft",
            "",
            "needs the cluster: this node runs without TLS (start it with --tls-cert and --tls-key); the channel keeps \"solo\"",
        ),
    ] {
        let r = broadcast_all(&mut c, vec![type_update_with(&current, ty, md.as_bytes())]).await.remove(0);
        assert_eq!(r.0, 400, "{ty}: {r:?}");
        assert!(r.1.contains(expect), "{ty}: {:?} should say {expect:?}", r.1);
    }

    // Load on its own stream while the swaps go on.
    let load = spawn_load(&node, CH, 30).await;
    let mut ty = "solo";
    for i in 0..SWAPS {
        let next = if ty == "solo" { "solo2" } else { "solo" };
        let r = broadcast_all(&mut c, vec![type_update(&current, next)]).await.remove(0);
        assert_eq!(r.0, 200, "swap {i} to {next}: {r:?}");
        current = applied(current, next);
        ty = next;
        // A few envelopes between swaps on this stream too.
        let envs: Vec<_> = (0..3).map(|k| message(CH, &format!("s{i}-{k}"), 256)).collect();
        for (st, info) in broadcast_all(&mut c, envs).await {
            assert_eq!(st, 200, "after swap {i}: {info}");
        }
    }
    let mut acked = load.await.unwrap();
    acked.extend((0..SWAPS).flat_map(|i| (0..3).map(move |k| format!("s{i}-{k}"))));

    // Every acknowledged envelope in exactly one block; one config block
    // per swap; the plugin is the last type.
    let want_configs = SWAPS;
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut configs = 0;
    let mut next = 1;
    while seen.len() < acked.len() || configs < want_configs {
        let blocks = tokio::time::timeout(Duration::from_secs(20), deliver(&mut c, CH, next, next)).await.unwrap();
        let b = &blocks[0];
        for d in &b.data.as_ref().unwrap().data {
            let e = Parsed::parse(d.clone()).unwrap();
            if e.header_type == HeaderType::Config as i32 {
                configs += 1;
            } else if let Some(prev) = seen.insert(e.tx_id.clone(), next) {
                panic!("{} is in block {prev} and block {next}", e.tx_id);
            }
        }
        next += 1;
    }
    for t in &acked {
        assert!(seen.contains_key(t), "{t} was acknowledged but is in no block");
    }
    assert_eq!(configs, want_configs);
    let v = consenter_view(&node, CH);
    assert_eq!(v["plugin"], ty, "{v}");
    assert_eq!(v["swaps"], SWAPS as u64, "{v}");
    assert_eq!(v["previousPlugin"], if ty == "solo" { "solo2" } else { "solo" }, "{v}");
    assert_eq!((&v["state"], &v["crashes"], &v["lostEnvelopes"]), (&"running".into(), &0.into(), &0.into()), "{v}");
    // (Envelopes queued behind a config update in one plugin call go to the
    // old plugin's cutter after its config block, and the swap hands them
    // to the new one: `handedOver`; whether a run has any depends on the
    // timing, so the testkit's `a_swap_takes_what_the_cutter_holds` shows
    // that part deterministically.)
    // The node measured each swap's pause (figures in BENCHMARKS.md, from
    // `consenter-host bench --swaps`).
    assert_eq!(v["swapPauseUs"]["count"], SWAPS as u64, "{v}");
    assert!(v["swapPauseUs"]["max"].as_u64().unwrap() >= v["swapPauseUs"]["p50"].as_u64().unwrap(), "{v}");

    // The swaps' metric, by plugin pair.
    let metrics = String::from_utf8(node.ops("GET", "/metrics", None).body).unwrap();
    let line = metrics.lines().find(|l| l.starts_with("consenter_plugin_swaps{") && l.contains("to=\"solo2\""));
    let n: Option<f64> = line.and_then(|l| l.rsplit(' ').next()?.parse().ok());
    assert_eq!(n, Some((SWAPS / 2) as f64), "{metrics}");

    // Stopped and started again: the channel keeps the last type.
    let pid = node.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    assert!(node.child.wait().unwrap().success());
    let (ok, out) = cli(&["ledger", "verify", "--data-dir", &data.display().to_string()]);
    assert!(ok, "{out}");
    let node = start(&data);
    let mut c = node.client().await;
    let r = broadcast_all(&mut c, vec![message(CH, "after-restart", 100)]).await.remove(0);
    assert_eq!(r.0, 200, "{r:?}");
    assert_eq!(consenter_view(&node, CH)["plugin"], ty);
}

fn state_update(current: &Config, ty: &str, state: i32) -> Envelope {
    let v = ConsensusType { r#type: ty.into(), metadata: Default::default(), state }.encode_to_vec();
    orderer_update(CH, current, "ConsensusType", v)
}

/// `current` after an update of ConsensusType to (`ty`, `state`).
fn applied_state(mut current: Config, ty: &str, state: i32) -> Config {
    let root = current.channel_group.as_mut().unwrap();
    let v = root.groups.get_mut("Orderer").unwrap().values.get_mut("ConsensusType").unwrap();
    v.value = ConsensusType { r#type: ty.into(), metadata: Default::default(), state }.encode_to_vec().into();
    v.version += 1;
    current
}

/// Fabric's maintenance flow keeps working: in maintenance mode normal
/// Broadcasts get SERVICE_UNAVAILABLE with Fabric's text, config updates
/// go on (signed to satisfy /Channel/Orderer/Writers), the type may change
/// there, and leaving maintenance lets normal messages in again; state and
/// type may not change in one update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_mode_follows_fabric() {
    const MAINTENANCE: i32 = 1;
    let dir = tempfile::tempdir().unwrap();
    let node = start(&dir.path().join("data"));
    let mut c = node.client().await;
    let genesis = deliver(&mut c, CH, 0, 0).await.remove(0);
    let mut current = config_in(&genesis);

    let r = send(&mut c, state_update(&current, "solo2", MAINTENANCE)).await;
    assert_eq!(r.0, 400, "{r:?}");
    assert!(r.1.contains("at the same time"), "{r:?}");

    let r = send(&mut c, state_update(&current, "solo", MAINTENANCE)).await;
    assert_eq!(r.0, 200, "{r:?}");
    current = applied_state(current, "solo", MAINTENANCE);
    let r = send(&mut c, message(CH, "in-maintenance", 100)).await;
    assert_eq!(r, (503, "normal transactions are rejected: maintenance mode".to_string()));

    // The type changes in maintenance (Fabric's procedure), then the state.
    let r = send(&mut c, state_update(&current, "solo2", MAINTENANCE)).await;
    assert_eq!(r.0, 200, "{r:?}");
    current = applied_state(current, "solo2", MAINTENANCE);
    let r = send(&mut c, message(CH, "still-in-maintenance", 100)).await;
    assert_eq!(r.0, 503, "{r:?}");
    let r = send(&mut c, state_update(&current, "solo2", 0)).await;
    assert_eq!(r.0, 200, "{r:?}");
    let r = send(&mut c, message(CH, "after-maintenance", 100)).await;
    assert_eq!(r.0, 200, "{r:?}");
    // The envelope is ordered by the new plugin: block 4 (three config
    // blocks after genesis).
    let b = tokio::time::timeout(Duration::from_secs(10), deliver(&mut c, CH, 4, 4)).await.unwrap().remove(0);
    let tx = Parsed::parse(b.data.unwrap().data[0].clone()).unwrap().tx_id;
    assert_eq!(tx, "after-maintenance");
    let v = consenter_view(&node, CH);
    assert_eq!((&v["plugin"], &v["swaps"]), (&"solo2".into(), &1.into()), "{v}");
}

/// One envelope on its own Broadcast stream: its status and info.
async fn send(c: &mut AtomicBroadcastClient<Channel>, env: Envelope) -> (i32, String) {
    broadcast_all(c, vec![env]).await.remove(0)
}
