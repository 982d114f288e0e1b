//! `consenter-host plugin new`: the crate it writes builds for
//! wasm32-wasip2 on its own (the contract's WIT and wit-bindgen, no path
//! into this repository) and passes the conformance suite.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_consenter-host"))
}

#[test]
fn a_new_plugin_crate_builds_and_conforms() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mysolo");
    let o = bin().args(["plugin", "new", "mysolo", "--dir"]).arg(&dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["Cargo.toml", "Cargo.lock", "src/lib.rs", "wit/consenter.wit", "README.md", ".gitignore"] {
        assert!(dir.join(f).is_file(), "{f} was not written");
    }
    // The same wit-bindgen as the plugins workspace.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let ours = std::fs::read_to_string(root.join("plugins/Cargo.toml")).unwrap();
    let line = |t: &str| t.lines().find(|l| l.starts_with("wit-bindgen")).map(str::to_string);
    assert_eq!(line(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()), line(&ours));
    assert_eq!(std::fs::read_to_string(dir.join("wit/consenter.wit")).unwrap(), {
        std::fs::read_to_string(root.join("wit/consenter.wit")).unwrap()
    });

    // Not over a crate that is there, nor with a name cargo would refuse.
    let o = bin().args(["plugin", "new", "mysolo", "--dir"]).arg(&dir).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists and is not empty"));
    let o = bin().args(["plugin", "new", "My Solo", "--dir"]).arg(tmp.path().join("x")).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("use lower case letters"));

    // Built as its README says, offline: the plugins' build fetched its
    // dependencies. The plugins' target directory shares their builds.
    let target = root.join("target").join("plugins");
    let mut cargo = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    cargo.current_dir(&dir).args(["build", "--release", "--target", "wasm32-wasip2", "--offline"]);
    cargo.env("CARGO_TARGET_DIR", &target);
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER"] {
        cargo.env_remove(var);
    }
    let o = cargo.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let wasm = target.join("wasm32-wasip2/release/mysolo.wasm");
    let o = bin()
        .arg("conformance")
        .arg(&wasm)
        .args(["--consensus-type", "mysolo", "--long-run", "2000", "--schedules", "50"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("9 passed, 0 failed"), "{out}");
}
