//! Host bindings of the `fabric:consenter` contract (wasmtime's
//! `bindgen!` over `wit/`), with the host types behind each resource.
#![allow(missing_docs)]

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
