//! Build script of the node: generates the AtomicBroadcast and Cluster gRPC
//! services (tonic) over the consenter-protos messages, and builds and embeds the
//! plugins the node ships (solo, etcdraft) for `wasm32-wasip2`, so that `cargo run`
//! needs no extra step. Test plugins are built by `host/test-plugins`, a
//! dev-dependency: a release build compiles none of them.

use std::env;
use std::path::{Path, PathBuf};

/// Plugins embedded in the node: (consensus type, package, file built,
/// capabilities its manifest asks for).
const SHIPPED: &[(&str, &str, &str, &[&str])] = &[
    ("solo", "consenter-solo", "consenter_solo.wasm", &[]),
    ("etcdraft", "consenter-raft", "consenter_raft.wasm", &["cluster", "replication", "storage"]),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    compile_service(&manifest_dir);
    embed_plugins(&manifest_dir);
}

fn compile_service(manifest_dir: &Path) {
    // The AtomicBroadcast and Cluster services only: their messages come
    // from the consenter-protos crate (extern paths), which builds for wasm
    // too.
    let proto_dir = manifest_dir.join("protos").join("proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let fds = protox::compile(["orderer/ab.proto", "orderer/cluster.proto"], [&proto_dir])
        .unwrap_or_else(|e| panic!("compiling {}: {e}", proto_dir.display()));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".common", "::consenter_protos::common")
        .extern_path(".orderer", "::consenter_protos::orderer")
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating the AtomicBroadcast and Cluster services: {e}"));
}

fn embed_plugins(manifest_dir: &Path) {
    let root = consenter_plugin_build::repo_root(manifest_dir);
    let packages: Vec<&str> = SHIPPED.iter().map(|(_, p, _, _)| *p).collect();
    let dir = consenter_plugin_build::build(&root, &packages);
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut embedded = String::new();
    for (name, _, file, caps) in SHIPPED {
        let bytes = consenter_plugin_build::packaged(&root, &dir, name, file, caps);
        let packaged = out_dir.join(format!("{name}.wasm"));
        std::fs::write(&packaged, &bytes).unwrap_or_else(|e| panic!("writing {}: {e}", packaged.display()));
        embedded.push_str(&format!("    (\"{name}\", include_bytes!({:?})),\n", packaged.display().to_string()));
    }
    std::fs::write(
        out_dir.join("embedded_plugins.rs"),
        format!("/// Plugins shipped inside the node: (consensus type, component bytes).\npub const EMBEDDED: &[(&str, &[u8])] = &[\n{embedded}];\n"),
    )
    .expect("writing embedded_plugins.rs");
}
