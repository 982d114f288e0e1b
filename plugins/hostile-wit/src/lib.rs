//! A consenter built against a copy of the contract whose package version
//! is `fabric:consenter@0.9.0` (see `wit/consenter.wit` in this crate; the
//! only change is the version). It otherwise does nothing. The host speaks
//! `@0.2.1` and `@0.1.0` and must refuse it at load, before compiling it, naming both
//! versions (`tests/packages.rs`).

wit_bindgen::generate!({
    world: "consenter",
    path: "wit",
});

use exports::fabric::consenter::chain::Guest;
use fabric::consenter::types::{Envelope, EnvelopeInfo};

struct WrongVersion;

impl Guest for WrongVersion {
    fn handle_chain(_metadata: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
    fn start() {}
    fn enqueue(envelopes: Vec<(Envelope, EnvelopeInfo)>) -> Vec<bool> {
        vec![false; envelopes.len()]
    }
    fn on_timer(_id: u32) {}
    fn halt() {}
}

export!(WrongVersion);
