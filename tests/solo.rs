//! Solo through the real wasm plugin, on the deterministic test host:
//! blocks cut by count, by preferred bytes, by an oversized message, by the
//! batch timer; a config envelope goes alone after the pending batch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use consenter_host::block;
use consenter_host::channel::{ChannelConfig, ChannelTemplate};
use consenter_host::envelope::{self, Envelope};
use consenter_host::node::embedded;
use consenter_host::proto::common::{Block, HeaderType};
use consenter_host::runtime::{Limits, Runtime};
use consenter_host::signer::{self, Signer};
use consenter_host::testhost::TestHost;

fn signer() -> Arc<Signer> {
    let dir = tempfile::tempdir().unwrap();
    let id = signer::ensure_dev_identity(dir.path()).unwrap();
    Arc::new(Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap())
}

fn host(t: &ChannelTemplate) -> TestHost {
    let rt = Runtime::new(Limits::default()).unwrap();
    let solo = rt.load("solo", embedded::get("solo").expect("solo is embedded")).unwrap();
    TestHost::start(&solo, t, signer()).unwrap()
}

fn template(count: u32, preferred: u32) -> ChannelTemplate {
    let mut t = ChannelTemplate::solo("testchannel");
    t.batch_size.max_message_count = count;
    t.batch_size.preferred_max_bytes = preferred;
    t.batch_timeout = Duration::from_secs(2);
    t
}

/// An envelope whose cutter size (payload + signature) is exactly `size`.
fn env_of_size(tx: &str, size: usize) -> Bytes {
    // The header's timestamp (now) varies in encoded length, so search
    // around the estimate until the size is exact.
    for _ in 0..20 {
        let probe = envelope::build("testchannel", HeaderType::Message, tx, Bytes::new(), None).unwrap();
        let base = Envelope::parse(probe).unwrap().size as usize;
        for pad in size.saturating_sub(base + 8)..=size.saturating_sub(base).saturating_add(2) {
            let e = envelope::build("testchannel", HeaderType::Message, tx, Bytes::from(vec![7u8; pad]), None).unwrap();
            if Envelope::parse(e.clone()).unwrap().size as usize == size {
                return e;
            }
        }
    }
    panic!("cannot build an envelope of {size} bytes");
}

fn tx_ids(b: &Block) -> Vec<String> {
    b.data.as_ref().unwrap().data.iter().map(|d| Envelope::parse(d.clone()).unwrap().tx_id).collect()
}

fn check_chain(blocks: &[Block]) {
    for w in blocks.windows(2) {
        let (prev, b) = (&w[0], &w[1]);
        let h = b.header.as_ref().unwrap();
        assert_eq!(h.number, prev.header.as_ref().unwrap().number + 1);
        assert_eq!(h.previous_hash.as_ref(), block::header_hash(prev.header.as_ref().unwrap()));
        block::check_data_hash(b).unwrap();
    }
}

#[test]
fn cuts_by_max_message_count() {
    let mut h = host(&template(3, 1 << 20));
    for i in 0..7 {
        h.enqueue(env_of_size(&format!("t{i}"), 100)).unwrap();
    }
    let blocks = h.new_blocks();
    assert_eq!(blocks.iter().map(tx_ids).collect::<Vec<_>>(), vec![vec!["t0", "t1", "t2"], vec!["t3", "t4", "t5"]]);
    // t6 is pending with the batch timer armed for BatchTimeout.
    assert_eq!(h.next_timer_in(), Some(Duration::from_secs(2)));
    check_chain(&h.blocks());
    assert!(h.errored().is_none());
}

#[test]
fn cuts_by_preferred_max_bytes() {
    let mut h = host(&template(100, 1000));
    h.enqueue(env_of_size("a", 400)).unwrap();
    h.enqueue(env_of_size("b", 400)).unwrap();
    assert!(h.new_blocks().is_empty(), "800 <= 1000 bytes pend");
    h.enqueue(env_of_size("c", 300)).unwrap(); // 1100 > 1000: cut a, b first
    assert_eq!(h.new_blocks().iter().map(tx_ids).collect::<Vec<_>>(), vec![vec!["a", "b"]]);
    h.enqueue(env_of_size("d", 700)).unwrap(); // 300 + 700 = 1000: fits exactly
    assert!(h.new_blocks().is_empty());
}

#[test]
fn oversized_message_cuts_pending_and_goes_alone() {
    let mut h = host(&template(100, 1000));
    h.enqueue(env_of_size("small", 100)).unwrap();
    h.enqueue(env_of_size("huge", 1001)).unwrap();
    assert_eq!(h.new_blocks().iter().map(tx_ids).collect::<Vec<_>>(), vec![vec!["small"], vec!["huge"]]);
    assert_eq!(h.next_timer_in(), None, "nothing pending: the batch timer is cleared");
}

#[test]
fn batch_timer_cuts_pending() {
    let mut h = host(&template(100, 1 << 20));
    h.enqueue(env_of_size("a", 100)).unwrap();
    h.advance(Duration::from_millis(1500));
    h.enqueue(env_of_size("b", 100)).unwrap();
    // The timer started with a; b does not restart it.
    h.advance(Duration::from_millis(499));
    assert!(h.new_blocks().is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.new_blocks().iter().map(tx_ids).collect::<Vec<_>>(), vec![vec!["a", "b"]]);
    assert_eq!(h.next_timer_in(), None);
    // Nothing pending: time passing writes nothing.
    h.advance(Duration::from_secs(10));
    assert!(h.new_blocks().is_empty());
}

#[test]
fn config_envelope_goes_alone_after_pending() {
    let mut h = host(&template(100, 1 << 20));
    h.enqueue(env_of_size("a", 100)).unwrap();
    h.enqueue(env_of_size("b", 100)).unwrap();
    let mut next = template(2, 1 << 20);
    next.batch_timeout = Duration::from_millis(500);
    h.enqueue(next.config_envelope_at(1)).unwrap();
    let blocks = h.new_blocks();
    assert_eq!(blocks.len(), 2);
    assert_eq!(tx_ids(&blocks[0]), vec!["a", "b"]);
    assert_eq!(blocks[1].data.as_ref().unwrap().data.len(), 1);
    let cfg = ChannelConfig::from_config_block(&blocks[1]).unwrap();
    assert_eq!(cfg.batch_size.max_message_count, 2);
    assert_eq!(h.next_timer_in(), None, "config clears the batch timer");
    // Last config now points at the config block (number 2).
    let (last_config, _) = consenter_host::node::last_config_and_metadata(&blocks[1]);
    assert_eq!(last_config, 2);
    // The new BatchSize applies to the next messages: 2 messages cut.
    h.enqueue(env_of_size("c", 100)).unwrap();
    h.enqueue(env_of_size("d", 100)).unwrap();
    let blocks = h.new_blocks();
    assert_eq!(blocks.iter().map(tx_ids).collect::<Vec<_>>(), vec![vec!["c", "d"]]);
    assert_eq!(consenter_host::node::last_config_and_metadata(&blocks[0]).0, 2);
    check_chain(&h.blocks());
}

#[test]
fn written_blocks_are_signed_by_the_node() {
    let s = signer();
    let rt = Runtime::new(Limits::default()).unwrap();
    let solo = rt.load("solo", embedded::get("solo").unwrap()).unwrap();
    let mut h = TestHost::start(&solo, &template(1, 1 << 20), s.clone()).unwrap();
    h.enqueue(env_of_size("a", 50)).unwrap();
    let b = h.new_blocks().pop().unwrap();
    assert_eq!(block::verify_block_signature(&b, s.verifying_key()).unwrap(), 1);
    assert_eq!(b.metadata.as_ref().unwrap().metadata.len(), 5);
    // A different key does not verify.
    let other = signer();
    assert!(block::verify_block_signature(&b, other.verifying_key()).is_err());
}

#[test]
fn grouped_enqueue_orders_like_one_by_one() {
    let mut h = host(&template(3, 1 << 20));
    let mut next = template(3, 1 << 20);
    next.batch_timeout = Duration::from_millis(700);
    let group = vec![
        env_of_size("a", 100),
        env_of_size("b", 100),
        env_of_size("c", 100),
        env_of_size("d", 100),
        next.config_envelope_at(1),
        env_of_size("e", 100),
    ];
    let answers = h.enqueue_many(group);
    assert_eq!(answers.len(), 6);
    assert!(answers.iter().all(|a| a.is_ok()));
    let blocks = h.new_blocks();
    assert_eq!(tx_ids(&blocks[0]), vec!["a", "b", "c"]);
    assert_eq!(tx_ids(&blocks[1]), vec!["d"], "config cuts the pending batch first");
    assert!(ChannelConfig::from_config_block(&blocks[2]).is_ok(), "then the config block alone");
    assert_eq!(blocks.len(), 3);
    // e pends under the new config's BatchTimeout.
    assert_eq!(h.next_timer_in(), Some(Duration::from_millis(700)));
    check_chain(&h.blocks());
}

#[test]
fn grouped_enqueue_keeps_fabrics_timer_rule() {
    // Fabric's solo does not restart the batch timer when an overflow cut
    // leaves the new message pending; a grouped call must not either.
    let mut h = host(&template(100, 1000));
    h.enqueue(env_of_size("a", 400)).unwrap();
    h.advance(Duration::from_secs(1));
    let r = h.enqueue_many(vec![env_of_size("b", 700)]);
    assert!(r[0].is_ok());
    assert_eq!(h.new_blocks().iter().map(tx_ids).collect::<Vec<_>>(), vec![vec!["a"]]);
    assert_eq!(h.next_timer_in(), Some(Duration::from_secs(1)), "timer from a still runs");
    // A count cut in the group clears the timer; the next pending message re-arms it fresh.
    let mut h = host(&template(2, 1 << 20));
    h.enqueue(env_of_size("a", 100)).unwrap();
    h.advance(Duration::from_secs(1));
    h.enqueue_many(vec![env_of_size("b", 100), env_of_size("c", 100)]);
    assert_eq!(h.new_blocks().iter().map(tx_ids).collect::<Vec<_>>(), vec![vec!["a", "b"]]);
    assert_eq!(h.next_timer_in(), Some(Duration::from_secs(2)), "re-armed for c");
}
