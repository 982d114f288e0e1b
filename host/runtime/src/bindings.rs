//! Host bindings of the `fabric:consenter` contract (wasmtime's
//! `bindgen!`), one module per contract version, with the host types
//! behind each resource. The host links every version at once, so a
//! plugin built for an older contract keeps loading:
//! - [`v0_1`]: `fabric:consenter@0.1.0` (`wit/0.1.0/`), world `consenter`;
//! - [`v0_2`]: `fabric:consenter@0.2.1` (`wit/`), world `consenter`
//!   (single-node plugins such as solo); a 0.2.0 plugin links to it too
//!   (wasmtime matches 0.2.x names semver-compatibly);
//! - [`v0_2_clustered`]: the same package's `clustered-consenter` world
//!   (raft), which reuses [`v0_2`]'s interfaces and adds `cluster`,
//!   `replication`, `storage` and the `cluster-events` export;
//! - [`v0_2_handover`]: the `handover-consenter` world, for its optional
//!   `handover` export only (looked up per plugin: a plugin of any 0.2
//!   world may export it).
#![allow(missing_docs)]

/// `fabric:consenter@0.1.0`, world `consenter`.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        world: "consenter",
        path: "../../wit/0.1.0",
        with: {
            "fabric:consenter/types.envelope": crate::glue::types::EnvelopeRes,
            "fabric:consenter/types.batch": crate::glue::types::BatchRes,
            "fabric:consenter/types.block": crate::support::CreatedBlock,
        },
        imports: { default: trappable },
    });
}

/// `fabric:consenter@0.2.1`, world `consenter`.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        world: "consenter",
        path: "../../wit",
        with: {
            "fabric:consenter/types.envelope": crate::glue::types::EnvelopeRes,
            "fabric:consenter/types.batch": crate::glue::types::BatchRes,
            "fabric:consenter/types.block": crate::support::CreatedBlock,
        },
        imports: { default: trappable },
    });
}

/// `fabric:consenter@0.2.1`, world `clustered-consenter`: the interfaces
/// it shares with the `consenter` world are [`v0_2`]'s.
pub mod v0_2_clustered {
    wasmtime::component::bindgen!({
        world: "clustered-consenter",
        path: "../../wit",
        with: {
            "fabric:consenter/types": super::v0_2::fabric::consenter::types,
            "fabric:consenter/support": super::v0_2::fabric::consenter::support,
            "fabric:consenter/timers": super::v0_2::fabric::consenter::timers,
            "fabric:consenter/log": super::v0_2::fabric::consenter::log,
        },
        imports: { default: trappable },
    });
}

/// `fabric:consenter@0.2.1`, world `handover-consenter`: only its
/// `handover` export is used (the imports are [`v0_2`]'s).
pub mod v0_2_handover {
    wasmtime::component::bindgen!({
        world: "handover-consenter",
        path: "../../wit",
        with: {
            "fabric:consenter/types": super::v0_2::fabric::consenter::types,
            "fabric:consenter/support": super::v0_2::fabric::consenter::support,
            "fabric:consenter/timers": super::v0_2::fabric::consenter::timers,
            "fabric:consenter/log": super::v0_2::fabric::consenter::log,
        },
        imports: { default: trappable },
    });
}
