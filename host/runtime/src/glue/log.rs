//! The `log` interface: plugin log lines through the host's tracing, tagged
//! with the channel, truncated and rate-limited.

use super::PluginState;

/// The host side of the interface, the same for every contract version
/// that has it (the interface did not change): one body, one impl per
/// version's generated traits.
macro_rules! log_host {
    () => {
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
    };
}

/// For plugins of `fabric:consenter@0.1.0`.
mod v0_1 {
    use super::*;
    use crate::bindings::v0_1::fabric::consenter::{log, types};
    log_host!();
}

/// For plugins of `fabric:consenter@0.2` (0.2.0 and 0.2.1).
mod v0_2 {
    use super::*;
    use crate::bindings::v0_2::fabric::consenter::{log, types};
    log_host!();
}
