//! The durable key-value store a consensus plugin gets on each channel: a
//! raft plugin keeps its log and hard state here, a BFT plugin its view and
//! checkpoints.
//!
//! - [`KvStore`] is what a plugin's state sees: `get`, bounded `range`, and
//!   atomic, durable `write` batches of [`Op`]s under a byte quota.
//! - [`ChannelStorage`] is the node's store: one redb file per channel
//!   (`<chains>/<channel>/plugin-storage.redb`), one table per namespace
//!   ([`Namespace`]). A plugin type gets its own namespace, so a change of
//!   consensus type starts from an empty store.
//! - [`MemStore`] is an in-memory [`KvStore`] for deterministic tests (the
//!   simulator), with crash injection.
//!
//! Depends on redb and thiserror only, on nothing else of the workspace.

#![warn(missing_docs)]

mod channel;
mod error;
mod mem;

pub use channel::{ChannelStorage, MAX_NAMESPACE_LEN, Namespace, StorageOptions};
pub use error::StorageError;
pub use mem::{MemStore, Tear};

/// One key and its value, as [`KvStore::range`] returns them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One operation of an atomic write batch.
///
/// The operations of a batch apply in order, so a `Put` after a `Delete`
/// of the same key leaves the key present, and a `DeletePrefix` removes
/// what earlier operations of the batch put under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` to `value`, replacing any value it had.
    Put {
        /// The key.
        key: Vec<u8>,
        /// Its new value.
        value: Vec<u8>,
    },
    /// Removes `key`, if present.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Removes every key that starts with `prefix` (every key, for an empty
    /// prefix).
    DeletePrefix {
        /// The prefix.
        prefix: Vec<u8>,
    },
}

/// A plugin's durable key-value state on one channel, in one namespace.
///
/// Sizes are counted as the bytes of keys plus values, nothing else: that
/// is what [`used_bytes`](KvStore::used_bytes) reports and what the quota
/// limits.
pub trait KvStore: Send {
    /// The value of `key`, if present.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Entries with start <= key < end (end None = no upper bound), in key
    /// order, at most `limit`, and at most `max_bytes` of keys+values (at
    /// least one entry if any).
    ///
    /// An `end` at or before `start`, or a `limit` of 0, gives no entries.
    /// The first entry is returned even if it alone is larger than
    /// `max_bytes`, so a caller paging with the last key it saw always
    /// makes progress.
    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError>;

    /// Applies all ops atomically, durable (one fsync) when it returns. If
    /// the batch would take the namespace past its quota, nothing is written
    /// and QuotaExceeded is returned.
    ///
    /// A batch that does not grow the namespace is accepted even when the
    /// namespace is over its quota (for example after the quota was
    /// lowered), so such a namespace can always shrink. An empty batch does
    /// nothing and returns at once. On any error nothing of the batch is
    /// written.
    fn write(&mut self, ops: &[Op]) -> Result<(), StorageError>;

    /// Bytes of keys+values stored now.
    fn used_bytes(&self) -> u64;

    /// The most bytes of keys+values this namespace may hold.
    fn quota_bytes(&self) -> u64;
}

impl<T: KvStore + ?Sized> KvStore for Box<T> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).get(key)
    }
    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        (**self).range(start, end, limit, max_bytes)
    }
    fn write(&mut self, ops: &[Op]) -> Result<(), StorageError> {
        (**self).write(ops)
    }
    fn used_bytes(&self) -> u64 {
        (**self).used_bytes()
    }
    fn quota_bytes(&self) -> u64 {
        (**self).quota_bytes()
    }
}

/// The first key after every key that starts with `prefix`: the exclusive
/// upper bound of the prefix's range, or `None` when no such key exists
/// (an empty prefix, or one of only `0xff` bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&b| b != 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

/// The size an entry counts for: its key's and value's bytes.
fn entry_size(key: &[u8], value: &[u8]) -> u64 {
    // usize fits in u64 on every target redb supports.
    key.len() as u64 + value.len() as u64
}

/// Whether `range`'s bounds select no key at all.
fn empty_range(start: &[u8], end: Option<&[u8]>, limit: usize) -> bool {
    limit == 0 || end.is_some_and(|end| end <= start)
}

/// Collects entries from an ordered iterator under `limit` and `max_bytes`
/// (always at least one entry, if there is one).
fn collect_bounded<E>(
    entries: impl Iterator<Item = Result<Entry, E>>,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<Entry>, E> {
    let mut out = Vec::new();
    let mut bytes: u64 = 0;
    for entry in entries {
        if out.len() >= limit {
            break;
        }
        let (key, value) = entry?;
        let size = entry_size(&key, &value);
        if !out.is_empty() && bytes.saturating_add(size) > max_bytes as u64 {
            break;
        }
        bytes = bytes.saturating_add(size);
        out.push((key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn collect_bounded_keeps_one_oversized_entry_and_stops_at_the_budget() {
        let entries = || {
            (0u8..5).map(|i| Ok::<_, ()>((vec![i], vec![0; 9]))) // 10 bytes each
        };
        assert_eq!(collect_bounded(entries(), 10, 1).unwrap().len(), 1);
        assert_eq!(collect_bounded(entries(), 10, 25).unwrap().len(), 2);
        assert_eq!(collect_bounded(entries(), 10, 30).unwrap().len(), 3);
        assert_eq!(collect_bounded(entries(), 2, 1000).unwrap().len(), 2);
        assert_eq!(collect_bounded(entries(), 0, 1000).unwrap().len(), 0);
    }
}
