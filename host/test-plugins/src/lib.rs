//! The plugins consenter-host's tests load: never shipped, never built by a
//! release build of the node (this crate is a dev-dependency only).

/// Where the test plugins were built (`consenter_hostile.wasm`, …,
/// `consenter_solo.wasm`), one `.wasm` file each.
pub const DIR: &str = env!("CONSENTER_TEST_PLUGIN_DIR");

/// Solo packaged as the node embeds it (with its manifest).
pub const SOLO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/solo.wasm"));

/// The path of a test plugin file in [`DIR`].
pub fn path(file: &str) -> std::path::PathBuf {
    std::path::Path::new(DIR).join(file)
}
