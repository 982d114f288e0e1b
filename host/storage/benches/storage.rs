//! The plugin store on a real file: a raft-like write batch (fsynced), a
//! get, a range of 100 entries, a prefix delete of 1,000 entries, and the
//! cost of opening a file with and without the integrity check; with an
//! append + fdatasync of the same bytes to a plain file as the disk's
//! floor.
//!
//! `cargo bench -p consenter-storage --bench storage`

use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use consenter_storage::{ChannelStorage, KvStore, Op, StorageOptions};
use criterion::{Criterion, criterion_group, criterion_main};

const QUOTA: u64 = u64::MAX;

fn log_key(index: u64) -> Vec<u8> {
    let mut key = b"log/".to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// One hard-state put (64 B) and two entry puts (1 KiB and 100 KiB).
fn raft_batch(index: u64) -> Vec<Op> {
    vec![
        Op::Put { key: b"hardstate".to_vec(), value: vec![7; 64] },
        Op::Put { key: log_key(index), value: vec![1; 1024] },
        Op::Put { key: log_key(index + 1), value: vec![2; 100 * 1024] },
    ]
}

/// A namespace holding `count` 1 KiB entries under `log/`.
fn filled(storage: &ChannelStorage, name: &str, count: u64) -> consenter_storage::Namespace {
    let mut ns = storage.namespace(name, QUOTA).unwrap();
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let ops: Vec<Op> = chunk.iter().map(|&i| Op::Put { key: log_key(i), value: vec![i as u8; 1024] }).collect();
        ns.write(&ops).unwrap();
    }
    ns
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let storage = ChannelStorage::open(&dir.path().join("plugin-storage.redb")).unwrap();

    let mut group = c.benchmark_group("storage");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(8));

    let mut raft = storage.namespace("raft", QUOTA).unwrap();
    let mut index = 0u64;
    group.bench_function("write_raft_batch_64B_1KiB_100KiB", |b| {
        b.iter(|| {
            index += 2;
            raft.write(&raft_batch(index)).unwrap();
        })
    });
    drop(raft);

    // The disk's floor: the same bytes appended to a plain file, fdatasync.
    let mut plain = std::fs::File::create(dir.path().join("plain")).unwrap();
    let bytes = vec![3u8; 64 + 1024 + 100 * 1024];
    group.bench_function("baseline_append_fdatasync_101KiB", |b| {
        b.iter(|| {
            plain.write_all(&bytes).unwrap();
            plain.sync_data().unwrap();
        })
    });

    let read = filled(&storage, "read", 10_000);
    let mut i = 0u64;
    group.bench_function("get_1KiB_of_10k", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            black_box(read.get(&log_key(i)).unwrap().unwrap());
        })
    });
    group.bench_function("range_100_of_10k_1KiB", |b| {
        b.iter(|| {
            i = (i + 7919) % 9_900;
            let got = read.range(&log_key(i), None, 100, usize::MAX).unwrap();
            assert_eq!(got.len(), 100);
            black_box(got);
        })
    });

    let mut trunc = filled(&storage, "trunc", 0);
    let mut base = 0u64;
    // Each iteration first writes 1,000 entries under a fresh prefix
    // (not timed), then times the batch deleting them (with its fsync).
    group.bench_function("delete_prefix_1000_entries_1KiB", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                base += 1;
                let ops: Vec<Op> = (0..1000u64)
                    .map(|i| Op::Put {
                        key: [&base.to_be_bytes()[..], &i.to_be_bytes()].concat(),
                        value: vec![i as u8; 1024],
                    })
                    .collect();
                trunc.write(&ops).unwrap();
                let delete = [Op::DeletePrefix { prefix: base.to_be_bytes().to_vec() }];
                let start = Instant::now();
                trunc.write(&delete).unwrap();
                timed += start.elapsed();
                assert_eq!(trunc.used_bytes(), 0);
            }
            timed
        })
    });
    drop(trunc);
    drop(read);
    group.finish();

    // Opening a 100 MiB file, with the integrity check (the default) and
    // without.
    let big_path = dir.path().join("big.redb");
    {
        let big = ChannelStorage::open(&big_path).unwrap();
        filled(&big, "raft", 100 * 1024);
    }
    let mut group = c.benchmark_group("storage_open");
    group.sample_size(10);
    for (name, check) in [("open_100MiB_checked", true), ("open_100MiB_unchecked", false)] {
        let options = StorageOptions { check_integrity_on_open: check, ..StorageOptions::default() };
        group.bench_function(name, |b| b.iter(|| black_box(ChannelStorage::open_with(&big_path, &options).unwrap())));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
