//! Signed plugin packages end to end, with the real binary: `plugin
//! keygen`, `plugin sign` of the built solo plugin, `plugin verify` and
//! `plugin inspect`; a node loading the signed plugin from `--plugin` and
//! ordering blocks with it (and, restarted, from its compiled-artifact
//! cache); and the refusals: a tampered signed plugin, an unsigned plugin
//! (accepted only with `--allow-unsigned-plugins`), a plugin built for
//! another contract version (plugins/hostile-wit), a consensus type that
//! does not match the manifest, and a plugin that fails its canary.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_consenter-host"))
}

fn built(file: &str) -> PathBuf {
    consenter_test_plugins::path(file)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A key pair `DIR/keys/alice.{key,pub}`; returns (key path, keys dir, key id).
fn keygen(dir: &Path) -> (PathBuf, PathBuf, String) {
    let keys = dir.join("keys");
    let (ok, out) = cli(&["plugin", "keygen", "--out", s(&keys.join("alice"))]);
    assert!(ok, "{out}");
    let id = out.split("key id ").nth(1).and_then(|r| r.split(';').next()).unwrap().to_string();
    assert_eq!(id.len(), 16, "{out}");
    (keys.join("alice.key"), keys, id)
}

/// `plugin sign` of `input` as consensus type `ctype` into `out`.
fn sign(key: &Path, input: &Path, ctype: &str, out: &Path) {
    let (ok, text) = cli(&[
        "plugin",
        "sign",
        "--key",
        s(key),
        "--name",
        "my solo",
        "--version",
        "2.0.1",
        "--consensus-type",
        ctype,
        s(input),
        "-o",
        s(out),
    ]);
    assert!(ok, "{text}");
}

/// Runs `start` with `args` on a fresh port and expects it to refuse to
/// start: returns its stderr. Panics if it starts listening instead.
fn start_refused(data: &Path, args: &[&str]) -> String {
    let mut child = bin()
        .arg("start")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stdout ends when the process exits (or says it listens: a failure).
    for line in BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok) {
        if line.starts_with("consenter-host listening on") {
            let _ = child.kill();
            panic!("the node started, but it should have refused: {args:?}");
        }
    }
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "exit status {status}: {err}");
    err
}

/// Broadcasts `n` envelopes to `channel` and reads block 1 (max message
/// count `n` cuts it): the plugin orders.
async fn orders(node: &NodeProc, channel: &str, n: usize) {
    let mut c = node.client().await;
    let envs = (0..n).map(|i| message(channel, &format!("pkg{i}"), 100)).collect();
    for (status, info) in broadcast_all(&mut c, envs).await {
        assert_eq!(status, 200, "{info}");
    }
    let blocks = tokio::time::timeout(Duration::from_secs(20), deliver(&mut c, channel, 1, 1)).await.unwrap();
    assert_eq!(blocks[0].data.as_ref().unwrap().data.len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_plugin_is_verified_inspected_and_orders() {
    let dir = tempfile::tempdir().unwrap();
    let (key, keys, id) = keygen(dir.path());
    let signed = dir.path().join("signed.wasm");
    sign(&key, &built("consenter_solo.wasm"), "mysolo", &signed);

    let (ok, out) = cli(&["plugin", "verify", "--trust-dir", s(&keys), s(&signed)]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("signed by alice (key id {id}): valid, trusted")), "{out}");
    assert!(out.contains("TRUSTED") && out.contains("consensus type mysolo"), "{out}");
    // Not trusted by a store without alice: non-zero, names the key.
    let (ok, out) = cli(&["plugin", "verify", "--trust-dir", s(&dir.path().join("none")), s(&signed)]);
    assert!(!ok, "{out}");
    assert!(out.contains("NOT TRUSTED") && out.contains(&id) && out.contains("signed.wasm"), "{out}");
    // --consensus-type must match the manifest.
    let (ok, out) = cli(&["plugin", "verify", "--trust-dir", s(&keys), "--consensus-type", "raft", s(&signed)]);
    assert!(!ok && out.contains("\"raft\""), "{out}");

    let (ok, out) = cli(&["plugin", "inspect", s(&signed)]);
    assert!(ok, "{out}");
    let bytes = std::fs::read(&signed).unwrap();
    let sha = consenter_host::block::hex(&Sha256::digest(&bytes));
    for want in [
        format!("size:      {} bytes", bytes.len()),
        format!("sha256:    {sha}"),
        "name:           my solo".into(),
        "version:        2.0.1".into(),
        "wit:            fabric:consenter@0.2.1".into(),
        "consensus-type: mysolo".into(),
        format!("ed25519 key id {id}"),
        "  fabric:consenter/support@0.2.1".into(),
        "exports:\n  fabric:consenter/chain@0.2.1".into(),
        "compatible with this host".into(),
    ] {
        assert!(out.contains(&want), "inspect shows {want:?}: {out}");
    }

    // A node loads it as mysolo and a channel ordered by mysolo works.
    let data = dir.path().join("data");
    let plugin = format!("mysolo={}", s(&signed));
    let args = [
        "--plugin-trust-dir",
        s(&keys),
        "--plugin",
        &plugin,
        "--dev-consensus",
        "mysolo",
        "--dev-max-message-count",
        "3",
    ];
    {
        let node = NodeProc::start(&data, &args);
        orders(&node, "devchannel", 3).await;
    }
    // Its compiled artifacts were cached (solo, etcdraft and mysolo), and a restart
    // with the default trust dir (<data>/trusted-keys) loads it again.
    let cached: Vec<_> = std::fs::read_dir(data.join("plugin-cache"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
        .collect();
    assert_eq!(cached.len(), 3, "one entry per plugin (solo, etcdraft, mysolo)");
    std::fs::create_dir_all(data.join("trusted-keys")).unwrap();
    std::fs::copy(keys.join("alice.pub"), data.join("trusted-keys/alice.pub")).unwrap();
    let node = NodeProc::start(&data, &["--plugin", &plugin, "--dev-consensus", "mysolo"]);
    let mut c = node.client().await;
    assert_eq!(deliver(&mut c, "devchannel", 0, 1).await.len(), 2, "the channel came back with its block");
}

#[test]
fn tampered_or_mislabelled_signed_plugin_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (key, keys, id) = keygen(dir.path());
    let signed = dir.path().join("signed.wasm");
    sign(&key, &built("consenter_solo.wasm"), "mysolo", &signed);
    // Flip one byte of the component (inside a string of its data
    // segment, so the binary still parses).
    let mut bytes = std::fs::read(&signed).unwrap();
    let needle = b"writing block";
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("an sdk string in the plugin");
    bytes[at] ^= 0x20;
    let tampered = dir.path().join("tampered.wasm");
    std::fs::write(&tampered, &bytes).unwrap();

    let (ok, out) = cli(&["plugin", "verify", "--trust-dir", s(&keys), s(&tampered)]);
    assert!(!ok && out.contains("INVALID") && out.contains(&id), "{out}");

    let plugin = format!("mysolo={}", s(&tampered));
    let base = ["--plugin-trust-dir", s(&keys), "--plugin", &plugin, "--dev-consensus", "mysolo"];
    let err = start_refused(&dir.path().join("d1"), &base);
    assert!(err.contains("plugin mysolo refused"), "{err}");
    assert!(err.contains("tampered.wasm") && err.contains("modified after it was signed"), "{err}");
    // --allow-unsigned-plugins does not excuse a broken trusted signature.
    let err = start_refused(&dir.path().join("d2"), &[&base[..], &["--allow-unsigned-plugins"]].concat());
    assert!(err.contains("modified after it was signed"), "{err}");

    // The intact file registered under another type than its manifest's.
    let plugin = format!("raft={}", s(&signed));
    let err = start_refused(&dir.path().join("d3"), &["--plugin-trust-dir", s(&keys), "--plugin", &plugin]);
    assert!(err.contains("consensus type \"mysolo\"") && err.contains("registered as \"raft\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_plugin_needs_allow_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = format!("mysolo={}", s(&built("consenter_solo.wasm")));
    let args = ["--plugin", plugin.as_str(), "--dev-consensus", "mysolo", "--dev-max-message-count", "2"];
    let err = start_refused(&dir.path().join("d1"), &args);
    assert!(err.contains("consenter_solo.wasm: the plugin is not signed"), "{err}");
    assert!(err.contains("--allow-unsigned-plugins"), "{err}");
    assert!(!dir.path().join("d1/chains/devchannel").exists(), "nothing was created");

    let node = NodeProc::start(&dir.path().join("d2"), &[&args[..], &["--allow-unsigned-plugins"]].concat());
    orders(&node, "devchannel", 2).await;
}

#[test]
fn plugin_for_another_contract_version_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let (key, keys, _) = keygen(dir.path());
    let hw = built("consenter_hostile_wit.wasm");
    // Signed by a trusted key with an honest manifest (wit 0.9.0, taken
    // from the component): trust does not make it loadable.
    let signed = dir.path().join("hw.wasm");
    sign(&key, &hw, "hw", &signed);
    let (ok, out) = cli(&["plugin", "inspect", s(&signed)]);
    assert!(ok && out.contains("wit:            fabric:consenter@0.9.0"), "{out}");
    assert!(out.contains("NOT loadable"), "{out}");
    let (ok, out) = cli(&["plugin", "verify", "--trust-dir", s(&keys), s(&signed)]);
    assert!(!ok && out.contains("fabric:consenter@0.9.0"), "{out}");

    let plugin = format!("hw={}", s(&signed));
    let err = start_refused(&dir.path().join("d1"), &["--plugin-trust-dir", s(&keys), "--plugin", &plugin]);
    assert!(err.contains("built for contract fabric:consenter@0.9.0"), "{err}");
    assert!(err.contains("this host speaks fabric:consenter@0.2.1, fabric:consenter@0.1.0"), "{err}");
    // Refused before compiling: no compiled artifact of it was cached
    // (entries are named by the plugin's SHA-256).
    let sha = consenter_host::block::hex(&Sha256::digest(std::fs::read(&signed).unwrap()));
    let entries: Vec<String> = std::fs::read_dir(dir.path().join("d1/plugin-cache"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(!entries.iter().any(|e| e.starts_with(&sha)), "{entries:?}");
    // Unsigned, with no manifest at all: its own imports give it away.
    let plugin = format!("hw={}", s(&hw));
    let err = start_refused(&dir.path().join("d2"), &["--allow-unsigned-plugins", "--plugin", &plugin]);
    assert!(err.contains("fabric:consenter@0.9.0") && err.contains("fabric:consenter@0.1.0"), "{err}");
}

#[test]
fn plugin_failing_its_canary_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = format!("bad={}", s(&built("consenter_hostile_canary.wasm")));
    let err =
        start_refused(&dir.path().join("d"), &["--allow-unsigned-plugins", "--plugin", &plugin, "--no-dev-channel"]);
    assert!(err.contains("plugin bad rejected by canary: start trapped: unreachable executed"), "{err}");
}
