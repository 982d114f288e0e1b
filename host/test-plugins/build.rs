//! Builds every plugin the tests load (solo, the hostile modes, the plugin
//! with an unknown import, the one built for another contract version, the
//! one that fails its canary), the mutants the conformance suite must
//! catch (solo and raft each built with one planted bug), two builds of the
//! hostile plugin that export `handover` and a packaged solo, as the node
//! ships it.

use std::path::PathBuf;

const PACKAGES: &[&str] = &[
    "consenter-raft",
    "consenter-solo",
    "consenter-template",
    "consenter-hostile",
    "consenter-hostile-import",
    "consenter-hostile-wit",
    "consenter-hostile-canary",
];

/// (package, features, its output, the variant's file name).
const MUTANTS: &[(&str, &str, &str, &str)] = &[
    ("consenter-solo", "mutant-no-timer", "consenter_solo.wasm", "mutant_solo_no_timer.wasm"),
    ("consenter-solo", "mutant-drop-1000th", "consenter_solo.wasm", "mutant_solo_drop_1000th.wasm"),
    ("consenter-solo", "mutant-config-in-block", "consenter_solo.wasm", "mutant_solo_config_in_block.wasm"),
    ("consenter-solo", "mutant-trap-after-100", "consenter_solo.wasm", "mutant_solo_trap_after_100.wasm"),
    ("consenter-raft", "mutant-minority-commit", "consenter_raft.wasm", "mutant_raft_minority_commit.wasm"),
    ("consenter-raft", "mutant-no-hardstate", "consenter_raft.wasm", "mutant_raft_no_hardstate.wasm"),
    ("consenter-raft", "mutant-never-rebind", "consenter_raft.wasm", "mutant_raft_never_rebind.wasm"),
    ("consenter-hostile", "handover", "consenter_hostile.wasm", "hostile_handover.wasm"),
    ("consenter-hostile", "handover,second-build", "consenter_hostile.wasm", "hostile_handover_b.wasm"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = consenter_plugin_build::repo_root(&manifest_dir);
    // Mutants first: each is a plugin built with one cargo feature that
    // plants a bug the conformance suite must catch.
    for (package, feature, file, out) in MUTANTS {
        consenter_plugin_build::build_variant(&root, package, feature, file, out);
    }
    let dir = consenter_plugin_build::build(&root, PACKAGES);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let solo = consenter_plugin_build::packaged(&root, &dir, "solo", "consenter_solo.wasm", &[]);
    std::fs::write(out_dir.join("solo.wasm"), solo).expect("writing the packaged solo");
    println!("cargo:rustc-env=CONSENTER_TEST_PLUGIN_DIR={}", dir.display());
}
