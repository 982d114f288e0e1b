//! Build script: compiles Fabric's protobufs (protox, no `protoc`) and builds
//! the guest plugins the node ships for `wasm32-wasip2`, so that `cargo run`
//! and `cargo test` need no extra step.
//!
//! The plugins are a separate cargo workspace (`plugins/`), built into
//! `target/plugins` (its own target directory, so the nested cargo never
//! waits on the outer build's lock). They are rebuilt only when `plugins/` or
//! `wit/` change, never when only the host changes.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-wasip2";

/// Plugins embedded in the node: (consensus type, file built by plugins/).
const SHIPPED: &[(&str, &str)] = &[("solo", "consenter_solo.wasm")];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    compile_protos(&manifest_dir);
    build_plugins(&manifest_dir);
}

fn compile_protos(manifest_dir: &Path) {
    let proto_dir = manifest_dir.join("proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let files = [
        "common/common.proto",
        "common/configtx.proto",
        "common/configuration.proto",
        "common/policies.proto",
        "msp/identities.proto",
        "msp/msp_config.proto",
        "msp/msp_principal.proto",
        "orderer/ab.proto",
        "orderer/configuration.proto",
    ];
    let fds = protox::compile(files, [&proto_dir]).unwrap_or_else(|e| panic!("compiling {}: {e}", proto_dir.display()));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Deterministic marshalling of config maps (Fabric sorts map keys).
        .btree_map(".")
        // Zero-copy byte fields: envelopes and block data are sliced, not copied.
        .bytes(".")
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating Rust for Fabric protos: {e}"));
}

fn build_plugins(manifest_dir: &Path) {
    let root = manifest_dir.parent().expect("host/ has a parent").to_path_buf();
    let plugins_dir = root.join("plugins");
    let wit_dir = root.join("wit");
    println!("cargo:rerun-if-changed={}", plugins_dir.display());
    println!("cargo:rerun-if-changed={}", wit_dir.display());
    println!("cargo:rerun-if-env-changed=CONSENTER_PLUGINS_TARGET_DIR");

    ensure_wasm_target();

    let target_dir = env::var_os("CONSENTER_PLUGINS_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("plugins"));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&plugins_dir)
        .args(["build", "--release", "--workspace", "--target", WASM_TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags are for the host target, not for wasm.
    for var in
        ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR", "RUSTC_WORKSPACE_WRAPPER"]
    {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("running cargo to build plugins/: {e}"));
    if !status.success() {
        panic!("building the wasm plugins in {} failed ({status}); see the cargo output above", plugins_dir.display());
    }
    let out = target_dir.join(WASM_TARGET).join("release");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // Shipped plugins are embedded in the binary; test plugins are only
    // referenced by path (tests load them from disk).
    // Each carries a manifest (see host/src/package.rs), appended here:
    // embedded plugins are trusted by construction and not signed.
    let mut embedded = String::new();
    let wit = wit_package(&wit_dir.join("consenter.wit"));
    let version = plugins_version(&plugins_dir.join("Cargo.toml"));
    for (name, file) in SHIPPED {
        let path = out.join(file);
        assert!(path.exists(), "plugin {name} was not produced at {}", path.display());
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let manifest = format!(
            "# consenter plugin manifest v1\nname=consenter-{name}\nversion={version}\nwit={wit}\nconsensus-type={name}\n"
        );
        bytes.extend_from_slice(&custom_section("consenter-manifest", manifest.as_bytes()));
        let packaged = out_dir.join(format!("{name}.wasm"));
        std::fs::write(&packaged, &bytes).unwrap_or_else(|e| panic!("writing {}: {e}", packaged.display()));
        embedded.push_str(&format!("    (\"{name}\", include_bytes!({:?})),\n", packaged.display().to_string()));
    }
    std::fs::write(
        out_dir.join("embedded_plugins.rs"),
        format!("/// Plugins shipped inside the node: (consensus type, component bytes).\npub const EMBEDDED: &[(&str, &[u8])] = &[\n{embedded}];\n"),
    )
    .expect("writing embedded_plugins.rs");
    println!("cargo:rustc-env=CONSENTER_PLUGIN_DIR={}", out.display());
}

/// The `package ...;` of the contract, e.g. `fabric:consenter@0.1.0`.
fn wit_package(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.trim().strip_prefix("package ").map(|p| p.trim_end_matches(';').trim().to_string()))
        .unwrap_or_else(|| panic!("{} has no package line", path.display()))
}

/// `[workspace.package] version` of plugins/Cargo.toml.
fn plugins_version(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "version").then(|| v.trim().trim_matches('"').to_string())
        })
        .unwrap_or_else(|| panic!("{} has no version", path.display()))
}

/// A wasm custom section: id 0, LEB128 size, LEB128 name length, name,
/// payload (the same encoding as host/src/package.rs).
fn custom_section(name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb(out: &mut Vec<u8>, mut v: usize) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut body = Vec::new();
    leb(&mut body, name.len());
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut out = vec![0u8];
    leb(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Fails the build with a message saying how to fix a missing wasm target.
/// Under rustup, the `rust-toolchain.toml` at the root lists the target, so
/// a plain `cargo` invocation installs it; this check catches other setups.
fn ensure_wasm_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let installed =
        sysroot.as_ref().map(|s| Path::new(s).join("lib/rustlib").join(WASM_TARGET).exists()).unwrap_or(false);
    if installed {
        return;
    }
    // Try to install it the way the README does.
    let ok = Command::new("rustup").args(["target", "add", WASM_TARGET]).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        panic!(
            "the Rust target {WASM_TARGET} is not installed and `rustup target add {WASM_TARGET}` failed.\n\
             consenter-host builds its consensus plugins for {WASM_TARGET}; install it with:\n\
             \n    rustup target add {WASM_TARGET}\n"
        );
    }
}
