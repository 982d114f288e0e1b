//! Metrics the runtime records about its plugins, through the `metrics`
//! facade: calls into a plugin and their duration, traps, host bytes held
//! for the plugin, compile-cache hits and misses, and Fabric's block-cutter
//! fill time. The runtime only records; the node installs the recorder
//! (Prometheus, on its operations endpoint). Without a recorder every
//! handle is a no-op. Handles are made once per instance and call name,
//! so a call costs two clock reads and a few atomic operations.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Calls into plugins (label `call`: `enqueue`, `on-timer`, ...).
pub const PLUGIN_CALLS: &str = "consenter_plugin_calls";
/// Duration of calls into plugins, in seconds.
pub const PLUGIN_CALL_DURATION: &str = "consenter_plugin_call_duration";
/// Traps of plugin instances (the call that trapped in label `call`).
pub const PLUGIN_TRAPS: &str = "consenter_plugin_traps";
/// Bytes of envelopes, batches and blocks the host holds for a chain's plugin.
pub const HOST_BYTES_HELD: &str = "consenter_host_bytes_held";
/// Plugins loaded from the compiled-artifact cache.
pub const CACHE_HITS: &str = "consenter_plugin_cache_hits";
/// Plugins compiled because the cache had no usable entry.
pub const CACHE_MISSES: &str = "consenter_plugin_cache_misses";
/// Fabric's `blockcutter_block_fill_duration`: from the first envelope of a
/// pending batch to the batch being cut, in seconds.
pub const BLOCK_FILL_DURATION: &str = "blockcutter_block_fill_duration";

/// The metric handles of one plugin instance (one chain).
pub struct InstanceMetrics {
    plugin: String,
    channel: String,
    calls: HashMap<&'static str, (Counter, Histogram)>,
    held: Gauge,
}

impl InstanceMetrics {
    /// Handles for `plugin` ordering `channel`.
    pub fn new(plugin: &str, channel: &str) -> InstanceMetrics {
        InstanceMetrics {
            plugin: plugin.to_string(),
            channel: channel.to_string(),
            calls: HashMap::new(),
            held: gauge!(HOST_BYTES_HELD, "channel" => channel.to_string()),
        }
    }

    /// Records a call named `call` that took `took`; `trapped` if it
    /// ended the Store.
    pub fn call(&mut self, call: &'static str, took: Duration, trapped: bool) {
        let (plugin, channel) = (&self.plugin, &self.channel);
        let (n, d) = self.calls.entry(call).or_insert_with(|| {
            let labels = [("channel", channel.clone()), ("plugin", plugin.clone()), ("call", call.to_string())];
            (counter!(PLUGIN_CALLS, &labels), histogram!(PLUGIN_CALL_DURATION, &labels))
        });
        n.increment(1);
        d.record(took.as_secs_f64());
        if trapped {
            let labels = [("channel", channel.clone()), ("plugin", plugin.clone()), ("call", call.to_string())];
            counter!(PLUGIN_TRAPS, &labels).increment(1);
        }
    }

    /// Sets the bytes the host holds for the plugin now.
    pub fn held_bytes(&self, bytes: usize) {
        self.held.set(bytes as f64);
    }
}

/// Records how a plugin's compiled code was obtained.
pub fn plugin_loaded(plugin: &str, from_cache: bool) {
    let name = if from_cache { CACHE_HITS } else { CACHE_MISSES };
    counter!(name, "plugin" => plugin.to_string()).increment(1);
}

/// Fabric's block fill time of one chain's cutter: started when an
/// envelope goes into an empty pending batch, observed when a batch is cut
/// (0 for an envelope too large to share a batch, as Fabric records).
pub struct FillTimer {
    started: Option<Instant>,
    histogram: Histogram,
}

impl FillTimer {
    /// The timer of `channel`'s cutter.
    pub fn new(channel: &str) -> FillTimer {
        FillTimer { started: None, histogram: histogram!(BLOCK_FILL_DURATION, "channel" => channel.to_string()) }
    }

    /// After an envelope went to the cutter: `pending_before` and
    /// `pending_after` are the pending counts around the call, `batches`
    /// the number of batches it cut.
    pub fn ordered(&mut self, now: Instant, pending_before: usize, pending_after: usize, batches: usize) {
        // An envelope into an empty pending batch starts it; every batch
        // cut after the first starts from this call (it filled at once).
        let mut started = if pending_before == 0 { Some(now) } else { self.started };
        for _ in 0..batches {
            let s = started.unwrap_or(now);
            self.histogram.record(now.saturating_duration_since(s).as_secs_f64());
            started = Some(now);
        }
        self.started = if pending_after > 0 { started } else { None };
    }

    /// After `cut`: `was_pending` envelopes were in the batch.
    pub fn cut(&mut self, now: Instant, was_pending: usize) {
        if let Some(s) = self.started.take()
            && was_pending > 0
        {
            self.histogram.record(now.saturating_duration_since(s).as_secs_f64());
        }
    }
}
