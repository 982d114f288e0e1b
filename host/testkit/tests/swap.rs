//! The core of a live swap, deterministically: envelopes offered in the
//! same plugin call after a config envelope that changes the consensus
//! type end in the host's cutter once solo wrote the config block; the
//! swap takes them, in order, for the next plugin, and counts them as
//! handed over, not lost.

use std::sync::Arc;
use std::time::Duration;

use consenter_runtime::{Limits, Runtime};
use consenter_testkit::TestHost;
use consenter_testkit::channel::ChannelTemplate;
use consenter_testkit::conformance::{test_envelope, update};
use consenter_testkit::envelope::Envelope;
use consenter_testkit::proto::orderer::ConsensusType;
use consenter_testkit::signer::{self, Signer};
use prost::Message;

#[test]
fn a_swap_takes_what_the_cutter_holds() {
    let dir = tempfile::tempdir().unwrap();
    let id = signer::ensure_dev_identity(dir.path()).unwrap();
    let signer = Arc::new(Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap());
    let rt = Runtime::new(Limits::default()).unwrap();
    let solo = rt.load("solo", consenter_test_plugins::SOLO).unwrap();
    let mut t = ChannelTemplate::solo("swapping");
    t.batch_size.max_message_count = 10;
    t.batch_timeout = Duration::from_secs(60);
    let mut host = TestHost::start(&solo, &t, signer).unwrap();
    host.enqueue(test_envelope("swapping", "before-0", 100)).unwrap();
    let cfg = host.config().unwrap();
    let ct = ConsensusType { r#type: "solo2".into(), metadata: Default::default(), state: 0 }.encode_to_vec();
    let types = vec!["solo".to_string(), "solo2".to_string()];
    let config = host.config_envelope(update::orderer_value(&cfg, "ConsensusType", ct.into()), &types).unwrap();
    let mut group = vec![config];
    for k in 0..3 {
        let mut e = Envelope::parse(test_envelope("swapping", &format!("after-{k}"), 100)).unwrap();
        e.config_seq = host.sequence();
        group.push(e);
    }
    assert!(host.enqueue_many_validated(group).iter().all(Result::is_ok));
    // Solo cut what was pending (block 1), wrote the config block (2), and
    // offered the rest to the cutter under the new config.
    let blocks = host.new_blocks();
    assert_eq!(blocks.len(), 2);
    assert_eq!(host.consensus_type(), Some("solo2"));
    let pending: Vec<String> = host.take_pending().into_iter().map(|e| e.tx_id).collect();
    assert_eq!(pending, ["after-0", "after-1", "after-2"]);
    assert!(host.take_pending().is_empty(), "taken once");
    assert!(host.errored().is_none());
}
