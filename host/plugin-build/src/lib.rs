//! For build scripts only: builds guest plugins of the `plugins/` workspace
//! for `wasm32-wasip2` (release) and packages them with the manifest
//! custom section the runtime's package checks read. The node's build
//! script builds what ships (solo); the test-plugins crate's builds the
//! hostile and mutant plugins, so a release build compiles no test plugin.
//!
//! The plugins are a separate cargo workspace, built into `target/plugins`
//! (its own target directory, so the nested cargo never waits on the outer
//! build's lock; two build scripts building plugins at once wait on each
//! other). They are rebuilt only when `plugins/` or `wit/` change.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target guest plugins are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// The repository's root (the parent of `host/`), from a crate directory
/// under it.
pub fn repo_root(manifest_dir: &Path) -> PathBuf {
    manifest_dir
        .ancestors()
        .find(|d| d.join("plugins").join("Cargo.toml").exists() && d.join("wit").exists())
        .unwrap_or_else(|| panic!("no repository root (with plugins/ and wit/) above {}", manifest_dir.display()))
        .to_path_buf()
}

/// Builds `packages` of `plugins/` and returns the directory holding the
/// `.wasm` files (`target/plugins/wasm32-wasip2/release`, or under
/// `$CONSENTER_PLUGINS_TARGET_DIR`).
pub fn build(root: &Path, packages: &[&str]) -> PathBuf {
    let target_dir = env::var_os("CONSENTER_PLUGINS_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("plugins"));
    cargo_build(root, packages, &[], &target_dir);
    target_dir.join(WASM_TARGET).join("release")
}

/// Builds `package` of `plugins/` with cargo `features` (a mutant of a
/// plugin, for tests) in a target directory of its own (so that what
/// [`build`] ships is never overwritten by a mutant) and copies its output
/// `file` to `out` in the directory [`build`] returns. Returns `out`'s path.
pub fn build_variant(root: &Path, package: &str, features: &str, file: &str, out: &str) -> PathBuf {
    let base = env::var_os("CONSENTER_PLUGINS_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("plugins"));
    let variants = base.with_file_name(format!(
        "{}-variants",
        base.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "plugins".into())
    ));
    cargo_build(root, &[package], &[features], &variants);
    let built = variants.join(WASM_TARGET).join("release").join(file);
    let dir = base.join(WASM_TARGET).join("release");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let dest = dir.join(out);
    std::fs::copy(&built, &dest).unwrap_or_else(|e| panic!("copying {} to {}: {e}", built.display(), dest.display()));
    dest
}

fn cargo_build(root: &Path, packages: &[&str], features: &[&str], target_dir: &Path) {
    let plugins_dir = root.join("plugins");
    println!("cargo:rerun-if-changed={}", plugins_dir.display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-env-changed=CONSENTER_PLUGINS_TARGET_DIR");
    ensure_wasm_target();
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&plugins_dir).args(["build", "--release", "--target", WASM_TARGET]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    for f in features {
        cmd.args(["--features", f]);
    }
    cmd.arg("--target-dir").arg(target_dir);
    // The outer build's flags are for the host target, not for wasm.
    for var in
        ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR", "RUSTC_WORKSPACE_WRAPPER"]
    {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("running cargo to build plugins/: {e}"));
    if !status.success() {
        panic!(
            "building the wasm plugins {packages:?} (features {features:?}) in {} failed ({status}); see the cargo \
             output above",
            plugins_dir.display()
        );
    }
}

/// `file` (a plugin built by [`build`]) with its manifest appended: the
/// form in which the node ships a plugin (trusted by construction, not
/// signed).
pub fn packaged(root: &Path, dir: &Path, name: &str, file: &str, capabilities: &[&str]) -> Vec<u8> {
    let path = dir.join(file);
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("plugin {name}: reading {}: {e}", path.display()));
    let wit = wit_package(&root.join("wit").join("consenter.wit"));
    let version = plugins_version(&root.join("plugins").join("Cargo.toml"));
    let mut manifest = format!(
        "# consenter plugin manifest v1\nname=consenter-{name}\nversion={version}\nwit={wit}\nconsensus-type={name}\n"
    );
    for c in capabilities {
        manifest.push_str(&format!("capability={c}\n"));
    }
    let section = wasm_encoder::CustomSection { name: "consenter-manifest".into(), data: manifest.as_bytes().into() };
    bytes.push(wasm_encoder::Section::id(&section));
    wasm_encoder::Encode::encode(&section, &mut bytes);
    bytes
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
