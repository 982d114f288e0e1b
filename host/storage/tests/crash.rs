//! Crash safety under `kill -9`: a child process (this test binary,
//! re-executed with an environment variable) writes numbered batches to a
//! real redb file and prints each batch number once `write` has returned;
//! the parent SIGKILLs it after some acknowledgements, reopens the file,
//! and checks that every acknowledged batch is there and that every batch
//! is all-or-nothing. Several rounds on the same file, each resuming where
//! the recovered file left off. (A SIGKILL loses what the process had not
//! handed to the kernel; a power cut, which also loses the page cache,
//! rests on redb's checksummed commit after the fsync and is not modelled
//! here.)
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use consenter_storage::{ChannelStorage, KvStore, Op};

/// What the child prints before each acknowledged batch number.
const ACK: &str = "consenter-storage-ack ";
/// Set in the child: the file it writes to.
const CHILD_ENV: &str = "CONSENTER_STORAGE_CRASH_CHILD";
const NAMESPACE: &str = "etcdraft";
const QUOTA: u64 = 1 << 40;
/// The child stops by itself after this many batches.
const CHILD_MAX_BATCHES: u64 = 100_000;
/// Entries each batch puts under `e/<n>/`, and their size.
const ENTRIES: u64 = 4;
const ENTRY_BYTES: usize = 16 * 1024;

fn hard_state_key() -> Vec<u8> {
    b"hs".to_vec()
}
fn batch_key(n: u64) -> Vec<u8> {
    format!("b/{n:010}").into_bytes()
}
fn entry_key(n: u64, i: u64) -> Vec<u8> {
    format!("e/{n:010}/{i}").into_bytes()
}
fn entry_value(n: u64, i: u64) -> Vec<u8> {
    let mut v = vec![(n as u8) ^ (i as u8); ENTRY_BYTES];
    v[..8].copy_from_slice(&n.to_le_bytes());
    v
}
fn last_key(n: u64) -> Vec<u8> {
    format!("x/{n:010}").into_bytes()
}
fn tail_prefix(n: u64) -> Vec<u8> {
    format!("t/{n:010}/").into_bytes()
}

/// Batch `n`: the hard state set to `n`, a put of `n`, `ENTRIES` entries,
/// the `x/` key moved from `n-1` to `n`, and the `t/` entries of `n-1`
/// replaced by those of `n` (a prefix delete).
fn batch(n: u64) -> Vec<Op> {
    let mut ops = vec![
        Op::Put { key: hard_state_key(), value: n.to_le_bytes().to_vec() },
        Op::Put { key: batch_key(n), value: n.to_le_bytes().to_vec() },
    ];
    for i in 0..ENTRIES {
        ops.push(Op::Put { key: entry_key(n, i), value: entry_value(n, i) });
    }
    ops.push(Op::Delete { key: last_key(n - 1) });
    ops.push(Op::Put { key: last_key(n), value: Vec::new() });
    ops.push(Op::DeletePrefix { prefix: tail_prefix(n - 1) });
    for i in 0..3u8 {
        let mut key = tail_prefix(n);
        key.push(b'0' + i);
        ops.push(Op::Put { key, value: vec![i; 100] });
    }
    ops
}

fn hard_state(store: &dyn KvStore) -> u64 {
    match store.get(&hard_state_key()).unwrap() {
        None => 0,
        Some(v) => u64::from_le_bytes(v.try_into().expect("an 8-byte hard state")),
    }
}

/// The child: writes batches from where the file left off, printing
/// `consenter-storage-ack <n>` after each write returns, until killed.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return; // Only does something when spawned by the test below.
    };
    let storage = ChannelStorage::open(Path::new(&path)).expect("child: open");
    let mut ns = storage.namespace(NAMESPACE, QUOTA).expect("child: namespace");
    let first = hard_state(&ns) + 1;
    for n in first..first + CHILD_MAX_BATCHES {
        ns.write(&batch(n)).expect("child: write");
        // A closed pipe (the parent gone) panics here and ends the child.
        println!("{ACK}{n}");
    }
}

/// Checks the recovered file: batches 1..=m all whole, nothing after m,
/// and returns m.
fn check_recovered(path: &Path) -> u64 {
    let storage = ChannelStorage::open(path).expect("reopen after kill -9");
    let ns = storage.namespace(NAMESPACE, QUOTA).unwrap();
    let m = hard_state(&ns);
    for n in 1..=m {
        assert_eq!(ns.get(&batch_key(n)).unwrap(), Some(n.to_le_bytes().to_vec()), "batch {n} of {m}");
        for i in 0..ENTRIES {
            assert_eq!(ns.get(&entry_key(n, i)).unwrap(), Some(entry_value(n, i)), "entry {i} of batch {n} of {m}");
        }
    }
    // Nothing of a later batch.
    assert!(ns.range(&batch_key(m + 1), Some(b"b0"), 1, usize::MAX).unwrap().is_empty());
    assert!(ns.range(&entry_key(m + 1, 0), Some(b"e0"), 1, usize::MAX).unwrap().is_empty());
    // The moved key and the replaced prefix are exactly batch m's.
    let xs = ns.range(b"x/", Some(b"x0"), usize::MAX, usize::MAX).unwrap();
    let ts = ns.range(b"t/", Some(b"t0"), usize::MAX, usize::MAX).unwrap();
    if m > 0 {
        assert_eq!(xs, vec![(last_key(m), Vec::new())]);
        assert_eq!(ts.len(), 3);
        assert!(ts.iter().all(|(k, _)| k.starts_with(&tail_prefix(m))));
    } else {
        assert!(xs.is_empty() && ts.is_empty());
    }
    // The used-bytes count is exact after recovery.
    let all = ns.range(b"", None, usize::MAX, usize::MAX).unwrap();
    let counted: u64 = all.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    assert_eq!(ns.used_bytes(), counted);
    m
}

#[test]
fn acknowledged_batches_survive_kill_9_and_none_tears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugin-storage.redb");
    let exe = std::env::current_exe().unwrap();
    let mut acked: u64 = 0;
    // Acknowledgements to await before each kill.
    for (round, wait_for) in [1u64, 7, 3, 25, 12, 2].into_iter().enumerate() {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        let mut killed = false;
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break; // EOF: the child is gone (and, once killed, drained).
            }
            // Only whole lines count: a kill may cut the last one short.
            // The first one follows libtest's "test crash_child ... ".
            let Some(n) =
                line.strip_suffix('\n').and_then(|l| l.rsplit_once(ACK)).map(|(_, n)| n.parse::<u64>().unwrap())
            else {
                continue;
            };
            assert_eq!(n, acked + 1, "round {round}: acknowledgements in order");
            acked = n;
            seen += 1;
            if seen == wait_for && !killed {
                child.kill().unwrap(); // SIGKILL
                killed = true;
            }
        }
        let status = child.wait().unwrap();
        assert!(killed, "round {round}: the child ended by itself: {status}");
        assert_eq!(status.signal(), Some(9), "round {round}: {status}");
        let m = check_recovered(&path);
        // Every acknowledged batch is there; at most the one in flight
        // (written, not yet printed) is there beyond them.
        assert!(m == acked || m == acked + 1, "round {round}: {acked} acknowledged, {m} recovered");
        eprintln!("round {round}: {acked} acknowledged, {m} recovered");
        acked = m;
    }
}
