//! The ledger writer of a chain: a thread that appends the blocks the
//! plugin writes, one fsync per group, checks the disk reserve first, and
//! runs what waited for a block to be durable.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::chain::ChainStatus;
use crate::ledger::Ledger;
use crate::runtime::RuntimeError;
use crate::support::{BlockSink, OnDurable};

/// A sink that hands blocks to a new ledger writer thread for `ledger`
/// (group commit). The thread ends, after writing everything queued, when
/// the sink is dropped; a write error marks `status` errored for good.
/// Before each group the writer checks that the ledger's filesystem keeps
/// `disk_reserve` bytes free after it; if not, the chain errs (nothing is
/// written, so nothing is torn) and the node and its other chains go on.
pub fn ledger_sink(
    channel: &str,
    ledger: Ledger,
    status: Arc<ChainStatus>,
    disk_reserve: u64,
) -> Result<(Box<dyn BlockSink>, JoinHandle<()>), RuntimeError> {
    let (wtx, wrx) = std_mpsc::channel::<Queued>();
    let ch = channel.to_string();
    let writer = std::thread::Builder::new()
        .name(format!("ledger-{channel}"))
        .spawn(move || ledger_writer(&ch, ledger, wrx, status, disk_reserve))
        .map_err(|e| RuntimeError::Engine(format!("starting a ledger writer thread: {e}")))?;
    Ok((Box::new(ChannelSink(wtx)), writer))
}

/// A block queued for the ledger and what runs once it is durable.
struct Queued(Bytes, Option<OnDurable>);

struct ChannelSink(std_mpsc::Sender<Queued>);

impl BlockSink for ChannelSink {
    fn write(&mut self, number: u64, block: Bytes, on_durable: Option<OnDurable>) -> Result<(), String> {
        self.0.send(Queued(block, on_durable)).map_err(|_| format!("the ledger writer stopped before block {number}"))
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub fn free_disk_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Appends blocks as they come, grouping whatever queued up into one fsync;
/// then runs what waited for them to be durable.
fn ledger_writer(
    channel: &str,
    ledger: Ledger,
    rx: std_mpsc::Receiver<Queued>,
    status: Arc<ChainStatus>,
    reserve: u64,
) {
    const GROUP_BYTES: usize = 64 << 20;
    while let Ok(first) = rx.recv() {
        let mut size = first.0.len();
        let mut group = vec![first.0];
        let mut after: Vec<OnDurable> = first.1.into_iter().collect();
        while size < GROUP_BYTES {
            match rx.try_recv() {
                Ok(Queued(b, f)) => {
                    size += b.len();
                    group.push(b);
                    after.extend(f);
                }
                Err(_) => break,
            }
        }
        if reserve > 0 {
            match free_disk_bytes(ledger.dir()) {
                Ok(free) if free < reserve.saturating_add(size as u64) => {
                    let reason = format!(
                        "the ledger's disk ({}) has {} MiB free, under the reserve of {} MiB (--disk-reserve-mib) \
                         after {} more bytes: channel {channel} stops writing; free space and restart the node",
                        ledger.dir().display(),
                        free >> 20,
                        reserve >> 20,
                        size
                    );
                    tracing::error!(
                        channel,
                        free_mib = free >> 20,
                        reserve_mib = reserve >> 20,
                        "ledger disk nearly full; the chain stops"
                    );
                    status.set_fatal(reason);
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(channel, error = %e, "cannot read the ledger disk's free space"),
            }
        }
        if let Err(e) = ledger.append(&group) {
            tracing::error!(channel, error = %e, "ledger write failed; the chain stops");
            status.set_fatal(format!("ledger write failed: {e}"));
            return;
        }
        for f in after {
            f();
        }
    }
}
