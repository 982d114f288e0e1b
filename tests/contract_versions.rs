//! Contract versions: a plugin built for `fabric:consenter@0.1.0` (the solo
//! shipped before 0.2.0, kept as a fixture) still loads and orders exactly
//! as the current solo does; the current solo is a 0.2.0 single-node
//! plugin. A host upgrade never breaks an installed plugin.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use consenter_host::channel::ChannelTemplate;
use consenter_host::envelope::{self, Envelope};
use consenter_host::node::embedded;
use consenter_host::proto::common::{Block, HeaderType};
use consenter_host::runtime::{Limits, Runtime, World};
use consenter_host::signer::{self, Signer};
use consenter_host::testhost::TestHost;

const SOLO_0_1: &[u8] = include_bytes!("fixtures/solo-contract-0.1.0.wasm");

fn signer() -> Arc<Signer> {
    let dir = tempfile::tempdir().unwrap();
    let id = signer::ensure_dev_identity(dir.path()).unwrap();
    Arc::new(Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap())
}

fn tx_ids(b: &Block) -> Vec<String> {
    b.data.as_ref().unwrap().data.iter().map(|d| Envelope::parse(d.clone()).unwrap().tx_id).collect()
}

/// The blocks (by tx ids) a plugin writes for 7 envelopes with
/// MaxMessageCount 3, then after the batch timer.
fn run(plugin_bytes: &[u8], world: World) -> Vec<Vec<String>> {
    let rt = Runtime::new(Limits::default()).unwrap();
    let p = rt.load("solo", plugin_bytes).unwrap();
    assert_eq!(p.world(), world);
    let mut t = ChannelTemplate::solo("testchannel");
    t.batch_size.max_message_count = 3;
    t.batch_timeout = Duration::from_secs(2);
    let mut h = TestHost::start(&p, &t, signer()).unwrap();
    for i in 0..7 {
        let e = envelope::build("testchannel", HeaderType::Message, &format!("t{i}"), Bytes::from_static(b"x"), None)
            .unwrap();
        h.enqueue(e).unwrap();
    }
    h.advance(Duration::from_secs(2));
    assert!(h.errored().is_none());
    h.blocks().iter().skip(1).map(tx_ids).collect()
}

#[test]
fn a_plugin_built_for_contract_0_1_loads_and_orders_as_before() {
    assert!(
        String::from_utf8_lossy(SOLO_0_1).contains("fabric:consenter/support@0.1.0"),
        "the fixture is a 0.1.0 component"
    );
    let old = run(SOLO_0_1, World::V0_1);
    let new = run(embedded::get("solo").expect("solo is embedded"), World::V0_2);
    assert_eq!(old, vec![vec!["t0", "t1", "t2"], vec!["t3", "t4", "t5"], vec!["t6"]]);
    assert_eq!(old, new, "the 0.1.0 plugin orders exactly as the 0.2.0 build");
}

const SOLO_0_2_0: &[u8] = include_bytes!("fixtures/solo-contract-0.2.0.wasm");
const RAFT_0_2_0: &[u8] = include_bytes!("fixtures/raft-contract-0.2.0.wasm");

#[test]
fn a_plugin_built_for_contract_0_2_0_loads_and_orders_as_before() {
    assert!(
        String::from_utf8_lossy(SOLO_0_2_0).contains("fabric:consenter/support@0.2.0"),
        "the fixture is a 0.2.0 component"
    );
    let old = run(SOLO_0_2_0, World::V0_2);
    let new = run(embedded::get("solo").expect("solo is embedded"), World::V0_2);
    assert_eq!(old, vec![vec!["t0", "t1", "t2"], vec!["t3", "t4", "t5"], vec!["t6"]]);
    assert_eq!(old, new, "the 0.2.0 plugin orders exactly as the 0.2.1 build");
}

#[test]
fn a_clustered_plugin_built_for_contract_0_2_0_loads_without_the_handover_export() {
    assert!(String::from_utf8_lossy(RAFT_0_2_0).contains("fabric:consenter/cluster@0.2.0"));
    let rt = Runtime::new(Limits::default()).unwrap();
    let old = rt.load("etcdraft", RAFT_0_2_0).unwrap();
    assert_eq!(old.world(), World::V0_2Clustered);
    assert!(!old.has_handover(), "0.2.0 has no handover export");
    let new = rt.load("etcdraft", embedded::get("etcdraft").expect("raft is embedded")).unwrap();
    assert_eq!(new.world(), World::V0_2Clustered);
    assert!(new.has_handover(), "the shipped raft exports handover (0.2.1)");
}
