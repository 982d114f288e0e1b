//! Resource limits of plugin instances (per plugin type) and the caps
//! the import glue checks.

use std::time::Duration;

/// Resource limits of one plugin instance, set per plugin type (see
/// [`Limits::with_overrides`]). Where each is enforced:
/// - `memory_bytes`, `table_elements`, `instances`, `tables`, `memories`:
///   the Store's limiter (a grow past the cap traps);
/// - `stack_bytes`: the engine (`max_wasm_stack`; a plugin with its own
///   value gets its own engine);
/// - `call_deadline`: epoch interruption, re-armed before every call;
/// - `max_list_len`, `max_call_bytes`, `max_handles`, `max_held_bytes`:
///   the import functions in `support.rs`, before the host does any work
///   with the argument;
/// - `max_metadata_bytes`, `disk_bytes_per_minute`, `disk_bytes_total`: the
///   chain's support when a block is written (they are copied into its
///   [`crate::support::SupportLimits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Cap on the instance's linear memory, in bytes.
    pub memory_bytes: usize,
    /// Cap on table elements.
    pub table_elements: usize,
    /// Cap on core and component instances in the Store.
    pub instances: usize,
    /// Cap on tables in the Store.
    pub tables: usize,
    /// Cap on linear memories in the Store.
    pub memories: usize,
    /// Wall-clock deadline of one call into the plugin. `Duration::MAX`
    /// means none (the engine is then built without epoch interruption).
    pub call_deadline: Duration,
    /// Wasm stack size, in bytes.
    pub stack_bytes: usize,
    /// Most handles (envelopes, batches) in one list a plugin passes to
    /// the host (`ordered-many`, the `batch` constructor).
    pub max_list_len: usize,
    /// Most bytes in one `list<u8>` or `string` a plugin passes to the host
    /// (`write-block` metadata, `sign`, `log`, `fail`).
    pub max_call_bytes: usize,
    /// Most envelope, batch and block handles a plugin instance holds at
    /// once (host memory the wasm memory cap does not cover).
    pub max_handles: usize,
    /// Most bytes of envelopes, batches and blocks a plugin instance makes
    /// the host hold at once; None: sized from the channel's batch
    /// settings ([`crate::support::default_held_budget`]).
    pub max_held_bytes: Option<usize>,
    /// Largest consenter metadata of one block.
    pub max_metadata_bytes: usize,
    /// Ledger bytes a chain may write per minute.
    pub disk_bytes_per_minute: u64,
    /// Ledger bytes a chain may hold in all (`u64::MAX`: no cap).
    pub disk_bytes_total: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            table_elements: 20_000,
            instances: 32,
            tables: 32,
            memories: 8,
            call_deadline: Duration::from_secs(1),
            stack_bytes: 512 << 10,
            max_list_len: 65_536,
            max_call_bytes: 4 << 20,
            max_handles: 1 << 20,
            max_held_bytes: None,
            max_metadata_bytes: crate::support::SupportLimits::default().max_metadata_bytes,
            disk_bytes_per_minute: crate::support::SupportLimits::default().disk_bytes_per_minute,
            disk_bytes_total: u64::MAX,
        }
    }
}

/// A `--plugin-limits` specification that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    #[error("plugin limits {spec:?}: expected KEY=VALUE, got {item:?}")]
    Syntax { spec: String, item: String },
    #[error("plugin limits {spec:?}: unknown key {key:?} (known: {known})")]
    UnknownKey { spec: String, key: String, known: &'static str },
    #[error("plugin limits {spec:?}: {key}={value:?} is not a positive whole number")]
    Value { spec: String, key: String, value: String },
}

const LIMIT_KEYS: &str = "memory-mib, table-elements, instances, tables, memories, call-deadline-ms, stack-kib, \
                          max-list-len, max-call-kib, max-handles, max-held-mib, max-metadata-kib, \
                          disk-mib-per-minute, disk-mib-total";

impl Limits {
    /// No limits at all (benchmarks: the cost of the limits is the
    /// difference with [`Limits::default`]). Never use it for a plugin you
    /// do not trust.
    pub fn unlimited() -> Limits {
        Limits {
            memory_bytes: usize::MAX,
            table_elements: usize::MAX,
            instances: usize::MAX,
            tables: usize::MAX,
            memories: usize::MAX,
            call_deadline: Duration::MAX,
            stack_bytes: 512 << 10,
            max_list_len: usize::MAX,
            max_call_bytes: usize::MAX,
            max_handles: usize::MAX,
            max_held_bytes: Some(usize::MAX),
            max_metadata_bytes: usize::MAX,
            disk_bytes_per_minute: u64::MAX,
            disk_bytes_total: u64::MAX,
        }
    }

    /// These limits with the overrides of `spec`, a comma-separated list of
    /// `KEY=VALUE` (e.g. `memory-mib=64,call-deadline-ms=1000`; keys in
    /// [`LIMIT_KEYS`]).
    pub fn with_overrides(&self, spec: &str) -> Result<Limits, LimitsError> {
        let mut l = self.clone();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(LimitsError::Syntax { spec: spec.into(), item: item.into() });
            };
            let (key, value) = (key.trim(), value.trim());
            let n: usize = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| LimitsError::Value {
                spec: spec.into(),
                key: key.into(),
                value: value.into(),
            })?;
            let bytes = |shift: u32| n.saturating_mul(1 << shift);
            match key {
                "memory-mib" => l.memory_bytes = bytes(20),
                "table-elements" => l.table_elements = n,
                "instances" => l.instances = n,
                "tables" => l.tables = n,
                "memories" => l.memories = n,
                "call-deadline-ms" => l.call_deadline = Duration::from_millis(n as u64),
                "stack-kib" => l.stack_bytes = bytes(10),
                "max-list-len" => l.max_list_len = n,
                "max-call-kib" => l.max_call_bytes = bytes(10),
                "max-handles" => l.max_handles = n,
                "max-held-mib" => l.max_held_bytes = Some(bytes(20)),
                "max-metadata-kib" => l.max_metadata_bytes = bytes(10),
                "disk-mib-per-minute" => l.disk_bytes_per_minute = (n as u64).saturating_mul(1 << 20),
                "disk-mib-total" => l.disk_bytes_total = (n as u64).saturating_mul(1 << 20),
                _ => {
                    return Err(LimitsError::UnknownKey { spec: spec.into(), key: key.into(), known: LIMIT_KEYS });
                }
            }
        }
        Ok(l)
    }

    pub(crate) fn has_deadline(&self) -> bool {
        self.call_deadline != Duration::MAX
    }
}

/// The caps the import functions check (a copy of the plugin's [`Limits`]).
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// See [`Limits::max_list_len`].
    pub max_list_len: usize,
    /// See [`Limits::max_call_bytes`].
    pub max_call_bytes: usize,
    /// See [`Limits::max_handles`].
    pub max_handles: usize,
    /// See [`Limits::max_held_bytes`].
    pub max_held_bytes: Option<usize>,
}

impl From<&Limits> for CallLimits {
    fn from(l: &Limits) -> Self {
        CallLimits {
            max_list_len: l.max_list_len,
            max_call_bytes: l.max_call_bytes,
            max_handles: l.max_handles,
            max_held_bytes: l.max_held_bytes,
        }
    }
}

impl Limits {
    /// `base` with this plugin's per-block and disk caps.
    pub fn support_limits(&self, base: &crate::support::SupportLimits) -> crate::support::SupportLimits {
        crate::support::SupportLimits {
            max_metadata_bytes: self.max_metadata_bytes,
            disk_bytes_per_minute: self.disk_bytes_per_minute,
            disk_bytes_total: self.disk_bytes_total,
            ..base.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_overrides() {
        let l = Limits::default()
            .with_overrides("memory-mib=16, call-deadline-ms=250,max-list-len=4,max-call-kib=8")
            .unwrap();
        assert_eq!(l.memory_bytes, 16 << 20);
        assert_eq!(l.call_deadline, Duration::from_millis(250));
        assert_eq!(l.max_list_len, 4);
        assert_eq!(l.max_call_bytes, 8 << 10);
        assert_eq!(l.stack_bytes, Limits::default().stack_bytes, "untouched keys keep their value");
        let e = Limits::default().with_overrides("memory=1").unwrap_err();
        assert!(e.to_string().contains("unknown key \"memory\""), "{e}");
        let e = Limits::default().with_overrides("memory-mib=0").unwrap_err();
        assert!(matches!(e, LimitsError::Value { .. }), "{e}");
        let e = Limits::default().with_overrides("memory-mib").unwrap_err();
        assert!(matches!(e, LimitsError::Syntax { .. }), "{e}");
        assert!(!Limits::unlimited().has_deadline());
        assert!(Limits::default().has_deadline());
    }
}
