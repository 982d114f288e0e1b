//! Plugin start-up cost: load the solo plugin (compile, or deserialize an
//! authenticated entry of the compiled-artifact cache), pre-link it, run
//! its canary, and start a chain on it (instantiate + `handle-chain` +
//! `start`). `fresh_compile` has no cache; `cache_miss_and_write` compiles
//! and writes the entry (first start of a node); `cached` loads the entry
//! (every later start). Run: `cargo bench -p consenter-host --bench plugin_load`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

use consenter_host::cache::{LoadSource, PluginCache};
use consenter_host::canary;
use consenter_host::channel::ChannelTemplate;
use consenter_host::node::embedded;
use consenter_host::runtime::{Limits, Runtime};
use consenter_host::signer::{self, Signer};
use consenter_host::testhost::TestHost;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let id = signer::ensure_dev_identity(&dir.path().join("id")).unwrap();
    let signer = Arc::new(Signer::from_msp_dir(&id.orderer_msp, &id.mspid).unwrap());
    let template = ChannelTemplate::solo("bench");
    let solo = embedded::get("solo").unwrap();

    let load_and_start = |rt: &Runtime, want: LoadSource| {
        let (plugin, source) = rt.load_with_source("solo", solo).unwrap();
        assert_eq!(source, want);
        canary::run(&plugin, signer.clone()).unwrap();
        let mut host = TestHost::start(&plugin, &template, signer.clone()).unwrap();
        host.halt();
    };

    let mut g = c.benchmark_group("plugin_load");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));

    let plain = Runtime::new(Limits::default()).unwrap();
    g.bench_function("fresh_compile", |b| b.iter(|| load_and_start(&plain, LoadSource::Compiled)));

    let data = dir.path().join("data");
    let cached =
        Runtime::new_with_cache(Limits::default(), Some(std::sync::Arc::new(PluginCache::open(&data).unwrap())))
            .unwrap();
    let entry = cached.cache_entry(solo).unwrap();
    g.bench_function("cache_miss_and_write", |b| {
        b.iter_batched(
            || {
                let _ = std::fs::remove_file(&entry);
            },
            |()| load_and_start(&cached, LoadSource::Compiled),
            BatchSize::PerIteration,
        )
    });

    // The miss benchmark left the entry written; make sure it is there.
    cached.load_with_source("solo", solo).unwrap();
    assert!(entry.exists());
    g.bench_function("cached", |b| b.iter(|| load_and_start(&cached, LoadSource::Cached)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
