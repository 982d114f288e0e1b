//! The durable key-value store a consensus plugin gets per channel (a raft
//! log and hard state): atomic write batches, range reads, prefix deletes,
//! a byte quota per namespace. May depend on nothing of the workspace.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// One operation of an atomic write batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Store `value` under `key`.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Remove `key`.
    Delete { key: Vec<u8> },
    /// Remove every key starting with `prefix`.
    DeletePrefix { prefix: Vec<u8> },
}

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The batch would take the namespace past its quota; nothing was written.
    #[error("the write needs {needed} bytes more, and {used} of the quota of {quota} bytes are used")]
    QuotaExceeded { used: u64, needed: u64, quota: u64 },
    /// The file could not be read or written.
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// The file is not a valid store.
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// A plugin's durable key-value state on one channel, in one namespace.
pub trait KvStore: Send {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Entries with `start <= key < end`, in key order, at most `limit` and
    /// at most `max_bytes` of keys and values (at least one if any).
    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError>;
    /// Applies `ops` atomically; durable when it returns.
    fn write(&mut self, ops: &[Op]) -> Result<(), StorageError>;
    /// Bytes of keys and values stored now.
    fn used_bytes(&self) -> u64;
    /// The namespace's quota.
    fn quota_bytes(&self) -> u64;
}

/// An in-memory store for deterministic tests.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    used: u64,
    quota: u64,
}

impl MemStore {
    /// An empty store with `quota` bytes.
    pub fn new(quota: u64) -> MemStore {
        MemStore { map: BTreeMap::new(), used: 0, quota }
    }
}

impl KvStore for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.map.get(key).cloned())
    }
    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (k, v) in self.map.range(start.to_vec()..) {
            if end.is_some_and(|e| k.as_slice() >= e) || out.len() >= limit {
                break;
            }
            bytes += k.len() + v.len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push((k.clone(), v.clone()));
        }
        Ok(out)
    }
    fn write(&mut self, ops: &[Op]) -> Result<(), StorageError> {
        let mut next = self.map.clone();
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    next.insert(key.clone(), value.clone());
                }
                Op::Delete { key } => {
                    next.remove(key);
                }
                Op::DeletePrefix { prefix } => next.retain(|k, _| !k.starts_with(prefix)),
            }
        }
        let used: u64 = next.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        if used > self.quota && used > self.used {
            return Err(StorageError::QuotaExceeded { used: self.used, needed: used - self.used, quota: self.quota });
        }
        self.map = next;
        self.used = used;
        Ok(())
    }
    fn used_bytes(&self) -> u64 {
        self.used
    }
    fn quota_bytes(&self) -> u64 {
        self.quota
    }
}
