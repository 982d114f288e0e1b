//! The channel's etcdraft options (`etcdraft.ConfigMetadata.options`), with
//! Fabric's defaults where a value is zero or missing.

use consenter_protos::etcdraft::ConfigMetadata;
use prost::Message as _;

/// What raft runs with on this channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Milliseconds per raft tick (Fabric: 500ms).
    pub tick_ms: u64,
    /// Ticks without a leader before a follower campaigns (Fabric: 10).
    pub election_tick: usize,
    /// Ticks between the leader's heartbeats (Fabric: 1).
    pub heartbeat_tick: usize,
    /// Blocks proposed and not yet committed, at most (Fabric: 5).
    pub max_inflight_blocks: usize,
    /// Bytes of blocks between snapshots (Fabric: 16 MiB).
    pub snapshot_interval_size: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tick_ms: 500,
            election_tick: 10,
            heartbeat_tick: 1,
            max_inflight_blocks: 5,
            snapshot_interval_size: 16 << 20,
        }
    }
}

/// A Go duration of the simple forms Fabric's configtxgen writes ("500ms",
/// "1s", "1.5s", "100us"), in milliseconds (at least 1).
fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| c.is_ascii_alphabetic()).map(|i| s.split_at(i))?;
    let v: f64 = num.parse().ok()?;
    let ms = match unit {
        "ns" => v / 1e6,
        "us" | "µs" => v / 1e3,
        "ms" => v,
        "s" => v * 1e3,
        "m" => v * 60e3,
        "h" => v * 3600e3,
        _ => return None,
    };
    (ms.is_finite() && ms >= 0.0).then(|| (ms.ceil() as u64).max(1))
}

impl Options {
    /// The options in a channel's ConsensusType metadata; Err names what is
    /// wrong (Fabric refuses such a config too).
    pub fn from_metadata(metadata: &[u8]) -> Result<(Options, ConfigMetadata), String> {
        let m = ConfigMetadata::decode(metadata).map_err(|e| format!("etcdraft ConfigMetadata: {e}"))?;
        let mut o = Options::default();
        if let Some(opt) = &m.options {
            if !opt.tick_interval.is_empty() {
                o.tick_ms = parse_duration_ms(&opt.tick_interval)
                    .ok_or_else(|| format!("etcdraft TickInterval {:?} is not a duration", opt.tick_interval))?;
            }
            if opt.election_tick != 0 {
                o.election_tick = opt.election_tick as usize;
            }
            if opt.heartbeat_tick != 0 {
                o.heartbeat_tick = opt.heartbeat_tick as usize;
            }
            if opt.max_inflight_blocks != 0 {
                o.max_inflight_blocks = opt.max_inflight_blocks as usize;
            }
            if opt.snapshot_interval_size != 0 {
                o.snapshot_interval_size = u64::from(opt.snapshot_interval_size);
            }
        }
        if o.election_tick <= o.heartbeat_tick {
            return Err(format!(
                "etcdraft ElectionTick ({}) must be greater than HeartbeatTick ({})",
                o.election_tick, o.heartbeat_tick
            ));
        }
        Ok((o, m))
    }
}
