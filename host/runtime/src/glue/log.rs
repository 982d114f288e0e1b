//! The `log` interface: plugin log lines through the host's tracing, tagged
//! with the channel, truncated and rate-limited.

use super::PluginState;
use crate::bindings::fabric::consenter::{log, types};

impl log::Host for PluginState {
    fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        self.check_bytes("log", message.len())?;
        if !self.support.log_allowed() {
            return Ok(());
        }
        let max = self.support.limits.max_log_bytes;
        let msg = if message.len() > max {
            let mut end = max;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            &message[..end]
        } else {
            &message
        };
        let ch = &self.support.chain_id;
        match level {
            types::Level::Trace => tracing::trace!(channel = %ch, plugin = true, "{msg}"),
            types::Level::Debug => tracing::debug!(channel = %ch, plugin = true, "{msg}"),
            types::Level::Info => tracing::info!(channel = %ch, plugin = true, "{msg}"),
            types::Level::Warn => tracing::warn!(channel = %ch, plugin = true, "{msg}"),
            types::Level::Error => tracing::error!(channel = %ch, plugin = true, "{msg}"),
        }
        Ok(())
    }
}
