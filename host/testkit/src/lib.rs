//! The deterministic test host of consenter-host, for plugin authors and
//! the node's own tests: a plugin's real runtime and support, a hand-moved
//! clock and blocks kept in memory (`testhost`); the canary every plugin
//! runs before the node lets it serve a channel (`canary`); the
//! deterministic simulated network for clustered plugins (`simnet`); and
//! the conformance suite over both (`conformance`). Its dependency tree has no gRPC, HTTP or TLS, so `cargo test` of a plugin's
//! own repository does not build the node. May depend on the runtime and
//! the Fabric data model only.

pub use consenter_runtime::{block, channel, envelope, proto, signer, support};

pub mod canary;
pub mod conformance;
pub mod simnet;
pub mod testhost;

pub use simnet::{SimConfig, SimNet, sim_template};
pub use testhost::{ManualClock, MemorySink, TestHost};
