//! Fabric's solo consenter (orderer/consensus/solo) as a plugin: one node,
//! no replication. Normal messages go through the block cutter; a batch
//! timer cuts what is pending after BatchTimeout; a config message cuts the
//! pending batch, then goes alone in a config block.

use consenter_sdk::{Batch, Consenter, Envelope, MessageClass, support, timers, warn, write_batch};

/// The one timer solo uses.
const BATCH_TIMER: u32 = 0;

struct Solo {
    /// Whether the batch timer is armed (Fabric's `timer != nil`).
    timer_armed: bool,
    /// Set after a failed write: the chain is errored, ignore further events.
    failed: bool,
}

impl Solo {
    fn arm(&mut self) {
        let timeout = support::shared_config().batch_timeout_ms;
        match timers::set(BATCH_TIMER, timeout) {
            Ok(()) => self.timer_armed = true,
            Err(e) => {
                support::fail(&format!("arming the batch timer: {e}"));
                self.failed = true;
            }
        }
    }

    fn disarm(&mut self) {
        if self.timer_armed {
            timers::cancel(BATCH_TIMER);
            self.timer_armed = false;
        }
    }

    fn write(&mut self, batch: Batch) {
        if !write_batch(batch, &[]) {
            self.failed = true;
        }
    }

    fn order_normal(&mut self, env: Envelope) {
        let r = support::ordered(env);
        for batch in r.batches {
            if self.failed {
                return;
            }
            self.write(batch);
        }
        match (self.timer_armed, r.pending) {
            (true, false) => self.disarm(),
            (false, true) => self.arm(),
            _ => {}
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
            support::fail(&format!("writing config block: {e}"));
            self.failed = true;
        }
        self.disarm();
    }
}

impl Consenter for Solo {
    fn handle_chain(_metadata: Vec<u8>) -> Result<Self, String> {
        Ok(Solo { timer_armed: false, failed: false })
    }

    fn enqueue(&mut self, env: Envelope) -> bool {
        if self.failed {
            return false;
        }
        // Revalidate a message validated under an older config (Fabric's
        // rule); it was accepted, so a failure only drops it.
        if env.config_sequence() < support::sequence() {
            if let Err(reason) = support::revalidate(&env) {
                warn(&format!("discarding message {} that no longer passes validation: {reason}", env.tx_id()));
                return true;
            }
        }
        match env.class() {
            MessageClass::Normal => self.order_normal(env),
            MessageClass::Config => self.order_config(env),
        }
        true
    }

    fn on_timer(&mut self, id: u32) {
        if id != BATCH_TIMER || self.failed {
            return;
        }
        self.timer_armed = false;
        let batch = support::cut();
        if batch.len() == 0 {
            warn("batch timer expired with no pending requests, this might indicate a bug");
            return;
        }
        self.write(batch);
    }

    fn halt(&mut self) {
        self.disarm();
    }
}

consenter_sdk::export_consenter!(Solo);
