//! The one error type of the store, and the mapping of redb's errors onto
//! it (each naming the file it concerns).

use std::path::{Path, PathBuf};

/// What can go wrong with a plugin's store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The batch would take the namespace past its quota; nothing was
    /// written.
    #[error("storage quota exceeded: {used} bytes used, the batch needs {needed} more, quota {quota}")]
    QuotaExceeded {
        /// Bytes of keys+values the namespace holds (unchanged).
        used: u64,
        /// How many bytes the batch would add to `used`.
        needed: u64,
        /// The namespace's quota.
        quota: u64,
    },
    /// Reading or writing the file failed.
    #[error("storage I/O error on {}: {reason}", path.display())]
    Io {
        /// The store's file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The file is not a store, or it was damaged.
    #[error("storage file {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The store's file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file is already open, in this process or another one.
    #[error("storage file {} is already open", path.display())]
    AlreadyOpen {
        /// The store's file.
        path: PathBuf,
    },
    /// The namespace already has a live handle (one writer per namespace),
    /// or a handle is live while the namespace is being dropped.
    #[error("storage namespace {name:?} is in use")]
    NamespaceInUse {
        /// The namespace.
        name: String,
    },
    /// The namespace's name cannot be used.
    #[error("invalid storage namespace {name:?}: {reason}")]
    InvalidNamespace {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A key, a value or the pair is larger than the store takes (about
    /// 3 GiB); nothing was written.
    #[error("storage entry too large: {len} bytes")]
    TooLarge {
        /// The size redb refused.
        len: usize,
    },
}

impl StorageError {
    /// The error for one of redb's storage errors on the file at `path`.
    pub(crate) fn from_redb(path: &Path, err: redb::StorageError) -> StorageError {
        match err {
            redb::StorageError::Corrupted(reason) => StorageError::Corrupt { path: path.to_path_buf(), reason },
            redb::StorageError::ValueTooLarge(len) => StorageError::TooLarge { len },
            redb::StorageError::Io(e) => StorageError::from_io(path, &e),
            other => StorageError::Io { path: path.to_path_buf(), reason: other.to_string() },
        }
    }

    /// The error for an I/O error on the file at `path`: `InvalidData`
    /// (what redb reports for a file that is not one of its databases) is
    /// corruption, the rest is I/O.
    pub(crate) fn from_io(path: &Path, err: &std::io::Error) -> StorageError {
        if err.kind() == std::io::ErrorKind::InvalidData {
            StorageError::Corrupt { path: path.to_path_buf(), reason: err.to_string() }
        } else {
            StorageError::Io { path: path.to_path_buf(), reason: err.to_string() }
        }
    }

    /// The error for opening the database file at `path`.
    pub(crate) fn from_open(path: &Path, err: redb::DatabaseError) -> StorageError {
        match err {
            redb::DatabaseError::DatabaseAlreadyOpen => StorageError::AlreadyOpen { path: path.to_path_buf() },
            redb::DatabaseError::Storage(e) => StorageError::from_redb(path, e),
            redb::DatabaseError::UpgradeRequired(version) => StorageError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("file format version {version} is not supported by this redb"),
            },
            other => StorageError::Io { path: path.to_path_buf(), reason: other.to_string() },
        }
    }

    /// The error for beginning a transaction on the file at `path`.
    pub(crate) fn from_transaction(path: &Path, err: redb::TransactionError) -> StorageError {
        match err {
            redb::TransactionError::Storage(e) => StorageError::from_redb(path, e),
            other => StorageError::Io { path: path.to_path_buf(), reason: other.to_string() },
        }
    }

    /// The error for opening or deleting a table in the file at `path`.
    pub(crate) fn from_table(path: &Path, err: redb::TableError) -> StorageError {
        match err {
            redb::TableError::Storage(e) => StorageError::from_redb(path, e),
            // A table of the wrong type: not a file this crate wrote.
            other => StorageError::Corrupt { path: path.to_path_buf(), reason: other.to_string() },
        }
    }

    /// The error for committing a transaction on the file at `path`.
    pub(crate) fn from_commit(path: &Path, err: redb::CommitError) -> StorageError {
        match err {
            redb::CommitError::Storage(e) => StorageError::from_redb(path, e),
            other => StorageError::Io { path: path.to_path_buf(), reason: other.to_string() },
        }
    }
}
