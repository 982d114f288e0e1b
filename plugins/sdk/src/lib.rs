//! The plugin author's side of the `fabric:consenter@0.2.1` contract (world
//! `consenter`; with the cargo feature `handover`, world `handover-consenter`).
//!
//! Implement [`Consenter`] for your chain type and export it with
//! [`export_consenter!`]. With the feature `handover` the plugin also
//! exports `handover`: at a live upgrade the host calls
//! [`Consenter::export_state`] on the old instance instead of `halt`, and
//! [`Consenter::import_state`] on the new build between `handle_chain` and
//! `start`. The host calls your chain one event at a time;
//! keep your state in `self` and do all I/O through the imports re-exported
//! here (`support`, `timers`, `log`).
//!
//! ```ignore
//! struct MyChain;
//! impl consenter_sdk::Consenter for MyChain {
//!     fn handle_chain(_metadata: Vec<u8>) -> Result<Self, String> { Ok(MyChain) }
//!     fn enqueue(&mut self, env: consenter_sdk::Envelope, info: consenter_sdk::EnvelopeInfo) -> bool {
//!         /* ... */
//!         true
//!     }
//! }
//! consenter_sdk::export_consenter!(MyChain);
//! ```

/// Generated bindings of the `consenter` world.
#[cfg(not(feature = "handover"))]
pub mod bindings {
    wit_bindgen::generate!({
        world: "consenter",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_consenter_world",
        default_bindings_module: "consenter_sdk::bindings",
    });
}

/// Generated bindings of the `handover-consenter` world (feature `handover`).
#[cfg(feature = "handover")]
pub mod bindings {
    wit_bindgen::generate!({
        world: "handover-consenter",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_consenter_world",
        default_bindings_module: "consenter_sdk::bindings",
    });
}

pub use bindings::fabric::consenter::types::{
    Batch, BatchSize, Block, Envelope, EnvelopeInfo, Level, MessageClass, OrdererConfig, SupportError,
};
pub use bindings::fabric::consenter::{log as host_log, support, timers};

/// A consenter's chain (Fabric's `Chain`), created by `handle_chain`
/// (Fabric's `Consenter.HandleChain`).
pub trait Consenter: Sized + 'static {
    /// Prepare the chain from the consenter metadata of the last block
    /// (empty for a new chain). Err refuses the chain.
    fn handle_chain(metadata: Vec<u8>) -> Result<Self, String>;
    /// Start ordering.
    fn start(&mut self) {}
    /// Offer an envelope; true = accepted. `info` carries its class, size
    /// and the config sequence it was validated under.
    fn enqueue(&mut self, env: Envelope, info: EnvelopeInfo) -> bool;
    /// Offer several envelopes that queued up, in order; one answer each.
    /// The default calls `enqueue` for each; override it to batch work
    /// (e.g. one `support::ordered_many` call for a run of messages).
    fn enqueue_many(&mut self, envelopes: Vec<(Envelope, EnvelopeInfo)>) -> Vec<bool> {
        envelopes.into_iter().map(|(e, i)| self.enqueue(e, i)).collect()
    }
    /// Timer `id` fired.
    fn on_timer(&mut self, _id: u32) {}
    /// Stop.
    fn halt(&mut self) {}
    /// The host replaces this instance by a new build (feature `handover`;
    /// called instead of `halt`): stop as `halt` does and return what the
    /// next instance needs. The default halts and hands over nothing.
    #[cfg(feature = "handover")]
    fn export_state(&mut self) -> Handed {
        self.halt();
        Handed { state: Vec::new(), batches: Vec::new(), envelopes: Vec::new() }
    }
    /// The state the build before this one exported (feature `handover`),
    /// after `handle_chain` and before `start`. Err: not usable (the host
    /// logs the reason and starts the instance without it). The default
    /// ignores it.
    #[cfg(feature = "handover")]
    fn import_state(&mut self, _state: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
}

/// What an ending instance hands to the next one (feature `handover`): its
/// state bytes, the batches it cut and did not make into blocks, the
/// envelopes it held outside the host's cutter.
#[cfg(feature = "handover")]
pub use bindings::exports::fabric::consenter::handover::Handed;

/// Log at info level through the host.
pub fn info(msg: &str) {
    host_log::log(Level::Info, msg);
}

/// Log at warn level through the host.
pub fn warn(msg: &str) {
    host_log::log(Level::Warn, msg);
}

/// Create the next block from `batch` and write it; on a refusal, report
/// the chain failed (the host stops delivering events) and return false.
pub fn write_batch(batch: Batch, consenter_metadata: &[u8]) -> bool {
    let r = support::create_next_block(batch).and_then(|b| support::write_block(b, consenter_metadata));
    match r {
        Ok(()) => true,
        Err(e) => {
            support::fail(&format!("writing block: {e}"));
            false
        }
    }
}

/// Route panics to the host log before the instance aborts, so operators
/// see the message rather than only "unreachable".
#[doc(hidden)]
pub fn __install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        host_log::log(Level::Error, &format!("plugin panicked: {info}"));
    }));
}

/// Exports `$t: Consenter` as the plugin's `chain` (and, with the feature
/// `handover`, its `handover`).
#[macro_export]
macro_rules! export_consenter {
    ($t:ty) => {
        mod __consenter_export {
            use super::*;
            use $crate::bindings::exports::fabric::consenter::chain::Guest;
            use $crate::Consenter as _;

            std::thread_local! {
                static CHAIN: std::cell::RefCell<Option<$t>> = const { std::cell::RefCell::new(None) };
            }

            fn with<R>(f: impl FnOnce(&mut $t) -> R) -> Option<R> {
                CHAIN.with(|c| c.borrow_mut().as_mut().map(f))
            }

            pub struct Export;

            impl Guest for Export {
                fn handle_chain(metadata: Vec<u8>) -> Result<(), String> {
                    $crate::__install_panic_hook();
                    let chain = <$t>::handle_chain(metadata)?;
                    CHAIN.with(|c| *c.borrow_mut() = Some(chain));
                    Ok(())
                }
                fn start() {
                    with(|c| c.start());
                }
                fn enqueue(envelopes: Vec<($crate::Envelope, $crate::EnvelopeInfo)>) -> Vec<bool> {
                    let n = envelopes.len();
                    with(|c| c.enqueue_many(envelopes)).unwrap_or_else(|| vec![false; n])
                }
                fn on_timer(id: u32) {
                    with(|c| c.on_timer(id));
                }
                fn halt() {
                    with(|c| c.halt());
                    CHAIN.with(|c| *c.borrow_mut() = None);
                }
            }

            $crate::__export_handover!($t);

            $crate::bindings::__export_consenter_world!(Export with_types_in $crate::bindings);
        }
    };
}

/// The `handover` export of [`export_consenter!`] (feature `handover`).
#[cfg(feature = "handover")]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_handover {
    ($t:ty) => {
        impl $crate::bindings::exports::fabric::consenter::handover::Guest for Export {
            fn export_state() -> $crate::Handed {
                let handed = with(|c| c.export_state());
                CHAIN.with(|c| *c.borrow_mut() = None);
                handed.unwrap_or_else(|| $crate::Handed {
                    state: Vec::new(),
                    batches: Vec::new(),
                    envelopes: Vec::new(),
                })
            }
            fn import_state(state: Vec<u8>) -> Result<(), String> {
                with(|c| c.import_state(state)).unwrap_or(Ok(()))
            }
        }
    };
}

/// Without the feature `handover`, no `handover` export.
#[cfg(not(feature = "handover"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_handover {
    ($t:ty) => {};
}
