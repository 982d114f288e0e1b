//! An in-memory [`KvStore`] for deterministic tests (the simulator), with
//! fault injection: a crash, optionally tearing the last batch, and I/O
//! errors on demand.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;

use crate::{Entry, KvStore, Op, StorageError, collect_bounded, empty_range, entry_size, prefix_end};

/// How [`MemStore::crash`] treats the last batch written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tear {
    /// Every batch whose `write` returned survives whole: what the node's
    /// redb store gives, whose batches are atomic, so it never tears.
    None,
    /// The last batch keeps only a prefix of its ops, chosen from `seed`
    /// (0 to len-1 ops, the same for the same seed and batch): a store
    /// without atomic batches that crashed during its last write.
    LastBatch {
        /// Chooses how many of the batch's ops survive.
        seed: u64,
    },
}

/// An in-memory [`KvStore`] for deterministic tests (the simulator), with
/// fault injection: [`crash`](MemStore::crash) returns the durable state a
/// restarted node would see, optionally tearing the last batch (keeping a
/// seeded prefix of its ops) to model a store without atomic batches.
///
/// The node's store ([`ChannelStorage`](crate::ChannelStorage)) commits
/// each batch as one redb transaction, which lands whole or not at all:
/// it never tears, so [`Tear::None`] is what a node sees after a crash, and
/// [`Tear::LastBatch`] is for checking that a plugin would notice (or
/// survive) a weaker store.
#[derive(Debug, Clone)]
pub struct MemStore {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    used: u64,
    quota: u64,
    /// The last batch written and what it replaced, to undo it for a tear.
    last: Option<LastBatch>,
    /// Writes that fail with [`StorageError::Io`] before the next one is
    /// applied again.
    failing_writes: u64,
}

/// The last batch applied, and how to undo it.
#[derive(Debug, Clone)]
struct LastBatch {
    ops: Vec<Op>,
    /// (key, value before) for every key the batch changed, in the order
    /// it changed them.
    undo: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl MemStore {
    /// An empty store with a quota of `quota_bytes` of keys+values.
    pub fn new(quota_bytes: u64) -> MemStore {
        MemStore { entries: BTreeMap::new(), used: 0, quota: quota_bytes, last: None, failing_writes: 0 }
    }

    /// The store a restarted node would see after a crash now: everything
    /// written, except that with [`Tear::LastBatch`] the last batch keeps
    /// only a seeded prefix of its ops. The new store has the same quota, no
    /// injected failures, and no last batch of its own to tear.
    pub fn crash(&self, tear: Tear) -> MemStore {
        let mut entries = self.entries.clone();
        if let (Tear::LastBatch { seed }, Some(last)) = (tear, &self.last) {
            for (key, before) in last.undo.iter().rev() {
                match before {
                    Some(value) => entries.insert(key.clone(), value.clone()),
                    None => entries.remove(key),
                };
            }
            let keep = (splitmix64(seed) % last.ops.len() as u64) as usize;
            for op in &last.ops[..keep] {
                apply(&mut entries, op, &mut |_, _| {});
            }
        }
        let used = entries.iter().map(|(k, v)| entry_size(k, v)).sum();
        MemStore { entries, used, quota: self.quota, last: None, failing_writes: 0 }
    }

    /// Makes the next `count` writes fail with [`StorageError::Io`],
    /// writing nothing (as a full or failing disk would).
    pub fn fail_next_writes(&mut self, count: u64) {
        self.failing_writes = count;
    }

    /// Sets the quota, as a node restarted with another configuration would.
    pub fn set_quota_bytes(&mut self, quota_bytes: u64) {
        self.quota = quota_bytes;
    }

    /// Every entry, in key order (for assertions).
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }
}

impl KvStore for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.entries.get(key).cloned())
    }

    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        // Checked first: BTreeMap::range panics on an end before the start.
        if empty_range(start, end, limit) {
            return Ok(Vec::new());
        }
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) =
            (Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded));
        let entries = self.entries.range::<[u8], _>(bounds).map(|(k, v)| Ok::<_, StorageError>((k.clone(), v.clone())));
        collect_bounded(entries, limit, max_bytes)
    }

    fn write(&mut self, ops: &[Op]) -> Result<(), StorageError> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.failing_writes > 0 {
            self.failing_writes -= 1;
            return Err(StorageError::Io {
                path: PathBuf::from("<memory>"),
                reason: "injected write failure".to_string(),
            });
        }
        let mut undo = Vec::new();
        let mut added: u64 = 0;
        let mut removed: u64 = 0;
        for op in ops {
            apply(&mut self.entries, op, &mut |key, before| {
                if let Some(value) = &before {
                    removed += entry_size(key, value);
                }
                undo.push((key.to_vec(), before));
            });
            if let Op::Put { key, value } = op {
                added += entry_size(key, value);
            }
        }
        // Every size removed was counted in `used` or added by this batch.
        let used = self.used + added - removed;
        if used > self.used && used > self.quota {
            for (key, before) in undo.into_iter().rev() {
                match before {
                    Some(value) => self.entries.insert(key, value),
                    None => self.entries.remove(&key),
                };
            }
            return Err(StorageError::QuotaExceeded { used: self.used, needed: used - self.used, quota: self.quota });
        }
        self.used = used;
        self.last = Some(LastBatch { ops: ops.to_vec(), undo });
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        self.used
    }

    fn quota_bytes(&self) -> u64 {
        self.quota
    }
}

/// Told each key an op changed and the value it had before.
type Changed<'a> = dyn FnMut(&[u8], Option<Vec<u8>>) + 'a;

/// Applies `op` to `entries`, telling `changed` each key it changed and
/// the value the key had before.
fn apply(entries: &mut BTreeMap<Vec<u8>, Vec<u8>>, op: &Op, changed: &mut Changed<'_>) {
    match op {
        Op::Put { key, value } => {
            let before = entries.insert(key.clone(), value.clone());
            changed(key, before);
        }
        Op::Delete { key } => {
            if let Some(before) = entries.remove(key.as_slice()) {
                changed(key, Some(before));
            }
        }
        Op::DeletePrefix { prefix } => {
            let mut rest = entries.split_off(prefix.as_slice());
            if let Some(end) = prefix_end(prefix) {
                let mut after = rest.split_off(end.as_slice());
                entries.append(&mut after);
            }
            for (key, before) in rest {
                changed(&key, Some(before));
            }
        }
    }
}

/// SplitMix64: a seeded, well-mixed number, so nearby seeds tear at
/// unrelated points.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        Op::Put { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec() }
    }

    #[test]
    fn crash_without_tear_keeps_every_batch() {
        let mut s = MemStore::new(1000);
        s.write(&[put("a", "1"), put("b", "2")]).unwrap();
        s.write(&[put("c", "3"), Op::Delete { key: b"a".to_vec() }]).unwrap();
        let after = s.crash(Tear::None);
        let got: Vec<_> = after.entries().collect();
        assert_eq!(got, vec![(&b"b"[..], &b"2"[..]), (&b"c"[..], &b"3"[..])]);
        assert_eq!(after.used_bytes(), 4);
    }

    #[test]
    fn tear_keeps_a_seeded_strict_prefix_of_the_last_batch() {
        let mut s = MemStore::new(1000);
        s.write(&[put("base", "x")]).unwrap();
        let batch: Vec<Op> = (0..8).map(|i| put(&format!("k{i}"), "v")).collect();
        s.write(&batch).unwrap();
        let mut kept_counts = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let torn = s.crash(Tear::LastBatch { seed });
            assert_eq!(torn.get(b"base").unwrap(), Some(b"x".to_vec()));
            let kept = (0..8).take_while(|i| torn.get(format!("k{i}").as_bytes()).unwrap().is_some()).count();
            // A prefix: nothing after the first missing op.
            for i in kept..8 {
                assert_eq!(torn.get(format!("k{i}").as_bytes()).unwrap(), None);
            }
            assert!(kept < 8, "a tear keeps fewer ops than the batch has");
            assert_eq!(torn.used_bytes(), 5 + 3 * kept as u64);
            // Deterministic for the same seed.
            let again = s.crash(Tear::LastBatch { seed });
            assert!(again.entries().eq(torn.entries()));
            kept_counts.insert(kept);
        }
        assert!(kept_counts.len() > 4, "seeds reach many tear points");
    }

    #[test]
    fn tear_undoes_overwrites_and_deletes_of_the_last_batch() {
        let mut s = MemStore::new(1000);
        s.write(&[put("p/1", "a"), put("p/2", "b"), put("q", "old")]).unwrap();
        s.write(&[put("q", "new"), Op::DeletePrefix { prefix: b"p/".to_vec() }]).unwrap();
        // Find a seed that keeps no op and one that keeps the first.
        let torn: Vec<MemStore> = (0..64).map(|seed| s.crash(Tear::LastBatch { seed })).collect();
        let none_kept =
            torn.iter().find(|t| t.get(b"q").unwrap() == Some(b"old".to_vec())).expect("some seed keeps no op");
        assert_eq!(none_kept.get(b"p/1").unwrap(), Some(b"a".to_vec()));
        assert_eq!(none_kept.used_bytes(), 4 + 4 + 4);
        let first_kept =
            torn.iter().find(|t| t.get(b"q").unwrap() == Some(b"new".to_vec())).expect("some seed keeps the first op");
        assert_eq!(first_kept.get(b"p/2").unwrap(), Some(b"b".to_vec()));
    }

    #[test]
    fn injected_failures_write_nothing_then_stop() {
        let mut s = MemStore::new(1000);
        s.fail_next_writes(2);
        for _ in 0..2 {
            assert!(matches!(s.write(&[put("a", "1")]), Err(StorageError::Io { .. })));
        }
        assert_eq!(s.get(b"a").unwrap(), None);
        assert_eq!(s.used_bytes(), 0);
        s.write(&[put("a", "1")]).unwrap();
        assert_eq!(s.get(b"a").unwrap(), Some(b"1".to_vec()));
    }
}
