//! The raft log as raft-rs reads it ([`raft::Storage`]), kept in memory and
//! made durable through the host's `storage` interface: hard state, conf
//! state, the last snapshot and the entries after it. One host write batch
//! (one fsync) per raft `Ready`. Keys: `hs`, `cs`, `snap`, `e` + the
//! big-endian entry index.

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::bindings::fabric::consenter::storage::{self, Op};

const HARD_STATE: &[u8] = b"hs";
const CONF_STATE: &[u8] = b"cs";
const SNAPSHOT: &[u8] = b"snap";
const ENTRY: u8 = b'e';

fn entry_key(index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(ENTRY);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The raft log of this node on one channel.
#[derive(Default)]
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// The last snapshot: its metadata (index, term, conf state) and data
    /// (the marshalled block at that index, as Fabric's etcdraft keeps it).
    snapshot: Snapshot,
    /// Entries after the snapshot, from index `snapshot.index + 1`.
    entries: Vec<Entry>,
    /// Host write operations not yet flushed.
    pending: Vec<Op>,
    /// Bytes of entry data since the last snapshot (compaction trigger).
    pub bytes_since_snapshot: u64,
}

impl LogStore {
    /// A new log for a channel whose first members are `voters`.
    pub fn bootstrap(voters: Vec<u64>) -> LogStore {
        let cs = ConfState::from((voters, vec![]));
        let mut s = LogStore { conf_state: cs.clone(), ..Default::default() };
        s.snapshot.mut_metadata().set_conf_state(cs.clone());
        s.pending.push(Op::Put((CONF_STATE.to_vec(), cs.write_to_bytes().unwrap_or_default())));
        s
    }

    /// The log stored by the host, if any (None: a new node).
    pub fn load() -> Result<Option<LogStore>, String> {
        let Some(hs) = storage::get(HARD_STATE).map_err(|e| format!("reading the hard state: {e}"))? else {
            return Ok(None);
        };
        let mut s = LogStore {
            hard_state: HardState::parse_from_bytes(&hs).map_err(|e| format!("hard state: {e}"))?,
            ..Default::default()
        };
        if let Some(cs) = storage::get(CONF_STATE).map_err(|e| format!("reading the conf state: {e}"))? {
            s.conf_state = ConfState::parse_from_bytes(&cs).map_err(|e| format!("conf state: {e}"))?;
        }
        if let Some(snap) = storage::get(SNAPSHOT).map_err(|e| format!("reading the snapshot: {e}"))? {
            s.snapshot = Snapshot::parse_from_bytes(&snap).map_err(|e| format!("snapshot: {e}"))?;
        } else {
            s.snapshot.mut_metadata().set_conf_state(s.conf_state.clone());
        }
        let mut start = entry_key(s.snapshot.get_metadata().index + 1);
        let end = vec![ENTRY + 1];
        loop {
            let page = storage::range(&start, Some(&end), 1024).map_err(|e| format!("reading the log: {e}"))?;
            let Some((last, _)) = page.last() else { break };
            let mut next = last.clone();
            for (_, v) in &page {
                let e = Entry::parse_from_bytes(v).map_err(|e| format!("log entry: {e}"))?;
                if let Some(prev) = s.entries.last()
                    && e.index != prev.index + 1
                {
                    return Err(format!("the log has a gap: entry {} follows {}", e.index, prev.index));
                }
                s.entries.push(e);
            }
            // The key after the last one read.
            next.push(0);
            start = next;
        }
        Ok(Some(s))
    }

    /// Writes what changed since the last flush, in one atomic batch.
    pub fn flush(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.pending);
        storage::write(&ops).map_err(|e| format!("persisting the raft log: {e}"))
    }

    /// Appends `entries`, replacing any conflicting suffix.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let offset = self.snapshot.get_metadata().index + 1;
        if first.index < offset {
            return;
        }
        let keep = (first.index - offset) as usize;
        let old_last = self.last();
        if keep < self.entries.len() {
            self.entries.truncate(keep);
        }
        let new_last = entries.last().map_or(0, |e| e.index);
        for i in new_last + 1..=old_last {
            self.pending.push(Op::Delete(entry_key(i)));
        }
        for e in entries {
            self.bytes_since_snapshot += e.data.len() as u64;
            self.pending.push(Op::Put((entry_key(e.index), e.write_to_bytes().unwrap_or_default())));
            self.entries.push(e.clone());
        }
    }

    /// Sets the hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        // Mutant: the hard state (term, vote, commit) is never persisted,
        // so a restarted node may vote again in a term it voted in.
        if !cfg!(feature = "mutant-no-hardstate") {
            self.pending.push(Op::Put((HARD_STATE.to_vec(), hs.write_to_bytes().unwrap_or_default())));
        }
        self.hard_state = hs;
    }

    /// Moves the commit index.
    pub fn set_commit(&mut self, commit: u64) {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(hs);
    }

    /// Sets the conf state (after a conf change is applied).
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.pending.push(Op::Put((CONF_STATE.to_vec(), cs.write_to_bytes().unwrap_or_default())));
        self.conf_state = cs;
    }

    /// Takes a snapshot at `index` (applied), whose data is the block made
    /// from that entry, and drops the log up to it (Fabric's etcdraft
    /// compaction once SnapshotIntervalSize bytes were appended).
    pub fn compact(&mut self, index: u64, block: Vec<u8>) {
        let offset = self.snapshot.get_metadata().index;
        if index <= offset || index > self.last() {
            return;
        }
        let term = self.term_of(index).unwrap_or(0);
        let mut meta = SnapshotMetadata { index, term, ..Default::default() };
        meta.set_conf_state(self.conf_state.clone());
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.data = block.into();
        self.pending.push(Op::Put((SNAPSHOT.to_vec(), snap.write_to_bytes().unwrap_or_default())));
        for i in offset + 1..=index {
            self.pending.push(Op::Delete(entry_key(i)));
        }
        let drop = (index - offset) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.snapshot = snap;
        self.bytes_since_snapshot = 0;
    }

    /// Installs a snapshot received from the leader: the log restarts
    /// after it.
    pub fn apply_snapshot(&mut self, snap: Snapshot) {
        let meta = snap.get_metadata().clone();
        let old_first = self.snapshot.get_metadata().index + 1;
        for i in old_first..=self.last() {
            self.pending.push(Op::Delete(entry_key(i)));
        }
        self.entries.clear();
        self.conf_state = meta.get_conf_state().clone();
        self.pending.push(Op::Put((CONF_STATE.to_vec(), self.conf_state.write_to_bytes().unwrap_or_default())));
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.set_hard_state(hs);
        self.pending.push(Op::Put((SNAPSHOT.to_vec(), snap.write_to_bytes().unwrap_or_default())));
        self.snapshot = snap;
        self.bytes_since_snapshot = 0;
    }

    /// The marshalled block of the last entry at or before `index` that
    /// holds one (a normal entry with data), else the snapshot's block:
    /// what a snapshot taken at `index` carries.
    pub fn last_block_at(&self, index: u64) -> Vec<u8> {
        let offset = self.snapshot.get_metadata().index;
        let upto = index.saturating_sub(offset).min(self.entries.len() as u64) as usize;
        self.entries[..upto]
            .iter()
            .rev()
            .find(|e| e.get_entry_type() == raft::prelude::EntryType::EntryNormal && !e.data.is_empty())
            .map(|e| e.data.to_vec())
            .unwrap_or_else(|| self.snapshot.data.to_vec())
    }

    /// The voters of the conf state now.
    pub fn voters(&self) -> &[u64] {
        &self.conf_state.voters
    }

    /// The last snapshot.
    pub fn last_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    fn last(&self) -> u64 {
        self.snapshot.get_metadata().index + self.entries.len() as u64
    }

    fn term_of(&self, idx: u64) -> Option<u64> {
        let meta = self.snapshot.get_metadata();
        if idx == meta.index {
            return Some(meta.term);
        }
        if idx < meta.index {
            return None;
        }
        self.entries.get((idx - meta.index - 1) as usize).map(|e| e.term)
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let offset = self.snapshot.get_metadata().index + 1;
        if low < offset {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - offset) as usize;
        let hi = (high - offset) as usize;
        let mut out = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if idx < meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot.get_metadata().index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.get_metadata().index < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}
