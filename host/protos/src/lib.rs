//! Fabric's protobuf messages (prost), generated at build time from
//! `host/protos/proto/` with Fabric's package names and field numbers, so
//! the bytes on the wire and in blocks are identical to Fabric's. Messages
//! only, no gRPC: this crate builds for wasm32-wasip2, so a plugin can
//! decode what the host hands it (e.g. a raft plugin its
//! `etcdraft.ConfigMetadata`). May depend on prost only.
#![allow(clippy::all, missing_docs)]

/// `common` package: envelopes, blocks, headers, config transactions.
pub mod common {
    include!(concat!(env!("OUT_DIR"), "/common.rs"));
}
/// `orderer` package: SeekInfo, Broadcast/Deliver messages, cluster Step
/// messages, orderer config values.
pub mod orderer {
    include!(concat!(env!("OUT_DIR"), "/orderer.rs"));
}
/// `etcdraft` package: Fabric's raft ConfigMetadata, Options and BlockMetadata.
pub mod etcdraft {
    include!(concat!(env!("OUT_DIR"), "/etcdraft.rs"));
}
/// `msp` package: serialized identities and principals.
pub mod msp {
    include!(concat!(env!("OUT_DIR"), "/msp.rs"));
}
