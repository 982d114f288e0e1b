//! Fabric's ordering data model, as consenter-host works with it: no
//! wasmtime, no tokio, no gRPC. An envelope (`envelope`) is checked by the
//! message processor (`processor`) against its channel's config bundle
//! (`channel`: orderer values, `msp` identities, `policy` tree, `configtx`
//! updates), batched by Fabric's block cutter (`cutter`), made into a block
//! and signed (`block`, `signer`). May depend on the protos and on crypto
//! and X.509 crates only.

pub use consenter_protos as proto;

pub mod block;
pub mod channel;
pub mod configtx;
pub mod cutter;
pub mod envelope;
pub mod msp;
pub mod policy;
pub mod processor;
pub mod signer;
