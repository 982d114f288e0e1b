//! The block ledger of one channel: an append-only, crash-safe store of the
//! marshalled `common.Block`s the ordering node has cut, which Deliver reads
//! back. Blocks become visible to readers (and wake waiters) only after they
//! are fsynced. This module may touch only its own channel directory on disk
//! (it creates that directory when missing, and then fsyncs its parent so the
//! new entry is durable; it writes nothing anywhere else).
//!
//! # On-disk format
//!
//! One directory per channel, holding one block file, `blocks.dat`:
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
//! The index (the offset of every record) is kept in memory only and rebuilt
//! by scanning the whole file on open; a persisted index (and a checkpoint so
//! that open need not re-hash every block) is future work.
//!
//! # Recovery
//!
//! [`Ledger::open`] scans every record. A bad record (partial length prefix,
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
    /// block file, truncates a torn or corrupt tail (partial length prefix,
    /// partial record, checksum mismatch, undecodable block) and logs how many
    /// bytes were dropped; then checks every block: number == index,
    /// previous_hash == header hash of the block before, data hash matches
    /// data. A break in the chain before the tail is [`LedgerError::Corrupt`],
    /// never silently truncated.
    pub fn open(dir: &Path) -> Result<Ledger, LedgerError> {
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

        let scan = scan(dir, &file)?;
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
        tracing::debug!(dir = %dir.display(), height, end, "ledger: opened");
        Ok(Ledger {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                reader,
                writer: Mutex::new(Writer { file, height, end, last_hash: scan.last_hash, poisoned: None }),
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

    /// Header hash of the last durable block (None when empty).
    pub fn last_hash(&self) -> Option<[u8; 32]> {
        self.inner.read_index().last_hash
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
        {
            let mut index = inner.write_index();
            index.offsets.extend_from_slice(&offsets);
            index.end = end;
            index.last_hash = last_hash;
        }
        inner.height_tx.send_replace(last + 1);
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

    /// A receiver of the durable height, for readers that `select!` on
    /// several things.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.height_tx.subscribe()
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
    let scan = scan(dir, &file)?;
    let height = scan.offsets.len() as u64;
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

/// Reads and checks every record of the block file; see the module doc for
/// what counts as a torn tail and what as corruption.
fn scan(dir: &Path, file: &File) -> Result<Scan, LedgerError> {
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

    let mut offsets = Vec::new();
    let mut last_hash: Option<Hash> = None;
    let mut pos = MAGIC_LEN;
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
        assert_eq!(ledger.last_hash(), None);
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
        assert_eq!(ledger.last_hash(), Some(header_hash(last.header.as_ref().unwrap())));
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
        assert_eq!(ledger.last_hash(), Some(header_hash(b1.header.as_ref().unwrap())));

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

        let mut rx = ledger.subscribe();
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
}
