//! One chain's instance of a plugin: its own Store (memory cap, epoch
//! deadline re-armed before every call) and the calls into its exports.

use std::time::{Duration, Instant};

use wasmtime::Store;

use crate::bindings::Consenter;
use crate::engine::{RuntimeError, deadline_ticks};
use crate::glue::PluginState;
use crate::support::Support;

/// One chain's instance of a plugin. After a trap the Store is dropped and
/// every further call answers [`RuntimeError::Dead`].
pub struct Instance {
    pub(crate) plugin: String,
    pub(crate) channel: String,
    pub(crate) store: Option<Store<PluginState>>,
    pub(crate) bindings: Consenter,
    pub(crate) deadline: Option<Duration>,
    /// Envelopes written in blocks by the support of a dropped Store.
    pub(crate) written_before_trap: u64,
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

    /// The most bytes of envelopes this instance may be handed in one
    /// `enqueue` call: a quarter of its held-bytes budget, so the host's
    /// own grouping never makes an honest plugin pass it.
    pub fn max_group_bytes(&self) -> usize {
        self.store.as_ref().map_or(usize::MAX, |s| s.data().held_budget() / 4)
    }

    /// Whether the Store is still alive.
    pub fn is_alive(&self) -> bool {
        self.store.is_some()
    }

    fn call<R>(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&Consenter, &mut Store<PluginState>) -> wasmtime::Result<R>,
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
        match f(&self.bindings, store) {
            Ok(r) => Ok(r),
            Err(e) => {
                // A trap ends this Store; the node and other chains go on.
                if let Some(store) = self.store.take() {
                    self.written_before_trap = store.data().support.written_envelopes();
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
        self.call("handle-chain", |b, s| b.fabric_consenter_chain().call_handle_chain(s, metadata))
    }

    /// `start()`.
    pub fn start(&mut self) -> Result<(), RuntimeError> {
        self.call("start", |b, s| b.fabric_consenter_chain().call_start(s))
    }

    /// `enqueue(envelopes)`: whether the plugin accepted each, in order.
    /// An answer list of the wrong length refuses them all.
    pub fn enqueue(&mut self, envs: Vec<crate::envelope::Envelope>) -> Result<Vec<bool>, RuntimeError> {
        use crate::bindings::fabric::consenter::types::{EnvelopeInfo, MessageClass};
        let n = envs.len();
        let answers = self.call("enqueue", |b, s| {
            let mut offered = Vec::with_capacity(n);
            for env in envs {
                let info = EnvelopeInfo {
                    class: match env.class() {
                        crate::envelope::MessageClass::Normal => MessageClass::Normal,
                        crate::envelope::MessageClass::Config => MessageClass::Config,
                    },
                    size: env.size,
                    config_sequence: env.config_seq,
                };
                offered.push((s.data_mut().insert_envelope(env)?, info));
            }
            b.fabric_consenter_chain().call_enqueue(s, &offered)
        })?;
        if answers.len() != n {
            tracing::warn!(channel = %self.channel, offered = n, answers = answers.len(), "plugin answered enqueue with a list of the wrong length");
            return Ok(vec![false; n]);
        }
        Ok(answers)
    }

    /// `on-timer(id)`.
    pub fn on_timer(&mut self, id: u32) -> Result<(), RuntimeError> {
        self.call("on-timer", |b, s| b.fabric_consenter_chain().call_on_timer(s, id))
    }

    /// `halt()`.
    pub fn halt(&mut self) -> Result<(), RuntimeError> {
        self.call("halt", |b, s| b.fabric_consenter_chain().call_halt(s))
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
