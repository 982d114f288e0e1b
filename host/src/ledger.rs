//! The block ledger of one channel: an append-only, crash-safe store of the
//! marshalled `common.Block`s the ordering node has cut, which Deliver reads
//! back. Blocks become visible to readers (and wake waiters) only after they
//! are fsynced. This module may touch only its own channel directory on disk
//! (it creates that directory when missing, and then fsyncs its parent so the
//! new entry is durable; it writes nothing anywhere else).
//!
//! # On-disk format
//!
//! One directory per channel, holding one block file, `blocks.dat` (and its
//! index and checkpoint, below):
//!
//! ```text
//! "CHLEDG01"                                  8-byte file magic
//! u32 LE length | u32 LE crc32c(block) | block  one record per block, block 0 first
//! ...
//! ```
//!
//! `block` is the marshalled `common.Block` exactly as it was appended (reads
//! return the same bytes). A record is at most 1 GiB. The file is created
//! atomically (written as `blocks.dat.tmp` with the magic, fsynced, renamed,
//! directory fsynced). An exclusive advisory lock on `blocks.dat` keeps two
//! `Ledger`s off the same directory.
//!
//! # Index and checkpoint
//!
//! Beside the block file, so that opening does not depend on the ledger's
//! size:
//!
//! ```text
//! blocks.idx:  "CHIDX001" | u64 LE offset of block 0 | of block 1 | ...
//! checkpoint:  "CHCKPT01" | u64 LE height | u64 LE end | [32] header hash of block height-1
//!              | u32 LE crc32c of the 56 bytes before | 4 zero bytes      (64 bytes)
//! ```
//!
//! The index gets each group's offsets after the group is durable (written,
//! not fsynced). The checkpoint says "the first `height` blocks, which end at
//! offset `end`, were verified and are durable, and so are their index
//! entries": it is written (index fsynced first, then the checkpoint as
//! `checkpoint.tmp`, fsynced, renamed, directory fsynced) at least every
//! [`CHECKPOINT_BYTES`] of blocks, after a full scan on open, and when the
//! ledger is closed. A crash leaves the old or the new checkpoint, never a
//! torn one.
//!
//! [`Ledger::open`] uses the checkpoint only after checking it against the
//! tail it covers: its checksum, `end` within the file, an index entry per
//! block (increasing, the first at the magic), and the record at the last
//! indexed offset ending exactly at `end`, passing its checksum, and being
//! block `height - 1` with the checkpoint's header hash. It then takes the
//! index's first `height` offsets as they are and scans (with every check
//! below) only what follows `end`. Anything wrong with the checkpoint or the
//! index is logged and open scans the whole file as without them. Reads
//! still check each record's length and checksum, and [`verify_dir`] (what
//! `consenter-host ledger verify` runs) always scans everything and also
//! checks the index and checkpoint against the blocks.
//!
//! # Recovery
//!
//! [`Ledger::open`] scans every record after the checkpoint (all of them
//! without one). A bad record (partial length prefix,
//! length over the cap or past the end of the file, checksum mismatch, block
//! that does not decode or has no header, zero length) is a *torn tail* when
//! it is the last thing in the file (its extent reaches the end of the file)
//! or when everything from it to the end of the file is zero bytes (a crash
//! after the file grew but before its pages were written); the tail is cut
//! off with `set_len` + fsync and a warning says how many bytes were dropped.
//! A bad record with anything else after it is corruption of durable data:
//! open fails with [`LedgerError::Corrupt`] and nothing is truncated. Every
//! good record must then chain: header number equal to its index, previous
//! hash equal to the header hash of the block before (block 0: anything), data
//! hash matching its data; any break is [`LedgerError::Corrupt`] as well.
//! [`verify_dir`] runs the same checks read-only and reports a torn tail as
//! [`LedgerError::TornTail`] instead of cutting it.
//!
//! # Writing and reading
//!
//! One writer: [`Ledger::append`] checks a whole group of blocks (numbers and
//! previous hashes, decoding only their headers; data hashes are the block
//! cutter's business and are checked again on open), writes the group with
//! vectored writes (no copy of the block bytes), fsyncs once (`sync_data`),
//! and only then publishes the new height to readers and to a
//! [`tokio::sync::watch`] channel. After an I/O error the ledger is poisoned:
//! what reached the file is unknown, so further appends are refused until the
//! ledger is reopened (and recovery cuts whatever was torn).
//!
//! Many readers: they take the index lock only long enough to copy a record's
//! offsets, then read with positional reads (`read_at`) on a shared read-only
//! handle, so they never wait for the writer's I/O and never move a file
//! cursor. Durable records are never rewritten, so that is race-free. Reads
//! check the record's checksum again.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use bytes::Bytes;
use prost::Message;
use tokio::sync::watch;

use crate::block::{check_data_hash, header_hash, hex};
use crate::proto::common::{Block, BlockHeader};

/// File magic at the start of `blocks.dat` (format version 1).
const MAGIC: &[u8; 8] = b"CHLEDG01";
/// Length of the file magic.
const MAGIC_LEN: u64 = MAGIC.len() as u64;
/// The block file's name inside the channel directory.
const BLOCK_FILE: &str = "blocks.dat";
/// Where a new block file is prepared before it is renamed into place.
const BLOCK_FILE_TMP: &str = "blocks.dat.tmp";
/// Record header: u32 LE length, u32 LE crc32c.
const RECORD_HEADER: u64 = 8;
/// Largest block a record may hold.
const MAX_BLOCK_LEN: u64 = 1 << 30;
/// Chunk size when checking that a tail is all zero bytes.
const ZERO_SCAN_CHUNK: usize = 64 * 1024;
/// The block index's name, magic and entry size.
const INDEX_FILE: &str = "blocks.idx";
const INDEX_MAGIC: &[u8; 8] = b"CHIDX001";
const INDEX_ENTRY: u64 = 8;
/// The checkpoint's name, its temporary name, magic and size.
const CHECKPOINT_FILE: &str = "checkpoint";
const CHECKPOINT_TMP: &str = "checkpoint.tmp";
const CHECKPOINT_MAGIC: &[u8; 8] = b"CHCKPT01";
const CHECKPOINT_LEN: usize = 64;
/// A checkpoint is written at least every this many bytes of blocks, so
/// that an open after a crash scans at most about this much.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;

/// A block header hash.
type Hash = [u8; 32];

/// Errors from the ledger. Each names the channel directory and the block
/// number and/or file offset involved.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// An I/O operation failed.
    #[error("ledger {}: {op}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        op: String,
        #[source]
        source: io::Error,
    },
    /// `blocks.dat` is not a ledger block file.
    #[error("ledger {}: {BLOCK_FILE} does not start with the magic {:?} (found {found}); not a ledger block file",
        dir.display(), String::from_utf8_lossy(MAGIC))]
    BadMagic { dir: PathBuf, found: String },
    /// Durable data is corrupt: a bad record before the tail, a break in the
    /// chain, or a record that fails its checksum when read back.
    #[error("ledger {}: block {number} at offset {offset} of {BLOCK_FILE} is corrupt: {reason}", dir.display())]
    Corrupt { dir: PathBuf, number: u64, offset: u64, reason: String },
    /// [`verify_dir`] only: the file ends in a torn record that
    /// [`Ledger::open`] would truncate.
    #[error("ledger {}: torn tail at offset {offset} of {BLOCK_FILE} ({bytes} bytes after {height} good blocks): \
        {reason}; opening the ledger would truncate it", dir.display())]
    TornTail { dir: PathBuf, height: u64, offset: u64, bytes: u64, reason: String },
    /// Another open ledger (in this or another process) holds the directory.
    #[error("ledger {}: {BLOCK_FILE} is locked by another open ledger", dir.display())]
    Locked { dir: PathBuf },
    /// An append was refused: a block's number is not the next one.
    #[error("ledger {}: refusing append: element {index} of the group is block {found}, expected block {expected}",
        dir.display())]
    WrongNumber { dir: PathBuf, index: usize, expected: u64, found: u64 },
    /// An append was refused: a block does not link to the block before it.
    #[error("ledger {}: refusing append: block {number} has previous_hash {found}, \
        expected the header hash of block {} ({expected})", dir.display(), number.wrapping_sub(1))]
    WrongPreviousHash { dir: PathBuf, number: u64, expected: String, found: String },
    /// An append was refused: an element is not a block with a header.
    #[error("ledger {}: refusing append: element {index} of the group (block {expected} expected): {reason}",
        dir.display())]
    InvalidBlock { dir: PathBuf, index: usize, expected: u64, reason: String },
    /// An append was refused: a block exceeds the record size cap.
    #[error("ledger {}: refusing append: block {number} is {len} bytes, over the {MAX_BLOCK_LEN}-byte cap",
        dir.display())]
    TooLarge { dir: PathBuf, number: u64, len: u64 },
    /// An earlier append failed with an I/O error; the ledger must be reopened.
    #[error("ledger {}: refusing append after an earlier failure at offset {offset} ({cause}); \
        reopen the ledger to recover", dir.display())]
    Poisoned { dir: PathBuf, offset: u64, cause: String },
}

/// A channel's block ledger. Cloning is cheap (the clones share one ledger);
/// it is `Send + Sync`.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// Read-only handle shared by all readers (positional reads only).
    reader: File,
    /// The single writer's state; held across write + fsync.
    writer: Mutex<Writer>,
    /// What readers see: durable records only.
    index: RwLock<Index>,
    /// Durable height, for waiters.
    height_tx: watch::Sender<u64>,
    /// Fabric's ledger metrics (height, commit time), labelled with the
    /// channel (the directory's name).
    metrics: crate::metrics::LedgerMetrics,
}

struct Writer {
    /// Read-write handle, positioned at `end`, holding the directory lock.
    file: File,
    height: u64,
    /// End of the last durable record.
    end: u64,
    last_hash: Option<Hash>,
    /// Set after an I/O error; appends are refused from then on.
    poisoned: Option<String>,
    /// The block index, while it can be kept (None after an error on it:
    /// no more checkpoints, and the next open scans from the last one).
    index: Option<File>,
    /// End of the blocks covered by the checkpoint on disk.
    checkpointed_end: u64,
    /// Write a checkpoint when this many bytes were appended since the last.
    checkpoint_every: u64,
}

struct Index {
    /// Offset of each durable record (its length prefix), by block number.
    offsets: Vec<u64>,
    /// End of the last durable record.
    end: u64,
    last_hash: Option<Hash>,
}

/// Only the header of a `common.Block` (field 1); the data and metadata
/// fields are skipped without being copied.
#[derive(Clone, PartialEq, prost::Message)]
struct HeaderOnly {
    #[prost(message, optional, tag = "1")]
    header: Option<BlockHeader>,
}

impl Ledger {
    /// Opens (creating if missing) the ledger in `dir`. Recovery: scans the
    /// block file after the checkpoint (all of it without a usable one; see
    /// the module doc), truncates a torn or corrupt tail (partial length
    /// prefix, partial record, checksum mismatch, undecodable block) and
    /// logs how many bytes were dropped; every block scanned is checked:
    /// number == index, previous_hash == header hash of the block before,
    /// data hash matches data. A break in the chain before the tail is
    /// [`LedgerError::Corrupt`], never silently truncated. Then the index and
    /// checkpoint are brought up to the scanned height.
    pub fn open(dir: &Path) -> Result<Ledger, LedgerError> {
        Self::open_with(dir, CHECKPOINT_BYTES)
    }

    /// [`Ledger::open`], writing a checkpoint every `checkpoint_every`
    /// bytes of appended blocks.
    pub fn open_with(dir: &Path, checkpoint_every: u64) -> Result<Ledger, LedgerError> {
        ensure_dir(dir)?;
        let path = dir.join(BLOCK_FILE);
        let exists = path.try_exists().map_err(|e| io_err(dir, format!("checking {}", path.display()), e))?;
        if !exists {
            create_block_file(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(dir, format!("opening {} for writing", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(LedgerError::Locked { dir: dir.to_path_buf() }),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(dir, format!("locking {}", path.display()), e)),
        }

        let file_len = file.metadata().map_err(|e| io_err(dir, format!("reading the size of {BLOCK_FILE}"), e))?.len();
        let resume = match load_checkpoint(dir, &file, file_len) {
            Ok(r) => r,
            Err(why) => {
                tracing::warn!(dir = %dir.display(), "ledger: not using the checkpoint ({why}); scanning all of {BLOCK_FILE}");
                None
            }
        };
        let from = resume.as_ref().map(|r| r.offsets.len() as u64).unwrap_or(0);
        let scan = scan(dir, &file, resume)?;
        let mut end = scan.end;
        if let Some(tail) = &scan.tail {
            tracing::warn!(
                dir = %dir.display(),
                offset = tail.offset,
                dropped_bytes = tail.bytes,
                height = scan.offsets.len(),
                reason = %tail.reason,
                "ledger: truncating torn tail of {BLOCK_FILE}: dropping {} bytes at offset {}",
                tail.bytes,
                tail.offset
            );
            file.set_len(tail.offset)
                .map_err(|e| io_err(dir, format!("truncating {BLOCK_FILE} to offset {}", tail.offset), e))?;
            if tail.offset < MAGIC_LEN {
                // Torn creation (cannot happen with the rename, but cheap to repair).
                file.write_all_at(MAGIC, 0)
                    .map_err(|e| io_err(dir, format!("writing the magic of {BLOCK_FILE} at offset 0"), e))?;
                end = MAGIC_LEN;
            }
            file.sync_all()
                .map_err(|e| io_err(dir, format!("fsyncing {BLOCK_FILE} after truncating to offset {end}"), e))?;
        }
        file.seek(SeekFrom::Start(end)).map_err(|e| io_err(dir, format!("seeking {BLOCK_FILE} to offset {end}"), e))?;
        let reader =
            File::open(&path).map_err(|e| io_err(dir, format!("opening {} for reading", path.display()), e))?;

        let height = scan.offsets.len() as u64;
        let (height_tx, _) = watch::channel(height);
        tracing::debug!(dir = %dir.display(), height, end, scanned_from_block = from, "ledger: opened");
        let mut writer = Writer {
            file,
            height,
            end,
            last_hash: scan.last_hash,
            poisoned: None,
            index: None,
            checkpointed_end: if from == height { end } else { 0 },
            checkpoint_every: checkpoint_every.max(1),
        };
        // Bring the index up to what was scanned, and checkpoint it, so
        // that the next open starts from here.
        match write_index_tail(dir, &scan.offsets, from) {
            Ok(index) => {
                writer.index = Some(index);
                if height > 0 && writer.checkpointed_end != end {
                    writer.checkpoint(dir);
                }
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "ledger: cannot keep {INDEX_FILE}; \
                every open will scan all of {BLOCK_FILE}"),
        }
        let metrics = crate::metrics::LedgerMetrics::new(&dir.file_name().unwrap_or_default().to_string_lossy());
        metrics.height(scan.offsets.len() as u64);
        Ok(Ledger {
            inner: Arc::new(Inner {
                metrics,
                dir: dir.to_path_buf(),
                reader,
                writer: Mutex::new(writer),
                index: RwLock::new(Index { offsets: scan.offsets, end, last_hash: scan.last_hash }),
                height_tx,
            }),
        })
    }

    /// The channel directory this ledger lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes of durable blocks in the ledger (its disk use).
    pub fn size_bytes(&self) -> u64 {
        self.inner.read_index().end
    }

    /// Number of durable blocks.
    pub fn height(&self) -> u64 {
        self.inner.read_index().offsets.len() as u64
    }

    /// Appends blocks in order, writes them, fsyncs once for the group, and
    /// only then makes them visible to readers and wakes waiters. Refuses,
    /// without writing anything, a group in which a block's number is not
    /// the height plus its index in the slice, or whose previous_hash is not
    /// the header hash of the block before it (block 0 may link to
    /// anything). Each element is a marshalled `common.Block`; only its
    /// header is decoded. After an I/O error the ledger refuses further
    /// appends ([`LedgerError::Poisoned`]).
    pub fn append(&self, blocks: &[Bytes]) -> Result<(), LedgerError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let inner = &*self.inner;
        let dir = &inner.dir;
        let mut w = inner.writer();
        if let Some(cause) = &w.poisoned {
            return Err(LedgerError::Poisoned { dir: dir.clone(), offset: w.end, cause: cause.clone() });
        }

        // Check the whole group before writing any of it.
        let mut last_hash = w.last_hash;
        let mut record_headers = Vec::with_capacity(blocks.len());
        let mut offsets = Vec::with_capacity(blocks.len());
        let mut end = w.end;
        for (index, raw) in blocks.iter().enumerate() {
            let expected = w.height + index as u64;
            let len = raw.len() as u64;
            if len > MAX_BLOCK_LEN {
                return Err(LedgerError::TooLarge { dir: dir.clone(), number: expected, len });
            }
            let header = match HeaderOnly::decode(raw.clone()) {
                Ok(HeaderOnly { header: Some(h) }) => h,
                Ok(HeaderOnly { header: None }) => {
                    return Err(LedgerError::InvalidBlock {
                        dir: dir.clone(),
                        index,
                        expected,
                        reason: "block has no header".into(),
                    });
                }
                Err(e) => {
                    return Err(LedgerError::InvalidBlock {
                        dir: dir.clone(),
                        index,
                        expected,
                        reason: format!("not a marshalled common.Block: {e}"),
                    });
                }
            };
            if header.number != expected {
                return Err(LedgerError::WrongNumber { dir: dir.clone(), index, expected, found: header.number });
            }
            if expected > 0 && last_hash.as_ref().map(|h| &h[..]) != Some(&header.previous_hash[..]) {
                return Err(LedgerError::WrongPreviousHash {
                    dir: dir.clone(),
                    number: expected,
                    expected: last_hash.map(|h| hex(&h)).unwrap_or_else(|| "none".into()),
                    found: hex(&header.previous_hash),
                });
            }
            last_hash = Some(header_hash(&header));
            record_headers.push(record_header(raw));
            offsets.push(end);
            end += RECORD_HEADER + len;
        }

        // One vectored write (modulo IOV_MAX and short writes) and one fsync.
        let mut slices = Vec::with_capacity(blocks.len() * 2);
        for (h, raw) in record_headers.iter().zip(blocks) {
            slices.push(IoSlice::new(h));
            slices.push(IoSlice::new(raw));
        }
        let first = w.height;
        let last = first + blocks.len() as u64 - 1;
        let start = w.end;
        let started = std::time::Instant::now();
        let written = write_all_vectored(&mut w.file, &mut slices)
            .map_err(|e| ("writing", e))
            .and_then(|()| w.file.sync_data().map_err(|e| ("fsyncing", e)));
        if let Err((what, e)) = written {
            let op = format!("{what} blocks {first}..={last} at offset {start} of {BLOCK_FILE}");
            tracing::error!(dir = %dir.display(), error = %e, "ledger: {op} failed; refusing further appends");
            w.poisoned = Some(format!("{op}: {e}"));
            return Err(io_err(dir, op, e));
        }

        // Durable: publish.
        w.height = last + 1;
        w.end = end;
        w.last_hash = last_hash;
        w.index_append(dir, first, &offsets);
        if w.end - w.checkpointed_end >= w.checkpoint_every {
            w.checkpoint(dir);
        }
        {
            let mut index = inner.write_index();
            index.offsets.extend_from_slice(&offsets);
            index.end = end;
            index.last_hash = last_hash;
        }
        inner.height_tx.send_replace(last + 1);
        inner.metrics.committed(started.elapsed());
        inner.metrics.height(last + 1);
        Ok(())
    }

    /// Raw bytes of block `number` (exactly as appended), or None if
    /// `number >= height`.
    pub fn block_bytes(&self, number: u64) -> Result<Option<Bytes>, LedgerError> {
        let inner = &*self.inner;
        let (start, stop) = {
            let index = inner.read_index();
            let Some(i) = usize::try_from(number).ok().filter(|i| *i < index.offsets.len()) else {
                return Ok(None);
            };
            (index.offsets[i], index.offsets.get(i + 1).copied().unwrap_or(index.end))
        };
        // No lock held from here on.
        let dir = &inner.dir;
        let corrupt = |reason: String| LedgerError::Corrupt { dir: dir.clone(), number, offset: start, reason };
        let len = usize::try_from(stop - start)
            .map_err(|_| corrupt(format!("record of {} bytes does not fit in memory", stop - start)))?;
        let mut buf = vec![0u8; len];
        inner
            .reader
            .read_exact_at(&mut buf, start)
            .map_err(|e| io_err(dir, format!("reading block {number} at offset {start} of {BLOCK_FILE}"), e))?;
        let (declared, crc) = parse_record_header(&buf);
        if RECORD_HEADER + u64::from(declared) != stop - start {
            return Err(corrupt(format!(
                "length prefix {declared} does not match the indexed record size {}",
                stop - start - RECORD_HEADER
            )));
        }
        let body = Bytes::from(buf).slice(RECORD_HEADER as usize..);
        let computed = crc32c::crc32c(&body);
        if computed != crc {
            return Err(corrupt(format!("checksum mismatch on read (stored {crc:#010x}, computed {computed:#010x})")));
        }
        Ok(Some(body))
    }

    /// Decoded block `number`, or None if `number >= height`.
    pub fn block(&self, number: u64) -> Result<Option<Block>, LedgerError> {
        let Some(raw) = self.block_bytes(number)? else { return Ok(None) };
        let offset = self.inner.read_index().offsets.get(usize::try_from(number).unwrap_or(usize::MAX)).copied();
        Block::decode(raw).map(Some).map_err(|e| LedgerError::Corrupt {
            dir: self.inner.dir.clone(),
            number,
            offset: offset.unwrap_or_default(),
            reason: format!("block does not decode: {e}"),
        })
    }

    /// Waits until block `number` is durable (height > number). Returns
    /// immediately if it already is.
    pub async fn wait_for(&self, number: u64) {
        let mut rx = self.inner.height_tx.subscribe();
        // The sender lives in `self.inner`, which `&self` keeps alive, so
        // this cannot fail with a closed channel.
        let _ = rx.wait_for(|height| *height > number).await;
    }

    /// An iterator over the raw bytes of durable blocks from `start`.
    /// `next()` returns None at the current height without blocking; it may
    /// be called again after more blocks are appended (e.g. after
    /// [`Ledger::wait_for`]) and then continues. After an error it ends.
    pub fn iter_from(&self, start: u64) -> LedgerIter {
        LedgerIter { ledger: self.clone(), next: start, failed: false }
    }
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger").field("dir", &self.inner.dir).field("height", &self.height()).finish()
    }
}

impl Inner {
    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // The index is only mutated by plain Vec/field updates; a panic
        // there cannot leave it half-updated in a harmful way.
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|poisoned| {
            // A panic during an append: what reached the file is unknown.
            let mut w = poisoned.into_inner();
            w.poisoned.get_or_insert_with(|| "an earlier append panicked".into());
            w
        })
    }
}

impl Writer {
    /// Records the offsets of blocks `first..` in the index (not fsynced:
    /// a checkpoint fsyncs it before it counts on it).
    fn index_append(&mut self, dir: &Path, first: u64, offsets: &[u64]) {
        let Some(index) = &self.index else { return };
        let bytes: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        let at = INDEX_MAGIC.len() as u64 + first * INDEX_ENTRY;
        if let Err(e) = index.write_all_at(&bytes, at) {
            tracing::warn!(dir = %dir.display(), error = %e, "ledger: writing {INDEX_FILE} at offset {at} failed; \
                no more checkpoints until reopened");
            self.index = None;
        }
    }

    /// Makes the index durable, then writes a checkpoint of everything
    /// durable so far. A failure is logged and stops checkpoints (the old
    /// checkpoint stays valid).
    fn checkpoint(&mut self, dir: &Path) {
        let (Some(index), Some(last_hash)) = (&self.index, self.last_hash) else { return };
        if self.poisoned.is_some() {
            return;
        }
        let done = index
            .sync_data()
            .map_err(|e| format!("fsyncing {INDEX_FILE}: {e}"))
            .and_then(|()| write_checkpoint(dir, self.height, self.end, &last_hash));
        match done {
            Ok(()) => self.checkpointed_end = self.end,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "ledger: checkpoint failed; no more checkpoints \
                    until reopened");
                self.index = None;
            }
        }
    }
}

impl Drop for Inner {
    /// Closing: a checkpoint of everything written, so that the next open
    /// scans nothing.
    fn drop(&mut self) {
        let w = self.writer.get_mut().unwrap_or_else(PoisonError::into_inner);
        if w.end != w.checkpointed_end && w.height > 0 {
            w.checkpoint(&self.dir);
        }
    }
}

/// The checkpoint's encoding.
fn encode_checkpoint(height: u64, end: u64, last_hash: &Hash) -> [u8; CHECKPOINT_LEN] {
    let mut b = [0u8; CHECKPOINT_LEN];
    b[..8].copy_from_slice(CHECKPOINT_MAGIC);
    b[8..16].copy_from_slice(&height.to_le_bytes());
    b[16..24].copy_from_slice(&end.to_le_bytes());
    b[24..56].copy_from_slice(last_hash);
    let crc = crc32c::crc32c(&b[..56]);
    b[56..60].copy_from_slice(&crc.to_le_bytes());
    b
}

/// (height, end, last hash) of a checkpoint's bytes.
fn decode_checkpoint(b: &[u8]) -> Result<(u64, u64, Hash), String> {
    if b.len() != CHECKPOINT_LEN {
        return Err(format!("{CHECKPOINT_FILE} is {} bytes, not {CHECKPOINT_LEN}", b.len()));
    }
    if &b[..8] != CHECKPOINT_MAGIC {
        return Err(format!("{CHECKPOINT_FILE} does not start with {:?}", String::from_utf8_lossy(CHECKPOINT_MAGIC)));
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let stored = u32::from_le_bytes(b[56..60].try_into().unwrap_or_default());
    let computed = crc32c::crc32c(&b[..56]);
    if stored != computed {
        return Err(format!("{CHECKPOINT_FILE} checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"));
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&b[24..56]);
    Ok((u64_at(8), u64_at(16), hash))
}

/// Writes the checkpoint atomically (temporary file, fsync, rename,
/// directory fsync).
fn write_checkpoint(dir: &Path, height: u64, end: u64, last_hash: &Hash) -> Result<(), String> {
    let tmp = dir.join(CHECKPOINT_TMP);
    let path = dir.join(CHECKPOINT_FILE);
    let mut f = File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    f.write_all(&encode_checkpoint(height, end, last_hash)).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    f.sync_all().map_err(|e| format!("fsyncing {}: {e}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), path.display()))?;
    sync_dir(dir).map_err(|e| format!("fsyncing {}: {e}", dir.display()))
}

/// Where a scan resumes: the verified blocks a checkpoint covers.
struct Resume {
    offsets: Vec<u64>,
    end: u64,
    last_hash: Hash,
}

/// The entries of the block index (all of them; Err if it is unreadable).
fn read_index(dir: &Path) -> Result<Option<Vec<u64>>, String> {
    let path = dir.join(INDEX_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {INDEX_FILE}: {e}")),
    };
    if bytes.len() < INDEX_MAGIC.len() || &bytes[..INDEX_MAGIC.len()] != INDEX_MAGIC {
        return Err(format!("{INDEX_FILE} does not start with {:?}", String::from_utf8_lossy(INDEX_MAGIC)));
    }
    Ok(Some(
        bytes[INDEX_MAGIC.len()..]
            .chunks_exact(INDEX_ENTRY as usize)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect(),
    ))
}

/// The checkpoint, checked against the index and the tail it covers (see
/// the module doc); None without a checkpoint, Err when it cannot be used.
fn load_checkpoint(dir: &Path, file: &File, file_len: u64) -> Result<Option<Resume>, String> {
    let bytes = match fs::read(dir.join(CHECKPOINT_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {CHECKPOINT_FILE}: {e}")),
    };
    let (height, end, last_hash) = decode_checkpoint(&bytes)?;
    if height == 0 {
        return Err(format!("{CHECKPOINT_FILE} covers no block"));
    }
    if end > file_len {
        return Err(format!(
            "{CHECKPOINT_FILE} covers blocks up to offset {end}, past the end of {BLOCK_FILE} ({file_len} bytes)"
        ));
    }
    let mut offsets = read_index(dir)?.ok_or_else(|| format!("{CHECKPOINT_FILE} exists but {INDEX_FILE} does not"))?;
    let n = usize::try_from(height).map_err(|_| format!("{CHECKPOINT_FILE} height {height} does not fit"))?;
    if offsets.len() < n {
        return Err(format!("{INDEX_FILE} has {} entries, the checkpoint covers {height} blocks", offsets.len()));
    }
    offsets.truncate(n);
    if offsets[0] != MAGIC_LEN {
        return Err(format!("{INDEX_FILE} puts block 0 at offset {}, not {MAGIC_LEN}", offsets[0]));
    }
    if let Some(i) = offsets.windows(2).position(|w| w[1] <= w[0] + RECORD_HEADER) {
        return Err(format!(
            "{INDEX_FILE}: block {} at offset {} does not follow block {i} at {}",
            i + 1,
            offsets[i + 1],
            offsets[i]
        ));
    }
    // The tail it covers: the last block ends at `end`, passes its
    // checksum, and is block height-1 with the recorded header hash.
    let at = offsets[n - 1];
    if at + RECORD_HEADER > end {
        return Err(format!("{INDEX_FILE} puts block {} at offset {at}, past the checkpoint's end {end}", height - 1));
    }
    let mut record = vec![0u8; usize::try_from(end - at).map_err(|_| "record too large".to_string())?];
    file.read_exact_at(&mut record, at).map_err(|e| format!("reading block {} at offset {at}: {e}", height - 1))?;
    let (len, crc) = parse_record_header(&record);
    if RECORD_HEADER + u64::from(len) != end - at {
        return Err(format!("block {} at offset {at} does not end at the checkpoint's end {end}", height - 1));
    }
    let body = Bytes::from(record).slice(RECORD_HEADER as usize..);
    if crc32c::crc32c(&body) != crc {
        return Err(format!("block {} at offset {at} fails its checksum", height - 1));
    }
    let header = match HeaderOnly::decode(body) {
        Ok(HeaderOnly { header: Some(h) }) => h,
        _ => return Err(format!("block {} at offset {at} has no decodable header", height - 1)),
    };
    if header.number != height - 1 || header_hash(&header) != last_hash {
        return Err(format!(
            "the block at offset {at} is block {} with header hash {}, the checkpoint says block {} with {}",
            header.number,
            hex(&header_hash(&header)),
            height - 1,
            hex(&last_hash)
        ));
    }
    Ok(Some(Resume { offsets, end, last_hash }))
}

/// Makes the index hold exactly `offsets`, rewriting only the entries from
/// block `from` on (the ones before are the checkpoint's, already there);
/// returns its handle for appends.
fn write_index_tail(dir: &Path, offsets: &[u64], from: u64) -> Result<File, String> {
    let path = dir.join(INDEX_FILE);
    let index = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let keep = INDEX_MAGIC.len() as u64 + from * INDEX_ENTRY;
    index.set_len(keep).map_err(|e| format!("truncating {INDEX_FILE} to {keep} bytes: {e}"))?;
    if from == 0 {
        index.write_all_at(INDEX_MAGIC, 0).map_err(|e| format!("writing the magic of {INDEX_FILE}: {e}"))?;
    }
    let rest: Vec<u8> = offsets[usize::try_from(from).unwrap_or(usize::MAX).min(offsets.len())..]
        .iter()
        .flat_map(|o| o.to_le_bytes())
        .collect();
    index.write_all_at(&rest, keep).map_err(|e| format!("writing {INDEX_FILE} at offset {keep}: {e}"))?;
    Ok(index)
}

/// Iterator over durable blocks (raw bytes) from a starting number; see
/// [`Ledger::iter_from`].
#[derive(Debug)]
pub struct LedgerIter {
    ledger: Ledger,
    next: u64,
    failed: bool,
}

impl LedgerIter {
    /// Number of the block the next call to `next()` returns.
    pub fn position(&self) -> u64 {
        self.next
    }
}

impl Iterator for LedgerIter {
    type Item = Result<Bytes, LedgerError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.ledger.block_bytes(self.next) {
            Ok(Some(raw)) => {
                self.next += 1;
                Some(Ok(raw))
            }
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Verifies the ledger in `dir` read-only (never truncating or creating
/// anything) and returns its height. A torn tail, which [`Ledger::open`]
/// would cut, is reported as [`LedgerError::TornTail`].
pub fn verify_dir(dir: &Path) -> Result<u64, LedgerError> {
    let path = dir.join(BLOCK_FILE);
    let file = File::open(&path).map_err(|e| io_err(dir, format!("opening {} for reading", path.display()), e))?;
    let scan = scan(dir, &file, None)?;
    let height = scan.offsets.len() as u64;
    if scan.tail.is_none() {
        check_index(dir, &scan)?;
    }
    match scan.tail {
        None => Ok(height),
        Some(tail) => Err(LedgerError::TornTail {
            dir: dir.to_path_buf(),
            height,
            offset: tail.offset,
            bytes: tail.bytes,
            reason: tail.reason,
        }),
    }
}

/// [`verify_dir`]'s check of the index and checkpoint against a full scan:
/// every index entry of a scanned block must be its offset, and the
/// checkpoint must describe a prefix of the scanned chain.
fn check_index(dir: &Path, scan: &Scan) -> Result<(), LedgerError> {
    let corrupt = |number: u64, offset: u64, reason: String| LedgerError::Corrupt {
        dir: dir.to_path_buf(),
        number,
        offset,
        reason,
    };
    let index = read_index(dir).map_err(|e| corrupt(0, 0, e))?.unwrap_or_default();
    for (i, (got, want)) in index.iter().zip(&scan.offsets).enumerate() {
        if got != want {
            return Err(corrupt(i as u64, *want, format!("{INDEX_FILE} says offset {got} for it")));
        }
    }
    let bytes = match fs::read(dir.join(CHECKPOINT_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir, format!("reading {CHECKPOINT_FILE}"), e)),
    };
    let (height, end, hash) = decode_checkpoint(&bytes).map_err(|e| corrupt(0, 0, e))?;
    let n = usize::try_from(height).unwrap_or(usize::MAX);
    let scanned_end = scan.offsets.get(n).copied().unwrap_or(scan.end);
    if n == 0 || n > scan.offsets.len() || scanned_end != end || (index.len() as u64) < height {
        return Err(corrupt(
            height.saturating_sub(1),
            end,
            format!("{CHECKPOINT_FILE} (height {height}, end {end}) does not match the blocks"),
        ));
    }
    let mut header = [0u8; RECORD_HEADER as usize];
    let at = scan.offsets[n - 1];
    let file = File::open(dir.join(BLOCK_FILE)).map_err(|e| io_err(dir, format!("opening {BLOCK_FILE}"), e))?;
    file.read_exact_at(&mut header, at).map_err(|e| io_err(dir, format!("reading offset {at}"), e))?;
    let mut body = vec![0u8; parse_record_header(&header).0 as usize];
    file.read_exact_at(&mut body, at + RECORD_HEADER).map_err(|e| io_err(dir, format!("reading offset {at}"), e))?;
    let h = HeaderOnly::decode(Bytes::from(body)).ok().and_then(|h| h.header);
    if h.map(|h| header_hash(&h)) != Some(hash) {
        return Err(corrupt(height - 1, at, format!("{CHECKPOINT_FILE} has another header hash for it")));
    }
    Ok(())
}

/// Result of scanning a block file.
struct Scan {
    offsets: Vec<u64>,
    /// End of the last good record (or of the magic).
    end: u64,
    last_hash: Option<Hash>,
    tail: Option<Tail>,
}

/// A torn tail: `bytes` bytes from `offset` to the end of the file.
struct Tail {
    offset: u64,
    bytes: u64,
    reason: String,
}

/// Reads and checks every record of the block file (after `resume`'s
/// blocks, when given); see the module doc for what counts as a torn tail
/// and what as corruption.
fn scan(dir: &Path, file: &File, resume: Option<Resume>) -> Result<Scan, LedgerError> {
    let file_len = file.metadata().map_err(|e| io_err(dir, format!("reading the size of {BLOCK_FILE}"), e))?.len();
    let read_at = |buf: &mut [u8], offset: u64| {
        file.read_exact_at(buf, offset)
            .map_err(|e| io_err(dir, format!("reading {} bytes at offset {offset} of {BLOCK_FILE}", buf.len()), e))
    };

    // Magic.
    let mut magic = [0u8; MAGIC.len()];
    let head = magic.len().min(usize::try_from(file_len).unwrap_or(usize::MAX));
    read_at(&mut magic[..head], 0)?;
    if head < MAGIC.len() {
        if MAGIC.starts_with(&magic[..head]) {
            return Ok(Scan {
                offsets: Vec::new(),
                end: 0,
                last_hash: None,
                tail: Some(Tail { offset: 0, bytes: file_len, reason: format!("file magic torn ({head} of 8 bytes)") }),
            });
        }
        return Err(LedgerError::BadMagic { dir: dir.to_path_buf(), found: hex(&magic[..head]) });
    }
    if &magic != MAGIC {
        return Err(LedgerError::BadMagic { dir: dir.to_path_buf(), found: hex(&magic) });
    }

    let (mut offsets, mut last_hash, mut pos) = match resume {
        Some(r) => (r.offsets, Some(r.last_hash), r.end),
        None => (Vec::new(), None, MAGIC_LEN),
    };
    while pos < file_len {
        let number = offsets.len() as u64;
        let corrupt =
            move |reason: String| LedgerError::Corrupt { dir: dir.to_path_buf(), number, offset: pos, reason };
        let remaining = file_len - pos;
        if remaining < RECORD_HEADER {
            let reason = format!("partial record header ({remaining} of {RECORD_HEADER} bytes)");
            return Ok(Scan {
                offsets,
                end: pos,
                last_hash,
                tail: Some(Tail { offset: pos, bytes: remaining, reason }),
            });
        }
        let mut header = [0u8; RECORD_HEADER as usize];
        read_at(&mut header, pos)?;
        let (len, crc) = parse_record_header(&header);
        let len = u64::from(len);
        let record_end = pos + RECORD_HEADER + len;

        let problem = if len == 0 {
            Some("zero-length record".to_string())
        } else if len > MAX_BLOCK_LEN {
            Some(format!("record length {len} exceeds the {MAX_BLOCK_LEN}-byte cap"))
        } else if record_end > file_len {
            Some(format!("partial record ({len} bytes declared, {} present)", remaining - RECORD_HEADER))
        } else {
            let mut body = vec![0u8; len as usize];
            read_at(&mut body, pos + RECORD_HEADER)?;
            let computed = crc32c::crc32c(&body);
            if computed != crc {
                Some(format!("checksum mismatch (stored {crc:#010x}, computed {computed:#010x})"))
            } else {
                match Block::decode(Bytes::from(body)) {
                    Err(e) => Some(format!("block does not decode: {e}")),
                    Ok(Block { header: None, .. }) => Some("block has no header".to_string()),
                    Ok(block) => {
                        // A well-formed record: the chain must hold.
                        let header = block.header.as_ref().ok_or_else(|| corrupt("block has no header".into()))?;
                        if header.number != number {
                            return Err(corrupt(format!("header says block {}", header.number)));
                        }
                        if number > 0 && last_hash.as_ref().map(|h| &h[..]) != Some(&header.previous_hash[..]) {
                            return Err(corrupt(format!(
                                "previous_hash {} is not the header hash of block {} ({})",
                                hex(&header.previous_hash),
                                number - 1,
                                last_hash.map(|h| hex(&h)).unwrap_or_default(),
                            )));
                        }
                        check_data_hash(&block).map_err(|e| corrupt(e.to_string()))?;
                        last_hash = Some(header_hash(header));
                        None
                    }
                }
            }
        };

        if let Some(reason) = problem {
            if record_end >= file_len
                || zeros_to_end(file, pos, file_len)
                    .map_err(|e| io_err(dir, format!("reading the tail of {BLOCK_FILE} from offset {pos}"), e))?
            {
                return Ok(Scan {
                    offsets,
                    end: pos,
                    last_hash,
                    tail: Some(Tail { offset: pos, bytes: remaining, reason }),
                });
            }
            return Err(corrupt(format!("{reason}, and {} more bytes follow it", file_len - record_end)));
        }
        offsets.push(pos);
        pos = record_end;
    }
    Ok(Scan { offsets, end: pos, last_hash, tail: None })
}

/// Whether every byte of the file from `from` to `to` is zero.
fn zeros_to_end(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; ZERO_SCAN_CHUNK];
    let mut pos = from;
    while pos < to {
        let n = usize::try_from(to - pos).unwrap_or(usize::MAX).min(buf.len());
        file.read_exact_at(&mut buf[..n], pos)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

/// The 8-byte record header of a block: u32 LE length, u32 LE crc32c.
/// The caller has checked that the length fits the cap.
fn record_header(block: &[u8]) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&(block.len() as u32).to_le_bytes());
    h[4..].copy_from_slice(&crc32c::crc32c(block).to_le_bytes());
    h
}

/// (length, crc) from the first 8 bytes of `record` (at least 8 long).
fn parse_record_header(record: &[u8]) -> (u32, u32) {
    let word = |i: usize| u32::from_le_bytes([record[i], record[i + 1], record[i + 2], record[i + 3]]);
    (word(0), word(4))
}

/// `write_all` for a vectored write: loops over short writes (and over
/// IOV_MAX, which `write_vectored` caps at).
fn write_all_vectored(file: &mut File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0 bytes")),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates `dir` if missing, fsyncing its parent so the new entry is durable.
fn ensure_dir(dir: &Path) -> Result<(), LedgerError> {
    let exists = dir.try_exists().map_err(|e| io_err(dir, "checking the directory".into(), e))?;
    if exists {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| io_err(dir, "creating the directory".into(), e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).map_err(|e| io_err(dir, format!("fsyncing the parent directory {}", parent.display()), e))?;
    }
    Ok(())
}

/// Creates `blocks.dat` holding only the magic, atomically: written to a
/// temporary file, fsynced, renamed into place, directory fsynced.
fn create_block_file(dir: &Path) -> Result<(), LedgerError> {
    let tmp = dir.join(BLOCK_FILE_TMP);
    let path = dir.join(BLOCK_FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io_err(dir, format!("creating {}", tmp.display()), e))?;
    f.write_all(MAGIC).map_err(|e| io_err(dir, format!("writing the magic at offset 0 of {}", tmp.display()), e))?;
    f.sync_all().map_err(|e| io_err(dir, format!("fsyncing {}", tmp.display()), e))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(|e| io_err(dir, format!("renaming {} to {}", tmp.display(), path.display()), e))?;
    sync_dir(dir).map_err(|e| io_err(dir, "fsyncing the directory".into(), e))?;
    tracing::info!(dir = %dir.display(), "ledger: created {BLOCK_FILE}");
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn io_err(dir: &Path, op: String, source: io::Error) -> LedgerError {
    LedgerError::Io { dir: dir.to_path_buf(), op, source }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;
    use std::time::Duration;

    use super::*;
    use crate::block::new_block;

    /// Builds linked test blocks.
    struct Chain {
        next: u64,
        prev: Vec<u8>,
    }

    impl Chain {
        fn new() -> Chain {
            // Block 0 may link to anything.
            Chain { next: 0, prev: vec![7; 32] }
        }

        fn block(&mut self) -> Bytes {
            let n = self.next;
            let envelopes = vec![Bytes::from(format!("envelope {n} a").repeat(n as usize + 1)), Bytes::from("b")];
            let block = new_block(n, &self.prev, envelopes);
            self.prev = header_hash(block.header.as_ref().unwrap()).to_vec();
            self.next += 1;
            Bytes::from(block.encode_to_vec())
        }

        fn blocks(&mut self, count: usize) -> Vec<Bytes> {
            (0..count).map(|_| self.block()).collect()
        }
    }

    /// File offset of each record of `blocks` written from an empty file.
    fn record_offsets(blocks: &[Bytes]) -> Vec<u64> {
        let mut pos = MAGIC_LEN;
        blocks
            .iter()
            .map(|b| {
                let at = pos;
                pos += RECORD_HEADER + b.len() as u64;
                at
            })
            .collect()
    }

    fn block_file(dir: &Path) -> PathBuf {
        dir.join(BLOCK_FILE)
    }

    fn file_len(dir: &Path) -> u64 {
        fs::metadata(block_file(dir)).unwrap().len()
    }

    /// Removes the checkpoint, so that open scans the whole file.
    fn forget_checkpoint(dir: &Path) {
        fs::remove_file(dir.join(CHECKPOINT_FILE)).unwrap();
    }

    fn checkpoint_of(dir: &Path) -> (u64, u64, Hash) {
        decode_checkpoint(&fs::read(dir.join(CHECKPOINT_FILE)).unwrap()).unwrap()
    }

    fn flip_byte(dir: &Path, offset: u64) {
        let f = OpenOptions::new().read(true).write(true).open(block_file(dir)).unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, offset).unwrap();
        f.write_all_at(&[b[0] ^ 0x55], offset).unwrap();
    }

    fn truncate(dir: &Path, len: u64) {
        OpenOptions::new().write(true).open(block_file(dir)).unwrap().set_len(len).unwrap();
    }

    /// Writes a block file with well-formed records (valid checksums) for
    /// arbitrary block bytes, bypassing append's checks.
    fn write_raw(dir: &Path, blocks: &[Bytes]) {
        let mut out = MAGIC.to_vec();
        for b in blocks {
            out.extend_from_slice(&record_header(b));
            out.extend_from_slice(b);
        }
        fs::write(block_file(dir), out).unwrap();
    }

    /// Three blocks appended (in two groups) to a fresh ledger, closed.
    fn three_blocks(dir: &Path) -> Vec<Bytes> {
        let blocks = Chain::new().blocks(3);
        let ledger = Ledger::open(dir).unwrap();
        ledger.append(&blocks[..1]).unwrap();
        ledger.append(&blocks[1..]).unwrap();
        blocks
    }

    fn expect_corrupt(dir: &Path, want_number: u64, want_offset: u64) {
        match Ledger::open(dir) {
            Err(LedgerError::Corrupt { number, offset, ref reason, .. }) => {
                assert_eq!((number, offset), (want_number, want_offset), "{reason}");
            }
            other => panic!("expected Corrupt for block {want_number}, got {other:?}"),
        }
    }

    fn poll_once<F: Future + Unpin>(fut: &mut F) -> impl Future<Output = bool> + '_ {
        std::future::poll_fn(move |cx| Poll::Ready(std::pin::Pin::new(&mut *fut).poll(cx).is_pending()))
    }

    #[test]
    fn ledger_is_send_sync_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<Ledger>();
        fn assert_send<T: Send>(_: &T) {}
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_send(&ledger.wait_for(0));
    }

    #[test]
    fn new_ledger_is_empty_with_magic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mychannel");
        let ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.height(), 0);
        assert_eq!(ledger.inner.read_index().last_hash, None);
        assert!(ledger.block_bytes(0).unwrap().is_none());
        assert_eq!(fs::read(block_file(&path)).unwrap(), MAGIC);
        assert!(!path.join(BLOCK_FILE_TMP).exists());
        drop(ledger);
        assert_eq!(verify_dir(&path).unwrap(), 0);
    }

    #[test]
    fn append_and_reopen_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = Chain::new();
        let blocks = chain.blocks(5);
        {
            let ledger = Ledger::open(dir.path()).unwrap();
            ledger.append(&blocks[..2]).unwrap();
            ledger.append(&[]).unwrap();
            ledger.append(&blocks[2..]).unwrap();
            assert_eq!(ledger.height(), 5);
            for (i, b) in blocks.iter().enumerate() {
                assert_eq!(ledger.block_bytes(i as u64).unwrap().unwrap(), *b);
            }
        }
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.height(), 5);
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(ledger.block_bytes(i as u64).unwrap().unwrap(), *b, "block {i}");
        }
        assert!(ledger.block_bytes(5).unwrap().is_none());
        let last = Block::decode(blocks[4].clone()).unwrap();
        assert_eq!(ledger.inner.read_index().last_hash, Some(header_hash(last.header.as_ref().unwrap())));
        assert_eq!(ledger.block(4).unwrap().unwrap(), last);
        assert!(ledger.block(5).unwrap().is_none());
        assert_eq!(file_len(dir.path()), MAGIC_LEN + blocks.iter().map(|b| 8 + b.len() as u64).sum::<u64>());

        // Appending continues the chain after a reopen.
        ledger.append(&[chain.block()]).unwrap();
        assert_eq!(ledger.height(), 6);
        drop(ledger);
        assert_eq!(verify_dir(dir.path()).unwrap(), 6);
    }

    #[test]
    fn refuses_wrong_number_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = Chain::new().blocks(4);
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.append(&blocks[..1]).unwrap();
        let len = file_len(dir.path());

        // Skipping a block.
        let err = ledger.append(&blocks[2..3]).unwrap_err();
        assert!(matches!(err, LedgerError::WrongNumber { index: 0, expected: 1, found: 2, .. }), "{err}");
        // Out of order inside a group: the good first element is not written either.
        let err = ledger.append(&[blocks[1].clone(), blocks[3].clone()]).unwrap_err();
        assert!(matches!(err, LedgerError::WrongNumber { index: 1, expected: 2, found: 3, .. }), "{err}");
        // Repeating a block.
        let err = ledger.append(&blocks[..1]).unwrap_err();
        assert!(matches!(err, LedgerError::WrongNumber { expected: 1, found: 0, .. }), "{err}");
        // Not a block.
        let err = ledger.append(&[Bytes::from_static(b"\xff\xff\xff")]).unwrap_err();
        assert!(matches!(err, LedgerError::InvalidBlock { expected: 1, .. }), "{err}");
        let err = ledger.append(&[Bytes::new()]).unwrap_err();
        assert!(matches!(err, LedgerError::InvalidBlock { expected: 1, .. }), "{err}");

        assert_eq!(ledger.height(), 1);
        assert_eq!(file_len(dir.path()), len);
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.height(), 1);
        // The ledger still accepts the right block.
        ledger.append(&blocks[1..]).unwrap();
        assert_eq!(ledger.height(), 4);
    }

    #[test]
    fn refuses_wrong_previous_hash_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let good = Chain::new().blocks(2);
        // Block 1 linking to something else.
        let bad = Bytes::from(new_block(1, &[9; 32], vec![Bytes::from("x")]).encode_to_vec());
        let ledger = Ledger::open(dir.path()).unwrap();

        let err = ledger.append(&[good[0].clone(), bad.clone()]).unwrap_err();
        assert!(matches!(err, LedgerError::WrongPreviousHash { number: 1, .. }), "{err}");
        assert!(err.to_string().contains(&hex(&[9; 32])), "{err}");
        assert_eq!(ledger.height(), 0);
        assert_eq!(file_len(dir.path()), MAGIC_LEN);

        ledger.append(&good[..1]).unwrap();
        let err = ledger.append(&[bad]).unwrap_err();
        assert!(matches!(err, LedgerError::WrongPreviousHash { number: 1, .. }), "{err}");
        drop(ledger);
        assert_eq!(Ledger::open(dir.path()).unwrap().height(), 1);
    }

    #[test]
    fn torn_tail_mid_length_prefix_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = three_blocks(dir.path());
        let offsets = record_offsets(&blocks);
        truncate(dir.path(), offsets[2] + 3);
        check_recovered_to_two(dir.path(), &blocks, offsets[2]);
    }

    #[test]
    fn torn_tail_mid_record_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = three_blocks(dir.path());
        let offsets = record_offsets(&blocks);
        truncate(dir.path(), offsets[2] + RECORD_HEADER + 10);
        check_recovered_to_two(dir.path(), &blocks, offsets[2]);
    }

    #[test]
    fn checksum_mismatch_in_last_record_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = three_blocks(dir.path());
        let offsets = record_offsets(&blocks);
        flip_byte(dir.path(), offsets[2] + RECORD_HEADER + blocks[2].len() as u64 / 2);
        check_recovered_to_two(dir.path(), &blocks, offsets[2]);
    }

    #[test]
    fn zero_filled_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = three_blocks(dir.path());
        let offsets = record_offsets(&blocks);
        // The file grew, but the last record's pages never reached the disk.
        let end = file_len(dir.path());
        let f = OpenOptions::new().write(true).open(block_file(dir.path())).unwrap();
        f.write_all_at(&vec![0u8; (end - offsets[2]) as usize + 4096], offsets[2]).unwrap();
        drop(f);
        check_recovered_to_two(dir.path(), &blocks, offsets[2]);
    }

    /// Opens a ledger whose third record is torn at `torn_at`: two blocks
    /// survive, the file is cut there, and appends continue at block 2.
    fn check_recovered_to_two(dir: &Path, blocks: &[Bytes], torn_at: u64) {
        let ledger = Ledger::open(dir).unwrap();
        assert_eq!(ledger.height(), 2);
        assert_eq!(file_len(dir), torn_at);
        assert_eq!(ledger.block_bytes(0).unwrap().unwrap(), blocks[0]);
        assert_eq!(ledger.block_bytes(1).unwrap().unwrap(), blocks[1]);
        assert!(ledger.block_bytes(2).unwrap().is_none());
        let b1 = Block::decode(blocks[1].clone()).unwrap();
        assert_eq!(ledger.inner.read_index().last_hash, Some(header_hash(b1.header.as_ref().unwrap())));

        ledger.append(&blocks[2..3]).unwrap();
        assert_eq!(ledger.height(), 3);
        drop(ledger);
        let ledger = Ledger::open(dir).unwrap();
        assert_eq!(ledger.height(), 3);
        assert_eq!(ledger.block_bytes(2).unwrap().unwrap(), blocks[2]);
    }

    #[test]
    fn torn_magic_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(block_file(dir.path()), &MAGIC[..3]).unwrap();
        assert!(matches!(verify_dir(dir.path()), Err(LedgerError::TornTail { height: 0, offset: 0, bytes: 3, .. })));
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.height(), 0);
        ledger.append(&Chain::new().blocks(1)).unwrap();
        drop(ledger);
        assert_eq!(verify_dir(dir.path()).unwrap(), 1);
    }

    #[test]
    fn bad_magic_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(block_file(dir.path()), b"not a ledger at all").unwrap();
        let err = Ledger::open(dir.path()).unwrap_err();
        assert!(matches!(err, LedgerError::BadMagic { .. }), "{err}");
        assert_eq!(fs::read(block_file(dir.path())).unwrap(), b"not a ledger at all");
    }

    #[test]
    fn corruption_in_the_middle_fails_open() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = three_blocks(dir.path());
        let offsets = record_offsets(&blocks);
        let before = fs::read(block_file(dir.path())).unwrap();
        flip_byte(dir.path(), offsets[0] + RECORD_HEADER + blocks[0].len() as u64 / 2);
        let flipped = fs::read(block_file(dir.path())).unwrap();
        assert_ne!(before, flipped);

        // Under the checkpoint, open does not read block 0 again; verify
        // and reading it find the damage.
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.height(), 3, "opened from the checkpoint");
        assert!(matches!(ledger.block_bytes(0), Err(LedgerError::Corrupt { number: 0, .. })));
        drop(ledger);
        assert!(matches!(verify_dir(dir.path()), Err(LedgerError::Corrupt { number: 0, .. })));
        // Without the checkpoint, open scans everything and refuses.
        forget_checkpoint(dir.path());
        expect_corrupt(dir.path(), 0, offsets[0]);
        let err = Ledger::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("block 0 at offset 8"), "{err}");
        assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
        // Nothing was truncated.
        assert_eq!(fs::read(block_file(dir.path())).unwrap(), flipped);
        assert!(matches!(verify_dir(dir.path()), Err(LedgerError::Corrupt { number: 0, .. })));
    }

    #[test]
    fn corrupt_checksum_field_in_the_middle_fails_open() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = three_blocks(dir.path());
        let offsets = record_offsets(&blocks);
        flip_byte(dir.path(), offsets[1] + 5);
        assert!(matches!(verify_dir(dir.path()), Err(LedgerError::Corrupt { number: 1, .. })));
        forget_checkpoint(dir.path());
        expect_corrupt(dir.path(), 1, offsets[1]);
        assert_eq!(file_len(dir.path()), offsets[2] + RECORD_HEADER + blocks[2].len() as u64);
    }

    #[test]
    fn chain_breaks_with_valid_checksums_fail_open() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = Chain::new().blocks(3);
        let offsets = record_offsets(&blocks);

        // Block 1 missing: block 2 sits at index 1.
        write_raw(dir.path(), &[blocks[0].clone(), blocks[2].clone()]);
        expect_corrupt(dir.path(), 1, offsets[1]);

        // Block 1 linking correctly but numbered 5.
        let b0 = Block::decode(blocks[0].clone()).unwrap();
        let h0 = header_hash(b0.header.as_ref().unwrap());
        let misnumbered = Bytes::from(new_block(5, &h0, vec![Bytes::from("x")]).encode_to_vec());
        write_raw(dir.path(), &[blocks[0].clone(), misnumbered, blocks[2].clone()]);
        expect_corrupt(dir.path(), 1, offsets[1]);
        let err = Ledger::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("header says block 5"), "{err}");

        // Block 1 linking elsewhere (even as the last record: it is not torn).
        let bad1 = Bytes::from(new_block(1, &[9; 32], vec![Bytes::from("x")]).encode_to_vec());
        write_raw(dir.path(), &[blocks[0].clone(), bad1]);
        expect_corrupt(dir.path(), 1, offsets[1]);

        // Block 2's data does not match its data hash.
        let mut b2 = Block::decode(blocks[2].clone()).unwrap();
        b2.data.as_mut().unwrap().data.push(Bytes::from("smuggled"));
        let b2 = Bytes::from(b2.encode_to_vec());
        write_raw(dir.path(), &[blocks[0].clone(), blocks[1].clone(), b2]);
        expect_corrupt(dir.path(), 2, offsets[2]);
        assert!(matches!(verify_dir(dir.path()), Err(LedgerError::Corrupt { number: 2, .. })));

        // And the intact chain opens.
        write_raw(dir.path(), &blocks);
        assert_eq!(Ledger::open(dir.path()).unwrap().height(), 3);
    }

    #[test]
    fn verify_dir_reports_torn_tail_without_modifying() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = three_blocks(dir.path());
        let offsets = record_offsets(&blocks);
        assert_eq!(verify_dir(dir.path()).unwrap(), 3);

        truncate(dir.path(), offsets[2] + RECORD_HEADER + 10);
        let before = fs::read(block_file(dir.path())).unwrap();
        match verify_dir(dir.path()) {
            Err(LedgerError::TornTail { height, offset, bytes, .. }) => {
                assert_eq!((height, offset, bytes), (2, offsets[2], RECORD_HEADER + 10));
            }
            other => panic!("expected TornTail, got {other:?}"),
        }
        assert_eq!(fs::read(block_file(dir.path())).unwrap(), before);

        // open() does cut it; verify is then clean.
        assert_eq!(Ledger::open(dir.path()).unwrap().height(), 2);
        assert_eq!(verify_dir(dir.path()).unwrap(), 2);
    }

    #[test]
    fn verify_dir_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nochannel");
        let err = verify_dir(&missing).unwrap_err();
        assert!(matches!(err, LedgerError::Io { .. }), "{err}");
        assert!(!missing.exists());
    }

    #[test]
    fn second_open_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let err = Ledger::open(dir.path()).unwrap_err();
        assert!(matches!(err, LedgerError::Locked { .. }), "{err}");
        drop(ledger);
        Ledger::open(dir.path()).unwrap();
    }

    #[test]
    fn io_error_poisons_appends() {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = Chain::new();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.append(&[chain.block()]).unwrap();
        // Swap the writer's handle for a read-only one so the write fails.
        ledger.inner.writer().file = File::open(block_file(dir.path())).unwrap();
        let b1 = chain.block();
        let err = ledger.append(std::slice::from_ref(&b1)).unwrap_err();
        assert!(matches!(err, LedgerError::Io { .. }), "{err}");
        assert_eq!(ledger.height(), 1);
        let err = ledger.append(std::slice::from_ref(&b1)).unwrap_err();
        assert!(matches!(err, LedgerError::Poisoned { .. }), "{err}");
        assert!(err.to_string().contains("block"), "{err}");
        drop(ledger);
        // Reopening recovers.
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.height(), 1);
        ledger.append(&[b1]).unwrap();
        assert_eq!(ledger.height(), 2);
    }

    #[test]
    fn read_detects_corruption_after_open() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = Chain::new().blocks(2);
        let offsets = record_offsets(&blocks);
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.append(&blocks).unwrap();
        flip_byte(dir.path(), offsets[1] + RECORD_HEADER + 1);
        assert_eq!(ledger.block_bytes(0).unwrap().unwrap(), blocks[0]);
        let err = ledger.block_bytes(1).unwrap_err();
        assert!(matches!(err, LedgerError::Corrupt { number: 1, offset, .. } if offset == offsets[1]), "{err}");
    }

    #[test]
    fn iter_from_yields_durable_blocks_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = Chain::new();
        let blocks = chain.blocks(5);
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.append(&blocks).unwrap();

        let all: Vec<Bytes> = ledger.iter_from(0).map(Result::unwrap).collect();
        assert_eq!(all, blocks);

        let mut it = ledger.iter_from(2);
        assert_eq!(it.position(), 2);
        assert_eq!(it.next().unwrap().unwrap(), blocks[2]);
        assert_eq!(it.next().unwrap().unwrap(), blocks[3]);
        assert_eq!(it.next().unwrap().unwrap(), blocks[4]);
        assert!(it.next().is_none());
        assert!(it.next().is_none());
        assert_eq!(it.position(), 5);

        let b5 = chain.block();
        ledger.append(std::slice::from_ref(&b5)).unwrap();
        assert_eq!(it.next().unwrap().unwrap(), b5);
        assert!(it.next().is_none());

        assert!(ledger.iter_from(6).next().is_none());
        assert!(ledger.iter_from(u64::MAX).next().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wait_for_wakes_on_append_from_another_thread() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let blocks = Chain::new().blocks(2);

        let mut waiting = pin!(ledger.wait_for(1));
        assert!(poll_once(&mut waiting).await, "block 1 is not there yet");

        // Block 0 alone does not satisfy a wait for block 1.
        let writer = ledger.clone();
        let b0 = blocks[0].clone();
        std::thread::spawn(move || writer.append(&[b0]).unwrap()).join().unwrap();
        assert_eq!(ledger.height(), 1);
        assert!(poll_once(&mut waiting).await, "block 1 is still not there");
        // ...but a wait for block 0 returns at once.
        assert!(!poll_once(&mut pin!(ledger.wait_for(0))).await, "block 0 is durable");

        let mut rx = ledger.inner.height_tx.subscribe();
        assert_eq!(*rx.borrow_and_update(), 1);
        let writer = ledger.clone();
        let b1 = blocks[1].clone();
        let handle = std::thread::spawn(move || writer.append(&[b1]).unwrap());
        // The timeout is a safety net for a broken implementation, not synchronisation.
        tokio::time::timeout(Duration::from_secs(30), &mut waiting).await.expect("wait_for(1) woke");
        assert_eq!(ledger.height(), 2);
        assert_eq!(ledger.block_bytes(1).unwrap().unwrap(), blocks[1]);
        tokio::time::timeout(Duration::from_secs(30), rx.changed()).await.unwrap().unwrap();
        assert_eq!(*rx.borrow(), 2);
        handle.join().unwrap();
    }

    #[test]
    fn close_checkpoints_and_open_scans_only_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = Chain::new();
        let blocks = chain.blocks(4);
        let offsets = record_offsets(&blocks);
        let end = |n: usize| offsets[n - 1] + RECORD_HEADER + blocks[n - 1].len() as u64;
        {
            let ledger = Ledger::open(dir.path()).unwrap();
            ledger.append(&blocks[..3]).unwrap();
            assert!(!dir.path().join(CHECKPOINT_FILE).exists(), "no checkpoint before 64 MB or close");
        }
        // Closed: a checkpoint of the 3 blocks; the index has their offsets.
        let last = header_hash(Block::decode(blocks[2].clone()).unwrap().header.as_ref().unwrap());
        assert_eq!(checkpoint_of(dir.path()), (3, end(3), last));
        assert_eq!(read_index(dir.path()).unwrap().unwrap(), offsets[..3]);

        // A record written after the checkpoint (as by a crash after the
        // fsync of a group but before any checkpoint) is scanned and checked.
        let mut f = OpenOptions::new().append(true).open(block_file(dir.path())).unwrap();
        f.write_all(&record_header(&blocks[3])).unwrap();
        f.write_all(&blocks[3]).unwrap();
        drop(f);
        // Damage under the checkpoint, except its last block, is not read
        // by open (so open's cost does not grow with the ledger).
        flip_byte(dir.path(), offsets[0] + RECORD_HEADER + 3);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.height(), 4);
        assert_eq!(ledger.block_bytes(3).unwrap().unwrap(), blocks[3]);
        // Open moved the checkpoint and the index to what it scanned.
        assert_eq!(checkpoint_of(dir.path()).0, 4);
        assert_eq!(read_index(dir.path()).unwrap().unwrap(), offsets);
        drop(ledger);
        assert!(matches!(verify_dir(dir.path()), Err(LedgerError::Corrupt { number: 0, .. })));
    }

    #[test]
    fn records_after_the_checkpoint_get_every_check() {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = Chain::new();
        let blocks = chain.blocks(3);
        Ledger::open(dir.path()).unwrap().append(&blocks[..2]).unwrap();
        // A well-formed record after the checkpoint that breaks the chain
        // (block 2's successor in place of block 2), with more after it.
        let skipped = chain.block();
        let mut f = OpenOptions::new().append(true).open(block_file(dir.path())).unwrap();
        for b in [&skipped, &blocks[2]] {
            f.write_all(&record_header(b)).unwrap();
            f.write_all(b).unwrap();
        }
        drop(f);
        let offsets = record_offsets(&blocks[..2]);
        let at = offsets[1] + RECORD_HEADER + blocks[1].len() as u64;
        expect_corrupt(dir.path(), 2, at);
    }

    #[test]
    fn a_checkpoint_that_does_not_match_the_tail_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = three_blocks(dir.path());
        let offsets = record_offsets(&blocks);
        let (h, end, hash) = checkpoint_of(dir.path());
        assert_eq!(h, 3);
        let (o0, o1, o2) = (offsets[0], offsets[1], offsets[2]);
        // Each of these makes open fall back to a full scan, which still
        // finds the 3 blocks (and writes a good checkpoint again).
        type Damage = Box<dyn Fn(&Path)>;
        let cases: Vec<Damage> = vec![
            Box::new(|d| fs::write(d.join(CHECKPOINT_FILE), b"garbage").unwrap()),
            Box::new(move |d| {
                let mut b = encode_checkpoint(3, end, &hash);
                b[20] ^= 1; // checksum no longer matches
                fs::write(d.join(CHECKPOINT_FILE), b).unwrap()
            }),
            Box::new(move |d| fs::write(d.join(CHECKPOINT_FILE), encode_checkpoint(3, end, &[9; 32])).unwrap()),
            Box::new(move |d| fs::write(d.join(CHECKPOINT_FILE), encode_checkpoint(2, end, &hash)).unwrap()),
            Box::new(move |d| fs::write(d.join(CHECKPOINT_FILE), encode_checkpoint(3, end + 1, &hash)).unwrap()),
            Box::new(|d| fs::remove_file(d.join(INDEX_FILE)).unwrap()),
            Box::new(|d| fs::write(d.join(INDEX_FILE), INDEX_MAGIC).unwrap()),
            Box::new(move |d| {
                let mut idx = INDEX_MAGIC.to_vec();
                for o in [o0, o2, o1] {
                    idx.extend_from_slice(&o.to_le_bytes());
                }
                fs::write(d.join(INDEX_FILE), idx).unwrap()
            }),
        ];
        for (i, damage) in cases.iter().enumerate() {
            damage(dir.path());
            let ledger = Ledger::open(dir.path()).unwrap_or_else(|e| panic!("case {i}: {e}"));
            assert_eq!(ledger.height(), 3, "case {i}");
            assert_eq!(ledger.block_bytes(1).unwrap().unwrap(), blocks[1], "case {i}");
            drop(ledger);
            assert_eq!(checkpoint_of(dir.path()), (3, end, hash), "case {i}: repaired");
            assert_eq!(read_index(dir.path()).unwrap().unwrap(), offsets, "case {i}: index rebuilt");
            assert_eq!(verify_dir(dir.path()).unwrap(), 3, "case {i}");
        }
        // The last block damaged: the checkpoint does not verify against
        // it, the full scan finds it torn and cuts it.
        flip_byte(dir.path(), offsets[2] + RECORD_HEADER + 1);
        assert_eq!(Ledger::open(dir.path()).unwrap().height(), 2);
        assert_eq!(checkpoint_of(dir.path()).0, 2);
    }

    #[test]
    fn checkpoints_follow_appends_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = Chain::new();
        let ledger = Ledger::open_with(dir.path(), 1).unwrap();
        for n in 1..=3u64 {
            ledger.append(&[chain.block()]).unwrap();
            // Durable before the append returned, without closing.
            assert_eq!(checkpoint_of(dir.path()).0, n);
            assert_eq!(read_index(dir.path()).unwrap().unwrap().len() as u64, n);
        }
        // verify also checks the index against the blocks.
        drop(ledger);
        let mut idx = fs::read(dir.path().join(INDEX_FILE)).unwrap();
        idx[8] ^= 1;
        fs::write(dir.path().join(INDEX_FILE), idx).unwrap();
        match verify_dir(dir.path()) {
            Err(LedgerError::Corrupt { number: 0, reason, .. }) => assert!(reason.contains(INDEX_FILE), "{reason}"),
            other => panic!("expected the index mismatch, got {other:?}"),
        }
    }
}
