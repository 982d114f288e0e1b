//! The store's behaviour, on real redb files (fsynced by every write) and,
//! for the `KvStore` contract, on the in-memory store too: every op, range
//! bounds and budgets, prefix deletes, quotas, reopen, namespaces, and
//! damaged files.

use std::path::Path;

use consenter_storage::{ChannelStorage, KvStore, MemStore, Namespace, Op, StorageError, StorageOptions};

fn put(key: &[u8], value: &[u8]) -> Op {
    Op::Put { key: key.to_vec(), value: value.to_vec() }
}

fn del(key: &[u8]) -> Op {
    Op::Delete { key: key.to_vec() }
}

fn del_prefix(prefix: &[u8]) -> Op {
    Op::DeletePrefix { prefix: prefix.to_vec() }
}

fn all(store: &dyn KvStore) -> Vec<(Vec<u8>, Vec<u8>)> {
    store.range(b"", None, usize::MAX, usize::MAX).unwrap()
}

fn keys(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    entries.iter().map(|(k, _)| k.clone()).collect()
}

/// The bytes of keys+values of what the store holds, counted from a scan.
fn counted(store: &dyn KvStore) -> u64 {
    all(store).iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
}

/// Runs `check` on an in-memory store and on a namespace of a fresh redb
/// file, both with `quota` bytes.
fn on_both(quota: u64, check: impl Fn(&mut dyn KvStore)) {
    eprintln!("on MemStore");
    check(&mut MemStore::new(quota));
    eprintln!("on ChannelStorage");
    let dir = tempfile::tempdir().unwrap();
    let storage = ChannelStorage::open(&dir.path().join("plugin-storage.redb")).unwrap();
    check(&mut storage.namespace("raft", quota).unwrap());
}

#[test]
fn put_get_overwrite_delete() {
    on_both(1 << 20, |s| {
        assert_eq!(s.get(b"a").unwrap(), None);
        s.write(&[put(b"a", b"1234")]).unwrap();
        assert_eq!(s.get(b"a").unwrap(), Some(b"1234".to_vec()));
        assert_eq!(s.used_bytes(), 5);
        s.write(&[put(b"a", b"12")]).unwrap();
        assert_eq!(s.get(b"a").unwrap(), Some(b"12".to_vec()));
        assert_eq!(s.used_bytes(), 3);
        s.write(&[put(b"", b"empty key")]).unwrap();
        assert_eq!(s.get(b"").unwrap(), Some(b"empty key".to_vec()));
        s.write(&[put(b"e", b"")]).unwrap();
        assert_eq!(s.get(b"e").unwrap(), Some(Vec::new()));
        assert_eq!(s.used_bytes(), 3 + 9 + 1);
        s.write(&[del(b"a"), del(b"missing"), del(b"")]).unwrap();
        assert_eq!(s.get(b"a").unwrap(), None);
        assert_eq!(s.get(b"").unwrap(), None);
        assert_eq!(s.used_bytes(), 1);
        s.write(&[]).unwrap();
        assert_eq!(s.used_bytes(), 1);
        assert_eq!(s.quota_bytes(), 1 << 20);
    });
}

#[test]
fn ops_of_a_batch_apply_in_order() {
    on_both(1 << 20, |s| {
        s.write(&[put(b"a", b"1"), del(b"a"), put(b"a", b"2")]).unwrap();
        assert_eq!(s.get(b"a").unwrap(), Some(b"2".to_vec()));
        s.write(&[put(b"p/1", b"x"), put(b"p/2", b"y"), del_prefix(b"p/")]).unwrap();
        assert_eq!(s.get(b"p/1").unwrap(), None);
        s.write(&[del_prefix(b"p/"), put(b"p/3", b"z")]).unwrap();
        assert_eq!(keys(&all(s)), vec![b"a".to_vec(), b"p/3".to_vec()]);
        assert_eq!(s.used_bytes(), 2 + 4);
        assert_eq!(s.used_bytes(), counted(s));
    });
}

#[test]
fn range_bounds_limit_and_max_bytes() {
    on_both(1 << 20, |s| {
        assert!(all(s).is_empty(), "an empty store has no entries");
        let ops: Vec<Op> = (0..20u8).map(|i| put(format!("k{i:02}").as_bytes(), &[i; 7])).collect();
        s.write(&ops).unwrap();
        let key = |i: u8| format!("k{i:02}").into_bytes();
        // start inclusive, end exclusive.
        let got = s.range(&key(3), Some(&key(7)), usize::MAX, usize::MAX).unwrap();
        assert_eq!(keys(&got), (3..7).map(key).collect::<Vec<_>>());
        assert_eq!(got[0].1, vec![3; 7]);
        // No upper bound.
        let got = s.range(&key(17), None, usize::MAX, usize::MAX).unwrap();
        assert_eq!(keys(&got), (17..20).map(key).collect::<Vec<_>>());
        // A start between keys.
        let got = s.range(b"k035", Some(b"k06"), 100, 1000).unwrap();
        assert_eq!(keys(&got), vec![key(4), key(5)]);
        // Bounds that select nothing, including an end before the start.
        assert!(s.range(&key(5), Some(&key(5)), 10, 1000).unwrap().is_empty());
        assert!(s.range(&key(9), Some(&key(2)), 10, 1000).unwrap().is_empty());
        assert!(s.range(b"z", None, 10, 1000).unwrap().is_empty());
        assert!(s.range(b"", None, 0, 1000).unwrap().is_empty());
        // limit.
        let got = s.range(b"", None, 4, usize::MAX).unwrap();
        assert_eq!(keys(&got), (0..4).map(key).collect::<Vec<_>>());
        // max_bytes: each entry is 3 + 7 = 10 bytes.
        assert_eq!(s.range(b"", None, 100, 30).unwrap().len(), 3);
        assert_eq!(s.range(b"", None, 100, 39).unwrap().len(), 3);
        assert_eq!(s.range(b"", None, 100, 40).unwrap().len(), 4);
        // At least one entry, even when it alone exceeds max_bytes.
        let got = s.range(&key(12), None, 100, 0).unwrap();
        assert_eq!(keys(&got), vec![key(12)]);
        // Whichever bound comes first wins.
        assert_eq!(s.range(b"", None, 2, 40).unwrap().len(), 2);
        // Paging with the last key seen visits everything once, in order.
        let mut seen = Vec::new();
        let mut start = Vec::new();
        loop {
            let page = s.range(&start, None, 3, 25).unwrap();
            let Some((last, _)) = page.last() else { break };
            start = last.clone();
            start.push(0);
            seen.extend(keys(&page));
        }
        assert_eq!(seen, (0..20).map(key).collect::<Vec<_>>());
    });
}

#[test]
fn delete_prefix_removes_exactly_the_prefixed_keys() {
    on_both(1 << 20, |s| {
        let ks: [&[u8]; 9] = [b"a", b"ab", b"ab\x00", b"abc", b"ac", b"b", &[1, 0xff], &[1, 0xff, 0], &[2]];
        s.write(&ks.iter().map(|k| put(k, b"v")).collect::<Vec<_>>()).unwrap();
        s.write(&[del_prefix(b"ab")]).unwrap();
        assert_eq!(
            keys(&all(s)),
            vec![vec![1, 0xff], vec![1, 0xff, 0], vec![2], b"a".to_vec(), b"ac".to_vec(), b"b".to_vec(),]
        );
        // A prefix ending in 0xff: its end bound carries into the byte before.
        s.write(&[del_prefix(&[1, 0xff])]).unwrap();
        assert_eq!(keys(&all(s)), vec![vec![2], b"a".to_vec(), b"ac".to_vec(), b"b".to_vec()]);
        // A prefix nothing has.
        s.write(&[del_prefix(b"zz")]).unwrap();
        assert_eq!(all(s).len(), 4);
        assert_eq!(s.used_bytes(), counted(s));
        // The empty prefix: everything.
        s.write(&[del_prefix(b"")]).unwrap();
        assert!(all(s).is_empty());
        assert_eq!(s.used_bytes(), 0);
    });
}

#[test]
fn a_batch_past_the_quota_writes_nothing() {
    on_both(100, |s| {
        s.write(&[put(b"k1", &[1; 48]), put(b"k2", &[2; 38])]).unwrap();
        assert_eq!(s.used_bytes(), 90);
        let before = all(s);
        // A delete, then puts past the quota (90 - 40 + 32 + 30 = 112):
        // all refused.
        let err = s.write(&[del(b"k2"), put(b"k2", &[9; 30]), put(b"k3", &[3; 28])]).unwrap_err();
        match err {
            StorageError::QuotaExceeded { used, needed, quota } => assert_eq!((used, needed, quota), (90, 22, 100)),
            other => panic!("expected QuotaExceeded, got {other:?}"),
        }
        assert_eq!(all(s), before, "a refused batch changes nothing");
        assert_eq!(s.used_bytes(), 90);
        // A batch that frees as much as it adds fits.
        s.write(&[del(b"k1"), put(b"k3", &[3; 58])]).unwrap();
        assert_eq!(s.used_bytes(), 100);
        // Exactly at the quota is allowed; one byte more is not.
        assert!(matches!(
            s.write(&[put(b"k", b"")]),
            Err(StorageError::QuotaExceeded { used: 100, needed: 1, quota: 100 })
        ));
        assert_eq!(s.get(b"k").unwrap(), None);
        assert_eq!(s.used_bytes(), counted(s));
    });
}

/// A small deterministic generator for the differential test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn redb_and_memory_stores_agree_on_random_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugin-storage.redb");
    let quota = 1_200;
    let mut mem = MemStore::new(quota);
    let mut storage = Some(ChannelStorage::open(&path).unwrap());
    let mut disk = Some(storage.as_ref().unwrap().namespace("ns", quota).unwrap());
    let mut rng = Rng(0x5eed);
    let mut refused = 0;
    for round in 0..300 {
        let ops: Vec<Op> = (0..rng.below(6))
            .map(|_| {
                let key = format!("{}{}", ["a", "ab", "b"][rng.below(3) as usize], rng.below(8));
                match rng.below(10) {
                    0..=5 => put(key.as_bytes(), &vec![b'v'; rng.below(200) as usize]),
                    6..=8 => del(key.as_bytes()),
                    _ => del_prefix(&key.as_bytes()[..rng.below(3) as usize]),
                }
            })
            .collect();
        let d = disk.as_mut().unwrap();
        let m = mem.write(&ops);
        let r = d.write(&ops);
        assert_eq!(format!("{m:?}"), format!("{r:?}"), "round {round}: {ops:?}");
        refused += usize::from(r.is_err());
        assert_eq!(all(d), all(&mem), "round {round}");
        assert_eq!(d.used_bytes(), mem.used_bytes());
        assert_eq!(d.used_bytes(), counted(d));
        if round % 50 == 49 {
            // Reopen: the count comes back from the file.
            drop(disk.take());
            drop(storage.take());
            storage = Some(ChannelStorage::open(&path).unwrap());
            disk = Some(storage.as_ref().unwrap().namespace("ns", quota).unwrap());
            assert_eq!(disk.as_ref().unwrap().used_bytes(), mem.used_bytes());
        }
    }
    eprintln!("{refused} batches refused");
    assert!(refused > 10, "the sequence reaches the quota");
    drop(disk);
    drop(storage);
}

#[test]
fn reopen_keeps_entries_and_used_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugin-storage.redb");
    {
        let storage = ChannelStorage::open(&path).unwrap();
        let mut raft = storage.namespace("etcdraft", 1 << 20).unwrap();
        raft.write(&[put(b"hardstate", &[7; 64]), put(b"log/0001", &[1; 1024]), put(b"log/0002", &[2; 1024])]).unwrap();
        raft.write(&[del(b"log/0001")]).unwrap();
        let mut other = storage.namespace("bft", 1 << 20).unwrap();
        other.write(&[put(b"view", b"3")]).unwrap();
    }
    let storage = ChannelStorage::open(&path).unwrap();
    assert_eq!(
        storage.namespaces().unwrap(),
        vec![("bft".to_string(), 5), ("etcdraft".to_string(), 9 + 64 + 8 + 1024)]
    );
    let raft = storage.namespace("etcdraft", 1 << 20).unwrap();
    assert_eq!(raft.used_bytes(), 9 + 64 + 8 + 1024);
    assert_eq!(raft.get(b"hardstate").unwrap(), Some(vec![7; 64]));
    assert_eq!(raft.get(b"log/0001").unwrap(), None);
    assert_eq!(keys(&all(&raft)), vec![b"hardstate".to_vec(), b"log/0002".to_vec()]);
}

#[test]
fn namespaces_are_separate_each_with_its_own_quota() {
    let dir = tempfile::tempdir().unwrap();
    let storage = ChannelStorage::open(&dir.path().join("s.redb")).unwrap();
    let mut a = storage.namespace("a", 10).unwrap();
    let mut b = storage.namespace("b", 10).unwrap();
    a.write(&[put(b"k", &[1; 9])]).unwrap();
    assert!(matches!(a.write(&[put(b"j", b"")]), Err(StorageError::QuotaExceeded { .. })));
    // b is not charged for a's bytes, and a's keys are not b's.
    assert_eq!(b.get(b"k").unwrap(), None);
    b.write(&[put(b"k", &[2; 9])]).unwrap();
    b.write(&[del_prefix(b"")]).unwrap();
    assert_eq!(a.get(b"k").unwrap(), Some(vec![1; 9]));
    assert_eq!((a.used_bytes(), b.used_bytes()), (10, 0));
}

#[test]
fn a_lowered_quota_lets_the_namespace_shrink_but_not_grow() {
    let dir = tempfile::tempdir().unwrap();
    let storage = ChannelStorage::open(&dir.path().join("s.redb")).unwrap();
    let mut ns = storage.namespace("raft", 100).unwrap();
    ns.write(&[put(b"a", &[0; 49]), put(b"b", &[0; 49])]).unwrap();
    drop(ns);
    let mut ns = storage.namespace("raft", 50).unwrap();
    assert_eq!((ns.used_bytes(), ns.quota_bytes()), (100, 50));
    assert!(matches!(
        ns.write(&[put(b"c", b"")]),
        Err(StorageError::QuotaExceeded { used: 100, needed: 1, quota: 50 })
    ));
    // Still over the quota after it, but smaller: accepted.
    ns.write(&[del(b"a"), put(b"c", b"")]).unwrap();
    assert_eq!(ns.used_bytes(), 51);

    let mut mem = MemStore::new(100);
    mem.write(&[put(b"a", &[0; 49]), put(b"b", &[0; 49])]).unwrap();
    mem.set_quota_bytes(50);
    assert!(mem.write(&[put(b"c", b"")]).is_err());
    mem.write(&[del(b"a"), put(b"c", b"")]).unwrap();
    assert_eq!(mem.used_bytes(), 51);
}

#[test]
fn drop_namespace_removes_it_durably() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let storage = ChannelStorage::open(&path).unwrap();
        let mut old = storage.namespace("solo", 1000).unwrap();
        old.write(&[put(b"x", b"1")]).unwrap();
        let mut keep = storage.namespace("etcdraft", 1000).unwrap();
        keep.write(&[put(b"y", b"2")]).unwrap();
        assert!(matches!(
            storage.drop_namespace("solo"),
            Err(StorageError::NamespaceInUse { name }) if name == "solo"
        ));
        drop(old);
        storage.drop_namespace("solo").unwrap();
        storage.drop_namespace("solo").unwrap();
        storage.drop_namespace("never-there").unwrap();
    }
    let storage = ChannelStorage::open(&path).unwrap();
    assert_eq!(storage.namespaces().unwrap(), vec![("etcdraft".to_string(), 2)]);
    let solo = storage.namespace("solo", 1000).unwrap();
    assert_eq!(solo.get(b"x").unwrap(), None);
    assert_eq!(solo.used_bytes(), 0);
    let raft = storage.namespace("etcdraft", 1000).unwrap();
    assert_eq!(raft.get(b"y").unwrap(), Some(b"2".to_vec()));
}

#[test]
fn one_handle_per_namespace_and_one_open_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let storage = ChannelStorage::open(&path).unwrap();
    let first = storage.namespace("raft", 10).unwrap();
    assert!(matches!(storage.namespace("raft", 10), Err(StorageError::NamespaceInUse { .. })));
    drop(first);
    let handle: Box<dyn KvStore> = Box::new(storage.namespace("raft", 10).unwrap());
    match ChannelStorage::open(&path) {
        Err(StorageError::AlreadyOpen { path: p }) => assert_eq!(p, path),
        other => panic!("expected AlreadyOpen, got {other:?}"),
    }
    // A namespace keeps the file open after its ChannelStorage is dropped.
    drop(storage);
    assert!(matches!(ChannelStorage::open(&path), Err(StorageError::AlreadyOpen { .. })));
    drop(handle);
    ChannelStorage::open(&path).unwrap();
}

#[test]
fn namespace_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let storage = ChannelStorage::open(&dir.path().join("s.redb")).unwrap();
    for bad in [String::new(), "x".repeat(256)] {
        assert!(matches!(storage.namespace(&bad, 10), Err(StorageError::InvalidNamespace { .. })));
        assert!(matches!(storage.drop_namespace(&bad), Err(StorageError::InvalidNamespace { .. })));
    }
    storage.namespace(&"x".repeat(255), 10).unwrap();
    storage.namespace("consenter-storage/used", 10).unwrap();
}

/// Opening `path` fails with Corrupt (or, unless `want_corrupt`, Io)
/// naming it, in the error and its message, and does not panic.
fn assert_refused(path: &Path, options: &StorageOptions, want_corrupt: bool) {
    let err = match ChannelStorage::open_with(path, options) {
        Ok(_) => panic!("{}: opened", path.display()),
        Err(err) => err,
    };
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    match err {
        StorageError::Corrupt { path: p, .. } => assert_eq!(p, path),
        StorageError::Io { path: p, .. } if !want_corrupt => assert_eq!(p, path),
        other => panic!("{}: expected Corrupt, got {other:?}", path.display()),
    }
}

#[test]
fn garbage_files_are_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let options = StorageOptions::default();
    // Random-looking bytes.
    let garbage = dir.path().join("garbage.redb");
    let mut rng = Rng(42);
    let bytes: Vec<u8> = (0..65536).map(|_| rng.next() as u8).collect();
    std::fs::write(&garbage, &bytes).unwrap();
    assert_refused(&garbage, &options, true);
    // Text.
    let text = dir.path().join("text.redb");
    std::fs::write(&text, b"this is not a database\n".repeat(100)).unwrap();
    assert_refused(&text, &options, true);
    // A redb file cut short.
    let cut = dir.path().join("cut.redb");
    {
        let storage = ChannelStorage::open(&cut).unwrap();
        let mut ns = storage.namespace("raft", 1 << 20).unwrap();
        ns.write(&[put(b"k", &[5; 100_000])]).unwrap();
    }
    let len = std::fs::metadata(&cut).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
    file.set_len(len / 3).unwrap();
    file.sync_all().unwrap();
    drop(file);
    assert_refused(&cut, &options, false);
    // A path that cannot be a file.
    assert_refused(dir.path(), &options, false);
    let missing = dir.path().join("no-such-folder").join("s.redb");
    assert_refused(&missing, &options, false);
}

#[test]
fn a_damaged_page_is_found_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let marker = [0xa5u8; 4096];
    {
        let storage = ChannelStorage::open(&path).unwrap();
        let mut ns = storage.namespace("raft", 1 << 20).unwrap();
        ns.write(&[put(b"entry", &marker)]).unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let mut flipped = 0;
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(64).position(|w| w == &marker[..64]) {
        bytes[i + at + 32] ^= 0xff;
        flipped += 1;
        i += at + 4096;
        if i >= bytes.len() {
            break;
        }
    }
    assert!(flipped > 0, "the value is in the file");
    std::fs::write(&path, &bytes).unwrap();
    assert_refused(&path, &StorageOptions::default(), true);
}

#[test]
fn the_box_and_the_handle_are_send() {
    fn send<T: Send>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let storage = ChannelStorage::open(&dir.path().join("s.redb")).unwrap();
    let ns: Namespace = storage.namespace("raft", 10).unwrap();
    send(&ns);
    let boxed: Box<dyn KvStore> = Box::new(ns);
    std::thread::spawn(move || boxed.used_bytes()).join().unwrap();
}
