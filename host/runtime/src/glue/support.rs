//! The `support` interface: Fabric's ConsenterSupport calls of a plugin,
//! turned into calls on the chain's [`crate::support::Support`].

use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use wasmtime::component::Resource;

use super::PluginState;
use super::types::{BatchRes, EnvelopeRes};
use crate::block;
use crate::support::{Contents, CreatedBlock, Support};

/// The host side of the interface, the same for every contract version
/// that has it (the interface did not change): one body, one impl per
/// version's generated traits.
macro_rules! support_host {
    () => {
        fn batch_size(s: &Support) -> types::BatchSize {
            let b = &s.config.batch_size;
            types::BatchSize {
                max_message_count: b.max_message_count,
                absolute_max_bytes: b.absolute_max_bytes,
                preferred_max_bytes: b.preferred_max_bytes,
            }
        }

    impl support::Host for PluginState {
        fn ordered(&mut self, env: Resource<EnvelopeRes>) -> wasmtime::Result<support::OrderedResult> {
            let env = self.take_envelope(env)?;
            let bs = self.support.config.batch_size;
            let before = self.support.cutter.pending_len();
            let r = self.support.cutter.ordered(env, &bs);
            let s = &mut self.support;
            s.fill.ordered(s.clock.now(), before, s.cutter.pending_len(), r.batches.len());
            let mut batches = Vec::with_capacity(r.batches.len());
            for b in r.batches {
                batches.push(self.push(BatchRes(b))?);
            }
            Ok(support::OrderedResult { batches, pending: r.pending })
        }

        fn ordered_many(&mut self, envs: Vec<Resource<EnvelopeRes>>) -> wasmtime::Result<support::OrderedManyResult> {
            self.check_list("ordered-many", envs.len())?;
            let bs = self.support.config.batch_size;
            let mut batches = Vec::new();
            let mut pending = Vec::with_capacity(envs.len());
            // One clock read for the call: its envelopes arrived together.
            let now = self.support.clock.now();
            for env in envs {
                let env = self.take_envelope(env)?;
                let before = self.support.cutter.pending_len();
                let r = self.support.cutter.ordered(env, &bs);
                let s = &mut self.support;
                s.fill.ordered(now, before, s.cutter.pending_len(), r.batches.len());
                for b in r.batches {
                    batches.push(self.push(BatchRes(b))?);
                }
                pending.push(r.pending);
            }
            Ok(support::OrderedManyResult { batches, pending })
        }

        fn cut(&mut self) -> wasmtime::Result<Resource<BatchRes>> {
            let before = self.support.cutter.pending_len();
            let b = self.support.cutter.cut();
            let s = &mut self.support;
            s.fill.cut(s.clock.now(), before);
            self.push(BatchRes(b))
        }

        fn pending_count(&mut self) -> wasmtime::Result<u32> {
            Ok(self.support.cutter.pending_len() as u32)
        }

        fn create_next_block(
            &mut self,
            batch: Resource<BatchRes>,
        ) -> wasmtime::Result<Result<Resource<CreatedBlock>, types::SupportError>> {
            let envs = self.delete(batch)?.0;
            let (number, prev) = self.support.created;
            let contents = Contents::of(&envs);
            let data: Vec<Bytes> = envs.into_iter().map(|e| e.bytes).collect();
            let block = block::new_block(number, if number == 0 { &[] } else { &prev }, data);
            let hash = block.header.as_ref().map(block::header_hash).unwrap_or_default();
            self.support.created = (number + 1, hash);
            Ok(Ok(self.push(CreatedBlock { block, number, hash, contents })?))
        }

        fn write_block(
            &mut self,
            b: Resource<CreatedBlock>,
            consenter_metadata: Vec<u8>,
        ) -> wasmtime::Result<Result<(), types::SupportError>> {
            let blk = self.delete(b)?;
            let r = self.support.write(blk, &consenter_metadata, false);
            self.answer(r)
        }

        fn write_config_block(
            &mut self,
            b: Resource<CreatedBlock>,
            consenter_metadata: Vec<u8>,
        ) -> wasmtime::Result<Result<(), types::SupportError>> {
            let blk = self.delete(b)?;
            let r = self.support.write(blk, &consenter_metadata, true);
            self.answer(r)
        }

        fn revalidate(&mut self, env: Resource<EnvelopeRes>) -> wasmtime::Result<Result<(), String>> {
            // Signature and policy checks are the host's work: their time is
            // not counted against the plugin's call deadline.
            let started = Instant::now();
            let e = self.envelopes.get(&env)?;
            let r = crate::processor::revalidate(&self.support.config, &self.support.signer, e, &self.support.types);
            self.host_time += started.elapsed();
            match r {
                Ok(None) => {
                    // It passes under the current config: stamped so.
                    self.envelopes.get_mut(&env)?.config_seq = self.support.config.sequence;
                    Ok(Ok(()))
                }
                // A config message recomputed against the current config: the
                // handle now names the new CONFIG envelope.
                Ok(Some(recomputed)) => {
                    tracing::info!(
                        channel = %self.support.chain_id,
                        sequence = self.support.config.sequence,
                        "config message made from an older config recomputed against the current one"
                    );
                    let before = self.envelopes.get(&env)?.bytes.len();
                    self.release(before);
                    self.hold(recomputed.bytes.len())?;
                    self.envelopes.replace(&env, recomputed)?;
                    Ok(Ok(()))
                }
                Err(reason) => Ok(Err(reason)),
            }
        }

        fn shared_config(&mut self) -> wasmtime::Result<types::OrdererConfig> {
            let c = &self.support.config;
            Ok(types::OrdererConfig {
                batch_size: batch_size(&self.support),
                batch_timeout_ms: c.batch_timeout.as_millis() as u64,
                consensus_type: c.consensus_type.clone(),
                consensus_metadata: c.consensus_metadata.to_vec(),
            })
        }

        fn chain_id(&mut self) -> wasmtime::Result<String> {
            Ok(self.support.chain_id.clone())
        }

        fn height(&mut self) -> wasmtime::Result<u64> {
            Ok(self.support.height)
        }

        fn sequence(&mut self) -> wasmtime::Result<u64> {
            Ok(self.support.config.sequence)
        }

        fn sign(&mut self, message: Vec<u8>) -> wasmtime::Result<Result<Vec<u8>, types::SupportError>> {
            let max = self.call_limits.max_call_bytes;
            if message.len() > max {
                let e = crate::support::SupportError::LimitExceeded(format!(
                    "sign: a message of {} bytes is over the cap of {max} (max-call-bytes)",
                    message.len()
                ));
                let e = self.support.refuse(e);
                return self.answer(Err(e));
            }
            Ok(self.support.signer.sign(&message).map_err(|e| types::SupportError::LimitExceeded(e.to_string())))
        }

        fn new_signature_header(&mut self) -> wasmtime::Result<Result<Vec<u8>, types::SupportError>> {
            Ok(Ok(self.support.signer.new_signature_header().encode_to_vec()))
        }

        fn fail(&mut self, reason: String) -> wasmtime::Result<()> {
            self.check_bytes("fail", reason.len())?;
            let reason: String = reason.chars().take(self.support.limits.max_log_bytes).collect();
            self.support.fail(format!("plugin reported a fatal error: {reason}"));
            Ok(())
        }
    }
    };
}

/// For plugins of `fabric:consenter@0.1.0`.
mod v0_1 {
    use super::*;
    use crate::bindings::v0_1::fabric::consenter::{support, types};
    support_host!();
}

/// For plugins of `fabric:consenter@0.2` (0.2.0 and 0.2.1).
mod v0_2 {
    use super::*;
    use crate::bindings::v0_2::fabric::consenter::{support, types};
    support_host!();
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::bindings::v0_2::fabric::consenter::{log, support, timers, types};
    use crate::channel::{ChannelConfig, ChannelTemplate};
    use crate::envelope::Envelope;
    use crate::proto::common::Block;
    use crate::signer::Signer;
    use crate::support::{BlockSink, ChainPosition, Clock, METADATA_SLACK, OnDurable, SupportLimits};
    use support::Host as _;
    use timers::Host as _;
    use types::HostBatch as _;

    /// A clock moved by hand (the testkit's own depends on this crate).
    struct ManualClock {
        start: Instant,
        offset: Mutex<Duration>,
    }

    impl ManualClock {
        fn new() -> Arc<ManualClock> {
            Arc::new(ManualClock { start: Instant::now(), offset: Mutex::new(Duration::ZERO) })
        }
        fn advance(&self, d: Duration) {
            *self.offset.lock().unwrap() += d;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.start + *self.offset.lock().unwrap()
        }
    }

    /// Blocks written, in memory.
    #[derive(Clone, Default)]
    struct MemorySink(Arc<Mutex<Vec<Bytes>>>);

    impl BlockSink for MemorySink {
        fn write(&mut self, _: u64, block: Bytes, _: Option<OnDurable>) -> Result<(), String> {
            self.0.lock().unwrap().push(block);
            Ok(())
        }
    }

    fn state(limits: SupportLimits) -> (PluginState, Arc<ManualClock>, MemorySink) {
        let dir = tempfile::tempdir().unwrap();
        let id = crate::signer::ensure_dev_identity(dir.path()).unwrap();
        let signer = Arc::new(Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap());
        let t = ChannelTemplate::solo("unit");
        let genesis = t.genesis_block();
        let cfg = Arc::new(ChannelConfig::from_config_block(&genesis).unwrap());
        let hash = block::header_hash(genesis.header.as_ref().unwrap());
        let clock = ManualClock::new();
        let sink = MemorySink::default();
        let pos = ChainPosition { height: 1, last_hash: hash, last_config: 0 };
        let s = Support::new("unit", cfg, signer, Box::new(sink.clone()), clock.clone(), pos, limits);
        (PluginState::for_test(s), clock, sink)
    }

    /// An envelope handle outside the held-bytes accounting (the caps'
    /// tests set their own budgets).
    fn envelope(st: &mut PluginState, tx: &str) -> Resource<EnvelopeRes> {
        st.envelopes.insert(built(tx)).unwrap()
    }

    fn block_of(st: &mut PluginState, tx: &str) -> Resource<CreatedBlock> {
        let e = envelope(st, tx);
        let b = st.new(vec![e]).unwrap();
        st.create_next_block(b).unwrap().unwrap()
    }

    #[test]
    fn only_the_next_block_is_written() {
        let (mut st, _, sink) = state(SupportLimits::default());
        let b1 = block_of(&mut st, "a");
        let b2 = block_of(&mut st, "b");
        assert_eq!(st.support.height(), 1);
        // Writing block 2 before block 1 is refused.
        let e = st.write_block(b2, vec![]).unwrap().unwrap_err();
        assert!(matches!(e, types::SupportError::OutOfOrder(_)), "{e:?}");
        assert_eq!(sink.0.lock().unwrap().len(), 0);
        st.write_block(b1, vec![]).unwrap().unwrap();
        assert_eq!(st.support.height(), 2);
        // The creator was reset to the last written block: the next block
        // created is number 2 and links to block 1.
        let b = block_of(&mut st, "c");
        st.write_block(b, vec![1, 2, 3]).unwrap().unwrap();
        let written = sink.0.lock().unwrap().clone();
        assert_eq!(written.len(), 2);
        let blk = Block::decode(written[1].clone()).unwrap();
        assert_eq!(blk.header.as_ref().unwrap().number, 2);
        assert_eq!(block::orderer_metadata(&blk).unwrap().consenter_metadata.as_ref(), &[1, 2, 3]);
    }

    #[test]
    fn oversized_metadata_and_bad_config_blocks_are_refused() {
        let limits = SupportLimits { max_metadata_bytes: 8, ..SupportLimits::default() };
        let (mut st, _, sink) = state(limits);
        let b = block_of(&mut st, "a");
        let e = st.write_block(b, vec![0; 9]).unwrap().unwrap_err();
        assert!(matches!(e, types::SupportError::LimitExceeded(_)), "{e:?}");
        // A normal envelope is not a config block.
        let b = block_of(&mut st, "a");
        let e = st.write_config_block(b, vec![]).unwrap().unwrap_err();
        assert!(matches!(e, types::SupportError::Invalid(_)), "{e:?}");
        assert!(sink.0.lock().unwrap().is_empty());
        assert!(st.support.failure().is_none(), "refusals alone do not fail the chain");
    }

    #[test]
    fn repeated_refusals_fail_the_chain() {
        let limits = SupportLimits { max_refusals: 3, ..SupportLimits::default() };
        let (mut st, _, _) = state(limits);
        for _ in 0..2 {
            let _ = st.set(1, u64::MAX).unwrap().unwrap_err();
        }
        assert!(st.support.failure().is_none());
        // The refusal that reaches the cap fails the chain and traps.
        let trap = st.set(1, u64::MAX).unwrap_err().to_string();
        assert!(trap.contains("3 refused calls"), "{trap}");
        assert!(st.support.failure().unwrap().contains("3 refused calls"));
        assert!(!st.support.host_fault(), "the plugin's fault");
        // A failed chain writes nothing more.
        let b = block_of(&mut st, "a");
        assert!(st.write_block(b, vec![]).is_err());
    }

    #[test]
    fn list_byte_and_handle_caps_trap() {
        let (mut st, _, _) = state(SupportLimits::default());
        st.call_limits.max_list_len = 2;
        st.call_limits.max_call_bytes = 16;
        let envs: Vec<_> = (0..3).map(|i| envelope(&mut st, &format!("e{i}"))).collect();
        let e = st.ordered_many(envs).unwrap_err().to_string();
        assert!(e.contains("passed 3 handles to ordered-many, over the cap of 2"), "{e}");
        let e = log::Host::log(&mut st, types::Level::Info, "x".repeat(17)).unwrap_err().to_string();
        assert!(e.contains("17 bytes to log"), "{e}");
        let r = st.sign(vec![0; 17]).unwrap();
        assert!(matches!(r, Err(types::SupportError::LimitExceeded(_))), "{r:?}");
        // Handles: the cap counts envelopes, batches and blocks held.
        let (mut st, _, _) = state(SupportLimits::default());
        st.call_limits.max_handles = 3;
        let _held: Vec<_> = (0..3).map(|_| st.cut().unwrap()).collect();
        let e = st.cut().unwrap_err().to_string();
        assert!(e.contains("holds 3 envelope, batch and block handles"), "{e}");
    }

    #[test]
    fn held_bytes_are_budgeted_and_released() {
        let (mut st, _, _) = state(SupportLimits::default());
        let one = {
            let e = insert(&mut st, "k9");
            let n = st.held_bytes;
            assert!(n > 0, "an envelope handed over is held");
            types::HostEnvelope::drop(&mut st, e).unwrap();
            assert_eq!(st.held_bytes, 0, "dropping releases");
            n
        };
        st.call_limits.max_held_bytes = Some(3 * one);
        let mut held: Vec<_> = (0..3).map(|i| insert(&mut st, &format!("k{i}"))).collect();
        let e = insert_err(&mut st, "k3");
        assert!(e.contains("budget of") && e.contains("max-held-mib"), "{e}");
        // A batch holds what its envelopes held; a block likewise.
        let batch = st.new(held.drain(..2).collect()).unwrap();
        assert_eq!(st.held_bytes, 3 * one);
        let blk = st.create_next_block(batch).unwrap().unwrap();
        assert_eq!(st.held_bytes, 3 * one);
        st.write_block(blk, vec![]).unwrap().unwrap();
        assert_eq!(st.held_bytes, one, "a written block is no longer held");
        let _more = insert(&mut st, "k4");
    }

    fn built(tx: &str) -> Envelope {
        let b = crate::envelope::build(
            "unit",
            crate::proto::common::HeaderType::Message,
            tx,
            Bytes::from_static(b"x"),
            None,
        )
        .unwrap();
        Envelope::parse(b).unwrap()
    }

    /// Hands the plugin an envelope as the host does (counted).
    fn insert(st: &mut PluginState, tx: &str) -> Resource<EnvelopeRes> {
        st.insert_envelope(built(tx)).unwrap()
    }

    fn insert_err(st: &mut PluginState, tx: &str) -> String {
        st.insert_envelope(built(tx)).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn empty_stale_and_config_class_blocks_are_refused() {
        let (mut st, _, sink) = state(SupportLimits::default());
        let empty = st.cut().unwrap();
        let b = st.create_next_block(empty).unwrap().unwrap();
        let e = st.write_block(b, vec![]).unwrap().unwrap_err();
        assert!(matches!(&e, types::SupportError::Invalid(m) if m.contains("no envelopes")), "{e:?}");
        // Validated under an older sequence than the channel's (here the
        // channel is made to be at sequence 1).
        let mut cfg = (**st.support.config()).clone();
        cfg.sequence = 1;
        st.support.config = Arc::new(cfg);
        let b = block_of(&mut st, "old");
        let e = st.write_block(b, vec![]).unwrap().unwrap_err();
        assert!(matches!(&e, types::SupportError::Invalid(m) if m.contains("revalidate it first")), "{e:?}");
        // A CONFIG envelope in a normal block.
        let c =
            crate::envelope::build("unit", crate::proto::common::HeaderType::Config, "", Bytes::new(), None).unwrap();
        let mut env = Envelope::parse(c).unwrap();
        env.config_seq = 1;
        let h = st.envelopes.insert(env).unwrap();
        let batch = st.new(vec![h]).unwrap();
        let b = st.create_next_block(batch).unwrap().unwrap();
        let e = st.write_block(b, vec![]).unwrap().unwrap_err();
        assert!(matches!(&e, types::SupportError::Invalid(m) if m.contains("CONFIG message")), "{e:?}");
        assert!(sink.0.lock().unwrap().is_empty());
    }

    #[test]
    fn metadata_is_bounded_by_the_blocks_data() {
        let (mut st, _, _) = state(SupportLimits::default());
        let b = block_of(&mut st, "a");
        let e = st.write_block(b, vec![0; METADATA_SLACK + 200]).unwrap().unwrap_err();
        assert!(matches!(&e, types::SupportError::LimitExceeded(m) if m.contains("plus 1024")), "{e:?}");
        let b = block_of(&mut st, "a");
        st.write_block(b, vec![0; METADATA_SLACK]).unwrap().unwrap();
    }

    #[test]
    fn disk_budget_per_minute_refills_with_time() {
        let limits = SupportLimits { disk_bytes_per_minute: 6000, ..SupportLimits::default() };
        let (mut st, clock, sink) = state(limits);
        let mut written = 0;
        let reason = loop {
            let b = block_of(&mut st, &format!("w{written}"));
            match st.write_block(b, vec![]).unwrap() {
                Ok(()) => written += 1,
                Err(e) => break format!("{e:?}"),
            }
            assert!(written < 100, "no budget");
        };
        assert!(reason.contains("disk-mib-per-minute"), "{reason}");
        assert!(written >= 2, "{written}");
        assert!(st.support.failure().is_some_and(|f| f.contains("disk budget")), "the chain errs");
        assert_eq!(sink.0.lock().unwrap().len(), written);
        let _ = clock;
    }

    #[test]
    fn timer_caps() {
        let (mut st, clock, _) = state(SupportLimits { max_timers: 4, ..SupportLimits::default() });
        for id in 0..4 {
            st.set(id, 10 * u64::from(id + 1)).unwrap().unwrap();
        }
        assert!(matches!(st.set(9, 5).unwrap(), Err(types::SupportError::LimitExceeded(_))));
        // Re-arming an armed timer is not a new timer.
        st.set(0, 5).unwrap().unwrap();
        assert!(matches!(st.set(0, 25 * 3600 * 1000).unwrap(), Err(types::SupportError::LimitExceeded(_))));
        st.cancel(1).unwrap();
        clock.advance(Duration::from_millis(30));
        assert_eq!(st.support.take_due_timers(clock.now()), vec![0, 2]);
        assert_eq!(st.support.next_deadline(), Some(clock.now() + Duration::from_millis(10)));
    }

    #[test]
    fn log_flood_is_rate_limited() {
        let (mut st, clock, _) = state(SupportLimits { max_log_lines_per_sec: 10, ..SupportLimits::default() });
        let allowed = (0..1000).filter(|_| st.support.log_allowed()).count();
        assert_eq!(allowed, 20, "burst of twice the rate");
        clock.advance(Duration::from_secs(1));
        let allowed = (0..1000).filter(|_| st.support.log_allowed()).count();
        assert_eq!(allowed, 10, "refilled at the rate");
    }
}
