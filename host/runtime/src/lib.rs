//! The plugin runtime of consenter-host, layered like wasmtime itself:
//! one [`Runtime`] (`engine`: Engine + Linker, shared by the node), one
//! [`Plugin`] per consenter component (`plugin`: compiled once,
//! pre-linked as `InstancePre`), one [`Instance`] per chain (`instance`:
//! its own Store, memory cap, epoch deadline per call), with the
//! [`Limits`] of each (`limits`). What a plugin's imports do is the glue
//! (`glue/`: one module per contract interface) over the native
//! ConsenterSupport state machine (`support`), which knows nothing of
//! wasmtime. Plugin packages, signatures and the trust store (`package`),
//! the compiled-artifact cache (`cache`), the metrics it records
//! (`observe`, through the `metrics` facade), and the deterministic core of a
//! chain (`chain_core`, `status`) that the node's chain actor and the
//! testkit both drive. May depend on the Fabric data model and wasmtime;
//! never on gRPC, HTTP or TLS.

pub use consenter_fabric::{block, channel, configtx, cutter, envelope, msp, policy, processor, proto, signer};

pub mod bindings;
pub mod cache;
pub mod chain_core;
pub mod cluster;
pub mod engine;
pub mod glue;
pub mod instance;
pub mod limits;
pub mod observe;
pub mod package;
pub mod plugin;
pub mod status;
pub mod support;
pub mod wasi;

pub use engine::{Runtime, RuntimeError, WIT_PACKAGE, WIT_PACKAGES, World};
pub use glue::PluginState;
pub use instance::{Instance, Resources};
pub use limits::{CallLimits, Limits, LimitsError};
pub use plugin::Plugin;
