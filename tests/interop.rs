//! Fabric's wire, proven by clients that do not use our protobuf code:
//! - Node.js with Fabric's official `fabric-common` (its Committer sends
//!   Broadcast) and `fabric-protos` (raw AtomicBroadcast client for Deliver,
//!   BlockDecoder for blocks): tests/node/interop.js;
//! - Python with stubs compiled by `grpcio-tools` from the .proto files
//!   shipped in the npm `fabric-protos` package: tests/python/interop.py.
//!
//! Each broadcasts signed envelopes to a real node, delivers the blocks,
//! and checks its envelopes and the hash chain; the Node.js client also
//! over mutual TLS.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Installs the Python packages the client needs (once).
fn pip_install() {
    let ok =
        Command::new("python3").args(["-c", "import grpc, grpc_tools, cryptography"]).status().map(|s| s.success());
    if ok.unwrap_or(false) {
        return;
    }
    let req = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/requirements.txt");
    let st = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(&req)
        .status()
        .expect("running python3 -m pip: Python 3 is needed for the Python interop test");
    assert!(st.success(), "pip install -r {} failed", req.display());
}

/// The JSON summary line a client prints; asserts what every client checks.
fn check_summary(who: &str, out: &std::process::Output, n: usize) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{who} failed:\n{stdout}\n{stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    assert!(
        line.contains(&format!("\"broadcast_ok\": {n}")) || line.contains(&format!("\"broadcast_ok\":{n}")),
        "{who}: {line}"
    );
    assert!(line.contains(&format!("\"found\": {n}")) || line.contains(&format!("\"found\":{n}")), "{who}: {line}");
    assert!(line.contains("\"chain_ok\": true") || line.contains("\"chain_ok\":true"), "{who}: {line}");
}

/// Runs an interop client (`program script`) against a fresh node with the
/// usual arguments plus `extra`, and checks its summary.
fn run_client(program: &str, script: &Path, extra: &[&std::ffi::OsStr]) {
    run_client_on(program, script, &[], extra)
}

/// [`run_client`] against a node started with `node_args` too.
fn run_client_on(program: &str, script: &Path, node_args: &[&str], extra: &[&std::ffi::OsStr]) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = NodeProc::start(&data, &[&["--dev-batch-timeout", "100ms"], node_args].concat());
    let out = Command::new(program)
        .arg(script)
        .args(["--orderer", &node.addr, "--channel", "devchannel", "--mspid", "DevMSP", "--count", "60", "--msp-dir"])
        .arg(data.join("dev-identity/client/msp"))
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    check_summary(&format!("{program} {}", script.display()), &out, 60);
}

#[test]
fn fabric_node_sdk_broadcasts_and_delivers() {
    npm_ci();
    run_client("node", &node_dir().join("interop.js"), &[]);
}

#[test]
fn python_grpc_client_from_fabric_protos_broadcasts_and_delivers() {
    npm_ci();
    pip_install();
    let protos = node_dir().join("node_modules/fabric-protos/protos");
    run_client(
        "python3",
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/interop.py"),
        &["--protos".as_ref(), protos.as_os_str()],
    );
}

/// Fabric's Node SDK over mutual TLS (grpc-js on Node's own TLS stack):
/// the node with orderer0's certificate and client certificates required,
/// the SDK with the orderer org's admin TLS certificate, the address an
/// IP and the name checked being the certificate's DNS name.
#[test]
fn fabric_node_sdk_over_mutual_tls() {
    npm_ci();
    let org = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/fabric/crypto/ordererOrganizations/example.com");
    let s = |p: &str| org.join(p).to_string_lossy().into_owned();
    let (cert, key, ca) = (
        s("orderers/orderer0.example.com/tls/server.crt"),
        s("orderers/orderer0.example.com/tls/server.key"),
        s("tlsca/tlsca.example.com-cert.pem"),
    );
    let (ccert, ckey) = (s("users/Admin@example.com/tls/client.crt"), s("users/Admin@example.com/tls/client.key"));
    let args = [
        "--tls-ca",
        &ca,
        "--tls-client-cert",
        &ccert,
        "--tls-client-key",
        &ckey,
        "--tls-server-name",
        "orderer0.example.com",
    ];
    let extra: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    run_client_on(
        "node",
        &node_dir().join("interop.js"),
        &["--tls-cert", &cert, "--tls-key", &key, "--tls-client-root-ca", &ca],
        &extra,
    );
}
