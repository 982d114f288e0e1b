//! Fabric's solo consenter (orderer/consensus/solo) as a plugin: one node,
//! no replication. Normal messages go through the block cutter; a batch
//! timer cuts what is pending after BatchTimeout; a config message cuts the
//! pending batch, then goes alone in a config block.

use consenter_sdk::{Batch, Consenter, Envelope, EnvelopeInfo, MessageClass, support, timers, warn, write_batch};

/// The one timer solo uses.
const BATCH_TIMER: u32 = 0;

struct Solo {
    /// Whether the batch timer is armed (Fabric's `timer != nil`).
    timer_armed: bool,
    /// Set after a failed write: the chain is errored, ignore further events.
    failed: bool,
    /// The config sequence; only config blocks this plugin writes change
    /// it, so it is read once and after each config block.
    sequence: u64,
    /// Envelopes offered (the drop-every-1000th and trap-after-100
    /// mutants count them).
    #[cfg(any(feature = "mutant-drop-1000th", feature = "mutant-trap-after-100"))]
    offered: u64,
}

impl Solo {
    fn arm(&mut self) {
        if cfg!(feature = "mutant-no-timer") {
            // Mutant: forgets the batch timer.
            return;
        }
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

    /// A run of normal messages in one cutter call, with the batch timer
    /// replayed message by message as Fabric's solo does it.
    fn order_normal_run(&mut self, run: Vec<Envelope>) {
        if run.is_empty() {
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
            if self.failed {
                return;
            }
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
            support::fail(&format!("writing config block: {e}"));
            self.failed = true;
        }
        self.sequence = support::sequence();
        self.disarm();
    }
}

impl Consenter for Solo {
    fn handle_chain(_metadata: Vec<u8>) -> Result<Self, String> {
        Ok(Solo {
            timer_armed: false,
            failed: false,
            sequence: support::sequence(),
            #[cfg(any(feature = "mutant-drop-1000th", feature = "mutant-trap-after-100"))]
            offered: 0,
        })
    }

    fn enqueue(&mut self, env: Envelope, info: EnvelopeInfo) -> bool {
        self.enqueue_many(vec![(env, info)]).pop().unwrap_or(false)
    }

    fn enqueue_many(&mut self, envelopes: Vec<(Envelope, EnvelopeInfo)>) -> Vec<bool> {
        let mut answers = Vec::with_capacity(envelopes.len());
        let mut run = Vec::new();
        for (env, info) in envelopes {
            if self.failed {
                answers.push(false);
                continue;
            }
            answers.push(true);
            #[cfg(feature = "mutant-trap-after-100")]
            {
                // Mutant: traps on the 100th envelope.
                self.offered += 1;
                if self.offered == 100 {
                    panic!("mutant-trap-after-100: the 100th envelope");
                }
            }
            #[cfg(feature = "mutant-drop-1000th")]
            {
                // Mutant: accepts every 1000th envelope and forgets it.
                self.offered += 1;
                if self.offered.is_multiple_of(1000) {
                    continue;
                }
            }
            // Revalidate a message validated under an older config (Fabric's
            // rule); it was accepted, so a failure only drops it.
            if info.config_sequence < self.sequence
                && let Err(reason) = support::revalidate(&env)
            {
                warn(&format!("discarding message {} that no longer passes validation: {reason}", env.tx_id()));
                continue;
            }
            match info.class {
                MessageClass::Normal => run.push(env),
                // Mutant: a config envelope goes into a normal block.
                MessageClass::Config if cfg!(feature = "mutant-config-in-block") => run.push(env),
                MessageClass::Config => {
                    self.order_normal_run(std::mem::take(&mut run));
                    if !self.failed {
                        self.order_config(env);
                    }
                }
            }
        }
        self.order_normal_run(run);
        answers
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
