//! The import glue: what a plugin's imports do, one module per interface
//! (`types` for the resources, `support`, `timers`, `log`), over the
//! chain's support state machine ([`crate::support::Support`]), which
//! knows nothing of wasmtime. The glue depends on it, never the reverse.

use std::time::{Duration, Instant};

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;

use crate::limits::CallLimits;
use crate::support::Support;

pub mod cluster;
pub mod log;
pub mod support;
pub mod timers;
pub mod types;

/// What a Store holds: the resource table, the limits and the chain's
/// native support.
pub struct PluginState {
    /// Batch and block handles given to the plugin.
    pub table: ResourceTable,
    /// Envelope handles given to the plugin.
    pub envelopes: types::EnvelopeSlab,
    pub(crate) limits: StoreLimits,
    /// Caps checked by the import functions.
    pub call_limits: CallLimits,
    /// Envelope, batch and block handles the plugin holds now.
    pub handles: usize,
    /// Bytes of envelopes, batches and blocks held for the plugin now.
    pub held_bytes: usize,
    /// When the current call into the plugin started.
    pub call_started: Instant,
    /// Time the host spent on the plugin's behalf during the current call
    /// (not counted against its deadline).
    pub host_time: Duration,
    /// Native ConsenterSupport of the chain.
    pub support: Support,
    /// The state of the chain's random generator (`wasi:random`).
    pub random: u64,
    /// Partial lines the plugin wrote to stdout and stderr (`wasi`).
    pub stdio: crate::wasi::StdioLines,
}

impl PluginState {
    /// The next value of the chain's random generator (SplitMix64, seeded
    /// by `Support::random_seed`): what `wasi:random` answers.
    pub fn next_random(&mut self) -> u64 {
        self.random = self.random.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.random;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl PluginState {
    /// A Store's data around `support` with default limits (unit tests of
    /// the import functions, without a plugin).
    #[cfg(test)]
    pub(crate) fn for_test(support: Support) -> PluginState {
        PluginState {
            table: ResourceTable::new(),
            envelopes: Default::default(),
            limits: wasmtime::StoreLimitsBuilder::new().build(),
            call_limits: CallLimits::from(&crate::limits::Limits::default()),
            handles: 0,
            held_bytes: 0,
            call_started: Instant::now(),
            host_time: Duration::ZERO,
            random: support.random_seed(),
            stdio: Default::default(),
            support,
        }
    }
}
