//! A hostile consenter for the fault-containment tests. It behaves like a
//! tiny solo (every envelope its own block) until the event named by its
//! mode, read from ConsensusType.metadata as text, e.g. `loop:enqueue`:
//! - `trap:<event>`: executes `unreachable`;
//! - `panic:<event>`: panics;
//! - `loop:<event>`: spins forever (the epoch deadline must stop it);
//! - `oom:<event>`: grows memory without bound (the memory cap must stop it);
//! - `recurse:<event>`: unbounded recursion (the stack limit must stop it).
//!
//! - `refuse:enqueue`: answers false to every envelope (not a fault).
//!
//! `<event>` is one of `handle-chain`, `start`, `enqueue`, `timer`, `halt`.

use consenter_sdk::{Batch, Consenter, Envelope, EnvelopeInfo, support, timers, write_batch};

struct Hostile {
    mode: String,
}

fn misbehave(mode: &str, event: &str) {
    let Some((what, when)) = mode.split_once(':') else { return };
    if when != event {
        return;
    }
    match what {
        "trap" => core::arch::wasm32::unreachable(),
        "panic" => panic!("hostile plugin panics in {event}"),
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = core::hint::black_box(x.wrapping_add(1));
            }
        }
        "oom" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                core::hint::black_box(&hoard);
            }
        }
        "recurse" => {
            core::hint::black_box(recurse(core::hint::black_box(1)));
        }
        _ => {}
    }
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let buf = core::hint::black_box([n; 64]);
    recurse(buf[3] + 1) + buf[7]
}

impl Consenter for Hostile {
    fn handle_chain(_metadata: Vec<u8>) -> Result<Self, String> {
        let cfg = support::shared_config();
        let mode = String::from_utf8_lossy(&cfg.consensus_metadata).into_owned();
        misbehave(&mode, "handle-chain");
        Ok(Hostile { mode })
    }
    fn start(&mut self) {
        misbehave(&self.mode, "start");
        let _ = timers::set(1, 10);
    }
    fn enqueue(&mut self, env: Envelope, _info: EnvelopeInfo) -> bool {
        if self.mode == "refuse:enqueue" {
            return false;
        }
        misbehave(&self.mode, "enqueue");
        write_batch(Batch::new(vec![env]), &[])
    }
    fn on_timer(&mut self, _id: u32) {
        misbehave(&self.mode, "timer");
    }
    fn halt(&mut self) {
        misbehave(&self.mode, "halt");
    }
}

consenter_sdk::export_consenter!(Hostile);
