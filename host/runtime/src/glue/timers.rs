//! The `timers` interface: timers owned by the host, capped in number and
//! delay.

use std::time::Duration;

use super::PluginState;
use crate::support::MIN_TIMER_DELAY;

/// The host side of the interface, the same for every contract version
/// that has it (the interface did not change): one body, one impl per
/// version's generated traits.
macro_rules! timers_host {
    () => {
        impl timers::Host for PluginState {
            fn set(&mut self, id: u32, delay_ms: u64) -> wasmtime::Result<Result<(), types::SupportError>> {
                let s = &mut self.support;
                let delay = Duration::from_millis(delay_ms);
                if delay > s.limits.max_timer_delay {
                    let e = crate::support::SupportError::LimitExceeded(format!(
                        "timer {id}: delay of {delay_ms} ms is over the maximum of {} ms",
                        s.limits.max_timer_delay.as_millis()
                    ));
                    let e = s.refuse(e);
                    return self.answer(Err(e));
                }
                if !s.timers.contains_key(&id) && s.timers.len() >= s.limits.max_timers {
                    let e = crate::support::SupportError::LimitExceeded(format!(
                        "timer {id}: {} timers are already armed",
                        s.timers.len()
                    ));
                    let e = s.refuse(e);
                    return self.answer(Err(e));
                }
                // A zero delay re-armed from `on-timer` would spin the chain's
                // thread: every timer waits at least MIN_TIMER_DELAY.
                let at = s.clock.now() + delay.max(MIN_TIMER_DELAY);
                s.timers.insert(id, at);
                Ok(Ok(()))
            }

            fn cancel(&mut self, id: u32) -> wasmtime::Result<()> {
                self.support.timers.remove(&id);
                Ok(())
            }
        }
    };
}

/// For plugins of `fabric:consenter@0.1.0`.
mod v0_1 {
    use super::*;
    use crate::bindings::v0_1::fabric::consenter::{timers, types};
    timers_host!();
}

/// For plugins of `fabric:consenter@0.2` (0.2.0 and 0.2.1).
mod v0_2 {
    use super::*;
    use crate::bindings::v0_2::fabric::consenter::{timers, types};
    timers_host!();
}
