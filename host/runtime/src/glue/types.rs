//! The contract's resources (`envelope`, `batch`, `block`) and what the
//! host holds behind each handle, counted per instance: handles against
//! `max-handles`, bytes against the held-bytes budget. Lists and byte
//! arguments are capped here, before the host does any work with them.
//!
//! What a plugin passes to the host, and how it is capped:
//! - handles (envelope, batch, block): the component model checks every
//!   handle when the call is lifted (a forged index, a handle of another
//!   type or one already consumed traps before the host runs); each Store
//!   has its own handle tables, so another chain's handles do not exist
//!   here. The number a plugin holds at once is capped (`max-handles`;
//!   trap).
//! - `list<envelope>` (`ordered-many`, `batch` constructor): wasmtime lifts
//!   it into a `Vec` from the plugin's memory (so it is already bounded by
//!   the memory cap, 4 bytes per handle); its length is checked first
//!   thing (`max-list-len`; trap: these functions have no error result).
//! - `list<u8>` and `string` (`write-block` metadata, `sign`, `log`,
//!   `fail`): lifted by a copy bounded by the plugin's memory; the length
//!   is checked before any other work: `write-block`/`write-config-block`
//!   metadata over `max_metadata_bytes` and `sign` messages over
//!   `max-call-bytes` are refused with `limit-exceeded` (a refusal, counted);
//!   `log`/`fail` text over `max-call-bytes` traps, shorter log lines are
//!   truncated to `max_log_bytes`.

use prost::Message;
use wasmtime::component::Resource;

use super::PluginState;
use crate::envelope::{Envelope, MessageClass};
use crate::support::{CreatedBlock, default_held_budget};

/// The type of envelope handles. Their values live in an
/// [`EnvelopeSlab`] (not the ResourceTable), keyed by the handle's rep: the
/// hot path hands the plugin one handle per envelope, and a slab slot costs
/// no allocation.
pub struct EnvelopeRes;

/// Envelopes the plugin holds handles to, by handle rep. The component
/// model guarantees a plugin only passes back handles it was given and
/// still owns, so a rep always names a live slot.
#[derive(Default)]
pub struct EnvelopeSlab {
    slots: Vec<Option<Envelope>>,
    free: Vec<u32>,
}

impl EnvelopeSlab {
    /// Stores an envelope; returns the owned handle to give the plugin.
    pub fn insert(&mut self, env: Envelope) -> wasmtime::Result<Resource<EnvelopeRes>> {
        let rep = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(env);
                i
            }
            None => {
                let i =
                    u32::try_from(self.slots.len()).map_err(|_| wasmtime::format_err!("too many envelope handles"))?;
                self.slots.push(Some(env));
                i
            }
        };
        Ok(Resource::new_own(rep))
    }

    pub(crate) fn get(&self, r: &Resource<EnvelopeRes>) -> wasmtime::Result<&Envelope> {
        self.slots
            .get(r.rep() as usize)
            .and_then(|s| s.as_ref())
            .ok_or_else(|| wasmtime::format_err!("envelope handle {} is not live", r.rep()))
    }

    pub(crate) fn get_mut(&mut self, r: &Resource<EnvelopeRes>) -> wasmtime::Result<&mut Envelope> {
        self.slots
            .get_mut(r.rep() as usize)
            .and_then(|s| s.as_mut())
            .ok_or_else(|| wasmtime::format_err!("envelope handle {} is not live", r.rep()))
    }

    pub(crate) fn replace(&mut self, r: &Resource<EnvelopeRes>, env: Envelope) -> wasmtime::Result<()> {
        let slot = self
            .slots
            .get_mut(r.rep() as usize)
            .and_then(|s| s.as_mut())
            .ok_or_else(|| wasmtime::format_err!("envelope handle {} is not live", r.rep()))?;
        *slot = env;
        Ok(())
    }

    pub(crate) fn take(&mut self, r: Resource<EnvelopeRes>) -> wasmtime::Result<Envelope> {
        let rep = r.rep();
        let env = self
            .slots
            .get_mut(rep as usize)
            .and_then(|s| s.take())
            .ok_or_else(|| wasmtime::format_err!("envelope handle {rep} is not live"))?;
        self.free.push(rep);
        Ok(env)
    }
}
impl PluginState {
    /// Hands the plugin an envelope: counts the handle against `max-handles`
    /// and its bytes against the held-bytes budget.
    pub fn insert_envelope(&mut self, env: Envelope) -> wasmtime::Result<Resource<EnvelopeRes>> {
        self.count_handle()?;
        self.hold(env.bytes.len())?;
        self.envelopes.insert(env)
    }

    pub(crate) fn count_handle(&mut self) -> wasmtime::Result<()> {
        if self.handles >= self.call_limits.max_handles {
            wasmtime::bail!(
                "the plugin holds {} envelope, batch and block handles, the cap (max-handles); it must drop some",
                self.handles
            );
        }
        self.handles += 1;
        Ok(())
    }

    /// The most bytes of envelopes, batches and blocks the plugin may make
    /// the host hold at once (`max-held-mib`, else sized from the channel's
    /// batch settings: [`default_held_budget`]).
    pub fn held_budget(&self) -> usize {
        self.call_limits.max_held_bytes.unwrap_or_else(|| default_held_budget(&self.support.config.batch_size))
    }

    /// Counts `n` more bytes held for the plugin; traps past the budget
    /// (the host's memory is not the plugin's to fill).
    pub(crate) fn hold(&mut self, n: usize) -> wasmtime::Result<()> {
        let budget = self.held_budget();
        let held = self.held_bytes.saturating_add(n);
        if held > budget {
            wasmtime::bail!(
                "the plugin holds {} bytes of envelopes, batches and blocks in host memory; {n} more would pass its \
                 budget of {budget} bytes (max-held-mib); it must write or drop what it holds",
                self.held_bytes
            );
        }
        self.held_bytes = held;
        Ok(())
    }

    pub(crate) fn release(&mut self, n: usize) {
        self.held_bytes = self.held_bytes.saturating_sub(n);
    }

    pub(crate) fn take_envelope(&mut self, r: Resource<EnvelopeRes>) -> wasmtime::Result<Envelope> {
        let e = self.envelopes.take(r)?;
        self.handles = self.handles.saturating_sub(1);
        self.release(e.bytes.len());
        Ok(e)
    }

    pub(crate) fn push<T: Held + Send + 'static>(&mut self, v: T) -> wasmtime::Result<Resource<T>> {
        self.count_handle()?;
        if let Err(e) = self.hold(v.held_bytes()) {
            self.handles = self.handles.saturating_sub(1);
            return Err(e);
        }
        Ok(self.table.push(v)?)
    }

    pub(crate) fn delete<T: Held + 'static>(&mut self, r: Resource<T>) -> wasmtime::Result<T> {
        let v = self.table.delete(r)?;
        self.handles = self.handles.saturating_sub(1);
        self.release(v.held_bytes());
        Ok(v)
    }

    /// Traps if a plugin passed more handles in one list than `max-list-len`.
    pub(crate) fn check_list(&self, call: &str, len: usize) -> wasmtime::Result<()> {
        let max = self.call_limits.max_list_len;
        if len > max {
            wasmtime::bail!("the plugin passed {len} handles to {call}, over the cap of {max} per call (max-list-len)");
        }
        Ok(())
    }

    /// Passes a call's answer on, unless the plugin has reached the refusal
    /// cap: then the call traps (the chain has failed; the plugin must not
    /// keep the chain's thread busy with more refused calls).
    pub(crate) fn answer<T, E: From<crate::support::SupportError>>(
        &mut self,
        r: Result<T, crate::support::SupportError>,
    ) -> wasmtime::Result<Result<T, E>> {
        if r.is_err() && self.support.refusals >= self.support.limits.max_refusals {
            wasmtime::bail!("the plugin made {} refused calls (the cap); its chain has failed", self.support.refusals);
        }
        Ok(r.map_err(Into::into))
    }

    /// Traps if a plugin passed more bytes in one argument than `max-call-bytes`.
    pub(crate) fn check_bytes(&self, call: &str, len: usize) -> wasmtime::Result<()> {
        let max = self.call_limits.max_call_bytes;
        if len > max {
            wasmtime::bail!("the plugin passed {len} bytes to {call}, over the cap of {max} per call (max-call-bytes)");
        }
        Ok(())
    }
}

/// A host value a handle keeps in host memory, counted against the
/// plugin's held-bytes budget.
pub trait Held {
    /// Bytes held (the envelopes' marshalled bytes).
    fn held_bytes(&self) -> usize;
}

/// A batch handle's host value.
pub struct BatchRes(pub Vec<Envelope>);

impl Held for BatchRes {
    fn held_bytes(&self) -> usize {
        self.0.iter().map(|e| e.bytes.len()).sum()
    }
}

impl Held for CreatedBlock {
    fn held_bytes(&self) -> usize {
        self.contents.bytes as usize
    }
}

/// The host side of the interface, the same for every contract version
/// that has it (the interface did not change): one body, one impl per
/// version's generated traits.
macro_rules! types_host {
    () => {
        impl types::Host for PluginState {}

        impl types::HostEnvelope for PluginState {
            fn size(&mut self, e: Resource<EnvelopeRes>) -> wasmtime::Result<u32> {
                Ok(self.envelopes.get(&e)?.size)
            }
            fn class(&mut self, e: Resource<EnvelopeRes>) -> wasmtime::Result<types::MessageClass> {
                Ok(match self.envelopes.get(&e)?.class() {
                    MessageClass::Normal => types::MessageClass::Normal,
                    MessageClass::Config => types::MessageClass::Config,
                })
            }
            fn config_sequence(&mut self, e: Resource<EnvelopeRes>) -> wasmtime::Result<u64> {
                Ok(self.envelopes.get(&e)?.config_seq)
            }
            fn tx_id(&mut self, e: Resource<EnvelopeRes>) -> wasmtime::Result<String> {
                Ok(self.envelopes.get(&e)?.tx_id.clone())
            }
            fn to_bytes(&mut self, e: Resource<EnvelopeRes>) -> wasmtime::Result<Vec<u8>> {
                Ok(self.envelopes.get(&e)?.bytes.to_vec())
            }
            fn drop(&mut self, e: Resource<EnvelopeRes>) -> wasmtime::Result<()> {
                self.take_envelope(e)?;
                Ok(())
            }
        }

        impl types::HostBatch for PluginState {
            fn new(&mut self, envelopes: Vec<Resource<EnvelopeRes>>) -> wasmtime::Result<Resource<BatchRes>> {
                self.check_list("the batch constructor", envelopes.len())?;
                let mut v = Vec::with_capacity(envelopes.len());
                for e in envelopes {
                    v.push(self.take_envelope(e)?);
                }
                self.push(BatchRes(v))
            }
            fn len(&mut self, b: Resource<BatchRes>) -> wasmtime::Result<u32> {
                Ok(self.table.get(&b)?.0.len() as u32)
            }
            fn size_bytes(&mut self, b: Resource<BatchRes>) -> wasmtime::Result<u64> {
                Ok(self.table.get(&b)?.0.iter().map(|e| u64::from(e.size)).sum())
            }
            fn drop(&mut self, b: Resource<BatchRes>) -> wasmtime::Result<()> {
                self.delete(b)?;
                Ok(())
            }
        }

        impl types::HostBlock for PluginState {
            fn number(&mut self, b: Resource<CreatedBlock>) -> wasmtime::Result<u64> {
                Ok(self.table.get(&b)?.number)
            }
            fn envelope_count(&mut self, b: Resource<CreatedBlock>) -> wasmtime::Result<u32> {
                Ok(self.table.get(&b)?.block.data.as_ref().map(|d| d.data.len() as u32).unwrap_or(0))
            }
            fn header_hash(&mut self, b: Resource<CreatedBlock>) -> wasmtime::Result<Vec<u8>> {
                Ok(self.table.get(&b)?.hash.to_vec())
            }
            fn to_bytes(&mut self, b: Resource<CreatedBlock>) -> wasmtime::Result<Vec<u8>> {
                Ok(self.table.get(&b)?.block.encode_to_vec())
            }
            fn drop(&mut self, b: Resource<CreatedBlock>) -> wasmtime::Result<()> {
                self.delete(b)?;
                Ok(())
            }
        }

        impl From<crate::support::SupportError> for types::SupportError {
            fn from(e: crate::support::SupportError) -> Self {
                use crate::support::SupportError as S;
                match e {
                    S::OutOfOrder(m) => types::SupportError::OutOfOrder(m),
                    S::LimitExceeded(m) => types::SupportError::LimitExceeded(m),
                    S::Invalid(m) => types::SupportError::Invalid(m),
                    S::Internal(m) => types::SupportError::Internal(m),
                }
            }
        }
    };
}

/// For plugins of `fabric:consenter@0.1.0`.
mod v0_1 {
    use super::*;
    use crate::bindings::v0_1::fabric::consenter::types;
    types_host!();
}

/// For plugins of `fabric:consenter@0.2` (0.2.0 and 0.2.1).
mod v0_2 {
    use super::*;
    use crate::bindings::v0_2::fabric::consenter::types;
    types_host!();
}
