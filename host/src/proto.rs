//! Fabric's protobuf messages (prost), generated at build time from
//! `host/proto/` with Fabric's package names and field numbers, so the bytes
//! on the wire and in blocks are identical to Fabric's. May touch nothing.
#![allow(clippy::all, missing_docs)]

/// `common` package: envelopes, blocks, headers, config transactions.
pub mod common {
    include!(concat!(env!("OUT_DIR"), "/common.rs"));
}
/// `orderer` package: AtomicBroadcast service, SeekInfo, orderer config values.
pub mod orderer {
    include!(concat!(env!("OUT_DIR"), "/orderer.rs"));
}
/// `msp` package: serialized identities and principals.
pub mod msp {
    include!(concat!(env!("OUT_DIR"), "/msp.rs"));
}
