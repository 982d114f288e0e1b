//! A compiled, pre-linked plugin (wasmtime's `InstancePre`) and its
//! instance limits; instantiates one [`Instance`] per chain.

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimitsBuilder};

use crate::bindings::{v0_1, v0_2, v0_2_clustered};
use crate::engine::{Pre, Runtime, RuntimeError, World, deadline_ticks};
use crate::glue::PluginState;
use crate::instance::{Bindings, Instance};
use crate::limits::{CallLimits, Limits};
use crate::support::Support;

/// Where a plugin's `handover` export is (found once per plugin).
pub(crate) type HandoverIndices = crate::bindings::v0_2_handover::exports::fabric::consenter::handover::GuestIndices;

/// A compiled, pre-linked consenter plugin.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) name: String,
    /// The version its package manifest names ("" for a bare component).
    pub(crate) version: String,
    /// SHA-256 of the plugin file's bytes (hex).
    pub(crate) sha256: String,
    pub(crate) pre: Pre,
    /// Where its optional `handover` export (0.2.1) is, if it has one.
    pub(crate) handover: Option<HandoverIndices>,
    pub(crate) runtime: Runtime,
    pub(crate) limits: Limits,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).field("version", &self.version).finish()
    }
}

impl Plugin {
    /// The plugin's name (its consensus type).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version its package manifest names ("" for a bare component
    /// loaded with `--allow-unsigned-plugins`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// SHA-256 of the plugin file (hex): what tells two builds apart.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The contract world it was built for.
    pub fn world(&self) -> World {
        match self.pre {
            Pre::V0_1(_) => World::V0_1,
            Pre::V0_2(_) => World::V0_2,
            Pre::V0_2Clustered(_) => World::V0_2Clustered,
        }
    }

    /// Whether it exports `handover` (contract 0.2.1): an instance it
    /// replaces hands it its in-memory state at a live upgrade.
    pub fn has_handover(&self) -> bool {
        self.handover.is_some()
    }

    /// The limits each instance of this plugin gets.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// This plugin with other instance limits. The stack size is the
    /// engine's: a different `stack_bytes` needs a [`Runtime`] built with
    /// it (the node keeps one per stack size).
    pub fn with_limits(&self, limits: Limits) -> Plugin {
        Plugin { limits, ..self.clone() }
    }

    /// This compiled plugin serving consensus type `name` (the conformance
    /// suite's second clustered type, the target of a live swap).
    pub fn with_name(&self, name: &str) -> Plugin {
        Plugin { name: name.to_string(), ..self.clone() }
    }

    /// A new instance for one chain, with its own Store around `support`.
    pub fn instantiate(&self, support: Support) -> Result<Instance, RuntimeError> {
        let limits = &self.limits;
        let channel = support.chain_id().to_string();
        let state = PluginState {
            table: ResourceTable::new(),
            envelopes: Default::default(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .table_elements(limits.table_elements)
                .instances(limits.instances)
                .tables(limits.tables)
                .memories(limits.memories)
                .trap_on_grow_failure(true)
                .build(),
            call_limits: CallLimits::from(limits),
            handles: 0,
            held_bytes: 0,
            call_started: Instant::now(),
            host_time: Duration::ZERO,
            random: support.random_seed(),
            stdio: Default::default(),
            support,
        };
        let mut store = Store::new(&self.runtime.inner.engine, state);
        store.limiter(|s| &mut s.limits);
        let deadline = if limits.has_deadline() && self.runtime.inner.limits.has_deadline() {
            // At the deadline, time the host spent on the plugin's behalf
            // (signature checks in `revalidate`) is given back: only the
            // plugin's own time counts.
            let d = limits.call_deadline;
            store.epoch_deadline_callback(move |ctx| {
                let s = ctx.data();
                let own = s.call_started.elapsed().saturating_sub(s.host_time);
                if own >= d {
                    Ok(wasmtime::UpdateDeadline::Interrupt)
                } else {
                    Ok(wasmtime::UpdateDeadline::Continue(deadline_ticks(d - own)))
                }
            });
            store.set_epoch_deadline(deadline_ticks(limits.call_deadline));
            Some(limits.call_deadline)
        } else {
            None
        };
        let instantiated = (|| -> wasmtime::Result<(Bindings, Option<crate::instance::HandoverGuest>)> {
            let instance = self.pre.instance_pre().instantiate(&mut store)?;
            let bindings = match &self.pre {
                Pre::V0_1(_) => Bindings::V0_1(v0_1::Consenter::new(&mut store, &instance)?),
                Pre::V0_2(_) => Bindings::V0_2(v0_2::Consenter::new(&mut store, &instance)?),
                Pre::V0_2Clustered(_) => {
                    Bindings::V0_2Clustered(v0_2_clustered::ClusteredConsenter::new(&mut store, &instance)?)
                }
            };
            let handover = self.handover.as_ref().map(|h| h.load(&mut store, &instance)).transpose()?;
            Ok((bindings, handover))
        })();
        let (bindings, handover) = instantiated.map_err(|e| RuntimeError::Instantiate {
            plugin: self.name.clone(),
            channel: channel.clone(),
            reason: format!("{e:#}"),
        })?;
        Ok(Instance {
            plugin: self.name.clone(),
            channel: channel.clone(),
            store: Some(store),
            bindings,
            handover,
            deadline,
            written_before_trap: 0,
            forwarded_before_trap: 0,
            metrics: crate::observe::InstanceMetrics::new(&self.name, &channel),
        })
    }
}
