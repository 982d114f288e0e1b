//! consenter-host: a Hyperledger Fabric ordering node that runs every
//! consensus algorithm as a sandboxed WebAssembly component.
//!
//! Follow a Broadcast top to bottom: `grpc` (AtomicBroadcast) → `chain`
//! (the chain actor: one task, one plugin instance) → `runtime` (wasmtime) →
//! the plugin → `support` (native ConsenterSupport: `cutter`, `block`,
//! `signer`) → `ledger` (fsync) → Deliver reads the `ledger`.

pub mod admin;
pub mod block;
pub mod cache;
pub mod canary;
pub mod chain;
pub mod channel;
pub mod configtx;
pub mod cutter;
pub mod envelope;
pub mod grpc;
pub mod ledger;
pub mod loadgen;
pub mod msp;
pub mod node;
pub mod package;
pub mod policy;
pub mod processor;
pub mod proto;
pub mod runtime;
pub mod signer;
pub mod support;
pub mod testhost;
