//! A consenter plugin: Fabric's solo (orderer/consensus/solo) on the
//! `fabric:consenter` contract in `wit/consenter.wit`. Normal messages go
//! through the host's block cutter; a batch timer cuts what is pending
//! after BatchTimeout; a config message cuts what is pending, then goes
//! alone in a config block. Change it into your own algorithm: the host
//! calls `Chain` one event at a time, and everything the chain does goes
//! through the imports (`support`, `timers`, `log`).

use std::cell::RefCell;

wit_bindgen::generate!({ world: "consenter", path: "wit" });

use exports::fabric::consenter::chain::Guest;
use fabric::consenter::types::{Batch, Envelope, EnvelopeInfo, Level, MessageClass};
use fabric::consenter::{log, support, timers};

/// The one timer this chain uses.
const BATCH_TIMER: u32 = 0;

/// The chain's state, between events.
struct Chain {
    /// Whether the batch timer is armed (Fabric's `timer != nil`).
    timer_armed: bool,
    /// Set after a failed write: the chain is errored.
    failed: bool,
    /// The config sequence (changed only by config blocks this chain
    /// writes).
    sequence: u64,
}

thread_local! {
    static CHAIN: RefCell<Option<Chain>> = const { RefCell::new(None) };
}

impl Chain {
    fn fail(&mut self, what: &str) {
        support::fail(what);
        self.failed = true;
    }

    fn arm(&mut self) {
        match timers::set(BATCH_TIMER, support::shared_config().batch_timeout_ms) {
            Ok(()) => self.timer_armed = true,
            Err(e) => self.fail(&format!("arming the batch timer: {e}")),
        }
    }

    fn disarm(&mut self) {
        if self.timer_armed {
            timers::cancel(BATCH_TIMER);
            self.timer_armed = false;
        }
    }

    fn write(&mut self, batch: Batch) {
        let r = support::create_next_block(batch).and_then(|b| support::write_block(b, &[]));
        if let Err(e) = r {
            self.fail(&format!("writing block: {e:?}"));
        }
    }

    /// Normal messages, in one cutter call; the timer follows each one's
    /// `pending` as Fabric's solo does.
    fn order_normal(&mut self, run: Vec<Envelope>) {
        if run.is_empty() || self.failed {
            return;
        }
        let r = support::ordered_many(run);
        for batch in r.batches {
            if self.failed {
                return;
            }
            self.write(batch);
        }
        for pending in r.pending {
            match (self.timer_armed, pending) {
                (true, false) => self.disarm(),
                (false, true) => self.arm(),
                _ => {}
            }
        }
    }

    fn order_config(&mut self, env: Envelope) {
        let pending = support::cut();
        if pending.len() > 0 {
            self.write(pending);
            if self.failed {
                return;
            }
        }
        let r = support::create_next_block(Batch::new(vec![env])).and_then(|b| support::write_config_block(b, &[]));
        if let Err(e) = r {
            self.fail(&format!("writing config block: {e:?}"));
        }
        self.sequence = support::sequence();
        self.disarm();
    }

    fn enqueue(&mut self, envelopes: Vec<(Envelope, EnvelopeInfo)>) -> Vec<bool> {
        let mut answers = Vec::with_capacity(envelopes.len());
        let mut run = Vec::new();
        for (env, info) in envelopes {
            if self.failed {
                answers.push(false);
                continue;
            }
            answers.push(true);
            // Validated under an older config: check it again (Fabric's
            // rule); it was accepted, so a failure only drops it.
            if info.config_sequence < self.sequence
                && let Err(reason) = support::revalidate(&env)
            {
                log::log(Level::Warn, &format!("dropping {}: {reason}", env.tx_id()));
                continue;
            }
            match info.class {
                MessageClass::Normal => run.push(env),
                MessageClass::Config => {
                    self.order_normal(std::mem::take(&mut run));
                    if !self.failed {
                        self.order_config(env);
                    }
                }
            }
        }
        self.order_normal(run);
        answers
    }

    fn on_timer(&mut self, id: u32) {
        if id != BATCH_TIMER || self.failed {
            return;
        }
        self.timer_armed = false;
        let batch = support::cut();
        if batch.len() > 0 {
            self.write(batch);
        }
    }
}

fn with<R>(f: impl FnOnce(&mut Chain) -> R) -> Option<R> {
    CHAIN.with(|c| c.borrow_mut().as_mut().map(f))
}

struct Component;

impl Guest for Component {
    fn handle_chain(_metadata: Vec<u8>) -> Result<(), String> {
        std::panic::set_hook(Box::new(|info| log::log(Level::Error, &format!("plugin panicked: {info}"))));
        let chain = Chain { timer_armed: false, failed: false, sequence: support::sequence() };
        CHAIN.with(|c| *c.borrow_mut() = Some(chain));
        Ok(())
    }

    fn start() {}

    fn enqueue(envelopes: Vec<(Envelope, EnvelopeInfo)>) -> Vec<bool> {
        let n = envelopes.len();
        with(|c| c.enqueue(envelopes)).unwrap_or_else(|| vec![false; n])
    }

    fn on_timer(id: u32) {
        with(|c| c.on_timer(id));
    }

    fn halt() {
        with(|c| c.disarm());
        CHAIN.with(|c| *c.borrow_mut() = None);
    }
}

export!(Component);
