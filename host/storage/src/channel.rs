//! The node's store: one redb file per channel, one table per namespace,
//! and a table of each namespace's used bytes, written in the same
//! transaction as the namespace's entries.
//!
//! Every [`KvStore::write`] is one redb write transaction committed with
//! `Durability::Immediate` and redb's default one-phase commit (checksummed
//! commit slot): the pages and the new header are written and the file is
//! fsynced once (`fdatasync`). A commit either lands whole or not at all, so
//! a batch never tears, whatever the moment a crash comes.

use std::collections::HashSet;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use crate::{Entry, KvStore, Op, StorageError, collect_bounded, empty_range, entry_size, prefix_end};

/// The table of used bytes: namespace name → bytes of keys+values.
const USED: TableDefinition<'static, &str, u64> = TableDefinition::new("consenter-storage/used");

/// The prefix of a namespace's table name (the rest is the namespace's name).
const NAMESPACE_TABLE_PREFIX: &str = "ns/";

/// The longest namespace name, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 255;

/// A namespace's table of entries.
type Entries<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;

/// How [`ChannelStorage::open_with`] opens a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageOptions {
    /// The most memory redb's page cache of this file may take. redb's own
    /// default is 1 GiB per file; a node has one file per channel.
    pub cache_bytes: usize,
    /// Verify the checksum of every page on every open (redb does it anyway
    /// after a crash). Costs a read of the whole file, about
    /// proportional to its size (see BENCHMARKS.md), and means a file
    /// altered from outside fails to open with [`StorageError::Corrupt`]
    /// instead of possibly making redb panic later.
    pub check_integrity_on_open: bool,
}

impl Default for StorageOptions {
    /// 16 MiB of cache, integrity checked on open.
    fn default() -> StorageOptions {
        StorageOptions { cache_bytes: 16 << 20, check_integrity_on_open: true }
    }
}

/// The redb-backed store of one channel: one file (e.g.
/// `<chains>/<channel>/plugin-storage.redb`), namespaces as tables (a
/// plugin type gets its own namespace, so a consensus-type change starts
/// empty).
///
/// The file stays open and locked (redb's exclusive file lock, so a second
/// process, or a second `open` in this one, gets
/// [`StorageError::AlreadyOpen`]) until this value and every [`Namespace`]
/// taken from it are dropped.
pub struct ChannelStorage {
    shared: Arc<Shared>,
}

/// What a [`ChannelStorage`] and its namespaces share.
struct Shared {
    db: Database,
    path: PathBuf,
    /// Namespaces with a live handle: one handle per namespace, so its
    /// cached used-bytes count is the truth.
    live: Mutex<HashSet<String>>,
}

impl Shared {
    fn live(&self) -> MutexGuard<'_, HashSet<String>> {
        // Nothing panics while holding the lock; take it even if poisoned.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for ChannelStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelStorage").field("path", &self.shared.path).finish_non_exhaustive()
    }
}

impl ChannelStorage {
    /// Opens the store at `path` with the default [`StorageOptions`],
    /// creating the file if it does not exist (its folder must).
    pub fn open(path: &Path) -> Result<ChannelStorage, StorageError> {
        ChannelStorage::open_with(path, &StorageOptions::default())
    }

    /// Opens the store at `path`, creating the file if it does not exist
    /// (its folder must). A file left by a crash is repaired by redb on open
    /// (a walk of the whole file); one that is not a store, or damaged, gives
    /// [`StorageError::Corrupt`] naming the path.
    pub fn open_with(path: &Path, options: &StorageOptions) -> Result<ChannelStorage, StorageError> {
        let existed = path.try_exists().map_err(|e| StorageError::from_io(path, &e))?;
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .set_check_integrity_on_open(options.check_integrity_on_open)
            .create(path)
            .map_err(|e| StorageError::from_open(path, e))?;
        if !existed {
            // The new file's directory entry must be durable before the
            // first acknowledged write counts as durable.
            sync_parent(path)?;
        }
        Ok(ChannelStorage {
            shared: Arc::new(Shared { db, path: path.to_path_buf(), live: Mutex::new(HashSet::new()) }),
        })
    }

    /// The file this store is in.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The handle on namespace `name`, holding at most `quota_bytes` of
    /// keys+values. A namespace never written to is empty. One handle per
    /// namespace at a time: a second gives [`StorageError::NamespaceInUse`]
    /// until the first is dropped.
    pub fn namespace(&self, name: &str, quota_bytes: u64) -> Result<Namespace, StorageError> {
        check_name(name)?;
        let mut live = self.shared.live();
        if live.contains(name) {
            return Err(StorageError::NamespaceInUse { name: name.to_string() });
        }
        let used = read_used(&self.shared, name)?;
        live.insert(name.to_string());
        Ok(Namespace {
            shared: Arc::clone(&self.shared),
            name: name.to_string(),
            table: table_name(name),
            quota: quota_bytes,
            used,
        })
    }

    /// Removes namespace `name` and all its entries, durably (one fsync).
    /// Removing a namespace that does not exist does nothing. Refused with
    /// [`StorageError::NamespaceInUse`] while a handle on it is live.
    pub fn drop_namespace(&self, name: &str) -> Result<(), StorageError> {
        check_name(name)?;
        let shared = &self.shared;
        let path = shared.path.as_path();
        // Held across the transaction: no handle can be taken meanwhile.
        let live = shared.live();
        if live.contains(name) {
            return Err(StorageError::NamespaceInUse { name: name.to_string() });
        }
        let txn = shared.db.begin_write().map_err(|e| StorageError::from_transaction(path, e))?;
        let table = table_name(name);
        let had_table = txn.delete_table(Entries::new(&table)).map_err(|e| StorageError::from_table(path, e))?;
        let had_count = {
            let mut used = txn.open_table(USED).map_err(|e| StorageError::from_table(path, e))?;
            used.remove(name).map_err(|e| StorageError::from_redb(path, e))?.is_some()
        };
        if had_table || had_count {
            txn.commit().map_err(|e| StorageError::from_commit(path, e))?;
        }
        // Otherwise dropping the transaction aborts it: nothing to write.
        Ok(())
    }

    /// Every namespace that was written to and not dropped, with its used
    /// bytes, in name order (for example to drop the namespaces of consensus
    /// types a channel no longer runs).
    pub fn namespaces(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let path = self.shared.path.as_path();
        let txn = self.shared.db.begin_read().map_err(|e| StorageError::from_transaction(path, e))?;
        let table = match txn.open_table(USED) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::from_table(path, e)),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| StorageError::from_redb(path, e))? {
            let (name, used) = entry.map_err(|e| StorageError::from_redb(path, e))?;
            out.push((name.value().to_string(), used.value()));
        }
        Ok(out)
    }
}

/// A handle on one namespace of a [`ChannelStorage`]: the [`KvStore`] a
/// plugin's state gets. Keeps the file open until dropped.
pub struct Namespace {
    shared: Arc<Shared>,
    name: String,
    table: String,
    quota: u64,
    /// The count stored in the file, as of the last committed write.
    used: u64,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("path", &self.shared.path)
            .field("name", &self.name)
            .field("quota", &self.quota)
            .field("used", &self.used)
            .finish()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.shared.live().remove(&self.name);
    }
}

impl Namespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Applies `ops` inside `txn`, returning the used bytes after them.
    fn apply(&self, txn: &redb::WriteTransaction, ops: &[Op]) -> Result<u64, StorageError> {
        let path = self.path();
        let redb_err = |e| StorageError::from_redb(path, e);
        let mut table = txn.open_table(Entries::new(&self.table)).map_err(|e| StorageError::from_table(path, e))?;
        let mut used = self.used;
        for op in ops {
            let removed = match op {
                Op::Put { key, value } => {
                    let old = table.insert(key.as_slice(), value.as_slice()).map_err(redb_err)?;
                    used = used.saturating_add(entry_size(key, value));
                    old.map_or(0, |old| entry_size(key, old.value()))
                }
                Op::Delete { key } => {
                    let old = table.remove(key.as_slice()).map_err(redb_err)?;
                    old.map_or(0, |old| entry_size(key, old.value()))
                }
                Op::DeletePrefix { prefix } => {
                    let end = prefix_end(prefix);
                    let bounds: (Bound<&[u8]>, Bound<&[u8]>) =
                        (Bound::Included(prefix.as_slice()), end.as_deref().map_or(Bound::Unbounded, Bound::Excluded));
                    let mut removed: u64 = 0;
                    table
                        .retain_in::<&[u8], _>(bounds, |key, value| {
                            removed = removed.saturating_add(entry_size(key, value));
                            false
                        })
                        .map_err(redb_err)?;
                    removed
                }
            };
            used = used.checked_sub(removed).ok_or_else(|| StorageError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("namespace {:?}: the stored used-bytes count is below its entries' size", self.name),
            })?;
        }
        Ok(used)
    }
}

impl KvStore for Namespace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path();
        let txn = self.shared.db.begin_read().map_err(|e| StorageError::from_transaction(path, e))?;
        let table = match txn.open_table(Entries::new(&self.table)) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(StorageError::from_table(path, e)),
        };
        let value = table.get(key).map_err(|e| StorageError::from_redb(path, e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        if empty_range(start, end, limit) {
            return Ok(Vec::new());
        }
        let path = self.path();
        let txn = self.shared.db.begin_read().map_err(|e| StorageError::from_transaction(path, e))?;
        let table = match txn.open_table(Entries::new(&self.table)) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::from_table(path, e)),
        };
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) =
            (Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded));
        let entries = table.range::<&[u8]>(bounds).map_err(|e| StorageError::from_redb(path, e))?.map(|entry| {
            entry.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())).map_err(|e| StorageError::from_redb(path, e))
        });
        collect_bounded(entries, limit, max_bytes)
    }

    fn write(&mut self, ops: &[Op]) -> Result<(), StorageError> {
        if ops.is_empty() {
            return Ok(());
        }
        let path = self.path();
        let txn = self.shared.db.begin_write().map_err(|e| StorageError::from_transaction(path, e))?;
        // On any error below, dropping `txn` aborts it: nothing is written.
        let used = self.apply(&txn, ops)?;
        if used > self.used && used > self.quota {
            return Err(StorageError::QuotaExceeded { used: self.used, needed: used - self.used, quota: self.quota });
        }
        {
            let mut counts = txn.open_table(USED).map_err(|e| StorageError::from_table(path, e))?;
            counts.insert(self.name.as_str(), used).map_err(|e| StorageError::from_redb(path, e))?;
        }
        txn.commit().map_err(|e| StorageError::from_commit(path, e))?;
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

/// The used bytes stored for namespace `name` (0 if none).
fn read_used(shared: &Shared, name: &str) -> Result<u64, StorageError> {
    let path = shared.path.as_path();
    let txn = shared.db.begin_read().map_err(|e| StorageError::from_transaction(path, e))?;
    let table = match txn.open_table(USED) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(StorageError::from_table(path, e)),
    };
    let used = table.get(name).map_err(|e| StorageError::from_redb(path, e))?;
    Ok(used.map_or(0, |v| v.value()))
}

fn table_name(name: &str) -> String {
    format!("{NAMESPACE_TABLE_PREFIX}{name}")
}

fn check_name(name: &str) -> Result<(), StorageError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAMESPACE_LEN {
        "longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(StorageError::InvalidNamespace { name: name.to_string(), reason })
}

/// Fsyncs the folder holding `path`, so a file just created there survives
/// a crash.
fn sync_parent(path: &Path) -> Result<(), StorageError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent).and_then(|dir| dir.sync_all()).map_err(|e| StorageError::from_io(parent, &e))
}
