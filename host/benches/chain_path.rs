//! The chain path without the network: envelopes already in memory →
//! plugin (solo, wasm) → cutter → block (hash, sign) → ledger (fsync, group
//! commit). 1 KiB envelopes, batch 500. A second benchmark runs the same
//! path natively (no plugin) so the plugin's share of the time is the
//! difference. The wasm cases run twice: with the default plugin limits and
//! with `Limits::unlimited()` (no memory cap, no epoch interruption, no
//! call caps), to measure what the limits cost.
//! Run: `cargo bench -p consenter-host --bench chain_path`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;

use consenter_host::block;
use consenter_host::chain::{ChainCore, ChainStatus, ledger_sink};
use consenter_host::channel::{ChannelConfig, ChannelTemplate};
use consenter_host::cutter::BlockCutter;
use consenter_host::envelope::{self, Envelope};
use consenter_host::ledger::Ledger;
use consenter_host::node::embedded;
use consenter_host::proto::common::HeaderType;
use consenter_host::runtime::{Limits, Runtime};
use consenter_host::signer::{self, Signer};
use consenter_host::support::{BlockSink, ChainPosition, Support, SupportLimits, SystemClock};

const PER_ITER: usize = 10_000; // 20 blocks of 500
/// Envelopes per plugin call, as the chain actor groups what queued up.
const GROUP: usize = 500;

fn envelopes(n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|i| {
            let b =
                envelope::build("bench", HeaderType::Message, &format!("{i}"), Bytes::from(vec![7u8; 1024 - 90]), None)
                    .unwrap();
            Envelope::parse(b).unwrap()
        })
        .collect()
}

struct Setup {
    _dir: tempfile::TempDir,
    ledger: Ledger,
    signer: Arc<Signer>,
    template: ChannelTemplate,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let id = signer::ensure_dev_identity(&dir.path().join("id")).unwrap();
    let signer = Arc::new(Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap());
    let mut template = ChannelTemplate::solo("bench");
    template.batch_timeout = Duration::from_secs(3600);
    let ledger = Ledger::open(&dir.path().join("ledger")).unwrap();
    let mut g = template.genesis_block();
    block::sign_block(&mut g, 0, &[], &signer).unwrap();
    ledger.append(&[g.encode_to_vec().into()]).unwrap();
    Setup { _dir: dir, ledger, signer, template }
}

fn position(l: &Ledger) -> ChainPosition {
    consenter_host::chain::ResumePoint::read("bench", l).expect("the bench ledger resumes").pos
}

fn wait_height(l: &Ledger, h: u64) {
    while l.height() < h {
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn bench(c: &mut Criterion) {
    let envs = envelopes(PER_ITER);
    let mut g = c.benchmark_group("chain_path");
    g.throughput(Throughput::Elements(PER_ITER as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(15));

    // Through the solo wasm plugin, with the default limits (memory cap,
    // call deadline, list/byte/handle caps) and with none: the limits'
    // cost on the healthy path is the difference.
    for (name, limits) in
        [("wasm_solo_1KiB_batch500", Limits::default()), ("wasm_solo_1KiB_batch500_unlimited", Limits::unlimited())]
    {
        let s = setup();
        let rt = Runtime::new(limits).unwrap();
        let solo = rt.load("solo", embedded::get("solo").unwrap()).unwrap();
        let status = Arc::new(ChainStatus::default());
        let (sink, _writer) = ledger_sink("bench", s.ledger.clone(), status.clone(), 0).unwrap();
        let cfg = Arc::new(ChannelConfig::from_config_block(&s.template.genesis_block()).unwrap());
        let support = Support::new(
            "bench",
            cfg,
            s.signer.clone(),
            sink,
            Arc::new(SystemClock),
            position(&s.ledger),
            SupportLimits::default(),
        );
        let mut core = ChainCore::start(&solo, support, &[], status).unwrap();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = s.ledger.height() + (PER_ITER / 500) as u64;
                    for group in envs.chunks(GROUP) {
                        for r in core.enqueue_many(group.to_vec()) {
                            r.unwrap();
                        }
                    }
                    wait_height(&s.ledger, target);
                }
                start.elapsed()
            })
        });
    }

    // The same path natively: cutter → block → sign → ledger.
    {
        let s = setup();
        let status = Arc::new(ChainStatus::default());
        let (mut sink, _writer) = ledger_sink("bench-native", s.ledger.clone(), status, 0).unwrap();
        let cfg = ChannelConfig::from_config_block(&s.template.genesis_block()).unwrap();
        let mut cutter = BlockCutter::default();
        let mut pos = position(&s.ledger);
        g.bench_function("native_1KiB_batch500", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = pos.height + (PER_ITER / 500) as u64;
                    native_order(&envs, &mut cutter, &cfg, &mut pos, &s.signer, sink.as_mut());
                    wait_height(&s.ledger, target);
                }
                start.elapsed()
            })
        });
    }

    // Without the ledger (blocks dropped after signing and encoding): the
    // same host work on one thread, with and without the plugin; their
    // difference is the plugin's cost, with less noise than the full path.
    {
        let s = setup();
        let cfg = Arc::new(ChannelConfig::from_config_block(&s.template.genesis_block()).unwrap());
        for (name, limits) in
            [("wasm_solo_no_ledger", Limits::default()), ("wasm_solo_no_ledger_unlimited", Limits::unlimited())]
        {
            let rt = Runtime::new(limits).unwrap();
            let solo = rt.load("solo", embedded::get("solo").unwrap()).unwrap();
            let support = Support::new(
                "bench",
                cfg.clone(),
                s.signer.clone(),
                Box::new(NullSink),
                Arc::new(SystemClock),
                position(&s.ledger),
                SupportLimits::default(),
            );
            let mut core = ChainCore::start(&solo, support, &[], Arc::new(ChainStatus::default())).unwrap();
            g.bench_function(name, |b| {
                b.iter(|| {
                    for group in envs.chunks(GROUP) {
                        for r in core.enqueue_many(group.to_vec()) {
                            r.unwrap();
                        }
                    }
                })
            });
        }
        let mut cutter = BlockCutter::default();
        let mut pos = position(&s.ledger);
        let mut sink = NullSink;
        g.bench_function("native_no_ledger", |b| {
            b.iter(|| {
                native_order(&envs, &mut cutter, &cfg, &mut pos, &s.signer, &mut sink);
            })
        });
    }
    g.finish();
}

/// What solo does, natively: cutter → block → sign → sink.
fn native_order(
    envs: &[Envelope],
    cutter: &mut BlockCutter<Envelope>,
    cfg: &ChannelConfig,
    pos: &mut ChainPosition,
    signer: &Signer,
    sink: &mut dyn BlockSink,
) {
    for e in envs {
        for batch in cutter.ordered(e.clone(), &cfg.batch_size).batches {
            let data = batch.into_iter().map(|e| e.bytes).collect();
            let mut blk = block::new_block(pos.height, &pos.last_hash, data);
            let hash = block::header_hash(blk.header.as_ref().unwrap());
            block::sign_block(&mut blk, 0, &[], signer).unwrap();
            sink.write(pos.height, blk.encode_to_vec().into(), None).unwrap();
            pos.height += 1;
            pos.last_hash = hash;
        }
    }
}

struct NullSink;
impl BlockSink for NullSink {
    fn write(
        &mut self,
        _number: u64,
        block: Bytes,
        _on_durable: Option<consenter_host::support::OnDurable>,
    ) -> Result<(), String> {
        std::hint::black_box(block);
        Ok(())
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
