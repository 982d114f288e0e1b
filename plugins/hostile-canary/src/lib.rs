//! A consenter that accepts a chain and then traps in `start`, whatever
//! the channel's configuration. The node runs every plugin through a canary
//! (`handle-chain`, `start`, `halt` on a throw-away chain) before it serves
//! a channel; this plugin must be rejected there, with the reason
//! (`tests/packages.rs`).

use consenter_sdk::{Consenter, Envelope, EnvelopeInfo};

struct TrapsInStart;

impl Consenter for TrapsInStart {
    fn handle_chain(_metadata: Vec<u8>) -> Result<Self, String> {
        Ok(TrapsInStart)
    }
    fn start(&mut self) {
        core::arch::wasm32::unreachable()
    }
    fn enqueue(&mut self, _env: Envelope, _info: EnvelopeInfo) -> bool {
        false
    }
}

consenter_sdk::export_consenter!(TrapsInStart);
