//! Builds every plugin the tests load (solo, the hostile modes, the plugin
//! with an unknown import, the one built for another contract version, the
//! one that fails its canary) and a packaged solo, as the node ships it.

use std::path::PathBuf;

const PACKAGES: &[&str] = &[
    "consenter-raft",
    "consenter-solo",
    "consenter-hostile",
    "consenter-hostile-import",
    "consenter-hostile-wit",
    "consenter-hostile-canary",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = consenter_plugin_build::repo_root(&manifest_dir);
    let dir = consenter_plugin_build::build(&root, PACKAGES);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let solo = consenter_plugin_build::packaged(&root, &dir, "solo", "consenter_solo.wasm", &[]);
    std::fs::write(out_dir.join("solo.wasm"), solo).expect("writing the packaged solo");
    println!("cargo:rustc-env=CONSENTER_TEST_PLUGIN_DIR={}", dir.display());
}
