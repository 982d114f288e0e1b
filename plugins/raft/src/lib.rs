//! Fabric's etcdraft consenter (consensus type `etcdraft`) as a
//! consenter-host plugin of the `clustered-handover-consenter` world
//! (contract 0.2.1: clustered, and it hands its in-memory state to the
//! next build at a live upgrade), on tikv's
//! raft-rs. As Fabric's etcdraft: the leader cuts blocks with the host's
//! cutter and proposes each whole block as one raft entry; followers
//! forward envelopes to the leader; every node writes each committed block
//! (followers through `replication.block-from-bytes`), with Fabric's
//! `etcdraft.BlockMetadata` (consenter ids, next consenter id, raft index)
//! as its consenter metadata; options come from the channel's
//! `etcdraft.ConfigMetadata`; pre-vote and check-quorum are on; the log is
//! compacted into a snapshot (the block at its index) every
//! SnapshotIntervalSize bytes, and a node behind the snapshot catches up
//! by pulling blocks through the host. The host owns threads, time and I/O:
//! this crate is a state machine driven by `enqueue`, `on-timer` and
//! `on-message`.

mod bindings {
    wit_bindgen::generate!({
        world: "clustered-handover-consenter",
        path: "../../wit",
        generate_all,
    });
}
mod chain;
mod log_store;
mod options;

use std::cell::RefCell;

use bindings::exports::fabric::consenter::{chain as chain_export, cluster_events, handover};
use bindings::fabric::consenter::types::{Envelope, EnvelopeInfo};

std::thread_local! {
    static CHAIN: RefCell<Option<chain::Raft>> = const { RefCell::new(None) };
}

fn with<R>(f: impl FnOnce(&mut chain::Raft) -> R) -> Option<R> {
    CHAIN.with(|c| c.borrow_mut().as_mut().map(f))
}

struct Export;

impl chain_export::Guest for Export {
    fn handle_chain(metadata: Vec<u8>) -> Result<(), String> {
        std::panic::set_hook(Box::new(|info| {
            bindings::fabric::consenter::log::log(
                bindings::fabric::consenter::types::Level::Error,
                &format!("raft plugin panicked: {info}"),
            );
        }));
        let c = chain::Raft::new(&metadata)?;
        CHAIN.with(|slot| *slot.borrow_mut() = Some(c));
        Ok(())
    }
    fn start() {
        with(|c| c.start());
    }
    fn enqueue(envelopes: Vec<(Envelope, EnvelopeInfo)>) -> Vec<bool> {
        let n = envelopes.len();
        with(|c| c.enqueue(envelopes)).unwrap_or_else(|| vec![false; n])
    }
    fn on_timer(id: u32) {
        with(|c| c.on_timer(id));
    }
    fn halt() {
        if let Some(mut chain) = CHAIN.with(|c| c.borrow_mut().take()) {
            chain.halt();
        }
    }
}

impl cluster_events::Guest for Export {
    fn on_message(from: u64, payload: Vec<u8>) {
        with(|c| c.on_message(from, &payload));
    }
    fn on_caught_up(height: u64, error: Option<String>) {
        with(|c| c.on_caught_up(height, error));
    }
    fn on_consenters_changed() {
        with(|c| c.on_consenters_changed());
    }
}

impl handover::Guest for Export {
    fn export_state() -> handover::Handed {
        let (state, batches, envelopes) =
            CHAIN.with(|c| c.borrow_mut().take()).map(|mut chain| chain.export_state()).unwrap_or_default();
        handover::Handed { state, batches, envelopes }
    }
    fn import_state(state: Vec<u8>) -> Result<(), String> {
        with(|c| c.import_state(&state)).unwrap_or_else(|| Err("import-state before handle-chain".into()))
    }
}

bindings::export!(Export with_types_in bindings);
