//! consenter-host: a Hyperledger Fabric ordering node that runs every
//! consensus algorithm as a sandboxed WebAssembly component. This crate is
//! the node (binary `consenter-host`): the registrar (`node`), the chain
//! actor (`chain`), the ledger, the gRPC AtomicBroadcast service (`grpc`),
//! the admin API (`admin`), TLS from PEM files (`tls`) and the load
//! generator (`loadgen`). The Fabric
//! data model, the plugin runtime and the test host are crates of their
//! own, re-exported here under the names they always had.
//!
//! Follow a Broadcast top to bottom: `grpc` (AtomicBroadcast) → `chain`
//! (the chain actor: one thread, one plugin instance) → `runtime`
//! (wasmtime) → the plugin → `support` (native ConsenterSupport: `cutter`,
//! `block`, `signer`) → `ledger` (fsync) → Deliver reads the `ledger`.

pub use consenter_fabric::{block, channel, configtx, cutter, envelope, msp, policy, processor, signer};
pub use consenter_runtime as runtime;
pub use consenter_runtime::{cache, package, support};
pub use consenter_testkit::{canary, conformance, testhost};

pub mod admin;
pub mod chain;
pub mod cluster;
pub mod config;
pub mod grpc;
pub mod ledger;
pub mod loadgen;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod operations;
pub mod proto;
pub mod registry;
pub mod tls;
