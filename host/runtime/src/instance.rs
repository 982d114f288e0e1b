//! One chain's instance of a plugin: its own Store (memory cap, epoch
//! deadline re-armed before every call) and the calls into its exports.

use std::time::{Duration, Instant};

use wasmtime::Store;

use crate::bindings::{v0_1, v0_2, v0_2_clustered};
use crate::engine::{RuntimeError, deadline_ticks};
use crate::glue::PluginState;
use crate::support::Support;

/// An instance's exports, by contract world.
pub(crate) enum Bindings {
    V0_1(v0_1::Consenter),
    V0_2(v0_2::Consenter),
    V0_2Clustered(v0_2_clustered::ClusteredConsenter),
}

/// `$call` on the instance's `chain` export, whatever its contract version
/// (the `chain` interface is the same in every version).
macro_rules! on_chain {
    ($b:expr, |$c:ident| $call:expr) => {
        match $b {
            Bindings::V0_1(b) => {
                let $c = b.fabric_consenter_chain();
                $call
            }
            Bindings::V0_2(b) => {
                let $c = b.fabric_consenter_chain();
                $call
            }
            Bindings::V0_2Clustered(b) => {
                let $c = b.fabric_consenter_chain();
                $call
            }
        }
    };
}

/// The `(handle, envelope-info)` list `enqueue` takes, in the types of the
/// contract version at `$($t)::+`.
macro_rules! offered {
    ($s:expr, $envs:expr, $($t:ident)::+) => {{
        let mut offered = Vec::with_capacity($envs.len());
        for env in $envs {
            let info = $($t)::+::EnvelopeInfo {
                class: match env.class() {
                    crate::envelope::MessageClass::Normal => $($t)::+::MessageClass::Normal,
                    crate::envelope::MessageClass::Config => $($t)::+::MessageClass::Config,
                },
                size: env.size,
                config_sequence: env.config_seq,
            };
            offered.push(($s.data_mut().insert_envelope(env)?, info));
        }
        offered
    }};
}

/// A plugin's `handover` export, bound to one instance.
pub(crate) type HandoverGuest = crate::bindings::v0_2_handover::exports::fabric::consenter::handover::Guest;

/// What an ending instance handed to the next one through its `handover`
/// export (contract 0.2.1).
#[derive(Debug)]
pub struct Handover {
    /// The plugin's own state, in its own format (for `import-state` of
    /// the next build of the same type); None when it was over the
    /// per-call byte cap (`max_call_bytes`) and dropped.
    pub state: Option<Vec<u8>>,
    /// The envelopes of the batches it had cut and not made into blocks,
    /// in order: offered to the next instance before those pending in the
    /// host's cutter.
    pub cut: Vec<crate::envelope::Envelope>,
    /// The envelopes it held outside the host's cutter, in order: offered
    /// after those pending in the cutter.
    pub held: Vec<crate::envelope::Envelope>,
}

/// What an instance holds of the host at one moment (the conformance
/// suite's resource check reads it after each event).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Envelope, batch and block handles the plugin holds.
    pub handles: usize,
    /// Bytes of envelopes, batches and blocks held for it.
    pub held_bytes: usize,
    /// Timers armed.
    pub timers: usize,
    /// Support calls refused so far (the plugin asked something the
    /// host's invariants forbid).
    pub refusals: u32,
}

/// One chain's instance of a plugin. After a trap the Store is dropped and
/// every further call answers [`RuntimeError::Dead`].
pub struct Instance {
    pub(crate) plugin: String,
    pub(crate) channel: String,
    pub(crate) store: Option<Store<PluginState>>,
    pub(crate) bindings: Bindings,
    /// The plugin's optional `handover` export (0.2.1).
    pub(crate) handover: Option<HandoverGuest>,
    pub(crate) deadline: Option<Duration>,
    /// Envelopes written in blocks by the support of a dropped Store.
    pub(crate) written_before_trap: u64,
    /// Envelopes forwarded to other members by the support of a dropped
    /// Store.
    pub(crate) forwarded_before_trap: u64,
    /// Calls, durations, traps and held bytes (metrics).
    pub(crate) metrics: crate::observe::InstanceMetrics,
}

impl Instance {
    /// The support (for the chain actor: timers, status).
    pub fn support(&self) -> Option<&Support> {
        self.store.as_ref().map(|s| &s.data().support)
    }

    /// Mutable support.
    pub fn support_mut(&mut self) -> Option<&mut Support> {
        self.store.as_mut().map(|s| &mut s.data_mut().support)
    }

    /// Envelopes this instance's support wrote in blocks, also after a
    /// trap dropped the Store.
    pub fn written_envelopes(&self) -> u64 {
        self.support().map_or(self.written_before_trap, Support::written_envelopes)
    }

    /// Envelopes this instance forwarded to other members (clustered
    /// plugins), also after a trap dropped the Store.
    pub fn forwarded_envelopes(&self) -> u64 {
        self.support().map_or(self.forwarded_before_trap, Support::forwarded_envelopes)
    }

    /// The most bytes of envelopes this instance may be handed in one
    /// `enqueue` call: a quarter of its held-bytes budget, so the host's
    /// own grouping never makes an honest plugin pass it.
    pub fn max_group_bytes(&self) -> usize {
        self.store.as_ref().map_or(usize::MAX, |s| s.data().held_budget() / 4)
    }

    /// What the instance holds of the host now (None once it trapped).
    pub fn resources(&self) -> Option<Resources> {
        let st = self.store.as_ref()?.data();
        Some(Resources {
            handles: st.handles,
            held_bytes: st.held_bytes,
            timers: st.support.armed_timers(),
            refusals: st.support.refusals(),
        })
    }

    /// Whether the Store is still alive.
    pub fn is_alive(&self) -> bool {
        self.store.is_some()
    }

    fn call<R>(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&Bindings, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, RuntimeError> {
        let Some(store) = self.store.as_mut() else {
            return Err(RuntimeError::Dead { plugin: self.plugin.clone(), channel: self.channel.clone() });
        };
        if let Some(d) = self.deadline {
            let s = store.data_mut();
            s.call_started = Instant::now();
            s.host_time = Duration::ZERO;
            store.set_epoch_deadline(deadline_ticks(d));
        }
        let started = Instant::now();
        let r = f(&self.bindings, store);
        self.metrics.call(name, started.elapsed(), r.is_err());
        self.metrics.held_bytes(if r.is_err() { 0 } else { store.data().held_bytes });
        match r {
            Ok(r) => Ok(r),
            Err(e) => {
                // A trap ends this Store; the node and other chains go on.
                if let Some(store) = self.store.take() {
                    self.written_before_trap = store.data().support.written_envelopes();
                    self.forwarded_before_trap = store.data().support.forwarded_envelopes();
                }
                Err(RuntimeError::Trap {
                    plugin: self.plugin.clone(),
                    channel: self.channel.clone(),
                    call: name,
                    reason: trap_reason(&e),
                })
            }
        }
    }

    /// `handle-chain(metadata)`: Ok(Err(reason)) if the plugin refused.
    pub fn handle_chain(&mut self, metadata: &[u8]) -> Result<Result<(), String>, RuntimeError> {
        self.call("handle-chain", |b, s| on_chain!(b, |c| c.call_handle_chain(s, metadata)))
    }

    /// `start()`.
    pub fn start(&mut self) -> Result<(), RuntimeError> {
        self.call("start", |b, s| on_chain!(b, |c| c.call_start(s)))
    }

    /// `enqueue(envelopes)`: whether the plugin accepted each, in order.
    /// An answer list of the wrong length refuses them all.
    pub fn enqueue(&mut self, envs: Vec<crate::envelope::Envelope>) -> Result<Vec<bool>, RuntimeError> {
        let n = envs.len();
        let answers = self.call("enqueue", |b, s| match b {
            Bindings::V0_1(b) => {
                let offered = offered!(s, envs, v0_1::fabric::consenter::types);
                b.fabric_consenter_chain().call_enqueue(s, &offered)
            }
            Bindings::V0_2(b) => {
                let offered = offered!(s, envs, v0_2::fabric::consenter::types);
                b.fabric_consenter_chain().call_enqueue(s, &offered)
            }
            Bindings::V0_2Clustered(b) => {
                let offered = offered!(s, envs, v0_2::fabric::consenter::types);
                b.fabric_consenter_chain().call_enqueue(s, &offered)
            }
        })?;
        if answers.len() != n {
            tracing::warn!(channel = %self.channel, offered = n, answers = answers.len(), "plugin answered enqueue with a list of the wrong length");
            return Ok(vec![false; n]);
        }
        Ok(answers)
    }

    /// `on-timer(id)`.
    pub fn on_timer(&mut self, id: u32) -> Result<(), RuntimeError> {
        self.call("on-timer", |b, s| on_chain!(b, |c| c.call_on_timer(s, id)))
    }

    /// Whether the plugin takes cluster events (`clustered-consenter`).
    pub fn is_clustered(&self) -> bool {
        matches!(self.bindings, Bindings::V0_2Clustered(_))
    }

    /// `on-message(from, payload)` (a no-op for a single-node plugin).
    pub fn on_message(&mut self, from: u64, payload: &[u8]) -> Result<(), RuntimeError> {
        self.call("on-message", |b, s| match b {
            Bindings::V0_2Clustered(b) => b.fabric_consenter_cluster_events().call_on_message(s, from, payload),
            _ => Ok(()),
        })
    }

    /// `on-caught-up(height, error)` (a no-op for a single-node plugin).
    pub fn on_caught_up(&mut self, height: u64, error: Option<&str>) -> Result<(), RuntimeError> {
        self.call("on-caught-up", |b, s| match b {
            Bindings::V0_2Clustered(b) => b.fabric_consenter_cluster_events().call_on_caught_up(s, height, error),
            _ => Ok(()),
        })
    }

    /// `on-consenters-changed()` (a no-op for a single-node plugin).
    pub fn on_consenters_changed(&mut self) -> Result<(), RuntimeError> {
        self.call("on-consenters-changed", |b, s| match b {
            Bindings::V0_2Clustered(b) => b.fabric_consenter_cluster_events().call_on_consenters_changed(s),
            _ => Ok(()),
        })
    }

    /// `halt()`.
    pub fn halt(&mut self) -> Result<(), RuntimeError> {
        self.call("halt", |b, s| on_chain!(b, |c| c.call_halt(s)))
    }

    /// `handover.export-state()`, instead of `halt`, for an instance whose
    /// plugin exports it (None otherwise: call [`Instance::halt`]): the
    /// batches and envelopes it returns leave its handle tables and come
    /// back as host envelopes.
    pub fn export_state(&mut self) -> Option<Result<Handover, RuntimeError>> {
        let guest = self.handover.take()?;
        // A state is a byte list the plugin passes to the host: the
        // per-call byte cap applies (the lift itself is bounded by the old
        // instance's memory cap).
        let max = self.store.as_ref().map_or(0, |s| s.data().call_limits.max_call_bytes);
        let r = self.call("export-state", |_, s| {
            let handed = guest.call_export_state(&mut *s)?;
            let st = s.data_mut();
            let mut cut = Vec::new();
            for b in handed.batches {
                cut.extend(st.delete::<crate::glue::types::BatchRes>(b)?.0);
            }
            let held = handed.envelopes.into_iter().map(|e| st.take_envelope(e)).collect::<wasmtime::Result<_>>()?;
            Ok(Handover { state: Some(handed.state), cut, held })
        });
        Some(r.map(|mut h| {
            if let Some(len) = h.state.as_ref().map(Vec::len).filter(|len| *len > max) {
                tracing::warn!(
                    plugin = %self.plugin, channel = %self.channel, state_bytes = len, max_call_bytes = max,
                    "the state the old instance handed over is over the per-call byte cap (max-call-kib); the new \
                     build starts without it"
                );
                h.state = None;
            }
            h
        }))
    }

    /// `handover.import-state(state)` (Ok(Ok) without the export: nothing
    /// to import into). Ok(Err(reason)) if the plugin refused the state.
    pub fn import_state(&mut self, state: &[u8]) -> Result<Result<(), String>, RuntimeError> {
        let Some(guest) = self.handover.take() else { return Ok(Ok(())) };
        let r = self.call("import-state", |_, s| guest.call_import_state(&mut *s, state));
        self.handover = Some(guest);
        r
    }

    /// Ends the instance and returns its support (None once it trapped):
    /// a live swap hands the support's block sink and position to the next
    /// plugin's support.
    pub fn into_support(self) -> Option<Support> {
        self.store.map(|s| s.into_data().support)
    }
}

/// A one-line reason for a trap: the trap code (out of time, memory, stack,
/// unreachable) and the innermost message.
fn trap_reason(e: &wasmtime::Error) -> String {
    if let Some(t) = e.downcast_ref::<wasmtime::Trap>() {
        let what = match t {
            wasmtime::Trap::Interrupt => "call deadline exceeded (epoch interrupt)".to_string(),
            wasmtime::Trap::StackOverflow => "wasm stack overflow".to_string(),
            wasmtime::Trap::UnreachableCodeReached => {
                "unreachable executed (a panic or abort in the plugin)".to_string()
            }
            wasmtime::Trap::AllocationTooLarge => "memory cap reached".to_string(),
            other => other.to_string(),
        };
        return what;
    }
    // The innermost error, without the wasm backtrace wasmtime wraps it in.
    let s = e.root_cause().to_string();
    if s.contains("growing memory") || (s.contains("memory") && s.contains("limit")) {
        format!("memory cap reached ({s})")
    } else {
        s
    }
}
